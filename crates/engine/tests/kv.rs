//! KV semantics on the engine: TTL and the reaper, locks and fencing, put_transaction, watch,
//! batches. Real embedded metadata store and blob store on a temp dir.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use meridian_blob::BlobStore;
use meridian_engine::conditions::{Fence, WriteConditions};
use meridian_engine::record::ObjectHeaders;
use meridian_engine::watch::{Change, ChangeKind};
use meridian_engine::*;
use meridian_meta::embedded::{EmbeddedOptions, EmbeddedStore};

fn engine() -> (Engine, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let meta = EmbeddedStore::open(&dir.path().join("meta.redb"), EmbeddedOptions::default()).unwrap();
    let blobs = BlobStore::open(dir.path()).unwrap();
    let config = EngineConfig { inline_max: 64, blob_delete_delay: Duration::ZERO, ..Default::default() };
    (Engine::builder(Metadata::single(Arc::new(meta)), blobs, config).build(), dir)
}

fn put_req(key: &str, value: &[u8], ttl: Option<Duration>) -> PutRequest {
    PutRequest {
        bucket: "kvs".into(),
        key: key.into(),
        body: body_from_bytes(Bytes::copy_from_slice(value)),
        headers: ObjectHeaders::default(),
        integrity: Integrity::default(),
        conditions: WriteConditions::default(),
        expires_at_ms: ttl.map(ttl::expires_after),
        protection: None,
        form_upload: false,
    }
}

async fn get(engine: &Engine, key: &str) -> Option<Vec<u8>> {
    match engine.get_object(GetRequest { bucket: "kvs".into(), key: key.into(), ..Default::default() }).await {
        Ok(out) => {
            let chunks: Vec<Bytes> = futures::TryStreamExt::try_collect(out.body).await.unwrap();
            Some(chunks.concat())
        }
        Err(EngineError::NoSuchKey) => None,
        Err(e) => panic!("{e}"),
    }
}

async fn listed(engine: &Engine) -> Vec<String> {
    let page = engine.list_objects("kvs", &ListRequest { max_keys: 1000, ..Default::default() }).await.unwrap();
    page.objects.into_iter().map(|o| o.key).collect()
}

async fn next(stream: &mut watch::ChangeStream) -> Change {
    tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("event in time")
        .expect("open")
        .expect("ok")
}

#[tokio::test]
async fn ttl_hides_at_once_and_the_reaper_cleans_up() {
    let (engine, dir) = engine();
    engine.create_bucket("kvs", "me").await.unwrap();
    let mut changes = engine.watch("kvs", "", 0).await.unwrap();
    let big = vec![9u8; 1000]; // stored as a blob
    let put = engine.put_object(put_req("short", &big, Some(Duration::from_millis(300)))).await.unwrap();
    engine.put_object(put_req("forever", b"v", None)).await.unwrap();
    assert_eq!(get(&engine, "short").await.as_deref(), Some(&big[..]));
    tokio::time::sleep(Duration::from_millis(350)).await;
    // Invisible at once, before any reaper ran.
    assert_eq!(get(&engine, "short").await, None);
    assert_eq!(listed(&engine).await, ["forever"]);
    let blob_files = || -> usize {
        std::fs::read_dir(dir.path().join("blobs"))
            .unwrap()
            .map(|d| std::fs::read_dir(d.unwrap().path()).unwrap().count())
            .sum()
    };
    assert_eq!(blob_files(), 1, "the expired object's bytes are still on disk before the reaper runs");
    engine.reap_due().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(blob_files(), 0, "the reaper reclaims the expired object's bytes");

    let e = next(&mut changes).await;
    assert_eq!((e.kind, e.key.as_str(), e.revision), (ChangeKind::Put, "short", put.revision));
    assert_eq!(next(&mut changes).await.key, "forever");
    let e = next(&mut changes).await;
    assert_eq!((e.kind, e.key.as_str()), (ChangeKind::Expire, "short"), "an expiry is reported as such, once");
    assert_eq!(e.size, Some(1000));
    // The marker sits outside the objects' key range: a raw scan of it sees objects only.
    let scan = engine.meta().range(meridian_meta::RangeRequest::prefix(keys::objects_prefix("kvs"))).await.unwrap();
    let scanned: Vec<_> = scan.kvs.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(scanned, [keys::object("kvs", "forever")]);
    // Replayed from history, the removal is still an expiry.
    let mut replay = engine.watch("kvs", "", put.revision).await.unwrap();
    let kinds = [next(&mut replay).await.kind, next(&mut replay).await.kind, next(&mut replay).await.kind];
    assert_eq!(kinds, [ChangeKind::Put, ChangeKind::Put, ChangeKind::Expire]);
    // A plain delete is reported as a delete; the marker does not block deleting the bucket.
    engine.delete_object("kvs", "forever", &WriteConditions::default()).await.unwrap();
    let e = next(&mut changes).await;
    assert_eq!((e.kind, e.key.as_str()), (ChangeKind::Delete, "forever"));
    engine.delete_bucket("kvs").await.unwrap();
}

/// Databases written before markers moved to `m/` may still hold one under `o/` (with its index
/// entry): object scans, listings and watches ignore it, and the reaper removes it.
#[tokio::test]
async fn an_old_layout_marker_is_ignored_and_reaped() {
    use meridian_meta::{Op, RangeRequest, Txn};
    let (engine, _dir) = engine();
    engine.create_bucket("kvs", "me").await.unwrap();
    let mut changes = engine.watch("kvs", "", 0).await.unwrap();
    let legacy = Bytes::from_static(b"o/kvs/gone\0expired");
    let txn = Txn::new()
        .then(Op::put(legacy.clone(), Bytes::from_static(b"{}")))
        .then(Op::put(keys::expiry(now_ms() - 1, &legacy), Bytes::new()));
    engine.meta().txn(txn).await.unwrap();
    engine.put_object(put_req("kept", b"v", None)).await.unwrap();
    assert_eq!(listed(&engine).await, ["kept"]);
    let e = next(&mut changes).await;
    assert_eq!((e.kind, e.key.as_str()), (ChangeKind::Put, "kept"), "the marker is no change");
    engine.reap_due().await.unwrap();
    assert!(engine.meta().get(&legacy).await.unwrap().is_none(), "the reaper removed the old marker");
    let index = engine.meta().range(RangeRequest::prefix(keys::EXPIRY_PREFIX)).await.unwrap();
    assert!(index.kvs.is_empty());
    engine.delete_object("kvs", "kept", &WriteConditions::default()).await.unwrap();
    engine.delete_bucket("kvs").await.unwrap();
}

/// The reaper is part of the engine as built: nothing has to start it afterwards.
#[tokio::test]
async fn an_engine_built_with_a_reaper_reaps_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let meta = EmbeddedStore::open(&dir.path().join("meta.redb"), EmbeddedOptions::default()).unwrap();
    let blobs = BlobStore::open(dir.path()).unwrap();
    let engine = Engine::builder(Metadata::single(Arc::new(meta)), blobs, EngineConfig::default())
        .reaper(Duration::from_millis(20))
        .build();
    engine.create_bucket("kvs", "me").await.unwrap();
    engine.put_object(put_req("short", b"v", Some(Duration::from_millis(50)))).await.unwrap();
    let record = keys::object("kvs", "short");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while engine.meta().get(&record).await.unwrap().is_some() {
        assert!(tokio::time::Instant::now() < deadline, "the built-in reaper never removed the record");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn reput_is_never_undone_by_an_old_ttl() {
    let (engine, _dir) = engine();
    engine.create_bucket("kvs", "me").await.unwrap();
    engine.put_object(put_req("a", b"old", Some(Duration::from_millis(200)))).await.unwrap();
    engine.put_object(put_req("a", b"new, no ttl", None)).await.unwrap();
    engine.put_object(put_req("b", b"old", Some(Duration::from_millis(200)))).await.unwrap();
    engine.put_object(put_req("b", b"new, longer", Some(Duration::from_secs(30)))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    engine.reap_due().await.unwrap();
    assert_eq!(get(&engine, "a").await.as_deref(), Some(&b"new, no ttl"[..]));
    assert_eq!(get(&engine, "b").await.as_deref(), Some(&b"new, longer"[..]));
}

#[tokio::test]
async fn locks_contend_expire_and_fence() {
    let (engine, _dir) = engine();
    engine.create_bucket("kvs", "me").await.unwrap();
    let ttl = Duration::from_millis(300);
    let first = engine.acquire_lock("kvs", "db", "alice", ttl, Duration::ZERO).await.unwrap();
    match engine.acquire_lock("kvs", "db", "bob", ttl, Duration::ZERO).await {
        Err(EngineError::LockContended { owner, .. }) => assert_eq!(owner, "alice"),
        other => panic!("expected LockContended, got {other:?}"),
    }
    assert_eq!(engine.lock_owner("kvs", "db").await.unwrap().unwrap().owner, "alice");

    // A fenced write with the current token passes.
    let mut req = put_req("data", b"by alice", None);
    req.conditions.fence = Some(Fence { lock: "db".into(), token: first.token });
    engine.put_object(req).await.unwrap();

    // Alice stalls; her lock expires and Bob takes it (waiting for it).
    let second = engine.acquire_lock("kvs", "db", "bob", ttl, Duration::from_secs(2)).await.unwrap();
    assert!(second.token > first.token, "tokens increase with every grant");
    let mut req = put_req("data", b"stale alice", None);
    req.conditions.fence = Some(Fence { lock: "db".into(), token: first.token });
    match engine.put_object(req).await {
        Err(EngineError::FenceRejected { current, .. }) => assert_eq!(current, second.token),
        other => panic!("expected FenceRejected, got {other:?}"),
    }
    assert_eq!(get(&engine, "data").await.as_deref(), Some(&b"by alice"[..]));
    assert!(matches!(engine.renew_lock("kvs", "db", first.token, ttl).await, Err(EngineError::LockNotHeld { .. })));
    assert!(matches!(engine.release_lock("kvs", "db", first.token).await, Err(EngineError::LockNotHeld { .. })));
    engine.renew_lock("kvs", "db", second.token, Duration::from_secs(10)).await.unwrap();
    engine.release_lock("kvs", "db", second.token).await.unwrap();
    assert!(engine.lock_owner("kvs", "db").await.unwrap().is_none());
    let third = engine.acquire_lock("kvs", "db", "carol", ttl, Duration::ZERO).await.unwrap();
    assert!(third.token > second.token, "tokens keep increasing after a release");

    for bad in ["", "has space", "new\nline", &"x".repeat(300)] {
        assert!(
            matches!(
                engine.acquire_lock("kvs", bad, "o", ttl, Duration::ZERO).await,
                Err(EngineError::InvalidArgument(_))
            ),
            "{bad:?}"
        );
    }
    assert!(engine.acquire_lock("kvs", "ok", "o", Duration::ZERO, Duration::ZERO).await.is_err());
}

#[tokio::test]
async fn put_transaction_contention_has_one_winner() {
    let (engine, _dir) = engine();
    engine.create_bucket("kvs", "me").await.unwrap();
    // Hold the key's lock as a slow writer would, then race ten transactions.
    let name = format!("{}counter", locks::KEY_LOCK_PREFIX);
    let held = engine.acquire_lock("kvs", &name, "slow-writer", Duration::from_secs(5), Duration::ZERO).await.unwrap();
    let attempts = (0..10).map(|i| {
        let engine = engine.clone();
        async move {
            engine
                .put_transaction(
                    put_req("counter", format!("{i}").as_bytes(), None),
                    Duration::ZERO,
                    Duration::from_secs(5),
                )
                .await
        }
    });
    let results = futures::future::join_all(attempts).await;
    assert!(results.iter().all(|r| matches!(r, Err(EngineError::LockContended { .. }))));
    engine.release_lock("kvs", &name, held.token).await.unwrap();
    engine.put_transaction(put_req("counter", b"won", None), Duration::ZERO, Duration::from_secs(5)).await.unwrap();
    assert_eq!(get(&engine, "counter").await.as_deref(), Some(&b"won"[..]));
    assert!(
        engine.lock_owner("kvs", &name).await.is_err() || engine.lock_owner("kvs", &name).await.unwrap().is_none(),
        "released after the write"
    );
}

#[tokio::test]
async fn watch_resumes_exactly() {
    let (engine, _dir) = engine();
    engine.create_bucket("kvs", "me").await.unwrap();
    let mut revisions = Vec::new();
    for i in 0..20 {
        revisions.push(engine.put_object(put_req(&format!("w/{i:02}"), b"x", None)).await.unwrap().revision);
    }
    engine.put_object(put_req("other/x", b"x", None)).await.unwrap();
    let del = engine.delete_object("kvs", "w/03", &WriteConditions::default()).await.unwrap();
    let mut from_ten = engine.watch("kvs", "w/", revisions[10]).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..10 {
        let c = next(&mut from_ten).await;
        assert_eq!(c.kind, ChangeKind::Put);
        seen.push(c.revision);
    }
    assert_eq!(seen, revisions[10..]);
    let c = next(&mut from_ten).await;
    assert_eq!(
        (c.kind, c.key.as_str(), c.revision),
        (ChangeKind::Delete, "w/03", del.revision),
        "other prefixes are filtered out"
    );
}

#[tokio::test]
async fn batches_are_all_or_nothing() {
    let (engine, _dir) = engine();
    engine.create_bucket("kvs", "me").await.unwrap();
    let a = engine.put_object(put_req("a", b"a0", None)).await.unwrap();
    let put = |key: &str, value: &[u8], if_revision| BatchOp::Put {
        key: key.into(),
        value: Bytes::copy_from_slice(value),
        if_revision,
        ttl: None,
    };
    let rev = engine
        .batch(
            "kvs",
            vec![
                put("a", b"a1", Some(a.revision)),
                put("b", &[7u8; 500], Some(0)),
                BatchOp::Delete { key: "zz".into(), if_revision: None },
            ],
        )
        .await
        .unwrap();
    assert_eq!(get(&engine, "a").await.as_deref(), Some(&b"a1"[..]));
    assert_eq!(get(&engine, "b").await.unwrap().len(), 500);
    // One stale condition: nothing applies.
    let err = engine
        .batch("kvs", vec![put("a", b"a2", Some(rev)), put("c", b"c", None), put("b", b"b2", Some(a.revision))])
        .await;
    assert!(matches!(err, Err(EngineError::BatchRevisionMismatch { current, .. }) if current == rev), "{err:?}");
    assert_eq!(get(&engine, "a").await.as_deref(), Some(&b"a1"[..]));
    assert_eq!(get(&engine, "c").await, None);
    let dup = engine.batch("kvs", vec![put("x", b"1", None), put("x", b"2", None)]).await;
    assert!(matches!(dup, Err(EngineError::InvalidArgument(_))));
}

/// In a versioned bucket a batch makes a new version of each key it puts and a delete marker
/// for each it deletes, all in one transaction; a stale condition applies nothing.
#[tokio::test]
async fn batches_in_a_versioned_bucket_make_versions_and_markers() {
    let (engine, _dir) = engine();
    engine.create_bucket("kvs", "me").await.unwrap();
    engine.set_versioning("kvs", record::Versioning::Enabled).await.unwrap();
    let a = engine.put_object(put_req("a", b"a0", None)).await.unwrap();
    engine.put_object(put_req("gone", b"g", None)).await.unwrap();
    let put = |key: &str, value: &[u8], if_revision| BatchOp::Put {
        key: key.into(),
        value: Bytes::copy_from_slice(value),
        if_revision,
        ttl: None,
    };
    let ops = vec![
        put("a", b"a1", Some(a.revision)),
        put("b", &[7u8; 500], Some(0)),
        BatchOp::Delete { key: "gone".into(), if_revision: None },
    ];
    let rev = engine.batch("kvs", ops).await.unwrap();
    assert_eq!(get(&engine, "a").await.as_deref(), Some(&b"a1"[..]));
    assert_eq!(get(&engine, "b").await.unwrap().len(), 500);
    let gone = engine.get_object(GetRequest { bucket: "kvs".into(), key: "gone".into(), ..Default::default() }).await;
    assert!(matches!(gone, Err(EngineError::DeleteMarker { .. })), "a batch delete leaves a marker");
    let versions = |engine: Engine| async move {
        let all = versions::VersionListRequest { max_keys: 100, ..Default::default() };
        let page = engine.list_versions("kvs", &all).await.unwrap();
        page.versions.into_iter().map(|v| (v.key, v.is_latest, v.version.object.is_none())).collect::<Vec<_>>()
    };
    let expected = vec![
        ("a".to_string(), true, false),
        ("a".to_string(), false, false),
        ("b".to_string(), true, false),
        ("gone".to_string(), true, true),
        ("gone".to_string(), false, false),
    ];
    assert_eq!(versions(engine.clone()).await, expected);
    let old = a.record.version.as_ref().unwrap().id().to_string();
    let req = GetRequest { bucket: "kvs".into(), key: "a".into(), version_id: Some(old), ..Default::default() };
    let chunks: Vec<Bytes> =
        futures::TryStreamExt::try_collect(engine.get_object(req).await.unwrap().body).await.unwrap();
    assert_eq!(chunks.concat(), b"a0", "the batch kept the version it replaced");

    let stale = engine.batch("kvs", vec![put("c", b"c", None), put("a", b"a2", Some(a.revision))]).await;
    assert!(matches!(stale, Err(EngineError::BatchRevisionMismatch { current, .. }) if current == rev), "{stale:?}");
    assert_eq!(versions(engine.clone()).await, expected, "nothing applied");
}

#[tokio::test]
async fn if_revision_compare_and_set_counts_exactly() {
    let (engine, _dir) = engine();
    engine.create_bucket("kvs", "me").await.unwrap();
    engine.put_object(put_req("n", b"0", None)).await.unwrap();
    let workers = (0..8).map(|_| {
        let engine = engine.clone();
        async move {
            for _ in 0..25 {
                loop {
                    let cur = engine
                        .get_object(GetRequest { bucket: "kvs".into(), key: "n".into(), ..Default::default() })
                        .await
                        .unwrap();
                    let rev = cur.revision;
                    let chunks: Vec<Bytes> = futures::TryStreamExt::try_collect(cur.body).await.unwrap();
                    let n: u64 = String::from_utf8(chunks.concat()).unwrap().parse().unwrap();
                    let mut req = put_req("n", (n + 1).to_string().as_bytes(), None);
                    req.conditions.if_revision = Some(rev);
                    match engine.put_object(req).await {
                        Ok(_) => break,
                        Err(EngineError::RevisionMismatch { current, .. }) => {
                            assert!(current > rev)
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
            }
        }
    });
    futures::future::join_all(workers).await;
    assert_eq!(get(&engine, "n").await.as_deref(), Some(&b"200"[..]));
}

/// Rewrites a stored record as if it had been written `days` days ago.
async fn age_record(engine: &Engine, key: &[u8], field: &str, days: i64) {
    use meridian_meta::{Op, Txn};
    let kv = engine.meta().get(key).await.unwrap().unwrap();
    let mut value: serde_json::Value = serde_json::from_slice(&kv.value).unwrap();
    let old = value[field].as_i64().unwrap();
    value[field] = serde_json::json!(old - days * 86_400_000);
    let mut txn = Txn::new().then(Op::put(Bytes::copy_from_slice(key), serde_json::to_vec(&value).unwrap()));
    // An inline object's bytes must keep the record's revision.
    if let Some((bucket, object)) = meridian_engine::keys::parse_object_key(key) {
        let inline = meridian_engine::keys::inline(bucket, object);
        if let Some(data) = engine.meta().get(&inline).await.unwrap() {
            txn = txn.then(Op::put(inline, data.value));
        }
    }
    engine.meta().txn(txn).await.unwrap();
}

#[tokio::test]
async fn lifecycle_rules_expire_objects_and_abort_uploads() {
    use meridian_engine::lifecycle::LifecycleRule;
    let (engine, _dir) = engine();
    engine.create_bucket("kvs", "me").await.unwrap();
    engine.put_object(put_req("logs/old", b"old", None)).await.unwrap();
    engine.put_object(put_req("keep/old", b"old", None)).await.unwrap();
    age_record(&engine, &meridian_engine::keys::object("kvs", "logs/old"), "modified_ms", 3).await;
    age_record(&engine, &meridian_engine::keys::object("kvs", "keep/old"), "modified_ms", 3).await;
    let upload = engine
        .create_multipart_upload("kvs", "logs/upload", ObjectHeaders::default(), None, false, None)
        .await
        .unwrap();
    age_record(&engine, &meridian_engine::keys::upload("kvs", "logs/upload", &upload.upload_id), "initiated_ms", 3)
        .await;

    let rule = LifecycleRule {
        id: "logs".into(),
        prefix: "logs/".into(),
        enabled: true,
        expiration_days: Some(2),
        abort_incomplete_days: Some(1),
        ..Default::default()
    };
    engine.set_lifecycle("kvs", vec![rule.clone()]).await.unwrap();
    assert_eq!(engine.lifecycle("kvs").await.unwrap(), vec![rule]);
    // Existing objects under the prefix that are older than the rule are gone at once.
    assert_eq!(get(&engine, "logs/old").await, None);
    assert_eq!(get(&engine, "keep/old").await.as_deref(), Some(&b"old"[..]), "other prefixes are untouched");
    // New objects get their expiry from the rule.
    let fresh = engine.put_object(put_req("logs/new", b"new", None)).await.unwrap();
    let expires = fresh.record.expires_at_ms.expect("a rule gives new objects an expiry");
    assert!((expires - fresh.record.modified_ms - 2 * 86_400_000).abs() < 1000);
    // The reaper aborts the stale upload and removes the expired object.
    engine.reap_due().await.unwrap();
    assert!(matches!(
        engine.list_parts("kvs", "logs/upload", &upload.upload_id, 0, 10).await,
        Err(EngineError::NoSuchUpload)
    ));
    assert_eq!(listed(&engine).await, ["keep/old", "logs/new"]);
    // Rules can be removed.
    engine.set_lifecycle("kvs", Vec::new()).await.unwrap();
    assert!(engine.lifecycle("kvs").await.unwrap().is_empty());
}

async fn next_object_event(feed: &mut tokio::sync::broadcast::Receiver<ObjectEvent>) -> ObjectChange {
    match tokio::time::timeout(Duration::from_secs(5), feed.recv()).await.expect("event in time").expect("received") {
        ObjectEvent::Changed(change) => change,
        other => panic!("expected a change, got {other:?}"),
    }
}

#[tokio::test]
async fn one_node_announces_every_object_change_on_commit_and_saves_its_cursor() {
    let (engine, _dir) = engine();
    engine.create_bucket("kvs", "me").await.unwrap();
    let mut feed = engine.subscribe_object_changes();
    let first = engine.put_object(put_req("a", &[1; 500], None)).await.unwrap();
    let second = engine.put_object(put_req("a", b"v2", None)).await.unwrap();
    let deleted = engine.delete_object("kvs", "a", &WriteConditions::default()).await.unwrap();
    engine.put_object(put_req("short", b"lived", Some(Duration::from_millis(10)))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    engine.reap_due().await.unwrap();

    let expected = [
        ("a", first.revision, ChangeKind::Put),
        ("a", second.revision, ChangeKind::Put),
        ("a", deleted.revision, ChangeKind::Delete),
    ];
    for (key, revision, kind) in expected {
        let change = next_object_event(&mut feed).await;
        assert_eq!(
            (change.bucket.as_str(), change.key.as_str(), change.revision, change.kind),
            ("kvs", key, revision, kind)
        );
    }
    let written = next_object_event(&mut feed).await;
    assert_eq!((written.key.as_str(), written.kind), ("short", ChangeKind::Put));
    let expired = next_object_event(&mut feed).await;
    assert_eq!((expired.key.as_str(), expired.kind), ("short", ChangeKind::Expire));
    assert!(expired.revision > written.revision);

    // The cursor is saved within a second or two, at or past the last change.
    let cursor = keys::change_cursor(&engine.config().node.node);
    let mut saved = 0;
    for _ in 0..40 {
        if let Some(kv) = engine.meta().get(&cursor).await.unwrap() {
            saved = String::from_utf8_lossy(&kv.value).parse().unwrap();
            if saved >= expired.revision {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(saved >= expired.revision, "cursor {saved} is behind the last change {}", expired.revision);

    // Forgetting the node forgets its cursor too.
    let node = cluster::NodeRecord { id: engine.config().node.node.clone(), ..Default::default() };
    engine.publish_node(&node).await.unwrap();
    engine.forget_node(&node.id, true).await.unwrap();
    assert!(engine.meta().get(&cursor).await.unwrap().is_none(), "the cursor went with the node record");
}
