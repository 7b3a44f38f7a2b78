//! The data directory is the owner's alone: a fresh node creates it 0700 with every file 0600,
//! even under a umask that would allow more, and a node refuses to start on a directory (or a
//! file in it) that the group or others can use, saying which `chmod` fixes it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use common::{Server, assert_owner_only, body_bytes, client_for, pattern, run_with_timeout, under_umask};

const MIB: usize = 1 << 20;

/// A small object (inline in the metadata), a large one (a blob file) and a two-part multipart
/// upload, read back.
async fn write_some_objects(client: &aws_sdk_s3::Client) {
    client.create_bucket().bucket("box").send().await.unwrap();
    client.put_object().bucket("box").key("small").body(ByteStream::from(pattern(100, 1))).send().await.unwrap();
    let large = pattern(MIB, 2);
    client.put_object().bucket("box").key("large").body(ByteStream::from(large.clone())).send().await.unwrap();
    let upload = client.create_multipart_upload().bucket("box").key("multi").send().await.unwrap();
    let id = upload.upload_id().unwrap();
    let mut parts = Vec::new();
    for (number, len) in [(1, 5 * MIB), (2, 1000)] {
        let part = client
            .upload_part()
            .bucket("box")
            .key("multi")
            .upload_id(id)
            .part_number(number)
            .body(ByteStream::from(pattern(len, number as u64)))
            .send()
            .await
            .unwrap();
        parts.push(CompletedPart::builder().part_number(number).e_tag(part.e_tag().unwrap()).build());
    }
    client
        .complete_multipart_upload()
        .bucket("box")
        .key("multi")
        .upload_id(id)
        .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
        .send()
        .await
        .unwrap();
    let got = client.get_object().bucket("box").key("large").send().await.unwrap();
    assert_eq!(body_bytes(got).await, large);
}

/// The admin credentials a node generated in its data directory.
fn stored_credentials(data: &Path) -> (String, String) {
    let text = std::fs::read_to_string(data.join("credentials.toml")).unwrap();
    let value = |name: &str| {
        let line = text.lines().find(|l| l.starts_with(name)).unwrap();
        line.split_once('=').unwrap().1.trim().trim_matches('"').to_string()
    };
    (value("access_key_id"), value("secret_access_key"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_node_keeps_every_file_owner_only_even_under_umask_000() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("nested/data");
    // No credentials or admin token from the environment: the node generates and stores both.
    let mut cmd = Server::command(&data, &[], None, None);
    cmd.env_remove("AWS_ACCESS_KEY_ID").env_remove("AWS_SECRET_ACCESS_KEY").env_remove("MERIDIAN_ADMIN_TOKEN");
    let server = Server::start_command(under_umask("000", &cmd), &data, &[]);
    let (access, secret) = stored_credentials(&data);
    write_some_objects(&client_for(&server.endpoint, &access, &secret)).await;

    let files = assert_owner_only(&data);
    for name in ["meta.redb", "meta.redb-wal", "credentials.toml", "admin-token", "node-id"] {
        assert!(data.join(name).is_file(), "{name} missing");
    }
    assert!(files >= 7, "only {files} files: the blobs of the large object and the parts are missing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_fills_on_a_cluster_node_are_owner_only() {
    let etcd = meridian_meta_etcd::testing::EtcdCluster::start(1);
    let endpoints = etcd.client_endpoints().join(",");
    let tmp = tempfile::tempdir().unwrap();
    let nodes: Vec<Server> = ["region-a", "region-b"]
        .iter()
        .map(|region| {
            let args = common::cluster_args(&endpoints, region);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            Server::start_with_umask("000", &tmp.path().join(region), &args)
        })
        .collect();
    write_some_objects(&nodes[0].client()).await;
    // Region b reads region a's bytes through its cache.
    let remote = nodes[1].client();
    for key in ["large", "multi"] {
        let got = remote.get_object().bucket("box").key(key).send().await.unwrap();
        assert!(!body_bytes(got).await.is_empty());
    }
    let cache = tmp.path().join("region-b/cache");
    let cached = assert_owner_only(&cache);
    assert!(cached > 0, "region b's cache holds no file after remote reads");
    assert_owner_only(&tmp.path().join("region-a"));
    assert_owner_only(&tmp.path().join("region-b"));
}

/// Runs a node on `data` that must refuse to start; its error output.
fn refused(data: &Path) -> String {
    let mut cmd = Server::command(data, &[], None, None);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(30));
    assert!(!out.status.success(), "the node started on {}", data.display());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs the `chmod` the refusal names, as an operator would paste it.
fn run_suggested_chmod(message: &str) {
    let start = message.find("chmod ").expect("the message names a chmod");
    let line = message[start..].lines().next().unwrap();
    let status = Command::new("sh").arg("-c").arg(line).status().unwrap();
    assert!(status.success(), "{line}");
}

#[test]
fn a_node_refuses_a_data_directory_open_to_others_and_names_the_chmod() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let message = refused(&data);
    assert!(message.contains("readable by other users (mode 0755)"), "{message}");
    assert!(message.contains(&format!("chmod -R go-rwx {}", data.display())), "{message}");
    run_suggested_chmod(&message);

    // A node starts on the fixed directory; later someone opens up the metadata database.
    let mut server = Server::start_in(&data, &[], None, None);
    server.kill9();
    let db = data.join("meta.redb");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let message = refused(&data);
    assert!(message.contains(&format!("{} is readable by other users (mode 0644)", db.display())), "{message}");
    run_suggested_chmod(&message);
    assert_eq!(std::fs::metadata(&db).unwrap().permissions().mode() & 0o777, 0o600);
    let _server = Server::start_in(&data, &[], None, None);
}
