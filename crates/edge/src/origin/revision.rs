//! Read your own writes by revision: an origin that wrote through Meridian answers with its
//! write's revision ([`REVISION_HEADER`]); the edge turns it into a session cookie naming the
//! revision and the region that answered, and holds that session's later reads, in any
//! region, until the node's local metadata view has reached the revision. A view still behind
//! after the site's wait sends the request to the writer's region's edge.

use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderValue};
use meridian_engine::Engine;

/// The origin's answer header carrying the revision of its write (consumed by the edge).
pub const REVISION_HEADER: &str = "x-meridian-revision";
/// The session cookie: `<revision>:<region>`.
pub const REVISION_COOKIE: &str = "meridian-edge-revision";
/// How long the cookie lasts.
pub const COOKIE_LIFETIME: Duration = Duration::from_secs(300);
/// What a held read's answer says happened (`reached;waited_ms=N`, or
/// `replayed;region=R;waited_ms=N`, or `behind;waited_ms=N` when there is nowhere to replay).
pub const HOLD_HEADER: &str = "x-meridian-revision-hold";
/// The default bound of a hold.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(2);
/// How often the local view is asked again while holding.
const POLL: Duration = Duration::from_millis(10);

/// Replaces an origin answer's [`REVISION_HEADER`] by the session cookie naming `region`.
pub fn remember(headers: &mut HeaderMap, region: &str) {
    let Some(value) = headers.remove(REVISION_HEADER) else { return };
    let Some(revision) = value.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()) else {
        tracing::warn!(value = ?value, "origin answered an invalid {REVISION_HEADER}; ignored");
        return;
    };
    let cookie = format!(
        "{REVISION_COOKIE}={revision}:{region}; Max-Age={}; Path=/; HttpOnly; SameSite=Lax",
        COOKIE_LIFETIME.as_secs()
    );
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        headers.append(header::SET_COOKIE, value);
    }
}

/// The revision and writer's region of the session's last write, from its cookie.
pub fn session(headers: &HeaderMap) -> Option<(u64, String)> {
    let values = headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok());
    let value = meridian_common::cookie::cookie_value(values, REVISION_COOKIE)?;
    let (revision, region) = value.split_once(':')?;
    Some((revision.trim().parse().ok()?, region.trim().to_string()))
}

/// How a hold ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hold {
    /// The local view reached the revision after this long.
    Reached(Duration),
    /// Still behind (or not answering) when the wait was over.
    Behind(Duration),
}

/// Waits (at most `wait`) until this node's local metadata view has reached `revision`.
pub async fn hold(engine: &Engine, revision: u64, wait: Duration) -> Hold {
    let start = Instant::now();
    let deadline = start + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if let Ok(Ok(local)) = tokio::time::timeout(left, engine.local_revision()).await
            && local >= revision
        {
            return Hold::Reached(start.elapsed());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Hold::Behind(start.elapsed());
        }
        tokio::time::sleep(POLL.min(left)).await;
    }
}

/// Tells the client what the hold did.
pub fn note(headers: &mut HeaderMap, outcome: &str) {
    if let Ok(value) = HeaderValue::from_str(outcome) {
        headers.insert(HOLD_HEADER, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_origin_revision_becomes_the_session_cookie_and_back() {
        let mut answer = HeaderMap::new();
        answer.insert(REVISION_HEADER, HeaderValue::from_static("42"));
        remember(&mut answer, "region-a");
        assert!(!answer.contains_key(REVISION_HEADER), "the header is the edge's, not the client's");
        let cookie = answer[header::SET_COOKIE].to_str().unwrap_or_default().to_string();
        assert_eq!(cookie, "meridian-edge-revision=42:region-a; Max-Age=300; Path=/; HttpOnly; SameSite=Lax");

        let mut request = HeaderMap::new();
        request.insert(header::COOKIE, HeaderValue::from_static("a=b; meridian-edge-revision=42:region-a"));
        assert_eq!(session(&request), Some((42, "region-a".to_string())));
        request.insert(header::COOKIE, HeaderValue::from_static("meridian-edge-revision=x:region-a"));
        assert_eq!(session(&request), None);
    }

    #[test]
    fn an_invalid_revision_sets_no_cookie() {
        let mut answer = HeaderMap::new();
        answer.insert(REVISION_HEADER, HeaderValue::from_static("soon"));
        remember(&mut answer, "region-a");
        assert!(!answer.contains_key(header::SET_COOKIE));
        assert!(!answer.contains_key(REVISION_HEADER));
    }
}
