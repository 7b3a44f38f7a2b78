//! What a place that keeps blobs must do. [`crate::BlobStore`] is the one type the rest of
//! Meridian sees; it holds one backend: the local disk ([`crate::disk::DiskBackend`]) or an
//! S3-compatible bucket that several nodes of a region may share ([`crate::s3::S3Backend`]).
//!
//! Every backend keeps the same promise: the bytes of a blob become visible under its id only
//! when its writer's `finish` returns, complete and durable; a write that never finishes leaves
//! nothing visible, and whatever it left behind is removed by
//! [`BlobBackend::collect_stale_writes`]. Names in the backend derive from blob ids only.

use std::pin::Pin;
use std::time::SystemTime;

use bytes::Bytes;
use futures::Stream;

use crate::{BlobId, BlobResult};

/// The bytes of a read, in order.
pub type BlobStream = Pin<Box<dyn Stream<Item = BlobResult<Bytes>> + Send>>;

#[async_trait::async_trait]
pub trait BlobBackend: Send + Sync {
    /// Where the blobs are, for logs and errors.
    fn describe(&self) -> String;

    /// The identity of a store several nodes share (every node opening the same bucket and
    /// prefix gets the same one); `None` for a store only this node reads.
    fn shared_id(&self) -> Option<&str> {
        None
    }

    /// Starts writing the blob `id`.
    async fn create(&self, id: BlobId) -> BlobResult<Box<dyn BackendWriter>>;

    /// Checks that blobs can be written now, the way a write does.
    async fn probe_writable(&self) -> BlobResult<()>;

    /// Size of a blob in bytes.
    async fn size(&self, id: BlobId) -> BlobResult<u64>;

    /// `len` bytes of a blob from `offset`. The blob is opened (or its first bytes received)
    /// before this returns, so a later delete cannot cut a started stream short on disk.
    async fn read(&self, id: BlobId, offset: u64, len: u64) -> BlobResult<BlobStream>;

    /// A whole blob in memory (for small blobs).
    async fn read_all(&self, id: BlobId) -> BlobResult<Bytes>;

    /// Makes `copy` a blob with the bytes of `id`, without moving them through this node when
    /// the backend can (hard link, server-side copy).
    async fn duplicate(&self, id: BlobId, copy: BlobId) -> BlobResult<()>;

    /// Deletes a blob; deleting a missing blob is not an error.
    async fn delete(&self, id: BlobId) -> BlobResult<()>;

    /// Every blob last written before `older_than`, with its size.
    async fn list_older_than(&self, older_than: SystemTime) -> BlobResult<Vec<(BlobId, u64)>>;

    /// Removes what unfinished writes left behind (temporary files, incomplete multipart
    /// uploads) once they are older than `older_than` — as far as the backend can tell: a
    /// bucket's uploads must also have been seen unfinished by this backend since then.
    /// Returns how many were removed.
    async fn collect_stale_writes(&self, older_than: SystemTime) -> BlobResult<usize>;
}

/// One blob being written. Dropping it without `finish` must leave nothing visible (and should
/// remove what it wrote, best effort).
#[async_trait::async_trait]
pub trait BackendWriter: Send {
    async fn write(&mut self, data: Bytes) -> BlobResult<()>;

    /// Makes the blob complete and durable under its id.
    async fn finish(self: Box<Self>) -> BlobResult<()>;
}
