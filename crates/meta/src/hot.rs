//! The embedded store's cache of recently read keys: a hit answers a point read without
//! opening a redb read transaction, copying its pages or decoding the stored value (a third of
//! the CPU of serving a small object from the web edge).
//!
//! It is exact, never stale: the writer thread removes every key a commit wrote, under the
//! cache's lock, before it publishes the commit's revision or acknowledges it. A reader that
//! missed fills the cache only if no commit was published since it started reading (the
//! `epoch`), so a value read from an older snapshot is never put back after its key was
//! invalidated; and a reader whose snapshot already holds a commit not yet published waits for
//! the publication before it returns (`EmbeddedStore::published`), so no read returns an older
//! state than one an earlier read returned. Absent keys are cached too (a small object's record has no blob and a large
//! one has no inline bytes: both are looked up on every read).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;

use crate::{KeyValue, Revision};

/// Keys kept at most.
const MAX_ENTRIES: usize = 64 << 10;
/// Bytes of values kept at most.
const MAX_BYTES: usize = 64 << 20;
/// Values larger than this are never kept (inline objects are at most 32 KiB by default).
const MAX_VALUE: usize = 64 << 10;

/// Hits only read (a shared lock, nothing reordered); a full cache evicts whichever entry its
/// table yields first, which is as good as random for this purpose.
pub(crate) struct HotKeys {
    state: RwLock<State>,
}

struct State {
    entries: HashMap<Bytes, Option<KeyValue>>,
    bytes: usize,
    /// Bumped by every published commit.
    epoch: u64,
}

/// A reader's note of the cache's epoch before it opened its snapshot.
pub(crate) struct Ticket(u64);

impl HotKeys {
    pub(crate) fn new() -> HotKeys {
        HotKeys { state: RwLock::new(State { entries: HashMap::new(), bytes: 0, epoch: 0 }) }
    }

    // Every critical section leaves the state consistent; a panic inside one cannot.
    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Every key's value and the newest published revision, if every key is cached.
    pub(crate) fn get_all(&self, keys: &[Bytes], revision: &AtomicU64) -> Option<(Vec<Option<KeyValue>>, Revision)> {
        let state = self.read();
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            out.push(state.entries.get(key)?.clone());
        }
        // Read under the lock: the writer publishes a revision only after removing what it
        // wrote, so these values are those of this revision.
        Some((out, revision.load(Ordering::SeqCst)))
    }

    /// To be taken before reading the snapshot whose values [`HotKeys::fill`] will keep.
    pub(crate) fn ticket(&self) -> Ticket {
        Ticket(self.read().epoch)
    }

    /// Keeps what a reader read, unless a commit was published since it took its ticket.
    pub(crate) fn fill(&self, ticket: Ticket, keys: &[Bytes], values: &[Option<KeyValue>]) {
        let mut state = self.lock();
        if state.epoch != ticket.0 {
            return;
        }
        for (key, value) in keys.iter().zip(values) {
            let size = value_size(key, value.as_ref());
            if size > MAX_VALUE {
                continue;
            }
            if let Some(old) = state.entries.insert(key.clone(), value.clone()) {
                state.bytes -= value_size(key, old.as_ref());
            }
            state.bytes += size;
            if state.bytes > MAX_BYTES || state.entries.len() > MAX_ENTRIES {
                state.evict();
            }
        }
    }

    /// Forgets `written` keys and publishes `revision`, as one step for readers. `None` for
    /// `written` forgets everything (a commit whose outcome is unknown).
    pub(crate) fn publish<'a>(
        &self,
        written: Option<impl Iterator<Item = &'a Bytes>>,
        revision: Option<Revision>,
        published: &AtomicU64,
    ) {
        let mut state = self.lock();
        match written {
            Some(keys) => {
                for key in keys {
                    if let Some(old) = state.entries.remove(key) {
                        state.bytes -= value_size(key, old.as_ref());
                    }
                }
            }
            None => {
                state.entries.clear();
                state.bytes = 0;
            }
        }
        state.epoch += 1;
        if let Some(revision) = revision {
            published.store(revision, Ordering::SeqCst);
        }
    }
}

impl State {
    /// Drops a sixteenth of the entries (whichever the table yields first) until within bounds:
    /// one scan per batch, not one from the table's start per entry.
    fn evict(&mut self) {
        while self.bytes > MAX_BYTES || self.entries.len() > MAX_ENTRIES {
            let batch = (self.entries.len() / 16).max(1);
            let victims: Vec<Bytes> = self.entries.keys().take(batch).cloned().collect();
            if victims.is_empty() {
                return;
            }
            for victim in victims {
                if let Some(old) = self.entries.remove(&victim) {
                    self.bytes -= value_size(&victim, old.as_ref());
                }
            }
        }
    }
}

fn value_size(key: &Bytes, value: Option<&KeyValue>) -> usize {
    key.len() + value.map_or(0, |kv| kv.value.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str, revision: Revision) -> KeyValue {
        KeyValue {
            key: Bytes::from(key.to_string()),
            value: Bytes::from(value.to_string()),
            create_revision: revision,
            mod_revision: revision,
            version: 1,
        }
    }

    #[test]
    fn a_read_that_raced_a_commit_is_not_kept() {
        let hot = HotKeys::new();
        let published = AtomicU64::new(1);
        let key = Bytes::from_static(b"k");
        let ticket = hot.ticket();
        // A commit of `k` is published while the reader reads its (older) snapshot.
        hot.publish(Some([key.clone()].iter()), Some(2), &published);
        hot.fill(ticket, std::slice::from_ref(&key), &[Some(kv("k", "old", 1))]);
        assert!(hot.get_all(std::slice::from_ref(&key), &published).is_none());

        let ticket = hot.ticket();
        hot.fill(ticket, std::slice::from_ref(&key), &[Some(kv("k", "new", 2))]);
        let (values, revision) = hot.get_all(std::slice::from_ref(&key), &published).expect("kept");
        assert_eq!(values[0].as_ref().map(|v| v.value.clone()), Some(Bytes::from_static(b"new")));
        assert_eq!(revision, 2);

        hot.publish(Some([key.clone()].iter()), Some(3), &published);
        assert!(hot.get_all(std::slice::from_ref(&key), &published).is_none(), "a commit forgets what it wrote");
    }

    #[test]
    fn bytes_are_bounded() {
        let hot = HotKeys::new();
        let published = AtomicU64::new(1);
        let big = "x".repeat(MAX_VALUE - 16);
        for i in 0..(MAX_BYTES / MAX_VALUE + 100) {
            let key = Bytes::from(format!("key-{i}"));
            hot.fill(hot.ticket(), std::slice::from_ref(&key), &[Some(kv("k", &big, 1))]);
        }
        let state = hot.read();
        assert!(state.bytes <= MAX_BYTES, "{} bytes kept", state.bytes);
        assert!(state.entries.len() < MAX_BYTES / MAX_VALUE + 100, "some entries were evicted");
        let kept: usize = state.entries.iter().map(|(k, v)| value_size(k, v.as_ref())).sum();
        assert_eq!(kept, state.bytes, "the byte count matches what is kept");
        drop(state);
        let _ = published;
    }
}
