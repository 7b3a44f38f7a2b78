//! SigV4 request signing with AWS's own signer, with the settings S3 uses: the payload hash in
//! `x-amz-content-sha256`, no path normalization, and a single percent-encoding pass (paths
//! are encoded once by the client, as S3 expects).

use std::time::SystemTime;

use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings, UriPathNormalizationMode,
    sign,
};
use aws_sigv4::sign::v4;

use crate::error::{Error, Result};

/// An access key and its secret.
#[derive(Clone)]
pub struct Credentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

impl Credentials {
    /// An access key id and secret access key (as `meridian server` prints them).
    pub fn new(access_key_id: impl Into<String>, secret_access_key: impl Into<String>) -> Self {
        Credentials {
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
            session_token: None,
        }
    }

    /// Adds a session token (temporary credentials).
    pub fn with_session_token(mut self, token: impl Into<String>) -> Self {
        self.session_token = Some(token.into());
        self
    }

    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and, if set, `AWS_SESSION_TOKEN`.
    pub fn from_env() -> Result<Self> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
            (Some(key), Some(secret)) => {
                let mut creds = Credentials::new(key, secret);
                creds.session_token = var("AWS_SESSION_TOKEN");
                Ok(creds)
            }
            _ => Err(Error::InvalidInput(
                "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (the key `meridian server` printed)"
                    .into(),
            )),
        }
    }

    /// The access key id.
    pub fn access_key_id(&self) -> &str {
        &self.access_key_id
    }
}

/// Signs requests for one region.
#[derive(Clone, Debug)]
pub(crate) struct Signer {
    identity: aws_credential_types::Credentials,
    region: String,
}

impl Signer {
    pub fn new(credentials: &Credentials, region: &str) -> Self {
        let identity = aws_credential_types::Credentials::new(
            credentials.access_key_id.clone(),
            credentials.secret_access_key.clone(),
            credentials.session_token.clone(),
            None,
            "meridian-client",
        );
        Signer { identity, region: region.to_string() }
    }

    pub fn for_region(&self, region: &str) -> Self {
        Signer { identity: self.identity.clone(), region: region.to_string() }
    }

    /// The headers to add to a request (`authorization`, `x-amz-date`, `x-amz-content-sha256`,
    /// and `x-amz-security-token` with temporary credentials). `headers` must include `host`.
    pub fn sign(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Vec<(&'static str, String)>> {
        let mut settings = SigningSettings::default();
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        let identity = self.identity.clone().into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("s3")
            .time(SystemTime::now())
            .settings(settings)
            .build()
            .map_err(|e| Error::InvalidInput(format!("cannot sign the request: {e}")))?
            .into();
        let signable = SignableRequest::new(method, url, headers.iter().copied(), SignableBody::Bytes(body))
            .map_err(|e| Error::InvalidInput(format!("cannot sign the request: {e}")))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| Error::InvalidInput(format!("cannot sign the request: {e}")))?
            .into_parts();
        let (headers, _) = instructions.into_parts();
        Ok(headers.into_iter().map(|h| (h.name(), h.value().to_string())).collect())
    }
}
