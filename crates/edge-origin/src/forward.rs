//! Sending a request on to an origin instance or another region's edge, and its answer back:
//! hop-by-hop headers dropped both ways, `X-Forwarded-For`/`-Host`/`-Proto` added once (by the
//! edge the client reached), the original path and `Host` kept, bodies streamed.

use std::net::SocketAddr;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use meridian_http::client::Connector;
use meridian_http::{ClientTls, ResponseBody, boxed};

/// Headers that describe one connection, never forwarded (RFC 9110 section 7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Headers only an edge may set: dropped from clients' requests (and from answers to them).
pub const EDGE_ONLY: [&str; 7] =
    ["fly-replay-src", "fly-replay-failed", PEER_TOKEN, PEER_INSTANCE, PEER_HOPS, PEER_SITE, UNDELIVERABLE];

/// The cluster token proving a request comes from another region's edge.
pub const PEER_TOKEN: &str = "x-meridian-replay-token";
/// The instance a peer edge asks for.
pub const PEER_INSTANCE: &str = "x-meridian-replay-instance";
/// The site whose origin a peer edge is asked to deliver to (a replay to another app).
pub const PEER_SITE: &str = "x-meridian-replay-site";
/// How many replays the request has been through.
pub const PEER_HOPS: &str = "x-meridian-replay-hops";
/// On a peer edge's answer: it could not deliver the request to any of its instances.
pub const UNDELIVERABLE: &str = "x-meridian-replay-undeliverable";

/// A request as the edge forwards it (the body travels separately, from the spool).
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub method: Method,
    pub path_and_query: String,
    pub headers: HeaderMap,
}

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("{url} is not a valid URL: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("{url} did not answer: {reason}")]
    Unreachable { url: String, reason: String },
}

/// The HTTP client to origins and peer edges (pooled connections, HTTP/1.1 and HTTP/2).
#[derive(Clone)]
pub struct Forwarder {
    client: Client<Connector, ResponseBody>,
}

impl Forwarder {
    pub fn new(tls: &ClientTls, connect_timeout: Duration) -> Forwarder {
        let connector = meridian_http::client::connector(tls, connect_timeout, true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Forwarder { client }
    }

    /// Sends `out` (plus `extra` headers) with `body` to `base` (`http(s)://host:port`).
    pub async fn send(
        &self,
        base: &str,
        out: &Outgoing,
        extra: HeaderMap,
        body: ResponseBody,
    ) -> Result<Response<Incoming>, ForwardError> {
        let url = format!("{}{}", base.trim_end_matches('/'), out.path_and_query);
        let mut req = Request::builder()
            .method(out.method.clone())
            .uri(&url)
            .body(body)
            .map_err(|e| ForwardError::BadUrl { url: url.clone(), reason: e.to_string() })?;
        *req.headers_mut() = out.headers.clone();
        req.headers_mut().extend(extra);
        self.client
            .request(req)
            .await
            .map_err(|e| ForwardError::Unreachable { url, reason: meridian_common::errors::chain(&e) })
    }
}

/// The headers of a client's request as the edge forwards them: hop-by-hop and edge-only
/// headers dropped, `X-Forwarded-For` extended with the client's address, `X-Forwarded-Host`
/// and `X-Forwarded-Proto` set.
pub fn from_client(headers: &HeaderMap, client: SocketAddr, secure: bool) -> HeaderMap {
    let mut out = without_hop_by_hop(headers);
    for name in EDGE_ONLY {
        out.remove(name);
    }
    let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(earlier) => format!("{earlier}, {}", client.ip()),
        None => client.ip().to_string(),
    };
    insert(&mut out, "x-forwarded-for", &forwarded_for);
    if let Some(host) = headers.get(header::HOST) {
        out.insert(HeaderName::from_static("x-forwarded-host"), host.clone());
    }
    out.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static(if secure { "https" } else { "http" }),
    );
    out
}

/// The headers of a peer edge's request as this edge forwards them to its origin: the
/// forwarding headers are already there; the peer's own headers are dropped.
pub fn from_peer(headers: &HeaderMap) -> HeaderMap {
    let mut out = without_hop_by_hop(headers);
    for name in [PEER_TOKEN, PEER_INSTANCE, PEER_HOPS, PEER_SITE] {
        out.remove(name);
    }
    out
}

fn without_hop_by_hop(headers: &HeaderMap) -> HeaderMap {
    let mut out = headers.clone();
    // Names listed in Connection are hop-by-hop too.
    let listed: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|n| n.trim().to_ascii_lowercase()))
        .collect();
    for name in HOP_BY_HOP.iter().copied().chain(listed.iter().map(String::as_str)) {
        out.remove(name);
    }
    out
}

/// An origin's (or peer edge's) answer as the client gets it.
pub fn to_client(resp: Response<Incoming>) -> Response<ResponseBody> {
    let (mut parts, body) = resp.into_parts();
    parts.headers = without_hop_by_hop(&parts.headers);
    for name in [PEER_TOKEN, PEER_INSTANCE, PEER_HOPS, UNDELIVERABLE] {
        parts.headers.remove(name);
    }
    Response::from_parts(parts, boxed(body))
}

pub(crate) fn insert(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(HeaderName::from_static(name), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_headers_lose_hop_by_hop_and_edge_only_and_gain_forwarding() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("site.example"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-secret-hop"));
        headers.insert("x-secret-hop", HeaderValue::from_static("1"));
        headers.insert("fly-replay-src", HeaderValue::from_static("instance=forged"));
        headers.insert(PEER_TOKEN, HeaderValue::from_static("guess"));
        headers.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        headers.insert("x-app", HeaderValue::from_static("kept"));
        let out = from_client(&headers, "192.0.2.7:5555".parse().expect("addr"), true);
        for gone in ["connection", "x-secret-hop", "fly-replay-src", PEER_TOKEN] {
            assert!(!out.contains_key(gone), "{gone} forwarded");
        }
        assert_eq!(out["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
        assert_eq!(out["x-forwarded-host"], "site.example");
        assert_eq!(out["x-forwarded-proto"], "https");
        assert_eq!(out["host"], "site.example");
        assert_eq!(out["x-app"], "kept");
    }
}
