//! Recovery: rebuild the extent map at a log position from the newest usable checkpoint plus
//! the log objects after it, in order, stopping at the first gap (or at an object from an older
//! fencing epoch, which only a writer that lost its lease could have left there).

use std::collections::BTreeMap;
use std::path::Path;

use futures::StreamExt;
use tracing::{debug, info};

use crate::error::{Result, StoreError, VolumeError};
use crate::format::{self, CHECKPOINT_HEADER, HEADER_BYTES, Header, Layout, Manifest, ParentRef, RUN_BYTES, SECTOR};
use crate::store::ObjectStore;
use crate::table::{self, ExtentTable};

/// What the bucket holds for a volume, from two listings.
#[derive(Debug, Default, Clone)]
pub struct Listing {
    /// Log objects: seq -> size in bytes.
    pub logs: BTreeMap<u64, u64>,
    /// Checkpoints: seq -> size in bytes.
    pub checkpoints: BTreeMap<u64, u64>,
}

impl Listing {
    pub async fn fetch(store: &dyn ObjectStore, layout: &Layout) -> Result<Self> {
        let mut out = Listing::default();
        let lp = layout.log_prefix();
        for o in store.list(&lp).await? {
            if let Some(seq) = format::parse_seq(&o.key, &lp) {
                out.logs.insert(seq, o.size);
            }
        }
        let cp = layout.checkpoint_prefix();
        for o in store.list(&cp).await? {
            if let Some(seq) = format::parse_seq(&o.key, &cp) {
                out.checkpoints.insert(seq, o.size);
            }
        }
        Ok(out)
    }

    /// Newest checkpoint at or before `limit` whose log object exists (a checkpoint written
    /// before its log object, e.g. by an interrupted rollback, does not count).
    pub fn base_checkpoint(&self, limit: u64) -> Option<u64> {
        self.checkpoints.range(..=limit).rev().map(|(s, _)| *s).find(|s| self.logs.contains_key(s))
    }
}

/// The result of a replay.
pub struct Replayed {
    pub table: ExtentTable,
    /// Last log object applied (0 for an empty volume).
    pub end: u64,
    /// Highest epoch seen.
    pub epoch: u64,
    /// Checkpoint the replay started from (0 = none).
    pub base: u64,
    pub listing: Listing,
}

/// Reads a header from the bucket.
pub async fn fetch_header(store: &dyn ObjectStore, layout: &Layout, seq: u64) -> Result<Header> {
    let key = layout.log(seq);
    let raw = store.get_range(&key, 0, HEADER_BYTES as u64).await?;
    let h = format::decode_header(&key, &raw)?;
    if h.trailer.seq != seq {
        return Err(VolumeError::Corrupt { what: key, detail: format!("trailer says it is object {}", h.trailer.seq) });
    }
    Ok(h)
}

/// Applies one log object's header to the table. Entries past the end of a shrunk volume are
/// dropped.
pub fn apply_header(table: &mut ExtentTable, seq: u64, h: &Header) -> Result<()> {
    let sectors = table.sectors();
    let mut data_sector = 0u64;
    for e in &h.entries {
        let first = e.addr / SECTOR;
        let n = u64::from(e.len) / SECTOR;
        for i in 0..n {
            let s = first + i;
            if s >= sectors {
                break;
            }
            let v = if e.zero { 0 } else { table::encode(seq, data_sector + i) };
            table.set(s, v)?;
        }
        if !e.zero {
            data_sector += n;
        }
    }
    Ok(())
}

/// Loads checkpoint `seq` into an empty table; returns its epoch.
async fn load_checkpoint(
    store: &dyn ObjectStore,
    layout: &Layout,
    seq: u64,
    size: u64,
    table: &mut ExtentTable,
) -> Result<u64> {
    let key = layout.checkpoint(seq);
    let head = store.get_range(&key, 0, CHECKPOINT_HEADER as u64).await?;
    let h = format::decode_checkpoint_header(&key, &head)?;
    let want = CHECKPOINT_HEADER as u64 + h.runs * RUN_BYTES as u64;
    if h.seq != seq || want != size {
        return Err(VolumeError::Corrupt {
            what: key,
            detail: format!("checkpoint header (seq {}, {} runs) does not match", h.seq, h.runs),
        });
    }
    // Stream the runs in bounded chunks: a checkpoint of a large, fragmented volume can be
    // far bigger than we want in memory.
    const CHUNK_RUNS: u64 = 43_690; // ~1 MiB
    let sectors = table.sectors();
    let mut done = 0u64;
    while done < h.runs {
        let n = CHUNK_RUNS.min(h.runs - done);
        let start = CHECKPOINT_HEADER as u64 + done * RUN_BYTES as u64;
        let chunk = store.get_range(&key, start, n * RUN_BYTES as u64).await?;
        for raw in chunk.chunks_exact(RUN_BYTES) {
            let r = format::decode_run(raw);
            for i in 0..u64::from(r.len) {
                let s = r.sector + i;
                if s >= sectors {
                    break;
                }
                table.set(s, table::encode(r.seq, u64::from(r.obj_sector) + i))?;
            }
        }
        done += n;
    }
    Ok(h.epoch)
}

/// Rebuilds the map as of log position `limit` (u64::MAX = the end of the log) in a fresh table
/// file at `table_path`.
pub async fn replay(
    store: &dyn ObjectStore,
    layout: &Layout,
    manifest: &Manifest,
    table_path: &Path,
    cache_pages: usize,
    limit: u64,
) -> Result<Replayed> {
    let listing = Listing::fetch(store, layout).await?;
    let mut table = ExtentTable::create(table_path, manifest.sectors(), cache_pages)?;
    let base = listing.base_checkpoint(limit).unwrap_or(0);
    let mut epoch = 0;
    // Where the volume's own log starts: after its checkpoint, or after a fork's fork point.
    let mut start = base;
    if base > 0 {
        let size = listing.checkpoints.get(&base).copied().unwrap_or(0);
        epoch = load_checkpoint(store, layout, base, size, &mut table).await?;
        debug!(base, "checkpoint loaded");
    } else if let Some(parent) = &manifest.parent {
        Box::pin(load_parent(store, layout, parent, table_path, cache_pages, &mut table)).await?;
        start = parent.seq;
    }
    let seqs: Vec<u64> = (start + 1..=limit).take_while(|s| listing.logs.contains_key(s)).collect();
    // Fetch headers eight at a time but apply them strictly in order.
    let mut headers =
        futures::stream::iter(seqs.into_iter().map(|seq| async move { (seq, fetch_header(store, layout, seq).await) }))
            .buffered(8);
    // Objects of a commit unit are held back until its last object has been seen: a unit is
    // applied whole or not at all.
    let mut end = start;
    let mut unit: Vec<(u64, Header)> = Vec::new();
    let mut unit_last = 0u64;
    while let Some((seq, h)) = headers.next().await {
        let h = match h {
            Ok(h) => h,
            // Deleted between listing and reading: treat as the gap it now is.
            Err(VolumeError::Store(StoreError::NotFound(_))) => break,
            Err(e) => return Err(e),
        };
        if h.trailer.epoch < epoch {
            info!(seq, epoch = h.trailer.epoch, newest = epoch, "log object from a fenced writer ends the log");
            break;
        }
        epoch = h.trailer.epoch;
        unit_last = unit_last.max(h.trailer.unit.span(seq).1);
        unit.push((seq, h));
        if seq >= unit_last {
            for (seq, h) in unit.drain(..) {
                apply_header(&mut table, seq, &h)?;
            }
            end = seq;
        }
    }
    if let Some((first, _)) = unit.first() {
        info!(first, last = unit_last, "incomplete commit unit ends the log");
    }
    Ok(Replayed { table, end, epoch, base, listing })
}

/// Fills `table` with a fork's starting map: its parent's at the fork point, replayed at the
/// larger of the two sizes (a parent shrunk since keeps what the fork point read).
async fn load_parent(
    store: &dyn ObjectStore,
    layout: &Layout,
    parent: &ParentRef,
    table_path: &Path,
    cache_pages: usize,
    table: &mut ExtentTable,
) -> Result<()> {
    let parent_layout = layout.sibling(&parent.name)?.with_ancestors_of(layout);
    let mut pm = crate::manage::read_manifest(store, &parent_layout).await?;
    pm.size = pm.size.max(table.sectors() * SECTOR);
    let path = table_path.with_extension("parent");
    let mut r = replay(store, &parent_layout, &pm, &path, cache_pages, parent.seq).await?;
    let _ = std::fs::remove_file(&path);
    if r.end < parent.seq {
        return Err(VolumeError::Corrupt {
            what: layout.manifest(),
            detail: format!("the parent {}'s log ends at {} before the fork point {}", parent.name, r.end, parent.seq),
        });
    }
    let sectors = table.sectors();
    r.table.for_each_run(|run| {
        for i in 0..u64::from(run.len).min(sectors.saturating_sub(run.sector)) {
            table.set(run.sector + i, table::encode(run.seq, u64::from(run.obj_sector) + i))?;
        }
        Ok(())
    })?;
    debug!(parent = parent.name, point = parent.seq, "fork point loaded");
    Ok(())
}

/// Live sectors per object, from a full scan of the table.
pub fn live_sectors(table: &mut ExtentTable) -> Result<BTreeMap<u64, u64>> {
    let mut live = BTreeMap::new();
    table.for_each_run(|r| {
        *live.entry(r.seq).or_insert(0) += u64::from(r.len);
        Ok(())
    })?;
    Ok(live)
}
