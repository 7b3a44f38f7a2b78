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
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use meridian_common::origin::Origin;
use meridian_edge_origin::proxy::Apps;
use meridian_edge_origin::{OriginProxy, ProxyConfig, Region, Topology};
use meridian_engine::Engine;
use meridian_engine::website::SiteRecord;
use meridian_http::{ClientTls, RequestBody, RequestInfo, ResponseBody};
use serde::{Deserialize, Serialize};

use crate::EdgeError;
use crate::sites::Target;
use flight::{Flight, FlightGuard, Flights};
use writeback::StoreAt;

/// A site's origin app in an `[[origin]]` table of the configuration file: it replaces the
/// site's own `origin` (from its `[[site]]` table or the admin API).
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

impl SiteOrigin {
    pub fn origin(&self) -> Origin {
        Origin { regions: self.regions.clone(), pin_seconds: self.pin_seconds, revision_wait_ms: self.revision_wait_ms }
    }
}

/// Other regions' edges as the cluster's node records publish them: region to base URLs.
pub type PublishedEdges = BTreeMap<String, Vec<String>>;

/// One site's origin proxy, and what it was built from.
struct Built {
    topology: Topology,
    origin: Origin,
    proxy: OriginProxy,
    wait: Duration,
}

/// The origin proxies of the sites that have one, and the flights of their misses. The sites
/// and the other regions' edges change while the edge runs ([`Origins::update`]); a site's
/// proxy (its round robin and replay cache) is kept for as long as its origin and topology
/// stay the same.
pub struct Origins {
    /// This table itself, for the proxies' `fly-replay: app=` lookups.
    me: Weak<Origins>,
    region: String,
    peer_token: Option<String>,
    tls: ClientTls,
    /// The `[[origin]]` tables, by site.
    overrides: HashMap<String, Origin>,
    by_site: RwLock<HashMap<String, Arc<Built>>>,
    flights: Flights,
}

impl Origins {
    /// Checks the origins of the configuration file (`[[origin]]` tables and the configured
    /// sites' own) against this node's `region`. Without a cluster token no request is ever
    /// taken for another region's edge, and none is sent to one.
    pub fn new(
        overrides: &[SiteOrigin],
        sites: &[SiteRecord],
        region: &str,
        peer_token: Option<&str>,
    ) -> Result<Arc<Origins>, EdgeError> {
        let tls = ClientTls::from_env().map_err(|e| EdgeError::Origin { site: String::new(), why: e.to_string() })?;
        let origins = Origins {
            me: Weak::new(),
            region: region.to_string(),
            peer_token: peer_token.map(str::to_string),
            tls,
            overrides: HashMap::new(),
            by_site: RwLock::default(),
            flights: Flights::default(),
        };
        let mut by_site = HashMap::new();
        for table in overrides {
            let (site, origin) = (&table.site, table.origin());
            let invalid = |why: String| EdgeError::Origin { site: site.clone(), why };
            origins.topology(&origin, &PublishedEdges::new()).map_err(invalid)?;
            if by_site.insert(site.clone(), origin).is_some() {
                return Err(invalid("the site has two origins".into()));
            }
        }
        for site in sites {
            if let Some(origin) = &site.origin {
                let invalid = |why: String| EdgeError::Origin { site: site.name.clone(), why };
                origins.topology(origin, &PublishedEdges::new()).map_err(invalid)?;
            }
        }
        Ok(Arc::new_cyclic(|me| Origins { me: me.clone(), overrides: by_site, ..origins }))
    }

    /// `origin`'s regions as this node sees them: checked, other regions reached through the
    /// `published` edges (with a cluster token only).
    fn topology(&self, origin: &Origin, published: &PublishedEdges) -> Result<Topology, String> {
        origin.check().map_err(|e| e.to_string())?;
        let topology = Topology::new(&self.region, origin.regions.clone()).map_err(|e| e.to_string())?;
        if self.peer_token.is_none() {
            if topology.regions.iter().any(|r| r.name != self.region && r.edge.is_some()) {
                // Edges prove a replay to each other with the cluster token.
                return Err("replays to other regions' edges need the cluster token (--cluster-token)".into());
            }
            return Ok(topology);
        }
        let mine: PublishedEdges = published
            .iter()
            .filter(|(region, _)| topology.region(region).is_some())
            .map(|(r, e)| (r.clone(), e.clone()))
            .collect();
        Ok(topology.with_edges(mine))
    }

    fn proxy_for(&self, site: &str, origin: &Origin, topology: Topology) -> Built {
        let mut config = ProxyConfig::new(topology.clone(), self.peer_token.clone().unwrap_or_default());
        config.pin = origin.pin_seconds.map(Duration::from_secs);
        config.site = site.to_string();
        let me = self.me.clone();
        config.apps = Some(Apps(Arc::new(move |app| me.upgrade()?.proxy(Some(app)))));
        let wait = origin.revision_wait_ms.map_or(revision::DEFAULT_WAIT, Duration::from_millis);
        let proxy = OriginProxy::new(config, &self.tls);
        Built { topology, origin: origin.clone(), proxy, wait }
    }

    /// Rebuilds the proxies for the current `sites` (configured and stored) and the other
    /// regions' `published` edges; an unchanged site keeps its proxy.
    pub fn update(&self, sites: &[SiteRecord], published: &PublishedEdges) {
        // Reversed: a configured site (listed first) beats a stored one of the same name.
        let mut wanted: HashMap<&str, &Origin> =
            sites.iter().rev().filter_map(|s| Some((s.name.as_str(), s.origin.as_ref()?))).collect();
        wanted.extend(self.overrides.iter().map(|(site, origin)| (site.as_str(), origin)));
        let current = self.by_site.read().unwrap_or_else(|e| e.into_inner()).clone();
        let mut next = HashMap::new();
        for (site, origin) in wanted {
            let topology = match self.topology(origin, published) {
                Ok(topology) => topology,
                Err(why) => {
                    tracing::warn!(site, why = %why, "the site's origin is not usable; the site is served without it");
                    continue;
                }
            };
            let built = match current.get(site) {
                Some(old) if old.origin == *origin && old.topology == topology => old.clone(),
                _ => Arc::new(self.proxy_for(site, origin, topology)),
            };
            next.insert(site.to_string(), built);
        }
        *self.by_site.write().unwrap_or_else(|e| e.into_inner()) = next;
    }

    /// For a replay from another region's edge naming a site (`fly-replay: app=`): that
    /// site's origin, when the request carries the cluster token.
    pub fn peer_site(&self, headers: &http::HeaderMap) -> Option<OriginProxy> {
        let site = headers.get(meridian_edge_origin::forward::PEER_SITE)?.to_str().ok()?;
        self.proxy(Some(site)).filter(|proxy| proxy.is_peer(headers))
    }

    /// The origin of `site`, if it has one.
    pub fn proxy(&self, site: Option<&str>) -> Option<OriginProxy> {
        self.by_site.read().unwrap_or_else(|e| e.into_inner()).get(site?).map(|built| built.proxy.clone())
    }

    /// How long a read of `site` is held for its session's last write ([`revision`]).
    pub fn revision_wait(&self, site: Option<&str>) -> Duration {
        let by_site = self.by_site.read().unwrap_or_else(|e| e.into_inner());
        site.and_then(|s| by_site.get(s)).map_or(revision::DEFAULT_WAIT, |built| built.wait)
    }
}

/// The web edges the cluster's healthy nodes publish, by region, except `local`'s.
pub fn published_edges(nodes: &[meridian_engine::cluster::NodeStatus], local: &str) -> PublishedEdges {
    let mut edges = PublishedEdges::new();
    for node in nodes.iter().filter(|n| n.healthy && n.record.region != local) {
        if let Some(url) = &node.record.web_url {
            edges.entry(node.record.region.clone()).or_default().push(url.clone());
        }
    }
    for urls in edges.values_mut() {
        urls.sort();
        urls.dedup();
    }
    edges
}

/// Keeps `origins` in step with the site table and the cluster's node records (for as long
/// as both live).
pub async fn keep_fresh(engine: Engine, origins: Weak<Origins>, sites: Weak<crate::SiteTable>) {
    loop {
        tokio::time::sleep(crate::sites::SITES_REFRESH).await;
        let (Some(origins), Some(sites)) = (origins.upgrade(), sites.upgrade()) else { return };
        refresh(&engine, &origins, &sites).await;
    }
}

/// Reads the node records once and updates `origins` (keeping the last known edges when the
/// records cannot be read).
pub async fn refresh(engine: &Engine, origins: &Origins, sites: &crate::SiteTable) {
    let published = match engine.nodes().await {
        Ok(nodes) => published_edges(&nodes, &origins.region),
        Err(err) => {
            tracing::warn!(error = %err, "cannot read the cluster's nodes; keeping the edges known");
            return;
        }
    };
    origins.update(&sites.all(), &published);
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
        protection: None,
        form_upload: false,
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
            regions: vec![
                Region { name: "ams".into(), edge: None, instances: vec![instance] },
                Region {
                    name: "sjc".into(),
                    edge: None,
                    instances: vec![Instance { id: "s".into(), url: "http://s:1".into() }],
                },
            ],
            pin_seconds: None,
            revision_wait_ms,
        }
    }

    fn origins(table: SiteOrigin) -> Result<Arc<Origins>, EdgeError> {
        let origins = Origins::new(&[table], &[], "ams", Some("token"))?;
        origins.update(&[], &PublishedEdges::new());
        Ok(origins)
    }

    #[test]
    fn the_revision_wait_defaults_to_two_seconds_and_is_bounded() {
        let origins = origins(origin(None)).expect("valid");
        assert_eq!(origins.revision_wait(Some("app")), revision::DEFAULT_WAIT);
        let origins = self::origins(origin(Some(250))).expect("valid");
        assert_eq!(origins.revision_wait(Some("app")), Duration::from_millis(250));
        let refused = self::origins(origin(Some(30_001))).err().map(|e| e.to_string());
        assert!(refused.is_some_and(|e| e.contains("revision_wait_ms 30001 is more than the most, 30000")));
    }

    #[test]
    fn an_origin_table_replaces_the_sites_own_origin() {
        let table = origin(Some(250));
        let origins = Origins::new(std::slice::from_ref(&table), &[], "ams", Some("token")).expect("valid");
        let own = Origin { regions: table.regions[..1].to_vec(), revision_wait_ms: Some(900), ..Default::default() };
        let site = SiteRecord { name: "app".into(), bucket: "b".into(), origin: Some(own), ..Default::default() };
        origins.update(&[site], &PublishedEdges::new());
        assert_eq!(origins.revision_wait(Some("app")), Duration::from_millis(250), "the [[origin]] table's");
        assert!(origins.proxy(Some("app")).is_some_and(|p| p.topology().region("sjc").is_some()));
    }

    #[test]
    fn stored_sites_get_origins_and_keep_their_proxy_while_nothing_changes() {
        let origins = Origins::new(&[], &[], "ams", Some("token")).expect("valid");
        let site = SiteRecord {
            name: "app".into(),
            bucket: "b".into(),
            origin: Some(origin(None).origin()),
            ..Default::default()
        };
        let sjc = PublishedEdges::from([("sjc".to_string(), vec!["http://sjc-edge:8080".to_string()])]);
        origins.update(std::slice::from_ref(&site), &sjc);
        let first = origins.proxy(Some("app")).expect("the stored site has an origin");
        assert_eq!(first.topology().edges(first.topology().region("sjc").expect("sjc")), ["http://sjc-edge:8080"]);
        origins.update(std::slice::from_ref(&site), &sjc);
        let same = origins.proxy(Some("app")).expect("still there");
        assert!(same.same_as(&first), "an unchanged origin keeps its proxy (round robin, replay cache)");
        origins.update(std::slice::from_ref(&site), &PublishedEdges::new());
        let rebuilt = origins.proxy(Some("app")).expect("still there");
        assert!(
            !rebuilt.same_as(&first)
                && rebuilt.topology().edges(rebuilt.topology().region("sjc").expect("sjc")).is_empty()
        );
        origins.update(&[], &sjc);
        assert!(origins.proxy(Some("app")).is_none(), "a deleted site has no origin");
    }
}
