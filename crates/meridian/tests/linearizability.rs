#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

//! Linearizability of get / put / compare-and-set (and put_transaction) on single keys: real
//! concurrent clients against a real server record a history with invocation and completion
//! times, and a Wing–Gong checker (`meridian_jepsen::register`) searches for a valid
//! sequential order. The checker is itself tested on known linearizable and known
//! non-linearizable histories.

mod common;

use std::time::Duration;

use common::{ACCESS_KEY, SECRET_KEY, Server};
use meridian_client::{Client, Credentials, Error, PutOptions};
use meridian_jepsen::register::{Op, Operation, Recorder, Value, Verdict, check};

fn op(key: &str, call: u128, ret: u128, op: Op) -> Operation {
    Operation { key: key.into(), call, ret: Some(ret), op }
}

fn cas(expected: Value, new: u64, ok: bool) -> Op {
    Op::Cas { expected, new, ok, observed: None }
}

// ----- the checker on known histories --------------------------------------------------------------

#[test]
fn checker_accepts_sequential_and_overlapping_histories() {
    let h = vec![
        op("k", 0, 1, Op::Read(None)),
        op("k", 2, 3, Op::Write(1)),
        op("k", 4, 5, Op::Read(Some(1))),
        op("k", 6, 7, cas(Some(1), 2, true)),
        op("k", 8, 9, cas(Some(1), 3, false)),
        op("k", 10, 11, Op::Read(Some(2))),
    ];
    assert_eq!(check(&h, None), Verdict::Linearizable);
    // A read overlapping a write may see either value.
    for seen in [None, Some(1)] {
        let h = vec![op("k", 0, 10, Op::Write(1)), op("k", 5, 6, Op::Read(seen))];
        assert_eq!(check(&h, None), Verdict::Linearizable, "{seen:?}");
    }
    // Two overlapping writes, then reads that agree on the later one: either order works.
    let h = vec![
        op("k", 0, 10, Op::Write(1)),
        op("k", 1, 9, Op::Write(2)),
        op("k", 11, 12, Op::Read(Some(1))),
        op("k", 13, 14, Op::Read(Some(1))),
    ];
    assert_eq!(check(&h, None), Verdict::Linearizable);
    // Of two overlapping CASes from the same value, one wins.
    let h = vec![
        op("k", 0, 1, Op::Write(1)),
        op("k", 2, 10, cas(Some(1), 2, false)),
        op("k", 3, 9, cas(Some(1), 3, true)),
        op("k", 11, 12, Op::Read(Some(3))),
    ];
    assert_eq!(check(&h, None), Verdict::Linearizable);
    // An operation with an unknown outcome may have happened...
    let h = vec![
        Operation { key: "k".into(), call: 0, ret: None, op: Op::Write(7) },
        op("k", 5, 6, Op::Read(Some(7))),
        op("k", 7, 8, Op::Read(Some(7))),
    ];
    assert_eq!(check(&h, None), Verdict::Linearizable);
    // ...or not.
    let h = vec![Operation { key: "k".into(), call: 0, ret: None, op: Op::Write(7) }, op("k", 5, 6, Op::Read(None))];
    assert_eq!(check(&h, None), Verdict::Linearizable);
    // Keys are independent.
    let h = vec![op("a", 0, 1, Op::Write(1)), op("b", 2, 3, Op::Read(None)), op("a", 4, 5, Op::Read(Some(1)))];
    assert_eq!(check(&h, None), Verdict::Linearizable);
}

#[test]
fn checker_rejects_known_violations() {
    // A stale read after a completed write.
    let h = vec![op("k", 0, 1, Op::Write(1)), op("k", 2, 3, Op::Write(2)), op("k", 4, 5, Op::Read(Some(1)))];
    assert!(matches!(check(&h, None), Verdict::NotLinearizable { .. }));
    let h = vec![op("k", 0, 1, Op::Write(1)), op("k", 2, 3, Op::Read(None))];
    assert!(matches!(check(&h, None), Verdict::NotLinearizable { .. }));
    // A lost CAS: two CASes from the same value both succeed (a lost update).
    let h =
        vec![op("k", 0, 1, Op::Write(1)), op("k", 2, 10, cas(Some(1), 2, true)), op("k", 3, 9, cas(Some(1), 3, true))];
    assert!(matches!(check(&h, None), Verdict::NotLinearizable { .. }));
    // A CAS that succeeded but whose write is not visible afterwards.
    let h = vec![op("k", 0, 1, Op::Write(1)), op("k", 2, 3, cas(Some(1), 2, true)), op("k", 4, 5, Op::Read(Some(1)))];
    assert!(matches!(check(&h, None), Verdict::NotLinearizable { .. }));
    // A CAS refused although the register held the expected value and nobody else wrote.
    let h = vec![op("k", 0, 1, Op::Write(1)), op("k", 2, 3, cas(Some(1), 2, false))];
    assert!(matches!(check(&h, None), Verdict::NotLinearizable { .. }));
    // A refused CAS that reports a value the register cannot hold at that point.
    let h = vec![
        op("k", 0, 1, Op::Write(1)),
        op("k", 2, 3, Op::Cas { expected: None, new: 5, ok: false, observed: Some(Some(9)) }),
    ];
    assert!(matches!(check(&h, None), Verdict::NotLinearizable { .. }));
    // A read of a value never written.
    let h = vec![op("k", 0, 1, Op::Read(Some(42)))];
    assert!(matches!(check(&h, None), Verdict::NotLinearizable { .. }));
    // Reads going back in time: with overlapping writes w1 < w2, once a read saw 2, a later
    // read cannot see 1.
    let h = vec![
        op("k", 0, 100, Op::Write(1)),
        op("k", 0, 100, Op::Write(2)),
        op("k", 10, 20, Op::Read(Some(1))),
        op("k", 30, 40, Op::Read(Some(2))),
        op("k", 50, 60, Op::Read(Some(1))),
    ];
    assert!(matches!(check(&h, None), Verdict::NotLinearizable { .. }));
    // The violation is reported for the right key.
    let h = vec![op("ok", 0, 1, Op::Write(1)), op("bad", 2, 3, Op::Read(Some(3)))];
    assert_eq!(check(&h, None), Verdict::NotLinearizable { key: "bad".into(), longest_prefix: 0 });
}

/// A generated history of 4 overlapping workers × 60 operations on one key, valid by
/// construction (each operation takes effect at a random point inside its interval): the
/// checker must accept it quickly; corrupting one read must make it fail.
#[test]
fn checker_is_fast_on_large_valid_histories_and_catches_one_bad_read() {
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut rand = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    // Linearization points at distinct times 10, 20, 30...; each worker's operations are
    // sequential, with intervals around their points.
    let workers = 4;
    let per_worker = 60;
    let mut points: Vec<(u128, usize)> = Vec::new(); // (point, worker)
    let mut t = 0u128;
    let mut counts = vec![0; workers];
    while counts.iter().any(|c| *c < per_worker) {
        let w = rand(workers as u64) as usize;
        if counts[w] < per_worker {
            counts[w] += 1;
            t += 10;
            points.push((t, w));
        }
    }
    let mut state: Value = None;
    let mut history = Vec::new();
    let mut last_ret = vec![0u128; workers];
    let mut next_value = 1;
    for (point, w) in &points {
        let call = (last_ret[*w] + 1).max(point.saturating_sub(rand(40) as u128 + 1));
        let ret = point + rand(40) as u128 + 1;
        // Keep each worker sequential: its next call starts after this return.
        last_ret[*w] = ret;
        let o = match rand(3) {
            0 => Op::Read(state),
            1 => {
                state = Some(next_value);
                next_value += 1;
                Op::Write(next_value - 1)
            }
            _ => {
                let expected = if rand(2) == 0 { state } else { Some(rand(next_value)) };
                let ok = expected == state;
                let new = next_value;
                next_value += 1;
                if ok {
                    state = Some(new);
                }
                Op::Cas { expected, new, ok, observed: None }
            }
        };
        history.push(Operation { key: "k".into(), call: call.min(*point), ret: Some(ret.max(*point)), op: o });
    }
    let started = std::time::Instant::now();
    assert_eq!(check(&history, None), Verdict::Linearizable);
    assert!(started.elapsed() < Duration::from_secs(5), "checker too slow: {:?}", started.elapsed());
    // Make a late read return the value of a write W that was certainly overwritten before the
    // read began (a successful write X invoked after W returned and completed before the read
    // was invoked): not linearizable in any order.
    let writes = |o: &Operation| match o.op {
        Op::Write(v) => Some(v),
        Op::Cas { new, ok: true, .. } => Some(new),
        _ => None,
    };
    let (read, stale) = (0..history.len())
        .rev()
        .filter(|r| matches!(history[*r].op, Op::Read(_)))
        .find_map(|r| {
            let read_call = history[r].call;
            history.iter().find_map(|w| {
                let v = writes(w)?;
                let overwritten = history
                    .iter()
                    .any(|x| writes(x).is_some() && x.call > w.ret.unwrap() && x.ret.unwrap() < read_call);
                overwritten.then_some((r, v))
            })
        })
        .unwrap();
    history[read].op = Op::Read(Some(stale));
    assert!(matches!(check(&history, None), Verdict::NotLinearizable { .. }));
}

// ----- the real thing ------------------------------------------------------------------------------

/// 4 workers × 90 operations on 3 keys (about 120 per key): reads, blind writes, CAS from the
/// worker's last read, and put_transaction writes, all through the HTTP client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_put_cas_history_is_linearizable() {
    let server = Server::start();
    let kv = Client::new(&server.endpoint, "lin", Credentials::new(ACCESS_KEY, SECRET_KEY)).unwrap();
    kv.create_bucket().await.unwrap();
    let recorder = Recorder::new();
    let keys = ["lin/a", "lin/b", "lin/c"];
    let workers = 4u64;
    let ops_per_worker = 90u64;
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (kv, recorder) = (kv.clone(), recorder.clone());
        tasks.push(tokio::spawn(async move {
            // (value, revision) this worker last read per key: CAS expectations, often stale.
            let mut seen: std::collections::HashMap<&str, (Value, u64)> = Default::default();
            let mut rng = (w + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let mut stats = [0u32; 4];
            for i in 0..ops_per_worker {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let key = keys[(rng % 3) as usize];
                let unique = w * 1_000_000 + i + 1; // every write writes a distinct value
                let call = recorder.now();
                let kind = (rng >> 8) % 10;
                let (ret, op) = match kind {
                    0..=3 => {
                        let got = kv.get(key).await.unwrap();
                        let v: Value = got.as_ref().map(|e| std::str::from_utf8(&e.value).unwrap().parse().unwrap());
                        seen.insert(key, (v, got.map_or(0, |e| e.revision)));
                        stats[0] += 1;
                        (Some(recorder.now()), Op::Read(v))
                    }
                    4..=5 => {
                        kv.put(key, unique.to_string()).await.unwrap();
                        stats[1] += 1;
                        (Some(recorder.now()), Op::Write(unique))
                    }
                    6..=8 => {
                        let (expected, revision) = seen.get(key).copied().unwrap_or((None, 0));
                        let opts = PutOptions::default().if_revision(revision);
                        let result = kv.put_with(key, unique.to_string(), &opts).await;
                        let ret = Some(recorder.now());
                        stats[2] += 1;
                        match result {
                            Ok(_) => (ret, Op::Cas { expected, new: unique, ok: true, observed: None }),
                            Err(Error::VersionMismatch { .. }) => {
                                (ret, Op::Cas { expected, new: unique, ok: false, observed: None })
                            }
                            Err(e) => panic!("{e}"),
                        }
                    }
                    _ => match kv.put_transaction(key, unique.to_string(), Duration::ZERO).await {
                        Ok(_) => {
                            stats[3] += 1;
                            (Some(recorder.now()), Op::Write(unique))
                        }
                        // Refused before writing anything: no effect, nothing to check.
                        Err(Error::LockContended { .. }) => continue,
                        Err(e) => panic!("{e}"),
                    },
                };
                recorder.record(Operation { key: key.to_string(), call, ret, op });
            }
            stats
        }));
    }
    let mut totals = [0u32; 4];
    for t in tasks {
        for (a, b) in totals.iter_mut().zip(t.await.unwrap()) {
            *a += b;
        }
    }
    let history = recorder.history();
    // The history must actually be concurrent for the check to mean something.
    let overlapping = history
        .iter()
        .filter(|a| history.iter().any(|b| !std::ptr::eq(*a, b) && b.call < a.ret.unwrap() && a.call < b.ret.unwrap()))
        .count();
    assert!(overlapping > history.len() / 2, "only {overlapping} of {} operations overlap", history.len());
    let started = std::time::Instant::now();
    let verdict = check(&history, None);
    eprintln!(
        "{} operations (reads {}, writes {}, cas {}, transactions {}), {overlapping} overlapping, checked in {:?}",
        history.len(),
        totals[0],
        totals[1],
        totals[2],
        totals[3],
        started.elapsed()
    );
    assert_eq!(verdict, Verdict::Linearizable, "history: {history:#?}");
}
