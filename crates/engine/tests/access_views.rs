//! Access checks on a node whose local metadata view lags: a revoked key must not be honoured
//! from a stale replica, admin changes report replicas that have not applied them, and object
//! changes are announced to subscribers only once the local view reflects them.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use meridian_blob::BlobStore;
use meridian_engine::cluster::NodeRecord;
use meridian_engine::*;
use meridian_meta::embedded::{EmbeddedOptions, EmbeddedStore};
use meridian_meta::{MetaStore, Op, RangeRequest, Revision, Txn};

/// Strong reads from the real store; local reads from a replica frozen at some earlier state.
struct LaggingViews {
    strong: Arc<dyn MetaStore>,
    replica: Arc<dyn MetaStore>,
    replica_caught_up: AtomicBool,
}

#[async_trait::async_trait]
impl ReadViews for LaggingViews {
    fn view(&self, consistency: Consistency) -> Arc<dyn MetaStore> {
        match consistency {
            Consistency::Strong => Arc::clone(&self.strong),
            _ => Arc::clone(&self.replica),
        }
    }

    async fn wait_applied(&self, _revision: Revision, _timeout: Duration) -> Result<(), String> {
        if self.replica_caught_up.load(Ordering::SeqCst) { Ok(()) } else { Err("replica-c (behind)".into()) }
    }
}

fn store(dir: &std::path::Path, name: &str) -> Arc<dyn MetaStore> {
    Arc::new(EmbeddedStore::open(&dir.join(name), EmbeddedOptions::default()).unwrap())
}

/// Copies every key of `from` into `to` (the replica catching up once).
async fn replicate(from: &Arc<dyn MetaStore>, to: &Arc<dyn MetaStore>) {
    let all = from.range(RangeRequest::prefix(bytes::Bytes::new())).await.unwrap();
    let mut txn = Txn::new();
    for kv in all.kvs {
        txn = txn.then(Op::put(kv.key, kv.value));
    }
    to.txn(txn).await.unwrap();
}

fn node_record() -> NodeRecord {
    NodeRecord {
        id: "node-c".into(),
        region: "region-c".into(),
        advertise_url: "http://127.0.0.1:1".into(),
        web_url: None,
        started_ms: now_ms(),
        heartbeat_ms: now_ms(),
        revision: 0,
        cache: Default::default(),
        version: "test".into(),
        lag_ms: None,
        clock_offset_ms: None,
    }
}

#[tokio::test]
async fn a_cut_off_node_does_not_honour_a_revoked_key_from_its_stale_view() {
    let dir = tempfile::tempdir().unwrap();
    let (strong, replica) = (store(dir.path(), "meta.redb"), store(dir.path(), "replica.redb"));
    let views = Arc::new(LaggingViews {
        strong: Arc::clone(&strong),
        replica: Arc::clone(&replica),
        replica_caught_up: AtomicBool::new(true),
    });
    let metadata = Metadata::replicated(Arc::clone(&strong), views.clone());
    let engine = Engine::builder(metadata, BlobStore::open(dir.path()).unwrap(), EngineConfig::default()).build();

    let (_, credential) = engine.create_access_key("app", false).await.unwrap();
    replicate(&strong, &replica).await;
    views.replica_caught_up.store(false, Ordering::SeqCst);

    // The delete commits, but one replica has not applied it: the admin call says so.
    let err = engine.delete_access_key("app").await.unwrap_err();
    assert!(matches!(err, EngineError::Unavailable(_)), "{err}");
    assert!(err.to_string().contains("replica-c (behind)"), "{err}");

    // This node has not committed anything lately (no heartbeat got through): its view may be
    // arbitrarily old, so the credential is checked strongly and is gone.
    assert!(engine.credential(&credential.access_key_id).await.unwrap().is_none());

    // Once its heartbeat commits, the node trusts its local view again for a while — and the
    // stale replica still holds the key, which is exactly what the check above refused to use.
    engine.publish_node(&node_record()).await.unwrap();
    assert!(engine.credential(&credential.access_key_id).await.unwrap().is_some());
}

#[tokio::test]
async fn admin_changes_return_once_every_replica_has_applied_them() {
    let dir = tempfile::tempdir().unwrap();
    let (strong, replica) = (store(dir.path(), "meta.redb"), store(dir.path(), "replica.redb"));
    let views =
        Arc::new(LaggingViews { strong: Arc::clone(&strong), replica, replica_caught_up: AtomicBool::new(true) });
    let metadata = Metadata::replicated(strong, views.clone());
    let engine = Engine::builder(metadata, BlobStore::open(dir.path()).unwrap(), EngineConfig::default()).build();
    engine.create_access_key("app", false).await.unwrap();
    engine.create_bucket("data", "app").await.unwrap();
    engine.set_grant("data", "app", iam::Grant { read: true, ..Default::default() }, true).await.unwrap();
    engine.rotate_access_key("app", Duration::from_secs(60)).await.unwrap();

    views.replica_caught_up.store(false, Ordering::SeqCst);
    let revoke = engine.set_grant("data", "app", iam::Grant { read: true, ..Default::default() }, false).await;
    assert!(matches!(revoke, Err(EngineError::Unavailable(_))), "{revoke:?}");
    assert!(matches!(engine.set_public_read("data", false).await, Err(EngineError::Unavailable(_))));
    assert!(matches!(engine.rotate_access_key("app", Duration::from_secs(60)).await, Err(EngineError::Unavailable(_))));
}

/// A replica that reports having applied a revision only once the test says so, the way an
/// etcd member serving at-least reads holds them until it has caught up.
struct GatedReplica {
    replica: Arc<dyn MetaStore>,
    applied: Arc<std::sync::atomic::AtomicU64>,
    floor: Revision,
}

#[async_trait::async_trait]
impl MetaStore for GatedReplica {
    async fn range(&self, req: RangeRequest) -> meridian_meta::MetaResult<meridian_meta::RangeResponse> {
        self.replica.range(req).await
    }

    async fn get_many(
        &self,
        keys: &[bytes::Bytes],
    ) -> meridian_meta::MetaResult<(Vec<Option<meridian_meta::KeyValue>>, Revision)> {
        self.replica.get_many(keys).await
    }

    async fn txn(&self, txn: Txn) -> meridian_meta::MetaResult<meridian_meta::TxnResponse> {
        self.replica.txn(txn).await
    }

    async fn current_revision(&self) -> meridian_meta::MetaResult<Revision> {
        for _ in 0..1000 {
            let applied = self.applied.load(Ordering::SeqCst);
            if applied >= self.floor {
                return Ok(applied);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(meridian_meta::MetaError::Unavailable("the replica never caught up".into()))
    }

    async fn watch(
        &self,
        range: RangeRequest,
        from: Revision,
    ) -> meridian_meta::MetaResult<meridian_meta::WatchStream> {
        self.replica.watch(range, from).await
    }
}

struct GatedViews {
    strong: Arc<dyn MetaStore>,
    replica: Arc<dyn MetaStore>,
    applied: Arc<std::sync::atomic::AtomicU64>,
}

#[async_trait::async_trait]
impl ReadViews for GatedViews {
    fn view(&self, consistency: Consistency) -> Arc<dyn MetaStore> {
        match consistency {
            Consistency::Strong => Arc::clone(&self.strong),
            Consistency::Local => Arc::clone(&self.replica),
            Consistency::AtLeast(floor) => {
                Arc::new(GatedReplica { replica: Arc::clone(&self.replica), applied: Arc::clone(&self.applied), floor })
            }
        }
    }

    async fn wait_applied(&self, _revision: Revision, _timeout: Duration) -> Result<(), String> {
        Ok(())
    }
}

async fn read_local(engine: &Engine, key: &str) -> Vec<u8> {
    let request =
        GetRequest { bucket: "data".into(), key: key.into(), consistency: Consistency::Local, ..Default::default() };
    let out = engine.get_object(request).await.unwrap();
    let chunks: Vec<bytes::Bytes> = futures::TryStreamExt::try_collect(out.body).await.unwrap();
    chunks.concat()
}

fn put_request(key: &str, value: &'static [u8]) -> PutRequest {
    PutRequest {
        bucket: "data".into(),
        key: key.into(),
        body: body_from_bytes(bytes::Bytes::from_static(value)),
        headers: Default::default(),
        integrity: Integrity::default(),
        conditions: Default::default(),
        expires_at_ms: None,
        protection: None,
        form_upload: false,
    }
}

#[tokio::test]
async fn an_object_change_is_announced_only_once_the_local_view_reflects_it() {
    let dir = tempfile::tempdir().unwrap();
    let (strong, replica) = (store(dir.path(), "meta.redb"), store(dir.path(), "replica.redb"));
    let applied = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let views =
        Arc::new(GatedViews { strong: Arc::clone(&strong), replica: Arc::clone(&replica), applied: applied.clone() });
    let metadata = Metadata::replicated(Arc::clone(&strong), views);
    let engine = Engine::builder(metadata, BlobStore::open(dir.path()).unwrap(), EngineConfig::default()).build();
    engine.create_bucket("data", "me").await.unwrap();
    engine.put_object(put_request("page", b"v1")).await.unwrap();
    replicate(&strong, &replica).await;
    applied.store(strong.current_revision().await.unwrap(), Ordering::SeqCst);

    let mut feed = engine.subscribe_object_changes();
    let written = engine.put_object(put_request("page", b"v2")).await.unwrap();
    // The local view still shows v1: no event yet.
    let early = tokio::time::timeout(Duration::from_millis(500), feed.recv()).await;
    assert!(early.is_err(), "announced before the local view had the change: {early:?}");
    assert_eq!(read_local(&engine, "page").await, b"v1");

    replicate(&strong, &replica).await;
    applied.store(written.revision, Ordering::SeqCst);
    let event = tokio::time::timeout(Duration::from_secs(5), feed.recv()).await.unwrap().unwrap();
    let ObjectEvent::Changed(change) = event else { panic!("expected a change, got {event:?}") };
    assert_eq!((change.key.as_str(), change.revision), ("page", written.revision));
    assert_eq!(read_local(&engine, "page").await, b"v2", "a local read after the event sees the change");
}
