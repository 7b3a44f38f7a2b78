//! The edge's way to its origin apps (crates/edge serves sites; this crate talks to origins):
//!
//! - [`spool`]: the request body kept (memory, then an unnamed 0600 file) so it can be replayed;
//! - [`forward`]: requests on to an origin or a peer edge, answers back (`X-Forwarded-*`,
//!   hop-by-hop headers);
//! - [`replay`]: the `fly-replay` instruction (header and JSON forms) and the replay cache;
//! - [`topology`]: a site's origin instances per region and the other regions' edges;
//! - [`proxy`]: [`OriginProxy`], which sends a request to the origin and replays it where the
//!   origin says.

pub mod forward;
pub mod proxy;
pub mod replay;
pub mod spool;
pub mod topology;

pub use proxy::{FailReason, Failure, OriginProxy, ProxyConfig};
pub use topology::{Candidate, Instance, Region, Topology};
