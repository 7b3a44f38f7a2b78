//! The S3 front end. [`s3s`] parses requests and checks SigV4 (header, presigned and
//! `aws-chunked` streaming with trailers); [`service::MeridianS3`] turns each operation into
//! engine calls and engine errors into S3 XML errors; [`server`] serves it over HTTP with
//! bounded headers, connections and idle time.

pub mod access;
mod convert;
pub mod forward;
pub mod kv;
pub mod server;
pub mod service;

pub use server::{PeerEndpoint, ServerLimits, serve};
pub use service::{MeridianS3, S3Options, build_service};

/// Response header carrying the metadata revision a response reflects.
pub const REVISION_HEADER: &str = "x-meridian-revision";
