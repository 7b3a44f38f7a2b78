//! `meridian kv bench`: KV throughput and latency through this client.
//!
//! Workloads, each for `--duration` with `--concurrency` workers (one pooled keep-alive
//! connection each):
//!
//! - `put`: overwrite values of `--value-size` bytes; each worker owns its own keys.
//! - `get`: read random keys of the prepared set.
//! - `cas`: compare-and-set: each worker owns one key and writes it with `if_revision` set to
//!   the version its previous write returned (the uncontended cost of a CAS; a mismatch would
//!   count as an error).
//! - `watch`: a subscriber watches a prefix while `--watch-writers` writers put
//!   `--watch-writes` values in total; the latency of each event is the time from the put's
//!   acknowledgement (the client got the revision) to the event reaching the subscriber. Events
//!   that arrive before the writer has seen its acknowledgement count as 0.
//!
//! Before the measured phases, `--keys` keys are written (unmeasured); afterwards everything
//! under the run's prefix is deleted unless `--keep`.
//!
//! With `--compare-etcd` (built with the `etcd` feature, as the `meridian` binary is) the same
//! workloads then drive a plain etcd through Meridian's etcd client (gRPC), so both sets of
//! figures come from one run: a [`Target`] is what the workloads drive.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use hdrhistogram::Histogram;
use serde::Serialize;

use std::future::Future;

use futures::stream::BoxStream;

use crate::{BatchOp, Client, Error, PutOptions};

#[cfg(feature = "etcd")]
mod etcd;

/// A key-value store the workloads drive. Errors are short kinds (`version-mismatch`,
/// `transport`, `http-503-SlowDown`, ...), counted per kind.
pub trait Target: Clone + Send + Sync + 'static {
    /// Writes `value`; the key's new revision.
    fn put(&self, key: &str, value: Bytes) -> impl Future<Output = Result<u64, String>> + Send;
    /// Reads a key; whether it exists.
    fn get(&self, key: &str) -> impl Future<Output = Result<bool, String>> + Send;
    /// Writes only if the key is at `revision`: `Ok(new revision)`, or `Err(current)` on a
    /// mismatch.
    fn cas(
        &self,
        key: &str,
        value: Bytes,
        revision: u64,
    ) -> impl Future<Output = Result<Result<u64, u64>, String>> + Send;
    /// Writes many keys (unmeasured preparation).
    fn put_all(&self, keys: Vec<String>, value: Bytes) -> impl Future<Output = Result<(), String>> + Send;
    /// Deletes every key under `prefix`.
    fn delete_prefix(&self, prefix: &str) -> impl Future<Output = Result<(), String>> + Send;
    /// The store's current revision.
    fn revision(&self) -> impl Future<Output = Result<u64, String>> + Send;
    /// The revisions of changes under `prefix` from `since` on.
    fn watch(
        &self,
        prefix: &str,
        since: u64,
    ) -> impl Future<Output = Result<BoxStream<'static, Result<u64, String>>, String>> + Send;
}

impl Target for Client {
    async fn put(&self, key: &str, value: Bytes) -> Result<u64, String> {
        Client::put(self, key, value).await.map_err(|e| error_kind(&e))
    }

    async fn get(&self, key: &str) -> Result<bool, String> {
        Client::get(self, key).await.map(|e| e.is_some()).map_err(|e| error_kind(&e))
    }

    async fn cas(&self, key: &str, value: Bytes, revision: u64) -> Result<Result<u64, u64>, String> {
        match self.put_with(key, value, &PutOptions::default().if_revision(revision)).await {
            Ok(new) => Ok(Ok(new)),
            Err(Error::VersionMismatch { current, .. }) => Ok(Err(current)),
            Err(e) => Err(error_kind(&e)),
        }
    }

    async fn put_all(&self, keys: Vec<String>, value: Bytes) -> Result<(), String> {
        let chunks: Vec<Vec<String>> = keys.chunks(500).map(<[String]>::to_vec).collect();
        let results = futures::stream::iter(chunks)
            .map(|chunk| {
                let ops = chunk.into_iter().map(|k| BatchOp::put(k, value.clone())).collect();
                async move { self.batch(ops).await }
            })
            .buffer_unordered(4)
            .collect::<Vec<_>>()
            .await;
        results.into_iter().try_for_each(|r| r.map(|_| ())).map_err(|e| e.to_string())
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<(), String> {
        let keys: Vec<String> =
            self.list_all(prefix).await.map_err(|e| e.to_string())?.into_iter().map(|e| e.key).collect();
        for chunk in keys.chunks(1000) {
            self.batch(chunk.iter().map(BatchOp::delete).collect()).await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    async fn revision(&self) -> Result<u64, String> {
        Client::revision(self).await.map_err(|e| e.to_string())
    }

    async fn watch(&self, prefix: &str, since: u64) -> Result<BoxStream<'static, Result<u64, String>>, String> {
        let events = Client::watch(self, prefix, since).await.map_err(|e| e.to_string())?;
        Ok(events.map(|e| e.map(|e| e.revision).map_err(|e| e.to_string())).boxed())
    }
}

/// Workloads of the KV bench.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BenchWorkload {
    /// Overwrites.
    Put,
    /// Random reads.
    Get,
    /// Uncontended compare-and-set writes.
    Cas,
    /// Put-acknowledged → event-delivered latency.
    Watch,
}

/// Flags of `meridian kv bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Workloads to run, in this order.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "put,get,cas,watch")]
    pub workloads: Vec<BenchWorkload>,
    /// Concurrent workers of put, get and cas.
    #[arg(long, short = 'c', default_value_t = 32)]
    pub concurrency: usize,
    /// How long each of put, get and cas runs.
    #[arg(long, default_value = "10s", value_parser = crate::parse_duration)]
    pub duration: Duration,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Keys written before the run (read by get, overwritten by put).
    #[arg(long, default_value_t = 1000)]
    pub keys: usize,
    /// Writes observed by the watch workload.
    #[arg(long, default_value_t = 2000)]
    pub watch_writes: usize,
    /// Concurrent writers during the watch workload (1: one write at a time).
    #[arg(long, default_value_t = 1)]
    pub watch_writers: usize,
    /// Key prefix of the run (default: `kv-bench/RANDOM/`).
    #[arg(long)]
    pub prefix: Option<String>,
    /// Keep the keys afterwards.
    #[arg(long)]
    pub keep: bool,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also report this server process's CPU time per operation (Linux /proc).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Then run the same workloads against a plain etcd: `start` runs one (the `etcd` binary on
    /// PATH, or `--etcd-binary`, on a free loopback port with a data directory of its own under
    /// `--etcd-data-dir`, default fsync policy), or give an existing etcd's client URL(s),
    /// comma-separated.
    #[cfg(feature = "etcd")]
    #[arg(long, value_name = "start|URL[,URL...]")]
    pub compare_etcd: Option<String>,
    /// The etcd binary `--compare-etcd start` runs.
    #[cfg(feature = "etcd")]
    #[arg(long, default_value = "etcd")]
    pub etcd_binary: String,
    /// Where `--compare-etcd start` puts etcd's data directory (put it on the same file system
    /// as the Meridian node's data, so both pay the same fsync). Default: the system's temp dir.
    #[cfg(feature = "etcd")]
    #[arg(long)]
    pub etcd_data_dir: Option<std::path::PathBuf>,
}

/// Why a bench run stopped.
#[derive(Debug)]
pub enum BenchError {
    /// A client error outside the measured operations (bucket missing, auth, ...).
    Client(Error),
    /// Anything else.
    Other(String),
}

impl From<Error> for BenchError {
    fn from(e: Error) -> Self {
        BenchError::Client(e)
    }
}

/// The result of one workload.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    /// The store driven: `meridian` or `etcd`.
    pub system: String,
    /// Which workload.
    pub workload: BenchWorkload,
    /// Workers (watch: writers).
    pub concurrency: usize,
    /// Successful operations (watch: events measured).
    pub ops: u64,
    /// Failed operations by error.
    pub errors: HashMap<String, u64>,
    /// Seconds measured.
    pub seconds: f64,
    /// Operations per second (watch: writes per second).
    pub ops_per_sec: f64,
    /// Latency percentiles in ms: p50, p90, p99, p99.9, max.
    pub latency_ms: [f64; 5],
    /// CPU time of this process per operation, µs.
    pub client_cpu_us_per_op: Option<f64>,
    /// CPU time of the server process per operation, µs (with --server-pid).
    pub server_cpu_us_per_op: Option<f64>,
}

fn histogram() -> Histogram<u64> {
    // 1 µs .. 1 h, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant histogram bounds are valid")
}

/// CPU time (user + system) of a process, from /proc, in µs.
fn cpu_us(pid: Option<u32>) -> Option<u64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".into(),
    };
    let text = std::fs::read_to_string(path).ok()?;
    let after = text.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime) are 12 and 13 after the command name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks * 10_000) // USER_HZ is 100 on Linux
}

struct Worker {
    hist: Histogram<u64>,
    ops: u64,
    errors: HashMap<String, u64>,
}

impl Worker {
    fn new() -> Self {
        Worker { hist: histogram(), ops: 0, errors: HashMap::new() }
    }

    fn record(&mut self, started: Instant, result: Result<(), String>) {
        match result {
            Ok(()) => {
                self.ops += 1;
                let _ = self.hist.record((started.elapsed().as_micros() as u64).max(1));
            }
            Err(kind) => *self.errors.entry(kind).or_default() += 1,
        }
    }
}

fn error_kind(e: &Error) -> String {
    match e {
        Error::VersionMismatch { .. } => "version-mismatch".into(),
        Error::LockContended { .. } => "lock-contended".into(),
        Error::Transport(_) => "transport".into(),
        Error::Service { status, code, .. } => format!("http-{status}-{code}"),
        other => format!("{other}"),
    }
}

fn percentiles(h: &Histogram<u64>) -> [f64; 5] {
    let ms = |v: u64| v as f64 / 1000.0;
    [
        ms(h.value_at_quantile(0.50)),
        ms(h.value_at_quantile(0.90)),
        ms(h.value_at_quantile(0.99)),
        ms(h.value_at_quantile(0.999)),
        ms(h.max()),
    ]
}

/// Runs the bench with `kv` (its bucket is created if missing) and prints the results; then,
/// with `--compare-etcd`, the same workloads against etcd.
pub async fn run(kv: &Client, args: &BenchArgs) -> Result<(), BenchError> {
    if args.concurrency == 0 || args.keys == 0 {
        return Err(BenchError::Other("--concurrency and --keys must be at least 1".into()));
    }
    kv.create_bucket().await?;
    eprintln!("kv bench: {} on bucket {:?}", kv.endpoint(), kv.bucket());
    #[cfg_attr(not(feature = "etcd"), allow(unused_mut))]
    let mut results = run_workloads("meridian", kv, args, args.server_pid).await?;
    #[cfg(feature = "etcd")]
    if let Some(spec) = &args.compare_etcd {
        let etcd = etcd::Etcd::open(spec, args).await.map_err(BenchError::Other)?;
        eprintln!("kv bench: etcd at {}", etcd.endpoints());
        results.extend(run_workloads("etcd", etcd.target(), args, etcd.pid()).await?);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results).map_err(|e| BenchError::Other(e.to_string()))?);
    }
    Ok(())
}

/// Every workload of `args` against `target`, printed as they finish (unless `--json`).
async fn run_workloads<T: Target>(
    system: &str,
    target: &T,
    args: &BenchArgs,
    server_pid: Option<u32>,
) -> Result<Vec<BenchResult>, BenchError> {
    let prefix = args.prefix.clone().unwrap_or_else(|| format!("kv-bench/{:08x}/", rand_u32()));
    let value = Bytes::from(vec![b'v'; args.value_size]);
    eprintln!("{system}: preparing {} keys of {} bytes under {prefix:?}...", args.keys, args.value_size);
    let keys = (0..args.keys).map(|n| key(&prefix, n)).collect();
    target.put_all(keys, value.clone()).await.map_err(BenchError::Other)?;
    let run = Run { system, prefix: &prefix, args, value: &value, server_pid };
    let mut results = Vec::new();
    for workload in &args.workloads {
        eprintln!("{system}: running {workload:?}...");
        let result = match workload {
            BenchWorkload::Watch => watch_latency(target, &run).await?,
            w => throughput(target, &run, *w).await?,
        };
        if !args.json {
            print_result(&result);
        }
        results.push(result);
    }
    if !args.keep {
        eprintln!("{system}: cleaning up {prefix:?}...");
        target.delete_prefix(&prefix).await.map_err(BenchError::Other)?;
    }
    Ok(results)
}

/// What every workload of one run shares.
struct Run<'a> {
    system: &'a str,
    prefix: &'a str,
    args: &'a BenchArgs,
    value: &'a Bytes,
    server_pid: Option<u32>,
}

fn rand_u32() -> u32 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    (nanos as u32) ^ std::process::id().rotate_left(16)
}

fn print_result(r: &BenchResult) {
    let [p50, p90, p99, p999, max] = r.latency_ms;
    let errors: u64 = r.errors.iter().filter(|(k, _)| !k.starts_with("info:")).map(|(_, v)| v).sum();
    let cpu = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0}"));
    println!(
        "{:<8} {:<6} c={:<3} {:>9.0} ops/s  latency ms p50 {p50:.2} / p90 {p90:.2} / p99 {p99:.2} / p99.9 {p999:.2} / max {max:.1}  \
         ops {}  errors {errors}  cpu µs/op client {} server {}",
        r.system,
        format!("{:?}", r.workload).to_lowercase(),
        r.concurrency,
        r.ops_per_sec,
        r.ops,
        cpu(r.client_cpu_us_per_op),
        cpu(r.server_cpu_us_per_op),
    );
    if !r.errors.is_empty() {
        println!("       errors: {:?}", r.errors);
    }
}

fn key(prefix: &str, n: usize) -> String {
    format!("{prefix}k/{n:08}")
}

async fn throughput<T: Target>(target: &T, run: &Run<'_>, workload: BenchWorkload) -> Result<BenchResult, BenchError> {
    let (args, prefix, value) = (run.args, run.prefix, run.value);
    let c = args.concurrency;
    // CAS: each worker's own key, at a known version.
    let mut cas_revisions = Vec::new();
    if workload == BenchWorkload::Cas {
        for w in 0..c {
            cas_revisions
                .push(target.put(&format!("{prefix}cas/{w:04}"), value.clone()).await.map_err(BenchError::Other)?);
        }
    }
    let client_cpu0 = cpu_us(None);
    let server_cpu0 = run.server_pid.and_then(|p| cpu_us(Some(p)));
    let started = Instant::now();
    let deadline = started + args.duration;
    let mut tasks = Vec::new();
    for w in 0..c {
        let target = target.clone();
        let value = value.clone();
        let prefix = prefix.to_string();
        let keys = args.keys;
        let mut revision = cas_revisions.get(w).copied().unwrap_or(0);
        tasks.push(tokio::spawn(async move {
            let mut worker = Worker::new();
            let mut i: usize = 0;
            let mut rng = (w as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            while Instant::now() < deadline {
                let t = Instant::now();
                let result = match workload {
                    BenchWorkload::Put => {
                        // Worker w owns the keys n ≡ w (mod c).
                        let n = (w + i * c) % keys.max(c);
                        target.put(&key(&prefix, n % keys), value.clone()).await.map(|_| ())
                    }
                    BenchWorkload::Get => {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        let n = (rng % keys as u64) as usize;
                        match target.get(&key(&prefix, n)).await {
                            Ok(true) => Ok(()),
                            Ok(false) => Err("prepared key missing".to_string()),
                            Err(e) => Err(e),
                        }
                    }
                    BenchWorkload::Cas => {
                        match target.cas(&format!("{prefix}cas/{w:04}"), value.clone(), revision).await {
                            Ok(Ok(new)) => {
                                revision = new;
                                Ok(())
                            }
                            Ok(Err(current)) => {
                                revision = current;
                                Err("version-mismatch".to_string())
                            }
                            Err(e) => Err(e),
                        }
                    }
                    BenchWorkload::Watch => Ok(()),
                };
                // Requests still in flight at the deadline are not counted.
                if Instant::now() <= deadline {
                    worker.record(t, result);
                }
                i += 1;
            }
            worker
        }));
    }
    let mut hist = histogram();
    let mut ops = 0;
    let mut errors: HashMap<String, u64> = HashMap::new();
    for task in tasks {
        let worker = task.await.map_err(|e| BenchError::Other(format!("worker failed: {e}")))?;
        let _ = hist.add(&worker.hist);
        ops += worker.ops;
        for (k, v) in worker.errors {
            *errors.entry(k).or_default() += v;
        }
    }
    let seconds = args.duration.as_secs_f64();
    let per_op = |before: Option<u64>, after: Option<u64>| match (before, after) {
        (Some(b), Some(a)) if ops > 0 => Some((a.saturating_sub(b)) as f64 / ops as f64),
        _ => None,
    };
    Ok(BenchResult {
        system: run.system.to_string(),
        workload,
        concurrency: c,
        ops,
        errors,
        seconds,
        ops_per_sec: ops as f64 / seconds,
        latency_ms: percentiles(&hist),
        client_cpu_us_per_op: per_op(client_cpu0, cpu_us(None)),
        server_cpu_us_per_op: per_op(server_cpu0, run.server_pid.and_then(|p| cpu_us(Some(p)))),
    })
}

async fn watch_latency<T: Target>(target: &T, run: &Run<'_>) -> Result<BenchResult, BenchError> {
    let (args, value) = (run.args, run.value);
    let watch_prefix = format!("{}w/", run.prefix);
    let since = target.revision().await.map_err(BenchError::Other)? + 1;
    let mut events = target.watch(&watch_prefix, since).await.map_err(BenchError::Other)?;
    let total = args.watch_writes;
    let arrivals: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let subscriber = {
        let arrivals = Arc::clone(&arrivals);
        tokio::spawn(async move {
            let mut seen = 0;
            while seen < total {
                match tokio::time::timeout(Duration::from_secs(30), events.next()).await {
                    Ok(Some(Ok(revision))) => {
                        if let Ok(mut a) = arrivals.lock() {
                            a.insert(revision, Instant::now());
                        }
                        seen += 1;
                    }
                    Ok(Some(Err(e))) => return Err(format!("watch failed: {e}")),
                    Ok(None) => return Err("watch ended".to_string()),
                    Err(_) => return Err(format!("no event for 30 s after {seen} of {total}")),
                }
            }
            Ok(())
        })
    };
    let client_cpu0 = cpu_us(None);
    let server_cpu0 = run.server_pid.and_then(|p| cpu_us(Some(p)));
    let started = Instant::now();
    let writers = args.watch_writers.max(1);
    let acks: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let (target, value, acks, next, prefix) =
            (target.clone(), value.clone(), Arc::clone(&acks), Arc::clone(&next), watch_prefix.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    return Ok::<(), String>(());
                }
                let revision = target.put(&format!("{prefix}{i:08}"), value.clone()).await?;
                if let Ok(mut a) = acks.lock() {
                    a.insert(revision, Instant::now());
                }
            }
        }));
    }
    for task in tasks {
        task.await.map_err(|e| BenchError::Other(format!("writer failed: {e}")))?.map_err(BenchError::Other)?;
    }
    let write_seconds = started.elapsed().as_secs_f64();
    subscriber.await.map_err(|e| BenchError::Other(format!("subscriber failed: {e}")))?.map_err(BenchError::Other)?;
    let client_cpu1 = cpu_us(None);
    let server_cpu1 = run.server_pid.and_then(|p| cpu_us(Some(p)));
    let acks = acks.lock().map_err(|_| BenchError::Other("poisoned".into()))?;
    let arrivals = arrivals.lock().map_err(|_| BenchError::Other("poisoned".into()))?;
    let mut hist = histogram();
    let mut early = 0u64;
    for (rev, ack) in acks.iter() {
        if let Some(arrived) = arrivals.get(rev) {
            let us = arrived.saturating_duration_since(*ack).as_micros() as u64;
            if us == 0 {
                early += 1;
            }
            let _ = hist.record(us.max(1));
        }
    }
    let ops = hist.len();
    let mut errors = HashMap::new();
    if early > 0 {
        // Not errors: events that beat the writer's own acknowledgement.
        errors.insert("info:event-before-ack".to_string(), early);
    }
    let per_op = |b: Option<u64>, a: Option<u64>| match (b, a) {
        (Some(b), Some(a)) if ops > 0 => Some(a.saturating_sub(b) as f64 / ops as f64),
        _ => None,
    };
    Ok(BenchResult {
        system: run.system.to_string(),
        workload: BenchWorkload::Watch,
        concurrency: writers,
        ops,
        errors,
        seconds: write_seconds,
        ops_per_sec: total as f64 / write_seconds,
        latency_ms: percentiles(&hist),
        client_cpu_us_per_op: per_op(client_cpu0, client_cpu1),
        server_cpu_us_per_op: per_op(server_cpu0, server_cpu1),
    })
}
