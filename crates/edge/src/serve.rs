//! Step 2 of the pipeline: answering from the bucket. Index documents for "directories" (served
//! directly, never by redirect), the error document with status 404, preconditions (304/412),
//! ranges (206, `multipart/byteranges`, 416), precompressed siblings, and headers.
//!
//! Every answer comes from one read of one version of one object: the engine commits an object
//! whole, and a multi-range or `If-Range` answer reads its bytes under `If-Match` on the ETag
//! it decided on, so a concurrent overwrite can never mix two versions in one response.

use bytes::Bytes;
use futures::{Stream, TryStreamExt};
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use meridian_engine::conditions::{ETagMatch, ReadConditions};
use meridian_engine::record::{DataLayout, ObjectRecord};
use meridian_engine::{BodyError, ByteRange, Consistency, Engine, EngineError, ErrorKind, GetOutcome, GetRequest};
use meridian_http::ResponseBody;

use crate::cache::{CacheKey, Entry, ResponseCache};
use crate::range::{self, Multipart};
use crate::redirect::{self, Origin};
use crate::sites::Target;

/// What the client asked, beyond the target.
pub struct Ask<'a> {
    pub head: bool,
    pub headers: &'a HeaderMap,
    /// The Host header, for redirects that keep the host.
    pub host: &'a str,
    pub https: bool,
}

/// `Cache-Control` of HTML without one of its own or of its site: browsers revalidate (cheap
/// with the ETag), so a new page shows at once.
pub const HTML_CACHE_CONTROL: &str = "public, max-age=0, must-revalidate";
/// `Cache-Control` of every other object without one of its own or of its site.
pub const ASSET_CACHE_CONTROL: &str = "public, max-age=3600";

/// Times a multi-range or `If-Range` read starts over when the object changes between deciding
/// and reading.
const MAX_PINNED_ATTEMPTS: usize = 4;

/// The answer for `target`.
pub async fn answer(engine: &Engine, cache: &ResponseCache, target: &Target, ask: &Ask<'_>) -> Response<ResponseBody> {
    match stored(engine, cache, target, ask).await {
        Some(resp) => resp,
        None => missing(engine, cache, target, ask).await,
    }
}

/// The answer from what the bucket holds for `target`; `None` when it holds nothing there
/// (the origin fall-through's turn).
pub async fn stored(
    engine: &Engine,
    cache: &ResponseCache,
    target: &Target,
    ask: &Ask<'_>,
) -> Option<Response<ResponseBody>> {
    let origin = Origin { https: ask.https, host: ask.host };
    let rules = target.website.as_ref().map(|w| w.routing_rules.as_slice()).unwrap_or_default();
    if let Some(all) = target.website.as_ref().and_then(|w| w.redirect_all.as_ref()) {
        return Some(redirect::redirect_all(all, &target.rest, &origin));
    }
    if let Some(resp) = redirect::routing(rules, &target.rest, None, &origin) {
        return Some(resp);
    }
    for rest in candidates(&target.rest, target.index.as_deref()) {
        let key = format!("{}{rest}", target.key_prefix);
        if let Some(resp) = send(engine, cache, target, &key, ask, Purpose::Requested).await {
            return Some(resp);
        }
    }
    None
}

/// The answer when the bucket holds nothing for `target`: a 404 routing rule, the error
/// document, or a plain 404.
async fn missing(engine: &Engine, cache: &ResponseCache, target: &Target, ask: &Ask<'_>) -> Response<ResponseBody> {
    let origin = Origin { https: ask.https, host: ask.host };
    let rules = target.website.as_ref().map(|w| w.routing_rules.as_slice()).unwrap_or_default();
    if let Some(resp) = redirect::routing(rules, &target.rest, Some(404), &origin) {
        return resp;
    }
    if let Some(error_key) = &target.error_key {
        let key = format!("{}{error_key}", target.key_prefix);
        if let Some(resp) = send(engine, cache, target, &key, ask, Purpose::ErrorDocument).await {
            return resp;
        }
    }
    not_found()
}

/// The keys (relative to the key prefix) a path may name, in order: a "directory" (`""`,
/// `docs/`) names its index document; `docs` names `docs`, else `docs/<index>`.
fn candidates(rest: &str, index: Option<&str>) -> Vec<String> {
    let directory = rest.is_empty() || rest.ends_with('/');
    match index {
        Some(index) if directory => vec![format!("{rest}{index}")],
        Some(index) => vec![rest.to_string(), format!("{rest}/{index}")],
        None if directory => Vec::new(),
        None => vec![rest.to_string()],
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Requested,
    /// Sent with status 404; the request's ranges and preconditions are about the missing
    /// object, not this one.
    ErrorDocument,
}

/// The answer from `key` (or a precompressed sibling), `None` if the key does not exist.
async fn send(
    engine: &Engine,
    cache: &ResponseCache,
    target: &Target,
    key: &str,
    ask: &Ask<'_>,
    purpose: Purpose,
) -> Option<Response<ResponseBody>> {
    let guessed = mime_guess::from_path(key).first_raw();
    let compressible = guessed.is_some_and(is_compressible);
    let encodings =
        if purpose == Purpose::Requested && compressible { accepted_encodings(ask.headers) } else { Vec::new() };
    let cache_key = cacheable(ask, purpose).then(|| CacheKey {
        bucket: &target.bucket,
        key,
        encodings: encodings.iter().fold(0, |bits, (name, _)| bits | encoding_bit(name)),
        site_cache_control: target.cache_control.as_deref(),
    });
    if let Some(cache_key) = cache_key
        && let Some(resp) = cache.get(engine, cache_key).await
    {
        return Some(resp);
    }
    let mut reply = Reply { target, key, ask, purpose, compressible, encoding: None };
    let mut seen = Vec::new();
    for (encoding, suffix) in encodings {
        reply.encoding = Some(encoding);
        let sibling = format!("{key}{suffix}");
        match read(engine, &target.bucket, &sibling, &reply).await {
            Err(Failure::Missing) => seen.push((sibling, None)),
            result => {
                return Some(reply.respond_kept(engine, result, seen, sibling, cache_key.map(|k| (cache, k))).await);
            }
        }
    }
    reply.encoding = None;
    match read(engine, &target.bucket, key, &reply).await {
        Err(Failure::Missing) => None,
        result => Some(reply.respond_kept(engine, result, seen, key.to_string(), cache_key.map(|k| (cache, k))).await),
    }
}

/// The precompressed encodings looked for, best first: `(Content-Encoding, key suffix)`.
const PRECOMPRESSED: [(&str, &str); 2] = [("br", ".br"), ("gzip", ".gz")];

/// The bit of an encoding of [`PRECOMPRESSED`] in [`CacheKey::encodings`].
fn encoding_bit(name: &str) -> u8 {
    PRECOMPRESSED.iter().position(|(known, _)| *known == name).map_or(0, |i| 1 << i)
}

/// Whether the answer to this request may be kept: a plain GET of the object asked for.
fn cacheable(ask: &Ask<'_>, purpose: Purpose) -> bool {
    const DECIDING: [header::HeaderName; 5] = [
        header::RANGE,
        header::IF_MATCH,
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::IF_UNMODIFIED_SINCE,
    ];
    !ask.head && purpose == Purpose::Requested && !DECIDING.iter().any(|name| ask.headers.contains_key(name))
}

/// One object's read, as the response needs it.
struct Served {
    outcome: GetOutcome,
    multipart: Option<Multipart>,
}

enum Failure {
    Missing,
    NotModified { etag: String, last_modified_ms: i64 },
    Answer(Response<ResponseBody>),
}

/// Reads `key` with the request's preconditions and ranges (for the error document: without).
async fn read(engine: &Engine, bucket: &str, key: &str, reply: &Reply<'_>) -> Result<Served, Failure> {
    let honour_request = reply.purpose == Purpose::Requested;
    let headers = reply.ask.headers;
    let conditions = if honour_request { read_conditions(headers) } else { ReadConditions::default() };
    let ranges = honour_request.then(|| header_str(headers, header::RANGE).and_then(range::parse)).flatten();
    // The local view: an edge answers from its own region's metadata replica (never behind this
    // node's own writes; a miss is confirmed strongly by the engine before it falls through).
    let base = GetRequest {
        bucket: bucket.to_string(),
        key: key.to_string(),
        conditions,
        consistency: Consistency::Local,
        ..Default::default()
    };
    match ranges {
        Some(ranges) if ranges.len() > 1 || headers.contains_key(header::IF_RANGE) => {
            read_pinned(engine, base, &ranges, reply).await
        }
        ranges => {
            let req = GetRequest { range: ranges.map(|r| r[0]), ..base };
            let outcome = fetch(engine, req, reply.ask.head).await?;
            Ok(Served { outcome, multipart: None })
        }
    }
}

/// Several ranges, or a range under `If-Range`: decide from the object's record, then read
/// exactly that version (`If-Match` on its ETag), starting over if it changed meanwhile.
async fn read_pinned(
    engine: &Engine,
    base: GetRequest,
    ranges: &[ByteRange],
    reply: &Reply<'_>,
) -> Result<Served, Failure> {
    for _ in 0..MAX_PINNED_ATTEMPTS {
        let record = engine.head_object(base.clone()).await.map_err(failure)?.record;
        let wanted =
            if if_range_holds(reply.ask.headers, &record) { Some(range::resolve(ranges, record.size)) } else { None };
        if wanted.as_ref().is_some_and(Vec::is_empty) {
            return Err(Failure::Answer(unsatisfiable(record.size)));
        }
        let mut conditions = base.conditions.clone();
        conditions.if_match = Some(ETagMatch::Tags(vec![record.etag.clone()]));
        let (range, multipart) = match wanted {
            None => (None, None),
            Some(w) if w.len() == 1 => (Some(ByteRange::From { first: w[0].0, last: Some(w[0].1) }), None),
            Some(w) => {
                let multipart = Multipart::new(w, record.size, &reply.content_type(&record));
                let (first, last) = multipart.covering();
                (Some(ByteRange::From { first, last: Some(last) }), Some(multipart))
            }
        };
        let req = GetRequest { range, conditions, ..base.clone() };
        match fetch(engine, req, reply.ask.head).await {
            Ok(outcome) => return Ok(Served { outcome, multipart }),
            // Replaced between the two reads: decide again on the new version.
            Err(Failure::Answer(resp)) if resp.status() == StatusCode::PRECONDITION_FAILED => continue,
            Err(other) => return Err(other),
        }
    }
    Err(Failure::Answer(plain(StatusCode::SERVICE_UNAVAILABLE, "the object is being overwritten too often; retry")))
}

async fn fetch(engine: &Engine, req: GetRequest, head: bool) -> Result<GetOutcome, Failure> {
    let result = if head { engine.head_object(req).await } else { engine.get_object(req).await };
    result.map_err(failure)
}

fn failure(err: EngineError) -> Failure {
    match err {
        EngineError::NotModified { etag, last_modified_ms } => Failure::NotModified { etag, last_modified_ms },
        EngineError::PreconditionFailed => {
            Failure::Answer(plain(StatusCode::PRECONDITION_FAILED, "a precondition of the request did not hold"))
        }
        EngineError::InvalidRange { size } => Failure::Answer(unsatisfiable(size)),
        err if err.kind() == ErrorKind::NotFound => Failure::Missing,
        err => Failure::Answer(engine_failure(&err)),
    }
}

/// `If-Range`: an ETag must match exactly (strong comparison); a date must equal the object's
/// last modification (to the second).
fn if_range_holds(headers: &HeaderMap, record: &ObjectRecord) -> bool {
    let Some(value) = header_str(headers, header::IF_RANGE) else { return true };
    let value = value.trim();
    if value.starts_with('"') {
        return value.trim_matches('"') == record.etag;
    }
    httpdate::parse_http_date(value)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .is_some_and(|t| t.as_secs() as i64 == record.modified_ms.div_euclid(1000))
}

fn read_conditions(headers: &HeaderMap) -> ReadConditions {
    let date = |name| {
        header_str(headers, name)
            .and_then(|v| httpdate::parse_http_date(v).ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs() as i64)
    };
    ReadConditions {
        if_match: header_str(headers, header::IF_MATCH).map(ETagMatch::parse),
        if_none_match: header_str(headers, header::IF_NONE_MATCH).map(ETagMatch::parse),
        if_modified_since: date(header::IF_MODIFIED_SINCE),
        if_unmodified_since: date(header::IF_UNMODIFIED_SINCE),
    }
}

/// The precompressed encodings the client takes, best first: `(Content-Encoding, key suffix)`.
fn accepted_encodings(headers: &HeaderMap) -> Vec<(&'static str, &'static str)> {
    let Some(accept) = header_str(headers, header::ACCEPT_ENCODING) else { return Vec::new() };
    let takes = |name: &str| {
        accept.split(',').any(|item| {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            let refused = parts
                .any(|p| p.trim().strip_prefix("q=").is_some_and(|q| q.trim().parse::<f32>().is_ok_and(|q| q <= 0.0)));
            (coding.eq_ignore_ascii_case(name) || coding == "*") && !refused
        })
    };
    PRECOMPRESSED.into_iter().filter(|(name, _)| takes(name)).collect()
}

/// Types worth precompressing (the only ones whose siblings are looked for).
fn is_compressible(content_type: &str) -> bool {
    content_type.starts_with("text/")
        || content_type.ends_with("javascript")
        || content_type.ends_with("json")
        || content_type.ends_with("xml")
        || content_type == "application/wasm"
}

/// How one object is answered.
struct Reply<'a> {
    target: &'a Target,
    /// The key asked for (a sibling's type and caching are those of this key).
    key: &'a str,
    ask: &'a Ask<'a>,
    purpose: Purpose,
    compressible: bool,
    /// Set when a precompressed sibling is being served.
    encoding: Option<&'static str>,
}

impl Reply<'_> {
    /// [`Reply::respond`], keeping the answer in the target's cache under `cache_key` when it
    /// is a whole object stored inline. `seen`: the keys consulted before `served_key`, which
    /// had no record.
    async fn respond_kept(
        &self,
        engine: &Engine,
        result: Result<Served, Failure>,
        mut seen: Vec<(String, Option<meridian_engine::Revision>)>,
        served_key: String,
        keep_in: Option<(&ResponseCache, CacheKey<'_>)>,
    ) -> Response<ResponseBody> {
        // A missing sibling can only be trusted later where the local view is the strong one.
        let misses_trusted = seen.is_empty() || engine.local_view_is_strong();
        let (cache, cache_key, mut served) = match (result, keep_in) {
            (Ok(served), Some((cache, cache_key)))
                if misses_trusted
                    && served.multipart.is_none()
                    && served.outcome.range.is_none()
                    && served.outcome.record.data == DataLayout::Inline =>
            {
                (cache, cache_key, served)
            }
            (result, _) => return self.respond(result),
        };
        let body = match served.outcome.body.try_collect::<Vec<Bytes>>().await {
            Ok(chunks) => chunks.concat().into(),
            Err(e) => {
                tracing::error!(error = %e, "the edge could not read an object's inline bytes");
                return plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
            }
        };
        served.outcome.body = meridian_engine::body_from_bytes(Bytes::clone(&body));
        let expires_at_ms = served.outcome.record.expires_at_ms;
        seen.push((served_key, Some(served.outcome.revision)));
        let resp = self.object(served);
        cache.insert(Entry::new(cache_key, seen, expires_at_ms, (resp.status(), resp.headers().clone(), body)));
        resp
    }

    fn respond(&self, result: Result<Served, Failure>) -> Response<ResponseBody> {
        match result {
            Ok(served) => self.object(served),
            Err(Failure::NotModified { etag, last_modified_ms }) => self.not_modified(&etag, last_modified_ms),
            Err(Failure::Answer(resp)) => resp,
            Err(Failure::Missing) => not_found(),
        }
    }

    /// The stored type, unless none or only "some bytes" (S3's default `binary/octet-stream`,
    /// or `application/octet-stream`, which SDKs send when told nothing) was stored, or a
    /// sibling is served: then the type guessed from the key's extension.
    fn content_type(&self, record: &ObjectRecord) -> String {
        let stored = record
            .headers
            .content_type
            .as_deref()
            .filter(|t| !matches!(*t, "binary/octet-stream" | "application/octet-stream"));
        match stored {
            Some(stored) if self.encoding.is_none() => stored.to_string(),
            _ => mime_guess::from_path(self.key).first_raw().unwrap_or("application/octet-stream").to_string(),
        }
    }

    fn cache_control(&self, stored: Option<&str>, content_type: &str) -> String {
        let default = if content_type.starts_with("text/html") { HTML_CACHE_CONTROL } else { ASSET_CACHE_CONTROL };
        stored.or(self.target.cache_control.as_deref()).unwrap_or(default).to_string()
    }

    fn object(&self, served: Served) -> Response<ResponseBody> {
        let Served { outcome, multipart } = served;
        let record = &outcome.record;
        let content_type = self.content_type(record);
        let mut resp = Response::new(meridian_http::empty());
        let headers = resp.headers_mut();
        set(
            headers,
            header::CACHE_CONTROL,
            &self.cache_control(record.headers.cache_control.as_deref(), &content_type),
        );
        set(headers, header::ETAG, &format!("\"{}\"", record.etag));
        set(headers, header::LAST_MODIFIED, &http_date(record.modified_ms));
        set(headers, header::ACCEPT_RANGES, "bytes");
        if self.compressible {
            set(headers, header::VARY, "accept-encoding");
        }
        if let Some(encoding) = self.encoding.or(record.headers.content_encoding.as_deref()) {
            set(headers, header::CONTENT_ENCODING, encoding);
        }
        for (name, value) in [
            (header::CONTENT_DISPOSITION, &record.headers.content_disposition),
            (header::CONTENT_LANGUAGE, &record.headers.content_language),
            (header::EXPIRES, &record.headers.expires),
        ] {
            if let Some(value) = value {
                set(headers, name, value);
            }
        }
        let status = match (&multipart, outcome.range, self.purpose) {
            (_, _, Purpose::ErrorDocument) => StatusCode::NOT_FOUND,
            (Some(_), _, _) | (None, Some(_), _) => StatusCode::PARTIAL_CONTENT,
            (None, None, _) => StatusCode::OK,
        };
        *resp.status_mut() = status;
        let length = match &multipart {
            Some(multipart) => {
                set(
                    resp.headers_mut(),
                    header::CONTENT_TYPE,
                    &format!("multipart/byteranges; boundary={}", multipart.boundary),
                );
                multipart.content_length()
            }
            None => {
                set(resp.headers_mut(), header::CONTENT_TYPE, &content_type);
                if let Some((first, last)) = outcome.range {
                    set(resp.headers_mut(), header::CONTENT_RANGE, &format!("bytes {first}-{last}/{}", record.size));
                }
                outcome.content_length()
            }
        };
        resp.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        if !self.ask.head {
            *resp.body_mut() = match multipart {
                Some(multipart) => stream_body(multipart.body(outcome.body)),
                None => stream_body(outcome.body),
            };
        }
        resp
    }

    fn not_modified(&self, etag: &str, last_modified_ms: i64) -> Response<ResponseBody> {
        let mut resp = Response::new(meridian_http::empty());
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
        let guessed = mime_guess::from_path(self.key).first_raw().unwrap_or("");
        let headers = resp.headers_mut();
        set(headers, header::ETAG, &format!("\"{etag}\""));
        set(headers, header::LAST_MODIFIED, &http_date(last_modified_ms));
        set(headers, header::CACHE_CONTROL, &self.cache_control(None, guessed));
        if self.compressible {
            set(headers, header::VARY, "accept-encoding");
        }
        resp
    }
}

fn stream_body(body: impl Stream<Item = Result<Bytes, BodyError>> + Send + 'static) -> ResponseBody {
    meridian_http::boxed(http_body_util::StreamBody::new(body.map_ok(http_body::Frame::data)))
}

fn set(headers: &mut HeaderMap, name: header::HeaderName, value: &str) {
    // Stored values were checked as header values when written; one that is not is left out.
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn http_date(ms: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    httpdate::fmt_http_date(at)
}

fn unsatisfiable(size: u64) -> Response<ResponseBody> {
    let mut resp = plain(StatusCode::RANGE_NOT_SATISFIABLE, "the requested range is not satisfiable");
    set(resp.headers_mut(), header::CONTENT_RANGE, &format!("bytes */{size}"));
    resp
}

pub fn plain(status: StatusCode, text: &str) -> Response<ResponseBody> {
    meridian_http::text_response(status, text)
}

pub fn not_found() -> Response<ResponseBody> {
    plain(StatusCode::NOT_FOUND, "not found")
}

/// A failure of the engine that is not about the object being absent.
pub fn engine_failure(err: &EngineError) -> Response<ResponseBody> {
    match err.kind() {
        ErrorKind::Invalid => plain(StatusCode::BAD_REQUEST, &err.to_string()),
        ErrorKind::NotFound => not_found(),
        ErrorKind::Unavailable | ErrorKind::Contended => plain(StatusCode::SERVICE_UNAVAILABLE, &err.to_string()),
        ErrorKind::Denied | ErrorKind::Conflict | ErrorKind::Internal => {
            tracing::error!(error = %err, "the edge could not read an object");
            plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_name_their_index_document() {
        assert_eq!(candidates("", Some("index.html")), vec!["index.html"]);
        assert_eq!(candidates("docs/", Some("index.html")), vec!["docs/index.html"]);
        assert_eq!(candidates("docs", Some("index.html")), vec!["docs", "docs/index.html"]);
        assert_eq!(candidates("docs", None), vec!["docs"]);
        assert!(candidates("docs/", None).is_empty());
    }

    #[test]
    fn accept_encoding_picks_br_then_gzip() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(value).unwrap());
            accepted_encodings(&headers).into_iter().map(|(name, _)| name).collect::<Vec<_>>()
        };
        assert_eq!(with("gzip, deflate, br"), vec!["br", "gzip"]);
        assert_eq!(with("gzip"), vec!["gzip"]);
        assert_eq!(with("br;q=0, gzip;q=0.5"), vec!["gzip"]);
        assert_eq!(with("*"), vec!["br", "gzip"]);
        assert!(with("identity").is_empty());
        assert!(accepted_encodings(&HeaderMap::new()).is_empty());
    }

    #[test]
    fn only_text_like_types_are_precompressed() {
        for yes in [
            "text/html",
            "text/css",
            "application/javascript",
            "text/javascript",
            "application/json",
            "image/svg+xml",
            "application/wasm",
        ] {
            assert!(is_compressible(yes), "{yes}");
        }
        for no in ["image/png", "video/mp4", "application/octet-stream", "font/woff2"] {
            assert!(!is_compressible(no), "{no}");
        }
    }
}
