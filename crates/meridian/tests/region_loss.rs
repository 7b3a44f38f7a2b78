//! Losing a region (three regions, real etcd, the WAN proxy at 40 ms RTT): region a's node is
//! killed (`kill -9`, its link blackholed like a machine that vanished), then its etcd member.
//! The other regions keep reading and writing metadata, serve what they hold a copy of, answer
//! reads of bytes only region a held with a fast 503 naming it, and region a catches up when
//! it returns.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use common::wan_cluster::{
    WanCluster, assert_left_cache, assert_pushed, cache_entries, cluster_status, put, read_whole, within,
};
use common::{Server, pattern};
use meridian_wan::{LinkConfig, PartitionMode};

const SMALL: usize = 60_000;

/// Whether `observer` reports `region`'s node down.
fn reports_down(observer: &Server, region: &str) -> bool {
    let status = cluster_status(observer);
    status["nodes"].as_array().unwrap().iter().any(|n| n["region"] == region && n["healthy"] == false)
}

/// A GET at `node`: its response and how long it took.
fn timed_get(node: &Server, key: &str) -> (common::raw::Response, Duration) {
    let started = Instant::now();
    let got = common::raw::signed(&node.addr, "GET", &format!("/media/{key}"), &[], b"");
    (got, started.elapsed())
}

/// Writes at `client` until one is acknowledged (an etcd election may be under way), for at
/// most 15 s.
async fn put_eventually(client: &aws_sdk_s3::Client, key: &str, data: &[u8]) -> Duration {
    let started = Instant::now();
    loop {
        let body = ByteStream::from(data.to_vec());
        match client.put_object().bucket("media").key(key).body(body).send().await {
            Ok(_) => return started.elapsed(),
            Err(e) => assert!(started.elapsed() < Duration::from_secs(15), "{key}: writes never resumed: {e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_losing_a_region_keeps_the_others_going_and_it_catches_up_when_it_returns() {
    let mut cluster = WanCluster::start(LinkConfig::one_way(Duration::from_millis(20)), &[]).await;
    let (a, b) = (cluster.client(0), cluster.client(1));
    a.create_bucket().bucket("media").send().await.unwrap();
    let only_in_a = pattern(1 << 20, 1);
    put(&a, "only-in-a.bin", only_in_a.clone()).await;
    let small = pattern(SMALL, 2);
    put(&a, "small.jpg", small.clone()).await;
    let cached_in_c = pattern(9 << 20, 3);
    put(&a, "cached-in-c.bin", cached_in_c.clone()).await;
    read_whole(&cluster.nodes[2], "cached-in-c.bin", &cached_in_c);
    // Region a caches an object of region b, overwritten while a is down.
    let from_b = pattern(9 << 20, 4);
    put(&b, "from-b.bin", from_b.clone()).await;
    read_whole(&cluster.nodes[0], "from-b.bin", &from_b);
    let a_chunks = cache_entries(&cluster.nodes[0]);
    assert_eq!(a_chunks.len(), 2, "9 MiB in 8 MiB chunks");
    // The small object is pushed to b (its only cache entry) and c (after the 2 chunks).
    within(Duration::from_secs(10), "small.jpg pushed to b and c", || {
        cache_entries(&cluster.nodes[1]).len() == 1 && cache_entries(&cluster.nodes[2]).len() == 3
    })
    .await;

    // Region a's machine vanishes: its process dies and connections to it hang.
    cluster.nodes[0].kill9();
    cluster.node_links[0].partition_with(PartitionMode::Blackhole { refuse_new: false });
    let killed = Instant::now();
    // Copies elsewhere serve at once, before a is even known down.
    for (node, key, data) in [(1, "small.jpg", &small), (2, "small.jpg", &small), (2, "cached-in-c.bin", &cached_in_c)]
    {
        let (got, took) = timed_get(&cluster.nodes[node], key);
        assert_eq!(got.status, 200, "{key} at node {node}: {}", got.text());
        assert_eq!(got.body, *data, "{key} at node {node}");
        assert_eq!(got.header("x-meridian-cache"), Some("hit"), "{key} at node {node}");
        // Asking the vanished holder would hang for the peer idle timeout (30 s).
        assert!(took < Duration::from_secs(5), "{key} at node {node} took {took:?}");
    }

    // Then its etcd member: two of three are left, a quorum.
    cluster.etcd.kill(0);
    let took = put_eventually(&b, "after-loss.txt", b"written while a is down").await;
    println!("the first write in region b after losing region a's etcd member took {took:?}");
    read_whole(&cluster.nodes[2], "after-loss.txt", b"written while a is down");
    let head = cluster.client(2).head_object().bucket("media").key("only-in-a.bin").send().await.unwrap();
    assert_eq!(head.content_length(), Some(1 << 20), "metadata of region a's objects stays readable");
    let listed = cluster.client(2).list_objects_v2().bucket("media").send().await.unwrap();
    assert_eq!(listed.contents().len(), 5, "{listed:?}");

    // Once b and c know a is down, reads of bytes only a held fail at once, naming it.
    within(Duration::from_secs(20), "b and c report region a down", || {
        reports_down(&cluster.nodes[1], "region-a") && reports_down(&cluster.nodes[2], "region-a")
    })
    .await;
    println!("region a known down {:?} after it was killed", killed.elapsed());
    for node in [1, 2] {
        let (got, took) = timed_get(&cluster.nodes[node], "only-in-a.bin");
        println!("node {node}: {} in {took:?}: {}", got.status, got.text());
        assert_eq!(got.status, 503, "{}", got.text());
        assert_eq!(got.error_code(), "ServiceUnavailable");
        assert!(got.text().contains("region region-a"), "the error names the region: {}", got.text());
        assert!(took < Duration::from_millis(500), "a read of a lost region's object took {took:?}");
    }

    // While a is down: its cached object is overwritten, small objects are written.
    put_eventually(&b, "from-b.bin", b"replaced").await;
    let mut while_down = Vec::new();
    for i in 0..3 {
        let (key, data) = (format!("while-down-{i}.jpg"), pattern(SMALL, 10 + i));
        put(&b, &key, data.clone()).await;
        while_down.push((key, data));
    }

    // Region a returns, with no operator action beyond restarting it.
    let etcd = &mut cluster.etcd;
    tokio::task::block_in_place(|| etcd.restart(0));
    cluster.node_links[0].heal();
    cluster.nodes[0].restart();
    let a_node = &cluster.nodes[0];
    assert_left_cache(a_node, &a_chunks, "the object overwritten while a was down left a's cache").await;
    assert_pushed(a_node, 0, &while_down, Duration::from_secs(15)).await;
    read_whole(a_node, "after-loss.txt", b"written while a is down");
    for node in [1, 2] {
        within(Duration::from_secs(10), "region a's object readable again", || {
            timed_get(&cluster.nodes[node], "only-in-a.bin").0.status == 200
        })
        .await;
        read_whole(&cluster.nodes[node], "only-in-a.bin", &only_in_a);
    }
}
