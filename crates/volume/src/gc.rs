//! Garbage collection: keeps the bucket near the size of the live data.
//!
//! Greedy: when log bytes exceed `high` × live bytes, the objects with the least live data are
//! rewritten (their live sectors go through the normal write path, losing to any newer user
//! write) until the projection is under `low` × live. An object is removed only when no
//! retained point still reads it — the head and every snapshot — and only after `grace` has
//! passed since it died, so a snapshot being recorded concurrently is always seen first.
//!
//! Removal deletes the object when it lies before every checkpoint a replay could start from;
//! otherwise it is replaced with a header-only Tombstone, so the log stays gap-free for replays.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;
use tracing::{debug, info};

use crate::error::{Result, StoreError, VolumeError};
use crate::format::{self, HEADER_BYTES, ObjectKind, SECTOR, Trailer};
use crate::manage;
use crate::replay::Listing;
use crate::store::{KeyState, PutCondition};
use crate::volume::Volume;

/// Header-only objects (tombstones, fences) tolerated past the newest checkpoint.
const TOMBSTONES_PER_CHECKPOINT: usize = 32;

#[derive(Debug, Clone)]
pub struct GcConfig {
    pub high: f64,
    pub low: f64,
    pub grace: Duration,
    /// Most data rewritten in one pass, to bound the pass's duration and memory.
    pub max_rewrite_bytes: u64,
}

impl Default for GcConfig {
    fn default() -> Self {
        Self { high: 1.3, low: 1.1, grace: Duration::from_secs(30), max_rewrite_bytes: 256 << 20 }
    }
}

/// State kept between passes.
#[derive(Default)]
pub struct Gc {
    /// Objects with no live data at the head, and since when.
    pending: BTreeMap<u64, Instant>,
    /// Objects each snapshot reads, keyed by (label, seq).
    snapshot_refs: HashMap<(String, u64), BTreeSet<u64>>,
    /// A key rotation this volume was opened in the middle of has been completed.
    rotation_done: bool,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct GcReport {
    pub rewritten_objects: u64,
    pub rewritten_bytes: u64,
    pub deleted: u64,
    pub tombstoned: u64,
    pub checkpoints_deleted: u64,
    pub pending: u64,
    pub log_bytes: u64,
    pub live_bytes: u64,
    /// Objects sealed again under the current key (key rotation).
    pub resealed: u64,
    /// Whether this pass completed a key rotation (the old key is no longer needed).
    pub rotation_finished: bool,
}

impl Gc {
    pub fn new() -> Self {
        Self::default()
    }

    /// Objects some snapshot or fork needs, computing (once) the ones not seen before.
    async fn protected(&mut self, vol: &Volume) -> Result<(BTreeSet<u64>, Vec<u64>)> {
        // Forks are kept like snapshots: each reads the log as it was at its fork point.
        let mut snaps = manage::list_snapshots(vol.store().as_ref(), vol.layout()).await?;
        snaps.extend(manage::list_forks(vol.store().as_ref(), vol.layout()).await?);
        let mut keep = BTreeSet::new();
        let mut points = Vec::new();
        let wanted: BTreeSet<(String, u64)> = snaps.iter().map(|s| (s.label.clone(), s.seq)).collect();
        self.snapshot_refs.retain(|k, _| wanted.contains(k));
        for s in &snaps {
            let k = (s.label.clone(), s.seq);
            if !self.snapshot_refs.contains_key(&k) {
                let live = manage::objects_at(vol.store().as_ref(), vol.layout(), vol.manifest(), s).await?;
                self.snapshot_refs.insert(k.clone(), live.into_keys().collect());
            }
            if let Some(refs) = self.snapshot_refs.get(&k) {
                keep.extend(refs.iter().copied());
            }
            points.push(s.seq);
        }
        Ok((keep, points))
    }

    /// One pass. Rewrites, then removes whatever has been dead for longer than the grace.
    pub async fn run(&mut self, vol: &Arc<Volume>, cfg: &GcConfig) -> Result<GcReport> {
        let mut report = GcReport::default();
        let (keep, points) = self.protected(vol).await?;
        self.rewrite(vol, cfg, &keep, &mut report).await?;
        self.remove(vol, cfg, &keep, &points, &mut report).await?;
        self.reseal(vol, &mut report).await?;
        let objects = vol.objects();
        report.log_bytes = objects.values().map(|o| o.bytes).sum();
        report.live_bytes = objects.values().map(|o| o.live_sectors * SECTOR).sum();
        report.pending = self.pending.len() as u64;
        info!(?report, "gc pass");
        Ok(report)
    }

    async fn rewrite(
        &mut self,
        vol: &Arc<Volume>,
        cfg: &GcConfig,
        keep: &BTreeSet<u64>,
        report: &mut GcReport,
    ) -> Result<()> {
        let durable = vol.durable();
        let objects = vol.objects();
        for (&seq, o) in objects.range(..=durable) {
            if o.live_sectors == 0 && o.data_sectors > 0 && !keep.contains(&seq) {
                self.pending.entry(seq).or_insert_with(Instant::now);
            }
        }
        let total: u64 = objects.values().map(|o| o.bytes).sum();
        let live: u64 = objects.values().map(|o| o.live_sectors * SECTOR).sum();
        if (total as f64) <= cfg.high * (live.max(1) as f64) {
            return Ok(());
        }
        let mut candidates: Vec<(u64, u64, u64)> = objects
            .range(..=durable)
            .filter(|(seq, o)| {
                o.live_sectors > 0
                    && o.live_sectors < o.data_sectors
                    && !keep.contains(seq)
                    && !self.pending.contains_key(seq)
            })
            .map(|(&seq, o)| (seq, o.live_sectors, o.bytes))
            .collect();
        // Least live data first: each byte rewritten frees the most.
        candidates.sort_by(|a, b| (a.1 as f64 / a.2 as f64).total_cmp(&(b.1 as f64 / b.2 as f64)).then(a.0.cmp(&b.0)));
        let mut projected = total;
        let mut chosen = Vec::new();
        let mut budget = cfg.max_rewrite_bytes;
        for (seq, live_sectors, bytes) in candidates {
            if (projected as f64) <= cfg.low * (live as f64) || budget < live_sectors * SECTOR {
                break;
            }
            projected = projected - bytes + live_sectors * SECTOR;
            budget -= live_sectors * SECTOR;
            chosen.push(seq);
        }
        for seq in chosen {
            report.rewritten_bytes += self.rewrite_object(vol, seq).await?;
            report.rewritten_objects += 1;
            self.pending.insert(seq, Instant::now());
        }
        // The copies must be durable before any original can go.
        vol.flush().await
    }

    async fn rewrite_object(&self, vol: &Arc<Volume>, seq: u64) -> Result<u64> {
        let key = vol.layout().log(seq);
        let obj = vol.store().get(&key).await?.data;
        let h = format::decode_header(&key, &obj)?;
        let moves = vol.live_in(seq, &h.entries)?;
        let data: Vec<Bytes> = moves
            .iter()
            .map(|&(_, obj_sector)| {
                let at = HEADER_BYTES + (obj_sector * SECTOR) as usize;
                obj.slice(at..at + SECTOR as usize)
            })
            .collect();
        vol.rewrite_if_unchanged(seq, &moves, &data).await?;
        debug!(seq, sectors = moves.len(), "rewrote live data");
        Ok(moves.len() as u64 * SECTOR)
    }

    /// During a key rotation: seals every object of the volume still under the retiring key
    /// again under the current one (the lease is the holder's to renew, and was written under
    /// the current key when it was taken), then ends the rotation. Everything written since the
    /// rotation started is under the current key already, so one complete walk suffices.
    async fn reseal(&mut self, vol: &Volume, report: &mut GcReport) -> Result<()> {
        let rotating = vol.manifest().encryption.as_ref().is_some_and(|e| e.rotating_from.is_some());
        if !rotating || self.rotation_done {
            return Ok(());
        }
        let (store, layout) = (vol.store().as_ref(), vol.layout());
        if !manage::rotation_in_progress(store, layout).await? {
            self.rotation_done = true;
            return Ok(());
        }
        let lease = layout.lease();
        let keys: Vec<String> =
            store.list(layout.root()).await?.into_iter().map(|o| o.key).filter(|k| *k != lease).collect();
        let mut resealing = futures::stream::iter(keys.into_iter().map(|k| {
            let store = vol.store().clone();
            async move { store.reseal(&k).await }
        }))
        .buffer_unordered(4);
        while let Some(state) = resealing.next().await {
            if state? == KeyState::Retiring {
                report.resealed += 1;
            }
        }
        report.rotation_finished = manage::finish_rotation(store, layout).await?;
        self.rotation_done = true;
        Ok(())
    }

    async fn remove(
        &mut self,
        vol: &Arc<Volume>,
        cfg: &GcConfig,
        keep: &BTreeSet<u64>,
        points: &[u64],
        report: &mut GcReport,
    ) -> Result<()> {
        let store = vol.store().clone();
        let layout = vol.layout();
        let mut listing = Listing::fetch(store.as_ref(), layout).await?;
        // Header-only objects after the newest checkpoint can only go once a newer checkpoint
        // exists; write one when enough of them piled up.
        let husks =
            listing.logs.range(vol.last_checkpoint() + 1..).filter(|(_, size)| **size == HEADER_BYTES as u64).count();
        if husks >= TOMBSTONES_PER_CHECKPOINT {
            vol.checkpoint().await?;
            listing = Listing::fetch(store.as_ref(), layout).await?;
        }
        // Checkpoints replays may start from: the head's and each snapshot's.
        let mut anchors: BTreeSet<u64> = points.iter().filter_map(|&p| listing.base_checkpoint(p)).collect();
        let head_base = vol.last_checkpoint();
        anchors.insert(head_base);
        let min_anchor = points
            .iter()
            .map(|&p| listing.base_checkpoint(p).unwrap_or(0))
            .chain(std::iter::once(head_base))
            .min()
            .unwrap_or(0);
        let objects = vol.objects();
        let ripe: Vec<u64> =
            self.pending.iter().filter(|(_, since)| since.elapsed() >= cfg.grace).map(|(&s, _)| s).collect();
        for seq in ripe {
            let still_dead = objects.get(&seq).is_none_or(|o| o.live_sectors == 0);
            if !still_dead || keep.contains(&seq) {
                self.pending.remove(&seq);
                continue;
            }
            if seq < min_anchor {
                store.delete(&layout.log(seq)).await?;
                vol.drop_object(seq);
                report.deleted += 1;
            } else {
                let header = format::encode_header(&[], Trailer::single(vol.epoch(), seq, ObjectKind::Tombstone));
                put_tombstone(vol, seq, Bytes::from(header)).await?;
                vol.forget_object(seq, HEADER_BYTES as u64);
                report.tombstoned += 1;
            }
            self.pending.remove(&seq);
        }
        // Old tombstones and markers before every anchor can go too.
        for (&seq, &size) in listing.logs.range(..min_anchor) {
            if size == HEADER_BYTES as u64 && !anchors.contains(&seq) {
                store.delete(&layout.log(seq)).await?;
                vol.drop_object(seq);
                report.deleted += 1;
            }
        }
        for &seq in listing.checkpoints.keys() {
            if seq < head_base && !anchors.contains(&seq) {
                store.delete(&layout.checkpoint(seq)).await?;
                report.checkpoints_deleted += 1;
            }
        }
        Ok(())
    }
}

/// Replaces a dead object with a tombstone, but only if it is still the object we examined
/// (written by an epoch not newer than ours).
async fn put_tombstone(vol: &Volume, seq: u64, body: Bytes) -> Result<()> {
    let key = vol.layout().log(seq);
    let cur = match vol.store().get(&key).await {
        Ok(f) => f,
        Err(StoreError::NotFound(_)) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let h = format::decode_header(&key, &cur.data)?;
    if h.trailer.epoch > vol.epoch() {
        return Err(VolumeError::Fenced(h.trailer.epoch));
    }
    vol.store().put(&key, body, PutCondition::IfMatch(cur.etag)).await?;
    Ok(())
}
