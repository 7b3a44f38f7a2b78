//! The KV API against plain etcd on three regions (issue 15): three etcd members and three
//! Meridian nodes on one machine with the project's WAN proxy on every cross-region link (as in
//! the `regions` benchmark), then `meridian kv bench --compare-etcd` run from region b: first
//! through region b's Meridian node, then straight against the same etcd cluster through the
//! endpoints region b's node uses (its own member directly, the others through the WAN proxy).
//! Both therefore pay the same WAN round trips to the etcd leader and the same fsync.
//!
//! ```sh
//! cargo bench -p meridian --bench kv_regions
//! ONE_WAY_MS=20 SECONDS=10 CONCURRENCY=32 cargo bench -p meridian --bench kv_regions
//! ```

#![allow(clippy::unwrap_used)] // a benchmark: a failed unwrap is a failed run

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use common::wan_cluster::WanCluster;
use common::{ACCESS_KEY, SECRET_KEY};
use meridian_wan::LinkConfig;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let one_way = Duration::from_millis(env_u64("ONE_WAY_MS", 20));
    let seconds = env_u64("SECONDS", 10);
    let concurrency = env_u64("CONCURRENCY", 32);
    let cluster = WanCluster::start(LinkConfig::one_way(one_way), &[]).await;
    // Region b's view of etcd: its own member first, the others through the WAN proxy.
    let mut etcd = vec![cluster.etcd.client_endpoint(1)];
    for j in [0, 2] {
        etcd.push(format!("http://{}", cluster.etcd_links[3 + j].local_addr()));
    }
    let node = &cluster.nodes[1];
    let pid = node.pid().to_string();
    let (seconds, concurrency) = (format!("{seconds}s"), concurrency.to_string());
    let mut cmd = std::process::Command::new(common::binary());
    cmd.args(["kv", "--endpoint", &node.endpoint, "--bucket", "kvbench", "bench", "--duration", &seconds]);
    cmd.args(["-c", &concurrency, "--server-pid", &pid, "--compare-etcd", &etcd.join(",")]);
    cmd.env("AWS_ACCESS_KEY_ID", ACCESS_KEY).env("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
    println!(
        "three regions, {} ms one way; kv bench from region b, c={concurrency}, {seconds} per workload",
        one_way.as_millis()
    );
    let status = tokio::task::spawn_blocking(move || cmd.status()).await.unwrap().unwrap();
    assert!(status.success(), "kv bench failed: {status}");
}
