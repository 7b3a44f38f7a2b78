//! S3 Object Lock: Put/GetObjectLockConfiguration, Put/GetObjectRetention,
//! Put/GetObjectLegalHold, and the lock headers of writes and reads. The engine keeps and
//! enforces the lock (docs/decisions/062-object-lock.md); this module parses and serializes.

use meridian_engine::iam::Access;
use meridian_engine::object_lock::{DefaultRetention, LockConfig, LockMode, ObjectLock, Period, Retention};
use s3s::dto::DefaultRetention as DefaultRetention_; // the XML element; the engine's has its name
use s3s::dto::*;
use s3s::{S3Request, S3Response, S3Result, s3_error};

use super::MeridianS3;
use crate::context::RequestContext;
use crate::convert::{s3_error, timestamp};

fn ms_of(ts: &Timestamp) -> i64 {
    (time::OffsetDateTime::from(ts.clone()).unix_timestamp_nanos() / 1_000_000) as i64
}

fn mode_of(mode: &str) -> S3Result<LockMode> {
    LockMode::parse(mode).ok_or_else(|| s3_error!(InvalidArgument, "Unknown wormMode directive."))
}

fn hold_of(status: &str) -> S3Result<bool> {
    match status {
        ObjectLockLegalHoldStatus::ON => Ok(true),
        ObjectLockLegalHoldStatus::OFF => Ok(false),
        _ => Err(s3_error!(InvalidArgument, "Legal Hold must be either of 'ON' or 'OFF'")),
    }
}

/// [`parse_lock`] from the lock fields of a PutObject, CopyObject or CreateMultipartUpload
/// input (the same three fields on each).
macro_rules! requested_lock {
    ($input:expr) => {
        super::lock::parse_lock(
            $input.object_lock_mode.as_ref(),
            $input.object_lock_retain_until_date.as_ref(),
            $input.object_lock_legal_hold_status.as_ref(),
        )
    };
}
pub(super) use requested_lock;

/// The lock a write asks for with `x-amz-object-lock-mode`, `-retain-until-date` and
/// `-legal-hold` (mode and date go together).
pub(super) fn parse_lock(
    mode: Option<&ObjectLockMode>,
    until: Option<&Timestamp>,
    hold: Option<&ObjectLockLegalHoldStatus>,
) -> S3Result<ObjectLock> {
    let retention = match (mode, until) {
        (Some(mode), Some(until)) => Some(Retention { mode: mode_of(mode.as_str())?, until_ms: ms_of(until) }),
        (None, None) => None,
        _ => {
            return Err(s3_error!(
                InvalidArgument,
                "x-amz-object-lock-retain-until-date and x-amz-object-lock-mode must both be supplied"
            ));
        }
    };
    let legal_hold = hold.map(|h| hold_of(h.as_str())).transpose()?;
    Ok(ObjectLock { retention, legal_hold })
}

/// Which lock headers a read may carry: as S3, the retention only to callers allowed
/// `s3:GetObjectRetention` and the legal hold only to those allowed `s3:GetObjectLegalHold`.
#[derive(Clone, Copy)]
pub(super) struct LockVisibility {
    retention: bool,
    legal_hold: bool,
}

/// What `req`'s caller may see of the locks of `bucket`/`key`. Nothing to decide (and no policy
/// to evaluate) in a bucket without object lock, whose objects have none.
pub(super) fn lock_visibility<T>(req: &S3Request<T>, bucket: &str, key: &str) -> S3Result<LockVisibility> {
    let context = RequestContext::of(req)?;
    let locking = context.bucket(bucket).is_some_and(|b| b.record.object_lock.is_some());
    let may = |action| locking && crate::access::may(&context, action, bucket, key, Access::Read);
    Ok(LockVisibility { retention: may("s3:GetObjectRetention"), legal_hold: may("s3:GetObjectLegalHold") })
}

/// The lock headers of a read: mode, retain-until date and legal hold, those `visible` allows.
pub(super) fn lock_headers(
    lock: &ObjectLock,
    visible: LockVisibility,
) -> (Option<ObjectLockMode>, Option<Timestamp>, Option<ObjectLockLegalHoldStatus>) {
    let retention = lock.retention.filter(|_| visible.retention);
    let mode = retention.map(|r| ObjectLockMode::from(r.mode.as_str().to_string()));
    let until = retention.map(|r| timestamp(r.until_ms));
    let hold = lock.legal_hold.filter(|_| visible.legal_hold).map(hold_status);
    (mode, until, hold)
}

fn hold_status(on: bool) -> ObjectLockLegalHoldStatus {
    ObjectLockLegalHoldStatus::from_static(if on {
        ObjectLockLegalHoldStatus::ON
    } else {
        ObjectLockLegalHoldStatus::OFF
    })
}

/// Whether the request carries a Content-MD5 or a checksum of its body (header or trailer).
fn has_integrity_header(headers: &http::HeaderMap) -> bool {
    headers.keys().any(|name| {
        let name = name.as_str();
        name == "content-md5" || name.starts_with("x-amz-checksum-") || name == "x-amz-sdk-checksum-algorithm"
    }) || headers.get("x-amz-trailer").and_then(|v| v.to_str().ok()).is_some_and(|t| t.starts_with("x-amz-checksum-"))
}

/// S3 requires a Content-MD5 or a checksum on object lock configuration, retention and legal
/// hold requests.
fn require_integrity<T>(req: &S3Request<T>) -> S3Result<()> {
    if has_integrity_header(&req.headers) {
        return Ok(());
    }
    Err(s3_error!(InvalidRequest, "Missing required header for this request: Content-MD5"))
}

/// S3 requires a Content-MD5 or a checksum on a write that stores a lock: one asking for it,
/// or any write to a bucket with a default retention.
pub(super) fn require_write_integrity<T>(req: &S3Request<T>, bucket: &str, lock: &ObjectLock) -> S3Result<()> {
    let context = RequestContext::of(req)?;
    let default = context.bucket(bucket).and_then(|b| b.record.object_lock).and_then(|c| c.default_retention);
    if (lock.is_empty() && default.is_none()) || has_integrity_header(&req.headers) {
        return Ok(());
    }
    Err(s3_error!(
        InvalidRequest,
        "Content-MD5 OR x-amz-checksum- HTTP header is required for Put Object requests with Object Lock parameters"
    ))
}

/// Whether a removal or change may bypass GOVERNANCE retention: asked for with
/// `x-amz-bypass-governance-retention: true`, and allowed to the caller.
pub(super) fn bypass<T>(req: &S3Request<T>, asked: Option<bool>, bucket: &str, key: &str) -> S3Result<bool> {
    if asked != Some(true) {
        return Ok(false);
    }
    Ok(crate::access::may_bypass_governance(&RequestContext::of(req)?, bucket, key))
}

pub(super) async fn put_object_lock_configuration(
    s3: &MeridianS3,
    req: S3Request<PutObjectLockConfigurationInput>,
) -> S3Result<S3Response<PutObjectLockConfigurationOutput>> {
    require_integrity(&req)?;
    let input = req.input;
    let config = input.object_lock_configuration.ok_or_else(|| s3_error!(MalformedXML))?;
    if config.object_lock_enabled.as_ref().map(ObjectLockEnabled::as_str) != Some(ObjectLockEnabled::ENABLED) {
        return Err(s3_error!(MalformedXML, "ObjectLockEnabled must be Enabled"));
    }
    let default_retention = match config.rule {
        None => None,
        Some(rule) => {
            let default = rule.default_retention.ok_or_else(|| s3_error!(MalformedXML))?;
            let mode = default.mode.as_ref().map(ObjectLockRetentionMode::as_str);
            let days = default.days.map(i64::from);
            let years = default.years.map(i64::from);
            Some(DefaultRetention::new(mode, days, years).map_err(s3_error)?)
        }
    };
    s3.engine.set_lock_config(&input.bucket, LockConfig { default_retention }).await.map_err(s3_error)?;
    Ok(S3Response::new(PutObjectLockConfigurationOutput::default()))
}

pub(super) async fn get_object_lock_configuration(
    s3: &MeridianS3,
    req: S3Request<GetObjectLockConfigurationInput>,
) -> S3Result<S3Response<GetObjectLockConfigurationOutput>> {
    let config = s3.engine.lock_config(&req.input.bucket).await.map_err(s3_error)?;
    let rule = config.default_retention.map(|d| {
        let (days, years) = match d.period {
            Period::Days(n) => (Some(n as i32), None),
            Period::Years(n) => (None, Some(n as i32)),
        };
        let mode = Some(ObjectLockRetentionMode::from(d.mode.as_str().to_string()));
        ObjectLockRule { default_retention: Some(DefaultRetention_ { mode, days, years }) }
    });
    let enabled = Some(ObjectLockEnabled::from_static(ObjectLockEnabled::ENABLED));
    let configuration = ObjectLockConfiguration { object_lock_enabled: enabled, rule };
    Ok(S3Response::new(GetObjectLockConfigurationOutput { object_lock_configuration: Some(configuration) }))
}

pub(super) async fn put_object_retention(
    s3: &MeridianS3,
    req: S3Request<PutObjectRetentionInput>,
) -> S3Result<S3Response<PutObjectRetentionOutput>> {
    require_integrity(&req)?;
    let bypass = bypass(&req, req.input.bypass_governance_retention, &req.input.bucket, &req.input.key)?;
    let input = req.input;
    let asked = input.retention.unwrap_or_default();
    let retention = match (asked.mode, asked.retain_until_date) {
        (Some(mode), Some(until)) => Some(Retention { mode: mode_of(mode.as_str())?, until_ms: ms_of(&until) }),
        (None, None) => None,
        _ => return Err(s3_error!(MalformedXML, "a retention needs both Mode and RetainUntilDate")),
    };
    s3.engine
        .set_retention(&input.bucket, &input.key, input.version_id.as_deref(), retention, bypass)
        .await
        .map_err(s3_error)?;
    Ok(S3Response::new(PutObjectRetentionOutput::default()))
}

pub(super) async fn get_object_retention(
    s3: &MeridianS3,
    req: S3Request<GetObjectRetentionInput>,
) -> S3Result<S3Response<GetObjectRetentionOutput>> {
    let input = req.input;
    let lock = s3.engine.object_lock(&input.bucket, &input.key, input.version_id.as_deref()).await.map_err(s3_error)?;
    let retention = lock.retention.ok_or_else(|| s3_error(meridian_engine::EngineError::NoObjectLock))?;
    let retention = ObjectLockRetention {
        mode: Some(ObjectLockRetentionMode::from(retention.mode.as_str().to_string())),
        retain_until_date: Some(timestamp(retention.until_ms)),
    };
    Ok(S3Response::new(GetObjectRetentionOutput { retention: Some(retention) }))
}

pub(super) async fn put_object_legal_hold(
    s3: &MeridianS3,
    req: S3Request<PutObjectLegalHoldInput>,
) -> S3Result<S3Response<PutObjectLegalHoldOutput>> {
    require_integrity(&req)?;
    let input = req.input;
    let status = input.legal_hold.and_then(|h| h.status).ok_or_else(|| s3_error!(MalformedXML))?;
    let on = hold_of(status.as_str())?;
    s3.engine.set_legal_hold(&input.bucket, &input.key, input.version_id.as_deref(), on).await.map_err(s3_error)?;
    Ok(S3Response::new(PutObjectLegalHoldOutput::default()))
}

pub(super) async fn get_object_legal_hold(
    s3: &MeridianS3,
    req: S3Request<GetObjectLegalHoldInput>,
) -> S3Result<S3Response<GetObjectLegalHoldOutput>> {
    let input = req.input;
    let lock = s3.engine.object_lock(&input.bucket, &input.key, input.version_id.as_deref()).await.map_err(s3_error)?;
    let on = lock.legal_hold.ok_or_else(|| s3_error(meridian_engine::EngineError::NoObjectLock))?;
    let legal_hold = ObjectLockLegalHold { status: Some(hold_status(on)) };
    Ok(S3Response::new(GetObjectLegalHoldOutput { legal_hold: Some(legal_hold) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_asks_for_mode_and_date_together() {
        let mode = ObjectLockMode::from_static(ObjectLockMode::GOVERNANCE);
        let until = timestamp(5_000);
        let on = ObjectLockLegalHoldStatus::from_static(ObjectLockLegalHoldStatus::ON);
        let lock = parse_lock(Some(&mode), Some(&until), Some(&on)).unwrap();
        assert_eq!(lock.retention, Some(Retention { mode: LockMode::Governance, until_ms: 5_000 }));
        assert_eq!(lock.legal_hold, Some(true));
        assert!(parse_lock(Some(&mode), None, None).is_err());
        assert!(parse_lock(None, Some(&until), None).is_err());
        let bad = ObjectLockLegalHoldStatus::from("maybe".to_string());
        assert!(parse_lock(None, None, Some(&bad)).is_err());
        assert!(parse_lock(None, None, None).unwrap().is_empty());
    }
}
