//! Write-back: an origin answer carrying `x-meridian-store: ttl=<duration>` is written into
//! the bucket under the requested key while it streams to the client. The engine commits the
//! object only when the whole body has arrived: an answer cut off (origin failure, client gone,
//! node killed) stores nothing.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderMap, Response, header};
use http_body_util::{BodyStream, StreamBody};
use meridian_engine::record::ObjectHeaders;
use meridian_engine::{Body, Engine, Integrity, PutRequest};
use meridian_http::{ResponseBody, boxed};
use tokio::sync::mpsc;

use super::flight::FlightGuard;

/// The response header asking for write-back.
pub const STORE_HEADER: &str = "x-meridian-store";
/// Frames buffered between the client's stream and the bucket write.
const QUEUE: usize = 16;

/// The TTL asked for by `x-meridian-store`, if the answer asks to be stored.
pub fn store_ttl(headers: &HeaderMap) -> Option<Result<Duration, String>> {
    let value = headers.get(STORE_HEADER)?;
    let text = value.to_str().unwrap_or("");
    let parsed = text
        .split(';')
        .map(str::trim)
        .find_map(|field| field.strip_prefix("ttl="))
        .ok_or_else(|| format!("{STORE_HEADER} {text:?} has no ttl=<duration>"))
        .and_then(|ttl| meridian_common::duration::parse_duration(ttl).map_err(|e| e.to_string()));
    Some(parsed)
}

/// Where and for how long the answer is stored.
pub struct StoreAt {
    pub engine: Engine,
    pub bucket: String,
    pub key: String,
    pub ttl: Duration,
    /// User metadata of the stored object (a variant's source).
    pub metadata: std::collections::BTreeMap<String, String>,
    /// Released (waking the followers) once the write has committed or failed.
    pub guard: Option<FlightGuard>,
}

enum Piece {
    Data(Bytes),
    End,
}

/// `resp` with its body copied into the bucket as it streams.
pub fn tee(resp: Response<ResponseBody>, mut at: StoreAt) -> Response<ResponseBody> {
    let (mut parts, body) = resp.into_parts();
    parts.headers.remove(STORE_HEADER);
    let (pieces, received) = mpsc::channel(QUEUE);
    let mut object_headers = object_headers(&parts.headers);
    object_headers.user_metadata = std::mem::take(&mut at.metadata);
    let content_length = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok());
    tokio::spawn(store(at, object_headers, content_length, received));
    Response::from_parts(parts, copy_to(body, pieces, content_length))
}

/// The client's body, each data frame also sent to `pieces`, then `End` once it finished: at
/// the end of the stream, or as soon as `length` bytes went by (the server stops reading a
/// body with a declared length once it has them all).
fn copy_to(body: ResponseBody, pieces: mpsc::Sender<Piece>, length: Option<u64>) -> ResponseBody {
    let frames = BodyStream::new(body);
    let start = (frames, Some(pieces), 0u64);
    let stream = futures::stream::unfold(start, move |(mut frames, mut pieces, mut copied)| async move {
        match frames.next().await {
            Some(Ok(frame)) => {
                if let (Some(data), Some(sender)) = (frame.data_ref(), pieces.as_ref()) {
                    copied += data.len() as u64;
                    if sender.send(Piece::Data(data.clone())).await.is_err() {
                        // The write gave up; the client still gets the whole answer.
                        pieces = None;
                    }
                }
                if length == Some(copied)
                    && let Some(sender) = pieces.take()
                {
                    let _ = sender.send(Piece::End).await;
                }
                Some((Ok(frame), (frames, pieces, copied)))
            }
            // No `End`: the write is aborted.
            Some(Err(err)) => Some((Err(err), (frames, None, copied))),
            None => {
                if let Some(sender) = pieces.take() {
                    let _ = sender.send(Piece::End).await;
                }
                None
            }
        }
    });
    boxed(StreamBody::new(stream))
}

async fn store(at: StoreAt, headers: ObjectHeaders, content_length: Option<u64>, received: mpsc::Receiver<Piece>) {
    let _guard = at.guard;
    let body: Body = Box::pin(futures::stream::unfold((received, false), |(mut received, ended)| async move {
        if ended {
            return None;
        }
        match received.recv().await {
            Some(Piece::Data(data)) => Some((Ok(data), (received, false))),
            Some(Piece::End) => None,
            None => Some((Err("the origin's answer was cut off before its end".into()), (received, true))),
        }
    }));
    let expires_at_ms = i64::try_from(at.ttl.as_millis()).ok().map(|ttl| meridian_engine::now_ms().saturating_add(ttl));
    let req = PutRequest {
        bucket: at.bucket.clone(),
        key: at.key.clone(),
        body,
        headers,
        integrity: Integrity { content_length, ..Default::default() },
        conditions: Default::default(),
        expires_at_ms,
        protection: None,
        form_upload: false,
    };
    match at.engine.put_object(req).await {
        Ok(outcome) => {
            tracing::debug!(bucket = %at.bucket, key = %at.key, size = outcome.size, "stored the origin's answer")
        }
        Err(err) => {
            tracing::warn!(bucket = %at.bucket, key = %at.key, error = %err, "the origin's answer was not stored")
        }
    }
}

fn object_headers(headers: &HeaderMap) -> ObjectHeaders {
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    ObjectHeaders {
        content_type: text(header::CONTENT_TYPE),
        content_encoding: text(header::CONTENT_ENCODING),
        content_disposition: text(header::CONTENT_DISPOSITION),
        content_language: text(header::CONTENT_LANGUAGE),
        cache_control: text(header::CACHE_CONTROL),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_store(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(STORE_HEADER, value.parse().expect("value"));
        headers
    }

    #[test]
    fn store_directives() {
        assert_eq!(store_ttl(&HeaderMap::new()), None);
        assert_eq!(store_ttl(&with_store("ttl=1h")), Some(Ok(Duration::from_secs(3600))));
        assert_eq!(store_ttl(&with_store("private; ttl=90s")), Some(Ok(Duration::from_secs(90))));
        assert!(matches!(store_ttl(&with_store("forever")), Some(Err(e)) if e.contains("ttl=")));
        assert!(matches!(store_ttl(&with_store("ttl=soon")), Some(Err(_))));
    }
}
