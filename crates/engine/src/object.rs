//! Single objects: put, get, head, delete, copy.

use std::collections::HashSet;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use meridian_blob::{BlobError, BlobId};
use meridian_meta::{Compare, KeyValue, Op, Revision, Txn};

use crate::conditions::{ReadConditions, WriteConditions};
use crate::crypt::{CustomerKey, DataKey, Encryption, Protection};
use crate::error::{EngineError, EngineResult};
use crate::ingest::{Body, BodyError, IngestLimits, Ingested, IngestedData, Integrity, body_from_bytes, ingest};
use crate::lifecycle::{earliest, object_expiry};
use crate::notify::{self, EventKind};
use crate::record::{self, BucketRecord, DataLayout, ObjectHeaders, ObjectRecord};
use crate::write_queue::Queueing;
use crate::{Consistency, Engine, keys, now_ms, validate_key};

/// How often a write re-reads and retries when other writers keep changing the same key.
const MAX_COMMIT_ATTEMPTS: usize = 64;
/// How often a read retries when the blob it was about to open was replaced under it.
const MAX_READ_ATTEMPTS: usize = 4;

pub struct PutRequest {
    pub bucket: String,
    pub key: String,
    pub body: Body,
    pub headers: ObjectHeaders,
    pub integrity: Integrity,
    pub conditions: WriteConditions,
    /// Makes the object expire at this instant (Unix ms).
    pub expires_at_ms: Option<i64>,
    /// Server-side encryption asked for (`None`: the bucket's default or the node's).
    pub protection: Option<Protection>,
    /// Sent as an HTML form (POST object): its event notification is `ObjectCreated:Post`.
    pub form_upload: bool,
}

#[derive(Clone, Debug)]
pub struct PutOutcome {
    pub etag: String,
    pub size: u64,
    pub revision: Revision,
    pub record: ObjectRecord,
}

/// The encryption of freshly written bytes and the data key they were sealed under.
#[derive(Default)]
pub(crate) struct Sealed {
    pub encryption: Option<Encryption>,
    pub key: Option<DataKey>,
}

/// A byte range of a GET, as in the `Range` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByteRange {
    /// `bytes=first-` or `bytes=first-last` (inclusive).
    From { first: u64, last: Option<u64> },
    /// `bytes=-len`: the last `len` bytes.
    Suffix { len: u64 },
}

impl ByteRange {
    /// The inclusive `(first, last)` byte positions within an object of `size` bytes.
    pub fn resolve(self, size: u64) -> EngineResult<(u64, u64)> {
        let unsatisfiable = EngineError::InvalidRange { size };
        match self {
            ByteRange::From { first, last } => {
                if first >= size || last.is_some_and(|last| last < first) {
                    return Err(unsatisfiable);
                }
                Ok((first, last.map_or(size - 1, |last| last.min(size - 1))))
            }
            ByteRange::Suffix { len } => {
                if len == 0 || size == 0 {
                    return Err(unsatisfiable);
                }
                Ok((size - len.min(size), size - 1))
            }
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct GetRequest {
    pub bucket: String,
    pub key: String,
    pub range: Option<ByteRange>,
    /// Read only this part of a multipart object (1-based).
    pub part_number: Option<u32>,
    pub conditions: ReadConditions,
    pub consistency: Consistency,
    /// A version of the object (S3 `versionId`), read strongly.
    pub version_id: Option<String>,
    /// The SSE-C key, for objects stored with one.
    pub customer_key: Option<CustomerKey>,
}

/// Which bytes a read returns.
#[derive(Clone, Copy)]
pub(crate) enum Reading<'a> {
    /// The plaintext (opened with this SSE-C key when the object has one).
    Plain(Option<&'a CustomerKey>),
    /// The bytes as stored (sealed, for encrypted objects): what copies and caches hold.
    Stored,
}

/// One stored piece of an object (its inline bytes, its blob, or one part) and how to open it.
struct Piece {
    stored: Stored,
    /// Length of the piece as read (plaintext when `key` is set, else as stored).
    len: u64,
    key: Option<DataKey>,
}

enum Stored {
    Inline(Bytes),
    Blob(Span),
}

pub struct GetOutcome {
    pub record: ObjectRecord,
    /// The revision that last wrote the object.
    pub revision: Revision,
    /// The bytes (empty for HEAD).
    pub body: Body,
    /// The inclusive byte range served, when a range or part was asked for.
    pub range: Option<(u64, u64)>,
    /// Number of parts, for multipart objects when a part was asked for.
    pub parts_count: Option<usize>,
    /// Where the bytes came from when not from this node's disk.
    pub source: Option<ReadSource>,
}

/// How a read of bytes held elsewhere was served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadSource {
    /// The region of the node the bytes were read from, or this node's region for a cache hit.
    pub region: String,
    /// Whether the (first) bytes came from the local cache.
    pub cache_hit: bool,
}

/// One blob of an object, as the read path needs it.
#[derive(Clone, Debug)]
pub struct Span {
    pub blob: BlobId,
    pub blob_len: u64,
    pub digests: Vec<u32>,
    pub holders: Vec<crate::record::Holder>,
}

/// The blobs holding an object's bytes, in order (none for an inline object).
pub(crate) fn spans(record: &crate::record::ObjectRecord) -> Vec<Span> {
    let stored_len = |plain: u64| match record.encryption {
        Some(_) => crate::crypt::sealed_len(plain),
        None => plain,
    };
    match &record.data {
        DataLayout::Inline => Vec::new(),
        DataLayout::Blob { id, digests, holders } => vec![Span {
            blob: *id,
            blob_len: stored_len(record.size),
            digests: digests.clone(),
            holders: holders.clone(),
        }],
        DataLayout::Parts { parts } => parts
            .iter()
            .map(|p| Span {
                blob: p.blob,
                blob_len: stored_len(p.size),
                digests: p.digests.clone(),
                holders: p.holders.clone(),
            })
            .collect(),
    }
}

/// Reads bytes held on other nodes (through a cache). Given to the engine's builder by the
/// server when the node is part of a cluster.
#[async_trait::async_trait]
pub trait RemoteReader: Send + Sync {
    async fn read(&self, span: &Span, from: u64, len: u64) -> EngineResult<(Body, ReadSource)>;

    /// Drops every cached byte of a blob no record refers to any more (overwritten, deleted,
    /// expired), for good: bytes of it fetched later are not kept either. Returns the number of
    /// chunks dropped.
    async fn forget_blob(&self, blob: BlobId) -> EngineResult<usize>;

    /// Every blob this node has cached bytes of.
    fn cached_blobs(&self) -> Vec<BlobId>;

    /// Measures another node's wall clock against this one's ([`crate::clock`]).
    async fn clock_sample(&self, node: &str) -> EngineResult<meridian_blob::ClockSample>;

    /// Streams `body` to `node` as its copy of `blob`, the way `streams` says; returns once the
    /// node has it durably, with what it stored (digest over chunks of [`crate::CHUNK_SIZE`]).
    async fn send_copy(
        &self,
        node: &str,
        blob: BlobId,
        body: Body,
        streams: meridian_blob::CopyStreams,
    ) -> EngineResult<meridian_blob::StoredCopy>;

    /// Deletes `node`'s copy of `blob` (none is fine).
    async fn delete_copy(&self, node: &str, blob: BlobId) -> EngineResult<()>;
}

impl GetOutcome {
    pub fn content_length(&self) -> u64 {
        match self.range {
            Some((first, last)) => last - first + 1,
            None => self.record.size,
        }
    }
}

#[derive(Clone, Debug)]
pub struct DeleteOutcome {
    /// The revision of the delete, or the current revision when there was nothing to delete.
    pub revision: Revision,
    pub existed: bool,
    /// In a versioned bucket: the version removed, or the delete marker made.
    pub version_id: Option<String>,
    /// Whether that version is a delete marker.
    pub delete_marker: bool,
}

pub struct CopyRequest {
    pub src_bucket: String,
    pub src_key: String,
    /// A version of the source (`x-amz-copy-source: ...?versionId=`).
    pub src_version_id: Option<String>,
    pub dst_bucket: String,
    pub dst_key: String,
    pub source_conditions: ReadConditions,
    /// New headers (metadata directive REPLACE); `None` copies the source's.
    pub replace_headers: Option<ObjectHeaders>,
    /// New tags (tagging directive REPLACE); `None` copies the source's, whatever the headers.
    pub replace_tags: Option<crate::tagging::Tags>,
    pub conditions: WriteConditions,
    /// The destination bucket's record and revision when the caller has just read them (a
    /// stale record only costs the commit a retry); `None`: read here.
    pub dst_bucket_seen: Option<(BucketRecord, Revision)>,
    /// The source's SSE-C key (`x-amz-copy-source-server-side-encryption-customer-*`).
    pub source_key: Option<CustomerKey>,
    /// Encryption asked for the copy (`None`: the destination bucket's default or the node's).
    pub protection: Option<Protection>,
    /// The copy's object lock (a source's lock is never copied).
    pub lock: crate::object_lock::ObjectLock,
}

#[derive(Clone, Debug)]
pub struct CopyOutcome {
    pub etag: String,
    pub modified_ms: i64,
    pub revision: Revision,
    pub record: ObjectRecord,
}

/// An object as read from metadata.
pub(crate) struct Current {
    pub record: ObjectRecord,
    pub revision: Revision,
    pub inline: Option<Bytes>,
}

impl Current {
    pub(crate) fn is_visible(&self, now: i64) -> bool {
        !self.record.is_expired(now)
    }
}

pub(crate) fn decode_current(
    record_kv: Option<KeyValue>,
    inline_kv: Option<KeyValue>,
) -> EngineResult<Option<Current>> {
    let Some(kv) = record_kv else { return Ok(None) };
    let record: ObjectRecord = record::decode(&kv.value)?;
    let inline = match (&record.data, inline_kv) {
        (DataLayout::Inline, Some(data)) if data.mod_revision == kv.mod_revision => Some(data.value),
        (DataLayout::Inline, _) => {
            return Err(EngineError::Corrupt("inline object without matching data".into()));
        }
        _ => None,
    };
    Ok(Some(Current { record, revision: kv.mod_revision, inline }))
}

impl Engine {
    /// Reads an object's record (and inline bytes) at one revision, expired or not, with
    /// strong consistency (what writers need).
    pub(crate) async fn read_current(&self, bucket: &str, key: &str) -> EngineResult<Option<Current>> {
        self.read_current_with(bucket, key, Consistency::Strong).await
    }

    pub(crate) async fn read_current_with(
        &self,
        bucket: &str,
        key: &str,
        consistency: Consistency,
    ) -> EngineResult<Option<Current>> {
        Ok(self.read_current_at(bucket, key, consistency).await?.0)
    }

    /// [`Engine::read_current_with`], and the store revision the read saw.
    async fn read_current_at(
        &self,
        bucket: &str,
        key: &str,
        consistency: Consistency,
    ) -> EngineResult<(Option<Current>, u64)> {
        let reader = self.reader(consistency);
        let (mut kvs, revision) = reader.get_many(&[keys::object(bucket, key), keys::inline(bucket, key)]).await?;
        let inline = kvs.pop().flatten();
        let record = kvs.pop().flatten();
        Ok((decode_current(record, inline)?, revision))
    }

    /// The object if it exists and has not expired (in a fork, also one it inherits from its
    /// source); otherwise `NoSuchKey` or `NoSuchBucket`.
    pub(crate) async fn read_visible(
        &self,
        bucket: &str,
        key: &str,
        consistency: Consistency,
    ) -> EngineResult<Current> {
        self.read_visible_in(bucket, key, consistency, true).await
    }

    /// [`Engine::read_visible`] for a change of the object record in place (its tags): an
    /// object a fork inherits is its source's, so it is refused.
    pub(crate) async fn read_own_visible(&self, bucket: &str, key: &str) -> EngineResult<Current> {
        self.read_visible_in(bucket, key, Consistency::Strong, false).await
    }

    async fn read_visible_in(
        &self,
        bucket: &str,
        key: &str,
        consistency: Consistency,
        inherit: bool,
    ) -> EngineResult<Current> {
        let mut found = self.read_current_with(bucket, key, consistency).await?;
        if consistency != Consistency::Strong && !found.as_ref().is_some_and(|c| c.is_visible(now_ms())) {
            // A miss in the local view may be a key just written elsewhere: confirm it.
            found = self.read_current_with(bucket, key, Consistency::Strong).await?;
        }
        match found {
            Some(current) if current.is_visible(now_ms()) => Ok(current),
            // An expired current object is still the key's newest version: no delete marker
            // hides it, and a fork wrote it itself.
            Some(_) => Err(EngineError::NoSuchKey),
            None => {
                let (record, _) = self.bucket(bucket).await?;
                if record.versioning.is_some()
                    && let Some(version_id) = self.latest_marker(bucket, key).await?
                {
                    return Err(EngineError::DeleteMarker { version_id, by_id: false });
                }
                if record.fork_of.is_some() {
                    let inherited = self.read_inherited(bucket, &record, key).await?;
                    if !inherit {
                        return Err(EngineError::InvalidRequest(format!(
                            "{key} is inherited from the source of fork {bucket}: write it in the fork first \
                             (for example, copy it onto itself)"
                        )));
                    }
                    return Ok(inherited);
                }
                Err(EngineError::NoSuchKey)
            }
        }
    }

    /// Whether each `(key, revision)` of `bucket` still names exactly the object record it did
    /// when read at [`Consistency::Local`] (`None`: there was none), so that a caller may keep
    /// what it derived from those reads. Answers from the local view without decoding records.
    /// "Still absent" is only confirmed where the local view is the strong one (a single
    /// metadata store): elsewhere a local miss may be a key just written in another region, which
    /// a read confirms strongly, so `false`.
    pub async fn objects_unchanged(&self, bucket: &str, seen: &[(String, Option<Revision>)]) -> EngineResult<bool> {
        if !self.local_view_is_strong() && seen.iter().any(|(_, revision)| revision.is_none()) {
            return Ok(false);
        }
        let keys: Vec<Bytes> = seen.iter().map(|(key, _)| keys::object(bucket, key)).collect();
        let (now, _) = self.reader(Consistency::Local).get_many(&keys).await?;
        Ok(now.iter().zip(seen).all(|(kv, (_, revision))| kv.as_ref().map(|kv| kv.mod_revision) == *revision))
    }

    /// Whether reads at [`Consistency::Local`] are strong reads (one metadata store, no
    /// replicas): then a local miss needs no confirmation.
    pub fn local_view_is_strong(&self) -> bool {
        self.replicas().is_none()
    }

    pub async fn put_object(&self, req: PutRequest) -> EngineResult<PutOutcome> {
        self.put_object_in(None, req).await
    }

    /// Like [`Engine::put_object`], with the bucket's record and revision when the caller has
    /// just read them (a stale record only costs the commit a retry).
    pub async fn put_object_in(
        &self,
        bucket: Option<(BucketRecord, Revision)>,
        req: PutRequest,
    ) -> EngineResult<PutOutcome> {
        let (name, key, mut shadow) = (req.bucket.clone(), req.key.clone(), None);
        let outcome = self.put_object_guarded(bucket, req, |record, _| shadow = record.shadow.clone()).await?;
        self.write_through(shadow.as_ref(), &name, &key).await?;
        Ok(outcome)
    }

    /// [`Engine::put_object_in`] without write-through, with `guard` seeing the bucket and
    /// adding to the commit.
    pub(crate) async fn put_object_guarded(
        &self,
        bucket: Option<(BucketRecord, Revision)>,
        req: PutRequest,
        guard: impl FnOnce(&BucketRecord, &mut ExtraTxn),
    ) -> EngineResult<PutOutcome> {
        validate_key(&req.key)?;
        req.headers.validate()?;
        // Fail fast, before reading a possibly large body into a bucket that isn't there.
        let (bucket, bucket_revision) = match bucket {
            Some(seen) => crate::bucket::writable(seen)?,
            None => self.writable_bucket(&req.bucket).await?,
        };
        self.check_residency(&req.bucket, &bucket)?;
        crate::object_lock::check_requested(&bucket, &req.headers.lock)?;
        let (encryption, sealing) = self.new_sealing(self.protection_for(req.protection, &bucket).as_ref())?;
        let limits = IngestLimits {
            inline_max: self.config().inline_max,
            max_size: self.config().max_object_size,
            blob_id: None,
            sealing: sealing.clone(),
        };
        let (ingested, holders) =
            self.ingest_placed(&req.bucket, &bucket.location, req.body, req.integrity, limits).await?;
        let lifecycle_expiry = object_expiry(&bucket.lifecycle, &req.key, &req.headers.tags, now_ms());
        let expires_at_ms = earliest(req.expires_at_ms, lifecycle_expiry);
        let sealed = Sealed { encryption, key: sealing };
        let (record, inline) = self.new_record(ingested, holders, req.headers, expires_at_ms, sealed);
        let mut extra = ExtraTxn::seen_bucket(&bucket, bucket_revision);
        extra.ops.extend(self.repair_op(&req.bucket, &req.key, &bucket, &record).await?);
        let event = if req.form_upload { EventKind::Post } else { EventKind::Put };
        extra.notify(&req.bucket, &bucket, &req.key, event, &record);
        guard(&bucket, &mut extra);
        let (revision, version) =
            self.commit_object(&req.bucket, &req.key, &record, inline, &req.conditions, extra).await?;
        let record = ObjectRecord { version, ..record };
        Ok(PutOutcome { etag: record.etag.clone(), size: record.size, revision, record })
    }

    /// The record of freshly ingested bytes, and the bytes themselves when they are stored inline.
    pub(crate) fn new_record(
        &self,
        ingested: Ingested,
        holders: Vec<record::Holder>,
        headers: ObjectHeaders,
        expires_at_ms: Option<i64>,
        sealed: Sealed,
    ) -> (ObjectRecord, Option<Bytes>) {
        let (data, inline) = match ingested.data {
            IngestedData::Inline(bytes) => (DataLayout::Inline, Some(bytes)),
            IngestedData::Blob(id) => (DataLayout::Blob { id, digests: ingested.digests, holders }, None),
        };
        let record = ObjectRecord {
            size: ingested.size,
            etag: Engine::etag_of(sealed.encryption.as_ref(), sealed.key.as_ref(), &ingested.md5),
            modified_ms: now_ms(),
            headers,
            checksum: ingested.checksum,
            data,
            expires_at_ms,
            version: None,
            encryption: sealed.encryption,
        };
        (record, inline)
    }

    /// Like [`Engine::try_commit_object`], and deletes the new record's blobs when it fails.
    pub(crate) async fn commit_object(
        &self,
        bucket: &str,
        key: &str,
        record: &ObjectRecord,
        inline: Option<Bytes>,
        conditions: &WriteConditions,
        extra: ExtraTxn,
    ) -> EngineResult<Committed> {
        let result = self.try_commit_object(bucket, key, record, inline, conditions, extra).await;
        if result.is_err() {
            self.discard_data(&record.data);
        }
        result
    }

    /// Atomically replaces whatever is at `bucket/key` with `record`, if `conditions` hold
    /// against the current object, retrying while other writers change the key. In a versioned
    /// bucket the record becomes a new version (its stamp is returned).
    pub(crate) async fn try_commit_object(
        &self,
        bucket: &str,
        key: &str,
        record: &ObjectRecord,
        inline: Option<Bytes>,
        conditions: &WriteConditions,
        extra: ExtraTxn,
    ) -> EngineResult<Committed> {
        if extra.versioned_bucket.is_some() {
            let new = Some((record, inline.as_ref()));
            let done = self.commit_version(bucket, key, new, conditions, &extra).await?;
            return Ok((done.revision, Some(done.stamp)));
        }
        if conditions.is_unconditional() && extra.is_only_bucket_revision() {
            // Ordered behind this node's other writes of the key instead of racing them.
            let queued =
                self.commit_queued(bucket, key, record, inline.clone(), extra.bucket_revision, &extra.event_ops);
            match queued.await {
                Queueing::Committed(revision) => return Ok((revision, None)),
                Queueing::Contended => return Err(EngineError::Contended),
                Queueing::Alone => {}
            }
        }
        // The first attempt reads the local view (one metadata round trip in all: the commit);
        // the transaction compares every revision it read, so a stale view only costs a retry,
        // which reads strongly. A failed condition is never reported from the local view.
        let mut consistency = Consistency::Local;
        let mut seen_bucket = extra.bucket_revision;
        for _ in 0..MAX_COMMIT_ATTEMPTS {
            // Two independent reads: in parallel, as each may be a network round trip.
            let (bucket_revision, current) = futures::try_join!(
                self.bucket_revision_for_write(bucket, seen_bucket.take()),
                self.read_current_with(bucket, key, consistency)
            )?;
            let now = now_ms();
            let visible = current.as_ref().filter(|c| c.is_visible(now)).map(|c| (&c.record, c.revision));
            if let Err(failed) = conditions.check(visible) {
                if consistency == Consistency::Strong {
                    return Err(failed);
                }
                consistency = Consistency::Strong;
                continue;
            }

            let change = object_change(bucket, key, current.as_ref(), Some((record, inline.as_ref())));
            let mut txn = Txn::new().when(Compare::mod_revision_is(keys::bucket(bucket), bucket_revision));
            txn.compares.extend(change.compares);
            txn.ops.extend(change.ops);
            let old_blobs = change.freed;
            txn = with_fence(txn, bucket, conditions);
            txn.compares.extend(extra.compares.iter().cloned());
            txn.ops.extend(extra.ops.iter().chain(&extra.event_ops).cloned());
            let resp = self.meta().txn(txn).await?;
            if resp.succeeded {
                self.delete_blobs_later(old_blobs);
                return Ok((resp.revision, None));
            }
            check_fence_failure(&resp, conditions)?;
            if let Some(check) = &extra.still_valid {
                check(self).await?;
            }
            consistency = Consistency::Strong;
        }
        Err(EngineError::Contended)
    }

    pub async fn get_object(&self, req: GetRequest) -> EngineResult<GetOutcome> {
        self.read_object(req, None, true).await
    }

    /// Like GET without the bytes.
    pub async fn head_object(&self, req: GetRequest) -> EngineResult<GetOutcome> {
        self.read_object(req, None, false).await
    }

    /// GET (`with_body`) or HEAD of the object, as it is or as the bucket's snapshot `snapshot`
    /// shows it.
    pub async fn read_object_at(
        &self,
        req: GetRequest,
        snapshot: Option<&str>,
        with_body: bool,
    ) -> EngineResult<GetOutcome> {
        if snapshot.is_some() && req.version_id.is_some() {
            return Err(EngineError::InvalidArgument("a read names a version id or a snapshot, not both".into()));
        }
        self.read_object(req, snapshot, with_body).await
    }

    pub(crate) async fn read_object(
        &self,
        req: GetRequest,
        snapshot: Option<&str>,
        with_body: bool,
    ) -> EngineResult<GetOutcome> {
        validate_key(&req.key)?;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let current = match (snapshot, &req.version_id) {
                (Some(name), _) => self.read_at_snapshot(&req.bucket, name, &req.key).await?,
                (None, Some(id)) => self.read_version(&req.bucket, &req.key, id).await?,
                (None, None) => match self.read_visible(&req.bucket, &req.key, req.consistency).await {
                    Err(EngineError::NoSuchKey) => return self.read_through(req, with_body).await,
                    found => found?,
                },
            };
            crate::crypt::check_plain_read(current.record.encryption.as_ref(), req.customer_key.as_ref())?;
            req.conditions.check_read(&current.record)?;
            let (range, parts_count) = select_range(&current.record, req.range, req.part_number)?;
            let (body, source) = if with_body {
                match self.open_body(&current, range, Reading::Plain(req.customer_key.as_ref())).await {
                    Ok(opened) => opened,
                    // Replaced between our metadata read and the open: read again.
                    Err(EngineError::Blob(BlobError::NotFound(_))) if attempts < MAX_READ_ATTEMPTS => {
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            } else {
                (body_from_bytes(Bytes::new()), None)
            };
            return Ok(GetOutcome {
                record: current.record,
                revision: current.revision,
                body,
                range,
                parts_count,
                source,
            });
        }
    }

    /// A stream of the object's bytes in `range` (inclusive), or all of them, and where the
    /// first bytes come from when not from this node's disk. A range of an encrypted object
    /// reads and opens only the sealed chunks holding it.
    pub(crate) async fn open_body(
        &self,
        current: &Current,
        range: Option<(u64, u64)>,
        reading: Reading<'_>,
    ) -> EngineResult<(Body, Option<ReadSource>)> {
        let pieces = self.pieces(current, reading)?;
        let size: u64 = pieces.iter().map(|p| p.len).sum();
        let (first, last) = match range {
            Some(r) => r,
            None if size == 0 => return Ok((body_from_bytes(Bytes::new()), None)),
            None => (0, size - 1),
        };
        let mut segments = Vec::new();
        let mut start = 0u64;
        for piece in pieces {
            let end = start + piece.len; // exclusive
            if piece.len > 0 && end > first && start <= last {
                let from = first.max(start) - start;
                let to = (last + 1).min(end) - start;
                segments.push((piece, from, to - from));
            }
            start = end;
        }
        // Open the first segment now so a replaced object is noticed before any byte is sent.
        let mut segments = segments.into_iter();
        let Some((piece, from, len)) = segments.next() else { return Ok((body_from_bytes(Bytes::new()), None)) };
        let (head, source) = self.open_piece(&piece, from, len).await?;
        let engine = self.clone();
        let tail = futures::stream::iter(segments)
            .then(move |(piece, from, len)| {
                let engine = engine.clone();
                async move { engine.open_piece(&piece, from, len).await.map(|(body, _)| body) }
            })
            .map_err(|e| Box::new(e) as BodyError)
            .try_flatten();
        Ok((Box::pin(head.chain(tail)), source))
    }

    /// The stored pieces of an object, each with its data key when read as plaintext.
    fn pieces(&self, current: &Current, reading: Reading<'_>) -> EngineResult<Vec<Piece>> {
        let record = &current.record;
        let encryption = record.encryption.as_ref().filter(|_| !matches!(reading, Reading::Stored));
        let customer = match reading {
            Reading::Plain(key) => key,
            Reading::Stored => None,
        };
        let stored_len = |plain: u64| match record.encryption {
            Some(_) => crate::crypt::sealed_len(plain),
            None => plain,
        };
        let piece = |stored: Stored, plain: u64, wrapped: Option<&String>| -> EngineResult<Piece> {
            let Some(encryption) = encryption else {
                return Ok(Piece { stored, len: stored_len(plain), key: None });
            };
            let wrapped =
                wrapped.ok_or_else(|| EngineError::Corrupt("an encrypted object without its data key".into()))?;
            let key = self.config().keyring.unwrap(encryption, wrapped, customer)?;
            Ok(Piece { stored, len: plain, key: Some(key) })
        };
        let whole_key = record.encryption.as_ref().and_then(|e| e.wrapped_key.as_ref());
        match &record.data {
            DataLayout::Inline => {
                let data = current.inline.clone().unwrap_or_default();
                Ok(vec![piece(Stored::Inline(data), record.size, whole_key)?])
            }
            DataLayout::Blob { .. } => {
                spans(record).into_iter().map(|span| piece(Stored::Blob(span), record.size, whole_key)).collect()
            }
            DataLayout::Parts { parts } => spans(record)
                .into_iter()
                .zip(parts)
                .map(|(span, part)| piece(Stored::Blob(span), part.size, part.wrapped_key.as_ref()))
                .collect(),
        }
    }

    /// `len` bytes of a piece from `from`, opened when it has a key.
    async fn open_piece(&self, piece: &Piece, from: u64, len: u64) -> EngineResult<(Body, Option<ReadSource>)> {
        let Some(key) = &piece.key else { return self.open_stored(&piece.stored, from, len).await };
        let (sealed_from, sealed_len, _) = crate::crypt::sealed_range(piece.len, from, len);
        let (sealed, source) = self.open_stored(&piece.stored, sealed_from, sealed_len).await?;
        Ok((crate::crypt::open_stream(sealed, key.clone(), piece.len, from, len), source))
    }

    async fn open_stored(&self, stored: &Stored, from: u64, len: u64) -> EngineResult<(Body, Option<ReadSource>)> {
        match stored {
            Stored::Inline(data) => {
                let end = ((from + len) as usize).min(data.len());
                Ok((body_from_bytes(data.slice((from as usize).min(end)..end)), None))
            }
            Stored::Blob(span) => self.open_span(span, from, len).await,
        }
    }

    /// `len` bytes of one blob from `from`: from this node's disk, or through the remote reader.
    pub(crate) async fn open_span(&self, span: &Span, from: u64, len: u64) -> EngineResult<(Body, Option<ReadSource>)> {
        if self.is_local(&span.holders) {
            let stream = self.blobs().read(span.blob, from, len).await?;
            return Ok((Box::pin(stream.map_err(|e| Box::new(e) as BodyError)), None));
        }
        let remote = self.remote().ok_or_else(|| {
            EngineError::Unavailable(format!(
                "the object's bytes are on node {} and this node has no peer access",
                span.holders.first().map_or("?", |h| h.node.as_str())
            ))
        })?;
        let (body, source) = remote.read(span, from, len).await?;
        Ok((body, Some(source)))
    }

    /// Deletes an object. Deleting a missing key succeeds, as in S3.
    pub async fn delete_object(
        &self,
        bucket: &str,
        key: &str,
        conditions: &WriteConditions,
    ) -> EngineResult<DeleteOutcome> {
        validate_key(key)?;
        self.delete_with_tombstone(bucket, key, self.delete_object_here(bucket, key, conditions)).await
    }

    async fn delete_object_here(
        &self,
        bucket: &str,
        key: &str,
        conditions: &WriteConditions,
    ) -> EngineResult<DeleteOutcome> {
        // Local view first, as in `try_commit_object`; anything answered without a commit
        // (a missing key, a failed condition) is confirmed with a strong read.
        let mut consistency = Consistency::Local;
        for _ in 0..MAX_COMMIT_ATTEMPTS {
            let (found, read_at) = self.read_current_at(bucket, key, consistency).await?;
            let visible = found.as_ref().is_some_and(|c| c.is_visible(now_ms()));
            let checked = conditions.check(found.as_ref().filter(|_| visible).map(|c| (&c.record, c.revision)));
            if consistency != Consistency::Strong && (found.is_none() || checked.is_err()) {
                consistency = Consistency::Strong;
                continue;
            }
            // A stamped record is a version; a versioned bucket without the key makes a marker.
            // (Enabling versioning stamps every object, so unversioned deletes read nothing more.)
            if found.as_ref().is_some_and(|c| c.record.version.is_some()) {
                return self.delete_versioned(bucket, key, conditions).await;
            }
            let Some(current) = found else {
                if self.bucket(bucket).await?.0.versioning.is_some() {
                    return self.delete_versioned(bucket, key, conditions).await;
                }
                checked?;
                // The revision at which the key was seen absent, not the store's revision
                // later: a put may have committed in between, and a reader at this revision
                // must not find the key the delete reported gone.
                return Ok(DeleteOutcome { revision: read_at, existed: false, version_id: None, delete_marker: false });
            };
            checked?;
            let change = object_change(bucket, key, Some(&current), None);
            let blobs = change.freed;
            let mut txn = Txn::new();
            txn.compares.extend(change.compares);
            txn.ops.extend(change.ops);
            // The object existed, so its bucket does: an error here is the store's, and the
            // delete must not commit without the event a rule may ask for.
            let (bucket_record, _) = self.bucket(bucket).await?;
            txn.ops.extend(notify::event_op(bucket, &bucket_record, key, EventKind::Delete, None, None));
            txn = with_fence(txn, bucket, conditions);
            let resp = self.meta().txn(txn).await?;
            if resp.succeeded {
                self.delete_blobs_later(blobs);
                return Ok(DeleteOutcome {
                    revision: resp.revision,
                    existed: visible,
                    version_id: None,
                    delete_marker: false,
                });
            }
            check_fence_failure(&resp, conditions)?;
            consistency = Consistency::Strong;
        }
        Err(EngineError::Contended)
    }

    /// Deletes many keys, or versions of keys (S3 DeleteObjects); each succeeds or fails on its
    /// own. `bypass(key)`: the caller asked to bypass GOVERNANCE retention and may, for `key`.
    pub async fn delete_objects(
        &self,
        bucket: &str,
        keys: Vec<(String, Option<String>)>,
        bypass: impl Fn(&str) -> bool,
    ) -> Vec<((String, Option<String>), EngineResult<DeleteOutcome>)> {
        let none = WriteConditions::default();
        futures::stream::iter(keys)
            .map(|(key, version_id)| {
                let none = &none;
                let bypass = bypass(&key);
                async move {
                    let result = match &version_id {
                        Some(id) => self.delete_version_with(bucket, &key, id, bypass).await,
                        None => self.delete_object(bucket, &key, none).await,
                    };
                    ((key, version_id), result)
                }
            })
            .buffered(16)
            .collect()
            .await
    }

    /// Server-side copy. Blob bytes are shared through hard links, not copied.
    pub async fn copy_object(&self, req: CopyRequest) -> EngineResult<CopyOutcome> {
        validate_key(&req.src_key)?;
        validate_key(&req.dst_key)?;
        let source = match &req.src_version_id {
            Some(id) => self.read_version(&req.src_bucket, &req.src_key, id).await?,
            None => self.read_visible_through(&req.src_bucket, &req.src_key).await?,
        };
        req.source_conditions.check_copy_source(&source.record)?;
        let unchanged = req.replace_headers.is_none() && req.replace_tags.is_none();
        let mut headers = req.replace_headers.unwrap_or_else(|| source.record.headers.clone());
        headers.tags = req.replace_tags.unwrap_or_else(|| source.record.headers.tags.clone());
        headers.lock = req.lock;
        headers.validate()?;
        // Copying an older version over its key restores it.
        if req.src_bucket == req.dst_bucket && req.src_key == req.dst_key && unchanged && req.src_version_id.is_none() {
            return Err(EngineError::InvalidRequest(
                "This copy request is illegal because it is trying to copy an object to itself without changing the object's metadata, storage class, website redirect location or encryption attributes.".into(),
            ));
        }
        let (dst_bucket, dst_revision) = match req.dst_bucket_seen {
            Some(seen) => crate::bucket::writable(seen)?,
            None => self.writable_bucket(&req.dst_bucket).await?,
        };
        self.check_residency(&req.dst_bucket, &dst_bucket)?;
        crate::object_lock::check_requested(&dst_bucket, &headers.lock)?;
        crate::crypt::check_plain_read(source.record.encryption.as_ref(), req.source_key.as_ref())?;
        let protection = self.protection_for(req.protection, &dst_bucket);
        let expires_at_ms = object_expiry(&dst_bucket.lifecycle, &req.dst_key, &headers.tags, now_ms());
        let record = if source.record.encryption.is_some() || protection.is_some() {
            // Encrypted on either side: the plaintext is sealed again under a new data key.
            let (body, _) = self.open_body(&source, None, Reading::Plain(req.source_key.as_ref())).await?;
            let (encryption, sealing) = self.new_sealing(protection.as_ref())?;
            let limits = IngestLimits::to_blob(sealing.clone());
            let (copied, holders) =
                self.ingest_placed(&req.dst_bucket, &dst_bucket.location, body, Integrity::default(), limits).await?;
            let checksum = source.record.checksum.clone();
            let (mut record, inline) =
                self.new_record(copied, holders, headers, expires_at_ms, Sealed { encryption, key: sealing });
            record.checksum = checksum;
            (record, inline)
        } else {
            let data = match &dst_bucket.location {
                multi @ record::Location::MultiRegion { .. } => {
                    self.copy_to_regions(&source, &req.dst_bucket, multi).await?
                }
                _ => self.duplicate_data(&source).await?,
            };
            let inline = source.inline.clone().filter(|_| matches!(data, DataLayout::Inline));
            let record = ObjectRecord {
                size: source.record.size,
                etag: source.record.etag.clone(),
                modified_ms: now_ms(),
                expires_at_ms,
                headers,
                checksum: source.record.checksum.clone(),
                data,
                encryption: None,
                version: None,
            };
            (record, inline)
        };
        let (record, inline) = record;
        let mut extra = ExtraTxn::seen_bucket(&dst_bucket, dst_revision);
        extra.ops.extend(self.repair_op(&req.dst_bucket, &req.dst_key, &dst_bucket, &record).await?);
        extra.notify(&req.dst_bucket, &dst_bucket, &req.dst_key, EventKind::Copy, &record);
        let (revision, version) =
            self.commit_object(&req.dst_bucket, &req.dst_key, &record, inline, &req.conditions, extra).await?;
        let record = ObjectRecord { version, ..record };
        self.write_through(dst_bucket.shadow.as_ref(), &req.dst_bucket, &req.dst_key).await?;
        Ok(CopyOutcome { etag: record.etag.clone(), modified_ms: record.modified_ms, revision, record })
    }

    /// The source's bytes streamed into a new blob with its copies in a multi-region bucket's
    /// other regions (a hard link would leave them in this region only).
    async fn copy_to_regions(
        &self,
        source: &Current,
        bucket: &str,
        location: &record::Location,
    ) -> EngineResult<DataLayout> {
        let (body, _) = self.open_body(source, None, Reading::Plain(None)).await?;
        let limits = IngestLimits::to_blob(None);
        let (copied, holders) = self.ingest_placed(bucket, location, body, Integrity::default(), limits).await?;
        match copied.data {
            IngestedData::Blob(id) => Ok(DataLayout::Blob { id, digests: copied.digests, holders }),
            IngestedData::Inline(_) => Ok(DataLayout::Inline), // an empty object
        }
    }

    /// The same bytes under new blob ids: hard links when the blobs are on this node, else a
    /// streamed copy into a local blob.
    async fn duplicate_data(&self, source: &Current) -> EngineResult<DataLayout> {
        let data = &source.record.data;
        let all_local = match data {
            DataLayout::Inline => true,
            DataLayout::Blob { holders, .. } => self.is_local(holders),
            DataLayout::Parts { parts } => parts.iter().all(|p| self.is_local(&p.holders)),
        };
        if !all_local {
            let (body, _) = self.open_body(source, None, Reading::Plain(None)).await?;
            let limits = IngestLimits::to_blob(None);
            let copied = ingest(self.blobs(), body, Integrity::default(), limits).await?;
            let IngestedData::Blob(id) = copied.data else {
                return Err(EngineError::Corrupt("a copied object was not written to a blob".into()));
            };
            return Ok(DataLayout::Blob { id, digests: copied.digests, holders: self.here() });
        }
        Ok(match data {
            DataLayout::Inline => DataLayout::Inline,
            DataLayout::Blob { id, digests, .. } => DataLayout::Blob {
                id: self.blobs().duplicate(*id).await?,
                digests: digests.clone(),
                holders: self.here(),
            },
            DataLayout::Parts { parts } => {
                let mut copied = Vec::with_capacity(parts.len());
                for part in parts {
                    match self.blobs().duplicate(part.blob).await {
                        Ok(blob) => copied.push(crate::record::PartLayout {
                            blob,
                            size: part.size,
                            digests: part.digests.clone(),
                            holders: self.here(),
                            wrapped_key: None,
                        }),
                        Err(e) => {
                            self.delete_blobs_now(copied.iter().map(|p| p.blob).collect());
                            return Err(e.into());
                        }
                    }
                }
                DataLayout::Parts { parts: copied }
            }
        })
    }
}

/// The revision of a committed object write, and the version it made in a versioned bucket.
pub(crate) type Committed = (Revision, Option<record::VersionStamp>);

/// The compares and writes that replace `current` (read at its revision) by `new` (record and
/// inline bytes), or delete it when `new` is `None`, plus the blobs no longer referenced.
pub(crate) struct Change {
    pub compares: Vec<Compare>,
    pub ops: Vec<Op>,
    pub freed: Vec<BlobId>,
}

pub(crate) fn object_change(
    bucket: &str,
    key: &str,
    current: Option<&Current>,
    new: Option<(&ObjectRecord, Option<&Bytes>)>,
) -> Change {
    let object_key = keys::object(bucket, key);
    let inline_key = keys::inline(bucket, key);
    // A version's blobs belong to its `v/` entry ([`crate::versions`]), never to the `o/` copy.
    let owned = |r: &ObjectRecord| -> HashSet<BlobId> {
        if r.version.is_some() { HashSet::new() } else { r.data.blobs().into_iter().collect() }
    };
    let old_blobs = current.map(|c| owned(&c.record)).unwrap_or_default();
    let new_blobs = new.map(|(r, _)| owned(r)).unwrap_or_default();
    let had_inline = current.is_some_and(|c| c.inline.is_some());
    let mut txn = Txn::new().when(Compare::mod_revision_is(object_key.clone(), current.map_or(0, |c| c.revision)));
    match new {
        Some((record, inline)) => {
            txn = txn.then(Op::put(object_key.clone(), record::encode(record)));
            match inline {
                Some(bytes) => txn = txn.then(Op::put(inline_key, bytes.clone())),
                None if had_inline => txn = txn.then(Op::delete(inline_key)),
                None => {}
            }
        }
        None if current.is_some() => {
            txn = txn.then(Op::delete(object_key.clone()));
            if had_inline {
                txn = txn.then(Op::delete(inline_key));
            }
        }
        None => {}
    }
    for blob in new_blobs.difference(&old_blobs) {
        txn = txn.then(Op::put(keys::blob_ref(*blob), object_key.clone()));
    }
    let freed: Vec<BlobId> = old_blobs.difference(&new_blobs).copied().collect();
    for blob in &freed {
        txn = txn.then(Op::delete(keys::blob_ref(*blob)));
    }
    let old_expiry = current.and_then(|c| c.record.expires_at_ms);
    let new_expiry = new.and_then(|(r, _)| r.expires_at_ms);
    txn = with_expiry_index(txn, &object_key, old_expiry, new_expiry);
    Change { compares: txn.compares, ops: txn.ops, freed }
}

/// Keeps the expiry index in step with an object's expiry instant.
pub(crate) fn with_expiry_index(mut txn: Txn, target: &Bytes, old: Option<i64>, new: Option<i64>) -> Txn {
    if old == new {
        return txn;
    }
    if let Some(at) = old {
        txn = txn.then(Op::delete(keys::expiry(at, target)));
    }
    if let Some(at) = new {
        txn = txn.then(Op::put(keys::expiry(at, target), Bytes::new()));
    }
    txn
}

/// Adds the fencing check: the lock's latest token must still be the one the writer holds.
/// The fence key is read back first on failure, for [`check_fence_failure`].
pub(crate) fn with_fence(mut txn: Txn, bucket: &str, conditions: &WriteConditions) -> Txn {
    if let Some(fence) = &conditions.fence {
        let key = keys::fence(bucket, &fence.lock);
        txn = txn.when(Compare {
            key: key.clone(),
            op: meridian_meta::CompareOp::Equal,
            target: meridian_meta::CompareTarget::Value(Bytes::from(fence.token.to_string())),
        });
        txn.read_on_failure.insert(0, key);
    }
    txn
}

/// After a failed commit: was it the fence? Then no retry can succeed.
pub(crate) fn check_fence_failure(resp: &meridian_meta::TxnResponse, conditions: &WriteConditions) -> EngineResult<()> {
    let Some(fence) = &conditions.fence else {
        return Ok(());
    };
    let current = resp
        .failure_reads
        .first()
        .and_then(|kv| kv.as_ref())
        .and_then(|kv| std::str::from_utf8(&kv.value).ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    if current != fence.token {
        return Err(EngineError::FenceRejected { lock: fence.lock.clone(), token: fence.token, current });
    }
    Ok(())
}

/// More conditions and writes to fold into an object commit (used by multipart completion),
/// a check to run when the commit fails, to stop retrying when they can never hold, and the
/// bucket revision the caller has already read.
#[derive(Default)]
pub(crate) struct ExtraTxn {
    pub compares: Vec<Compare>,
    pub ops: Vec<Op>,
    #[allow(clippy::type_complexity)]
    pub still_valid:
        Option<Box<dyn for<'a> Fn(&'a Engine) -> futures::future::BoxFuture<'a, EngineResult<()>> + Send + Sync>>,
    /// The bucket record's revision as the caller read it: the first attempt compares it
    /// instead of reading the record again; a stale one fails the commit, and the retry reads it.
    pub bucket_revision: Option<Revision>,
    /// The bucket's record as the caller read it (at `bucket_revision`), when it is versioned:
    /// set, the write makes a new version ([`Engine::commit_version`], whose first attempt plans
    /// with this record instead of reading it again).
    pub versioned_bucket: Option<Box<BucketRecord>>,
    /// The event of a versioned write, queued by [`Engine::commit_version`] with the version it
    /// makes.
    pub event: Option<EventKind>,
    /// The event write of an unversioned write (kept apart from `ops`: it may go through the
    /// per-key write queue with its write).
    pub event_ops: Vec<Op>,
}

impl ExtraTxn {
    /// Nothing extra but the bucket revision the caller has read.
    pub(crate) fn seen_bucket(bucket: &BucketRecord, revision: Revision) -> Self {
        ExtraTxn {
            bucket_revision: Some(revision),
            versioned_bucket: bucket.versioning.is_some().then(|| Box::new(bucket.clone())),
            ..Default::default()
        }
    }

    /// Queues the write's event notification if a rule of `bucket` matches (see [`notify`]).
    pub(crate) fn notify(&mut self, name: &str, bucket: &BucketRecord, key: &str, kind: EventKind, new: &ObjectRecord) {
        if bucket.versioning.is_some() {
            self.event = Some(kind);
        } else {
            self.event_ops.extend(notify::event_op(name, bucket, key, kind, Some(new), None));
        }
    }

    /// True when there is nothing to fold into the commit but the bucket revision.
    fn is_only_bucket_revision(&self) -> bool {
        self.compares.is_empty() && self.ops.is_empty() && self.still_valid.is_none()
    }
}

/// The inclusive byte range to serve (`None`: all) and, for multipart objects read by part
/// number, the number of parts.
type Selection = (Option<(u64, u64)>, Option<usize>);

/// Resolves a Range header or part number against the object.
fn select_range(record: &ObjectRecord, range: Option<ByteRange>, part_number: Option<u32>) -> EngineResult<Selection> {
    match (range, part_number) {
        (Some(_), Some(_)) => Err(EngineError::InvalidArgument("Range and partNumber cannot both be specified".into())),
        (Some(range), None) => Ok((Some(range.resolve(record.size)?), None)),
        (None, Some(n)) => {
            let sizes = record.part_sizes();
            let index =
                (n as usize).checked_sub(1).filter(|i| *i < sizes.len()).ok_or(EngineError::InvalidPartNumber)?;
            let first: u64 = sizes[..index].iter().sum();
            let count = matches!(record.data, DataLayout::Parts { .. }).then_some(sizes.len());
            if sizes[index] == 0 {
                return Ok((None, count));
            }
            Ok((Some((first, first + sizes[index] - 1)), count))
        }
        (None, None) => Ok((None, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_resolve_like_s3() {
        let r = |first, last| ByteRange::From { first, last };
        assert_eq!(r(0, Some(9)).resolve(100).unwrap(), (0, 9));
        assert_eq!(r(90, Some(200)).resolve(100).unwrap(), (90, 99), "a last byte past the end is clamped");
        assert_eq!(r(10, None).resolve(100).unwrap(), (10, 99));
        assert_eq!(ByteRange::Suffix { len: 10 }.resolve(100).unwrap(), (90, 99));
        assert_eq!(ByteRange::Suffix { len: 1000 }.resolve(100).unwrap(), (0, 99));
        assert!(matches!(r(100, None).resolve(100), Err(EngineError::InvalidRange { size: 100 })));
        assert!(r(0, None).resolve(0).is_err());
        assert!(ByteRange::Suffix { len: 0 }.resolve(100).is_err());
    }
}
