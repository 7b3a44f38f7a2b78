//! Read-ahead for sequential streams. A read that starts where a recent read ended continues a
//! stream; its bytes are fetched as whole windows (4 MiB) of the log object they live in, so a
//! stream of 1 MiB reads costs one GET per window instead of one per read, and the next reads
//! find their bytes in memory. The volume also starts the fetches of the windows holding the
//! stream's next sectors (`--read-ahead`, 16 MiB by default; [`ReadAhead::prefetch`]), so
//! several ranged GETs are in flight ahead of the reader. Concurrent readers of a window share
//! its fetch. Log objects never change once written, so a window stays valid as long as it is
//! kept (the most recent: four more than the read-ahead's; memory is bounded by them and by the
//! windows reads in flight still hold). Random reads bypass it: they fetch exactly what they
//! need.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

use crate::error::StoreError;
use crate::format::{HEADER_BYTES, SECTOR};
use crate::store::{ObjectStore, Parts};

/// Sectors per window (4 MiB).
pub const WINDOW_SECTORS: u64 = 1024;
/// Largest read-ahead: 16 windows (64 MiB).
const MAX_AHEAD_WINDOWS: u64 = 16;
/// Windows kept beyond the read-ahead's, so a prefetched window is not dropped before the
/// reader (or a second stream) gets to it.
const SPARE_WINDOWS: usize = 4;
/// Read ends remembered to recognise a stream (several streams, and out-of-order dispatch of
/// a deep queue).
const RECENT_ENDS: usize = 32;

type WindowFetch = Shared<BoxFuture<'static, Result<Parts, String>>>;

pub(crate) struct ReadAhead {
    /// Shared with the tasks running fetches ahead (they drop a window that failed).
    state: Arc<Mutex<State>>,
    /// Volume sectors past a stream's last read whose windows are fetched ahead.
    ahead_sectors: u64,
    /// Windows kept in memory, fetched or being fetched.
    kept: usize,
}

#[derive(Default)]
struct State {
    /// Ends (volume byte offsets) of recent reads, recorded when each read starts.
    recent_ends: VecDeque<u64>,
    /// ((log object, window index), its bytes or their fetch), oldest first.
    windows: VecDeque<((u64, u64), WindowFetch)>,
    /// Volume sector up to which the last stream's next sectors were prefetched.
    prefetched_to: u64,
}

/// Where a piece of a read lives in the bucket.
pub(crate) struct ObjectSpan<'a> {
    pub key: &'a str,
    pub seq: u64,
    /// Data sectors the object holds (the windows' bound).
    pub object_sectors: u64,
    pub first: u64,
    pub sectors: u64,
}

/// Window `window` of object `seq` (at `key`): its data sectors `start..stop`.
struct Window<'a> {
    key: &'a str,
    seq: u64,
    window: u64,
    start: u64,
    stop: u64,
}

impl ObjectSpan<'_> {
    fn window(&self, window: u64, start: u64, stop: u64) -> Window<'_> {
        Window { key: self.key, seq: self.seq, window, start, stop }
    }
}

impl ReadAhead {
    /// Read-ahead of `bytes` past a stream's reads, rounded up to whole windows (at most 64 MiB).
    pub fn new(bytes: u64) -> Self {
        let windows = bytes.div_ceil(WINDOW_SECTORS * SECTOR).min(MAX_AHEAD_WINDOWS);
        Self { state: Arc::default(), ahead_sectors: windows * WINDOW_SECTORS, kept: windows as usize + SPARE_WINDOWS }
    }

    pub fn ahead_sectors(&self) -> u64 {
        self.ahead_sectors
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// The part of volume sectors `end..stop` (the next sectors of a stream whose last read
    /// ended at `end`) not already prefetched for it; records them as prefetched.
    pub fn claim_ahead(&self, end: u64, stop: u64) -> std::ops::Range<u64> {
        let mut st = self.lock();
        let from = if (end..=stop).contains(&st.prefetched_to) { st.prefetched_to } else { end };
        st.prefetched_to = stop;
        from..stop
    }

    /// Starts fetching the windows holding `span` (unless kept or being fetched), without
    /// waiting for them. A fetch that fails is dropped, so a read retries it.
    pub fn prefetch(&self, store: &Arc<dyn ObjectStore>, span: ObjectSpan<'_>) {
        let end = (span.first + span.sectors).min(span.object_sectors);
        let mut window = span.first / WINDOW_SECTORS;
        while window * WINDOW_SECTORS < end {
            let start = window * WINDOW_SECTORS;
            let stop = (start + WINDOW_SECTORS).min(span.object_sectors);
            let (fetch, started) = self.fetch(store, &span.window(window, start, stop));
            if started {
                let (state, id) = (Arc::clone(&self.state), (span.seq, window));
                tokio::spawn(async move {
                    if fetch.await.is_err() {
                        lock(&state).windows.retain(|(k, _)| *k != id);
                    }
                });
            }
            window += 1;
        }
    }

    /// Records a read of `len` bytes at `offset`; true when it continues a recent read.
    pub fn note_read(&self, offset: u64, len: u64) -> bool {
        let mut st = self.lock();
        let continues = st.recent_ends.contains(&offset);
        st.recent_ends.push_back(offset + len);
        if st.recent_ends.len() > RECENT_ENDS {
            st.recent_ends.pop_front();
        }
        continues
    }

    /// Reads `span` through windows, as slices of the windows' pieces (no copy). `None` when
    /// the span does not fit the object's windows (the caller reads it directly).
    pub async fn read(&self, store: &Arc<dyn ObjectStore>, span: ObjectSpan<'_>) -> Option<Result<Parts, StoreError>> {
        let end = span.first + span.sectors;
        if end > span.object_sectors {
            return None;
        }
        let mut out = Parts::default();
        let mut at = span.first;
        while at < end {
            let window = at / WINDOW_SECTORS;
            let start = window * WINDOW_SECTORS;
            let stop = (start + WINDOW_SECTORS).min(span.object_sectors);
            let data = match self.window(store, &span.window(window, start, stop)).await {
                Ok(data) => data,
                Err(message) => return Some(Err(StoreError::Backend { key: span.key.to_string(), message })),
            };
            let take = end.min(stop);
            out.extend(data.slice(((at - start) * SECTOR) as usize..((take - start) * SECTOR) as usize));
            at = take;
        }
        Some(Ok(out))
    }

    /// The bytes of sectors `start..stop` of object `seq`: kept, being fetched, or fetched now.
    async fn window(&self, store: &Arc<dyn ObjectStore>, w: &Window<'_>) -> Result<Parts, String> {
        let id = (w.seq, w.window);
        let (fetch, _) = self.fetch(store, w);
        let result = fetch.await;
        if result.is_err() {
            // Not kept: the next read tries again.
            self.lock().windows.retain(|(k, _)| *k != id);
        }
        result
    }

    /// The fetch of window `window` (sectors `start..stop`) of object `seq`: kept, or started
    /// now (then true), dropping the oldest kept window past the number kept.
    fn fetch(&self, store: &Arc<dyn ObjectStore>, w: &Window<'_>) -> (WindowFetch, bool) {
        let id = (w.seq, w.window);
        let (key, start, stop) = (w.key, w.start, w.stop);
        let mut st = self.lock();
        if let Some((_, fetch)) = st.windows.iter().find(|(k, _)| *k == id) {
            return (fetch.clone(), false);
        }
        let (store, key) = (Arc::clone(store), key.to_string());
        let fetch = async move {
            let from = HEADER_BYTES as u64 + start * SECTOR;
            store.get_range_parts(&key, from, (stop - start) * SECTOR).await.map_err(|e| e.to_string())
        }
        .boxed()
        .shared();
        st.windows.push_back((id, fetch.clone()));
        if st.windows.len() > self.kept {
            st.windows.pop_front();
        }
        (fetch, true)
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
