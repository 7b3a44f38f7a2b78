//! Meridian's metadata store on an etcd cluster: the backend for nodes in several regions.
//!
//! [`EtcdStore`] implements [`meridian_meta::MetaStore`] on etcd's v3 API and passes the same
//! conformance suite as the embedded store. It talks gRPC to etcd directly, with client code
//! generated from etcd's `.proto` files and committed (see
//! `docs/decisions/003-etcd-client.md`), so it builds with nothing but the Rust toolchain.
//!
//! # How the trait maps onto etcd
//!
//! * **Keys** live under a namespace prefix (default `/meridian/`), so several stores — several
//!   Meridian clusters, or many tests — can share one etcd cluster. Callers never see the prefix.
//! * **Revisions** are etcd's cluster revision. They are shared by every namespace of the etcd
//!   cluster: a write in one namespace advances the revision seen by the others.
//! * **`range`** is one etcd `Range` (with `limit`; `more` comes from etcd);
//!   **`get_many`** is one etcd `Txn` of `Range`s, so all keys are read at one revision;
//!   **`txn`** is one etcd `Txn`: our compares become etcd compares, our puts and deletes its
//!   success branch, and the `read_on_failure` keys `Range`s of its failure branch. A compare on
//!   the value of an absent key is false, as in etcd (and as the trait requires).
//! * **`watch`** is an etcd watch from the requested revision. If the stream breaks (a member
//!   dies, a connection resets) it is re-created on another member from the revision after the
//!   last delivered event, so the consumer sees no gap and no duplicate. A start revision that
//!   compaction removed fails with [`MetaError::Compacted`].
//!
//! # etcd settings Meridian needs
//!
//! Start every member with at least:
//!
//! ```text
//! --max-txn-ops 32768           # completing a 10,000-part upload that replaces a 10,000-part
//!                               # object writes 30,002 ops in one transaction
//! --max-request-bytes 16777216  # 16 MiB: such a transaction is ~13 MiB with 1 KiB keys
//! --auto-compaction-mode revision --auto-compaction-retention 100000   # bounded history
//! ```
//!
//! A transaction over the limits fails with [`MetaError::TooLarge`] naming the flag to raise.
//! See `docs/etcd.md` for the full guide (regions, learners, compaction, quotas).
//!
//! # Consistency of reads
//!
//! [`ReadMode::Linearizable`] (the default) reads through the etcd leader's read index: every
//! read reflects every write acknowledged before it started, anywhere in the world — at the cost
//! of a round trip to the leader's region. [`ReadMode::Serializable`] reads from the first
//! reachable member listed (typically a non-voting *learner* in the node's own region) without
//! asking the leader: fast and local, possibly a little behind the cluster, but never behind
//! what this process has already seen (its own writes and earlier reads — see
//! [`EtcdStore::observed_revision`]). [`EtcdStore::with_read_mode`] gives a handle with the
//! other mode on the same connections, for requests that ask for strong reads, and
//! [`EtcdStore::at_least`] one whose reads reflect at least a given revision (read-your-writes
//! across regions), served locally whenever the local member has caught up.
//!
//! # Failures
//!
//! Every request has a deadline ([`EtcdOptions::request_timeout`], 5 s by default). Requests go
//! to one member at a time; when it is unreachable, has no leader, or cannot serve the request
//! (a learner asked for a write), the next member is tried. Reads are retried freely; a write is
//! retried only when etcd certainly did not apply it. Otherwise the write fails with
//! [`MetaError::Unavailable`] saying that its outcome is unknown — re-read before retrying.
//!
//! # TLS
//!
//! `https://` endpoints are checked against the system's CA certificates plus those of
//! [`EtcdOptions::ca_file`]. A CA file that cannot be read or holds no usable certificate, or an
//! `https://` endpoint with no trusted CA at all, fails [`EtcdStore::connect`] with a
//! [`MetaError::Storage`] saying so (a [`TlsError`]'s message); a certificate no trusted CA
//! signed fails the connection to that member like any other connection failure, so a request
//! fails with [`MetaError::Unavailable`] naming the certificate error once its deadline passes.
//!
//! # Testing
//!
//! With the `test-cluster` feature, [`testing::EtcdCluster`] starts real etcd processes for
//! tests, kills and restarts members, and adds learners.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use meridian_meta::{
    Compare, CompareOp, CompareTarget, KeyValue, MetaError, MetaResult, MetaStore, Op, RangeRequest, RangeResponse,
    Revision, Txn, TxnResponse, WatchStream,
};

mod client;
mod namespace;
mod proto;
#[cfg(feature = "test-cluster")]
pub mod testing;
mod tls;
mod watch;

pub use tls::TlsError;

use client::{CallError, Pool, Retry, Route, is_compacted, is_future_revision, to_revision};
use namespace::Namespace;
use proto::etcdserverpb as pb;
use proto::etcdserverpb::kv_client::KvClient;
use proto::etcdserverpb::maintenance_client::MaintenanceClient;

/// The namespace prefix used when none is configured.
pub const DEFAULT_NAMESPACE: &str = "/meridian/";

/// How reads are served.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReadMode {
    /// Every read is confirmed by the leader (etcd's read index): it reflects every write
    /// acknowledged anywhere before it started. Costs a round trip to the leader.
    #[default]
    Linearizable,
    /// Reads are answered by one member from its own state — typically a learner or voter in the
    /// same region — without asking the leader. They may miss the newest writes of other nodes,
    /// but never go back before a revision this process has already observed, so a node always
    /// reads its own writes and never sees time run backwards. Writes and watches still go to
    /// voting members.
    Serializable,
}

/// How to reach the etcd cluster.
#[derive(Clone, Debug)]
pub struct EtcdOptions {
    /// Client URLs of etcd members (`http://host:2379`, `https://host:2379` or `host:2379`).
    /// Requests go to the first one that works; list the closest member (for instance a local
    /// learner) first.
    pub endpoints: Vec<String>,
    /// CA certificates (PEM) trusted for `https://` endpoints besides the system's. When set,
    /// the file must hold at least one usable certificate.
    pub ca_file: Option<PathBuf>,
    /// Prefix of every key of this store in the etcd keyspace (default `/meridian/`).
    pub namespace: Bytes,
    /// Linearizable (default) or serializable reads.
    pub read_mode: ReadMode,
    /// Deadline of every request, failover to other members included (default 5 s).
    pub request_timeout: Duration,
    /// Deadline for opening a connection to one member (default 2 s).
    pub connect_timeout: Duration,
    /// HTTP/2 keep-alive ping interval while requests or watches are open (default 10 s; etcd
    /// refuses pings more often than its `--grpc-keepalive-min-time`, 5 s by default).
    pub keep_alive_interval: Duration,
    /// How long a keep-alive ping may go unanswered before the connection counts as dead and
    /// its watches move to another member (default 5 s).
    pub keep_alive_timeout: Duration,
    /// Send etcd's "require leader" marker with every request and watch (default true): a
    /// voting member that has lost its leader (it is cut off from the majority) refuses
    /// requests and closes watches instead of hanging, and the client moves to another member.
    /// A learner never notices the loss of its leader this way (it does not take part in
    /// elections), so a cut-off learner keeps answering serializable reads from its last state.
    pub require_leader: bool,
    /// The most reads `get_many` puts into one etcd transaction (default 128, etcd's default
    /// `--max-txn-ops`); more keys are read in several transactions at the same revision.
    pub max_txn_ops: usize,
    /// Where request latencies and errors are recorded.
    pub metrics: meridian_metrics::EtcdMetrics,
    /// The largest response accepted from etcd (default 2 GiB, like etcd's Go client).
    pub max_response_bytes: usize,
}

impl EtcdOptions {
    pub fn new<I, S>(endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        EtcdOptions {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            ca_file: None,
            namespace: Bytes::from_static(DEFAULT_NAMESPACE.as_bytes()),
            read_mode: ReadMode::Linearizable,
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            keep_alive_interval: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(5),
            require_leader: true,
            max_txn_ops: 128,
            metrics: meridian_metrics::EtcdMetrics::default(),
            max_response_bytes: i32::MAX as usize,
        }
    }

    /// Sets the namespace prefix.
    pub fn namespace(mut self, prefix: impl Into<Bytes>) -> Self {
        self.namespace = prefix.into();
        self
    }

    /// Trusts the certificates of this PEM file for `https://` endpoints (besides the system's).
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    pub fn read_mode(mut self, mode: ReadMode) -> Self {
        self.read_mode = mode;
        self
    }

    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    pub fn require_leader(mut self, require: bool) -> Self {
        self.require_leader = require;
        self
    }
}

/// See [`EtcdStore::applied_revisions`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppliedRevisions {
    /// The revision the leader has applied.
    pub newest: Revision,
    /// The revision the member serving this process's serializable reads has applied.
    pub local: Revision,
}

/// One member's view of the cluster, from etcd's `Status` call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberStatus {
    pub endpoint: String,
    /// `None` when the member did not answer; `error` says why.
    pub member_id: Option<u64>,
    /// The member's current leader (0: none known).
    pub leader: u64,
    /// The newest revision this member has applied.
    pub revision: Revision,
    pub raft_index: u64,
    pub raft_applied_index: u64,
    pub is_learner: bool,
    pub db_size: i64,
    pub version: String,
    /// Alarms (e.g. NOSPACE) and errors the member reports, or why it could not be asked.
    pub errors: Vec<String>,
}

/// A metadata store on an etcd cluster. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct EtcdStore {
    pool: Arc<Pool>,
    ns: Namespace,
    read_mode: ReadMode,
    /// Serializable reads through this handle reflect at least this revision.
    floor: Revision,
    max_txn_ops: usize,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.pool.endpoints())
            .field("namespace", self.ns.prefix())
            .field("read_mode", &self.read_mode)
            .finish()
    }
}

/// How many times a serializable read waits for a lagging member before asking the leader.
const FLOOR_TRIES: u32 = 5;

impl EtcdStore {
    /// Connects to the cluster and checks that some member answers.
    pub async fn connect(options: EtcdOptions) -> MetaResult<Self> {
        let store = EtcdStore {
            pool: Arc::new(Pool::new(&options)?),
            ns: Namespace::new(options.namespace.clone()),
            read_mode: options.read_mode,
            floor: 0,
            max_txn_ops: options.max_txn_ops.max(1),
        };
        store.current_revision().await?;
        Ok(store)
    }

    /// The same store (same connections, same namespace) with another read mode — for
    /// instance a linearizable handle for requests that ask for strong reads.
    pub fn with_read_mode(&self, read_mode: ReadMode) -> Self {
        EtcdStore { read_mode, ..self.clone() }
    }

    /// A handle whose reads reflect at least `revision` (for example a revision a client saw
    /// in another region: read-your-writes across regions). Serializable reads are still served
    /// locally when the local member has caught up to it, and go through the leader otherwise.
    /// Linearizable reads always satisfy it.
    pub fn at_least(&self, revision: Revision) -> Self {
        EtcdStore { floor: self.floor.max(revision), ..self.clone() }
    }

    pub fn read_mode(&self) -> ReadMode {
        self.read_mode
    }

    /// The namespace prefix of this store's keys.
    pub fn namespace(&self) -> &Bytes {
        self.ns.prefix()
    }

    /// The configured client URLs.
    pub fn endpoints(&self) -> Vec<String> {
        self.pool.endpoints()
    }

    /// The newest revision any response has shown this process (through any clone). Serializable
    /// reads never reflect an older revision.
    pub fn observed_revision(&self) -> Revision {
        self.pool.observed()
    }

    /// Discards history before `revision` (etcd `Compact`): watches from older revisions then
    /// fail with [`MetaError::Compacted`]. Normally etcd's `--auto-compaction-*` flags do this.
    /// Compacting at or below the current compaction point is not an error.
    pub async fn compact(&self, revision: Revision) -> MetaResult<()> {
        let pool = &self.pool;
        let result = pool
            .call("compact", Route::Voter, Retry::Always, |channel, budget| {
                let request = pool.request(
                    pb::CompactionRequest { revision: client::to_etcd_revision(revision), physical: false },
                    budget,
                );
                async move { KvClient::new(channel).compact(request).await }
            })
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(CallError::Status(status)) if is_compacted(&status) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    /// Asks every configured member for its status (for `meridian cluster status`: leader,
    /// applied revision — hence lag —, learner or voter, database size, alarms).
    pub async fn member_status(&self) -> Vec<MemberStatus> {
        futures::future::join_all((0..self.pool.len()).map(|index| self.status_of(index))).await
    }

    /// The status of configured member `index`.
    async fn status_of(&self, index: usize) -> MemberStatus {
        let pool = &self.pool;
        let timeout = pool.request_timeout;
        let (channel, url) = pool.member(index);
        // Without the "require leader" marker: a member that lost its leader must still
        // report its state.
        let mut request = tonic::Request::new(pb::StatusRequest {});
        request.set_timeout(timeout);
        let answer = tokio::time::timeout(timeout, MaintenanceClient::new(channel).status(request)).await;
        let mut status = MemberStatus {
            endpoint: url.to_string(),
            member_id: None,
            leader: 0,
            revision: 0,
            raft_index: 0,
            raft_applied_index: 0,
            is_learner: false,
            db_size: 0,
            version: String::new(),
            errors: Vec::new(),
        };
        match answer {
            Ok(Ok(response)) => {
                let response = response.into_inner();
                let header = response.header.unwrap_or_default();
                status.member_id = Some(header.member_id);
                status.leader = response.leader;
                status.revision = to_revision(header.revision);
                status.raft_index = response.raft_index;
                status.raft_applied_index = response.raft_applied_index;
                status.is_learner = response.is_learner;
                status.db_size = response.db_size;
                status.version = response.version;
                status.errors = response.errors;
            }
            Ok(Err(err)) => status.errors.push(err.message().to_string()),
            Err(_) => status.errors.push(format!("no answer within {timeout:?}")),
        }
        status
    }

    /// The revisions replication lag is measured with, asked of every member at once: the
    /// leader's applied revision (every committed write, as soon as the leader applies it) and
    /// the revision applied by the member this process's serializable reads go to. Fails
    /// unless both answer: a member cut off from the leader must not count as up to date.
    pub async fn applied_revisions(&self) -> MetaResult<AppliedRevisions> {
        let (local, _, _) = self.pool.current(Route::Local);
        let statuses = self.member_status().await;
        let leader = statuses.iter().find(|s| s.member_id.is_some() && s.leader != 0).map(|s| s.leader);
        let newest = statuses.iter().find(|s| s.member_id.is_some() && s.member_id == leader).map(|s| s.revision);
        let local = statuses.get(local).filter(|s| s.member_id.is_some()).map(|s| s.revision);
        match (newest, local) {
            (Some(newest), Some(local)) => Ok(AppliedRevisions { newest, local }),
            _ => Err(MetaError::Unavailable(format!(
                "etcd status (the leader and the local member must answer): {}",
                statuses
                    .iter()
                    .map(|s| format!("{} (leader {:x}; {})", s.endpoint, s.leader, s.errors.join("; ")))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// Waits until every configured member has applied `revision`, so that reads from any of
    /// them — serializable reads in every region included — reflect it. On timeout, returns
    /// each member that had not (endpoint, applied revision or why it did not answer).
    pub async fn wait_applied(&self, revision: Revision, timeout: Duration) -> Result<(), Vec<String>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let lagging: Vec<String> = self
                .member_status()
                .await
                .into_iter()
                .filter(|m| m.member_id.is_none() || m.revision < revision)
                .map(|m| match m.member_id {
                    Some(_) => format!("{} (at revision {})", m.endpoint, m.revision),
                    None => format!("{} ({})", m.endpoint, m.errors.join("; ")),
                })
                .collect();
            if lagging.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(lagging);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    // ----- etcd calls ---------------------------------------------------------------------------

    /// One etcd `Range` on `route`.
    async fn etcd_range(&self, request: pb::RangeRequest, route: Route) -> Result<pb::RangeResponse, CallError> {
        let pool = &self.pool;
        let max = pool.max_response_bytes();
        pool.call("read", route, Retry::Always, |channel, budget| {
            let request = pool.request(request.clone(), budget);
            async move {
                KvClient::new(channel)
                    .max_decoding_message_size(max)
                    .range(request)
                    .await
                    .map(tonic::Response::into_inner)
            }
        })
        .await
    }

    /// One etcd `Txn` on a voting member.
    async fn etcd_txn(
        &self,
        what: &'static str,
        request: pb::TxnRequest,
        retry: Retry,
    ) -> Result<pb::TxnResponse, CallError> {
        let pool = &self.pool;
        let max = pool.max_response_bytes();
        let response = pool
            .call(what, Route::Voter, retry, |channel, budget| {
                let request = pool.request(request.clone(), budget);
                async move {
                    KvClient::new(channel)
                        .max_decoding_message_size(max)
                        .txn(request)
                        .await
                        .map(tonic::Response::into_inner)
                }
            })
            .await?;
        pool.observe(header_revision(response.header.as_ref()));
        Ok(response)
    }

    /// A range read in this store's read mode.
    async fn read(&self, mut request: pb::RangeRequest) -> Result<pb::RangeResponse, CallError> {
        if self.read_mode == ReadMode::Serializable {
            request.serializable = true;
            let floor = self.pool.observed().max(self.floor);
            let mut pause = Duration::from_millis(2);
            for _ in 0..FLOOR_TRIES {
                let response = self.etcd_range(request.clone(), Route::Local).await?;
                let revision = header_revision(response.header.as_ref());
                if to_revision(revision) >= floor {
                    self.pool.observe(revision);
                    return Ok(response);
                }
                // The member is behind what this process has seen: give it a moment.
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            tracing::debug!(floor, "local etcd member lags; reading through the leader");
            request.serializable = false;
        }
        let response = self.etcd_range(request, Route::Voter).await?;
        self.pool.observe(header_revision(response.header.as_ref()));
        Ok(response)
    }

    /// The current revision; linearizable when asked, whatever the store's read mode.
    async fn revision(&self, linearizable: bool) -> MetaResult<Revision> {
        let request = pb::RangeRequest { key: self.ns.probe_key(), limit: 1, keys_only: true, ..Default::default() };
        let response = if linearizable {
            let response = self.etcd_range(request, Route::Voter).await?;
            self.pool.observe(header_revision(response.header.as_ref()));
            response
        } else {
            self.read(request).await?
        };
        Ok(to_revision(header_revision(response.header.as_ref())))
    }

    fn convert_kv(&self, kv: proto::mvccpb::KeyValue) -> MetaResult<KeyValue> {
        Ok(KeyValue {
            key: self.ns.strip(kv.key)?,
            value: kv.value,
            create_revision: to_revision(kv.create_revision),
            mod_revision: to_revision(kv.mod_revision),
            version: to_revision(kv.version),
        })
    }

    fn range_op(&self, key: &[u8], revision: i64) -> pb::RequestOp {
        pb::RequestOp {
            request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest {
                key: self.ns.key(key),
                revision,
                ..Default::default()
            })),
        }
    }

    /// The single key a range response holds, if any.
    fn first_kv(&self, op: Option<pb::ResponseOp>) -> MetaResult<Option<KeyValue>> {
        match op.and_then(|op| op.response) {
            Some(pb::response_op::Response::ResponseRange(range)) => {
                range.kvs.into_iter().next().map(|kv| self.convert_kv(kv)).transpose()
            }
            _ => Err(MetaError::Storage("etcd answered a read with something other than a range".into())),
        }
    }

    /// `get_many` through transactions of ranges on a voting member: the first transaction
    /// fixes the revision, later ones (more than `max_txn_ops` keys) read at that revision.
    async fn get_many_linearizable(&self, keys: &[Bytes]) -> Result<(Vec<Option<KeyValue>>, Revision), CallError> {
        let mut out = Vec::with_capacity(keys.len());
        let mut at = 0;
        for chunk in keys.chunks(self.max_txn_ops) {
            let request = pb::TxnRequest {
                compare: Vec::new(),
                success: chunk.iter().map(|key| self.range_op(key, at)).collect(),
                failure: Vec::new(),
            };
            let response = self.etcd_txn("read", request, Retry::Always).await?;
            if at == 0 {
                at = header_revision(response.header.as_ref());
            }
            let mut responses = response.responses.into_iter();
            for _ in chunk {
                out.push(self.first_kv(responses.next()).map_err(CallError::Meta)?);
            }
        }
        Ok((out, to_revision(at)))
    }

    /// `get_many` with serializable reads: learners serve ranges but not transactions, so the
    /// first key's read fixes the revision and the others are read at that revision.
    async fn get_many_serializable(&self, keys: &[Bytes]) -> Result<(Vec<Option<KeyValue>>, Revision), CallError> {
        let Some((first, rest)) = keys.split_first() else {
            return Ok((Vec::new(), 0));
        };
        let single = |key: &[u8], revision: i64| pb::RangeRequest {
            key: self.ns.key(key),
            revision,
            serializable: true,
            ..Default::default()
        };
        let response = self.read(single(first, 0)).await?;
        let at = header_revision(response.header.as_ref());
        let mut out = Vec::with_capacity(keys.len());
        out.push(response.kvs.into_iter().next().map(|kv| self.convert_kv(kv)).transpose().map_err(CallError::Meta)?);
        let requests: Vec<_> = rest.iter().map(|key| self.etcd_range(single(key, at), Route::Local)).collect();
        let others: Vec<pb::RangeResponse> = futures::stream::iter(requests).buffered(16).try_collect().await?;
        for response in others {
            out.push(
                response.kvs.into_iter().next().map(|kv| self.convert_kv(kv)).transpose().map_err(CallError::Meta)?,
            );
        }
        Ok((out, to_revision(at)))
    }

    fn compare(&self, compare: &Compare) -> pb::Compare {
        use pb::compare::{CompareResult, CompareTarget as Target, TargetUnion};
        let (target, union) = match &compare.target {
            CompareTarget::ModRevision(rev) => (Target::Mod, TargetUnion::ModRevision(client::to_etcd_revision(*rev))),
            CompareTarget::CreateRevision(rev) => {
                (Target::Create, TargetUnion::CreateRevision(client::to_etcd_revision(*rev)))
            }
            CompareTarget::Version(version) => {
                (Target::Version, TargetUnion::Version(client::to_etcd_revision(*version)))
            }
            CompareTarget::Value(value) => (Target::Value, TargetUnion::Value(value.clone())),
        };
        let result = match compare.op {
            CompareOp::Equal => CompareResult::Equal,
            CompareOp::NotEqual => CompareResult::NotEqual,
            CompareOp::Less => CompareResult::Less,
            CompareOp::Greater => CompareResult::Greater,
        };
        pb::Compare {
            result: result as i32,
            target: target as i32,
            key: self.ns.key(&compare.key),
            range_end: Bytes::new(),
            target_union: Some(union),
        }
    }

    fn write_op(&self, op: &Op) -> pb::RequestOp {
        let request = match op {
            Op::Put { key, value } => pb::request_op::Request::RequestPut(pb::PutRequest {
                key: self.ns.key(key),
                value: value.clone(),
                ..Default::default()
            }),
            Op::Delete { key } => pb::request_op::Request::RequestDeleteRange(pb::DeleteRangeRequest {
                key: self.ns.key(key),
                ..Default::default()
            }),
        };
        pb::RequestOp { request: Some(request) }
    }
}

fn header_revision(header: Option<&pb::ResponseHeader>) -> i64 {
    header.map_or(0, |h| h.revision)
}

/// Same rule as etcd (and the embedded store): a key may be written at most once per
/// transaction.
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

#[async_trait::async_trait]
impl MetaStore for EtcdStore {
    async fn range(&self, req: RangeRequest) -> MetaResult<RangeResponse> {
        let Some(range) = self.ns.range(&req) else {
            return Ok(RangeResponse { kvs: Vec::new(), more: false, revision: self.current_revision().await? });
        };
        let request = pb::RangeRequest {
            key: range.key,
            range_end: range.range_end,
            limit: i64::try_from(req.limit).unwrap_or(i64::MAX),
            ..Default::default()
        };
        let response = self.read(request).await?;
        let revision = to_revision(header_revision(response.header.as_ref()));
        let kvs = response.kvs.into_iter().map(|kv| self.convert_kv(kv)).collect::<MetaResult<Vec<_>>>()?;
        Ok(RangeResponse { kvs, more: response.more, revision })
    }

    async fn get_many(&self, keys: &[Bytes]) -> MetaResult<(Vec<Option<KeyValue>>, Revision)> {
        if keys.is_empty() {
            return Ok((Vec::new(), self.current_revision().await?));
        }
        if self.read_mode == ReadMode::Serializable {
            match self.get_many_serializable(keys).await {
                Ok(result) => return Ok(result),
                // The member answering moved behind the revision, or compaction passed it:
                // read through the leader instead.
                Err(CallError::Status(status)) if is_future_revision(&status) || is_compacted(&status) => {}
                Err(err) => return Err(err.into()),
            }
        }
        // Several transactions read at the first one's revision; if compaction removed that
        // revision in between, start again.
        let mut attempts = 0;
        loop {
            match self.get_many_linearizable(keys).await {
                Err(CallError::Status(status)) if is_compacted(&status) && attempts < 3 => {
                    attempts += 1;
                }
                result => return result.map_err(MetaError::from),
            }
        }
    }

    async fn txn(&self, txn: Txn) -> MetaResult<TxnResponse> {
        validate(&txn)?;
        let request = pb::TxnRequest {
            compare: txn.compares.iter().map(|c| self.compare(c)).collect(),
            success: txn.ops.iter().map(|op| self.write_op(op)).collect(),
            failure: txn.read_on_failure.iter().map(|key| self.range_op(key, 0)).collect(),
        };
        // A transaction without writes changes nothing, so it may be retried like a read.
        let retry = if txn.ops.is_empty() { Retry::Always } else { Retry::IfNotApplied };
        let response = self.etcd_txn("transaction", request, retry).await?;
        let revision = to_revision(header_revision(response.header.as_ref()));
        if response.succeeded {
            return Ok(TxnResponse { succeeded: true, revision, failure_reads: Vec::new() });
        }
        let mut responses = response.responses.into_iter();
        let failure_reads =
            txn.read_on_failure.iter().map(|_| self.first_kv(responses.next())).collect::<MetaResult<Vec<_>>>()?;
        Ok(TxnResponse { succeeded: false, revision, failure_reads })
    }

    async fn current_revision(&self) -> MetaResult<Revision> {
        self.revision(self.read_mode == ReadMode::Linearizable).await
    }

    async fn watch(&self, range: RangeRequest, from: Revision) -> MetaResult<WatchStream> {
        watch::watch(self, &range, from).await
    }
}
