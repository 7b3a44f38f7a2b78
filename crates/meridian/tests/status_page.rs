//! The live status page in a real browser: headless Chromium, driven over the DevTools protocol,
//! logs in with the admin token through the page's form, watches the figures of a three-region
//! cluster change without a reload, checks them against `/metrics` and the cluster registry,
//! and saves screenshots (desktop and phone) in `target/test-artifacts/`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::{Duration, Instant};

use common::browser::{Browser, png_size};
use common::metrics::scrape;
use common::raw::{send, signed};
use common::wan_cluster::{REGIONS, WanCluster};
use common::{ADMIN_TOKEN, Server, pattern};
use meridian_wan::LinkConfig;
use serde_json::{Value, json};

const STATUS_TOKEN: &str = "meridian-test-status-token";

/// What the page shows: every table's rows as cell texts, and the single figures.
const PAGE_STATE: &str = r#"(() => {
  const rows = (id) => [...document.querySelectorAll('#' + id + ' tbody tr')].map((tr) => [...tr.cells].map((td) => td.textContent));
  const text = (id) => document.getElementById(id).textContent;
  return {
    regions: rows('regions'), nodes: rows('nodes'), operations: rows('operations'),
    cacheReads: rows('cache-reads'), errors: rows('errors'),
    generated: Number(document.getElementById('updated').dataset.generated || 0),
    readiness: text('readiness'), pushQueue: text('push-queue'), notReloaded: window.notReloaded === true,
  };
})()"#;

fn admin_addr(server: &Server) -> String {
    server.admin_url.trim_start_matches("http://").to_string()
}

/// The sum of every sample of `family` whose labels include all of `labels` (`name="value"`).
fn metric_sum(metrics: &str, family: &str, labels: &[&str]) -> f64 {
    let samples: Vec<f64> = metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{family}{{")) || l.starts_with(&format!("{family} ")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .collect();
    assert!(!samples.is_empty(), "no {family} {labels:?} in /metrics");
    samples.iter().fold(0.0, |sum, v| sum + v)
}

/// The row of `table` whose first cells are `key`.
fn row<'a>(state: &'a Value, table: &str, key: &[&str]) -> Option<&'a Vec<Value>> {
    state[table]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap())
        .find(|r| key.iter().zip(r.iter()).all(|(k, c)| c == k))
}

fn total_shown(state: &Value, listener: &str, operation: &str) -> Option<u64> {
    row(state, "operations", &[listener, operation]).and_then(|r| r[4].as_str()?.parse().ok())
}

/// Where screenshots go: `target/test-artifacts/`.
fn artifacts() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn save_screenshot(browser: &mut Browser, name: &str, min_width: u32) {
    let png = browser.screenshot();
    let path = artifacts().join(name);
    std::fs::write(&path, &png).unwrap();
    let (width, height) = png_size(&png);
    eprintln!("screenshot: {} ({width}x{height}, {} bytes)", path.display(), png.len());
    assert!(width >= min_width && height >= 600, "{name}: {width}x{height}");
    assert!(png.len() > 30_000, "{name}: a {} byte PNG cannot show the tables", png.len());
}

#[test]
fn heavy_the_status_page_shows_a_three_region_cluster_live_in_a_real_browser() {
    let started = Instant::now();
    let stage = |what: &str| eprintln!("{:>6.1}s {what}", started.elapsed().as_secs_f64());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let link = LinkConfig::one_way(Duration::from_millis(5));
    let cluster = runtime.block_on(WanCluster::start(link, &["--status-token", STATUS_TOKEN]));
    stage("cluster up");
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    assert_eq!(signed(&a.addr, "PUT", "/status-demo", &[], b"").status, 200);
    for i in 0..5 {
        assert_eq!(signed(&a.addr, "PUT", &format!("/status-demo/small-{i}"), &[], &pattern(1000, i)).status, 200);
    }
    // Bytes written in region b, read twice in region a: a cache miss, then a hit.
    let big = pattern(300_000, 9);
    assert_eq!(signed(&b.addr, "PUT", "/status-demo/from-b", &[], &big).status, 200);
    for _ in 0..2 {
        assert_eq!(signed(&a.addr, "GET", "/status-demo/from-b", &[], b"").body, big);
    }
    assert_eq!(signed(&a.addr, "GET", "/status-demo/missing", &[], b"").status, 404);

    // Not logged in: the page is the login form, the figures are refused.
    assert_eq!(send(&admin_addr(a), "GET", "/status.json", &[], b"").status, 401);
    let wrong = send(
        &admin_addr(a),
        "POST",
        "/status/login",
        &[("content-type", "application/x-www-form-urlencoded".into())],
        b"token=nope",
    );
    assert_eq!(wrong.status, 401);
    assert!(wrong.header("set-cookie").is_none());
    // Tools may send either token as a bearer token instead.
    for token in [ADMIN_TOKEN, STATUS_TOKEN] {
        let figures = send(&admin_addr(a), "GET", "/status.json", &[("authorization", format!("Bearer {token}"))], b"");
        assert_eq!(figures.status, 200, "{}", figures.text());
    }

    stage("traffic sent");
    let mut browser = Browser::start();
    stage("browser up");
    browser.navigate(&format!("{}/status", a.admin_url));
    assert_eq!(browser.wait_for("document.getElementById('token') !== null", Duration::from_secs(20)), json!(true));
    browser.eval(&format!(
        "document.getElementById('token').value = {}; document.getElementById('login').submit(); true",
        json!(STATUS_TOKEN)
    ));
    let three_nodes = "document.querySelectorAll('#nodes tbody tr').length === 3 && document.querySelectorAll('#operations tbody tr').length > 0";
    assert_eq!(browser.wait_for(three_nodes, Duration::from_secs(30)), json!(true), "{}", browser.eval(PAGE_STATE));
    assert_eq!(browser.eval("location.pathname"), json!("/status"));
    assert!(!browser.eval("location.href").as_str().unwrap().contains(STATUS_TOKEN), "the token is never in a URL");
    assert_eq!(browser.eval("document.cookie"), json!(""), "the session cookie is HttpOnly");
    browser.eval("window.notReloaded = true");
    stage("logged in, figures shown");

    // Live: more traffic shows up without a reload.
    let before = browser.eval(PAGE_STATE);
    let gets_before = total_shown(&before, "s3", "GetObject").unwrap();
    for i in 0..5 {
        assert_eq!(signed(&a.addr, "GET", &format!("/status-demo/small-{i}"), &[], b"").status, 200);
    }
    let traffic_done = meridian_engine::now_ms();
    let deadline = Instant::now() + Duration::from_secs(20);
    let state = loop {
        let state = browser.eval(PAGE_STATE);
        if state["generated"].as_i64().unwrap() > traffic_done + 100 {
            break state;
        }
        assert!(Instant::now() < deadline, "the page did not update: {state}");
        std::thread::sleep(Duration::from_millis(250));
    };
    stage("live update seen");
    assert_eq!(state["notReloaded"], true, "the page updated itself, without a reload");
    assert_eq!(total_shown(&state, "s3", "GetObject"), Some(gets_before + 5), "{state}");
    let rate_and_p99 = row(&state, "operations", &["s3", "GetObject"]).unwrap();
    assert_ne!(rate_and_p99[2], "—", "a rate once two polls were seen: {state}");
    assert!(rate_and_p99[3].as_str().unwrap().ends_with("ms"), "p99: {state}");

    // Against /metrics: no client S3 request reached region a since the page's last update.
    let metrics = scrape(a);
    for op in state["operations"].as_array().unwrap() {
        let (listener, operation) = (op[0].as_str().unwrap(), op[1].as_str().unwrap());
        if listener != "s3" || operation.starts_with("peer.") {
            // The page's own polls keep moving the admin listener's counts, and node-to-node
            // requests (pushes of small objects, repairs) go on in the background.
            continue;
        }
        let want = metric_sum(
            &metrics,
            "meridian_http_requests_total",
            &[&format!("listener=\"{listener}\""), &format!("operation=\"{operation}\"")],
        );
        assert_eq!(op[4].as_str().unwrap().parse::<f64>().unwrap(), want, "{listener} {operation}");
    }
    let reads = row(&state, "cacheReads", &["region-b"]).unwrap_or_else(|| panic!("no region-b reads: {state}"));
    for (cell, result) in [(1, "hit"), (2, "miss")] {
        let want = metric_sum(
            &metrics,
            "meridian_cache_reads_total",
            &["region=\"region-b\"", &format!("result=\"{result}\"")],
        );
        assert_eq!(reads[cell].as_str().unwrap().parse::<f64>().unwrap(), want, "region-b {result}s");
        assert!(want >= 1.0, "the remote reads were counted as {result}s: {metrics}");
    }
    assert_eq!(state["pushQueue"], json!(format!("{}", metric_sum(&metrics, "meridian_push_queue_depth", &[]))));

    // Regions and nodes: the cluster registry's.
    let regions: Vec<&str> = state["regions"].as_array().unwrap().iter().map(|r| r[0].as_str().unwrap()).collect();
    assert_eq!(regions, REGIONS);
    for r in state["regions"].as_array().unwrap() {
        assert_eq!(r[1], "1 / 1", "{state}");
    }
    let cluster_view: Value = serde_json::from_slice(
        &send(&admin_addr(a), "GET", "/v1/cluster", &[("authorization", format!("Bearer {ADMIN_TOKEN}"))], b"").body,
    )
    .unwrap();
    for node in cluster_view["nodes"].as_array().unwrap() {
        let id = node["id"].as_str().unwrap();
        let shown = state["nodes"].as_array().unwrap().iter().find(|r| r[0].as_str().unwrap().starts_with(id));
        let shown = shown.unwrap_or_else(|| panic!("node {id} not shown: {state}"));
        assert_eq!((shown[1].as_str(), shown[2].as_str()), (node["region"].as_str(), Some("up")));
        let lag = shown[3].as_str().unwrap();
        assert!(lag.ends_with(" ms") || lag.ends_with(" s"), "node {id}'s measured replication lag: {lag}");
    }
    assert_eq!(state["readiness"], "ready");
    assert!(
        state["errors"].as_array().unwrap().iter().any(|r| r[1] == "404" && r[2] == "GET /status-demo/missing"),
        "the 404 is among the recent errors: {state}"
    );

    stage("figures checked");
    save_screenshot(&mut browser, "status-page.png", 1200);
    // On a phone: nothing wider than the screen (wide tables scroll inside their box).
    browser.emulate_phone(390, 844);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(browser.eval("document.documentElement.scrollWidth <= window.innerWidth"), json!(true));
    save_screenshot(&mut browser, "status-page-phone.png", 390);

    stage("screenshots taken");
    // Logging out ends the session: the figures are refused again.
    browser.eval("document.querySelector('form[action=\"/status/logout\"]').submit(); true");
    assert_eq!(browser.wait_for("document.getElementById('token') !== null", Duration::from_secs(20)), json!(true));
    assert_eq!(browser.eval("fetch('/status.json').then((r) => r.status)"), json!(401));
    stage("logged out");
}
