//! CORS over HTTP, from the bucket's rules (`meridian_engine::cors`): preflight `OPTIONS`
//! requests are answered here, without authentication, as S3 does; responses to requests that
//! carry an `Origin` get the headers of the first rule allowing that origin and method.

use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use meridian_common::bucket_address;
use meridian_engine::cors::CorsRule;
use meridian_engine::{Engine, EngineError};

use crate::forward::error_response;

const NOT_ALLOWED: &str = "This CORS request is not allowed. This is usually because the evalution of Origin, request method / Access-Control-Request-Method or Access-Control-Request-Headers are not whitelisted by the resource's CORS spec.";

/// Answers preflights and decorates responses from buckets' CORS rules.
#[derive(Clone)]
pub struct Cors {
    engine: Engine,
    /// The virtual-host domain, to find the bucket a request addresses.
    domain: Option<String>,
}

/// What an actual (non-preflight) request needs for its response's CORS headers.
pub struct CorsRequest {
    bucket: String,
    origin: String,
    method: Method,
}

impl Cors {
    pub fn new(engine: Engine, domain: Option<String>) -> Cors {
        Cors { engine, domain }
    }

    fn bucket_of<B>(&self, req: &Request<B>) -> Option<String> {
        let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).or(req.uri().host());
        bucket_address::parse(host, req.uri().path(), self.domain.as_deref()).ok()?.bucket
    }

    /// The answer to a preflight `OPTIONS` request.
    pub async fn preflight<B>(&self, req: &Request<B>) -> Response<s3s::Body> {
        let headers = req.headers();
        let Some(origin) = text(headers, header::ORIGIN) else {
            return bad_request("Insufficient information. Origin request header needed.");
        };
        let Some(method) = text(headers, header::ACCESS_CONTROL_REQUEST_METHOD) else {
            return bad_request("Invalid Access-Control-Request-Method: null");
        };
        let requested: Vec<&str> = text(headers, header::ACCESS_CONTROL_REQUEST_HEADERS)
            .map(|list| list.split(',').map(str::trim).filter(|h| !h.is_empty()).collect())
            .unwrap_or_default();
        let Some(bucket) = self.bucket_of(req) else { return forbidden("CORS is not enabled for this bucket.") };
        let config = match self.engine.cors(&bucket).await {
            Ok(Some(config)) => config,
            Ok(None) => return forbidden("CORS is not enabled for this bucket."),
            Err(EngineError::NoSuchBucket) => {
                return error_response(StatusCode::NOT_FOUND, "NoSuchBucket", "The specified bucket does not exist");
            }
            Err(e) if e.kind() == meridian_engine::ErrorKind::Unavailable => {
                return error_response(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", &e.to_string());
            }
            Err(e) => {
                tracing::error!(error = %e, "reading a bucket's CORS rules failed");
                return error_response(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", "internal error");
            }
        };
        let Some(rule) = config.find(origin, method, &requested) else { return forbidden(NOT_ALLOWED) };
        let mut resp = Response::new(s3s::Body::empty());
        let out = resp.headers_mut();
        allow(out, rule, origin);
        set(out, header::ACCESS_CONTROL_ALLOW_METHODS, &rule.allowed_methods.join(", "));
        if !requested.is_empty() {
            set(out, header::ACCESS_CONTROL_ALLOW_HEADERS, &requested.join(", "));
        }
        if let Some(age) = rule.max_age_seconds {
            set(out, header::ACCESS_CONTROL_MAX_AGE, &age.to_string());
        }
        set(out, header::VARY, "Origin, Access-Control-Request-Headers, Access-Control-Request-Method");
        resp
    }

    /// What [`Cors::decorate`] needs of a request that carries an `Origin`.
    pub fn actual_request<B>(&self, req: &Request<B>) -> Option<CorsRequest> {
        let origin = text(req.headers(), header::ORIGIN)?.to_string();
        Some(CorsRequest { bucket: self.bucket_of(req)?, origin, method: req.method().clone() })
    }

    /// Adds the CORS headers of the bucket's first rule allowing the request's origin and
    /// method (none when no rule does: the browser then withholds the response).
    pub async fn decorate(&self, request: CorsRequest, resp: &mut Response<s3s::Body>) {
        let Ok(Some(config)) = self.engine.cors(&request.bucket).await else { return };
        let Some(rule) = config.find(&request.origin, request.method.as_str(), &[]) else { return };
        let out = resp.headers_mut();
        allow(out, rule, &request.origin);
        if !rule.expose_headers.is_empty() {
            set(out, header::ACCESS_CONTROL_EXPOSE_HEADERS, &rule.expose_headers.join(", "));
        }
        if !rule.any_origin() {
            out.append(header::VARY, HeaderValue::from_static("Origin"));
        }
    }
}

/// `Access-Control-Allow-Origin` (and credentials, unless the rule allows any origin).
fn allow(out: &mut HeaderMap, rule: &CorsRule, origin: &str) {
    if rule.any_origin() {
        out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    } else {
        set(out, header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        out.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
    }
}

fn set(out: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        out.insert(name, value);
    }
}

fn text(headers: &HeaderMap, name: HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty())
}

fn bad_request(message: &str) -> Response<s3s::Body> {
    error_response(StatusCode::BAD_REQUEST, "BadRequest", message)
}

fn forbidden(message: &str) -> Response<s3s::Body> {
    error_response(StatusCode::FORBIDDEN, "CORSResponse", message)
}
