//! The `fly-replay` instruction an origin answers with, in its two forms, as a typed value:
//!
//! - the header, `fly-replay: region="sjc,any";state=abc;timeout=2s;fallback=prefer_self`
//!   (fields separated by `;`, values optionally in double quotes);
//! - the JSON body of an answer with `Content-Type: application/vnd.fly.replay+json`, with the
//!   same fields plus `transform` (`path`, `set_headers: [{"name", "value"}]`,
//!   `delete_headers: ["name"]`).
//!
//! And the replay cache an origin can ask for alongside (`fly-replay-cache`,
//! `fly-replay-cache-ttl-secs`). Anything malformed is an [`InstructionError`] naming the field.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use meridian_common::duration::{DurationError, parse_duration};
use serde::Deserialize;

/// The JSON form's content type.
pub const JSON_CONTENT_TYPE: &str = "application/vnd.fly.replay+json";
/// The longest JSON instruction the edge reads.
pub const MAX_JSON_BYTES: usize = 64 << 10;
/// The longest `timeout` an origin may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(300);
/// The shortest replay-cache TTL (as Fly's proxy).
pub const MIN_CACHE_TTL: Duration = Duration::from_secs(10);
/// The longest replay-cache TTL.
pub const MAX_CACHE_TTL: Duration = Duration::from_secs(24 * 3600);

/// Where a replay may go, in order of preference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegionChoice {
    Named(String),
    /// `any`: any region with a candidate.
    Any,
}

/// What to do when the replay cannot be done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fallback {
    /// Deliver the request again to the instance that asked for the replay, else fail.
    ForceSelf,
    /// That instance first, else any instance of the local region.
    PreferSelf,
}

/// Changes to the replayed request (JSON form only).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Transform {
    /// A new path (and query) for the replayed request.
    pub path: Option<String>,
    pub set_headers: Vec<(HeaderName, HeaderValue)>,
    pub delete_headers: Vec<HeaderName>,
}

/// A parsed `fly-replay` instruction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Instruction {
    pub regions: Vec<RegionChoice>,
    pub instance: Option<String>,
    pub prefer_instance: Option<String>,
    /// Try another instance than the one that answered (load shedding).
    pub elsewhere: bool,
    pub state: Option<String>,
    pub timeout: Option<Duration>,
    pub fallback: Option<Fallback>,
    /// Another app: the origin of the Meridian site of that name (Fly's `app`).
    pub app: Option<String>,
    /// JSON `allow_bypass`: a cached replay of this instruction may be skipped by a client
    /// sending `fly-replay-cache-control: skip` (as `fly-replay-cache-allow-bypass: yes`).
    pub allow_bypass: bool,
    pub transform: Transform,
}

/// What an origin asked the edge to remember about a replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheRule {
    /// Requests for `host` (any host when `None`) whose path starts with `prefix` go straight
    /// to the target.
    Path { host: Option<String>, prefix: String, ttl: Duration },
    /// Requests carrying the same value of this cookie go straight to the target.
    Session { cookie: String, ttl: Duration },
    /// Forget the cached replays matching this request.
    Invalidate,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InstructionError {
    #[error("fly-replay is empty")]
    Empty,
    #[error("fly-replay field {0:?} has no value (expected name=value)")]
    MissingValue(String),
    #[error(
        "fly-replay field {0:?} is not supported (known: region, instance, prefer_instance, elsewhere, app, state, timeout, fallback)"
    )]
    UnknownField(String),
    #[error("fly-replay field {0:?} appears twice")]
    Repeated(String),
    #[error("fly-replay has an unterminated quote")]
    UnterminatedQuote,
    #[error("fly-replay region {0:?} is not a region name (letters, digits, '-' and '_', at most 32)")]
    BadRegion(String),
    #[error("fly-replay {field} {value:?} is invalid: {why}")]
    BadValue { field: &'static str, value: String, why: String },
    #[error("fly-replay timeout is invalid: {0}")]
    BadTimeout(DurationError),
    #[error("fly-replay names no target: give region, instance, prefer_instance, app or elsewhere=true")]
    NoTarget,
    #[error("fly-replay JSON is invalid: {0}")]
    Json(String),
    #[error("fly-replay JSON is larger than {MAX_JSON_BYTES} bytes")]
    JsonTooLarge,
    #[error("fly-replay-cache {value:?} is invalid: {why}")]
    BadCache { value: String, why: String },
}

impl Instruction {
    /// Parses the header form.
    pub fn from_header(text: &str) -> Result<Instruction, InstructionError> {
        let mut fields = RawFields::default();
        for field in split_fields(text)? {
            let (name, value) = field.split_once('=').ok_or_else(|| InstructionError::MissingValue(field.clone()))?;
            fields.set(name.trim(), unquote(value.trim()))?;
        }
        fields.into_instruction(Transform::default())
    }

    /// Parses the JSON form.
    pub fn from_json(body: &[u8]) -> Result<Instruction, InstructionError> {
        if body.len() > MAX_JSON_BYTES {
            return Err(InstructionError::JsonTooLarge);
        }
        let json: JsonInstruction = serde_json::from_slice(body).map_err(|e| InstructionError::Json(e.to_string()))?;
        let transform = json.transform.clone().map(JsonTransform::into_transform).transpose()?.unwrap_or_default();
        let allow_bypass = json.allow_bypass.unwrap_or(false);
        let mut instruction = json.into_fields()?.into_instruction(transform)?;
        instruction.allow_bypass = allow_bypass;
        Ok(instruction)
    }
}

/// The fields as text, before checking.
#[derive(Default)]
struct RawFields {
    region: Option<String>,
    instance: Option<String>,
    prefer_instance: Option<String>,
    elsewhere: Option<String>,
    state: Option<String>,
    timeout: Option<String>,
    fallback: Option<String>,
    app: Option<String>,
}

impl RawFields {
    fn set(&mut self, name: &str, value: String) -> Result<(), InstructionError> {
        let slot = match name.to_ascii_lowercase().as_str() {
            "region" => &mut self.region,
            "instance" => &mut self.instance,
            "prefer_instance" => &mut self.prefer_instance,
            "elsewhere" => &mut self.elsewhere,
            "state" => &mut self.state,
            "timeout" => &mut self.timeout,
            "fallback" => &mut self.fallback,
            "app" => &mut self.app,
            _ => return Err(InstructionError::UnknownField(name.to_string())),
        };
        if slot.replace(value).is_some() {
            return Err(InstructionError::Repeated(name.to_string()));
        }
        Ok(())
    }

    fn into_instruction(self, transform: Transform) -> Result<Instruction, InstructionError> {
        let instruction = Instruction {
            regions: self.region.as_deref().map(parse_regions).transpose()?.unwrap_or_default(),
            instance: self.instance.map(|v| checked_token("instance", v)).transpose()?,
            prefer_instance: self.prefer_instance.map(|v| checked_token("prefer_instance", v)).transpose()?,
            elsewhere: self.elsewhere.as_deref().map(parse_bool).transpose()?.unwrap_or(false),
            state: self.state.map(|v| checked_token("state", v)).transpose()?,
            timeout: self.timeout.as_deref().map(parse_timeout).transpose()?,
            fallback: self.fallback.as_deref().map(parse_fallback).transpose()?,
            app: self.app.map(parse_app).transpose()?,
            allow_bypass: false,
            transform,
        };
        let has_target = instruction.app.is_some()
            || !instruction.regions.is_empty()
            || instruction.instance.is_some()
            || instruction.prefer_instance.is_some()
            || instruction.elsewhere;
        if !has_target {
            return Err(InstructionError::NoTarget);
        }
        Ok(instruction)
    }
}

/// Splits on `;` outside double quotes; empty fields are skipped.
fn split_fields(text: &str) -> Result<Vec<String>, InstructionError> {
    let mut fields = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in text.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                current.push(c);
            }
            ';' if !quoted => fields.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    if quoted {
        return Err(InstructionError::UnterminatedQuote);
    }
    fields.push(current);
    let fields: Vec<String> = fields.into_iter().map(|f| f.trim().to_string()).filter(|f| !f.is_empty()).collect();
    if fields.is_empty() {
        return Err(InstructionError::Empty);
    }
    Ok(fields)
}

fn unquote(value: &str) -> String {
    value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value).to_string()
}

fn parse_regions(list: &str) -> Result<Vec<RegionChoice>, InstructionError> {
    list.split(',')
        .map(str::trim)
        .map(|name| match name {
            "any" => Ok(RegionChoice::Any),
            _ if is_region_name(name) => Ok(RegionChoice::Named(name.to_string())),
            _ => Err(InstructionError::BadRegion(name.to_string())),
        })
        .collect()
}

pub use meridian_common::origin::is_region_name;

/// Instance ids and state travel in headers: printable ASCII without `;`, `"` or `,`.
fn checked_token(field: &'static str, value: String) -> Result<String, InstructionError> {
    let bad = |why: &str| InstructionError::BadValue { field, value: value.clone(), why: why.to_string() };
    if value.is_empty() {
        return Err(bad("it is empty"));
    }
    if value.len() > 256 {
        return Err(bad("it is longer than 256 bytes"));
    }
    if !value.bytes().all(|b| b.is_ascii_graphic() && !matches!(b, b';' | b'"' | b',')) {
        return Err(bad("only printable ASCII without spaces, ';', ',' or '\"' may be used"));
    }
    Ok(value)
}

fn parse_bool(value: &str) -> Result<bool, InstructionError> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(InstructionError::BadValue {
            field: "elsewhere",
            value: value.into(),
            why: "expected true or false".into(),
        }),
    }
}

/// An app is a Meridian site: 1 to 64 letters, digits, `-`, `_` or `.`.
fn parse_app(value: String) -> Result<String, InstructionError> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        return Ok(value);
    }
    let why = "expected a site name (1 to 64 letters, digits, '-', '_' or '.')".to_string();
    Err(InstructionError::BadValue { field: "app", value, why })
}

fn parse_timeout(value: &str) -> Result<Duration, InstructionError> {
    let timeout = parse_duration(value).map_err(InstructionError::BadTimeout)?;
    if timeout.is_zero() || timeout > MAX_TIMEOUT {
        let why = format!("it must be above zero and at most {}s", MAX_TIMEOUT.as_secs());
        return Err(InstructionError::BadValue { field: "timeout", value: value.into(), why });
    }
    Ok(timeout)
}

fn parse_fallback(value: &str) -> Result<Fallback, InstructionError> {
    match value {
        "force_self" => Ok(Fallback::ForceSelf),
        "prefer_self" => Ok(Fallback::PreferSelf),
        _ => Err(InstructionError::BadValue {
            field: "fallback",
            value: value.into(),
            why: "expected force_self or prefer_self".into(),
        }),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonInstruction {
    region: Option<String>,
    instance: Option<String>,
    prefer_instance: Option<String>,
    elsewhere: Option<bool>,
    state: Option<String>,
    timeout: Option<String>,
    fallback: Option<String>,
    app: Option<String>,
    allow_bypass: Option<bool>,
    transform: Option<JsonTransform>,
}

impl JsonInstruction {
    fn into_fields(self) -> Result<RawFields, InstructionError> {
        Ok(RawFields {
            region: self.region,
            instance: self.instance,
            prefer_instance: self.prefer_instance,
            elsewhere: self.elsewhere.map(|b| b.to_string()),
            state: self.state,
            timeout: self.timeout,
            fallback: self.fallback,
            app: self.app,
        })
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonTransform {
    path: Option<String>,
    #[serde(default)]
    set_headers: Vec<JsonHeader>,
    #[serde(default)]
    delete_headers: Vec<String>,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonHeader {
    name: String,
    value: String,
}

/// Headers a transform may not touch: they frame the request or carry the replay itself.
const PROTECTED_HEADERS: [&str; 6] =
    ["host", "content-length", "transfer-encoding", "connection", "fly-replay-src", "fly-replay-failed"];

impl JsonTransform {
    fn into_transform(self) -> Result<Transform, InstructionError> {
        let path = self.path.map(check_path).transpose()?;
        let set_headers = self
            .set_headers
            .into_iter()
            .map(|h| {
                let name = header_name(&h.name)?;
                let value = HeaderValue::from_str(&h.value).map_err(|_| InstructionError::BadValue {
                    field: "transform.set_headers",
                    value: h.value.clone(),
                    why: "not a valid header value".into(),
                })?;
                Ok((name, value))
            })
            .collect::<Result<_, InstructionError>>()?;
        let delete_headers = self.delete_headers.iter().map(|n| header_name(n)).collect::<Result<_, _>>()?;
        Ok(Transform { path, set_headers, delete_headers })
    }
}

fn header_name(name: &str) -> Result<HeaderName, InstructionError> {
    let bad = |why: &str| InstructionError::BadValue { field: "transform header", value: name.into(), why: why.into() };
    let parsed = HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad("not a valid header name"))?;
    if PROTECTED_HEADERS.contains(&parsed.as_str()) {
        return Err(bad("this header cannot be changed by a replay"));
    }
    Ok(parsed)
}

fn check_path(path: String) -> Result<String, InstructionError> {
    let valid = path.starts_with('/') && path.parse::<http::uri::PathAndQuery>().is_ok();
    if !valid {
        let why = "expected an absolute path such as /a/b?c=d".to_string();
        return Err(InstructionError::BadValue { field: "transform.path", value: path, why });
    }
    Ok(path)
}

impl CacheRule {
    /// The rule in an origin's answer headers, if it asked for one.
    pub fn from_headers(headers: &HeaderMap) -> Result<Option<CacheRule>, InstructionError> {
        let Some(value) = headers.get("fly-replay-cache") else { return Ok(None) };
        let text = value.to_str().unwrap_or("").trim();
        let bad = |why: &str| InstructionError::BadCache { value: text.to_string(), why: why.to_string() };
        if text == "invalidate" {
            return Ok(Some(CacheRule::Invalidate));
        }
        let ttl = cache_ttl(headers).map_err(|why| bad(&why))?;
        if let Some(cookie) = text.strip_prefix("cookie=") {
            if cookie.is_empty() || !cookie.bytes().all(|b| b.is_ascii_graphic() && b != b';' && b != b'=') {
                return Err(bad("expected cookie=NAME"));
            }
            return Ok(Some(CacheRule::Session { cookie: cookie.to_string(), ttl }));
        }
        let pattern = text.strip_suffix('*').ok_or_else(|| bad("a path pattern must end with /*"))?;
        if !pattern.ends_with('/') {
            return Err(bad("a path pattern must end with /*"));
        }
        let (host, prefix) = match pattern.find('/') {
            Some(0) => (None, pattern.to_string()),
            Some(i) => (Some(pattern[..i].to_ascii_lowercase()), pattern[i..].to_string()),
            None => return Err(bad("expected host/path/* or /path/*")),
        };
        if host.as_deref().is_some_and(|h| h.contains(':')) {
            return Err(bad("the host must not include a port"));
        }
        Ok(Some(CacheRule::Path { host, prefix, ttl }))
    }
}

fn cache_ttl(headers: &HeaderMap) -> Result<Duration, String> {
    let text = headers
        .get("fly-replay-cache-ttl-secs")
        .ok_or("fly-replay-cache-ttl-secs is missing")?
        .to_str()
        .map_err(|_| "fly-replay-cache-ttl-secs is not text")?;
    let secs: u64 = text.trim().parse().map_err(|_| format!("fly-replay-cache-ttl-secs {text:?} is not a number"))?;
    let ttl = Duration::from_secs(secs);
    if ttl < MIN_CACHE_TTL || ttl > MAX_CACHE_TTL {
        return Err(format!(
            "fly-replay-cache-ttl-secs must be between {} and {}",
            MIN_CACHE_TTL.as_secs(),
            MAX_CACHE_TTL.as_secs()
        ));
    }
    Ok(ttl)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(r: &str) -> RegionChoice {
        RegionChoice::Named(r.into())
    }

    #[test]
    fn header_form_with_every_field() {
        let parsed = Instruction::from_header(
            r#"region="iad,ord,any"; instance=i-1 ;prefer_instance=i-2;elsewhere=true;state=abc;timeout=800ms;fallback=prefer_self"#,
        )
        .expect("parses");
        assert_eq!(parsed.regions, vec![named("iad"), named("ord"), RegionChoice::Any]);
        assert_eq!(parsed.instance.as_deref(), Some("i-1"));
        assert_eq!(parsed.prefer_instance.as_deref(), Some("i-2"));
        assert!(parsed.elsewhere);
        assert_eq!(parsed.state.as_deref(), Some("abc"));
        assert_eq!(parsed.timeout, Some(Duration::from_millis(800)));
        assert_eq!(parsed.fallback, Some(Fallback::PreferSelf));
        assert_eq!(Instruction::from_header("region=sjc").expect("parses").regions, vec![named("sjc")]);
        assert!(Instruction::from_header("elsewhere=true").expect("parses").elsewhere);
    }

    #[test]
    fn malformed_headers_are_clear_errors() {
        use InstructionError::*;
        type Check = fn(&InstructionError) -> bool;
        let cases: [(&str, Check); 10] = [
            ("", |e| matches!(e, Empty)),
            ("region", |e| matches!(e, MissingValue(_))),
            ("colour=red", |e| matches!(e, UnknownField(f) if f == "colour")),
            ("region=a;region=b", |e| matches!(e, Repeated(_))),
            ("region=\"a,b", |e| matches!(e, UnterminatedQuote)),
            ("region=s c", |e| matches!(e, BadRegion(_))),
            ("region=a;timeout=soon", |e| matches!(e, BadTimeout(_))),
            ("region=a;timeout=1h", |e| matches!(e, BadValue { field: "timeout", .. })),
            ("region=a;fallback=elsewhere", |e| matches!(e, BadValue { field: "fallback", .. })),
            ("state=x;elsewhere=false", |e| matches!(e, NoTarget)),
        ];
        for (text, expected) in cases {
            let err = Instruction::from_header(text).expect_err(text);
            assert!(expected(&err), "{text:?} gave {err:?}");
            assert!(!err.to_string().is_empty());
        }
        assert!(matches!(Instruction::from_header("elsewhere=maybe"), Err(BadValue { field: "elsewhere", .. })));
        assert!(matches!(Instruction::from_header("instance=a b"), Err(BadValue { field: "instance", .. })));
        assert!(matches!(Instruction::from_header("app=a/b"), Err(BadValue { field: "app", .. })));
    }

    #[test]
    fn app_is_a_target_alone_or_with_a_region() {
        let alone = Instruction::from_header("app=billing").expect("parses");
        assert_eq!((alone.app.as_deref(), alone.regions.len()), (Some("billing"), 0));
        let both = Instruction::from_header("region=sjc;app=billing").expect("parses");
        assert_eq!((both.app.as_deref(), both.regions), (Some("billing"), vec![named("sjc")]));
        let json = Instruction::from_json(br#"{"app":"billing","allow_bypass":true}"#).expect("parses");
        assert!(json.allow_bypass && json.app.as_deref() == Some("billing"));
        assert!(!Instruction::from_json(br#"{"app":"billing"}"#).expect("parses").allow_bypass);
    }

    #[test]
    fn json_form_with_transform() {
        let json = br#"{"region":"sjc,any","state":"s1","timeout":"2s","fallback":"force_self","elsewhere":false,
            "transform":{"path":"/v2/x?y=1","set_headers":[{"name":"X-Tenant","value":"t1"}],"delete_headers":["cookie"]}}"#;
        let parsed = Instruction::from_json(json).expect("parses");
        assert_eq!(parsed.regions, vec![named("sjc"), RegionChoice::Any]);
        assert_eq!(parsed.fallback, Some(Fallback::ForceSelf));
        assert_eq!(parsed.transform.path.as_deref(), Some("/v2/x?y=1"));
        assert_eq!(parsed.transform.set_headers[0].0, "x-tenant");
        assert_eq!(parsed.transform.delete_headers, vec![HeaderName::from_static("cookie")]);
    }

    #[test]
    fn malformed_json_is_a_clear_error() {
        let err = |body: &str| Instruction::from_json(body.as_bytes()).expect_err(body);
        assert!(matches!(err("{"), InstructionError::Json(_)));
        assert!(matches!(err(r#"{"region":"a","colour":"red"}"#), InstructionError::Json(m) if m.contains("colour")));
        assert!(matches!(
            err(r#"{"region":"a","transform":{"path":"no-slash"}}"#),
            InstructionError::BadValue { field: "transform.path", .. }
        ));
        assert!(matches!(
            err(r#"{"region":"a","transform":{"set_headers":[{"name":"host","value":"evil"}]}}"#),
            InstructionError::BadValue { field: "transform header", .. }
        ));
        assert!(matches!(err(r#"{"state":"x"}"#), InstructionError::NoTarget));
        let huge = format!(r#"{{"region":"a","state":"{}"}}"#, "x".repeat(MAX_JSON_BYTES));
        assert!(matches!(err(&huge), InstructionError::JsonTooLarge));
    }

    fn cache_headers(pattern: &str, ttl: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("fly-replay-cache", HeaderValue::from_str(pattern).expect("value"));
        if let Some(ttl) = ttl {
            headers.insert("fly-replay-cache-ttl-secs", HeaderValue::from_str(ttl).expect("value"));
        }
        headers
    }

    #[test]
    fn cache_rules() {
        let rule = |p, t| CacheRule::from_headers(&cache_headers(p, t));
        assert_eq!(
            rule("Example.com/api/*", Some("60")),
            Ok(Some(CacheRule::Path {
                host: Some("example.com".into()),
                prefix: "/api/".into(),
                ttl: Duration::from_secs(60)
            }))
        );
        assert_eq!(
            rule("/w/*", Some("10")),
            Ok(Some(CacheRule::Path { host: None, prefix: "/w/".into(), ttl: Duration::from_secs(10) }))
        );
        assert_eq!(
            rule("cookie=sid", Some("30")),
            Ok(Some(CacheRule::Session { cookie: "sid".into(), ttl: Duration::from_secs(30) }))
        );
        assert_eq!(rule("invalidate", None), Ok(Some(CacheRule::Invalidate)));
        assert_eq!(CacheRule::from_headers(&HeaderMap::new()), Ok(None));
        for (pattern, ttl) in [
            ("/w/*", Some("5")),
            ("/w/*", None),
            ("/w/", Some("60")),
            ("a.com:80/w/*", Some("60")),
            ("cookie=", Some("60")),
        ] {
            assert!(matches!(rule(pattern, ttl), Err(InstructionError::BadCache { .. })), "{pattern} {ttl:?}");
        }
    }
}
