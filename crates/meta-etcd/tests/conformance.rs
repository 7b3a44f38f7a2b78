#![allow(clippy::unwrap_used)]
//! The backend-agnostic metadata store suite against a real 3-member etcd cluster.

use meridian_meta::conformance;
use meridian_meta_etcd::testing::EtcdCluster;
use meridian_meta_etcd::{EtcdOptions, EtcdStore, ReadMode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_on_three_members() {
    let cluster = EtcdCluster::start(3);
    let store =
        EtcdStore::connect(EtcdOptions::new(cluster.client_endpoints()).namespace("/conformance-linearizable/"))
            .await
            .unwrap();
    conformance::run_all(&store).await;
}

/// Serializable reads from a learner listed first: reads stay on the learner, writes and
/// watches move to voting members, and the store still behaves like every other backend for a
/// single client (it never reads behind what it has already seen).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_with_serializable_reads_from_a_learner() {
    let mut cluster = EtcdCluster::start(3);
    let learner = cluster.add_learner();
    let mut endpoints = vec![cluster.client_endpoint(learner)];
    endpoints.extend((0..3).map(|i| cluster.client_endpoint(i)));
    let store = EtcdStore::connect(
        EtcdOptions::new(endpoints).namespace("/conformance-serializable/").read_mode(ReadMode::Serializable),
    )
    .await
    .unwrap();
    conformance::run_all(&store).await;
}
