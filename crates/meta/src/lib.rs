//! The metadata store: the one place where Meridian keeps what exists.
//!
//! The trait is deliberately narrow (it is modelled on etcd's KV API) so that an embedded
//! database, etcd, FoundationDB or TiKV can all back it:
//!
//! * ordered range reads over byte keys,
//! * transactions that compare per-key revisions/versions/values and then apply puts and deletes
//!   atomically,
//! * one global revision that increases with every successful write transaction; every key
//!   remembers the revision that created it and the one that last modified it,
//! * a watch over a key range that replays history from a revision and then follows live changes.
//!
//! Backends must pass [`conformance`] (enabled with the `conformance` feature).

use std::ops::Bound;
use std::pin::Pin;

use bytes::Bytes;
use futures::Stream;

#[cfg(feature = "conformance")]
pub mod conformance;
pub mod embedded;
mod hot;
mod keys;
mod wal;

pub use keys::prefix_end;

/// A global metadata revision. Revision 0 means "never written".
pub type Revision = u64;

/// A key with its current value and bookkeeping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Bytes,
    pub value: Bytes,
    /// Revision of the transaction that created the key (the latest creation after a delete).
    pub create_revision: Revision,
    /// Revision of the transaction that last changed the key.
    pub mod_revision: Revision,
    /// Number of writes since creation; 1 right after creation.
    pub version: u64,
}

/// What a [`Compare`] looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompareTarget {
    /// The key's mod revision (0 when absent).
    ModRevision(Revision),
    /// The key's create revision (0 when absent).
    CreateRevision(Revision),
    /// The key's version (0 when absent).
    Version(u64),
    /// The key's value. A comparison against an absent key is always false.
    Value(Bytes),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareOp {
    Equal,
    NotEqual,
    Less,
    Greater,
}

/// One condition of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compare {
    pub key: Bytes,
    pub op: CompareOp,
    pub target: CompareTarget,
}

impl Compare {
    /// Holds when the key's mod revision is exactly `rev` (`rev == 0`: the key is absent).
    pub fn mod_revision_is(key: impl Into<Bytes>, rev: Revision) -> Self {
        Compare { key: key.into(), op: CompareOp::Equal, target: CompareTarget::ModRevision(rev) }
    }

    /// Holds when the key does not exist.
    pub fn absent(key: impl Into<Bytes>) -> Self {
        Compare::mod_revision_is(key, 0)
    }

    /// Holds when the key exists.
    pub fn exists(key: impl Into<Bytes>) -> Self {
        Compare { key: key.into(), op: CompareOp::Greater, target: CompareTarget::Version(0) }
    }

    /// Evaluates the condition against the key's current state (`None` when absent).
    pub fn evaluate(&self, current: Option<&KeyValue>) -> bool {
        use std::cmp::Ordering;
        let ordering = match (&self.target, current) {
            (CompareTarget::Value(_), None) => return false,
            (CompareTarget::Value(want), Some(kv)) => kv.value.as_ref().cmp(want.as_ref()),
            (CompareTarget::ModRevision(want), kv) => kv.map_or(0, |kv| kv.mod_revision).cmp(want),
            (CompareTarget::CreateRevision(want), kv) => kv.map_or(0, |kv| kv.create_revision).cmp(want),
            (CompareTarget::Version(want), kv) => kv.map_or(0, |kv| kv.version).cmp(want),
        };
        match self.op {
            CompareOp::Equal => ordering == Ordering::Equal,
            CompareOp::NotEqual => ordering != Ordering::Equal,
            CompareOp::Less => ordering == Ordering::Less,
            CompareOp::Greater => ordering == Ordering::Greater,
        }
    }
}

/// A write inside a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put { key: Bytes, value: Bytes },
    Delete { key: Bytes },
}

impl Op {
    pub fn put(key: impl Into<Bytes>, value: impl Into<Bytes>) -> Self {
        Op::Put { key: key.into(), value: value.into() }
    }

    pub fn delete(key: impl Into<Bytes>) -> Self {
        Op::Delete { key: key.into() }
    }

    pub fn key(&self) -> &Bytes {
        match self {
            Op::Put { key, .. } | Op::Delete { key } => key,
        }
    }
}

/// An atomic transaction: if every compare holds, apply every op; otherwise apply nothing and
/// read back the keys named in `read_on_failure` (typically the keys that were compared), so the
/// caller can explain the failure or retry without another round trip.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub ops: Vec<Op>,
    pub read_on_failure: Vec<Bytes>,
}

impl Txn {
    pub fn new() -> Self {
        Txn::default()
    }

    pub fn when(mut self, compare: Compare) -> Self {
        self.compares.push(compare);
        self
    }

    pub fn then(mut self, op: Op) -> Self {
        self.ops.push(op);
        self
    }

    pub fn or_read(mut self, key: impl Into<Bytes>) -> Self {
        self.read_on_failure.push(key.into());
        self
    }
}

/// The outcome of a [`Txn`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnResponse {
    pub succeeded: bool,
    /// The revision of this transaction's writes when it succeeded and wrote something;
    /// otherwise the store's revision at the time it was evaluated.
    pub revision: Revision,
    /// When the transaction failed: the current state of each key in `read_on_failure`.
    pub failure_reads: Vec<Option<KeyValue>>,
}

/// An ordered range read: keys in `[start, end)`.
#[derive(Clone, Debug)]
pub struct RangeRequest {
    pub start: Bound<Bytes>,
    pub end: Bound<Bytes>,
    /// At most this many keys (0 = no limit).
    pub limit: usize,
}

impl RangeRequest {
    /// Every key starting with `prefix`.
    pub fn prefix(prefix: impl Into<Bytes>) -> Self {
        let prefix: Bytes = prefix.into();
        let end = match prefix_end(&prefix) {
            Some(end) => Bound::Excluded(Bytes::from(end)),
            None => Bound::Unbounded,
        };
        RangeRequest { start: Bound::Included(prefix), end, limit: 0 }
    }

    /// Keys in `[start, end)`.
    pub fn between(start: impl Into<Bytes>, end: impl Into<Bytes>) -> Self {
        RangeRequest { start: Bound::Included(start.into()), end: Bound::Excluded(end.into()), limit: 0 }
    }

    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// Starts strictly after `key` instead of at the current start.
    pub fn after(mut self, key: impl Into<Bytes>) -> Self {
        self.start = Bound::Excluded(key.into());
        self
    }

    /// Starts at `key` (inclusive) instead of at the current start.
    pub fn from(mut self, key: impl Into<Bytes>) -> Self {
        self.start = Bound::Included(key.into());
        self
    }

    /// True when `key` falls inside the range (ignoring the limit).
    pub fn contains(&self, key: &[u8]) -> bool {
        let after_start = match &self.start {
            Bound::Included(s) => key >= s.as_ref(),
            Bound::Excluded(s) => key > s.as_ref(),
            Bound::Unbounded => true,
        };
        let before_end = match &self.end {
            Bound::Included(e) => key <= e.as_ref(),
            Bound::Excluded(e) => key < e.as_ref(),
            Bound::Unbounded => true,
        };
        after_start && before_end
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeResponse {
    pub kvs: Vec<KeyValue>,
    /// True when the limit cut the result short.
    pub more: bool,
    /// The store revision this read reflects.
    pub revision: Revision,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change seen by a watch. For deletes, `kv.value` is empty and `kv.mod_revision` is the
/// revision of the delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    pub kind: EventKind,
    pub kv: KeyValue,
}

pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, MetaError>> + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// The watch asked for history the store no longer keeps.
    #[error("revision {requested} is compacted: the oldest revision still available is {oldest}")]
    Compacted { requested: Revision, oldest: Revision },
    /// A watcher fell too far behind the live stream and must resume from `next`.
    #[error("watch fell behind; resume from revision {next}")]
    Lagged { next: Revision },
    #[error("transaction too large: {0}")]
    TooLarge(String),
    #[error("metadata store unavailable: {0}")]
    Unavailable(String),
    #[error("metadata storage error: {0}")]
    Storage(String),
    #[error("metadata store is shut down")]
    Closed,
}

pub type MetaResult<T> = Result<T, MetaError>;

/// The metadata store.
///
/// What every implementation guarantees:
/// - `txn` is linearizable and atomic: its compares and its writes happen at one point between
///   the call and its answer, and every successful write transaction gets the next global
///   revision.
/// - `get_many` and each `range` answer come from one revision (a consistent snapshot).
/// - `watch` delivers every change in revision order, without gaps or duplicates.
///
/// How fresh reads are depends on the handle, and each handle says so:
/// - the embedded store and the etcd store in `ReadMode::Linearizable` (its default): reads
///   are **linearizable** — they reflect every write acknowledged anywhere before they started;
/// - the etcd store in `ReadMode::Serializable`: reads are **serializable** — a consistent
///   snapshot from the nearest member, possibly behind the cluster, but never behind any
///   revision this process has already seen (its own writes included);
/// - the etcd store's `at_least(R)` handle: serializable reads that reflect at least revision R.
///
/// The engine picks a handle per request (`meridian_engine::Consistency`); the node wires
/// strong reads to a linearizable handle.
#[async_trait::async_trait]
pub trait MetaStore: Send + Sync + 'static {
    /// Keys in the range, in byte order.
    async fn range(&self, req: RangeRequest) -> MetaResult<RangeResponse>;

    /// Several keys read at one revision.
    async fn get_many(&self, keys: &[Bytes]) -> MetaResult<(Vec<Option<KeyValue>>, Revision)>;

    /// Runs a transaction atomically.
    async fn txn(&self, txn: Txn) -> MetaResult<TxnResponse>;

    /// Runs transactions one after the other, in this order, each atomically and with its own
    /// revision, as if each were sent once the previous one had answered. A store that can
    /// queue them together (the embedded store: one group commit) does, so a chain of writes
    /// to one key costs one commit, not one each.
    async fn txns_in_order(&self, txns: Vec<Txn>) -> Vec<MetaResult<TxnResponse>> {
        let mut responses = Vec::with_capacity(txns.len());
        for txn in txns {
            responses.push(self.txn(txn).await);
        }
        responses
    }

    /// The current global revision.
    async fn current_revision(&self) -> MetaResult<Revision>;

    /// Changes to keys in the range with revision `>= from` (`from == 0`: only future changes),
    /// in revision order, without gaps or duplicates. Fails with [`MetaError::Compacted`] when
    /// `from` is older than the retained history.
    async fn watch(&self, range: RangeRequest, from: Revision) -> MetaResult<WatchStream>;

    /// One key.
    async fn get(&self, key: &[u8]) -> MetaResult<Option<KeyValue>> {
        let (mut kvs, _) = self.get_many(&[Bytes::copy_from_slice(key)]).await?;
        Ok(kvs.pop().flatten())
    }
}
