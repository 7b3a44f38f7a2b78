//! Liveness and readiness answers, the same on every listener that serves traffic: the admin
//! port (`/health`, `/ready`) and the S3 port (`/_meridian/health`, `/_meridian/ready`). Open
//! to anyone: they tell whether the node works and why not, never a secret.
//!
//! - Liveness (`health`): 200 while the process serves requests at all. It touches neither the
//!   metadata store nor the disk, so an etcd outage does not get healthy processes restarted.
//! - Readiness (`ready`): 200 when every check of [`meridian_engine::health`] passes, else 503;
//!   the body lists each check with the reason it failed.

use std::sync::Arc;

use http::{Method, StatusCode};
use meridian_engine::health::ReadinessProbe;
use serde_json::json;

use crate::api::Reply;

/// Which of the two endpoints a path names, after the listener's prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    Liveness,
    Readiness,
}

impl Probe {
    /// The probe `path` names under `prefix` (`""` on the admin port, `"/_meridian"` on the S3
    /// port), for GET and HEAD only.
    pub fn from_request(method: &Method, path: &str, prefix: &str) -> Option<Probe> {
        if method != Method::GET && method != Method::HEAD {
            return None;
        }
        match path.strip_prefix(prefix)? {
            "/health" => Some(Probe::Liveness),
            "/ready" => Some(Probe::Readiness),
            _ => None,
        }
    }

    /// The operation name the access log and metrics see.
    pub fn operation(self) -> &'static str {
        match self {
            Probe::Liveness => "health",
            Probe::Readiness => "ready",
        }
    }
}

/// Answers a probe for this node.
pub async fn answer(probe: Probe, readiness: &Arc<ReadinessProbe>) -> Reply {
    let node = &readiness.engine().config().node;
    match probe {
        Probe::Liveness => {
            crate::api::reply(StatusCode::OK, &json!({ "status": "ok", "node": node.node, "region": node.region }))
        }
        Probe::Readiness => {
            let result = readiness.check().await;
            let status = if result.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            let body = json!({
                "status": if result.ready { "ready" } else { "not ready" },
                "ready": result.ready,
                "node": node.node,
                "region": node.region,
                "checks": result.checks,
                "checked_ms": result.checked_ms,
            });
            crate::api::reply(status, &body)
        }
    }
}
