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
//!    document, preconditions, ranges and precompressed siblings; plain GETs of small objects
//!    are answered from [`cache`] while the records they were built from are unchanged.
//!
//! 3. [`origin`]: for a site with an origin app, what the bucket does not have (and every
//!    request but GET and HEAD, and replays from other regions' edges) goes to the origin,
//!    with write-back, single flight and fly-replay.

mod cache;
pub mod origin;
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
    /// Origin apps replacing the sites' own (`[[origin]]` tables).
    pub origins: Vec<origin::SiteOrigin>,
    /// This node's region (which origin instances are local).
    pub region: String,
    /// The cluster token: requests carrying it are replays from other regions' edges.
    pub peer_token: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("site {name:?} in the configuration: {source}")]
    InvalidSite { name: String, source: meridian_engine::EngineError },
    #[error("two sites in the configuration are named {0:?}")]
    DuplicateSite(String),
    #[error("the origin of site {site:?} in the configuration: {why}")]
    Origin { site: String, why: String },
}

/// The edge's request handler.
#[derive(Clone)]
pub struct Edge {
    engine: Engine,
    sites: Arc<SiteTable>,
    origins: Arc<origin::Origins>,
    /// Finished answers for small objects (exact: see [`cache`]).
    cache: Arc<cache::ResponseCache>,
}

impl Edge {
    /// Checks the configured sites, loads the stored ones and keeps them fresh in the
    /// background (for as long as the edge lives).
    pub async fn start(engine: Engine, options: EdgeOptions) -> Result<Edge, EdgeError> {
        let origins =
            origin::Origins::new(&options.origins, &options.sites, &options.region, options.peer_token.as_deref())?;
        let sites = SiteTable::start(engine.clone(), options).await?;
        origin::refresh(&engine, &origins, &sites).await;
        tokio::spawn(origin::keep_fresh(engine.clone(), Arc::downgrade(&origins), Arc::downgrade(&sites)));
        Ok(Edge { engine, sites, origins, cache: Arc::default() })
    }

    async fn answer(&self, req: Request<RequestBody>, info: &RequestInfo) -> Response<ResponseBody> {
        info.notes.set_principal("anonymous");
        if let Some(proxy) = self.origins.peer_site(req.headers()) {
            // A replay from another region's edge to a named site (`fly-replay: app=`).
            info.notes.set_operation("web.origin");
            let mut resp = proxy.handle(req, info.peer, info.secure).await;
            origin::revision::remember(resp.headers_mut(), &proxy.topology().local);
            return resp;
        }
        let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).or(req.uri().host()).unwrap_or("");
        let target = match self.sites.resolve(host, req.uri().path()).await {
            Ok(Some(target)) => target,
            Ok(None) => return serve::not_found(),
            Err(resp) => return resp,
        };
        let Some(proxy) = self.origins.proxy(target.site.as_deref()) else {
            let head = match *req.method() {
                Method::GET => false,
                Method::HEAD => true,
                _ => return method_not_allowed(),
            };
            info.notes.set_operation(if head { "web.head" } else { "web.get" });
            let ask = serve::Ask { head, headers: req.headers(), host, https: info.secure };
            return serve::answer(&self.engine, &self.cache, &target, &ask).await;
        };
        let mut resp = self.answer_for_origin_site(&proxy, &target, req, info).await;
        origin::revision::remember(resp.headers_mut(), &proxy.topology().local);
        resp
    }

    /// A request to a site with an origin: a write goes to the origin; a read is held for the
    /// session's last write ([`origin::revision`]), then served from the bucket or the origin.
    async fn answer_for_origin_site(
        &self,
        proxy: &meridian_edge_origin::OriginProxy,
        target: &sites::Target,
        req: Request<RequestBody>,
        info: &RequestInfo,
    ) -> Response<ResponseBody> {
        let read = matches!(*req.method(), Method::GET | Method::HEAD);
        if !read || proxy.is_peer(req.headers()) {
            // A replay from another region's edge is for the origin, never the bucket.
            info.notes.set_operation("web.origin");
            return proxy.handle(req, info.peer, info.secure).await;
        }
        info.notes.set_operation(if req.method() == Method::HEAD { "web.head" } else { "web.get" });
        let Some((revision, writer)) = origin::revision::session(req.headers()) else {
            return self.answer_with_origin(proxy, target, req, info).await;
        };
        let wait = self.origins.revision_wait(target.site.as_deref());
        let (mut resp, outcome) = match origin::revision::hold(&self.engine, revision, wait).await {
            origin::revision::Hold::Reached(waited) => {
                let resp = self.answer_with_origin(proxy, target, req, info).await;
                (resp, format!("reached;waited_ms={}", waited.as_millis()))
            }
            origin::revision::Hold::Behind(waited) if writer != proxy.topology().local => {
                // This view is behind the session's write: the writer's region answers (this
                // one, from the origin, when that region's edge does not).
                info.notes.set_operation("web.origin");
                let (resp, there) = proxy.handle_preferring(req, info.peer, info.secure, Some(&writer)).await;
                let outcome = if there { format!("replayed;region={writer}") } else { "behind".to_string() };
                (resp, format!("{outcome};waited_ms={}", waited.as_millis()))
            }
            origin::revision::Hold::Behind(waited) => {
                let resp = self.answer_with_origin(proxy, target, req, info).await;
                (resp, format!("behind;waited_ms={}", waited.as_millis()))
            }
        };
        origin::revision::note(resp.headers_mut(), &outcome);
        resp
    }

    /// The bucket's object, else the origin's answer (one origin request per key at a time:
    /// concurrent misses wait for the first one's write-back, then read the bucket again).
    async fn answer_with_origin(
        &self,
        proxy: &meridian_edge_origin::OriginProxy,
        target: &sites::Target,
        req: Request<RequestBody>,
        info: &RequestInfo,
    ) -> Response<ResponseBody> {
        let head = req.method() == Method::HEAD;
        for _ in 0..2 {
            let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
            let ask = serve::Ask { head, headers: req.headers(), host, https: info.secure };
            if let Some(resp) = serve::stored(&self.engine, &self.cache, target, &ask).await {
                return resp;
            }
            if let Some((variant, names)) = origin::current_variant(&self.engine, target, req.headers()).await
                && let Some(mut resp) = serve::stored(&self.engine, &self.cache, &variant, &ask).await
            {
                if let Ok(value) = http::HeaderValue::from_str(&names.join(", ")) {
                    resp.headers_mut().insert(header::VARY, value);
                }
                return resp;
            }
            match origin::join_flight(&self.origins, target) {
                Some(origin::flight::Flight::Follower(leader)) if !head => origin::flight::wait(leader).await,
                Some(origin::flight::Flight::Leader(guard)) if !head => {
                    info.notes.set_operation("web.origin");
                    return origin::fall_through(&self.engine, proxy, target, req, info, Some(guard)).await;
                }
                _ => break,
            }
        }
        info.notes.set_operation("web.origin");
        origin::fall_through(&self.engine, proxy, target, req, info, None).await
    }
}

impl Handler for Edge {
    async fn handle(&self, req: Request<RequestBody>, info: RequestInfo) -> Response<ResponseBody> {
        self.answer(req, &info).await
    }
}

fn method_not_allowed() -> Response<ResponseBody> {
    let mut resp = meridian_http::text_response(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD are served here");
    resp.headers_mut().insert(header::ALLOW, http::HeaderValue::from_static("GET, HEAD"));
    resp
}
