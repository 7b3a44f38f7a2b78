//! HTTP preconditions as S3 applies them (RFC 7232 order: If-Match, If-Unmodified-Since,
//! If-None-Match, If-Modified-Since). Dates compare at whole-second precision because that is
//! all an HTTP date carries.

use crate::error::{EngineError, EngineResult};
use crate::record::ObjectRecord;

/// An `If-Match` / `If-None-Match` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ETagMatch {
    /// `*`
    Any,
    /// A list of entity tags, unquoted.
    Tags(Vec<String>),
}

impl ETagMatch {
    /// Parses a header value like `"abc", W/"def"` or `*`.
    pub fn parse(value: &str) -> Self {
        if value.trim() == "*" {
            return ETagMatch::Any;
        }
        ETagMatch::Tags(
            value
                .split(',')
                .map(|t| t.trim().trim_start_matches("W/").trim_matches('"').to_string())
                .filter(|t| !t.is_empty())
                .collect(),
        )
    }

    pub fn matches(&self, etag: &str) -> bool {
        match self {
            ETagMatch::Any => true,
            ETagMatch::Tags(tags) => tags.iter().any(|t| t == etag),
        }
    }
}

/// Preconditions of a read (GET/HEAD) or of a copy source. Times are Unix seconds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadConditions {
    pub if_match: Option<ETagMatch>,
    pub if_none_match: Option<ETagMatch>,
    pub if_modified_since: Option<i64>,
    pub if_unmodified_since: Option<i64>,
}

impl ReadConditions {
    pub fn is_empty(&self) -> bool {
        *self == ReadConditions::default()
    }

    /// Checks a GET/HEAD: fails with `PreconditionFailed` (412) or `NotModified` (304).
    pub fn check_read(&self, record: &ObjectRecord) -> EngineResult<()> {
        let modified = record.modified_ms.div_euclid(1000);
        if let Some(if_match) = &self.if_match {
            if !if_match.matches(&record.etag) {
                return Err(EngineError::PreconditionFailed);
            }
        } else if let Some(since) = self.if_unmodified_since
            && modified > since
        {
            return Err(EngineError::PreconditionFailed);
        }
        let not_modified = EngineError::NotModified { etag: record.etag.clone(), last_modified_ms: record.modified_ms };
        if let Some(if_none_match) = &self.if_none_match {
            if if_none_match.matches(&record.etag) {
                return Err(not_modified);
            }
        } else if let Some(since) = self.if_modified_since
            && modified <= since
        {
            return Err(not_modified);
        }
        Ok(())
    }

    /// Checks the source of a copy: every failure is a 412.
    pub fn check_copy_source(&self, record: &ObjectRecord) -> EngineResult<()> {
        match self.check_read(record) {
            Err(EngineError::NotModified { .. }) => Err(EngineError::PreconditionFailed),
            other => other,
        }
    }
}

/// Preconditions of a write (PUT, CompleteMultipartUpload, DELETE with If-Match).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteConditions {
    pub if_match: Option<ETagMatch>,
    pub if_none_match: Option<ETagMatch>,
    /// Meridian extension: the object's current revision must be exactly this (0 = absent).
    pub if_revision: Option<u64>,
    /// Meridian extension: the write is refused once a newer token of this lock was granted.
    pub fence: Option<Fence>,
}

/// A fencing token of a named lock, carried by a write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    pub lock: String,
    pub token: u64,
}

impl WriteConditions {
    /// True when the write holds whatever the current object is.
    pub fn is_unconditional(&self) -> bool {
        *self == WriteConditions::default()
    }

    /// Checks against the current object (`None` when absent) and its revision.
    pub fn check(&self, current: Option<(&ObjectRecord, u64)>) -> EngineResult<()> {
        if let Some(if_match) = &self.if_match {
            match current {
                None => return Err(EngineError::NoSuchKey),
                Some((record, _)) if !if_match.matches(&record.etag) => {
                    return Err(EngineError::PreconditionFailed);
                }
                Some(_) => {}
            }
        }
        if let Some(if_none_match) = &self.if_none_match
            && let Some((record, _)) = current
            && if_none_match.matches(&record.etag)
        {
            return Err(EngineError::PreconditionFailed);
        }
        if let Some(want) = self.if_revision {
            let current = current.map_or(0, |(_, rev)| rev);
            if current != want {
                return Err(EngineError::RevisionMismatch { expected: want, current });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::DataLayout;

    fn record(etag: &str, modified_s: i64) -> ObjectRecord {
        ObjectRecord {
            size: 1,
            etag: etag.into(),
            modified_ms: modified_s * 1000 + 500,
            headers: Default::default(),
            checksum: None,
            data: DataLayout::Inline,
            expires_at_ms: None,
            version: None,
            encryption: None,
        }
    }

    #[test]
    fn parse_etag_lists() {
        assert_eq!(ETagMatch::parse("*"), ETagMatch::Any);
        assert_eq!(ETagMatch::parse("\"a\", W/\"b\""), ETagMatch::Tags(vec!["a".into(), "b".into()]));
    }

    #[test]
    fn read_conditions_follow_s3() {
        let r = record("abc", 1000);
        let tag = |t: &str| Some(ETagMatch::parse(t));
        let ok = |c: ReadConditions| c.check_read(&r).is_ok();
        assert!(ok(ReadConditions { if_match: tag("\"abc\""), ..Default::default() }));
        assert!(matches!(
            ReadConditions { if_match: tag("\"x\""), ..Default::default() }.check_read(&r),
            Err(EngineError::PreconditionFailed)
        ));
        // If-Match true wins over a failing If-Unmodified-Since.
        assert!(ok(ReadConditions { if_match: tag("abc"), if_unmodified_since: Some(10), ..Default::default() }));
        assert!(!ok(ReadConditions { if_unmodified_since: Some(999), ..Default::default() }));
        assert!(ok(ReadConditions { if_unmodified_since: Some(1000), ..Default::default() }));
        assert!(matches!(
            ReadConditions { if_none_match: tag("abc"), ..Default::default() }.check_read(&r),
            Err(EngineError::NotModified { .. })
        ));
        // If-None-Match false (no match) wins over If-Modified-Since.
        assert!(ok(ReadConditions { if_none_match: tag("zzz"), if_modified_since: Some(5000), ..Default::default() }));
        assert!(!ok(ReadConditions { if_modified_since: Some(1000), ..Default::default() }));
        assert!(ok(ReadConditions { if_modified_since: Some(999), ..Default::default() }));
        assert!(matches!(
            ReadConditions { if_none_match: tag("abc"), ..Default::default() }.check_copy_source(&r),
            Err(EngineError::PreconditionFailed)
        ));
    }

    #[test]
    fn write_conditions() {
        let r = record("abc", 1);
        let any = WriteConditions { if_none_match: Some(ETagMatch::Any), ..Default::default() };
        assert!(any.check(None).is_ok());
        assert!(matches!(any.check(Some((&r, 5))), Err(EngineError::PreconditionFailed)));
        let m = WriteConditions { if_match: Some(ETagMatch::parse("abc")), ..Default::default() };
        assert!(m.check(Some((&r, 5))).is_ok());
        assert!(matches!(m.check(None), Err(EngineError::NoSuchKey)));
        let rev = WriteConditions { if_revision: Some(5), ..Default::default() };
        assert!(rev.check(Some((&r, 5))).is_ok());
        assert!(rev.check(Some((&r, 6))).is_err());
        let absent = WriteConditions { if_revision: Some(0), ..Default::default() };
        assert!(absent.check(None).is_ok());
    }
}
