//! Taking in a request body: hashing it in one pass, keeping it in memory when small enough to
//! store inline, otherwise streaming it into a blob, and verifying what the client claimed
//! (length, Content-MD5, `x-amz-checksum-*`) before anything becomes durable.

use std::pin::Pin;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use meridian_blob::{BlobId, BlobStore, BlobWriter};

use crate::checksum::{ChecksumAlgorithm, ChecksumType, Hasher, StoredChecksum, decode_checksum};
use crate::error::{EngineError, EngineResult};

pub type BodyError = Box<dyn std::error::Error + Send + Sync>;
/// A request or response body: a stream of byte chunks.
pub type Body = Pin<Box<dyn Stream<Item = Result<Bytes, BodyError>> + Send>>;

/// Wraps bytes already in memory as a [`Body`].
pub fn body_from_bytes(data: impl Into<Bytes>) -> Body {
    let data: Bytes = data.into();
    Box::pin(futures::stream::once(async move { Ok(data) }))
}

/// Reads a trailer value once the body has been consumed.
pub type TrailerReader = Box<dyn FnOnce() -> Option<String> + Send>;

/// What the client said about the body's integrity.
#[derive(Default)]
pub struct Integrity {
    /// The additional checksum to compute and store.
    pub algorithm: Option<ChecksumAlgorithm>,
    /// Its expected base64 value, when sent as a header.
    pub expected: Option<String>,
    /// Its expected value, when sent as a trailer after the body.
    pub trailer: Option<TrailerReader>,
    /// Content-MD5, base64.
    pub content_md5: Option<String>,
    /// The length the client declared.
    pub content_length: Option<u64>,
}

impl std::fmt::Debug for Integrity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Integrity")
            .field("algorithm", &self.algorithm)
            .field("expected", &self.expected)
            .field("trailer", &self.trailer.is_some())
            .field("content_md5", &self.content_md5)
            .field("content_length", &self.content_length)
            .finish()
    }
}

pub enum IngestedData {
    Inline(Bytes),
    Blob(BlobId),
}

pub struct Ingested {
    pub size: u64,
    pub md5: [u8; 16],
    pub checksum: Option<StoredChecksum>,
    pub data: IngestedData,
    /// CRC32C per chunk of the bytes (for blobs; empty when inline).
    pub digests: Vec<u32>,
}

impl Ingested {
    pub fn etag(&self) -> String {
        hex::encode(self.md5)
    }
}

pub struct IngestLimits {
    /// Bodies up to this size stay in memory for inline storage (0: always a blob).
    pub inline_max: usize,
    /// Larger bodies are refused with `EntityTooLarge`.
    pub max_size: u64,
    /// The id of the blob to write (a multi-region write names it before the bytes arrive, so
    /// its copies in other regions carry the same id); `None`: a fresh one.
    pub blob_id: Option<BlobId>,
}

enum Sink {
    Memory(BytesMut),
    Blob(BlobWriter),
}

/// Consumes `body`. On any error nothing durable is left behind.
pub async fn ingest(
    blobs: &BlobStore,
    mut body: Body,
    integrity: Integrity,
    limits: IngestLimits,
) -> EngineResult<Ingested> {
    if let Some(len) = integrity.content_length
        && len > limits.max_size
    {
        return Err(EngineError::EntityTooLarge { max: limits.max_size });
    }
    let mut hasher = Hasher::new(integrity.algorithm);
    let mut digester = meridian_blob::ChunkHasher::new(crate::CHUNK_SIZE);
    let mut size: u64 = 0;
    let mut sink = Sink::Memory(BytesMut::new());
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(EngineError::Body)?;
        size += chunk.len() as u64;
        if size > limits.max_size {
            return Err(EngineError::EntityTooLarge { max: limits.max_size });
        }
        hasher.update(&chunk);
        digester.update(&chunk);
        sink = match sink {
            Sink::Memory(mut buf) if buf.len() + chunk.len() <= limits.inline_max => {
                buf.extend_from_slice(&chunk);
                Sink::Memory(buf)
            }
            Sink::Memory(buf) => {
                let mut writer = match limits.blob_id {
                    Some(id) => blobs.create_named(id).await?,
                    None => blobs.create().await?,
                };
                if !buf.is_empty() {
                    writer.write(buf.freeze()).await?;
                }
                writer.write(chunk).await?;
                Sink::Blob(writer)
            }
            Sink::Blob(mut writer) => {
                writer.write(chunk).await?;
                Sink::Blob(writer)
            }
        };
    }
    if let Some(len) = integrity.content_length
        && len != size
    {
        return Err(EngineError::IncompleteBody);
    }
    let (md5, extra) = hasher.finish();
    verify_md5(&integrity, &md5)?;
    let checksum = verify_checksum(integrity, extra)?;
    let (data, digests) = match sink {
        Sink::Memory(buf) => (IngestedData::Inline(buf.freeze()), Vec::new()),
        Sink::Blob(writer) => (IngestedData::Blob(writer.finish().await?), digester.finish()),
    };
    Ok(Ingested { size, md5, checksum, data, digests })
}

fn verify_md5(integrity: &Integrity, md5: &[u8; 16]) -> EngineResult<()> {
    let Some(claimed) = &integrity.content_md5 else {
        return Ok(());
    };
    let claimed = BASE64
        .decode(claimed.trim())
        .map_err(|_| EngineError::InvalidArgument("the Content-MD5 you specified is not valid base64".into()))?;
    if claimed.len() != 16 {
        return Err(EngineError::InvalidArgument("the Content-MD5 you specified is not 16 bytes".into()));
    }
    if claimed != md5 {
        return Err(EngineError::BadDigest);
    }
    Ok(())
}

fn verify_checksum(
    integrity: Integrity,
    computed: Option<(ChecksumAlgorithm, Vec<u8>)>,
) -> EngineResult<Option<StoredChecksum>> {
    let Some((algorithm, raw)) = computed else {
        return Ok(None);
    };
    let expected = match (integrity.expected, integrity.trailer) {
        (Some(value), _) => Some(value),
        (None, Some(trailer)) => Some(trailer().ok_or_else(|| {
            EngineError::InvalidArgument(format!(
                "the request declared an x-amz-checksum-{} trailer but did not send it",
                algorithm.name().to_ascii_lowercase()
            ))
        })?),
        (None, None) => None,
    };
    if let Some(expected) = expected
        && decode_checksum(algorithm, &expected)? != raw
    {
        return Err(EngineError::ChecksumMismatch { algorithm: algorithm.name() });
    }
    Ok(Some(StoredChecksum { algorithm, raw, kind: ChecksumType::FullObject, parts: None }))
}
