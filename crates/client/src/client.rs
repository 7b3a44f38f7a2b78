//! [`Client`]: the KV operations over HTTP.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use meridian_common::errors::chain;
use meridian_http::ClientTls;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, from_response};
use crate::sign::{Credentials, Signer};

/// The default endpoint of `meridian server`.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:9400";
/// Default per-request timeout (watch streams have none; lock waits are added to it).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Characters left alone in a query value or path segment: RFC 3986 unreserved.
const QUERY: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');
/// Characters left alone in an object key: unreserved and `/` (keys keep their "folders").
const KEY: &AsciiSet = &QUERY.remove(b'/');
/// Largest error body read.
const MAX_ERROR_BODY: usize = 64 << 10;
/// Largest JSON answer read (a list page of 1,000 long keys fits many times).
const MAX_JSON_BODY: usize = 64 << 20;

pub(crate) type Http = HyperClient<meridian_http::client::Connector, Full<Bytes>>;

/// A client of one bucket of a Meridian node, seen as a key-value store.
///
/// Cheap to clone (clones share one connection pool); safe to use from many tasks at once.
/// Keys are object keys and values are object bodies: what the KV writes, S3 clients read, and
/// the other way round. A key's *version* is its *revision*: the global metadata revision at
/// which its current value was written.
///
/// ```no_run
/// # async fn demo() -> meridian_client::Result<()> {
/// use meridian_client::{Client, Credentials};
/// let kv = Client::new("http://127.0.0.1:9400", "my-bucket", Credentials::new("AKID", "SECRET"))?;
/// let revision = kv.put("users/42", "alice").await?;
/// let entry = kv.get("users/42").await?.expect("just written");
/// assert_eq!(entry.value, "alice");
/// assert_eq!(entry.revision, revision);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    http: Http,
    base: Arc<str>,
    host: Arc<str>,
    bucket: Arc<str>,
    signer: Arc<Signer>,
    pub(crate) timeout: Option<Duration>,
    /// With [`Client::with_session`]: the revision of the session cookie the server last set.
    session: Option<Arc<AtomicU64>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("endpoint", &self.base).field("bucket", &self.bucket).finish()
    }
}

/// A value read with [`Client::get`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The value (the object's body).
    pub value: Bytes,
    /// The key's version: the revision at which this value was written.
    pub revision: u64,
    /// The value's ETag (MD5 of single-part values), unquoted.
    pub etag: String,
    /// When the key expires (Unix ms), if it has a TTL.
    pub expires_at_ms: Option<i64>,
    /// How long it has left, if it has a TTL, as the server saw it when it answered.
    pub ttl_remaining: Option<Duration>,
}

/// The fencing token of a named lock, carried by a write: the write is refused
/// ([`Error::FenceRejected`]) once a newer token of the lock has been granted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fence {
    /// The lock's name.
    pub lock: String,
    /// The token [`Client::lock`] returned.
    pub token: u64,
}

/// How fresh a read must be (docs/consistency.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Consistency {
    /// The node's local view of the metadata (the server's default): never behind the node's
    /// own writes; overwrites made through other regions show after the replication lag.
    #[default]
    Local,
    /// `x-meridian-consistency: strong`: every write acknowledged anywhere before the read.
    Strong,
    /// `x-meridian-min-revision: R`: the node's view at revision R or later (pass a write's
    /// revision to read your writes through another region).
    AtLeast(u64),
}

/// Settings of a read.
///
/// ```
/// use meridian_client::{Consistency, GetOptions};
/// let opts = GetOptions::default().consistency(Consistency::AtLeast(1042));
/// assert_eq!(opts.consistency, Consistency::AtLeast(1042));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GetOptions {
    /// How fresh the read must be.
    pub consistency: Consistency,
}

impl GetOptions {
    /// Sets [`GetOptions::consistency`].
    pub fn consistency(mut self, consistency: Consistency) -> Self {
        self.consistency = consistency;
        self
    }
}

/// Take the key's lock around the write (put_transaction).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Transaction {
    /// How long to wait for the lock when someone else holds it; zero fails at once with
    /// [`Error::LockContended`].
    pub wait: Duration,
    /// How long the lock is held at most if this writer dies mid-write (server default: 30 s).
    pub lock_ttl: Option<Duration>,
}

/// Conditions and settings of a write.
///
/// ```
/// use std::time::Duration;
/// use meridian_client::PutOptions;
/// let opts = PutOptions::default().if_revision(41).ttl(Duration::from_secs(90));
/// assert_eq!(opts.if_revision, Some(41));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutOptions {
    /// Write only if the key is at exactly this revision (0: only if absent).
    pub if_revision: Option<u64>,
    /// Write only if the key does not exist (create-only); same as `if_revision: Some(0)`.
    pub if_absent: bool,
    /// The key expires this long after the write.
    pub ttl: Option<Duration>,
    /// The key expires at this instant.
    pub expires_at: Option<SystemTime>,
    /// Refuse the write if a newer token of this lock was granted.
    pub fence: Option<Fence>,
    /// Hold the key's lock while writing (put_transaction).
    pub transaction: Option<Transaction>,
    /// S3's `If-Match`: write only if the value's ETag (unquoted, as in [`Entry::etag`]) is this.
    pub if_match: Option<String>,
    /// S3's `If-None-Match: *`: write only if the key does not exist.
    pub if_none_match: bool,
}

impl PutOptions {
    /// Sets [`PutOptions::if_match`].
    pub fn if_match(mut self, etag: impl Into<String>) -> Self {
        self.if_match = Some(etag.into());
        self
    }

    /// Sets [`PutOptions::if_none_match`].
    pub fn if_none_match(mut self) -> Self {
        self.if_none_match = true;
        self
    }

    /// Sets [`PutOptions::if_revision`].
    pub fn if_revision(mut self, revision: u64) -> Self {
        self.if_revision = Some(revision);
        self
    }
    /// Sets [`PutOptions::if_absent`].
    pub fn if_absent(mut self) -> Self {
        self.if_absent = true;
        self
    }
    /// Sets [`PutOptions::ttl`].
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }
    /// Sets [`PutOptions::expires_at`].
    pub fn expires_at(mut self, at: SystemTime) -> Self {
        self.expires_at = Some(at);
        self
    }
    /// Sets [`PutOptions::fence`].
    pub fn fence(mut self, fence: Fence) -> Self {
        self.fence = Some(fence);
        self
    }
    /// Sets [`PutOptions::transaction`].
    pub fn transaction(mut self, wait: Duration) -> Self {
        self.transaction = Some(Transaction { wait, lock_ttl: None });
        self
    }
}

/// Conditions of a delete.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeleteOptions {
    /// Delete only if the key is at exactly this revision.
    pub if_revision: Option<u64>,
    /// Refuse the delete if a newer token of this lock was granted.
    pub fence: Option<Fence>,
}

/// One key of a listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListEntry {
    /// The key.
    pub key: String,
    /// Its version.
    pub revision: u64,
    /// Size of the value in bytes.
    pub size: u64,
    /// ETag of the value, unquoted.
    pub etag: String,
    /// When the value was written (Unix ms).
    pub last_modified_ms: i64,
    /// When it expires (Unix ms), if it has a TTL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<i64>,
}

/// One page of a listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    /// Keys in order.
    pub entries: Vec<ListEntry>,
    /// When more keys follow: pass this as `after` to get the next page.
    #[serde(default)]
    pub next_after: Option<String>,
    /// The store revision the page was read at.
    pub revision: u64,
}

/// A named lock as granted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lock {
    /// The lock's name.
    pub name: String,
    /// Who holds it.
    pub owner: String,
    /// The fencing token of this grant; larger than every earlier token of the lock.
    pub token: u64,
    /// When it frees itself unless renewed (Unix ms).
    pub expires_at_ms: i64,
}

impl Lock {
    /// The fence to attach to writes made under this lock.
    pub fn fence(&self) -> Fence {
        Fence { lock: self.name.clone(), token: self.token }
    }
}

pub use meridian_kv_types::BatchOp;
pub(crate) use meridian_kv_types::format_duration;

/// The JSON body of a batch request.
fn batch_body(ops: &[BatchOp]) -> serde_json::Value {
    let entries: Vec<meridian_kv_types::BatchEntry> = ops.iter().map(Into::into).collect();
    serde_json::json!({ "ops": entries })
}

fn unix_ms(t: SystemTime) -> Result<i64> {
    let d = t.duration_since(UNIX_EPOCH).map_err(|_| Error::InvalidInput("expiry instant before 1970".into()))?;
    i64::try_from(d.as_millis()).map_err(|_| Error::InvalidInput("expiry instant too far in the future".into()))
}

/// Parses `http(s)://host:port[/]` (no scheme: `http://`) into (base URL, Host header).
fn parse_endpoint(endpoint: &str) -> Result<(String, String)> {
    let trimmed = endpoint.trim().trim_end_matches('/');
    let with_scheme = if trimmed.contains("://") { trimmed.to_string() } else { format!("http://{trimmed}") };
    let uri: http::Uri = with_scheme.parse().map_err(|e| {
        Error::InvalidInput(format!("endpoint {endpoint:?} is not a URL like http://127.0.0.1:9400: {e}"))
    })?;
    let scheme = match uri.scheme_str() {
        Some(scheme @ ("http" | "https")) => scheme,
        _ => return Err(Error::InvalidInput(format!("endpoint {endpoint:?}: use an http:// or https:// URL"))),
    };
    let authority = uri
        .authority()
        .ok_or_else(|| Error::InvalidInput(format!("endpoint {endpoint:?} has no host")))?
        .as_str()
        .to_string();
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(Error::InvalidInput(format!(
            "endpoint {endpoint:?} has a path: give only the scheme, host and port (buckets are addressed path-style)"
        )));
    }
    Ok((format!("{scheme}://{authority}"), authority))
}

fn check_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::InvalidInput("the key is empty".into()));
    }
    Ok(())
}

fn header_str<'a>(resp: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    resp.get(name).and_then(|v| v.to_str().ok())
}

fn revision_of(headers: &http::HeaderMap) -> Result<u64> {
    header_str(headers, "x-meridian-revision").and_then(|v| v.parse().ok()).ok_or_else(|| {
        Error::Protocol("the response has no x-meridian-revision header (is this a Meridian server?)".into())
    })
}

impl Client {
    /// A client of `bucket` at `endpoint` (`http://host:port` or `https://host:port`, verified
    /// against the system's roots and the CA file named by `MERIDIAN_CA_FILE`, if set). Creates
    /// no connection yet.
    pub fn new(endpoint: &str, bucket: &str, credentials: Credentials) -> Result<Self> {
        let tls = ClientTls::from_env().map_err(|e| Error::InvalidInput(format!("MERIDIAN_CA_FILE: {e}")))?;
        Client::with_tls(endpoint, bucket, credentials, &tls)
    }

    /// Like [`Client::new`], trusting `tls` for an `https://` endpoint.
    pub fn with_tls(endpoint: &str, bucket: &str, credentials: Credentials, tls: &ClientTls) -> Result<Self> {
        if bucket.is_empty() || bucket.contains('/') {
            return Err(Error::InvalidInput(format!("invalid bucket name {bucket:?}")));
        }
        let (base, host) = parse_endpoint(endpoint)?;
        let connector = meridian_http::client::connector(tls, Duration::from_secs(10), true);
        let http = HyperClient::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(Client {
            http,
            base: base.into(),
            host: host.into(),
            bucket: bucket.into(),
            signer: Arc::new(Signer::new(&credentials, "us-east-1")),
            timeout: Some(DEFAULT_TIMEOUT),
            session: None,
        })
    }

    /// Like [`Client::new`] with credentials from `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`.
    pub fn from_env(endpoint: &str, bucket: &str) -> Result<Self> {
        Client::new(endpoint, bucket, Credentials::from_env()?)
    }

    /// The same connection pool and credentials, another bucket.
    pub fn with_bucket(&self, bucket: &str) -> Result<Self> {
        if bucket.is_empty() || bucket.contains('/') {
            return Err(Error::InvalidInput(format!("invalid bucket name {bucket:?}")));
        }
        Ok(Client { bucket: bucket.into(), ..self.clone() })
    }

    /// The same credentials, settings and session (see [`Client::with_session`]), another node:
    /// a client that moves between regions keeps its read-your-writes session.
    pub fn with_endpoint(&self, endpoint: &str) -> Result<Self> {
        let (base, host) = parse_endpoint(endpoint)?;
        Ok(Client { base: base.into(), host: host.into(), ..self.clone() })
    }

    /// Signs for this region (default `us-east-1`; a single Meridian node accepts any).
    pub fn with_region(mut self, region: &str) -> Self {
        self.signer = Arc::new(self.signer.for_region(region));
        self
    }

    /// Per-request timeout (default 60 s; `None`: none). Lock and transaction waits are added
    /// to it; watch streams are not limited by it.
    pub fn with_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// Keeps the read-your-writes session cookie like a browser: every write's answer sets
    /// `meridian-min-revision` to the write's revision, and every later request of this client
    /// (and its clones) carries it, so reads through any node reflect this session's writes.
    pub fn with_session(mut self) -> Self {
        self.session = Some(Arc::new(AtomicU64::new(0)));
        self
    }

    /// The revision in the session cookie (see [`Client::with_session`]), if the server set one.
    pub fn session_revision(&self) -> Option<u64> {
        self.session.as_ref().map(|s| s.load(Ordering::SeqCst)).filter(|r| *r > 0)
    }

    /// Stores the session cookie a response sets, when this client keeps one.
    fn keep_session_cookie(&self, headers: &http::HeaderMap) {
        let Some(session) = &self.session else { return };
        for value in headers.get_all(http::header::SET_COOKIE).iter().filter_map(|v| v.to_str().ok()) {
            let first = value.split(';').next().unwrap_or_default();
            let pair = first.split_once('=').map(|(k, v)| (k.trim(), v.trim()));
            if let Some(("meridian-min-revision", revision)) = pair
                && let Ok(revision) = revision.parse()
            {
                session.store(revision, Ordering::SeqCst);
            }
        }
    }

    /// The bucket this client addresses.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The endpoint, `http://host:port`.
    pub fn endpoint(&self) -> &str {
        &self.base
    }

    fn object_path(&self, key: &str) -> String {
        format!("/{}/{}", utf8_percent_encode(&self.bucket, QUERY), utf8_percent_encode(key, KEY))
    }

    /// `/bucket?meridian=ACTION&k=v...`
    pub(crate) fn kv_path(&self, action: &str, params: &[(&str, &str)]) -> String {
        let mut path = format!("/{}?meridian={action}", utf8_percent_encode(&self.bucket, QUERY));
        for (k, v) in params {
            path.push('&');
            path.push_str(k);
            path.push('=');
            path.push_str(&utf8_percent_encode(v, QUERY).to_string());
        }
        path
    }

    /// Sends a signed request; `extra_wait` lengthens the timeout (lock waits).
    pub(crate) async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Bytes,
        timeout: Option<Duration>,
    ) -> Result<Response<Incoming>> {
        let url = format!("{}{}", self.base, path);
        let cookie = self.session_revision().map(|r| ("cookie", format!("meridian-min-revision={r}")));
        let headers: Vec<(&str, String)> = headers.iter().cloned().chain(cookie).collect();
        let mut to_sign: Vec<(&str, &str)> = Vec::with_capacity(headers.len() + 1);
        to_sign.push(("host", &self.host));
        to_sign.extend(headers.iter().map(|(k, v)| (*k, v.as_str())));
        let signature = self.signer.sign(method.as_str(), &url, &to_sign, &body)?;
        let mut builder = Request::builder().method(method).uri(&url).header(http::header::HOST, &*self.host);
        for (k, v) in &headers {
            builder = builder.header(*k, v);
        }
        for (k, v) in &signature {
            builder = builder.header(*k, v);
        }
        let request =
            builder.body(Full::new(body)).map_err(|e| Error::InvalidInput(format!("cannot build the request: {e}")))?;
        let sent = self.http.request(request);
        let result = match timeout {
            Some(limit) => tokio::time::timeout(limit, sent)
                .await
                .map_err(|_| Error::Transport(format!("no response within {} ms", limit.as_millis())))?,
            None => sent.await,
        };
        let response = result.map_err(|e| Error::Transport(chain(&e)))?;
        self.keep_session_cookie(response.headers());
        Ok(response)
    }

    fn timeout_plus(&self, wait: Duration) -> Option<Duration> {
        self.timeout.map(|t| t + wait)
    }

    /// Reads a whole answer, or turns an error status into an [`Error`].
    async fn finish(&self, resp: Response<Incoming>, limit: usize) -> Result<(http::response::Parts, Bytes)> {
        let (parts, body) = resp.into_parts();
        let ok = parts.status.is_success();
        let limit = if ok { limit } else { MAX_ERROR_BODY };
        let read = Limited::new(body, limit).collect();
        let bytes = match self.timeout {
            Some(t) => tokio::time::timeout(t, read)
                .await
                .map_err(|_| Error::Transport("timed out reading the response body".into()))?,
            None => read.await,
        }
        .map_err(|e| Error::Transport(format!("reading the response body: {e}")))?
        .to_bytes();
        if !ok {
            return Err(from_response(parts.status.as_u16(), &parts.headers, &bytes, &self.bucket));
        }
        Ok((parts, bytes))
    }

    async fn json<T: for<'de> Deserialize<'de>>(&self, resp: Response<Incoming>) -> Result<T> {
        let (_, body) = self.finish(resp, MAX_JSON_BODY).await?;
        serde_json::from_slice(&body).map_err(|e| Error::Protocol(format!("malformed JSON answer: {e}")))
    }

    async fn post_json<T: for<'de> Deserialize<'de>>(
        &self,
        action: &str,
        body: &serde_json::Value,
        wait: Duration,
    ) -> Result<T> {
        let body = Bytes::from(serde_json::to_vec(body).map_err(|e| Error::InvalidInput(e.to_string()))?);
        let headers = [("content-type", "application/json".to_string())];
        let resp = self.send(Method::POST, &self.kv_path(action, &[]), &headers, body, self.timeout_plus(wait)).await?;
        self.json(resp).await
    }

    /// Creates the bucket; fine if it already exists and is yours.
    pub async fn create_bucket(&self) -> Result<()> {
        let path = format!("/{}", utf8_percent_encode(&self.bucket, QUERY));
        let resp = self.send(Method::PUT, &path, &[], Bytes::new(), self.timeout).await?;
        match self.finish(resp, MAX_ERROR_BODY).await {
            Ok(_) => Ok(()),
            Err(Error::Service { code, .. }) if code == "BucketAlreadyOwnedByYou" => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The value of `key`, its version and TTL; `None` if it does not exist or has expired.
    ///
    /// ```no_run
    /// # async fn demo(kv: meridian_client::Client) -> meridian_client::Result<()> {
    /// match kv.get("config/feature-x").await? {
    ///     Some(entry) => println!("{} at revision {}", String::from_utf8_lossy(&entry.value), entry.revision),
    ///     None => println!("not set"),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn get(&self, key: &str) -> Result<Option<Entry>> {
        self.get_with(key, &GetOptions::default()).await
    }

    /// [`Client::get`] at a chosen consistency.
    ///
    /// ```no_run
    /// # async fn demo(kv: meridian_client::Client, other_region: meridian_client::Client) -> meridian_client::Result<()> {
    /// use meridian_client::{Consistency, GetOptions};
    /// let revision = kv.put("users/42", "alice").await?;
    /// // Through a node of another region: wait until its view holds the write.
    /// let opts = GetOptions::default().consistency(Consistency::AtLeast(revision));
    /// let entry = other_region.get_with("users/42", &opts).await?;
    /// # let _ = entry; Ok(()) }
    /// ```
    pub async fn get_with(&self, key: &str, options: &GetOptions) -> Result<Option<Entry>> {
        check_key(key)?;
        let headers: Vec<(&str, String)> = match options.consistency {
            Consistency::Local => vec![],
            Consistency::Strong => vec![("x-meridian-consistency", "strong".into())],
            Consistency::AtLeast(revision) => vec![("x-meridian-min-revision", revision.to_string())],
        };
        let resp = self.send(Method::GET, &self.object_path(key), &headers, Bytes::new(), self.timeout).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            let err = self.finish(resp, 0).await.err();
            return match err {
                Some(Error::Service { code, .. }) if code == "NoSuchKey" || code == "NotFound" => Ok(None),
                Some(e) => Err(e),
                None => Ok(None),
            };
        }
        let (parts, value) = self.finish(resp, usize::MAX).await?;
        let headers = &parts.headers;
        Ok(Some(Entry {
            value,
            revision: revision_of(headers)?,
            etag: header_str(headers, "etag").unwrap_or_default().trim_matches('"').to_string(),
            expires_at_ms: header_str(headers, "x-meridian-expires-at").and_then(|v| v.parse().ok()),
            ttl_remaining: header_str(headers, "x-meridian-ttl-remaining-ms")
                .and_then(|v| v.parse().ok())
                .map(Duration::from_millis),
        }))
    }

    /// Writes `value` under `key`; returns the key's new version.
    pub async fn put(&self, key: &str, value: impl Into<Bytes>) -> Result<u64> {
        self.put_with(key, value, &PutOptions::default()).await
    }

    /// Writes with conditions, a TTL, a fence or the key lock; returns the key's new version.
    ///
    /// Compare-and-set: read, compute, write only if nobody wrote in between.
    ///
    /// ```no_run
    /// # async fn demo(kv: meridian_client::Client) -> meridian_client::Result<()> {
    /// use meridian_client::{Error, PutOptions};
    /// loop {
    ///     let current = kv.get("counter").await?;
    ///     let (n, rev) = match &current {
    ///         Some(e) => (String::from_utf8_lossy(&e.value).parse::<u64>().unwrap_or(0), e.revision),
    ///         None => (0, 0), // 0: "only if absent"
    ///     };
    ///     match kv.put_with("counter", (n + 1).to_string(), &PutOptions::default().if_revision(rev)).await {
    ///         Ok(_) => break,
    ///         Err(Error::VersionMismatch { .. }) => continue, // someone else won; read again
    ///         Err(e) => return Err(e),
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn put_with(&self, key: &str, value: impl Into<Bytes>, options: &PutOptions) -> Result<u64> {
        check_key(key)?;
        let mut headers: Vec<(&str, String)> = Vec::new();
        let if_revision = match (options.if_absent, options.if_revision) {
            (true, Some(rev)) if rev != 0 => {
                return Err(Error::InvalidInput(format!(
                    "if_absent and if_revision {rev} contradict each other: use one"
                )));
            }
            (true, _) => Some(0),
            (false, rev) => rev,
        };
        if let Some(rev) = if_revision {
            headers.push(("x-meridian-if-revision", rev.to_string()));
        }
        if let Some(etag) = &options.if_match {
            headers.push(("if-match", format!("\"{}\"", etag.trim_matches('"'))));
        }
        if options.if_none_match {
            headers.push(("if-none-match", "*".into()));
        }
        match (options.ttl, options.expires_at) {
            (Some(_), Some(_)) => return Err(Error::InvalidInput("give a TTL or an expiry instant, not both".into())),
            (Some(ttl), None) => headers.push(("x-meridian-ttl", format_duration(ttl))),
            (None, Some(at)) => headers.push(("x-meridian-expires", unix_ms(at)?.to_string())),
            (None, None) => {}
        }
        let mut wait = Duration::ZERO;
        match (&options.fence, &options.transaction) {
            (Some(_), Some(_)) => {
                return Err(Error::InvalidInput(
                    "a put_transaction fences itself with the key's lock: drop the fence or the transaction".into(),
                ));
            }
            (Some(fence), None) => {
                headers.push(("x-meridian-fence-lock", fence.lock.clone()));
                headers.push(("x-meridian-fence", fence.token.to_string()));
            }
            (None, Some(tx)) => {
                wait = tx.wait;
                headers.push(("x-meridian-transaction", "lock".into()));
                headers.push((
                    "x-meridian-lock-wait",
                    if tx.wait.is_zero() { "0".into() } else { format_duration(tx.wait) },
                ));
                if let Some(ttl) = tx.lock_ttl {
                    headers.push(("x-meridian-lock-ttl", format_duration(ttl)));
                }
            }
            (None, None) => {}
        }
        let resp =
            self.send(Method::PUT, &self.object_path(key), &headers, value.into(), self.timeout_plus(wait)).await?;
        let (parts, _) = self.finish(resp, MAX_ERROR_BODY).await?;
        revision_of(&parts.headers)
    }

    /// put_transaction: takes the key's global lock, writes, releases. When another writer holds
    /// the lock it fails at once with [`Error::LockContended`] (the seed's `:aborted`), or waits
    /// up to `wait` for it.
    pub async fn put_transaction(&self, key: &str, value: impl Into<Bytes>, wait: Duration) -> Result<u64> {
        self.put_with(key, value, &PutOptions::default().transaction(wait)).await
    }

    /// Deletes `key` (fine if it does not exist); returns the revision of the delete.
    pub async fn delete(&self, key: &str) -> Result<u64> {
        self.delete_with(key, &DeleteOptions::default()).await
    }

    /// Deletes with a condition on the key's revision and/or a fence.
    pub async fn delete_with(&self, key: &str, options: &DeleteOptions) -> Result<u64> {
        check_key(key)?;
        let mut headers: Vec<(&str, String)> = Vec::new();
        if let Some(rev) = options.if_revision {
            headers.push(("x-meridian-if-revision", rev.to_string()));
        }
        if let Some(fence) = &options.fence {
            headers.push(("x-meridian-fence-lock", fence.lock.clone()));
            headers.push(("x-meridian-fence", fence.token.to_string()));
        }
        let resp = self.send(Method::DELETE, &self.object_path(key), &headers, Bytes::new(), self.timeout).await?;
        let (parts, _) = self.finish(resp, MAX_ERROR_BODY).await?;
        revision_of(&parts.headers)
    }

    /// One page of keys under `prefix`, in key order, starting after `after`, at most `limit`
    /// (the server caps a page at 1,000).
    pub async fn list(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Page> {
        let limit = limit.to_string();
        let mut params = vec![("prefix", prefix), ("limit", limit.as_str())];
        if let Some(after) = after {
            params.push(("after", after));
        }
        let resp = self.send(Method::GET, &self.kv_path("list", &params), &[], Bytes::new(), self.timeout).await?;
        self.json(resp).await
    }

    /// Every key under `prefix`, page by page. Each page is consistent in itself; keys written
    /// while the listing runs may or may not appear.
    pub async fn list_all(&self, prefix: &str) -> Result<Vec<ListEntry>> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.list(prefix, after.as_deref(), 1000).await?;
            out.extend(page.entries);
            match page.next_after {
                Some(next) => after = Some(next),
                None => return Ok(out),
            }
        }
    }

    /// Takes the named lock for `ttl`. When someone else holds it: fails at once with
    /// [`Error::LockContended`] (`wait` zero) or keeps trying for up to `wait`.
    ///
    /// ```no_run
    /// # async fn demo(kv: meridian_client::Client) -> meridian_client::Result<()> {
    /// use std::time::Duration;
    /// use meridian_client::PutOptions;
    /// let lock = kv.lock("db/tenant-7", "machine-a", Duration::from_secs(30), Duration::ZERO).await?;
    /// // Writes under the lock carry its fence: once someone else takes the lock (say we were
    /// // paused past the TTL), they are refused with Error::FenceRejected.
    /// kv.put_with("db/tenant-7/state", "...", &PutOptions::default().fence(lock.fence())).await?;
    /// kv.release(&lock.name, lock.token).await?;
    /// # Ok(()) }
    /// ```
    pub async fn lock(&self, name: &str, owner: &str, ttl: Duration, wait: Duration) -> Result<Lock> {
        let mut body = serde_json::json!({ "name": name, "owner": owner, "ttl": format_duration(ttl) });
        if !wait.is_zero() {
            body["wait"] = format_duration(wait).into();
        }
        self.post_json("lock", &body, wait).await
    }

    /// Extends a held lock to `ttl` from now. [`Error::LockNotHeld`] if `token` is not the
    /// current grant or the lock already expired.
    pub async fn renew(&self, name: &str, token: u64, ttl: Duration) -> Result<Lock> {
        let body = serde_json::json!({ "name": name, "token": token, "ttl": format_duration(ttl) });
        self.post_json("renew", &body, Duration::ZERO).await
    }

    /// Releases a lock held with `token`. [`Error::LockNotHeld`] if someone else holds it now.
    pub async fn release(&self, name: &str, token: u64) -> Result<()> {
        let body = serde_json::json!({ "name": name, "token": token });
        let _: serde_json::Value = self.post_json("release", &body, Duration::ZERO).await?;
        Ok(())
    }

    /// Who holds the named lock right now, if anyone (e.g. to send a request to the machine
    /// that owns a database).
    pub async fn owner(&self, name: &str) -> Result<Option<Lock>> {
        #[derive(Deserialize)]
        struct Answer {
            lock: Option<Lock>,
        }
        let resp =
            self.send(Method::GET, &self.kv_path("lock", &[("name", name)]), &[], Bytes::new(), self.timeout).await?;
        let answer: Answer = self.json(resp).await?;
        Ok(answer.lock)
    }

    /// Applies every operation or none, atomically; returns the batch's revision (the new
    /// version of every key it put). A failed condition is [`Error::VersionMismatch`] and
    /// nothing is applied.
    ///
    /// ```no_run
    /// # async fn demo(kv: meridian_client::Client) -> meridian_client::Result<()> {
    /// use meridian_client::BatchOp;
    /// let rev = kv.batch(vec![
    ///     BatchOp::put("accounts/a", "90").if_revision(17),
    ///     BatchOp::put("accounts/b", "110").if_revision(18),
    ///     BatchOp::delete("pending/transfer-9"),
    /// ]).await?;
    /// # let _ = rev; Ok(()) }
    /// ```
    pub async fn batch(&self, ops: Vec<BatchOp>) -> Result<u64> {
        #[derive(Deserialize)]
        struct Answer {
            revision: u64,
        }
        for op in &ops {
            check_key(op.key())?;
        }
        let body = batch_body(&ops);
        let answer: Answer = self.post_json("batch", &body, Duration::ZERO).await?;
        Ok(answer.revision)
    }

    /// The current store revision (of the bucket's listing), e.g. to watch from "now" without
    /// missing anything: `watch(prefix, revision + 1)`.
    pub async fn revision(&self) -> Result<u64> {
        Ok(self.list("", None, 1).await?.revision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            parse_endpoint("http://127.0.0.1:9400/").unwrap(),
            ("http://127.0.0.1:9400".into(), "127.0.0.1:9400".into())
        );
        assert_eq!(parse_endpoint("localhost:9").unwrap(), ("http://localhost:9".into(), "localhost:9".into()));
        assert_eq!(parse_endpoint("https://x").unwrap(), ("https://x".into(), "x".into()));
        assert!(parse_endpoint("http://x/path").is_err());
        assert_eq!(parse_endpoint("https://h:9").unwrap(), ("https://h:9".into(), "h:9".into()));
        assert!(parse_endpoint("ftp://h:9").is_err());
        assert!(parse_endpoint("ftp://x").is_err());
    }

    #[test]
    fn keys_are_encoded_once_keeping_slashes() {
        let c = Client::new("http://h:1", "b", Credentials::new("a", "s")).unwrap();
        assert_eq!(c.object_path("a b/c+d/é?#"), "/b/a%20b/c%2Bd/%C3%A9%3F%23");
        assert_eq!(c.kv_path("list", &[("prefix", "a b+c/")]), "/b?meridian=list&prefix=a%20b%2Bc%2F");
    }

    #[test]
    fn batch_json() {
        let op = BatchOp::put("k", vec![0xffu8, 0]).if_revision(3).ttl(Duration::from_millis(1500));
        assert_eq!(
            batch_body(&[op, BatchOp::delete("d")]),
            serde_json::json!({"ops": [
                {"op": "put", "key": "k", "value_base64": "/wA=", "if_revision": 3, "ttl": "1500ms"},
                {"op": "delete", "key": "d"},
            ]})
        );
    }
}
