//! The web edge: buckets served as websites over plain HTTP(S), one more listener of the shared
//! HTTP layer (`meridian_http`), on top of the engine. It never touches disks or the metadata
//! store itself.
//!
//! Every request goes through one pipeline:
//!
//! 1. [`sites::SiteTable::resolve`]: which site (a host name and/or URL path prefix mounted on
//!    a bucket and key prefix, from the TOML file or stored through the admin API) or which
//!    public-read bucket with an S3 website configuration (`<bucket>.<web domain>`) the
//!    request's host and path name, giving a [`sites::Target`];
//! 2. [`serve::answer`]: the object the target names, with index documents, the error
//!    document, preconditions, ranges and precompressed siblings.
//!
//! A later stage (origin fall-through) slots in after step 2 where it finds no object.

mod range;
mod redirect;
mod serve;
pub mod sites;

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode, header};
use meridian_engine::Engine;
use meridian_http::{Handler, RequestBody, RequestInfo, ResponseBody};

pub use sites::SiteTable;

/// What the edge is told at start.
#[derive(Clone, Debug, Default)]
pub struct EdgeOptions {
    /// Buckets with a website configuration are served at `<bucket>.<web domain>`.
    pub web_domain: Option<String>,
    /// Sites from the node's configuration file (stored sites come from the engine).
    pub sites: Vec<meridian_engine::website::SiteRecord>,
}

#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("site {name:?} in the configuration: {source}")]
    InvalidSite { name: String, source: meridian_engine::EngineError },
    #[error("two sites in the configuration are named {0:?}")]
    DuplicateSite(String),
}

/// The edge's request handler.
#[derive(Clone)]
pub struct Edge {
    engine: Engine,
    sites: Arc<SiteTable>,
}

impl Edge {
    /// Checks the configured sites, loads the stored ones and keeps them fresh in the
    /// background (for as long as the edge lives).
    pub async fn start(engine: Engine, options: EdgeOptions) -> Result<Edge, EdgeError> {
        let sites = SiteTable::start(engine.clone(), options).await?;
        Ok(Edge { engine, sites })
    }

    async fn answer(&self, req: &Request<RequestBody>, info: &RequestInfo) -> Response<ResponseBody> {
        let head = match *req.method() {
            Method::GET => false,
            Method::HEAD => true,
            _ => return method_not_allowed(),
        };
        info.notes.set_principal("anonymous");
        let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).or(req.uri().host()).unwrap_or("");
        let target = match self.sites.resolve(host, req.uri().path()).await {
            Ok(Some(target)) => target,
            Ok(None) => return serve::not_found(),
            Err(resp) => return resp,
        };
        info.notes.set_operation(if head { "web.head" } else { "web.get" });
        let ask = serve::Ask { head, headers: req.headers(), host, https: info.secure };
        serve::answer(&self.engine, &target, &ask).await
    }
}

impl Handler for Edge {
    async fn handle(&self, req: Request<RequestBody>, info: RequestInfo) -> Response<ResponseBody> {
        self.answer(&req, &info).await
    }
}

fn method_not_allowed() -> Response<ResponseBody> {
    let mut resp = meridian_http::text_response(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD are served here");
    resp.headers_mut().insert(header::ALLOW, http::HeaderValue::from_static("GET, HEAD"));
    resp
}
