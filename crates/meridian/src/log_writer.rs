//! Where the node's log lines go: a buffer that one thread writes to stderr every
//! [`FLUSH_EVERY`].
//!
//! The access log writes a line per request. A writer thread woken for every line (as
//! `tracing-appender`'s channel does) costs a futex wake, a context switch and a `write` per
//! line: 15% of the CPU of a node serving small objects. Here request threads only append to a
//! shared buffer under a mutex, and the writer wakes on its own clock, so under load one
//! `write` carries hundreds of lines. Nothing is dropped: a thread that finds the buffer full
//! waits for the writer. Lines appear at most `FLUSH_EVERY` late.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// How late a line may appear.
pub const FLUSH_EVERY: Duration = Duration::from_millis(25);
/// Bytes buffered before writers wait for the writer thread.
const FULL: usize = 4 << 20;

#[derive(Default)]
struct State {
    pending: Vec<u8>,
    closing: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// Signalled when the buffer is full or the writer is asked to stop.
    wake_writer: Condvar,
    /// Signalled when the writer has taken the buffer.
    drained: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves bytes in the buffer, nothing inconsistent.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The `MakeWriter` handed to `tracing_subscriber` (and, cloned, the access log's sink).
#[derive(Clone)]
pub struct BatchedStderr {
    shared: Arc<Shared>,
}

/// Writes what is buffered and stops the writer thread when dropped.
pub struct FlushGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Starts the writer thread.
pub fn stderr() -> std::io::Result<(BatchedStderr, FlushGuard)> {
    let shared = Arc::new(Shared::default());
    let writer = Arc::clone(&shared);
    let thread = std::thread::Builder::new().name("log-writer".into()).spawn(move || run(&writer))?;
    Ok((BatchedStderr { shared: Arc::clone(&shared) }, FlushGuard { shared, thread: Some(thread) }))
}

fn run(shared: &Shared) {
    let mut out = std::io::stderr();
    let mut spare = Vec::new();
    loop {
        let closing = {
            let mut state = shared.lock();
            if state.pending.len() < FULL && !state.closing {
                state = shared.wake_writer.wait_timeout(state, FLUSH_EVERY).map_or_else(|e| e.into_inner().0, |r| r.0);
            }
            std::mem::swap(&mut state.pending, &mut spare);
            shared.drained.notify_all();
            state.closing
        };
        if !spare.is_empty() {
            // Nowhere to report a failing stderr; the lines are lost, the node goes on.
            let _ = out.write_all(&spare).and_then(|()| out.flush());
            spare.clear();
        }
        if closing {
            return;
        }
    }
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.wake_writer.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Write for &BatchedStderr {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let mut state = self.shared.lock();
        while state.pending.len() >= FULL && !state.closing {
            self.shared.wake_writer.notify_all();
            state = self.shared.drained.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        state.pending.extend_from_slice(line);
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BatchedStderr {
    type Writer = &'a BatchedStderr;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}
