//! Bad input gets the right S3 error and never changes stored data.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use aws_sdk_s3::primitives::ByteStream;
use common::raw::{send, signed, signed_with};
use common::{ACCESS_KEY, Server, body_bytes, client_for, error_code, error_status};

async fn setup() -> (Server, aws_sdk_s3::Client) {
    let server = Server::start();
    let s3 = server.client();
    s3.create_bucket().bucket("guard").send().await.unwrap();
    s3.put_object().bucket("guard").key("keep").body(ByteStream::from_static(b"precious")).send().await.unwrap();
    (server, s3)
}

async fn assert_untouched(s3: &aws_sdk_s3::Client) {
    let out = s3.get_object().bucket("guard").key("keep").send().await.unwrap();
    assert_eq!(body_bytes(out).await, b"precious");
    let listed = s3.list_objects_v2().bucket("guard").send().await.unwrap();
    let keys: Vec<&str> = listed.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(keys, ["keep"], "nothing was added or removed");
}

#[tokio::test]
async fn wrong_credentials_are_refused() {
    let (server, s3) = setup().await;
    let wrong_secret = client_for(&server.endpoint, ACCESS_KEY, "not-the-secret");
    let err = wrong_secret
        .put_object()
        .bucket("guard")
        .key("keep")
        .body(ByteStream::from_static(b"evil"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&err), "SignatureDoesNotMatch");
    assert_eq!(error_status(&err), 403);
    let err = wrong_secret.get_object().bucket("guard").key("keep").send().await.unwrap_err();
    assert_eq!(error_code(&err), "SignatureDoesNotMatch");

    let unknown = client_for(&server.endpoint, "AKIDUNKNOWN", "whatever");
    let err = unknown.list_buckets().send().await.unwrap_err();
    assert_eq!(error_code(&err), "InvalidAccessKeyId");
    assert_eq!(error_status(&err), 403);

    // Anonymous requests are refused: no bucket is public by default.
    for (method, path) in
        [("GET", "/guard/keep"), ("PUT", "/guard/anon"), ("GET", "/guard"), ("GET", "/"), ("DELETE", "/guard/keep")]
    {
        let resp = send(&server.addr, method, path, &[], b"");
        assert_eq!(resp.status, 403, "{method} {path}");
        assert_eq!(resp.error_code(), "AccessDenied", "{method} {path}");
    }
    // The raw signer itself works: the refusals above are about the credentials.
    let good = signed_with(&server.addr, "PUT", "/guard/x", &[], b"abc", ACCESS_KEY, common::SECRET_KEY);
    assert_eq!(good.status, 200);
    s3.delete_object().bucket("guard").key("x").send().await.unwrap();
    assert_untouched(&s3).await;
}

#[tokio::test]
async fn tampered_payload_and_clock_skew_are_refused() {
    let (server, s3) = setup().await;
    // Sign one body, send another of the same length.
    let resp = tampered_put(&server.addr, "/guard/keep", b"precious!", b"tampered!");
    assert_eq!(resp.status, 400, "{}", resp.text());
    assert_eq!(resp.error_code(), "XAmzContentSHA256Mismatch");

    // A request dated 20 minutes ago is outside the 15-minute window.
    let old = time_minus_minutes(20);
    let resp = signed(&server.addr, "GET", "/guard/keep", &[("x-amz-date", old)], b"");
    assert_eq!(resp.status, 403, "{}", resp.text());
    assert!(
        ["RequestTimeTooSkewed", "AccessDenied", "SignatureDoesNotMatch"].contains(&resp.error_code().as_str()),
        "{}",
        resp.text()
    );
    assert_untouched(&s3).await;
}

/// A PUT whose signature (and declared payload hash) covers `signed_body` but which sends
/// `sent_body`.
fn tampered_put(addr: &str, path: &str, signed_body: &[u8], sent_body: &[u8]) -> common::raw::Response {
    let headers = common::raw::sign_headers(addr, "PUT", path, &[], signed_body, ACCESS_KEY, common::SECRET_KEY);
    let refs: Vec<(&str, String)> = headers.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    send(addr, "PUT", path, &refs, sent_body)
}

fn time_minus_minutes(minutes: u64) -> String {
    let t = std::time::SystemTime::now() - std::time::Duration::from_secs(minutes * 60);
    let dt = aws_smithy_types::DateTime::from(t);
    let iso = dt.fmt(aws_smithy_types::date_time::Format::DateTime).unwrap();
    // 2024-01-01T00:00:00Z -> 20240101T000000Z
    iso.replace(['-', ':'], "").split('.').next().unwrap().trim_end_matches('Z').to_string() + "Z"
}

#[tokio::test]
async fn malformed_xml_is_refused_without_side_effects() {
    let (server, s3) = setup().await;
    for body in [&b"<Delete><Object><Key>keep</Key>"[..], b"not xml at all", b"<Delete></Wrong>"] {
        let resp = signed(&server.addr, "POST", "/guard?delete", &[("content-md5", content_md5(body))], body);
        assert_eq!(resp.status, 400, "{}", resp.text());
        assert_eq!(resp.error_code(), "MalformedXML", "{}", resp.text());
    }
    let upload = s3.create_multipart_upload().bucket("guard").key("mp").send().await.unwrap();
    let id = upload.upload_id().unwrap();
    let resp =
        signed(&server.addr, "POST", &format!("/guard/mp?uploadId={id}"), &[], b"<CompleteMultipartUpload><Part>");
    assert_eq!(resp.status, 400);
    assert_eq!(resp.error_code(), "MalformedXML");
    s3.abort_multipart_upload().bucket("guard").key("mp").upload_id(id).send().await.unwrap();
    assert_untouched(&s3).await;
}

fn content_md5(body: &[u8]) -> String {
    use base64::Engine;
    use md5::Digest;
    base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(body))
}

#[tokio::test]
async fn keys_over_1024_bytes_are_refused() {
    let (_server, s3) = setup().await;
    let long = "k".repeat(1025);
    let err = s3.put_object().bucket("guard").key(&long).body(ByteStream::from_static(b"x")).send().await.unwrap_err();
    assert_eq!(error_code(&err), "KeyTooLongError");
    assert_eq!(error_status(&err), 400);
    let exactly = "k".repeat(1024);
    s3.put_object().bucket("guard").key(&exactly).body(ByteStream::from_static(b"x")).send().await.unwrap();
    s3.delete_object().bucket("guard").key(&exactly).send().await.unwrap();
    assert_untouched(&s3).await;
}

#[tokio::test]
async fn bad_ranges_parts_and_arguments() {
    let (server, s3) = setup().await;
    let err = s3.get_object().bucket("guard").key("keep").range("bytes=8-").send().await.unwrap_err();
    assert_eq!(error_code(&err), "InvalidRange");
    let err = s3.get_object().bucket("guard").key("keep").part_number(2).send().await.unwrap_err();
    assert_eq!(error_status(&err), 416);
    let err = s3.list_objects_v2().bucket("guard").continuation_token("%%%not-a-token").send().await.unwrap_err();
    assert_eq!(error_code(&err), "InvalidArgument");
    let resp = signed(&server.addr, "GET", "/guard?list-type=2&max-keys=-1", &[], b"");
    assert_eq!(resp.status, 400);
    let err = s3
        .put_object()
        .bucket("guard")
        .key("keep")
        .checksum_sha256("not base64!!")
        .body(ByteStream::from_static(b"evil"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_status(&err), 400);
    let resp = signed(&server.addr, "PUT", "/guard/keep", &[("x-amz-meta-big", "v".repeat(3000))], b"evil");
    assert_eq!(resp.status, 400, "user metadata over 2 KiB is refused");
    assert_untouched(&s3).await;
}

#[tokio::test]
async fn too_many_headers_are_refused() {
    let (server, s3) = setup().await;
    let headers: Vec<(String, String)> = (0..150).map(|i| (format!("x-filler-{i}"), "v".into())).collect();
    let refs: Vec<(&str, String)> = headers.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let resp = send(&server.addr, "GET", "/guard/keep", &refs, b"");
    assert_eq!(resp.status, 431, "too many headers");
    assert_untouched(&s3).await;
}

/// A PUT refused before its body is read, sent with `Expect: 100-continue`: the client gets the
/// S3 error without `100 Continue`, and bytes it sends next (here its next request, at once, as
/// a client that skips the refused body does) are never read as the body or answered as a
/// bare `400 Bad Request`: the connection closes after the answer.
#[tokio::test]
async fn a_refused_expect_continue_put_answers_once_and_closes() {
    let (server, _s3) = setup().await;
    let next = format!("GET /guard/keep HTTP/1.1\r\nHost: {}\r\n\r\n", server.addr);
    for round in 0..5 {
        let body = b"0123456789";
        let expect = ("expect", "100-continue".to_string());
        // Anonymous: AccessDenied; signed, to a bucket that does not exist: NoSuchBucket.
        let mut signed = common::raw::sign_headers(
            &server.addr,
            "PUT",
            "/no-such-bucket/k",
            &[],
            body,
            ACCESS_KEY,
            common::SECRET_KEY,
        );
        signed.push(("expect".to_string(), "100-continue".to_string()));
        let signed: Vec<(&str, String)> = signed.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        for (path, headers, code) in
            [("/guard/k", vec![expect.clone()], "AccessDenied"), ("/no-such-bucket/k", signed, "NoSuchBucket")]
        {
            let (resp, answers) =
                common::raw::head_then(&server.addr, "PUT", path, &headers, body.len(), next.as_bytes());
            assert_eq!(resp.error_code(), code, "round {round}: {}", resp.text());
            assert_eq!(resp.header("connection"), Some("close"), "round {round}: the close is not announced");
            assert_eq!(answers, 1, "round {round}: the next bytes were answered as a request");
        }
    }
    assert_untouched(&server.client()).await;
}

/// PUTs with 5 to 32 MiB bodies refused before the body is read, four at a time: aws-sdk-rust
/// gets the S3 error (not an I/O error from a reset while it was still sending), and the client
/// keeps working.
#[tokio::test]
async fn a_refused_put_with_a_large_body_gets_its_s3_error() {
    let (_server, s3) = setup().await;
    for round in 0..4 {
        for mib in [5, 8, 32] {
            let refused = (0..4).map(|_| {
                s3.put_object().bucket("no-such-bucket").key("k").body(ByteStream::from(vec![7u8; mib << 20])).send()
            });
            for result in futures::future::join_all(refused).await {
                let err = result.unwrap_err();
                assert_eq!(error_code(&err), "NoSuchBucket", "round {round}, {mib} MiB");
                assert_eq!(error_status(&err), 404, "round {round}, {mib} MiB");
            }
            s3.put_object().bucket("guard").key("after").body(ByteStream::from_static(b"fine")).send().await.unwrap();
        }
    }
    s3.delete_object().bucket("guard").key("after").send().await.unwrap();
    assert_untouched(&s3).await;
}
