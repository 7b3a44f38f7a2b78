//! The behaviour every [`MetaStore`] backend must show. Each backend's tests call [`run_all`]
//! with a fresh, empty store. Keys are namespaced under `conformance/` so a shared cluster
//! (etcd) can run it too, but revisions are only compared relative to each other.

// A test suite: a failed unwrap is a failed check.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;

use crate::{Compare, CompareOp, CompareTarget, EventKind, MetaError, MetaStore, Op, RangeRequest, Txn, TxnResponse};

const NS: &str = "conformance/";

fn k(name: &str) -> Bytes {
    Bytes::from(format!("{NS}{name}"))
}

/// Runs every check, in order, against `store`.
pub async fn run_all(store: &dyn MetaStore) {
    put_get_and_bookkeeping(store).await;
    range_order_limits_and_bounds(store).await;
    compare_and_swap(store).await;
    chained_txns_apply_in_order(store).await;
    failed_txn_changes_nothing(store).await;
    duplicate_keys_in_txn_are_refused(store).await;
    revisions_are_monotonic_under_concurrency(store).await;
    get_many_is_consistent(store).await;
    watch_replays_then_follows(store).await;
    watch_from_future_and_now(store).await;
    large_values_round_trip(store).await;
}

async fn put_get_and_bookkeeping(store: &dyn MetaStore) {
    let before = store.current_revision().await.unwrap();
    assert!(store.get(&k("pg/a")).await.unwrap().is_none(), "a fresh key must be absent");

    let r1 = store.txn(Txn::new().then(Op::put(k("pg/a"), "one"))).await.unwrap();
    assert!(r1.succeeded);
    assert!(r1.revision > before, "a write must advance the revision");
    let kv = store.get(&k("pg/a")).await.unwrap().unwrap();
    assert_eq!(kv.value, Bytes::from("one"));
    assert_eq!(kv.create_revision, r1.revision);
    assert_eq!(kv.mod_revision, r1.revision);
    assert_eq!(kv.version, 1);

    let r2 = store.txn(Txn::new().then(Op::put(k("pg/a"), "two"))).await.unwrap();
    assert!(r2.revision > r1.revision);
    let kv = store.get(&k("pg/a")).await.unwrap().unwrap();
    assert_eq!(kv.value, Bytes::from("two"));
    assert_eq!(kv.create_revision, r1.revision, "an overwrite keeps the create revision");
    assert_eq!(kv.mod_revision, r2.revision);
    assert_eq!(kv.version, 2);
    assert_eq!(store.current_revision().await.unwrap(), r2.revision);

    let r3 = store.txn(Txn::new().then(Op::delete(k("pg/a")))).await.unwrap();
    assert!(r3.succeeded && r3.revision > r2.revision);
    assert!(store.get(&k("pg/a")).await.unwrap().is_none());

    let r4 = store.txn(Txn::new().then(Op::put(k("pg/a"), "three"))).await.unwrap();
    let kv = store.get(&k("pg/a")).await.unwrap().unwrap();
    assert_eq!(kv.create_revision, r4.revision, "a re-created key has a new create revision");
    assert_eq!(kv.version, 1);

    // Empty values are values.
    store.txn(Txn::new().then(Op::put(k("pg/empty"), ""))).await.unwrap();
    let kv = store.get(&k("pg/empty")).await.unwrap().unwrap();
    assert!(kv.value.is_empty());
}

async fn range_order_limits_and_bounds(store: &dyn MetaStore) {
    let names = ["r/b", "r/a", "r/c/1", "r/c/2", "r/d", "r\u{00ff}", "r/\u{00e9}"];
    let mut txn = Txn::new();
    for name in names {
        txn = txn.then(Op::put(k(name), name));
    }
    let written = store.txn(txn).await.unwrap();

    let all = store.range(RangeRequest::prefix(k("r/"))).await.unwrap();
    let keys: Vec<Bytes> = all.kvs.iter().map(|kv| kv.key.clone()).collect();
    let mut expected: Vec<Bytes> = ["r/a", "r/b", "r/c/1", "r/c/2", "r/d", "r/\u{00e9}"].iter().map(|n| k(n)).collect();
    expected.sort();
    assert_eq!(keys, expected, "prefix ranges are complete and in byte order");
    assert!(!all.more);
    assert!(all.revision >= written.revision);
    assert!(all.kvs.iter().all(|kv| kv.mod_revision == written.revision), "one txn, one revision");

    let page = store.range(RangeRequest::prefix(k("r/")).limit(2)).await.unwrap();
    assert_eq!(page.kvs.len(), 2);
    assert!(page.more, "a cut-short range says so");
    let rest = store.range(RangeRequest::prefix(k("r/")).after(page.kvs[1].key.clone())).await.unwrap();
    assert_eq!(rest.kvs.len(), expected.len() - 2);
    assert_eq!(rest.kvs[0].key, expected[2], "after() starts strictly after the key");

    let between = store.range(RangeRequest::between(k("r/b"), k("r/d"))).await.unwrap();
    let keys: Vec<Bytes> = between.kvs.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(keys, vec![k("r/b"), k("r/c/1"), k("r/c/2")], "end is exclusive");

    let empty = store.range(RangeRequest::between(k("r/d"), k("r/a"))).await.unwrap();
    assert!(empty.kvs.is_empty(), "an inverted range is empty, not an error");
    let exact = store.range(RangeRequest::prefix(k("r/c/")).limit(2)).await.unwrap();
    assert_eq!(exact.kvs.len(), 2);
    assert!(!exact.more, "a limit that is exactly met is not 'more'");
}

async fn compare_and_swap(store: &dyn MetaStore) {
    let key = k("cas/x");
    // Create-only.
    let create = Txn::new().when(Compare::absent(key.clone())).then(Op::put(key.clone(), "v1"));
    let r1 = store.txn(create.clone()).await.unwrap();
    assert!(r1.succeeded);
    let again = store.txn(create.or_read(key.clone())).await.unwrap();
    assert!(!again.succeeded, "create-only must fail when the key exists");
    let current = again.failure_reads[0].clone().unwrap();
    assert_eq!(current.value, Bytes::from("v1"), "failure reads return the current state");
    assert_eq!(current.mod_revision, r1.revision);

    // Swap on mod revision.
    let stale =
        Txn::new().when(Compare::mod_revision_is(key.clone(), r1.revision - 1)).then(Op::put(key.clone(), "no"));
    assert!(!store.txn(stale).await.unwrap().succeeded);
    let swap = Txn::new().when(Compare::mod_revision_is(key.clone(), r1.revision)).then(Op::put(key.clone(), "v2"));
    let r2 = store.txn(swap).await.unwrap();
    assert!(r2.succeeded);
    assert_eq!(store.get(&key).await.unwrap().unwrap().value, Bytes::from("v2"));

    // Other targets and operators.
    let cmp = |op, target| Compare { key: key.clone(), op, target };
    let holds = [
        cmp(CompareOp::Equal, CompareTarget::Value(Bytes::from("v2"))),
        cmp(CompareOp::NotEqual, CompareTarget::Value(Bytes::from("v1"))),
        cmp(CompareOp::Equal, CompareTarget::Version(2)),
        cmp(CompareOp::Greater, CompareTarget::Version(1)),
        cmp(CompareOp::Less, CompareTarget::ModRevision(r2.revision + 1)),
        cmp(CompareOp::Equal, CompareTarget::CreateRevision(r1.revision)),
        Compare::exists(key.clone()),
    ];
    for compare in holds {
        let resp = store.txn(Txn::new().when(compare.clone())).await.unwrap();
        assert!(resp.succeeded, "{compare:?} should hold");
    }
    let fails = [
        cmp(CompareOp::Equal, CompareTarget::Value(Bytes::from("v1"))),
        cmp(CompareOp::Less, CompareTarget::Version(2)),
        Compare::absent(key.clone()),
        Compare { key: k("cas/missing"), op: CompareOp::NotEqual, target: CompareTarget::Value(Bytes::from("x")) },
        Compare::exists(k("cas/missing")),
    ];
    for compare in fails {
        let resp = store.txn(Txn::new().when(compare.clone())).await.unwrap();
        assert!(!resp.succeeded, "{compare:?} should not hold");
    }
    // A read-only transaction does not advance the revision.
    let before = store.current_revision().await.unwrap();
    store.txn(Txn::new().when(Compare::exists(key.clone()))).await.unwrap();
    assert_eq!(store.current_revision().await.unwrap(), before);
}

/// `txns_in_order`: each transaction sees the ones before it; a broken link fails the rest.
async fn chained_txns_apply_in_order(store: &dyn MetaStore) {
    let key = k("chain/x");
    let value_is = |v: &'static str| Compare {
        key: key.clone(),
        op: CompareOp::Equal,
        target: CompareTarget::Value(Bytes::from(v)),
    };
    let first = Txn::new().when(Compare::absent(key.clone())).then(Op::put(key.clone(), "a"));
    let chain = vec![
        first,
        Txn::new().when(value_is("a")).then(Op::put(key.clone(), "b")),
        Txn::new().when(value_is("b")).then(Op::put(key.clone(), "c")),
    ];
    let responses: Vec<TxnResponse> = store.txns_in_order(chain).await.into_iter().map(Result::unwrap).collect();
    assert!(responses.iter().all(|r| r.succeeded), "every link of the chain holds in order: {responses:?}");
    assert!(responses.windows(2).all(|w| w[0].revision < w[1].revision), "each gets its own, later revision");
    let stored = store.get(&key).await.unwrap().unwrap();
    assert_eq!((stored.value, stored.mod_revision), (Bytes::from("c"), responses[2].revision));

    let broken = vec![
        Txn::new().when(value_is("a")).then(Op::put(key.clone(), "x")),
        Txn::new().when(value_is("x")).then(Op::put(key.clone(), "y")),
        Txn::new().when(value_is("c")).then(Op::put(key.clone(), "d")),
    ];
    let held: Vec<bool> = store.txns_in_order(broken).await.into_iter().map(|r| r.unwrap().succeeded).collect();
    assert_eq!(held, [false, false, true], "a failed link changes nothing; later ones see the real state");
    assert_eq!(store.get(&key).await.unwrap().unwrap().value, Bytes::from("d"));
}

async fn failed_txn_changes_nothing(store: &dyn MetaStore) {
    let a = k("atomic/a");
    let b = k("atomic/b");
    store.txn(Txn::new().then(Op::put(a.clone(), "a0"))).await.unwrap();
    let before = store.current_revision().await.unwrap();
    let txn = Txn::new()
        .when(Compare::exists(a.clone()))
        .when(Compare::exists(b.clone()))
        .then(Op::put(a.clone(), "a1"))
        .then(Op::put(b.clone(), "b1"))
        .or_read(a.clone())
        .or_read(b.clone());
    let resp = store.txn(txn).await.unwrap();
    assert!(!resp.succeeded);
    assert_eq!(resp.failure_reads.len(), 2);
    assert!(resp.failure_reads[1].is_none());
    assert_eq!(store.get(&a).await.unwrap().unwrap().value, Bytes::from("a0"), "all or nothing");
    assert!(store.get(&b).await.unwrap().is_none());
    assert_eq!(store.current_revision().await.unwrap(), before);

    // All ops of a successful transaction land together at one revision.
    let resp = store
        .txn(
            Txn::new().then(Op::put(a.clone(), "a2")).then(Op::put(b.clone(), "b2")).then(Op::delete(k("atomic/none"))),
        )
        .await
        .unwrap();
    let (kvs, _) = store.get_many(&[a.clone(), b.clone()]).await.unwrap();
    assert!(kvs.iter().all(|kv| kv.as_ref().unwrap().mod_revision == resp.revision));
}

async fn duplicate_keys_in_txn_are_refused(store: &dyn MetaStore) {
    let key = k("dup/x");
    let txn = Txn::new().then(Op::put(key.clone(), "1")).then(Op::put(key.clone(), "2"));
    assert!(store.txn(txn).await.is_err(), "writing one key twice in a transaction is invalid");
    assert!(store.get(&key).await.unwrap().is_none());
}

async fn revisions_are_monotonic_under_concurrency(store: &dyn MetaStore) {
    // 16 concurrent increments of one counter through CAS: none lost, revisions strictly rising.
    let key = k("counter");
    store.txn(Txn::new().then(Op::put(key.clone(), "0"))).await.unwrap();
    let tasks = (0..16).map(|_| async {
        let mut revisions = Vec::new();
        for _ in 0..10 {
            loop {
                let kv = store.get(&key).await.unwrap().unwrap();
                let n: u64 = std::str::from_utf8(&kv.value).unwrap().parse().unwrap();
                let txn = Txn::new()
                    .when(Compare::mod_revision_is(key.clone(), kv.mod_revision))
                    .then(Op::put(key.clone(), (n + 1).to_string()));
                let resp = store.txn(txn).await.unwrap();
                if resp.succeeded {
                    revisions.push(resp.revision);
                    break;
                }
            }
        }
        revisions
    });
    let all: Vec<Vec<u64>> = futures::future::join_all(tasks).await;
    let mut revisions: Vec<u64> = all.into_iter().flatten().collect();
    let n = revisions.len();
    revisions.sort_unstable();
    revisions.dedup();
    assert_eq!(revisions.len(), n, "every successful write has its own revision");
    let kv = store.get(&key).await.unwrap().unwrap();
    assert_eq!(kv.value, Bytes::from("160"), "no increment is lost");
}

async fn get_many_is_consistent(store: &dyn MetaStore) {
    let (a, b) = (k("many/a"), k("many/b"));
    let resp = store.txn(Txn::new().then(Op::put(a.clone(), "1")).then(Op::put(b.clone(), "1"))).await.unwrap();
    let (kvs, revision) = store.get_many(&[a.clone(), k("many/none"), b.clone()]).await.unwrap();
    assert_eq!(kvs.len(), 3);
    assert!(kvs[1].is_none());
    assert_eq!(kvs[0].as_ref().unwrap().mod_revision, resp.revision);
    assert!(revision >= resp.revision);
}

async fn next_event(stream: &mut crate::WatchStream) -> crate::WatchEvent {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("watch event within 10s")
        .expect("stream open")
        .expect("event, not error")
}

async fn watch_replays_then_follows(store: &dyn MetaStore) {
    let p = "w/";
    let first = store.txn(Txn::new().then(Op::put(k("w/a"), "1"))).await.unwrap();
    store.txn(Txn::new().then(Op::put(k("other"), "x"))).await.unwrap();
    let second = store.txn(Txn::new().then(Op::put(k("w/b"), "2")).then(Op::put(k("w/c"), "3"))).await.unwrap();
    let third = store.txn(Txn::new().then(Op::delete(k("w/a")))).await.unwrap();

    let mut stream = store.watch(RangeRequest::prefix(k(p)), first.revision).await.unwrap();
    let e = next_event(&mut stream).await;
    assert_eq!((e.kind, e.kv.key.clone(), e.kv.mod_revision), (EventKind::Put, k("w/a"), first.revision));
    assert_eq!(e.kv.value, Bytes::from("1"));
    let e = next_event(&mut stream).await;
    assert_eq!((e.kv.key.clone(), e.kv.mod_revision), (k("w/b"), second.revision), "other keys are filtered out");
    let e = next_event(&mut stream).await;
    assert_eq!((e.kv.key.clone(), e.kv.mod_revision), (k("w/c"), second.revision));
    let e = next_event(&mut stream).await;
    assert_eq!((e.kind, e.kv.key.clone(), e.kv.mod_revision), (EventKind::Delete, k("w/a"), third.revision));

    // Live events follow with no gap and no duplicate.
    let mut expected = Vec::new();
    for i in 0..50 {
        let resp = store.txn(Txn::new().then(Op::put(k(&format!("w/live{i:02}")), format!("{i}")))).await.unwrap();
        expected.push(resp.revision);
    }
    for rev in expected {
        let e = next_event(&mut stream).await;
        assert_eq!(e.kv.mod_revision, rev);
    }

    // Resuming from a revision in the middle yields exactly the suffix.
    let mut resumed = store.watch(RangeRequest::prefix(k(p)), second.revision).await.unwrap();
    let e = next_event(&mut resumed).await;
    assert_eq!(e.kv.mod_revision, second.revision);
}

async fn watch_from_future_and_now(store: &dyn MetaStore) {
    let mut now = store.watch(RangeRequest::prefix(k("f/")), 0).await.unwrap();
    let current = store.current_revision().await.unwrap();
    let mut future = store.watch(RangeRequest::prefix(k("f/")), current + 2).await.unwrap();
    let r1 = store.txn(Txn::new().then(Op::put(k("f/1"), "1"))).await.unwrap();
    let r2 = store.txn(Txn::new().then(Op::put(k("f/2"), "2"))).await.unwrap();
    assert_eq!(next_event(&mut now).await.kv.mod_revision, r1.revision, "from 0 means from now on");
    assert_eq!(next_event(&mut now).await.kv.mod_revision, r2.revision);
    let first_future = next_event(&mut future).await.kv.mod_revision;
    assert!(first_future >= current + 2, "a future start revision skips earlier changes");
}

async fn large_values_round_trip(store: &dyn MetaStore) {
    let value: Vec<u8> = (0..256 * 1024).map(|i: u32| (i % 251) as u8).collect();
    store.txn(Txn::new().then(Op::put(k("large"), value.clone()))).await.unwrap();
    let kv = store.get(&k("large")).await.unwrap().unwrap();
    assert_eq!(kv.value.as_ref(), value.as_slice());
}

/// A watch from a revision older than the store keeps must fail with `Compacted`, never skip.
pub fn assert_compacted(result: Result<crate::WatchStream, MetaError>) {
    match result {
        Err(MetaError::Compacted { .. }) => {}
        Err(other) => panic!("expected Compacted, got {other}"),
        Ok(_) => panic!("expected Compacted, got a stream"),
    }
}
