//! fly-replay between real `meridian` nodes: three regions on etcd behind the WAN proxy, each
//! node with its web edge (other regions reach it through a WAN link of its own, the URL it
//! publishes with `--web-advertise`), and test origin apps per region (three in region a, one
//! in b and c). The site and its origin are stored through the admin CLI: no node's
//! configuration names another region's edge, so every replay across regions uses the edges
//! the nodes publish in the cluster.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::raw;
use common::wan_cluster::{REGIONS, WanCluster};
use meridian_test_origin::{Echo, OriginConfig, Script, TestOrigin};
use meridian_wan::{LinkConfig, PartitionMode, WanHandle, WanProxy};
use sha2::{Digest, Sha256};

/// Origin instances per region.
const INSTANCES: [&[&str]; 3] = [&["a-1", "a-2", "a-3"], &["b-1"], &["c-1"]];

struct Regions {
    cluster: WanCluster,
    /// Each node's web edge, as a client of its region reaches it.
    web: Vec<String>,
    /// The WAN link in front of each node's web edge (what the other regions' edges use).
    web_links: Vec<WanHandle>,
    origins: HashMap<String, TestOrigin>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port()
}

impl Regions {
    /// The cluster with site `app` (bucket `app`) stored with its origin through the admin CLI,
    /// once every edge reaches every other region's edge.
    async fn start() -> Regions {
        let link = LinkConfig::one_way(Duration::from_millis(10));
        let mut origins = HashMap::new();
        let mut origin_args = Vec::new();
        for (region, ids) in REGIONS.iter().zip(INSTANCES) {
            for id in ids {
                let config = OriginConfig { instance: id.to_string(), region: region.to_string() };
                let origin = TestOrigin::start(config).await.expect("origin starts");
                origin_args.push(format!("--origin={region}/{id}={}", origin.url()));
                origins.insert(id.to_string(), origin);
            }
        }
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut web_links = Vec::new();
        for port in &ports {
            let to = format!("127.0.0.1:{port}").parse().expect("addr");
            web_links.push(WanProxy::start("127.0.0.1:0".parse().expect("addr"), to, link).await.expect("WAN link"));
        }
        let advertised: Vec<String> = web_links.iter().map(|l| format!("http://{}", l.local_addr())).collect();
        let cluster = WanCluster::start_each(link, |i| {
            let web = format!("127.0.0.1:{}", ports[i]);
            vec!["--web-listen".into(), web, "--web-advertise".into(), advertised[i].clone()]
        })
        .await;
        cluster.client(0).create_bucket().bucket("app").send().await.expect("create bucket");
        let mut args = vec!["site", "put", "app", "--bucket", "app", "--pin-seconds", "30"];
        args.extend(origin_args.iter().map(String::as_str));
        let site = common::admin::admin_ok(&cluster.nodes[0], &args);
        assert_eq!(site["origin"]["region"][0]["instances"][2]["id"], "a-3", "{site}");
        // Another app (Fly's `app=`): site `billing`, with instances in regions a and c only.
        let mut billing_args =
            vec!["site".to_string(), "put".into(), "billing".into(), "--bucket".into(), "app".into()];
        billing_args.extend(["--host".into(), "billing.example".into()]);
        for (region, id) in [("region-a", "billing-a"), ("region-c", "billing-c")] {
            let config = OriginConfig { instance: id.to_string(), region: region.to_string() };
            let origin = TestOrigin::start(config).await.expect("origin starts");
            billing_args.push(format!("--origin={region}/{id}={}", origin.url()));
            origins.insert(id.to_string(), origin);
        }
        let billing_args: Vec<&str> = billing_args.iter().map(String::as_str).collect();
        common::admin::admin_ok(&cluster.nodes[0], &billing_args);
        let web = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let regions = Regions { cluster, web, web_links, origins };
        regions.wait_for_published_edges();
        regions
    }

    /// Waits (up to 20 s) until each edge delivers `fly-force-region` to every other region.
    fn wait_for_published_edges(&self) {
        for (i, web) in self.web.iter().enumerate() {
            for (j, region) in REGIONS.iter().enumerate().filter(|(j, _)| *j != i) {
                let reached = common::wan_cluster::wait_until(Duration::from_secs(20), || {
                    let resp = raw::send(web, "GET", "/probe", &[("fly-force-region", region.to_string())], &[]);
                    resp.header("x-origin-region") == Some(region)
                });
                assert!(reached, "region {i}'s edge never reached region {j}'s edge through the cluster");
            }
        }
    }

    fn origin(&self, id: &str) -> &TestOrigin {
        &self.origins[id]
    }
}

fn echo(resp: &raw::Response) -> Echo {
    assert_eq!(resp.status, 200, "{}", resp.text());
    serde_json::from_slice(&resp.body).expect("echo JSON")
}

fn fields(text: &str) -> HashMap<String, String> {
    text.split(';').filter_map(|f| f.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// `/PATH?replay=<instruction>&replay_in=region-a`: region a's instances ask for the replay.
fn replaying(path: &str, instruction: &str) -> String {
    replaying_in(path, instruction, "region-a")
}

/// `/PATH?replay=<instruction>&replay_in=<instances or regions>`.
fn replaying_in(path: &str, instruction: &str, asking: &str) -> String {
    let encoded: String = form_urlencoded::byte_serialize(instruction.as_bytes()).collect();
    format!("{path}?replay={encoded}&replay_in={asking}")
}

#[tokio::test(flavor = "multi_thread")]
async fn heavy_real_nodes_replay_by_region_instance_and_elsewhere_through_published_edges() {
    let regions = Regions::start().await;
    let a = &regions.web[0];

    // A region list in order of preference, with state: region c's instance answers and sees
    // where the request came from.
    let b_before = regions.origin("b-1").request_count();
    let started_us = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_micros();
    let resp = raw::send(a, "GET", &replaying("/orders/1", "region=region-c,region-b;state=s1"), &[], &[]);
    let got = echo(&resp);
    assert_eq!((got.instance.as_str(), got.path.split('?').next()), ("c-1", Some("/orders/1")));
    let src = fields(&got.headers["fly-replay-src"]);
    assert!(src["instance"].starts_with("a-"), "{src:?}");
    assert_eq!((src["region"].as_str(), src["state"].as_str()), ("region-a", "s1"));
    let t: u128 = src["t"].parse().expect("t is µs since the epoch");
    assert!(t >= started_us, "{t} < {started_us}");
    assert_eq!(regions.origin("b-1").request_count(), b_before, "region b was only the second choice");

    // An instance of another region, and one of this region.
    assert_eq!(echo(&raw::send(a, "GET", &replaying("/i", "instance=b-1"), &[], &[])).instance, "b-1");
    let mut replayed_here = 0;
    for _ in 0..3 {
        let got = echo(&raw::send(a, "GET", &replaying_in("/i", "instance=a-3", "a-1,a-2"), &[], &[]));
        assert_eq!(got.instance, "a-3");
        replayed_here += usize::from(got.headers.contains_key("fly-replay-src"));
    }
    assert!(replayed_here >= 2, "round robin sent a-1 and a-2 requests they replayed to a-3");

    // Another app: the origin of site `billing`, here and in region c (whose edge is told
    // the site: the request's host would name site `app` there).
    let app_asks = |instruction: &str| replaying_in("/invoice/7", instruction, "a-1,a-2,a-3");
    let got = echo(&raw::send(a, "GET", &app_asks("app=billing"), &[], &[]));
    assert_eq!(got.instance, "billing-a");
    assert!(fields(&got.headers["fly-replay-src"])["instance"].starts_with("a-"));
    let got = echo(&raw::send(a, "GET", &app_asks("app=billing;region=region-c"), &[], &[]));
    assert_eq!((got.instance.as_str(), got.path.split('?').next()), ("billing-c", Some("/invoice/7")));
    assert!(!got.headers.keys().any(|h| h.starts_with("x-meridian-replay")), "edge-to-edge headers stay between edges");
    // Region b runs no billing instance: its edge sends billing's requests to the origin's
    // first region (a), through a's edge.
    let got = echo(&raw::send_as(&regions.web[1], "billing.example", "GET", "/invoice/8", &[]));
    assert_eq!(got.instance, "billing-a");
    let resp = raw::send(a, "GET", &app_asks("app=nosuch"), &[], &[]);
    assert_eq!(resp.status, 502, "{}", resp.text());
    assert_eq!(fields(resp.header("fly-replay-failed").expect("failed"))["reason"], "no_candidate");

    // Load shedding: a-1 and a-2 answer every request with `elsewhere=true`; every request
    // ends at a-3, whichever instance the edge tried first.
    regions.origin("a-1").set_script(Script::Replay("elsewhere=true".into()));
    regions.origin("a-2").set_script(Script::Replay("elsewhere=true".into()));
    let shed_before = regions.origin("a-1").request_count() + regions.origin("a-2").request_count();
    for n in 0..6 {
        let resp = raw::send(a, "GET", &format!("/busy/{n}"), &[], &[]);
        assert_eq!(echo(&resp).instance, "a-3");
    }
    let shed = regions.origin("a-1").request_count() + regions.origin("a-2").request_count() - shed_before;
    assert!(shed >= 4, "round robin offered a-1 and a-2 requests they shed: {shed}");
    regions.origin("a-1").set_script(Script::Normal);
    regions.origin("a-2").set_script(Script::Normal);

    // Region c's edge cut off (connections reset): the list's next region takes the request.
    regions.web_links[2].partition_with(PartitionMode::Reset);
    let resp = raw::send(a, "GET", &replaying("/orders/2", "region=region-c,region-b"), &[], &[]);
    assert_eq!(echo(&resp).instance, "b-1");

    // Region c's edge silent (a blackhole): the replay times out with `fly-replay-failed`.
    regions.web_links[2].partition_with(PartitionMode::Blackhole { refuse_new: false });
    let started = Instant::now();
    let resp = raw::send(a, "GET", &replaying("/orders/3", "region=region-c;timeout=1s"), &[], &[]);
    let elapsed = started.elapsed();
    assert_eq!(resp.status, 502, "{}", resp.text());
    let failed = fields(resp.header("fly-replay-failed").expect("fly-replay-failed"));
    assert_eq!((failed["region"].as_str(), failed["reason"].as_str()), ("region-c", "timeout"), "{failed:?}");
    let elapsed_ms: u64 = failed["elapsed_ms"].parse().expect("elapsed_ms");
    assert!((1000..3000).contains(&elapsed_ms), "{elapsed_ms}");
    assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
    // With a fallback, the asking region's instance gets it again, told why.
    let resp =
        raw::send(a, "GET", &replaying("/orders/4", "region=region-c;timeout=500ms;fallback=prefer_self"), &[], &[]);
    let got = echo(&resp);
    assert_eq!(got.region, "region-a");
    assert_eq!(fields(&got.headers["fly-replay-failed"])["reason"], "timeout");
    regions.web_links[2].heal();
    drop(regions.cluster);
}

#[tokio::test(flavor = "multi_thread")]
async fn heavy_a_50_mib_post_replayed_between_real_nodes_arrives_whole_and_pins_the_session() {
    let regions = Regions::start().await;
    let a = &regions.web[0];
    let body = common::pattern(50 << 20, 14);
    let digest = hex::encode(Sha256::digest(&body));

    let resp = raw::send(a, "POST", &replaying("/upload", "region=region-b"), &[], &body);
    let got = echo(&resp);
    assert_eq!((got.instance.as_str(), got.body_len), ("b-1", 50 << 20));
    assert_eq!(got.body_sha256, digest, "the replayed body arrived intact");
    let asked = regions.origin("b-1").received();
    assert_eq!(asked.last().map(|r| r.body_len), Some(50 << 20));

    // The replayed write pins the session to region b: its reads go there while the cookie lasts.
    let cookie = resp.header("set-cookie").expect("the pin cookie");
    assert_eq!(cookie, "meridian-region=region-b; Max-Age=30; Path=/; HttpOnly; SameSite=Lax");
    let session = cookie.split(';').next().expect("name=value").to_string();
    let read = raw::send(a, "GET", "/me", &[("cookie", session)], &[]);
    assert_eq!(echo(&read).region, "region-b");
    let read = raw::send(a, "GET", "/me", &[], &[]);
    assert_eq!(echo(&read).region, "region-a", "without the cookie, this region serves");
    drop(regions.cluster);
}
