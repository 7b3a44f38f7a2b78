//! Striped copies: one blob sent to another node over several connections at once.
//!
//! One HTTP stream over a long link carries at most one window of bytes per round trip (a TCP
//! window; the WAN proxy's is 4 MiB), about 100–200 MiB/s at 20–40 ms: no faster than a node
//! ingests, so a copy sent on one stream falls behind the write it belongs to. A copy longer
//! than one [`SEGMENT`] is therefore cut into segments dealt round-robin to up to [`STRIPES`]
//! streams:
//!
//! * `PUT /_meridian/blob/<id>?chunk=N&stripe=I&stripes=K&segment=S` carries segments `I`,
//!   `I+K`, `I+2K`, … of the blob, each `S` bytes (only the blob's last may be shorter). It is
//!   answered `200` once the receiver has taken them in: not yet durable.
//! * `POST /_meridian/blob/<id>?chunk=N&stripes=K&segment=S&segments=T&size=Z` says the blob has
//!   `T` segments and `Z` bytes. It is answered like a whole copy (`201` with the size and
//!   digest) once every segment is written, in order, and the blob is durable.
//!
//! The receiver writes the segments in order through one [`BlobWriter`], so the blob and its
//! digest are the same as a one-stream copy's. It keeps at most two segments per stripe that
//! came early; a stripe further ahead waits, and so does its connection. A stripe that breaks off,
//! a request that disagrees with the others, or [`ASSEMBLY_IDLE`] without a byte abandons the
//! whole blob: nothing is kept, and every request still waiting on it gets the reason.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use tokio::sync::watch;

use crate::{BlobError, BlobId, BlobStore, BlobWriter, ChunkHasher, StoredCopy};

/// Bytes per segment of a striped copy. Copies up to this size go on one stream.
pub const SEGMENT: u64 = 1 << 20;
/// Streams per striped copy: four windows in flight outrun a node's ingest.
pub const STRIPES: u64 = 4;
/// Most streams a receiver accepts for one copy.
const MAX_STRIPES: u64 = 8;
/// Segment sizes a receiver accepts (it may hold two per stripe early: 16 MiB at most).
const SEGMENT_SIZES: std::ops::RangeInclusive<u64> = (64 << 10)..=SEGMENT;
/// Copies a node assembles at once; a further one waits for a slot.
const MAX_ASSEMBLIES: usize = 128;
/// How long a copy being assembled may receive nothing before it is abandoned.
pub const ASSEMBLY_IDLE: Duration = Duration::from_secs(30);

/// How a striped copy is cut: the same in every request of one copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The chunk size of the digest the receiver reports.
    pub chunk: u64,
    pub stripes: u64,
    pub segment: u64,
}

impl Layout {
    /// The layout this node sends copies with.
    pub fn sending(chunk: u64) -> Layout {
        Layout { chunk, stripes: STRIPES, segment: SEGMENT }
    }

    /// Refuses a layout a receiver does not accept.
    pub fn check(self) -> Result<Layout, String> {
        if !(2..=MAX_STRIPES).contains(&self.stripes) {
            return Err(format!("stripes={} is outside 2..={MAX_STRIPES}", self.stripes));
        }
        if !SEGMENT_SIZES.contains(&self.segment) {
            let (low, high) = (SEGMENT_SIZES.start(), SEGMENT_SIZES.end());
            return Err(format!("segment={} is outside {low}..={high}", self.segment));
        }
        if self.chunk == 0 {
            return Err("chunk=0 is not a chunk size".into());
        }
        Ok(self)
    }

    /// The query naming this layout, without the leading `?`.
    pub fn query(self) -> String {
        format!("chunk={}&stripes={}&segment={}", self.chunk, self.stripes, self.segment)
    }

    /// Segments a receiver holds early at most.
    fn window(self) -> u64 {
        2 * self.stripes
    }
}

/// Cuts a byte stream into segments: the sender's body into the copy's segments, and each
/// stripe the receiver gets into that stripe's.
#[derive(Debug)]
pub struct Dealer {
    segment_size: u64,
    /// The segment being filled, and how much of it is.
    segment: u64,
    filled: u64,
}

/// One piece of a cut stream: the segment it belongs to, its bytes, and whether it ends that
/// segment.
pub type Piece = (u64, Bytes, bool);

impl Dealer {
    pub fn new(segment_size: u64) -> Dealer {
        Dealer { segment_size, segment: 0, filled: 0 }
    }

    /// `data` split at segment boundaries.
    pub fn deal(&mut self, mut data: Bytes) -> Vec<Piece> {
        let mut pieces = Vec::new();
        while !data.is_empty() {
            let room = usize::try_from(self.segment_size - self.filled).unwrap_or(usize::MAX);
            let piece = if data.len() > room { data.split_to(room) } else { std::mem::take(&mut data) };
            self.filled += piece.len() as u64;
            let ends = self.filled == self.segment_size;
            pieces.push((self.segment, piece, ends));
            if ends {
                self.segment += 1;
                self.filled = 0;
            }
        }
        pieces
    }

    /// Segments dealt so far (the last one possibly partial).
    pub fn segments(&self) -> u64 {
        self.segment + u64::from(self.filled > 0)
    }

    /// Bytes dealt so far.
    pub fn size(&self) -> u64 {
        self.segment * self.segment_size + self.filled
    }
}

/// Why an assembly was refused or abandoned: the status to answer and the reason.
pub type Refusal = (StatusCode, String);

/// The copies being assembled on this node, by blob id. Shared by the requests of one copy.
pub struct Assemblies {
    open: std::sync::Mutex<HashMap<BlobId, Arc<Assembly>>>,
    /// One permit per copy being assembled: a new copy waits for one.
    slots: Arc<tokio::sync::Semaphore>,
}

impl Default for Assemblies {
    fn default() -> Self {
        Assemblies::with_limit(MAX_ASSEMBLIES)
    }
}

impl Assemblies {
    /// A registry assembling at most `limit` copies at once.
    pub fn with_limit(limit: usize) -> Assemblies {
        Assemblies { open: Default::default(), slots: Arc::new(tokio::sync::Semaphore::new(limit)) }
    }

    fn find(&self, id: BlobId) -> Option<Arc<Assembly>> {
        self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&id).cloned()
    }

    /// The assembly of `id`, started (with its watchdog) by the first request of the copy
    /// once a slot is free; refused when none frees up within [`ASSEMBLY_IDLE`].
    async fn join(&self, store: &BlobStore, id: BlobId, layout: Layout) -> Result<Arc<Assembly>, Refusal> {
        if let Some(found) = self.find(id) {
            return Ok(found);
        }
        let slot = match tokio::time::timeout(ASSEMBLY_IDLE, Arc::clone(&self.slots).acquire_owned()).await {
            Ok(Ok(slot)) => slot,
            _ => {
                let why = format!("{} copies are being received; no room for another", self.len());
                return Err((StatusCode::SERVICE_UNAVAILABLE, why));
            }
        };
        let mut open = self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(found) = open.get(&id) {
            return Ok(Arc::clone(found)); // another request of the copy started it meanwhile
        }
        let assembly = Arc::new(Assembly::new(id, layout, slot));
        open.insert(id, Arc::clone(&assembly));
        tokio::spawn(watch_idle(store.clone(), Arc::clone(&assembly)));
        Ok(assembly)
    }

    /// Copies being assembled now.
    pub fn len(&self) -> usize {
        self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Abandons `assembly` when it receives nothing for [`ASSEMBLY_IDLE`].
async fn watch_idle(store: BlobStore, assembly: Arc<Assembly>) {
    let mut progress = assembly.progress.subscribe();
    let mut seen = assembly.activity.load(Ordering::Relaxed);
    loop {
        tokio::select! {
            _ = progress.wait_for(|p| p.outcome.is_some()) => return,
            () = tokio::time::sleep(ASSEMBLY_IDLE) => {}
        }
        let now = assembly.activity.load(Ordering::Relaxed);
        if now == seen {
            let why = format!("the copy received nothing for {} s", ASSEMBLY_IDLE.as_secs());
            assembly.fail(&store, (StatusCode::REQUEST_TIMEOUT, why)).await;
            return;
        }
        seen = now;
    }
}

#[derive(Clone, Default)]
struct Progress {
    /// Segments written, in order.
    written: u64,
    /// Set once: the stored copy, or why the copy was abandoned.
    outcome: Option<Result<StoredCopy, Refusal>>,
}

/// One striped copy being written.
pub struct Assembly {
    id: BlobId,
    layout: Layout,
    state: tokio::sync::Mutex<State>,
    progress: watch::Sender<Progress>,
    /// Counts every piece received, for the idle watchdog.
    activity: AtomicU64,
    /// This copy's place among those assembled at once, given back when it is dropped.
    _slot: tokio::sync::OwnedSemaphorePermit,
}

struct State {
    /// Whether the blob writer was asked for (it is made by the first request to get here).
    started: bool,
    writer: Option<BlobWriter>,
    hasher: ChunkHasher,
    /// Segments that came before their turn, by index.
    early: BTreeMap<u64, Vec<Bytes>>,
    /// The last segment written was short, so it must have been the blob's last.
    ended_short: bool,
    /// Segments and bytes, once the sender said.
    total: Option<(u64, u64)>,
}

impl Assembly {
    fn new(id: BlobId, layout: Layout, slot: tokio::sync::OwnedSemaphorePermit) -> Assembly {
        let state = State {
            started: false,
            writer: None,
            hasher: ChunkHasher::new(layout.chunk),
            early: BTreeMap::new(),
            ended_short: false,
            total: None,
        };
        Assembly {
            id,
            layout,
            state: tokio::sync::Mutex::new(state),
            progress: watch::Sender::new(Progress::default()),
            activity: AtomicU64::new(0),
            _slot: slot,
        }
    }

    /// Segments written so far, in order (kept in the progress its waiters watch).
    fn written(&self) -> u64 {
        self.progress.borrow().written
    }

    fn outcome(&self) -> Option<Result<StoredCopy, Refusal>> {
        self.progress.borrow().outcome.clone()
    }

    /// Abandons the copy (unless it already ended): nothing of it is kept.
    async fn fail(&self, store: &BlobStore, refusal: Refusal) {
        let mut first = false;
        self.progress.send_if_modified(|p| {
            first = p.outcome.is_none();
            if first {
                p.outcome = Some(Err(refusal.clone()));
            }
            first
        });
        if first {
            tracing::debug!(blob = %self.id, reason = %refusal.1, "a striped copy was abandoned");
        }
        // Dropping the writer unfinished leaves nothing visible.
        self.state.lock().await.writer = None;
        self.forget(store);
    }

    fn forget(&self, store: &BlobStore) {
        let mut open = store.assemblies.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if open.get(&self.id).is_some_and(|found| std::ptr::eq(Arc::as_ptr(found), self)) {
            open.remove(&self.id);
        }
    }

    /// The blob writer, made on first use; the refusal when the copy has already ended.
    async fn start(&self, store: &BlobStore, state: &mut State) -> Result<(), Refusal> {
        if let Some(Err(refusal)) = self.outcome() {
            return Err(refusal);
        }
        if !state.started {
            state.started = true;
            state.writer = Some(store.create_named(self.id).await.map_err(|e| match e {
                BlobError::Exists(_) => (StatusCode::CONFLICT, format!("blob {} is already here", self.id)),
                other => {
                    tracing::warn!(blob = %self.id, error = %other, "a striped copy could not start");
                    (StatusCode::INTERNAL_SERVER_ERROR, "blob store error".to_string())
                }
            })?);
        }
        Ok(())
    }

    /// Takes segment `index`, once it is within the window of early segments, and writes
    /// every segment now in order.
    async fn take(&self, store: &BlobStore, index: u64, pieces: Vec<Bytes>) -> Result<(), Refusal> {
        let window = self.layout.window();
        let mut progress = self.progress.subscribe();
        let _ = progress.wait_for(|p| p.outcome.is_some() || index < p.written + window).await;
        let result = self.take_now(store, index, pieces).await;
        if let Err(refusal) = &result {
            self.fail(store, refusal.clone()).await;
        }
        result
    }

    async fn take_now(&self, store: &BlobStore, index: u64, pieces: Vec<Bytes>) -> Result<(), Refusal> {
        let mut state = self.state.lock().await;
        self.start(store, &mut state).await?;
        let bad = |why: String| Err((StatusCode::BAD_REQUEST, why));
        if state.total.is_some_and(|(segments, _)| index >= segments) {
            return bad(format!("segment {index} is beyond the copy's end"));
        }
        if index < self.written() || state.early.contains_key(&index) {
            return bad(format!("segment {index} was sent twice"));
        }
        state.early.insert(index, pieces);
        self.write_in_order(&mut state).await?;
        self.finish_if_complete(store, &mut state).await
    }

    async fn write_in_order(&self, state: &mut State) -> Result<(), Refusal> {
        while let Some(pieces) = state.early.remove(&self.written()) {
            let len: u64 = pieces.iter().map(|p| p.len() as u64).sum();
            if state.ended_short || len > self.layout.segment {
                let why = format!("segment {} follows a short one or is too long", self.written());
                return Err((StatusCode::BAD_REQUEST, why));
            }
            let Some(writer) = state.writer.as_mut() else {
                return Err((StatusCode::BAD_REQUEST, "the copy was abandoned".into()));
            };
            for piece in pieces {
                state.hasher.update(&piece);
                writer.write(piece).await.map_err(|e| {
                    tracing::warn!(blob = %self.id, error = %e, "a striped copy could not be written");
                    (StatusCode::INTERNAL_SERVER_ERROR, "blob store error".to_string())
                })?;
            }
            state.ended_short = len < self.layout.segment;
            self.progress.send_modify(|p| p.written += 1);
        }
        Ok(())
    }

    /// Makes the blob durable once the sender said how long it is and all of it is written.
    async fn finish_if_complete(&self, store: &BlobStore, state: &mut State) -> Result<(), Refusal> {
        let Some((segments, size)) = state.total else { return Ok(()) };
        let (written, received) = (self.written(), state.hasher.len());
        if written < segments {
            return Ok(());
        }
        if !state.early.is_empty() || received != size {
            let why = format!("received {received} bytes in {written} segments where {size} were announced");
            return Err((StatusCode::BAD_REQUEST, why));
        }
        let Some(writer) = state.writer.take() else {
            return Err((StatusCode::BAD_REQUEST, "the copy was abandoned".into()));
        };
        writer.finish().await.map_err(|e| {
            tracing::warn!(blob = %self.id, error = %e, "a striped copy could not be made durable");
            (StatusCode::INTERNAL_SERVER_ERROR, "blob store error".to_string())
        })?;
        let digest = crate::digest_of_digests(&std::mem::replace(&mut state.hasher, ChunkHasher::new(1)).finish());
        let copy = StoredCopy { size: received, digest };
        self.progress.send_modify(|p| p.outcome = Some(Ok(copy)));
        self.forget(store);
        Ok(())
    }

    /// Records the copy's length and waits until it is durable or abandoned.
    async fn complete(&self, store: &BlobStore, segments: u64, size: u64) -> Result<StoredCopy, Refusal> {
        let announced = async {
            let mut state = self.state.lock().await;
            self.start(store, &mut state).await?;
            if state.total.is_some_and(|total| total != (segments, size)) {
                return Err((StatusCode::BAD_REQUEST, "the copy's length was announced twice".to_string()));
            }
            if self.written() > segments || state.early.range(segments..).next().is_some() {
                return Err((StatusCode::BAD_REQUEST, format!("more than {segments} segments were sent")));
            }
            state.total = Some((segments, size));
            self.finish_if_complete(store, &mut state).await
        };
        if let Err(refusal) = announced.await {
            self.fail(store, refusal).await;
        }
        let mut progress = self.progress.subscribe();
        let outcome = match progress.wait_for(|p| p.outcome.is_some()).await {
            Ok(progress) => progress.outcome.clone(),
            Err(_) => None,
        };
        outcome.unwrap_or_else(|| Err((StatusCode::INTERNAL_SERVER_ERROR, "the copy's assembly vanished".into())))
    }
}

/// Receives stripe `stripe` of a striped copy: cuts `body` into its segments and hands each
/// to the assembly. `Ok` once the whole stripe was taken in.
pub async fn receive_stripe<B>(
    store: &BlobStore,
    id: BlobId,
    layout: Layout,
    stripe: u64,
    mut body: B,
) -> Result<(), Refusal>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin,
    B::Error: std::fmt::Display,
{
    use http_body_util::BodyExt;
    let assembly = joined(store, id, layout).await?;
    if stripe >= layout.stripes {
        let refusal = (StatusCode::BAD_REQUEST, format!("stripe={stripe} is not below stripes={}", layout.stripes));
        assembly.fail(store, refusal.clone()).await;
        return Err(refusal);
    }
    // This stripe's `n`-th segment is the copy's segment `stripe + stripes × n`.
    let index = |n: u64| stripe + layout.stripes * n;
    let (mut dealer, mut segment) = (Dealer::new(layout.segment), Vec::new());
    while let Some(frame) = body.frame().await {
        let data = match frame.map(http_body::Frame::into_data) {
            Ok(Ok(data)) => data,
            Ok(Err(_)) => continue, // trailers
            Err(e) => {
                let refusal = (StatusCode::BAD_REQUEST, format!("stripe {stripe} of the copy broke off: {e}"));
                assembly.fail(store, refusal.clone()).await;
                return Err(refusal);
            }
        };
        assembly.activity.fetch_add(1, Ordering::Relaxed);
        for (n, piece, ends) in dealer.deal(data) {
            segment.push(piece);
            if ends {
                assembly.take(store, index(n), std::mem::take(&mut segment)).await?;
            }
        }
    }
    if !segment.is_empty() {
        // The last segment, short: the one being filled.
        assembly.take(store, index(dealer.segments() - 1), segment).await?;
    }
    Ok(())
}

/// Completes a striped copy of `segments` segments and `size` bytes: the stored copy once it
/// is durable.
pub async fn complete_stripes(
    store: &BlobStore,
    id: BlobId,
    layout: Layout,
    segments: u64,
    size: u64,
) -> Result<StoredCopy, Refusal> {
    let assembly = joined(store, id, layout).await?;
    let fits = segments > 0 && size > (segments - 1) * layout.segment && size <= segments * layout.segment;
    if !fits {
        let why = format!("{size} bytes do not make {segments} segments of {}", layout.segment);
        assembly.fail(store, (StatusCode::BAD_REQUEST, why.clone())).await;
        return Err((StatusCode::BAD_REQUEST, why));
    }
    assembly.complete(store, segments, size).await
}

/// The assembly of `id`, refusing (and abandoning it) when `layout` differs from its own.
async fn joined(store: &BlobStore, id: BlobId, layout: Layout) -> Result<Arc<Assembly>, Refusal> {
    let assembly = store.assemblies.join(store, id, layout).await?;
    if assembly.layout != layout {
        let refusal = (StatusCode::BAD_REQUEST, "the copy's requests disagree on its layout".to_string());
        assembly.fail(store, refusal.clone()).await;
        return Err(refusal);
    }
    Ok(assembly)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout { chunk: 8, stripes: 3, segment: 64 << 10 }
    }

    #[test]
    fn a_dealer_cuts_at_segment_boundaries() {
        let segment = 64 << 10;
        let mut dealer = Dealer::new(segment as u64);
        let cut = |pieces: Vec<Piece>| pieces.into_iter().map(|(n, p, ends)| (n, p.len(), ends)).collect::<Vec<_>>();
        let first = dealer.deal(Bytes::from(vec![1u8; segment + 10]));
        assert_eq!(cut(first), vec![(0, segment, true), (1, 10, false)]);
        let next = dealer.deal(Bytes::from(vec![2u8; 3 * segment]));
        assert_eq!(cut(next), vec![(1, segment - 10, true), (2, segment, true), (3, segment, true), (4, 10, false)]);
        assert_eq!((dealer.segments(), dealer.size()), (5, 4 * segment as u64 + 10));
        let mut exact = Dealer::new(segment as u64);
        exact.deal(Bytes::from(vec![0u8; 2 * segment]));
        assert_eq!((exact.segments(), exact.size()), (2, 2 * segment as u64));
    }

    #[tokio::test(start_paused = true)]
    async fn a_copy_that_stops_arriving_is_abandoned_after_the_idle_time() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = BlobStore::open(dir.path()).expect("blob store");
        let (id, layout) = (BlobId::random(), layout());
        let segment = Bytes::from(vec![7u8; layout.segment as usize]);
        let body = http_body_util::Full::new(segment);
        receive_stripe(&store, id, layout, 0, body).await.expect("stripe 0 taken in");
        assert_eq!(store.assemblies_open(), 1);
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).expect("tmp").count(), 1, "being written");

        // Stripes 1 and 2 and the completion never come.
        tokio::time::sleep(ASSEMBLY_IDLE + Duration::from_secs(1)).await;
        assert_eq!(store.assemblies_open(), 0);
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).expect("tmp").count(), 0, "nothing kept");
        assert!(matches!(store.size(id).await, Err(BlobError::NotFound(_))));
        // A late completion starts over and finds nothing: its length does not match.
        let late = complete_stripes(&store, id, layout, 1, 10);
        let refused = tokio::time::timeout(ASSEMBLY_IDLE * 2, late).await.expect("answered");
        assert_eq!(refused.map_err(|(status, _)| status), Err(StatusCode::REQUEST_TIMEOUT));
    }

    #[tokio::test(start_paused = true)]
    async fn a_copy_beyond_the_limit_waits_for_a_slot_and_is_refused_when_none_frees() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut store = BlobStore::open(dir.path()).expect("blob store");
        store.assemblies = Arc::new(Assemblies::with_limit(1));
        let layout = Layout { chunk: 8, stripes: 2, segment: 64 << 10 };
        let segment = || http_body_util::Full::new(Bytes::from(vec![1u8; 64 << 10]));
        let (first, second) = (BlobId::random(), BlobId::random());
        receive_stripe(&store, first, layout, 0, segment()).await.expect("the first copy has the slot");

        // The second and third copies wait, in that order, while the first holds the only slot.
        let start = |id: BlobId| {
            let store = store.clone();
            tokio::spawn(async move { receive_stripe(&store, id, layout, 0, segment()).await })
        };
        let waiting = start(second);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let third = start(BlobId::random());
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(!waiting.is_finished() && !third.is_finished(), "no slot yet");
        // The first copy completes and gives its slot back: the second goes on.
        receive_stripe(&store, first, layout, 1, segment()).await.expect("stripe 1");
        let done = complete_stripes(&store, first, layout, 2, 128 << 10).await.expect("complete");
        assert_eq!(done.size, 128 << 10);
        waiting.await.expect("joined").expect("the second copy got the freed slot");
        assert_eq!(store.assemblies_open(), 1);
        // The second holds the slot past the third's wait (30 s from t = 1 s; the second is
        // abandoned as idle only at t = 35 s): the third is refused.
        let refused = third.await.expect("joined");
        assert_eq!(refused.map_err(|(status, _)| status), Err(StatusCode::SERVICE_UNAVAILABLE));
        assert_eq!(store.assemblies_open(), 1, "the second copy is still there");
    }

    #[test]
    fn layouts_out_of_bounds_are_refused() {
        assert!(layout().check().is_ok());
        assert!(Layout::sending(8 << 20).check().is_ok());
        assert!(Layout { stripes: 1, ..layout() }.check().is_err());
        assert!(Layout { stripes: MAX_STRIPES + 1, ..layout() }.check().is_err());
        assert!(Layout { segment: 1000, ..layout() }.check().is_err());
        assert!(Layout { segment: 2 << 20, ..layout() }.check().is_err());
        assert!(Layout { chunk: 0, ..layout() }.check().is_err());
    }
}
