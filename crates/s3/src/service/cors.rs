//! S3's CORS API (PutBucketCors, GetBucketCors, DeleteBucketCors): the rules are kept in the
//! bucket record; `crate::cors` answers preflights and decorates responses from them.

use meridian_engine::cors as engine;
use s3s::dto::*;
use s3s::{S3Error, S3ErrorCode, S3Request, S3Response, S3Result};

use super::MeridianS3;
use crate::convert::s3_error;

pub(super) async fn put_bucket_cors(
    s3: &MeridianS3,
    req: S3Request<PutBucketCorsInput>,
) -> S3Result<S3Response<PutBucketCorsOutput>> {
    let input = req.input;
    let rules = input.cors_configuration.cors_rules.into_iter().map(rule_from_s3).collect();
    s3.engine.set_cors(&input.bucket, Some(engine::CorsConfig { rules })).await.map_err(s3_error)?;
    Ok(S3Response::new(PutBucketCorsOutput::default()))
}

pub(super) async fn get_bucket_cors(
    s3: &MeridianS3,
    req: S3Request<GetBucketCorsInput>,
) -> S3Result<S3Response<GetBucketCorsOutput>> {
    let Some(config) = s3.engine.cors(&req.input.bucket).await.map_err(s3_error)? else {
        return Err(S3Error::with_message(
            S3ErrorCode::NoSuchCORSConfiguration,
            "The CORS configuration does not exist",
        ));
    };
    Ok(S3Response::new(GetBucketCorsOutput { cors_rules: Some(config.rules.into_iter().map(rule_to_s3).collect()) }))
}

pub(super) async fn delete_bucket_cors(
    s3: &MeridianS3,
    req: S3Request<DeleteBucketCorsInput>,
) -> S3Result<S3Response<DeleteBucketCorsOutput>> {
    s3.engine.set_cors(&req.input.bucket, None).await.map_err(s3_error)?;
    Ok(S3Response::new(DeleteBucketCorsOutput::default()))
}

fn rule_from_s3(rule: CORSRule) -> engine::CorsRule {
    engine::CorsRule {
        id: rule.id,
        allowed_origins: rule.allowed_origins,
        allowed_methods: rule.allowed_methods,
        allowed_headers: rule.allowed_headers.unwrap_or_default(),
        expose_headers: rule.expose_headers.unwrap_or_default(),
        max_age_seconds: rule.max_age_seconds,
    }
}

fn rule_to_s3(rule: engine::CorsRule) -> CORSRule {
    CORSRule {
        id: rule.id,
        allowed_origins: rule.allowed_origins,
        allowed_methods: rule.allowed_methods,
        allowed_headers: (!rule.allowed_headers.is_empty()).then_some(rule.allowed_headers),
        expose_headers: (!rule.expose_headers.is_empty()).then_some(rule.expose_headers),
        max_age_seconds: rule.max_age_seconds,
    }
}
