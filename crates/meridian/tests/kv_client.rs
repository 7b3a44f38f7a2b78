#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

//! The KV API end to end: `meridian-client` and `meridian kv` against a real `meridian server`
//! on a loopback port. Every client operation, every error variant, TTL at sub-second
//! granularity and across restarts, the seed-003 re-put case, watch resume (also across a
//! restart) and compaction, batches, and the error messages of bad input.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use common::{ACCESS_KEY, SECRET_KEY, Server, raw};
use futures::StreamExt;
use meridian_client::{
    BatchOp, Client, Consistency, Credentials, DeleteOptions, Error, Event, EventKind, Fence, GetOptions, PutOptions,
    Transaction, WatchStream,
};

const BUCKET: &str = "kvtest";

fn client(server: &Server) -> Client {
    Client::new(&server.endpoint, BUCKET, Credentials::new(ACCESS_KEY, SECRET_KEY)).unwrap()
}

async fn setup() -> (Server, Client) {
    setup_with(&[]).await
}

async fn setup_with(extra: &[&str]) -> (Server, Client) {
    let server = Server::start_with(extra);
    let kv = client(&server);
    kv.create_bucket().await.unwrap();
    kv.create_bucket().await.unwrap(); // idempotent
    (server, kv)
}

async fn value(kv: &Client, key: &str) -> Option<String> {
    kv.get(key).await.unwrap().map(|e| String::from_utf8(e.value.to_vec()).unwrap())
}

async fn keys(kv: &Client, prefix: &str) -> Vec<String> {
    kv.list_all(prefix).await.unwrap().into_iter().map(|e| e.key).collect()
}

async fn next_event(stream: &mut WatchStream) -> Event {
    match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
        Ok(Some(Ok(event))) => event,
        other => panic!("expected an event, got {other:?}"),
    }
}

/// Events until one of `key` arrives (skipping transport errors of a resumable watch).
async fn events_until(stream: &mut WatchStream, count: usize) -> Vec<Event> {
    let mut out = Vec::new();
    while out.len() < count {
        match tokio::time::timeout(Duration::from_secs(20), stream.next()).await {
            Ok(Some(Ok(event))) => out.push(event),
            Ok(Some(Err(e))) if e.is_transport() => {}
            other => panic!("expected an event, got {other:?} after {out:?}"),
        }
    }
    out
}

/// Sleeps until `margin` after the Unix-ms instant `at_ms` (the server's clock is this machine's).
async fn sleep_past(at_ms: i64, margin: Duration) {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_millis() as i64;
    let wait = Duration::from_millis((at_ms - now).max(0) as u64) + margin;
    tokio::time::sleep(wait).await;
}

async fn no_more_events(stream: &mut WatchStream, within: Duration) {
    if let Ok(Some(item)) = tokio::time::timeout(within, stream.next()).await {
        panic!("unexpected extra watch item {item:?}");
    }
}

#[tokio::test]
async fn get_put_delete_list_with_versions() {
    let (server, kv) = setup().await;
    assert_eq!(kv.get("missing").await.unwrap(), None);

    let r1 = kv.put("users/1", "alice").await.unwrap();
    let e = kv.get("users/1").await.unwrap().unwrap();
    assert_eq!((e.value, e.revision, e.expires_at_ms, e.ttl_remaining), (Bytes::from("alice"), r1, None, None));
    assert_eq!(e.etag, common::md5_hex(b"alice"));
    let r2 = kv.put("users/1", "alice v2").await.unwrap();
    assert!(r2 > r1, "every write gets a new, larger revision");
    let r3 = kv.put("users/2", Bytes::from(vec![0u8, 255, 1])).await.unwrap();
    assert!(r3 > r2);
    assert_eq!(kv.get("users/2").await.unwrap().unwrap().value.as_ref(), &[0u8, 255, 1]);

    // The same data through S3: the KV is the bucket.
    let s3 = server.client();
    let out = s3.get_object().bucket(BUCKET).key("users/1").send().await.unwrap();
    assert_eq!(common::body_bytes(out).await, b"alice v2");
    s3.put_object().bucket(BUCKET).key("from-s3").body(b"hello".to_vec().into()).send().await.unwrap();
    assert_eq!(value(&kv, "from-s3").await.as_deref(), Some("hello"));

    // Awkward keys survive the round trip (percent-encoded once, '/' kept).
    let odd = ["a b/c+d", "ünï/cødé", "q?x=1&y#frag", "100%", "tilde~/dot./", "a//double"];
    for (i, k) in odd.iter().enumerate() {
        kv.put(k, format!("odd{i}")).await.unwrap();
        assert_eq!(value(&kv, k).await, Some(format!("odd{i}")), "{k:?}");
    }

    // Listing: versions, sizes, pagination.
    let page = kv.list("users/", None, 1).await.unwrap();
    assert_eq!(page.entries.len(), 1);
    assert_eq!((page.entries[0].key.as_str(), page.entries[0].revision, page.entries[0].size), ("users/1", r2, 8));
    assert_eq!(page.next_after.as_deref(), Some("users/1"));
    assert!(page.revision >= r3);
    let page2 = kv.list("users/", page.next_after.as_deref(), 1).await.unwrap();
    assert_eq!(page2.entries[0].key, "users/2");
    assert_eq!(page2.next_after, None);
    for i in 0..1203 {
        if i % 400 == 0 {
            let ops = (i..(i + 400).min(1203)).map(|j| BatchOp::put(format!("many/{j:05}"), "x")).collect();
            kv.batch(ops).await.unwrap();
        }
    }
    let all = kv.list_all("many/").await.unwrap();
    assert_eq!(all.len(), 1203, "list_all pages through more than one 1,000-key page");
    assert!(all.windows(2).all(|w| w[0].key < w[1].key));

    // Delete: a revision of its own; deleting a missing key is fine.
    let rd = kv.delete("users/1").await.unwrap();
    assert!(rd > r3);
    assert_eq!(kv.get("users/1").await.unwrap(), None);
    assert!(kv.delete("users/1").await.unwrap() >= rd);
    assert_eq!(keys(&kv, "users/").await, ["users/2"]);
    assert!(kv.revision().await.unwrap() >= rd);

    assert!(matches!(kv.get("").await, Err(Error::InvalidInput(_))));
}

#[tokio::test]
async fn compare_and_set_and_create_only() {
    let (_server, kv) = setup().await;
    let r1 = kv.put_with("cfg", "v1", &PutOptions::default().if_absent()).await.unwrap();
    match kv.put_with("cfg", "again", &PutOptions::default().if_absent()).await {
        Err(Error::VersionMismatch { current, message }) => {
            assert_eq!(current, r1);
            assert!(message.contains(&format!("current is {r1}")), "{message}");
        }
        other => panic!("expected VersionMismatch, got {other:?}"),
    }
    let r2 = kv.put_with("cfg", "v2", &PutOptions::default().if_revision(r1)).await.unwrap();
    let stale = kv.put_with("cfg", "lost", &PutOptions::default().if_revision(r1)).await;
    assert!(matches!(stale, Err(Error::VersionMismatch { current, .. }) if current == r2), "{stale:?}");
    assert_eq!(value(&kv, "cfg").await.as_deref(), Some("v2"));
    // if_revision 0 is create-only too.
    let absent = kv.put_with("new", "n", &PutOptions::default().if_revision(0)).await.unwrap();
    assert!(absent > r2);
    // Conflicting options are refused before sending.
    let both = PutOptions { if_absent: true, if_revision: Some(5), ..Default::default() };
    assert!(matches!(kv.put_with("cfg", "x", &both).await, Err(Error::InvalidInput(_))));

    // Conditional delete.
    let del = kv.delete_with("cfg", &DeleteOptions { if_revision: Some(r1), fence: None }).await;
    assert!(matches!(del, Err(Error::VersionMismatch { current, .. }) if current == r2), "{del:?}");
    kv.delete_with("cfg", &DeleteOptions { if_revision: Some(r2), fence: None }).await.unwrap();
    assert_eq!(kv.get("cfg").await.unwrap(), None);
    let gone = kv.delete_with("cfg", &DeleteOptions { if_revision: Some(r2), fence: None }).await;
    assert!(matches!(gone, Err(Error::VersionMismatch { current: 0, .. })), "{gone:?}");
    assert!(gone.unwrap_err().is_aborted());
}

/// S3's conditions through the client, reads at each consistency, and the session cookie kept
/// and sent back like a browser's.
#[tokio::test]
async fn s3_conditions_read_consistency_and_the_session_cookie() {
    let (_server, kv) = setup().await;
    let first = kv.put_with("c", "1", &PutOptions::default().if_none_match()).await.unwrap();
    let again = kv.put_with("c", "2", &PutOptions::default().if_none_match()).await.unwrap_err();
    assert!(matches!(&again, Error::VersionMismatch { .. } | Error::Service { status: 412, .. }), "{again:?}");
    let entry = kv.get_with("c", &GetOptions::default().consistency(Consistency::Strong)).await.unwrap().unwrap();
    assert_eq!((entry.value.as_ref(), entry.revision), (&b"1"[..], first));
    let stale = kv.put_with("c", "3", &PutOptions::default().if_match("0123456789abcdef0123456789abcdef")).await;
    assert!(matches!(&stale, Err(Error::VersionMismatch { .. } | Error::Service { status: 412, .. })), "{stale:?}");
    let second = kv.put_with("c", "4", &PutOptions::default().if_match(entry.etag)).await.unwrap();
    let at_least = GetOptions::default().consistency(Consistency::AtLeast(second));
    assert_eq!(kv.get_with("c", &at_least).await.unwrap().unwrap().value.as_ref(), b"4");

    // Without a session nothing is kept; with one, every write's cookie is, and clones (and
    // clients of other endpoints made from it) share it.
    assert_eq!(kv.session_revision(), None);
    let session = kv.clone().with_session();
    let elsewhere = session.with_endpoint(session.endpoint()).unwrap();
    let written = session.put("d", "x").await.unwrap();
    assert_eq!(elsewhere.session_revision(), Some(written));
    let deleted = elsewhere.delete("d").await.unwrap();
    assert_eq!(session.session_revision(), Some(deleted));
    assert_eq!(session.get("d").await.unwrap(), None);
}

#[tokio::test]
async fn errors_for_missing_bucket_bad_credentials_and_dead_server() {
    let (mut server, kv) = setup().await;
    let other = kv.with_bucket("no-such-bucket").unwrap();
    for result in [
        other.get("k").await.map(|_| ()),
        other.put("k", "v").await.map(|_| ()),
        other.list("", None, 10).await.map(|_| ()),
        other.lock("l", "me", Duration::from_secs(1), Duration::ZERO).await.map(|_| ()),
        other.watch("", 0).await.map(|_| ()),
    ] {
        assert_eq!(result, Err(Error::NoSuchBucket { bucket: "no-such-bucket".into() }));
    }
    let wrong = Client::new(&server.endpoint, BUCKET, Credentials::new(ACCESS_KEY, "not-the-secret")).unwrap();
    match wrong.get("k").await {
        Err(Error::Service { status: 403, code, .. }) => assert_eq!(code, "SignatureDoesNotMatch"),
        other => panic!("expected a 403, got {other:?}"),
    }
    let unknown = Client::new(&server.endpoint, BUCKET, Credentials::new("NOSUCHKEY", "x")).unwrap();
    assert!(matches!(unknown.put("k", "v").await, Err(Error::Service { status: 403, .. })));
    assert!(matches!(
        Client::new("ftp://example.com", BUCKET, Credentials::new("a", "b")),
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(Client::new(&server.endpoint, "", Credentials::new("a", "b")), Err(Error::InvalidInput(_))));

    server.kill9();
    let err = kv.get("k").await.unwrap_err();
    assert!(err.is_transport(), "{err:?}");
    assert!(err.to_string().contains("onnect"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_is_exact_at_sub_second_granularity() {
    let (_server, kv) = setup().await;
    let mut watch = kv.watch("t/", kv.revision().await.unwrap() + 1).await.unwrap();
    let t0 = Instant::now();
    let r = kv.put_with("t/short", "x", &PutOptions::default().ttl(Duration::from_millis(300))).await.unwrap();
    kv.put("t/forever", "y").await.unwrap();
    let at = SystemTime::now() + Duration::from_millis(600);
    kv.put_with("t/at", "z", &PutOptions::default().expires_at(at)).await.unwrap();

    // The server's expiry instant: now + 300 ms when it processed the put.
    let short_expiry = kv
        .list("t/", None, 10)
        .await
        .unwrap()
        .entries
        .iter()
        .find_map(|l| (l.key == "t/short").then_some(l.expires_at_ms).flatten());
    let e = kv.get("t/short").await.unwrap();
    let listed = kv.list("t/", None, 10).await.unwrap();
    // On a badly overloaded machine the 300 ms may be over already; then only the expiry
    // checks below apply.
    if t0.elapsed() < Duration::from_millis(250) {
        let e = e.expect("visible before its TTL runs out");
        assert_eq!(e.revision, r);
        let left = e.ttl_remaining.unwrap();
        assert!(left <= Duration::from_millis(300) && left >= Duration::from_millis(50), "{left:?}");
        assert_eq!(listed.entries.len(), 3);
        let short = listed.entries.iter().find(|l| l.key == "t/short").unwrap();
        assert_eq!(short.expires_at_ms, e.expires_at_ms, "ls carries the expiry");
    } else {
        eprintln!("skipping the before-expiry checks: the machine took {:?}", t0.elapsed());
    }

    // Visible until the instant, invisible right after it: get and ls agree.
    match short_expiry {
        Some(at) => sleep_past(at, Duration::from_millis(20)).await,
        None => tokio::time::sleep(Duration::from_millis(300).saturating_sub(t0.elapsed())).await,
    }
    assert_eq!(kv.get("t/short").await.unwrap(), None, "invisible at once after expiry");
    assert_eq!(keys(&kv, "t/").await, ["t/at", "t/forever"]);
    let cas = kv.put_with("t/short", "again", &PutOptions::default().if_absent()).await;
    assert!(cas.is_ok(), "an expired key counts as absent for create-only: {cas:?}");
    sleep_past(at.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_millis() as i64, Duration::from_millis(20)).await;
    assert_eq!(kv.get("t/at").await.unwrap(), None);
    assert_eq!(keys(&kv, "t/").await, ["t/forever", "t/short"]);

    // The watch reports the puts and, once the reaper removed it, the expiry of t/at.
    let mut seen = Vec::new();
    while !seen.iter().any(|e: &Event| e.kind == EventKind::Expire && e.key == "t/at") {
        seen.push(next_event(&mut watch).await);
    }
    assert_eq!(seen[0].kind, EventKind::Put);
    assert_eq!((seen[0].key.as_str(), seen[0].revision), ("t/short", r));
    assert!(seen[0].expires_at_ms.is_some());
    // The first t/short expired too, but was re-put before the reaper ran or after: either
    // way no expire event may remove the new value.
    assert_eq!(value(&kv, "t/short").await.as_deref(), Some("again"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_survives_restart() {
    let (mut server, kv) = setup().await;
    let t0 = Instant::now();
    kv.put_with("r/two-seconds", "a", &PutOptions::default().ttl(Duration::from_secs(2))).await.unwrap();
    kv.put_with("r/short", "b", &PutOptions::default().ttl(Duration::from_millis(300))).await.unwrap();
    kv.put("r/none", "c").await.unwrap();
    let listed = kv.list("r/", None, 10).await.unwrap().entries;
    let expiry = |key: &str| listed.iter().find(|l| l.key == key).and_then(|l| l.expires_at_ms);
    let (two_seconds_at, short_at) = (expiry("r/two-seconds").unwrap(), expiry("r/short"));
    if let Some(at) = short_at {
        sleep_past(at, Duration::from_millis(20)).await;
    }
    assert_eq!(keys(&kv, "r/").await, ["r/none", "r/two-seconds"]);

    server.restart();
    assert!(t0.elapsed() < Duration::from_millis(1900), "restart too slow for this test: {:?}", t0.elapsed());
    // The same client object: its pooled connections died with the server.
    let e = kv.get("r/two-seconds").await.unwrap().expect("a 2 s key is still there after a restart");
    assert!(e.ttl_remaining.unwrap() < Duration::from_millis(1700));
    assert_eq!(kv.get("r/short").await.unwrap(), None, "an expired key does not come back after a restart");
    assert_eq!(keys(&kv, "r/").await, ["r/none", "r/two-seconds"]);

    sleep_past(two_seconds_at, Duration::from_millis(20)).await;
    assert_eq!(kv.get("r/two-seconds").await.unwrap(), None, "gone at its expiry, after a restart");
    assert_eq!(keys(&kv, "r/").await, ["r/none"]);
    server.restart();
    assert_eq!(keys(&kv, "r/").await, ["r/none"]);
    assert_eq!(kv.get("r/short").await.unwrap(), None);
}

/// Seed 003: "this implementation of ttl could cause a wrongful deletion when an update is made
/// with a newer ttl". Here it cannot: the old TTL belongs to the old value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reput_is_never_undone_by_the_old_ttl() {
    let (mut server, kv) = setup().await;
    let short = PutOptions::default().ttl(Duration::from_millis(300));
    kv.put_with("s/no-ttl", "old", &short).await.unwrap();
    kv.put_with("s/longer", "old", &short).await.unwrap();
    kv.put_with("s/shorter-then-longer", "old", &short).await.unwrap();
    let mut watch = kv.watch("s/", kv.revision().await.unwrap() + 1).await.unwrap();
    let r_none = kv.put("s/no-ttl", "new, no ttl").await.unwrap();
    let r_long =
        kv.put_with("s/longer", "new, 30 s", &PutOptions::default().ttl(Duration::from_secs(30))).await.unwrap();
    kv.put_with("s/shorter-then-longer", "new, 1.5 s", &PutOptions::default().ttl(Duration::from_millis(1500)))
        .await
        .unwrap();
    let t_reput = Instant::now();
    // Past the old TTL and past several reaper rounds (every 250 ms).
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(value(&kv, "s/no-ttl").await.as_deref(), Some("new, no ttl"));
    let e = kv.get("s/no-ttl").await.unwrap().unwrap();
    assert_eq!((e.revision, e.ttl_remaining), (r_none, None));
    let e = kv.get("s/longer").await.unwrap().unwrap();
    assert_eq!((e.value.as_ref(), e.revision), (&b"new, 30 s"[..], r_long));
    assert!(e.ttl_remaining.unwrap() > Duration::from_secs(28));
    assert_eq!(value(&kv, "s/shorter-then-longer").await.as_deref(), Some("new, 1.5 s"));
    server.restart();
    assert_eq!(value(&kv, "s/no-ttl").await.as_deref(), Some("new, no ttl"));
    assert_eq!(value(&kv, "s/longer").await.as_deref(), Some("new, 30 s"));
    assert_eq!(value(&kv, "s/shorter-then-longer").await.as_deref(), Some("new, 1.5 s"));
    tokio::time::sleep(Duration::from_millis(1550).saturating_sub(t_reput.elapsed())).await;
    assert_eq!(kv.get("s/shorter-then-longer").await.unwrap(), None, "the new TTL applies");
    assert_eq!(keys(&kv, "s/").await, ["s/longer", "s/no-ttl"]);
    // The watch (from before the restart) saw the three re-puts; no expire event for them.
    for _ in 0..3 {
        let e = next_event(&mut watch).await;
        assert_eq!(e.kind, EventKind::Put, "{e:?}");
    }
    let mut after = kv.watch("s/", r_none).await.unwrap();
    let replay = events_until(&mut after, 3).await;
    assert!(replay.iter().all(|e| e.kind == EventKind::Put), "{replay:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_transaction_takes_the_key_lock() {
    let (_server, kv) = setup().await;
    let r = kv.put_transaction("tx/k", "v1", Duration::ZERO).await.unwrap();
    assert_eq!(kv.get("tx/k").await.unwrap().unwrap().revision, r);
    assert_eq!(kv.owner("key:tx/k").await.unwrap(), None, "released after the write");

    // Another writer holds the key: fail at once, naming the holder.
    let held = kv.lock("key:tx/k", "slow-writer", Duration::from_secs(10), Duration::ZERO).await.unwrap();
    let t = Instant::now();
    match kv.put_transaction("tx/k", "v2", Duration::ZERO).await {
        Err(Error::LockContended { owner, message }) => {
            assert_eq!(owner, "slow-writer");
            assert!(message.contains("slow-writer") && message.contains("key:tx/k"), "{message}");
        }
        other => panic!("expected LockContended, got {other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(2), "fails at once");
    assert_eq!(value(&kv, "tx/k").await.as_deref(), Some("v1"));

    // Waiting: succeeds once the holder releases.
    let releaser = {
        let kv = kv.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            kv.release(&held.name, held.token).await.unwrap();
        })
    };
    kv.put_transaction("tx/k", "v3", Duration::from_secs(5)).await.unwrap();
    releaser.await.unwrap();
    assert_eq!(value(&kv, "tx/k").await.as_deref(), Some("v3"));

    // A holder that dies never blocks beyond its TTL.
    kv.lock("key:tx/k", "dead-writer", Duration::from_millis(300), Duration::ZERO).await.unwrap();
    let t = Instant::now();
    kv.put_transaction("tx/k", "v4", Duration::from_secs(3)).await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(value(&kv, "tx/k").await.as_deref(), Some("v4"));

    // A transaction with its own lock TTL and a TTL on the value.
    let opts = PutOptions {
        transaction: Some(Transaction { wait: Duration::ZERO, lock_ttl: Some(Duration::from_secs(2)) }),
        ttl: Some(Duration::from_secs(60)),
        ..Default::default()
    };
    kv.put_with("tx/k", "v5", &opts).await.unwrap();
    assert!(kv.get("tx/k").await.unwrap().unwrap().ttl_remaining.is_some());
    let both = PutOptions { fence: Some(Fence { lock: "l".into(), token: 1 }), ..opts };
    assert!(matches!(kv.put_with("tx/k", "x", &both).await, Err(Error::InvalidInput(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_locks_and_fencing() {
    let (_server, kv) = setup().await;
    let ttl = Duration::from_secs(1);
    let a = kv.lock("db/tenant-7", "machine-a", ttl, Duration::ZERO).await.unwrap();
    assert_eq!((a.name.as_str(), a.owner.as_str()), ("db/tenant-7", "machine-a"));
    match kv.lock("db/tenant-7", "machine-b", ttl, Duration::ZERO).await {
        Err(Error::LockContended { owner, .. }) => assert_eq!(owner, "machine-a"),
        other => panic!("expected LockContended, got {other:?}"),
    }
    // owner(): where to send a request (seed 000's single-tenancy pattern).
    assert_eq!(kv.owner("db/tenant-7").await.unwrap().unwrap(), a);
    assert_eq!(kv.owner("nobody-holds-this").await.unwrap(), None);

    kv.put_with("db/tenant-7/state", "by a", &PutOptions::default().fence(a.fence())).await.unwrap();
    let renewed = kv.renew(&a.name, a.token, Duration::from_secs(1)).await.unwrap();
    assert_eq!(renewed.token, a.token);
    assert!(renewed.expires_at_ms >= a.expires_at_ms);
    assert!(matches!(kv.renew(&a.name, a.token + 1000, ttl).await, Err(Error::LockNotHeld { .. })));
    assert!(matches!(kv.release(&a.name, a.token + 1000).await, Err(Error::LockNotHeld { .. })));

    // A stalls past its TTL; B takes the lock (waiting for it) with a larger token.
    let b = kv.lock("db/tenant-7", "machine-b", Duration::from_secs(10), Duration::from_secs(5)).await.unwrap();
    assert!(b.token > a.token, "tokens increase with every grant");
    kv.put_with("db/tenant-7/state", "by b", &PutOptions::default().fence(b.fence())).await.unwrap();
    match kv.put_with("db/tenant-7/state", "stale a", &PutOptions::default().fence(a.fence())).await {
        Err(e @ Error::FenceRejected { .. }) => {
            assert!(e.is_aborted());
            assert!(e.to_string().contains(&b.token.to_string()), "{e}");
        }
        other => panic!("expected FenceRejected, got {other:?}"),
    }
    let stale_fence = DeleteOptions { if_revision: None, fence: Some(a.fence()) };
    let fenced_delete = kv.delete_with("db/tenant-7/state", &stale_fence).await;
    assert!(matches!(fenced_delete, Err(Error::FenceRejected { .. })));
    assert_eq!(value(&kv, "db/tenant-7/state").await.as_deref(), Some("by b"));
    assert!(matches!(kv.renew(&a.name, a.token, ttl).await, Err(Error::LockNotHeld { .. })));
    // A fence on a lock never granted can never be current.
    let never = Fence { lock: "never-granted".into(), token: 1 };
    assert!(matches!(
        kv.put_with("x", "y", &PutOptions::default().fence(never)).await,
        Err(Error::FenceRejected { .. })
    ));

    kv.release(&b.name, b.token).await.unwrap();
    assert_eq!(kv.owner("db/tenant-7").await.unwrap(), None);
    let c = kv.lock("db/tenant-7", "machine-c", ttl, Duration::ZERO).await.unwrap();
    assert!(c.token > b.token, "tokens keep increasing after a release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_exactly_from_a_revision() {
    let (_server, kv) = setup().await;
    let start = kv.revision().await.unwrap() + 1;
    let mut live = kv.watch("w/", 0).await.unwrap();
    let mut revisions = Vec::new();
    for i in 0..10 {
        revisions.push(kv.put(&format!("w/{i:02}"), format!("v{i}")).await.unwrap());
        kv.put(&format!("other/{i}"), "noise").await.unwrap();
    }
    let batch_rev =
        kv.batch(vec![BatchOp::put("w/b1", "1"), BatchOp::put("w/b2", "2"), BatchOp::delete("w/00")]).await.unwrap();
    let del = kv.delete("w/01").await.unwrap();

    // The live watch ("from now") saw everything under w/ and nothing else, in order.
    let events = events_until(&mut live, 14).await;
    assert_eq!(events.iter().take(10).map(|e| e.revision).collect::<Vec<_>>(), revisions);
    assert!(events[..10].iter().all(|e| e.kind == EventKind::Put && e.size == Some(2) && e.etag.is_some()));
    assert_eq!(
        events[10..13].iter().map(|e| e.revision).collect::<Vec<_>>(),
        [batch_rev; 3],
        "a batch shares one revision"
    );
    assert_eq!(events[12].kind, EventKind::Delete);
    assert_eq!((events[13].kind, events[13].key.as_str(), events[13].revision), (EventKind::Delete, "w/01", del));

    // Replays from any revision: since is inclusive.
    let mut from_start = kv.watch("w/", start).await.unwrap();
    assert_eq!(events_until(&mut from_start, 14).await, events);
    let mut from_fifth = kv.watch("w/", revisions[4]).await.unwrap();
    assert_eq!(events_until(&mut from_fifth, 10).await, events[4..]);

    // Resume after the 7th event with last + 1: no gap, no duplicate, then live events.
    let mut first = kv.watch("w/", start).await.unwrap();
    let part1 = events_until(&mut first, 7).await;
    drop(first);
    let more = kv.put("w/later", "x").await.unwrap();
    let mut second = kv.watch("w/", part1.last().unwrap().revision + 1).await.unwrap();
    let part2 = events_until(&mut second, 8).await;
    let joined: Vec<Event> = part1.into_iter().chain(part2).collect();
    assert_eq!(&joined[..14], &events[..]);
    assert_eq!((joined[14].key.as_str(), joined[14].revision), ("w/later", more));
    no_more_events(&mut second, Duration::from_millis(300)).await;

    // Resuming in the middle of a batch: since = its revision replays the whole batch; the
    // resumable watch skips the keys it already delivered.
    let mut mid = kv.watch("w/", batch_rev).await.unwrap();
    assert_eq!(events_until(&mut mid, 3).await, events[10..13]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_across_a_server_restart() {
    let (mut server, kv) = setup().await;
    let since = kv.revision().await.unwrap() + 1;
    let mut resumable = kv.watch_resumable("j/", None).await.unwrap();
    let mut plain = kv.watch("j/", since).await.unwrap();
    let mut written = Vec::new();
    for i in 0..5 {
        written.push((format!("j/{i}"), kv.put(&format!("j/{i}"), "before").await.unwrap()));
    }
    let got = events_until(&mut resumable, 5).await;
    assert_eq!(got.iter().map(|e| (e.key.clone(), e.revision)).collect::<Vec<_>>(), written);
    let plain_got = events_until(&mut plain, 5).await;
    assert_eq!(plain_got, got);

    server.restart();
    // The plain watch ends with a transport error...
    match tokio::time::timeout(Duration::from_secs(10), plain.next()).await {
        Ok(Some(Err(e))) => assert!(e.is_transport(), "{e:?}"),
        other => panic!("expected a transport error, got {other:?}"),
    }
    let mut after = Vec::new();
    for i in 5..10 {
        after.push((format!("j/{i}"), kv.put(&format!("j/{i}"), "after").await.unwrap()));
    }
    // ...and resumes from last + 1 with nothing lost or repeated: history survives restarts.
    let mut resumed = kv.watch("j/", got.last().unwrap().revision + 1).await.unwrap();
    let resumed_got = events_until(&mut resumed, 5).await;
    assert_eq!(resumed_got.iter().map(|e| (e.key.clone(), e.revision)).collect::<Vec<_>>(), after);
    no_more_events(&mut resumed, Duration::from_millis(300)).await;
    // The resumable watch reconnected by itself and delivers exactly the new events.
    let got2 = events_until(&mut resumable, 5).await;
    assert_eq!(got2.iter().map(|e| (e.key.clone(), e.revision)).collect::<Vec<_>>(), after);
    no_more_events(&mut resumable, Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_of_a_compacted_revision_is_refused_clearly() {
    let (_server, kv) = setup_with(&["--history-revisions", "20"]).await;
    let first = kv.put("c/0", "x").await.unwrap();
    for i in 1..60 {
        kv.put(&format!("c/{i}"), "x").await.unwrap();
    }
    let oldest = match kv.watch("c/", first).await {
        Err(Error::Compacted { oldest }) => oldest,
        Err(e) => panic!("expected Compacted, got {e:?}"),
        Ok(_) => panic!("expected Compacted, got a stream"),
    };
    assert!(oldest > first, "{oldest}");
    let current = kv.revision().await.unwrap();
    assert!(current - oldest < 20, "history holds about 20 revisions: oldest {oldest}, current {current}");
    assert!(Error::Compacted { oldest }.to_string().contains(&oldest.to_string()));
    // The oldest revision itself still replays.
    let mut ok = kv.watch("c/", oldest).await.unwrap();
    assert_eq!(next_event(&mut ok).await.revision, oldest);
    // The resumable watch reports it and ends rather than retrying forever.
    assert!(matches!(kv.watch_resumable("c/", Some(first)).await, Err(Error::Compacted { .. })));
    // Same answer on the raw protocol: 410 with the oldest revision in a header.
    let server_addr = kv.endpoint().trim_start_matches("http://").to_string();
    let resp =
        raw::signed(&server_addr, "GET", &format!("/{BUCKET}?meridian=watch&prefix=c%2F&since={first}"), &[], b"");
    assert_eq!((resp.status, resp.error_code().as_str()), (410, "RevisionCompacted"));
    assert_eq!(resp.header("x-meridian-oldest-revision"), Some(oldest.to_string().as_str()));
}

#[tokio::test]
async fn batches_are_all_or_nothing() {
    let (_server, kv) = setup().await;
    let a = kv.put("b/a", "a0").await.unwrap();
    let rev = kv
        .batch(vec![
            BatchOp::put("b/a", "a1").if_revision(a),
            BatchOp::put("b/bin", vec![0u8, 159, 146, 150]).if_revision(0),
            BatchOp::put("b/ttl", "t").ttl(Duration::from_secs(60)),
            BatchOp::delete("b/never-existed"),
        ])
        .await
        .unwrap();
    for k in ["b/a", "b/bin", "b/ttl"] {
        assert_eq!(kv.get(k).await.unwrap().unwrap().revision, rev, "{k}: one revision for the whole batch");
    }
    assert_eq!(kv.get("b/bin").await.unwrap().unwrap().value.as_ref(), &[0u8, 159, 146, 150]);
    assert!(kv.get("b/ttl").await.unwrap().unwrap().ttl_remaining.is_some());

    // One stale condition: nothing is applied, and the error names the key.
    let stale = kv
        .batch(vec![
            BatchOp::put("b/a", "a2").if_revision(rev),
            BatchOp::put("b/new", "n"),
            BatchOp::delete("b/bin").if_revision(a),
        ])
        .await;
    match stale {
        Err(Error::VersionMismatch { current, message }) => {
            assert_eq!(current, rev);
            assert!(message.contains("b/bin"), "{message}");
        }
        other => panic!("expected VersionMismatch, got {other:?}"),
    }
    assert_eq!(value(&kv, "b/a").await.as_deref(), Some("a1"));
    assert_eq!(kv.get("b/new").await.unwrap(), None);
    assert!(kv.get("b/bin").await.unwrap().is_some());

    match kv.batch(vec![BatchOp::put("b/x", "1"), BatchOp::put("b/x", "2")]).await {
        Err(Error::Service { status: 400, message, .. }) => assert!(message.contains("twice"), "{message}"),
        other => panic!("expected a 400, got {other:?}"),
    }
    match kv.batch(vec![]).await {
        Err(Error::Service { status: 400, message, .. }) => assert!(message.contains("1 to 1000"), "{message}"),
        other => panic!("expected a 400, got {other:?}"),
    }
    let too_many = (0..1001).map(|i| BatchOp::put(format!("b/{i}"), "x")).collect();
    assert!(matches!(kv.batch(too_many).await, Err(Error::Service { status: 400, .. })));
    assert_eq!(keys(&kv, "b/").await, ["b/a", "b/bin", "b/ttl"]);
}

/// Bad input on the wire gets a 400 with a message that says what is wrong.
#[tokio::test]
async fn bad_input_gets_clear_errors() {
    let (server, kv) = setup().await;
    let addr = &server.addr;
    let put = |headers: &[(&str, String)]| raw::signed(addr, "PUT", &format!("/{BUCKET}/bad"), headers, b"v");
    let expect = |resp: raw::Response, code: &str, needle: &str| {
        assert_eq!(resp.status, 400, "{}", resp.text());
        assert_eq!(resp.error_code(), code, "{}", resp.text());
        let text = resp.text().replace("&quot;", "\"").replace("&apos;", "'").replace("&amp;", "&");
        assert!(text.contains(needle), "{needle:?} not in {text}");
    };
    expect(put(&[("x-meridian-ttl", "5 parsecs".into())]), "InvalidArgument", "invalid TTL \"5 parsecs\"");
    expect(put(&[("x-meridian-ttl", "0s".into())]), "InvalidArgument", "invalid TTL");
    expect(put(&[("x-meridian-ttl", "-5s".into())]), "InvalidArgument", "invalid TTL");
    expect(put(&[("x-meridian-ttl", "200000000d".into())]), "InvalidArgument", "100 years");
    expect(put(&[("x-meridian-expires", "tomorrow".into())]), "InvalidArgument", "RFC 3339");
    expect(put(&[("x-meridian-expires", "2001-01-01T00:00:00Z".into())]), "InvalidArgument", "not in the future");
    expect(
        put(&[("x-meridian-ttl", "5s".into()), ("x-meridian-expires", "4102444800000".into())]),
        "InvalidArgument",
        "not both",
    );
    expect(
        put(&[("x-meridian-if-revision", "abc".into())]),
        "InvalidArgument",
        "x-meridian-if-revision must be a non-negative integer",
    );
    expect(put(&[("x-meridian-if-revision", "-1".into())]), "InvalidArgument", "non-negative integer");
    expect(
        put(&[("x-meridian-fence-lock", "l".into()), ("x-meridian-fence", "t1".into())]),
        "InvalidArgument",
        "x-meridian-fence must be a non-negative integer, got \"t1\"",
    );
    expect(put(&[("x-meridian-fence", "5".into())]), "InvalidArgument", "needs both");
    expect(
        put(&[("x-meridian-fence-lock", "has space".into()), ("x-meridian-fence", "5".into())]),
        "InvalidArgument",
        "invalid lock name",
    );
    expect(put(&[("x-meridian-transaction", "yes".into())]), "InvalidArgument", "must be \"lock\"");
    expect(
        put(&[("x-meridian-transaction", "lock".into()), ("x-meridian-lock-wait", "soon".into())]),
        "InvalidArgument",
        "x-meridian-lock-wait",
    );
    let del = raw::signed(addr, "DELETE", &format!("/{BUCKET}/bad"), &[("x-meridian-ttl", "5s".into())], b"");
    expect(del, "InvalidArgument", "apply to writes");

    let post = |action: &str, body: &str| {
        raw::signed(addr, "POST", &format!("/{BUCKET}?meridian={action}"), &[], body.as_bytes())
    };
    expect(post("lock", r#"{"name":"ok","ttl":"30s"}"#), "InvalidArgument", "a lock request needs an owner");
    expect(post("lock", r#"{"name":"has space","owner":"me"}"#), "InvalidArgument", "invalid lock name");
    expect(post("lock", r#"{"name":"","owner":"me"}"#), "InvalidArgument", "invalid lock name");
    expect(post("lock", &format!(r#"{{"name":"{}","owner":"me"}}"#, "x".repeat(300))), "InvalidArgument", "1 to 256");
    expect(post("lock", r#"{"name":"ok","owner":"me","ttl":"5 parsecs"}"#), "InvalidArgument", "ttl: invalid TTL");
    expect(post("lock", r#"{"name":"ok","owner":"me","ttl":"48h"}"#), "InvalidArgument", "at most 24 hours");
    expect(post("lock", r#"{"name":"ok","owner":""}"#), "InvalidArgument", "invalid lock owner");
    expect(post("lock", r#"{"name":"ok","owner":"me","token":"abc"}"#), "MalformedXML", "malformed JSON request body");
    expect(post("lock", r#"{"name":"ok","owner":"me","colour":"red"}"#), "MalformedXML", "unknown field");
    expect(post("renew", r#"{"name":"ok","ttl":"5s"}"#), "InvalidArgument", "renew needs the token");
    expect(post("release", r#"{"name":"ok"}"#), "InvalidArgument", "release needs the token");
    expect(post("batch", "not json"), "MalformedXML", "malformed JSON");
    expect(post("batch", r#"{"ops":[{"op":"upsert","key":"k"}]}"#), "InvalidArgument", "unknown batch op");
    expect(
        post("batch", r#"{"ops":[{"op":"put","key":"k","value":"v","ttl":"5 parsecs"}]}"#),
        "InvalidArgument",
        "invalid TTL",
    );
    expect(
        post("batch", r#"{"ops":[{"op":"put","key":"k","value_base64":"%%%"}]}"#),
        "InvalidArgument",
        "not valid base64",
    );
    expect(post("frobnicate", "{}"), "InvalidRequest", "unknown KV request");
    let get = |query: &str| raw::signed(addr, "GET", &format!("/{BUCKET}?meridian={query}"), &[], b"");
    expect(get("watch&since=abc"), "InvalidArgument", "since must be a non-negative integer");
    expect(get("list&limit=many"), "InvalidArgument", "limit must be a non-negative integer");
    expect(get("lock"), "InvalidArgument", "missing name");
    expect(get("lock&name=bad%20name"), "InvalidArgument", "invalid lock name");

    // Unauthenticated KV requests are refused like S3 ones.
    let anon = raw::send(addr, "GET", &format!("/{BUCKET}?meridian=list"), &[], b"");
    assert_eq!(anon.status, 403, "{}", anon.text());

    // Through the client the same refusals are typed errors with the server's message.
    match kv.lock("bad name", "me", Duration::from_secs(1), Duration::ZERO).await {
        Err(Error::Service { status: 400, code, message }) => {
            assert_eq!(code, "InvalidArgument");
            assert!(message.contains("invalid lock name \"bad name\""), "{message}");
        }
        other => panic!("expected a 400, got {other:?}"),
    }
    assert!(matches!(
        kv.lock("ok", "", Duration::from_secs(1), Duration::ZERO).await,
        Err(Error::Service { status: 400, .. })
    ));
    assert_eq!(kv.get("bad").await.unwrap(), None, "nothing was written by the refused requests");
}

// ----- the CLI -----------------------------------------------------------------------------------

fn cli(server: &Server, args: &[&str]) -> Output {
    cli_stdin(server, args, None)
}

fn cli_stdin(server: &Server, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut cmd = Command::new(common::binary());
    cmd.arg("kv").args(args);
    cmd.env("MERIDIAN_ENDPOINT", &server.endpoint).env("MERIDIAN_BUCKET", BUCKET);
    cmd.env("AWS_ACCESS_KEY_ID", ACCESS_KEY).env("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    if let Some(data) = stdin {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(data).unwrap();
    }
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn code(o: &Output, want: i32) {
    assert_eq!(o.status.code(), Some(want), "stdout: {}\nstderr: {}", stdout(o), stderr(o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_commands_and_exit_codes() {
    let (server, kv) = setup().await;
    let s = &server;
    let held_ttl = Duration::from_secs(2);
    // put / get / --json
    let o = cli(s, &["put", "c/k", "hello"]);
    code(&o, 0);
    let r1: u64 = stdout(&o).trim().parse().unwrap();
    let o = cli(s, &["get", "c/k"]);
    code(&o, 0);
    assert_eq!(stdout(&o), "hello", "the raw value, nothing added");
    let o = cli(s, &["get", "c/k", "--json"]);
    let j: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(j["key"], "c/k");
    assert_eq!(j["value"], "hello");
    assert_eq!(j["revision"], r1);
    assert!(j["ttl_remaining_ms"].is_null());
    // Missing key: exit 4.
    let o = cli(s, &["get", "c/missing"]);
    code(&o, 4);
    assert!(stderr(&o).contains("not found"), "{}", stderr(&o));
    assert!(stdout(&o).is_empty());

    // --if-version, --if-absent: exit 3 with "version mismatch, current is".
    let o = cli(s, &["put", "c/k", "v2", "--if-version", &(r1 + 100).to_string()]);
    code(&o, 3);
    assert!(stderr(&o).contains(&format!("current is {r1}")), "{}", stderr(&o));
    let o = cli(s, &["put", "c/k", "v2", "--if-absent"]);
    code(&o, 3);
    let o = cli(s, &["put", "c/k", "v2", "--if-version", &r1.to_string()]);
    code(&o, 0);
    let r2: u64 = stdout(&o).trim().parse().unwrap();
    // Values from stdin and files; binary values in --json.
    code(&cli_stdin(s, &["put", "c/stdin", "-"], Some(b"from stdin")), 0);
    assert_eq!(value(&kv, "c/stdin").await.as_deref(), Some("from stdin"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("v.bin");
    std::fs::write(&file, [0u8, 255, 7]).unwrap();
    code(&cli(s, &["put", "c/file", "--file", file.to_str().unwrap()]), 0);
    let j: serde_json::Value = serde_json::from_str(&stdout(&cli(s, &["get", "c/file", "--json"]))).unwrap();
    assert_eq!(j["value_base64"], "AP8H");
    // TTL and expiry.
    code(&cli(s, &["put", "c/ttl", "x", "--ttl", "90s"]), 0);
    let j: serde_json::Value = serde_json::from_str(&stdout(&cli(s, &["get", "c/ttl", "--json"]))).unwrap();
    let left = j["ttl_remaining_ms"].as_u64().unwrap();
    assert!(left > 80_000 && left <= 90_000, "{left}");
    code(&cli(s, &["put", "c/exp", "x", "--expires", "2099-01-01T00:00:00Z"]), 0);
    assert!(kv.get("c/exp").await.unwrap().unwrap().expires_at_ms.unwrap() > 4_000_000_000_000);

    // ls: text and JSON, pagination hints on stderr.
    let o = cli(s, &["ls", "c/"]);
    code(&o, 0);
    let listing = stdout(&o);
    let lines: Vec<&str> = listing.lines().map(|l| l.split('\t').next().unwrap()).collect();
    assert_eq!(lines, ["c/exp", "c/file", "c/k", "c/stdin", "c/ttl"]);
    assert!(stdout(&o).contains(&format!("c/k\t{r2}\t2\t-")), "{}", stdout(&o));
    let o = cli(s, &["ls", "c/", "--limit", "2", "--json"]);
    let j: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(j["entries"].as_array().unwrap().len(), 2);
    assert_eq!(j["next_after"], "c/file");
    assert!(stderr(&o).contains("--after"), "{}", stderr(&o));
    let o = cli(s, &["ls", "c/", "--after", "c/k"]);
    assert_eq!(stdout(&o).lines().count(), 2);

    // delete --if-version
    code(&cli(s, &["delete", "c/k", "--if-version", &r1.to_string()]), 3);
    code(&cli(s, &["delete", "c/k", "--if-version", &r2.to_string()]), 0);
    code(&cli(s, &["get", "c/k"]), 4);

    // locks: lock prints the token; contention exits 3 naming the holder; owner; renew; release.
    let o = cli(s, &["lock", "jobs/db", "--ttl", "30s", "--owner", "machine-a"]);
    code(&o, 0);
    let token: u64 = stdout(&o).trim().parse().unwrap();
    let o = cli(s, &["lock", "jobs/db", "--ttl", "30s", "--owner", "machine-b"]);
    code(&o, 3);
    assert!(stderr(&o).contains("machine-a") && stderr(&o).contains("--wait"), "{}", stderr(&o));
    let o = cli(s, &["owner", "jobs/db"]);
    assert_eq!(stdout(&o).trim(), "machine-a");
    let o = cli(s, &["owner", "jobs/db", "--json"]);
    let j: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(j["token"], token);
    code(&cli(s, &["renew", "jobs/db", "--token", &token.to_string(), "--ttl", "1m"]), 0);
    let o = cli(s, &["renew", "jobs/db", "--token", "1", "--ttl", "1m"]);
    code(&o, 1);
    assert!(stderr(&o).contains("not held"), "{}", stderr(&o));
    // Fenced writes: current token passes, a wrong one exits 3.
    code(&cli(s, &["put", "c/f", "x", "--fence-lock", "jobs/db", "--fence", &token.to_string()]), 0);
    let o = cli(s, &["put", "c/f", "y", "--fence-lock", "jobs/db", "--fence", &(token - 1).to_string()]);
    code(&o, 3);
    assert!(stderr(&o).contains("stale"), "{}", stderr(&o));
    code(&cli(s, &["release", "jobs/db", "--token", &token.to_string()]), 0);
    let o = cli(s, &["owner", "jobs/db"]);
    code(&o, 4);
    assert!(stderr(&o).contains("nobody holds"), "{}", stderr(&o));

    // put --transaction: contended exits 3 at once; --wait waits.
    let held = kv.lock("key:c/t", "holder-x", held_ttl, Duration::ZERO).await.unwrap();
    let o = cli(s, &["put", "c/t", "v", "--transaction"]);
    code(&o, 3);
    assert!(stderr(&o).contains("holder-x"), "{}", stderr(&o));
    code(&cli(s, &["put", "c/t", "v", "--transaction", "--wait", "5s"]), 0);
    assert!(kv.owner(&held.name).await.unwrap().is_none());

    // batch from a file and from stdin.
    let batch = dir.path().join("batch.json");
    std::fs::write(&batch, r#"{"ops":[{"op":"put","key":"c/b1","value":"1"},{"op":"delete","key":"c/t"}]}"#).unwrap();
    let o = cli(s, &["batch", batch.to_str().unwrap()]);
    code(&o, 0);
    let rb: u64 = stdout(&o).trim().parse().unwrap();
    assert_eq!(kv.get("c/b1").await.unwrap().unwrap().revision, rb);
    let stale = format!(r#"[{{"op":"put","key":"c/b1","value":"2","if_revision":{}}}]"#, rb - 1);
    code(&cli_stdin(s, &["batch", "-"], Some(stale.as_bytes())), 3);
    let o = cli_stdin(s, &["batch", "-"], Some(b"[{\"op\":\"put\",\"key\":\"c/x\"}]"));
    code(&o, 2);
    assert!(stderr(&o).contains("exactly one of value or value_base64"), "{}", stderr(&o));

    // watch prints NDJSON from --since until killed.
    let mut child = Command::new(common::binary())
        .args(["kv", "watch", "c/", "--since", &rb.to_string()])
        .env("MERIDIAN_ENDPOINT", &server.endpoint)
        .env("MERIDIAN_BUCKET", BUCKET)
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rw = kv.put("c/watched", "w").await.unwrap();
    let out = child.stdout.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        std::io::BufReader::new(out).lines().take(3).map(Result::unwrap).collect::<Vec<_>>()
    });
    let lines = tokio::time::timeout(Duration::from_secs(10), lines).await.unwrap().unwrap();
    // Ctrl-C ends it cleanly.
    let interrupted = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(interrupted.success());
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
    assert_eq!(status.code(), Some(0), "watch exits 0 on Ctrl-C");
    let events: Vec<Event> = lines.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(
        events.iter().map(|e| (e.kind, e.key.as_str())).collect::<Vec<_>>(),
        [(EventKind::Put, "c/b1"), (EventKind::Delete, "c/t"), (EventKind::Put, "c/watched")]
    );
    assert_eq!(events[2].revision, rw);

    // Usage errors: exit 2 with what to do.
    let o = cli(s, &["put", "c/k", "v", "--ttl", "5 parsecs"]);
    code(&o, 2);
    assert!(stderr(&o).contains("invalid duration \"5 parsecs\""), "{}", stderr(&o));
    let o = cli(s, &["put", "c/k", "v", "--fence-lock", "l", "--fence", "abc"]);
    code(&o, 2);
    assert!(stderr(&o).contains("--fence"), "{}", stderr(&o));
    code(&cli(s, &["put", "c/k", "v", "--if-version", "seven"]), 2);
    code(&cli(s, &["lock", "l", "--ttl", "30s"]), 2);
    let o = cli(s, &["put", "c/k"]);
    code(&o, 2);
    assert!(stderr(&o).contains("no value"), "{}", stderr(&o));
    let o = cli(s, &["lock", "bad name", "--ttl", "30s", "--owner", "me"]);
    code(&o, 2);
    assert!(stderr(&o).contains("invalid lock name"), "{}", stderr(&o));
    let o = Command::new(common::binary())
        .args(["kv", "get", "k"])
        .env("MERIDIAN_ENDPOINT", &server.endpoint)
        .env_remove("MERIDIAN_BUCKET")
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .output()
        .unwrap();
    code(&o, 2);
    assert!(stderr(&o).contains("MERIDIAN_BUCKET"), "{}", stderr(&o));
    let o = Command::new(common::binary())
        .args(["kv", "--bucket", BUCKET, "--endpoint", &server.endpoint, "get", "k"])
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .output()
        .unwrap();
    code(&o, 2);
    assert!(stderr(&o).contains("AWS_ACCESS_KEY_ID"), "{}", stderr(&o));
    // Server down: exit 1, and the message says where it looked.
    let o = cli_stdin(s, &["--endpoint", "http://127.0.0.1:1", "get", "k"], None);
    code(&o, 1);
    assert!(stderr(&o).contains("is `meridian server` running at http://127.0.0.1:1"), "{}", stderr(&o));
    let o = cli(s, &["--bucket", "nope", "get", "k"]);
    code(&o, 1);
    assert!(stderr(&o).contains("does not exist"), "{}", stderr(&o));
}

/// `kv bench --compare-etcd start` runs every workload against this node, then starts a plain
/// etcd (the real binary, its own port and data directory) and runs them against it too, and
/// removes that etcd's data afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_bench_drives_a_plain_etcd_side_by_side() {
    common::require_tool("etcd", "apt-get install etcd-server");
    let (server, _kv) = setup().await;
    let etcd_dir = tempfile::tempdir().unwrap();
    let dir = etcd_dir.path().to_str().unwrap();
    let o = cli(
        &server,
        &[
            "bench",
            "--duration",
            "1s",
            "-c",
            "4",
            "--keys",
            "40",
            "--watch-writes",
            "40",
            "--json",
            "--compare-etcd",
            "start",
            "--etcd-data-dir",
            dir,
        ],
    );
    code(&o, 0);
    let results: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = results.as_array().unwrap();
    for system in ["meridian", "etcd"] {
        for workload in ["put", "get", "cas", "watch"] {
            let row = rows.iter().find(|r| r["system"] == system && r["workload"] == workload);
            let row = row.unwrap_or_else(|| panic!("no {system} {workload} in {results:#}"));
            assert!(row["ops"].as_u64().unwrap() > 0, "{row:#}");
            let errors = row["errors"].as_object().unwrap();
            assert!(errors.keys().all(|k| k.starts_with("info:")), "{system} {workload} errors: {errors:?}");
        }
    }
    // The etcd run's server CPU is measured (the bench knows its pid); its data is gone.
    let etcd_put = rows.iter().find(|r| r["system"] == "etcd" && r["workload"] == "put").unwrap();
    assert!(etcd_put["server_cpu_us_per_op"].as_f64().is_some(), "{etcd_put:#}");
    assert_eq!(std::fs::read_dir(etcd_dir.path()).unwrap().count(), 0, "the bench's etcd data was removed");
}
