//! Reading bytes held by other nodes: through the local chunk cache, fetching from a holder
//! (this region's first, then the others) over the node-to-node protocol, and keeping one
//! client per peer so connections are reused.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::TryStreamExt;
use meridian_blob::{BlobId, ChunkCache, ChunkSource, PeerAccess, PeerClient};

use meridian_meta::MetaStore;

use crate::cluster::read_node;
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
    clients: Mutex<HashMap<String, Arc<PeerClient>>>,
    metrics: meridian_metrics::CacheMetrics,
}

impl PeerReader {
    pub fn new(meta: Arc<dyn MetaStore>, region: String, cache: ChunkCache, access: PeerAccess) -> Self {
        PeerReader {
            meta,
            region,
            cache,
            access,
            clients: Mutex::new(HashMap::new()),
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

    /// The client for a node, looked up in the cluster registry the first time.
    async fn client(&self, node: &str) -> EngineResult<Arc<PeerClient>> {
        if let Some(client) = self.clients.lock().ok().and_then(|c| c.get(node).cloned()) {
            return Ok(client);
        }
        let record = read_node(self.meta.as_ref(), node).await?;
        let client = Arc::new(self.access.client(&record.advertise_url)?);
        if let Ok(mut clients) = self.clients.lock() {
            clients.insert(node.to_string(), Arc::clone(&client));
        }
        Ok(client)
    }

    /// Holders in the order to try them: this region first.
    fn ordered<'a>(&self, holders: &'a [Holder]) -> Vec<&'a Holder> {
        let here = &self.region;
        let mut ordered: Vec<&Holder> = holders.iter().filter(|h| &h.region == here).collect();
        ordered.extend(holders.iter().filter(|h| &h.region != here));
        ordered
    }
}

#[async_trait::async_trait]
impl RemoteReader for PeerReader {
    async fn read(&self, span: &Span, from: u64, len: u64) -> EngineResult<(Body, ReadSource)> {
        let mut last_error = None;
        for holder in self.ordered(&span.holders) {
            let client = match self.client(&holder.node).await {
                Ok(c) => c,
                Err(e) => {
                    last_error = Some(e);
                    continue;
                }
            };
            let source: Arc<dyn ChunkSource> = client;
            match self.cache.read(span.blob, span.blob_len, &span.digests, from, len, source).await {
                Ok(stream) => {
                    let hit = stream.cache_hit();
                    self.metrics.read(&holder.region, hit, len);
                    let region = if hit { self.region.clone() } else { holder.region.clone() };
                    let body: Body = Box::pin(stream.map_err(|e| Box::new(e) as BodyError));
                    return Ok((body, ReadSource { region, cache_hit: hit }));
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
}
