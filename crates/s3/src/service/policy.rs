//! Bucket policies (Put/Get/DeleteBucketPolicy, GetBucketPolicyStatus), Block Public Access
//! (Put/Get/DeletePublicAccessBlock) and object ownership (Put/Get/DeleteBucketOwnershipControls),
//! kept in the bucket record; `crate::access` evaluates them on every request.

use meridian_engine::policy::{ObjectOwnership as Ownership, Policy, PublicAccessBlock};
use s3s::dto::*;
use s3s::{S3Error, S3ErrorCode, S3Request, S3Response, S3Result};

use super::MeridianS3;
use crate::convert::s3_error;

pub(super) async fn put_bucket_policy(
    s3: &MeridianS3,
    req: S3Request<PutBucketPolicyInput>,
) -> S3Result<S3Response<PutBucketPolicyOutput>> {
    let input = req.input;
    s3.engine.set_bucket_policy(&input.bucket, Some(input.policy)).await.map_err(s3_error)?;
    Ok(S3Response::new(PutBucketPolicyOutput::default()))
}

pub(super) async fn get_bucket_policy(
    s3: &MeridianS3,
    req: S3Request<GetBucketPolicyInput>,
) -> S3Result<S3Response<GetBucketPolicyOutput>> {
    let (record, _) = s3.engine.bucket(&req.input.bucket).await.map_err(s3_error)?;
    let policy = record.policy.ok_or_else(no_policy)?;
    Ok(S3Response::new(GetBucketPolicyOutput { policy: Some(policy) }))
}

pub(super) async fn delete_bucket_policy(
    s3: &MeridianS3,
    req: S3Request<DeleteBucketPolicyInput>,
) -> S3Result<S3Response<DeleteBucketPolicyOutput>> {
    s3.engine.set_bucket_policy(&req.input.bucket, None).await.map_err(s3_error)?;
    Ok(S3Response::new(DeleteBucketPolicyOutput::default()))
}

pub(super) async fn get_bucket_policy_status(
    s3: &MeridianS3,
    req: S3Request<GetBucketPolicyStatusInput>,
) -> S3Result<S3Response<GetBucketPolicyStatusOutput>> {
    let bucket = &req.input.bucket;
    let (record, _) = s3.engine.bucket(bucket).await.map_err(s3_error)?;
    let text = record.policy.ok_or_else(no_policy)?;
    let public = Policy::parse(&text, bucket).map(|p| p.is_public()).map_err(|e| {
        S3Error::with_message(S3ErrorCode::InternalError, format!("the stored policy does not parse: {e}"))
    })?;
    Ok(S3Response::new(GetBucketPolicyStatusOutput { policy_status: Some(PolicyStatus { is_public: Some(public) }) }))
}

fn no_policy() -> S3Error {
    S3Error::with_message(S3ErrorCode::NoSuchBucketPolicy, "The bucket policy does not exist")
}

pub(super) async fn put_public_access_block(
    s3: &MeridianS3,
    req: S3Request<PutPublicAccessBlockInput>,
) -> S3Result<S3Response<PutPublicAccessBlockOutput>> {
    let input = req.input;
    let c = input.public_access_block_configuration;
    let block = PublicAccessBlock {
        block_public_acls: c.block_public_acls.unwrap_or(false),
        ignore_public_acls: c.ignore_public_acls.unwrap_or(false),
        block_public_policy: c.block_public_policy.unwrap_or(false),
        restrict_public_buckets: c.restrict_public_buckets.unwrap_or(false),
    };
    s3.engine.set_public_access_block(&input.bucket, Some(block)).await.map_err(s3_error)?;
    Ok(S3Response::new(PutPublicAccessBlockOutput::default()))
}

pub(super) async fn get_public_access_block(
    s3: &MeridianS3,
    req: S3Request<GetPublicAccessBlockInput>,
) -> S3Result<S3Response<GetPublicAccessBlockOutput>> {
    let (record, _) = s3.engine.bucket(&req.input.bucket).await.map_err(s3_error)?;
    let Some(b) = record.public_access_block else {
        let mut e = S3Error::with_message(
            S3ErrorCode::Custom("NoSuchPublicAccessBlockConfiguration".into()),
            "The public access block configuration was not found",
        );
        e.set_status_code(http::StatusCode::NOT_FOUND);
        return Err(e);
    };
    let configuration = PublicAccessBlockConfiguration {
        block_public_acls: Some(b.block_public_acls),
        ignore_public_acls: Some(b.ignore_public_acls),
        block_public_policy: Some(b.block_public_policy),
        restrict_public_buckets: Some(b.restrict_public_buckets),
    };
    Ok(S3Response::new(GetPublicAccessBlockOutput { public_access_block_configuration: Some(configuration) }))
}

pub(super) async fn delete_public_access_block(
    s3: &MeridianS3,
    req: S3Request<DeletePublicAccessBlockInput>,
) -> S3Result<S3Response<DeletePublicAccessBlockOutput>> {
    s3.engine.set_public_access_block(&req.input.bucket, None).await.map_err(s3_error)?;
    Ok(S3Response::new(DeletePublicAccessBlockOutput::default()))
}

pub(super) async fn put_bucket_ownership_controls(
    s3: &MeridianS3,
    req: S3Request<PutBucketOwnershipControlsInput>,
) -> S3Result<S3Response<PutBucketOwnershipControlsOutput>> {
    let input = req.input;
    let [rule] = input.ownership_controls.rules.as_slice() else {
        return Err(S3Error::with_message(S3ErrorCode::MalformedXML, "OwnershipControls takes exactly one Rule"));
    };
    let name = rule.object_ownership.as_str();
    let ownership = Ownership::parse(name).ok_or_else(|| {
        S3Error::with_message(
            S3ErrorCode::MalformedXML,
            format!("Invalid ObjectOwnership {name:?}: use BucketOwnerEnforced, BucketOwnerPreferred or ObjectWriter"),
        )
    })?;
    s3.engine.set_object_ownership(&input.bucket, Some(ownership)).await.map_err(s3_error)?;
    Ok(S3Response::new(PutBucketOwnershipControlsOutput::default()))
}

pub(super) async fn get_bucket_ownership_controls(
    s3: &MeridianS3,
    req: S3Request<GetBucketOwnershipControlsInput>,
) -> S3Result<S3Response<GetBucketOwnershipControlsOutput>> {
    let (record, _) = s3.engine.bucket(&req.input.bucket).await.map_err(s3_error)?;
    let Some(ownership) = record.object_ownership else {
        return Err(S3Error::with_message(
            S3ErrorCode::OwnershipControlsNotFoundError,
            "The bucket ownership controls were not found",
        ));
    };
    let rule = OwnershipControlsRule { object_ownership: ObjectOwnership::from_static(ownership.as_str()) };
    Ok(S3Response::new(GetBucketOwnershipControlsOutput {
        ownership_controls: Some(OwnershipControls { rules: vec![rule] }),
    }))
}

pub(super) async fn delete_bucket_ownership_controls(
    s3: &MeridianS3,
    req: S3Request<DeleteBucketOwnershipControlsInput>,
) -> S3Result<S3Response<DeleteBucketOwnershipControlsOutput>> {
    s3.engine.set_object_ownership(&req.input.bucket, None).await.map_err(s3_error)?;
    Ok(S3Response::new(DeleteBucketOwnershipControlsOutput::default()))
}
