//! How engine state is laid out in the metadata store's key space. Bucket names never contain
//! `/`, so `<prefix>/<bucket>/` ranges never overlap between buckets.

use bytes::Bytes;

/// `b/<bucket>` → [`crate::record::BucketRecord`].
pub fn bucket(bucket: &str) -> Bytes {
    Bytes::from(format!("b/{bucket}"))
}

pub const BUCKETS_PREFIX: &str = "b/";

/// `o/<bucket>/<key>` → [`crate::record::ObjectRecord`].
pub fn object(bucket: &str, key: &str) -> Bytes {
    Bytes::from(format!("o/{bucket}/{key}"))
}

/// Every object record of every bucket.
pub const OBJECTS_ROOT: &str = "o/";

pub fn objects_prefix(bucket: &str) -> String {
    format!("o/{bucket}/")
}

/// `i/<bucket>/<key>` → the bytes of a small object stored inline in metadata. Kept apart from
/// the record so listings never read object bodies.
pub fn inline(bucket: &str, key: &str) -> Bytes {
    Bytes::from(format!("i/{bucket}/{key}"))
}

/// `u/<bucket>/<key>\0<upload id>` → [`crate::record::UploadRecord`]; ordered by key like S3's
/// ListMultipartUploads.
pub fn upload(bucket: &str, key: &str, upload_id: &str) -> Bytes {
    Bytes::from(format!("u/{bucket}/{key}\0{upload_id}"))
}

pub fn uploads_prefix(bucket: &str) -> String {
    format!("u/{bucket}/")
}

/// `p/<upload id>/<part number, 5 digits>` → [`crate::record::PartRecord`].
pub fn part(upload_id: &str, part_number: u32) -> Bytes {
    Bytes::from(format!("p/{upload_id}/{part_number:05}"))
}

pub fn parts_prefix(upload_id: &str) -> String {
    format!("p/{upload_id}/")
}

/// `x/<blob id>` → the key of the record that owns the blob. Lets orphan collection ask "is this
/// blob referenced?" without scanning every record.
pub fn blob_ref(blob: meridian_blob::BlobId) -> Bytes {
    Bytes::from(format!("x/{blob}"))
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

/// Suffix of the marker left where an object expired; object keys never contain NUL, so markers
/// never collide with objects, and watches see the marker's creation as the expiry.
pub const EXPIRED_MARKER: &str = "\0expired";

pub fn expired_marker(bucket: &str, key: &str) -> Bytes {
    Bytes::from(format!("o/{bucket}/{key}{EXPIRED_MARKER}"))
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

/// `k/a/<access key id>` → the key's name.
pub fn key_id(access_key_id: &str) -> Bytes {
    Bytes::from(format!("k/a/{access_key_id}"))
}
