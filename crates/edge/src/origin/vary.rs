//! Vary-aware caching of origin answers. An answer stored by write-back that carries
//! `Vary: <headers>` is stored per variant: under `<key>;vary=<hash>`, the hash being of the
//! request's normalised values of those headers, with a marker object `<key>;vary` holding the
//! header names (so a later request knows which variant to look for). An answer carrying
//! `x-meridian-derived-from: <source key>` remembers the source's ETag; a variant whose source
//! has since been overwritten or deleted is stale and falls through to the origin again, in
//! every region (the check reads the source's record, which every region knows).

use http::HeaderMap;
use meridian_engine::{Consistency, Engine, GetRequest};
use sha2::{Digest, Sha256};

/// The response header tying an answer to its source object (a key in the site's bucket).
pub const DERIVED_FROM: &str = "x-meridian-derived-from";
/// User metadata of a variant: its source key and the source's ETag when it was derived.
pub const META_SOURCE: &str = "derived-from";
pub const META_SOURCE_ETAG: &str = "derived-etag";
/// The most headers a `Vary` may list for the answer to be cached.
const MAX_VARY_HEADERS: usize = 8;

/// The header names of a cacheable `Vary` (lower case, sorted); `None` when the answer has no
/// `Vary`, and `Some(Err)` when it cannot be cached per variant (`*`, too many names).
pub fn vary_names(headers: &HeaderMap) -> Option<Result<Vec<String>, String>> {
    let values: Vec<&str> = headers.get_all(http::header::VARY).iter().filter_map(|v| v.to_str().ok()).collect();
    if values.is_empty() {
        return None;
    }
    let mut names: Vec<String> = values
        .iter()
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect();
    names.sort();
    names.dedup();
    if names.iter().any(|n| n == "*") {
        return Some(Err("Vary: * cannot be cached".into()));
    }
    if names.len() > MAX_VARY_HEADERS || names.iter().any(|n| http::HeaderName::from_bytes(n.as_bytes()).is_err()) {
        return Some(Err(format!("Vary lists more than {MAX_VARY_HEADERS} headers or an invalid name")));
    }
    Some(Ok(names))
}

/// A request header's value as a variant sees it: list headers (`Accept`, `Accept-*`) as their
/// sorted, lower-case members without spaces; others trimmed.
fn normalised(name: &str, headers: &HeaderMap) -> String {
    let raw: Vec<&str> = headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect();
    if name.starts_with("accept") {
        let mut members: Vec<String> = raw
            .iter()
            .flat_map(|v| v.split(','))
            .map(|m| m.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_ascii_lowercase())
            .filter(|m| !m.is_empty())
            .collect();
        members.sort();
        return members.join(",");
    }
    raw.iter().map(|v| v.trim()).collect::<Vec<_>>().join(",")
}

/// The key of the marker naming the headers `key` varies on.
pub fn marker_key(key: &str) -> String {
    format!("{key};vary")
}

/// The key of the variant of `key` for this request.
pub fn variant_key(key: &str, names: &[String], request: &HeaderMap) -> String {
    let mut hasher = Sha256::new();
    for name in names {
        hasher.update(name.as_bytes());
        hasher.update(b"\n");
        hasher.update(normalised(name, request).as_bytes());
        hasher.update(b"\n");
    }
    let digest = hasher.finalize();
    format!("{key};vary={}", hex::encode(&digest[..12]))
}

/// The header names stored in `key`'s marker, if it has one.
pub async fn stored_names(engine: &Engine, bucket: &str, key: &str) -> Option<Vec<String>> {
    let req = GetRequest {
        bucket: bucket.to_string(),
        key: marker_key(key),
        consistency: Consistency::Local,
        ..Default::default()
    };
    let outcome = engine.get_object(req).await.ok()?;
    let bytes = collect(outcome.body).await?;
    let text = String::from_utf8(bytes).ok()?;
    Some(text.split(',').map(str::to_string).filter(|n| !n.is_empty()).collect())
}

/// Whether the variant at `variant` is still current: no source, or a source whose ETag is
/// the one it was derived from.
pub async fn is_current(engine: &Engine, bucket: &str, variant: &str) -> bool {
    let head = |key: &str| {
        engine.head_object(GetRequest {
            bucket: bucket.to_string(),
            key: key.to_string(),
            consistency: Consistency::Local,
            ..Default::default()
        })
    };
    let Ok(found) = head(variant).await else { return false };
    let meta = &found.record.headers.user_metadata;
    let Some(source) = meta.get(META_SOURCE) else { return true };
    match head(source).await {
        Ok(source) => meta.get(META_SOURCE_ETAG) == Some(&source.record.etag),
        Err(_) => false,
    }
}

/// The source's current ETag, for a variant about to be stored.
pub async fn source_etag(engine: &Engine, bucket: &str, source: &str) -> Option<String> {
    let req = GetRequest {
        bucket: bucket.to_string(),
        key: source.to_string(),
        consistency: Consistency::Local,
        ..Default::default()
    };
    engine.head_object(req).await.ok().map(|o| o.record.etag)
}

async fn collect(body: meridian_engine::Body) -> Option<Vec<u8>> {
    use futures::TryStreamExt;
    let chunks: Vec<bytes::Bytes> = body.try_collect().await.ok()?;
    Some(chunks.concat())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().expect("value"));
        }
        map
    }

    #[test]
    fn vary_names_are_normalised_and_bounded() {
        assert_eq!(vary_names(&HeaderMap::new()), None);
        assert_eq!(
            vary_names(&headers(&[("vary", "Accept, accept-encoding")])),
            Some(Ok(vec!["accept".into(), "accept-encoding".into()]))
        );
        assert!(matches!(vary_names(&headers(&[("vary", "*")])), Some(Err(_))));
    }

    #[test]
    fn variants_differ_by_value_but_not_by_spelling() {
        let names = vec!["accept".to_string()];
        let webp = variant_key("s/a.png", &names, &headers(&[("accept", "image/webp,*/*")]));
        let webp_spaced = variant_key("s/a.png", &names, &headers(&[("accept", "*/* , IMAGE/WEBP")]));
        let avif = variant_key("s/a.png", &names, &headers(&[("accept", "image/avif,image/webp,*/*")]));
        assert_eq!(webp, webp_spaced);
        assert_ne!(webp, avif);
        assert!(webp.starts_with("s/a.png;vary="));
    }
}
