//! What the S3 front end settles about a request before an operation runs: where it is served
//! (the forwarding decision), the record of the bucket it addresses (read once), who signed it
//! and what the access check granted. Operations read it through [`RequestContext::of`] and
//! read none of it from the metadata store again.
//!
//! s3s fixes the order (signature, access check, operation) and passes only the request's
//! extensions along, so the context travels there as one value: [`crate::S3Handler`] inserts it
//! with the forwarding decision, [`crate::access::MeridianAccess`] completes it, operations
//! read it.

use std::cell::RefCell;
use std::net::IpAddr;

use meridian_engine::Revision;
use meridian_engine::iam::{Access, KeyRecord};
use meridian_engine::record::BucketRecord;
use s3s::{S3Error, S3ErrorCode, S3Request, S3Result};

pub use crate::access::RequestFacts;

/// A bucket's record and its revision, as read once for this request.
#[derive(Clone, Debug)]
pub struct BucketView {
    pub name: String,
    pub record: BucketRecord,
    pub revision: Revision,
}

/// Why a request is served by this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Forwarding {
    /// Never considered for forwarding: a node without a forwarder (single node), a
    /// Meridian-internal path or a request that addresses no existing bucket.
    NotConsidered,
    /// The bucket is served by this node's region.
    ServedHere,
    /// Another node (this id) forwarded it here; it is never forwarded again.
    ForwardedBy(String),
}

/// Who signed the request.
#[derive(Clone, Debug)]
pub enum Principal {
    Anonymous,
    Key(KeyRecord),
}

/// What the access check granted (operations only run once it granted something).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grant {
    /// Any verified key (the operation filters what it returns).
    Authenticated,
    CreateBucket,
    /// This access on the request's bucket (or the bucket does not exist, and the operation
    /// answers NoSuchBucket).
    Bucket(Access),
}

/// What the access check settled.
#[derive(Clone, Debug)]
pub struct AccessDecision {
    pub principal: Principal,
    pub grant: Grant,
    /// What bucket policies are evaluated against (a copy's source bucket's policy too).
    pub facts: RequestFacts,
}

/// The client of a request another node of the cluster forwarded here, as that node reported
/// it (trusted only from a proven forwarder).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Client {
    pub ip: IpAddr,
    pub secure: bool,
}

/// The per-request facts, in the request's extensions: inserted once by [`crate::S3Handler`]
/// (forwarding), completed by the access check (bucket, principal, grant).
#[derive(Clone, Debug)]
pub struct RequestContext {
    forwarding: Forwarding,
    bucket: Option<BucketView>,
    access: Option<AccessDecision>,
    client: Option<Client>,
}

/// A request context the access check completed: what operations see.
#[derive(Clone, Copy, Debug)]
pub struct Checked<'a> {
    pub forwarding: &'a Forwarding,
    pub principal: &'a Principal,
    pub grant: Grant,
    pub facts: &'a RequestFacts,
    bucket: Option<&'a BucketView>,
}

impl RequestContext {
    /// A request this node serves, with the bucket record read to decide so (if any).
    pub fn arriving(forwarding: Forwarding, bucket: Option<BucketView>) -> Self {
        RequestContext { forwarding, bucket, access: None, client: None }
    }

    /// The client as the node that forwarded the request reported it.
    pub fn with_client(mut self, client: Option<Client>) -> Self {
        self.client = client;
        self
    }

    pub(crate) fn client(&self) -> Option<Client> {
        self.client
    }

    /// The context of a request that passed the access check; an internal error if the
    /// request came another way (a wiring bug, never the client's fault).
    pub fn of<T>(req: &S3Request<T>) -> S3Result<Checked<'_>> {
        let context = req.extensions.get::<RequestContext>().ok_or_else(|| internal("no request context"))?;
        let access =
            context.access.as_ref().ok_or_else(|| internal("the access check did not complete the context"))?;
        Ok(Checked {
            forwarding: &context.forwarding,
            principal: &access.principal,
            grant: access.grant,
            facts: &access.facts,
            bucket: context.bucket.as_ref(),
        })
    }

    /// The record of `bucket` if this request has read it already.
    pub(crate) fn bucket(&self, name: &str) -> Option<&BucketView> {
        self.bucket.as_ref().filter(|b| b.name == name)
    }

    pub(crate) fn set_bucket(&mut self, bucket: Option<BucketView>) {
        self.bucket = bucket;
    }

    pub(crate) fn decide(&mut self, decision: AccessDecision) {
        self.access = Some(decision);
    }
}

impl Checked<'_> {
    /// The record of `bucket` as this request read it (in the forwarding decision or the
    /// access check), if it did.
    pub fn bucket(&self, name: &str) -> Option<&BucketView> {
        self.bucket.filter(|b| b.name == name)
    }

    /// [`Checked::bucket`] as the engine's writes take it.
    pub fn seen_bucket(&self, name: &str) -> Option<(BucketRecord, Revision)> {
        self.bucket(name).map(|b| (b.record.clone(), b.revision))
    }

    /// The verified key, `None` for an anonymous request.
    pub fn key(&self) -> Option<&KeyRecord> {
        match self.principal {
            Principal::Key(key) => Some(key),
            Principal::Anonymous => None,
        }
    }

    /// The name of the key that signed the request, for ownership; an internal error for an
    /// anonymous request (the access check lets none through to operations that need one).
    pub fn key_name(&self) -> S3Result<&str> {
        self.key().map(|k| k.name.as_str()).ok_or_else(|| internal("an anonymous request reached a keyed operation"))
    }
}

fn internal(what: &str) -> S3Error {
    tracing::error!(what, "S3 request context");
    S3Error::with_message(S3ErrorCode::InternalError, format!("internal error: {what}"))
}

tokio::task_local! {
    /// The key the signature check of the request being served looked up.
    static VERIFIED_KEY: RefCell<Option<KeyRecord>>;
}

/// Runs `serve` (s3s serving one request) with a slot for the key its signature check looks
/// up, so the access check takes it from there instead of reading the key again. s3s's
/// [`s3s::auth::S3Auth`] sees only the access key id, not the request or its extensions, so
/// this slot is the only per-request way from it to the access check; it lives exactly as long
/// as the request.
pub async fn with_key_slot<F: Future>(serve: F) -> F::Output {
    VERIFIED_KEY.scope(RefCell::default(), serve).await
}

/// Keeps the key the signature check looked up (a no-op outside [`with_key_slot`]).
pub(crate) fn remember_verified_key(key: KeyRecord) {
    let _ = VERIFIED_KEY.try_with(|slot| slot.replace(Some(key)));
}

/// The key remembered for `access_key_id` by this request's signature check, if any.
pub(crate) fn take_verified_key(access_key_id: &str) -> Option<KeyRecord> {
    let key = VERIFIED_KEY.try_with(RefCell::take).ok().flatten()?;
    key.credentials.iter().any(|c| c.access_key_id == access_key_id).then_some(key)
}

/// A GET of `/bkt/key` carrying `context` (unit tests of operations).
#[cfg(test)]
pub(crate) fn test_request(context: Option<RequestContext>, headers: http::HeaderMap) -> S3Request<()> {
    let mut extensions = http::Extensions::new();
    if let Some(context) = context {
        extensions.insert(context);
    }
    S3Request {
        input: (),
        method: http::Method::GET,
        uri: http::Uri::from_static("/bkt/key"),
        headers,
        extensions,
        credentials: None,
        region: None,
        service: None,
        trailing_headers: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(context: Option<RequestContext>) -> S3Request<()> {
        test_request(context, http::HeaderMap::new())
    }

    #[test]
    fn operations_see_only_a_context_the_access_check_completed() {
        let missing = request(None);
        assert_eq!(RequestContext::of(&missing).err().map(|e| e.code().clone()), Some(S3ErrorCode::InternalError));
        let unchecked = request(Some(RequestContext::arriving(Forwarding::NotConsidered, None)));
        assert_eq!(RequestContext::of(&unchecked).err().map(|e| e.code().clone()), Some(S3ErrorCode::InternalError));

        let mut context = RequestContext::arriving(Forwarding::ServedHere, None);
        context.decide(AccessDecision {
            principal: Principal::Anonymous,
            grant: Grant::Bucket(Access::Read),
            facts: RequestFacts::default(),
        });
        let checked = request(Some(context));
        let seen = RequestContext::of(&checked).unwrap();
        assert_eq!(seen.forwarding, &Forwarding::ServedHere);
        assert!(seen.key().is_none());
        assert!(seen.key_name().is_err(), "an anonymous request has no key name to own things by");
    }

    #[tokio::test]
    async fn a_verified_key_is_kept_for_its_own_request_only() {
        let key = |access_key_id: &str| KeyRecord {
            name: "k".into(),
            created_ms: 0,
            admin: false,
            can_create_buckets: false,
            credentials: vec![meridian_engine::iam::Credential {
                access_key_id: access_key_id.into(),
                secret: "s".into(),
                created_ms: 0,
                expires_at_ms: None,
            }],
        };
        remember_verified_key(key("AK1"));
        assert!(take_verified_key("AK1").is_none(), "outside a request there is no slot");
        with_key_slot(async {
            remember_verified_key(key("AK1"));
            assert!(take_verified_key("AK2").is_none(), "another access key id");
        })
        .await;
        let taken = with_key_slot(async {
            assert!(take_verified_key("AK1").is_none(), "a new request starts empty");
            remember_verified_key(key("AK1"));
            take_verified_key("AK1")
        })
        .await;
        assert_eq!(taken, Some(key("AK1")), "the key verified in this request");
    }
}
