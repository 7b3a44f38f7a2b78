//! Watch streams: changes under a prefix as they commit, from any revision still in history.
//!
//! The server sends one JSON object per line (NDJSON): `put`, `delete` and `expire` events, a
//! `heartbeat` every 15 s (skipped here), and an `error` line before it ends a stream it cannot
//! continue (e.g. `RevisionCompacted`).

use std::collections::HashSet;
use std::pin::Pin;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use http::Method;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::Deserialize;

use crate::client::Client;
use crate::error::{Error, Result, oldest_from_message};

/// Longest silence before a watch connection is considered dead (the server sends a heartbeat
/// every 15 s).
pub const WATCH_IDLE_TIMEOUT: Duration = Duration::from_secs(45);
/// Longest line accepted.
const MAX_LINE: usize = 1 << 20;

pub use meridian_kv_types::{Event, EventKind};

/// A stream of watch events.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<Event>> + Send>>;

#[derive(Deserialize)]
struct Line {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    revision: Option<u64>,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    etag: Option<String>,
    #[serde(default)]
    expires_at_ms: Option<i64>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    oldest: Option<u64>,
}

enum Parsed {
    Event(Event),
    Skip,
    Fatal(Error),
}

fn parse_line(line: &[u8]) -> Parsed {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.iter().all(u8::is_ascii_whitespace) {
        return Parsed::Skip;
    }
    let parsed: Line = match serde_json::from_slice(line) {
        Ok(l) => l,
        Err(e) => return Parsed::Fatal(Error::Protocol(format!("malformed watch line: {e}"))),
    };
    let kind = match parsed.kind.as_str() {
        "put" => EventKind::Put,
        "delete" => EventKind::Delete,
        "expire" => EventKind::Expire,
        "heartbeat" => return Parsed::Skip,
        "error" => {
            let message = parsed.message.unwrap_or_default();
            let code = parsed.code.unwrap_or_default();
            if code == "RevisionCompacted" {
                let oldest = parsed.oldest.or_else(|| oldest_from_message(&message)).unwrap_or(0);
                return Parsed::Fatal(Error::Compacted { oldest });
            }
            return Parsed::Fatal(Error::Service { status: 200, code, message });
        }
        // Newer servers may add kinds; an old client skips what it does not know.
        _ => return Parsed::Skip,
    };
    match (parsed.key, parsed.revision) {
        (Some(key), Some(revision)) => Parsed::Event(Event {
            kind,
            key,
            revision,
            size: parsed.size,
            etag: parsed.etag,
            expires_at_ms: parsed.expires_at_ms,
        }),
        _ => Parsed::Fatal(Error::Protocol("watch event without key or revision".into())),
    }
}

struct Reader {
    body: Incoming,
    buf: BytesMut,
    done: bool,
}

impl Reader {
    async fn next(&mut self) -> Option<Result<Event>> {
        loop {
            if self.done {
                return None;
            }
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line = self.buf.split_to(pos + 1);
                match parse_line(&line[..pos]) {
                    Parsed::Event(e) => return Some(Ok(e)),
                    Parsed::Skip => continue,
                    Parsed::Fatal(e) => {
                        self.done = true;
                        return Some(Err(e));
                    }
                }
            }
            if self.buf.len() > MAX_LINE {
                self.done = true;
                return Some(Err(Error::Protocol("watch line longer than 1 MiB".into())));
            }
            match tokio::time::timeout(WATCH_IDLE_TIMEOUT, self.body.frame()).await {
                Err(_) => {
                    self.done = true;
                    return Some(Err(Error::Transport(format!(
                        "watch stream silent for {} s (no heartbeat): connection lost",
                        WATCH_IDLE_TIMEOUT.as_secs()
                    ))));
                }
                Ok(None) => {
                    self.done = true;
                    return Some(Err(Error::Transport("the server closed the watch stream".into())));
                }
                Ok(Some(Err(e))) => {
                    self.done = true;
                    return Some(Err(Error::Transport(format!("watch stream broke: {e}"))));
                }
                Ok(Some(Ok(frame))) => {
                    if let Ok(mut data) = frame.into_data() {
                        while data.has_remaining() {
                            let chunk: Bytes = data.copy_to_bytes(data.remaining());
                            self.buf.extend_from_slice(&chunk);
                        }
                    }
                }
            }
        }
    }
}

impl Client {
    /// Changes to keys under `prefix` with revision `>= since`, as they commit; `since` 0 means
    /// "from now on". `since` is inclusive: to resume after the last event you handled (revision
    /// `r`), watch from `r + 1` — or from `r` and skip the keys of revision `r` you already
    /// handled, if the connection may have broken in the middle of a batch (whose events share
    /// one revision). [`Client::watch_resumable`] does that for you.
    ///
    /// Fails with [`Error::Compacted`] if `since` is older than the server's history. The stream
    /// ends after an error item: a transport error (connection lost, or 45 s without even a
    /// heartbeat), or [`Error::Compacted`] if the watcher fell so far behind that the history it
    /// needed was trimmed.
    ///
    /// ```no_run
    /// # async fn demo(kv: meridian_client::Client) -> meridian_client::Result<()> {
    /// use futures::StreamExt;
    /// let mut changes = kv.watch("jobs/", 0).await?;
    /// while let Some(event) = changes.next().await {
    ///     let event = event?;
    ///     println!("{:?} {} at {}", event.kind, event.key, event.revision);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn watch(&self, prefix: &str, since: u64) -> Result<WatchStream> {
        let since = since.to_string();
        let path = self.kv_path("watch", &[("prefix", prefix), ("since", &since)]);
        let resp = self.send(Method::GET, &path, &[], Bytes::new(), self.timeout).await?;
        if !resp.status().is_success() {
            let (parts, body) = resp.into_parts();
            let body =
                http_body_util::Limited::new(body, 64 << 10).collect().await.map(|c| c.to_bytes()).unwrap_or_default();
            return Err(crate::error::from_response(parts.status.as_u16(), &parts.headers, &body, self.bucket()));
        }
        let reader = Reader { body: resp.into_body(), buf: BytesMut::new(), done: false };
        Ok(Box::pin(futures::stream::unfold(reader, |mut reader| async move {
            let item = reader.next().await?;
            Some((item, reader))
        })))
    }

    /// A watch that survives connection loss and server restarts: after a transport error it
    /// reconnects (backing off up to 5 s) from the revision of the last event it delivered, and
    /// delivers every later event exactly once, in order — no gap, no duplicate, even if the
    /// connection broke in the middle of a batch.
    ///
    /// `since`: the first revision wanted (inclusive); `None` means "from now on": the current
    /// revision is read before this returns, so nothing committed after the call is missed.
    /// The first connection is made before this returns, and its errors are returned as they
    /// are (e.g. [`Error::Compacted`], [`Error::NoSuchBucket`], or a transport error when the
    /// server is down).
    ///
    /// Later transport errors are yielded as items for the caller to log; the stream goes on
    /// after them. Any other error ([`Error::Compacted`] when the history it needs is gone,
    /// authentication) ends it. Drop the stream to stop.
    pub async fn watch_resumable(&self, prefix: &str, since: Option<u64>) -> Result<WatchStream> {
        let since = match since {
            Some(s) => s,
            None => self.revision().await? + 1,
        };
        let inner = self.watch(prefix, since).await?;
        let state = Resume {
            client: self.clone(),
            prefix: prefix.to_string(),
            start: since,
            last: None,
            inner: Some(inner),
            backoff: Duration::ZERO,
            done: false,
        };
        Ok(Box::pin(futures::stream::unfold(state, |mut state| async move {
            let item = state.next().await?;
            Some((item, state))
        })))
    }
}

struct Resume {
    client: Client,
    prefix: String,
    /// First revision wanted, until the first event arrives.
    start: u64,
    /// The revision of the last event delivered and the keys delivered at that revision.
    last: Option<(u64, HashSet<String>)>,
    inner: Option<WatchStream>,
    backoff: Duration,
    done: bool,
}

/// Whether a (re)delivered event is new, given the revision of the last event delivered and the
/// keys delivered at that revision; records it if so.
fn admit(last: &mut Option<(u64, HashSet<String>)>, event: &Event) -> bool {
    match last {
        Some((rev, _)) if event.revision < *rev => false,
        Some((rev, keys)) if event.revision == *rev => keys.insert(event.key.clone()),
        _ => {
            *last = Some((event.revision, HashSet::from([event.key.clone()])));
            true
        }
    }
}

impl Resume {
    async fn next(&mut self) -> Option<Result<Event>> {
        loop {
            if self.done {
                return None;
            }
            let Some(inner) = self.inner.as_mut() else {
                if !self.backoff.is_zero() {
                    tokio::time::sleep(self.backoff).await;
                }
                match self.connect().await {
                    Ok(stream) => {
                        self.inner = Some(stream);
                        continue;
                    }
                    Err(e) => return Some(self.failed(e)),
                }
            };
            match inner.next().await {
                Some(Ok(event)) => {
                    self.backoff = Duration::ZERO;
                    if admit(&mut self.last, &event) {
                        return Some(Ok(event));
                    }
                }
                Some(Err(e)) => {
                    self.inner = None;
                    return Some(self.failed(e));
                }
                None => {
                    self.inner = None;
                    return Some(self.failed(Error::Transport("the watch stream ended".into())));
                }
            }
        }
    }

    /// Transport errors schedule a reconnect; others end the stream.
    fn failed(&mut self, err: Error) -> Result<Event> {
        if err.is_transport() {
            self.backoff = (self.backoff * 2).clamp(Duration::from_millis(100), Duration::from_secs(5));
        } else {
            self.done = true;
        }
        Err(err)
    }

    async fn connect(&mut self) -> Result<WatchStream> {
        // Inclusive: the rest of a batch cut off mid-way comes again; seen keys are skipped.
        let since = self.last.as_ref().map_or(self.start, |(rev, _)| *rev);
        self.client.watch(&self.prefix, since).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resuming_mid_batch_skips_exactly_what_was_delivered() {
        let ev = |key: &str, revision| Event {
            kind: EventKind::Put,
            key: key.into(),
            revision,
            size: None,
            etag: None,
            expires_at_ms: None,
        };
        let mut last = None;
        // First connection: 9, then the first two keys of batch 10 before it broke.
        assert!(admit(&mut last, &ev("x", 9)));
        assert!(admit(&mut last, &ev("a", 10)));
        assert!(admit(&mut last, &ev("b", 10)));
        // Reconnected from 10 (inclusive): the whole batch comes again.
        assert!(!admit(&mut last, &ev("a", 10)));
        assert!(!admit(&mut last, &ev("b", 10)));
        assert!(admit(&mut last, &ev("c", 10)), "the rest of the batch is delivered");
        assert!(!admit(&mut last, &ev("x", 9)), "older revisions are never repeated");
        assert!(admit(&mut last, &ev("a", 11)));
        assert!(!admit(&mut last, &ev("c", 10)));
    }

    #[test]
    fn lines() {
        let Parsed::Event(e) =
            parse_line(br#"{"type":"put","key":"a/b","revision":12,"size":3,"etag":"abc","expires_at_ms":99}"#)
        else {
            panic!("event")
        };
        assert_eq!((e.kind, e.key.as_str(), e.revision, e.size), (EventKind::Put, "a/b", 12, Some(3)));
        assert!(matches!(parse_line(br#"{"type":"heartbeat","revision":5}"#), Parsed::Skip));
        assert!(matches!(parse_line(b""), Parsed::Skip));
        let compacted = br#"{"type":"error","code":"RevisionCompacted","message":"revision 2 is too old to replay: history starts at revision 77"}"#;
        assert!(matches!(parse_line(compacted), Parsed::Fatal(Error::Compacted { oldest: 77 })));
        let with_field = br#"{"type":"error","code":"RevisionCompacted","message":"x","oldest":5}"#;
        assert!(matches!(parse_line(with_field), Parsed::Fatal(Error::Compacted { oldest: 5 })));
        assert!(matches!(parse_line(b"not json"), Parsed::Fatal(Error::Protocol(_))));
    }
}
