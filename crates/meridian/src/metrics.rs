//! Wiring of the node's metrics: the request observer every listener reports to, the figures
//! read at scrape time (listener load, the chunk cache), and the optional `--metrics-listen`
//! listener that serves `/metrics` without a token.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use meridian_metrics::{CacheTotals, Metrics, RequestDone};

/// Counts every finished request of a listener.
pub struct RequestMetrics(pub Arc<Metrics>);

impl meridian_http::Observer for RequestMetrics {
    fn request_done(&self, r: &meridian_http::RequestRecord) {
        self.0.http.request_done(&RequestDone {
            listener: r.listener,
            operation: r.operation.as_deref(),
            status: r.status.as_u16(),
            duration: r.duration,
            bytes_in: r.bytes_in,
            bytes_out: r.bytes_out,
        });
    }
}

/// A listener's server, reporting its requests and its load to `metrics`.
pub fn observed_server(metrics: &Arc<Metrics>, policy: meridian_http::Policy) -> meridian_http::Server {
    let name = policy.name;
    let server = meridian_http::Server::new(policy).observer(Arc::new(RequestMetrics(Arc::clone(metrics))));
    let load = server.load();
    let http = metrics.http.clone();
    metrics.on_scrape(move || http.set_load(name, load.in_flight(), load.connections()));
    server
}

/// Copies the chunk cache's totals into the metrics at every scrape.
pub fn watch_cache(metrics: &Metrics, cache: meridian_blob::ChunkCache) {
    let figures = metrics.cache.clone();
    metrics.on_scrape(move || {
        let stats = cache.stats();
        figures.set_totals(&CacheTotals {
            chunk_hits: stats.hits,
            chunk_misses: stats.misses,
            fills: stats.fetches,
            fill_bytes: stats.fetch_bytes,
            fill_errors: stats.fetch_errors,
            evictions: stats.evictions,
            bytes: stats.bytes_cached,
            max_bytes: cache.options().max_bytes,
        });
    });
}

/// The `--metrics-listen` listener: `GET /metrics` without a token (meant for a private
/// network), everything else 404.
pub async fn bind_metrics_listener(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for metrics (pass --metrics-listen ADDR:PORT)"))
}

/// Serves `/metrics` on `listener` until `shutdown`.
pub async fn serve_metrics(
    metrics: Arc<Metrics>,
    server: meridian_http::Server,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let handler = meridian_http::handler_fn(move |req: http::Request<meridian_http::RequestBody>, info| {
        let metrics = Arc::clone(&metrics);
        async move { metrics_endpoint(&metrics, &req, &info) }
    });
    server.serve(listener, handler, shutdown).await
}

fn metrics_endpoint(
    metrics: &Metrics,
    req: &http::Request<meridian_http::RequestBody>,
    info: &meridian_http::RequestInfo,
) -> http::Response<meridian_http::ResponseBody> {
    if req.method() != http::Method::GET || req.uri().path() != "/metrics" {
        info.notes.set_operation("metrics.other");
        return meridian_http::text_response(http::StatusCode::NOT_FOUND, "this listener serves only GET /metrics");
    }
    info.notes.set_operation("metrics.scrape");
    let accept = req.headers().get(http::header::ACCEPT).and_then(|v| v.to_str().ok());
    meridian_admin::api::metrics_response(metrics, accept).map(meridian_http::boxed)
}
