//! S3 Object Lock (docs/decisions/062-object-lock.md). A bucket created with lock enabled is
//! versioned for good; each version's retention (GOVERNANCE or COMPLIANCE until an instant) and
//! legal hold live in its object record's headers, so they move with the version (its `v/`
//! entry, and the `o/` copy while it is current, which reads answer from). The engine refuses
//! every removal of a locked version; the front ends only parse, decide whether the caller may
//! bypass GOVERNANCE retention, and serialize.

use serde::{Deserialize, Serialize};

use crate::cluster::HEARTBEAT_INTERVAL;
use crate::error::{EngineError, EngineResult};
use crate::record::{BucketRecord, ObjectRecord, Placement, VersionRecord, Versioning};
use crate::{Engine, now_ms};

/// Longest default retention S3 accepts.
pub const MAX_DEFAULT_DAYS: u32 = 36_500;
pub const MAX_DEFAULT_YEARS: u32 = 100;
const DAY_MS: i64 = 86_400_000;

/// The message S3 gives when a lock refuses a removal or a change.
const LOCKED: &str = "Access Denied because object protected by object lock.";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LockMode {
    /// Removable or shortened by a caller allowed to bypass governance retention.
    Governance,
    /// Never removed or shortened by anyone until it ends.
    Compliance,
}

impl LockMode {
    /// S3's name (`GOVERNANCE`, `COMPLIANCE`); `None` for anything else.
    pub fn parse(text: &str) -> Option<LockMode> {
        match text {
            "GOVERNANCE" => Some(LockMode::Governance),
            "COMPLIANCE" => Some(LockMode::Compliance),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LockMode::Governance => "GOVERNANCE",
            LockMode::Compliance => "COMPLIANCE",
        }
    }
}

/// A version's retention: it cannot be removed before `until_ms` (Unix ms).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    pub mode: LockMode,
    pub until_ms: i64,
}

/// The lock state of one version (empty: not locked).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectLock {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Retention>,
    /// `None`: never set (S3 then answers NoSuchObjectLockConfiguration); `Some(false)`: OFF.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legal_hold: Option<bool>,
}

impl ObjectLock {
    pub fn is_empty(&self) -> bool {
        self.retention.is_none() && self.legal_hold.is_none()
    }

    pub fn is_held(&self) -> bool {
        self.legal_hold == Some(true)
    }
}

/// How long new versions are retained by default.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    Days(u32),
    Years(u32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DefaultRetention {
    pub mode: LockMode,
    pub period: Period,
}

impl DefaultRetention {
    /// A default rule as S3 takes it: a mode and exactly one of days and years, positive and
    /// within S3's limits.
    pub fn new(mode: Option<&str>, days: Option<i64>, years: Option<i64>) -> EngineResult<DefaultRetention> {
        let mode = mode.and_then(LockMode::parse).ok_or(EngineError::MalformedXml)?;
        let (count, max, period): (i64, u32, fn(u32) -> Period) = match (days, years) {
            (Some(days), None) => (days, MAX_DEFAULT_DAYS, Period::Days),
            (None, Some(years)) => (years, MAX_DEFAULT_YEARS, Period::Years),
            _ => return Err(EngineError::MalformedXml),
        };
        if count <= 0 {
            return Err(EngineError::InvalidArgument(
                "Default retention period must be a positive integer value".into(),
            ));
        }
        let count = u32::try_from(count).ok().filter(|c| *c <= max);
        let count = count.ok_or_else(|| EngineError::InvalidArgument("Default retention period too large".into()))?;
        Ok(DefaultRetention { mode, period: period(count) })
    }

    /// The retention of a version written at `written_ms` (a year is 365 days).
    pub fn retention_from(&self, written_ms: i64) -> Retention {
        let days = match self.period {
            Period::Days(d) => i64::from(d),
            Period::Years(y) => i64::from(y) * 365,
        };
        Retention { mode: self.mode, until_ms: written_ms.saturating_add(days * DAY_MS) }
    }
}

/// A bucket's object lock configuration; a bucket has one exactly when lock is enabled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_retention: Option<DefaultRetention>,
}

fn locked() -> EngineError {
    EngineError::AccessDenied(LOCKED.into())
}

fn missing_bucket_lock() -> EngineError {
    EngineError::InvalidRequest("Bucket is missing Object Lock Configuration".into())
}

/// Checks the lock a write asks for: only in a bucket with lock enabled, and a retention that
/// ends in the future.
pub(crate) fn check_requested(bucket: &BucketRecord, lock: &ObjectLock) -> EngineResult<()> {
    if lock.is_empty() {
        return Ok(());
    }
    if bucket.object_lock.is_none() {
        return Err(missing_bucket_lock());
    }
    match lock.retention {
        Some(r) if r.until_ms <= now_ms() => {
            Err(EngineError::InvalidArgument("The retain until date must be in the future!".into()))
        }
        _ => Ok(()),
    }
}

/// `object` as a new version written at `written_ms` stores it: with the bucket's default
/// retention unless the write asked for a retention of its own.
pub(crate) fn with_default_retention(bucket: &BucketRecord, mut object: ObjectRecord, written_ms: i64) -> ObjectRecord {
    let default = bucket.object_lock.and_then(|c| c.default_retention);
    if let Some(default) = default
        && object.headers.lock.retention.is_none()
    {
        object.headers.lock.retention = Some(default.retention_from(written_ms));
    }
    object
}

/// The instant retention is judged against, from this node's (cluster-corrected) clock and
/// the last heartbeat times every registered node recorded: never later than the lower median
/// of those heartbeats (plus a heartbeat interval), so no single node whose clock runs ahead
/// can judge a retention over early. A node's clock running behind only judges later.
pub fn judging_instant(local_ms: i64, heartbeats: &[i64]) -> i64 {
    let mut sorted = heartbeats.to_vec();
    sorted.sort_unstable();
    let Some(lower_median) = sorted.get(sorted.len().saturating_sub(1) / 2) else { return local_ms };
    let allowance = 2 * HEARTBEAT_INTERVAL.as_millis() as i64;
    local_ms.min(lower_median.saturating_add(allowance))
}

/// What a PutObjectRetention may change, given whether the old retention is still in force:
/// any retention may be extended; an active COMPLIANCE one never shortened, removed or turned
/// into GOVERNANCE; an active GOVERNANCE one only with `bypass`.
fn retention_change_allowed(old: Option<Retention>, new: Option<Retention>, old_active: bool, bypass: bool) -> bool {
    let Some(old) = old.filter(|_| old_active) else { return true };
    let extends = new.is_some_and(|n| n.until_ms >= old.until_ms);
    match old.mode {
        LockMode::Compliance => extends && new.is_some_and(|n| n.mode == LockMode::Compliance),
        LockMode::Governance => extends || bypass,
    }
}

impl Engine {
    /// S3 CreateBucket with `x-amz-bucket-object-lock-enabled`: versioning is enabled at once
    /// and can never be suspended.
    pub async fn create_locked_bucket(
        &self,
        name: &str,
        owner: &str,
        public_read: bool,
        placement: impl Into<Placement>,
    ) -> EngineResult<meridian_meta::Revision> {
        let lock = BucketRecord {
            versioning: Some(Versioning::Enabled),
            object_lock: Some(LockConfig::default()),
            ..Default::default()
        };
        self.create_bucket_like(name, owner, public_read, placement.into(), lock).await
    }

    /// S3 PutObjectLockConfiguration: sets the default retention (`None`: none). On a
    /// versioned bucket without lock it enables lock, as S3 now allows.
    pub async fn set_lock_config(&self, bucket: &str, config: LockConfig) -> EngineResult<()> {
        self.update_bucket(bucket, |record| {
            if record.object_lock.is_none() && record.versioning != Some(Versioning::Enabled) {
                return Err(EngineError::InvalidBucketState(
                    "Versioning must be 'Enabled' on the bucket to apply a Object Lock configuration".into(),
                ));
            }
            record.object_lock = Some(config);
            Ok(())
        })
        .await?;
        Ok(())
    }

    /// S3 GetObjectLockConfiguration.
    pub async fn lock_config(&self, bucket: &str) -> EngineResult<LockConfig> {
        self.bucket(bucket).await?.0.object_lock.ok_or(EngineError::NoLockConfiguration)
    }

    /// The lock of a version (`None`: the current one) of an object, and its version id.
    pub async fn object_lock(&self, bucket: &str, key: &str, version_id: Option<&str>) -> EngineResult<ObjectLock> {
        self.require_bucket_lock(bucket).await?;
        let current = match version_id {
            Some(id) => self.read_version(bucket, key, id).await?,
            None => self.read_visible(bucket, key, crate::Consistency::Strong).await?,
        };
        Ok(current.record.headers.lock)
    }

    /// S3 PutObjectRetention (`None`: remove it). Returns the version id changed.
    pub async fn set_retention(
        &self,
        bucket: &str,
        key: &str,
        version_id: Option<&str>,
        retention: Option<Retention>,
        bypass: bool,
    ) -> EngineResult<String> {
        self.require_bucket_lock(bucket).await?;
        if retention.is_some_and(|r| r.until_ms <= now_ms()) {
            return Err(EngineError::InvalidArgument("The retain until date must be in the future!".into()));
        }
        let judged = self.lock_judging_instant().await?;
        self.rewrite_version(bucket, key, version_id, |object| {
            let old = object.headers.lock.retention;
            let active = old.is_some_and(|r| r.until_ms > judged);
            if !retention_change_allowed(old, retention, active, bypass) {
                return Err(locked());
            }
            let mut changed = object.clone();
            changed.headers.lock.retention = retention;
            Ok(changed)
        })
        .await
    }

    /// S3 PutObjectLegalHold. Returns the version id changed.
    pub async fn set_legal_hold(
        &self,
        bucket: &str,
        key: &str,
        version_id: Option<&str>,
        on: bool,
    ) -> EngineResult<String> {
        self.require_bucket_lock(bucket).await?;
        self.rewrite_version(bucket, key, version_id, |object| {
            let mut changed = object.clone();
            changed.headers.lock.legal_hold = Some(on);
            Ok(changed)
        })
        .await
    }

    async fn require_bucket_lock(&self, bucket: &str) -> EngineResult<()> {
        match self.bucket(bucket).await?.0.object_lock {
            Some(_) => Ok(()),
            None => Err(missing_bucket_lock()),
        }
    }

    /// Refuses removing `version` for good while a legal hold or a retention protects it;
    /// `bypass`: the caller may bypass GOVERNANCE retention and asked to.
    pub(crate) async fn check_removable(&self, version: &VersionRecord, bypass: bool) -> EngineResult<()> {
        let Some(lock) = version.object.as_ref().map(|o| o.headers.lock) else { return Ok(()) };
        if lock.is_held() {
            return Err(locked());
        }
        let Some(retention) = lock.retention else { return Ok(()) };
        if retention.mode == LockMode::Governance && bypass {
            return Ok(());
        }
        // Still in force by this node's clock: no need to ask the others.
        if retention.until_ms > now_ms() || retention.until_ms > self.lock_judging_instant().await? {
            return Err(locked());
        }
        Ok(())
    }

    /// [`judging_instant`] from this node's clock and the registered nodes' heartbeats.
    async fn lock_judging_instant(&self) -> EngineResult<i64> {
        let heartbeats: Vec<i64> = self.nodes().await?.iter().map(|n| n.record.heartbeat_ms).collect();
        Ok(judging_instant(now_ms(), &heartbeats))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_node_running_ahead_cannot_end_a_retention_early() {
        let now = 1_000_000_000;
        let allowance = 2 * HEARTBEAT_INTERVAL.as_millis() as i64;
        assert_eq!(judging_instant(now, &[]), now, "no heartbeat recorded: the own clock");
        assert_eq!(judging_instant(now, &[now - 500, now - 800, now - 100]), now, "agreeing clocks: the own clock");
        let year = 365 * DAY_MS;
        // This node's clock was set a year ahead: the heartbeats of the others hold it back.
        let ahead = judging_instant(now + year, &[now + year, now - 1000, now - 1500]);
        assert!(ahead <= now + allowance, "{ahead}");
        // Another node ran ahead and recorded that in its heartbeat: one of three moves nothing.
        assert_eq!(judging_instant(now, &[now + year, now, now - 300]), now);
        // Two nodes, one ahead: the lower one counts.
        assert!(judging_instant(now + year, &[now + year, now]) <= now + allowance);
        // A clock running behind only judges later (retention lasts longer, never shorter).
        assert_eq!(judging_instant(now - year, &[now, now, now]), now - year);
    }

    #[test]
    fn default_rules_take_a_mode_and_exactly_one_period() {
        let rule = DefaultRetention::new(Some("COMPLIANCE"), Some(2), None).unwrap();
        assert_eq!(rule.retention_from(10).until_ms, 10 + 2 * DAY_MS);
        let years = DefaultRetention::new(Some("GOVERNANCE"), None, Some(1)).unwrap();
        assert_eq!(years.retention_from(0), Retention { mode: LockMode::Governance, until_ms: 365 * DAY_MS });
        for (mode, days, years) in
            [(None, Some(1), None), (Some("x"), Some(1), None), (Some("COMPLIANCE"), Some(1), Some(1))]
        {
            assert!(matches!(DefaultRetention::new(mode, days, years), Err(EngineError::MalformedXml)));
        }
        assert!(matches!(DefaultRetention::new(Some("COMPLIANCE"), None, None), Err(EngineError::MalformedXml)));
        for (days, years) in [(Some(0), None), (Some(-1), None), (Some(36_501), None), (None, Some(101))] {
            assert!(matches!(
                DefaultRetention::new(Some("GOVERNANCE"), days, years),
                Err(EngineError::InvalidArgument(_))
            ));
        }
    }

    #[test]
    fn compliance_only_extends_and_governance_shortens_with_bypass() {
        let r = |mode, until_ms| Some(Retention { mode, until_ms });
        let (gov, comp) = (LockMode::Governance, LockMode::Compliance);
        assert!(retention_change_allowed(r(comp, 10), r(comp, 20), true, false), "extend");
        assert!(!retention_change_allowed(r(comp, 10), r(comp, 5), true, true), "shorten compliance");
        assert!(!retention_change_allowed(r(comp, 10), None, true, true), "remove compliance");
        assert!(!retention_change_allowed(r(comp, 10), r(gov, 20), true, true), "compliance to governance");
        assert!(retention_change_allowed(r(comp, 10), None, false, false), "an ended retention goes");
        assert!(retention_change_allowed(r(gov, 10), r(comp, 10), true, false), "governance to compliance");
        assert!(!retention_change_allowed(r(gov, 10), r(gov, 5), true, false), "shorten without bypass");
        assert!(retention_change_allowed(r(gov, 10), None, true, true), "remove with bypass");
        assert!(retention_change_allowed(None, r(gov, 5), false, false), "a first retention");
    }
}
