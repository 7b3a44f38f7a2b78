//! Node-to-node fetch: the real peer HTTP server on loopback, the PeerClient, the chunk cache.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures::StreamExt;
use meridian_blob::{BlobError, BlobId, BlobStore, CacheOptions, ChunkCache, ChunkSource, PeerClient, PeerFailure};
use meridian_blob::{CopyStreams, chunk_digests, serve_peer};
use meridian_wan::{LinkConfig, WanProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

const TOKEN: &str = "test-cluster-token";

async fn start_peer(store: &BlobStore) -> (SocketAddr, JoinHandle<std::io::Result<()>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (addr, tokio::spawn(serve_peer(listener, store.clone(), TOKEN.to_string(), std::future::pending())))
}

fn tls() -> meridian_http::ClientTls {
    meridian_http::ClientTls::new(None).unwrap()
}

fn client(addr: SocketAddr) -> Arc<PeerClient> {
    Arc::new(PeerClient::new(&format!("http://{addr}"), TOKEN, &tls()).unwrap())
}

/// A peer serving an empty store: its directory, the store, its address and its task.
async fn empty_peer() -> (tempfile::TempDir, BlobStore, SocketAddr, JoinHandle<std::io::Result<()>>) {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path()).unwrap();
    let (addr, server) = start_peer(&store).await;
    (dir, store, addr, server)
}

/// A store holding one blob.
async fn store_with(dir: &std::path::Path, data: &Bytes) -> (BlobStore, BlobId) {
    let store = BlobStore::open(dir).unwrap();
    let id = store.put(data.clone()).await.unwrap();
    (store, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_stream_from_a_peer_through_the_cache_and_warm_reads_stay_local() {
    bounded(60, async {
        let (peer_dir, cache_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let data = data(40 * MIB + 12_345, 100);
        let (store, blob) = store_with(peer_dir.path(), &data).await;
        let (addr, server) = start_peer(&store).await;
        let chunk = 8 * MIB;
        let cache = ChunkCache::open(cache_dir.path(), options(chunk, 1 << 30)).unwrap();
        let peer = client(addr);
        assert_eq!(peer.name(), format!("peer http://{addr}"));

        // 10 MiB from 9 MiB touches chunks 1 and 2.
        let got = read_range(&cache, blob, &data, chunk, 9 * MIB, 10 * MIB, peer.clone()).await.unwrap();
        assert_eq!(got, &data[9 * MIB as usize..19 * MIB as usize]);
        assert_eq!((cache.stats().fetches, cache.stats().fetch_bytes), (2, 2 * chunk));

        // Sixteen readers of the whole blob: one fetch per chunk still missing (0, 3, 4, 5).
        let mut readers = Vec::new();
        for _ in 0..16 {
            let (cache, data, peer) = (cache.clone(), data.clone(), peer.clone());
            readers.push(tokio::spawn(async move {
                let got = read_range(&cache, blob, &data, chunk, 0, data.len() as u64, peer).await.unwrap();
                assert!(got == data);
            }));
        }
        for reader in readers {
            reader.await.unwrap();
        }
        let stats = cache.stats();
        assert_eq!(stats.fetches, 6, "{stats:?}");
        assert_eq!(stats.fetch_bytes, data.len() as u64);
        assert_eq!(stats.entries, 6);

        // Warm: nothing more from the peer, even with the peer gone.
        server.abort();
        let got = read_range(&cache, blob, &data, chunk, 0, data.len() as u64, peer.clone()).await.unwrap();
        assert!(got == data);
        assert_eq!(cache.stats().fetch_bytes, data.len() as u64);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_a_clear_error() {
    bounded(30, async {
        let (peer_dir, cache_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let data = data(MIB, 101);
        let (store, blob) = store_with(peer_dir.path(), &data).await;
        let (addr, _server) = start_peer(&store).await;
        let cache = ChunkCache::open(cache_dir.path(), options(MIB, 1 << 30)).unwrap();
        let wrong = Arc::new(PeerClient::new(&format!("http://{addr}"), "not-the-token", &tls()).unwrap());
        let (err, _) = read_range(&cache, blob, &data, MIB, 0, MIB, wrong).await.unwrap_err();
        assert!(matches!(&err, BlobError::Peer { failure: PeerFailure::Unauthorized, peer } if *peer == format!("http://{addr}")));
        let text = err.to_string();
        assert!(text.contains(&addr.to_string()) && text.contains("401") && text.contains("same cluster token"), "{text}");
        assert_eq!(cache.stats().entries, 0);
        assert_eq!(tmp_files(cache_dir.path()), 0);
    })
    .await;
}

/// One request on a fresh connection; the status, the head as text, and the body.
async fn raw_body(addr: SocketAddr, request: &str) -> (u16, String, Vec<u8>) {
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    conn.read_to_end(&mut out).await.unwrap();
    let split = out.windows(4).position(|w| w == b"\r\n\r\n").map_or(out.len(), |p| p + 4);
    let head = String::from_utf8_lossy(&out[..split]).to_string();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head, out[split..].to_vec())
}

async fn raw(addr: SocketAddr, request: &str) -> (u16, String) {
    let (status, head, body) = raw_body(addr, request).await;
    (status, head + &String::from_utf8_lossy(&body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_answers_each_bad_request_with_its_own_status() {
    bounded(30, async {
        let peer_dir = tempfile::tempdir().unwrap();
        let data = data(1000, 102);
        let (store, blob) = store_with(peer_dir.path(), &data).await;
        let (addr, _server) = start_peer(&store).await;
        let req = |method: &str, target: &str, token: Option<&str>| {
            let token = token.map(|t| format!("x-meridian-cluster-token: {t}\r\n")).unwrap_or_default();
            format!("{method} {target} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n{token}\r\n")
        };
        let path = format!("/_meridian/blob/{blob}");

        let (status, head, body) = raw_body(addr, &req("GET", &format!("{path}?offset=10&len=20"), Some(TOKEN))).await;
        assert_eq!(status, 200, "{head}");
        assert!(head.contains("content-length: 20\r\n") && head.contains("x-meridian-blob-size: 1000\r\n"), "{head}");
        assert_eq!(body, &data[10..30]);
        let (status, head, body) = raw_body(addr, &req("GET", &path, Some(TOKEN))).await;
        assert_eq!(status, 200);
        assert!(head.contains("content-length: 1000\r\n") && body == data, "whole blob by default");
        let (status, text) = raw(addr, &req("HEAD", &format!("{path}?offset=100"), Some(TOKEN))).await;
        assert_eq!(status, 200);
        assert!(text.contains("content-length: 900\r\n") && text.ends_with("\r\n\r\n"), "{text}");

        for token in [None, Some("wrong"), Some("")] {
            let (status, text) = raw(addr, &req("GET", &path, token)).await;
            assert_eq!(status, 401, "{token:?}: {text}");
            assert!(text.contains("x-meridian-cluster-token"));
            assert!(!text.contains("x-meridian-blob-size"), "nothing about the blob without the token");
        }
        let unknown = BlobId::random();
        assert_eq!(raw(addr, &req("GET", &format!("/_meridian/blob/{unknown}"), Some(TOKEN))).await.0, 404);
        assert_eq!(raw(addr, &req("GET", "/_meridian/other", Some(TOKEN))).await.0, 404);
        for bad in ["/_meridian/blob/xyz", "/_meridian/blob/1", "/_meridian/blob/../../etc/passwd"] {
            assert_eq!(raw(addr, &req("GET", bad, Some(TOKEN))).await.0, 400, "{bad}");
        }
        assert_eq!(raw(addr, &req("GET", &format!("{path}?offset=abc"), Some(TOKEN))).await.0, 400);
        let (status, text) = raw(addr, &req("GET", &format!("{path}?offset=990&len=11"), Some(TOKEN))).await;
        assert_eq!(status, 416);
        assert!(text.contains("content-range: bytes */1000\r\n"), "{text}");
        assert_eq!(raw(addr, &req("GET", &format!("{path}?offset=1001"), Some(TOKEN))).await.0, 416);
        assert_eq!(
            raw(addr, &req("GET", &format!("{path}?offset=18446744073709551615&len=2"), Some(TOKEN))).await.0,
            416
        );
        let (status, text) = raw(addr, &req("PATCH", &path, Some(TOKEN))).await;
        assert_eq!(status, 405);
        assert!(text.contains("allow: GET, HEAD, PUT, POST, DELETE\r\n"), "{text}");
        // Striped copies: a layout out of bounds, a stripe beyond it, a length that does not fit.
        let fresh = format!("/_meridian/blob/{}", BlobId::random());
        let layout = "chunk=1048576&stripes=2&segment=65536";
        for (method, query, why) in [
            ("POST", String::new(), "the query needs chunk=<number>"),
            ("POST", format!("{layout}&segments=2"), "the query needs size=<number>"),
            ("POST", format!("{layout}&segments=2&size=65536"), "65536 bytes do not make 2 segments of 65536"),
            ("POST", format!("{layout}&segments=0&size=0"), "0 bytes do not make 0 segments"),
            ("PUT", "chunk=1048576&stripes=1&segment=65536&stripe=0".into(), "stripes=1 is outside 2..=8"),
            ("PUT", "chunk=1048576&stripes=2&segment=100&stripe=0".into(), "segment=100 is outside"),
            ("PUT", format!("{layout}&stripe=2"), "stripe=2 is not below stripes=2"),
            ("PUT", format!("{layout}&stripe=x"), "stripe=x is not a byte count"),
        ] {
            let (status, text) = raw(addr, &req(method, &format!("{fresh}?{query}"), Some(TOKEN))).await;
            assert_eq!(status, 400, "{method} {query}: {text}");
            assert!(text.contains(why), "{method} {query}: {text}");
        }
        assert_eq!(store.assemblies_open(), 0, "a refused copy is not kept open");
        assert_eq!(raw(addr, &req("PUT", &path, None)).await.0, 401, "copies need the token too");
        assert_eq!(raw(addr, &req("DELETE", &path, Some("wrong"))).await.0, 401);

        // The client maps them to typed failures.
        let peer = client(addr);
        let err = peer.fetch(unknown, 0, 1).await.err().unwrap();
        assert!(matches!(err, BlobError::Peer { failure: PeerFailure::NotFound(id), .. } if id == unknown), "{err}");
        let err = peer.fetch(blob, 999, 2).await.err().unwrap();
        assert!(matches!(err, BlobError::Peer { failure: PeerFailure::BadRange, .. }), "{err}");
        let bytes: Vec<Bytes> = peer.fetch(blob, 1, 998).await.unwrap().map(|b| b.unwrap()).collect().await;
        assert_eq!(bytes.concat(), &data[1..999]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_killed_mid_transfer_fails_the_read_and_leaves_nothing() {
    bounded(60, async {
        let (peer_dir, cache_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let chunk = 64 * MIB;
        let data = data(chunk, 103);
        let (store, blob) = store_with(peer_dir.path(), &data).await;
        let (addr, server) = start_peer(&store).await;
        // A 16 MiB/s link, so the transfer is still running when the peer dies.
        let link = WanProxy::start("127.0.0.1:0".parse().unwrap(), addr, LinkConfig::none().with_bandwidth(16 * MIB))
            .await
            .unwrap();
        let cache = ChunkCache::open(cache_dir.path(), options(chunk, 1 << 30)).unwrap();
        let peer = client(link.local_addr());
        let digests = chunk_digests(&data, chunk);
        let mut stream = cache.read(blob, chunk, &digests, 0, chunk, peer.clone()).await.unwrap();
        let mut got = 0usize;
        while got < MIB as usize {
            let bytes = stream.next().await.unwrap().unwrap();
            assert_eq!(bytes, data.slice(got..got + bytes.len()));
            got += bytes.len();
        }
        server.abort();
        let err = loop {
            match stream.next().await {
                Some(Ok(bytes)) => {
                    assert_eq!(bytes, data.slice(got..got + bytes.len()));
                    got += bytes.len();
                }
                Some(Err(e)) => break e,
                None => panic!("the stream ended cleanly after {got} bytes of a dead peer"),
            }
        };
        assert!(matches!(&err, BlobError::Peer { failure: PeerFailure::Transfer(_), .. }), "{err}");
        assert!(err.to_string().contains(&link.local_addr().to_string()), "{err}");
        assert!((got as u64) < chunk);
        assert_eq!(cache.stats().entries, 0);
        assert!(entry_files(cache_dir.path()).is_empty(), "no partial entry");
        assert_eq!(tmp_files(cache_dir.path()), 0);

        // The peer comes back: the next read fetches again, whole and verified.
        let (addr, _server) = start_peer(&store).await;
        let got = read_range(&cache, blob, &data, chunk, 0, chunk, client(addr)).await.unwrap();
        assert!(got == data);
        assert_eq!(cache.stats().entries, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_silent_and_stalled_peers_fail_with_their_reason() {
    bounded(30, async {
        let cache_dir = tempfile::tempdir().unwrap();
        let cache =
            ChunkCache::open(cache_dir.path(), CacheOptions { chunk_size: MIB, ..CacheOptions::default() }).unwrap();
        let data = data(4 * MIB, 104);

        // Nobody listening.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let (err, _) = read_range(&cache, BlobId::random(), &data, MIB, 0, 10, client(closed)).await.unwrap_err();
        assert!(matches!(err, BlobError::Peer { failure: PeerFailure::Connect(_), .. }), "{err}");

        // A peer that accepts and never answers.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent_addr = silent.local_addr().unwrap();
        let _hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = silent.accept().await {
                held.push(conn);
            }
        });
        let idle = Duration::from_millis(300);
        let slow =
            Arc::new(PeerClient::with_timeouts(&format!("http://{silent_addr}"), TOKEN, &tls(), idle, idle).unwrap());
        let (err, _) = read_range(&cache, BlobId::random(), &data, MIB, 0, 10, slow).await.unwrap_err();
        assert!(matches!(err, BlobError::Peer { failure: PeerFailure::Timeout(_), .. }), "{err}");
        assert!(err.to_string().contains("no response within 0.3s"), "{err}");

        // A link that goes dark mid-body.
        let peer_dir = tempfile::tempdir().unwrap();
        let (store, blob) = store_with(peer_dir.path(), &data).await;
        let (addr, _server) = start_peer(&store).await;
        let link = WanProxy::start("127.0.0.1:0".parse().unwrap(), addr, LinkConfig::none().with_bandwidth(MIB))
            .await
            .unwrap();
        let peer = Arc::new(
            PeerClient::with_timeouts(
                &format!("http://{}", link.local_addr()),
                TOKEN,
                &tls(),
                idle,
                Duration::from_millis(500),
            )
            .unwrap(),
        );
        let digests = chunk_digests(&data, MIB);
        let mut stream = cache.read(blob, 4 * MIB, &digests, 0, MIB, peer).await.unwrap();
        stream.next().await.unwrap().unwrap();
        link.partition();
        let err = loop {
            if let Err(e) = stream.next().await.unwrap() {
                break e;
            }
        };
        assert!(
            matches!(&err, BlobError::Peer { failure: PeerFailure::Timeout(m), .. } if m.contains("no data for 0.5s")),
            "{err}"
        );
        assert_eq!(cache.stats().entries, 0);
        assert_eq!(tmp_files(cache_dir.path()), 0);
    })
    .await;
}

#[tokio::test]
async fn a_peer_tells_its_clock_to_holders_of_the_token_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path()).unwrap();
    let (addr, server) = start_peer(&store).await;
    let sample = client(addr).clock_sample().await.unwrap();
    // Same machine, same clock: the offset is within the measurement's own error.
    assert!(sample.round_trip_ms >= 0);
    assert!(sample.offset_ms.abs() <= sample.round_trip_ms / 2 + 1, "{sample:?}");
    let stranger = PeerClient::new(&format!("http://{addr}"), "wrong", &tls()).unwrap();
    let err = stranger.clock_sample().await.unwrap_err();
    assert!(matches!(err, meridian_blob::BlobError::Peer { failure: PeerFailure::Unauthorized, .. }), "{err}");
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_is_stored_under_its_id_checked_and_deleted() {
    bounded(30, async {
        let (peer_dir, store, addr, _server) = empty_peer().await;
        let peer = client(addr);
        let data = data(3 * MIB + 17, 105);
        let blob = BlobId::random();
        let stored = peer.put_blob(blob, MIB, pieces(&data, 100_000), CopyStreams::Striped).await.unwrap();
        assert_eq!(stored.size, data.len() as u64);
        assert_eq!(stored.digest, meridian_blob::digest_of_digests(&chunk_digests(&data, MIB)));
        assert_eq!(store.read_all(blob).await.unwrap(), data, "stored under the sender's id");

        // A small body: the 409 comes before the body is read, and a large one could still be
        // in flight when the peer closes the connection (the client then sees a broken pipe).
        let again = futures::stream::iter(vec![Ok(Bytes::from_static(b"again"))]).boxed();
        let err = peer.put_blob(blob, MIB, again, CopyStreams::Striped).await.unwrap_err();
        assert!(matches!(err, BlobError::Peer { failure: PeerFailure::Status(409), .. }), "{err}");

        // A body that breaks off leaves nothing.
        let broken = BlobId::random();
        let parts = vec![Ok(Bytes::from_static(b"half")), Err(BlobError::Task("client went away".into()))];
        assert!(peer.put_blob(broken, MIB, futures::stream::iter(parts).boxed(), CopyStreams::Striped).await.is_err());
        assert!(matches!(store.size(broken).await, Err(BlobError::NotFound(_))));
        assert_eq!(std::fs::read_dir(peer_dir.path().join("tmp")).unwrap().count(), 0);

        peer.delete_blob(blob).await.unwrap();
        assert!(matches!(store.size(blob).await, Err(BlobError::NotFound(_))));
        peer.delete_blob(blob).await.unwrap();
    })
    .await;
}

/// A body cut into pieces of `piece` bytes, as a copy's body.
fn pieces(data: &Bytes, piece: usize) -> futures::stream::BoxStream<'static, Result<Bytes, BlobError>> {
    let chunks: Vec<Result<Bytes, BlobError>> = data.chunks(piece).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
    futures::stream::iter(chunks).boxed()
}

/// Waits (bounded) until the store has no striped copy open.
async fn no_copy_open(store: &BlobStore) {
    for _ in 0..100 {
        if store.assemblies_open() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{} striped copies are still open", store.assemblies_open());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_copy_goes_over_several_connections_at_once() {
    bounded(60, async {
        let (_peer_dir, store, addr, _server) = empty_peer().await;
        // 20 ms each way: one stream carries one 4 MiB window per 40 ms round trip.
        let link = WanProxy::start("127.0.0.1:0".parse().unwrap(), addr, LinkConfig::rtt(Duration::from_millis(40)))
            .await
            .unwrap();
        for (len, piece) in [(24 * MIB + 5, 100_000), (8 * MIB, 1 << 20), (MIB + 1, 4096)] {
            // A fresh client: no pooled connection to reuse.
            let peer = client(link.local_addr());
            let data = data(len, len);
            let blob = BlobId::random();
            let before = link.stats().connections;
            let stored = peer.put_blob(blob, 8 * MIB, pieces(&data, piece), CopyStreams::Striped).await.unwrap();
            assert_eq!(stored.size, len);
            assert_eq!(stored.digest, meridian_blob::digest_of_digests(&chunk_digests(&data, 8 * MIB)));
            assert!(store.read_all(blob).await.unwrap() == data, "{len} bytes stored in order");
            if len >= meridian_blob::stripe::STRIPES * meridian_blob::stripe::SEGMENT {
                let opened = link.stats().connections - before;
                assert!(opened >= meridian_blob::stripe::STRIPES, "{len} bytes went over {opened} new connections");
            }
        }
        // Up to one segment: one stream, as before.
        let peer = client(link.local_addr());
        let before = link.stats().connections;
        let small = data(MIB, 7);
        let blob = BlobId::random();
        let stored = peer.put_blob(blob, 8 * MIB, pieces(&small, 70_000), CopyStreams::Striped).await.unwrap();
        assert_eq!(stored.size, MIB);
        assert!(store.read_all(blob).await.unwrap() == small);
        assert_eq!(link.stats().connections - before, 1);
        // Asked for one stream (a near peer), a long copy takes one connection too.
        let peer = client(link.local_addr());
        let before = link.stats().connections;
        let long = data(8 * MIB, 9);
        let blob = BlobId::random();
        let stored = peer.put_blob(blob, 8 * MIB, pieces(&long, 1 << 20), CopyStreams::One).await.unwrap();
        assert_eq!(stored.digest, meridian_blob::digest_of_digests(&chunk_digests(&long, 8 * MIB)));
        assert!(store.read_all(blob).await.unwrap() == long);
        assert_eq!(link.stats().connections - before, 1, "one stream asked for, one connection opened");
        assert_eq!(store.assemblies_open(), 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_striped_copy_that_breaks_or_exists_leaves_nothing_new() {
    bounded(60, async {
        let (peer_dir, store, addr, _server) = empty_peer().await;
        let peer = client(addr);

        // The sender's body breaks off after some segments went out.
        let data = data(6 * MIB, 11);
        let broken = BlobId::random();
        let mut parts: Vec<Result<Bytes, BlobError>> =
            data.chunks(MIB as usize / 2).take(9).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        parts.push(Err(BlobError::Task("client went away".into())));
        let err =
            peer.put_blob(broken, MIB, futures::stream::iter(parts).boxed(), CopyStreams::Striped).await.unwrap_err();
        assert!(err.to_string().contains("client went away"), "{err}");
        no_copy_open(&store).await;
        assert!(matches!(store.size(broken).await, Err(BlobError::NotFound(_))));
        assert_eq!(std::fs::read_dir(peer_dir.path().join("tmp")).unwrap().count(), 0, "no temporary file left");

        // A copy of a blob already here is refused, and the blob stays as it was.
        let kept = BlobId::random();
        peer.put_blob(kept, MIB, pieces(&data, MIB as usize), CopyStreams::Striped).await.unwrap();
        let other = self::data(6 * MIB, 12);
        let err = peer.put_blob(kept, MIB, pieces(&other, MIB as usize), CopyStreams::Striped).await.unwrap_err();
        assert!(matches!(err, BlobError::Peer { .. }), "{err}");
        no_copy_open(&store).await;
        assert!(store.read_all(kept).await.unwrap() == data, "the blob already here is untouched");
    })
    .await;
}

/// Sends one request with a body on a fresh connection and reads the answer's status.
async fn send_raw(addr: SocketAddr, head: String, body: Bytes) -> u16 {
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&body).await.unwrap();
    let mut out = Vec::new();
    conn.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripes_arriving_out_of_order_are_written_in_order() {
    bounded(30, async {
        let (_peer_dir, store, addr, _server) = empty_peer().await;
        let segment = 64 << 10;
        // Seven segments over two stripes (the last one short): stripe 0 carries 0, 2, 4, 6 and
        // stripe 1 carries 1, 3, 5.
        let data = data(6 * segment as u64 + 1000, 13);
        let blob = BlobId::random();
        let layout = "chunk=65536&stripes=2&segment=65536";
        let stripe = |n: usize| {
            let body: Vec<u8> =
                data.chunks(segment).skip(n).step_by(2).flat_map(|c| c.iter().copied()).collect::<Vec<u8>>();
            let head = format!(
                "PUT /_meridian/blob/{blob}?{layout}&stripe={n} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\
                 x-meridian-cluster-token: {TOKEN}\r\ncontent-length: {}\r\n\r\n",
                body.len()
            );
            send_raw(addr, head, Bytes::from(body))
        };
        // Stripe 1 first: it waits for stripe 0 once it is more than the window ahead.
        let late = tokio::spawn(stripe(1));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!late.is_finished(), "stripe 1 cannot be taken in whole before stripe 0");
        let commit = format!(
            "POST /_meridian/blob/{blob}?{layout}&segments=7&size={} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\
             x-meridian-cluster-token: {TOKEN}\r\ncontent-length: 0\r\n\r\n",
            data.len()
        );
        let committed = tokio::spawn(raw_owned(addr, commit));
        assert_eq!(stripe(0).await, 200);
        assert_eq!(late.await.unwrap(), 200);
        let (status, text) = committed.await.unwrap();
        assert_eq!(status, 201, "{text}");
        let digest = meridian_blob::digest_of_digests(&chunk_digests(&data, 65536));
        assert!(text.contains(&format!("x-meridian-blob-digest: {digest:08x}")), "{text}");
        assert!(store.read_all(blob).await.unwrap() == data);
        assert_eq!(store.assemblies_open(), 0);

        // A commit announcing fewer segments than were sent abandons the copy.
        let blob = BlobId::random();
        let head = format!(
            "PUT /_meridian/blob/{blob}?{layout}&stripe=0 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\
             x-meridian-cluster-token: {TOKEN}\r\ncontent-length: {}\r\n\r\n",
            3 * segment
        );
        assert_eq!(send_raw(addr, head, data.slice(..3 * segment)).await, 200);
        let commit = format!(
            "POST /_meridian/blob/{blob}?{layout}&segments=1&size=65536 HTTP/1.1\r\nhost: x\r\n\
             connection: close\r\nx-meridian-cluster-token: {TOKEN}\r\ncontent-length: 0\r\n\r\n"
        );
        let (status, text) = raw(addr, &commit).await;
        assert_eq!(status, 400, "{text}");
        assert!(text.contains("more than 1 segments were sent"), "{text}");
        assert!(matches!(store.size(blob).await, Err(BlobError::NotFound(_))));
        no_copy_open(&store).await;
    })
    .await;
}

async fn raw_owned(addr: SocketAddr, request: String) -> (u16, String) {
    raw(addr, &request).await
}
