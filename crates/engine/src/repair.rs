//! Background copies of objects' bytes: for regions of a multi-region bucket that missed a
//! write acknowledged on the bucket's quorum, and for the extra regions of a global bucket with
//! `replicas = N`.
//!
//! Such a write commits, with the object's record, a `y/<bucket>/<key>\0<blob>` marker naming
//! the write's first blob and the regions without a copy (one marker per write, so a newer
//! version of a key never replaces an older version's marker). Every node looks at the markers
//! every [`REPAIR_INTERVAL`]; one that names its region finds the record owning the blob (`x/`):
//! the current object, or, in a versioned bucket, the version's `v/` entry. It pulls every blob
//! of that record from a holder (through its chunk cache), stores each under the same id, checks
//! it against the record's chunk digests and commits itself as a holder (of the version's entry,
//! and of the current object too when that is the same version), comparing the records'
//! revisions. A blob freed meanwhile (an unversioned object overwritten or deleted, a version
//! removed) drops the marker instead. A region still down is retried at the next round.
//!
//! Copies are also lost: the copy audit ([`Engine::spawn_copy_audit`]) on every node walks the
//! objects of buckets that keep several copies (every version, in a versioned bucket) and
//! commits a new marker for one whose surviving holders are fewer than its bucket asks for; of
//! all nodes, the one with the lowest id in the first region still holding it does it, so
//! nearness is measured from the bytes. A holder survives while its node's heartbeat is younger
//! than [`crate::EngineConfig::holder_lost_after`] (for bytes on a shared regional store: while
//! any node of its region's is).

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use meridian_meta::{Compare, Op, RangeRequest, Revision, Txn};
use serde::{Deserialize, Serialize};

use crate::cluster::NodeStatus;
use crate::error::{EngineError, EngineResult};
use crate::ingest::{IngestLimits, IngestedData, Integrity, ingest};
use crate::object::{Span, spans};
use crate::record::{self, BucketRecord, DataLayout, Holder, Location, ObjectRecord, VersionRecord};
use crate::{Consistency, Engine, keys};

/// How often a node looks for copies its region still owes.
pub const REPAIR_INTERVAL: Duration = Duration::from_secs(2);
/// Markers read per round.
const REPAIR_PAGE: usize = 64;
/// How long the shortest round trip measured to a node stands for its distance.
const ROUND_TRIP_KEPT_FOR: Duration = Duration::from_secs(600);
/// Object records the copy audit reads per round (it goes on from there at the next round).
const AUDIT_BUDGET: usize = 10_000;

/// The value of a `y/` marker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repair {
    /// The object's first blob (its only one, or its first part's): which write the marker is for.
    pub blob: meridian_blob::BlobId,
    /// Regions that still need a copy.
    pub regions: Vec<String>,
}

/// How many regions must hold an object's bytes, by its bucket's settings (1: no copies kept).
fn copies_wanted(bucket: &BucketRecord) -> usize {
    match &bucket.location {
        Location::MultiRegion { regions, .. } => regions.len(),
        Location::Global => bucket.replicas.unwrap_or(1) as usize,
        Location::Pinned { .. } => 1,
    }
}

/// The regions that hold every blob of an object, among the holders `survives` accepts.
fn holding_regions(record: &ObjectRecord, survives: impl Fn(&Holder) -> bool) -> BTreeSet<String> {
    let spans = spans(record);
    let mut regions: Option<BTreeSet<String>> = None;
    for span in &spans {
        let here: BTreeSet<String> = span.holders.iter().filter(|h| survives(h)).map(|h| h.region.clone()).collect();
        regions = Some(match regions {
            None => here,
            Some(before) => before.intersection(&here).cloned().collect(),
        });
    }
    regions.unwrap_or_default()
}

impl Engine {
    /// The marker to commit with an object whose copies miss regions its bucket asks for.
    pub(crate) async fn repair_op(
        &self,
        bucket: &str,
        key: &str,
        bucket_record: &BucketRecord,
        record: &ObjectRecord,
    ) -> EngineResult<Option<Op>> {
        if copies_wanted(bucket_record) <= 1 || matches!(record.data, DataLayout::Inline) {
            return Ok(None);
        }
        let have = holding_regions(record, |_| true);
        // Only a global bucket's replicas are placed by distance: a multi-region write needs no
        // read of the registry.
        let nodes = match bucket_record.location {
            Location::MultiRegion { .. } => Vec::new(),
            _ => self.nodes_at(Consistency::Local).await?,
        };
        Ok(self
            .marker_for(bucket_record, record, &have, &nodes)
            .map(|m| Op::put(keys::repair(bucket, key, m.blob), record::encode(&m))))
    }

    /// The marker naming the regions that should make a copy, if any: a multi-region bucket's
    /// listed regions without one; for a global bucket with replicas, the nearest regions with a
    /// live node, as many as copies are missing.
    fn marker_for(
        &self,
        bucket: &BucketRecord,
        record: &ObjectRecord,
        have: &BTreeSet<String>,
        nodes: &[NodeStatus],
    ) -> Option<Repair> {
        let blob = *record.data.blobs().first()?;
        let regions: Vec<String> = match &bucket.location {
            Location::MultiRegion { regions, .. } => regions.iter().filter(|r| !have.contains(*r)).cloned().collect(),
            _ => {
                let missing = copies_wanted(bucket).saturating_sub(have.len());
                self.regions_by_distance(nodes).into_iter().filter(|r| !have.contains(r)).take(missing).collect()
            }
        };
        (!regions.is_empty()).then_some(Repair { blob, regions })
    }

    /// Regions with a live node, nearest first (by the shortest round trip measured to one of
    /// their nodes; unmeasured ones last, by name); this node's region first of all.
    pub(crate) fn regions_by_distance(&self, nodes: &[NodeStatus]) -> Vec<String> {
        let here = &self.config().node.region;
        let mut by_region: std::collections::BTreeMap<&str, i64> = std::collections::BTreeMap::new();
        for node in nodes.iter().filter(|n| n.healthy) {
            let rtt =
                if &node.record.region == here { -1 } else { self.round_trip(&node.record.id).unwrap_or(i64::MAX) };
            let best = by_region.entry(&node.record.region).or_insert(rtt);
            *best = (*best).min(rtt);
        }
        let mut regions: Vec<(&str, i64)> = by_region.into_iter().collect();
        regions.sort_by_key(|(name, rtt)| (*rtt, *name));
        regions.into_iter().map(|(name, _)| name.to_string()).collect()
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
                    && let Err(e) = self.repair_one(bucket, key, &kv.key, &marker, kv.mod_revision).await
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

    /// Makes this region's copy of the write a marker names: the current object, or a version
    /// (current or not) of a versioned bucket, found through the owner of the marker's blob.
    async fn repair_one(
        &self,
        bucket: &str,
        key: &str,
        marker_key: &Bytes,
        marker: &Repair,
        marker_revision: u64,
    ) -> EngineResult<()> {
        let owner = self.meta().get(&keys::blob_ref(marker.blob)).await?.map(|kv| kv.value);
        let token = owner.as_deref().and_then(|owner| match keys::parse_version_key(owner) {
            Some((b, k, Some(token))) if b == bucket && k == key => Some(token.to_string()),
            _ => None,
        });
        if let Some(token) = token {
            return self.repair_version(bucket, key, &token, marker_key, marker, marker_revision).await;
        }
        if owner.as_deref() != Some(keys::object(bucket, key).as_ref()) {
            // Freed, or kept only for a snapshot: nothing left to copy.
            return self.drop_marker(marker_key, marker_revision).await;
        }
        let current = self.read_current(bucket, key).await?;
        let Some(current) = current.filter(|c| c.record.data.blobs().first() == Some(&marker.blob)) else {
            // Overwritten or deleted since: nothing left to copy.
            return self.drop_marker(marker_key, marker_revision).await;
        };
        for span in spans(&current.record) {
            if !self.is_local(&span.holders) {
                self.pull_copy(&span).await?;
            }
        }
        let mut record = current.record.clone();
        self.hold_here(&mut record.data);
        let object_key = keys::object(bucket, key);
        let txn = Txn::new()
            .when(Compare::mod_revision_is(object_key.clone(), current.revision))
            .then(Op::put(object_key, record::encode(&record)));
        self.commit_copy(bucket, key, txn, marker_key, marker, marker_revision).await
    }

    /// [`Engine::repair_one`] for version `token`: its `v/` entry records the copy, and so does
    /// the current object when it is that version.
    async fn repair_version(
        &self,
        bucket: &str,
        key: &str,
        token: &str,
        marker_key: &Bytes,
        marker: &Repair,
        marker_revision: u64,
    ) -> EngineResult<()> {
        let entry = keys::version(bucket, key, token);
        let object_key = keys::object(bucket, key);
        let (mut kvs, _) = self.meta().get_many(&[entry.clone(), object_key.clone()]).await?;
        let current_kv = kvs.pop().flatten();
        let Some(version_kv) = kvs.pop().flatten() else {
            return self.drop_marker(marker_key, marker_revision).await;
        };
        let mut version: VersionRecord = record::decode(&version_kv.value)?;
        let Some(object) = version.object.as_mut() else {
            return self.drop_marker(marker_key, marker_revision).await;
        };
        for span in spans(object) {
            if !self.is_local(&span.holders) {
                self.pull_copy(&span).await?;
            }
        }
        self.hold_here(&mut object.data);
        let mut txn = Txn::new()
            .when(Compare::mod_revision_is(entry.clone(), version_kv.mod_revision))
            .then(Op::put(entry, record::encode(&version)));
        if let Some(kv) = current_kv {
            let mut current: ObjectRecord = record::decode(&kv.value)?;
            if current.version.as_ref().is_some_and(|v| v.token == token) {
                self.hold_here(&mut current.data);
                txn = txn
                    .when(Compare::mod_revision_is(object_key.clone(), kv.mod_revision))
                    .then(Op::put(object_key, record::encode(&current)));
            }
        }
        self.commit_copy(bucket, key, txn, marker_key, marker, marker_revision).await
    }

    /// Commits `txn` (this region's copy recorded) with the marker's update: this region taken
    /// off it, or the marker deleted when no region is left.
    async fn commit_copy(
        &self,
        bucket: &str,
        key: &str,
        txn: Txn,
        marker_key: &Bytes,
        marker: &Repair,
        marker_revision: u64,
    ) -> EngineResult<()> {
        let here = &self.config().node.region;
        let rest =
            Repair { blob: marker.blob, regions: marker.regions.iter().filter(|r| *r != here).cloned().collect() };
        let txn = txn.when(Compare::mod_revision_is(marker_key.clone(), marker_revision));
        let txn = match rest.regions.is_empty() {
            true => txn.then(Op::delete(marker_key.clone())),
            false => txn.then(Op::put(marker_key.clone(), record::encode(&rest))),
        };
        if !self.meta().txn(txn).await?.succeeded {
            // Changed meanwhile: the next round looks again (an orphaned copy goes with the
            // change follower's deletion of the freed blob, or the orphan scan).
            return Ok(());
        }
        tracing::info!(bucket, key, blob = %marker.blob, "made this region's copy of an object's bytes");
        Ok(())
    }

    async fn drop_marker(&self, marker_key: &Bytes, marker_revision: u64) -> EngineResult<()> {
        let txn = Txn::new().when(Compare::mod_revision_is(marker_key.clone(), marker_revision));
        self.meta().txn(txn.then(Op::delete(marker_key.clone()))).await?;
        Ok(())
    }

    /// Adds this node as a holder of every blob of `data` that no node of its region holds.
    fn hold_here(&self, data: &mut DataLayout) {
        for holders in holder_lists(data) {
            if !self.is_local(holders) {
                holders.extend(self.here());
            }
        }
    }

    /// Reads one blob of an object from a holder and stores it here under the same id, as
    /// stored (sealed bytes stay sealed), checked against the record's chunk digests.
    async fn pull_copy(&self, span: &Span) -> EngineResult<()> {
        let (body, _) = self.open_span(span, 0, span.blob_len).await?;
        let limits = IngestLimits { blob_id: Some(span.blob), ..IngestLimits::to_blob(None) };
        let copied = match ingest(self.blobs(), body, Integrity::default(), limits).await {
            Err(EngineError::Blob(meridian_blob::BlobError::Exists(_))) => return Ok(()), // pulled before
            other => other?,
        };
        if copied.digests != span.digests {
            if let IngestedData::Blob(blob) = copied.data {
                self.delete_blobs_now(vec![blob]);
            }
            return Err(EngineError::Corrupt(format!(
                "the copy of blob {} does not match its recorded digests",
                span.blob
            )));
        }
        Ok(())
    }

    /// Walks the objects of buckets that keep several copies (every version, in a versioned
    /// bucket) and marks those that lost copies (those this node audits: [`Engine::audits_for`]).
    pub(crate) fn spawn_copy_audit(&self) {
        let interval = (self.config().holder_lost_after / 2).clamp(Duration::from_secs(1), Duration::from_secs(60));
        let engine = self.clone();
        tokio::spawn(async move {
            let mut cursor: Option<(String, Bytes)> = None;
            loop {
                tokio::time::sleep(interval).await;
                match engine.audit_round(cursor.take()).await {
                    Ok(next) => cursor = next,
                    Err(e) => tracing::debug!(error = %e, "copy audit round failed; retried"),
                }
            }
        });
    }

    /// One round of the audit, from `cursor` (a bucket and the last record key looked at);
    /// returns where the next round goes on (`None`: from the start).
    async fn audit_round(&self, cursor: Option<(String, Bytes)>) -> EngineResult<Option<(String, Bytes)>> {
        let nodes = self.nodes_at(Consistency::Local).await?;
        // Nodes silent for longer than `holder_lost_after` neither count as holders nor get
        // new copies to make.
        let lost_after = self.config().holder_lost_after.as_millis() as i64;
        let nodes: Vec<NodeStatus> =
            nodes.into_iter().filter(|n| n.healthy && n.heartbeat_age_ms < lost_after).collect();
        let mut buckets: Vec<(String, BucketRecord)> =
            self.list_buckets().await?.into_iter().filter(|(_, b)| copies_wanted(b) > 1).collect();
        if let Some((from, _)) = &cursor {
            buckets.retain(|(name, _)| name >= from);
        }
        let mut budget = AUDIT_BUDGET;
        let mut after = cursor.map(|(_, key)| key);
        for (name, bucket) in buckets {
            // A versioned bucket's records are its versions (the current one included).
            let versioned = bucket.versioning.is_some();
            let prefix = if versioned { keys::versions_prefix(&name) } else { keys::objects_prefix(&name) };
            let mut request = RangeRequest::prefix(prefix).limit(REPAIR_PAGE * 4);
            if let Some(key) = after.take() {
                request = request.after(key);
            }
            loop {
                let page = self.reader(Consistency::Local).range(request.clone()).await?;
                for kv in &page.kvs {
                    let audited = match versioned {
                        true => match keys::parse_version_key(&kv.key) {
                            Some((_, key, Some(_))) => {
                                record::decode::<VersionRecord>(&kv.value)?.object.map(|o| (key, o))
                            }
                            _ => None,
                        },
                        false => match keys::parse_object_key(&kv.key) {
                            Some((_, key)) => Some((key, record::decode::<ObjectRecord>(&kv.value)?)),
                            None => None,
                        },
                    };
                    if let Some((key, record)) = audited {
                        let at = (&kv.key, kv.mod_revision);
                        self.audit_object(&name, key, &bucket, &record, at, &nodes).await?;
                    }
                }
                budget = budget.saturating_sub(page.kvs.len());
                let Some(last) = page.kvs.last() else { break };
                if budget == 0 {
                    return Ok(Some((name.clone(), last.key.clone())));
                }
                if !page.more {
                    break;
                }
                request = request.after(last.key.clone());
            }
        }
        Ok(None)
    }

    /// Commits a marker for an object (or version) whose surviving copies are fewer than its
    /// bucket asks for, unless one already names the regions it would. `at`: the record's key
    /// and revision, compared on commit. `nodes`: the live ones.
    async fn audit_object(
        &self,
        bucket: &str,
        key: &str,
        bucket_record: &BucketRecord,
        record: &ObjectRecord,
        at: (&Bytes, Revision),
        nodes: &[NodeStatus],
    ) -> EngineResult<()> {
        if matches!(record.data, DataLayout::Inline) || record.is_expired(crate::now_ms()) {
            return Ok(());
        }
        let survives = |holder: &Holder| {
            nodes.iter().any(|n| match &holder.store {
                // Bytes on a shared store outlive their writer: any node of the region reads them.
                Some(_) => n.record.region == holder.region,
                None => n.record.id == holder.node,
            })
        };
        let have = holding_regions(record, survives);
        if have.len() >= copies_wanted(bucket_record) || !self.audits_for(&have, nodes) {
            return Ok(());
        }
        let Some(marker) = self.marker_for(bucket_record, record, &have, nodes) else { return Ok(()) };
        let marker_key = keys::repair(bucket, key, marker.blob);
        let existing = self.reader(Consistency::Local).get(&marker_key).await?;
        let unchanged_marker = match &existing {
            Some(kv) => {
                let pending: Repair = record::decode(&kv.value)?;
                if marker.regions.iter().all(|r| pending.regions.contains(r)) {
                    return Ok(()); // already owed by the regions that would make them
                }
                Compare::mod_revision_is(marker_key.clone(), kv.mod_revision)
            }
            None => Compare::absent(marker_key.clone()),
        };
        let txn = Txn::new()
            .when(Compare::mod_revision_is(at.0.clone(), at.1))
            .when(unchanged_marker)
            .then(Op::put(marker_key, record::encode(&marker)));
        if self.meta().txn(txn).await?.succeeded {
            tracing::info!(bucket, key, regions = ?marker.regions, "an object lost copies of its bytes; new ones are owed");
        }
        Ok(())
    }

    /// Sets how many regions keep a copy of a global bucket's objects (`None` or 1: the
    /// writer's only). Objects already written get their copies from the copy audit.
    pub async fn set_bucket_replicas(&self, bucket: &str, replicas: Option<u32>) -> EngineResult<BucketRecord> {
        if replicas.is_some_and(|n| !(1..=record::MAX_REPLICAS).contains(&n)) {
            return Err(EngineError::InvalidArgument(format!("replicas must be from 1 to {}", record::MAX_REPLICAS)));
        }
        self.update_bucket(bucket, |record| match &record.location {
            Location::Global => {
                record.replicas = replicas.filter(|n| *n > 1);
                Ok(())
            }
            other => Err(EngineError::InvalidArgument(format!(
                "replicas apply to global buckets; this bucket's location is {other}"
            ))),
        })
        .await
    }

    /// Whether this node is the one to mark an object whose copies are in `have`: the live
    /// node with the lowest id in the first of those regions, so that "nearest" is measured
    /// from where the bytes are.
    fn audits_for(&self, have: &BTreeSet<String>, nodes: &[NodeStatus]) -> bool {
        let Some(region) = have.iter().next() else { return false };
        let auditor = nodes.iter().filter(|n| &n.record.region == region).map(|n| &n.record.id).min();
        auditor == Some(&self.config().node.node)
    }

    /// Records the shortest round trip measured to a node.
    /// A busy machine only lengthens round trips, so the shortest one seen in the last
    /// [`ROUND_TRIP_KEPT_FOR`] is the distance.
    pub(crate) fn note_round_trip(&self, node: &str, round_trip_ms: i64) {
        if let Ok(mut known) = self.inner.round_trips.lock() {
            let entry = known.entry(node.to_string()).or_insert((round_trip_ms, std::time::Instant::now()));
            if round_trip_ms <= entry.0 || entry.1.elapsed() > ROUND_TRIP_KEPT_FOR {
                *entry = (round_trip_ms, std::time::Instant::now());
            }
        }
    }

    pub(crate) fn round_trip(&self, node: &str) -> Option<i64> {
        self.inner.round_trips.lock().ok()?.get(node).map(|(ms, _)| *ms)
    }
}

/// The holder list of every blob of an object, to add a holder to.
fn holder_lists(data: &mut DataLayout) -> Vec<&mut Vec<Holder>> {
    match data {
        DataLayout::Inline => Vec::new(),
        DataLayout::Blob { holders, .. } => vec![holders],
        DataLayout::Parts { parts } => parts.iter_mut().map(|p| &mut p.holders).collect(),
    }
}
