//! What the serving layer knows about each request and tells its observers: the request id, the
//! client, what the handler noted (principal, operation), and, once the response body has been
//! sent, the status, bytes and duration.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// A request's id: 16 hex digits, unique enough to find one request in the logs of a cluster.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestId(pub(crate) u64);

impl RequestId {
    pub fn random() -> RequestId {
        RequestId(rand::random())
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016X}", self.0)
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// What a handler learns while serving a request and wants in its log line and metrics. Each
/// fact is set at most once (the first value stays).
#[derive(Clone, Default, Debug)]
pub struct Notes {
    inner: Arc<NotesInner>,
}

#[derive(Default, Debug)]
struct NotesInner {
    principal: OnceLock<String>,
    operation: OnceLock<String>,
}

impl Notes {
    /// Who made the request (an access key's name, `anonymous`, `peer`...).
    pub fn set_principal(&self, principal: impl Into<String>) {
        let _ = self.inner.principal.set(principal.into());
    }

    /// The API operation (`PutObject`, `kv.get`, `admin.keys.create`...).
    pub fn set_operation(&self, operation: impl Into<String>) {
        let _ = self.inner.operation.set(operation.into());
    }

    pub fn principal(&self) -> Option<&str> {
        self.inner.principal.get().map(String::as_str)
    }

    pub fn operation(&self) -> Option<&str> {
        self.inner.operation.get().map(String::as_str)
    }
}

/// Handed to the handler with every request (and put in the request's extensions, for layers
/// such as s3s's authentication that only see the request).
#[derive(Clone, Debug)]
pub struct RequestInfo {
    pub id: RequestId,
    /// The client's address.
    pub peer: SocketAddr,
    /// Whether the request came over TLS.
    pub secure: bool,
    /// The listener's name ([`crate::Policy::name`]).
    pub listener: &'static str,
    pub notes: Notes,
}

/// One finished request, as observers see it.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    pub listener: &'static str,
    pub id: RequestId,
    pub peer: SocketAddr,
    pub method: http::Method,
    /// The path only: query strings can carry secrets (presigned URLs).
    pub path: String,
    pub status: http::StatusCode,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// From the request's arrival to the end of its response body.
    pub duration: Duration,
    /// Whether the response body was sent whole (false when the client went away or the body
    /// failed midway).
    pub completed: bool,
    pub principal: Option<String>,
    pub operation: Option<String>,
}

/// Told about every request a listener finishes: the access log is one, metrics another.
pub trait Observer: Send + Sync {
    fn request_done(&self, record: &RequestRecord);
}

/// What a listener is doing right now (read by metrics at scrape time).
#[derive(Default, Debug)]
pub struct Load {
    in_flight: AtomicI64,
    connections: AtomicI64,
}

impl Load {
    /// Requests received whose response body has not ended yet.
    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Connections accepted under the listener's limits and not closed yet.
    pub fn connections(&self) -> i64 {
        self.connections.load(Ordering::Relaxed)
    }

    pub(crate) fn request(self: &Arc<Self>) -> Counted {
        Counted::new(Arc::clone(self), |load| &load.in_flight)
    }

    pub(crate) fn connection(self: &Arc<Self>) -> Counted {
        Counted::new(Arc::clone(self), |load| &load.connections)
    }
}

/// One request or connection counted in a [`Load`] until dropped.
pub(crate) struct Counted {
    load: Arc<Load>,
    counter: fn(&Load) -> &AtomicI64,
}

impl Counted {
    fn new(load: Arc<Load>, counter: fn(&Load) -> &AtomicI64) -> Counted {
        counter(&load).fetch_add(1, Ordering::Relaxed);
        Counted { load, counter }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        (self.counter)(&self.load).fetch_sub(1, Ordering::Relaxed);
    }
}
