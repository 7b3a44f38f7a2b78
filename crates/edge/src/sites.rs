//! Step 1 of the pipeline: which site or bucket website a request's host and path name.

use std::collections::HashSet;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use http::{Response, StatusCode};
use meridian_common::bucket_address::{percent_decode, virtual_host_bucket, without_port};
use meridian_engine::website::{SiteRecord, WebsiteConfig};
use meridian_engine::{Engine, ErrorKind};
use meridian_http::ResponseBody;

use crate::{EdgeError, EdgeOptions};

/// How often stored sites are read again: a site put or deleted through the admin API is
/// served (or no longer) by every edge within about this long of its node's view having it.
pub const SITES_REFRESH: Duration = Duration::from_secs(1);

/// The index document of a site that names none.
pub const DEFAULT_INDEX: &str = "index.html";

/// Where a request's object lives, and how to serve it.
#[derive(Clone, Debug)]
pub struct Target {
    /// The site's name (none for a bucket website).
    pub site: Option<String>,
    pub bucket: String,
    /// Prepended to [`Target::rest`] (and to the error document) to form object keys.
    pub key_prefix: String,
    /// The decoded request path after the site's mount point, without its leading `/`.
    pub rest: String,
    /// `Cache-Control` for objects stored without one.
    pub cache_control: Option<String>,
    pub index: Option<String>,
    /// Relative to the key prefix.
    pub error_key: Option<String>,
    /// The bucket's S3 website configuration, when served as `<bucket>.<web domain>`: its
    /// redirects and routing rules apply.
    pub website: Option<WebsiteConfig>,
}

/// The sites of the configuration file and those stored in the metadata store.
pub struct SiteTable {
    engine: Engine,
    web_domain: Option<String>,
    configured: Vec<SiteRecord>,
    stored: RwLock<Arc<Vec<SiteRecord>>>,
}

impl SiteTable {
    pub(crate) async fn start(engine: Engine, options: EdgeOptions) -> Result<Arc<SiteTable>, EdgeError> {
        let mut names = HashSet::new();
        for site in &options.sites {
            site.validate().map_err(|source| EdgeError::InvalidSite { name: site.name.clone(), source })?;
            if !names.insert(site.name.clone()) {
                return Err(EdgeError::DuplicateSite(site.name.clone()));
            }
        }
        let table = Arc::new(SiteTable {
            engine,
            web_domain: options.web_domain,
            configured: options.sites,
            stored: RwLock::new(Arc::default()),
        });
        table.refresh().await;
        tokio::spawn(keep_fresh(Arc::downgrade(&table)));
        Ok(table)
    }

    async fn refresh(&self) {
        match self.engine.list_sites().await {
            Ok(sites) => *self.stored.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(sites),
            // Keep serving the sites we know; the next round tries again.
            Err(err) => tracing::warn!(error = %err, "cannot read the stored sites"),
        }
    }

    /// Every site: the configured ones, then the stored ones.
    pub fn all(&self) -> Vec<SiteRecord> {
        let stored = Arc::clone(&self.stored.read().unwrap_or_else(|e| e.into_inner()));
        self.configured.iter().chain(stored.iter()).cloned().collect()
    }

    /// The target of a request for `path` on `host`: the most specific site (one naming the
    /// host beats one for any host, then the longest mount point; configured before stored),
    /// else a public-read bucket with a website configuration at `<bucket>.<web domain>`.
    /// `Ok(None)`: nothing is served there. `Err`: an answer to send as is.
    pub(crate) async fn resolve(&self, host: &str, path: &str) -> Result<Option<Target>, Response<ResponseBody>> {
        let path = percent_decode(path).map_err(|e| crate::serve::plain(StatusCode::BAD_REQUEST, &e.to_string()))?;
        let host = without_port(host).to_ascii_lowercase();
        let stored = Arc::clone(&self.stored.read().unwrap_or_else(|e| e.into_inner()));
        if let Some((site, rest)) = best_site(self.configured.iter().chain(stored.iter()), &host, &path) {
            return Ok(Some(site_target(site, rest)));
        }
        let Some(bucket) = self.web_domain.as_deref().and_then(|domain| virtual_host_bucket(&host, domain)) else {
            return Ok(None);
        };
        self.bucket_website(bucket, &path).await
    }

    /// A bucket is served as a website only when it is public-read and has a website
    /// configuration: private buckets never are.
    async fn bucket_website(&self, bucket: String, path: &str) -> Result<Option<Target>, Response<ResponseBody>> {
        let record = match self.engine.bucket(&bucket).await {
            Ok((record, _)) => record,
            Err(err) if err.kind() == ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(crate::serve::engine_failure(&err)),
        };
        // Not when the public access block ignores public ACLs or ACLs are disabled.
        let public = record.acl_allows_public_read();
        let Some(website) = record.website.filter(|_| public) else { return Ok(None) };
        Ok(Some(Target {
            site: None,
            bucket,
            key_prefix: String::new(),
            rest: path.trim_start_matches('/').to_string(),
            cache_control: None,
            index: website.index_suffix.clone(),
            error_key: website.error_key.clone(),
            website: Some(website),
        }))
    }
}

async fn keep_fresh(table: Weak<SiteTable>) {
    loop {
        tokio::time::sleep(SITES_REFRESH).await;
        let Some(table) = table.upgrade() else { return };
        table.refresh().await;
    }
}

/// The best site for `host` and `path`, and the rest of the path after its mount point.
fn best_site<'a>(
    sites: impl Iterator<Item = &'a SiteRecord>,
    host: &str,
    path: &'a str,
) -> Option<(&'a SiteRecord, &'a str)> {
    let mut best: Option<((bool, usize), &SiteRecord, &str)> = None;
    for site in sites {
        if site.host.as_deref().is_some_and(|h| !h.eq_ignore_ascii_case(host)) {
            continue;
        }
        let Some(rest) = mounted_rest(site.mount(), path) else { continue };
        let rank = (site.host.is_some(), site.mount().len());
        if best.as_ref().is_none_or(|(best_rank, _, _)| rank > *best_rank) {
            best = Some((rank, site, rest));
        }
    }
    best.map(|(_, site, rest)| (site, rest))
}

/// The path under `mount` (`/file/x` mounts `/file/x` and `/file/x/...`, not `/file/xy`).
fn mounted_rest<'a>(mount: &str, path: &'a str) -> Option<&'a str> {
    let rest = path.strip_prefix(mount)?;
    if rest.is_empty() || rest.starts_with('/') { Some(rest.trim_start_matches('/')) } else { None }
}

fn site_target(site: &SiteRecord, rest: &str) -> Target {
    Target {
        site: Some(site.name.clone()),
        bucket: site.bucket.clone(),
        key_prefix: site.key_prefix.clone(),
        rest: rest.to_string(),
        cache_control: site.cache_control.clone(),
        index: Some(site.index_document.clone().unwrap_or_else(|| DEFAULT_INDEX.to_string())),
        error_key: site.error_document.clone(),
        website: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(name: &str, host: Option<&str>, prefix: Option<&str>) -> SiteRecord {
        SiteRecord {
            name: name.into(),
            host: host.map(str::to_string),
            path_prefix: prefix.map(str::to_string),
            bucket: "b".into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_most_specific_site_wins() {
        let sites = [
            site("root", None, None),
            site("xedn", None, Some("/file/christine-static")),
            site("cdn", Some("cdn.example.com"), None),
        ];
        let pick = |host: &str, path: &'static str| {
            best_site(sites.iter(), host, path).map(|(s, rest)| (s.name.as_str(), rest))
        };
        assert_eq!(pick("any", "/file/christine-static/a/b.png"), Some(("xedn", "a/b.png")));
        assert_eq!(pick("any", "/file/christine-static"), Some(("xedn", "")));
        assert_eq!(pick("any", "/file/christine-staticx"), Some(("root", "file/christine-staticx")));
        assert_eq!(pick("cdn.example.com", "/file/christine-static/a"), Some(("cdn", "file/christine-static/a")));
        assert_eq!(pick("other", "/"), Some(("root", "")));
        assert_eq!(best_site(sites[1..2].iter(), "any", "/elsewhere").map(|(s, _)| s.name.clone()), None);
    }
}
