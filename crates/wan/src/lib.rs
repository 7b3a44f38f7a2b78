//! A WAN on one machine: a small TCP proxy that puts a configurable link
//! between a client and an upstream on loopback.
//!
//! * **Delay** per direction, applied as a delay line: every chunk read is
//!   stamped with the time it is due and released then, so a 40 ms link
//!   still carries a full window of data in flight (throughput is not
//!   divided by the delay).
//! * **Jitter**: each chunk's delay is drawn from `delay ± jitter`, never
//!   reordering the byte stream (a chunk is never due before the previous one).
//! * **Bandwidth** per direction, shared by all connections of the link
//!   (paced: each chunk occupies the link for `len / rate`).
//! * **Random resets**: each forwarded chunk resets its connection with a
//!   given probability (TCP hides lost packets; what an application sees
//!   of a bad link is a reset).
//! * **Partitions** on command: [`PartitionMode::Blackhole`] stops
//!   forwarding (connections stall, as when every packet is lost, and resume
//!   on heal; new connections are held or refused), [`PartitionMode::Reset`]
//!   resets every connection and refuses new ones until healed.
//! * **Capture** on command ([`WanHandle::start_capture`]): a copy of the bytes forwarded each
//!   way, bounded, so a test can check what crossed the link.
//!
//! ```no_run
//! # async fn demo(upstream: std::net::SocketAddr) -> Result<(), meridian_wan::WanError> {
//! use meridian_wan::{LinkConfig, WanProxy};
//! use std::time::Duration;
//! let link = WanProxy::start("127.0.0.1:0".parse().unwrap(), upstream,
//!     LinkConfig::rtt(Duration::from_millis(40))).await?;
//! let addr = link.local_addr(); // connect here instead of `upstream`
//! link.partition();
//! link.heal();
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod timer;

use rand::{Rng, SeedableRng};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Errors starting a proxy.
#[derive(Debug, thiserror::Error)]
pub enum WanError {
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address asked for.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
}

/// One direction of a link.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Direction {
    /// One-way delay added to every byte.
    pub delay: Duration,
    /// Each chunk's delay is drawn uniformly from `delay ± jitter` (floored at 0).
    pub jitter: Duration,
    /// Bandwidth in bytes per second, shared by all connections; `None` is unlimited.
    pub bandwidth: Option<u64>,
}

/// The link between the client side and the upstream side.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LinkConfig {
    /// Client to upstream.
    pub forward: Direction,
    /// Upstream to client.
    pub backward: Direction,
    /// Probability, per forwarded chunk, that the connection is reset.
    pub reset_probability: f64,
}

impl LinkConfig {
    /// A perfect link: no delay, no limit.
    pub fn none() -> Self {
        Self::default()
    }

    /// The same one-way delay both ways.
    pub fn one_way(delay: Duration) -> Self {
        let d = Direction { delay, ..Direction::default() };
        Self { forward: d, backward: d, reset_probability: 0.0 }
    }

    /// A round-trip time, split evenly between the two directions.
    pub fn rtt(rtt: Duration) -> Self {
        Self::one_way(rtt / 2)
    }

    /// Adds the same jitter both ways.
    pub fn with_jitter(mut self, jitter: Duration) -> Self {
        self.forward.jitter = jitter;
        self.backward.jitter = jitter;
        self
    }

    /// Limits both directions to `bytes_per_sec` each.
    pub fn with_bandwidth(mut self, bytes_per_sec: u64) -> Self {
        self.forward.bandwidth = Some(bytes_per_sec);
        self.backward.bandwidth = Some(bytes_per_sec);
        self
    }

    /// Resets connections at random: `p` per forwarded chunk.
    pub fn with_reset_probability(mut self, p: f64) -> Self {
        self.reset_probability = p;
        self
    }
}

/// How a partition behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionMode {
    /// Nothing passes; open connections stall and resume on heal (TCP
    /// retransmits after a real partition). New connections are held until
    /// heal, or reset at once with `refuse_new`.
    Blackhole {
        /// Reset new connections instead of holding them.
        refuse_new: bool,
    },
    /// Every open connection is reset now, and new ones while partitioned.
    Reset,
}

/// Counters of a proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WanStats {
    /// Connections accepted.
    pub connections: u64,
    /// Bytes delivered to the upstream.
    pub forward_bytes: u64,
    /// Bytes delivered to clients.
    pub backward_bytes: u64,
    /// Connections reset (random drops, partitions, errors).
    pub resets: u64,
}

/// The bytes a link forwarded since [`WanHandle::start_capture`], per direction, in the order
/// they were forwarded. Chunks (up to 64 KiB) of concurrent connections interleave, so one
/// connection's bytes are contiguous only within a chunk.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Captured {
    /// Client to upstream.
    pub forward: Vec<u8>,
    /// Upstream to client.
    pub backward: Vec<u8>,
}

/// A running capture: what is kept of each direction, at most `limit` bytes each.
#[derive(Debug)]
struct Capture {
    limit: usize,
    kept: [Vec<u8>; 2],
}

/// Locks `m`; a panic while it was held left nothing half-updated here, so poisoning is ignored.
fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How much idle link time pacing may catch up on (tokio's timers have 1 ms granularity).
const PACING_SLACK: Duration = Duration::from_millis(5);

/// Pacing state of one direction's bandwidth limit.
#[derive(Debug)]
struct Pacer {
    /// When the link is next free.
    next_free: Option<Instant>,
}

struct Inner {
    upstream: SocketAddr,
    config: RwLock<LinkConfig>,
    partition: watch::Sender<Option<PartitionMode>>,
    root: CancellationToken,
    epoch: Mutex<CancellationToken>,
    pacers: [Mutex<Pacer>; 2],
    connections: AtomicU64,
    bytes: [AtomicU64; 2],
    resets: AtomicU64,
    capture: Mutex<Option<Capture>>,
}

impl Inner {
    /// Keeps a copy of `data`, forwarded in direction `dir`, when a capture runs and has room.
    fn capture(&self, dir: usize, data: &[u8]) {
        let mut capture = locked(&self.capture);
        if let Some(c) = capture.as_mut() {
            let room = c.limit.saturating_sub(c.kept[dir].len());
            c.kept[dir].extend_from_slice(&data[..data.len().min(room)]);
        }
    }

    fn direction(&self, dir: usize) -> (Direction, f64) {
        let c = self.config.read().map(|c| *c).unwrap_or_default();
        (if dir == 0 { c.forward } else { c.backward }, c.reset_probability)
    }

    fn conn_token(&self) -> CancellationToken {
        locked(&self.epoch).child_token()
    }

    fn reset_all(&self) {
        let mut e = locked(&self.epoch);
        e.cancel();
        *e = self.root.child_token();
    }

    /// Reserves the link for `n` bytes; returns when they may go. A link left idle for less than
    /// [`PACING_SLACK`] (a timer that woke late, a reader that was busy) has not lost that time:
    /// the next bytes may use it, so the long-run rate is the configured one.
    fn pace(&self, dir: usize, n: usize, rate: Option<u64>) -> Option<Instant> {
        let rate = rate.filter(|r| *r > 0)?;
        let now = Instant::now();
        let mut p = locked(&self.pacers[dir]);
        let earliest = now.checked_sub(PACING_SLACK).unwrap_or(now);
        let start = p.next_free.map_or(now, |t| t.max(earliest));
        p.next_free = Some(start + Duration::from_secs_f64(n as f64 / rate as f64));
        Some(start)
    }
}

/// A running proxy. Dropping it stops the listener and resets every
/// connection through it.
pub struct WanHandle {
    addr: SocketAddr,
    inner: Arc<Inner>,
}

impl std::fmt::Debug for WanHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WanHandle").field("addr", &self.addr).field("upstream", &self.inner.upstream).finish()
    }
}

/// The proxy.
pub struct WanProxy;

impl WanProxy {
    /// Listens on `listen` (use port 0 for a free one) and forwards every
    /// connection to `upstream` through a link configured by `config`.
    pub async fn start(listen: SocketAddr, upstream: SocketAddr, config: LinkConfig) -> Result<WanHandle, WanError> {
        let listener = TcpListener::bind(listen).await.map_err(|source| WanError::Bind { addr: listen, source })?;
        let addr = listener.local_addr().map_err(|source| WanError::Bind { addr: listen, source })?;
        let root = CancellationToken::new();
        let inner = Arc::new(Inner {
            upstream,
            config: RwLock::new(config),
            partition: watch::Sender::new(None),
            epoch: Mutex::new(root.child_token()),
            root,
            pacers: [Mutex::new(Pacer { next_free: None }), Mutex::new(Pacer { next_free: None })],
            connections: AtomicU64::new(0),
            bytes: [AtomicU64::new(0), AtomicU64::new(0)],
            resets: AtomicU64::new(0),
            capture: Mutex::new(None),
        });
        tokio::spawn(accept_loop(listener, inner.clone()));
        Ok(WanHandle { addr, inner })
    }
}

impl WanHandle {
    /// Where clients connect.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The upstream every connection goes to.
    pub fn upstream(&self) -> SocketAddr {
        self.inner.upstream
    }

    /// Changes the link; applies to data read from now on.
    pub fn set_config(&self, config: LinkConfig) {
        match self.inner.config.write() {
            Ok(mut c) => *c = config,
            Err(p) => *p.into_inner() = config,
        }
    }

    /// The current link.
    pub fn config(&self) -> LinkConfig {
        self.inner.config.read().map(|c| *c).unwrap_or_default()
    }

    /// Partitions the link as a blackhole: nothing passes until [`heal`](Self::heal);
    /// open connections stall, new ones are held.
    pub fn partition(&self) {
        self.partition_with(PartitionMode::Blackhole { refuse_new: false });
    }

    /// Partitions the link in the given mode.
    pub fn partition_with(&self, mode: PartitionMode) {
        self.inner.partition.send_replace(Some(mode));
        if mode == PartitionMode::Reset {
            self.inner.reset_all();
        }
    }

    /// Ends a partition: stalled connections resume.
    pub fn heal(&self) {
        self.inner.partition.send_replace(None);
    }

    /// Whether the link is partitioned now.
    pub fn is_partitioned(&self) -> bool {
        self.inner.partition.borrow().is_some()
    }

    /// Resets every open connection (new ones are accepted as usual).
    pub fn reset_connections(&self) {
        self.inner.reset_all();
    }

    /// Starts keeping a copy of the bytes forwarded from now on, the first `max_bytes` of each
    /// direction (later ones are forwarded, not kept); an earlier capture is discarded.
    pub fn start_capture(&self, max_bytes: usize) {
        let capture = Capture { limit: max_bytes, kept: [Vec::new(), Vec::new()] };
        *locked(&self.inner.capture) = Some(capture);
    }

    /// A copy of what the capture kept so far (empty when none was started).
    pub fn captured(&self) -> Captured {
        let capture = locked(&self.inner.capture);
        match capture.as_ref() {
            Some(c) => Captured { forward: c.kept[0].clone(), backward: c.kept[1].clone() },
            None => Captured::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> WanStats {
        WanStats {
            connections: self.inner.connections.load(Ordering::Relaxed),
            forward_bytes: self.inner.bytes[0].load(Ordering::Relaxed),
            backward_bytes: self.inner.bytes[1].load(Ordering::Relaxed),
            resets: self.inner.resets.load(Ordering::Relaxed),
        }
    }
}

impl Drop for WanHandle {
    fn drop(&mut self) {
        self.inner.root.cancel();
    }
}

fn reset_stream(s: &TcpStream) {
    // SO_LINGER 0: closing sends RST instead of FIN.
    #[allow(deprecated)]
    let _ = s.set_linger(Some(Duration::ZERO));
}

async fn accept_loop(listener: TcpListener, inner: Arc<Inner>) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = inner.root.cancelled() => return,
        };
        let Ok((client, _)) = accepted else {
            // Out of descriptors and the like: back off briefly.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        inner.connections.fetch_add(1, Ordering::Relaxed);
        let mode = *inner.partition.borrow();
        match mode {
            Some(PartitionMode::Reset) | Some(PartitionMode::Blackhole { refuse_new: true }) => {
                inner.resets.fetch_add(1, Ordering::Relaxed);
                reset_stream(&client);
                drop(client);
            }
            _ => {
                tokio::spawn(connection(client, inner.clone()));
            }
        }
    }
}

async fn wait_unpartitioned(rx: &mut watch::Receiver<Option<PartitionMode>>) {
    // An error means the sender is gone, i.e. the proxy is shutting down;
    // the cancellation token ends the task then.
    if rx.wait_for(Option::is_none).await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn connection(client: TcpStream, inner: Arc<Inner>) {
    let token = inner.conn_token();
    // Held while partitioned (blackhole): the connection only goes upstream on heal.
    let mut part = inner.partition.subscribe();
    tokio::select! {
        _ = wait_unpartitioned(&mut part) => {}
        _ = token.cancelled() => {
            reset_stream(&client);
            return;
        }
    }
    let upstream = tokio::select! {
        u = TcpStream::connect(inner.upstream) => u,
        _ = token.cancelled() => {
            reset_stream(&client);
            return;
        }
    };
    let upstream = match upstream {
        Ok(u) => u,
        Err(e) => {
            tracing::debug!(upstream = %inner.upstream, "wan proxy: upstream connect failed: {e}");
            inner.resets.fetch_add(1, Ordering::Relaxed);
            reset_stream(&client);
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (ur, uw) = upstream.into_split();
    let mut tasks = tokio::task::JoinSet::new();
    for (dir, rd, wr) in [(0usize, cr, uw), (1usize, ur, cw)] {
        let (tx, rx) = mpsc::channel::<Chunk>(CHANNEL_CHUNKS);
        tasks.spawn(reader(dir, rd, tx, inner.clone(), token.clone()));
        tasks.spawn(writer(dir, wr, rx, inner.clone(), token.clone()));
    }
    while tasks.join_next().await.is_some() {}
    if token.is_cancelled() && !inner.root.is_cancelled() {
        inner.resets.fetch_add(1, Ordering::Relaxed);
    }
}

/// Largest chunk read at once.
const CHUNK: usize = 64 * 1024;
/// Chunks in flight per direction per connection (64 × 64 KiB = 4 MiB window).
const CHANNEL_CHUNKS: usize = 64;

enum Chunk {
    Data(Vec<u8>, Instant),
    Eof(Instant),
}

async fn reader(
    dir: usize,
    mut rd: OwnedReadHalf,
    tx: mpsc::Sender<Chunk>,
    inner: Arc<Inner>,
    token: CancellationToken,
) {
    let mut part = inner.partition.subscribe();
    let mut last_due: Option<Instant> = None;
    let mut rng = rand::rngs::SmallRng::from_rng(&mut rand::rng());
    loop {
        tokio::select! {
            _ = wait_unpartitioned(&mut part) => {}
            _ = token.cancelled() => break,
        }
        let (d, _) = inner.direction(dir);
        // Keep chunks small enough that pacing is smooth (≈10 ms of link time).
        let max = match d.bandwidth {
            Some(r) if r > 0 => ((r / 100) as usize).clamp(1024, CHUNK),
            _ => CHUNK,
        };
        let mut buf = vec![0u8; max];
        let n = tokio::select! {
            r = rd.read(&mut buf) => r,
            _ = token.cancelled() => break,
        };
        let n = match n {
            Ok(n) => n,
            Err(_) => {
                token.cancel();
                break;
            }
        };
        // Pace on the shared link, then stamp the time the bytes arrive.
        let (d, _) = inner.direction(dir);
        if n > 0
            && let Some(at) = inner.pace(dir, n, d.bandwidth)
        {
            tokio::select! {
                _ = tokio::time::sleep_until(at) => {}
                _ = token.cancelled() => break,
            }
        }
        let mut delay = d.delay;
        if !d.jitter.is_zero() {
            let lo = d.delay.saturating_sub(d.jitter);
            let hi = d.delay + d.jitter;
            delay = rng.random_range(lo..=hi);
        }
        let mut due = Instant::now() + delay;
        if let Some(l) = last_due {
            due = due.max(l);
        }
        last_due = Some(due);
        let chunk = if n == 0 {
            Chunk::Eof(due)
        } else {
            buf.truncate(n);
            Chunk::Data(buf, due)
        };
        let sent = tokio::select! {
            r = tx.send(chunk) => r.is_ok(),
            _ = token.cancelled() => break,
        };
        if n == 0 || !sent {
            return;
        }
    }
    // Cancelled: make this socket's close a reset.
    reset_stream(rd.as_ref());
}

async fn writer(
    dir: usize,
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Chunk>,
    inner: Arc<Inner>,
    token: CancellationToken,
) {
    let mut part = inner.partition.subscribe();
    let mut rng = rand::rngs::SmallRng::from_rng(&mut rand::rng());
    let timer = timer::PreciseTimer::new();
    loop {
        let chunk = tokio::select! {
            c = rx.recv() => c,
            _ = token.cancelled() => break,
        };
        let Some(chunk) = chunk else { return };
        let due = match &chunk {
            Chunk::Data(_, due) | Chunk::Eof(due) => *due,
        };
        tokio::select! {
            _ = timer.sleep_until(due) => {}
            _ = token.cancelled() => break,
        }
        tokio::select! {
            _ = wait_unpartitioned(&mut part) => {}
            _ = token.cancelled() => break,
        }
        match chunk {
            Chunk::Data(data, _) => {
                let (_, p) = inner.direction(dir);
                if p > 0.0 && rng.random_bool(p.clamp(0.0, 1.0)) {
                    token.cancel();
                    break;
                }
                // Kept before it is written: whatever the far side has seen is in the capture.
                inner.capture(dir, &data);
                let r = tokio::select! {
                    r = wr.write_all(&data) => r,
                    _ = token.cancelled() => break,
                };
                if r.is_err() {
                    token.cancel();
                    break;
                }
                inner.bytes[dir].fetch_add(data.len() as u64, Ordering::Relaxed);
            }
            Chunk::Eof(_) => {
                let _ = wr.shutdown().await;
                return;
            }
        }
    }
    reset_stream(wr.as_ref());
}
