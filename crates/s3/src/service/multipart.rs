//! Multipart uploads: create, upload a part (or copy one), complete, abort, and list parts and
//! uploads.

use meridian_engine::checksum::ChecksumAlgorithm;
use meridian_engine::conditions::WriteConditions;
use meridian_engine::{ByteRange, CompletePart, ListUploadsRequest};
use s3s::dto::*;
use s3s::{S3Request, S3Response, S3Result, s3_error};

use super::MeridianS3;
use super::shared::{
    ChecksumAlgorithm_from, ChecksumHeaders, acls_disabled, check_source, integrity, read_conditions,
    refuse_unsupported, request_body, source_of, written,
};
use super::sse::{SseFields, copy_source_customer_headers, customer_headers, write_protection};
use super::tagging::tags_from_header;
use crate::context::RequestContext;
use crate::convert::{ChecksumFields, HeaderInput, checksum_algorithm, etag, etag_match, s3_error, timestamp};

pub(super) async fn create_multipart_upload(
    s3: &MeridianS3,
    req: S3Request<CreateMultipartUploadInput>,
) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
    let acl = req.input.acl.as_ref().map(ObjectCannedACL::as_str);
    refuse_unsupported(acl, req.input.storage_class.as_ref(), acls_disabled(s3, &req, &req.input.bucket, acl).await?)?;
    let input = req.input;
    let protection = write_protection!(input)?;
    let algorithm = checksum_algorithm(input.checksum_algorithm.as_ref())?;
    let full_object = input.checksum_type.as_ref().is_some_and(|t| t.as_str() == ChecksumType::FULL_OBJECT);
    if full_object && matches!(algorithm, Some(ChecksumAlgorithm::Sha1 | ChecksumAlgorithm::Sha256)) {
        return Err(s3_error!(InvalidRequest, "The FULL_OBJECT checksum type is not supported for SHA checksums"));
    }
    let lock = super::lock::requested_lock!(input)?;
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
    let upload = s3
        .engine
        .create_multipart_upload(&input.bucket, &input.key, headers, algorithm, full_object, protection)
        .await
        .map_err(s3_error)?;
    let sse = SseFields::of(upload.encryption.as_ref());
    let output = CreateMultipartUploadOutput {
        server_side_encryption: sse.sse,
        ssekms_key_id: sse.kms_key_id,
        sse_customer_algorithm: sse.customer_algorithm,
        sse_customer_key_md5: sse.customer_key_md5,
        bucket: Some(input.bucket),
        key: Some(input.key),
        upload_id: Some(upload.upload_id),
        checksum_algorithm: input.checksum_algorithm,
        checksum_type: input.checksum_type,
        ..Default::default()
    };
    Ok(S3Response::new(output))
}

pub(super) async fn upload_part(
    s3: &MeridianS3,
    mut req: S3Request<UploadPartInput>,
) -> S3Result<S3Response<UploadPartOutput>> {
    let input = &mut req.input;
    let customer_key = customer_headers!(input).key()?;
    let sums = ChecksumHeaders {
        algorithm: checksum_algorithm(input.checksum_algorithm.as_ref())?,
        crc32: input.checksum_crc32.take(),
        crc32c: input.checksum_crc32c.take(),
        crc64nvme: input.checksum_crc64nvme.take(),
        sha1: input.checksum_sha1.take(),
        sha256: input.checksum_sha256.take(),
    };
    let integrity = integrity(&req, sums, req.input.content_md5.clone(), req.input.content_length)?;
    let input = req.input;
    let part_number = u32::try_from(input.part_number).unwrap_or(0);
    let body = request_body(input.body);
    let (part, encryption) = s3
        .engine
        .upload_part(&input.bucket, &input.key, &input.upload_id, part_number, body, integrity, customer_key.as_ref())
        .await
        .map_err(s3_error)?;
    let sums = ChecksumFields::from_stored(part.checksum.as_ref());
    let sse = SseFields::of(encryption.as_ref());
    let output = UploadPartOutput {
        e_tag: Some(etag(&part.etag)),
        server_side_encryption: sse.sse,
        ssekms_key_id: sse.kms_key_id,
        sse_customer_algorithm: sse.customer_algorithm,
        sse_customer_key_md5: sse.customer_key_md5,
        checksum_crc32: sums.crc32,
        checksum_crc32c: sums.crc32c,
        checksum_crc64nvme: sums.crc64nvme,
        checksum_sha1: sums.sha1,
        checksum_sha256: sums.sha256,
        ..Default::default()
    };
    Ok(S3Response::new(output))
}

pub(super) async fn upload_part_copy(
    s3: &MeridianS3,
    req: S3Request<UploadPartCopyInput>,
) -> S3Result<S3Response<UploadPartCopyOutput>> {
    let (src_bucket, src_key, src_version_id) = source_of(&req.input.copy_source)?;
    check_source(s3, &RequestContext::of(&req)?, &src_bucket, &src_key).await?;
    let input = req.input;
    let range = copy_source_range(input.copy_source_range.as_deref())?;
    let part_number = u32::try_from(input.part_number).unwrap_or(0);
    let source_key = copy_source_customer_headers!(input).key()?;
    let customer_key = customer_headers!(input).key()?;
    let (part, encryption) = s3
        .engine
        .upload_part_copy(
            &input.bucket,
            &input.key,
            &input.upload_id,
            part_number,
            &src_bucket,
            &src_key,
            src_version_id,
            range,
            read_conditions(
                input.copy_source_if_match,
                input.copy_source_if_none_match,
                input.copy_source_if_modified_since.as_ref(),
                input.copy_source_if_unmodified_since.as_ref(),
            ),
            (source_key, customer_key.as_ref()),
        )
        .await
        .map_err(s3_error)?;
    let sums = ChecksumFields::from_stored(part.checksum.as_ref());
    let result = CopyPartResult {
        e_tag: Some(etag(&part.etag)),
        last_modified: Some(timestamp(part.modified_ms)),
        checksum_crc32: sums.crc32,
        checksum_crc32c: sums.crc32c,
        checksum_crc64nvme: sums.crc64nvme,
        checksum_sha1: sums.sha1,
        checksum_sha256: sums.sha256,
    };
    let sse = SseFields::of(encryption.as_ref());
    Ok(S3Response::new(UploadPartCopyOutput {
        copy_part_result: Some(result),
        server_side_encryption: sse.sse,
        ssekms_key_id: sse.kms_key_id,
        sse_customer_algorithm: sse.customer_algorithm,
        sse_customer_key_md5: sse.customer_key_md5,
        ..Default::default()
    }))
}

pub(super) async fn complete_multipart_upload(
    s3: &MeridianS3,
    req: S3Request<CompleteMultipartUploadInput>,
) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
    let input = req.input;
    let listed = input.multipart_upload.and_then(|m| m.parts).unwrap_or_default();
    let mut parts = Vec::with_capacity(listed.len());
    for part in listed {
        let part_number = part
            .part_number
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| s3_error!(InvalidPart, "every part needs a PartNumber"))?;
        let etag = part
            .e_tag
            .map(|e| e.value().to_string())
            .ok_or_else(|| s3_error!(InvalidPart, "every part needs an ETag"))?;
        let checksum = part
            .checksum_crc32
            .or(part.checksum_crc32c)
            .or(part.checksum_crc64nvme)
            .or(part.checksum_sha1)
            .or(part.checksum_sha256);
        parts.push(CompletePart { part_number, etag, checksum });
    }
    let conditions = WriteConditions {
        if_match: etag_match(input.if_match),
        if_none_match: etag_match(input.if_none_match),
        ..Default::default()
    };
    let (record, revision) = s3
        .engine
        .complete_multipart_upload(&input.bucket, &input.key, &input.upload_id, &parts, &conditions)
        .await
        .map_err(s3_error)?;
    let sums = ChecksumFields::from_stored(record.checksum.as_ref());
    let sse = SseFields::of(record.encryption.as_ref());
    let output = CompleteMultipartUploadOutput {
        server_side_encryption: sse.sse,
        ssekms_key_id: sse.kms_key_id,
        bucket: Some(input.bucket.clone()),
        key: Some(input.key.clone()),
        location: Some(format!("/{}/{}", input.bucket, input.key)),
        e_tag: Some(etag(&record.etag)),
        version_id: super::objects::version_id(&record),
        checksum_crc32: sums.crc32,
        checksum_crc32c: sums.crc32c,
        checksum_crc64nvme: sums.crc64nvme,
        checksum_sha1: sums.sha1,
        checksum_sha256: sums.sha256,
        checksum_type: sums.kind,
        ..Default::default()
    };
    Ok(written(output, revision))
}

pub(super) async fn abort_multipart_upload(
    s3: &MeridianS3,
    req: S3Request<AbortMultipartUploadInput>,
) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
    let input = req.input;
    s3.engine.abort_multipart_upload(&input.bucket, &input.key, &input.upload_id).await.map_err(s3_error)?;
    Ok(S3Response::new(AbortMultipartUploadOutput::default()))
}

pub(super) async fn list_parts(
    s3: &MeridianS3,
    req: S3Request<ListPartsInput>,
) -> S3Result<S3Response<ListPartsOutput>> {
    let input = req.input;
    let marker = u32::try_from(input.part_number_marker.unwrap_or(0))
        .map_err(|_| s3_error!(InvalidArgument, "part-number-marker must not be negative"))?;
    let max_parts = input.max_parts.map_or(1000, |m| m.max(0) as usize);
    let page =
        s3.engine.list_parts(&input.bucket, &input.key, &input.upload_id, marker, max_parts).await.map_err(s3_error)?;
    let algorithm = page.upload.as_ref().and_then(|u| u.checksum_algorithm);
    let parts = page
        .parts
        .iter()
        .map(|(number, part)| {
            let sums = ChecksumFields::from_stored(part.checksum.as_ref());
            Part {
                part_number: Some(*number as i32),
                e_tag: Some(etag(&part.etag)),
                size: Some(part.size as i64),
                last_modified: Some(timestamp(part.modified_ms)),
                checksum_crc32: sums.crc32,
                checksum_crc32c: sums.crc32c,
                checksum_crc64nvme: sums.crc64nvme,
                checksum_sha1: sums.sha1,
                checksum_sha256: sums.sha256,
            }
        })
        .collect();
    let output = ListPartsOutput {
        bucket: Some(input.bucket),
        key: Some(input.key),
        upload_id: Some(input.upload_id),
        part_number_marker: input.part_number_marker,
        next_part_number_marker: page.next_marker.map(|n| n as i32),
        max_parts: Some(max_parts.clamp(1, 1000) as i32),
        is_truncated: Some(page.is_truncated),
        parts: Some(parts),
        checksum_algorithm: algorithm.map(|a| ChecksumAlgorithm_from(a.name())),
        storage_class: Some(StorageClass::from_static(StorageClass::STANDARD)),
        ..Default::default()
    };
    Ok(S3Response::new(output))
}

pub(super) async fn list_multipart_uploads(
    s3: &MeridianS3,
    req: S3Request<ListMultipartUploadsInput>,
) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
    let input = req.input;
    let request = ListUploadsRequest {
        prefix: input.prefix.clone().unwrap_or_default(),
        delimiter: input.delimiter.clone(),
        key_marker: input.key_marker.clone().filter(|m| !m.is_empty()),
        upload_id_marker: input.upload_id_marker.clone().filter(|m| !m.is_empty()),
        max_uploads: input.max_uploads.map_or(1000, |m| m.max(0) as usize),
    };
    let page = s3.engine.list_multipart_uploads(&input.bucket, &request).await.map_err(s3_error)?;
    let uploads = page
        .uploads
        .into_iter()
        .map(|u| MultipartUpload {
            key: Some(u.key),
            upload_id: Some(u.upload_id),
            initiated: Some(timestamp(u.initiated_ms)),
            storage_class: Some(StorageClass::from_static(StorageClass::STANDARD)),
            ..Default::default()
        })
        .collect();
    let output = ListMultipartUploadsOutput {
        bucket: Some(input.bucket),
        prefix: input.prefix,
        delimiter: input.delimiter,
        key_marker: input.key_marker,
        upload_id_marker: input.upload_id_marker,
        max_uploads: Some(request.max_uploads.clamp(1, 1000) as i32),
        is_truncated: Some(page.is_truncated),
        next_key_marker: page.next_key_marker,
        next_upload_id_marker: page.next_upload_id_marker,
        uploads: Some(uploads),
        common_prefixes: Some(page.common_prefixes.into_iter().map(|p| CommonPrefix { prefix: Some(p) }).collect()),
        encoding_type: input.encoding_type,
        ..Default::default()
    };
    Ok(S3Response::new(output))
}

/// Parses `x-amz-copy-source-range: bytes=first-last`.
fn copy_source_range(value: Option<&str>) -> S3Result<Option<ByteRange>> {
    let Some(value) = value else { return Ok(None) };
    let bad = || {
        s3_error!(
            InvalidArgument,
            "The x-amz-copy-source-range value must be of the form bytes=first-last where first and last are the zero-based offsets of the first and last bytes to copy"
        )
    };
    let spec = value.trim().strip_prefix("bytes=").ok_or_else(bad)?;
    let (first, last) = spec.split_once('-').ok_or_else(bad)?;
    let first: u64 = first.parse().map_err(|_| bad())?;
    let last: u64 = last.parse().map_err(|_| bad())?;
    if last < first {
        return Err(bad());
    }
    Ok(Some(ByteRange::From { first, last: Some(last) }))
}
