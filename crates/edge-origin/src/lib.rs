//! The edge's way to its origin apps (crates/edge serves sites; this crate talks to origins):
//!
//! - [`spool`]: the request body kept (memory, then an unnamed 0600 file) so it can be replayed;
//! - [`replay`]: the `fly-replay` instruction (header and JSON forms) as typed values.

pub mod replay;
pub mod spool;
