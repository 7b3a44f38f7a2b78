//! The live status page of a node, on the admin listener.
//!
//! | method and path | who | answer |
//! |---|---|---|
//! | `GET /status` | anyone | the page with a valid session cookie, else the login form |
//! | `POST /status/login` | anyone | form field `token`: the admin or status token; sets the session cookie |
//! | `POST /status/logout` | anyone | ends the session |
//! | `GET /status.json` | session cookie or `Authorization: Bearer` | every figure the page shows |
//! | `GET /status/app.js`, `/status/app.css`, `/status/icon.svg` | anyone | the page's script, style and icon (no data) |
//!
//! The token never appears in a URL: the form posts it, and the cookie holds a random session
//! id (HttpOnly, SameSite=Strict, Secure over TLS), never the token. Sessions are bounded in
//! number and lifetime. The figures come from the node's metrics registry (the same text
//! `/metrics` serves: see [`samples`]), the cluster registry (every node's heartbeat) and the
//! readiness checks; the page polls `/status.json` every two seconds.

pub mod samples;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use http_body_util::Full;
use meridian_engine::Engine;
use meridian_engine::health::ReadinessProbe;
use meridian_metrics::Metrics;
use serde::Serialize;
use serde_json::json;

use crate::api::{Reply, reply, same_token};
use samples::{CacheReadsView, OperationView, Snapshot};

const PAGE: &str = include_str!("page.html");
const LOGIN: &str = include_str!("login.html");
const SCRIPT: &str = include_str!("app.js");
const STYLE: &str = include_str!("app.css");
const ICON: &str = include_str!("icon.svg");

/// Name of the session cookie.
const COOKIE: &str = "meridian_status";
/// How long a session lasts after login.
const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Most sessions kept; the oldest goes when another logs in.
const MAX_SESSIONS: usize = 256;
/// Rates and p99 latencies are computed over at most this much history.
const WINDOW: Duration = Duration::from_secs(30);
/// Snapshots closer together than this are not kept (many viewers polling at once).
const MIN_SNAPSHOT_GAP: Duration = Duration::from_millis(500);
/// How long the page waits for the cluster registry (a node cut off from etcd still shows
/// its own figures).
const REGISTRY_TIMEOUT: Duration = Duration::from_secs(2);
/// Error responses remembered.
pub const RECENT_ERRORS: usize = 64;

/// The status page: its sessions, its window of metric snapshots and the recent errors.
pub struct StatusPage {
    engine: Engine,
    readiness: Arc<ReadinessProbe>,
    metrics: Arc<Metrics>,
    tokens: Vec<String>,
    sessions: Mutex<HashMap<String, Instant>>,
    snapshots: Mutex<VecDeque<Snapshot>>,
    errors: Arc<RecentErrors>,
}

impl StatusPage {
    /// A page for `readiness`'s engine, reading `metrics`, open to anyone holding one of
    /// `tokens` (the admin token, and the read-only status token if there is one).
    pub fn new(readiness: Arc<ReadinessProbe>, metrics: Arc<Metrics>, tokens: Vec<String>) -> StatusPage {
        StatusPage {
            engine: readiness.engine().clone(),
            readiness,
            metrics,
            tokens: tokens.into_iter().filter(|t| !t.is_empty()).collect(),
            sessions: Mutex::new(HashMap::new()),
            snapshots: Mutex::new(VecDeque::new()),
            errors: Arc::new(RecentErrors::default()),
        }
    }

    /// The observer to add to every listener: it keeps the recent error responses.
    pub fn errors(&self) -> Arc<RecentErrors> {
        Arc::clone(&self.errors)
    }

    /// Whether `path` is the page's.
    pub fn serves(path: &str) -> bool {
        path == "/status" || path == "/status.json" || path.starts_with("/status/")
    }

    /// Answers a request for one of the page's paths.
    pub async fn handle(&self, method: &Method, path: &str, headers: &HeaderMap, body: &Bytes, secure: bool) -> Reply {
        match (method, path) {
            (&Method::GET, "/status/app.js") => asset(SCRIPT, "text/javascript; charset=utf-8"),
            (&Method::GET, "/status/app.css") => asset(STYLE, "text/css; charset=utf-8"),
            (&Method::GET, "/status/icon.svg") => asset(ICON, "image/svg+xml"),
            (&Method::GET, "/status") if self.session(headers).is_some() => html(StatusCode::OK, PAGE.to_string()),
            (&Method::GET, "/status") => html(StatusCode::OK, login_page("")),
            (&Method::POST, "/status/login") => self.login(body, secure),
            (&Method::POST, "/status/logout") => self.logout(headers, secure),
            (&Method::GET, "/status.json") if self.session(headers).is_some() || self.bearer(headers) => {
                reply(StatusCode::OK, &self.figures().await)
            }
            (&Method::GET, "/status.json") => reply(
                StatusCode::UNAUTHORIZED,
                &json!({ "error": { "code": "Unauthorized", "message": "log in at /status, or send 'Authorization: Bearer <admin or status token>'" } }),
            ),
            _ => reply(
                StatusCode::NOT_FOUND,
                &json!({ "error": { "code": "NotFound", "message": format!("no status endpoint {method} {path}") } }),
            ),
        }
    }

    fn token_ok(&self, token: &str) -> bool {
        self.tokens.iter().any(|t| same_token(token.trim().as_bytes(), t.as_bytes()))
    }

    fn bearer(&self, headers: &HeaderMap) -> bool {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| self.token_ok(t))
    }

    /// The live session the request's cookie names.
    fn session(&self, headers: &HeaderMap) -> Option<String> {
        let id = session_cookie(headers)?;
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        match sessions.get(&id) {
            Some(expires) if *expires > Instant::now() => Some(id),
            Some(_) => {
                sessions.remove(&id);
                None
            }
            None => None,
        }
    }

    fn login(&self, body: &Bytes, secure: bool) -> Reply {
        let token = form_urlencoded::parse(body).find(|(k, _)| k == "token").map(|(_, v)| v.into_owned());
        if !token.is_some_and(|t| self.token_ok(&t)) {
            return html(
                StatusCode::UNAUTHORIZED,
                login_page("That token is not the admin or status token of this node."),
            );
        }
        let id = new_session_id();
        {
            let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            sessions.retain(|_, expires| *expires > now);
            if sessions.len() >= MAX_SESSIONS
                && let Some(oldest) = sessions.iter().min_by_key(|(_, e)| **e).map(|(k, _)| k.clone())
            {
                sessions.remove(&oldest);
            }
            sessions.insert(id.clone(), now + SESSION_LIFETIME);
        }
        let cookie = cookie(&id, SESSION_LIFETIME.as_secs(), secure);
        see_other(cookie)
    }

    fn logout(&self, headers: &HeaderMap, secure: bool) -> Reply {
        if let Some(id) = session_cookie(headers) {
            self.sessions.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        }
        see_other(cookie("", 0, secure))
    }

    /// Everything the page shows, now.
    async fn figures(&self) -> Figures {
        let now = Instant::now();
        let snapshot = Snapshot::new(&self.metrics.encode(), now);
        let (operations, window_seconds) = {
            let mut snapshots = self.snapshots.lock().unwrap_or_else(|p| p.into_inner());
            while snapshots.len() > 1 && snapshots.front().is_some_and(|s| now.duration_since(s.at) > WINDOW) {
                snapshots.pop_front();
            }
            let earlier = snapshots.front().filter(|s| now.duration_since(s.at) <= WINDOW);
            let window = earlier.map(|e| now.duration_since(e.at).as_secs_f64());
            let operations = snapshot.operations(earlier);
            if snapshots.back().is_none_or(|s| now.duration_since(s.at) >= MIN_SNAPSHOT_GAP) {
                snapshots.push_back(snapshot.clone());
            }
            (operations, window)
        };
        let nodes = tokio::time::timeout(REGISTRY_TIMEOUT, self.engine.nodes());
        let (readiness, nodes, disk) = tokio::join!(self.readiness.check(), nodes, self.engine.disk_space());
        let this = &self.engine.config().node;
        let (nodes, regions, cluster_error) = match nodes {
            Ok(Ok(nodes)) => {
                let views: Vec<NodeView> = nodes.iter().map(|n| NodeView::new(n, &this.node)).collect();
                let regions = RegionView::all(&views);
                (views, regions, None)
            }
            Ok(Err(e)) => (Vec::new(), Vec::new(), Some(format!("cannot read the cluster registry: {e}"))),
            Err(_) => (
                Vec::new(),
                Vec::new(),
                Some(format!("the cluster registry did not answer within {} s", REGISTRY_TIMEOUT.as_secs())),
            ),
        };
        Figures {
            node: this.node.clone(),
            region: this.region.clone(),
            generated_ms: meridian_engine::now_ms(),
            ready: readiness.ready,
            checks: readiness.checks.clone(),
            regions,
            nodes,
            cluster_error,
            window_seconds,
            operations,
            cache_reads: snapshot.cache_reads(),
            cache: CacheView {
                bytes: snapshot.value("meridian_cache_size_bytes"),
                capacity_bytes: snapshot.value("meridian_cache_capacity_bytes"),
            },
            disk: disk.ok(),
            push_queue: snapshot.value("meridian_push_queue_depth"),
            replication_lag_seconds: snapshot.value("meridian_replication_lag_seconds"),
            errors: self.errors.recent(),
        }
    }
}

/// The answer of `/status.json`.
#[derive(Serialize)]
struct Figures {
    node: String,
    region: String,
    generated_ms: i64,
    ready: bool,
    checks: Vec<meridian_engine::health::Check>,
    regions: Vec<RegionView>,
    nodes: Vec<NodeView>,
    /// Why the cluster registry could not be read, if it could not.
    cluster_error: Option<String>,
    /// The span rates and p99s cover; `None` on the first poll.
    window_seconds: Option<f64>,
    operations: Vec<OperationView>,
    cache_reads: Vec<CacheReadsView>,
    cache: CacheView,
    disk: Option<meridian_engine::health::DiskSpace>,
    push_queue: Option<f64>,
    replication_lag_seconds: Option<f64>,
    errors: Vec<ErrorView>,
}

#[derive(Serialize)]
struct CacheView {
    bytes: Option<f64>,
    capacity_bytes: Option<f64>,
}

/// A node as the page shows it, from its heartbeat record.
#[derive(Serialize)]
struct NodeView {
    id: String,
    region: String,
    this: bool,
    healthy: bool,
    heartbeat_age_ms: i64,
    /// The node's measured replication lag at its last heartbeat; `None` before its first
    /// measurement and on a single node.
    replication_lag_seconds: Option<f64>,
    advertise_url: String,
    version: String,
    cache_bytes: u64,
    cache_max_bytes: u64,
    cache_hits: u64,
    cache_misses: u64,
}

impl NodeView {
    fn new(n: &meridian_engine::cluster::NodeStatus, this: &str) -> NodeView {
        let r = &n.record;
        NodeView {
            id: r.id.clone(),
            region: r.region.clone(),
            this: r.id == this,
            healthy: n.healthy,
            heartbeat_age_ms: n.heartbeat_age_ms,
            replication_lag_seconds: r.lag_ms.map(|ms| ms as f64 / 1000.0),
            advertise_url: r.advertise_url.clone(),
            version: r.version.clone(),
            cache_bytes: r.cache.bytes,
            cache_max_bytes: r.cache.max_bytes,
            cache_hits: r.cache.hits,
            cache_misses: r.cache.misses,
        }
    }
}

/// A region: its nodes' health and their caches' hit ratio together.
#[derive(Serialize)]
struct RegionView {
    region: String,
    nodes: usize,
    healthy: usize,
    cache_hits: u64,
    cache_misses: u64,
    cache_hit_ratio: Option<f64>,
}

impl RegionView {
    fn all(nodes: &[NodeView]) -> Vec<RegionView> {
        let mut regions: std::collections::BTreeMap<&str, RegionView> = std::collections::BTreeMap::new();
        for n in nodes {
            let r = regions.entry(&n.region).or_insert_with(|| RegionView {
                region: n.region.clone(),
                nodes: 0,
                healthy: 0,
                cache_hits: 0,
                cache_misses: 0,
                cache_hit_ratio: None,
            });
            r.nodes += 1;
            r.healthy += usize::from(n.healthy);
            r.cache_hits += n.cache_hits;
            r.cache_misses += n.cache_misses;
        }
        regions
            .into_values()
            .map(|mut r| {
                r.cache_hit_ratio = samples::ratio(r.cache_hits, r.cache_misses);
                r
            })
            .collect()
    }
}

/// One error response, as the page lists it.
#[derive(Clone, Serialize)]
pub struct ErrorView {
    at_ms: i64,
    listener: &'static str,
    method: String,
    /// The path without its query (which can hold a presigned URL's signature).
    path: String,
    status: u16,
    operation: Option<String>,
    request_id: String,
}

/// The most recent error responses (status 400 and above) of every listener it observes.
#[derive(Default)]
pub struct RecentErrors {
    ring: Mutex<VecDeque<ErrorView>>,
}

impl RecentErrors {
    /// Newest first.
    pub fn recent(&self) -> Vec<ErrorView> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner()).iter().rev().cloned().collect()
    }
}

impl meridian_http::Observer for RecentErrors {
    fn request_done(&self, r: &meridian_http::RequestRecord) {
        if r.status.as_u16() < 400 {
            return;
        }
        let view = ErrorView {
            at_ms: meridian_engine::now_ms(),
            listener: r.listener,
            method: r.method.to_string(),
            path: r.path.chars().take(256).collect(),
            status: r.status.as_u16(),
            operation: r.operation.clone(),
            request_id: r.id.to_string(),
        };
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        if ring.len() >= RECENT_ERRORS {
            ring.pop_front();
        }
        ring.push_back(view);
    }
}

fn new_session_id() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_string())
}

fn cookie(id: &str, max_age: u64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={id}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}")
}

/// Back to the page after a login or logout (303: the browser follows with a GET).
fn see_other(cookie: String) -> Reply {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SEE_OTHER;
    let headers = resp.headers_mut();
    headers.insert(header::LOCATION, HeaderValue::from_static("/status"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        headers.insert(header::SET_COOKIE, value);
    }
    resp
}

fn login_page(message: &str) -> String {
    let message = message.replace('&', "&amp;").replace('<', "&lt;");
    LOGIN.replace("{{message}}", &message)
}

fn html(status: StatusCode, body: String) -> Reply {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Only this page's own script and style; never framed (clickjacking of the logout form).
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; frame-ancestors 'none'; form-action 'self'"),
    );
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    resp
}

fn asset(body: &'static str, content_type: &'static str) -> Reply {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}
