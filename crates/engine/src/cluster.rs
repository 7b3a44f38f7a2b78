//! Nodes of a cluster find each other through the metadata store: each node keeps a record
//! under `n/<node id>` fresh with a heartbeat (its region, the URL peers reach it at, the
//! metadata revision it has seen, its measured replication lag, its cache use). A node whose
//! heartbeat is older than [`NODE_STALE_AFTER`] is reported down.

use std::time::Duration;

use meridian_meta::{Compare, MetaStore, Op, RangeRequest, Txn};
use serde::{Deserialize, Serialize};

use crate::error::{EngineError, EngineResult};
use crate::keys::{self, NODES_PREFIX};
use crate::record;
use crate::{Engine, now_ms};

/// How often a node refreshes its record.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);
/// A node silent for longer than this is considered down.
pub const NODE_STALE_AFTER: Duration = Duration::from_secs(10);

/// One node's record, straight from the store (the peer reader needs it before its engine
/// exists).
pub(crate) async fn read_node(meta: &dyn MetaStore, id: &str) -> EngineResult<NodeRecord> {
    let kv = meta
        .get(&keys::node(id))
        .await?
        .ok_or_else(|| EngineError::Unavailable(format!("node {id:?} is not registered in the cluster")))?;
    record::decode(&kv.value)
}

/// What a node publishes about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: String,
    pub region: String,
    /// Base URL other nodes use for peer traffic (blob fetches, forwarded writes).
    pub advertise_url: String,
    /// Base URL other regions' edges reach this node's web edge at (replays); none without
    /// an edge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web_url: Option<String>,
    pub started_ms: i64,
    pub heartbeat_ms: i64,
    /// The newest metadata revision this node had seen at its last heartbeat.
    pub revision: u64,
    #[serde(default)]
    pub cache: CacheUse,
    pub version: String,
    /// This node's measured replication lag at its last heartbeat, in milliseconds
    /// ([`Engine::view_lag`]); absent before the first measurement and on a single node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_ms: Option<u64>,
    /// What this node adds to its wall clock to follow the cluster's median clock, in
    /// milliseconds ([`crate::clock`]); absent before the first measurement and on a single node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_offset_ms: Option<i64>,
}

/// Cache figures published with the heartbeat.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheUse {
    pub bytes: u64,
    pub max_bytes: u64,
    pub hits: u64,
    pub misses: u64,
}

/// A node as seen from here.
#[derive(Clone, Debug, Serialize)]
pub struct NodeStatus {
    #[serde(flatten)]
    pub record: NodeRecord,
    pub healthy: bool,
    /// Milliseconds since the last heartbeat.
    pub heartbeat_age_ms: i64,
}

impl Engine {
    /// Publishes this node's record now.
    pub async fn publish_node(&self, record: &NodeRecord) -> EngineResult<()> {
        let txn = Txn::new().then(Op::put(keys::node(&record.id), record::encode(record)));
        self.meta().txn(txn).await?;
        self.note_commit();
        Ok(())
    }

    /// Publishes this node's record now, then keeps it fresh until the process ends.
    /// `describe` is called before each heartbeat for the current figures.
    pub async fn start_heartbeat(&self, describe: impl Fn() -> NodeRecord + Send + Sync + 'static) {
        self.heartbeat(&describe).await;
        let engine = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(HEARTBEAT_INTERVAL).await;
                engine.heartbeat(&describe).await;
            }
        });
    }

    async fn heartbeat(&self, describe: &impl Fn() -> NodeRecord) {
        let mut record = describe();
        record.heartbeat_ms = now_ms();
        record.revision = self.current_revision().await.unwrap_or(0);
        record.lag_ms = self.view_lag().map(|lag| u64::try_from(lag.as_millis()).unwrap_or(u64::MAX));
        record.clock_offset_ms = crate::clock::measured_offset_ms();
        if let Err(err) = self.publish_node(&record).await {
            tracing::warn!(error = %err, "could not publish this node's heartbeat");
        }
    }

    /// Every node that ever registered, with its health.
    pub async fn nodes(&self) -> EngineResult<Vec<NodeStatus>> {
        self.nodes_at(crate::Consistency::Strong).await
    }

    /// Like [`Engine::nodes`], read at `consistency` (the local view saves a WAN round trip
    /// where a heartbeat or two behind does not matter).
    pub(crate) async fn nodes_at(&self, consistency: crate::Consistency) -> EngineResult<Vec<NodeStatus>> {
        let resp = self.reader(consistency).range(RangeRequest::prefix(NODES_PREFIX)).await?;
        let records: Vec<NodeRecord> =
            resp.kvs.iter().map(|kv| record::decode(&kv.value)).collect::<EngineResult<_>>()?;
        let now = now_ms();
        Ok(records
            .into_iter()
            .map(|record| {
                let age = now - record.heartbeat_ms;
                NodeStatus { healthy: age <= NODE_STALE_AFTER.as_millis() as i64, heartbeat_age_ms: age, record }
            })
            .collect())
    }

    /// One node's record.
    pub async fn node(&self, id: &str) -> EngineResult<NodeRecord> {
        read_node(self.meta().as_ref(), id).await
    }

    /// Removes the record of a node that left for good, so it is no longer listed (or reported
    /// down). A node that still heartbeats is refused unless `force`: a running node writes its
    /// record again at its next heartbeat anyway. Returns the record removed.
    pub async fn forget_node(&self, id: &str, force: bool) -> EngineResult<NodeRecord> {
        let key = keys::node(id);
        let kv = self.meta().get(&key).await?.ok_or_else(|| EngineError::NoSuchNode(id.to_string()))?;
        let record: NodeRecord = record::decode(&kv.value)?;
        let age_ms = now_ms() - record.heartbeat_ms;
        if !force && age_ms <= NODE_STALE_AFTER.as_millis() as i64 {
            return Err(EngineError::NodeIsLive { id: id.to_string(), heartbeat_age_ms: age_ms });
        }
        // Unless forced, only the record judged stale: a heartbeat in between means it is back.
        let txn =
            if force { Txn::new() } else { Txn::new().when(Compare::mod_revision_is(key.clone(), kv.mod_revision)) };
        // The node's change cursor goes with it: a node that comes back under this id starts
        // from the current revision.
        let txn = txn.then(Op::delete(key)).then(Op::delete(keys::change_cursor(id)));
        if !self.meta().txn(txn).await?.succeeded {
            return Err(EngineError::NodeIsLive { id: id.to_string(), heartbeat_age_ms: 0 });
        }
        self.note_commit();
        Ok(record)
    }
}
