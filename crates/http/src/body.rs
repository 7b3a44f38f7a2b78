//! Request bodies bounded by the listener's limit, and response bodies that report the request
//! to the observers once they have been sent.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;

use crate::request::{Counted, Observer, RequestInfo, RequestRecord};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every handler's response body.
pub type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// A response body of `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    http_body_util::Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

/// An empty response body.
pub fn empty() -> ResponseBody {
    http_body_util::Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// Boxes any body as a [`ResponseBody`].
pub fn boxed<B>(body: B) -> ResponseBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the request body is larger than the {limit} bytes this endpoint accepts")]
    TooLarge { limit: u64 },
    #[error("reading the request body failed: {0}")]
    Transport(#[from] hyper::Error),
}

/// A request body as the handler sees it: the connection's bytes, cut off with
/// [`BodyError::TooLarge`] once they pass the listener's limit. Dropped before its end, it
/// hands the unread rest back to the layer ([`Unread`]), which decides whether the connection
/// can be kept (see `server::settle_unread`).
pub struct RequestBody {
    inner: Option<Incoming>,
    limit: u64,
    seen: u64,
    counted: Arc<AtomicU64>,
    polled: bool,
    ended: bool,
    unread: Arc<Mutex<Unread>>,
}

/// The rest of a request body its handler did not read.
#[derive(Default)]
pub(crate) struct Unread {
    pub(crate) body: Option<Incoming>,
    /// Whether the handler ever asked for the body (which makes hyper send `100 Continue`).
    pub(crate) polled: bool,
}

impl RequestBody {
    pub(crate) fn new(inner: Incoming, limit: u64, counted: Arc<AtomicU64>, unread: Arc<Mutex<Unread>>) -> RequestBody {
        RequestBody { inner: Some(inner), limit, seen: 0, counted, polled: false, ended: false, unread }
    }

    /// A body with no bytes (for requests made inside the process, e.g. in tests).
    pub fn empty() -> RequestBody {
        RequestBody {
            inner: None,
            limit: 0,
            seen: 0,
            counted: Arc::default(),
            polled: false,
            ended: false,
            unread: Arc::default(),
        }
    }

    fn hand_back(&mut self) {
        let Some(inner) = self.inner.take() else { return };
        if self.ended || inner.is_end_stream() {
            return;
        }
        let mut unread = self.unread.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *unread = Unread { body: Some(inner), polled: self.polled };
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        self.hand_back();
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        this.polled = true;
        let Some(inner) = this.inner.as_mut() else { return Poll::Ready(None) };
        let frame = match ready!(Pin::new(inner).poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
            None => {
                this.ended = true;
                return Poll::Ready(None);
            }
        };
        if let Some(data) = frame.data_ref() {
            this.seen += data.len() as u64;
            this.counted.store(this.seen, Ordering::Relaxed);
            if this.seen > this.limit {
                this.hand_back();
                return Poll::Ready(Some(Err(BodyError::TooLarge { limit: this.limit })));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map(|b| b.size_hint()).unwrap_or_else(|| SizeHint::with_exact(0))
    }
}

/// What is needed to report a request once its response has been sent.
pub(crate) struct Pending {
    pub(crate) info: RequestInfo,
    pub(crate) method: http::Method,
    pub(crate) path: String,
    pub(crate) status: http::StatusCode,
    pub(crate) started: Instant,
    pub(crate) bytes_in: Arc<AtomicU64>,
    pub(crate) observers: Arc<[Arc<dyn Observer>]>,
    /// The request's place in the listener's in-flight count, given up with the report.
    pub(crate) _in_flight: Counted,
}

impl Pending {
    fn report(self, bytes_out: u64, completed: bool) {
        let record = RequestRecord {
            listener: self.info.listener,
            id: self.info.id,
            peer: self.info.peer,
            method: self.method,
            path: self.path,
            status: self.status,
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out,
            duration: self.started.elapsed(),
            completed,
            principal: self.info.notes.principal().map(str::to_string),
            operation: self.info.notes.operation().map(str::to_string),
        };
        for observer in self.observers.iter() {
            observer.request_done(&record);
        }
    }
}

/// A response body that reports the request when it ends (or is dropped unfinished).
pub(crate) struct Reported {
    inner: ResponseBody,
    sent: u64,
    pending: Option<Pending>,
}

impl Reported {
    pub(crate) fn new(inner: ResponseBody, pending: Pending) -> Reported {
        Reported { inner, sent: 0, pending: Some(pending) }
    }

    fn finish(&mut self, completed: bool) {
        if let Some(pending) = self.pending.take() {
            pending.report(self.sent, completed);
        }
    }
}

impl Body for Reported {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &polled {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    self.sent += data.len() as u64;
                }
                if self.inner.is_end_stream() {
                    self.finish(true);
                }
            }
            Some(Err(_)) => self.finish(false),
            None => self.finish(true),
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Reported {
    fn drop(&mut self) {
        let completed = self.inner.is_end_stream();
        self.finish(completed);
    }
}
