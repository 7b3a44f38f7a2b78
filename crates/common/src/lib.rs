//! The leaf of the workspace: pure functions (no async; no I/O except `private_files`, which
//! creates and checks owner-only files) that several layers need and that must mean the same
//! thing everywhere. One module per input kind; before writing a parser or formatter elsewhere,
//! look here.

pub mod bucket_address;
pub mod cookie;
mod decimal;
pub mod duration;
pub mod errors;
pub mod origin;
pub mod private_files;
pub mod size;
