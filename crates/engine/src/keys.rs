//! How engine state is laid out in the metadata store's key space: every prefix, every key
//! builder and every key parse of the engine lives here, and nowhere else. Bucket names never
//! contain `/`, so `<prefix>/<bucket>/` ranges never overlap between buckets; object keys never
//! contain NUL, so NUL separates a key from what follows it.
//!
//! | key | value | written by |
//! |---|---|---|
//! | `b/<bucket>` | [`crate::record::BucketRecord`] (owner, grants, public read, lifecycle rules, location) | bucket create/delete and settings, grant changes, key deletion (drops its grants) |
//! | `o/<bucket>/<key>` | [`crate::record::ObjectRecord`] | put, copy, complete multipart, delete, KV batch, lifecycle, reaper |
//! | `i/<bucket>/<key>` | the bytes of an object stored inline | put/copy/KV batch of small objects (same txn as its `o/`) |
//! | `u/<bucket>/<key>\0<upload id>` | [`crate::record::UploadRecord`] | create/complete/abort multipart |
//! | `p/<upload id>/<part number, 5 digits>` | [`crate::record::PartRecord`] | upload part, complete/abort |
//! | `x/<blob id>` | the key of the record that owns the blob | every write that stores or frees a blob |
//! | `e/<instant, ms as 16 hex digits>/<target key>` | empty | writes with a TTL, lifecycle, the reaper (targets: `o/`, `m/` and `u/` keys) |
//! | `m/<bucket>/<key>\0<revision, 16 hex digits>` | [`crate::ttl::ExpiredMarker`] | the reaper, when it removes an expired object (revision: of the write that expired) |
//! | `o/<bucket>/<key>\0expired` | [`crate::ttl::ExpiredMarker`] | nothing any more: the layout before `m/`; still recognized and reaped |
//! | `l/<bucket>/<name>` | [`crate::locks::LockRecord`] | lock acquire/renew/release |
//! | `f/<bucket>/<name>` | the lock's latest fencing token, in decimal | lock acquire |
//! | `k/n/<key name>` | [`crate::iam::KeyRecord`] | access key create/rotate/delete/settings, the admin key at start |
//! | `k/a/<access key id>` | a copy of the [`crate::iam::KeyRecord`] (older databases: the key's name) | the same transactions as its `k/n/` |
//! | `n/<node id>` | [`crate::cluster::NodeRecord`] | each node's heartbeat; `forget_node` deletes |
//! | `c/<node id>` | the node's change cursor: the revision, in decimal, through which it has handled every object change ([`crate::follow`]) | the node's change follower, at most once a second; `forget_node` deletes |
//! | `s/<site name>` | [`crate::website::SiteRecord`] | `meridian admin site put/delete` |
//! | `v/<bucket>/<key>` | [`crate::record::VersionHead`] (versioned buckets) | delete markers, version removals, suspended writes and adoptions of the key (a versioned PUT only compares it) |
//! | `v/<bucket>/<key>\0<token>` | [`crate::record::VersionRecord`]: one version (or delete marker), newest first | the same transactions |
//! | `i/<bucket>/<key>\0<token>` | the bytes of a version stored inline | the transaction that writes the version |
//! | `t/<bucket>/<key>` | empty: the key was deleted in a shadowing bucket, so its source's copy stays hidden ([`crate::shadow`]) | a delete in a shadowing bucket (a KV batch's in its transaction); removing the shadow deletes them all |
//! | `d/<bucket>/<target>/<ms, 16 hex digits><random, 16 hex digits>` | [`crate::notify::StoredEvent`]: an event notification not yet delivered; its mod revision is the object change's commit revision | the transaction of the object change (put, copy, complete multipart, delete, delete marker); the delivery worker deletes it once the target answered 2xx |
//! | `h/<bucket>/<name>` | [`crate::snapshot::SnapshotRecord`]: a bucket snapshot; its create revision is the snapshot's revision | `meridian admin bucket snapshot`/`fork` (with the bucket record, whose snapshot count changes) |
//! | `z/<bucket>/<key>\0<token>` | [`crate::snapshot::RetainedVersion`]: a version removed while a snapshot still shows it; create revision = removal | the version's removal; the snapshot sweep deletes it once no snapshot shows it |

use bytes::Bytes;

/// `b/<bucket>` → [`crate::record::BucketRecord`].
pub fn bucket(bucket: &str) -> Bytes {
    Bytes::from(format!("{BUCKETS_PREFIX}{bucket}"))
}

pub const BUCKETS_PREFIX: &str = "b/";

/// The bucket name of a bucket record's key.
pub fn parse_bucket_key(key: &[u8]) -> Option<&str> {
    std::str::from_utf8(key.strip_prefix(BUCKETS_PREFIX.as_bytes())?).ok()
}

/// `t/<bucket>/<key>` → empty: a key deleted in a shadowing bucket.
pub fn shadow_tombstone(bucket: &str, key: &str) -> Bytes {
    Bytes::from(format!("{}{key}", shadow_tombstones_prefix(bucket)))
}

pub fn shadow_tombstones_prefix(bucket: &str) -> String {
    format!("t/{bucket}/")
}

/// `o/<bucket>/<key>` → [`crate::record::ObjectRecord`].
pub fn object(bucket: &str, key: &str) -> Bytes {
    Bytes::from(format!("{OBJECTS_ROOT}{bucket}/{key}"))
}

/// Every object record of every bucket.
pub const OBJECTS_ROOT: &str = "o/";

pub fn objects_prefix(bucket: &str) -> String {
    format!("{OBJECTS_ROOT}{bucket}/")
}

/// The bucket and object key of an object record's key; `None` for anything else, including
/// expired-object markers of the old layout that still sit under `o/`.
pub fn parse_object_key(key: &[u8]) -> Option<(&str, &str)> {
    let (bucket, object) = split_bucket(key, OBJECTS_ROOT)?;
    (!object.contains('\0')).then_some((bucket, object))
}

/// `i/<bucket>/<key>` → the bytes of a small object stored inline in metadata. Kept apart from
/// the record so listings never read object bodies.
pub fn inline(bucket: &str, key: &str) -> Bytes {
    Bytes::from(format!("i/{bucket}/{key}"))
}

/// `v/<bucket>/<key>` → [`crate::record::VersionHead`]. Sorts right before the key's versions.
pub fn version_head(bucket: &str, key: &str) -> Bytes {
    Bytes::from(format!("{VERSIONS_ROOT}{bucket}/{key}"))
}

/// `v/<bucket>/<key>\0<token>` → [`crate::record::VersionRecord`]. Tokens are fixed-width hex,
/// smaller for newer versions, so a key's versions list newest first.
pub fn version(bucket: &str, key: &str, token: &str) -> Bytes {
    Bytes::from(format!("{}{token}", versions_of(bucket, key)))
}

const VERSIONS_ROOT: &str = "v/";

/// Every version of one key (not its head).
pub fn versions_of(bucket: &str, key: &str) -> String {
    format!("{VERSIONS_ROOT}{bucket}/{key}\0")
}

/// Every version head and version of a bucket.
pub fn versions_prefix(bucket: &str) -> String {
    format!("{VERSIONS_ROOT}{bucket}/")
}

/// `i/<bucket>/<key>\0<token>` → the bytes of a version stored inline (the current version's
/// bytes are also at [`inline`], which reads of the current object use).
pub fn version_inline(bucket: &str, key: &str, token: &str) -> Bytes {
    Bytes::from(format!("i/{bucket}/{key}\0{token}"))
}

/// The bucket, key and token (`None`: the key's head) of a `v/` key.
pub fn parse_version_key(key: &[u8]) -> Option<(&str, &str, Option<&str>)> {
    let (bucket, rest) = split_bucket(key, VERSIONS_ROOT)?;
    Some(match rest.split_once('\0') {
        Some((key, token)) => (bucket, key, Some(token)),
        None => (bucket, rest, None),
    })
}

/// `h/<bucket>/<name>` → [`crate::snapshot::SnapshotRecord`]. The key's create revision is the
/// revision the snapshot records the bucket at.
pub fn snapshot(bucket: &str, name: &str) -> Bytes {
    Bytes::from(format!("{}{name}", snapshots_of(bucket)))
}

const SNAPSHOTS_ROOT: &str = "h/";

/// Every snapshot of a bucket.
pub fn snapshots_of(bucket: &str) -> String {
    format!("{SNAPSHOTS_ROOT}{bucket}/")
}

/// The snapshot name of an `h/` key.
pub fn parse_snapshot_key(key: &[u8]) -> Option<(&str, &str)> {
    split_bucket(key, SNAPSHOTS_ROOT)
}

/// `z/<bucket>/<key>\0<token>` → [`crate::snapshot::RetainedVersion`]: a version removed from
/// `v/` that a snapshot still shows. Its blobs' owner keys point here and its inline bytes stay
/// at [`version_inline`]; the key's create revision is the revision of the removal.
pub fn retained(bucket: &str, key: &str, token: &str) -> Bytes {
    Bytes::from(format!("{RETAINED_ROOT}{bucket}/{key}\0{token}"))
}

const RETAINED_ROOT: &str = "z/";

/// Every retained version of a bucket.
pub fn retained_prefix(bucket: &str) -> String {
    format!("{RETAINED_ROOT}{bucket}/")
}

/// Every retained version of one key.
pub fn retained_of(bucket: &str, key: &str) -> String {
    format!("{RETAINED_ROOT}{bucket}/{key}\0")
}

/// The bucket, key and token of a `z/` key.
pub fn parse_retained_key(key: &[u8]) -> Option<(&str, &str, &str)> {
    let (bucket, rest) = split_bucket(key, RETAINED_ROOT)?;
    let (key, token) = rest.split_once('\0')?;
    Some((bucket, key, token))
}

/// `u/<bucket>/<key>\0<upload id>` → [`crate::record::UploadRecord`]; ordered by key like S3's
/// ListMultipartUploads.
pub fn upload(bucket: &str, key: &str, upload_id: &str) -> Bytes {
    Bytes::from(format!("{UPLOADS_ROOT}{bucket}/{key}\0{upload_id}"))
}

const UPLOADS_ROOT: &str = "u/";

pub fn uploads_prefix(bucket: &str) -> String {
    format!("{UPLOADS_ROOT}{bucket}/")
}

/// The first key after every upload of `key` (upload ids follow the NUL, and `\u{1}` sorts
/// right after it).
pub fn past_uploads_of(bucket: &str, key: &str) -> Bytes {
    Bytes::from(format!("{UPLOADS_ROOT}{bucket}/{key}\u{1}"))
}

/// `p/<upload id>/<part number, 5 digits>` → [`crate::record::PartRecord`].
pub fn part(upload_id: &str, part_number: u32) -> Bytes {
    Bytes::from(format!("p/{upload_id}/{part_number:05}"))
}

pub fn parts_prefix(upload_id: &str) -> String {
    format!("p/{upload_id}/")
}

/// The upload id and part number of a part record's key.
pub fn parse_part_key(key: &[u8]) -> Option<(&str, u32)> {
    let (upload_id, number) = split_bucket(key, "p/")?;
    Some((upload_id, number.parse().ok()?))
}

/// `x/<blob id>` → the key of the record that owns the blob. Lets orphan collection ask "is this
/// blob referenced?" without scanning every record.
pub fn blob_ref(blob: meridian_blob::BlobId) -> Bytes {
    Bytes::from(format!("{BLOB_REFS_PREFIX}{blob}"))
}

/// `e/<expiry instant, ms as 16 hex digits>/<target key>` → empty. Ordered by time, so the
/// reaper reads only what is due. The target is an object key, an expired-object marker or an
/// upload key.
pub fn expiry(at_ms: i64, target: &[u8]) -> Bytes {
    let mut key = format!("{EXPIRY_PREFIX}{:016x}/", at_ms.max(0)).into_bytes();
    key.extend_from_slice(target);
    Bytes::from(key)
}

pub const EXPIRY_PREFIX: &str = "e/";

/// The instant and target of an expiry index key.
pub fn parse_expiry(key: &[u8]) -> Option<(i64, &[u8])> {
    let rest = key.strip_prefix(EXPIRY_PREFIX.as_bytes())?;
    let (hex, target) = (rest.get(..16)?, rest.get(17..)?);
    let at = i64::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
    Some((at, target))
}

/// `m/<bucket>/<key>\0<revision>` → [`crate::ttl::ExpiredMarker`]: left by the reaper in the
/// transaction that removes an expired object (whose write had `revision`), so a watch can
/// report that removal as an expiry. Outside `o/`, so object scans never meet markers.
pub fn expired_marker(bucket: &str, key: &str, revision: u64) -> Bytes {
    Bytes::from(format!("{}{revision:016x}", expired_markers_of(bucket, key)))
}

const MARKERS_ROOT: &str = "m/";

/// Every marker of one object key, whatever the revision.
pub fn expired_markers_of(bucket: &str, key: &str) -> String {
    format!("{MARKERS_ROOT}{bucket}/{key}\0")
}

/// Suffix of the markers of the old layout, `o/<bucket>/<key>\0expired`.
const LEGACY_MARKER_SUFFIX: &str = "\0expired";

/// `u/<bucket>/<key>\0<upload id>` split into its parts.
pub struct UploadKey<'a> {
    pub bucket: &'a str,
    pub key: &'a str,
    pub upload_id: &'a str,
}

/// What an expiry index entry points at.
pub enum ExpiryTarget<'a> {
    Object {
        bucket: &'a str,
        key: &'a str,
    },
    Upload(UploadKey<'a>),
    /// A marker (either layout): removed when due.
    ExpiredMarker,
}

/// Reads the target of an expiry index entry; `None` if it is none of the kinds above.
pub fn parse_expiry_target(target: &[u8]) -> Option<ExpiryTarget<'_>> {
    if target.starts_with(MARKERS_ROOT.as_bytes()) || is_legacy_marker(target) {
        return Some(ExpiryTarget::ExpiredMarker);
    }
    if let Some((bucket, key)) = parse_object_key(target) {
        return Some(ExpiryTarget::Object { bucket, key });
    }
    parse_upload_key(target).map(ExpiryTarget::Upload)
}

/// The parts of an upload record's key.
pub fn parse_upload_key(key: &[u8]) -> Option<UploadKey<'_>> {
    let (bucket, rest) = split_bucket(key, UPLOADS_ROOT)?;
    let (key, upload_id) = rest.split_once('\0')?;
    Some(UploadKey { bucket, key, upload_id })
}

/// Whether `key` is an expired-object marker of the old layout (under `o/`).
pub fn is_legacy_marker(key: &[u8]) -> bool {
    key.starts_with(OBJECTS_ROOT.as_bytes()) && key.ends_with(LEGACY_MARKER_SUFFIX.as_bytes())
}

/// `<root><first>/<rest>` → `(first, rest)`.
fn split_bucket<'a>(key: &'a [u8], root: &str) -> Option<(&'a str, &'a str)> {
    let rest = std::str::from_utf8(key.strip_prefix(root.as_bytes())?).ok()?;
    rest.split_once('/')
}

/// `l/<bucket>/<name>` → [`crate::locks::LockRecord`].
pub fn lock(bucket: &str, name: &str) -> Bytes {
    Bytes::from(format!("l/{bucket}/{name}"))
}

/// `f/<bucket>/<name>` → the lock's latest fencing token, in decimal. Changes only when the lock
/// is granted, so writes can compare against it.
pub fn fence(bucket: &str, name: &str) -> Bytes {
    Bytes::from(format!("f/{bucket}/{name}"))
}

/// `k/n/<key name>` → [`crate::iam::KeyRecord`].
pub fn key_name(name: &str) -> Bytes {
    Bytes::from(format!("{KEY_NAMES_PREFIX}{name}"))
}

pub const KEY_NAMES_PREFIX: &str = "k/n/";

/// `k/a/<access key id>` → a copy of the key's [`crate::iam::KeyRecord`], so a signature check
/// is one read (written by older versions: just the key's name).
pub fn key_id(access_key_id: &str) -> Bytes {
    Bytes::from(format!("k/a/{access_key_id}"))
}

/// `n/<node id>` → [`crate::cluster::NodeRecord`].
pub fn node(id: &str) -> Bytes {
    Bytes::from(format!("{NODES_PREFIX}{id}"))
}

pub const NODES_PREFIX: &str = "n/";

/// `c/<node id>` → the revision (decimal) through which the node's change follower has handled
/// every object change. Outside the range the follower watches, so writing it is no change.
pub fn change_cursor(node_id: &str) -> Bytes {
    Bytes::from(format!("c/{node_id}"))
}

/// The first key of the range the change follower watches: object records (`o/`) through blob
/// owners (`x/`). Uploads (`u/`), parts (`p/`) and sites (`s/`) sort in between; the follower
/// skips them.
pub const CHANGES_FROM: &str = OBJECTS_ROOT;
/// The end (exclusive) of that range: just past every `x/` key.
pub const CHANGES_TO: &str = "x0";
/// `y/<bucket>/<key>\0<blob id>` → a [`crate::repair::Repair`]: regions that missed the write
/// whose first blob is `blob` (a multi-region bucket's write acknowledged on the quorum, or a
/// global bucket's replicas) and must still get a copy. One marker per write, so a newer version
/// of the key never replaces the marker of an older one. Outside the range the change follower
/// watches. (Markers of older databases are `y/<bucket>/<key>`.)
pub fn repair(bucket: &str, key: &str, blob: meridian_blob::BlobId) -> Bytes {
    Bytes::from(format!("{REPAIRS_PREFIX}{bucket}/{key}\0{blob}"))
}

/// Prefix of every `y/` key.
pub const REPAIRS_PREFIX: &str = "y/";

/// Every repair marker of one object key (the old layout's included).
pub fn repairs_of(bucket: &str, key: &str) -> String {
    format!("{REPAIRS_PREFIX}{bucket}/{key}")
}

/// The bucket and object key of a `y/` key.
pub fn parse_repair_key(key: &[u8]) -> Option<(&str, &str)> {
    let (bucket, rest) = split_bucket(key, REPAIRS_PREFIX)?;
    Some((bucket, rest.split_once('\0').map_or(rest, |(key, _)| key)))
}

/// Prefix of `x/<blob id>`.
pub const BLOB_REFS_PREFIX: &str = "x/";

/// The blob of an `x/<blob id>` key.
pub fn parse_blob_ref(key: &[u8]) -> Option<meridian_blob::BlobId> {
    std::str::from_utf8(key.strip_prefix(BLOB_REFS_PREFIX.as_bytes())?).ok()?.parse().ok()
}

/// `s/<site name>` → [`crate::website::SiteRecord`]: a site the web edge serves.
pub fn site(name: &str) -> Bytes {
    Bytes::from(format!("{SITES_PREFIX}{name}"))
}

pub const SITES_PREFIX: &str = "s/";

/// `d/<bucket>/<target>/<id>` → [`crate::notify::StoredEvent`]. Outside the range the change
/// follower watches. Ids start with the commit attempt's time, so the oldest events come first
/// in a range read; delivery orders them by mod revision.
pub fn event(bucket: &str, target: &str, id: &str) -> Bytes {
    Bytes::from(format!("{}{id}", events_of(bucket, target)))
}

/// Prefix of every `d/` key.
pub const EVENTS_ROOT: &str = "d/";
/// The end (exclusive) of every `d/` key.
pub const EVENTS_END: &str = "d0";

/// Every queued event of one bucket for one target.
pub fn events_of(bucket: &str, target: &str) -> String {
    format!("{EVENTS_ROOT}{bucket}/{target}/")
}

/// The first key after every queued event of one bucket for one target (`0` sorts right after `/`).
pub fn past_events_of(bucket: &str, target: &str) -> Bytes {
    Bytes::from(format!("{EVENTS_ROOT}{bucket}/{target}0"))
}

/// The bucket and target of a `d/` key.
pub fn parse_event_key(key: &[u8]) -> Option<(&str, &str)> {
    let (bucket, rest) = split_bucket(key, EVENTS_ROOT)?;
    Some((bucket, rest.split_once('/')?.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_keys_round_trip_and_markers_are_not_objects() {
        assert_eq!(parse_object_key(&object("b", "dir/k")), Some(("b", "dir/k")));
        assert_eq!(parse_object_key(b"o/b/k\0expired"), None);
        assert_eq!(parse_object_key(&upload("b", "k", "id")), None);
        assert_eq!(parse_object_key(b"o/no-slash"), None);
        assert!(!expired_marker("b", "k", 7).starts_with(OBJECTS_ROOT.as_bytes()));
        assert!(expired_marker("b", "k", 7).starts_with(expired_markers_of("b", "k").as_bytes()));
    }

    #[test]
    fn expiry_targets_are_told_apart() {
        let at = expiry(1234, &object("b", "k"));
        let (when, target) = parse_expiry(&at).unwrap();
        assert_eq!(when, 1234);
        assert!(matches!(parse_expiry_target(target), Some(ExpiryTarget::Object { bucket: "b", key: "k" })));
        let upload_key = upload("b", "dir/k", "u1");
        let Some(ExpiryTarget::Upload(u)) = parse_expiry_target(&upload_key) else { panic!("not an upload") };
        assert_eq!((u.bucket, u.key, u.upload_id), ("b", "dir/k", "u1"));
        assert!(matches!(parse_expiry_target(&expired_marker("b", "k", 3)), Some(ExpiryTarget::ExpiredMarker)));
        assert!(matches!(parse_expiry_target(b"o/b/k\0expired"), Some(ExpiryTarget::ExpiredMarker)));
        assert!(parse_expiry_target(b"zz/what").is_none());
    }

    #[test]
    fn buckets_parts_and_uploads_parse_back() {
        assert_eq!(parse_bucket_key(&bucket("photos")), Some("photos"));
        assert_eq!(parse_part_key(&part("up-1", 42)), Some(("up-1", 42)));
        assert_eq!(parse_part_key(b"p/up-1/x"), None);
        let blob = meridian_blob::BlobId::random();
        assert_eq!(parse_blob_ref(&blob_ref(blob)), Some(blob));
        assert_eq!(parse_blob_ref(b"x/zz"), None);
        let watched = CHANGES_FROM.as_bytes()..CHANGES_TO.as_bytes();
        assert!(watched.contains(&object("b", "k").as_ref()) && watched.contains(&blob_ref(blob).as_ref()));
        assert!(!watched.contains(&change_cursor("n1").as_ref()), "writing a cursor is not a change");
        assert!(past_uploads_of("b", "k") > upload("b", "k", "zzzz"));
        assert!(past_uploads_of("b", "k") < upload("b", "k/", "a"));
    }

    #[test]
    fn events_parse_back_and_stay_out_of_the_change_range() {
        let key = event("photos", "hook-1", "0000000000000001ff");
        assert_eq!(parse_event_key(&key), Some(("photos", "hook-1")));
        assert!(key.starts_with(events_of("photos", "hook-1").as_bytes()));
        assert!(key.as_ref() < past_events_of("photos", "hook-1").as_ref());
        assert!(past_events_of("photos", "hook-1").as_ref() < event("photos", "hook-10", "0").as_ref());
        assert!(key.as_ref() < EVENTS_END.as_bytes());
        let watched = CHANGES_FROM.as_bytes()..CHANGES_TO.as_bytes();
        assert!(!watched.contains(&key.as_ref()), "queued events are not object changes");
    }

    #[test]
    fn versions_sort_after_their_head_and_before_longer_keys() {
        let head = version_head("b", "a");
        let newer = version("b", "a", "0000000000000001");
        let older = version("b", "a", "00000000000000ff");
        assert!(head < newer && newer < older && older < version_head("b", "a/x"));
        assert!(older < version_head("b", "a0"));
        assert_eq!(parse_version_key(&head), Some(("b", "a", None)));
        assert_eq!(parse_version_key(&older), Some(("b", "a", Some("00000000000000ff"))));
        assert!(parse_object_key(&version("b", "a", "1")).is_none() && parse_blob_ref(&head).is_none());
        assert!(version_inline("b", "a", "1") != inline("b", "a"));
    }
}
