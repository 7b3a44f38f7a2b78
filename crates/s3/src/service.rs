//! S3 operations mapped onto the engine. Operations not implemented here fall through to s3s's
//! defaults, which answer `NotImplemented`.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as TOKEN;
use futures::TryStreamExt;
use meridian_engine::checksum::ChecksumAlgorithm;
use meridian_engine::conditions::{ReadConditions, WriteConditions};
use meridian_engine::{
    Body, BodyError, ByteRange, CompletePart, CopyRequest, Engine, GetOutcome, GetRequest, Integrity, ListRequest,
    ListUploadsRequest, PutRequest, Revision,
};
use s3s::dto::*;
use s3s::service::{S3Service, S3ServiceBuilder};
use s3s::{S3, S3Error, S3ErrorCode, S3Request, S3Response, S3Result, s3_error};

use crate::REVISION_HEADER;
use crate::access::Principal;
use crate::convert::{
    ChecksumFields, HeaderInput, ResponseBody, checksum_algorithm, etag, etag_match, metadata, parse_expires, s3_error,
    timestamp, unix_seconds, url_encode,
};
use crate::kv::{KvWrite, expiry_headers, read_consistency, session_cookie};
use meridian_engine::iam::{Access, authorize};
use meridian_engine::record::Location;

/// Settings of the S3 front end.
#[derive(Clone, Debug, Default)]
pub struct S3Options {
    /// Serve virtual-host-style requests (`bucket.domain`) for this domain.
    pub domain: Option<String>,
    /// The region name reported by GetBucketLocation.
    pub region: String,
}

/// The S3 implementation over the engine.
#[derive(Clone)]
pub struct MeridianS3 {
    engine: Engine,
    region: String,
}

impl MeridianS3 {
    pub fn new(engine: Engine, region: impl Into<String>) -> Self {
        MeridianS3 { engine, region: region.into() }
    }

    /// Where the bytes of a GET came from: `x-meridian-served-from: REGION` and
    /// `x-meridian-cache: hit` (from this region's disk or cache) or `miss` (fetched now).
    fn source_headers(&self, source: Option<&meridian_engine::ReadSource>, headers: &mut http::HeaderMap) {
        let own = &self.engine.config().node.region;
        let (region, hit) = match source {
            Some(s) => (s.region.as_str(), s.cache_hit),
            None => (own.as_str(), true),
        };
        if let Ok(v) = http::HeaderValue::from_str(region) {
            headers.insert("x-meridian-served-from", v);
        }
        headers.insert("x-meridian-cache", http::HeaderValue::from_static(if hit { "hit" } else { "miss" }));
    }

    /// The location type asked for by CreateBucket's `LocationConstraint`: `global`,
    /// `pinned:REGION` or `multi:R1,R2` explicitly; a bare name of a region of this cluster pins
    /// the bucket there. Any other bare name (SDKs send their configured region, e.g.
    /// `eu-west-1`) and no constraint mean a global bucket.
    async fn location_from_constraint(&self, constraint: Option<&str>) -> S3Result<Location> {
        let Some(text) = constraint.map(str::trim).filter(|c| !c.is_empty()) else { return Ok(Location::Global) };
        let invalid = |message: String| S3Error::with_message(S3ErrorCode::InvalidLocationConstraint, message);
        let nodes = self.engine.nodes().await.map_err(s3_error)?;
        let known = |region: &str| nodes.iter().any(|n| n.record.region == region);
        if text != "global" && !text.contains(':') {
            let pinned = known(text).then(|| Location::Pinned { region: text.to_string() });
            return Ok(pinned.unwrap_or(Location::Global));
        }
        let location = Location::parse(text).map_err(|e| invalid(e.to_string()))?;
        let regions = match &location {
            Location::Global => vec![],
            Location::Pinned { region } => vec![region.clone()],
            Location::MultiRegion { regions } => regions.clone(),
        };
        match regions.iter().find(|r| !known(r)) {
            Some(unknown) => Err(invalid(format!("no node of this cluster is in region {unknown:?}"))),
            None => Ok(location),
        }
    }

    /// A copy reads its source: the key needs read access there as well.
    async fn check_source(&self, key: Option<&meridian_engine::iam::KeyRecord>, bucket: &str) -> S3Result<()> {
        let record = match self.engine.bucket_for_access(bucket).await {
            Ok((record, _)) => record,
            Err(meridian_engine::EngineError::NoSuchBucket) => return Err(s3_error!(NoSuchBucket)),
            Err(e) => return Err(s3_error(e)),
        };
        if authorize(key, &record, Access::Read) {
            Ok(())
        } else {
            Err(S3Error::with_message(S3ErrorCode::AccessDenied, "Access Denied to the copy source"))
        }
    }
}

/// Builds the s3s service: SigV4 against the keys in the metadata store, every operation
/// checked against the bucket's grants, anonymous access only to public-read buckets.
pub fn build_service(engine: Engine, options: &S3Options) -> S3Service {
    let mut builder = S3ServiceBuilder::new(MeridianS3::new(engine.clone(), options.region.clone()));
    let memo = std::sync::Arc::new(crate::access::KeyMemo::default());
    let access = crate::access::MeridianAccess::new(engine.clone(), memo.clone());
    builder.set_auth(crate::access::MetaAuth::new(engine.clone(), memo));
    builder.set_access(access.clone());
    builder.set_route(crate::kv::KvRoute::new(engine, access));
    if let Some(domain) = &options.domain {
        builder.set_host(s3s::host::SingleDomain::new(domain).unwrap_or_else(|_| {
            tracing::warn!(%domain, "invalid virtual-host domain; serving path-style only");
            s3s::host::SingleDomain::new("localhost").expect("localhost is a valid domain")
        }));
    }
    let mut config = s3s::config::S3Config::default();
    // Enough for a CompleteMultipartUpload listing 10,000 parts, no more.
    config.xml_max_body_size = 4 << 20;
    builder.set_config(std::sync::Arc::new(s3s::config::StaticConfigProvider::new(std::sync::Arc::new(config))));
    builder.build()
}

fn with_revision<T>(output: T, revision: Revision) -> S3Response<T> {
    let mut resp = S3Response::new(output);
    if let Ok(value) = http::HeaderValue::from_str(&revision.to_string()) {
        resp.headers.insert(REVISION_HEADER, value);
    }
    resp
}

fn not_implemented(what: &str) -> S3Error {
    S3Error::with_message(S3ErrorCode::NotImplemented, format!("{what} is not implemented by Meridian"))
}

/// Refuses request features we do not implement instead of silently ignoring them.
fn refuse_unsupported(
    acl: Option<&str>,
    sse: Option<&ServerSideEncryption>,
    sse_customer: Option<&String>,
    storage_class: Option<&StorageClass>,
    tagging: Option<&String>,
) -> S3Result<()> {
    if let Some(acl) = acl
        && acl != ObjectCannedACL::PRIVATE
    {
        return Err(not_implemented(&format!("the {acl:?} canned ACL")));
    }
    if sse.is_some() || sse_customer.is_some() {
        return Err(not_implemented("server-side encryption"));
    }
    if let Some(class) = storage_class
        && class.as_str() != StorageClass::STANDARD
    {
        return Err(not_implemented(&format!("storage class {:?}", class.as_str())));
    }
    if tagging.is_some_and(|t| !t.is_empty()) {
        return Err(not_implemented("object tagging"));
    }
    Ok(())
}

fn request_body(body: Option<StreamingBlob>) -> Body {
    match body {
        Some(blob) => Box::pin(blob.map_err(|e| e as BodyError)),
        None => meridian_engine::body_from_bytes(bytes::Bytes::new()),
    }
}

/// What the request says about its checksum: a header value, or a trailer to read after the
/// body, or just the algorithm the SDK wants computed.
struct ChecksumHeaders {
    algorithm: Option<ChecksumAlgorithm>,
    crc32: Option<String>,
    crc32c: Option<String>,
    crc64nvme: Option<String>,
    sha1: Option<String>,
    sha256: Option<String>,
}

fn integrity<T>(
    req: &S3Request<T>,
    sums: ChecksumHeaders,
    content_md5: Option<String>,
    content_length: Option<i64>,
) -> S3Result<Integrity> {
    let given = [
        (ChecksumAlgorithm::Crc32, sums.crc32),
        (ChecksumAlgorithm::Crc32c, sums.crc32c),
        (ChecksumAlgorithm::Crc64nvme, sums.crc64nvme),
        (ChecksumAlgorithm::Sha1, sums.sha1),
        (ChecksumAlgorithm::Sha256, sums.sha256),
    ];
    let mut given: Vec<(ChecksumAlgorithm, String)> =
        given.into_iter().filter_map(|(a, v)| v.map(|v| (a, v))).collect();
    if given.len() > 1 {
        return Err(s3_error!(
            InvalidRequest,
            "Expecting a single x-amz-checksum- header. Multiple checksum types are not allowed."
        ));
    }
    let mut out = Integrity {
        content_md5,
        content_length: content_length.and_then(|l| u64::try_from(l).ok()),
        ..Default::default()
    };
    if let Some((algorithm, value)) = given.pop() {
        out.algorithm = Some(algorithm);
        out.expected = Some(value);
        return Ok(out);
    }
    let trailer_name =
        req.headers.get("x-amz-trailer").and_then(|v| v.to_str().ok()).map(str::trim).map(str::to_ascii_lowercase);
    if let Some(name) = trailer_name {
        let algorithm = name
            .strip_prefix("x-amz-checksum-")
            .and_then(ChecksumAlgorithm::parse)
            .ok_or_else(|| s3_error!(InvalidRequest, "unsupported x-amz-trailer {name:?}"))?;
        let handle = req.trailing_headers.clone();
        out.algorithm = Some(algorithm);
        out.trailer = Some(Box::new(move || {
            let handle = handle?;
            handle
                .read(|headers| headers.get(name.as_str()).and_then(|v| v.to_str().ok()).map(str::to_string))
                .flatten()
        }));
        return Ok(out);
    }
    out.algorithm = sums.algorithm;
    Ok(out)
}

fn continuation(token: &str) -> S3Result<String> {
    let raw =
        TOKEN.decode(token).map_err(|_| s3_error!(InvalidArgument, "The continuation token provided is incorrect"))?;
    String::from_utf8(raw).map_err(|_| s3_error!(InvalidArgument, "The continuation token provided is incorrect"))
}

fn max_keys(value: Option<i32>) -> S3Result<usize> {
    match value {
        None => Ok(1000),
        Some(n) if n < 0 => Err(s3_error!(InvalidArgument, "max-keys must be a non-negative integer")),
        Some(n) => Ok(n as usize),
    }
}

fn source_of(copy_source: &CopySource) -> S3Result<(String, String)> {
    match copy_source {
        CopySource::Bucket { bucket, key, version_id } => {
            if version_id.as_deref().is_some_and(|v| v != "null") {
                return Err(not_implemented("copying a specific object version"));
            }
            Ok((bucket.to_string(), key.to_string()))
        }
        _ => Err(not_implemented("access point copy sources")),
    }
}

fn read_conditions(
    if_match: Option<ETagCondition>,
    if_none_match: Option<ETagCondition>,
    if_modified_since: Option<&Timestamp>,
    if_unmodified_since: Option<&Timestamp>,
) -> ReadConditions {
    ReadConditions {
        if_match: etag_match(if_match),
        if_none_match: etag_match(if_none_match),
        if_modified_since: if_modified_since.map(unix_seconds),
        if_unmodified_since: if_unmodified_since.map(unix_seconds),
    }
}

fn byte_range(range: Option<Range>) -> Option<ByteRange> {
    range.map(|r| match r {
        Range::Int { first, last } => ByteRange::From { first, last },
        Range::Suffix { length } => ByteRange::Suffix { len: length },
    })
}

/// Parses `x-amz-copy-source-range: bytes=first-last`.
fn copy_source_range(value: Option<&str>) -> S3Result<Option<ByteRange>> {
    let Some(value) = value else { return Ok(None) };
    let bad = || {
        s3_error!(
            InvalidArgument,
            "The x-amz-copy-source-range value must be of the form bytes=first-last where first and last are the zero-based offsets of the first and last bytes to copy"
        )
    };
    let spec = value.trim().strip_prefix("bytes=").ok_or_else(bad)?;
    let (first, last) = spec.split_once('-').ok_or_else(bad)?;
    let first: u64 = first.parse().map_err(|_| bad())?;
    let last: u64 = last.parse().map_err(|_| bad())?;
    if last < first {
        return Err(bad());
    }
    Ok(Some(ByteRange::From { first, last: Some(last) }))
}

fn content_range(out: &GetOutcome) -> Option<String> {
    out.range.map(|(first, last)| format!("bytes {first}-{last}/{}", out.record.size))
}

/// An S3 lifecycle rule as Meridian stores it; what Meridian does not do is refused.
fn lifecycle_rule(rule: LifecycleRule) -> S3Result<meridian_engine::lifecycle::LifecycleRule> {
    if rule.transitions.as_ref().is_some_and(|t| !t.is_empty())
        || rule.noncurrent_version_transitions.as_ref().is_some_and(|t| !t.is_empty())
        || rule.noncurrent_version_expiration.is_some()
    {
        return Err(not_implemented("lifecycle transitions and noncurrent-version rules"));
    }
    let mut prefix = rule.prefix.unwrap_or_default();
    if let Some(filter) = rule.filter {
        if filter.and.is_some()
            || filter.tag.is_some()
            || filter.object_size_greater_than.is_some()
            || filter.object_size_less_than.is_some()
        {
            return Err(not_implemented("lifecycle filters other than a prefix"));
        }
        if let Some(p) = filter.prefix {
            prefix = p;
        }
    }
    let expiration_days = match rule.expiration {
        None => None,
        Some(e) if e.date.is_some() || e.expired_object_delete_marker.is_some() => {
            return Err(not_implemented("lifecycle expiration by date or of delete markers (use Days)"));
        }
        Some(e) => Some(positive_days(e.days, "Expiration Days")?),
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
    })
}

fn positive_days(days: Option<i32>, what: &str) -> S3Result<u32> {
    match days {
        Some(d) if d > 0 => Ok(d as u32),
        _ => Err(S3Error::with_message(S3ErrorCode::InvalidArgument, format!("{what} must be a positive integer"))),
    }
}

/// The canned ACLs Meridian implements: `private` and `public-read` (anonymous GET/HEAD).
fn bucket_acl_is_public(acl: Option<&BucketCannedACL>) -> S3Result<bool> {
    match acl.map(BucketCannedACL::as_str) {
        None | Some(BucketCannedACL::PRIVATE) => Ok(false),
        Some(BucketCannedACL::PUBLIC_READ) => Ok(true),
        Some(other) => Err(not_implemented(&format!("the {other:?} canned ACL (use private or public-read)"))),
    }
}

/// The ACL S3 clients see: the owner with full control, and everyone with read when public.
fn acl_grants(owner: &str, public_read: bool) -> (Owner, Vec<Grant>) {
    let owner = Owner { id: Some(owner.to_string()), display_name: Some(owner.to_string()) };
    let mut grants = vec![Grant {
        grantee: Some(Grantee {
            type_: Type::from_static(Type::CANONICAL_USER),
            id: owner.id.clone(),
            display_name: owner.display_name.clone(),
            email_address: None,
            uri: None,
        }),
        permission: Some(Permission::from_static(Permission::FULL_CONTROL)),
    }];
    if public_read {
        grants.push(Grant {
            grantee: Some(Grantee {
                type_: Type::from_static(Type::GROUP),
                uri: Some("http://acs.amazonaws.com/groups/global/AllUsers".into()),
                id: None,
                display_name: None,
                email_address: None,
            }),
            permission: Some(Permission::from_static(Permission::READ)),
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

#[async_trait::async_trait]
impl S3 for MeridianS3 {
    async fn list_buckets(&self, req: S3Request<ListBucketsInput>) -> S3Result<S3Response<ListBucketsOutput>> {
        let prefix = req.input.prefix.clone().unwrap_or_default();
        let buckets = self.engine.list_buckets().await.map_err(s3_error)?;
        let key = Principal::of(&req);
        let buckets = buckets
            .into_iter()
            .filter(|(name, record)| name.starts_with(&prefix) && authorize(key, record, Access::Read))
            .map(|(name, record)| Bucket {
                name: Some(name),
                creation_date: Some(timestamp(record.created_ms)),
                bucket_region: Some(self.region.clone()),
            })
            .collect();
        let owner = Owner { id: Some(Principal::name_of(&req)), display_name: Some(Principal::name_of(&req)) };
        Ok(S3Response::new(ListBucketsOutput { buckets: Some(buckets), owner: Some(owner), ..Default::default() }))
    }

    async fn create_bucket(&self, req: S3Request<CreateBucketInput>) -> S3Result<S3Response<CreateBucketOutput>> {
        let public_read = bucket_acl_is_public(req.input.acl.as_ref())?;
        if req.input.object_lock_enabled_for_bucket == Some(true) {
            return Err(not_implemented("object lock"));
        }
        let owner = Principal::name_of(&req);
        let constraint = req.input.create_bucket_configuration.as_ref().and_then(|c| c.location_constraint.as_ref());
        let location = self.location_from_constraint(constraint.map(|c| c.as_str())).await?;
        let revision =
            self.engine.create_bucket_at(&req.input.bucket, &owner, public_read, location).await.map_err(s3_error)?;
        let output = CreateBucketOutput { location: Some(format!("/{}", req.input.bucket)) };
        Ok(with_revision(output, revision))
    }

    async fn head_bucket(&self, req: S3Request<HeadBucketInput>) -> S3Result<S3Response<HeadBucketOutput>> {
        let (_, revision) = self.engine.bucket(&req.input.bucket).await.map_err(s3_error)?;
        let output = HeadBucketOutput { bucket_region: Some(self.region.clone()), ..Default::default() };
        Ok(with_revision(output, revision))
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        let (record, _) = self.engine.bucket(&req.input.bucket).await.map_err(s3_error)?;
        // A pinned bucket lives in its region; a multi-region bucket reports its type; a global
        // one the region of the node asked. us-east-1 is an empty constraint, as S3 does.
        let region = match record.location {
            Location::Global => self.region.clone(),
            Location::Pinned { region } => region,
            multi @ Location::MultiRegion { .. } => multi.to_string(),
        };
        let constraint = (region != "us-east-1").then(|| BucketLocationConstraint::from(region));
        Ok(S3Response::new(GetBucketLocationOutput { location_constraint: constraint }))
    }

    async fn get_bucket_versioning(
        &self,
        req: S3Request<GetBucketVersioningInput>,
    ) -> S3Result<S3Response<GetBucketVersioningOutput>> {
        // Versioning was never enabled on any Meridian bucket; S3 answers that with no status.
        self.engine.bucket(&req.input.bucket).await.map_err(s3_error)?;
        Ok(S3Response::new(GetBucketVersioningOutput::default()))
    }

    async fn delete_bucket(&self, req: S3Request<DeleteBucketInput>) -> S3Result<S3Response<DeleteBucketOutput>> {
        let revision = self.engine.delete_bucket(&req.input.bucket).await.map_err(s3_error)?;
        Ok(with_revision(DeleteBucketOutput::default(), revision))
    }

    async fn put_object(&self, mut req: S3Request<PutObjectInput>) -> S3Result<S3Response<PutObjectOutput>> {
        let input = &mut req.input;
        refuse_unsupported(
            input.acl.as_ref().map(ObjectCannedACL::as_str),
            input.server_side_encryption.as_ref(),
            input.sse_customer_algorithm.as_ref(),
            input.storage_class.as_ref(),
            input.tagging.as_ref(),
        )?;
        if input.write_offset_bytes.is_some() {
            return Err(not_implemented("appending with x-amz-write-offset-bytes"));
        }
        let sums = ChecksumHeaders {
            algorithm: checksum_algorithm(input.checksum_algorithm.as_ref())?,
            crc32: input.checksum_crc32.take(),
            crc32c: input.checksum_crc32c.take(),
            crc64nvme: input.checksum_crc64nvme.take(),
            sha1: input.checksum_sha1.take(),
            sha256: input.checksum_sha256.take(),
        };
        let integrity = integrity(&req, sums, req.input.content_md5.clone(), req.input.content_length)?;
        let kv = KvWrite::from_headers(&req.headers)?;
        let input = req.input;
        let headers = HeaderInput {
            content_type: input.content_type.map(|c| c.to_string()),
            content_encoding: input.content_encoding,
            content_disposition: input.content_disposition,
            content_language: input.content_language,
            cache_control: input.cache_control,
            expires: input.expires,
            metadata: input.metadata,
        }
        .into_headers();
        let conditions = kv.conditions(WriteConditions {
            if_match: etag_match(input.if_match),
            if_none_match: etag_match(input.if_none_match),
            ..Default::default()
        });
        let seen = req
            .extensions
            .get::<crate::access::SeenBucket>()
            .filter(|s| s.name == input.bucket)
            .map(|s| (s.record.clone(), s.revision));
        let request = PutRequest {
            bucket: input.bucket,
            key: input.key,
            body: request_body(input.body),
            headers,
            integrity,
            conditions,
            expires_at_ms: kv.expires_at_ms,
        };
        let outcome = match kv.transaction {
            Some((wait, lock_ttl)) => self.engine.put_transaction(request, wait, lock_ttl).await,
            None => self.engine.put_object_in(seen, request).await,
        }
        .map_err(s3_error)?;
        let sums = ChecksumFields::from_stored(outcome.record.checksum.as_ref());
        let output = PutObjectOutput {
            e_tag: Some(etag(&outcome.etag)),
            size: Some(outcome.size as i64),
            checksum_crc32: sums.crc32,
            checksum_crc32c: sums.crc32c,
            checksum_crc64nvme: sums.crc64nvme,
            checksum_sha1: sums.sha1,
            checksum_sha256: sums.sha256,
            checksum_type: sums.kind,
            ..Default::default()
        };
        let mut resp = with_revision(output, outcome.revision);
        session_cookie(&req.headers, outcome.revision, &mut resp.headers);
        Ok(resp)
    }

    async fn get_object(&self, req: S3Request<GetObjectInput>) -> S3Result<S3Response<GetObjectOutput>> {
        let consistency = read_consistency(&req.headers)?;
        let input = req.input;
        if input.version_id.as_deref().is_some_and(|v| v != "null") {
            return Err(not_implemented("reading a specific object version"));
        }
        let want_checksum = input.checksum_mode.as_ref().is_some_and(|m| m.as_str() == ChecksumMode::ENABLED);
        let out = self
            .engine
            .get_object(GetRequest {
                consistency,
                bucket: input.bucket,
                key: input.key,
                range: byte_range(input.range),
                part_number: input.part_number.map(|n| n.max(0) as u32),
                conditions: read_conditions(
                    input.if_match,
                    input.if_none_match,
                    input.if_modified_since.as_ref(),
                    input.if_unmodified_since.as_ref(),
                ),
            })
            .await
            .map_err(s3_error)?;
        let whole = out.range.is_none();
        let sums = if want_checksum && whole {
            ChecksumFields::from_stored(out.record.checksum.as_ref())
        } else {
            ChecksumFields::default()
        };
        let headers = &out.record.headers;
        let output = GetObjectOutput {
            accept_ranges: Some("bytes".into()),
            content_length: Some(out.content_length() as i64),
            content_range: content_range(&out),
            e_tag: Some(etag(&out.record.etag)),
            last_modified: Some(timestamp(out.record.modified_ms)),
            content_type: Some(
                input
                    .response_content_type
                    .or_else(|| headers.content_type.clone())
                    .unwrap_or_else(|| "binary/octet-stream".into()),
            ),
            content_encoding: input.response_content_encoding.or_else(|| headers.content_encoding.clone()),
            content_disposition: input.response_content_disposition.or_else(|| headers.content_disposition.clone()),
            content_language: input.response_content_language.or_else(|| headers.content_language.clone()),
            cache_control: input.response_cache_control.or_else(|| headers.cache_control.clone()),
            expires: input.response_expires.or_else(|| headers.expires.as_deref().and_then(parse_expires)),
            metadata: metadata(headers),
            parts_count: out.parts_count.map(|n| n as i32),
            checksum_crc32: sums.crc32,
            checksum_crc32c: sums.crc32c,
            checksum_crc64nvme: sums.crc64nvme,
            checksum_sha1: sums.sha1,
            checksum_sha256: sums.sha256,
            checksum_type: sums.kind,
            ..Default::default()
        };
        let revision = out.revision;
        let expires_at = out.record.expires_at_ms;
        let source = out.source.clone();
        let len = out.content_length();
        let body = StreamingBlob::new(ResponseBody::new(out.body, len));
        let mut resp = with_revision(GetObjectOutput { body: Some(body), ..output }, revision);
        expiry_headers(expires_at, &mut resp.headers);
        self.source_headers(source.as_ref(), &mut resp.headers);
        Ok(resp)
    }

    async fn head_object(&self, req: S3Request<HeadObjectInput>) -> S3Result<S3Response<HeadObjectOutput>> {
        let consistency = read_consistency(&req.headers)?;
        let input = req.input;
        if input.version_id.as_deref().is_some_and(|v| v != "null") {
            return Err(not_implemented("reading a specific object version"));
        }
        let want_checksum = input.checksum_mode.as_ref().is_some_and(|m| m.as_str() == ChecksumMode::ENABLED);
        let out = self
            .engine
            .head_object(GetRequest {
                consistency,
                bucket: input.bucket,
                key: input.key,
                range: byte_range(input.range),
                part_number: input.part_number.map(|n| n.max(0) as u32),
                conditions: read_conditions(
                    input.if_match,
                    input.if_none_match,
                    input.if_modified_since.as_ref(),
                    input.if_unmodified_since.as_ref(),
                ),
            })
            .await
            .map_err(s3_error)?;
        let sums = if want_checksum && out.range.is_none() {
            ChecksumFields::from_stored(out.record.checksum.as_ref())
        } else {
            ChecksumFields::default()
        };
        let headers = &out.record.headers;
        let output = HeadObjectOutput {
            accept_ranges: Some("bytes".into()),
            content_length: Some(out.content_length() as i64),
            content_range: content_range(&out),
            e_tag: Some(etag(&out.record.etag)),
            last_modified: Some(timestamp(out.record.modified_ms)),
            content_type: Some(headers.content_type.clone().unwrap_or_else(|| "binary/octet-stream".into())),
            content_encoding: headers.content_encoding.clone(),
            content_disposition: headers.content_disposition.clone(),
            content_language: headers.content_language.clone(),
            cache_control: headers.cache_control.clone(),
            expires: headers.expires.as_deref().and_then(parse_expires),
            metadata: metadata(headers),
            parts_count: out.parts_count.map(|n| n as i32),
            checksum_crc32: sums.crc32,
            checksum_crc32c: sums.crc32c,
            checksum_crc64nvme: sums.crc64nvme,
            checksum_sha1: sums.sha1,
            checksum_sha256: sums.sha256,
            checksum_type: sums.kind,
            ..Default::default()
        };
        let mut resp = with_revision(output, out.revision);
        expiry_headers(out.record.expires_at_ms, &mut resp.headers);
        Ok(resp)
    }

    async fn delete_object(&self, req: S3Request<DeleteObjectInput>) -> S3Result<S3Response<DeleteObjectOutput>> {
        let kv = KvWrite::from_headers(&req.headers)?;
        if kv.expires_at_ms.is_some() || kv.transaction.is_some() {
            return Err(s3_error!(InvalidArgument, "TTL and transaction headers apply to writes, not deletes"));
        }
        let input = req.input;
        if input.version_id.as_deref().is_some_and(|v| v != "null") {
            return Err(not_implemented("deleting a specific object version"));
        }
        let conditions = kv.conditions(WriteConditions { if_match: etag_match(input.if_match), ..Default::default() });
        let out = self.engine.delete_object(&input.bucket, &input.key, &conditions).await.map_err(s3_error)?;
        let mut resp = with_revision(DeleteObjectOutput::default(), out.revision);
        session_cookie(&req.headers, out.revision, &mut resp.headers);
        Ok(resp)
    }

    async fn delete_objects(&self, req: S3Request<DeleteObjectsInput>) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let input = req.input;
        if input.delete.objects.len() > 1000 {
            return Err(s3_error!(MalformedXML, "DeleteObjects accepts at most 1000 keys"));
        }
        let quiet = input.delete.quiet.unwrap_or(false);
        let keys: Vec<String> = input.delete.objects.into_iter().map(|o| o.key).collect();
        // A missing bucket fails the whole request, as in S3.
        self.engine.bucket(&input.bucket).await.map_err(s3_error)?;
        let results = self.engine.delete_objects(&input.bucket, keys).await;
        let mut deleted = Vec::new();
        let mut errors = Vec::new();
        let mut revision = 0;
        for (key, result) in results {
            match result {
                Ok(out) => {
                    revision = revision.max(out.revision);
                    if !quiet {
                        deleted.push(DeletedObject { key: Some(key), ..Default::default() });
                    }
                }
                Err(e) => {
                    let e = s3_error(e);
                    errors.push(Error {
                        code: Some(e.code().as_str().to_string()),
                        key: Some(key),
                        message: e.message().map(str::to_string),
                        version_id: None,
                    });
                }
            }
        }
        let output = DeleteObjectsOutput { deleted: Some(deleted), errors: Some(errors), ..Default::default() };
        Ok(with_revision(output, revision))
    }

    async fn copy_object(&self, req: S3Request<CopyObjectInput>) -> S3Result<S3Response<CopyObjectOutput>> {
        let key = Principal::of(&req).cloned();
        let input = req.input;
        refuse_unsupported(
            input.acl.as_ref().map(ObjectCannedACL::as_str),
            input.server_side_encryption.as_ref(),
            input.sse_customer_algorithm.as_ref(),
            input.storage_class.as_ref(),
            input.tagging.as_ref(),
        )?;
        let (src_bucket, src_key) = source_of(&input.copy_source)?;
        self.check_source(key.as_ref(), &src_bucket).await?;
        let replace = match input.metadata_directive.as_ref().map(MetadataDirective::as_str) {
            None | Some(MetadataDirective::COPY) => false,
            Some(MetadataDirective::REPLACE) => true,
            Some(other) => {
                return Err(s3_error!(InvalidArgument, "Unknown metadata directive {other:?}"));
            }
        };
        let replace_headers = replace.then(|| {
            HeaderInput {
                content_type: input.content_type.map(|c| c.to_string()),
                content_encoding: input.content_encoding,
                content_disposition: input.content_disposition,
                content_language: input.content_language,
                cache_control: input.cache_control,
                expires: input.expires,
                metadata: input.metadata,
            }
            .into_headers()
        });
        let out = self
            .engine
            .copy_object(CopyRequest {
                src_bucket,
                src_key,
                dst_bucket: input.bucket,
                dst_key: input.key,
                source_conditions: read_conditions(
                    input.copy_source_if_match,
                    input.copy_source_if_none_match,
                    input.copy_source_if_modified_since.as_ref(),
                    input.copy_source_if_unmodified_since.as_ref(),
                ),
                replace_headers,
                conditions: WriteConditions::default(),
            })
            .await
            .map_err(s3_error)?;
        let sums = ChecksumFields::from_stored(out.record.checksum.as_ref());
        let result = CopyObjectResult {
            e_tag: Some(etag(&out.etag)),
            last_modified: Some(timestamp(out.modified_ms)),
            checksum_crc32: sums.crc32,
            checksum_crc32c: sums.crc32c,
            checksum_crc64nvme: sums.crc64nvme,
            checksum_sha1: sums.sha1,
            checksum_sha256: sums.sha256,
            checksum_type: sums.kind,
        };
        let output = CopyObjectOutput { copy_object_result: Some(result), ..Default::default() };
        Ok(with_revision(output, out.revision))
    }

    async fn get_bucket_acl(&self, req: S3Request<GetBucketAclInput>) -> S3Result<S3Response<GetBucketAclOutput>> {
        let (record, _) = self.engine.bucket(&req.input.bucket).await.map_err(s3_error)?;
        let (owner, grants) = acl_grants(&record.owner, record.public_read);
        Ok(S3Response::new(GetBucketAclOutput { owner: Some(owner), grants: Some(grants) }))
    }

    async fn put_bucket_acl(&self, req: S3Request<PutBucketAclInput>) -> S3Result<S3Response<PutBucketAclOutput>> {
        let input = &req.input;
        refuse_acl_details(
            &[
                input.grant_full_control.as_ref(),
                input.grant_read.as_ref(),
                input.grant_read_acp.as_ref(),
                input.grant_write.as_ref(),
                input.grant_write_acp.as_ref(),
            ],
            input.access_control_policy.is_some(),
        )?;
        let public = bucket_acl_is_public(input.acl.as_ref())?;
        self.engine.set_public_read(&input.bucket, public).await.map_err(s3_error)?;
        Ok(S3Response::new(PutBucketAclOutput::default()))
    }

    async fn get_object_acl(&self, req: S3Request<GetObjectAclInput>) -> S3Result<S3Response<GetObjectAclOutput>> {
        let (record, _) = self.engine.bucket(&req.input.bucket).await.map_err(s3_error)?;
        self.engine
            .head_object(GetRequest {
                bucket: req.input.bucket.clone(),
                key: req.input.key.clone(),
                ..Default::default()
            })
            .await
            .map_err(s3_error)?;
        // Objects have no ACL of their own: they share the bucket's.
        let (owner, grants) = acl_grants(&record.owner, record.public_read);
        Ok(S3Response::new(GetObjectAclOutput { owner: Some(owner), grants: Some(grants), ..Default::default() }))
    }

    async fn put_object_acl(&self, req: S3Request<PutObjectAclInput>) -> S3Result<S3Response<PutObjectAclOutput>> {
        let input = &req.input;
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
        let (record, _) = self.engine.bucket(&input.bucket).await.map_err(s3_error)?;
        if record.public_read {
            return Err(not_implemented("making one object private in a public-read bucket"));
        }
        Ok(S3Response::new(PutObjectAclOutput::default()))
    }

    async fn put_bucket_lifecycle_configuration(
        &self,
        req: S3Request<PutBucketLifecycleConfigurationInput>,
    ) -> S3Result<S3Response<PutBucketLifecycleConfigurationOutput>> {
        let input = req.input;
        let rules = input.lifecycle_configuration.map(|c| c.rules).unwrap_or_default();
        let rules = rules.into_iter().map(lifecycle_rule).collect::<S3Result<Vec<_>>>()?;
        self.engine.set_lifecycle(&input.bucket, rules).await.map_err(s3_error)?;
        Ok(S3Response::new(PutBucketLifecycleConfigurationOutput::default()))
    }

    async fn get_bucket_lifecycle_configuration(
        &self,
        req: S3Request<GetBucketLifecycleConfigurationInput>,
    ) -> S3Result<S3Response<GetBucketLifecycleConfigurationOutput>> {
        let rules = self.engine.lifecycle(&req.input.bucket).await.map_err(s3_error)?;
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
                filter: Some(LifecycleRuleFilter { prefix: Some(r.prefix), ..Default::default() }),
                expiration: r
                    .expiration_days
                    .map(|d| LifecycleExpiration { days: Some(d as i32), ..Default::default() }),
                abort_incomplete_multipart_upload: r
                    .abort_incomplete_days
                    .map(|d| AbortIncompleteMultipartUpload { days_after_initiation: Some(d as i32) }),
                noncurrent_version_expiration: None,
                noncurrent_version_transitions: None,
                prefix: None,
                transitions: None,
            })
            .collect();
        Ok(S3Response::new(GetBucketLifecycleConfigurationOutput { rules: Some(rules), ..Default::default() }))
    }

    async fn delete_bucket_lifecycle(
        &self,
        req: S3Request<DeleteBucketLifecycleInput>,
    ) -> S3Result<S3Response<DeleteBucketLifecycleOutput>> {
        self.engine.set_lifecycle(&req.input.bucket, Vec::new()).await.map_err(s3_error)?;
        Ok(S3Response::new(DeleteBucketLifecycleOutput::default()))
    }

    async fn list_objects(&self, req: S3Request<ListObjectsInput>) -> S3Result<S3Response<ListObjectsOutput>> {
        let consistency = read_consistency(&req.headers)?;
        let input = req.input;
        let url = input.encoding_type.as_ref().is_some_and(|e| e.as_str() == EncodingType::URL);
        let enc = |s: String| if url { url_encode(&s) } else { s };
        let request = ListRequest {
            prefix: input.prefix.clone().unwrap_or_default(),
            delimiter: input.delimiter.clone(),
            after: input.marker.clone().filter(|m| !m.is_empty()),
            max_keys: max_keys(input.max_keys)?,
            consistency,
        };
        let page = self.engine.list_objects(&input.bucket, &request).await.map_err(s3_error)?;
        let output = ListObjectsOutput {
            name: Some(input.bucket),
            prefix: Some(enc(request.prefix)),
            marker: Some(enc(input.marker.unwrap_or_default())),
            delimiter: input.delimiter.map(enc),
            max_keys: Some(request.max_keys.min(1000) as i32),
            is_truncated: Some(page.is_truncated),
            next_marker: page.is_truncated.then(|| page.next_after.clone().map(enc)).flatten(),
            contents: Some(page.objects.into_iter().map(|o| listed_object(o, url)).collect()),
            common_prefixes: Some(
                page.common_prefixes.into_iter().map(|p| CommonPrefix { prefix: Some(enc(p)) }).collect(),
            ),
            encoding_type: input.encoding_type,
            ..Default::default()
        };
        Ok(with_revision(output, page.revision))
    }

    async fn list_objects_v2(&self, req: S3Request<ListObjectsV2Input>) -> S3Result<S3Response<ListObjectsV2Output>> {
        let consistency = read_consistency(&req.headers)?;
        let input = req.input;
        let url = input.encoding_type.as_ref().is_some_and(|e| e.as_str() == EncodingType::URL);
        let enc = |s: String| if url { url_encode(&s) } else { s };
        let after = match &input.continuation_token {
            Some(token) => Some(continuation(token)?),
            None => input.start_after.clone().filter(|s| !s.is_empty()),
        };
        let request = ListRequest {
            prefix: input.prefix.clone().unwrap_or_default(),
            delimiter: input.delimiter.clone(),
            after,
            max_keys: max_keys(input.max_keys)?,
            consistency,
        };
        let page = self.engine.list_objects(&input.bucket, &request).await.map_err(s3_error)?;
        let key_count = page.objects.len() + page.common_prefixes.len();
        let output = ListObjectsV2Output {
            name: Some(input.bucket),
            prefix: Some(enc(request.prefix)),
            delimiter: input.delimiter.map(enc),
            max_keys: Some(request.max_keys.min(1000) as i32),
            key_count: Some(key_count as i32),
            continuation_token: input.continuation_token,
            next_continuation_token: page
                .is_truncated
                .then(|| page.next_after.as_ref().map(|a| TOKEN.encode(a.as_bytes())))
                .flatten(),
            start_after: input.start_after.map(enc),
            is_truncated: Some(page.is_truncated),
            contents: Some(page.objects.into_iter().map(|o| listed_object(o, url)).collect()),
            common_prefixes: Some(
                page.common_prefixes.into_iter().map(|p| CommonPrefix { prefix: Some(enc(p)) }).collect(),
            ),
            encoding_type: input.encoding_type,
            ..Default::default()
        };
        Ok(with_revision(output, page.revision))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let input = req.input;
        refuse_unsupported(
            input.acl.as_ref().map(ObjectCannedACL::as_str),
            input.server_side_encryption.as_ref(),
            input.sse_customer_algorithm.as_ref(),
            input.storage_class.as_ref(),
            input.tagging.as_ref(),
        )?;
        let algorithm = checksum_algorithm(input.checksum_algorithm.as_ref())?;
        let full_object = input.checksum_type.as_ref().is_some_and(|t| t.as_str() == ChecksumType::FULL_OBJECT);
        if full_object && matches!(algorithm, Some(ChecksumAlgorithm::Sha1 | ChecksumAlgorithm::Sha256)) {
            return Err(s3_error!(InvalidRequest, "The FULL_OBJECT checksum type is not supported for SHA checksums"));
        }
        let headers = HeaderInput {
            content_type: input.content_type.map(|c| c.to_string()),
            content_encoding: input.content_encoding,
            content_disposition: input.content_disposition,
            content_language: input.content_language,
            cache_control: input.cache_control,
            expires: input.expires,
            metadata: input.metadata,
        }
        .into_headers();
        let upload = self
            .engine
            .create_multipart_upload(&input.bucket, &input.key, headers, algorithm, full_object)
            .await
            .map_err(s3_error)?;
        let output = CreateMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(upload.upload_id),
            checksum_algorithm: input.checksum_algorithm,
            checksum_type: input.checksum_type,
            ..Default::default()
        };
        Ok(S3Response::new(output))
    }

    async fn upload_part(&self, mut req: S3Request<UploadPartInput>) -> S3Result<S3Response<UploadPartOutput>> {
        let input = &mut req.input;
        if input.sse_customer_algorithm.is_some() {
            return Err(not_implemented("server-side encryption"));
        }
        let sums = ChecksumHeaders {
            algorithm: checksum_algorithm(input.checksum_algorithm.as_ref())?,
            crc32: input.checksum_crc32.take(),
            crc32c: input.checksum_crc32c.take(),
            crc64nvme: input.checksum_crc64nvme.take(),
            sha1: input.checksum_sha1.take(),
            sha256: input.checksum_sha256.take(),
        };
        let integrity = integrity(&req, sums, req.input.content_md5.clone(), req.input.content_length)?;
        let input = req.input;
        let part_number = u32::try_from(input.part_number).unwrap_or(0);
        let part = self
            .engine
            .upload_part(&input.bucket, &input.key, &input.upload_id, part_number, request_body(input.body), integrity)
            .await
            .map_err(s3_error)?;
        let sums = ChecksumFields::from_stored(part.checksum.as_ref());
        let output = UploadPartOutput {
            e_tag: Some(etag(&part.etag)),
            checksum_crc32: sums.crc32,
            checksum_crc32c: sums.crc32c,
            checksum_crc64nvme: sums.crc64nvme,
            checksum_sha1: sums.sha1,
            checksum_sha256: sums.sha256,
            ..Default::default()
        };
        Ok(S3Response::new(output))
    }

    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        let key = Principal::of(&req).cloned();
        let input = req.input;
        let (src_bucket, src_key) = source_of(&input.copy_source)?;
        self.check_source(key.as_ref(), &src_bucket).await?;
        let range = copy_source_range(input.copy_source_range.as_deref())?;
        let part_number = u32::try_from(input.part_number).unwrap_or(0);
        let part = self
            .engine
            .upload_part_copy(
                &input.bucket,
                &input.key,
                &input.upload_id,
                part_number,
                &src_bucket,
                &src_key,
                range,
                read_conditions(
                    input.copy_source_if_match,
                    input.copy_source_if_none_match,
                    input.copy_source_if_modified_since.as_ref(),
                    input.copy_source_if_unmodified_since.as_ref(),
                ),
            )
            .await
            .map_err(s3_error)?;
        let sums = ChecksumFields::from_stored(part.checksum.as_ref());
        let result = CopyPartResult {
            e_tag: Some(etag(&part.etag)),
            last_modified: Some(timestamp(part.modified_ms)),
            checksum_crc32: sums.crc32,
            checksum_crc32c: sums.crc32c,
            checksum_crc64nvme: sums.crc64nvme,
            checksum_sha1: sums.sha1,
            checksum_sha256: sums.sha256,
        };
        Ok(S3Response::new(UploadPartCopyOutput { copy_part_result: Some(result), ..Default::default() }))
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let input = req.input;
        let listed = input.multipart_upload.and_then(|m| m.parts).unwrap_or_default();
        let mut parts = Vec::with_capacity(listed.len());
        for part in listed {
            let part_number = part
                .part_number
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| s3_error!(InvalidPart, "every part needs a PartNumber"))?;
            let etag = part
                .e_tag
                .map(|e| e.value().to_string())
                .ok_or_else(|| s3_error!(InvalidPart, "every part needs an ETag"))?;
            let checksum = part
                .checksum_crc32
                .or(part.checksum_crc32c)
                .or(part.checksum_crc64nvme)
                .or(part.checksum_sha1)
                .or(part.checksum_sha256);
            parts.push(CompletePart { part_number, etag, checksum });
        }
        let conditions = WriteConditions {
            if_match: etag_match(input.if_match),
            if_none_match: etag_match(input.if_none_match),
            ..Default::default()
        };
        let (record, revision) = self
            .engine
            .complete_multipart_upload(&input.bucket, &input.key, &input.upload_id, &parts, &conditions)
            .await
            .map_err(s3_error)?;
        let sums = ChecksumFields::from_stored(record.checksum.as_ref());
        let output = CompleteMultipartUploadOutput {
            bucket: Some(input.bucket.clone()),
            key: Some(input.key.clone()),
            location: Some(format!("/{}/{}", input.bucket, input.key)),
            e_tag: Some(etag(&record.etag)),
            checksum_crc32: sums.crc32,
            checksum_crc32c: sums.crc32c,
            checksum_crc64nvme: sums.crc64nvme,
            checksum_sha1: sums.sha1,
            checksum_sha256: sums.sha256,
            checksum_type: sums.kind,
            ..Default::default()
        };
        Ok(with_revision(output, revision))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let input = req.input;
        self.engine.abort_multipart_upload(&input.bucket, &input.key, &input.upload_id).await.map_err(s3_error)?;
        Ok(S3Response::new(AbortMultipartUploadOutput::default()))
    }

    async fn list_parts(&self, req: S3Request<ListPartsInput>) -> S3Result<S3Response<ListPartsOutput>> {
        let input = req.input;
        let marker = u32::try_from(input.part_number_marker.unwrap_or(0))
            .map_err(|_| s3_error!(InvalidArgument, "part-number-marker must not be negative"))?;
        let max_parts = input.max_parts.map_or(1000, |m| m.max(0) as usize);
        let page = self
            .engine
            .list_parts(&input.bucket, &input.key, &input.upload_id, marker, max_parts)
            .await
            .map_err(s3_error)?;
        let algorithm = page.upload.as_ref().and_then(|u| u.checksum_algorithm);
        let parts = page
            .parts
            .iter()
            .map(|(number, part)| {
                let sums = ChecksumFields::from_stored(part.checksum.as_ref());
                Part {
                    part_number: Some(*number as i32),
                    e_tag: Some(etag(&part.etag)),
                    size: Some(part.size as i64),
                    last_modified: Some(timestamp(part.modified_ms)),
                    checksum_crc32: sums.crc32,
                    checksum_crc32c: sums.crc32c,
                    checksum_crc64nvme: sums.crc64nvme,
                    checksum_sha1: sums.sha1,
                    checksum_sha256: sums.sha256,
                }
            })
            .collect();
        let output = ListPartsOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(input.upload_id),
            part_number_marker: input.part_number_marker,
            next_part_number_marker: page.next_marker.map(|n| n as i32),
            max_parts: Some(max_parts.clamp(1, 1000) as i32),
            is_truncated: Some(page.is_truncated),
            parts: Some(parts),
            checksum_algorithm: algorithm.map(|a| ChecksumAlgorithm_from(a.name())),
            storage_class: Some(StorageClass::from_static(StorageClass::STANDARD)),
            ..Default::default()
        };
        Ok(S3Response::new(output))
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        let input = req.input;
        let request = ListUploadsRequest {
            prefix: input.prefix.clone().unwrap_or_default(),
            delimiter: input.delimiter.clone(),
            key_marker: input.key_marker.clone().filter(|m| !m.is_empty()),
            upload_id_marker: input.upload_id_marker.clone().filter(|m| !m.is_empty()),
            max_uploads: input.max_uploads.map_or(1000, |m| m.max(0) as usize),
        };
        let page = self.engine.list_multipart_uploads(&input.bucket, &request).await.map_err(s3_error)?;
        let uploads = page
            .uploads
            .into_iter()
            .map(|u| MultipartUpload {
                key: Some(u.key),
                upload_id: Some(u.upload_id),
                initiated: Some(timestamp(u.initiated_ms)),
                storage_class: Some(StorageClass::from_static(StorageClass::STANDARD)),
                ..Default::default()
            })
            .collect();
        let output = ListMultipartUploadsOutput {
            bucket: Some(input.bucket),
            prefix: input.prefix,
            delimiter: input.delimiter,
            key_marker: input.key_marker,
            upload_id_marker: input.upload_id_marker,
            max_uploads: Some(request.max_uploads.clamp(1, 1000) as i32),
            is_truncated: Some(page.is_truncated),
            next_key_marker: page.next_key_marker,
            next_upload_id_marker: page.next_upload_id_marker,
            uploads: Some(uploads),
            common_prefixes: Some(page.common_prefixes.into_iter().map(|p| CommonPrefix { prefix: Some(p) }).collect()),
            encoding_type: input.encoding_type,
            ..Default::default()
        };
        Ok(S3Response::new(output))
    }
}

#[allow(non_snake_case)]
fn ChecksumAlgorithm_from(name: &str) -> s3s::dto::ChecksumAlgorithm {
    s3s::dto::ChecksumAlgorithm::from(name.to_string())
}

fn listed_object(o: meridian_engine::ListedObject, url: bool) -> Object {
    let checksum_algorithm = o.record.checksum.as_ref().map(|c| vec![ChecksumAlgorithm_from(c.algorithm.name())]);
    Object {
        key: Some(if url { url_encode(&o.key) } else { o.key }),
        e_tag: Some(etag(&o.record.etag)),
        last_modified: Some(timestamp(o.record.modified_ms)),
        size: Some(o.record.size as i64),
        storage_class: Some(ObjectStorageClass::from_static(ObjectStorageClass::STANDARD)),
        checksum_algorithm,
        ..Default::default()
    }
}
