//! Replication lag measured as time, on this node's clock only (so clock skew between nodes
//! does not enter it). Every [`PROBE_INTERVAL`] the engine asks the metadata replicas, in one
//! round, which revision the leader has applied (every committed write) and which one the
//! replica serving this node's local reads has applied. A leader revision not seen before is
//! noted with the instant it was first seen; when a later round shows the local replica at or
//! past it, its lag is the time between the two rounds. While a revision waits, the lag
//! reported is its age so far, so a replica that stops applying shows a lag that keeps growing;
//! so does a node whose probes fail (the time since its last answered round).
//!
//! The figure is at most one probe interval (plus one status round trip) short of the true
//! delay: a revision is seen committed up to that long after it was. `docs/regions.md` says
//! what it means for operators.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::{Engine, Revision};

/// How often the replicas are asked.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(100);
/// The most leader revisions waiting to be applied locally that are remembered; past it, newer
/// ones are not noted (the oldest, which sets the lag, stays).
const MAX_PENDING: usize = 1024;

/// Revisions applied by the metadata replicas (see [`crate::ReadViews::applied_revisions`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppliedRevisions {
    /// The revision the leader has applied: every write committed so far.
    pub newest: Revision,
    /// The revision the replica serving this node's local reads has applied.
    pub local: Revision,
}

/// What the measurement has seen so far.
#[derive(Default)]
pub(crate) struct LagState {
    inner: Mutex<LagInner>,
}

#[derive(Default)]
struct LagInner {
    /// The lag of the last revision the local replica was seen to apply.
    last: Option<Duration>,
    /// Leader revisions not yet applied locally, oldest first, with when each was first seen.
    pending: VecDeque<(Revision, Instant)>,
    newest_seen: Revision,
    /// When a probe round last got its answers (`None`: none yet).
    last_answer: Option<Instant>,
    /// Whether the most recent round failed.
    failing: bool,
}

impl LagInner {
    /// The lag right now: the last measured one, or more if a revision has waited longer, or
    /// the replicas have not answered for longer.
    fn current(&self) -> Option<Duration> {
        let waiting = self.pending.front().map(|(_, seen)| seen.elapsed());
        let silent = self.last_answer.filter(|_| self.failing).map(|at| at.elapsed());
        [self.last, waiting, silent].into_iter().flatten().max()
    }

    /// Takes in one round's answers at `now`; the lag of the revisions it shows applied, if any.
    fn observe(&mut self, applied: AppliedRevisions, now: Instant) -> Option<Duration> {
        self.last_answer = Some(now);
        self.failing = false;
        if applied.newest > self.newest_seen {
            self.newest_seen = applied.newest;
            if self.pending.len() < MAX_PENDING {
                self.pending.push_back((applied.newest, now));
            }
        }
        let mut measured = None;
        while let Some(&(revision, seen)) = self.pending.front() {
            if revision > applied.local {
                break;
            }
            self.pending.pop_front();
            // The oldest revision applied in this round waited longest.
            measured = measured.or(Some(now.saturating_duration_since(seen)));
        }
        if measured.is_some() {
            self.last = measured;
        }
        measured
    }
}

impl LagState {
    fn lock(&self) -> std::sync::MutexGuard<'_, LagInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Engine {
    /// This node's measured replication lag: how long after a revision was seen committed this
    /// node's local metadata view applied it (or, while it has not yet, how long it has been
    /// waiting). `None` on a single node (nothing replicates) or before the first measurement.
    pub fn view_lag(&self) -> Option<Duration> {
        self.replicas()?;
        self.inner.lag.lock().current()
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
                engine.probe_lag().await;
            }
        });
    }

    async fn probe_lag(&self) {
        let Some(views) = self.replicas() else { return };
        let metrics = &self.inner.metrics;
        let answer = views.applied_revisions().await;
        let measured = {
            let mut state = self.inner.lag.lock();
            let measured = match answer {
                Ok(applied) => state.observe(applied, Instant::now()),
                Err(err) => {
                    state.failing = true;
                    metrics.replication_probe_errors.inc();
                    tracing::debug!(error = %err, "could not measure the replication lag");
                    None
                }
            };
            if let Some(lag) = state.current() {
                metrics.replication_lag.set(lag.as_secs_f64());
            }
            measured
        };
        if let Some(lag) = measured {
            metrics.replication_lag_measured.observe(lag.as_secs_f64());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(newest: Revision, local: Revision) -> AppliedRevisions {
        AppliedRevisions { newest, local }
    }

    #[test]
    fn a_revision_applied_late_measures_the_time_it_waited() {
        let mut lag = LagInner::default();
        let start = Instant::now();
        assert_eq!(lag.observe(applied(10, 10), start), Some(Duration::ZERO));
        // Revision 12 is committed; the local replica is at 11, then 12 half a second later.
        assert_eq!(lag.observe(applied(12, 11), start + Duration::from_millis(100)), None);
        assert_eq!(lag.observe(applied(13, 11), start + Duration::from_millis(200)), None);
        let caught_up = lag.observe(applied(13, 12), start + Duration::from_millis(600));
        assert_eq!(caught_up, Some(Duration::from_millis(500)));
        // 13 is still waiting, since 200 ms.
        assert_eq!(lag.pending.len(), 1);
        assert_eq!(lag.observe(applied(13, 13), start + Duration::from_millis(700)), Some(Duration::from_millis(500)));
        assert!(lag.pending.is_empty());
    }

    #[test]
    fn a_failing_probe_makes_the_lag_grow() {
        let mut lag = LagInner::default();
        let long_ago = Instant::now() - Duration::from_secs(5);
        lag.observe(applied(3, 3), long_ago);
        assert_eq!(lag.current(), Some(Duration::ZERO));
        lag.failing = true;
        assert!(lag.current().unwrap() >= Duration::from_secs(5));
    }
}
