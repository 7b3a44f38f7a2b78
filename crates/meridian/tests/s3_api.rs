//! The S3 API through aws-sdk-rust against a real `meridian server`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use aws_sdk_s3::primitives::{ByteStream, DateTime};
use aws_sdk_s3::types::{
    ChecksumAlgorithm, ChecksumMode, CompletedMultipartUpload, CompletedPart, Delete, EncodingType, MetadataDirective,
    ObjectIdentifier,
};
use common::{
    SECRET_MARKER, Server, body_bytes, customer_key, error_code, error_status, files_containing, md5_hex, pattern,
    secret_body,
};

const MIB: usize = 1 << 20;

async fn put(client: &aws_sdk_s3::Client, bucket: &str, key: &str, data: &[u8]) -> String {
    let out = client.put_object().bucket(bucket).key(key).body(ByteStream::from(data.to_vec())).send().await.unwrap();
    out.e_tag().unwrap().to_string()
}

async fn get(client: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Vec<u8> {
    body_bytes(client.get_object().bucket(bucket).key(key).send().await.unwrap()).await
}

#[tokio::test]
async fn bucket_lifecycle() {
    let server = Server::start();
    let s3 = server.client();
    s3.create_bucket().bucket("alpha").send().await.unwrap();
    s3.create_bucket().bucket("beta").send().await.unwrap();
    let err = s3.create_bucket().bucket("alpha").send().await.unwrap_err();
    assert_eq!(error_code(&err), "BucketAlreadyOwnedByYou");
    assert_eq!(error_status(&err), 409);

    let names: Vec<String> =
        s3.list_buckets().send().await.unwrap().buckets().iter().filter_map(|b| b.name().map(String::from)).collect();
    assert_eq!(names, ["alpha", "beta"]);
    s3.head_bucket().bucket("alpha").send().await.unwrap();
    let err = s3.head_bucket().bucket("gamma").send().await.unwrap_err();
    assert_eq!(error_status(&err), 404);

    put(&s3, "alpha", "k", b"v").await;
    let err = s3.delete_bucket().bucket("alpha").send().await.unwrap_err();
    assert_eq!(error_code(&err), "BucketNotEmpty");
    assert_eq!(get(&s3, "alpha", "k").await, b"v", "a refused delete leaves the data");
    s3.delete_object().bucket("alpha").key("k").send().await.unwrap();
    s3.delete_bucket().bucket("alpha").send().await.unwrap();
    let err = s3.delete_bucket().bucket("alpha").send().await.unwrap_err();
    assert_eq!(error_code(&err), "NoSuchBucket");
    let err = s3.put_object().bucket("alpha").key("k").body(ByteStream::from_static(b"x")).send().await.unwrap_err();
    assert_eq!(error_code(&err), "NoSuchBucket");

    for bad in ["ab", "Upper", "under_score", "-dash", "192.168.0.1", "a..b"] {
        let err = s3.create_bucket().bucket(bad).send().await.unwrap_err();
        assert_eq!(error_code(&err), "InvalidBucketName", "{bad}");
    }
    let location = s3.get_bucket_location().bucket("beta").send().await.unwrap();
    let constraint = location.location_constraint().map(|c| c.as_str().to_string()).unwrap_or_default();
    // A single node is in us-east-1, reported as an empty constraint; a clustered test node is in
    // region-a.
    let expected = if common::clustered() { "region-a" } else { "" };
    assert_eq!(constraint, expected);
}

#[tokio::test]
async fn put_get_head_delete_with_headers_and_metadata() {
    let server = Server::start();
    let s3 = server.client();
    s3.create_bucket().bucket("data").send().await.unwrap();
    let small = pattern(1000, 1);
    let large = pattern(3 * MIB + 17, 2);
    let expires = DateTime::from_secs(1_900_000_000);
    let out = s3
        .put_object()
        .bucket("data")
        .key("dir/large.bin")
        .body(ByteStream::from(large.clone()))
        .content_type("application/x-test")
        .content_encoding("identity")
        .content_disposition("attachment; filename=\"large.bin\"")
        .content_language("en")
        .cache_control("max-age=60")
        .expires(expires)
        .metadata("color", "blue")
        .metadata("Owner", "Ada")
        .send()
        .await
        .unwrap();
    assert_eq!(out.e_tag().unwrap(), format!("\"{}\"", md5_hex(&large)));
    put(&s3, "data", "small.txt", &small).await;

    let got = s3.get_object().bucket("data").key("dir/large.bin").send().await.unwrap();
    assert_eq!(got.content_type(), Some("application/x-test"));
    assert_eq!(got.content_encoding(), Some("identity"));
    assert_eq!(got.content_disposition(), Some("attachment; filename=\"large.bin\""));
    assert_eq!(got.content_language(), Some("en"));
    assert_eq!(got.cache_control(), Some("max-age=60"));
    assert_eq!(got.expires_string(), Some("Sun, 17 Mar 2030 17:46:40 GMT"));
    assert_eq!(got.content_length(), Some(large.len() as i64));
    let meta = got.metadata().unwrap();
    assert_eq!(meta.get("color").map(String::as_str), Some("blue"));
    assert_eq!(meta.get("owner").map(String::as_str), Some("Ada"), "metadata names are case-insensitive");
    assert_eq!(body_bytes(got).await, large);
    assert_eq!(get(&s3, "data", "small.txt").await, small);

    let head = s3.head_object().bucket("data").key("dir/large.bin").send().await.unwrap();
    assert_eq!(head.content_length(), Some(large.len() as i64));
    assert_eq!(head.e_tag().unwrap(), format!("\"{}\"", md5_hex(&large)));
    assert!(head.last_modified().is_some());

    // Overwrite, then delete.
    put(&s3, "data", "dir/large.bin", b"replaced").await;
    assert_eq!(get(&s3, "data", "dir/large.bin").await, b"replaced");
    let head = s3.head_object().bucket("data").key("dir/large.bin").send().await.unwrap();
    assert!(head.metadata().is_none_or(|m| m.is_empty()), "an overwrite replaces the metadata");
    s3.delete_object().bucket("data").key("dir/large.bin").send().await.unwrap();
    let err = s3.get_object().bucket("data").key("dir/large.bin").send().await.unwrap_err();
    assert_eq!(error_code(&err), "NoSuchKey");
    let err = s3.head_object().bucket("data").key("dir/large.bin").send().await.unwrap_err();
    assert_eq!(error_status(&err), 404);
    // Deleting a missing key succeeds.
    s3.delete_object().bucket("data").key("never-existed").send().await.unwrap();

    // Empty objects and keys with unusual characters.
    put(&s3, "data", "empty", b"").await;
    assert_eq!(get(&s3, "data", "empty").await, b"");
    for key in ["spaces in key", "unicode/ünïcødé/ключ", "plus+and&amp?=", "trailing/", "a//double"] {
        put(&s3, "data", key, key.as_bytes()).await;
        assert_eq!(get(&s3, "data", key).await, key.as_bytes(), "{key}");
    }
}

#[tokio::test]
async fn every_response_carries_the_revision() {
    use common::raw::signed;
    let server = Server::start();
    server.client().create_bucket().bucket("rev").send().await.unwrap();
    let revision = |resp: &common::raw::Response| -> u64 {
        resp.header("x-meridian-revision").expect("x-meridian-revision header").parse().unwrap()
    };
    let put1 = signed(&server.addr, "PUT", "/rev/k", &[], b"1");
    assert_eq!(put1.status, 200);
    let r1 = revision(&put1);
    assert_eq!(revision(&signed(&server.addr, "GET", "/rev/k", &[], b"")), r1, "a read reflects the write it sees");
    let r2 = revision(&signed(&server.addr, "PUT", "/rev/k", &[], b"2"));
    assert!(r2 > r1, "a later write has a higher revision");
    assert_eq!(revision(&signed(&server.addr, "HEAD", "/rev/k", &[], b"")), r2);
    assert!(revision(&signed(&server.addr, "GET", "/rev?list-type=2", &[], b"")) >= r2);
    let r3 = revision(&signed(&server.addr, "DELETE", "/rev/k", &[], b""));
    assert!(r3 > r2);
}

/// 32 clients overwriting one key: none is refused, and a read returns what the write with the
/// highest revision stored.
#[tokio::test]
async fn concurrent_overwrites_of_one_key_all_succeed() {
    let server = Server::start();
    server.client().create_bucket().bucket("hot").send().await.unwrap();
    let writers: Vec<_> = (0..32)
        .map(|w| {
            let addr = server.addr.clone();
            std::thread::spawn(move || {
                (0..8)
                    .map(|n| {
                        let body = format!("writer {w} write {n}").repeat(if n % 2 == 0 { 1 } else { 2000 });
                        let resp = common::raw::signed(&addr, "PUT", "/hot/key", &[], body.as_bytes());
                        (resp, body)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let written: Vec<_> = writers.into_iter().flat_map(|w| w.join().unwrap()).collect();
    let refused: Vec<String> =
        written.iter().filter(|(r, _)| r.status != 200).map(|(r, _)| format!("{} {}", r.status, r.text())).collect();
    assert!(refused.is_empty(), "{} of {} writes refused: {:?}", refused.len(), written.len(), refused.first());
    let revision = |r: &common::raw::Response| r.header("x-meridian-revision").unwrap().parse::<u64>().unwrap();
    let (_, last) = written.iter().max_by_key(|(r, _)| revision(r)).unwrap();
    let read = common::raw::signed(&server.addr, "GET", "/hot/key", &[], b"");
    assert_eq!(read.text(), *last, "the bytes of the last write are read");
}

#[tokio::test]
async fn range_reads() {
    let server = Server::start();
    let s3 = server.client();
    s3.create_bucket().bucket("ranges").send().await.unwrap();
    let data = pattern(100_000, 3);
    put(&s3, "ranges", "obj", &data).await;
    put(&s3, "ranges", "tiny", b"0123456789").await;
    let range = |key: &'static str, r: &'static str| s3.get_object().bucket("ranges").key(key).range(r).send();

    let out = range("obj", "bytes=10-19").await.unwrap();
    assert_eq!(out.content_range(), Some("bytes 10-19/100000"));
    assert_eq!(out.content_length(), Some(10));
    assert_eq!(body_bytes(out).await, &data[10..20]);
    assert_eq!(body_bytes(range("obj", "bytes=99990-").await.unwrap()).await, &data[99_990..]);
    assert_eq!(body_bytes(range("obj", "bytes=-5").await.unwrap()).await, &data[99_995..]);
    assert_eq!(body_bytes(range("obj", "bytes=99999-200000").await.unwrap()).await, &data[99_999..], "clamped");
    assert_eq!(body_bytes(range("tiny", "bytes=2-4").await.unwrap()).await, b"234", "inline objects too");

    let err = range("obj", "bytes=100000-").await.unwrap_err();
    assert_eq!(error_code(&err), "InvalidRange");
    assert_eq!(error_status(&err), 416);
    let raw = common::raw::signed(&server.addr, "GET", "/ranges/obj", &[("range", "bytes=200000-300000".into())], b"");
    assert_eq!(raw.status, 416);
    assert_eq!(raw.header("content-range"), Some("bytes */100000"));
}

#[tokio::test]
async fn conditional_reads() {
    let server = Server::start();
    let s3 = server.client();
    s3.create_bucket().bucket("cond").send().await.unwrap();
    let etag = put(&s3, "cond", "k", b"value").await;
    let head = s3.head_object().bucket("cond").key("k").send().await.unwrap();
    let modified = *head.last_modified().unwrap();
    let before = DateTime::from_secs(modified.secs() - 3600);
    let after = DateTime::from_secs(modified.secs() + 3600);

    s3.get_object().bucket("cond").key("k").if_match(&etag).send().await.unwrap();
    let err = s3.get_object().bucket("cond").key("k").if_match("\"nope\"").send().await.unwrap_err();
    assert_eq!(error_status(&err), 412);
    let err = s3.get_object().bucket("cond").key("k").if_none_match(&etag).send().await.unwrap_err();
    assert_eq!(error_status(&err), 304);
    s3.get_object().bucket("cond").key("k").if_none_match("\"other\"").send().await.unwrap();
    let err = s3.get_object().bucket("cond").key("k").if_modified_since(after).send().await.unwrap_err();
    assert_eq!(error_status(&err), 304);
    s3.get_object().bucket("cond").key("k").if_modified_since(before).send().await.unwrap();
    let err = s3.get_object().bucket("cond").key("k").if_unmodified_since(before).send().await.unwrap_err();
    assert_eq!(error_status(&err), 412);
    s3.get_object().bucket("cond").key("k").if_unmodified_since(after).send().await.unwrap();
    // If-Match true beats a failing If-Unmodified-Since, as in S3.
    s3.get_object().bucket("cond").key("k").if_match(&etag).if_unmodified_since(before).send().await.unwrap();
    let err = s3.head_object().bucket("cond").key("k").if_none_match(&etag).send().await.unwrap_err();
    assert_eq!(error_status(&err), 304);

    // A 304 has no body but carries the validators.
    let raw = common::raw::signed(&server.addr, "GET", "/cond/k", &[("if-none-match", etag.clone())], b"");
    assert_eq!(raw.status, 304);
    assert!(raw.body.is_empty());
    assert_eq!(raw.header("etag"), Some(etag.as_str()));
}

#[tokio::test]
async fn conditional_writes() {
    let server = Server::start();
    let s3 = server.client();
    s3.create_bucket().bucket("condwrite").send().await.unwrap();
    let create = || {
        s3.put_object()
            .bucket("condwrite")
            .key("once")
            .if_none_match("*")
            .body(ByteStream::from_static(b"first"))
            .send()
    };
    create().await.unwrap();
    let err = create().await.unwrap_err();
    assert_eq!(error_status(&err), 412);
    assert_eq!(get(&s3, "condwrite", "once").await, b"first", "a refused write changes nothing");

    let etag = s3.head_object().bucket("condwrite").key("once").send().await.unwrap().e_tag().unwrap().to_string();
    let err = s3
        .put_object()
        .bucket("condwrite")
        .key("once")
        .if_match("\"stale\"")
        .body(ByteStream::from_static(b"x"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_status(&err), 412);
    s3.put_object()
        .bucket("condwrite")
        .key("once")
        .if_match(&etag)
        .body(ByteStream::from_static(b"second"))
        .send()
        .await
        .unwrap();
    assert_eq!(get(&s3, "condwrite", "once").await, b"second");
    let err = s3
        .put_object()
        .bucket("condwrite")
        .key("missing")
        .if_match(&etag)
        .body(ByteStream::from_static(b"x"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_status(&err), 404);

    // Twenty concurrent create-only writes: exactly one wins.
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let s3 = s3.clone();
            tokio::spawn(async move {
                s3.put_object()
                    .bucket("condwrite")
                    .key("race")
                    .if_none_match("*")
                    .body(ByteStream::from(format!("{i}").into_bytes()))
                    .send()
                    .await
            })
        })
        .collect();
    let mut wins = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => wins += 1,
            Err(e) => assert_eq!(error_status(&e), 412),
        }
    }
    assert_eq!(wins, 1);
}

#[tokio::test]
async fn copy_object_with_directives_and_source_conditions() {
    let server = Server::start();
    let s3 = server.client();
    s3.create_bucket().bucket("src").send().await.unwrap();
    s3.create_bucket().bucket("dst").send().await.unwrap();
    let data = pattern(200_000, 4);
    s3.put_object()
        .bucket("src")
        .key("orig")
        .body(ByteStream::from(data.clone()))
        .content_type("text/plain")
        .metadata("a", "1")
        .send()
        .await
        .unwrap();
    let etag = s3.head_object().bucket("src").key("orig").send().await.unwrap().e_tag().unwrap().to_string();

    let out = s3.copy_object().bucket("dst").key("copy").copy_source("src/orig").send().await.unwrap();
    assert_eq!(out.copy_object_result().unwrap().e_tag(), Some(etag.as_str()));
    let head = s3.head_object().bucket("dst").key("copy").send().await.unwrap();
    assert_eq!(head.content_type(), Some("text/plain"));
    assert_eq!(head.metadata().unwrap().get("a").map(String::as_str), Some("1"));
    assert_eq!(get(&s3, "dst", "copy").await, data);

    s3.copy_object()
        .bucket("dst")
        .key("replaced")
        .copy_source("src/orig")
        .metadata_directive(MetadataDirective::Replace)
        .content_type("application/json")
        .metadata("b", "2")
        .send()
        .await
        .unwrap();
    let head = s3.head_object().bucket("dst").key("replaced").send().await.unwrap();
    assert_eq!(head.content_type(), Some("application/json"));
    let meta = head.metadata().unwrap();
    assert_eq!((meta.get("a"), meta.get("b").map(String::as_str)), (None, Some("2")));

    // Copies are independent of their source.
    s3.delete_object().bucket("src").key("orig").send().await.unwrap();
    assert_eq!(get(&s3, "dst", "copy").await, data);

    put(&s3, "src", "k", b"small").await;
    let err = s3
        .copy_object()
        .bucket("dst")
        .key("c2")
        .copy_source("src/k")
        .copy_source_if_match("\"nope\"")
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_status(&err), 412);
    let err =
        s3.copy_object().bucket("dst").key("c2").copy_source("src/k").copy_source_if_none_match(&etag).send().await;
    assert!(err.is_ok(), "if-none-match with another etag passes");
    let small_etag = s3.head_object().bucket("src").key("k").send().await.unwrap().e_tag().unwrap().to_string();
    let err = s3
        .copy_object()
        .bucket("dst")
        .key("c3")
        .copy_source("src/k")
        .copy_source_if_none_match(&small_etag)
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_status(&err), 412);
    let err = s3.copy_object().bucket("src").key("k").copy_source("src/k").send().await.unwrap_err();
    assert_eq!(error_code(&err), "InvalidRequest", "copying onto itself without changes is refused");
    s3.copy_object()
        .bucket("src")
        .key("k")
        .copy_source("src/k")
        .metadata_directive(MetadataDirective::Replace)
        .metadata("touched", "yes")
        .send()
        .await
        .unwrap();
    assert_eq!(get(&s3, "src", "k").await, b"small");
    let err = s3.copy_object().bucket("dst").key("x").copy_source("src/missing").send().await.unwrap_err();
    assert_eq!(error_code(&err), "NoSuchKey");
}

#[tokio::test]
async fn delete_objects_batch() {
    let server = Server::start();
    let s3 = server.client();
    s3.create_bucket().bucket("batch").send().await.unwrap();
    for i in 0..10 {
        put(&s3, "batch", &format!("k{i}"), b"x").await;
    }
    let ids = |keys: &[&str]| {
        Delete::builder()
            .set_objects(Some(keys.iter().map(|k| ObjectIdentifier::builder().key(*k).build().unwrap()).collect()))
            .build()
            .unwrap()
    };
    let out = s3.delete_objects().bucket("batch").delete(ids(&["k0", "k1", "k2", "absent"])).send().await.unwrap();
    let mut deleted: Vec<&str> = out.deleted().iter().filter_map(|d| d.key()).collect();
    deleted.sort();
    assert_eq!(deleted, ["absent", "k0", "k1", "k2"]);
    assert!(out.errors().is_empty());
    let mut quiet = ids(&["k3", "k4"]);
    quiet.quiet = Some(true);
    let out = s3.delete_objects().bucket("batch").delete(quiet).send().await.unwrap();
    assert!(out.deleted().is_empty(), "quiet mode lists only errors");
    let left = s3.list_objects_v2().bucket("batch").send().await.unwrap();
    let keys: Vec<&str> = left.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(keys, ["k5", "k6", "k7", "k8", "k9"]);
}

#[tokio::test]
async fn listing_v1_and_v2() {
    let server = Server::start();
    let s3 = server.client();
    s3.create_bucket().bucket("list").send().await.unwrap();
    let mut keys: Vec<String> = Vec::new();
    for dir in ["a", "b", "c"] {
        for i in 0..25 {
            keys.push(format!("{dir}/{i:03}"));
        }
    }
    keys.extend(["top1".into(), "top2".into(), "with space/é".into()]);
    for key in &keys {
        put(&s3, "list", key, b"x").await;
    }
    keys.sort();

    // v2 pagination without a delimiter sees every key once.
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let out =
            s3.list_objects_v2().bucket("list").max_keys(7).set_continuation_token(token.clone()).send().await.unwrap();
        assert!(out.key_count().unwrap() <= 7);
        seen.extend(out.contents().iter().map(|o| o.key().unwrap().to_string()));
        if !out.is_truncated().unwrap() {
            break;
        }
        token = out.next_continuation_token().map(String::from);
        assert!(token.is_some());
    }
    assert_eq!(seen, keys);

    // Delimiter rolls up prefixes.
    let out = s3.list_objects_v2().bucket("list").delimiter("/").send().await.unwrap();
    let prefixes: Vec<&str> = out.common_prefixes().iter().filter_map(|p| p.prefix()).collect();
    assert_eq!(prefixes, ["a/", "b/", "c/", "with space/"]);
    let objects: Vec<&str> = out.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(objects, ["top1", "top2"]);
    assert_eq!(out.key_count(), Some(6));

    // Pagination across common prefixes never repeats one.
    let mut entries = Vec::new();
    let mut token = None;
    loop {
        let out = s3
            .list_objects_v2()
            .bucket("list")
            .delimiter("/")
            .max_keys(2)
            .set_continuation_token(token)
            .send()
            .await
            .unwrap();
        entries.extend(out.common_prefixes().iter().map(|p| p.prefix().unwrap().to_string()));
        entries.extend(out.contents().iter().map(|o| o.key().unwrap().to_string()));
        if !out.is_truncated().unwrap() {
            break;
        }
        token = out.next_continuation_token().map(String::from);
    }
    entries.sort();
    assert_eq!(entries, ["a/", "b/", "c/", "top1", "top2", "with space/"]);

    let out = s3.list_objects_v2().bucket("list").prefix("b/").start_after("b/020").send().await.unwrap();
    let got: Vec<&str> = out.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(got, ["b/021", "b/022", "b/023", "b/024"]);

    let out = s3.list_objects_v2().bucket("list").prefix("with").encoding_type(EncodingType::Url).send().await.unwrap();
    assert_eq!(out.contents()[0].key(), Some("with%20space/%C3%A9"));

    // v1 with marker.
    let out = s3.list_objects().bucket("list").prefix("c/").max_keys(10).send().await.unwrap();
    assert_eq!(out.contents().len(), 10);
    assert!(out.is_truncated().unwrap());
    let marker = out.next_marker().unwrap().to_string();
    assert_eq!(marker, "c/009");
    let out = s3.list_objects().bucket("list").prefix("c/").marker(marker).send().await.unwrap();
    assert_eq!(out.contents().len(), 15);
    assert!(!out.is_truncated().unwrap());
    let obj = &out.contents()[0];
    assert_eq!(obj.size(), Some(1));
    assert_eq!(obj.e_tag(), Some(format!("\"{}\"", md5_hex(b"x")).as_str()));

    let err = s3.list_objects_v2().bucket("nope").send().await.unwrap_err();
    assert_eq!(error_code(&err), "NoSuchBucket");
}

async fn upload_parts(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    upload_id: &str,
    parts: &[Vec<u8>],
) -> Vec<CompletedPart> {
    let mut done = Vec::new();
    for (i, data) in parts.iter().enumerate() {
        let n = i as i32 + 1;
        let out = s3
            .upload_part()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(n)
            .body(ByteStream::from(data.clone()))
            .send()
            .await
            .unwrap();
        let mut part = CompletedPart::builder().part_number(n).e_tag(out.e_tag().unwrap());
        if let Some(crc) = out.checksum_crc32() {
            part = part.checksum_crc32(crc);
        }
        done.push(part.build());
    }
    done
}

#[tokio::test]
async fn multipart_upload_full_cycle() {
    let server = Server::start();
    let s3 = server.client();
    s3.create_bucket().bucket("multi").send().await.unwrap();
    let parts = vec![pattern(5 * MIB, 10), pattern(5 * MIB, 11), pattern(1234, 12)];
    let create = s3
        .create_multipart_upload()
        .bucket("multi")
        .key("big")
        .content_type("video/mp4")
        .metadata("m", "v")
        .send()
        .await
        .unwrap();
    let upload_id = create.upload_id().unwrap().to_string();

    let listed = s3.list_multipart_uploads().bucket("multi").send().await.unwrap();
    assert_eq!(listed.uploads().len(), 1);
    assert_eq!(listed.uploads()[0].upload_id(), Some(upload_id.as_str()));

    let done = upload_parts(&s3, "multi", "big", &upload_id, &parts).await;
    let listed = s3.list_parts().bucket("multi").key("big").upload_id(&upload_id).send().await.unwrap();
    let sizes: Vec<i64> = listed.parts().iter().map(|p| p.size().unwrap()).collect();
    assert_eq!(sizes, [5 * MIB as i64, 5 * MIB as i64, 1234]);
    let page = s3.list_parts().bucket("multi").key("big").upload_id(&upload_id).max_parts(2).send().await.unwrap();
    assert!(page.is_truncated().unwrap());
    assert_eq!(page.next_part_number_marker(), Some("2"));

    let out = s3
        .complete_multipart_upload()
        .bucket("multi")
        .key("big")
        .upload_id(&upload_id)
        .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(done)).build())
        .send()
        .await
        .unwrap();
    let md5s: Vec<u8> = parts.iter().flat_map(|p| hex::decode(md5_hex(p)).unwrap()).collect();
    assert_eq!(out.e_tag().unwrap(), format!("\"{}-3\"", md5_hex(&md5s)), "multipart etag is md5-of-md5s-N");

    let whole: Vec<u8> = parts.concat();
    let got = s3.get_object().bucket("multi").key("big").send().await.unwrap();
    assert_eq!(got.content_type(), Some("video/mp4"));
    assert_eq!(got.metadata().unwrap().get("m").map(String::as_str), Some("v"));
    assert_eq!(body_bytes(got).await, whole);
    // A range spanning the part boundary.
    let r = s3
        .get_object()
        .bucket("multi")
        .key("big")
        .range(format!("bytes={}-{}", 5 * MIB - 10, 5 * MIB + 9))
        .send()
        .await
        .unwrap();
    assert_eq!(body_bytes(r).await, &whole[5 * MIB - 10..5 * MIB + 10]);
    // GET by part number.
    let p2 = s3.get_object().bucket("multi").key("big").part_number(2).send().await.unwrap();
    assert_eq!(p2.parts_count(), Some(3));
    assert_eq!(body_bytes(p2).await, parts[1]);
    assert!(s3.list_multipart_uploads().bucket("multi").send().await.unwrap().uploads().is_empty());
    let err = s3.list_parts().bucket("multi").key("big").upload_id(&upload_id).send().await.unwrap_err();
    assert_eq!(error_code(&err), "NoSuchUpload");
}

#[tokio::test]
async fn multipart_rules_and_abort() {
    let server = Server::start();
    let s3 = server.client();
    s3.create_bucket().bucket("multi").send().await.unwrap();
    let complete = |upload_id: String, parts: Vec<CompletedPart>| {
        s3.complete_multipart_upload()
            .bucket("multi")
            .key("k")
            .upload_id(upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
            .send()
    };
    let id =
        s3.create_multipart_upload().bucket("multi").key("k").send().await.unwrap().upload_id().unwrap().to_string();
    let small = upload_parts(&s3, "multi", "k", &id, &[pattern(1000, 1), pattern(1000, 2)]).await;
    let err = complete(id.clone(), small.clone()).await.unwrap_err();
    assert_eq!(error_code(&err), "EntityTooSmall", "non-last parts must be at least 5 MiB");
    let mut reversed = small.clone();
    reversed.reverse();
    let err = complete(id.clone(), reversed).await.unwrap_err();
    assert_eq!(error_code(&err), "InvalidPartOrder");
    let wrong = vec![CompletedPart::builder().part_number(1).e_tag("\"0000\"").build()];
    let err = complete(id.clone(), wrong).await.unwrap_err();
    assert_eq!(error_code(&err), "InvalidPart");
    // The last part alone may be small.
    complete(id.clone(), vec![small[0].clone()]).await.unwrap();
    assert_eq!(get(&s3, "multi", "k").await, pattern(1000, 1));

    let id =
        s3.create_multipart_upload().bucket("multi").key("gone").send().await.unwrap().upload_id().unwrap().to_string();
    upload_parts(&s3, "multi", "gone", &id, &[pattern(100, 3)]).await;
    s3.abort_multipart_upload().bucket("multi").key("gone").upload_id(&id).send().await.unwrap();
    let err = s3
        .upload_part()
        .bucket("multi")
        .key("gone")
        .upload_id(&id)
        .part_number(2)
        .body(ByteStream::from_static(b"x"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&err), "NoSuchUpload");
    let err = s3.get_object().bucket("multi").key("gone").send().await.unwrap_err();
    assert_eq!(error_code(&err), "NoSuchKey");
    let err = s3.abort_multipart_upload().bucket("multi").key("gone").upload_id("bogus").send().await.unwrap_err();
    assert_eq!(error_code(&err), "NoSuchUpload");

    // Create-only completion.
    let id =
        s3.create_multipart_upload().bucket("multi").key("k").send().await.unwrap().upload_id().unwrap().to_string();
    let parts = upload_parts(&s3, "multi", "k", &id, &[pattern(10, 5)]).await;
    let err = s3
        .complete_multipart_upload()
        .bucket("multi")
        .key("k")
        .upload_id(&id)
        .if_none_match("*")
        .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts.clone())).build())
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_status(&err), 412);
    assert_eq!(get(&s3, "multi", "k").await, pattern(1000, 1), "the existing object is untouched");
    // The upload survives a refused completion and can complete unconditionally.
    complete(id, parts).await.unwrap();
    assert_eq!(get(&s3, "multi", "k").await, pattern(10, 5));

    let err = s3
        .upload_part()
        .bucket("multi")
        .key("k")
        .upload_id("x")
        .part_number(10001)
        .body(ByteStream::from_static(b"x"))
        .send()
        .await;
    assert!(err.is_err());
}

#[tokio::test]
async fn upload_part_copy() {
    let server = Server::start();
    let s3 = server.client();
    s3.create_bucket().bucket("upc").send().await.unwrap();
    let source = pattern(12 * MIB, 20);
    put(&s3, "upc", "source", &source).await;
    let id =
        s3.create_multipart_upload().bucket("upc").key("dest").send().await.unwrap().upload_id().unwrap().to_string();
    let mut parts = Vec::new();
    for (n, (first, last)) in [(0, 6 * MIB - 1), (6 * MIB, 12 * MIB - 1)].into_iter().enumerate() {
        let out = s3
            .upload_part_copy()
            .bucket("upc")
            .key("dest")
            .upload_id(&id)
            .part_number(n as i32 + 1)
            .copy_source("upc/source")
            .copy_source_range(format!("bytes={first}-{last}"))
            .send()
            .await
            .unwrap();
        let etag = out.copy_part_result().unwrap().e_tag().unwrap().to_string();
        parts.push(CompletedPart::builder().part_number(n as i32 + 1).e_tag(etag).build());
    }
    s3.complete_multipart_upload()
        .bucket("upc")
        .key("dest")
        .upload_id(&id)
        .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
        .send()
        .await
        .unwrap();
    assert_eq!(get(&s3, "upc", "dest").await, source);
}

#[tokio::test]
async fn checksums_are_verified_stored_and_returned() {
    let server = Server::start();
    let s3 = server.client();
    s3.create_bucket().bucket("sums").send().await.unwrap();
    let data = pattern(300_000, 30);
    for algorithm in [
        ChecksumAlgorithm::Crc32,
        ChecksumAlgorithm::Crc32C,
        ChecksumAlgorithm::Crc64Nvme,
        ChecksumAlgorithm::Sha1,
        ChecksumAlgorithm::Sha256,
    ] {
        let key = format!("obj-{}", algorithm.as_str());
        // The SDK streams the body with aws-chunked encoding and sends the checksum as a trailer.
        let put = s3
            .put_object()
            .bucket("sums")
            .key(&key)
            .checksum_algorithm(algorithm.clone())
            .body(ByteStream::from(data.clone()))
            .send()
            .await
            .unwrap();
        let sent = [
            put.checksum_crc32(),
            put.checksum_crc32_c(),
            put.checksum_crc64_nvme(),
            put.checksum_sha1(),
            put.checksum_sha256(),
        ]
        .into_iter()
        .flatten()
        .next()
        .expect("the put response carries the checksum")
        .to_string();
        let got = s3.get_object().bucket("sums").key(&key).checksum_mode(ChecksumMode::Enabled).send().await.unwrap();
        let returned = [
            got.checksum_crc32(),
            got.checksum_crc32_c(),
            got.checksum_crc64_nvme(),
            got.checksum_sha1(),
            got.checksum_sha256(),
        ]
        .into_iter()
        .flatten()
        .next()
        .expect("checksum returned when asked")
        .to_string();
        assert_eq!(returned, sent, "{algorithm:?}");
        // The SDK itself validates the returned checksum against the body it reads.
        assert_eq!(body_bytes(got).await, data);
    }

    // A wrong checksum is refused and the old object stays.
    put(&s3, "sums", "guarded", b"original").await;
    let err = s3
        .put_object()
        .bucket("sums")
        .key("guarded")
        .checksum_crc32("AAAAAA==")
        .body(ByteStream::from_static(b"tampered"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&err), "BadDigest");
    assert_eq!(get(&s3, "sums", "guarded").await, b"original");
    let err = s3
        .put_object()
        .bucket("sums")
        .key("guarded")
        .content_md5("AAAAAAAAAAAAAAAAAAAAAA==")
        .body(ByteStream::from_static(b"tampered"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&err), "BadDigest");
    assert_eq!(get(&s3, "sums", "guarded").await, b"original");
}

#[tokio::test]
async fn multipart_checksums() {
    let server = Server::start();
    let s3 = server.client();
    s3.create_bucket().bucket("mpsum").send().await.unwrap();
    let parts = [pattern(5 * MIB, 40), pattern(MIB, 41)];
    let id = s3
        .create_multipart_upload()
        .bucket("mpsum")
        .key("k")
        .checksum_algorithm(ChecksumAlgorithm::Crc32)
        .send()
        .await
        .unwrap()
        .upload_id()
        .unwrap()
        .to_string();
    let mut done = Vec::new();
    for (i, data) in parts.iter().enumerate() {
        let out = s3
            .upload_part()
            .bucket("mpsum")
            .key("k")
            .upload_id(&id)
            .part_number(i as i32 + 1)
            .checksum_algorithm(ChecksumAlgorithm::Crc32)
            .body(ByteStream::from(data.clone()))
            .send()
            .await
            .unwrap();
        done.push(
            CompletedPart::builder()
                .part_number(i as i32 + 1)
                .e_tag(out.e_tag().unwrap())
                .checksum_crc32(out.checksum_crc32().expect("part checksum"))
                .build(),
        );
    }
    let out = s3
        .complete_multipart_upload()
        .bucket("mpsum")
        .key("k")
        .upload_id(&id)
        .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(done)).build())
        .send()
        .await
        .unwrap();
    assert!(out.checksum_crc32().unwrap().ends_with("-2"), "composite checksum");
    let got = s3.get_object().bucket("mpsum").key("k").send().await.unwrap();
    assert_eq!(body_bytes(got).await, parts.concat());
}

#[tokio::test]
async fn presigned_urls() {
    let server = Server::start();
    let s3 = server.client();
    s3.create_bucket().bucket("pre").send().await.unwrap();
    put(&s3, "pre", "doc", b"presigned body").await;
    let config =
        |secs| aws_sdk_s3::presigning::PresigningConfig::expires_in(std::time::Duration::from_secs(secs)).unwrap();
    let path_of = |uri: &str| uri.splitn(4, '/').nth(3).map(|p| format!("/{p}")).unwrap();

    let req = s3.get_object().bucket("pre").key("doc").presigned(config(60)).await.unwrap();
    let resp = common::raw::send(&server.addr, "GET", &path_of(req.uri()), &[], b"");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, b"presigned body");

    let req = s3.put_object().bucket("pre").key("uploaded").presigned(config(60)).await.unwrap();
    let resp = common::raw::send(&server.addr, "PUT", &path_of(req.uri()), &[], b"from a browser");
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(get(&s3, "pre", "uploaded").await, b"from a browser");

    // Multipart with presigned part URLs, as browsers upload.
    let id =
        s3.create_multipart_upload().bucket("pre").key("mp").send().await.unwrap().upload_id().unwrap().to_string();
    let part_data = pattern(5 * MIB, 50);
    let mut parts = Vec::new();
    for (n, data) in [(1, part_data.clone()), (2, b"tail".to_vec())] {
        let req =
            s3.upload_part().bucket("pre").key("mp").upload_id(&id).part_number(n).presigned(config(60)).await.unwrap();
        let resp = common::raw::send(&server.addr, "PUT", &path_of(req.uri()), &[], &data);
        assert_eq!(resp.status, 200, "{}", resp.text());
        parts.push(CompletedPart::builder().part_number(n).e_tag(resp.header("etag").unwrap()).build());
    }
    s3.complete_multipart_upload()
        .bucket("pre")
        .key("mp")
        .upload_id(&id)
        .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
        .send()
        .await
        .unwrap();
    assert_eq!(get(&s3, "pre", "mp").await, [part_data, b"tail".to_vec()].concat());

    // Expired URLs are refused.
    let req = s3.get_object().bucket("pre").key("doc").presigned(config(1)).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let resp = common::raw::send(&server.addr, "GET", &path_of(req.uri()), &[], b"");
    assert_eq!(resp.status, 403);
    assert_eq!(resp.error_code(), "AccessDenied");
    // A tampered URL is refused.
    let req = s3.get_object().bucket("pre").key("doc").presigned(config(60)).await.unwrap();
    let tampered = path_of(req.uri()).replace("/pre/doc", "/pre/uploaded");
    let resp = common::raw::send(&server.addr, "GET", &tampered, &[], b"");
    assert_eq!(resp.status, 403);
    assert_eq!(resp.error_code(), "SignatureDoesNotMatch");
}

#[tokio::test]
async fn unsupported_operations_say_not_implemented() {
    let server = Server::start();
    let s3 = server.client();
    s3.create_bucket().bucket("notimpl").send().await.unwrap();
    let err = s3.get_bucket_replication().bucket("notimpl").send().await.unwrap_err();
    assert_eq!(error_code(&err), "NotImplemented");
    let err = s3.get_bucket_accelerate_configuration().bucket("notimpl").send().await.unwrap_err();
    assert_eq!(error_code(&err), "NotImplemented");
    let err = s3
        .put_object()
        .bucket("notimpl")
        .key("k")
        .storage_class(aws_sdk_s3::types::StorageClass::Glacier)
        .body(ByteStream::from_static(b"x"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&err), "NotImplemented");
    let err = s3.get_object().bucket("notimpl").key("k").send().await.unwrap_err();
    assert_eq!(error_code(&err), "NoSuchKey", "a refused write stores nothing");
}

#[tokio::test]
async fn lifecycle_configuration() {
    use aws_sdk_s3::types::{
        AbortIncompleteMultipartUpload, BucketLifecycleConfiguration, ExpirationStatus, LifecycleExpiration,
        LifecycleRule, LifecycleRuleFilter, Transition, TransitionStorageClass,
    };
    let server = Server::start();
    let s3 = server.client();
    s3.create_bucket().bucket("lifecycle").send().await.unwrap();
    let err = s3.get_bucket_lifecycle_configuration().bucket("lifecycle").send().await.unwrap_err();
    assert_eq!(error_code(&err), "NoSuchLifecycleConfiguration");
    let rule = LifecycleRule::builder()
        .id("tmp")
        .status(ExpirationStatus::Enabled)
        .filter(LifecycleRuleFilter::builder().prefix("tmp/").build())
        .expiration(LifecycleExpiration::builder().days(7).build())
        .abort_incomplete_multipart_upload(AbortIncompleteMultipartUpload::builder().days_after_initiation(1).build())
        .build()
        .unwrap();
    s3.put_bucket_lifecycle_configuration()
        .bucket("lifecycle")
        .lifecycle_configuration(BucketLifecycleConfiguration::builder().rules(rule).build().unwrap())
        .send()
        .await
        .unwrap();
    let got = s3.get_bucket_lifecycle_configuration().bucket("lifecycle").send().await.unwrap();
    let rules = got.rules();
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].expiration().and_then(|e| e.days()), Some(7));
    assert_eq!(rules[0].abort_incomplete_multipart_upload().and_then(|a| a.days_after_initiation()), Some(1));

    // New objects under the prefix carry the rule's expiry; others none.
    put(&s3, "lifecycle", "tmp/a", b"a").await;
    put(&s3, "lifecycle", "keep/a", b"a").await;
    let head = |key: &'static str| common::raw::signed(&server.addr, "HEAD", &format!("/lifecycle/{key}"), &[], b"");
    let expires: i64 = head("tmp/a").header("x-meridian-expires-at").expect("expiry header").parse().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    assert!((expires - now - 7 * 86_400_000).abs() < 60_000, "expires in 7 days");
    assert!(head("keep/a").header("x-meridian-expires-at").is_none());

    let transition = LifecycleRule::builder()
        .id("cold")
        .status(ExpirationStatus::Enabled)
        .filter(LifecycleRuleFilter::builder().prefix("").build())
        .transitions(Transition::builder().days(30).storage_class(TransitionStorageClass::Glacier).build())
        .build()
        .unwrap();
    let err = s3
        .put_bucket_lifecycle_configuration()
        .bucket("lifecycle")
        .lifecycle_configuration(BucketLifecycleConfiguration::builder().rules(transition).build().unwrap())
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&err), "NotImplemented");
    s3.delete_bucket_lifecycle().bucket("lifecycle").send().await.unwrap();
    let err = s3.get_bucket_lifecycle_configuration().bucket("lifecycle").send().await.unwrap_err();
    assert_eq!(error_code(&err), "NoSuchLifecycleConfiguration");
}

/// A response header of an SDK error.
fn error_header<E, R: std::fmt::Debug>(
    err: &aws_sdk_s3::error::SdkError<E, aws_smithy_runtime_api::http::Response<R>>,
    name: &str,
) -> Option<String> {
    match err {
        aws_sdk_s3::error::SdkError::ServiceError(e) => e.raw().headers().get(name).map(str::to_string),
        _ => None,
    }
}

async fn get_version(s3: &aws_sdk_s3::Client, bucket: &str, key: &str, version: &str) -> Vec<u8> {
    body_bytes(s3.get_object().bucket(bucket).key(key).version_id(version).send().await.unwrap()).await
}

async fn put_version(s3: &aws_sdk_s3::Client, bucket: &str, key: &str, data: &[u8]) -> String {
    let out = s3.put_object().bucket(bucket).key(key).body(ByteStream::from(data.to_vec())).send().await.unwrap();
    out.version_id().unwrap().to_string()
}

async fn enable_versioning(s3: &aws_sdk_s3::Client, bucket: &str, status: aws_sdk_s3::types::BucketVersioningStatus) {
    let config = aws_sdk_s3::types::VersioningConfiguration::builder().status(status).build();
    s3.put_bucket_versioning().bucket(bucket).versioning_configuration(config).send().await.unwrap();
}

#[tokio::test]
async fn versioning_versions_delete_markers_and_copies() {
    use aws_sdk_s3::types::BucketVersioningStatus as Status;
    let server = Server::start();
    let s3 = server.client();
    s3.create_bucket().bucket("ver").send().await.unwrap();
    put(&s3, "ver", "before", b"written before versioning").await;
    let state = s3.get_bucket_versioning().bucket("ver").send().await.unwrap();
    assert!(state.status().is_none(), "never enabled: no status");
    enable_versioning(&s3, "ver", Status::Enabled).await;
    let state = s3.get_bucket_versioning().bucket("ver").send().await.unwrap();
    assert_eq!(state.status(), Some(&Status::Enabled));
    assert_eq!(get_version(&s3, "ver", "before", "null").await, b"written before versioning");

    let big = pattern(MIB, 1);
    let v1 = put_version(&s3, "ver", "k", &big).await;
    let v2 = put_version(&s3, "ver", "k", b"two").await;
    assert_ne!(v1, v2);
    let current = s3.get_object().bucket("ver").key("k").send().await.unwrap();
    assert_eq!(current.version_id(), Some(v2.as_str()));
    assert_eq!(body_bytes(current).await, b"two");
    assert_eq!(get_version(&s3, "ver", "k", &v1).await, big, "an overwritten version keeps its bytes");
    let head = s3.head_object().bucket("ver").key("k").version_id(&v1).send().await.unwrap();
    assert_eq!((head.version_id(), head.content_length()), (Some(v1.as_str()), Some(MIB as i64)));

    // DELETE without a version id: a delete marker hides the key.
    let deleted = s3.delete_object().bucket("ver").key("k").send().await.unwrap();
    assert_eq!(deleted.delete_marker(), Some(true));
    let marker = deleted.version_id().unwrap().to_string();
    let err = s3.get_object().bucket("ver").key("k").send().await.unwrap_err();
    assert_eq!((error_code(&err).as_str(), error_status(&err)), ("NoSuchKey", 404));
    assert_eq!(error_header(&err, "x-amz-delete-marker").as_deref(), Some("true"));
    let err = s3.get_object().bucket("ver").key("k").version_id(&marker).send().await.unwrap_err();
    assert_eq!((error_code(&err).as_str(), error_status(&err)), ("MethodNotAllowed", 405));
    assert_eq!(error_header(&err, "x-amz-version-id"), Some(marker.clone()));
    let listed = s3.list_objects_v2().bucket("ver").send().await.unwrap();
    let keys: Vec<&str> = listed.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(keys, ["before"], "a key whose newest version is a marker is not listed");

    let versions = s3.list_object_versions().bucket("ver").send().await.unwrap();
    let markers: Vec<_> = versions.delete_markers().iter().map(|m| (m.key(), m.version_id(), m.is_latest())).collect();
    assert_eq!(markers, [(Some("k"), Some(marker.as_str()), Some(true))]);
    let objects: Vec<_> =
        versions.versions().iter().map(|v| (v.key(), v.version_id(), v.is_latest(), v.size())).collect();
    assert_eq!(
        objects,
        [
            (Some("before"), Some("null"), Some(true), Some(25)),
            (Some("k"), Some(v2.as_str()), Some(false), Some(3)),
            (Some("k"), Some(v1.as_str()), Some(false), Some(MIB as i64)),
        ]
    );

    // Removing the marker by id brings the key back; copying an old version restores it.
    let removed = s3.delete_object().bucket("ver").key("k").version_id(&marker).send().await.unwrap();
    assert_eq!((removed.delete_marker(), removed.version_id()), (Some(true), Some(marker.as_str())));
    assert_eq!(get(&s3, "ver", "k").await, b"two");
    let copied =
        s3.copy_object().bucket("ver").key("k").copy_source(format!("ver/k?versionId={v1}")).send().await.unwrap();
    assert_eq!(copied.copy_source_version_id(), Some(v1.as_str()));
    let v3 = copied.version_id().unwrap().to_string();
    assert!(![&v1, &v2].contains(&&v3));
    assert_eq!(get(&s3, "ver", "k").await, big);

    // A version deleted by id is gone for good; the next one becomes current.
    s3.delete_object().bucket("ver").key("k").version_id(&v3).send().await.unwrap();
    assert_eq!(get(&s3, "ver", "k").await, b"two");
    let err = s3.get_object().bucket("ver").key("k").version_id(&v3).send().await.unwrap_err();
    assert_eq!(error_code(&err), "NoSuchVersion");
    let err = s3.get_object().bucket("ver").key("k").version_id("not-a-version").send().await.unwrap_err();
    assert_eq!(error_code(&err), "InvalidArgument");

    // Multipart completion makes a version too.
    let upload = s3.create_multipart_upload().bucket("ver").key("mp").send().await.unwrap();
    let upload_id = upload.upload_id().unwrap();
    let parts = upload_parts(&s3, "ver", "mp", upload_id, std::slice::from_ref(&big)).await;
    let done = s3
        .complete_multipart_upload()
        .bucket("ver")
        .key("mp")
        .upload_id(upload_id)
        .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
        .send()
        .await
        .unwrap();
    let mp_version = done.version_id().unwrap();
    assert_eq!(get_version(&s3, "ver", "mp", mp_version).await, big);

    // DeleteObjects by version id, and a bucket with versions left is not empty.
    let ids = [("k", v1.as_str()), ("k", v2.as_str()), ("mp", mp_version), ("before", "null")];
    let objects = ids.iter().map(|(k, v)| ObjectIdentifier::builder().key(*k).version_id(*v).build().unwrap());
    let batch = Delete::builder().set_objects(Some(objects.collect())).build().unwrap();
    let out = s3.delete_objects().bucket("ver").delete(batch).send().await.unwrap();
    let mut gone: Vec<_> = out.deleted().iter().map(|d| (d.key().unwrap(), d.version_id().unwrap())).collect();
    gone.sort();
    let mut expected = ids.to_vec();
    expected.sort();
    assert_eq!(gone, expected);
    assert!(out.errors().is_empty());
    let deleted = s3.delete_object().bucket("ver").key("gone").send().await.unwrap();
    assert_eq!(deleted.delete_marker(), Some(true), "deleting a missing key still leaves a marker");
    let err = s3.delete_bucket().bucket("ver").send().await.unwrap_err();
    assert_eq!(error_code(&err), "BucketNotEmpty");
    let marker = deleted.version_id().unwrap();
    s3.delete_object().bucket("ver").key("gone").version_id(marker).send().await.unwrap();
    let versions = s3.list_object_versions().bucket("ver").send().await.unwrap();
    assert!(versions.versions().is_empty() && versions.delete_markers().is_empty());
    s3.delete_bucket().bucket("ver").send().await.unwrap();
}

#[tokio::test]
async fn versioning_suspended_writes_the_null_version() {
    use aws_sdk_s3::types::BucketVersioningStatus as Status;
    let server = Server::start();
    let s3 = server.client();
    s3.create_bucket().bucket("susp").send().await.unwrap();
    enable_versioning(&s3, "susp", Status::Enabled).await;
    let kept = put_version(&s3, "susp", "k", b"versioned").await;
    enable_versioning(&s3, "susp", Status::Suspended).await;
    let state = s3.get_bucket_versioning().bucket("susp").send().await.unwrap();
    assert_eq!(state.status(), Some(&Status::Suspended));
    assert_eq!(put_version(&s3, "susp", "k", b"null one").await, "null");
    assert_eq!(put_version(&s3, "susp", "k", b"null two").await, "null");
    assert_eq!(get_version(&s3, "susp", "k", "null").await, b"null two");
    let versions = s3.list_object_versions().bucket("susp").send().await.unwrap();
    let ids: Vec<_> = versions.versions().iter().map(|v| (v.version_id().unwrap(), v.is_latest().unwrap())).collect();
    assert_eq!(ids, [("null", true), (kept.as_str(), false)], "a suspended write replaces the null version");
    // A delete while suspended makes a null delete marker, replacing the null version.
    let deleted = s3.delete_object().bucket("susp").key("k").send().await.unwrap();
    assert_eq!((deleted.delete_marker(), deleted.version_id()), (Some(true), Some("null")));
    let versions = s3.list_object_versions().bucket("susp").send().await.unwrap();
    let ids: Vec<_> = versions.versions().iter().map(|v| v.version_id().unwrap()).collect();
    assert_eq!(ids, [kept.as_str()]);
    assert_eq!(versions.delete_markers()[0].version_id(), Some("null"));
    assert_eq!(get_version(&s3, "susp", "k", &kept).await, b"versioned");
    // Never back to unversioned.
    let config = aws_sdk_s3::types::VersioningConfiguration::builder().build();
    let err = s3.put_bucket_versioning().bucket("susp").versioning_configuration(config).send().await.unwrap_err();
    assert_eq!(error_code(&err), "MalformedXML");
}

#[tokio::test]
async fn versioning_listing_pages_with_key_and_version_markers() {
    let server = Server::start();
    let s3 = server.client();
    s3.create_bucket().bucket("pages").send().await.unwrap();
    enable_versioning(&s3, "pages", aws_sdk_s3::types::BucketVersioningStatus::Enabled).await;
    let mut written = Vec::new(); // (key, version id), in listing order: keys ascending, newest first
    for key in ["a", "dir/x", "dir/y", "z"] {
        let mut ids = Vec::new();
        for n in 0..6 {
            ids.push(put_version(&s3, "pages", key, format!("{key} {n}").as_bytes()).await);
        }
        written.extend(ids.into_iter().rev().map(|id| (key.to_string(), id)));
    }
    let (mut seen, mut key_marker, mut version_marker) = (Vec::new(), None::<String>, None::<String>);
    for _ in 0..20 {
        let page = s3
            .list_object_versions()
            .bucket("pages")
            .max_keys(5)
            .set_key_marker(key_marker.clone())
            .set_version_id_marker(version_marker.clone())
            .send()
            .await
            .unwrap();
        assert!(page.versions().len() <= 5);
        for v in page.versions() {
            let latest = seen.last().is_none_or(|(k, _): &(String, String)| k != v.key().unwrap());
            assert_eq!(v.is_latest(), Some(latest), "only a key's first version is latest");
            seen.push((v.key().unwrap().to_string(), v.version_id().unwrap().to_string()));
        }
        if page.is_truncated() != Some(true) {
            break;
        }
        key_marker = page.next_key_marker().map(str::to_string);
        version_marker = page.next_version_id_marker().map(str::to_string);
    }
    assert_eq!(seen, written, "every version once, in order, across pages");
    let rolled = s3.list_object_versions().bucket("pages").delimiter("/").send().await.unwrap();
    let prefixes: Vec<_> = rolled.common_prefixes().iter().filter_map(|p| p.prefix()).collect();
    assert_eq!(prefixes, ["dir/"]);
    assert_eq!(rolled.versions().len(), 12, "a and z, six versions each");
    let under = s3.list_object_versions().bucket("pages").prefix("dir/").key_marker("dir/x").send().await.unwrap();
    assert!(under.versions().iter().all(|v| v.key() == Some("dir/y")) && under.versions().len() == 6);
}

#[tokio::test]
async fn versioning_lifecycle_rules_on_versions() {
    use aws_sdk_s3::types::{
        BucketLifecycleConfiguration, ExpirationStatus, LifecycleExpiration, LifecycleRule, LifecycleRuleFilter,
        NoncurrentVersionExpiration,
    };
    let server = Server::start();
    let s3 = server.client();
    s3.create_bucket().bucket("aging").send().await.unwrap();
    enable_versioning(&s3, "aging", aws_sdk_s3::types::BucketVersioningStatus::Enabled).await;
    let kept = put_version(&s3, "aging", "kept", b"x").await;
    s3.delete_object().bucket("aging").key("kept").send().await.unwrap();
    let lone = s3.delete_object().bucket("aging").key("lone").send().await.unwrap();
    assert_eq!(lone.delete_marker(), Some(true));
    let rule = |id: &str| LifecycleRule::builder().id(id).status(ExpirationStatus::Enabled);
    let markers = rule("markers")
        .filter(LifecycleRuleFilter::builder().prefix("").build())
        .expiration(LifecycleExpiration::builder().expired_object_delete_marker(true).build())
        .noncurrent_version_expiration(
            NoncurrentVersionExpiration::builder().noncurrent_days(30).newer_noncurrent_versions(2).build(),
        )
        .build()
        .unwrap();
    let config = BucketLifecycleConfiguration::builder().rules(markers).build().unwrap();
    s3.put_bucket_lifecycle_configuration().bucket("aging").lifecycle_configuration(config).send().await.unwrap();
    let got = s3.get_bucket_lifecycle_configuration().bucket("aging").send().await.unwrap();
    let stored = &got.rules()[0];
    assert_eq!(stored.expiration().and_then(|e| e.expired_object_delete_marker()), Some(true));
    let noncurrent = stored.noncurrent_version_expiration().unwrap();
    assert_eq!((noncurrent.noncurrent_days(), noncurrent.newer_noncurrent_versions()), (Some(30), Some(2)));

    // Applied when set: the lone marker goes; a marker with a version under it stays.
    let versions = s3.list_object_versions().bucket("aging").send().await.unwrap();
    let markers: Vec<_> = versions.delete_markers().iter().filter_map(|m| m.key()).collect();
    assert_eq!(markers, ["kept"]);
    assert_eq!(versions.versions()[0].version_id(), Some(kept.as_str()));

    let both = rule("both")
        .filter(LifecycleRuleFilter::builder().prefix("").build())
        .expiration(LifecycleExpiration::builder().days(3).expired_object_delete_marker(true).build())
        .build()
        .unwrap();
    let config = BucketLifecycleConfiguration::builder().rules(both).build().unwrap();
    let err = s3
        .put_bucket_lifecycle_configuration()
        .bucket("aging")
        .lifecycle_configuration(config)
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&err), "InvalidRequest");
}

/// SSE-S3, SSE-KMS and SSE-C on PUT/GET/HEAD and ranges, bucket default encryption, copies
/// between modes, multipart with per-part SSE-C and UploadPartCopy; nothing of the plaintext in
/// any file under the node's data directory (nor, clustered, the other regions' caches).
#[tokio::test]
async fn server_side_encryption() {
    use aws_sdk_s3::types::{
        ServerSideEncryption, ServerSideEncryptionByDefault, ServerSideEncryptionConfiguration,
        ServerSideEncryptionRule,
    };
    let keys = tempfile::tempdir().unwrap();
    let keyring = common::sse_keyring(keys.path());
    let server = Server::start_with(&["--sse-keyring", keyring.to_str().unwrap()]);
    let s3 = server.client();
    let b = "sealed";
    s3.create_bucket().bucket(b).send().await.unwrap();

    // SSE-S3: a blob (several sealed chunks) and an inline object; the ETag stays the MD5.
    let big = secret_body(300_000, 1);
    let small = secret_body(200, 2);
    for (key, data) in [("s3/big", &big), ("s3/small", &small)] {
        let put = s3
            .put_object()
            .bucket(b)
            .key(key)
            .server_side_encryption(ServerSideEncryption::Aes256)
            .body(ByteStream::from(data.clone()))
            .send()
            .await
            .unwrap();
        assert_eq!(put.server_side_encryption(), Some(&ServerSideEncryption::Aes256));
        assert_eq!(put.e_tag().unwrap(), format!("\"{}\"", md5_hex(data)));
        let got = s3.get_object().bucket(b).key(key).send().await.unwrap();
        assert_eq!(got.server_side_encryption(), Some(&ServerSideEncryption::Aes256));
        assert!(body_bytes(got).await == *data, "{key} reads back");
        let head = s3.head_object().bucket(b).key(key).send().await.unwrap();
        assert_eq!(head.server_side_encryption(), Some(&ServerSideEncryption::Aes256));
        assert_eq!(head.content_length(), Some(data.len() as i64));
    }
    // Ranges inside one sealed chunk, across chunk boundaries (64 KiB), and at the end.
    for (first, last) in [(10, 19), (65_530, 65_545), (100_000, 250_000), (299_990, 299_999)] {
        let out = s3.get_object().bucket(b).key("s3/big").range(format!("bytes={first}-{last}")).send().await.unwrap();
        assert_eq!(out.content_range(), Some(format!("bytes {first}-{last}/300000").as_str()));
        assert!(body_bytes(out).await == big[first..=last], "range {first}-{last}");
    }
    let out = s3.get_object().bucket(b).key("s3/small").range("bytes=5-9").send().await.unwrap();
    assert!(body_bytes(out).await == small[5..10]);

    // SSE-KMS against the keyring; an unknown key id is refused as AWS KMS does.
    let kms = secret_body(100_000, 3);
    let put = s3
        .put_object()
        .bucket(b)
        .key("kms")
        .server_side_encryption(ServerSideEncryption::AwsKms)
        .ssekms_key_id("app")
        .body(ByteStream::from(kms.clone()))
        .send()
        .await
        .unwrap();
    assert_eq!(put.ssekms_key_id(), Some("app"));
    assert_ne!(put.e_tag().unwrap(), format!("\"{}\"", md5_hex(&kms)), "an SSE-KMS ETag is not the MD5");
    let got = s3.get_object().bucket(b).key("kms").send().await.unwrap();
    assert_eq!((got.server_side_encryption(), got.ssekms_key_id()), (Some(&ServerSideEncryption::AwsKms), Some("app")));
    assert!(body_bytes(got).await == kms);
    let err = s3
        .put_object()
        .bucket(b)
        .key("kms2")
        .server_side_encryption(ServerSideEncryption::AwsKms)
        .ssekms_key_id("nope")
        .body(ByteStream::from_static(b"x"))
        .send()
        .await
        .unwrap_err();
    assert_eq!((error_code(&err).as_str(), error_status(&err)), ("KMS.NotFoundException", 400));

    // SSE-C: the same key opens it; none, or another, is refused as S3 does.
    let (key1, md5_1) = customer_key(1);
    let (key2, md5_2) = customer_key(2);
    let sse_c = secret_body(150_000, 4);
    let put = s3
        .put_object()
        .bucket(b)
        .key("c")
        .sse_customer_algorithm("AES256")
        .sse_customer_key(&key1)
        .sse_customer_key_md5(&md5_1)
        .body(ByteStream::from(sse_c.clone()))
        .send()
        .await
        .unwrap();
    assert_eq!((put.sse_customer_algorithm(), put.sse_customer_key_md5()), (Some("AES256"), Some(md5_1.as_str())));
    let got = s3
        .get_object()
        .bucket(b)
        .key("c")
        .sse_customer_algorithm("AES256")
        .sse_customer_key(&key1)
        .sse_customer_key_md5(&md5_1)
        .range("bytes=70000-70009")
        .send()
        .await
        .unwrap();
    assert_eq!(got.sse_customer_key_md5(), Some(md5_1.as_str()));
    assert!(body_bytes(got).await == sse_c[70_000..70_010]);
    let err = s3.get_object().bucket(b).key("c").send().await.unwrap_err();
    assert_eq!((error_code(&err).as_str(), error_status(&err)), ("InvalidRequest", 400));
    let err = s3
        .get_object()
        .bucket(b)
        .key("c")
        .sse_customer_algorithm("AES256")
        .sse_customer_key(&key2)
        .sse_customer_key_md5(&md5_2)
        .send()
        .await
        .unwrap_err();
    assert_eq!((error_code(&err).as_str(), error_status(&err)), ("AccessDenied", 403));
    let err = s3
        .head_object()
        .bucket(b)
        .key("c")
        .sse_customer_algorithm("AES256")
        .sse_customer_key(&key2)
        .sse_customer_key_md5(&md5_2)
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_status(&err), 403, "HEAD needs the right key too");
    let err = s3
        .put_object()
        .bucket(b)
        .key("bad-md5")
        .sse_customer_algorithm("AES256")
        .sse_customer_key(&key1)
        .sse_customer_key_md5(&md5_2)
        .body(ByteStream::from_static(b"x"))
        .send()
        .await
        .unwrap_err();
    assert_eq!((error_code(&err).as_str(), error_status(&err)), ("InvalidArgument", 400));

    // Copies between modes: SSE-C → SSE-S3 (with the copy-source key), SSE-S3 → SSE-C.
    let err = s3.copy_object().bucket(b).key("c-copy").copy_source(format!("{b}/c")).send().await.unwrap_err();
    assert_eq!(error_status(&err), 400, "copying an SSE-C source needs its key");
    let copied = s3
        .copy_object()
        .bucket(b)
        .key("c-copy")
        .copy_source(format!("{b}/c"))
        .copy_source_sse_customer_algorithm("AES256")
        .copy_source_sse_customer_key(&key1)
        .copy_source_sse_customer_key_md5(&md5_1)
        .server_side_encryption(ServerSideEncryption::Aes256)
        .send()
        .await
        .unwrap();
    assert_eq!(copied.server_side_encryption(), Some(&ServerSideEncryption::Aes256));
    assert!(body_bytes(s3.get_object().bucket(b).key("c-copy").send().await.unwrap()).await == sse_c);
    let copied = s3
        .copy_object()
        .bucket(b)
        .key("big-c")
        .copy_source(format!("{b}/s3/big"))
        .sse_customer_algorithm("AES256")
        .sse_customer_key(&key2)
        .sse_customer_key_md5(&md5_2)
        .send()
        .await
        .unwrap();
    assert_eq!(copied.sse_customer_key_md5(), Some(md5_2.as_str()));
    let got = s3
        .get_object()
        .bucket(b)
        .key("big-c")
        .sse_customer_algorithm("AES256")
        .sse_customer_key(&key2)
        .sse_customer_key_md5(&md5_2)
        .send()
        .await
        .unwrap();
    assert!(body_bytes(got).await == big);

    // Multipart with SSE-C: every part needs the upload's key; UploadPartCopy of an SSE-KMS source.
    let create = s3
        .create_multipart_upload()
        .bucket(b)
        .key("mp")
        .sse_customer_algorithm("AES256")
        .sse_customer_key(&key1)
        .sse_customer_key_md5(&md5_1)
        .send()
        .await
        .unwrap();
    assert_eq!(create.sse_customer_key_md5(), Some(md5_1.as_str()));
    let id = create.upload_id().unwrap();
    let part1 = secret_body(5 * MIB, 5);
    let err = s3
        .upload_part()
        .bucket(b)
        .key("mp")
        .upload_id(id)
        .part_number(1)
        // Refused before the body is read: the node closes lingering, so the SDK reads the answer.
        .body(ByteStream::from(part1.clone()))
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_status(&err), 400, "a part without the upload's SSE-C key");
    let up1 = s3
        .upload_part()
        .bucket(b)
        .key("mp")
        .upload_id(id)
        .part_number(1)
        .sse_customer_algorithm("AES256")
        .sse_customer_key(&key1)
        .sse_customer_key_md5(&md5_1)
        .body(ByteStream::from(part1.clone()))
        .send()
        .await
        .unwrap();
    assert_eq!(up1.sse_customer_key_md5(), Some(md5_1.as_str()));
    let up2 = s3
        .upload_part_copy()
        .bucket(b)
        .key("mp")
        .upload_id(id)
        .part_number(2)
        .copy_source(format!("{b}/kms"))
        .sse_customer_algorithm("AES256")
        .sse_customer_key(&key1)
        .sse_customer_key_md5(&md5_1)
        .send()
        .await
        .unwrap();
    let parts = CompletedMultipartUpload::builder()
        .parts(CompletedPart::builder().part_number(1).e_tag(up1.e_tag().unwrap()).build())
        .parts(CompletedPart::builder().part_number(2).e_tag(up2.copy_part_result().unwrap().e_tag().unwrap()).build())
        .build();
    let done =
        s3.complete_multipart_upload().bucket(b).key("mp").upload_id(id).multipart_upload(parts).send().await.unwrap();
    assert!(done.e_tag().unwrap().ends_with("-2\""));
    let whole = [part1.as_slice(), kms.as_slice()].concat();
    let got = s3
        .get_object()
        .bucket(b)
        .key("mp")
        .sse_customer_algorithm("AES256")
        .sse_customer_key(&key1)
        .sse_customer_key_md5(&md5_1)
        .range(format!("bytes={}-{}", 5 * MIB - 10, 5 * MIB + 9))
        .send()
        .await
        .unwrap();
    assert!(body_bytes(got).await == whole[5 * MIB - 10..5 * MIB + 10], "a range across the parts");
    let err = s3.get_object().bucket(b).key("mp").send().await.unwrap_err();
    assert_eq!(error_status(&err), 400);

    // Default bucket encryption applies to writes that ask for nothing.
    let rule = ServerSideEncryptionRule::builder()
        .apply_server_side_encryption_by_default(
            ServerSideEncryptionByDefault::builder()
                .sse_algorithm(ServerSideEncryption::AwsKms)
                .kms_master_key_id("app")
                .build()
                .unwrap(),
        )
        .build();
    let config = ServerSideEncryptionConfiguration::builder().rules(rule).build().unwrap();
    s3.put_bucket_encryption().bucket(b).server_side_encryption_configuration(config).send().await.unwrap();
    let got = s3.get_bucket_encryption().bucket(b).send().await.unwrap();
    let rule = &got.server_side_encryption_configuration().unwrap().rules()[0];
    let default = rule.apply_server_side_encryption_by_default().unwrap();
    assert_eq!((default.sse_algorithm(), default.kms_master_key_id()), (&ServerSideEncryption::AwsKms, Some("app")));
    let put =
        s3.put_object().bucket(b).key("by-default").body(ByteStream::from(secret_body(5000, 6))).send().await.unwrap();
    assert_eq!((put.server_side_encryption(), put.ssekms_key_id()), (Some(&ServerSideEncryption::AwsKms), Some("app")));
    s3.delete_bucket_encryption().bucket(b).send().await.unwrap();
    let err = s3.get_bucket_encryption().bucket(b).send().await.unwrap_err();
    assert_eq!(error_code(&err), "ServerSideEncryptionConfigurationNotFoundError");
    let control = b"MERIDIAN-SSE-CONTROL-UNENCRYPTED;".repeat(3000);
    let put = s3.put_object().bucket(b).key("plain").body(ByteStream::from(control.clone())).send().await.unwrap();
    assert_eq!(put.server_side_encryption(), None);

    // No plaintext anywhere on disk: blobs, metadata (inline objects), caches of other regions.
    // The unencrypted control object shows that the scan finds plaintext where there is some.
    let root = server.data.parent().unwrap();
    assert!(!files_containing(root, &control[..64]).is_empty(), "the scan finds the unencrypted object");
    assert_eq!(files_containing(root, SECRET_MARKER), Vec::<std::path::PathBuf>::new(), "plaintext on disk");
}
