//! A timer with the kernel's resolution for the delay line. tokio's timer wheel has 1 ms ticks
//! and fires on the first tick after a deadline, which made every one-way delay ~1.3 ms longer
//! than configured (a 40 ms round trip measured 42.6 ms). A `timerfd` registered with tokio's
//! reactor wakes within tens of microseconds of its deadline.

use std::io;
use std::os::fd::OwnedFd;

use rustix::time::Timespec;
use rustix::time::{Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, timerfd_create, timerfd_settime};
use tokio::io::unix::AsyncFd;
use tokio::time::Instant;

/// One timer, reused for every chunk of one direction of one connection.
pub(crate) struct PreciseTimer {
    fd: Option<AsyncFd<OwnedFd>>,
}

impl PreciseTimer {
    /// Falls back to tokio's timer when no timerfd can be made (no such syscall).
    pub(crate) fn new() -> PreciseTimer {
        // `AsyncFd::new` is deprecated for types that could close the fd while registered; an
        // `OwnedFd` moved into it cannot (and its replacement, `register`, is unsafe).
        #[allow(deprecated)]
        let fd = timerfd_create(TimerfdClockId::Monotonic, TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC)
            .map_err(io::Error::from)
            .and_then(AsyncFd::new);
        if let Err(err) = &fd {
            tracing::debug!("wan proxy: no timerfd ({err}); delays use tokio's 1 ms timer");
        }
        PreciseTimer { fd: fd.ok() }
    }

    /// Returns at `due` (at once when it has passed).
    pub(crate) async fn sleep_until(&self, due: Instant) {
        let left = due.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        let Some(fd) = &self.fd else { return tokio::time::sleep_until(due).await };
        let spec = Itimerspec {
            it_interval: Timespec { tv_sec: 0, tv_nsec: 0 },
            it_value: Timespec { tv_sec: left.as_secs() as _, tv_nsec: left.subsec_nanos().into() },
        };
        if timerfd_settime(fd.get_ref(), TimerfdTimerFlags::empty(), &spec).is_err() {
            return tokio::time::sleep_until(due).await;
        }
        loop {
            let Ok(mut ready) = fd.readable().await else { return tokio::time::sleep_until(due).await };
            let mut expirations = [0u8; 8];
            match rustix::io::read(fd.get_ref(), &mut expirations) {
                Ok(_) => return,
                Err(rustix::io::Errno::AGAIN) => ready.clear_ready(),
                Err(_) => return tokio::time::sleep_until(due).await,
            }
        }
    }
}
