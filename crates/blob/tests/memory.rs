//! Streaming a 256 MiB remote blob through the cache takes memory independent of its size (and
//! of the chunk size): measured with a counting global allocator, so this file is its own test
//! binary with a single test.
#![allow(unsafe_code)] // the counting allocator only
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use meridian_blob::{BlobId, BlobStore, CacheOptions, ChunkCache, ChunkHasher, PeerClient, serve_peer};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            let now = CURRENT.fetch_add(layout.size(), SeqCst) + layout.size();
            PEAK.fetch_max(now, SeqCst);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), SeqCst);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const MIB: u64 = 1 << 20;
const BLOB: u64 = 256 * MIB;
const CHUNK: u64 = 8 * MIB;
const READERS: usize = 4;

/// The blob is `TABLE` repeated: period 1 MiB + 17 bytes, so no two chunks are alike.
fn table() -> Arc<Vec<u8>> {
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    Arc::new(
        (0..MIB + 17)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect(),
    )
}

fn matches_table(table: &[u8], mut pos: u64, mut bytes: &[u8]) -> bool {
    while !bytes.is_empty() {
        let at = (pos % table.len() as u64) as usize;
        let n = (table.len() - at).min(bytes.len());
        if bytes[..n] != table[at..at + n] {
            return false;
        }
        pos += n as u64;
        bytes = &bytes[n..];
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_256_mib_remote_blob_streams_through_the_cache_in_bounded_memory() {
    tokio::time::timeout(Duration::from_secs(120), run()).await.expect("test took too long");
}

async fn run() {
    let (peer_dir, cache_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let table = table();
    // The remote blob, written and hashed per chunk in one streaming pass (as the engine would
    // at ingest).
    let store = BlobStore::open(peer_dir.path()).unwrap();
    let mut writer = store.create().await.unwrap();
    let mut hasher = ChunkHasher::new(CHUNK);
    let mut pos = 0u64;
    while pos < BLOB {
        let at = (pos % table.len() as u64) as usize;
        let n = (table.len() - at).min((BLOB - pos) as usize);
        hasher.update(&table[at..at + n]);
        writer.write(Bytes::copy_from_slice(&table[at..at + n])).await.unwrap();
        pos += n as u64;
    }
    let blob: BlobId = writer.finish().await.unwrap();
    let digests = Arc::new(hasher.finish());
    assert_eq!(digests.len() as u64, BLOB / CHUNK);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(serve_peer(listener, store.clone(), "t".into(), std::future::pending()));
    let peer = Arc::new(
        PeerClient::new(&format!("http://{addr}"), "t", &meridian_http::ClientTls::new(None).unwrap()).unwrap(),
    );
    let cache =
        ChunkCache::open(cache_dir.path(), CacheOptions { chunk_size: CHUNK, ..CacheOptions::default() }).unwrap();
    // Warm up the connection pool and the runtime's lazily built parts.
    let warm: Vec<_> = cache.read(blob, BLOB, &digests, 0, 1, peer.clone()).await.unwrap().collect::<Vec<_>>().await;
    assert_eq!(warm.len(), 1);

    let baseline = CURRENT.load(SeqCst);
    PEAK.store(baseline, SeqCst);
    let started = Instant::now();
    let mut readers = Vec::new();
    for _ in 0..READERS {
        let (cache, peer, digests, table) = (cache.clone(), peer.clone(), digests.clone(), table.clone());
        readers.push(tokio::spawn(async move {
            let mut stream = cache.read(blob, BLOB, &digests, 0, BLOB, peer).await.unwrap();
            let mut pos = 0u64;
            while let Some(bytes) = stream.next().await {
                let bytes = bytes.unwrap();
                assert!(bytes.len() <= meridian_blob::cache::IO_BUFFER);
                assert!(matches_table(&table, pos, &bytes), "wrong bytes at {pos}");
                pos += bytes.len() as u64;
            }
            assert_eq!(pos, BLOB);
        }));
    }
    for reader in readers {
        reader.await.unwrap();
    }
    let elapsed = started.elapsed();
    let peak = PEAK.load(SeqCst).saturating_sub(baseline);
    let stats = cache.stats();
    println!(
        "{READERS} readers streamed a {} MiB remote blob in {elapsed:?}; peak heap above baseline {:.2} MiB; {stats:?}",
        BLOB / MIB,
        peak as f64 / MIB as f64
    );
    assert_eq!(stats.fetch_bytes, BLOB, "every chunk fetched once");
    // Measured about 3 MiB (reader, fetch, hyper and blob store buffers, both ends). One whole
    // chunk in RAM would be 8 MiB, one per reader 32 MiB, the blob 256 MiB.
    assert!(peak < 6 * MIB as usize, "peak heap {peak} bytes above baseline: memory grows with the data");
    server.abort();
}
