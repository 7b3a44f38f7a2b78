//! The hot-path signer agrees with AWS's own `aws-sigv4` crate on S3-style
//! requests, and costs less per request (the `#[ignore]`d timing, used for
//! docs/decisions/020-bench-client.md:
//! `cargo test --release -p meridian-bench --test sigv4_crosscheck -- --ignored --nocapture`).

#![allow(clippy::unwrap_used)]

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings, UriPathNormalizationMode,
    sign,
};
use aws_sigv4::sign::v4;
use meridian_bench::sigv4::{Signer, UNSIGNED_PAYLOAD, amz_date, canonical_query, uri_encode};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const AK: &str = "AKIAIOSFODNN7EXAMPLE";
const SK: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
const HOST: &str = "127.0.0.1:9000";

fn s3_settings() -> SigningSettings {
    let mut s = SigningSettings::default();
    s.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    s.percent_encoding_mode = PercentEncodingMode::Single;
    s.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    s
}

/// aws-sigv4's signature for `method path?query` at `t`.
fn reference(method: &str, path: &str, query: &[(&str, &str)], extra: &[(&str, &str)], t: SystemTime) -> String {
    let identity = Credentials::new(AK, SK, None, None, "test").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("s3")
        .time(t)
        .settings(s3_settings())
        .build()
        .unwrap()
        .into();
    let mut uri = format!("http://{HOST}{path}");
    if !query.is_empty() {
        uri.push('?');
        uri.push_str(&canonical_query(query));
    }
    let mut headers = vec![("host", HOST)];
    headers.extend_from_slice(extra);
    let req = SignableRequest::new(method, uri, headers.into_iter(), SignableBody::UnsignedPayload).unwrap();
    let out = sign(req, &params).unwrap();
    out.signature().to_owned()
}

fn ours(
    signer: &Signer,
    method: &str,
    path: &str,
    query: &[(&str, &str)],
    extra: &[(&str, &str)],
    t: SystemTime,
) -> String {
    let date = amz_date(time::OffsetDateTime::from(t));
    let mut headers = vec![("host", HOST), ("x-amz-date", date.as_str()), ("x-amz-content-sha256", UNSIGNED_PAYLOAD)];
    headers.extend_from_slice(extra);
    signer.sign(method, path, query, &headers, UNSIGNED_PAYLOAD, &date).signature
}

#[test]
fn agrees_with_aws_sigv4_on_s3_requests() {
    let signer = Signer::new(AK, SK, "us-east-1", "s3");
    let t = UNIX_EPOCH + Duration::from_secs(1_767_225_600); // 2026-01-01
    let key = format!("/bench/{}", uri_encode("meridian-bench/ab12/p000000001", true));
    let odd = format!("/bench/{}", uri_encode("dir/with space+plus&amp=é~", true));
    type Pairs<'a> = Vec<(&'a str, &'a str)>;
    let cases: Vec<(&str, String, Pairs, Pairs)> = vec![
        ("PUT", key.clone(), vec![], vec![]),
        ("GET", key.clone(), vec![], vec![]),
        ("HEAD", odd.clone(), vec![], vec![]),
        ("DELETE", odd, vec![], vec![]),
        (
            "GET",
            "/bench".into(),
            vec![
                ("list-type", "2"),
                ("prefix", "meridian-bench/ab12/"),
                ("max-keys", "1000"),
                ("start-after", "a b/c"),
            ],
            vec![],
        ),
        ("POST", key.clone(), vec![("uploads", "")], vec![]),
        ("PUT", key.clone(), vec![("partNumber", "3"), ("uploadId", "x/y+z==")], vec![]),
        ("POST", "/bench".into(), vec![("delete", "")], vec![("content-md5", "1B2M2Y8AsgTpgAmY7PhCfg==")]),
    ];
    for (m, p, q, h) in &cases {
        assert_eq!(ours(&signer, m, p, q, h, t), reference(m, p, q, h, t), "{m} {p} {q:?}");
    }
}

#[test]
#[ignore = "timing, for the decision record; run with --release --ignored --nocapture"]
fn signing_cost_per_request() {
    let signer = Signer::new(AK, SK, "us-east-1", "s3");
    let t = SystemTime::now();
    let path = format!("/bench/{}", uri_encode("meridian-bench/ab12/p000000001", true));
    let n = 200_000u32;
    let start = Instant::now();
    for _ in 0..n {
        std::hint::black_box(ours(&signer, "GET", &path, &[], &[], t));
    }
    let a = start.elapsed() / n;
    let start = Instant::now();
    for _ in 0..n / 4 {
        std::hint::black_box(reference("GET", &path, &[], &[], t));
    }
    let b = start.elapsed() / (n / 4);
    println!("meridian-bench signer: {a:?} per request; aws-sigv4: {b:?} per request");
}
