//! Blobs as objects in an S3-compatible bucket (AWS, R2, Ceph RGW, MinIO, SeaweedFS, moto or
//! another Meridian), which several nodes of a region may share.
//!
//! A blob is the object `<prefix>blobs/<32 hex id>`: names come from blob ids only. A blob of
//! less than one part is one PutObject; a larger one a multipart upload of `part_size` parts,
//! sent while the body streams in, so a write holds at most one part in memory. Either way the
//! object exists only once the PUT or the CompleteMultipartUpload has been acknowledged, which
//! is when [`BackendWriter::finish`] returns: an interrupted write leaves nothing visible, only
//! an incomplete multipart upload, which [`BlobBackend::collect_stale_writes`] aborts.
//!
//! Every node opening the same bucket and prefix reads the same store id from
//! `<prefix>meridian-store-id` (the first one writes it, with `If-None-Match: *`), so they know
//! they share the store and read each other's blobs straight from it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::get_object::GetObjectOutput;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::{Bytes, BytesMut};
use meridian_common::errors::chain;
use meridian_s3_client::S3Endpoint;

use crate::backend::{BackendWriter, BlobBackend, BlobStream};
use crate::{BlobError, BlobId, BlobResult};

/// Default size of each part of a multipart upload (S3 requires at least 5 MiB).
pub const DEFAULT_PART_SIZE: usize = 8 << 20;

/// Where the bucket is and how to write to it.
#[derive(Debug, Clone)]
pub struct S3BackendConfig {
    pub endpoint: S3Endpoint,
    pub bucket: String,
    /// Names of this store's objects start with it (`""`: the bucket's root).
    pub prefix: String,
    /// Bytes per multipart part; also the largest blob sent as one PutObject.
    pub part_size: usize,
    /// A blob whose object is older than this when its write completes fails (and is removed):
    /// the orphan scans of other nodes may remove objects that are older than their grace
    /// period and that no metadata refers to yet, so a write must commit well within it.
    pub max_write_age: Duration,
}

/// An S3 bucket (and prefix) holding blobs.
pub struct S3Backend {
    inner: Arc<Bucket>,
    /// When this backend first saw each unfinished upload (key, upload id) in a scan: services
    /// do not all date uploads truthfully (moto answers a fixed date in 2010), so an upload is
    /// aborted only once this node has itself seen it unfinished for the grace period.
    seen_uploads: std::sync::Mutex<std::collections::HashMap<(String, String), SystemTime>>,
    store_id: String,
    part_size: usize,
    max_write_age: Duration,
}

/// What a backend and its writers share.
struct Bucket {
    client: Client,
    bucket: String,
    prefix: String,
    /// `s3://bucket/prefix at endpoint`, for errors.
    name: String,
}

const STORE_ID: &str = "meridian-store-id";

impl Bucket {
    fn blob_key(&self, id: BlobId) -> String {
        format!("{}blobs/{id}", self.prefix)
    }

    fn blobs_prefix(&self) -> String {
        format!("{}blobs/", self.prefix)
    }

    fn fail<E>(&self, doing: &str, err: SdkError<E, HttpResponse>) -> BlobError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let code = err.code().map(|c| format!("{c}: ")).unwrap_or_default();
        let message = err.message().map(str::to_string).unwrap_or_else(|| chain(&err));
        BlobError::Backend { store: self.name.clone(), message: format!("{doing}: {code}{message}") }
    }

    /// [`Bucket::fail`], except that a missing object is [`BlobError::NotFound`].
    fn fail_for<E>(&self, id: BlobId, doing: &str, err: SdkError<E, HttpResponse>) -> BlobError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        if is_not_found(&err) { BlobError::NotFound(id) } else { self.fail(doing, err) }
    }

    /// A GET of blob `id`, of `range` (`bytes=A-B`) or the whole.
    async fn get(&self, id: BlobId, range: Option<String>) -> BlobResult<GetObjectOutput> {
        let request = self.client.get_object().bucket(&self.bucket).key(self.blob_key(id)).set_range(range);
        request.send().await.map_err(|e| self.fail_for(id, "GET", e))
    }

    async fn abort(&self, key: &str, upload_id: &str) -> BlobResult<()> {
        self.client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
            .map_err(|e| self.fail("aborting a multipart upload", e))?;
        Ok(())
    }
}

fn is_not_found<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> bool {
    let status = err.raw_response().map(|r| r.status().as_u16());
    status == Some(404) || matches!(err.code(), Some("NoSuchKey" | "NotFound"))
}

fn is_precondition_failed<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> bool {
    let status = err.raw_response().map(|r| r.status().as_u16());
    status == Some(412) || err.code() == Some("PreconditionFailed")
}

/// A prefix as given, with a `/` added unless it is empty or already ends with one.
fn normalize_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim_start_matches('/');
    if trimmed.is_empty() || trimmed.ends_with('/') { trimmed.to_string() } else { format!("{trimmed}/") }
}

fn system_time(at: Option<&aws_sdk_s3::primitives::DateTime>) -> Option<SystemTime> {
    at.and_then(|t| SystemTime::try_from(*t).ok())
}

impl S3Backend {
    /// Connects to the bucket and reads (or, first of all nodes, writes) the store's id. Fails
    /// when the bucket cannot be reached or written.
    pub async fn open(cfg: &S3BackendConfig) -> BlobResult<Self> {
        if cfg.part_size < 5 << 20 {
            return Err(BlobError::Config(format!(
                "the S3 part size must be at least 5 MiB (S3's smallest part), not {} bytes",
                cfg.part_size
            )));
        }
        if !cfg.prefix.bytes().all(|c| c.is_ascii_alphanumeric() || b"._-/".contains(&c)) {
            return Err(BlobError::Config(format!(
                "the blob bucket prefix {:?} may hold only letters, digits, '.', '_', '-' and '/'",
                cfg.prefix
            )));
        }
        let client = meridian_s3_client::client(&cfg.endpoint, "meridian-blob-store")
            .map_err(|e| BlobError::Config(e.to_string()))?;
        let prefix = normalize_prefix(&cfg.prefix);
        let at = cfg.endpoint.endpoint.as_deref().unwrap_or("AWS");
        let name = format!("s3://{}/{prefix} at {at}", cfg.bucket);
        let inner = Arc::new(Bucket { client, bucket: cfg.bucket.clone(), prefix, name });
        let store_id = store_id(&inner).await?;
        Ok(S3Backend {
            inner,
            seen_uploads: Default::default(),
            store_id,
            part_size: cfg.part_size,
            max_write_age: cfg.max_write_age,
        })
    }
}

/// The id in `<prefix>meridian-store-id`, written by whichever node gets there first.
async fn store_id(bucket: &Bucket) -> BlobResult<String> {
    let key = format!("{}{STORE_ID}", bucket.prefix);
    for _ in 0..3 {
        match bucket.client.get_object().bucket(&bucket.bucket).key(&key).send().await {
            Ok(found) => {
                let body = found.body.collect().await.map_err(|e| BlobError::Backend {
                    store: bucket.name.clone(),
                    message: format!("reading {key}: {}", chain(&e)),
                })?;
                let id = String::from_utf8_lossy(&body.into_bytes()).trim().to_string();
                if id.is_empty() {
                    return Err(BlobError::Config(format!("{key} in {} is empty", bucket.name)));
                }
                return Ok(id);
            }
            Err(e) if is_not_found(&e) && e.code() != Some("NoSuchBucket") => {}
            Err(e) => return Err(bucket.fail(&format!("reading {key}"), e)),
        }
        let id = BlobId::random().to_string();
        let put = bucket
            .client
            .put_object()
            .bucket(&bucket.bucket)
            .key(&key)
            .if_none_match("*")
            .body(ByteStream::from(Bytes::from(id.clone())))
            .send()
            .await;
        match put {
            Ok(_) => return Ok(id),
            // Another node wrote it first: read theirs.
            Err(e) if is_precondition_failed(&e) => {}
            Err(e) => return Err(bucket.fail(&format!("writing {key}"), e)),
        }
    }
    Err(BlobError::Backend { store: bucket.name.clone(), message: format!("{key} keeps changing") })
}

#[async_trait::async_trait]
impl BlobBackend for S3Backend {
    fn describe(&self) -> String {
        self.inner.name.clone()
    }

    fn shared_id(&self) -> Option<&str> {
        Some(&self.store_id)
    }

    async fn create(&self, id: BlobId) -> BlobResult<Box<dyn BackendWriter>> {
        Ok(Box::new(S3Writer {
            bucket: Arc::clone(&self.inner),
            key: self.inner.blob_key(id),
            part_size: self.part_size,
            buffer: BytesMut::new(),
            written: 0,
            upload: None,
            max_age: self.max_write_age,
        }))
    }

    /// A small object written and deleted under `<prefix>probe/`.
    async fn probe_writable(&self) -> BlobResult<()> {
        let b = &self.inner;
        let key = format!("{}probe/{}", b.prefix, BlobId::random());
        let body = ByteStream::from_static(b"meridian readiness probe");
        b.client.put_object().bucket(&b.bucket).key(&key).body(body).send().await.map_err(|e| b.fail("probe", e))?;
        b.client.delete_object().bucket(&b.bucket).key(&key).send().await.map_err(|e| b.fail("probe", e))?;
        Ok(())
    }

    async fn size(&self, id: BlobId) -> BlobResult<u64> {
        let b = &self.inner;
        let head = b
            .client
            .head_object()
            .bucket(&b.bucket)
            .key(b.blob_key(id))
            .send()
            .await
            .map_err(|e| b.fail_for(id, "HEAD", e))?;
        Ok(u64::try_from(head.content_length().unwrap_or(0)).unwrap_or(0))
    }

    async fn read(&self, id: BlobId, offset: u64, len: u64) -> BlobResult<BlobStream> {
        if len == 0 {
            self.size(id).await?;
            return Ok(Box::pin(futures::stream::empty()));
        }
        let b = &self.inner;
        let out = b.get(id, Some(format!("bytes={offset}-{}", offset + len - 1))).await?;
        let bucket = Arc::clone(b);
        let chunks = futures::stream::unfold((Some(out.body), len), move |(body, left)| {
            let bucket = Arc::clone(&bucket);
            async move {
                let mut body = body?;
                match body.next().await {
                    Some(Ok(chunk)) => {
                        let left = left.saturating_sub(chunk.len() as u64);
                        Some((Ok(chunk), (Some(body), left)))
                    }
                    Some(Err(e)) => {
                        let message = format!("GET {id}: {}", chain(&e));
                        Some((Err(BlobError::Backend { store: bucket.name.clone(), message }), (None, 0)))
                    }
                    // A body shorter than asked for is an error, not a short read.
                    None if left > 0 => Some((
                        Err(BlobError::Io(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            format!("blob {id}: the store sent {left} bytes fewer than asked"),
                        ))),
                        (None, 0),
                    )),
                    None => None,
                }
            }
        });
        Ok(Box::pin(chunks))
    }

    async fn read_all(&self, id: BlobId) -> BlobResult<Bytes> {
        let b = &self.inner;
        let out = b.get(id, None).await?;
        let data = out
            .body
            .collect()
            .await
            .map_err(|e| BlobError::Backend { store: b.name.clone(), message: format!("GET {id}: {}", chain(&e)) })?;
        Ok(data.into_bytes())
    }

    /// A server-side copy: the bytes never pass through this node.
    async fn duplicate(&self, id: BlobId, copy: BlobId) -> BlobResult<()> {
        let b = &self.inner;
        b.client
            .copy_object()
            .bucket(&b.bucket)
            .key(b.blob_key(copy))
            .copy_source(format!("{}/{}", b.bucket, b.blob_key(id)))
            .send()
            .await
            .map_err(|e| b.fail_for(id, "copying", e))?;
        Ok(())
    }

    async fn delete(&self, id: BlobId) -> BlobResult<()> {
        let b = &self.inner;
        match b.client.delete_object().bucket(&b.bucket).key(b.blob_key(id)).send().await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(b.fail("DELETE", e)),
        }
    }

    async fn list_older_than(&self, older_than: SystemTime) -> BlobResult<Vec<(BlobId, u64)>> {
        let b = &self.inner;
        let prefix = b.blobs_prefix();
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = b
                .client
                .list_objects_v2()
                .bucket(&b.bucket)
                .prefix(&prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| b.fail("listing blobs", e))?;
            for object in page.contents() {
                let id = object.key().and_then(|k| k.strip_prefix(&prefix)).and_then(|n| n.parse::<BlobId>().ok());
                let old = system_time(object.last_modified()).is_some_and(|at| at < older_than);
                if let (Some(id), true) = (id, old) {
                    out.push((id, u64::try_from(object.size().unwrap_or(0)).unwrap_or(0)));
                }
            }
            match page.next_continuation_token() {
                Some(next) if page.is_truncated().unwrap_or(false) => token = Some(next.to_string()),
                _ => break,
            }
        }
        Ok(out)
    }

    /// Aborts this store's multipart uploads started before `older_than` (as the service dates
    /// them) that this node has also seen unfinished since before `older_than`.
    async fn collect_stale_writes(&self, older_than: SystemTime) -> BlobResult<usize> {
        let b = &self.inner;
        let mut stale = Vec::new();
        let (mut key_marker, mut id_marker): (Option<String>, Option<String>) = (None, None);
        loop {
            let page = b
                .client
                .list_multipart_uploads()
                .bucket(&b.bucket)
                .prefix(b.blobs_prefix())
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(id_marker.take())
                .send()
                .await
                .map_err(|e| b.fail("listing multipart uploads", e))?;
            for upload in page.uploads() {
                let young = system_time(upload.initiated()).is_some_and(|at| at >= older_than);
                if let (Some(key), Some(id), false) = (upload.key(), upload.upload_id(), young) {
                    stale.push((key.to_string(), id.to_string()));
                }
            }
            if !page.is_truncated().unwrap_or(false) {
                break;
            }
            key_marker = page.next_key_marker().map(str::to_string);
            id_marker = page.next_upload_id_marker().map(str::to_string);
            if key_marker.is_none() && id_marker.is_none() {
                break;
            }
        }
        let now = SystemTime::now();
        let due: Vec<(String, String)> = {
            let mut seen = self.seen_uploads.lock().map_err(|_| BlobError::Task("upload list poisoned".into()))?;
            seen.retain(|upload, _| stale.contains(upload));
            stale.into_iter().filter(|upload| *seen.entry(upload.clone()).or_insert(now) < older_than).collect()
        };
        for (key, id) in &due {
            b.abort(key, id).await?;
            if let Ok(mut seen) = self.seen_uploads.lock() {
                seen.remove(&(key.clone(), id.clone()));
            }
        }
        Ok(due.len())
    }
}

/// A multipart upload in progress.
struct Upload {
    id: String,
    parts: Vec<CompletedPart>,
}

/// One blob being written: bytes gather until a part is full; the first full part starts a
/// multipart upload.
struct S3Writer {
    bucket: Arc<Bucket>,
    key: String,
    part_size: usize,
    buffer: BytesMut,
    /// Bytes accepted so far.
    written: u64,
    upload: Option<Upload>,
    max_age: Duration,
}

impl S3Writer {
    async fn send_part(&mut self, data: Bytes) -> BlobResult<()> {
        let b = Arc::clone(&self.bucket);
        let upload = match &mut self.upload {
            Some(upload) => upload,
            None => {
                let created = b
                    .client
                    .create_multipart_upload()
                    .bucket(&b.bucket)
                    .key(&self.key)
                    .send()
                    .await
                    .map_err(|e| b.fail("starting a multipart upload", e))?;
                let id = created.upload_id().unwrap_or_default().to_string();
                self.upload.insert(Upload { id, parts: Vec::new() })
            }
        };
        let number = upload.parts.len() as i32 + 1;
        let sent = b
            .client
            .upload_part()
            .bucket(&b.bucket)
            .key(&self.key)
            .upload_id(&upload.id)
            .part_number(number)
            .body(ByteStream::from(data))
            .send()
            .await
            .map_err(|e| b.fail("uploading a part", e))?;
        upload.parts.push(CompletedPart::builder().part_number(number).set_e_tag(sent.e_tag).build());
        Ok(())
    }

    /// Fails, deleting the blob, when its object is already older than `max_age` (some S3
    /// services date a multipart object from the upload's start): other nodes' orphan scans
    /// could remove it before its metadata commit.
    async fn check_age(&self) -> BlobResult<()> {
        let b = &self.bucket;
        let head = b.client.head_object().bucket(&b.bucket).key(&self.key).send().await;
        let head = head.map_err(|e| b.fail("HEAD after completing", e))?;
        let age = system_time(head.last_modified()).and_then(|at| SystemTime::now().duration_since(at).ok());
        if age.is_none_or(|age| age <= self.max_age) {
            return Ok(());
        }
        let _ = b.client.delete_object().bucket(&b.bucket).key(&self.key).send().await;
        Err(BlobError::Backend {
            store: b.name.clone(),
            message: format!(
                "the upload took longer than {}s, past which other nodes may collect it; nothing was stored",
                self.max_age.as_secs()
            ),
        })
    }

    async fn complete(&mut self) -> BlobResult<()> {
        let b = Arc::clone(&self.bucket);
        let rest = self.buffer.split().freeze();
        if self.upload.is_none() {
            let body = ByteStream::from(rest);
            b.client
                .put_object()
                .bucket(&b.bucket)
                .key(&self.key)
                .body(body)
                .send()
                .await
                .map_err(|e| b.fail("PUT", e))?;
            return Ok(());
        }
        if !rest.is_empty() {
            self.send_part(rest).await?;
        }
        let Some(upload) = self.upload.take() else { return Ok(()) };
        let parts = CompletedMultipartUpload::builder().set_parts(Some(upload.parts)).build();
        let done = b
            .client
            .complete_multipart_upload()
            .bucket(&b.bucket)
            .key(&self.key)
            .upload_id(&upload.id)
            .multipart_upload(parts)
            .send()
            .await;
        match done {
            Ok(_) => Ok(()),
            // Some S3 clones (moto) answer 200 with a body the SDK cannot parse: the upload is
            // complete if the object is there with every byte.
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 200) && self.stored_whole(&b).await => {
                Ok(())
            }
            Err(e) => {
                self.upload = Some(Upload { id: upload.id, parts: Vec::new() });
                Err(b.fail("completing a multipart upload", e))
            }
        }
    }

    /// Whether the object exists with as many bytes as were written.
    async fn stored_whole(&self, b: &Bucket) -> bool {
        let head = b.client.head_object().bucket(&b.bucket).key(&self.key).send().await;
        head.is_ok_and(|h| h.content_length().and_then(|n| u64::try_from(n).ok()) == Some(self.written))
    }
}

#[async_trait::async_trait]
impl BackendWriter for S3Writer {
    async fn write(&mut self, data: Bytes) -> BlobResult<()> {
        self.written += data.len() as u64;
        self.buffer.extend_from_slice(&data);
        while self.buffer.len() >= self.part_size {
            let part = self.buffer.split_to(self.part_size).freeze();
            self.send_part(part).await?;
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> BlobResult<()> {
        let multipart = self.upload.is_some();
        self.complete().await?;
        if multipart { self.check_age().await } else { Ok(()) }
    }
}

impl Drop for S3Writer {
    /// An unfinished multipart upload is aborted in the background (best effort: the orphan
    /// scan aborts what this misses).
    fn drop(&mut self) {
        let (Some(upload), Ok(runtime)) = (self.upload.take(), tokio::runtime::Handle::try_current()) else {
            return;
        };
        let (bucket, key) = (Arc::clone(&self.bucket), std::mem::take(&mut self.key));
        runtime.spawn(async move {
            if let Err(e) = bucket.abort(&key, &upload.id).await {
                tracing::warn!(error = %e, "could not abort an unfinished upload; the orphan scan will");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::normalize_prefix;

    #[test]
    fn prefixes_end_with_one_slash() {
        assert_eq!(normalize_prefix(""), "");
        assert_eq!(normalize_prefix("/"), "");
        assert_eq!(normalize_prefix("region-a"), "region-a/");
        assert_eq!(normalize_prefix("/a/b/"), "a/b/");
    }
}
