//! S3 lifecycle rules — expire objects N days after they were written, abort multipart uploads
//! N days after they started — built on the same expiry machinery as KV TTLs: a rule sets the
//! expiry instant in the record (and the expiry index), reads hide the object from that instant
//! on, and the reaper reclaims it (in a versioned bucket, by adding a delete marker). Setting
//! rules on a bucket also applies them to what is already there.
//!
//! Rules on versions (noncurrent-version expiration, expired delete markers) are applied by a
//! sweep of the bucket's versions ([`Engine::expire_versions`]): when the rules are set, and
//! then by the reaper task every [`VERSION_SWEEP_EVERY`].

use meridian_meta::{Compare, Op, RangeRequest, Txn};
use serde::{Deserialize, Serialize};

use crate::error::{EngineError, EngineResult};
use crate::object::{object_change, with_expiry_index};
use crate::record::{self, BucketRecord, ObjectRecord, UploadRecord, VersionRecord};
use crate::tagging::Tags;
use crate::{Engine, keys, now_ms};

const DAY_MS: i64 = 86_400_000;
/// How lifecycle's removals of versions are reported to notifications, as in S3.
const LIFECYCLE: crate::notify::EventKind = crate::notify::EventKind::LifecycleDelete;
/// How often the reaper task sweeps versioned buckets for versions their rules expire.
pub const VERSION_SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);
/// Most rules per bucket, as in S3.
pub const MAX_RULES: usize = 1000;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifecycleRule {
    #[serde(default)]
    pub id: String,
    /// Applies to keys starting with this.
    #[serde(default)]
    pub prefix: String,
    #[serde(default = "enabled")]
    pub enabled: bool,
    /// Objects expire this many days after they were written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration_days: Option<u32>,
    /// Incomplete multipart uploads are aborted this many days after they started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort_incomplete_days: Option<u32>,
    /// Applies only to objects carrying every one of these tags.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub tags: Tags,
    /// Noncurrent versions are deleted this many days after they became noncurrent (S3's
    /// NoncurrentVersionExpiration NoncurrentDays).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noncurrent_days: Option<u32>,
    /// ...except the newest this many noncurrent versions of each key (NewerNoncurrentVersions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newer_noncurrent_versions: Option<u32>,
    /// A delete marker that is the only version of its key is removed (ExpiredObjectDeleteMarker).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub expired_object_delete_marker: bool,
}

fn enabled() -> bool {
    true
}

impl LifecycleRule {
    fn matches(&self, key: &str) -> bool {
        self.enabled && key.starts_with(&self.prefix)
    }

    fn matches_object(&self, key: &str, tags: &Tags) -> bool {
        self.matches(key) && self.tags.iter().all(|(k, v)| tags.get(k) == Some(v))
    }

    /// Whether the rule removes versions (only the version sweep applies it).
    fn acts_on_versions(&self) -> bool {
        self.enabled && (self.noncurrent_days.is_some() || self.expired_object_delete_marker)
    }

    /// Whether this rule removes the noncurrent version of `key` with `tags` that became
    /// noncurrent at `since_ms` and has `newer` noncurrent versions of its key before it.
    fn expires_noncurrent(&self, key: &str, tags: &Tags, since_ms: i64, newer: usize, now: i64) -> bool {
        let Some(days) = self.noncurrent_days else { return false };
        let kept = self.newer_noncurrent_versions.unwrap_or(0) as usize;
        self.matches_object(key, tags) && newer >= kept && now >= since_ms + i64::from(days) * DAY_MS
    }
}

/// When an object with `tags` written at `modified_ms` expires under `rules` (the earliest
/// rule wins).
pub fn object_expiry(rules: &[LifecycleRule], key: &str, tags: &Tags, modified_ms: i64) -> Option<i64> {
    rules
        .iter()
        .filter(|r| r.matches_object(key, tags))
        .filter_map(|r| r.expiration_days)
        .map(|days| modified_ms + i64::from(days) * DAY_MS)
        .min()
}

/// When an upload started at `initiated_ms` is aborted under `rules`.
pub fn upload_abort(rules: &[LifecycleRule], key: &str, initiated_ms: i64) -> Option<i64> {
    rules
        .iter()
        .filter(|r| r.matches(key))
        .filter_map(|r| r.abort_incomplete_days)
        .map(|days| initiated_ms + i64::from(days) * DAY_MS)
        .min()
}

/// The earlier of two optional instants.
pub(crate) fn earliest(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn validate(rules: &[LifecycleRule]) -> EngineResult<()> {
    if rules.len() > MAX_RULES {
        return Err(EngineError::InvalidArgument(format!("a bucket has at most {MAX_RULES} lifecycle rules")));
    }
    for rule in rules {
        if rule.expiration_days.is_none()
            && rule.abort_incomplete_days.is_none()
            && rule.noncurrent_days.is_none()
            && !rule.expired_object_delete_marker
        {
            return Err(EngineError::InvalidArgument(format!(
                "lifecycle rule {:?} has no action: give Expiration Days or ExpiredObjectDeleteMarker, \
                 NoncurrentVersionExpiration or AbortIncompleteMultipartUpload",
                rule.id
            )));
        }
        if rule.expired_object_delete_marker && (rule.expiration_days.is_some() || !rule.tags.is_empty()) {
            // S3's rules: the marker flag stands alone in Expiration, and markers have no tags.
            return Err(EngineError::InvalidRequest(
                "ExpiredObjectDeleteMarker cannot be specified with Days, Date or Tags.".into(),
            ));
        }
        if rule.newer_noncurrent_versions.is_some() && rule.noncurrent_days.is_none() {
            return Err(EngineError::InvalidArgument(format!(
                "lifecycle rule {:?}: NewerNoncurrentVersions needs NoncurrentDays",
                rule.id
            )));
        }
        if rule.noncurrent_days == Some(0) || rule.newer_noncurrent_versions == Some(0) {
            return Err(EngineError::InvalidArgument(format!(
                "lifecycle rule {:?}: NoncurrentDays and NewerNoncurrentVersions must be positive",
                rule.id
            )));
        }
        if rule.abort_incomplete_days.is_some() && !rule.tags.is_empty() {
            // S3's rule and message: uploads have no tags to match.
            return Err(EngineError::InvalidRequest(
                "AbortIncompleteMultipartUpload cannot be specified with Tags.".into(),
            ));
        }
        if rule.expiration_days == Some(0) || rule.abort_incomplete_days == Some(0) {
            return Err(EngineError::InvalidArgument(format!("lifecycle rule {:?}: days must be positive", rule.id)));
        }
    }
    Ok(())
}

impl Engine {
    /// Replaces the bucket's rules, then applies them to the objects and uploads already there.
    pub async fn set_lifecycle(&self, bucket: &str, rules: Vec<LifecycleRule>) -> EngineResult<()> {
        validate(&rules)?;
        self.update_bucket(bucket, |record| {
            record.lifecycle = rules.clone();
            Ok(())
        })
        .await?;
        self.apply_lifecycle(bucket, &rules).await
    }

    pub async fn lifecycle(&self, bucket: &str) -> EngineResult<Vec<LifecycleRule>> {
        Ok(self.bucket(bucket).await?.0.lifecycle)
    }

    /// Gives existing objects and uploads the expiry their rules ask for (only ever earlier).
    async fn apply_lifecycle(&self, bucket: &str, rules: &[LifecycleRule]) -> EngineResult<()> {
        for rule in rules.iter().filter(|r| r.enabled) {
            if rule.expiration_days.is_some() {
                self.expire_existing(bucket, rules, &rule.prefix).await?;
            }
            if rule.abort_incomplete_days.is_some() {
                self.abort_existing(bucket, rules, &rule.prefix).await?;
            }
        }
        if rules.iter().any(LifecycleRule::acts_on_versions) {
            self.expire_versions(bucket, now_ms()).await?;
        }
        Ok(())
    }

    /// Applies the bucket's rules on versions as of `now`: deletes the noncurrent versions they
    /// expire and delete markers left alone; returns how many versions it deleted.
    pub async fn expire_versions(&self, bucket: &str, now: i64) -> EngineResult<usize> {
        let (record, _) = self.bucket(bucket).await?;
        let rules: Vec<LifecycleRule> = record.lifecycle.into_iter().filter(LifecycleRule::acts_on_versions).collect();
        if rules.is_empty() || record.versioning.is_none() {
            return Ok(0);
        }
        let mut removed = 0;
        // One key's versions, newest first, as the scan meets them.
        let mut pending: Option<(String, Vec<VersionRecord>)> = None;
        let mut range = RangeRequest::prefix(keys::versions_prefix(bucket)).limit(1000);
        loop {
            let page = self.meta().range(range.clone()).await?;
            for kv in &page.kvs {
                let Some((_, key, Some(_))) = keys::parse_version_key(&kv.key) else { continue };
                let version: VersionRecord = record::decode(&kv.value)?;
                match &mut pending {
                    Some((seen, versions)) if seen == key => versions.push(version),
                    _ => {
                        if let Some((seen, versions)) = pending.take() {
                            removed += self.expire_key_versions(bucket, &seen, &versions, &rules, now).await?;
                        }
                        pending = Some((key.to_string(), vec![version]));
                    }
                }
            }
            match page.kvs.last() {
                Some(last) if page.more => range = range.after(last.key.clone()),
                _ => break,
            }
        }
        if let Some((key, versions)) = pending {
            removed += self.expire_key_versions(bucket, &key, &versions, &rules, now).await?;
        }
        Ok(removed)
    }

    /// [`Engine::expire_versions`] for one key's versions (newest first).
    async fn expire_key_versions(
        &self,
        bucket: &str,
        key: &str,
        versions: &[VersionRecord],
        rules: &[LifecycleRule],
        now: i64,
    ) -> EngineResult<usize> {
        let no_tags = Tags::new();
        let mut removed = 0;
        for (newer, pair) in versions.windows(2).enumerate() {
            let (successor, version) = (&pair[0], &pair[1]);
            let tags = version.object.as_ref().map_or(&no_tags, |o| &o.headers.tags);
            if rules.iter().any(|r| r.expires_noncurrent(key, tags, successor.modified_ms, newer, now)) {
                // A version under object lock stays until its lock ends, as in S3.
                let expired = self.remove_version_as(bucket, key, version.stamp.id(), false, LIFECYCLE).await;
                match expired {
                    Ok(_) => removed += 1,
                    Err(EngineError::AccessDenied(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        let alone = versions.len() - removed == 1;
        let newest = &versions[0];
        if alone && newest.object.is_none() && rules.iter().any(|r| r.expired_object_delete_marker && r.matches(key)) {
            self.remove_version_as(bucket, key, newest.stamp.id(), false, LIFECYCLE).await?;
            removed += 1;
        }
        Ok(removed)
    }

    /// Runs [`Engine::expire_versions`] on every versioned bucket with rules on versions, and
    /// frees the versions no snapshot shows any more ([`Engine::sweep_retained`]).
    pub(crate) async fn sweep_versions(&self) -> EngineResult<usize> {
        let page = self.meta().range(RangeRequest::prefix(keys::BUCKETS_PREFIX)).await?;
        let mut removed = 0;
        for kv in &page.kvs {
            let Some(name) = keys::parse_bucket_key(&kv.key) else { continue };
            let record: BucketRecord = record::decode(&kv.value)?;
            if record.versioning.is_some() && record.lifecycle.iter().any(LifecycleRule::acts_on_versions) {
                removed += self.expire_versions(name, now_ms()).await?;
            }
            if record.versioning.is_some() {
                // Versions a deleted snapshot kept, if a crash stopped the deletion's own sweep.
                self.sweep_retained(name).await?;
            }
        }
        Ok(removed)
    }

    async fn expire_existing(&self, bucket: &str, rules: &[LifecycleRule], prefix: &str) -> EngineResult<()> {
        let mut range = RangeRequest::prefix(format!("{}{prefix}", keys::objects_prefix(bucket))).limit(500);
        loop {
            let page = self.meta().range(range.clone()).await?;
            for kv in &page.kvs {
                // Skips markers of the old layout, which sit under `o/`.
                let Some((_, key)) = keys::parse_object_key(&kv.key) else { continue };
                let key = key.to_string();
                let record: ObjectRecord = record::decode(&kv.value)?;
                let tags = &record.headers.tags;
                let wanted = earliest(record.expires_at_ms, object_expiry(rules, &key, tags, record.modified_ms));
                if wanted != record.expires_at_ms {
                    self.set_object_expiry(bucket, &key, kv.mod_revision, wanted).await?;
                }
            }
            match page.kvs.last() {
                Some(last) if page.more => range = range.after(last.key.clone()),
                _ => return Ok(()),
            }
        }
    }

    /// Rewrites one object's expiry, unless it changed since it was read.
    async fn set_object_expiry(
        &self,
        bucket: &str,
        key: &str,
        revision: u64,
        expires_at_ms: Option<i64>,
    ) -> EngineResult<()> {
        let Some(current) = self.read_current(bucket, key).await? else { return Ok(()) };
        if current.revision != revision {
            return Ok(());
        }
        let mut record = current.record.clone();
        record.expires_at_ms = expires_at_ms;
        let change = object_change(bucket, key, Some(&current), Some((&record, current.inline.as_ref())));
        let mut txn = Txn::new();
        txn.compares.extend(change.compares);
        txn.ops.extend(change.ops);
        self.meta().txn(txn).await?;
        Ok(())
    }

    async fn abort_existing(&self, bucket: &str, rules: &[LifecycleRule], prefix: &str) -> EngineResult<()> {
        let range = RangeRequest::prefix(format!("{}{prefix}", keys::uploads_prefix(bucket)));
        let page = self.meta().range(range).await?;
        for kv in &page.kvs {
            let mut upload: UploadRecord = record::decode(&kv.value)?;
            let wanted = earliest(upload.abort_at_ms, upload_abort(rules, &upload.key, upload.initiated_ms));
            if wanted == upload.abort_at_ms {
                continue;
            }
            let old = upload.abort_at_ms;
            upload.abort_at_ms = wanted;
            let mut txn = Txn::new()
                .when(Compare::mod_revision_is(kv.key.clone(), kv.mod_revision))
                .then(Op::put(kv.key.clone(), record::encode(&upload)));
            txn = with_expiry_index(txn, &kv.key, old, wanted);
            self.meta().txn(txn).await?;
        }
        Ok(())
    }

    /// Called by the reaper for a due upload index entry: aborts the upload if it is still
    /// there and still due.
    pub(crate) async fn reap_upload(&self, target: &[u8], at: i64) -> EngineResult<()> {
        let Some(keys::UploadKey { bucket, key, upload_id }) = keys::parse_upload_key(target) else { return Ok(()) };
        let Some(kv) = self.meta().get(target).await? else { return Ok(()) };
        let upload: UploadRecord = record::decode(&kv.value)?;
        if upload.abort_at_ms == Some(at) && at <= now_ms() {
            match self.abort_multipart_upload(bucket, key, upload_id).await {
                Ok(()) | Err(EngineError::NoSuchUpload) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earliest_matching_rule_wins() {
        let rules = vec![
            LifecycleRule {
                id: "a".into(),
                prefix: "logs/".into(),
                enabled: true,
                expiration_days: Some(30),
                abort_incomplete_days: None,
                tags: Tags::new(),
                ..Default::default()
            },
            LifecycleRule {
                id: "b".into(),
                prefix: "logs/tmp/".into(),
                enabled: true,
                expiration_days: Some(1),
                abort_incomplete_days: Some(2),
                tags: Tags::new(),
                ..Default::default()
            },
            LifecycleRule {
                id: "c".into(),
                prefix: "".into(),
                enabled: false,
                expiration_days: Some(1),
                abort_incomplete_days: None,
                tags: Tags::new(),
                ..Default::default()
            },
        ];
        let none = Tags::new();
        assert_eq!(object_expiry(&rules, "logs/x", &none, 0), Some(30 * DAY_MS));
        assert_eq!(object_expiry(&rules, "logs/tmp/x", &none, 0), Some(DAY_MS));
        assert_eq!(object_expiry(&rules, "data/x", &none, 0), None, "disabled rules do nothing");
        assert_eq!(upload_abort(&rules, "logs/tmp/x", 5), Some(5 + 2 * DAY_MS));
        assert!(validate(&[LifecycleRule { id: "none".into(), ..Default::default() }]).is_err());
    }

    #[test]
    fn tag_filters_need_every_tag() {
        let tag = |k: &str, v: &str| Tags::from([(k.to_string(), v.to_string())]);
        let mut wanted = tag("class", "temp");
        wanted.insert("team".into(), "ops".into());
        let rules = vec![LifecycleRule {
            prefix: "logs/".into(),
            enabled: true,
            expiration_days: Some(1),
            tags: wanted.clone(),
            ..Default::default()
        }];
        assert_eq!(object_expiry(&rules, "logs/a", &wanted, 0), Some(DAY_MS));
        let mut more = wanted.clone();
        more.insert("extra".into(), "x".into());
        assert_eq!(object_expiry(&rules, "logs/a", &more, 0), Some(DAY_MS), "other tags do not matter");
        assert_eq!(object_expiry(&rules, "logs/a", &tag("class", "temp"), 0), None, "every tag is needed");
        assert_eq!(object_expiry(&rules, "data/a", &wanted, 0), None, "and the prefix");
        let abort_with_tags = LifecycleRule { abort_incomplete_days: Some(1), tags: wanted, ..Default::default() };
        assert!(matches!(validate(&[abort_with_tags]), Err(EngineError::InvalidRequest(_))));
    }
}
