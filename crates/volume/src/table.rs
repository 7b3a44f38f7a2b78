//! The extent map: where every 4 KiB sector of the volume lives.
//!
//! A dense array of one u64 per sector, kept in a sparse local file with a small fixed cache of
//! pages in memory. A full random fill maps every sector to a different place, so a map in RAM
//! (even a B-tree of runs) costs tens of bytes per sector; the file costs 8 bytes per sector of
//! local disk (2 MiB per GiB, mostly in the kernel's page cache, which is not our RSS) and the
//! process keeps only `cache_pages` × 4 KiB. The file is a cache: it is rebuilt from the bucket
//! (checkpoint + log) every time a volume is opened.
//!
//! Entry encoding: `seq << 24 | sector offset within the object's data`, 0 = never written
//! (reads as zeros). Sequence numbers start at 1, so a mapped entry is never 0. Bit 63 of the
//! stored value marks a sector whose logged data is known to be zeros (a TRIM or WRITE_ZEROES
//! logged as zero data): it reads as zeros without a GET, and zeroing it again logs nothing.
//! The mark lives only in this local file (checkpoints and replays drop it); [`ExtentTable::get`]
//! and [`decode`] never show it.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

use meridian_common::private_files;

use crate::error::Result;
use crate::format::Run;

const PAGE_ENTRIES: u64 = 512;
const PAGE_BYTES: u64 = PAGE_ENTRIES * 8;
pub const OFFSET_BITS: u32 = 24;
/// Largest object data size, in sectors, the encoding can address (64 GiB).
pub const MAX_OBJECT_SECTORS: u64 = 1 << OFFSET_BITS;

pub fn encode(seq: u64, obj_sector: u64) -> u64 {
    (seq << OFFSET_BITS) | obj_sector
}

/// Marks a stored entry whose data is zeros (see the module doc).
const ZERO_DATA: u64 = 1 << 63;

pub fn decode(v: u64) -> Option<(u64, u64)> {
    let v = v & !ZERO_DATA;
    (v != 0).then_some((v >> OFFSET_BITS, v & (MAX_OBJECT_SECTORS - 1)))
}

struct Slot {
    page: u64,
    entries: Box<[u64]>,
    dirty: bool,
    referenced: bool,
}

/// File-backed sector map with a CLOCK page cache.
pub struct ExtentTable {
    file: File,
    sectors: u64,
    index: HashMap<u64, usize>,
    slots: Vec<Slot>,
    hand: usize,
    capacity: usize,
}

impl ExtentTable {
    /// Creates an empty (all-unmapped) table at `path`, replacing anything there.
    pub fn create(path: &Path, sectors: u64, cache_pages: usize) -> Result<Self> {
        let file = private_files::file_options().read(true).write(true).create(true).truncate(true).open(path)?;
        file.set_len(sectors * 8)?;
        Ok(Self { file, sectors, index: HashMap::new(), slots: Vec::new(), hand: 0, capacity: cache_pages.max(4) })
    }

    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    /// Grows or shrinks the table. Shrinking drops entries past the end.
    pub fn resize(&mut self, sectors: u64) -> Result<()> {
        self.flush()?;
        self.index.clear();
        self.slots.clear();
        self.hand = 0;
        // Truncation followed by re-extension zeroes the dropped tail.
        self.file.set_len(sectors * 8)?;
        self.sectors = sectors;
        Ok(())
    }

    fn load(&mut self, page: u64) -> Result<usize> {
        if let Some(&slot) = self.index.get(&page) {
            self.slots[slot].referenced = true;
            return Ok(slot);
        }
        let mut buf = vec![0u8; PAGE_BYTES as usize];
        let file_len = self.sectors * 8;
        let start = page * PAGE_BYTES;
        let want = PAGE_BYTES.min(file_len.saturating_sub(start)) as usize;
        self.file.read_exact_at(&mut buf[..want], start)?;
        let entries: Box<[u64]> =
            buf.chunks_exact(8).map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])).collect();
        let slot = if self.slots.len() < self.capacity {
            self.slots.push(Slot { page, entries, dirty: false, referenced: true });
            self.slots.len() - 1
        } else {
            let victim = self.pick_victim();
            self.write_back(victim)?;
            self.index.remove(&self.slots[victim].page);
            self.slots[victim] = Slot { page, entries, dirty: false, referenced: true };
            victim
        };
        self.index.insert(page, slot);
        Ok(slot)
    }

    fn pick_victim(&mut self) -> usize {
        loop {
            let i = self.hand;
            self.hand = (self.hand + 1) % self.slots.len();
            if self.slots[i].referenced {
                self.slots[i].referenced = false;
            } else {
                return i;
            }
        }
    }

    fn write_back(&mut self, slot: usize) -> Result<()> {
        let s = &mut self.slots[slot];
        if !s.dirty {
            return Ok(());
        }
        let start = s.page * PAGE_BYTES;
        let file_len = self.sectors * 8;
        let n = (PAGE_BYTES.min(file_len.saturating_sub(start)) / 8) as usize;
        let mut buf = Vec::with_capacity(n * 8);
        for e in &s.entries[..n] {
            buf.extend_from_slice(&e.to_le_bytes());
        }
        self.file.write_all_at(&buf, start)?;
        s.dirty = false;
        Ok(())
    }

    /// The entry for `sector` (must be < `sectors()`).
    pub fn get(&mut self, sector: u64) -> Result<u64> {
        Ok(self.get_raw(sector)? & !ZERO_DATA)
    }

    /// Whether `sector` reads as zeros without fetching anything: never written, or logged as
    /// zero data by this process.
    pub fn reads_as_zeros(&mut self, sector: u64) -> Result<bool> {
        let raw = self.get_raw(sector)?;
        Ok(raw == 0 || raw & ZERO_DATA != 0)
    }

    fn get_raw(&mut self, sector: u64) -> Result<u64> {
        let slot = self.load(sector / PAGE_ENTRIES)?;
        Ok(self.slots[slot].entries[(sector % PAGE_ENTRIES) as usize])
    }

    /// Sets the entry for `sector`, returning the previous one.
    pub fn set(&mut self, sector: u64, value: u64) -> Result<u64> {
        self.set_raw(sector, value)
    }

    /// Sets the entry for `sector` to `value`, whose logged data is zeros; returns the previous
    /// entry.
    pub fn set_zeros(&mut self, sector: u64, value: u64) -> Result<u64> {
        self.set_raw(sector, value | ZERO_DATA)
    }

    fn set_raw(&mut self, sector: u64, value: u64) -> Result<u64> {
        let slot = self.load(sector / PAGE_ENTRIES)?;
        let s = &mut self.slots[slot];
        let i = (sector % PAGE_ENTRIES) as usize;
        let old = s.entries[i];
        if old != value {
            s.entries[i] = value;
            s.dirty = true;
        }
        Ok(old & !ZERO_DATA)
    }

    /// Writes every dirty page to the file.
    pub fn flush(&mut self) -> Result<()> {
        for i in 0..self.slots.len() {
            self.write_back(i)?;
        }
        Ok(())
    }

    /// Copies the whole table to `dest` (after flushing), for a checkpoint taken off the lock.
    pub fn copy_to(&mut self, dest: &Path) -> Result<()> {
        self.flush()?;
        let mut src = self.file.try_clone()?;
        let mut out = private_files::file_options().write(true).create(true).truncate(true).open(dest)?;
        std::io::Seek::seek(&mut src, std::io::SeekFrom::Start(0))?;
        std::io::copy(&mut src, &mut out)?;
        Ok(())
    }

    /// Calls `f` for every run of the table, in sector order, reading the file directly.
    pub fn for_each_run(&mut self, f: impl FnMut(Run) -> Result<()>) -> Result<()> {
        self.flush()?;
        let file = self.file.try_clone()?;
        for_each_run_in_file(file, self.sectors, f)
    }
}

/// Walks a table file (live or a copy) as maximal runs of consecutive sectors stored
/// consecutively in one object.
pub fn for_each_run_in_file(mut file: File, sectors: u64, mut f: impl FnMut(Run) -> Result<()>) -> Result<()> {
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(0))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut cur: Option<Run> = None;
    let mut buf = [0u8; 8];
    for sector in 0..sectors {
        reader.read_exact(&mut buf)?;
        let v = u64::from_le_bytes(buf);
        let next = decode(v);
        match (&mut cur, next) {
            (Some(r), Some((seq, off)))
                if r.seq == seq
                    && r.sector + u64::from(r.len) == sector
                    && u64::from(r.obj_sector) + u64::from(r.len) == off
                    && r.len < u32::MAX =>
            {
                r.len += 1;
            }
            (_, next) => {
                if let Some(r) = cur.take() {
                    f(r)?;
                }
                cur = next.map(|(seq, off)| Run { sector, len: 1, seq, obj_sector: off as u32 });
            }
        }
    }
    if let Some(r) = cur {
        f(r)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_evict_and_runs() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = ExtentTable::create(&dir.path().join("t"), 10_000, 4).unwrap();
        // Touch many pages so the 4-page cache must write back and reload.
        for s in (0..10_000).step_by(7) {
            t.set(s, encode(s + 1, 3)).unwrap();
        }
        for s in (0..10_000).step_by(7) {
            assert_eq!(decode(t.get(s).unwrap()), Some((s + 1, 3)));
        }
        assert_eq!(t.get(1).unwrap(), 0);
        assert_eq!(t.set(0, 0).unwrap(), encode(1, 3));

        let mut t = ExtentTable::create(&dir.path().join("u"), 100, 4).unwrap();
        for i in 0..10 {
            t.set(20 + i, encode(5, 100 + i)).unwrap();
        }
        t.set(30, encode(6, 0)).unwrap();
        let mut runs = Vec::new();
        t.for_each_run(|r| {
            runs.push(r);
            Ok(())
        })
        .unwrap();
        assert_eq!(
            runs,
            vec![
                Run { sector: 20, len: 10, seq: 5, obj_sector: 100 },
                Run { sector: 30, len: 1, seq: 6, obj_sector: 0 }
            ]
        );
        // Zero data: mapped like any data, but known to read as zeros.
        assert!(t.reads_as_zeros(0).unwrap() && !t.reads_as_zeros(20).unwrap());
        t.set_zeros(40, encode(7, 2)).unwrap();
        assert_eq!(t.get(40).unwrap(), encode(7, 2));
        assert!(t.reads_as_zeros(40).unwrap());
        assert_eq!(t.set(40, encode(8, 0)).unwrap(), encode(7, 2));
        assert!(!t.reads_as_zeros(40).unwrap());
        t.resize(25).unwrap();
        assert_eq!(t.get(24).unwrap(), encode(5, 104));
        t.resize(100).unwrap();
        assert_eq!(t.get(30).unwrap(), 0);
    }
}
