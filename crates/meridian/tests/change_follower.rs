//! The change follower across three regions (real etcd, the WAN proxy at 40 ms RTT): old
//! chunks leave every region's cache when an object is overwritten or deleted, small objects
//! reach every region's cache without a read, and a node catches up from its durable cursor
//! after a partition, a restart, or a compaction of etcd's history past its cursor.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::wan_cluster::{WanCluster, assert_left_cache, assert_pushed, cache_entries, put, read_whole, within};
use common::{Server, pattern};
use meridian_meta::MetaStore;
use meridian_wan::LinkConfig;

const ONE_WAY: Duration = Duration::from_millis(20);
const SMALL: usize = 60_000;

async fn start_cluster() -> WanCluster {
    WanCluster::start(LinkConfig::one_way(ONE_WAY), &[]).await
}

/// The cache entries of `node` that are not in `before`.
fn added_since(node: &Server, before: &BTreeSet<String>) -> BTreeSet<String> {
    cache_entries(node).difference(before).cloned().collect()
}

/// Writes `count` small objects at region a.
async fn put_small_objects(cluster: &WanCluster, prefix: &str, count: u64) -> Vec<(String, Vec<u8>)> {
    let mut objects = Vec::new();
    for i in 0..count {
        let (key, data) = (format!("{prefix}-{i}.jpg"), pattern(SMALL, 100 + i));
        put(&cluster.client(0), &key, data.clone()).await;
        objects.push((key, data));
    }
    objects
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_old_chunks_leave_every_regions_cache_within_a_second_of_an_overwrite() {
    let cluster = start_cluster().await;
    let a = cluster.client(0);
    a.create_bucket().bucket("media").send().await.unwrap();
    let movie = pattern(100 << 20, 1);
    put(&a, "movie.mp4", movie.clone()).await;
    let trailer = pattern(9 << 20, 2);
    put(&a, "trailer.mp4", trailer.clone()).await;
    let mut cached = Vec::new();
    for node in &cluster.nodes[1..] {
        read_whole(node, "movie.mp4", &movie);
        let movie_chunks = cache_entries(node);
        assert_eq!(movie_chunks.len(), 13, "100 MiB in 8 MiB chunks");
        read_whole(node, "trailer.mp4", &trailer);
        let trailer_chunks = added_since(node, &movie_chunks);
        assert_eq!(trailer_chunks.len(), 2);
        cached.push([movie_chunks, trailer_chunks]);
    }
    const MOVIE: usize = 0;
    const TRAILER: usize = 1;
    let gone = |which: usize| {
        cluster.nodes[1..].iter().zip(&cached).all(|(node, sets)| cache_entries(node).is_disjoint(&sets[which]))
    };

    put(&a, "movie.mp4", b"replaced".to_vec()).await;
    let took = within(Duration::from_secs(1), "the overwritten movie's chunks left b and c", || gone(MOVIE)).await;
    println!("old chunks gone from every region {took:?} after the overwrite was acknowledged");
    for (node, sets) in cluster.nodes[1..].iter().zip(&cached) {
        assert!(cache_entries(node).is_superset(&sets[TRAILER]), "other objects' chunks stay");
    }

    a.delete_object().bucket("media").key("trailer.mp4").send().await.unwrap();
    within(Duration::from_secs(1), "the deleted trailer's chunks left b and c", || gone(TRAILER)).await;
}

/// Three regions, bucket `media` with a 20 MiB `big.bin` written in region a and read (so
/// cached) in region c; returns the names of its chunks in c's cache.
async fn with_big_object_cached_in_c(seed: u64) -> (WanCluster, BTreeSet<String>) {
    let cluster = start_cluster().await;
    let a = cluster.client(0);
    a.create_bucket().bucket("media").send().await.unwrap();
    let big = pattern(20 << 20, seed);
    put(&a, "big.bin", big.clone()).await;
    read_whole(&cluster.nodes[2], "big.bin", &big);
    let big_chunks = cache_entries(&cluster.nodes[2]);
    assert_eq!(big_chunks.len(), 3, "20 MiB in 8 MiB chunks");
    (cluster, big_chunks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_small_objects_reach_a_region_after_a_partition_and_after_a_restart() {
    let (mut cluster, big_chunks) = with_big_object_cached_in_c(3).await;
    let a = cluster.client(0);

    // Region a cannot be reached by the other regions while these are written: every push
    // fails at first, and arrives once the link heals, without any read.
    cluster.node_links[0].partition_with(meridian_wan::PartitionMode::Reset);
    let cut_off = put_small_objects(&cluster, "cut-off", 4).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.node_links[0].heal();
    assert_pushed(&cluster.nodes[2], big_chunks.len(), &cut_off, Duration::from_secs(15)).await;

    // Region c is down while objects are written and the big one is overwritten; it catches
    // up from its cursor when it comes back.
    let before = cache_entries(&cluster.nodes[2]).len();
    cluster.nodes[2].kill9();
    put(&a, "big.bin", b"replaced".to_vec()).await;
    let while_down = put_small_objects(&cluster, "while-down", 4).await;
    cluster.nodes[2].restart();
    let c = &cluster.nodes[2];
    assert_left_cache(c, &big_chunks, "the overwritten object's chunks left c after its restart").await;
    assert_pushed(c, before - big_chunks.len(), &while_down, Duration::from_secs(15)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_a_node_whose_cursor_etcd_compacted_scans_and_catches_up() {
    let (mut cluster, big_chunks) = with_big_object_cached_in_c(4).await;
    let a = cluster.client(0);
    let kept = pattern(9 << 20, 5);
    put(&a, "kept.bin", kept.clone()).await;
    read_whole(&cluster.nodes[2], "kept.bin", &kept);
    let kept_chunks = added_since(&cluster.nodes[2], &big_chunks);

    cluster.nodes[2].kill9();
    a.delete_object().bucket("media").key("big.bin").send().await.unwrap();
    let while_down = put_small_objects(&cluster, "while-down", 3).await;
    // etcd forgets the history c's cursor points into.
    let etcd =
        meridian_meta_etcd::EtcdStore::connect(meridian_meta_etcd::EtcdOptions::new(cluster.etcd.client_endpoints()))
            .await
            .unwrap();
    let now = etcd.current_revision().await.unwrap();
    etcd.compact(now).await.unwrap();

    cluster.nodes[2].restart();
    let c = &cluster.nodes[2];
    assert_left_cache(c, &big_chunks, "the deleted object's chunks left c after the scan").await;
    assert!(cache_entries(c).is_superset(&kept_chunks), "chunks of objects that did not change stay");
    assert_pushed(c, kept_chunks.len(), &while_down, Duration::from_secs(15)).await;
}
