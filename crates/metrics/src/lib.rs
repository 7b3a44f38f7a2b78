//! The Prometheus metrics of one Meridian node: one registry ([`Metrics`]) holding a typed handle
//! for every metric family, grouped by the layer that records them, and the text exposition
//! ([`Metrics::encode`], [`Metrics::encode_openmetrics`]).
//!
//! Each layer receives only its own group (a cheap clone: every handle is an `Arc` inside), so
//! the blob cache never sees the HTTP figures and nothing here knows the layers. A group built
//! with `Default` records into metrics no registry exports (for tests and tools that build an
//! engine or store without a node). Labels are bounded sets — listener, operation, status class,
//! region, etcd call — never a bucket, key or address. Decision record:
//! `docs/decisions/031-metrics.md`; every metric is described in `docs/metrics.md`.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
pub use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

mod text;
pub use text::openmetrics_to_prometheus_text;

/// Content type of [`Metrics::encode`] (the Prometheus text format, 0.0.4).
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Content type of [`Metrics::encode_openmetrics`].
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// At most this many distinct operations get their own label value; later ones are counted as
/// `other`, so a front end that notes something unexpected cannot grow the output without bound.
pub const MAX_OPERATIONS: usize = 256;

/// Latency buckets, in seconds: 0.5 ms to about 33 s, doubling.
fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.0005, 2.0, 17)
}

fn latency_histogram() -> Histogram {
    Histogram::new(latency_buckets())
}

/// A float gauge (seconds).
pub type SecondsGauge = Gauge<f64, AtomicU64>;

/// Every metric of a node, and the registry that exports them.
pub struct Metrics {
    registry: Registry,
    pub http: HttpMetrics,
    pub cache: CacheMetrics,
    pub engine: EngineMetrics,
    pub etcd: EtcdMetrics,
    pub embedded: EmbeddedMetrics,
    refreshers: Mutex<Vec<Box<dyn Fn() + Send + Sync>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A registry with every family registered (and no samples until something is recorded).
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("meridian");
        let (http, cache, engine) = (HttpMetrics::default(), CacheMetrics::default(), EngineMetrics::default());
        let (etcd, embedded) = (EtcdMetrics::default(), EmbeddedMetrics::default());
        http.register(&mut registry);
        cache.register(&mut registry);
        engine.register(&mut registry);
        etcd.register(&mut registry);
        embedded.register(&mut registry);
        Metrics { registry, http, cache, engine, etcd, embedded, refreshers: Mutex::new(Vec::new()) }
    }

    /// Runs `refresh` before every scrape: for figures read from elsewhere at scrape time
    /// (current cache size, connections open) rather than recorded as they happen.
    pub fn on_scrape(&self, refresh: impl Fn() + Send + Sync + 'static) {
        self.refreshers.lock().unwrap_or_else(|p| p.into_inner()).push(Box::new(refresh));
    }

    fn refresh(&self) {
        for refresh in self.refreshers.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            refresh();
        }
    }

    /// Every metric in the OpenMetrics text format (ends with `# EOF`).
    pub fn encode_openmetrics(&self) -> String {
        self.refresh();
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Every metric in the Prometheus text format (0.0.4), which every scraper and `promtool`
    /// read.
    pub fn encode(&self) -> String {
        openmetrics_to_prometheus_text(&self.encode_openmetrics())
    }

    /// The exposition a client asked for with its `Accept` header, and its content type:
    /// OpenMetrics when it lists `application/openmetrics-text`, the Prometheus text otherwise.
    pub fn encode_for(&self, accept: Option<&str>) -> (String, &'static str) {
        if accept.is_some_and(|a| a.contains("application/openmetrics-text")) {
            (self.encode_openmetrics(), OPENMETRICS_CONTENT_TYPE)
        } else {
            (self.encode(), TEXT_CONTENT_TYPE)
        }
    }
}

/// The groups print as their name only (their figures are in [`Metrics::encode`]).
macro_rules! debug_as_name {
    ($($group:ident),*) => {$(
        impl std::fmt::Debug for $group {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(stringify!($group))
            }
        }
    )*};
}

debug_as_name!(Metrics, HttpMetrics, CacheMetrics, EngineMetrics, EtcdMetrics, EmbeddedMetrics);

// ----- HTTP ----------------------------------------------------------------------------------------

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    listener: &'static str,
    operation: String,
    status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    listener: &'static str,
    operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: &'static str,
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The handles of one listener's operation, resolved once so a request only looks up a map.
/// A status class gets its samples the first time it happens.
struct OperationHandles {
    listener: &'static str,
    operation: String,
    by_class: [OnceLock<(Counter, Histogram)>; 5],
    bytes_in: Counter,
    bytes_out: Counter,
}

/// Resolved handles by listener, then operation.
type HandlesByListener = HashMap<&'static str, HashMap<String, Arc<OperationHandles>>>;

/// One finished request, as the HTTP layer reports it.
pub struct RequestDone<'a> {
    pub listener: &'static str,
    /// `None`: the handler noted none (a request refused before routing).
    pub operation: Option<&'a str>,
    pub status: u16,
    pub duration: Duration,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// Requests of every listener, by operation and status class.
#[derive(Clone)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    durations: Family<RequestLabels, Histogram, fn() -> Histogram>,
    bytes_in: Family<OperationLabels, Counter>,
    bytes_out: Family<OperationLabels, Counter>,
    pub in_flight: Family<ListenerLabels, Gauge>,
    pub connections: Family<ListenerLabels, Gauge>,
    handles: Arc<RwLock<HandlesByListener>>,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        HttpMetrics {
            requests: Family::default(),
            durations: Family::new_with_constructor(latency_histogram),
            bytes_in: Family::default(),
            bytes_out: Family::default(),
            in_flight: Family::default(),
            connections: Family::default(),
            handles: Arc::default(),
        }
    }
}

impl HttpMetrics {
    fn register(&self, r: &mut Registry) {
        r.register(
            "http_requests",
            "Requests finished, by listener, API operation and status class",
            self.requests.clone(),
        );
        r.register_with_unit(
            "http_request_duration",
            "Time from a request's arrival to the end of its response body",
            Unit::Seconds,
            self.durations.clone(),
        );
        r.register_with_unit("http_request_body", "Request body bytes received", Unit::Bytes, self.bytes_in.clone());
        r.register_with_unit("http_response_body", "Response body bytes sent", Unit::Bytes, self.bytes_out.clone());
        r.register("http_requests_in_flight", "Requests being served now", self.in_flight.clone());
        r.register("http_connections_open", "Client connections open now", self.connections.clone());
    }

    /// Counts one finished request.
    pub fn request_done(&self, done: &RequestDone<'_>) {
        let operation = done.operation.unwrap_or("none");
        let handles = self.handles(done.listener, operation);
        let class = (usize::from(done.status / 100)).clamp(1, 5) - 1;
        let (requests, duration) = handles.by_class[class].get_or_init(|| {
            let labels = RequestLabels {
                listener: handles.listener,
                operation: handles.operation.clone(),
                status_class: STATUS_CLASSES[class],
            };
            (self.requests.get_or_create_owned(&labels), self.durations.get_or_create_owned(&labels))
        });
        requests.inc();
        duration.observe(done.duration.as_secs_f64());
        handles.bytes_in.inc_by(done.bytes_in);
        handles.bytes_out.inc_by(done.bytes_out);
    }

    fn handles(&self, listener: &'static str, operation: &str) -> Arc<OperationHandles> {
        {
            let map = self.handles.read().unwrap_or_else(|p| p.into_inner());
            if let Some(handles) = map.get(listener).and_then(|ops| ops.get(operation)) {
                return Arc::clone(handles);
            }
        }
        let mut map = self.handles.write().unwrap_or_else(|p| p.into_inner());
        let known: usize = map.values().map(HashMap::len).sum();
        let operation = if known >= MAX_OPERATIONS { "other" } else { operation };
        let ops = map.entry(listener).or_default();
        if let Some(handles) = ops.get(operation) {
            return Arc::clone(handles);
        }
        let handles = Arc::new(self.resolve(listener, operation));
        ops.insert(operation.to_string(), Arc::clone(&handles));
        handles
    }

    fn resolve(&self, listener: &'static str, operation: &str) -> OperationHandles {
        let per_operation = OperationLabels { listener, operation: operation.to_string() };
        OperationHandles {
            listener,
            operation: operation.to_string(),
            by_class: Default::default(),
            bytes_in: self.bytes_in.get_or_create_owned(&per_operation),
            bytes_out: self.bytes_out.get_or_create_owned(&per_operation),
        }
    }

    /// Sets the in-flight and open-connection gauges of a listener (read at scrape time).
    pub fn set_load(&self, listener: &'static str, in_flight: i64, connections: i64) {
        let labels = ListenerLabels { listener };
        self.in_flight.get_or_create(&labels).set(in_flight);
        self.connections.get_or_create(&labels).set(connections);
    }
}

// ----- the cache of remote bytes ------------------------------------------------------------------

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReadLabels {
    region: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RegionLabels {
    region: String,
}

/// The chunk cache's totals, as the cache counts them (copied in at scrape time).
#[derive(Clone, Copy, Debug, Default)]
pub struct CacheTotals {
    pub chunk_hits: u64,
    pub chunk_misses: u64,
    pub fills: u64,
    pub fill_bytes: u64,
    pub fill_errors: u64,
    pub evictions: u64,
    pub bytes: u64,
    pub max_bytes: u64,
}

/// Reads of bytes held in other regions, and the chunk cache that serves them.
#[derive(Clone, Default)]
pub struct CacheMetrics {
    reads: Family<ReadLabels, Counter>,
    read_bytes: Family<RegionLabels, Counter>,
    chunk_hits: Counter,
    chunk_misses: Counter,
    fills: Counter,
    fill_bytes: Counter,
    fill_errors: Counter,
    evictions: Counter,
    bytes: Gauge,
    max_bytes: Gauge,
}

impl CacheMetrics {
    fn register(&self, r: &mut Registry) {
        r.register(
            "cache_reads",
            "Reads of bytes held in another region, by that region and whether the cache held every chunk (hit) or not (miss)",
            self.reads.clone(),
        );
        r.register_with_unit(
            "cache_read",
            "Bytes read of objects held in another region, by that region",
            Unit::Bytes,
            self.read_bytes.clone(),
        );
        r.register("cache_chunk_hits", "Chunks served from the cache", self.chunk_hits.clone());
        r.register("cache_chunk_misses", "Chunks a read needed that were not cached", self.chunk_misses.clone());
        r.register("cache_fills", "Chunks fetched from a holder into the cache", self.fills.clone());
        r.register_with_unit("cache_fill", "Bytes fetched from holders", Unit::Bytes, self.fill_bytes.clone());
        r.register("cache_fill_errors", "Chunk fetches that failed", self.fill_errors.clone());
        r.register("cache_evictions", "Chunks evicted to stay within the cache size", self.evictions.clone());
        r.register_with_unit("cache_size", "Bytes the cache holds now", Unit::Bytes, self.bytes.clone());
        r.register_with_unit("cache_capacity", "Most bytes the cache may hold", Unit::Bytes, self.max_bytes.clone());
    }

    /// Counts one read of `len` bytes held in `region`.
    pub fn read(&self, region: &str, hit: bool, len: u64) {
        let result = if hit { "hit" } else { "miss" };
        self.reads.get_or_create(&ReadLabels { region: region.to_string(), result }).inc();
        self.read_bytes.get_or_create(&RegionLabels { region: region.to_string() }).inc_by(len);
    }

    /// Copies the cache's own totals in (they only grow; sizes are current values).
    pub fn set_totals(&self, t: &CacheTotals) {
        let store = |c: &Counter, v: u64| c.inner().store(v, std::sync::atomic::Ordering::Relaxed);
        store(&self.chunk_hits, t.chunk_hits);
        store(&self.chunk_misses, t.chunk_misses);
        store(&self.fills, t.fills);
        store(&self.fill_bytes, t.fill_bytes);
        store(&self.fill_errors, t.fill_errors);
        store(&self.evictions, t.evictions);
        self.bytes.set(i64::try_from(t.bytes).unwrap_or(i64::MAX));
        self.max_bytes.set(i64::try_from(t.max_bytes).unwrap_or(i64::MAX));
    }
}

// ----- the engine ----------------------------------------------------------------------------------

/// Replication, the small-object push, garbage collection and the TTL reaper.
#[derive(Clone)]
pub struct EngineMetrics {
    /// Measured replication lag of this node's metadata view (see `docs/regions.md`).
    pub replication_lag: SecondsGauge,
    /// Every completed lag measurement.
    pub replication_lag_measured: Histogram,
    pub replication_probe_errors: Counter,
    /// Small objects waiting to be pushed into this node's cache.
    pub push_queue: Gauge,
    /// Time from an object's commit (as this node's watch delivered it) to its bytes being in
    /// this node's cache.
    pub push_duration: Histogram,
    pub pushes: Counter,
    pub push_errors: Counter,
    /// Cached chunks dropped because no record refers to their blob any more.
    pub cache_invalidated_chunks: Counter,
    /// Scans the change follower ran because the history after its cursor was compacted.
    pub change_scans: Counter,
    /// What this node adds to its wall clock to follow the cluster's median clock.
    pub clock_offset: SecondsGauge,
    pub gc_blobs_deleted: Counter,
    pub gc_orphans_removed: Counter,
    pub reaper_runs: Counter,
    pub reaper_removed: Counter,
    pub reaper_duration: Histogram,
    /// Event notifications delivered (2xx) by this node, failed POSTs, and the events waiting
    /// in the streams this node delivers (counted once per pass, up to the delivery window each).
    pub notify_delivered: Counter,
    pub notify_failures: Counter,
    pub notify_backlog: Gauge,
    /// Time a multi-region write waited, after its body was taken in, for its copies in the
    /// other listed regions to be durable.
    pub multi_region_copy_wait: Histogram,
    /// Copies of multi-region writes that failed (the region is in the node's log).
    pub multi_region_copy_failures: Counter,
    /// Time writes took to take their body in, by where its bytes go.
    ingest: Family<PlacementLabels, Histogram, fn() -> Histogram>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PlacementLabels {
    placement: &'static str,
}

impl Default for EngineMetrics {
    fn default() -> Self {
        EngineMetrics {
            replication_lag: SecondsGauge::default(),
            replication_lag_measured: latency_histogram(),
            replication_probe_errors: Counter::default(),
            push_queue: Gauge::default(),
            push_duration: latency_histogram(),
            pushes: Counter::default(),
            push_errors: Counter::default(),
            cache_invalidated_chunks: Counter::default(),
            change_scans: Counter::default(),
            clock_offset: SecondsGauge::default(),
            gc_blobs_deleted: Counter::default(),
            gc_orphans_removed: Counter::default(),
            reaper_runs: Counter::default(),
            reaper_removed: Counter::default(),
            reaper_duration: latency_histogram(),
            notify_delivered: Counter::default(),
            notify_failures: Counter::default(),
            notify_backlog: Gauge::default(),
            multi_region_copy_wait: latency_histogram(),
            multi_region_copy_failures: Counter::default(),
            ingest: Family::new_with_constructor(latency_histogram),
        }
    }
}

impl EngineMetrics {
    fn register(&self, r: &mut Registry) {
        r.register_with_unit(
            "replication_lag",
            "How far this node's metadata view is behind the newest committed revision, measured in time on this node's clock",
            Unit::Seconds,
            self.replication_lag.clone(),
        );
        r.register_with_unit(
            "replication_lag_measured",
            "Each completed replication lag measurement",
            Unit::Seconds,
            self.replication_lag_measured.clone(),
        );
        r.register(
            "replication_probe_errors",
            "Replication lag measurements that failed (the metadata store did not answer)",
            self.replication_probe_errors.clone(),
        );
        r.register(
            "push_queue_depth",
            "Small objects waiting to be pushed into this node's cache",
            self.push_queue.clone(),
        );
        r.register_with_unit(
            "push_duration",
            "Time from an object's commit reaching this node to its bytes being in the cache",
            Unit::Seconds,
            self.push_duration.clone(),
        );
        r.register("pushes", "Small objects pushed into this node's cache", self.pushes.clone());
        r.register("push_errors", "Small-object pushes that failed", self.push_errors.clone());
        r.register(
            "cache_invalidated_chunks",
            "Cached chunks dropped because their object was overwritten, deleted or expired",
            self.cache_invalidated_chunks.clone(),
        );
        r.register(
            "change_scans",
            "Scans of every object the change follower ran because the history after its cursor was compacted",
            self.change_scans.clone(),
        );
        r.register_with_unit(
            "clock_offset",
            "What this node adds to its wall clock to follow the cluster's median clock",
            Unit::Seconds,
            self.clock_offset.clone(),
        );
        r.register(
            "gc_blobs_deleted",
            "Blob files deleted after their object was replaced or removed",
            self.gc_blobs_deleted.clone(),
        );
        r.register(
            "gc_orphans_removed",
            "Blob files removed at start because no metadata owned them",
            self.gc_orphans_removed.clone(),
        );
        r.register("reaper_runs", "Passes of the TTL and lifecycle reaper", self.reaper_runs.clone());
        r.register(
            "reaper_removed",
            "Expired objects, markers and uploads the reaper removed",
            self.reaper_removed.clone(),
        );
        r.register_with_unit(
            "reaper_duration",
            "Time one reaper pass took",
            Unit::Seconds,
            self.reaper_duration.clone(),
        );
        r.register(
            "notify_delivered",
            "Event notifications this node delivered to webhook targets (answered 2xx)",
            self.notify_delivered.clone(),
        );
        r.register(
            "notify_failures",
            "Event notification POSTs that failed (retried with backoff)",
            self.notify_failures.clone(),
        );
        r.register(
            "notify_backlog",
            "Event notifications waiting for delivery, as this node's last delivery pass counted them",
            self.notify_backlog.clone(),
        );
        r.register_with_unit(
            "multi_region_copy_wait",
            "Time a multi-region write waited, after its body was taken in, for its copies in the other listed regions to be durable",
            Unit::Seconds,
            self.multi_region_copy_wait.clone(),
        );
        r.register(
            "multi_region_copy_failures",
            "Copies of multi-region writes that failed",
            self.multi_region_copy_failures.clone(),
        );
        r.register_with_unit(
            "ingest",
            "Time a write took to take in its body, until its bytes were durable on this node (and, in a multi-region bucket, handed to every copy)",
            Unit::Seconds,
            self.ingest.clone(),
        );
    }

    /// Records one write's body ingest: `multi_region` when it was also streamed to copies in
    /// the other listed regions.
    pub fn observe_ingest(&self, multi_region: bool, took: std::time::Duration) {
        let placement = if multi_region { "multi_region" } else { "single_region" };
        self.ingest.get_or_create(&PlacementLabels { placement }).observe(took.as_secs_f64());
    }
}

// ----- the metadata stores -------------------------------------------------------------------------

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    call: &'static str,
}

/// Requests of the etcd backend, by call (`read`, `txn`, `watch`...).
#[derive(Clone)]
pub struct EtcdMetrics {
    durations: Family<CallLabels, Histogram, fn() -> Histogram>,
    errors: Family<CallLabels, Counter>,
}

impl Default for EtcdMetrics {
    fn default() -> Self {
        EtcdMetrics { durations: Family::new_with_constructor(latency_histogram), errors: Family::default() }
    }
}

impl EtcdMetrics {
    fn register(&self, r: &mut Registry) {
        r.register_with_unit(
            "etcd_request_duration",
            "Time an etcd request took, retries on other members included",
            Unit::Seconds,
            self.durations.clone(),
        );
        r.register("etcd_request_errors", "etcd requests that failed, after retries", self.errors.clone());
    }

    /// Records one request (`call` is one of a fixed set of names).
    pub fn request(&self, call: &'static str, took: Duration, ok: bool) {
        let labels = CallLabels { call };
        self.durations.get_or_create(&labels).observe(took.as_secs_f64());
        if !ok {
            self.errors.get_or_create(&labels).inc();
        }
    }
}

/// The embedded store's writer: group-commit batches and their fsync.
#[derive(Clone)]
pub struct EmbeddedMetrics {
    pub batch_size: Histogram,
    pub commit_duration: Histogram,
    pub commits: Counter,
    pub checkpoints: Counter,
}

impl Default for EmbeddedMetrics {
    fn default() -> Self {
        EmbeddedMetrics {
            batch_size: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(1.0, 2.0, 11)),
            commit_duration: latency_histogram(),
            commits: Counter::default(),
            checkpoints: Counter::default(),
        }
    }
}

impl EmbeddedMetrics {
    fn register(&self, r: &mut Registry) {
        r.register(
            "meta_commit_batch_size",
            "Transactions committed together in one write-ahead log append and fsync of the embedded store",
            self.batch_size.clone(),
        );
        r.register_with_unit(
            "meta_commit_duration",
            "Time one group commit of the embedded store took, its write-ahead log append and fsync included",
            Unit::Seconds,
            self.commit_duration.clone(),
        );
        r.register("meta_commits", "Group commits of the embedded store", self.commits.clone());
        r.register(
            "meta_checkpoints",
            "Durable commits of the embedded store's database after which its write-ahead log starts over",
            self.checkpoints.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_moves_its_operation_and_status_class() {
        let metrics = Metrics::new();
        let done = RequestDone {
            listener: "s3",
            operation: Some("PutObject"),
            status: 200,
            duration: Duration::from_millis(3),
            bytes_in: 10,
            bytes_out: 0,
        };
        metrics.http.request_done(&done);
        metrics.http.request_done(&done);
        metrics.http.request_done(&RequestDone { status: 404, ..done });
        let text = metrics.encode();
        assert!(text.contains("# TYPE meridian_http_requests_total counter\n"), "{text}");
        assert!(
            text.contains(
                "meridian_http_requests_total{listener=\"s3\",operation=\"PutObject\",status_class=\"2xx\"} 2\n"
            ),
            "{text}"
        );
        assert!(text.contains("status_class=\"4xx\"} 1\n"), "{text}");
        assert!(
            text.contains("meridian_http_request_body_bytes_total{listener=\"s3\",operation=\"PutObject\"} 30\n"),
            "{text}"
        );
        assert!(!text.contains("# EOF"));
        assert!(metrics.encode_openmetrics().ends_with("# EOF\n"));
    }

    #[test]
    fn operations_past_the_limit_are_counted_as_other() {
        let metrics = Metrics::new();
        for i in 0..MAX_OPERATIONS + 10 {
            let operation = format!("op{i}");
            let done = RequestDone {
                listener: "admin",
                operation: Some(&operation),
                status: 200,
                duration: Duration::ZERO,
                bytes_in: 0,
                bytes_out: 0,
            };
            metrics.http.request_done(&done);
        }
        let text = metrics.encode();
        assert!(text.contains("operation=\"other\",status_class=\"2xx\"} 10\n"), "{text}");
    }
}
