//! A stream of changes to the objects under a prefix, in revision order: puts, deletes and
//! expiries, resumable from any revision still in history.

use std::pin::Pin;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use meridian_meta::{EventKind, MetaError, RangeRequest, WatchEvent};

use crate::error::{EngineError, EngineResult};
use crate::record::{self, ObjectRecord};
use crate::ttl::ExpiredMarker;
use crate::{Engine, keys};

/// One change to one key: the KV wire type (the name `Change` keeps it apart from the metadata
/// store's own watch events).
pub use meridian_kv_types::{Event as Change, EventKind as ChangeKind};

pub type ChangeStream = Pin<Box<dyn Stream<Item = EngineResult<Change>> + Send>>;

fn compacted(err: MetaError) -> EngineError {
    match err {
        MetaError::Compacted { requested, oldest } => EngineError::RevisionCompacted { requested, oldest },
        other => other.into(),
    }
}

impl Engine {
    /// Changes to keys under `prefix` in `bucket` with revision `>= since` (0: from now on).
    pub async fn watch(&self, bucket: &str, prefix: &str, since: u64) -> EngineResult<ChangeStream> {
        self.bucket(bucket).await?;
        let base = keys::objects_prefix(bucket);
        let events =
            self.meta().watch(RangeRequest::prefix(format!("{base}{prefix}")), since).await.map_err(compacted)?;
        let mut translator = Translator { base_len: base.len(), expired: None };
        Ok(Box::pin(events.filter_map(move |event| {
            let change = match event {
                Ok(event) => translator.translate(event).transpose(),
                Err(err) => Some(Err(compacted(err))),
            };
            futures::future::ready(change)
        })))
    }
}

struct Translator {
    base_len: usize,
    /// The object key and revision of the last expiry, whose paired delete is not reported.
    expired: Option<(Bytes, u64)>,
}

impl Translator {
    fn translate(&mut self, event: WatchEvent) -> EngineResult<Option<Change>> {
        let raw_key = &event.kv.key;
        let key = String::from_utf8_lossy(raw_key.get(self.base_len..).unwrap_or_default()).into_owned();
        let revision = event.kv.mod_revision;
        if let Some(object_key) = key.strip_suffix(keys::EXPIRED_MARKER) {
            if event.kind == EventKind::Delete {
                return Ok(None);
            }
            let marker: ExpiredMarker = record::decode(&event.kv.value)?;
            let object = raw_key.slice(..raw_key.len() - keys::EXPIRED_MARKER.len());
            self.expired = Some((object, revision));
            return Ok(Some(change(ChangeKind::Expire, object_key.to_string(), revision, Some(&marker.record))));
        }
        match event.kind {
            EventKind::Put => {
                let record: ObjectRecord = record::decode(&event.kv.value)?;
                Ok(Some(change(ChangeKind::Put, key, revision, Some(&record))))
            }
            EventKind::Delete => {
                if self.expired.as_ref().is_some_and(|(k, r)| k == raw_key && *r == revision) {
                    return Ok(None);
                }
                Ok(Some(change(ChangeKind::Delete, key, revision, None)))
            }
        }
    }
}

fn change(kind: ChangeKind, key: String, revision: u64, record: Option<&ObjectRecord>) -> Change {
    Change {
        kind,
        key,
        revision,
        size: record.map(|r| r.size),
        etag: record.map(|r| r.etag.clone()),
        expires_at_ms: record.and_then(|r| r.expires_at_ms),
    }
}
