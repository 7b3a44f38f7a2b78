//! A small AWS Signature Version 4 signer for the hot path.
//!
//! Why not `aws-sigv4`: it is correct but allocates a canonical request, a
//! string-to-sign and a fresh signing-key chain for every request. Here the
//! signing key (four HMACs) is derived once per day and cached, the canonical
//! request is streamed straight into a SHA-256 hasher, and only the final
//! HMAC is computed per request. `docs/decisions/020-bench-client.md` has the
//! measured difference. The unit tests check this signer against AWS's
//! published vectors and, in `tests/sigv4_crosscheck.rs`, against `aws-sigv4`.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::fmt::Write as _;
use std::sync::Mutex;

type HmacSha256 = Hmac<Sha256>;

/// The payload hash S3 accepts when the body is not hashed.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";
/// SHA-256 of the empty string, hex.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Credentials, region and service, plus a per-day cache of the signing key.
#[derive(Debug)]
pub struct Signer {
    access_key: String,
    secret_key: String,
    region: String,
    service: String,
    cache: Mutex<Option<(String, [u8; 32])>>,
}

/// What a signature produced: the headers a request must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// The `Authorization` header value.
    pub authorization: String,
    /// The lower-case, `;`-separated list of signed header names.
    pub signed_headers: String,
    /// Hex signature alone.
    pub signature: String,
}

impl Signer {
    /// A signer for `service` (`s3` for S3) in `region`.
    pub fn new(access_key: &str, secret_key: &str, region: &str, service: &str) -> Self {
        Self {
            access_key: access_key.to_owned(),
            secret_key: secret_key.to_owned(),
            region: region.to_owned(),
            service: service.to_owned(),
            cache: Mutex::new(None),
        }
    }

    fn signing_key(&self, date: &str) -> [u8; 32] {
        // A poisoned lock only means another thread panicked mid-update of a
        // cache; recompute rather than propagate.
        if let Ok(guard) = self.cache.lock()
            && let Some((d, k)) = guard.as_ref()
            && d == date
        {
            return *k;
        }
        let k_date = hmac(format!("AWS4{}", self.secret_key).as_bytes(), date.as_bytes());
        let k_region = hmac(&k_date, self.region.as_bytes());
        let k_service = hmac(&k_region, self.service.as_bytes());
        let key = hmac(&k_service, b"aws4_request");
        if let Ok(mut guard) = self.cache.lock() {
            *guard = Some((date.to_owned(), key));
        }
        key
    }

    /// Signs a request.
    ///
    /// * `path` is the already URI-encoded path (S3 style: encoded once).
    /// * `query` is the list of (name, value) pairs, not encoded.
    /// * `headers` are (name, value) pairs that must all be signed; `host`
    ///   and `x-amz-date` must be among them (names in any case).
    /// * `amz_date` is `YYYYMMDDTHHMMSSZ`.
    pub fn sign(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, &str)],
        headers: &[(&str, &str)],
        payload_hash: &str,
        amz_date: &str,
    ) -> Signed {
        let date = amz_date.get(..8).unwrap_or(amz_date);
        let mut h = Sha256::new();
        h.update(method.as_bytes());
        h.update(b"\n");
        h.update(path.as_bytes());
        h.update(b"\n");
        h.update(canonical_query(query).as_bytes());
        h.update(b"\n");

        let mut hdrs: Vec<(String, String)> =
            headers.iter().map(|(n, v)| (n.to_ascii_lowercase(), normalize_value(v))).collect();
        hdrs.sort_by(|a, b| a.0.cmp(&b.0));
        let mut signed_headers = String::with_capacity(64);
        for (i, (n, v)) in hdrs.iter().enumerate() {
            h.update(n.as_bytes());
            h.update(b":");
            h.update(v.as_bytes());
            h.update(b"\n");
            if i > 0 {
                signed_headers.push(';');
            }
            signed_headers.push_str(n);
        }
        h.update(b"\n");
        h.update(signed_headers.as_bytes());
        h.update(b"\n");
        h.update(payload_hash.as_bytes());
        let creq_hash = hex::encode(h.finalize());

        let scope = format!("{date}/{}/{}/aws4_request", self.region, self.service);
        let string_to_sign = format!("AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{creq_hash}");
        let signature = hex::encode(hmac(&self.signing_key(date), string_to_sign.as_bytes()));
        let authorization = format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
            self.access_key
        );
        Signed { authorization, signed_headers, signature }
    }
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail here.
    let mut mac = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC-SHA256 takes keys of any length"),
    };
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// Trims and collapses runs of spaces, as SigV4 canonical headers require.
fn normalize_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let mut space = false;
    for c in v.trim().chars() {
        if c == ' ' {
            if !space {
                out.push(' ');
            }
            space = true;
        } else {
            out.push(c);
            space = false;
        }
    }
    out
}

/// SigV4 URI encoding: everything but the unreserved set is %XX (upper hex).
/// With `keep_slash`, `/` stays as is (for S3 object paths).
pub fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for &b in s.as_bytes() {
        let unreserved = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~');
        if unreserved || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The canonical query string: names and values encoded, sorted by name then value.
pub fn canonical_query(query: &[(&str, &str)]) -> String {
    let mut pairs: Vec<(String, String)> =
        query.iter().map(|(k, v)| (uri_encode(k, false), uri_encode(v, false))).collect();
    pairs.sort();
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

/// `YYYYMMDDTHHMMSSZ` for a UTC time.
pub fn amz_date(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    // AWS's generic SigV4 test suite (service "service").
    const SUITE_AK: &str = "AKIDEXAMPLE";
    const SUITE_SK: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const SUITE_DATE: &str = "20150830T123600Z";

    fn suite() -> Signer {
        Signer::new(SUITE_AK, SUITE_SK, "us-east-1", "service")
    }

    #[test]
    fn aws_suite_get_vanilla() {
        let s = suite().sign(
            "GET",
            "/",
            &[],
            &[("Host", "example.amazonaws.com"), ("X-Amz-Date", SUITE_DATE)],
            EMPTY_SHA256,
            SUITE_DATE,
        );
        assert_eq!(
            s.authorization,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    #[test]
    fn aws_suite_get_vanilla_query_order_key_case() {
        let s = suite().sign(
            "GET",
            "/",
            &[("Param2", "value2"), ("Param1", "value1")],
            &[("Host", "example.amazonaws.com"), ("X-Amz-Date", SUITE_DATE)],
            EMPTY_SHA256,
            SUITE_DATE,
        );
        assert_eq!(s.signature, "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500");
    }

    #[test]
    fn aws_suite_post_vanilla() {
        let s = suite().sign(
            "POST",
            "/",
            &[],
            &[("Host", "example.amazonaws.com"), ("X-Amz-Date", SUITE_DATE)],
            EMPTY_SHA256,
            SUITE_DATE,
        );
        assert_eq!(s.signature, "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b");
    }

    // The worked examples of the S3 API reference ("Signature Calculations
    // for the Authorization Header").
    const S3_AK: &str = "AKIAIOSFODNN7EXAMPLE";
    const S3_SK: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    const S3_DATE: &str = "20130524T000000Z";
    const S3_HOST: &str = "examplebucket.s3.amazonaws.com";

    fn s3() -> Signer {
        Signer::new(S3_AK, S3_SK, "us-east-1", "s3")
    }

    #[test]
    fn s3_doc_get_object_with_range() {
        let s = s3().sign(
            "GET",
            "/test.txt",
            &[],
            &[
                ("Host", S3_HOST),
                ("Range", "bytes=0-9"),
                ("x-amz-content-sha256", EMPTY_SHA256),
                ("x-amz-date", S3_DATE),
            ],
            EMPTY_SHA256,
            S3_DATE,
        );
        assert_eq!(
            s.authorization,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    #[test]
    fn s3_doc_put_object_with_escaped_key() {
        let body_hash = hex::encode(Sha256::digest(b"Welcome to Amazon S3."));
        assert_eq!(body_hash, "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072");
        let path = format!("/{}", uri_encode("test$file.text", true));
        assert_eq!(path, "/test%24file.text");
        let s = s3().sign(
            "PUT",
            &path,
            &[],
            &[
                ("Date", "Fri, 24 May 2013 00:00:00 GMT"),
                ("Host", S3_HOST),
                ("x-amz-content-sha256", &body_hash),
                ("x-amz-date", S3_DATE),
                ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
            ],
            &body_hash,
            S3_DATE,
        );
        assert_eq!(s.signed_headers, "date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class");
        assert_eq!(s.signature, "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd");
    }

    #[test]
    fn s3_doc_list_objects_sorts_the_query() {
        let s = s3().sign(
            "GET",
            "/",
            &[("prefix", "J"), ("max-keys", "2")],
            &[("Host", S3_HOST), ("x-amz-content-sha256", EMPTY_SHA256), ("x-amz-date", S3_DATE)],
            EMPTY_SHA256,
            S3_DATE,
        );
        assert_eq!(s.signature, "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7");
    }

    #[test]
    fn s3_doc_get_bucket_lifecycle_empty_query_value() {
        let s = s3().sign(
            "GET",
            "/",
            &[("lifecycle", "")],
            &[("Host", S3_HOST), ("x-amz-content-sha256", EMPTY_SHA256), ("x-amz-date", S3_DATE)],
            EMPTY_SHA256,
            S3_DATE,
        );
        assert_eq!(s.signature, "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543");
    }

    #[test]
    fn signing_key_cache_is_per_day() {
        let signer = s3();
        let a = signer.signing_key("20130524");
        let b = signer.signing_key("20130525");
        assert_ne!(a, b);
        assert_eq!(signer.signing_key("20130524"), a);
    }

    #[test]
    fn encoding_and_date_helpers() {
        assert_eq!(uri_encode("a b*(c)/~", false), "a%20b%2A%28c%29%2F~");
        assert_eq!(uri_encode("dir/k ey", true), "dir/k%20ey");
        assert_eq!(normalize_value("  a   b  c "), "a b c");
        let t = time::macros::datetime!(2015-08-30 12:36:00 UTC);
        assert_eq!(amz_date(t), "20150830T123600Z");
    }
}
