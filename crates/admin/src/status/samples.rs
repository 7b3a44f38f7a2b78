//! The status page's figures, read back from the node's own Prometheus exposition (the text
//! `/metrics` serves), so the page and `/metrics` cannot disagree: request counts and latency
//! histograms per operation, cache reads per region, cache size, push queue, replication lag.
//! Rates and p99 latencies come from the difference between two snapshots.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::Serialize;

/// One sample line: `name{label="value",...} value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Every sample of a Prometheus text exposition; comments and malformed lines are skipped.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let Some((name, rest)) = line.split_once('{') else {
        let (name, value) = line.split_once(' ')?;
        return Some(Sample { name: name.to_string(), labels: Vec::new(), value: parse_value(value)? });
    };
    let (labels, value) = parse_labels(rest)?;
    Some(Sample { name: name.to_string(), labels, value: parse_value(value.trim())? })
}

/// The labels after a `{`, and what follows the closing `}`.
fn parse_labels(mut rest: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        rest = rest.trim_start_matches(',');
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        let (key, quoted) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = quoted.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => {
                    let (_, escaped) = chars.next()?;
                    value.push(if escaped == 'n' { '\n' } else { escaped });
                }
                '"' => break i + 1,
                c => value.push(c),
            }
        };
        labels.push((key.to_string(), value));
        rest = &quoted[end..];
    }
}

fn parse_value(text: &str) -> Option<f64> {
    match text.split_whitespace().next()? {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        v => v.parse().ok(),
    }
}

/// Requests of one operation on one listener, every status class together.
#[derive(Clone, Debug, Default)]
struct Operation {
    count: f64,
    /// Cumulative bucket counts by upper bound (in seconds; the last is +Inf).
    buckets: BTreeMap<Bound, f64>,
}

/// A bucket bound that sorts as a number.
#[derive(Clone, Copy, Debug)]
struct Bound(f64);

impl PartialEq for Bound {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Bound {}

impl PartialOrd for Bound {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Bound {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// The figures the page needs from one exposition, taken at one moment.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub at: Instant,
    operations: BTreeMap<(String, String), Operation>,
    samples: Vec<Sample>,
}

/// One operation's figures for the page.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct OperationView {
    pub listener: String,
    pub operation: String,
    /// Requests finished since the node started (`meridian_http_requests_total`, summed over
    /// status classes).
    pub requests_total: u64,
    /// Requests per second over the window; `None` without an earlier snapshot.
    pub rate_per_second: Option<f64>,
    /// The 99th percentile of request durations over the window, interpolated within the
    /// histogram bucket as Prometheus' `histogram_quantile` does; `None` without requests in
    /// the window.
    pub p99_seconds: Option<f64>,
}

/// Cache reads of bytes held in one region.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct CacheReadsView {
    pub region: String,
    pub hits: u64,
    pub misses: u64,
    pub hit_ratio: Option<f64>,
}

impl Snapshot {
    pub fn new(text: &str, at: Instant) -> Snapshot {
        let samples = parse(text);
        let mut operations: BTreeMap<(String, String), Operation> = BTreeMap::new();
        for s in &samples {
            let (Some(listener), Some(operation)) = (s.label("listener"), s.label("operation")) else { continue };
            let key = (listener.to_string(), operation.to_string());
            match s.name.as_str() {
                "meridian_http_requests_total" => operations.entry(key).or_default().count += s.value,
                "meridian_http_request_duration_seconds_bucket" => {
                    let Some(le) = s.label("le").and_then(parse_value) else { continue };
                    *operations.entry(key).or_default().buckets.entry(Bound(le)).or_default() += s.value;
                }
                _ => {}
            }
        }
        Snapshot { at, operations, samples }
    }

    /// The value of an unlabelled sample (a gauge).
    pub fn value(&self, name: &str) -> Option<f64> {
        self.samples.iter().find(|s| s.name == name && s.labels.is_empty()).map(|s| s.value)
    }

    /// Every operation, with rate and p99 since `earlier` when given.
    pub fn operations(&self, earlier: Option<&Snapshot>) -> Vec<OperationView> {
        self.operations
            .iter()
            .map(|((listener, operation), now)| {
                let before = earlier.map(|e| e.operations.get(&(listener.clone(), operation.clone())));
                let (rate, p99) = match (earlier, before) {
                    (Some(e), Some(before)) => {
                        let seconds = self.at.duration_since(e.at).as_secs_f64();
                        let empty = Operation::default();
                        let before = before.unwrap_or(&empty);
                        let done = (now.count - before.count).max(0.0);
                        let rate = if seconds > 0.0 { Some(done / seconds) } else { None };
                        (rate, quantile(0.99, &bucket_deltas(now, before)))
                    }
                    _ => (None, None),
                };
                OperationView {
                    listener: listener.clone(),
                    operation: operation.clone(),
                    requests_total: now.count as u64,
                    rate_per_second: rate,
                    p99_seconds: p99,
                }
            })
            .collect()
    }

    /// Reads of bytes held in other regions, by region (`meridian_cache_reads_total`).
    pub fn cache_reads(&self) -> Vec<CacheReadsView> {
        let mut regions: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        for s in self.samples.iter().filter(|s| s.name == "meridian_cache_reads_total") {
            let (Some(region), Some(result)) = (s.label("region"), s.label("result")) else { continue };
            let entry = regions.entry(region).or_default();
            match result {
                "hit" => entry.0 += s.value as u64,
                _ => entry.1 += s.value as u64,
            }
        }
        regions
            .into_iter()
            .map(|(region, (hits, misses))| CacheReadsView {
                region: region.to_string(),
                hits,
                misses,
                hit_ratio: ratio(hits, misses),
            })
            .collect()
    }
}

/// `hits / (hits + misses)`, or `None` before any read.
pub fn ratio(hits: u64, misses: u64) -> Option<f64> {
    let all = hits + misses;
    (all > 0).then(|| hits as f64 / all as f64)
}

fn bucket_deltas(now: &Operation, before: &Operation) -> Vec<(f64, f64)> {
    now.buckets
        .iter()
        .map(|(le, count)| (le.0, (count - before.buckets.get(le).copied().unwrap_or(0.0)).max(0.0)))
        .collect()
}

/// The `q` quantile of cumulative `(upper bound, count)` buckets, as `histogram_quantile`
/// computes it: linear within the bucket the rank falls in; the highest finite bound when it
/// falls in the +Inf bucket.
pub fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower.0);
            }
            let within = if count > lower.1 { (rank - lower.1) / (count - lower.1) } else { 1.0 };
            return Some(lower.0 + (le - lower.0) * within);
        }
        lower = (le, count);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP meridian_http_requests_total Requests
# TYPE meridian_http_requests_total counter
meridian_http_requests_total{listener="s3",operation="GetObject",status_class="2xx"} 90
meridian_http_requests_total{listener="s3",operation="GetObject",status_class="4xx"} 10
meridian_http_request_duration_seconds_bucket{listener="s3",operation="GetObject",status_class="2xx",le="0.001"} 50
meridian_http_request_duration_seconds_bucket{listener="s3",operation="GetObject",status_class="2xx",le="0.002"} 90
meridian_http_request_duration_seconds_bucket{listener="s3",operation="GetObject",status_class="2xx",le="+Inf"} 90
meridian_http_request_duration_seconds_bucket{listener="s3",operation="GetObject",status_class="4xx",le="0.001"} 10
meridian_http_request_duration_seconds_bucket{listener="s3",operation="GetObject",status_class="4xx",le="0.002"} 10
meridian_http_request_duration_seconds_bucket{listener="s3",operation="GetObject",status_class="4xx",le="+Inf"} 10
meridian_cache_reads_total{region="region-a",result="hit"} 3
meridian_cache_reads_total{region="region-a",result="miss"} 1
meridian_push_queue_depth 4
weird{a="x\"y\\z",b="1"} 2
"#;

    #[test]
    fn samples_and_escaped_labels_are_read() {
        let samples = parse(TEXT);
        let weird = samples.iter().find(|s| s.name == "weird").unwrap();
        assert_eq!(weird.label("a"), Some("x\"y\\z"));
        assert_eq!(weird.label("b"), Some("1"));
        assert_eq!(weird.value, 2.0);
        assert_eq!(Snapshot::new(TEXT, Instant::now()).value("meridian_push_queue_depth"), Some(4.0));
    }

    #[test]
    fn rates_and_p99_come_from_the_difference_between_snapshots() {
        let start = Instant::now();
        let before = Snapshot::new("", start);
        let now = Snapshot::new(TEXT, start + std::time::Duration::from_secs(10));
        let ops = now.operations(Some(&before));
        assert_eq!(ops.len(), 1);
        assert_eq!(ops[0].requests_total, 100);
        assert_eq!(ops[0].rate_per_second, Some(10.0));
        // 100 requests: rank 99 falls in the (1 ms, 2 ms] bucket holding 40 of them (60..100).
        let p99 = ops[0].p99_seconds.unwrap();
        assert!((p99 - (0.001 + 0.001 * 39.0 / 40.0)).abs() < 1e-9, "{p99}");
        assert_eq!(now.operations(None)[0].rate_per_second, None);
        let reads = now.cache_reads();
        assert_eq!((reads[0].hits, reads[0].misses, reads[0].hit_ratio), (3, 1, Some(0.75)));
    }

    #[test]
    fn a_rank_in_the_infinite_bucket_is_the_highest_finite_bound() {
        assert_eq!(quantile(0.99, &[(0.5, 1.0), (1.0, 1.0), (f64::INFINITY, 10.0)]), Some(1.0));
        assert_eq!(quantile(0.99, &[(0.5, 0.0), (f64::INFINITY, 0.0)]), None);
    }
}
