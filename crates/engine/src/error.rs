use meridian_blob::BlobError;
use meridian_meta::MetaError;

/// Everything an engine operation can refuse or fail with. Front ends map these onto their
/// protocol's errors (S3 error codes, HTTP statuses).
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
    #[error("invalid bucket name: {0}")]
    InvalidBucketName(String),
    #[error("the specified key does not exist")]
    NoSuchKey,
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
    #[error("an access key named {0:?} already exists")]
    AccessKeyExists(String),
    #[error("access denied: {0}")]
    AccessDenied(String),
    #[error("revision {requested} is too old to replay: history starts at revision {oldest}")]
    RevisionCompacted { requested: u64, oldest: u64 },
    #[error("reading the request body failed: {0}")]
    Body(crate::ingest::BodyError),
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("corrupt metadata record: {0}")]
    Corrupt(String),
}

pub type EngineResult<T> = Result<T, EngineError>;
