//! TLS for listeners and clients, with rustls.
//!
//! A listener's certificate and key are PEM files; they are read again when either file changes
//! (checked every [`RELOAD_CHECK`]) or when the process gets SIGHUP, so a renewed certificate
//! takes effect without a restart. A reload that fails (a half-written file, a key that does not
//! match) keeps the certificate in use and logs why. HTTP/2 is offered by ALPN.
//!
//! Clients trust the system's roots plus an optional CA file (for a private CA or self-signed
//! node certificates).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// How often certificate files are checked for changes.
pub const RELOAD_CHECK: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} holds no PEM certificate ({reason})")]
    NoCertificate { path: PathBuf, reason: String },
    #[error("{path} holds no PEM private key ({reason})")]
    NoKey { path: PathBuf, reason: String },
    #[error("the key in {key} cannot be used: {reason}")]
    BadKey { key: PathBuf, reason: String },
    #[error("the key in {key} does not belong to the certificate in {cert}")]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("TLS setup failed: {0}")]
    Setup(String),
}

/// Where a listener's certificate chain and private key live (PEM).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A listener's TLS: the acceptor, and the certificate it serves (reloadable).
#[derive(Clone)]
pub struct ServerTls {
    acceptor: tokio_rustls::TlsAcceptor,
    certs: Arc<ReloadingCert>,
}

impl ServerTls {
    /// Loads the certificate and key; fails if either is unreadable or they do not match.
    pub fn load(files: TlsFiles) -> Result<ServerTls, TlsError> {
        let certs = Arc::new(ReloadingCert::load(files)?);
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Setup(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(certs.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(ServerTls { acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)), certs })
    }

    pub(crate) fn acceptor(&self) -> &tokio_rustls::TlsAcceptor {
        &self.acceptor
    }

    /// Reads the files again if they changed since the last load; `Ok(true)` when the served
    /// certificate was replaced.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        self.certs.reload_if_changed()
    }

    /// Watches the files (and SIGHUP) for as long as the returned task runs.
    pub fn spawn_reloader(&self) -> tokio::task::JoinHandle<()> {
        let tls = self.clone();
        tokio::spawn(async move {
            let mut hangup = hangup_signal();
            let mut tick = tokio::time::interval(RELOAD_CHECK);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = next_hangup(&mut hangup) => tls.certs.force_next_check(),
                }
                match tls.reload_if_changed() {
                    Ok(true) => tracing::info!(cert = %tls.certs.files.cert.display(), "TLS certificate reloaded"),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "TLS certificate not reloaded; the previous one stays in use"),
                }
            }
        })
    }
}

#[cfg(unix)]
fn hangup_signal() -> Option<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
}

#[cfg(not(unix))]
fn hangup_signal() -> Option<()> {
    None
}

#[cfg(unix)]
async fn next_hangup(signal: &mut Option<tokio::signal::unix::Signal>) {
    match signal {
        Some(signal) => {
            signal.recv().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn next_hangup(_: &mut Option<()>) {
    std::future::pending().await
}

/// Modification time and length of both files: a change in either means "read them again".
type Stamp = Option<(SystemTime, u64, SystemTime, u64)>;

fn stamp(files: &TlsFiles) -> Stamp {
    let cert = std::fs::metadata(&files.cert).ok()?;
    let key = std::fs::metadata(&files.key).ok()?;
    Some((cert.modified().ok()?, cert.len(), key.modified().ok()?, key.len()))
}

#[derive(Debug)]
struct ReloadingCert {
    files: TlsFiles,
    current: RwLock<(Arc<CertifiedKey>, Stamp)>,
}

impl ReloadingCert {
    fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let stamp = stamp(&files);
        let key = certified_key(&files)?;
        Ok(ReloadingCert { files, current: RwLock::new((key, stamp)) })
    }

    fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = stamp(&self.files);
        let seen = self.current.read().map(|c| c.1).unwrap_or(None);
        if now.is_some() && now == seen {
            return Ok(false);
        }
        let key = certified_key(&self.files)?;
        if let Ok(mut current) = self.current.write() {
            *current = (key, now);
        }
        Ok(true)
    }

    /// Makes the next check read the files even if their stamps look unchanged (SIGHUP).
    fn force_next_check(&self) {
        if let Ok(mut current) = self.current.write() {
            current.1 = None;
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| Arc::clone(&c.0))
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_path_buf(), source })
}

/// Every certificate in a PEM file, failing when there is none.
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::NoCertificate { path: path.to_path_buf(), reason: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: path.to_path_buf(), reason: "the file is empty".into() });
    }
    Ok(certs)
}

fn certified_key(files: &TlsFiles) -> Result<Arc<CertifiedKey>, TlsError> {
    let certs = load_certificates(&files.cert)?;
    let pem = read(&files.key)?;
    let key = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| TlsError::NoKey { path: files.key.clone(), reason: e.to_string() })?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::BadKey { key: files.key.clone(), reason: e.to_string() })?;
    let certified = CertifiedKey::new(certs, signing);
    certified.keys_match().map_err(|_| TlsError::Mismatch { cert: files.cert.clone(), key: files.key.clone() })?;
    Ok(Arc::new(certified))
}

/// What a client trusts: the system's roots and, optionally, the certificates of a CA file.
/// Cheap to clone.
#[derive(Clone, Debug)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
}

impl ClientTls {
    /// The system's roots plus every certificate in `ca_file`.
    pub fn new(ca_file: Option<&Path>) -> Result<ClientTls, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            // A system root rustls cannot parse is skipped, as every TLS client does.
            let _ = roots.add(cert);
        }
        if let Some(path) = ca_file {
            for cert in load_certificates(path)? {
                roots.add(cert).map_err(|e| TlsError::NoCertificate {
                    path: path.to_path_buf(),
                    reason: format!("not a usable CA certificate: {e}"),
                })?;
            }
        }
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Setup(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(ClientTls { config: Arc::new(config) })
    }

    /// Like [`ClientTls::new`], with the CA file named by `MERIDIAN_CA_FILE` when set.
    pub fn from_env() -> Result<ClientTls, TlsError> {
        let ca = std::env::var_os("MERIDIAN_CA_FILE").filter(|v| !v.is_empty()).map(PathBuf::from);
        ClientTls::new(ca.as_deref())
    }

    /// The rustls configuration (no ALPN: connectors set what they speak).
    pub fn config(&self) -> Arc<rustls::ClientConfig> {
        Arc::clone(&self.config)
    }
}
