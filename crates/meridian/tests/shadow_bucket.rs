//! Shadow buckets (`meridian admin bucket shadow`, decision 064) in front of a bucket of moto's
//! S3 server, a service Meridian did not write: first reads come from the source and are
//! stored, later reads are local (the source is killed in between), listings merge both sides,
//! deleted keys stay deleted, write-through reaches the source, removing the shadow ends it.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::BTreeSet;
use std::process::{Command, Output};
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use common::admin::{admin, admin_ok};
use common::{ADMIN_TOKEN, Server, binary, body_bytes, cluster_args, error_status, pattern, raw, run_with_timeout};
use meridian_s3_client::testing::Moto;

const SOURCE_SECRET: &str = "moto-secret-key";

/// `meridian admin bucket shadow BUCKET` onto moto's bucket `source_bucket`, the secret given
/// by environment.
fn shadow_command(node: &Server, moto: &Moto, bucket: &str, source_bucket: &str, write_through: bool) -> Output {
    let mut cmd = Command::new(binary());
    cmd.args(["admin", "--url", &node.admin_url, "--token", ADMIN_TOKEN, "bucket", "shadow", bucket])
        .args(["--endpoint", &moto.endpoint, "--source-bucket", source_bucket, "--access-key", "moto-access-key"])
        .env("MERIDIAN_SHADOW_SECRET_KEY", SOURCE_SECRET);
    if write_through {
        cmd.arg("--write-through");
    }
    run_with_timeout(&mut cmd, Duration::from_secs(30))
}

/// Shadows `bucket` of the node with moto's `source` bucket; the secret must not come back in
/// the answer or any output.
fn shadow(node: &Server, moto: &Moto, bucket: &str, write_through: bool) {
    let done = shadow_command(node, moto, bucket, "source", write_through);
    let (out, err) = (String::from_utf8_lossy(&done.stdout), String::from_utf8_lossy(&done.stderr));
    assert!(done.status.success(), "admin bucket shadow failed: {out}{err}");
    assert!(out.contains("now shadows"), "{out}");
    let (code, table, _) = admin(node, &["bucket", "list"]);
    assert!(code == 0 && table.contains(&format!("(shadows {}/source", moto.endpoint)), "{table}");
    let listed = admin_ok(node, &["bucket", "list"]).to_string();
    assert!(listed.contains("moto-access-key") && listed.contains("\"write_through\""), "{listed}");
    for text in [&out.to_string(), &err.to_string(), &table, &listed] {
        assert!(!text.contains(SOURCE_SECRET), "the source's secret was shown: {text}");
    }
}

/// moto's request recorder (`/moto-api/recorder/...`): from `start_recording` on, moto keeps
/// every request it serves.
fn start_recording(moto: &Moto) {
    let addr = moto.endpoint.trim_start_matches("http://");
    assert_eq!(raw::send(addr, "POST", "/moto-api/recorder/start-recording", &[], b"").status, 200);
}

/// How many GETs of `path` moto served since recording started.
fn gets_of(moto: &Moto, path: &str) -> usize {
    let addr = moto.endpoint.trim_start_matches("http://");
    let recording = raw::send(addr, "GET", "/moto-api/recorder/download-recording", &[], b"").text();
    let url = format!("{}{path}", moto.endpoint);
    recording
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|r| r["method"] == "GET" && r["url"].as_str().is_some_and(|u| u.split('?').next() == Some(&url)))
        .count()
}

async fn put(client: &aws_sdk_s3::Client, bucket: &str, key: &str, body: Vec<u8>) {
    client.put_object().bucket(bucket).key(key).body(ByteStream::from(body)).send().await.unwrap();
}

/// Every key and common prefix of a listing, page by page (`max_keys` a page), with ListObjects
/// V2 or V1.
async fn list_all(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
    delimiter: Option<&str>,
    v1: bool,
) -> Vec<String> {
    let mut all = Vec::new();
    let mut next: Option<String> = None;
    for _ in 0..100 {
        let (keys, prefixes, more, token) = if v1 {
            let page = client
                .list_objects()
                .bucket(bucket)
                .prefix(prefix)
                .set_delimiter(delimiter.map(str::to_string))
                .set_marker(next.clone())
                .max_keys(2)
                .send()
                .await
                .unwrap();
            let keys: Vec<String> = page.contents().iter().map(|o| o.key().unwrap().to_string()).collect();
            let prefixes: Vec<String> =
                page.common_prefixes().iter().map(|p| p.prefix().unwrap().to_string()).collect();
            let last = keys.iter().chain(&prefixes).max().cloned();
            (keys, prefixes, page.is_truncated() == Some(true), page.next_marker().map(str::to_string).or(last))
        } else {
            let page = client
                .list_objects_v2()
                .bucket(bucket)
                .prefix(prefix)
                .set_delimiter(delimiter.map(str::to_string))
                .set_continuation_token(next.clone())
                .max_keys(2)
                .send()
                .await
                .unwrap();
            let keys = page.contents().iter().map(|o| o.key().unwrap().to_string()).collect();
            let prefixes = page.common_prefixes().iter().map(|p| p.prefix().unwrap().to_string()).collect();
            (keys, prefixes, page.is_truncated() == Some(true), page.next_continuation_token().map(str::to_string))
        };
        assert!(keys.len() + prefixes.len() <= 2, "a page of more than max-keys entries");
        all.extend(keys);
        all.extend(prefixes);
        if !more {
            return all;
        }
        next = token;
    }
    panic!("a listing of {bucket} did not end within 100 pages");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_bucket_reads_through_once_merges_listings_and_keeps_deletes() {
    let moto = Moto::start();
    let source = meridian_s3_client::client(&moto.s3_endpoint(), "test").unwrap();
    source.create_bucket().bucket("source").send().await.unwrap();
    source
        .put_object()
        .bucket("source")
        .key("a.txt")
        .content_type("text/x-shadow")
        .cache_control("max-age=77")
        .metadata("origin", "moto")
        .body(ByteStream::from_static(b"from the source"))
        .send()
        .await
        .unwrap();
    let (big, streamed) = (pattern(3 << 20, 1), pattern(5 << 20, 2));
    put(&source, "source", "big", big.clone()).await;
    put(&source, "source", "streamed", streamed.clone()).await;
    let tail = pattern(1 << 20, 3);
    put(&source, "source", "tail", tail.clone()).await;
    for key in ["copy-me", "dir/b", "dir/c", "dir/sub/d", "gone", "p/0", "p/1", "p/2", "p/3", "p/4"] {
        put(&source, "source", key, key.as_bytes().to_vec()).await;
    }

    let node = Server::start();
    let client = node.client();
    client.create_bucket().bucket("moving").send().await.unwrap();
    put(&client, "moving", "dir/local", b"only here".to_vec()).await;
    put(&client, "moving", "p/2", b"newer here".to_vec()).await;
    // Not shadowing yet: the source's keys are not there.
    let missing = client.get_object().bucket("moving").key("a.txt").send().await.unwrap_err();
    assert_eq!(error_status(&missing), 404);
    shadow(&node, &moto, "moving", false);
    start_recording(&moto);

    // First reads come from the source, with its headers; GETs (a range too) stream, HEAD
    // stores the object first.
    let got = client.get_object().bucket("moving").key("a.txt").send().await.unwrap();
    assert_eq!(got.content_type(), Some("text/x-shadow"));
    assert_eq!(got.cache_control(), Some("max-age=77"));
    assert_eq!(got.metadata().unwrap().get("origin").map(String::as_str), Some("moto"));
    assert_eq!(body_bytes(got).await, b"from the source");
    assert_eq!(gets_of(&moto, "/source/a.txt"), 1, "the source did not see the first read");
    let got = client.get_object().bucket("moving").key("a.txt").send().await.unwrap();
    assert_eq!(body_bytes(got).await, b"from the source");
    assert_eq!(gets_of(&moto, "/source/a.txt"), 1, "the second read went to the source");
    let got = client.get_object().bucket("moving").key("streamed").send().await.unwrap();
    assert_eq!(got.content_length(), Some(5 << 20));
    assert!(body_bytes(got).await == streamed, "the streamed object's bytes");
    let ranged = client.get_object().bucket("moving").key("big").range("bytes=1000-1999").send().await.unwrap();
    assert_eq!(body_bytes(ranged).await, &big[1000..2000]);
    let ranged = client.get_object().bucket("moving").key("tail").range("bytes=-10").send().await.unwrap();
    assert_eq!(ranged.content_range(), Some("bytes 1048566-1048575/1048576"));
    assert_eq!(body_bytes(ranged).await, &tail[(1 << 20) - 10..]);
    let head = client.head_object().bucket("moving").key("dir/b").send().await.unwrap();
    assert_eq!(head.content_length(), Some(5));
    // A copy whose source key is only in the source.
    client.copy_object().bucket("moving").key("copied").copy_source("moving/copy-me").send().await.unwrap();
    // Local wins over the source.
    let got = client.get_object().bucket("moving").key("p/2").send().await.unwrap();
    assert_eq!(body_bytes(got).await, b"newer here");

    // Deleted here (one never read, one stored by a read): they stay deleted.
    client.delete_object().bucket("moving").key("gone").send().await.unwrap();
    client.delete_object().bucket("moving").key("dir/b").send().await.unwrap();
    for key in ["gone", "dir/b"] {
        let err = client.get_object().bucket("moving").key(key).send().await.unwrap_err();
        assert_eq!(error_status(&err), 404, "{key} came back from the source after its delete");
    }
    // A delete in a KV batch hides the source's copy too.
    let batch = br#"{"ops":[{"op":"delete","key":"p/4"}]}"#;
    let deleted = raw::signed(&node.addr, "POST", "/moving?meridian=batch", &[], batch);
    assert_eq!(deleted.status, 200, "{}", deleted.text());
    let err = client.get_object().bucket("moving").key("p/4").send().await.unwrap_err();
    assert_eq!(error_status(&err), 404, "p/4 came back from the source after its batch delete");
    // A conditional delete that fails (its condition is checked against this bucket, where the
    // key is not) hides nothing.
    let refused = client.delete_object().bucket("moving").key("p/3").if_match("\"not-its-etag\"").send().await;
    assert_eq!(error_status(&refused.unwrap_err()), 404);
    let got = client.get_object().bucket("moving").key("p/3").send().await.unwrap();
    assert_eq!(body_bytes(got).await, b"p/3");

    // Listings merge both sides, page by page (2 entries a page), without the deleted keys.
    let every: Vec<&str> = vec![
        "a.txt",
        "big",
        "copied",
        "copy-me",
        "dir/c",
        "dir/local",
        "dir/sub/d",
        "p/0",
        "p/1",
        "p/2",
        "p/3",
        "streamed",
        "tail",
    ];
    for v1 in [false, true] {
        assert_eq!(list_all(&client, "moving", "", None, v1).await, every, "v1={v1}");
        let rolled = list_all(&client, "moving", "", Some("/"), v1).await;
        let rolled: BTreeSet<String> = rolled.into_iter().collect();
        let expected: BTreeSet<String> =
            ["a.txt", "big", "copied", "copy-me", "streamed", "tail", "dir/", "p/"].map(String::from).into();
        assert_eq!(rolled, expected, "v1={v1}");
        let dir = list_all(&client, "moving", "dir/", Some("/"), v1).await;
        assert_eq!(
            dir.into_iter().collect::<BTreeSet<_>>(),
            ["dir/c", "dir/local", "dir/sub/"].map(String::from).into()
        );
    }

    // The source is gone: what was read once is served from here, with its headers.
    drop(moto);
    let got = client.get_object().bucket("moving").key("a.txt").send().await.unwrap();
    assert_eq!(got.content_type(), Some("text/x-shadow"));
    assert_eq!(got.cache_control(), Some("max-age=77"));
    assert_eq!(got.metadata().unwrap().get("origin").map(String::as_str), Some("moto"));
    assert_eq!(body_bytes(got).await, b"from the source");
    let got = client.get_object().bucket("moving").key("streamed").send().await.unwrap();
    assert!(body_bytes(got).await == streamed, "the streamed object's bytes, read again");
    let got = client.get_object().bucket("moving").key("big").send().await.unwrap();
    assert!(body_bytes(got).await == big, "the object stored by a range GET");
    let got = client.get_object().bucket("moving").key("tail").send().await.unwrap();
    assert!(body_bytes(got).await == tail, "the object stored by a suffix range GET");
    // A key never read still needs the source, which is down: an error, not a 404.
    let err = client.get_object().bucket("moving").key("dir/c").send().await.unwrap_err();
    assert_eq!(error_status(&err), 503);

    // Migration done: the bucket stops consulting the source.
    let (code, out, err) = admin(&node, &["bucket", "shadow", "moving", "--remove"]);
    assert_eq!(code, 0, "{out}{err}");
    let err = client.get_object().bucket("moving").key("dir/c").send().await.unwrap_err();
    assert_eq!(error_status(&err), 404);
    let local = list_all(&client, "moving", "", None, false).await;
    assert_eq!(local, ["a.txt", "big", "copied", "copy-me", "dir/local", "p/2", "p/3", "streamed", "tail"]);
    let got = client.get_object().bucket("moving").key("copied").send().await.unwrap();
    assert_eq!(body_bytes(got).await, b"copy-me");
    assert!(!admin_ok(&node, &["bucket", "list"]).to_string().contains("moto-access-key"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_through_reaches_the_source_and_a_refusal_is_an_error() {
    let moto = Moto::start();
    let source = meridian_s3_client::client(&moto.s3_endpoint(), "test").unwrap();
    source.create_bucket().bucket("source").send().await.unwrap();
    put(&source, "source", "old", b"old bytes".to_vec()).await;
    let node = Server::start();
    let client = node.client();
    client.create_bucket().bucket("both").send().await.unwrap();
    // A source bucket that does not exist is refused at once, naming the source.
    let refused = shadow_command(&node, &moto, "both", "no-such-bucket", true);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && err.contains("shadow source") && err.contains("no-such-bucket"), "{err}");
    shadow(&node, &moto, "both", true);

    client
        .put_object()
        .bucket("both")
        .key("new")
        .content_type("text/x-new")
        .metadata("side", "meridian")
        .body(ByteStream::from_static(b"new bytes"))
        .send()
        .await
        .unwrap();
    let there = source.get_object().bucket("source").key("new").send().await.unwrap();
    assert_eq!(there.content_type(), Some("text/x-new"));
    assert_eq!(there.metadata().unwrap().get("side").map(String::as_str), Some("meridian"));
    assert_eq!(body_bytes(there).await, b"new bytes");

    client.copy_object().bucket("both").key("copied").copy_source("both/new").send().await.unwrap();
    let there = source.get_object().bucket("source").key("copied").send().await.unwrap();
    assert_eq!(body_bytes(there).await, b"new bytes");

    let part = pattern(5 << 20, 3);
    let upload = client.create_multipart_upload().bucket("both").key("parts").send().await.unwrap();
    let id = upload.upload_id().unwrap();
    let mut done = Vec::new();
    for n in 1..=2 {
        let body = if n == 1 { part.clone() } else { b"tail".to_vec() };
        let sent =
            client.upload_part().bucket("both").key("parts").upload_id(id).part_number(n).body(body.into()).send();
        done.push(CompletedPart::builder().part_number(n).e_tag(sent.await.unwrap().e_tag().unwrap()).build());
    }
    let parts = CompletedMultipartUpload::builder().set_parts(Some(done)).build();
    let complete = client.complete_multipart_upload().bucket("both").key("parts").upload_id(id);
    complete.multipart_upload(parts).send().await.unwrap();
    let there = source.head_object().bucket("source").key("parts").send().await.unwrap();
    assert_eq!(there.content_length(), Some((5 << 20) + 4));

    // Deletes reach the source too, whether the key was read here or not.
    client.delete_object().bucket("both").key("new").send().await.unwrap();
    client.delete_object().bucket("both").key("old").send().await.unwrap();
    for key in ["new", "old"] {
        let err = source.head_object().bucket("source").key(key).send().await.unwrap_err();
        assert_eq!(error_status(&err), 404, "{key} is still in the source");
    }

    // The source refuses (its bucket is gone): the client gets an error; the local write stands.
    for key in ["copied", "parts"] {
        source.delete_object().bucket("source").key(key).send().await.unwrap();
    }
    source.delete_bucket().bucket("source").send().await.unwrap();
    let refused = client.put_object().bucket("both").key("late").body(ByteStream::from_static(b"late")).send().await;
    assert_eq!(error_status(&refused.unwrap_err()), 503);
    let err = client.get_object().bucket("both").key("never-here").send().await.unwrap_err();
    assert_eq!(error_status(&err), 503, "a source without its bucket is broken, not a source without the key");
    let (code, out, err) = admin(&node, &["bucket", "shadow", "both", "--remove"]);
    assert_eq!(code, 0, "{out}{err}");
    let got = client.get_object().bucket("both").key("late").send().await.unwrap();
    assert_eq!(body_bytes(got).await, b"late");
}

/// The source dies in the middle of a read-through: the client's read fails and no partial
/// object is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_failing_midway_leaves_no_object_behind() {
    let moto = Moto::start();
    let source = meridian_s3_client::client(&moto.s3_endpoint(), "test").unwrap();
    source.create_bucket().bucket("source").send().await.unwrap();
    // Far more than the socket buffers between moto, the node and the client hold.
    put(&source, "source", "huge", pattern(32 << 20, 4)).await;
    let node = Server::start();
    let client = node.client();
    client.create_bucket().bucket("cut").send().await.unwrap();
    shadow(&node, &moto, "cut", false);

    let mut got = client.get_object().bucket("cut").key("huge").send().await.unwrap();
    let first = got.body.next().await.unwrap().unwrap();
    assert!(!first.is_empty());
    drop(moto);
    let mut received = first.len();
    let broke = loop {
        match got.body.next().await {
            Some(Ok(chunk)) => received += chunk.len(),
            Some(Err(_)) => break true,
            None => break false,
        }
    };
    assert!(broke || received < 32 << 20, "the read did not fail though the source died");

    let err = client.head_object().bucket("cut").key("huge").send().await.unwrap_err();
    assert_eq!(error_status(&err), 503, "a partial object was stored");
    let (code, out, err) = admin(&node, &["bucket", "shadow", "cut", "--remove"]);
    assert_eq!(code, 0, "{out}{err}");
    let err = client.head_object().bucket("cut").key("huge").send().await.unwrap_err();
    assert_eq!(error_status(&err), 404, "a partial object was stored");
}

/// Two nodes on one etcd: a shadow set through one is used by the other, and so are its
/// tombstones and its removal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_of_a_cluster_uses_the_shadow() {
    let moto = Moto::start();
    let source = meridian_s3_client::client(&moto.s3_endpoint(), "test").unwrap();
    source.create_bucket().bucket("source").send().await.unwrap();
    for key in ["read", "gone", "never"] {
        put(&source, "source", key, key.as_bytes().to_vec()).await;
    }
    let etcd = meridian_meta_etcd::testing::EtcdCluster::builder(1).start();
    let tmp = tempfile::tempdir().unwrap();
    let args = cluster_args(&etcd.client_endpoints().join(","), "region-a");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let start = |name: &str| Server::start_in(&tmp.path().join(name), &args, None, None);
    let (a, b) = (start("a"), start("b"));
    a.client().create_bucket().bucket("shared").send().await.unwrap();
    shadow(&a, &moto, "shared", false);
    start_recording(&moto);

    let got = b.client().get_object().bucket("shared").key("read").send().await.unwrap();
    assert_eq!(body_bytes(got).await, b"read");
    let got = a.client().get_object().bucket("shared").key("read").send().await.unwrap();
    assert_eq!(body_bytes(got).await, b"read");
    assert_eq!(gets_of(&moto, "/source/read"), 1, "one read at the source for reads through both nodes");

    a.client().delete_object().bucket("shared").key("gone").send().await.unwrap();
    let err = b.client().get_object().bucket("shared").key("gone").send().await.unwrap_err();
    assert_eq!(error_status(&err), 404, "a key deleted through A came back through B");

    let (code, out, err) = admin(&b, &["bucket", "shadow", "shared", "--remove"]);
    assert_eq!(code, 0, "{out}{err}");
    let err = a.client().get_object().bucket("shared").key("never").send().await.unwrap_err();
    assert_eq!(error_status(&err), 404);
    assert_eq!(gets_of(&moto, "/source/never"), 0);
}
