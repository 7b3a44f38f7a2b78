//! Operator commands with the real binary: `meridian admin bucket delete` (empty buckets only,
//! like S3's DeleteBucket) and `meridian cluster forget NODE` on a cluster on real etcd.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use common::admin::{admin, admin_ok};
use common::{ADMIN_TOKEN, Server, run_with_timeout};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_bucket_delete_refuses_a_bucket_with_objects_or_uploads() {
    let server = Server::start();
    let s3 = server.client();
    admin_ok(&server, &["bucket", "create", "doomed"]);
    s3.put_object().bucket("doomed").key("k").body(ByteStream::from_static(b"x")).send().await.unwrap();

    let (code, _, err) = admin(&server, &["bucket", "delete", "doomed"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("BucketNotEmpty: the bucket you tried to delete is not empty"), "{err}");

    s3.delete_object().bucket("doomed").key("k").send().await.unwrap();
    let upload = s3.create_multipart_upload().bucket("doomed").key("big").send().await.unwrap();
    let (code, _, err) = admin(&server, &["bucket", "delete", "doomed"]);
    assert_eq!(code, 1, "an unfinished multipart upload must keep the bucket: {err}");
    assert!(err.contains("BucketNotEmpty"), "{err}");
    s3.abort_multipart_upload()
        .bucket("doomed")
        .key("big")
        .upload_id(upload.upload_id().unwrap())
        .send()
        .await
        .unwrap();

    let (code, out, err) = admin(&server, &["bucket", "delete", "doomed"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "Deleted bucket doomed.");
    let listed = admin_ok(&server, &["bucket", "list"]);
    assert!(listed.as_array().unwrap().iter().all(|b| b["name"] != "doomed"), "{listed}");
    assert!(s3.head_bucket().bucket("doomed").send().await.is_err(), "S3 still sees the bucket");

    let (code, _, err) = admin(&server, &["bucket", "delete", "doomed"]);
    assert_eq!(code, 1);
    assert!(err.contains("NoSuchBucket"), "{err}");
}

/// `meridian cluster ARGS` against `server`'s admin API: (exit code, stdout, stderr).
fn cluster(server: &Server, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(common::binary());
    cmd.arg("cluster").args(args).args(["--url", &server.admin_url, "--token", ADMIN_TOKEN]);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(30));
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

/// The nodes `server` lists: (region, id, healthy).
fn nodes(server: &Server) -> Vec<(String, String, bool)> {
    let (code, out, err) = cluster(server, &["status", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let mut nodes: Vec<(String, String, bool)> = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["region"].as_str().unwrap().into(), n["id"].as_str().unwrap().into(), n["healthy"] == true))
        .collect();
    nodes.sort();
    nodes
}

fn id_in(nodes: &[(String, String, bool)], region: &str) -> String {
    nodes.iter().find(|n| n.0 == region).map(|n| n.1.clone()).expect("node of the region listed")
}

#[test]
fn cluster_forget_removes_nodes_that_left_and_refuses_live_or_unknown_ones() {
    let etcd = meridian_meta_etcd::testing::EtcdCluster::start(1);
    let endpoints = etcd.client_endpoints().join(",");
    let tmp = tempfile::tempdir().unwrap();
    let mut servers: Vec<Server> = ["region-a", "region-b", "region-c"]
        .iter()
        .map(|region| {
            let args = common::cluster_args(&endpoints, region);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            Server::start_in(&tmp.path().join(region), &args, None, None)
        })
        .collect();
    let listed = nodes(&servers[0]);
    assert_eq!(listed.len(), 3, "{listed:?}");
    let (b, c) = (id_in(&listed, "region-b"), id_in(&listed, "region-c"));

    let (code, _, err) = cluster(&servers[0], &["forget", "node-nobody"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("NoSuchNode: no node \"node-nobody\" is registered"), "{err}");

    let (code, _, err) = cluster(&servers[0], &["forget", &b]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("NodeIsLive") && err.contains("stop it first, or pass --force"), "{err}");
    assert_eq!(nodes(&servers[0]).len(), 3);

    // Both leave. Region c's node is forgotten at once with --force; region b's once it is
    // reported down, without.
    servers[1].kill9();
    servers[2].kill9();
    let (code, out, err) = cluster(&servers[0], &["forget", &c, "--force"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), format!("Forgot node {c} (region region-c)."));
    assert!(nodes(&servers[0]).iter().all(|n| n.1 != c));

    let deadline = Instant::now() + Duration::from_secs(30);
    while nodes(&servers[0]).iter().any(|n| n.1 == b && n.2) {
        assert!(Instant::now() < deadline, "region b's node still reported up 30 s after kill -9");
        std::thread::sleep(Duration::from_millis(500));
    }
    let (code, _, err) = cluster(&servers[0], &["forget", &b]);
    assert_eq!(code, 0, "{err}");
    let left = nodes(&servers[0]);
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].0, "region-a");
}
