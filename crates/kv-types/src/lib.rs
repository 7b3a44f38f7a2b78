//! The shapes both ends of Meridian's KV extension agree on: batch operations and their JSON
//! wire form, watch events, and the duration syntax of TTLs. The server (engine, S3 front end)
//! and the client crate depend on this small crate instead of on each other.

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The longest TTL accepted (100 years).
pub const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Why a TTL-style duration was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DurationError {
    /// Not a duration in [`meridian_common::duration`]'s grammar, or shorter than 1 ms.
    Malformed,
    /// Longer than [`MAX_TTL`].
    TooLong,
}

/// What a duration looks like, for error messages.
pub use meridian_common::duration::DURATION_HELP;

/// Parses a TTL-style duration with the one duration grammar of
/// [`meridian_common::duration::parse_duration`] (`500ms`, `90s`, `5m`, `2h`, `7d`, `1m30s`,
/// fractions, a bare number of seconds), then bounds it: at least 1 ms, at most [`MAX_TTL`].
///
/// ```
/// use std::time::Duration;
/// use meridian_kv_types::{DurationError, parse_duration};
/// assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
/// assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
/// assert_eq!(parse_duration("5 parsecs"), Err(DurationError::Malformed));
/// assert_eq!(parse_duration("200y"), Err(DurationError::Malformed));
/// assert_eq!(parse_duration("40000d"), Err(DurationError::TooLong));
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    use meridian_common::duration::{self, DurationError as Grammar};
    let parsed = duration::parse_duration(text).map_err(|e| match e {
        Grammar::Overflow(_) => DurationError::TooLong,
        _ => DurationError::Malformed,
    })?;
    if parsed < Duration::from_millis(1) {
        return Err(DurationError::Malformed);
    }
    if parsed > MAX_TTL {
        return Err(DurationError::TooLong);
    }
    Ok(parsed)
}

/// Parses how long to wait for a lock: a duration as [`parse_duration`] reads it, or zero in
/// any spelling (`0`, `0s`, `0ms`) for not waiting at all.
///
/// ```
/// use std::time::Duration;
/// use meridian_kv_types::parse_wait;
/// assert_eq!(parse_wait("0s"), Ok(Duration::ZERO));
/// assert_eq!(parse_wait("1m30s"), Ok(Duration::from_secs(90)));
/// ```
pub fn parse_wait(text: &str) -> Result<Duration, DurationError> {
    match meridian_common::duration::parse_duration(text) {
        Ok(wait) if wait.is_zero() => Ok(Duration::ZERO),
        _ => parse_duration(text),
    }
}

/// A duration as [`parse_duration`] reads it back: whole milliseconds, at least 1 ms.
pub fn format_duration(d: Duration) -> String {
    format!("{}ms", d.as_millis().max(1))
}

/// One operation of an atomic batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchOp {
    /// Write a value.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: Bytes,
        /// Only if the key is at exactly this revision (0: absent).
        if_revision: Option<u64>,
        /// The key expires this long after the batch.
        ttl: Option<Duration>,
    },
    /// Remove a key.
    Delete {
        /// The key.
        key: String,
        /// Only if the key is at exactly this revision.
        if_revision: Option<u64>,
    },
}

impl BatchOp {
    /// A put without conditions.
    pub fn put(key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        BatchOp::Put { key: key.into(), value: value.into(), if_revision: None, ttl: None }
    }

    /// A delete without conditions.
    pub fn delete(key: impl Into<String>) -> Self {
        BatchOp::Delete { key: key.into(), if_revision: None }
    }

    /// Adds a condition on the key's revision (0: the key must be absent).
    pub fn if_revision(mut self, revision: u64) -> Self {
        match &mut self {
            BatchOp::Put { if_revision, .. } | BatchOp::Delete { if_revision, .. } => *if_revision = Some(revision),
        }
        self
    }

    /// Adds a TTL to a put (no effect on a delete).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        if let BatchOp::Put { ttl: t, .. } = &mut self {
            *t = Some(ttl);
        }
        self
    }

    /// The key the operation touches.
    pub fn key(&self) -> &str {
        match self {
            BatchOp::Put { key, .. } | BatchOp::Delete { key, .. } => key,
        }
    }

    /// The revision condition, if any.
    pub fn condition(&self) -> Option<u64> {
        match self {
            BatchOp::Put { if_revision, .. } | BatchOp::Delete { if_revision, .. } => *if_revision,
        }
    }
}

/// A batch operation as JSON: `{"op": "put", "key": "k", "value": "v", "if_revision": 3,
/// "ttl": "30s"}` (`value_base64` instead of `value` for binary values).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchEntry {
    pub op: String,
    pub key: String,
    /// UTF-8 value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Binary value, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_base64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_revision: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
}

impl BatchEntry {
    /// The operation, or what is wrong with the entry (a message naming the key).
    pub fn into_op(self) -> Result<BatchOp, String> {
        let BatchEntry { op, key, value, value_base64, if_revision, ttl } = self;
        match op.as_str() {
            "put" => {
                let value = match (value, value_base64) {
                    (Some(v), None) => Bytes::from(v),
                    (None, Some(b)) => Bytes::from(
                        base64::engine::general_purpose::STANDARD
                            .decode(b)
                            .map_err(|_| format!("value_base64 of key {key:?} is not valid base64"))?,
                    ),
                    _ => return Err(format!("put of key {key:?} needs exactly one of value or value_base64")),
                };
                let ttl = ttl
                    .as_deref()
                    .map(|t| {
                        parse_duration(t).map_err(|e| match e {
                            DurationError::Malformed => {
                                format!("ttl of key {key:?}: invalid TTL {t:?}: {DURATION_HELP}")
                            }
                            DurationError::TooLong => format!("ttl of key {key:?}: TTL {t:?} is longer than 100 years"),
                        })
                    })
                    .transpose()?;
                Ok(BatchOp::Put { key, value, if_revision, ttl })
            }
            "delete" => {
                if value.is_some() || value_base64.is_some() || ttl.is_some() {
                    return Err(format!("delete of key {key:?} takes no value or ttl"));
                }
                Ok(BatchOp::Delete { key, if_revision })
            }
            other => Err(format!("unknown batch op {other:?} for key {key:?}: use put or delete")),
        }
    }
}

impl From<&BatchOp> for BatchEntry {
    /// UTF-8 values travel as `value`, others as `value_base64`.
    fn from(op: &BatchOp) -> Self {
        match op {
            BatchOp::Put { key, value, if_revision, ttl } => {
                let (value, value_base64) = match std::str::from_utf8(value) {
                    Ok(text) => (Some(text.to_string()), None),
                    Err(_) => (None, Some(base64::engine::general_purpose::STANDARD.encode(value))),
                };
                BatchEntry {
                    op: "put".into(),
                    key: key.clone(),
                    value,
                    value_base64,
                    if_revision: *if_revision,
                    ttl: ttl.map(format_duration),
                }
            }
            BatchOp::Delete { key, if_revision } => BatchEntry {
                op: "delete".into(),
                key: key.clone(),
                value: None,
                value_base64: None,
                if_revision: *if_revision,
                ttl: None,
            },
        }
    }
}

/// What happened to a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// A new value was written.
    Put,
    /// The key was deleted.
    Delete,
    /// The key's TTL ran out (reported when the reaper removes it; reads stopped seeing the key
    /// at the expiry instant already).
    Expire,
}

/// One change to one key, as a watch stream carries it (one JSON object per line).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Put, delete or expire.
    #[serde(rename = "type")]
    pub kind: EventKind,
    /// The key.
    pub key: String,
    /// The revision of the change; for a put, the key's new version. Events arrive in revision
    /// order; a batch's events share one revision.
    pub revision: u64,
    /// Size of the new value (put) or of the value that expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// ETag of the new value (put) or of the value that expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// Expiry instant (Unix ms) of the new value, if it has a TTL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_entries_round_trip_and_bad_ones_say_why() {
        let ops = [
            BatchOp::put("k", Bytes::from_static(b"\xff\x00")).if_revision(3).ttl(Duration::from_millis(1500)),
            BatchOp::put("t", "text"),
            BatchOp::delete("d").if_revision(0),
        ];
        for op in &ops {
            assert_eq!(&BatchEntry::from(op).into_op().unwrap(), op);
        }
        let json = serde_json::to_value(BatchEntry::from(&ops[0])).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"op": "put", "key": "k", "value_base64": "/wA=", "if_revision": 3, "ttl": "1500ms"})
        );
        let bad = |text: &str| serde_json::from_str::<BatchEntry>(text).unwrap().into_op().unwrap_err();
        assert!(bad(r#"{"op":"put","key":"a"}"#).contains("exactly one of value or value_base64"));
        assert!(bad(r#"{"op":"put","key":"a","value_base64":"!!"}"#).contains("not valid base64"));
        assert!(bad(r#"{"op":"put","key":"a","value":"v","ttl":"5 parsecs"}"#).contains("invalid TTL \"5 parsecs\""));
        assert!(bad(r#"{"op":"delete","key":"a","ttl":"5s"}"#).contains("takes no value or ttl"));
        assert!(bad(r#"{"op":"upsert","key":"a"}"#).contains("unknown batch op"));
        assert!(serde_json::from_str::<BatchEntry>(r#"{"op":"put","key":"a","colour":1}"#).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration(" 2h "), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        for bad in ["", "0s", "-5s", "0.5ms", "5 parsecs", "ms", "1e3s"] {
            assert_eq!(parse_duration(bad), Err(DurationError::Malformed), "{bad:?}");
        }
        assert_eq!(parse_duration("36501d"), Err(DurationError::TooLong));
        assert_eq!(parse_duration("99999999999999999999999d"), Err(DurationError::TooLong));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("5min"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration(&format_duration(Duration::from_micros(1))), Ok(Duration::from_millis(1)));
        for zero in ["0", "0s", "0ms", " 0 "] {
            assert_eq!(parse_wait(zero), Ok(Duration::ZERO), "{zero:?}");
        }
        assert_eq!(parse_wait("0.5ms"), Err(DurationError::Malformed));
        assert_eq!(parse_wait("36501d"), Err(DurationError::TooLong));
    }
}
