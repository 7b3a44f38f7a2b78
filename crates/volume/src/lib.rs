//! Meridian volumes: a block device whose data lives as a log of objects in any S3 bucket
//! (seed 004 format), served over NBD. See `docs/volumes.md`.

pub mod allocator;
pub mod cli;
pub mod crypt;
pub mod error;
pub mod format;
pub mod gc;
pub mod journal;
pub mod lease;
pub mod manage;
pub mod metrics;
pub mod nbd;
mod readahead;
pub mod replay;
pub mod s3;
pub mod store;
pub mod table;
pub mod volume;

pub use error::{Result, StoreError, VolumeError};
pub use store::{MemStore, ObjectStore};
pub use volume::{Volume, WriterConfig};
