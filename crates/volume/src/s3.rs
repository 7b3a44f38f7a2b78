//! [`ObjectStore`] over the real S3 protocol with `aws-sdk-s3`: path-style addressing, a custom
//! endpoint and static credentials, so it runs against Meridian, AWS, R2 or MinIO alike. An
//! optional CA file adds trusted certificates for an `https://` endpoint.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use meridian_common::errors::chain;
use meridian_s3_client::S3Endpoint;

use crate::error::StoreError;
use crate::store::{Fetched, Listed, ObjectStore, Parts, PutCondition};

/// Where the bucket is and how to sign for it.
#[derive(Debug, Clone)]
pub struct S3Config {
    /// Full endpoint URL, e.g. `http://127.0.0.1:9000`. `None` means AWS's default endpoint.
    pub endpoint: Option<String>,
    pub region: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
    /// PEM CA certificates trusted besides the system's roots. `None` keeps the SDK's default
    /// HTTP client.
    pub ca_file: Option<PathBuf>,
}

/// An S3 bucket.
pub struct S3Store {
    client: Client,
    bucket: String,
}

impl S3Store {
    /// The body of a ranged GET of `len` (> 0) bytes at `start` (S3 stops at the object's end).
    async fn ranged_get(&self, key: &str, start: u64, len: u64) -> Result<ByteStream, StoreError> {
        let range = format!("bytes={}-{}", start, start + len - 1);
        let get = self.client.get_object().bucket(&self.bucket).key(key).range(range);
        Ok(get.send().await.map_err(|e| map_err(key, e))?.body)
    }

    /// A ranged GET of at most `len` bytes at `start`.
    async fn range(&self, key: &str, start: u64, len: u64) -> Result<Bytes, StoreError> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        read_body(key, self.ranged_get(key, start, len).await?).await
    }

    /// A ranged GET of exactly `len` bytes at `start`, kept as the body's chunks (no copy).
    async fn range_parts(&self, key: &str, start: u64, len: u64) -> Result<Parts, StoreError> {
        let mut parts = Parts::default();
        if len == 0 {
            return Ok(parts);
        }
        let mut body = self.ranged_get(key, start, len).await?;
        while let Some(chunk) = body.next().await {
            parts.push(chunk.map_err(|e| StoreError::Backend { key: key.to_string(), message: chain(&e) })?);
        }
        if parts.len() as u64 != len {
            return Err(StoreError::Backend {
                key: key.to_string(),
                message: format!("asked for {len} bytes at {start}, got {}", parts.len()),
            });
        }
        Ok(parts)
    }

    /// Fails only if `ca_file` is set and unreadable or holds no usable CA certificate.
    pub fn new(cfg: &S3Config) -> Result<Self, StoreError> {
        let endpoint = S3Endpoint {
            endpoint: cfg.endpoint.clone(),
            region: cfg.region.clone(),
            access_key: cfg.access_key.clone(),
            secret_key: cfg.secret_key.clone(),
            ca_file: cfg.ca_file.clone(),
        };
        let client = meridian_s3_client::client(&endpoint, "meridian-volume")
            .map_err(|e| StoreError::CaFile { path: e.path, reason: e.reason })?;
        Ok(Self { client, bucket: cfg.bucket.clone() })
    }
}

impl S3Store {
    /// Creates the bucket; an existing bucket owned by us is fine.
    pub async fn create_bucket(&self) -> Result<(), StoreError> {
        match self.client.create_bucket().bucket(&self.bucket).send().await {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.code(), Some("BucketAlreadyOwnedByYou")) => Ok(()),
            Err(e) => Err(map_err(&self.bucket, e)),
        }
    }
}

/// Maps an SDK error to the store's error kinds, keeping the service's own message.
fn map_err<E>(key: &str, err: SdkError<E, HttpResponse>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let status = err.raw_response().map(|r| r.status().as_u16());
    let code = err.code().map(str::to_string);
    match (status, code.as_deref()) {
        (_, Some("NoSuchBucket")) => StoreError::Backend {
            key: key.to_string(),
            message: "the bucket does not exist (create it, e.g. with `meridian volume create --create-bucket`)".into(),
        },
        (Some(412), _) | (_, Some("PreconditionFailed")) => StoreError::PreconditionFailed(key.to_string()),
        (Some(404), _) | (_, Some("NoSuchKey")) | (_, Some("NotFound")) => StoreError::NotFound(key.to_string()),
        _ => StoreError::Backend {
            key: key.to_string(),
            message: format!(
                "{}{}",
                code.map(|c| format!("{c}: ")).unwrap_or_default(),
                err.message().map(str::to_string).unwrap_or_else(|| chain(&err))
            ),
        },
    }
}

/// The whole body of a GET.
async fn read_body(key: &str, body: ByteStream) -> Result<Bytes, StoreError> {
    match body.collect().await {
        Ok(data) => Ok(data.into_bytes()),
        Err(e) => Err(StoreError::Backend { key: key.to_string(), message: chain(&e) }),
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn put(&self, key: &str, body: Bytes, cond: PutCondition) -> Result<String, StoreError> {
        let mut req = self.client.put_object().bucket(&self.bucket).key(key).body(ByteStream::from(body));
        req = match cond {
            PutCondition::None => req,
            PutCondition::IfAbsent => req.if_none_match("*"),
            PutCondition::IfMatch(etag) => req.if_match(etag),
        };
        let out = req.send().await.map_err(|e| map_err(key, e))?;
        Ok(out.e_tag().unwrap_or_default().to_string())
    }

    async fn put_file(&self, key: &str, path: &Path) -> Result<String, StoreError> {
        let body =
            ByteStream::from_path(path).await.map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))?;
        let out = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(body)
            .send()
            .await
            .map_err(|e| map_err(key, e))?;
        Ok(out.e_tag().unwrap_or_default().to_string())
    }

    async fn get(&self, key: &str) -> Result<Fetched, StoreError> {
        let out = self.client.get_object().bucket(&self.bucket).key(key).send().await.map_err(|e| map_err(key, e))?;
        let etag = out.e_tag().unwrap_or_default().to_string();
        let data = read_body(key, out.body).await?;
        Ok(Fetched { data, etag })
    }

    async fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Bytes, StoreError> {
        let data = self.range(key, start, len).await?;
        if data.len() as u64 != len {
            return Err(StoreError::Backend {
                key: key.to_string(),
                message: format!("asked for {len} bytes at {start}, got {}", data.len()),
            });
        }
        Ok(data)
    }

    async fn get_range_parts(&self, key: &str, start: u64, len: u64) -> Result<Parts, StoreError> {
        self.range_parts(key, start, len).await
    }

    async fn get_range_upto(&self, key: &str, start: u64, len: u64) -> Result<Bytes, StoreError> {
        // S3 answers a range running past the end with the bytes up to it.
        self.range(key, start, len).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Listed>, StoreError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let resp = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| map_err(prefix, e))?;
            for obj in resp.contents() {
                if let Some(key) = obj.key() {
                    out.push(Listed {
                        key: key.to_string(),
                        size: u64::try_from(obj.size().unwrap_or(0)).unwrap_or(0),
                    });
                }
            }
            match resp.next_continuation_token() {
                Some(t) if resp.is_truncated().unwrap_or(false) => token = Some(t.to_string()),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.client.delete_object().bucket(&self.bucket).key(key).send().await.map_err(|e| map_err(key, e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(ca_file: &Path) -> S3Config {
        S3Config {
            endpoint: Some("https://127.0.0.1:1".into()),
            region: "us-east-1".into(),
            bucket: "b".into(),
            access_key: "k".into(),
            secret_key: "s".into(),
            ca_file: Some(ca_file.to_path_buf()),
        }
    }

    /// The error for `pem` as the CA file's contents (`None`: no such file).
    fn ca_error(pem: Option<&str>) -> String {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("ca.pem");
        if let Some(pem) = pem {
            std::fs::write(&path, pem).expect("write");
        }
        match S3Store::new(&config(&path)) {
            Ok(_) => panic!("{pem:?} was accepted as a CA file"),
            Err(e) => {
                assert!(matches!(e, StoreError::CaFile { .. }), "{e}");
                let text = e.to_string();
                assert!(text.contains(&path.display().to_string()), "the file is not named: {text}");
                text
            }
        }
    }

    #[test]
    fn bad_ca_files_are_errors_naming_the_file() {
        assert!(ca_error(None).contains("No such file"));
        assert!(ca_error(Some("")).contains("no PEM certificate"));
        assert!(ca_error(Some("just text\n")).contains("no PEM certificate"));
        // Valid PEM around bytes that are no certificate: the SDK would panic on it when connecting.
        let bad_der = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(ca_error(Some(bad_der)).contains("not a usable CA certificate"));
    }
}
