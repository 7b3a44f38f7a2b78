//! Typed errors of the volume library.

use thiserror::Error;

/// Errors from the object store abstraction.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The key does not exist.
    #[error("object {0} not found")]
    NotFound(String),
    /// A conditional write failed (If-None-Match: * on an existing key, or If-Match on a
    /// changed one).
    #[error("precondition failed writing {0}")]
    PreconditionFailed(String),
    /// The bucket could not be reached or answered with an unexpected error.
    #[error("object store error on {key}: {message}")]
    Backend { key: String, message: String },
    /// The CA file given for an https endpoint is unreadable or holds no usable certificate.
    #[error("cannot use the CA file {path}: {reason}")]
    CaFile { path: std::path::PathBuf, reason: String },
    /// A local file used for an upload could not be read.
    #[error("local I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// Errors of volume operations.
#[derive(Debug, Error)]
pub enum VolumeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("local I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The cache directory (journal, extent map, cached data) is open to other users.
    #[error("refusing the volume cache directory: {0}")]
    CacheDirNotPrivate(#[from] meridian_common::private_files::NotPrivate),
    #[error("volume {0} does not exist in this bucket/prefix (create it with `meridian volume create`)")]
    NoSuchVolume(String),
    #[error("volume {0} already exists")]
    AlreadyExists(String),
    #[error("invalid volume name {0:?}: use 1-64 characters from [A-Za-z0-9._-]")]
    BadName(String),
    #[error("invalid size: {0}")]
    BadSize(String),
    #[error("corrupt {what}: {detail}")]
    Corrupt { what: String, detail: String },
    #[error(
        "volume is being served by {holder} (epoch {epoch}, lease valid for another {remaining_secs}s); \
         stop that writer, wait for its lease to expire, or pass --force-takeover if it is certainly dead"
    )]
    LeaseHeld { holder: String, epoch: u64, remaining_secs: u64 },
    #[error("this writer's lease ran out before it could renew it; no I/O until a renewal succeeds")]
    LeaseExpired,
    #[error("this writer lost its lease (fenced by epoch {0}); no further writes are accepted")]
    Fenced(u64),
    #[error("no snapshot named {0:?} (list them with `meridian volume snapshots`)")]
    UnknownSnapshot(String),
    #[error("snapshot {0:?} already exists")]
    SnapshotExists(String),
    #[error("request out of range: offset {offset} length {len} beyond volume size {size}")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    #[error("the volume failed earlier and accepts no more I/O: {0}")]
    Failed(String),
    #[error("encryption: {0}")]
    Crypto(String),
    #[error("volume {0} is encrypted: pass its key with --encryption-key-file FILE (or MERIDIAN_VOLUME_KEY_FILE)")]
    KeyRequired(String),
    #[error("the encryption key does not match volume {0}: wrong key file")]
    WrongKey(String),
    #[error("volume {0} is not encrypted, but an encryption key was given: drop --encryption-key-file")]
    NotEncrypted(String),
    #[error(
        "the encryption key given is volume {name}'s retired key (generation {generation}); `meridian volume \
         rotate-key` replaced it with generation {current}: pass that key with --encryption-key-file (and this one \
         with --old-key-file while `inspect` says the rotation is in progress)"
    )]
    RetiredKey { name: String, generation: u32, current: u32 },
    #[error(
        "volume {name} is in the middle of a key rotation: some objects are still sealed under its previous key \
         (generation {generation}) until GC seals them again; pass that key with --old-key-file FILE (or \
         MERIDIAN_VOLUME_OLD_KEY_FILE) besides the current one"
    )]
    OldKeyRequired { name: String, generation: u32 },
    #[error("the key given with --old-key-file is not the key volume {name} is retiring (generation {generation})")]
    WrongOldKey { name: String, generation: u32 },
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = VolumeError> = std::result::Result<T, E>;
