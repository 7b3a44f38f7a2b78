#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! etcd over TLS: `https://` endpoints checked against a CA file, clear failures without the
//! right CA or with a bad CA file, and plain `http://` unchanged beside a CA file.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use meridian_meta::{Compare, MetaError, MetaStore, Op, RangeRequest, Txn};
use meridian_meta_etcd::testing::{EtcdCluster, TestCert};
use meridian_meta_etcd::{EtcdOptions, EtcdStore};

/// Puts, reads, a conditional transaction and a watch through `store`.
async fn exercise(store: &EtcdStore) {
    let mut watch = store.watch(RangeRequest::prefix("k/"), 0).await.unwrap();
    let r1 = store.txn(Txn::new().then(Op::put("k/1", "one"))).await.unwrap().revision;
    assert_eq!(store.get(b"k/1").await.unwrap().unwrap().value, Bytes::from("one"));
    let stale = Txn::new().when(Compare::mod_revision_is("k/1", r1 + 100)).then(Op::put("k/1", "lost"));
    assert!(!store.txn(stale).await.unwrap().succeeded);
    let current = Txn::new().when(Compare::mod_revision_is("k/1", r1)).then(Op::put("k/2", "two"));
    let r2 = store.txn(current).await.unwrap().revision;
    assert_eq!(store.range(RangeRequest::prefix("k/")).await.unwrap().kvs.len(), 2);
    for (key, revision) in [("k/1", r1), ("k/2", r2)] {
        let event = tokio::time::timeout(Duration::from_secs(10), watch.next()).await.unwrap().unwrap().unwrap();
        assert_eq!((event.kv.key, event.kv.mod_revision), (Bytes::from(key), revision));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_works_over_https_with_the_ca_file() {
    let cluster = EtcdCluster::builder(3).client_tls().start();
    let endpoints = cluster.client_endpoints();
    assert!(endpoints.iter().all(|e| e.starts_with("https://")), "{endpoints:?}");
    assert!((0..3).all(|i| cluster.healthy(i)), "the harness checks health over TLS");
    let ca = &cluster.tls_cert().unwrap().cert;
    let store = EtcdStore::connect(EtcdOptions::new(endpoints).ca_file(ca)).await.unwrap();
    exercise(&store).await;
    assert!(store.member_status().await.iter().all(|m| m.member_id.is_some() && m.errors.is_empty()));
}

/// Members talk to each other over TLS too, and a learner joins over it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_can_use_tls_between_themselves_too() {
    let mut cluster = EtcdCluster::builder(3).peer_tls().start();
    assert!((0..3).all(|i| cluster.member(i).advertise_peer_url.starts_with("https://")));
    let learner = cluster.add_learner();
    assert!(cluster.member(learner).advertise_peer_url.starts_with("https://"));
    let ca = cluster.tls_cert().unwrap().cert.clone();
    let store = EtcdStore::connect(EtcdOptions::new(cluster.client_endpoints()).ca_file(&ca)).await.unwrap();
    exercise(&store).await;
    let written = store.current_revision().await.unwrap();
    store.wait_applied(written, Duration::from_secs(10)).await.unwrap();
}

/// Connecting without a CA that signed etcd's certificate fails within the request deadline,
/// naming the certificate problem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_right_ca_connecting_fails_clearly_and_quickly() {
    let cluster = EtcdCluster::builder(1).client_tls().start();
    let other = TestCert::new();
    for ca in [None, Some(&other.cert)] {
        let mut options = EtcdOptions::new(cluster.client_endpoints()).request_timeout(Duration::from_secs(2));
        options.ca_file = ca.cloned();
        let started = Instant::now();
        let err = EtcdStore::connect(options).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        match err {
            MetaError::Unavailable(message) => assert!(message.contains("certificate"), "{message}"),
            // A machine without system CAs and no CA file: refused before connecting.
            MetaError::Storage(message) if ca.is_none() => assert!(message.contains("no CA is trusted"), "{message}"),
            other => panic!("expected a certificate error, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn an_unreadable_or_invalid_ca_file_is_refused_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let missing = dir.path().join("missing.pem");
    for (ca, expected) in [(&missing, "cannot read the CA file"), (&garbage, "holds no PEM certificate")] {
        // Checked whatever the endpoints' scheme: a node passes its one CA file everywhere.
        for endpoint in ["https://127.0.0.1:1", "http://127.0.0.1:1"] {
            match EtcdStore::connect(EtcdOptions::new([endpoint]).ca_file(ca)).await {
                Err(MetaError::Storage(message)) => {
                    assert!(message.contains(expected) && message.contains(&*ca.to_string_lossy()), "{message}")
                }
                other => panic!("{endpoint} with {}: expected a CA file error, got {other:?}", ca.display()),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_still_works_beside_a_ca_file() {
    let cluster = EtcdCluster::start(1);
    let cert = TestCert::new();
    assert!(cluster.client_endpoint(0).starts_with("http://"));
    let store = EtcdStore::connect(EtcdOptions::new(cluster.client_endpoints()).ca_file(&cert.cert)).await.unwrap();
    exercise(&store).await;
}

/// etcd run with `--client-cert-auth`: a store presenting the client certificate works; one
/// without a certificate, or with one etcd does not trust, is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_client_cert_auth_only_a_trusted_client_certificate_gets_in() {
    let cluster = EtcdCluster::builder(1).client_cert_auth().start();
    let cert = cluster.tls_cert().unwrap();
    let options = || EtcdOptions::new(cluster.client_endpoints()).ca_file(&cert.cert);
    let store = EtcdStore::connect(options().client_identity(&cert.cert, &cert.key)).await.unwrap();
    exercise(&store).await;

    let stranger = TestCert::new();
    for refused in [options(), options().client_identity(&stranger.cert, &stranger.key)] {
        let refused = refused.request_timeout(Duration::from_secs(2));
        let err = match EtcdStore::connect(refused).await {
            Ok(store) => store.get(b"k/1").await.unwrap_err(),
            Err(err) => err,
        };
        assert!(matches!(err, MetaError::Unavailable(_)), "{err:?}");
    }
}

#[tokio::test]
async fn an_unreadable_or_invalid_client_certificate_or_key_is_refused_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCert::new();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not PEM\n").unwrap();
    let missing = dir.path().join("missing.pem");
    for (client_cert, client_key, expected) in [
        (&missing, &cert.key, "cannot read the etcd client certificate"),
        (&cert.cert, &missing, "cannot read the etcd client key"),
        (&garbage, &cert.key, "holds no usable PEM certificate"),
        (&cert.cert, &garbage, "holds no usable PEM key"),
    ] {
        let options =
            EtcdOptions::new(["https://127.0.0.1:1"]).ca_file(&cert.cert).client_identity(client_cert, client_key);
        match EtcdStore::connect(options).await {
            Err(MetaError::Storage(message)) => assert!(message.contains(expected), "{message}"),
            other => panic!("expected a refusal naming {expected:?}, got {:?}", other.map(|_| ())),
        }
    }
}
