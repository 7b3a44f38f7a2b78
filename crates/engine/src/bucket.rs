//! Buckets: create, look up, list, delete (only when empty).

use meridian_meta::{Compare, Op, RangeRequest, Revision, Txn};

use crate::error::{EngineError, EngineResult};
use crate::record::{self, BucketRecord, Location, Placement};
use crate::{Engine, keys, now_ms};

/// A DeleteBucket that crashed mid-way leaves its `deleting` mark; after this long writers
/// ignore it again.
const DELETING_MARK_TTL_MS: i64 = 30_000;

/// S3's bucket naming rules.
pub fn validate_bucket_name(name: &str) -> EngineResult<()> {
    let fail = |why: &str| Err(EngineError::InvalidBucketName(format!("{name:?}: {why}")));
    if name.len() < 3 || name.len() > 63 {
        return fail("bucket names must be between 3 and 63 characters long");
    }
    if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-') {
        return fail("bucket names may contain only lowercase letters, digits, dots and hyphens");
    }
    let first_last_ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !first_last_ok(name.as_bytes()[0]) || !first_last_ok(name.as_bytes()[name.len() - 1]) {
        return fail("bucket names must begin and end with a letter or digit");
    }
    if name.contains("..") || name.contains(".-") || name.contains("-.") {
        return fail("bucket names must not contain adjacent dots or a dot next to a hyphen");
    }
    if name.parse::<std::net::Ipv4Addr>().is_ok() {
        return fail("bucket names must not be formatted as an IP address");
    }
    if name.starts_with("xn--")
        || name.starts_with("sthree-")
        || name.ends_with("-s3alias")
        || name.ends_with("--ol-s3")
    {
        return fail("bucket names must not use a reserved prefix or suffix");
    }
    Ok(())
}

impl Engine {
    /// Creates a private bucket owned by the key named `owner`.
    pub async fn create_bucket(&self, name: &str, owner: &str) -> EngineResult<Revision> {
        self.create_bucket_with(name, owner, false).await
    }

    /// Creates a bucket owned by the key named `owner`, optionally readable by anyone.
    pub async fn create_bucket_with(&self, name: &str, owner: &str, public_read: bool) -> EngineResult<Revision> {
        self.create_bucket_at(name, owner, public_read, Location::Global).await
    }

    /// Creates a bucket with a location type (see [`Location`]) and, for a global bucket, a
    /// number of copies ([`BucketRecord::replicas`]).
    pub async fn create_bucket_at(
        &self,
        name: &str,
        owner: &str,
        public_read: bool,
        placement: impl Into<Placement>,
    ) -> EngineResult<Revision> {
        self.create_bucket_like(name, owner, public_read, placement.into(), BucketRecord::default()).await
    }

    /// Creates a bucket whose record starts as `settings` with the given owner and placement.
    pub(crate) async fn create_bucket_like(
        &self,
        name: &str,
        owner: &str,
        public_read: bool,
        placement: Placement,
        settings: BucketRecord,
    ) -> EngineResult<Revision> {
        validate_bucket_name(name)?;
        let Placement { location, replicas } = placement;
        let key = keys::bucket(name);
        let record = BucketRecord {
            created_ms: now_ms(),
            owner: owner.to_string(),
            public_read,
            location,
            replicas,
            ..settings
        };
        let txn = Txn::new()
            .when(Compare::absent(key.clone()))
            .then(Op::put(key.clone(), record::encode(&record)))
            .or_read(key);
        let resp = self.meta().txn(txn).await?;
        if resp.succeeded {
            return Ok(resp.revision);
        }
        let existing: Option<BucketRecord> = match resp.failure_reads.first().cloned().flatten() {
            Some(kv) => Some(record::decode(&kv.value)?),
            None => None,
        };
        match existing {
            Some(existing) if existing.owner == owner => Err(EngineError::BucketAlreadyOwnedByYou),
            _ => Err(EngineError::BucketAlreadyExists),
        }
    }

    /// The bucket's record and its revision, from this node's local view (writers compare the
    /// revision on commit, so a stale view costs a retry, never a wrong write).
    pub async fn bucket(&self, name: &str) -> EngineResult<(BucketRecord, Revision)> {
        let kv = self.get_local_confirmed(&keys::bucket(name)).await?.ok_or(EngineError::NoSuchBucket)?;
        Ok((record::decode(&kv.value)?, kv.mod_revision))
    }

    /// The bucket's record for an access check (see [`Engine::get_for_access`]).
    pub async fn bucket_for_access(&self, name: &str) -> EngineResult<(BucketRecord, Revision)> {
        let kv = self.get_for_access(&keys::bucket(name)).await?.ok_or(EngineError::NoSuchBucket)?;
        Ok((record::decode(&kv.value)?, kv.mod_revision))
    }

    /// Like [`Engine::bucket`], but a bucket being deleted counts as gone.
    pub(crate) async fn bucket_for_write(&self, name: &str) -> EngineResult<Revision> {
        Ok(self.writable_bucket(name).await?.1)
    }

    /// `seen` (a revision of the bucket the caller has just read), else what
    /// [`Engine::bucket_for_write`] reads.
    pub(crate) async fn bucket_revision_for_write(&self, name: &str, seen: Option<Revision>) -> EngineResult<Revision> {
        match seen {
            Some(revision) => Ok(revision),
            None => self.bucket_for_write(name).await,
        }
    }

    /// The bucket's record and revision, unless it is being deleted.
    pub(crate) async fn writable_bucket(&self, name: &str) -> EngineResult<(BucketRecord, Revision)> {
        writable(self.bucket(name).await?)
    }

    /// Refuses to store objects of `bucket` on this node when the bucket is pinned to another
    /// region (data residency): whatever routed the request here, its bytes must not land here.
    pub(crate) fn check_residency(&self, bucket: &str, record: &BucketRecord) -> EngineResult<()> {
        let here = &self.config().node.region;
        match &record.location {
            Location::Pinned { region } if region != here => Err(EngineError::PinnedElsewhere {
                bucket: bucket.to_string(),
                pinned: region.clone(),
                here: here.clone(),
            }),
            Location::MultiRegion { regions, .. } if !regions.contains(here) => Err(EngineError::OutsideRegions {
                bucket: bucket.to_string(),
                regions: regions.join(","),
                here: here.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// Every bucket, by name.
    pub async fn list_buckets(&self) -> EngineResult<Vec<(String, BucketRecord)>> {
        let resp = self.meta().range(RangeRequest::prefix(keys::BUCKETS_PREFIX)).await?;
        resp.kvs
            .iter()
            .map(|kv| {
                let name =
                    keys::parse_bucket_key(&kv.key).ok_or_else(|| EngineError::Corrupt("bad bucket key".into()))?;
                Ok((name.to_string(), record::decode(&kv.value)?))
            })
            .collect()
    }

    /// Deletes an empty bucket. Marks it first so that no write can slip in between the
    /// emptiness check and the delete (writers compare the bucket's revision on commit).
    pub async fn delete_bucket(&self, name: &str) -> EngineResult<Revision> {
        let key = keys::bucket(name);
        let (mut record, revision) = self.bucket(name).await?;
        if record.snapshots > 0 {
            return Err(EngineError::BucketHasSnapshots(record.snapshots));
        }
        // Versions a deleted snapshot kept, if a crash stopped its sweep.
        self.sweep_retained(name).await?;
        record.deleting_since_ms = Some(now_ms());
        let mark = Txn::new()
            .when(Compare::mod_revision_is(key.clone(), revision))
            .then(Op::put(key.clone(), record::encode(&record)));
        let marked = self.meta().txn(mark).await?;
        if !marked.succeeded {
            return Err(EngineError::Contended);
        }
        if !self.bucket_is_empty(name).await? {
            record.deleting_since_ms = None;
            let unmark = Txn::new()
                .when(Compare::mod_revision_is(key.clone(), marked.revision))
                .then(Op::put(key, record::encode(&record)));
            self.meta().txn(unmark).await?;
            return Err(EngineError::BucketNotEmpty);
        }
        let delete = Txn::new().when(Compare::mod_revision_is(key.clone(), marked.revision)).then(Op::delete(key));
        let resp = self.meta().txn(delete).await?;
        if !resp.succeeded {
            return Err(EngineError::Contended);
        }
        if let Some(origin) = &record.fork_of {
            self.release_fork(name, origin).await?;
        }
        Ok(resp.revision)
    }

    async fn bucket_is_empty(&self, name: &str) -> EngineResult<bool> {
        let uploads = self.meta().range(RangeRequest::prefix(keys::uploads_prefix(name)).limit(1)).await?;
        if !uploads.kvs.is_empty() || self.has_versions(name).await? {
            return Ok(false);
        }
        // Markers of recently expired objects in the old layout (under `o/`) do not count.
        let mut range = RangeRequest::prefix(keys::objects_prefix(name)).limit(64);
        loop {
            let resp = self.meta().range(range.clone()).await?;
            if resp.kvs.iter().any(|kv| keys::parse_object_key(&kv.key).is_some()) {
                return Ok(false);
            }
            match resp.kvs.last() {
                Some(last) if resp.more => range = range.after(last.key.clone()),
                _ => return Ok(true),
            }
        }
    }
}

/// `bucket` (a record and its revision), unless it is being deleted.
pub(crate) fn writable(bucket: (BucketRecord, Revision)) -> EngineResult<(BucketRecord, Revision)> {
    if bucket.0.deleting_since_ms.is_some_and(|since| now_ms() - since < DELETING_MARK_TTL_MS) {
        return Err(EngineError::NoSuchBucket);
    }
    Ok(bucket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names() {
        for ok in ["abc", "my-bucket.example", "a1b", &"a".repeat(63)] {
            assert!(validate_bucket_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "ab",
            &"a".repeat(64),
            "Abc",
            "a_b",
            "-ab",
            "ab-",
            "a..b",
            "192.168.1.1",
            "xn--abc",
            "a.-b",
            "abc-s3alias",
            "ab/c",
        ] {
            assert!(validate_bucket_name(bad).is_err(), "{bad}");
        }
    }
}
