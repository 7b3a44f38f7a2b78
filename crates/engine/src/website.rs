//! What the web edge serves: S3 website configurations (kept in the bucket record) and sites
//! (a host name and/or URL path prefix mounted on a bucket and key prefix, kept under `s/`).
//! Both are plain records here; how a request is answered from them is the edge's business.

use meridian_meta::{Compare, Op, RangeRequest, Txn};
use serde::{Deserialize, Serialize};

use crate::error::{EngineError, EngineResult};
use crate::{Engine, keys, record, validate_bucket_name, validate_key};

/// S3 allows at most 50 routing rules per website configuration.
pub const MAX_ROUTING_RULES: usize = 50;

/// A bucket's website configuration, as S3's PutBucketWebsite sets it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebsiteConfig {
    /// Appended to requests for a "directory" (`docs/` → `docs/index.html`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_suffix: Option<String>,
    /// The object served (with status 404) when a key does not exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_key: Option<String>,
    /// Every request is redirected to this host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_all: Option<RedirectAll>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routing_rules: Vec<RoutingRule>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedirectAll {
    pub host_name: String,
    /// `http` or `https`; the request's own protocol when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutingRule {
    /// When absent, the rule applies to every request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<RuleCondition>,
    pub redirect: Redirect,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleCondition {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_prefix_equals: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_error_code_returned_equals: Option<u16>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redirect {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_key_prefix_with: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_key_with: Option<String>,
    /// 3xx; 301 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_redirect_code: Option<u16>,
}

impl WebsiteConfig {
    /// S3's rules: either a redirect of everything (and nothing else) or an index document,
    /// plus well-formed routing rules.
    pub fn validate(&self) -> EngineResult<()> {
        let invalid = |msg: String| Err(EngineError::InvalidArgument(msg));
        if let Some(all) = &self.redirect_all {
            if self.index_suffix.is_some() || self.error_key.is_some() || !self.routing_rules.is_empty() {
                return invalid("RedirectAllRequestsTo cannot be combined with other website settings".into());
            }
            validate_host(&all.host_name)?;
            return validate_protocol(all.protocol.as_deref());
        }
        match self.index_suffix.as_deref() {
            None => return invalid("a website configuration needs an IndexDocument or RedirectAllRequestsTo".into()),
            Some(suffix) => validate_index(suffix)?,
        }
        if let Some(key) = &self.error_key {
            validate_key(key)?;
        }
        if self.routing_rules.len() > MAX_ROUTING_RULES {
            return invalid(format!("at most {MAX_ROUTING_RULES} routing rules are allowed"));
        }
        self.routing_rules.iter().try_for_each(RoutingRule::validate)
    }
}

impl RoutingRule {
    fn validate(&self) -> EngineResult<()> {
        let invalid = |msg: &str| Err(EngineError::InvalidArgument(msg.to_string()));
        if let Some(code) = self.condition.as_ref().and_then(|c| c.http_error_code_returned_equals)
            && !(400..600).contains(&code)
        {
            return invalid("HttpErrorCodeReturnedEquals must be a 4xx or 5xx code");
        }
        let redirect = &self.redirect;
        if redirect.replace_key_prefix_with.is_some() && redirect.replace_key_with.is_some() {
            return invalid("a redirect cannot have both ReplaceKeyPrefixWith and ReplaceKeyWith");
        }
        if let Some(code) = redirect.http_redirect_code
            && !(300..400).contains(&code)
        {
            return invalid("HttpRedirectCode must be a 3xx code");
        }
        if let Some(host) = &redirect.host_name {
            validate_host(host)?;
        }
        validate_protocol(redirect.protocol.as_deref())
    }
}

fn validate_protocol(protocol: Option<&str>) -> EngineResult<()> {
    match protocol {
        None | Some("http") | Some("https") => Ok(()),
        Some(other) => Err(EngineError::InvalidArgument(format!("invalid Protocol {other:?}: use http or https"))),
    }
}

/// A host name (optionally with a port) as it may appear in a URL or Host header.
fn validate_host(host: &str) -> EngineResult<()> {
    let ok = !host.is_empty()
        && host.len() <= 253
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'));
    if ok { Ok(()) } else { Err(EngineError::InvalidArgument(format!("invalid host name {host:?}"))) }
}

fn validate_index(suffix: &str) -> EngineResult<()> {
    if suffix.is_empty() || suffix.contains('/') {
        return Err(EngineError::InvalidArgument(format!(
            "invalid index document suffix {suffix:?}: it must be non-empty and contain no slash"
        )));
    }
    validate_key(suffix)
}

/// A site: requests whose host and path match are served from a bucket.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteRecord {
    /// Required; the admin API fills it in from the URL.
    #[serde(default)]
    pub name: String,
    /// Exact host name (no port, any case); any host when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// URL path prefix the site is mounted at (`/file/christine-static`); `/` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    pub bucket: String,
    /// Prepended to the rest of the path to form the object key.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key_prefix: String,
    /// `Cache-Control` for objects stored without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<String>,
    /// Index document suffix for "directories"; `index.html` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_document: Option<String>,
    /// Key (within the key prefix) served with status 404 for missing keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_document: Option<String>,
    /// The origin app that answers what the bucket does not have (and every write).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<meridian_common::origin::Origin>,
}

impl SiteRecord {
    pub fn validate(&self) -> EngineResult<()> {
        let invalid = |msg: String| Err(EngineError::InvalidArgument(msg));
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self.name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !name_ok {
            return invalid(format!("invalid site name {:?}: use 1 to 64 letters, digits, '-', '_' or '.'", self.name));
        }
        if let Some(host) = &self.host {
            validate_host(host)?;
        }
        if let Some(prefix) = &self.path_prefix {
            let ok = prefix.starts_with('/')
                && prefix.len() <= 1024
                && !prefix.contains("//")
                && prefix.bytes().all(|b| b.is_ascii_graphic() && !matches!(b, b'?' | b'#' | b'%'));
            if !ok {
                return invalid(format!(
                    "invalid path prefix {prefix:?}: it must start with '/' and hold no '?', '#', '%', '//' or spaces"
                ));
            }
        }
        validate_bucket_name(&self.bucket)?;
        if !self.key_prefix.is_empty() {
            validate_key(&self.key_prefix)?;
        }
        if let Some(value) = &self.cache_control
            && (value.is_empty() || !value.bytes().all(|b| b == b' ' || b.is_ascii_graphic()))
        {
            return invalid(format!("invalid cache control {value:?}"));
        }
        if let Some(index) = &self.index_document {
            validate_index(index)?;
        }
        if let Some(key) = &self.error_document {
            validate_key(key)?;
        }
        if let Some(origin) = &self.origin {
            origin.check().map_err(|e| EngineError::InvalidArgument(format!("invalid origin: {e}")))?;
        }
        Ok(())
    }

    /// The path prefix without a trailing slash (`""` for the root).
    pub fn mount(&self) -> &str {
        self.path_prefix.as_deref().unwrap_or("/").trim_end_matches('/')
    }
}

impl Engine {
    /// Sets (`Some`) or removes (`None`) a bucket's website configuration.
    pub async fn set_website(&self, bucket: &str, website: Option<WebsiteConfig>) -> EngineResult<()> {
        if let Some(config) = &website {
            config.validate()?;
        }
        self.update_bucket(bucket, |record| {
            record.website = website.clone();
            Ok(())
        })
        .await?;
        Ok(())
    }

    pub async fn website(&self, bucket: &str) -> EngineResult<Option<WebsiteConfig>> {
        Ok(self.bucket(bucket).await?.0.website)
    }

    /// Creates or replaces a site; every node's local view has it when this returns.
    pub async fn put_site(&self, site: SiteRecord) -> EngineResult<()> {
        site.validate()?;
        let txn = Txn::new().then(Op::put(keys::site(&site.name), record::encode(&site)));
        self.meta().txn(txn).await?;
        self.settle().await
    }

    pub async fn site(&self, name: &str) -> EngineResult<SiteRecord> {
        let kv = self.meta().get(&keys::site(name)).await?.ok_or_else(|| EngineError::NoSuchSite(name.into()))?;
        record::decode(&kv.value)
    }

    /// Every stored site, by name, from this node's local view.
    pub async fn list_sites(&self) -> EngineResult<Vec<SiteRecord>> {
        let resp = self.reader(crate::Consistency::Local).range(RangeRequest::prefix(keys::SITES_PREFIX)).await?;
        resp.kvs.iter().map(|kv| record::decode(&kv.value)).collect()
    }

    pub async fn delete_site(&self, name: &str) -> EngineResult<()> {
        let key = keys::site(name);
        let resp = self.meta().txn(Txn::new().when(Compare::exists(key.clone())).then(Op::delete(key))).await?;
        if !resp.succeeded {
            return Err(EngineError::NoSuchSite(name.into()));
        }
        self.settle().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site() -> SiteRecord {
        SiteRecord { name: "xedn".into(), bucket: "xedn".into(), ..Default::default() }
    }

    #[test]
    fn sites_are_checked() {
        assert!(site().validate().is_ok());
        let mounted = SiteRecord { path_prefix: Some("/file/christine-static/".into()), ..site() };
        assert!(mounted.validate().is_ok());
        assert_eq!(mounted.mount(), "/file/christine-static");
        assert_eq!(site().mount(), "");
        for bad in [
            SiteRecord { name: "a/b".into(), ..site() },
            SiteRecord { path_prefix: Some("file".into()), ..site() },
            SiteRecord { path_prefix: Some("/a b".into()), ..site() },
            SiteRecord { host: Some("ex ample".into()), ..site() },
            SiteRecord { bucket: "No".into(), ..site() },
            SiteRecord { cache_control: Some("a\nb".into()), ..site() },
            SiteRecord { index_document: Some("a/index.html".into()), ..site() },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_stored_origin_is_checked_with_the_site() {
        use meridian_common::origin::{Instance, Origin, Region};
        let region = |url: &str| Region {
            name: "ams".into(),
            edge: None,
            instances: vec![Instance { id: "ams-1".into(), url: url.into() }],
        };
        let with = |origin| SiteRecord { origin: Some(origin), ..site() };
        assert!(
            with(Origin { regions: vec![region("http://10.0.0.5:3000")], ..Default::default() }).validate().is_ok()
        );
        let err = with(Origin { regions: vec![region("http://10.0.0.5")], ..Default::default() }).validate();
        assert!(err.is_err_and(|e| e.to_string().contains("invalid origin")));
        let waits =
            Origin { regions: vec![region("http://h:1")], revision_wait_ms: Some(60_000), ..Default::default() };
        assert!(with(waits).validate().is_err());
        assert!(with(Origin::default()).validate().is_err(), "an origin needs a region");
    }

    #[test]
    fn website_configurations_follow_s3s_rules() {
        let index = WebsiteConfig { index_suffix: Some("index.html".into()), ..Default::default() };
        assert!(index.validate().is_ok());
        assert!(WebsiteConfig::default().validate().is_err());
        let all = RedirectAll { host_name: "example.com".into(), protocol: Some("https".into()) };
        assert!(WebsiteConfig { redirect_all: Some(all.clone()), ..Default::default() }.validate().is_ok());
        assert!(WebsiteConfig { redirect_all: Some(all), ..index.clone() }.validate().is_err());
        let rule = |redirect: Redirect| WebsiteConfig {
            routing_rules: vec![RoutingRule { condition: None, redirect }],
            ..index.clone()
        };
        assert!(rule(Redirect { replace_key_with: Some("x".into()), ..Default::default() }).validate().is_ok());
        let both = Redirect {
            replace_key_with: Some("x".into()),
            replace_key_prefix_with: Some("y".into()),
            ..Default::default()
        };
        assert!(rule(both).validate().is_err());
        assert!(rule(Redirect { http_redirect_code: Some(200), ..Default::default() }).validate().is_err());
        assert!(rule(Redirect { protocol: Some("ftp".into()), ..Default::default() }).validate().is_err());
    }
}
