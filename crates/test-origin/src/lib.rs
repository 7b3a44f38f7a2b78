//! An origin app for the edge's tests and benchmarks (and, in [`upload`], a client that
//! checks an upload is streamed on while it is sent). A test starts one per region (or several
//! instances per region) on a loopback port; what it answers is driven by the request path and
//! query, or by a per-instance [`Script`]:
//!
//! | request | answer |
//! |---|---|
//! | `/avatar/<name>.png` | a deterministic PNG for `<name>`, `x-meridian-store: ttl=1h` |
//! | `/sticker/<path>` | the image in the best of `image/avif`, `image/webp`, `image/png` (or of those the query's `formats` lists) the `Accept` header allows, `Vary: Accept`, `x-meridian-derived-from: <source>` (query `source`, else `<path>`), `x-meridian-store: ttl=1h` |
//! | anything else | JSON echo: instance, region, method, path, headers, body length and SHA-256 |
//!
//! Query parameters (any path): `replay=<fly-replay value>` answers `409` with that
//! `fly-replay` header, `replay_json=<json>` answers with the JSON form instead, both only in
//! the instances or regions listed in `replay_in` (comma separated; all when absent) and never
//! to a fallback delivery (`fly-replay-failed` present); `replay_cache` and
//! `replay_cache_ttl` add `fly-replay-cache` / `fly-replay-cache-ttl-secs` to that answer
//! (`replay_cache_bypass` adds `fly-replay-cache-allow-bypass`);
//! `read_ms=N` reads the request body slowly (N ms after each frame); `sleep_ms=N` waits first; `status=N` answers that status (with the echo);
//! `bytes=N` answers N bytes of [`pattern`] (`chunk_ms=M` waits M ms between 64 KiB chunks);
//! `store=<value>` sets `x-meridian-store`; `revision=<R>` sets `x-meridian-revision` (the
//! revision of a write the test made through Meridian, as an origin writing there would). Every answer carries `x-origin-instance` and
//! `x-origin-region`.

mod png;
pub mod upload;
mod webp;

pub use webp::SIDE as WEBP_SIDE;

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use meridian_http::{Policy, RequestBody, ResponseBody, Server, boxed, full, handler_fn};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub use png::avatar;

/// How many received requests an origin remembers (oldest dropped first).
const LOG_LIMIT: usize = 4096;
/// The chunk size of `bytes=N` bodies.
const CHUNK: usize = 64 << 10;

/// Who this origin instance is.
#[derive(Clone, Debug)]
pub struct OriginConfig {
    pub instance: String,
    pub region: String,
}

/// What an instance answers to every request, whatever the query says (set by the test).
#[derive(Clone, Debug, Default)]
pub enum Script {
    /// Answer by path and query (the default).
    #[default]
    Normal,
    /// Answer every request that is not a fallback delivery with `409` and this `fly-replay`.
    Replay(String),
    /// Answer every request with this status.
    Fail(u16),
}

/// A request as the origin received it.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body_len: u64,
}

/// The echo answer's JSON.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct Echo {
    pub instance: String,
    pub region: String,
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body_len: u64,
    pub body_sha256: String,
}

struct State {
    config: OriginConfig,
    script: Mutex<Script>,
    requests: AtomicU64,
    /// Request body bytes received so far, over every request (counted as they arrive).
    body_bytes: AtomicU64,
    log: Mutex<Vec<Received>>,
}

/// A running origin; dropping it stops it.
pub struct TestOrigin {
    addr: SocketAddr,
    state: Arc<State>,
    _stop: oneshot::Sender<()>,
}

impl TestOrigin {
    /// Starts an origin on a free loopback port.
    pub async fn start(config: OriginConfig) -> io::Result<TestOrigin> {
        Self::start_on(TcpListener::bind("127.0.0.1:0").await?, config)
    }

    /// Starts an origin on `listener`.
    pub fn start_on(listener: TcpListener, config: OriginConfig) -> io::Result<TestOrigin> {
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            config,
            script: Mutex::default(),
            requests: AtomicU64::new(0),
            body_bytes: AtomicU64::new(0),
            log: Mutex::default(),
        });
        let (stop, stopped) = oneshot::channel();
        let handler_state = state.clone();
        let handler = handler_fn(move |req, _info| handle(handler_state.clone(), req));
        tokio::spawn(Server::new(policy()).serve(listener, handler, async move {
            let _ = stopped.await;
        }));
        Ok(TestOrigin { addr, state, _stop: stop })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn instance(&self) -> &str {
        &self.state.config.instance
    }

    /// Replaces what this instance answers.
    pub fn set_script(&self, script: Script) {
        *lock(&self.state.script) = script;
    }

    /// How many requests this instance has received.
    pub fn request_count(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Request body bytes this instance has received so far (while bodies arrive, too).
    pub fn body_bytes(&self) -> u64 {
        self.state.body_bytes.load(Ordering::SeqCst)
    }

    /// How many received requests had exactly this path (query excluded).
    pub fn count_path(&self, path: &str) -> usize {
        self.received().iter().filter(|r| r.path_and_query.split('?').next() == Some(path)).count()
    }

    /// The requests received so far (the latest [`LOG_LIMIT`]).
    pub fn received(&self) -> Vec<Received> {
        lock(&self.state.log).clone()
    }
}

/// The origin's listener policy: large bodies (replayed uploads), short drains.
fn policy() -> Policy {
    Policy { name: "origin", max_body_bytes: 1 << 30, drain_deadline: Duration::from_secs(1), ..Policy::peer() }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `n` deterministic bytes (what `bytes=N` answers), for tests to compare with.
pub fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(pattern_byte).collect()
}

fn pattern_byte(i: usize) -> u8 {
    // 251 is prime, so the pattern does not line up with any power-of-two chunking.
    ((i.wrapping_mul(31) + 7) % 251) as u8
}

async fn handle(state: Arc<State>, req: Request<RequestBody>) -> Response<ResponseBody> {
    let (parts, body) = req.into_parts();
    let query: HashMap<String, String> =
        form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes()).into_owned().collect();
    let pause = Duration::from_millis(query.get("read_ms").and_then(|v| v.parse().ok()).unwrap_or(0));
    let (body_len, body_sha256) = match hash_body(&state, body, pause).await {
        Ok(hashed) => hashed,
        Err(e) => return text(StatusCode::BAD_REQUEST, &format!("reading the body failed: {e}")),
    };
    record(&state, &parts, body_len);
    if let Some(ms) = query.get("sleep_ms").and_then(|v| v.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let echo = Echo {
        instance: state.config.instance.clone(),
        region: state.config.region.clone(),
        method: parts.method.to_string(),
        path: parts.uri.path_and_query().map(|p| p.to_string()).unwrap_or_default(),
        headers: header_map(&parts.headers),
        body_len,
        body_sha256,
    };
    let script = lock(&state.script).clone();
    let mut resp = answer(&state.config, &script, &parts, &query, echo);
    let headers = resp.headers_mut();
    headers.insert("x-origin-instance", value(&state.config.instance));
    headers.insert("x-origin-region", value(&state.config.region));
    if let Some(store) = query.get("store") {
        headers.insert("x-meridian-store", value(store));
    }
    if let Some(revision) = query.get("revision") {
        headers.insert("x-meridian-revision", value(revision));
    }
    resp
}

fn answer(
    config: &OriginConfig,
    script: &Script,
    parts: &http::request::Parts,
    query: &HashMap<String, String>,
    echo: Echo,
) -> Response<ResponseBody> {
    let fallback_delivery = parts.headers.contains_key("fly-replay-failed");
    match script {
        Script::Replay(target) if !fallback_delivery => return replay_header(target, query),
        Script::Fail(status) => return json(status_or_500(*status), &echo),
        _ => {}
    }
    if !fallback_delivery && replays_here(config, query) {
        if let Some(target) = query.get("replay") {
            return replay_header(target, query);
        }
        if let Some(body) = query.get("replay_json") {
            return replay_json(body, query);
        }
    }
    if let Some(status) = query.get("status").and_then(|s| s.parse().ok()) {
        return json(status_or_500(status), &echo);
    }
    if let Some(n) = query.get("bytes").and_then(|n| n.parse().ok()) {
        let chunk_ms = query.get("chunk_ms").and_then(|m| m.parse().ok()).unwrap_or(0);
        return pattern_response(n, Duration::from_millis(chunk_ms));
    }
    let path = parts.uri.path();
    if let Some(name) = path.strip_prefix("/avatar/") {
        return image_response("image/png", png::avatar(name));
    }
    if let Some(source) = path.strip_prefix("/sticker/") {
        return sticker(parts, query, query.get("source").map_or(source, String::as_str));
    }
    json(StatusCode::OK, &echo)
}

/// Whether `replay_in` (instances or regions) includes this instance; no list means all.
fn replays_here(config: &OriginConfig, query: &HashMap<String, String>) -> bool {
    query
        .get("replay_in")
        .is_none_or(|list| list.split(',').map(str::trim).any(|name| name == config.instance || name == config.region))
}

fn status_or_500(status: u16) -> StatusCode {
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// Reads the body (waiting `pause` after each frame: a slow reader), counting its bytes in
/// `state` as they arrive.
async fn hash_body(
    state: &State,
    mut body: RequestBody,
    pause: Duration,
) -> Result<(u64, String), meridian_http::BodyError> {
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            len += data.len() as u64;
            state.body_bytes.fetch_add(data.len() as u64, Ordering::SeqCst);
            hasher.update(&data);
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
    }
    Ok((len, hex::encode(hasher.finalize())))
}

fn record(state: &State, parts: &http::request::Parts, body_len: u64) {
    state.requests.fetch_add(1, Ordering::SeqCst);
    let mut log = lock(&state.log);
    if log.len() >= LOG_LIMIT {
        log.remove(0);
    }
    log.push(Received {
        method: parts.method.to_string(),
        path_and_query: parts.uri.path_and_query().map(|p| p.to_string()).unwrap_or_default(),
        headers: parts.headers.clone(),
        body_len,
    });
}

fn header_map(headers: &HeaderMap) -> HashMap<String, String> {
    let mut map: HashMap<String, String> = HashMap::new();
    for (name, value) in headers {
        let text = String::from_utf8_lossy(value.as_bytes()).into_owned();
        map.entry(name.as_str().to_string())
            .and_modify(|joined| {
                joined.push_str(", ");
                joined.push_str(&text);
            })
            .or_insert(text);
    }
    map
}

fn value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

fn text(status: StatusCode, body: &str) -> Response<ResponseBody> {
    meridian_http::text_response(status, body)
}

fn json(status: StatusCode, echo: &Echo) -> Response<ResponseBody> {
    let body = serde_json::to_vec(echo).unwrap_or_default();
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn replay_header(target: &str, query: &HashMap<String, String>) -> Response<ResponseBody> {
    let mut resp = text(StatusCode::CONFLICT, "replay elsewhere");
    resp.headers_mut().insert("fly-replay", value(target));
    add_replay_cache(&mut resp, query);
    resp
}

fn replay_json(body: &str, query: &HashMap<String, String>) -> Response<ResponseBody> {
    let mut resp = Response::new(full(body.to_string()));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/vnd.fly.replay+json"));
    add_replay_cache(&mut resp, query);
    resp
}

fn add_replay_cache(resp: &mut Response<ResponseBody>, query: &HashMap<String, String>) {
    if let Some(pattern) = query.get("replay_cache") {
        resp.headers_mut().insert("fly-replay-cache", value(pattern));
    }
    if let Some(ttl) = query.get("replay_cache_ttl") {
        resp.headers_mut().insert("fly-replay-cache-ttl-secs", value(ttl));
    }
    if let Some(bypass) = query.get("replay_cache_bypass") {
        resp.headers_mut().insert("fly-replay-cache-allow-bypass", value(bypass));
    }
}

fn image_response(content_type: &'static str, bytes: Vec<u8>) -> Response<ResponseBody> {
    let mut resp = Response::new(full(bytes));
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert("x-meridian-store", HeaderValue::from_static("ttl=1h"));
    resp
}

/// The formats a sticker is converted to, best first.
const STICKER_FORMATS: [&str; 3] = ["image/avif", "image/webp", "image/png"];

/// The best format the `Accept` header allows (PNG when it names none of them).
pub fn negotiate(accept: Option<&str>) -> &'static str {
    negotiate_among(accept, &STICKER_FORMATS)
}

/// The best of `offered` (best first) the `Accept` header allows; PNG when it names none.
pub fn negotiate_among(accept: Option<&str>, offered: &[&str]) -> &'static str {
    let accept = accept.unwrap_or("");
    STICKER_FORMATS
        .into_iter()
        .filter(|format| offered.contains(format))
        .find(|format| accept.contains(format))
        .unwrap_or("image/png")
}

/// The deterministic bytes of `source` converted to `format` (what `/sticker/` answers): the
/// PNG, a real WebP of one colour ([`WEBP_SIDE`] wide), or, for AVIF, the PNG behind an AVIF
/// signature (not decodable: only its type and bytes are compared).
pub fn sticker_bytes(source: &str, format: &str) -> Vec<u8> {
    let png = png::avatar(source);
    match format {
        "image/avif" => [b"\0\0\0\x1cftypavif".as_slice(), &png].concat(),
        "image/webp" => webp::solid(source),
        _ => png,
    }
}

fn sticker(parts: &http::request::Parts, query: &HashMap<String, String>, source: &str) -> Response<ResponseBody> {
    let accept = parts.headers.get(header::ACCEPT).and_then(|a| a.to_str().ok());
    let format = match query.get("formats") {
        Some(offered) => negotiate_among(accept, &offered.split(',').collect::<Vec<_>>()),
        None => negotiate(accept),
    };
    let mut resp = image_response(format, sticker_bytes(source, format));
    resp.headers_mut().insert(header::VARY, HeaderValue::from_static("Accept"));
    resp.headers_mut().insert("x-meridian-derived-from", value(source));
    resp
}

fn pattern_response(n: usize, pause: Duration) -> Response<ResponseBody> {
    let chunks = futures::stream::iter((0..n).step_by(CHUNK)).then(move |start| async move {
        if !pause.is_zero() && start > 0 {
            tokio::time::sleep(pause).await;
        }
        let end = (start + CHUNK).min(n);
        Ok::<_, Infallible>(Frame::data(Bytes::from((start..end).map(pattern_byte).collect::<Vec<u8>>())))
    });
    let mut resp = Response::new(boxed(StreamBody::new(chunks)));
    resp.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    resp
}
