//! Node-to-node blob fetch over HTTP/1.1.
//!
//! `GET /_meridian/blob/<32 hex blob id>?offset=N&len=M` with the header
//! `x-meridian-cluster-token: <token>` answers the bytes `[N, N+M)` of a local blob as a streamed
//! body with a Content-Length (`offset` defaults to 0, `len` to the rest of the blob; `HEAD`
//! answers the headers only). Errors: 401 missing or wrong token, 400 malformed id or query,
//! 404 unknown blob, 405 other methods, 416 range outside the blob (with
//! `Content-Range: bytes */size`). Every answer carries `x-meridian-blob-size` when the blob
//! exists. Bucket names cannot start with `_`, so `/_meridian/` never clashes with S3 paths.
//!
//! `PUT /_meridian/blob/<id>?chunk=N` (with the token) stores the streamed body as a local blob
//! of that id — a synchronous copy made while the writing node ingests the object — and answers
//! `201` once it is durable, with `x-meridian-blob-size` and `x-meridian-blob-digest` (see
//! [`digest_of_digests`]; `N` is the chunk size of the CRC32C digests it covers), so the sender
//! checks the copy against what it ingested. `409` when that blob is already here, `400` when
//! the body broke off (nothing is kept). A copy longer than one segment goes as a striped copy
//! instead: several `PUT`s with `stripe=` and a `POST` that completes it (see
//! [`crate::stripe`]). `DELETE /_meridian/blob/<id>` removes a copy (`204`, also when there was
//! none): the writer's clean-up when its commit failed.
//!
//! [`PeerClient`] is the other end, and a [`ChunkSource`] for the chunk cache.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, stream};
use http::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use meridian_common::errors::chain;
use meridian_http::ClientTls;
use subtle::ConstantTimeEq;
use sync_wrapper::SyncWrapper;
use tokio::net::TcpListener;

use crate::cache::ChunkSource;
use crate::stripe::{self, Dealer, Layout};
use crate::{BlobError, BlobId, BlobResult, BlobStore};

/// Path prefix of the blob endpoint.
pub const BLOB_PATH: &str = "/_meridian/blob/";
/// Header carrying the cluster token.
pub const TOKEN_HEADER: &str = "x-meridian-cluster-token";
/// Header carrying the whole blob's size on answers about an existing blob.
pub const BLOB_SIZE_HEADER: &str = "x-meridian-blob-size";
/// Header of a stored copy's answer: [`digest_of_digests`] of its chunks, 8 hex digits.
pub const BLOB_DIGEST_HEADER: &str = "x-meridian-blob-digest";
/// `GET /_meridian/clock` (with the cluster token): the node's wall clock, for other nodes to
/// measure their offset from it.
pub const CLOCK_PATH: &str = "/_meridian/clock";
/// The answer's header carrying the node's wall clock, in milliseconds since the Unix epoch.
pub const CLOCK_HEADER: &str = "x-meridian-clock-ms";
/// Default time to establish a connection to a peer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default time a peer may send nothing (before the headers, or between body frames).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a request to a peer failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerFailure {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("refused the cluster token (HTTP 401); every node must be started with the same cluster token")]
    Unauthorized,
    #[error("does not have blob {0} (HTTP 404)")]
    NotFound(BlobId),
    #[error("refused the byte range (HTTP 416)")]
    BadRange,
    #[error("answered HTTP {0}")]
    Status(u16),
    #[error("request failed: {0}")]
    Request(String),
    #[error("transfer failed: {0}")]
    Transfer(String),
    #[error("sent {got} bytes where {expected} were asked for")]
    Length { expected: u64, got: u64 },
    /// The cluster registry reports the node down: it was not asked.
    #[error("is down (no heartbeat for {silent_ms} ms); not asked")]
    Down { silent_ms: i64 },
}

/// The body of a peer endpoint answer: `Send + Sync`, so it fits `s3s::Body::http_body`.
pub struct PeerBody {
    inner: Option<SyncWrapper<BoxStream<'static, BlobResult<Bytes>>>>,
    remaining: u64,
}

impl PeerBody {
    pub fn empty() -> Self {
        PeerBody { inner: None, remaining: 0 }
    }

    fn text(text: &str) -> Self {
        let bytes = Bytes::from(format!("{text}\n"));
        let len = bytes.len() as u64;
        PeerBody::stream(stream::once(async move { Ok(bytes) }).boxed(), len)
    }

    fn stream(stream: BoxStream<'static, BlobResult<Bytes>>, len: u64) -> Self {
        PeerBody { inner: Some(SyncWrapper::new(stream)), remaining: len }
    }
}

impl http_body::Body for PeerBody {
    type Data = Bytes;
    type Error = BlobError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BlobError>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else { return Poll::Ready(None) };
        match ready!(inner.get_mut().poll_next_unpin(cx)) {
            Some(Ok(bytes)) => {
                this.remaining = this.remaining.saturating_sub(bytes.len() as u64);
                Poll::Ready(Some(Ok(Frame::data(bytes))))
            }
            Some(Err(e)) => {
                this.inner = None;
                Poll::Ready(Some(Err(e)))
            }
            None => {
                this.inner = None;
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_none()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining)
    }
}

fn plain(status: StatusCode, text: &str) -> Response<PeerBody> {
    let mut resp = Response::new(PeerBody::text(text));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

fn token_ok(expected: &str, headers: &HeaderMap) -> bool {
    let Some(given) = headers.get(TOKEN_HEADER) else { return false };
    // An empty configured token accepts nobody.
    !expected.is_empty() && bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
}

/// The number a query string gives `name` (decimal digits only), `None` when it has none.
fn query_number(query: Option<&str>, name: &str) -> Result<Option<u64>, String> {
    let pairs = query.unwrap_or("").split('&');
    let Some(value) = pairs.rev().find_map(|pair| pair.strip_prefix(name)?.strip_prefix('=')) else {
        return Ok(None);
    };
    match value.parse::<u64>() {
        Ok(number) if value.bytes().all(|b| b.is_ascii_digit()) => Ok(Some(number)),
        _ => Err(format!("{name}={value} is not a byte count")),
    }
}

/// Parses `offset` and `len` from a query string.
fn range_query(query: Option<&str>) -> Result<(Option<u64>, Option<u64>), String> {
    Ok((query_number(query, "offset")?, query_number(query, "len")?))
}

/// A query's number that must be there.
fn required_number(query: Option<&str>, name: &str) -> Result<u64, String> {
    query_number(query, name)?.ok_or_else(|| format!("the query needs {name}=<number>"))
}

/// The layout of a striped copy a query names.
fn layout_query(query: Option<&str>) -> Result<Layout, String> {
    let number = |name| required_number(query, name);
    Layout { chunk: number("chunk")?, stripes: number("stripes")?, segment: number("segment")? }.check()
}

/// Answers one request to the peer blob endpoint from the local blob store. Mount it for every
/// path that starts with [`BLOB_PATH`] (or `/_meridian/`), before S3 routing and S3 auth: the
/// cluster token is its authentication.
pub async fn serve_blob_request<B>(store: &BlobStore, token: &str, req: Request<B>) -> Response<PeerBody>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin,
    B::Error: std::fmt::Display,
{
    if !token_ok(token, req.headers()) {
        return plain(StatusCode::UNAUTHORIZED, &format!("missing or wrong {TOKEN_HEADER}"));
    }
    let head = req.method() == Method::HEAD;
    if matches!(*req.method(), Method::PUT | Method::POST | Method::DELETE) {
        return match blob_of(&req) {
            Ok(id) if req.method() == Method::PUT => receive_blob(store, id, req).await,
            Ok(id) if req.method() == Method::POST => complete_striped(store, id, req.uri().query()).await,
            Ok(id) => delete_blob(store, id).await,
            Err((status, reason)) => plain(status, reason),
        };
    }
    if !head && req.method() != Method::GET {
        let mut resp = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET, HEAD, PUT, POST and DELETE");
        resp.headers_mut().insert(http::header::ALLOW, HeaderValue::from_static("GET, HEAD, PUT, POST, DELETE"));
        return resp;
    }
    if req.uri().path() == CLOCK_PATH {
        let mut resp = Response::new(PeerBody::empty());
        resp.headers_mut().insert(CLOCK_HEADER, header_value(wall_clock_ms().to_string()));
        return resp;
    }
    let id = match blob_of(&req) {
        Ok(id) => id,
        Err((status, reason)) => return plain(status, reason),
    };
    let (offset, len) = match range_query(req.uri().query()) {
        Ok(range) => range,
        Err(reason) => return plain(StatusCode::BAD_REQUEST, &reason),
    };
    let size = match store.size(id).await {
        Ok(size) => size,
        Err(BlobError::NotFound(_)) => return plain(StatusCode::NOT_FOUND, &format!("blob {id} not found")),
        Err(e) => {
            tracing::warn!(blob = %id, error = %e, "peer blob request failed");
            return plain(StatusCode::INTERNAL_SERVER_ERROR, "blob store error");
        }
    };
    let offset = offset.unwrap_or(0);
    let len = len.unwrap_or(size.saturating_sub(offset));
    if offset.checked_add(len).is_none_or(|end| end > size) {
        let mut resp = plain(
            StatusCode::RANGE_NOT_SATISFIABLE,
            &format!("{len} bytes at offset {offset} are outside the blob's {size} bytes"),
        );
        resp.headers_mut().insert(CONTENT_RANGE, header_value(format!("bytes */{size}")));
        resp.headers_mut().insert(BLOB_SIZE_HEADER, header_value(size.to_string()));
        return resp;
    }
    let body = if head {
        PeerBody::empty()
    } else {
        match store.read(id, offset, len).await {
            Ok(stream) => PeerBody::stream(stream.boxed(), len),
            Err(BlobError::NotFound(_)) => return plain(StatusCode::NOT_FOUND, &format!("blob {id} not found")),
            Err(e) => {
                tracing::warn!(blob = %id, error = %e, "peer blob request failed");
                return plain(StatusCode::INTERNAL_SERVER_ERROR, "blob store error");
            }
        }
    };
    let mut resp = Response::new(body);
    let headers = resp.headers_mut();
    headers.insert(CONTENT_LENGTH, header_value(len.to_string()));
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    headers.insert(BLOB_SIZE_HEADER, header_value(size.to_string()));
    resp
}

/// The blob a request's path names, or the status and reason refusing it.
fn blob_of<B>(req: &Request<B>) -> Result<BlobId, (StatusCode, &'static str)> {
    let Some(name) = req.uri().path().strip_prefix(BLOB_PATH) else {
        return Err((StatusCode::NOT_FOUND, "no such peer endpoint"));
    };
    match name.parse::<BlobId>() {
        Ok(id) if name.len() == 32 && name.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(id),
        _ => Err((StatusCode::BAD_REQUEST, "not a blob id (32 hex digits)")),
    }
}

/// One CRC32C over a blob's chunk digests (each as 4 big-endian bytes): what a node that
/// stored a copy reports, so the sender compares every chunk of it in one value.
pub fn digest_of_digests(digests: &[u32]) -> u32 {
    let bytes: Vec<u8> = digests.iter().flat_map(|d| d.to_be_bytes()).collect();
    crate::crc32c(&bytes)
}

/// Stores a streamed copy of blob `id`, durably, and answers its size and digest.
async fn receive_blob<B>(store: &BlobStore, id: BlobId, req: Request<B>) -> Response<PeerBody>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin,
    B::Error: std::fmt::Display,
{
    if !matches!(query_number(req.uri().query(), "stripe"), Ok(None)) {
        return receive_stripe(store, id, req).await;
    }
    let chunk_size = match chunk_query(req.uri().query()) {
        Ok(size) => size,
        Err(reason) => return plain(StatusCode::BAD_REQUEST, &reason),
    };
    let mut writer = match store.create_named(id).await {
        Ok(writer) => writer,
        Err(BlobError::Exists(_)) => return plain(StatusCode::CONFLICT, &format!("blob {id} is already here")),
        Err(e) => return store_error(id, &e),
    };
    let mut hasher = crate::ChunkHasher::new(chunk_size);
    let mut body = req.into_body();
    while let Some(frame) = body.frame().await {
        let data = match frame.map(Frame::into_data) {
            Ok(Ok(data)) => data,
            Ok(Err(_)) => continue, // trailers
            Err(e) => return plain(StatusCode::BAD_REQUEST, &format!("the copy's body broke off: {e}")),
        };
        hasher.update(&data);
        if let Err(e) = writer.write(data).await {
            return store_error(id, &e);
        }
    }
    let size = writer.len();
    if let Err(e) = writer.finish().await {
        return store_error(id, &e);
    }
    stored(StoredCopy { size, digest: digest_of_digests(&hasher.finish()) })
}

async fn delete_blob(store: &BlobStore, id: BlobId) -> Response<PeerBody> {
    match store.delete(id).await {
        Ok(()) => {
            let mut resp = Response::new(PeerBody::empty());
            *resp.status_mut() = StatusCode::NO_CONTENT;
            resp
        }
        Err(e) => store_error(id, &e),
    }
}

fn store_error(id: BlobId, e: &BlobError) -> Response<PeerBody> {
    tracing::warn!(blob = %id, error = %e, "peer blob request failed");
    plain(StatusCode::INTERNAL_SERVER_ERROR, "blob store error")
}

/// The `chunk` parameter of a copy: the chunk size its digest covers.
fn chunk_query(query: Option<&str>) -> Result<u64, String> {
    match required_number(query, "chunk")? {
        0 => Err("chunk=0 is not a chunk size".into()),
        size => Ok(size),
    }
}

/// Receives one stripe of a striped copy (see [`crate::stripe`]): `200` once it is taken in.
async fn receive_stripe<B>(store: &BlobStore, id: BlobId, req: Request<B>) -> Response<PeerBody>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin,
    B::Error: std::fmt::Display,
{
    let query = req.uri().query();
    let (layout, stripe) = match layout_query(query).and_then(|l| Ok((l, required_number(query, "stripe")?))) {
        Ok(parsed) => parsed,
        Err(reason) => return plain(StatusCode::BAD_REQUEST, &reason),
    };
    match stripe::receive_stripe(store, id, layout, stripe, req.into_body()).await {
        Ok(()) => Response::new(PeerBody::empty()),
        Err((status, reason)) => plain(status, &reason),
    }
}

/// Completes a striped copy: `201` with its size and digest once it is durable.
async fn complete_striped(store: &BlobStore, id: BlobId, query: Option<&str>) -> Response<PeerBody> {
    let parsed = layout_query(query)
        .and_then(|layout| Ok((layout, required_number(query, "segments")?, required_number(query, "size")?)));
    let (layout, segments, size) = match parsed {
        Ok(parsed) => parsed,
        Err(reason) => return plain(StatusCode::BAD_REQUEST, &reason),
    };
    match stripe::complete_stripes(store, id, layout, segments, size).await {
        Ok(copy) => stored(copy),
        Err((status, reason)) => plain(status, &reason),
    }
}

/// The answer to a copy made durable.
fn stored(copy: StoredCopy) -> Response<PeerBody> {
    let mut resp = Response::new(PeerBody::empty());
    *resp.status_mut() = StatusCode::CREATED;
    resp.headers_mut().insert(BLOB_SIZE_HEADER, header_value(copy.size.to_string()));
    resp.headers_mut().insert(BLOB_DIGEST_HEADER, header_value(format!("{:08x}", copy.digest)));
    resp
}

/// This machine's wall clock, uncorrected, in milliseconds since the Unix epoch.
fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// One measurement of another node's clock against this one's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockSample {
    /// The other clock minus this one, in milliseconds, assuming the answer was read half way
    /// through the round trip: wrong by at most half of `round_trip_ms`.
    pub offset_ms: i64,
    pub round_trip_ms: i64,
}

fn header_value(text: String) -> HeaderValue {
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// Serves only the peer blob endpoint on `listener` (with [`meridian_http::Policy::peer`])
/// until `shutdown` resolves. A node mounts [`serve_blob_request`] on its S3 listener instead;
/// this is for tests and tools.
pub async fn serve_peer(
    listener: TcpListener,
    store: BlobStore,
    token: String,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let token: Arc<str> = token.into();
    let handler = meridian_http::handler_fn(move |req, info: meridian_http::RequestInfo| {
        let (store, token) = (store.clone(), token.clone());
        async move {
            info.notes.set_operation("peer.blob");
            serve_blob_request(&store, &token, req).await.map(meridian_http::boxed)
        }
    });
    meridian_http::Server::new(meridian_http::Policy::peer()).serve(listener, handler, shutdown).await
}

/// How this node reaches the others: the cluster token it presents and whom it trusts when a
/// peer's URL is `https://`.
#[derive(Clone)]
pub struct PeerAccess {
    token: String,
    tls: ClientTls,
}

impl PeerAccess {
    pub fn new(token: impl Into<String>, tls: ClientTls) -> PeerAccess {
        PeerAccess { token: token.into(), tls }
    }

    /// A client of the node at `base_url`.
    pub fn client(&self, base_url: &str) -> BlobResult<PeerClient> {
        PeerClient::new(base_url, &self.token, &self.tls)
    }
}

/// Fetches blob bytes from one other node. Cheap to clone; connections are pooled.
#[derive(Clone)]
pub struct PeerClient {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    base: String,
    token: HeaderValue,
    idle: Duration,
    client: Client<meridian_http::client::Connector, Empty<Bytes>>,
    /// Sends copies (streamed request bodies) on connections of their own.
    upload: Client<meridian_http::client::Connector, UploadBody>,
}

/// The body of a copy sent to a peer.
type UploadBody = http_body_util::StreamBody<BoxStream<'static, Result<Frame<Bytes>, BlobError>>>;

/// How a copy travels to its peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyStreams {
    /// One HTTP stream, however long the copy: the cheapest in CPU, and as fast as several on a
    /// short link.
    One,
    /// A copy longer than one [`stripe::SEGMENT`] over [`stripe::STRIPES`] streams at once: on
    /// a long link one stream's window, not the bytes, is what limits it.
    Striped,
}

/// What a peer reported about a copy it stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoredCopy {
    pub size: u64,
    /// [`digest_of_digests`] of its chunks.
    pub digest: u32,
}

impl PeerClient {
    /// A client of the node at `base_url` (`http://host:port` or `https://host:port`, verified
    /// against `tls`), with the default timeouts.
    pub fn new(base_url: &str, token: &str, tls: &ClientTls) -> BlobResult<PeerClient> {
        PeerClient::with_timeouts(base_url, token, tls, CONNECT_TIMEOUT, IDLE_TIMEOUT)
    }

    pub fn with_timeouts(
        base_url: &str,
        token: &str,
        tls: &ClientTls,
        connect: Duration,
        idle: Duration,
    ) -> BlobResult<PeerClient> {
        let base = base_url.trim_end_matches('/').to_string();
        let uri: http::Uri =
            base.parse().map_err(|e| BlobError::Config(format!("peer URL {base_url:?} is not a URL: {e}")))?;
        if !matches!(uri.scheme_str(), Some("http" | "https"))
            || uri.authority().is_none()
            || !matches!(uri.path(), "" | "/")
        {
            return Err(BlobError::Config(format!("peer URL {base_url:?} must look like http(s)://host:port")));
        }
        let mut token = HeaderValue::from_str(token)
            .map_err(|_| BlobError::Config("the cluster token must be printable ASCII".into()))?;
        token.set_sensitive(true);
        let connector = meridian_http::client::connector(tls, connect, true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector.clone());
        let upload = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Ok(PeerClient { inner: Arc::new(ClientInner { base, token, idle, client, upload }) })
    }

    pub fn base_url(&self) -> &str {
        &self.inner.base
    }

    fn error(&self, failure: PeerFailure) -> BlobError {
        BlobError::Peer { peer: self.inner.base.clone(), failure }
    }

    /// Streams `body` to the peer as its copy of `blob` and returns once the peer has made it
    /// durable (`chunk_size`: the chunk size of the digest it reports). With
    /// [`CopyStreams::Striped`], a body longer than one [`stripe::SEGMENT`] goes over several
    /// connections at once (see [`crate::stripe`]). No time limit of its own, but for a stream
    /// that takes nothing for the idle timeout: the caller bounds the whole copy.
    pub async fn put_blob(
        &self,
        blob: BlobId,
        chunk_size: u64,
        mut body: BoxStream<'static, Result<Bytes, BlobError>>,
        streams: CopyStreams,
    ) -> BlobResult<StoredCopy> {
        if streams == CopyStreams::One {
            return self.put_whole(blob, chunk_size, body).await;
        }
        let mut head = Vec::new();
        let mut len = 0u64;
        while len <= stripe::SEGMENT {
            match body.next().await {
                Some(data) => {
                    let data = data?;
                    len += data.len() as u64;
                    head.push(Ok(data));
                }
                None => return self.put_whole(blob, chunk_size, stream::iter(head).boxed()).await,
            }
        }
        self.put_striped(blob, Layout::sending(chunk_size), stream::iter(head).chain(body).boxed()).await
    }

    /// A copy on one stream (`PUT ?chunk=`), however long: what [`PeerClient::put_blob`] does
    /// for copies up to one segment, public so benchmarks can compare the two.
    pub async fn put_whole(
        &self,
        blob: BlobId,
        chunk_size: u64,
        body: BoxStream<'static, Result<Bytes, BlobError>>,
    ) -> BlobResult<StoredCopy> {
        let frames = body.map(|r| r.map(Frame::data)).boxed();
        let resp = self.upload(Method::PUT, &format!("{blob}?chunk={chunk_size}"), frames).await?;
        self.stored_copy(&resp)
    }

    /// A striped copy: each segment of `body` to its stripe's stream (opened when its first
    /// segment comes), then the `POST` that waits for the copy to be durable.
    async fn put_striped(
        &self,
        blob: BlobId,
        layout: Layout,
        mut body: BoxStream<'static, Result<Bytes, BlobError>>,
    ) -> BlobResult<StoredCopy> {
        let mut dealer = Dealer::new(layout.segment);
        let mut stripes = Stripes::default();
        while let Some(data) = body.next().await {
            // An error here drops the stripes without their end: the peer abandons the copy.
            for (segment, piece, _) in dealer.deal(data?) {
                let stripe = (segment % layout.stripes) as usize;
                while stripes.senders.len() <= stripe {
                    stripes.open(self, blob, layout);
                }
                let sent = tokio::time::timeout(self.inner.idle, stripes.senders[stripe].send(Some(piece))).await;
                match sent {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Err(stripes.failure(stripe).await),
                    Err(_) => {
                        let waited = self.inner.idle.as_secs_f64();
                        let why = format!("stripe {stripe} of the copy took nothing for {waited:.1}s");
                        return Err(self.error(PeerFailure::Timeout(why)));
                    }
                }
            }
        }
        for sender in &stripes.senders {
            // A stripe that has ended already says why below.
            let _ = sender.send(None).await;
        }
        let query = format!("{blob}?{}&segments={}&size={}", layout.query(), dealer.segments(), dealer.size());
        let completed = self.upload(Method::POST, &query, stream::empty().boxed());
        let (completed, stripes) = tokio::join!(completed, stripes.all_taken());
        match (completed.and_then(|resp| self.stored_copy(&resp)), stripes) {
            // Durable and checked: a stripe's lost answer does not matter.
            (Ok(copy), _) => Ok(copy),
            // The peer's refusal says more than a stripe cut short by it.
            (Err(refused @ BlobError::Peer { failure: PeerFailure::Status(_), .. }), _) => Err(refused),
            (Err(completing), stripes) => Err(stripes.err().unwrap_or(completing)),
        }
    }

    /// Sends one request with a streamed body to the blob endpoint (`path`: after [`BLOB_PATH`]).
    async fn upload(
        &self,
        method: Method,
        path: &str,
        frames: BoxStream<'static, Result<Frame<Bytes>, BlobError>>,
    ) -> BlobResult<Response<hyper::body::Incoming>> {
        let inner = &self.inner;
        let req = Request::builder()
            .method(method)
            .uri(format!("{}{BLOB_PATH}{path}", inner.base))
            .header(TOKEN_HEADER, inner.token.clone())
            .body(http_body_util::StreamBody::new(frames))
            .map_err(|e| self.error(PeerFailure::Request(e.to_string())))?;
        match inner.upload.request(req).await {
            Ok(resp) if resp.status() == StatusCode::UNAUTHORIZED => Err(self.error(PeerFailure::Unauthorized)),
            Ok(resp) => Ok(resp),
            Err(e) if e.is_connect() => Err(self.error(PeerFailure::Connect(chain(&e)))),
            Err(e) => Err(self.error(PeerFailure::Request(chain(&e)))),
        }
    }

    /// The size and digest of a `201` answer to a copy.
    fn stored_copy(&self, resp: &Response<hyper::body::Incoming>) -> BlobResult<StoredCopy> {
        if resp.status() != StatusCode::CREATED {
            return Err(self.error(PeerFailure::Status(resp.status().as_u16())));
        }
        let header = |name: &str, radix: u32| {
            resp.headers().get(name).and_then(|v| u64::from_str_radix(v.to_str().ok()?, radix).ok())
        };
        match (header(BLOB_SIZE_HEADER, 10), header(BLOB_DIGEST_HEADER, 16)) {
            (Some(size), Some(digest)) => Ok(StoredCopy { size, digest: digest as u32 }),
            _ => Err(self.error(PeerFailure::Request("the copy's answer has no size or digest".into()))),
        }
    }

    /// Removes the peer's copy of `blob` (none is fine), within the idle timeout.
    pub async fn delete_blob(&self, blob: BlobId) -> BlobResult<()> {
        let inner = &self.inner;
        let req = Request::delete(format!("{}{BLOB_PATH}{blob}", inner.base))
            .header(TOKEN_HEADER, inner.token.clone())
            .body(Empty::new())
            .map_err(|e| self.error(PeerFailure::Request(e.to_string())))?;
        match tokio::time::timeout(inner.idle, inner.client.request(req)).await {
            Err(_) => Err(self.error(PeerFailure::Timeout("no answer to a delete".into()))),
            Ok(Err(e)) => Err(self.error(PeerFailure::Request(chain(&e)))),
            Ok(Ok(resp)) if resp.status() == StatusCode::NO_CONTENT => Ok(()),
            Ok(Ok(resp)) => Err(self.error(PeerFailure::Status(resp.status().as_u16()))),
        }
    }

    /// Measures the peer's wall clock against this machine's (one round trip to
    /// [`CLOCK_PATH`]).
    pub async fn clock_sample(&self) -> BlobResult<ClockSample> {
        let inner = &self.inner;
        let req = Request::get(format!("{}{CLOCK_PATH}", inner.base))
            .header(TOKEN_HEADER, inner.token.clone())
            .body(Empty::new())
            .map_err(|e| self.error(PeerFailure::Request(e.to_string())))?;
        let sent = wall_clock_ms();
        let resp = match tokio::time::timeout(inner.idle, inner.client.request(req)).await {
            Err(_) => return Err(self.error(PeerFailure::Timeout("no clock answer".into()))),
            Ok(Err(e)) if e.is_connect() => return Err(self.error(PeerFailure::Connect(chain(&e)))),
            Ok(Err(e)) => return Err(self.error(PeerFailure::Request(chain(&e)))),
            Ok(Ok(resp)) => resp,
        };
        let received = wall_clock_ms();
        match resp.status() {
            StatusCode::OK => {}
            StatusCode::UNAUTHORIZED => return Err(self.error(PeerFailure::Unauthorized)),
            status => return Err(self.error(PeerFailure::Status(status.as_u16()))),
        }
        let peer: i64 = resp
            .headers()
            .get(CLOCK_HEADER)
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .ok_or_else(|| self.error(PeerFailure::Request(format!("the answer has no valid {CLOCK_HEADER}"))))?;
        Ok(ClockSample { offset_ms: peer - (sent + received) / 2, round_trip_ms: received - sent })
    }
}

/// The open stripes of one striped copy: a piece (`None`: the stripe's end) goes to a
/// stripe through its sender. Dropping this aborts the stripes' requests.
#[derive(Default)]
struct Stripes {
    senders: Vec<tokio::sync::mpsc::Sender<Option<Bytes>>>,
    requests: Vec<tokio::task::JoinHandle<BlobResult<()>>>,
}

/// The body of a copy fed through a channel: each `Some` is a piece of it and `None` its end.
/// A sender dropped before the end makes the body fail, so the receiving node discards what
/// it got instead of storing a truncated copy.
pub fn channel_body(receiver: tokio::sync::mpsc::Receiver<Option<Bytes>>) -> BoxStream<'static, BlobResult<Bytes>> {
    stream::unfold(Some(receiver), |state| async move {
        let mut receiver = state?;
        match receiver.recv().await {
            Some(Some(piece)) => Some((Ok(piece), Some(receiver))),
            Some(None) => None,
            None => Some((Err(BlobError::Task("the copy was abandoned".into())), None)),
        }
    })
    .boxed()
}

/// Pieces queued per stripe ahead of its connection.
const STRIPE_QUEUE: usize = 16;

impl Stripes {
    /// Opens the next stripe's `PUT`, streaming what its sender gets.
    fn open(&mut self, client: &PeerClient, blob: BlobId, layout: Layout) {
        let stripe = self.senders.len();
        let (sender, receiver) = tokio::sync::mpsc::channel(STRIPE_QUEUE);
        let frames = channel_body(receiver).map(|piece| piece.map(Frame::data)).boxed();
        let (client, path) = (client.clone(), format!("{blob}?{}&stripe={stripe}", layout.query()));
        self.requests.push(tokio::spawn(async move {
            let resp = client.upload(Method::PUT, &path, frames).await?;
            match resp.status() {
                StatusCode::OK => Ok(()),
                status => Err(client.error(PeerFailure::Status(status.as_u16()))),
            }
        }));
        self.senders.push(sender);
    }

    /// How stripe `stripe`'s request ended.
    async fn ended(&mut self, stripe: usize) -> BlobResult<()> {
        (&mut self.requests[stripe])
            .await
            .unwrap_or_else(|joined| Err(BlobError::Task(format!("stripe {stripe} of the copy failed: {joined}"))))
    }

    /// Why stripe `stripe`'s request ended before its end was sent.
    async fn failure(&mut self, stripe: usize) -> BlobError {
        match self.ended(stripe).await {
            Err(e) => e,
            Ok(()) => BlobError::Task(format!("stripe {stripe} of the copy ended early")),
        }
    }

    /// Waits until every stripe was taken in; the first failure otherwise.
    async fn all_taken(mut self) -> BlobResult<()> {
        for stripe in 0..self.requests.len() {
            self.ended(stripe).await?;
        }
        Ok(())
    }
}

impl Drop for Stripes {
    fn drop(&mut self) {
        self.requests.iter().for_each(tokio::task::JoinHandle::abort);
    }
}

#[async_trait::async_trait]
impl ChunkSource for PeerClient {
    async fn fetch(&self, blob: BlobId, offset: u64, len: u64) -> BlobResult<BoxStream<'static, BlobResult<Bytes>>> {
        let inner = &self.inner;
        let uri = format!("{}{BLOB_PATH}{blob}?offset={offset}&len={len}", inner.base);
        let req = Request::get(uri)
            .header(TOKEN_HEADER, inner.token.clone())
            .body(Empty::new())
            .map_err(|e| self.error(PeerFailure::Request(e.to_string())))?;
        let resp = match tokio::time::timeout(inner.idle, inner.client.request(req)).await {
            Err(_) => {
                let waited = inner.idle.as_secs_f64();
                return Err(self.error(PeerFailure::Timeout(format!("no response within {waited:.1}s"))));
            }
            Ok(Err(e)) if e.is_connect() => return Err(self.error(PeerFailure::Connect(chain(&e)))),
            Ok(Err(e)) => return Err(self.error(PeerFailure::Request(chain(&e)))),
            Ok(Ok(resp)) => resp,
        };
        match resp.status() {
            StatusCode::OK => {}
            StatusCode::UNAUTHORIZED => return Err(self.error(PeerFailure::Unauthorized)),
            StatusCode::NOT_FOUND => return Err(self.error(PeerFailure::NotFound(blob))),
            StatusCode::RANGE_NOT_SATISFIABLE => return Err(self.error(PeerFailure::BadRange)),
            status => return Err(self.error(PeerFailure::Status(status.as_u16()))),
        }
        let announced = resp.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if let Some(got) = announced.filter(|n| *n != len) {
            return Err(self.error(PeerFailure::Length { expected: len, got }));
        }
        let (this, idle) = (self.clone(), inner.idle);
        let body = resp.into_body();
        let stream = stream::unfold(Some((body, 0u64)), move |state| {
            let this = this.clone();
            async move {
                let (mut body, received) = state?;
                loop {
                    let failure = match tokio::time::timeout(idle, body.frame()).await {
                        Err(_) => PeerFailure::Timeout(format!(
                            "no data for {:.1}s after {received} of {len} bytes",
                            idle.as_secs_f64()
                        )),
                        Ok(None) if received == len => return None,
                        Ok(None) => PeerFailure::Transfer(format!("connection closed after {received} of {len} bytes")),
                        Ok(Some(Err(e))) => {
                            PeerFailure::Transfer(format!("after {received} of {len} bytes: {}", chain(&e)))
                        }
                        Ok(Some(Ok(frame))) => match frame.into_data() {
                            Ok(data) => {
                                let received = received + data.len() as u64;
                                if received > len {
                                    PeerFailure::Length { expected: len, got: received }
                                } else {
                                    return Some((Ok(data), Some((body, received))));
                                }
                            }
                            Err(_) => continue, // trailers
                        },
                    };
                    return Some((Err(this.error(failure)), None));
                }
            }
        });
        Ok(stream.boxed())
    }

    fn name(&self) -> String {
        format!("peer {}", self.inner.base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_queries_parse_strictly() {
        assert_eq!(range_query(None), Ok((None, None)));
        assert_eq!(range_query(Some("offset=5&len=10")), Ok((Some(5), Some(10))));
        assert_eq!(range_query(Some("len=10&x=y")), Ok((None, Some(10))));
        assert!(range_query(Some("offset=-1")).is_err());
        assert!(range_query(Some("offset=+1")).is_err());
        assert!(range_query(Some("len=")).is_err());
        assert!(range_query(Some("len=99999999999999999999999")).is_err());
    }

    #[test]
    fn tokens_compare_whole() {
        let mut headers = HeaderMap::new();
        assert!(!token_ok("secret", &headers));
        headers.insert(TOKEN_HEADER, HeaderValue::from_static("secret"));
        assert!(token_ok("secret", &headers));
        assert!(!token_ok("secret2", &headers));
        assert!(!token_ok("secre", &headers));
        assert!(!token_ok("", &headers));
        headers.insert(TOKEN_HEADER, HeaderValue::from_static(""));
        assert!(!token_ok("", &headers));
    }

    #[test]
    fn peer_urls_are_checked() {
        let tls = ClientTls::new(None).expect("system roots");
        assert!(PeerClient::new("http://127.0.0.1:1", "t", &tls).is_ok());
        assert!(PeerClient::new("http://127.0.0.1:1/", "t", &tls).is_ok());
        assert!(PeerClient::new("https://x:1", "t", &tls).is_ok());
        for bad in ["127.0.0.1:1", "http://x:1/prefix", "not a url", "ftp://x"] {
            assert!(matches!(PeerClient::new(bad, "t", &tls), Err(BlobError::Config(_))), "{bad}");
        }
        assert!(matches!(PeerClient::new("http://x:1", "bad\ntoken", &tls), Err(BlobError::Config(_))));
    }
}
