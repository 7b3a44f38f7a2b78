//! The serving layer's promises, on a real loopback listener: limits hold, one address cannot
//! starve another, shutdown drains, TLS works with HTTP/2 by ALPN and picks up a renewed
//! certificate, and every request gets an id and a report.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use meridian_http::{
    ClientTls, Observer, Policy, RequestBody, RequestInfo, RequestRecord, ResponseBody, Server, ServerTls, TlsFiles,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::oneshot;

/// `/big/N` streams N bytes in 1 MiB frames (slowly when `?slow`), `/echo` returns the body's
/// length, anything else answers "ok".
async fn handle(req: Request<RequestBody>, info: RequestInfo) -> Response<ResponseBody> {
    info.notes.set_principal("tester");
    info.notes.set_operation("test.op");
    let path = req.uri().path().to_string();
    if let Some(n) = path.strip_prefix("/big/") {
        let total: u64 = n.parse().unwrap_or(0);
        let slow = req.uri().query() == Some("slow");
        let frames = futures::stream::unfold(total, move |left| async move {
            if left == 0 {
                return None;
            }
            if slow {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let n = left.min(1 << 20);
            let frame = http_body::Frame::data(Bytes::from(vec![7u8; n as usize]));
            Some((Ok::<_, std::io::Error>(frame), left - n))
        });
        return Response::new(meridian_http::boxed(http_body_util::StreamBody::new(frames)));
    }
    if path == "/echo" {
        return match req.into_body().collect().await {
            Ok(body) => Response::new(meridian_http::full(body.to_bytes().len().to_string())),
            Err(e) => meridian_http::text_response(StatusCode::PAYLOAD_TOO_LARGE, &e.to_string()),
        };
    }
    Response::new(meridian_http::full("ok"))
}

#[derive(Default)]
struct Records(Mutex<Vec<RequestRecord>>);

impl Observer for Records {
    fn request_done(&self, record: &RequestRecord) {
        self.0.lock().unwrap().push(record.clone());
    }
}

struct Running {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<std::io::Result<()>>,
    records: Arc<Records>,
}

impl Running {
    async fn stop(mut self) -> Duration {
        let started = Instant::now();
        let _ = self.stop.take().unwrap().send(());
        self.done.await.unwrap().unwrap();
        started.elapsed()
    }
}

async fn start(policy: Policy, tls: Option<ServerTls>) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let records = Arc::new(Records::default());
    let server = Server::new(policy).tls(tls).observer(records.clone());
    let (stop, stopped) = oneshot::channel::<()>();
    let done = tokio::spawn(server.serve(listener, meridian_http::handler_fn(handle), async {
        let _ = stopped.await;
    }));
    Running { addr, stop: Some(stop), done, records }
}

fn policy() -> Policy {
    Policy {
        max_connections: 64,
        max_connections_per_address: 16,
        max_headers: 20,
        max_header_bytes: 8 << 10,
        header_read_timeout: Duration::from_millis(1500),
        min_header_read_timeout: Duration::from_millis(500),
        idle_timeout: Duration::from_secs(2),
        max_body_bytes: 1000,
        drain_deadline: Duration::from_secs(20),
        ..Policy::s3()
    }
}

/// Sends `head` and reads until the server closes or `limit` passes; the status line's code
/// and how long the server took to answer or close.
async fn raw_exchange(addr: SocketAddr, head: &[u8], limit: Duration) -> (Option<u16>, Duration) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(head).await.unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            if got.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&got);
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok());
    (status, started.elapsed())
}

#[tokio::test]
async fn too_many_headers_get_431_and_large_bodies_413() {
    let server = start(policy(), None).await;
    let mut head = String::from("GET / HTTP/1.1\r\nhost: x\r\n");
    for i in 0..30 {
        head.push_str(&format!("x-h{i}: v\r\n"));
    }
    head.push_str("\r\n");
    let (status, _) = raw_exchange(server.addr, head.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(status, Some(431), "too many header fields");

    let big = format!("GET / HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n", "a".repeat(20 << 10));
    let (status, _) = raw_exchange(server.addr, big.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(status, Some(431), "header bytes over the limit");

    let declared = b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 5000\r\n\r\n";
    let (status, _) = raw_exchange(server.addr, declared, Duration::from_secs(5)).await;
    assert_eq!(status, Some(413), "declared body over the limit is refused before it is read");

    // A chunked body that grows past the limit is cut off while it is read.
    let mut chunked = b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..3 {
        chunked.extend_from_slice(format!("1f4\r\n{}\r\n", "b".repeat(500)).as_bytes());
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let (status, _) = raw_exchange(server.addr, &chunked, Duration::from_secs(5)).await;
    assert_eq!(status, Some(413), "a streamed body past the limit");

    let fine = b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nabc";
    let (status, _) = raw_exchange(server.addr, fine, Duration::from_secs(5)).await;
    assert_eq!(status, Some(200));
    server.stop().await;
}

#[tokio::test]
async fn slow_headers_are_cut_off_and_idle_connections_closed() {
    let server = start(policy(), None).await;
    // A request line, then nothing: cut off at the header read time (1.5 s).
    let (status, waited) = raw_exchange(server.addr, b"GET / HTTP/1.1\r\nhost: x\r\n", Duration::from_secs(10)).await;
    assert!(status.is_none_or(|s| s == 408), "{status:?}");
    assert!(waited >= Duration::from_millis(1000) && waited < Duration::from_secs(5), "cut off after {waited:?}");

    // A connection that never sends anything is closed too (no request head in time).
    let (_, waited) = raw_exchange(server.addr, b"", Duration::from_secs(10)).await;
    assert!(waited < Duration::from_secs(5), "silent connection closed after {waited:?}");

    // A kept-alive connection with no request is closed once idle (2 s).
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let started = Instant::now();
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "idle connection still open after 10 s");
    assert!(started.elapsed() >= Duration::from_millis(1400), "closed too early: {:?}", started.elapsed());
    server.stop().await;
}

/// Opens `count` connections from `ip` that send half a request head and stall.
async fn half_open(addr: SocketAddr, ip: [u8; 4], count: usize) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for _ in 0..count {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from((ip, 0))).unwrap();
        match tokio::time::timeout(Duration::from_secs(2), socket.connect(addr)).await {
            Ok(Ok(mut stream)) => {
                let _ = stream.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nx-slow").await;
                held.push(stream);
            }
            _ => break,
        }
    }
    held
}

async fn get_from(addr: SocketAddr, ip: [u8; 4]) -> (Option<u16>, Duration) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((ip, 0))).unwrap();
    let started = Instant::now();
    let mut stream = socket.connect(addr).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut got)).await;
    let text = String::from_utf8_lossy(&got);
    (text.split_whitespace().nth(1).and_then(|s| s.parse().ok()), started.elapsed())
}

#[tokio::test]
async fn one_address_cannot_starve_another() {
    let policy = Policy {
        max_connections: 256,
        max_connections_per_address: 32,
        header_read_timeout: Duration::from_secs(30),
        ..policy()
    };
    let server = start(policy, None).await;
    let held = half_open(server.addr, [127, 0, 0, 1], 600).await;
    assert!(held.len() >= 500, "opened only {} connections", held.len());
    let (status, took) = get_from(server.addr, [127, 0, 0, 2]).await;
    assert_eq!(status, Some(200), "another address is served");
    assert!(took < Duration::from_secs(1), "answered after {took:?}");
    // The flooding address itself is told why, at once.
    let (status, took) = get_from(server.addr, [127, 0, 0, 1]).await;
    assert_eq!(status, Some(503));
    assert!(took < Duration::from_secs(1), "refusal took {took:?}");
    drop(held);
    server.stop().await;
}

#[tokio::test]
async fn header_time_shrinks_when_connections_run_short() {
    let policy = Policy {
        max_connections: 40,
        max_connections_per_address: 40,
        header_read_timeout: Duration::from_secs(30),
        min_header_read_timeout: Duration::from_millis(500),
        ..policy()
    };
    let server = start(policy, None).await;
    // 38 of 40 slots taken by stalled clients from several addresses: a newcomer's slow head is
    // cut off within a second or two, not after 30 s.
    let mut held = Vec::new();
    for last in 1..=4u8 {
        held.extend(half_open(server.addr, [127, 0, 1, last], 9).await);
    }
    held.extend(half_open(server.addr, [127, 0, 1, 9], 2).await);
    assert_eq!(held.len(), 38);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, waited) = raw_exchange(server.addr, b"GET / HTTP/1.1\r\n", Duration::from_secs(30)).await;
    assert!(waited < Duration::from_secs(3), "stalled head kept for {waited:?} under pressure");
    drop(held);
    server.stop().await;
}

#[tokio::test]
async fn graceful_shutdown_lets_a_large_response_finish() {
    let server = start(policy(), None).await;
    let addr = server.addr;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let uri: http::Uri = format!("http://{addr}/big/{}?slow", 100u64 << 20).parse().unwrap();
    let resp = client.get(uri).await.unwrap();
    assert_eq!(resp.status(), 200);
    let reading = tokio::spawn(async move { resp.into_body().collect().await.map(|b| b.to_bytes().len()) });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let records = server.records.clone();
    let stopping = tokio::spawn(server.stop());
    // New connections are refused once shutdown began...
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(TcpStream::connect(addr).await.is_err(), "still accepting after shutdown began");
    // ...while the open response streams to its end.
    let len = reading.await.unwrap().expect("the in-flight body was cut off");
    assert_eq!(len, 100 << 20);
    stopping.await.unwrap();
    let records = records.0.lock().unwrap();
    let big = records.iter().find(|r| r.path.starts_with("/big/")).expect("the big GET was reported");
    assert!(big.completed);
    assert_eq!(big.bytes_out, 100 << 20);
}

#[tokio::test]
async fn every_request_gets_an_id_and_a_report() {
    let server = start(policy(), None).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<String>();
    let req = Request::post(format!("http://{}/echo?X-Amz-Signature=secret", server.addr)).body("hello".to_string());
    let resp = client.request(req.unwrap()).await.unwrap();
    let id = resp.headers().get("x-amz-request-id").expect("request id header").to_str().unwrap().to_string();
    assert_eq!(id.len(), 16);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"5");
    let records = server.records.clone();
    server.stop().await;
    let records = records.0.lock().unwrap();
    let r = records.iter().find(|r| r.id.to_string() == id).expect("reported under its id");
    assert_eq!((r.path.as_str(), r.status.as_u16(), r.bytes_in, r.bytes_out), ("/echo", 200, 5, 1));
    assert_eq!((r.principal.as_deref(), r.operation.as_deref()), (Some("tester"), Some("test.op")));
    assert!(!r.path.contains("secret"));
}

/// A self-signed certificate for 127.0.0.1/localhost, written as PEM files in `dir`.
fn write_certificate(dir: &Path, name: &str) -> (TlsFiles, String) {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let files = TlsFiles { cert: dir.join(format!("{name}.crt")), key: dir.join(format!("{name}.key")) };
    std::fs::write(&files.cert, cert.cert.pem()).unwrap();
    std::fs::write(&files.key, cert.signing_key.serialize_pem()).unwrap();
    (files, cert.cert.pem())
}

async fn tls_get(addr: SocketAddr, ca: &Path) -> Result<(http::Version, String), String> {
    let tls = ClientTls::new(Some(ca)).unwrap();
    let connector = meridian_http::client::connector(&tls, Duration::from_secs(5), false);
    let client = Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(connector);
    let resp = client.get(format!("https://127.0.0.1:{}/", addr.port()).parse().unwrap()).await;
    let resp = resp.map_err(|e| meridian_common::errors::chain(&e))?;
    let version = resp.version();
    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((version, String::from_utf8_lossy(&body).into_owned()))
}

#[tokio::test]
async fn tls_serves_http2_by_alpn_and_reloads_a_renewed_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (files, _) = write_certificate(dir.path(), "server");
    let tls = ServerTls::load(files.clone()).unwrap();
    let server = start(policy(), Some(tls)).await;
    let first_ca = dir.path().join("server.crt");
    std::fs::copy(&files.cert, dir.path().join("first-ca.pem")).unwrap();
    let (version, body) = tls_get(server.addr, &first_ca).await.unwrap();
    assert_eq!((version, body.as_str()), (http::Version::HTTP_2, "ok"));

    // Plain HTTP on the TLS port is refused.
    let (status, _) = raw_exchange(server.addr, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", Duration::from_secs(5)).await;
    assert_eq!(status, None);

    // A renewed certificate (a new key pair) is served without a restart.
    let (renewed, _) = write_certificate(dir.path(), "renewed");
    std::fs::rename(&renewed.key, &files.key).unwrap();
    std::fs::rename(&renewed.cert, &files.cert).unwrap();
    let new_ca = dir.path().join("server.crt");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let old = tls_get(server.addr, &dir.path().join("first-ca.pem")).await;
        let new = tls_get(server.addr, &new_ca).await;
        if old.is_err() && new.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "renewed certificate not served: old {old:?}, new {new:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A broken file keeps the last good certificate.
    std::fs::write(&files.key, "not a key").unwrap();
    tokio::time::sleep(meridian_http::tls::RELOAD_CHECK * 2).await;
    assert!(tls_get(server.addr, &new_ca).await.is_ok(), "a bad key file took the listener down");
    server.stop().await;
}

#[test]
fn mismatched_certificate_and_key_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = write_certificate(dir.path(), "a");
    let (b, _) = write_certificate(dir.path(), "b");
    let err = ServerTls::load(TlsFiles { cert: a.cert, key: b.key }).err().expect("mismatch accepted");
    assert!(err.to_string().contains("does not belong"), "{err}");
    let err = ServerTls::load(TlsFiles { cert: dir.path().join("none.crt"), key: a.key }).err().expect("missing file");
    assert!(err.to_string().contains("cannot read"), "{err}");
}

/// A policy that takes bodies large enough for the unread-body tests.
fn large_bodies() -> Policy {
    Policy { max_body_bytes: 1 << 30, ..policy() }
}

/// Writes `bytes` and reads what comes back until the server closes or `limit` passes.
async fn send_and_read_all(addr: SocketAddr, bytes: &[u8], limit: Duration) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(limit, stream.read_to_end(&mut got)).await;
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn a_small_unread_body_is_read_for_the_client_and_the_connection_kept() {
    let server = start(large_bodies(), None).await;
    // The default route answers without reading the body; the next request follows the body.
    let mut bytes = b"PUT /refused HTTP/1.1\r\nhost: x\r\ncontent-length: 300000\r\n\r\n".to_vec();
    bytes.extend_from_slice(&vec![b'z'; 300_000]);
    bytes.extend_from_slice(b"GET /next HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    let got = send_and_read_all(server.addr, &bytes, Duration::from_secs(10)).await;
    assert_eq!(got.matches("HTTP/1.1 200 OK").count(), 2, "both requests answered on one connection:\n{got}");
    assert!(!got.contains("400"), "body bytes were read as a request:\n{got}");
    server.stop().await;
}

#[tokio::test]
async fn a_refused_expect_continue_request_closes_instead_of_reading_leftovers_as_a_request() {
    let server = start(large_bodies(), None).await;
    // The client got no 100 Continue, so it may skip the body and send its next request at once
    // (as botocore does after a final answer). Those bytes are not the body.
    let bytes = b"PUT /refused HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 10\r\n\r\n\
        GET /next HTTP/1.1\r\nhost: x\r\n\r\n";
    for _ in 0..5 {
        let got = send_and_read_all(server.addr, bytes, Duration::from_secs(5)).await;
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "no final answer first:\n{got}");
        assert!(!got.contains("100 Continue"), "asked for a body nobody reads:\n{got}");
        assert!(got.to_ascii_lowercase().contains("connection: close"), "the close is not announced:\n{got}");
        assert_eq!(got.matches("HTTP/1.1").count(), 1, "leftover bytes answered as a request:\n{got}");
    }
    server.stop().await;
}

/// PUTs 32 MiB to a route that answers without reading the body, three times.
async fn put_large_unread_bodies(base: &str, http1_only: bool, ca: Option<&Path>) {
    let connector = meridian_http::client::connector(&ClientTls::new(ca).unwrap(), Duration::from_secs(5), http1_only);
    let client = Client::builder(TokioExecutor::new()).build::<_, http_body_util::Full<Bytes>>(connector);
    for _ in 0..3 {
        let body = http_body_util::Full::new(Bytes::from(vec![b'z'; 32 << 20]));
        let req = Request::put(format!("{base}/refused")).body(body).unwrap();
        let resp = client.request(req).await.map_err(|e| meridian_common::errors::chain(&e));
        let resp = resp.expect("the answer was lost to a reset");
        assert_eq!(resp.status(), 200);
        if resp.version() == http::Version::HTTP_11 {
            assert_eq!(resp.headers().get(http::header::CONNECTION).unwrap(), "close");
        }
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");
    }
}

#[tokio::test]
async fn a_large_unread_body_gets_its_answer_not_a_reset() {
    let server = start(large_bodies(), None).await;
    put_large_unread_bodies(&format!("http://{}", server.addr), true, None).await;
    server.stop().await;

    // Over TLS the lingering close reads under the TLS session; HTTP/2 resets only the stream.
    let dir = tempfile::tempdir().unwrap();
    let (files, _) = write_certificate(dir.path(), "server");
    let server = start(large_bodies(), Some(ServerTls::load(files.clone()).unwrap())).await;
    let base = format!("https://127.0.0.1:{}", server.addr.port());
    put_large_unread_bodies(&base, true, Some(&files.cert)).await;
    put_large_unread_bodies(&base, false, Some(&files.cert)).await;
    server.stop().await;
}
