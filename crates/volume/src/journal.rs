//! The local write-back journal: writes since the last cut live in a file on local disk rather
//! than in memory, so the volume absorbs far more than RAM between FLUSHes at the speed of the
//! page cache.
//!
//! A *generation* is one unlinked temporary file plus an index of its extents by volume sector.
//! A write to a sector the generation already holds overwrites those bytes in place, so a
//! generation holds each sector at most once: overwrites are merged before anything is uploaded.
//! A *cut* freezes the generation and plans it as one commit unit of log objects, which the
//! volume uploads and recovery applies all together or not at all (see `format::UnitPos`).
//!
//! Nothing here is recovered after a crash: what the journal held was acknowledged but not
//! flushed, which NBD allows to be lost, and the bucket alone is always a prefix of the writes.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use tokio::sync::{OwnedRwLockReadGuard, RwLock};

use crate::format::{Entry, SECTOR};

/// Largest extent one header entry can describe (its length is a u32 of bytes).
const MAX_ENTRY_SECTORS: u64 = 1 << 18;

/// An extent of a generation: `at` is its byte offset in the file, `None` for zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ext {
    pub sectors: u64,
    pub at: Option<u64>,
}

/// Where part of a write goes: `len` bytes from offset `src` of the write, at file offset `at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub at: u64,
    pub src: usize,
    pub len: usize,
}

/// One entry of a planned log object: `sectors` at volume `sector`, from file offset `at`
/// (`None`: zeros, written into the object as data like any other).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanEntry {
    pub sector: u64,
    pub sectors: u64,
    pub at: Option<u64>,
}

/// The entries of one log object of a cut, in address order.
#[derive(Debug, Clone, Default)]
pub struct PlannedObject {
    pub entries: Vec<PlanEntry>,
    pub data_sectors: u64,
}

impl PlannedObject {
    pub fn header_entries(&self) -> Vec<Entry> {
        self.entries
            .iter()
            .map(|e| Entry { addr: e.sector * SECTOR, len: (e.sectors * SECTOR) as u32, zero: false })
            .collect()
    }
}

/// Where the data of a cut's objects lies in its journal file, so that once uploaded the file
/// can keep serving reads of them as a local cache (log objects never change).
#[derive(Debug, Default)]
pub struct UnitIndex {
    first: u64,
    /// Per object of the unit: data runs as (object sector, sectors, file offset), in order.
    objects: Vec<Vec<(u64, u64, u64)>>,
}

impl UnitIndex {
    /// The index of a unit whose first object is `first`, planned as `plan`.
    pub fn new(first: u64, plan: &[PlannedObject]) -> Self {
        let objects = plan
            .iter()
            .map(|obj| {
                let mut obj_sector = 0;
                obj.entries
                    .iter()
                    .filter_map(|e| {
                        let run = e.at.map(|at| (obj_sector, e.sectors, at));
                        obj_sector += e.sectors;
                        run
                    })
                    .collect()
            })
            .collect();
        Self { first, objects }
    }

    pub fn first(&self) -> u64 {
        self.first
    }

    pub fn last(&self) -> u64 {
        self.first + self.objects.len() as u64 - 1
    }

    /// Data runs held (what the index costs in memory).
    pub fn runs(&self) -> usize {
        self.objects.iter().map(Vec::len).sum()
    }

    /// File offset of sector `obj_sector` of object `seq`, if this unit holds it.
    pub fn locate(&self, seq: u64, obj_sector: u64) -> Option<u64> {
        let runs = self.objects.get(usize::try_from(seq.checked_sub(self.first)?).ok()?)?;
        let i = runs.partition_point(|&(start, n, _)| start + n <= obj_sector);
        let &(start, _, at) = runs.get(i)?;
        (start <= obj_sector).then(|| at + (obj_sector - start) * SECTOR)
    }
}

pub struct Generation {
    file: Arc<File>,
    extents: BTreeMap<u64, Ext>,
    /// Bytes appended to the file (its length); overwritten-then-zeroed space is not reused.
    file_bytes: u64,
    /// Writers hold this shared from placing a write until its bytes are in the file; the
    /// upload of a cut takes it exclusively first, so it never reads a half-written sector.
    writers: Arc<RwLock<()>>,
}

impl Generation {
    /// A new, empty generation backed by an unlinked file in `dir`.
    pub fn create(dir: &Path) -> std::io::Result<Self> {
        Ok(Self {
            file: Arc::new(tempfile::tempfile_in(dir)?),
            extents: BTreeMap::new(),
            file_bytes: 0,
            writers: Arc::new(RwLock::new(())),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.extents.is_empty()
    }

    /// Extents held (each becomes at least one header entry).
    pub fn extents(&self) -> usize {
        self.extents.len()
    }

    pub fn file_bytes(&self) -> u64 {
        self.file_bytes
    }

    pub fn file(&self) -> &Arc<File> {
        &self.file
    }

    /// A guard that keeps the cut's upload from reading the file until this write is in it.
    /// `None` only if the generation was already cut, which callers rule out under their lock.
    pub fn writer_guard(&self) -> Option<OwnedRwLockReadGuard<()>> {
        self.writers.clone().try_read_owned().ok()
    }

    /// Waits until every write placed in this generation is in its file.
    pub async fn wait_writers(&self) {
        drop(self.writers.write().await);
    }

    /// Records a data write of `sectors` at `sector` and returns where its bytes go: in place
    /// where the generation already holds data for a sector, appended otherwise.
    pub fn insert_data(&mut self, sector: u64, sectors: u64) -> Vec<Placement> {
        let end = sector + sectors;
        let src = |s: u64| ((s - sector) * SECTOR) as usize;
        let mut places = Vec::new();
        let mut fresh = Vec::new();
        let mut cur = sector;
        for (s, e) in self.overlapping(sector, end) {
            let (a, b) = (s.max(sector), (s + e.sectors).min(end));
            if cur < a {
                fresh.push((cur, a));
            }
            match e.at {
                Some(at) => places.push(Placement { at: at + (a - s) * SECTOR, src: src(a), len: src(b) - src(a) }),
                None => fresh.push((a, b)),
            }
            cur = b;
        }
        if cur < end {
            fresh.push((cur, end));
        }
        for (a, b) in fresh {
            self.carve(a, b);
            let at = self.file_bytes;
            self.file_bytes += (b - a) * SECTOR;
            self.put(a, Ext { sectors: b - a, at: Some(at) });
            places.push(Placement { at, src: src(a), len: src(b) - src(a) });
        }
        places
    }

    /// Records that `sectors` at `sector` read as zeros.
    pub fn insert_zero(&mut self, sector: u64, sectors: u64) {
        self.carve(sector, sector + sectors);
        self.put(sector, Ext { sectors, at: None });
    }

    /// The zero extents held, as (sector, sectors).
    pub fn zero_extents(&self) -> Vec<(u64, u64)> {
        self.extents.iter().filter(|(_, e)| e.at.is_none()).map(|(&s, e)| (s, e.sectors)).collect()
    }

    /// Drops whatever the generation holds for [start, end): those sectors are no longer
    /// part of it (used for zeros over sectors that read as zeros anyway).
    pub fn forget(&mut self, start: u64, end: u64) {
        self.carve(start, end);
    }

    /// What the generation holds for `sector`: `Some(None)` zeros, `Some(Some(at))` the bytes
    /// at file offset `at`, `None` nothing.
    pub fn lookup(&self, sector: u64) -> Option<Option<u64>> {
        let (&s, e) = self.extents.range(..=sector).next_back()?;
        (sector < s + e.sectors).then(|| e.at.map(|at| at + (sector - s) * SECTOR))
    }

    /// Extents overlapping [start, end), unclipped, in address order.
    fn overlapping(&self, start: u64, end: u64) -> Vec<(u64, Ext)> {
        let first =
            self.extents.range(..start).next_back().filter(|(s, e)| *s + e.sectors > start).map_or(start, |(s, _)| *s);
        self.extents.range(first..end).map(|(s, e)| (*s, *e)).collect()
    }

    /// Removes [start, end) from every extent, splitting those that straddle its edges.
    fn carve(&mut self, start: u64, end: u64) {
        for (s, e) in self.overlapping(start, end) {
            self.extents.remove(&s);
            let stop = s + e.sectors;
            if stop > end {
                let skip = end - s;
                self.extents.insert(end, Ext { sectors: stop - end, at: e.at.map(|at| at + skip * SECTOR) });
            }
            if s < start {
                self.extents.insert(s, Ext { sectors: start - s, at: e.at });
            }
        }
    }

    /// Inserts an extent into a hole, merging it with neighbours that continue it (adjacent on
    /// the volume and, for data, in the file).
    fn put(&mut self, mut start: u64, mut ext: Ext) {
        let continues = |l: &Ext, r: &Ext| match (l.at, r.at) {
            (None, None) => true,
            (Some(la), Some(ra)) => la + l.sectors * SECTOR == ra,
            _ => false,
        };
        if let Some((&ls, left)) = self.extents.range(..start).next_back()
            && ls + left.sectors == start
            && continues(left, &ext)
        {
            ext = Ext { sectors: left.sectors + ext.sectors, at: left.at };
            self.extents.remove(&ls);
            start = ls;
        }
        let end = start + ext.sectors;
        if let Some(right) = self.extents.get(&end).copied()
            && continues(&ext, &right)
        {
            ext.sectors += right.sectors;
            self.extents.remove(&end);
        }
        self.extents.insert(start, ext);
    }

    /// Splits the generation into log objects of at most `object_sectors` data sectors and
    /// `max_entries` entries each, in address order. Zero extents become data (zero bytes), so
    /// every entry means what the seed format says.
    pub fn plan(&self, object_sectors: u64, max_entries: usize) -> Vec<PlannedObject> {
        let mut out = Vec::new();
        let mut obj = PlannedObject::default();
        for (&start, e) in &self.extents {
            let mut done = 0;
            while done < e.sectors {
                let room = object_sectors - obj.data_sectors;
                if room == 0 || obj.entries.len() >= max_entries {
                    out.push(std::mem::take(&mut obj));
                    continue;
                }
                let n = (e.sectors - done).min(room).min(MAX_ENTRY_SECTORS);
                obj.entries.push(PlanEntry { sector: start + done, sectors: n, at: e.at.map(|at| at + done * SECTOR) });
                obj.data_sectors += n;
                done += n;
            }
        }
        if !obj.entries.is_empty() {
            out.push(obj);
        }
        out
    }

    /// Bytes of data a planned object carries.
    pub fn data_len(obj: &PlannedObject) -> usize {
        (obj.data_sectors * SECTOR) as usize
    }

    /// Reads the data of a planned object's entries, in order, into `out` (exactly
    /// [`Self::data_len`] bytes, zeroed: zero entries are left as they are). The caller
    /// allocates `out`, so that the buffer comes from its own thread's allocator arena rather
    /// than a blocking-pool thread's, which glibc would keep around.
    pub fn read_object_data(&self, obj: &PlannedObject, out: &mut [u8]) -> std::io::Result<()> {
        let mut pos = 0;
        for e in &obj.entries {
            let len = (e.sectors * SECTOR) as usize;
            if let Some(at) = e.at {
                self.file.read_exact_at(&mut out[pos..pos + len], at)?;
            }
            pos += len;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sec(b: u8, n: u64) -> Vec<u8> {
        vec![b; (n * SECTOR) as usize]
    }

    /// Applies a write as the volume does: index first, then the bytes where it says.
    fn write(g: &mut Generation, sector: u64, data: &[u8]) {
        for p in g.insert_data(sector, data.len() as u64 / SECTOR) {
            g.file.write_all_at(&data[p.src..p.src + p.len], p.at).unwrap();
        }
    }

    fn read(g: &Generation, sector: u64) -> Option<u8> {
        g.lookup(sector).map(|at| {
            at.map_or(0, |at| {
                let mut b = [0u8; 1];
                g.file.read_exact_at(&mut b, at).unwrap();
                b[0]
            })
        })
    }

    #[test]
    fn overwrites_land_in_place_and_extents_merge() {
        let dir = tempfile::tempdir().unwrap();
        let mut g = Generation::create(dir.path()).unwrap();
        write(&mut g, 0, &sec(1, 4));
        write(&mut g, 4, &sec(2, 4));
        assert_eq!(g.extents(), 1, "a write continuing the last one, on the volume and in the file, merges");
        for round in 0..10u8 {
            write(&mut g, 2, &sec(10 + round, 4));
        }
        assert_eq!(g.file_bytes(), 8 * SECTOR, "overwrites take no new space");
        assert_eq!((0..8).map(|s| read(&g, s)).collect::<Vec<_>>(), [1, 1, 19, 19, 19, 19, 2, 2].map(Some));
        assert_eq!(read(&g, 8), None);
    }

    #[test]
    fn zeros_split_data_and_data_replaces_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let mut g = Generation::create(dir.path()).unwrap();
        write(&mut g, 0, &sec(1, 8));
        g.insert_zero(3, 2);
        assert_eq!(g.extents(), 3);
        assert_eq!((0..8).map(|s| read(&g, s)).collect::<Vec<_>>(), [1, 1, 1, 0, 0, 1, 1, 1].map(Some));
        // A write over the zeros and past the end: the zero part and the hole are appended.
        write(&mut g, 4, &sec(7, 6));
        assert_eq!((0..10).map(|s| read(&g, s)).collect::<Vec<_>>(), [1, 1, 1, 0, 7, 7, 7, 7, 7, 7].map(Some));
        assert_eq!(g.file_bytes(), 8 * SECTOR + 3 * SECTOR);
    }

    #[test]
    fn plan_respects_object_size_and_entry_count() {
        let dir = tempfile::tempdir().unwrap();
        let mut g = Generation::create(dir.path()).unwrap();
        write(&mut g, 0, &sec(1, 10));
        for i in 0..5 {
            write(&mut g, 100 + 2 * i, &sec(2, 1));
        }
        g.insert_zero(1000, 10);
        let plan = g.plan(4, 3);
        let data: u64 = plan.iter().map(|o| o.data_sectors).sum();
        assert_eq!(data, 25, "zeros are planned as data");
        assert!(plan.iter().all(|o| o.data_sectors <= 4 && o.entries.len() <= 3));
        let zero: u64 = plan.iter().flat_map(|o| &o.entries).filter(|e| e.at.is_none()).map(|e| e.sectors).sum();
        assert_eq!(zero, 10);
        assert!(plan.iter().flat_map(|o| o.header_entries()).all(|e| !e.zero));
        assert!(plan.iter().flat_map(|o| &o.entries).all(|e| e.sectors <= MAX_ENTRY_SECTORS));
        // Entries come out in address order and cover each written sector once.
        let addrs: Vec<u64> = plan.iter().flat_map(|o| &o.entries).map(|e| e.sector).collect();
        assert!(addrs.windows(2).all(|w| w[0] < w[1]));
        let mut body = vec![0u8; Generation::data_len(&plan[0])];
        g.read_object_data(&plan[0], &mut body).unwrap();
        assert_eq!(body.len(), 4 * SECTOR as usize);
        assert!(body.iter().all(|&b| b == 1));
        // The unit index finds every data sector of every object where the file holds it.
        let index = UnitIndex::new(7, &plan);
        assert_eq!((index.first(), index.last()), (7, 7 + plan.len() as u64 - 1));
        let mut found = 0;
        for (seq, obj) in (7..).zip(&plan) {
            let mut obj_sector = 0;
            for e in &obj.entries {
                for i in 0..e.sectors {
                    assert_eq!(index.locate(seq, obj_sector + i), g.lookup(e.sector + i).flatten());
                    found += u64::from(e.at.is_some());
                }
                obj_sector += e.sectors;
            }
            assert_eq!(index.locate(seq, obj_sector), None, "past the object's data");
        }
        assert_eq!(found, 15);
        assert_eq!(index.locate(6, 0), None);
        assert_eq!(index.locate(7 + plan.len() as u64, 0), None);
    }
}
