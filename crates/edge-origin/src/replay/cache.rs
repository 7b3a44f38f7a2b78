//! The replay cache: after an origin answered `fly-replay` with `fly-replay-cache` (a path
//! pattern or a session cookie, and a TTL), later matching requests are replayed straight to
//! the target without asking the origin again. In memory, per edge, bounded; an optimisation
//! only (a failed cached replay goes the normal way).

use std::sync::Mutex;
use std::time::Instant;

use http::HeaderMap;

use super::instruction::{CacheRule, Instruction};

/// The most entries one edge keeps (the oldest go first).
pub const MAX_ENTRIES: usize = 4096;

/// What a cached replay matches.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Key {
    Path { host: Option<String>, prefix: String },
    Session { cookie: String, value: String },
}

/// A remembered replay: where to go, and which instance asked first (for `fly-replay-src`).
#[derive(Clone, Debug)]
pub struct CachedReplay {
    pub instruction: Instruction,
    pub asked_by: String,
    /// A client sending `fly-replay-cache-control: skip` goes the normal way instead
    /// (`fly-replay-cache-allow-bypass: yes`, or JSON `allow_bypass`).
    pub allow_bypass: bool,
}

struct Entry {
    key: Key,
    replay: CachedReplay,
    expires: Instant,
}

#[derive(Default)]
pub struct ReplayCache {
    entries: Mutex<Vec<Entry>>,
}

/// The parts of a request the cache looks at.
pub struct Lookup<'a> {
    pub host: &'a str,
    pub path: &'a str,
    pub headers: &'a HeaderMap,
}

impl ReplayCache {
    /// Remembers `replay` under `rule` for `request` (which the rule must match).
    pub fn remember(&self, rule: &CacheRule, request: &Lookup<'_>, replay: CachedReplay) {
        let (key, ttl) = match rule {
            CacheRule::Path { host, prefix, ttl } => {
                let key = Key::Path { host: host.clone(), prefix: prefix.clone() };
                (key, *ttl)
            }
            CacheRule::Session { cookie, ttl } => {
                let Some(value) = cookie_value(request.headers, cookie) else { return };
                (Key::Session { cookie: cookie.clone(), value }, *ttl)
            }
            CacheRule::Invalidate => return self.invalidate(request),
        };
        if !key_matches(&key, request) {
            return;
        }
        let mut entries = self.lock();
        let now = Instant::now();
        entries.retain(|e| e.expires > now && e.key != key);
        if entries.len() >= MAX_ENTRIES {
            entries.remove(0);
        }
        entries.push(Entry { key, replay, expires: now + ttl });
    }

    /// The cached replay for `request`, if any (the most specific path prefix wins over a
    /// shorter one; a session match wins over paths).
    pub fn find(&self, request: &Lookup<'_>) -> Option<CachedReplay> {
        let now = Instant::now();
        let entries = self.lock();
        entries
            .iter()
            .filter(|e| e.expires > now && key_matches(&e.key, request))
            .max_by_key(|e| match &e.key {
                Key::Session { .. } => usize::MAX,
                Key::Path { prefix, .. } => prefix.len(),
            })
            .map(|e| e.replay.clone())
    }

    /// Forgets every cached replay matching `request`.
    pub fn invalidate(&self, request: &Lookup<'_>) {
        self.lock().retain(|e| !key_matches(&e.key, request));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn key_matches(key: &Key, request: &Lookup<'_>) -> bool {
    match key {
        Key::Path { host, prefix } => {
            let host_ok = host.as_deref().is_none_or(|h| h.eq_ignore_ascii_case(without_port(request.host)));
            host_ok && request.path.starts_with(prefix.as_str())
        }
        Key::Session { cookie, value } => cookie_value(request.headers, cookie).as_deref() == Some(value.as_str()),
    }
}

fn without_port(host: &str) -> &str {
    host.rsplit_once(':').filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit())).map_or(host, |(h, _)| h)
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    let values = headers.get_all(http::header::COOKIE).iter().filter_map(|v| v.to_str().ok());
    meridian_common::cookie::cookie_value(values, name).map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::instruction::RegionChoice;
    use std::time::Duration;

    const TEST_TTL: Duration = Duration::from_secs(30);

    fn replay(region: &str) -> CachedReplay {
        let instruction = Instruction { regions: vec![RegionChoice::Named(region.into())], ..Default::default() };
        CachedReplay { instruction, asked_by: "a1".into(), allow_bypass: false }
    }

    #[test]
    fn path_rules_match_by_host_and_prefix_until_invalidated() {
        let cache = ReplayCache::default();
        let headers = HeaderMap::new();
        let at = |host, path| Lookup { host, path, headers: &headers };
        let rule = CacheRule::Path { host: Some("site.example".into()), prefix: "/w/".into(), ttl: TEST_TTL };
        cache.remember(&rule, &at("site.example", "/w/1"), replay("sjc"));
        assert!(cache.find(&at("site.example:8080", "/w/2")).is_some());
        assert!(cache.find(&at("other.example", "/w/2")).is_none());
        assert!(cache.find(&at("site.example", "/x")).is_none());
        cache.invalidate(&at("site.example", "/w/3"));
        assert!(cache.find(&at("site.example", "/w/2")).is_none());
    }

    #[test]
    fn rules_that_do_not_match_the_request_or_have_expired_are_not_kept() {
        let cache = ReplayCache::default();
        let headers = HeaderMap::new();
        let rule = CacheRule::Path { host: None, prefix: "/w/".into(), ttl: TEST_TTL };
        cache.remember(&rule, &Lookup { host: "h", path: "/other", headers: &headers }, replay("sjc"));
        assert!(cache.find(&Lookup { host: "h", path: "/w/1", headers: &headers }).is_none());
        let rule = CacheRule::Path { host: None, prefix: "/w/".into(), ttl: Duration::ZERO };
        cache.remember(&rule, &Lookup { host: "h", path: "/w/1", headers: &headers }, replay("sjc"));
        assert!(cache.find(&Lookup { host: "h", path: "/w/1", headers: &headers }).is_none());
    }

    #[test]
    fn session_rules_match_the_same_cookie_value() {
        let cache = ReplayCache::default();
        let mut alice = HeaderMap::new();
        alice.insert(http::header::COOKIE, "theme=dark; sid=alice".parse().expect("cookie"));
        let mut bob = HeaderMap::new();
        bob.insert(http::header::COOKIE, "sid=bob".parse().expect("cookie"));
        let rule = CacheRule::Session { cookie: "sid".into(), ttl: TEST_TTL };
        cache.remember(&rule, &Lookup { host: "h", path: "/a", headers: &alice }, replay("sjc"));
        assert!(cache.find(&Lookup { host: "h", path: "/b", headers: &alice }).is_some());
        assert!(cache.find(&Lookup { host: "h", path: "/b", headers: &bob }).is_none());
    }
}
