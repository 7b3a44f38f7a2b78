//! S3's website API (PutBucketWebsite, GetBucketWebsite, DeleteBucketWebsite): the
//! configuration is kept in the bucket record, where the web edge reads it.

use meridian_engine::website as engine;
use s3s::dto::*;
use s3s::{S3Error, S3ErrorCode, S3Request, S3Response, S3Result};

use super::MeridianS3;
use crate::convert::s3_error;

pub(super) async fn put_bucket_website(
    s3: &MeridianS3,
    req: S3Request<PutBucketWebsiteInput>,
) -> S3Result<S3Response<PutBucketWebsiteOutput>> {
    let input = req.input;
    let config = from_s3(input.website_configuration)?;
    s3.engine.set_website(&input.bucket, Some(config)).await.map_err(s3_error)?;
    Ok(S3Response::new(PutBucketWebsiteOutput::default()))
}

pub(super) async fn get_bucket_website(
    s3: &MeridianS3,
    req: S3Request<GetBucketWebsiteInput>,
) -> S3Result<S3Response<GetBucketWebsiteOutput>> {
    let Some(config) = s3.engine.website(&req.input.bucket).await.map_err(s3_error)? else {
        return Err(S3Error::with_message(
            S3ErrorCode::NoSuchWebsiteConfiguration,
            "The specified bucket does not have a website configuration",
        ));
    };
    Ok(S3Response::new(GetBucketWebsiteOutput {
        index_document: config.index_suffix.map(|suffix| IndexDocument { suffix }),
        error_document: config.error_key.map(|key| ErrorDocument { key }),
        redirect_all_requests_to: config
            .redirect_all
            .map(|all| RedirectAllRequestsTo { host_name: all.host_name, protocol: all.protocol.map(Protocol::from) }),
        routing_rules: (!config.routing_rules.is_empty())
            .then(|| config.routing_rules.into_iter().map(rule_to_s3).collect()),
    }))
}

pub(super) async fn delete_bucket_website(
    s3: &MeridianS3,
    req: S3Request<DeleteBucketWebsiteInput>,
) -> S3Result<S3Response<DeleteBucketWebsiteOutput>> {
    s3.engine.set_website(&req.input.bucket, None).await.map_err(s3_error)?;
    Ok(S3Response::new(DeleteBucketWebsiteOutput::default()))
}

fn from_s3(config: WebsiteConfiguration) -> S3Result<engine::WebsiteConfig> {
    let routing_rules =
        config.routing_rules.unwrap_or_default().into_iter().map(rule_from_s3).collect::<S3Result<_>>()?;
    Ok(engine::WebsiteConfig {
        index_suffix: config.index_document.map(|d| d.suffix),
        error_key: config.error_document.map(|d| d.key),
        redirect_all: config.redirect_all_requests_to.map(|all| engine::RedirectAll {
            host_name: all.host_name,
            protocol: all.protocol.map(|p| p.as_str().to_string()),
        }),
        routing_rules,
    })
}

fn rule_from_s3(rule: RoutingRule) -> S3Result<engine::RoutingRule> {
    let condition = match rule.condition {
        None => None,
        Some(c) => Some(engine::RuleCondition {
            key_prefix_equals: c.key_prefix_equals,
            http_error_code_returned_equals: c
                .http_error_code_returned_equals
                .map(|code| status_code(&code, "HttpErrorCodeReturnedEquals"))
                .transpose()?,
        }),
    };
    let r = rule.redirect;
    Ok(engine::RoutingRule {
        condition,
        redirect: engine::Redirect {
            host_name: r.host_name,
            protocol: r.protocol.map(|p| p.as_str().to_string()),
            replace_key_prefix_with: r.replace_key_prefix_with,
            replace_key_with: r.replace_key_with,
            http_redirect_code: r.http_redirect_code.map(|code| status_code(&code, "HttpRedirectCode")).transpose()?,
        },
    })
}

fn rule_to_s3(rule: engine::RoutingRule) -> RoutingRule {
    let r = rule.redirect;
    RoutingRule {
        condition: rule.condition.map(|c| Condition {
            key_prefix_equals: c.key_prefix_equals,
            http_error_code_returned_equals: c.http_error_code_returned_equals.map(|code| code.to_string()),
        }),
        redirect: Redirect {
            host_name: r.host_name,
            protocol: r.protocol.map(Protocol::from),
            replace_key_prefix_with: r.replace_key_prefix_with,
            replace_key_with: r.replace_key_with,
            http_redirect_code: r.http_redirect_code.map(|code| code.to_string()),
        },
    }
}

fn status_code(text: &str, field: &str) -> S3Result<u16> {
    text.trim().parse().map_err(|_| {
        S3Error::with_message(
            S3ErrorCode::InvalidArgument,
            format!("{field} must be an HTTP status code, not {text:?}"),
        )
    })
}
