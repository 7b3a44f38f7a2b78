//! Forks: a new writable volume that starts as another's disk without copying anything, reads
//! through to the source's log objects (which the source's GC then keeps) and diverges
//! independently.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::sync::Arc;
use std::time::Duration;

use meridian_volume::format::Layout;
use meridian_volume::gc::{Gc, GcConfig};
use meridian_volume::manage;
use meridian_volume::store::{MemStore, ObjectStore};
use meridian_volume::{Volume, VolumeError, WriterConfig};
use rand::{Rng, SeedableRng};

const MIB: u64 = 1 << 20;
const SIZE: u64 = 8 * MIB;
const GRACE: Duration = Duration::from_secs(30);

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    (0..len).map(|_| r.random()).collect()
}

fn cfg(dir: &tempfile::TempDir, who: &str) -> WriterConfig {
    let mut c = WriterConfig::new(dir.path().join("cache"), who.to_string());
    c.cache_pages = 8;
    c
}

/// Opens `name`, applies `f`, closes it (a checkpoint is written when it changed).
async fn with_volume<F, Fut>(store: &Arc<MemStore>, dir: &tempfile::TempDir, name: &str, f: F)
where
    F: FnOnce(Arc<Volume>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let vol = Volume::open(store.clone(), Layout::new("", name).unwrap(), cfg(dir, name)).await.unwrap();
    f(vol.clone()).await;
    vol.close().await.unwrap();
}

async fn disk(store: &Arc<MemStore>, dir: &tempfile::TempDir, name: &str) -> Vec<u8> {
    let out = dir.path().join(format!("{name}.img"));
    manage::export(store.as_ref(), &Layout::new("", name).unwrap(), None, &out).await.unwrap();
    std::fs::read(&out).unwrap()
}

/// Overwrites the whole volume in random 64 KiB pieces `rounds` times, running GC (no grace)
/// as it goes, so every object not protected dies and goes.
async fn churn(vol: &Arc<Volume>, model: &mut [u8], seed: u64, rounds: u64) {
    let gc_cfg = GcConfig { high: 1.0, low: 1.0, grace: Duration::ZERO, ..GcConfig::default() };
    let mut gc = Gc::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for i in 0..rounds * SIZE / (64 * 1024) {
        let off = rng.random_range(0..SIZE / (64 * 1024)) * 64 * 1024;
        let d = pattern(seed * 1000 + i, 64 * 1024);
        vol.write(off, &d).await.unwrap();
        model[off as usize..off as usize + d.len()].copy_from_slice(&d);
        if i % 64 == 63 {
            vol.flush().await.unwrap();
            gc.run(vol, &gc_cfg).await.unwrap();
        }
    }
    vol.flush().await.unwrap();
    for _ in 0..2 {
        gc.run(vol, &gc_cfg).await.unwrap();
    }
}

#[tokio::test]
async fn forks_start_in_constant_time_read_through_and_diverge() {
    let store = Arc::new(MemStore::new());
    let dir = tempfile::tempdir().unwrap();
    let src = Layout::new("", "src").unwrap();
    manage::create(store.as_ref(), &src, "src", SIZE, 256 * 1024).await.unwrap();
    let at_snap = pattern(1, SIZE as usize);
    let mut head = at_snap.clone();
    let vol = Volume::open(store.clone(), src.clone(), cfg(&dir, "src")).await.unwrap();
    vol.write(0, &at_snap).await.unwrap();
    vol.flush().await.unwrap();
    manage::snapshot(store.as_ref(), &src, Some("s1"), GRACE).await.unwrap();
    let d = pattern(2, (2 * MIB) as usize);
    vol.write(MIB, &d).await.unwrap();
    head[MIB as usize..3 * MIB as usize].copy_from_slice(&d);
    vol.close().await.unwrap();

    // Constant time: a fork adds two small JSON objects (its manifest, the source's record of
    // it), whatever the source holds.
    let before = (store.list("").await.unwrap().len(), store.bytes_under(""));
    manage::fork(store.clone(), None, &src, Some("s1"), "f1", GRACE).await.unwrap();
    manage::fork(store.clone(), None, &src, None, "f2", GRACE).await.unwrap();
    let after = (store.list("").await.unwrap().len(), store.bytes_under(""));
    assert_eq!(after.0, before.0 + 4, "two forks, two objects each");
    assert!(after.1 - before.1 < 4096, "forks copied no data: {} bytes", after.1 - before.1);
    assert!(store.list("f1/log/").await.unwrap().is_empty());
    let err = manage::fork(store.clone(), None, &src, Some("nope"), "f3", GRACE).await.unwrap_err();
    assert!(matches!(err, VolumeError::UnknownSnapshot(_)), "{err}");
    let err = manage::fork(store.clone(), None, &src, None, "f1", GRACE).await.unwrap_err();
    assert!(matches!(err, VolumeError::AlreadyExists(_)), "{err}");

    // Each fork reads the source as it was, then diverges on its own.
    let mut f1 = at_snap.clone();
    with_volume(&store, &dir, "f1", |vol| {
        let f1 = &mut f1;
        async move {
            assert!(vol.read(0, SIZE).await.unwrap() == *f1, "f1 starts as the snapshot");
            let d = pattern(3, MIB as usize);
            vol.write(5 * MIB, &d).await.unwrap();
            vol.trim(0, 64 * 1024).await.unwrap();
            f1[5 * MIB as usize..6 * MIB as usize].copy_from_slice(&d);
            f1[..64 * 1024].fill(0);
        }
    })
    .await;
    assert!(disk(&store, &dir, "f2").await == head, "f2 starts as the source's head");
    assert!(disk(&store, &dir, "f1").await == f1, "f1 diverged");
    assert!(disk(&store, &dir, "src").await == head, "the source did not see f1's writes");

    // A fork of a fork reads through two levels.
    manage::fork(store.clone(), None, &Layout::new("", "f1").unwrap(), None, "f1a", GRACE).await.unwrap();
    let mut f1a = f1.clone();
    with_volume(&store, &dir, "f1a", |vol| {
        let f1a = &mut f1a;
        async move {
            assert!(vol.read(0, SIZE).await.unwrap() == *f1a, "f1a starts as f1");
            vol.write(7 * MIB, &[7u8; 4096]).await.unwrap();
            f1a[7 * MIB as usize..7 * MIB as usize + 4096].fill(7);
        }
    })
    .await;

    // The source overwrites everything several times and collects garbage: the objects the
    // forks read stay, everything else goes.
    let mut src_model = head.clone();
    with_volume(&store, &dir, "src", |vol| {
        let m = &mut src_model;
        async move { churn(&vol, m, 4, 4).await }
    })
    .await;
    let mut f1_model = f1.clone();
    with_volume(&store, &dir, "f1", |vol| {
        let m = &mut f1_model;
        async move { churn(&vol, m, 5, 3).await }
    })
    .await;
    assert!(disk(&store, &dir, "src").await == src_model);
    assert!(disk(&store, &dir, "f1").await == f1_model);
    assert!(disk(&store, &dir, "f2").await == head, "f2 after the source's GC");
    assert!(disk(&store, &dir, "f1a").await == f1a, "f1a after GC of both its ancestors");
    // GC did run: the source's log is far smaller than everything it wrote.
    assert!(store.bytes_under("src/log/") < 4 * SIZE, "{}", store.bytes_under("src/log/"));
    // And a fork reopened after all that still writes and reads.
    with_volume(&store, &dir, "f2", |vol| {
        let head = head.clone();
        async move {
            assert!(vol.read(0, SIZE).await.unwrap() == head);
            vol.write(0, &[9u8; 8192]).await.unwrap();
            assert_eq!(vol.read(0, 8192).await.unwrap(), vec![9u8; 8192]);
        }
    })
    .await;
}

/// `delete` refuses a volume that forks read or that a writer holds, removes a fork together
/// with its record in the source (whose GC then no longer keeps objects for it), and leaves
/// nothing of a volume, so the name can be created afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_refuses_forked_or_served_volumes_and_removes_everything() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemStore::new());
    let src = Layout::new("", "src").unwrap();
    manage::create(store.as_ref(), &src, "src", SIZE, 256 * 1024).await.unwrap();
    let data = pattern(7, MIB as usize);
    with_volume(&store, &dir, "src", |v| async move { v.write(0, &data).await.unwrap() }).await;
    manage::snapshot(store.as_ref(), &src, Some("s"), GRACE).await.unwrap();
    manage::fork(store.clone(), None, &src, None, "child", GRACE).await.unwrap();
    let child = Layout::new("", "child").unwrap();

    let err = manage::delete(store.clone(), &src, &cfg(&dir, "del")).await.unwrap_err().to_string();
    assert!(err.contains("has forks (child)"), "{err}");
    let vol = Volume::open(store.clone(), child.clone(), cfg(&dir, "writer")).await.unwrap();
    let err = manage::delete(store.clone(), &child, &cfg(&dir, "del")).await.unwrap_err();
    assert!(matches!(err, VolumeError::LeaseHeld { .. }), "{err}");
    vol.write(0, &[1; 4096]).await.unwrap();
    vol.close().await.unwrap();
    assert!(store.bytes_under("child/log/") > 0, "the fork wrote objects of its own");

    let d = manage::delete(store.clone(), &child, &cfg(&dir, "del")).await.unwrap();
    assert!(d.objects >= 2, "{d:?}");
    assert_eq!(store.list("child/").await.unwrap(), vec![], "nothing of the fork is left");
    assert_eq!(store.list("src/forks/").await.unwrap(), vec![], "the source no longer keeps objects for it");
    assert!(disk(&store, &dir, "src").await[..MIB as usize] == pattern(7, MIB as usize)[..], "the source is intact");
    let err = manage::delete(store.clone(), &child, &cfg(&dir, "del")).await.unwrap_err();
    assert!(matches!(err, VolumeError::NoSuchVolume(_)), "{err}");

    manage::delete(store.clone(), &src, &cfg(&dir, "del")).await.unwrap();
    assert_eq!(store.list("").await.unwrap(), vec![], "the bucket is empty");
    manage::create(store.as_ref(), &src, "src", SIZE, 256 * 1024).await.unwrap();
    assert!(disk(&store, &dir, "src").await.iter().all(|&b| b == 0), "a new volume of the same name is blank");
}
