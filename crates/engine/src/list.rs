//! ListObjects (v1 and v2): prefix, delimiter with common prefixes, start-after / marker and
//! continuation, page size. Works in chunks over the ordered key space and jumps over a whole
//! common prefix at once instead of reading every key under it.

use std::ops::Bound;

use bytes::Bytes;
use meridian_meta::{RangeRequest, Revision, prefix_end};

use crate::error::EngineResult;
use crate::record::{self, BucketRecord, ObjectRecord};
use crate::{Engine, keys, now_ms};

/// Most entries S3 returns in one page.
pub const MAX_LIST_KEYS: usize = 1000;

#[derive(Clone, Debug, Default)]
pub struct ListRequest {
    pub prefix: String,
    pub delimiter: Option<String>,
    /// List keys strictly after this one (start-after, marker, or a continuation point).
    pub after: Option<String>,
    pub max_keys: usize,
    pub consistency: crate::Consistency,
}

#[derive(Clone, Debug)]
pub struct ListedObject {
    pub key: String,
    pub record: ObjectRecord,
    pub revision: Revision,
}

#[derive(Clone, Debug, Default)]
pub struct ListPage {
    pub objects: Vec<ListedObject>,
    pub common_prefixes: Vec<String>,
    pub is_truncated: bool,
    /// The last key or common prefix in this page: where the next page starts (exclusive).
    pub next_after: Option<String>,
    /// The metadata revision this page reflects.
    pub revision: Revision,
}

pub(crate) enum Entry {
    Object(Box<ListedObject>),
    Prefix(String),
}

impl Engine {
    pub async fn list_objects(&self, bucket: &str, req: &ListRequest) -> EngineResult<ListPage> {
        let (record, _) = self.bucket(bucket).await?;
        let page = self.list_local(bucket, &record, req).await?;
        match &record.shadow {
            Some(source) => self.merge_shadow_listing(bucket, source, req, page).await,
            None => Ok(page),
        }
    }

    async fn list_local(&self, bucket: &str, record: &BucketRecord, req: &ListRequest) -> EngineResult<ListPage> {
        if record.fork_of.is_some() {
            let layers = self.layers(bucket, record, Revision::MAX).await?;
            return self.list_layers(&layers, req).await;
        }
        let reader = self.reader(req.consistency);
        let base = keys::objects_prefix(bucket);
        let max_keys = req.max_keys.min(MAX_LIST_KEYS);
        let delimiter = req.delimiter.as_deref().filter(|d| !d.is_empty());
        let full_prefix = format!("{base}{}", req.prefix);
        let end = match prefix_end(full_prefix.as_bytes()) {
            Some(end) => Bound::Excluded(Bytes::from(end)),
            None => Bound::Unbounded,
        };
        let mut start = Bound::Included(Bytes::from(full_prefix.clone()));
        if let Some(after) = req.after.as_deref().filter(|a| a.as_bytes() >= req.prefix.as_bytes()) {
            start = start_after(&base, after, &req.prefix, delimiter);
        }

        let now = now_ms();
        let mut page = ListPage::default();
        let mut entries: Vec<Entry> = Vec::new();
        loop {
            let want = (max_keys + 1 - entries.len()).clamp(16, MAX_LIST_KEYS + 1);
            let resp = reader.range(RangeRequest { start: start.clone(), end: end.clone(), limit: want }).await?;
            page.revision = resp.revision;
            let mut jumped = false;
            for kv in &resp.kvs {
                // Skips markers of the old layout, which sit under `o/`.
                let Some((_, key)) = keys::parse_object_key(&kv.key) else {
                    start = Bound::Excluded(kv.key.clone());
                    continue;
                };
                let key = key.to_string();
                if let Some(prefix) = delimiter.and_then(|d| common_prefix(&key, &req.prefix, d)) {
                    entries.push(Entry::Prefix(prefix.clone()));
                    // Skip every other key under this prefix with one jump.
                    start = match prefix_end(format!("{base}{prefix}").as_bytes()) {
                        Some(next) => Bound::Included(Bytes::from(next)),
                        None => return Ok(finish(page, entries, max_keys, false)),
                    };
                    jumped = true;
                    break;
                }
                start = Bound::Excluded(kv.key.clone());
                let record: ObjectRecord = record::decode(&kv.value)?;
                if record.is_expired(now) {
                    continue;
                }
                let object = ListedObject { key, record, revision: kv.mod_revision };
                entries.push(Entry::Object(Box::new(object)));
                if entries.len() > max_keys {
                    break;
                }
            }
            if entries.len() > max_keys {
                return Ok(finish(page, entries, max_keys, true));
            }
            if !jumped && !resp.more {
                return Ok(finish(page, entries, max_keys, false));
            }
        }
    }
}

/// Where a listing resumes after `after`. A marker that is itself a common prefix resumes after
/// everything under it, so a continued listing never repeats that prefix.
fn start_after(base: &str, after: &str, prefix: &str, delimiter: Option<&str>) -> Bound<Bytes> {
    if let Some(d) = delimiter
        && common_prefix(after, prefix, d).as_deref() == Some(after)
        && let Some(next) = prefix_end(format!("{base}{after}").as_bytes())
    {
        return Bound::Included(Bytes::from(next));
    }
    Bound::Excluded(Bytes::from(format!("{base}{after}")))
}

/// The common prefix `key` rolls up into: the listing prefix plus everything up to and
/// including the first delimiter after it.
pub(crate) fn common_prefix(key: &str, prefix: &str, delimiter: &str) -> Option<String> {
    let rest = key.strip_prefix(prefix)?;
    let at = rest.find(delimiter)?;
    Some(format!("{prefix}{}", &rest[..at + delimiter.len()]))
}

pub(crate) fn finish(mut page: ListPage, mut entries: Vec<Entry>, max_keys: usize, truncated: bool) -> ListPage {
    entries.truncate(max_keys);
    page.is_truncated = truncated;
    page.next_after = entries.last().map(|e| match e {
        Entry::Object(o) => o.key.clone(),
        Entry::Prefix(p) => p.clone(),
    });
    for entry in entries {
        match entry {
            Entry::Object(o) => page.objects.push(*o),
            Entry::Prefix(p) => page.common_prefixes.push(p),
        }
    }
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_prefixes() {
        assert_eq!(common_prefix("a/b/c", "", "/"), Some("a/".into()));
        assert_eq!(common_prefix("a/b/c", "a/", "/"), Some("a/b/".into()));
        assert_eq!(common_prefix("a/b", "a/", "/"), None);
        assert_eq!(common_prefix("photos2024x", "photos", "x"), Some("photos2024x".into()));
        assert_eq!(common_prefix("a--b--c", "", "--"), Some("a--".into()));
    }
}
