//! A client for upload tests: sends a body in 64 KiB frames and holds the last one until the
//! origin has received most of the rest, which only happens when whatever sits between them
//! streams the body on while it arrives.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// The frame size of [`upload_holding_the_end`].
const FRAME: usize = 64 << 10;

/// What the upload got back.
pub struct Uploaded {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// POSTs `body` (over 64 KiB) to `url` with `host` in 64 KiB frames, holding the last frame
/// until `received()` reaches `wanted` bytes; panics when it does not within 10 s.
pub async fn upload_holding_the_end(
    url: &str,
    host: &str,
    body: &[u8],
    wanted: u64,
    received: impl Fn() -> u64,
) -> Uploaded {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let frames = futures::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|chunk| chunk.map(|c| Ok::<_, std::io::Error>(Frame::data(c))))
    });
    let client = Client::builder(TokioExecutor::new()).build_http();
    let req = Request::post(url).header("host", host).body(StreamBody::new(frames)).expect("request");
    let answer = tokio::spawn(async move {
        let resp = client.request(req).await.expect("an answer");
        let (parts, body) = resp.into_parts();
        Uploaded { status: parts.status, headers: parts.headers, body: body.collect().await.expect("body").to_bytes() }
    });
    let (head, last) = body.split_at(body.len() - FRAME);
    for chunk in head.chunks(FRAME) {
        tx.send(Bytes::copy_from_slice(chunk)).await.expect("the upload is read");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while received() < wanted {
        assert!(Instant::now() < deadline, "the origin got {} of the first {wanted} bytes", received());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tx.send(Bytes::copy_from_slice(last)).await.expect("last frame");
    drop(tx);
    answer.await.expect("answer")
}
