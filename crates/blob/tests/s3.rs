//! The S3 backend against moto's S3 server (an S3 service Meridian did not write): blobs by id
//! under the prefix, multipart uploads for large blobs, nothing visible from an unfinished
//! write, stale uploads and unreferenced blobs collected, one store id for every opener.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::TryStreamExt;
use meridian_blob::s3::{S3Backend, S3BackendConfig};
use meridian_blob::{BlobError, BlobStore};
use meridian_s3_client::testing::Moto;

mod common;
use common::{MIB, bounded, data};

const BUCKET: &str = "blobs";

fn config(moto: &Moto, prefix: &str) -> S3BackendConfig {
    S3BackendConfig {
        endpoint: moto.s3_endpoint(),
        bucket: BUCKET.into(),
        prefix: prefix.into(),
        part_size: 5 * MIB as usize,
        max_write_age: Duration::from_secs(60),
    }
}

/// moto with the bucket, and a client to look inside it.
async fn moto() -> (Moto, aws_sdk_s3::Client) {
    let moto = tokio::task::spawn_blocking(Moto::start).await.unwrap();
    let client = meridian_s3_client::client(&moto.s3_endpoint(), "test").unwrap();
    client.create_bucket().bucket(BUCKET).send().await.unwrap();
    (moto, client)
}

async fn store(moto: &Moto, prefix: &str) -> BlobStore {
    let dir = std::env::temp_dir();
    BlobStore::with_backend(&dir, Arc::new(S3Backend::open(&config(moto, prefix)).await.unwrap()))
}

async fn keys(client: &aws_sdk_s3::Client) -> Vec<String> {
    let out = client.list_objects_v2().bucket(BUCKET).send().await.unwrap();
    out.contents().iter().filter_map(|o| o.key().map(str::to_string)).collect()
}

async fn uploads(client: &aws_sdk_s3::Client) -> usize {
    client.list_multipart_uploads().bucket(BUCKET).send().await.unwrap().uploads().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_round_trip_through_moto_small_and_multipart() {
    bounded(120, round_trip()).await;
}

async fn round_trip() {
    let (moto, client) = moto().await;
    let store = store(&moto, "region-a").await;
    let small = store.put(Bytes::from_static(b"hello blob")).await.unwrap();
    // 12 MiB + a bit in 70 KB writes: three 5 MiB-part multipart upload.
    let big = data(12 * MIB + 4321, 1);
    let mut writer = store.create().await.unwrap();
    for piece in big.chunks(70_000) {
        writer.write(Bytes::copy_from_slice(piece)).await.unwrap();
    }
    assert_eq!(uploads(&client).await, 1, "a large blob streams as a multipart upload");
    assert!(!keys(&client).await.contains(&format!("region-a/blobs/{}", writer.id())), "visible before finish");
    let id = writer.finish().await.unwrap();
    assert_eq!(uploads(&client).await, 0);
    let mut names = keys(&client).await;
    names.sort();
    let mut expected = vec![
        format!("region-a/blobs/{small}"),
        format!("region-a/blobs/{id}"),
        "region-a/meridian-store-id".to_string(),
    ];
    expected.sort();
    assert_eq!(names, expected, "objects are named by blob id under the prefix");

    assert_eq!(store.size(id).await.unwrap(), big.len() as u64);
    let whole: Vec<Bytes> = store.read(id, 0, big.len() as u64).await.unwrap().try_collect().await.unwrap();
    assert_eq!(whole.concat(), big.as_ref());
    let range: Vec<Bytes> = store.read(id, 5 * MIB - 3, 10).await.unwrap().try_collect().await.unwrap();
    assert_eq!(range.concat(), &big[5 * MIB as usize - 3..5 * MIB as usize + 7]);
    assert_eq!(store.read_all(small).await.unwrap().as_ref(), b"hello blob");

    let copy = store.duplicate(id).await.unwrap();
    store.delete(id).await.unwrap();
    store.delete(id).await.unwrap();
    assert!(matches!(store.read(id, 0, 1).await.err(), Some(BlobError::NotFound(_))));
    assert!(matches!(store.size(id).await.err(), Some(BlobError::NotFound(_))));
    assert_eq!(store.size(copy).await.unwrap(), big.len() as u64, "a copy outlives its source");
    store.probe_writable().await.unwrap();
    assert!(!keys(&client).await.iter().any(|k| k.contains("probe")), "the probe cleans up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_opener_of_a_prefix_gets_one_store_id() {
    bounded(60, one_store_id()).await;
}

async fn one_store_id() {
    let (moto, _client) = moto().await;
    let (a, b, other) = (store(&moto, "r").await, store(&moto, "r/").await, store(&moto, "other").await);
    assert!(a.shared_id().is_some());
    assert_eq!(a.shared_id(), b.shared_id());
    assert_ne!(a.shared_id(), other.shared_id());
    let odd = S3Backend::open(&config(&moto, "a b?")).await.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(odd.contains("may hold only letters"), "a prefix that would need escaping is refused: {odd}");
    // A blob written by one opener is read by the other.
    let id = a.put(Bytes::from_static(b"shared")).await.unwrap();
    assert_eq!(b.read_all(id).await.unwrap().as_ref(), b"shared");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_writes_leave_nothing_and_leftovers_are_collected() {
    bounded(120, leftovers()).await;
}

async fn leftovers() {
    let (moto, client) = moto().await;
    let store = store(&moto, "").await;
    // Dropped mid-upload: aborted in the background.
    let mut writer = store.create().await.unwrap();
    writer.write(data(6 * MIB, 2)).await.unwrap();
    drop(writer);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while uploads(&client).await > 0 {
        assert!(std::time::Instant::now() < deadline, "a dropped writer's upload was never aborted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Left by a "crash": an upload nobody aborts, and a finished blob never committed.
    let mut crashed = store.create().await.unwrap();
    crashed.write(data(6 * MIB, 3)).await.unwrap();
    std::mem::forget(crashed);
    let orphan = store.put(Bytes::from_static(b"orphan")).await.unwrap();
    let keep = store.put(Bytes::from_static(b"keep")).await.unwrap();
    assert_eq!(uploads(&client).await, 1);

    // Within the grace period nothing is touched.
    let long_ago = SystemTime::now() - Duration::from_secs(3600);
    let referenced = |ids: Vec<meridian_blob::BlobId>| async move { Ok(ids.iter().map(|id| *id == keep).collect()) };
    assert_eq!(store.collect_orphans(long_ago, referenced).await.unwrap(), (0, 0));
    assert_eq!(uploads(&client).await, 1);
    // Past it, the upload is aborted and the unreferenced blob removed.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (count, bytes) = store.collect_orphans(SystemTime::now(), referenced).await.unwrap();
    assert_eq!((count, bytes), (1, 6));
    assert_eq!(uploads(&client).await, 0);
    assert!(matches!(store.size(orphan).await.err(), Some(BlobError::NotFound(_))));
    assert_eq!(store.read_all(keep).await.unwrap().as_ref(), b"keep");
}
