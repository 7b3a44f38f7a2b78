//! Event notifications on the engine: events are written by the transaction of the change they
//! describe, and two nodes over one metadata store never both deliver a stream. Real embedded
//! metadata store and blob store on a temp dir; the webhook is an in-process recorder.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use meridian_blob::BlobStore;
use meridian_engine::conditions::WriteConditions;
use meridian_engine::notify::{NotificationConfig, NotificationRule, WebhookSender, Webhooks};
use meridian_engine::record::{Holder, ObjectHeaders};
use meridian_engine::*;
use meridian_meta::RangeRequest;
use meridian_meta::embedded::{EmbeddedOptions, EmbeddedStore};

/// Records every POST (which node sent it, and its records) unless told to fail.
#[derive(Default)]
struct Recorder {
    failing: AtomicBool,
    posts: Mutex<Vec<(String, serde_json::Value)>>,
}

struct NodeSender {
    node: String,
    recorder: Arc<Recorder>,
}

#[async_trait::async_trait]
impl WebhookSender for NodeSender {
    async fn post(&self, _target: &str, _url: &str, body: Bytes) -> Result<(), String> {
        if self.recorder.failing.load(Ordering::SeqCst) {
            return Err("target down".into());
        }
        let batch: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let mut posts = self.recorder.posts.lock().unwrap();
        for record in batch["Records"].as_array().unwrap() {
            posts.push((self.node.clone(), record.clone()));
        }
        Ok(())
    }
}

fn node(meta: &Arc<EmbeddedStore>, dir: &std::path::Path, id: &str, recorder: &Arc<Recorder>) -> Engine {
    let blobs = BlobStore::open(dir).unwrap();
    let config = EngineConfig {
        node: Holder { node: id.into(), region: "local".into(), store: None },
        ..EngineConfig::default()
    };
    let sender = Arc::new(NodeSender { node: id.into(), recorder: recorder.clone() });
    let targets = BTreeMap::from([("hook".to_string(), "http://127.0.0.1:1/".to_string())]);
    let meta: Arc<dyn meridian_meta::MetaStore> = meta.clone();
    Engine::builder(Metadata::single(meta), blobs, config).webhooks(Webhooks { targets, sender }).build()
}

fn store(dir: &std::path::Path) -> Arc<EmbeddedStore> {
    Arc::new(EmbeddedStore::open(&dir.join("meta.redb"), EmbeddedOptions::default()).unwrap())
}

fn put(bucket: &str, key: &str, value: &'static [u8]) -> PutRequest {
    PutRequest {
        bucket: bucket.into(),
        key: key.into(),
        body: body_from_bytes(Bytes::from_static(value)),
        headers: ObjectHeaders::default(),
        integrity: Integrity::default(),
        conditions: WriteConditions::default(),
        expires_at_ms: None,
        protection: None,
        form_upload: false,
    }
}

async fn watch_everything(engine: &Engine, bucket: &str, prefix: Option<&str>) {
    engine.create_bucket(bucket, "admin").await.unwrap();
    let rule = NotificationRule {
        target: "hook".into(),
        events: vec!["s3:ObjectCreated:*".into(), "s3:ObjectRemoved:*".into()],
        prefix: prefix.map(Into::into),
        ..Default::default()
    };
    engine.set_notification(bucket, Some(NotificationConfig { rules: vec![rule] })).await.unwrap();
}

/// Every queued event of the bucket, parsed, with its mod revision.
async fn queued_events(engine: &Engine, bucket: &str) -> Vec<(serde_json::Value, u64)> {
    let range = RangeRequest::prefix(format!("d/{bucket}/hook/"));
    let kvs = engine.meta().range(range).await.unwrap().kvs;
    kvs.iter().map(|kv| (serde_json::from_slice(&kv.value).unwrap(), kv.mod_revision)).collect()
}

/// `(key, mod revision)` of every queued event of the bucket.
async fn queued(engine: &Engine, bucket: &str) -> Vec<(String, u64)> {
    let events = queued_events(engine, bucket).await;
    events.into_iter().map(|(event, revision)| (event["key"].as_str().unwrap().to_string(), revision)).collect()
}

/// One node whose webhook target fails every delivery, so its events stay queued until the
/// test sets `recorder.failing` back to false.
fn node_holding_events(dir: &std::path::Path) -> (Engine, Arc<Recorder>) {
    let recorder = Arc::new(Recorder::default());
    recorder.failing.store(true, Ordering::SeqCst);
    (node(&store(dir), dir, "n1", &recorder), recorder)
}

#[tokio::test]
async fn events_are_written_by_the_transaction_of_their_change() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, recorder) = node_holding_events(dir.path());
    watch_everything(&engine, "bkt", Some("in/")).await;

    let first = engine.put_object(put("bkt", "in/a", b"one")).await.unwrap();
    engine.put_object(put("bkt", "out/a", b"not watched")).await.unwrap();
    let deleted = engine.delete_object("bkt", "in/a", &WriteConditions::default()).await.unwrap();
    let missing = engine.delete_object("bkt", "in/never", &WriteConditions::default()).await.unwrap();
    assert!(!missing.existed);
    let ops = vec![
        BatchOp::Put { key: "in/b".into(), value: Bytes::from_static(b"b"), if_revision: None, ttl: None },
        BatchOp::Put { key: "out/b".into(), value: Bytes::from_static(b"b"), if_revision: None, ttl: None },
    ];
    let batch = engine.batch("bkt", ops).await.unwrap();

    let mut events = queued(&engine, "bkt").await;
    events.sort_by_key(|(_, revision)| *revision);
    let want = [("in/a", first.revision), ("in/a", deleted.revision), ("in/b", batch)];
    let want: Vec<(String, u64)> = want.iter().map(|(k, r)| (k.to_string(), *r)).collect();
    assert_eq!(events, want, "one event per matching change, at the change's own revision");
    let backlog = engine.queued_events().await.unwrap();
    assert_eq!(backlog.get(&("bkt".to_string(), "hook".to_string())), Some(&3));

    // Once the target answers, everything is delivered in revision order and dequeued.
    recorder.failing.store(false, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !queued(&engine, "bkt").await.is_empty() {
        assert!(Instant::now() < deadline, "events were never delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let posts = recorder.posts.lock().unwrap().clone();
    let revisions: Vec<u64> = posts.iter().map(|(_, r)| r["meridian"]["revision"].as_u64().unwrap()).collect();
    assert_eq!(revisions, want.iter().map(|(_, r)| *r).collect::<Vec<_>>());
}

#[tokio::test]
async fn refusals_leave_the_configuration_alone() {
    let dir = tempfile::tempdir().unwrap();
    let engine = node(&store(dir.path()), dir.path(), "n1", &Arc::default());
    watch_everything(&engine, "bkt", None).await;
    let unknown = NotificationRule {
        target: "elsewhere".into(),
        events: vec!["s3:ObjectCreated:*".into()],
        ..Default::default()
    };
    let refused = engine.set_notification("bkt", Some(NotificationConfig { rules: vec![unknown] })).await;
    assert!(matches!(refused, Err(EngineError::InvalidArgument(m)) if m.contains("Unable to validate")));
    assert_eq!(engine.notification("bkt").await.unwrap().unwrap().rules[0].target, "hook");
    engine.set_notification("bkt", Some(NotificationConfig::default())).await.unwrap();
    assert_eq!(engine.notification("bkt").await.unwrap(), None, "no rules is no configuration");
}

#[tokio::test]
async fn one_node_at_a_time_delivers_a_stream() {
    let dir = tempfile::tempdir().unwrap();
    let meta = store(dir.path());
    let recorder = Arc::new(Recorder::default());
    let first = node(&meta, &dir.path().join("n1"), "n1", &recorder);
    let second = node(&meta, &dir.path().join("n2"), "n2", &recorder);
    watch_everything(&first, "shared", None).await;
    let mut revisions = Vec::new();
    for i in 0..40 {
        let writer = if i % 2 == 0 { &first } else { &second };
        revisions.push(writer.put_object(put("shared", &format!("k{}", i % 5), b"v")).await.unwrap().revision);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while recorder.posts.lock().unwrap().len() < revisions.len() {
        assert!(Instant::now() < deadline, "events were never delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let posts = recorder.posts.lock().unwrap().clone();
    let delivered: Vec<u64> = posts.iter().map(|(_, r)| r["meridian"]["revision"].as_u64().unwrap()).collect();
    assert_eq!(delivered, revisions, "each event once, in commit order");
    let senders: std::collections::BTreeSet<&str> = posts.iter().map(|(node, _)| node.as_str()).collect();
    assert_eq!(senders.len(), 1, "both nodes delivered: {senders:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_of_one_key_each_get_their_event() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, _recorder) = node_holding_events(dir.path());
    watch_everything(&engine, "hot", None).await;
    let writes = (0..32).map(|_| {
        let engine = engine.clone();
        tokio::spawn(async move { engine.put_object(put("hot", "key", b"same key")).await.unwrap().revision })
    });
    let mut revisions: Vec<u64> = futures::future::join_all(writes).await.into_iter().map(Result::unwrap).collect();
    revisions.sort();
    let events: Vec<u64> = {
        let mut events: Vec<u64> = queued(&engine, "hot").await.into_iter().map(|(_, revision)| revision).collect();
        events.sort();
        events
    };
    assert_eq!(events, revisions, "one event per acknowledged write, at its revision");
}

/// A form upload (POST object) is `ObjectCreated:Post`, which a rule may ask for alone.
#[tokio::test]
async fn form_uploads_are_post_events() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, _recorder) = node_holding_events(dir.path());
    engine.create_bucket("forms", "admin").await.unwrap();
    let rule =
        NotificationRule { target: "hook".into(), events: vec!["s3:ObjectCreated:Post".into()], ..Default::default() };
    engine.set_notification("forms", Some(NotificationConfig { rules: vec![rule] })).await.unwrap();

    engine.put_object(put("forms", "by-put", b"put")).await.unwrap();
    let posted = engine.put_object(PutRequest { form_upload: true, ..put("forms", "by-form", b"form") }).await.unwrap();

    let events = queued_events(&engine, "forms").await;
    assert_eq!(events.len(), 1, "only the form upload matches: {events:?}");
    assert_eq!(events[0].0["key"], "by-form");
    assert_eq!(events[0].0["event"], "ObjectCreated:Post");
    assert_eq!(events[0].1, posted.revision);
}

/// Lifecycle's removals of versions (a noncurrent version expired, a delete marker left alone)
/// are `LifecycleExpiration:Delete` events, as in S3, not a client's `ObjectRemoved:Delete`.
#[tokio::test]
async fn lifecycle_removals_of_versions_are_lifecycle_events() {
    use meridian_engine::lifecycle::LifecycleRule;
    use meridian_engine::record::Versioning;
    let dir = tempfile::tempdir().unwrap();
    let (engine, _recorder) = node_holding_events(dir.path());
    engine.create_bucket("ver", "admin").await.unwrap();
    engine.set_versioning("ver", Versioning::Enabled).await.unwrap();
    let rule = NotificationRule {
        target: "hook".into(),
        events: vec!["s3:LifecycleExpiration:*".into(), "s3:ObjectRemoved:Delete".into()],
        ..Default::default()
    };
    engine.set_notification("ver", Some(NotificationConfig { rules: vec![rule] })).await.unwrap();
    engine.put_object(put("ver", "k", b"old")).await.unwrap();
    engine.put_object(put("ver", "k", b"new")).await.unwrap();
    let gone = engine.put_object(put("ver", "gone", b"x")).await.unwrap();
    engine.delete_object("ver", "gone", &WriteConditions::default()).await.unwrap();
    // Its only object version deleted by a client: the marker is left alone, for lifecycle.
    let gone = gone.record.version.as_ref().unwrap().id().to_string();
    engine.delete_version("ver", "gone", &gone).await.unwrap();
    let rule = LifecycleRule {
        id: "versions".into(),
        enabled: true,
        noncurrent_days: Some(1),
        expired_object_delete_marker: true,
        ..Default::default()
    };
    engine.set_lifecycle("ver", vec![rule]).await.unwrap();
    let far = meridian_engine::now_ms() + 30 * 86_400_000;
    // Setting the rules removed the lone marker already; this expires the noncurrent version.
    let removed = engine.expire_versions("ver", far).await.unwrap();
    let events: Vec<(String, String)> = queued_events(&engine, "ver")
        .await
        .iter()
        .map(|(event, _)| (event["event"].as_str().unwrap().to_string(), event["key"].as_str().unwrap().to_string()))
        .collect();
    let expected =
        [("ObjectRemoved:Delete", "gone"), ("LifecycleExpiration:Delete", "gone"), ("LifecycleExpiration:Delete", "k")];
    let mut sorted = events.clone();
    sorted.sort();
    let mut wanted: Vec<(String, String)> = expected.iter().map(|(e, k)| (e.to_string(), k.to_string())).collect();
    wanted.sort();
    assert_eq!(sorted, wanted, "{events:?}");
    assert_eq!(removed, 1);
}
