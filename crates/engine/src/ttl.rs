//! Expiry: TTLs on objects and the reaper that removes expired objects.
//!
//! An object with a TTL carries its expiry instant in its record. Reads and listings treat it as
//! absent from that instant on, on every node at once, whatever the reaper is doing. Re-putting
//! the key writes a new record (with its own expiry or none), so an old TTL can never remove a
//! newer value. The reaper only reclaims space: it walks a time-ordered index, and deletes an
//! object with a transaction that compares the revision it checked, leaving a short-lived
//! marker (under its own `m/` prefix, so object scans never see it) by which watches report
//! that removal as an `expire` event.

use std::time::Duration;

use bytes::Bytes;
use meridian_meta::{Compare, Op, RangeRequest, Txn};

use crate::error::{EngineError, EngineResult};
use crate::object::object_change;
use crate::record::{self, ObjectRecord};
use crate::{Engine, keys, now_ms};
use meridian_kv_types::{DURATION_HELP, DurationError};

/// How long an expired-object marker stays before the reaper removes it: a watch tells an
/// expiry from a delete by finding the marker, so this is how far back in history (or how far
/// behind a slow watcher) an expiry is still reported as one.
pub const MARKER_LIFETIME: Duration = Duration::from_secs(300);
/// Index entries handled per reaper step.
const REAP_BATCH: usize = 256;
pub use meridian_kv_types::MAX_TTL;

/// Parses a TTL such as `500ms`, `90s`, `5m`, `2h`, `7d`, or a bare number of seconds.
pub fn parse_ttl(text: &str) -> EngineResult<Duration> {
    meridian_kv_types::parse_duration(text).map_err(|e| {
        EngineError::InvalidArgument(match e {
            DurationError::Malformed => format!("invalid TTL {text:?}: {DURATION_HELP}"),
            DurationError::TooLong => format!("TTL {text:?} is longer than 100 years"),
        })
    })
}

/// Parses how long to wait for a lock: a duration like a TTL's, or zero (`0`, `0s`) for not at
/// all.
pub fn parse_wait(text: &str) -> EngineResult<Duration> {
    meridian_kv_types::parse_wait(text).map_err(|e| {
        EngineError::InvalidArgument(match e {
            DurationError::Malformed => format!("invalid wait {text:?}: {DURATION_HELP}"),
            DurationError::TooLong => format!("wait {text:?} is longer than 100 years"),
        })
    })
}

/// The expiry instant (Unix ms) of a TTL starting now.
pub fn expires_after(ttl: Duration) -> i64 {
    now_ms().saturating_add(ttl.as_millis() as i64)
}

impl Engine {
    /// Runs the reaper until the process ends (started by [`crate::EngineBuilder::reaper`]).
    /// `interval` is how often it looks for due entries.
    pub(crate) fn spawn_reaper(&self, interval: Duration) {
        let engine = self.clone();
        tokio::spawn(async move {
            let mut versions_swept = std::time::Instant::now();
            loop {
                if versions_swept.elapsed() >= crate::lifecycle::VERSION_SWEEP_EVERY {
                    versions_swept = std::time::Instant::now();
                    if let Err(err) = engine.sweep_versions().await {
                        tracing::warn!(error = %err, "lifecycle sweep of versions failed");
                    }
                }
                match engine.reap_due().await {
                    // More may be due right away.
                    Ok(n) if n >= REAP_BATCH => continue,
                    Ok(_) => {}
                    Err(err) => tracing::warn!(error = %err, "expiry reaper step failed"),
                }
                tokio::time::sleep(interval).await;
            }
        });
    }

    /// Handles index entries that are due now; returns how many it looked at.
    pub async fn reap_due(&self) -> EngineResult<usize> {
        let started = std::time::Instant::now();
        let now = now_ms();
        let end = keys::expiry(now + 1, b"");
        let due = self
            .meta()
            .range(RangeRequest::between(Bytes::from_static(keys::EXPIRY_PREFIX.as_bytes()), end).limit(REAP_BATCH))
            .await?;
        let mut removed = 0;
        for kv in &due.kvs {
            let Some((at, target)) = keys::parse_expiry(&kv.key) else {
                continue;
            };
            match self.reap_one(kv.key.clone(), kv.mod_revision, at, Bytes::copy_from_slice(target)).await {
                Ok(()) => removed += 1,
                Err(err) => {
                    tracing::warn!(error = %err, target = %String::from_utf8_lossy(target), "could not reap an expired entry");
                }
            }
        }
        let metrics = self.metrics();
        metrics.reaper_runs.inc();
        metrics.reaper_removed.inc_by(removed);
        metrics.reaper_duration.observe(started.elapsed().as_secs_f64());
        Ok(due.kvs.len())
    }

    async fn reap_one(&self, index_key: Bytes, index_revision: u64, at: i64, target: Bytes) -> EngineResult<()> {
        let drop_index = || {
            Txn::new()
                .when(Compare::mod_revision_is(index_key.clone(), index_revision))
                .then(Op::delete(index_key.clone()))
        };
        let (bucket, key) = match keys::parse_expiry_target(&target) {
            Some(keys::ExpiryTarget::Object { bucket, key }) => (bucket, key),
            Some(keys::ExpiryTarget::ExpiredMarker) => {
                // A marker has served its purpose.
                self.meta().txn(drop_index().then(Op::delete(target.clone()))).await?;
                return Ok(());
            }
            Some(keys::ExpiryTarget::Upload(_)) => {
                self.reap_upload(&target, at).await?;
                self.meta().txn(drop_index()).await?;
                return Ok(());
            }
            None => {
                self.meta().txn(drop_index()).await?;
                return Ok(());
            }
        };
        let current = self.read_current(bucket, key).await?;
        let Some(current) = current.filter(|c| c.record.expires_at_ms == Some(at) && c.record.is_expired(now_ms()))
        else {
            // Re-put or deleted since: the entry is stale.
            self.meta().txn(drop_index()).await?;
            return Ok(());
        };
        if current.record.version.is_some() {
            self.expire_current_version(bucket, key, &current).await?;
            self.meta().txn(drop_index()).await?;
            return Ok(());
        }
        let marker = keys::expired_marker(bucket, key, current.revision);
        let change = object_change(bucket, key, Some(&current), None);
        let blobs = change.freed;
        // Same transaction as the removal: a watch finds the marker at the delete's revision.
        let marked = ExpiredMarker { revision: current.revision, record: current.record.clone() };
        let mut txn = Txn::new()
            .then(Op::put(marker.clone(), record::encode(&marked)))
            .then(Op::put(keys::expiry(now_ms() + MARKER_LIFETIME.as_millis() as i64, &marker), Bytes::new()));
        txn.compares.extend(change.compares);
        txn.ops.extend(change.ops);
        if let Ok((bucket_record, _)) = self.bucket(bucket).await {
            let expired = crate::notify::EventKind::LifecycleDelete;
            txn.ops.extend(crate::notify::event_op(bucket, &bucket_record, key, expired, None, None));
        }
        if self.meta().txn(txn).await?.succeeded {
            self.delete_blobs_later(blobs);
        }
        Ok(())
    }
}

impl Engine {
    /// In a versioned bucket an expired current version is hidden by a new delete marker, as
    /// S3's Expiration does, and stays as a noncurrent version — unless the key changed since.
    async fn expire_current_version(
        &self,
        bucket: &str,
        key: &str,
        current: &crate::object::Current,
    ) -> EngineResult<()> {
        let mut extra = crate::object::ExtraTxn {
            event: Some(crate::notify::EventKind::LifecycleDeleteMarkerCreated),
            ..Default::default()
        };
        extra.compares.push(Compare::mod_revision_is(keys::object(bucket, key), current.revision));
        extra.still_valid = Some(Box::new(|_| Box::pin(async { Err(EngineError::PreconditionFailed) })));
        let none = crate::conditions::WriteConditions::default();
        match self.commit_version(bucket, key, None, &none, &extra).await {
            Ok(_) | Err(EngineError::PreconditionFailed) => Ok(()),
            Err(err) => Err(err),
        }
    }
}

/// What an expired-object marker holds: the record as it was when it expired.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ExpiredMarker {
    /// The revision of the write that expired.
    pub revision: u64,
    pub record: ObjectRecord,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_syntax() {
        assert_eq!(parse_ttl("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_ttl("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_ttl("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_ttl("1.5m").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_ttl("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_ttl("1d").unwrap(), Duration::from_secs(86_400));
        for bad in ["", "abc", "-5s", "0", "0s", "10 parsecs", "5x", "1e400", "200000000d"] {
            assert!(parse_ttl(bad).is_err(), "{bad:?}");
        }
    }
}
