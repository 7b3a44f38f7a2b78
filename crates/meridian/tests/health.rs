//! Liveness and readiness on the admin port (`/health`, `/ready`) and the S3 port
//! (`/_meridian/health`, `/_meridian/ready`): what they answer on a healthy node, that buckets
//! named `health` and `ready` still work, and that readiness follows the data directory and the
//! link to etcd.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::{Duration, Instant};

use common::Server;
use common::raw::{Response, send, signed};
use common::wan_cluster::WanCluster;
use meridian_wan::LinkConfig;

fn admin_addr(server: &Server) -> String {
    server.admin_url.trim_start_matches("http://").to_string()
}

fn json(resp: &Response) -> serde_json::Value {
    assert_eq!(resp.header("content-type"), Some("application/json"), "{}", resp.text());
    serde_json::from_slice(&resp.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", resp.text()))
}

/// The named check of a readiness answer.
fn check<'a>(ready: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    ready["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name}: {ready}"))
}

/// Where a node answers readiness: its admin port and its S3 port.
#[derive(Clone)]
struct Probes {
    admin: String,
    s3: String,
}

impl Probes {
    fn of(server: &Server) -> Probes {
        Probes { admin: admin_addr(server), s3: server.addr.clone() }
    }

    /// Both ports' readiness answers: (status, JSON) for the admin port then the S3 port.
    fn readiness(&self) -> [(u16, serde_json::Value); 2] {
        [send(&self.admin, "GET", "/ready", &[], b""), send(&self.s3, "GET", "/_meridian/ready", &[], b"")]
            .map(|r| (r.status, json(&r)))
    }

    /// Polls both ports until their readiness is `want` (up to `limit`); the last answers.
    fn wait_for(&self, want: bool, limit: Duration) -> [(u16, serde_json::Value); 2] {
        self.wait_until(move |v| v["ready"] == want, limit)
    }

    /// Polls both ports until both answers pass `done` (up to `limit`); the last answers.
    fn wait_until(&self, done: impl Fn(&serde_json::Value) -> bool, limit: Duration) -> [(u16, serde_json::Value); 2] {
        let deadline = Instant::now() + limit;
        loop {
            let answers = self.readiness();
            if answers.iter().all(|(_, v)| done(v)) || Instant::now() > deadline {
                return answers;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// [`Probes::wait_until`] off the async runtime.
    async fn wait_async(
        &self,
        done: impl Fn(&serde_json::Value) -> bool + Send + 'static,
        limit: Duration,
    ) -> [(u16, serde_json::Value); 2] {
        let probes = self.clone();
        tokio::task::spawn_blocking(move || probes.wait_until(done, limit)).await.unwrap()
    }
}

fn assert_ready(answers: &[(u16, serde_json::Value); 2]) {
    for (status, v) in answers {
        let answer = (*status, &v["ready"], &v["status"]);
        assert_eq!(answer, (200, &serde_json::json!(true), &serde_json::json!("ready")), "{v}");
        for name in ["metadata", "data_dir"] {
            let c = check(v, name);
            assert_eq!(c["ok"], true, "{v}");
            assert!(c.get("reason").is_none(), "a passing check has no reason: {v}");
        }
    }
}

#[test]
fn a_healthy_node_is_live_and_ready_on_both_ports_and_buckets_named_health_and_ready_still_work() {
    let server = Server::start();
    for resp in [
        send(&admin_addr(&server), "GET", "/health", &[], b""),
        send(&server.addr, "GET", "/_meridian/health", &[], b""),
    ] {
        assert_eq!(resp.status, 200, "{}", resp.text());
        let v = json(&resp);
        assert_eq!(v["status"], "ok");
        assert!(v["node"].is_string() && v["region"] == "us-east-1", "{v}");
    }
    assert_ready(&Probes::of(&server).readiness());
    // HEAD works for probes that only look at the status.
    assert_eq!(send(&server.addr, "HEAD", "/_meridian/ready", &[], b"").status, 200);
    // Other methods and neighbouring paths are not probes.
    assert_eq!(send(&admin_addr(&server), "POST", "/ready", &[], b"").status, 401);
    assert_ne!(send(&server.addr, "GET", "/_meridian/ready/x", &[], b"").status, 200);

    // On the S3 port, /health and /ready are buckets like any other.
    for bucket in ["health", "ready"] {
        assert_eq!(signed(&server.addr, "PUT", &format!("/{bucket}"), &[], b"").status, 200);
        assert_eq!(signed(&server.addr, "PUT", &format!("/{bucket}/k"), &[], b"in a bucket").status, 200);
        let listed = signed(&server.addr, "GET", &format!("/{bucket}"), &[], b"");
        assert_eq!(listed.status, 200);
        assert!(
            listed.text().contains("<ListBucketResult") && listed.text().contains("<Key>k</Key>"),
            "{}",
            listed.text()
        );
        let got = signed(&server.addr, "GET", &format!("/{bucket}/k"), &[], b"");
        assert_eq!((got.status, got.body.as_slice()), (200, &b"in a bucket"[..]));
        // Unsigned, it is an S3 request refused as S3 refuses it, not a probe.
        let anonymous = send(&server.addr, "GET", &format!("/{bucket}"), &[], b"");
        assert_eq!((anonymous.status, anonymous.error_code()), (403, "AccessDenied".to_string()));
    }
}

#[test]
fn a_node_whose_data_directory_cannot_be_written_is_live_but_not_ready() {
    let server = Server::start();
    assert_ready(&Probes::of(&server).readiness());
    // Blob writes and the probe go to DATA/tmp. Replace it with a plain file: creating a file in
    // it fails even for root (which file modes would not stop).
    let tmp = server.data.join("tmp");
    let aside = server.data.join("tmp.aside");
    std::fs::rename(&tmp, &aside).unwrap();
    std::fs::write(&tmp, b"not a directory").unwrap();

    let answers = Probes::of(&server).wait_for(false, Duration::from_secs(5));
    for (status, v) in &answers {
        assert_eq!(
            (*status, &v["ready"], &v["status"]),
            (503, &serde_json::json!(false), &serde_json::json!("not ready"))
        );
        let disk = check(v, "data_dir");
        assert_eq!(disk["ok"], false, "{v}");
        let reason = disk["reason"].as_str().unwrap();
        assert!(
            reason.contains("not writable") && reason.contains("tmp") && reason.contains("Not a directory"),
            "the reason names the directory and the error: {reason}"
        );
        assert_eq!(check(v, "metadata")["ok"], true, "the metadata store is fine: {v}");
    }
    // A write that needs a blob really fails: readiness told the truth.
    let big = vec![7u8; 200 << 10];
    assert_eq!(signed(&server.addr, "PUT", "/bucket", &[], b"").status, 200);
    assert_eq!(signed(&server.addr, "PUT", "/bucket/big", &[], &big).status, 500);
    // Still alive: restarting the process would not help.
    assert_eq!(send(&admin_addr(&server), "GET", "/health", &[], b"").status, 200);

    std::fs::remove_file(&tmp).unwrap();
    std::fs::rename(&aside, &tmp).unwrap();
    assert_ready(&Probes::of(&server).wait_for(true, Duration::from_secs(5)));
    assert_eq!(signed(&server.addr, "PUT", "/bucket/big", &[], &big).status, 200);
}

#[test]
fn readiness_answers_are_cached_briefly() {
    let server = Server::start();
    let probes = Probes::of(&server);
    // A flood of probes on both ports within about a second runs the checks once or twice.
    let started = Instant::now();
    let mut runs = std::collections::BTreeSet::new();
    for _ in 0..40 {
        for (_, v) in probes.readiness() {
            runs.insert(v["checked_ms"].as_i64().unwrap());
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    assert!(
        (runs.len() as f64) <= seconds.ceil() + 1.0,
        "80 probes in {seconds:.2}s ran the checks {} times",
        runs.len()
    );
    // After the cache time, a new check runs: a data directory problem shows at once.
    let tmp = server.data.join("tmp");
    std::fs::rename(&tmp, server.data.join("tmp.aside")).unwrap();
    std::fs::write(&tmp, b"x").unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(send(&server.addr, "GET", "/_meridian/ready", &[], b"").status, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_readiness_follows_a_nodes_link_to_etcd() {
    let link = LinkConfig::one_way(Duration::from_millis(20));
    let args = ["--ready-max-lag", "300ms"];
    let cluster = WanCluster::start(link, &args).await;
    let (node, _link) = cluster.start_node_through_wan("region-a-2", "region-a", &args).await;
    let other = &cluster.nodes[1];
    assert_ready(&Probes::of(&node).wait_async(|v| v["ready"] == true, Duration::from_secs(10)).await);
    // The node-to-node endpoint under the same prefix still wants the cluster token.
    let blob = send(&node.addr, "GET", "/_meridian/blob/0123456789abcdef0123456789abcdef?offset=0&len=1", &[], b"");
    assert!(matches!(blob.status, 401 | 403), "{} {}", blob.status, blob.text());

    // Cut off from every etcd member: not ready within a few seconds, with the reason.
    for link in &cluster.etcd_links[3..6] {
        link.partition();
    }
    let started = Instant::now();
    let answers = Probes::of(&node).wait_async(|v| v["ready"] == false, Duration::from_secs(10)).await;
    let took = started.elapsed();
    for (status, v) in &answers {
        assert_eq!(*status, 503, "{v}");
        let meta = check(v, "metadata");
        assert_eq!(meta["ok"], false, "{v}");
        assert!(meta["reason"].as_str().unwrap().contains("metadata store"), "{v}");
        assert_eq!(check(v, "data_dir")["ok"], true, "{v}");
    }
    assert!(took < Duration::from_secs(6), "not ready after {took:?}");
    // The region's own nodes keep their local member and are ready meanwhile. (Their lag
    // check allows 300 ms, which a fully loaded machine can exceed for a moment: the whole
    // suite on two cores once failed a 1 s wait here, so they get 10 s.)
    assert_ready(&Probes::of(other).wait_async(|v| v["ready"] == true, Duration::from_secs(10)).await);
    // Live all along.
    assert_eq!(send(&admin_addr(&node), "GET", "/health", &[], b"").status, 200);

    for link in &cluster.etcd_links[3..6] {
        link.heal();
    }
    assert_ready(&Probes::of(&node).wait_async(|v| v["ready"] == true, Duration::from_secs(15)).await);

    // A lagging view: the etcd leader's messages take 600 ms to reach the other members, so a
    // node reading from a follower sees every write 600 ms late, over the 300 ms it allows
    // itself. (Members read each other's messages over connections they dial to the sender's
    // advertised peer URL, so the leader's link is the one to slow.)
    let leader = cluster.etcd.wait_for_leader(Duration::from_secs(10));
    let follower = (leader + 1) % 3;
    cluster.etcd_links[leader].set_config(LinkConfig::one_way(Duration::from_millis(600)));
    let lagging = Probes::of(&cluster.nodes[follower]);
    // (Its linearizable reads slow down too, and may fail the metadata check as well.)
    let lag_failed = |v: &serde_json::Value| check(v, "replication_lag")["ok"] == false;
    for (status, v) in &lagging.wait_async(lag_failed, Duration::from_secs(15)).await {
        assert_eq!((*status, &v["ready"]), (503, &serde_json::json!(false)), "{v}");
        let reason = check(v, "replication_lag")["reason"].as_str().unwrap_or_else(|| panic!("no lag reason: {v}"));
        assert!(reason.contains("more than the 300 ms allowed"), "{v}");
    }
    cluster.etcd_links[leader].set_config(link);
    assert_ready(&lagging.wait_async(|v| v["ready"] == true, Duration::from_secs(15)).await);
}
