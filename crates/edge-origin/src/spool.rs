//! The request-body spool: the edge keeps a request's body until it knows whether the origin
//! wants the request replayed, then streams it again as often as needed. Bodies up to
//! `memory` bytes stay in memory; larger ones go to an unnamed temporary file (mode 0600, no
//! name on disk, so it disappears when the spool is dropped or the process dies). A body over
//! `max_total` bytes is refused with [`SpoolError::TooLarge`] (the edge answers 413).
//!
//! The spool is a tee: [`Spool::start`] reads the client's body in a task of its own while
//! [`Spool::body`] streams already give out what has arrived, waiting for the rest. So the
//! origin receives an upload while the client is still sending it, and a replay later streams
//! the same bytes again from memory or the file.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::{BodyExt, StreamBody};
use meridian_http::{BoxError, ResponseBody, boxed};
use tokio::sync::watch;

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

/// A request body, kept as it arrives, replayable any number of times (cheap to clone).
#[derive(Clone)]
pub struct Spool {
    shared: Arc<Shared>,
}

struct Shared {
    kept: Mutex<Kept>,
    /// How many bytes are kept so far, and how the body ended (once it has).
    progress: watch::Sender<Progress>,
}

#[derive(Clone, Default)]
struct Progress {
    len: u64,
    end: Option<Result<(), Arc<SpoolError>>>,
}

enum Kept {
    Memory(Vec<Bytes>),
    File(Arc<File>),
}

impl Spool {
    /// An empty body.
    pub fn empty() -> Spool {
        let progress = Progress { len: 0, end: Some(Ok(())) };
        Spool {
            shared: Arc::new(Shared {
                kept: Mutex::new(Kept::Memory(Vec::new())),
                progress: watch::Sender::new(progress),
            }),
        }
    }

    /// Starts keeping `body` under `limits`, in a task of its own; [`Spool::body`] streams
    /// what has arrived at once. A body announcing more than `max_total` bytes is refused
    /// before anything is read.
    pub fn start<B>(body: B, limits: &SpoolLimits) -> Result<Spool, SpoolError>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError> + Send,
    {
        if body.size_hint().lower() > limits.max_total {
            // Refused before reading; the client may still be sending: read and drop what it
            // sends for a while so that it gets to read the answer (a lingering close).
            tokio::spawn(linger(body));
            return Err(SpoolError::TooLarge { limit: limits.max_total });
        }
        let shared = Arc::new(Shared {
            kept: Mutex::new(Kept::Memory(Vec::new())),
            progress: watch::Sender::new(Progress::default()),
        });
        tokio::spawn(keep(body, limits.clone(), shared.clone()));
        Ok(Spool { shared })
    }

    /// Reads `body` to its end under `limits`.
    pub async fn read<B>(body: B, limits: &SpoolLimits) -> Result<Spool, SpoolError>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError> + Send,
    {
        let spool = Spool::start(body, limits)?;
        match spool.finished().await {
            Ok(()) => Ok(spool),
            Err(err) => Err(unshared(&err)),
        }
    }

    /// Waits for the whole body; the error that ended it otherwise.
    pub async fn finished(&self) -> Result<(), Arc<SpoolError>> {
        let mut progress = self.shared.progress.subscribe();
        let ended = progress.wait_for(|p| p.end.is_some()).await;
        match ended.ok().and_then(|p| p.end.clone()) {
            Some(end) => end,
            None => Err(Arc::new(SpoolError::Read("the spool stopped".into()))),
        }
    }

    /// The error that ended the body, if it ended with one.
    pub fn failure(&self) -> Option<Arc<SpoolError>> {
        self.shared.progress.borrow().end.clone().and_then(Result::err)
    }

    /// The body's length in bytes (so far, until it has ended).
    pub fn len(&self) -> u64 {
        self.shared.progress.borrow().len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the body went to a temporary file.
    pub fn on_disk(&self) -> bool {
        matches!(*self.shared.lock(), Kept::File(_))
    }

    /// The file's permission bits, when on disk (tests check 0600).
    pub fn file_mode(&self) -> Option<u32> {
        match &*self.shared.lock() {
            Kept::File(f) => f.metadata().ok().map(|m| m.permissions().mode() & 0o777),
            Kept::Memory(_) => None,
        }
    }

    /// A new stream of the whole body: what has arrived at once, the rest as it arrives; it
    /// fails when the body did.
    pub fn body(&self) -> ResponseBody {
        let shared = self.shared.clone();
        let progress = shared.progress.subscribe();
        boxed(StreamBody::new(futures::stream::try_unfold((0u64, progress), move |(offset, mut progress)| {
            let shared = shared.clone();
            async move {
                let known = progress
                    .wait_for(|p| p.len > offset || p.end.is_some())
                    .await
                    .map_err(|_| io::Error::other("the spool stopped"))?
                    .clone();
                if known.len <= offset {
                    return match known.end {
                        Some(Err(err)) => Err(io::Error::other(err.to_string())),
                        _ => Ok(None),
                    };
                }
                let chunk = shared.read(offset, known.len).await?;
                let next = offset + chunk.len() as u64;
                Ok(Some((Frame::data(chunk), (next, progress))))
            }
        })))
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes from `offset` on, up to `len` (what is kept so far).
    async fn read(&self, offset: u64, len: u64) -> io::Result<Bytes> {
        let file = match &*self.lock() {
            Kept::Memory(chunks) => return Ok(chunk_at(chunks, offset)),
            Kept::File(file) => file.clone(),
        };
        let want = usize::try_from(len - offset).unwrap_or(FILE_CHUNK).min(FILE_CHUNK);
        tokio::task::spawn_blocking(move || read_at(&file, offset, want)).await.map_err(io::Error::other)?
    }

    fn advance(&self, len: u64) {
        self.progress.send_modify(|p| p.len = len);
    }

    fn end(&self, end: Result<(), SpoolError>) {
        self.progress.send_modify(|p| p.end = Some(end.map_err(Arc::new)));
    }
}

/// How long a refused body is read and dropped, at most.
const LINGER: std::time::Duration = std::time::Duration::from_secs(5);

/// Reads and drops `body` for at most [`LINGER`].
async fn linger<B: Body + Unpin>(mut body: B) {
    let drain = async { while let Some(Ok(_)) = body.frame().await {} };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// The rest of the chunk holding byte `offset` of `chunks`.
fn chunk_at(chunks: &[Bytes], offset: u64) -> Bytes {
    let mut start = 0u64;
    for chunk in chunks {
        let end = start + chunk.len() as u64;
        if offset < end {
            return chunk.slice((offset - start) as usize..);
        }
        start = end;
    }
    Bytes::new()
}

/// Reads `body` into `shared` until it ends, fails or grows over the bound.
async fn keep<B>(body: B, limits: SpoolLimits, shared: Arc<Shared>)
where
    B: Body<Data = Bytes> + Send + Unpin,
    B::Error: Into<BoxError> + Send,
{
    let end = fill(body, &limits, &shared).await;
    shared.end(end);
}

async fn fill<B>(mut body: B, limits: &SpoolLimits, shared: &Shared) -> Result<(), SpoolError>
where
    B: Body<Data = Bytes> + Send + Unpin,
    B::Error: Into<BoxError> + Send,
{
    let mut len = 0u64;
    let mut file: Option<Arc<File>> = None;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(|e| SpoolError::Read(e.into()))?.into_data() else { continue };
        len += data.len() as u64;
        if len > limits.max_total {
            return Err(SpoolError::TooLarge { limit: limits.max_total });
        }
        if file.is_none() && len > limits.memory as u64 {
            let chunks = match &*shared.lock() {
                Kept::Memory(chunks) => chunks.clone(),
                Kept::File(_) => Vec::new(),
            };
            let spilled = Arc::new(spill(&chunks, limits).await?);
            *shared.lock() = Kept::File(spilled.clone());
            file = Some(spilled);
        }
        match &file {
            Some(f) => write_blocking(f, data, limits).await?,
            None => {
                if let Kept::Memory(chunks) = &mut *shared.lock() {
                    chunks.push(data);
                }
            }
        }
        shared.advance(len);
    }
    Ok(())
}

/// The error as the caller of [`Spool::read`] gets it.
fn unshared(err: &SpoolError) -> SpoolError {
    match err {
        SpoolError::TooLarge { limit } => SpoolError::TooLarge { limit: *limit },
        SpoolError::Read(e) => SpoolError::Read(e.to_string().into()),
        SpoolError::File { dir, source } => {
            SpoolError::File { dir: dir.clone(), source: io::Error::new(source.kind(), source.to_string()) }
        }
    }
}

/// Moves what is in memory to a new unnamed temporary file.
async fn spill(chunks: &[Bytes], limits: &SpoolLimits) -> Result<File, SpoolError> {
    let dir = limits.dir.clone();
    let file = tempfile::tempfile_in(&dir)
        .and_then(|file| {
            // An unnamed file is reachable only through /proc/PID/fd; owner-only all the same.
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            Ok(file)
        })
        .map_err(|source| SpoolError::File { dir, source })?;
    for chunk in chunks {
        write_blocking(&file, chunk.clone(), limits).await?;
    }
    Ok(file)
}

async fn write_blocking(file: &File, data: Bytes, limits: &SpoolLimits) -> Result<(), SpoolError> {
    // Writes go to the page cache; a blocking write of one frame is short, and
    // block_in_place keeps it off the other tasks' way.
    tokio::task::block_in_place(|| (&*file).write_all(&data))
        .map_err(|source| SpoolError::File { dir: limits.dir.clone(), source })
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

    fn chunked(data: &[u8], size: usize) -> impl Body<Data = Bytes, Error = io::Error> + Send + Unpin + use<> {
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

    /// A body fed by the test, one frame at a time.
    fn fed() -> (
        tokio::sync::mpsc::Sender<io::Result<Frame<Bytes>>>,
        impl Body<Data = Bytes, Error = io::Error> + Send + Unpin + use<>,
    ) {
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
        (tx, StreamBody::new(stream))
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn readers_get_the_body_while_it_arrives_in_memory_and_on_disk() {
        let (tx, body) = fed();
        let spool = Spool::start(body, &limits(1000, 1 << 20)).expect("spool");
        let mut early = spool.body();
        tx.send(Ok(Frame::data(Bytes::from_static(b"first")))).await.expect("send");
        let frame = early.frame().await.expect("a frame").expect("data");
        assert_eq!(frame.into_data().ok().as_deref(), Some(&b"first"[..]), "given out before the body ended");
        let big = Bytes::from(vec![7u8; 5000]);
        tx.send(Ok(Frame::data(big.clone()))).await.expect("send");
        let frame = early.frame().await.expect("a frame").expect("data");
        assert_eq!(frame.into_data().ok(), Some(big.clone()), "from the file it spilled to");
        assert!(spool.on_disk());
        drop(tx);
        assert!(early.frame().await.is_none(), "ends when the body ends");
        spool.finished().await.expect("whole");
        let mut whole = b"first".to_vec();
        whole.extend_from_slice(&big);
        assert_eq!(collect(&spool).await, whole, "a replay streams it all again");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_body_that_breaks_off_fails_its_readers() {
        let (tx, body) = fed();
        let spool = Spool::start(body, &limits(1000, 1 << 20)).expect("spool");
        tx.send(Ok(Frame::data(Bytes::from_static(b"part")))).await.expect("send");
        tx.send(Err(io::Error::other("client went away"))).await.expect("send");
        assert!(spool.body().collect().await.is_err());
        assert!(matches!(spool.failure().as_deref(), Some(SpoolError::Read(_))));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn bodies_over_the_bound_are_refused() {
        let data = vec![1u8; 5000];
        let err = Spool::read(chunked(&data, 1000), &limits(100, 4096)).await.err().expect("too large");
        assert!(matches!(err, SpoolError::TooLarge { limit: 4096 }), "{err}");
        let announced = http_body_util::Full::new(Bytes::from(data));
        let err = Spool::start(announced, &limits(100, 4096)).err().expect("refused before reading");
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
