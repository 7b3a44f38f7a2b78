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
use meridian_blob::{chunk_digests, serve_peer};
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
        let (status, text) = raw(addr, &req("POST", &path, Some(TOKEN))).await;
        assert_eq!(status, 405);
        assert!(text.contains("allow: GET, HEAD, PUT, DELETE\r\n"));
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
        let peer_dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(peer_dir.path()).unwrap();
        let (addr, _server) = start_peer(&store).await;
        let peer = client(addr);
        let data = data(3 * MIB + 17, 105);
        let blob = BlobId::random();
        let chunks: Vec<Result<Bytes, BlobError>> =
            data.chunks(100_000).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        let stored = peer.put_blob(blob, MIB, futures::stream::iter(chunks).boxed()).await.unwrap();
        assert_eq!(stored.size, data.len() as u64);
        assert_eq!(stored.digest, meridian_blob::digest_of_digests(&chunk_digests(&data, MIB)));
        assert_eq!(store.read_all(blob).await.unwrap(), data, "stored under the sender's id");

        // A small body: the 409 comes before the body is read, and a large one could still be
        // in flight when the peer closes the connection (the client then sees a broken pipe).
        let again = futures::stream::iter(vec![Ok(Bytes::from_static(b"again"))]).boxed();
        let err = peer.put_blob(blob, MIB, again).await.unwrap_err();
        assert!(matches!(err, BlobError::Peer { failure: PeerFailure::Status(409), .. }), "{err}");

        // A body that breaks off leaves nothing.
        let broken = BlobId::random();
        let parts = vec![Ok(Bytes::from_static(b"half")), Err(BlobError::Task("client went away".into()))];
        assert!(peer.put_blob(broken, MIB, futures::stream::iter(parts).boxed()).await.is_err());
        assert!(matches!(store.size(broken).await, Err(BlobError::NotFound(_))));
        assert_eq!(std::fs::read_dir(peer_dir.path().join("tmp")).unwrap().count(), 0);

        peer.delete_blob(blob).await.unwrap();
        assert!(matches!(store.size(blob).await, Err(BlobError::NotFound(_))));
        peer.delete_blob(blob).await.unwrap();
    })
    .await;
}
