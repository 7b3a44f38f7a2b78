//! The log in the bucket is readable by anyone who knows only seed 004's description of it.
//!
//! `seed_replay` below is written from that description alone and shares no code with the
//! crate: objects named by sequential hex numbers, each a 12 KiB header of 1,024 entries of a
//! big-endian u64 byte address and u32 byte length (a zero length ends the list), then the data
//! of the entries in the same order; applying the objects in order gives the disk. After a
//! random mix of writes, WRITE_ZEROES, TRIMs (through NBD, by qemu-io), GC passes, resizes and
//! a rollback, the disk it rebuilds from the raw objects must equal what NBD reads; and a fork's
//! disk is its source's objects up to the fork point followed by its own.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::Server;
use meridian_volume::WriterConfig;
use meridian_volume::format::Layout;
use meridian_volume::gc::{Gc, GcConfig};
use meridian_volume::manage;
use meridian_volume::store::{MemStore, ObjectStore};
use rand::{Rng, SeedableRng};

const MIB: u64 = 1 << 20;
const KIB: u64 = 1 << 10;

/// Rebuilds a disk of `size` bytes from `(name, body)` log objects, as seed 004 describes.
fn seed_replay(objects: &[(String, Vec<u8>)], size: usize) -> Vec<u8> {
    let mut numbered: Vec<(u64, &Vec<u8>)> =
        objects.iter().map(|(name, body)| (u64::from_str_radix(name, 16).unwrap(), body)).collect();
    numbered.sort_by_key(|(n, _)| *n);
    let mut disk = vec![0u8; size];
    for (n, body) in numbered {
        let mut data = 12 * 1024;
        for i in 0..1024 {
            let entry = &body[i * 12..i * 12 + 12];
            let addr = u64::from_be_bytes(entry[..8].try_into().unwrap());
            let len = u32::from_be_bytes(entry[8..].try_into().unwrap()) as usize;
            if len == 0 {
                break;
            }
            assert!(
                addr.is_multiple_of(4096) && len.is_multiple_of(4096),
                "object {n:x}, entry {i}: {addr}+{len} not 4 KiB aligned"
            );
            // The disk is never this large: such an address would mean an entry a seed reader misreads.
            assert!(addr < 1 << 40, "object {n:x}, entry {i}: address {addr:#x} is not on any disk");
            let bytes = &body[data..data + len];
            data += len;
            // Past the current end: data of a size the disk had once.
            let addr = addr as usize;
            if addr < size {
                let n = len.min(size - addr);
                disk[addr..addr + n].copy_from_slice(&bytes[..n]);
            }
        }
        assert_eq!(data, body.len(), "object {n:x} holds exactly its header and the entries' data");
    }
    disk
}

/// Every log object of the volume, raw, named by its last key segment.
async fn raw_log(store: &MemStore, layout: &Layout) -> Vec<(String, Vec<u8>)> {
    let prefix = format!("{}log/", layout.root());
    let mut out = Vec::new();
    for o in store.list(&prefix).await.unwrap() {
        let body = store.get(&o.key).await.unwrap().data.to_vec();
        out.push((o.key[prefix.len()..].to_string(), body));
    }
    out
}

/// The whole disk as an NBD client reads it.
async fn nbd_image(srv: &Server, dir: &tempfile::TempDir) -> Vec<u8> {
    let out = dir.path().join("nbd.img");
    let out = out.to_str().unwrap();
    let _ = std::fs::remove_file(out);
    common::run_tool("qemu-img", &["convert", "-f", "raw", "-O", "raw", &srv.url(), out]).await;
    std::fs::read(out).unwrap()
}

/// A random batch of qemu-io commands (writes, WRITE_ZEROES, TRIMs, flushes), applied to `model`.
fn random_io(rng: &mut rand::rngs::StdRng, model: &mut [u8], count: usize) -> Vec<String> {
    let size = model.len() as u64;
    let mut cmds = Vec::new();
    for _ in 0..count {
        let aligned = rng.random_bool(0.7);
        let len = if aligned { rng.random_range(1..=64) * 4 * KIB } else { rng.random_range(1..200 * KIB) };
        let off = rng.random_range(0..size - len);
        let off = if aligned { off / (4 * KIB) * (4 * KIB) } else { off };
        let (o, l) = (off as usize, len as usize);
        match rng.random_range(0..10) {
            0..=4 => {
                let byte: u8 = rng.random_range(1..=255);
                cmds.push(format!("write -P {byte} {off} {len}"));
                model[o..o + l].fill(byte);
            }
            5..=6 => {
                cmds.push(format!("write -z {off} {len}"));
                model[o..o + l].fill(0);
            }
            7..=8 => {
                // Aligned, so the advisory TRIM certainly discards (and reads back as zeros).
                let (off, len) = (off / (4 * KIB) * (4 * KIB), len.div_ceil(4 * KIB) * (4 * KIB));
                let (o, l) = (off as usize, (len as usize).min(model.len() - off as usize));
                cmds.push(format!("discard {off} {l}"));
                model[o..o + l].fill(0);
            }
            _ => cmds.push("flush".into()),
        }
    }
    cmds.push("flush".into());
    cmds
}

async fn qemu_io(srv: &Server, cmds: &[String]) {
    let url = srv.url();
    let mut args = vec!["-f", "raw", url.as_str()];
    for c in cmds {
        args.extend(["-c", c.as_str()]);
    }
    common::run_tool("qemu-io", &args).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_written_from_the_seed_rebuilds_the_disk_nbd_serves() {
    let _ = tracing_subscriber::fmt().with_env_filter("meridian_volume=debug").with_test_writer().try_init();
    let store = Arc::new(MemStore::new());
    let layout = Layout::new("", "disk").unwrap();
    // Sizes per round: grow, shrink, grow back over data the shrink cut off, shrink, grow.
    let sizes = [16 * MIB, 24 * MIB, 12 * MIB, 24 * MIB, 8 * MIB, 16 * MIB];
    manage::create(store.as_ref(), &layout, "disk", sizes[0], 256 * KIB).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = || {
        let mut c = WriterConfig::new(dir.path().join("cache"), "seed-test".into());
        // Small journal: cuts of several objects, and zeros over data cut at different times.
        c.journal_bytes = 2 * MIB;
        c.cache_pages = 16;
        c
    };
    let gc_cfg = GcConfig { high: 1.05, low: 1.0, grace: Duration::ZERO, ..GcConfig::default() };
    let mut rng = rand::rngs::StdRng::seed_from_u64(19);
    let mut model = vec![0u8; sizes[0] as usize];
    let mut snapshot_model = Vec::new();
    let (mut removed, mut zeroing) = (0, 0);
    let mut fork = None;
    for (round, &size) in sizes.iter().enumerate() {
        if size != model.len() as u64 {
            manage::resize(store.clone(), &layout, size, cfg(), true).await.unwrap();
            model.resize(size as usize, 0);
        }
        if round == 3 {
            // Back to the disk of round 1, through the log.
            manage::rollback(store.clone(), &layout, "round1", cfg()).await.unwrap();
            assert_eq!(snapshot_model.len(), model.len(), "the schedule rolls back at the same size");
            model.clone_from(&snapshot_model);
        }
        let srv = Server::start(store.clone(), layout.clone(), cfg(), None).await;
        let cmds = random_io(&mut rng, &mut model, 60);
        zeroing += cmds.iter().filter(|c| c.starts_with("write -z") || c.starts_with("discard")).count();
        qemu_io(&srv, &cmds).await;
        for _ in 0..2 {
            let report = Gc::new().run(&srv.vol, &gc_cfg).await.unwrap();
            removed += report.deleted + report.tombstoned;
        }
        if round == 1 {
            manage::snapshot(store.as_ref(), &layout, Some("round1"), Duration::from_secs(30)).await.unwrap();
            snapshot_model.clone_from(&model);
        }
        if round == 2 {
            let m = manage::fork(store.clone(), None, &layout, None, "copy", Duration::from_secs(30)).await.unwrap();
            fork = Some((m.parent.unwrap().seq, model.clone()));
        }
        let served = nbd_image(&srv, &dir).await;
        srv.stop().await;
        assert!(served == model, "round {round}: NBD reads differ from what was written");
        let rebuilt = seed_replay(&raw_log(&store, &layout).await, model.len());
        assert!(rebuilt == served, "round {round}: the seed-format replay of the raw log differs from the disk");
    }
    // The fork taken in round 2, written and collected on its own while its source went on:
    // the source's objects up to the fork point, then the fork's, rebuild it.
    let (point, mut copy_model) = fork.unwrap();
    let copy = Layout::new("", "copy").unwrap();
    let srv = Server::start(store.clone(), copy.clone(), cfg(), None).await;
    qemu_io(&srv, &random_io(&mut rng, &mut copy_model, 60)).await;
    Gc::new().run(&srv.vol, &gc_cfg).await.unwrap();
    let served = nbd_image(&srv, &dir).await;
    srv.stop().await;
    assert!(served == copy_model, "the fork's NBD reads differ from what was written");
    let mut objects: Vec<_> = raw_log(&store, &layout)
        .await
        .into_iter()
        .filter(|(name, _)| u64::from_str_radix(name, 16).unwrap() <= point)
        .collect();
    objects.extend(raw_log(&store, &copy).await);
    assert!(seed_replay(&objects, copy_model.len()) == served, "the seed-format replay of the fork differs");
    assert!(zeroing > 50, "the mix holds WRITE_ZEROES and TRIMs ({zeroing})");
    assert!(removed > 0, "GC removed objects, so the replay ran over a log with holes filled by tombstones");
}
