//! Access control and bucket configuration: bucket and object ACLs (the canned `private` and
//! `public-read`), and lifecycle rules. Versioning is in `versions.rs`, the website configuration
//! is in `website.rs`; other configuration operations fall through to s3s's `NotImplemented`.

use meridian_engine::record::BucketRecord;
use meridian_engine::tagging::{TagTarget, tags_from_pairs};
use meridian_engine::{EngineError, GetRequest};
use s3s::dto::*;
use s3s::{S3Error, S3ErrorCode, S3Request, S3Response, S3Result};

use super::MeridianS3;
use super::grants::{self, Permission};
use super::shared::{bucket_acl_is_public, not_implemented};
use crate::convert::s3_error;

pub(super) async fn get_bucket_acl(
    s3: &MeridianS3,
    req: S3Request<GetBucketAclInput>,
) -> S3Result<S3Response<GetBucketAclOutput>> {
    let (record, _) = s3.engine.bucket(&req.input.bucket).await.map_err(s3_error)?;
    let (owner, grants) = acl_grants(&record);
    Ok(S3Response::new(GetBucketAclOutput { owner: Some(owner), grants: Some(grants) }))
}

pub(super) async fn put_bucket_acl(
    s3: &MeridianS3,
    req: S3Request<PutBucketAclInput>,
) -> S3Result<S3Response<PutBucketAclOutput>> {
    let input = &req.input;
    if input.access_control_policy.is_some() {
        return Err(not_implemented(
            "ACL documents (AccessControlPolicy); use a canned ACL or the x-amz-grant-* headers",
        ));
    }
    let headers = grants::from_headers(&[
        (input.grant_read.as_ref(), Permission::Read),
        (input.grant_write.as_ref(), Permission::Write),
        (input.grant_full_control.as_ref(), Permission::FullControl),
        (input.grant_read_acp.as_ref(), Permission::ReadAcp),
        (input.grant_write_acp.as_ref(), Permission::WriteAcp),
    ])?;
    match headers {
        None => {
            let public = bucket_acl_is_public(input.acl.as_ref())?;
            s3.engine.set_public_read(&input.bucket, public).await.map_err(s3_error)?;
        }
        Some(_) if input.acl.is_some() => {
            return Err(S3Error::with_message(
                S3ErrorCode::InvalidRequest,
                "Specifying both Canned ACLs and Header Grants is not allowed",
            ));
        }
        // S3 replaces the whole ACL: keys not named lose their grants.
        Some(acl) => {
            s3.engine.replace_acl(&input.bucket, acl.grants, acl.public_read).await.map_err(|e| match e {
                EngineError::NoSuchAccessKey(name) => {
                    S3Error::with_message(S3ErrorCode::InvalidArgument, format!("Invalid id: no key named {name:?}"))
                }
                other => s3_error(other),
            })?;
        }
    }
    Ok(S3Response::new(PutBucketAclOutput::default()))
}

pub(super) async fn get_object_acl(
    s3: &MeridianS3,
    req: S3Request<GetObjectAclInput>,
) -> S3Result<S3Response<GetObjectAclOutput>> {
    let (record, _) = s3.engine.bucket(&req.input.bucket).await.map_err(s3_error)?;
    let input = &req.input;
    object_exists(s3, &input.bucket, &input.key, input.version_id.as_ref()).await?;
    // Objects have no ACL of their own: they share the bucket's.
    let (owner, grants) = acl_grants(&record);
    Ok(S3Response::new(GetObjectAclOutput { owner: Some(owner), grants: Some(grants), ..Default::default() }))
}

pub(super) async fn put_object_acl(
    s3: &MeridianS3,
    req: S3Request<PutObjectAclInput>,
) -> S3Result<S3Response<PutObjectAclOutput>> {
    let input = &req.input;
    let (record, _) = s3.engine.bucket(&input.bucket).await.map_err(s3_error)?;
    if record.acls_disabled() {
        return Err(s3_error(EngineError::AccessControlListNotSupported));
    }
    let public = input.acl.as_ref().is_some_and(|a| {
        matches!(
            a.as_str(),
            ObjectCannedACL::PUBLIC_READ | ObjectCannedACL::PUBLIC_READ_WRITE | ObjectCannedACL::AUTHENTICATED_READ
        )
    });
    if public && record.blocks(|b| b.block_public_acls) {
        return Err(s3_error(EngineError::AccessDenied("the bucket's public access block refuses public ACLs".into())));
    }
    refuse_acl_details(
        &[
            input.grant_full_control.as_ref(),
            input.grant_read.as_ref(),
            input.grant_read_acp.as_ref(),
            input.grant_write_acp.as_ref(),
        ],
        input.access_control_policy.is_some(),
    )?;
    match input.acl.as_ref().map(ObjectCannedACL::as_str) {
        None | Some(ObjectCannedACL::PRIVATE) => {}
        Some(other) => {
            return Err(not_implemented(&format!(
                "per-object ACLs ({other:?}); objects share their bucket's ACL: make the bucket public-read instead"
            )));
        }
    }
    if record.public_read {
        return Err(not_implemented("making one object private in a public-read bucket"));
    }
    object_exists(s3, &input.bucket, &input.key, input.version_id.as_ref()).await?;
    Ok(S3Response::new(PutObjectAclOutput::default()))
}

/// The object (or the version asked for) must exist, as in S3's object ACL calls.
async fn object_exists(s3: &MeridianS3, bucket: &str, key: &str, version_id: Option<&String>) -> S3Result<()> {
    let object = GetRequest {
        bucket: bucket.to_string(),
        key: key.to_string(),
        version_id: version_id.cloned(),
        ..Default::default()
    };
    s3.engine.head_object(object).await.map_err(s3_error)?;
    Ok(())
}

pub(super) async fn put_bucket_lifecycle_configuration(
    s3: &MeridianS3,
    req: S3Request<PutBucketLifecycleConfigurationInput>,
) -> S3Result<S3Response<PutBucketLifecycleConfigurationOutput>> {
    let input = req.input;
    let rules = input.lifecycle_configuration.map(|c| c.rules).unwrap_or_default();
    let rules = rules.into_iter().map(lifecycle_rule).collect::<S3Result<Vec<_>>>()?;
    s3.engine.set_lifecycle(&input.bucket, rules).await.map_err(s3_error)?;
    Ok(S3Response::new(PutBucketLifecycleConfigurationOutput::default()))
}

pub(super) async fn get_bucket_lifecycle_configuration(
    s3: &MeridianS3,
    req: S3Request<GetBucketLifecycleConfigurationInput>,
) -> S3Result<S3Response<GetBucketLifecycleConfigurationOutput>> {
    let rules = s3.engine.lifecycle(&req.input.bucket).await.map_err(s3_error)?;
    if rules.is_empty() {
        return Err(S3Error::with_message(
            S3ErrorCode::NoSuchLifecycleConfiguration,
            "The lifecycle configuration does not exist",
        ));
    }
    let rules = rules
        .into_iter()
        .map(|r| LifecycleRule {
            id: Some(r.id),
            status: ExpirationStatus::from_static(if r.enabled {
                ExpirationStatus::ENABLED
            } else {
                ExpirationStatus::DISABLED
            }),
            filter: Some(lifecycle_filter(r.prefix, r.tags)),
            expiration: match (r.expiration_days, r.expired_object_delete_marker) {
                (Some(d), _) => Some(LifecycleExpiration { days: Some(d as i32), ..Default::default() }),
                (None, true) => {
                    Some(LifecycleExpiration { expired_object_delete_marker: Some(true), ..Default::default() })
                }
                (None, false) => None,
            },
            abort_incomplete_multipart_upload: r
                .abort_incomplete_days
                .map(|d| AbortIncompleteMultipartUpload { days_after_initiation: Some(d as i32) }),
            noncurrent_version_expiration: r.noncurrent_days.map(|d| NoncurrentVersionExpiration {
                noncurrent_days: Some(d as i32),
                newer_noncurrent_versions: r.newer_noncurrent_versions.map(|n| n as i32),
            }),
            noncurrent_version_transitions: None,
            prefix: None,
            transitions: None,
        })
        .collect();
    Ok(S3Response::new(GetBucketLifecycleConfigurationOutput { rules: Some(rules), ..Default::default() }))
}

pub(super) async fn delete_bucket_lifecycle(
    s3: &MeridianS3,
    req: S3Request<DeleteBucketLifecycleInput>,
) -> S3Result<S3Response<DeleteBucketLifecycleOutput>> {
    s3.engine.set_lifecycle(&req.input.bucket, Vec::new()).await.map_err(s3_error)?;
    Ok(S3Response::new(DeleteBucketLifecycleOutput::default()))
}

/// An S3 lifecycle rule as Meridian stores it; what Meridian does not do is refused.
fn lifecycle_rule(rule: LifecycleRule) -> S3Result<meridian_engine::lifecycle::LifecycleRule> {
    if rule.transitions.as_ref().is_some_and(|t| !t.is_empty())
        || rule.noncurrent_version_transitions.as_ref().is_some_and(|t| !t.is_empty())
    {
        return Err(not_implemented("lifecycle transitions"));
    }
    let mut prefix = rule.prefix.unwrap_or_default();
    let mut tags = Vec::new();
    if let Some(filter) = rule.filter {
        let sized = |and: &LifecycleRuleAndOperator| {
            and.object_size_greater_than.is_some() || and.object_size_less_than.is_some()
        };
        if filter.object_size_greater_than.is_some()
            || filter.object_size_less_than.is_some()
            || filter.and.as_ref().is_some_and(sized)
        {
            return Err(not_implemented("lifecycle filters by object size"));
        }
        if let Some(p) = filter.prefix {
            prefix = p;
        }
        if let Some(tag) = filter.tag {
            tags.push(tag);
        }
        if let Some(and) = filter.and {
            prefix = and.prefix.unwrap_or(prefix);
            tags.extend(and.tags.unwrap_or_default());
        }
    }
    let pairs = tags.into_iter().map(|t| (t.key.unwrap_or_default(), t.value.unwrap_or_default())).collect();
    let tags = tags_from_pairs(pairs, TagTarget::Object).map_err(s3_error)?;
    let (expiration_days, expired_object_delete_marker) = match rule.expiration {
        None => (None, false),
        Some(e) if e.date.is_some() => return Err(not_implemented("lifecycle expiration by date (use Days)")),
        Some(LifecycleExpiration { days: None, expired_object_delete_marker: Some(marker), .. }) => (None, marker),
        Some(e) if e.expired_object_delete_marker.is_some() => {
            let message = "ExpiredObjectDeleteMarker cannot be specified with Days or Date";
            return Err(S3Error::with_message(S3ErrorCode::InvalidRequest, message));
        }
        Some(e) => (Some(positive_days(e.days, "Expiration Days")?), false),
    };
    let (noncurrent_days, newer_noncurrent_versions) = match rule.noncurrent_version_expiration {
        None => (None, None),
        Some(n) => {
            let newer = n.newer_noncurrent_versions.map(|v| positive_days(Some(v), "NewerNoncurrentVersions"));
            (Some(positive_days(n.noncurrent_days, "NoncurrentDays")?), newer.transpose()?)
        }
    };
    let abort_incomplete_days = match rule.abort_incomplete_multipart_upload {
        None => None,
        Some(a) => Some(positive_days(a.days_after_initiation, "DaysAfterInitiation")?),
    };
    Ok(meridian_engine::lifecycle::LifecycleRule {
        id: rule.id.unwrap_or_default(),
        prefix,
        enabled: rule.status.as_str() == ExpirationStatus::ENABLED,
        expiration_days,
        abort_incomplete_days,
        tags,
        noncurrent_days,
        newer_noncurrent_versions,
        expired_object_delete_marker,
    })
}

/// A stored rule's filter as S3 writes it: a prefix, one tag, or both (or several tags) under
/// `And`.
fn lifecycle_filter(prefix: String, tags: meridian_engine::tagging::Tags) -> LifecycleRuleFilter {
    let mut set: Vec<Tag> = tags.into_iter().map(|(k, v)| Tag { key: Some(k), value: Some(v) }).collect();
    match set.len() {
        0 => LifecycleRuleFilter { prefix: Some(prefix), ..Default::default() },
        1 if prefix.is_empty() => LifecycleRuleFilter { tag: set.pop(), ..Default::default() },
        _ => LifecycleRuleFilter {
            and: Some(LifecycleRuleAndOperator {
                prefix: (!prefix.is_empty()).then_some(prefix),
                tags: Some(set),
                ..Default::default()
            }),
            ..Default::default()
        },
    }
}

fn positive_days(days: Option<i32>, what: &str) -> S3Result<u32> {
    match days {
        Some(d) if d > 0 => Ok(d as u32),
        _ => Err(S3Error::with_message(S3ErrorCode::InvalidArgument, format!("{what} must be a positive integer"))),
    }
}

/// The ACL S3 clients see: the owner with full control, each key's grants (its name as the
/// canonical user id), and everyone with read when public.
fn acl_grants(record: &BucketRecord) -> (Owner, Vec<Grant>) {
    let owner = Owner { id: Some(record.owner.clone()), display_name: Some(record.owner.clone()) };
    let user = |name: &str, permission: &'static str| Grant {
        grantee: Some(Grantee {
            type_: Type::from_static(Type::CANONICAL_USER),
            id: Some(name.to_string()),
            display_name: Some(name.to_string()),
            email_address: None,
            uri: None,
        }),
        permission: Some(s3s::dto::Permission::from_static(permission)),
    };
    let mut grants = vec![user(&record.owner, s3s::dto::Permission::FULL_CONTROL)];
    for (name, grant) in &record.grants {
        if grant.owner {
            grants.push(user(name, s3s::dto::Permission::FULL_CONTROL));
            continue;
        }
        if grant.read {
            grants.push(user(name, s3s::dto::Permission::READ));
        }
        if grant.write {
            grants.push(user(name, s3s::dto::Permission::WRITE));
        }
    }
    if record.public_read {
        grants.push(Grant {
            grantee: Some(Grantee {
                type_: Type::from_static(Type::GROUP),
                uri: Some("http://acs.amazonaws.com/groups/global/AllUsers".into()),
                id: None,
                display_name: None,
                email_address: None,
            }),
            permission: Some(s3s::dto::Permission::from_static(s3s::dto::Permission::READ)),
        });
    }
    (owner, grants)
}

fn refuse_acl_details(grants: &[Option<&String>], policy: bool) -> S3Result<()> {
    if policy || grants.iter().any(Option::is_some) {
        return Err(not_implemented(
            "explicit ACL grants (use the canned ACLs private or public-read, or `meridian admin bucket allow`)",
        ));
    }
    Ok(())
}
