//! The origin proxy: sends a request to the site's origin and, when the origin answers with a
//! `fly-replay` instruction, replays the request where it says instead of answering the client
//! with it.
//!
//! 1. The request body is spooled ([`crate::spool`]) so it can be sent more than once; it
//!    streams to the origin while it arrives.
//! 2. A client's `fly-force-region` / `fly-prefer-region` naming another region sends the
//!    request to that region's edge first; a cached replay (`fly-replay-cache`) sends it
//!    straight to its target; otherwise one of this region's instances gets it (round robin,
//!    the next one when one does not answer).
//! 3. An answer with an instruction is not sent to the client: the request is replayed to the
//!    candidates the instruction names, in order (local instances directly, other regions
//!    through their edge, which delivers to its own instances), with `fly-replay-src`, within
//!    the instruction's `timeout` and at most `max_attempts` tries. An instance answering
//!    `fly-replay: elsewhere=true` is skipped for the next one (load shedding).
//! 4. When no candidate takes it, the `fallback` delivers the request again to the instance
//!    that asked (then, for `prefer_self`, another local one) with `fly-replay-failed`; without
//!    a fallback the client gets a 502 carrying `fly-replay-failed`.
//!
//! Requests from another region's edge carry the cluster token ([`PEER_TOKEN`]); only those
//! may carry `fly-replay-src` (clients' copies are dropped). A replayed request can be replayed
//! again at most [`MAX_HOPS`] times.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::FutureExt;
use futures::future::BoxFuture;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use meridian_http::{ClientTls, RequestBody, ResponseBody};

use crate::forward::{self, Forwarder, Outgoing, PEER_HOPS, PEER_INSTANCE, PEER_SITE, PEER_TOKEN, UNDELIVERABLE};
use crate::replay::cache::{CachedReplay, Lookup, ReplayCache};
use crate::replay::instruction::{CacheRule, Fallback, Instruction, JSON_CONTENT_TYPE, MAX_JSON_BYTES, RegionChoice};
use crate::spool::{Spool, SpoolError, SpoolLimits};
use crate::topology::{Candidate, Instance, Topology};

/// How many times one client request may be replayed in a chain.
pub const MAX_HOPS: u32 = 3;

/// What the proxy needs to know.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    pub topology: Topology,
    /// Shared by every edge of the cluster; proves a request comes from a peer edge.
    pub peer_token: String,
    pub spool: SpoolLimits,
    /// A replay's time limit when the instruction gives none.
    pub default_timeout: Duration,
    /// The most candidates one replay tries.
    pub max_attempts: usize,
    pub connect_timeout: Duration,
    /// After a write (any method but GET, HEAD and OPTIONS) replayed to another region, the
    /// client gets the [`PIN_COOKIE`] naming that region for this long, and its requests go
    /// to that region's edge first while the cookie lasts (read your own writes).
    pub pin: Option<Duration>,
    /// The site this proxy is the origin of; other regions' edges are told it on replays.
    pub site: String,
    /// The other sites' origins, for `fly-replay: app=<site>`.
    pub apps: Option<Apps>,
}

/// Finds the origin proxy of a site by name (Fly's apps are Meridian's sites).
#[derive(Clone)]
pub struct Apps(pub Arc<FindApp>);

/// The lookup behind [`Apps`].
pub type FindApp = dyn Fn(&str) -> Option<OriginProxy> + Send + Sync;

impl std::fmt::Debug for Apps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Apps")
    }
}

/// The cookie pinning a session to the region of its last replayed write.
pub const PIN_COOKIE: &str = "meridian-region";

impl ProxyConfig {
    pub fn new(topology: Topology, peer_token: String) -> ProxyConfig {
        ProxyConfig {
            topology,
            peer_token,
            spool: SpoolLimits::default(),
            default_timeout: Duration::from_secs(10),
            max_attempts: 5,
            connect_timeout: Duration::from_secs(3),
            pin: None,
            site: String::new(),
            apps: None,
        }
    }
}

/// Why a replay did not happen (`reason` of `fly-replay-failed`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailReason {
    Timeout,
    RetriesExhausted,
    NoCandidate,
}

impl FailReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FailReason::Timeout => "timeout",
            FailReason::RetriesExhausted => "retries_exhausted",
            FailReason::NoCandidate => "no_candidate",
        }
    }
}

/// A replay that did not happen: why, where it was going, after how long.
#[derive(Clone, Debug)]
pub struct Failure {
    pub reason: FailReason,
    pub region: String,
    pub instance: Option<String>,
    pub elapsed: Duration,
}

impl Failure {
    /// The `fly-replay-failed` header value.
    pub fn header(&self) -> String {
        let mut text = String::new();
        if let Some(instance) = &self.instance {
            text.push_str(&format!("instance={instance};"));
        }
        format!("{text}region={};reason={};elapsed_ms={}", self.region, self.reason.as_str(), self.elapsed.as_millis())
    }
}

/// A request on its way: what is forwarded and its body.
#[derive(Clone)]
struct Pending {
    out: Outgoing,
    spool: Spool,
    host: String,
    hops: u32,
}

impl Pending {
    fn lookup(&self) -> Lookup<'_> {
        let path = self.out.path_and_query.split('?').next().unwrap_or("/");
        Lookup { host: &self.host, path, headers: &self.out.headers }
    }

    /// The request as replayed: the instruction's transform, `fly-replay-src`, one more hop.
    fn replayed(&self, ins: &Instruction, asked_by: &str, region: &str) -> Pending {
        let mut next = self.clone();
        next.hops += 1;
        if let Some(path) = &ins.transform.path {
            next.out.path_and_query = path.clone();
        }
        for name in &ins.transform.delete_headers {
            next.out.headers.remove(name);
        }
        for (name, value) in &ins.transform.set_headers {
            next.out.headers.insert(name.clone(), value.clone());
        }
        let micros = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros());
        let mut src = format!("instance={asked_by};region={region};t={micros}");
        if let Some(state) = &ins.state {
            src.push_str(&format!(";state={state}"));
        }
        forward::insert(&mut next.out.headers, "fly-replay-src", &src);
        next
    }
}

/// What an origin answered.
enum Detected {
    Answer(Response<Incoming>),
    Replay(Box<Instruction>, HeaderMap),
    Invalid(String),
}

/// The origin proxy of one site (cheap to clone).
#[derive(Clone)]
pub struct OriginProxy {
    inner: Arc<Inner>,
}

struct Inner {
    config: ProxyConfig,
    forwarder: Forwarder,
    cache: ReplayCache,
    next: AtomicUsize,
}

impl OriginProxy {
    pub fn new(config: ProxyConfig, tls: &ClientTls) -> OriginProxy {
        let forwarder = Forwarder::new(tls, config.connect_timeout);
        OriginProxy {
            inner: Arc::new(Inner { config, forwarder, cache: ReplayCache::default(), next: AtomicUsize::new(0) }),
        }
    }

    /// Whether both are the same proxy (not a copy built alike).
    pub fn same_as(&self, other: &OriginProxy) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    pub fn topology(&self) -> &Topology {
        &self.inner.config.topology
    }

    /// Whether a request comes from another region's edge (carries the cluster token).
    pub fn is_peer(&self, headers: &HeaderMap) -> bool {
        let token = self.inner.config.peer_token.as_bytes();
        headers.get(PEER_TOKEN).is_some_and(|v| !token.is_empty() && constant_time_eq(v.as_bytes(), token))
    }

    /// Sends `req` (from `client`) to the origin, replaying it as the origin says.
    pub async fn handle(&self, req: Request<RequestBody>, client: SocketAddr, secure: bool) -> Response<ResponseBody> {
        self.handle_preferring(req, client, secure, None).await.0
    }

    /// Like [`OriginProxy::handle`], sending a client's request to `region`'s edge first (as
    /// `fly-prefer-region` does): this region serves it when that edge does not answer. Also
    /// says whether `region`'s edge answered.
    pub async fn handle_preferring(
        &self,
        req: Request<RequestBody>,
        client: SocketAddr,
        secure: bool,
        region: Option<&str>,
    ) -> (Response<ResponseBody>, bool) {
        let (parts, body) = req.into_parts();
        // The body goes to the origin as it arrives, and is kept for a replay.
        let spool = match Spool::start(body, &self.inner.config.spool) {
            Ok(spool) => spool,
            Err(err) => return (spool_failure(&err), false),
        };
        let (resp, there) = self.handle_spooled(parts, spool.clone(), client, secure, region).await;
        match spool.failure() {
            // The origin could not be reached because the body could not be: say why.
            Some(err) if resp.status() == StatusCode::BAD_GATEWAY => (spool_failure(&err), false),
            _ => (resp, there),
        }
    }

    async fn handle_spooled(
        &self,
        parts: http::request::Parts,
        spool: Spool,
        client: SocketAddr,
        secure: bool,
        region: Option<&str>,
    ) -> (Response<ResponseBody>, bool) {
        let host = parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()).or(parts.uri.host()).unwrap_or("");
        let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        let peer = self.is_peer(&parts.headers);
        let headers = if peer {
            forward::from_peer(&parts.headers)
        } else {
            forward::from_client(&parts.headers, client, secure)
        };
        let hops =
            if peer { header_text(&parts.headers, PEER_HOPS).and_then(|h| h.parse().ok()).unwrap_or(0) } else { 0 };
        let pending = Pending {
            out: Outgoing { method: parts.method.clone(), path_and_query, headers },
            spool,
            host: host.into(),
            hops,
        };
        if peer {
            let instance = header_text(&parts.headers, PEER_INSTANCE).map(str::to_string);
            return (self.serve_peer(pending, instance).await, false);
        }
        if let Some(resp) = self.preferred_region(&pending, region).await {
            return (resp, true);
        }
        (self.serve_client(pending, &parts.headers).await, false)
    }

    /// `region`'s answer when it is another region and its edge answers.
    async fn preferred_region(&self, pending: &Pending, region: Option<&str>) -> Option<Response<ResponseBody>> {
        let region = region.filter(|r| *r != self.topology().local && self.topology().region(r).is_some())?;
        self.to_region(pending, region).await.ok()
    }

    /// Sends the request to `region`'s edge (within the default replay timeout).
    async fn to_region(&self, pending: &Pending, region: &str) -> Result<Response<ResponseBody>, Failure> {
        let queue = self.topology().into_region(region, &[]).into();
        let deadline = Instant::now() + self.inner.config.default_timeout;
        self.route(pending, queue, deadline, Vec::new()).await
    }

    async fn serve_client(&self, pending: Pending, client_headers: &HeaderMap) -> Response<ResponseBody> {
        if let Some(resp) = self.client_region(&pending, client_headers).await {
            return resp;
        }
        let skip = header_text(client_headers, "fly-replay-cache-control").is_some_and(|v| v.trim() == "skip");
        let cached = self.inner.cache.find(&pending.lookup()).filter(|c| !(skip && c.allow_bypass));
        if let Some(CachedReplay { instruction, asked_by, .. }) = cached {
            // A failed cached replay goes the normal way: the cache is only a shortcut.
            if let Ok(resp) = self.replay(&pending, &instruction, &asked_by).await {
                return resp;
            }
        }
        if self.topology().local_instances().is_empty() {
            return self.elsewhere_first(&pending).await;
        }
        match self.deliver_local(&pending, self.local_rotation(None)).await {
            Ok((resp, instance)) => self.follow(pending, resp, instance).await,
            Err(why) => plain(StatusCode::BAD_GATEWAY, &format!("no origin instance answered: {why}")),
        }
    }

    /// The app runs no instance in this region: the site's other regions' edges, in their
    /// configured order, deliver the request.
    async fn elsewhere_first(&self, pending: &Pending) -> Response<ResponseBody> {
        let topology = self.topology();
        let queue = topology.regions.iter().flat_map(|r| topology.into_region(&r.name, &[])).collect();
        let deadline = Instant::now() + self.inner.config.default_timeout;
        match self.route(pending, queue, deadline, Vec::new()).await {
            Ok(resp) => resp,
            Err(failure) => failed(&failure),
        }
    }

    async fn serve_peer(&self, pending: Pending, instance: Option<String>) -> Response<ResponseBody> {
        let candidates = match &instance {
            Some(id) => (self.topology().instance(id).into_iter())
                .filter_map(|c| if let Candidate::Local(found) = c { Some(found) } else { None })
                .collect(),
            None => self.local_rotation(None),
        };
        match self.deliver_local(&pending, candidates).await {
            Ok((resp, instance)) => self.follow(pending, resp, instance).await,
            Err(why) => {
                let mut resp = plain(StatusCode::BAD_GATEWAY, &format!("no origin instance here answered: {why}"));
                resp.headers_mut().insert(UNDELIVERABLE, HeaderValue::from_static("1"));
                resp
            }
        }
    }

    /// `fly-force-region` / `fly-prefer-region` (or, when pinning is on, the pin cookie)
    /// naming another region: that region's edge answers. `None`: serve here.
    async fn client_region(&self, pending: &Pending, headers: &HeaderMap) -> Option<Response<ResponseBody>> {
        let pinned = || {
            self.inner.config.pin?;
            let values = headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok());
            meridian_common::cookie::cookie_value(values, PIN_COOKIE)
        };
        let forced = header_text(headers, "fly-force-region");
        let (region, forced) = match forced {
            Some(region) => (region, true),
            None => (header_text(headers, "fly-prefer-region").or_else(pinned)?, false),
        };
        let region = region.trim();
        if region == self.topology().local {
            return None;
        }
        if self.topology().region(region).is_none() {
            let text = format!("fly-force-region names {region:?}, which is not one of this site's regions");
            return forced.then(|| plain(StatusCode::BAD_REQUEST, &text));
        }
        match self.to_region(pending, region).await {
            Ok(resp) => Some(resp),
            Err(failure) if forced => Some(failed(&failure)),
            Err(_) => None,
        }
    }

    /// This region's instances, starting at the next in turn; `first` (if given) leads.
    fn local_rotation(&self, first: Option<&str>) -> Vec<Instance> {
        let mut instances = self.topology().local_instances().to_vec();
        if !instances.is_empty() {
            let start = self.inner.next.fetch_add(1, Ordering::Relaxed) % instances.len();
            instances.rotate_left(start);
        }
        if let Some(first) = first {
            instances.sort_by_key(|i| i.id != first);
        }
        instances
    }

    /// Sends to the first of `candidates` that answers.
    async fn deliver_local(
        &self,
        pending: &Pending,
        candidates: Vec<Instance>,
    ) -> Result<(Response<Incoming>, Instance), String> {
        let mut why = String::from("no instance to send to");
        for instance in candidates {
            match self.inner.forwarder.send(&instance.url, &pending.out, HeaderMap::new(), pending.spool.body()).await {
                Ok(resp) => return Ok((resp, instance)),
                Err(err) => {
                    tracing::warn!(instance = %instance.id, error = %err, "origin instance did not answer");
                    why = err.to_string();
                }
            }
        }
        Err(why)
    }

    /// The client's answer to what `responder` answered: as is, or the replay it asks for.
    fn follow(
        &self,
        pending: Pending,
        resp: Response<Incoming>,
        responder: Instance,
    ) -> BoxFuture<'_, Response<ResponseBody>> {
        async move {
            let (instruction, headers) = match detect(resp).await {
                Detected::Answer(resp) => {
                    if resp.headers().get("fly-replay-cache").is_some_and(|v| v == "invalidate") {
                        self.inner.cache.invalidate(&pending.lookup());
                    }
                    return forward::to_client(resp);
                }
                Detected::Invalid(why) => {
                    let text = format!("origin instance {} answered with an invalid fly-replay: {why}", responder.id);
                    return plain(StatusCode::BAD_GATEWAY, &text);
                }
                Detected::Replay(instruction, headers) => (instruction, headers),
            };
            if pending.hops >= MAX_HOPS {
                let region = self.topology().local.clone();
                let failure =
                    Failure { reason: FailReason::RetriesExhausted, region, instance: None, elapsed: Duration::ZERO };
                return failed(&failure);
            }
            match self.replay(&pending, &instruction, &responder.id).await {
                Ok(resp) => {
                    self.remember(&pending, &headers, &instruction, &responder);
                    resp
                }
                Err(failure) => self.fall_back(&pending, &instruction, failure, &responder).await,
            }
        }
        .boxed()
    }

    fn remember(&self, pending: &Pending, answer: &HeaderMap, instruction: &Instruction, responder: &Instance) {
        match CacheRule::from_headers(answer) {
            Ok(Some(rule)) => {
                let allow_bypass = instruction.allow_bypass
                    || header_text(answer, "fly-replay-cache-allow-bypass").is_some_and(|v| v.trim() == "yes");
                let replay =
                    CachedReplay { instruction: instruction.clone(), asked_by: responder.id.clone(), allow_bypass };
                self.inner.cache.remember(&rule, &pending.lookup(), replay);
            }
            Ok(None) => {}
            Err(err) => {
                tracing::warn!(instance = %responder.id, error = %err, "origin asked for an invalid replay cache")
            }
        }
    }

    /// Replays `pending` as `ins` says (asked by instance `asked_by`): to this site's origin,
    /// or to the origin of the site `ins.app` names.
    async fn replay(
        &self,
        pending: &Pending,
        ins: &Instruction,
        asked_by: &str,
    ) -> Result<Response<ResponseBody>, Failure> {
        let config = &self.inner.config;
        let Some(app) = ins.app.as_deref().filter(|app| *app != config.site) else {
            return self.replay_here(pending, ins, asked_by).await;
        };
        match config.apps.as_ref().and_then(|apps| (apps.0)(app)) {
            Some(target) => target.replay_here(pending, ins, asked_by).await,
            None => {
                tracing::warn!(app, "fly-replay names an app that is no site with an origin");
                let region = self.topology().local.clone();
                Err(Failure { reason: FailReason::NoCandidate, region, instance: None, elapsed: Duration::ZERO })
            }
        }
    }

    /// Replays `pending` to this site's origin.
    async fn replay_here(
        &self,
        pending: &Pending,
        ins: &Instruction,
        asked_by: &str,
    ) -> Result<Response<ResponseBody>, Failure> {
        let replayed = pending.replayed(ins, asked_by, &self.topology().local);
        let excluded = if ins.elsewhere { vec![asked_by.to_string()] } else { Vec::new() };
        let queue = self.plan(ins, &excluded, asked_by);
        let deadline = Instant::now() + ins.timeout.unwrap_or(self.inner.config.default_timeout);
        self.route(&replayed, queue, deadline, excluded).await
    }

    /// Where `ins` sends a request, in order, without duplicates; `asked_by` goes last.
    fn plan(&self, ins: &Instruction, excluded: &[String], asked_by: &str) -> VecDeque<Candidate> {
        let topology = self.topology();
        if let Some(id) = &ins.instance {
            return topology.instance(id).into();
        }
        let mut planned: Vec<Candidate> = ins.prefer_instance.iter().flat_map(|id| topology.instance(id)).collect();
        for choice in &ins.regions {
            match choice {
                RegionChoice::Named(region) => planned.extend(topology.into_region(region, excluded)),
                RegionChoice::Any => {
                    for region in topology.regions_by_preference() {
                        planned.extend(topology.into_region(&region.name, excluded));
                    }
                }
            }
        }
        if ins.regions.is_empty() {
            planned.extend(topology.into_region(&topology.local, excluded));
        }
        let mut unique: Vec<Candidate> = Vec::new();
        for candidate in planned {
            if !unique.contains(&candidate) {
                unique.push(candidate);
            }
        }
        unique.sort_by_key(|c| matches!(c, Candidate::Local(i) if i.id == asked_by));
        unique.into()
    }

    /// Tries `queue` in order until a candidate answers, within `deadline` and the attempt
    /// limit. Local instances shedding load (`elsewhere=true`) are skipped.
    async fn route(
        &self,
        pending: &Pending,
        mut queue: VecDeque<Candidate>,
        deadline: Instant,
        mut excluded: Vec<String>,
    ) -> Result<Response<ResponseBody>, Failure> {
        let start = Instant::now();
        let (mut region, mut instance) = target_of(queue.front(), &self.topology().local);
        let mut attempts = 0;
        let mut transport_failed = false;
        let reason = loop {
            let Some(candidate) = queue.pop_front() else {
                break if transport_failed { FailReason::RetriesExhausted } else { FailReason::NoCandidate };
            };
            if let Candidate::Local(i) = &candidate
                && excluded.contains(&i.id)
            {
                continue;
            }
            if attempts >= self.inner.config.max_attempts {
                break FailReason::RetriesExhausted;
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else { break FailReason::Timeout };
            attempts += 1;
            (region, instance) = target_of(Some(&candidate), &self.topology().local);
            let resp = match tokio::time::timeout(left, self.send(pending, &candidate)).await {
                Err(_) => break FailReason::Timeout,
                Ok(Err(err)) => {
                    tracing::warn!(error = %err, "replay target did not answer");
                    transport_failed = true;
                    continue;
                }
                Ok(Ok(resp)) => resp,
            };
            match candidate {
                Candidate::Remote { .. } if resp.headers().contains_key(UNDELIVERABLE) => transport_failed = true,
                Candidate::Remote { region, .. } => {
                    let mut resp = forward::to_client(resp);
                    self.pin(&pending.out.method, &region, &mut resp);
                    return Ok(resp);
                }
                Candidate::Local(target) if sheds_load(resp.headers()) => excluded.push(target.id),
                Candidate::Local(target) => return Ok(self.follow(pending.clone(), resp, target).await),
            }
        };
        Err(Failure { reason, region, instance, elapsed: start.elapsed() })
    }

    /// Pins the client to `region` after a write served there (when pinning is on).
    fn pin(&self, method: &http::Method, region: &str, resp: &mut Response<ResponseBody>) {
        let Some(pin) = self.inner.config.pin else { return };
        if matches!(*method, http::Method::GET | http::Method::HEAD | http::Method::OPTIONS) {
            return;
        }
        let cookie = format!("{PIN_COOKIE}={region}; Max-Age={}; Path=/; HttpOnly; SameSite=Lax", pin.as_secs());
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            resp.headers_mut().append(header::SET_COOKIE, value);
        }
    }

    async fn send(
        &self,
        pending: &Pending,
        candidate: &Candidate,
    ) -> Result<Response<Incoming>, forward::ForwardError> {
        let body = pending.spool.body();
        match candidate {
            Candidate::Local(instance) => {
                self.inner.forwarder.send(&instance.url, &pending.out, HeaderMap::new(), body).await
            }
            Candidate::Remote { edge, instance, .. } => {
                let mut extra = HeaderMap::new();
                forward::insert(&mut extra, PEER_TOKEN, &self.inner.config.peer_token);
                forward::insert(&mut extra, PEER_HOPS, &pending.hops.to_string());
                if !self.inner.config.site.is_empty() {
                    forward::insert(&mut extra, PEER_SITE, &self.inner.config.site);
                }
                if let Some(instance) = instance {
                    forward::insert(&mut extra, PEER_INSTANCE, instance);
                }
                self.inner.forwarder.send(edge, &pending.out, extra, body).await
            }
        }
    }

    /// The instruction's fallback, or the failure itself.
    async fn fall_back(
        &self,
        pending: &Pending,
        ins: &Instruction,
        failure: Failure,
        responder: &Instance,
    ) -> Response<ResponseBody> {
        let candidates = match ins.fallback {
            None => return failed(&failure),
            Some(Fallback::ForceSelf) => vec![responder.clone()],
            Some(Fallback::PreferSelf) => self.local_rotation(Some(&responder.id)),
        };
        let mut again = pending.clone();
        forward::insert(&mut again.out.headers, "fly-replay-failed", &failure.header());
        match self.deliver_local(&again, candidates).await {
            // A request that hit its fallback is not replayed again.
            Ok((resp, _)) => {
                let mut resp = forward::to_client(resp);
                resp.headers_mut().remove("fly-replay");
                resp
            }
            Err(_) => failed(&failure),
        }
    }
}

/// Region and instance a candidate is for (what `fly-replay-failed` names).
fn target_of(candidate: Option<&Candidate>, local: &str) -> (String, Option<String>) {
    match candidate {
        Some(Candidate::Local(i)) => (local.to_string(), Some(i.id.clone())),
        Some(Candidate::Remote { region, instance, .. }) => (region.clone(), instance.clone()),
        None => (local.to_string(), None),
    }
}

/// Whether an answer is `fly-replay: elsewhere=true` and nothing more (load shedding).
fn sheds_load(headers: &HeaderMap) -> bool {
    let Some(text) = headers.get("fly-replay").and_then(|v| v.to_str().ok()) else { return false };
    Instruction::from_header(text)
        .is_ok_and(|i| i.elsewhere && i.regions.is_empty() && i.instance.is_none() && i.prefer_instance.is_none())
}

async fn detect(resp: Response<Incoming>) -> Detected {
    if let Some(value) = resp.headers().get("fly-replay") {
        let parsed = value
            .to_str()
            .map_err(|_| "not text".to_string())
            .and_then(|text| Instruction::from_header(text).map_err(|e| e.to_string()));
        return match parsed {
            Ok(instruction) => Detected::Replay(Box::new(instruction), resp.headers().clone()),
            Err(why) => Detected::Invalid(why),
        };
    }
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case(JSON_CONTENT_TYPE)));
    if !is_json {
        return Detected::Answer(resp);
    }
    let (parts, body) = resp.into_parts();
    let bytes = match Limited::new(body, MAX_JSON_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => return Detected::Invalid(format!("reading the JSON instruction failed: {e}")),
    };
    match Instruction::from_json(&bytes) {
        Ok(instruction) => Detected::Replay(Box::new(instruction), parts.headers),
        Err(e) => Detected::Invalid(e.to_string()),
    }
}

fn failed(failure: &Failure) -> Response<ResponseBody> {
    let text = format!("the request could not be replayed: {} ({})", failure.reason.as_str(), failure.header());
    let mut resp = plain(StatusCode::BAD_GATEWAY, &text);
    forward::insert(resp.headers_mut(), "fly-replay-failed", &failure.header());
    resp
}

fn spool_failure(err: &SpoolError) -> Response<ResponseBody> {
    let status = match err {
        SpoolError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        SpoolError::Read(_) => StatusCode::BAD_REQUEST,
        SpoolError::File { .. } => {
            tracing::error!(error = %err, "cannot spool a request body");
            StatusCode::INTERNAL_SERVER_ERROR
        }
    };
    plain(status, &err.to_string())
}

fn plain(status: StatusCode, text: &str) -> Response<ResponseBody> {
    meridian_http::text_response(status, text)
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
