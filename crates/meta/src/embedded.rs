//! The embedded backend: a single-node metadata store on redb (see
//! `docs/decisions/002-embedded-metadata-store.md` for why redb).
//!
//! Writes go through one writer thread that gathers every transaction waiting in its queue into
//! a single redb write transaction ("group commit"). Each logical transaction still gets its own
//! revision and is evaluated against the effects of the ones before it in the batch, so the
//! result is exactly as if they had run one after another. The batch's revisions are appended to
//! a write-ahead log (`<file>-wal`, [`crate::wal`]) with one `fdatasync`; redb then commits
//! without syncing, and a durable redb commit now and then (a checkpoint) lets the log start
//! over. Opening the store replays what the log holds beyond redb's last durable commit.
//! Reads run on the caller's thread against a redb read snapshot.
//!
//! History for watches is a log table keyed by revision that keeps the most recent
//! `history_revisions` revisions, and always the newest one: its key is the store's revision,
//! so a commit writes two tables (the keys and the log) and no separate revision counter.

use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use meridian_common::private_files;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{broadcast, oneshot};

use crate::wal::{LoggedRevision, Wal};
use crate::{
    EventKind, KeyValue, MetaError, MetaResult, MetaStore, Op, RangeRequest, RangeResponse, Revision, Txn, TxnResponse,
    WatchEvent, WatchStream,
};

const KV: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
/// Where stores written before the log carried the revision kept it; read once on open.
const LEGACY_META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const LEGACY_META_REVISION: &str = "revision";

/// The most transactions folded into one commit.
const MAX_BATCH: usize = 512;
/// Revisions of history read per step when a watch replays the log.
const REPLAY_CHUNK: usize = 256;

/// Settings of the embedded store.
#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// How many recent revisions of change history to keep for watches.
    pub history_revisions: u64,
    /// redb page cache size in bytes.
    pub cache_bytes: usize,
    /// Where group-commit batch sizes and commit times are recorded.
    pub metrics: meridian_metrics::EmbeddedMetrics,
    /// A checkpoint (a durable redb commit) is made once the write-ahead log holds this much.
    pub checkpoint_bytes: u64,
    /// ... or once the writer has had nothing to do for this long.
    pub checkpoint_idle: std::time::Duration,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            history_revisions: 100_000,
            cache_bytes: 64 << 20,
            metrics: meridian_metrics::EmbeddedMetrics::default(),
            checkpoint_bytes: 16 << 20,
            checkpoint_idle: std::time::Duration::from_secs(1),
        }
    }
}

/// A metadata store in one local redb file.
#[derive(Clone)]
pub struct EmbeddedStore {
    shared: Arc<Shared>,
    writer: mpsc::SyncSender<WriteRequest>,
}

struct Shared {
    db: Database,
    /// The newest committed revision.
    revision: AtomicU64,
    /// The oldest revision still in the history log.
    oldest: AtomicU64,
    /// Every committed revision's events, in order.
    events: broadcast::Sender<Arc<RevisionEvents>>,
    /// Recently read keys (point reads), kept exact by the writer.
    hot: crate::hot::HotKeys,
}

struct RevisionEvents {
    revision: Revision,
    events: Vec<WatchEvent>,
}

struct WriteRequest {
    txn: Txn,
    reply: oneshot::Sender<MetaResult<TxnResponse>>,
}

/// How long a read waits for the writer to publish a commit its snapshot already holds.
const PUBLISH_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

fn storage<E: std::fmt::Display>(err: E) -> MetaError {
    MetaError::Storage(err.to_string())
}

impl EmbeddedStore {
    /// Opens (or creates, mode 0600: it holds every secret of the node) the store in `path`
    /// (a file) and its write-ahead log beside it ([`wal_path`]).
    pub fn open(path: &Path, options: EmbeddedOptions) -> MetaResult<Self> {
        let file = private_files::file_options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(storage)?;
        let backend = redb::backends::FileBackend::new(file).map_err(storage)?;
        let db =
            Database::builder().set_cache_size(options.cache_bytes).create_with_backend(backend).map_err(storage)?;
        let durable = open_tables(&db)?;
        let (wal, logged) = Wal::open(&wal_path(path))?;
        replay_wal(&db, durable, logged)?;
        let (revision, oldest) = history_bounds(&db)?;
        let (events, _) = broadcast::channel(4096);
        let shared = Arc::new(Shared {
            db,
            revision: AtomicU64::new(revision),
            oldest: AtomicU64::new(oldest),
            events,
            hot: crate::hot::HotKeys::new(),
        });
        let (writer, queue) = mpsc::sync_channel(4096);
        let writer_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("meta-writer".into())
            .spawn(move || Writer { shared: &writer_shared, wal, options: &options, poisoned: None }.run(&queue))
            .map_err(storage)?;
        Ok(EmbeddedStore { shared, writer })
    }

    fn read_range(&self, req: &RangeRequest) -> MetaResult<RangeResponse> {
        let rtx = self.shared.db.begin_read().map_err(storage)?;
        let revision = snapshot_revision(&rtx)?;
        let table = rtx.open_table(KV).map_err(storage)?;
        let start = bound_ref(&req.start);
        let end = bound_ref(&req.end);
        if range_is_empty(start, end) {
            return Ok(RangeResponse { kvs: Vec::new(), more: false, revision });
        }
        let mut kvs = Vec::new();
        let mut more = false;
        for entry in table.range::<&[u8]>((start, end)).map_err(storage)? {
            let (k, v) = entry.map_err(storage)?;
            if req.limit != 0 && kvs.len() == req.limit {
                more = true;
                break;
            }
            kvs.push(decode_kv(k.value(), v.value())?);
        }
        Ok(RangeResponse { kvs, more, revision })
    }

    /// Returns once the writer has published `revision`. A snapshot can hold a commit the
    /// writer has not published yet (nor removed from the hot-key cache, whose hits still
    /// answer the revision before it); a read that saw it waits, so no read that starts after
    /// it returns can see older state. The wait is the few microseconds between redb's commit
    /// and the publication.
    async fn published(&self, revision: Revision) -> MetaResult<()> {
        let started = std::time::Instant::now();
        while self.shared.revision.load(Ordering::SeqCst) < revision {
            if started.elapsed() > PUBLISH_WAIT {
                return Err(MetaError::Storage(format!(
                    "the metadata writer committed revision {revision} but did not publish it within {PUBLISH_WAIT:?}"
                )));
            }
            tokio::task::yield_now().await;
        }
        Ok(())
    }

    fn read_many(&self, keys: &[Bytes]) -> MetaResult<(Vec<Option<KeyValue>>, Revision)> {
        let rtx = self.shared.db.begin_read().map_err(storage)?;
        let revision = snapshot_revision(&rtx)?;
        let table = rtx.open_table(KV).map_err(storage)?;
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let kv = match table.get(key.as_ref()).map_err(storage)? {
                Some(v) => Some(decode_kv(key, v.value())?),
                None => None,
            };
            out.push(kv);
        }
        Ok((out, revision))
    }

    /// History events with revision in `[from, to]` whose key is in `range`.
    fn read_history(&self, range: &RangeRequest, from: Revision, to: Revision) -> MetaResult<Vec<WatchEvent>> {
        let rtx = self.shared.db.begin_read().map_err(storage)?;
        let log = rtx.open_table(LOG).map_err(storage)?;
        let mut out = Vec::new();
        for entry in log.range(from..=to).map_err(storage)? {
            let (rev, data) = entry.map_err(storage)?;
            for event in decode_events(rev.value(), data.value())? {
                if range.contains(&event.kv.key) {
                    out.push(event);
                }
            }
        }
        Ok(out)
    }
}

/// The write-ahead log of the store in `path`: the same name with `-wal` appended.
pub fn wal_path(path: &Path) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push("-wal");
    name.into()
}

/// Creates the tables of a new store, or moves an older store's revision into its log; returns
/// the newest revision redb holds durably.
fn open_tables(db: &Database) -> MetaResult<Revision> {
    let wtx = db.begin_write().map_err(storage)?;
    let revision = {
        wtx.open_table(KV).map_err(storage)?;
        let mut log = wtx.open_table(LOG).map_err(storage)?;
        let logged = logged_revision(&log)?;
        let legacy = {
            let meta = wtx.open_table(LEGACY_META).map_err(storage)?;
            meta.get(LEGACY_META_REVISION).map_err(storage)?.map(|v| v.value()).unwrap_or(0)
        };
        if legacy > logged {
            // Its log was emptied (history retention 0): an empty entry carries the revision.
            log.insert(legacy, [].as_slice()).map_err(storage)?;
        }
        logged.max(legacy)
    };
    // Left in place it would hold a revision that stops moving.
    wtx.delete_table(LEGACY_META).map_err(storage)?;
    wtx.commit().map_err(storage)?;
    Ok(revision)
}

/// Applies the revisions the write-ahead log holds beyond `durable` (redb's newest durable
/// revision) and commits them durably: the log may then be written over from its start.
fn replay_wal(db: &Database, durable: Revision, logged: Vec<LoggedRevision>) -> MetaResult<()> {
    let pending: Vec<LoggedRevision> = logged.into_iter().filter(|r| r.revision > durable).collect();
    let Some(first) = pending.first() else {
        return Ok(());
    };
    if first.revision != durable + 1 {
        return Err(MetaError::Storage(format!(
            "the metadata write-ahead log resumes at revision {} but the database ends at {durable}",
            first.revision
        )));
    }
    let wtx = db.begin_write().map_err(storage)?;
    {
        let mut kv = wtx.open_table(KV).map_err(storage)?;
        let mut log = wtx.open_table(LOG).map_err(storage)?;
        for logged in &pending {
            for event in decode_events(logged.revision, &logged.events)? {
                let kv_event = &event.kv;
                match event.kind {
                    EventKind::Put => {
                        let record =
                            encode_kv(kv_event.create_revision, logged.revision, kv_event.version, &kv_event.value);
                        kv.insert(kv_event.key.as_ref(), record.as_slice()).map_err(storage)?;
                    }
                    EventKind::Delete => {
                        kv.remove(kv_event.key.as_ref()).map_err(storage)?;
                    }
                }
            }
            log.insert(logged.revision, logged.events.as_ref()).map_err(storage)?;
        }
    }
    wtx.commit().map_err(storage)?;
    tracing::info!(from = durable + 1, to = durable + pending.len() as u64, "replayed the metadata write-ahead log");
    Ok(())
}

/// The newest revision and the oldest one still in the history log.
fn history_bounds(db: &Database) -> MetaResult<(Revision, Revision)> {
    let rtx = db.begin_read().map_err(storage)?;
    let log = rtx.open_table(LOG).map_err(storage)?;
    let revision = logged_revision(&log)?;
    let oldest = log.first().map_err(storage)?.map(|(k, _)| k.value()).unwrap_or(revision + 1);
    Ok((revision, oldest))
}

/// The newest revision in the history log: the store's revision, since the log always keeps its
/// newest entry (see [`trim_history`]).
fn logged_revision(log: &impl ReadableTable<u64, &'static [u8]>) -> MetaResult<Revision> {
    Ok(log.last().map_err(storage)?.map(|(k, _)| k.value()).unwrap_or(0))
}

fn snapshot_revision(rtx: &redb::ReadTransaction) -> MetaResult<Revision> {
    logged_revision(&rtx.open_table(LOG).map_err(storage)?)
}

fn bound_ref(bound: &Bound<Bytes>) -> Bound<&[u8]> {
    match bound {
        Bound::Included(b) => Bound::Included(b.as_ref()),
        Bound::Excluded(b) => Bound::Excluded(b.as_ref()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// redb panics on inverted ranges, so they are answered before reaching it.
fn range_is_empty(start: Bound<&[u8]>, end: Bound<&[u8]>) -> bool {
    match (start, end) {
        (Bound::Included(s), Bound::Included(e)) => s > e,
        (Bound::Included(s), Bound::Excluded(e))
        | (Bound::Excluded(s), Bound::Included(e))
        | (Bound::Excluded(s), Bound::Excluded(e)) => s >= e,
        _ => false,
    }
}

// ----- value encoding ---------------------------------------------------------------------------

const KV_HEADER: usize = 24;

fn encode_kv(create_revision: Revision, mod_revision: Revision, version: u64, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(KV_HEADER + value.len());
    out.put_u64(create_revision);
    out.put_u64(mod_revision);
    out.put_u64(version);
    out.extend_from_slice(value);
    out
}

fn decode_kv(key: &[u8], data: &[u8]) -> MetaResult<KeyValue> {
    if data.len() < KV_HEADER {
        return Err(MetaError::Storage(format!("corrupt record for key {:?}", String::from_utf8_lossy(key))));
    }
    let mut header = &data[..KV_HEADER];
    Ok(KeyValue {
        key: Bytes::copy_from_slice(key),
        create_revision: header.get_u64(),
        mod_revision: header.get_u64(),
        version: header.get_u64(),
        value: Bytes::copy_from_slice(&data[KV_HEADER..]),
    })
}

fn encode_events(events: &[WatchEvent]) -> Vec<u8> {
    let mut out = BytesMut::new();
    for event in events {
        out.put_u8(match event.kind {
            EventKind::Put => 0,
            EventKind::Delete => 1,
        });
        out.put_u64(event.kv.create_revision);
        out.put_u64(event.kv.version);
        out.put_u32(event.kv.key.len() as u32);
        out.extend_from_slice(&event.kv.key);
        out.put_u32(event.kv.value.len() as u32);
        out.extend_from_slice(&event.kv.value);
    }
    out.to_vec()
}

fn decode_events(revision: Revision, mut data: &[u8]) -> MetaResult<Vec<WatchEvent>> {
    let corrupt = || MetaError::Storage(format!("corrupt history entry at revision {revision}"));
    let mut out = Vec::new();
    while data.has_remaining() {
        if data.remaining() < 1 + 8 + 8 + 4 {
            return Err(corrupt());
        }
        let kind = match data.get_u8() {
            0 => EventKind::Put,
            1 => EventKind::Delete,
            _ => return Err(corrupt()),
        };
        let create_revision = data.get_u64();
        let version = data.get_u64();
        let key = take_sized(&mut data).ok_or_else(corrupt)?;
        let value = take_sized(&mut data).ok_or_else(corrupt)?;
        out.push(WatchEvent { kind, kv: KeyValue { key, value, create_revision, mod_revision: revision, version } });
    }
    Ok(out)
}

fn take_sized(data: &mut &[u8]) -> Option<Bytes> {
    if data.remaining() < 4 {
        return None;
    }
    let len = data.get_u32() as usize;
    if data.remaining() < len {
        return None;
    }
    let out = Bytes::copy_from_slice(&data[..len]);
    data.advance(len);
    Some(out)
}

// ----- the writer -------------------------------------------------------------------------------

struct Writer<'a> {
    shared: &'a Shared,
    wal: Wal,
    options: &'a EmbeddedOptions,
    /// Why writes are refused: the log and redb may disagree after a failure between the log's
    /// append and redb's commit, and only reopening (which replays the log) settles it.
    poisoned: Option<String>,
}

type BatchOutcome = (Vec<MetaResult<TxnResponse>>, Vec<RevisionEvents>);

/// A failed group commit, and whether its frame may have reached the write-ahead log.
struct CommitFailure {
    err: MetaError,
    logged: bool,
}

impl Writer<'_> {
    fn run(mut self, queue: &mpsc::Receiver<WriteRequest>) {
        loop {
            let first = if self.wal.len() == 0 {
                queue.recv().ok()
            } else {
                match queue.recv_timeout(self.options.checkpoint_idle) {
                    Ok(req) => Some(req),
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        self.checkpoint_when_idle();
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => None,
                }
            };
            let Some(first) = first else { break };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(req) => batch.push(req),
                    Err(_) => break,
                }
            }
            self.commit(batch);
        }
        // Every handle is gone: leave nothing for the next open to replay.
        if self.wal.len() > 0 {
            self.checkpoint_when_idle();
        }
    }

    fn commit(&mut self, batch: Vec<WriteRequest>) {
        if let Some(reason) = &self.poisoned {
            for req in batch {
                let _ = req.reply.send(Err(MetaError::Storage(reason.clone())));
            }
            return;
        }
        let txns: Vec<&Txn> = batch.iter().map(|r| &r.txn).collect();
        let checkpoint = self.wal.len() >= self.options.checkpoint_bytes;
        let metrics = &self.options.metrics;
        let started = std::time::Instant::now();
        let outcome = commit_batch(self.shared, &txns, self.options.history_revisions, &mut self.wal, checkpoint);
        metrics.commit_duration.observe(started.elapsed().as_secs_f64());
        metrics.batch_size.observe(txns.len() as f64);
        metrics.commits.inc();
        let shared = self.shared;
        match outcome {
            Ok((results, committed)) => {
                if checkpoint {
                    metrics.checkpoints.inc();
                }
                let newest = committed.last().map(|c| c.revision);
                let written = committed.iter().flat_map(|c| c.events.iter().map(|e| &e.kv.key));
                shared.hot.publish(Some(written), newest, &shared.revision);
                for (req, result) in batch.into_iter().zip(results) {
                    let _ = req.reply.send(result);
                }
                for revision in committed {
                    // No receivers is fine: nobody is watching.
                    let _ = shared.events.send(Arc::new(revision));
                }
            }
            Err(CommitFailure { err, logged }) => {
                tracing::error!(error = %err, "metadata commit failed");
                if logged {
                    self.poisoned = Some(format!(
                        "the metadata store stopped taking writes after a failed commit ({err}); restart the node"
                    ));
                }
                // Whether redb kept any of it is unknown: forget every cached value.
                shared.hot.publish(None::<std::iter::Empty<&Bytes>>, None, &shared.revision);
                for req in batch {
                    let _ = req.reply.send(Err(MetaError::Storage(err.to_string())));
                }
            }
        }
    }

    /// A durable redb commit of nothing: everything the log holds is then in redb.
    fn checkpoint_when_idle(&mut self) {
        if self.poisoned.is_some() {
            return;
        }
        let durable = || -> MetaResult<()> {
            let mut wtx = self.shared.db.begin_write().map_err(storage)?;
            wtx.set_durability(redb::Durability::Immediate).map_err(storage)?;
            wtx.commit().map_err(storage)
        };
        match durable() {
            Ok(()) => {
                self.wal.checkpointed();
                self.options.metrics.checkpoints.inc();
            }
            // The log still holds it all: the next checkpoint tries again.
            Err(err) => tracing::warn!(error = %err, "metadata checkpoint failed"),
        }
    }
}

/// Applies `txns` in one redb transaction. A checkpoint commits it durably; otherwise its
/// revisions go to the write-ahead log, synced, before redb commits without syncing.
fn commit_batch(
    shared: &Shared,
    txns: &[&Txn],
    history_revisions: u64,
    wal: &mut Wal,
    checkpoint: bool,
) -> Result<BatchOutcome, CommitFailure> {
    let failed = |err: MetaError| CommitFailure { err, logged: false };
    let mut wtx = shared.db.begin_write().map_err(storage).map_err(failed)?;
    let durability = if checkpoint { redb::Durability::Immediate } else { redb::Durability::None };
    wtx.set_durability(durability).map_err(storage).map_err(failed)?;
    let (results, committed, entries) = apply_batch(shared, &wtx, txns, history_revisions).map_err(failed)?;
    // From the append on, the log may hold revisions redb does not.
    let logged = !checkpoint && !entries.is_empty();
    if logged {
        let records: Vec<(Revision, &[u8])> = entries.iter().map(|(r, e)| (*r, e.as_slice())).collect();
        wal.append(&records).map_err(|err| CommitFailure { err, logged })?;
    }
    wtx.commit().map_err(|err| CommitFailure { err: storage(err), logged })?;
    if checkpoint {
        wal.checkpointed();
    }
    Ok((results, committed))
}

/// A batch's results, its committed revisions' events, and each one's history-log entry.
type AppliedBatch = (Vec<MetaResult<TxnResponse>>, Vec<RevisionEvents>, Vec<(Revision, Vec<u8>)>);

fn apply_batch(
    shared: &Shared,
    wtx: &redb::WriteTransaction,
    txns: &[&Txn],
    history_revisions: u64,
) -> MetaResult<AppliedBatch> {
    let mut results = Vec::with_capacity(txns.len());
    let mut committed = Vec::new();
    let mut entries = Vec::new();
    let mut kv = wtx.open_table(KV).map_err(storage)?;
    let mut log = wtx.open_table(LOG).map_err(storage)?;
    let mut revision = logged_revision(&log)?;
    for txn in txns {
        if let Err(err) = validate(txn) {
            results.push(Err(err));
            continue;
        }
        let mut holds = true;
        for compare in &txn.compares {
            let current = get_kv(&kv, &compare.key)?;
            if !compare.evaluate(current.as_ref()) {
                holds = false;
                break;
            }
        }
        if !holds {
            let mut failure_reads = Vec::with_capacity(txn.read_on_failure.len());
            for key in &txn.read_on_failure {
                failure_reads.push(get_kv(&kv, key)?);
            }
            results.push(Ok(TxnResponse { succeeded: false, revision, failure_reads }));
            continue;
        }
        let events = apply_ops(&mut kv, &txn.ops, revision + 1)?;
        if !events.is_empty() {
            revision += 1;
            let entry = encode_events(&events);
            log.insert(revision, entry.as_slice()).map_err(storage)?;
            entries.push((revision, entry));
            committed.push(RevisionEvents { revision, events });
        }
        results.push(Ok(TxnResponse { succeeded: true, revision, failure_reads: Vec::new() }));
    }
    trim_history(shared, &mut log, revision, history_revisions)?;
    Ok((results, committed, entries))
}

/// Same rule as etcd: a key may be written at most once per transaction.
fn validate(txn: &Txn) -> MetaResult<()> {
    let mut seen = std::collections::HashSet::new();
    for op in &txn.ops {
        if !seen.insert(op.key()) {
            return Err(MetaError::Storage(format!(
                "invalid transaction: key {:?} is written twice",
                String::from_utf8_lossy(op.key())
            )));
        }
    }
    Ok(())
}

fn get_kv(table: &redb::Table<&[u8], &[u8]>, key: &[u8]) -> MetaResult<Option<KeyValue>> {
    match table.get(key).map_err(storage)? {
        Some(v) => Ok(Some(decode_kv(key, v.value())?)),
        None => Ok(None),
    }
}

fn apply_ops(table: &mut redb::Table<&[u8], &[u8]>, ops: &[Op], revision: Revision) -> MetaResult<Vec<WatchEvent>> {
    let mut events = Vec::with_capacity(ops.len());
    for op in ops {
        let current = get_kv(table, op.key())?;
        match op {
            Op::Put { key, value } => {
                let (create_revision, version) = match &current {
                    Some(kv) => (kv.create_revision, kv.version + 1),
                    None => (revision, 1),
                };
                table
                    .insert(key.as_ref(), encode_kv(create_revision, revision, version, value).as_slice())
                    .map_err(storage)?;
                events.push(WatchEvent {
                    kind: EventKind::Put,
                    kv: KeyValue {
                        key: key.clone(),
                        value: value.clone(),
                        create_revision,
                        mod_revision: revision,
                        version,
                    },
                });
            }
            Op::Delete { key } => {
                if let Some(kv) = current {
                    table.remove(key.as_ref()).map_err(storage)?;
                    events.push(WatchEvent {
                        kind: EventKind::Delete,
                        kv: KeyValue {
                            key: key.clone(),
                            value: Bytes::new(),
                            create_revision: kv.create_revision,
                            mod_revision: revision,
                            version: kv.version,
                        },
                    });
                }
            }
        }
    }
    Ok(events)
}

/// Drops history older than the retention window, a bounded amount per commit. The newest
/// entry always stays, whatever the window: its key is the store's revision.
fn trim_history(
    shared: &Shared,
    log: &mut redb::Table<u64, &[u8]>,
    revision: Revision,
    history_revisions: u64,
) -> MetaResult<()> {
    let keep_from = (revision.saturating_sub(history_revisions) + 1).min(revision);
    let oldest = shared.oldest.load(Ordering::SeqCst);
    if oldest >= keep_from {
        return Ok(());
    }
    let upto = keep_from.min(oldest + 1024);
    log.retain_in(oldest..upto, |_, _| false).map_err(storage)?;
    shared.oldest.store(upto, Ordering::SeqCst);
    Ok(())
}

// ----- the trait --------------------------------------------------------------------------------

impl EmbeddedStore {
    /// Puts a transaction in the writer's queue; the receiver gets its response.
    async fn enqueue(&self, txn: Txn) -> MetaResult<oneshot::Receiver<MetaResult<TxnResponse>>> {
        let (reply, response) = oneshot::channel();
        let writer = self.writer.clone();
        // The queue is bounded; a full queue means the disk is the bottleneck, so wait off the
        // async threads.
        match writer.try_send(WriteRequest { txn, reply }) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(req)) => {
                tokio::task::spawn_blocking(move || writer.send(req))
                    .await
                    .map_err(storage)?
                    .map_err(|_| MetaError::Closed)?;
            }
            Err(mpsc::TrySendError::Disconnected(_)) => return Err(MetaError::Closed),
        }
        Ok(response)
    }
}

#[async_trait::async_trait]
impl MetaStore for EmbeddedStore {
    async fn range(&self, req: RangeRequest) -> MetaResult<RangeResponse> {
        let resp = self.read_range(&req)?;
        self.published(resp.revision).await?;
        Ok(resp)
    }

    async fn get_many(&self, keys: &[Bytes]) -> MetaResult<(Vec<Option<KeyValue>>, Revision)> {
        let hot = &self.shared.hot;
        if let Some(hit) = hot.get_all(keys, &self.shared.revision) {
            return Ok(hit);
        }
        let ticket = hot.ticket();
        let (values, revision) = self.read_many(keys)?;
        self.published(revision).await?;
        hot.fill(ticket, keys, &values);
        Ok((values, revision))
    }

    async fn txn(&self, txn: Txn) -> MetaResult<TxnResponse> {
        let response = self.enqueue(txn).await?;
        response.await.map_err(|_| MetaError::Closed)?
    }

    async fn txns_in_order(&self, txns: Vec<Txn>) -> Vec<MetaResult<TxnResponse>> {
        // The writer applies its queue in order, so queueing them all before awaiting any keeps
        // the order and lets them share a group commit.
        let mut pending = Vec::with_capacity(txns.len());
        for txn in txns {
            pending.push(self.enqueue(txn).await);
        }
        let mut responses = Vec::with_capacity(pending.len());
        for queued in pending {
            responses.push(match queued {
                Ok(response) => response.await.unwrap_or(Err(MetaError::Closed)),
                Err(err) => Err(err),
            });
        }
        responses
    }

    async fn current_revision(&self) -> MetaResult<Revision> {
        Ok(self.shared.revision.load(Ordering::SeqCst))
    }

    async fn watch(&self, range: RangeRequest, from: Revision) -> MetaResult<WatchStream> {
        // Subscribe before reading history so nothing committed in between is missed; events
        // seen twice are dropped by revision.
        let live = self.shared.events.subscribe();
        let current = self.shared.revision.load(Ordering::SeqCst);
        let from = if from == 0 { current + 1 } else { from };
        let oldest = self.shared.oldest.load(Ordering::SeqCst);
        if from < oldest {
            return Err(MetaError::Compacted { requested: from, oldest });
        }
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let store = self.clone();
        tokio::spawn(async move {
            if let Err(err) = forward_watch(&store, &range, from, live, &tx).await {
                let _ = tx.send(Err(err)).await;
            }
        });
        Ok(Box::pin(tokio_stream_from(rx)))
    }
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<MetaResult<WatchEvent>>,
) -> impl futures::Stream<Item = MetaResult<WatchEvent>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Replays history from `from`, then follows live events; returns when the receiver is gone.
async fn forward_watch(
    store: &EmbeddedStore,
    range: &RangeRequest,
    from: Revision,
    mut live: broadcast::Receiver<Arc<RevisionEvents>>,
    tx: &tokio::sync::mpsc::Sender<MetaResult<WatchEvent>>,
) -> MetaResult<()> {
    let mut next = from;
    loop {
        next = replay(store, range, next, tx).await?;
        if tx.is_closed() {
            return Ok(());
        }
        loop {
            let batch = tokio::select! {
                batch = live.recv() => batch,
                () = tx.closed() => return Ok(()),
            };
            match batch {
                Ok(batch) => {
                    if batch.revision < next {
                        continue;
                    }
                    if batch.revision > next {
                        // Revisions that touched nothing are never broadcast, but a gap may
                        // also hide history we missed: re-read the log to be sure.
                        break;
                    }
                    for event in &batch.events {
                        if range.contains(&event.kv.key) && tx.send(Ok(event.clone())).await.is_err() {
                            return Ok(());
                        }
                    }
                    next = batch.revision + 1;
                }
                // We fell behind the live channel: catch up from the log.
                Err(broadcast::error::RecvError::Lagged(_)) => break,
                Err(broadcast::error::RecvError::Closed) => return Err(MetaError::Closed),
            }
        }
    }
}

/// Sends logged events from `next` up to the newest committed revision; returns the next
/// revision to deliver.
async fn replay(
    store: &EmbeddedStore,
    range: &RangeRequest,
    mut next: Revision,
    tx: &tokio::sync::mpsc::Sender<MetaResult<WatchEvent>>,
) -> MetaResult<Revision> {
    loop {
        let current = store.shared.revision.load(Ordering::SeqCst);
        if next > current {
            return Ok(next);
        }
        let oldest = store.shared.oldest.load(Ordering::SeqCst);
        if next < oldest {
            return Err(MetaError::Compacted { requested: next, oldest });
        }
        let to = current.min(next + REPLAY_CHUNK as u64 - 1);
        let events = store.read_history(range, next, to)?;
        // The writer publishes a new `oldest` before it commits the trim, so if history from
        // `next` was trimmed before our read snapshot, this sees it: never skip events silently.
        let oldest = store.shared.oldest.load(Ordering::SeqCst);
        if next < oldest {
            return Err(MetaError::Compacted { requested: next, oldest });
        }
        for event in events {
            if tx.send(Ok(event)).await.is_err() {
                return Ok(to + 1);
            }
        }
        next = to + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance;
    use futures::StreamExt;
    use redb::TableHandle;

    fn open(dir: &tempfile::TempDir) -> EmbeddedStore {
        EmbeddedStore::open(&dir.path().join("meta.redb"), EmbeddedOptions::default()).unwrap()
    }

    #[tokio::test]
    async fn conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        conformance::run_all(&open(&dir)).await;
    }

    /// Each commit writes the same counter to `a` and `b`; a reader that reads `a` and then
    /// `b` must never find `b` older than `a` (the hot-key cache must not answer a state older
    /// than one a previous read returned).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sequential_reads_never_go_back_in_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let (a, b) = (Bytes::from_static(b"a"), Bytes::from_static(b"b"));
        let counter =
            |kv: &Option<KeyValue>| kv.as_ref().map_or(0, |kv| u64::from_be_bytes(kv.value[..].try_into().unwrap()));
        let writer = {
            let (store, a, b) = (store.clone(), a.clone(), b.clone());
            tokio::spawn(async move {
                for i in 1..=1500u64 {
                    let value = Bytes::copy_from_slice(&i.to_be_bytes());
                    let mut txn = Txn::new();
                    txn.ops.push(Op::Put { key: a.clone(), value: value.clone() });
                    txn.ops.push(Op::Put { key: b.clone(), value });
                    store.txn(txn).await.unwrap();
                }
            })
        };
        let mut reads = 0;
        while !writer.is_finished() {
            let (first, rev_a) = store.get_many(std::slice::from_ref(&a)).await.unwrap();
            let (second, rev_b) = store.get_many(std::slice::from_ref(&b)).await.unwrap();
            assert!(counter(&second[0]) >= counter(&first[0]), "read b={:?} after a={:?}", second[0], first[0]);
            assert!(rev_b >= rev_a, "revision {rev_b} after {rev_a}");
            reads += 1;
        }
        writer.await.unwrap();
        assert!(reads > 100, "only {reads} rounds of reads ran beside the writer");
    }

    #[tokio::test]
    async fn revision_and_data_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(&dir);
            store.txn(Txn::new().then(Op::put("a", "1"))).await.unwrap();
            store.txn(Txn::new().then(Op::put("b", "2"))).await.unwrap();
        }
        // The writer thread holds the database until its queue closes; wait for that.
        let store = loop {
            match EmbeddedStore::open(&dir.path().join("meta.redb"), EmbeddedOptions::default()) {
                Ok(store) => break store,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            }
        };
        assert_eq!(store.current_revision().await.unwrap(), 2);
        assert_eq!(store.get(b"a").await.unwrap().unwrap().value, Bytes::from("1"));
        let resp = store.txn(Txn::new().then(Op::put("c", "3"))).await.unwrap();
        assert_eq!(resp.revision, 3);
    }

    /// Opens the store in `dir` once the previous one's writer thread has let go of the file.
    async fn reopen(dir: &tempfile::TempDir, options: EmbeddedOptions) -> EmbeddedStore {
        for _ in 0..500 {
            if let Ok(store) = EmbeddedStore::open(&dir.path().join("meta.redb"), options.clone()) {
                return store;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the store could not be reopened within 5 s");
    }

    /// The table names in the store's file, once the last store's writer thread has let go of it.
    async fn tables(dir: &tempfile::TempDir) -> Vec<String> {
        for _ in 0..500 {
            if let Ok(db) = Database::open(dir.path().join("meta.redb")) {
                let rtx = db.begin_read().unwrap();
                let mut names: Vec<String> = rtx.list_tables().unwrap().map(|t| t.name().to_string()).collect();
                names.sort();
                return names;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the store's file stayed open for 5 s");
    }

    /// Options whose checkpoints come only when a test asks: after `bytes` of log, or idle for
    /// `idle`.
    fn checkpoints(bytes: u64, idle: std::time::Duration) -> EmbeddedOptions {
        EmbeddedOptions { checkpoint_bytes: bytes, checkpoint_idle: idle, ..EmbeddedOptions::default() }
    }

    const NEVER: std::time::Duration = std::time::Duration::from_secs(3600);

    /// Copies the store's files as a crash would leave them (the writer is idle: every write
    /// was acknowledged) into a new directory; `with_log: false` leaves the write-ahead log out.
    fn crash_image(dir: &tempfile::TempDir, with_log: bool) -> tempfile::TempDir {
        let image = tempfile::tempdir().unwrap();
        let db = dir.path().join("meta.redb");
        std::fs::copy(&db, image.path().join("meta.redb")).unwrap();
        if with_log {
            std::fs::copy(wal_path(&db), wal_path(&image.path().join("meta.redb"))).unwrap();
        }
        image
    }

    async fn put_keys(store: &EmbeddedStore, keys: std::ops::Range<u32>) {
        for i in keys {
            store.txn(Txn::new().then(Op::put(format!("k{i:03}"), format!("v{i}")))).await.unwrap();
        }
    }

    async fn count_keys(store: &EmbeddedStore) -> usize {
        store.range(RangeRequest::prefix("k")).await.unwrap().kvs.len()
    }

    /// Acknowledged writes are durable in the log before redb holds them durably: without the
    /// log a crash image has none of them, with it all, history included.
    #[tokio::test]
    async fn acknowledged_writes_survive_a_crash_through_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("meta.redb"), checkpoints(u64::MAX, NEVER)).unwrap();
        put_keys(&store, 0..50).await;
        store.txn(Txn::new().then(Op::delete("k007"))).await.unwrap();

        let redb_alone = crash_image(&dir, false);
        let opened = reopen(&redb_alone, EmbeddedOptions::default()).await;
        assert_eq!(count_keys(&opened).await, 0, "redb alone held the writes durably: the log was not used");
        assert_eq!(opened.current_revision().await.unwrap(), 0);

        let image = crash_image(&dir, true);
        let recovered = reopen(&image, EmbeddedOptions::default()).await;
        assert_eq!(recovered.current_revision().await.unwrap(), 51);
        assert_eq!(count_keys(&recovered).await, 49);
        let kv = recovered.get(b"k049").await.unwrap().unwrap();
        assert_eq!((kv.value, kv.create_revision, kv.mod_revision), (Bytes::from("v49"), 50, 50));
        let mut watch = recovered.watch(RangeRequest::prefix("k"), 50).await.unwrap();
        let events = [watch.next().await.unwrap().unwrap(), watch.next().await.unwrap().unwrap()];
        assert_eq!((events[0].kind, events[0].kv.mod_revision), (EventKind::Put, 50));
        assert_eq!((events[1].kind, events[1].kv.key.as_ref()), (EventKind::Delete, b"k007".as_ref()));
        // Replayed into redb durably: the log may now be written over.
        put_keys(&recovered, 50..60).await;
        drop((watch, recovered));
        let again = reopen(&image, EmbeddedOptions::default()).await;
        assert_eq!((count_keys(&again).await, again.current_revision().await.unwrap()), (59, 61));
    }

    /// With a checkpoint after every ~300 bytes of log (six one-key commits) the log restarts at
    /// its beginning again and again, and its newest frames are followed by older ones from the
    /// cycle before; a crash image still has every write, once.
    #[tokio::test]
    async fn frames_left_behind_by_checkpoints_are_not_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = meridian_metrics::EmbeddedMetrics::default();
        let options = EmbeddedOptions { metrics: metrics.clone(), ..checkpoints(300, NEVER) };
        let store = EmbeddedStore::open(&dir.path().join("meta.redb"), options).unwrap();
        put_keys(&store, 0..39).await;
        assert_eq!(metrics.checkpoints.get(), 5, "five cycles of six logged commits and a checkpoint");
        let image = crash_image(&dir, true);
        let recovered = reopen(&image, EmbeddedOptions::default()).await;
        assert_eq!((count_keys(&recovered).await, recovered.current_revision().await.unwrap()), (39, 39));
        for i in [0u32, 34, 35, 38] {
            let kv = recovered.get(format!("k{i:03}").as_bytes()).await.unwrap().unwrap();
            assert_eq!((kv.version, kv.mod_revision), (1, u64::from(i) + 1));
        }
    }

    /// An idle writer checkpoints: redb alone then holds everything.
    #[tokio::test]
    async fn an_idle_writer_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(
            &dir.path().join("meta.redb"),
            checkpoints(u64::MAX, std::time::Duration::from_millis(50)),
        )
        .unwrap();
        put_keys(&store, 0..10).await;
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let redb_alone = crash_image(&dir, false);
        let opened = reopen(&redb_alone, EmbeddedOptions::default()).await;
        assert_eq!((count_keys(&opened).await, opened.current_revision().await.unwrap()), (10, 10));
    }

    /// A log whose revisions do not continue the database's (a file from another time) is
    /// refused, naming both, instead of being applied over a gap.
    #[tokio::test]
    async fn a_log_that_does_not_continue_the_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("meta.redb"), checkpoints(u64::MAX, NEVER)).unwrap();
        put_keys(&store, 0..5).await;
        let early = crash_image(&dir, false);
        drop(store);
        let store = reopen(&dir, checkpoints(u64::MAX, NEVER)).await;
        put_keys(&store, 5..8).await;
        let late = crash_image(&dir, true);
        std::fs::copy(wal_path(&late.path().join("meta.redb")), wal_path(&early.path().join("meta.redb"))).unwrap();
        let err = EmbeddedStore::open(&early.path().join("meta.redb"), EmbeddedOptions::default()).err().unwrap();
        assert!(err.to_string().contains("resumes at revision 6 but the database ends at 0"), "{err}");
    }

    /// A commit touches the keys and the log only: the revision is the log's newest key.
    #[tokio::test]
    async fn commits_keep_the_revision_in_the_log_alone() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(&dir);
            store.txn(Txn::new().then(Op::put("a", "1"))).await.unwrap();
        }
        assert_eq!(tables(&dir).await, ["kv", "log"]);
    }

    /// With no history kept, the log still keeps its newest entry, so the revision survives a
    /// reopen and is never handed out twice.
    #[tokio::test]
    async fn revision_survives_reopen_with_no_history_kept() {
        let dir = tempfile::tempdir().unwrap();
        let options = EmbeddedOptions { history_revisions: 0, ..EmbeddedOptions::default() };
        {
            let store = EmbeddedStore::open(&dir.path().join("meta.redb"), options.clone()).unwrap();
            for i in 0..5 {
                store.txn(Txn::new().then(Op::put("k", format!("{i}")))).await.unwrap();
            }
            let err = store.watch(RangeRequest::prefix("k"), 4).await.err().unwrap();
            assert!(matches!(err, MetaError::Compacted { requested: 4, oldest: 5 }), "{err:?}");
        }
        let store = reopen(&dir, options).await;
        assert_eq!(store.current_revision().await.unwrap(), 5);
        assert_eq!(store.get(b"k").await.unwrap().unwrap().mod_revision, 5);
        assert_eq!(store.txn(Txn::new().then(Op::put("k", "5"))).await.unwrap().revision, 6);
    }

    /// A store written when the revision was kept in a table of its own (`meta`) opens at that
    /// revision, even with its log emptied, and the old table is gone afterwards.
    #[tokio::test]
    async fn a_store_with_the_legacy_revision_table_keeps_its_revision() {
        for logged in [&[][..], &[6, 7][..]] {
            let dir = tempfile::tempdir().unwrap();
            {
                let db = Database::create(dir.path().join("meta.redb")).unwrap();
                let wtx = db.begin_write().unwrap();
                {
                    let mut kv = wtx.open_table(KV).unwrap();
                    kv.insert(b"k".as_slice(), encode_kv(1, 7, 3, b"v").as_slice()).unwrap();
                    let mut log = wtx.open_table(LOG).unwrap();
                    for rev in logged {
                        log.insert(*rev, [].as_slice()).unwrap();
                    }
                    wtx.open_table(LEGACY_META).unwrap().insert(LEGACY_META_REVISION, 7).unwrap();
                }
                wtx.commit().unwrap();
            }
            {
                let store = open(&dir);
                assert_eq!(store.current_revision().await.unwrap(), 7, "log {logged:?}");
                let (_, revision) = store.get_many(&[Bytes::from_static(b"k")]).await.unwrap();
                assert_eq!(revision, 7, "log {logged:?}");
                assert_eq!(store.txn(Txn::new().then(Op::put("k", "w"))).await.unwrap().revision, 8);
            }
            let store = reopen(&dir, EmbeddedOptions::default()).await;
            assert_eq!(store.current_revision().await.unwrap(), 8, "log {logged:?}");
        }
    }

    #[tokio::test]
    async fn history_is_trimmed_and_old_watches_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let options = EmbeddedOptions { history_revisions: 10, ..EmbeddedOptions::default() };
        let store = EmbeddedStore::open(&dir.path().join("meta.redb"), options).unwrap();
        for i in 0..30 {
            store.txn(Txn::new().then(Op::put("k", format!("{i}")))).await.unwrap();
        }
        let err = store.watch(RangeRequest::prefix("k"), 1).await.err().unwrap();
        match err {
            MetaError::Compacted { requested: 1, oldest } => assert!(oldest > 1 && oldest <= 21),
            other => panic!("expected Compacted, got {other:?}"),
        }
        assert!(store.watch(RangeRequest::prefix("k"), 25).await.is_ok());
    }
}
