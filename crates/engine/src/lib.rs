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
pub mod clock;
pub mod cluster;
pub mod conditions;
pub mod cors;
pub mod crypt;
mod error;
pub mod follow;
mod gc;
pub mod health;
pub mod iam;
pub mod ingest;
pub mod keys;
pub mod lag;
pub mod lifecycle;
mod list;
pub mod locks;
mod multipart;
pub mod notify;
mod object;
pub mod object_lock;
pub mod peer;
pub mod policy;
pub mod record;
pub mod repair;
pub mod replicate;
pub mod shadow;
pub mod snapshot;
pub mod tagging;
pub mod ttl;
pub mod versions;
pub mod watch;
pub mod website;
mod write_queue;

pub use batch::{BatchOp, MAX_BATCH_OPS};
pub use bucket::validate_bucket_name;
pub use error::{EngineError, EngineResult, ErrorKind};
pub use follow::{ObjectChange, ObjectEvent};
pub use ingest::{Body, BodyError, Integrity, body_from_bytes};
pub use list::{ListPage, ListRequest, ListedObject, MAX_LIST_KEYS};
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
    /// A holder of an object's bytes silent (or unregistered) this long counts as lost: the
    /// objects whose copies it was are copied again elsewhere to keep their bucket's count.
    pub holder_lost_after: Duration,
    /// Master keys and named (KMS) keys for encryption at rest.
    pub keyring: Arc<crypt::Keyring>,
    /// Encrypt every new object (SSE-S3) unless the request or the bucket asks otherwise.
    pub encrypt_all: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            inline_max: 32 << 10,
            max_object_size: 5 << 30,
            min_part_size: 5 << 20,
            blob_delete_delay: Duration::from_secs(60),
            node: record::Holder { node: "local".into(), region: "local".into(), store: None },
            holder_lost_after: Duration::from_secs(600),
            keyring: Arc::default(),
            encrypt_all: false,
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

/// Metadata store handles for each [`Consistency`] of a replicated store (the etcd backend
/// reads from a nearby member for `Local`).
#[async_trait::async_trait]
pub trait ReadViews: Send + Sync {
    fn view(&self, consistency: Consistency) -> Arc<dyn MetaStore>;

    /// Waits until every replica that serves local reads has applied `revision`; on timeout,
    /// describes the replicas that have not.
    async fn wait_applied(&self, revision: Revision, timeout: std::time::Duration) -> Result<(), String>;

    /// The revision the leader has applied and the one the replica serving local reads has
    /// applied, asked together (the replication lag measurement: [`lag`]). A store that cannot
    /// tell leaves the lag unmeasured.
    async fn applied_revisions(&self) -> Result<lag::AppliedRevisions, String> {
        Err("this metadata store does not report applied revisions".into())
    }
}

/// The metadata store, and where reads at each [`Consistency`] go. Chosen explicitly when an
/// engine is built: there is no default.
#[derive(Clone)]
pub struct Metadata {
    store: Arc<dyn MetaStore>,
    /// `None`: the store is its own only replica.
    replicas: Option<Arc<dyn ReadViews>>,
}

impl Metadata {
    /// A store that is its own only replica (the embedded database of a single node): its one
    /// view is both the local and the strong one, so reads at every consistency go to it and
    /// there are no replicas to wait for.
    pub fn single(store: Arc<dyn MetaStore>) -> Self {
        Metadata { store, replicas: None }
    }

    /// A replicated store (etcd): writes and strong reads through `store`, local and at-least
    /// reads through `views`.
    pub fn replicated(store: Arc<dyn MetaStore>, views: Arc<dyn ReadViews>) -> Self {
        Metadata { store, replicas: Some(views) }
    }

    /// The store writes and strong reads go to.
    pub fn store(&self) -> &Arc<dyn MetaStore> {
        &self.store
    }
}

/// What an [`Engine`] is made of, gathered before it exists: [`Engine::builder`], the optional
/// parts, then [`EngineBuilder::build`].
pub struct EngineBuilder {
    metadata: Metadata,
    blobs: BlobStore,
    config: EngineConfig,
    remote: Option<RemoteReading>,
    reaper_interval: Option<Duration>,
    metrics: meridian_metrics::EngineMetrics,
    webhooks: Option<notify::Webhooks>,
}

struct RemoteReading {
    reader: Arc<dyn object::RemoteReader>,
    prefetch_up_to: u64,
}

impl EngineBuilder {
    /// Reads bytes held on other nodes through `reader`, and copies objects of at most
    /// `prefetch_up_to` bytes written on other nodes into this node's cache as soon as they are
    /// written (0: none). Without a remote reader, reading such bytes fails with
    /// [`EngineError::Unavailable`].
    pub fn remote_reader(mut self, reader: Arc<dyn object::RemoteReader>, prefetch_up_to: u64) -> Self {
        self.remote = Some(RemoteReading { reader, prefetch_up_to });
        self
    }

    /// Runs the expiry reaper (see [`ttl`]) every `interval`. Without it, expired objects stay
    /// invisible but keep their space until [`Engine::reap_due`] is called.
    pub fn reaper(mut self, interval: Duration) -> Self {
        self.reaper_interval = Some(interval);
        self
    }

    /// Records replication lag, pushes, garbage collection and reaper activity in `metrics`
    /// (without it they go to metrics nobody exports).
    pub fn metrics(mut self, metrics: meridian_metrics::EngineMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Delivers event notifications to these webhook targets ([`notify`]); without targets,
    /// buckets cannot have notification rules.
    pub fn webhooks(mut self, webhooks: notify::Webhooks) -> Self {
        self.webhooks = Some(webhooks).filter(|w| !w.targets.is_empty());
        self
    }

    /// The engine, complete, with its background tasks (reaper, change follower, lag
    /// measurement) running: those need a Tokio runtime.
    pub fn build(self) -> Engine {
        let prefetch_up_to = self.remote.as_ref().map_or(0, |r| r.prefetch_up_to);
        let (feed, _) = tokio::sync::broadcast::channel(follow::FEED_CAPACITY);
        let engine = Engine {
            inner: Arc::new(Inner {
                metadata: self.metadata,
                blobs: self.blobs,
                config: self.config,
                remote: self.remote.map(|r| r.reader),
                last_commit_ms: std::sync::atomic::AtomicI64::new(0),
                metrics: self.metrics,
                lag: lag::LagState::default(),
                write_queues: write_queue::WriteQueues::default(),
                feed,
                round_trips: std::sync::Mutex::new(std::collections::HashMap::new()),
                webhooks: self.webhooks,
            }),
        };
        if engine.webhooks().is_some() {
            engine.spawn_notifier();
        }
        engine.spawn_lag_probe();
        if let Some(interval) = self.reaper_interval {
            engine.spawn_reaper(interval);
        }
        engine.spawn_change_follower(prefetch_up_to);
        if engine.remote().is_some() {
            engine.spawn_clock();
            engine.spawn_repairs();
            engine.spawn_copy_audit();
        }
        engine
    }
}

/// The object store engine. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    metadata: Metadata,
    blobs: BlobStore,
    config: EngineConfig,
    remote: Option<Arc<dyn object::RemoteReader>>,
    /// When this node last committed a write (its heartbeat): its local view is at most that
    /// old, so access checks may trust it (ms since the epoch; 0: never).
    last_commit_ms: std::sync::atomic::AtomicI64,
    metrics: meridian_metrics::EngineMetrics,
    lag: lag::LagState,
    /// This node's queued unconditional writes, by key.
    write_queues: write_queue::WriteQueues,
    /// Object changes, as the change follower handles them ([`Engine::subscribe_object_changes`]).
    feed: tokio::sync::broadcast::Sender<follow::ObjectEvent>,
    /// The shortest round trip measured to each other node, in ms, and when (by the clock
    /// measurements): how near its region is.
    round_trips: std::sync::Mutex<std::collections::HashMap<String, (i64, std::time::Instant)>>,
    /// The operator's webhook targets for event notifications.
    webhooks: Option<notify::Webhooks>,
}

impl Engine {
    /// Starts building an engine over `metadata` and `blobs`.
    pub fn builder(metadata: Metadata, blobs: BlobStore, config: EngineConfig) -> EngineBuilder {
        EngineBuilder {
            metadata,
            blobs,
            config,
            remote: None,
            reaper_interval: None,
            metrics: meridian_metrics::EngineMetrics::default(),
            webhooks: None,
        }
    }

    /// The read views of a replicated metadata store; `None` for a single store.
    fn replicas(&self) -> Option<&Arc<dyn ReadViews>> {
        self.inner.metadata.replicas.as_ref()
    }

    /// The metadata store to read with at `consistency`.
    pub(crate) fn reader(&self, consistency: Consistency) -> Arc<dyn MetaStore> {
        match (consistency, self.replicas()) {
            (Consistency::Strong, _) | (_, None) => Arc::clone(self.meta()),
            (c, Some(views)) => views.view(c),
        }
    }

    /// Reads `key` from this node's local view of the metadata. A miss there is confirmed with
    /// a strong read: the key may have been created elsewhere a moment ago, and "it does not
    /// exist" must not be answered from a lagging replica.
    pub(crate) async fn get_local_confirmed(&self, key: &[u8]) -> EngineResult<Option<meridian_meta::KeyValue>> {
        if self.replicas().is_none() {
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
        if self.replicas().is_some() && now_ms() - last > ACCESS_VIEW_MAX_AGE.as_millis() as i64 {
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
        let Some(views) = self.replicas() else { return Ok(()) };
        let revision = self.meta().current_revision().await?;
        views.wait_applied(revision, SETTLE_TIMEOUT).await.map_err(|lagging| {
            EngineError::Unavailable(format!(
                "the change is committed, but these metadata replicas have not applied it within {}s: {lagging}; \
                 nodes reading from them may act on the old state until they catch up",
                SETTLE_TIMEOUT.as_secs()
            ))
        })
    }

    pub(crate) fn metrics(&self) -> &meridian_metrics::EngineMetrics {
        &self.inner.metrics
    }

    pub(crate) fn webhooks(&self) -> Option<&notify::Webhooks> {
        self.inner.webhooks.as_ref()
    }

    pub(crate) fn remote(&self) -> Option<&Arc<dyn object::RemoteReader>> {
        self.inner.remote.as_ref()
    }

    pub fn meta(&self) -> &Arc<dyn MetaStore> {
        self.inner.metadata.store()
    }

    pub(crate) fn write_queues(&self) -> &write_queue::WriteQueues {
        &self.inner.write_queues
    }

    pub fn blobs(&self) -> &BlobStore {
        &self.inner.blobs
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// The holders of a blob written on this node: this node, and the shared store its blob
    /// store is, if it is one.
    pub(crate) fn here(&self) -> Vec<record::Holder> {
        let store = self.blobs().shared_id().map(str::to_string);
        vec![record::Holder { store, ..self.inner.config.node.clone() }]
    }

    /// Whether bytes with these holders are in this node's blob store: written here, or written
    /// by any node to the shared store this node uses too.
    pub fn is_local(&self, holders: &[record::Holder]) -> bool {
        let shared = self.blobs().shared_id();
        holders.is_empty()
            || holders
                .iter()
                .any(|h| h.node == self.inner.config.node.node || (h.store.is_some() && h.store.as_deref() == shared))
    }

    /// The newest metadata revision.
    pub async fn current_revision(&self) -> EngineResult<Revision> {
        Ok(self.meta().current_revision().await?)
    }

    /// The revision this node's local view of the metadata reflects (what reads at
    /// [`Consistency::Local`] see): the newest revision without replicas.
    pub async fn local_revision(&self) -> EngineResult<Revision> {
        Ok(self.reader(Consistency::Local).current_revision().await?)
    }

    /// Deletes blobs after the configured delay (see [`EngineConfig::blob_delete_delay`]).
    fn delete_blobs_later(&self, blobs: Vec<BlobId>) {
        let deleted = self.inner.metrics.gc_blobs_deleted.clone();
        gc::delete_later(self.inner.blobs.clone(), blobs, self.inner.config.blob_delete_delay, deleted);
    }

    /// Deletes blobs that no committed record refers to, right away.
    fn delete_blobs_now(&self, blobs: Vec<BlobId>) {
        gc::delete_later(self.inner.blobs.clone(), blobs, Duration::ZERO, self.inner.metrics.gc_blobs_deleted.clone());
    }

    /// Removes blob files that no metadata refers to (left by a crash between the blob write
    /// and the metadata commit, or between a delete's commit and its file removal). Only files
    /// older than `older_than` are considered.
    pub async fn collect_orphan_blobs(&self, older_than: SystemTime) -> EngineResult<(usize, u64)> {
        gc::collect_orphans(self, older_than).await
    }
}

/// Milliseconds since the Unix epoch on the cluster's clock: this machine's wall clock corrected
/// by the offset [`clock`] measures against the other nodes (none on a single node).
pub fn now_ms() -> i64 {
    let wall = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    wall + clock::offset_ms()
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
