//! Background copies for regions of a multi-region bucket that missed a write acknowledged on
//! the bucket's quorum.
//!
//! Such a write commits, with the object's record, a `y/<bucket>/<key>` marker naming the blob
//! and the regions without a copy. Every node looks at the markers every [`REPAIR_INTERVAL`];
//! one that names its region pulls the blob from a holder (through its chunk cache), stores it
//! under the same id, checks it against the record's chunk digests and commits itself as a
//! holder, comparing the record's revision (an object overwritten meanwhile drops the marker
//! instead). A region still down is retried at the next round.

use std::time::Duration;

use meridian_meta::{Compare, Op, RangeRequest, Txn};
use serde::{Deserialize, Serialize};

use crate::error::{EngineError, EngineResult};
use crate::ingest::{IngestLimits, IngestedData, Integrity, ingest};
use crate::object::Current;
use crate::record::{self, DataLayout, Location};
use crate::{Consistency, Engine, keys};

/// How often a node looks for copies its region still owes.
pub const REPAIR_INTERVAL: Duration = Duration::from_secs(2);
/// Markers read per round.
const REPAIR_PAGE: usize = 64;

/// The value of a `y/` marker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repair {
    pub blob: meridian_blob::BlobId,
    /// Regions that still need a copy.
    pub regions: Vec<String>,
}

impl Engine {
    /// The marker to commit with a multi-region object whose copies miss some listed regions.
    pub(crate) fn repair_op(&self, bucket: &str, key: &str, location: &Location, data: &DataLayout) -> Option<Op> {
        let (Location::MultiRegion { regions, .. }, DataLayout::Blob { id, holders, .. }) = (location, data) else {
            return None;
        };
        let missing: Vec<String> =
            regions.iter().filter(|r| !holders.iter().any(|h| &h.region == *r)).cloned().collect();
        let marker = Repair { blob: *id, regions: missing };
        (!marker.regions.is_empty()).then(|| Op::put(keys::repair(bucket, key), record::encode(&marker)))
    }

    pub(crate) fn spawn_repairs(&self) {
        let engine = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(REPAIR_INTERVAL).await;
                if let Err(e) = engine.repair_round().await {
                    tracing::debug!(error = %e, "multi-region repair round failed; retried");
                }
            }
        });
    }

    /// Makes this region's copy of every object whose marker names it (every marker is read,
    /// a page at a time).
    async fn repair_round(&self) -> EngineResult<()> {
        let here = self.config().node.region.clone();
        let mut request = RangeRequest::prefix(keys::REPAIRS_PREFIX).limit(REPAIR_PAGE);
        loop {
            let page = self.reader(Consistency::Local).range(request.clone()).await?;
            for kv in &page.kvs {
                let Some((bucket, key)) = keys::parse_repair_key(&kv.key) else { continue };
                let marker: Repair = record::decode(&kv.value)?;
                if marker.regions.contains(&here)
                    && let Err(e) = self.repair_one(bucket, key, &marker, kv.mod_revision).await
                {
                    tracing::warn!(bucket, key, error = %e, "could not make this region's copy; retried");
                }
            }
            match page.kvs.last() {
                Some(last) if page.more => request = request.after(last.key.clone()),
                _ => return Ok(()),
            }
        }
    }

    async fn repair_one(&self, bucket: &str, key: &str, marker: &Repair, marker_revision: u64) -> EngineResult<()> {
        let here = self.config().node.clone();
        let current = self.read_current(bucket, key).await?;
        let marker_key = keys::repair(bucket, key);
        let still =
            current.as_ref().filter(|c| matches!(&c.record.data, DataLayout::Blob { id, .. } if *id == marker.blob));
        let Some(current) = still else {
            // Overwritten or deleted since: nothing left to copy.
            let txn = Txn::new().when(Compare::mod_revision_is(marker_key.clone(), marker_revision));
            self.meta().txn(txn.then(Op::delete(marker_key))).await?;
            return Ok(());
        };
        let DataLayout::Blob { digests, holders, .. } = &current.record.data else { return Ok(()) };
        if !holders.iter().any(|h| h.node == here.node) {
            self.pull_copy(current, digests).await?;
        }
        let mut record = current.record.clone();
        if let DataLayout::Blob { holders, .. } = &mut record.data
            && !holders.iter().any(|h| h.node == here.node)
        {
            holders.extend(self.here());
        }
        let rest = Repair {
            blob: marker.blob,
            regions: marker.regions.iter().filter(|r| **r != here.region).cloned().collect(),
        };
        let object_key = keys::object(bucket, key);
        let mut txn = Txn::new()
            .when(Compare::mod_revision_is(object_key.clone(), current.revision))
            .when(Compare::mod_revision_is(marker_key.clone(), marker_revision))
            .then(Op::put(object_key, record::encode(&record)));
        txn = match rest.regions.is_empty() {
            true => txn.then(Op::delete(marker_key)),
            false => txn.then(Op::put(marker_key, record::encode(&rest))),
        };
        if !self.meta().txn(txn).await?.succeeded {
            // Changed meanwhile: the next round looks again (an orphaned copy goes with the
            // change follower's deletion of the freed blob, or the orphan scan).
            return Ok(());
        }
        tracing::info!(bucket, key, blob = %marker.blob, "made this region's copy of a multi-region object");
        Ok(())
    }

    /// Reads the object's blob from a holder and stores it here under the same id, checked
    /// against the record's chunk digests.
    async fn pull_copy(&self, current: &Current, digests: &[u32]) -> EngineResult<()> {
        let DataLayout::Blob { id, .. } = &current.record.data else { return Ok(()) };
        let (body, _) = self.open_body(current, None, crate::object::Reading::Stored).await?;
        let limits = IngestLimits { blob_id: Some(*id), ..IngestLimits::to_blob(None) };
        let copied = match ingest(self.blobs(), body, Integrity::default(), limits).await {
            Err(EngineError::Blob(meridian_blob::BlobError::Exists(_))) => return Ok(()), // pulled before
            other => other?,
        };
        if copied.digests != digests {
            if let IngestedData::Blob(blob) = copied.data {
                self.delete_blobs_now(vec![blob]);
            }
            return Err(EngineError::Corrupt(format!("the copy of blob {id} does not match its recorded digests")));
        }
        Ok(())
    }
}
