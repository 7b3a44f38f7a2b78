#![allow(clippy::unwrap_used)]
//! etcd-specific behaviour: compaction, namespaces, learners, limits, unreachable clusters.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use meridian_meta::{MetaError, MetaStore, Op, RangeRequest, Txn, conformance};
use meridian_meta_etcd::testing::EtcdCluster;
use meridian_meta_etcd::{EtcdOptions, EtcdStore, ReadMode};

async fn connect(cluster: &EtcdCluster, namespace: &str) -> EtcdStore {
    EtcdStore::connect(EtcdOptions::new(cluster.client_endpoints()).namespace(namespace.to_string())).await.unwrap()
}

async fn put(store: &EtcdStore, key: &str, value: &str) -> u64 {
    store.txn(Txn::new().then(Op::put(key.to_string(), value.to_string()))).await.unwrap().revision
}

#[tokio::test]
async fn a_watch_from_a_compacted_revision_fails_with_compacted() {
    let cluster = EtcdCluster::start(1);
    let store = connect(&cluster, "/compaction/").await;
    let r1 = put(&store, "k/1", "a").await;
    put(&store, "k/2", "b").await;
    let r3 = put(&store, "k/3", "c").await;
    put(&store, "k/4", "d").await;
    store.compact(r3).await.unwrap();
    // Compacting again, or below the compaction point, is fine.
    store.compact(r3).await.unwrap();
    store.compact(r1).await.unwrap();

    let result = store.watch(RangeRequest::prefix("k/"), r1).await;
    match &result {
        Err(MetaError::Compacted { requested, oldest }) => {
            assert_eq!((*requested, *oldest), (r1, r3));
        }
        Err(other) => panic!("expected Compacted, got {other}"),
        Ok(_) => panic!("expected Compacted, got a stream"),
    }
    conformance::assert_compacted(result);

    // The oldest revision left is still watchable, and reads are unaffected.
    let mut stream = store.watch(RangeRequest::prefix("k/"), r3).await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(10), stream.next()).await.unwrap().unwrap().unwrap();
    assert_eq!((event.kv.key, event.kv.mod_revision), (Bytes::from("k/3"), r3));
    assert_eq!(store.range(RangeRequest::prefix("k/")).await.unwrap().kvs.len(), 4);
}

#[tokio::test]
async fn stores_with_different_namespaces_do_not_see_each_other() {
    let cluster = EtcdCluster::start(1);
    let a = connect(&cluster, "/tenant-a/").await;
    let b = connect(&cluster, "/tenant-b/").await;
    let mut watch_b = b.watch(RangeRequest::prefix(""), 0).await.unwrap();

    put(&a, "shared/key", "from a").await;
    put(&a, "only-a", "1").await;
    let rb = put(&b, "shared/key", "from b").await;

    assert_eq!(a.get(b"shared/key").await.unwrap().unwrap().value, Bytes::from("from a"));
    assert_eq!(b.get(b"shared/key").await.unwrap().unwrap().value, Bytes::from("from b"));
    assert!(b.get(b"only-a").await.unwrap().is_none());
    let keys = |r: meridian_meta::RangeResponse| -> Vec<Bytes> { r.kvs.into_iter().map(|kv| kv.key).collect() };
    assert_eq!(
        keys(a.range(RangeRequest::prefix("")).await.unwrap()),
        vec![Bytes::from("only-a"), Bytes::from("shared/key")],
        "keys come back without the namespace prefix"
    );
    assert_eq!(keys(b.range(RangeRequest::prefix("")).await.unwrap()), vec![Bytes::from("shared/key")]);
    // Deleting in one namespace leaves the other alone.
    a.txn(Txn::new().then(Op::delete("shared/key"))).await.unwrap();
    assert!(b.get(b"shared/key").await.unwrap().is_some());

    // b's watch sees only b's write.
    let event = tokio::time::timeout(Duration::from_secs(10), watch_b.next()).await.unwrap().unwrap().unwrap();
    assert_eq!((event.kv.key, event.kv.mod_revision), (Bytes::from("shared/key"), rb));
    put(&b, "second", "x").await;
    let event = tokio::time::timeout(Duration::from_secs(10), watch_b.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(event.kv.key, Bytes::from("second"), "a's delete is invisible to b");

    // Revisions are the cluster's, shared by every namespace.
    assert!(a.current_revision().await.unwrap() == b.current_revision().await.unwrap());
}

/// With serializable reads and a learner listed first, reads are answered by the learner
/// itself: they keep working with every voting member dead, while linearizable reads and
/// writes (which need the leader) fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serializable_reads_are_served_by_the_local_learner() {
    let mut cluster = EtcdCluster::start(3);
    let learner = cluster.add_learner();
    let mut endpoints = vec![cluster.client_endpoint(learner)];
    endpoints.extend((0..3).map(|i| cluster.client_endpoint(i)));
    let local = EtcdStore::connect(
        EtcdOptions::new(endpoints)
            .namespace("/learner/")
            .read_mode(ReadMode::Serializable)
            .request_timeout(Duration::from_secs(2)),
    )
    .await
    .unwrap();
    let written = put(&local, "k", "v").await;
    assert_eq!(local.get(b"k").await.unwrap().unwrap().mod_revision, written, "a node reads its own writes");

    let status = local.member_status().await;
    assert_eq!(status.len(), 4);
    assert!(status[0].is_learner && !status[1].is_learner);
    assert!(status.iter().all(|s| s.errors.is_empty() && s.leader != 0));

    for voter in 0..3 {
        cluster.kill(voter);
    }
    // The learner still answers from its own copy.
    let kv = local.get(b"k").await.unwrap().unwrap();
    assert_eq!(kv.value, Bytes::from("v"));
    let listed = local.range(RangeRequest::prefix("")).await.unwrap();
    assert_eq!(listed.kvs.len(), 1);
    assert!(listed.revision >= written);

    // A read that must reflect a revision the learner has not reached needs the leader.
    let err = local.at_least(written + 1000).get(b"k").await.unwrap_err();
    assert!(matches!(err, MetaError::Unavailable(_)), "{err}");
    assert!(local.at_least(written).get(b"k").await.unwrap().is_some());

    // What needs the leader fails, within the request timeout.
    let strong = local.with_read_mode(ReadMode::Linearizable);
    let started = Instant::now();
    let err = strong.get(b"k").await.unwrap_err();
    assert!(matches!(err, MetaError::Unavailable(_)), "{err}");
    let err = local.txn(Txn::new().then(Op::put("k", "w"))).await.unwrap_err();
    assert!(matches!(err, MetaError::Unavailable(_)), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn transactions_over_etcd_limits_fail_with_too_large_naming_the_flag() {
    let cluster = EtcdCluster::start(1);
    let store = connect(&cluster, "/limits/").await;

    // The test cluster runs with --max-txn-ops 32768, as production must.
    let mut txn = Txn::new();
    for i in 0..32_768 {
        txn = txn.then(Op::put(format!("ops/{i:05}"), "x"));
    }
    store.txn(txn.clone()).await.unwrap();
    let txn = txn.then(Op::put("ops/one-more", "x"));
    match store.txn(txn).await {
        Err(MetaError::TooLarge(message)) => {
            assert!(message.contains("--max-txn-ops"), "{message}")
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }

    // ... and --max-request-bytes 16 MiB.
    let big = vec![7u8; 12 << 20];
    store.txn(Txn::new().then(Op::put("big", big))).await.unwrap();
    assert_eq!(store.get(b"big").await.unwrap().unwrap().value.len(), 12 << 20);
    for size in [(16 << 20) + 100, 20 << 20] {
        let too_big = vec![7u8; size];
        match store.txn(Txn::new().then(Op::put("too-big", too_big))).await {
            Err(MetaError::TooLarge(message)) => {
                assert!(message.contains("--max-request-bytes"), "{message}");
            }
            other => panic!("expected TooLarge for {size} bytes, got {other:?}"),
        }
    }
    assert!(store.get(b"too-big").await.unwrap().is_none());

    // get_many splits more keys than one transaction may hold, still at one revision.
    let keys: Vec<Bytes> = (0..300).map(|i| Bytes::from(format!("ops/{i:05}"))).collect();
    let (kvs, revision) = store.get_many(&keys).await.unwrap();
    assert_eq!(kvs.len(), 300);
    assert!(kvs.iter().all(Option::is_some));
    assert!(revision >= kvs[0].as_ref().unwrap().mod_revision);
}

#[tokio::test]
async fn an_unreachable_cluster_is_unavailable_within_the_timeout() {
    // A port nobody listens on.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let started = Instant::now();
    let result =
        EtcdStore::connect(EtcdOptions::new([format!("127.0.0.1:{port}")]).request_timeout(Duration::from_secs(1)))
            .await;
    match result {
        Err(MetaError::Unavailable(message)) => {
            assert!(message.contains(&port.to_string()), "{message}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    let err = EtcdStore::connect(EtcdOptions::new(["unix:///run/etcd.sock"])).await.unwrap_err();
    assert!(err.to_string().contains("only http:// and https://"), "{err}");
    let err = EtcdStore::connect(EtcdOptions::new(Vec::<String>::new())).await.unwrap_err();
    assert!(err.to_string().contains("no etcd endpoints"), "{err}");
}
