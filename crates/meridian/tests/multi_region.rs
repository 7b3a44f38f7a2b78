//! Multi-region buckets (`multi:R1,R2[;quorum=N]`) with three regions behind the WAN proxy
//! (20 ms each way) and a real etcd: a write is durable in every listed region before it is
//! acknowledged, survives losing the region that took it, fails fast naming a listed region
//! that is down (or succeeds on the bucket's quorum), and its bytes never reach an unlisted
//! region. Global buckets with `replicas = N` keep N copies, in the nearest regions, and make
//! new ones when a holder is lost.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::{Duration, Instant};

use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
use common::wan_cluster::{WanCluster, cache_entries, within};
use common::{Server, md5_hex, pattern};
use meridian_wan::LinkConfig;

/// The blob files on a node's disk, by size.
fn blob_sizes(node: &Server) -> Vec<u64> {
    let mut sizes = Vec::new();
    let Ok(shards) = std::fs::read_dir(node.data.join("blobs")) else { return sizes };
    for shard in shards.flatten() {
        for blob in std::fs::read_dir(shard.path()).unwrap().flatten() {
            sizes.push(blob.metadata().unwrap().len());
        }
    }
    sizes
}

/// How many blob files of exactly `size` bytes the node has.
fn blobs_of_size(node: &Server, size: usize) -> usize {
    blob_sizes(node).iter().filter(|s| **s == size as u64).count()
}

async fn create(client: &aws_sdk_s3::Client, bucket: &str, location: &str) {
    let config =
        CreateBucketConfiguration::builder().location_constraint(BucketLocationConstraint::from(location)).build();
    client.create_bucket().bucket(bucket).create_bucket_configuration(config).send().await.unwrap();
}

fn put(node: &Server, path: &str, data: &[u8]) -> (common::raw::Response, Duration) {
    let started = Instant::now();
    let got = common::raw::signed(&node.addr, "PUT", path, &[], data);
    (got, started.elapsed())
}

fn get(node: &Server, path: &str) -> common::raw::Response {
    common::raw::signed(&node.addr, "GET", path, &[], b"")
}

/// How many striped-copy requests (`?…&stripes=`) a link carried towards its node since its
/// capture started.
fn striped_requests(link: &meridian_wan::WanHandle) -> usize {
    link.captured().forward.windows(b"&stripes=".len()).filter(|w| w == b"&stripes=").count()
}

/// A copy goes striped to a region far away and on one stream to a near one: the writing node
/// chooses by the round trip its clock samples measured to the receiving node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_copies_are_striped_to_far_regions_and_sent_on_one_stream_to_near_ones() {
    let cluster = WanCluster::start(LinkConfig::one_way(Duration::from_millis(20)), &[]).await;
    create(&cluster.client(0), "media", "multi:region-a,region-b").await;
    let to_b = &cluster.node_links[1];
    let big = pattern(3 << 20, 3);
    to_b.start_capture(32 << 20);
    assert_eq!(put(&cluster.nodes[0], "/media/far", &big).0.status, 200);
    assert!(striped_requests(to_b) >= 3, "a 3 MiB copy to a region 40 ms away goes over several streams");

    // Region b comes near: once a's clock samples have measured it, copies take one stream.
    to_b.set_config(LinkConfig::none());
    let started = Instant::now();
    let mut attempt = 0;
    loop {
        attempt += 1;
        to_b.start_capture(32 << 20);
        assert_eq!(put(&cluster.nodes[0], &format!("/media/near-{attempt}"), &big).0.status, 200);
        if striped_requests(to_b) == 0 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "copies to a near region are still striped");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let copied = to_b.captured().forward;
    assert!(copied.windows(b"PUT /_meridian/blob/".len()).any(|w| w == b"PUT /_meridian/blob/"), "the copy went to b");
    assert_eq!(blobs_of_size(&cluster.nodes[1], big.len()), attempt + 1, "b has every copy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_a_multi_region_write_is_in_every_listed_region_and_nowhere_else() {
    let mut cluster = WanCluster::start(LinkConfig::one_way(Duration::from_millis(20)), &[]).await;
    let a = cluster.client(0);
    create(&a, "media", "multi:region-a,region-b").await;
    let location = cluster.client(2).get_bucket_location().bucket("media").send().await.unwrap();
    assert_eq!(location.location_constraint().map(|l| l.as_str()), Some("multi:region-a,region-b"));

    // Acknowledged once both listed regions have the bytes: b holds them the moment the PUT
    // returns (no read, no background copy).
    let big = pattern(3 << 20, 1);
    let (put_a, _) = put(&cluster.nodes[0], "/media/big.bin", &big);
    assert_eq!(put_a.status, 200, "{}", put_a.text());
    assert_eq!(blobs_of_size(&cluster.nodes[0], big.len()), 1);
    assert_eq!(blobs_of_size(&cluster.nodes[1], big.len()), 1, "region b has its copy when the write returns");
    // The write waited for its copy after taking in the body: at least one 40 ms round trip.
    let metrics = common::metrics::scrape(&cluster.nodes[0]);
    let waits = common::metrics::sample(&metrics, "meridian_multi_region_copy_wait_seconds_count", &[]);
    let waited = common::metrics::sample(&metrics, "meridian_multi_region_copy_wait_seconds_sum", &[]);
    assert_eq!(waits, 1.0, "{metrics}");
    assert!((0.04..3.0).contains(&waited), "waited {waited} s for the copy");
    assert_eq!(common::metrics::sample(&metrics, "meridian_multi_region_copy_failures_total", &[]), 0.0);
    // Taking the body in (3 MiB streamed here and to region b) was timed once, before the wait.
    let multi = [("placement", "multi_region")];
    assert_eq!(common::metrics::sample(&metrics, "meridian_ingest_seconds_count", &multi), 1.0, "{metrics}");
    let ingest = common::metrics::sample(&metrics, "meridian_ingest_seconds_sum", &multi);
    assert!(ingest > 0.0 && ingest < 3.0, "took {ingest} s to take the body in");
    // Small objects are blobs too (not inline in etcd, whose members are in every region).
    let small = pattern(2_000, 2);
    assert_eq!(put(&cluster.nodes[1], "/media/small.txt", &small).0.status, 200);
    assert_eq!((blobs_of_size(&cluster.nodes[0], 2_000), blobs_of_size(&cluster.nodes[1], 2_000)), (1, 1));

    // CopyObject and multipart parts make their copies the same way.
    a.copy_object().bucket("media").key("copy.bin").copy_source("media/big.bin").send().await.unwrap();
    assert_eq!(blobs_of_size(&cluster.nodes[1], big.len()), 2, "the copy's bytes are in region b too");
    let upload = a.create_multipart_upload().bucket("media").key("parts.bin").send().await.unwrap();
    let part = pattern(5 << 20, 6);
    let id = upload.upload_id().unwrap();
    let etag = a
        .upload_part()
        .bucket("media")
        .key("parts.bin")
        .upload_id(id)
        .part_number(1)
        .body(part.clone().into())
        .send()
        .await
        .unwrap()
        .e_tag()
        .unwrap()
        .to_string();
    assert_eq!(blobs_of_size(&cluster.nodes[1], part.len()), 1, "region b has the part when UploadPart returns");
    let done = aws_sdk_s3::types::CompletedPart::builder().part_number(1).e_tag(etag).build();
    let parts = aws_sdk_s3::types::CompletedMultipartUpload::builder().parts(done).build();
    a.complete_multipart_upload()
        .bucket("media")
        .key("parts.bin")
        .upload_id(id)
        .multipart_upload(parts)
        .send()
        .await
        .unwrap();

    // Region c is not listed: its writes and reads are served by a listed region.
    let via_c = pattern(200_000, 3);
    let (put_c, _) = put(&cluster.nodes[2], "/media/via-c.bin", &via_c);
    assert_eq!((put_c.status, put_c.header("x-meridian-forwarded-to")), (200, Some("region-a")), "{}", put_c.text());
    let read_c = get(&cluster.nodes[2], "/media/big.bin");
    assert_eq!((read_c.status, read_c.header("x-meridian-forwarded-to")), (200, Some("region-a")));
    assert_eq!(md5_hex(&read_c.body), md5_hex(&big));
    tokio::time::sleep(Duration::from_secs(2)).await; // the change follower's pushes
    assert!(blob_sizes(&cluster.nodes[2]).is_empty(), "no blob in region c: {:?}", blob_sizes(&cluster.nodes[2]));
    assert!(cache_entries(&cluster.nodes[2]).is_empty(), "nothing cached in region c");
    assert_eq!(blobs_of_size(&cluster.nodes[1], via_c.len()), 1);

    // The region that took the write dies: the other listed region serves it from its disk.
    cluster.nodes[0].kill9();
    let read_b = get(&cluster.nodes[1], "/media/big.bin");
    assert_eq!(read_b.status, 200, "{}", read_b.text());
    assert_eq!(md5_hex(&read_b.body), md5_hex(&big));
    assert_eq!(read_b.header("x-meridian-served-from"), Some("region-b"));
    assert!(cache_entries(&cluster.nodes[1]).is_empty(), "served from region b's own copy, not a cache");
    assert_eq!(get(&cluster.nodes[1], "/media/small.txt").body, small);
    assert_eq!(md5_hex(&get(&cluster.nodes[1], "/media/parts.bin").body), md5_hex(&part));
    assert_eq!(md5_hex(&get(&cluster.nodes[1], "/media/copy.bin").body), md5_hex(&big));
    // Region c's reads, forwarded to region a until now, go to b at once (a is not yet known down).
    let started = Instant::now();
    let read_c = get(&cluster.nodes[2], "/media/big.bin");
    assert_eq!((read_c.status, read_c.header("x-meridian-forwarded-to")), (200, Some("region-b")), "{}", read_c.text());
    assert_eq!(md5_hex(&read_c.body), md5_hex(&big));
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_a_listed_region_down_fails_writes_fast_naming_it_or_they_succeed_on_the_quorum() {
    let mut cluster = WanCluster::start(LinkConfig::one_way(Duration::from_millis(20)), &[]).await;
    let a = cluster.client(0);
    create(&a, "both", "multi:region-a,region-b").await;
    create(&a, "quorum", "multi:region-a,region-b,region-c;quorum=2").await;
    let data = pattern(300_000, 5);
    assert_eq!(put(&cluster.nodes[0], "/both/before", &data).0.status, 200);

    cluster.nodes[1].kill9();
    // Not yet known down: the copy's connection is refused, the write fails at once.
    let (refused, took) = put(&cluster.nodes[0], "/both/during", &data);
    assert_eq!((refused.status, refused.error_code().as_str()), (503, "RegionUnavailable"), "{}", refused.text());
    assert!(refused.text().contains("region region-b"), "{}", refused.text());
    assert!(took < Duration::from_secs(2), "failed in {took:?}");
    assert_eq!(get(&cluster.nodes[0], "/both/during").status, 404, "nothing was committed");
    // With a quorum of 2 of 3 the write goes on in a and c.
    let (quorum, _) = put(&cluster.nodes[0], "/quorum/during", &data);
    assert_eq!(quorum.status, 200, "{}", quorum.text());
    assert_eq!(blobs_of_size(&cluster.nodes[2], data.len()), 1, "region c has its copy");
    assert_eq!(get(&cluster.nodes[2], "/quorum/during").body, data);
    let metrics = common::metrics::scrape(&cluster.nodes[0]);
    let failures = common::metrics::sample(&metrics, "meridian_multi_region_copy_failures_total", &[]);
    assert_eq!(failures, 2.0, "region b's copy failed in both writes");

    // Known down (no heartbeat for 10 s): refused before the body is read, naming the region.
    within(Duration::from_secs(20), "region b known down", || {
        let (got, _) = put(&cluster.nodes[0], "/both/later", b"x");
        got.text().contains("is down (no heartbeat")
    })
    .await;
    let (down, took) = put(&cluster.nodes[0], "/both/later", &data);
    assert_eq!(down.status, 503, "{}", down.text());
    assert!(down.text().contains("region region-b is down"), "{}", down.text());
    assert!(took < Duration::from_millis(500), "failed in {took:?}");
    // Only the objects written before are in region a: the refused ones left nothing.
    assert_eq!(blobs_of_size(&cluster.nodes[0], data.len()), 2, "before + quorum/during");

    // Region b returns and gets the copy of the write it missed, in the background.
    cluster.nodes[1].restart();
    within(Duration::from_secs(20), "region b's copy of quorum/during", || {
        blobs_of_size(&cluster.nodes[1], data.len()) == 2
    })
    .await;
    cluster.nodes[0].kill9();
    cluster.nodes[2].kill9();
    let repaired = get(&cluster.nodes[1], "/quorum/during");
    assert_eq!((repaired.status, repaired.body == data), (200, true), "{}", repaired.text());
}

/// Uploads `data` as a two-part multipart object (a 5 MiB part and the rest).
async fn put_in_parts(client: &aws_sdk_s3::Client, bucket: &str, key: &str, data: &[u8]) {
    use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
    let upload = client.create_multipart_upload().bucket(bucket).key(key).send().await.unwrap();
    let id = upload.upload_id().unwrap();
    let mut done = Vec::new();
    for (i, piece) in data.chunks(5 << 20).enumerate() {
        let number = i as i32 + 1;
        let part = client.upload_part().bucket(bucket).key(key).upload_id(id).part_number(number);
        let etag = part.body(piece.to_vec().into()).send().await.unwrap().e_tag().unwrap().to_string();
        done.push(CompletedPart::builder().part_number(number).e_tag(etag).build());
    }
    let parts = CompletedMultipartUpload::builder().set_parts(Some(done)).build();
    client
        .complete_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(id)
        .multipart_upload(parts)
        .send()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_global_buckets_with_replicas_keep_copies_in_the_nearest_regions_and_replace_lost_ones() {
    let mut cluster =
        WanCluster::start(LinkConfig::one_way(Duration::from_millis(20)), &["--holder-lost-after", "4s"]).await;
    // Region b is farther from everyone (60 ms each way to it) than a and c are from each other:
    // nearest is by measured round trip, not by name.
    cluster.node_links[1].set_config(LinkConfig::one_way(Duration::from_millis(60)));
    // Round trips are measured with the clock samples: wait until region a published its clock
    // offset (a measurement round done), and for another round with every node registered.
    within(Duration::from_secs(30), "region a's first clock measurement", || {
        let status = common::wan_cluster::cluster_status(&cluster.nodes[0]);
        let nodes = status["nodes"].as_array().cloned().unwrap_or_default();
        nodes.iter().any(|n| n["region"] == "region-a" && n["clock_offset_ms"].is_i64())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let a = cluster.client(0);
    create(&a, "kept", "global;replicas=2").await;
    let listed = common::admin::admin_ok(&cluster.nodes[0], &["bucket", "list"]);
    let kept = listed.as_array().unwrap().iter().find(|b| b["name"] == "kept").unwrap().clone();
    assert_eq!((kept["location"].as_str(), kept["replicas"].as_u64()), (Some("global"), Some(2)), "{kept}");

    // Acknowledged at once (the copy is made in the background), then copied to region c, the
    // nearest; a multipart object's parts too.
    let big = pattern(3 << 20, 7);
    assert_eq!(put(&cluster.nodes[0], "/kept/big.bin", &big).0.status, 200);
    let parted = pattern((5 << 20) + 1_000_000, 8);
    put_in_parts(&a, "kept", "parted.bin", &parted).await;
    within(Duration::from_secs(40), "region c's copies", || {
        blobs_of_size(&cluster.nodes[2], big.len()) == 1
            && blobs_of_size(&cluster.nodes[2], 5 << 20) == 1
            && blobs_of_size(&cluster.nodes[2], 1_000_000) == 1
    })
    .await;
    assert_eq!(blobs_of_size(&cluster.nodes[1], big.len()), 0, "two copies only, not in the farther region b");

    // Raising a bucket's replicas copies what it already holds.
    create(&a, "later", "global").await;
    let later = pattern(200_000, 9);
    assert_eq!(put(&cluster.nodes[0], "/later/x", &later).0.status, 200);
    common::admin::admin_ok(&cluster.nodes[0], &["bucket", "replicas", "later", "2"]);
    within(Duration::from_secs(40), "region c's copy of later/x", || {
        blobs_of_size(&cluster.nodes[2], later.len()) == 1
    })
    .await;

    // Region c is lost: once its holder has been silent for 4 s, region b makes the copies.
    cluster.nodes[2].kill9();
    within(Duration::from_secs(40), "region b's copies after region c was lost", || {
        blobs_of_size(&cluster.nodes[1], big.len()) == 1
            && blobs_of_size(&cluster.nodes[1], 5 << 20) == 1
            && blobs_of_size(&cluster.nodes[1], 1_000_000) == 1
            && blobs_of_size(&cluster.nodes[1], later.len()) == 1
    })
    .await;
    // Then the writer's region goes too: region b serves every object from its own copies.
    cluster.nodes[0].kill9();
    for (path, data) in [("/kept/big.bin", &big), ("/kept/parted.bin", &parted), ("/later/x", &later)] {
        let read = get(&cluster.nodes[1], path);
        assert_eq!(read.status, 200, "{path}: {}", read.text());
        assert_eq!(md5_hex(&read.body), md5_hex(data), "{path}");
        assert_eq!(read.header("x-meridian-served-from"), Some("region-b"), "{path}");
    }
}

/// The repair of a multi-region bucket copies an encrypted object's stored bytes: the region
/// that missed the write gets the sealed blob whole (`crypt::sealed_len` of the plaintext, not
/// the plaintext's size), holds no plaintext, and serves the object alone afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_a_repaired_copy_of_an_encrypted_object_is_its_whole_sealed_blob() {
    use common::{SECRET_MARKER, Sealing, files_containing, secret_body};
    use meridian_engine::crypt::sealed_len;
    let keys = tempfile::tempdir().unwrap();
    let keyring = common::sse_keyring(keys.path());
    let args = ["--sse-keyring", keyring.to_str().unwrap()];
    let mut cluster = WanCluster::start(LinkConfig::one_way(Duration::from_millis(20)), &args).await;
    create(&cluster.client(0), "quorum", "multi:region-a,region-b,region-c;quorum=2").await;

    // Written while region b is down: in a and c, sealed; b is repaired when it returns.
    cluster.nodes[1].kill9();
    let objects = [
        ("/quorum/s3", Sealing::SseS3, secret_body(1_000_000, 1)),
        ("/quorum/kms", Sealing::SseKms, secret_body(1_100_000, 2)),
        ("/quorum/c", Sealing::SseC, secret_body(1_200_000, 3)),
    ];
    let sealed = |data: &[u8]| sealed_len(data.len() as u64) as usize;
    for (path, sealing, data) in &objects {
        let put = common::raw::signed(&cluster.nodes[0].addr, "PUT", path, &sealing.put_headers(), data);
        assert_eq!(put.status, 200, "{path}: {}", put.text());
        assert_eq!(blobs_of_size(&cluster.nodes[2], sealed(data)), 1, "{path}: region c's sealed copy");
    }
    cluster.nodes[1].restart();
    within(Duration::from_secs(20), "region b's repaired copies", || {
        objects.iter().all(|(_, _, data)| blobs_of_size(&cluster.nodes[1], sealed(data)) == 1)
    })
    .await;

    // Region b alone serves them, opened from its repaired copies.
    cluster.nodes[0].kill9();
    cluster.nodes[2].kill9();
    for (path, sealing, data) in &objects {
        let got = common::raw::signed(&cluster.nodes[1].addr, "GET", path, &sealing.get_headers(), b"");
        assert_eq!(got.status, 200, "{path}: {}", got.text());
        assert_eq!(got.header("x-meridian-served-from"), Some("region-b"), "{path}");
        assert_eq!(md5_hex(&got.body), md5_hex(data), "{path} from region b's repaired copy");
    }
    assert_eq!(files_containing(&cluster.nodes[1].data, SECRET_MARKER), Vec::<std::path::PathBuf>::new());
}

/// In a versioned bucket every version written while a region was down gets its copy there,
/// also one a newer version replaced before the repair ran, and the copy is recorded in the
/// version's own entry: region b alone then serves each version by id from its copies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_every_version_written_while_a_region_was_down_gets_its_copy() {
    use aws_sdk_s3::types::{BucketVersioningStatus, VersioningConfiguration};
    use meridian_meta::MetaStore;
    let mut cluster = WanCluster::start(LinkConfig::one_way(Duration::from_millis(20)), &[]).await;
    let a = cluster.client(0);
    create(&a, "quorum", "multi:region-a,region-b,region-c;quorum=2").await;
    let enabled = VersioningConfiguration::builder().status(BucketVersioningStatus::Enabled).build();
    a.put_bucket_versioning().bucket("quorum").versioning_configuration(enabled).send().await.unwrap();
    let put_version = |data: Vec<u8>| {
        let a = a.clone();
        async move {
            let out = a.put_object().bucket("quorum").key("k").body(data.into()).send().await.unwrap();
            out.version_id().unwrap().to_string()
        }
    };

    // Versions 1 and 2 are written while region b is down; b's copies are owed (one `y/` marker
    // each: version 2's write does not replace version 1's).
    cluster.nodes[1].kill9();
    let v1 = pattern(1_000_000, 1);
    let v1_id = put_version(v1.clone()).await;
    let v2 = pattern(1_100_000, 2);
    let v2_id = put_version(v2.clone()).await;
    assert_ne!(v1_id, v2_id);
    let etcd =
        meridian_meta_etcd::EtcdStore::connect(meridian_meta_etcd::EtcdOptions::new(cluster.etcd.client_endpoints()))
            .await
            .unwrap();
    let markers = meridian_meta::RangeRequest::prefix(meridian_engine::keys::repairs_of("quorum", "k"));
    assert_eq!(etcd.range(markers.clone()).await.unwrap().kvs.len(), 2, "region b's copies are owed");
    // Repaired once b is back: each marker goes in the transaction that records b's copy.
    cluster.nodes[1].restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !etcd.range(markers.clone()).await.unwrap().kvs.is_empty() {
        assert!(Instant::now() < deadline, "region b's copies were not recorded within 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(blobs_of_size(&cluster.nodes[1], v1.len()), 1, "region b's copy of version 1");
    assert_eq!(blobs_of_size(&cluster.nodes[1], v2.len()), 1, "region b's copy of version 2");

    // b alone, restarted without its chunk cache (the repair pulled the versions through it),
    // so only its own blobs and the records naming them can serve.
    cluster.nodes[0].kill9();
    cluster.nodes[2].kill9();
    cluster.nodes[1].kill9();
    std::fs::remove_dir_all(cluster.nodes[1].data.join("cache")).unwrap();
    cluster.nodes[1].restart();
    let b = cluster.client(1);
    for (id, data) in [(&v1_id, &v1), (&v2_id, &v2)] {
        let got = b.get_object().bucket("quorum").key("k").version_id(id).send().await;
        let got = got.unwrap_or_else(|e| panic!("version {id} from region b alone: {e:?}"));
        let body = got.body.collect().await.unwrap().into_bytes();
        assert_eq!(md5_hex(&body), md5_hex(data), "version {id} from region b's copy");
    }
}
