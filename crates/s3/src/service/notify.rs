//! S3's event notification API (PutBucketNotificationConfiguration,
//! GetBucketNotificationConfiguration): queue configurations naming the operator's webhook
//! targets (`arn:meridian:sqs::<name>:webhook`); the engine keeps the rules and delivers the
//! events (`meridian_engine::notify`).

use meridian_engine::notify::{self as engine, NotificationConfig, NotificationRule};
use s3s::dto::*;
use s3s::{S3Error, S3ErrorCode, S3Request, S3Response, S3Result};

use super::MeridianS3;
use crate::convert::s3_error;

pub(super) async fn put_bucket_notification_configuration(
    s3: &MeridianS3,
    req: S3Request<PutBucketNotificationConfigurationInput>,
) -> S3Result<S3Response<PutBucketNotificationConfigurationOutput>> {
    let input = req.input;
    let config = config_from_s3(input.notification_configuration)?;
    s3.engine.set_notification(&input.bucket, Some(config)).await.map_err(s3_error)?;
    Ok(S3Response::new(PutBucketNotificationConfigurationOutput::default()))
}

pub(super) async fn get_bucket_notification_configuration(
    s3: &MeridianS3,
    req: S3Request<GetBucketNotificationConfigurationInput>,
) -> S3Result<S3Response<GetBucketNotificationConfigurationOutput>> {
    let config = s3.engine.notification(&req.input.bucket).await.map_err(s3_error)?;
    let queues = config.map(|c| c.rules.into_iter().map(rule_to_s3).collect::<Vec<_>>());
    Ok(S3Response::new(GetBucketNotificationConfigurationOutput {
        queue_configurations: queues.filter(|q| !q.is_empty()),
        ..Default::default()
    }))
}

fn invalid(message: impl Into<String>) -> S3Error {
    S3Error::with_message(S3ErrorCode::InvalidArgument, message.into())
}

/// The engine's rules of an S3 configuration: queue configurations only (the targets are
/// webhooks); topics, Lambda functions and EventBridge are refused.
fn config_from_s3(config: NotificationConfiguration) -> S3Result<NotificationConfig> {
    if config.topic_configurations.as_ref().is_some_and(|t| !t.is_empty())
        || config.lambda_function_configurations.as_ref().is_some_and(|l| !l.is_empty())
        || config.event_bridge_configuration.is_some()
    {
        return Err(invalid(
            "Unable to validate the following destination configurations: only QueueConfiguration with the \
             server's webhook targets (arn:meridian:sqs::<name>:webhook) is supported, not topics, Lambda \
             functions or EventBridge",
        ));
    }
    let rules =
        config.queue_configurations.unwrap_or_default().into_iter().map(rule_from_s3).collect::<S3Result<_>>()?;
    Ok(NotificationConfig { rules })
}

fn rule_from_s3(queue: QueueConfiguration) -> S3Result<NotificationRule> {
    let target = engine::target_of_arn(&queue.queue_arn).ok_or_else(|| {
        invalid(format!(
            "Unable to validate the following destination configurations: {} is not a webhook target ARN \
             (arn:meridian:sqs::<name>:webhook)",
            queue.queue_arn
        ))
    })?;
    let mut rule = NotificationRule {
        id: queue.id,
        target: target.to_string(),
        events: queue.events.into_iter().map(String::from).collect(),
        ..Default::default()
    };
    let filter_rules = queue.filter.and_then(|f| f.key).and_then(|k| k.filter_rules).unwrap_or_default();
    for filter in filter_rules {
        let (Some(name), Some(value)) = (filter.name, filter.value) else {
            return Err(S3Error::with_message(S3ErrorCode::MalformedXML, "A FilterRule needs a Name and a Value"));
        };
        let slot = match name.as_str().to_ascii_lowercase().as_str() {
            "prefix" => &mut rule.prefix,
            "suffix" => &mut rule.suffix,
            other => return Err(invalid(format!("filter rule name must be either prefix or suffix, not {other:?}"))),
        };
        if slot.replace(value).is_some() {
            return Err(invalid(format!("Cannot specify more than one {} rule in a filter.", name.as_str())));
        }
    }
    Ok(rule)
}

fn rule_to_s3(rule: NotificationRule) -> QueueConfiguration {
    let filter_rule = |name: &'static str, value: String| FilterRule {
        name: Some(FilterRuleName::from_static(name)),
        value: Some(value),
    };
    let filter_rules: Vec<FilterRule> = [
        rule.prefix.map(|p| filter_rule(FilterRuleName::PREFIX, p)),
        rule.suffix.map(|s| filter_rule(FilterRuleName::SUFFIX, s)),
    ]
    .into_iter()
    .flatten()
    .collect();
    QueueConfiguration {
        events: rule.events.into_iter().map(Event::from).collect(),
        filter: (!filter_rules.is_empty())
            .then_some(NotificationConfigurationFilter { key: Some(S3KeyFilter { filter_rules: Some(filter_rules) }) }),
        id: rule.id,
        queue_arn: engine::target_arn(&rule.target),
    }
}
