//! The writable volume: absorbs writes into the local write-back journal, cuts the journal into
//! commit units of immutable numbered log objects, uploads them concurrently, and tracks which
//! prefix of the log is durable so FLUSH can answer exactly.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use meridian_common::private_files;
use tokio::sync::{OwnedSemaphorePermit, RwLock, Semaphore, watch};
use tracing::{debug, error, info, warn};

use crate::error::{Result, StoreError, VolumeError};
use crate::format::{
    self, Entry, HEADER_BYTES, Layout, MAX_DATA_ENTRIES, Manifest, ObjectKind, SECTOR, Trailer, UnitPos,
};
use crate::journal::{Generation, PlannedObject, UnitIndex};
use crate::lease::LeaseHandle;
use crate::metrics::{Backlog, VolumeMetrics};
use crate::readahead::{ObjectSpan, ReadAhead};
use crate::replay::{self, Listing};
use crate::store::{ObjectStore, Parts, PutCondition};
use crate::table::{self, ExtentTable};

/// Tunables of a writer.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Directory for the local extent-map file (a cache rebuilt on every open).
    pub cache_dir: PathBuf,
    /// Pages of the extent map kept in memory (4 KiB each).
    pub cache_pages: usize,
    /// Log objects uploading at once; also bounds buffered memory.
    pub uploads: usize,
    /// The writer acts on its lease for 90% of (this − 1 s) after each renewal: keep it at
    /// least a few seconds (`serve` takes 3 s at least).
    pub lease_ttl: Duration,
    pub force_takeover: bool,
    /// Who we are, as shown to a refused second writer.
    pub holder: String,
    /// Log bytes written between checkpoints.
    pub checkpoint_bytes: u64,
    /// Cut the journal when it has held data this long, bounding what a crash can lose even if
    /// the client never flushes (the kernel's page cache writes back after 30 s too).
    pub max_dirty_age: Duration,
    /// Bytes the journal's open generation may hold on local disk before it is cut; with the
    /// cut generations still uploading, local disk use stays under about twice this.
    pub journal_bytes: u64,
    /// Extents the open generation may hold before it is cut (bounds the index in memory).
    pub journal_extents: usize,
    /// Bytes of uploaded cuts whose journal files are kept as a local read cache (0: none).
    pub cache_bytes: u64,
    /// How far past a sequential stream's last read the bucket's windows are prefetched (see
    /// [`ReadAhead`]; 0: none).
    pub read_ahead_bytes: u64,
}

impl WriterConfig {
    pub fn new(cache_dir: PathBuf, holder: String) -> Self {
        Self {
            cache_dir,
            cache_pages: 1024,
            uploads: 6,
            lease_ttl: Duration::from_secs(30),
            force_takeover: false,
            holder,
            checkpoint_bytes: 1 << 30,
            max_dirty_age: Duration::from_secs(30),
            journal_bytes: 8 << 30,
            journal_extents: 8 * MAX_DATA_ENTRIES,
            cache_bytes: 8 << 30,
            read_ahead_bytes: 16 << 20,
        }
    }
}

/// Cut generations uploading at once; one more cut waits (and so do writes that need it).
const MAX_CUT: usize = 4;

/// A cut of the journal: commit unit `first..=last`, uploading. Until it is durable, reads of
/// its sectors are served from its file.
struct CutUnit {
    journal: Generation,
    first: u64,
    last: u64,
    index: Arc<UnitIndex>,
}

/// Data runs the read cache may index in all (about 24 bytes each in memory).
const MAX_CACHED_RUNS: usize = 1 << 14;

/// An uploaded cut whose journal file still serves reads of its objects.
struct CachedUnit {
    file: Arc<File>,
    index: Arc<UnitIndex>,
    bytes: u64,
}

/// Per-object accounting for GC and `inspect`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ObjStat {
    pub live_sectors: u64,
    pub data_sectors: u64,
    pub bytes: u64,
}

struct State {
    /// The journal generation taking writes.
    open: Generation,
    open_since: Option<Instant>,
    /// Cut generations still uploading, oldest first.
    cut: VecDeque<Arc<CutUnit>>,
    /// Uploaded cuts kept as a read cache, oldest first, with their total bytes and runs.
    cached: VecDeque<CachedUnit>,
    cached_bytes: u64,
    cached_runs: usize,
    next_seq: u64,
    /// Uploaded objects past `uploaded`.
    done: BTreeSet<u64>,
    /// Objects 1..=uploaded are all in the bucket.
    uploaded: u64,
    /// Last objects of units not yet durable.
    unit_ends: BTreeSet<u64>,
    /// The end of the last complete unit within `uploaded`: what recovery would reach.
    durable: u64,
    table: ExtentTable,
    objects: BTreeMap<u64, ObjStat>,
    failed: Option<String>,
    /// Until when this writer may act on its lease: the last successful renewal's start plus
    /// most of the TTL, on the monotonic clock (which runs on while the process is stopped, so
    /// a writer resumed after a long SIGSTOP refuses I/O before it learns it was fenced).
    lease_until: Instant,
    log_bytes_since_checkpoint: u64,
    checkpointing: bool,
    last_checkpoint: u64,
}

/// Durable log position, or the reason the volume stopped.
#[derive(Debug, Clone)]
enum Progress {
    Durable(u64),
    Failed(String),
}

/// Where a run of sectors' bytes come from, resolved under the lock and read outside it.
enum Piece {
    Remote(RemotePiece),
    Journal(JournalPiece),
}

/// Sectors held by a journal generation, at byte `at` of its file.
struct JournalPiece {
    out_sector: u64,
    sectors: u64,
    file: Arc<File>,
    at: u64,
}

struct RemotePiece {
    out_sector: u64,
    sectors: u64,
    seq: u64,
    obj_sector: u64,
    /// Data sectors of object `seq`, as far as this writer knows (0: unknown).
    object_sectors: u64,
}

impl RemotePiece {
    /// Where the piece lives in log object `key`, for the read-ahead.
    fn span<'a>(&self, key: &'a str) -> ObjectSpan<'a> {
        ObjectSpan {
            key,
            seq: self.seq,
            object_sectors: self.object_sectors,
            first: self.obj_sector,
            sectors: self.sectors,
        }
    }
}

pub struct Volume {
    store: Arc<dyn ObjectStore>,
    layout: Layout,
    manifest: Manifest,
    lease: LeaseHandle,
    epoch: u64,
    cfg: WriterConfig,
    state: Mutex<State>,
    progress: watch::Sender<Progress>,
    uploads: Arc<Semaphore>,
    /// Writers hold it shared; unaligned read-modify-write holds it exclusively.
    rmw: RwLock<()>,
    table_path: PathBuf,
    readahead: ReadAhead,
    metrics: VolumeMetrics,
}

impl Volume {
    /// Opens `layout` for writing: takes the lease, recovers the log, removes what lies past the
    /// recovery point and fences the log with an object of the new epoch.
    pub async fn open(store: Arc<dyn ObjectStore>, layout: Layout, cfg: WriterConfig) -> Result<Arc<Self>> {
        let layout = crate::manage::resolve_layout(store.as_ref(), &layout).await?;
        let manifest = crate::manage::read_manifest(store.as_ref(), &layout).await?;
        // The cache holds the disk's data: owner-only, checked before the lease is taken.
        private_files::create_dir_all(&cfg.cache_dir)?;
        private_files::check_private_dir(&cfg.cache_dir)?;
        let asked = Instant::now();
        let lease =
            LeaseHandle::acquire(store.clone(), &layout, &cfg.holder, cfg.lease_ttl, cfg.force_takeover, 0).await?;
        let lease_until = asked + lease_margin(lease.ttl().await);
        let table_path = map_path(&cfg.cache_dir, &manifest.volume_id)?;
        let started = Instant::now();
        let mut r = replay::replay(store.as_ref(), &layout, &manifest, &table_path, cfg.cache_pages, u64::MAX).await?;
        if r.epoch >= lease.epoch() {
            return Err(VolumeError::Invalid(format!(
                "the log holds epoch {} but the lease only {}; was lease.json edited? \
                 remove it and retry",
                r.epoch,
                lease.epoch()
            )));
        }
        info!(end = r.end, base = r.base, elapsed_ms = started.elapsed().as_millis() as u64, "recovery complete");
        remove_past(store.as_ref(), &layout, &r.listing, r.end).await?;
        let live = replay::live_sectors(&mut r.table)?;
        let objects = r
            .listing
            .logs
            .range(..=r.end)
            .map(|(&seq, &bytes)| {
                let live_sectors = live.get(&seq).copied().unwrap_or(0);
                let data_sectors = bytes.saturating_sub(HEADER_BYTES as u64) / SECTOR;
                (seq, ObjStat { live_sectors, data_sectors, bytes })
            })
            .collect();
        let epoch = lease.epoch();
        let (progress, _) = watch::channel(Progress::Durable(r.end));
        let vol = Arc::new(Self {
            store,
            layout,
            manifest,
            lease,
            epoch,
            uploads: Arc::new(Semaphore::new(cfg.uploads.max(1))),
            state: Mutex::new(State {
                open: Generation::create(&cfg.cache_dir)?,
                open_since: None,
                cut: VecDeque::new(),
                cached: VecDeque::new(),
                cached_bytes: 0,
                cached_runs: 0,
                next_seq: r.end + 1,
                done: BTreeSet::new(),
                uploaded: r.end,
                unit_ends: BTreeSet::new(),
                durable: r.end,
                table: r.table,
                objects,
                failed: None,
                lease_until,
                log_bytes_since_checkpoint: 0,
                checkpointing: false,
                last_checkpoint: r.base,
            }),
            readahead: ReadAhead::new(cfg.read_ahead_bytes),
            cfg,
            progress,
            rmw: RwLock::new(()),
            table_path,
            metrics: VolumeMetrics::default(),
        });
        vol.write_marker(ObjectKind::Fence).await?;
        Ok(vol)
    }

    pub fn size(&self) -> u64 {
        self.manifest.size
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn metrics(&self) -> &VolumeMetrics {
        &self.metrics
    }

    /// What is waiting to reach the bucket, for the metrics.
    pub fn backlog(&self) -> Backlog {
        let st = self.lock();
        let cut_bytes: u64 = st.cut.iter().map(|unit| unit.journal.file_bytes()).sum();
        Backlog {
            dirty_bytes: st.open.file_bytes() + cut_bytes,
            queued_units: st.cut.len() as u64,
            uploads_in_flight: self.cfg.uploads.max(1).saturating_sub(self.uploads.available_permits()) as u64,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the state suspect; we stop the volume rather
        // than risk serving a half-updated map.
        match self.state.lock() {
            Ok(g) => g,
            Err(p) => {
                let mut g = p.into_inner();
                g.failed.get_or_insert_with(|| "internal panic while updating the map".into());
                g
            }
        }
    }

    fn check_ok(st: &State) -> Result<()> {
        if let Some(why) = &st.failed {
            return Err(VolumeError::Failed(why.clone()));
        }
        if Instant::now() >= st.lease_until {
            return Err(VolumeError::LeaseExpired);
        }
        Ok(())
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        if offset.checked_add(len).is_none_or(|end| end > self.manifest.size) {
            return Err(VolumeError::OutOfRange { offset, len, size: self.manifest.size });
        }
        Ok(())
    }

    /// Stops all I/O with `why`; FLUSH waiters wake up with the error.
    fn fail(&self, why: String) {
        error!(%why, "volume stopped");
        self.stop(why);
    }

    /// [`Self::fail`] with the state already locked.
    fn fail_locked(&self, st: &mut State, why: String) {
        error!(%why, "volume stopped");
        st.failed.get_or_insert(why.clone());
        self.progress.send_replace(Progress::Failed(why));
    }

    /// Stops all I/O without calling it an error (clean shutdown).
    fn stop(&self, why: String) {
        let mut st = self.lock();
        st.failed.get_or_insert(why.clone());
        drop(st);
        self.progress.send_replace(Progress::Failed(why));
    }

    // ---- reads ---------------------------------------------------------------------------

    /// Reads `len` bytes at `offset` (any alignment).
    pub async fn read(&self, offset: u64, len: u64) -> Result<Bytes> {
        Ok(self.read_parts(offset, len).await?.to_bytes())
    }

    /// [`Self::read`] as pieces: bytes fetched from the bucket are not gathered into one
    /// buffer (the NBD server writes the pieces out as they are).
    pub async fn read_parts(&self, offset: u64, len: u64) -> Result<Parts> {
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(Parts::default());
        }
        let first = offset / SECTOR;
        let last = (offset + len).div_ceil(SECTOR);
        let sequential = self.readahead.note_read(offset, len);
        if sequential {
            self.read_ahead(last);
        }
        let buf = self.read_sectors(first, last - first, sequential).await?;
        let skip = (offset - first * SECTOR) as usize;
        Ok(buf.slice(skip..skip + len as usize))
    }

    /// Reads sectors `first..first + n`; a `sequential` read goes through the read-ahead. A
    /// read served wholly by the bucket returns the fetched bytes as they are (no copy).
    async fn read_sectors(&self, first: u64, n: u64, sequential: bool) -> Result<Parts> {
        let pieces = self.resolve(first, n)?;
        // Wholly in the bucket (pieces come in sector order): the fetched pieces as they are.
        let remote: Vec<&RemotePiece> =
            pieces.iter().filter_map(|p| if let Piece::Remote(p) = p { Some(p) } else { None }).collect();
        if remote.len() == pieces.len() && remote.iter().map(|p| p.sectors).sum::<u64>() == n {
            let fetches = remote.iter().map(|p| self.fetch_piece(p, sequential));
            let mut out = Parts::default();
            for data in futures::future::try_join_all(fetches).await? {
                out.extend(data);
            }
            return Ok(out);
        }
        let mut out = vec![0u8; (n * SECTOR) as usize];
        let mut remote = Vec::new();
        for piece in &pieces {
            match piece {
                Piece::Journal(j) => {
                    let at = (j.out_sector * SECTOR) as usize;
                    j.file.read_exact_at(&mut out[at..at + (j.sectors * SECTOR) as usize], j.at)?;
                }
                Piece::Remote(p) => remote.push(p),
            }
        }
        let fetches = remote
            .into_iter()
            .map(|p| async move { Ok::<_, VolumeError>((p.out_sector, self.fetch_piece(p, sequential).await?)) });
        for (at, data) in futures::future::try_join_all(fetches).await? {
            let at = (at * SECTOR) as usize;
            data.copy_to(&mut out[at..at + data.len()]);
        }
        Ok(Parts::from(Bytes::from(out)))
    }

    /// Starts fetching, in the background, the bucket's windows holding the sectors after
    /// `end` (where a sequential read ends) not already asked for. Best effort: a failure here
    /// is the next read's to meet.
    fn read_ahead(&self, end: u64) {
        let stop = (end + self.readahead.ahead_sectors()).min(self.manifest.size / SECTOR);
        let ahead = self.readahead.claim_ahead(end, stop);
        if ahead.is_empty() {
            return;
        }
        let Ok(pieces) = self.resolve(ahead.start, ahead.end - ahead.start) else { return };
        for p in pieces.iter().filter_map(|p| if let Piece::Remote(p) = p { Some(p) } else { None }) {
            self.readahead.prefetch(&self.store, p.span(&self.layout.log(p.seq)));
        }
    }

    /// The bytes of `p` from the bucket, through the read-ahead when `sequential`.
    async fn fetch_piece(&self, p: &RemotePiece, sequential: bool) -> Result<Parts> {
        let key = self.layout.log(p.seq);
        if sequential && let Some(data) = self.readahead.read(&self.store, p.span(&key)).await {
            return Ok(data?);
        }
        let from = HEADER_BYTES as u64 + p.obj_sector * SECTOR;
        Ok(Parts::from(self.store.get_range(&key, from, p.sectors * SECTOR).await?))
    }

    /// Where each sector's bytes are: the journal (open generation, then cut ones, newest
    /// first), else the bucket; runs are coalesced. Sectors never written (or zeroed) are in no
    /// piece and read as zeros.
    fn resolve(&self, first: u64, n: u64) -> Result<Vec<Piece>> {
        let mut st = self.lock();
        Self::check_ok(&st)?;
        let State { open, cut, cached, table, objects, .. } = &mut *st;
        let gens: Vec<&Generation> =
            std::iter::once(&*open).chain(cut.iter().rev().map(|u| &u.journal)).filter(|g| !g.is_empty()).collect();
        let mut pieces: Vec<Piece> = Vec::new();
        for i in 0..n {
            if let Some((source, held)) = gens.iter().find_map(|g| g.lookup(first + i).map(|h| (g, h))) {
                let Some(at) = held else { continue }; // zeroed in the journal
                push_journal(&mut pieces, i, source.file(), at);
                continue;
            }
            if table.reads_as_zeros(first + i)? {
                continue; // never written, or logged as zeros
            }
            let Some((seq, obj_sector)) = table::decode(table.get(first + i)?) else { continue };
            if let Some((file, at)) = Self::cached_at(cached, seq, obj_sector) {
                push_journal(&mut pieces, i, file, at);
                continue;
            }
            match pieces.last_mut() {
                Some(Piece::Remote(p))
                    if p.seq == seq && p.out_sector + p.sectors == i && p.obj_sector + p.sectors == obj_sector =>
                {
                    p.sectors += 1;
                }
                _ => {
                    let object_sectors = objects.get(&seq).map_or(0, |o| o.data_sectors);
                    pieces.push(Piece::Remote(RemotePiece {
                        out_sector: i,
                        sectors: 1,
                        seq,
                        obj_sector,
                        object_sectors,
                    }));
                }
            }
        }
        Ok(pieces)
    }

    /// The read cache's file and offset for sector `obj_sector` of object `seq`, if cached.
    fn cached_at(cached: &VecDeque<CachedUnit>, seq: u64, obj_sector: u64) -> Option<(&Arc<File>, u64)> {
        let i = cached.partition_point(|u| u.index.last() < seq);
        let unit = cached.get(i)?;
        unit.index.locate(seq, obj_sector).map(|at| (&unit.file, at))
    }

    // ---- writes --------------------------------------------------------------------------

    /// Writes `data` at `offset` (any alignment; partial sectors are read, merged, rewritten).
    pub async fn write(self: &Arc<Self>, offset: u64, data: &[u8]) -> Result<()> {
        self.check_range(offset, data.len() as u64)?;
        if data.is_empty() {
            return Ok(());
        }
        if offset.is_multiple_of(SECTOR) && (data.len() as u64).is_multiple_of(SECTOR) {
            let _shared = self.rmw.read().await;
            return self.put_sectors(offset / SECTOR, Some(data)).await;
        }
        let _excl = self.rmw.write().await;
        let first = offset / SECTOR;
        let last = (offset + data.len() as u64).div_ceil(SECTOR);
        let old = self.read_sectors(first, last - first, false).await?;
        let mut buf = vec![0u8; old.len()];
        old.copy_to(&mut buf);
        let skip = (offset - first * SECTOR) as usize;
        buf[skip..skip + data.len()].copy_from_slice(data);
        self.put_sectors(first, Some(&buf)).await
    }

    /// Makes [offset, offset+len) read as zeros. Whole sectors become zero extents of the
    /// journal (logged as zero data where they cover written sectors, not at all elsewhere);
    /// partial sectors at the edges are rewritten with zeros.
    pub async fn write_zeroes(self: &Arc<Self>, offset: u64, len: u64) -> Result<()> {
        self.check_range(offset, len)?;
        let end = offset + len;
        let inner_first = offset.div_ceil(SECTOR);
        let inner_end = end / SECTOR;
        if inner_first >= inner_end {
            return self.write(offset, &vec![0u8; len as usize]).await;
        }
        if !offset.is_multiple_of(SECTOR) {
            let head = inner_first * SECTOR - offset;
            self.write(offset, &vec![0u8; head as usize]).await?;
        }
        {
            let _shared = self.rmw.read().await;
            // Large zero ranges are chunked so one entry never exceeds u32 bytes.
            let mut s = inner_first;
            while s < inner_end {
                let n = (inner_end - s).min(1 << 18);
                self.put_zero(s, n).await?;
                s += n;
            }
        }
        if !end.is_multiple_of(SECTOR) {
            let tail = end - inner_end * SECTOR;
            self.write(inner_end * SECTOR, &vec![0u8; tail as usize]).await?;
        }
        Ok(())
    }

    /// TRIM: advisory, so only whole sectors are discarded (they then read as zeros).
    pub async fn trim(self: &Arc<Self>, offset: u64, len: u64) -> Result<()> {
        self.check_range(offset, len)?;
        let first = offset.div_ceil(SECTOR);
        let end = (offset + len) / SECTOR;
        let _shared = self.rmw.read().await;
        let mut s = first;
        while s < end {
            let n = (end - s).min(1 << 18);
            self.put_zero(s, n).await?;
            s += n;
        }
        Ok(())
    }

    async fn put_zero(self: &Arc<Self>, sector: u64, n: u64) -> Result<()> {
        self.insert(sector, n, None).await
    }

    async fn put_sectors(self: &Arc<Self>, sector: u64, data: Option<&[u8]>) -> Result<()> {
        // The journal's plan splits extents to what one header entry can describe.
        let n = data.map_or(0, |d| d.len() as u64 / SECTOR);
        self.insert(sector, n, data).await
    }

    /// Adds a write to the journal, cutting the open generation first if the write does not fit
    /// and after if it is full.
    async fn insert(self: &Arc<Self>, sector: u64, n: u64, data: Option<&[u8]>) -> Result<()> {
        self.insert_if(sector, n, data, |_| Ok(true)).await.map(|_| ())
    }

    /// [`Self::insert`], but only if `pred` holds, checked under the same lock as the insert.
    async fn insert_if(
        self: &Arc<Self>,
        sector: u64,
        n: u64,
        data: Option<&[u8]>,
        pred: impl Fn(&mut State) -> Result<bool>,
    ) -> Result<bool> {
        let bytes = if data.is_some() { n * SECTOR } else { 0 };
        loop {
            // Subscribed before looking, so a cut finishing in between still wakes us.
            let mut progress = self.progress.subscribe();
            let placed = {
                let mut st = self.lock();
                Self::check_ok(&st)?;
                let fits = st.open.is_empty()
                    || (st.open.extents() + 2 <= self.cfg.journal_extents
                        && st.open.file_bytes() + bytes <= self.cfg.journal_bytes);
                if fits {
                    if !pred(&mut st)? {
                        return Ok(false);
                    }
                    let guard = st
                        .open
                        .writer_guard()
                        .ok_or_else(|| VolumeError::Failed("the open journal generation was cut early".into()))?;
                    let places = match data {
                        Some(_) => st.open.insert_data(sector, n),
                        None => {
                            st.open.insert_zero(sector, n);
                            Vec::new()
                        }
                    };
                    st.open_since.get_or_insert_with(Instant::now);
                    let file = st.open.file().clone();
                    let full = st.open.extents() + 2 > self.cfg.journal_extents
                        || st.open.file_bytes() >= self.cfg.journal_bytes;
                    if full && st.cut.len() < MAX_CUT {
                        self.cut(&mut st)?;
                    }
                    Some((guard, file, places))
                } else if st.cut.len() < MAX_CUT {
                    self.cut(&mut st)?;
                    continue;
                } else {
                    None
                }
            };
            let Some((guard, file, places)) = placed else {
                // Every cut slot is busy uploading: wait for one to finish.
                progress.changed().await.map_err(|_| VolumeError::Failed("volume closed".into()))?;
                continue;
            };
            if let Some(data) = data {
                for p in places {
                    if let Err(e) = file.write_all_at(&data[p.src..p.src + p.len], p.at) {
                        self.fail(format!("writing the local journal in {}: {e}", self.cfg.cache_dir.display()));
                        return Err(e.into());
                    }
                }
            }
            drop(guard);
            return Ok(true);
        }
    }

    async fn upload_permit(&self) -> Result<OwnedSemaphorePermit> {
        self.uploads.clone().acquire_owned().await.map_err(|_| VolumeError::Failed("volume closed".into()))
    }

    /// Cuts the open generation into the next commit unit, points the map at its objects and
    /// starts uploading them. On failure the volume stops (the map may be half updated).
    fn cut(self: &Arc<Self>, st: &mut State) -> Result<()> {
        if st.open.is_empty() {
            return Ok(());
        }
        match self.plan_cut(st) {
            Ok(Some((unit, plan))) => {
                let vol = self.clone();
                tokio::spawn(async move { vol.upload_unit(unit, plan).await });
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => {
                self.fail_locked(st, format!("cutting the journal: {e}"));
                Err(e)
            }
        }
    }

    /// Plans the cut; `None` when nothing in the open generation needs logging.
    fn plan_cut(&self, st: &mut State) -> Result<Option<(Arc<CutUnit>, Vec<PlannedObject>)>> {
        let fresh = Generation::create(&self.cfg.cache_dir)?;
        let mut journal = std::mem::replace(&mut st.open, fresh);
        st.open_since = None;
        drop_zeros_over_zeros(&mut journal, &mut st.table)?;
        if journal.is_empty() {
            // Only zeros over sectors that were zeros already: nothing to log.
            return Ok(None);
        }
        let plan = journal.plan(self.manifest.object_bytes / SECTOR, MAX_DATA_ENTRIES);
        let first = st.next_seq;
        let last = first + plan.len() as u64 - 1;
        st.next_seq = last + 1;
        for (seq, obj) in (first..).zip(&plan) {
            let mut obj_sector = 0u64;
            for e in &obj.entries {
                for i in 0..e.sectors {
                    let at = table::encode(seq, obj_sector + i);
                    let old = match e.at {
                        Some(_) => st.table.set(e.sector + i, at)?,
                        None => st.table.set_zeros(e.sector + i, at)?,
                    };
                    if let Some((old_seq, _)) = table::decode(old)
                        && let Some(o) = st.objects.get_mut(&old_seq)
                    {
                        o.live_sectors = o.live_sectors.saturating_sub(1);
                    }
                }
                obj_sector += e.sectors;
            }
            let bytes = HEADER_BYTES as u64 + obj.data_sectors * SECTOR;
            st.objects.insert(seq, ObjStat { live_sectors: obj.data_sectors, data_sectors: obj.data_sectors, bytes });
            st.log_bytes_since_checkpoint += bytes;
        }
        st.unit_ends.insert(last);
        let index = Arc::new(UnitIndex::new(first, &plan));
        let unit = Arc::new(CutUnit { journal, first, last, index });
        st.cut.push_back(unit.clone());
        debug!(first, last, "journal cut");
        Ok(Some((unit, plan)))
    }

    /// Uploads the objects of a cut, `uploads` at a time, once every write placed in it is in
    /// its file.
    async fn upload_unit(self: Arc<Self>, unit: Arc<CutUnit>, plan: Vec<PlannedObject>) {
        unit.journal.wait_writers().await;
        let count = plan.len() as u32;
        let uploads = futures::stream::iter((0u32..).zip(plan))
            .map(|(i, obj)| {
                let (vol, unit) = (self.clone(), unit.clone());
                async move {
                    let _permit = vol.upload_permit().await?;
                    let seq = unit.first + u64::from(i);
                    let pos = UnitPos { before: i, after: count - 1 - i };
                    let trailer = Trailer { epoch: vol.epoch, seq, kind: ObjectKind::Data, unit: pos };
                    let mut body = BytesMut::zeroed(HEADER_BYTES + Generation::data_len(&obj));
                    body[..HEADER_BYTES].copy_from_slice(&format::encode_header(&obj.header_entries(), trailer));
                    let reader = unit.clone();
                    let body = tokio::task::spawn_blocking(move || {
                        reader.journal.read_object_data(&obj, &mut body[HEADER_BYTES..]).map(|()| body.freeze())
                    })
                    .await
                    .map_err(|e| VolumeError::Failed(format!("journal reader: {e}")))??;
                    vol.put_log(seq, body).await?;
                    vol.mark_uploaded(seq);
                    Ok::<_, VolumeError>(())
                }
            })
            .buffer_unordered(self.cfg.uploads.max(1));
        if let Err(e) = uploads.try_collect::<()>().await {
            self.fail(format!("uploading log objects {}..={}: {e}", unit.first, unit.last));
        }
    }

    /// Writes an empty log object of `kind` (a fence) and waits until it is durable.
    async fn write_marker(self: &Arc<Self>, kind: ObjectKind) -> Result<()> {
        let seq = {
            let mut st = self.lock();
            let seq = st.next_seq;
            st.next_seq += 1;
            st.unit_ends.insert(seq);
            seq
        };
        let header = format::encode_header(&[], Trailer::single(self.epoch, seq, kind));
        self.put_log(seq, Bytes::from(header)).await?;
        self.lock().objects.insert(seq, ObjStat { live_sectors: 0, data_sectors: 0, bytes: HEADER_BYTES as u64 });
        self.mark_uploaded(seq);
        Ok(())
    }

    /// Create-only PUT of a log object, with retries. A conflict means another writer: if it
    /// is older than us (a fenced writer that raced us), we replace its object; if it is us
    /// (a retried request that had succeeded), fine; if newer, we are fenced.
    async fn put_log(&self, seq: u64, body: Bytes) -> Result<()> {
        let key = self.layout.log(seq);
        let mut cond = PutCondition::IfAbsent;
        let mut delay = Duration::from_millis(100);
        for attempt in 1..=10 {
            match self.store.put(&key, body.clone(), cond.clone()).await {
                Ok(_) => return Ok(()),
                Err(StoreError::PreconditionFailed(_)) => {
                    let existing = match self.store.get(&key).await {
                        Ok(f) => f,
                        Err(StoreError::NotFound(_)) => {
                            cond = PutCondition::IfAbsent;
                            continue;
                        }
                        Err(e) => return Err(e.into()),
                    };
                    let theirs = format::decode_header(&key, &existing.data)?.trailer.epoch;
                    if theirs == self.epoch {
                        return Ok(());
                    }
                    if theirs > self.epoch {
                        return Err(VolumeError::Fenced(theirs));
                    }
                    warn!(seq, theirs, ours = self.epoch, "replacing an object of a fenced writer");
                    cond = PutCondition::IfMatch(existing.etag);
                }
                Err(e) if attempt < 10 => {
                    warn!(seq, attempt, error = %e, "log upload failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(VolumeError::Failed(format!("log object {seq} could not be written")))
    }

    /// Records that object `seq` is in the bucket. The durable position moves to the end of
    /// the last unit whose objects are all there; cuts up to it no longer need their files.
    fn mark_uploaded(self: &Arc<Self>, seq: u64) {
        let mut st = self.lock();
        st.done.insert(seq);
        let before = st.durable;
        loop {
            let next = st.uploaded + 1;
            if !st.done.remove(&next) {
                break;
            }
            st.uploaded = next;
        }
        if let Some(&end) = st.unit_ends.range(..=st.uploaded).next_back() {
            st.durable = end;
            st.unit_ends = st.unit_ends.split_off(&(end + 1));
        }
        while st.cut.front().is_some_and(|u| u.last <= st.durable) {
            if let Some(unit) = st.cut.pop_front() {
                self.keep_cached(&mut st, &unit);
            }
        }
        let durable = st.durable;
        let want_checkpoint =
            !st.checkpointing && st.failed.is_none() && st.log_bytes_since_checkpoint >= self.cfg.checkpoint_bytes;
        if want_checkpoint {
            st.checkpointing = true;
        }
        drop(st);
        if durable != before {
            self.progress.send_if_modified(|p| match p {
                Progress::Durable(d) => {
                    *d = durable;
                    true
                }
                Progress::Failed(_) => false,
            });
        }
        if want_checkpoint {
            let vol = self.clone();
            tokio::spawn(async move {
                if let Err(e) = vol.checkpoint().await {
                    warn!(error = %e, "checkpoint failed; will retry after more writes");
                }
                vol.lock().checkpointing = false;
            });
        }
    }

    /// Keeps an uploaded cut's file as read cache, dropping the oldest beyond the budget.
    fn keep_cached(&self, st: &mut State, unit: &CutUnit) {
        let bytes = unit.journal.file_bytes();
        if bytes > self.cfg.cache_bytes || unit.index.runs() > MAX_CACHED_RUNS {
            return;
        }
        st.cached_bytes += bytes;
        st.cached_runs += unit.index.runs();
        st.cached.push_back(CachedUnit { file: unit.journal.file().clone(), index: unit.index.clone(), bytes });
        while st.cached_bytes > self.cfg.cache_bytes || st.cached_runs > MAX_CACHED_RUNS {
            let Some(old) = st.cached.pop_front() else { break };
            st.cached_bytes -= old.bytes;
            st.cached_runs -= old.index.runs();
        }
    }

    /// Cuts the journal (if it holds anything) and waits until every write accepted so far is
    /// durable.
    pub async fn flush(self: &Arc<Self>) -> Result<()> {
        let started = Instant::now();
        let target = loop {
            let mut progress = self.progress.subscribe();
            {
                let mut st = self.lock();
                Self::check_ok(&st)?;
                if st.open.is_empty() {
                    break st.next_seq - 1;
                }
                if st.cut.len() < MAX_CUT {
                    self.cut(&mut st)?;
                    break st.next_seq - 1;
                }
            }
            progress.changed().await.map_err(|_| VolumeError::Failed("volume closed".into()))?;
        };
        self.wait_durable(target).await?;
        // Acknowledge only under a valid lease: a writer that was paused past it may have been
        // replaced by one whose recovery did not see these objects.
        Self::check_ok(&self.lock())?;
        self.metrics.flushed(started.elapsed());
        Ok(())
    }

    async fn wait_durable(&self, target: u64) -> Result<()> {
        let mut rx = self.progress.subscribe();
        loop {
            match &*rx.borrow_and_update() {
                Progress::Failed(why) => return Err(VolumeError::Failed(why.clone())),
                Progress::Durable(d) if *d >= target => return Ok(()),
                Progress::Durable(_) => {}
            }
            rx.changed().await.map_err(|_| VolumeError::Failed("volume closed".into()))?;
        }
    }

    // ---- background duties ---------------------------------------------------------------

    /// Cuts a journal that has held data for too long (bounds what a crash loses without a
    /// FLUSH) and renews the lease. Runs until the volume fails.
    pub async fn run_background(self: Arc<Self>) {
        let ttl = self.lease.ttl().await;
        let renew_every = ttl / 3;
        // Renew at once: recovery may have taken a good part of the TTL.
        let mut last_renew = Instant::now().checked_sub(renew_every).unwrap_or_else(Instant::now);
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tick.tick().await;
            if self.lock().failed.is_some() {
                return;
            }
            let stale = self.lock().open_since.is_some_and(|t| t.elapsed() >= self.cfg.max_dirty_age);
            if stale {
                let mut st = self.lock();
                if st.cut.len() < MAX_CUT {
                    // A failed cut stops the volume; the next tick sees it.
                    let _ = self.cut(&mut st);
                }
            }
            if last_renew.elapsed() >= renew_every {
                let sent = Instant::now();
                let renewed = self.lease.renew().await;
                self.metrics.lease_renewal(renewed.is_ok());
                match renewed {
                    Ok(()) => {
                        last_renew = Instant::now();
                        self.lock().lease_until = sent + lease_margin(ttl);
                    }
                    Err(VolumeError::Fenced(e)) => {
                        self.fail(format!("lease taken over (by epoch > {e})"));
                        return;
                    }
                    Err(e) if last_renew.elapsed() >= renew_every * 3 => {
                        // The lease may have expired: another writer could own the volume now.
                        self.fail(format!("could not renew the lease before it expired: {e}"));
                        return;
                    }
                    Err(e) => warn!(error = %e, "lease renewal failed; retrying"),
                }
            }
        }
    }

    /// Writes a checkpoint of the map as of the last cut.
    pub async fn checkpoint(self: &Arc<Self>) -> Result<()> {
        let tmp = tempfile::Builder::new().prefix("checkpoint-").tempfile_in(&self.cfg.cache_dir)?;
        let (seq, sectors) = {
            let mut st = self.lock();
            Self::check_ok(&st)?;
            st.table.copy_to(tmp.path())?;
            st.log_bytes_since_checkpoint = 0;
            (st.next_seq - 1, st.table.sectors())
        };
        self.wait_durable(seq).await?;
        let copy = tmp.path().to_path_buf();
        let epoch = self.epoch;
        let encoded =
            tokio::task::spawn_blocking(move || crate::manage::encode_checkpoint_file(&copy, sectors, seq, epoch))
                .await
                .map_err(|e| VolumeError::Invalid(e.to_string()))??;
        self.store.put_file(&self.layout.checkpoint(seq), encoded.path()).await?;
        let mut st = self.lock();
        st.last_checkpoint = st.last_checkpoint.max(seq);
        drop(st);
        info!(seq, "checkpoint written");
        Ok(())
    }

    /// Flushes, writes a final checkpoint when anything changed since the last one, and
    /// releases the lease so the next `serve` starts at once.
    pub async fn close(self: &Arc<Self>) -> Result<()> {
        self.flush().await?;
        let changed = {
            let st = self.lock();
            st.log_bytes_since_checkpoint > 0 && st.last_checkpoint < st.next_seq - 1
        };
        if changed {
            self.checkpoint().await?;
        }
        self.lease.release().await?;
        self.stop("volume closed".into());
        let _ = std::fs::remove_file(&self.table_path);
        Ok(())
    }

    /// True once the volume stopped accepting I/O (fenced, upload failure, closed).
    pub fn is_failed(&self) -> bool {
        self.lock().failed.is_some()
    }

    /// Resolves with the reason when the volume stops accepting I/O.
    pub async fn wait_failed(&self) -> String {
        let mut rx = self.progress.subscribe();
        loop {
            if let Progress::Failed(why) = &*rx.borrow_and_update() {
                return why.clone();
            }
            if rx.changed().await.is_err() {
                return "volume dropped".into();
            }
        }
    }

    // ---- accounting (GC, inspect) ----------------------------------------------------------

    /// Per-object accounting snapshot.
    pub fn objects(&self) -> BTreeMap<u64, ObjStat> {
        self.lock().objects.clone()
    }

    /// Last durable log position.
    pub fn durable(&self) -> u64 {
        self.lock().durable
    }

    pub(crate) fn last_checkpoint(&self) -> u64 {
        self.lock().last_checkpoint
    }

    pub(crate) fn forget_object(&self, seq: u64, bytes: u64) {
        if let Some(o) = self.lock().objects.get_mut(&seq) {
            o.bytes = bytes;
            o.data_sectors = 0;
            o.live_sectors = 0;
        }
    }

    pub(crate) fn drop_object(&self, seq: u64) {
        self.lock().objects.remove(&seq);
    }

    /// For GC: the sectors of object `seq`'s entries that the map still points at, as
    /// (volume sector, object sector) pairs.
    pub(crate) fn live_in(&self, seq: u64, entries: &[Entry]) -> Result<Vec<(u64, u64)>> {
        let mut st = self.lock();
        Self::check_ok(&st)?;
        let sectors = st.table.sectors();
        let mut out = Vec::new();
        let mut obj_sector = 0;
        for e in entries.iter().filter(|e| !e.zero) {
            let first = e.addr / SECTOR;
            let n = u64::from(e.len) / SECTOR;
            for i in 0..n {
                let s = first + i;
                if s < sectors && st.open.lookup(s).is_none() && st.table.get(s)? == table::encode(seq, obj_sector + i)
                {
                    out.push((s, obj_sector + i));
                }
            }
            obj_sector += n;
        }
        Ok(out)
    }

    /// For rollback: writes again, as data, every sector whose map entry differs from
    /// `target`'s (a map of the same volume at a snapshot; sectors past its end count as
    /// unmapped), with the bytes `target` points at or zeros. Returns the bytes written.
    pub(crate) async fn revert_to(self: &Arc<Self>, target: &mut ExtentTable) -> Result<u64> {
        /// Longest run fetched and written at once (1 MiB).
        const MAX_RUN: u64 = 256;
        let sectors = self.lock().table.sectors();
        let mut next = 0;
        let mut written = 0;
        loop {
            let run = {
                let mut st = self.lock();
                Self::check_ok(&st)?;
                differing_run(&mut st.table, target, &mut next, sectors, MAX_RUN)?
            };
            let Some((start, n, want)) = run else { return Ok(written) };
            let data = match table::decode(want) {
                Some((seq, obj_sector)) => {
                    let from = HEADER_BYTES as u64 + obj_sector * SECTOR;
                    self.store.get_range(&self.layout.log(seq), from, n * SECTOR).await?.to_vec()
                }
                None => vec![0u8; (n * SECTOR) as usize],
            };
            self.write(start * SECTOR, &data).await?;
            written += n * SECTOR;
        }
    }

    /// For GC: re-writes `data` at `sector` only where the map still points into `seq` at the
    /// same place and no newer write is buffered, so a concurrent user write always wins.
    pub(crate) async fn rewrite_if_unchanged(
        self: &Arc<Self>,
        seq: u64,
        moves: &[(u64, u64)],
        data: &[Bytes],
    ) -> Result<()> {
        // Exclusive: a user write racing ours could otherwise land in the same journal bytes
        // first and then be overwritten by the older data we are moving.
        let _excl = self.rmw.write().await;
        for (&(sector, obj_sector), d) in moves.iter().zip(data) {
            let want = table::encode(seq, obj_sector);
            self.insert_if(sector, 1, Some(d), |st| {
                Ok(st.open.lookup(sector).is_none() && st.table.get(sector)? == want)
            })
            .await?;
        }
        Ok(())
    }
}

/// The next run of at most `max` sectors from `*next` on whose `head` entry differs from
/// `target`'s and whose `target` entries are one stretch of one object (or all unmapped), as
/// (first sector, sectors, first target entry); `*next` moves past it.
fn differing_run(
    head: &mut ExtentTable,
    target: &mut ExtentTable,
    next: &mut u64,
    sectors: u64,
    max: u64,
) -> Result<Option<(u64, u64, u64)>> {
    let mut run: Option<(u64, u64, u64)> = None;
    while *next < sectors {
        let s = *next;
        let want = if s < target.sectors() { target.get(s)? } else { 0 };
        let differs = head.get(s)? != want;
        match run {
            None if !differs => {}
            None => run = Some((s, 1, want)),
            Some((start, n, first)) if differs && n < max && want == if first == 0 { 0 } else { first + n } => {
                run = Some((start, n + 1, first));
            }
            Some(_) => break,
        }
        *next += 1;
    }
    Ok(run)
}

/// Deletes log objects and checkpoints past the recovery point: leftovers of a crashed writer
/// (uploads that landed after a gap) that must never be mistaken for a continuation of the log.
async fn remove_past(store: &dyn ObjectStore, layout: &Layout, listing: &Listing, end: u64) -> Result<()> {
    let mut n = 0;
    for (&seq, _) in listing.logs.range(end + 1..) {
        store.delete(&layout.log(seq)).await?;
        n += 1;
    }
    for (&seq, _) in listing.checkpoints.range(end + 1..) {
        store.delete(&layout.checkpoint(seq)).await?;
        n += 1;
    }
    if n > 0 {
        info!(removed = n, after = end, "removed objects past the recovery point");
    }
    Ok(())
}

/// This process's extent-map file for volume `id` in `dir`. Each process has its own (a
/// standby on the same host shares the cache directory with the writer it replaces, which may
/// only be paused); files left by processes that no longer exist are removed.
fn map_path(dir: &std::path::Path, id: &str) -> Result<PathBuf> {
    let pid = std::process::id();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(other) = name
            .to_str()
            .and_then(|n| n.strip_prefix(&format!("{id}.")))
            .and_then(|n| n.strip_suffix(".map"))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if other != pid && !std::path::Path::new(&format!("/proc/{other}")).exists() {
            let _ = std::fs::remove_file(dir.join(&name));
        }
    }
    Ok(dir.join(format!("{id}.{pid}.map")))
}

/// How long after asking for (or renewing) a lease of `ttl` a writer still acts on it. The
/// lease records its renewal in whole seconds, so another writer may take it over as early as
/// `ttl` minus one second after the renewal was sent; stop at 90% of that.
fn lease_margin(ttl: Duration) -> Duration {
    ttl.saturating_sub(Duration::from_secs(1)).mul_f64(0.9)
}

/// Removes from a generation being cut its zeros over sectors that read as zeros already:
/// never written (no log object holds data for them: zeros over written sectors are logged as
/// data and stay mapped), or mapped to zero data this process logged. A reader of the raw log
/// needs no entry for them either, and repeated TRIMs of free space upload nothing.
fn drop_zeros_over_zeros(journal: &mut Generation, table: &mut ExtentTable) -> Result<()> {
    for (start, n) in journal.zero_extents() {
        let end = start + n;
        let mut s = start;
        while s < end {
            let zeros = table.reads_as_zeros(s)?;
            let mut e = s + 1;
            while e < end && table.reads_as_zeros(e)? == zeros {
                e += 1;
            }
            if zeros {
                journal.forget(s, e);
            }
            s = e;
        }
    }
    Ok(())
}

/// Adds output sector `i`, held at byte `at` of a journal `file`, extending the last piece when
/// it continues it (same file, next sector, next bytes).
fn push_journal(pieces: &mut Vec<Piece>, i: u64, file: &Arc<File>, at: u64) {
    if let Some(Piece::Journal(j)) = pieces.last_mut()
        && Arc::ptr_eq(&j.file, file)
        && j.out_sector + j.sectors == i
        && j.at + j.sectors * SECTOR == at
    {
        j.sectors += 1;
        return;
    }
    pieces.push(Piece::Journal(JournalPiece { out_sector: i, sectors: 1, file: file.clone(), at }));
}
