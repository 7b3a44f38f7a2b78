//! Who may do what: SigV4 secrets come from the keys in the metadata store, and every
//! operation is checked against the bucket's grants before it runs. Anonymous requests may only
//! GET or HEAD objects of a public-read bucket.

use meridian_engine::iam::{Access, KeyRecord, authorize};
use meridian_engine::record::BucketRecord;
use meridian_engine::{Engine, EngineError};
use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::{S3Auth, SecretKey};
use s3s::path::S3Path;
use s3s::{S3Error, S3ErrorCode, S3Result, s3_error};

use crate::context::{
    AccessDecision, BucketView, Grant, Principal, RequestContext, remember_verified_key, take_verified_key,
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
        | "DeleteObjectTagging" => Needs::Bucket(Write),
        // Bucket configuration, and anything not listed above: owners only.
        _ => Needs::Bucket(Owner),
    }
}

/// Operations an anonymous request may make on a public-read bucket.
fn anonymous_allowed(op: &str) -> bool {
    matches!(op, "GetObject" | "HeadObject")
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
        check_bucket(key?.as_ref(), record?.as_ref().map(|b| &b.record), access)
    }
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
        let bucket = match cx.s3_path() {
            S3Path::Root => None,
            S3Path::Bucket { bucket } | S3Path::Object { bucket, .. } => Some(bucket.to_string()),
        };
        let access_key_id = cx.credentials().map(|c| c.access_key.clone());
        let context = cx.extensions_mut().get_mut::<RequestContext>().ok_or_else(no_context)?;
        let wanted = bucket.as_deref().filter(|_| needs_bucket_record(op, access_key_id.is_none()));
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
        let grant = decide(op, key.as_ref(), bucket.is_some(), record.as_ref().map(|b| &b.record))?;
        let principal = key.map_or(Principal::Anonymous, Principal::Key);
        if wanted.is_some() {
            context.set_bucket(record);
        }
        context.decide(AccessDecision { principal, grant });
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

/// Whether deciding on `op` needs the bucket's record.
fn needs_bucket_record(op: &str, anonymous: bool) -> bool {
    if anonymous { anonymous_allowed(op) } else { matches!(needs(op), Needs::Bucket(_)) }
}

/// What `key` (`None`: anonymous) is granted for `op`, given the record of the request's bucket
/// when the request addresses one.
fn decide(op: &str, key: Option<&KeyRecord>, addresses_bucket: bool, record: Option<&BucketRecord>) -> S3Result<Grant> {
    match (key, needs(op), addresses_bucket) {
        (None, _, true) if anonymous_allowed(op) => {
            check_bucket(None, record, Access::Read).map(|()| Grant::Bucket(Access::Read))
        }
        (None, _, _) => Err(denied()),
        (Some(_), Needs::Authenticated, _) => Ok(Grant::Authenticated),
        (Some(k), Needs::CreateBucket, _) if k.admin || k.can_create_buckets => Ok(Grant::CreateBucket),
        (Some(_), Needs::CreateBucket, _) => {
            Err(S3Error::with_message(S3ErrorCode::AccessDenied, "this key may not create buckets"))
        }
        (Some(k), Needs::Bucket(access), true) => check_bucket(Some(k), record, access).map(|()| Grant::Bucket(access)),
        (Some(_), Needs::Bucket(_), false) => Err(denied()),
    }
}

fn no_context() -> S3Error {
    tracing::error!("an S3 request reached the access check without a request context");
    S3Error::with_message(S3ErrorCode::InternalError, "internal error: the request carries no request context")
}
