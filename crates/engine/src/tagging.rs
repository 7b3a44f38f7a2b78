//! Object and bucket tags, with S3's limits and messages: at most 10 tags per object and 50 per
//! bucket, keys of 1 to 128 and values of up to 256 Unicode characters (letters, digits,
//! spaces and `+ - = . _ : / @`), no duplicate keys, no `aws:` prefix. Object tags live in the
//! object's [`ObjectHeaders`](crate::record::ObjectHeaders), so multipart uploads and copies
//! carry them like any other header.

use std::collections::BTreeMap;

use meridian_meta::{Revision, Txn};

use crate::error::{EngineError, EngineResult};
use crate::lifecycle::{earliest, object_expiry};
use crate::object::object_change;
use crate::record::ObjectRecord;
use crate::{Engine, validate_key};

/// Tags by key.
pub type Tags = BTreeMap<String, String>;

pub const MAX_OBJECT_TAGS: usize = 10;
pub const MAX_BUCKET_TAGS: usize = 50;
const MAX_KEY_CHARS: usize = 128;
const MAX_VALUE_CHARS: usize = 256;
/// How often a tag change re-reads the object when writers keep replacing it.
const MAX_ATTEMPTS: usize = 16;

/// Where tags are set: the limits differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TagTarget {
    Object,
    Bucket,
}

/// Checks `pairs` (in the order given) against S3's rules and returns them as [`Tags`].
pub fn tags_from_pairs(pairs: Vec<(String, String)>, target: TagTarget) -> EngineResult<Tags> {
    let invalid = |message: &str| EngineError::InvalidTag(message.to_string());
    match target {
        TagTarget::Object if pairs.len() > MAX_OBJECT_TAGS => {
            return Err(invalid("Object tags cannot be greater than 10"));
        }
        TagTarget::Bucket if pairs.len() > MAX_BUCKET_TAGS => {
            return Err(invalid("Bucket tag count cannot be greater than 50"));
        }
        _ => {}
    }
    let mut tags = Tags::new();
    for (key, value) in pairs {
        if key.is_empty() || !key.chars().all(allowed_char) {
            return Err(invalid("The TagKey you have provided is invalid"));
        }
        if key.chars().count() > MAX_KEY_CHARS {
            return Err(invalid("The TagKey you have provided is too long, max 128"));
        }
        if !value.chars().all(allowed_char) {
            return Err(invalid("The TagValue you have provided is invalid"));
        }
        if value.chars().count() > MAX_VALUE_CHARS {
            return Err(invalid("The TagValue you have provided is too long, max 256"));
        }
        if key.to_ascii_lowercase().starts_with("aws:") {
            return Err(invalid("Your TagKey cannot be prefixed with aws:"));
        }
        if tags.insert(key, value).is_some() {
            return Err(invalid("Cannot provide multiple Tags with the same key"));
        }
    }
    Ok(tags)
}

fn allowed_char(c: char) -> bool {
    c.is_alphanumeric() || c.is_whitespace() || "+-=._:/@".contains(c)
}

/// Checks tags already collected (from a stored or programmatic source) against the object
/// limits.
pub(crate) fn validate_object_tags(tags: &Tags) -> EngineResult<()> {
    let pairs = tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    tags_from_pairs(pairs, TagTarget::Object).map(|_| ())
}

impl Engine {
    /// Replaces an object's tags (S3 PutObjectTagging; empty: DeleteObjectTagging), or those of
    /// one of its versions. The bytes, ETag and modification time stay; the object gets a new
    /// revision.
    pub async fn set_object_tags(
        &self,
        bucket: &str,
        key: &str,
        version_id: Option<&str>,
        tags: Tags,
    ) -> EngineResult<Revision> {
        validate_key(key)?;
        validate_object_tags(&tags)?;
        if let Some(id) = version_id
            && let Some(revision) = self.set_noncurrent_version_tags(bucket, key, id, &tags).await?
        {
            return Ok(revision);
        }
        for _ in 0..MAX_ATTEMPTS {
            let (current, (bucket_record, _)) =
                futures::try_join!(self.read_own_visible(bucket, key), self.bucket(bucket))?;
            // A lifecycle rule the new tags match applies from the object's write, as in S3; an
            // expiry already set stays (it may come from a TTL or an earlier rule).
            let rule_expiry = object_expiry(&bucket_record.lifecycle, key, &tags, current.record.modified_ms);
            let record = ObjectRecord {
                headers: crate::record::ObjectHeaders { tags: tags.clone(), ..current.record.headers.clone() },
                expires_at_ms: earliest(current.record.expires_at_ms, rule_expiry),
                ..current.record.clone()
            };
            let change = object_change(bucket, key, Some(&current), Some((&record, current.inline.as_ref())));
            let mut txn = Txn::new();
            // A version's entry holds the same record as the current copy.
            crate::versions::put_version(bucket, key, &record, None, &mut txn);
            txn.compares.extend(change.compares);
            txn.ops.extend(change.ops);
            let resp = self.meta().txn(txn).await?;
            if resp.succeeded {
                return Ok(resp.revision);
            }
        }
        Err(EngineError::Contended)
    }

    /// Replaces a bucket's tags (S3 PutBucketTagging; empty: DeleteBucketTagging).
    pub async fn set_bucket_tags(&self, bucket: &str, tags: Tags) -> EngineResult<()> {
        self.update_bucket(bucket, |record| {
            record.tags = tags.clone();
            Ok(())
        })
        .await?;
        Ok(())
    }

    pub async fn bucket_tags(&self, bucket: &str) -> EngineResult<Tags> {
        Ok(self.bucket(bucket).await?.0.tags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(n: usize) -> Vec<(String, String)> {
        (0..n).map(|i| (format!("k{i}"), format!("v {i}"))).collect()
    }

    fn message(result: EngineResult<Tags>) -> String {
        match result {
            Err(EngineError::InvalidTag(m)) => m,
            other => panic!("expected InvalidTag, got {other:?}"),
        }
    }

    #[test]
    fn s3_limits_hold_with_its_messages() {
        assert_eq!(tags_from_pairs(pairs(10), TagTarget::Object).unwrap().len(), 10);
        assert_eq!(message(tags_from_pairs(pairs(11), TagTarget::Object)), "Object tags cannot be greater than 10");
        assert_eq!(tags_from_pairs(pairs(50), TagTarget::Bucket).unwrap().len(), 50);
        assert!(message(tags_from_pairs(pairs(51), TagTarget::Bucket)).contains("greater than 50"));
        let one = |k: &str, v: &str| tags_from_pairs(vec![(k.into(), v.into())], TagTarget::Object);
        assert!(one(&"é".repeat(128), &"ü".repeat(256)).is_ok(), "lengths count characters, not bytes");
        assert!(message(one(&"k".repeat(129), "v")).contains("TagKey you have provided is too long"));
        assert!(message(one("k", &"v".repeat(257))).contains("TagValue you have provided is too long"));
        assert!(message(one("", "v")).contains("TagKey you have provided is invalid"));
        assert!(message(one("k", "a<b")).contains("TagValue you have provided is invalid"));
        assert!(message(one("aws:x", "v")).contains("aws:"));
        let dup = vec![("k".to_string(), "1".to_string()), ("k".to_string(), "2".to_string())];
        assert_eq!(message(tags_from_pairs(dup, TagTarget::Object)), "Cannot provide multiple Tags with the same key");
    }
}
