//! Synchronous copies of a multi-region bucket's bytes (`multi:R1,R2[;quorum=N]`).
//!
//! A write names its blob before reading the body, opens one copy stream per other listed region
//! (to a live node of it, through the node-to-node endpoint) and hands every chunk to all of
//! them while it ingests the chunk locally, so the bytes travel to every region at once. The
//! write is acknowledged only when the copies of at least the bucket's write quorum of regions
//! (this one included) are durable and match what was ingested; otherwise nothing is committed,
//! the copies made are deleted and the client gets `RegionUnavailable` naming the regions.
//!
//! Every wait is bounded: a listed region with no live node fails the write before its body is
//! read (unless the quorum is met without it); a copy that accepts no bytes for [`COPY_STALL`]
//! is dropped; after the body ended, copies have [`COPY_ACK`] to become durable. How long
//! writes wait for that is the `multi_region_copy_wait` histogram; how long they took to take
//! the body in before it, the `ingest` histogram.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use meridian_blob::{BlobId, CopyStreams, StoredCopy};
use tokio::sync::mpsc;

use crate::error::{EngineError, EngineResult};
use crate::ingest::{Body, BodyError, IngestLimits, Ingested, IngestedData, Integrity, Tee, ingest, ingest_teed};
use crate::record::{Holder, Location};
use crate::{Consistency, Engine};

/// How long a region's copy may accept no bytes before the write gives up on it.
pub const COPY_STALL: Duration = Duration::from_secs(5);
/// How long copies have, after the last byte was sent, to be durable in their region.
pub const COPY_ACK: Duration = Duration::from_secs(10);
/// Chunks of the body buffered per copy ahead of the slowest region.
const COPY_BUFFER: usize = 64;
/// The measured round trip from which a copy goes over several streams. Below it one stream
/// is as fast and costs less CPU: in `cargo bench -p meridian-blob --bench copy`, a 64 MiB copy
/// took 101 ms on one stream and 113 ms on four at 10 ms, 355 against 135 ms at 40 ms
/// (decision 069).
const STRIPE_FROM_RTT_MS: i64 = 12;

/// One other region's copy of the blob being written.
struct Copy {
    holder: Holder,
    /// The copy's body (see [`meridian_blob::channel_body`]): chunks, then `None` for the end.
    sender: Option<mpsc::Sender<Option<Bytes>>>,
    task: tokio::task::JoinHandle<EngineResult<StoredCopy>>,
    /// Why this copy failed, once known.
    failure: Option<String>,
}

/// The copies of one write, fed by the body as it is read.
struct Copies {
    bucket: String,
    regions: Vec<String>,
    quorum: usize,
    copies: Vec<Copy>,
    /// Regions that had no live node to copy to.
    missing: Vec<(String, String)>,
}

impl Copies {
    /// Regions that may still hold the bytes: this one and every copy not yet failed.
    fn possible(&self) -> usize {
        1 + self.copies.iter().filter(|c| c.failure.is_none()).count()
    }

    /// The error of a write that cannot reach its quorum, naming each failed region.
    fn unavailable(&self) -> EngineError {
        let failed = self.copies.iter().filter_map(|c| Some((c.holder.region.clone(), c.failure.clone()?)));
        let reasons: Vec<String> =
            self.missing.iter().cloned().chain(failed).map(|(region, why)| format!("region {region} {why}")).collect();
        EngineError::RegionUnavailable {
            bucket: self.bucket.clone(),
            regions: self.regions.join(","),
            needed: self.quorum,
            reasons: reasons.join("; "),
        }
    }
}

#[async_trait::async_trait]
impl Tee for Copies {
    /// Hands one chunk to every live copy (all at once); a copy that takes none for
    /// [`COPY_STALL`] is dropped. Fails when the quorum can no longer be met.
    async fn send(&mut self, chunk: &Bytes) -> Result<(), BodyError> {
        let sends = self.copies.iter_mut().filter(|c| c.failure.is_none()).map(|copy| async move {
            let Some(sender) = &copy.sender else { return };
            match tokio::time::timeout(COPY_STALL, sender.send(Some(chunk.clone()))).await {
                Ok(Ok(())) => {}
                // The copy's request ended early: its task has its reason.
                Ok(Err(_)) => {
                    copy.failure = Some(match (&mut copy.task).await {
                        Ok(Err(e)) => format!("could not store the copy: {e}"),
                        _ => "stopped receiving the bytes".into(),
                    })
                }
                Err(_) => copy.failure = Some(format!("accepted no bytes for {} s", COPY_STALL.as_secs())),
            }
            if copy.failure.is_some() {
                copy.sender = None;
            }
        });
        futures::future::join_all(sends).await;
        if self.possible() < self.quorum {
            return Err(Box::new(self.unavailable()) as BodyError);
        }
        Ok(())
    }
}

impl Copies {
    /// Ends every live copy and waits (at most [`COPY_ACK`]) for each to be durable; keeps the
    /// holders of those that match `ingested`.
    async fn finish(&mut self, ingested: &Ingested) -> Vec<Holder> {
        let digest = meridian_blob::digest_of_digests(&ingested.digests);
        let deadline = tokio::time::Instant::now() + COPY_ACK;
        let waits = self.copies.iter_mut().map(|copy| async move {
            if copy.failure.is_some() {
                return None; // its task has already been awaited
            }
            if let Some(sender) = copy.sender.take() {
                let _ = tokio::time::timeout_at(deadline, sender.send(None)).await;
            }
            let result = match tokio::time::timeout_at(deadline, &mut copy.task).await {
                Err(_) => Err(format!("did not confirm the copy within {} s", COPY_ACK.as_secs())),
                Ok(Err(joined)) => Err(format!("copy task failed: {joined}")),
                Ok(Ok(Err(e))) => Err(format!("could not store the copy: {e}")),
                Ok(Ok(Ok(stored))) if stored.size != ingested.stored_size || stored.digest != digest => Err(format!(
                    "stored {} bytes with digest {:08x} where {} bytes with {digest:08x} were sent",
                    stored.size, stored.digest, ingested.stored_size
                )),
                Ok(Ok(Ok(_))) => Ok(()),
            };
            match result {
                Ok(()) => Some(copy.holder.clone()),
                Err(why) => {
                    copy.failure = Some(why);
                    None
                }
            }
        });
        futures::future::join_all(waits).await.into_iter().flatten().collect()
    }
}

impl Engine {
    /// Takes in a body for `bucket`, whose record has `location`: as [`ingest`] does, and for
    /// a multi-region bucket also into a copy in each other listed region at the same time.
    /// Returns what was ingested and the nodes that hold it durably (this one first).
    pub(crate) async fn ingest_placed(
        &self,
        bucket: &str,
        location: &Location,
        body: Body,
        integrity: Integrity,
        mut limits: IngestLimits,
    ) -> EngineResult<(Ingested, Vec<Holder>)> {
        let Location::MultiRegion { regions, .. } = location else {
            let started = std::time::Instant::now();
            let ingested = ingest(self.blobs(), body, integrity, limits).await?;
            self.metrics().observe_ingest(false, started.elapsed());
            return Ok((ingested, self.here()));
        };
        let blob = BlobId::random();
        let copies = self.open_copies(bucket, regions, location.write_quorum(), blob).await?;
        if copies.possible() < copies.quorum {
            return Err(copies.unavailable());
        }
        // Every byte goes to a blob, so it is in the listed regions' blob stores, not inline in
        // the metadata store.
        limits.inline_max = 0;
        limits.blob_id = Some(blob);
        let mut copies = copies;
        let started = std::time::Instant::now();
        let ingested = ingest_teed(self.blobs(), body, integrity, limits, Some(&mut copies)).await;
        let ingested = match ingested {
            Ok(ingested) => ingested,
            Err(e) => {
                let failed = copies.copies.iter().filter(|c| c.failure.is_some()).count();
                self.metrics().multi_region_copy_failures.inc_by(failed as u64);
                // Dropping the senders without an end abandons the copies.
                copies.copies.iter_mut().for_each(|c| c.sender = None);
                return Err(match e {
                    EngineError::Body(inner) => match inner.downcast::<EngineError>() {
                        Ok(unavailable) => *unavailable,
                        Err(other) => EngineError::Body(other),
                    },
                    other => other,
                });
            }
        };
        self.metrics().observe_ingest(true, started.elapsed());
        let mut holders = self.here();
        if matches!(ingested.data, IngestedData::Inline(_)) {
            // An empty body: no blob; dropping the senders without an end abandons the copies.
            copies.copies.iter_mut().for_each(|c| c.sender = None);
            return Ok((ingested, holders));
        }
        let body_ended = std::time::Instant::now();
        holders.extend(copies.finish(&ingested).await);
        self.metrics().multi_region_copy_wait.observe(body_ended.elapsed().as_secs_f64());
        for failed in copies.copies.iter().filter(|c| c.failure.is_some()) {
            self.metrics().multi_region_copy_failures.inc();
            tracing::warn!(bucket, region = %failed.holder.region, node = %failed.holder.node,
                reason = failed.failure.as_deref().unwrap_or(""), "a multi-region copy failed");
            self.forget_copies(std::slice::from_ref(&failed.holder), blob);
        }
        if holders.len() < copies.quorum {
            self.forget_copies(&holders[1..], blob);
            if let IngestedData::Blob(id) = ingested.data {
                self.delete_blobs_now(vec![id]);
            }
            return Err(copies.unavailable());
        }
        Ok((ingested, holders))
    }

    /// How a copy to `node` travels: on one stream when the node is known to be near (the
    /// shortest round trip the clock samples measured), striped otherwise.
    fn copy_streams(&self, node: &str) -> CopyStreams {
        match self.round_trip(node) {
            Some(ms) if ms < STRIPE_FROM_RTT_MS => CopyStreams::One,
            _ => CopyStreams::Striped,
        }
    }

    /// Starts a copy of `blob` in every listed region but this one, to a live node of it.
    async fn open_copies(&self, bucket: &str, regions: &[String], quorum: usize, blob: BlobId) -> EngineResult<Copies> {
        let remote = self.remote().cloned().ok_or_else(|| {
            EngineError::Unavailable(format!("bucket {bucket:?} is multi-region and this node has no peer access"))
        })?;
        let nodes = self.nodes_at(Consistency::Local).await?;
        let here = &self.config().node.region;
        let mut copies =
            Copies { bucket: bucket.into(), regions: regions.to_vec(), quorum, copies: vec![], missing: vec![] };
        for region in regions.iter().filter(|r| *r != here) {
            let in_region = nodes.iter().filter(|n| &n.record.region == region);
            let Some(node) = in_region.clone().find(|n| n.healthy) else {
                let why = match in_region.map(|n| n.heartbeat_age_ms).min() {
                    Some(age) => format!("is down (no heartbeat for {:.1} s)", age as f64 / 1000.0),
                    None => "has no node".into(),
                };
                copies.missing.push((region.clone(), why));
                continue;
            };
            // The copy goes through that node's peer endpoint, so readers find it through the node
            // (not through a shared store it may use).
            let holder = Holder { node: node.record.id.clone(), region: region.clone(), store: None };
            let (sender, receiver) = mpsc::channel(COPY_BUFFER);
            let (remote, node_id) = (Arc::clone(&remote), holder.node.clone());
            let streams = self.copy_streams(&node_id);
            let task =
                tokio::spawn(async move { remote.send_copy(&node_id, blob, copy_body(receiver), streams).await });
            copies.copies.push(Copy { holder, sender: Some(sender), task, failure: None });
        }
        Ok(copies)
    }

    /// Deletes the bytes of a record that was never committed: its blobs here at once, its
    /// copies on other nodes in the background.
    pub(crate) fn discard_data(&self, data: &crate::record::DataLayout) {
        self.delete_blobs_now(data.blobs());
        if let crate::record::DataLayout::Blob { id, holders, .. } = data {
            self.forget_copies(holders, *id);
        }
    }

    /// Deletes the copies of `blob` on `holders` (other nodes), in the background.
    pub(crate) fn forget_copies(&self, holders: &[Holder], blob: BlobId) {
        let Some(remote) = self.remote().cloned() else { return };
        let here = self.config().node.node.clone();
        for holder in holders.iter().filter(|h| h.node != here).cloned() {
            let remote = Arc::clone(&remote);
            tokio::spawn(async move {
                if let Err(e) = remote.delete_copy(&holder.node, blob).await {
                    tracing::debug!(%blob, node = %holder.node, error = %e, "could not delete a copy; its orphan scan will");
                }
            });
        }
    }
}

/// The body of one copy: the chunks sent to it, failing if the sender is dropped before the end.
fn copy_body(receiver: mpsc::Receiver<Option<Bytes>>) -> Body {
    Box::pin(meridian_blob::channel_body(receiver).map_err(|e| Box::new(e) as crate::ingest::BodyError))
}
