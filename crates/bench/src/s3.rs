//! A minimal S3 client for load generation: one HTTP/1.1 keep-alive
//! connection per worker (no pool lock), path-style addressing, SigV4 with
//! `UNSIGNED-PAYLOAD`, response bodies counted and dropped unless the caller
//! needs them (listings, multipart ids, errors).

use crate::sigv4::{self, Signer, UNSIGNED_PAYLOAD};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::net::TcpStream;

/// Why one operation failed, grouped into the kinds the report counts.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum OpError {
    /// The server answered with a non-success status (and maybe an S3 code).
    #[error("HTTP {status} {code}")]
    Http {
        /// HTTP status.
        status: u16,
        /// The S3 `<Code>` of the error body, or empty.
        code: String,
    },
    /// The TCP connection could not be made.
    #[error("connect: {0}")]
    Connect(String),
    /// The connection broke mid-request.
    #[error("transport: {0}")]
    Transport(String),
    /// The operation took longer than `--timeout`.
    #[error("timeout")]
    Timeout,
    /// The answer was 2xx but not what S3 would send.
    #[error("bad response: {0}")]
    BadResponse(String),
    /// Local file-system error (files target).
    #[error("io: {0}")]
    Io(String),
}

impl OpError {
    /// The key under which the report counts this error.
    pub fn kind(&self) -> String {
        match self {
            OpError::Http { status, code } if code.is_empty() => format!("http-{status}"),
            OpError::Http { status, code } => format!("http-{status}-{code}"),
            OpError::Connect(_) => "connect".into(),
            OpError::Transport(_) => "transport".into(),
            OpError::Timeout => "timeout".into(),
            OpError::BadResponse(_) => "bad-response".into(),
            OpError::Io(_) => "io".into(),
        }
    }
}

/// Where and as whom to talk S3.
#[derive(Debug)]
pub struct S3Client {
    endpoint: Endpoint,
    bucket: String,
    signer: Option<Signer>,
    /// `x-amz-server-side-encryption` sent with every PUT.
    sse: Option<String>,
}

/// A parsed `http://host:port` or `https://host:port` endpoint.
#[derive(Clone)]
pub struct Endpoint {
    /// Resolved address.
    pub addr: SocketAddr,
    /// `host[:port]` as the Host header carries it.
    pub host: String,
    /// For `https://`: the TLS client and the name the certificate must carry.
    tls: Option<(tokio_rustls::TlsConnector, rustls::pki_types::ServerName<'static>)>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("addr", &self.addr)
            .field("host", &self.host)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Endpoint {
    /// Parses and resolves `http://host:port` (no scheme: `http://`) or `https://host:port`;
    /// HTTPS verifies the server against the system's roots and the CA file named by
    /// `MERIDIAN_CA_FILE`, and speaks HTTP/1.1 like the plain client.
    pub async fn parse(url: &str) -> Result<Self, String> {
        let (secure, rest) = match url.split_once("://") {
            Some(("http", rest)) => (false, rest),
            Some(("https", rest)) => (true, rest),
            Some((scheme, _)) => return Err(format!("endpoint {url:?}: use http:// or https://, not {scheme}://")),
            None => (false, url),
        };
        let host = rest.trim_end_matches('/');
        if host.is_empty() || host.contains('/') {
            return Err(format!("endpoint {url:?} must be http(s)://HOST:PORT with no path"));
        }
        let default_port = if secure { 443 } else { 80 };
        let with_port = if host.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
            host.to_owned()
        } else {
            format!("{host}:{default_port}")
        };
        let addr = tokio::net::lookup_host(&with_port)
            .await
            .map_err(|e| format!("endpoint {url:?}: cannot resolve: {e}"))?
            .next()
            .ok_or_else(|| format!("endpoint {url:?}: no address"))?;
        let tls = if secure { Some(tls_client(url, host)?) } else { None };
        Ok(Self { addr, host: host.to_owned(), tls })
    }
}

fn tls_client(
    url: &str,
    host: &str,
) -> Result<(tokio_rustls::TlsConnector, rustls::pki_types::ServerName<'static>), String> {
    let trust = meridian_http::ClientTls::from_env().map_err(|e| format!("endpoint {url:?}: {e}"))?;
    let mut config = (*trust.config()).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = host.rsplit_once(':').map_or(host, |(name, _)| name).trim_matches(['[', ']']);
    let name = rustls::pki_types::ServerName::try_from(name.to_owned())
        .map_err(|e| format!("endpoint {url:?}: {name:?} is not a TLS server name: {e}"))?;
    Ok((tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)), name))
}

/// One response, body counted and optionally kept.
#[derive(Debug)]
pub struct Response {
    /// HTTP status.
    pub status: StatusCode,
    /// Response headers.
    pub headers: http::HeaderMap,
    /// Bytes of body received.
    pub body_len: u64,
    /// The body, when the caller asked to keep it.
    pub body: Bytes,
}

/// A page of a listing.
#[derive(Debug, Default)]
pub struct ListPage {
    /// Keys in this page.
    pub keys: Vec<String>,
    /// Whether more keys follow.
    pub truncated: bool,
    /// The continuation token for the next page.
    pub next_token: Option<String>,
}

/// An HTTP/1.1 connection over `io`, driven by a task of its own.
async fn handshake<I>(io: I) -> Result<SendRequest<Full<Bytes>>, OpError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) =
        http1::Builder::new().handshake(TokioIo::new(io)).await.map_err(|e| OpError::Connect(e.to_string()))?;
    tokio::spawn(async move {
        // The connection ends when the sender is dropped or the peer closes.
        let _ = conn.await;
    });
    Ok(sender)
}

/// A worker's connection and per-second date cache.
#[derive(Default)]
pub struct Conn {
    sender: Option<SendRequest<Full<Bytes>>>,
    date: (u64, String),
}

impl S3Client {
    /// A client for `bucket` at `endpoint`; `creds` `None` sends unsigned requests.
    pub fn new(endpoint: &Endpoint, bucket: &str, creds: Option<(&str, &str)>, region: &str) -> Arc<Self> {
        Self::with_sse(endpoint, bucket, creds, region, None)
    }

    /// [`S3Client::new`], asking for server-side encryption (`AES256`, `aws:kms`) on every PUT.
    pub fn with_sse(
        endpoint: &Endpoint,
        bucket: &str,
        creds: Option<(&str, &str)>,
        region: &str,
        sse: Option<String>,
    ) -> Arc<Self> {
        Arc::new(Self {
            endpoint: endpoint.clone(),
            bucket: bucket.to_owned(),
            signer: creds.map(|(ak, sk)| Signer::new(ak, sk, region, "s3")),
            sse,
        })
    }

    /// The bucket requests go to.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, OpError> {
        let stream = TcpStream::connect(self.endpoint.addr).await.map_err(|e| OpError::Connect(e.to_string()))?;
        stream.set_nodelay(true).map_err(|e| OpError::Connect(e.to_string()))?;
        match &self.endpoint.tls {
            None => handshake(stream).await,
            Some((connector, name)) => {
                let tls = connector.connect(name.clone(), stream).await.map_err(|e| OpError::Connect(e.to_string()))?;
                handshake(tls).await
            }
        }
    }

    fn path(&self, key: Option<&str>) -> String {
        let mut p = String::with_capacity(self.bucket.len() + key.map_or(0, str::len) + 2);
        p.push('/');
        p.push_str(&sigv4::uri_encode(&self.bucket, false));
        if let Some(k) = key {
            p.push('/');
            p.push_str(&sigv4::uri_encode(k, true));
        }
        p
    }

    /// Sends one request on the worker's connection, reconnecting if the
    /// previous one was closed. Non-2xx answers become [`OpError::Http`].
    #[allow(clippy::too_many_arguments)] // the parts of one S3 request
    pub async fn send(
        &self,
        conn: &mut Conn,
        method: Method,
        key: Option<&str>,
        query: &[(&str, &str)],
        extra_headers: &[(&str, &str)],
        body: Bytes,
        keep_body: bool,
    ) -> Result<Response, OpError> {
        let path = self.path(key);
        let mut uri = path.clone();
        if !query.is_empty() {
            uri.push('?');
            uri.push_str(&sigv4::canonical_query(query));
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        if conn.date.0 != now || conn.date.1.is_empty() {
            let t = time::OffsetDateTime::from_unix_timestamp(now as i64).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
            conn.date = (now, sigv4::amz_date(t));
        }
        let amz_date = conn.date.1.as_str();

        let mut builder = Request::builder()
            .method(method.clone())
            .uri(&uri)
            .header("host", &self.endpoint.host)
            .header("x-amz-date", amz_date)
            .header("x-amz-content-sha256", UNSIGNED_PAYLOAD);
        for (n, v) in extra_headers {
            builder = builder.header(*n, *v);
        }
        if let Some(signer) = &self.signer {
            let mut to_sign: Vec<(&str, &str)> = Vec::with_capacity(3 + extra_headers.len());
            to_sign.push(("host", &self.endpoint.host));
            to_sign.push(("x-amz-date", amz_date));
            to_sign.push(("x-amz-content-sha256", UNSIGNED_PAYLOAD));
            to_sign.extend_from_slice(extra_headers);
            let signed = signer.sign(method.as_str(), &path, query, &to_sign, UNSIGNED_PAYLOAD, amz_date);
            builder = builder.header("authorization", signed.authorization);
        }
        let req =
            builder.body(Full::new(body)).map_err(|e| OpError::BadResponse(format!("cannot build request: {e}")))?;

        let sender = match conn.sender.as_mut() {
            Some(s) if !s.is_closed() => s,
            _ => {
                conn.sender = None;
                conn.sender.insert(self.connect().await?)
            }
        };
        if sender.ready().await.is_err() {
            conn.sender = None;
            let s = conn.sender.insert(self.connect().await?);
            s.ready().await.map_err(|e| OpError::Transport(e.to_string()))?;
        }
        let Some(sender) = conn.sender.as_mut() else {
            return Err(OpError::Transport("no connection".into()));
        };
        let resp = match sender.send_request(req).await {
            Ok(r) => r,
            Err(e) => {
                conn.sender = None;
                return Err(OpError::Transport(e.to_string()));
            }
        };
        let (parts, mut body) = resp.into_parts();
        let success = parts.status.is_success();
        let keep = keep_body || !success;
        let mut kept: Vec<u8> = Vec::new();
        let mut n: u64 = 0;
        while let Some(frame) = body.frame().await {
            let frame = match frame {
                Ok(f) => f,
                Err(e) => {
                    conn.sender = None;
                    return Err(OpError::Transport(e.to_string()));
                }
            };
            if let Ok(data) = frame.into_data() {
                n += data.len() as u64;
                if keep && kept.len() < 64 << 20 {
                    kept.extend_from_slice(&data);
                }
            }
        }
        if !success {
            let code = xml_value(&kept, "Code").unwrap_or_default();
            return Err(OpError::Http { status: parts.status.as_u16(), code });
        }
        Ok(Response { status: parts.status, headers: parts.headers, body_len: n, body: Bytes::from(kept) })
    }

    /// PUT an object.
    pub async fn put(&self, conn: &mut Conn, key: &str, body: Bytes) -> Result<(), OpError> {
        let sse: Vec<(&str, &str)> =
            self.sse.as_deref().map(|s| ("x-amz-server-side-encryption", s)).into_iter().collect();
        self.send(conn, Method::PUT, Some(key), &[], &sse, body, false).await.map(|_| ())
    }

    /// GET an object; returns the number of body bytes received.
    pub async fn get(&self, conn: &mut Conn, key: &str) -> Result<u64, OpError> {
        self.send(conn, Method::GET, Some(key), &[], &[], Bytes::new(), false).await.map(|r| r.body_len)
    }

    /// HEAD an object.
    pub async fn head(&self, conn: &mut Conn, key: &str) -> Result<(), OpError> {
        self.send(conn, Method::HEAD, Some(key), &[], &[], Bytes::new(), false).await.map(|_| ())
    }

    /// DELETE an object.
    pub async fn delete(&self, conn: &mut Conn, key: &str) -> Result<(), OpError> {
        self.send(conn, Method::DELETE, Some(key), &[], &[], Bytes::new(), false).await.map(|_| ())
    }

    /// ListObjectsV2, one page.
    pub async fn list(
        &self,
        conn: &mut Conn,
        prefix: &str,
        start_after: Option<&str>,
        token: Option<&str>,
        max_keys: u32,
    ) -> Result<ListPage, OpError> {
        let mk = max_keys.to_string();
        let mut q: Vec<(&str, &str)> = vec![("list-type", "2"), ("prefix", prefix), ("max-keys", &mk)];
        if let Some(sa) = start_after {
            q.push(("start-after", sa));
        }
        if let Some(t) = token {
            q.push(("continuation-token", t));
        }
        let r = self.send(conn, Method::GET, None, &q, &[], Bytes::new(), true).await?;
        if !r.body.starts_with(b"<?xml") && xml_value(&r.body, "ListBucketResult").is_none() && !r.body.is_empty() {
            return Err(OpError::BadResponse("listing is not a ListBucketResult".into()));
        }
        Ok(parse_list(&r.body))
    }

    /// CreateMultipartUpload; returns the upload id.
    pub async fn create_multipart(&self, conn: &mut Conn, key: &str) -> Result<String, OpError> {
        let r = self.send(conn, Method::POST, Some(key), &[("uploads", "")], &[], Bytes::new(), true).await?;
        xml_value(&r.body, "UploadId")
            .ok_or_else(|| OpError::BadResponse("CreateMultipartUpload answer has no UploadId".into()))
    }

    /// UploadPart; returns the part's ETag.
    pub async fn upload_part(
        &self,
        conn: &mut Conn,
        key: &str,
        upload_id: &str,
        part: u32,
        body: Bytes,
    ) -> Result<String, OpError> {
        let pn = part.to_string();
        let r = self
            .send(conn, Method::PUT, Some(key), &[("partNumber", &pn), ("uploadId", upload_id)], &[], body, false)
            .await?;
        r.headers
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| OpError::BadResponse("UploadPart answer has no ETag".into()))
    }

    /// CompleteMultipartUpload.
    pub async fn complete_multipart(
        &self,
        conn: &mut Conn,
        key: &str,
        upload_id: &str,
        parts: &[(u32, String)],
    ) -> Result<(), OpError> {
        let mut xml = String::from("<CompleteMultipartUpload>");
        for (n, etag) in parts {
            let _ = write!(xml, "<Part><PartNumber>{n}</PartNumber><ETag>{}</ETag></Part>", xml_escape(etag));
        }
        xml.push_str("</CompleteMultipartUpload>");
        let r =
            self.send(conn, Method::POST, Some(key), &[("uploadId", upload_id)], &[], Bytes::from(xml), true).await?;
        // S3 may answer 200 with an error document after a long complete.
        if let Some(code) = xml_value(&r.body, "Code")
            && xml_value(&r.body, "Error").is_some()
        {
            return Err(OpError::Http { status: 200, code });
        }
        Ok(())
    }

    /// AbortMultipartUpload.
    pub async fn abort_multipart(&self, conn: &mut Conn, key: &str, upload_id: &str) -> Result<(), OpError> {
        self.send(conn, Method::DELETE, Some(key), &[("uploadId", upload_id)], &[], Bytes::new(), false)
            .await
            .map(|_| ())
    }

    /// DeleteObjects (quiet) for up to 1,000 keys. Returns how many the
    /// server reported as failed.
    pub async fn delete_many(&self, conn: &mut Conn, keys: &[String]) -> Result<usize, OpError> {
        use base64::Engine as _;
        use md5::Digest as _;
        let mut xml = String::from("<Delete><Quiet>true</Quiet>");
        for k in keys {
            let _ = write!(xml, "<Object><Key>{}</Key></Object>", xml_escape(k));
        }
        xml.push_str("</Delete>");
        let md5 = base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(xml.as_bytes()));
        let r = self
            .send(conn, Method::POST, None, &[("delete", "")], &[("content-md5", &md5)], Bytes::from(xml), true)
            .await?;
        Ok(count_tag(&r.body, "<Error>"))
    }

    /// CreateBucket; an existing bucket we own is fine.
    pub async fn create_bucket(&self, conn: &mut Conn) -> Result<bool, OpError> {
        match self.send(conn, Method::PUT, None, &[], &[], Bytes::new(), false).await {
            Ok(_) => Ok(true),
            Err(OpError::Http { code, .. }) if code == "BucketAlreadyOwnedByYou" || code == "BucketAlreadyExists" => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// DeleteBucket.
    pub async fn delete_bucket(&self, conn: &mut Conn) -> Result<(), OpError> {
        self.send(conn, Method::DELETE, None, &[], &[], Bytes::new(), false).await.map(|_| ())
    }
}

/// The text of the first `<tag>...</tag>` in `xml`, unescaped.
pub fn xml_value(xml: &[u8], tag: &str) -> Option<String> {
    let s = std::str::from_utf8(xml).ok()?;
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = s.find(&open)? + open.len();
    let end = s[start..].find(&close)? + start;
    Some(xml_unescape(&s[start..end]))
}

fn count_tag(xml: &[u8], tag: &str) -> usize {
    std::str::from_utf8(xml).map_or(0, |s| s.matches(tag).count())
}

/// Parses the keys, truncation flag and continuation token of a ListObjectsV2 page.
pub fn parse_list(xml: &[u8]) -> ListPage {
    let Ok(s) = std::str::from_utf8(xml) else {
        return ListPage::default();
    };
    let mut page = ListPage::default();
    let mut rest = s;
    while let Some(i) = rest.find("<Contents>") {
        rest = &rest[i + "<Contents>".len()..];
        let end = rest.find("</Contents>").unwrap_or(rest.len());
        let entry = &rest[..end];
        if let Some(a) = entry.find("<Key>")
            && let Some(b) = entry[a..].find("</Key>")
        {
            page.keys.push(xml_unescape(&entry[a + 5..a + b]));
        }
        rest = &rest[end..];
    }
    page.truncated = xml_value(xml, "IsTruncated").is_some_and(|v| v == "true");
    page.next_token = xml_value(xml, "NextContinuationToken");
    page
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&apos;")
}

fn xml_unescape(s: &str) -> String {
    if !s.contains('&') {
        return s.to_owned();
    }
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&#34;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_list_page() {
        let xml = br#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><Prefix>p/</Prefix>
<KeyCount>2</KeyCount><MaxKeys>2</MaxKeys><IsTruncated>true</IsTruncated>
<Contents><Key>p/a&amp;b</Key><Size>3</Size><ETag>&quot;x&quot;</ETag></Contents>
<Contents><Key>p/c</Key><Size>4</Size></Contents>
<NextContinuationToken>tok/1=</NextContinuationToken></ListBucketResult>"#;
        let p = parse_list(xml);
        assert_eq!(p.keys, vec!["p/a&b".to_owned(), "p/c".to_owned()]);
        assert!(p.truncated);
        assert_eq!(p.next_token.as_deref(), Some("tok/1="));
        let empty = parse_list(b"<ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>");
        assert!(empty.keys.is_empty() && !empty.truncated && empty.next_token.is_none());
    }

    #[test]
    fn error_kinds_name_status_and_code() {
        let e = OpError::Http { status: 503, code: "SlowDown".into() };
        assert_eq!(e.kind(), "http-503-SlowDown");
        assert_eq!(OpError::Http { status: 500, code: String::new() }.kind(), "http-500");
        assert_eq!(OpError::Timeout.kind(), "timeout");
        assert_eq!(xml_value(b"<Error><Code>NoSuchKey</Code></Error>", "Code").as_deref(), Some("NoSuchKey"));
        assert_eq!(xml_escape("a<&>\"'"), "a&lt;&amp;&gt;&quot;&apos;");
        assert_eq!(xml_unescape("&amp;lt;"), "&lt;");
    }

    #[tokio::test]
    async fn endpoints_parse_and_refuse_https() {
        let e = Endpoint::parse("http://127.0.0.1:9000/").await.unwrap();
        assert_eq!(e.host, "127.0.0.1:9000");
        assert_eq!(e.addr.port(), 9000);
        let e = Endpoint::parse("127.0.0.1").await.unwrap();
        assert_eq!(e.addr.port(), 80);
        assert!(Endpoint::parse("https://127.0.0.1:9000").await.unwrap().tls.is_some());
        assert!(Endpoint::parse("ftp://h:1").await.unwrap_err().contains("ftp"));
        assert!(Endpoint::parse("http://h:1/path").await.is_err());
    }
}
