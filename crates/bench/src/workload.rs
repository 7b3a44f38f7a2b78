//! The run: set up the target, prepare objects (unmeasured), run the
//! workers until the deadline or the operation count, clean up, report.

use crate::files::FilesTarget;
use crate::nullhttp::NullHttpServer;
use crate::report::{OpKind, Recorder, Report, ServerStats};
use crate::s3::{Conn, Endpoint, OpError, S3Client};
use crate::spec::{MixOp, SizeSpec, Weights};
use crate::{BenchArgs, BenchError, TargetSpec, Workload};
use bytes::Bytes;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::time::Instant as TokioInstant;

/// Where operations go.
#[derive(Clone)]
enum Backend {
    S3(Arc<S3Client>),
    Files(Arc<FilesTarget>),
}

/// One worker's connection to the backend (and to the web server reads go to, if any).
struct Worker {
    backend: Backend,
    conn: Conn,
    reader: Option<(Arc<S3Client>, Conn)>,
}

impl Worker {
    fn new(backend: &Backend) -> Self {
        Self { backend: backend.clone(), conn: Conn::default(), reader: None }
    }

    /// A worker whose GETs and HEADs go to `reader` (unsigned).
    fn reading_from(backend: &Backend, reader: Option<&Arc<S3Client>>) -> Self {
        Self { reader: reader.map(|r| (r.clone(), Conn::default())), ..Self::new(backend) }
    }

    async fn put(&mut self, key: &str, body: Bytes) -> Result<(), OpError> {
        match &self.backend {
            Backend::S3(c) => c.put(&mut self.conn, key, body).await,
            Backend::Files(f) => f.put(key, body).await,
        }
    }

    async fn get(&mut self, key: &str) -> Result<u64, OpError> {
        if let Some((reader, conn)) = &mut self.reader {
            return reader.get(conn, key).await;
        }
        match &self.backend {
            Backend::S3(c) => c.get(&mut self.conn, key).await,
            Backend::Files(f) => f.get(key).await,
        }
    }

    async fn head(&mut self, key: &str) -> Result<(), OpError> {
        if let Some((reader, conn)) = &mut self.reader {
            return reader.head(conn, key).await;
        }
        match &self.backend {
            Backend::S3(c) => c.head(&mut self.conn, key).await,
            Backend::Files(f) => f.head(key).await,
        }
    }

    async fn delete(&mut self, key: &str) -> Result<(), OpError> {
        match &self.backend {
            Backend::S3(c) => c.delete(&mut self.conn, key).await,
            Backend::Files(f) => f.delete(key).await,
        }
    }

    async fn list(&mut self, prefix: &str, start_after: Option<&str>, max: u32) -> Result<usize, OpError> {
        match &self.backend {
            Backend::S3(c) => c.list(&mut self.conn, prefix, start_after, None, max).await.map(|p| p.keys.len()),
            Backend::Files(f) => f.list(prefix, start_after, max).await.map(|v| v.len()),
        }
    }
}

/// State shared by all workers of a run.
struct Shared {
    workload: Workload,
    prefix: String,
    size: SizeSpec,
    part_size: u64,
    payload: Bytes,
    prepared: u64,
    /// `--put-keys`: PUTs go to this many shared keys.
    put_keys: Option<u64>,
    concurrency: usize,
    prepare_concurrency: usize,
    list_max_keys: u32,
    weights: Weights,
    timeout: Duration,
    /// Set once, when the measured phase starts.
    deadline: std::sync::OnceLock<Option<TokioInstant>>,
    ops_limit: Option<u64>,
    ops_claimed: AtomicU64,
    delete_next: AtomicU64,
    done_ops: AtomicU64,
    done_bytes: AtomicU64,
    errors: AtomicU64,
    inflight_uploads: Mutex<Vec<(String, String)>>,
    is_null: bool,
}

impl Shared {
    fn deadline(&self) -> Option<TokioInstant> {
        self.deadline.get().copied().flatten()
    }
}

/// Where prepared objects are mirrored as files: `DIR/BUCKET/PREFIX` + the prepared key's
/// name. Only the bench's own key names (and a prefix without `..`) become paths.
#[derive(Clone)]
struct Mirror {
    dir: std::path::PathBuf,
    prefix: String,
}

impl Mirror {
    fn new(root: &std::path::Path, bucket: &str, prefix: &str) -> Result<Mirror, BenchError> {
        if prefix.split('/').any(|part| part == ".." || part == ".") || prefix.starts_with('/') {
            return Err(BenchError::Args(format!(
                "--mirror-dir needs a prefix without '.', '..' or a leading '/': {prefix:?}"
            )));
        }
        let (dirs, name_start) = match prefix.rsplit_once('/') {
            Some((dirs, name_start)) => (dirs, name_start),
            None => ("", prefix),
        };
        let dir = root.join(bucket).join(dirs);
        std::fs::create_dir_all(&dir)?;
        Ok(Mirror { dir, prefix: name_start.to_string() })
    }

    async fn write(&self, i: u64, body: &Bytes) -> std::io::Result<()> {
        tokio::fs::write(self.dir.join(prepared_key(&self.prefix, i)), body).await
    }
}

fn prepared_key(prefix: &str, i: u64) -> String {
    format!("{prefix}p{i:09}")
}

fn new_key(prefix: &str, worker: usize, n: u64) -> String {
    format!("{prefix}w{worker:04}-{n:09}")
}

pub(crate) async fn run(args: BenchArgs) -> Result<Report, BenchError> {
    if args.concurrency == 0 {
        return Err(BenchError::Args("--concurrency must be at least 1".into()));
    }
    if args.list_max_keys == 0 || args.list_max_keys > 1000 {
        return Err(BenchError::Args("--list-max-keys must be 1..=1000".into()));
    }
    if args.workload == Workload::Multipart && args.part_size < 5 << 20 && args.target == TargetSpec::S3 {
        return Err(BenchError::Args(
            "--part-size must be at least 5MiB (S3's minimum for all but the last part)".into(),
        ));
    }
    if args.size.max() > 16 << 30 {
        return Err(BenchError::Args("--size above 16GiB is not supported".into()));
    }
    let duration = match (args.duration, args.ops) {
        (Some(d), _) => Some(d.0),
        (None, Some(_)) => None,
        (None, None) => Some(Duration::from_secs(10)),
    };
    let show_progress = !args.json && !args.no_progress && std::io::stderr().is_terminal();

    // The payload all PUTs slice from: random, so compression cannot cheat.
    let payload_len = match args.workload {
        Workload::Multipart => args.part_size.max(args.size.max().min(args.part_size)),
        _ => args.size.max(),
    };
    let payload = {
        let mut v = vec![0u8; usize::try_from(payload_len).map_err(|_| BenchError::Args("size too large".into()))?];
        SmallRng::from_os_rng().fill_bytes(&mut v);
        Bytes::from(v)
    };

    let run_id = format!("{:08x}", rand::rng().random::<u32>());
    let prefix = args.prefix.clone().unwrap_or_else(|| format!("meridian-bench/{run_id}/"));

    // Target.
    let mut _null: Option<NullHttpServer> = None;
    let (backend, target_name) = match &args.target {
        TargetSpec::S3 => {
            let url = args
                .endpoint
                .as_deref()
                .ok_or_else(|| BenchError::Args("--endpoint http://HOST:PORT is required for the s3 target".into()))?;
            let ep = Endpoint::parse(url).await.map_err(BenchError::Endpoint)?;
            let (Some(ak), Some(sk)) = (args.access_key.as_deref(), args.secret_key.as_deref()) else {
                return Err(BenchError::Args(
                    "credentials missing: pass --access-key and --secret-key or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".into(),
                ));
            };
            let c = S3Client::with_sse(&ep, &args.bucket, Some((ak, sk)), &args.region, args.sse.clone());
            (Backend::S3(c), format!("s3 {url}"))
        }
        TargetSpec::NullHttp => {
            let srv = NullHttpServer::start(args.size, payload.clone())
                .map_err(|e| BenchError::Setup(format!("null-http server: {e}")))?;
            let ep = Endpoint::parse(&format!("http://{}", srv.addr())).await.map_err(BenchError::Endpoint)?;
            // Sign with dummy credentials so the client does the same work as for S3.
            let c = S3Client::new(&ep, &args.bucket, Some(("bench", "bench-secret")), &args.region);
            let name = format!("null-http ({})", srv.addr());
            _null = Some(srv);
            (Backend::S3(c), name)
        }
        TargetSpec::Files(dir) => {
            let f = FilesTarget::new(dir).map_err(|e| BenchError::Setup(format!("{}: {e}", dir.display())))?;
            (Backend::Files(f), format!("files:{}", dir.display()))
        }
    };

    let mut created_bucket = false;
    if args.create_bucket
        && let Backend::S3(c) = &backend
    {
        created_bucket = c
            .create_bucket(&mut Conn::default())
            .await
            .map_err(|e| BenchError::Setup(format!("create bucket {:?}: {e}", c.bucket())))?;
    }

    // Server sampling.
    let sampler = args.server_pid.map(ServerSampler::start);

    let prepared = match args.workload {
        Workload::Put | Workload::Multipart => 0,
        _ => args.prepare_objects.unwrap_or(args.objects),
    };
    let reader = match &args.read_endpoint {
        Some(url) => {
            let ep = Endpoint::parse(url).await.map_err(BenchError::Endpoint)?;
            Some(S3Client::new(&ep, &args.bucket, None, &args.region))
        }
        None => None,
    };
    let mirror = match &args.mirror_dir {
        Some(dir) => Some(Mirror::new(dir, &args.bucket, &prefix)?),
        None => None,
    };
    let shared = Arc::new(Shared {
        workload: args.workload,
        prefix: prefix.clone(),
        size: args.size,
        part_size: args.part_size,
        payload,
        prepared,
        put_keys: args.put_keys,
        concurrency: args.concurrency,
        prepare_concurrency: args.prepare_concurrency.unwrap_or(args.concurrency.max(16)).max(1),
        list_max_keys: args.list_max_keys,
        weights: args.weights.clone().unwrap_or_default(),
        timeout: args.timeout.0,
        deadline: std::sync::OnceLock::new(),
        ops_limit: args.ops,
        ops_claimed: AtomicU64::new(0),
        delete_next: AtomicU64::new(0),
        done_ops: AtomicU64::new(0),
        done_bytes: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        inflight_uploads: Mutex::new(Vec::new()),
        is_null: matches!(args.target, TargetSpec::NullHttp),
    });

    // Prepare (not measured).
    let prep_start = Instant::now();
    if prepared > 0 && !args.prepared {
        let r = prepare(&shared, &backend, mirror.as_ref(), show_progress).await;
        if let Err(e) = r {
            let mut errs = Vec::new();
            cleanup(&shared, &backend, created_bucket, &mut errs).await;
            return Err(e);
        }
    }
    let prepare_secs = prep_start.elapsed().as_secs_f64();

    // Measure.
    let cpu0 = read_cpu_secs("self");
    let server_cpu0 = args.server_pid.and_then(|p| read_cpu_secs(&p.to_string()));
    let start = TokioInstant::now();
    let _ = shared.deadline.set(duration.map(|d| start + d));
    let pb = progress_bar(show_progress, &shared, duration);
    let ticker = {
        let pb = pb.clone();
        let sh = shared.clone();
        tokio::spawn(async move {
            let mut iv = tokio::time::interval(Duration::from_millis(250));
            loop {
                iv.tick().await;
                let el = start.elapsed();
                let ops = sh.done_ops.load(Ordering::Relaxed);
                let bytes = sh.done_bytes.load(Ordering::Relaxed);
                let secs = el.as_secs_f64().max(1e-3);
                pb.set_message(format!(
                    "{ops} ops  {:.0} ops/s  {:.1} MiB/s  {} errors",
                    ops as f64 / secs,
                    bytes as f64 / secs / 1048576.0,
                    sh.errors.load(Ordering::Relaxed)
                ));
                match (sh.deadline(), sh.ops_limit) {
                    (Some(_), _) => pb.set_position(el.as_millis() as u64),
                    (None, Some(_)) => pb.set_position(ops),
                    _ => {}
                }
            }
        })
    };
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..args.concurrency {
        let sh = shared.clone();
        let worker = Worker::reading_from(&backend, reader.as_ref());
        tasks.spawn(worker_loop(sh, w, worker));
    }
    let mut rec = Recorder::default();
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(r) => rec.merge(&r),
            Err(e) => return Err(BenchError::Setup(format!("worker task failed: {e}"))),
        }
    }
    let elapsed = start.elapsed();
    ticker.abort();
    pb.finish_and_clear();
    let client_cpu_secs = match (cpu0, read_cpu_secs("self")) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let server_cpu = match (server_cpu0, args.server_pid.and_then(|p| read_cpu_secs(&p.to_string()))) {
        (Some(a), Some(b)) => b - a,
        _ => 0.0,
    };
    let server = sampler.map(|s| s.finish(server_cpu));

    // Clean up (not measured).
    let mut cleanup_errors = Vec::new();
    let cleaned_up = if args.keep { 0 } else { cleanup(&shared, &backend, created_bucket, &mut cleanup_errors).await };

    let ops = rec.op_reports(elapsed);
    let total = Report::totals(&ops, elapsed);
    Ok(Report {
        label: args.label.clone(),
        target: target_name,
        workload: args.workload.name().into(),
        size: if args.workload == Workload::Multipart {
            format!("{} in {} parts", args.size, crate::spec::format_size(args.part_size))
        } else {
            args.size.to_string()
        },
        concurrency: args.concurrency,
        prepared_objects: prepared,
        prepare_secs,
        duration_secs: elapsed.as_secs_f64(),
        ops,
        total,
        client_cpu_secs,
        server,
        cleaned_up,
        cleanup_errors,
    })
}

fn progress_bar(show: bool, sh: &Shared, duration: Option<Duration>) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let len = match (duration, sh.ops_limit) {
        (Some(d), _) => d.as_millis() as u64,
        (None, Some(n)) => n,
        _ => 0,
    };
    let pb = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{spinner} {prefix} [{bar:30}] {elapsed}  {msg}") {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_prefix(sh.workload.name());
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}

async fn prepare(
    shared: &Arc<Shared>,
    backend: &Backend,
    mirror: Option<&Mirror>,
    show: bool,
) -> Result<(), BenchError> {
    let pb = if show {
        let pb = ProgressBar::with_draw_target(Some(shared.prepared), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template("{spinner} prepare [{bar:30}] {pos}/{len} objects {elapsed}") {
            pb.set_style(style.progress_chars("=> "));
        }
        pb
    } else {
        ProgressBar::hidden()
    };
    let next = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let first_err: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..shared.prepare_concurrency {
        let sh = shared.clone();
        let next = next.clone();
        let failed = failed.clone();
        let first_err = first_err.clone();
        let pb = pb.clone();
        let mut worker = Worker::new(backend);
        let mirror = mirror.cloned();
        tasks.spawn(async move {
            let mut rng = SmallRng::from_os_rng();
            loop {
                if failed.load(Ordering::Relaxed) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= sh.prepared {
                    break;
                }
                let size = sh.size.sample(&mut rng) as usize;
                let body = sh.payload.slice(..size.min(sh.payload.len()));
                let key = prepared_key(&sh.prefix, i);
                if let Some(mirror) = &mirror
                    && let Err(e) = mirror.write(i, &body).await
                {
                    failed.store(true, Ordering::Relaxed);
                    if let Ok(mut g) = first_err.lock() {
                        g.get_or_insert_with(|| format!("mirror {key}: {e}"));
                    }
                    break;
                }
                let r = tokio::time::timeout(sh.timeout, worker.put(&key, body)).await;
                let r = r.unwrap_or(Err(OpError::Timeout));
                if let Err(e) = r {
                    failed.store(true, Ordering::Relaxed);
                    if let Ok(mut g) = first_err.lock() {
                        g.get_or_insert_with(|| format!("PUT {key}: {e}"));
                    }
                    break;
                }
                pb.inc(1);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    pb.finish_and_clear();
    if failed.load(Ordering::Relaxed) {
        let msg = first_err.lock().ok().and_then(|g| g.clone()).unwrap_or_else(|| "unknown error".into());
        return Err(BenchError::Prepare(msg));
    }
    Ok(())
}

/// One planned operation.
enum Planned {
    Put(String),
    Get(String),
    Head(String),
    Delete(String),
    List(Option<String>),
    Multipart(String),
}

impl Planned {
    fn kind(&self) -> OpKind {
        match self {
            Planned::Put(_) => OpKind::Put,
            Planned::Get(_) => OpKind::Get,
            Planned::Head(_) => OpKind::Head,
            Planned::Delete(_) => OpKind::Delete,
            Planned::List(_) => OpKind::List,
            Planned::Multipart(_) => OpKind::Multipart,
        }
    }
}

async fn worker_loop(sh: Arc<Shared>, w: usize, mut worker: Worker) -> Recorder {
    let mut rec = Recorder::default();
    let mut rng = SmallRng::from_os_rng();
    // Mixed: the keys this worker owns (no other worker touches them, so a
    // GET never races a DELETE of the same key).
    let mut own: Vec<String> = Vec::new();
    if sh.workload == Workload::Mixed {
        let mut i = w as u64;
        while i < sh.prepared {
            own.push(prepared_key(&sh.prefix, i));
            i += sh.concurrency as u64;
        }
    }
    let mut next_new: u64 = 0;
    loop {
        if let Some(limit) = sh.ops_limit
            && sh.ops_claimed.fetch_add(1, Ordering::Relaxed) >= limit
        {
            break;
        }
        if let Some(d) = sh.deadline()
            && TokioInstant::now() >= d
        {
            break;
        }
        let planned = match sh.workload {
            Workload::Put => match sh.put_keys {
                Some(keys) => Planned::Put(format!("{}shared-{:06}", sh.prefix, rng.random_range(0..keys))),
                None => {
                    next_new += 1;
                    Planned::Put(new_key(&sh.prefix, w, next_new))
                }
            },
            Workload::Multipart => {
                next_new += 1;
                Planned::Multipart(new_key(&sh.prefix, w, next_new))
            }
            Workload::Get => Planned::Get(prepared_key(&sh.prefix, rng.random_range(0..sh.prepared.max(1)))),
            Workload::Head => Planned::Head(prepared_key(&sh.prefix, rng.random_range(0..sh.prepared.max(1)))),
            Workload::Delete => {
                let i = sh.delete_next.fetch_add(1, Ordering::Relaxed);
                if i >= sh.prepared {
                    break;
                }
                Planned::Delete(prepared_key(&sh.prefix, i))
            }
            Workload::List => Planned::List(list_start(&sh, &mut rng)),
            Workload::Mixed => match sh.weights.pick(&mut rng) {
                MixOp::Get if !own.is_empty() => Planned::Get(own[rng.random_range(0..own.len())].clone()),
                MixOp::Head if !own.is_empty() => Planned::Head(own[rng.random_range(0..own.len())].clone()),
                MixOp::Delete if !own.is_empty() => {
                    let i = rng.random_range(0..own.len());
                    Planned::Delete(own.swap_remove(i))
                }
                MixOp::List => Planned::List(list_start(&sh, &mut rng)),
                // PUT, or GET/HEAD/DELETE with nothing left to act on.
                _ => {
                    next_new += 1;
                    let k = new_key(&sh.prefix, w, next_new);
                    own.push(k.clone());
                    Planned::Put(k)
                }
            },
        };
        let kind = planned.kind();
        let started = Instant::now();
        let op = execute(&sh, &mut worker, &planned, &mut rec, &mut rng);
        let res = match sh.deadline() {
            Some(d) => tokio::select! {
                r = tokio::time::timeout(sh.timeout, op) => r,
                _ = tokio::time::sleep_until(d) => {
                    // Cut off at the deadline: not counted, connection dropped.
                    worker.conn = Conn::default();
                    break;
                }
            },
            None => tokio::time::timeout(sh.timeout, op).await,
        };
        let res = res.unwrap_or(Err(OpError::Timeout));
        let latency = started.elapsed();
        match res {
            Ok(bytes) => {
                rec.ok(kind, latency, bytes);
                sh.done_ops.fetch_add(1, Ordering::Relaxed);
                sh.done_bytes.fetch_add(bytes, Ordering::Relaxed);
            }
            Err(e) => {
                if matches!(e, OpError::Timeout | OpError::Transport(_)) {
                    worker.conn = Conn::default();
                }
                rec.err(kind, &e);
                sh.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    rec
}

fn list_start(sh: &Shared, rng: &mut SmallRng) -> Option<String> {
    let span = sh.prepared.saturating_sub(u64::from(sh.list_max_keys));
    if span == 0 { None } else { Some(prepared_key(&sh.prefix, rng.random_range(0..span))) }
}

/// Runs one operation; returns payload bytes moved.
async fn execute(
    sh: &Shared,
    worker: &mut Worker,
    planned: &Planned,
    rec: &mut Recorder,
    rng: &mut SmallRng,
) -> Result<u64, OpError> {
    match planned {
        Planned::Put(key) => {
            let size = sh.size.sample(rng) as usize;
            let body = sh.payload.slice(..size.min(sh.payload.len()));
            let n = body.len() as u64;
            worker.put(key, body).await.map(|_| n)
        }
        Planned::Get(key) => worker.get(key).await,
        Planned::Head(key) => worker.head(key).await.map(|_| 0),
        Planned::Delete(key) => worker.delete(key).await.map(|_| 0),
        Planned::List(start) => {
            let n = worker.list(&sh.prefix, start.as_deref(), sh.list_max_keys).await?;
            if n == 0 && sh.prepared > 0 && !sh.is_null {
                return Err(OpError::BadResponse("listing returned no keys".into()));
            }
            Ok(0)
        }
        Planned::Multipart(key) => multipart(sh, worker, key, rec, rng).await,
    }
}

async fn multipart(
    sh: &Shared,
    worker: &mut Worker,
    key: &str,
    rec: &mut Recorder,
    rng: &mut SmallRng,
) -> Result<u64, OpError> {
    let total = sh.size.sample(rng);
    let part = sh.part_size.max(1);
    let mut sizes = Vec::new();
    let mut left = total;
    while left > 0 {
        let n = left.min(part);
        sizes.push(n);
        left -= n;
    }
    if sizes.is_empty() {
        sizes.push(0);
    }
    let bodies: Vec<Bytes> = sizes.iter().map(|&n| sh.payload.slice(..(n as usize).min(sh.payload.len()))).collect();
    let client = match &worker.backend {
        Backend::Files(f) => {
            let f = f.clone();
            return f.put_parts(key, bodies).await.map(|_| total);
        }
        Backend::S3(c) => c.clone(),
    };
    let upload_id = client.create_multipart(&mut worker.conn, key).await?;
    if let Ok(mut g) = sh.inflight_uploads.lock() {
        g.push((key.to_owned(), upload_id.clone()));
    }
    let mut etags = Vec::with_capacity(bodies.len());
    for (i, body) in bodies.into_iter().enumerate() {
        let n = body.len() as u64;
        let pn = (i + 1) as u32;
        let t = Instant::now();
        match client.upload_part(&mut worker.conn, key, &upload_id, pn, body).await {
            Ok(etag) => {
                rec.ok(OpKind::Part, t.elapsed(), n);
                etags.push((pn, etag));
            }
            Err(e) => {
                rec.err(OpKind::Part, &e);
                return Err(e);
            }
        }
    }
    client.complete_multipart(&mut worker.conn, key, &upload_id, &etags).await?;
    if let Ok(mut g) = sh.inflight_uploads.lock() {
        g.retain(|(k, u)| !(k == key && *u == upload_id));
    }
    Ok(total)
}

/// Deletes everything under the run's prefix; returns how many objects.
async fn cleanup(sh: &Shared, backend: &Backend, created_bucket: bool, errors: &mut Vec<String>) -> u64 {
    match backend {
        Backend::Files(f) => match f.remove_prefix(&sh.prefix).await {
            Ok(n) => n,
            Err(e) => {
                errors.push(format!("removing {}: {e}", sh.prefix));
                0
            }
        },
        Backend::S3(c) => {
            let mut conn = Conn::default();
            let uploads: Vec<(String, String)> =
                sh.inflight_uploads.lock().map(|mut g| std::mem::take(&mut *g)).unwrap_or_default();
            for (key, id) in uploads {
                if let Err(e) = c.abort_multipart(&mut conn, &key, &id).await
                    && !matches!(&e, OpError::Http { status: 404, .. })
                {
                    errors.push(format!("abort upload of {key}: {e}"));
                }
            }
            let removed = delete_prefix(c, &sh.prefix, sh.concurrency.clamp(1, 16), errors).await;
            if created_bucket && let Err(e) = c.delete_bucket(&mut conn).await {
                errors.push(format!("delete bucket {}: {e}", c.bucket()));
            }
            removed
        }
    }
}

async fn delete_prefix(c: &Arc<S3Client>, prefix: &str, parallel: usize, errors: &mut Vec<String>) -> u64 {
    let mut conn = Conn::default();
    let mut removed = 0u64;
    let mut batch_delete_works = true;
    // Each round lists from the start: what was deleted is gone, so no
    // continuation token is needed and nothing is skipped.
    for _round in 0..1_000_000 {
        let page = match c.list(&mut conn, prefix, None, None, 1000).await {
            Ok(p) => p,
            Err(e) => {
                errors.push(format!("list {prefix}: {e}"));
                break;
            }
        };
        if page.keys.is_empty() {
            break;
        }
        let n = page.keys.len() as u64;
        let mut progress = false;
        if batch_delete_works {
            match c.delete_many(&mut conn, &page.keys).await {
                Ok(0) => {
                    removed += n;
                    progress = true;
                }
                Ok(failed) => {
                    removed += n - failed as u64;
                    progress = failed < page.keys.len();
                    errors.push(format!("DeleteObjects reported {failed} failures"));
                }
                Err(_) => batch_delete_works = false,
            }
        }
        if !batch_delete_works {
            // One by one, `parallel` at a time.
            let keys = Arc::new(page.keys);
            let next = Arc::new(AtomicU64::new(0));
            let ok = Arc::new(AtomicU64::new(0));
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..parallel {
                let (c, keys, next, ok) = (c.clone(), keys.clone(), next.clone(), ok.clone());
                tasks.spawn(async move {
                    let mut conn = Conn::default();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                        let Some(k) = keys.get(i) else { break };
                        if c.delete(&mut conn, k).await.is_ok() {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
            while tasks.join_next().await.is_some() {}
            let ok = ok.load(Ordering::Relaxed);
            removed += ok;
            progress = ok > 0;
            if ok < n {
                errors.push(format!("{} deletes failed", n - ok));
            }
        }
        if !progress {
            break;
        }
    }
    removed
}

/// CPU seconds (user + system) of `/proc/<who>/stat`, assuming the usual
/// 100 clock ticks per second.
fn read_cpu_secs(who: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{who}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start at state.
    let after = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the full line, 12 and 13 here (1-based: 3 = state).
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

fn read_status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok())
}

/// Samples a server's VmRSS every 100 ms until finished.
struct ServerSampler {
    pid: u32,
    max_rss: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl ServerSampler {
    fn start(pid: u32) -> Self {
        let max_rss = Arc::new(AtomicU64::new(0));
        let m = max_rss.clone();
        let task = tokio::spawn(async move {
            let mut iv = tokio::time::interval(Duration::from_millis(100));
            loop {
                iv.tick().await;
                if let Some(v) = read_status_kib(pid, "VmRSS:") {
                    m.fetch_max(v, Ordering::Relaxed);
                }
            }
        });
        Self { pid, max_rss, task }
    }

    fn finish(self, cpu_secs: f64) -> ServerStats {
        self.task.abort();
        if let Some(v) = read_status_kib(self.pid, "VmRSS:") {
            self.max_rss.fetch_max(v, Ordering::Relaxed);
        }
        ServerStats {
            pid: self.pid,
            max_rss_kib: self.max_rss.load(Ordering::Relaxed),
            hwm_kib: read_status_kib(self.pid, "VmHWM:").unwrap_or(0),
            cpu_secs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_readers_work_on_this_process() {
        assert!(read_cpu_secs("self").is_some());
        let pid = std::process::id();
        assert!(read_status_kib(pid, "VmRSS:").unwrap_or(0) > 0);
        assert!(read_status_kib(pid, "VmHWM:").unwrap_or(0) > 0);
    }

    #[test]
    fn key_names_sort_prepared_before_new() {
        let p = prepared_key("x/", 12);
        assert_eq!(p, "x/p000000012");
        assert!(p < new_key("x/", 0, 1));
        assert!(prepared_key("x/", 9) < prepared_key("x/", 10));
    }
}
