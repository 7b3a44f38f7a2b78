//! Object and bucket tagging: `x-amz-tagging` on writes, Put/Get/DeleteObjectTagging and
//! Put/Get/DeleteBucketTagging. The rules and messages are the engine's
//! (`meridian_engine::tagging`).

use meridian_engine::tagging::{TagTarget, Tags, tags_from_pairs};
use s3s::dto::*;
use s3s::{S3Error, S3ErrorCode, S3Request, S3Response, S3Result};

use super::MeridianS3;
use super::shared::written;
use crate::convert::s3_error;

const BAD_HEADER: &str = "The header 'x-amz-tagging' shall be encoded as UTF-8 then URLEncoded URL query parameters without tag name duplicates.";

/// The tags of an `x-amz-tagging` header (`k1=v1&k2=v2`, URL-encoded).
pub(super) fn tags_from_header(header: Option<&str>) -> S3Result<Tags> {
    let Some(header) = header.filter(|h| !h.is_empty()) else { return Ok(Tags::new()) };
    let decode = |part: &str| {
        percent_encoding::percent_decode_str(&part.replace('+', " "))
            .decode_utf8()
            .map(|s| s.into_owned())
            .map_err(|_| S3Error::with_message(S3ErrorCode::InvalidArgument, BAD_HEADER))
    };
    let mut pairs = Vec::new();
    for pair in header.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        pairs.push((decode(key)?, decode(value)?));
    }
    tags_from_pairs(pairs, TagTarget::Object).map_err(s3_error)
}

/// The `x-amz-tagging-count` of an object with these tags (none when it has no tags).
pub(super) fn tag_count(tags: &Tags) -> Option<i32> {
    (!tags.is_empty()).then_some(tags.len() as i32)
}

fn from_tag_set(set: TagSet, target: TagTarget) -> S3Result<Tags> {
    let pairs = set.into_iter().map(|t| (t.key.unwrap_or_default(), t.value.unwrap_or_default())).collect();
    tags_from_pairs(pairs, target).map_err(s3_error)
}

fn to_tag_set(tags: Tags) -> TagSet {
    tags.into_iter().map(|(key, value)| Tag { key: Some(key), value: Some(value) }).collect()
}

pub(super) async fn put_object_tagging(
    s3: &MeridianS3,
    req: S3Request<PutObjectTaggingInput>,
) -> S3Result<S3Response<PutObjectTaggingOutput>> {
    let input = req.input;
    let tags = from_tag_set(input.tagging.tag_set, TagTarget::Object)?;
    let version = input.version_id.as_deref();
    let revision = s3.engine.set_object_tags(&input.bucket, &input.key, version, tags).await.map_err(s3_error)?;
    Ok(written(PutObjectTaggingOutput { version_id: input.version_id }, revision))
}

pub(super) async fn get_object_tagging(
    s3: &MeridianS3,
    req: S3Request<GetObjectTaggingInput>,
) -> S3Result<S3Response<GetObjectTaggingOutput>> {
    let input = req.input;
    let version_id = input.version_id;
    let request =
        meridian_engine::GetRequest { bucket: input.bucket, key: input.key, version_id, ..Default::default() };
    let out = s3.engine.head_object(request).await.map_err(s3_error)?;
    let output = GetObjectTaggingOutput {
        version_id: super::objects::version_id(&out.record),
        tag_set: to_tag_set(out.record.headers.tags),
    };
    Ok(super::shared::with_revision(output, out.revision))
}

pub(super) async fn delete_object_tagging(
    s3: &MeridianS3,
    req: S3Request<DeleteObjectTaggingInput>,
) -> S3Result<S3Response<DeleteObjectTaggingOutput>> {
    let input = req.input;
    let version = input.version_id.as_deref();
    let revision =
        s3.engine.set_object_tags(&input.bucket, &input.key, version, Tags::new()).await.map_err(s3_error)?;
    Ok(written(DeleteObjectTaggingOutput { version_id: input.version_id }, revision))
}

pub(super) async fn put_bucket_tagging(
    s3: &MeridianS3,
    req: S3Request<PutBucketTaggingInput>,
) -> S3Result<S3Response<PutBucketTaggingOutput>> {
    let input = req.input;
    let tags = from_tag_set(input.tagging.tag_set, TagTarget::Bucket)?;
    s3.engine.set_bucket_tags(&input.bucket, tags).await.map_err(s3_error)?;
    Ok(S3Response::new(PutBucketTaggingOutput::default()))
}

pub(super) async fn get_bucket_tagging(
    s3: &MeridianS3,
    req: S3Request<GetBucketTaggingInput>,
) -> S3Result<S3Response<GetBucketTaggingOutput>> {
    let tags = s3.engine.bucket_tags(&req.input.bucket).await.map_err(s3_error)?;
    if tags.is_empty() {
        return Err(S3Error::with_message(S3ErrorCode::NoSuchTagSet, "The TagSet does not exist"));
    }
    Ok(S3Response::new(GetBucketTaggingOutput { tag_set: to_tag_set(tags) }))
}

pub(super) async fn delete_bucket_tagging(
    s3: &MeridianS3,
    req: S3Request<DeleteBucketTaggingInput>,
) -> S3Result<S3Response<DeleteBucketTaggingOutput>> {
    s3.engine.set_bucket_tags(&req.input.bucket, Tags::new()).await.map_err(s3_error)?;
    Ok(S3Response::new(DeleteBucketTaggingOutput::default()))
}
