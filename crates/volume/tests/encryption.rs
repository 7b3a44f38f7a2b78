//! Client-side encryption: the bucket holds nothing of the disk's content or the volume's own
//! metadata in the clear, and a missing, wrong or altered key or object is refused clearly.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use common::Server;
use meridian_volume::crypt::VolumeKey;
use meridian_volume::format::Layout;
use meridian_volume::gc::{Gc, GcConfig};
use meridian_volume::manage;
use meridian_volume::store::{MemStore, ObjectStore, PutCondition};
use meridian_volume::{Volume, VolumeError, WriterConfig};

const MIB: u64 = 1 << 20;
const MARKER: &[u8] = b"MERIDIAN-PLAINTEXT-MARKER-4f1c";
const HOLDER: &str = "holder-name-that-must-stay-secret";

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every object of the bucket, raw, as its owner sees it.
async fn raw_objects(store: &MemStore) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for o in store.list("").await.unwrap() {
        out.push((o.key.clone(), store.get(&o.key).await.unwrap().data.to_vec()));
    }
    out
}

fn key_file(dir: &tempfile::TempDir, name: &str, hex: &str, mode: u32) -> std::path::PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, format!("{hex}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bucket_sees_only_sizes_and_a_wrong_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key = Arc::new(VolumeKey::from_file(&key_file(&dir, "key", &"3c".repeat(32), 0o600)).unwrap());
    let raw = Arc::new(MemStore::new());
    let layout = Layout::new("", "disk").unwrap();
    manage::create_with_key(raw.as_ref(), &layout, "disk", 16 * MIB, 256 * 1024, Some(&key)).await.unwrap();
    let store = manage::volume_store(raw.clone(), &layout, Some(key.clone())).await.unwrap();
    let cfg = || {
        let mut c = WriterConfig::new(dir.path().join("cache"), HOLDER.into());
        c.journal_bytes = MIB;
        c
    };

    // Plaintext in through NBD: a text file written at several places, some overwritten (GC).
    let text: Vec<u8> = MARKER.iter().copied().cycle().take(256 * 1024).collect();
    let src = dir.path().join("marker.txt");
    std::fs::write(&src, &text).unwrap();
    let src = src.to_str().unwrap();
    let srv = Server::start(store.clone(), layout.clone(), cfg(), None).await;
    let url = srv.url();
    let mut args = vec!["-f".to_string(), "raw".into(), url.clone()];
    for at in ["0", "1M", "3M", "1M", "5M", "8M"] {
        args.extend(["-c".into(), format!("write -s {src} {at} 256k")]);
    }
    args.extend(["-c".into(), "write -z 5M 64k".into(), "-c".into(), "flush".into()]);
    common::run_tool("qemu-io", &args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    manage::snapshot(store.as_ref(), &layout, Some("snap"), Duration::from_secs(30)).await.unwrap();
    let gc_cfg = GcConfig { high: 1.0, low: 1.0, grace: Duration::ZERO, ..GcConfig::default() };
    Gc::new().run(&srv.vol, &gc_cfg).await.unwrap();
    srv.vol.checkpoint().await.unwrap();
    let served = srv.vol.read(0, 16 * MIB).await.unwrap();
    srv.stop().await;
    assert_eq!(&served[MIB as usize..MIB as usize + text.len()], &text[..], "the disk holds the text");

    // The owner of the bucket: no content, no log headers, checkpoints, lease or snapshot
    // bodies in the clear; only the manifest is readable, and it holds no key.
    let objects = raw_objects(&raw).await;
    let kinds = ["log/", "checkpoint/", "snapshots/", "lease.json"];
    for kind in kinds {
        assert!(objects.iter().any(|(k, _)| k.contains(kind)), "the bucket holds {kind} objects: {objects:?}");
    }
    for (k, body) in &objects {
        if k == &layout.manifest() {
            let m: serde_json::Value = serde_json::from_slice(body).unwrap();
            assert_eq!(m["encryption"]["cipher"], "xchacha20poly1305-4k");
            assert!(!contains(body, "3c3c3c3c".as_bytes()), "the key is not in the manifest");
            continue;
        }
        for needle in [MARKER, &MARKER[4..20], HOLDER.as_bytes(), b"MRDNVLOG", b"MRDNVCKP", b"\"seq\"", b"\"epoch\""] {
            assert!(!contains(body, needle), "{k} holds {:?} in the clear", String::from_utf8_lossy(needle));
        }
    }

    // The right key reads everything back, after a restart and at the snapshot.
    let store = manage::volume_store(raw.clone(), &layout, Some(key.clone())).await.unwrap();
    let vol = Volume::open(store.clone(), layout.clone(), cfg()).await.unwrap();
    assert!(vol.read(0, 16 * MIB).await.unwrap() == served, "reopened with the key");
    vol.close().await.unwrap();
    let image = dir.path().join("snap.img");
    manage::export(store.as_ref(), &layout, Some("snap"), &image).await.unwrap();
    assert!(std::fs::read(&image).unwrap() == served, "export at the snapshot");

    // A wrong key, no key, or a key for a plain volume: refused before anything is read.
    let wrong = Arc::new(VolumeKey::from_bytes(&[0x3d; 32]));
    let err = manage::volume_store(raw.clone(), &layout, Some(wrong)).await.err().unwrap();
    assert!(matches!(err, VolumeError::WrongKey(_)), "{err}");
    let err = manage::volume_store(raw.clone(), &layout, None).await.err().unwrap();
    assert!(matches!(err, VolumeError::KeyRequired(_)), "{err}");
    assert!(err.to_string().contains("--encryption-key-file"), "{err}");
    let plain = Layout::new("", "plain").unwrap();
    manage::create(raw.as_ref(), &plain, "plain", MIB, 256 * 1024).await.unwrap();
    let err = manage::volume_store(raw.clone(), &plain, Some(key.clone())).await.err().unwrap();
    assert!(matches!(err, VolumeError::NotEncrypted(_)), "{err}");

    // An altered object fails authentication instead of reading as garbage: flip a bit in the
    // header and in the first data chunk of every log object holding data.
    for (k, body) in objects.iter().filter(|(k, b)| k.contains("/log/") && b.len() > 4 * 4136) {
        let mut body = body.clone();
        body[100] ^= 1;
        body[3 * 4136 + 100] ^= 1;
        raw.put(k, body.into(), PutCondition::None).await.unwrap();
    }
    let err = manage::export(store.as_ref(), &layout, None, &image).await.unwrap_err().to_string();
    assert!(err.contains("fails authentication"), "{err}");
}

#[test]
fn key_files_must_be_private_hex() {
    let dir = tempfile::tempdir().unwrap();
    let open = key_file(&dir, "open", &"ab".repeat(32), 0o644);
    let err = VolumeKey::from_file(&open).unwrap_err().to_string();
    assert!(err.contains("chmod 600"), "{err}");
    let short = key_file(&dir, "short", "abcd", 0o600);
    let err = VolumeKey::from_file(&short).unwrap_err().to_string();
    assert!(err.contains("64 hex digits"), "{err}");
    let err = VolumeKey::from_file(&dir.path().join("missing")).unwrap_err().to_string();
    assert!(err.contains("cannot read the key file"), "{err}");
}

/// A fork of an encrypted volume: made with the same key, encrypted with it, reading the
/// source's sealed objects up to the fork point and diverging; no or another key is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_volume_forks_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let key = Arc::new(VolumeKey::from_bytes(&[0x5a; 32]));
    let raw = Arc::new(MemStore::new());
    let src = Layout::new("", "src").unwrap();
    manage::create_with_key(raw.as_ref(), &src, "src", 4 * MIB, 256 * 1024, Some(&key)).await.unwrap();
    let cfg = |name: &str| WriterConfig::new(dir.path().join(name), HOLDER.into());
    let text: Vec<u8> = MARKER.iter().copied().cycle().take(MIB as usize).collect();
    let store = manage::volume_store(raw.clone(), &src, Some(key.clone())).await.unwrap();
    let vol = Volume::open(store.clone(), src.clone(), cfg("a")).await.unwrap();
    vol.write(0, &text).await.unwrap();
    vol.close().await.unwrap();

    let wrong = Arc::new(VolumeKey::from_bytes(&[0x5b; 32]));
    let err = manage::fork(raw.clone(), Some(wrong.clone()), &src, None, "f", GRACE).await.unwrap_err();
    assert!(matches!(err, VolumeError::WrongKey(_)), "{err}");
    let err = manage::fork(raw.clone(), None, &src, None, "f", GRACE).await.unwrap_err();
    assert!(matches!(err, VolumeError::KeyRequired(_)), "{err}");
    let m = manage::fork(raw.clone(), Some(key.clone()), &src, None, "f", GRACE).await.unwrap();
    assert_eq!(m.encryption.as_ref().map(|e| e.cipher.as_str()), Some("xchacha20poly1305-4k"));

    // The fork reads the source's data with the key, and its own writes stay its own.
    let fork = Layout::new("", "f").unwrap();
    for bad in [None, Some(wrong)] {
        assert!(manage::volume_store(raw.clone(), &fork, bad).await.is_err(), "the fork needs the key");
    }
    let fstore = manage::volume_store(raw.clone(), &fork, Some(key.clone())).await.unwrap();
    let fvol = Volume::open(fstore, fork.clone(), cfg("b")).await.unwrap();
    assert!(fvol.read(0, MIB).await.unwrap() == text, "the fork starts as the source");
    fvol.write(0, &[0xee; 4096]).await.unwrap();
    fvol.close().await.unwrap();
    let fstore = manage::volume_store(raw.clone(), &fork, Some(key.clone())).await.unwrap();
    let fvol = Volume::open(fstore, fork.clone(), cfg("c")).await.unwrap();
    let got = fvol.read(0, MIB).await.unwrap();
    assert!(got[..4096] == [0xee; 4096] && got[4096..] == text[4096..], "the fork diverged");
    fvol.close().await.unwrap();
    let vol = Volume::open(store.clone(), src.clone(), cfg("d")).await.unwrap();
    assert!(vol.read(0, MIB).await.unwrap() == text, "the source is unchanged");
    // The source's GC reads the (sealed) fork record and keeps what the fork reads.
    let gc_cfg = GcConfig { high: 1.0, low: 1.0, grace: Duration::ZERO, ..GcConfig::default() };
    Gc::new().run(&vol, &gc_cfg).await.unwrap();
    vol.close().await.unwrap();
    let fstore = manage::volume_store(raw.clone(), &fork, Some(key.clone())).await.unwrap();
    let fvol = Volume::open(fstore, fork, cfg("e")).await.unwrap();
    assert!(fvol.read(0, MIB).await.unwrap() == got, "the fork reads the same after the source's GC");
    fvol.close().await.unwrap();

    for (k, body) in raw_objects(&raw).await {
        assert!(!contains(&body, &MARKER[4..20]), "{k} holds the text in the clear");
    }
}

const GRACE: Duration = Duration::from_secs(30);

/// Key rotation: after `rotate_key` new objects are sealed under the new key, both keys are
/// needed until GC has sealed every older object again, and then the new key alone reads
/// everything back (head, snapshot, export) while the old key alone is refused by name and
/// opens nothing in the bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_replaces_the_old_one_after_gc() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (Arc::new(VolumeKey::from_bytes(&[0x11; 32])), Arc::new(VolumeKey::from_bytes(&[0x22; 32])));
    let raw = Arc::new(MemStore::new());
    let layout = Layout::new("", "disk").unwrap();
    manage::create_with_key(raw.as_ref(), &layout, "disk", 4 * MIB, 256 * 1024, Some(&old)).await.unwrap();
    let cfg = |name: &str| WriterConfig::new(dir.path().join(name), HOLDER.into());
    let text: Vec<u8> = MARKER.iter().copied().cycle().take(2 * MIB as usize).collect();
    let store = manage::volume_store(raw.clone(), &layout, Some(old.clone())).await.unwrap();
    let vol = Volume::open(store.clone(), layout.clone(), cfg("a")).await.unwrap();
    vol.write(0, &text).await.unwrap();
    vol.write(MIB, &[0x33; 8192]).await.unwrap();
    vol.flush().await.unwrap();
    manage::snapshot(store.as_ref(), &layout, Some("before"), GRACE).await.unwrap();
    vol.close().await.unwrap();
    let at_snapshot = {
        let mut d = text.clone();
        d[MIB as usize..MIB as usize + 8192].fill(0x33);
        d.resize(4 * MIB as usize, 0);
        d
    };

    let m = manage::rotate_key(raw.clone(), &layout, old.clone(), &new, &cfg("r")).await.unwrap();
    let info = m.encryption.unwrap();
    assert_eq!((info.generation, info.rotating_from.map(|r| r.generation)), (2, Some(1)));
    let err = manage::rotate_key(raw.clone(), &layout, new.clone(), &old, &cfg("r")).await.unwrap_err();
    assert!(err.to_string().contains("still rotating"), "{err}");

    // Mid-rotation: the new key alone, the old key alone and a wrong old key are refused.
    let err = manage::volume_store(raw.clone(), &layout, Some(new.clone())).await.err().unwrap();
    assert!(matches!(err, VolumeError::OldKeyRequired { generation: 1, .. }), "{err}");
    assert!(err.to_string().contains("--old-key-file"), "{err}");
    let err = manage::volume_store(raw.clone(), &layout, Some(old.clone())).await.err().unwrap();
    assert!(matches!(err, VolumeError::RetiredKey { generation: 1, current: 2, .. }), "{err}");
    let wrong = Some(Arc::new(VolumeKey::from_bytes(&[0x44; 32])));
    let err = manage::volume_store_rotating(raw.clone(), &layout, Some(new.clone()), wrong).await.err().unwrap();
    assert!(matches!(err, VolumeError::WrongOldKey { .. }), "{err}");
    let err = manage::fork(raw.clone(), Some(new.clone()), &layout, None, "f", GRACE).await.unwrap_err();
    assert!(err.to_string().contains("finish the rotation"), "{err}");

    // With both keys: old objects read, new writes go under the new key, inspect counts what
    // is left under the old one.
    let both = manage::volume_store_rotating(raw.clone(), &layout, Some(new.clone()), Some(old.clone())).await.unwrap();
    let vol = Volume::open(both.clone(), layout.clone(), cfg("b")).await.unwrap();
    assert!(vol.read(0, 4 * MIB).await.unwrap() == at_snapshot, "old objects read with both keys");
    vol.write(3 * MIB, &text[..MIB as usize]).await.unwrap();
    vol.flush().await.unwrap();
    let keys = manage::inspect(both.as_ref(), &layout).await.unwrap().keys.unwrap();
    assert!(keys.old_key_needed && keys.objects_under_old_key >= 4, "{keys:?}");
    let gc_cfg = GcConfig { high: 1.0, low: 1.0, grace: Duration::ZERO, ..GcConfig::default() };
    let report = Gc::new().run(&vol, &gc_cfg).await.unwrap();
    assert!(report.rotation_finished && report.resealed >= 4, "{report:?}");
    let head = vol.read(0, 4 * MIB).await.unwrap().to_vec();
    vol.close().await.unwrap();
    assert!(head[3 * MIB as usize..] == text[..MIB as usize], "the write under the new key");

    // Rotation complete: the new key alone reads the head, the snapshot and an export.
    let store = manage::volume_store(raw.clone(), &layout, Some(new.clone())).await.unwrap();
    let keys = manage::inspect(store.as_ref(), &layout).await.unwrap().keys.unwrap();
    assert!(!keys.old_key_needed && keys.objects_under_old_key == 0 && keys.retired == Some(1), "{keys:?}");
    let vol = Volume::open(store.clone(), layout.clone(), cfg("c")).await.unwrap();
    assert!(vol.read(0, 4 * MIB).await.unwrap() == head, "reopened with the new key alone");
    vol.close().await.unwrap();
    for (at, want) in [(Some("before"), &at_snapshot), (None, &head)] {
        let image = dir.path().join("out.img");
        manage::export(store.as_ref(), &layout, at, &image).await.unwrap();
        assert!(std::fs::read(&image).unwrap() == *want, "export at {at:?} with the new key alone");
    }
    let err = manage::volume_store(raw.clone(), &layout, Some(old.clone())).await.err().unwrap();
    assert!(matches!(err, VolumeError::RetiredKey { generation: 1, .. }), "{err}");

    // The bucket: no plaintext, and not one object the old key still opens.
    let m = manage::read_manifest(raw.as_ref(), &layout).await.unwrap();
    let old_only = meridian_volume::crypt::EncryptedStore::new(raw.clone(), old, &layout, &m.volume_id);
    for (k, body) in raw_objects(&raw).await {
        assert!(!contains(&body, &MARKER[4..20]), "{k} holds the text in the clear");
        if k != layout.manifest() {
            let err = old_only.get(&k).await.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains("fails authentication"), "{k} still opens under the old key");
        }
    }
}

/// Forks share their source's key and read its objects: neither side can rotate alone.
#[tokio::test]
async fn forks_and_their_sources_refuse_key_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let (key, new) = (Arc::new(VolumeKey::from_bytes(&[0x55; 32])), VolumeKey::from_bytes(&[0x66; 32]));
    let raw = Arc::new(MemStore::new());
    let src = Layout::new("", "src").unwrap();
    manage::create_with_key(raw.as_ref(), &src, "src", MIB, 256 * 1024, Some(&key)).await.unwrap();
    manage::fork(raw.clone(), Some(key.clone()), &src, None, "f", GRACE).await.unwrap();
    let cfg = WriterConfig::new(dir.path().join("c"), HOLDER.into());
    let err = manage::rotate_key(raw.clone(), &src, key.clone(), &new, &cfg).await.unwrap_err().to_string();
    assert!(err.contains("has forks (f)"), "{err}");
    let fork = Layout::new("", "f").unwrap();
    let err = manage::rotate_key(raw.clone(), &fork, key.clone(), &new, &cfg).await.unwrap_err().to_string();
    assert!(err.contains("is a fork of src"), "{err}");
    let plain = Layout::new("", "plain").unwrap();
    manage::create(raw.as_ref(), &plain, "plain", MIB, 256 * 1024).await.unwrap();
    let err = manage::rotate_key(raw.clone(), &plain, key, &new, &cfg).await.unwrap_err().to_string();
    assert!(err.contains("not encrypted"), "{err}");
}
