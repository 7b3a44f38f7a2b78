//! The errors of every client operation.

/// What can go wrong with a KV operation. Each refusal the server documents has its own variant,
/// so callers can `match` on the outcome instead of parsing messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A compare-and-set did not hold: the key (or, in a batch, one of its keys) is not at the
    /// revision the write expected. `current` is the revision it is at (0: absent). HTTP 412.
    #[error("{message}")]
    VersionMismatch {
        /// The key's current revision; 0 when it does not exist.
        current: u64,
        /// The server's explanation, e.g. "version mismatch: expected revision 4, current is 7".
        message: String,
    },
    /// Someone else holds the lock (a named lock, or the key lock of a put_transaction): the
    /// seed's `:aborted`. HTTP 409 `LockContended`.
    #[error("{message}")]
    LockContended {
        /// The current holder, as it named itself when it took the lock.
        owner: String,
        /// The server's explanation, naming the lock, the holder and how long it still holds it.
        message: String,
    },
    /// Renew or release with a token that is not the current holder's (the lock expired, or was
    /// taken by someone else since). HTTP 409 `LockNotHeld`.
    #[error("{message}")]
    LockNotHeld {
        /// The server's explanation.
        message: String,
    },
    /// A fenced write carried a token older than the lock's latest grant: a newer holder exists,
    /// and the write was not applied. HTTP 409 `FenceRejected`.
    #[error("{message}")]
    FenceRejected {
        /// The server's explanation, with the stale and the current token.
        message: String,
    },
    /// A watch asked for a revision that is no longer in the server's history. Start again from
    /// a fresh read (e.g. [`crate::Client::list_all`]) and watch from its revision + 1.
    /// HTTP 410 `RevisionCompacted`, or an `error` line in a running watch.
    #[error(
        "revision too old to replay: the server's history starts at revision {oldest}; re-read the keys and watch from a newer revision"
    )]
    Compacted {
        /// The oldest revision the server can still replay.
        oldest: u64,
    },
    /// The bucket does not exist. HTTP 404 `NoSuchBucket`.
    #[error("bucket {bucket:?} does not exist: create it first (e.g. `aws s3 mb s3://{bucket}`)")]
    NoSuchBucket {
        /// The bucket the client was addressing.
        bucket: String,
    },
    /// Any other error response: bad input (400 `InvalidArgument`), authentication (403),
    /// overload (503 `SlowDown`), ...
    #[error("{code} (HTTP {status}): {message}")]
    Service {
        /// HTTP status.
        status: u16,
        /// The S3 error code, e.g. `InvalidArgument`, `AccessDenied`, `SignatureDoesNotMatch`.
        code: String,
        /// The server's message.
        message: String,
    },
    /// The request did not complete: connection refused or reset, timeout, broken stream.
    /// Whether a write was applied is unknown.
    #[error("transport error: {0}")]
    Transport(String),
    /// The server's answer was not what the KV API promises (e.g. a missing revision header).
    #[error("unexpected response: {0}")]
    Protocol(String),
    /// The request was refused before it was sent: bad endpoint, conflicting options, ...
    #[error("invalid input: {0}")]
    InvalidInput(String),
}

impl Error {
    /// True for refusals of a conditional operation that a caller may retry after re-reading:
    /// [`Error::VersionMismatch`], [`Error::LockContended`] and [`Error::FenceRejected`] (the
    /// CLI's exit code 3, "aborted").
    pub fn is_aborted(&self) -> bool {
        matches!(self, Error::VersionMismatch { .. } | Error::LockContended { .. } | Error::FenceRejected { .. })
    }

    /// True when the request may not have reached the server or its answer was lost.
    pub fn is_transport(&self) -> bool {
        matches!(self, Error::Transport(_))
    }
}

/// The result of a client operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The `<Code>` and `<Message>` of an S3 XML error body.
pub(crate) fn parse_xml_error(body: &[u8]) -> (Option<String>, Option<String>) {
    let text = String::from_utf8_lossy(body);
    let field = |name: &str| {
        let open = format!("<{name}>");
        let close = format!("</{name}>");
        let start = text.find(&open)? + open.len();
        let end = text[start..].find(&close)? + start;
        Some(unescape_xml(&text[start..end]))
    };
    (field("Code"), field("Message"))
}

fn unescape_xml(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// Turns an error response into an [`Error`].
pub(crate) fn from_response(status: u16, headers: &http::HeaderMap, body: &[u8], bucket: &str) -> Error {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let (code, message) = parse_xml_error(body);
    let code = code.unwrap_or_else(|| {
        match status {
            404 => "NotFound",
            403 => "Forbidden",
            _ => "",
        }
        .to_string()
    });
    let message = message.unwrap_or_else(|| {
        let text = String::from_utf8_lossy(body).trim().to_string();
        if text.is_empty() || text.starts_with('<') { format!("HTTP {status} {code}") } else { text }
    });
    match (status, code.as_str()) {
        (412, _) => match header("x-meridian-revision").and_then(|v| v.parse().ok()) {
            Some(current) => Error::VersionMismatch { current, message },
            None => Error::Service { status, code, message },
        },
        (409, "LockContended") => {
            let owner = header("x-meridian-lock-owner").unwrap_or_default();
            Error::LockContended { owner, message }
        }
        (409, "LockNotHeld") => Error::LockNotHeld { message },
        (409, "FenceRejected") => Error::FenceRejected { message },
        (410, _) | (_, "RevisionCompacted") => {
            let oldest = header("x-meridian-oldest-revision")
                .and_then(|v| v.parse().ok())
                .or_else(|| oldest_from_message(&message))
                .unwrap_or(0);
            Error::Compacted { oldest }
        }
        (404, "NoSuchBucket") => Error::NoSuchBucket { bucket: bucket.to_string() },
        _ => Error::Service { status, code, message },
    }
}

/// "... history starts at revision 123" → 123.
pub(crate) fn oldest_from_message(message: &str) -> Option<u64> {
    let tail = message.rsplit("revision ").next()?;
    let digits: String = tail.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_errors_are_parsed() {
        let body = b"<?xml version=\"1.0\"?><Error><Code>InvalidArgument</Code><Message>x-meridian-ttl: invalid TTL &quot;5 parsecs&quot;</Message></Error>";
        let (code, message) = parse_xml_error(body);
        assert_eq!(code.as_deref(), Some("InvalidArgument"));
        assert_eq!(message.as_deref(), Some("x-meridian-ttl: invalid TTL \"5 parsecs\""));
    }

    #[test]
    fn statuses_map_to_variants() {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-meridian-revision", http::HeaderValue::from_static("7"));
        let body = b"<Error><Code>PreconditionFailed</Code><Message>version mismatch: expected revision 4, current is 7</Message></Error>";
        assert!(matches!(from_response(412, &headers, body, "b"), Error::VersionMismatch { current: 7, .. }));
        let plain = http::HeaderMap::new();
        assert!(matches!(from_response(412, &plain, body, "b"), Error::Service { status: 412, .. }));
        let body = b"<Error><Code>RevisionCompacted</Code><Message>revision 3 is too old to replay: history starts at revision 90</Message></Error>";
        assert_eq!(from_response(410, &plain, body, "b"), Error::Compacted { oldest: 90 });
        let body = b"<Error><Code>NoSuchBucket</Code><Message>x</Message></Error>";
        assert_eq!(from_response(404, &plain, body, "b"), Error::NoSuchBucket { bucket: "b".into() });
        assert!(from_response(409, &plain, b"<Error><Code>FenceRejected</Code></Error>", "b").is_aborted());
    }
}
