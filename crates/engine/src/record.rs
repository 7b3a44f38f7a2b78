//! The records the engine keeps in the metadata store, serialized as JSON so that fields can be
//! added without migrations and an operator can read them with etcdctl.

use std::collections::BTreeMap;

use bytes::Bytes;
use meridian_blob::BlobId;
use serde::{Deserialize, Serialize};

use crate::checksum::StoredChecksum;
use crate::error::{EngineError, EngineResult};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketRecord {
    pub created_ms: i64,
    /// Name of the key that created the bucket; it owns it.
    #[serde(default)]
    pub owner: String,
    /// Set while a DeleteBucket is checking emptiness: writers that see it treat the bucket as
    /// gone, and because setting it changes the record's revision, writers that read the bucket
    /// before it was set fail their commit and look again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleting_since_ms: Option<i64>,
    /// Permissions of other keys, by key name.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub grants: crate::iam::Grants,
    /// Anonymous GET/HEAD of objects allowed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub public_read: bool,
    /// Lifecycle rules (expiry and upload abort).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lifecycle: Vec<crate::lifecycle::LifecycleRule>,
    /// Where the bucket's bytes live.
    #[serde(default, skip_serializing_if = "Location::is_global")]
    pub location: Location,
    /// S3's website configuration (PutBucketWebsite); the web edge serves a public-read bucket
    /// that has one at `<bucket>.<web domain>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub website: Option<crate::website::WebsiteConfig>,
    /// S3's CORS configuration (PutBucketCors), answered by the S3 front end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<crate::cors::CorsConfig>,
    /// The bucket's tags (PutBucketTagging).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: crate::tagging::Tags,
    /// For a global bucket: how many regions keep a copy of each object's bytes (the writer's
    /// plus copies made in the background in the nearest others; `None`: the writer's only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    /// S3 versioning (PutBucketVersioning); `None`: never enabled, and never again once set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub versioning: Option<Versioning>,
    /// The bucket policy (PutBucketPolicy) as given; checked by `policy::Policy::parse`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// S3's Block Public Access settings (PutPublicAccessBlock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_access_block: Option<crate::policy::PublicAccessBlock>,
    /// S3's object ownership (PutBucketOwnershipControls).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_ownership: Option<crate::policy::ObjectOwnership>,
    /// Default encryption of new objects (PutBucketEncryption).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<crate::crypt::BucketEncryption>,
    /// S3's event notification rules (PutBucketNotificationConfiguration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notification: Option<crate::notify::NotificationConfig>,
    /// S3 Object Lock: set exactly when lock is enabled (then versioning stays Enabled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_lock: Option<crate::object_lock::LockConfig>,
    /// How many snapshots the bucket has (`h/` keys). Every snapshot change rewrites the record,
    /// and removing a version compares the record's revision, so the removal knows every
    /// snapshot that may still show the version.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub snapshots: u32,
    /// For a fork: the bucket and snapshot it started from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fork_of: Option<crate::snapshot::ForkOrigin>,
    /// Every object written before versioning was enabled has been made a version.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub versions_adopted: bool,
    /// The bucket of another S3 service this one shadows while moving in ([`crate::shadow`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<crate::shadow::ShadowSource>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl BucketRecord {
    /// Whether the bucket's public access block has the setting `which` on.
    pub fn blocks(&self, which: impl Fn(&crate::policy::PublicAccessBlock) -> bool) -> bool {
        self.public_access_block.as_ref().is_some_and(which)
    }

    /// Whether ACLs are disabled (object ownership BucketOwnerEnforced).
    pub fn acls_disabled(&self) -> bool {
        self.object_ownership == Some(crate::policy::ObjectOwnership::BucketOwnerEnforced)
    }

    /// Whether the public-read ACL lets anonymous requests read: not when the public access
    /// block ignores public ACLs or ACLs are disabled.
    pub fn acl_allows_public_read(&self) -> bool {
        self.public_read && !self.blocks(|b| b.ignore_public_acls) && !self.acls_disabled()
    }
}

/// Most copies a global bucket can ask for.
pub const MAX_REPLICAS: u32 = 16;

/// Where a new bucket's bytes live: its [`Location`] and, for a global bucket, how many regions
/// keep a copy ([`BucketRecord::replicas`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    pub location: Location,
    pub replicas: Option<u32>,
}

impl From<Location> for Placement {
    fn from(location: Location) -> Self {
        Placement { location, replicas: None }
    }
}

/// Parses a bucket's location constraint: a [`Location`], or `global;replicas=N` for a global
/// bucket whose objects are copied to N regions.
pub fn parse_placement(text: &str) -> EngineResult<Placement> {
    let Some((location, n)) = text.split_once(";replicas=") else { return Ok(Location::parse(text)?.into()) };
    let replicas = n.parse::<u32>().ok().filter(|n| (1..=MAX_REPLICAS).contains(n));
    match (Location::parse(location)?, replicas) {
        (Location::Global, Some(n)) => Ok(Placement { location: Location::Global, replicas: Some(n) }),
        _ => Err(EngineError::InvalidArgument(format!(
            "invalid bucket location {text:?}: replicas=N goes with a global bucket (global;replicas=N, N from 1 to {MAX_REPLICAS})"
        ))),
    }
}

/// The versioning state of a bucket that has had versioning enabled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Versioning {
    /// Every write and delete makes a new version with its own id.
    Enabled,
    /// Writes and deletes replace the `null` version; older versions stay.
    Suspended,
}

/// Which version of its key an object record is ([`crate::versions`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionStamp {
    /// 16 hex digits, smaller for newer versions of the same key: the version's place in the
    /// key's `v/` entries, and its version id unless it is the `null` version.
    pub token: String,
    /// The `null` version (written while versioning was suspended, or before it was enabled).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub null: bool,
}

impl VersionStamp {
    /// The id S3 clients see.
    pub fn id(&self) -> &str {
        if self.null { "null" } else { &self.token }
    }
}

/// One version of a key in a versioned bucket, at `v/<bucket>/<key>\0<token>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRecord {
    pub stamp: VersionStamp,
    pub modified_ms: i64,
    /// The object; `None`: a delete marker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<ObjectRecord>,
}

/// `v/<bucket>/<key>`: the newest version of a key (while it has no current object, whose stamp
/// names it otherwise) and its `null` version. Every versioned write of the key compares it, and
/// every one but a PUT (which rewrites `o/`) rewrites it, so they are serialized even when none
/// of them touches the key's `o/` record (delete markers).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionHead {
    /// Token of the newest version.
    pub latest: String,
    /// Token of the `null` version, if there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub null: Option<String>,
}

/// A bucket's location type: the consistency and durability model of its objects' bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Location {
    /// Bytes stay in the region that wrote them and follow readers through caches.
    #[default]
    Global,
    /// Every write (and every strong read) is served by a node of this region; other regions
    /// forward to it.
    Pinned { region: String },
    /// A write is acknowledged only once its bytes are durable in every one of these regions
    /// (or in `write_quorum` of them), so losing a region loses nothing.
    MultiRegion {
        regions: Vec<String>,
        /// How many of the regions must hold the bytes before a write is acknowledged (`None`:
        /// all of them); the others get their copy in the background.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        write_quorum: Option<usize>,
    },
}

impl Location {
    pub fn is_global(&self) -> bool {
        *self == Location::Global
    }

    /// How many regions must hold an object's bytes before its write is acknowledged (1 but
    /// for multi-region buckets).
    pub fn write_quorum(&self) -> usize {
        match self {
            Location::MultiRegion { regions, write_quorum } => write_quorum.unwrap_or(regions.len()),
            _ => 1,
        }
    }

    /// Parses `global`, `pinned:REGION` or `multi:R1,R2,...[;quorum=N]`.
    pub fn parse(text: &str) -> EngineResult<Location> {
        let bad = || {
            EngineError::InvalidArgument(format!(
                "invalid bucket location {text:?}: use global, pinned:REGION or multi:REGION1,REGION2[,...][;quorum=N] \
                 (N from 1 to the number of regions)"
            ))
        };
        let (text, quorum) = match text.split_once(";quorum=") {
            Some((list, n)) => (list, Some(n.parse::<usize>().map_err(|_| bad())?)),
            None => (text, None),
        };
        if quorum.is_some() && !text.starts_with("multi:") {
            return Err(bad());
        }
        let valid = |r: &str| {
            !r.is_empty() && r.len() <= 64 && r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        match text.split_once(':') {
            None if text == "global" => Ok(Location::Global),
            Some(("pinned", region)) if valid(region) => Ok(Location::Pinned { region: region.to_string() }),
            Some(("multi", list)) => {
                let mut regions: Vec<String> = list.split(',').map(|r| r.trim().to_string()).collect();
                regions.sort();
                regions.dedup();
                if regions.len() < 2
                    || !regions.iter().all(|r| valid(r))
                    || quorum.is_some_and(|n| n == 0 || n > regions.len())
                {
                    return Err(bad());
                }
                Ok(Location::MultiRegion { regions, write_quorum: quorum })
            }
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Global => write!(f, "global"),
            Location::Pinned { region } => write!(f, "pinned:{region}"),
            Location::MultiRegion { regions, write_quorum: None } => write!(f, "multi:{}", regions.join(",")),
            Location::MultiRegion { regions, write_quorum: Some(n) } => {
                write!(f, "multi:{};quorum={n}", regions.join(","))
            }
        }
    }
}

/// The standard headers and user metadata stored with an object and returned on reads.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectHeaders {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_encoding: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_disposition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_language: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<String>,
    /// The `Expires` header exactly as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// `x-amz-meta-*` pairs, names lower-cased without the prefix.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub user_metadata: BTreeMap<String, String>,
    /// The object's tags (`x-amz-tagging`, PutObjectTagging).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: crate::tagging::Tags,
    /// The version's S3 Object Lock retention and legal hold (records from before have none).
    #[serde(default, skip_serializing_if = "crate::object_lock::ObjectLock::is_empty")]
    pub lock: crate::object_lock::ObjectLock,
}

/// S3's limit on user metadata (names plus values).
pub const MAX_USER_METADATA_BYTES: usize = 2048;

impl ObjectHeaders {
    pub fn validate(&self) -> EngineResult<()> {
        let size: usize = self.user_metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
        if size > MAX_USER_METADATA_BYTES {
            return Err(EngineError::InvalidArgument(format!(
                "your metadata headers exceed the maximum allowed metadata size: {size} bytes, the limit is {MAX_USER_METADATA_BYTES}"
            )));
        }
        crate::tagging::validate_object_tags(&self.tags)
    }
}

/// Where an object's bytes are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DataLayout {
    /// In the metadata store under the object's inline key.
    Inline,
    /// One blob.
    Blob {
        id: BlobId,
        /// CRC32C of each [`crate::CHUNK_SIZE`] chunk, so a copy fetched from another node can be
        /// verified chunk by chunk before it is cached.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        digests: Vec<u32>,
        /// Nodes (and shared stores) holding the blob (empty: this node, in records from before
        /// regions).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        holders: Vec<Holder>,
    },
    /// The blobs of a completed multipart upload, in order.
    Parts { parts: Vec<PartLayout> },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartLayout {
    pub blob: BlobId,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub digests: Vec<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holders: Vec<Holder>,
    /// The part's data key, wrapped (encrypted objects: each part has its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wrapped_key: Option<String>,
}

impl DataLayout {
    pub fn blobs(&self) -> Vec<BlobId> {
        match self {
            DataLayout::Inline => Vec::new(),
            DataLayout::Blob { id, .. } => vec![*id],
            DataLayout::Parts { parts } => parts.iter().map(|p| p.blob).collect(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRecord {
    pub size: u64,
    /// Hex MD5 of the bytes, or `<hex md5 of part md5s>-<parts>` for multipart objects; without
    /// quotes.
    pub etag: String,
    pub modified_ms: i64,
    #[serde(default)]
    pub headers: ObjectHeaders,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<StoredChecksum>,
    pub data: DataLayout,
    /// When set, the object is invisible from this instant on (KV TTL / lifecycle expiry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<i64>,
    /// Set in versioned buckets: which version this is. Its blobs are then owned by its `v/`
    /// entry, not by the `o/` record (which is only the current version's copy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<VersionStamp>,
    /// How the stored bytes are encrypted (`None`: they are the plaintext).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<crate::crypt::Encryption>,
}

/// A node whose blob store holds a blob.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub node: String,
    pub region: String,
    /// The id of the shared blob store (an S3 bucket and prefix) the node wrote the blob to:
    /// every node on that store reads it from there, whether the writer is alive or not. `None`:
    /// the node's own disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
}

impl ObjectRecord {
    /// True when the object has expired at `now_ms`: it must then be treated as absent.
    pub fn is_expired(&self, now_ms: i64) -> bool {
        self.expires_at_ms.is_some_and(|at| at <= now_ms)
    }

    /// Sizes of the parts of a multipart object (a single part otherwise).
    pub fn part_sizes(&self) -> Vec<u64> {
        match &self.data {
            DataLayout::Parts { parts } => parts.iter().map(|p| p.size).collect(),
            _ => vec![self.size],
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRecord {
    pub key: String,
    pub upload_id: String,
    pub initiated_ms: i64,
    #[serde(default)]
    pub headers: ObjectHeaders,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum_algorithm: Option<crate::checksum::ChecksumAlgorithm>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub full_object_checksum: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<i64>,
    /// When a lifecycle rule aborts the upload if it is still incomplete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort_at_ms: Option<i64>,
    /// How every part is encrypted (without a data key: each part has its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<crate::crypt::Encryption>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartRecord {
    pub size: u64,
    pub etag: String,
    pub modified_ms: i64,
    pub blob: BlobId,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub digests: Vec<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holders: Vec<Holder>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<StoredChecksum>,
    /// The part's data key, wrapped (parts of an encrypted upload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wrapped_key: Option<String>,
}

pub fn encode<T: Serialize>(record: &T) -> Bytes {
    // Serializing these plain structs cannot fail.
    Bytes::from(serde_json::to_vec(record).unwrap_or_default())
}

pub fn decode<T: for<'de> Deserialize<'de>>(data: &[u8]) -> EngineResult<T> {
    serde_json::from_slice(data).map_err(|e| EngineError::Corrupt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_with_an_optional_write_quorum() {
        let multi = |regions: &[&str], write_quorum| Location::MultiRegion {
            regions: regions.iter().map(|r| r.to_string()).collect(),
            write_quorum,
        };
        assert_eq!(Location::parse("multi:b,a").unwrap(), multi(&["a", "b"], None));
        let quorum = Location::parse("multi:a,b,c;quorum=2").unwrap();
        assert_eq!(quorum, multi(&["a", "b", "c"], Some(2)));
        assert_eq!((quorum.write_quorum(), quorum.to_string()), (2, "multi:a,b,c;quorum=2".to_string()));
        assert_eq!(multi(&["a", "b"], None).write_quorum(), 2, "all regions by default");
        assert_eq!(Location::Global.write_quorum(), 1);
        for bad in ["multi:a,b;quorum=0", "multi:a,b;quorum=3", "multi:a,b;quorum=x", "global;quorum=1", "multi:a"] {
            assert!(Location::parse(bad).is_err(), "{bad}");
        }
        // Records written before the quorum existed still read.
        let old: Location = serde_json::from_str(r#"{"type":"multi_region","regions":["a","b"]}"#).unwrap();
        assert_eq!(old, multi(&["a", "b"], None));
    }

    #[test]
    fn replicas_go_with_global_buckets_only() {
        assert_eq!(
            parse_placement("global;replicas=2").unwrap(),
            Placement { location: Location::Global, replicas: Some(2) }
        );
        assert_eq!(parse_placement("global").unwrap(), Location::Global.into());
        assert_eq!(parse_placement("pinned:eu").unwrap(), Location::Pinned { region: "eu".into() }.into());
        for bad in [
            "pinned:eu;replicas=2",
            "multi:a,b;replicas=2",
            "global;replicas=0",
            "global;replicas=17",
            "global;replicas=x",
        ] {
            assert!(parse_placement(bad).is_err(), "{bad}");
        }
    }
}
