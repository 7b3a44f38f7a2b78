//! A site's origin app as configured: its instances per region, and optionally the URL of a
//! region's edge. The TOML file (`[[origin]]`, or `origin` in a `[[site]]`), the admin API
//! (stored sites) and the edge's replay topology all use these shapes and [`check_regions`].

use serde::{Deserialize, Serialize};

/// One origin instance.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Instance {
    /// What `fly-replay: instance=` names.
    pub id: String,
    /// `http(s)://host:port`
    pub url: String,
}

/// One region's origin instances, and how other regions reach its edge.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Region {
    pub name: String,
    /// The region's edge, `http(s)://host:port`; when absent, the edges the region's nodes
    /// publish in the cluster (unused for the local region).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge: Option<String>,
    #[serde(default)]
    pub instances: Vec<Instance>,
}

/// A site's origin: its regions and the edge's options for it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Origin {
    #[serde(rename = "region")]
    pub regions: Vec<Region>,
    /// Pin a session (cookie `meridian-region`) to the region of its last write replayed
    /// there, for this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin_seconds: Option<u64>,
    /// How long a session's read waits for the node's view to reach the revision of its last
    /// write before going to the writer's region; 2000 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision_wait_ms: Option<u64>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OriginError {
    #[error("an origin needs at least one region")]
    NoRegions,
    #[error("origin region {0:?} is not a region name")]
    BadRegionName(String),
    #[error("origin region {0:?} is listed twice")]
    DuplicateRegion(String),
    #[error("origin instance {0:?} is listed twice")]
    DuplicateInstance(String),
    #[error("origin instance id {0:?} must be 1 to 64 letters, digits, '-', '_' or '.'")]
    BadInstanceId(String),
    #[error("origin region {0:?} has neither an edge URL nor instances")]
    Unreachable(String),
    #[error("revision_wait_ms {0} is more than the most, {MAX_REVISION_WAIT_MS}")]
    RevisionWait(u64),
    #[error("{what} URL {url:?} must look like http(s)://host:port")]
    BadUrl { what: &'static str, url: String },
}

/// The longest `revision_wait_ms`.
pub const MAX_REVISION_WAIT_MS: u64 = 30_000;

impl Origin {
    /// Checks the regions ([`check_regions`]) and the options.
    pub fn check(&self) -> Result<(), OriginError> {
        check_regions(&self.regions)?;
        match self.revision_wait_ms {
            Some(ms) if ms > MAX_REVISION_WAIT_MS => Err(OriginError::RevisionWait(ms)),
            _ => Ok(()),
        }
    }
}

/// Whether `name` can be a region name.
pub fn is_region_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 32 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Checks names, ids and URLs (none of it depends on which region asks).
pub fn check_regions(regions: &[Region]) -> Result<(), OriginError> {
    if regions.is_empty() {
        return Err(OriginError::NoRegions);
    }
    let mut seen_regions = std::collections::HashSet::new();
    let mut seen_instances = std::collections::HashSet::new();
    for region in regions {
        if !is_region_name(&region.name) {
            return Err(OriginError::BadRegionName(region.name.clone()));
        }
        if !seen_regions.insert(region.name.as_str()) {
            return Err(OriginError::DuplicateRegion(region.name.clone()));
        }
        for instance in &region.instances {
            let id_ok = !instance.id.is_empty()
                && instance.id.len() <= 64
                && instance.id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if !id_ok {
                return Err(OriginError::BadInstanceId(instance.id.clone()));
            }
            check_url("origin instance", &instance.url)?;
            if !seen_instances.insert(instance.id.as_str()) {
                return Err(OriginError::DuplicateInstance(instance.id.clone()));
            }
        }
        match &region.edge {
            Some(edge) => check_url("edge", edge)?,
            None if region.instances.is_empty() => return Err(OriginError::Unreachable(region.name.clone())),
            None => {}
        }
    }
    Ok(())
}

/// `http(s)://host:port` with nothing after it (a trailing `/` is allowed).
pub fn check_url(what: &'static str, url: &str) -> Result<(), OriginError> {
    let bad = || OriginError::BadUrl { what, url: url.to_string() };
    let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    let ok = matches!(scheme, "http" | "https")
        && !authority.is_empty()
        && authority.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
        && authority.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
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
    fn invalid_origins_are_refused() {
        let err = |regions: Vec<Region>| check_regions(&regions).expect_err("invalid");
        assert_eq!(err(vec![]), OriginError::NoRegions);
        assert_eq!(
            err(vec![region("ams", None, &["a"]), region("sjc", None, &[])]),
            OriginError::Unreachable("sjc".into())
        );
        assert_eq!(err(vec![region("ams", None, &["a", "a"])]), OriginError::DuplicateInstance("a".into()));
        assert_eq!(err(vec![region("ams", None, &["a b"])]), OriginError::BadInstanceId("a b".into()));
        assert_eq!(
            err(vec![region("ams", None, &["a"]), region("ams", None, &["b"])]),
            OriginError::DuplicateRegion("ams".into())
        );
        assert!(matches!(err(vec![region("ams", Some("ftp://x:1"), &["a"])]), OriginError::BadUrl { .. }));
        assert!(matches!(err(vec![region("ams", Some("http://x:1/path"), &["a"])]), OriginError::BadUrl { .. }));
        assert!(matches!(err(vec![region("ams", Some("http://x"), &["a"])]), OriginError::BadUrl { .. }));
        assert!(matches!(err(vec![region("a b", None, &["a"])]), OriginError::BadRegionName(_)));
        let fine = [region("ams", None, &["a"]), region("sjc", Some("http://[::1]:8080/"), &[])];
        assert_eq!(check_regions(&fine), Ok(()));
    }
}
