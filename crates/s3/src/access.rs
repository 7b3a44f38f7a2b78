//! Who may do what: SigV4 secrets come from the keys in the metadata store, and every
//! operation is checked against the bucket's grants before it runs. Anonymous requests may only
//! GET or HEAD objects of a public-read bucket.

use meridian_engine::iam::{Access, KeyRecord, authorize};
use meridian_engine::{Engine, EngineError};
use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::{S3Auth, SecretKey};
use s3s::path::S3Path;
use s3s::{S3Error, S3ErrorCode, S3Request, S3Result, s3_error};

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
            Some((_, secret)) => Ok(SecretKey::from(secret)),
            None => Err(S3Error::with_message(
                S3ErrorCode::InvalidAccessKeyId,
                "The AWS Access Key Id you provided does not exist in our records.",
            )),
        }
    }
}

/// The key a request was signed with (`None`: anonymous), resolved once by the access check
/// and kept in the request's extensions for the handlers.
#[derive(Clone, Debug)]
pub struct Principal(pub Option<KeyRecord>);

impl Principal {
    pub fn of<T>(req: &S3Request<T>) -> Option<&KeyRecord> {
        req.extensions.get::<Principal>().and_then(|p| p.0.as_ref())
    }

    /// The key name for ownership, `admin` for requests that carry no resolved key.
    pub fn name_of<T>(req: &S3Request<T>) -> String {
        Self::of(req).map_or_else(|| meridian_engine::iam::ADMIN_KEY.to_string(), |k| k.name.clone())
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
        | "ListMultipartUploads"
        | "ListParts"
        | "GetBucketLocation"
        | "GetBucketVersioning"
        | "GetObjectAcl"
        | "GetBucketAcl" => Needs::Bucket(Read),
        "PutObject"
        | "DeleteObject"
        | "DeleteObjects"
        | "CopyObject"
        | "CreateMultipartUpload"
        | "UploadPart"
        | "UploadPartCopy"
        | "CompleteMultipartUpload"
        | "AbortMultipartUpload" => Needs::Bucket(Write),
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

    async fn principal(&self, access_key_id: Option<&str>) -> S3Result<Option<KeyRecord>> {
        let Some(id) = access_key_id else { return Ok(None) };
        match self.engine.credential(id).await.map_err(s3_error)? {
            Some((key, _)) => Ok(Some(key)),
            None => Err(s3_error!(InvalidAccessKeyId)),
        }
    }

    /// Checks `access` on `bucket` for `key`. A bucket that does not exist passes, so the
    /// operation itself answers NoSuchBucket.
    pub async fn check_bucket(&self, key: Option<&KeyRecord>, bucket: &str, access: Access) -> S3Result<()> {
        let record = match self.engine.bucket_for_access(bucket).await {
            Ok(record) => record,
            Err(EngineError::NoSuchBucket) if key.is_some() => return Ok(()),
            Err(EngineError::NoSuchBucket) => return Err(denied()),
            Err(e) => return Err(s3_error(e)),
        };
        if authorize(key, &record, access) { Ok(()) } else { Err(denied()) }
    }
}

fn denied() -> S3Error {
    S3Error::with_message(S3ErrorCode::AccessDenied, "Access Denied")
}

#[async_trait::async_trait]
impl S3Access for MeridianAccess {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        let key = self.principal(cx.credentials().map(|c| c.access_key.as_str())).await?;
        let op = cx.s3_op().name().to_string();
        let bucket = match cx.s3_path() {
            S3Path::Root => None,
            S3Path::Bucket { bucket } | S3Path::Object { bucket, .. } => Some(bucket.to_string()),
        };
        let verdict = match (&key, needs(&op), bucket) {
            (None, _, Some(bucket)) if anonymous_allowed(&op) => self.check_bucket(None, &bucket, Access::Read).await,
            (None, _, _) => Err(denied()),
            (Some(_), Needs::Authenticated, _) => Ok(()),
            (Some(k), Needs::CreateBucket, _) => {
                if k.admin || k.can_create_buckets {
                    Ok(())
                } else {
                    Err(S3Error::with_message(S3ErrorCode::AccessDenied, "this key may not create buckets"))
                }
            }
            (Some(k), Needs::Bucket(access), Some(bucket)) => self.check_bucket(Some(k), &bucket, access).await,
            (Some(_), Needs::Bucket(_), None) => Err(denied()),
        };
        cx.extensions_mut().insert(Principal(key));
        verdict
    }
}
