//! Secret-key lookup for SigV4 verification.

use std::collections::HashMap;

use s3s::auth::{S3Auth, SecretKey};
use s3s::{S3Error, S3ErrorCode, S3Result};

/// A fixed set of access keys.
#[derive(Clone, Default)]
pub struct StaticKeys {
    keys: HashMap<String, SecretKey>,
}

impl StaticKeys {
    pub fn new() -> Self {
        StaticKeys::default()
    }

    pub fn with_key(mut self, access_key: impl Into<String>, secret: impl Into<String>) -> Self {
        self.keys.insert(access_key.into(), SecretKey::from(secret.into()));
        self
    }
}

#[async_trait::async_trait]
impl S3Auth for StaticKeys {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        self.keys.get(access_key).cloned().ok_or_else(|| {
            S3Error::with_message(
                S3ErrorCode::InvalidAccessKeyId,
                "The AWS Access Key Id you provided does not exist in our records.",
            )
        })
    }
}
