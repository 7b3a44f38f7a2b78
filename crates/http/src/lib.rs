//! The one HTTP serving layer of every Meridian listener: S3/KV, admin, node-to-node and the
//! web edge all run [`Server::serve`] with their own [`Policy`] and a [`Handler`].
//!
//! What every listener gets from it:
//! - HTTP/1.1 and HTTP/2, over plain TCP or TLS ([`tls`], certificates reloaded when their
//!   files change or on SIGHUP, HTTP/2 by ALPN);
//! - limits: connections in all and per client address, header count and size, header read
//!   time (shrinking when connections run short), idle time, request body size;
//! - a request id on every response, one access-log line per request, and [`Observer`]s (the
//!   hook metrics use) told about every finished request;
//! - graceful shutdown: stop accepting, let open requests finish within the drain deadline.
//!
//! The client side ([`client`]) gives every Meridian client `https://` with the same trust
//! settings.

mod access_log;
mod body;
pub mod client;
mod conn;
mod policy;
mod request;
mod server;
mod shutdown;
pub mod tls;

pub use access_log::{AccessLog, structured_access_log, text_access_log_to};
pub use body::{BodyError, BoxError, RequestBody, ResponseBody, boxed, empty, full};
pub use policy::Policy;
pub use request::{Load, Notes, Observer, RequestId, RequestInfo, RequestRecord};
pub use server::{FnHandler, Handler, Server, handler_fn, text_response};
pub use shutdown::shutdown_signal;
pub use tls::{ClientTls, ServerTls, TlsError, TlsFiles};
