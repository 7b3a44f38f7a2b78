//! A tiny HTTP/1.1 client over a plain TCP socket, for requests SDKs refuse to send (malformed
//! bodies, bad signatures, anonymous access), optionally signed with SigV4.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, SystemTime};

use super::{ACCESS_KEY, SECRET_KEY};

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `<Code>` of an S3 XML error body.
    pub fn error_code(&self) -> String {
        let text = self.text();
        text.split("<Code>").nth(1).and_then(|rest| rest.split("</Code>").next()).unwrap_or("").to_string()
    }
}

/// Sends one request and reads the whole response (the connection is closed after it).
pub fn send(addr: &str, method: &str, path: &str, headers: &[(&str, String)], body: &[u8]) -> Response {
    exchange(connect(addr), addr, method, path, headers, body)
}

/// [`send`] with another `Host` header than the address connected to (virtual hosts).
pub fn send_as(addr: &str, host: &str, method: &str, path: &str, headers: &[(&str, String)]) -> Response {
    exchange(connect(addr), host, method, path, headers, &[])
}

fn connect(addr: &str) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
    // Like real HTTP clients: the body follows the head at once instead of waiting (Nagle)
    // for the server to acknowledge the head.
    stream.set_nodelay(true).expect("nodelay");
    stream
}

fn exchange(
    mut stream: impl Read + Write,
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> Response {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    let has_length = headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-length"));
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !has_length && (!body.is_empty() || method == "PUT" || method == "POST") {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).expect("write head");
    // The server may answer and close before reading a body it refuses.
    let _ = stream.write_all(body);
    let _ = stream.flush();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    parse(&raw)
}

/// Sends a request head declaring a `content_length` body, then `after` at once instead of the
/// body (as a client that skips a body the server refused), and reads until the server closes.
/// The first response and how many status lines came back in all.
pub fn head_then(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    content_length: usize,
    after: &[u8],
) -> (Response, usize) {
    let mut stream = connect(addr);
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {content_length}\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(after);
    stream.write_all(&bytes).expect("write");
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let answers = raw.windows(9).filter(|w| w == b"HTTP/1.1 ").count();
    (parse(&raw), answers)
}

/// [`signed`] over TLS (HTTP/1.1), trusting the system's CAs and the PEM file `ca`.
pub fn signed_tls(
    addr: &str,
    ca: &std::path::Path,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> Response {
    let out = sign_headers(addr, method, path, headers, body, ACCESS_KEY, SECRET_KEY);
    let refs: Vec<(&str, String)> = out.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let config = meridian_http::ClientTls::new(Some(ca)).expect("CA file").config();
    let stream = connect(addr);
    let ip = stream.peer_addr().expect("peer address").ip();
    let tls = rustls::ClientConnection::new(config, ip.into()).expect("TLS client");
    exchange(rustls::StreamOwned::new(tls, stream), addr, method, path, &refs, body)
}

fn parse(raw: &[u8]) -> Response {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("complete response head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status code");
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Response { status, headers, body }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&data[..line_end]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = line_end + 2;
        out.extend_from_slice(&data[start..start + size]);
        data = &data[start + size + 2..];
    }
    out
}

/// Sends a SigV4-signed request (payload hash included) with the test credentials, or with
/// `secret` when given.
/// Times one signed request to the last byte; panics unless it answers 200 (benchmarks).
pub fn timed_ok(addr: &str, method: &str, path: &str, body: &[u8]) -> (Duration, Response) {
    let started = std::time::Instant::now();
    let resp = signed(addr, method, path, &[], body);
    let took = started.elapsed();
    assert_eq!(resp.status, 200, "{method} {path}: {}", resp.text());
    (took, resp)
}

pub fn signed(addr: &str, method: &str, path: &str, headers: &[(&str, String)], body: &[u8]) -> Response {
    signed_with(addr, method, path, headers, body, ACCESS_KEY, SECRET_KEY)
}

pub fn signed_with(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
    access: &str,
    secret: &str,
) -> Response {
    let out = sign_headers(addr, method, path, headers, body, access, secret);
    let refs: Vec<(&str, String)> = out.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    send(addr, method, path, &refs, body)
}

/// `headers` plus SigV4 headers for a request whose payload is not signed
/// (`x-amz-content-sha256: UNSIGNED-PAYLOAD`), as clients do for large streamed bodies.
pub fn sign_unsigned_payload(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
) -> Vec<(String, String)> {
    sign_streaming(addr, method, path, headers, aws_sigv4::http_request::SignableBody::UnsignedPayload)
}

/// `headers` plus SigV4 headers for a body that is not hashed up front (`UnsignedPayload`, or
/// an `aws-chunked` variant such as `StreamingUnsignedPayloadTrailer`), with the test
/// credentials.
pub fn sign_streaming(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: aws_sigv4::http_request::SignableBody<'_>,
) -> Vec<(String, String)> {
    sign(addr, method, path, headers, body, ACCESS_KEY, SECRET_KEY)
}

fn sign(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: aws_sigv4::http_request::SignableBody<'_>,
    access: &str,
    secret: &str,
) -> Vec<(String, String)> {
    use aws_sigv4::http_request::{PayloadChecksumKind, SignableRequest, SigningSettings, sign};
    use aws_sigv4::sign::v4;

    let identity = aws_credential_types::Credentials::new(access, secret, None, None, "raw").into();
    let mut settings = SigningSettings::default();
    settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    settings.uri_path_normalization_mode = aws_sigv4::http_request::UriPathNormalizationMode::Disabled;
    settings.percent_encoding_mode = aws_sigv4::http_request::PercentEncodingMode::Single;
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("s3")
        .time(signing_time(headers))
        .settings(settings)
        .build()
        .expect("signing params")
        .into();
    let url = format!("http://{addr}{path}");
    // A caller-supplied x-amz-date only sets the signing time (to test clock skew).
    let headers: Vec<(&str, String)> =
        headers.iter().filter(|(k, _)| !k.eq_ignore_ascii_case("x-amz-date")).cloned().collect();
    let headers = headers.as_slice();
    let mut all: Vec<(String, String)> = headers.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    all.push(("host".into(), addr.to_string()));
    let signable =
        SignableRequest::new(method, url, all.iter().map(|(k, v)| (k.as_str(), v.as_str())), body).expect("signable");
    let (instructions, _) = sign(signable, &params).expect("sign").into_parts();
    let mut out: Vec<(String, String)> = headers.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    for (k, v) in instructions.headers() {
        out.push((k.to_string(), v.to_string()));
    }
    out
}

/// `headers` plus the SigV4 headers (Authorization, X-Amz-Date, X-Amz-Content-SHA256) for a
/// request carrying `body`.
pub fn sign_headers(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
    access: &str,
    secret: &str,
) -> Vec<(String, String)> {
    sign(addr, method, path, headers, aws_sigv4::http_request::SignableBody::Bytes(body), access, secret)
}

/// The signing time: an `x-amz-date` header given by the caller, else now.
fn signing_time(headers: &[(&str, String)]) -> SystemTime {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("x-amz-date"))
        .and_then(|(_, v)| parse_amz_date(v))
        .unwrap_or_else(SystemTime::now)
}

/// Parses `20240101T000000Z`.
fn parse_amz_date(value: &str) -> Option<SystemTime> {
    let iso = format!(
        "{}-{}-{}T{}:{}:{}Z",
        value.get(0..4)?,
        value.get(4..6)?,
        value.get(6..8)?,
        value.get(9..11)?,
        value.get(11..13)?,
        value.get(13..15)?
    );
    let dt = aws_smithy_types::DateTime::from_str(&iso, aws_smithy_types::date_time::Format::DateTime).ok()?;
    SystemTime::try_from(dt).ok()
}

/// Sends only the head of a request (its headers may announce a body that never comes) and
/// waits up to `timeout` for the response. `None` if no complete response arrived in time.
pub fn send_head_only(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    timeout: Duration,
) -> Option<Response> {
    let mut stream = TcpStream::connect(addr).expect("connect");
    let deadline = std::time::Instant::now() + timeout;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).expect("write head");
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        if complete(&raw) {
            return Some(parse(&raw));
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return None;
        }
        stream.set_read_timeout(Some(left)).expect("timeout");
        match stream.read(&mut buf) {
            // Closed: a response without a length ends here.
            Ok(0) => {
                return raw.windows(4).any(|w| w == b"\r\n\r\n").then(|| parse(&raw));
            }
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(_) => return None,
        }
    }
}

/// Whether `raw` holds a whole response (head plus a Content-Length body or a last chunk).
fn complete(raw: &[u8]) -> bool {
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let body = &raw[split + 4..];
    if let Some(len) =
        head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse::<usize>().ok())
    {
        return body.len() >= len;
    }
    head.contains("transfer-encoding: chunked") && body.ends_with(b"0\r\n\r\n")
}
