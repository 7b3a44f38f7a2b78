//! The HTTP server around the S3 service: HTTP/1.1 and HTTP/2 on one port, with limits on header
//! count, header read time, idle connections and concurrent connections.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::StatusCode;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use s3s::service::S3Service;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

#[derive(Clone, Debug)]
pub struct ServerLimits {
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Most request headers accepted.
    pub max_headers: usize,
    /// Time allowed to send a request's headers.
    pub header_read_timeout: Duration,
    /// A connection with no bytes moving either way for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: 4096,
            max_headers: 100,
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
        }
    }
}

/// Serves `service` on `listener` until `shutdown` resolves, then lets open requests finish.
/// The node-to-node endpoint (`/_meridian/...`): the local blob store and the cluster token
/// peers must present. Bucket names cannot start with `_`, so it never shadows S3.
#[derive(Clone)]
pub struct PeerEndpoint {
    pub blobs: meridian_blob::BlobStore,
    pub token: String,
}

pub async fn serve(
    listener: TcpListener,
    service: S3Service,
    peer_endpoint: Option<PeerEndpoint>,
    forwarder: Option<crate::forward::Forwarder>,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .max_headers(limits.max_headers)
        .header_read_timeout(limits.header_read_timeout)
        .timer(TokioTimer::new());
    builder.http2().max_header_list_size(64 << 10).timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => permit.map_err(io::Error::other)?,
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Typically EMFILE: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let activity = Activity::new();
        let io = TokioIo::new(Tracked { inner: stream, activity: activity.clone() });
        let svc = service.clone();
        let endpoint = peer_endpoint.clone();
        let forwarder = forwarder.clone();
        let handler = hyper::service::service_fn(move |req: http::Request<Incoming>| {
            let svc = svc.clone();
            let endpoint = endpoint.clone();
            let forwarder = forwarder.clone();
            async move {
                let mut req = req;
                if let Some(fw) = &forwarder
                    && let Some(target) = fw.target(&mut req).await
                {
                    return Ok(match target {
                        Ok((region, url)) => fw.forward(req, &region, &url).await,
                        Err(refused) => refused,
                    });
                }
                if req.uri().path().starts_with("/_meridian/") {
                    return Ok(match &endpoint {
                        Some(p) => {
                            meridian_blob::serve_blob_request(&p.blobs, &p.token, req).await.map(s3s::Body::http_body)
                        }
                        None => {
                            let mut resp = http::Response::new(s3s::Body::from(
                                "this node is not part of a cluster\n".to_string(),
                            ));
                            *resp.status_mut() = StatusCode::NOT_FOUND;
                            resp
                        }
                    });
                }
                let mut resp = hyper::service::Service::call(&svc, req).await?;
                if resp.status() == StatusCode::NOT_MODIFIED {
                    // s3s renders 304 as an XML error; a 304 carries no body.
                    *resp.body_mut() = s3s::Body::empty();
                    resp.headers_mut().remove(http::header::CONTENT_LENGTH);
                    resp.headers_mut().remove(http::header::CONTENT_TYPE);
                }
                Ok::<_, s3s::HttpError>(resp)
            }
        });
        let conn = builder.serve_connection_with_upgrades(io, handler).into_owned();
        let conn = graceful.watch(conn);
        let idle = limits.idle_timeout;
        tokio::spawn(async move {
            tokio::select! {
                result = conn => {
                    if let Err(err) = result {
                        tracing::debug!(%peer, error = %err, "connection ended with an error");
                    }
                }
                () = activity.idle_for(idle) => {
                    tracing::debug!(%peer, "closing idle connection");
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(Duration::from_secs(30)) => tracing::warn!("open connections did not finish within 30s"),
    }
    Ok(())
}

/// When a connection last moved bytes.
#[derive(Clone)]
struct Activity {
    start: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    fn new() -> Self {
        Activity { start: Instant::now(), last_ms: Arc::new(AtomicU64::new(0)) }
    }

    fn touch(&self) {
        self.last_ms.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Resolves once nothing has moved for `limit`.
    async fn idle_for(&self, limit: Duration) {
        loop {
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let idle = self.start.elapsed().saturating_sub(last);
            if idle >= limit {
                return;
            }
            tokio::time::sleep(limit - idle).await;
        }
    }
}

/// A TCP stream that records activity.
struct Tracked {
    inner: TcpStream,
    activity: Activity,
}

impl AsyncRead for Tracked {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        poll
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
