//! What an `https://` etcd endpoint is checked against: the system's CA certificates plus the
//! certificates of an optional CA file (a private CA, or etcd's own self-signed certificate);
//! and the client certificate this node presents, for etcd run with `--client-cert-auth`.

use std::path::{Path, PathBuf};

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{ClientTlsConfig, Identity};

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
    #[error("cannot read the etcd client {what} {path}: {source}")]
    ReadIdentity { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("the etcd client {what} {path} holds no usable PEM {what}{reason}")]
    BadIdentity { what: &'static str, path: PathBuf, reason: String },
}

/// The client certificate (chain) and its private key, PEM files, that this node presents to
/// etcd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientIdentityFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The trusted CAs, loaded once for every https:// endpoint.
pub(crate) struct Trust {
    roots: RootCertStore,
    identity: Option<Identity>,
}

impl Trust {
    /// The system's CA certificates plus every certificate in `ca_file`, and the client
    /// identity, if any.
    pub(crate) fn load(ca_file: Option<&Path>, identity: Option<&ClientIdentityFiles>) -> Result<Trust, TlsError> {
        let mut roots = RootCertStore::empty();
        // A system certificate rustls cannot parse is skipped, as every TLS client does.
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        if let Some(path) = ca_file {
            add_ca_file(&mut roots, path)?;
        }
        let identity = identity.map(load_identity).transpose()?;
        Ok(Trust { roots, identity })
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
        let config = ClientTlsConfig::new().trust_anchors(self.roots.roots.iter().cloned()).timeout(handshake_timeout);
        Ok(match &self.identity {
            Some(identity) => config.identity(identity.clone()),
            None => config,
        })
    }
}

/// Reads the client certificate and key, checking that each holds what it should (tonic would
/// only find out at the first handshake).
fn load_identity(files: &ClientIdentityFiles) -> Result<Identity, TlsError> {
    let read = |what: &'static str, path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::ReadIdentity { what, path: path.to_path_buf(), source })
    };
    let (cert, key) = (read("certificate", &files.cert)?, read("key", &files.key)?);
    let bad = |what: &'static str, path: &Path, reason: String| TlsError::BadIdentity {
        what,
        path: path.to_path_buf(),
        reason: if reason.is_empty() { reason } else { format!(" ({reason})") },
    };
    match CertificateDer::pem_slice_iter(&cert).collect::<Result<Vec<_>, _>>() {
        Ok(certs) if !certs.is_empty() => {}
        Ok(_) => return Err(bad("certificate", &files.cert, String::new())),
        Err(e) => return Err(bad("certificate", &files.cert, e.to_string())),
    }
    PrivateKeyDer::from_pem_slice(&key).map_err(|e| bad("key", &files.key, e.to_string()))?;
    Ok(Identity::from_pem(cert, key))
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
        let trust = Trust { roots: RootCertStore::empty(), identity: None };
        let err = trust.config("https://etcd:2379", std::time::Duration::from_secs(1)).unwrap_err();
        assert!(matches!(&err, TlsError::NoTrust { endpoint } if endpoint == "https://etcd:2379"), "{err}");
        assert!(err.to_string().contains("--ca-file"), "{err}");
    }
}
