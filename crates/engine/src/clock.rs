//! The cluster clock: every time the engine judges against (object and upload expiry, lock
//! leases, lifecycle, heartbeats) is [`crate::now_ms`], which is this machine's wall clock plus
//! an offset that brings it to the cluster's median clock, so a node whose clock is off by
//! seconds judges a TTL like every other node.
//!
//! Every [`SAMPLE_INTERVAL`], a node of a cluster measures the clock of every other healthy node
//! over the node-to-node port (`GET /_meridian/clock`, NTP style: the best of
//! [`SAMPLES_PER_NODE`] round trips, wrong by at most half a round trip). Its offset is the
//! median of 0 (its own clock) and the offsets of every node measured in the last
//! [`OFFSET_KEPT_FOR`] — a node that just died still counts, clock offsets drift slowly. With an
//! even count the middle value closer to 0 wins: without a majority, the node keeps its own
//! clock. A single node (no peers) uses its own clock.
//!
//! The offset is process-wide (one engine per node process): peers answer with their
//! uncorrected clocks, so corrections never feed back into measurements.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use crate::Engine;

/// How often the other nodes' clocks are measured.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(2);
/// Round trips per node per measurement; the shortest is kept.
pub const SAMPLES_PER_NODE: usize = 3;
/// How long a node's last measured offset counts after it stopped answering.
pub const OFFSET_KEPT_FOR: Duration = Duration::from_secs(600);

static OFFSET_MS: AtomicI64 = AtomicI64::new(0);
static MEASURED: AtomicBool = AtomicBool::new(false);

/// What this process adds to its wall clock (milliseconds).
pub fn offset_ms() -> i64 {
    OFFSET_MS.load(Ordering::Relaxed)
}

/// The offset, once at least one other node's clock has been measured.
pub fn measured_offset_ms() -> Option<i64> {
    MEASURED.load(Ordering::Relaxed).then(offset_ms)
}

/// The median of 0 and `offsets`; with an even count, the middle value closer to 0.
pub fn median_with_own(offsets: impl IntoIterator<Item = i64>) -> i64 {
    let mut all: Vec<i64> = std::iter::once(0).chain(offsets).collect();
    all.sort_unstable();
    let middle = all.len() / 2;
    if all.len() % 2 == 1 {
        return all[middle];
    }
    let (low, high) = (all[middle - 1], all[middle]);
    if low.abs() <= high.abs() { low } else { high }
}

impl Engine {
    /// Measures the other nodes' clocks every [`SAMPLE_INTERVAL`] and corrects
    /// [`crate::now_ms`] (started with a remote reader: nodes of a cluster).
    pub(crate) fn spawn_clock(&self) {
        let engine = self.clone();
        tokio::spawn(async move {
            let mut known: HashMap<String, (i64, Instant)> = HashMap::new();
            loop {
                engine.measure_clocks(&mut known).await;
                tokio::time::sleep(SAMPLE_INTERVAL).await;
            }
        });
    }

    async fn measure_clocks(&self, known: &mut HashMap<String, (i64, Instant)>) {
        let Some(remote) = self.remote() else { return };
        let nodes = match self.nodes().await {
            Ok(nodes) => nodes,
            Err(err) => {
                tracing::debug!(error = %err, "cannot list the nodes to measure their clocks");
                Vec::new()
            }
        };
        let me = &self.config().node.node;
        for node in nodes.iter().filter(|n| n.healthy && &n.record.id != me) {
            let mut best: Option<meridian_blob::ClockSample> = None;
            for _ in 0..SAMPLES_PER_NODE {
                match remote.clock_sample(&node.record.id).await {
                    Ok(sample) if best.is_none_or(|b| sample.round_trip_ms < b.round_trip_ms) => best = Some(sample),
                    Ok(_) => {}
                    Err(err) => {
                        tracing::debug!(node = %node.record.id, error = %err, "cannot measure a node's clock");
                        break;
                    }
                }
            }
            if let Some(sample) = best {
                known.insert(node.record.id.clone(), (sample.offset_ms, Instant::now()));
                self.note_round_trip(&node.record.id, sample.round_trip_ms);
            }
        }
        known.retain(|_, (_, at)| at.elapsed() < OFFSET_KEPT_FOR);
        if known.is_empty() {
            return;
        }
        let offset = median_with_own(known.values().map(|(offset, _)| *offset));
        let previous = OFFSET_MS.swap(offset, Ordering::Relaxed);
        MEASURED.store(true, Ordering::Relaxed);
        self.metrics().clock_offset.set(offset as f64 / 1000.0);
        if (offset - previous).abs() >= 1000 {
            tracing::warn!(
                offset_ms = offset,
                "this machine's clock is off from the cluster's; correcting by the offset"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::median_with_own;

    #[test]
    fn the_median_follows_the_majority_and_keeps_the_own_clock_without_one() {
        assert_eq!(median_with_own([]), 0);
        assert_eq!(median_with_own([-6000, -6010]), -6000, "both others agree: this clock is 6 s ahead");
        assert_eq!(median_with_own([3, 6000]), 3, "one skewed peer does not move a good clock");
        assert_eq!(median_with_own([-6000]), 0, "one peer against one: no majority, keep the own clock");
        assert_eq!(median_with_own([-6000, -5990, 10]), 0, "two clocks against two: keep the own clock");
        assert_eq!(median_with_own([-6000, -5990, -6005, 10]), -5990, "three of five clocks agree");
    }
}
