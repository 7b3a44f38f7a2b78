//! What a served volume measures, in Prometheus form (`meridian volume serve --metrics-listen`):
//! NBD requests and their latency by operation, bytes read and written, flush time, lease
//! renewals, and at each scrape the journal's dirty bytes and the upload queue. Every volume
//! counts (a few atomic adds per request); only `serve` publishes.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// An NBD request kind and how it ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Request {
    /// `read`, `write`, `flush`, `trim`, `write_zeroes` or `other`.
    pub op: &'static str,
    /// `ok` or `error` (including requests refused before reaching the volume).
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Op {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    result: &'static str,
}

/// Figures read from the volume's state at scrape time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Journal bytes not yet durable in the bucket (the open generation and the cut ones).
    pub dirty_bytes: u64,
    /// Cut journal generations waiting or uploading.
    pub queued_units: u64,
    /// Log objects uploading right now.
    pub uploads_in_flight: u64,
}

pub struct VolumeMetrics {
    registry: Registry,
    requests: Family<Request, Counter>,
    latency: Family<Op, Histogram>,
    read_bytes: Counter,
    written_bytes: Counter,
    flush_seconds: Histogram,
    renewals: Family<Outcome, Counter>,
    dirty_bytes: Gauge,
    queued_units: Gauge,
    uploads_in_flight: Gauge,
}

/// 100 µs to about 26 s, by factors of 4.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 4.0, 10))
}

impl Default for VolumeMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("meridian_volume");
        let requests = Family::<Request, Counter>::default();
        registry.register("nbd_requests", "NBD requests answered, by operation and result", requests.clone());
        let latency = Family::<Op, Histogram>::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register_with_unit(
            "nbd_request_duration",
            "Time from an NBD request's arrival to its reply being queued (FUA writes include their flush)",
            Unit::Seconds,
            latency.clone(),
        );
        let read_bytes = Counter::default();
        registry.register_with_unit("nbd_read", "Bytes returned to NBD READs", Unit::Bytes, read_bytes.clone());
        let written_bytes = Counter::default();
        registry.register_with_unit("nbd_written", "Bytes of NBD WRITE payloads", Unit::Bytes, written_bytes.clone());
        let flush_seconds = latency_histogram();
        registry.register_with_unit(
            "flush_duration",
            "Time for a flush (FLUSH or FUA) to make every earlier write durable in the bucket",
            Unit::Seconds,
            flush_seconds.clone(),
        );
        let renewals = Family::<Outcome, Counter>::default();
        registry.register("lease_renewals", "Writer lease renewals, by result", renewals.clone());
        let dirty_bytes = Gauge::default();
        registry.register_with_unit(
            "journal_dirty",
            "Journal bytes not yet durable in the bucket",
            Unit::Bytes,
            dirty_bytes.clone(),
        );
        let queued_units = Gauge::default();
        registry.register("upload_queue_units", "Cut journal generations waiting or uploading", queued_units.clone());
        let uploads_in_flight = Gauge::default();
        registry.register("uploads_in_flight", "Log objects uploading right now", uploads_in_flight.clone());
        VolumeMetrics {
            registry,
            requests,
            latency,
            read_bytes,
            written_bytes,
            flush_seconds,
            renewals,
            dirty_bytes,
            queued_units,
            uploads_in_flight,
        }
    }
}

impl VolumeMetrics {
    /// One NBD request answered after `elapsed`.
    pub fn request(&self, request: Request, elapsed: Duration) {
        self.latency.get_or_create(&Op { op: request.op }).observe(elapsed.as_secs_f64());
        self.requests.get_or_create(&request).inc();
    }

    pub fn read(&self, bytes: u64) {
        self.read_bytes.inc_by(bytes);
    }

    pub fn written(&self, bytes: u64) {
        self.written_bytes.inc_by(bytes);
    }

    pub fn flushed(&self, elapsed: Duration) {
        self.flush_seconds.observe(elapsed.as_secs_f64());
    }

    pub fn lease_renewal(&self, ok: bool) {
        self.renewals.get_or_create(&Outcome { result: if ok { "ok" } else { "failed" } }).inc();
    }

    /// Every metric in Prometheus' text format (version 0.0.4), with the backlog as it is now.
    pub fn encode(&self, backlog: Backlog) -> Result<String, std::fmt::Error> {
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.dirty_bytes.set(gauge(backlog.dirty_bytes));
        self.queued_units.set(gauge(backlog.queued_units));
        self.uploads_in_flight.set(gauge(backlog.uploads_in_flight));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(meridian_metrics::openmetrics_to_prometheus_text(&text))
    }
}

/// The content type of [`VolumeMetrics::encode`]'s output.
pub const CONTENT_TYPE: &str = meridian_metrics::TEXT_CONTENT_TYPE;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_named_after_their_samples_and_openmetrics_only_lines_go() {
        let metrics = VolumeMetrics::default();
        metrics.written(4096);
        let text = metrics.encode(Backlog::default()).unwrap();
        assert!(text.contains("# HELP meridian_volume_nbd_written_bytes_total Bytes of NBD WRITE payloads"), "{text}");
        assert!(text.contains("# TYPE meridian_volume_nbd_written_bytes_total counter\n"), "{text}");
        assert!(text.contains("\nmeridian_volume_nbd_written_bytes_total 4096\n"), "{text}");
        assert!(text.contains("# TYPE meridian_volume_flush_duration_seconds histogram\n"), "{text}");
        assert!(!text.contains("# UNIT") && !text.contains("# EOF"), "{text}");
    }
}
