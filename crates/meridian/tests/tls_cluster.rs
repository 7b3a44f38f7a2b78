//! Three regions with TLS everywhere: etcd serves clients (and its members each other) over
//! `https://` only, and every node serves S3, admin and node-to-node traffic over `https://`,
//! all with one certificate (127.0.0.1), trusted through `--ca-file` by the nodes' connections
//! to etcd and to each other.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::raw::{Response, signed_tls};
use common::{Server, cluster_args, md5_hex, pattern};
use meridian_meta_etcd::testing::EtcdCluster;

const REGIONS: [&str; 3] = ["region-a", "region-b", "region-c"];

struct TlsCluster {
    nodes: Vec<Server>,
    etcd: EtcdCluster,
    _tmp: tempfile::TempDir,
}

impl TlsCluster {
    /// Three etcd members (TLS-only client and peer URLs) and one node per region, each listing its own
    /// region's member first.
    fn start() -> TlsCluster {
        let etcd = EtcdCluster::builder(3).peer_tls().start();
        assert!(etcd.client_endpoints().iter().all(|e| e.starts_with("https://")));
        let cert = etcd.tls_cert().unwrap();
        let files = [&cert.cert, &cert.key].map(|p| p.to_str().unwrap().to_string());
        let tmp = tempfile::tempdir().unwrap();
        let nodes = REGIONS
            .iter()
            .enumerate()
            .map(|(i, region)| {
                let mut endpoints = etcd.client_endpoints();
                endpoints.rotate_left(i);
                let mut args = cluster_args(&endpoints.join(","), region);
                for (flag, value) in [("--tls-cert", &files[0]), ("--tls-key", &files[1]), ("--ca-file", &files[0])] {
                    args.extend([flag.to_string(), value.clone()]);
                }
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let node = Server::start_in(&tmp.path().join(region), &args, None, None);
                assert!(node.endpoint.starts_with("https://"), "{}", node.endpoint);
                node
            })
            .collect();
        TlsCluster { nodes, etcd, _tmp: tmp }
    }

    /// Runs a fourth node like the others but without `--ca-file`, until it exits.
    fn start_without_ca(&self) -> std::process::Output {
        let data = self._tmp.path().join("no-ca");
        let cert = self.etcd.tls_cert().unwrap();
        let mut cmd = std::process::Command::new(common::binary());
        cmd.arg("server").arg("--data").arg(&data).args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]);
        cmd.args(cluster_args(&self.etcd.client_endpoints().join(","), "region-a"));
        cmd.arg("--tls-cert").arg(&cert.cert).arg("--tls-key").arg(&cert.key);
        cmd.env_remove("MERIDIAN_CA_FILE");
        common::run_with_timeout(&mut cmd, Duration::from_secs(60))
    }

    fn ca(&self) -> &Path {
        &self.etcd.tls_cert().unwrap().cert
    }

    fn request(&self, node: usize, method: &str, path: &str, body: &[u8]) -> Response {
        signed_tls(&self.nodes[node].addr, self.ca(), method, path, &[], body)
    }
}

const PINNED_TO_B: &str = "<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
    <LocationConstraint>region-b</LocationConstraint></CreateBucketConfiguration>";

#[test]
fn heavy_three_regions_run_with_tls_between_nodes_and_to_etcd() {
    let cluster = TlsCluster::start();
    assert_eq!(cluster.request(0, "PUT", "/global", b"").status, 200);

    // A small object is pushed to every region: region c ends up serving it from its own copy.
    let small = pattern(60_000, 1);
    assert_eq!(cluster.request(0, "PUT", "/global/small", &small).status, 200);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = cluster.request(2, "GET", "/global/small", b"");
        assert_eq!((got.status, &got.body), (200, &small));
        if got.header("x-meridian-cache") == Some("hit") {
            assert_eq!(got.header("x-meridian-served-from"), Some("region-c"));
            break;
        }
        assert!(Instant::now() < deadline, "the small object was not pushed to region c");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(cluster.request(1, "GET", "/global/small", b"").body, small);

    // A large object is fetched over https from the node holding it (region a).
    let large = pattern(3 << 20, 2);
    let put = cluster.request(0, "PUT", "/global/large", &large);
    assert_eq!(put.status, 200, "{}", put.text());
    for node in [1, 2] {
        let got = cluster.request(node, "GET", "/global/large", b"");
        assert_eq!(got.status, 200, "{}", got.text());
        assert_eq!(
            (got.header("x-meridian-served-from"), got.header("x-meridian-cache")),
            (Some("region-a"), Some("miss")),
            "node {node}"
        );
        assert_eq!(md5_hex(&got.body), md5_hex(&large), "node {node}");
    }

    // A write to a bucket pinned to region b, sent to region a, is forwarded over https.
    let created = cluster.request(0, "PUT", "/ledger", PINNED_TO_B.as_bytes());
    assert_eq!(created.status, 200, "{}", created.text());
    let entry = pattern(200_000, 3);
    let put = cluster.request(0, "PUT", "/ledger/entry", &entry);
    assert_eq!(put.status, 200, "{}", put.text());
    assert_eq!(put.header("x-meridian-forwarded-to"), Some("region-b"));
    let in_b = cluster.request(1, "GET", "/ledger/entry", b"");
    assert_eq!(in_b.header("x-meridian-served-from"), Some("region-b"));
    assert_eq!(in_b.body, entry);

    // Without the CA file, a node cannot trust etcd's certificate: it stops at start, saying so.
    let out = cluster.start_without_ca();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a node trusted etcd without the CA file: {stderr}");
    assert!(stderr.contains("cannot reach etcd") && stderr.contains("invalid peer certificate"), "{stderr}");
}

/// etcd run with `--client-cert-auth`: a node with `--etcd-cert`/`--etcd-key` joins and serves;
/// without them it stops at start with the TLS refusal.
#[test]
fn a_node_reaches_etcd_with_a_client_certificate() {
    let etcd = EtcdCluster::builder(1).client_cert_auth().start();
    let cert = etcd.tls_cert().unwrap();
    let (cert_file, key_file) = (cert.cert.to_str().unwrap(), cert.key.to_str().unwrap());
    let tmp = tempfile::tempdir().unwrap();
    let mut args = cluster_args(&etcd.client_endpoints().join(","), "region-a");
    args.extend(["--ca-file", cert_file].map(String::from));
    let with_identity: Vec<String> =
        args.iter().cloned().chain(["--etcd-cert", cert_file, "--etcd-key", key_file].map(String::from)).collect();
    let with_identity: Vec<&str> = with_identity.iter().map(String::as_str).collect();
    let node = Server::start_in(&tmp.path().join("a"), &with_identity, None, None);
    let created = common::raw::signed(&node.addr, "PUT", "/certified", &[], b"");
    assert_eq!(created.status, 200, "{}", created.text());

    let mut cmd =
        Server::command(&tmp.path().join("b"), &args.iter().map(String::as_str).collect::<Vec<_>>(), None, None);
    let out = common::run_with_timeout(&mut cmd, Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a node without a client certificate got into etcd: {stderr}");
    assert!(stderr.contains("cannot reach etcd"), "{stderr}");
}
