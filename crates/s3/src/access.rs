//! Who may do what: SigV4 secrets come from the keys in the metadata store, and every
//! operation is checked against the bucket's grants, ACL and policy before it runs
//! (docs/access.md#how-grants-acls-and-policies-combine): an explicit Deny in the bucket policy
//! refuses anything but the admin key; otherwise a grant, a public-read ACL (anonymous GET and
//! HEAD of objects) or an Allow of the policy lets the request through.

use std::collections::HashMap;
use std::net::IpAddr;

use meridian_engine::iam::{Access, KeyRecord, authorize};
use meridian_engine::policy::{Policy, PolicyRequest, Verdict, resource_arn};
use meridian_engine::record::BucketRecord;
use meridian_engine::{Engine, EngineError};
use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::{S3Auth, SecretKey};
use s3s::path::S3Path;
use s3s::{S3Error, S3ErrorCode, S3Result, s3_error};

use crate::context::{
    AccessDecision, BucketView, Checked, Grant, Principal, RequestContext, remember_verified_key, take_verified_key,
};
use crate::convert::s3_error;

/// Looks up secrets of the keys stored in the metadata store.
#[derive(Clone)]
pub struct MetaAuth {
    engine: Engine,
}

impl MetaAuth {
    pub fn new(engine: Engine) -> Self {
        MetaAuth { engine }
    }
}

#[async_trait::async_trait]
impl S3Auth for MetaAuth {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        match self.engine.credential(access_key).await.map_err(s3_error)? {
            Some((key, secret)) => {
                remember_verified_key(key);
                Ok(SecretKey::from(secret))
            }
            None => Err(S3Error::with_message(
                S3ErrorCode::InvalidAccessKeyId,
                "The AWS Access Key Id you provided does not exist in our records.",
            )),
        }
    }
}

/// What an S3 operation needs.
enum Needs {
    /// Any authenticated key (results are filtered by the handler).
    Authenticated,
    /// The right to create buckets.
    CreateBucket,
    /// An access on the request's bucket.
    Bucket(Access),
}

fn needs(op: &str) -> Needs {
    use Access::*;
    match op {
        "ListBuckets" => Needs::Authenticated,
        "CreateBucket" => Needs::CreateBucket,
        "GetObject"
        | "HeadObject"
        | "HeadBucket"
        | "ListObjects"
        | "ListObjectsV2"
        | "ListObjectVersions"
        | "ListMultipartUploads"
        | "ListParts"
        | "GetBucketLocation"
        | "GetBucketVersioning"
        | "GetObjectAcl"
        | "GetObjectTagging"
        | "GetObjectAttributes"
        | "GetObjectRetention"
        | "GetObjectLegalHold"
        | "GetBucketAcl" => Needs::Bucket(Read),
        "PutObject"
        | "PostObject"
        | "DeleteObject"
        | "DeleteObjects"
        | "CopyObject"
        | "CreateMultipartUpload"
        | "UploadPart"
        | "UploadPartCopy"
        | "CompleteMultipartUpload"
        | "AbortMultipartUpload"
        | "PutObjectTagging"
        | "PutObjectRetention"
        | "PutObjectLegalHold"
        | "DeleteObjectTagging" => Needs::Bucket(Write),
        // Bucket configuration, and anything not listed above: owners only.
        _ => Needs::Bucket(Owner),
    }
}

/// Operations an anonymous request may make on a public-read bucket.
fn anonymous_allowed(op: &str) -> bool {
    matches!(op, "GetObject" | "HeadObject")
}

/// The IAM action bucket policies name an S3 operation by.
fn policy_action(op: &str) -> String {
    let action = match op {
        "HeadObject" => "GetObject",
        "HeadBucket" | "ListObjects" | "ListObjectsV2" => "ListBucket",
        "ListMultipartUploads" => "ListBucketMultipartUploads",
        "ListParts" => "ListMultipartUploadParts",
        "DeleteObjects" => "DeleteObject",
        "CopyObject"
        | "PostObject"
        | "CreateMultipartUpload"
        | "UploadPart"
        | "UploadPartCopy"
        | "CompleteMultipartUpload" => "PutObject",
        "GetBucketLifecycleConfiguration" => "GetLifecycleConfiguration",
        "PutBucketLifecycleConfiguration" | "DeleteBucketLifecycle" => "PutLifecycleConfiguration",
        "GetBucketCors" => "GetBucketCORS",
        "PutBucketCors" | "DeleteBucketCors" => "PutBucketCORS",
        "DeleteBucketTagging" => "PutBucketTagging",
        "PutBucketNotificationConfiguration" => "PutBucketNotification",
        "GetBucketNotificationConfiguration" => "GetBucketNotification",
        "GetPublicAccessBlock" => "GetBucketPublicAccessBlock",
        "PutPublicAccessBlock" | "DeletePublicAccessBlock" => "PutBucketPublicAccessBlock",
        "DeleteBucketOwnershipControls" => "PutBucketOwnershipControls",
        "GetObjectLockConfiguration" => "GetBucketObjectLockConfiguration",
        "PutObjectLockConfiguration" => "PutBucketObjectLockConfiguration",
        other => other,
    };
    format!("s3:{action}")
}

/// The facts of a request that bucket policy conditions test, as [`MeridianAccess::check`]
/// gathers them.
#[derive(Clone, Debug, Default)]
pub struct RequestFacts {
    /// The client's address: the connection's peer, or the address a proven forwarding node
    /// reported.
    pub source_ip: Option<IpAddr>,
    pub secure: bool,
    pub referer: Option<String>,
    pub user_agent: Option<String>,
    /// `prefix`, `delimiter` and `max-keys` of a listing.
    pub list_params: Vec<(&'static str, String)>,
}

impl RequestFacts {
    /// What a policy is asked about `action` on `resource` by `key`.
    pub fn policy_request(&self, action: String, resource: String, key: Option<&KeyRecord>) -> PolicyRequest {
        let now = time::OffsetDateTime::now_utc();
        let mut values: HashMap<&'static str, String> = HashMap::new();
        values.insert("aws:securetransport", self.secure.to_string());
        values.insert("aws:epochtime", now.unix_timestamp().to_string());
        if let Ok(current) = now.format(&time::format_description::well_known::Rfc3339) {
            values.insert("aws:currenttime", current);
        }
        let optional = [
            ("aws:sourceip", self.source_ip.map(|ip| ip.to_canonical().to_string())),
            ("aws:referer", self.referer.clone()),
            ("aws:useragent", self.user_agent.clone()),
            ("aws:username", key.map(|k| k.name.clone())),
        ];
        values.extend(optional.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))));
        values.extend(self.list_params.iter().cloned());
        PolicyRequest { action, resource, key: key.map(|k| k.name.clone()), values }
    }
}

/// What a bucket's policy says about a request, and whether the policy is public.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PolicyView {
    verdict: Verdict,
    public: bool,
}

const NO_POLICY: PolicyView = PolicyView { verdict: Verdict::Neither, public: false };

/// Evaluates the policy of `record` (bucket `bucket`) for `request`. A stored policy that no
/// longer parses (never written so) denies.
pub(crate) fn evaluate_policy(
    bucket: &str,
    record: &BucketRecord,
    request: impl FnOnce() -> PolicyRequest,
) -> (Verdict, bool) {
    let Some(text) = &record.policy else { return (Verdict::Neither, false) };
    match Policy::parse_cached(text, bucket) {
        Ok(policy) => (policy.evaluate(&request()), policy.is_public()),
        Err(e) => {
            tracing::error!(bucket, error = %e, "stored bucket policy does not parse; denying");
            (Verdict::Deny, false)
        }
    }
}

/// Whether the request's key may bypass GOVERNANCE retention of `bucket`/`key`
/// (s3:BypassGovernanceRetention): the admin key always; any other key as the bucket policy
/// says (an explicit Deny refuses, an Allow grants), and without either only an owner.
pub(crate) fn may_bypass_governance(context: &Checked<'_>, bucket: &str, key: &str) -> bool {
    may(context, "s3:BypassGovernanceRetention", bucket, key, Access::Owner)
}

/// Whether the request's key may also do `action` on `bucket`/`key`, beyond the operation it
/// is making: the admin key always; any other key as the bucket policy says or, where it says
/// nothing, as its grant allows `grant`. Anonymous requests never.
pub(crate) fn may(context: &Checked<'_>, action: &str, bucket: &str, key: &str, grant: Access) -> bool {
    let Some(principal) = context.key() else { return false };
    if principal.admin {
        return true;
    }
    let Some(view) = context.bucket(bucket) else { return false };
    let (verdict, _) = evaluate_policy(bucket, &view.record, || {
        context.facts.policy_request(action.to_string(), resource_arn(bucket, Some(key)), Some(principal))
    });
    match verdict {
        Verdict::Deny => false,
        Verdict::Allow => true,
        Verdict::Neither => authorize(Some(principal), &view.record, grant),
    }
}

/// The per-operation checks.
#[derive(Clone)]
pub struct MeridianAccess {
    engine: Engine,
}

impl MeridianAccess {
    pub fn new(engine: Engine) -> Self {
        MeridianAccess { engine }
    }

    /// The key that signed the request (`None`: anonymous), as its signature check looked it
    /// up, else read.
    async fn principal(&self, access_key_id: Option<&str>) -> S3Result<Option<KeyRecord>> {
        let Some(id) = access_key_id else { return Ok(None) };
        if let Some(key) = take_verified_key(id) {
            return Ok(Some(key));
        }
        match self.engine.credential(id).await.map_err(s3_error)? {
            Some((key, _)) => Ok(Some(key)),
            None => Err(s3_error!(InvalidAccessKeyId)),
        }
    }

    /// The bucket's record (`None`: no such bucket).
    async fn bucket_record(&self, bucket: &str) -> S3Result<Option<BucketView>> {
        match self.engine.bucket_for_access(bucket).await {
            Ok((record, revision)) => Ok(Some(BucketView { name: bucket.to_string(), record, revision })),
            Err(EngineError::NoSuchBucket) => Ok(None),
            Err(e) => Err(s3_error(e)),
        }
    }
}

impl MeridianAccess {
    /// Checks `access` on `bucket` for the key of a verified signature (KV requests): the key
    /// and the bucket (unless `seen`, as the request read it already) are read in parallel; a
    /// missing bucket passes, so the operation answers NoSuchBucket.
    pub async fn check_key_on_bucket(
        &self,
        access_key_id: &str,
        bucket: &str,
        seen: Option<&BucketView>,
        access: Access,
    ) -> S3Result<()> {
        let record = async {
            match seen {
                Some(seen) => Ok(Some(seen.clone())),
                None => self.bucket_record(bucket).await,
            }
        };
        let (key, record) = tokio::join!(self.principal(Some(access_key_id)), record);
        let (key, record) = (key?, record?);
        let record = record.as_ref().map(|b| &b.record);
        check_bucket(key.as_ref(), record, access)?;
        match record {
            Some(record) if !key.as_ref().is_some_and(|k| k.admin) => refuse_kv_under_denials(bucket, record),
            _ => Ok(()),
        }
    }
}

/// The KV endpoints do not evaluate bucket policies key by key, so an explicit Deny could be
/// walked around through them: on a bucket whose policy denies anything (or does not parse),
/// they are refused to every key but the admin's.
fn refuse_kv_under_denials(bucket: &str, record: &BucketRecord) -> S3Result<()> {
    let Some(text) = &record.policy else { return Ok(()) };
    match Policy::parse_cached(text, bucket) {
        Ok(policy) if !policy.denies_anything() => Ok(()),
        _ => Err(S3Error::with_message(
            S3ErrorCode::AccessDenied,
            "Access Denied: the bucket policy has Deny statements, which the KV endpoints do not evaluate; use the S3 API",
        )),
    }
}

/// Headers that carry an SSE-C key.
const CUSTOMER_KEY_HEADERS: [&str; 2] =
    ["x-amz-server-side-encryption-customer-key", "x-amz-copy-source-server-side-encryption-customer-key"];

/// S3 refuses SSE-C keys sent over plain HTTP: the key would cross the network readable. A
/// client on this machine (loopback) is exempt, its key never leaving it.
fn refuse_customer_key_in_clear(headers: &http::HeaderMap, facts: &RequestFacts) -> S3Result<()> {
    let in_clear = !facts.secure && !facts.source_ip.is_some_and(|ip| ip.is_loopback());
    if in_clear && CUSTOMER_KEY_HEADERS.iter().any(|name| headers.contains_key(*name)) {
        return Err(S3Error::with_message(
            S3ErrorCode::InvalidRequest,
            "Requests specifying Server Side Encryption with Customer provided keys must be made over a secure connection.",
        ));
    }
    Ok(())
}

/// Checks `access` on a bucket for `key`. A bucket that does not exist passes for a key, so
/// the operation itself answers NoSuchBucket.
fn check_bucket(key: Option<&KeyRecord>, record: Option<&BucketRecord>, access: Access) -> S3Result<()> {
    match record {
        None if key.is_some() => Ok(()),
        None => Err(denied()),
        Some(record) if authorize(key, record, access) => Ok(()),
        Some(_) => Err(denied()),
    }
}

fn denied() -> S3Error {
    S3Error::with_message(S3ErrorCode::AccessDenied, "Access Denied")
}

#[async_trait::async_trait]
impl S3Access for MeridianAccess {
    /// Completes the request's [`RequestContext`]: the key, the bucket record (unless the
    /// forwarding decision read it already) and the grant.
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        let op = cx.s3_op().name().to_string();
        let op = op.as_str();
        let notes = cx.extensions_mut().get::<meridian_http::RequestInfo>().map(|info| info.notes.clone());
        if let Some(notes) = &notes {
            notes.set_operation(op);
        }
        let (bucket, object) = match cx.s3_path() {
            S3Path::Root => (None, None),
            S3Path::Bucket { bucket } => (Some(bucket.to_string()), None),
            S3Path::Object { bucket, key } => (Some(bucket.to_string()), Some(key.to_string())),
        };
        let facts = request_facts(cx);
        refuse_customer_key_in_clear(cx.headers(), &facts)?;
        let access_key_id = cx.credentials().map(|c| c.access_key.clone());
        let context = cx.extensions_mut().get_mut::<RequestContext>().ok_or_else(no_context)?;
        let wanted = bucket.as_deref().filter(|_| needs_bucket_record(op));
        let seen = wanted.and_then(|name| context.bucket(name)).cloned();
        // The key and the bucket are independent reads: in parallel.
        let (key, record) = tokio::join!(self.principal(access_key_id.as_deref()), async {
            match (wanted, seen) {
                (_, Some(seen)) => Ok(Some(seen)),
                (Some(name), None) => self.bucket_record(name).await,
                (None, None) => Ok(None),
            }
        });
        let (key, record) = (key?, record?);
        if let Some(notes) = &notes {
            notes.set_principal(key.as_ref().map_or("anonymous", |k| k.name.as_str()));
        }
        let policy = match (&bucket, &record) {
            (Some(name), Some(view)) if matches!(needs(op), Needs::Bucket(_)) => {
                let (verdict, public) = evaluate_policy(name, &view.record, || {
                    facts.policy_request(policy_action(op), resource_arn(name, object.as_deref()), key.as_ref())
                });
                PolicyView { verdict, public }
            }
            _ => NO_POLICY,
        };
        let grant = decide(op, key.as_ref(), bucket.is_some(), record.as_ref().map(|b| &b.record), policy)?;
        let principal = key.map_or(Principal::Anonymous, Principal::Key);
        if wanted.is_some() {
            context.set_bucket(record);
        }
        context.decide(AccessDecision { principal, grant, facts });
        Ok(())
    }

    /// POST (form) uploads: s3s names the object by the form's `key` as given, so a key that
    /// asks for the file's name (`${filename}`) is refused rather than stored under that text.
    async fn post_object(&self, req: &mut s3s::S3Request<s3s::dto::PostObjectInput>) -> S3Result<()> {
        if req.input.key.contains("${filename}") {
            return Err(S3Error::with_message(
                S3ErrorCode::NotImplemented,
                "${filename} in a POST form's key is not implemented by Meridian: give the whole key",
            ));
        }
        Ok(())
    }
}

/// Whether deciding on `op` needs the bucket's record (its grants, ACL and policy).
fn needs_bucket_record(op: &str) -> bool {
    matches!(needs(op), Needs::Bucket(_))
}

/// The facts policy conditions test: the client's address and transport (as a proven
/// forwarding node reported them, else the connection's), headers and listing parameters.
fn request_facts(cx: &mut S3AccessContext<'_>) -> RequestFacts {
    let header =
        |name: http::header::HeaderName| cx.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let (referer, user_agent) = (header(http::header::REFERER), header(http::header::USER_AGENT));
    let list_params = list_params(cx.uri().query().unwrap_or(""));
    let client = cx.extensions_mut().get::<RequestContext>().and_then(|c| c.client());
    let info = cx.extensions_mut().get::<meridian_http::RequestInfo>();
    let (source_ip, secure) = match (client, info) {
        (Some(client), _) => (Some(client.ip), client.secure),
        (None, Some(info)) => (Some(info.peer.ip()), info.secure),
        (None, None) => (None, false),
    };
    RequestFacts { source_ip, secure, referer, user_agent, list_params }
}

/// A listing's `prefix`, `delimiter` and `max-keys` query parameters (the `s3:` condition
/// keys of ListBucket).
fn list_params(query: &str) -> Vec<(&'static str, String)> {
    let mut params = Vec::new();
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = match name {
            "prefix" => "s3:prefix",
            "delimiter" => "s3:delimiter",
            "max-keys" => "s3:max-keys",
            _ => continue,
        };
        let value = value.replace('+', " ");
        params.push((key, percent_encoding::percent_decode_str(&value).decode_utf8_lossy().into_owned()));
    }
    params
}

/// What `key` (`None`: anonymous) is granted for `op`, given the record of the request's bucket
/// when the request addresses one and what the bucket's policy says.
fn decide(
    op: &str,
    key: Option<&KeyRecord>,
    addresses_bucket: bool,
    record: Option<&BucketRecord>,
    policy: PolicyView,
) -> S3Result<Grant> {
    // The admin key is not subject to policies, so a policy can never lock a bucket away.
    if policy.verdict == Verdict::Deny && !key.is_some_and(|k| k.admin) {
        return Err(denied());
    }
    match (key, needs(op), addresses_bucket) {
        (None, Needs::Bucket(access), true) => {
            let by_acl = anonymous_allowed(op) && check_bucket(None, record, Access::Read).is_ok();
            let restricted = policy.public && record.is_some_and(|r| r.blocks(|b| b.restrict_public_buckets));
            let by_policy = policy.verdict == Verdict::Allow && !restricted;
            if by_acl || by_policy { Ok(Grant::Bucket(access)) } else { Err(denied()) }
        }
        (None, _, _) => Err(denied()),
        (Some(_), Needs::Authenticated, _) => Ok(Grant::Authenticated),
        (Some(k), Needs::CreateBucket, _) if k.admin || k.can_create_buckets => Ok(Grant::CreateBucket),
        (Some(_), Needs::CreateBucket, _) => {
            Err(S3Error::with_message(S3ErrorCode::AccessDenied, "this key may not create buckets"))
        }
        (Some(_), Needs::Bucket(access), true) if policy.verdict == Verdict::Allow => Ok(Grant::Bucket(access)),
        (Some(k), Needs::Bucket(access), true) => check_bucket(Some(k), record, access).map(|()| Grant::Bucket(access)),
        (Some(_), Needs::Bucket(_), false) => Err(denied()),
    }
}

fn no_context() -> S3Error {
    tracing::error!("an S3 request reached the access check without a request context");
    S3Error::with_message(S3ErrorCode::InternalError, "internal error: the request carries no request context")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(ip: &str, secure: bool) -> RequestFacts {
        RequestFacts { source_ip: Some(ip.parse().unwrap()), secure, ..Default::default() }
    }

    #[test]
    fn customer_keys_need_tls_unless_the_client_is_on_this_machine() {
        let mut with_key = http::HeaderMap::new();
        with_key.insert(CUSTOMER_KEY_HEADERS[0], "a2V5".parse().unwrap());
        let mut copy_key = http::HeaderMap::new();
        copy_key.insert(CUSTOMER_KEY_HEADERS[1], "a2V5".parse().unwrap());
        let plain_remote = facts("10.1.2.3", false);
        for headers in [&with_key, &copy_key] {
            let err = refuse_customer_key_in_clear(headers, &plain_remote).unwrap_err();
            assert_eq!(err.code(), &S3ErrorCode::InvalidRequest);
            assert!(refuse_customer_key_in_clear(headers, &facts("10.1.2.3", true)).is_ok(), "over TLS");
            assert!(refuse_customer_key_in_clear(headers, &facts("127.0.0.1", false)).is_ok(), "loopback");
            assert!(refuse_customer_key_in_clear(headers, &facts("::1", false)).is_ok(), "loopback v6");
        }
        assert!(refuse_customer_key_in_clear(&http::HeaderMap::new(), &plain_remote).is_ok(), "no SSE-C key");
    }
}
