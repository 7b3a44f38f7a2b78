#![allow(clippy::unwrap_used)]
//! The test cluster harness itself.

use std::time::Duration;

use meridian_meta::{MetaStore, Op, Txn};
use meridian_meta_etcd::testing::EtcdCluster;
use meridian_meta_etcd::{EtcdOptions, EtcdStore};

#[test]
#[should_panic(expected = "install etcd-server")]
fn a_missing_etcd_fails_loudly_with_install_advice() {
    EtcdCluster::builder(1).binary("/nonexistent/etcd").start();
}

/// Members restart on their data; members listed by the builder are the ones started; extra
/// flags reach etcd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_restart_on_their_data_and_the_builder_sets_urls_and_flags() {
    let mut builder = EtcdCluster::builder(3).arg("--snapshot-count=5000");
    let first = builder.member(0).clone();
    builder.member_mut(2).name = "custom".into();
    let mut cluster = builder.start();
    assert_eq!(cluster.member(0), &first);
    assert_eq!(cluster.member(2).name, "custom");
    assert!(cluster.log(0).contains("\"snapshot-count\":5000"), "extra flags reach etcd");

    let store =
        EtcdStore::connect(EtcdOptions::new(cluster.client_endpoints()).request_timeout(Duration::from_secs(10)))
            .await
            .unwrap();
    let written = store.txn(Txn::new().then(Op::put("k", "v"))).await.unwrap().revision;
    cluster.kill(0);
    assert!(!cluster.is_running(0) && !cluster.healthy(0));
    cluster.restart(0);
    assert!(cluster.is_running(0) && cluster.healthy(0));
    let only_0 = EtcdStore::connect(EtcdOptions::new([cluster.client_endpoint(0)])).await.unwrap();
    assert_eq!(only_0.get(b"k").await.unwrap().unwrap().mod_revision, written, "the restarted member kept its data");
    let leader = cluster.wait_for_leader(Duration::from_secs(20));
    assert!(leader < 3);
    let dir = cluster.dir().to_path_buf();
    drop(cluster);
    assert!(!dir.exists(), "dropping the cluster removes its data");
}
