//! The engine: S3 object semantics (buckets, objects, multipart uploads, listings,
//! preconditions) expressed over two stores: the [`MetaStore`] for what exists and the
//! [`BlobStore`] for object bytes. Front ends (S3, KV, web) call the engine and never touch
//! either store directly.
//!
//! Every change is one metadata transaction that compares the revisions it read, so concurrent
//! writers serialize cleanly and an object is visible whole or not at all: bytes are made
//! durable first, then a single commit points at them.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meridian_blob::{BlobId, BlobStore};
use meridian_meta::MetaStore;

mod batch;
mod bucket;
pub mod checksum;
pub mod cluster;
pub mod conditions;
mod error;
mod gc;
pub mod iam;
pub mod ingest;
pub mod keys;
pub mod lifecycle;
mod list;
pub mod locks;
mod multipart;
mod object;
pub mod peer;
pub mod record;
pub mod ttl;
pub mod watch;

pub use batch::{BatchOp, MAX_BATCH_OPS};
pub use bucket::validate_bucket_name;
pub use error::{EngineError, EngineResult};
pub use ingest::{Body, BodyError, Integrity, body_from_bytes};
pub use list::{ListPage, ListRequest, ListedObject};
pub use meridian_meta::{MetaError, Revision};
pub use multipart::{CompletePart, ListPartsPage, ListUploadsPage, ListUploadsRequest, UploadSummary};
pub use object::{
    ByteRange, CopyOutcome, CopyRequest, DeleteOutcome, GetOutcome, GetRequest, PutOutcome, PutRequest, ReadSource,
    RemoteReader, Span,
};

/// Blobs are fetched between nodes, verified and cached in chunks of this size.
pub const CHUNK_SIZE: u64 = meridian_blob::DEFAULT_CHUNK_SIZE;

/// The largest object key S3 accepts, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;

#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Objects up to this many bytes are stored inline in the metadata store (one commit, no
    /// file); larger ones go to blobs.
    pub inline_max: usize,
    /// Largest single PUT / UploadPart.
    pub max_object_size: u64,
    /// Smallest part allowed in a multipart upload, except the last.
    pub min_part_size: u64,
    /// How long replaced blobs stay on disk, so reads that started before the replacement can
    /// finish.
    pub blob_delete_delay: Duration,
    /// This node: its id and its region. Blobs written here name it as their holder.
    pub node: record::Holder,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            inline_max: 32 << 10,
            max_object_size: 5 << 30,
            min_part_size: 5 << 20,
            blob_delete_delay: Duration::from_secs(60),
            node: record::Holder { node: "local".into(), region: "local".into() },
        }
    }
}

/// How long after its last committed write a node still trusts its local metadata view for
/// access checks (three heartbeats).
pub const ACCESS_VIEW_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(6);

/// How long an admin change waits for every metadata replica to apply it.
pub const SETTLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Consistency {
    /// Reflects every write acknowledged anywhere before the read started.
    #[default]
    Strong,
    /// This node's local view of the metadata: fast, possibly behind other regions' newest
    /// writes, never behind this node's own.
    Local,
    /// The local view once it reflects at least this revision (read-your-writes across
    /// regions): waits for it to catch up, falling back to a strong read.
    AtLeast(Revision),
}

/// Metadata store handles for each [`Consistency`] (the etcd backend reads from a nearby
/// member for `Local`); without one, every read is strong.
#[async_trait::async_trait]
pub trait ReadViews: Send + Sync {
    fn view(&self, consistency: Consistency) -> Arc<dyn MetaStore>;

    /// Waits until every replica that serves local reads has applied `revision`; on timeout,
    /// describes the replicas that have not.
    async fn wait_applied(&self, revision: Revision, timeout: std::time::Duration) -> Result<(), String>;
}

/// The object store engine. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    meta: Arc<dyn MetaStore>,
    blobs: BlobStore,
    config: EngineConfig,
    remote: std::sync::OnceLock<Arc<dyn object::RemoteReader>>,
    views: std::sync::OnceLock<Arc<dyn ReadViews>>,
    /// When this node last committed a write (its heartbeat): its local view is at most that
    /// old, so access checks may trust it (ms since the epoch; 0: never).
    last_commit_ms: std::sync::atomic::AtomicI64,
}

impl Engine {
    pub fn new(meta: Arc<dyn MetaStore>, blobs: BlobStore, config: EngineConfig) -> Self {
        Engine {
            inner: Arc::new(Inner {
                meta,
                blobs,
                config,
                remote: std::sync::OnceLock::new(),
                views: std::sync::OnceLock::new(),
                last_commit_ms: std::sync::atomic::AtomicI64::new(0),
            }),
        }
    }

    /// Installs the metadata views for local and at-least reads (once, at start).
    pub fn set_read_views(&self, views: Arc<dyn ReadViews>) {
        let _ = self.inner.views.set(views);
    }

    /// The metadata store to read with at `consistency`.
    pub(crate) fn reader(&self, consistency: Consistency) -> Arc<dyn MetaStore> {
        match (consistency, self.inner.views.get()) {
            (Consistency::Strong, _) | (_, None) => Arc::clone(&self.inner.meta),
            (c, Some(views)) => views.view(c),
        }
    }

    /// Reads `key` from this node's local view of the metadata. A miss there is confirmed with
    /// a strong read: the key may have been created elsewhere a moment ago, and "it does not
    /// exist" must not be answered from a lagging replica.
    pub(crate) async fn get_local_confirmed(&self, key: &[u8]) -> EngineResult<Option<meridian_meta::KeyValue>> {
        if self.inner.views.get().is_none() {
            return Ok(self.meta().get(key).await?);
        }
        match self.reader(Consistency::Local).get(key).await? {
            Some(kv) => Ok(Some(kv)),
            None => Ok(self.meta().get(key).await?),
        }
    }

    /// Like [`Engine::get_local_confirmed`], for access checks (credentials, grants): the local
    /// view only while this node has recently committed a write through the leader (so its view
    /// is at most [`ACCESS_VIEW_MAX_AGE`] behind); a node cut off from the cluster reads
    /// strongly and fails closed rather than honour a key or grant revoked elsewhere.
    pub(crate) async fn get_for_access(&self, key: &[u8]) -> EngineResult<Option<meridian_meta::KeyValue>> {
        let last = self.inner.last_commit_ms.load(std::sync::atomic::Ordering::Relaxed);
        if self.inner.views.get().is_some() && now_ms() - last > ACCESS_VIEW_MAX_AGE.as_millis() as i64 {
            return Ok(self.meta().get(key).await?);
        }
        self.get_local_confirmed(key).await
    }

    /// Records that a write of this node just committed (see [`Engine::get_for_access`]).
    pub(crate) fn note_commit(&self) {
        self.inner.last_commit_ms.store(now_ms(), std::sync::atomic::Ordering::Relaxed);
    }

    /// Returns once every replica serving local reads reflects everything committed so far, so
    /// a change made through the admin API (a deleted key, a revoked grant) holds on every node
    /// the moment the call returns. Without replicas (one node) there is nothing to wait for.
    pub async fn settle(&self) -> EngineResult<()> {
        let Some(views) = self.inner.views.get() else { return Ok(()) };
        let revision = self.meta().current_revision().await?;
        views.wait_applied(revision, SETTLE_TIMEOUT).await.map_err(|lagging| {
            EngineError::Unavailable(format!(
                "the change is committed, but these metadata replicas have not applied it within {}s: {lagging}; \
                 nodes reading from them may act on the old state until they catch up",
                SETTLE_TIMEOUT.as_secs()
            ))
        })
    }

    /// Installs the reader of bytes held on other nodes (once, at start).
    pub fn set_remote_reader(&self, reader: Arc<dyn object::RemoteReader>) {
        let _ = self.inner.remote.set(reader);
    }

    pub(crate) fn remote(&self) -> Option<&Arc<dyn object::RemoteReader>> {
        self.inner.remote.get()
    }

    pub fn meta(&self) -> &Arc<dyn MetaStore> {
        &self.inner.meta
    }

    pub fn blobs(&self) -> &BlobStore {
        &self.inner.blobs
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// The holders of a blob written on this node.
    pub(crate) fn here(&self) -> Vec<record::Holder> {
        vec![self.inner.config.node.clone()]
    }

    /// Whether bytes with these holders are on this node's disk.
    pub fn is_local(&self, holders: &[record::Holder]) -> bool {
        holders.is_empty() || holders.iter().any(|h| h.node == self.inner.config.node.node)
    }

    /// The newest metadata revision.
    pub async fn current_revision(&self) -> EngineResult<Revision> {
        Ok(self.inner.meta.current_revision().await?)
    }

    /// Deletes blobs after the configured delay (see [`EngineConfig::blob_delete_delay`]).
    fn delete_blobs_later(&self, blobs: Vec<BlobId>) {
        gc::delete_later(self.inner.blobs.clone(), blobs, self.inner.config.blob_delete_delay);
    }

    /// Deletes blobs that no committed record refers to, right away.
    fn delete_blobs_now(&self, blobs: Vec<BlobId>) {
        gc::delete_later(self.inner.blobs.clone(), blobs, Duration::ZERO);
    }

    /// Removes blob files that no metadata refers to (left by a crash between the blob write
    /// and the metadata commit, or between a delete's commit and its file removal). Only files
    /// older than `older_than` are considered.
    pub async fn collect_orphan_blobs(&self, older_than: SystemTime) -> EngineResult<(usize, u64)> {
        gc::collect_orphans(self, older_than).await
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Checks an object key: non-empty, at most 1024 bytes, no NUL (it separates keys from upload
/// ids in the key space).
pub fn validate_key(key: &str) -> EngineResult<()> {
    if key.is_empty() {
        return Err(EngineError::InvalidKey("the object key must not be empty".into()));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(EngineError::KeyTooLong(key.len()));
    }
    if key.contains('\0') {
        return Err(EngineError::InvalidKey("the object key must not contain NUL characters".into()));
    }
    Ok(())
}
