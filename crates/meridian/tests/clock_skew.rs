//! TTLs across regions when one node's wall clock is wrong: three regions (real etcd, the WAN
//! proxy at 40 ms RTT), region c's node 6 s ahead through `faketime`. Every node judges expiry
//! on the cluster's median clock, so objects expire at the same moment everywhere, whichever
//! node set the TTL, and after that node is killed.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::{Duration, Instant};

use common::wan_cluster::{WanCluster, cluster_status};
use common::{Server, raw};
use meridian_wan::LinkConfig;

const SKEW: &str = "+6s";
const TTL: Duration = Duration::from_secs(4);

/// The clock offset `region`'s node published, once it has measured one.
fn published_offset(status: &serde_json::Value, region: &str) -> Option<i64> {
    let nodes = status["nodes"].as_array()?;
    nodes.iter().find(|n| n["region"] == region)?["clock_offset_ms"].as_i64()
}

fn put_with_ttl(node: &Server, key: &str) {
    let ttl = format!("{}s", TTL.as_secs());
    let put = raw::signed(&node.addr, "PUT", &format!("/ttls/{key}"), &[("x-meridian-ttl", ttl)], b"short-lived");
    assert_eq!(put.status, 200, "{}", put.text());
}

fn status_of(node: &Server, key: &str) -> u16 {
    raw::signed(&node.addr, "GET", &format!("/ttls/{key}"), &[], b"").status
}

/// Checks that `key`, written with [`TTL`] at `written`, reads on every node of `readers` until
/// shortly before its expiry and on none of them shortly after.
async fn assert_expires_on_time(readers: &[&Server], key: &str, written: Instant) {
    let (visible_until, gone_by) = (TTL - Duration::from_millis(600), TTL + Duration::from_millis(1500));
    while written.elapsed() < visible_until {
        for node in readers {
            assert_eq!(status_of(node, key), 200, "{key} expired early on {} ({:?})", node.addr, written.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(gone_by.saturating_sub(written.elapsed())).await;
    for node in readers {
        assert_eq!(status_of(node, key), 404, "{key} still served by {} after its TTL", node.addr);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_ttls_expire_on_the_clusters_clock_despite_a_skewed_node_and_a_dead_writer() {
    let link = LinkConfig::one_way(Duration::from_millis(20));
    let mut cluster = WanCluster::start_skewed(link, |_| Vec::new(), [None, None, Some(SKEW)]).await;
    // Region c measures itself 6 s ahead of the two others and corrects by it.
    let started = Instant::now();
    let offset = loop {
        if let Some(offset) = published_offset(&cluster_status(&cluster.nodes[0]), "region-c") {
            break offset;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "region c never published a clock offset");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!((-6300..=-5700).contains(&offset), "region c's offset is {offset} ms, not about -6 s");
    cluster.client(0).create_bucket().bucket("ttls").send().await.unwrap();

    // The skewed node sets a TTL: the others see it expire after 4 s, not 10.
    put_with_ttl(&cluster.nodes[2], "set-by-c");
    let written = Instant::now();
    let everyone: Vec<&Server> = cluster.nodes.iter().collect();
    assert_expires_on_time(&everyone, "set-by-c", written).await;

    // A good node sets a TTL and dies at once: the skewed node neither hides the object early
    // nor lets it outlive its TTL.
    put_with_ttl(&cluster.nodes[0], "set-by-a");
    let written = Instant::now();
    cluster.nodes[0].kill9();
    assert_expires_on_time(&[&cluster.nodes[1], &cluster.nodes[2]], "set-by-a", written).await;
}
