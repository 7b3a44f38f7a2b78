//! What the origin proxy costs: a request through an edge against the same request sent to
//! the origin directly (fall-through overhead), and a request the origin replays to another
//! region 40 ms RTT away (through the WAN proxy) against one served locally and against one
//! request over the same link (replay overhead).
//!
//! `cargo bench -p meridian-edge-origin --bench overhead` (sequential requests on kept-alive
//! connections; `OVERHEAD_N` sets the number of local requests, default 2000).

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use meridian_edge_origin::{Instance, OriginProxy, ProxyConfig, Region, Topology};
use meridian_http::{ClientTls, Policy, Server, handler_fn};
use meridian_test_origin::{OriginConfig, TestOrigin};
use meridian_wan::{LinkConfig, WanProxy};
use tokio::net::TcpListener;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Serves an origin proxy for `region` of `regions` on `listener`.
fn serve_edge(listener: TcpListener, region: &str, regions: Vec<Region>) {
    let topology = Topology::new(region, regions).expect("topology");
    let proxy = OriginProxy::new(ProxyConfig::new(topology, "bench-token".into()), &ClientTls::new(None).expect("TLS"));
    let handler = handler_fn(move |req, info: meridian_http::RequestInfo| {
        let proxy = proxy.clone();
        async move { proxy.handle(req, info.peer, info.secure).await }
    });
    tokio::spawn(Server::new(Policy { name: "bench-edge", ..Policy::peer() }).serve(
        listener,
        handler,
        std::future::pending(),
    ));
}

async fn origin(instance: &str, region: &str) -> TestOrigin {
    TestOrigin::start(OriginConfig { instance: instance.into(), region: region.into() }).await.expect("origin")
}

/// Latencies of `n` sequential GETs of `url`, sorted.
async fn timings(client: &HttpClient, url: &str, n: usize) -> Vec<Duration> {
    let mut all = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let resp = client.request(Request::get(url).body(Full::default()).expect("request")).await.expect("answer");
        assert!(resp.status().is_success(), "{url}: {}", resp.status());
        resp.into_body().collect().await.expect("body");
        all.push(started.elapsed());
    }
    all.sort();
    all
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

fn report(name: &str, base: &[Duration], through: &[Duration]) {
    let (b50, t50) = (percentile(base, 0.5), percentile(through, 0.5));
    println!(
        "{name}: baseline p50 {} p99 {} | measured p50 {} p99 {} | overhead p50 {}",
        ms(b50),
        ms(percentile(base, 0.99)),
        ms(t50),
        ms(percentile(through, 0.99)),
        ms(t50.saturating_sub(b50))
    );
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("OVERHEAD_N").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let local = origin("ams-1", "ams").await;
    let remote = origin("sjc-1", "sjc").await;
    let ams = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let sjc = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let link = WanProxy::start(
        "127.0.0.1:0".parse().expect("addr"),
        sjc.local_addr().expect("addr"),
        LinkConfig::rtt(Duration::from_millis(40)),
    )
    .await
    .expect("WAN link");
    let regions = vec![
        Region { name: "ams".into(), edge: None, instances: vec![Instance { id: "ams-1".into(), url: local.url() }] },
        Region {
            name: "sjc".into(),
            edge: Some(format!("http://{}", link.local_addr())),
            instances: vec![Instance { id: "sjc-1".into(), url: remote.url() }],
        },
    ];
    let ams_url = format!("http://{}", ams.local_addr().expect("addr"));
    serve_edge(ams, "ams", regions.clone());
    serve_edge(sjc, "sjc", regions);
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();

    // Warm both paths' connection pools first.
    timings(&client, &format!("{}/echo", local.url()), 50).await;
    timings(&client, &format!("{ams_url}/echo"), 50).await;
    let direct = timings(&client, &format!("{}/echo", local.url()), n).await;
    let through = timings(&client, &format!("{ams_url}/echo"), n).await;
    report("fall-through (edge -> origin vs origin)", &direct, &through);

    let replayed_url = format!("{ams_url}/w?replay=region%3Dsjc&replay_in=ams");
    timings(&client, &replayed_url, 5).await;
    let rounds = (n / 20).max(20);
    let served_here = timings(&client, &format!("{ams_url}/w"), rounds).await;
    let replayed = timings(&client, &replayed_url, rounds).await;
    report("replay to a region 40 ms RTT away (vs served locally)", &served_here, &replayed);
    // What the link itself costs one request (delay line and timer rounding included).
    let over_link = timings(&client, &format!("http://{}/w", link.local_addr()), rounds).await;
    report("one request over the 40 ms link (vs served locally)", &served_here, &over_link);
    report("replay (vs one request over the link)", &over_link, &replayed);
}
