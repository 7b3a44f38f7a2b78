//! Origin fall-through: a site with an origin sends what the bucket does not have (and every
//! request that is not a GET or HEAD) to its origin app through
//! [`meridian_edge_origin::OriginProxy`] (forwarding, fly-replay). A GET answer marked
//! `x-meridian-store: ttl=...` is written back into the bucket while it streams
//! ([`writeback`]); concurrent misses on one key send one origin request ([`flight`]).

pub mod flight;
pub mod writeback;

use std::collections::HashMap;

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
}

/// The origin proxies of the sites that have one, and the flights of their misses.
pub struct Origins {
    by_site: HashMap<String, OriginProxy>,
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
            let config = ProxyConfig::new(topology, peer_token.unwrap_or_default().to_string());
            if by_site.insert(origin.site.clone(), OriginProxy::new(config, &tls)).is_some() {
                return Err(invalid("the site has two origins".into()));
            }
        }
        Ok(Origins { by_site, flights: Flights::default() })
    }

    /// The origin of `site`, if it has one.
    pub fn proxy(&self, site: Option<&str>) -> Option<&OriginProxy> {
        self.by_site.get(site?)
    }
}

/// The origin's answer for a GET or HEAD the bucket had no object for. A storable answer to a
/// GET (`x-meridian-store`, status 200, a key rather than a "directory") is written back under
/// the requested key; `guard` (this request leads the key's flight) is released when that
/// write ends.
pub async fn fall_through(
    engine: &Engine,
    proxy: &OriginProxy,
    target: &Target,
    req: Request<RequestBody>,
    info: &RequestInfo,
    guard: Option<FlightGuard>,
) -> Response<ResponseBody> {
    let storable = req.method() == Method::GET && stored_key(target).is_some();
    let resp = proxy.handle(req, info.peer, info.secure).await;
    let Some(key) = stored_key(target).filter(|_| storable) else { return resp };
    match writeback::store_ttl(resp.headers()) {
        Some(Ok(ttl)) if resp.status() == StatusCode::OK => {
            let at = StoreAt { engine: engine.clone(), bucket: target.bucket.clone(), key, ttl, guard };
            writeback::tee(resp, at)
        }
        Some(Err(why)) => {
            tracing::warn!(bucket = %target.bucket, key = %key, why = %why, "origin asked for an invalid write-back");
            resp
        }
        _ => resp,
    }
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
