//! # meridian-client
//!
//! An async Rust client for the KV API of [Meridian](https://github.com/meridian-store/meridian),
//! the S3-compatible object store that is also a key-value store — and the `meridian kv`
//! command built on it.
//!
//! A bucket is a key-value store: a key is an object key, a value is the object's body. What
//! you write here, any S3 client reads, and the other way round. Every change gets a *revision*
//! from one global counter; a key's **version is the revision at which its current value was
//! written** (the `x-meridian-revision` header of every read and write). Versions are what
//! compare-and-set compares, what watches resume from, and what fencing tokens are drawn from.
//!
//! | operation | method |
//! |---|---|
//! | read a value, its version and TTL | [`Client::get`] |
//! | write | [`Client::put`] |
//! | compare-and-set, create-only, TTL, fenced write | [`Client::put_with`] + [`PutOptions`] |
//! | write under the key's global lock, fail at once if contended | [`Client::put_transaction`] |
//! | delete (optionally only at a version, or fenced) | [`Client::delete`], [`Client::delete_with`] |
//! | list by prefix, with versions | [`Client::list`], [`Client::list_all`] |
//! | named locks with TTL, owner and fencing token | [`Client::lock`], [`Client::renew`], [`Client::release`], [`Client::owner`] |
//! | stream of changes from a revision | [`Client::watch`], [`Client::watch_resumable`] |
//! | atomic multi-key writes with per-key conditions | [`Client::batch`] |
//!
//! Every refusal is a distinct [`Error`] variant: [`Error::VersionMismatch`] (with the current
//! version), [`Error::LockContended`] (with the holder), [`Error::LockNotHeld`],
//! [`Error::FenceRejected`], [`Error::Compacted`] (with the oldest revision still replayable),
//! [`Error::NoSuchBucket`], and [`Error::Service`] for everything else the server says.
//!
//! ## Quick start
//!
//! ```no_run
//! use std::time::Duration;
//! use meridian_client::{Client, Credentials, Error, PutOptions};
//!
//! # async fn demo() -> meridian_client::Result<()> {
//! // The endpoint and key `meridian server` printed; the bucket must exist (`aws s3 mb`, or
//! // `kv.create_bucket()`).
//! let kv = Client::new("http://127.0.0.1:9400", "app", Credentials::new("MK...", "secret"))?;
//!
//! let v1 = kv.put("sessions/abc", "{\"user\":42}").await?;
//! let entry = kv.get("sessions/abc").await?.expect("present");
//! assert_eq!(entry.revision, v1);
//!
//! // Compare-and-set: only if nobody wrote since we read.
//! match kv.put_with("sessions/abc", "{\"user\":43}", &PutOptions::default().if_revision(v1)).await {
//!     Ok(v2) => println!("now at version {v2}"),
//!     Err(Error::VersionMismatch { current, .. }) => println!("lost the race; the key is at {current}"),
//!     Err(e) => return Err(e),
//! }
//!
//! // A key that expires: invisible to every read and listing the moment its TTL runs out.
//! kv.put_with("otp/42", "913422", &PutOptions::default().ttl(Duration::from_secs(90))).await?;
//!
//! // The seed's put_transaction: take the key's lock, write, release; fail at once when
//! // someone else is writing it.
//! match kv.put_transaction("leader", "node-a", Duration::ZERO).await {
//!     Ok(_) => {}
//!     Err(Error::LockContended { owner, .. }) => println!("aborted: {owner} holds the key"),
//!     Err(e) => return Err(e),
//! }
//! # Ok(()) }
//! ```
//!
//! ## Watching changes
//!
//! ```no_run
//! # async fn demo(kv: meridian_client::Client) -> meridian_client::Result<()> {
//! use futures::StreamExt;
//! // From now on, reconnecting (exactly, no gap, no duplicate) if the connection or the server
//! // goes away.
//! let mut events = kv.watch_resumable("sessions/", None).await?;
//! while let Some(item) = events.next().await {
//!     match item {
//!         Ok(event) => println!("{:?} {} v{}", event.kind, event.key, event.revision),
//!         Err(e) if e.is_transport() => eprintln!("reconnecting: {e}"),
//!         Err(e) => return Err(e), // e.g. Error::Compacted: re-read and start over
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! ## Transport
//!
//! `http://` or `https://` (rustls; the system's roots plus the CA file named by
//! `MERIDIAN_CA_FILE`, or any [`meridian_http::ClientTls`] through [`Client::with_tls`]) over
//! HTTP/1.1 keep-alive connections (hyper's pooled client, TCP_NODELAY),
//! requests signed with AWS SigV4 (`aws-sigv4`, service `s3`, region `us-east-1` unless
//! [`Client::with_region`]). Keys are percent-encoded once, `/` kept. Nothing is retried
//! automatically except by [`Client::watch_resumable`]: after an [`Error::Transport`] on a
//! write, whether it was applied is unknown — read the key (or use a condition) to find out.
//!
//! ## The `meridian kv` command
//!
//! [`cli`] holds the command line (`meridian kv get|put|delete|ls|lock|renew|release|owner|watch|batch|bench`),
//! its documented exit codes and a benchmark ([`mod@bench`]); see `docs/kv.md` in the repository.

#![warn(missing_docs)]

pub mod bench;
pub mod cli;
mod client;
mod error;
mod sign;
mod watch;

pub use client::{
    BatchOp, Client, Consistency, DEFAULT_ENDPOINT, DEFAULT_TIMEOUT, DeleteOptions, Entry, Fence, GetOptions,
    ListEntry, Lock, Page, PutOptions, Transaction,
};
pub use error::{Error, Result};
pub use sign::Credentials;
pub use watch::{Event, EventKind, WATCH_IDLE_TIMEOUT, WatchStream};

/// Parses a duration the way the server does: `500ms`, `90s`, `5m`, `2h`, `7d`, compounds
/// (`1m30s`), fractions (`1.5s`), or a bare number of seconds; at least 1 ms.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(meridian_client::parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
/// assert!(meridian_client::parse_duration("5 parsecs").is_err());
/// ```
pub fn parse_duration(text: &str) -> std::result::Result<std::time::Duration, String> {
    meridian_kv_types::parse_duration(text)
        .map_err(|_| format!("invalid duration {text:?}: {}", meridian_kv_types::DURATION_HELP))
}
