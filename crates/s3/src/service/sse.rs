//! Server-side encryption on the wire: the request headers of SSE-S3, SSE-KMS and SSE-C turned
//! into the engine's [`Protection`] and [`CustomerKey`], the response headers from an object's
//! [`Encryption`], and the bucket default (Put/Get/DeleteBucketEncryption).

use meridian_engine::crypt::{BucketEncryption, CustomerKey, Encryption, Protection, SseMode};
use s3s::dto::*;
use s3s::{S3Error, S3ErrorCode, S3Request, S3Response, S3Result, s3_error};

use super::MeridianS3;
use crate::convert::s3_error;

/// The SSE-C headers of a request's input (every input that takes them names them alike).
macro_rules! customer_headers {
    ($input:expr) => {
        super::sse::CustomerHeaders {
            algorithm: $input.sse_customer_algorithm.as_ref(),
            key: $input.sse_customer_key.as_ref(),
            md5: $input.sse_customer_key_md5.as_ref(),
        }
    };
}

/// The copy-source SSE-C headers of a copy's input.
macro_rules! copy_source_customer_headers {
    ($input:expr) => {
        super::sse::CustomerHeaders {
            algorithm: $input.copy_source_sse_customer_algorithm.as_ref(),
            key: $input.copy_source_sse_customer_key.as_ref(),
            md5: $input.copy_source_sse_customer_key_md5.as_ref(),
        }
    };
}

/// The protection the SSE headers of a write's input ask for (PutObject, CopyObject and
/// CreateMultipartUpload name them alike).
macro_rules! write_protection {
    ($input:expr) => {
        super::sse::SseHeaders {
            sse: $input.server_side_encryption.as_ref(),
            kms_key_id: $input.ssekms_key_id.as_ref(),
            customer: super::sse::customer_headers!($input),
        }
        .protection()
    };
}

pub(super) use {copy_source_customer_headers, customer_headers, write_protection};

/// The SSE headers of a write.
pub(super) struct SseHeaders<'a> {
    pub sse: Option<&'a ServerSideEncryption>,
    pub kms_key_id: Option<&'a String>,
    pub customer: CustomerHeaders<'a>,
}

/// The three SSE-C headers (or their copy-source forms).
#[derive(Clone, Copy, Default)]
pub(super) struct CustomerHeaders<'a> {
    pub algorithm: Option<&'a String>,
    pub key: Option<&'a String>,
    pub md5: Option<&'a String>,
}

impl CustomerHeaders<'_> {
    pub fn key(self) -> S3Result<Option<CustomerKey>> {
        CustomerKey::parse(
            self.algorithm.map(String::as_str),
            self.key.map(String::as_str),
            self.md5.map(String::as_str),
        )
        .map_err(s3_error)
    }
}

impl SseHeaders<'_> {
    /// The protection a write asks for (`None`: whatever the bucket or node default is).
    pub fn protection(&self) -> S3Result<Option<Protection>> {
        let customer = self.customer.key()?;
        match (self.sse.map(ServerSideEncryption::as_str), customer) {
            (Some(_), Some(_)) => Err(s3_error!(
                InvalidArgument,
                "Server Side Encryption with Customer provided key is incompatible with the encryption method specified"
            )),
            (None, Some(key)) => Ok(Some(Protection::Customer(key))),
            (Some(ServerSideEncryption::AWS_KMS | ServerSideEncryption::AWS_KMS_DSSE), None) => {
                Ok(Some(Protection::Kms { key_id: self.kms_key_id.cloned() }))
            }
            _ if self.kms_key_id.is_some() => Err(s3_error!(
                InvalidArgument,
                "x-amz-server-side-encryption-aws-kms-key-id header is not valid without x-amz-server-side-encryption: aws:kms"
            )),
            (Some(ServerSideEncryption::AES256), None) => Ok(Some(Protection::S3)),
            (Some(other), None) => Err(s3_error!(
                InvalidArgument,
                "The encryption method specified is not supported: {other:?} (use AES256 or aws:kms)"
            )),
            (None, None) => Ok(None),
        }
    }
}

/// The SSE response headers of an object.
#[derive(Default)]
pub(super) struct SseFields {
    pub sse: Option<ServerSideEncryption>,
    pub kms_key_id: Option<String>,
    pub customer_algorithm: Option<String>,
    pub customer_key_md5: Option<String>,
}

impl SseFields {
    pub fn of(encryption: Option<&Encryption>) -> SseFields {
        let Some(encryption) = encryption else { return SseFields::default() };
        match encryption.mode {
            SseMode::S3 => SseFields { sse: Some(ServerSideEncryption::from_static("AES256")), ..Default::default() },
            SseMode::Kms => SseFields {
                sse: Some(ServerSideEncryption::from_static("aws:kms")),
                kms_key_id: encryption.key_id.clone(),
                ..Default::default()
            },
            SseMode::Customer => SseFields {
                customer_algorithm: Some("AES256".into()),
                customer_key_md5: encryption.customer_key_md5.clone(),
                ..Default::default()
            },
        }
    }
}

pub(super) async fn put_bucket_encryption(
    s3: &MeridianS3,
    req: S3Request<PutBucketEncryptionInput>,
) -> S3Result<S3Response<PutBucketEncryptionOutput>> {
    let input = req.input;
    let rules = input.server_side_encryption_configuration.rules;
    let [rule] = rules.as_slice() else {
        return Err(s3_error!(MalformedXML, "the configuration must hold exactly one rule"));
    };
    let Some(default) = &rule.apply_server_side_encryption_by_default else {
        return Err(s3_error!(MalformedXML, "the rule must have ApplyServerSideEncryptionByDefault"));
    };
    let mode = match default.sse_algorithm.as_str() {
        ServerSideEncryption::AES256 => SseMode::S3,
        ServerSideEncryption::AWS_KMS | ServerSideEncryption::AWS_KMS_DSSE => SseMode::Kms,
        other => return Err(s3_error!(InvalidArgument, "unsupported SSEAlgorithm {other:?} (use AES256 or aws:kms)")),
    };
    if mode == SseMode::S3 && default.kms_master_key_id.is_some() {
        return Err(s3_error!(InvalidArgument, "KMSMasterKeyID applies to SSEAlgorithm aws:kms only"));
    }
    let encryption = BucketEncryption { mode, kms_key_id: default.kms_master_key_id.clone() };
    s3.engine.set_bucket_encryption(&input.bucket, Some(encryption)).await.map_err(s3_error)?;
    Ok(S3Response::new(PutBucketEncryptionOutput::default()))
}

pub(super) async fn get_bucket_encryption(
    s3: &MeridianS3,
    req: S3Request<GetBucketEncryptionInput>,
) -> S3Result<S3Response<GetBucketEncryptionOutput>> {
    let Some(default) = s3.engine.bucket_encryption(&req.input.bucket).await.map_err(s3_error)? else {
        let mut e = S3Error::with_message(
            S3ErrorCode::Custom("ServerSideEncryptionConfigurationNotFoundError".into()),
            "The server side encryption configuration was not found",
        );
        e.set_status_code(http::StatusCode::NOT_FOUND);
        return Err(e);
    };
    let algorithm = match default.mode {
        SseMode::Kms => ServerSideEncryption::AWS_KMS,
        SseMode::S3 | SseMode::Customer => ServerSideEncryption::AES256,
    };
    let rule = ServerSideEncryptionRule {
        apply_server_side_encryption_by_default: Some(ServerSideEncryptionByDefault {
            kms_master_key_id: default.kms_key_id,
            sse_algorithm: ServerSideEncryption::from_static(algorithm),
        }),
        bucket_key_enabled: Some(false),
    };
    Ok(S3Response::new(GetBucketEncryptionOutput {
        server_side_encryption_configuration: Some(ServerSideEncryptionConfiguration { rules: vec![rule] }),
    }))
}

pub(super) async fn delete_bucket_encryption(
    s3: &MeridianS3,
    req: S3Request<DeleteBucketEncryptionInput>,
) -> S3Result<S3Response<DeleteBucketEncryptionOutput>> {
    s3.engine.set_bucket_encryption(&req.input.bucket, None).await.map_err(s3_error)?;
    Ok(S3Response::new(DeleteBucketEncryptionOutput::default()))
}
