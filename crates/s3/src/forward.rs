//! Forwarding requests that belong to another region: writes (and strong reads) of a bucket
//! pinned to a region are sent, unchanged, to a healthy node of that region. The request keeps
//! its Host header and signature, so the target verifies it exactly as the client sent it.

use std::time::Duration;

use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use meridian_engine::Engine;
use meridian_engine::record::Location;
use meridian_http::{ClientTls, RequestBody};

use meridian_common::bucket_address;

use crate::context::{BucketView, Forwarding};

/// Set on a forwarded request (the forwarding node's id), so it is never forwarded again.
pub const FORWARDED_HEADER: &str = "x-meridian-forwarded-by";
/// Set on the response: the region that served a forwarded request.
pub const FORWARDED_TO_HEADER: &str = "x-meridian-forwarded-to";

/// How long a forwarded request may take until the target's response headers arrive (the
/// upload of a large body included).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(300);

/// Where a request is served.
pub enum Route {
    /// By this node; `bucket`: the record read to decide, if one was.
    Here { forwarding: Forwarding, bucket: Option<BucketView> },
    /// By a node of another region.
    There { region: String, base_url: String },
    /// By a region with no reachable node: this answer.
    Unreachable(Response<s3s::Body>),
}

impl Route {
    fn here() -> Route {
        Route::Here { forwarding: Forwarding::NotConsidered, bucket: None }
    }
}

/// Plain reads are served here whatever the bucket's type: decided before any metadata read.
fn may_change_or_read_strongly<B>(req: &Request<B>) -> bool {
    let strong_read = req
        .headers()
        .get(crate::kv::CONSISTENCY_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("strong"));
    strong_read || !matches!(*req.method(), Method::GET | Method::HEAD)
}

#[derive(Clone)]
pub struct Forwarder {
    engine: Engine,
    domain: Option<String>,
    client: Client<meridian_http::client::Connector, RequestBody>,
}

impl Forwarder {
    /// `tls`: whom to trust when the target node's URL is `https://`.
    pub fn new(engine: Engine, domain: Option<String>, tls: &ClientTls) -> Self {
        let connector = meridian_http::client::connector(tls, Duration::from_secs(5), false);
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(60)).build(connector);
        Forwarder { engine, domain, client }
    }

    /// The bucket a request addresses, if any.
    fn bucket_of<B>(&self, req: &Request<B>) -> Option<String> {
        let host = req.headers().get(http::header::HOST).and_then(|h| h.to_str().ok());
        bucket_address::parse(host, req.uri().path(), self.domain.as_deref()).ok()?.bucket
    }

    /// Where `req` is served. Deciding may read the bucket's record; a request served here
    /// keeps it, for the access check and the operation.
    pub async fn route<B>(&self, req: &Request<B>) -> Route {
        if let Some(by) = req.headers().get(FORWARDED_HEADER) {
            let by = by.to_str().unwrap_or("(not UTF-8)").to_string();
            return Route::Here { forwarding: Forwarding::ForwardedBy(by), bucket: None };
        }
        if req.uri().path().starts_with("/_meridian/") || !may_change_or_read_strongly(req) {
            return Route::here();
        }
        let Some(name) = self.bucket_of(req) else { return Route::here() };
        // A missing bucket or a failed read: served here, where the operation reports it.
        let Ok((record, revision)) = self.engine.bucket_for_access(&name).await else { return Route::here() };
        let region = match &record.location {
            Location::Pinned { region } if *region != self.engine.config().node.region => region.clone(),
            _ => {
                let bucket = BucketView { name, record, revision };
                return Route::Here { forwarding: Forwarding::ServedHere, bucket: Some(bucket) };
            }
        };
        let nodes = self.engine.nodes().await.unwrap_or_default();
        match nodes.into_iter().find(|n| n.healthy && n.record.region == region) {
            Some(n) => Route::There { region, base_url: n.record.advertise_url },
            None => Route::Unreachable(unavailable(&format!(
                "bucket {name:?} is pinned to region {region}, which has no reachable node; the request was not applied"
            ))),
        }
    }

    /// Sends the request to `base_url` and streams the answer back.
    pub async fn forward(&self, req: Request<RequestBody>, region: &str, base_url: &str) -> Response<s3s::Body> {
        let (mut parts, body) = req.into_parts();
        let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let uri = match format!("{}{}", base_url.trim_end_matches('/'), path).parse::<http::Uri>() {
            Ok(uri) => uri,
            Err(_) => return unavailable(&format!("cannot forward to {base_url}: invalid URL")),
        };
        parts.uri = uri;
        let node =
            HeaderValue::from_str(&self.engine.config().node.node).unwrap_or(HeaderValue::from_static("unknown"));
        parts.headers.insert(FORWARDED_HEADER, node);
        let sent = tokio::time::timeout(FORWARD_TIMEOUT, self.client.request(Request::from_parts(parts, body))).await;
        let Ok(sent) = sent else {
            return unavailable(&format!(
                "region {region} ({base_url}) did not answer within {}s; the request may have been applied",
                FORWARD_TIMEOUT.as_secs()
            ));
        };
        match sent {
            Ok(resp) => {
                let (mut parts, body) = resp.into_parts();
                if let Ok(v) = HeaderValue::from_str(region) {
                    parts.headers.insert(FORWARDED_TO_HEADER, v);
                }
                Response::from_parts(parts, s3s::Body::http_body(body))
            }
            Err(err) => unavailable(&format!(
                "forwarding to region {region} ({base_url}) failed: {err}; the request may not have been applied"
            )),
        }
    }
}

fn unavailable(message: &str) -> Response<s3s::Body> {
    let xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>ServiceUnavailable</Code><Message>{}</Message></Error>",
        message.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
    );
    let mut resp = Response::new(s3s::Body::from(xml));
    *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    resp.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/xml"));
    resp
}
