//! Per-connection bookkeeping: when a connection last moved bytes (idle detection) and how many
//! connections each client address holds.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// When a connection last moved bytes.
#[derive(Clone)]
pub(crate) struct Activity {
    start: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    pub(crate) fn new() -> Self {
        Activity { start: Instant::now(), last_ms: Arc::new(AtomicU64::new(0)) }
    }

    fn touch(&self) {
        self.last_ms.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Resolves once nothing has moved for `limit`.
    pub(crate) async fn idle_for(&self, limit: Duration) {
        loop {
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let idle = self.start.elapsed().saturating_sub(last);
            if idle >= limit {
                return;
            }
            tokio::time::sleep(limit - idle).await;
        }
    }
}

/// How long and how much a lingering close reads and discards before it gives up.
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: u64 = 64 << 20;

/// Set when a response went out before its request body was read and the connection must
/// close: the close then half-closes (FIN after the response) and reads and discards what the
/// client still sends until it closes too, for at most [`LINGER_TIME`] and [`LINGER_BYTES`].
/// Closing a socket with unread bytes makes the kernel send a reset, which can reach the
/// client before it has read the response.
#[derive(Clone, Default)]
pub(crate) struct Linger(Arc<AtomicBool>);

impl Linger {
    pub(crate) fn want(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn wanted(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A lingering close under way.
struct Lingering {
    deadline: Pin<Box<tokio::time::Sleep>>,
    left: u64,
}

/// A stream that records activity and closes lingering when asked to ([`Linger`]).
pub(crate) struct Tracked<S> {
    inner: S,
    activity: Activity,
    linger: Linger,
    lingering: Option<Lingering>,
}

impl<S> Tracked<S> {
    pub(crate) fn new(inner: S, activity: Activity, linger: Linger) -> Tracked<S> {
        Tracked { inner, activity, linger, lingering: None }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Tracked<S> {
    /// Reads and discards until the client closes, or the time or byte bound is reached.
    fn poll_discard(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut scratch = [0u8; 8 << 10];
        loop {
            let Some(lingering) = self.lingering.as_mut() else { return Poll::Ready(()) };
            if lingering.left == 0 || lingering.deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(());
            }
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.inner).poll_read(cx, &mut buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(()),
                Poll::Ready(Ok(())) => {
                    lingering.left = lingering.left.saturating_sub(buf.filled().len() as u64);
                    self.activity.touch();
                }
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        poll
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.linger.wanted() {
            return Pin::new(&mut self.inner).poll_shutdown(cx);
        }
        if self.lingering.is_none() {
            std::task::ready!(Pin::new(&mut self.inner).poll_shutdown(cx))?;
            let deadline = Box::pin(tokio::time::sleep(LINGER_TIME));
            self.lingering = Some(Lingering { deadline, left: LINGER_BYTES });
        }
        self.poll_discard(cx).map(Ok)
    }
}

/// How many connections each client address holds.
#[derive(Clone, Default)]
pub(crate) struct PerAddress {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl PerAddress {
    /// One more connection from `ip`, unless it already holds `limit`.
    pub(crate) fn try_acquire(&self, ip: IpAddr, limit: usize) -> Option<AddressSlot> {
        let mut counts = self.counts.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = counts.entry(ip).or_insert(0);
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(AddressSlot { owner: self.clone(), ip })
    }
}

/// A connection's place in its address's count; given back when dropped.
pub(crate) struct AddressSlot {
    owner: PerAddress,
    ip: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut counts = self.owner.counts.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_counted_apart_and_slots_come_back() {
        let per = PerAddress::default();
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        let first = per.try_acquire(a, 2);
        let second = per.try_acquire(a, 2);
        assert!(first.is_some() && second.is_some());
        assert!(per.try_acquire(a, 2).is_none());
        assert!(per.try_acquire(b, 2).is_some());
        drop(first);
        assert!(per.try_acquire(a, 2).is_some());
    }
}
