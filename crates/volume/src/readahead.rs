//! Read-ahead for sequential streams. A read that starts where a recent read ended continues a
//! stream; its bytes are fetched as whole windows (4 MiB) of the log object they live in, so a
//! stream of 1 MiB reads costs one GET per window instead of one per read, and the next reads
//! find their bytes in memory. Concurrent readers of a window share its fetch. Log objects never
//! change once written, so a window stays valid as long as it is kept (a few, most recent).
//! Random reads bypass it: they fetch exactly what they need.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

use crate::error::StoreError;
use crate::format::{HEADER_BYTES, SECTOR};
use crate::store::ObjectStore;

/// Sectors per window (4 MiB).
pub const WINDOW_SECTORS: u64 = 1024;
/// Windows kept in memory: 16 MiB at most.
const WINDOWS_KEPT: usize = 4;
/// Read ends remembered to recognise a stream (several streams, and out-of-order dispatch of
/// a deep queue).
const RECENT_ENDS: usize = 32;

type WindowFetch = Shared<BoxFuture<'static, Result<Bytes, String>>>;

#[derive(Default)]
pub(crate) struct ReadAhead {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Ends (volume byte offsets) of recent reads, recorded when each read starts.
    recent_ends: VecDeque<u64>,
    /// ((log object, window index), its bytes or their fetch), oldest first.
    windows: VecDeque<((u64, u64), WindowFetch)>,
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

impl ReadAhead {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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

    /// Reads `span` through windows. `None` when the span does not fit the object's windows
    /// (the caller reads it directly).
    pub async fn read(&self, store: &Arc<dyn ObjectStore>, span: ObjectSpan<'_>) -> Option<Result<Bytes, StoreError>> {
        let end = span.first + span.sectors;
        if end > span.object_sectors {
            return None;
        }
        // Within one window (the usual case): a slice of it, no copy.
        let window = span.first / WINDOW_SECTORS;
        if (end - 1) / WINDOW_SECTORS == window {
            let start = window * WINDOW_SECTORS;
            let stop = (start + WINDOW_SECTORS).min(span.object_sectors);
            return Some(
                self.window(store, span.key, span.seq, window, start, stop)
                    .await
                    .map(|data| data.slice(((span.first - start) * SECTOR) as usize..((end - start) * SECTOR) as usize))
                    .map_err(|message| StoreError::Backend { key: span.key.to_string(), message }),
            );
        }
        let mut out = BytesMut::with_capacity((span.sectors * SECTOR) as usize);
        let mut at = span.first;
        while at < end {
            let window = at / WINDOW_SECTORS;
            let start = window * WINDOW_SECTORS;
            let stop = (start + WINDOW_SECTORS).min(span.object_sectors);
            let data = match self.window(store, span.key, span.seq, window, start, stop).await {
                Ok(data) => data,
                Err(message) => return Some(Err(StoreError::Backend { key: span.key.to_string(), message })),
            };
            let take = end.min(stop);
            out.extend_from_slice(&data[((at - start) * SECTOR) as usize..((take - start) * SECTOR) as usize]);
            at = take;
        }
        Some(Ok(out.freeze()))
    }

    /// The bytes of sectors `start..stop` of object `seq`: kept, being fetched, or fetched now.
    async fn window(
        &self,
        store: &Arc<dyn ObjectStore>,
        key: &str,
        seq: u64,
        window: u64,
        start: u64,
        stop: u64,
    ) -> Result<Bytes, String> {
        let id = (seq, window);
        let fetch = {
            let mut st = self.lock();
            match st.windows.iter().find(|(k, _)| *k == id) {
                Some((_, fetch)) => fetch.clone(),
                None => {
                    let (store, key) = (Arc::clone(store), key.to_string());
                    let fetch = async move {
                        let from = HEADER_BYTES as u64 + start * SECTOR;
                        store.get_range(&key, from, (stop - start) * SECTOR).await.map_err(|e| e.to_string())
                    }
                    .boxed()
                    .shared();
                    st.windows.push_back((id, fetch.clone()));
                    if st.windows.len() > WINDOWS_KEPT {
                        st.windows.pop_front();
                    }
                    fetch
                }
            }
        };
        let result = fetch.await;
        if result.is_err() {
            // Not kept: the next read tries again.
            self.lock().windows.retain(|(k, _)| *k != id);
        }
        result
    }
}
