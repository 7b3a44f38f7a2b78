//! The open log object: writes since the last seal, with overlapping and adjacent writes merged
//! so one object holds each sector at most once and as few entries as possible.

use std::collections::BTreeMap;

use crate::format::{Entry, SECTOR};

/// One extent of the open object. `data` is `None` for a zero extent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extent {
    pub sectors: u64,
    pub data: Option<Vec<u8>>,
}

/// Merged writes keyed by first sector.
#[derive(Debug, Default)]
pub struct OpenObject {
    extents: BTreeMap<u64, Extent>,
    data_bytes: u64,
}

impl OpenObject {
    pub fn is_empty(&self) -> bool {
        self.extents.is_empty()
    }

    /// Number of header entries this object would need.
    pub fn entries(&self) -> usize {
        self.extents.len()
    }

    pub fn data_bytes(&self) -> u64 {
        self.data_bytes
    }

    /// Records a write of whole sectors at `sector`; `data` is `None` for zeroes.
    pub fn insert(&mut self, sector: u64, sectors: u64, data: Option<&[u8]>) {
        debug_assert!(data.is_none_or(|d| d.len() as u64 == sectors * SECTOR));
        let end = sector + sectors;
        self.carve(sector, end);
        let mut start = sector;
        let mut ext = Extent { sectors, data: data.map(<[u8]>::to_vec) };
        // Merge with the left neighbour when it ends exactly here and is of the same kind.
        if let Some((&ls, left)) = self.extents.range(..sector).next_back()
            && ls + left.sectors == sector
            && left.data.is_some() == ext.data.is_some()
            && let Some(mut left) = self.extents.remove(&ls)
        {
            left.sectors += ext.sectors;
            if let (Some(l), Some(d)) = (&mut left.data, ext.data.take()) {
                l.extend_from_slice(&d);
            }
            start = ls;
            ext = left;
        }
        // And with the right neighbour when it starts exactly at the end.
        if let Some(right) = self.extents.get(&end)
            && right.data.is_some() == ext.data.is_some()
            && let Some(right) = self.extents.remove(&end)
        {
            ext.sectors += right.sectors;
            if let (Some(e), Some(r)) = (&mut ext.data, right.data) {
                e.extend_from_slice(&r);
            }
        }
        if data.is_some() {
            self.data_bytes += sectors * SECTOR;
        }
        self.extents.insert(start, ext);
    }

    /// Removes [start, end) from every extent, splitting those that straddle its edges.
    fn carve(&mut self, start: u64, end: u64) {
        let first = self
            .extents
            .range(..start)
            .next_back()
            .filter(|(s, e)| *s + e.sectors > start)
            .map(|(s, _)| *s)
            .unwrap_or(start);
        let hit: Vec<u64> = self.extents.range(first..end).map(|(s, _)| *s).collect();
        for s in hit {
            let Some(mut ext) = self.extents.remove(&s) else {
                continue;
            };
            let e = s + ext.sectors;
            if let Some(d) = &ext.data {
                self.data_bytes -= d.len() as u64;
            }
            if e > end {
                // Keep the right tail [end, e).
                let skip = end - s;
                let tail = Extent {
                    sectors: e - end,
                    data: ext.data.as_ref().map(|d| d[(skip * SECTOR) as usize..].to_vec()),
                };
                if let Some(d) = &tail.data {
                    self.data_bytes += d.len() as u64;
                }
                self.extents.insert(end, tail);
            }
            if s < start {
                // Keep the left head [s, start).
                ext.sectors = start - s;
                if let Some(d) = &mut ext.data {
                    d.truncate((ext.sectors * SECTOR) as usize);
                    self.data_bytes += d.len() as u64;
                }
                self.extents.insert(s, ext);
            }
        }
    }

    /// The extent covering `sector`, with the offset of `sector` inside it.
    pub fn lookup(&self, sector: u64) -> Option<(&Extent, u64)> {
        let (&s, ext) = self.extents.range(..=sector).next_back()?;
        (sector < s + ext.sectors).then_some((ext, sector - s))
    }

    /// Takes the content as header entries and the concatenated data, in address order.
    pub fn take(&mut self) -> (Vec<Entry>, Vec<(u64, Extent)>) {
        let extents = std::mem::take(&mut self.extents);
        self.data_bytes = 0;
        let entries = extents
            .iter()
            .map(|(&s, e)| Entry { addr: s * SECTOR, len: (e.sectors * SECTOR) as u32, zero: e.data.is_none() })
            .collect();
        (entries, extents.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sec(b: u8, n: u64) -> Vec<u8> {
        vec![b; (n * SECTOR) as usize]
    }

    fn read(o: &OpenObject, sector: u64) -> Option<u8> {
        o.lookup(sector).map(|(e, off)| e.data.as_ref().map_or(0, |d| d[(off * SECTOR) as usize]))
    }

    #[test]
    fn merges_adjacent_and_overlapping() {
        let mut o = OpenObject::default();
        o.insert(0, 2, Some(&sec(1, 2)));
        o.insert(2, 2, Some(&sec(2, 2)));
        assert_eq!(o.entries(), 1, "adjacent writes merge");
        o.insert(1, 2, Some(&sec(3, 2)));
        assert_eq!(o.entries(), 1, "overlapping write merges");
        assert_eq!((0..4).map(|s| read(&o, s)).collect::<Vec<_>>(), vec![Some(1), Some(3), Some(3), Some(2)]);
        assert_eq!(o.data_bytes(), 4 * SECTOR);
        o.insert(10, 1, Some(&sec(4, 1)));
        assert_eq!(o.entries(), 2);
        o.insert(2, 1, None);
        // [0,2) data, [2,3) zero, [3,4) data, [10,11) data
        assert_eq!(o.entries(), 4);
        assert_eq!(read(&o, 2), Some(0));
        assert_eq!(o.data_bytes(), 4 * SECTOR);
        // A write covering everything collapses to one entry.
        o.insert(0, 11, Some(&sec(9, 11)));
        assert_eq!(o.entries(), 1);
        assert_eq!(o.data_bytes(), 11 * SECTOR);
        let (entries, exts) = o.take();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].len as u64, 11 * SECTOR);
        assert_eq!(exts[0].1.data.as_ref().unwrap().len() as u64, 11 * SECTOR);
        assert!(o.is_empty());
    }

    #[test]
    fn split_in_the_middle() {
        let mut o = OpenObject::default();
        o.insert(0, 8, Some(&sec(1, 8)));
        o.insert(3, 2, None);
        assert_eq!(o.entries(), 3);
        assert_eq!(o.data_bytes(), 6 * SECTOR);
        assert_eq!(read(&o, 2), Some(1));
        assert_eq!(read(&o, 4), Some(0));
        assert_eq!(read(&o, 5), Some(1));
        assert_eq!(read(&o, 8), None);
        o.insert(5, 1, None);
        assert_eq!(o.entries(), 3, "zero extents merge too");
    }
}
