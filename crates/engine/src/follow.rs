//! The node's change follower: one watch per node of every object change (write, overwrite,
//! delete, expiry) in the metadata store, started from a durable cursor. For each change it
//!
//! 1. drops the chunks of blobs no record refers to any more from this node's chunk cache (an
//!    overwrite, delete or expiry deletes the old blob's `x/<blob id>` key in its transaction);
//! 2. pushes objects of at most `--replicate-small-bytes` held on other nodes into the cache, so
//!    small objects are local everywhere, retrying while their holder is unreachable;
//! 3. announces the change to [`Engine::subscribe_object_changes`] subscribers.
//!
//! The cursor (`c/<node id>`, [`keys::change_cursor`]) is the revision through which every
//! change has been handled, pushes included; it is saved at most once a second, and a restarted
//! node resumes after it. When the store's history has been compacted past it, the follower
//! scans instead: it drops every cached blob whose `x/` key is gone, pushes every small remote
//! object, announces [`ObjectEvent::Resync`] and follows from the revision the scan started at.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use meridian_blob::BlobId;
use meridian_meta::{EventKind, MetaError, Op, RangeRequest, Revision, Txn, WatchEvent};
use tokio::sync::{Semaphore, broadcast};

use crate::error::{EngineError, EngineResult};
use crate::object::Current;
use crate::record::{self, DataLayout, ObjectRecord};
use crate::watch::ChangeKind;
use crate::{Consistency, Engine, keys};

/// Events a subscriber may fall behind by before it gets `RecvError::Lagged`.
pub const FEED_CAPACITY: usize = 4096;
/// How often the cursor is saved (when it moved).
pub const CURSOR_SAVE_INTERVAL: Duration = Duration::from_secs(1);
/// How long a push keeps retrying while the object's holders are unreachable.
pub const PUSH_RETRY_FOR: Duration = Duration::from_secs(300);
/// Pushes fetching at once.
const PUSH_SLOTS: usize = 8;
/// Pushes waiting for a slot before the follower itself waits.
const PUSH_QUEUE: usize = 4096;
/// Keys read per page by the fallback scan.
const SCAN_PAGE: usize = 512;

/// One committed change to one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectChange {
    pub bucket: String,
    pub key: String,
    /// The revision of the transaction that made the change.
    pub revision: Revision,
    /// `Put` (written or overwritten), `Delete`, or `Expire` (removed by the reaper on expiry).
    pub kind: ChangeKind,
}

/// What [`Engine::subscribe_object_changes`] delivers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ObjectEvent {
    Changed(ObjectChange),
    /// Changes up to `revision` could not be replayed one by one (the metadata store compacted
    /// its history past this node's cursor): any object may have changed; drop whatever is
    /// cached. Changes after `revision` follow as usual.
    Resync {
        revision: Revision,
    },
}

/// The revisions the follower has seen and those whose push is still running: the cursor is
/// just below the oldest running push.
#[derive(Clone, Default)]
struct Progress(Arc<Mutex<ProgressState>>);

#[derive(Default)]
struct ProgressState {
    seen: Revision,
    running: BTreeMap<Revision, usize>,
}

/// Keeps the cursor below `revision` while alive.
struct Hold {
    progress: Progress,
    revision: Revision,
}

impl Progress {
    fn lock(&self) -> std::sync::MutexGuard<'_, ProgressState> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn saw(&self, revision: Revision) {
        let mut state = self.lock();
        state.seen = state.seen.max(revision);
    }

    fn seen(&self) -> Revision {
        self.lock().seen
    }

    fn hold(&self, revision: Revision) -> Hold {
        *self.lock().running.entry(revision).or_default() += 1;
        Hold { progress: self.clone(), revision }
    }

    /// Every change through this revision has been handled.
    fn done_through(&self) -> Revision {
        let state = self.lock();
        match state.running.first_key_value() {
            Some((oldest, _)) => oldest.saturating_sub(1).min(state.seen),
            None => state.seen,
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut state = self.progress.lock();
        if let Some(count) = state.running.get_mut(&self.revision) {
            *count -= 1;
            if *count == 0 {
                state.running.remove(&self.revision);
            }
        }
    }
}

/// Why following stopped.
enum Stop {
    /// The history from the cursor is gone: scan.
    Compacted,
    Failed(EngineError),
}

impl From<MetaError> for Stop {
    fn from(err: MetaError) -> Self {
        match err {
            MetaError::Compacted { .. } => Stop::Compacted,
            other => Stop::Failed(other.into()),
        }
    }
}

impl From<EngineError> for Stop {
    fn from(err: EngineError) -> Self {
        Stop::Failed(err)
    }
}

impl Engine {
    /// Subscribes to the changes of every object, as this node's change follower handles them.
    ///
    /// Guarantees: events come in revision order, once each (except that when a metadata read
    /// fails while the follower handles a transaction that changed several objects, it resumes
    /// at that transaction and announces its first changes again). An event is sent only after its
    /// change is committed and this node's local view of the metadata reflects it: a read at
    /// [`Consistency::Local`] (or any other) made after receiving it sees that revision or a
    /// newer one. Every change committed after this call returns is delivered, unless the
    /// receiver falls more than [`FEED_CAPACITY`] events behind (it then gets
    /// `RecvError::Lagged` and must drop whatever it cached) or the follower had to scan
    /// ([`ObjectEvent::Resync`]). A change committed earlier may be delivered too (after a
    /// restart the follower replays from its cursor). Single nodes (embedded store) get events
    /// as soon as each transaction commits.
    pub fn subscribe_object_changes(&self) -> broadcast::Receiver<ObjectEvent> {
        self.inner.feed.subscribe()
    }

    /// Starts the change follower (see the module documentation). Objects of at most
    /// `push_up_to` bytes held elsewhere are pushed into this node's cache (0: none).
    pub(crate) fn spawn_change_follower(&self, push_up_to: u64) {
        let follower = Follower {
            engine: self.clone(),
            push_up_to,
            progress: Progress::default(),
            slots: Arc::new(Semaphore::new(PUSH_SLOTS)),
            queue: Arc::new(Semaphore::new(PUSH_QUEUE)),
            local_seen: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        };
        tokio::spawn(follower.run());
    }
}

#[derive(Clone)]
struct Follower {
    engine: Engine,
    push_up_to: u64,
    progress: Progress,
    slots: Arc<Semaphore>,
    queue: Arc<Semaphore>,
    /// The newest revision this node's local view is known to reflect.
    local_seen: Arc<std::sync::atomic::AtomicU64>,
}

impl Follower {
    async fn run(self) {
        let saved = loop {
            match self.load_cursor().await {
                Ok(cursor) => break cursor,
                Err(err) => tracing::warn!(error = %err, "cannot read this node's change cursor; retrying"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        };
        self.progress.saw(saved);
        tokio::spawn(self.clone().save_cursor(saved));
        loop {
            match self.follow(self.progress.seen() + 1).await {
                Stop::Compacted => {
                    if let Err(err) = self.rescan().await {
                        tracing::warn!(error = %err, "the scan replacing compacted history failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                Stop::Failed(err) => {
                    tracing::warn!(error = %err, "the change follower stopped; resuming from its cursor");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    fn cursor_key(&self) -> bytes::Bytes {
        keys::change_cursor(&self.engine.config().node.node)
    }

    /// The saved cursor; a node without one starts at the current revision (nothing is cached
    /// yet, so nothing is missed).
    async fn load_cursor(&self) -> EngineResult<Revision> {
        let meta = self.engine.meta();
        if let Some(kv) = meta.get(&self.cursor_key()).await? {
            let text = String::from_utf8_lossy(&kv.value).to_string();
            if let Ok(revision) = text.parse() {
                return Ok(revision);
            }
            tracing::warn!(cursor = %text, "this node's change cursor is unreadable; starting from now");
        }
        let now = meta.current_revision().await?;
        self.write_cursor(now).await?;
        Ok(now)
    }

    async fn write_cursor(&self, revision: Revision) -> EngineResult<()> {
        let txn = Txn::new().then(Op::put(self.cursor_key(), revision.to_string()));
        self.engine.meta().txn(txn).await?;
        Ok(())
    }

    /// Saves the cursor whenever it moved, at most every [`CURSOR_SAVE_INTERVAL`], for as long
    /// as the process runs.
    async fn save_cursor(self, mut saved: Revision) {
        loop {
            tokio::time::sleep(CURSOR_SAVE_INTERVAL).await;
            let done = self.progress.done_through();
            if done <= saved {
                continue;
            }
            match self.write_cursor(done).await {
                Ok(()) => saved = done,
                Err(err) => tracing::warn!(error = %err, "cannot save this node's change cursor"),
            }
        }
    }

    /// Handles changes from revision `from` on until the watch fails.
    async fn follow(&self, from: Revision) -> Stop {
        let range = RangeRequest::between(keys::CHANGES_FROM, keys::CHANGES_TO);
        let mut events = match self.engine.meta().watch(range, from).await {
            Ok(events) => events,
            Err(err) => return err.into(),
        };
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(event) => event,
                Err(err) => return err.into(),
            };
            let revision = event.kv.mod_revision;
            if let Err(err) = self.handle(event).await {
                return err.into();
            }
            self.progress.saw(revision);
        }
        Stop::Failed(EngineError::Unavailable("the metadata store ended the watch of object changes".into()))
    }

    async fn handle(&self, event: WatchEvent) -> EngineResult<()> {
        if let Some(blob) = keys::parse_blob_ref(&event.kv.key) {
            if event.kind == EventKind::Delete {
                self.forget(blob).await;
            }
            return Ok(());
        }
        let Some((bucket, key)) = keys::parse_object_key(&event.kv.key) else { return Ok(()) };
        let revision = event.kv.mod_revision;
        if event.kind == EventKind::Put {
            match record::decode::<ObjectRecord>(&event.kv.value) {
                Ok(record) => self.push(bucket, record, revision, revision).await,
                // Retrying would not help: skip the push, still announce the change.
                Err(err) => tracing::warn!(bucket, key, revision, error = %err, "unreadable object record; not pushed"),
            }
        }
        self.announce(bucket, key, revision, event.kind).await
    }

    /// Drops a blob no record refers to any more from the cache.
    async fn forget(&self, blob: BlobId) {
        // A copy of it made here for a multi-region bucket goes too (none is fine).
        self.engine.delete_blobs_later(vec![blob]);
        let Some(remote) = self.engine.remote() else { return };
        match remote.forget_blob(blob).await {
            Ok(chunks) => {
                self.engine.metrics().cache_invalidated_chunks.inc_by(chunks as u64);
            }
            Err(err) => tracing::warn!(%blob, error = %err, "could not drop a replaced blob from the cache"),
        }
    }

    /// Sends the change to subscribers once the local view reflects it.
    async fn announce(&self, bucket: &str, key: &str, revision: Revision, kind: EventKind) -> EngineResult<()> {
        let feed = &self.engine.inner.feed;
        if feed.receiver_count() == 0 {
            return Ok(());
        }
        let kind = match kind {
            EventKind::Put => ChangeKind::Put,
            EventKind::Delete if self.engine.expiry_at(bucket, key, revision).await?.is_some() => ChangeKind::Expire,
            EventKind::Delete => ChangeKind::Delete,
        };
        self.wait_local_view(revision).await?;
        let change = ObjectChange { bucket: bucket.to_string(), key: key.to_string(), revision, kind };
        let _ = feed.send(ObjectEvent::Changed(change));
        Ok(())
    }

    /// Returns once this node's local view reflects `revision` (at once on a single store).
    async fn wait_local_view(&self, revision: Revision) -> EngineResult<()> {
        use std::sync::atomic::Ordering::Relaxed;
        if self.engine.replicas().is_none() || self.local_seen.load(Relaxed) >= revision {
            return Ok(());
        }
        // An at-least read waits for the local member, or reads through the leader; either way
        // later local reads of this process are never behind what it returned.
        let reached = self.engine.reader(Consistency::AtLeast(revision)).current_revision().await?;
        self.local_seen.fetch_max(reached.max(revision), Relaxed);
        Ok(())
    }

    /// Queues a push of the object written at `revision` if it is small and held elsewhere; the
    /// cursor stays below `hold_at` until it is done.
    async fn push(&self, bucket: &str, record: ObjectRecord, revision: Revision, hold_at: Revision) {
        let remote = match &record.data {
            DataLayout::Blob { holders, .. } => !self.engine.is_local(holders),
            DataLayout::Parts { parts } => parts.iter().any(|p| !self.engine.is_local(&p.holders)),
            DataLayout::Inline => false,
        };
        if !remote || record.size > self.push_up_to || record.size == 0 || self.engine.remote().is_none() {
            return;
        }
        // A multi-region bucket's bytes stay in its regions: no copy in this node's cache.
        if !self.may_cache(bucket).await {
            return;
        }
        let Ok(queued) = Arc::clone(&self.queue).acquire_owned().await else { return };
        let hold = self.progress.hold(hold_at);
        let metrics = self.engine.metrics().clone();
        metrics.push_queue.inc();
        let follower = self.clone();
        tokio::spawn(async move {
            let seen = Instant::now();
            let pushed = follower.push_until_done(Current { record, revision, inline: None }).await;
            metrics.push_queue.dec();
            match pushed {
                Ok(()) => {
                    metrics.pushes.inc();
                    metrics.push_duration.observe(seen.elapsed().as_secs_f64());
                }
                Err(err) => {
                    metrics.push_errors.inc();
                    tracing::debug!(error = %err, "push of a small object failed; it is fetched on its first read");
                }
            }
            drop((queued, hold));
        });
    }

    /// Whether objects of `bucket` may be cached here: not when it is a multi-region bucket
    /// this node's region is not one of (when the record cannot be read, no).
    async fn may_cache(&self, bucket: &str) -> bool {
        match self.engine.bucket(bucket).await {
            Ok((record, _)) => match record.location {
                crate::record::Location::MultiRegion { regions, .. } => {
                    regions.contains(&self.engine.config().node.region)
                }
                _ => true,
            },
            Err(_) => false,
        }
    }

    /// Reads the object through the cache (which keeps it), retrying with a growing pause while
    /// its holders are unreachable, for up to [`PUSH_RETRY_FOR`] and only while the object is
    /// still the version written at that revision.
    async fn push_until_done(&self, current: Current) -> EngineResult<()> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(250);
        loop {
            let attempt = match Arc::clone(&self.slots).acquire_owned().await {
                Ok(_slot) => self.read_through(&current).await,
                Err(_) => return Ok(()),
            };
            let Err(err) = attempt else { return Ok(()) };
            if started.elapsed() >= PUSH_RETRY_FOR || !self.still_current(&current).await {
                return Err(err);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }

    async fn read_through(&self, current: &Current) -> EngineResult<()> {
        let (body, _) = self.engine.open_body(current, None, crate::object::Reading::Stored).await?;
        body.try_for_each(|_| async { Ok(()) }).await.map_err(|e| EngineError::Unavailable(e.to_string()))
    }

    /// Whether every blob of the version is still referred to (not overwritten or deleted since).
    async fn still_current(&self, current: &Current) -> bool {
        let refs: Vec<bytes::Bytes> = current.record.data.blobs().into_iter().map(keys::blob_ref).collect();
        match self.engine.meta().get_many(&refs).await {
            Ok((found, _)) => found.iter().all(Option::is_some),
            Err(_) => true,
        }
    }

    /// Replaces history the store no longer has: drops cached blobs no record refers to,
    /// pushes every small object held elsewhere, tells subscribers to resync, and moves the
    /// cursor to the revision the scan started at (changes after it are then replayed).
    async fn rescan(&self) -> EngineResult<()> {
        let started_at = self.engine.meta().current_revision().await?;
        tracing::warn!(
            cursor = self.progress.seen(),
            revision = started_at,
            "the metadata store no longer has the changes since this node's cursor; scanning instead"
        );
        self.engine.metrics().change_scans.inc();
        self.drop_unreferenced_blobs().await?;
        self.push_every_small_object(started_at).await?;
        let _ = self.engine.inner.feed.send(ObjectEvent::Resync { revision: started_at });
        self.progress.saw(started_at);
        Ok(())
    }

    async fn drop_unreferenced_blobs(&self) -> EngineResult<()> {
        let Some(remote) = self.engine.remote() else { return Ok(()) };
        for blobs in remote.cached_blobs().chunks(SCAN_PAGE) {
            let refs: Vec<bytes::Bytes> = blobs.iter().map(|b| keys::blob_ref(*b)).collect();
            let (found, _) = self.engine.meta().get_many(&refs).await?;
            for (blob, found) in blobs.iter().zip(found) {
                if found.is_none() {
                    self.forget(*blob).await;
                }
            }
        }
        Ok(())
    }

    async fn push_every_small_object(&self, hold_at: Revision) -> EngineResult<()> {
        if self.push_up_to == 0 || self.engine.remote().is_none() {
            return Ok(());
        }
        let mut range = RangeRequest::prefix(keys::OBJECTS_ROOT).limit(SCAN_PAGE);
        loop {
            let page = self.engine.meta().range(range.clone()).await?;
            for kv in &page.kvs {
                let Some((bucket, _)) = keys::parse_object_key(&kv.key) else { continue };
                if let Ok(record) = record::decode::<ObjectRecord>(&kv.value) {
                    self.push(bucket, record, kv.mod_revision, hold_at).await;
                }
            }
            match page.kvs.last() {
                Some(last) if page.more => range = range.after(last.key.clone()),
                _ => return Ok(()),
            }
        }
    }
}
