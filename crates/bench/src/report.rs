//! Latency recording (one HDR histogram per operation type and worker,
//! merged at the end) and the report: a table for people, JSON for machines.

use crate::s3::OpError;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

/// The operation types the bench times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    /// PutObject.
    Put,
    /// GetObject (time to the last body byte).
    Get,
    /// HeadObject.
    Head,
    /// DeleteObject.
    Delete,
    /// ListObjectsV2 page.
    List,
    /// A whole multipart upload: create, parts, complete.
    Multipart,
    /// One UploadPart inside a multipart upload.
    Part,
}

impl OpKind {
    /// All kinds, in report order.
    pub const ALL: [OpKind; 7] =
        [OpKind::Put, OpKind::Get, OpKind::Head, OpKind::Delete, OpKind::List, OpKind::Multipart, OpKind::Part];

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Put => "put",
            OpKind::Get => "get",
            OpKind::Head => "head",
            OpKind::Delete => "delete",
            OpKind::List => "list",
            OpKind::Multipart => "multipart",
            OpKind::Part => "part",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// Whether the kind counts in the totals (parts are inside multipart ops).
    pub fn in_total(self) -> bool {
        !matches!(self, OpKind::Part)
    }
}

/// Latencies are recorded in microseconds, 1 µs to 1 hour, 3 significant digits.
const HIST_MAX_US: u64 = 3_600_000_000;

fn new_hist() -> Histogram<u64> {
    match Histogram::new_with_bounds(1, HIST_MAX_US, 3) {
        Ok(h) => h,
        Err(_) => unreachable!("constant histogram bounds are valid"),
    }
}

/// Per-operation-type statistics gathered by one worker.
#[derive(Debug, Clone)]
pub struct OpStats {
    hist: Histogram<u64>,
    bytes: u64,
    errors: BTreeMap<String, u64>,
}

impl Default for OpStats {
    fn default() -> Self {
        Self { hist: new_hist(), bytes: 0, errors: BTreeMap::new() }
    }
}

/// What one worker measured; merged into the report at the end.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    ops: [Option<OpStats>; 7],
}

impl Recorder {
    fn stats(&mut self, kind: OpKind) -> &mut OpStats {
        self.ops[kind.index()].get_or_insert_with(OpStats::default)
    }

    /// Records one successful operation.
    pub fn ok(&mut self, kind: OpKind, latency: Duration, bytes: u64) {
        let s = self.stats(kind);
        let us = (latency.as_micros() as u64).clamp(1, HIST_MAX_US);
        // Cannot fail: the value is clamped to the histogram's range.
        let _ = s.hist.record(us);
        s.bytes += bytes;
    }

    /// Records one failed operation.
    pub fn err(&mut self, kind: OpKind, e: &OpError) {
        *self.stats(kind).errors.entry(e.kind()).or_insert(0) += 1;
    }

    /// Adds another worker's measurements.
    pub fn merge(&mut self, other: &Recorder) {
        for (i, o) in other.ops.iter().enumerate() {
            let Some(o) = o else { continue };
            let s = self.ops[i].get_or_insert_with(OpStats::default);
            // Same bounds on both sides, so `add` cannot fail.
            let _ = s.hist.add(&o.hist);
            s.bytes += o.bytes;
            for (k, v) in &o.errors {
                *s.errors.entry(k.clone()).or_insert(0) += v;
            }
        }
    }

    /// Successful operations of all kinds that count in totals.
    pub fn total_ok(&self) -> u64 {
        OpKind::ALL
            .iter()
            .filter(|k| k.in_total())
            .filter_map(|k| self.ops[k.index()].as_ref())
            .map(|s| s.hist.len())
            .sum()
    }

    /// Builds per-kind reports over `elapsed`.
    pub fn op_reports(&self, elapsed: Duration) -> Vec<OpReport> {
        let secs = elapsed.as_secs_f64().max(1e-9);
        OpKind::ALL
            .iter()
            .filter_map(|k| self.ops[k.index()].as_ref().map(|s| (*k, s)))
            .map(|(kind, s)| {
                let h = &s.hist;
                let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
                let count = h.len();
                OpReport {
                    op: kind,
                    count,
                    errors: s.errors.values().sum(),
                    error_kinds: s.errors.clone(),
                    ops_per_sec: count as f64 / secs,
                    bytes: s.bytes,
                    mib_per_sec: s.bytes as f64 / secs / (1024.0 * 1024.0),
                    latency_ms: Latency {
                        mean: if count > 0 { h.mean() / 1000.0 } else { 0.0 },
                        p50: ms(0.50),
                        p90: ms(0.90),
                        p99: ms(0.99),
                        p999: ms(0.999),
                        max: h.max() as f64 / 1000.0,
                    },
                }
            })
            .collect()
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Latency {
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Slowest.
    pub max: f64,
}

/// One operation type's results.
#[derive(Debug, Clone, Serialize)]
pub struct OpReport {
    /// Operation type.
    pub op: OpKind,
    /// Successful operations.
    pub count: u64,
    /// Failed operations.
    pub errors: u64,
    /// Failures by kind (`http-503-SlowDown`, `timeout`, `connect`...).
    pub error_kinds: BTreeMap<String, u64>,
    /// Successful operations per second of the measured phase.
    pub ops_per_sec: f64,
    /// Payload bytes moved by successful operations.
    pub bytes: u64,
    /// Payload MiB per second.
    pub mib_per_sec: f64,
    /// Latency of successful operations.
    pub latency_ms: Latency,
}

/// Memory and CPU of the server process, sampled from `/proc/PID`.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ServerStats {
    /// Process id sampled.
    pub pid: u32,
    /// Largest VmRSS seen while sampling (every 100 ms), KiB.
    pub max_rss_kib: u64,
    /// VmHWM (peak RSS over the process's life) at the end, KiB.
    pub hwm_kib: u64,
    /// CPU seconds (user+system) the server used during the measured phase.
    pub cpu_secs: f64,
}

/// Totals over all counted operation types.
#[derive(Debug, Clone, Serialize)]
pub struct Totals {
    /// Successful operations.
    pub ops: u64,
    /// Failed operations.
    pub errors: u64,
    /// Operations per second.
    pub ops_per_sec: f64,
    /// Payload bytes.
    pub bytes: u64,
    /// Payload MiB per second.
    pub mib_per_sec: f64,
}

/// The result of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Free-form label (`--label`), e.g. the server's name.
    pub label: Option<String>,
    /// What was driven: `s3 http://...`, `files:/dir`, `null-http`.
    pub target: String,
    /// Workload name.
    pub workload: String,
    /// Object size spec.
    pub size: String,
    /// Concurrent workers.
    pub concurrency: usize,
    /// Objects created before measuring.
    pub prepared_objects: u64,
    /// Seconds the unmeasured prepare phase took.
    pub prepare_secs: f64,
    /// Seconds the measured phase lasted.
    pub duration_secs: f64,
    /// Per-operation results.
    pub ops: Vec<OpReport>,
    /// Totals.
    pub total: Totals,
    /// CPU seconds the bench process itself used in the measured phase.
    pub client_cpu_secs: Option<f64>,
    /// Server process statistics (with `--server-pid`).
    pub server: Option<ServerStats>,
    /// Objects removed in the cleanup phase.
    pub cleaned_up: u64,
    /// Problems met while cleaning up (the run's numbers are still valid).
    pub cleanup_errors: Vec<String>,
}

impl Report {
    /// Builds totals from per-kind reports.
    pub fn totals(ops: &[OpReport], elapsed: Duration) -> Totals {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let counted = ops.iter().filter(|o| o.op.in_total());
        let (n, e, b) = counted.fold((0, 0, 0), |(n, e, b), o| (n + o.count, e + o.errors, b + o.bytes));
        Totals {
            ops: n,
            errors: e,
            ops_per_sec: n as f64 / secs,
            bytes: b,
            mib_per_sec: b as f64 / secs / (1024.0 * 1024.0),
        }
    }

    /// A human-readable table.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let label = self.label.as_deref().map(|l| format!("[{l}] ")).unwrap_or_default();
        let _ = writeln!(
            out,
            "{label}{} on {}: size {}, concurrency {}, {:.1}s measured ({} objects prepared in {:.1}s)",
            self.workload,
            self.target,
            self.size,
            self.concurrency,
            self.duration_secs,
            self.prepared_objects,
            self.prepare_secs
        );
        let _ = writeln!(
            out,
            "{:<10} {:>9} {:>11} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}",
            "op", "ops", "ops/s", "MiB/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms", "errors"
        );
        for o in &self.ops {
            let l = &o.latency_ms;
            let _ = writeln!(
                out,
                "{:<10} {:>9} {:>11.1} {:>10.2} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>7}",
                o.op.name(),
                o.count,
                o.ops_per_sec,
                o.mib_per_sec,
                l.p50,
                l.p90,
                l.p99,
                l.p999,
                l.max,
                o.errors
            );
        }
        let t = &self.total;
        let _ = writeln!(
            out,
            "{:<10} {:>9} {:>11.1} {:>10.2} {:>49} {:>7}",
            "total", t.ops, t.ops_per_sec, t.mib_per_sec, "", t.errors
        );
        for o in &self.ops {
            for (k, v) in &o.error_kinds {
                let _ = writeln!(out, "  {} errors: {k} x{v}", o.op.name());
            }
        }
        if let Some(c) = self.client_cpu_secs {
            let per_op = if t.ops > 0 { c * 1e6 / t.ops as f64 } else { 0.0 };
            let _ = writeln!(out, "bench client CPU: {c:.2}s ({per_op:.1} µs per op)");
        }
        if let Some(s) = &self.server {
            let _ = writeln!(
                out,
                "server pid {}: max RSS {:.1} MiB (VmHWM {:.1} MiB), CPU {:.2}s",
                s.pid,
                s.max_rss_kib as f64 / 1024.0,
                s.hwm_kib as f64 / 1024.0,
                s.cpu_secs
            );
        }
        if self.cleaned_up > 0 || !self.cleanup_errors.is_empty() {
            let _ = writeln!(out, "cleanup: removed {} objects", self.cleaned_up);
        }
        for e in &self.cleanup_errors {
            let _ = writeln!(out, "cleanup problem: {e}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_merged_histograms() {
        let mut a = Recorder::default();
        let mut b = Recorder::default();
        for i in 1..=500u64 {
            a.ok(OpKind::Get, Duration::from_micros(i * 10), 4096);
        }
        for i in 501..=1000u64 {
            b.ok(OpKind::Get, Duration::from_micros(i * 10), 4096);
        }
        b.err(OpKind::Get, &OpError::Http { status: 503, code: "SlowDown".into() });
        b.err(OpKind::Put, &OpError::Timeout);
        a.merge(&b);
        let reports = a.op_reports(Duration::from_secs(2));
        assert_eq!(reports.len(), 2);
        let get = &reports[1];
        assert_eq!(get.op, OpKind::Get);
        assert_eq!(get.count, 1000);
        assert_eq!(get.errors, 1);
        assert_eq!(get.error_kinds.get("http-503-SlowDown"), Some(&1));
        assert!((get.ops_per_sec - 500.0).abs() < 1e-9);
        assert!((get.mib_per_sec - 1000.0 * 4096.0 / 2.0 / 1048576.0).abs() < 1e-9);
        // 1000 evenly spaced values 10 µs .. 10 ms: p50 ≈ 5 ms, p99 ≈ 9.9 ms.
        assert!((get.latency_ms.p50 - 5.0).abs() < 0.01, "{:?}", get.latency_ms);
        assert!((get.latency_ms.p90 - 9.0).abs() < 0.01);
        assert!((get.latency_ms.p99 - 9.9).abs() < 0.01);
        assert!((get.latency_ms.max - 10.0).abs() < 0.01);
        let put = &reports[0];
        assert_eq!((put.count, put.errors), (0, 1));
        let t = Report::totals(&reports, Duration::from_secs(2));
        assert_eq!((t.ops, t.errors, t.bytes), (1000, 2, 4096 * 1000));
    }

    #[test]
    fn parts_do_not_count_twice_in_totals() {
        let mut r = Recorder::default();
        r.ok(OpKind::Multipart, Duration::from_millis(30), 3 << 20);
        for _ in 0..3 {
            r.ok(OpKind::Part, Duration::from_millis(10), 1 << 20);
        }
        let reps = r.op_reports(Duration::from_secs(1));
        let t = Report::totals(&reps, Duration::from_secs(1));
        assert_eq!((t.ops, t.bytes), (1, 3 << 20));
        assert_eq!(r.total_ok(), 1);
    }

    #[test]
    fn table_and_json_show_every_op() {
        let mut r = Recorder::default();
        r.ok(OpKind::Put, Duration::from_millis(2), 10);
        let ops = r.op_reports(Duration::from_secs(1));
        let report = Report {
            label: Some("peer".into()),
            target: "null-http".into(),
            workload: "put".into(),
            size: "10 B".into(),
            concurrency: 1,
            prepared_objects: 0,
            prepare_secs: 0.0,
            duration_secs: 1.0,
            total: Report::totals(&ops, Duration::from_secs(1)),
            ops,
            client_cpu_secs: Some(0.5),
            server: None,
            cleaned_up: 1,
            cleanup_errors: vec![],
        };
        let table = report.to_table();
        assert!(table.contains("[peer] put on null-http"), "{table}");
        assert!(table.lines().any(|l| l.starts_with("put ")), "{table}");
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["ops"][0]["op"], "put");
        assert_eq!(json["total"]["ops"], 1);
        assert!(json["ops"][0]["latency_ms"]["p999"].is_number());
    }
}
