//! Connections to the etcd members, client-side failover, timeouts and error mapping.
//!
//! Every member listed in the options gets one lazily connected HTTP/2 channel. A request goes
//! to the member a *cursor* points at; when that member cannot take it, the cursor moves on to
//! the next member and the request is tried there, until the request's deadline. There are two
//! cursors: `Route::Voter` for writes, linearizable reads and watches, and `Route::Local` for
//! serializable reads. With a local learner listed first, serializable reads stay on it while
//! everything else moves to a voting member after the learner's first refusal. The first member
//! listed is the preferred one (the closest): a cursor that moved away from it returns to it
//! after [`RETURN_TO_PREFERRED`], so a member that was down for a moment gets its traffic back.
//!
//! Retrying is only safe when etcd cannot have applied the request: a read can always be
//! retried, a write only when it never reached a member (the connection could not be made) or
//! the member refused it before proposing it (no leader, learner). Any other failure of a write
//! is reported as [`MetaError::Unavailable`] saying that the outcome is unknown.

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use meridian_common::errors::chain;
use meridian_meta::{MetaError, Revision};
use tokio::time::Instant;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::EtcdOptions;
use crate::tls::{TlsError, Trust};

/// Which endpoint cursor a request follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// Writes, linearizable reads, watches: must reach a voting member.
    Voter,
    /// Serializable reads: any member, preferably the one listed first.
    Local,
}

/// Whether a request may be sent again after an ambiguous failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Reads and other requests that change nothing.
    Always,
    /// Writes: only when etcd certainly did not apply the first attempt.
    IfNotApplied,
}

/// A failed call: either a final gRPC status from etcd (the caller may inspect it) or an error
/// already in the metadata store's terms.
#[derive(Debug)]
pub(crate) enum CallError {
    Status(Status),
    Meta(MetaError),
}

impl From<CallError> for MetaError {
    fn from(err: CallError) -> Self {
        match err {
            CallError::Status(status) => map_status(&status),
            CallError::Meta(err) => err,
        }
    }
}

/// How a failed attempt may be handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    /// etcd did not apply (or never received) the request; another member may take it.
    NotApplied,
    /// The request may or may not have been applied (the connection broke, a timeout...).
    Ambiguous,
    /// A definite answer (bad request, compacted revision...): retrying would not help.
    Final,
}

struct Member {
    url: String,
    channel: Channel,
}

/// How long a cursor stays away from the first (preferred) member before trying it again.
pub(crate) const RETURN_TO_PREFERRED: Duration = Duration::from_secs(10);

/// A route's current member, and when it last moved (milliseconds since the pool started).
struct Cursor {
    index: AtomicUsize,
    moved_at: AtomicU64,
}

impl Cursor {
    fn new() -> Self {
        Cursor { index: AtomicUsize::new(0), moved_at: AtomicU64::new(0) }
    }
}

/// The shared connection state of every clone of a store.
pub(crate) struct Pool {
    members: Vec<Member>,
    started: Instant,
    voter: Cursor,
    local: Cursor,
    /// The newest revision any response has shown this process; serializable reads never go
    /// back before it.
    observed: AtomicU64,
    pub(crate) request_timeout: Duration,
    max_response_bytes: usize,
    require_leader: bool,
    metrics: meridian_metrics::EtcdMetrics,
}

impl Pool {
    pub(crate) fn new(options: &EtcdOptions) -> Result<Self, MetaError> {
        if options.endpoints.is_empty() {
            return Err(MetaError::Storage(
                "no etcd endpoints configured: give at least one client URL such as \
                 http://127.0.0.1:2379"
                    .into(),
            ));
        }
        let trust = load_trust(options)?;
        let mut members = Vec::with_capacity(options.endpoints.len());
        for raw in &options.endpoints {
            let url = normalize_url(raw)?;
            let endpoint = endpoint(raw, &url, options, trust.as_ref())?;
            members.push(Member { url, channel: endpoint.connect_lazy() });
        }
        Ok(Pool {
            members,
            started: Instant::now(),
            voter: Cursor::new(),
            local: Cursor::new(),
            observed: AtomicU64::new(0),
            request_timeout: options.request_timeout,
            max_response_bytes: options.max_response_bytes,
            require_leader: options.require_leader,
            metrics: options.metrics.clone(),
        })
    }

    pub(crate) fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.url.clone()).collect()
    }

    pub(crate) fn max_response_bytes(&self) -> usize {
        self.max_response_bytes
    }

    /// Records a revision seen in a response.
    pub(crate) fn observe(&self, revision: i64) {
        self.observed.fetch_max(to_revision(revision), Ordering::SeqCst);
    }

    pub(crate) fn observed(&self) -> Revision {
        self.observed.load(Ordering::SeqCst)
    }

    fn cursor(&self, route: Route) -> &Cursor {
        match route {
            Route::Voter => &self.voter,
            Route::Local => &self.local,
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The member the route currently points at.
    pub(crate) fn current(&self, route: Route) -> (usize, Channel, &str) {
        let cursor = self.cursor(route);
        let mut current = cursor.index.load(Ordering::SeqCst) % self.members.len();
        if current != 0 {
            let away_ms = self.now_ms().saturating_sub(cursor.moved_at.load(Ordering::SeqCst));
            if u128::from(away_ms) >= RETURN_TO_PREFERRED.as_millis()
                && cursor.index.compare_exchange(current, 0, Ordering::SeqCst, Ordering::SeqCst).is_ok()
            {
                cursor.moved_at.store(self.now_ms(), Ordering::SeqCst);
                current = 0;
            }
        }
        let index = current % self.members.len();
        let member = &self.members[index];
        (index, member.channel.clone(), &member.url)
    }

    /// Member `index`'s channel and URL.
    pub(crate) fn member(&self, index: usize) -> (Channel, &str) {
        let member = &self.members[index % self.members.len()];
        (member.channel.clone(), &member.url)
    }

    /// Moves the route past member `from` (unless another request already moved it).
    pub(crate) fn advance(&self, route: Route, from: usize) {
        let next = (from + 1) % self.members.len();
        let cursor = self.cursor(route);
        let current = cursor.index.load(Ordering::SeqCst);
        if current % self.members.len() == from
            && cursor.index.compare_exchange(current, next, Ordering::SeqCst, Ordering::SeqCst).is_ok()
        {
            cursor.moved_at.store(self.now_ms(), Ordering::SeqCst);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.members.len()
    }

    /// A request with the deadline and etcd's "require a leader" marker.
    pub(crate) fn request<T>(&self, message: T, timeout: Duration) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(timeout);
        self.mark(&mut request);
        request
    }

    /// Adds the "require a leader" marker: a member that has lost its leader refuses the request
    /// (and cancels open watches) instead of answering from a possibly stale state or hanging.
    pub(crate) fn mark<T>(&self, request: &mut tonic::Request<T>) {
        if self.require_leader {
            request.metadata_mut().insert("hasleader", MetadataValue::from_static("true"));
        }
    }

    /// Runs `attempt` against members of `route` until it succeeds, fails for good, or the
    /// request timeout passes. `attempt` gets the channel and the time it may take.
    /// One request (`what` names it in the metrics and errors), retried on other members as
    /// `retry` allows, within the request timeout.
    pub(crate) async fn call<T, F, Fut>(
        &self,
        what: &'static str,
        route: Route,
        retry: Retry,
        attempt: F,
    ) -> Result<T, CallError>
    where
        F: FnMut(Channel, Duration) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let started = Instant::now();
        let result = self.call_with_retries(what, route, retry, attempt).await;
        self.metrics.request(what, started.elapsed(), result.is_ok());
        result
    }

    async fn call_with_retries<T, F, Fut>(
        &self,
        what: &str,
        route: Route,
        retry: Retry,
        mut attempt: F,
    ) -> Result<T, CallError>
    where
        F: FnMut(Channel, Duration) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let deadline = Instant::now() + self.request_timeout;
        let mut backoff = Backoff::new();
        let mut failures_in_round = 0;
        let mut last_error = String::from("no attempt finished");
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(CallError::Meta(MetaError::Unavailable(format!(
                    "etcd {what}: no member answered within {:?} (endpoints {}); last error: \
                     {last_error}",
                    self.request_timeout,
                    self.endpoints().join(",")
                ))));
            }
            // A read leaves time for another member if this one hangs; a write cannot be
            // retried after a timeout anyway, so it gets all the time there is.
            let budget = match retry {
                Retry::Always => remaining.min((self.request_timeout / 2).max(ONE_SECOND)),
                Retry::IfNotApplied => remaining,
            };
            let (index, channel, url) = self.current(route);
            let failure = match tokio::time::timeout(budget, attempt(channel, budget)).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(status)) => {
                    let failure = classify(&status);
                    last_error = format!("{url}: {}", describe(&status));
                    if failure == Failure::Final {
                        return Err(CallError::Status(status));
                    }
                    failure
                }
                Err(_) => {
                    last_error = format!("{url}: no answer within {budget:?}");
                    Failure::Ambiguous
                }
            };
            // This member failed us: whatever happens next, the next request tries another.
            self.advance(route, index);
            if failure == Failure::Ambiguous && retry == Retry::IfNotApplied {
                return Err(CallError::Meta(MetaError::Unavailable(format!(
                    "etcd {what}: the outcome is unknown (it may or may not have been \
                     applied): {last_error}"
                ))));
            }
            tracing::debug!(what, endpoint = url, error = %last_error, "etcd request failed; trying the next member");
            failures_in_round += 1;
            if failures_in_round >= self.members.len() {
                // Every member failed once: wait a little before the next round.
                failures_in_round = 0;
                let pause = backoff.next().min(deadline.saturating_duration_since(Instant::now()));
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// The trusted CAs, when an endpoint uses https:// or a CA file is given (which must then be
/// usable, even if no endpoint needs it yet).
fn load_trust(options: &EtcdOptions) -> Result<Option<Trust>, TlsError> {
    let https = options.endpoints.iter().any(|raw| raw.trim().starts_with("https://"));
    if !https && options.ca_file.is_none() {
        return Ok(None);
    }
    Trust::load(options.ca_file.as_deref()).map(Some)
}

/// One member's channel settings (TLS for https:// URLs).
fn endpoint(raw: &str, url: &str, options: &EtcdOptions, trust: Option<&Trust>) -> Result<Endpoint, MetaError> {
    let invalid =
        |err: tonic::transport::Error| MetaError::Storage(format!("invalid etcd endpoint {raw:?}: {}", chain(&err)));
    let mut endpoint = Endpoint::from_shared(url.to_string())
        .map_err(invalid)?
        .connect_timeout(options.connect_timeout)
        .tcp_nodelay(true)
        .tcp_keepalive(Some(options.keep_alive_interval))
        .http2_keep_alive_interval(options.keep_alive_interval)
        .keep_alive_timeout(options.keep_alive_timeout)
        // etcd refuses pings on idle connections (grpc-go's enforcement policy answers
        // them with GOAWAY), so keep-alive only runs while a request or watch is open.
        .keep_alive_while_idle(false);
    if let Some(trust) = trust.filter(|_| url.starts_with("https://")) {
        endpoint = endpoint.tls_config(trust.config(url, options.connect_timeout)?).map_err(invalid)?;
    }
    Ok(endpoint)
}

impl From<TlsError> for MetaError {
    fn from(err: TlsError) -> Self {
        MetaError::Storage(format!("etcd TLS: {err}"))
    }
}

const ONE_SECOND: Duration = Duration::from_secs(1);

/// Exponential backoff between rounds of attempts: 25 ms doubling up to 1 s.
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    pub(crate) fn new() -> Self {
        Backoff { next: Duration::from_millis(25) }
    }

    pub(crate) fn next(&mut self) -> Duration {
        let current = self.next;
        self.next = (self.next * 2).min(ONE_SECOND);
        current
    }

    pub(crate) fn reset(&mut self) {
        *self = Backoff::new();
    }
}

/// etcd revisions are `int64` on the wire; they are never negative.
pub(crate) fn to_revision(revision: i64) -> Revision {
    u64::try_from(revision).unwrap_or(0)
}

/// Our revisions as etcd's `int64`.
pub(crate) fn to_etcd_revision(revision: Revision) -> i64 {
    i64::try_from(revision).unwrap_or(i64::MAX)
}

fn normalize_url(raw: &str) -> Result<String, MetaError> {
    let raw = raw.trim().trim_end_matches('/');
    if raw.starts_with("http://") || raw.starts_with("https://") {
        Ok(raw.to_string())
    } else if raw.contains("://") {
        Err(MetaError::Storage(format!("etcd endpoint {raw}: only http:// and https:// URLs are supported")))
    } else {
        Ok(format!("http://{raw}"))
    }
}

/// True when the connection to the member could not be made, so the request never left.
fn never_sent(status: &Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(status);
    while let Some(err) = source {
        if err.downcast_ref::<tonic::ConnectError>().is_some() {
            return true;
        }
        source = err.source();
    }
    false
}

fn classify(status: &Status) -> Failure {
    if never_sent(status) {
        return Failure::NotApplied;
    }
    let text = status.message();
    // Refusals etcd gives before it proposes anything.
    const REFUSED: &[&str] = &[
        "etcdserver: no leader",
        "etcdserver: rpc not supported for learner",
        "etcdserver: not capable",
        "etcdserver: too many requests",
    ];
    if REFUSED.iter().any(|r| text.contains(r)) {
        return Failure::NotApplied;
    }
    match status.code() {
        Code::Unavailable | Code::Unknown | Code::Internal | Code::DeadlineExceeded | Code::Cancelled => {
            Failure::Ambiguous
        }
        _ => Failure::Final,
    }
}

/// The status code and message, then the transport error behind them (a status's own Display
/// is verbose and says nothing of its sources).
fn describe(status: &Status) -> String {
    let head = format!("{:?}: {}", status.code(), status.message());
    match std::error::Error::source(status).map(chain) {
        Some(sources) if !head.contains(&sources) => format!("{head}: {sources}"),
        _ => head,
    }
}

/// True when etcd refused a read at a revision that compaction removed.
pub(crate) fn is_compacted(status: &Status) -> bool {
    status.code() == Code::OutOfRange && status.message().contains("compacted")
}

/// True when etcd refused a read at a revision newer than the member's.
pub(crate) fn is_future_revision(status: &Status) -> bool {
    status.code() == Code::OutOfRange && status.message().contains("future revision")
}

/// etcd's final errors in the metadata store's terms.
pub(crate) fn map_status(status: &Status) -> MetaError {
    let text = status.message();
    if text.contains("too many operations in txn request") {
        return MetaError::TooLarge(format!(
            "{text}: the etcd cluster limits the number of operations in one transaction; \
             start every member with a larger --max-txn-ops (Meridian needs 32768 or more, see \
             docs/etcd.md)"
        ));
    }
    if text.contains("request is too large")
        || text.contains("received message larger than max")
        || text.contains("message length too large")
    {
        return MetaError::TooLarge(format!(
            "{text}: the etcd cluster limits the size of one request; start every member with \
             a larger --max-request-bytes (Meridian needs 16777216 or more, see docs/etcd.md)"
        ));
    }
    if text.contains("database space exceeded") {
        return MetaError::Storage(format!(
            "{text}: etcd reached its storage quota and only serves reads and deletes; compact \
             and defragment it (etcdctl compact, etcdctl defrag), disarm the NOSPACE alarm \
             (etcdctl alarm disarm) or raise --quota-backend-bytes"
        ));
    }
    if text.contains("duplicate key given in txn request") {
        return MetaError::Storage(format!("invalid transaction: a key is written twice ({text})"));
    }
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
            MetaError::Unavailable(format!("etcd: {}", describe(status)))
        }
        _ => MetaError::Storage(format!("etcd: {}", describe(status))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_get_a_scheme() {
        assert_eq!(normalize_url("127.0.0.1:2379").ok(), Some("http://127.0.0.1:2379".to_string()));
        assert_eq!(normalize_url(" http://a:1/ ").ok(), Some("http://a:1".to_string()));
        assert_eq!(normalize_url("https://a:1/").ok(), Some("https://a:1".to_string()));
        assert!(normalize_url("unix://x").is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn cursors_move_on_failure_and_return_to_the_preferred_member() {
        let pool = Pool::new(&EtcdOptions::new(["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(pool.current(Route::Local).0, 0);
        pool.advance(Route::Local, 0);
        assert_eq!(pool.current(Route::Local).0, 1);
        pool.advance(Route::Local, 0);
        assert_eq!(pool.current(Route::Local).0, 1, "a stale failure report does not move the cursor twice");
        assert_eq!(pool.current(Route::Voter).0, 0, "routes move independently");
        tokio::time::advance(RETURN_TO_PREFERRED - Duration::from_millis(5)).await;
        assert_eq!(pool.current(Route::Local).0, 1);
        tokio::time::advance(Duration::from_millis(10)).await;
        assert_eq!(pool.current(Route::Local).0, 0, "back to the closest member");
        pool.advance(Route::Local, 0);
        pool.advance(Route::Local, 1);
        pool.advance(Route::Local, 2);
        assert_eq!(pool.current(Route::Local).0, 0, "round and round");
    }

    #[test]
    fn refusals_before_proposal_are_retryable_for_writes() {
        let s = Status::unavailable("etcdserver: no leader");
        assert_eq!(classify(&s), Failure::NotApplied);
        let s = Status::unavailable("etcdserver: rpc not supported for learner");
        assert_eq!(classify(&s), Failure::NotApplied);
        let s = Status::unavailable("etcdserver: request timed out");
        assert_eq!(classify(&s), Failure::Ambiguous);
        let s = Status::invalid_argument("etcdserver: too many operations in txn request");
        assert_eq!(classify(&s), Failure::Final);
        assert!(matches!(map_status(&s), MetaError::TooLarge(m) if m.contains("--max-txn-ops")));
        let s = Status::resource_exhausted("grpc: received message larger than max (1 vs. 2)");
        assert!(matches!(map_status(&s), MetaError::TooLarge(m) if m.contains("--max-request-bytes")));
    }
}
