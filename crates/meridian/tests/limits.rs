//! Size limits and bounded memory: a 5 GiB object streams in and out without growing the
//! server's memory, and requests over the 5 GiB limit are refused before their body is read.

mod common;

use std::pin::Pin;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use aws_sdk_s3::config::StalledStreamProtectionConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::primitives::ByteStream;
use bytes::{Bytes, BytesMut};
use common::{Server, pattern, raw, run_with_timeout};
use md5::Digest as _;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// S3's largest single PUT and largest part.
const MAX_PUT: u64 = 5 * GIB;
/// How much the server's peak RSS may grow while a 5 GiB object goes in and out.
const RSS_GROWTH_LIMIT_KIB: u64 = 64 * 1024;

/// Free space of the file system holding `dir`, in bytes (from `df`).
fn free_bytes(dir: &std::path::Path) -> u64 {
    let out = run_with_timeout(Command::new("df").arg("-Pk").arg(dir), Duration::from_secs(30));
    assert!(out.status.success(), "df failed: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().nth(1).expect("df output line");
    let available_kib: u64 = line
        .split_whitespace()
        .nth(3)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("cannot read free space from df: {text}"));
    available_kib * 1024
}

/// A request body of `len` bytes made on the fly, 1 MiB at a time (each MiB stamped with its
/// index, so a reordered or repeated chunk changes the MD5), hashing what it hands out.
struct GeneratedBody {
    block: Bytes,
    remaining: u64,
    index: u64,
    md5: Arc<Mutex<md5::Md5>>,
}

impl GeneratedBody {
    fn chunk(block: &[u8], index: u64, len: usize) -> Bytes {
        let mut chunk = BytesMut::from(&block[..len]);
        let stamp = index.to_le_bytes();
        let n = stamp.len().min(len);
        chunk[..n].copy_from_slice(&stamp[..n]);
        chunk.freeze()
    }
}

impl http_body::Body for GeneratedBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let len = self.remaining.min(self.block.len() as u64) as usize;
        let chunk = Self::chunk(&self.block, self.index, len);
        self.md5.lock().expect("md5 lock").update(&chunk);
        self.remaining -= len as u64;
        self.index += 1;
        Poll::Ready(Some(Ok(http_body::Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_five_gib_object_streams_in_bounded_memory() {
    let server = Server::start();
    let free = free_bytes(&server.data);
    assert!(
        free >= 12 * GIB,
        "this test writes a 5 GiB object and needs at least 12 GiB free on the file system of \
         {}, but only {:.1} GiB is free: free some space or point TMPDIR at a bigger disk",
        server.data.display(),
        free as f64 / GIB as f64
    );
    let s3 = aws_sdk_s3::Client::from_conf(
        server
            .client()
            .config()
            .to_builder()
            // Back-pressure from a slow disk may pause the upload for a while; the operation
            // timeout still bounds the whole request.
            .stalled_stream_protection(StalledStreamProtectionConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .operation_timeout(Duration::from_secs(480))
                    .build(),
            )
            .build(),
    );
    s3.create_bucket().bucket("big").send().await.unwrap();
    // Warm up the paths a large object takes (blob files, streaming reads) before measuring.
    let warm = pattern(3 * MIB as usize, 1);
    s3.put_object().bucket("big").key("warm").body(ByteStream::from(warm.clone())).send().await.unwrap();
    let got = common::body_bytes(s3.get_object().bucket("big").key("warm").send().await.unwrap()).await;
    assert!(got == warm);
    let (rss_before, peak_before) = server.rss_kib();

    let md5 = Arc::new(Mutex::new(md5::Md5::new()));
    let body =
        GeneratedBody { block: Bytes::from(pattern(MIB as usize, 2)), remaining: MAX_PUT, index: 0, md5: md5.clone() };
    let started = Instant::now();
    let put = s3
        .put_object()
        .bucket("big")
        .key("five-gib")
        .content_length(MAX_PUT as i64)
        .body(ByteStream::from_body_1_x(body))
        .send()
        .await
        .expect("streamed 5 GiB PUT");
    let put_time = started.elapsed();
    let sent_md5 = hex::encode(md5.lock().expect("lock").clone().finalize());
    assert_eq!(
        put.e_tag(),
        Some(format!("\"{sent_md5}\"").as_str()),
        "the ETag of a single PUT is the MD5 of what was sent"
    );
    let (_, peak_after_put) = server.rss_kib();

    let head = s3.head_object().bucket("big").key("five-gib").send().await.unwrap();
    assert_eq!(head.content_length(), Some(MAX_PUT as i64));

    let started = Instant::now();
    let mut out = s3.get_object().bucket("big").key("five-gib").send().await.unwrap();
    assert_eq!(out.content_length(), Some(MAX_PUT as i64));
    let mut hasher = md5::Md5::new();
    let mut received: u64 = 0;
    while let Some(chunk) = out.body.try_next().await.expect("GET body") {
        hasher.update(&chunk);
        received += chunk.len() as u64;
    }
    let get_time = started.elapsed();
    assert_eq!(received, MAX_PUT, "GET returned every byte");
    assert_eq!(hex::encode(hasher.finalize()), sent_md5, "GET returned the bytes that were PUT");
    let (rss_after, peak_after) = server.rss_kib();
    println!(
        "5 GiB PUT in {put_time:.1?}, GET in {get_time:.1?}; server RSS {rss_before} KiB -> \
         {rss_after} KiB, peak {peak_before} KiB -> {peak_after_put} KiB after PUT -> \
         {peak_after} KiB after GET"
    );
    assert!(
        peak_after.saturating_sub(peak_before) < RSS_GROWTH_LIMIT_KIB,
        "the server's peak RSS grew by {} KiB while a 5 GiB object went in and out (limit {} \
         KiB): large bodies must stream, not buffer",
        peak_after.saturating_sub(peak_before),
        RSS_GROWTH_LIMIT_KIB
    );

    s3.delete_object().bucket("big").key("five-gib").send().await.unwrap();
}

/// Headers for a signed request that announces `len` body bytes and sends none of them.
fn oversized_headers(server: &Server, method: &str, path: &str, len: u64) -> Vec<(String, String)> {
    raw::sign_unsigned_payload(&server.addr, method, path, &[("content-length", len.to_string())])
}

/// The same as current SDKs send it: `aws-chunked` with a CRC32 trailer, where the object size
/// is `x-amz-decoded-content-length` and Content-Length counts the chunk framing too.
fn oversized_chunked_headers(server: &Server, method: &str, path: &str, len: u64) -> Vec<(String, String)> {
    // 64 KiB chunks: "10000\r\n" + data + "\r\n", then "0\r\n", the trailer and "\r\n".
    let chunks = len.div_ceil(64 << 10);
    let trailer = "x-amz-checksum-crc32:AAAAAA==\r\n";
    let encoded = len + chunks * 9 + 3 + trailer.len() as u64 + 2;
    raw::sign_streaming(
        &server.addr,
        method,
        path,
        &[
            ("content-length", encoded.to_string()),
            ("content-encoding", "aws-chunked".to_string()),
            ("x-amz-decoded-content-length", len.to_string()),
            ("x-amz-trailer", "x-amz-checksum-crc32".to_string()),
            ("x-amz-sdk-checksum-algorithm", "CRC32".to_string()),
        ],
        aws_sigv4::http_request::SignableBody::StreamingUnsignedPayloadTrailer,
    )
}

/// Sends the head of an oversized request and requires a quick EntityTooLarge: the server must
/// refuse from the declared length, without waiting for (or reading) the body.
fn assert_refused_before_body(server: &Server, method: &str, path: &str) {
    assert_refused(server, method, path, oversized_headers(server, method, path, MAX_PUT + 1));
    assert_refused(server, method, path, oversized_chunked_headers(server, method, path, MAX_PUT + 1));
}

fn assert_refused(server: &Server, method: &str, path: &str, headers: Vec<(String, String)>) {
    let started = Instant::now();
    let response =
        raw::send_head_only(&server.addr, method, path, &headers, Duration::from_secs(10)).unwrap_or_else(|| {
            panic!(
                "{method} {path} announcing 5 GiB + 1 byte got no answer within 10 s: the server \
             waits for a body it should refuse"
            )
        });
    let elapsed = started.elapsed();
    assert_eq!(
        (response.status, response.error_code().as_str()),
        (400, "EntityTooLarge"),
        "{method} {path} with {headers:?}: {}",
        response.text()
    );
    assert!(elapsed < Duration::from_secs(5), "the refusal took {elapsed:?}");
}

#[tokio::test]
async fn oversized_put_and_part_are_refused_before_the_body() {
    let server = Server::start();
    let s3 = server.client();
    s3.create_bucket().bucket("limits").send().await.unwrap();

    assert_refused_before_body(&server, "PUT", "/limits/too-big");
    let err = s3.head_object().bucket("limits").key("too-big").send().await.unwrap_err();
    assert_eq!(common::error_status(&err), 404, "nothing was stored");

    let upload = s3.create_multipart_upload().bucket("limits").key("parts").send().await.unwrap();
    let id = upload.upload_id().unwrap();
    let encoded: String = id
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    assert_refused_before_body(&server, "PUT", &format!("/limits/parts?partNumber=1&uploadId={encoded}"));
    let parts = s3.list_parts().bucket("limits").key("parts").upload_id(id).send().await.unwrap();
    assert!(parts.parts().is_empty(), "no part was stored");

    // Exactly at the limit is not refused up front: the server starts reading the body. (The
    // connection is dropped after the head; nothing is stored.)
    for headers in [
        oversized_headers(&server, "PUT", "/limits/at-limit", MAX_PUT),
        oversized_chunked_headers(&server, "PUT", "/limits/at-limit", MAX_PUT),
    ] {
        let early = raw::send_head_only(&server.addr, "PUT", "/limits/at-limit", &headers, Duration::from_secs(2));
        assert!(early.is_none(), "a PUT of exactly 5 GiB must be accepted for reading, got {early:?}");
    }

    // The server is still healthy.
    s3.put_object().bucket("limits").key("small").body(ByteStream::from_static(b"fine")).send().await.unwrap();
}
