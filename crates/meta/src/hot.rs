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

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;

use crate::{KeyValue, Revision};

/// Keys kept at most.
const MAX_ENTRIES: usize = 64 << 10;
/// Bytes of values kept at most.
const MAX_BYTES: usize = 64 << 20;
/// Values larger than this are never kept (inline objects are at most 32 KiB by default).
const MAX_VALUE: usize = 64 << 10;

pub(crate) struct HotKeys {
    state: Mutex<State>,
}

struct State {
    entries: lru::LruCache<Bytes, Option<KeyValue>>,
    bytes: usize,
    /// Bumped by every published commit.
    epoch: u64,
}

/// A reader's note of the cache's epoch before it opened its snapshot.
pub(crate) struct Ticket(u64);

impl HotKeys {
    pub(crate) fn new() -> HotKeys {
        let capacity = NonZeroUsize::new(MAX_ENTRIES).unwrap_or(NonZeroUsize::MIN);
        HotKeys { state: Mutex::new(State { entries: lru::LruCache::new(capacity), bytes: 0, epoch: 0 }) }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent; a panic inside one cannot.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Every key's value and the newest published revision, if every key is cached.
    pub(crate) fn get_all(&self, keys: &[Bytes], revision: &AtomicU64) -> Option<(Vec<Option<KeyValue>>, Revision)> {
        let mut state = self.lock();
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
        Ticket(self.lock().epoch)
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
            if let Some(old) = state.entries.put(key.clone(), value.clone()) {
                state.bytes -= value_size(key, old.as_ref());
            }
            state.bytes += size;
            while state.bytes > MAX_BYTES || state.entries.len() > MAX_ENTRIES {
                let Some((key, old)) = state.entries.pop_lru() else { break };
                state.bytes -= value_size(&key, old.as_ref());
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
                    if let Some(old) = state.entries.pop(key) {
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
        let state = hot.lock();
        assert!(state.bytes <= MAX_BYTES, "{} bytes kept", state.bytes);
        assert!(state.entries.len() < MAX_BYTES / MAX_VALUE + 100);
        drop(state);
        let first = Bytes::from_static(b"key-0");
        assert!(hot.get_all(std::slice::from_ref(&first), &published).is_none(), "the oldest were evicted");
    }
}
