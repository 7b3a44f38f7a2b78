//! Object listings: ListObjects (v1) and ListObjectsV2.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as TOKEN;
use meridian_engine::ListRequest;
use s3s::dto::*;
use s3s::{S3Request, S3Response, S3Result, s3_error};

use super::MeridianS3;
use super::shared::{ChecksumAlgorithm_from, with_revision};
use crate::convert::{etag, s3_error, timestamp, url_encode};
use crate::kv::{read_consistency, snapshot_asked};

/// A listing of the bucket as it is, or as one of its snapshots shows it.
async fn list(
    s3: &MeridianS3,
    bucket: &str,
    snapshot: Option<&str>,
    request: &ListRequest,
) -> S3Result<meridian_engine::ListPage> {
    let page = match snapshot {
        Some(name) => s3.engine.list_objects_in_snapshot(bucket, name, request).await,
        None => s3.engine.list_objects(bucket, request).await,
    };
    page.map_err(s3_error)
}

pub(super) async fn list_objects(
    s3: &MeridianS3,
    req: S3Request<ListObjectsInput>,
) -> S3Result<S3Response<ListObjectsOutput>> {
    let consistency = read_consistency(&req.headers)?;
    let snapshot = snapshot_asked(&req.headers, &req.uri)?;
    let input = req.input;
    let url = input.encoding_type.as_ref().is_some_and(|e| e.as_str() == EncodingType::URL);
    let enc = |s: String| if url { url_encode(&s) } else { s };
    let request = ListRequest {
        prefix: input.prefix.clone().unwrap_or_default(),
        delimiter: input.delimiter.clone(),
        after: input.marker.clone().filter(|m| !m.is_empty()),
        max_keys: max_keys(input.max_keys)?,
        consistency,
    };
    let page = list(s3, &input.bucket, snapshot.as_deref(), &request).await?;
    let output = ListObjectsOutput {
        name: Some(input.bucket),
        prefix: Some(enc(request.prefix)),
        marker: Some(enc(input.marker.unwrap_or_default())),
        delimiter: input.delimiter.map(enc),
        max_keys: Some(request.max_keys.min(1000) as i32),
        is_truncated: Some(page.is_truncated),
        next_marker: page.is_truncated.then(|| page.next_after.clone().map(enc)).flatten(),
        contents: Some(page.objects.into_iter().map(|o| listed_object(o, url)).collect()),
        common_prefixes: Some(
            page.common_prefixes.into_iter().map(|p| CommonPrefix { prefix: Some(enc(p)) }).collect(),
        ),
        encoding_type: input.encoding_type,
        ..Default::default()
    };
    Ok(with_revision(output, page.revision))
}

pub(super) async fn list_objects_v2(
    s3: &MeridianS3,
    req: S3Request<ListObjectsV2Input>,
) -> S3Result<S3Response<ListObjectsV2Output>> {
    let consistency = read_consistency(&req.headers)?;
    let snapshot = snapshot_asked(&req.headers, &req.uri)?;
    let input = req.input;
    let url = input.encoding_type.as_ref().is_some_and(|e| e.as_str() == EncodingType::URL);
    let enc = |s: String| if url { url_encode(&s) } else { s };
    let after = match &input.continuation_token {
        Some(token) => Some(continuation(token)?),
        None => input.start_after.clone().filter(|s| !s.is_empty()),
    };
    let request = ListRequest {
        prefix: input.prefix.clone().unwrap_or_default(),
        delimiter: input.delimiter.clone(),
        after,
        max_keys: max_keys(input.max_keys)?,
        consistency,
    };
    let page = list(s3, &input.bucket, snapshot.as_deref(), &request).await?;
    let key_count = page.objects.len() + page.common_prefixes.len();
    let output = ListObjectsV2Output {
        name: Some(input.bucket),
        prefix: Some(enc(request.prefix)),
        delimiter: input.delimiter.map(enc),
        max_keys: Some(request.max_keys.min(1000) as i32),
        key_count: Some(key_count as i32),
        continuation_token: input.continuation_token,
        next_continuation_token: page
            .is_truncated
            .then(|| page.next_after.as_ref().map(|a| TOKEN.encode(a.as_bytes())))
            .flatten(),
        start_after: input.start_after.map(enc),
        is_truncated: Some(page.is_truncated),
        contents: Some(page.objects.into_iter().map(|o| listed_object(o, url)).collect()),
        common_prefixes: Some(
            page.common_prefixes.into_iter().map(|p| CommonPrefix { prefix: Some(enc(p)) }).collect(),
        ),
        encoding_type: input.encoding_type,
        ..Default::default()
    };
    Ok(with_revision(output, page.revision))
}

fn continuation(token: &str) -> S3Result<String> {
    let raw =
        TOKEN.decode(token).map_err(|_| s3_error!(InvalidArgument, "The continuation token provided is incorrect"))?;
    String::from_utf8(raw).map_err(|_| s3_error!(InvalidArgument, "The continuation token provided is incorrect"))
}

pub(super) fn max_keys(value: Option<i32>) -> S3Result<usize> {
    match value {
        None => Ok(1000),
        Some(n) if n < 0 => Err(s3_error!(InvalidArgument, "max-keys must be a non-negative integer")),
        Some(n) => Ok(n as usize),
    }
}

fn listed_object(o: meridian_engine::ListedObject, url: bool) -> Object {
    let checksum_algorithm = o.record.checksum.as_ref().map(|c| vec![ChecksumAlgorithm_from(c.algorithm.name())]);
    Object {
        key: Some(if url { url_encode(&o.key) } else { o.key }),
        e_tag: Some(etag(&o.record.etag)),
        last_modified: Some(timestamp(o.record.modified_ms)),
        size: Some(o.record.size as i64),
        storage_class: Some(ObjectStorageClass::from_static(ObjectStorageClass::STANDARD)),
        checksum_algorithm,
        ..Default::default()
    }
}
