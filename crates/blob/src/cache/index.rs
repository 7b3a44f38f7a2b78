//! The in-memory index of cache entries, ordered for eviction as a segmented LRU.
//!
//! A new entry goes to the *probation* segment. A hit on a probation entry moves it to the
//! *protected* segment; protected is capped at [`PROTECTED_SHARE`] of the cache and its least
//! recently used entries fall back to probation when it overflows. Victims come from the LRU end
//! of probation first, then of protected. So a chunk read twice outlives any number of chunks
//! read once: one sequential read of a large video cannot flush the hot set, which plain LRU
//! would let it do.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use crate::BlobId;

/// Share of `max_bytes` the protected segment may hold (percent).
const PROTECTED_SHARE: u64 = 80;
/// A hit refreshes the entry file's modification time (the recency that survives a restart) when
/// the stored time is older than this; finer recency is kept in memory only.
pub(crate) const RECENCY_PERSIST: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Key {
    pub blob: BlobId,
    pub chunk: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Segment {
    Probation,
    Protected,
}

#[derive(Debug)]
struct Entry {
    size: u64,
    segment: Segment,
    tick: u64,
    generation: u64,
    persisted: SystemTime,
}

/// What a hit learns about the entry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hit {
    pub generation: u64,
    /// The file's modification time should be refreshed.
    pub persist: bool,
}

pub(crate) struct Index {
    entries: BTreeMap<Key, Entry>,
    probation: BTreeMap<u64, Key>,
    protected: BTreeMap<u64, Key>,
    protected_bytes: u64,
    protected_max: u64,
    used: u64,
    next_tick: u64,
    next_generation: u64,
}

impl Index {
    pub fn new(max_bytes: u64) -> Self {
        Index {
            entries: BTreeMap::new(),
            probation: BTreeMap::new(),
            protected: BTreeMap::new(),
            protected_bytes: 0,
            protected_max: max_bytes / 100 * PROTECTED_SHARE,
            used: 0,
            next_tick: 0,
            next_generation: 0,
        }
    }

    /// Bytes of all entries.
    pub fn used(&self) -> u64 {
        self.used
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn contains(&self, key: &Key) -> bool {
        self.entries.contains_key(key)
    }

    fn tick(&mut self) -> u64 {
        self.next_tick += 1;
        self.next_tick
    }

    /// Adds (or replaces) an entry as the most recently used of probation; returns its generation,
    /// which changes whenever the file behind a key is replaced.
    pub fn insert(&mut self, key: Key, size: u64, persisted: SystemTime) -> u64 {
        self.remove(&key);
        let tick = self.tick();
        self.next_generation += 1;
        let generation = self.next_generation;
        self.probation.insert(tick, key);
        self.used += size;
        self.entries.insert(key, Entry { size, segment: Segment::Probation, tick, generation, persisted });
        generation
    }

    /// Records a hit.
    pub fn touch(&mut self, key: &Key, now: SystemTime) -> Option<Hit> {
        let tick = self.tick();
        let entry = self.entries.get_mut(key)?;
        match entry.segment {
            Segment::Probation => {
                self.probation.remove(&entry.tick);
                entry.segment = Segment::Protected;
                self.protected_bytes += entry.size;
            }
            Segment::Protected => {
                self.protected.remove(&entry.tick);
            }
        }
        entry.tick = tick;
        self.protected.insert(tick, *key);
        let persist = now.duration_since(entry.persisted).is_ok_and(|age| age >= RECENCY_PERSIST);
        if persist {
            entry.persisted = now;
        }
        let hit = Hit { generation: entry.generation, persist };
        self.rebalance();
        Some(hit)
    }

    /// Moves protected's least recently used entries to probation while protected is over its cap
    /// (always keeping the entry just touched).
    fn rebalance(&mut self) {
        while self.protected_bytes > self.protected_max && self.protected.len() > 1 {
            let Some((_, key)) = self.protected.pop_first() else { break };
            let tick = self.tick();
            if let Some(entry) = self.entries.get_mut(&key) {
                self.protected_bytes -= entry.size;
                entry.segment = Segment::Probation;
                entry.tick = tick;
                self.probation.insert(tick, key);
            }
        }
    }

    pub fn remove(&mut self, key: &Key) -> Option<u64> {
        let entry = self.entries.remove(key)?;
        match entry.segment {
            Segment::Probation => {
                self.probation.remove(&entry.tick);
            }
            Segment::Protected => {
                self.protected.remove(&entry.tick);
                self.protected_bytes -= entry.size;
            }
        }
        self.used -= entry.size;
        Some(entry.size)
    }

    /// Removes the entry only if it is still the one of `generation`.
    pub fn remove_generation(&mut self, key: &Key, generation: u64) -> bool {
        if self.entries.get(key).is_some_and(|e| e.generation == generation) {
            self.remove(key);
            true
        } else {
            false
        }
    }

    /// Every entry of a blob.
    pub fn keys_of(&self, blob: BlobId) -> Vec<Key> {
        self.entries.range(Key { blob, chunk: 0 }..=Key { blob, chunk: u64::MAX }).map(|(k, _)| *k).collect()
    }

    /// Every blob with at least one entry, in id order.
    pub fn blobs(&self) -> Vec<BlobId> {
        let mut blobs: Vec<BlobId> = self.entries.keys().map(|k| k.blob).collect();
        blobs.dedup();
        blobs
    }

    /// Removes and returns the next entry to evict.
    pub fn pop_victim(&mut self) -> Option<(Key, u64)> {
        let key = match self.probation.first_key_value() {
            Some((_, key)) => *key,
            None => *self.protected.first_key_value()?.1,
        };
        let size = self.remove(&key)?;
        Some((key, size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u128) -> Key {
        Key { blob: format!("{n:032x}").parse().unwrap(), chunk: 0 }
    }

    #[test]
    fn new_entries_are_evicted_in_insertion_order() {
        let mut index = Index::new(1000);
        let now = SystemTime::now();
        for n in 0..5 {
            index.insert(key(n), 10, now);
        }
        assert_eq!(index.used(), 50);
        assert_eq!(index.pop_victim(), Some((key(0), 10)));
        assert_eq!(index.pop_victim(), Some((key(1), 10)));
        assert_eq!(index.used(), 30);
    }

    #[test]
    fn a_hit_protects_against_a_scan() {
        let mut index = Index::new(1000);
        let now = SystemTime::now();
        index.insert(key(1), 10, now);
        index.insert(key(2), 10, now);
        index.touch(&key(1), now).unwrap();
        for n in 100..110 {
            index.insert(key(n), 10, now);
        }
        // Everything read once goes first, however recent.
        for n in std::iter::once(2).chain(100..110) {
            assert_eq!(index.pop_victim().unwrap().0, key(n));
        }
        assert_eq!(index.pop_victim().unwrap().0, key(1));
        assert_eq!(index.pop_victim(), None);
        assert_eq!(index.used(), 0);
    }

    #[test]
    fn protected_overflow_falls_back_to_probation_in_lru_order() {
        let mut index = Index::new(100); // protected holds at most 80 bytes
        let now = SystemTime::now();
        for n in 0..5 {
            index.insert(key(n), 30, now);
            index.touch(&key(n), now).unwrap();
        }
        // Protected keeps the two most recent (60 bytes); 0, 1, 2 were demoted in that order.
        for n in [0, 1, 2, 3, 4] {
            assert_eq!(index.pop_victim().unwrap().0, key(n));
        }
    }

    #[test]
    fn generations_guard_removal_and_recency_is_persisted_coarsely() {
        let mut index = Index::new(1000);
        let old = SystemTime::now() - Duration::from_secs(3600);
        let first = index.insert(key(1), 10, old);
        let hit = index.touch(&key(1), SystemTime::now()).unwrap();
        assert!(hit.persist);
        assert_eq!(hit.generation, first);
        assert!(!index.touch(&key(1), SystemTime::now()).unwrap().persist);
        let second = index.insert(key(1), 20, SystemTime::now());
        assert!(!index.remove_generation(&key(1), first));
        assert!(index.remove_generation(&key(1), second));
        assert_eq!(index.len(), 0);
        assert_eq!(index.used(), 0);
    }
}
