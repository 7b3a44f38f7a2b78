//! The admin front end: a JSON API (see [`api`]) on its own listener, authenticated with a
//! token, and the `meridian admin` command that uses it.

pub mod api;
pub mod cli;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;

pub use api::AdminApi;

/// Serves the admin API on `listener` until `shutdown` resolves.
pub async fn serve(listener: TcpListener, api: AdminApi, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    let api = Arc::new(api);
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().max_headers(64).header_read_timeout(Duration::from_secs(10)).timer(TokioTimer::new());
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(err) => {
                    tracing::warn!(error = %err, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => return Ok(()),
        };
        let api = Arc::clone(&api);
        let builder = Arc::clone(&builder);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let api = Arc::clone(&api);
                async move { api.handle(req).await }
            });
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(Duration::from_secs(300), conn).await {
                Ok(Err(err)) => tracing::debug!(%peer, error = %err, "admin connection error"),
                Err(_) => tracing::debug!(%peer, "admin connection timed out"),
                Ok(Ok(())) => {}
            }
        });
    }
}
