//! S3 versioning (docs/decisions/056-versioning.md). In a versioned bucket every version of a key,
//! delete markers included, is a `v/<bucket>/<key>\0<token>` entry that owns its blobs (and
//! inline bytes); the current version, when it is an object, is also copied at `o/` so reads,
//! listings and the KV API of current objects stay as they are. `v/<bucket>/<key>` (the head)
//! names the `null` version and, while the key has no current object, the newest version; every
//! versioned change of the key compares it and the `o/` record. A PUT rewrites only `o/` (its
//! version is then the newest), so it leaves the head alone unless the `null` version changes:
//! one B-tree insert fewer per versioned PUT. Every other change (delete markers, removals,
//! suspended writes) rewrites the head, so two changes of one key never both commit from the
//! same read. Unversioned buckets never touch `v/`.

use std::borrow::Cow;
use std::ops::Bound;

use bytes::Bytes;
use meridian_meta::{Compare, KeyValue, Op, RangeRequest, Revision, Txn, prefix_end};

use crate::conditions::WriteConditions;
use crate::error::{EngineError, EngineResult};
use crate::notify::{self, EventKind};
use crate::object::{Current, DeleteOutcome, ExtraTxn, check_fence_failure, decode_current, object_change, with_fence};
use crate::record::{self, BucketRecord, ObjectRecord, VersionHead, VersionRecord, VersionStamp, Versioning};
use crate::snapshot::Retention;
use crate::{Engine, keys, now_ms, validate_key};

const MAX_ATTEMPTS: usize = 64;
/// Most versions ListObjectVersions returns in one page.
pub const MAX_LIST_VERSIONS: usize = 1000;

/// A committed versioned change.
#[derive(Clone, Debug)]
pub struct VersionCommit {
    pub revision: Revision,
    pub stamp: VersionStamp,
}

/// The token of a version written at `micros` (µs since the epoch): smaller is newer.
fn token_at(micros: u64) -> String {
    format!("{:016x}", u64::MAX - micros)
}

fn micros_of(token: &str) -> Option<u64> {
    u64::from_str_radix(token, 16).ok().map(|t| u64::MAX - t)
}

/// A token newer than every one of `older` and than now: the clock of another node that wrote
/// the key's newest version may be ahead of this one.
fn newer_token(older: &[&str]) -> String {
    let now = (now_ms().max(0) as u64) * 1000 + u64::from(rand::random::<u16>() % 1000);
    let floor = older.iter().filter_map(|t| micros_of(t)).max().map_or(0, |m| m + 1);
    token_at(now.max(floor))
}

/// The token a client's version id names (`None`: the `null` version).
fn token_of(version_id: &str) -> EngineResult<Option<&str>> {
    if version_id == "null" {
        return Ok(None);
    }
    let valid = version_id.len() == 16 && version_id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    valid.then_some(Some(version_id)).ok_or_else(|| EngineError::InvalidArgument("Invalid version id specified".into()))
}

/// A key's current object and head, read at one revision.
pub(crate) struct KeyState {
    pub current: Option<Current>,
    head: Option<(VersionHead, Revision)>,
}

impl KeyState {
    fn head_revision(&self) -> Revision {
        self.head.as_ref().map_or(0, |(_, r)| *r)
    }

    /// The head as it stands: the stored one (or none yet), naming the current object's version
    /// as the newest while there is one, since a PUT makes its version newest without
    /// rewriting the head.
    fn head_now(&self) -> VersionHead {
        let mut head = self.head.as_ref().map(|(h, _)| h.clone()).unwrap_or_default();
        if let Some(stamp) = self.current.as_ref().and_then(|c| c.record.version.as_ref()) {
            head.latest = stamp.token.clone();
        }
        head
    }
}

/// A version as read from `v/`, with its inline bytes.
pub(crate) struct StoredVersion {
    pub record: VersionRecord,
    pub revision: Revision,
    /// The revision that wrote the version (rewriting its tags keeps it).
    pub created: Revision,
    pub inline: Option<Bytes>,
}

impl StoredVersion {
    /// The version as the read path serves it (a delete marker is not served).
    pub(crate) fn into_current(self) -> EngineResult<Current> {
        let id = self.record.stamp.id().to_string();
        let record = self.record.object.ok_or(EngineError::DeleteMarker { version_id: id, by_id: true })?;
        let inline = matches!(record.data, record::DataLayout::Inline).then(|| self.inline.unwrap_or_default());
        Ok(Current { record, revision: self.revision, inline })
    }
}

/// The writes that make an unversioned (pre-versioning) current object the key's `null`
/// version: returns the object as stamped. Its blobs move to the version's entry.
fn adopt(bucket: &str, key: &str, current: &Current, token: &str, txn: &mut Txn) -> Current {
    let stamp = VersionStamp { token: token.to_string(), null: true };
    let record = ObjectRecord { version: Some(stamp.clone()), ..current.record.clone() };
    put_version(bucket, key, &record, None, txn);
    Current { record, revision: current.revision, inline: current.inline.clone() }
}

/// Writes a stamped object as its version's entry, owning its blobs, and its inline bytes when
/// given. The current version's inline bytes live only at `i/<bucket>/<key>` (where reads of
/// the current object find them) until a newer version replaces it: then they are written to
/// the version's own `i/<bucket>/<key>\0<token>` ([`keep_replaced_inline`]), so a small PUT in
/// a versioned bucket writes its bytes once.
pub(crate) fn put_version(bucket: &str, key: &str, record: &ObjectRecord, inline: Option<&Bytes>, txn: &mut Txn) {
    let Some(stamp) = &record.version else { return };
    let entry = keys::version(bucket, key, &stamp.token);
    let version = VersionRecord { stamp: stamp.clone(), modified_ms: record.modified_ms, object: Some(record.clone()) };
    txn.ops.push(Op::put(entry.clone(), record::encode(&version)));
    if let Some(bytes) = inline {
        txn.ops.push(Op::put(keys::version_inline(bucket, key, &stamp.token), bytes.clone()));
    }
    for blob in record.data.blobs() {
        txn.ops.push(Op::put(keys::blob_ref(blob), entry.clone()));
    }
}

/// Writes the inline bytes of `current`, the version being replaced, to its own key.
fn keep_replaced_inline(bucket: &str, key: &str, current: &Current, txn: &mut Txn) {
    if let (Some(stamp), Some(bytes)) = (&current.record.version, &current.inline) {
        txn.ops.push(Op::put(keys::version_inline(bucket, key, &stamp.token), bytes.clone()));
    }
}

/// The inline bytes of version `token`: at its own key, or, while it is the current version,
/// at the current object's (`current` and `current_inline`: the `o/` and `i/` entries, read at
/// the same revision).
fn version_inline_bytes(
    token: &str,
    own: Option<KeyValue>,
    current: Option<KeyValue>,
    current_inline: Option<KeyValue>,
) -> EngineResult<Option<Bytes>> {
    if let Some(own) = own {
        return Ok(Some(own.value));
    }
    let (Some(current), Some(inline)) = (current, current_inline) else { return Ok(None) };
    let record: ObjectRecord = record::decode(&current.value)?;
    let is_current = record.version.is_some_and(|v| v.token == token);
    Ok((is_current && inline.mod_revision == current.mod_revision).then_some(inline.value))
}

/// Removes a version's entry, inline bytes and blob references; returns its blobs. A version
/// a snapshot of the bucket still shows moves to `z/` instead, keeping its bytes.
fn remove_version(
    bucket: &str,
    key: &str,
    version: &StoredVersion,
    retention: &Retention,
    txn: &mut Txn,
) -> Vec<meridian_blob::BlobId> {
    let token = &version.record.stamp.token;
    let entry = keys::version(bucket, key, token);
    txn.compares.push(Compare::mod_revision_is(entry.clone(), version.revision));
    txn.ops.push(Op::delete(entry));
    if retention.keeps(version.created) {
        crate::snapshot::retain(bucket, key, &version.record, version.created, txn);
        if let Some(bytes) = &version.inline {
            // The current version's bytes were only at the current object's key.
            txn.ops.push(Op::put(keys::version_inline(bucket, key, token), bytes.clone()));
        }
        return Vec::new();
    }
    txn.ops.push(Op::delete(keys::version_inline(bucket, key, token)));
    let blobs = version.record.object.as_ref().map(|o| o.data.blobs()).unwrap_or_default();
    for blob in &blobs {
        txn.ops.push(Op::delete(keys::blob_ref(*blob)));
    }
    blobs
}

fn put_head(bucket: &str, key: &str, head: &VersionHead, txn: &mut Txn) {
    txn.ops.push(Op::put(keys::version_head(bucket, key), record::encode(head)));
}

impl Engine {
    /// S3 PutBucketVersioning. Enabling it the first time makes every existing object its key's
    /// `null` version.
    pub async fn set_versioning(&self, bucket: &str, state: Versioning) -> EngineResult<()> {
        self.update_bucket(bucket, |record| {
            if record.object_lock.is_some() && state == Versioning::Suspended {
                let why = "An Object Lock configuration is present on this bucket, so the versioning state cannot be changed.";
                return Err(EngineError::InvalidBucketState(why.into()));
            }
            record.versioning = Some(state);
            Ok(())
        })
        .await?;
        self.adopt_existing(bucket).await?;
        self.update_bucket(bucket, |record| {
            record.versions_adopted = true;
            Ok(())
        })
        .await?;
        Ok(())
    }

    /// S3 GetBucketVersioning (`None`: never enabled).
    pub async fn versioning(&self, bucket: &str) -> EngineResult<Option<Versioning>> {
        Ok(self.bucket(bucket).await?.0.versioning)
    }

    /// Makes every unversioned object of a bucket its key's `null` version. A key written
    /// meanwhile is skipped: its writer made it a version.
    pub(crate) async fn adopt_existing(&self, bucket: &str) -> EngineResult<()> {
        let mut range = RangeRequest::prefix(keys::objects_prefix(bucket)).limit(500);
        loop {
            let page = self.meta().range(range.clone()).await?;
            for kv in &page.kvs {
                let Some((_, key)) = keys::parse_object_key(&kv.key) else { continue };
                let record: ObjectRecord = record::decode(&kv.value)?;
                if record.version.is_some() {
                    continue;
                }
                let Some(current) = self.read_current(bucket, key).await? else { continue };
                if current.record.version.is_some() {
                    continue;
                }
                let token = token_at((current.record.modified_ms.max(0) as u64) * 1000);
                let mut txn = Txn::new().when(Compare::mod_revision_is(keys::version_head(bucket, key), 0));
                let adopted = adopt(bucket, key, &current, &token, &mut txn);
                let change =
                    object_change(bucket, key, Some(&current), Some((&adopted.record, adopted.inline.as_ref())));
                txn.compares.extend(change.compares);
                txn.ops.extend(change.ops);
                put_head(bucket, key, &VersionHead { latest: token.clone(), null: Some(token) }, &mut txn);
                self.meta().txn(txn).await?;
            }
            match page.kvs.last() {
                Some(last) if page.more => range = range.after(last.key.clone()),
                _ => return Ok(()),
            }
        }
    }

    pub(crate) async fn read_key_state(&self, bucket: &str, key: &str) -> EngineResult<KeyState> {
        let wanted = [keys::object(bucket, key), keys::inline(bucket, key), keys::version_head(bucket, key)];
        let (mut kvs, _) = self.meta().get_many(&wanted).await?;
        let head = kvs.pop().flatten().map(|kv| Ok::<_, EngineError>((record::decode(&kv.value)?, kv.mod_revision)));
        let inline = kvs.pop().flatten();
        let current = decode_current(kvs.pop().flatten(), inline)?;
        Ok(KeyState { current, head: head.transpose()? })
    }

    /// The inline bytes of version `token` of `key` (see [`version_inline_bytes`]).
    pub(crate) async fn read_version_inline(
        &self,
        bucket: &str,
        key: &str,
        token: &str,
    ) -> EngineResult<Option<Bytes>> {
        let wanted = [keys::version_inline(bucket, key, token), keys::object(bucket, key), keys::inline(bucket, key)];
        let (kvs, _) = self.meta().get_many(&wanted).await?;
        let [own, current, current_inline]: [Option<KeyValue>; 3] =
            kvs.try_into().map_err(|_| EngineError::Corrupt("a read of three keys answered another count".into()))?;
        version_inline_bytes(token, own, current, current_inline)
    }

    /// One version by its token (`None`: there is none).
    async fn read_stored_version(&self, bucket: &str, key: &str, token: &str) -> EngineResult<Option<StoredVersion>> {
        let wanted = [
            keys::version(bucket, key, token),
            keys::version_inline(bucket, key, token),
            keys::object(bucket, key),
            keys::inline(bucket, key),
        ];
        let (kvs, _) = self.meta().get_many(&wanted).await?;
        let [entry, own, current, current_inline]: [Option<KeyValue>; 4] =
            kvs.try_into().map_err(|_| EngineError::Corrupt("a read of four keys answered another count".into()))?;
        let Some(kv) = entry else { return Ok(None) };
        let inline = version_inline_bytes(token, own, current, current_inline)?;
        Ok(Some(StoredVersion {
            record: record::decode(&kv.value)?,
            revision: kv.mod_revision,
            created: kv.create_revision,
            inline,
        }))
    }

    /// Makes `new` (an object and its inline bytes; `None`: a delete marker) the newest version
    /// of `key`, if `conditions` hold against the current object. While versioning is suspended
    /// it replaces the `null` version, whose bytes are then freed.
    pub(crate) async fn commit_version(
        &self,
        bucket: &str,
        key: &str,
        new: Option<(&ObjectRecord, Option<&Bytes>)>,
        conditions: &WriteConditions,
        extra: &ExtraTxn,
    ) -> EngineResult<VersionCommit> {
        let mut seen = extra.versioned_bucket.as_deref().zip(extra.bucket_revision);
        for _ in 0..MAX_ATTEMPTS {
            // The caller's record of the bucket for the first attempt (the commit compares its
            // revision); a retry reads both again, at once.
            let ((bucket_record, bucket_revision), state) = match seen.take() {
                Some((record, revision)) => {
                    ((Cow::Borrowed(record), revision), self.read_key_state(bucket, key).await?)
                }
                None => {
                    let ((record, revision), state) =
                        futures::try_join!(self.writable_bucket(bucket), self.read_key_state(bucket, key))?;
                    ((Cow::Owned(record), revision), state)
                }
            };
            let now = now_ms();
            conditions
                .check(state.current.as_ref().filter(|c| !c.record.is_expired(now)).map(|c| (&c.record, c.revision)))?;
            let mut txn = Txn::new().when(Compare::mod_revision_is(keys::bucket(bucket), bucket_revision));
            let (stamp, freed) = self.plan_version(bucket, key, &bucket_record, state, new, &mut txn).await?;
            if let Some(kind) = extra.event {
                let object = new.map(|(object, _)| object);
                txn.ops.extend(notify::event_op(bucket, &bucket_record, key, kind, object, Some(stamp.id())));
            }
            txn = with_fence(txn, bucket, conditions);
            txn.compares.extend(extra.compares.iter().cloned());
            txn.ops.extend(extra.ops.iter().cloned());
            let resp = self.meta().txn(txn).await?;
            if resp.succeeded {
                self.delete_blobs_later(freed);
                return Ok(VersionCommit { revision: resp.revision, stamp });
            }
            check_fence_failure(&resp, conditions)?;
            if let Some(check) = &extra.still_valid {
                check(self).await?;
            }
        }
        Err(EngineError::Contended)
    }

    /// Appends to `txn` the writes that make `new` (an object and its inline bytes; `None`: a
    /// delete marker) the newest version of `key`, given the key's state as read: its version
    /// entry, the `o/` copy, the head (compared), and, while suspended, the removal of the
    /// `null` version it replaces. Returns the new version's stamp and the blobs it frees.
    pub(crate) async fn plan_version(
        &self,
        bucket: &str,
        key: &str,
        bucket_record: &BucketRecord,
        state: KeyState,
        new: Option<(&ObjectRecord, Option<&Bytes>)>,
        txn: &mut Txn,
    ) -> EngineResult<(VersionStamp, Vec<meridian_blob::BlobId>)> {
        let suspended = bucket_record.versioning == Some(Versioning::Suspended);
        let now = now_ms();
        txn.compares.push(Compare::mod_revision_is(keys::version_head(bucket, key), state.head_revision()));
        let stored_head = state.head.as_ref().map(|(h, _)| h.clone());
        let mut head = state.head_now();
        let mut older = vec![head.latest.clone()];
        if let Some(stored) = &stored_head {
            older.push(stored.latest.clone());
        }
        let mut current = state.current;
        if let Some(legacy) = current.take_if(|c| c.record.version.is_none()) {
            let token = token_at((legacy.record.modified_ms.max(0) as u64) * 1000);
            older.push(token.clone());
            current = Some(if suspended {
                legacy // the null version, replaced below: its blobs are freed with the o/ record
            } else {
                head.null = Some(token.clone());
                adopt(bucket, key, &legacy, &token, txn)
            });
        }
        let mut freed = Vec::new();
        let mut removed = None;
        if suspended
            && let Some(null) = head.null.take()
            && let Some(version) = self.read_stored_version(bucket, key, &null).await?
        {
            self.check_removable(&version.record, false).await?;
            let retention = self.retention(bucket, bucket_record).await?;
            freed.extend(remove_version(bucket, key, &version, &retention, txn));
            removed = Some(null);
        }
        if let Some(replaced) = &current
            && replaced.record.version.as_ref().is_some_and(|v| Some(&v.token) != removed.as_ref())
        {
            keep_replaced_inline(bucket, key, replaced, txn);
        }
        let older: Vec<&str> = older.iter().map(String::as_str).collect();
        let stamp = VersionStamp { token: newer_token(&older), null: suspended };
        let entry = keys::version(bucket, key, &stamp.token);
        let change = match new {
            Some((object, inline)) => {
                let stamped = ObjectRecord { version: Some(stamp.clone()), ..object.clone() };
                let written_ms = micros_of(&stamp.token).map_or(now, |m| (m / 1000) as i64);
                let stamped = crate::object_lock::with_default_retention(bucket_record, stamped, written_ms);
                put_version(bucket, key, &stamped, None, txn);
                object_change(bucket, key, current.as_ref(), Some((&stamped, inline)))
            }
            None => {
                let marker = VersionRecord { stamp: stamp.clone(), modified_ms: now, object: None };
                txn.ops.push(Op::put(entry, record::encode(&marker)));
                object_change(bucket, key, current.as_ref(), None)
            }
        };
        txn.compares.extend(change.compares);
        txn.ops.extend(change.ops);
        freed.extend(change.freed);
        head.latest = stamp.token.clone();
        if suspended {
            head.null = Some(stamp.token.clone());
        }
        // A new current object stands for the newest version itself; anything else (a delete
        // marker, a changed `null` version) is written to the head.
        let null_changed = stored_head.and_then(|stored| stored.null) != head.null;
        if new.is_none() || null_changed {
            put_head(bucket, key, &head, txn);
        }
        Ok((stamp, freed))
    }

    /// A DELETE without a version id in a versioned bucket: a new delete marker.
    pub(crate) async fn delete_versioned(
        &self,
        bucket: &str,
        key: &str,
        conditions: &WriteConditions,
    ) -> EngineResult<DeleteOutcome> {
        let extra = ExtraTxn { event: Some(EventKind::DeleteMarkerCreated), ..Default::default() };
        let done = self.commit_version(bucket, key, None, conditions, &extra).await?;
        Ok(DeleteOutcome {
            revision: done.revision,
            existed: true,
            version_id: Some(done.stamp.id().to_string()),
            delete_marker: true,
        })
    }

    /// The token of the version `version_id` names, and the key's state.
    async fn resolve(&self, bucket: &str, key: &str, version_id: &str) -> EngineResult<(Option<String>, KeyState)> {
        validate_key(key)?;
        let wanted = token_of(version_id)?;
        let state = self.read_key_state(bucket, key).await?;
        let token = match wanted {
            Some(token) => Some(token.to_string()),
            None => state.head.as_ref().and_then(|(h, _)| h.null.clone()),
        };
        Ok((token, state))
    }

    /// One version of an object by id, for GET and HEAD (strongly read).
    pub(crate) async fn read_version(&self, bucket: &str, key: &str, version_id: &str) -> EngineResult<Current> {
        let (token, state) = self.resolve(bucket, key, version_id).await?;
        if version_id == "null"
            && let Some(current) = state.current.filter(|c| c.record.version.as_ref().is_none_or(|v| v.null))
        {
            return Ok(current); // an object written before versioning was enabled, or suspended
        }
        let found = match token {
            Some(token) => self.read_stored_version(bucket, key, &token).await?,
            None => None,
        };
        match found {
            Some(version) => version.into_current(),
            None => {
                self.bucket(bucket).await?;
                Err(EngineError::NoSuchVersion)
            }
        }
    }

    /// Why a key without a current object reads as missing: its newest version is a delete
    /// marker (`Some(its id)`), or it has no version at all. Without a current object the head
    /// names the newest version (every change that leaves none writes it).
    pub(crate) async fn latest_marker(&self, bucket: &str, key: &str) -> EngineResult<Option<String>> {
        let Some(kv) = self.meta().get(&keys::version_head(bucket, key)).await? else { return Ok(None) };
        let head: VersionHead = record::decode(&kv.value)?;
        let marker = self.read_stored_version(bucket, key, &head.latest).await?;
        Ok(marker.filter(|m| m.record.object.is_none()).map(|m| m.record.stamp.id().to_string()))
    }

    /// S3 DeleteObject with a version id: removes that version (or delete marker) for good and
    /// frees its bytes. Removing the newest version makes the next one current.
    pub async fn delete_version(&self, bucket: &str, key: &str, version_id: &str) -> EngineResult<DeleteOutcome> {
        self.delete_version_with(bucket, key, version_id, false).await
    }

    /// [`Engine::delete_version`]; `bypass`: the caller may bypass GOVERNANCE retention and
    /// asked to (a locked version is refused otherwise).
    pub async fn delete_version_with(
        &self,
        bucket: &str,
        key: &str,
        version_id: &str,
        bypass: bool,
    ) -> EngineResult<DeleteOutcome> {
        self.remove_version_as(bucket, key, version_id, bypass, EventKind::Delete).await
    }

    /// [`Engine::delete_version_with`], reported to notifications as `event` (a client's
    /// delete, or lifecycle's expiry of a noncurrent version).
    pub(crate) async fn remove_version_as(
        &self,
        bucket: &str,
        key: &str,
        version_id: &str,
        bypass: bool,
        event: EventKind,
    ) -> EngineResult<DeleteOutcome> {
        for _ in 0..MAX_ATTEMPTS {
            let (token, state) = self.resolve(bucket, key, version_id).await?;
            let gone = |revision| DeleteOutcome {
                revision,
                existed: false,
                version_id: Some(version_id.to_string()),
                delete_marker: false,
            };
            let legacy = state.current.as_ref().is_some_and(|c| c.record.version.is_none());
            if version_id == "null" && legacy {
                return self.delete_unversioned(bucket, key, state).await;
            }
            let Some(token) = token else {
                self.bucket(bucket).await?;
                return Ok(gone(self.meta().current_revision().await?));
            };
            let Some(version) = self.read_stored_version(bucket, key, &token).await? else {
                self.bucket(bucket).await?;
                return Ok(gone(self.meta().current_revision().await?));
            };
            self.check_removable(&version.record, bypass).await?;
            // A key whose versions all came from PUTs has no head yet.
            let (mut head, head_revision) = (state.head_now(), state.head_revision());
            // Comparing the bucket's revision keeps the snapshot set read here current.
            let (bucket_record, bucket_revision) = self.bucket(bucket).await?;
            let retention = self.retention(bucket, &bucket_record).await?;
            let mut txn = Txn::new()
                .when(Compare::mod_revision_is(keys::version_head(bucket, key), head_revision))
                .when(Compare::mod_revision_is(keys::bucket(bucket), bucket_revision));
            let mut freed = remove_version(bucket, key, &version, &retention, &mut txn);
            if head.null.as_deref() == Some(token.as_str()) {
                head.null = None;
            }
            let next = self.next_version(bucket, key, &token).await?;
            if head.latest == token {
                let promoted = next.as_ref().and_then(|n| n.record.object.as_ref().map(|o| (o, n.inline.clone())));
                let promoted_ref = promoted.as_ref().map(|(o, inline)| (*o, inline.as_ref()));
                let change = object_change(bucket, key, state.current.as_ref(), promoted_ref);
                txn.compares.extend(change.compares);
                txn.ops.extend(change.ops);
                freed.extend(change.freed);
                if let Some(next) = &next {
                    head.latest = next.record.stamp.token.clone();
                    txn.compares.push(Compare::mod_revision_is(
                        keys::version(bucket, key, &next.record.stamp.token),
                        next.revision,
                    ));
                }
            }
            if head.latest == token && next.is_none() {
                txn.ops.push(Op::delete(keys::version_head(bucket, key)));
            } else {
                put_head(bucket, key, &head, &mut txn);
            }
            self.queue_removal_event(bucket, key, version.record.stamp.id(), event, &mut txn).await;
            let resp = self.meta().txn(txn).await?;
            if resp.succeeded {
                self.delete_blobs_later(freed);
                return Ok(DeleteOutcome {
                    revision: resp.revision,
                    existed: true,
                    version_id: Some(version.record.stamp.id().to_string()),
                    delete_marker: version.record.object.is_none(),
                });
            }
        }
        Err(EngineError::Contended)
    }

    /// Adds the event (`kind`) of removing version `version_id` for good, if a rule of the bucket
    /// (as this node sees it) matches.
    async fn queue_removal_event(&self, bucket: &str, key: &str, version_id: &str, kind: EventKind, txn: &mut Txn) {
        if let Ok((record, _)) = self.bucket(bucket).await {
            txn.ops.extend(notify::event_op(bucket, &record, key, kind, None, Some(version_id)));
        }
    }

    /// Deletes an object written before versioning was enabled (its `null` version).
    async fn delete_unversioned(&self, bucket: &str, key: &str, state: KeyState) -> EngineResult<DeleteOutcome> {
        let change = object_change(bucket, key, state.current.as_ref(), None);
        let mut txn = Txn::new().when(Compare::mod_revision_is(keys::version_head(bucket, key), state.head_revision()));
        txn.compares.extend(change.compares);
        txn.ops.extend(change.ops);
        self.queue_removal_event(bucket, key, "null", EventKind::Delete, &mut txn).await;
        let resp = self.meta().txn(txn).await?;
        if !resp.succeeded {
            return Err(EngineError::Contended);
        }
        self.delete_blobs_later(change.freed);
        Ok(DeleteOutcome {
            revision: resp.revision,
            existed: true,
            version_id: Some("null".into()),
            delete_marker: false,
        })
    }

    /// The version right after (older than) `token`.
    async fn next_version(&self, bucket: &str, key: &str, token: &str) -> EngineResult<Option<StoredVersion>> {
        let range = RangeRequest::prefix(keys::versions_of(bucket, key)).after(keys::version(bucket, key, token));
        let page = self.meta().range(range.limit(1)).await?;
        let Some(kv) = page.kvs.first() else { return Ok(None) };
        let Some((_, _, Some(next))) = keys::parse_version_key(&kv.key) else { return Ok(None) };
        self.read_stored_version(bucket, key, next).await
    }

    /// Replaces the tags of version `version_id` when it is not the current object (`None`: it
    /// is, and the caller updates the current object, which updates its version too).
    pub(crate) async fn set_noncurrent_version_tags(
        &self,
        bucket: &str,
        key: &str,
        version_id: &str,
        tags: &crate::tagging::Tags,
    ) -> EngineResult<Option<Revision>> {
        for _ in 0..MAX_ATTEMPTS {
            let (token, state) = self.resolve(bucket, key, version_id).await?;
            let current_token = state.current.as_ref().map(|c| c.record.version.as_ref().map(|v| v.token.as_str()));
            if current_token.is_some_and(|t| t.is_none_or(|t| Some(t) == token.as_deref())) {
                return Ok(None);
            }
            let found = match &token {
                Some(token) => self.read_stored_version(bucket, key, token).await?,
                None => None,
            };
            let Some(version) = found else {
                self.bucket(bucket).await?;
                return Err(EngineError::NoSuchVersion);
            };
            let id = version.record.stamp.id().to_string();
            let Some(object) = &version.record.object else {
                return Err(EngineError::DeleteMarker { version_id: id, by_id: true });
            };
            let headers = record::ObjectHeaders { tags: tags.clone(), ..object.headers.clone() };
            let tagged = ObjectRecord { headers, ..object.clone() };
            let entry = keys::version(bucket, key, &version.record.stamp.token);
            let mut txn = Txn::new()
                .when(Compare::mod_revision_is(entry, version.revision))
                .when(Compare::mod_revision_is(keys::object(bucket, key), state.current.map_or(0, |c| c.revision)));
            put_version(bucket, key, &tagged, None, &mut txn);
            let resp = self.meta().txn(txn).await?;
            if resp.succeeded {
                return Ok(Some(resp.revision));
            }
        }
        Err(EngineError::Contended)
    }

    /// Rewrites the object record of version `version_id` (`None`: the current one) with
    /// `change`, and the current object's `o/` copy when it is that version, in one transaction
    /// comparing both. Returns the version id.
    pub(crate) async fn rewrite_version(
        &self,
        bucket: &str,
        key: &str,
        version_id: Option<&str>,
        change: impl Fn(&ObjectRecord) -> EngineResult<ObjectRecord>,
    ) -> EngineResult<String> {
        for _ in 0..MAX_ATTEMPTS {
            let (token, state) = match version_id {
                Some(id) => self.resolve(bucket, key, id).await?,
                None => {
                    let state = self.read_key_state(bucket, key).await?;
                    let stamp = state.current.as_ref().and_then(|c| c.record.version.as_ref());
                    (stamp.map(|v| v.token.clone()), state)
                }
            };
            let found = match &token {
                Some(token) => self.read_stored_version(bucket, key, token).await?,
                None => None,
            };
            let Some(version) = found else {
                self.bucket(bucket).await?;
                return Err(if version_id.is_some() { EngineError::NoSuchVersion } else { EngineError::NoSuchKey });
            };
            let id = version.record.stamp.id().to_string();
            let Some(object) = &version.record.object else {
                return Err(EngineError::DeleteMarker { version_id: id, by_id: true });
            };
            let changed = change(object)?;
            let stamp = &version.record.stamp;
            let current_revision = state.current.as_ref().map_or(0, |c| c.revision);
            let current = state.current.filter(|c| c.record.version.as_ref() == Some(stamp));
            let mut txn =
                Txn::new().when(Compare::mod_revision_is(keys::version(bucket, key, &stamp.token), version.revision));
            put_version(bucket, key, &changed, None, &mut txn);
            match &current {
                Some(current) => {
                    let copy = object_change(bucket, key, Some(current), Some((&changed, current.inline.as_ref())));
                    txn.compares.extend(copy.compares);
                    txn.ops.extend(copy.ops);
                }
                None => txn.compares.push(Compare::mod_revision_is(keys::object(bucket, key), current_revision)),
            }
            if self.meta().txn(txn).await?.succeeded {
                return Ok(id);
            }
        }
        Err(EngineError::Contended)
    }

    /// Whether a bucket has any version or delete marker left (DeleteBucket needs none).
    pub(crate) async fn has_versions(&self, bucket: &str) -> EngineResult<bool> {
        let page = self.meta().range(RangeRequest::prefix(keys::versions_prefix(bucket)).limit(1)).await?;
        Ok(!page.kvs.is_empty())
    }

    /// S3 ListObjectVersions: versions and delete markers by key, newest first within a key.
    pub async fn list_versions(&self, bucket: &str, req: &VersionListRequest) -> EngineResult<VersionPage> {
        self.bucket(bucket).await?;
        let base = keys::versions_prefix(bucket);
        let max = req.max_keys.min(MAX_LIST_VERSIONS);
        let delimiter = req.delimiter.as_deref().filter(|d| !d.is_empty());
        let full_prefix = format!("{base}{}", req.prefix);
        let end = prefix_end(full_prefix.as_bytes()).map_or(Bound::Unbounded, |e| Bound::Excluded(Bytes::from(e)));
        let (mut start, mut listed_key) = self.versions_start(bucket, &base, &full_prefix, req, delimiter).await?;
        let mut page = VersionPage::default();
        let mut count = 0;
        loop {
            let range = RangeRequest { start: start.clone(), end: end.clone(), limit: MAX_LIST_VERSIONS + 1 };
            let resp = self.meta().range(range).await?;
            let mut jumped = false;
            for kv in &resp.kvs {
                start = Bound::Excluded(kv.key.clone());
                let Some((_, key, token)) = keys::parse_version_key(&kv.key) else { continue };
                if let Some(prefix) = delimiter.and_then(|d| crate::list::common_prefix(key, &req.prefix, d)) {
                    if count == max {
                        page.is_truncated = true;
                        return Ok(page);
                    }
                    count += 1;
                    page.next_key_marker = Some(prefix.clone());
                    page.next_version_id_marker = None;
                    page.common_prefixes.push(prefix.clone());
                    match prefix_end(format!("{base}{prefix}").as_bytes()) {
                        Some(next) => start = Bound::Included(Bytes::from(next)),
                        None => return Ok(page),
                    }
                    jumped = true;
                    break;
                }
                if token.is_none() {
                    continue; // the head
                }
                if count == max {
                    page.is_truncated = true;
                    return Ok(page);
                }
                count += 1;
                let version: VersionRecord = record::decode(&kv.value)?;
                // Versions list newest first: the first one of a key is its latest.
                let is_latest = listed_key.as_deref() != Some(key);
                if is_latest {
                    listed_key = Some(key.to_string());
                }
                page.next_key_marker = Some(key.to_string());
                page.next_version_id_marker = Some(version.stamp.id().to_string());
                page.versions.push(ListedVersion { key: key.to_string(), is_latest, version });
            }
            if !jumped && !resp.more {
                page.next_key_marker = None;
                page.next_version_id_marker = None;
                return Ok(page);
            }
        }
    }

    /// Where a version listing starts: after the key marker's versions, or after the version
    /// the version-id marker names (then also that key, whose next versions are not its latest).
    async fn versions_start(
        &self,
        bucket: &str,
        base: &str,
        full_prefix: &str,
        req: &VersionListRequest,
        delimiter: Option<&str>,
    ) -> EngineResult<(Bound<Bytes>, Option<String>)> {
        let Some(marker) = req.key_marker.as_deref().filter(|m| !m.is_empty()) else {
            return Ok((Bound::Included(Bytes::from(full_prefix.to_string())), None));
        };
        if let Some(version_id) = req.version_id_marker.as_deref().filter(|v| !v.is_empty()) {
            let (token, _) = self.resolve(bucket, marker, version_id).await?;
            if let Some(token) = token {
                return Ok((Bound::Excluded(keys::version(bucket, marker, &token)), Some(marker.to_string())));
            }
        }
        let rolled_up = delimiter.and_then(|d| crate::list::common_prefix(marker, &req.prefix, d));
        let past = match rolled_up.filter(|p| p == marker) {
            Some(prefix) => prefix_end(format!("{base}{prefix}").as_bytes()),
            None => Some(format!("{}\u{1}", keys::versions_of(bucket, marker).trim_end_matches('\0')).into_bytes()),
        };
        Ok((past.map_or(Bound::Unbounded, |p| Bound::Included(Bytes::from(p))), None))
    }
}

#[derive(Clone, Debug, Default)]
pub struct VersionListRequest {
    pub prefix: String,
    pub delimiter: Option<String>,
    pub key_marker: Option<String>,
    pub version_id_marker: Option<String>,
    pub max_keys: usize,
}

#[derive(Clone, Debug)]
pub struct ListedVersion {
    pub key: String,
    pub is_latest: bool,
    pub version: VersionRecord,
}

#[derive(Clone, Debug, Default)]
pub struct VersionPage {
    pub versions: Vec<ListedVersion>,
    pub common_prefixes: Vec<String>,
    pub is_truncated: bool,
    pub next_key_marker: Option<String>,
    pub next_version_id_marker: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_sort_newest_first_and_stay_ahead_of_older_ones() {
        let old = token_at(1_000);
        let new = token_at(2_000);
        assert!(new < old, "newer versions sort first");
        let far_future = token_at(u64::MAX / 2);
        let next = newer_token(&[&far_future, ""]);
        assert!(next < far_future, "a skewed clock never orders a new version behind an older one");
        assert_eq!(micros_of(&token_at(42)), Some(42));
        assert!(token_of("null").unwrap().is_none());
        assert_eq!(token_of(&new).unwrap(), Some(new.as_str()));
        for bad in ["", "xyz", "0123456789ABCDEF", "0123456789abcde"] {
            assert!(token_of(bad).is_err(), "{bad}");
        }
    }
}
