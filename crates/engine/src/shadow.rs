//! Shadow buckets ([decision 064](../../../docs/decisions/064-shadow-buckets.md)): a bucket in
//! front of a bucket of another S3 service, for moving in without downtime. A read of a key
//! missing here fetches it from the source, streaming it to the client while storing it through
//! the normal put path; listings merge both sides; a delete here leaves a tombstone (`t/`) so the
//! source's copy never shows through again; with write-through, writes and deletes are copied to
//! the source after they commit here. Removing the shadow ends all of it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use aws_sdk_s3::Client;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::get_object::GetObjectOutput;
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use meridian_common::errors::chain;
use meridian_meta::{Compare, Op, RangeRequest, Txn};
use serde::{Deserialize, Serialize};

use crate::conditions::{ETagMatch, WriteConditions};
use crate::error::{EngineError, EngineResult};
use crate::ingest::{Body, BodyError, Integrity};
use crate::list::{ListPage, ListRequest, ListedObject, common_prefix};
use crate::object::{Current, GetOutcome, GetRequest, PutRequest, Reading};
use crate::record::{DataLayout, ObjectHeaders, ObjectRecord};
use crate::{Consistency, Engine, keys, now_ms};

/// Chunks a fetch may run ahead of a slow client: bounds the memory a read-through holds.
const TEE_DEPTH: usize = 4;
/// Source clients kept for reuse (one per distinct source); the cache starts over past this.
const MAX_CACHED_CLIENTS: usize = 64;

/// The bucket of another S3 service a bucket shadows ([`crate::record::BucketRecord::shadow`]).
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ShadowSource {
    /// `http://` or `https://` URL of the source service.
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    pub access_key: String,
    /// Kept in the metadata store like access keys' secrets; never shown by the admin API.
    pub secret_key: String,
    /// Also apply writes and deletes to the source.
    #[serde(default)]
    pub write_through: bool,
}

impl std::fmt::Debug for ShadowSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShadowSource")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .field("write_through", &self.write_through)
            .finish()
    }
}

impl ShadowSource {
    fn describe(&self) -> String {
        format!("shadow source {}/{}", self.endpoint.trim_end_matches('/'), self.bucket)
    }

    fn fail<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
        &self,
        doing: &str,
        err: SdkError<E, R>,
    ) -> EngineError {
        EngineError::Unavailable(format!("{} refused {doing}: {}", self.describe(), chain(&err)))
    }

    fn validate(&self) -> EngineResult<()> {
        let invalid = |why: &str| Err(EngineError::InvalidArgument(format!("shadow source: {why}")));
        if !(self.endpoint.starts_with("http://") || self.endpoint.starts_with("https://")) {
            return invalid("the endpoint must be an http:// or https:// URL");
        }
        if self.bucket.is_empty() || self.region.is_empty() || self.access_key.is_empty() {
            return invalid("the bucket, region and access key must not be empty");
        }
        Ok(())
    }

    /// A client for the source, reused across requests.
    fn client(&self) -> EngineResult<Client> {
        static CLIENTS: OnceLock<Mutex<HashMap<ShadowSource, Client>>> = OnceLock::new();
        let mut clients = CLIENTS.get_or_init(Mutex::default).lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = clients.get(self) {
            return Ok(client.clone());
        }
        let endpoint = meridian_s3_client::S3Endpoint {
            endpoint: Some(self.endpoint.clone()),
            region: self.region.clone(),
            access_key: self.access_key.clone(),
            secret_key: self.secret_key.clone(),
            ca_file: None,
        };
        let client = meridian_s3_client::client(&endpoint, "meridian-shadow")
            .map_err(|e| EngineError::InvalidArgument(e.to_string()))?;
        if clients.len() >= MAX_CACHED_CLIENTS {
            clients.clear();
        }
        clients.insert(self.clone(), client.clone());
        Ok(client)
    }

    /// The object at `key` in the source, `None` when it has none.
    async fn get(&self, key: &str) -> EngineResult<Option<GetObjectOutput>> {
        match self.client()?.get_object().bucket(&self.bucket).key(key).send().await {
            Ok(found) => Ok(Some(found)),
            // A 404 for the key, not for the source's bucket (which is then a broken source).
            Err(e)
                if e.raw_response().is_some_and(|r| r.status().as_u16() == 404)
                    && e.as_service_error().and_then(|e| e.code()) != Some("NoSuchBucket") =>
            {
                Ok(None)
            }
            Err(e) => Err(self.fail("a GET", e)),
        }
    }
}

/// What a source's GET answered, as an object record (its bytes are not stored yet).
fn source_record(found: &GetObjectOutput) -> ObjectRecord {
    let headers = ObjectHeaders {
        content_type: found.content_type.clone(),
        content_encoding: found.content_encoding.clone(),
        content_disposition: found.content_disposition.clone(),
        content_language: found.content_language.clone(),
        cache_control: found.cache_control.clone(),
        expires: found.expires_string.clone(),
        user_metadata: found.metadata.clone().unwrap_or_default().into_iter().collect::<BTreeMap<_, _>>(),
        tags: Default::default(),
        lock: Default::default(),
    };
    ObjectRecord {
        size: found.content_length.and_then(|n| u64::try_from(n).ok()).unwrap_or(0),
        etag: found.e_tag.as_deref().unwrap_or_default().trim_matches('"').to_string(),
        modified_ms: found.last_modified.and_then(|t| t.to_millis().ok()).unwrap_or_else(now_ms),
        headers,
        checksum: None,
        data: DataLayout::Inline,
        expires_at_ms: None,
        version: None,
        encryption: None,
    }
}

/// The source's ETag as `Content-MD5` when it is a plain MD5 (not a multipart ETag), so that
/// the stored copy is verified against it.
fn md5_of_etag(etag: &str) -> Option<String> {
    use base64::Engine as _;
    let raw = hex::decode(etag).ok().filter(|raw| raw.len() == 16)?;
    Some(base64::engine::general_purpose::STANDARD.encode(raw))
}

/// Where a read-through's client gets the bytes: those of `range` (inclusive) as they are
/// stored, but for the last piece (`held`), which goes once the copy is committed, so that a
/// client that stops reading at Content-Length has its copy stored when its read ends.
struct ClientTee {
    tx: futures::channel::mpsc::Sender<Result<Bytes, BodyError>>,
    range: (u64, u64),
    held: Arc<Mutex<Option<Bytes>>>,
}

impl ClientTee {
    /// The part of `chunk`, found at `offset` in the object, that the client asked for.
    fn wanted(&self, chunk: &Bytes, offset: u64) -> Option<Bytes> {
        let (first, last) = self.range;
        let start = first.max(offset) - offset;
        let end = (last + 1).min(offset + chunk.len() as u64).saturating_sub(offset);
        (start < end).then(|| chunk.slice(start as usize..end as usize))
    }
}

/// The source's bytes as a body for the put path, the client's range of them also sent to the
/// client while it listens (a client that goes away does not stop the copy).
fn tee_body(source: ByteStream, client: Option<ClientTee>) -> Body {
    let state = (source, client, None::<Bytes>, 0u64);
    Box::pin(futures::stream::unfold(state, |(mut source, mut client, pending, offset)| async move {
        let item = match source.next().await {
            None => {
                if let (Some(tee), Some(last)) = (&client, pending) {
                    *tee.held.lock().unwrap_or_else(|p| p.into_inner()) = Some(last);
                }
                return None;
            }
            Some(Ok(chunk)) => Ok(chunk),
            Some(Err(e)) => Err(format!("the shadow source broke off: {}", chain(&e))),
        };
        let wanted = match (&item, &client) {
            (Ok(chunk), Some(tee)) => tee.wanted(chunk, offset),
            _ => None,
        };
        let send = match &item {
            Ok(_) => wanted.as_ref().and(pending.clone()).map(Ok),
            Err(e) => Some(Err(BodyError::from(e.clone()))),
        };
        if let (Some(tee), Some(send)) = (&mut client, send)
            && tee.tx.send(send).await.is_err()
        {
            client = None;
        }
        let pending = if wanted.is_some() { wanted } else { pending }.filter(|_| client.is_some());
        let offset = offset + item.as_ref().map_or(0, |chunk| chunk.len() as u64);
        Some((item.map_err(BodyError::from), (source, client, pending, offset)))
    }))
}

/// For a delete committed in one transaction with others (a KV batch): the tombstone to write
/// with it when the bucket shadows a source.
pub(crate) fn tombstone_of_delete(
    bucket: &str,
    record: &crate::record::BucketRecord,
    key: &str,
    deleted: bool,
) -> Option<Op> {
    (deleted && record.shadow.is_some()).then(|| Op::put(keys::shadow_tombstone(bucket, key), Bytes::new()))
}

impl Engine {
    /// The bucket's shadow source, if it has one.
    async fn shadow_of(&self, bucket: &str) -> EngineResult<Option<ShadowSource>> {
        Ok(self.bucket(bucket).await?.0.shadow)
    }

    /// Makes `bucket` shadow `source` (replacing any previous source), after checking that the
    /// source answers for its bucket.
    pub async fn set_shadow(&self, bucket: &str, source: ShadowSource) -> EngineResult<crate::record::BucketRecord> {
        source.validate()?;
        let client = source.client()?;
        client.head_bucket().bucket(&source.bucket).send().await.map_err(|e| source.fail("HEAD of its bucket", e))?;
        if self.shadow_of(bucket).await?.is_none() {
            // Tombstones left by an earlier shadow that ended mid-cleanup name another source.
            self.drop_tombstones(bucket).await?;
        }
        let record = self
            .update_bucket(bucket, |record| {
                record.shadow = Some(source.clone());
                Ok(())
            })
            .await?;
        self.settle().await?;
        Ok(record)
    }

    /// Ends the shadow ("migration done"): the bucket stops consulting its source, and its
    /// tombstones go.
    pub async fn remove_shadow(&self, bucket: &str) -> EngineResult<crate::record::BucketRecord> {
        let record = self
            .update_bucket(bucket, |record| {
                record.shadow = None;
                Ok(())
            })
            .await?;
        self.settle().await?;
        self.drop_tombstones(bucket).await?;
        Ok(record)
    }

    async fn drop_tombstones(&self, bucket: &str) -> EngineResult<()> {
        let range = RangeRequest::prefix(keys::shadow_tombstones_prefix(bucket)).limit(128);
        loop {
            let found = self.meta().range(range.clone()).await?;
            if found.kvs.is_empty() {
                return Ok(());
            }
            let mut txn = Txn::new();
            txn.ops.extend(found.kvs.iter().map(|kv| Op::delete(kv.key.clone())));
            self.meta().txn(txn).await?;
        }
    }

    async fn is_tombstoned(&self, bucket: &str, key: &str) -> EngineResult<bool> {
        Ok(self.meta().get(&keys::shadow_tombstone(bucket, key)).await?.is_some())
    }

    /// A delete (`delete`, not yet started) in a bucket that may shadow another: first records
    /// a tombstone, so that the source's copy does not show through once the local one is gone
    /// (written before the delete, so a read-through racing it cannot store the key after it;
    /// a crash between the two leaves the local object, which wins, and the mark), then writes
    /// the delete through. A delete that fails takes back the tombstone it made.
    pub(crate) async fn delete_with_tombstone(
        &self,
        bucket: &str,
        key: &str,
        delete: impl std::future::Future<Output = EngineResult<crate::DeleteOutcome>>,
    ) -> EngineResult<crate::DeleteOutcome> {
        let Some(source) = self.shadow_of(bucket).await? else { return delete.await };
        let mark = keys::shadow_tombstone(bucket, key);
        let new = Txn::new().when(Compare::absent(mark.clone())).then(Op::put(mark.clone(), Bytes::new()));
        let made = self.meta().txn(new).await?.succeeded;
        let deleted = match delete.await {
            Ok(deleted) => deleted,
            Err(e) => {
                if made {
                    self.meta().txn(Txn::new().then(Op::delete(mark))).await?;
                }
                return Err(e);
            }
        };
        self.write_through(Some(&source), bucket, key).await?;
        Ok(deleted)
    }

    /// A read of a key missing here: from the bucket's source, if it has one and the key was
    /// not deleted here. A GET (of a range too) streams the source's bytes to the client while
    /// storing the whole object; HEAD and part reads store the object first and then read it
    /// here.
    pub(crate) async fn read_through(&self, req: GetRequest, with_body: bool) -> EngineResult<GetOutcome> {
        let Some(found) = self.source_object(&req.bucket, &req.key).await? else { return Err(EngineError::NoSuchKey) };
        if !with_body || req.part_number.is_some() {
            self.store_source_object(&req.bucket, &req.key, found).await?;
            return Box::pin(self.read_object(req, None, with_body)).await;
        }
        let record = source_record(&found);
        let range = req.range.map(|r| r.resolve(record.size)).transpose()?;
        let wanted = range.unwrap_or((0, record.size.saturating_sub(1)));
        let (tx, rx) = futures::channel::mpsc::channel(TEE_DEPTH);
        let engine = self.clone();
        let (bucket, key) = (req.bucket.clone(), req.key.clone());
        tokio::spawn(async move {
            // The client's last bytes go once the copy is committed (or failed: then an error
            // instead), so its next read is local.
            let held = Arc::new(Mutex::new(None));
            let mut last = tx.clone();
            let tee = ClientTee { tx, range: wanted, held: held.clone() };
            let tail = match engine.fill(&bucket, &key, found, Some(tee)).await {
                // Written or deleted here meanwhile: what was sent was the source's object.
                Ok(()) | Err(EngineError::PreconditionFailed | EngineError::NoSuchKey) => {
                    held.lock().unwrap_or_else(|p| p.into_inner()).take().map(Ok)
                }
                Err(e) => {
                    tracing::warn!(bucket, key, error = %e, "could not store an object read from the shadow source");
                    Some(Err(BodyError::from(format!("storing the object failed: {e}"))))
                }
            };
            if let Some(tail) = tail {
                let _ = last.send(tail).await;
            }
        });
        req.conditions.check_read(&record)?;
        Ok(GetOutcome { record, revision: 0, body: Box::pin(rx), range, parts_count: None, source: None })
    }

    /// The source of a copy: when missing here, the shadow source's object, stored first.
    pub(crate) async fn read_visible_through(&self, bucket: &str, key: &str) -> EngineResult<Current> {
        match self.read_visible(bucket, key, Consistency::Strong).await {
            Err(EngineError::NoSuchKey) => match self.source_object(bucket, key).await? {
                Some(found) => {
                    self.store_source_object(bucket, key, found).await?;
                    self.read_visible(bucket, key, Consistency::Strong).await
                }
                None => Err(EngineError::NoSuchKey),
            },
            found => found,
        }
    }

    /// The source's object at `key` when `bucket` shadows one and the key was not deleted here.
    async fn source_object(&self, bucket: &str, key: &str) -> EngineResult<Option<GetObjectOutput>> {
        let Some(source) = self.shadow_of(bucket).await? else { return Ok(None) };
        if self.is_tombstoned(bucket, key).await? {
            return Ok(None);
        }
        source.get(key).await
    }

    /// Stores a source object before it is read here.
    async fn store_source_object(&self, bucket: &str, key: &str, found: GetObjectOutput) -> EngineResult<()> {
        match self.fill(bucket, key, found, None).await {
            // A PUT here won the race: it is what is read.
            Ok(()) | Err(EngineError::PreconditionFailed) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Stores what the source answered through the put path (so a failure leaves nothing
    /// visible), unless the key was written or deleted here meanwhile.
    async fn fill(
        &self,
        bucket: &str,
        key: &str,
        found: GetObjectOutput,
        client: Option<ClientTee>,
    ) -> EngineResult<()> {
        let record = source_record(&found);
        let req = PutRequest {
            bucket: bucket.to_string(),
            key: key.to_string(),
            body: tee_body(found.body, client),
            headers: record.headers,
            integrity: Integrity {
                content_length: Some(record.size),
                content_md5: md5_of_etag(&record.etag),
                ..Default::default()
            },
            conditions: WriteConditions { if_none_match: Some(ETagMatch::Any), ..Default::default() },
            expires_at_ms: None,
            protection: None,
            form_upload: false,
        };
        let (bucket, key) = (bucket.to_string(), key.to_string());
        self.put_object_guarded(None, req, move |_, extra| {
            extra.compares.push(Compare::absent(keys::shadow_tombstone(&bucket, &key)));
            extra.still_valid = Some(Box::new(move |engine: &Engine| {
                let (bucket, key) = (bucket.clone(), key.clone());
                Box::pin(async move {
                    match engine.is_tombstoned(&bucket, &key).await? {
                        true => Err(EngineError::NoSuchKey),
                        false => Ok(()),
                    }
                })
            }));
        })
        .await
        .map(drop)
    }

    /// After a write or delete of `key` committed here: with write-through on, makes the
    /// source's copy the same (the object's bytes and headers, or no object). A refusal is an
    /// error for the caller; the local change stands (decision 064).
    /// `source` is the bucket's shadow as the write read it.
    pub(crate) async fn write_through(
        &self,
        source: Option<&ShadowSource>,
        bucket: &str,
        key: &str,
    ) -> EngineResult<()> {
        let Some(source) = source.filter(|s| s.write_through) else { return Ok(()) };
        let mirrored = self.mirror(source, bucket, key).await;
        if let Err(e) = &mirrored {
            tracing::warn!(bucket, key, error = %e, "write-through to the shadow source failed; the change here stands");
        }
        mirrored
    }

    /// Makes the source's `key` what it is here: the object's bytes and headers, or none.
    async fn mirror(&self, source: &ShadowSource, bucket: &str, key: &str) -> EngineResult<()> {
        let client = source.client()?;
        let current = self.read_current(bucket, key).await?.filter(|c| c.is_visible(now_ms()));
        let Some(current) = current else {
            let deleted = client.delete_object().bucket(&source.bucket).key(key).send().await;
            return deleted.map(drop).map_err(|e| source.fail("a write-through DELETE", e));
        };
        let (body, _) = self.open_body(&current, None, Reading::Plain(None)).await?;
        // Through a channel: the SDK wants a body it can share between threads.
        let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Bytes, BodyError>>(TEE_DEPTH);
        tokio::spawn(async move {
            let mut body = body;
            while let Some(chunk) = body.next().await {
                if tx.send(chunk).await.is_err() {
                    return;
                }
            }
        });
        let headers = &current.record.headers;
        let metadata = headers.user_metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        client
            .put_object()
            .bucket(&source.bucket)
            .key(key)
            .content_length(current.record.size as i64)
            .set_content_type(headers.content_type.clone())
            .set_content_encoding(headers.content_encoding.clone())
            .set_content_disposition(headers.content_disposition.clone())
            .set_content_language(headers.content_language.clone())
            .set_cache_control(headers.cache_control.clone())
            .set_metadata(Some(metadata))
            .body(meridian_s3_client::streamed_body(rx))
            .send()
            .await
            .map(drop)
            .map_err(|e| source.fail("a write-through PUT", e))
    }

    /// A listing page of a shadowing bucket: `local` merged with the source's keys (the local
    /// object wins; keys deleted here stay hidden).
    pub(crate) async fn merge_shadow_listing(
        &self,
        bucket: &str,
        source: &ShadowSource,
        req: &ListRequest,
        local: ListPage,
    ) -> EngineResult<ListPage> {
        let max_keys = req.max_keys.min(crate::list::MAX_LIST_KEYS);
        let remote = self.source_page(source, req, max_keys).await?;
        let mut merged = merge_pages(local, remote, max_keys);
        let from_source = merged.objects.iter().filter(|o| o.revision == 0);
        let hidden: Vec<Bytes> = from_source.map(|o| keys::shadow_tombstone(bucket, &o.key)).collect();
        let (marks, _) = self.reader(Consistency::Strong).get_many(&hidden).await?;
        let mut marks = marks.into_iter();
        merged.objects.retain(|o| o.revision != 0 || marks.next().flatten().is_none());
        Ok(merged)
    }

    /// One page of the source's listing, as the same request would list it here.
    async fn source_page(&self, source: &ShadowSource, req: &ListRequest, max_keys: usize) -> EngineResult<Source> {
        let delimiter = req.delimiter.clone().filter(|d| !d.is_empty());
        let page = source
            .client()?
            .list_objects_v2()
            .bucket(&source.bucket)
            .prefix(&req.prefix)
            .set_delimiter(delimiter.clone())
            .set_start_after(req.after.clone())
            // One more than asked: a common prefix equal to `after` is dropped below.
            .max_keys(max_keys as i32 + 1)
            .send()
            .await
            .map_err(|e| source.fail("a listing", e))?;
        let after_prefix = match (&req.after, &delimiter) {
            (Some(after), Some(d)) => common_prefix(after, &req.prefix, d).filter(|p| p == after),
            _ => None,
        };
        let mut entries: Vec<(String, Option<ObjectRecord>)> = page
            .contents()
            .iter()
            .filter_map(|o| {
                let record = ObjectRecord {
                    size: o.size.and_then(|n| u64::try_from(n).ok()).unwrap_or(0),
                    etag: o.e_tag.as_deref().unwrap_or_default().trim_matches('"').to_string(),
                    modified_ms: o.last_modified.and_then(|t| t.to_millis().ok()).unwrap_or(0),
                    ..source_listing_record()
                };
                Some((o.key.clone()?, Some(record)))
            })
            .chain(page.common_prefixes().iter().filter_map(|p| Some((p.prefix.clone()?, None))))
            .filter(|(key, _)| after_prefix.as_ref().is_none_or(|p| !key.starts_with(p.as_str())))
            .collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Source { entries, truncated: page.is_truncated.unwrap_or(false), max_keys })
    }
}

fn source_listing_record() -> ObjectRecord {
    ObjectRecord {
        size: 0,
        etag: String::new(),
        modified_ms: 0,
        headers: ObjectHeaders::default(),
        checksum: None,
        data: DataLayout::Inline,
        expires_at_ms: None,
        version: None,
        encryption: None,
    }
}

/// The source's side of a listing page: keys (with a record) and common prefixes (without).
struct Source {
    entries: Vec<(String, Option<ObjectRecord>)>,
    truncated: bool,
    max_keys: usize,
}

/// Merges two listing pages of the same request. Each side lists its first entries after the
/// same point, so the union's first `max_keys` entries are exact up to the last entry of a
/// side that was cut short. Source objects get revision 0, which no local write has.
fn merge_pages(local: ListPage, source: Source, max_keys: usize) -> ListPage {
    let mut entries: BTreeMap<String, Option<ListedObject>> = BTreeMap::new();
    let source_last = source.entries.last().map(|(k, _)| k.clone());
    let source_cut = source.truncated || source.entries.len() > source.max_keys;
    for (key, record) in source.entries {
        let listed = record.map(|record| ListedObject { key: key.clone(), record, revision: 0 });
        entries.insert(key, listed);
    }
    let local_last = local.next_after.clone().filter(|_| local.is_truncated);
    for object in local.objects {
        entries.insert(object.key.clone(), Some(object));
    }
    for prefix in local.common_prefixes {
        entries.insert(prefix, None);
    }
    // Entries past the end of a side that was cut short may hide the other side's next ones.
    let bound = [local_last, source_last.filter(|_| source_cut)].into_iter().flatten().min();
    let mut truncated = local.is_truncated || source_cut;
    let mut page = ListPage { revision: local.revision, ..Default::default() };
    for (key, entry) in entries {
        if page.objects.len() + page.common_prefixes.len() >= max_keys || bound.as_ref().is_some_and(|b| key > *b) {
            truncated = true;
            break;
        }
        page.next_after = Some(key.clone());
        match entry {
            Some(object) => page.objects.push(object),
            None => page.common_prefixes.push(key),
        }
    }
    page.is_truncated = truncated;
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(key: &str, revision: u64) -> ListedObject {
        ListedObject { key: key.into(), record: source_listing_record(), revision }
    }

    fn source(keys: &[&str], truncated: bool) -> Source {
        let entries = keys.iter().map(|k| (k.to_string(), Some(source_listing_record()))).collect();
        Source { entries, truncated, max_keys: 2 }
    }

    fn keys_of(page: &ListPage) -> Vec<(String, u64)> {
        page.objects.iter().map(|o| (o.key.clone(), o.revision)).collect()
    }

    #[test]
    fn a_range_takes_its_bytes_out_of_the_chunks_that_hold_them() {
        let (tx, _rx) = futures::channel::mpsc::channel(1);
        let tee = ClientTee { tx, range: (3, 6), held: Arc::default() };
        let chunk = Bytes::from_static(b"abcd");
        assert_eq!(tee.wanted(&chunk, 0).as_deref(), Some(&b"d"[..]));
        assert_eq!(tee.wanted(&chunk, 4).as_deref(), Some(&b"abc"[..]));
        assert_eq!(tee.wanted(&chunk, 8), None);
        assert_eq!(tee.wanted(&Bytes::from_static(b"ab"), 0), None);
    }

    #[test]
    fn merged_pages_keep_order_prefer_local_and_stop_where_a_side_was_cut() {
        let local = ListPage {
            objects: vec![object("b", 7), object("d", 8)],
            is_truncated: true,
            next_after: Some("d".into()),
            ..Default::default()
        };
        let merged = merge_pages(local, source(&["a", "b"], true), 2);
        assert_eq!(keys_of(&merged), vec![("a".into(), 0), ("b".into(), 7)]);
        assert!(merged.is_truncated);
        assert_eq!(merged.next_after.as_deref(), Some("b"));

        // The source was cut at "c": "d" (local) may come after source keys not yet listed.
        let local = ListPage { objects: vec![object("d", 8)], ..Default::default() };
        let merged = merge_pages(local, source(&["a", "c"], true), 5);
        assert_eq!(keys_of(&merged), vec![("a".into(), 0), ("c".into(), 0)]);
        assert!(merged.is_truncated);

        let merged = merge_pages(ListPage::default(), source(&["a"], false), 5);
        assert_eq!(keys_of(&merged), vec![("a".into(), 0)]);
        assert!(!merged.is_truncated);
    }
}
