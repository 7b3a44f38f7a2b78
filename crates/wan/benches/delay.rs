//! How close the proxy's delay is to the configured one: one-byte ping-pong over one
//! connection through a link of `RTT_MS` (default 40) round-trip time, `SAMPLES` (default 100)
//! times, against the same ping-pong straight to the echo server.
//!
//! `cargo bench -p meridian-wan --bench delay`

use std::time::{Duration, Instant};

use meridian_wan::{LinkConfig, WanProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

async fn echo_server() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let mut byte = [0u8; 1];
                while stream.read_exact(&mut byte).await.is_ok() {
                    if stream.write_all(&byte).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Sorted round trips of `n` one-byte ping-pongs to `addr`.
async fn ping_pong(addr: std::net::SocketAddr, n: u64) -> Vec<Duration> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let mut byte = [7u8; 1];
    let mut all = Vec::new();
    for _ in 0..n {
        let started = Instant::now();
        stream.write_all(&byte).await.expect("ping");
        stream.read_exact(&mut byte).await.expect("pong");
        all.push(started.elapsed());
    }
    all.sort();
    all
}

fn row(what: &str, sorted: &[Duration]) {
    let at = |p: f64| sorted[((sorted.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1000.0;
    println!("| {what} | {:.3} | {:.3} | {:.3} | {:.3} |", at(0.5), at(0.9), at(0.99), at(1.0));
}

#[tokio::main]
async fn main() {
    let rtt = Duration::from_millis(knob("RTT_MS", 40));
    let samples = knob("SAMPLES", 100);
    let echo = echo_server().await;
    let link = WanProxy::start("127.0.0.1:0".parse().expect("addr"), echo, LinkConfig::rtt(rtt)).await.expect("proxy");
    println!("| 1-byte ping-pong | p50 (ms) | p90 | p99 | max |\n|---|---|---|---|---|");
    row("straight to the echo server", &ping_pong(echo, samples).await);
    row(&format!("through the WAN proxy, {} ms RTT", rtt.as_millis()), &ping_pong(link.local_addr(), samples).await);
}
