//! Object operations: PutObject, GetObject, HeadObject, DeleteObject, DeleteObjects and
//! CopyObject.

use meridian_engine::conditions::WriteConditions;
use meridian_engine::{ByteRange, Consistency, CopyRequest, GetOutcome, GetRequest, PutRequest};
use s3s::dto::*;
use s3s::{S3Request, S3Response, S3Result, s3_error};

use super::MeridianS3;
use super::lock::{bypass, lock_headers, lock_visibility, requested_lock, require_write_integrity};
use super::shared::{
    ChecksumHeaders, acls_disabled, check_source, integrity, not_implemented, read_conditions, refuse_unsupported,
    request_body, source_of, with_revision, written,
};
use super::sse::{SseFields, copy_source_customer_headers, customer_headers, write_protection};
use super::tagging::{tag_count, tags_from_header};
use crate::context::RequestContext;
use crate::convert::{
    ChecksumFields, HeaderInput, ResponseBody, checksum_algorithm, etag, etag_match, metadata, parse_expires, s3_error,
    timestamp,
};
use crate::kv::{KvWrite, expiry_headers, read_consistency};

pub(super) async fn put_object(
    s3: &MeridianS3,
    mut req: S3Request<PutObjectInput>,
) -> S3Result<S3Response<PutObjectOutput>> {
    let acl = req.input.acl.as_ref().map(ObjectCannedACL::as_str);
    refuse_unsupported(acl, req.input.storage_class.as_ref(), acls_disabled(s3, &req, &req.input.bucket, acl).await?)?;
    let input = &mut req.input;
    let protection = write_protection!(input)?;
    if input.write_offset_bytes.is_some() {
        return Err(not_implemented("appending with x-amz-write-offset-bytes"));
    }
    let sums = ChecksumHeaders {
        algorithm: checksum_algorithm(input.checksum_algorithm.as_ref())?,
        crc32: input.checksum_crc32.take(),
        crc32c: input.checksum_crc32c.take(),
        crc64nvme: input.checksum_crc64nvme.take(),
        sha1: input.checksum_sha1.take(),
        sha256: input.checksum_sha256.take(),
    };
    let integrity = integrity(&req, sums, req.input.content_md5.clone(), req.input.content_length)?;
    let kv = KvWrite::from_headers(&req.headers)?;
    let seen = RequestContext::of(&req)?.seen_bucket(&req.input.bucket);
    let input = &req.input;
    let lock = requested_lock!(input)?;
    require_write_integrity(&req, &req.input.bucket, &lock)?;
    let input = req.input;
    let mut headers = HeaderInput {
        content_type: input.content_type.map(|c| c.to_string()),
        content_encoding: input.content_encoding,
        content_disposition: input.content_disposition,
        content_language: input.content_language,
        cache_control: input.cache_control,
        expires: input.expires,
        metadata: input.metadata,
        tags: tags_from_header(input.tagging.as_deref())?,
    }
    .into_headers();
    headers.lock = lock;
    let conditions = kv.conditions(WriteConditions {
        if_match: etag_match(input.if_match),
        if_none_match: etag_match(input.if_none_match),
        ..Default::default()
    });
    let request = PutRequest {
        bucket: input.bucket,
        key: input.key,
        body: request_body(input.body),
        headers,
        integrity,
        conditions,
        expires_at_ms: kv.expires_at_ms,
        protection,
        form_upload: req.method == http::Method::POST,
    };
    let outcome = match kv.transaction {
        Some((wait, lock_ttl)) => s3.engine.put_transaction(request, wait, lock_ttl).await,
        None => s3.engine.put_object_in(seen, request).await,
    }
    .map_err(s3_error)?;
    let sums = ChecksumFields::from_stored(outcome.record.checksum.as_ref());
    let sse = SseFields::of(outcome.record.encryption.as_ref());
    let output = PutObjectOutput {
        e_tag: Some(etag(&outcome.etag)),
        size: Some(outcome.size as i64),
        server_side_encryption: sse.sse,
        ssekms_key_id: sse.kms_key_id,
        sse_customer_algorithm: sse.customer_algorithm,
        sse_customer_key_md5: sse.customer_key_md5,
        checksum_crc32: sums.crc32,
        checksum_crc32c: sums.crc32c,
        checksum_crc64nvme: sums.crc64nvme,
        checksum_sha1: sums.sha1,
        checksum_sha256: sums.sha256,
        checksum_type: sums.kind,
        version_id: version_id(&outcome.record),
        ..Default::default()
    };
    Ok(written(output, outcome.revision))
}

/// How fresh an object read must be: as the request asks, except that reads of a multi-region
/// bucket are always strong (its promise: every region reads the newest acknowledged write).
fn object_read_consistency<T>(req: &S3Request<T>, bucket: &str) -> S3Result<Consistency> {
    let asked = read_consistency(&req.headers)?;
    let context = RequestContext::of(req)?;
    let multi = context
        .bucket(bucket)
        .is_some_and(|b| matches!(b.record.location, meridian_engine::record::Location::MultiRegion { .. }));
    Ok(if multi { Consistency::Strong } else { asked })
}

/// The engine's read of a GetObject or HeadObject input (they name these fields alike).
macro_rules! read_request {
    ($input:ident, $customer_key:expr, $consistency:expr) => {
        GetRequest {
            version_id: $input.version_id,
            customer_key: $customer_key,
            consistency: $consistency,
            bucket: $input.bucket,
            key: $input.key,
            range: byte_range($input.range),
            part_number: $input.part_number.map(|n| n.max(0) as u32),
            conditions: read_conditions(
                $input.if_match,
                $input.if_none_match,
                $input.if_modified_since.as_ref(),
                $input.if_unmodified_since.as_ref(),
            ),
        }
    };
}

pub(super) async fn get_object(
    s3: &MeridianS3,
    req: S3Request<GetObjectInput>,
) -> S3Result<S3Response<GetObjectOutput>> {
    let consistency = object_read_consistency(&req, &req.input.bucket)?;
    let snapshot = crate::kv::snapshot_asked(&req.headers, &req.uri)?;
    let visible = lock_visibility(&req, &req.input.bucket, &req.input.key)?;
    let input = req.input;
    let want_checksum = input.checksum_mode.as_ref().is_some_and(|m| m.as_str() == ChecksumMode::ENABLED);
    let customer_key = customer_headers!(input).key()?;
    let read = read_request!(input, customer_key, consistency);
    let out = s3.engine.read_object_at(read, snapshot.as_deref(), true).await.map_err(s3_error)?;
    let whole = out.range.is_none();
    let sums = if want_checksum && whole {
        ChecksumFields::from_stored(out.record.checksum.as_ref())
    } else {
        ChecksumFields::default()
    };
    let headers = &out.record.headers;
    let (lock_mode, lock_until, legal_hold) = lock_headers(&headers.lock, visible);
    let sse = SseFields::of(out.record.encryption.as_ref());
    let output = GetObjectOutput {
        server_side_encryption: sse.sse,
        ssekms_key_id: sse.kms_key_id,
        sse_customer_algorithm: sse.customer_algorithm,
        sse_customer_key_md5: sse.customer_key_md5,
        accept_ranges: Some("bytes".into()),
        content_length: Some(out.content_length() as i64),
        content_range: content_range(&out),
        e_tag: Some(etag(&out.record.etag)),
        last_modified: Some(timestamp(out.record.modified_ms)),
        content_type: Some(
            input
                .response_content_type
                .or_else(|| headers.content_type.clone())
                .unwrap_or_else(|| "binary/octet-stream".into()),
        ),
        content_encoding: input.response_content_encoding.or_else(|| headers.content_encoding.clone()),
        content_disposition: input.response_content_disposition.or_else(|| headers.content_disposition.clone()),
        content_language: input.response_content_language.or_else(|| headers.content_language.clone()),
        cache_control: input.response_cache_control.or_else(|| headers.cache_control.clone()),
        expires: input.response_expires.or_else(|| headers.expires.as_deref().and_then(parse_expires)),
        metadata: metadata(headers),
        tag_count: tag_count(&headers.tags),
        version_id: version_id(&out.record),
        object_lock_mode: lock_mode,
        object_lock_retain_until_date: lock_until,
        object_lock_legal_hold_status: legal_hold,
        parts_count: out.parts_count.map(|n| n as i32),
        checksum_crc32: sums.crc32,
        checksum_crc32c: sums.crc32c,
        checksum_crc64nvme: sums.crc64nvme,
        checksum_sha1: sums.sha1,
        checksum_sha256: sums.sha256,
        checksum_type: sums.kind,
        ..Default::default()
    };
    let revision = out.revision;
    let expires_at = out.record.expires_at_ms;
    let source = out.source.clone();
    let len = out.content_length();
    let body = StreamingBlob::new(ResponseBody::new(out.body, len));
    let mut resp = with_revision(GetObjectOutput { body: Some(body), ..output }, revision);
    expiry_headers(expires_at, &mut resp.headers);
    source_headers(s3, source.as_ref(), &mut resp.headers);
    Ok(resp)
}

pub(super) async fn head_object(
    s3: &MeridianS3,
    req: S3Request<HeadObjectInput>,
) -> S3Result<S3Response<HeadObjectOutput>> {
    let consistency = object_read_consistency(&req, &req.input.bucket)?;
    let snapshot = crate::kv::snapshot_asked(&req.headers, &req.uri)?;
    let visible = lock_visibility(&req, &req.input.bucket, &req.input.key)?;
    let input = req.input;
    let want_checksum = input.checksum_mode.as_ref().is_some_and(|m| m.as_str() == ChecksumMode::ENABLED);
    let customer_key = customer_headers!(input).key()?;
    let read = read_request!(input, customer_key, consistency);
    let out = s3.engine.read_object_at(read, snapshot.as_deref(), false).await.map_err(s3_error)?;
    let sums = if want_checksum && out.range.is_none() {
        ChecksumFields::from_stored(out.record.checksum.as_ref())
    } else {
        ChecksumFields::default()
    };
    let headers = &out.record.headers;
    let (lock_mode, lock_until, legal_hold) = lock_headers(&headers.lock, visible);
    let sse = SseFields::of(out.record.encryption.as_ref());
    let output = HeadObjectOutput {
        server_side_encryption: sse.sse,
        ssekms_key_id: sse.kms_key_id,
        sse_customer_algorithm: sse.customer_algorithm,
        sse_customer_key_md5: sse.customer_key_md5,
        accept_ranges: Some("bytes".into()),
        content_length: Some(out.content_length() as i64),
        content_range: content_range(&out),
        e_tag: Some(etag(&out.record.etag)),
        last_modified: Some(timestamp(out.record.modified_ms)),
        content_type: Some(headers.content_type.clone().unwrap_or_else(|| "binary/octet-stream".into())),
        content_encoding: headers.content_encoding.clone(),
        content_disposition: headers.content_disposition.clone(),
        content_language: headers.content_language.clone(),
        cache_control: headers.cache_control.clone(),
        expires: headers.expires.as_deref().and_then(parse_expires),
        metadata: metadata(headers),
        version_id: version_id(&out.record),
        object_lock_mode: lock_mode,
        object_lock_retain_until_date: lock_until,
        object_lock_legal_hold_status: legal_hold,
        parts_count: out.parts_count.map(|n| n as i32),
        checksum_crc32: sums.crc32,
        checksum_crc32c: sums.crc32c,
        checksum_crc64nvme: sums.crc64nvme,
        checksum_sha1: sums.sha1,
        checksum_sha256: sums.sha256,
        checksum_type: sums.kind,
        ..Default::default()
    };
    let mut resp = with_revision(output, out.revision);
    expiry_headers(out.record.expires_at_ms, &mut resp.headers);
    // s3s's HeadObjectOutput has no field for it.
    if let Some(count) = tag_count(&out.record.headers.tags) {
        resp.headers.insert("x-amz-tagging-count", http::HeaderValue::from(count));
    }
    Ok(resp)
}

pub(super) async fn delete_object(
    s3: &MeridianS3,
    req: S3Request<DeleteObjectInput>,
) -> S3Result<S3Response<DeleteObjectOutput>> {
    let kv = KvWrite::from_headers(&req.headers)?;
    if kv.expires_at_ms.is_some() || kv.transaction.is_some() {
        return Err(s3_error!(InvalidArgument, "TTL and transaction headers apply to writes, not deletes"));
    }
    let bypass = bypass(&req, req.input.bypass_governance_retention, &req.input.bucket, &req.input.key)?;
    let input = req.input;
    let conditions = kv.conditions(WriteConditions { if_match: etag_match(input.if_match), ..Default::default() });
    let out = match &input.version_id {
        Some(id) => s3.engine.delete_version_with(&input.bucket, &input.key, id, bypass).await,
        None => s3.engine.delete_object(&input.bucket, &input.key, &conditions).await,
    }
    .map_err(s3_error)?;
    let output = DeleteObjectOutput {
        delete_marker: out.delete_marker.then_some(true),
        version_id: out.version_id.clone(),
        ..Default::default()
    };
    Ok(written(output, out.revision))
}

pub(super) async fn delete_objects(
    s3: &MeridianS3,
    req: S3Request<DeleteObjectsInput>,
) -> S3Result<S3Response<DeleteObjectsOutput>> {
    if req.input.delete.objects.len() > 1000 {
        return Err(s3_error!(MalformedXML, "DeleteObjects accepts at most 1000 keys"));
    }
    // The permission is judged key by key, as a policy may allow it for some keys only.
    let mut may_bypass = std::collections::HashSet::new();
    for object in &req.input.delete.objects {
        if bypass(&req, req.input.bypass_governance_retention, &req.input.bucket, &object.key)? {
            may_bypass.insert(object.key.clone());
        }
    }
    let input = req.input;
    let quiet = input.delete.quiet.unwrap_or(false);
    let keys: Vec<(String, Option<String>)> = input.delete.objects.into_iter().map(|o| (o.key, o.version_id)).collect();
    // A missing bucket fails the whole request, as in S3.
    s3.engine.bucket(&input.bucket).await.map_err(s3_error)?;
    let results = s3.engine.delete_objects(&input.bucket, keys, |key| may_bypass.contains(key)).await;
    let mut deleted = Vec::new();
    let mut errors = Vec::new();
    let mut revision = 0;
    for ((key, asked_version), result) in results {
        match result {
            Ok(out) => {
                revision = revision.max(out.revision);
                if !quiet {
                    // A marker made by this delete is named by DeleteMarkerVersionId; a version
                    // removed by id (marker or not) by VersionId.
                    let made_marker = out.delete_marker && asked_version.is_none();
                    deleted.push(DeletedObject {
                        key: Some(key),
                        delete_marker: out.delete_marker.then_some(true),
                        delete_marker_version_id: if made_marker { out.version_id.clone() } else { None },
                        version_id: if made_marker { None } else { asked_version },
                    });
                }
            }
            Err(e) => {
                let e = s3_error(e);
                errors.push(Error {
                    code: Some(e.code().as_str().to_string()),
                    key: Some(key),
                    message: e.message().map(str::to_string),
                    version_id: asked_version,
                });
            }
        }
    }
    let output = DeleteObjectsOutput { deleted: Some(deleted), errors: Some(errors), ..Default::default() };
    Ok(written(output, revision))
}

pub(super) async fn copy_object(
    s3: &MeridianS3,
    req: S3Request<CopyObjectInput>,
) -> S3Result<S3Response<CopyObjectOutput>> {
    let input = &req.input;
    let acl = input.acl.as_ref().map(ObjectCannedACL::as_str);
    refuse_unsupported(acl, input.storage_class.as_ref(), acls_disabled(s3, &req, &input.bucket, acl).await?)?;
    let protection = write_protection!(input)?;
    let source_key = copy_source_customer_headers!(input).key()?;
    let (src_bucket, src_key, src_version_id) = source_of(&input.copy_source)?;
    let context = RequestContext::of(&req)?;
    check_source(s3, &context, &src_bucket, &src_key).await?;
    let dst_bucket_seen = context.seen_bucket(&input.bucket);
    let lock = requested_lock!(input)?;
    let input = req.input;
    let replace = match input.metadata_directive.as_ref().map(MetadataDirective::as_str) {
        None | Some(MetadataDirective::COPY) => false,
        Some(MetadataDirective::REPLACE) => true,
        Some(other) => {
            return Err(s3_error!(InvalidArgument, "Unknown metadata directive {other:?}"));
        }
    };
    let replace_headers = replace.then(|| {
        HeaderInput {
            content_type: input.content_type.map(|c| c.to_string()),
            content_encoding: input.content_encoding,
            content_disposition: input.content_disposition,
            content_language: input.content_language,
            cache_control: input.cache_control,
            expires: input.expires,
            metadata: input.metadata,
            tags: Default::default(),
        }
        .into_headers()
    });
    let replace_tags = match input.tagging_directive.as_ref().map(TaggingDirective::as_str) {
        None | Some(TaggingDirective::COPY) => None,
        Some(TaggingDirective::REPLACE) => Some(tags_from_header(input.tagging.as_deref())?),
        Some(other) => return Err(s3_error!(InvalidArgument, "Unknown tagging directive {other:?}")),
    };
    let out = s3
        .engine
        .copy_object(CopyRequest {
            src_bucket,
            src_key,
            src_version_id: src_version_id.clone(),
            dst_bucket: input.bucket,
            dst_key: input.key,
            source_conditions: read_conditions(
                input.copy_source_if_match,
                input.copy_source_if_none_match,
                input.copy_source_if_modified_since.as_ref(),
                input.copy_source_if_unmodified_since.as_ref(),
            ),
            replace_headers,
            replace_tags,
            conditions: WriteConditions::default(),
            dst_bucket_seen,
            source_key,
            protection,
            lock,
        })
        .await
        .map_err(s3_error)?;
    let sums = ChecksumFields::from_stored(out.record.checksum.as_ref());
    let result = CopyObjectResult {
        e_tag: Some(etag(&out.etag)),
        last_modified: Some(timestamp(out.modified_ms)),
        checksum_crc32: sums.crc32,
        checksum_crc32c: sums.crc32c,
        checksum_crc64nvme: sums.crc64nvme,
        checksum_sha1: sums.sha1,
        checksum_sha256: sums.sha256,
        checksum_type: sums.kind,
    };
    let sse = SseFields::of(out.record.encryption.as_ref());
    let output = CopyObjectOutput {
        copy_object_result: Some(result),
        server_side_encryption: sse.sse,
        ssekms_key_id: sse.kms_key_id,
        sse_customer_algorithm: sse.customer_algorithm,
        sse_customer_key_md5: sse.customer_key_md5,
        version_id: version_id(&out.record),
        copy_source_version_id: src_version_id,
        ..Default::default()
    };
    Ok(written(output, out.revision))
}

/// Where the bytes of a GET came from: `x-meridian-served-from: REGION` and
/// `x-meridian-cache: hit` (from this region's disk or cache) or `miss` (fetched now).
fn source_headers(s3: &MeridianS3, source: Option<&meridian_engine::ReadSource>, headers: &mut http::HeaderMap) {
    let own = &s3.engine.config().node.region;
    let (region, hit) = match source {
        Some(s) => (s.region.as_str(), s.cache_hit),
        None => (own.as_str(), true),
    };
    if let Ok(v) = http::HeaderValue::from_str(region) {
        headers.insert("x-meridian-served-from", v);
    }
    headers.insert("x-meridian-cache", http::HeaderValue::from_static(if hit { "hit" } else { "miss" }));
}

/// The `x-amz-version-id` of an object in a versioned bucket.
pub(super) fn version_id(record: &meridian_engine::record::ObjectRecord) -> Option<String> {
    record.version.as_ref().map(|v| v.id().to_string())
}

fn byte_range(range: Option<Range>) -> Option<ByteRange> {
    range.map(|r| match r {
        Range::Int { first, last } => ByteRange::From { first, last },
        Range::Suffix { length } => ByteRange::Suffix { len: length },
    })
}

fn content_range(out: &GetOutcome) -> Option<String> {
    out.range.map(|(first, last)| format!("bytes {first}-{last}/{}", out.record.size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::{AccessDecision, BucketView, Forwarding, Grant, Principal};
    use meridian_engine::iam::Access;
    use meridian_engine::record::{BucketRecord, Location};

    /// A GET of `bkt` whose access check saw a bucket at `location`, asking `consistency`.
    fn read_of(location: Location, consistency: &str) -> S3Request<()> {
        let bucket =
            BucketView { name: "bkt".into(), record: BucketRecord { location, ..Default::default() }, revision: 1 };
        let mut context = RequestContext::arriving(Forwarding::ServedHere, Some(bucket));
        context.decide(AccessDecision {
            principal: Principal::Anonymous,
            grant: Grant::Bucket(Access::Read),
            facts: Default::default(),
        });
        let mut headers = http::HeaderMap::new();
        headers.insert(crate::kv::CONSISTENCY_HEADER, http::HeaderValue::from_str(consistency).unwrap());
        crate::context::test_request(Some(context), headers)
    }

    #[test]
    fn reads_of_multi_region_buckets_are_always_strong() {
        let multi = Location::MultiRegion { regions: vec!["a".into(), "b".into()], write_quorum: None };
        let asked_local = read_of(multi, "local");
        assert_eq!(object_read_consistency(&asked_local, "bkt").unwrap(), Consistency::Strong);
        let global = read_of(Location::Global, "local");
        assert_eq!(object_read_consistency(&global, "bkt").unwrap(), Consistency::Local);
        let pinned = read_of(Location::Pinned { region: "a".into() }, "local");
        assert_eq!(object_read_consistency(&pinned, "bkt").unwrap(), Consistency::Local);
    }
}
