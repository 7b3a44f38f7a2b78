//! The request-body spool: the edge keeps a request's body until it knows whether the origin
//! wants the request replayed, then streams it again as often as needed. Bodies up to
//! `memory` bytes stay in memory; larger ones go to an unnamed temporary file (mode 0600, no
//! name on disk, so it disappears when the spool is dropped or the process dies). A body over
//! `max_total` bytes is refused with [`SpoolError::TooLarge`] (the edge answers 413).

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::{BodyExt, StreamBody};
use meridian_http::{BoxError, ResponseBody, boxed};

/// How a body is read back from the file, per read.
const FILE_CHUNK: usize = 256 << 10;

/// Where and how much the spool keeps.
#[derive(Clone, Debug)]
pub struct SpoolLimits {
    /// Bodies up to this many bytes stay in memory.
    pub memory: usize,
    /// Bodies over this many bytes are refused.
    pub max_total: u64,
    /// The directory of the temporary files.
    pub dir: PathBuf,
}

impl Default for SpoolLimits {
    fn default() -> Self {
        SpoolLimits { memory: 1 << 20, max_total: 5 << 30, dir: std::env::temp_dir() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("the request body is larger than the {limit} bytes the edge keeps for a replay")]
    TooLarge { limit: u64 },
    #[error("reading the request body failed: {0}")]
    Read(BoxError),
    #[error("writing the request body to a temporary file in {dir} failed: {source}")]
    File { dir: PathBuf, source: io::Error },
}

/// A request body kept whole, replayable any number of times.
#[derive(Clone)]
pub struct Spool {
    len: u64,
    kept: Kept,
}

#[derive(Clone)]
enum Kept {
    Memory(Vec<Bytes>),
    File(Arc<File>),
}

impl Spool {
    /// An empty body.
    pub fn empty() -> Spool {
        Spool { len: 0, kept: Kept::Memory(Vec::new()) }
    }

    /// Reads `body` to its end under `limits`.
    pub async fn read<B>(mut body: B, limits: &SpoolLimits) -> Result<Spool, SpoolError>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Into<BoxError>,
    {
        let mut chunks = Vec::new();
        let mut len = 0u64;
        let mut file: Option<File> = None;
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame.map_err(|e| SpoolError::Read(e.into()))?.into_data() else { continue };
            len += data.len() as u64;
            if len > limits.max_total {
                return Err(SpoolError::TooLarge { limit: limits.max_total });
            }
            if file.is_none() && len > limits.memory as u64 {
                file = Some(spill(&chunks, limits).await?);
                chunks.clear();
            }
            match file.as_mut() {
                Some(f) => write_blocking(f, data, limits).await?,
                None => chunks.push(data),
            }
        }
        let kept = match file {
            Some(f) => Kept::File(Arc::new(f)),
            None => Kept::Memory(chunks),
        };
        Ok(Spool { len, kept })
    }

    /// The body's length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the body went to a temporary file.
    pub fn on_disk(&self) -> bool {
        matches!(self.kept, Kept::File(_))
    }

    /// The file's permission bits, when on disk (tests check 0600).
    pub fn file_mode(&self) -> Option<u32> {
        match &self.kept {
            Kept::File(f) => f.metadata().ok().map(|m| m.permissions().mode() & 0o777),
            Kept::Memory(_) => None,
        }
    }

    /// A new stream of the whole body.
    pub fn body(&self) -> ResponseBody {
        match &self.kept {
            Kept::Memory(chunks) => {
                let frames = chunks.clone().into_iter().map(|c| Ok::<_, io::Error>(Frame::data(c)));
                boxed(StreamBody::new(futures::stream::iter(frames)))
            }
            Kept::File(file) => boxed(StreamBody::new(file_frames(file.clone(), self.len))),
        }
    }
}

/// Moves what is in memory to a new unnamed temporary file.
async fn spill(chunks: &[Bytes], limits: &SpoolLimits) -> Result<File, SpoolError> {
    let dir = limits.dir.clone();
    let mut file = tempfile::tempfile_in(&dir)
        .and_then(|file| {
            // An unnamed file is reachable only through /proc/PID/fd; owner-only all the same.
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            Ok(file)
        })
        .map_err(|source| SpoolError::File { dir, source })?;
    for chunk in chunks {
        write_blocking(&mut file, chunk.clone(), limits).await?;
    }
    Ok(file)
}

async fn write_blocking(file: &mut File, data: Bytes, limits: &SpoolLimits) -> Result<(), SpoolError> {
    // Writes go to the page cache; a blocking write of one frame is short, and
    // block_in_place keeps it off the other tasks' way.
    tokio::task::block_in_place(|| file.write_all(&data))
        .map_err(|source| SpoolError::File { dir: limits.dir.clone(), source })
}

fn file_frames(file: Arc<File>, len: u64) -> impl futures::Stream<Item = io::Result<Frame<Bytes>>> {
    futures::stream::try_unfold(0u64, move |offset| {
        let file = file.clone();
        async move {
            if offset >= len {
                return Ok(None);
            }
            let want = usize::try_from(len - offset).unwrap_or(FILE_CHUNK).min(FILE_CHUNK);
            let chunk =
                tokio::task::spawn_blocking(move || read_at(&file, offset, want)).await.map_err(io::Error::other)??;
            let next = offset + chunk.len() as u64;
            Ok(Some((Frame::data(chunk), next)))
        }
    })
}

fn read_at(file: &File, offset: u64, want: usize) -> io::Result<Bytes> {
    let mut buf = vec![0u8; want];
    file.read_exact_at(&mut buf, offset)?;
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    fn limits(memory: usize, max_total: u64) -> SpoolLimits {
        SpoolLimits { memory, max_total, dir: std::env::temp_dir() }
    }

    fn chunked(data: &[u8], size: usize) -> impl Body<Data = Bytes, Error = io::Error> + Unpin {
        let frames: Vec<_> = data.chunks(size).map(|c| Ok(Frame::data(Bytes::copy_from_slice(c)))).collect();
        StreamBody::new(futures::stream::iter(frames))
    }

    async fn collect(spool: &Spool) -> Vec<u8> {
        spool.body().collect().await.expect("spooled body").to_bytes().to_vec()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn small_bodies_stay_in_memory_and_replay() {
        let spool = Spool::read(Full::new(Bytes::from_static(b"hello")), &limits(16, 100)).await.expect("spool");
        assert!(!spool.on_disk());
        assert_eq!(collect(&spool).await, b"hello");
        assert_eq!(collect(&spool).await, b"hello", "a second replay sees the same bytes");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn large_bodies_go_to_an_owner_only_unnamed_file_and_replay_whole() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        let spool = Spool::read(chunked(&data, 70_000), &limits(1 << 20, 10 << 20)).await.expect("spool");
        assert!(spool.on_disk());
        assert_eq!(spool.file_mode(), Some(0o600));
        assert_eq!(spool.len(), data.len() as u64);
        assert_eq!(collect(&spool).await, data);
        assert_eq!(collect(&spool).await, data);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn bodies_over_the_bound_are_refused() {
        let data = vec![1u8; 5000];
        let err = Spool::read(chunked(&data, 1000), &limits(100, 4096)).await.err().expect("too large");
        assert!(matches!(err, SpoolError::TooLarge { limit: 4096 }), "{err}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_missing_spool_directory_is_a_clear_error() {
        let mut l = limits(10, 1000);
        l.dir = "/nonexistent/meridian-spool".into();
        let err = Spool::read(chunked(&[1u8; 100], 50), &l).await.err().expect("no directory");
        assert!(err.to_string().contains("/nonexistent/meridian-spool"), "{err}");
    }
}
