//! Where a site's origin apps run and how the edge reaches other regions.
//!
//! Each region lists its origin instances (an id, as `fly-replay: instance=` names them, and a
//! base URL) and the base URL of its edge. An edge calls only its own region's instances; a
//! replay to another region goes to that region's edge, which calls its own instances (they
//! may be reachable only from there). The binary fills this from the site's configuration; the
//! edge URLs can be the other nodes' advertised web addresses.

use serde::{Deserialize, Serialize};

use crate::replay::instruction::is_region_name;

/// One origin instance.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Instance {
    pub id: String,
    /// `http(s)://host:port`
    pub url: String,
}

/// One region's origin instances and edge.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Region {
    pub name: String,
    /// The region's edge, `http(s)://host:port` (unused for the local region).
    #[serde(default)]
    pub edge: Option<String>,
    #[serde(default)]
    pub instances: Vec<Instance>,
}

/// Every region of a site, and which one this edge serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    pub local: String,
    /// In order of preference for `region=any` (the local region is always tried first).
    pub regions: Vec<Region>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TopologyError {
    #[error("origin region {0:?} is not a region name")]
    BadRegionName(String),
    #[error("origin region {0:?} is listed twice")]
    DuplicateRegion(String),
    #[error("origin instance {0:?} is listed twice")]
    DuplicateInstance(String),
    #[error("the local region {0:?} has no origin instances")]
    NoLocalInstances(String),
    #[error("origin region {0:?} has neither an edge URL nor instances")]
    Unreachable(String),
    #[error("{what} URL {url:?} must look like http(s)://host:port")]
    BadUrl { what: &'static str, url: String },
}

/// Where a replay or a first delivery goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Candidate {
    /// One of this region's origin instances.
    Local(Instance),
    /// Another region's edge, optionally asked for one instance.
    Remote { region: String, edge: String, instance: Option<String> },
}

impl Topology {
    /// Checks names and URLs.
    pub fn new(local: &str, regions: Vec<Region>) -> Result<Topology, TopologyError> {
        let mut seen_regions = std::collections::HashSet::new();
        let mut seen_instances = std::collections::HashSet::new();
        for region in &regions {
            if !is_region_name(&region.name) {
                return Err(TopologyError::BadRegionName(region.name.clone()));
            }
            if !seen_regions.insert(region.name.as_str()) {
                return Err(TopologyError::DuplicateRegion(region.name.clone()));
            }
            for instance in &region.instances {
                check_url("origin instance", &instance.url)?;
                if !seen_instances.insert(instance.id.as_str()) {
                    return Err(TopologyError::DuplicateInstance(instance.id.clone()));
                }
            }
            if let Some(edge) = &region.edge {
                check_url("edge", edge)?;
            } else if region.name != local && region.instances.is_empty() {
                return Err(TopologyError::Unreachable(region.name.clone()));
            }
        }
        let topology = Topology { local: local.to_string(), regions };
        if topology.local_instances().is_empty() {
            return Err(TopologyError::NoLocalInstances(local.to_string()));
        }
        Ok(topology)
    }

    pub fn local_instances(&self) -> &[Instance] {
        self.region(&self.local).map_or(&[], |r| r.instances.as_slice())
    }

    pub fn region(&self, name: &str) -> Option<&Region> {
        self.regions.iter().find(|r| r.name == name)
    }

    /// The region of an instance id.
    pub fn region_of(&self, instance: &str) -> Option<&Region> {
        self.regions.iter().find(|r| r.instances.iter().any(|i| i.id == instance))
    }

    /// The way to `instance`, wherever it runs.
    pub fn instance(&self, id: &str) -> Option<Candidate> {
        let region = self.region_of(id)?;
        if region.name == self.local {
            return region.instances.iter().find(|i| i.id == id).cloned().map(Candidate::Local);
        }
        let edge = region.edge.clone()?;
        Some(Candidate::Remote { region: region.name.clone(), edge, instance: Some(id.to_string()) })
    }

    /// The ways into `region`: its instances when local (except `excluded`), else its edge.
    pub fn into_region(&self, name: &str, excluded: &[String]) -> Vec<Candidate> {
        let Some(region) = self.region(name) else { return Vec::new() };
        if region.name == self.local {
            return region
                .instances
                .iter()
                .filter(|i| !excluded.contains(&i.id))
                .cloned()
                .map(Candidate::Local)
                .collect();
        }
        region
            .edge
            .clone()
            .map(|edge| Candidate::Remote { region: region.name.clone(), edge, instance: None })
            .into_iter()
            .collect()
    }

    /// The local region first, then the others in their configured order.
    pub fn regions_by_preference(&self) -> impl Iterator<Item = &Region> {
        let local = self.regions.iter().filter(|r| r.name == self.local);
        local.chain(self.regions.iter().filter(|r| r.name != self.local))
    }
}

fn check_url(what: &'static str, url: &str) -> Result<(), TopologyError> {
    let bad = || TopologyError::BadUrl { what, url: url.to_string() };
    let uri: http::Uri = url.parse().map_err(|_| bad())?;
    let ok = matches!(uri.scheme_str(), Some("http" | "https"))
        && uri.authority().is_some()
        && matches!(uri.path(), "" | "/")
        && uri.query().is_none();
    if ok { Ok(()) } else { Err(bad()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(name: &str, edge: Option<&str>, ids: &[&str]) -> Region {
        Region {
            name: name.into(),
            edge: edge.map(String::from),
            instances: ids.iter().map(|id| Instance { id: (*id).into(), url: "http://127.0.0.1:1".into() }).collect(),
        }
    }

    #[test]
    fn candidates_by_instance_and_region() {
        let t = Topology::new(
            "ams",
            vec![region("ams", None, &["a1", "a2"]), region("sjc", Some("http://127.0.0.1:2"), &["s1"])],
        )
        .expect("valid");
        assert!(matches!(t.instance("a2"), Some(Candidate::Local(i)) if i.id == "a2"));
        assert_eq!(
            t.instance("s1"),
            Some(Candidate::Remote {
                region: "sjc".into(),
                edge: "http://127.0.0.1:2".into(),
                instance: Some("s1".into())
            })
        );
        assert_eq!(t.instance("nope"), None);
        assert_eq!(t.into_region("ams", &["a1".into()]).len(), 1);
        assert_eq!(t.into_region("sjc", &[]).len(), 1);
        assert!(t.into_region("fra", &[]).is_empty());
    }

    #[test]
    fn invalid_topologies_are_refused() {
        let err = |regions| Topology::new("ams", regions).expect_err("invalid");
        assert_eq!(err(vec![region("ams", None, &[])]), TopologyError::NoLocalInstances("ams".into()));
        assert_eq!(
            err(vec![region("ams", None, &["a"]), region("sjc", None, &[])]),
            TopologyError::Unreachable("sjc".into())
        );
        assert_eq!(err(vec![region("ams", None, &["a", "a"])]), TopologyError::DuplicateInstance("a".into()));
        assert!(matches!(err(vec![region("ams", Some("ftp://x"), &["a"])]), TopologyError::BadUrl { .. }));
        assert!(matches!(err(vec![region("a b", None, &["a"])]), TopologyError::BadRegionName(_)));
    }
}
