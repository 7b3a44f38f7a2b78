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
