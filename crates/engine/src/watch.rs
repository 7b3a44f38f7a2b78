//! A stream of changes to the objects under a prefix, in revision order: puts, deletes and
//! expiries, resumable from any revision still in history.
//!
//! The store's watch sees the reaper's removal of an expired object as a delete; the marker the
//! reaper writes in the same transaction (under `m/`, see [`crate::keys`]) tells the two apart.
//! Markers live for [`crate::ttl::MARKER_LIFETIME`], so an expiry replayed from further back in
//! history is reported as a delete.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use meridian_meta::{EventKind, MetaError, RangeRequest, Revision, WatchEvent};

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
        let range = RangeRequest::prefix(format!("{}{prefix}", keys::objects_prefix(bucket)));
        let events = self.meta().watch(range, since).await.map_err(compacted)?;
        let engine = self.clone();
        let changes = events.then(move |event| {
            let engine = engine.clone();
            async move {
                match event {
                    Ok(event) => engine.change_of(event).await.transpose(),
                    Err(err) => Some(Err(compacted(err))),
                }
            }
        });
        Ok(Box::pin(changes.filter_map(futures::future::ready)))
    }

    /// The change a store event stands for; `None` for keys that are not objects (markers of
    /// the old layout, which sat under `o/`).
    async fn change_of(&self, event: WatchEvent) -> EngineResult<Option<Change>> {
        let Some((bucket, key)) = keys::parse_object_key(&event.kv.key) else { return Ok(None) };
        let revision = event.kv.mod_revision;
        let change = match event.kind {
            EventKind::Put => {
                let record: ObjectRecord = record::decode(&event.kv.value)?;
                change(ChangeKind::Put, key, revision, Some(&record))
            }
            EventKind::Delete => match self.expiry_at(bucket, key, revision).await? {
                Some(marker) => change(ChangeKind::Expire, key, revision, Some(&marker.record)),
                None => change(ChangeKind::Delete, key, revision, None),
            },
        };
        Ok(Some(change))
    }

    /// The marker of `bucket/key` written at `revision`: present when the delete at that
    /// revision was the reaper removing the object on expiry.
    pub(crate) async fn expiry_at(
        &self,
        bucket: &str,
        key: &str,
        revision: Revision,
    ) -> EngineResult<Option<ExpiredMarker>> {
        let markers = self.meta().range(RangeRequest::prefix(keys::expired_markers_of(bucket, key))).await?;
        markers.kvs.iter().find(|kv| kv.mod_revision == revision).map(|kv| record::decode(&kv.value)).transpose()
    }
}

fn change(kind: ChangeKind, key: &str, revision: u64, record: Option<&ObjectRecord>) -> Change {
    Change {
        kind,
        key: key.to_string(),
        revision,
        size: record.map(|r| r.size),
        etag: record.map(|r| r.etag.clone()),
        expires_at_ms: record.and_then(|r| r.expires_at_ms),
    }
}
