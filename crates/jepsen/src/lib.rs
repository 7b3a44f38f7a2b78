//! Jepsen-style checking of Meridian: a [`history`] of operations recorded by concurrent
//! clients (each with its invocation time, completion time and outcome: ok, fail or info), and
//! the checkers run over it:
//!
//! - [`register`]: linearizability of each key as a register (Wing–Gong search with
//!   memoization), for strong reads and every write, conditional or not;
//! - [`checks`]: what the weaker read modes promise — reads at a revision floor see every
//!   write at or below it (`x-meridian-min-revision`, the session cookie, a session's own
//!   writes), local reads of one session never go back in time, every read returns a value
//!   that was written with the revision it was written at, and nothing acknowledged is lost
//!   once the cluster healed.
//!
//! Every checker has tests feeding it hand-made bad histories: a checker that cannot fail
//! proves nothing.

pub mod checks;
pub mod history;
pub mod register;

pub use checks::{Violation, check_all};
pub use history::{Action, Condition, History, Op, Outcome, ReadMode, Version};
