//! The admin HTTP API. JSON in and out; every `/v1/` request needs `Authorization: Bearer
//! <token>`. `/health` and `/ready` are open, for load balancers (see [`crate::health`]).
//! `GET /metrics` (Prometheus text) takes the admin token or the read-only status token, which
//! opens nothing else but the status page (`/status`, see [`crate::status`]).
//!
//! | method and path | body | answer |
//! |---|---|---|
//! | `GET /health` | | liveness: `{"status":"ok","node","region"}` |
//! | `GET /ready` | | readiness: 200 or 503, `{"ready","checks":[{"name","ok","reason"?,"took_ms"}]}` |
//! | `GET /metrics` | | every metric of this node (Prometheus text; OpenMetrics if asked for) |
//! | `POST /v1/keys` | `{"name","can_create_buckets"?}` | the key with its secret (shown only here) |
//! | `GET /v1/keys` | | all keys (no secrets) |
//! | `GET /v1/keys/NAME` | | one key and its bucket grants |
//! | `PATCH /v1/keys/NAME` | `{"can_create_buckets"}` | the key |
//! | `DELETE /v1/keys/NAME` | | `{"deleted":"NAME"}` |
//! | `POST /v1/keys/NAME/rotate` | `{"grace":"1h"}` | the new credential (old ones valid for the grace period) |
//! | `GET /v1/cluster` | | the nodes of the cluster: region, URL, health, measured replication lag (`lag_ms`), cache |
//! | `GET /v1/buckets` | | buckets with owner, public flag and grants |
//! | `POST /v1/buckets` | `{"name","owner"?,"public_read"?}` | the bucket |
//! | `POST /v1/buckets/NAME/allow` | `{"key","read"?,"write"?,"owner"?}` | the bucket |
//! | `POST /v1/buckets/NAME/deny` | `{"key","read"?,"write"?,"owner"?}` | the bucket |
//! | `POST /v1/buckets/NAME/public` | `{"read":true}` | the bucket |
//! | `PUT /v1/buckets/NAME/shadow` | `{"endpoint","bucket","region","access_key","secret_key","write_through"?}` | the bucket (its shadow without the secret) |
//! | `DELETE /v1/buckets/NAME/shadow` | | the bucket, no longer shadowing |
//! | `GET /v1/sites` | | the sites stored for the web edge (not those of TOML files) |
//! | `GET /v1/sites/NAME` | | one stored site |
//! | `PUT /v1/sites/NAME` | `{"bucket","host"?,"path_prefix"?,"key_prefix"?,"cache_control"?,"index_document"?,"error_document"?,"origin"?}` (`origin`: `{"region":[{"name","edge"?,"instances":[{"id","url"}]}],"pin_seconds"?,"revision_wait_ms"?}`) | the site |
//! | `DELETE /v1/sites/NAME` | | `{"deleted":"NAME"}` |
//!
//! Errors: `{"error":{"code":"...","message":"..."}}`. The status follows the engine error's kind:
//! 400 invalid, 403 denied, 404 not found, 409 conflict, 503 contended or unavailable (e.g. a
//! change committed but not yet applied by every metadata replica: retry), 500 internal; 401
//! without the token.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use meridian_engine::health::ReadinessProbe;
use meridian_engine::iam::{Credential, Grant, KeyRecord};
use meridian_engine::record::BucketRecord;
use meridian_engine::shadow::ShadowSource;
use meridian_engine::website::SiteRecord;
use meridian_engine::{Engine, EngineError, ErrorKind};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::health::Probe;
use crate::status::StatusPage;

/// Largest request body accepted.
const MAX_BODY: usize = 64 << 10;

#[derive(Clone)]
pub struct AdminApi {
    engine: Engine,
    token: String,
    readiness: Arc<ReadinessProbe>,
    status: Option<Arc<StatusPage>>,
    /// Opens `GET /metrics` (and nothing that changes or reveals keys or buckets).
    status_token: Option<String>,
    metrics: Option<std::sync::Arc<meridian_metrics::Metrics>>,
}

/// Which token a request presented.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Caller {
    Admin,
    Status,
    Nobody,
}

pub(crate) type Reply = Response<Full<Bytes>>;

struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into() }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "InvalidRequest", message)
    }
}

impl From<EngineError> for ApiError {
    /// The status comes from the error's kind; a few variants keep a more specific code.
    fn from(e: EngineError) -> Self {
        let (status, kind_code) = kind_status(e.kind());
        let code = match e {
            EngineError::NoSuchAccessKey(_) => "NoSuchKey",
            EngineError::NoSuchBucket => "NoSuchBucket",
            EngineError::NoSuchSite(_) => "NoSuchSite",
            EngineError::AccessKeyExists(_) => "KeyExists",
            EngineError::BucketAlreadyExists | EngineError::BucketAlreadyOwnedByYou => "BucketExists",
            EngineError::BucketNotEmpty | EngineError::BucketHasSnapshots(_) => "BucketNotEmpty",
            EngineError::NoSuchSnapshot(_) => "NoSuchSnapshot",
            EngineError::SnapshotExists(_) => "SnapshotExists",
            EngineError::NoSuchNode(_) => "NoSuchNode",
            EngineError::NodeIsLive { .. } => "NodeIsLive",
            _ => kind_code,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %e, "internal error");
        }
        ApiError { status, code, message: e.to_string() }
    }
}

/// The admin API's status and code for each kind of engine error.
fn kind_status(kind: ErrorKind) -> (StatusCode, &'static str) {
    match kind {
        ErrorKind::Invalid => (StatusCode::BAD_REQUEST, "InvalidArgument"),
        ErrorKind::Denied => (StatusCode::FORBIDDEN, "AccessDenied"),
        ErrorKind::NotFound => (StatusCode::NOT_FOUND, "NotFound"),
        ErrorKind::Conflict => (StatusCode::CONFLICT, "Conflict"),
        ErrorKind::Contended => (StatusCode::SERVICE_UNAVAILABLE, "Contended"),
        ErrorKind::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "Unavailable"),
        ErrorKind::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
    }
}

/// A JSON answer; never cached (every answer describes the node or its data as it is now).
pub(crate) fn reply<T: Serialize>(status: StatusCode, value: &T) -> Reply {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    headers.insert(http::header::CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
    resp
}

fn error_reply(e: ApiError) -> Reply {
    reply(e.status, &json!({ "error": { "code": e.code, "message": e.message } }))
}

#[derive(Serialize)]
struct KeyView {
    name: String,
    access_key_ids: Vec<String>,
    admin: bool,
    can_create_buckets: bool,
    created_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    buckets: Option<Vec<BucketGrantView>>,
}

impl KeyView {
    fn new(key: &KeyRecord) -> Self {
        KeyView {
            name: key.name.clone(),
            access_key_ids: key.access_key_ids(),
            admin: key.admin,
            can_create_buckets: key.can_create_buckets,
            created_ms: key.created_ms,
            buckets: None,
        }
    }
}

#[derive(Serialize)]
struct BucketGrantView {
    bucket: String,
    read: bool,
    write: bool,
    owner: bool,
}

#[derive(Serialize)]
struct CredentialView {
    name: String,
    access_key_id: String,
    secret_access_key: String,
}

impl CredentialView {
    fn new(name: &str, c: &Credential) -> Self {
        CredentialView {
            name: name.to_string(),
            access_key_id: c.access_key_id.clone(),
            secret_access_key: c.secret.clone(),
        }
    }
}

#[derive(Serialize)]
struct BucketView {
    name: String,
    owner: String,
    public_read: bool,
    created_ms: i64,
    grants: std::collections::BTreeMap<String, Grant>,
    /// `global`, `pinned:REGION` or `multi:R1,R2[;quorum=N]`.
    location: String,
    /// How many regions keep a copy of each object's bytes (global buckets).
    replicas: u32,
    /// How many snapshots the bucket has.
    snapshots: u32,
    /// For a fork: `SOURCE@SNAPSHOT`.
    #[serde(skip_serializing_if = "Option::is_none")]
    fork_of: Option<String>,
    /// The bucket of another S3 service it shadows (never its secret).
    #[serde(skip_serializing_if = "Option::is_none")]
    shadow: Option<ShadowView>,
}

#[derive(Serialize)]
struct ShadowView {
    endpoint: String,
    bucket: String,
    region: String,
    access_key: String,
    write_through: bool,
}

impl ShadowView {
    fn new(source: ShadowSource) -> Self {
        let ShadowSource { endpoint, bucket, region, access_key, write_through, .. } = source;
        ShadowView { endpoint, bucket, region, access_key, write_through }
    }
}

impl BucketView {
    fn new(name: &str, record: BucketRecord) -> Self {
        BucketView {
            name: name.to_string(),
            owner: record.owner,
            public_read: record.public_read,
            created_ms: record.created_ms,
            grants: record.grants,
            location: record.location.to_string(),
            replicas: record.replicas.unwrap_or(1),
            snapshots: record.snapshots,
            fork_of: record.fork_of.map(|o| format!("{}@{}", o.bucket, o.snapshot)),
            shadow: record.shadow.map(ShadowView::new),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    name: String,
    #[serde(default)]
    can_create_buckets: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateKey {
    can_create_buckets: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rotate {
    #[serde(default)]
    grace: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateSnapshot {
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateFork {
    /// The new bucket.
    name: String,
    /// The source's snapshot to start from (`None`: the source as it is now).
    #[serde(default)]
    snapshot: Option<String>,
    #[serde(default)]
    owner: Option<String>,
}

/// One page of objects of a bucket, or of one of its snapshots.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListObjects {
    #[serde(default)]
    prefix: String,
    #[serde(default)]
    after: Option<String>,
    #[serde(default)]
    snapshot: Option<String>,
}

#[derive(Serialize)]
struct ObjectView {
    key: String,
    size: u64,
    etag: String,
    modified_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    version_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBucket {
    name: String,
    #[serde(default)]
    owner: Option<String>,
    #[serde(default)]
    public_read: bool,
    /// A location constraint as CreateBucket takes it (`global;replicas=2`, `multi:a,b`...).
    #[serde(default)]
    location: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantChange {
    key: String,
    #[serde(default)]
    read: bool,
    #[serde(default)]
    write: bool,
    #[serde(default)]
    owner: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Public {
    read: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Replicas {
    replicas: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Forget {
    #[serde(default)]
    force: bool,
}

fn parse<T: for<'de> Deserialize<'de>>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))
}

/// A request body of at most [`MAX_BODY`] bytes.
async fn read_body<B>(body: B) -> Result<Bytes, ApiError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(_) => Err(ApiError::bad_request("the request body is too large or was cut off")),
    }
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from timings.
pub(crate) fn same_token(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl AdminApi {
    /// The API of `readiness`'s engine; `readiness` answers `/ready` (shared with the S3 port's
    /// probe, so both see one cached answer).
    pub fn new(token: String, readiness: Arc<ReadinessProbe>) -> Self {
        AdminApi {
            engine: readiness.engine().clone(),
            token,
            readiness,
            status: None,
            status_token: None,
            metrics: None,
        }
    }

    /// Serves the live status page (`/status`, see [`crate::status`]) too.
    pub fn with_status_page(mut self, page: Arc<StatusPage>) -> Self {
        self.status = Some(page);
        self
    }

    /// Also accepts `token` for the read-only endpoints (`GET /metrics`).
    pub fn status_token(mut self, token: Option<String>) -> Self {
        self.status_token = token;
        self
    }

    /// Serves `metrics` at `GET /metrics`.
    pub fn metrics(mut self, metrics: std::sync::Arc<meridian_metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    fn caller(&self, headers: &http::HeaderMap) -> Caller {
        let Some(presented) = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| t.trim().as_bytes())
        else {
            return Caller::Nobody;
        };
        if same_token(presented, self.token.as_bytes()) {
            Caller::Admin
        } else if self.status_token.as_ref().is_some_and(|t| same_token(presented, t.as_bytes())) {
            Caller::Status
        } else {
            Caller::Nobody
        }
    }

    /// Serves one request; never fails at the HTTP level.
    pub async fn handle<B>(&self, req: Request<B>, info: &meridian_http::RequestInfo) -> Result<Reply, Infallible>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let notes = &info.notes;
        let (parts, body) = req.into_parts();
        let path = parts.uri.path().to_string();
        if let Some(probe) = Probe::from_request(&parts.method, &path, "") {
            notes.set_operation(probe.operation());
            return Ok(crate::health::answer(probe, &self.readiness).await);
        }
        if let Some(page) = self.status.as_ref().filter(|_| StatusPage::serves(&path)) {
            notes.set_operation("admin.status");
            return Ok(match read_body(body).await {
                Ok(body) => page.handle(&parts.method, &path, &parts.headers, &body, info.secure).await,
                Err(e) => error_reply(e),
            });
        }
        notes.set_operation(operation_name(&path));
        let caller = self.caller(&parts.headers);
        let read_only = parts.method == Method::GET && path == "/metrics";
        match caller {
            Caller::Admin => notes.set_principal("admin-token"),
            Caller::Status if read_only => notes.set_principal("status-token"),
            Caller::Status => {
                notes.set_principal("status-token");
                return Ok(error_reply(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "AccessDenied",
                    "the status token only reads metrics and status; this needs the admin token",
                )));
            }
            Caller::Nobody => {
                return Ok(error_reply(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "Unauthorized",
                    "send the admin token (or, for /metrics, the status token) as 'Authorization: Bearer <token>'",
                )));
            }
        }
        if read_only {
            let accept = parts.headers.get(http::header::ACCEPT).and_then(|v| v.to_str().ok());
            return Ok(self.metrics_reply(accept));
        }
        let body = match read_body(body).await {
            Ok(body) => body,
            Err(e) => return Ok(error_reply(e)),
        };
        let segments: Vec<String> = path
            .trim_matches('/')
            .split('/')
            .map(|s| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned())
            .collect();
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        Ok(match self.route(&parts.method, &segments, &body).await {
            Ok(resp) => resp,
            Err(e) => error_reply(e),
        })
    }

    /// `GET /metrics`: this node's metrics, or 404 when the node keeps none.
    fn metrics_reply(&self, accept: Option<&str>) -> Reply {
        let Some(metrics) = &self.metrics else {
            return error_reply(ApiError::new(StatusCode::NOT_FOUND, "NotFound", "this node keeps no metrics"));
        };
        metrics_response(metrics, accept)
    }

    async fn route(&self, method: &Method, segments: &[&str], body: &Bytes) -> Result<Reply, ApiError> {
        let engine = &self.engine;
        match (method.clone(), segments) {
            (Method::POST, ["v1", "keys"]) => {
                let req: CreateKey = parse(body)?;
                let (key, credential) = engine.create_access_key(&req.name, req.can_create_buckets).await?;
                Ok(reply(StatusCode::CREATED, &CredentialView::new(&key.name, &credential)))
            }
            (Method::GET, ["v1", "keys"]) => {
                let keys = engine.list_access_keys().await?;
                Ok(reply(StatusCode::OK, &keys.iter().map(KeyView::new).collect::<Vec<_>>()))
            }
            (Method::GET, ["v1", "keys", name]) => {
                let key = engine.access_key(name).await?;
                let mut view = KeyView::new(&key);
                let mut buckets = Vec::new();
                for (bucket, record) in engine.list_buckets().await? {
                    let grant = record.grants.get(*name).copied().unwrap_or_default();
                    let owns = record.owner == *name;
                    if owns || !grant.is_empty() {
                        buckets.push(BucketGrantView {
                            bucket,
                            read: grant.read || owns,
                            write: grant.write || owns,
                            owner: grant.owner || owns,
                        });
                    }
                }
                view.buckets = Some(buckets);
                Ok(reply(StatusCode::OK, &view))
            }
            (Method::PATCH, ["v1", "keys", name]) => {
                let req: UpdateKey = parse(body)?;
                let key = engine.set_key_can_create_buckets(name, req.can_create_buckets).await?;
                Ok(reply(StatusCode::OK, &KeyView::new(&key)))
            }
            (Method::DELETE, ["v1", "keys", name]) => {
                engine.delete_access_key(name).await?;
                Ok(reply(StatusCode::OK, &json!({ "deleted": name })))
            }
            (Method::POST, ["v1", "keys", name, "rotate"]) => {
                let req: Rotate = parse(body)?;
                let grace = match req.grace.as_deref() {
                    None => Duration::ZERO,
                    // Zero is a valid grace (the old credential stops at once), unlike a TTL.
                    Some(g) => meridian_common::duration::parse_duration(g).map_err(|e| {
                        ApiError::new(StatusCode::BAD_REQUEST, "InvalidArgument", format!("grace: {e}"))
                    })?,
                };
                let credential = engine.rotate_access_key(name, grace).await?;
                Ok(reply(StatusCode::OK, &CredentialView::new(name, &credential)))
            }
            (Method::GET, ["v1", "cluster"]) => {
                let nodes = engine.nodes().await?;
                let revision = engine.current_revision().await?;
                let this = &engine.config().node;
                Ok(reply(
                    StatusCode::OK,
                    &json!({ "node": this.node, "region": this.region, "revision": revision, "nodes": nodes }),
                ))
            }
            (Method::POST, ["v1", "cluster", "nodes", id, "forget"]) => {
                let req: Forget = parse(body)?;
                let record = engine.forget_node(id, req.force).await?;
                Ok(reply(StatusCode::OK, &json!({ "forgotten": record })))
            }
            (Method::GET, ["v1", "buckets"]) => {
                let buckets = engine.list_buckets().await?;
                Ok(reply(StatusCode::OK, &buckets.into_iter().map(|(n, r)| BucketView::new(&n, r)).collect::<Vec<_>>()))
            }
            (Method::POST, ["v1", "buckets"]) => {
                let req: CreateBucket = parse(body)?;
                let owner = req.owner.unwrap_or_else(|| meridian_engine::iam::ADMIN_KEY.to_string());
                engine.access_key(&owner).await?;
                let placement = match &req.location {
                    Some(text) => meridian_engine::record::parse_placement(text)?,
                    None => Default::default(),
                };
                engine.create_bucket_at(&req.name, &owner, req.public_read, placement).await?;
                let (record, _) = engine.bucket(&req.name).await?;
                Ok(reply(StatusCode::CREATED, &BucketView::new(&req.name, record)))
            }
            (Method::DELETE, ["v1", "buckets", bucket]) => {
                engine.delete_bucket(bucket).await?;
                Ok(reply(StatusCode::OK, &json!({ "deleted": bucket })))
            }
            (Method::POST, ["v1", "buckets", bucket, action @ ("allow" | "deny")]) => {
                let req: GrantChange = parse(body)?;
                let grant = Grant { read: req.read, write: req.write, owner: req.owner };
                let record = engine.set_grant(bucket, &req.key, grant, *action == "allow").await?;
                Ok(reply(StatusCode::OK, &BucketView::new(bucket, record)))
            }
            (Method::POST, ["v1", "buckets", bucket, "public"]) => {
                let req: Public = parse(body)?;
                let record = engine.set_public_read(bucket, req.read).await?;
                Ok(reply(StatusCode::OK, &BucketView::new(bucket, record)))
            }
            (Method::POST, ["v1", "buckets", bucket, "replicas"]) => {
                let req: Replicas = parse(body)?;
                let record = engine.set_bucket_replicas(bucket, Some(req.replicas)).await?;
                Ok(reply(StatusCode::OK, &BucketView::new(bucket, record)))
            }
            (Method::GET, ["v1", "buckets", bucket, "snapshots"]) => {
                Ok(reply(StatusCode::OK, &engine.list_snapshots(bucket).await?))
            }
            (Method::POST, ["v1", "buckets", bucket, "snapshots"]) => {
                let req: CreateSnapshot = parse(body)?;
                Ok(reply(StatusCode::CREATED, &engine.create_snapshot(bucket, req.name.as_deref()).await?))
            }
            (Method::DELETE, ["v1", "buckets", bucket, "snapshots", name]) => {
                engine.delete_snapshot(bucket, name).await?;
                Ok(reply(StatusCode::OK, &json!({ "deleted": format!("{bucket}@{name}") })))
            }
            (Method::POST, ["v1", "buckets", bucket, "forks"]) => {
                let req: CreateFork = parse(body)?;
                if let Some(owner) = &req.owner {
                    engine.access_key(owner).await?;
                }
                let record =
                    engine.fork_bucket(bucket, req.snapshot.as_deref(), &req.name, req.owner.as_deref()).await?;
                Ok(reply(StatusCode::CREATED, &BucketView::new(&req.name, record)))
            }
            (Method::POST, ["v1", "buckets", bucket, "objects"]) => {
                let req: ListObjects = parse(body)?;
                let list = meridian_engine::ListRequest {
                    prefix: req.prefix,
                    after: req.after,
                    max_keys: meridian_engine::MAX_LIST_KEYS,
                    ..Default::default()
                };
                let page = match &req.snapshot {
                    Some(name) => engine.list_objects_in_snapshot(bucket, name, &list).await?,
                    None => engine.list_objects(bucket, &list).await?,
                };
                let objects: Vec<ObjectView> = page
                    .objects
                    .into_iter()
                    .map(|o| ObjectView {
                        size: o.record.size,
                        etag: o.record.etag.clone(),
                        modified_ms: o.record.modified_ms,
                        version_id: o.record.version.as_ref().map(|v| v.id().to_string()),
                        key: o.key,
                    })
                    .collect();
                let next = page.is_truncated.then_some(page.next_after);
                Ok(reply(StatusCode::OK, &json!({ "objects": objects, "next_after": next.flatten() })))
            }
            (Method::PUT, ["v1", "buckets", bucket, "shadow"]) => {
                let source: ShadowSource = parse(body)?;
                let record = engine.set_shadow(bucket, source).await?;
                Ok(reply(StatusCode::OK, &BucketView::new(bucket, record)))
            }
            (Method::DELETE, ["v1", "buckets", bucket, "shadow"]) => {
                let record = engine.remove_shadow(bucket).await?;
                Ok(reply(StatusCode::OK, &BucketView::new(bucket, record)))
            }
            (Method::GET, ["v1", "sites"]) => Ok(reply(StatusCode::OK, &engine.list_sites().await?)),
            (Method::GET, ["v1", "sites", name]) => Ok(reply(StatusCode::OK, &engine.site(name).await?)),
            (Method::PUT, ["v1", "sites", name]) => {
                let mut site: SiteRecord = parse(body)?;
                if !site.name.is_empty() && site.name != *name {
                    return Err(ApiError::bad_request(format!(
                        "the body names site {:?} but the URL names {name:?}",
                        site.name
                    )));
                }
                site.name = name.to_string();
                engine.put_site(site.clone()).await?;
                Ok(reply(StatusCode::OK, &site))
            }
            (Method::DELETE, ["v1", "sites", name]) => {
                engine.delete_site(name).await?;
                Ok(reply(StatusCode::OK, &json!({ "deleted": name })))
            }
            _ => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("no admin endpoint {method} /{}", segments.join("/")),
            )),
        }
    }
}

/// A response with `metrics` in the format `accept` asks for (see
/// [`meridian_metrics::Metrics::encode_for`]).
pub fn metrics_response(metrics: &meridian_metrics::Metrics, accept: Option<&str>) -> Reply {
    let (body, content_type) = metrics.encode_for(accept);
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    resp
}

/// The operation noted for a request (a metric label, so a fixed set: never a path segment a
/// client chose).
fn operation_name(path: &str) -> &'static str {
    let mut segments = path.trim_matches('/').split('/');
    match (segments.next(), segments.next()) {
        (Some("health"), None) => "admin.health",
        (Some("metrics"), None) => "admin.metrics",
        (Some("v1"), Some("keys")) => "admin.keys",
        (Some("v1"), Some("buckets")) => "admin.buckets",
        (Some("v1"), Some("cluster")) => "admin.cluster",
        _ => "admin.other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_engine::MetaError;

    fn status_and_code(e: EngineError) -> (StatusCode, &'static str) {
        let e = ApiError::from(e);
        (e.status, e.code)
    }

    #[test]
    fn errors_that_were_internal_get_the_status_of_their_kind() {
        // All of these answered 500 InternalError before errors had kinds.
        assert_eq!(status_and_code(EngineError::PreconditionFailed), (StatusCode::CONFLICT, "Conflict"));
        assert_eq!(status_and_code(EngineError::Contended), (StatusCode::SERVICE_UNAVAILABLE, "Contended"));
        assert_eq!(status_and_code(EngineError::AccessDenied("no".into())), (StatusCode::FORBIDDEN, "AccessDenied"));
        assert_eq!(status_and_code(EngineError::InvalidKey("k".into())), (StatusCode::BAD_REQUEST, "InvalidArgument"));
        assert_eq!(
            status_and_code(EngineError::Meta(MetaError::Unavailable("no quorum".into()))),
            (StatusCode::SERVICE_UNAVAILABLE, "Unavailable")
        );
        assert_eq!(
            status_and_code(EngineError::Corrupt("bad record".into())),
            (StatusCode::INTERNAL_SERVER_ERROR, "InternalError")
        );
    }

    #[test]
    fn specific_codes_are_kept() {
        assert_eq!(status_and_code(EngineError::NoSuchAccessKey("k".into())), (StatusCode::NOT_FOUND, "NoSuchKey"));
        assert_eq!(status_and_code(EngineError::NoSuchBucket), (StatusCode::NOT_FOUND, "NoSuchBucket"));
        assert_eq!(status_and_code(EngineError::AccessKeyExists("k".into())), (StatusCode::CONFLICT, "KeyExists"));
        assert_eq!(status_and_code(EngineError::BucketAlreadyExists), (StatusCode::CONFLICT, "BucketExists"));
        assert_eq!(status_and_code(EngineError::BucketNotEmpty), (StatusCode::CONFLICT, "BucketNotEmpty"));
        assert_eq!(status_and_code(EngineError::NoSuchNode("n".into())), (StatusCode::NOT_FOUND, "NoSuchNode"));
        assert_eq!(
            status_and_code(EngineError::NodeIsLive { id: "n".into(), heartbeat_age_ms: 1 }),
            (StatusCode::CONFLICT, "NodeIsLive")
        );
        assert_eq!(
            status_and_code(EngineError::InvalidBucketName("B".into())),
            (StatusCode::BAD_REQUEST, "InvalidArgument")
        );
    }
}
