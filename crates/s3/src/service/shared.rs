//! Request parsing and response helpers several operation groups share.

use futures::TryStreamExt;
use meridian_engine::checksum::ChecksumAlgorithm;
use meridian_engine::conditions::ReadConditions;
use meridian_engine::iam::{Access, authorize};
use meridian_engine::{Body, BodyError, EngineError, Integrity, Revision};
use s3s::dto::*;
use s3s::{S3Error, S3ErrorCode, S3Request, S3Response, S3Result, s3_error};

use meridian_engine::policy::{Verdict, resource_arn};

use super::MeridianS3;
use crate::REVISION_HEADER;
use crate::access::evaluate_policy;
use crate::context::{Checked, RequestContext};
use crate::convert::{etag_match, s3_error, unix_seconds};

/// A copy reads its source: the key needs read access there as well (a grant, or an Allow of
/// s3:GetObject in the source bucket's policy; an explicit Deny there refuses). The source
/// bucket's record is read unless it is the request's own bucket, which the access check has
/// read.
pub(super) async fn check_source(s3: &MeridianS3, context: &Checked<'_>, bucket: &str, key: &str) -> S3Result<()> {
    let record = match context.bucket(bucket) {
        Some(seen) => seen.record.clone(),
        None => match s3.engine.bucket_for_access(bucket).await {
            Ok((record, _)) => record,
            Err(meridian_engine::EngineError::NoSuchBucket) => return Err(s3_error!(NoSuchBucket)),
            Err(e) => return Err(s3_error(e)),
        },
    };
    let (verdict, _) = evaluate_policy(bucket, &record, || {
        context.facts.policy_request("s3:GetObject".into(), resource_arn(bucket, Some(key)), context.key())
    });
    let admin = context.key().is_some_and(|k| k.admin);
    match verdict {
        Verdict::Deny if !admin => {
            Err(S3Error::with_message(S3ErrorCode::AccessDenied, "Access Denied to the copy source"))
        }
        Verdict::Allow => Ok(()),
        _ if authorize(context.key(), &record, Access::Read) => Ok(()),
        _ => Err(S3Error::with_message(S3ErrorCode::AccessDenied, "Access Denied to the copy source")),
    }
}

pub(super) fn with_revision<T>(output: T, revision: Revision) -> S3Response<T> {
    let mut resp = S3Response::new(output);
    if let Ok(value) = http::HeaderValue::from_str(&revision.to_string()) {
        resp.headers.insert(REVISION_HEADER, value);
    }
    resp
}

/// The answer to a write: its revision, and the session cookie moved to it, so a browser's next
/// reads in any region reflect the write without custom headers (LiteFS's `__txid` idea).
pub(super) fn written<T>(output: T, revision: Revision) -> S3Response<T> {
    let mut resp = with_revision(output, revision);
    crate::kv::session_cookie(revision, &mut resp.headers);
    resp
}

pub(super) fn not_implemented(what: &str) -> S3Error {
    S3Error::with_message(S3ErrorCode::NotImplemented, format!("{what} is not implemented by Meridian"))
}

/// Refuses request features we do not implement instead of silently ignoring them. Objects
/// carry no ACL of their own (the bucket's grants decide), so of the canned ACLs an object write
/// may name only `private` and `bucket-owner-full-control` (the bucket's owner owns every object)
/// are honoured as they are; with ACLs disabled (`BucketOwnerEnforced`) S3 accepts only the
/// latter and answers others `AccessControlListNotSupported`.
pub(super) fn refuse_unsupported(
    acl: Option<&str>,
    storage_class: Option<&StorageClass>,
    acls_disabled: bool,
) -> S3Result<()> {
    match acl {
        None | Some(ObjectCannedACL::BUCKET_OWNER_FULL_CONTROL) => {}
        Some(_) if acls_disabled => return Err(s3_error(EngineError::AccessControlListNotSupported)),
        Some(ObjectCannedACL::PRIVATE) => {}
        Some(acl) => return Err(not_implemented(&format!("the {acl:?} canned ACL"))),
    }
    if let Some(class) = storage_class
        && class.as_str() != StorageClass::STANDARD
    {
        return Err(not_implemented(&format!("storage class {:?}", class.as_str())));
    }
    Ok(())
}

/// Whether the bucket an object write goes to has ACLs disabled: from the record the access
/// check read, else read now, but only when an ACL is named (the only case it matters).
pub(super) async fn acls_disabled<T>(
    s3: &MeridianS3,
    req: &S3Request<T>,
    bucket: &str,
    acl: Option<&str>,
) -> S3Result<bool> {
    if acl.is_none() {
        return Ok(false);
    }
    if let Some((record, _)) = RequestContext::of(req)?.seen_bucket(bucket) {
        return Ok(record.acls_disabled());
    }
    match s3.engine.bucket_for_access(bucket).await {
        Ok((record, _)) => Ok(record.acls_disabled()),
        Err(EngineError::NoSuchBucket) => Err(s3_error!(NoSuchBucket)),
        Err(e) => Err(s3_error(e)),
    }
}

pub(super) fn request_body(body: Option<StreamingBlob>) -> Body {
    match body {
        Some(blob) => Box::pin(blob.map_err(|e| e as BodyError)),
        None => meridian_engine::body_from_bytes(bytes::Bytes::new()),
    }
}

/// What the request says about its checksum: a header value, or a trailer to read after the
/// body, or just the algorithm the SDK wants computed.
pub(super) struct ChecksumHeaders {
    pub(super) algorithm: Option<ChecksumAlgorithm>,
    pub(super) crc32: Option<String>,
    pub(super) crc32c: Option<String>,
    pub(super) crc64nvme: Option<String>,
    pub(super) sha1: Option<String>,
    pub(super) sha256: Option<String>,
}

pub(super) fn integrity<T>(
    req: &S3Request<T>,
    sums: ChecksumHeaders,
    content_md5: Option<String>,
    content_length: Option<i64>,
) -> S3Result<Integrity> {
    let given = [
        (ChecksumAlgorithm::Crc32, sums.crc32),
        (ChecksumAlgorithm::Crc32c, sums.crc32c),
        (ChecksumAlgorithm::Crc64nvme, sums.crc64nvme),
        (ChecksumAlgorithm::Sha1, sums.sha1),
        (ChecksumAlgorithm::Sha256, sums.sha256),
    ];
    let mut given: Vec<(ChecksumAlgorithm, String)> =
        given.into_iter().filter_map(|(a, v)| v.map(|v| (a, v))).collect();
    if given.len() > 1 {
        return Err(s3_error!(
            InvalidRequest,
            "Expecting a single x-amz-checksum- header. Multiple checksum types are not allowed."
        ));
    }
    let mut out = Integrity {
        content_md5,
        content_length: content_length.and_then(|l| u64::try_from(l).ok()),
        ..Default::default()
    };
    if let Some((algorithm, value)) = given.pop() {
        out.algorithm = Some(algorithm);
        out.expected = Some(value);
        return Ok(out);
    }
    let trailer_name =
        req.headers.get("x-amz-trailer").and_then(|v| v.to_str().ok()).map(str::trim).map(str::to_ascii_lowercase);
    if let Some(name) = trailer_name {
        let algorithm = name
            .strip_prefix("x-amz-checksum-")
            .and_then(ChecksumAlgorithm::parse)
            .ok_or_else(|| s3_error!(InvalidRequest, "unsupported x-amz-trailer {name:?}"))?;
        let handle = req.trailing_headers.clone();
        out.algorithm = Some(algorithm);
        out.trailer = Some(Box::new(move || {
            let handle = handle?;
            handle
                .read(|headers| headers.get(name.as_str()).and_then(|v| v.to_str().ok()).map(str::to_string))
                .flatten()
        }));
        return Ok(out);
    }
    out.algorithm = sums.algorithm;
    Ok(out)
}

/// The bucket, key and version (`?versionId=`) of a copy source.
pub(super) fn source_of(copy_source: &CopySource) -> S3Result<(String, String, Option<String>)> {
    match copy_source {
        CopySource::Bucket { bucket, key, version_id } => {
            Ok((bucket.to_string(), key.to_string(), version_id.as_deref().map(str::to_string)))
        }
        _ => Err(not_implemented("access point copy sources")),
    }
}

pub(super) fn read_conditions(
    if_match: Option<ETagCondition>,
    if_none_match: Option<ETagCondition>,
    if_modified_since: Option<&Timestamp>,
    if_unmodified_since: Option<&Timestamp>,
) -> ReadConditions {
    ReadConditions {
        if_match: etag_match(if_match),
        if_none_match: etag_match(if_none_match),
        if_modified_since: if_modified_since.map(unix_seconds),
        if_unmodified_since: if_unmodified_since.map(unix_seconds),
    }
}

/// The canned ACLs Meridian implements: `private` and `public-read` (anonymous GET/HEAD).
pub(super) fn bucket_acl_is_public(acl: Option<&BucketCannedACL>) -> S3Result<bool> {
    match acl.map(BucketCannedACL::as_str) {
        None | Some(BucketCannedACL::PRIVATE) => Ok(false),
        Some(BucketCannedACL::PUBLIC_READ) => Ok(true),
        Some(BucketCannedACL::PUBLIC_READ_WRITE) => Err(not_implemented(
            "the \"public-read-write\" canned ACL: anonymous requests never write (grant write to a key with x-amz-grant-write: id=\"KEY-NAME\")",
        )),
        Some(BucketCannedACL::AUTHENTICATED_READ) => Err(not_implemented(
            "the \"authenticated-read\" canned ACL: there is no grant to every key (grant read to each with x-amz-grant-read: id=\"KEY-NAME\")",
        )),
        Some(other) => Err(not_implemented(&format!("the {other:?} canned ACL (use private or public-read)"))),
    }
}

#[allow(non_snake_case)]
pub(super) fn ChecksumAlgorithm_from(name: &str) -> s3s::dto::ChecksumAlgorithm {
    s3s::dto::ChecksumAlgorithm::from(name.to_string())
}
