//! The S3 front end. [`s3s`] parses requests and checks SigV4 (header, presigned and
//! `aws-chunked` streaming with trailers); [`service::MeridianS3`] turns each operation into
//! engine calls and engine errors into S3 XML errors; [`server::S3Handler`] is what the node's
//! S3 listener (the shared [`meridian_http`] layer) calls for every request.

pub mod access;
pub mod context;
mod convert;
pub mod cors;
pub mod forward;
pub mod kv;
pub mod server;
pub mod service;

pub use context::RequestContext;
pub use server::S3Handler;
pub use service::{MeridianS3, S3Options, build_service};

/// Response header carrying the metadata revision a response reflects.
pub const REVISION_HEADER: &str = "x-meridian-revision";
