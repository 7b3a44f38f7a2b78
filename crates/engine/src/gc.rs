//! Removing blob files nothing refers to any more.

use std::time::{Duration, SystemTime};

use meridian_blob::{BlobId, BlobStore};
use meridian_metrics::Counter;

use crate::error::EngineResult;
use crate::{Engine, keys};

/// Deletes `blobs` after `delay`, in the background. If the process dies first, the orphan scan
/// at the next start removes them.
pub(crate) fn delete_later(store: BlobStore, blobs: Vec<BlobId>, delay: Duration, deleted: Counter) {
    if blobs.is_empty() {
        return;
    }
    tokio::spawn(async move {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        for blob in blobs {
            // Freed blobs are deleted by the node that wrote them and by every node's change
            // follower (copies): only a file that was there counts.
            if matches!(store.size(blob).await, Err(meridian_blob::BlobError::NotFound(_))) {
                continue;
            }
            match store.delete(blob).await {
                Ok(()) => {
                    deleted.inc();
                }
                Err(err) => {
                    tracing::warn!(%blob, error = %err, "could not delete a replaced blob; the orphan scan will retry");
                }
            }
        }
    });
}

pub(crate) async fn collect_orphans(engine: &Engine, older_than: SystemTime) -> EngineResult<(usize, u64)> {
    let meta = engine.meta().clone();
    let result = engine
        .blobs()
        .collect_orphans(older_than, |ids| {
            let meta = meta.clone();
            async move {
                let refs: Vec<_> = ids.iter().map(|id| keys::blob_ref(*id)).collect();
                let (found, _) = meta.get_many(&refs).await.map_err(|e| e.to_string())?;
                Ok(found.iter().map(Option::is_some).collect())
            }
        })
        .await?;
    engine.metrics().gc_orphans_removed.inc_by(result.0 as u64);
    Ok(result)
}
