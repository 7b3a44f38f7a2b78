//! Helpers shared by the cache and peer tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use futures::stream::BoxStream;
use meridian_blob::{BlobError, BlobId, BlobResult, CacheOptions, ChunkCache, ChunkSource};

pub const MIB: u64 = 1 << 20;

/// Bounds every test: a hang is a failure, not a stuck CI job.
pub async fn bounded<T>(secs: u64, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), f).await.expect("test took too long")
}

/// Deterministic bytes that do not repeat at any chunk-sized period.
pub fn data(len: u64, seed: u64) -> Bytes {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len as usize + 8);
    while (out.len() as u64) < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len as usize);
    Bytes::from(out)
}

pub fn options(chunk_size: u64, max_bytes: u64) -> CacheOptions {
    CacheOptions { chunk_size, max_bytes, ..CacheOptions::default() }
}

/// An in-memory source that counts what it serves and can misbehave on request.
pub struct TestSource {
    pub blobs: Mutex<Vec<(BlobId, Bytes)>>,
    pub frame: usize,
    pub delay: Duration,
    pub fetches: AtomicU64,
    pub served: Arc<AtomicU64>,
    /// The next fetch fails after this many bytes.
    pub fail_after: Mutex<Option<u64>>,
    /// Every fetch flips a bit of its first byte.
    pub corrupt: AtomicBool,
    /// Every fetch sends this many bytes more (positive) or fewer (negative) than asked.
    pub len_delta: Mutex<i64>,
    /// The next fetch sends this many bytes, then waits for the gate before the rest.
    pub gate: Mutex<Option<(u64, Arc<tokio::sync::Semaphore>)>>,
    /// The next fetch sends this many bytes, then stalls forever.
    pub stall_after: Mutex<Option<u64>>,
}

impl TestSource {
    pub fn new(blobs: Vec<(BlobId, Bytes)>) -> Arc<TestSource> {
        Arc::new(TestSource {
            blobs: Mutex::new(blobs),
            frame: 64 << 10,
            delay: Duration::ZERO,
            fetches: AtomicU64::new(0),
            served: Arc::new(AtomicU64::new(0)),
            fail_after: Mutex::new(None),
            corrupt: AtomicBool::new(false),
            len_delta: Mutex::new(0),
            gate: Mutex::new(None),
            stall_after: Mutex::new(None),
        })
    }

    pub fn slow(blobs: Vec<(BlobId, Bytes)>, frame: usize, delay: Duration) -> Arc<TestSource> {
        let source = TestSource::new(blobs);
        let mut source = Arc::try_unwrap(source).ok().unwrap();
        source.frame = frame;
        source.delay = delay;
        Arc::new(source)
    }

    pub fn served(&self) -> u64 {
        self.served.load(SeqCst)
    }

    pub fn fetches(&self) -> u64 {
        self.fetches.load(SeqCst)
    }
}

#[async_trait::async_trait]
impl ChunkSource for TestSource {
    async fn fetch(&self, blob: BlobId, offset: u64, len: u64) -> BlobResult<BoxStream<'static, BlobResult<Bytes>>> {
        self.fetches.fetch_add(1, SeqCst);
        let data = self.blobs.lock().unwrap().iter().find(|(id, _)| *id == blob).map(|(_, d)| d.clone());
        let data = data.ok_or(BlobError::NotFound(blob))?;
        let delta = *self.len_delta.lock().unwrap();
        let end = ((offset + len) as i64 + delta).clamp(offset as i64, data.len() as i64) as usize;
        let mut body = data.slice(offset as usize..end);
        if delta > 0 {
            let mut longer = BytesMut::from(&body[..]);
            longer.extend_from_slice(&vec![7u8; delta as usize]);
            body = longer.freeze();
        }
        if self.corrupt.load(SeqCst) && !body.is_empty() {
            let mut bad = BytesMut::from(&body[..]);
            bad[0] ^= 1;
            body = bad.freeze();
        }
        let fail_after = self.fail_after.lock().unwrap().take();
        let gate = self.gate.lock().unwrap().take();
        let stall_after = self.stall_after.lock().unwrap().take();
        let (frame, delay, served) = (self.frame, self.delay, self.served.clone());
        let stream = futures::stream::unfold(Some(0u64), move |pos| {
            let (body, gate, served) = (body.clone(), gate.clone(), served.clone());
            async move {
                let pos = pos?;
                if pos >= body.len() as u64 {
                    return None;
                }
                if fail_after.is_some_and(|n| pos >= n) {
                    return Some((Err(BlobError::Task("test source died".into())), None));
                }
                if stall_after.is_some_and(|n| pos >= n) {
                    futures::future::pending::<()>().await;
                }
                if let Some((at, gate)) = &gate
                    && pos >= *at
                {
                    let _ = gate.acquire().await.unwrap();
                }
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                let mut end = (pos + frame as u64).min(body.len() as u64);
                for limit in [fail_after, stall_after, gate.as_ref().map(|(at, _)| *at)].into_iter().flatten() {
                    if pos < limit {
                        end = end.min(limit);
                    }
                }
                served.fetch_add(end - pos, SeqCst);
                Some((Ok(body.slice(pos as usize..end as usize)), Some(end)))
            }
        });
        Ok(stream.boxed())
    }

    fn name(&self) -> String {
        "test source".into()
    }
}

/// Reads a range through the cache; the bytes, or the first error with the bytes before it.
pub async fn read_range(
    cache: &ChunkCache,
    blob: BlobId,
    data: &Bytes,
    chunk_size: u64,
    offset: u64,
    len: u64,
    source: Arc<dyn ChunkSource>,
) -> Result<Vec<u8>, (BlobError, Vec<u8>)> {
    let digests = meridian_blob::chunk_digests(data, chunk_size);
    let mut stream = match cache.read(blob, data.len() as u64, &digests, offset, len, source).await {
        Ok(stream) => stream,
        Err(e) => return Err((e, Vec::new())),
    };
    let mut out = Vec::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(bytes) => out.extend_from_slice(&bytes),
            Err(e) => return Err((e, out)),
        }
    }
    Ok(out)
}

/// Every entry file in the cache directory (not `tmp/`).
pub fn entry_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for shard in std::fs::read_dir(dir).unwrap() {
        let shard = shard.unwrap().path();
        if shard.file_name().unwrap() == "tmp" || !shard.is_dir() {
            continue;
        }
        for entry in std::fs::read_dir(&shard).unwrap() {
            out.push(entry.unwrap().path());
        }
    }
    out.sort();
    out
}

pub fn tmp_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("tmp")).unwrap().count()
}
