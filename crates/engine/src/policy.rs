//! S3 bucket policies: the IAM JSON grammar for S3 (statements with Effect, Principal,
//! Action/NotAction, Resource/NotResource and Condition), parsed by hand from `serde_json`
//! values so every malformed policy gets a message naming what is wrong
//! (docs/decisions/057-bucket-policies.md), and evaluated against the facts of one request.
//! Principals are Meridian key names written as `arn:aws:iam::<account>:user/<key-name>`
//! (any account), or `*` for everyone including anonymous requests.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Engine;
use crate::error::{EngineError, EngineResult};

/// Largest policy document, as in S3.
pub const MAX_POLICY_BYTES: usize = 20 * 1024;
/// Most statements per policy (a bound on evaluation work).
pub const MAX_STATEMENTS: usize = 100;
const S3_ARN: &str = "arn:aws:s3:::";
const IAM_ARN: &str = "arn:aws:iam::";

/// Why a policy document is refused (S3's `MalformedPolicy`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct MalformedPolicy(pub String);

fn malformed<T>(message: impl Into<String>) -> Result<T, MalformedPolicy> {
    Err(MalformedPolicy(message.into()))
}

/// A parsed bucket policy.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    statements: Vec<Statement>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Effect {
    Allow,
    Deny,
}

#[derive(Clone, Debug, PartialEq)]
enum Principals {
    /// `*`: every key and anonymous requests.
    Anyone,
    /// These key names.
    Keys(Vec<String>),
}

/// Patterns (`*` and `?` wildcards) and whether the statement names them with `Not…`.
#[derive(Clone, Debug, PartialEq)]
struct Patterns {
    patterns: Vec<String>,
    negated: bool,
}

#[derive(Clone, Debug, PartialEq)]
struct Statement {
    effect: Effect,
    principals: Principals,
    actions: Patterns,
    resources: Patterns,
    conditions: Vec<Condition>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Operator {
    StringEquals,
    StringNotEquals,
    StringEqualsIgnoreCase,
    StringNotEqualsIgnoreCase,
    StringLike,
    StringNotLike,
    IpAddress,
    NotIpAddress,
    Bool,
    DateEquals,
    DateNotEquals,
    DateLessThan,
    DateLessThanEquals,
    DateGreaterThan,
    DateGreaterThanEquals,
    Null,
}

impl Operator {
    fn parse(name: &str) -> Option<Operator> {
        use Operator::*;
        Some(match name {
            "StringEquals" => StringEquals,
            "StringNotEquals" => StringNotEquals,
            "StringEqualsIgnoreCase" => StringEqualsIgnoreCase,
            "StringNotEqualsIgnoreCase" => StringNotEqualsIgnoreCase,
            "StringLike" => StringLike,
            "StringNotLike" => StringNotLike,
            "IpAddress" => IpAddress,
            "NotIpAddress" => NotIpAddress,
            "Bool" => Bool,
            "DateEquals" => DateEquals,
            "DateNotEquals" => DateNotEquals,
            "DateLessThan" => DateLessThan,
            "DateLessThanEquals" => DateLessThanEquals,
            "DateGreaterThan" => DateGreaterThan,
            "DateGreaterThanEquals" => DateGreaterThanEquals,
            "Null" => Null,
            _ => return None,
        })
    }

    /// Negated operators hold when the request lacks the key, as in IAM.
    fn negated(self) -> bool {
        use Operator::*;
        matches!(self, StringNotEquals | StringNotEqualsIgnoreCase | StringNotLike | NotIpAddress | DateNotEquals)
    }
}

/// The condition keys Meridian supplies (lower case: keys are case-insensitive).
const CONDITION_KEYS: [&str; 10] = [
    "aws:sourceip",
    "aws:securetransport",
    "aws:referer",
    "aws:useragent",
    "aws:currenttime",
    "aws:epochtime",
    "aws:username",
    "s3:prefix",
    "s3:delimiter",
    "s3:max-keys",
];

#[derive(Clone, Debug, PartialEq)]
enum Values {
    Strings(Vec<String>),
    Cidrs(Vec<Cidr>),
    /// Milliseconds since the epoch.
    Dates(Vec<i64>),
    Bools(Vec<bool>),
}

#[derive(Clone, Debug, PartialEq)]
struct Condition {
    operator: Operator,
    if_exists: bool,
    key: String,
    values: Values,
}

/// An address block, `10.0.0.0/8` or `2001:db8::/32` (a bare address is a block of one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cidr {
    network: IpAddr,
    bits: u8,
}

impl Cidr {
    fn parse(text: &str) -> Option<Cidr> {
        let (addr, bits) = match text.split_once('/') {
            Some((addr, bits)) => (addr.parse::<IpAddr>().ok()?, Some(bits.parse::<u8>().ok()?)),
            None => (text.parse::<IpAddr>().ok()?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let bits = bits.unwrap_or(max);
        (bits <= max).then_some(Cidr { network: addr, bits })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let (net, ip, width) = match (self.network, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(i)) => (u128::from(u32::from(n)), u128::from(u32::from(i)), 32),
            (IpAddr::V6(n), IpAddr::V6(i)) => (u128::from(n), u128::from(i), 128),
            _ => return false,
        };
        let shift = width - u32::from(self.bits);
        shift >= 128 || (net >> shift) == (ip >> shift)
    }
}

/// What a policy says about one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A matching statement denies it: nothing else can allow it.
    Deny,
    /// A matching statement allows it and none denies it.
    Allow,
    /// No statement matches.
    Neither,
}

/// The facts of one request a policy is evaluated against.
#[derive(Clone, Debug, Default)]
pub struct PolicyRequest {
    /// `s3:GetObject`.
    pub action: String,
    /// `arn:aws:s3:::bucket` or `arn:aws:s3:::bucket/key`.
    pub resource: String,
    /// The key that signed the request; `None`: anonymous.
    pub key: Option<String>,
    /// Condition values by lower-case key (`aws:sourceip`, `s3:prefix`, …); absent keys are
    /// absent from the request.
    pub values: HashMap<&'static str, String>,
}

/// The ARN of an object (`Some(key)`) or a bucket.
pub fn resource_arn(bucket: &str, key: Option<&str>) -> String {
    match key {
        Some(key) => format!("{S3_ARN}{bucket}/{key}"),
        None => format!("{S3_ARN}{bucket}"),
    }
}

/// Policies already parsed, by bucket, with the text each was parsed from. Every request to a
/// bucket with a policy consults it, and parsing it (JSON to statements) cost about half the
/// extra CPU such a request took; the text is compared whole, so a changed policy is parsed
/// again. Bounded: emptied when it holds [`PARSED_POLICIES_MAX`] buckets.
type ParsedPolicies = std::sync::Mutex<HashMap<String, (String, Arc<Policy>)>>;
static PARSED_POLICIES: std::sync::LazyLock<ParsedPolicies> = std::sync::LazyLock::new(Default::default);
const PARSED_POLICIES_MAX: usize = 1024;

impl Policy {
    /// [`Policy::parse`], remembered: the same text for the same bucket is parsed once. A text
    /// that does not parse is not remembered.
    pub fn parse_cached(text: &str, bucket: &str) -> Result<Arc<Policy>, MalformedPolicy> {
        let lock = || PARSED_POLICIES.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((parsed_text, policy)) = lock().get(bucket)
            && parsed_text == text
        {
            return Ok(Arc::clone(policy));
        }
        let policy = Arc::new(Policy::parse(text, bucket)?);
        let mut parsed = lock();
        if parsed.len() >= PARSED_POLICIES_MAX {
            parsed.clear();
        }
        parsed.insert(bucket.to_string(), (text.to_string(), Arc::clone(&policy)));
        Ok(policy)
    }

    /// Parses and checks a policy for `bucket`.
    pub fn parse(text: &str, bucket: &str) -> Result<Policy, MalformedPolicy> {
        if text.len() > MAX_POLICY_BYTES {
            return malformed(format!("Policies must be at most {MAX_POLICY_BYTES} bytes"));
        }
        let doc: Value =
            serde_json::from_str(text).or_else(|e| malformed(format!("Policies must be valid JSON: {e}")))?;
        let Value::Object(doc) = doc else { return malformed("Policies must be a JSON object") };
        for field in doc.keys() {
            if !matches!(field.as_str(), "Version" | "Id" | "Statement") {
                return malformed(format!("Unknown field {field}"));
            }
        }
        match doc.get("Version") {
            None => {}
            Some(Value::String(v)) if v == "2012-10-17" || v == "2008-10-17" => {}
            Some(_) => return malformed("The policy Version must be \"2012-10-17\" or \"2008-10-17\""),
        }
        let statements = match doc.get("Statement") {
            None => return malformed("Missing required field Statement"),
            Some(Value::Array(list)) => list.iter().collect::<Vec<_>>(),
            Some(one @ Value::Object(_)) => vec![one],
            Some(_) => return malformed("Statement must be an object or a list of objects"),
        };
        if statements.is_empty() {
            return malformed("Could not parse the policy: Statement is empty!");
        }
        if statements.len() > MAX_STATEMENTS {
            return malformed(format!("Policies have at most {MAX_STATEMENTS} statements"));
        }
        let statements = statements.into_iter().map(|s| Statement::parse(s, bucket)).collect::<Result<_, _>>()?;
        Ok(Policy { statements })
    }

    /// The key names the policy's principals name.
    pub fn key_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .statements
            .iter()
            .filter_map(|s| match &s.principals {
                Principals::Keys(keys) => Some(keys.iter().map(String::as_str)),
                Principals::Anyone => None,
            })
            .flatten()
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// Whether the policy allows anyone (`*`) something without restricting the source
    /// addresses to fixed blocks: AWS's definition of a public policy.
    pub fn is_public(&self) -> bool {
        self.statements.iter().any(|s| {
            let fixed_sources = s.conditions.iter().any(|c| {
                c.operator == Operator::IpAddress
                    && c.key == "aws:sourceip"
                    && matches!(&c.values, Values::Cidrs(blocks) if blocks.iter().all(|b| b.bits > 0))
            });
            s.effect == Effect::Allow && s.principals == Principals::Anyone && !fixed_sources
        })
    }

    /// Whether any statement denies something (to anyone).
    pub fn denies_anything(&self) -> bool {
        self.statements.iter().any(|s| s.effect == Effect::Deny)
    }

    /// What the policy says about `request`: an explicit deny wins over any allow.
    pub fn evaluate(&self, request: &PolicyRequest) -> Verdict {
        let mut verdict = Verdict::Neither;
        for statement in self.statements.iter().filter(|s| s.applies_to(request)) {
            match statement.effect {
                Effect::Deny => return Verdict::Deny,
                Effect::Allow => verdict = Verdict::Allow,
            }
        }
        verdict
    }
}

impl Statement {
    fn parse(value: &Value, bucket: &str) -> Result<Statement, MalformedPolicy> {
        let Value::Object(fields) = value else { return malformed("Each statement must be a JSON object") };
        for field in fields.keys() {
            match field.as_str() {
                "Sid" | "Effect" | "Principal" | "Action" | "NotAction" | "Resource" | "NotResource" | "Condition" => {}
                "NotPrincipal" => return malformed("NotPrincipal is not supported by Meridian; use Principal"),
                other => return malformed(format!("Unknown field {other} in a statement")),
            }
        }
        let effect = match fields.get("Effect").and_then(Value::as_str) {
            Some("Allow") => Effect::Allow,
            Some("Deny") => Effect::Deny,
            Some(other) => return malformed(format!("Invalid effect: {other}")),
            None => return malformed("Missing required field Effect"),
        };
        let principals = match fields.get("Principal") {
            Some(p) => parse_principals(p)?,
            None => return malformed("Missing required field Principal"),
        };
        let actions = either(fields, "Action", "NotAction")?;
        for action in &actions.patterns {
            check_action(action)?;
        }
        let resources = either(fields, "Resource", "NotResource")?;
        for resource in &resources.patterns {
            check_resource(resource, bucket)?;
        }
        let conditions = match fields.get("Condition") {
            None => Vec::new(),
            Some(c) => parse_conditions(c)?,
        };
        Ok(Statement { effect, principals, actions, resources, conditions })
    }

    fn applies_to(&self, request: &PolicyRequest) -> bool {
        let principal = match (&self.principals, &request.key) {
            (Principals::Anyone, _) => true,
            (Principals::Keys(keys), Some(key)) => keys.contains(key),
            (Principals::Keys(_), None) => false,
        };
        principal
            && self.actions.matches(&request.action, true)
            && self.resources.matches(&request.resource, false)
            && self.conditions.iter().all(|c| c.holds(request))
    }
}

impl Patterns {
    fn matches(&self, text: &str, ignore_case: bool) -> bool {
        let any = self.patterns.iter().any(|p| glob_with(p, text, ignore_case));
        any != self.negated
    }
}

/// `Action` or `NotAction` (one of them, not both): a string or a list of strings.
fn either(fields: &serde_json::Map<String, Value>, name: &str, not: &str) -> Result<Patterns, MalformedPolicy> {
    match (fields.get(name), fields.get(not)) {
        (Some(_), Some(_)) => malformed(format!("A statement has either {name} or {not}, not both")),
        (Some(v), None) => Ok(Patterns { patterns: strings(v, name)?, negated: false }),
        (None, Some(v)) => Ok(Patterns { patterns: strings(v, not)?, negated: true }),
        (None, None) => malformed(format!("Missing required field {name}")),
    }
}

/// A string or a non-empty list of strings.
fn strings(value: &Value, what: &str) -> Result<Vec<String>, MalformedPolicy> {
    let list = match value {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .map(|i| i.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| MalformedPolicy(format!("{what} must be a string or a list of strings")))?,
        _ => return malformed(format!("{what} must be a string or a non-empty list of strings")),
    };
    Ok(list)
}

fn parse_principals(value: &Value) -> Result<Principals, MalformedPolicy> {
    let arns = match value {
        Value::String(s) if s == "*" => return Ok(Principals::Anyone),
        Value::Object(map) => {
            if let Some(other) = map.keys().find(|k| k.as_str() != "AWS") {
                return malformed(format!(
                    "Invalid principal in policy: {other} principals are not supported by Meridian; use \"AWS\""
                ));
            }
            match map.get("AWS") {
                Some(v) => strings(v, "Principal AWS")?,
                None => return malformed("Invalid principal in policy: Principal names no AWS principal"),
            }
        }
        _ => return malformed("Invalid principal in policy: use \"*\" or {\"AWS\": [ARNs]}"),
    };
    if arns.iter().any(|a| a == "*") {
        return Ok(Principals::Anyone);
    }
    let keys = arns.iter().map(|arn| key_of_arn(arn)).collect::<Result<_, _>>()?;
    Ok(Principals::Keys(keys))
}

/// `arn:aws:iam::<account>:user/<key-name>` → the key name.
fn key_of_arn(arn: &str) -> Result<String, MalformedPolicy> {
    let name = arn
        .strip_prefix(IAM_ARN)
        .and_then(|rest| rest.split_once(':'))
        .and_then(|(_account, user)| user.strip_prefix("user/"))
        .filter(|name| crate::iam::validate_key_name(name).is_ok());
    match name {
        Some(name) => Ok(name.to_string()),
        None => malformed(format!(
            "Invalid principal in policy: {arn:?}; name Meridian keys as arn:aws:iam::meridian:user/KEY-NAME"
        )),
    }
}

fn check_action(action: &str) -> Result<(), MalformedPolicy> {
    let name = action.get(..3).filter(|p| p.eq_ignore_ascii_case("s3:")).map(|_| &action[3..]);
    let valid = action == "*"
        || name.is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '*' || c == '?'));
    if valid { Ok(()) } else { malformed(format!("Policy has invalid action: {action}")) }
}

/// Resources must be this bucket or objects in it.
fn check_resource(resource: &str, bucket: &str) -> Result<(), MalformedPolicy> {
    let named = resource.strip_prefix(S3_ARN).map(|rest| rest.split_once('/').map_or(rest, |(b, _)| b));
    match named {
        Some(pattern) if glob(pattern, bucket) => Ok(()),
        _ if resource == "*" => Ok(()),
        _ => malformed(format!(
            "Policy has invalid resource: {resource} (resources are arn:aws:s3:::{bucket} or arn:aws:s3:::{bucket}/KEY-PATTERN)"
        )),
    }
}

fn parse_conditions(value: &Value) -> Result<Vec<Condition>, MalformedPolicy> {
    let Value::Object(blocks) = value else { return malformed("Condition must be a JSON object") };
    let mut conditions = Vec::new();
    for (name, tests) in blocks {
        let (base, if_exists) = match name.strip_suffix("IfExists") {
            Some(base) => (base, true),
            None => (name.as_str(), false),
        };
        let Some(operator) = Operator::parse(base) else {
            return malformed(format!("Invalid Condition type: {name}"));
        };
        let Value::Object(tests) = tests else { return malformed(format!("Condition {name} must be a JSON object")) };
        for (key, values) in tests {
            let key = key.to_ascii_lowercase();
            if !CONDITION_KEYS.contains(&key.as_str()) {
                return malformed(format!(
                    "Policy has an invalid condition key: {key} (Meridian supports {})",
                    CONDITION_KEYS.join(", ")
                ));
            }
            let values = condition_values(operator, &key, values)?;
            conditions.push(Condition { operator, if_exists, key, values });
        }
    }
    Ok(conditions)
}

fn condition_values(operator: Operator, key: &str, value: &Value) -> Result<Values, MalformedPolicy> {
    let texts: Vec<String> = match value {
        Value::Array(items) if !items.is_empty() => items.iter().map(scalar).collect::<Option<_>>(),
        Value::Array(_) => None,
        other => scalar(other).map(|s| vec![s]),
    }
    .ok_or_else(|| MalformedPolicy(format!("The values of {key} must be strings, numbers or booleans")))?;
    use Operator::*;
    Ok(match operator {
        IpAddress | NotIpAddress => Values::Cidrs(
            texts
                .iter()
                .map(|t| Cidr::parse(t).ok_or_else(|| MalformedPolicy(format!("Invalid IP address or block: {t}"))))
                .collect::<Result<_, _>>()?,
        ),
        Bool | Null => Values::Bools(
            texts
                .iter()
                .map(|t| match t.to_ascii_lowercase().as_str() {
                    "true" => Ok(true),
                    "false" => Ok(false),
                    _ => malformed(format!("Invalid boolean for {key}: {t}")),
                })
                .collect::<Result<_, _>>()?,
        ),
        DateEquals | DateNotEquals | DateLessThan | DateLessThanEquals | DateGreaterThan | DateGreaterThanEquals => {
            Values::Dates(
                texts
                    .iter()
                    .map(|t| parse_date(t).ok_or_else(|| MalformedPolicy(format!("Invalid date for {key}: {t}"))))
                    .collect::<Result<_, _>>()?,
            )
        }
        _ => Values::Strings(texts),
    })
}

fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// An ISO 8601 time (`2026-01-01T00:00:00Z`), a date (`2026-01-01`, midnight UTC) or epoch
/// seconds, as milliseconds since the epoch.
pub fn parse_date(text: &str) -> Option<i64> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(t) = time::OffsetDateTime::parse(text, &Rfc3339) {
        return Some((t.unix_timestamp_nanos() / 1_000_000) as i64);
    }
    if let Ok(seconds) = text.parse::<i64>() {
        return seconds.checked_mul(1000);
    }
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let day = time::Date::parse(text, &format).ok()?;
    Some(day.midnight().assume_utc().unix_timestamp() * 1000)
}

impl Condition {
    fn holds(&self, request: &PolicyRequest) -> bool {
        let actual = request.values.get(self.key.as_str());
        if self.operator == Operator::Null {
            // Null: true means the key must be absent.
            return matches!(&self.values, Values::Bools(b) if b.iter().any(|&want| want == actual.is_none()));
        }
        let Some(actual) = actual else { return self.if_exists || self.operator.negated() };
        use Operator::*;
        match (&self.values, self.operator) {
            (Values::Strings(v), StringEquals) => v.iter().any(|w| w == actual),
            (Values::Strings(v), StringNotEquals) => !v.iter().any(|w| w == actual),
            (Values::Strings(v), StringEqualsIgnoreCase) => v.iter().any(|w| w.eq_ignore_ascii_case(actual)),
            (Values::Strings(v), StringNotEqualsIgnoreCase) => !v.iter().any(|w| w.eq_ignore_ascii_case(actual)),
            (Values::Strings(v), StringLike) => v.iter().any(|w| glob(w, actual)),
            (Values::Strings(v), StringNotLike) => !v.iter().any(|w| glob(w, actual)),
            (Values::Cidrs(v), op) => {
                let inside = actual.parse::<IpAddr>().is_ok_and(|ip| v.iter().any(|c| c.contains(ip)));
                inside == (op == IpAddress)
            }
            (Values::Bools(v), _) => v.iter().any(|&w| actual.parse::<bool>().is_ok_and(|a| a == w)),
            (Values::Dates(v), op) => {
                let Some(at) = parse_date(actual) else { return false };
                match op {
                    DateNotEquals => !v.contains(&at),
                    _ => v.iter().any(|&w| match op {
                        DateEquals => at == w,
                        DateLessThan => at < w,
                        DateLessThanEquals => at <= w,
                        DateGreaterThan => at > w,
                        _ => at >= w,
                    }),
                }
            }
            _ => false,
        }
    }
}

/// IAM wildcard matching: `*` any run of characters, `?` exactly one.
fn glob(pattern: &str, text: &str) -> bool {
    glob_with(pattern, text, false)
}

/// [`glob`], comparing ASCII letters without case when `ignore_case` (action names). Runs on
/// bytes when the pattern has no `?`: a literal UTF-8 sequence only ever matches whole
/// characters, so only `?` needs the text cut into characters. Allocates nothing then, which
/// matters because every request to a bucket with a policy matches every statement's patterns.
fn glob_with(pattern: &str, text: &str, ignore_case: bool) -> bool {
    if pattern.contains('?') {
        let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
        wildcard(&p, &t, '*', Some('?'), |a, b| if ignore_case { a.eq_ignore_ascii_case(&b) } else { a == b })
    } else {
        let same = |a: u8, b: u8| if ignore_case { a.eq_ignore_ascii_case(&b) } else { a == b };
        wildcard(pattern.as_bytes(), text.as_bytes(), b'*', None, same)
    }
}

/// Matches `t` against `p`, where `star` stands for any run and `one` (if any) for exactly
/// one element: a linear scan that backtracks only to the last star.
fn wildcard<T: Copy + PartialEq>(p: &[T], t: &[T], star: T, one: Option<T>, same: impl Fn(T, T) -> bool) -> bool {
    let (mut pi, mut ti) = (0, 0);
    let mut last_star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] != star && (Some(p[pi]) == one || same(p[pi], t[ti])) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == star {
            last_star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = last_star {
            pi = sp + 1;
            ti = st + 1;
            last_star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == star)
}

/// S3's Block Public Access settings of a bucket (PutPublicAccessBlock).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicAccessBlock {
    /// Refuse requests that would make the bucket's ACL public.
    #[serde(default)]
    pub block_public_acls: bool,
    /// Let a public ACL allow nothing.
    #[serde(default)]
    pub ignore_public_acls: bool,
    /// Refuse bucket policies that are public.
    #[serde(default)]
    pub block_public_policy: bool,
    /// Let a public policy allow only keys, not anonymous requests.
    #[serde(default)]
    pub restrict_public_buckets: bool,
}

/// S3's object ownership setting (PutBucketOwnershipControls).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ObjectOwnership {
    /// ACLs are disabled: setting one is refused and the bucket's public-read ACL allows nothing.
    BucketOwnerEnforced,
    BucketOwnerPreferred,
    ObjectWriter,
}

impl ObjectOwnership {
    pub fn parse(name: &str) -> Option<ObjectOwnership> {
        match name {
            "BucketOwnerEnforced" => Some(ObjectOwnership::BucketOwnerEnforced),
            "BucketOwnerPreferred" => Some(ObjectOwnership::BucketOwnerPreferred),
            "ObjectWriter" => Some(ObjectOwnership::ObjectWriter),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ObjectOwnership::BucketOwnerEnforced => "BucketOwnerEnforced",
            ObjectOwnership::BucketOwnerPreferred => "BucketOwnerPreferred",
            ObjectOwnership::ObjectWriter => "ObjectWriter",
        }
    }
}

impl Engine {
    /// Sets (`Some`, checked with [`Policy::parse`]) or removes a bucket's policy. Every key a
    /// principal names must exist; a public policy is refused while the bucket blocks them.
    pub async fn set_bucket_policy(&self, bucket: &str, policy: Option<String>) -> EngineResult<()> {
        if let Some(text) = &policy {
            let parsed = Policy::parse(text, bucket).map_err(|e| EngineError::MalformedPolicy(e.0))?;
            for name in parsed.key_names() {
                if self.access_key(name).await.is_err() {
                    return Err(EngineError::MalformedPolicy(format!(
                        "Invalid principal in policy: no key named {name:?}"
                    )));
                }
            }
            let public = parsed.is_public();
            self.update_bucket(bucket, |record| match public && record.blocks(|b| b.block_public_policy) {
                true => {
                    Err(EngineError::AccessDenied("the bucket's public access block refuses public policies".into()))
                }
                false => {
                    record.policy = policy.clone();
                    Ok(())
                }
            })
            .await?;
        } else {
            self.update_bucket(bucket, |record| {
                record.policy = None;
                Ok(())
            })
            .await?;
        }
        self.settle().await
    }

    /// Sets (`Some`) or removes a bucket's public access block.
    pub async fn set_public_access_block(&self, bucket: &str, block: Option<PublicAccessBlock>) -> EngineResult<()> {
        self.update_bucket(bucket, |record| {
            record.public_access_block = block;
            Ok(())
        })
        .await?;
        self.settle().await
    }

    /// Sets (`Some`) or removes a bucket's object ownership; BucketOwnerEnforced is refused
    /// while the bucket's ACL is public, as S3 does.
    pub async fn set_object_ownership(&self, bucket: &str, ownership: Option<ObjectOwnership>) -> EngineResult<()> {
        self.update_bucket(bucket, |record| {
            if ownership == Some(ObjectOwnership::BucketOwnerEnforced) && record.public_read {
                return Err(EngineError::InvalidBucketAclWithObjectOwnership);
            }
            record.object_ownership = ownership;
            Ok(())
        })
        .await?;
        self.settle().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PUBLIC_PREFIX: &str = r#"{"Version":"2012-10-17","Statement":[{"Sid":"p","Effect":"Allow",
        "Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::b/public/*"}]}"#;

    fn request(action: &str, resource: &str, key: Option<&str>, values: &[(&'static str, &str)]) -> PolicyRequest {
        PolicyRequest {
            action: action.into(),
            resource: resource.into(),
            key: key.map(str::to_string),
            values: values.iter().map(|(k, v)| (*k, v.to_string())).collect(),
        }
    }

    #[test]
    fn a_policy_is_parsed_once_per_text_and_again_when_it_changes() {
        // A bucket name of this test's own: the cache is shared by the whole process.
        let bucket = "parse-cached-test";
        let public = PUBLIC_PREFIX.replace("arn:aws:s3:::b/", &format!("arn:aws:s3:::{bucket}/"));
        let first = Policy::parse_cached(&public, bucket).unwrap();
        let again = Policy::parse_cached(&public, bucket).unwrap();
        assert!(Arc::ptr_eq(&first, &again), "the same text must not be parsed again");
        let get = request("s3:GetObject", &format!("arn:aws:s3:::{bucket}/public/a"), None, &[]);
        assert_eq!(again.evaluate(&get), Verdict::Allow);

        let denying = public.replace("\"Allow\"", "\"Deny\"");
        let changed = Policy::parse_cached(&denying, bucket).unwrap();
        assert_eq!(changed.evaluate(&get), Verdict::Deny, "a changed policy must be parsed again");
        // The same text for another bucket is another policy (its resources name the bucket).
        assert!(Policy::parse_cached(&denying, "other-bucket").is_err_and(|e| e.0.contains("other-bucket")));
        // A text that does not parse is refused each time it is asked for, and leaves the
        // bucket's last parsed policy in place.
        assert!(Policy::parse_cached("{", bucket).is_err());
        assert!(Policy::parse_cached("{", bucket).is_err());
        let kept = Policy::parse_cached(&denying, bucket).unwrap();
        assert!(Arc::ptr_eq(&kept, &changed), "a refused text must not replace the parsed policy");
        assert_eq!(kept.evaluate(&get), Verdict::Deny);
    }

    #[test]
    fn a_public_prefix_allows_anonymous_gets_of_that_prefix_only() {
        let p = Policy::parse(PUBLIC_PREFIX, "b").unwrap();
        assert!(p.is_public());
        assert_eq!(p.evaluate(&request("s3:GetObject", "arn:aws:s3:::b/public/a.txt", None, &[])), Verdict::Allow);
        assert_eq!(p.evaluate(&request("s3:GetObject", "arn:aws:s3:::b/private/a", None, &[])), Verdict::Neither);
        assert_eq!(p.evaluate(&request("s3:PutObject", "arn:aws:s3:::b/public/a", None, &[])), Verdict::Neither);
        assert_eq!(p.evaluate(&request("s3:ListBucket", "arn:aws:s3:::b", None, &[])), Verdict::Neither);
    }

    #[test]
    fn explicit_deny_wins_and_wildcards_and_not_forms_match() {
        let text = r#"{"Statement":[
            {"Effect":"Allow","Principal":{"AWS":["arn:aws:iam::meridian:user/app1"]},"Action":"s3:Get*","Resource":"arn:aws:s3:::b/*"},
            {"Effect":"Deny","Principal":"*","NotAction":["s3:GetObject","s3:ListBucket"],"Resource":"arn:aws:s3:::b/*"},
            {"Effect":"Deny","Principal":{"AWS":"*"},"Action":"s3:*","NotResource":"arn:aws:s3:::b/ok/*",
             "Condition":{"Bool":{"aws:SecureTransport":"false"}}}]}"#;
        let p = Policy::parse(text, "b").unwrap();
        let tls = [("aws:securetransport", "true")];
        assert_eq!(p.evaluate(&request("s3:GetObject", "arn:aws:s3:::b/x", Some("app1"), &tls)), Verdict::Allow);
        assert_eq!(p.evaluate(&request("S3:getobject", "arn:aws:s3:::b/x", Some("app1"), &tls)), Verdict::Allow);
        assert_eq!(p.evaluate(&request("s3:GetObject", "arn:aws:s3:::b/x", Some("app2"), &tls)), Verdict::Neither);
        assert_eq!(p.evaluate(&request("s3:GetObjectTagging", "arn:aws:s3:::b/x", Some("app1"), &tls)), Verdict::Deny);
        let plain = [("aws:securetransport", "false")];
        assert_eq!(p.evaluate(&request("s3:GetObject", "arn:aws:s3:::b/x", Some("app1"), &plain)), Verdict::Deny);
        assert_eq!(p.evaluate(&request("s3:GetObject", "arn:aws:s3:::b/ok/x", Some("app1"), &plain)), Verdict::Allow);
        assert!(!p.is_public());
        assert_eq!(p.key_names(), vec!["app1"]);
    }

    #[test]
    fn conditions() {
        let text = r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"s3:ListBucket","Resource":"arn:aws:s3:::b",
            "Condition":{"IpAddress":{"aws:SourceIp":["127.0.0.0/8","2001:db8::/32"]},
                         "StringLike":{"s3:prefix":["home/*"],"aws:Referer":"https://*.example.com/*"},
                         "DateLessThan":{"aws:CurrentTime":"2030-01-01T00:00:00Z"},
                         "StringEqualsIfExists":{"s3:delimiter":"/"}}}]}"#;
        let p = Policy::parse(text, "b").unwrap();
        assert!(!p.is_public(), "a fixed source block makes the policy not public");
        let list =
            |values: &[(&'static str, &str)]| p.evaluate(&request("s3:ListBucket", "arn:aws:s3:::b", None, values));
        let good = [
            ("aws:sourceip", "127.0.0.1"),
            ("s3:prefix", "home/x"),
            ("aws:referer", "https://www.example.com/page"),
            ("aws:currenttime", "2026-12-06T03:00:00Z"),
        ];
        assert_eq!(list(&good), Verdict::Allow);
        let mut other_ip = good;
        other_ip[0].1 = "10.1.2.3";
        assert_eq!(list(&other_ip), Verdict::Neither);
        let mut ip6 = good;
        ip6[0].1 = "2001:db8::5";
        assert_eq!(list(&ip6), Verdict::Allow);
        let mut late = good;
        late[3].1 = "2031-01-01T00:00:00Z";
        assert_eq!(list(&late), Verdict::Neither);
        assert_eq!(list(&good[1..]), Verdict::Neither, "no source address, no match");
        let mut with_delimiter = good.to_vec();
        with_delimiter.push(("s3:delimiter", ","));
        assert_eq!(list(&with_delimiter), Verdict::Neither);
        with_delimiter[4].1 = "/";
        assert_eq!(list(&with_delimiter), Verdict::Allow);
        let not_ip = r#"{"Statement":{"Effect":"Deny","Principal":"*","Action":"*","Resource":"*",
            "Condition":{"NotIpAddress":{"aws:SourceIp":"192.168.0.0/16"}}}}"#;
        let p = Policy::parse(not_ip, "b").unwrap();
        let get = |ip: &str| p.evaluate(&request("s3:GetObject", "arn:aws:s3:::b/k", None, &[("aws:sourceip", ip)]));
        assert_eq!(get("127.0.0.1"), Verdict::Deny);
        assert_eq!(get("192.168.4.4"), Verdict::Neither);
    }

    #[test]
    fn malformed_policies_say_what_is_wrong() {
        let bad = |text: &str| Policy::parse(text, "b").unwrap_err().0;
        assert!(bad("{").contains("valid JSON"));
        assert!(bad(r#"{"Statement":[]}"#).contains("Statement is empty"));
        let statement = |s: &str| bad(&format!(r#"{{"Statement":[{{{s}}}]}}"#));
        let base = r#""Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::b/*""#;
        assert!(statement(&base.replace("Allow", "Permit")).contains("Invalid effect"));
        assert!(statement(&base.replace(r#""Principal":"*","#, "")).contains("Missing required field Principal"));
        assert!(statement(&base.replace("s3:GetObject", "iam:PassRole")).contains("invalid action"));
        assert!(statement(&base.replace("arn:aws:s3:::b/*", "arn:aws:s3:::other/*")).contains("invalid resource"));
        assert!(statement(&base.replace(r#""*""#, r#"{"AWS":"app1"}"#)).contains("Invalid principal"));
        assert!(
            statement(&format!(r#"{base},"Condition":{{"StringEquals":{{"aws:Nope":"x"}}}}"#))
                .contains("invalid condition key")
        );
        assert!(
            statement(&format!(r#"{base},"Condition":{{"Foo":{{"aws:Referer":"x"}}}}"#))
                .contains("Invalid Condition type")
        );
        assert!(
            statement(&format!(r#"{base},"Condition":{{"IpAddress":{{"aws:SourceIp":"300.1.1.1/8"}}}}"#))
                .contains("Invalid IP address")
        );
        assert!(bad(&"x".repeat(MAX_POLICY_BYTES + 1)).contains("at most"));
    }

    #[test]
    fn globs() {
        assert!(glob("a*c", "abbbc") && glob("a?c", "abc") && glob("*", "") && !glob("a?c", "ac"));
        assert!(glob("public/*", "public/x/y") && !glob("public/*", "publicx"));
        // `?` is one character, however many bytes it takes; `*` any run, bytes or not.
        assert!(glob("caf?/x", "café/x") && !glob("caf??/x", "café/x") && glob("?", "日"));
        assert!(glob("*é*", "résumé") && glob("r*sum*", "résumé") && !glob("*é", "résume"));
        assert!(glob("a*b*c", "a-b-b-c") && !glob("a*b*c", "a-c-b") && glob("**", "x"));
        assert!(!glob("a*", "") && glob("", "") && !glob("", "a"));
        // A `*` in the text is just a character; a `*` in the pattern is always a wildcard.
        assert!(!glob("ab", "a*") && glob("a?", "a*") && glob("*b", "*ab") && glob("a*", "a*"));
        // Action names compare without case; object ARNs do not.
        assert!(glob_with("s3:get*", "s3:GetObject", true) && glob_with("S3:GETOBJEC?", "s3:GetObject", true));
        assert!(!glob_with("s3:get*", "s3:GetObject", false) && !glob("Public/*", "public/x"));
    }
}
