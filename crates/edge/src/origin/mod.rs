//! Origin fall-through: a site with an origin sends what the bucket does not have (and every
//! request that is not a GET or HEAD) to its origin app through
//! [`meridian_edge_origin::OriginProxy`] (forwarding, fly-replay). A GET answer marked
//! `x-meridian-store: ttl=...` is written back into the bucket while it streams
//! ([`writeback`]); concurrent misses on one key send one origin request ([`flight`]).

pub mod flight;
pub mod revision;
pub mod vary;
pub mod writeback;

use std::collections::{BTreeMap, HashMap};

use http::{Method, Request, Response, StatusCode};
use meridian_edge_origin::{OriginProxy, ProxyConfig, Region, Topology};
use meridian_engine::Engine;
use meridian_http::{ClientTls, RequestBody, RequestInfo, ResponseBody};
use serde::{Deserialize, Serialize};

use crate::EdgeError;
use crate::sites::Target;
use flight::{Flight, FlightGuard, Flights};
use writeback::StoreAt;

/// A site's origin app: its instances per region and the other regions' edges
/// (`[[origin]]` tables of the configuration file).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SiteOrigin {
    /// The site (by name) whose misses go to this origin.
    pub site: String,
    #[serde(rename = "region")]
    pub regions: Vec<Region>,
    /// Pin a session (cookie `meridian-region`) to the region of its last write replayed
    /// there, for this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin_seconds: Option<u64>,
    /// How long a session's read waits for this node's view to reach the revision of its last
    /// write ([`revision`]) before going to the writer's region; 2000 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision_wait_ms: Option<u64>,
}

/// The origin proxies of the sites that have one, and the flights of their misses.
pub struct Origins {
    by_site: HashMap<String, (OriginProxy, std::time::Duration)>,
    flights: Flights,
}

impl Origins {
    /// Checks every site origin against this node's `region`. Without a cluster token no
    /// request is ever taken for another region's edge.
    pub fn new(origins: &[SiteOrigin], region: &str, peer_token: Option<&str>) -> Result<Origins, EdgeError> {
        let tls = ClientTls::from_env().map_err(|e| EdgeError::Origin { site: String::new(), why: e.to_string() })?;
        let mut by_site = HashMap::new();
        for origin in origins {
            let invalid = |why: String| EdgeError::Origin { site: origin.site.clone(), why };
            let topology = Topology::new(region, origin.regions.clone()).map_err(|e| invalid(e.to_string()))?;
            let replays_elsewhere = topology.regions.iter().any(|r| r.name != region && r.edge.is_some());
            if replays_elsewhere && peer_token.is_none() {
                // Edges prove a replay to each other with the cluster token.
                return Err(invalid("replays to other regions' edges need the cluster token (--cluster-token)".into()));
            }
            let mut config = ProxyConfig::new(topology, peer_token.unwrap_or_default().to_string());
            config.pin = origin.pin_seconds.map(std::time::Duration::from_secs);
            let wait = origin.revision_wait_ms.map_or(revision::DEFAULT_WAIT, std::time::Duration::from_millis);
            if wait > revision::MAX_WAIT {
                return Err(invalid(format!("revision_wait_ms is at most {}", revision::MAX_WAIT.as_millis())));
            }
            if by_site.insert(origin.site.clone(), (OriginProxy::new(config, &tls), wait)).is_some() {
                return Err(invalid("the site has two origins".into()));
            }
        }
        Ok(Origins { by_site, flights: Flights::default() })
    }

    /// The origin of `site`, if it has one.
    pub fn proxy(&self, site: Option<&str>) -> Option<&OriginProxy> {
        self.by_site.get(site?).map(|(proxy, _)| proxy)
    }

    /// How long a read of `site` is held for its session's last write ([`revision`]).
    pub fn revision_wait(&self, site: Option<&str>) -> std::time::Duration {
        site.and_then(|s| self.by_site.get(s)).map_or(revision::DEFAULT_WAIT, |(_, wait)| *wait)
    }
}

/// The origin's answer for a GET or HEAD the bucket had no object for. A storable answer to a
/// GET (`x-meridian-store`, status 200, a key rather than a "directory") is written back under
/// the requested key, or under its variant when it has a `Vary`; `guard` (this request leads
/// the key's flight) is released when that write ends.
pub async fn fall_through(
    engine: &Engine,
    proxy: &OriginProxy,
    target: &Target,
    req: Request<RequestBody>,
    info: &RequestInfo,
    guard: Option<FlightGuard>,
) -> Response<ResponseBody> {
    let storable = req.method() == Method::GET && stored_key(target).is_some();
    let request_headers = req.headers().clone();
    let resp = proxy.handle(req, info.peer, info.secure).await;
    let Some(key) = stored_key(target).filter(|_| storable) else { return resp };
    let ttl = match writeback::store_ttl(resp.headers()) {
        Some(Ok(ttl)) if resp.status() == StatusCode::OK => ttl,
        Some(Err(why)) => {
            tracing::warn!(bucket = %target.bucket, key = %key, why = %why, "origin asked for an invalid write-back");
            return resp;
        }
        _ => return resp,
    };
    let key = match vary::vary_names(resp.headers()) {
        None => key,
        Some(Ok(names)) => {
            store_marker(engine, &target.bucket, &key, &names, ttl).await;
            vary::variant_key(&key, &names, &request_headers)
        }
        Some(Err(why)) => {
            tracing::debug!(bucket = %target.bucket, key = %key, why = %why, "answer not stored");
            return resp;
        }
    };
    let metadata = derived_metadata(engine, &target.bucket, resp.headers()).await;
    let at = StoreAt { engine: engine.clone(), bucket: target.bucket.clone(), key, ttl, metadata, guard };
    writeback::tee(resp, at)
}

/// Records which headers `key` varies on (for as long as its variants may live).
async fn store_marker(engine: &Engine, bucket: &str, key: &str, names: &[String], ttl: std::time::Duration) {
    let expires_at_ms = i64::try_from(ttl.as_millis()).ok().map(|t| meridian_engine::now_ms().saturating_add(t));
    let req = meridian_engine::PutRequest {
        bucket: bucket.to_string(),
        key: vary::marker_key(key),
        body: meridian_engine::body_from_bytes(names.join(",")),
        headers: Default::default(),
        integrity: Default::default(),
        conditions: Default::default(),
        expires_at_ms,
    };
    if let Err(err) = engine.put_object(req).await {
        tracing::warn!(bucket, key, error = %err, "cannot record the headers an answer varies on");
    }
}

/// The user metadata tying a derived answer to its source's current version.
async fn derived_metadata(engine: &Engine, bucket: &str, answer: &http::HeaderMap) -> BTreeMap<String, String> {
    let mut metadata = BTreeMap::new();
    let Some(source) = answer.get(vary::DERIVED_FROM).and_then(|v| v.to_str().ok()) else { return metadata };
    let source = source.trim_start_matches('/');
    if meridian_engine::validate_key(source).is_err() {
        return metadata;
    }
    metadata.insert(vary::META_SOURCE.to_string(), source.to_string());
    // A source that does not exist (yet) gets an ETag no object has: the variant is stale as
    // soon as the source appears.
    let etag = vary::source_etag(engine, bucket, source).await.unwrap_or_default();
    metadata.insert(vary::META_SOURCE_ETAG.to_string(), etag);
    metadata
}

/// The current variant of `target` for this request, when its key varies and the variant
/// is stored and its source unchanged: the target naming it, and the headers it varies on.
pub async fn current_variant(
    engine: &Engine,
    target: &Target,
    request: &http::HeaderMap,
) -> Option<(Target, Vec<String>)> {
    let key = stored_key(target)?;
    let names = vary::stored_names(engine, &target.bucket, &key).await?;
    let rest = vary::variant_key(&target.rest, &names, request);
    let variant = format!("{}{rest}", target.key_prefix);
    if !vary::is_current(engine, &target.bucket, &variant).await {
        return None;
    }
    Some((Target { rest, index: None, website: None, ..target.clone() }, names))
}

/// The key a GET of `target` stores the origin's answer under; none for a "directory".
pub fn stored_key(target: &Target) -> Option<String> {
    let directory = target.rest.is_empty() || target.rest.ends_with('/');
    (!directory).then(|| format!("{}{}", target.key_prefix, target.rest))
}

/// This request's part in the flight of `target`'s key.
pub fn join_flight(origins: &Origins, target: &Target) -> Option<Flight> {
    stored_key(target).map(|key| origins.flights.join(format!("{}/{key}", target.bucket)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_edge_origin::Instance;

    fn origin(revision_wait_ms: Option<u64>) -> SiteOrigin {
        let instance = Instance { id: "app-1".into(), url: "http://127.0.0.1:3000".into() };
        SiteOrigin {
            site: "app".into(),
            regions: vec![Region { name: "ams".into(), edge: None, instances: vec![instance] }],
            pin_seconds: None,
            revision_wait_ms,
        }
    }

    #[test]
    fn the_revision_wait_defaults_to_two_seconds_and_is_bounded() {
        let origins = Origins::new(&[origin(None)], "ams", None).expect("valid");
        assert_eq!(origins.revision_wait(Some("app")), revision::DEFAULT_WAIT);
        let origins = Origins::new(&[origin(Some(250))], "ams", None).expect("valid");
        assert_eq!(origins.revision_wait(Some("app")), std::time::Duration::from_millis(250));
        let refused = Origins::new(&[origin(Some(30_001))], "ams", None).err().map(|e| e.to_string());
        assert!(refused.is_some_and(|e| e.contains("revision_wait_ms is at most 30000")));
    }
}
