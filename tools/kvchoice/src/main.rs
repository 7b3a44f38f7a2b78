//! kvchoice: measures redb, fjall and SQLite on Meridian's metadata-store access pattern.
//!
//! Run: `cd tools/kvchoice && cargo run --release` (add `-- --quick` for a smoke run).
//! Data goes to `tools/kvchoice/data/` (or `$KVCHOICE_DIR`) and is deleted at the end; it must
//! be on the disk you want to measure (not tmpfs).
//!
//! See `docs/decisions/002-embedded-metadata-store.md` for what is measured and why.

mod data;
mod engines;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::{Duration, Instant};

use data::{Rng, Txn, make_txn, obj_key, prefix_end};
use engines::{Kind, Store, Writer};

/// The most transactions folded into one commit (as in the embedded store).
const MAX_BATCH: usize = 512;
const LOAD_CHUNK: u64 = 20_000;
const CRASH_ACKS: usize = 300;

struct Cfg {
    small_keys: u64,
    big_keys: u64,
    clients: usize,
    batched_secs: f64,
    unbatched_secs: f64,
    read_threads: usize,
    read_secs: f64,
    scan_len: usize,
    scan_secs: f64,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("child") {
        child(&args[2..]);
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    // Diagnostics: `--gc-secs N` lengthens the group-commit phase, `--gc-only` skips the rest.
    let gc_only = args.iter().any(|a| a == "--gc-only");
    let gc_secs: Option<f64> = args
        .iter()
        .position(|a| a == "--gc-secs")
        .map(|i| args[i + 1].parse().expect("--gc-secs N"));
    let mut cfg = if quick {
        Cfg {
            small_keys: 20_000,
            big_keys: 100_000,
            clients: 32,
            batched_secs: 1.0,
            unbatched_secs: 1.0,
            read_threads: 8,
            read_secs: 1.0,
            scan_len: 1000,
            scan_secs: 1.0,
        }
    } else {
        Cfg {
            small_keys: 100_000,
            big_keys: 1_000_000,
            clients: 32,
            batched_secs: 8.0,
            unbatched_secs: 4.0,
            read_threads: 8,
            read_secs: 5.0,
            scan_len: 1000,
            scan_secs: 3.0,
        }
    };
    if let Some(secs) = gc_secs {
        cfg.batched_secs = secs;
    }
    let dir = std::env::var_os("KVCHOICE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("data"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create data dir");
    let started = Instant::now();

    machine(&dir);

    let only: Option<Vec<Kind>> = args
        .iter()
        .position(|a| a == "--only")
        .map(|i| args[i + 1].split(',').map(Kind::parse).collect());
    let kinds = [Kind::Redb, Kind::RedbQuickRepair, Kind::Fjall, Kind::Sqlite];
    let mut rows: Vec<Row> = kinds
        .iter()
        .filter(|k| only.as_ref().is_none_or(|o| o.contains(k)))
        .map(|&k| Row::new(k))
        .collect();

    for row in rows.iter_mut() {
        let kind = row.kind;
        let path = dir.join(format!("small-{}", kind.name()));
        let store = engines::open(kind, &path);
        {
            let mut w = store.writer();
            load(&mut *w, cfg.small_keys);
        }
        let gc = group_commit(&*store, &cfg, MAX_BATCH, cfg.batched_secs);
        println!("{:<18} group commit: {}", kind.name(), gc.show());
        row.batched = Some(gc);
        if gc_only {
            drop(store);
            let _ = std::fs::remove_dir_all(&path);
            continue;
        }
        let nb = group_commit(&*store, &cfg, 1, cfg.unbatched_secs);
        println!("{:<18} one commit/txn: {}", kind.name(), nb.show());
        row.unbatched = Some(nb);
        if kind != Kind::RedbQuickRepair {
            // Same read path as plain redb, so not measured twice.
            let pr = point_reads(&*store, &cfg);
            println!(
                "{:<18} point reads: {:.0} ops/s p50 {} p99 {}",
                kind.name(),
                pr.ops_per_sec,
                us(pr.p50),
                us(pr.p99)
            );
            row.reads = Some(pr);
            let sc = scans(&*store, &cfg);
            println!(
                "{:<18} scan {}: p50 {} p99 {} ({} scans)",
                kind.name(),
                cfg.scan_len,
                us(sc.p50),
                us(sc.p99),
                sc.n
            );
            row.scan = Some(sc);
        }
        drop(store);
        row.small_size = du(&path);
        let _ = std::fs::remove_dir_all(&path);
    }

    for row in rows.iter_mut() {
        if row.kind == Kind::RedbQuickRepair || gc_only {
            continue;
        }
        let big = big(
            row.kind,
            &dir.join(format!("big-{}", row.kind.name())),
            &cfg,
        );
        row.big = Some(big);
    }

    let _ = std::fs::remove_dir_all(&dir);
    report(&rows, &cfg);
    println!("\ntotal run time {:.0} s", started.elapsed().as_secs_f64());
}

// ----- results ---------------------------------------------------------------------------------

struct Row {
    kind: Kind,
    batched: Option<GcResult>,
    unbatched: Option<GcResult>,
    reads: Option<Lat>,
    scan: Option<Lat>,
    small_size: (u64, u64),
    big: Option<Big>,
}

impl Row {
    fn new(kind: Kind) -> Row {
        Row {
            kind,
            batched: None,
            unbatched: None,
            reads: None,
            scan: None,
            small_size: (0, 0),
            big: None,
        }
    }
}

struct GcResult {
    tps: f64,
    p50: Duration,
    p99: Duration,
    mean_batch: f64,
    commit_p50: Duration,
    commit_p99: Duration,
    /// Writer-thread CPU per transaction.
    writer_cpu_us: f64,
    /// Bytes written (write syscalls, whole process) per transaction.
    written_per_txn: f64,
    /// Whole-process CPU per transaction (clients, writer, engine background threads).
    process_cpu_us: f64,
}

impl GcResult {
    fn show(&self) -> String {
        format!(
            "{:.0} txn/s, latency p50 {} p99 {}, mean batch {:.1}, commit p50 {} p99 {}, \
             writer CPU {:.0} µs/txn, process CPU {:.0} µs/txn, written {:.1} KiB/txn",
            self.tps,
            ms(self.p50),
            ms(self.p99),
            self.mean_batch,
            ms(self.commit_p50),
            ms(self.commit_p99),
            self.writer_cpu_us,
            self.process_cpu_us,
            self.written_per_txn / 1024.0
        )
    }
}

struct Lat {
    n: usize,
    ops_per_sec: f64,
    p50: Duration,
    p99: Duration,
}

struct Big {
    load_secs: f64,
    size: (u64, u64),
    clean: OpenReport,
    crash_acked: u64,
    crash: OpenReport,
    quick_crash: Option<(u64, OpenReport)>,
}

fn percentile(sorted: &[u64], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * q) as usize).min(sorted.len() - 1);
    Duration::from_nanos(sorted[i])
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn mib(b: u64) -> String {
    format!("{:.0} MiB", b as f64 / (1 << 20) as f64)
}

// ----- machine ---------------------------------------------------------------------------------

fn machine(dir: &Path) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().next().map(|l| l.to_string()))
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!(
        "machine: {cpu}, {cores} cores, {}, kernel {}",
        mem.split_whitespace().collect::<Vec<_>>().join(" "),
        kernel.trim()
    );

    // What one commit-sized durable write costs on this disk.
    let path = dir.join("fsync-probe");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .expect("probe file");
    let buf = vec![7u8; 4096];
    let mut append = Vec::new();
    let mut overwrite = Vec::new();
    for i in 0..200u64 {
        f.write_all_at(&buf, i * 4096).expect("write");
        let t = Instant::now();
        f.sync_all().expect("fsync");
        append.push(t.elapsed().as_nanos() as u64);
    }
    for _ in 0..200 {
        f.write_all_at(&buf, 0).expect("write");
        let t = Instant::now();
        f.sync_data().expect("fdatasync");
        overwrite.push(t.elapsed().as_nanos() as u64);
    }
    append.sort_unstable();
    overwrite.sort_unstable();
    println!(
        "disk ({}): 4 KiB append+fsync p50 {} p99 {}; overwrite+fdatasync p50 {}",
        dir.display(),
        ms(percentile(&append, 0.5)),
        ms(percentile(&append, 0.99)),
        ms(percentile(&overwrite, 0.5))
    );
    let _ = std::fs::remove_file(&path);
}

// ----- workloads -------------------------------------------------------------------------------

fn load(w: &mut dyn Writer, n: u64) {
    let mut start = 0;
    while start < n {
        let end = (start + LOAD_CHUNK).min(n);
        w.load(start..end);
        start = end;
    }
}

struct Req {
    txn: Txn,
    reply: SyncSender<u64>,
}

struct WriterStats {
    batches: usize,
    txns: usize,
    commit_ns: Vec<u64>,
    /// Every transaction, warm-up included, and the writer thread's CPU time for them.
    all_txns: u64,
    cpu_ns: u64,
}

fn writer_loop(
    mut w: Box<dyn Writer + '_>,
    queue: Receiver<Req>,
    max_batch: usize,
    measure_from: Instant,
) -> WriterStats {
    let cpu_start = thread_cpu_ns();
    let mut stats = WriterStats {
        batches: 0,
        txns: 0,
        commit_ns: Vec::new(),
        all_txns: 0,
        cpu_ns: 0,
    };
    let mut txns = Vec::with_capacity(max_batch);
    let mut replies = Vec::with_capacity(max_batch);
    let mut revs = Vec::with_capacity(max_batch);
    while let Ok(first) = queue.recv() {
        txns.push(first.txn);
        replies.push(first.reply);
        while txns.len() < max_batch {
            match queue.try_recv() {
                Ok(r) => {
                    txns.push(r.txn);
                    replies.push(r.reply);
                }
                Err(_) => break,
            }
        }
        let t = Instant::now();
        revs.clear();
        w.commit(&txns, &mut revs);
        if t >= measure_from {
            stats.commit_ns.push(t.elapsed().as_nanos() as u64);
            stats.batches += 1;
            stats.txns += txns.len();
        }
        stats.all_txns += txns.len() as u64;
        for (reply, rev) in replies.drain(..).zip(revs.iter()) {
            let _ = reply.send(*rev);
        }
        txns.clear();
    }
    stats.cpu_ns = thread_cpu_ns() - cpu_start;
    stats
}

/// CPU time of the calling thread, in ns (first field of /proc/thread-self/schedstat).
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// CPU time of the whole process (all threads, including engine background threads), in ns.
fn process_cpu_ns() -> u64 {
    // utime and stime are fields 14 and 15 of /proc/self/stat, in clock ticks (100 Hz on Linux).
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f[11].parse::<u64>().ok()? + f[12].parse::<u64>().ok()?) * 10_000_000)
        })
        .unwrap_or(0)
}

/// Bytes this process has passed to write(2)/pwrite(2) so far (all threads, including the
/// engines' background flush/compaction threads).
fn written_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("wchar:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// `clients` threads each submit one transaction at a time to a single writer thread that
/// commits up to `max_batch` queued transactions per durable commit.
fn group_commit(store: &dyn Store, cfg: &Cfg, max_batch: usize, secs: f64) -> GcResult {
    let warmup = Duration::from_millis(500);
    let measure_from = Instant::now() + warmup;
    let end = measure_from + Duration::from_secs_f64(secs);
    let (tx, rx) = sync_channel::<Req>(4096);
    let written_before = written_bytes();
    let cpu_before = process_cpu_ns();
    std::thread::scope(|s| {
        let w = store.writer();
        let writer = s.spawn(move || writer_loop(w, rx, max_batch, measure_from));
        let clients: Vec<_> = (0..cfg.clients)
            .map(|c| {
                let tx = tx.clone();
                let n_keys = cfg.small_keys;
                s.spawn(move || {
                    let mut rng = Rng::new(1000 + c as u64);
                    let (rtx, rrx) = sync_channel(1);
                    let mut lat = Vec::new();
                    loop {
                        let txn = make_txn(&mut rng, n_keys);
                        let t0 = Instant::now();
                        if t0 >= end {
                            break;
                        }
                        tx.send(Req {
                            txn,
                            reply: rtx.clone(),
                        })
                        .expect("writer gone");
                        rrx.recv().expect("no reply");
                        if t0 >= measure_from {
                            lat.push(t0.elapsed().as_nanos() as u64);
                        }
                    }
                    lat
                })
            })
            .collect();
        drop(tx);
        let mut lat: Vec<u64> = Vec::new();
        for c in clients {
            lat.extend(c.join().expect("client panicked"));
        }
        let mut ws = writer.join().expect("writer panicked");
        let written = written_bytes() - written_before;
        let cpu = process_cpu_ns() - cpu_before;
        lat.sort_unstable();
        ws.commit_ns.sort_unstable();
        GcResult {
            tps: lat.len() as f64 / secs,
            p50: percentile(&lat, 0.5),
            p99: percentile(&lat, 0.99),
            mean_batch: ws.txns as f64 / ws.batches.max(1) as f64,
            commit_p50: percentile(&ws.commit_ns, 0.5),
            commit_p99: percentile(&ws.commit_ns, 0.99),
            writer_cpu_us: ws.cpu_ns as f64 / 1e3 / ws.all_txns.max(1) as f64,
            written_per_txn: written as f64 / ws.all_txns.max(1) as f64,
            process_cpu_us: cpu as f64 / 1e3 / ws.all_txns.max(1) as f64,
        }
    })
}

fn point_reads(store: &dyn Store, cfg: &Cfg) -> Lat {
    let end = Instant::now() + Duration::from_secs_f64(cfg.read_secs);
    let mut lat: Vec<u64> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..cfg.read_threads)
            .map(|t| {
                s.spawn(move || {
                    let mut r = store.reader();
                    let mut rng = Rng::new(77 + t as u64);
                    let mut lat = Vec::new();
                    loop {
                        let key = obj_key(rng.below(cfg.small_keys));
                        let t0 = Instant::now();
                        if t0 >= end {
                            break;
                        }
                        assert!(r.get(&key).is_some(), "key missing");
                        lat.push(t0.elapsed().as_nanos() as u64);
                    }
                    lat
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().expect("reader panicked"))
            .collect()
    });
    lat.sort_unstable();
    Lat {
        n: lat.len(),
        ops_per_sec: lat.len() as f64 / cfg.read_secs,
        p50: percentile(&lat, 0.5),
        p99: percentile(&lat, 0.99),
    }
}

fn scans(store: &dyn Store, cfg: &Cfg) -> Lat {
    let mut r = store.reader();
    let mut rng = Rng::new(4242);
    let end_key = prefix_end();
    let deadline = Instant::now() + Duration::from_secs_f64(cfg.scan_secs);
    let mut lat = Vec::new();
    while Instant::now() < deadline || lat.len() < 100 {
        let start = obj_key(rng.below(cfg.small_keys - cfg.scan_len as u64));
        let t0 = Instant::now();
        let n = r.scan(&start, &end_key, cfg.scan_len);
        lat.push(t0.elapsed().as_nanos() as u64);
        assert_eq!(n, cfg.scan_len, "short scan");
    }
    lat.sort_unstable();
    Lat {
        n: lat.len(),
        ops_per_sec: 0.0,
        p50: percentile(&lat, 0.5),
        p99: percentile(&lat, 0.99),
    }
}

// ----- startup, size, RSS, crash ---------------------------------------------------------------

fn big(kind: Kind, path: &Path, cfg: &Cfg) -> Big {
    let t = Instant::now();
    {
        let store = engines::open(kind, path);
        let mut w = store.writer();
        load(&mut *w, cfg.big_keys);
    }
    let load_secs = t.elapsed().as_secs_f64();
    let size = du(path);
    let clean = open_child(kind, path, cfg.big_keys);
    println!(
        "{:<18} {} keys: load {:.1} s, on disk {} (apparent {}), clean open {}, RSS {} / peak {}",
        kind.name(),
        cfg.big_keys,
        load_secs,
        mib(size.1),
        mib(size.0),
        ms(clean.open),
        mib(clean.rss_kb * 1024),
        mib(clean.hwm_kb * 1024)
    );
    let crash_acked = crash_child(kind, path, cfg.big_keys);
    let crash = open_child(kind, path, cfg.big_keys);
    println!(
        "{:<18} after kill -9: open {}, last acked revision {}, recovered revision {} ({})",
        kind.name(),
        ms(crash.open),
        crash_acked,
        crash.revision,
        if crash.revision >= crash_acked {
            "no acked commit lost"
        } else {
            "LOST ACKED COMMITS"
        }
    );
    let quick_crash = (kind == Kind::Redb).then(|| {
        let acked = crash_child(Kind::RedbQuickRepair, path, cfg.big_keys);
        let o = open_child(Kind::Redb, path, cfg.big_keys);
        println!(
            "{:<18} after kill -9 (commits with quick_repair): open {}, acked {}, recovered {}",
            kind.name(),
            ms(o.open),
            acked,
            o.revision
        );
        (acked, o)
    });
    let _ = std::fs::remove_dir_all(path);
    Big {
        load_secs,
        size,
        clean,
        crash_acked,
        crash,
        quick_crash,
    }
}

struct OpenReport {
    open: Duration,
    rss_kb: u64,
    hwm_kb: u64,
    revision: u64,
}

fn spawn_child(args: &[&str]) -> std::process::Child {
    Command::new(std::env::current_exe().expect("current_exe"))
        .arg("child")
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn child")
}

fn open_child(kind: Kind, path: &Path, n: u64) -> OpenReport {
    let child = spawn_child(&[
        "open",
        kind.name(),
        &path.display().to_string(),
        &n.to_string(),
    ]);
    let out = child.wait_with_output().expect("child");
    assert!(out.status.success(), "open child failed");
    let text = String::from_utf8(out.stdout).expect("utf8");
    let field = |name: &str| -> u64 {
        text.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("child output lacks {name}: {text}"))
    };
    OpenReport {
        open: Duration::from_micros(field("open_us")),
        rss_kb: field("rss_kb"),
        hwm_kb: field("hwm_kb"),
        revision: field("revision"),
    }
}

/// Starts a child that commits one transaction at a time and prints each revision once its
/// commit has returned; SIGKILLs it mid-stream. Returns the newest acknowledged revision.
fn crash_child(kind: Kind, path: &Path, n: u64) -> u64 {
    let mut child = spawn_child(&[
        "crash",
        kind.name(),
        &path.display().to_string(),
        &n.to_string(),
    ]);
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut acked = 0;
    for _ in 0..CRASH_ACKS {
        match lines.next() {
            Some(Ok(l)) => acked = l.trim().parse().expect("revision"),
            _ => break,
        }
    }
    child.kill().expect("SIGKILL");
    // Complete lines still in the pipe were acknowledged before the kill too.
    for l in lines.map_while(Result::ok) {
        if let Ok(r) = l.trim().parse() {
            acked = r;
        }
    }
    child.wait().expect("wait");
    acked
}

fn child(args: &[String]) {
    let (mode, kind, path, n) = (
        args[0].as_str(),
        Kind::parse(&args[1]),
        Path::new(&args[2]),
        args[3].parse::<u64>().expect("n"),
    );
    match mode {
        "open" => {
            let t = Instant::now();
            let store = engines::open(kind, path);
            let mut r = store.reader();
            assert!(r.get(&obj_key(0)).is_some(), "key 0 missing");
            let open = t.elapsed();
            let rss_kb = proc_status("VmRSS");
            let revision = store.writer().revision();
            // Some real work so the peak RSS includes the caches filling up.
            let mut rng = Rng::new(9);
            for _ in 0..20_000 {
                assert!(r.get(&obj_key(rng.below(n))).is_some(), "key missing");
            }
            let end_key = prefix_end();
            for _ in 0..200 {
                r.scan(&obj_key(rng.below(n - 1000)), &end_key, 1000);
            }
            let hwm_kb = proc_status("VmHWM");
            println!(
                "open_us={} rss_kb={rss_kb} hwm_kb={hwm_kb} revision={revision}",
                open.as_micros()
            );
        }
        "crash" => {
            let store = engines::open(kind, path);
            let mut w = store.writer();
            let mut rng = Rng::new(31337);
            let mut revs = Vec::new();
            let stdout = std::io::stdout();
            loop {
                revs.clear();
                w.commit(&[make_txn(&mut rng, n)], &mut revs);
                let mut out = stdout.lock();
                writeln!(out, "{}", revs[0]).expect("stdout");
                out.flush().expect("flush");
            }
        }
        "commits" => {
            // For checking the durability settings from outside, e.g.
            // `strace -f -c -e trace=fsync,fdatasync kvchoice child commits sqlite DIR 1000`:
            // load 20k keys, then exactly `n` single-transaction commits.
            let store = engines::open(kind, path);
            let mut w = store.writer();
            load(&mut *w, 20_000);
            eprintln!("loaded; now {n} commits");
            let mut rng = Rng::new(5);
            let mut revs = Vec::new();
            for _ in 0..n {
                w.commit(&[make_txn(&mut rng, 20_000)], &mut revs);
            }
        }
        other => panic!("unknown child mode {other}"),
    }
}

fn proc_status(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .expect("/proc/self/status")
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// (apparent bytes, allocated bytes) of a file or directory tree.
fn du(path: &Path) -> (u64, u64) {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return (0, 0);
    };
    if meta.is_dir() {
        let mut total = (0, 0);
        for entry in std::fs::read_dir(path).expect("read_dir").flatten() {
            let (a, b) = du(&entry.path());
            total.0 += a;
            total.1 += b;
        }
        total
    } else {
        (meta.len(), meta.blocks() * 512)
    }
}

// ----- report ----------------------------------------------------------------------------------

fn report(rows: &[Row], cfg: &Cfg) {
    println!("\n## Results\n");
    println!(
        "Group commit: {} clients, one writer thread, ≤{MAX_BATCH} txns per durable commit, {} s; \
         one commit/txn: same clients, batch size 1, {} s.\n",
        cfg.clients, cfg.batched_secs, cfg.unbatched_secs
    );
    println!(
        "| engine | group commit txn/s | p50 | p99 | mean batch | commit p50 | writer CPU/txn | process CPU/txn | written/txn | one commit/txn: txn/s | p50 | p99 | commit p50 |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let Some(b) = &r.batched else { continue };
        let unbatched = match &r.unbatched {
            Some(u) => format!(
                "{:.0} | {} | {} | {}",
                u.tps,
                ms(u.p50),
                ms(u.p99),
                ms(u.commit_p50)
            ),
            None => "– | – | – | –".to_string(),
        };
        println!(
            "| {} | {:.0} | {} | {} | {:.0} | {} | {:.0} µs | {:.0} µs | {:.1} KiB | {unbatched} |",
            r.kind.name(),
            b.tps,
            ms(b.p50),
            ms(b.p99),
            b.mean_batch,
            ms(b.commit_p50),
            b.writer_cpu_us,
            b.process_cpu_us,
            b.written_per_txn / 1024.0,
        );
    }
    println!(
        "\nReads: {} keys; point gets from {} threads for {} s; scans of {} consecutive keys from a random start (1 thread).\n",
        cfg.small_keys, cfg.read_threads, cfg.read_secs, cfg.scan_len
    );
    println!(
        "| engine | point get ops/s | get p50 | get p99 | scan p50 | scan p99 | file size after writes |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let (Some(g), Some(s)) = (&r.reads, &r.scan) else {
            continue;
        };
        println!(
            "| {} | {:.0} | {} | {} | {} | {} | {} |",
            r.kind.name(),
            g.ops_per_sec,
            us(g.p50),
            us(g.p99),
            us(s.p50),
            us(s.p99),
            mib(r.small_size.1)
        );
    }
    println!(
        "\nStartup with {} keys (~300-byte values), warm OS page cache; RSS in a fresh process.\n",
        cfg.big_keys
    );
    println!(
        "| engine | bulk load | on disk | open (clean) | RSS after open | peak RSS after 20k gets + 200 scans | open after kill -9 | acked commits lost |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let Some(b) = &r.big else { continue };
        let mut crash = ms(b.crash.open);
        if let Some((_, q)) = &b.quick_crash {
            crash = format!("{crash} ({} with quick_repair)", ms(q.open));
        }
        let lost = b.crash.revision < b.crash_acked
            || b.quick_crash.as_ref().is_some_and(|(a, q)| q.revision < *a);
        println!(
            "| {} | {:.1} s | {} | {} | {} | {} | {} | {} |",
            r.kind.name(),
            b.load_secs,
            mib(b.size.1),
            ms(b.clean.open),
            mib(b.clean.rss_kb * 1024),
            mib(b.clean.hwm_kb * 1024),
            crash,
            if lost { "YES" } else { "none" }
        );
    }
}
