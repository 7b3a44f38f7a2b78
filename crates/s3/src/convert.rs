//! Conversions between engine and s3s types, and engine errors to S3 errors.

use std::collections::BTreeMap;

use http::{HeaderMap, HeaderValue};
use meridian_engine::checksum::{ChecksumAlgorithm, ChecksumType, StoredChecksum};
use meridian_engine::conditions::ETagMatch;
use meridian_engine::record::ObjectHeaders;
use meridian_engine::{EngineError, ErrorKind};
use s3s::dto::{self, ETag, ETagCondition, Timestamp, TimestampFormat};
use s3s::{S3Error, S3ErrorCode};

/// `x-amz-delete-marker: true` and the marker's `x-amz-version-id`.
pub fn delete_marker_headers(version_id: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("x-amz-delete-marker", HeaderValue::from_static("true"));
    if let Ok(v) = HeaderValue::from_str(version_id) {
        headers.insert("x-amz-version-id", v);
    }
    headers
}

/// An engine error as S3 answers it: the specific code where S3 (or Meridian's KV extension)
/// has one for the variant, otherwise the code and status of its [`ErrorKind`].
pub fn s3_error(err: EngineError) -> S3Error {
    use S3ErrorCode as C;
    let kind = err.kind();
    let message = err.to_string();
    if kind == ErrorKind::Internal {
        tracing::error!(error = %message, "internal error");
    }
    let code = match err {
        EngineError::NoSuchBucket => C::NoSuchBucket,
        EngineError::BucketAlreadyOwnedByYou => C::BucketAlreadyOwnedByYou,
        EngineError::BucketAlreadyExists => C::BucketAlreadyExists,
        EngineError::BucketNotEmpty | EngineError::BucketHasSnapshots(_) => C::BucketNotEmpty,
        EngineError::NoSuchSnapshot(_) => return custom("NoSuchSnapshot", http::StatusCode::NOT_FOUND, message),
        EngineError::SnapshotExists(_) => return custom("SnapshotExists", http::StatusCode::CONFLICT, message),
        EngineError::InvalidBucketName(_) => C::InvalidBucketName,
        EngineError::NoSuchKey => C::NoSuchKey,
        EngineError::NoSuchVersion => C::NoSuchVersion,
        EngineError::DeleteMarker { version_id, by_id } => {
            let mut e = match by_id {
                true => S3Error::with_message(C::MethodNotAllowed, message),
                false => S3Error::with_message(C::NoSuchKey, message),
            };
            e.set_headers(delete_marker_headers(&version_id));
            return e;
        }
        EngineError::KeyTooLong(_) => C::KeyTooLongError,
        EngineError::InvalidKey(_) | EngineError::InvalidArgument(_) => C::InvalidArgument,
        EngineError::InvalidRequest(_) => C::InvalidRequest,
        EngineError::InvalidBucketState(_) => C::InvalidBucketState,
        EngineError::NoLockConfiguration => C::ObjectLockConfigurationNotFoundError,
        EngineError::NoObjectLock => C::NoSuchObjectLockConfiguration,
        EngineError::MalformedXml => C::MalformedXML,
        EngineError::MalformedPolicy(_) => C::MalformedPolicy,
        EngineError::InvalidBucketAclWithObjectOwnership => C::InvalidBucketAclWithObjectOwnership,
        EngineError::AccessControlListNotSupported => C::AccessControlListNotSupported,
        EngineError::InvalidTag(_) => C::InvalidTag,
        EngineError::InvalidRange { size } => {
            let mut e = S3Error::with_message(C::InvalidRange, message);
            let mut headers = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                headers.insert(http::header::CONTENT_RANGE, v);
            }
            e.set_headers(headers);
            return e;
        }
        EngineError::InvalidPartNumber => {
            let mut e = S3Error::with_message(C::Custom("InvalidPartNumber".into()), message);
            e.set_status_code(http::StatusCode::RANGE_NOT_SATISFIABLE);
            return e;
        }
        EngineError::PreconditionFailed => C::PreconditionFailed,
        EngineError::NotModified { etag, last_modified_ms } => {
            let mut e = S3Error::new(C::NotModified);
            let mut headers = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&format!("\"{etag}\"")) {
                headers.insert(http::header::ETAG, v);
            }
            if let Ok(v) = HeaderValue::from_str(&http_date(last_modified_ms)) {
                headers.insert(http::header::LAST_MODIFIED, v);
            }
            e.set_headers(headers);
            return e;
        }
        EngineError::NoSuchUpload => C::NoSuchUpload,
        EngineError::InvalidPart(_) => C::InvalidPart,
        EngineError::InvalidPartOrder => C::InvalidPartOrder,
        EngineError::EntityTooSmall { .. } => C::EntityTooSmall,
        EngineError::EntityTooLarge { .. } => C::EntityTooLarge,
        EngineError::BadDigest | EngineError::ChecksumMismatch { .. } => C::BadDigest,
        EngineError::IncompleteBody => C::IncompleteBody,
        EngineError::AccessDenied(_) => C::AccessDenied,
        EngineError::CustomerKeyRequired => C::InvalidRequest,
        EngineError::KmsKeyNotFound(_) => {
            return custom("KMS.NotFoundException", http::StatusCode::BAD_REQUEST, message);
        }
        EngineError::PinnedElsewhere { .. } | EngineError::OutsideRegions { .. } => {
            return custom("PinnedToAnotherRegion", http::StatusCode::FORBIDDEN, message);
        }
        EngineError::RegionUnavailable { .. } => {
            return custom("RegionUnavailable", http::StatusCode::SERVICE_UNAVAILABLE, message);
        }
        EngineError::NoSuchAccessKey(_) => C::InvalidAccessKeyId,
        EngineError::NoSuchSite(_) => return custom("NoSuchSite", http::StatusCode::NOT_FOUND, message),
        EngineError::AccessKeyExists(_) => return custom("AccessKeyExists", http::StatusCode::CONFLICT, message),
        EngineError::RevisionMismatch { current, .. } | EngineError::BatchRevisionMismatch { current, .. } => {
            let mut e = S3Error::with_message(C::PreconditionFailed, message);
            let mut headers = HeaderMap::new();
            headers.insert(crate::REVISION_HEADER, HeaderValue::from(current));
            e.set_headers(headers);
            return e;
        }
        EngineError::LockContended { ref owner, .. } => {
            let mut e = custom("LockContended", http::StatusCode::CONFLICT, message.clone());
            if let Ok(v) = HeaderValue::from_str(owner) {
                let mut headers = HeaderMap::new();
                headers.insert("x-meridian-lock-owner", v);
                e.set_headers(headers);
            }
            return e;
        }
        EngineError::LockNotHeld { .. } => return custom("LockNotHeld", http::StatusCode::CONFLICT, message),
        EngineError::FenceRejected { .. } => return custom("FenceRejected", http::StatusCode::CONFLICT, message),
        EngineError::RevisionCompacted { oldest, .. } => {
            let mut e = custom("RevisionCompacted", http::StatusCode::GONE, message);
            let mut headers = HeaderMap::new();
            headers.insert("x-meridian-oldest-revision", HeaderValue::from(oldest));
            e.set_headers(headers);
            return e;
        }
        EngineError::Body(source) => return body_error(source),
        // Cluster administration errors do not arise from S3 requests; they keep their kind.
        EngineError::Contended
        | EngineError::NoSuchNode(_)
        | EngineError::NodeIsLive { .. }
        | EngineError::Unavailable(_)
        | EngineError::Meta(_)
        | EngineError::Blob(_)
        | EngineError::KeyUnavailable(_)
        | EngineError::Corrupt(_) => return kind_error(kind, message),
    };
    S3Error::with_message(code, message)
}

/// The S3 answer to an error of `kind` that has no more specific code.
fn kind_error(kind: ErrorKind, message: String) -> S3Error {
    use S3ErrorCode as C;
    let code = match kind {
        ErrorKind::Invalid => C::InvalidRequest,
        ErrorKind::Denied => C::AccessDenied,
        ErrorKind::NotFound => return custom("NotFound", http::StatusCode::NOT_FOUND, message),
        ErrorKind::Conflict => C::OperationAborted,
        ErrorKind::Contended => C::SlowDown,
        ErrorKind::Unavailable => C::ServiceUnavailable,
        ErrorKind::Internal => C::InternalError,
    };
    S3Error::with_message(code, message)
}

/// An error code S3 does not have, with its status.
fn custom(code: &'static str, status: http::StatusCode, message: String) -> S3Error {
    let mut e = S3Error::with_message(S3ErrorCode::Custom(code.into()), message);
    e.set_status_code(status);
    e
}

/// A failure while reading the request body. s3s verifies payload hashes and chunk signatures
/// as the body streams through; its error types are private, so they are recognised by their
/// messages (checked in the tests) and mapped to the codes S3 uses.
fn body_error(source: meridian_engine::BodyError) -> S3Error {
    let source = match source.downcast::<S3Error>() {
        Ok(e) => return *e,
        Err(other) => other,
    };
    let text = meridian_common::errors::chain(&*source);
    if text.contains("Sha256Mismatch") {
        let mut e = S3Error::with_message(
            S3ErrorCode::Custom("XAmzContentSHA256Mismatch".into()),
            "The provided 'x-amz-content-sha256' header does not match what was computed.",
        );
        e.set_status_code(http::StatusCode::BAD_REQUEST);
        return e;
    }
    let code = if text.contains("SignatureMismatch") {
        S3ErrorCode::SignatureDoesNotMatch
    } else if text.contains("FormatError") || text.contains("TooLarge") || text.contains("TooMany") {
        S3ErrorCode::InvalidRequest
    } else {
        S3ErrorCode::IncompleteBody
    };
    S3Error::with_message(code, format!("the request body was refused: {text}"))
}

pub fn etag(value: &str) -> ETag {
    ETag::Strong(value.to_string())
}

pub fn etag_match(cond: Option<ETagCondition>) -> Option<ETagMatch> {
    cond.map(|c| match c {
        ETagCondition::Any => ETagMatch::Any,
        ETagCondition::ETag(tag) => ETagMatch::Tags(vec![tag.value().to_string()]),
    })
}

pub fn timestamp(ms: i64) -> Timestamp {
    let nanos = i128::from(ms) * 1_000_000;
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    Timestamp::from(t)
}

pub fn unix_seconds(ts: &Timestamp) -> i64 {
    time::OffsetDateTime::from(ts.clone()).unix_timestamp()
}

pub fn http_date(ms: i64) -> String {
    let mut out = Vec::new();
    match timestamp(ms).format(TimestampFormat::HttpDate, &mut out) {
        Ok(()) => String::from_utf8(out).unwrap_or_default(),
        Err(_) => String::new(),
    }
}

fn format_expires(ts: &Timestamp) -> Option<String> {
    let mut out = Vec::new();
    ts.format(TimestampFormat::HttpDate, &mut out).ok()?;
    String::from_utf8(out).ok()
}

pub fn parse_expires(value: &str) -> Option<Timestamp> {
    Timestamp::parse(TimestampFormat::HttpDate, value).ok()
}

/// The stored headers of a PUT / CreateMultipartUpload / CopyObject(REPLACE).
pub struct HeaderInput {
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub content_disposition: Option<String>,
    pub content_language: Option<String>,
    pub cache_control: Option<String>,
    pub expires: Option<Timestamp>,
    pub metadata: Option<dto::Metadata>,
    /// Parsed from `x-amz-tagging`.
    pub tags: meridian_engine::tagging::Tags,
}

impl HeaderInput {
    pub fn into_headers(self) -> ObjectHeaders {
        ObjectHeaders {
            content_type: self.content_type,
            content_encoding: self.content_encoding,
            content_disposition: self.content_disposition,
            content_language: self.content_language,
            cache_control: self.cache_control,
            expires: self.expires.as_ref().and_then(format_expires),
            user_metadata: self
                .metadata
                .map(|m| m.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect::<BTreeMap<_, _>>())
                .unwrap_or_default(),
            tags: self.tags,
            lock: Default::default(),
        }
    }
}

pub fn metadata(headers: &ObjectHeaders) -> Option<dto::Metadata> {
    if headers.user_metadata.is_empty() {
        return None;
    }
    Some(headers.user_metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

pub fn checksum_algorithm(alg: Option<&dto::ChecksumAlgorithm>) -> Result<Option<ChecksumAlgorithm>, S3Error> {
    match alg {
        None => Ok(None),
        Some(a) => ChecksumAlgorithm::parse(a.as_str()).map(Some).ok_or_else(|| {
            S3Error::with_message(
                S3ErrorCode::InvalidArgument,
                format!("unsupported checksum algorithm {:?}", a.as_str()),
            )
        }),
    }
}

/// The five checksum fields of an S3 output, filled from a stored checksum.
#[derive(Default)]
pub struct ChecksumFields {
    pub crc32: Option<String>,
    pub crc32c: Option<String>,
    pub crc64nvme: Option<String>,
    pub sha1: Option<String>,
    pub sha256: Option<String>,
    pub kind: Option<dto::ChecksumType>,
}

impl ChecksumFields {
    pub fn from_stored(stored: Option<&StoredChecksum>) -> Self {
        let mut out = ChecksumFields::default();
        let Some(stored) = stored else { return out };
        let value = Some(stored.header_value());
        match stored.algorithm {
            ChecksumAlgorithm::Crc32 => out.crc32 = value,
            ChecksumAlgorithm::Crc32c => out.crc32c = value,
            ChecksumAlgorithm::Crc64nvme => out.crc64nvme = value,
            ChecksumAlgorithm::Sha1 => out.sha1 = value,
            ChecksumAlgorithm::Sha256 => out.sha256 = value,
        }
        out.kind = Some(dto::ChecksumType::from(
            match stored.kind {
                ChecksumType::FullObject => dto::ChecksumType::FULL_OBJECT,
                ChecksumType::Composite => dto::ChecksumType::COMPOSITE,
            }
            .to_string(),
        ));
        out
    }
}

/// Percent-encodes a key for `encoding-type=url` listings (S3 leaves `/` alone... and so do we,
/// matching what clients decode).
pub fn url_encode(value: &str) -> String {
    const SET: &percent_encoding::AsciiSet =
        &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~').remove(b'/');
    percent_encoding::utf8_percent_encode(value, SET).to_string()
}

/// An engine body as an s3s response body, with its exact length so the response gets a
/// Content-Length.
pub struct ResponseBody {
    inner: sync_wrapper::SyncWrapper<meridian_engine::Body>,
    /// Bytes still to come, when known.
    remaining: Option<u64>,
}

impl ResponseBody {
    pub fn new(body: meridian_engine::Body, len: u64) -> Self {
        ResponseBody { inner: sync_wrapper::SyncWrapper::new(body), remaining: Some(len) }
    }

    /// A body of unknown length (sent chunked), such as a watch stream.
    pub fn streaming(body: meridian_engine::Body) -> Self {
        ResponseBody { inner: sync_wrapper::SyncWrapper::new(body), remaining: None }
    }
}

impl futures::Stream for ResponseBody {
    type Item = Result<bytes::Bytes, s3s::StdError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let poll = self.inner.get_mut().as_mut().poll_next(cx);
        if let (std::task::Poll::Ready(Some(Ok(chunk))), Some(remaining)) = (&poll, self.remaining) {
            self.remaining = Some(remaining.saturating_sub(chunk.len() as u64));
        }
        poll
    }
}

impl s3s::stream::ByteStream for ResponseBody {
    fn remaining_length(&self) -> s3s::stream::RemainingLength {
        match self.remaining {
            Some(n) => s3s::stream::RemainingLength::new_exact(usize::try_from(n).unwrap_or(usize::MAX)),
            None => s3s::stream::RemainingLength::unknown(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_engine::MetaError;

    fn code_and_status(e: EngineError) -> (String, Option<http::StatusCode>) {
        let e = s3_error(e);
        (e.code().as_str().to_string(), e.status_code())
    }

    #[test]
    fn specific_variants_keep_their_s3_codes() {
        let (code, _) = code_and_status(EngineError::NoSuchKey);
        assert_eq!(code, "NoSuchKey");
        let (code, _) = code_and_status(EngineError::NoSuchBucket);
        assert_eq!(code, "NoSuchBucket");
        let mismatch = s3_error(EngineError::RevisionMismatch { expected: 1, current: 7 });
        assert_eq!(mismatch.code().as_str(), "PreconditionFailed");
        assert_eq!(
            mismatch.headers().and_then(|h| h.get(crate::REVISION_HEADER)).map(|v| v.as_bytes()),
            Some(&b"7"[..])
        );
    }

    #[test]
    fn other_variants_answer_with_their_kind() {
        let unavailable = code_and_status(EngineError::Meta(MetaError::Unavailable("no quorum".into())));
        assert_eq!(unavailable.0, "ServiceUnavailable");
        let closed = code_and_status(EngineError::Meta(MetaError::Closed));
        assert_eq!(closed.0, "ServiceUnavailable");
        let too_large = code_and_status(EngineError::Meta(MetaError::TooLarge("10000 ops".into())));
        assert_eq!(too_large.0, "InvalidRequest");
        let (code, _) = code_and_status(EngineError::Contended);
        assert_eq!(code, "SlowDown");
        let (code, _) = code_and_status(EngineError::Corrupt("bad record".into()));
        assert_eq!(code, "InternalError");
        let (code, status) = code_and_status(EngineError::Meta(MetaError::Compacted { requested: 1, oldest: 9 }));
        assert_eq!((code.as_str(), status), ("NotFound", Some(http::StatusCode::NOT_FOUND)));
    }
}
