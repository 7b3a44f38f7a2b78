//! Which bucket and key an S3-style request addresses.
//!
//! - Virtual-host style: the Host header (port ignored, any letter case) is `<bucket>.<domain>`
//!   for the configured domain; the whole path is the key.
//! - Path style, in every other case (no domain configured, the Host is the domain itself, an
//!   IP address or another name): `/<bucket>/<key>`.
//!
//! The path is percent-decoded before it is split, as s3s does for its routing, so both
//! always agree on the bucket. An empty key (`/bucket/`) is the bucket itself.

/// How the request named its bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressStyle {
    Path,
    VirtualHost,
}

/// What a request addresses: the service (no bucket), a bucket, or an object (bucket and key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketAddress {
    pub style: AddressStyle,
    pub bucket: Option<String>,
    pub key: Option<String>,
}

/// Why a request's address did not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("the request path {0:?} does not start with '/'")]
    Relative(String),
    #[error("the request path {0:?} is not valid UTF-8 once percent-decoded")]
    NotUtf8(String),
}

/// The bucket and key addressed by a request with this Host header (if any) and URI path, on a
/// node serving virtual-host style for `domain` (if any).
pub fn parse(host: Option<&str>, path: &str, domain: Option<&str>) -> Result<BucketAddress, AddressError> {
    let decoded = percent_decode(path)?;
    let rest = decoded.strip_prefix('/').ok_or_else(|| AddressError::Relative(path.to_string()))?;
    if let Some(bucket) = host.zip(domain).and_then(|(host, domain)| virtual_host_bucket(host, domain)) {
        return Ok(BucketAddress { style: AddressStyle::VirtualHost, bucket: Some(bucket), key: non_empty(rest) });
    }
    let (bucket, key) = match rest.split_once('/') {
        Some((bucket, key)) => (bucket, non_empty(key)),
        None => (rest, None),
    };
    Ok(BucketAddress { style: AddressStyle::Path, bucket: non_empty(bucket), key })
}

/// The bucket a Host header names under `domain` (`photos.s3.example.com` under
/// `s3.example.com` is `photos`), lowercased; `None` for the domain itself and for any other
/// host. A port on either is ignored.
pub fn virtual_host_bucket(host: &str, domain: &str) -> Option<String> {
    let host = without_port(host).to_ascii_lowercase();
    let domain = without_port(domain).to_ascii_lowercase();
    let bucket = host.strip_suffix(domain.as_str())?.strip_suffix('.')?;
    non_empty(bucket)
}

/// `host` without a trailing `:port`; an IPv6 literal (`[::1]:80`) keeps its brackets.
pub fn without_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => name,
        Some((name, port)) if name.ends_with(']') && port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// The percent-decoded path, which must be UTF-8.
pub fn percent_decode(path: &str) -> Result<String, AddressError> {
    percent_encoding::percent_decode_str(path)
        .decode_utf8()
        .map(|decoded| decoded.into_owned())
        .map_err(|_| AddressError::NotUtf8(path.to_string()))
}

fn non_empty(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(style: AddressStyle, bucket: Option<&str>, key: Option<&str>) -> BucketAddress {
        BucketAddress { style, bucket: bucket.map(str::to_string), key: key.map(str::to_string) }
    }

    #[test]
    fn path_style() {
        use AddressStyle::Path;
        let cases = [
            ("/", address(Path, None, None)),
            ("/photos", address(Path, Some("photos"), None)),
            ("/photos/", address(Path, Some("photos"), None)),
            ("/photos/a/b.jpg", address(Path, Some("photos"), Some("a/b.jpg"))),
            ("/photos/a%20b%2Fc", address(Path, Some("photos"), Some("a b/c"))),
            ("/photos/caf%C3%A9", address(Path, Some("photos"), Some("café"))),
            ("/photos//x", address(Path, Some("photos"), Some("/x"))),
        ];
        for (path, expected) in cases {
            assert_eq!(parse(Some("127.0.0.1:9000"), path, None).unwrap(), expected, "{path}");
        }
    }

    #[test]
    fn virtual_host_style_under_the_domain() {
        use AddressStyle::VirtualHost;
        let domain = Some("s3.example.com");
        let cases = [
            ("photos.s3.example.com", "/", address(VirtualHost, Some("photos"), None)),
            ("photos.s3.example.com:9000", "/a/b", address(VirtualHost, Some("photos"), Some("a/b"))),
            ("Photos.S3.Example.com", "/a%20b", address(VirtualHost, Some("photos"), Some("a b"))),
            ("my.dotted.bucket.s3.example.com", "/k", address(VirtualHost, Some("my.dotted.bucket"), Some("k"))),
        ];
        for (host, path, expected) in cases {
            assert_eq!(parse(Some(host), path, domain).unwrap(), expected, "{host}{path}");
        }
    }

    #[test]
    fn other_hosts_are_path_style_even_with_a_domain() {
        let domain = Some("s3.example.com");
        for host in
            ["s3.example.com", "s3.example.com:9000", "127.0.0.1:9000", "[::1]:9000", "node-1", "xs3.example.com"]
        {
            let parsed = parse(Some(host), "/photos/k", domain).unwrap();
            assert_eq!(parsed, address(AddressStyle::Path, Some("photos"), Some("k")), "{host}");
        }
        let no_host = parse(None, "/photos/k", domain).unwrap();
        assert_eq!(no_host.style, AddressStyle::Path);
    }

    #[test]
    fn a_domain_with_a_port_matches_hosts_on_any_port() {
        assert_eq!(virtual_host_bucket("b1.localhost:9000", "localhost:9000").as_deref(), Some("b1"));
        assert_eq!(virtual_host_bucket("b1.localhost", "localhost:9000").as_deref(), Some("b1"));
        assert_eq!(virtual_host_bucket(".localhost", "localhost"), None);
    }

    #[test]
    fn bad_paths() {
        assert!(matches!(parse(None, "photos/k", None), Err(AddressError::Relative(_))));
        assert!(matches!(parse(None, "/photos/%FF", None), Err(AddressError::NotUtf8(_))));
    }
}
