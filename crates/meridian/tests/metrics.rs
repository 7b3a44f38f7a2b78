//! `/metrics`: who may read it, what S3, KV and remote-read traffic does to the figures on a
//! three-region cluster, `promtool check metrics` on every node's output, and the replication
//! lag measured as time while an etcd link is slowed.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use common::metrics::{s3_ops as ops, sample, scrape, scrape_with};
use common::wan_cluster::{WanCluster, wait_until};
use common::{ACCESS_KEY, ADMIN_TOKEN, SECRET_KEY, Server, pattern, raw};
use meridian_wan::LinkConfig;

fn addr_of(url: &str) -> &str {
    url.split_once("://").map_or(url, |(_, rest)| rest)
}

fn free_addr() -> String {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string()
}

/// Runs `promtool check metrics` on `text`; panics with its complaints.
fn promtool_check(text: &str) {
    use std::io::Write;
    let promtool = common::require_tool("promtool", "apt-get install prometheus");
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        common::text(&out.stdout),
        common::text(&out.stderr)
    );
}

#[test]
fn metrics_need_the_admin_or_status_token_and_the_status_token_opens_nothing_else() {
    let metrics_listen = free_addr();
    let server = Server::start_with(&["--status-token", "status-secret", "--metrics-listen", &metrics_listen]);
    let admin = addr_of(&server.admin_url);
    assert_eq!(scrape_with(&server, None).status, 401);
    assert_eq!(scrape_with(&server, Some("wrong")).status, 401);
    let by_admin = scrape_with(&server, Some(ADMIN_TOKEN));
    assert_eq!(by_admin.status, 200);
    assert_eq!(by_admin.header("content-type"), Some(meridian_metrics::TEXT_CONTENT_TYPE));
    let by_status = scrape_with(&server, Some("status-secret"));
    assert_eq!(by_status.status, 200);
    assert!(by_status.text().contains("# TYPE meridian_http_requests_total counter"), "{}", by_status.text());

    // The status token reads nothing else, and changes nothing.
    let status = [("authorization", "Bearer status-secret".to_string())];
    for (method, path, body) in [
        ("GET", "/v1/keys", ""),
        ("GET", "/v1/cluster", ""),
        ("GET", "/v1/buckets", ""),
        ("POST", "/v1/keys", r#"{"name":"intruder"}"#),
    ] {
        let resp = raw::send(admin, method, path, &status, body.as_bytes());
        assert_eq!(resp.status, 403, "{method} {path} with the status token: {}", resp.text());
    }
    let admin_token = [("authorization", format!("Bearer {ADMIN_TOKEN}"))];
    let keys = raw::send(admin, "GET", "/v1/keys", &admin_token, b"");
    assert!(!keys.text().contains("intruder"), "{}", keys.text());

    // OpenMetrics for scrapers that ask for it.
    let accept = [admin_token[0].clone(), ("accept", "application/openmetrics-text; version=1.0.0".to_string())];
    let open = raw::send(admin, "GET", "/metrics", &accept, b"");
    assert_eq!(open.header("content-type"), Some(meridian_metrics::OPENMETRICS_CONTENT_TYPE));
    assert!(open.text().ends_with("# EOF\n"));

    // The separate listener needs no token, and serves nothing but /metrics.
    let open_port = raw::send(&metrics_listen, "GET", "/metrics", &[], b"");
    assert_eq!(open_port.status, 200);
    assert!(open_port.text().contains("meridian_http_requests_total{listener=\"admin\""), "{}", open_port.text());
    assert_eq!(raw::send(&metrics_listen, "GET", "/v1/keys", &[], b"").status, 404);
}

/// Starts the three-region cluster (5 ms each way between regions).
async fn cluster() -> WanCluster {
    WanCluster::start(LinkConfig::one_way(Duration::from_millis(5)), &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_s3_kv_and_remote_reads_move_the_right_metrics_on_every_region() {
    let cluster = cluster().await;
    let (a, c) = (&cluster.nodes[0], &cluster.nodes[2]);
    let s3 = cluster.client(0);
    s3.create_bucket().bucket("metered").send().await.unwrap();

    // S3: five PUTs of 3000 bytes, one GET of a missing key.
    let before = scrape(a);
    for i in 0..5 {
        let body = ByteStream::from(pattern(3000, i));
        s3.put_object().bucket("metered").key(format!("k{i}")).body(body).send().await.unwrap();
    }
    assert!(s3.get_object().bucket("metered").key("missing").send().await.is_err());
    // KV: one batch, one list.
    let kv =
        meridian_client::Client::new(&a.endpoint, "metered", meridian_client::Credentials::new(ACCESS_KEY, SECRET_KEY))
            .unwrap();
    kv.batch(vec![meridian_client::BatchOp::put("kv-1", "one"), meridian_client::BatchOp::put("kv-2", "two")])
        .await
        .unwrap();
    let after = scrape(a);
    let delta = |f: &dyn Fn(&str) -> f64| f(&after) - f(&before);
    assert_eq!(delta(&|t| ops(t, "PutObject", "2xx")), 5.0);
    assert_eq!(delta(&|t| ops(t, "GetObject", "4xx")), 1.0);
    assert_eq!(delta(&|t| ops(t, "kv.batch", "2xx")), 1.0);
    let put_latency = [("listener", "s3"), ("operation", "PutObject"), ("status_class", "2xx")];
    assert_eq!(delta(&|t| sample(t, "meridian_http_request_duration_seconds_count", &put_latency)), 5.0);
    assert!(delta(&|t| sample(t, "meridian_http_request_duration_seconds_sum", &put_latency)) > 0.0);
    let put_bytes = [("listener", "s3"), ("operation", "PutObject")];
    assert!(delta(&|t| sample(t, "meridian_http_request_body_bytes_total", &put_bytes)) >= 15_000.0);
    let get_bytes = [("listener", "s3"), ("operation", "GetObject")];
    assert!(delta(&|t| sample(t, "meridian_http_response_body_bytes_total", &get_bytes)) > 0.0, "the error body");
    // The scrape itself is in flight on an open admin connection.
    assert!(sample(&after, "meridian_http_requests_in_flight", &[("listener", "admin")]) >= 1.0);
    assert!(sample(&after, "meridian_http_connections_open", &[("listener", "admin")]) >= 1.0);
    // The writes went through etcd.
    assert!(delta(&|t| sample(t, "meridian_etcd_request_duration_seconds_count", &[("call", "transaction")])) >= 5.0);

    // A remote read in region c of an object held in region a (too large to be pushed): a
    // miss, then a hit, with the bytes counted by the region that holds them.
    let big = pattern(400_000, 9);
    let put = raw::signed(&a.addr, "PUT", "/metered/big", &[], &big);
    assert_eq!(put.status, 200);
    let before = scrape(c);
    let strong = [("x-meridian-consistency", "strong".to_string())];
    for expected in ["miss", "hit"] {
        let got = raw::signed(&c.addr, "GET", "/metered/big", &strong, b"");
        assert_eq!((got.status, got.header("x-meridian-cache")), (200, Some(expected)));
        assert_eq!(got.body, big);
    }
    let after = scrape(c);
    let delta = |f: &dyn Fn(&str) -> f64| f(&after) - f(&before);
    let from_a = |result| [("region", "region-a"), ("result", result)];
    assert_eq!(delta(&|t| sample(t, "meridian_cache_reads_total", &from_a("miss"))), 1.0);
    assert_eq!(delta(&|t| sample(t, "meridian_cache_reads_total", &from_a("hit"))), 1.0);
    assert_eq!(delta(&|t| sample(t, "meridian_cache_read_bytes_total", &[("region", "region-a")])), 800_000.0);
    let chunks = big.len().div_ceil(meridian_engine::CHUNK_SIZE as usize) as f64;
    assert_eq!(delta(&|t| sample(t, "meridian_cache_chunk_misses_total", &[])), chunks);
    assert_eq!(delta(&|t| sample(t, "meridian_cache_chunk_hits_total", &[])), chunks);
    assert_eq!(delta(&|t| sample(t, "meridian_cache_fills_total", &[])), chunks);
    assert!(delta(&|t| sample(t, "meridian_cache_fill_bytes_total", &[])) >= big.len() as f64);
    assert!(sample(&after, "meridian_cache_size_bytes", &[]) >= big.len() as f64);

    // A small object written in region a is pushed into region c's cache.
    let pushed_before = sample(&scrape(c), "meridian_pushes_total", &[]);
    let small = raw::signed(&a.addr, "PUT", "/metered/small", &[], &pattern(20_000, 4));
    assert_eq!(small.status, 200);
    assert!(
        wait_until(Duration::from_secs(10), || sample(&scrape(c), "meridian_pushes_total", &[]) > pushed_before),
        "region c never counted the push"
    );
    let pushed = scrape(c);
    assert_eq!(sample(&pushed, "meridian_push_queue_depth", &[]), 0.0);
    assert!(sample(&pushed, "meridian_push_duration_seconds_count", &[]) >= 1.0);

    // Every node measures its lag, and every node's output passes promtool.
    assert!(
        wait_until(Duration::from_secs(10), || cluster.nodes.iter().all(|n| sample(
            &scrape(n),
            "meridian_replication_lag_measured_seconds_count",
            &[]
        ) >= 1.0)),
        "a node never measured its replication lag"
    );
    for node in &cluster.nodes {
        promtool_check(&scrape(node));
    }
}

/// `meridian cluster status --json` asked of `server`: each node's id and measured lag (ms).
fn cluster_lags(server: &Server) -> Vec<(String, Option<u64>)> {
    let mut cmd = Command::new(common::binary());
    cmd.args(["cluster", "status", "--json", "--url", &server.admin_url, "--token", ADMIN_TOKEN]);
    let out = common::run_with_timeout(&mut cmd, Duration::from_secs(30));
    let v: serde_json::Value = serde_json::from_str(&common::expect_success("cluster status", &out)).unwrap();
    v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap().to_string(), n["lag_ms"].as_u64()))
        .collect()
}

fn node_id(server: &Server) -> String {
    std::fs::read_to_string(server.data.join("node-id")).unwrap().trim().to_string()
}

fn lag_seconds(server: &Server) -> f64 {
    sample(&scrape(server), "meridian_replication_lag_seconds", &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_replication_lag_rises_while_an_etcd_link_is_slow_and_falls_after() {
    let cluster = WanCluster::start(LinkConfig::none(), &[]).await;
    // etcd members reach the leader through its peer proxy, and the leader sends them its log
    // over those same connections: delaying that proxy makes every other member apply each
    // change late (the leader itself, the newest view, is on time).
    let leader = cluster.etcd.wait_for_leader(Duration::from_secs(10));
    let follower = (0..3).find(|i| *i != leader).unwrap();
    let (lagging, writer) = (&cluster.nodes[follower], cluster.nodes[leader].addr.clone());
    assert_eq!(raw::signed(&writer, "PUT", "/lag-probe", &[], b"").status, 200);
    let lagging_id = node_id(lagging);
    assert!(
        wait_until(Duration::from_secs(10), || lag_seconds(lagging) < 0.1
            && sample(&scrape(lagging), "meridian_replication_lag_measured_seconds_count", &[]) >= 1.0),
        "the lag of a healthy cluster should be measured and small"
    );

    // Writes keep coming while the leader's peer link is delayed 800 ms each way.
    let writing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let writes = {
        let writing = writing.clone();
        std::thread::spawn(move || {
            let mut n = 0;
            while writing.load(std::sync::atomic::Ordering::Relaxed) && n < 2000 {
                raw::signed(&writer, "PUT", &format!("/lag-probe/k{}", n % 10), &[], b"x");
                n += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    cluster.etcd_links[leader].set_config(LinkConfig::one_way(Duration::from_millis(800)));
    assert!(
        wait_until(Duration::from_secs(15), || lag_seconds(lagging) >= 0.3),
        "the lag never rose while the link was slow (now {}s)",
        lag_seconds(lagging)
    );
    // `meridian cluster status`, asked of another node, shows it too (from the heartbeat).
    let other = &cluster.nodes[leader];
    assert!(
        wait_until(Duration::from_secs(15), || cluster_lags(other)
            .iter()
            .any(|(id, lag)| *id == lagging_id && lag.is_some_and(|ms| ms >= 300))),
        "cluster status never showed the lag: {:?}",
        cluster_lags(other)
    );

    cluster.etcd_links[leader].set_config(LinkConfig::none());
    assert!(
        wait_until(Duration::from_secs(20), || lag_seconds(lagging) < 0.1),
        "the lag never fell back after the link recovered (now {}s)",
        lag_seconds(lagging)
    );
    assert!(
        wait_until(Duration::from_secs(15), || cluster_lags(other)
            .iter()
            .any(|(id, lag)| *id == lagging_id && lag.is_some_and(|ms| ms < 100))),
        "cluster status never showed the lag falling: {:?}",
        cluster_lags(other)
    );
    writing.store(false, std::sync::atomic::Ordering::Relaxed);
    writes.join().unwrap();
}

/// Starts a node with `log_args` and `RUST_LOG`, sends one signed GET of a missing bucket and
/// returns its request id and the node's stderr lines after a clean stop.
fn access_lines(log_args: &[&str], rust_log: &str) -> (String, Vec<String>) {
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = Server::command(&tmp.path().join("data"), log_args, None, None);
    cmd.env("RUST_LOG", rust_log).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stdout = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let endpoint =
        stdout.by_ref().map_while(Result::ok).find_map(|line| line.strip_prefix("S3 endpoint: ").map(str::to_string));
    // The node prints more after the endpoint: keep its stdout open.
    std::thread::spawn(move || stdout.for_each(drop));
    let Some(endpoint) = endpoint else {
        let out = child.wait_with_output().unwrap();
        panic!("the node did not start ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    };
    let resp = raw::signed(addr_of(&endpoint), "GET", "/no-such-bucket/k", &[], b"");
    assert_eq!(resp.status, 404, "{}", resp.text());
    let id = resp.header("x-amz-request-id").expect("request id").to_string();
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the node stops cleanly on SIGTERM: {}", out.status);
    (id, String::from_utf8_lossy(&out.stderr).lines().map(str::to_string).collect())
}

#[test]
fn access_log_lines_name_each_request_in_text_and_json() {
    let (id, lines) = access_lines(&[], "warn,meridian::access=info");
    let line = lines.iter().find(|l| l.contains(&format!("request_id={id}"))).unwrap_or_else(|| {
        panic!("no access line for request {id}: {lines:#?}");
    });
    // `<RFC 3339 time, UTC, microseconds>  INFO meridian::access: facts`, as tracing writes lines.
    let (stamp, rest) = line.split_once("  INFO meridian::access: ").expect("the line's prefix");
    let at = time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339).unwrap();
    let age = time::OffsetDateTime::now_utc() - at;
    assert!(age >= time::Duration::ZERO && age < time::Duration::seconds(60), "{stamp} is now");
    assert_eq!(stamp.len(), "2026-12-06T00:00:31.162081Z".len(), "{stamp}");
    assert!(rest.starts_with("listener=\"s3\" request_id="), "{rest}");
    for fact in ["method=GET", "path=/no-such-bucket/k", "status=404", "completed=true", "principal=\"admin\""] {
        assert!(rest.contains(fact), "{fact} in {rest}");
    }

    let (id, lines) = access_lines(&["--log-format", "json"], "warn,meridian::access=info");
    let event = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["fields"]["request_id"] == id.as_str())
        .unwrap_or_else(|| panic!("no JSON access event for request {id}: {lines:#?}"));
    assert_eq!(event["target"], "meridian::access");
    assert_eq!(event["fields"]["status"], 404);
    assert_eq!(event["fields"]["path"], "/no-such-bucket/k");

    let (id, lines) = access_lines(&[], "warn,meridian::access=off");
    assert!(!lines.iter().any(|l| l.contains(&id)), "RUST_LOG turned the access log off: {lines:#?}");
}
