//! GetObjectAttributes: the attributes asked for (ETag, Checksum, ObjectParts, StorageClass,
//! ObjectSize) of one object, without its bytes.

use meridian_engine::GetRequest;
use meridian_engine::record::DataLayout;
use s3s::dto::*;
use s3s::{S3Request, S3Response, S3Result, s3_error};

use super::MeridianS3;
use super::shared::with_revision;
use crate::convert::{ChecksumFields, etag, s3_error, timestamp};
use crate::kv::read_consistency;

/// The most parts one answer lists, as in S3.
const MAX_PARTS: i32 = 1000;

pub(super) async fn get_object_attributes(
    s3: &MeridianS3,
    req: S3Request<GetObjectAttributesInput>,
) -> S3Result<S3Response<GetObjectAttributesOutput>> {
    let consistency = read_consistency(&req.headers)?;
    let input = req.input;
    // One header, `x-amz-object-attributes: ETag,ObjectSize`, may list several.
    let asked: Vec<&str> = input.object_attributes.iter().flat_map(|a| a.as_str().split(',')).map(str::trim).collect();
    const KNOWN: [&str; 5] = [
        ObjectAttributes::ETAG,
        ObjectAttributes::CHECKSUM,
        ObjectAttributes::OBJECT_PARTS,
        ObjectAttributes::STORAGE_CLASS,
        ObjectAttributes::OBJECT_SIZE,
    ];
    if asked.is_empty() || asked.iter().any(|a| !KNOWN.contains(a)) {
        return Err(s3_error!(InvalidArgument, "Invalid attribute name specified."));
    }
    let wants = |name: &str| asked.contains(&name);
    let version_id = input.version_id;
    let request = GetRequest { bucket: input.bucket, key: input.key, consistency, version_id, ..Default::default() };
    let out = s3.engine.head_object(request).await.map_err(s3_error)?;
    let record = &out.record;
    let checksum = wants(ObjectAttributes::CHECKSUM).then(|| ChecksumFields::from_stored(record.checksum.as_ref()));
    let object_parts = match &record.data {
        DataLayout::Parts { parts } if wants(ObjectAttributes::OBJECT_PARTS) => {
            let sizes: Vec<u64> = parts.iter().map(|p| p.size).collect();
            Some(parts_page(&sizes, input.max_parts, input.part_number_marker))
        }
        _ => None,
    };
    let output = GetObjectAttributesOutput {
        e_tag: wants(ObjectAttributes::ETAG).then(|| etag(&record.etag)),
        checksum: checksum.filter(|c| c.kind.is_some()).map(|c| Checksum {
            checksum_crc32: c.crc32,
            checksum_crc32c: c.crc32c,
            checksum_crc64nvme: c.crc64nvme,
            checksum_sha1: c.sha1,
            checksum_sha256: c.sha256,
            checksum_type: c.kind,
        }),
        object_parts,
        object_size: wants(ObjectAttributes::OBJECT_SIZE).then_some(record.size as i64),
        storage_class: wants(ObjectAttributes::STORAGE_CLASS)
            .then(|| StorageClass::from_static(StorageClass::STANDARD)),
        last_modified: Some(timestamp(record.modified_ms)),
        ..Default::default()
    };
    Ok(with_revision(output, out.revision))
}

/// One page of a multipart object's parts, after part number `marker`.
fn parts_page(sizes: &[u64], max_parts: Option<i32>, marker: Option<i32>) -> GetObjectAttributesParts {
    let max = max_parts.unwrap_or(MAX_PARTS).clamp(0, MAX_PARTS) as usize;
    let marker = marker.unwrap_or(0).max(0) as usize;
    let parts: Vec<ObjectPart> = sizes
        .iter()
        .enumerate()
        .skip(marker)
        .take(max)
        .map(|(i, size)| ObjectPart { part_number: Some(i as i32 + 1), size: Some(*size as i64), ..Default::default() })
        .collect();
    let last = parts.last().and_then(|p| p.part_number);
    let truncated = last.is_some_and(|n| (n as usize) < sizes.len());
    GetObjectAttributesParts {
        total_parts_count: Some(sizes.len() as i32),
        part_number_marker: Some(marker as i32),
        next_part_number_marker: truncated.then_some(last.unwrap_or(0)),
        max_parts: Some(max as i32),
        is_truncated: Some(truncated),
        parts: Some(parts),
    }
}
