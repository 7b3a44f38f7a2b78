//! Object bytes: where they are kept, and how other nodes' bytes are read.
//!
//! A blob is immutable and named by a random id (never by an object key, so keys can never
//! become paths or backend names). [`BlobStore`] keeps blobs in one [`BlobBackend`]: the local
//! disk ([`disk::DiskBackend`], the default) or an S3-compatible bucket ([`s3::S3Backend`]) that
//! several nodes of a region may share. Either way a blob becomes visible only when its writer's
//! [`BlobWriter::finish`] returns, complete and durable; only after that may metadata point at
//! it, so a crash at any moment leaves either a complete, durable blob or nothing that metadata
//! refers to. What a crash leaves behind (temporary files, incomplete multipart uploads, and
//! blobs whose metadata commit never happened or whose object was since deleted) is removed by
//! [`BlobStore::collect_orphans`].
//!
//! Bytes that live on other nodes are read through [`ChunkCache`] (a bounded, verified,
//! restart-surviving cache of remote chunks with one shared fetch per missing chunk) from a
//! [`ChunkSource`], usually a [`PeerClient`] talking to another node's [`serve_blob_request`].
//! See `docs/cache.md`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;

pub mod backend;
pub mod cache;
pub mod disk;
pub mod peer;
pub mod s3;
pub mod stripe;

pub use backend::{BackendWriter, BlobBackend, BlobStream};

pub use cache::{
    CacheOptions, CacheReadStream, CacheStats, ChunkCache, ChunkHasher, ChunkSource, DEFAULT_CHUNK_SIZE, chunk_count,
    chunk_digests, crc32c,
};
pub use peer::{
    ClockSample, CopyStreams, PeerAccess, PeerBody, PeerClient, PeerFailure, StoredCopy, channel_body,
    digest_of_digests, serve_blob_request, serve_peer,
};

/// Size of the first chunk when streaming a blob out of the disk (a small object's whole read;
/// later chunks are larger: `disk::TAIL_CHUNK`).
pub const READ_CHUNK: usize = 256 << 10;

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob {0} not found")]
    NotFound(BlobId),
    /// A named blob (a copy received from another node) that is already here.
    #[error("blob {0} already exists")]
    Exists(BlobId),
    #[error("blob store I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("blob store task failed: {0}")]
    Task(String),
    /// A cache or peer setting that cannot work (e.g. a zero chunk size, a malformed peer URL).
    #[error("invalid blob store configuration: {0}")]
    Config(String),
    /// A range that does not lie inside the blob.
    #[error("blob {blob}: range of {len} bytes at offset {offset} is outside its {size} bytes")]
    InvalidRange { blob: BlobId, offset: u64, len: u64, size: u64 },
    /// The caller's chunk digests do not fit the blob's length at the cache's chunk size (the
    /// digests were computed with another chunk size).
    #[error(
        "blob {blob}: {got} chunk digests given, but {blob_len} bytes in chunks of {chunk_size} bytes make {expected}"
    )]
    DigestCount { blob: BlobId, blob_len: u64, chunk_size: u64, expected: u64, got: u64 },
    /// The bytes a source sent for a chunk do not have the chunk's CRC32C; nothing was cached.
    #[error(
        "blob {blob} chunk {chunk} from {source_name}: CRC32C {actual:08x} does not match the expected {expected:08x}; nothing was cached"
    )]
    DigestMismatch { blob: BlobId, chunk: u64, source_name: String, expected: u32, actual: u32 },
    /// A source sent more or fewer bytes than asked for; nothing was cached.
    #[error("blob {blob} chunk {chunk} from {source_name}: sent {got} bytes where {expected} were expected")]
    SourceLength { blob: BlobId, chunk: u64, source_name: String, expected: u64, got: u64 },
    /// A source made no progress for too long; nothing was cached.
    #[error("blob {blob} chunk {chunk} from {source_name}: no data for {seconds:.1}s; gave up")]
    SourceStalled { blob: BlobId, chunk: u64, source_name: String, seconds: f64 },
    /// A request to another node failed; `peer` is the base URL of the node.
    #[error("peer {peer}: {failure}")]
    Peer { peer: String, failure: peer::PeerFailure },
    /// The S3 service holding the blobs failed or refused a request.
    #[error("blob store {store}: {message}")]
    Backend { store: String, message: String },
}

impl BlobError {
    /// A copy of this error for the other readers of a shared fetch (`std::io::Error` is not
    /// `Clone`, so I/O errors are rebuilt from their kind and message).
    pub fn duplicate(&self) -> BlobError {
        match self {
            BlobError::NotFound(id) => BlobError::NotFound(*id),
            BlobError::Io(e) => BlobError::Io(std::io::Error::new(e.kind(), e.to_string())),
            BlobError::Task(m) => BlobError::Task(m.clone()),
            BlobError::Config(m) => BlobError::Config(m.clone()),
            BlobError::InvalidRange { blob, offset, len, size } => {
                BlobError::InvalidRange { blob: *blob, offset: *offset, len: *len, size: *size }
            }
            BlobError::DigestCount { blob, blob_len, chunk_size, expected, got } => BlobError::DigestCount {
                blob: *blob,
                blob_len: *blob_len,
                chunk_size: *chunk_size,
                expected: *expected,
                got: *got,
            },
            BlobError::DigestMismatch { blob, chunk, source_name, expected, actual } => BlobError::DigestMismatch {
                blob: *blob,
                chunk: *chunk,
                source_name: source_name.clone(),
                expected: *expected,
                actual: *actual,
            },
            BlobError::SourceLength { blob, chunk, source_name, expected, got } => BlobError::SourceLength {
                blob: *blob,
                chunk: *chunk,
                source_name: source_name.clone(),
                expected: *expected,
                got: *got,
            },
            BlobError::SourceStalled { blob, chunk, source_name, seconds } => BlobError::SourceStalled {
                blob: *blob,
                chunk: *chunk,
                source_name: source_name.clone(),
                seconds: *seconds,
            },
            BlobError::Peer { peer, failure } => BlobError::Peer { peer: peer.clone(), failure: failure.clone() },
            BlobError::Exists(id) => BlobError::Exists(*id),
            BlobError::Backend { store, message } => {
                BlobError::Backend { store: store.clone(), message: message.clone() }
            }
        }
    }
}

pub type BlobResult<T> = Result<T, BlobError>;

/// A random 128-bit blob name.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobId(u128);

impl BlobId {
    pub fn random() -> Self {
        BlobId(rand::random())
    }
}

impl fmt::Display for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobId({self})")
    }
}

impl serde::Serialize for BlobId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for BlobId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl FromStr for BlobId {
    type Err = std::num::ParseIntError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        u128::from_str_radix(s, 16).map(BlobId)
    }
}

/// The file system under the data directory, in bytes.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct DiskSpace {
    pub total_bytes: u64,
    /// What this process may still write (blocks reserved for root excluded).
    pub free_bytes: u64,
}

/// Where this node's blobs are: one backend, and the node's data directory (for its disk
/// space). Cheap to clone.
#[derive(Clone)]
pub struct BlobStore {
    backend: Arc<dyn BlobBackend>,
    root: Arc<PathBuf>,
    /// Striped copies from other nodes being written here (see [`stripe`]).
    assemblies: Arc<stripe::Assemblies>,
}

impl BlobStore {
    /// Blobs on the local disk under `root` (see [`disk::DiskBackend::open`]).
    pub fn open(root: &Path) -> BlobResult<Self> {
        Ok(Self::with_backend(root, Arc::new(disk::DiskBackend::open(root)?)))
    }

    /// Blobs in `backend`; `root` is the node's data directory.
    pub fn with_backend(root: &Path, backend: Arc<dyn BlobBackend>) -> Self {
        BlobStore { backend, root: Arc::new(root.to_path_buf()), assemblies: Arc::default() }
    }

    /// Striped copies being received now.
    pub fn assemblies_open(&self) -> usize {
        self.assemblies.len()
    }

    /// Where the blobs are, for logs.
    pub fn describe(&self) -> String {
        self.backend.describe()
    }

    /// The identity of a store other nodes share (see [`BlobBackend::shared_id`]).
    pub fn shared_id(&self) -> Option<&str> {
        self.backend.shared_id()
    }

    /// Starts a new blob.
    pub async fn create(&self) -> BlobResult<BlobWriter> {
        self.create_named(BlobId::random()).await
    }

    /// Starts a new blob with a chosen id: a copy of a blob another node holds under the same
    /// id. Refused when this store already has a blob (or, on disk, a write in progress) of
    /// that id.
    pub async fn create_named(&self, id: BlobId) -> BlobResult<BlobWriter> {
        match self.backend.size(id).await {
            Ok(_) => return Err(BlobError::Exists(id)),
            Err(BlobError::NotFound(_)) => {}
            Err(other) => return Err(other),
        }
        let inner = self.backend.create(id).await.map_err(|e| match e {
            BlobError::Io(io) if io.kind() == std::io::ErrorKind::AlreadyExists => BlobError::Exists(id),
            other => other,
        })?;
        Ok(BlobWriter { id, inner, written: 0 })
    }

    /// Checks that blobs can be written now, the way a blob write does.
    pub async fn probe_writable(&self) -> BlobResult<()> {
        self.backend.probe_writable().await
    }

    /// Size and free space of the file system holding the data directory.
    pub async fn disk_space(&self) -> BlobResult<DiskSpace> {
        let dir = Arc::clone(&self.root);
        disk::blocking(move || {
            let stat = rustix::fs::statvfs(dir.as_path())?;
            Ok(DiskSpace {
                total_bytes: stat.f_blocks.saturating_mul(stat.f_frsize),
                free_bytes: stat.f_bavail.saturating_mul(stat.f_frsize),
            })
        })
        .await
    }

    /// Writes a whole blob from memory and makes it durable.
    pub async fn put(&self, data: Bytes) -> BlobResult<BlobId> {
        let mut writer = self.create().await?;
        writer.write(data).await?;
        writer.finish().await
    }

    /// Size of a blob in bytes.
    pub async fn size(&self, id: BlobId) -> BlobResult<u64> {
        self.backend.size(id).await
    }

    /// Streams `len` bytes of a blob starting at `offset`. The blob is opened before this
    /// returns, so a later delete cannot cut the stream short.
    pub async fn read(&self, id: BlobId, offset: u64, len: u64) -> BlobResult<BlobStream> {
        self.backend.read(id, offset, len).await
    }

    /// Reads a whole blob into memory (for small blobs).
    pub async fn read_all(&self, id: BlobId) -> BlobResult<Bytes> {
        self.backend.read_all(id).await
    }

    /// A new blob with the same bytes (blobs are immutable, so backends share or copy them
    /// without this node reading them).
    pub async fn duplicate(&self, id: BlobId) -> BlobResult<BlobId> {
        let copy = BlobId::random();
        self.backend.duplicate(id, copy).await?;
        Ok(copy)
    }

    /// Deletes a blob; deleting a missing blob is not an error.
    pub async fn delete(&self, id: BlobId) -> BlobResult<()> {
        self.backend.delete(id).await
    }

    /// Every blob last written before `older_than`, with its size.
    pub async fn list_older_than(&self, older_than: SystemTime) -> BlobResult<Vec<(BlobId, u64)>> {
        self.backend.list_older_than(older_than).await
    }

    /// Removes what unfinished writes started before `older_than` left, then deletes every blob
    /// older than `older_than` for which `is_referenced` says no. Returns the number of blobs
    /// and bytes removed. Blobs being written right now are younger than the cut-off (a blob
    /// appears just before its metadata commit), so callers pass a time before the process
    /// started, or — for a store other nodes write to — one a grace period in the past. File
    /// times are only as fine as the kernel tick, so keep the cut-off a second or more older
    /// than any live write.
    pub async fn collect_orphans<F, Fut>(&self, older_than: SystemTime, is_referenced: F) -> BlobResult<(usize, u64)>
    where
        F: Fn(Vec<BlobId>) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<bool>, String>>,
    {
        let stale = self.backend.collect_stale_writes(older_than).await?;
        if stale > 0 {
            tracing::info!(stale, store = %self.describe(), "removed unfinished blob writes");
        }
        let candidates = self.list_older_than(older_than).await?;
        let (mut count, mut bytes) = (0usize, 0u64);
        for chunk in candidates.chunks(256) {
            let ids: Vec<BlobId> = chunk.iter().map(|(id, _)| *id).collect();
            let referenced = is_referenced(ids).await.map_err(BlobError::Task)?;
            for ((id, size), referenced) in chunk.iter().zip(referenced) {
                if !referenced {
                    self.delete(*id).await?;
                    count += 1;
                    bytes += size;
                }
            }
        }
        Ok((count, bytes))
    }
}

/// A blob being written. Dropping it without [`BlobWriter::finish`] leaves nothing visible.
pub struct BlobWriter {
    id: BlobId,
    inner: Box<dyn BackendWriter>,
    written: u64,
}

impl BlobWriter {
    pub fn id(&self) -> BlobId {
        self.id
    }

    /// Bytes accepted so far.
    pub fn len(&self) -> u64 {
        self.written
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub async fn write(&mut self, data: Bytes) -> BlobResult<()> {
        let len = data.len() as u64;
        self.inner.write(data).await?;
        self.written += len;
        Ok(())
    }

    /// Makes the blob complete and durable; after this returns the blob survives a crash and
    /// metadata may point at it.
    pub async fn finish(self) -> BlobResult<BlobId> {
        self.inner.finish().await?;
        Ok(self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;
    use std::time::Duration;

    async fn collect(stream: impl futures::Stream<Item = BlobResult<Bytes>>) -> Vec<u8> {
        let chunks: Vec<Bytes> = stream.try_collect().await.unwrap();
        chunks.concat()
    }

    #[tokio::test]
    async fn write_read_ranges_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        let mut writer = store.create().await.unwrap();
        for chunk in data.chunks(70_000) {
            writer.write(Bytes::copy_from_slice(chunk)).await.unwrap();
        }
        assert_eq!(writer.len(), data.len() as u64);
        let id = writer.finish().await.unwrap();
        assert_eq!(store.size(id).await.unwrap(), data.len() as u64);
        assert_eq!(collect(store.read(id, 0, data.len() as u64).await.unwrap()).await, data);
        assert_eq!(collect(store.read(id, 1_000_001, 10).await.unwrap()).await, &data[1_000_001..1_000_011]);
        assert_eq!(store.read_all(id).await.unwrap().as_ref(), data.as_slice());
        store.delete(id).await.unwrap();
        assert!(matches!(store.read(id, 0, 1).await.err(), Some(BlobError::NotFound(_))));
        store.delete(id).await.unwrap();
    }

    #[tokio::test]
    async fn unfinished_writes_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let mut writer = store.create().await.unwrap();
        writer.write(Bytes::from_static(b"half")).await.unwrap();
        let id = writer.id();
        drop(writer);
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        assert!(store.size(id).await.is_err());
        // A temporary file left by a crash is removed on open.
        std::fs::write(dir.path().join("tmp").join("leftover"), b"x").unwrap();
        BlobStore::open(dir.path()).unwrap();
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn open_stream_survives_delete_and_duplicates_are_independent() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let id = store.put(Bytes::from_static(b"hello world")).await.unwrap();
        let copy = store.duplicate(id).await.unwrap();
        let stream = store.read(id, 0, 11).await.unwrap();
        store.delete(id).await.unwrap();
        assert_eq!(collect(stream).await, b"hello world");
        assert_eq!(store.read_all(copy).await.unwrap().as_ref(), b"hello world");
    }

    #[tokio::test]
    async fn orphans_are_collected_and_referenced_blobs_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let keep = store.put(Bytes::from_static(b"keep")).await.unwrap();
        let orphan = store.put(Bytes::from_static(b"orphan")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(60)).await;
        // File times are kernel-tick coarse, hence a cut-off a little in the past.
        let cutoff = SystemTime::now() - Duration::from_millis(20);
        let young = store.put(Bytes::from_static(b"young")).await.unwrap();
        let (count, bytes) = store
            .collect_orphans(cutoff, |ids| async move { Ok(ids.iter().map(|id| *id == keep).collect()) })
            .await
            .unwrap();
        assert_eq!((count, bytes), (1, 6));
        assert!(store.size(keep).await.is_ok());
        assert!(store.size(orphan).await.is_err());
        assert!(store.size(young).await.is_ok(), "blobs newer than the cut-off are never touched");
    }
}
