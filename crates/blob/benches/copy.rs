//! One blob copied to another node through the WAN proxy (40 ms RTT by default, no bandwidth
//! limit): on one stream, as before decision 069, and striped over four, alternating, in one
//! run. This is the transfer alone, with no ingest and no metadata: how long a multi-region
//! write's copy takes to be durable in the other region, sent as fast as it can be.
//!
//! ```sh
//! cargo bench -p meridian-blob --bench copy      # MIB=64 ROUNDS=5 ONE_WAY_MS=20
//! ```

#![allow(clippy::unwrap_used)] // a benchmark: a failed unwrap is a failed run

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use meridian_blob::{BlobError, BlobId, BlobStore, CopyStreams, DEFAULT_CHUNK_SIZE, PeerClient, serve_peer};
use meridian_wan::{LinkConfig, WanProxy};

const TOKEN: &str = "bench-cluster-token";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// `data` as a request body arrives: 64 KiB pieces.
fn body(data: &Bytes) -> BoxStream<'static, Result<Bytes, BlobError>> {
    let pieces: Vec<Result<Bytes, BlobError>> =
        (0..data.len()).step_by(64 << 10).map(|at| Ok(data.slice(at..(at + (64 << 10)).min(data.len())))).collect();
    futures::stream::iter(pieces).boxed()
}

fn p50(mut ms: Vec<f64>) -> f64 {
    ms.sort_by(f64::total_cmp);
    ms[ms.len() / 2]
}

fn main() {
    let size = env_u64("MIB", 64) << 20;
    let rounds = env_u64("ROUNDS", 5).max(1);
    let one_way = Duration::from_millis(env_u64("ONE_WAY_MS", 20));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve_peer(listener, store.clone(), TOKEN.into(), std::future::pending()));
        let link = WanProxy::start("127.0.0.1:0".parse().unwrap(), addr, LinkConfig::one_way(one_way)).await.unwrap();
        let tls = meridian_http::ClientTls::new(None).unwrap();
        let peer = PeerClient::new(&format!("http://{}", link.local_addr()), TOKEN, &tls).unwrap();
        let data: Bytes = (0..size).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect::<Vec<u8>>().into();

        println!(
            "\n{} MiB copies through the WAN proxy, {} ms RTT, {rounds} rounds, order alternating",
            size >> 20,
            2 * one_way.as_millis()
        );
        let (mut whole, mut striped) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            for striping in if round % 2 == 0 { [false, true] } else { [true, false] } {
                let blob = BlobId::random();
                let started = Instant::now();
                let copy = if striping {
                    peer.put_blob(blob, DEFAULT_CHUNK_SIZE, body(&data), CopyStreams::Striped).await.unwrap()
                } else {
                    peer.put_whole(blob, DEFAULT_CHUNK_SIZE, body(&data)).await.unwrap()
                };
                let ms = started.elapsed().as_secs_f64() * 1000.0;
                assert_eq!(copy.size, size);
                store.delete(blob).await.unwrap();
                if striping { striped.push(ms) } else { whole.push(ms) }
            }
        }
        let mib = (size >> 20) as f64;
        println!("| copy | p50 ms | MiB/s at p50 | every round (ms) |\n|---|---|---|---|");
        for (name, ms) in [("one stream", whole), ("striped, 4 streams", striped)] {
            let rounds: Vec<String> = ms.iter().map(|m| format!("{m:.0}")).collect();
            let median = p50(ms);
            println!("| {name} | {median:.0} | {:.0} | {} |", mib / median * 1000.0, rounds.join(", "));
        }
    });
}
