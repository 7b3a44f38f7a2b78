use meridian_blob::{BlobError, PeerFailure};
use meridian_meta::MetaError;

/// What the caller of a failed operation should do, whatever the detail. Every front end turns
/// a kind into its protocol's status the same way, and uses the detail ([`EngineError`]) only
/// where its protocol has a more specific code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The request is wrong (argument, name, size, checksum, body): fix it before sending it
    /// again.
    Invalid,
    /// The credentials may not do this: use other ones, or get a grant.
    Denied,
    /// What the request names does not exist (or no longer does, like compacted history).
    NotFound,
    /// The request contradicts the current state (already exists, not empty, a condition or
    /// revision that does not hold, a lock or fence token that is not current): read the state
    /// again and decide.
    Conflict,
    /// Others are changing the same thing right now: retry the same request after a pause.
    Contended,
    /// A dependency (the metadata store, another node) cannot answer now: retry later.
    Unavailable,
    /// A fault on the server's side (storage, corrupt record, configuration): retrying will not
    /// help; it is logged for the operator.
    Internal,
}

/// Everything an engine operation can refuse or fail with. Front ends map these onto their
/// protocol's errors through [`EngineError::kind`] (S3 error codes, HTTP statuses).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("the specified bucket does not exist")]
    NoSuchBucket,
    #[error("the bucket already exists and is owned by you")]
    BucketAlreadyOwnedByYou,
    #[error("the requested bucket name is not available")]
    BucketAlreadyExists,
    #[error("the bucket you tried to delete is not empty")]
    BucketNotEmpty,
    #[error("the bucket has {0} snapshot(s): delete them (and the forks made from them) first")]
    BucketHasSnapshots(u32),
    #[error("no snapshot {0}")]
    NoSuchSnapshot(String),
    #[error("a snapshot named {0:?} already exists")]
    SnapshotExists(String),
    #[error("invalid bucket name: {0}")]
    InvalidBucketName(String),
    #[error("the specified key does not exist")]
    NoSuchKey,
    #[error("the specified version does not exist")]
    NoSuchVersion,
    /// The version read is a delete marker: the key's current version (`by_id`: false), or the
    /// version asked for by id.
    #[error("{}", if *by_id { "the specified method is not allowed against a delete marker" } else { "the specified key does not exist" })]
    DeleteMarker { version_id: String, by_id: bool },
    #[error("your key is too long: {0} bytes, the limit is 1024")]
    KeyTooLong(usize),
    #[error("invalid object key: {0}")]
    InvalidKey(String),
    #[error("the requested range is not satisfiable (object size {size})")]
    InvalidRange { size: u64 },
    #[error("at least one of the preconditions you specified did not hold")]
    PreconditionFailed,
    #[error("not modified")]
    NotModified { etag: String, last_modified_ms: i64 },
    #[error("the specified multipart upload does not exist")]
    NoSuchUpload,
    #[error("{0}")]
    InvalidPart(String),
    #[error("the list of parts was not in ascending order")]
    InvalidPartOrder,
    #[error(
        "your proposed upload is smaller than the minimum allowed size: part {part} is {size} bytes, the minimum is {min}"
    )]
    EntityTooSmall { part: u32, size: u64, min: u64 },
    #[error("your proposed upload exceeds the maximum allowed size of {max} bytes")]
    EntityTooLarge { max: u64 },
    #[error("the Content-MD5 you specified did not match what we received")]
    BadDigest,
    #[error("the {algorithm} checksum you specified did not match what we received")]
    ChecksumMismatch { algorithm: &'static str },
    #[error("you did not provide the number of bytes specified by the Content-Length header")]
    IncompleteBody,
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("The XML you provided was not well-formed or did not validate against our published schema")]
    MalformedXml,
    #[error("{0}")]
    InvalidTag(String),
    #[error("the requested partnumber is not satisfiable")]
    InvalidPartNumber,
    #[error("the object was modified concurrently too many times; retry")]
    Contended,
    #[error("version mismatch: expected revision {expected}, current is {current}")]
    RevisionMismatch { expected: u64, current: u64 },
    #[error("batch refused: key {key:?} is at revision {current}, the batch expected {expected}")]
    BatchRevisionMismatch { key: String, expected: u64, current: u64 },
    #[error("lock {name:?} is held by {owner:?} for another {remaining_ms} ms")]
    LockContended { name: String, owner: String, remaining_ms: u64 },
    #[error("lock {name:?} is not held with token {token}")]
    LockNotHeld { name: String, token: u64 },
    #[error("fencing token {token} of lock {lock:?} is stale: token {current} was granted since")]
    FenceRejected { lock: String, token: u64, current: u64 },
    #[error("no access key named {0:?}")]
    NoSuchAccessKey(String),
    #[error("no site named {0:?}")]
    NoSuchSite(String),
    #[error("an access key named {0:?} already exists")]
    AccessKeyExists(String),
    #[error("access denied: {0}")]
    AccessDenied(String),
    #[error("{0}")]
    MalformedPolicy(String),
    #[error("Bucket cannot have ACLs set with ObjectOwnership's BucketOwnerEnforced setting")]
    InvalidBucketAclWithObjectOwnership,
    #[error("The bucket does not allow ACLs")]
    AccessControlListNotSupported,
    #[error("Invalid keyId {0}: no such key in this node's keyring")]
    KmsKeyNotFound(String),
    #[error(
        "The object was stored using a form of Server Side Encryption. The correct parameters must be provided to retrieve the object."
    )]
    CustomerKeyRequired,
    #[error("an encryption key is unavailable: {0}")]
    KeyUnavailable(String),
    #[error(
        "bucket {bucket:?} is pinned to region {pinned}; this node is in region {here} and does not store its objects"
    )]
    PinnedElsewhere { bucket: String, pinned: String, here: String },
    #[error(
        "bucket {bucket:?} keeps its objects in regions {regions}; this node is in region {here} and does not store them"
    )]
    OutsideRegions { bucket: String, regions: String, here: String },
    /// A write to a multi-region bucket could not make its copies in enough regions; nothing
    /// was committed.
    #[error("bucket {bucket:?} needs copies in {needed} of regions {regions}: {reasons}; the write was not applied")]
    RegionUnavailable { bucket: String, regions: String, needed: usize, reasons: String },
    #[error("revision {requested} is too old to replay: history starts at revision {oldest}")]
    RevisionCompacted { requested: u64, oldest: u64 },
    #[error("reading the request body failed: {0}")]
    Body(crate::ingest::BodyError),
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error("no node {0:?} is registered in the cluster (see `meridian cluster status`)")]
    NoSuchNode(String),
    #[error(
        "node {id:?} is alive (last heartbeat {heartbeat_age_ms} ms ago): stop it first, or pass --force (a running node registers again at its next heartbeat)"
    )]
    NodeIsLive { id: String, heartbeat_age_ms: i64 },
    #[error("{0}")]
    InvalidBucketState(String),
    #[error("Object Lock configuration does not exist for this bucket")]
    NoLockConfiguration,
    #[error("The specified object does not have a ObjectLock configuration")]
    NoObjectLock,
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("corrupt metadata record: {0}")]
    Corrupt(String),
}

pub type EngineResult<T> = Result<T, EngineError>;

impl EngineError {
    /// The kind of this error; no wildcard, so a new variant must choose one.
    pub fn kind(&self) -> ErrorKind {
        use EngineError as E;
        use ErrorKind as K;
        match self {
            E::InvalidBucketName(_)
            | E::KeyTooLong(_)
            | E::InvalidKey(_)
            | E::InvalidRange { .. }
            | E::InvalidPart(_)
            | E::InvalidPartOrder
            | E::EntityTooSmall { .. }
            | E::EntityTooLarge { .. }
            | E::BadDigest
            | E::MalformedXml
            | E::InvalidTag(_)
            | E::ChecksumMismatch { .. }
            | E::IncompleteBody
            | E::InvalidArgument(_)
            | E::InvalidRequest(_)
            | E::InvalidPartNumber
            | E::MalformedPolicy(_)
            | E::InvalidBucketAclWithObjectOwnership
            | E::AccessControlListNotSupported
            | E::KmsKeyNotFound(_)
            | E::CustomerKeyRequired
            | E::Body(_) => K::Invalid,
            E::AccessDenied(_) | E::PinnedElsewhere { .. } | E::OutsideRegions { .. } => K::Denied,
            E::NoSuchBucket
            | E::NoSuchKey
            | E::NoSuchVersion
            | E::DeleteMarker { .. }
            | E::NoSuchUpload
            | E::NoSuchAccessKey(_)
            | E::NoSuchNode(_)
            | E::NoSuchSite(_)
            | E::NoSuchSnapshot(_)
            | E::NoLockConfiguration
            | E::NoObjectLock
            | E::RevisionCompacted { .. } => K::NotFound,
            E::BucketAlreadyOwnedByYou
            | E::BucketAlreadyExists
            | E::BucketNotEmpty
            | E::BucketHasSnapshots(_)
            | E::SnapshotExists(_)
            | E::AccessKeyExists(_)
            | E::PreconditionFailed
            | E::NotModified { .. }
            | E::RevisionMismatch { .. }
            | E::BatchRevisionMismatch { .. }
            | E::LockNotHeld { .. }
            | E::FenceRejected { .. }
            | E::InvalidBucketState(_)
            | E::NodeIsLive { .. } => K::Conflict,
            E::Contended | E::LockContended { .. } => K::Contended,
            E::Unavailable(_) | E::RegionUnavailable { .. } => K::Unavailable,
            E::Corrupt(_) | E::KeyUnavailable(_) => K::Internal,
            E::Meta(e) => meta_kind(e),
            E::Blob(e) => blob_kind(e),
        }
    }
}

fn meta_kind(error: &MetaError) -> ErrorKind {
    match error {
        MetaError::TooLarge(_) => ErrorKind::Invalid,
        MetaError::Compacted { .. } => ErrorKind::NotFound,
        MetaError::Unavailable(_) | MetaError::Closed | MetaError::Lagged { .. } => ErrorKind::Unavailable,
        MetaError::Storage(_) => ErrorKind::Internal,
    }
}

/// A blob read that failed at another node, or whose source misbehaved, and a request the
/// blob bucket's service refused or did not answer may succeed later; the rest are faults of
/// this node's storage or configuration.
fn blob_kind(error: &BlobError) -> ErrorKind {
    match error {
        BlobError::Peer { failure: PeerFailure::Unauthorized, .. } => ErrorKind::Internal,
        BlobError::Peer { .. }
        | BlobError::SourceStalled { .. }
        | BlobError::SourceLength { .. }
        | BlobError::DigestMismatch { .. }
        | BlobError::Backend { .. } => ErrorKind::Unavailable,
        BlobError::NotFound(_)
        | BlobError::Io(_)
        | BlobError::Task(_)
        | BlobError::Config(_)
        | BlobError::InvalidRange { .. }
        | BlobError::DigestCount { .. }
        | BlobError::Exists(_) => ErrorKind::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_blob::BlobId;

    fn kinds(errors: Vec<EngineError>) -> Vec<ErrorKind> {
        errors.iter().map(EngineError::kind).collect()
    }

    #[test]
    fn request_errors_are_invalid() {
        let body: crate::BodyError = "cut off".into();
        let errors = vec![
            EngineError::InvalidBucketName("x".into()),
            EngineError::KeyTooLong(2000),
            EngineError::InvalidKey("".into()),
            EngineError::InvalidRange { size: 1 },
            EngineError::InvalidPart("p".into()),
            EngineError::InvalidPartOrder,
            EngineError::EntityTooSmall { part: 1, size: 1, min: 5 },
            EngineError::EntityTooLarge { max: 5 },
            EngineError::BadDigest,
            EngineError::ChecksumMismatch { algorithm: "CRC32" },
            EngineError::IncompleteBody,
            EngineError::InvalidArgument("a".into()),
            EngineError::InvalidRequest("r".into()),
            EngineError::InvalidPartNumber,
            EngineError::Body(body),
            EngineError::Meta(MetaError::TooLarge("t".into())),
        ];
        let n = errors.len();
        assert_eq!(kinds(errors), vec![ErrorKind::Invalid; n]);
    }

    #[test]
    fn missing_things_are_not_found_and_refusals_denied() {
        let errors = vec![
            EngineError::NoSuchBucket,
            EngineError::NoSuchKey,
            EngineError::NoSuchUpload,
            EngineError::NoSuchAccessKey("k".into()),
            EngineError::NoSuchSite("s".into()),
            EngineError::NoSuchSnapshot("b@s".into()),
            EngineError::RevisionCompacted { requested: 1, oldest: 5 },
            EngineError::Meta(MetaError::Compacted { requested: 1, oldest: 5 }),
        ];
        let n = errors.len();
        assert_eq!(kinds(errors), vec![ErrorKind::NotFound; n]);
        assert_eq!(EngineError::AccessDenied("no".into()).kind(), ErrorKind::Denied);
    }

    #[test]
    fn state_disagreements_are_conflicts() {
        let errors = vec![
            EngineError::BucketAlreadyOwnedByYou,
            EngineError::BucketAlreadyExists,
            EngineError::BucketNotEmpty,
            EngineError::BucketHasSnapshots(1),
            EngineError::SnapshotExists("s".into()),
            EngineError::AccessKeyExists("k".into()),
            EngineError::PreconditionFailed,
            EngineError::NotModified { etag: "e".into(), last_modified_ms: 0 },
            EngineError::RevisionMismatch { expected: 1, current: 2 },
            EngineError::BatchRevisionMismatch { key: "k".into(), expected: 1, current: 2 },
            EngineError::LockNotHeld { name: "l".into(), token: 1 },
            EngineError::FenceRejected { lock: "l".into(), token: 1, current: 2 },
        ];
        let n = errors.len();
        assert_eq!(kinds(errors), vec![ErrorKind::Conflict; n]);
    }

    #[test]
    fn retryable_errors_are_contended_or_unavailable() {
        let lock = EngineError::LockContended { name: "l".into(), owner: "o".into(), remaining_ms: 1 };
        assert_eq!(kinds(vec![EngineError::Contended, lock]), vec![ErrorKind::Contended; 2]);
        let blob = BlobId::random();
        let errors = vec![
            EngineError::Unavailable("u".into()),
            EngineError::Meta(MetaError::Unavailable("u".into())),
            EngineError::Meta(MetaError::Closed),
            EngineError::Meta(MetaError::Lagged { next: 3 }),
            EngineError::Blob(BlobError::Peer { peer: "p".into(), failure: PeerFailure::Timeout("t".into()) }),
            EngineError::Blob(BlobError::SourceStalled { blob, chunk: 0, source_name: "s".into(), seconds: 1.0 }),
            EngineError::Blob(BlobError::SourceLength { blob, chunk: 0, source_name: "s".into(), expected: 2, got: 1 }),
            EngineError::Blob(BlobError::DigestMismatch {
                blob,
                chunk: 0,
                source_name: "s".into(),
                expected: 1,
                actual: 2,
            }),
        ];
        let n = errors.len();
        assert_eq!(kinds(errors), vec![ErrorKind::Unavailable; n]);
    }

    #[test]
    fn server_faults_are_internal() {
        let blob = BlobId::random();
        let errors = vec![
            EngineError::Corrupt("c".into()),
            EngineError::Meta(MetaError::Storage("s".into())),
            EngineError::Blob(BlobError::Peer { peer: "p".into(), failure: PeerFailure::Unauthorized }),
            EngineError::Blob(BlobError::NotFound(blob)),
            EngineError::Blob(BlobError::Io(std::io::Error::other("disk"))),
            EngineError::Blob(BlobError::Task("t".into())),
            EngineError::Blob(BlobError::Config("c".into())),
            EngineError::Blob(BlobError::InvalidRange { blob, offset: 0, len: 1, size: 0 }),
            EngineError::Blob(BlobError::DigestCount { blob, blob_len: 1, chunk_size: 1, expected: 1, got: 2 }),
        ];
        let n = errors.len();
        assert_eq!(kinds(errors), vec![ErrorKind::Internal; n]);
    }
}
