//! Engine behaviour against the real embedded metadata store and blob store on a temp dir.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use meridian_blob::BlobStore;
use meridian_engine::conditions::{ETagMatch, WriteConditions};
use meridian_engine::record::ObjectHeaders;
use meridian_engine::*;
use meridian_meta::embedded::{EmbeddedOptions, EmbeddedStore};

struct Fixture {
    engine: Engine,
    dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let meta = EmbeddedStore::open(&dir.path().join("meta.redb"), EmbeddedOptions::default()).unwrap();
    let blobs = BlobStore::open(dir.path()).unwrap();
    let config =
        EngineConfig { inline_max: 1024, min_part_size: 10, blob_delete_delay: Duration::ZERO, ..Default::default() };
    Fixture { engine: Engine::builder(Metadata::single(Arc::new(meta)), blobs, config).build(), dir }
}

fn put(bucket: &str, key: &str, data: impl Into<Bytes>) -> PutRequest {
    PutRequest {
        bucket: bucket.into(),
        key: key.into(),
        body: body_from_bytes(data),
        headers: ObjectHeaders::default(),
        integrity: Integrity::default(),
        conditions: WriteConditions::default(),
        expires_at_ms: None,
        protection: None,
        form_upload: false,
    }
}

async fn read(engine: &Engine, bucket: &str, key: &str) -> Vec<u8> {
    let out =
        engine.get_object(GetRequest { bucket: bucket.into(), key: key.into(), ..Default::default() }).await.unwrap();
    let chunks: Vec<Bytes> = out.body.try_collect().await.unwrap();
    chunks.concat()
}

fn blob_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir.join("blobs")).unwrap().map(|d| std::fs::read_dir(d.unwrap().path()).unwrap().count()).sum()
}

#[tokio::test]
async fn put_get_overwrite_delete_small_and_large() {
    let f = fixture();
    f.engine.create_bucket("bkt", "me").await.unwrap();
    let small = Bytes::from_static(b"hello");
    let large = Bytes::from(vec![7u8; 100_000]);
    f.engine.put_object(put("bkt", "small", small.clone())).await.unwrap();
    let out = f.engine.put_object(put("bkt", "large", large.clone())).await.unwrap();
    assert_eq!(out.etag, hex::encode(md5_of(&large)));
    assert_eq!(read(&f.engine, "bkt", "small").await, small);
    assert_eq!(read(&f.engine, "bkt", "large").await, large);
    assert_eq!(blob_files(f.dir.path()), 1, "small objects are inline, large ones are blobs");

    // Overwrite large with small: the old blob goes away.
    f.engine.put_object(put("bkt", "large", "now small")).await.unwrap();
    assert_eq!(read(&f.engine, "bkt", "large").await, b"now small");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(blob_files(f.dir.path()), 0);

    let deleted = f.engine.delete_object("bkt", "small", &WriteConditions::default()).await.unwrap();
    assert!(deleted.existed);
    let err =
        f.engine.get_object(GetRequest { bucket: "bkt".into(), key: "small".into(), ..Default::default() }).await.err();
    assert!(matches!(err, Some(EngineError::NoSuchKey)));
    let again = f.engine.delete_object("bkt", "small", &WriteConditions::default()).await.unwrap();
    assert!(!again.existed, "deleting a missing key succeeds");
    let err =
        f.engine.get_object(GetRequest { bucket: "nope".into(), key: "x".into(), ..Default::default() }).await.err();
    assert!(matches!(err, Some(EngineError::NoSuchBucket)));
}

fn md5_of(data: &[u8]) -> Vec<u8> {
    hex::decode(meridian_engine::checksum::md5_hex(data)).unwrap()
}

#[tokio::test]
async fn create_only_puts_race_to_exactly_one_winner() {
    let f = fixture();
    f.engine.create_bucket("bkt", "me").await.unwrap();
    let attempts = (0..20).map(|i| {
        let engine = f.engine.clone();
        tokio::spawn(async move {
            let mut req = put("bkt", "lock", format!("writer {i}"));
            req.conditions = WriteConditions { if_none_match: Some(ETagMatch::Any), ..Default::default() };
            engine.put_object(req).await
        })
    });
    let results = futures::future::join_all(attempts).await;
    let winners = results.iter().filter(|r| r.as_ref().unwrap().is_ok()).count();
    assert_eq!(winners, 1);
    assert!(results.iter().all(|r| match r.as_ref().unwrap() {
        Ok(_) => true,
        Err(e) => matches!(e, EngineError::PreconditionFailed),
    }));
}

#[tokio::test]
async fn listing_with_delimiter_pages_and_markers() {
    let f = fixture();
    f.engine.create_bucket("bkt", "me").await.unwrap();
    let keys = ["a/1", "a/2", "a/b/3", "b", "c/1", "c/2", "d", "e/x/y"];
    for key in keys {
        f.engine.put_object(put("bkt", key, "x")).await.unwrap();
    }
    let list = |prefix: &str, delimiter: Option<&str>, after: Option<&str>, max_keys| ListRequest {
        consistency: Consistency::Strong,
        prefix: prefix.into(),
        delimiter: delimiter.map(Into::into),
        after: after.map(Into::into),
        max_keys,
    };
    let page = f.engine.list_objects("bkt", &list("", Some("/"), None, 1000)).await.unwrap();
    let objects: Vec<_> = page.objects.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(objects, ["b", "d"]);
    assert_eq!(page.common_prefixes, ["a/", "c/", "e/"]);
    assert!(!page.is_truncated);

    // Page through with max_keys 2, resuming after each page's last entry.
    let mut after: Option<String> = None;
    let mut seen = Vec::new();
    loop {
        let page = f.engine.list_objects("bkt", &list("", Some("/"), after.as_deref(), 2)).await.unwrap();
        seen.extend(page.objects.iter().map(|o| o.key.clone()));
        seen.extend(page.common_prefixes.iter().cloned());
        if !page.is_truncated {
            break;
        }
        after = page.next_after.clone();
        assert!(seen.len() < 20, "listing must terminate");
    }
    seen.sort();
    assert_eq!(seen, ["a/", "b", "c/", "d", "e/"], "no entry twice, none missing");

    let page = f.engine.list_objects("bkt", &list("a/", Some("/"), None, 1000)).await.unwrap();
    assert_eq!(page.objects.iter().map(|o| o.key.as_str()).collect::<Vec<_>>(), ["a/1", "a/2"]);
    assert_eq!(page.common_prefixes, ["a/b/"]);

    let page = f.engine.list_objects("bkt", &list("", None, Some("c/1"), 3)).await.unwrap();
    assert_eq!(page.objects.iter().map(|o| o.key.as_str()).collect::<Vec<_>>(), ["c/2", "d", "e/x/y"]);
    assert!(!page.is_truncated, "exactly the remaining keys is not truncated");
}

#[tokio::test]
async fn multipart_complete_and_ranges_across_parts() {
    let f = fixture();
    f.engine.create_bucket("bkt", "me").await.unwrap();
    let upload =
        f.engine.create_multipart_upload("bkt", "mp", ObjectHeaders::default(), None, false, None).await.unwrap();
    let parts: Vec<Bytes> = (0..3u8).map(|i| Bytes::from(vec![b'a' + i; 20 + i as usize])).collect();
    let mut listed = Vec::new();
    for (i, data) in parts.iter().enumerate() {
        let n = i as u32 + 1;
        let (part, _) = f
            .engine
            .upload_part("bkt", "mp", &upload.upload_id, n, body_from_bytes(data.clone()), Integrity::default(), None)
            .await
            .unwrap();
        listed.push(CompletePart { part_number: n, etag: part.etag, checksum: None });
    }
    let whole: Vec<u8> = parts.concat();
    let (record, _) = f
        .engine
        .complete_multipart_upload("bkt", "mp", &upload.upload_id, &listed, &WriteConditions::default())
        .await
        .unwrap();
    assert!(record.etag.ends_with("-3"));
    assert_eq!(read(&f.engine, "bkt", "mp").await, whole);
    let out = f
        .engine
        .get_object(GetRequest {
            bucket: "bkt".into(),
            key: "mp".into(),
            range: Some(ByteRange::From { first: 15, last: Some(45) }),
            ..Default::default()
        })
        .await
        .unwrap();
    let chunks: Vec<Bytes> = out.body.try_collect().await.unwrap();
    assert_eq!(chunks.concat(), &whole[15..=45]);
    let err = f.engine.list_parts("bkt", "mp", &upload.upload_id, 0, 100).await.err();
    assert!(matches!(err, Some(EngineError::NoSuchUpload)), "a completed upload is gone");
}

#[tokio::test]
async fn bucket_delete_requires_empty() {
    let f = fixture();
    f.engine.create_bucket("bkt", "me").await.unwrap();
    assert!(matches!(f.engine.create_bucket("bkt", "me").await, Err(EngineError::BucketAlreadyOwnedByYou)));
    assert!(matches!(f.engine.create_bucket("bkt", "you").await, Err(EngineError::BucketAlreadyExists)));
    f.engine.put_object(put("bkt", "k", "v")).await.unwrap();
    assert!(matches!(f.engine.delete_bucket("bkt").await, Err(EngineError::BucketNotEmpty)));
    // The failed delete must not leave the bucket unwritable.
    f.engine.put_object(put("bkt", "k2", "v")).await.unwrap();
    f.engine.delete_object("bkt", "k", &WriteConditions::default()).await.unwrap();
    f.engine.delete_object("bkt", "k2", &WriteConditions::default()).await.unwrap();
    f.engine.delete_bucket("bkt").await.unwrap();
    assert!(matches!(f.engine.put_object(put("bkt", "k", "v")).await, Err(EngineError::NoSuchBucket)));
}

#[tokio::test]
async fn a_put_with_a_bucket_record_read_before_the_bucket_changed_does_not_apply_it() {
    let f = fixture();
    f.engine.create_bucket("bkt", "me").await.unwrap();
    let seen = f.engine.bucket_for_access("bkt").await.unwrap();
    f.engine.delete_bucket("bkt").await.unwrap();
    let put_late = f.engine.put_object_in(Some(seen), put("bkt", "k", "v")).await;
    assert!(matches!(put_late, Err(EngineError::NoSuchBucket)), "{put_late:?}");

    // Recreated meanwhile: the write lands in the new bucket, after re-reading it.
    f.engine.create_bucket("bkt", "me").await.unwrap();
    let seen = f.engine.bucket_for_access("bkt").await.unwrap();
    f.engine.set_public_read("bkt", true).await.unwrap();
    f.engine.put_object_in(Some(seen), put("bkt", "k", "v")).await.unwrap();
    assert_eq!(read(&f.engine, "bkt", "k").await, b"v");
}

/// Two engines over one metadata store, as two nodes of a cluster: one in `region-a`, one in
/// `region-b`.
fn two_regions() -> (Engine, Engine, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let meta: Arc<dyn meridian_meta::MetaStore> =
        Arc::new(EmbeddedStore::open(&dir.path().join("meta.redb"), EmbeddedOptions::default()).unwrap());
    let engine_in = |region: &str| {
        let blobs = BlobStore::open(&dir.path().join(region)).unwrap();
        let node = record::Holder { node: format!("node-{region}"), region: region.into(), store: None };
        let config = EngineConfig { inline_max: 1024, min_part_size: 10, node, ..Default::default() };
        Engine::builder(Metadata::single(meta.clone()), blobs, config).build()
    };
    (engine_in("region-a"), engine_in("region-b"), dir)
}

#[tokio::test]
async fn writes_to_a_bucket_pinned_to_another_region_are_refused_by_the_engine() {
    let (a, b, dir) = two_regions();
    let pinned = record::Location::Pinned { region: "region-b".into() };
    b.create_bucket_at("ledger", "me", false, pinned).await.unwrap();
    b.put_object(put("ledger", "src", vec![1u8; 5000])).await.unwrap();
    let upload = b.create_multipart_upload("ledger", "mp", ObjectHeaders::default(), None, false, None).await.unwrap();
    let (part, _) = b
        .upload_part("ledger", "mp", &upload.upload_id, 1, body_from_bytes(vec![2u8; 50]), Integrity::default(), None)
        .await
        .unwrap();
    let listed = [CompletePart { part_number: 1, etag: part.etag, checksum: None }];

    let refused = |result: EngineResult<()>| match result {
        Err(EngineError::PinnedElsewhere { bucket, pinned, here }) => {
            assert_eq!((bucket.as_str(), pinned.as_str(), here.as_str()), ("ledger", "region-b", "region-a"));
        }
        other => panic!("expected PinnedElsewhere, got {other:?}"),
    };
    refused(a.put_object(put("ledger", "k", vec![3u8; 5000])).await.map(drop));
    let copy = CopyRequest {
        src_bucket: "ledger".into(),
        src_key: "src".into(),
        src_version_id: None,
        dst_bucket: "ledger".into(),
        dst_key: "copy".into(),
        source_conditions: Default::default(),
        replace_headers: None,
        replace_tags: None,
        conditions: WriteConditions::default(),
        dst_bucket_seen: None,
        source_key: None,
        protection: None,
        lock: Default::default(),
    };
    refused(a.copy_object(copy).await.map(drop));
    refused(a.create_multipart_upload("ledger", "mp2", ObjectHeaders::default(), None, false, None).await.map(drop));
    let part =
        a.upload_part("ledger", "mp", &upload.upload_id, 2, body_from_bytes(vec![4u8; 50]), Integrity::default(), None);
    refused(part.await.map(drop));
    let part_copy = a.upload_part_copy(
        "ledger",
        "mp",
        &upload.upload_id,
        2,
        "ledger",
        "src",
        None,
        None,
        Default::default(),
        (None, None),
    );
    refused(part_copy.await.map(drop));
    let no_conditions = WriteConditions::default();
    refused(a.complete_multipart_upload("ledger", "mp", &upload.upload_id, &listed, &no_conditions).await.map(drop));
    let kv_put = BatchOp::Put { key: "kv".into(), value: Bytes::from(vec![5u8; 5000]), if_revision: None, ttl: None };
    refused(a.batch("ledger", vec![kv_put]).await.map(drop));
    // Nothing was committed, and region a's disk holds no bytes of the bucket.
    for key in ["k", "copy", "mp", "kv"] {
        let missing = a.head_object(GetRequest { bucket: "ledger".into(), key: key.into(), ..Default::default() });
        assert!(matches!(missing.await, Err(EngineError::NoSuchKey)), "{key}");
    }
    assert_eq!(blob_files(&dir.path().join("region-a")), 0);
    // In its own region the bucket takes writes as usual, the refused completion included.
    b.put_object(put("ledger", "k", vec![3u8; 5000])).await.unwrap();
    b.complete_multipart_upload("ledger", "mp", &upload.upload_id, &listed, &no_conditions).await.unwrap();
}

/// The embedded store, counting the transactions whose comparisons failed.
struct FailedCommits {
    inner: EmbeddedStore,
    failed: std::sync::atomic::AtomicUsize,
}

impl FailedCommits {
    fn count(&self, response: &meridian_meta::MetaResult<meridian_meta::TxnResponse>) {
        if response.as_ref().is_ok_and(|r| !r.succeeded) {
            self.failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

#[async_trait::async_trait]
impl meridian_meta::MetaStore for FailedCommits {
    async fn range(&self, req: meridian_meta::RangeRequest) -> meridian_meta::MetaResult<meridian_meta::RangeResponse> {
        self.inner.range(req).await
    }

    async fn get_many(
        &self,
        keys: &[Bytes],
    ) -> meridian_meta::MetaResult<(Vec<Option<meridian_meta::KeyValue>>, Revision)> {
        self.inner.get_many(keys).await
    }

    async fn txn(&self, txn: meridian_meta::Txn) -> meridian_meta::MetaResult<meridian_meta::TxnResponse> {
        let response = self.inner.txn(txn).await;
        self.count(&response);
        response
    }

    async fn txns_in_order(
        &self,
        txns: Vec<meridian_meta::Txn>,
    ) -> Vec<meridian_meta::MetaResult<meridian_meta::TxnResponse>> {
        let responses = self.inner.txns_in_order(txns).await;
        responses.iter().for_each(|r| self.count(r));
        responses
    }

    async fn current_revision(&self) -> meridian_meta::MetaResult<Revision> {
        self.inner.current_revision().await
    }

    async fn watch(
        &self,
        range: meridian_meta::RangeRequest,
        from: Revision,
    ) -> meridian_meta::MetaResult<meridian_meta::WatchStream> {
        self.inner.watch(range, from).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unconditional_writes_of_one_key_are_ordered_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let inner = EmbeddedStore::open(&dir.path().join("meta.redb"), EmbeddedOptions::default()).unwrap();
    let store = Arc::new(FailedCommits { inner, failed: Default::default() });
    let blobs = BlobStore::open(dir.path()).unwrap();
    let config = EngineConfig { inline_max: 1024, blob_delete_delay: Duration::ZERO, ..Default::default() };
    let engine = Engine::builder(Metadata::single(store.clone()), blobs, config).build();
    engine.create_bucket("bkt", "me").await.unwrap();

    // 32 writers, 8 writes each, inline and blob-sized bodies mixed.
    let writers = (0..32).map(|w| {
        let engine = engine.clone();
        tokio::spawn(async move {
            let mut written = Vec::new();
            for n in 0..8 {
                let body = Bytes::from(format!("writer {w} write {n} ").repeat(if n % 2 == 0 { 1 } else { 200 }));
                let out = engine.put_object(put("bkt", "hot", body.clone())).await;
                written.push((out.map(|o| o.revision), body));
            }
            written
        })
    });
    let mut written = Vec::new();
    for writer in futures::future::join_all(writers).await {
        written.extend(writer.unwrap());
    }
    let failures: Vec<_> = written.iter().filter_map(|(r, _)| r.as_ref().err()).collect();
    assert!(failures.is_empty(), "{} of 256 writes failed: {failures:?}", failures.len());
    assert_eq!(store.failed.load(std::sync::atomic::Ordering::Relaxed), 0, "no commit lost a race");
    let mut revisions: Vec<Revision> = written.iter().map(|(r, _)| *r.as_ref().unwrap()).collect();
    revisions.sort_unstable();
    revisions.dedup();
    assert_eq!(revisions.len(), 256, "every write has its own revision");
    let (_, last) = written.iter().max_by_key(|(r, _)| *r.as_ref().unwrap()).unwrap();
    assert_eq!(read(&engine, "bkt", "hot").await, last.to_vec(), "the last revision's bytes are what is read");
    // Every replaced blob was freed: at most the current object's remains.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(blob_files(dir.path()) <= 1, "{} blob files left", blob_files(dir.path()));
}

async fn read_version(engine: &Engine, bucket: &str, key: &str, version_id: &str) -> EngineResult<Vec<u8>> {
    let req = GetRequest {
        bucket: bucket.into(),
        key: key.into(),
        version_id: Some(version_id.into()),
        ..Default::default()
    };
    let out = engine.get_object(req).await?;
    let chunks: Vec<Bytes> = out.body.try_collect().await.unwrap();
    Ok(chunks.concat())
}

/// Creates `bucket` with versioning enabled.
async fn versioned_bucket(engine: &Engine, bucket: &str) {
    engine.create_bucket(bucket, "me").await.unwrap();
    engine.set_versioning(bucket, meridian_engine::record::Versioning::Enabled).await.unwrap();
}

fn version_of(out: &PutOutcome) -> String {
    out.record.version.as_ref().unwrap().id().to_string()
}

/// Every key the engine keeps under `v/`.
async fn version_keys(engine: &Engine) -> usize {
    engine.meta().range(meridian_meta::RangeRequest::prefix("v/")).await.unwrap().kvs.len()
}

#[tokio::test]
async fn versions_keep_their_bytes_until_they_are_deleted() {
    use meridian_engine::record::Versioning;
    let f = fixture();
    let e = &f.engine;
    e.create_bucket("plain", "me").await.unwrap();
    e.put_object(put("plain", "k", vec![1u8; 5000])).await.unwrap();
    e.put_object(put("plain", "k", "small")).await.unwrap();
    e.delete_object("plain", "k", &WriteConditions::default()).await.unwrap();
    assert_eq!(version_keys(e).await, 0, "unversioned buckets write nothing under v/");

    e.create_bucket("ver", "me").await.unwrap();
    let before = e.put_object(put("ver", "old", "written before versioning")).await.unwrap();
    assert!(before.record.version.is_none());
    e.set_versioning("ver", Versioning::Enabled).await.unwrap();
    assert_eq!(read_version(e, "ver", "old", "null").await.unwrap(), b"written before versioning");

    let v1 = version_of(&e.put_object(put("ver", "k", vec![1u8; 5000])).await.unwrap());
    let v2 = version_of(&e.put_object(put("ver", "k", vec![2u8; 5000])).await.unwrap());
    let v3 = version_of(&e.put_object(put("ver", "k", "inline three")).await.unwrap());
    let v4 = version_of(&e.put_object(put("ver", "k", "inline four")).await.unwrap());
    assert!(v4 < v3 && v3 < v2 && v2 < v1, "newer ids sort first: {v1} {v2} {v3} {v4}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(blob_files(f.dir.path()), 2, "no version's blob was freed by an overwrite");
    let (removed, _) = e.collect_orphan_blobs(std::time::SystemTime::now() + Duration::from_secs(3600)).await.unwrap();
    assert_eq!(removed, 0, "old versions' blobs are referenced");
    assert_eq!(read_version(e, "ver", "k", &v1).await.unwrap(), vec![1u8; 5000]);
    assert_eq!(read_version(e, "ver", "k", &v3).await.unwrap(), b"inline three", "noncurrent inline bytes stay");
    assert_eq!(read(e, "ver", "k").await, b"inline four");
    assert!(matches!(read_version(e, "ver", "k", "0000000000000000").await, Err(EngineError::NoSuchVersion)));
    assert!(matches!(read_version(e, "ver", "k", "nope").await, Err(EngineError::InvalidArgument(_))));

    e.delete_version("ver", "k", &v1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(blob_files(f.dir.path()), 1, "deleting a version frees its bytes");

    // A delete makes a marker; removing the marker brings the object back.
    let marker = e.delete_object("ver", "k", &WriteConditions::default()).await.unwrap();
    assert!(marker.delete_marker);
    let marker_id = marker.version_id.unwrap();
    let current = e.get_object(GetRequest { bucket: "ver".into(), key: "k".into(), ..Default::default() }).await;
    assert!(matches!(current, Err(EngineError::DeleteMarker { by_id: false, .. })));
    assert!(matches!(
        read_version(e, "ver", "k", &marker_id).await,
        Err(EngineError::DeleteMarker { by_id: true, .. })
    ));
    assert_eq!(read_version(e, "ver", "k", &v4).await.unwrap(), b"inline four");
    let page = e.list_versions("ver", &versions::VersionListRequest { max_keys: 100, ..Default::default() }).await;
    let listed: Vec<(String, String, bool, bool)> = page
        .unwrap()
        .versions
        .into_iter()
        .map(|v| (v.key, v.version.stamp.id().to_string(), v.is_latest, v.version.object.is_none()))
        .collect();
    let expected = [
        ("k", marker_id.as_str(), true, true),
        ("k", v4.as_str(), false, false),
        ("k", v3.as_str(), false, false),
        ("k", v2.as_str(), false, false),
        ("old", "null", true, false),
    ];
    let expected: Vec<_> = expected.iter().map(|(k, v, l, m)| (k.to_string(), v.to_string(), *l, *m)).collect();
    assert_eq!(listed, expected);
    e.delete_version("ver", "k", &marker_id).await.unwrap();
    assert_eq!(read(e, "ver", "k").await, b"inline four");
    // Deleting the current version makes the previous one current.
    e.delete_version("ver", "k", &v4).await.unwrap();
    e.delete_version("ver", "k", &v3).await.unwrap();
    assert_eq!(read(e, "ver", "k").await, vec![2u8; 5000]);
    assert!(matches!(e.delete_bucket("ver").await, Err(EngineError::BucketNotEmpty)));

    // Suspended: writes replace the null version, freeing its bytes; older ids stay.
    e.set_versioning("ver", Versioning::Suspended).await.unwrap();
    let null = e.put_object(put("ver", "k", vec![5u8; 5000])).await.unwrap();
    assert_eq!(version_of(&null), "null");
    e.put_object(put("ver", "k", vec![6u8; 5000])).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(blob_files(f.dir.path()), 2, "v2 and the newest null version");
    assert_eq!(read_version(e, "ver", "k", "null").await.unwrap(), vec![6u8; 5000]);
    assert_eq!(read_version(e, "ver", "k", &v2).await.unwrap(), vec![2u8; 5000]);

    // Removing every version leaves nothing behind.
    for (key, id) in [("k", "null"), ("k", v2.as_str()), ("old", "null")] {
        e.delete_version("ver", key, id).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!((blob_files(f.dir.path()), version_keys(e).await), (0, 0));
    e.delete_bucket("ver").await.unwrap();
}

/// The ids of a key's versions (newest first) and whether each is a delete marker.
/// A versioned PUT handed a bucket record that changed since it was read (here: versioning
/// suspended meanwhile) makes the version the bucket calls for now: the stale record fails the
/// commit's comparison and the retry reads the bucket again.
#[tokio::test]
async fn a_versioned_put_with_a_stale_bucket_record_follows_the_bucket_as_it_is() {
    use meridian_engine::record::Versioning;
    let f = fixture();
    let e = &f.engine;
    versioned_bucket(e, "ver").await;
    let stale = e.bucket("ver").await.unwrap();
    let fresh = e.put_object_in(Some(stale.clone()), put("ver", "k", "enabled")).await.unwrap();
    assert_ne!(version_of(&fresh), "null", "a record still current is used as it is");

    e.set_versioning("ver", Versioning::Suspended).await.unwrap();
    let out = e.put_object_in(Some(stale), put("ver", "k", "suspended")).await.unwrap();
    assert_eq!(version_of(&out), "null", "written as the suspended bucket's null version");
    assert_eq!(read_version(e, "ver", "k", "null").await.unwrap(), b"suspended");
    assert_eq!(read_version(e, "ver", "k", &version_of(&fresh)).await.unwrap(), b"enabled");
}

async fn versions_of(engine: &Engine, bucket: &str, prefix: &str) -> Vec<(String, bool)> {
    let req = versions::VersionListRequest { prefix: prefix.into(), max_keys: 1000, ..Default::default() };
    let page = engine.list_versions(bucket, &req).await.unwrap();
    page.versions.into_iter().map(|v| (v.version.stamp.id().to_string(), v.version.object.is_none())).collect()
}

#[tokio::test]
async fn lifecycle_rules_expire_noncurrent_versions_and_lone_delete_markers() {
    use meridian_engine::lifecycle::LifecycleRule;
    const DAY_MS: i64 = 86_400_000;
    let f = fixture();
    let e = &f.engine;
    versioned_bucket(e, "aging").await;
    let mut logs = Vec::new();
    for n in 0..4 {
        logs.push(version_of(&e.put_object(put("aging", "logs/a", vec![n as u8; 3000])).await.unwrap()));
    }
    e.put_object(put("aging", "tmp/x", "temporary")).await.unwrap();
    let marker = e.delete_object("aging", "tmp/x", &WriteConditions::default()).await.unwrap();
    let keep_one = LifecycleRule {
        id: "logs".into(),
        prefix: "logs/".into(),
        enabled: true,
        noncurrent_days: Some(1),
        newer_noncurrent_versions: Some(1),
        ..Default::default()
    };
    let clean_tmp = LifecycleRule {
        id: "tmp".into(),
        prefix: "tmp/".into(),
        enabled: true,
        noncurrent_days: Some(2),
        expired_object_delete_marker: true,
        ..Default::default()
    };
    e.set_lifecycle("aging", vec![keep_one, clean_tmp]).await.unwrap();
    assert_eq!(versions_of(e, "aging", "logs/").await.len(), 4, "nothing is a day old yet");
    assert_eq!(versions_of(e, "aging", "tmp/").await.len(), 2, "the marker is not alone");

    let now = meridian_engine::now_ms();
    assert_eq!(e.expire_versions("aging", now + DAY_MS + 60_000).await.unwrap(), 2);
    let left: Vec<String> = versions_of(e, "aging", "logs/").await.into_iter().map(|(id, _)| id).collect();
    assert_eq!(left, [logs[3].clone(), logs[2].clone()], "the current version and one newer noncurrent one stay");
    assert_eq!(versions_of(e, "aging", "tmp/").await.len(), 2, "tmp/ waits two days");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(blob_files(f.dir.path()), 2, "expired versions' bytes are freed");

    // Two days on: the version under the marker goes, then the marker left alone goes too.
    assert_eq!(e.expire_versions("aging", now + 2 * DAY_MS + 60_000).await.unwrap(), 2);
    assert!(versions_of(e, "aging", "tmp/").await.is_empty(), "{marker:?} and its object are gone");
    assert_eq!(read(e, "aging", "logs/a").await, vec![3u8; 3000]);

    // An expired current version in a versioned bucket is hidden by a marker, not removed.
    let mut short = put("aging", "ttl", "short-lived");
    short.expires_at_ms = Some(meridian_engine::now_ms() - 1);
    let short = version_of(&e.put_object(short).await.unwrap());
    e.reap_due().await.unwrap();
    let ttl = versions_of(e, "aging", "ttl").await;
    assert_eq!(ttl.len(), 2);
    assert!(ttl[0].1, "a delete marker on top: {ttl:?}");
    assert_eq!(ttl[1], (short.clone(), false));
    assert!(read_version(e, "aging", "ttl", &short).await.is_ok());
}

async fn read_in_snapshot(engine: &Engine, bucket: &str, snapshot: &str, key: &str) -> EngineResult<Vec<u8>> {
    let req = GetRequest { bucket: bucket.into(), key: key.into(), ..Default::default() };
    let out = engine.read_object_at(req, Some(snapshot), true).await?;
    let chunks: Vec<Bytes> = out.body.try_collect().await.unwrap();
    Ok(chunks.concat())
}

/// Every key a listing shows, read a page of `page` keys at a time.
async fn listed_keys(engine: &Engine, bucket: &str, snapshot: Option<&str>, page: usize) -> Vec<String> {
    let mut keys = Vec::new();
    let mut req = ListRequest { max_keys: page, ..Default::default() };
    for _ in 0..100 {
        let out = match snapshot {
            Some(name) => engine.list_objects_in_snapshot(bucket, name, &req).await.unwrap(),
            None => engine.list_objects(bucket, &req).await.unwrap(),
        };
        keys.extend(out.objects.into_iter().map(|o| o.key));
        if !out.is_truncated {
            return keys;
        }
        req.after = out.next_after;
    }
    panic!("listing did not end");
}

/// Every key the engine keeps under `z/` (versions kept for snapshots).
async fn retained_keys(engine: &Engine) -> usize {
    engine.meta().range(meridian_meta::RangeRequest::prefix("z/")).await.unwrap().kvs.len()
}

#[tokio::test]
async fn snapshots_show_the_bucket_as_it_was_and_forks_diverge_without_copying() {
    use meridian_engine::record::Versioning;
    let f = fixture();
    let e = &f.engine;
    e.create_bucket("src", "me").await.unwrap();
    e.put_object(put("src", "legacy", "written before versioning")).await.unwrap();
    assert!(matches!(e.create_snapshot("src", Some("s0")).await, Err(EngineError::InvalidRequest(_))));
    e.set_versioning("src", Versioning::Enabled).await.unwrap();
    let big = vec![7u8; 5000];
    let big_version = version_of(&e.put_object(put("src", "big", big.clone())).await.unwrap());
    e.put_object(put("src", "small", "small one")).await.unwrap();
    e.put_object(put("src", "gone", "deleted later")).await.unwrap();
    let snapshot = e.create_snapshot("src", Some("s1")).await.unwrap();
    assert!(snapshot.revision > 0);
    assert!(matches!(e.create_snapshot("src", Some("s1")).await, Err(EngineError::SnapshotExists(_))));
    assert!(matches!(e.create_snapshot("src", Some("Bad/Name")).await, Err(EngineError::InvalidArgument(_))));

    // After the snapshot: an overwrite, a delete marker, two versions removed for good, a new key.
    e.put_object(put("src", "small", "small two")).await.unwrap();
    e.delete_object("src", "gone", &WriteConditions::default()).await.unwrap();
    e.delete_version("src", "big", &big_version).await.unwrap();
    e.delete_version("src", "legacy", "null").await.unwrap();
    e.put_object(put("src", "new", "after the snapshot")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(blob_files(f.dir.path()), 1, "the snapshot keeps the removed version's bytes");
    let (orphans, _) = e.collect_orphan_blobs(std::time::SystemTime::now() + Duration::from_secs(3600)).await.unwrap();
    assert_eq!(orphans, 0, "kept bytes are referenced");
    assert_eq!(retained_keys(e).await, 2);

    assert_eq!(read_in_snapshot(e, "src", "s1", "big").await.unwrap(), big);
    assert_eq!(read_in_snapshot(e, "src", "s1", "small").await.unwrap(), b"small one");
    assert_eq!(read_in_snapshot(e, "src", "s1", "gone").await.unwrap(), b"deleted later");
    assert_eq!(read_in_snapshot(e, "src", "s1", "legacy").await.unwrap(), b"written before versioning");
    assert!(matches!(read_in_snapshot(e, "src", "s1", "new").await, Err(EngineError::NoSuchKey)));
    assert!(matches!(read_in_snapshot(e, "src", "nope", "big").await, Err(EngineError::NoSuchSnapshot(_))));
    let then = ["big", "gone", "legacy", "small"];
    for page in [1, 2, 1000] {
        assert_eq!(listed_keys(e, "src", Some("s1"), page).await, then, "pages of {page}");
    }
    assert_eq!(listed_keys(e, "src", None, 1000).await, ["new", "small"]);
    assert_eq!(read(e, "src", "small").await, b"small two");

    // A fork of the snapshot starts with its objects and diverges; the source is unaffected.
    e.fork_bucket("src", Some("s1"), "fork", None).await.unwrap();
    assert_eq!(read(e, "fork", "big").await, big);
    assert_eq!(listed_keys(e, "fork", None, 2).await, then);
    e.put_object(put("fork", "small", "the fork's own")).await.unwrap();
    e.delete_object("fork", "gone", &WriteConditions::default()).await.unwrap();
    e.put_object(put("fork", "extra", "only in the fork")).await.unwrap();
    assert_eq!(read(e, "fork", "small").await, b"the fork's own");
    let gone = e.get_object(GetRequest { bucket: "fork".into(), key: "gone".into(), ..Default::default() }).await;
    assert!(matches!(gone, Err(EngineError::DeleteMarker { .. })));
    assert_eq!(listed_keys(e, "fork", None, 1).await, ["big", "extra", "legacy", "small"]);
    assert_eq!(listed_keys(e, "src", None, 1000).await, ["new", "small"]);
    assert_eq!(read(e, "src", "small").await, b"small two");
    assert_eq!(blob_files(f.dir.path()), 1, "forking copied no bytes");
    let tags = meridian_engine::tagging::Tags::from([("k".to_string(), "v".to_string())]);
    let retag = e.set_object_tags("fork", "legacy", None, tags).await;
    assert!(matches!(retag, Err(EngineError::InvalidRequest(_))), "an inherited object is the source's: {retag:?}");

    // A fork of the source as it is now goes through a snapshot made for it.
    e.fork_bucket("src", None, "now", None).await.unwrap();
    assert_eq!(listed_keys(e, "now", None, 1000).await, ["new", "small"]);
    let names: Vec<String> = e.list_snapshots("src").await.unwrap().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["fork-now", "s1"]);

    // Nothing a fork stands on can go.
    assert!(matches!(e.delete_snapshot("src", "s1").await, Err(EngineError::InvalidRequest(_))));
    assert!(matches!(e.delete_bucket("src").await, Err(EngineError::BucketHasSnapshots(2))));
    e.delete_bucket("now").await.unwrap();
    let names: Vec<String> = e.list_snapshots("src").await.unwrap().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["s1"], "a fork's own snapshot goes with it");
    let all = versions::VersionListRequest { max_keys: 100, ..Default::default() };
    for version in e.list_versions("fork", &all).await.unwrap().versions {
        e.delete_version("fork", &version.key, version.version.stamp.id()).await.unwrap();
    }
    e.delete_bucket("fork").await.unwrap();
    e.delete_snapshot("src", "s1").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!((blob_files(f.dir.path()), retained_keys(e).await), (0, 0), "the last snapshot's bytes are freed");
}

/// Every key the engine keeps under `i/` (inline bytes).
async fn inline_keys(engine: &Engine) -> usize {
    engine.meta().range(meridian_meta::RangeRequest::prefix("i/")).await.unwrap().kvs.len()
}

#[tokio::test]
async fn a_small_versioned_put_stores_its_bytes_once_until_it_is_replaced() {
    let f = fixture();
    let e = &f.engine;
    versioned_bucket(e, "small").await;
    let v1 = version_of(&e.put_object(put("small", "k", "one")).await.unwrap());
    assert_eq!(inline_keys(e).await, 1, "the current version's bytes are written once");
    assert_eq!(read_version(e, "small", "k", &v1).await.unwrap(), b"one", "by id while current");
    let v2 = version_of(&e.put_object(put("small", "k", "two")).await.unwrap());
    assert_eq!(inline_keys(e).await, 2, "the replaced version's bytes moved to its own key");
    assert_eq!(read_version(e, "small", "k", &v1).await.unwrap(), b"one");
    assert_eq!(read_version(e, "small", "k", &v2).await.unwrap(), b"two");
    e.delete_object("small", "k", &WriteConditions::default()).await.unwrap();
    assert_eq!(read_version(e, "small", "k", &v2).await.unwrap(), b"two", "kept behind a delete marker");
    assert_eq!(inline_keys(e).await, 2);
    // Removing the current version by id makes the previous one current again.
    let v3 = version_of(&e.put_object(put("small", "k", "three")).await.unwrap());
    e.delete_version("small", "k", &v3).await.unwrap();
    let marker = e.get_object(GetRequest { bucket: "small".into(), key: "k".into(), ..Default::default() }).await;
    assert!(matches!(marker, Err(EngineError::DeleteMarker { .. })));
    for id in [&v1, &v2] {
        e.delete_version("small", "k", id).await.unwrap();
    }
    assert_eq!(inline_keys(e).await, 0, "nothing is left behind");
}

/// The ids and latest flags of every version of `bucket` listed `per_page` at a time.
async fn versions_paged(engine: &Engine, bucket: &str, per_page: usize) -> Vec<(String, bool)> {
    let mut req = versions::VersionListRequest { max_keys: per_page, ..Default::default() };
    let mut listed = Vec::new();
    loop {
        let page = engine.list_versions(bucket, &req).await.unwrap();
        listed.extend(page.versions.iter().map(|v| (v.version.stamp.id().to_string(), v.is_latest)));
        if !page.is_truncated {
            return listed;
        }
        req.key_marker = page.next_key_marker;
        req.version_id_marker = page.next_version_id_marker;
    }
}

/// A versioned PUT writes its version's entry and the current object, and leaves the key's
/// head alone (one B-tree insert fewer): the current object names the newest version. Reads,
/// listings and removals by id agree with that, before and after a delete marker wrote a head.
#[tokio::test]
async fn a_versioned_put_leaves_the_head_alone_and_the_current_object_names_the_newest_version() {
    let f = fixture();
    let e = &f.engine;
    versioned_bucket(e, "ver").await;
    let head = || async { e.meta().get(&keys::version_head("ver", "k")).await.unwrap() };
    let v1 = version_of(&e.put_object(put("ver", "k", "one")).await.unwrap());
    let v2 = version_of(&e.put_object(put("ver", "k", "two")).await.unwrap());
    assert!(head().await.is_none(), "PUTs write no head");
    for per_page in [1, 1000] {
        let listed = versions_paged(e, "ver", per_page).await;
        assert_eq!(listed, [(v2.clone(), true), (v1.clone(), false)], "{per_page} per page");
    }
    // Removing a noncurrent version of a key without a head.
    e.delete_version("ver", "k", &v1).await.unwrap();
    assert_eq!(read(e, "ver", "k").await, b"two");
    assert_eq!(versions_paged(e, "ver", 1000).await, [(v2.clone(), true)]);

    // A delete marker writes the head; a PUT after it leaves that head as it was.
    let marker = e.delete_object("ver", "k", &WriteConditions::default()).await.unwrap().version_id.unwrap();
    let marked = head().await.expect("a delete marker writes the head");
    let v3 = version_of(&e.put_object(put("ver", "k", "three")).await.unwrap());
    assert_eq!(head().await.unwrap().mod_revision, marked.mod_revision, "the PUT left the head alone");
    assert_eq!(read(e, "ver", "k").await, b"three");
    let expected = [(v3.clone(), true), (marker.clone(), false), (v2.clone(), false)];
    for per_page in [1, 2, 1000] {
        assert_eq!(versions_paged(e, "ver", per_page).await, expected, "{per_page} per page");
    }

    // A current object that expired is still the newest version: no delete marker is named.
    let expired = PutRequest { expires_at_ms: Some(meridian_engine::now_ms() - 1), ..put("ver", "k", "four") };
    let v4 = version_of(&e.put_object(expired).await.unwrap());
    let gone = e.get_object(GetRequest { bucket: "ver".into(), key: "k".into(), ..Default::default() }).await;
    assert!(matches!(gone, Err(EngineError::NoSuchKey)), "{:?}", gone.map(|_| ()));

    // Removing the current version (named by the object, not the head) makes the next current.
    e.delete_version("ver", "k", &v4).await.unwrap();
    e.delete_version("ver", "k", &v3).await.unwrap();
    let current = e.get_object(GetRequest { bucket: "ver".into(), key: "k".into(), ..Default::default() }).await;
    assert!(
        matches!(&current, Err(EngineError::DeleteMarker { version_id, by_id: false }) if *version_id == marker),
        "{:?}",
        current.map(|_| ())
    );
    e.delete_version("ver", "k", &marker).await.unwrap();
    assert_eq!(read(e, "ver", "k").await, b"two");
    e.delete_version("ver", "k", &v2).await.unwrap();
    assert_eq!(version_keys(e).await, 0, "no version and no head left");
}

/// PUTs (which leave the head alone) and delete markers (which write it) racing on one key:
/// every acknowledged change is one version, and the newest listed is what a read sees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_versioned_puts_and_delete_markers_each_make_one_version_and_agree_on_the_latest() {
    let f = fixture();
    let e = f.engine.clone();
    versioned_bucket(&e, "ver").await;
    for round in 0..5 {
        let writers = (0..16).map(|w| {
            let e = e.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for n in 0..4 {
                    let id = if (w + n + round) % 3 == 0 {
                        e.delete_object("ver", "hot", &WriteConditions::default()).await.unwrap().version_id
                    } else {
                        version_of(&e.put_object(put("ver", "hot", format!("{w}-{n}"))).await.unwrap()).into()
                    };
                    ids.push(id.unwrap());
                }
                ids
            })
        });
        let mut acknowledged: Vec<String> = Vec::new();
        for writer in futures::future::join_all(writers).await {
            acknowledged.extend(writer.unwrap());
        }
        let listed = versions_paged(&e, "ver", 1000).await;
        assert_eq!(listed.len(), 64 * (round + 1), "round {round}: one version per acknowledged change");
        let mut listed_ids: Vec<&String> = listed.iter().map(|(id, _)| id).collect();
        for id in &acknowledged {
            assert!(listed_ids.contains(&id), "round {round}: acknowledged version {id} is listed");
        }
        listed_ids.sort();
        listed_ids.dedup();
        assert_eq!(listed_ids.len(), listed.len(), "round {round}: every version id is listed once");
        assert_eq!(listed.iter().filter(|(_, latest)| *latest).count(), 1, "round {round}");
        let (newest, _) = &listed[0];
        let got = e.get_object(GetRequest { bucket: "ver".into(), key: "hot".into(), ..Default::default() }).await;
        match got {
            Ok(out) => assert_eq!(out.record.version.unwrap().id(), newest, "round {round}: the read is the newest"),
            Err(EngineError::DeleteMarker { version_id, .. }) => assert_eq!(&version_id, newest, "round {round}"),
            Err(other) => panic!("round {round}: {other}"),
        }
    }
}

#[tokio::test]
async fn object_lock_keeps_locked_versions_from_every_removal() {
    use meridian_engine::lifecycle::LifecycleRule;
    use meridian_engine::object_lock::{DefaultRetention, LockConfig, ObjectLock};
    use meridian_engine::record::{self, BucketRecord, Location, ObjectHeaders, Versioning};
    const DAY_MS: i64 = 86_400_000;
    let f = fixture();
    let e = &f.engine;
    e.create_locked_bucket("locked", "me", false, Location::Global).await.unwrap();
    assert!(matches!(e.set_versioning("locked", Versioning::Suspended).await, Err(EngineError::InvalidBucketState(_))));
    let default = DefaultRetention::new(Some("GOVERNANCE"), Some(1), None).unwrap();
    e.set_lock_config("locked", LockConfig { default_retention: Some(default) }).await.unwrap();
    let before = meridian_engine::now_ms();
    let old = version_of(&e.put_object(put("locked", "k", "old")).await.unwrap());
    let lock = e.object_lock("locked", "k", Some(&old)).await.unwrap();
    let retention = lock.retention.expect("the default retention applies");
    assert!(retention.until_ms >= before + DAY_MS && retention.until_ms <= meridian_engine::now_ms() + DAY_MS);
    let mut held = put("locked", "k", "held");
    held.headers.lock = ObjectLock { retention: None, legal_hold: Some(true) };
    let held = version_of(&e.put_object(held).await.unwrap());
    e.put_object(put("locked", "k", "current")).await.unwrap();

    let expire_all = LifecycleRule { id: "all".into(), enabled: true, noncurrent_days: Some(1), ..Default::default() };
    e.set_lifecycle("locked", vec![expire_all]).await.unwrap();
    let far = meridian_engine::now_ms() + 30 * DAY_MS;
    assert_eq!(e.expire_versions("locked", far).await.unwrap(), 0, "lifecycle leaves locked versions");
    for id in [&old, &held] {
        assert!(matches!(e.delete_version("locked", "k", id).await, Err(EngineError::AccessDenied(_))), "{id}");
    }
    let refused = e.delete_objects("locked", vec![("k".into(), Some(old.clone()))], |_| false).await;
    assert!(matches!(refused[0].1, Err(EngineError::AccessDenied(_))));
    assert!(e.delete_object("locked", "k", &WriteConditions::default()).await.unwrap().delete_marker);
    assert!(matches!(e.delete_version_with("locked", "k", &held, true).await, Err(EngineError::AccessDenied(_))));
    e.delete_version_with("locked", "k", &old, true).await.expect("GOVERNANCE gives way to a bypass");
    e.set_legal_hold("locked", "k", Some(&held), false).await.unwrap();
    e.delete_version_with("locked", "k", &held, true).await.expect("hold off: its default GOVERNANCE bypassed");

    // Lock settings go only to lock buckets; records from before lock still read.
    e.create_bucket("plain", "me").await.unwrap();
    let mut asked = put("plain", "k", "x");
    asked.headers.lock.legal_hold = Some(false);
    assert!(matches!(e.put_object(asked).await, Err(EngineError::InvalidRequest(_))));
    assert!(matches!(e.lock_config("plain").await, Err(EngineError::NoLockConfiguration)));
    // A versioned bucket may turn lock on, and then keeps versioning Enabled.
    e.set_versioning("plain", Versioning::Enabled).await.unwrap();
    e.set_lock_config("plain", LockConfig::default()).await.unwrap();
    assert!(matches!(e.set_versioning("plain", Versioning::Suspended).await, Err(EngineError::InvalidBucketState(_))));
    assert!(record::decode::<ObjectHeaders>(b"{}").unwrap().lock.is_empty());
    assert!(record::decode::<BucketRecord>(br#"{"created_ms":1}"#).unwrap().object_lock.is_none());
}

/// As S3: a part of an upload whose object will be locked (a lock asked for at creation, or the
/// bucket's default retention) is refused without Content-MD5 or a checksum, and stored with one.
#[tokio::test]
async fn parts_of_a_locked_upload_need_an_integrity_value() {
    use meridian_engine::object_lock::{DefaultRetention, LockConfig, ObjectLock};
    use meridian_engine::record::Location;
    let f = fixture();
    let e = &f.engine;
    let with_md5 = |data: &[u8]| Integrity {
        content_md5: Some(base64::Engine::encode(&base64::engine::general_purpose::STANDARD, md5_of(data))),
        ..Integrity::default()
    };
    e.create_locked_bucket("locked", "me", false, Location::Global).await.unwrap();
    let held = ObjectHeaders { lock: ObjectLock { retention: None, legal_hold: Some(true) }, ..Default::default() };
    let asked = e.create_multipart_upload("locked", "held", held, None, false, None).await.unwrap();
    let plain =
        e.create_multipart_upload("locked", "plain", ObjectHeaders::default(), None, false, None).await.unwrap();
    let part = |key: &'static str, id: String, integrity: Integrity| async move {
        e.upload_part("locked", key, &id, 1, body_from_bytes(b"part".to_vec()), integrity, None).await
    };
    let refused = part("held", asked.upload_id.clone(), Integrity::default()).await;
    assert!(matches!(&refused, Err(EngineError::InvalidRequest(m)) if m.contains("Content-MD5")), "{refused:?}");
    part("held", asked.upload_id.clone(), with_md5(b"part")).await.expect("with Content-MD5");
    part("plain", plain.upload_id.clone(), Integrity::default()).await.expect("nothing to lock: no value needed");

    let default = DefaultRetention::new(Some("GOVERNANCE"), Some(1), None).unwrap();
    e.set_lock_config("locked", LockConfig { default_retention: Some(default) }).await.unwrap();
    let refused = part("plain", plain.upload_id.clone(), Integrity::default()).await;
    assert!(matches!(refused, Err(EngineError::InvalidRequest(_))), "the default retention will lock it");
    let checksum = Integrity { algorithm: Some(checksum::ChecksumAlgorithm::Crc32), ..Integrity::default() };
    part("plain", plain.upload_id.clone(), checksum).await.expect("with a checksum");
}

/// Retention that this node's clock says has ended stays in force while the heartbeats the
/// cluster's nodes recorded say it is earlier: a node whose clock ran ahead cannot delete early.
#[tokio::test]
async fn retention_is_judged_against_the_recorded_heartbeats_too() {
    use meridian_engine::cluster::NodeRecord;
    use meridian_engine::object_lock::{LockMode, ObjectLock, Retention};
    use meridian_engine::record::{self, Location};
    let f = fixture();
    let e = &f.engine;
    e.create_locked_bucket("judged", "me", false, Location::Global).await.unwrap();
    let mut short = put("judged", "k", "short");
    let until_ms = meridian_engine::now_ms() + 300;
    short.headers.lock =
        ObjectLock { retention: Some(Retention { mode: LockMode::Compliance, until_ms }), ..Default::default() };
    let version = version_of(&e.put_object(short).await.unwrap());
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Two of three nodes last recorded a time a minute before this node's clock.
    let behind = meridian_engine::now_ms() - 60_000;
    for (id, heartbeat_ms) in [("a", behind), ("b", behind), ("c", meridian_engine::now_ms())] {
        let node = NodeRecord { id: id.into(), heartbeat_ms, ..Default::default() };
        let op = meridian_meta::Op::put(meridian_engine::keys::node(id), record::encode(&node));
        e.meta().txn(meridian_meta::Txn::new().then(op)).await.unwrap();
    }
    assert!(matches!(e.delete_version("judged", "k", &version).await, Err(EngineError::AccessDenied(_))));
    let node = NodeRecord { id: "b".into(), heartbeat_ms: meridian_engine::now_ms(), ..Default::default() };
    let op = meridian_meta::Op::put(meridian_engine::keys::node("b"), record::encode(&node));
    e.meta().txn(meridian_meta::Txn::new().then(op)).await.unwrap();
    e.delete_version("judged", "k", &version).await.expect("the majority of clocks agree it has ended");
}
