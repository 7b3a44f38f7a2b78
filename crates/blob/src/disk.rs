//! Blobs as files on the local disk.
//!
//! A blob is an immutable file `blobs/<2 hex>/<32 hex>` named by its id. Writing one goes:
//! stream into `tmp/`, fsync, rename into `blobs/xx/`, fsync the directory. Copies share bytes
//! through hard links. Reads stream in [`READ_CHUNK`] pieces, then [`TAIL_CHUNK`] pieces past the
//! first.
//!
//! Blob files are written around the page cache (`O_DIRECT`) where the file system allows it:
//! copying every byte into the page cache was half of a large PUT's CPU time
//! (docs/decisions/061-direct-blob-writes.md), and the fsync that follows has to write it out
//! anyway. One buffer is written while the next fills.

use std::io::{Seek, Write};
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use meridian_common::private_files;

use crate::backend::{BackendWriter, BlobBackend, BlobStream};
use crate::{BlobError, BlobId, BlobResult, READ_CHUNK};

/// Bytes gathered before each write to the file; large writes keep the syscall count low.
const WRITE_BUFFER: usize = 1 << 20;
/// Alignment of memory, offsets and lengths of direct writes (the largest logical block size
/// of common disks).
const DIRECT_ALIGN: usize = 4096;
/// A write buffer aligned for `O_DIRECT`.
type AlignedBuffer = aligned_vec::AVec<u8, aligned_vec::ConstAlign<DIRECT_ALIGN>>;

fn aligned_buffer() -> AlignedBuffer {
    AlignedBuffer::with_capacity(DIRECT_ALIGN, WRITE_BUFFER)
}
/// How far past a stream's current chunk the kernel is asked to read ahead (a volume's log
/// object is 4 MiB: a ranged GET of a whole window is requested from the disk at once).
const READ_AHEAD: u64 = 4 << 20;

/// Size of a read's chunks after its first [`READ_CHUNK`]: each chunk is one trip to the blocking
/// pool (a futex wake and a context switch each way), whose futex calls were 14% of the S3
/// server's CPU time serving a volume's cold reads in 256 KiB chunks (docs/benchmarks.md, "Cold
/// reads: fewer trips to the blocking pool"). A stream holds at most one chunk in memory.
const TAIL_CHUNK: usize = 1 << 20;

/// The blob directories under a data directory.
pub struct DiskBackend {
    root: PathBuf,
    blobs: PathBuf,
    tmp: PathBuf,
    /// Whether this file system takes direct (`O_DIRECT`) writes; probed at open.
    direct: bool,
}

/// The size of the next chunk of at most `chunk` bytes of a read with `remaining` bytes to go.
fn remaining_chunk(remaining: u64, chunk: usize) -> usize {
    remaining.min(chunk as u64) as usize
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

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> BlobResult<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| BlobError::Task(e.to_string()))?.map_err(BlobError::Io)
}

/// The same I/O error with what was being done in front of it.
fn annotate(e: std::io::Error, doing: &str) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{doing}: {e}"))
}

/// `NotFound` I/O errors as [`BlobError::NotFound`] of `id`.
fn not_found_as(id: BlobId) -> impl Fn(BlobError) -> BlobError {
    move |e| match e {
        BlobError::Io(io) if io.kind() == std::io::ErrorKind::NotFound => BlobError::NotFound(id),
        other => other,
    }
}

impl DiskBackend {
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
        private_files::sync_dir(&blobs)?;
        private_files::sync_dir(root)?;
        let direct = takes_direct_writes(&tmp);
        if !direct {
            tracing::info!(dir = %tmp.display(), "this file system refuses direct writes: blobs are written through the page cache");
        }
        Ok(DiskBackend { root: root.to_path_buf(), blobs, tmp, direct })
    }

    fn path(&self, id: BlobId) -> PathBuf {
        let name = id.to_string();
        self.blobs.join(&name[..2]).join(name)
    }
}

#[async_trait::async_trait]
impl BlobBackend for DiskBackend {
    fn describe(&self) -> String {
        format!("the local disk ({})", self.root.display())
    }

    async fn create(&self, id: BlobId) -> BlobResult<Box<dyn BackendWriter>> {
        let tmp_path = self.tmp.join(id.to_string());
        let (path, direct) = (tmp_path.clone(), self.direct);
        let file = blocking(move || open_new(&path, direct)).await?;
        Ok(Box::new(DiskWriter {
            tmp_path,
            dest: self.path(id),
            file: Some(file),
            direct,
            buffer: aligned_buffer(),
            writing: None,
            finished: false,
        }))
    }

    /// A small file created in `tmp/`, written, fsynced and removed, then the directory
    /// fsynced. Fails on a full disk, a read-only file system or a `tmp/` that is no longer a
    /// writable directory. The probe file is named like a temporary blob, so a crash midway
    /// leaves nothing `open` keeps.
    async fn probe_writable(&self) -> BlobResult<()> {
        let dir = self.tmp.clone();
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
            private_files::sync_dir(&dir).map_err(|e| annotate(e, &format!("cannot fsync {}", dir.display())))
        })
        .await
    }

    async fn size(&self, id: BlobId) -> BlobResult<u64> {
        match tokio::fs::metadata(self.path(id)).await {
            Ok(meta) => Ok(meta.len()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(BlobError::NotFound(id)),
            Err(e) => Err(e.into()),
        }
    }

    /// The kernel is asked to read [`READ_AHEAD`] past each chunk into the page cache ahead of
    /// the stream, so a large read from a cold disk overlaps the disk with the sending.
    async fn read(&self, id: BlobId, offset: u64, len: u64) -> BlobResult<BlobStream> {
        let path = self.path(id);
        let end = offset + len;
        // Opening and the first chunk share one trip to the blocking pool (a small object's
        // whole read is one trip).
        let first = remaining_chunk(len, READ_CHUNK);
        let (file, head, advised) = blocking(move || {
            let file = std::fs::File::open(path)?;
            let advised = advise_ahead(&file, offset + first as u64, offset + first as u64, end);
            let head = read_chunk_at(&file, offset, first)?;
            Ok((file, head, advised))
        })
        .await
        .map_err(not_found_as(id))?;
        let file = Arc::new(file);
        let head = futures::stream::iter((first > 0).then_some(Ok::<_, BlobError>(head)));
        let tail = futures::stream::unfold((offset + first as u64, advised), move |(at, advised)| {
            let file = Arc::clone(&file);
            async move {
                if at >= end {
                    return None;
                }
                let want = remaining_chunk(end - at, TAIL_CHUNK);
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
        Ok(Box::pin(futures::StreamExt::chain(head, tail)))
    }

    async fn read_all(&self, id: BlobId) -> BlobResult<Bytes> {
        match tokio::fs::read(self.path(id)).await {
            Ok(data) => Ok(Bytes::from(data)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(BlobError::NotFound(id)),
            Err(e) => Err(e.into()),
        }
    }

    async fn duplicate(&self, id: BlobId, copy: BlobId) -> BlobResult<()> {
        let (from, to) = (self.path(id), self.path(copy));
        blocking(move || {
            std::fs::hard_link(&from, &to)?;
            private_files::sync_dir(to.parent().unwrap_or(Path::new(".")))
        })
        .await
        .map_err(not_found_as(id))
    }

    async fn delete(&self, id: BlobId) -> BlobResult<()> {
        match tokio::fs::remove_file(self.path(id)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn list_older_than(&self, older_than: SystemTime) -> BlobResult<Vec<(BlobId, u64)>> {
        let blobs = self.blobs.clone();
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

    /// Temporary files older than `older_than` (`open` removes all of them at start).
    async fn collect_stale_writes(&self, older_than: SystemTime) -> BlobResult<usize> {
        let tmp = self.tmp.clone();
        blocking(move || {
            let mut removed = 0;
            for entry in std::fs::read_dir(tmp)? {
                let entry = entry?;
                if entry.metadata()?.modified()? < older_than {
                    std::fs::remove_file(entry.path())?;
                    removed += 1;
                }
            }
            Ok(removed)
        })
        .await
    }
}

/// A blob file being written in `tmp/`. Dropped without `finish`, it removes the file.
/// Creates a new private file for writing, `O_DIRECT` when `direct`.
fn open_new(path: &Path, direct: bool) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = private_files::file_options();
    options.write(true).create_new(true);
    if direct {
        options.custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32);
    }
    options.open(path)
}

/// Whether a direct write of one aligned block into `dir` works (tmpfs, for one, refuses
/// `O_DIRECT`). The probe file is named like a temporary blob, so a crash leaves nothing that
/// `open` keeps.
fn takes_direct_writes(dir: &Path) -> bool {
    let path = dir.join(format!("direct-probe-{}", BlobId::random()));
    let written = open_new(&path, true).and_then(|mut file| {
        let mut block = aligned_buffer();
        block.resize(DIRECT_ALIGN, 0);
        file.write_all(&block)
    });
    let _ = std::fs::remove_file(&path);
    written.is_ok()
}

/// Writes `buffer` at the file's position; with `direct`, a short last block is padded to the
/// alignment (the file is cut back to its length when it is finished).
fn write_buffer(file: &mut std::fs::File, buffer: &mut AlignedBuffer, direct: bool) -> std::io::Result<()> {
    let len = buffer.len();
    if direct && !len.is_multiple_of(DIRECT_ALIGN) {
        buffer.resize(len.next_multiple_of(DIRECT_ALIGN), 0);
    }
    let written = file.write_all(buffer);
    buffer.truncate(len);
    written
}

/// A write to the file under way on the blocking pool; gives back the file and the buffer.
type Writing = tokio::task::JoinHandle<std::io::Result<(std::fs::File, AlignedBuffer)>>;

struct DiskWriter {
    tmp_path: PathBuf,
    dest: PathBuf,
    /// `None` while a write is under way (or after one failed).
    file: Option<std::fs::File>,
    direct: bool,
    /// Fills while the previous buffer is written.
    buffer: AlignedBuffer,
    writing: Option<Writing>,
    finished: bool,
}

impl DiskWriter {
    /// Waits for the write under way, if any; returns its buffer for reuse.
    async fn wait_for_write(&mut self) -> BlobResult<Option<AlignedBuffer>> {
        let Some(writing) = self.writing.take() else { return Ok(None) };
        let (file, buffer) = writing.await.map_err(|e| BlobError::Task(e.to_string()))??;
        self.file = Some(file);
        Ok(Some(buffer))
    }

    /// Starts writing the full buffer and carries on filling another.
    async fn write_full_buffer(&mut self) -> BlobResult<()> {
        let mut next = self.wait_for_write().await?.unwrap_or_else(aligned_buffer);
        next.clear();
        let mut full = std::mem::replace(&mut self.buffer, next);
        let mut file = self.file.take().ok_or_else(|| BlobError::Task("blob writer already failed".into()))?;
        let direct = self.direct;
        self.writing = Some(tokio::task::spawn_blocking(move || {
            write_buffer(&mut file, &mut full, direct)?;
            Ok((file, full))
        }));
        Ok(())
    }
}

#[async_trait::async_trait]
impl BackendWriter for DiskWriter {
    async fn write(&mut self, data: Bytes) -> BlobResult<()> {
        let mut rest = &data[..];
        while !rest.is_empty() {
            let take = (WRITE_BUFFER - self.buffer.len()).min(rest.len());
            self.buffer.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.buffer.len() == WRITE_BUFFER {
                self.write_full_buffer().await?;
            }
        }
        Ok(())
    }

    /// Writes the rest, fsyncs, and moves the blob into place.
    async fn finish(mut self: Box<Self>) -> BlobResult<()> {
        self.wait_for_write().await?;
        let mut file = self.file.take().ok_or_else(|| BlobError::Task("blob writer already failed".into()))?;
        let mut rest = std::mem::replace(&mut self.buffer, AlignedBuffer::new(DIRECT_ALIGN));
        let (tmp, dest, direct) = (self.tmp_path.clone(), self.dest.clone(), self.direct);
        blocking(move || {
            let len = file.stream_position()? + rest.len() as u64;
            write_buffer(&mut file, &mut rest, direct)?;
            if direct {
                file.set_len(len)?; // drops the padding of the last block
            }
            file.sync_data()?;
            drop(file);
            std::fs::rename(&tmp, &dest)?;
            private_files::sync_dir(dest.parent().unwrap_or(Path::new(".")))
        })
        .await?;
        self.finished = true;
        Ok(())
    }
}

impl Drop for DiskWriter {
    fn drop(&mut self) {
        if !self.finished {
            // Best effort; a leftover temporary file is removed at the next start anyway.
            let _ = std::fs::remove_file(&self.tmp_path);
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::TryStreamExt;

    use super::*;

    /// Bytes of `path` in the page cache, per util-linux's `fincore`.
    fn resident_bytes(path: &Path) -> u64 {
        let out = std::process::Command::new("fincore")
            .args(["--bytes", "--noheadings", "--raw", "--output", "RES"])
            .arg(path)
            .output()
            .expect("fincore (util-linux) must be installed");
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }

    /// Writes `data` as a blob in odd-sized pieces and reads it back.
    /// Returns the bytes of the new blob file in the page cache before it was read.
    async fn round_trip(backend: &DiskBackend, data: &[u8]) -> u64 {
        let id = BlobId::random();
        let mut writer = backend.create(id).await.unwrap();
        for piece in data.chunks(65_521) {
            writer.write(Bytes::copy_from_slice(piece)).await.unwrap();
        }
        writer.finish().await.unwrap();
        let path = backend.path(id);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), data.len() as u64, "length of {}", data.len());
        let resident = resident_bytes(&path);
        let chunks: Vec<Bytes> = backend.read(id, 0, data.len() as u64).await.unwrap().try_collect().await.unwrap();
        assert_eq!(chunks.concat(), data, "bytes of a {}-byte blob", data.len());
        resident
    }

    const EDGE_SIZES: [usize; 9] =
        [0, 1, 4095, 4096, 4097, WRITE_BUFFER - 1, WRITE_BUFFER, WRITE_BUFFER + 1, 3 * WRITE_BUFFER + 12_345];

    fn pattern(size: usize) -> Vec<u8> {
        (0..size).map(|i| (i * 31 % 251) as u8).collect()
    }

    /// Blobs are written around the page cache (a fresh blob has no page in it), and every size
    /// at the alignment and buffer edges comes back exactly, padding cut off.
    #[tokio::test]
    async fn blobs_are_written_around_the_page_cache_and_read_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let backend = DiskBackend::open(dir.path()).unwrap();
        assert!(backend.direct, "the test directory's file system ({}) takes O_DIRECT", dir.path().display());
        for size in EDGE_SIZES {
            assert_eq!(round_trip(&backend, &pattern(size)).await, 0, "page cache after writing {size} bytes");
        }
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0, "no probe or temporary file left");
    }

    /// Where direct writes are refused, blobs go through the page cache (where the check
    /// above finds them), the same bytes.
    #[tokio::test]
    async fn without_direct_writes_blobs_come_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let mut backend = DiskBackend::open(dir.path()).unwrap();
        backend.direct = false;
        for size in EDGE_SIZES {
            let resident = round_trip(&backend, &pattern(size)).await;
            assert!(size < 4096 || resident > 0, "a buffered {size}-byte blob is in the page cache");
        }
    }

    /// Past its first chunk a long read comes in TAIL_CHUNK pieces (one blocking-pool trip
    /// each), exact to the last byte of the range.
    #[tokio::test]
    async fn a_long_read_comes_in_large_chunks_after_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let backend = DiskBackend::open(dir.path()).unwrap();
        let id = BlobId::random();
        let data = pattern(4 * TAIL_CHUNK);
        let mut writer = backend.create(id).await.unwrap();
        writer.write(Bytes::from(data.clone())).await.unwrap();
        writer.finish().await.unwrap();
        let (offset, len) = (12_345, 3 * TAIL_CHUNK + 777);
        let chunks: Vec<Bytes> = backend.read(id, offset, len as u64).await.unwrap().try_collect().await.unwrap();
        let sizes: Vec<usize> = chunks.iter().map(Bytes::len).collect();
        let tail = len - READ_CHUNK - 2 * TAIL_CHUNK;
        assert_eq!(sizes, [READ_CHUNK, TAIL_CHUNK, TAIL_CHUNK, tail]);
        assert_eq!(chunks.concat(), &data[offset as usize..offset as usize + len]);
    }

    /// Opening a large read asks the kernel for the next READ_AHEAD bytes at once, so a cold
    /// read of a whole volume window reaches the disk as one request, not chunk by chunk.
    #[tokio::test]
    async fn a_large_read_asks_the_kernel_to_read_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let backend = DiskBackend::open(dir.path()).unwrap();
        let id = BlobId::random();
        let mut writer = backend.create(id).await.unwrap();
        writer.write(Bytes::from(vec![7u8; 12 << 20])).await.unwrap();
        writer.finish().await.unwrap();
        let path = backend.path(id);
        let file = std::fs::File::open(&path).unwrap();
        // The blob is fsynced, so its pages are clean and dropping them works (except on a
        // file system that keeps everything in memory, where the check below holds anyway).
        rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).unwrap();
        let cold = resident_bytes(&path);
        let stream = backend.read(id, 0, 12 << 20).await.unwrap();
        let resident = resident_bytes(&path);
        assert!(
            resident >= READ_CHUNK as u64 + READ_AHEAD || cold == 12 << 20,
            "after opening the read only {resident} bytes are being read (cold: {cold})"
        );
        let chunks: Vec<Bytes> = stream.try_collect().await.unwrap();
        assert_eq!(chunks.concat(), vec![7u8; 12 << 20]);
    }
}
