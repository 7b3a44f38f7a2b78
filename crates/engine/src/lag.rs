//! Replication lag measured as time, on this node's clock only (so clock skew between nodes
//! does not enter it): every [`PROBE_INTERVAL`] the engine asks the metadata replicas which
//! revision is the newest any of them has applied and which one the replica serving this
//! node's local reads has applied. If the local one is behind, the engine notes the instant and
//! asks the local replica again every [`POLL_INTERVAL`] until it has caught up to that revision;
//! the lag is the time between the two answers. While it waits, the lag reported is the time
//! waited so far, so a replica that stops applying shows a lag that keeps growing.
//! `docs/regions.md` describes what the figure means and its error.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::{Engine, Revision};

/// How often the lag is measured.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How often a lagging replica is asked again while the engine waits for it.
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// The longest one measurement waits; a replica still behind then reports this lag and the next
/// measurement starts over.
pub const MAX_WAIT: Duration = Duration::from_secs(120);

/// Revisions applied by the metadata replicas (see [`crate::ReadViews::applied_revisions`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppliedRevisions {
    /// The newest revision any replica has applied: every write committed so far.
    pub newest: Revision,
    /// The revision the replica serving this node's local reads has applied.
    pub local: Revision,
}

/// The last measurement, and the one in progress.
#[derive(Default)]
pub(crate) struct LagState {
    inner: Mutex<LagInner>,
}

#[derive(Default)]
struct LagInner {
    last: Option<Duration>,
    /// Since when the local replica is known to be behind (a measurement in progress).
    behind_since: Option<Instant>,
}

impl LagState {
    fn lock(&self) -> std::sync::MutexGuard<'_, LagInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn current(&self) -> Option<Duration> {
        let inner = self.lock();
        match inner.behind_since {
            Some(since) => Some(inner.last.unwrap_or_default().max(since.elapsed())),
            None => inner.last,
        }
    }
}

impl Engine {
    /// This node's measured replication lag: how long after a revision was known committed this
    /// node's local metadata view had applied it (or, while it has not yet, how long it has been
    /// behind). `None` on a single node (nothing replicates) or before the first measurement.
    pub fn view_lag(&self) -> Option<Duration> {
        self.replicas()?;
        self.inner.lag.current()
    }

    /// Measures the lag every [`PROBE_INTERVAL`] while the process runs (replicated stores only).
    pub(crate) fn spawn_lag_probe(&self) {
        if self.replicas().is_none() {
            return;
        }
        let engine = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(PROBE_INTERVAL).await;
                engine.measure_lag().await;
            }
        });
    }

    async fn measure_lag(&self) {
        let Some(views) = self.replicas() else { return };
        let metrics = &self.inner.metrics;
        let applied = match views.applied_revisions().await {
            Ok(applied) => applied,
            Err(err) => {
                metrics.replication_probe_errors.inc();
                tracing::debug!(error = %err, "could not measure the replication lag");
                return;
            }
        };
        let known = Instant::now();
        let lag = if applied.local >= applied.newest {
            Duration::ZERO
        } else {
            self.inner.lag.lock().behind_since = Some(known);
            self.wait_for_local(applied.newest, known).await
        };
        {
            let mut state = self.inner.lag.lock();
            state.last = Some(lag);
            state.behind_since = None;
        }
        metrics.replication_lag.set(lag.as_secs_f64());
        metrics.replication_lag_measured.observe(lag.as_secs_f64());
    }

    /// Polls the local replica until it has applied `revision`; the time since `known`.
    async fn wait_for_local(&self, revision: Revision, known: Instant) -> Duration {
        let Some(views) = self.replicas() else { return Duration::ZERO };
        let metrics = &self.inner.metrics;
        while known.elapsed() < MAX_WAIT {
            tokio::time::sleep(POLL_INTERVAL).await;
            match views.local_applied_revision().await {
                Ok(local) if local >= revision => break,
                Ok(_) => {}
                Err(_) => {
                    metrics.replication_probe_errors.inc();
                }
            }
            metrics.replication_lag.set(known.elapsed().as_secs_f64());
        }
        known.elapsed()
    }
}
