//! Bucket snapshots and forks, and long version histories, against a real `meridian server` (a
//! clustered node too, with `MERIDIAN_TEST_CLUSTER=1`): `meridian admin` takes snapshots and
//! makes forks, aws-sdk-rust writes and reads (a snapshot through `x-meridian-snapshot`), and a
//! SigV4-signed raw request reads through `?snapshot=`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::BTreeSet;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{BucketVersioningStatus, VersioningConfiguration};
use common::admin::{admin, admin_ok};
use common::raw::signed;
use common::{Server, body_bytes, error_code, pattern};

async fn enable_versioning(s3: &aws_sdk_s3::Client, bucket: &str) {
    let enabled = VersioningConfiguration::builder().status(BucketVersioningStatus::Enabled).build();
    s3.put_bucket_versioning().bucket(bucket).versioning_configuration(enabled).send().await.unwrap();
}

async fn put(s3: &aws_sdk_s3::Client, bucket: &str, key: &str, body: Vec<u8>) -> String {
    let out = s3.put_object().bucket(bucket).key(key).body(ByteStream::from(body)).send().await.unwrap();
    out.version_id.unwrap()
}

async fn get(s3: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Result<Vec<u8>, String> {
    match s3.get_object().bucket(bucket).key(key).send().await {
        Ok(out) => Ok(body_bytes(out).await),
        Err(e) => Err(error_code(&e)),
    }
}

/// A GET of `key` as snapshot `name` of `bucket` shows it, asked with the header.
async fn get_at(s3: &aws_sdk_s3::Client, bucket: &str, name: &str, key: &str) -> Result<Vec<u8>, String> {
    let name = name.to_string();
    let sent = s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .customize()
        .mutate_request(move |req| {
            req.headers_mut().insert("x-meridian-snapshot", name.clone());
        })
        .send()
        .await;
    match sent {
        Ok(out) => Ok(body_bytes(out).await),
        Err(e) => Err(error_code(&e)),
    }
}

/// Every key of a ListObjectsV2 listing (pages of `page`), optionally at a snapshot.
async fn list(s3: &aws_sdk_s3::Client, bucket: &str, snapshot: Option<&str>, page: i32) -> Vec<String> {
    let mut keys = Vec::new();
    let mut token: Option<String> = None;
    for _ in 0..1000 {
        let snapshot = snapshot.map(str::to_string);
        let out = s3
            .list_objects_v2()
            .bucket(bucket)
            .max_keys(page)
            .set_continuation_token(token.clone())
            .customize()
            .mutate_request(move |req| {
                if let Some(name) = &snapshot {
                    req.headers_mut().insert("x-meridian-snapshot", name.clone());
                }
            })
            .send()
            .await
            .unwrap();
        keys.extend(out.contents().iter().filter_map(|o| o.key().map(str::to_string)));
        token = out.next_continuation_token().map(str::to_string);
        if token.is_none() {
            return keys;
        }
    }
    panic!("the listing did not end");
}

/// Snapshots read the bucket as it was after overwrites, deletes and removals of versions;
/// forks start from a snapshot, diverge, and leave the source alone; nothing a fork or a
/// snapshot stands on can be deleted.
#[tokio::test]
async fn snapshots_and_forks_through_the_admin_cli_and_s3() {
    let server = Server::start();
    let s3 = server.client();
    s3.create_bucket().bucket("prod").send().await.unwrap();
    let (code, _, err) = admin(&server, &["bucket", "snapshot", "prod", "--name", "early"]);
    assert_ne!(code, 0, "an unversioned bucket has no snapshots");
    assert!(err.contains("enable versioning"), "{err}");
    enable_versioning(&s3, "prod").await;
    let large = pattern(300 << 10, 7);
    let large_version = put(&s3, "prod", "data/large.bin", large.clone()).await;
    put(&s3, "prod", "data/config.json", b"{\"v\":1}".to_vec()).await;
    put(&s3, "prod", "notes.txt", b"keep me".to_vec()).await;
    let snap = admin_ok(&server, &["bucket", "snapshot", "prod", "--name", "nightly"]);
    assert_eq!(snap["name"], "nightly");
    assert!(snap["revision"].as_u64().unwrap() > 0);

    // After the snapshot: an overwrite, a delete, a version removed for good, a new key.
    put(&s3, "prod", "data/config.json", b"{\"v\":2}".to_vec()).await;
    s3.delete_object().bucket("prod").key("notes.txt").send().await.unwrap();
    s3.delete_object().bucket("prod").key("data/large.bin").version_id(&large_version).send().await.unwrap();
    put(&s3, "prod", "later.txt", b"after".to_vec()).await;
    assert_eq!(get(&s3, "prod", "data/large.bin").await, Err("NoSuchKey".into()));

    assert_eq!(get_at(&s3, "prod", "nightly", "data/large.bin").await.unwrap(), large);
    assert_eq!(get_at(&s3, "prod", "nightly", "data/config.json").await.unwrap(), b"{\"v\":1}");
    assert_eq!(get_at(&s3, "prod", "nightly", "notes.txt").await.unwrap(), b"keep me");
    assert_eq!(get_at(&s3, "prod", "nightly", "later.txt").await, Err("NoSuchKey".into()));
    assert_eq!(get_at(&s3, "prod", "no-such", "notes.txt").await, Err("NoSuchSnapshot".into()));
    let then = ["data/config.json", "data/large.bin", "notes.txt"];
    assert_eq!(list(&s3, "prod", Some("nightly"), 2).await, then);
    assert_eq!(list(&s3, "prod", None, 1000).await, ["data/config.json", "later.txt"]);
    // The query parameter, on a signed raw request; and a delimiter listing.
    let raw = signed(&server.addr, "GET", "/prod/notes.txt?snapshot=nightly", &[], b"");
    assert_eq!((raw.status, raw.body.as_slice()), (200, b"keep me".as_slice()), "{}", raw.text());
    let raw = signed(&server.addr, "GET", "/prod?list-type=2&delimiter=%2F&snapshot=nightly", &[], b"");
    assert_eq!(raw.status, 200, "{}", raw.text());
    let body = raw.text();
    assert!(body.contains("<Prefix>data/</Prefix>") && body.contains("<Key>notes.txt</Key>"), "{body}");
    assert!(!body.contains("later.txt"), "{body}");
    let listed = admin_ok(&server, &["bucket", "ls", "prod@nightly", "--prefix", "data/"]);
    let keys: Vec<&str> = listed.as_array().unwrap().iter().filter_map(|o| o["key"].as_str()).collect();
    assert_eq!(keys, ["data/config.json", "data/large.bin"]);

    // A fork of the snapshot: the objects as they were, then its own changes only.
    let fork = admin_ok(&server, &["bucket", "fork", "prod@nightly", "staging"]);
    assert_eq!(fork["fork_of"], "prod@nightly");
    assert_eq!(get(&s3, "staging", "data/large.bin").await.unwrap(), large);
    assert_eq!(list(&s3, "staging", None, 1).await, then);
    put(&s3, "staging", "data/config.json", b"{\"env\":\"staging\"}".to_vec()).await;
    s3.delete_object().bucket("staging").key("data/large.bin").send().await.unwrap();
    put(&s3, "staging", "staging-only.txt", b"s".to_vec()).await;
    assert_eq!(list(&s3, "staging", None, 2).await, ["data/config.json", "notes.txt", "staging-only.txt"]);
    assert_eq!(get(&s3, "staging", "data/config.json").await.unwrap(), b"{\"env\":\"staging\"}");
    assert_eq!(get(&s3, "staging", "data/large.bin").await, Err("NoSuchKey".into()));
    assert_eq!(get(&s3, "prod", "data/config.json").await.unwrap(), b"{\"v\":2}", "the source is unaffected");
    assert_eq!(get(&s3, "prod", "staging-only.txt").await, Err("NoSuchKey".into()));

    // A fork of the source as it is now.
    admin_ok(&server, &["bucket", "fork", "prod", "preview"]);
    assert_eq!(list(&s3, "preview", None, 1000).await, ["data/config.json", "later.txt"]);
    let snapshots = admin_ok(&server, &["bucket", "snapshots", "prod"]);
    let names: Vec<&str> = snapshots.as_array().unwrap().iter().filter_map(|s| s["name"].as_str()).collect();
    assert_eq!(names, ["fork-preview", "nightly"]);

    // What forks stand on stays until they go.
    let (code, _, err) = admin(&server, &["bucket", "delete-snapshot", "prod@nightly"]);
    assert_ne!(code, 0);
    assert!(err.contains("staging"), "{err}");
    let refused = s3.delete_bucket().bucket("prod").send().await.unwrap_err();
    assert_eq!(error_code(&refused), "BucketNotEmpty");
    admin_ok(&server, &["bucket", "delete", "preview"]);
    let snapshots = admin_ok(&server, &["bucket", "snapshots", "prod"]);
    assert_eq!(snapshots.as_array().unwrap().len(), 1, "the fork's own snapshot went with it");
    let versions = s3.list_object_versions().bucket("staging").send().await.unwrap();
    for v in versions.versions() {
        s3.delete_object()
            .bucket("staging")
            .key(v.key().unwrap())
            .version_id(v.version_id().unwrap())
            .send()
            .await
            .unwrap();
    }
    for m in versions.delete_markers() {
        s3.delete_object()
            .bucket("staging")
            .key(m.key().unwrap())
            .version_id(m.version_id().unwrap())
            .send()
            .await
            .unwrap();
    }
    admin_ok(&server, &["bucket", "delete", "staging"]);
    admin_ok(&server, &["bucket", "delete-snapshot", "prod@nightly"]);
    assert_eq!(get_at(&s3, "prod", "nightly", "notes.txt").await, Err("NoSuchSnapshot".into()));
}

/// ListObjectVersions pages through 10,000 versions (100 keys × 100 versions) in S3's order:
/// by key, newest first, each version exactly once — through aws-sdk-rust's markers and the AWS
/// CLI's own pagination.
#[tokio::test]
async fn ten_thousand_versions_page_in_order() {
    const KEYS: usize = 100;
    const VERSIONS: usize = 100;
    let server = Server::start();
    let s3 = server.client();
    s3.create_bucket().bucket("history").send().await.unwrap();
    enable_versioning(&s3, "history").await;
    let mut written: Vec<Vec<String>> = vec![Vec::new(); KEYS];
    for round in 0..VERSIONS {
        let puts = (0..KEYS).map(|k| {
            let s3 = s3.clone();
            async move { put(&s3, "history", &format!("k{k:03}"), format!("{round}").into_bytes()).await }
        });
        for (k, id) in futures::future::join_all(puts).await.into_iter().enumerate() {
            written[k].push(id);
        }
    }
    let mut listed: Vec<(String, String, bool)> = Vec::new();
    let mut markers: (Option<String>, Option<String>) = (None, None);
    for _ in 0..100 {
        let out = s3
            .list_object_versions()
            .bucket("history")
            .set_key_marker(markers.0.clone())
            .set_version_id_marker(markers.1.clone())
            .send()
            .await
            .unwrap();
        assert!(out.versions().len() <= 1000);
        listed.extend(
            out.versions()
                .iter()
                .map(|v| (v.key().unwrap().to_string(), v.version_id().unwrap().to_string(), v.is_latest().unwrap())),
        );
        if !out.is_truncated().unwrap() {
            break;
        }
        markers = (out.next_key_marker().map(str::to_string), out.next_version_id_marker().map(str::to_string));
    }
    assert_eq!(listed.len(), KEYS * VERSIONS);
    let unique: BTreeSet<(&str, &str)> = listed.iter().map(|(key, id, _)| (key.as_str(), id.as_str())).collect();
    assert_eq!(unique.len(), KEYS * VERSIONS, "no version listed twice");
    for (k, ids) in written.iter().enumerate() {
        let of_key: Vec<&(String, String, bool)> = listed[k * VERSIONS..(k + 1) * VERSIONS].iter().collect();
        let newest_first: Vec<&str> = ids.iter().rev().map(String::as_str).collect();
        assert!(of_key.iter().all(|(key, _, _)| *key == format!("k{k:03}")), "keys in order");
        assert_eq!(of_key.iter().map(|(_, id, _)| id.as_str()).collect::<Vec<_>>(), newest_first, "k{k:03}");
        assert!(of_key[0].2 && of_key[1..].iter().all(|(_, _, latest)| !latest), "only the newest is latest");
    }
    // The AWS CLI pages through them on its own (1,000 per request) and finds the same list.
    let aws = common::aws::AwsCli::new(&server);
    let all = aws.json(&["s3api", "list-object-versions", "--bucket", "history", "--page-size", "1000"]);
    let by_cli: Vec<(String, String, bool)> = all["Versions"]
        .as_array()
        .expect("a Versions list")
        .iter()
        .map(|v| {
            let field = |name: &str| v[name].as_str().expect("a string field").to_string();
            (field("Key"), field("VersionId"), v["IsLatest"].as_bool().expect("IsLatest"))
        })
        .collect();
    assert_eq!(by_cli, listed, "the AWS CLI lists the 10,000 versions in the same order");
}
