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
use crate::crypt::{DataKey, Sealer};
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

impl Integrity {
    /// Whether the client sent a value to check the body against (Content-MD5, or a checksum
    /// as a header or trailer) or asked for one to be computed.
    pub fn declared(&self) -> bool {
        self.content_md5.is_some() || self.algorithm.is_some() || self.expected.is_some() || self.trailer.is_some()
    }
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
    /// Plaintext bytes.
    pub size: u64,
    /// Bytes stored (sealed when encrypted).
    pub stored_size: u64,
    pub md5: [u8; 16],
    pub checksum: Option<StoredChecksum>,
    pub data: IngestedData,
    /// CRC32C per chunk of the stored bytes (for blobs; empty when inline).
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
    /// Seal the bytes under this data key before they are stored (or sent anywhere).
    pub sealing: Option<DataKey>,
}

impl IngestLimits {
    /// Every byte to a blob, no size limit (copies of existing objects).
    pub fn to_blob(sealing: Option<DataKey>) -> IngestLimits {
        IngestLimits { inline_max: 0, max_size: u64::MAX, blob_id: None, sealing }
    }
}

/// Gets every stored chunk too, as it is stored (a multi-region write's copies).
#[async_trait::async_trait]
pub(crate) trait Tee: Send {
    async fn send(&mut self, chunk: &Bytes) -> Result<(), BodyError>;
}

enum Sink {
    Memory(BytesMut),
    Blob(BlobWriter),
}

impl Sink {
    async fn store(self, blobs: &BlobStore, limits: &IngestLimits, chunk: Bytes) -> EngineResult<Sink> {
        Ok(match self {
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
        })
    }
}

/// Where plaintext goes: straight to the sink, or sealed first.
struct Store<'a, 't> {
    blobs: &'a BlobStore,
    sink: Sink,
    sealer: Option<Sealer>,
    digester: meridian_blob::ChunkHasher,
    stored: u64,
    tee: Option<&'t mut (dyn Tee + 'a)>,
    sealed: Vec<Bytes>,
}

impl Store<'_, '_> {
    async fn take(&mut self, limits: &IngestLimits, chunk: Bytes) -> EngineResult<()> {
        match &mut self.sealer {
            None => self.put(limits, chunk).await,
            Some(sealer) => {
                sealer.push(&chunk, &mut self.sealed);
                for sealed in std::mem::take(&mut self.sealed) {
                    self.put(limits, sealed).await?;
                }
                Ok(())
            }
        }
    }

    async fn put(&mut self, limits: &IngestLimits, chunk: Bytes) -> EngineResult<()> {
        if let Some(tee) = &mut self.tee {
            tee.send(&chunk).await.map_err(EngineError::Body)?;
        }
        self.stored += chunk.len() as u64;
        self.digester.update(&chunk);
        let sink = std::mem::replace(&mut self.sink, Sink::Memory(BytesMut::new()));
        self.sink = sink.store(self.blobs, limits, chunk).await?;
        Ok(())
    }

    async fn finish(mut self, limits: &IngestLimits) -> EngineResult<(IngestedData, Vec<u32>, u64)> {
        if let Some(last) = self.sealer.take().and_then(Sealer::finish) {
            self.put(limits, last).await?;
        }
        Ok(match self.sink {
            Sink::Memory(buf) => (IngestedData::Inline(buf.freeze()), Vec::new(), self.stored),
            Sink::Blob(writer) => (IngestedData::Blob(writer.finish().await?), self.digester.finish(), self.stored),
        })
    }
}

/// Consumes `body`. On any error nothing durable is left behind.
pub async fn ingest(
    blobs: &BlobStore,
    body: Body,
    integrity: Integrity,
    limits: IngestLimits,
) -> EngineResult<Ingested> {
    ingest_teed(blobs, body, integrity, limits, None).await
}

/// [`ingest`], handing every stored chunk to `tee` as well.
pub(crate) async fn ingest_teed<'a>(
    blobs: &'a BlobStore,
    mut body: Body,
    integrity: Integrity,
    limits: IngestLimits,
    tee: Option<&'a mut (dyn Tee + 'a)>,
) -> EngineResult<Ingested> {
    if let Some(len) = integrity.content_length
        && len > limits.max_size
    {
        return Err(EngineError::EntityTooLarge { max: limits.max_size });
    }
    let mut hasher = Hasher::new(integrity.algorithm);
    let mut size: u64 = 0;
    let mut store = Store {
        blobs,
        sink: Sink::Memory(BytesMut::new()),
        sealer: limits.sealing.clone().map(Sealer::new),
        digester: meridian_blob::ChunkHasher::new(crate::CHUNK_SIZE),
        stored: 0,
        tee,
        sealed: Vec::new(),
    };
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(EngineError::Body)?;
        size += chunk.len() as u64;
        if size > limits.max_size {
            return Err(EngineError::EntityTooLarge { max: limits.max_size });
        }
        hasher.update(&chunk);
        store.take(&limits, chunk).await?;
    }
    if let Some(len) = integrity.content_length
        && len != size
    {
        return Err(EngineError::IncompleteBody);
    }
    let (md5, extra) = hasher.finish();
    verify_md5(&integrity, &md5)?;
    let checksum = verify_checksum(integrity, extra)?;
    let (data, digests, stored_size) = store.finish(&limits).await?;
    Ok(Ingested { size, stored_size, md5, checksum, data, digests })
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
