//! Where a site's origin apps run and how the edge reaches other regions.
//!
//! Each region lists its origin instances (an id, as `fly-replay: instance=` names them, and a
//! base URL) and, optionally, the base URL of its edge. An edge calls only its own region's
//! instances; a replay to another region goes to that region's edge, which calls its own
//! instances (they may be reachable only from there). A region without a configured edge URL
//! is reached through the edges its nodes publish in the cluster ([`Topology::with_edges`]).

use std::collections::BTreeMap;

pub use meridian_common::origin::{Instance, OriginError as TopologyError, Region};

/// Every region of a site, and which one this edge serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    pub local: String,
    /// In order of preference for `region=any` (the local region is always tried first).
    pub regions: Vec<Region>,
    /// Edges published in the cluster, per region: used for regions without an `edge` URL.
    pub published: BTreeMap<String, Vec<String>>,
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
    /// Checks names and URLs. The local region may have no instances: requests then go to
    /// the other regions' edges.
    pub fn new(local: &str, regions: Vec<Region>) -> Result<Topology, TopologyError> {
        meridian_common::origin::check_regions(&regions)?;
        Ok(Topology { local: local.to_string(), regions, published: BTreeMap::new() })
    }

    /// The same topology, reaching regions without an `edge` URL through `published` (region
    /// to edge URLs, from the cluster's node records).
    pub fn with_edges(mut self, published: BTreeMap<String, Vec<String>>) -> Topology {
        self.published = published;
        self
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

    /// The edges of another region: its configured one, else those its nodes publish.
    pub fn edges(&self, region: &Region) -> Vec<String> {
        match &region.edge {
            Some(edge) => vec![edge.clone()],
            None => self.published.get(&region.name).cloned().unwrap_or_default(),
        }
    }

    /// The ways to `instance`, wherever it runs.
    pub fn instance(&self, id: &str) -> Vec<Candidate> {
        let Some(region) = self.region_of(id) else { return Vec::new() };
        if region.name == self.local {
            return region.instances.iter().filter(|i| i.id == id).cloned().map(Candidate::Local).collect();
        }
        self.edges(region)
            .into_iter()
            .map(|edge| Candidate::Remote { region: region.name.clone(), edge, instance: Some(id.to_string()) })
            .collect()
    }

    /// The ways into `region`: its instances when local (except `excluded`), else its edges.
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
        self.edges(region)
            .into_iter()
            .map(|edge| Candidate::Remote { region: region.name.clone(), edge, instance: None })
            .collect()
    }

    /// The local region first, then the others in their configured order.
    pub fn regions_by_preference(&self) -> impl Iterator<Item = &Region> {
        let local = self.regions.iter().filter(|r| r.name == self.local);
        local.chain(self.regions.iter().filter(|r| r.name != self.local))
    }
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
        assert!(matches!(t.instance("a2").as_slice(), [Candidate::Local(i)] if i.id == "a2"));
        assert_eq!(
            t.instance("s1"),
            vec![Candidate::Remote {
                region: "sjc".into(),
                edge: "http://127.0.0.1:2".into(),
                instance: Some("s1".into())
            }]
        );
        assert_eq!(t.instance("nope"), Vec::new());
        assert_eq!(t.into_region("ams", &["a1".into()]).len(), 1);
        assert_eq!(t.into_region("sjc", &[]).len(), 1);
        assert!(t.into_region("fra", &[]).is_empty());
    }

    #[test]
    fn regions_without_an_edge_url_use_the_published_edges() {
        let regions =
            vec![region("ams", None, &["a1"]), region("sjc", None, &["s1"]), region("fra", Some("http://f:1"), &[])];
        let published = BTreeMap::from([
            ("sjc".to_string(), vec!["http://s:1".to_string(), "http://s:2".to_string()]),
            ("fra".to_string(), vec!["http://ignored:1".to_string()]),
        ]);
        let t = Topology::new("ams", regions).expect("valid").with_edges(published);
        let edges = |c: Vec<Candidate>| {
            c.into_iter()
                .map(|c| match c {
                    Candidate::Remote { edge, .. } => edge,
                    Candidate::Local(i) => i.id,
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(edges(t.into_region("sjc", &[])), ["http://s:1", "http://s:2"]);
        assert_eq!(edges(t.instance("s1")), ["http://s:1", "http://s:2"]);
        assert_eq!(edges(t.into_region("fra", &[])), ["http://f:1"], "a configured edge URL wins");
        assert_eq!(edges(t.into_region("ams", &[])), ["a1"]);
    }
}
