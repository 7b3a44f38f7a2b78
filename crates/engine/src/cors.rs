//! S3's CORS configuration of a bucket (PutBucketCors): rules saying which other origins a
//! browser may let call the bucket, with which methods and headers. Kept in the bucket record;
//! the S3 front end answers preflight requests and adds the response headers from it.

use serde::{Deserialize, Serialize};

use crate::Engine;
use crate::error::{EngineError, EngineResult};

/// Most rules per bucket, as in S3.
pub const MAX_RULES: usize = 100;
/// The methods a rule may allow, as in S3.
const METHODS: [&str; 5] = ["GET", "PUT", "HEAD", "POST", "DELETE"];

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorsRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Origins, each with at most one `*` wildcard.
    pub allowed_origins: Vec<String>,
    /// Among GET, PUT, HEAD, POST, DELETE.
    pub allowed_methods: Vec<String>,
    /// Headers a preflight may ask for, each with at most one `*` wildcard; case-insensitive.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_headers: Vec<String>,
    /// Response headers the browser lets scripts read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose_headers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_seconds: Option<i32>,
}

/// A bucket's CORS rules, in order: the first that matches a request applies.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorsConfig {
    pub rules: Vec<CorsRule>,
}

impl CorsConfig {
    /// S3's checks, with its messages (all `InvalidRequest`, as S3 answers them).
    pub fn validate(&self) -> EngineResult<()> {
        if self.rules.is_empty() {
            return Err(EngineError::MalformedXml);
        }
        if self.rules.len() > MAX_RULES {
            return Err(EngineError::InvalidRequest(format!(
                "The number of CORS rules should not exceed allowed limit of {MAX_RULES} rules."
            )));
        }
        for rule in &self.rules {
            rule.validate()?;
        }
        Ok(())
    }

    /// The first rule allowing `method` from `origin` with every header in `headers`.
    pub fn find<'a>(&'a self, origin: &str, method: &str, headers: &[&str]) -> Option<&'a CorsRule> {
        self.rules.iter().find(|rule| rule.allows(origin, method, headers))
    }
}

impl CorsRule {
    fn validate(&self) -> EngineResult<()> {
        if self.allowed_origins.is_empty() || self.allowed_methods.is_empty() {
            return Err(EngineError::MalformedXml);
        }
        if let Some(method) = self.allowed_methods.iter().find(|m| !METHODS.contains(&m.as_str())) {
            return Err(EngineError::InvalidRequest(format!(
                "Found unsupported HTTP method in CORS config. Unsupported method is {method}"
            )));
        }
        if let Some(origin) = self.allowed_origins.iter().find(|o| o.matches('*').count() > 1) {
            return Err(EngineError::InvalidRequest(format!(
                "AllowedOrigin \"{origin}\" can not have more than one wildcard."
            )));
        }
        if let Some(header) = self.allowed_headers.iter().find(|h| h.matches('*').count() > 1) {
            return Err(EngineError::InvalidRequest(format!(
                "AllowedHeader \"{header}\" can not have more than one wildcard."
            )));
        }
        Ok(())
    }

    fn allows(&self, origin: &str, method: &str, headers: &[&str]) -> bool {
        self.allowed_origins.iter().any(|allowed| wildcard_match(allowed, origin, false))
            && self.allowed_methods.iter().any(|m| m == method)
            && headers.iter().all(|h| self.allowed_headers.iter().any(|allowed| wildcard_match(allowed, h, true)))
    }

    /// True when any origin is allowed: the answer says `*` and allows no credentials.
    pub fn any_origin(&self) -> bool {
        self.allowed_origins.iter().any(|o| o == "*")
    }
}

/// `pattern` with at most one `*` standing for any run of characters.
fn wildcard_match(pattern: &str, text: &str, ignore_case: bool) -> bool {
    let (pattern, text) = if ignore_case {
        (pattern.to_ascii_lowercase(), text.to_ascii_lowercase())
    } else {
        (pattern.to_string(), text.to_string())
    };
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, tail)) => text.len() >= head.len() + tail.len() && text.starts_with(head) && text.ends_with(tail),
    }
}

impl Engine {
    /// Sets (`Some`) or removes (`None`) a bucket's CORS configuration.
    pub async fn set_cors(&self, bucket: &str, cors: Option<CorsConfig>) -> EngineResult<()> {
        if let Some(config) = &cors {
            config.validate()?;
        }
        self.update_bucket(bucket, |record| {
            record.cors = cors.clone();
            Ok(())
        })
        .await?;
        Ok(())
    }

    /// The bucket's CORS configuration, from this node's view (what preflights and responses
    /// are answered from).
    pub async fn cors(&self, bucket: &str) -> EngineResult<Option<CorsConfig>> {
        Ok(self.bucket(bucket).await?.0.cors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(origins: &[&str], methods: &[&str], headers: &[&str]) -> CorsRule {
        CorsRule {
            allowed_origins: origins.iter().map(|s| s.to_string()).collect(),
            allowed_methods: methods.iter().map(|s| s.to_string()).collect(),
            allowed_headers: headers.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn the_first_rule_allowing_origin_method_and_headers_applies() {
        let config = CorsConfig {
            rules: vec![
                rule(&["https://*.example.com"], &["PUT"], &["content-type", "x-amz-*"]),
                rule(&["*"], &["GET"], &[]),
            ],
        };
        config.validate().unwrap();
        let first = Some(&config.rules[0]);
        assert_eq!(config.find("https://app.example.com", "PUT", &["Content-Type", "x-amz-date"]), first);
        assert_eq!(config.find("https://app.example.com", "PUT", &["authorization"]), None, "a header not allowed");
        assert_eq!(config.find("http://app.example.com", "PUT", &[]), None, "another scheme is another origin");
        assert_eq!(config.find("https://elsewhere.org", "GET", &[]), Some(&config.rules[1]));
        assert_eq!(config.find("https://elsewhere.org", "GET", &["x-custom"]), None);
        assert_eq!(config.find("https://elsewhere.org", "DELETE", &[]), None);
    }

    #[test]
    fn configurations_s3_refuses_are_refused() {
        let bad_method = CorsConfig { rules: vec![rule(&["*"], &["PATCH"], &[])] };
        assert!(matches!(bad_method.validate(), Err(EngineError::InvalidRequest(m)) if m.contains("PATCH")));
        let two_wildcards = CorsConfig { rules: vec![rule(&["https://*.*.com"], &["GET"], &[])] };
        assert!(matches!(two_wildcards.validate(), Err(EngineError::InvalidRequest(_))));
        assert!(matches!(CorsConfig::default().validate(), Err(EngineError::MalformedXml)));
        let too_many = CorsConfig { rules: vec![rule(&["*"], &["GET"], &[]); MAX_RULES + 1] };
        assert!(too_many.validate().is_err());
    }
}
