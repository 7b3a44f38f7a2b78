//! `meridian bench` (the meridian-bench library) against a real `meridian server` on loopback,
//! which checks every SigV4 signature. Every run is bounded by --ops or a short --duration.
//! (bench/run-all.sh drives the same tool against the peer servers.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use meridian_bench::s3::{Conn, Endpoint, S3Client};
use meridian_bench::{BenchArgs, BenchError, DurationArg, OpKind, Report, SizeSpec, TargetSpec, Workload, run};
use std::time::{Duration, Instant};

const AK: &str = common::ACCESS_KEY;
const SK: &str = common::SECRET_KEY;

struct Peer {
    endpoint: String,
    _server: common::Server,
}

/// Starts a Meridian server to drive.
fn start_peer() -> Peer {
    let server = common::Server::start();
    Peer { endpoint: server.endpoint.clone(), _server: server }
}

fn args(peer: &Peer, bucket: &str, workload: Workload) -> BenchArgs {
    let mut a = BenchArgs::new(TargetSpec::S3, workload);
    a.endpoint = Some(peer.endpoint.clone());
    a.access_key = Some(AK.into());
    a.secret_key = Some(SK.into());
    a.bucket = bucket.into();
    a.create_bucket = true;
    a.concurrency = 4;
    a.size = SizeSpec::Range { min: 1024, max: 8192 };
    a.objects = 40;
    a.ops = Some(120);
    a.timeout = DurationArg(Duration::from_secs(20));
    a
}

fn op(r: &Report, kind: OpKind) -> &meridian_bench::OpReport {
    r.ops.iter().find(|o| o.op == kind).unwrap_or_else(|| panic!("no {kind:?} in {r:#?}"))
}

async fn keys_under(peer: &Peer, bucket: &str, prefix: &str) -> Result<usize, String> {
    let ep = Endpoint::parse(&peer.endpoint).await?;
    let c = S3Client::new(&ep, bucket, Some((AK, SK)), "us-east-1");
    let mut conn = Conn::default();
    c.list(&mut conn, prefix, None, None, 1000).await.map(|p| p.keys.len()).map_err(|e| e.to_string())
}

#[tokio::test]
async fn every_workload_runs_against_a_real_s3_server_and_cleans_up() {
    let peer = start_peer();
    for (i, w) in
        [Workload::Put, Workload::Get, Workload::Head, Workload::Mixed, Workload::List].into_iter().enumerate()
    {
        let bucket = format!("bench-{i}");
        let mut a = args(&peer, &bucket, w);
        a.prefix = Some(format!("run-{i}/"));
        a.keep = true; // keep the bucket to look inside it, then clean by hand below
        a.list_max_keys = 10;
        let r = run(a.clone()).await.unwrap_or_else(|e| panic!("{w:?}: {e}"));
        assert_eq!(r.total.errors, 0, "{w:?}: {}", r.to_table());
        assert_eq!(r.total.ops, 120, "{w:?}: {}", r.to_table());
        match w {
            Workload::Put => {
                let p = op(&r, OpKind::Put);
                assert!(p.bytes >= 120 * 1024 && p.bytes <= 120 * 8192);
                assert!(p.latency_ms.p50 > 0.0 && p.latency_ms.max >= p.latency_ms.p99);
                assert_eq!(keys_under(&peer, &bucket, "run-0/").await.unwrap(), 120);
            }
            Workload::Get => {
                assert_eq!(r.prepared_objects, 40);
                let g = op(&r, OpKind::Get);
                assert!(g.bytes >= 120 * 1024 && g.mib_per_sec > 0.0);
            }
            Workload::Head => assert_eq!(op(&r, OpKind::Head).count, 120),
            Workload::Mixed => {
                // All four default kinds show up in 120 draws.
                for k in [OpKind::Get, OpKind::Put, OpKind::Head, OpKind::Delete] {
                    assert!(op(&r, k).count > 0, "{k:?}: {}", r.to_table());
                }
            }
            Workload::List => assert_eq!(op(&r, OpKind::List).count, 120),
            _ => unreachable!(),
        }
        // Now a run that cleans up after itself, in the same bucket.
        a.keep = false;
        a.create_bucket = false;
        a.prefix = Some(format!("clean-{i}/"));
        let r = run(a).await.unwrap();
        // Mixed deletes some of its prepared objects itself, so fewer may be left to clean.
        let least = if w == Workload::Mixed { 1 } else { 40.min(r.total.ops) };
        assert!(r.cleaned_up >= least, "{}", r.to_table());
        assert!(r.cleanup_errors.is_empty(), "{:?}", r.cleanup_errors);
        assert_eq!(keys_under(&peer, &bucket, &format!("clean-{i}/")).await.unwrap(), 0);
    }
}

#[tokio::test]
async fn delete_multipart_and_the_duration_bound() {
    let peer = start_peer();

    let mut a = args(&peer, "bench-del", Workload::Delete);
    a.ops = None;
    a.duration = Some(DurationArg(Duration::from_secs(30)));
    let r = run(a).await.unwrap();
    // Each prepared object deleted once, then the run ends early.
    assert_eq!(op(&r, OpKind::Delete).count, 40, "{}", r.to_table());
    assert!(r.duration_secs < 30.0);

    let mut a = args(&peer, "bench-mp", Workload::Multipart);
    a.size = SizeSpec::Fixed(11 << 20);
    a.part_size = 5 << 20;
    a.ops = Some(2);
    a.concurrency = 2;
    let r = run(a).await.unwrap();
    assert_eq!(r.total.errors, 0, "{}", r.to_table());
    assert_eq!(op(&r, OpKind::Multipart).count, 2);
    assert_eq!(op(&r, OpKind::Part).count, 6);
    assert_eq!(r.total.bytes, 2 * (11 << 20));
    assert_eq!(r.cleaned_up, 2);

    let mut a = args(&peer, "bench-dur", Workload::Mixed);
    a.ops = None;
    a.duration = Some(DurationArg(Duration::from_millis(1500)));
    let t = Instant::now();
    let r = run(a).await.unwrap();
    assert!(r.duration_secs <= 1.6, "measured {}", r.duration_secs);
    assert!(r.total.ops > 0);
    // Prepare 40 small objects + 1.5 s + cleanup: well within 15 s.
    assert!(t.elapsed() < Duration::from_secs(15));
}

#[tokio::test]
async fn errors_are_counted_by_kind_and_bad_credentials_are_refused() {
    let peer = start_peer();

    // GETs of keys that were never written: every op is a 404 NoSuchKey.
    let mut a = args(&peer, "missing", Workload::Get);
    a.prepare_objects = Some(0);
    a.ops = Some(20);
    let r = run(a).await.unwrap();
    let g = op(&r, OpKind::Get);
    assert_eq!(g.count, 0);
    assert_eq!(g.error_kinds.get("http-404-NoSuchKey"), Some(&20), "{:?}", g.error_kinds);

    // A wrong secret: the server rejects the signature at bucket creation.
    let mut a = args(&peer, "badsig", Workload::Put);
    a.secret_key = Some("not-the-secret-key-at-all".into());
    match run(a).await {
        Err(BenchError::Setup(m)) => assert!(m.contains("403"), "{m}"),
        other => panic!("expected a 403 at setup, got {other:?}"),
    }
}

#[tokio::test]
async fn ceilings_run_the_same_workloads() {
    // The files ceiling: real files, fsynced, in a temporary directory.
    let dir = tempfile::tempdir().unwrap();
    let mut a = BenchArgs::new(TargetSpec::Files(dir.path().to_owned()), Workload::Mixed);
    a.objects = 30;
    a.ops = Some(100);
    a.concurrency = 4;
    let r = run(a).await.unwrap();
    assert_eq!((r.total.ops, r.total.errors), (100, 0), "{}", r.to_table());
    assert!(r.cleaned_up > 0);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "files left behind");

    // The HTTP ceiling: an in-process server that stores nothing.
    let mut a = BenchArgs::new(TargetSpec::NullHttp, Workload::Get);
    a.size = SizeSpec::Fixed(4096);
    a.objects = 10;
    a.ops = Some(500);
    a.concurrency = 8;
    let r = run(a).await.unwrap();
    let g = op(&r, OpKind::Get);
    assert_eq!((g.count, g.errors), (500, 0));
    assert_eq!(g.bytes, 500 * 4096);
}
