//! fly-replay across three regions: an edge (the origin proxy on the shared HTTP layer) and
//! test origin instances per region, the edges reaching each other through WAN proxies.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use meridian_edge_origin::spool::SpoolLimits;
use meridian_edge_origin::{Instance, OriginProxy, ProxyConfig, Region, Topology};
use meridian_http::{ClientTls, Policy, Server, handler_fn};
use meridian_test_origin::{Echo, OriginConfig, Script, TestOrigin};
use meridian_wan::{LinkConfig, PartitionMode, WanHandle, WanProxy};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const TOKEN: &str = "cluster-token-for-tests";
/// The replay body limit of the test edges.
const MAX_BODY: u64 = 64 << 20;

struct Cluster {
    /// Edge URL per region (direct, as a client reaches its nearest edge).
    edges: HashMap<String, String>,
    origins: HashMap<String, TestOrigin>,
    /// The WAN link into each region's edge, as other regions reach it.
    links: HashMap<String, WanHandle>,
    _stops: Vec<oneshot::Sender<()>>,
}

impl Cluster {
    /// Regions ams (instances ams-1..3), sjc (sjc-1) and fra (fra-1), plus a region `dead`
    /// whose edge refuses connections.
    async fn start() -> Cluster {
        let spec: [(&str, &[&str]); 3] =
            [("ams", &["ams-1", "ams-2", "ams-3"]), ("sjc", &["sjc-1"]), ("fra", &["fra-1"])];
        let mut origins = HashMap::new();
        let mut regions = Vec::new();
        let mut listeners = Vec::new();
        let mut links = HashMap::new();
        for (region, ids) in spec {
            let mut instances = Vec::new();
            for id in ids {
                let origin = TestOrigin::start(OriginConfig { instance: (*id).into(), region: region.into() })
                    .await
                    .expect("origin starts");
                instances.push(Instance { id: (*id).into(), url: origin.url() });
                origins.insert((*id).to_string(), origin);
            }
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind edge");
            let addr = listener.local_addr().expect("edge address");
            let link =
                WanProxy::start("127.0.0.1:0".parse().expect("addr"), addr, LinkConfig::rtt(Duration::from_millis(10)))
                    .await
                    .expect("WAN link");
            regions.push(Region {
                name: region.into(),
                edge: Some(format!("http://{}", link.local_addr())),
                instances,
            });
            links.insert(region.to_string(), link);
            listeners.push((region, listener));
        }
        let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind").local_addr().expect("addr");
        regions.push(Region { name: "dead".into(), edge: Some(format!("http://{closed}")), instances: Vec::new() });
        let mut edges = HashMap::new();
        let mut stops = Vec::new();
        for (region, listener) in listeners {
            edges.insert(region.to_string(), format!("http://{}", listener.local_addr().expect("addr")));
            let topology = Topology::new(region, regions.clone()).expect("topology");
            let mut config = ProxyConfig::new(topology, TOKEN.into());
            config.spool = SpoolLimits { memory: 1 << 20, max_total: MAX_BODY, dir: std::env::temp_dir() };
            config.pin = Some(Duration::from_secs(30));
            let proxy = OriginProxy::new(config, &ClientTls::new(None).expect("client TLS"));
            let (stop, stopped) = oneshot::channel::<()>();
            let handler = handler_fn(move |req, info: meridian_http::RequestInfo| {
                let proxy = proxy.clone();
                async move { proxy.handle(req, info.peer, info.secure).await }
            });
            let policy = Policy { name: "edge-test", max_body_bytes: 1 << 30, ..Policy::peer() };
            tokio::spawn(Server::new(policy).serve(listener, handler, async move {
                let _ = stopped.await;
            }));
            stops.push(stop);
        }
        Cluster { edges, origins, links, _stops: stops }
    }

    fn origin(&self, id: &str) -> &TestOrigin {
        &self.origins[id]
    }

    fn url(&self, region: &str, path_and_query: &str) -> String {
        format!("{}{path_and_query}", self.edges[region])
    }
}

struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Answer {
    fn echo(&self) -> Echo {
        assert_eq!(self.status, StatusCode::OK, "{}", String::from_utf8_lossy(&self.body));
        serde_json::from_slice(&self.body).expect("echo JSON")
    }

    /// The fields of `fly-replay-failed`.
    fn failed(&self) -> HashMap<String, String> {
        let text = self.headers.get("fly-replay-failed").expect("fly-replay-failed").to_str().expect("text");
        fields(text)
    }
}

fn fields(text: &str) -> HashMap<String, String> {
    text.split(';').filter_map(|f| f.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

async fn send(req: Request<Full<Bytes>>) -> Answer {
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let resp = client.request(req).await.expect("edge answers");
    let (parts, body) = resp.into_parts();
    Answer { status: parts.status, headers: parts.headers, body: body.collect().await.expect("body").to_bytes() }
}

async fn get(url: String) -> Answer {
    send(Request::get(url).header("host", "site.example").body(Full::default()).expect("request")).await
}

fn q(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_to_another_region_goes_through_its_edge_with_fly_replay_src() {
    let cluster = Cluster::start().await;
    let url = cluster.url("ams", &format!("/orders?replay={}&replay_in=ams", q("region=sjc;state=from-ams")));
    let req = Request::post(url).header("host", "site.example").body(Full::new(Bytes::from_static(b"order")));
    let answer = send(req.expect("request")).await;
    let echo = answer.echo();
    assert_eq!((echo.region.as_str(), echo.instance.as_str(), echo.method.as_str()), ("sjc", "sjc-1", "POST"));
    assert_eq!(echo.body_len, 5);
    let src = fields(&echo.headers["fly-replay-src"]);
    assert!(src["instance"].starts_with("ams-"), "{src:?}");
    assert_eq!((src["region"].as_str(), src["state"].as_str()), ("ams", "from-ams"));
    assert!(src["t"].parse::<u128>().expect("t is microseconds") > 1_600_000_000_000_000);
    assert_eq!(echo.headers["x-forwarded-host"], "site.example");
    assert_eq!(echo.headers["x-forwarded-for"], "127.0.0.1");
    assert!(!echo.headers.contains_key("x-meridian-replay-token"), "the peer token reaches no origin");
    let asked: u64 = ["ams-1", "ams-2", "ams-3"].iter().map(|id| cluster.origin(id).request_count()).sum();
    assert_eq!(asked, 1, "one ams instance was asked once");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_50_mib_post_is_replayed_whole() {
    let cluster = Cluster::start().await;
    let body: Vec<u8> = (0..50u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let url = cluster.url("ams", &format!("/upload?replay={}&replay_in=ams", q("region=fra")));
    let req = Request::post(url).header("host", "site.example").body(Full::new(Bytes::from(body.clone())));
    let echo = send(req.expect("request")).await.echo();
    assert_eq!(echo.region, "fra");
    assert_eq!(echo.body_len, 50 << 20);
    assert_eq!(echo.body_sha256, hex::encode(Sha256::digest(&body)));
    let first = cluster.origin("fra-1").received();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].body_len, 50 << 20);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_over_the_spool_bound_is_a_413() {
    let cluster = Cluster::start().await;
    let body = vec![0u8; (MAX_BODY + 1) as usize];
    let req = Request::post(cluster.url("ams", "/upload")).body(Full::new(Bytes::from(body)));
    let answer = send(req.expect("request")).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(String::from_utf8_lossy(&answer.body).contains("larger than"));
}

#[tokio::test(flavor = "multi_thread")]
async fn regions_are_tried_in_order_and_instances_by_id() {
    let cluster = Cluster::start().await;
    let echo =
        get(cluster.url("ams", &format!("/r?replay={}&replay_in=ams", q(r#"region="dead,fra,sjc""#)))).await.echo();
    assert_eq!(echo.region, "fra", "dead refuses connections, fra is next");

    let echo = get(cluster.url("fra", &format!("/r?replay={}&replay_in=fra", q("instance=ams-3")))).await.echo();
    assert_eq!(echo.instance, "ams-3", "through the ams edge, to the named instance");

    let echo = get(cluster.url("sjc", &format!("/r?replay={}&replay_in=sjc", q("prefer_instance=ams-2;region=fra"))))
        .await
        .echo();
    assert_eq!(echo.instance, "ams-2");

    let echo = get(cluster.url("sjc", &format!("/r?replay={}&replay_in=sjc", q(r#"region="dead,any""#)))).await.echo();
    assert_ne!(echo.region, "sjc", "any skips the instance that asked");
}

#[tokio::test(flavor = "multi_thread")]
async fn elsewhere_sheds_load_across_three_instances() {
    let cluster = Cluster::start().await;
    cluster.origin("ams-1").set_script(Script::Replay("elsewhere=true".into()));
    cluster.origin("ams-2").set_script(Script::Replay("elsewhere=true".into()));
    for _ in 0..6 {
        assert_eq!(get(cluster.url("ams", "/busy")).await.echo().instance, "ams-3");
    }
    assert!(cluster.origin("ams-1").request_count() > 0 && cluster.origin("ams-2").request_count() > 0);
    assert_eq!(cluster.origin("ams-3").request_count(), 6);

    cluster.origin("ams-3").set_script(Script::Replay("elsewhere=true".into()));
    let answer = get(cluster.url("ams", "/busy")).await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert_eq!(answer.failed()["reason"], "no_candidate");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_that_cannot_be_done_fails_clearly_or_falls_back() {
    let cluster = Cluster::start().await;
    cluster.links["sjc"].partition_with(PartitionMode::Blackhole { refuse_new: false });
    let answer = get(cluster.url("ams", &format!("/p?replay={}&replay_in=ams", q("region=sjc;timeout=300ms")))).await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    let failed = answer.failed();
    assert_eq!((failed["reason"].as_str(), failed["region"].as_str()), ("timeout", "sjc"));
    let elapsed: u64 = failed["elapsed_ms"].parse().expect("elapsed_ms");
    assert!((300..3000).contains(&elapsed), "{elapsed}");

    let target = q("region=sjc;timeout=300ms;fallback=force_self");
    let echo = get(cluster.url("ams", &format!("/fb?replay={target}&replay_in=ams"))).await.echo();
    assert_eq!(echo.region, "ams");
    assert_eq!(cluster.origin(&echo.instance).count_path("/fb"), 2, "delivered again to the instance that asked");
    let failed = fields(&echo.headers["fly-replay-failed"]);
    assert_eq!(failed["reason"], "timeout");

    let answer = get(cluster.url("ams", &format!("/p?replay={}&replay_in=ams", q("region=dead")))).await;
    assert_eq!(answer.failed()["reason"], "retries_exhausted");
    let answer = get(cluster.url("ams", &format!("/p?replay={}&replay_in=ams", q("instance=nobody")))).await;
    assert_eq!(answer.failed()["reason"], "no_candidate");
    cluster.links["sjc"].heal();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_json_form_transforms_the_replayed_request() {
    let cluster = Cluster::start().await;
    let json = r#"{"region":"sjc","state":"j","transform":{"path":"/v2/orders?x=1","set_headers":[{"name":"x-tenant","value":"t1"}],"delete_headers":["x-drop"]}}"#;
    let url = cluster.url("ams", &format!("/orders?replay_json={}&replay_in=ams", q(json)));
    let req = Request::get(url).header("x-drop", "secret").header("x-keep", "k").body(Full::default());
    let echo = send(req.expect("request")).await.echo();
    assert_eq!((echo.region.as_str(), echo.path.as_str()), ("sjc", "/v2/orders?x=1"));
    assert_eq!(echo.headers["x-tenant"], "t1");
    assert_eq!(echo.headers["x-keep"], "k");
    assert!(!echo.headers.contains_key("x-drop"));
    assert_eq!(fields(&echo.headers["fly-replay-src"])["state"], "j");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_instruction_is_a_clear_502_and_never_reaches_the_client_as_is() {
    let cluster = Cluster::start().await;
    let answer = get(cluster.url("ams", &format!("/x?replay={}", q("region=sjc;colour=red")))).await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    let text = String::from_utf8_lossy(&answer.body);
    assert!(text.contains("invalid fly-replay") && text.contains("colour"), "{text}");
    assert!(!answer.headers.contains_key("fly-replay"));
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_choose_regions_but_cannot_forge_replay_headers() {
    let cluster = Cluster::start().await;
    let req = Request::get(cluster.url("ams", "/c")).header("fly-force-region", "sjc").body(Full::default());
    assert_eq!(send(req.expect("request")).await.echo().region, "sjc");
    let req = Request::get(cluster.url("ams", "/c")).header("fly-prefer-region", "dead").body(Full::default());
    assert_eq!(send(req.expect("request")).await.echo().region, "ams", "preferred region unreachable: served here");
    let req = Request::get(cluster.url("ams", "/c")).header("fly-force-region", "dead").body(Full::default());
    assert_eq!(send(req.expect("request")).await.failed()["reason"], "retries_exhausted");
    let req = Request::get(cluster.url("ams", "/c")).header("fly-force-region", "mars").body(Full::default());
    assert_eq!(send(req.expect("request")).await.status, StatusCode::BAD_REQUEST);

    let req = Request::get(cluster.url("ams", "/c"))
        .header("fly-replay-src", "instance=forged")
        .header("x-meridian-replay-token", "wrong")
        .header("x-meridian-replay-instance", "sjc-1")
        .body(Full::default());
    let echo = send(req.expect("request")).await.echo();
    assert_eq!(echo.region, "ams", "a wrong token is an ordinary client");
    assert!(!echo.headers.contains_key("fly-replay-src"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cached_replay_skips_the_origin_by_path_prefix_and_by_session() {
    let cluster = Cluster::start().await;
    let asked =
        |c: &Cluster| -> u64 { ["ams-1", "ams-2", "ams-3"].iter().map(|id| c.origin(id).request_count()).sum() };
    let url = |path: &str| {
        cluster.url(
            "ams",
            &format!("{path}?replay={}&replay_in=ams&replay_cache={}&replay_cache_ttl=60", q("region=sjc"), q("/w/*")),
        )
    };
    assert_eq!(get(url("/w/1")).await.echo().region, "sjc");
    assert_eq!(asked(&cluster), 1);
    assert_eq!(get(url("/w/2")).await.echo().region, "sjc");
    assert_eq!(get(cluster.url("ams", "/w/3")).await.echo().region, "sjc", "cached: no need to ask ams again");
    assert_eq!(asked(&cluster), 1);
    assert_eq!(cluster.origin("sjc-1").request_count(), 3);
    assert_eq!(get(cluster.url("ams", "/other")).await.echo().region, "ams", "outside the cached prefix");

    // Session caching: per cookie value.
    let session = |cookie: &str, path: &str| {
        let url = cluster.url(
            "ams",
            &format!(
                "{path}?replay={}&replay_in=ams&replay_cache={}&replay_cache_ttl=60",
                q("region=fra"),
                q("cookie=sid")
            ),
        );
        Request::get(url).header("cookie", format!("sid={cookie}")).body(Full::default()).expect("request")
    };
    assert_eq!(send(session("alice", "/s/1")).await.echo().region, "fra");
    let plain = |cookie: &str| {
        Request::get(cluster.url("ams", "/s/2"))
            .header("cookie", format!("sid={cookie}"))
            .body(Full::default())
            .expect("request")
    };
    assert_eq!(send(plain("alice")).await.echo().region, "fra");
    assert_eq!(send(plain("bob")).await.echo().region, "ams");
}

/// `fly-replay-cache-control: skip` from a client skips a cached replay only when the origin
/// allowed it (`fly-replay-cache-allow-bypass: yes` or JSON `allow_bypass`), as Fly documents.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_skips_a_cached_replay_only_when_the_origin_allows_bypass() {
    let cluster = Cluster::start().await;
    let asked =
        |c: &Cluster| -> u64 { ["ams-1", "ams-2", "ams-3"].iter().map(|id| c.origin(id).request_count()).sum() };
    let skipping = |path: &str| {
        let req = Request::get(cluster.url("ams", path)).header("fly-replay-cache-control", "skip");
        req.body(Full::default()).expect("request")
    };
    // Not allowed: the skip is ignored, the cached replay is used.
    let cache = |prefix: &str, extra: &str| {
        format!("?replay={}&replay_in=ams&replay_cache={}&replay_cache_ttl=60{extra}", q("region=sjc"), q(prefix))
    };
    assert_eq!(get(cluster.url("ams", &format!("/strict/1{}", cache("/strict/*", "")))).await.echo().region, "sjc");
    let before = asked(&cluster);
    assert_eq!(send(skipping("/strict/2")).await.echo().region, "sjc");
    assert_eq!(asked(&cluster), before, "no bypass without the origin's consent");

    // Allowed by header: the skipping client is served here; others still use the cache.
    assert_eq!(
        get(cluster.url("ams", &format!("/loose/1{}", cache("/loose/*", "&replay_cache_bypass=yes"))))
            .await
            .echo()
            .region,
        "sjc"
    );
    assert_eq!(send(skipping("/loose/2")).await.echo().region, "ams", "the skip reached this region's origin");
    let before = asked(&cluster);
    assert_eq!(get(cluster.url("ams", "/loose/3")).await.echo().region, "sjc");
    assert_eq!(asked(&cluster), before, "the cache was skipped, not invalidated");

    // Allowed by the JSON form's allow_bypass.
    let json = q(r#"{"region":"fra","allow_bypass":true}"#);
    let url = format!("/json/1?replay_json={json}&replay_in=ams&replay_cache={}&replay_cache_ttl=60", q("/json/*"));
    assert_eq!(get(cluster.url("ams", &url)).await.echo().region, "fra");
    assert_eq!(send(skipping("/json/2")).await.echo().region, "ams");
    assert_eq!(get(cluster.url("ams", "/json/3")).await.echo().region, "fra");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_replayed_elsewhere_pins_the_session_to_that_region() {
    let cluster = Cluster::start().await;
    let url = cluster.url("ams", &format!("/posts?replay={}&replay_in=ams", q("region=sjc")));
    let answer = send(Request::post(url).body(Full::new(Bytes::from_static(b"hello"))).expect("request")).await;
    assert_eq!(answer.echo().region, "sjc");
    let cookie = answer.headers["set-cookie"].to_str().expect("text").to_string();
    assert!(cookie.starts_with("meridian-region=sjc; Max-Age=30;"), "{cookie}");
    let pair = cookie.split(';').next().expect("name=value").to_string();

    let read = |with_cookie: bool| {
        let mut req = Request::get(cluster.url("ams", "/posts/1"));
        if with_cookie {
            req = req.header("cookie", format!("theme=dark; {pair}"));
        }
        req.body(Full::default()).expect("request")
    };
    assert_eq!(send(read(true)).await.echo().region, "sjc", "the pinned session reads where it wrote");
    assert_eq!(send(read(false)).await.echo().region, "ams");

    let get_replayed = cluster.url("ams", &format!("/posts/2?replay={}&replay_in=ams", q("region=fra")));
    let answer = send(Request::get(get_replayed).body(Full::default()).expect("request")).await;
    assert_eq!(answer.echo().region, "fra");
    assert!(!answer.headers.contains_key("set-cookie"), "a replayed read does not pin");
}

/// [`meridian_test_origin::upload::upload_holding_the_end`] to `url` as an [`Answer`].
async fn upload_holding_the_end(url: String, body: &[u8], wanted: u64, received: impl Fn() -> u64) -> Answer {
    let up = meridian_test_origin::upload::upload_holding_the_end(&url, "site.example", body, wanted, received).await;
    Answer { status: up.status, headers: up.headers, body: up.body }
}

/// Request bodies stream to the origin while the client sends them (the client holds its
/// last 64 KiB until the origin has most of the rest), are read by a slow origin intact, and
/// are still replayed whole from the spool (memory, then the 0600 file) afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn uploads_stream_to_the_origin_while_they_arrive_and_replay_from_the_spool() {
    let cluster = Cluster::start().await;
    let body: Vec<u8> = (0..3u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let digest = hex::encode(Sha256::digest(&body));
    let ams = || -> u64 { ["ams-1", "ams-2", "ams-3"].iter().map(|id| cluster.origin(id).body_bytes()).sum() };

    // To this region's origin, read slowly (1 ms after each frame).
    let answer = upload_holding_the_end(cluster.url("ams", "/upload?read_ms=1"), &body, 2 << 20, ams).await;
    let echo = answer.echo();
    assert_eq!((echo.region.as_str(), echo.body_len, echo.body_sha256.as_str()), ("ams", 3 << 20, digest.as_str()));

    // Replayed: ams reads it as it arrives, answers fly-replay, and fra gets it from the spool.
    let before = ams();
    let url = cluster.url("ams", &format!("/upload?replay={}&replay_in=ams&read_ms=1", q("region=fra")));
    let answer = upload_holding_the_end(url, &body, 2 << 20, || ams() - before).await;
    let echo = answer.echo();
    assert_eq!((echo.region.as_str(), echo.body_len, echo.body_sha256.as_str()), ("fra", 3 << 20, digest.as_str()));
    assert_eq!(ams() - before, 3 << 20, "the asking instance read the whole body first");
}
