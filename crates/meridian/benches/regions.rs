//! Region benchmark (issue 5): three regions, three etcd members and three nodes on one machine,
//! the project's WAN proxy on every cross-region link. Measures write latency in each region,
//! cold and warm remote reads of small objects against local reads, and the throughput of a
//! large cold read against the proxy's bandwidth limit. Prints a Markdown table.
//!
//! ```sh
//! cargo bench -p meridian --bench regions
//! ONE_WAY_MS=20 SAMPLES=50 BIG_MIB=256 BANDWIDTH_MIB=64 cargo bench -p meridian --bench regions
//! ```
//!
//! Nodes run with `--replicate-small-bytes 0`, so a small object is not copied to other
//! regions after its write and the first read elsewhere is really cold.

#![allow(clippy::unwrap_used)] // a benchmark: a failed unwrap is a failed run

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::raw::Response;
use common::wan_cluster::{REGIONS, WanCluster};
use common::{Server, md5_hex, pattern};
use meridian_wan::LinkConfig;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Latency summary in milliseconds: p50, p90, p99, max.
struct Summary([f64; 4]);

impl Summary {
    fn of(mut samples: Vec<Duration>) -> Summary {
        samples.sort();
        let at = |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1];
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        Summary([ms(at(0.5)), ms(at(0.9)), ms(at(0.99)), ms(at(1.0))])
    }

    fn p50(&self) -> f64 {
        self.0[0]
    }

    fn row(&self) -> String {
        let [p50, p90, p99, max] = self.0;
        format!("{p50:.2} / {p90:.2} / {p99:.2} / {max:.2}")
    }
}

/// Times one signed request; panics unless it answers 200.
fn timed(server: &Server, method: &str, path: &str, body: &[u8]) -> (Duration, Response) {
    common::raw::timed_ok(&server.addr, method, path, body)
}

fn measure(count: u64, op: impl FnMut(u64) -> Duration) -> Summary {
    Summary::of((0..count).map(op).collect())
}

/// The round trip the WAN proxy really gives (timer granularity adds a little to the configured
/// delay): ping-pong of one byte over one connection through a proxy with `link`.
async fn measured_rtt(link: LinkConfig, samples: u64) -> Summary {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut conn, _) = echo.accept().await.unwrap();
        let mut byte = [0u8; 1];
        while conn.read_exact(&mut byte).await.is_ok() {
            if conn.write_all(&byte).await.is_err() {
                break;
            }
        }
    });
    let proxy = meridian_wan::WanProxy::start("127.0.0.1:0".parse().unwrap(), echo_addr, link).await.unwrap();
    let mut conn = tokio::net::TcpStream::connect(proxy.local_addr()).await.unwrap();
    conn.set_nodelay(true).unwrap();
    let mut times = Vec::new();
    let mut byte = [7u8; 1];
    for _ in 0..samples {
        let started = Instant::now();
        conn.write_all(&byte).await.unwrap();
        conn.read_exact(&mut byte).await.unwrap();
        times.push(started.elapsed());
    }
    Summary::of(times)
}

/// What one TCP stream through a proxy with `link` really carries, in MiB/s: `bytes` sent to a
/// sink that counts them.
async fn measured_throughput(link: LinkConfig, bytes: u64) -> f64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sink = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sink_addr = sink.local_addr().unwrap();
    let counted = tokio::spawn(async move {
        let (mut conn, _) = sink.accept().await.unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0u64;
        while let Ok(n @ 1..) = conn.read(&mut buf).await {
            total += n as u64;
        }
        total
    });
    let proxy = meridian_wan::WanProxy::start("127.0.0.1:0".parse().unwrap(), sink_addr, link).await.unwrap();
    let mut conn = tokio::net::TcpStream::connect(proxy.local_addr()).await.unwrap();
    let block = vec![0u8; 1 << 16];
    let started = Instant::now();
    for _ in 0..bytes / block.len() as u64 {
        conn.write_all(&block).await.unwrap();
    }
    conn.shutdown().await.unwrap();
    let total = counted.await.unwrap();
    total as f64 / started.elapsed().as_secs_f64() / (1 << 20) as f64
}

fn main() {
    let one_way = Duration::from_millis(env_u64("ONE_WAY_MS", 20));
    let samples = env_u64("SAMPLES", 50).max(1);
    let big = env_u64("BIG_MIB", 256) << 20;
    let bandwidth = env_u64("BANDWIDTH_MIB", 64) << 20;
    let rtt_ms = 2.0 * one_way.as_secs_f64() * 1000.0;

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let link = LinkConfig::one_way(one_way);
    let rtt = runtime.block_on(measured_rtt(link, 20));
    let link_mib_s = runtime.block_on(measured_throughput(link.with_bandwidth(bandwidth), (big / 4).max(1 << 20)));
    let cluster = runtime.block_on(WanCluster::start(link, &["--replicate-small-bytes", "0"]));
    let leader = cluster.etcd.wait_for_leader(Duration::from_secs(30));
    let nodes = &cluster.nodes;
    timed(&nodes[0], "PUT", "/bench", b"");
    let small = pattern(4096, 1);

    let mut rows =
        vec![("round trip through the WAN proxy (1-byte ping-pong)".to_string(), rtt.row(), "–".to_string())];
    for (i, region) in REGIONS.iter().enumerate() {
        let s = measure(samples, |n| timed(&nodes[i], "PUT", &format!("/bench/w{i}-{n}"), &small).0);
        let role = if i == leader { "etcd leader's region" } else { "etcd follower's region" };
        rows.push((
            format!("PUT 4 KiB in {region} ({role})"),
            s.row(),
            format!("≤ RTT + 5 ms = {:.1} ms", rtt.p50() + 5.0),
        ));
    }
    let local = measure(samples, |n| timed(&nodes[0], "GET", &format!("/bench/w0-{n}"), b"").0);
    let cold = measure(samples, |n| {
        let (took, resp) = timed(&nodes[1], "GET", &format!("/bench/w0-{n}"), b"");
        assert_eq!(resp.header("x-meridian-cache"), Some("miss"), "a cold read fetches from region a");
        took
    });
    let warm = measure(samples, |n| {
        let (took, resp) = timed(&nodes[1], "GET", &format!("/bench/w0-{n}"), b"");
        assert_eq!(resp.header("x-meridian-cache"), Some("hit"), "a warm read is served from region b's cache");
        took
    });
    rows.push(("GET 4 KiB local (region-a)".into(), local.row(), "–".into()));
    rows.push((
        "GET 4 KiB cold remote (region-b, bytes in region-a)".into(),
        cold.row(),
        format!("≤ RTT + 5 ms = {:.1} ms", rtt.p50() + 5.0),
    ));
    rows.push((
        "GET 4 KiB warm remote (region-b cache)".into(),
        warm.row(),
        format!("≤ local + 1 ms = {:.2} ms (p50)", local.p50() + 1.0),
    ));

    // A large object crosses a bandwidth-limited link: region a's node uplink.
    let data = pattern(big as usize, 2);
    timed(&nodes[0], "PUT", "/bench/big", &data);
    cluster.node_links[0].set_config(link.with_bandwidth(bandwidth));
    let (took, resp) = timed(&nodes[2], "GET", "/bench/big", b"");
    assert_eq!(md5_hex(&resp.body), md5_hex(&data), "the large cold read returns the right bytes");
    let mib_s = big as f64 / took.as_secs_f64() / (1 << 20) as f64;
    let limit = bandwidth as f64 / (1 << 20) as f64;

    println!(
        "\nRegions: 3 etcd members, 3 nodes, {rtt_ms:.0} ms RTT between regions; etcd leader in {}",
        REGIONS[leader]
    );
    println!("{samples} sequential requests per row (a new connection each), latency in ms\n");
    println!("| operation | p50 / p90 / p99 / max | bar |\n|---|---|---|");
    for (name, row, bar) in rows {
        println!("| {name} | {row} | {bar} |");
    }
    println!(
        "\nCold read of {} MiB in region-c from region-a over a {limit:.0} MiB/s link: {:.2} s, {mib_s:.1} MiB/s = {:.0}% of the configured limit (bar ≥ 80%)",
        big >> 20,
        took.as_secs_f64(),
        100.0 * mib_s / limit
    );
    println!(
        "One plain TCP stream through the same link carries {link_mib_s:.1} MiB/s: the read reaches {:.0}% of that",
        100.0 * mib_s / link_mib_s
    );
    drop(cluster);
    home_region(&runtime, link, samples, &rtt);
}

/// Writes in the home-region layout (docs/etcd.md): a quorum of voters in region a, a learner
/// in region b. A write from region b is one WAN round trip to the voters.
fn home_region(runtime: &tokio::runtime::Runtime, link: LinkConfig, samples: u64, rtt: &Summary) {
    let cluster = runtime.block_on(WanCluster::start_home_region(link, &[]));
    let nodes = &cluster.nodes;
    timed(&nodes[0], "PUT", "/bench", b"");
    let small = pattern(4096, 1);
    println!(
        "
Home-region layout: 3 voters in region-a, a learner in region-b, one node in each
"
    );
    println!("| operation | p50 / p90 / p99 / max | bar |\n|---|---|---|");
    for (i, region) in ["region-a (voters)", "region-b (learner)"].iter().enumerate() {
        let s = measure(samples, |n| timed(&nodes[i], "PUT", &format!("/bench/h{i}-{n}"), &small).0);
        let bar = if i == 0 { "–".to_string() } else { format!("≤ RTT + 5 ms = {:.1} ms", rtt.p50() + 5.0) };
        println!("| PUT 4 KiB in {region} | {} | {bar} |", s.row());
    }
}
