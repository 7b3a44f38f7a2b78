//! The accept loop every listener runs: HTTP/1.1 and HTTP/2 (by ALPN over TLS, by preface
//! over plain TCP) under the listener's [`Policy`], with a request id and a report to the
//! observers for every request, and a graceful shutdown bounded by the drain deadline.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::access_log::AccessLog;
use crate::body::{Pending, Reported, RequestBody, ResponseBody, Unread, full};
use crate::conn::{Activity, AddressSlot, Linger, PerAddress, Tracked};
use crate::policy::Policy;
use crate::request::{Load, Notes, Observer, RequestId, RequestInfo};
use crate::tls::ServerTls;

/// Serves the requests of one listener.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        &self,
        req: Request<RequestBody>,
        info: RequestInfo,
    ) -> impl Future<Output = Response<ResponseBody>> + Send;
}

/// A [`Handler`] made of an async function.
pub struct FnHandler<F>(F);

/// Wraps `f` as a [`Handler`].
pub fn handler_fn<F, Fut>(f: F) -> FnHandler<F>
where
    F: Fn(Request<RequestBody>, RequestInfo) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<ResponseBody>> + Send,
{
    FnHandler(f)
}

impl<F, Fut> Handler for FnHandler<F>
where
    F: Fn(Request<RequestBody>, RequestInfo) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<ResponseBody>> + Send,
{
    fn handle(
        &self,
        req: Request<RequestBody>,
        info: RequestInfo,
    ) -> impl Future<Output = Response<ResponseBody>> + Send {
        (self.0)(req, info)
    }
}

/// A plain-text response, for errors the layer answers itself.
pub fn text_response(status: StatusCode, text: &str) -> Response<ResponseBody> {
    let mut resp = Response::new(full(format!("{text}\n")));
    *resp.status_mut() = status;
    resp.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

/// One listener's server: its policy, its TLS (if any) and who hears about its requests.
pub struct Server {
    policy: Policy,
    tls: Option<ServerTls>,
    observers: Vec<Arc<dyn Observer>>,
    load: Arc<Load>,
}

impl Server {
    /// A server with the access log as its only observer.
    pub fn new(policy: Policy) -> Server {
        Server { policy, tls: None, observers: vec![Arc::new(AccessLog)], load: Arc::default() }
    }

    /// The listener's current load (requests in flight, connections open), for metrics.
    pub fn load(&self) -> Arc<Load> {
        Arc::clone(&self.load)
    }

    /// Serves TLS only (plain HTTP connections fail the handshake).
    pub fn tls(mut self, tls: Option<ServerTls>) -> Server {
        self.tls = tls;
        self
    }

    /// Adds an observer of every finished request (metrics).
    pub fn observer(mut self, observer: Arc<dyn Observer>) -> Server {
        self.observers.push(observer);
        self
    }

    /// Serves `handler` on `listener` until `shutdown` resolves; then stops accepting, lets open
    /// requests finish for up to the policy's drain deadline and closes what is left.
    pub async fn serve<H: Handler>(
        self,
        listener: TcpListener,
        handler: H,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        let name = self.policy.name;
        let drain = self.policy.drain_deadline;
        let reloader = self.tls.as_ref().map(|tls| AbortOnDrop(tls.spawn_reloader()));
        let shared = Arc::new(Shared {
            builder: builder(&self.policy),
            permits: Arc::new(Semaphore::new(self.policy.max_connections)),
            per_address: PerAddress::default(),
            policy: self.policy,
            tls: self.tls,
            observers: self.observers.into(),
            load: self.load,
            handler,
        });
        let graceful = GracefulShutdown::new();
        let mut connections = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                permit = Arc::clone(&shared.permits).acquire_owned() => permit.map_err(io::Error::other)?,
                () = &mut shutdown => break,
            };
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        // Typically EMFILE: back off instead of spinning.
                        tracing::warn!(listener = name, error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            while connections.try_join_next().is_some() {}
            let _ = stream.set_nodelay(true);
            let limit = shared.policy.max_connections_per_address;
            let Some(slot) = shared.per_address.try_acquire(peer.ip(), limit) else {
                drop(permit);
                connections.spawn(refuse(stream, peer, Arc::clone(&shared)));
                continue;
            };
            let in_use = shared.policy.max_connections - shared.permits.available_permits();
            let accepted = Accepted {
                stream,
                peer,
                header_timeout: shared.policy.header_read_timeout_at(in_use),
                watcher: graceful.watcher(),
                _permit: permit,
                _slot: slot,
            };
            connections.spawn(Arc::clone(&shared).run(accepted));
        }
        drop(listener);
        drop(reloader);
        let drained = tokio::time::timeout(drain, graceful.shutdown()).await;
        if drained.is_err() {
            tracing::warn!(listener = name, "open connections did not finish within {drain:?}; closing them");
        }
        connections.shutdown().await;
        Ok(())
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn builder(policy: &Policy) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .max_headers(policy.max_headers)
        // hyper's read buffer bounds the request head (431 past it); it never goes below 8 KiB.
        .max_buf_size(policy.max_header_bytes.max(8 << 10))
        .timer(TokioTimer::new());
    builder
        .http2()
        .max_header_list_size(u32::try_from(policy.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(policy.max_concurrent_streams)
        .timer(TokioTimer::new());
    builder
}

struct Shared<H> {
    policy: Policy,
    builder: auto::Builder<TokioExecutor>,
    tls: Option<ServerTls>,
    permits: Arc<Semaphore>,
    per_address: PerAddress,
    observers: Arc<[Arc<dyn Observer>]>,
    load: Arc<Load>,
    handler: H,
}

/// A connection accepted under the limits, holding its places in them until it ends.
struct Accepted {
    stream: TcpStream,
    peer: SocketAddr,
    header_timeout: Duration,
    watcher: Watcher,
    _permit: OwnedSemaphorePermit,
    _slot: AddressSlot,
}

/// What a connection's request loop needs besides its stream.
struct Timing {
    header_timeout: Duration,
    watcher: Watcher,
    served: Arc<AtomicBool>,
    linger: Linger,
}

/// A client over its address's connection limit gets a short answer, not a slot.
async fn refuse<H>(mut stream: TcpStream, peer: SocketAddr, shared: Arc<Shared<H>>) {
    tracing::debug!(listener = shared.policy.name, %peer, "refused: too many connections from this address");
    if shared.tls.is_some() {
        return;
    }
    let answer = b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-type: text/plain\r\n\
        retry-after: 1\r\ncontent-length: 42\r\n\r\ntoo many connections from your address\r\n\r\n";
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(answer).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

impl<H: Handler> Shared<H> {
    async fn run(self: Arc<Self>, accepted: Accepted) {
        let Accepted { stream, peer, header_timeout, watcher, _permit, _slot } = accepted;
        let _open = self.load.connection();
        let activity = Activity::new();
        let first_request = Arc::new(AtomicBool::new(false));
        let linger = Linger::default();
        let timing = Timing { header_timeout, watcher, served: Arc::clone(&first_request), linger: linger.clone() };
        let name = self.policy.name;
        let idle = self.policy.idle_timeout;
        let this = Arc::clone(&self);
        let watched = activity.clone();
        let connection = async move {
            match &this.tls {
                None => this.serve_io(Tracked::new(stream, activity.clone(), linger), peer, timing).await,
                Some(tls) => {
                    let handshake = tokio::time::timeout(header_timeout, tls.acceptor().accept(stream)).await;
                    match handshake {
                        Ok(Ok(stream)) => {
                            this.serve_io(Tracked::new(stream, activity.clone(), linger), peer, timing).await
                        }
                        Ok(Err(e)) => tracing::debug!(listener = name, %peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(listener = name, %peer, "TLS handshake timed out"),
                    }
                }
            }
        };
        tokio::select! {
            // The connection is polled first: the timers only matter when it is idle.
            biased;
            () = connection => {}
            () = watched.idle_for(idle) => tracing::debug!(listener = name, %peer, "closing idle connection"),
            () = first_request_late(&first_request, header_timeout) => {
                tracing::debug!(listener = name, %peer, "closing connection: no request within {header_timeout:?}");
            }
        }
    }

    async fn serve_io<S>(self: &Arc<Self>, io: Tracked<S>, peer: SocketAddr, timing: Timing)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Timing { header_timeout, watcher, served, linger } = timing;
        let this = Arc::clone(self);
        let secure = self.tls.is_some();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            served.store(true, Ordering::Relaxed);
            let this = Arc::clone(&this);
            let linger = linger.clone();
            async move { Ok::<_, std::convert::Infallible>(this.respond(req, peer, secure, linger).await) }
        });
        let mut builder = self.builder.clone();
        builder.http1().header_read_timeout(header_timeout);
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        if let Err(err) = watcher.watch(conn.into_owned()).await {
            tracing::debug!(listener = self.policy.name, %peer, error = %err, "connection ended with an error");
        }
    }

    async fn respond(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        secure: bool,
        linger: Linger,
    ) -> Response<Reported> {
        let started = Instant::now();
        let in_flight = self.load.request();
        let info =
            RequestInfo { id: RequestId::random(), peer, secure, listener: self.policy.name, notes: Notes::default() };
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let bytes_in = Arc::new(AtomicU64::new(0));
        let http1 = req.version() <= Version::HTTP_11;
        let mut resp = match self.too_large(&req) {
            Some(refusal) => {
                if http1 {
                    linger.want();
                }
                refusal
            }
            None => self.handle(req, &info, &bytes_in, http1.then_some(&linger)).await,
        };
        if let Ok(id) = HeaderValue::from_str(&info.id.to_string()) {
            resp.headers_mut().insert(self.policy.request_id_header, id);
        }
        let status = resp.status();
        let observers = Arc::clone(&self.observers);
        let pending = Pending { info, method, path, status, started, bytes_in, observers, _in_flight: in_flight };
        resp.map(|body| Reported::new(body, pending))
    }

    /// Runs the handler; then, on HTTP/1.1 (`linger` given), settles a body it left unread.
    async fn handle(
        &self,
        req: Request<Incoming>,
        info: &RequestInfo,
        bytes_in: &Arc<AtomicU64>,
        linger: Option<&Linger>,
    ) -> Response<ResponseBody> {
        let expects_continue = expects_continue(&req);
        let unread = Arc::new(Mutex::new(Unread::default()));
        let (mut parts, body) = req.into_parts();
        parts.extensions.insert(info.clone());
        let body = RequestBody::new(body, self.policy.max_body_bytes, Arc::clone(bytes_in), Arc::clone(&unread));
        let mut resp = self.handler.handle(Request::from_parts(parts, body), info.clone()).await;
        let unread = std::mem::take(&mut *unread.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
        if let Some(linger) = linger {
            settle_unread(unread, expects_continue, &mut resp, linger).await;
        }
        resp
    }

    /// A 413 when the declared body is over the limit, before any of it is read.
    fn too_large(&self, req: &Request<Incoming>) -> Option<Response<ResponseBody>> {
        let declared = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())?;
        if declared <= self.policy.max_body_bytes {
            return None;
        }
        let mut resp = text_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the request body is larger than the {} bytes this endpoint accepts", self.policy.max_body_bytes),
        );
        resp.headers_mut().insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        Some(resp)
    }
}

/// How much of a request body its handler left unread the layer reads and discards to keep
/// the connection, and for how long at most.
const DRAIN_BYTES: u64 = 1 << 20;
const DRAIN_TIME: Duration = Duration::from_millis(500);

fn expects_continue<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(http::header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
}

/// An HTTP/1.1 response is going out before its request body was read (RFC 9110 §10.1.1,
/// RFC 9112 §9.6). The connection is kept only when the rest of the body is read first: up to
/// [`DRAIN_BYTES`] within [`DRAIN_TIME`]. Otherwise the response says `Connection: close` and the
/// connection closes lingering ([`Linger`]), so what the client still sends is never read as a
/// request. A client that asked for `100 Continue` and never got it may or may not send the
/// body, so its connection is always closed (hyper sends `100 Continue` only when the body is
/// read, and reading it here would ask the client for a body nobody wants).
async fn settle_unread(unread: Unread, expects_continue: bool, resp: &mut Response<ResponseBody>, linger: &Linger) {
    let Some(body) = unread.body else { return };
    if (expects_continue && !unread.polled) || !drain(body).await {
        resp.headers_mut().insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        linger.want();
    }
}

/// Reads and discards the rest of `body`; false when it is over the bounds or fails.
async fn drain(mut body: Incoming) -> bool {
    if http_body::Body::size_hint(&body).lower() > DRAIN_BYTES {
        return false;
    }
    let read = async {
        let mut left = DRAIN_BYTES;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return false };
            let len = frame.data_ref().map_or(0, |data| data.len() as u64);
            let Some(rest) = left.checked_sub(len) else { return false };
            left = rest;
        }
        true
    };
    tokio::time::timeout(DRAIN_TIME, read).await.unwrap_or(false)
}

/// Resolves when the connection has sent no complete request head within `limit` (covers the
/// TLS handshake and the HTTP/2 preface, which hyper's own header timeout does not).
async fn first_request_late(served: &AtomicBool, limit: Duration) {
    tokio::time::sleep(limit).await;
    if served.load(Ordering::Relaxed) {
        std::future::pending::<()>().await;
    }
}
