//! The narrow slice of the S3 protocol a volume needs, behind a trait so the log logic can be
//! unit-tested against memory while production (and the integration tests) speak real S3.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::StoreError;

/// Condition attached to a PUT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutCondition {
    /// Unconditional overwrite.
    None,
    /// `If-None-Match: *`: create only.
    IfAbsent,
    /// `If-Match: <etag>`: replace only the version we read.
    IfMatch(String),
}

/// An object read whole, with its ETag for later compare-and-swap.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub data: Bytes,
    pub etag: String,
}

/// Bytes held as the pieces they arrived in (an HTTP body's chunks), so a read can be served
/// from a fetched window without first gathering it into one buffer.
#[derive(Debug, Clone, Default)]
pub struct Parts {
    parts: Vec<Bytes>,
    len: usize,
}

impl Parts {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The pieces, in order.
    pub fn parts(&self) -> &[Bytes] {
        &self.parts
    }

    /// Appends `more` (no copy).
    pub fn push(&mut self, more: Bytes) {
        if !more.is_empty() {
            self.len += more.len();
            self.parts.push(more);
        }
    }

    /// Appends every piece of `more` (no copy).
    pub fn extend(&mut self, more: Parts) {
        self.len += more.len;
        self.parts.extend(more.parts);
    }

    /// Bytes `range` (no copy; the range must lie inside).
    pub fn slice(&self, range: std::ops::Range<usize>) -> Parts {
        let mut out = Parts::default();
        let mut at = 0;
        for part in &self.parts {
            let (start, end) = (at, at + part.len());
            at = end;
            if end <= range.start || start >= range.end {
                continue;
            }
            out.push(part.slice(range.start.max(start) - start..range.end.min(end) - start));
        }
        out
    }

    /// One buffer: the piece itself when there is one, else a copy.
    pub fn to_bytes(&self) -> Bytes {
        match self.parts.as_slice() {
            [] => Bytes::new(),
            [one] => one.clone(),
            many => Bytes::from(many.concat()),
        }
    }

    /// Copies the bytes into `out`, which must be exactly as long.
    pub fn copy_to(&self, out: &mut [u8]) {
        let mut at = 0;
        for part in &self.parts {
            out[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
    }
}

impl From<Bytes> for Parts {
    fn from(b: Bytes) -> Self {
        let mut p = Parts::default();
        p.push(b);
        p
    }
}

/// One entry of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub key: String,
    pub size: u64,
}

/// Under which key an object is sealed (see [`ObjectStore::key_state`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// Sealed under the volume's current key, or not sealed at all (a plain store).
    Current,
    /// Sealed under the key a rotation in progress retires; from [`ObjectStore::reseal`]: it
    /// was, and is now sealed under the current key.
    Retiring,
    /// Not there (deleted, or replaced meanwhile).
    Gone,
}

/// What the volume needs from a bucket. Keys are full keys (the prefix is already applied).
#[async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    /// Stores `body` at `key`, honouring `cond`; returns the new ETag.
    async fn put(&self, key: &str, body: Bytes, cond: PutCondition) -> Result<String, StoreError>;
    /// Stores the content of a local file (used for checkpoints, which can be large).
    async fn put_file(&self, key: &str, path: &Path) -> Result<String, StoreError>;
    /// Reads a whole object.
    async fn get(&self, key: &str) -> Result<Fetched, StoreError>;
    /// Reads `len` bytes at `start`. A range past the end is an error.
    async fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Bytes, StoreError>;
    /// Reads up to `len` bytes at `start` (fewer where the object ends first; `start` must lie
    /// inside it). Stores that cannot tell answer as [`Self::get_range`] does.
    async fn get_range_upto(&self, key: &str, start: u64, len: u64) -> Result<Bytes, StoreError> {
        self.get_range(key, start, len).await
    }
    /// [`Self::get_range`] as the pieces the bytes arrived in. Stores that cannot tell answer
    /// with one piece.
    async fn get_range_parts(&self, key: &str, start: u64, len: u64) -> Result<Parts, StoreError> {
        Ok(Parts::from(self.get_range(key, start, len).await?))
    }
    /// Lists every key under `prefix`, in key order.
    async fn list(&self, prefix: &str) -> Result<Vec<Listed>, StoreError>;
    /// Deletes `key`; deleting a missing key succeeds, as in S3.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
    /// Under which key `key` is sealed. Stores that do not seal answer `Current`.
    async fn key_state(&self, _key: &str) -> Result<KeyState, StoreError> {
        Ok(KeyState::Current)
    }
    /// Seals `key` again under the current key if it is under a retiring one (key rotation);
    /// answers what it was. Stores that do not seal answer `Current`.
    async fn reseal(&self, _key: &str) -> Result<KeyState, StoreError> {
        Ok(KeyState::Current)
    }
}

/// An in-memory store for unit tests.
#[derive(Default)]
pub struct MemStore {
    objects: Mutex<BTreeMap<String, (Bytes, String)>>,
    etags: AtomicU64,
    /// When set, every PUT fails: simulates an unreachable bucket.
    pub fail_puts: std::sync::atomic::AtomicBool,
    /// Range reads served, and their bytes (tests of read patterns reset and check them).
    pub range_reads: AtomicU64,
    pub range_bytes: AtomicU64,
    /// When not 0, [`ObjectStore::get_range_parts`] answers in pieces of this many bytes, as
    /// an HTTP body arrives (slices of the stored object, so tests can tell a copy).
    pub part_bytes: std::sync::atomic::AtomicUsize,
}

impl MemStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (Bytes, String)>> {
        // A poisoned map only means another test thread panicked; the data is still usable.
        self.objects.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Total bytes stored under `prefix` (tests use it to check GC).
    pub fn bytes_under(&self, prefix: &str) -> u64 {
        self.lock()
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, (v, _))| v.len() as u64)
            .sum()
    }
}

#[async_trait]
impl ObjectStore for MemStore {
    async fn put(&self, key: &str, body: Bytes, cond: PutCondition) -> Result<String, StoreError> {
        if self.fail_puts.load(Ordering::Relaxed) {
            return Err(StoreError::Backend { key: key.to_string(), message: "injected failure".into() });
        }
        let mut map = self.lock();
        let current = map.get(key).map(|(_, e)| e.clone());
        let ok = match (&cond, &current) {
            (PutCondition::None, _) => true,
            (PutCondition::IfAbsent, existing) => existing.is_none(),
            (PutCondition::IfMatch(want), Some(have)) => want == have,
            (PutCondition::IfMatch(_), None) => false,
        };
        if !ok {
            return Err(StoreError::PreconditionFailed(key.to_string()));
        }
        let etag = format!("\"{}\"", self.etags.fetch_add(1, Ordering::Relaxed) + 1);
        map.insert(key.to_string(), (body, etag.clone()));
        Ok(etag)
    }

    async fn put_file(&self, key: &str, path: &Path) -> Result<String, StoreError> {
        let data = tokio::fs::read(path).await?;
        self.put(key, Bytes::from(data), PutCondition::None).await
    }

    async fn get(&self, key: &str) -> Result<Fetched, StoreError> {
        self.lock()
            .get(key)
            .map(|(data, etag)| Fetched { data: data.clone(), etag: etag.clone() })
            .ok_or_else(|| StoreError::NotFound(key.to_string()))
    }

    async fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Bytes, StoreError> {
        self.range_reads.fetch_add(1, Ordering::Relaxed);
        self.range_bytes.fetch_add(len, Ordering::Relaxed);
        let map = self.lock();
        let (data, _) = map.get(key).ok_or_else(|| StoreError::NotFound(key.to_string()))?;
        let end = start.saturating_add(len);
        if end > data.len() as u64 {
            return Err(StoreError::Backend {
                key: key.to_string(),
                message: format!("range {start}+{len} beyond object size {}", data.len()),
            });
        }
        Ok(data.slice(start as usize..end as usize))
    }

    async fn get_range_upto(&self, key: &str, start: u64, len: u64) -> Result<Bytes, StoreError> {
        let size = self.lock().get(key).map(|(data, _)| data.len() as u64);
        let len = size.map_or(len, |size| len.min(size.saturating_sub(start)));
        self.get_range(key, start, len).await
    }

    async fn get_range_parts(&self, key: &str, start: u64, len: u64) -> Result<Parts, StoreError> {
        let data = self.get_range(key, start, len).await?;
        let piece = match self.part_bytes.load(Ordering::Relaxed) {
            0 => data.len().max(1),
            n => n,
        };
        let mut parts = Parts::default();
        for at in (0..data.len()).step_by(piece) {
            parts.push(data.slice(at..(at + piece).min(data.len())));
        }
        Ok(parts)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Listed>, StoreError> {
        Ok(self
            .lock()
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, (v, _))| Listed { key: k.clone(), size: v.len() as u64 })
            .collect())
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.lock().remove(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_slice_across_pieces_without_copying() {
        let data = Bytes::from((0..=255u8).cycle().take(10_000).collect::<Vec<u8>>());
        let mut parts = Parts::default();
        for at in (0..data.len()).step_by(3_000) {
            parts.push(data.slice(at..(at + 3_000).min(data.len())));
        }
        assert_eq!((parts.len(), parts.parts().len()), (10_000, 4));
        for (a, b) in [(0, 10_000), (1, 2), (2_999, 3_001), (2_500, 9_100), (9_000, 10_000), (4_000, 4_000)] {
            let s = parts.slice(a..b);
            assert_eq!(s.len(), b - a);
            assert_eq!(s.to_bytes(), data.slice(a..b), "{a}..{b}");
            let mut out = vec![0; b - a];
            s.copy_to(&mut out);
            assert_eq!(out, data[a..b]);
            let base = data.as_ptr() as usize;
            assert!(s.parts().iter().all(|p| (base..base + data.len()).contains(&(p.as_ptr() as usize))));
        }
        assert_eq!(parts.slice(3_000..6_000).parts().len(), 1, "a whole piece stays one");
    }
}
