//! The KV extensions: headers on ordinary S3 requests (TTL, compare-and-set on revisions,
//! fencing, put_transaction) and JSON endpoints on a bucket path selected by the `meridian`
//! query parameter (watch, list with versions, batch, locks).
//!
//! | request | meaning |
//! |---|---|
//! | `PUT` + `x-meridian-ttl: 90s` or `x-meridian-expires: <RFC 3339 or Unix ms>` | the object expires |
//! | `PUT`/`DELETE` + `x-meridian-if-revision: N` | only if the key is at revision N (0: absent) |
//! | `PUT`/`DELETE` + `x-meridian-fence-lock: NAME`, `x-meridian-fence: TOKEN` | refused once a newer token of the lock was granted |
//! | `PUT` + `x-meridian-transaction: lock` [`x-meridian-lock-wait: 2s`] | put_transaction |
//! | `GET /b?meridian=watch&prefix=P&since=R` | NDJSON stream of changes from revision R |
//! | `GET /b?meridian=list&prefix=P&after=K&limit=N` | keys with revisions and TTLs |
//! | `POST /b?meridian=batch` | atomic batch of puts and deletes |
//! | `POST /b?meridian=lock` / `renew` / `release`, `GET /b?meridian=lock&name=N` | named locks |

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use meridian_common::bucket_address;
use meridian_engine::conditions::{Fence, WriteConditions};
use meridian_engine::iam::Access;
use meridian_engine::locks::LockInfo;
use meridian_engine::watch::Change;
use meridian_engine::{Consistency, Engine, ListRequest, now_ms, ttl};
use meridian_kv_types::BatchEntry;
use s3s::route::S3Route;
use s3s::{Body, S3Error, S3ErrorCode, S3Request, S3Response, S3Result, s3_error};
use serde::{Deserialize, Serialize};

use crate::context::RequestContext;
use crate::convert::{ResponseBody, s3_error};

pub const TTL_HEADER: &str = "x-meridian-ttl";
pub const EXPIRES_HEADER: &str = "x-meridian-expires";
pub const IF_REVISION_HEADER: &str = "x-meridian-if-revision";
pub const FENCE_HEADER: &str = "x-meridian-fence";
pub const FENCE_LOCK_HEADER: &str = "x-meridian-fence-lock";
pub const TRANSACTION_HEADER: &str = "x-meridian-transaction";
pub const LOCK_WAIT_HEADER: &str = "x-meridian-lock-wait";
pub const LOCK_TTL_HEADER: &str = "x-meridian-lock-ttl";
pub const EXPIRES_AT_HEADER: &str = "x-meridian-expires-at";
pub const TTL_REMAINING_HEADER: &str = "x-meridian-ttl-remaining-ms";

/// Default TTL of the lock a put_transaction holds while it writes.
pub const DEFAULT_TRANSACTION_LOCK_TTL: Duration = Duration::from_secs(30);
/// Largest JSON request body of the KV endpoints.
const MAX_JSON_BODY: usize = 32 << 20;
/// Keep-alive line interval of watch streams.
const HEARTBEAT: Duration = Duration::from_secs(15);

fn header<'a>(headers: &'a HeaderMap, name: &str) -> S3Result<Option<&'a str>> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.trim()))
            .map_err(|_| s3_error!(InvalidArgument, "header {name} is not valid text")),
    }
}

/// KV endpoints answer in S3's error format (s3s routes them, and clients parse S3 codes), so
/// an engine error translates exactly as on S3: by variant where a code exists, by kind
/// otherwise.
fn engine_error(e: meridian_engine::EngineError) -> S3Error {
    s3_error(e)
}

fn parse_u64(name: &str, value: &str) -> S3Result<u64> {
    value.parse().map_err(|_| {
        S3Error::with_message(
            S3ErrorCode::InvalidArgument,
            format!("{name} must be a non-negative integer, got {value:?}"),
        )
    })
}

fn parse_duration(name: &str, value: &str) -> S3Result<Duration> {
    ttl::parse_ttl(value).map_err(|e| S3Error::with_message(S3ErrorCode::InvalidArgument, format!("{name}: {e}")))
}

fn parse_wait(name: &str, value: &str) -> S3Result<Duration> {
    ttl::parse_wait(value).map_err(|e| S3Error::with_message(S3ErrorCode::InvalidArgument, format!("{name}: {e}")))
}

/// Parses `x-meridian-expires`: an RFC 3339 date-time or Unix milliseconds.
fn parse_expires(value: &str) -> S3Result<i64> {
    let ms = match value.parse::<i64>() {
        Ok(ms) => ms,
        Err(_) => {
            let t = time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339).map_err(|_| {
                s3_error!(InvalidArgument, "{EXPIRES_HEADER} must be an RFC 3339 date-time (2030-01-01T00:00:00Z) or Unix milliseconds, got {value:?}")
            })?;
            (t.unix_timestamp_nanos() / 1_000_000) as i64
        }
    };
    if ms <= now_ms() {
        return Err(s3_error!(InvalidArgument, "{EXPIRES_HEADER} {value:?} is not in the future"));
    }
    Ok(ms)
}

/// The KV extension headers of a write.
#[derive(Default)]
pub struct KvWrite {
    pub expires_at_ms: Option<i64>,
    pub if_revision: Option<u64>,
    pub fence: Option<Fence>,
    /// put_transaction: (wait, lock TTL).
    pub transaction: Option<(Duration, Duration)>,
}

impl KvWrite {
    pub fn from_headers(headers: &HeaderMap) -> S3Result<Self> {
        let mut out = KvWrite::default();
        match (header(headers, TTL_HEADER)?, header(headers, EXPIRES_HEADER)?) {
            (Some(_), Some(_)) => {
                return Err(s3_error!(InvalidArgument, "send {TTL_HEADER} or {EXPIRES_HEADER}, not both"));
            }
            (Some(ttl), None) => out.expires_at_ms = Some(ttl::expires_after(parse_duration(TTL_HEADER, ttl)?)),
            (None, Some(at)) => out.expires_at_ms = Some(parse_expires(at)?),
            (None, None) => {}
        }
        if let Some(rev) = header(headers, IF_REVISION_HEADER)? {
            out.if_revision = Some(parse_u64(IF_REVISION_HEADER, rev)?);
        }
        match (header(headers, FENCE_LOCK_HEADER)?, header(headers, FENCE_HEADER)?) {
            (Some(lock), Some(token)) => {
                meridian_engine::locks::validate_lock_name(lock).map_err(engine_error)?;
                out.fence = Some(Fence { lock: lock.to_string(), token: parse_u64(FENCE_HEADER, token)? });
            }
            (None, None) => {}
            _ => {
                return Err(s3_error!(
                    InvalidArgument,
                    "a fenced write needs both {FENCE_LOCK_HEADER} (the lock name) and {FENCE_HEADER} (its token)"
                ));
            }
        }
        match header(headers, TRANSACTION_HEADER)? {
            None => {}
            Some(v) if v.eq_ignore_ascii_case("lock") => {
                let wait = match header(headers, LOCK_WAIT_HEADER)? {
                    Some(w) => parse_wait(LOCK_WAIT_HEADER, w)?,
                    None => Duration::ZERO,
                };
                let lock_ttl = match header(headers, LOCK_TTL_HEADER)? {
                    Some(t) => parse_duration(LOCK_TTL_HEADER, t)?,
                    None => DEFAULT_TRANSACTION_LOCK_TTL,
                };
                out.transaction = Some((wait, lock_ttl));
            }
            Some(other) => {
                return Err(s3_error!(InvalidArgument, "{TRANSACTION_HEADER} must be \"lock\", got {other:?}"));
            }
        }
        Ok(out)
    }

    /// Adds the revision and fence conditions to S3's.
    pub fn conditions(&self, mut conditions: WriteConditions) -> WriteConditions {
        conditions.if_revision = self.if_revision;
        conditions.fence = self.fence.clone();
        conditions
    }
}

pub const CONSISTENCY_HEADER: &str = "x-meridian-consistency";
pub const MIN_REVISION_HEADER: &str = "x-meridian-min-revision";
/// Cookie carrying the revision of a browser session's last write.
pub const MIN_REVISION_COOKIE: &str = "meridian-min-revision";

/// How fresh a read must be: `x-meridian-consistency: strong|local`, or at least a revision
/// (`x-meridian-min-revision: R`, or the session cookie) — read-your-writes across regions.
pub fn read_consistency(headers: &HeaderMap) -> S3Result<Consistency> {
    if let Some(rev) = header(headers, MIN_REVISION_HEADER)? {
        return Ok(Consistency::AtLeast(parse_u64(MIN_REVISION_HEADER, rev)?));
    }
    match header(headers, CONSISTENCY_HEADER)? {
        None => {}
        Some(v) if v.eq_ignore_ascii_case("strong") => return Ok(Consistency::Strong),
        Some(v) if v.eq_ignore_ascii_case("local") => return Ok(Consistency::Local),
        Some(other) => {
            return Err(s3_error!(InvalidArgument, "{CONSISTENCY_HEADER} must be strong or local, got {other:?}"));
        }
    }
    // By default a read is served from this node's local view of the metadata (never behind
    // this node's own writes; a miss is confirmed strongly by the engine).
    Ok(session_revision(headers).map_or(Consistency::Local, Consistency::AtLeast))
}

pub const SNAPSHOT_HEADER: &str = "x-meridian-snapshot";
pub const SNAPSHOT_QUERY: &str = "snapshot";

/// The bucket snapshot a read asks for: `x-meridian-snapshot: NAME` or `?snapshot=NAME`.
pub fn snapshot_asked(headers: &HeaderMap, uri: &http::Uri) -> S3Result<Option<String>> {
    if let Some(name) = header(headers, SNAPSHOT_HEADER)? {
        return Ok(Some(name.to_string()));
    }
    let value = uri.query().into_iter().flat_map(|q| q.split('&')).find_map(|pair| match pair.split_once('=') {
        Some((SNAPSHOT_QUERY, value)) => Some(value),
        _ => None,
    });
    let Some(value) = value else { return Ok(None) };
    let decoded = percent_encoding::percent_decode_str(value).decode_utf8();
    let name = decoded.map_err(|_| s3_error!(InvalidArgument, "the {SNAPSHOT_QUERY} parameter is not valid UTF-8"))?;
    Ok(Some(name.into_owned()))
}

/// The revision in the session cookie, if the request carries one.
fn session_revision(headers: &HeaderMap) -> Option<u64> {
    let values = headers.get_all(http::header::COOKIE).iter().filter_map(|v| v.to_str().ok());
    meridian_common::cookie::cookie_value(values, MIN_REVISION_COOKIE).and_then(|value| value.trim().parse().ok())
}

/// The session cookie of a write: the write's revision, which later reads carrying it wait for
/// (read-your-writes across regions). Clients that keep no cookies ignore it.
pub fn session_cookie(revision: u64, response: &mut HeaderMap) {
    let cookie = format!("{MIN_REVISION_COOKIE}={revision}; Path=/; Max-Age=300; SameSite=Lax");
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.insert(http::header::SET_COOKIE, v);
    }
}

/// Headers telling a reader when the object expires.
pub fn expiry_headers(expires_at_ms: Option<i64>, headers: &mut HeaderMap) {
    let Some(at) = expires_at_ms else { return };
    if let Ok(v) = HeaderValue::from_str(&at.to_string()) {
        headers.insert(EXPIRES_AT_HEADER, v);
    }
    if let Ok(v) = HeaderValue::from_str(&(at - now_ms()).max(0).to_string()) {
        headers.insert(TTL_REMAINING_HEADER, v);
    }
}

// ----- the JSON endpoints -----------------------------------------------------------------------

/// The `?meridian=...` endpoints.
pub struct KvRoute {
    engine: Engine,
    access: crate::access::MeridianAccess,
    domain: Option<String>,
}

impl KvRoute {
    /// `access`: the S3 access check, whose key and grant lookups KV requests share;
    /// `domain`: as for S3 requests, for virtual-host-style bucket addressing.
    pub fn new(engine: Engine, access: crate::access::MeridianAccess, domain: Option<String>) -> Self {
        KvRoute { engine, access, domain }
    }

    /// The bucket a KV request addresses (`/BUCKET?meridian=...`, or `/?meridian=...` on
    /// `BUCKET.<domain>`); an object path is refused.
    fn bucket_of<T>(&self, req: &S3Request<T>) -> S3Result<String> {
        let host = req.headers.get(http::header::HOST).and_then(|h| h.to_str().ok());
        let address = bucket_address::parse(host, req.uri.path(), self.domain.as_deref())
            .map_err(|e| s3_error!(InvalidURI, "{e}"))?;
        match (address.bucket, address.key) {
            (Some(bucket), None) => Ok(bucket),
            _ => Err(s3_error!(InvalidRequest, "KV endpoints are addressed as /BUCKET?meridian=...")),
        }
    }
}

fn query_pairs(uri: &Uri) -> Vec<(String, String)> {
    let decode = |s: &str| percent_encoding::percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned();
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

fn query<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn json_response<T: Serialize>(value: &T) -> S3Result<S3Response<Body>> {
    let body =
        serde_json::to_vec(value).map_err(|e| S3Error::with_message(S3ErrorCode::InternalError, e.to_string()))?;
    let mut resp = S3Response::new(Body::from(body));
    resp.headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(resp)
}

async fn json_body<T: for<'de> Deserialize<'de>>(req: &mut S3Request<Body>) -> S3Result<T> {
    let bytes = req
        .input
        .store_all_limited(MAX_JSON_BODY)
        .await
        .map_err(|e| s3_error!(InvalidRequest, "could not read the request body: {e}"))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| S3Error::with_message(S3ErrorCode::MalformedXML, format!("malformed JSON request body: {e}")))
}

#[derive(Serialize)]
struct LockView {
    name: String,
    owner: String,
    token: u64,
    expires_at_ms: i64,
}

impl From<LockInfo> for LockView {
    fn from(l: LockInfo) -> Self {
        LockView { name: l.name, owner: l.owner, token: l.token, expires_at_ms: l.expires_at_ms }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LockRequest {
    name: String,
    #[serde(default)]
    owner: Option<String>,
    #[serde(default)]
    token: Option<u64>,
    #[serde(default)]
    ttl: Option<String>,
    #[serde(default)]
    wait: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchRequest {
    ops: Vec<BatchEntry>,
}

#[derive(Serialize)]
struct ListEntry {
    key: String,
    revision: u64,
    size: u64,
    etag: String,
    last_modified_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at_ms: Option<i64>,
}

#[derive(Serialize)]
struct ListView {
    entries: Vec<ListEntry>,
    truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_after: Option<String>,
    revision: u64,
}

impl KvRoute {
    async fn handle(&self, mut req: S3Request<Body>) -> S3Result<S3Response<Body>> {
        let pairs = query_pairs(&req.uri);
        let action = query(&pairs, "meridian").unwrap_or_default().to_string();
        let bucket = self.bucket_of(&req)?;
        match (req.method.clone(), action.as_str()) {
            (Method::GET, "watch") => self.watch(&bucket, &pairs).await,
            (Method::GET, "list") => self.list(&bucket, &pairs).await,
            (Method::GET, "lock") => {
                let name = query(&pairs, "name").ok_or_else(|| s3_error!(InvalidArgument, "missing name"))?;
                let owner = self.engine.lock_owner(&bucket, name).await.map_err(engine_error)?;
                json_response(&serde_json::json!({ "held": owner.is_some(), "lock": owner.map(LockView::from) }))
            }
            (Method::POST, "batch") => {
                let body: BatchRequest = json_body(&mut req).await?;
                let ops = body
                    .ops
                    .into_iter()
                    .map(|entry| entry.into_op().map_err(|m| S3Error::with_message(S3ErrorCode::InvalidArgument, m)))
                    .collect::<S3Result<Vec<_>>>()?;
                let revision = self.engine.batch(&bucket, ops).await.map_err(engine_error)?;
                let mut resp = json_response(&serde_json::json!({ "revision": revision }))?;
                session_cookie(revision, &mut resp.headers);
                Ok(resp)
            }
            (Method::POST, "lock") => {
                let body: LockRequest = json_body(&mut req).await?;
                let owner = body.owner.ok_or_else(|| s3_error!(InvalidArgument, "a lock request needs an owner"))?;
                let ttl = parse_duration("ttl", body.ttl.as_deref().unwrap_or("30s"))?;
                let wait = match body.wait.as_deref() {
                    None => Duration::ZERO,
                    Some(w) => parse_wait("wait", w)?,
                };
                let lock =
                    self.engine.acquire_lock(&bucket, &body.name, &owner, ttl, wait).await.map_err(engine_error)?;
                json_response(&LockView::from(lock))
            }
            (Method::POST, "renew") => {
                let body: LockRequest = json_body(&mut req).await?;
                let token = body.token.ok_or_else(|| s3_error!(InvalidArgument, "renew needs the token"))?;
                let ttl = parse_duration("ttl", body.ttl.as_deref().unwrap_or("30s"))?;
                let lock = self.engine.renew_lock(&bucket, &body.name, token, ttl).await.map_err(engine_error)?;
                json_response(&LockView::from(lock))
            }
            (Method::POST, "release") => {
                let body: LockRequest = json_body(&mut req).await?;
                let token = body.token.ok_or_else(|| s3_error!(InvalidArgument, "release needs the token"))?;
                self.engine.release_lock(&bucket, &body.name, token).await.map_err(engine_error)?;
                json_response(&serde_json::json!({ "released": true }))
            }
            (method, action) => Err(s3_error!(InvalidRequest, "unknown KV request {method} ?meridian={action}")),
        }
    }

    async fn list(&self, bucket: &str, pairs: &[(String, String)]) -> S3Result<S3Response<Body>> {
        let limit = match query(pairs, "limit") {
            Some(l) => parse_u64("limit", l)? as usize,
            None => 1000,
        };
        let request = ListRequest {
            prefix: query(pairs, "prefix").unwrap_or_default().to_string(),
            delimiter: None,
            after: query(pairs, "after").filter(|a| !a.is_empty()).map(String::from),
            max_keys: limit,
            consistency: Consistency::Strong,
        };
        let page = self.engine.list_objects(bucket, &request).await.map_err(engine_error)?;
        let entries = page
            .objects
            .into_iter()
            .map(|o| ListEntry {
                key: o.key,
                revision: o.revision,
                size: o.record.size,
                etag: o.record.etag,
                last_modified_ms: o.record.modified_ms,
                expires_at_ms: o.record.expires_at_ms,
            })
            .collect();
        json_response(&ListView {
            entries,
            truncated: page.is_truncated,
            next_after: page.is_truncated.then_some(page.next_after).flatten(),
            revision: page.revision,
        })
    }

    async fn watch(&self, bucket: &str, pairs: &[(String, String)]) -> S3Result<S3Response<Body>> {
        let prefix = query(pairs, "prefix").unwrap_or_default().to_string();
        let since = match query(pairs, "since") {
            Some(s) => parse_u64("since", s)?,
            None => 0,
        };
        let changes = self.engine.watch(bucket, &prefix, since).await.map_err(engine_error)?;
        let lines = ndjson(changes, since.saturating_sub(1));
        let mut resp = S3Response::new(Body::from(s3s::dto::StreamingBlob::new(ResponseBody::streaming(lines))));
        resp.headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
        resp.headers.insert(http::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok(resp)
    }
}

/// Watch output: one JSON object per line; heartbeats carry the last revision delivered; an
/// error (e.g. history compacted while the watcher lagged) is the last line.
fn ndjson(changes: meridian_engine::watch::ChangeStream, start: u64) -> meridian_engine::Body {
    let events = changes.map(Some);
    let ticks = futures::stream::unfold((), |()| async {
        tokio::time::sleep(HEARTBEAT).await;
        Some((None, ()))
    });
    // (last revision delivered, whether the stream has ended with an error)
    let state = (start, false);
    let lines = futures::stream::select(events, ticks).scan(
        state,
        |state, item: Option<Result<Change, meridian_engine::EngineError>>| {
            if state.1 {
                return futures::future::ready(None);
            }
            let value = match item {
                Some(Ok(change)) => {
                    state.0 = change.revision;
                    serde_json::to_value(&change).unwrap_or_default()
                }
                None => serde_json::json!({ "type": "heartbeat", "revision": state.0 }),
                Some(Err(err)) => {
                    state.1 = true;
                    watch_error_line(err)
                }
            };
            let mut line = value.to_string().into_bytes();
            line.push(b'\n');
            futures::future::ready(Some(Ok::<_, meridian_engine::BodyError>(Bytes::from(line))))
        },
    );
    Box::pin(lines)
}

/// The last line of a failed watch, with the code an HTTP answer would carry for the same error.
fn watch_error_line(err: meridian_engine::EngineError) -> serde_json::Value {
    let oldest = match &err {
        meridian_engine::EngineError::RevisionCompacted { oldest, .. } => Some(*oldest),
        _ => None,
    };
    let message = err.to_string();
    let code = engine_error(err).code().as_str().to_string();
    let mut line = serde_json::json!({ "type": "error", "code": code, "message": message });
    if let Some(oldest) = oldest {
        line["oldest"] = oldest.into();
    }
    line
}

/// The operation of a KV request, for logs and metrics: `kv.<action>` for the actions there
/// are (a fixed set, so a client cannot add label values), `kv.other` for anything else.
fn kv_operation(uri: &Uri) -> &'static str {
    let pairs = query_pairs(uri);
    match query(&pairs, "meridian").unwrap_or_default() {
        "watch" => "kv.watch",
        "list" => "kv.list",
        "lock" => "kv.lock",
        "batch" => "kv.batch",
        "renew" => "kv.renew",
        "release" => "kv.release",
        _ => "kv.other",
    }
}

#[async_trait::async_trait]
impl S3Route for KvRoute {
    fn is_match(&self, _method: &Method, uri: &Uri, _headers: &HeaderMap, extensions: &mut http::Extensions) -> bool {
        let matched = uri.query().is_some_and(|q| q.split('&').any(|p| p == "meridian" || p.starts_with("meridian=")));
        if let Some(info) = extensions.get::<meridian_http::RequestInfo>().filter(|_| matched) {
            info.notes.set_operation(kv_operation(uri));
        }
        matched
    }

    async fn check_access(&self, req: &mut S3Request<Body>) -> S3Result<()> {
        let Some(creds) = &req.credentials else {
            return Err(S3Error::with_message(S3ErrorCode::AccessDenied, "KV requests must be signed"));
        };
        let access = match req.method {
            Method::GET => Access::Read,
            _ => Access::Write,
        };
        let bucket = self.bucket_of(req)?;
        let seen = req.extensions.get::<RequestContext>().and_then(|context| context.bucket(&bucket));
        self.access.check_key_on_bucket(&creds.access_key, &bucket, seen, access).await
    }

    async fn call(&self, req: S3Request<Body>) -> S3Result<S3Response<Body>> {
        let mut resp = self.handle(req).await?;
        if resp.status.is_none() {
            resp.status = Some(StatusCode::OK);
        }
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::watch_error_line;
    use meridian_engine::{EngineError, MetaError};

    #[test]
    fn a_failed_watch_ends_with_the_code_of_its_error() {
        let compacted = watch_error_line(EngineError::RevisionCompacted { requested: 2, oldest: 77 });
        assert_eq!(compacted["code"], "RevisionCompacted");
        assert_eq!(compacted["oldest"], 77);
        let unavailable = watch_error_line(EngineError::Meta(MetaError::Unavailable("no quorum".into())));
        assert_eq!(unavailable["code"], "ServiceUnavailable");
        assert!(unavailable.get("oldest").is_none());
    }
}
