//! Three regions on one machine: three etcd members and three Meridian nodes, with the project's
//! WAN proxy (20 ms each way, so 40 ms RTT) on every link between regions — etcd peer traffic,
//! node-to-etcd traffic across regions, and node-to-node blob fetches.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use common::wan_cluster::{REGIONS, WanCluster, cache_entries, within};
use common::{Sealing, Server, body_bytes, error_code, md5_hex, pattern};
use meridian_wan::LinkConfig;

const ONE_WAY: Duration = Duration::from_millis(20);

/// Three regions at 40 ms RTT.
async fn start_cluster() -> WanCluster {
    WanCluster::start(LinkConfig::one_way(ONE_WAY), &[]).await
}

/// GET through the raw client: (status, body, headers).
fn raw_get(server: &Server, path: &str) -> common::raw::Response {
    raw_get_with(server, path, &[])
}

/// GET through the raw client with extra request headers.
fn raw_get_with(server: &Server, path: &str, headers: &[(&str, String)]) -> common::raw::Response {
    common::raw::signed(&server.addr, "GET", path, headers, b"")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_writes_are_readable_everywhere_at_once_and_overwrites_and_deletes_too() {
    let cluster = start_cluster().await;
    let (a, b, c) = (cluster.client(0), cluster.client(1), cluster.client(2));
    a.create_bucket().bucket("global").send().await.unwrap();

    for (n, size) in [100usize, 50_000, 2 << 20, 20 << 20].into_iter().enumerate() {
        let key = format!("obj-{size}");
        let data = pattern(size, n as u64);
        let put = a.put_object().bucket("global").key(&key).body(ByteStream::from(data.clone())).send().await.unwrap();
        // Immediately after the write returns, the other regions read it (c only the small ones
        // here: it reads the large one below, to see it come from region a).
        let readers: Vec<(usize, &aws_sdk_s3::Client)> =
            if size > 10 << 20 { vec![(1, &b)] } else { vec![(1, &b), (2, &c)] };
        for (i, client) in readers {
            let got = client.get_object().bucket("global").key(&key).send().await.unwrap();
            assert_eq!(got.e_tag(), put.e_tag(), "region {i}, {size} bytes");
            assert_eq!(md5_hex(&body_bytes(got).await), md5_hex(&data), "region {i}, {size} bytes");
        }
    }

    // A large object read in region b came from region a, then from b's cache.
    let first = raw_get(&cluster.nodes[2], "/global/obj-20971520");
    assert_eq!(first.status, 200);
    assert_eq!(first.header("x-meridian-served-from"), Some("region-a"));
    assert_eq!(first.header("x-meridian-cache"), Some("miss"));
    let again = raw_get(&cluster.nodes[2], "/global/obj-20971520");
    assert_eq!(
        (again.header("x-meridian-served-from"), again.header("x-meridian-cache")),
        (Some("region-c"), Some("hit"))
    );
    assert_eq!(md5_hex(&again.body), md5_hex(&pattern(20 << 20, 3)));

    // Overwrite in a, read in b and c: a read that reflects the overwrite's revision never
    // returns the old bytes (a stale cache entry would); one that does not yet (the local
    // replica lags a few ms) returns the previous version whole. A read asking for at least the
    // write's revision (read-your-writes across regions) always gets the new bytes.
    let mut previous: Option<Vec<u8>> = None;
    for round in 0..5u64 {
        let data = pattern(300_000, 100 + round);
        let put = common::raw::signed(&cluster.nodes[0].addr, "PUT", "/global/hot", &[], &data);
        assert_eq!(put.status, 200);
        let written: u64 = put.header("x-meridian-revision").unwrap().parse().unwrap();
        for node in &cluster.nodes[1..] {
            let got = raw_get(node, "/global/hot");
            assert_eq!(got.status, 200);
            let seen: u64 = got.header("x-meridian-revision").unwrap().parse().unwrap();
            if seen >= written {
                assert_eq!(md5_hex(&got.body), md5_hex(&data), "round {round}: the new bytes, never the old");
            } else {
                assert_eq!(Some(&got.body), previous.as_ref(), "round {round}: a lagging read is the previous version");
            }
            let fresh = common::raw::signed(
                &node.addr,
                "GET",
                "/global/hot",
                &[("x-meridian-min-revision", written.to_string())],
                b"",
            );
            let seen: u64 = fresh.header("x-meridian-revision").unwrap().parse().unwrap();
            assert!(seen >= written, "a read asking for the write's revision reflects it");
            assert_eq!(md5_hex(&fresh.body), md5_hex(&data), "round {round}: the new bytes");
        }
        previous = Some(data);
    }

    // Delete in c: gone everywhere once the delete's revision is visible there (a lagging
    // replica may still show the object, whole, at an older revision), and at once for a read
    // asking for the delete's revision.
    let deleted = common::raw::signed(&cluster.nodes[2].addr, "DELETE", "/global/obj-2097152", &[], b"");
    assert_eq!(deleted.status, 204);
    let delete_revision: u64 = deleted.header("x-meridian-revision").unwrap().parse().unwrap();
    for node in &cluster.nodes[..2] {
        let got = raw_get(node, "/global/obj-2097152");
        if got.status == 200 {
            let seen: u64 = got.header("x-meridian-revision").unwrap().parse().unwrap();
            assert!(seen < delete_revision, "a read reflecting the delete never returns the deleted bytes");
            assert_eq!(md5_hex(&got.body), md5_hex(&pattern(2 << 20, 2)));
        } else {
            assert_eq!((got.status, got.error_code()), (404, "NoSuchKey".to_string()));
        }
        let fresh = common::raw::signed(
            &node.addr,
            "GET",
            "/global/obj-2097152",
            &[("x-meridian-min-revision", delete_revision.to_string())],
            b"",
        );
        assert_eq!((fresh.status, fresh.error_code()), (404, "NoSuchKey".to_string()));
    }
    for client in [&a, &b] {
        let err = client.get_object().bucket("global").key("obj-2097152").send().await.unwrap_err();
        assert_eq!(error_code(&err), "NoSuchKey", "the delete reached every region");
    }

    // A write without any cookie issues the session cookie (read-your-writes for browsers, no
    // custom headers): it names the write's revision, and a read carrying it in any region
    // reflects the write.
    let note = pattern(3000, 9);
    let put = common::raw::signed(&cluster.nodes[2].addr, "PUT", "/global/session-note", &[], &note);
    assert_eq!(put.status, 200, "{}", String::from_utf8_lossy(&put.body));
    let revision = put.header("x-meridian-revision").expect("a write names its revision").to_string();
    let cookie = put.header("set-cookie").expect("a write sets the session cookie");
    assert!(cookie.starts_with(&format!("meridian-min-revision={revision};")), "{cookie}");
    let cookie = cookie.split(';').next().unwrap_or_default().to_string();
    for node in &cluster.nodes[..2] {
        let got = common::raw::signed(&node.addr, "GET", "/global/session-note", &[("cookie", cookie.clone())], b"");
        assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
        let seen: u64 = got.header("x-meridian-revision").unwrap().parse().unwrap();
        assert!(seen >= revision.parse::<u64>().unwrap(), "the cookie's read reflects the write");
        assert_eq!(got.body, note);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_range_reads_fetch_only_what_they_need_and_small_objects_are_everywhere() {
    let cluster = start_cluster().await;
    let (a, b) = (cluster.client(0), cluster.client(1));
    a.create_bucket().bucket("video").send().await.unwrap();
    let size = 48 << 20;
    let data = pattern(size, 7);
    a.put_object().bucket("video").key("movie.mp4").body(ByteStream::from(data.clone())).send().await.unwrap();
    let before = cluster.node_links[0].stats();
    let got = b.get_object().bucket("video").key("movie.mp4").range("bytes=30000000-30000999").send().await.unwrap();
    assert_eq!(body_bytes(got).await, &data[30_000_000..30_001_000]);
    let after = cluster.node_links[0].stats();
    let fetched = after.backward_bytes - before.backward_bytes;
    assert!(
        fetched < 3 * (8 << 20),
        "a small range of an uncached 48 MiB object fetches at most a chunk or two, got {fetched} bytes"
    );

    // Small objects are pushed to every region right after the write.
    a.put_object().bucket("video").key("thumb.jpg").body(ByteStream::from(pattern(60_000, 8))).send().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = raw_get(&cluster.nodes[2], "/video/thumb.jpg");
        if got.header("x-meridian-cache") == Some("hit") {
            assert_eq!(got.header("x-meridian-served-from"), Some("region-c"));
            assert_eq!(got.body, pattern(60_000, 8));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the small object was not prefetched into region c");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_kill9_mid_fetch_leaves_no_partial_cache_entry() {
    let mut cluster = start_cluster().await;
    let a = cluster.client(0);
    a.create_bucket().bucket("big").send().await.unwrap();
    let size = 40 << 20;
    let data = pattern(size, 9);
    a.put_object().bucket("big").key("blob").body(ByteStream::from(data.clone())).send().await.unwrap();
    // Slow the link from a so the fetch is still running when b dies.
    cluster.node_links[0].set_config(LinkConfig::one_way(ONE_WAY).with_bandwidth(6 << 20));
    let addr = cluster.nodes[1].addr.clone();
    let reader = std::thread::spawn(move || common::raw::signed(&addr, "GET", "/big/blob", &[], b""));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    cluster.nodes[1].kill9();
    let _ = reader.join();
    cluster.node_links[0].set_config(LinkConfig::one_way(ONE_WAY));

    // Whatever the cache holds after the crash is whole: tmp is empty after a restart, and every
    // entry it serves verifies.
    cluster.nodes[1].restart();
    let cache = cluster.nodes[1].data.join("cache");
    let tmp_files = std::fs::read_dir(cache.join("tmp")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(tmp_files, 0, "no half-fetched chunk survives a restart");
    let got = raw_get(&cluster.nodes[1], "/big/blob");
    assert_eq!(got.status, 200);
    assert_eq!(md5_hex(&got.body), md5_hex(&data), "the object reads back whole and right after the crash");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_cluster_status_shows_every_region() {
    let cluster = start_cluster().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let v = common::wan_cluster::cluster_status(&cluster.nodes[1]);
    let mut regions: Vec<&str> = v["nodes"].as_array().unwrap().iter().map(|n| n["region"].as_str().unwrap()).collect();
    regions.sort();
    assert_eq!(regions, REGIONS);
    assert!(v["nodes"].as_array().unwrap().iter().all(|n| n["healthy"] == true), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_pinned_bucket_takes_writes_in_its_region_only() {
    use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
    let cluster = start_cluster().await;
    let (a, c) = (cluster.client(0), cluster.client(2));
    let pinned_to = |region: &str| {
        CreateBucketConfiguration::builder().location_constraint(BucketLocationConstraint::from(region)).build()
    };
    // Created from region a, pinned to region b.
    a.create_bucket().bucket("ledger").create_bucket_configuration(pinned_to("region-b")).send().await.unwrap();
    let where_ = c.get_bucket_location().bucket("ledger").send().await.unwrap();
    assert_eq!(where_.location_constraint().map(|l| l.as_str()), Some("region-b"));
    // ListBuckets and HeadBucket name the bucket's region, not the answering node's.
    let listed = c.list_buckets().send().await.unwrap();
    let ledger = listed.buckets().iter().find(|b| b.name() == Some("ledger")).expect("ledger listed");
    assert_eq!(ledger.bucket_region(), Some("region-b"));
    let head = common::raw::signed(&cluster.nodes[2].addr, "HEAD", "/ledger", &[], b"");
    assert_eq!((head.status, head.header("x-amz-bucket-region")), (200, Some("region-b")));
    // A region nobody runs is refused, and so is a malformed location type.
    for bad in ["pinned:region-z", "multi:region-a", "pinned:"] {
        let err = a.create_bucket().bucket("nowhere").create_bucket_configuration(pinned_to(bad)).send().await;
        assert_eq!(error_code(&err.unwrap_err()), "InvalidLocationConstraint", "{bad}");
    }

    // A write sent to region a is forwarded to b and its bytes land there.
    let data = pattern(200_000, 11);
    let put = common::raw::signed(&cluster.nodes[0].addr, "PUT", "/ledger/entry", &[], &data);
    assert_eq!(put.status, 200, "{}", String::from_utf8_lossy(&put.body));
    assert_eq!(put.header("x-meridian-forwarded-to"), Some("region-b"));
    let in_b = raw_get(&cluster.nodes[1], "/ledger/entry");
    assert_eq!(
        (in_b.header("x-meridian-served-from"), in_b.header("x-meridian-cache")),
        (Some("region-b"), Some("hit"))
    );
    assert_eq!(in_b.body, data);
    // Plain reads anywhere are served locally (pulled from b); a strong read goes to b.
    let in_c = raw_get(&cluster.nodes[2], "/ledger/entry");
    assert_eq!((in_c.status, in_c.header("x-meridian-served-from")), (200, Some("region-b")));
    assert_eq!(in_c.header("x-meridian-forwarded-to"), None);
    let strong = common::raw::signed(
        &cluster.nodes[2].addr,
        "GET",
        "/ledger/entry",
        &[("x-meridian-consistency", "strong".to_string())],
        b"",
    );
    assert_eq!((strong.status, strong.header("x-meridian-forwarded-to")), (200, Some("region-b")));
    assert_eq!(strong.body, data);

    // With region b cut off, a write to the pinned bucket fails clearly instead of landing elsewhere.
    cluster.node_links[1].partition_with(meridian_wan::PartitionMode::Reset);
    let cut = common::raw::signed(&cluster.nodes[0].addr, "PUT", "/ledger/entry", &[], b"lost?");
    assert_eq!(cut.status, 503, "{}", String::from_utf8_lossy(&cut.body));
    assert!(String::from_utf8_lossy(&cut.body).contains("ServiceUnavailable"));
    cluster.node_links[1].heal();
    let after = raw_get(&cluster.nodes[1], "/ledger/entry");
    assert_eq!(after.body, data, "the refused write changed nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_a_client_claiming_to_be_a_node_cannot_store_a_pinned_bucket_outside_its_region() {
    use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
    let cluster = start_cluster().await;
    let pinned = CreateBucketConfiguration::builder().location_constraint(BucketLocationConstraint::from("region-b"));
    cluster
        .client(0)
        .create_bucket()
        .bucket("resident")
        .create_bucket_configuration(pinned.build())
        .send()
        .await
        .unwrap();
    let region_a = &cluster.nodes[0].addr;

    // The forwarding header alone is ignored: the write still goes to region b, header intact.
    let data = pattern(150_000, 3);
    let claimed = [("x-meridian-forwarded-by", "node-b".to_string())];
    let put = common::raw::signed(region_a, "PUT", "/resident/doc", &claimed, &data);
    assert_eq!(put.status, 200, "{}", String::from_utf8_lossy(&put.body));
    assert_eq!(put.header("x-meridian-forwarded-to"), Some("region-b"));
    let in_b = raw_get(&cluster.nodes[1], "/resident/doc");
    assert_eq!(
        (in_b.header("x-meridian-served-from"), in_b.header("x-meridian-cache")),
        (Some("region-b"), Some("hit"))
    );
    assert_eq!(in_b.body, data);
    // Region a holds no copy: its read is pulled from b.
    let in_a = raw_get(&cluster.nodes[0], "/resident/doc");
    assert_eq!((in_a.status, in_a.header("x-meridian-served-from")), (200, Some("region-b")));

    // A forged proof is refused outright.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let forged = [
        ("x-meridian-forwarded-by", "node-b".to_string()),
        ("x-meridian-forward-proof", format!("{now}:{}:node-b", "ab".repeat(32))),
    ];
    let put = common::raw::signed(region_a, "PUT", "/resident/doc", &forged, b"forged");
    assert_eq!(put.status, 403, "{}", String::from_utf8_lossy(&put.body));
    assert!(String::from_utf8_lossy(&put.body).contains("x-meridian-forward-proof"));

    // With region b cut off, the claimed header still gets no local write.
    cluster.node_links[1].partition_with(meridian_wan::PartitionMode::Reset);
    let cut = common::raw::signed(region_a, "PUT", "/resident/doc", &claimed, b"lost?");
    assert_eq!(cut.status, 503, "{}", String::from_utf8_lossy(&cut.body));
    cluster.node_links[1].heal();
    assert_eq!(raw_get(&cluster.nodes[1], "/resident/doc").body, data, "refused writes changed nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_revoked_grants_and_deleted_keys_stop_working_at_once_in_every_region() {
    use common::admin::{admin_ok, client, create_key};
    let cluster = start_cluster().await;
    cluster.client(0).create_bucket().bucket("shared").send().await.unwrap();
    let key = create_key(&cluster.nodes[0], "app", false);
    admin_ok(&cluster.nodes[0], &["bucket", "allow", "shared", "--key", "app", "--read", "--write"]);
    let clients: Vec<aws_sdk_s3::Client> = cluster.nodes.iter().map(|n| client(n, &key)).collect();
    // A key created in region a works everywhere at once.
    for (i, s3) in clients.iter().enumerate() {
        s3.put_object()
            .bucket("shared")
            .key(format!("from-{i}"))
            .body(ByteStream::from_static(b"x"))
            .send()
            .await
            .unwrap();
    }

    // Messages from the etcd leader now take 400 ms to reach the other members (their acks are
    // not slowed): the leader commits, and answers its own region, long before the others apply.
    let leader = cluster.etcd.wait_for_leader(Duration::from_secs(10));
    cluster.etcd_links[leader].set_config(LinkConfig::one_way(Duration::from_millis(400)));
    let admin_node = &cluster.nodes[leader];

    // Write access revoked in the leader's region: refused in every region the moment the
    // command returns.
    admin_ok(admin_node, &["bucket", "deny", "shared", "--key", "app", "--write"]);
    for (i, s3) in clients.iter().enumerate() {
        let err = s3.put_object().bucket("shared").key("late").body(ByteStream::from_static(b"y")).send().await;
        assert_eq!(error_code(&err.unwrap_err()), "AccessDenied", "region {i}");
        s3.get_object().bucket("shared").key("from-0").send().await.unwrap();
    }

    // The key deleted: refused in every region the moment the command returns.
    admin_ok(admin_node, &["key", "delete", "app"]);
    for (i, s3) in clients.iter().enumerate() {
        let err = s3.get_object().bucket("shared").key("from-0").send().await;
        assert_eq!(error_code(&err.unwrap_err()), "InvalidAccessKeyId", "region {i}");
    }
}

/// At most this much of each direction of each link is captured (more fails the test: the wire
/// scan would be incomplete).
const CAPTURE_BYTES: usize = 48 << 20;

/// Bytes of the unencrypted control objects: found where the scans look, so they can fail.
const CONTROL_MARKER: &[u8] = b"MERIDIAN-SSE-CONTROL-UNENCRYPTED;";

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Issue 18 across regions: objects sealed with SSE-S3, SSE-KMS and SSE-C in region a — blobs
/// that region b pulls into its cache when it reads them, small ones the change follower pushes
/// into every region's cache, tiny ones inline in etcd, and the synchronous copies of a
/// multi-region bucket — read back whole in regions b and c; then no file of any node or etcd
/// member, and no byte that crossed a link between nodes or between etcd members, holds their
/// plaintext, while unencrypted control objects are found in b's cache, in etcd's files and
/// on both kinds of links.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_encrypted_objects_stay_sealed_in_other_regions_caches_and_on_the_wire() {
    use common::{SECRET_MARKER, files_containing, secret_body};
    let keys = tempfile::tempdir().unwrap();
    let keyring = common::sse_keyring(keys.path());
    let args = ["--sse-keyring", keyring.to_str().unwrap()];
    let cluster = WanCluster::start(LinkConfig::one_way(ONE_WAY), &args).await;
    let links: Vec<&meridian_wan::WanHandle> = cluster.node_links.iter().chain(&cluster.etcd_links).collect();
    for link in &links {
        link.start_capture(CAPTURE_BYTES);
    }
    let a = cluster.client(0);
    a.create_bucket().bucket("vault").send().await.unwrap();
    let both = aws_sdk_s3::types::CreateBucketConfiguration::builder()
        .location_constraint(aws_sdk_s3::types::BucketLocationConstraint::from("multi:region-a,region-b"))
        .build();
    a.create_bucket().bucket("mirrored").create_bucket_configuration(both).send().await.unwrap();

    // A blob of many sealed 64 KiB chunks, a small one (up to --replicate-small-bytes: pushed
    // into every cache), a tiny one (up to --inline-max: inline in etcd).
    let sizes = [("big", 3 << 19), ("small", 60_000), ("tiny", 600)];
    let mut objects = Vec::new();
    for (seed, sealing) in [Sealing::SseS3, Sealing::SseKms, Sealing::SseC, Sealing::Plain].into_iter().enumerate() {
        for (size_name, size) in sizes {
            let data = match sealing {
                Sealing::Plain => CONTROL_MARKER.repeat(size / CONTROL_MARKER.len() + 1)[..size].to_vec(),
                _ => secret_body(size, seed as u64),
            };
            objects.push((format!("/vault/{sealing:?}-{size_name}"), sealing, data));
        }
    }
    for (seed, sealing) in [Sealing::SseKms, Sealing::SseC].into_iter().enumerate() {
        objects.push((format!("/mirrored/{sealing:?}"), sealing, secret_body(1 << 20, 10 + seed as u64)));
    }
    for (path, sealing, data) in &objects {
        let put = common::raw::signed(&cluster.nodes[0].addr, "PUT", path, &sealing.put_headers(), data);
        assert_eq!(put.status, 200, "{path}: {}", put.text());
        let answered =
            (put.header("x-amz-server-side-encryption"), put.header("x-amz-server-side-encryption-customer-algorithm"));
        assert_eq!(answered, sealing.answered(), "{path}");
    }

    // Region c has read nothing: the small objects are pushed into its cache, each a hit at once.
    let small: Vec<_> = objects.iter().filter(|(path, _, _)| path.ends_with("-small")).collect();
    let node_c = &cluster.nodes[2];
    within(Duration::from_secs(10), "small objects pushed into region c's cache", || {
        cache_entries(node_c).len() >= small.len()
    })
    .await;
    for (path, sealing, data) in &small {
        let got = raw_get_with(node_c, path, &sealing.get_headers());
        assert_eq!((got.status, got.header("x-meridian-cache")), (200, Some("hit")), "{path}: {}", got.text());
        assert_eq!(got.body, *data, "{path} pushed to region c");
    }

    // Region b reads everything: the blobs of the global bucket are pulled from region a into its
    // cache, the small ones are pushed there too, the multi-region bucket's are on its own disk.
    for (path, sealing, data) in &objects {
        let got = raw_get_with(&cluster.nodes[1], path, &sealing.get_headers());
        assert_eq!(got.status, 200, "{path}: {}", got.text());
        assert_eq!(md5_hex(&got.body), md5_hex(data), "{path} reads back whole in region b");
    }
    for (path, sealing, data) in objects.iter().filter(|(path, _, _)| path.ends_with("-big")) {
        // Read again: opened from the sealed bytes now in b's cache.
        let cached = raw_get_with(&cluster.nodes[1], path, &sealing.get_headers());
        assert_eq!((cached.status, cached.header("x-meridian-cache")), (200, Some("hit")), "{path}");
        assert_eq!(md5_hex(&cached.body), md5_hex(data), "{path} from b's cache");
        // A range across sealed chunks, fetched by region c, which has nothing of it yet.
        let mut headers = sealing.get_headers();
        headers.push(("range", "bytes=65000-200999".to_string()));
        let range = raw_get_with(&cluster.nodes[2], path, &headers);
        assert_eq!(range.status, 206, "{path}: {}", range.text());
        assert_eq!(range.body, data[65_000..201_000], "{path}: a range read in region c");
    }
    // The scans can fail: the control objects are in b's cache, in etcd's files, and on the wire.
    let cache_b = cluster.nodes[1].data.join("cache");
    assert!(files_containing(&cache_b, CONTROL_MARKER).len() >= 2, "the control blob and small object");
    assert!(!files_containing(cluster.etcd.dir(), CONTROL_MARKER).is_empty(), "the inline control object");
    let wire: Vec<meridian_wan::Captured> = links.iter().map(|l| l.captured()).collect();
    for (i, captured) in wire.iter().enumerate() {
        assert!(captured.forward.len() < CAPTURE_BYTES && captured.backward.len() < CAPTURE_BYTES, "link {i} full");
    }
    let region_a = &wire[0];
    assert!(contains(&region_a.backward, CONTROL_MARKER), "the control objects went from region a to the others");
    let sealed_blobs = 4 * (3 << 19);
    assert!(region_a.backward.len() > sealed_blobs, "region a sent its blobs through the capture");
    assert!(wire[1].forward.len() > 2 << 20, "region a sent the multi-region bucket's copies to region b");
    let etcd_peers = &wire[cluster.node_links.len()..cluster.node_links.len() + 3];
    assert!(
        etcd_peers.iter().any(|c| contains(&c.forward, CONTROL_MARKER) || contains(&c.backward, CONTROL_MARKER)),
        "the inline control object crossed etcd's peer links"
    );

    // No plaintext of an encrypted object in any file of any node (blobs, caches) or etcd
    // member, nor on any link between nodes or etcd members.
    for node in &cluster.nodes {
        assert_eq!(files_containing(&node.data, SECRET_MARKER), Vec::<std::path::PathBuf>::new(), "plaintext on disk");
    }
    assert_eq!(files_containing(cluster.etcd.dir(), SECRET_MARKER), Vec::<std::path::PathBuf>::new());
    for (i, captured) in wire.iter().enumerate() {
        assert!(!contains(&captured.forward, SECRET_MARKER), "plaintext on link {i}, forward");
        assert!(!contains(&captured.backward, SECRET_MARKER), "plaintext on link {i}, backward");
    }
}

/// A snapshot taken in one region reads in another after the object was overwritten and its
/// version removed there, its bytes still pulled from the region that wrote them; a fork made
/// in a third region reads the old bytes and takes writes visible everywhere, the source
/// unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_snapshots_and_forks_work_across_regions() {
    use aws_sdk_s3::types::{BucketVersioningStatus, VersioningConfiguration};
    let cluster = start_cluster().await;
    let (a, b) = (cluster.client(0), cluster.client(1));
    a.create_bucket().bucket("history").send().await.unwrap();
    let enabled = VersioningConfiguration::builder().status(BucketVersioningStatus::Enabled).build();
    a.put_bucket_versioning().bucket("history").versioning_configuration(enabled).send().await.unwrap();
    let old = pattern(2 << 20, 17);
    let put = a.put_object().bucket("history").key("big").body(ByteStream::from(old.clone())).send().await.unwrap();
    let old_version = put.version_id().unwrap().to_string();
    common::admin::admin_ok(&cluster.nodes[0], &["bucket", "snapshot", "history", "--name", "before"]);

    let new = pattern(1 << 20, 18);
    b.put_object().bucket("history").key("big").body(ByteStream::from(new.clone())).send().await.unwrap();
    b.delete_object().bucket("history").key("big").version_id(&old_version).send().await.unwrap();
    let at_snapshot = raw_get_with(&cluster.nodes[2], "/history/big", &[("x-meridian-snapshot", "before".into())]);
    assert_eq!(at_snapshot.status, 200, "{}", at_snapshot.text());
    assert_eq!(md5_hex(&at_snapshot.body), md5_hex(&old), "region c reads the snapshot");
    assert_eq!(at_snapshot.header("x-meridian-served-from"), Some("region-a"));

    common::admin::admin_ok(&cluster.nodes[2], &["bucket", "fork", "history@before", "history-copy"]);
    let inherited = b.get_object().bucket("history-copy").key("big").send().await.unwrap();
    assert_eq!(md5_hex(&body_bytes(inherited).await), md5_hex(&old), "region b reads the fork");
    let own = b"the fork's own bytes".to_vec();
    b.put_object().bucket("history-copy").key("big").body(ByteStream::from(own.clone())).send().await.unwrap();
    let forked = a.get_object().bucket("history-copy").key("big").send().await.unwrap();
    assert_eq!(body_bytes(forked).await, own, "region a sees the fork's write at once");
    let source = a.get_object().bucket("history").key("big").send().await.unwrap();
    assert_eq!(md5_hex(&body_bytes(source).await), md5_hex(&new), "the source is unchanged");
}
