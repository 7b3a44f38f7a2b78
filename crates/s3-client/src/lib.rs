//! An `aws-sdk-s3` client for any S3 service — AWS, R2, Ceph RGW, MinIO, SeaweedFS, moto or
//! another Meridian: path-style addressing, an optional custom endpoint, static credentials and
//! an optional CA file trusted besides the system's roots for an `https://` endpoint. Used by
//! volumes (`crates/volume`), by the blob store's S3 backend (`crates/blob`) and by shadow
//! buckets' sources (`crates/engine/src/shadow.rs`).

use std::path::{Path, PathBuf};

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_smithy_http_client::tls::rustls_provider::CryptoMode;
use aws_smithy_http_client::tls::{Provider, TlsContext, TrustStore};
use meridian_common::errors::chain;

pub mod testing;

/// A request body streamed from `chunks` (its length must be given to the request, as
/// `content_length`): for callers that hold a stream of bytes, not an HTTP body.
pub fn streamed_body<S, E>(chunks: S) -> aws_sdk_s3::primitives::ByteStream
where
    S: futures::Stream<Item = Result<bytes::Bytes, E>> + Send + Sync + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
{
    use futures::StreamExt;
    let frames = chunks.map(|chunk| chunk.map(http_body::Frame::data));
    aws_sdk_s3::primitives::ByteStream::from_body_1_x(http_body_util::StreamBody::new(frames))
}

/// Where an S3 service is and how to sign for it.
#[derive(Debug, Clone)]
pub struct S3Endpoint {
    /// Full endpoint URL, e.g. `http://127.0.0.1:9000`. `None` means AWS's default endpoint.
    pub endpoint: Option<String>,
    pub region: String,
    pub access_key: String,
    pub secret_key: String,
    /// PEM CA certificates trusted besides the system's roots. `None` keeps the SDK's default
    /// HTTP client.
    pub ca_file: Option<PathBuf>,
}

/// The CA file given for an `https://` endpoint is unreadable or holds no usable certificate.
#[derive(Debug, thiserror::Error)]
#[error("cannot use the CA file {}: {reason}", path.display())]
pub struct CaFileError {
    pub path: PathBuf,
    pub reason: String,
}

/// A client for `cfg`; `name` labels its credentials (seen in SDK logs). Fails only if
/// `ca_file` is set and unreadable or holds no usable CA certificate.
pub fn client(cfg: &S3Endpoint, name: &'static str) -> Result<Client, CaFileError> {
    let creds = Credentials::new(cfg.access_key.clone(), cfg.secret_key.clone(), None, None, name);
    let mut builder = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(cfg.region.clone()))
        .credentials_provider(creds)
        .force_path_style(true)
        // Integrity is covered by the transport and by Meridian's own checks; extra checksums
        // cost CPU on every request and not every S3 clone accepts them.
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
    if let Some(ep) = &cfg.endpoint {
        builder = builder.endpoint_url(ep.clone());
    }
    if let Some(path) = &cfg.ca_file {
        builder = builder.http_client(https_client(path)?);
    }
    Ok(Client::from_conf(builder.build()))
}

/// The SDK's HTTPS client (rustls with aws-lc, as by default) trusting the system's roots plus
/// the certificates in `ca_file`.
fn https_client(ca_file: &Path) -> Result<aws_sdk_s3::config::SharedHttpClient, CaFileError> {
    let bad = |reason: String| CaFileError { path: ca_file.to_path_buf(), reason };
    let pem = std::fs::read(ca_file).map_err(|e| bad(e.to_string()))?;
    check_ca_pem(&pem).map_err(bad)?;
    let trust = TrustStore::default().with_pem_certificate(pem);
    let tls = TlsContext::builder().with_trust_store(trust).build().map_err(|e| bad(chain(&e)))?;
    Ok(aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::AwsLc))
        .tls_context(tls)
        .build_https())
}

/// The SDK parses the PEM only when it first connects and panics if that fails, so the same
/// parse is done here first: at least one certificate, each usable as a trust anchor.
fn check_ca_pem(pem: &[u8]) -> Result<(), String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let certs = CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no PEM certificate in it".into());
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| format!("not a usable CA certificate: {e}"))?;
    }
    Ok(())
}
