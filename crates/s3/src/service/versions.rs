//! S3 versioning: PutBucketVersioning, GetBucketVersioning and ListObjectVersions. Version ids on
//! object operations are handled with those operations.

use meridian_engine::record::Versioning;
use meridian_engine::versions::{ListedVersion, VersionListRequest};
use s3s::dto::*;
use s3s::{S3Request, S3Response, S3Result, s3_error};

use super::MeridianS3;
use super::listing::max_keys;
use super::shared::ChecksumAlgorithm_from;
use crate::convert::{etag, s3_error, timestamp, url_encode};

pub(super) async fn put_bucket_versioning(
    s3: &MeridianS3,
    req: S3Request<PutBucketVersioningInput>,
) -> S3Result<S3Response<PutBucketVersioningOutput>> {
    let config = req.input.versioning_configuration;
    if config.mfa_delete.as_ref().is_some_and(|m| m.as_str() == MFADelete::ENABLED) {
        return Err(super::shared::not_implemented("MFA delete"));
    }
    let state = match config.status.as_ref().map(BucketVersioningStatus::as_str) {
        Some(BucketVersioningStatus::ENABLED) => Versioning::Enabled,
        Some(BucketVersioningStatus::SUSPENDED) => Versioning::Suspended,
        _ => return Err(s3_error!(MalformedXML, "the versioning Status must be Enabled or Suspended")),
    };
    s3.engine.set_versioning(&req.input.bucket, state).await.map_err(s3_error)?;
    Ok(S3Response::new(PutBucketVersioningOutput::default()))
}

pub(super) async fn get_bucket_versioning(
    s3: &MeridianS3,
    req: S3Request<GetBucketVersioningInput>,
) -> S3Result<S3Response<GetBucketVersioningOutput>> {
    // A bucket that never had versioning answers without a status, as in S3.
    let status = s3.engine.versioning(&req.input.bucket).await.map_err(s3_error)?.map(|state| match state {
        Versioning::Enabled => BucketVersioningStatus::from_static(BucketVersioningStatus::ENABLED),
        Versioning::Suspended => BucketVersioningStatus::from_static(BucketVersioningStatus::SUSPENDED),
    });
    Ok(S3Response::new(GetBucketVersioningOutput { status, ..Default::default() }))
}

pub(super) async fn list_object_versions(
    s3: &MeridianS3,
    req: S3Request<ListObjectVersionsInput>,
) -> S3Result<S3Response<ListObjectVersionsOutput>> {
    let input = req.input;
    let url = input.encoding_type.as_ref().is_some_and(|e| e.as_str() == EncodingType::URL);
    let enc = |s: String| if url { url_encode(&s) } else { s };
    if input.version_id_marker.as_ref().is_some_and(|v| !v.is_empty())
        && input.key_marker.as_ref().is_none_or(|k| k.is_empty())
    {
        return Err(s3_error!(InvalidArgument, "A version-id marker cannot be specified without a key marker."));
    }
    let request = VersionListRequest {
        prefix: input.prefix.clone().unwrap_or_default(),
        delimiter: input.delimiter.clone(),
        key_marker: input.key_marker.clone(),
        version_id_marker: input.version_id_marker.clone(),
        max_keys: max_keys(input.max_keys)?,
    };
    let page = s3.engine.list_versions(&input.bucket, &request).await.map_err(s3_error)?;
    let (mut versions, mut markers) = (Vec::new(), Vec::new());
    for listed in page.versions {
        match listed_version(listed, url) {
            Listed::Object(v) => versions.push(v),
            Listed::Marker(m) => markers.push(m),
        }
    }
    let output = ListObjectVersionsOutput {
        name: Some(input.bucket),
        prefix: Some(enc(request.prefix)),
        delimiter: input.delimiter.map(enc),
        key_marker: Some(enc(input.key_marker.unwrap_or_default())),
        version_id_marker: Some(input.version_id_marker.unwrap_or_default()),
        max_keys: Some(request.max_keys.min(1000) as i32),
        is_truncated: Some(page.is_truncated),
        next_key_marker: page.next_key_marker.filter(|_| page.is_truncated).map(enc),
        next_version_id_marker: page.next_version_id_marker.filter(|_| page.is_truncated),
        versions: Some(versions),
        delete_markers: Some(markers),
        common_prefixes: Some(
            page.common_prefixes.into_iter().map(|p| CommonPrefix { prefix: Some(enc(p)) }).collect(),
        ),
        encoding_type: input.encoding_type,
        ..Default::default()
    };
    Ok(S3Response::new(output))
}

enum Listed {
    Object(ObjectVersion),
    Marker(DeleteMarkerEntry),
}

fn listed_version(listed: ListedVersion, url: bool) -> Listed {
    let key = Some(if url { url_encode(&listed.key) } else { listed.key });
    let version_id = Some(listed.version.stamp.id().to_string());
    let last_modified = Some(timestamp(listed.version.modified_ms));
    let is_latest = Some(listed.is_latest);
    let Some(object) = listed.version.object else {
        return Listed::Marker(DeleteMarkerEntry { is_latest, key, last_modified, version_id, owner: None });
    };
    Listed::Object(ObjectVersion {
        key,
        version_id,
        is_latest,
        last_modified,
        e_tag: Some(etag(&object.etag)),
        size: Some(object.size as i64),
        storage_class: Some(ObjectVersionStorageClass::from_static(ObjectVersionStorageClass::STANDARD)),
        checksum_algorithm: object.checksum.as_ref().map(|c| vec![ChecksumAlgorithm_from(c.algorithm.name())]),
        ..Default::default()
    })
}
