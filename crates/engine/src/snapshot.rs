//! Bucket snapshots and forks (docs/decisions/063-snapshots-and-forks.md), built on versions.
//!
//! A snapshot is a name for a metadata revision: `h/<bucket>/<name>`, whose create revision is
//! the revision it records. Reading at a snapshot picks, for each key, the version written last
//! at or before that revision. A version removed later (DeleteObject with a version id, the
//! lifecycle, a suspended overwrite of the `null` version) that some snapshot still shows moves
//! from `v/` to `z/` with its bytes; the `z/` key's create revision is the removal's, so a reader
//! at revision R sees it when it was written at or before R and removed after R.
//!
//! A fork is a new bucket whose record names the bucket and snapshot it started from. Its own
//! writes are versions of its own; a key it never wrote reads, and lists, as the source showed it
//! at the snapshot (the layers below). Nothing is copied, and the snapshot keeps the source's
//! bytes for as long as the fork exists.

use std::collections::VecDeque;
use std::ops::Bound;

use bytes::Bytes;
use meridian_meta::{Compare, KeyValue, Op, RangeRequest, Revision, Txn, prefix_end};
use serde::{Deserialize, Serialize};

use crate::error::{EngineError, EngineResult};
use crate::list::{Entry, ListPage, ListRequest, ListedObject, MAX_LIST_KEYS, common_prefix, finish};
use crate::object::Current;
use crate::record::{self, BucketRecord, DataLayout, VersionRecord, Versioning};
use crate::{Engine, keys, now_ms};

/// `h/<bucket>/<name>`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub created_ms: i64,
    /// Buckets forked from this snapshot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forks: Vec<String>,
    /// Made by a fork without a named snapshot: deleted with its last fork.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub implicit: bool,
}

/// `z/<bucket>/<key>\0<token>`: a removed version a snapshot still shows.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RetainedVersion {
    pub version: VersionRecord,
    /// The revision that wrote the version.
    pub created: Revision,
}

/// Where a fork started.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForkOrigin {
    pub bucket: String,
    pub snapshot: String,
    /// The snapshot's revision.
    pub revision: Revision,
}

/// A snapshot as the admin API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct SnapshotInfo {
    pub bucket: String,
    pub name: String,
    pub revision: Revision,
    pub created_ms: i64,
    pub forks: Vec<String>,
}

impl SnapshotInfo {
    fn new(bucket: &str, name: &str, kv: &KeyValue) -> EngineResult<Self> {
        let record: SnapshotRecord = record::decode(&kv.value)?;
        Ok(SnapshotInfo {
            bucket: bucket.to_string(),
            name: name.to_string(),
            revision: kv.create_revision,
            created_ms: record.created_ms,
            forks: record.forks,
        })
    }
}

/// The revisions of a bucket's snapshots: which removed versions must be kept.
#[derive(Default)]
pub(crate) struct Retention {
    revisions: Vec<Revision>,
}

impl Retention {
    /// Whether a snapshot shows a version written at `created` and removed at `removed`.
    fn shows(&self, created: Revision, removed: Revision) -> bool {
        self.revisions.iter().any(|r| created <= *r && *r < removed)
    }

    /// Whether a version written at `created`, being removed now, must be kept.
    pub(crate) fn keeps(&self, created: Revision) -> bool {
        self.shows(created, Revision::MAX)
    }
}

/// Moves a version being removed to `z/`: its blobs' owner keys point there, and its inline
/// bytes stay where they are.
pub(crate) fn retain(bucket: &str, key: &str, version: &VersionRecord, created: Revision, txn: &mut Txn) {
    let entry = keys::retained(bucket, key, &version.stamp.token);
    let retained = RetainedVersion { version: version.clone(), created };
    txn.ops.push(Op::put(entry.clone(), record::encode(&retained)));
    for blob in version.object.iter().flat_map(|o| o.data.blobs()) {
        txn.ops.push(Op::put(keys::blob_ref(blob), entry.clone()));
    }
}

const MAX_ATTEMPTS: usize = 64;
/// Forks of forks deeper than this are refused: every read of an inherited key walks the chain.
const MAX_FORK_DEPTH: usize = 8;
/// Entries read per range request while listing at a snapshot.
const PAGE: usize = 256;

fn validate_name(name: &str) -> EngineResult<()> {
    let valid = (1..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if valid {
        Ok(())
    } else {
        Err(EngineError::InvalidArgument(format!(
            "invalid snapshot name {name:?}: 1 to 63 of a-z, 0-9, '-', '_', '.', starting with a letter or digit"
        )))
    }
}

/// A snapshot's default name: the time it was taken, to the millisecond.
fn default_name() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}{:02}{:02}t{:02}{:02}{:02}.{:03}z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        now.millisecond()
    )
}

/// One layer of what a bucket shows: a bucket's own versions as of a revision.
#[derive(Clone, Debug)]
pub(crate) struct Layer {
    bucket: String,
    at: Revision,
}

/// What a layer shows of one key.
enum Seen {
    Object { version: Box<VersionRecord>, created: Revision },
    Marker { version_id: String },
}

impl Seen {
    /// The newer of two candidates (by the revision that wrote them).
    fn pick(
        best: Option<(Revision, VersionRecord)>,
        created: Revision,
        version: VersionRecord,
    ) -> Option<(Revision, VersionRecord)> {
        match best {
            Some((at, _)) if at >= created => best,
            _ => Some((created, version)),
        }
    }

    fn from_best(best: Option<(Revision, VersionRecord)>) -> Option<Seen> {
        let (created, version) = best?;
        Some(match version.object {
            Some(_) => Seen::Object { version: Box::new(version), created },
            None => Seen::Marker { version_id: version.stamp.id().to_string() },
        })
    }
}

/// A forward-only reader of one key range, a page at a time.
struct RangeCursor {
    next: Bound<Bytes>,
    end: Bound<Bytes>,
    buffered: VecDeque<KeyValue>,
    exhausted: bool,
    /// Counts the pages read, so a reader can tell which of two cursors read last.
    pages: u64,
}

impl RangeCursor {
    fn new(prefix: String) -> Self {
        let range = RangeRequest::prefix(prefix);
        RangeCursor { next: range.start, end: range.end, buffered: VecDeque::new(), exhausted: false, pages: 0 }
    }

    async fn peek(&mut self, engine: &Engine) -> EngineResult<Option<&KeyValue>> {
        if self.buffered.is_empty() && !self.exhausted {
            let range = RangeRequest { start: self.next.clone(), end: self.end.clone(), limit: PAGE };
            let resp = engine.meta().range(range).await?;
            self.exhausted = !resp.more;
            self.pages += 1;
            if let Some(last) = resp.kvs.last() {
                self.next = Bound::Excluded(last.key.clone());
            }
            self.buffered.extend(resp.kvs);
        }
        Ok(self.buffered.front())
    }

    /// Moves forward to `from` (a key at or after everything consumed so far).
    fn seek(&mut self, from: Bytes) {
        while self.buffered.front().is_some_and(|kv| kv.key < from) {
            self.buffered.pop_front();
        }
        if self.buffered.is_empty() && !self.exhausted {
            self.next = Bound::Included(from);
        }
    }

    /// Forgets what is buffered and reads again from `from`.
    fn reread_from(&mut self, from: Bytes) {
        self.buffered.clear();
        self.exhausted = false;
        self.next = Bound::Included(from);
    }
}

/// Reads one layer key by key: its `v/` versions and its `z/` retained versions.
struct LayerCursor {
    layer: Layer,
    versions: RangeCursor,
    retained: RangeCursor,
    /// The `versions` page count when `retained` last read: `retained` must read after
    /// `versions` for each key, so a version moving from `v/` to `z/` meanwhile is seen.
    retained_after: u64,
}

impl LayerCursor {
    fn new(layer: &Layer, prefix: &str) -> Self {
        LayerCursor {
            versions: RangeCursor::new(format!("{}{prefix}", keys::versions_prefix(&layer.bucket))),
            retained: RangeCursor::new(format!("{}{prefix}", keys::retained_prefix(&layer.bucket))),
            layer: layer.clone(),
            retained_after: 0,
        }
    }

    /// The next key this layer has any entry for.
    async fn peek_key(&mut self, engine: &Engine) -> EngineResult<Option<String>> {
        let from_versions = self
            .versions
            .peek(engine)
            .await?
            .and_then(|kv| keys::parse_version_key(&kv.key).map(|(_, key, _)| key.to_string()));
        let from_retained = self
            .retained
            .peek(engine)
            .await?
            .and_then(|kv| keys::parse_retained_key(&kv.key).map(|(_, key, _)| key.to_string()));
        Ok(match (from_versions, from_retained) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    /// Consumes every entry of `key` and returns what the layer shows of it.
    async fn take_key(&mut self, engine: &Engine, key: &str) -> EngineResult<Option<Seen>> {
        let mut best = None;
        while let Some(kv) = self.versions.peek(engine).await? {
            let Some((_, k, token)) = keys::parse_version_key(&kv.key) else { break };
            if k != key {
                break;
            }
            if token.is_some() && kv.create_revision <= self.layer.at {
                best = Seen::pick(best, kv.create_revision, record::decode(&kv.value)?);
            }
            self.versions.buffered.pop_front();
        }
        if self.retained.pages > 0 && self.retained_after < self.versions.pages {
            self.retained.reread_from(Bytes::from(keys::retained_of(&self.layer.bucket, key)));
        }
        self.retained_after = self.versions.pages;
        while let Some(kv) = self.retained.peek(engine).await? {
            let Some((_, k, _)) = keys::parse_retained_key(&kv.key) else { break };
            if k > key {
                break;
            }
            if k == key {
                let retained: RetainedVersion = record::decode(&kv.value)?;
                if retained.created <= self.layer.at && self.layer.at < kv.create_revision {
                    best = Seen::pick(best, retained.created, retained.version);
                }
            }
            self.retained.buffered.pop_front();
        }
        Ok(Seen::from_best(best))
    }

    /// Moves past every key below `from` (object key bytes).
    fn seek(&mut self, from: &[u8]) {
        let at = |root: String| {
            let mut key = root.into_bytes();
            key.extend_from_slice(from);
            Bytes::from(key)
        };
        self.versions.seek(at(keys::versions_prefix(&self.layer.bucket)));
        self.retained.seek(at(keys::retained_prefix(&self.layer.bucket)));
    }
}

impl Engine {
    /// The snapshots a removal of one of `bucket`'s versions must respect.
    pub(crate) async fn retention(&self, bucket: &str, record: &BucketRecord) -> EngineResult<Retention> {
        if record.snapshots == 0 {
            return Ok(Retention::default());
        }
        let page = self.meta().range(RangeRequest::prefix(keys::snapshots_of(bucket))).await?;
        Ok(Retention { revisions: page.kvs.iter().map(|kv| kv.create_revision).collect() })
    }

    /// Records `bucket` as it is now, in one metadata write (`name`: the time, by default).
    pub async fn create_snapshot(&self, bucket: &str, name: Option<&str>) -> EngineResult<SnapshotInfo> {
        let name = match name {
            Some(name) => {
                validate_name(name)?;
                name.to_string()
            }
            None => default_name(),
        };
        self.snapshot_as(bucket, &name, false).await
    }

    async fn snapshot_as(&self, bucket: &str, name: &str, implicit: bool) -> EngineResult<SnapshotInfo> {
        for _ in 0..MAX_ATTEMPTS {
            let (mut record, revision) = crate::bucket::writable(self.bucket(bucket).await?)?;
            if record.versioning.is_none() {
                return Err(EngineError::InvalidRequest(format!(
                    "snapshots are built on versions: enable versioning on bucket {bucket} first"
                )));
            }
            if !record.versions_adopted {
                // A bucket versioned before this flag existed, or a crash while enabling.
                self.adopt_existing(bucket).await?;
                record.versions_adopted = true;
            }
            record.snapshots += 1;
            let key = keys::snapshot(bucket, name);
            let snapshot = SnapshotRecord { created_ms: now_ms(), forks: Vec::new(), implicit };
            let txn = Txn::new()
                .when(Compare::mod_revision_is(keys::bucket(bucket), revision))
                .when(Compare::absent(key.clone()))
                .then(Op::put(key.clone(), record::encode(&snapshot)))
                .then(Op::put(keys::bucket(bucket), record::encode(&record)))
                .or_read(key);
            let resp = self.meta().txn(txn).await?;
            if resp.succeeded {
                return Ok(SnapshotInfo {
                    bucket: bucket.to_string(),
                    name: name.to_string(),
                    revision: resp.revision,
                    created_ms: snapshot.created_ms,
                    forks: Vec::new(),
                });
            }
            if resp.failure_reads.first().is_some_and(Option::is_some) {
                return Err(EngineError::SnapshotExists(name.to_string()));
            }
        }
        Err(EngineError::Contended)
    }

    /// One snapshot of a bucket.
    pub async fn snapshot(&self, bucket: &str, name: &str) -> EngineResult<SnapshotInfo> {
        validate_name(name)?;
        self.bucket(bucket).await?;
        SnapshotInfo::new(bucket, name, &self.snapshot_entry(bucket, name).await?)
    }

    /// The snapshot key of `bucket@name` (its create revision is what the snapshot shows).
    async fn snapshot_entry(&self, bucket: &str, name: &str) -> EngineResult<KeyValue> {
        let kv = self.meta().get(&keys::snapshot(bucket, name)).await?;
        kv.ok_or_else(|| EngineError::NoSuchSnapshot(format!("{bucket}@{name}")))
    }

    /// Every snapshot of a bucket, by name.
    pub async fn list_snapshots(&self, bucket: &str) -> EngineResult<Vec<SnapshotInfo>> {
        self.bucket(bucket).await?;
        let page = self.meta().range(RangeRequest::prefix(keys::snapshots_of(bucket))).await?;
        page.kvs
            .iter()
            .map(|kv| {
                let (_, name) =
                    keys::parse_snapshot_key(&kv.key).ok_or_else(|| EngineError::Corrupt("bad snapshot key".into()))?;
                SnapshotInfo::new(bucket, name, kv)
            })
            .collect()
    }

    /// Deletes a snapshot no fork started from, then frees the versions only it kept.
    pub async fn delete_snapshot(&self, bucket: &str, name: &str) -> EngineResult<()> {
        validate_name(name)?;
        for _ in 0..MAX_ATTEMPTS {
            let (mut record, revision) = self.bucket(bucket).await?;
            let key = keys::snapshot(bucket, name);
            let kv = self.meta().get(&key).await?;
            let kv = kv.ok_or_else(|| EngineError::NoSuchSnapshot(format!("{bucket}@{name}")))?;
            let snapshot: SnapshotRecord = record::decode(&kv.value)?;
            if let Some(fork) = self.live_forks(bucket, name, &snapshot).await?.first() {
                return Err(EngineError::InvalidRequest(format!(
                    "bucket {fork} is a fork of snapshot {name} of {bucket}: delete the fork first"
                )));
            }
            record.snapshots = record.snapshots.saturating_sub(1);
            let txn = Txn::new()
                .when(Compare::mod_revision_is(keys::bucket(bucket), revision))
                .when(Compare::mod_revision_is(key.clone(), kv.mod_revision))
                .then(Op::delete(key))
                .then(Op::put(keys::bucket(bucket), record::encode(&record)));
            if self.meta().txn(txn).await?.succeeded {
                return self.sweep_retained(bucket).await;
            }
        }
        Err(EngineError::Contended)
    }

    /// The forks named in a snapshot's record that still exist and start from it (a crash
    /// between deleting a fork and updating the record leaves a name behind).
    async fn live_forks(&self, bucket: &str, name: &str, snapshot: &SnapshotRecord) -> EngineResult<Vec<String>> {
        let mut live = Vec::new();
        for fork in &snapshot.forks {
            match self.bucket(fork).await {
                Ok((record, _))
                    if record.fork_of.as_ref().is_some_and(|o| o.bucket == bucket && o.snapshot == name) =>
                {
                    live.push(fork.clone())
                }
                Ok(_) | Err(EngineError::NoSuchBucket) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(live)
    }

    /// Removes the retained versions of `bucket` no snapshot shows any more, and frees their
    /// bytes. A snapshot taken meanwhile never needs them: they were removed before it.
    pub(crate) async fn sweep_retained(&self, bucket: &str) -> EngineResult<()> {
        let retention = match self.bucket(bucket).await {
            Ok((record, _)) => self.retention(bucket, &record).await?,
            Err(EngineError::NoSuchBucket) => Retention::default(),
            Err(e) => return Err(e),
        };
        let mut range = RangeRequest::prefix(keys::retained_prefix(bucket)).limit(PAGE);
        loop {
            let page = self.meta().range(range.clone()).await?;
            for kv in &page.kvs {
                let retained: RetainedVersion = record::decode(&kv.value)?;
                if retention.shows(retained.created, kv.create_revision) {
                    continue;
                }
                let Some((_, key, token)) = keys::parse_retained_key(&kv.key) else { continue };
                let blobs = retained.version.object.as_ref().map(|o| o.data.blobs()).unwrap_or_default();
                let mut txn = Txn::new()
                    .when(Compare::mod_revision_is(kv.key.clone(), kv.mod_revision))
                    .then(Op::delete(kv.key.clone()))
                    .then(Op::delete(keys::version_inline(bucket, key, token)));
                for blob in &blobs {
                    txn = txn.then(Op::delete(keys::blob_ref(*blob)));
                }
                if self.meta().txn(txn).await?.succeeded {
                    self.delete_blobs_later(blobs);
                }
            }
            match page.kvs.last() {
                Some(last) if page.more => range = range.after(last.key.clone()),
                _ => return Ok(()),
            }
        }
    }

    /// Creates bucket `new`, writable, starting as `source` was at `snapshot` (or now, through
    /// a snapshot named `fork-<new>` made for it). No bytes are copied.
    pub async fn fork_bucket(
        &self,
        source: &str,
        snapshot: Option<&str>,
        new: &str,
        owner: Option<&str>,
    ) -> EngineResult<BucketRecord> {
        crate::bucket::validate_bucket_name(new)?;
        let (source_record, _) = self.bucket(source).await?;
        if self.layers(source, &source_record, Revision::MAX).await?.len() >= MAX_FORK_DEPTH {
            return Err(EngineError::InvalidRequest(format!(
                "bucket {source} is already a fork {MAX_FORK_DEPTH} levels deep"
            )));
        }
        if self.meta().get(&keys::bucket(new)).await?.is_some() {
            return Err(EngineError::BucketAlreadyExists);
        }
        let name = match snapshot {
            Some(name) => self.snapshot(source, name).await?.name,
            None => {
                let name = format!("fork-{new}");
                match self.snapshot_as(source, &name, true).await {
                    Ok(info) => info.name,
                    // Left by an earlier attempt that stopped before creating the fork.
                    Err(EngineError::SnapshotExists(_)) => self.snapshot(source, &name).await?.name,
                    Err(e) => return Err(e),
                }
            }
        };
        for _ in 0..MAX_ATTEMPTS {
            let key = keys::snapshot(source, &name);
            let kv = self.meta().get(&key).await?;
            let kv = kv.ok_or_else(|| EngineError::NoSuchSnapshot(format!("{source}@{name}")))?;
            let mut snap: SnapshotRecord = record::decode(&kv.value)?;
            snap.forks.retain(|f| f != new);
            snap.forks.push(new.to_string());
            let record = BucketRecord {
                created_ms: now_ms(),
                owner: owner.map_or_else(|| source_record.owner.clone(), str::to_string),
                location: source_record.location.clone(),
                replicas: source_record.replicas,
                encryption: source_record.encryption.clone(),
                versioning: Some(Versioning::Enabled),
                versions_adopted: true,
                fork_of: Some(ForkOrigin {
                    bucket: source.to_string(),
                    snapshot: name.clone(),
                    revision: kv.create_revision,
                }),
                ..Default::default()
            };
            let txn = Txn::new()
                .when(Compare::mod_revision_is(key.clone(), kv.mod_revision))
                .when(Compare::absent(keys::bucket(new)))
                .then(Op::put(key, record::encode(&snap)))
                .then(Op::put(keys::bucket(new), record::encode(&record)));
            if self.meta().txn(txn).await?.succeeded {
                return Ok(record);
            }
            if self.meta().get(&keys::bucket(new)).await?.is_some() {
                return Err(EngineError::BucketAlreadyExists);
            }
        }
        Err(EngineError::Contended)
    }

    /// After a fork was deleted: takes it off its snapshot's record, and deletes the snapshot
    /// when the fork made it.
    pub(crate) async fn release_fork(&self, fork: &str, origin: &ForkOrigin) -> EngineResult<()> {
        for _ in 0..MAX_ATTEMPTS {
            let key = keys::snapshot(&origin.bucket, &origin.snapshot);
            let Some(kv) = self.meta().get(&key).await? else { return Ok(()) };
            let mut snap: SnapshotRecord = record::decode(&kv.value)?;
            snap.forks.retain(|f| f != fork);
            if snap.implicit && snap.forks.is_empty() {
                return match self.delete_snapshot(&origin.bucket, &origin.snapshot).await {
                    Ok(()) | Err(EngineError::NoSuchSnapshot(_)) => Ok(()),
                    Err(e) => Err(e),
                };
            }
            let txn = Txn::new()
                .when(Compare::mod_revision_is(key.clone(), kv.mod_revision))
                .then(Op::put(key, record::encode(&snap)));
            if self.meta().txn(txn).await?.succeeded {
                return Ok(());
            }
        }
        Err(EngineError::Contended)
    }

    /// What a bucket shows, top layer first: itself as of `at`, then each bucket it was forked
    /// from as of its fork's snapshot.
    pub(crate) async fn layers(&self, bucket: &str, record: &BucketRecord, at: Revision) -> EngineResult<Vec<Layer>> {
        let mut layers = vec![Layer { bucket: bucket.to_string(), at }];
        let mut origin = record.fork_of.clone();
        while let Some(from) = origin {
            if layers.len() > MAX_FORK_DEPTH {
                return Err(EngineError::Corrupt(format!("fork chain of {bucket} is deeper than {MAX_FORK_DEPTH}")));
            }
            origin = self.bucket(&from.bucket).await?.0.fork_of;
            layers.push(Layer { bucket: from.bucket, at: from.revision });
        }
        Ok(layers)
    }

    /// The layers of `bucket` at its snapshot `name`.
    async fn snapshot_layers(&self, bucket: &str, name: &str) -> EngineResult<Vec<Layer>> {
        validate_name(name)?;
        let (record, _) = self.bucket(bucket).await?;
        let revision = self.snapshot_entry(bucket, name).await?.create_revision;
        self.layers(bucket, &record, revision).await
    }

    /// What one layer shows of `key`. Reads `v/` before `z/`, so a version moving between them
    /// meanwhile is seen in one or both.
    async fn seen_in(&self, layer: &Layer, key: &str) -> EngineResult<Option<Seen>> {
        let mut cursor = LayerCursor::new(layer, &format!("{key}\0"));
        match cursor.peek_key(self).await? {
            Some(found) if found == key => cursor.take_key(self, key).await,
            _ => Ok(None),
        }
    }

    /// The object `key` reads as through `layers` (the first layer that has the key decides).
    async fn read_layers(&self, layers: &[Layer], key: &str) -> EngineResult<Current> {
        for (depth, layer) in layers.iter().enumerate() {
            match self.seen_in(layer, key).await? {
                Some(Seen::Object { version, created }) => {
                    let token = version.stamp.token.clone();
                    let object = version.object.ok_or(EngineError::NoSuchKey)?;
                    let inline = match object.data {
                        DataLayout::Inline => {
                            let bytes = self.read_version_inline(&layer.bucket, key, &token).await?;
                            Some(bytes.ok_or_else(|| EngineError::Corrupt("inline version without its bytes".into()))?)
                        }
                        _ => None,
                    };
                    return Ok(Current { record: object, revision: created, inline });
                }
                // A delete marker of the bucket itself answers like S3; one inherited reads as
                // a plain miss.
                Some(Seen::Marker { version_id }) if depth == 0 => {
                    return Err(EngineError::DeleteMarker { version_id, by_id: false });
                }
                Some(Seen::Marker { .. }) => return Err(EngineError::NoSuchKey),
                None => {}
            }
        }
        Err(EngineError::NoSuchKey)
    }

    /// `key` of `bucket` as its snapshot `name` shows it.
    pub(crate) async fn read_at_snapshot(&self, bucket: &str, name: &str, key: &str) -> EngineResult<Current> {
        crate::validate_key(key)?;
        let layers = self.snapshot_layers(bucket, name).await?;
        self.read_layers(&layers, key).await
    }

    /// A key without a current object that a fork has never written (no version head: every
    /// change that leaves no current object writes it): what its source showed.
    pub(crate) async fn read_inherited(&self, bucket: &str, record: &BucketRecord, key: &str) -> EngineResult<Current> {
        if self.meta().get(&keys::version_head(bucket, key)).await?.is_some() {
            return Err(EngineError::NoSuchKey);
        }
        let layers = self.layers(bucket, record, Revision::MAX).await?;
        self.read_layers(&layers[1..], key).await
    }

    /// ListObjects of `bucket` as its snapshot `name` shows it.
    pub async fn list_objects_in_snapshot(
        &self,
        bucket: &str,
        name: &str,
        req: &ListRequest,
    ) -> EngineResult<ListPage> {
        let layers = self.snapshot_layers(bucket, name).await?;
        self.list_layers(&layers, req).await
    }

    /// ListObjects over layers: each key as its top layer that has it shows it. Reads every
    /// version under the prefix (not just current objects), so it costs more than a plain
    /// listing of a bucket with long histories.
    pub(crate) async fn list_layers(&self, layers: &[Layer], req: &ListRequest) -> EngineResult<ListPage> {
        let max_keys = req.max_keys.min(MAX_LIST_KEYS);
        let delimiter = req.delimiter.as_deref().filter(|d| !d.is_empty());
        let mut cursors: Vec<LayerCursor> = layers.iter().map(|l| LayerCursor::new(l, &req.prefix)).collect();
        if let Some(after) = req.after.as_deref().filter(|a| a.as_bytes() >= req.prefix.as_bytes()) {
            let from = match delimiter.and_then(|d| common_prefix(after, &req.prefix, d)) {
                Some(prefix) if prefix == after => prefix_end(after.as_bytes()),
                _ => Some([after.as_bytes(), b"\x01"].concat()),
            };
            let Some(from) = from else { return Ok(finish(ListPage::default(), Vec::new(), max_keys, false)) };
            cursors.iter_mut().for_each(|c| c.seek(&from));
        }
        let page = ListPage { revision: self.meta().current_revision().await?, ..Default::default() };
        let mut entries: Vec<Entry> = Vec::new();
        loop {
            let mut next: Option<String> = None;
            for cursor in &mut cursors {
                if let Some(key) = cursor.peek_key(self).await? {
                    next = Some(next.map_or(key.clone(), |n: String| n.min(key)));
                }
            }
            let Some(key) = next else { return Ok(finish(page, entries, max_keys, false)) };
            if let Some(prefix) = delimiter.and_then(|d| common_prefix(&key, &req.prefix, d)) {
                entries.push(Entry::Prefix(prefix.clone()));
                if entries.len() > max_keys {
                    return Ok(finish(page, entries, max_keys, true));
                }
                let Some(past) = prefix_end(prefix.as_bytes()) else {
                    return Ok(finish(page, entries, max_keys, false));
                };
                cursors.iter_mut().for_each(|c| c.seek(&past));
                continue;
            }
            let mut shown = None;
            for cursor in &mut cursors {
                let seen = cursor.take_key(self, &key).await?;
                shown = shown.or(seen);
            }
            if let Some(Seen::Object { version, created }) = shown
                && let Some(object) = version.object
            {
                entries.push(Entry::Object(Box::new(ListedObject { key, record: object, revision: created })));
                if entries.len() > max_keys {
                    return Ok(finish(page, entries, max_keys, true));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_shows_versions_written_before_it_and_removed_after_it() {
        let retention = Retention { revisions: vec![10, 20] };
        assert!(retention.shows(5, 11), "written before 10, removed after it");
        assert!(!retention.shows(5, 10), "removed at 10: the snapshot at 10 does not show it");
        assert!(!retention.shows(11, 15), "between the snapshots");
        assert!(retention.shows(15, 25), "written before 20, removed after it");
        assert!(retention.keeps(20) && !retention.keeps(21));
        assert!(!Retention::default().keeps(1));
    }

    #[test]
    fn snapshot_names() {
        for good in ["nightly", "2026-12-06", "v1.2_rc", &default_name()] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in ["", "-x", "Upper", "a/b", "a b", &"x".repeat(64)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }
}
