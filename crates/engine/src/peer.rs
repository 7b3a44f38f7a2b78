//! Reading bytes held by other nodes: through the local chunk cache, fetching from a holder
//! (live ones first, this region's first, then the others) over the node-to-node protocol, and
//! keeping one client per peer so connections are reused. A holder the cluster registry reports
//! down (no heartbeat for [`NODE_STALE_AFTER`]) is not asked: a read it alone could serve fails
//! at once with a 503 naming its region, instead of waiting for a connection that never answers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use meridian_blob::{BlobError, BlobId, BlobResult, ChunkCache, ChunkSource, PeerAccess, PeerClient, PeerFailure};

use meridian_meta::MetaStore;

use crate::cluster::{NODE_STALE_AFTER, NodeRecord, read_node};
use crate::error::{EngineError, EngineResult};
use crate::ingest::{Body, BodyError};
use crate::object::{ReadSource, RemoteReader, Span};
use crate::record::Holder;

/// The [`RemoteReader`] of a cluster node. Built before the engine it serves, from what it
/// needs: the metadata store (to find peers in the cluster registry) and this node's region.
pub struct PeerReader {
    meta: Arc<dyn MetaStore>,
    region: String,
    cache: ChunkCache,
    access: PeerAccess,
    peers: Mutex<HashMap<String, Peer>>,
    metrics: meridian_metrics::CacheMetrics,
}

/// How long a node's registry record is reused to judge whether the node is alive. The age of
/// its heartbeat is judged on the current time, so a node that died is known down as soon as
/// its heartbeat is stale; one that came back is used again at most this long after its first
/// heartbeat.
pub const LIVENESS_REFRESH: Duration = Duration::from_secs(1);

/// A peer as last read from the cluster registry.
struct Peer {
    client: Arc<PeerClient>,
    record: NodeRecord,
    read_at: Instant,
}

impl Peer {
    /// How long the node has been silent, when that is long enough for it to be down.
    fn down_for_ms(&self) -> Option<i64> {
        let silent_ms = crate::now_ms() - self.record.heartbeat_ms;
        (silent_ms > NODE_STALE_AFTER.as_millis() as i64).then_some(silent_ms)
    }
}

/// The chunk source of a holder known down: every fetch fails at once, so only cached chunks
/// are served.
struct DownNode {
    node: String,
    silent_ms: i64,
}

#[async_trait::async_trait]
impl ChunkSource for DownNode {
    async fn fetch(&self, _: BlobId, _: u64, _: u64) -> BlobResult<BoxStream<'static, BlobResult<Bytes>>> {
        Err(BlobError::Peer { peer: self.node.clone(), failure: PeerFailure::Down { silent_ms: self.silent_ms } })
    }

    fn name(&self) -> String {
        format!("node {} (down)", self.node)
    }
}

/// The error of a read whose bytes are only on a node known down.
fn holder_down(holder: &Holder, silent_ms: i64) -> EngineError {
    EngineError::Unavailable(format!(
        "the object's bytes are in region {} on node {}, which is down (no heartbeat for {:.1} s); retry when the region is back",
        holder.region,
        holder.node,
        silent_ms as f64 / 1000.0
    ))
}

impl PeerReader {
    pub fn new(meta: Arc<dyn MetaStore>, region: String, cache: ChunkCache, access: PeerAccess) -> Self {
        PeerReader {
            meta,
            region,
            cache,
            access,
            peers: Mutex::new(HashMap::new()),
            metrics: meridian_metrics::CacheMetrics::default(),
        }
    }

    /// Counts reads by the region that holds the bytes, hit or miss, in `metrics`.
    pub fn metrics(mut self, metrics: meridian_metrics::CacheMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    pub fn cache(&self) -> &ChunkCache {
        &self.cache
    }

    /// The client for a node and how long it has been down (`None`: alive), from its registry
    /// record read at most [`LIVENESS_REFRESH`] ago. When the registry cannot be read, the last
    /// record read stands.
    async fn peer(&self, node: &str) -> EngineResult<(Arc<PeerClient>, Option<i64>)> {
        let known = |fresh_only: bool| {
            let peers = self.peers.lock().ok()?;
            let peer = peers.get(node).filter(|p| !fresh_only || p.read_at.elapsed() < LIVENESS_REFRESH)?;
            Some((Arc::clone(&peer.client), peer.down_for_ms()))
        };
        if let Some(found) = known(true) {
            return Ok(found);
        }
        let record = match read_node(self.meta.as_ref(), node).await {
            Ok(record) => record,
            Err(e) => return known(false).ok_or(e),
        };
        let client = match known(false) {
            Some((client, _)) if client.base_url() == record.advertise_url.trim_end_matches('/') => client,
            _ => Arc::new(self.access.client(&record.advertise_url)?),
        };
        let peer = Peer { client: Arc::clone(&client), record, read_at: Instant::now() };
        let down = peer.down_for_ms();
        if let Ok(mut peers) = self.peers.lock() {
            peers.insert(node.to_string(), peer);
        }
        Ok((client, down))
    }

    /// The client of a node, known down or not (clock measurements pick live nodes themselves).
    async fn client(&self, node: &str) -> EngineResult<Arc<PeerClient>> {
        Ok(self.peer(node).await?.0)
    }

    /// Holders in the order to try them: live ones before those known down, this region's
    /// first; each with its chunk source.
    async fn candidates<'a>(&self, holders: &'a [Holder]) -> Vec<(&'a Holder, EngineResult<Arc<dyn ChunkSource>>)> {
        let here = &self.region;
        let mut ordered: Vec<&Holder> = holders.iter().filter(|h| &h.region == here).collect();
        ordered.extend(holders.iter().filter(|h| &h.region != here));
        let mut candidates = Vec::with_capacity(ordered.len());
        for holder in ordered {
            let (source, down) = match self.peer(&holder.node).await {
                Ok((client, None)) => (Ok(client as Arc<dyn ChunkSource>), false),
                Ok((_, Some(silent_ms))) => {
                    let down: Arc<dyn ChunkSource> = Arc::new(DownNode { node: holder.node.clone(), silent_ms });
                    (Ok(down), true)
                }
                Err(e) => (Err(e), false),
            };
            candidates.push((down, holder, source));
        }
        candidates.sort_by_key(|(down, _, _)| *down);
        candidates.into_iter().map(|(_, holder, source)| (holder, source)).collect()
    }
}

#[async_trait::async_trait]
impl RemoteReader for PeerReader {
    async fn read(&self, span: &Span, from: u64, len: u64) -> EngineResult<(Body, ReadSource)> {
        let mut last_error = None;
        for (holder, source) in self.candidates(&span.holders).await {
            let source = match source {
                Ok(found) => found,
                Err(e) => {
                    last_error = Some(e);
                    continue;
                }
            };
            match self.cache.read(span.blob, span.blob_len, &span.digests, from, len, source).await {
                Ok(stream) => {
                    let hit = stream.cache_hit();
                    self.metrics.read(&holder.region, hit, len);
                    let region = if hit { self.region.clone() } else { holder.region.clone() };
                    let body: Body = Box::pin(stream.map_err(|e| Box::new(e) as BodyError));
                    return Ok((body, ReadSource { region, cache_hit: hit }));
                }
                Err(BlobError::Peer { failure: PeerFailure::Down { silent_ms }, .. }) => {
                    last_error = Some(holder_down(holder, silent_ms));
                }
                // The holder is unreachable or lost the blob: try the next one.
                Err(e) => {
                    tracing::warn!(node = %holder.node, region = %holder.region, error = %e, "could not read from a holder");
                    last_error = Some(e.into());
                }
            }
        }
        Err(last_error.unwrap_or_else(|| EngineError::Unavailable("the object has no holder to read from".into())))
    }

    async fn forget_blob(&self, blob: BlobId) -> EngineResult<usize> {
        Ok(self.cache.remove_blob(blob).await?)
    }

    fn cached_blobs(&self) -> Vec<BlobId> {
        self.cache.blobs()
    }

    async fn clock_sample(&self, node: &str) -> EngineResult<meridian_blob::ClockSample> {
        Ok(self.client(node).await?.clock_sample().await?)
    }

    async fn send_copy(
        &self,
        node: &str,
        blob: BlobId,
        body: Body,
        streams: meridian_blob::CopyStreams,
    ) -> EngineResult<meridian_blob::StoredCopy> {
        let body = body.map_err(|e| BlobError::Task(e.to_string())).boxed();
        Ok(self.client(node).await?.put_blob(blob, crate::CHUNK_SIZE, body, streams).await?)
    }

    async fn delete_copy(&self, node: &str, blob: BlobId) -> EngineResult<()> {
        Ok(self.client(node).await?.delete_blob(blob).await?)
    }
}
