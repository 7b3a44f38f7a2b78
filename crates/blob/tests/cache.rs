//! The chunk cache against in-memory sources: real files in temporary directories.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures::StreamExt;
use meridian_blob::{BlobError, BlobId, CacheOptions, ChunkCache, ChunkSource, chunk_digests};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_read_fetches_only_the_chunks_it_touches_then_serves_locally() {
    bounded(60, async {
        let dir = tempfile::tempdir().unwrap();
        let chunk = 4 * MIB;
        let cache = ChunkCache::open(dir.path(), options(chunk, 1 << 30)).unwrap();
        let blob = BlobId::random();
        let data = data(64 * MIB + 1000, 1);
        let source = TestSource::new(vec![(blob, data.clone())]);
        let src: Arc<dyn ChunkSource> = source.clone();

        // 5 MiB from 10 MiB + 123 touches chunks 2 and 3 only.
        let (offset, len) = (10 * MIB + 123, 5 * MIB);
        let got = read_range(&cache, blob, &data, chunk, offset, len, src.clone()).await.unwrap();
        assert_eq!(got, &data[offset as usize..(offset + len) as usize]);
        assert_eq!(source.fetches(), 2);
        assert_eq!(source.served(), 2 * chunk, "only the two chunks the range touches are fetched");
        let stats = cache.stats();
        assert_eq!((stats.misses, stats.hits, stats.entries, stats.fetch_bytes), (2, 0, 2, 2 * chunk));

        // The same range again, and a range inside it: served locally.
        let digests = chunk_digests(&data, chunk);
        let stream = cache.read(blob, data.len() as u64, &digests, offset, len, src.clone()).await.unwrap();
        assert!(stream.cache_hit());
        let again: Vec<Bytes> = stream.map(|b| b.unwrap()).collect().await;
        assert_eq!(again.concat(), got);
        let inner = read_range(&cache, blob, &data, chunk, 12 * MIB + 5, 100_000, src.clone()).await.unwrap();
        assert_eq!(inner, &data[(12 * MIB + 5) as usize..(12 * MIB + 5 + 100_000) as usize]);
        assert_eq!(source.served(), 2 * chunk, "warm reads fetch nothing");
        assert_eq!(cache.stats().hits, 3);

        // The short last chunk: only its 1000 bytes.
        let tail = read_range(&cache, blob, &data, chunk, 64 * MIB + 990, 10, src.clone()).await.unwrap();
        assert_eq!(tail, &data[(64 * MIB + 990) as usize..]);
        assert_eq!(source.served(), 2 * chunk + 1000);
        assert_eq!(source.fetches(), 3);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_share_one_fetch_per_chunk() {
    bounded(60, async {
        let dir = tempfile::tempdir().unwrap();
        let chunk = 4 * MIB;
        let cache = ChunkCache::open(dir.path(), options(chunk, 1 << 30)).unwrap();
        let blob = BlobId::random();
        let data = data(16 * MIB, 2);
        // Slow enough that all readers arrive while the fetches run.
        let source = TestSource::slow(vec![(blob, data.clone())], 64 << 10, Duration::from_millis(2));
        let barrier = Arc::new(tokio::sync::Barrier::new(16));
        let mut readers = Vec::new();
        for i in 0..16u64 {
            let (cache, data, barrier) = (cache.clone(), data.clone(), barrier.clone());
            let src: Arc<dyn ChunkSource> = source.clone();
            readers.push(tokio::spawn(async move {
                barrier.wait().await;
                // Half the readers read everything, half a range from somewhere inside.
                let (offset, len) = if i % 2 == 0 { (0, data.len() as u64) } else { (i * 300_001, 9 * MIB) };
                let got = read_range(&cache, blob, &data, chunk, offset, len, src).await.unwrap();
                assert_eq!(got, &data[offset as usize..(offset + len) as usize], "reader {i}");
            }));
        }
        for reader in readers {
            reader.await.unwrap();
        }
        assert_eq!(source.fetches(), 4, "one fetch per chunk, however many readers");
        assert_eq!(source.served(), 16 * MIB);
        let stats = cache.stats();
        assert_eq!(stats.fetches, 4);
        assert_eq!(stats.entries, 4);
        assert!(stats.misses >= 4);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_of_a_fetch_in_progress_stream_before_it_completes() {
    bounded(60, async {
        let dir = tempfile::tempdir().unwrap();
        let chunk = 8 * MIB;
        let cache = ChunkCache::open(dir.path(), options(chunk, 1 << 30)).unwrap();
        let blob = BlobId::random();
        let data = data(chunk, 3);
        let source = TestSource::new(vec![(blob, data.clone())]);
        // The source sends 3 MiB, then waits.
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        *source.gate.lock().unwrap() = Some((3 * MIB, gate.clone()));
        let digests = chunk_digests(&data, chunk);
        let mut streams = Vec::new();
        for _ in 0..4 {
            let src: Arc<dyn ChunkSource> = source.clone();
            streams.push(cache.read(blob, chunk, &digests, 0, chunk, src).await.unwrap());
        }
        // Every reader gets the first 3 MiB while the fetch is stuck halfway.
        for stream in &mut streams {
            let mut got = 0u64;
            while got < 3 * MIB {
                let bytes = stream.next().await.unwrap().unwrap();
                assert_eq!(bytes, data.slice(got as usize..got as usize + bytes.len()));
                got += bytes.len() as u64;
            }
            assert_eq!(got, 3 * MIB);
        }
        assert_eq!(cache.stats().entries, 0, "nothing is visible before the chunk is complete");
        gate.add_permits(1);
        for stream in streams {
            let rest: Vec<Bytes> = stream.map(|b| b.unwrap()).collect().await;
            assert_eq!(rest.concat(), &data[3 * MIB as usize..]);
        }
        assert_eq!(source.fetches(), 1);
        assert_eq!(cache.stats().entries, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_dying_midway_leaves_nothing_and_the_next_read_refetches() {
    bounded(60, async {
        let dir = tempfile::tempdir().unwrap();
        let chunk = 8 * MIB;
        let cache = ChunkCache::open(dir.path(), options(chunk, 1 << 30)).unwrap();
        let blob = BlobId::random();
        let data = data(chunk, 4);
        let source = TestSource::new(vec![(blob, data.clone())]);
        let src: Arc<dyn ChunkSource> = source.clone();

        *source.fail_after.lock().unwrap() = Some(3 * MIB);
        let (err, got) = read_range(&cache, blob, &data, chunk, 0, chunk, src.clone()).await.unwrap_err();
        assert!(matches!(err, BlobError::Task(ref m) if m.contains("test source died")), "{err}");
        assert!(got.len() as u64 <= 3 * MIB);
        assert_eq!(got, &data[..got.len()], "what was streamed before the failure is right");
        let stats = cache.stats();
        assert_eq!((stats.entries, stats.bytes_cached, stats.fetch_errors), (0, 0, 1));
        assert!(entry_files(dir.path()).is_empty(), "a failed fetch leaves no entry");
        assert_eq!(tmp_files(dir.path()), 0, "nor a temporary file");

        // A source that fails before sending anything fails the read itself.
        *source.fail_after.lock().unwrap() = Some(0);
        let (err, _) = read_range(&cache, blob, &data, chunk, 0, chunk, src.clone()).await.unwrap_err();
        assert!(matches!(err, BlobError::Task(_)), "{err}");

        let got = read_range(&cache, blob, &data, chunk, 0, chunk, src.clone()).await.unwrap();
        assert_eq!(got, data);
        assert_eq!(source.fetches(), 3);
        assert_eq!(cache.stats().entries, 1);
        assert_eq!(entry_files(dir.path()).len(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_bytes_are_an_error_and_nothing_is_cached() {
    bounded(60, async {
        let dir = tempfile::tempdir().unwrap();
        let chunk = 2 * MIB;
        let cache = ChunkCache::open(dir.path(), options(chunk, 1 << 30)).unwrap();
        let blob = BlobId::random();
        let data = data(3 * MIB, 5);
        let source = TestSource::new(vec![(blob, data.clone())]);
        let src: Arc<dyn ChunkSource> = source.clone();

        source.corrupt.store(true, std::sync::atomic::Ordering::SeqCst);
        let (err, got) = read_range(&cache, blob, &data, chunk, 0, chunk, src.clone()).await.unwrap_err();
        assert!(
            matches!(err, BlobError::DigestMismatch { chunk: 0, ref source_name, .. } if source_name == "test source"),
            "{err}"
        );
        assert!((got.len() as u64) < chunk, "a stream never completes with unverified bytes");
        assert_eq!(cache.stats().entries, 0);
        assert!(entry_files(dir.path()).is_empty());
        source.corrupt.store(false, std::sync::atomic::Ordering::SeqCst);

        // Too few bytes, then too many.
        for delta in [-1i64, 1] {
            *source.len_delta.lock().unwrap() = delta;
            let (err, _) = read_range(&cache, blob, &data, chunk, chunk, MIB, src.clone()).await.unwrap_err();
            assert!(matches!(err, BlobError::SourceLength { chunk: 1, expected, .. } if expected == MIB), "{err}");
        }
        *source.len_delta.lock().unwrap() = 0;
        assert!(entry_files(dir.path()).is_empty());
        assert_eq!(tmp_files(dir.path()), 0);

        assert_eq!(read_range(&cache, blob, &data, chunk, 0, 3 * MIB, src).await.unwrap(), data);
        assert_eq!(cache.stats().entries, 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_source_times_out_and_leaves_nothing() {
    bounded(60, async {
        let dir = tempfile::tempdir().unwrap();
        let chunk = MIB;
        let opts = CacheOptions { fetch_idle_timeout: Duration::from_millis(300), ..options(chunk, 1 << 30) };
        let cache = ChunkCache::open(dir.path(), opts).unwrap();
        let blob = BlobId::random();
        let data = data(chunk, 6);
        let source = TestSource::new(vec![(blob, data.clone())]);
        *source.stall_after.lock().unwrap() = Some(100_000);
        let (err, got) = read_range(&cache, blob, &data, chunk, 0, chunk, source.clone()).await.unwrap_err();
        assert!(matches!(err, BlobError::SourceStalled { .. }), "{err}");
        assert!(err.to_string().contains("no data for 0.3s"), "{err}");
        assert_eq!(got, &data[..got.len()]);
        assert!(entry_files(dir.path()).is_empty());
        assert_eq!(tmp_files(dir.path()), 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_keeps_the_cache_under_max_bytes_and_drops_the_least_recently_used() {
    bounded(60, async {
        let dir = tempfile::tempdir().unwrap();
        let chunk = MIB;
        // Room for three one-chunk blobs (each entry is the chunk plus a small footer).
        let max = 3 * chunk + 3 * 1024;
        let cache = ChunkCache::open(dir.path(), options(chunk, max)).unwrap();
        let blobs: Vec<(BlobId, Bytes)> = (0..5).map(|i| (BlobId::random(), data(chunk, 10 + i))).collect();
        let source = TestSource::new(blobs.clone());
        let read = |i: usize| {
            let (cache, source, (blob, data)) = (cache.clone(), source.clone(), blobs[i].clone());
            async move {
                let got = read_range(&cache, blob, &data, chunk, 0, chunk, source).await.unwrap();
                assert_eq!(got, data);
            }
        };
        let (a, b, c, d) = (0, 1, 2, 3);
        read(a).await;
        read(b).await;
        read(c).await;
        read(a).await; // a is now the most recently used, and used twice
        assert_eq!(source.fetches(), 3);
        read(d).await; // evicts b
        let stats = cache.stats();
        assert_eq!((stats.entries, stats.evictions), (3, 1));
        assert!(stats.bytes_cached <= max);
        let on_disk: u64 = entry_files(dir.path()).iter().map(|p| p.metadata().unwrap().len()).sum();
        assert_eq!(on_disk, stats.bytes_cached);
        assert!(on_disk <= max);
        assert!(!entry_files(dir.path()).iter().any(|p| p.to_str().unwrap().contains(&blobs[b].0.to_string())));

        let fetches = source.fetches();
        read(a).await;
        read(c).await;
        read(d).await;
        assert_eq!(source.fetches(), fetches, "a, c and d are still cached");
        read(b).await; // a is now the least recently used
        assert_eq!(source.fetches(), fetches + 1, "b was evicted");
        assert!(cache.stats().bytes_cached <= max);
        assert_eq!(cache.stats().entries, 3);
        read(c).await;
        read(d).await;
        read(b).await;
        assert_eq!(source.fetches(), fetches + 1);
        read(a).await;
        assert_eq!(source.fetches(), fetches + 2, "a made room for b");
        assert_eq!(cache.stats().evictions, 3);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_survive_a_restart_and_still_verify() {
    bounded(60, async {
        let dir = tempfile::tempdir().unwrap();
        let chunk = 4 * MIB;
        let blob = BlobId::random();
        let data = data(10 * MIB, 20);
        let source = TestSource::new(vec![(blob, data.clone())]);
        {
            let cache = ChunkCache::open(dir.path(), options(chunk, 1 << 30)).unwrap();
            assert_eq!(read_range(&cache, blob, &data, chunk, 0, 10 * MIB, source.clone()).await.unwrap(), data);
            assert_eq!(cache.stats().entries, 3);
        }
        let cache = ChunkCache::open(dir.path(), options(chunk, 1 << 30)).unwrap();
        let stats = cache.stats();
        assert_eq!(stats.entries, 3);
        assert_eq!(stats.bytes_cached, entry_files(dir.path()).iter().map(|p| p.metadata().unwrap().len()).sum());
        assert_eq!(read_range(&cache, blob, &data, chunk, 0, 10 * MIB, source.clone()).await.unwrap(), data);
        assert_eq!(source.fetches(), 3, "everything came from the reopened cache");
        assert_eq!((cache.stats().hits, cache.stats().corrupt), (3, 0));

        // Reopening with a smaller limit evicts down to it, oldest first.
        drop(cache);
        let cache = ChunkCache::open(dir.path(), options(chunk, 5 * MIB)).unwrap();
        assert_eq!(cache.stats().entries, 1);
        assert_eq!(entry_files(dir.path()).len(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recency_survives_a_restart() {
    bounded(60, async {
        let dir = tempfile::tempdir().unwrap();
        let chunk = MIB;
        let (a, b) = ((BlobId::random(), data(chunk, 21)), (BlobId::random(), data(chunk, 22)));
        let source = TestSource::new(vec![a.clone(), b.clone()]);
        let cache = ChunkCache::open(dir.path(), options(chunk, 1 << 30)).unwrap();
        read_range(&cache, a.0, &a.1, chunk, 0, chunk, source.clone()).await.unwrap();
        read_range(&cache, b.0, &b.1, chunk, 0, chunk, source.clone()).await.unwrap();
        drop(cache);
        // Both were last used long ago, a before b.
        let now = std::time::SystemTime::now();
        for (blob, age) in [(a.0, 7200), (b.0, 3600)] {
            let path = dir.path().join(&blob.to_string()[..2]).join(format!("{blob}.0"));
            let file = std::fs::File::options().write(true).open(path).unwrap();
            file.set_modified(now - Duration::from_secs(age)).unwrap();
        }
        // A hit on a refreshes its file time (coarsely: at most once a minute per entry)...
        let cache = ChunkCache::open(dir.path(), options(chunk, 1 << 30)).unwrap();
        read_range(&cache, a.0, &a.1, chunk, 0, chunk, source.clone()).await.unwrap();
        drop(cache);
        // ...so after a restart with room for one entry, b (now the least recently used) goes.
        let cache = ChunkCache::open(dir.path(), options(chunk, chunk + 4096)).unwrap();
        assert_eq!(cache.stats().entries, 1);
        let fetches = source.fetches();
        read_range(&cache, a.0, &a.1, chunk, 0, chunk, source.clone()).await.unwrap();
        assert_eq!(source.fetches(), fetches, "a survived");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftovers_of_a_crash_are_removed_on_open() {
    bounded(60, async {
        let dir = tempfile::tempdir().unwrap();
        let chunk = MIB;
        let blob = BlobId::random();
        let data = data(chunk, 30);
        let source = TestSource::new(vec![(blob, data.clone())]);
        {
            let cache = ChunkCache::open(dir.path(), options(chunk, 1 << 30)).unwrap();
            read_range(&cache, blob, &data, chunk, 0, chunk, source.clone()).await.unwrap();
        }
        // A fetch cut short by kill -9 leaves its temporary file; stray names and a file too
        // short to be an entry are not entries either.
        std::fs::write(dir.path().join("tmp").join(format!("{blob}.0.0123456789abcdef")), vec![1u8; 5000]).unwrap();
        std::fs::create_dir(dir.path().join("tmp").join("junkdir")).unwrap();
        let shard = dir.path().join(&blob.to_string()[..2]);
        std::fs::write(shard.join("not-an-entry"), b"x").unwrap();
        let other = BlobId::random();
        std::fs::write(dir.path().join(&other.to_string()[..2]).join(format!("{other}.0")), b"short").unwrap();

        let cache = ChunkCache::open(dir.path(), options(chunk, 1 << 30)).unwrap();
        assert_eq!(tmp_files(dir.path()), 0);
        assert_eq!(entry_files(dir.path()).len(), 1);
        assert_eq!(cache.stats().entries, 1);
        assert_eq!(read_range(&cache, blob, &data, chunk, 0, chunk, source.clone()).await.unwrap(), data);
        assert_eq!(source.fetches(), 1);
    })
    .await;
}

fn flip_byte(path: &std::path::Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, at).unwrap();
    byte[0] ^= 0x40;
    file.write_all_at(&byte, at).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_entry_is_detected_and_refetched_not_served() {
    bounded(60, async {
        let dir = tempfile::tempdir().unwrap();
        let chunk = 4 * MIB;
        let cache = ChunkCache::open(dir.path(), options(chunk, 1 << 30)).unwrap();
        let blob = BlobId::random();
        let data = data(chunk, 40);
        let source = TestSource::new(vec![(blob, data.clone())]);
        let read = |offset: u64, len: u64| {
            let (cache, source, data) = (cache.clone(), source.clone(), data.clone());
            async move {
                let got = read_range(&cache, blob, &data, chunk, offset, len, source).await.unwrap();
                assert_eq!(got, &data[offset as usize..(offset + len) as usize]);
            }
        };
        read(0, chunk).await;
        let [entry] = entry_files(dir.path()).try_into().unwrap();

        // A flipped byte deep in the data: the first 3 MiB come from the cache (verified block by
        // block), the damage is caught before its block is served, the rest comes from a refetch.
        flip_byte(&entry, 3 * MIB + 5);
        read(0, chunk).await;
        assert_eq!((cache.stats().corrupt, source.fetches()), (1, 2));
        read(0, chunk).await;
        assert_eq!(source.fetches(), 2, "the refetched entry is sound");

        // A range that only touches the damaged block.
        flip_byte(&entry, 100);
        read(90, 20).await;
        assert_eq!((cache.stats().corrupt, source.fetches()), (2, 3));

        // A damaged footer.
        let len = entry.metadata().unwrap().len();
        flip_byte(&entry, len - 20);
        read(MIB, 10).await;
        assert_eq!((cache.stats().corrupt, source.fetches()), (3, 4));

        // A torn file (cache files are not fsynced; after a crash one may be cut short), found
        // at the next start.
        drop(cache);
        std::fs::OpenOptions::new().write(true).open(&entry).unwrap().set_len(len / 2).unwrap();
        let cache = ChunkCache::open(dir.path(), options(chunk, 1 << 30)).unwrap();
        assert_eq!(read_range(&cache, blob, &data, chunk, 0, chunk, source.clone()).await.unwrap(), data);
        assert_eq!((cache.stats().corrupt, source.fetches()), (1, 5));
        assert_eq!(entry.metadata().unwrap().len(), len);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_blob_drops_its_chunks() {
    bounded(60, async {
        let dir = tempfile::tempdir().unwrap();
        let chunk = MIB;
        let cache = ChunkCache::open(dir.path(), options(chunk, 1 << 30)).unwrap();
        let (a, b) = (BlobId::random(), BlobId::random());
        let (data_a, data_b) = (data(3 * MIB, 50), data(2 * MIB, 51));
        let source = TestSource::new(vec![(a, data_a.clone()), (b, data_b.clone())]);
        read_range(&cache, a, &data_a, chunk, 0, 3 * MIB, source.clone()).await.unwrap();
        read_range(&cache, b, &data_b, chunk, 0, 2 * MIB, source.clone()).await.unwrap();
        assert_eq!(cache.stats().entries, 5);
        cache.remove_blob(a).await.unwrap();
        assert_eq!(cache.stats().entries, 2);
        assert_eq!(entry_files(dir.path()).len(), 2);
        let fetches = source.fetches();
        read_range(&cache, b, &data_b, chunk, 0, 2 * MIB, source.clone()).await.unwrap();
        assert_eq!(source.fetches(), fetches);
        assert_eq!(cache.blobs(), vec![b], "only blob b has chunks left");
        // A reader that still holds the old record gets the bytes, but they are not kept: the
        // blob was removed for good (ids are never reused).
        read_range(&cache, a, &data_a, chunk, 0, MIB, source.clone()).await.unwrap();
        assert_eq!(source.fetches(), fetches + 1);
        assert_eq!(cache.stats().entries, 2, "a removed blob is not cached again");
        assert_eq!(cache.blobs(), vec![b]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_during_a_fetch_keeps_nothing() {
    bounded(60, async {
        let dir = tempfile::tempdir().unwrap();
        let chunk = MIB;
        let cache = ChunkCache::open(dir.path(), options(chunk, 1 << 30)).unwrap();
        let blob = BlobId::random();
        let data = data(chunk, 55);
        let source = TestSource::new(vec![(blob, data.clone())]);
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        *source.gate.lock().unwrap() = Some((1000, gate.clone()));
        let digests = chunk_digests(&data, chunk);
        let stream = cache.read(blob, chunk, &digests, 0, chunk, source.clone()).await.unwrap();
        cache.remove_blob(blob).await.unwrap();
        gate.add_permits(1);
        let got: Vec<Bytes> = stream.map(|b| b.unwrap()).collect().await;
        assert_eq!(got.concat(), data, "the reader that started before the removal still gets its bytes");
        assert_eq!(cache.stats().entries, 0);
        assert!(entry_files(dir.path()).is_empty());
        assert_eq!(tmp_files(dir.path()), 0);
    })
    .await;
}

/// Reads `len` bytes at `start` of an 8 MiB blob in 1 MiB chunks, takes only the first piece
/// and drops the stream once two chunks are cached; returns (entries, fetches, bytes served).
async fn first_piece_then_drop(readahead: u64, start: u64, len: u64) -> (usize, u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let cache = ChunkCache::open(dir.path(), CacheOptions { readahead, ..options(MIB, 1 << 30) }).unwrap();
    let blob = BlobId::random();
    let data = data(8 * MIB, 60);
    let source = TestSource::new(vec![(blob, data.clone())]);
    let digests = chunk_digests(&data, MIB);
    let mut stream = cache.read(blob, 8 * MIB, &digests, start, len, source.clone()).await.unwrap();
    stream.next().await.unwrap().unwrap();
    for _ in 0..200 {
        if cache.stats().entries == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(stream);
    tokio::time::sleep(Duration::from_millis(100)).await;
    (cache.stats().entries as usize, source.fetches() as u64, source.served() as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_ahead_fetches_the_next_chunk_of_the_range_only() {
    // Chunks 2..=4, only the first piece taken: with a read-ahead of one chunk, chunk 3 is
    // fetched ahead, nothing past it ever is.
    bounded(60, async { assert_eq!(first_piece_then_drop(1, 2 * MIB, 3 * MIB).await, (2, 2, 2 * MIB)) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_ahead_never_fetches_past_the_range() {
    // Chunks 2..=3 with the default read-ahead (two chunks): it would reach chunk 4, which is
    // past the range, so only 2 and 3 are ever fetched.
    assert_eq!(CacheOptions::default().readahead, 2);
    bounded(60, async { assert_eq!(first_piece_then_drop(2, 2 * MIB, 2 * MIB).await, (2, 2, 2 * MIB)) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_are_clear_errors_and_empty_reads_fetch_nothing() {
    bounded(60, async {
        let dir = tempfile::tempdir().unwrap();
        let chunk = MIB;
        let cache = ChunkCache::open(dir.path(), options(chunk, 1 << 30)).unwrap();
        let blob = BlobId::random();
        let data = data(3 * MIB, 70);
        let source = TestSource::new(vec![(blob, data.clone())]);
        let digests = chunk_digests(&data, chunk);
        let len = data.len() as u64;

        let empty = cache.read(blob, len, &digests, 5, 0, source.clone()).await.unwrap();
        assert_eq!(empty.collect::<Vec<_>>().await.len(), 0);
        let none = cache.read(blob, 0, &[], 0, 0, source.clone()).await.unwrap();
        assert_eq!(none.collect::<Vec<_>>().await.len(), 0);

        let err = cache.read(blob, len, &digests, len - 1, 2, source.clone()).await.err().unwrap();
        assert!(matches!(err, BlobError::InvalidRange { offset, len: 2, .. } if offset == len - 1), "{err}");
        let err = cache.read(blob, len, &digests, u64::MAX, 2, source.clone()).await.err().unwrap();
        assert!(matches!(err, BlobError::InvalidRange { .. }), "{err}");
        let err = cache.read(blob, len, &digests[..2], 0, 1, source.clone()).await.err().unwrap();
        assert!(matches!(err, BlobError::DigestCount { expected: 3, got: 2, .. }), "{err}");
        let wrong_size = chunk_digests(&data, 2 * MIB);
        let err = cache.read(blob, len, &wrong_size, 0, 1, source.clone()).await.err().unwrap();
        assert!(err.to_string().contains("chunks of 1048576 bytes make 3"), "{err}");
        assert_eq!(source.fetches(), 0);

        for bad in [0, 2 << 30] {
            let err = ChunkCache::open(dir.path(), options(bad, 1 << 30)).err().unwrap();
            assert!(matches!(err, BlobError::Config(_)), "{err}");
        }
    })
    .await;
}
