//! The S3 listener's handler for the shared serving layer ([`meridian_http`]): requests that
//! belong to another region are forwarded, the rest go through s3s (SigV4, routing) to
//! [`crate::MeridianS3`].

use http::{Method, Request, Response, StatusCode};
use meridian_http::{RequestBody, RequestInfo, ResponseBody};
use s3s::service::S3Service;

use crate::context::{Client, Forwarding, RequestContext, with_key_slot};
use crate::cors::Cors;
use crate::forward::{Forwarder, Route};

/// Serves S3 (and the KV extensions riding on it) for one node.
#[derive(Clone)]
pub struct S3Handler {
    service: S3Service,
    cors: Cors,
    forwarder: Option<Forwarder>,
}

impl S3Handler {
    /// `forwarder`: set on a node of a cluster, where writes to a bucket pinned elsewhere, and
    /// every request for a multi-region bucket outside its regions, are sent there.
    pub fn new(service: S3Service, cors: Cors, forwarder: Option<Forwarder>) -> S3Handler {
        S3Handler { service, cors, forwarder }
    }

    pub async fn handle(&self, req: Request<RequestBody>, info: RequestInfo) -> Response<ResponseBody> {
        if req.method() == Method::OPTIONS {
            info.notes.set_operation("PreflightCors");
            return self.cors.preflight(&req).await.map(meridian_http::boxed);
        }
        let cors = self.cors.actual_request(&req);
        let mut resp = self.serve(req, info).await;
        if let Some(cors) = cors {
            self.cors.decorate(cors, &mut resp).await;
        }
        resp.map(meridian_http::boxed)
    }

    async fn serve(&self, mut req: Request<RequestBody>, info: RequestInfo) -> Response<s3s::Body> {
        let (forwarding, bucket) = match &self.forwarder {
            None => (Forwarding::NotConsidered, None),
            Some(fw) => match fw.route(&req).await {
                Route::Here { forwarding, bucket } => (forwarding, bucket.map(|b| *b)),
                Route::There { targets } => {
                    info.notes.set_operation("forward");
                    Forwarder::report_client(&mut req, Client { ip: info.peer.ip(), secure: info.secure });
                    return fw.forward(req, &targets).await;
                }
                Route::Unreachable(refused) | Route::Refused(refused) => {
                    info.notes.set_operation("forward");
                    return refused;
                }
            },
        };
        let client = match &forwarding {
            Forwarding::ForwardedBy(_) => Forwarder::forwarded_client(&req),
            _ => None,
        };
        req.extensions_mut().insert(RequestContext::arriving(forwarding, bucket).with_client(client));
        // Most requests (GET, HEAD, DELETE) have no body: skip boxing one.
        let req = req.map(|body| {
            if hyper::body::Body::is_end_stream(&body) { s3s::Body::empty() } else { s3s::Body::http_body_unsync(body) }
        });
        let post = req.method() == Method::POST;
        match with_key_slot(self.service.call(req)).await {
            Ok(resp) if post && resp.status() == StatusCode::BAD_REQUEST => {
                as_aws_refuses_policy_conditions(resp).await
            }
            Ok(resp) => without_body_if_not_modified(resp),
            Err(err) => {
                tracing::error!(request_id = %info.id, error = ?err, "S3 request failed inside s3s");
                crate::forward::error_response(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", "internal error")
            }
        }
    }
}

impl meridian_http::Handler for S3Handler {
    async fn handle(&self, req: Request<RequestBody>, info: RequestInfo) -> Response<ResponseBody> {
        S3Handler::handle(self, req, info).await
    }
}

/// s3s refuses a POST (form) upload whose fields break a policy condition with
/// `400 InvalidPolicyDocument`; S3 answers `403 AccessDenied` ("Invalid according to Policy").
async fn as_aws_refuses_policy_conditions(resp: Response<s3s::Body>) -> Response<s3s::Body> {
    use http_body_util::BodyExt;
    let (parts, body) = resp.into_parts();
    let Ok(collected) = body.collect().await else {
        return crate::forward::error_response(StatusCode::BAD_REQUEST, "InvalidRequest", "bad request");
    };
    let bytes = collected.to_bytes();
    let text = String::from_utf8_lossy(&bytes);
    let condition = text
        .split_once("<Code>InvalidPolicyDocument</Code><Message>Policy condition ")
        .and_then(|(_, rest)| rest.split_once("</Message>"))
        .map(|(message, _)| message.to_string());
    match condition {
        Some(failed) => crate::forward::error_response(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            &format!("Invalid according to Policy: Policy Condition failed: {failed}"),
        ),
        None => Response::from_parts(parts, s3s::Body::from(bytes)),
    }
}

/// s3s renders 304 as an XML error; a 304 carries no body.
fn without_body_if_not_modified(mut resp: Response<s3s::Body>) -> Response<s3s::Body> {
    if resp.status() == StatusCode::NOT_MODIFIED {
        *resp.body_mut() = s3s::Body::empty();
        resp.headers_mut().remove(http::header::CONTENT_LENGTH);
        resp.headers_mut().remove(http::header::CONTENT_TYPE);
    }
    resp
}
