//! Volume administration: create, snapshots, rollback, export, inspect, resize.

use std::collections::BTreeMap;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;
use tracing::info;

use crate::crypt::{self, EncryptedStore, VolumeKey};
use crate::error::{Result, StoreError, VolumeError};
use crate::format::{
    self, CheckpointHeader, EncryptionInfo, HEADER_BYTES, KeyRef, Layout, Lease, Manifest, ParentRef, SECTOR, Snapshot,
};
use crate::lease::{self, LeaseHandle, now_unix};
use crate::replay::{self, Listing};
use crate::store::{KeyState, ObjectStore, PutCondition};
use crate::table;
use crate::volume::{Volume, WriterConfig};

/// Default target of data bytes per log object.
pub const DEFAULT_OBJECT_BYTES: u64 = 4 << 20;

pub async fn read_manifest(store: &dyn ObjectStore, layout: &Layout) -> Result<Manifest> {
    Ok(read_manifest_etag(store, layout).await?.0)
}

async fn read_manifest_etag(store: &dyn ObjectStore, layout: &Layout) -> Result<(Manifest, String)> {
    let key = layout.manifest();
    let f = match store.get(&key).await {
        Ok(f) => f,
        Err(StoreError::NotFound(_)) => {
            return Err(VolumeError::NoSuchVolume(layout.root().to_string()));
        }
        Err(e) => return Err(e.into()),
    };
    let m: Manifest = serde_json::from_slice(&f.data)
        .map_err(|e| VolumeError::Corrupt { what: key.clone(), detail: e.to_string() })?;
    if m.format != format::FORMAT_VERSION || m.sector_size != SECTOR {
        return Err(VolumeError::Corrupt {
            what: key,
            detail: format!("format {} with {}-byte sectors is not supported", m.format, m.sector_size),
        });
    }
    Ok((m, f.etag))
}

/// The store through which the volume at `layout` is read and written: the bucket itself, or
/// for an encrypted volume a sealing layer over it, once `key` is checked against the
/// manifest (and, for a fork, against every ancestor's, whose objects it reads). A missing,
/// wrong or superfluous key is refused here, before anything is read.
pub async fn volume_store(
    store: Arc<dyn ObjectStore>,
    layout: &Layout,
    key: Option<Arc<VolumeKey>>,
) -> Result<Arc<dyn ObjectStore>> {
    volume_store_rotating(store, layout, key, None).await
}

/// [`volume_store`] for a volume whose key may be rotating: `old` is the key the rotation
/// retires, needed (and checked) while one is in progress, ignored once it is complete.
pub async fn volume_store_rotating(
    store: Arc<dyn ObjectStore>,
    layout: &Layout,
    key: Option<Arc<VolumeKey>>,
    old: Option<Arc<VolumeKey>>,
) -> Result<Arc<dyn ObjectStore>> {
    let m = read_manifest(store.as_ref(), layout).await?;
    let key = match (&m.encryption, key) {
        (None, None) => return Ok(store),
        (None, Some(_)) => return Err(VolumeError::NotEncrypted(m.name)),
        (Some(_), None) => return Err(VolumeError::KeyRequired(m.name)),
        (Some(_), Some(key)) => key,
    };
    check_key(&m, &key)?;
    let mut sealed = EncryptedStore::new(store.clone(), key.clone(), layout, &m.volume_id);
    if let Some(old) = retiring_key(&m, old)? {
        sealed = sealed.with_retiring_key(old);
    }
    let (mut cur, mut parent) = (layout.clone(), m.parent);
    for _ in 0..MAX_FORK_DEPTH {
        let Some(p) = parent else { break };
        cur = cur.sibling(&p.name)?;
        let pm = read_manifest(store.as_ref(), &cur).await?;
        check_key(&pm, &key)?;
        sealed = sealed.with_ancestor(&cur, &pm.volume_id);
        parent = pm.parent;
    }
    Ok(Arc::new(sealed))
}

/// Refuses `key` unless it is the key volume `m` is encrypted with; a key it retired is named
/// as such.
fn check_key(m: &Manifest, key: &VolumeKey) -> Result<()> {
    let Some(info) = &m.encryption else { return Err(VolumeError::NotEncrypted(m.name.clone())) };
    if info.cipher != crypt::CIPHER {
        return Err(VolumeError::Crypto(format!(
            "volume {} uses cipher {:?}, which this build does not know",
            m.name, info.cipher
        )));
    }
    if key.verify(&m.volume_id, &info.key_check) {
        return Ok(());
    }
    let retired = info.rotating_from.iter().chain(info.retired.iter().rev());
    match retired.into_iter().find(|r| key.verify(&m.volume_id, &r.key_check)) {
        Some(r) => {
            Err(VolumeError::RetiredKey { name: m.name.clone(), generation: r.generation, current: info.generation })
        }
        None => Err(VolumeError::WrongKey(m.name.clone())),
    }
}

/// The key a rotation in progress retires (required then), checked; None when there is no
/// rotation (an old key that was retired is then simply not needed).
fn retiring_key(m: &Manifest, old: Option<Arc<VolumeKey>>) -> Result<Option<Arc<VolumeKey>>> {
    let Some(info) = &m.encryption else { return Ok(None) };
    let Some(from) = &info.rotating_from else {
        if let Some(old) = &old
            && !info.retired.iter().any(|r| old.verify(&m.volume_id, &r.key_check))
        {
            return Err(VolumeError::Invalid(format!(
                "the key given with --old-key-file is not one volume {} retired; drop --old-key-file",
                m.name
            )));
        }
        return Ok(None);
    };
    let (name, generation) = (m.name.clone(), from.generation);
    let old = old.ok_or_else(|| VolumeError::OldKeyRequired { name: name.clone(), generation })?;
    if !old.verify(&m.volume_id, &from.key_check) {
        return Err(VolumeError::WrongOldKey { name, generation });
    }
    Ok(Some(old))
}

// ---- delete -------------------------------------------------------------------------------

/// What `delete` removed.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Deleted {
    pub objects: u64,
    pub bytes: u64,
}

/// Deletes the volume at `layout` and every object it owns. Refused while a writer holds its
/// lease (it is taken for the deletion, so none starts meanwhile) or while forks read its
/// objects. A fork's record in its parent is removed, so the parent's GC frees what only the
/// fork needed. The manifest goes last: a deletion cut short leaves a volume `delete` finishes
/// when run again, never a name `create` could reuse over old log objects.
pub async fn delete(store: Arc<dyn ObjectStore>, layout: &Layout, cfg: &WriterConfig) -> Result<Deleted> {
    let m = read_manifest(store.as_ref(), layout).await?;
    let forks: Vec<String> = store
        .list(&layout.fork_prefix())
        .await?
        .iter()
        .filter_map(|o| o.key.strip_prefix(&layout.fork_prefix())?.strip_suffix(".json").map(str::to_string))
        .collect();
    if !forks.is_empty() {
        return Err(VolumeError::Invalid(format!(
            "volume {} has forks ({}) that read its objects: delete them first",
            m.name,
            forks.join(", ")
        )));
    }
    let lease = LeaseHandle::acquire(store.clone(), layout, &cfg.holder, cfg.lease_ttl, cfg.force_takeover, 0).await?;
    let (manifest_key, lease_key) = (layout.manifest(), layout.lease());
    let mut deleted = Deleted::default();
    for o in store.list(layout.root()).await? {
        if o.key != manifest_key && o.key != lease_key {
            store.delete(&o.key).await?;
            deleted.objects += 1;
            deleted.bytes += o.size;
        }
    }
    drop(lease);
    store.delete(&lease_key).await?;
    if let Some(p) = &m.parent {
        store.delete(&layout.sibling(&p.name)?.fork(&m.name)).await?;
    }
    store.delete(&manifest_key).await?;
    info!(volume = m.name, objects = deleted.objects, bytes = deleted.bytes, "volume deleted");
    Ok(deleted)
}

// ---- key rotation -------------------------------------------------------------------------

/// Retired keys a manifest remembers (to name them when given by mistake).
const RETIRED_KEYS_KEPT: usize = 8;

/// Starts rotating the key of the encrypted volume at `layout` from `old` (its current key) to
/// `new`: from now on everything is sealed under `new`, and GC seals every object written
/// before again under it ([`finish_rotation`] then drops `old`). Takes the writer lease for
/// the switch, so no writer holding only the old key is running. Refused for forks and for
/// volumes with forks: they share the key and read each other's objects.
pub async fn rotate_key(
    bucket: Arc<dyn ObjectStore>,
    layout: &Layout,
    old: Arc<VolumeKey>,
    new: &VolumeKey,
    cfg: &WriterConfig,
) -> Result<Manifest> {
    let m = read_manifest(bucket.as_ref(), layout).await?;
    let Some(info) = &m.encryption else {
        return Err(VolumeError::Invalid(format!("volume {} is not encrypted: there is no key to rotate", m.name)));
    };
    if let Some(from) = &info.rotating_from {
        return Err(VolumeError::Invalid(format!(
            "volume {} is still rotating away from key generation {}: run `meridian volume gc {}` (with both keys) \
             until `inspect` says the old key is no longer needed, then rotate again",
            m.name, from.generation, m.name
        )));
    }
    check_key(&m, &old)?;
    if new.verify(&m.volume_id, &info.key_check) || info.retired.iter().any(|r| new.verify(&m.volume_id, &r.key_check))
    {
        return Err(VolumeError::Invalid(format!(
            "the new key is volume {}'s current key or one it retired: make a fresh one (openssl rand -hex 32)",
            m.name
        )));
    }
    let store = volume_store(bucket.clone(), layout, Some(old)).await?;
    refuse_rotation_of_fork_family(store.as_ref(), layout, &m).await?;
    let lease = LeaseHandle::acquire(store, layout, &cfg.holder, cfg.lease_ttl, cfg.force_takeover, 0).await?;
    let res = async {
        let (mut m, etag) = read_manifest_etag(bucket.as_ref(), layout).await?;
        let info =
            m.encryption.as_mut().ok_or_else(|| VolumeError::Invalid("the volume lost its encryption".into()))?;
        info.rotating_from = Some(KeyRef { generation: info.generation, key_check: info.key_check.clone() });
        info.generation += 1;
        info.key_check = new.check(&m.volume_id)?;
        let generation = info.generation;
        bucket.put(&layout.manifest(), json(&m)?, PutCondition::IfMatch(etag)).await?;
        info!(volume = m.name, generation, "key rotation started");
        Ok::<_, VolumeError>(m)
    }
    .await;
    lease.release().await?;
    res
}

/// Forks read their source's objects sealed under the key they share: rotating either side
/// would lock the other out of them.
async fn refuse_rotation_of_fork_family(store: &dyn ObjectStore, layout: &Layout, m: &Manifest) -> Result<()> {
    if let Some(p) = &m.parent {
        return Err(VolumeError::Invalid(format!(
            "volume {} is a fork of {} and reads its objects under the key they share, so its key cannot be rotated; \
             export it and copy it into a new volume created with the new key",
            m.name, p.name
        )));
    }
    let forks = list_forks(store, layout).await?;
    if !forks.is_empty() {
        let names: Vec<&str> = forks.iter().map(|f| f.label.as_str()).collect();
        return Err(VolumeError::Invalid(format!(
            "volume {} has forks ({}) that read its objects under the key they share, so its key cannot be rotated \
             while they exist; export and re-create instead",
            m.name,
            names.join(", ")
        )));
    }
    Ok(())
}

/// Ends a rotation once GC has sealed every object again under the current key: the old key
/// is no longer needed (the manifest keeps its check, to refuse it by name). Returns whether a
/// rotation was ended.
pub async fn finish_rotation(store: &dyn ObjectStore, layout: &Layout) -> Result<bool> {
    let (mut m, etag) = read_manifest_etag(store, layout).await?;
    let Some(info) = m.encryption.as_mut() else { return Ok(false) };
    let Some(from) = info.rotating_from.take() else { return Ok(false) };
    info.retired.push(from);
    let excess = info.retired.len().saturating_sub(RETIRED_KEYS_KEPT);
    info.retired.drain(..excess);
    let generation = info.generation;
    store.put(&layout.manifest(), json(&m)?, PutCondition::IfMatch(etag)).await?;
    info!(volume = m.name, generation, "key rotation complete: the old key is no longer needed");
    Ok(true)
}

/// Whether a rotation is in progress, per the manifest in the bucket now.
pub async fn rotation_in_progress(store: &dyn ObjectStore, layout: &Layout) -> Result<bool> {
    let m = read_manifest(store, layout).await?;
    Ok(m.encryption.is_some_and(|e| e.rotating_from.is_some()))
}

/// Objects of the volume (not its ancestors) still sealed under the key a rotation retires.
pub async fn objects_under_old_key(store: &dyn ObjectStore, layout: &Layout) -> Result<u64> {
    let mut n = 0;
    for o in store.list(layout.root()).await? {
        if store.key_state(&o.key).await? == KeyState::Retiring {
            n += 1;
        }
    }
    Ok(n)
}

/// Ancestors a fork may have: bounds the walk over parents (and a cycle someone edited in).
const MAX_FORK_DEPTH: usize = 64;

/// `layout` with its fork ancestry, read from the manifests: a fork's log objects up to its
/// fork point are read from its parent (and so on up). Other volumes come back unchanged.
pub async fn resolve_layout(store: &dyn ObjectStore, layout: &Layout) -> Result<Layout> {
    let mut chain = Vec::new();
    let mut cur = layout.clone();
    loop {
        let m = read_manifest(store, &cur).await?;
        let Some(parent) = m.parent else { break };
        if chain.len() >= MAX_FORK_DEPTH {
            return Err(VolumeError::Invalid(format!("{} has more than {MAX_FORK_DEPTH} ancestors", layout.root())));
        }
        let parent_layout = cur.sibling(&parent.name)?;
        let pm = read_manifest(store, &parent_layout).await?;
        if pm.volume_id != parent.volume_id {
            return Err(VolumeError::Corrupt {
                what: cur.manifest(),
                detail: format!("its parent {} was deleted and re-created; the fork's history is gone", parent.name),
            });
        }
        chain.push((cur, parent.seq));
        cur = parent_layout;
    }
    // Rebuild from the oldest ancestor down, each child pointing at its resolved parent.
    let mut resolved = cur;
    while let Some((child, point)) = chain.pop() {
        resolved = child.with_ancestors(point, &resolved);
    }
    Ok(resolved)
}

/// Creates volume `new` as a fork of `source` at snapshot `at` (or its current durable end):
/// no data is copied. The fork reads the source's log objects up to that point and writes its
/// own after it; a record in the source (`forks/NEW.json`) makes the source's GC keep what the
/// fork point reads. `bucket` is the bucket itself; a fork of an encrypted volume needs its
/// `key` and is encrypted with the same key.
pub async fn fork(
    bucket: Arc<dyn ObjectStore>,
    key: Option<Arc<VolumeKey>>,
    source: &Layout,
    at: Option<&str>,
    new_name: &str,
    grace: Duration,
) -> Result<Manifest> {
    let plain = read_manifest(bucket.as_ref(), source).await?;
    if let Some(from) = plain.encryption.as_ref().and_then(|e| e.rotating_from.as_ref()) {
        return Err(VolumeError::Invalid(format!(
            "volume {} is rotating away from key generation {}: finish the rotation (`meridian volume gc` with both \
             keys) before forking it",
            plain.name, from.generation
        )));
    }
    let store = volume_store(bucket.clone(), source, key.clone()).await?;
    let store = store.as_ref();
    let source = resolve_layout(store, source).await?;
    let sm = read_manifest(store, &source).await?;
    let volume_id = format!("{:032x}", rand::random::<u128>());
    let encryption = match (&sm.encryption, &key) {
        (Some(info), Some(key)) => Some(EncryptionInfo::new(&info.cipher, key.check(&volume_id)?)),
        _ => None,
    };
    let new = source.sibling(new_name)?;
    let t0 = Instant::now();
    let (seq, size) = match at {
        Some(label) => {
            let snap = find_snapshot(store, &source, label).await?;
            (snap.seq, snap.size.unwrap_or(sm.size))
        }
        None => (committed_end(store, &source, &Listing::fetch(store, &source).await?).await?, sm.size),
    };
    let point = Snapshot { label: new_name.to_string(), seq, created_unix: now_unix(), size: Some(size) };
    record_point(store, &source.fork(new_name), &point, t0, grace).await?;
    let manifest = Manifest {
        format: format::FORMAT_VERSION,
        name: new_name.to_string(),
        volume_id,
        size,
        sector_size: SECTOR,
        object_bytes: sm.object_bytes,
        created_unix: now_unix(),
        encryption,
        parent: Some(ParentRef { name: sm.name.clone(), volume_id: sm.volume_id.clone(), seq }),
    };
    match bucket.put(&new.manifest(), json(&manifest)?, PutCondition::IfAbsent).await {
        Ok(_) => {}
        Err(e) => {
            store.delete(&source.fork(new_name)).await?;
            return Err(match e {
                StoreError::PreconditionFailed(_) => VolumeError::AlreadyExists(new_name.to_string()),
                e => e.into(),
            });
        }
    }
    info!(source = sm.name, new = new_name, seq, "forked");
    Ok(manifest)
}

fn json<T: Serialize>(v: &T) -> Result<Bytes> {
    serde_json::to_vec_pretty(v).map(Bytes::from).map_err(|e| VolumeError::Invalid(e.to_string()))
}

/// Records a new volume (create-only, so an existing volume is never clobbered).
pub async fn create(
    store: &dyn ObjectStore,
    layout: &Layout,
    name: &str,
    size: u64,
    object_bytes: u64,
) -> Result<Manifest> {
    create_with_key(store, layout, name, size, object_bytes, None).await
}

/// [`create`], encrypted with `key` when given (the manifest records the cipher and a check
/// of the key, never the key).
pub async fn create_with_key(
    store: &dyn ObjectStore,
    layout: &Layout,
    name: &str,
    size: u64,
    object_bytes: u64,
    key: Option<&VolumeKey>,
) -> Result<Manifest> {
    format::check_size(size)?;
    if !(64 * 1024..=(1 << 30)).contains(&object_bytes) || !object_bytes.is_multiple_of(SECTOR) {
        return Err(VolumeError::BadSize(format!(
            "object size {object_bytes}: use a multiple of 4 KiB between 64 KiB and 1 GiB"
        )));
    }
    let volume_id = format!("{:032x}", rand::random::<u128>());
    let encryption = match key {
        Some(key) => Some(EncryptionInfo::new(crypt::CIPHER, key.check(&volume_id)?)),
        None => None,
    };
    let manifest = Manifest {
        format: format::FORMAT_VERSION,
        name: name.to_string(),
        volume_id,
        size,
        sector_size: SECTOR,
        object_bytes,
        created_unix: now_unix(),
        encryption,
        parent: None,
    };
    match store.put(&layout.manifest(), json(&manifest)?, PutCondition::IfAbsent).await {
        Ok(_) => Ok(manifest),
        Err(StoreError::PreconditionFailed(_)) => Err(VolumeError::AlreadyExists(name.into())),
        Err(e) => Err(e.into()),
    }
}

/// Encodes a table file (a copy of the live map) as a checkpoint file next to it.
pub fn encode_checkpoint_file(
    table_copy: &Path,
    sectors: u64,
    seq: u64,
    epoch: u64,
) -> Result<tempfile::NamedTempFile> {
    let dir = table_copy.parent().unwrap_or(Path::new("."));
    let mut out = tempfile::Builder::new().prefix("ckpt-").tempfile_in(dir)?;
    let mut runs = 0u64;
    {
        let mut w = BufWriter::new(out.as_file_mut());
        let placeholder = CheckpointHeader { seq, epoch, sectors, runs: 0 };
        w.write_all(&format::encode_checkpoint_header(&placeholder))?;
        let mut buf = Vec::with_capacity(format::RUN_BYTES);
        table::for_each_run_in_file(std::fs::File::open(table_copy)?, sectors, |r| {
            buf.clear();
            format::encode_run(&r, &mut buf);
            w.write_all(&buf)?;
            runs += 1;
            Ok(())
        })?;
        w.flush()?;
    }
    let f = out.as_file_mut();
    f.seek(SeekFrom::Start(0))?;
    f.write_all(&format::encode_checkpoint_header(&CheckpointHeader { seq, epoch, sectors, runs }))?;
    f.sync_all()?;
    Ok(out)
}

// ---- snapshots ----------------------------------------------------------------------------

/// The last log position with no gap before it (from the newest checkpoint on) that does not
/// cut a commit unit in two: if the last object's unit is incomplete, the position before the
/// unit (recovery would stop there too).
pub async fn committed_end(store: &dyn ObjectStore, layout: &Layout, listing: &Listing) -> Result<u64> {
    let base = listing.base_checkpoint(u64::MAX).unwrap_or(layout.fork_point());
    let mut end = base;
    while listing.logs.contains_key(&(end + 1)) {
        end += 1;
    }
    if end == base {
        return Ok(end);
    }
    let (first, last) = replay::fetch_header(store, layout, end).await?.trailer.unit.span(end);
    Ok(if last > end { first.saturating_sub(1).max(base) } else { end })
}

/// Records the current durable end of the log as a snapshot. With a writer running this is a
/// crash-consistent point: everything its last FLUSH covered, maybe more.
///
/// GC deletes an object only after a grace period during which a new snapshot would have become
/// visible to it; if listing and recording took longer than half of that, we undo and fail.
pub async fn snapshot(
    store: &dyn ObjectStore,
    layout: &Layout,
    label: Option<&str>,
    grace: Duration,
) -> Result<Snapshot> {
    let manifest = read_manifest(store, layout).await?;
    let layout = &resolve_layout(store, layout).await?;
    let t0 = Instant::now();
    let end = committed_end(store, layout, &Listing::fetch(store, layout).await?).await?;
    let label = match label {
        Some(l) => l.to_string(),
        None => format!("snap-{}-{end:x}", now_unix()),
    };
    format::validate_name(&label)?;
    let snap = Snapshot { label: label.clone(), seq: end, created_unix: now_unix(), size: Some(manifest.size) };
    record_point(store, &layout.snapshot(&label), &snap, t0, grace).await.map_err(|e| match e {
        VolumeError::AlreadyExists(_) => VolumeError::SnapshotExists(label.clone()),
        e => e,
    })?;
    info!(label, seq = end, "snapshot recorded");
    Ok(snap)
}

/// Writes a position GC must keep (a snapshot or a fork record) at `key`, create-only. GC
/// deletes an object only after a grace period during which a new record would have become
/// visible to it; if everything since `t0` took longer than half of that, undo and fail.
async fn record_point(
    store: &dyn ObjectStore,
    key: &str,
    point: &Snapshot,
    t0: Instant,
    grace: Duration,
) -> Result<()> {
    match store.put(key, json(point)?, PutCondition::IfAbsent).await {
        Ok(_) => {}
        Err(StoreError::PreconditionFailed(_)) => return Err(VolumeError::AlreadyExists(point.label.clone())),
        Err(e) => return Err(e.into()),
    }
    if t0.elapsed() > grace / 2 {
        store.delete(key).await?;
        return Err(VolumeError::Invalid(
            "the bucket was too slow to record a snapshot or fork safely alongside GC; retry".into(),
        ));
    }
    Ok(())
}

pub async fn list_snapshots(store: &dyn ObjectStore, layout: &Layout) -> Result<Vec<Snapshot>> {
    list_points(store, &layout.snapshot_prefix()).await
}

/// The forks taken of this volume (their labels are the forks' names).
pub async fn list_forks(store: &dyn ObjectStore, layout: &Layout) -> Result<Vec<Snapshot>> {
    list_points(store, &layout.fork_prefix()).await
}

async fn list_points(store: &dyn ObjectStore, prefix: &str) -> Result<Vec<Snapshot>> {
    let mut out = Vec::new();
    for o in store.list(prefix).await? {
        if !o.key.ends_with(".json") {
            continue;
        }
        let f = match store.get(&o.key).await {
            Ok(f) => f,
            Err(StoreError::NotFound(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        let s: Snapshot = serde_json::from_slice(&f.data)
            .map_err(|e| VolumeError::Corrupt { what: o.key.clone(), detail: e.to_string() })?;
        out.push(s);
    }
    out.sort_by(|a, b| (a.seq, a.created_unix, &a.label).cmp(&(b.seq, b.created_unix, &b.label)));
    Ok(out)
}

pub async fn find_snapshot(store: &dyn ObjectStore, layout: &Layout, label: &str) -> Result<Snapshot> {
    format::validate_name(label).map_err(|_| VolumeError::UnknownSnapshot(label.into()))?;
    match store.get(&layout.snapshot(label)).await {
        Ok(f) => serde_json::from_slice(&f.data)
            .map_err(|e| VolumeError::Corrupt { what: layout.snapshot(label), detail: e.to_string() }),
        Err(StoreError::NotFound(_)) => Err(VolumeError::UnknownSnapshot(label.into())),
        Err(e) => Err(e.into()),
    }
}

pub async fn delete_snapshot(store: &dyn ObjectStore, layout: &Layout, label: &str) -> Result<()> {
    find_snapshot(store, layout, label).await?;
    store.delete(&layout.snapshot(label)).await?;
    Ok(())
}

/// Rebuilds the map at `limit` into a temporary table.
async fn replay_temp(
    store: &dyn ObjectStore,
    layout: &Layout,
    manifest: &Manifest,
    limit: u64,
) -> Result<(tempfile::TempDir, replay::Replayed)> {
    let dir = tempfile::Builder::new().prefix("meridian-volume-").tempdir()?;
    let layout = resolve_layout(store, layout).await?;
    let r = replay::replay(store, &layout, manifest, &dir.path().join("map"), 1024, limit).await?;
    Ok((dir, r))
}

/// Makes the disk what it was at `label`, without destroying anything: every sector whose
/// content differs from the snapshot's is written again, through the log, with the snapshot's
/// bytes (zeros where the snapshot had nothing). Later snapshots stay valid, a rollback can
/// itself be rolled back, and the log stays a plain sequence of writes that any reader of the
/// seed format replays to the rolled-back disk. Returns the log position after it.
pub async fn rollback(store: Arc<dyn ObjectStore>, layout: &Layout, label: &str, cfg: WriterConfig) -> Result<u64> {
    let manifest = read_manifest(store.as_ref(), layout).await?;
    let snap = find_snapshot(store.as_ref(), layout, label).await?;
    let vol = Volume::open(store.clone(), layout.clone(), cfg).await?;
    let res = async {
        // Past the snapshot's own size the disk had nothing then: replaying there could only
        // find data from before an earlier shrink.
        let at_size = Manifest { size: manifest.size.min(snap.size.unwrap_or(manifest.size)), ..manifest.clone() };
        let (_dir, mut at) = replay_temp(store.as_ref(), layout, &at_size, snap.seq).await?;
        let bytes = vol.revert_to(&mut at.table).await?;
        vol.flush().await?;
        info!(label = snap.label, snapshot_seq = snap.seq, rewritten = bytes, "rolled back");
        Ok::<_, VolumeError>(vol.durable())
    }
    .await;
    vol.close().await?;
    res
}

// ---- export -------------------------------------------------------------------------------

/// Totals of an export.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ExportStats {
    pub seq: u64,
    pub size: u64,
    pub mapped_bytes: u64,
    pub requests: u64,
}

/// Writes the disk as of `at` (a snapshot label; None = the end of the log) to a raw image.
/// Works offline, with only read access to the bucket: this is the disaster-recovery path.
pub async fn export(store: &dyn ObjectStore, layout: &Layout, at: Option<&str>, output: &Path) -> Result<ExportStats> {
    let layout = &resolve_layout(store, layout).await?;
    let manifest = read_manifest(store, layout).await?;
    let limit = match at {
        Some(label) => find_snapshot(store, layout, label).await?.seq,
        None => u64::MAX,
    };
    let (_dir, mut r) = replay_temp(store, layout, &manifest, limit).await?;
    let out = std::fs::File::create(output)?;
    out.set_len(manifest.size)?;
    // Group the map's runs by object so each object is fetched with few range requests.
    let mut runs = Vec::new();
    r.table.for_each_run(|run| {
        runs.push(run);
        Ok(())
    })?;
    runs.sort_by_key(|r| (r.seq, r.obj_sector));
    let groups = group_runs(&runs);
    let mut stats = ExportStats { seq: r.end, size: manifest.size, ..Default::default() };
    let mut fetches = futures::stream::iter(groups.iter().map(|g| async move {
        let (seq, first, last) = (g[0].seq, g[0].obj_sector, g[g.len() - 1]);
        let end = u64::from(last.obj_sector) + u64::from(last.len);
        let data = store
            .get_range(
                &layout.log(seq),
                HEADER_BYTES as u64 + u64::from(first) * SECTOR,
                (end - u64::from(first)) * SECTOR,
            )
            .await?;
        Ok::<_, VolumeError>((g, data))
    }))
    .buffer_unordered(8);
    while let Some(res) = fetches.next().await {
        let (g, data) = res?;
        let base = u64::from(g[0].obj_sector);
        for run in g.iter() {
            let from = ((u64::from(run.obj_sector) - base) * SECTOR) as usize;
            let len = (u64::from(run.len) * SECTOR) as usize;
            out.write_all_at(&data[from..from + len], run.sector * SECTOR)?;
            stats.mapped_bytes += len as u64;
        }
        stats.requests += 1;
    }
    out.sync_all()?;
    info!(seq = stats.seq, mapped = stats.mapped_bytes, "export complete");
    Ok(stats)
}

/// Splits runs (sorted by object and offset) into fetch groups: same object, gaps of at most
/// 256 KiB (cheaper to read through than to ask again), at most 16 MiB per request.
fn group_runs(runs: &[format::Run]) -> Vec<&[format::Run]> {
    const MAX_GAP: u64 = 64;
    const MAX_SPAN: u64 = 4096;
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=runs.len() {
        let split = i == runs.len() || {
            let (a, b, first) = (runs[i - 1], runs[i], runs[start]);
            let a_end = u64::from(a.obj_sector) + u64::from(a.len);
            b.seq != a.seq
                || u64::from(b.obj_sector) > a_end + MAX_GAP
                || u64::from(b.obj_sector) + u64::from(b.len) - u64::from(first.obj_sector) > MAX_SPAN
        };
        if split {
            out.push(&runs[start..i]);
            start = i;
        }
    }
    out
}

// ---- inspect ------------------------------------------------------------------------------

/// What `inspect` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    pub manifest: Manifest,
    pub lease: Option<Lease>,
    pub lease_live: bool,
    pub log_objects: u64,
    pub log_bytes: u64,
    pub checkpoints: u64,
    pub checkpoint_bytes: u64,
    pub end: u64,
    pub base_checkpoint: u64,
    pub live_bytes: u64,
    pub garbage_bytes: u64,
    pub snapshots: Vec<Snapshot>,
    /// For an encrypted volume: its key generation and how far a rotation is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keys: Option<KeyStatus>,
}

/// Where an encrypted volume's keys stand.
#[derive(Debug, Clone, Serialize)]
pub struct KeyStatus {
    pub generation: u32,
    /// The generation a rotation in progress retires.
    pub rotating_from: Option<u32>,
    /// Objects still sealed under that key (0 when no rotation is in progress).
    pub objects_under_old_key: u64,
    /// Whether the previous key is still needed (`--old-key-file`).
    pub old_key_needed: bool,
    /// The newest retired generation, no longer needed.
    pub retired: Option<u32>,
}

async fn key_status(store: &dyn ObjectStore, layout: &Layout, m: &Manifest) -> Result<Option<KeyStatus>> {
    let Some(info) = &m.encryption else { return Ok(None) };
    let rotating_from = info.rotating_from.as_ref().map(|r| r.generation);
    let objects_under_old_key = if rotating_from.is_some() { objects_under_old_key(store, layout).await? } else { 0 };
    Ok(Some(KeyStatus {
        generation: info.generation,
        rotating_from,
        objects_under_old_key,
        old_key_needed: rotating_from.is_some(),
        retired: info.retired.last().map(|r| r.generation),
    }))
}

pub async fn inspect(store: &dyn ObjectStore, layout: &Layout) -> Result<Inspection> {
    let manifest = read_manifest(store, layout).await?;
    let lease = lease::read_lease(store, layout).await?;
    let lease_live = lease.as_ref().is_some_and(|l| !l.released && now_unix() < l.renewed_unix + l.ttl_secs);
    let snapshots = list_snapshots(store, layout).await?;
    let (_dir, mut r) = replay_temp(store, layout, &manifest, u64::MAX).await?;
    let live: u64 = replay::live_sectors(&mut r.table)?.values().sum::<u64>() * SECTOR;
    let keys = key_status(store, layout, &manifest).await?;
    let log_bytes: u64 = r.listing.logs.values().sum();
    let data_bytes: u64 = r.listing.logs.values().map(|b| b.saturating_sub(HEADER_BYTES as u64)).sum();
    Ok(Inspection {
        lease,
        lease_live,
        log_objects: r.listing.logs.len() as u64,
        log_bytes,
        checkpoints: r.listing.checkpoints.len() as u64,
        checkpoint_bytes: r.listing.checkpoints.values().sum(),
        end: r.end,
        base_checkpoint: r.base,
        live_bytes: live,
        garbage_bytes: data_bytes.saturating_sub(live),
        snapshots,
        keys,
        manifest,
    })
}

/// Live objects of a snapshot, for GC (which must not delete them). The map is rebuilt at the
/// larger of the snapshot's size and today's, so a shrink never exposes what a snapshot of the
/// larger disk still reads.
pub async fn objects_at(
    store: &dyn ObjectStore,
    layout: &Layout,
    manifest: &Manifest,
    snap: &Snapshot,
) -> Result<BTreeMap<u64, u64>> {
    let size = manifest.size.max(snap.size.unwrap_or(0));
    let (_dir, mut r) = replay_temp(store, layout, &Manifest { size, ..manifest.clone() }, snap.seq).await?;
    replay::live_sectors(&mut r.table)
}

// ---- resize -------------------------------------------------------------------------------

/// Changes the size. Shrinking needs `allow_shrink` and discards the tail through the log
/// first, so growing again later cannot resurrect old data.
pub async fn resize(
    store: Arc<dyn ObjectStore>,
    layout: &Layout,
    new_size: u64,
    cfg: WriterConfig,
    allow_shrink: bool,
) -> Result<Manifest> {
    format::check_size(new_size)?;
    let (old, _) = read_manifest_etag(store.as_ref(), layout).await?;
    if new_size < old.size && !allow_shrink {
        return Err(VolumeError::BadSize(format!(
            "{new_size} is smaller than the current {} bytes: shrinking discards data past the \
             new end; pass --allow-shrink if that is what you want",
            old.size
        )));
    }
    let vol = Volume::open(store.clone(), layout.clone(), cfg.clone()).await?;
    let res = async {
        if new_size < old.size {
            vol.trim(new_size, old.size - new_size).await?;
        }
        vol.flush().await?;
        // Re-read under the lease so a concurrent edit is not overwritten.
        let (mut m, etag) = read_manifest_etag(store.as_ref(), layout).await?;
        m.size = new_size;
        store.put(&layout.manifest(), json(&m)?, PutCondition::IfMatch(etag)).await?;
        info!(old = old.size, new = new_size, "resized");
        Ok::<_, VolumeError>(m)
    }
    .await;
    vol.close().await?;
    let m = res?;
    if new_size > old.size {
        zero_logged_tail(store, layout, old.size / SECTOR, cfg).await?;
    }
    Ok(m)
}

/// After growing past `from` sectors: log object still in the bucket may hold data past the
/// old end (written before an earlier shrink, whose zeros GC may since have removed). Meridian
/// never reads it (its map ends at the old size), but a reader of the raw log that applies
/// every object would; writing zeros as data over exactly those ranges makes the raw log say
/// what the disk holds.
async fn zero_logged_tail(store: Arc<dyn ObjectStore>, layout: &Layout, from: u64, cfg: WriterConfig) -> Result<()> {
    let vol = Volume::open(store.clone(), layout.clone(), cfg).await?;
    let res = async {
        let ranges = logged_ranges(store.as_ref(), layout, from, vol.size() / SECTOR).await?;
        let zeros = vec![0u8; 1 << 20];
        for (start, end) in &ranges {
            let mut at = start * SECTOR;
            while at < end * SECTOR {
                let n = (end * SECTOR - at).min(zeros.len() as u64);
                vol.write(at, &zeros[..n as usize]).await?;
                at += n;
            }
        }
        if !ranges.is_empty() {
            info!(ranges = ranges.len(), "zeroed data the log held past the old end");
        }
        Ok::<_, VolumeError>(())
    }
    .await;
    vol.close().await?;
    res
}

/// Merged sector ranges within [from, to) that some log object's entries write.
async fn logged_ranges(store: &dyn ObjectStore, layout: &Layout, from: u64, to: u64) -> Result<Vec<(u64, u64)>> {
    let listing = Listing::fetch(store, layout).await?;
    let mut ranges = Vec::new();
    let mut headers = futures::stream::iter(listing.logs.keys().map(|&seq| replay::fetch_header(store, layout, seq)))
        .buffer_unordered(16);
    while let Some(h) = headers.next().await {
        for e in h?.entries.iter().filter(|e| !e.zero) {
            let (a, b) = ((e.addr / SECTOR).max(from), ((e.addr + u64::from(e.len)) / SECTOR).min(to));
            if a < b {
                ranges.push((a, b));
            }
        }
    }
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (a, b) in ranges {
        match merged.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    Ok(merged)
}
