//! The HTTP ceiling: an S3-shaped server that stores nothing. It answers
//! every request at once (GET with a precomputed body of the configured
//! size), so running the bench against it measures the client, hyper and
//! loopback TCP with no storage behind them. It runs on its own two-thread
//! runtime in its own OS thread, as a separate server process would.

use crate::spec::SizeSpec;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use meridian_common::bucket_address;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A running null server; stops when dropped.
#[derive(Debug)]
pub struct NullHttpServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NullHttpServer {
    /// Starts on `127.0.0.1:0`; GETs answer with bodies of `size`.
    pub fn start(size: SizeSpec, payload: Bytes) -> std::io::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("null-http")
            .enable_all()
            .build()?;
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let shared = Arc::new((size, payload));
        let thread = std::thread::Builder::new().name("null-http".into()).spawn(move || {
            rt.block_on(async move {
                let listener = match TcpListener::from_std(std_listener) {
                    Ok(l) => l,
                    Err(_) => return,
                };
                let accept = async {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else {
                            continue;
                        };
                        let _ = stream.set_nodelay(true);
                        let shared = shared.clone();
                        tokio::spawn(async move {
                            let svc = service_fn(move |req| {
                                let size = shared.0.sample(&mut rand::rng());
                                let shared = shared.clone();
                                async move { Ok::<_, Infallible>(answer(req, size, &shared.1).await) }
                            });
                            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                        });
                    }
                };
                tokio::select! {
                    _ = accept => {}
                    _ = stop_rx => {}
                }
            });
        })?;
        Ok(Self { addr, stop: Some(stop_tx), thread: Some(thread) })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for NullHttpServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn answer(req: Request<Incoming>, size: u64, payload: &Bytes) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let query = req.uri().query().unwrap_or("").to_owned();
    let has_key = bucket_address::parse(None, req.uri().path(), None).is_ok_and(|address| address.key.is_some());
    // Drain the request body (PUT payloads) as a real server would.
    let _ = req.into_body().collect().await;
    let len = (size as usize).min(payload.len());
    let (status, body, etag) = match (method, has_key) {
        (Method::GET, true) => (StatusCode::OK, payload.slice(..len), false),
        (Method::HEAD, true) => (StatusCode::OK, Bytes::new(), false),
        (Method::GET, false) => (
            StatusCode::OK,
            Bytes::from_static(
                b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListBucketResult><KeyCount>0</KeyCount><IsTruncated>false</IsTruncated></ListBucketResult>",
            ),
            false,
        ),
        (Method::PUT, _) => (StatusCode::OK, Bytes::new(), true),
        (Method::POST, true) if query.contains("uploads") => (
            StatusCode::OK,
            Bytes::from_static(
                b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><InitiateMultipartUploadResult><UploadId>null</UploadId></InitiateMultipartUploadResult>",
            ),
            false,
        ),
        (Method::POST, true) => (
            StatusCode::OK,
            Bytes::from_static(b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><CompleteMultipartUploadResult/>"),
            false,
        ),
        (Method::POST, false) => (
            StatusCode::OK,
            Bytes::from_static(b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><DeleteResult/>"),
            false,
        ),
        (Method::DELETE, _) => (StatusCode::NO_CONTENT, Bytes::new(), false),
        _ => (StatusCode::OK, Bytes::new(), false),
    };
    let head_len =
        if matches!(status, StatusCode::OK) && body.is_empty() && has_key && !etag { Some(len) } else { None };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    if etag {
        resp.headers_mut().insert("etag", http::HeaderValue::from_static("\"00000000000000000000000000000000\""));
    }
    if let Some(n) = head_len {
        resp.headers_mut().insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(n));
    }
    resp
}
