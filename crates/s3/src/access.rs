//! Who may do what: SigV4 secrets come from the keys in the metadata store, and every
//! operation is checked against the bucket's grants before it runs. Anonymous requests may only
//! GET or HEAD objects of a public-read bucket.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meridian_engine::Revision;
use meridian_engine::iam::{Access, KeyRecord, authorize};
use meridian_engine::record::BucketRecord;
use meridian_engine::{Engine, EngineError};
use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::{S3Auth, SecretKey};
use s3s::path::S3Path;
use s3s::{S3Error, S3ErrorCode, S3Request, S3Result, s3_error};

use crate::convert::s3_error;

/// The bucket record a request's bucket was read as before the S3 layer ran (by the
/// forwarder), kept in the request's extensions so the access check and the handler do not read
/// it again.
#[derive(Clone, Debug)]
pub struct SeenBucket {
    pub name: String,
    pub record: BucketRecord,
    pub revision: Revision,
}

/// Keys just looked up to verify a signature, handed to the access check of the same request
/// so it does not look them up a second time. Entries are taken once and live at most
/// [`KEY_MEMO_TTL`]: the memo never stretches a key's life beyond the request that looked it up.
#[derive(Default)]
pub struct KeyMemo {
    keys: Mutex<HashMap<String, (Instant, KeyRecord)>>,
}

const KEY_MEMO_TTL: Duration = Duration::from_secs(1);

impl KeyMemo {
    fn put(&self, access_key_id: &str, key: KeyRecord) {
        let Ok(mut keys) = self.keys.lock() else { return };
        if keys.len() >= 1024 {
            keys.retain(|_, (at, _)| at.elapsed() < KEY_MEMO_TTL);
        }
        keys.insert(access_key_id.to_string(), (Instant::now(), key));
    }

    fn take(&self, access_key_id: &str) -> Option<KeyRecord> {
        let (at, key) = self.keys.lock().ok()?.remove(access_key_id)?;
        (at.elapsed() < KEY_MEMO_TTL).then_some(key)
    }
}

/// Looks up secrets of the keys stored in the metadata store.
#[derive(Clone)]
pub struct MetaAuth {
    engine: Engine,
    memo: Arc<KeyMemo>,
}

impl MetaAuth {
    pub fn new(engine: Engine, memo: Arc<KeyMemo>) -> Self {
        MetaAuth { engine, memo }
    }
}

#[async_trait::async_trait]
impl S3Auth for MetaAuth {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        match self.engine.credential(access_key).await.map_err(s3_error)? {
            Some((key, secret)) => {
                self.memo.put(access_key, key);
                Ok(SecretKey::from(secret))
            }
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
    memo: Arc<KeyMemo>,
}

impl MeridianAccess {
    pub fn new(engine: Engine, memo: Arc<KeyMemo>) -> Self {
        MeridianAccess { engine, memo }
    }

    async fn principal(&self, access_key_id: Option<&str>) -> S3Result<Option<KeyRecord>> {
        let Some(id) = access_key_id else { return Ok(None) };
        if let Some(key) = self.memo.take(id) {
            return Ok(Some(key));
        }
        match self.engine.credential(id).await.map_err(s3_error)? {
            Some((key, _)) => Ok(Some(key)),
            None => Err(s3_error!(InvalidAccessKeyId)),
        }
    }

    /// The bucket's record (`None`: no such bucket), unless the request already carries it.
    async fn bucket_record(&self, bucket: &str, seen: Option<BucketRecord>) -> S3Result<Option<BucketRecord>> {
        if seen.is_some() {
            return Ok(seen);
        }
        match self.engine.bucket_for_access(bucket).await {
            Ok((record, _)) => Ok(Some(record)),
            Err(EngineError::NoSuchBucket) => Ok(None),
            Err(e) => Err(s3_error(e)),
        }
    }
}

impl MeridianAccess {
    /// Checks `access` on `bucket` for the key of a verified signature (KV requests): the key
    /// and the bucket are read in parallel; a missing bucket passes, so the operation answers
    /// NoSuchBucket.
    pub async fn check_key_on_bucket(&self, access_key_id: &str, bucket: &str, access: Access) -> S3Result<()> {
        let (key, record) = tokio::join!(self.principal(Some(access_key_id)), self.bucket_record(bucket, None));
        check_bucket(key?.as_ref(), record?.as_ref(), access)
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
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        let op = cx.s3_op().name().to_string();
        let notes = cx.extensions_mut().get::<meridian_http::RequestInfo>().map(|info| info.notes.clone());
        if let Some(notes) = &notes {
            notes.set_operation(op.as_str());
        }
        let bucket = match cx.s3_path() {
            S3Path::Root => None,
            S3Path::Bucket { bucket } | S3Path::Object { bucket, .. } => Some(bucket.to_string()),
        };
        let anonymous = cx.credentials().is_none();
        let record = match &bucket {
            Some(name)
                if (anonymous && anonymous_allowed(&op)) || (!anonymous && matches!(needs(&op), Needs::Bucket(_))) =>
            {
                let seen =
                    cx.extensions_mut().get::<SeenBucket>().filter(|s| &s.name == name).map(|s| s.record.clone());
                Some(self.bucket_record(name, seen))
            }
            _ => None,
        };
        // The key and the bucket are independent reads: in parallel.
        let (key, record) = tokio::join!(self.principal(cx.credentials().map(|c| c.access_key.as_str())), async {
            match record {
                Some(read) => read.await,
                None => Ok(None),
            }
        });
        let (key, record) = (key?, record?);
        if let Some(notes) = &notes {
            notes.set_principal(key.as_ref().map_or("anonymous", |k| k.name.as_str()));
        }
        let verdict = match (&key, needs(&op), bucket) {
            (None, _, Some(_)) if anonymous_allowed(&op) => check_bucket(None, record.as_ref(), Access::Read),
            (None, _, _) => Err(denied()),
            (Some(_), Needs::Authenticated, _) => Ok(()),
            (Some(k), Needs::CreateBucket, _) => {
                if k.admin || k.can_create_buckets {
                    Ok(())
                } else {
                    Err(S3Error::with_message(S3ErrorCode::AccessDenied, "this key may not create buckets"))
                }
            }
            (Some(k), Needs::Bucket(access), Some(_)) => check_bucket(Some(k), record.as_ref(), access),
            (Some(_), Needs::Bucket(_), None) => Err(denied()),
        };
        cx.extensions_mut().insert(Principal(key));
        verdict
    }
}
