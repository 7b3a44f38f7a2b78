//! Object bytes on the local disk.
//!
//! A blob is an immutable file named by a random id (never by an object key, so keys can never
//! become paths). Writing one goes: stream into `tmp/`, fsync, rename into `blobs/xx/`, fsync the
//! directory. Only after that may metadata point at the blob, so a crash at any moment leaves
//! either a complete, durable blob or nothing that metadata refers to. Files left behind by a
//! crash (temporary files, and blobs whose metadata commit never happened or whose object was
//! since deleted) are removed by [`BlobStore::collect_orphans`].
//!
//! Bytes that live on other nodes are read through [`ChunkCache`] (a bounded, verified,
//! restart-surviving cache of remote chunks with one shared fetch per missing chunk) from a
//! [`ChunkSource`], usually a [`PeerClient`] talking to another node's [`serve_blob_request`].
//! See `docs/cache.md`.

use std::fmt;
use std::io::Write;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use futures::Stream;
use meridian_common::private_files;

pub mod cache;
pub mod peer;

pub use cache::{
    CacheOptions, CacheReadStream, CacheStats, ChunkCache, ChunkHasher, ChunkSource, DEFAULT_CHUNK_SIZE, chunk_count,
    chunk_digests, crc32c,
};
pub use peer::{ClockSample, PeerAccess, PeerBody, PeerClient, PeerFailure, serve_blob_request, serve_peer};

/// Bytes gathered before each write to the file; large writes keep the syscall count low.
const WRITE_BUFFER: usize = 1 << 20;
/// Size of each chunk when streaming a blob out.
pub const READ_CHUNK: usize = 256 << 10;
/// How far past a stream's current chunk the kernel is asked to read ahead (a volume's log
/// object is 4 MiB: a ranged GET of a whole window is requested from the disk at once).
const READ_AHEAD: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob {0} not found")]
    NotFound(BlobId),
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

/// The local blob directory.
#[derive(Clone)]
pub struct BlobStore {
    inner: Arc<Dirs>,
}

struct Dirs {
    blobs: PathBuf,
    tmp: PathBuf,
}

/// The size of the next chunk of a read with `remaining` bytes to go.
fn remaining_chunk(remaining: u64) -> usize {
    remaining.min(READ_CHUNK as u64) as usize
}

/// Asks the kernel to start reading `file` up to [`READ_AHEAD`] past `from` (bounded by
/// `end`) into the page cache, beyond `advised` (where the previous advice stopped); returns
/// where this advice stops. Advice only: a file system that ignores it just reads on demand.
fn advise_ahead(file: &std::fs::File, from: u64, advised: u64, end: u64) -> u64 {
    let target = (from + READ_AHEAD).min(end);
    if target <= advised {
        return advised;
    }
    let start = advised.max(from);
    let _ = rustix::fs::fadvise(file, start, NonZeroU64::new(target - start), rustix::fs::Advice::WillNeed);
    target
}

/// Exactly `want` bytes at `offset`, read into fresh memory without zeroing it first.
fn read_chunk_at(file: &std::fs::File, offset: u64, want: usize) -> std::io::Result<Bytes> {
    let mut buf = Vec::with_capacity(want);
    while buf.len() < want {
        let at = offset + buf.len() as u64;
        match rustix::io::pread(file, rustix::buffer::spare_capacity(&mut buf), at) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the blob is shorter than its record",
                ));
            }
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    // The capacity may exceed `want`: bytes past it belong to no one here.
    buf.truncate(want);
    Ok(Bytes::from(buf))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> std::io::Result<T> + Send + 'static) -> BlobResult<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| BlobError::Task(e.to_string()))?.map_err(BlobError::Io)
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// The file system under the blob store, in bytes.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct DiskSpace {
    pub total_bytes: u64,
    /// What this process may still write (blocks reserved for root excluded).
    pub free_bytes: u64,
}

/// The same I/O error with what was being done in front of it.
fn annotate(e: std::io::Error, doing: &str) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{doing}: {e}"))
}

impl BlobStore {
    /// Opens the store under `root`, creating its directories. Temporary files from an earlier
    /// run are deleted: nothing can refer to them.
    pub fn open(root: &Path) -> BlobResult<Self> {
        let blobs = root.join("blobs");
        let tmp = root.join("tmp");
        private_files::create_dir_all(&tmp)?;
        for shard in 0..=255u8 {
            private_files::create_dir_all(&blobs.join(format!("{shard:02x}")))?;
        }
        let mut removed = 0usize;
        for entry in std::fs::read_dir(&tmp)? {
            std::fs::remove_file(entry?.path())?;
            removed += 1;
        }
        if removed > 0 {
            tracing::info!(removed, "removed temporary blob files left by an earlier run");
        }
        fsync_dir(&blobs)?;
        fsync_dir(root)?;
        Ok(BlobStore { inner: Arc::new(Dirs { blobs, tmp }) })
    }

    fn path(&self, id: BlobId) -> PathBuf {
        let name = id.to_string();
        self.inner.blobs.join(&name[..2]).join(name)
    }

    /// Starts a new blob.
    pub async fn create(&self) -> BlobResult<BlobWriter> {
        let id = BlobId::random();
        let tmp_path = self.inner.tmp.join(id.to_string());
        let path = tmp_path.clone();
        let file = blocking(move || private_files::file_options().write(true).create_new(true).open(path)).await?;
        Ok(BlobWriter {
            store: self.clone(),
            id,
            tmp_path,
            file: Some(file),
            buffer: BytesMut::with_capacity(WRITE_BUFFER),
            written: 0,
            finished: false,
        })
    }

    /// Checks that blobs can be written now, the way a blob write does: a small file created in
    /// `tmp/`, written, fsynced and removed, then the directory fsynced. Fails on a full disk, a
    /// read-only file system or a `tmp/` that is no longer a writable directory. The probe file
    /// is named like a temporary blob, so a crash midway leaves nothing `open` keeps.
    pub async fn probe_writable(&self) -> BlobResult<()> {
        let dir = self.inner.tmp.clone();
        blocking(move || {
            let path = dir.join(format!("probe-{}", BlobId::random()));
            let written = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .and_then(|mut file| file.write_all(b"meridian readiness probe").and_then(|()| file.sync_all()));
            let removed = std::fs::remove_file(&path);
            written.map_err(|e| annotate(e, &format!("cannot write a probe file in {}", dir.display())))?;
            removed.map_err(|e| annotate(e, &format!("cannot remove the probe file {}", path.display())))?;
            fsync_dir(&dir).map_err(|e| annotate(e, &format!("cannot fsync {}", dir.display())))
        })
        .await
    }

    /// Size and free space of the file system holding the blobs.
    pub async fn disk_space(&self) -> BlobResult<DiskSpace> {
        let dir = self.inner.blobs.clone();
        blocking(move || {
            let stat = rustix::fs::statvfs(&dir)?;
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
        let path = self.path(id);
        match tokio::fs::metadata(&path).await {
            Ok(meta) => Ok(meta.len()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(BlobError::NotFound(id)),
            Err(e) => Err(e.into()),
        }
    }

    /// Streams `len` bytes of a blob starting at `offset`, in chunks of at most [`READ_CHUNK`].
    /// The file is opened before this returns, so a later delete cannot cut the stream short.
    /// The kernel is asked to read [`READ_AHEAD`] past each chunk into the page cache ahead of
    /// the stream, so a large read from a cold disk overlaps the disk with the sending.
    pub async fn read(
        &self,
        id: BlobId,
        offset: u64,
        len: u64,
    ) -> BlobResult<impl Stream<Item = BlobResult<Bytes>> + Send + use<>> {
        let path = self.path(id);
        let end = offset + len;
        // Opening and the first chunk share one trip to the blocking pool (a small object's
        // whole read is one trip).
        let first = remaining_chunk(len);
        let (file, head, advised) = blocking(move || {
            let file = std::fs::File::open(path)?;
            let advised = advise_ahead(&file, offset + first as u64, offset + first as u64, end);
            let head = read_chunk_at(&file, offset, first)?;
            Ok((file, head, advised))
        })
        .await
        .map_err(|e| match e {
            BlobError::Io(io) if io.kind() == std::io::ErrorKind::NotFound => BlobError::NotFound(id),
            other => other,
        })?;
        let file = Arc::new(file);
        let head = futures::stream::iter((first > 0).then_some(Ok::<_, BlobError>(head)));
        let tail = futures::stream::unfold((offset + first as u64, advised), move |(at, advised)| {
            let file = Arc::clone(&file);
            async move {
                if at >= end {
                    return None;
                }
                let want = remaining_chunk(end - at);
                let read = blocking(move || {
                    let advised = advise_ahead(&file, at + want as u64, advised, end);
                    Ok((read_chunk_at(&file, at, want)?, advised))
                });
                match read.await {
                    Ok((chunk, advised)) => Some((Ok(chunk), (at + want as u64, advised))),
                    Err(e) => Some((Err(e), (end, end))),
                }
            }
        });
        Ok(futures::StreamExt::chain(head, tail))
    }

    /// Reads a whole blob into memory (for small blobs).
    pub async fn read_all(&self, id: BlobId) -> BlobResult<Bytes> {
        let path = self.path(id);
        match tokio::fs::read(&path).await {
            Ok(data) => Ok(Bytes::from(data)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(BlobError::NotFound(id)),
            Err(e) => Err(e.into()),
        }
    }

    /// A new blob with the same bytes, sharing storage through a hard link (blobs are immutable).
    pub async fn duplicate(&self, id: BlobId) -> BlobResult<BlobId> {
        let copy = BlobId::random();
        let (from, to) = (self.path(id), self.path(copy));
        blocking(move || {
            std::fs::hard_link(&from, &to)?;
            fsync_dir(to.parent().unwrap_or(Path::new(".")))
        })
        .await
        .map_err(|e| match e {
            BlobError::Io(io) if io.kind() == std::io::ErrorKind::NotFound => BlobError::NotFound(id),
            other => other,
        })?;
        Ok(copy)
    }

    /// Deletes a blob; deleting a missing blob is not an error.
    pub async fn delete(&self, id: BlobId) -> BlobResult<()> {
        match tokio::fs::remove_file(self.path(id)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Every blob whose file was last modified before `older_than`, with its size.
    pub async fn list_older_than(&self, older_than: SystemTime) -> BlobResult<Vec<(BlobId, u64)>> {
        let blobs = self.inner.blobs.clone();
        blocking(move || {
            let mut out = Vec::new();
            for shard in std::fs::read_dir(blobs)? {
                for entry in std::fs::read_dir(shard?.path())? {
                    let entry = entry?;
                    let Some(id) = entry.file_name().to_str().and_then(|n| n.parse::<BlobId>().ok()) else {
                        continue;
                    };
                    let meta = entry.metadata()?;
                    if meta.modified()? < older_than {
                        out.push((id, meta.len()));
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    /// Deletes every blob older than `older_than` for which `is_referenced` says no. Returns the
    /// number of blobs and bytes removed. Blobs being written right now are younger than the
    /// cut-off (their file is renamed into place just before their metadata commit), so callers
    /// pass a time before the process started, or one well in the past. File times are only as
    /// fine as the kernel tick, so keep the cut-off a second or more older than any live write.
    pub async fn collect_orphans<F, Fut>(&self, older_than: SystemTime, is_referenced: F) -> BlobResult<(usize, u64)>
    where
        F: Fn(Vec<BlobId>) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<bool>, String>>,
    {
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

/// A blob being written. Dropping it without [`BlobWriter::finish`] removes the temporary file.
pub struct BlobWriter {
    store: BlobStore,
    id: BlobId,
    tmp_path: PathBuf,
    file: Option<std::fs::File>,
    buffer: BytesMut,
    written: u64,
    finished: bool,
}

impl BlobWriter {
    pub fn id(&self) -> BlobId {
        self.id
    }

    /// Bytes accepted so far.
    pub fn len(&self) -> u64 {
        self.written + self.buffer.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub async fn write(&mut self, data: Bytes) -> BlobResult<()> {
        if self.buffer.is_empty() && data.len() >= WRITE_BUFFER {
            return self.write_out(data).await;
        }
        self.buffer.extend_from_slice(&data);
        if self.buffer.len() >= WRITE_BUFFER {
            let full = self.buffer.split().freeze();
            self.write_out(full).await?;
        }
        Ok(())
    }

    async fn write_out(&mut self, data: Bytes) -> BlobResult<()> {
        let mut file = self.file.take().ok_or_else(|| BlobError::Task("blob writer already failed".into()))?;
        let len = data.len() as u64;
        let file = blocking(move || {
            file.write_all(&data)?;
            Ok(file)
        })
        .await?;
        self.file = Some(file);
        self.written += len;
        Ok(())
    }

    /// Flushes, fsyncs, and moves the blob into place; after this returns the blob survives a
    /// crash and metadata may point at it.
    pub async fn finish(mut self) -> BlobResult<BlobId> {
        if !self.buffer.is_empty() {
            let rest = self.buffer.split().freeze();
            self.write_out(rest).await?;
        }
        let file = self.file.take().ok_or_else(|| BlobError::Task("blob writer already failed".into()))?;
        let (tmp, dest) = (self.tmp_path.clone(), self.store.path(self.id));
        blocking(move || {
            file.sync_data()?;
            drop(file);
            std::fs::rename(&tmp, &dest)?;
            fsync_dir(dest.parent().unwrap_or(Path::new(".")))
        })
        .await?;
        self.finished = true;
        Ok(self.id)
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if !self.finished {
            // Best effort; a leftover temporary file is removed at the next start anyway.
            let _ = std::fs::remove_file(&self.tmp_path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;
    use std::time::Duration;

    async fn collect(stream: impl Stream<Item = BlobResult<Bytes>>) -> Vec<u8> {
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

    /// Bytes of `path` in the page cache, per util-linux's `fincore`.
    fn resident_bytes(path: &Path) -> u64 {
        let out = std::process::Command::new("fincore")
            .args(["--bytes", "--noheadings", "--raw", "--output", "RES"])
            .arg(path)
            .output()
            .expect("fincore (util-linux) must be installed");
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }

    /// Opening a large read asks the kernel for the next READ_AHEAD bytes at once, so a cold
    /// read of a whole volume window reaches the disk as one request, not chunk by chunk.
    #[tokio::test]
    async fn a_large_read_asks_the_kernel_to_read_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let id = store.put(Bytes::from(vec![7u8; 12 << 20])).await.unwrap();
        let path = store.path(id);
        let file = std::fs::File::open(&path).unwrap();
        // The blob is fsynced, so its pages are clean and dropping them works (except on a
        // file system that keeps everything in memory, where the check below holds anyway).
        rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).unwrap();
        let cold = resident_bytes(&path);
        let stream = store.read(id, 0, 12 << 20).await.unwrap();
        let resident = resident_bytes(&path);
        assert!(
            resident >= READ_CHUNK as u64 + READ_AHEAD || cold == 12 << 20,
            "after opening the read only {resident} bytes are being read (cold: {cold})"
        );
        assert_eq!(collect(stream).await, vec![7u8; 12 << 20]);
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
