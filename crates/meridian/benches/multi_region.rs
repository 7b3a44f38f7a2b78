//! Multi-region bucket benchmark (issue 15): three regions, three etcd members and three nodes
//! on one machine, the project's WAN proxy on every cross-region link. Measures PUT latency of
//! 4 KiB and 64 MiB into a global bucket and into multi-region buckets of two and three regions
//! (all written in region a), how long the large writes waited for their copies after the
//! body (region a's `meridian_multi_region_copy_wait_seconds`), the CPU each process used per
//! large PUT, and how long reads take to fail over once region a's node is killed. Prints
//! Markdown tables.
//!
//! ```sh
//! cargo bench -p meridian --bench multi_region
//! ONE_WAY_MS=20 SAMPLES=30 BIG_SAMPLES=3 BIG_MIB=64 cargo bench -p meridian --bench multi_region
//! PIN=1 cargo bench -p meridian --bench multi_region   # region a's node alone on CPU 0
//! ```
//!
//! All three regions share this machine's cores, so the other regions' work (the WAN proxy
//! moving every byte, the receiving nodes) competes with region a's ingest. `PIN=1` gives
//! region a's node CPU 0 to itself and puts everything else (this process with the client and
//! the proxies, the other nodes, the etcd members) on CPU 1, which is closer to regions on
//! machines of their own.

#![allow(clippy::unwrap_used)] // a benchmark: a failed unwrap is a failed run

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::raw::{Response, signed};
use common::wan_cluster::WanCluster;
use common::{Server, pattern};
use meridian_wan::LinkConfig;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// p50 / p90 / max in milliseconds.
fn summary(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!("{:.1} / {:.1} / {:.1}", ms(at(0.5)), ms(at(0.9)), ms(at(1.0)))
}

fn p50_ms(mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1000.0
}

/// Times one signed request; panics unless it answers 200.
fn timed(server: &Server, method: &str, path: &str, body: &[u8]) -> (Duration, Response) {
    common::raw::timed_ok(&server.addr, method, path, body)
}

fn create(node: &Server, bucket: &str, location: &str) {
    let body = format!(
        "<CreateBucketConfiguration><LocationConstraint>{location}</LocationConstraint></CreateBucketConfiguration>"
    );
    timed(node, "PUT", &format!("/{bucket}"), body.as_bytes());
}

fn puts(node: &Server, bucket: &str, name: &str, data: &[u8], samples: u64) -> Vec<Duration> {
    (0..samples).map(|n| timed(node, "PUT", &format!("/{bucket}/{name}-{n}"), data).0).collect()
}

/// How long after `since` a GET of `path` at `node` first answers 200 (polled every 10 ms, at
/// most 30 s), and how long that GET took.
fn first_success(node: &Server, path: &str, since: Instant) -> (Duration, Duration) {
    loop {
        let started = Instant::now();
        let resp = signed(&node.addr, "GET", path, &[], b"");
        if resp.status == 200 {
            return (since.elapsed(), started.elapsed());
        }
        assert!(since.elapsed() < Duration::from_secs(30), "{path} never served again: {}", resp.text());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// CPU time a process has used (user and system), in ms.
fn cpu_ms(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces): utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks * 10.0 // USER_HZ is 100 on Linux
}

/// Pins every thread of `pid` to `cpu` (`taskset`; panics if it cannot).
fn pin(pid: u32, cpu: usize) {
    let status = std::process::Command::new("taskset")
        .args(["--all-tasks", "--cpu-list", "--pid", &cpu.to_string(), &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "taskset could not pin process {pid} to CPU {cpu}");
}

/// The processes this one started (the nodes and the etcd members), from `/proc`.
fn children() -> Vec<u32> {
    let me = std::process::id().to_string();
    let parent_of = |pid: &str| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat[stat.rfind(')')? + 2..].split(' ').nth(1).map(str::to_string)
    };
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()) && parent_of(pid).as_deref() == Some(me.as_str()))
        .map(|pid| pid.parse().unwrap())
        .collect()
}

/// The node's sums (s) and counts of `meridian_ingest_seconds{placement}` and of
/// `meridian_multi_region_copy_wait_seconds`.
fn waits(node: &Server, placement: &str) -> [f64; 4] {
    let text = common::metrics::scrape(node);
    let ingest = |suffix: &str| {
        common::metrics::sample(&text, &format!("meridian_ingest_seconds_{suffix}"), &[("placement", placement)])
    };
    let copy_wait = |suffix: &str| {
        common::metrics::sample(&text, &format!("meridian_multi_region_copy_wait_seconds_{suffix}"), &[])
    };
    [ingest("sum"), ingest("count"), copy_wait("sum"), copy_wait("count")]
}

fn main() {
    let one_way = Duration::from_millis(env_u64("ONE_WAY_MS", 20));
    let samples = env_u64("SAMPLES", 30).max(1);
    let big_samples = env_u64("BIG_SAMPLES", 3).max(1);
    let big = (env_u64("BIG_MIB", 64) << 20) as usize;
    let rtt_ms = 2.0 * one_way.as_secs_f64() * 1000.0;

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let link = LinkConfig::one_way(one_way);
    let mut cluster = runtime.block_on(WanCluster::start(link, &[]));
    let a = &cluster.nodes[0];
    let pinned = env_u64("PIN", 0) == 1;
    if pinned {
        for pid in children().into_iter().chain([std::process::id()]) {
            pin(pid, 1);
        }
        pin(a.pid(), 0);
    }
    create(a, "global", "global");
    create(a, "two", "multi:region-a,region-b");
    create(a, "three", "multi:region-a,region-b,region-c");

    let small = pattern(4096, 1);
    let large = pattern(big, 2);
    println!("\nMulti-region PUTs from region-a, {rtt_ms:.0} ms RTT between regions (WAN proxy, no bandwidth limit)");
    println!("one request at a time, a new client connection each; latency p50 / p90 / max in ms");
    if pinned {
        println!("PIN=1: region-a's node alone on CPU 0; the client, the proxies, the other nodes and etcd on CPU 1");
    }
    // A write pays its node's trip to the etcd leader and the leader's round trip to another
    // voter (docs/etcd.md), so where the leader is sets the floor of every PUT below.
    let leader_region = |etcd: &meridian_meta_etcd::testing::EtcdCluster| {
        etcd.leader().map_or("none agreed", |member| common::wan_cluster::REGIONS[member])
    };
    let leader = leader_region(&cluster.etcd);
    println!("etcd leader: the member in {leader}\n");
    println!("| bucket | PUT 4 KiB ({samples}×) | PUT {} MiB ({big_samples}×) |\n|---|---|---|", big >> 20);
    let mut large_p50 = Vec::new();
    let mut ingests = Vec::new();
    let mut copy_waits = Vec::new();
    // CPU per large PUT of: this process (the client and the WAN proxy), then the three nodes.
    let processes: Vec<u32> =
        std::iter::once(std::process::id()).chain(cluster.nodes.iter().map(|n| n.pid())).collect();
    let mut cpu_per_put = Vec::new();
    for bucket in ["global", "two", "three"] {
        let s = puts(a, bucket, "small", &small, samples);
        let placement = if bucket == "global" { "single_region" } else { "multi_region" };
        let before = waits(a, placement);
        let cpu_before = processes.iter().map(|pid| cpu_ms(*pid)).collect::<Vec<_>>();
        let l = puts(a, bucket, "large", &large, big_samples);
        let cpu: Vec<f64> = processes.iter().zip(cpu_before).map(|(pid, was)| cpu_ms(*pid) - was).collect();
        cpu_per_put.push(cpu.iter().map(|ms| ms / big_samples as f64).collect::<Vec<_>>());
        let after = waits(a, placement);
        let mean_ms = |sum: usize| (after[sum] - before[sum]) / (after[sum + 1] - before[sum + 1]).max(1.0) * 1000.0;
        ingests.push(mean_ms(0));
        copy_waits.push(mean_ms(2));
        large_p50.push(p50_ms(l.clone()));
        let name = match bucket {
            "global" => "global (bytes stay in region-a)",
            "two" => "multi:region-a,region-b",
            _ => "multi:region-a,region-b,region-c",
        };
        println!("| {name} | {} | {} |", summary(s), summary(l));
    }
    let after = leader_region(&cluster.etcd);
    if after != leader {
        println!("\nThe etcd leader moved during the PUTs: now the member in {after}");
    }
    println!(
        "\n{} MiB: multi over global {:+.0} ms (two regions), {:+.0} ms (three); one RTT is {rtt_ms:.0} ms",
        big >> 20,
        large_p50[1] - large_p50[0],
        large_p50[2] - large_p50[0]
    );
    println!(
        "{} MiB: the copies were durable {:.0} ms (two regions), {:.0} ms (three) after the body was taken in \
         (mean of meridian_multi_region_copy_wait_seconds)",
        big >> 20,
        copy_waits[1],
        copy_waits[2]
    );
    println!(
        "{} MiB: taking the body in took {:.0} ms (global), {:.0} ms (two regions), {:.0} ms (three) \
         (mean of meridian_ingest_seconds)",
        big >> 20,
        ingests[0],
        ingests[1],
        ingests[2]
    );
    println!("\nCPU per {} MiB PUT (ms, /proc/PID/stat, 10 ms ticks)\n", big >> 20);
    println!(
        "| bucket | client and WAN proxy | region-a node | region-b node | region-c node | all |\n|---|---|---|---|---|---|"
    );
    for (bucket, cpu) in ["global", "two", "three"].iter().zip(&cpu_per_put) {
        let cells: Vec<String> = cpu.iter().map(|ms| format!("{ms:.0}")).collect();
        println!("| {bucket} | {} | {:.0} |", cells.join(" | "), cpu.iter().sum::<f64>());
    }

    // Failover: region a's node dies; reads of an object written there.
    timed(a, "PUT", "/two/failover", &small);
    timed(a, "PUT", "/three/failover", &small);
    timed(a, "PUT", "/global/failover", &small);
    let _ = timed(&cluster.nodes[2], "GET", "/global/failover", b""); // cached in region c
    cluster.nodes[0].kill9();
    let killed = Instant::now();
    let rows = [
        ("multi:a,b read in region-b (its own copy)", 1, "/two/failover"),
        ("multi:a,b,c read in region-c (its own copy)", 2, "/three/failover"),
        ("global read in region-c (cached before)", 2, "/global/failover"),
        ("multi:a,b read in region-c (forwarded to a listed region)", 2, "/two/failover"),
    ];
    println!("\nReads after region-a's node is killed (kill -9); time from the kill to the first 200\n");
    println!("| read | first 200 after the kill (ms) | that GET took (ms) |\n|---|---|---|");
    for (name, node, path) in rows {
        let (after, took) = first_success(&cluster.nodes[node], path, killed);
        println!("| {name} | {:.0} | {:.1} |", after.as_secs_f64() * 1000.0, took.as_secs_f64() * 1000.0);
    }
}
