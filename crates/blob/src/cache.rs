//! A bounded, restart-surviving, pull-through cache of remote blob bytes, in chunks.
//!
//! A blob is cut into chunks of `chunk_size` bytes (the last may be short). A read of a byte
//! range touches only the chunks the range overlaps: cached chunks are read from disk, verified
//! block by block before any byte is served; missing chunks are fetched from a [`ChunkSource`]
//! by one background fetch per chunk that every concurrent reader follows, and are streamed to
//! those readers as the bytes land in a temporary file. A fetched chunk becomes a cache entry
//! only once all its bytes are in and their CRC32C equals the digest the caller supplied; a fetch
//! that fails, stalls or brings wrong bytes leaves nothing behind. See `docs/cache.md`.
//!
//! Memory per reader and per fetch is bounded by [`IO_BUFFER`]: no chunk is ever held in RAM.

mod format;
mod index;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{FutureExt, Stream, StreamExt};
use meridian_common::private_files;
use tokio::sync::watch;

pub use self::format::crc32c;
use self::format::{BLOCK, BlockHasher, Footer, TRAILER_LEN, entry_len, footer_len};
use self::index::{Index, Key};
use crate::{BlobError, BlobId, BlobResult, BlobStore};

/// The default chunk size: 8 MiB.
pub const DEFAULT_CHUNK_SIZE: u64 = 8 << 20;
/// The default cache size: 10 GiB.
pub const DEFAULT_MAX_BYTES: u64 = 10 << 30;
/// The most bytes a reader reads from disk, or a fetch gathers before writing, at once. It is the
/// memory bound of the cache: about one such buffer per active reader and per running fetch.
pub const IO_BUFFER: usize = 256 << 10;
/// Largest accepted chunk size.
pub const MAX_CHUNK_SIZE: u64 = 1 << 30;

/// Number of chunks of a blob of `blob_len` bytes.
pub fn chunk_count(blob_len: u64, chunk_size: u64) -> u64 {
    blob_len.div_ceil(chunk_size.max(1))
}

/// CRC32C of each `chunk_size` piece of `data` (the last may be short); what [`ChunkCache::read`]
/// expects as `digests`.
pub fn chunk_digests(data: &[u8], chunk_size: u64) -> Vec<u32> {
    let size = usize::try_from(chunk_size.max(1)).unwrap_or(usize::MAX);
    data.chunks(size).map(crc32c).collect()
}

/// Computes the per-chunk CRC32Cs of a blob while it streams by (at ingest), in one pass and
/// constant memory. Feeding the bytes in any pieces gives the same result as [`chunk_digests`].
pub struct ChunkHasher {
    chunk_size: u64,
    digest: crc_fast::Digest,
    fill: u64,
    total: u64,
    digests: Vec<u32>,
}

impl ChunkHasher {
    pub fn new(chunk_size: u64) -> Self {
        ChunkHasher {
            chunk_size: chunk_size.max(1),
            digest: crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi),
            fill: 0,
            total: 0,
            digests: Vec::new(),
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        while !data.is_empty() {
            let room = self.chunk_size - self.fill;
            let take = usize::try_from(room).unwrap_or(usize::MAX).min(data.len());
            self.digest.update(&data[..take]);
            self.fill += take as u64;
            data = &data[take..];
            if self.fill == self.chunk_size {
                self.digests.push(self.digest.finalize_reset() as u32);
                self.fill = 0;
            }
        }
    }

    /// Bytes seen so far.
    pub fn len(&self) -> u64 {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The digests, one per chunk (none for an empty blob).
    pub fn finish(mut self) -> Vec<u32> {
        if self.fill > 0 {
            self.digests.push(self.digest.finalize() as u32);
        }
        self.digests
    }
}

/// Where the bytes of a missing chunk come from: another node ([`crate::PeerClient`]), or any
/// other store. `fetch` returns exactly `len` bytes of the blob from `offset`, as a stream; the
/// cache checks the length and the digest itself.
#[async_trait::async_trait]
pub trait ChunkSource: Send + Sync {
    async fn fetch(&self, blob: BlobId, offset: u64, len: u64) -> BlobResult<BoxStream<'static, BlobResult<Bytes>>>;

    /// A name for error messages and logs (e.g. the peer's URL).
    fn name(&self) -> String {
        "chunk source".to_string()
    }
}

#[async_trait::async_trait]
impl ChunkSource for BlobStore {
    async fn fetch(&self, blob: BlobId, offset: u64, len: u64) -> BlobResult<BoxStream<'static, BlobResult<Bytes>>> {
        Ok(self.read(blob, offset, len).await?.boxed())
    }

    fn name(&self) -> String {
        "local blob store".to_string()
    }
}

#[derive(Clone, Debug)]
pub struct CacheOptions {
    /// Bytes on disk the cache may use (entries, their footers, and fetches in progress).
    pub max_bytes: u64,
    /// Chunk size; must be the one the caller's digests were computed with.
    pub chunk_size: u64,
    /// How many chunks past the one being read to fetch ahead, within the requested range only
    /// (hides the per-chunk request round trip on long sequential reads).
    pub readahead: u64,
    /// A fetch that receives nothing for this long fails.
    pub fetch_idle_timeout: Duration,
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions {
            max_bytes: DEFAULT_MAX_BYTES,
            chunk_size: DEFAULT_CHUNK_SIZE,
            readahead: 2,
            fetch_idle_timeout: Duration::from_secs(30),
        }
    }
}

/// Counters since the cache was opened (`bytes_cached` and `entries` are current values).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Chunks a read served from entries that were on disk when the read began.
    pub hits: u64,
    /// Chunks a read needed that were not on disk when it began (served by a fetch: its own, a
    /// shared one, or one its read-ahead started).
    pub misses: u64,
    /// Bytes of entries on disk, footers included.
    pub bytes_cached: u64,
    pub entries: u64,
    pub evictions: u64,
    /// Bytes received from sources.
    pub fetch_bytes: u64,
    /// Fetches started (one per chunk, however many readers share it).
    pub fetches: u64,
    pub fetch_errors: u64,
    /// Entries found damaged on read (and so dropped and fetched again; a read that finds the
    /// damage part way through a chunk counted that chunk as a hit).
    pub corrupt: u64,
}

/// The chunk cache; cheap to clone.
#[derive(Clone)]
pub struct ChunkCache {
    shared: Arc<Shared>,
}

struct Shared {
    dir: PathBuf,
    tmp: PathBuf,
    options: CacheOptions,
    state: Mutex<State>,
    counters: Counters,
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
    fetch_bytes: AtomicU64,
    fetches: AtomicU64,
    fetch_errors: AtomicU64,
    corrupt: AtomicU64,
}

struct State {
    index: Index,
    inflight: HashMap<Key, Arc<Fetch>>,
    /// Disk taken by fetches in progress.
    reserved: u64,
    /// Entries removed from the index whose files are being deleted; a fetch of the same chunk
    /// that finishes meanwhile is not kept (its rename could race with the delete).
    unlinking: HashSet<Key>,
    /// Blobs removed with [`ChunkCache::remove_blob`], newest last: a fetch of one of them that
    /// finishes later (a reader that saw the old record just before the change) is not kept.
    /// Blob ids are never reused, so a removed blob never becomes valid again; the list is
    /// bounded by [`REMOVED_BLOBS_REMEMBERED`].
    removed: Removed,
}

/// How many removed blobs the cache remembers (16 bytes each, twice).
pub const REMOVED_BLOBS_REMEMBERED: usize = 65_536;

/// A bounded set of removed blob ids, oldest forgotten first.
#[derive(Default)]
struct Removed {
    order: std::collections::VecDeque<BlobId>,
    set: HashSet<BlobId>,
}

impl Removed {
    fn insert(&mut self, blob: BlobId) {
        if !self.set.insert(blob) {
            return;
        }
        self.order.push_back(blob);
        if self.order.len() > REMOVED_BLOBS_REMEMBERED
            && let Some(oldest) = self.order.pop_front()
        {
            self.set.remove(&oldest);
        }
    }

    fn contains(&self, blob: &BlobId) -> bool {
        self.set.contains(blob)
    }
}

/// One fetch of one chunk, followed by every reader that needs the chunk meanwhile.
struct Fetch {
    key: Key,
    len: u64,
    tmp_path: PathBuf,
    file: Arc<File>,
    progress: watch::Sender<Progress>,
    /// Set when the blob was removed while the fetch ran: finish it for its readers, keep nothing.
    discard: AtomicBool,
    /// Set once the fetch has left the in-flight table and returned its reservation.
    released: AtomicBool,
}

impl Fetch {
    /// Takes the fetch out of the in-flight table and returns its disk reservation, once.
    fn release(self: &Arc<Self>, state: &mut State) {
        if self.released.swap(true, Relaxed) {
            return;
        }
        state.reserved = state.reserved.saturating_sub(entry_len(self.len));
        if state.inflight.get(&self.key).is_some_and(|f| Arc::ptr_eq(f, self)) {
            state.inflight.remove(&self.key);
        }
    }
}

#[derive(Clone, Default)]
struct Progress {
    /// Bytes of the chunk in the temporary file.
    written: u64,
    /// `Some(Ok)` once every byte is in and verified; `Some(Err)` if the fetch failed.
    end: Option<Result<(), Arc<BlobError>>>,
}

/// What a read needs to know to fetch or verify a chunk.
struct ReadCtx {
    blob: BlobId,
    blob_len: u64,
    chunk_size: u64,
    first_chunk: u64,
    last_chunk: u64,
    /// Digests of chunks `first_chunk..=last_chunk`.
    digests: Vec<u32>,
    /// Which of those chunks were cached when the read began: a chunk counts as a hit only if it
    /// was, so chunks fetched ahead for this read are misses of this read.
    cached_at_start: Vec<bool>,
    source: Arc<dyn ChunkSource>,
}

impl ReadCtx {
    fn start(&self, chunk: u64) -> u64 {
        chunk * self.chunk_size
    }

    fn len(&self, chunk: u64) -> u64 {
        self.chunk_size.min(self.blob_len - self.start(chunk))
    }

    fn digest(&self, chunk: u64) -> u32 {
        self.digests[(chunk - self.first_chunk) as usize]
    }

    fn was_cached(&self, chunk: u64) -> bool {
        self.cached_at_start[(chunk - self.first_chunk) as usize]
    }

    fn key(&self, chunk: u64) -> Key {
        Key { blob: self.blob, chunk }
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> BlobResult<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| BlobError::Task(e.to_string()))
}

/// The result of opening a cache entry.
enum Opened {
    Valid(File, Vec<u32>),
    Missing,
    Damaged(String),
}

impl ChunkCache {
    /// Opens (or creates) the cache in `dir`. Temporary files of fetches cut short by a crash are
    /// deleted; the index of entries is rebuilt from the directory, oldest modification time
    /// first; entries are verified lazily when read.
    pub fn open(dir: &Path, options: CacheOptions) -> BlobResult<ChunkCache> {
        if options.chunk_size == 0 || options.chunk_size > MAX_CHUNK_SIZE {
            return Err(BlobError::Config(format!(
                "cache chunk size {} must be between 1 and {MAX_CHUNK_SIZE} bytes",
                options.chunk_size
            )));
        }
        let tmp = dir.join("tmp");
        private_files::create_dir_all(&tmp)?;
        let mut removed = 0usize;
        for entry in std::fs::read_dir(&tmp)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                std::fs::remove_dir_all(entry.path())?;
            } else {
                std::fs::remove_file(entry.path())?;
            }
            removed += 1;
        }
        let mut found: Vec<(SystemTime, Key, u64)> = Vec::new();
        let mut junk = 0usize;
        for shard in 0..=255u8 {
            let shard_name = format!("{shard:02x}");
            let shard_dir = dir.join(&shard_name);
            private_files::create_dir_all(&shard_dir)?;
            for entry in std::fs::read_dir(&shard_dir)? {
                let entry = entry?;
                let meta = entry.metadata()?;
                if !meta.is_file() {
                    continue;
                }
                let name = entry.file_name();
                let key = name
                    .to_str()
                    .and_then(parse_entry_name)
                    .filter(|_| name.to_str().is_some_and(|n| n.starts_with(&shard_name)) && meta.len() >= TRAILER_LEN);
                match key {
                    Some(key) => found.push((meta.modified().unwrap_or(SystemTime::UNIX_EPOCH), key, meta.len())),
                    None => {
                        std::fs::remove_file(entry.path())?;
                        junk += 1;
                    }
                }
            }
        }
        found.sort();
        let mut index = Index::new(options.max_bytes);
        for (modified, key, size) in found {
            index.insert(key, size, modified);
        }
        let cache = ChunkCache {
            shared: Arc::new(Shared {
                dir: dir.to_path_buf(),
                tmp,
                options,
                state: Mutex::new(State {
                    index,
                    inflight: HashMap::new(),
                    reserved: 0,
                    unlinking: HashSet::new(),
                    removed: Removed::default(),
                }),
                counters: Counters::default(),
            }),
        };
        let victims = cache.evict(&mut cache.lock(), 0);
        for key in &victims {
            remove_if_exists(&cache.path(*key))?;
        }
        cache.lock().unlinking.clear();
        let stats = cache.stats();
        tracing::info!(
            dir = %dir.display(),
            entries = stats.entries,
            bytes = stats.bytes_cached,
            removed_tmp = removed,
            removed_junk = junk,
            evicted = victims.len(),
            "chunk cache opened"
        );
        Ok(cache)
    }

    pub fn options(&self) -> &CacheOptions {
        &self.shared.options
    }

    pub fn stats(&self) -> CacheStats {
        let c = &self.shared.counters;
        let (bytes_cached, entries) = {
            let state = self.lock();
            (state.index.used(), state.index.len() as u64)
        };
        CacheStats {
            hits: c.hits.load(Relaxed),
            misses: c.misses.load(Relaxed),
            bytes_cached,
            entries,
            evictions: c.evictions.load(Relaxed),
            fetch_bytes: c.fetch_bytes.load(Relaxed),
            fetches: c.fetches.load(Relaxed),
            fetch_errors: c.fetch_errors.load(Relaxed),
            corrupt: c.corrupt.load(Relaxed),
        }
    }

    /// Streams bytes `[offset, offset + len)` of a blob of `blob_len` bytes whose chunks have the
    /// CRC32Cs `digests` (see [`chunk_digests`]), fetching the chunks the range touches that are
    /// not cached from `source`.
    ///
    /// Returns once the first chunk is readable, so an unreachable source is an `Err` here rather
    /// than a failed stream. Later failures end the stream with an `Err` item. Bytes of a fetched
    /// chunk are passed on as they arrive, except that the last byte of the range within each
    /// chunk is held back until the whole chunk has verified: a stream that ends without an error
    /// only ever carried verified bytes.
    pub async fn read(
        &self,
        blob: BlobId,
        blob_len: u64,
        digests: &[u32],
        offset: u64,
        len: u64,
        source: Arc<dyn ChunkSource>,
    ) -> BlobResult<CacheReadStream> {
        let chunk_size = self.shared.options.chunk_size;
        let expected = chunk_count(blob_len, chunk_size);
        if digests.len() as u64 != expected {
            return Err(BlobError::DigestCount { blob, blob_len, chunk_size, expected, got: digests.len() as u64 });
        }
        let end = match offset.checked_add(len) {
            Some(end) if end <= blob_len => end,
            _ => return Err(BlobError::InvalidRange { blob, offset, len, size: blob_len }),
        };
        if len == 0 {
            return Ok(CacheReadStream { inner: futures::stream::empty().boxed(), cache_hit: true, len: 0 });
        }
        let (first_chunk, last_chunk) = (offset / chunk_size, (end - 1) / chunk_size);
        let cached_at_start: Vec<bool> = {
            let state = self.lock();
            (first_chunk..=last_chunk).map(|chunk| state.index.contains(&Key { blob, chunk })).collect()
        };
        let cache_hit = cached_at_start.iter().all(|cached| *cached);
        let ctx = Arc::new(ReadCtx {
            blob,
            blob_len,
            chunk_size,
            first_chunk,
            last_chunk,
            digests: digests[first_chunk as usize..=last_chunk as usize].to_vec(),
            cached_at_start,
            source,
        });
        let mut reader = Reader { cache: self.clone(), ctx, pos: offset, end, current: None, failed: false };
        reader.open_current().await?;
        if let Some(Current::Following { rx, .. }) = &mut reader.current {
            let progress = rx
                .wait_for(|p| p.written > 0 || p.end.is_some())
                .await
                .map_err(|_| BlobError::Task("chunk fetch vanished".into()))?
                .clone();
            if let Some(Err(e)) = progress.end {
                return Err(e.duplicate());
            }
        }
        let inner = futures::stream::unfold(reader, |mut reader| async move {
            let item = reader.next().await?;
            Some((item, reader))
        })
        .boxed();
        Ok(CacheReadStream { inner, cache_hit, len })
    }

    /// Drops every cached chunk of a blob (the engine calls this when no record refers to the
    /// blob any more: overwrite, delete, expiry). Fetches of the blob in progress, and fetches
    /// of it started later, finish for their readers but are not kept.
    /// Returns the number of chunks dropped.
    pub async fn remove_blob(&self, blob: BlobId) -> BlobResult<usize> {
        let keys = {
            let mut state = self.lock();
            state.removed.insert(blob);
            for (key, fetch) in &state.inflight {
                if key.blob == blob {
                    fetch.discard.store(true, Relaxed);
                }
            }
            let keys = state.index.keys_of(blob);
            for key in &keys {
                state.index.remove(key);
                state.unlinking.insert(*key);
            }
            keys
        };
        let dropped = keys.len();
        self.unlink(keys).await?;
        Ok(dropped)
    }

    /// Every blob with at least one chunk in the cache, in id order.
    pub fn blobs(&self) -> Vec<BlobId> {
        self.lock().index.blobs()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn path(&self, key: Key) -> PathBuf {
        let name = key.blob.to_string();
        self.shared.dir.join(&name[..2]).join(format!("{name}.{}", key.chunk))
    }

    /// Takes entries out of the index until entries plus fetches in progress plus `extra` fit,
    /// marking them as being deleted; the caller deletes the files and then clears the marks.
    fn evict(&self, state: &mut State, extra: u64) -> Vec<Key> {
        let max = self.shared.options.max_bytes;
        let mut victims = Vec::new();
        while state.index.used() + state.reserved + extra > max {
            let Some((key, _)) = state.index.pop_victim() else { break };
            state.unlinking.insert(key);
            victims.push(key);
        }
        self.shared.counters.evictions.fetch_add(victims.len() as u64, Relaxed);
        victims
    }

    /// Deletes the files of entries already taken out of the index.
    async fn unlink(&self, keys: Vec<Key>) -> BlobResult<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let cache = self.clone();
        blocking(move || {
            let mut result = Ok(());
            for key in &keys {
                if let Err(e) = remove_if_exists(&cache.path(*key)) {
                    tracing::warn!(blob = %key.blob, chunk = key.chunk, error = %e, "cannot delete a cache entry");
                    result = Err(BlobError::Io(e));
                }
            }
            let mut state = cache.lock();
            for key in &keys {
                state.unlinking.remove(key);
            }
            result
        })
        .await?
    }

    /// Opens chunk `chunk` for reading: from the cache if it is there and sound, else by joining
    /// or starting its fetch. Counts a hit (read from an entry that existed when the read began)
    /// or a miss.
    async fn open_chunk(&self, ctx: &Arc<ReadCtx>, chunk: u64) -> BlobResult<Current> {
        let key = ctx.key(chunk);
        let mut try_cache = true;
        let counter = |hit: bool| {
            let counters = &self.shared.counters;
            if hit { &counters.hits } else { &counters.misses }.fetch_add(1, Relaxed);
        };
        for _ in 0..3 {
            if try_cache {
                let hit = self.lock().index.touch(&key, SystemTime::now());
                if let Some(hit) = hit {
                    let path = self.path(key);
                    let (start, len, digest) = (ctx.start(chunk), ctx.len(chunk), ctx.digest(chunk));
                    match blocking(move || open_entry(&path, start, len, digest, hit.persist)).await? {
                        Opened::Valid(file, blocks) => {
                            counter(ctx.was_cached(chunk));
                            return Ok(Current::Cached {
                                file: Arc::new(file),
                                blocks: Arc::new(blocks),
                                generation: hit.generation,
                            });
                        }
                        Opened::Missing => {
                            self.lock().index.remove_generation(&key, hit.generation);
                        }
                        Opened::Damaged(reason) => self.drop_damaged(key, hit.generation, &reason).await,
                    }
                }
            }
            match self.fetch_chunk(ctx, chunk, try_cache).await? {
                Some(fetch) => {
                    counter(false);
                    let rx = fetch.progress.subscribe();
                    return Ok(Current::Following { fetch, rx });
                }
                // Became cached meanwhile.
                None => try_cache = true,
            }
        }
        Err(BlobError::Task(format!("chunk {chunk} of blob {} kept changing while being opened", ctx.blob)))
    }

    async fn drop_damaged(&self, key: Key, generation: u64, reason: &str) {
        self.shared.counters.corrupt.fetch_add(1, Relaxed);
        tracing::warn!(blob = %key.blob, chunk = key.chunk, reason, "damaged cache entry dropped; fetching it again");
        let removed = {
            let mut state = self.lock();
            let removed = state.index.remove_generation(&key, generation);
            if removed {
                state.unlinking.insert(key);
            }
            removed
        };
        if removed {
            let _ = self.unlink(vec![key]).await;
        }
    }

    /// Joins the fetch of a chunk, or starts one. `None` if `cached_ok` and the chunk is cached.
    async fn fetch_chunk(&self, ctx: &Arc<ReadCtx>, chunk: u64, cached_ok: bool) -> BlobResult<Option<Arc<Fetch>>> {
        let key = ctx.key(chunk);
        {
            let state = self.lock();
            if let Some(fetch) = state.inflight.get(&key) {
                return Ok(Some(fetch.clone()));
            }
            if cached_ok && state.index.contains(&key) {
                return Ok(None);
            }
        }
        let tmp_path = self.shared.tmp.join(format!("{}.{chunk}.{:016x}", ctx.blob, rand::random::<u64>()));
        let path = tmp_path.clone();
        let file = blocking(move || private_files::file_options().read(true).write(true).create_new(true).open(path))
            .await??;
        let len = ctx.len(chunk);
        let (fetch, victims) = {
            let mut state = self.lock();
            let existing = match state.inflight.get(&key) {
                Some(fetch) => Some(Some(fetch.clone())),
                None if cached_ok && state.index.contains(&key) => Some(None),
                None => None,
            };
            if let Some(existing) = existing {
                drop(state);
                drop(file);
                let _ = std::fs::remove_file(&tmp_path);
                return Ok(existing);
            }
            let fetch = Arc::new(Fetch {
                key,
                len,
                tmp_path,
                file: Arc::new(file),
                progress: watch::Sender::new(Progress::default()),
                discard: AtomicBool::new(false),
                released: AtomicBool::new(false),
            });
            state.inflight.insert(key, fetch.clone());
            state.reserved += entry_len(len);
            let victims = self.evict(&mut state, 0);
            (fetch, victims)
        };
        self.shared.counters.fetches.fetch_add(1, Relaxed);
        let guard = FetchGuard { cache: self.clone(), fetch: fetch.clone(), settled: false };
        tokio::spawn(guard.run(ctx.clone(), victims));
        Ok(Some(fetch))
    }

    /// Starts fetches of the chunks after `chunk` that the read will need, up to `readahead`.
    fn prefetch(&self, ctx: &Arc<ReadCtx>, chunk: u64) {
        let last = ctx.last_chunk.min(chunk.saturating_add(self.shared.options.readahead));
        for next in chunk + 1..=last {
            let key = ctx.key(next);
            {
                let state = self.lock();
                if state.inflight.contains_key(&key) || state.index.contains(&key) {
                    continue;
                }
            }
            let (cache, ctx) = (self.clone(), ctx.clone());
            tokio::spawn(async move {
                if let Err(e) = cache.fetch_chunk(&ctx, next, true).await {
                    tracing::debug!(blob = %ctx.blob, chunk = next, error = %e, "read-ahead failed to start");
                }
            });
        }
    }
}

fn remove_if_exists(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// `<32 hex blob id>.<decimal chunk index>`
fn parse_entry_name(name: &str) -> Option<Key> {
    let (blob, chunk) = name.split_once('.')?;
    let hex_ok = blob.len() == 32 && blob.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let digits_ok = !chunk.is_empty() && chunk.bytes().all(|b| b.is_ascii_digit());
    if !hex_ok || !digits_ok {
        return None;
    }
    Some(Key { blob: blob.parse().ok()?, chunk: chunk.parse().ok()? })
}

/// Opens an entry file and checks its length and footer against what the caller expects.
fn open_entry(path: &Path, chunk_start: u64, chunk_len: u64, digest: u32, persist: bool) -> Opened {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Opened::Missing,
        Err(e) => return Opened::Damaged(format!("cannot open: {e}")),
    };
    let size = match file.metadata() {
        Ok(meta) => meta.len(),
        Err(e) => return Opened::Damaged(format!("cannot stat: {e}")),
    };
    let expected = entry_len(chunk_len);
    if size != expected {
        return Opened::Damaged(format!("file is {size} bytes where {expected} were expected (torn write?)"));
    }
    let mut raw = vec![0u8; footer_len(chunk_len) as usize];
    if let Err(e) = file.read_exact_at(&mut raw, chunk_len) {
        return Opened::Damaged(format!("cannot read the footer: {e}"));
    }
    let footer = match Footer::decode(&raw) {
        Ok(footer) => footer,
        Err(reason) => return Opened::Damaged(reason),
    };
    if footer.chunk_start != chunk_start || footer.chunk_len != chunk_len || footer.chunk_crc != digest {
        return Opened::Damaged(format!(
            "entry holds {} bytes at {} with CRC32C {:08x}; the read wants {chunk_len} bytes at {chunk_start} with {digest:08x}",
            footer.chunk_len, footer.chunk_start, footer.chunk_crc
        ));
    }
    if persist {
        // Recency that survives a restart; a failure only costs ordering.
        let _ = file.set_modified(SystemTime::now());
    }
    Opened::Valid(file, footer.block_crcs)
}

/// Runs one fetch; whatever way it ends (including a panic or the runtime shutting down), the
/// fetch leaves the in-flight table, its reservation is returned and its readers learn the end.
struct FetchGuard {
    cache: ChunkCache,
    fetch: Arc<Fetch>,
    settled: bool,
}

impl FetchGuard {
    async fn run(mut self, ctx: Arc<ReadCtx>, victims: Vec<Key>) {
        if let Err(e) = self.cache.unlink(victims).await {
            tracing::warn!(error = %e, "eviction could not delete every file");
        }
        match self.transfer(&ctx).await {
            Ok(()) => self.commit().await,
            // A source known down was not asked: its reader's 503 says so, no need to warn.
            Err(e @ BlobError::Peer { failure: crate::PeerFailure::Down { .. }, .. }) => self.fail(Arc::new(e)),
            Err(e) => {
                tracing::warn!(blob = %ctx.blob, chunk = self.fetch.key.chunk, error = %e, "chunk fetch failed");
                self.fail(Arc::new(e));
            }
        }
    }

    /// Copies the chunk from the source into the temporary file, publishing progress, then checks
    /// its length and digest and appends the footer.
    async fn transfer(&self, ctx: &ReadCtx) -> BlobResult<()> {
        let fetch = &self.fetch;
        let chunk = fetch.key.chunk;
        let counters = &self.cache.shared.counters;
        let idle = self.cache.shared.options.fetch_idle_timeout;
        let stalled = || BlobError::SourceStalled {
            blob: ctx.blob,
            chunk,
            source_name: ctx.source.name(),
            seconds: idle.as_secs_f64(),
        };
        let wrong_length = |got| BlobError::SourceLength {
            blob: ctx.blob,
            chunk,
            source_name: ctx.source.name(),
            expected: fetch.len,
            got,
        };
        let mut stream = tokio::time::timeout(idle, ctx.source.fetch(ctx.blob, ctx.start(chunk), fetch.len))
            .await
            .map_err(|_| stalled())??;
        let mut hasher = BlockHasher::new();
        let mut written = 0u64;
        let mut ended = false;
        while !ended {
            let first = match tokio::time::timeout(idle, stream.next()).await {
                Err(_) => return Err(stalled()),
                Ok(None) => break,
                Ok(Some(item)) => item?,
            };
            // Gather what is already there, up to IO_BUFFER, into one write.
            let mut size = first.len();
            let mut batch = vec![first];
            while size < IO_BUFFER {
                match stream.next().now_or_never() {
                    Some(Some(item)) => {
                        let bytes = item?;
                        size += bytes.len();
                        batch.push(bytes);
                    }
                    Some(None) => {
                        ended = true;
                        break;
                    }
                    None => break,
                }
            }
            counters.fetch_bytes.fetch_add(size as u64, Relaxed);
            if written + size as u64 > fetch.len {
                return Err(wrong_length(written + size as u64));
            }
            for bytes in &batch {
                hasher.update(bytes);
            }
            let (file, at) = (fetch.file.clone(), written);
            blocking(move || {
                let mut at = at;
                for bytes in batch {
                    file.write_all_at(&bytes, at)?;
                    at += bytes.len() as u64;
                }
                Ok::<_, std::io::Error>(())
            })
            .await??;
            written += size as u64;
            fetch.progress.send_modify(|p| p.written = written);
        }
        if written != fetch.len {
            return Err(wrong_length(written));
        }
        let (chunk_crc, block_crcs) = hasher.finish();
        let expected = ctx.digest(chunk);
        if chunk_crc != expected {
            return Err(BlobError::DigestMismatch {
                blob: ctx.blob,
                chunk,
                source_name: ctx.source.name(),
                expected,
                actual: chunk_crc,
            });
        }
        let footer = Footer { chunk_start: ctx.start(chunk), chunk_len: fetch.len, chunk_crc, block_crcs }.encode();
        let (file, at) = (fetch.file.clone(), fetch.len);
        blocking(move || file.write_all_at(&footer, at)).await??;
        Ok(())
    }

    /// Moves the verified chunk into place (unless it must not be kept) and tells its readers.
    async fn commit(mut self) {
        let cache = self.cache.clone();
        let fetch = self.fetch.clone();
        let outcome = blocking(move || {
            let size = entry_len(fetch.len);
            let mut state = cache.lock();
            fetch.release(&mut state);
            let keep = !fetch.discard.load(Relaxed)
                && !state.removed.contains(&fetch.key.blob)
                && size <= cache.shared.options.max_bytes
                && !state.unlinking.contains(&fetch.key);
            if !keep {
                drop(state);
                return remove_if_exists(&fetch.tmp_path).map(|()| Vec::new());
            }
            if let Err(e) = std::fs::rename(&fetch.tmp_path, cache.path(fetch.key)) {
                drop(state);
                let _ = std::fs::remove_file(&fetch.tmp_path);
                return Err(e);
            }
            state.index.insert(fetch.key, size, SystemTime::now());
            Ok(cache.evict(&mut state, 0))
        })
        .await;
        if outcome.is_err() {
            self.fetch.release(&mut self.cache.lock());
        }
        // The readers have every byte, verified, whether or not the entry could be kept.
        self.settled = true;
        self.fetch.progress.send_modify(|p| p.end = Some(Ok(())));
        match outcome {
            Ok(Ok(victims)) => {
                if let Err(e) = self.cache.unlink(victims).await {
                    tracing::warn!(error = %e, "eviction could not delete every file");
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "a fetched chunk could not be kept in the cache"),
            Err(e) => tracing::warn!(error = %e, "a fetched chunk could not be kept in the cache"),
        }
    }

    fn fail(&mut self, error: Arc<BlobError>) {
        if self.settled {
            return;
        }
        self.settled = true;
        self.cache.shared.counters.fetch_errors.fetch_add(1, Relaxed);
        self.fetch.release(&mut self.cache.lock());
        let _ = std::fs::remove_file(&self.fetch.tmp_path);
        // Readers learn of the failure only after the fetch left the table, so a read that starts
        // after the error starts a fresh fetch.
        self.fetch.progress.send_modify(|p| p.end = Some(Err(error)));
    }
}

impl Drop for FetchGuard {
    fn drop(&mut self) {
        if !self.settled {
            self.fail(Arc::new(BlobError::Task("chunk fetch was cancelled".into())));
        }
    }
}

/// How a reader gets the bytes of its current chunk.
enum Current {
    /// From a verified cache entry.
    Cached { file: Arc<File>, blocks: Arc<Vec<u32>>, generation: u64 },
    /// From the temporary file of a fetch in progress (or just finished).
    Following { fetch: Arc<Fetch>, rx: watch::Receiver<Progress> },
}

struct Reader {
    cache: ChunkCache,
    ctx: Arc<ReadCtx>,
    pos: u64,
    end: u64,
    current: Option<Current>,
    failed: bool,
}

enum Step {
    Data(Bytes),
    Damaged(String),
}

impl Reader {
    async fn open_current(&mut self) -> BlobResult<()> {
        let chunk = self.pos / self.ctx.chunk_size;
        self.current = Some(self.cache.open_chunk(&self.ctx, chunk).await?);
        self.cache.prefetch(&self.ctx, chunk);
        Ok(())
    }

    async fn next(&mut self) -> Option<BlobResult<Bytes>> {
        if self.failed || self.pos >= self.end {
            return None;
        }
        match self.step().await {
            Ok(bytes) => Some(Ok(bytes)),
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }

    async fn step(&mut self) -> BlobResult<Bytes> {
        let ctx = self.ctx.clone();
        let chunk = self.pos / ctx.chunk_size;
        let chunk_start = ctx.start(chunk);
        let chunk_len = ctx.len(chunk);
        let from = self.pos - chunk_start;
        let to = (self.end - chunk_start).min(chunk_len);
        loop {
            if self.current.is_none() {
                self.open_current().await?;
            }
            let step = match &mut self.current {
                Some(Current::Cached { file, blocks, .. }) => {
                    read_cached(file.clone(), blocks.clone(), chunk_len, from, to).await?
                }
                Some(Current::Following { fetch, rx }) => read_following(fetch, rx, from, to).await?,
                None => continue,
            };
            match step {
                Step::Data(bytes) => {
                    self.pos += bytes.len() as u64;
                    if self.pos == chunk_start + to {
                        self.current = None;
                    }
                    return Ok(bytes);
                }
                Step::Damaged(reason) => {
                    // Bytes before `from` were verified and are already out; take the rest of the
                    // chunk from a fresh fetch.
                    if let Some(Current::Cached { generation, .. }) = self.current.take() {
                        self.cache.drop_damaged(ctx.key(chunk), generation, &reason).await;
                    }
                    let fetch = self
                        .cache
                        .fetch_chunk(&ctx, chunk, false)
                        .await?
                        .ok_or_else(|| BlobError::Task("refetch of a damaged chunk did not start".into()))?;
                    let rx = fetch.progress.subscribe();
                    self.current = Some(Current::Following { fetch, rx });
                }
            }
        }
    }
}

/// Reads the next piece of `[from, to)` of a cache entry, verifying every block it reads.
async fn read_cached(file: Arc<File>, blocks: Arc<Vec<u32>>, chunk_len: u64, from: u64, to: u64) -> BlobResult<Step> {
    let start = from / BLOCK * BLOCK;
    let stop = (to.div_ceil(BLOCK) * BLOCK).min(chunk_len).min(start + IO_BUFFER as u64);
    blocking(move || {
        let mut buf = vec![0u8; (stop - start) as usize];
        if let Err(e) = file.read_exact_at(&mut buf, start) {
            return Step::Damaged(format!("read failed: {e}"));
        }
        for (i, block) in buf.chunks(BLOCK as usize).enumerate() {
            let n = (start / BLOCK) as usize + i;
            let (expected, actual) = (blocks.get(n).copied(), crc32c(block));
            if expected != Some(actual) {
                return Step::Damaged(format!("block {n} has CRC32C {actual:08x}, its footer says {expected:08x?}"));
            }
        }
        let data = Bytes::from(buf);
        Step::Data(data.slice((from - start) as usize..(to.min(stop) - start) as usize))
    })
    .await
}

/// Reads the next piece of `[from, to)` of a chunk being fetched, waiting for the bytes to land.
/// The piece that reaches `to` is only handed out once the whole chunk has verified.
async fn read_following(fetch: &Fetch, rx: &mut watch::Receiver<Progress>, from: u64, to: u64) -> BlobResult<Step> {
    loop {
        let (written, end) = {
            let progress = rx.borrow_and_update();
            (progress.written, progress.end.clone())
        };
        if let Some(Err(e)) = &end {
            return Err(e.duplicate());
        }
        // The last byte of the range in this chunk waits for the chunk to verify.
        let readable = if matches!(end, Some(Ok(()))) { to } else { written.min(to - 1) };
        if readable > from {
            let stop = readable.min(from + IO_BUFFER as u64);
            let file = fetch.file.clone();
            let data = blocking(move || {
                let mut buf = vec![0u8; (stop - from) as usize];
                file.read_exact_at(&mut buf, from).map(|()| Bytes::from(buf))
            })
            .await??;
            return Ok(Step::Data(data));
        }
        if rx.changed().await.is_err() {
            return Err(BlobError::Task("chunk fetch vanished".into()));
        }
    }
}

/// The bytes of a [`ChunkCache::read`].
pub struct CacheReadStream {
    inner: BoxStream<'static, BlobResult<Bytes>>,
    cache_hit: bool,
    len: u64,
}

impl CacheReadStream {
    /// Whether every chunk of the range was in the cache when the read began
    /// (for `x-meridian-cache: hit|miss`).
    pub fn cache_hit(&self) -> bool {
        self.cache_hit
    }

    /// Bytes the stream yields in total.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Stream for CacheReadStream {
    type Item = BlobResult<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_next_unpin(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_hasher_matches_chunk_digests() {
        let data: Vec<u8> = (0..1_000_003u32).map(|i| (i * 7 % 251) as u8).collect();
        for chunk_size in [1u64, 1000, 65_536, 1_000_003, 4 << 20] {
            let expected = chunk_digests(&data, chunk_size);
            assert_eq!(expected.len() as u64, chunk_count(data.len() as u64, chunk_size));
            for piece in [1usize, 777, 100_000] {
                if chunk_size == 1 && piece == 1 {
                    continue;
                }
                let mut hasher = ChunkHasher::new(chunk_size);
                for part in data.chunks(piece) {
                    hasher.update(part);
                }
                assert_eq!(hasher.len(), data.len() as u64);
                assert_eq!(hasher.finish(), expected, "chunk {chunk_size} piece {piece}");
            }
        }
        assert!(ChunkHasher::new(8).finish().is_empty());
        assert!(chunk_digests(&[], 8).is_empty());
    }

    #[test]
    fn entry_names_parse_strictly() {
        let blob = "0123456789abcdef0123456789abcdef";
        assert_eq!(parse_entry_name(&format!("{blob}.17")).map(|k| k.chunk), Some(17));
        for bad in [
            blob.to_string(),
            format!("{blob}."),
            format!("{blob}.x"),
            format!("{blob}.+1"),
            format!("{}.1", blob.to_uppercase()),
            format!("{}.1", &blob[1..]),
            "+123456789abcdef0123456789abcdef.1".to_string(),
        ] {
            assert!(parse_entry_name(&bad).is_none(), "{bad}");
        }
    }
}
