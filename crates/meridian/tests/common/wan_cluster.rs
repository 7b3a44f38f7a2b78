//! Three regions on one machine: three etcd members and three Meridian nodes, with the project's
//! WAN proxy on every link between regions — etcd peer traffic, node-to-etcd traffic across
//! regions, and node-to-node blob fetches. Used by the region tests and the region benchmark.

#![allow(clippy::unwrap_used)] // test harness: a failed unwrap is a failed test

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use meridian_meta_etcd::testing::EtcdCluster;
use meridian_wan::{LinkConfig, WanHandle, WanProxy};

use super::{CLUSTER_TOKEN, Server, md5_hex};

pub const REGIONS: [&str; 3] = ["region-a", "region-b", "region-c"];

pub struct WanCluster {
    pub nodes: Vec<Server>,
    /// The proxy in front of each node's S3 port (what the other nodes use).
    pub node_links: Vec<WanHandle>,
    /// etcd peer links, then node-to-etcd links across regions.
    pub etcd_links: Vec<WanHandle>,
    pub etcd: EtcdCluster,
    _tmp: tempfile::TempDir,
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

fn addr_of(url: &str) -> SocketAddr {
    url.trim_start_matches("http://").parse().unwrap()
}

async fn proxy(to: SocketAddr, config: LinkConfig) -> WanHandle {
    WanProxy::start("127.0.0.1:0".parse().unwrap(), to, config).await.unwrap()
}

/// Starts one region's node on `endpoints` (data in `dir/region`), behind a WAN proxy for the
/// other nodes.
async fn start_node(
    dir: &std::path::Path,
    region: &str,
    endpoints: &[String],
    link: LinkConfig,
    node_args: &[&str],
    clock_skew: Option<&str>,
) -> (Server, WanHandle) {
    // The port is free when picked and taken when the node binds it; anything on the machine
    // can take it between the two. A node that exits at start is tried again on another port.
    for attempt in 1.. {
        let listen = free_addr();
        let node_link = proxy(listen, link).await;
        match try_start_node(dir, region, endpoints, &node_link, listen, node_args, clock_skew).await {
            Ok(node) => return (node, node_link),
            Err(why) if attempt < 3 => eprintln!("{region}'s node did not start on {listen} ({why}); another port"),
            Err(why) => panic!("{region}'s node did not start, {attempt} times: {why}"),
        }
    }
    unreachable!("the loop returns or panics")
}

/// One try of [`start_node`] with the node on `listen`, behind `node_link`.
async fn try_start_node(
    dir: &std::path::Path,
    region: &str,
    endpoints: &[String],
    node_link: &WanHandle,
    listen: SocketAddr,
    node_args: &[&str],
    clock_skew: Option<&str>,
) -> Result<Server, String> {
    let mut args = vec![
        "--etcd".to_string(),
        endpoints.join(","),
        "--region".into(),
        region.to_string(),
        "--cluster-token".into(),
        CLUSTER_TOKEN.into(),
        "--advertise".into(),
        format!("http://{}", node_link.local_addr()),
    ];
    args.extend(node_args.iter().map(|a| a.to_string()));
    let data = dir.join(region);
    let listen = listen.to_string();
    let clock_skew = clock_skew.map(str::to_string);
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let cmd = Server::command(&data, &args, Some(&listen), None);
        let cmd = match &clock_skew {
            Some(skew) => super::under_faketime(skew, cmd),
            None => cmd,
        };
        Server::try_start_command(cmd, &data, &args)
    })
    .await
    .unwrap()
}

impl WanCluster {
    /// Starts the cluster with `link` on every cross-region link and `node_args` added to every
    /// node's flags.
    pub async fn start(link: LinkConfig, node_args: &[&str]) -> WanCluster {
        let args: Vec<String> = node_args.iter().map(|a| a.to_string()).collect();
        WanCluster::start_each(link, |_| args.clone()).await
    }

    /// Like [`WanCluster::start`], with each node's own flags (`node_args(i)` for region `i`).
    pub async fn start_each(link: LinkConfig, node_args: impl Fn(usize) -> Vec<String>) -> WanCluster {
        WanCluster::start_skewed(link, node_args, [None; 3]).await
    }

    /// Like [`WanCluster::start_each`], with node `i`'s wall clock moved by `clock_skews[i]`
    /// (see [`super::under_faketime`]; a restarted node runs without it).
    pub async fn start_skewed(
        link: LinkConfig,
        node_args: impl Fn(usize) -> Vec<String>,
        clock_skews: [Option<&str>; 3],
    ) -> WanCluster {
        // etcd peers reach each other through proxies.
        let mut builder = EtcdCluster::builder(3).arg("--max-txn-ops=32768").arg("--max-request-bytes=16777216");
        let mut etcd_links = Vec::new();
        for i in 0..3 {
            let peer = addr_of(&builder.member(i).listen_peer_url);
            let p = proxy(peer, link).await;
            builder.member_mut(i).advertise_peer_url = format!("http://{}", p.local_addr());
            etcd_links.push(p);
        }
        let etcd = tokio::task::spawn_blocking(move || builder.start()).await.unwrap();
        // Each node talks to its own region's member directly, to the others through proxies.
        let mut client_links = Vec::new();
        for i in 0..3 {
            client_links.push(proxy(addr_of(&etcd.client_endpoint(i)), link).await);
        }
        let tmp = tempfile::tempdir().unwrap();
        let mut nodes = Vec::new();
        let mut node_links = Vec::new();
        for (i, region) in REGIONS.iter().enumerate() {
            let mut endpoints = vec![etcd.client_endpoint(i)];
            for (j, l) in client_links.iter().enumerate() {
                if j != i {
                    endpoints.push(format!("http://{}", l.local_addr()));
                }
            }
            let args = node_args(i);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (node, node_link) = start_node(tmp.path(), region, &endpoints, link, &args, clock_skews[i]).await;
            nodes.push(node);
            node_links.push(node_link);
        }
        etcd_links.extend(client_links);
        WanCluster { nodes, node_links, etcd_links, etcd, _tmp: tmp }
    }

    /// The "home region" layout of docs/etcd.md: three voting members in region a (a quorum
    /// without crossing the WAN), a learner in region b for its local reads, one node in each
    /// region. Region b's node reaches the voters through the WAN proxy. The learner's own peer
    /// links are not delayed (etcd members dial each other's single advertised URL, so one proxy
    /// cannot delay only the cross-region pairs): its replication lag looks smaller than on a
    /// real WAN, while every write from region b still crosses the WAN to the voters and back.
    pub async fn start_home_region(link: LinkConfig, node_args: &[&str]) -> WanCluster {
        let builder = EtcdCluster::builder(3).arg("--max-txn-ops=32768").arg("--max-request-bytes=16777216");
        let etcd = tokio::task::spawn_blocking(move || {
            let mut etcd = builder.start();
            etcd.add_learner();
            etcd
        })
        .await
        .unwrap();
        let mut client_links = Vec::new();
        for i in 0..3 {
            client_links.push(proxy(addr_of(&etcd.client_endpoint(i)), link).await);
        }
        let voters_direct: Vec<String> = (0..3).map(|i| etcd.client_endpoint(i)).collect();
        let mut region_b = vec![etcd.client_endpoint(3)];
        region_b.extend(client_links.iter().map(|l| format!("http://{}", l.local_addr())));
        let tmp = tempfile::tempdir().unwrap();
        let mut nodes = Vec::new();
        let mut node_links = Vec::new();
        for (region, endpoints) in [("region-a", voters_direct), ("region-b", region_b)] {
            let (node, node_link) = start_node(tmp.path(), region, &endpoints, link, node_args, None).await;
            nodes.push(node);
            node_links.push(node_link);
        }
        WanCluster { nodes, node_links, etcd_links: client_links, etcd, _tmp: tmp }
    }

    /// Another node in `region` (data in `name`), reaching every etcd member through the WAN
    /// proxies in front of their client ports (`etcd_links[3..6]`), so partitioning those cuts
    /// it off from etcd while the three regions' own nodes keep their local member.
    pub async fn start_node_through_wan(&self, name: &str, region: &str, node_args: &[&str]) -> (Server, WanHandle) {
        let endpoints: Vec<String> =
            self.etcd_links[3..6].iter().map(|l| format!("http://{}", l.local_addr())).collect();
        let link = self.etcd_links[3].config();
        let dir = self._tmp.path().join(name);
        start_node(&dir, region, &endpoints, link, node_args, None).await
    }

    pub fn client(&self, i: usize) -> aws_sdk_s3::Client {
        self.nodes[i].client()
    }
}

/// Waits up to `timeout` for every node to see all three regions' nodes healthy.
pub fn wait_until(timeout: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if ready() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// The names of the chunk files in a node's cache.
pub fn cache_entries(node: &Server) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let Ok(shards) = std::fs::read_dir(node.data.join("cache")) else { return names };
    for shard in shards.flatten() {
        if shard.file_name() == "tmp" || !shard.path().is_dir() {
            continue;
        }
        for entry in std::fs::read_dir(shard.path()).unwrap().flatten() {
            names.insert(entry.file_name().to_string_lossy().to_string());
        }
    }
    names
}

/// Polls `check` every 20 ms until it holds or `limit` passed; returns how long it took.
pub async fn within(limit: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

/// `cluster status --json` asked of `node`.
pub fn cluster_status(node: &Server) -> serde_json::Value {
    let mut cmd = std::process::Command::new(super::binary());
    cmd.args(["cluster", "status", "--json", "--url", &node.admin_url, "--token", super::ADMIN_TOKEN]);
    let out = super::run_with_timeout(&mut cmd, Duration::from_secs(30));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Writes an object into bucket `media`.
pub async fn put(client: &aws_sdk_s3::Client, key: &str, data: Vec<u8>) {
    client.put_object().bucket("media").key(key).body(ByteStream::from(data)).send().await.unwrap();
}

/// Reads the whole object of bucket `media` at `node` and checks its bytes.
pub fn read_whole(node: &Server, key: &str, expected: &[u8]) -> super::raw::Response {
    let got = super::raw::signed(&node.addr, "GET", &format!("/media/{key}"), &[], b"");
    assert_eq!(got.status, 200, "{key}: {}", String::from_utf8_lossy(&got.body));
    assert_eq!(md5_hex(&got.body), md5_hex(expected), "{key} reads back whole");
    got
}

/// Waits until `node`'s cache holds `extra` more entries than `before`, then checks each object
/// is a local hit there on its first read.
pub async fn assert_pushed(node: &Server, before: usize, objects: &[(String, Vec<u8>)], limit: Duration) {
    let want = before + objects.len();
    within(limit, "small objects pushed without a read", || cache_entries(node).len() >= want).await;
    for (key, data) in objects {
        let got = read_whole(node, key, data);
        assert_eq!(got.header("x-meridian-cache"), Some("hit"), "{key} was in the cache before it was read");
    }
}

/// Waits (up to 10 s: the node is starting) until none of `chunks` is in `node`'s cache.
pub async fn assert_left_cache(node: &Server, chunks: &BTreeSet<String>, what: &str) {
    within(Duration::from_secs(10), what, || cache_entries(node).is_disjoint(chunks)).await;
}
