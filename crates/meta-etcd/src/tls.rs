//! What an `https://` etcd endpoint is checked against: the system's CA certificates plus the
//! certificates of an optional CA file (a private CA, or etcd's own self-signed certificate).

use std::path::{Path, PathBuf};

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tonic::transport::ClientTlsConfig;

/// Why TLS to etcd cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the CA file {path}: {source}")]
    ReadCa { path: PathBuf, source: std::io::Error },
    #[error("the CA file {path} holds no PEM certificate ({reason})")]
    NoCertificate { path: PathBuf, reason: String },
    #[error("the CA file {path} holds a certificate that cannot be used as a CA: {reason}")]
    BadCertificate { path: PathBuf, reason: String },
    #[error(
        "etcd endpoint {endpoint} uses https:// but no CA is trusted to check its certificate: \
         the system has no CA certificates and no CA file was given (--ca-file)"
    )]
    NoTrust { endpoint: String },
}

/// The trusted CAs, loaded once for every https:// endpoint.
pub(crate) struct Trust {
    roots: RootCertStore,
}

impl Trust {
    /// The system's CA certificates plus every certificate in `ca_file`.
    pub(crate) fn load(ca_file: Option<&Path>) -> Result<Trust, TlsError> {
        let mut roots = RootCertStore::empty();
        // A system certificate rustls cannot parse is skipped, as every TLS client does.
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        if let Some(path) = ca_file {
            add_ca_file(&mut roots, path)?;
        }
        Ok(Trust { roots })
    }

    /// tonic's TLS settings for `endpoint`; fails when nothing is trusted.
    pub(crate) fn config(
        &self,
        endpoint: &str,
        handshake_timeout: std::time::Duration,
    ) -> Result<ClientTlsConfig, TlsError> {
        if self.roots.is_empty() {
            return Err(TlsError::NoTrust { endpoint: endpoint.to_string() });
        }
        Ok(ClientTlsConfig::new().trust_anchors(self.roots.roots.iter().cloned()).timeout(handshake_timeout))
    }
}

/// Every certificate of a PEM file, each checked to be usable as a CA.
fn add_ca_file(roots: &mut RootCertStore, path: &Path) -> Result<(), TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::ReadCa { path: path.to_path_buf(), source })?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::NoCertificate { path: path.to_path_buf(), reason: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: path.to_path_buf(), reason: "none found".into() });
    }
    for cert in certs {
        roots.add(cert).map_err(|e| TlsError::BadCertificate { path: path.to_path_buf(), reason: e.to_string() })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_with_no_trusted_ca_is_refused() {
        let trust = Trust { roots: RootCertStore::empty() };
        let err = trust.config("https://etcd:2379", std::time::Duration::from_secs(1)).unwrap_err();
        assert!(matches!(&err, TlsError::NoTrust { endpoint } if endpoint == "https://etcd:2379"), "{err}");
        assert!(err.to_string().contains("--ca-file"), "{err}");
    }
}
