//! Object bytes in an S3 bucket (`--blob-s3-bucket`): on moto's S3 server (a service Meridian
//! did not write) and on another Meridian node; one node, and two nodes of one region on one
//! shared bucket with real etcd; `kill -9` during uploads; leftovers collected.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use aws_sdk_s3::config::StalledStreamProtectionConfig;
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use common::{ACCESS_KEY, SECRET_KEY, Server, body_bytes, cluster_args, pattern};
use meridian_s3_client::testing::Moto;

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

/// The blob bucket's flags: `bucket` at `endpoint` with `keys`, prefix `meridian`.
fn bucket_args(endpoint: &str, bucket: &str, keys: (&str, &str), grace: &str) -> Vec<String> {
    [
        ("--blob-s3-endpoint", endpoint),
        ("--blob-s3-bucket", bucket),
        ("--blob-s3-prefix", "meridian"),
        ("--blob-s3-access-key", keys.0),
        ("--blob-s3-secret-key", keys.1),
        ("--blob-orphan-grace", grace),
    ]
    .iter()
    .flat_map(|(flag, value)| [flag.to_string(), value.to_string()])
    .collect()
}

const MOTO_KEYS: (&str, &str) = ("moto-access-key", "moto-secret-key");

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// moto with an empty bucket, and a client for it.
async fn moto_bucket(bucket: &str) -> (Moto, aws_sdk_s3::Client) {
    let moto = Moto::start();
    let client = meridian_s3_client::client(&moto.s3_endpoint(), "test").unwrap();
    client.create_bucket().bucket(bucket).send().await.unwrap();
    (moto, client)
}

/// Names of the objects in `bucket` of the backend.
async fn backend_keys(backend: &aws_sdk_s3::Client, bucket: &str) -> Vec<String> {
    let out = backend.list_objects_v2().bucket(bucket).send().await.unwrap();
    out.contents().iter().filter_map(|o| o.key().map(str::to_string)).collect()
}

/// How many blobs and unfinished multipart uploads are in the backend bucket.
async fn backend_blobs(backend: &aws_sdk_s3::Client, bucket: &str) -> (usize, usize) {
    let blobs = backend_keys(backend, bucket).await.iter().filter(|k| k.starts_with("meridian/blobs/")).count();
    let uploads = backend.list_multipart_uploads().bucket(bucket).send().await.unwrap().uploads().len();
    (blobs, uploads)
}

async fn put(node: &Server, key: &str, data: &[u8]) {
    node.client()
        .put_object()
        .bucket("objects")
        .key(key)
        .body(ByteStream::from(data.to_vec()))
        .send()
        .await
        .unwrap_or_else(|e| panic!("PUT {key}: {e:?}"));
}

async fn get(node: &Server, key: &str) -> Vec<u8> {
    let out = node.client().get_object().bucket("objects").key(key).send().await;
    body_bytes(out.unwrap_or_else(|e| panic!("GET {key}: {e:?}"))).await
}

/// Writes a 100 KiB object, a 20 MiB one (a multipart upload to the backend), a copy and a
/// multipart object through `node`, and reads them back. Returns the objects.
async fn write_and_read(node: &Server) -> Vec<(String, Vec<u8>)> {
    let s3 = node.client();
    s3.create_bucket().bucket("objects").send().await.unwrap();
    let objects = vec![("small".to_string(), pattern(100 * KIB, 1)), ("large".to_string(), pattern(20 * MIB + 7, 2))];
    for (key, data) in &objects {
        put(node, key, data).await;
        assert!(get(node, key).await == *data, "{key} read back differs");
    }
    s3.copy_object().bucket("objects").key("copy").copy_source("objects/large").send().await.unwrap();
    assert!(get(node, "copy").await == objects[1].1, "the copy differs");
    let range = s3.get_object().bucket("objects").key("large").range("bytes=9437180-9437199").send().await.unwrap();
    assert_eq!(body_bytes(range).await, &objects[1].1[9_437_180..9_437_200]);
    let mut all = objects;
    all.push(("copy".to_string(), all[1].1.clone()));
    all
}

/// Nothing of the objects is under the data directory: no blob files.
fn assert_no_local_blobs(data: &Path) {
    assert!(!data.join("blobs").exists(), "a node on a blob bucket keeps blob files in {}", data.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_keeps_object_bytes_in_a_moto_bucket() {
    let (moto, backend) = moto_bucket("region-a").await;
    let mut node = Server::start_with(&strs(&bucket_args(&moto.endpoint, "region-a", MOTO_KEYS, "1h")));
    let objects = write_and_read(&node).await;
    assert_no_local_blobs(&node.data);
    let names = backend_keys(&backend, "region-a").await;
    assert!(names.contains(&"meridian/meridian-store-id".to_string()), "{names:?}");
    let blobs: Vec<&String> = names.iter().filter(|k| k.starts_with("meridian/blobs/")).collect();
    assert_eq!(blobs.len(), 3, "one blob per object larger than the inline limit: {names:?}");
    assert!(
        blobs.iter().all(|k| k.len() == "meridian/blobs/".len() + 32 && !k.contains("large")),
        "backend names come from blob ids, never from object keys: {names:?}"
    );
    // The bytes are not on the node: a restart reads them from the bucket.
    node.restart();
    for (key, data) in &objects {
        assert!(get(&node, key).await == *data, "{key} after a restart");
    }
}

/// With `--encrypt-all`, the bucket holds only sealed bytes: no object's plaintext is in any
/// backend object, while reads through the node return it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_objects_reach_the_moto_bucket_sealed() {
    let (moto, backend) = moto_bucket("sealed").await;
    let keys = tempfile::tempdir().unwrap();
    let keyring = common::sse_keyring(keys.path());
    let mut args = bucket_args(&moto.endpoint, "sealed", MOTO_KEYS, "1h");
    args.extend(["--sse-keyring".to_string(), keyring.to_str().unwrap().to_string(), "--encrypt-all".to_string()]);
    let node = Server::start_with(&strs(&args));
    let objects = write_and_read(&node).await;
    let names = backend_keys(&backend, "sealed").await;
    let blobs: Vec<&String> = names.iter().filter(|k| k.starts_with("meridian/blobs/")).collect();
    assert_eq!(blobs.len(), 3, "{names:?}");
    for name in blobs {
        let stored = body_bytes(backend.get_object().bucket("sealed").key(name).send().await.unwrap()).await;
        for (key, data) in &objects {
            let probe = &data[1000..1064];
            assert!(!stored.windows(probe.len()).any(|w| w == probe), "plaintext of {key} in {name}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_keeps_object_bytes_in_another_meridian() {
    let backend_node = Server::start();
    let backend = backend_node.client();
    backend.create_bucket().bucket("backend").send().await.unwrap();
    let args = bucket_args(&backend_node.endpoint, "backend", (ACCESS_KEY, SECRET_KEY), "1h");
    let node = Server::start_with(&strs(&args));
    write_and_read(&node).await;
    assert_no_local_blobs(&node.data);
    let names = backend_keys(&backend, "backend").await;
    assert_eq!(names.iter().filter(|k| k.starts_with("meridian/blobs/")).count(), 3, "{names:?}");
}

/// A PUT of `len` bytes through `node` that sends `sent` of them and then stalls until
/// `release` is dropped (so the node holds an unfinished upload when it is killed).
fn stalled_put(node: &Server, key: &str, len: usize, sent: usize) -> tokio::sync::oneshot::Sender<()> {
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let head = Bytes::from(pattern(sent, 9));
    let frames = futures::stream::unfold((Some(head), Some(released)), |(head, released)| async move {
        match (head, released) {
            (Some(head), released) => Some((Ok::<_, std::io::Error>(http_body::Frame::data(head)), (None, released))),
            (None, Some(released)) => {
                let _ = released.await;
                None
            }
            (None, None) => None,
        }
    });
    let body = http_body_util::StreamBody::new(frames);
    let patient =
        node.client().config().to_builder().stalled_stream_protection(StalledStreamProtectionConfig::disabled());
    let request = aws_sdk_s3::Client::from_conf(patient.build())
        .put_object()
        .bucket("objects")
        .key(key)
        .content_length(len as i64)
        .body(ByteStream::from_body_1_x(body));
    tokio::spawn(async move {
        let _ = request.send().await;
    });
    release
}

/// Waits up to `limit` for `done`, checking every 200 ms.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + limit;
    loop {
        match done().await {
            Ok(()) => return,
            Err(state) if Instant::now() > deadline => panic!("{what} within {limit:?}: {state}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Leftovers of a `kill -9` — an unfinished multipart upload, and the blob of an overwritten
/// object the node had not deleted yet — are collected once the grace period has passed, and
/// every acknowledged write survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_on_a_moto_bucket_loses_nothing_acknowledged_and_leftovers_are_collected() {
    let (moto, backend) = moto_bucket("region-a").await;
    let mut node = Server::start_with(&strs(&bucket_args(&moto.endpoint, "region-a", MOTO_KEYS, "2s")));
    let objects = write_and_read(&node).await;
    let _held = stalled_put(&node, "unfinished", 30 * MIB, 10 * MIB);
    eventually(Duration::from_secs(30), "the stalled PUT starts a multipart upload", || async {
        match backend_blobs(&backend, "region-a").await {
            (_, 1) => Ok(()),
            state => Err(format!("{state:?}")),
        }
    })
    .await;
    // Overwritten just before the kill: the node deletes the old blob a minute later, and its
    // orphan scan (every 2 s here) would take it sooner, so the kill comes right after.
    put(&node, "small", &pattern(100 * KIB, 3)).await;
    node.kill9();
    assert_eq!(backend_blobs(&backend, "region-a").await, (4, 1), "blobs: 3 live and 1 replaced");
    node.restart();
    eventually(Duration::from_secs(20), "leftovers collected", || async {
        match backend_blobs(&backend, "region-a").await {
            (3, 0) => Ok(()),
            state => Err(format!("(blobs, uploads) = {state:?}")),
        }
    })
    .await;
    assert_eq!(get(&node, "small").await, pattern(100 * KIB, 3));
    for (key, data) in &objects[1..] {
        assert!(get(&node, key).await == *data, "{key} after the kill");
    }
    let missing = node.client().head_object().bucket("objects").key("unfinished").send().await;
    assert!(missing.is_err(), "an interrupted upload is not visible");
}

/// Two nodes of one region on one moto bucket (and one etcd): writes through either are read
/// through the other with no node-to-node fetch — the writer is dead by then — a `kill -9` of
/// one during uploads loses nothing it acknowledged, the other collects what it left, and a
/// node added later reads everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_a_moto_bucket_and_survive_a_kill9() {
    let (moto, backend) = moto_bucket("shared").await;
    let etcd = meridian_meta_etcd::testing::EtcdCluster::builder(1).start();
    let tmp = tempfile::tempdir().unwrap();
    let endpoints = etcd.client_endpoints().join(",");
    let mut args = cluster_args(&endpoints, "region-a");
    args.extend(bucket_args(&moto.endpoint, "shared", MOTO_KEYS, "2s"));
    let start = |name: &str| Server::start_in(&tmp.path().join(name), &strs(&args), None, None);
    let (mut a, b) = (start("a"), start("b"));
    let objects = write_and_read(&a).await;
    put(&b, "from-b", &pattern(200 * KIB, 4)).await;
    assert_eq!(get(&a, "from-b").await, pattern(200 * KIB, 4));

    // Uploads through A while it is killed: every acknowledged one must be readable through B.
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s3 = a.client();
    let writers: Vec<_> = (0..3)
        .map(|task| {
            let (s3, acked) = (s3.clone(), acked.clone());
            tokio::spawn(async move {
                for round in 0..1000u64 {
                    let key = format!("busy-{task}-{round}");
                    let data = pattern(3 * MIB + 11, task * 1000 + round);
                    let sent = s3.put_object().bucket("objects").key(&key).body(ByteStream::from(data)).send().await;
                    if sent.is_err() {
                        return;
                    }
                    acked.lock().unwrap().push((key, task * 1000 + round));
                }
            })
        })
        .collect();
    let _held = stalled_put(&a, "unfinished", 30 * MIB, 10 * MIB);
    eventually(Duration::from_secs(30), "uploads in flight through A", || async {
        let count = acked.lock().unwrap().len();
        match backend_blobs(&backend, "shared").await {
            (_, uploads) if uploads > 0 && count >= 2 => Ok(()),
            state => Err(format!("{state:?}, {count} acknowledged")),
        }
    })
    .await;
    a.kill9();
    for writer in writers {
        writer.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    for (key, seed) in &acked {
        assert!(get(&b, key).await == pattern(3 * MIB + 11, *seed), "{key}, acknowledged by A, read through B");
    }
    for (key, data) in &objects {
        assert!(get(&b, key).await == *data, "{key}, written through A, read through B");
    }
    // Every object is inline-free on etcd (1 KiB), so each listed object owns one blob; any
    // other blob, and any upload, is a leftover of the kill.
    let listed = b.client().list_objects_v2().bucket("objects").send().await.unwrap().key_count().unwrap_or(0) as usize;
    eventually(Duration::from_secs(20), "B collects what A left", || async {
        match backend_blobs(&backend, "shared").await {
            (blobs, 0) if blobs == listed => Ok(()),
            state => Err(format!("(blobs, uploads) = {state:?} for {listed} objects")),
        }
    })
    .await;
    let c = start("c");
    assert!(get(&c, "large").await == objects[1].1, "a node added later reads what others wrote");
}
