//! Forwarding requests that belong to another region: writes (and strong reads) of a bucket
//! pinned to a region are sent, unchanged, to a healthy node of that region. The request keeps
//! its Host header and signature, so the target verifies it exactly as the client sent it.
//!
//! A forwarded request is served where it arrives (never forwarded again) only when it carries
//! a valid proof that a node of the cluster sent it ([`FORWARD_PROOF_HEADER`]): an HMAC-SHA256,
//! keyed with the cluster token, over the method, path and query, the forwarding node's id and
//! a timestamp at most [`MAX_PROOF_SKEW_SECS`] away from the receiver's clock. A request with
//! an invalid proof is refused; a client's `x-meridian-forwarded-by` is ignored (the request
//! is routed like any other, and forwarded with that header unchanged, so its signature holds).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use meridian_engine::Engine;
use meridian_engine::record::Location;
use meridian_http::{ClientTls, RequestBody};
use sha2::Sha256;

use meridian_common::bucket_address;

use crate::context::{BucketView, Client as RequestClient, Forwarding};

/// Set on a forwarded request that has none (the forwarding node's id), for the logs; it
/// proves nothing.
pub const FORWARDED_HEADER: &str = "x-meridian-forwarded-by";
/// Set on a forwarded request: `UNIX_SECONDS:HEX_HMAC:NODE_ID`, proving that node of the
/// cluster sent it, so it is served where it arrives and never forwarded again.
pub const FORWARD_PROOF_HEADER: &str = "x-meridian-forward-proof";
/// How far a proof's timestamp may be from the receiver's clock (either way).
pub const MAX_PROOF_SKEW_SECS: u64 = 300;
/// Set on a forwarded request by the forwarding node: `IP` or `IP;tls`, the client's address
/// and transport as that node saw them, for bucket policy conditions (aws:SourceIp,
/// aws:SecureTransport). Trusted only on a request with a valid proof.
pub const FORWARDED_CLIENT_HEADER: &str = "x-meridian-forwarded-client";
/// Set on the response: the region that served a forwarded request.
pub const FORWARDED_TO_HEADER: &str = "x-meridian-forwarded-to";

/// How long a forwarded request may take until the target's response headers arrive (the
/// upload of a large body included).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(300);

/// Where a request is served.
pub enum Route {
    /// By this node; `bucket`: the record read to decide, if one was.
    Here { forwarding: Forwarding, bucket: Option<Box<BucketView>> },
    /// By a node of another region: the first of these `(region, base URL)` that answers
    /// (later ones are tried only for reads, which carry no body).
    There { targets: Vec<(String, String)> },
    /// By a region with no reachable node: this answer.
    Unreachable(Response<s3s::Body>),
    /// Not at all (a forged or stale forwarding proof): this answer.
    Refused(Response<s3s::Body>),
}

impl Route {
    fn here() -> Route {
        Route::Here { forwarding: Forwarding::NotConsidered, bucket: None }
    }
}

/// Whether a request for a bucket pinned to another region goes there: writes and strong
/// reads (plain reads are served here, through the cache).
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
    /// The cluster token: the key of forwarding proofs.
    token: String,
}

impl Forwarder {
    /// `tls`: whom to trust when the target node's URL is `https://`; `token`: the cluster
    /// token, which proves forwarded requests (an empty one proves nothing).
    pub fn new(engine: Engine, domain: Option<String>, tls: &ClientTls, token: &str) -> Self {
        let connector = meridian_http::client::connector(tls, Duration::from_secs(5), false);
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(60)).build(connector);
        Forwarder { engine, domain, client, token: token.to_string() }
    }

    /// `None` when `req` carries no forwarding proof; else the forwarding node's id if the
    /// proof holds, or the refusal to answer if it does not.
    fn proven_forwarder<B>(&self, req: &Request<B>) -> Option<Result<String, Response<s3s::Body>>> {
        let proof = req.headers().get(FORWARD_PROOF_HEADER)?;
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let node = proof.to_str().ok().and_then(|p| verify_proof(&self.token, req.method(), path, p, unix_now()));
        Some(node.ok_or_else(|| {
            error_response(
                StatusCode::FORBIDDEN,
                "AccessDenied",
                &format!(
                    "invalid {FORWARD_PROOF_HEADER}: only nodes of this cluster send it, with the same cluster token and clocks within {MAX_PROOF_SKEW_SECS} s of each other"
                ),
            )
        }))
    }

    /// The client a proven forwarder reported ([`FORWARDED_CLIENT_HEADER`]).
    pub fn forwarded_client<B>(req: &Request<B>) -> Option<RequestClient> {
        let value = req.headers().get(FORWARDED_CLIENT_HEADER)?.to_str().ok()?;
        let (ip, secure) = match value.strip_suffix(";tls") {
            Some(ip) => (ip, true),
            None => (value, false),
        };
        Some(RequestClient { ip: ip.parse().ok()?, secure })
    }

    /// Tells the node a request is forwarded to who the client is (replacing whatever the
    /// client sent in that header).
    pub fn report_client<B>(req: &mut Request<B>, client: RequestClient) {
        let value = format!("{}{}", client.ip, if client.secure { ";tls" } else { "" });
        if let Ok(value) = HeaderValue::from_str(&value) {
            req.headers_mut().insert(FORWARDED_CLIENT_HEADER, value);
        }
    }

    /// The bucket a request addresses, if any.
    fn bucket_of<B>(&self, req: &Request<B>) -> Option<String> {
        let host = req.headers().get(http::header::HOST).and_then(|h| h.to_str().ok());
        bucket_address::parse(host, req.uri().path(), self.domain.as_deref()).ok()?.bucket
    }

    /// Where `req` is served. Deciding may read the bucket's record; a request served here
    /// keeps it, for the access check and the operation.
    pub async fn route<B>(&self, req: &Request<B>) -> Route {
        match self.proven_forwarder(req) {
            Some(Ok(by)) => return Route::Here { forwarding: Forwarding::ForwardedBy(by), bucket: None },
            Some(Err(refused)) => return Route::Refused(refused),
            None => {}
        }
        if req.uri().path().starts_with("/_meridian/") {
            return Route::here();
        }
        let Some(name) = self.bucket_of(req) else { return Route::here() };
        // A missing bucket or a failed read: served here, where the operation reports it.
        let Ok((record, revision)) = self.engine.bucket_for_access(&name).await else { return Route::here() };
        let here = &self.engine.config().node.region;
        let regions = match &record.location {
            Location::Pinned { region } if region != here && may_change_or_read_strongly(req) => vec![region.clone()],
            // Every request: the bucket's bytes must not be cached outside its regions either.
            Location::MultiRegion { regions, .. } if !regions.contains(here) => regions.clone(),
            _ => {
                let bucket = BucketView { name, record, revision };
                return Route::Here { forwarding: Forwarding::ServedHere, bucket: Some(Box::new(bucket)) };
            }
        };
        // A multi-region bucket's request goes to the first listed region with a live node.
        let nodes = self.engine.nodes().await.unwrap_or_default();
        let targets: Vec<(String, String)> = regions
            .iter()
            .filter_map(|r| nodes.iter().find(|n| n.healthy && n.record.region == *r))
            .map(|n| (n.record.region.clone(), n.record.advertise_url.clone()))
            .collect();
        match targets.is_empty() {
            false => Route::There { targets },
            true => Route::Unreachable(unavailable(&format!(
                "bucket {name:?} is kept in region(s) {}, which have no reachable node; the request was not applied",
                regions.join(",")
            ))),
        }
    }

    /// Sends the request to the first of `targets` (region, base URL) and streams the answer
    /// back. A GET or HEAD whose target cannot be reached (a node that died and is not yet
    /// known down) is sent to the next one.
    pub async fn forward(&self, req: Request<RequestBody>, targets: &[(String, String)]) -> Response<s3s::Body> {
        let bodiless = matches!(*req.method(), Method::GET | Method::HEAD);
        let (parts, body) = req.into_parts();
        let mut body = Some(body);
        let mut failed = None;
        for (i, (region, base_url)) in targets.iter().enumerate() {
            let may_retry = bodiless && i + 1 < targets.len();
            let mut copy = Request::new(if may_retry {
                RequestBody::empty()
            } else {
                body.take().unwrap_or_else(RequestBody::empty)
            });
            *copy.method_mut() = parts.method.clone();
            *copy.uri_mut() = parts.uri.clone();
            *copy.version_mut() = parts.version;
            *copy.headers_mut() = parts.headers.clone();
            match self.forward_one(copy, region, base_url).await {
                Ok(resp) => return resp,
                Err(unreachable) if may_retry => failed = Some(unreachable),
                Err(unreachable) => return unreachable,
            }
        }
        failed.unwrap_or_else(|| unavailable("no region to forward to"))
    }

    /// Sends the request to `base_url`: its answer, or (`Err`) the 503 of a request that got
    /// none.
    async fn forward_one(
        &self,
        req: Request<RequestBody>,
        region: &str,
        base_url: &str,
    ) -> Result<Response<s3s::Body>, Response<s3s::Body>> {
        let (mut parts, body) = req.into_parts();
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        let uri = match format!("{}{}", base_url.trim_end_matches('/'), path).parse::<http::Uri>() {
            Ok(uri) => uri,
            Err(_) => return Ok(unavailable(&format!("cannot forward to {base_url}: invalid URL"))),
        };
        parts.uri = uri;
        let node = &self.engine.config().node.node;
        let proof = prove(&self.token, &parts.method, &path, node, unix_now());
        match (HeaderValue::from_str(node), HeaderValue::from_str(&proof)) {
            (Ok(node), Ok(proof)) => {
                parts.headers.entry(FORWARDED_HEADER).or_insert(node);
                parts.headers.insert(FORWARD_PROOF_HEADER, proof);
            }
            _ => {
                return Ok(unavailable(&format!(
                    "cannot forward to region {region}: this node's id {node:?} is not a valid header value"
                )));
            }
        }
        let sent = tokio::time::timeout(FORWARD_TIMEOUT, self.client.request(Request::from_parts(parts, body))).await;
        let Ok(sent) = sent else {
            return Ok(unavailable(&format!(
                "region {region} ({base_url}) did not answer within {}s; the request may have been applied",
                FORWARD_TIMEOUT.as_secs()
            )));
        };
        match sent {
            Ok(resp) => {
                let (mut parts, body) = resp.into_parts();
                if let Ok(v) = HeaderValue::from_str(region) {
                    parts.headers.insert(FORWARDED_TO_HEADER, v);
                }
                Ok(Response::from_parts(parts, s3s::Body::http_body(body)))
            }
            Err(err) => Err(unavailable(&format!(
                "forwarding to region {region} ({base_url}) failed: {err}; the request may not have been applied"
            ))),
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The keyed MAC of a forwarded request; `None` when there is no token to key it with.
fn proof_mac(token: &str, method: &Method, path: &str, node: &str, unix_secs: u64) -> Option<Hmac<Sha256>> {
    if token.is_empty() {
        return None;
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(token.as_bytes()).ok()?;
    // Header values hold no newline, so the fields cannot run into each other.
    mac.update(format!("{method}\n{path}\n{node}\n{unix_secs}").as_bytes());
    Some(mac)
}

/// The proof a forwarding node sends: `UNIX_SECONDS:HEX_HMAC:NODE_ID`.
fn prove(token: &str, method: &Method, path: &str, node: &str, unix_secs: u64) -> String {
    let mac = proof_mac(token, method, path, node, unix_secs).map(|m| hex::encode(m.finalize().into_bytes()));
    format!("{unix_secs}:{}:{node}", mac.unwrap_or_default())
}

/// The forwarding node's id if `proof` was made with `token` for this request, within
/// [`MAX_PROOF_SKEW_SECS`] of `now` (the MAC compared in constant time).
fn verify_proof(token: &str, method: &Method, path: &str, proof: &str, now: u64) -> Option<String> {
    let mut fields = proof.splitn(3, ':');
    let (secs, mac_hex, node) = (fields.next()?, fields.next()?, fields.next()?);
    let (secs, given) = (secs.parse::<u64>().ok()?, hex::decode(mac_hex).ok()?);
    if secs.abs_diff(now) > MAX_PROOF_SKEW_SECS {
        return None;
    }
    let mac = proof_mac(token, method, path, node, secs)?;
    mac.verify_slice(&given).ok().map(|()| node.to_string())
}

fn unavailable(message: &str) -> Response<s3s::Body> {
    error_response(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", message)
}

/// An S3 error document.
pub(crate) fn error_response(status: StatusCode, code: &str, message: &str) -> Response<s3s::Body> {
    let xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>{}</Message></Error>",
        message.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
    );
    let mut resp = Response::new(s3s::Body::from(xml));
    *resp.status_mut() = status;
    resp.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/xml"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;
    const PATH: &str = "/b/k?x=1";

    fn proof() -> String {
        prove("token", &Method::PUT, PATH, "node:a", NOW)
    }

    #[test]
    fn a_proof_holds_for_its_request_only() {
        assert_eq!(verify_proof("token", &Method::PUT, PATH, &proof(), NOW + 10).as_deref(), Some("node:a"));
        assert_eq!(verify_proof("other", &Method::PUT, PATH, &proof(), NOW), None);
        assert_eq!(verify_proof("token", &Method::POST, PATH, &proof(), NOW), None);
        assert_eq!(verify_proof("token", &Method::PUT, "/b/k?x=2", &proof(), NOW), None);
        let other_node = proof().replace("node:a", "node:b");
        assert_eq!(verify_proof("token", &Method::PUT, PATH, &other_node, NOW), None);
    }

    #[test]
    fn stale_forged_and_tokenless_proofs_fail() {
        let skew = MAX_PROOF_SKEW_SECS + 1;
        assert_eq!(verify_proof("token", &Method::PUT, PATH, &proof(), NOW + skew), None);
        assert_eq!(verify_proof("token", &Method::PUT, PATH, &proof(), NOW - skew), None);
        let zeros = format!("{NOW}:{}:node-a", "00".repeat(32));
        for forged in ["", "node-a", "1800000000:node-a", "1800000000::node-a", "x:00:node-a", &zeros] {
            assert_eq!(verify_proof("token", &Method::PUT, PATH, forged, NOW), None, "{forged}");
        }
        let tokenless = prove("", &Method::PUT, PATH, "node-a", NOW);
        assert_eq!(verify_proof("", &Method::PUT, PATH, &tokenless, NOW), None);
    }
}
