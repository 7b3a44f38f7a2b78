//! Bucket operations: ListBuckets, CreateBucket, HeadBucket, GetBucketLocation and
//! DeleteBucket.

use meridian_engine::iam::{Access, authorize};
use meridian_engine::record::{Location, Placement, parse_placement};
use s3s::dto::*;
use s3s::{S3Error, S3ErrorCode, S3Request, S3Response, S3Result};

use super::MeridianS3;
use super::shared::{bucket_acl_is_public, not_implemented, with_revision};
use crate::context::RequestContext;
use crate::convert::{s3_error, timestamp};

pub(super) async fn list_buckets(
    s3: &MeridianS3,
    req: S3Request<ListBucketsInput>,
) -> S3Result<S3Response<ListBucketsOutput>> {
    let prefix = req.input.prefix.clone().unwrap_or_default();
    let buckets = s3.engine.list_buckets().await.map_err(s3_error)?;
    let context = RequestContext::of(&req)?;
    let key = context.key();
    let buckets = buckets
        .into_iter()
        .filter(|(name, record)| name.starts_with(&prefix) && authorize(key, record, Access::Read))
        .map(|(name, record)| Bucket {
            name: Some(name),
            creation_date: Some(timestamp(record.created_ms)),
            bucket_region: Some(client_region(s3, &record.location)),
        })
        .collect();
    let name = context.key_name()?.to_string();
    let owner = Owner { id: Some(name.clone()), display_name: Some(name) };
    Ok(S3Response::new(ListBucketsOutput { buckets: Some(buckets), owner: Some(owner), ..Default::default() }))
}

pub(super) async fn create_bucket(
    s3: &MeridianS3,
    req: S3Request<CreateBucketInput>,
) -> S3Result<S3Response<CreateBucketOutput>> {
    let public_read = bucket_acl_is_public(req.input.acl.as_ref())?;
    let input = &req.input;
    if [&input.grant_full_control, &input.grant_read, &input.grant_read_acp, &input.grant_write, &input.grant_write_acp]
        .iter()
        .any(|g| g.is_some())
    {
        return Err(not_implemented("grant headers on CreateBucket (create the bucket, then PutBucketAcl)"));
    }
    let owner = RequestContext::of(&req)?.key_name()?.to_string();
    let constraint = req.input.create_bucket_configuration.as_ref().and_then(|c| c.location_constraint.as_ref());
    let placement = placement_from_constraint(s3, constraint.map(|c| c.as_str())).await?;
    let bucket = &req.input.bucket;
    let revision = match req.input.object_lock_enabled_for_bucket {
        Some(true) => s3.engine.create_locked_bucket(bucket, &owner, public_read, placement).await,
        _ => s3.engine.create_bucket_at(bucket, &owner, public_read, placement).await,
    }
    .map_err(s3_error)?;
    let output = CreateBucketOutput { location: Some(format!("/{}", req.input.bucket)) };
    Ok(with_revision(output, revision))
}

pub(super) async fn head_bucket(
    s3: &MeridianS3,
    req: S3Request<HeadBucketInput>,
) -> S3Result<S3Response<HeadBucketOutput>> {
    let (record, revision) = s3.engine.bucket(&req.input.bucket).await.map_err(s3_error)?;
    let output = HeadBucketOutput { bucket_region: Some(client_region(s3, &record.location)), ..Default::default() };
    Ok(with_revision(output, revision))
}

pub(super) async fn get_bucket_location(
    s3: &MeridianS3,
    req: S3Request<GetBucketLocationInput>,
) -> S3Result<S3Response<GetBucketLocationOutput>> {
    let (record, _) = s3.engine.bucket(&req.input.bucket).await.map_err(s3_error)?;
    // A pinned bucket lives in its region; a multi-region bucket reports its type; a global
    // one the region of the node asked. us-east-1 is an empty constraint, as S3 does.
    let region = match record.location {
        multi @ Location::MultiRegion { .. } => multi.to_string(),
        single => client_region(s3, &single),
    };
    let constraint = (region != "us-east-1").then(|| BucketLocationConstraint::from(region));
    Ok(S3Response::new(GetBucketLocationOutput { location_constraint: constraint }))
}

/// The region a client should address for a bucket (`x-amz-bucket-region` of ListBuckets and
/// HeadBucket): a pinned bucket's region; a multi-region bucket's, this node's region when it is
/// one of them, else the first; a global bucket's, this node's.
fn client_region(s3: &MeridianS3, location: &Location) -> String {
    match location {
        Location::Global => s3.region.clone(),
        Location::Pinned { region } => region.clone(),
        Location::MultiRegion { regions, .. } => match regions.iter().find(|r| **r == s3.region) {
            Some(here) => here.clone(),
            None => regions.first().cloned().unwrap_or_else(|| s3.region.clone()),
        },
    }
}

pub(super) async fn delete_bucket(
    s3: &MeridianS3,
    req: S3Request<DeleteBucketInput>,
) -> S3Result<S3Response<DeleteBucketOutput>> {
    let revision = s3.engine.delete_bucket(&req.input.bucket).await.map_err(s3_error)?;
    Ok(with_revision(DeleteBucketOutput::default(), revision))
}

/// The placement asked for by CreateBucket's `LocationConstraint`: `global`,
/// `global;replicas=N`, `pinned:REGION` or `multi:R1,R2` explicitly; a bare name of a region of
/// this cluster pins the bucket there. Any other bare name (SDKs send their configured region,
/// e.g. `eu-west-1`) and no constraint mean a global bucket.
async fn placement_from_constraint(s3: &MeridianS3, constraint: Option<&str>) -> S3Result<Placement> {
    let Some(text) = constraint.map(str::trim).filter(|c| !c.is_empty()) else { return Ok(Placement::default()) };
    let invalid = |message: String| S3Error::with_message(S3ErrorCode::InvalidLocationConstraint, message);
    let nodes = s3.engine.nodes().await.map_err(s3_error)?;
    let known = |region: &str| nodes.iter().any(|n| n.record.region == region);
    if text != "global" && !text.contains(':') && !text.contains(';') {
        let pinned = known(text).then(|| Location::Pinned { region: text.to_string() });
        return Ok(pinned.unwrap_or(Location::Global).into());
    }
    let placement = parse_placement(text).map_err(|e| invalid(e.to_string()))?;
    let regions = match &placement.location {
        Location::Global => vec![],
        Location::Pinned { region } => vec![region.clone()],
        Location::MultiRegion { regions, .. } => regions.clone(),
    };
    match regions.iter().find(|r| !known(r)) {
        Some(unknown) => Err(invalid(format!("no node of this cluster is in region {unknown:?}"))),
        None => Ok(placement),
    }
}
