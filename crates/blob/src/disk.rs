//! Blobs as files on the local disk.
//!
//! A blob is an immutable file `blobs/<2 hex>/<32 hex>` named by its id. Writing one goes:
//! stream into `tmp/`, fsync, rename into `blobs/xx/`, fsync the directory. Copies share bytes
//! through hard links. Reads stream in [`READ_CHUNK`] pieces.

use std::io::Write;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use meridian_common::private_files;

use crate::backend::{BackendWriter, BlobBackend, BlobStream};
use crate::{BlobError, BlobId, BlobResult, READ_CHUNK};

/// Bytes gathered before each write to the file; large writes keep the syscall count low.
const WRITE_BUFFER: usize = 1 << 20;
/// How far past a stream's current chunk the kernel is asked to read ahead (a volume's log
/// object is 4 MiB: a ranged GET of a whole window is requested from the disk at once).
const READ_AHEAD: u64 = 4 << 20;

/// The blob directories under a data directory.
pub struct DiskBackend {
    root: PathBuf,
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

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> BlobResult<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| BlobError::Task(e.to_string()))?.map_err(BlobError::Io)
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
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
        fsync_dir(&blobs)?;
        fsync_dir(root)?;
        Ok(DiskBackend { root: root.to_path_buf(), blobs, tmp })
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
        let path = tmp_path.clone();
        let file = blocking(move || private_files::file_options().write(true).create_new(true).open(path)).await?;
        Ok(Box::new(DiskWriter {
            tmp_path,
            dest: self.path(id),
            file: Some(file),
            buffer: BytesMut::with_capacity(WRITE_BUFFER),
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
            fsync_dir(&dir).map_err(|e| annotate(e, &format!("cannot fsync {}", dir.display())))
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
        let first = remaining_chunk(len);
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
            fsync_dir(to.parent().unwrap_or(Path::new(".")))
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
struct DiskWriter {
    tmp_path: PathBuf,
    dest: PathBuf,
    file: Option<std::fs::File>,
    buffer: BytesMut,
    finished: bool,
}

impl DiskWriter {
    async fn write_out(&mut self, data: Bytes) -> BlobResult<()> {
        let mut file = self.file.take().ok_or_else(|| BlobError::Task("blob writer already failed".into()))?;
        let file = blocking(move || {
            file.write_all(&data)?;
            Ok(file)
        })
        .await?;
        self.file = Some(file);
        Ok(())
    }
}

#[async_trait::async_trait]
impl BackendWriter for DiskWriter {
    async fn write(&mut self, data: Bytes) -> BlobResult<()> {
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

    /// Flushes, fsyncs, and moves the blob into place.
    async fn finish(mut self: Box<Self>) -> BlobResult<()> {
        if !self.buffer.is_empty() {
            let rest = self.buffer.split().freeze();
            self.write_out(rest).await?;
        }
        let file = self.file.take().ok_or_else(|| BlobError::Task("blob writer already failed".into()))?;
        let (tmp, dest) = (self.tmp_path.clone(), self.dest.clone());
        blocking(move || {
            file.sync_data()?;
            drop(file);
            std::fs::rename(&tmp, &dest)?;
            fsync_dir(dest.parent().unwrap_or(Path::new(".")))
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
