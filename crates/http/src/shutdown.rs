//! The one way a Meridian process learns it should stop gracefully.

use std::future::Future;

use tokio::signal::unix::{SignalKind, signal};

/// Registers SIGINT and SIGTERM handlers *now* and returns a future that completes on the first
/// of them. Registering before a process announces itself matters: a signal sent right after the
/// "listening" line would otherwise find no handler and kill the process uncleanly.
///
/// Must be called inside a Tokio runtime. If the handlers cannot be registered the future never
/// completes (the process then runs until killed) and the reason is logged.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    let handlers = (signal(SignalKind::interrupt()), signal(SignalKind::terminate()));
    async move {
        match handlers {
            (Ok(mut interrupt), Ok(mut terminate)) => {
                tokio::select! {
                    _ = interrupt.recv() => {}
                    _ = terminate.recv() => {}
                }
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "cannot install signal handlers; stop this process with SIGKILL");
                std::future::pending::<()>().await;
            }
        }
    }
}
