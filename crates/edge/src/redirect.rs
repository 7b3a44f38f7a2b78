//! S3 website redirects: `RedirectAllRequestsTo` and routing rules. These are the only
//! redirects the edge ever answers, and only because a bucket's website configuration asks.

use http::{HeaderValue, Response, StatusCode, header};
use meridian_engine::website::{Redirect, RedirectAll, RoutingRule};
use meridian_http::ResponseBody;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// What stays as is in a key placed in a `Location` path.
const KEY_IN_PATH: &AsciiSet = &NON_ALPHANUMERIC.remove(b'/').remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// The request's own scheme and host, for redirects that name neither.
pub struct Origin<'a> {
    pub https: bool,
    pub host: &'a str,
}

pub fn redirect_all(all: &RedirectAll, key: &str, origin: &Origin) -> Response<ResponseBody> {
    let protocol = all.protocol.as_deref().unwrap_or(if origin.https { "https" } else { "http" });
    respond(StatusCode::MOVED_PERMANENTLY, &location(protocol, &all.host_name, key))
}

/// The first rule that applies to `key`, before the lookup (`error: None`, rules without an
/// error-code condition) or after it failed with `error`, as the redirect to answer.
pub fn routing(
    rules: &[RoutingRule],
    key: &str,
    error: Option<u16>,
    origin: &Origin,
) -> Option<Response<ResponseBody>> {
    let rule = rules.iter().find(|rule| applies(rule, key, error))?;
    let prefix = rule.condition.as_ref().and_then(|c| c.key_prefix_equals.as_deref()).unwrap_or("");
    Some(follow(&rule.redirect, key, prefix, origin))
}

fn applies(rule: &RoutingRule, key: &str, error: Option<u16>) -> bool {
    let Some(condition) = &rule.condition else { return error.is_none() };
    let prefix_ok = condition.key_prefix_equals.as_deref().is_none_or(|p| key.starts_with(p));
    prefix_ok && condition.http_error_code_returned_equals == error
}

fn follow(redirect: &Redirect, key: &str, matched_prefix: &str, origin: &Origin) -> Response<ResponseBody> {
    let new_key = match (&redirect.replace_key_with, &redirect.replace_key_prefix_with) {
        (Some(whole), _) => whole.clone(),
        (None, Some(prefix)) => format!("{prefix}{}", key.strip_prefix(matched_prefix).unwrap_or(key)),
        (None, None) => key.to_string(),
    };
    let protocol = redirect.protocol.as_deref().unwrap_or(if origin.https { "https" } else { "http" });
    let host = redirect.host_name.as_deref().unwrap_or(origin.host);
    let status = redirect
        .http_redirect_code
        .and_then(|code| StatusCode::from_u16(code).ok())
        .unwrap_or(StatusCode::MOVED_PERMANENTLY);
    respond(status, &location(protocol, host, &new_key))
}

fn location(protocol: &str, host: &str, key: &str) -> String {
    format!("{protocol}://{host}/{}", utf8_percent_encode(key, KEY_IN_PATH))
}

fn respond(status: StatusCode, location: &str) -> Response<ResponseBody> {
    let mut resp = Response::new(meridian_http::empty());
    *resp.status_mut() = status;
    if let Ok(value) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, value);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_engine::website::RuleCondition;

    fn rule(prefix: Option<&str>, code: Option<u16>, redirect: Redirect) -> RoutingRule {
        RoutingRule {
            condition: Some(RuleCondition {
                key_prefix_equals: prefix.map(str::to_string),
                http_error_code_returned_equals: code,
            }),
            redirect,
        }
    }

    fn location_of(resp: Option<Response<ResponseBody>>) -> Option<(u16, String)> {
        resp.map(|r| (r.status().as_u16(), r.headers()[header::LOCATION].to_str().unwrap().to_string()))
    }

    #[test]
    fn rules_apply_in_order_before_or_after_the_lookup() {
        let origin = Origin { https: false, host: "site.web.test:8080" };
        let rules = vec![
            rule(
                Some("docs/"),
                None,
                Redirect { replace_key_prefix_with: Some("documents/".into()), ..Default::default() },
            ),
            rule(
                None,
                Some(404),
                Redirect {
                    host_name: Some("fallback.example".into()),
                    protocol: Some("https".into()),
                    replace_key_with: Some("404 page.html".into()),
                    http_redirect_code: Some(302),
                    ..Default::default()
                },
            ),
        ];
        assert_eq!(
            location_of(routing(&rules, "docs/a b.html", None, &origin)),
            Some((301, "http://site.web.test:8080/documents/a%20b.html".into()))
        );
        assert_eq!(location_of(routing(&rules, "other.html", None, &origin)), None);
        assert_eq!(
            location_of(routing(&rules, "other.html", Some(404), &origin)),
            Some((302, "https://fallback.example/404%20page.html".into()))
        );
        assert_eq!(location_of(routing(&rules, "other.html", Some(403), &origin)), None);
    }

    #[test]
    fn redirect_all_keeps_the_key() {
        let all = RedirectAll { host_name: "www.example.com".into(), protocol: None };
        let resp = redirect_all(&all, "a/b", &Origin { https: true, host: "x" });
        assert_eq!(location_of(Some(resp)), Some((301, "https://www.example.com/a/b".into())));
    }
}
