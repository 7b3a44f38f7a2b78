//! Volume logic against the in-memory store: fast checks of the log, recovery, fencing,
//! snapshots, GC and checkpoints. The same behaviours are exercised over real S3 and NBD in
//! `tests/nbd_s3.rs`.

#![allow(clippy::unwrap_used)] // tests may unwrap (clippy.toml allows it inside #[test] only)

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use meridian_volume::error::StoreError;
use meridian_volume::format::{self, HEADER_BYTES, Layout, ObjectKind};
use meridian_volume::gc::{Gc, GcConfig};
use meridian_volume::manage;
use meridian_volume::store::{Fetched, Listed, MemStore, ObjectStore, PutCondition};
use meridian_volume::{Volume, VolumeError, WriterConfig};
use rand::{Rng, SeedableRng};

const MIB: u64 = 1 << 20;

/// A writer whose cache directory the volume creates (owner-only) inside `dir`.
fn cfg(dir: &tempfile::TempDir, who: &str) -> WriterConfig {
    let mut c = WriterConfig::new(dir.path().join("cache"), who.to_string());
    c.cache_pages = 8;
    c
}

async fn new_volume(store: &Arc<MemStore>, size: u64, object_bytes: u64) -> Layout {
    let layout = Layout::new("vols/", "v").unwrap();
    manage::create(store.as_ref(), &layout, "v", size, object_bytes).await.unwrap();
    layout
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    (0..len).map(|_| r.random()).collect()
}

#[tokio::test]
async fn write_read_flush_reopen() {
    let mem = Arc::new(MemStore::new());
    let layout = new_volume(&mem, 64 * MIB, 256 * 1024).await;
    let dir = tempfile::tempdir().unwrap();
    // Slow uploads and a small journal: reads meet data in the open generation, in cuts still
    // uploading and in the bucket.
    let store = Arc::new(Killable::new(mem.clone()));
    let mut c = cfg(&dir, "a");
    c.journal_bytes = MIB;
    c.journal_extents = 64;
    let vol = Volume::open(store.clone(), layout.clone(), c).await.unwrap();
    let mut model = vec![0u8; (64 * MIB) as usize];
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    for i in 0..400u64 {
        // Mixed sizes and alignments, so writes land on sectors in every stage, and exercise
        // read-modify-write.
        let len = rng.random_range(1..200_000usize);
        let off = rng.random_range(0..(64 * MIB) as usize - len);
        match i % 10 {
            7 => {
                vol.write_zeroes(off as u64, len as u64).await.unwrap();
                model[off..off + len].fill(0);
            }
            8 => {
                // TRIM discards whole sectors only.
                vol.trim(off as u64, len as u64).await.unwrap();
                let a = off.div_ceil(4096) * 4096;
                let b = (off + len) / 4096 * 4096;
                if a < b {
                    model[a..b].fill(0);
                }
            }
            _ => {
                let d = pattern(i, len);
                vol.write(off as u64, &d).await.unwrap();
                model[off..off + len].copy_from_slice(&d);
            }
        }
        if i % 50 == 0 {
            vol.flush().await.unwrap();
        }
        let check = rng.random_range(0..(64 * MIB) as usize - 70_000);
        let got = vol.read(check as u64, 70_000).await.unwrap();
        assert!(got == model[check..check + 70_000], "read mismatch after write {i}");
    }
    vol.close().await.unwrap();
    let vol = Volume::open(mem.clone(), layout, cfg(&dir, "b")).await.unwrap();
    let all = vol.read(0, 64 * MIB).await.unwrap();
    assert!(all == model, "data differs after reopen");
    // Out-of-range I/O is refused with a clear error.
    assert!(matches!(vol.write(64 * MIB - 4096, &[0u8; 8192]).await, Err(VolumeError::OutOfRange { .. })));
    vol.close().await.unwrap();
}

#[tokio::test]
async fn first_data_object_matches_the_seed_format() {
    let store = Arc::new(MemStore::new());
    let layout = new_volume(&store, 16 * MIB, 4 * MIB).await;
    let dir = tempfile::tempdir().unwrap();
    let vol = Volume::open(store.clone(), layout.clone(), cfg(&dir, "a")).await.unwrap();
    let data = pattern(9, 8192);
    vol.write(1 << 20, &data).await.unwrap();
    vol.flush().await.unwrap();
    // Object 1 is the writer's fence: a header whose first entry already ends the list.
    let fence = store.get(&layout.log(1)).await.unwrap().data;
    assert_eq!(fence.len(), HEADER_BYTES);
    assert_eq!(&fence[8..12], &[0, 0, 0, 0]);
    // Object 2 holds the write, parsed here by hand, not with the crate's decoder.
    let obj = store.get(&layout.log(2)).await.unwrap().data;
    assert_eq!(obj.len(), 12 * 1024 + 8192);
    let addr = u64::from_be_bytes(obj[0..8].try_into().unwrap());
    let len = u32::from_be_bytes(obj[8..12].try_into().unwrap());
    let next_len = u32::from_be_bytes(obj[20..24].try_into().unwrap());
    assert_eq!((addr, len, next_len), (1 << 20, 8192, 0));
    assert_eq!(&obj[12 * 1024..], &data[..]);
    let h = format::decode_header("obj", &obj).unwrap();
    assert_eq!(h.trailer.kind, ObjectKind::Data);
    vol.close().await.unwrap();
}

#[tokio::test]
async fn sequential_reads_fetch_whole_windows_and_random_reads_only_what_they_need() {
    let store = Arc::new(MemStore::new());
    let layout = new_volume(&store, 64 * MIB, 4 * MIB).await;
    let dir = tempfile::tempdir().unwrap();
    let data = pattern(9, (16 * MIB) as usize);
    let vol = Volume::open(store.clone(), layout.clone(), cfg(&dir, "a")).await.unwrap();
    vol.write(0, &data).await.unwrap();
    vol.close().await.unwrap();
    // A fresh writer: nothing in memory, every read goes to the bucket.
    let vol = Volume::open(store.clone(), layout, cfg(&dir, "b")).await.unwrap();
    store.range_reads.store(0, Ordering::SeqCst);
    store.range_bytes.store(0, Ordering::SeqCst);

    // 16 MiB as 1 MiB reads, four in flight at a time like a queue of depth 4.
    let mut got = Vec::new();
    for batch in 0..4u64 {
        let reads = (0..4u64).map(|i| vol.read((batch * 4 + i) * MIB, MIB));
        for r in futures::future::join_all(reads).await {
            got.extend(r.unwrap());
        }
    }
    assert!(got == data, "sequential reads return the written bytes");
    let (reads, bytes) = (store.range_reads.load(Ordering::SeqCst), store.range_bytes.load(Ordering::SeqCst));
    // One GET per 1 MiB read would be 16; the stream's first read is direct, then whole
    // windows (an object may straddle two), each fetched once.
    assert!(reads <= 10, "{reads} range reads for 16 sequential 1 MiB reads");
    assert!(bytes <= 17 * MIB, "{bytes} bytes fetched for 16 MiB read");

    // Random small reads fetch exactly what they ask for.
    store.range_reads.store(0, Ordering::SeqCst);
    store.range_bytes.store(0, Ordering::SeqCst);
    for k in [5u64, 1000, 37, 3001, 77] {
        let at = (k * 7919 * 4096) % (16 * MIB);
        assert_eq!(vol.read(at, 4096).await.unwrap(), data[at as usize..at as usize + 4096]);
    }
    assert_eq!(store.range_bytes.load(Ordering::SeqCst), 5 * 4096);
    vol.close().await.unwrap();
}

/// Cold reads with read-ahead: a sequential stream gets the windows ahead of it fetched in the
/// background (bounded: the bytes fetched but not yet read stay under the read-ahead window plus
/// a window or two), and sequential, concurrent and random reads all return the written bytes
/// over a layout fragmented by overwrites.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_reads_prefetch_ahead_of_streams_within_a_bound() {
    const SIZE: u64 = 96 * MIB;
    let store = Arc::new(MemStore::new());
    let layout = new_volume(&store, SIZE, 4 * MIB).await;
    let dir = tempfile::tempdir().unwrap();
    let mut data = pattern(11, (64 * MIB) as usize);
    data.resize(SIZE as usize, 0);
    let vol = Volume::open(store.clone(), layout.clone(), cfg(&dir, "a")).await.unwrap();
    vol.write(0, &data[..(64 * MIB) as usize]).await.unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    for i in 0..64u64 {
        let at = rng.random_range(0..SIZE / 65536) * 65536;
        let block = pattern(100 + i, 65536);
        vol.write(at, &block).await.unwrap();
        data[at as usize..at as usize + 65536].copy_from_slice(&block);
    }
    vol.close().await.unwrap();
    let cold = |who: &'static str| {
        let (store, layout) = (store.clone(), layout.clone());
        let mut c = cfg(&dir, who);
        c.cache_bytes = 0;
        async move { Volume::open(store, layout, c).await.unwrap() }
    };

    // One stream of 1 MiB reads, one at a time.
    let vol = cold("b").await;
    store.range_bytes.store(0, Ordering::SeqCst);
    for i in 0..SIZE / MIB {
        let got = vol.read(i * MIB, MIB).await.unwrap();
        assert!(got[..] == data[(i * MIB) as usize..((i + 1) * MIB) as usize], "sequential read {i}");
        if i == 1 {
            // The second read continued a stream: the next 16 MiB are being fetched.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while store.range_bytes.load(Ordering::SeqCst) < 16 * MIB {
                assert!(std::time::Instant::now() < deadline, "nothing fetched ahead of the stream");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let ahead = store.range_bytes.load(Ordering::SeqCst).saturating_sub((i + 1) * MIB);
        assert!(ahead <= 26 * MIB, "{ahead} bytes fetched ahead of the reader after read {i}");
    }
    let fetched = store.range_bytes.load(Ordering::SeqCst);
    assert!(fetched <= 72 * MIB, "{fetched} bytes fetched for 64 MiB of data read once");
    vol.close().await.unwrap();

    // Two interleaved streams and random reads of any size, on a cold volume.
    let vol = cold("c").await;
    for i in 0..24u64 {
        let (a, b) = (i * MIB, 48 * MIB + i * 512 * 1024);
        let (ra, rb) = futures::future::join(vol.read(a, MIB), vol.read(b, 512 * 1024)).await;
        assert!(ra.unwrap()[..] == data[a as usize..(a + MIB) as usize], "stream a at {a}");
        assert!(rb.unwrap()[..] == data[b as usize..(b + 512 * 1024) as usize], "stream b at {b}");
    }
    for _ in 0..200 {
        let len = rng.random_range(1..=256 * 1024u64);
        let at = rng.random_range(0..SIZE - len);
        let got = vol.read(at, len).await.unwrap();
        assert!(got[..] == data[at as usize..(at + len) as usize], "random read of {len} at {at}");
    }
    vol.close().await.unwrap();
}

/// Uploaded cuts keep serving reads from their journal files (within the cache budget), so
/// reading back what was just written costs no GET; beyond the budget the oldest go first.
#[tokio::test]
async fn reads_of_uploaded_cuts_come_from_the_local_cache() {
    let store = Arc::new(MemStore::new());
    let layout = new_volume(&store, 64 * MIB, 4 * MIB).await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(&dir, "a");
    c.cache_bytes = 6 * MIB;
    let vol = Volume::open(store.clone(), layout.clone(), c).await.unwrap();
    let mut model = pattern(1, (4 * MIB) as usize);
    vol.write(0, &model).await.unwrap();
    vol.flush().await.unwrap();
    let patch = pattern(2, MIB as usize);
    vol.write(MIB, &patch).await.unwrap();
    vol.flush().await.unwrap();
    model[MIB as usize..2 * MIB as usize].copy_from_slice(&patch);
    let gets = || store.range_reads.load(Ordering::SeqCst);
    let before = gets();
    assert!(vol.read(0, 4 * MIB).await.unwrap() == model);
    assert_eq!(gets(), before, "both cuts are served from the cache");

    // A third cut of 4 MiB pushes the first out of the 6 MiB budget.
    let later = pattern(3, (4 * MIB) as usize);
    vol.write(8 * MIB, &later).await.unwrap();
    vol.flush().await.unwrap();
    let before = gets();
    assert!(vol.read(8 * MIB, 4 * MIB).await.unwrap() == later);
    assert_eq!(gets(), before);
    assert!(vol.read(0, 4 * MIB).await.unwrap() == model);
    assert!(gets() > before, "the oldest cut was evicted, so its sectors come from the bucket");
    vol.close().await.unwrap();

    // Without a cache every read of uploaded data is a GET.
    let mut c = cfg(&dir, "b");
    c.cache_bytes = 0;
    let vol = Volume::open(store.clone(), layout, c).await.unwrap();
    vol.write(16 * MIB, &later).await.unwrap();
    vol.flush().await.unwrap();
    let before = gets();
    assert!(vol.read(16 * MIB, 4 * MIB).await.unwrap() == later);
    assert!(gets() > before);
    vol.close().await.unwrap();
}

/// Cold sequential reads hand out the pieces the bucket's answer arrived in: what `read_parts`
/// returns points into the fetched objects (no gathering copy), and reads of any alignment
/// across pieces and windows return the right bytes.
#[tokio::test]
async fn cold_sequential_reads_hand_out_fetched_pieces_without_copying() {
    let store = Arc::new(MemStore::new());
    let layout = new_volume(&store, 32 * MIB, 4 * MIB).await;
    let dir = tempfile::tempdir().unwrap();
    let model = pattern(9, (16 * MIB) as usize);
    let vol = Volume::open(store.clone(), layout.clone(), cfg(&dir, "a")).await.unwrap();
    vol.write(0, &model).await.unwrap();
    vol.close().await.unwrap();
    let mut c = cfg(&dir, "b");
    c.cache_bytes = 0;
    let vol = Volume::open(store.clone(), layout.clone(), c).await.unwrap();
    store.part_bytes.store(48 * 1024 + 512, Ordering::SeqCst);
    let mut objects = Vec::new();
    for o in store.list(&layout.log_prefix()).await.unwrap() {
        let data = store.get(&o.key).await.unwrap().data;
        objects.push(data.as_ptr() as usize..data.as_ptr() as usize + data.len());
    }
    let (mut at, mut pieces) = (0u64, 0);
    while at < 16 * MIB {
        let len = (MIB + 4096).min(16 * MIB - at);
        let got = vol.read_parts(at, len).await.unwrap();
        assert!(got.to_bytes() == model[at as usize..(at + len) as usize], "read at {at}");
        for p in got.parts() {
            let ptr = p.as_ptr() as usize;
            assert!(objects.iter().any(|o| o.contains(&ptr)), "a piece of the read at {at} was copied");
        }
        pieces += got.parts().len();
        at += len;
    }
    assert!(pieces > 16 * 20, "reads are made of the fetched pieces: {pieces}");
    let odd = vol.read(4 * MIB - 1000, 5000).await.unwrap();
    assert!(odd == model[(4 * MIB - 1000) as usize..(4 * MIB + 4000) as usize], "across two objects");
    vol.close().await.unwrap();
}

/// Wraps a store so a test can "kill" the writer: after `freeze`, PUTs never complete, as if
/// the process died with them in flight; so does a PUT of the `held` key. PUTs also take
/// random time so they land out of order.
struct Killable {
    inner: Arc<MemStore>,
    frozen: AtomicBool,
    held: std::sync::Mutex<Option<String>>,
}

impl Killable {
    fn new(inner: Arc<MemStore>) -> Self {
        Self { inner, frozen: AtomicBool::new(false), held: std::sync::Mutex::new(None) }
    }
}

#[async_trait]
impl ObjectStore for Killable {
    async fn put(&self, key: &str, body: Bytes, cond: PutCondition) -> Result<String, StoreError> {
        let delay = rand::random_range(0..3u64);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        let held = self.held.lock().unwrap().as_deref() == Some(key);
        if held || self.frozen.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        self.inner.put(key, body, cond).await
    }
    async fn put_file(&self, key: &str, path: &std::path::Path) -> Result<String, StoreError> {
        if self.frozen.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        self.inner.put_file(key, path).await
    }
    async fn get(&self, key: &str) -> Result<Fetched, StoreError> {
        self.inner.get(key).await
    }
    async fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Bytes, StoreError> {
        self.inner.get_range(key, start, len).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<Listed>, StoreError> {
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.inner.delete(key).await
    }
}

/// Sequence-stamped writes, a "crash" at a random point, recovery: the disk must equal the
/// state after some prefix of the writes that includes every write acknowledged by a FLUSH.
#[tokio::test]
async fn crash_leaves_a_prefix_containing_every_flushed_write() {
    const SECTORS: u64 = 256;
    for run in 0..60u64 {
        let mem = Arc::new(MemStore::new());
        let layout = new_volume(&mem, SECTORS * 4096, 64 * 1024).await;
        let store = Arc::new(Killable::new(mem.clone()));
        let dir = tempfile::tempdir().unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(run);
        let mut c = cfg(&dir, "victim");
        c.uploads = 4;
        // A small journal, so cuts of several objects (commit units) are uploading, out of
        // order, when the writer dies.
        c.journal_bytes = rng.random_range(4..=40) * 16 * 1024;
        c.journal_extents = rng.random_range(3..=200);
        let vol = Volume::open(store.clone(), layout.clone(), c).await.unwrap();
        let total = rng.random_range(20..300u64);
        let crash_at = rng.random_range(0..total);
        let mut writes = Vec::new();
        let mut flushed = 0usize;
        for i in 0..total {
            // Die at a random point, but while a cut is uploading, where dying is hardest.
            let uploading = vol.objects().keys().last().is_some_and(|&last| last > vol.durable());
            if i >= crash_at && uploading {
                break;
            }
            let sector = rng.random_range(0..SECTORS);
            let mut block = vec![0u8; 4096];
            block[..8].copy_from_slice(&(i + 1).to_be_bytes());
            vol.write(sector * 4096, &block).await.unwrap();
            writes.push(sector);
            if rng.random_ratio(1, 50) {
                vol.flush().await.unwrap();
                flushed = writes.len();
            }
            if rng.random_ratio(1, 8) {
                // Let uploads of earlier cuts make progress while writing goes on.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        // Let a random number of uploads land, then "kill" the writer.
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..2))).await;
        store.frozen.store(true, Ordering::SeqCst);
        drop(vol);
        let mut c = cfg(&dir, "recoverer");
        c.force_takeover = true; // same process, so the crashed holder's pid looks alive
        let vol = Volume::open(mem.clone(), layout.clone(), c).await.unwrap();
        let disk = vol.read(0, SECTORS * 4096).await.unwrap();
        let stamps: Vec<u64> = disk.chunks(4096).map(|b| u64::from_be_bytes(b[..8].try_into().unwrap())).collect();
        let prefix = (flushed..=writes.len()).find(|&k| {
            let mut model = vec![0u64; SECTORS as usize];
            for (i, &s) in writes[..k].iter().enumerate() {
                model[s as usize] = i as u64 + 1;
            }
            model == stamps
        });
        assert!(
            prefix.is_some(),
            "run {run}: recovered disk is no prefix of the {} writes with at least the {flushed} flushed ones",
            writes.len()
        );
        vol.close().await.unwrap();
    }
}

/// One cut of the journal becomes several log objects (a commit unit). If the writer dies
/// with one of them missing, neither recovery nor a snapshot taken from the bucket may see any
/// of the others: the disk would otherwise mix old and new halves of one write.
#[tokio::test]
async fn a_cut_of_several_objects_is_recovered_whole_or_not_at_all() {
    let mem = Arc::new(MemStore::new());
    let layout = new_volume(&mem, 4 * MIB, 64 * 1024).await;
    let store = Arc::new(Killable::new(mem.clone()));
    let dir = tempfile::tempdir().unwrap();
    let vol = Volume::open(store.clone(), layout.clone(), cfg(&dir, "victim")).await.unwrap();
    // Object 1 is the fence; this write becomes objects 2..=5 (64 KiB each).
    let old = pattern(1, 256 * 1024);
    vol.write(0, &old).await.unwrap();
    vol.flush().await.unwrap();
    // The next cut is objects 6..=9; object 8 never arrives.
    *store.held.lock().unwrap() = Some(layout.log(8));
    vol.write(0, &pattern(2, 256 * 1024)).await.unwrap();
    let flush = tokio::spawn({
        let vol = vol.clone();
        async move { vol.flush().await }
    });
    for _ in 0..500 {
        if [6, 7, 9].iter().all(|&s| mem.bytes_under(&layout.log(s)) > 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!([6, 7, 9].iter().all(|&s| mem.bytes_under(&layout.log(s)) > 0), "the other objects landed");
    assert!(!flush.is_finished(), "FLUSH waits for the whole unit");
    assert_eq!(vol.durable(), 5);
    flush.abort();
    drop(vol); // the writer dies

    let snap = manage::snapshot(mem.as_ref(), &layout, Some("after-crash"), Duration::from_secs(60)).await.unwrap();
    assert_eq!(snap.seq, 5, "a snapshot never ends inside a unit");
    let mut c = cfg(&dir, "recoverer");
    c.force_takeover = true;
    let vol = Volume::open(mem.clone(), layout.clone(), c).await.unwrap();
    assert!(vol.read(0, 256 * 1024).await.unwrap() == old, "none of the incomplete unit is visible");
    assert_eq!(mem.bytes_under(&layout.log(7)), 0, "orphans past the recovery point are removed");
    assert_eq!(mem.bytes_under(&layout.log(9)), 0);
    vol.close().await.unwrap();
}

/// Writes between FLUSHes are merged in the journal: rewriting the same 8 MiB twenty times
/// uploads it once.
#[tokio::test]
async fn overwrites_merge_in_the_journal_before_upload() {
    let mem = Arc::new(MemStore::new());
    let layout = new_volume(&mem, 64 * MIB, 4 * MIB).await;
    let dir = tempfile::tempdir().unwrap();
    let vol = Volume::open(mem.clone(), layout.clone(), cfg(&dir, "a")).await.unwrap();
    for round in 0..20 {
        for piece in 0..8u64 {
            vol.write(piece * MIB, &pattern(round * 8 + piece, MIB as usize)).await.unwrap();
        }
    }
    vol.flush().await.unwrap();
    let log = mem.bytes_under(&layout.log_prefix());
    assert!(log <= 8 * MIB + 3 * HEADER_BYTES as u64, "log holds {log} bytes for 8 MiB of data");
    let want: Vec<u8> = (0..8).flat_map(|p| pattern(19 * 8 + p, MIB as usize)).collect();
    assert!(vol.read(0, 8 * MIB).await.unwrap() == want);
    vol.close().await.unwrap();
}

#[tokio::test]
async fn second_writer_is_refused_and_a_stale_writer_is_fenced() {
    let store = Arc::new(MemStore::new());
    let layout = new_volume(&store, 16 * MIB, 256 * 1024).await;
    let dir = tempfile::tempdir().unwrap();
    let a = Volume::open(store.clone(), layout.clone(), cfg(&dir, "writer-a")).await.unwrap();
    a.write(0, &[1u8; 4096]).await.unwrap();
    a.flush().await.unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    match Volume::open(store.clone(), layout.clone(), cfg(&dir_b, "writer-b")).await {
        Err(VolumeError::LeaseHeld { holder, .. }) => assert_eq!(holder, "writer-a"),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("second writer was not refused"),
    }
    // B takes over by force; A is now stale and must not make anything visible.
    let mut c = cfg(&dir_b, "writer-b");
    c.force_takeover = true;
    let b = Volume::open(store.clone(), layout.clone(), c).await.unwrap();
    a.write(4096, &[2u8; 4096]).await.unwrap();
    let err = a.flush().await.unwrap_err();
    assert!(err.to_string().contains("fenced") || err.to_string().contains("epoch"), "stale flush error: {err}");
    assert_eq!(b.read(4096, 4096).await.unwrap(), vec![0u8; 4096]);
    b.write(8192, &[3u8; 4096]).await.unwrap();
    b.close().await.unwrap();
    let dir_c = tempfile::tempdir().unwrap();
    let c = Volume::open(store.clone(), layout, cfg(&dir_c, "writer-c")).await.unwrap();
    assert_eq!(c.read(0, 4096).await.unwrap(), vec![1u8; 4096]);
    assert_eq!(c.read(4096, 4096).await.unwrap(), vec![0u8; 4096]);
    assert_eq!(c.read(8192, 4096).await.unwrap(), vec![3u8; 4096]);
    c.close().await.unwrap();
}

#[tokio::test]
async fn snapshots_rollback_and_export() {
    let store = Arc::new(MemStore::new());
    let layout = new_volume(&store, 8 * MIB, 256 * 1024).await;
    let dir = tempfile::tempdir().unwrap();
    let vol = Volume::open(store.clone(), layout.clone(), cfg(&dir, "a")).await.unwrap();
    let v1 = pattern(1, (8 * MIB) as usize);
    vol.write(0, &v1).await.unwrap();
    vol.flush().await.unwrap();
    let grace = Duration::from_secs(30);
    manage::snapshot(store.as_ref(), &layout, Some("one"), grace).await.unwrap();
    assert!(matches!(
        manage::snapshot(store.as_ref(), &layout, Some("one"), grace).await,
        Err(VolumeError::SnapshotExists(_))
    ));
    let v2 = pattern(2, MIB as usize);
    vol.write(MIB, &v2).await.unwrap();
    vol.flush().await.unwrap();
    manage::snapshot(store.as_ref(), &layout, Some("two"), grace).await.unwrap();
    vol.close().await.unwrap();

    let out = dir.path().join("one.img");
    manage::export(store.as_ref(), &layout, Some("one"), &out).await.unwrap();
    assert!(std::fs::read(&out).unwrap() == v1);
    assert!(matches!(
        manage::export(store.as_ref(), &layout, Some("nope"), &out).await,
        Err(VolumeError::UnknownSnapshot(_))
    ));

    manage::rollback(store.clone(), &layout, "one", cfg(&dir, "rb")).await.unwrap();
    let vol = Volume::open(store.clone(), layout.clone(), cfg(&dir, "b")).await.unwrap();
    assert!(vol.read(0, 8 * MIB).await.unwrap() == v1, "rollback to one");
    vol.close().await.unwrap();
    // Later snapshots survive a rollback: roll forward again.
    manage::rollback(store.clone(), &layout, "two", cfg(&dir, "rb")).await.unwrap();
    let vol = Volume::open(store.clone(), layout.clone(), cfg(&dir, "c")).await.unwrap();
    let got = vol.read(MIB, MIB).await.unwrap();
    assert!(got == v2, "rollback to two");
    vol.close().await.unwrap();
    let snaps = manage::list_snapshots(store.as_ref(), &layout).await.unwrap();
    assert_eq!(snaps.iter().map(|s| s.label.as_str()).collect::<Vec<_>>(), ["one", "two"]);
}

#[tokio::test]
async fn checkpoints_bound_replay() {
    let store = Arc::new(MemStore::new());
    let layout = new_volume(&store, 16 * MIB, 256 * 1024).await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(&dir, "a");
    c.checkpoint_bytes = 2 * MIB;
    let vol = Volume::open(store.clone(), layout.clone(), c).await.unwrap();
    let data = pattern(5, (16 * MIB) as usize);
    for chunk in 0..16u64 {
        let at = (chunk * MIB) as usize;
        vol.write(chunk * MIB, &data[at..at + MIB as usize]).await.unwrap();
        vol.flush().await.unwrap();
    }
    // Give the background checkpoint a moment, then crash (no close).
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(vol);
    let info = manage::inspect(store.as_ref(), &layout).await.unwrap();
    assert!(info.checkpoints > 0, "no checkpoint written");
    assert!(info.base_checkpoint > 0);
    assert_eq!(info.live_bytes, 16 * MIB);
    let mut c = cfg(&dir, "b");
    c.force_takeover = true;
    let vol = Volume::open(store.clone(), layout, c).await.unwrap();
    assert!(vol.read(0, 16 * MIB).await.unwrap() == data);
    vol.close().await.unwrap();
}

#[tokio::test]
async fn gc_keeps_the_bucket_near_live_data_and_spares_snapshots() {
    let store = Arc::new(MemStore::new());
    const SIZE: u64 = 8 * MIB;
    let layout = new_volume(&store, SIZE, 256 * 1024).await;
    let dir = tempfile::tempdir().unwrap();
    let vol = Volume::open(store.clone(), layout.clone(), cfg(&dir, "a")).await.unwrap();
    let mut model = vec![0u8; SIZE as usize];
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let gc_cfg = GcConfig { grace: Duration::ZERO, ..GcConfig::default() };
    let mut gc = Gc::new();
    // Fill, snapshot, then overwrite randomly ~6x the volume.
    vol.write(0, &pattern(0, SIZE as usize)).await.unwrap();
    model.copy_from_slice(&pattern(0, SIZE as usize));
    vol.flush().await.unwrap();
    manage::snapshot(store.as_ref(), &layout, Some("base"), Duration::from_secs(30)).await.unwrap();
    for i in 0..(6 * SIZE / 16384) {
        let off = rng.random_range(0..SIZE / 16384) * 16384;
        let d = pattern(i + 100, 16384);
        vol.write(off, &d).await.unwrap();
        model[off as usize..off as usize + 16384].copy_from_slice(&d);
        if i % 256 == 0 {
            vol.flush().await.unwrap();
            gc.run(&vol, &gc_cfg).await.unwrap();
        }
    }
    vol.flush().await.unwrap();
    // The snapshot pins the first fill, so drop it and collect for real.
    manage::delete_snapshot(store.as_ref(), &layout, "base").await.unwrap();
    let mut last = None;
    for _ in 0..3 {
        last = Some(gc.run(&vol, &gc_cfg).await.unwrap());
    }
    let bytes = store.bytes_under(&format!("{}log/", layout.root()));
    assert!((bytes as f64) <= 1.5 * SIZE as f64, "log holds {bytes} bytes for {SIZE} live; last pass: {last:?}");
    assert!(vol.read(0, SIZE).await.unwrap() == model, "gc changed data");
    vol.close().await.unwrap();
    let vol = Volume::open(store.clone(), layout, cfg(&dir, "b")).await.unwrap();
    assert!(vol.read(0, SIZE).await.unwrap() == model, "data after gc + reopen");
    vol.close().await.unwrap();
}

#[tokio::test]
async fn gc_never_breaks_a_snapshot() {
    let store = Arc::new(MemStore::new());
    const SIZE: u64 = 4 * MIB;
    let layout = new_volume(&store, SIZE, 256 * 1024).await;
    let dir = tempfile::tempdir().unwrap();
    let vol = Volume::open(store.clone(), layout.clone(), cfg(&dir, "a")).await.unwrap();
    let first = pattern(7, SIZE as usize);
    vol.write(0, &first).await.unwrap();
    vol.flush().await.unwrap();
    manage::snapshot(store.as_ref(), &layout, Some("keep"), Duration::from_secs(30)).await.unwrap();
    let gc_cfg = GcConfig { grace: Duration::ZERO, ..GcConfig::default() };
    let mut gc = Gc::new();
    for round in 0..4u64 {
        vol.write(0, &pattern(round + 50, SIZE as usize)).await.unwrap();
        vol.flush().await.unwrap();
        gc.run(&vol, &gc_cfg).await.unwrap();
    }
    vol.close().await.unwrap();
    let out = dir.path().join("keep.img");
    manage::export(store.as_ref(), &layout, Some("keep"), &out).await.unwrap();
    assert!(std::fs::read(&out).unwrap() == first, "snapshot broken by gc");
}

#[tokio::test]
async fn resize_grows_and_shrinks_without_resurrecting_data() {
    let store = Arc::new(MemStore::new());
    let layout = new_volume(&store, 8 * MIB, 256 * 1024).await;
    let dir = tempfile::tempdir().unwrap();
    let vol = Volume::open(store.clone(), layout.clone(), cfg(&dir, "a")).await.unwrap();
    vol.write(7 * MIB, &[9u8; 4096]).await.unwrap();
    vol.close().await.unwrap();
    let err = manage::resize(store.clone(), &layout, 4 * MIB, cfg(&dir, "r"), false).await.unwrap_err();
    assert!(matches!(err, VolumeError::BadSize(_)), "{err}");
    assert!(matches!(
        manage::resize(store.clone(), &layout, 4 * MIB + 1, cfg(&dir, "r"), true).await,
        Err(VolumeError::BadSize(_))
    ));
    manage::resize(store.clone(), &layout, 4 * MIB, cfg(&dir, "r"), true).await.unwrap();
    manage::resize(store.clone(), &layout, 16 * MIB, cfg(&dir, "r"), false).await.unwrap();
    let vol = Volume::open(store.clone(), layout, cfg(&dir, "b")).await.unwrap();
    assert_eq!(vol.size(), 16 * MIB);
    assert_eq!(vol.read(7 * MIB, 4096).await.unwrap(), vec![0u8; 4096]);
    vol.write(15 * MIB, &[1u8; 4096]).await.unwrap();
    vol.close().await.unwrap();
}

#[tokio::test]
async fn bad_input_gets_clear_errors() {
    let store = Arc::new(MemStore::new());
    let layout = Layout::new("", "v").unwrap();
    assert!(matches!(manage::create(store.as_ref(), &layout, "v", 1000, 4 * MIB).await, Err(VolumeError::BadSize(_))));
    assert!(matches!(manage::create(store.as_ref(), &layout, "v", MIB, 1000).await, Err(VolumeError::BadSize(_))));
    manage::create(store.as_ref(), &layout, "v", MIB, 64 * 1024).await.unwrap();
    assert!(matches!(
        manage::create(store.as_ref(), &layout, "v", MIB, 64 * 1024).await,
        Err(VolumeError::AlreadyExists(_))
    ));
    assert!(Layout::new("", "../etc").is_err());
    let other = Layout::new("", "missing").unwrap();
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(Volume::open(store.clone(), other, cfg(&dir, "x")).await, Err(VolumeError::NoSuchVolume(_))));
    assert!(matches!(
        manage::rollback(store.clone(), &layout, "nope", cfg(&dir, "x")).await,
        Err(VolumeError::UnknownSnapshot(_))
    ));
}

#[tokio::test]
async fn volumes_written_by_log_version_1_still_open() {
    let store = Arc::new(MemStore::new());
    let layout = new_volume(&store, 8 * MIB, 256 * 1024).await;
    let dir = tempfile::tempdir().unwrap();
    let vol = Volume::open(store.clone(), layout.clone(), cfg(&dir, "a")).await.unwrap();
    let mut model = pattern(11, MIB as usize);
    vol.write(0, &model).await.unwrap();
    vol.close().await.unwrap();
    // What a version-1 writer logged for a TRIM of 128 KiB at 64 KiB: a zero extent (address
    // bit 63 set, no data), in an object whose trailer says version 1. Built by hand here.
    let next = store.list(&layout.log_prefix()).await.unwrap().len() as u64 + 1;
    let entry = format::Entry { addr: 64 * 1024, len: 128 * 1024, zero: false };
    let mut header = format::encode_header(&[entry], format::Trailer::single(1, next, ObjectKind::Data));
    header[0..8].copy_from_slice(&((64 * 1024) | format::ZERO_FLAG).to_be_bytes());
    header[HEADER_BYTES - 36 + 8..HEADER_BYTES - 36 + 12].copy_from_slice(&1u32.to_be_bytes());
    store.put(&layout.log(next), Bytes::from(header), PutCondition::IfAbsent).await.unwrap();
    model[64 * 1024..192 * 1024].fill(0);
    let vol = Volume::open(store.clone(), layout.clone(), cfg(&dir, "b")).await.unwrap();
    assert!(vol.read(0, MIB).await.unwrap() == model, "the version-1 zero extent is applied");
    vol.write(MIB, &[5u8; 4096]).await.unwrap();
    vol.close().await.unwrap();
    model.extend_from_slice(&[5u8; 4096]);
    let vol = Volume::open(store.clone(), layout, cfg(&dir, "c")).await.unwrap();
    assert!(vol.read(0, MIB + 4096).await.unwrap() == model, "and writing goes on in version 2");
    vol.close().await.unwrap();
}

#[tokio::test]
async fn zeroing_written_data_logs_zeros_once() {
    let store = Arc::new(MemStore::new());
    let layout = new_volume(&store, 8 * MIB, 256 * 1024).await;
    let dir = tempfile::tempdir().unwrap();
    let vol = Volume::open(store.clone(), layout.clone(), cfg(&dir, "a")).await.unwrap();
    let log = || store.bytes_under(&layout.log_prefix());
    // Zeroing never-written space logs nothing.
    let empty = log();
    vol.trim(0, 8 * MIB).await.unwrap();
    vol.flush().await.unwrap();
    assert_eq!(log(), empty);
    // Zeroing written data logs its zeros (as data, so a raw reader sees them) once.
    vol.write(0, &pattern(3, MIB as usize)).await.unwrap();
    vol.flush().await.unwrap();
    let written = log();
    vol.trim(0, MIB).await.unwrap();
    vol.flush().await.unwrap();
    let zeroed = log();
    assert!(zeroed >= written + MIB, "the zeros are in the log: {written} -> {zeroed}");
    for _ in 0..3 {
        vol.trim(0, MIB).await.unwrap();
        vol.write_zeroes(0, MIB).await.unwrap();
        vol.flush().await.unwrap();
    }
    assert_eq!(log(), zeroed, "zeroing zeros again logs nothing");
    // Known zeros are read without asking the bucket.
    store.range_reads.store(0, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(vol.read(0, MIB).await.unwrap(), vec![0u8; MIB as usize]);
    assert_eq!(store.range_reads.load(std::sync::atomic::Ordering::Relaxed), 0);
    vol.close().await.unwrap();
    let vol = Volume::open(store.clone(), layout, cfg(&dir, "b")).await.unwrap();
    assert_eq!(vol.read(0, MIB).await.unwrap(), vec![0u8; MIB as usize]);
    vol.close().await.unwrap();
}
