//! The embedded store's writer alone, on the transactions a 4 KiB S3 PUT of a new key sends
//! it: in an unversioned bucket (compare the bucket and the object, write the record and its
//! inline bytes) and in a versioned one (also compare the key's version head and write the
//! version entry; a PUT leaves the head alone, docs/decisions/056-versioning.md). No HTTP and no engine: the figures are the metadata writer's part of a
//! PUT (issue 17). Its CPU time still moves with the machine's load; the instruction count
//! under callgrind does not.
//!
//! ```sh
//! cargo bench -p meridian-meta --bench writer            # OPS=20000 per run, ROUNDS=3
//! # Instructions instead of time, one kind per run (BENCH: the executable that
//! # `cargo bench -p meridian-meta --bench writer --no-run` prints):
//! OPS=2000 ROUNDS=1 ONLY=versioned valgrind --tool=callgrind --callgrind-out-file=v.out $BENCH
//! callgrind_annotate --inclusive=yes v.out | grep 'Writer::run'
//! ```

#![allow(clippy::unwrap_used)] // a benchmark: a failed unwrap is a failed run

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use meridian_meta::embedded::{EmbeddedOptions, EmbeddedStore};
use meridian_meta::{Compare, MetaStore, Op, Txn};

/// Concurrent writers, as the S3 benchmark's c=32.
const WRITERS: usize = 32;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The store writer threads of this process and the CPU seconds each has used so far.
fn writer_threads() -> Vec<(String, f64)> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| {
            let path = task.ok()?.path();
            let name = std::fs::read_to_string(path.join("comm")).ok()?;
            if name.trim() != "meta-writer" {
                return None;
            }
            let stat = std::fs::read_to_string(path.join("stat")).ok()?;
            // Fields after the command's closing parenthesis; utime and stime are 14 and 15.
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            let ticks = fields[11].parse::<u64>().ok()? + fields[12].parse::<u64>().ok()?;
            Some((path.display().to_string(), ticks as f64 / 100.0))
        })
        .collect()
}

/// One PUT of a new key: the transaction the engine sends for it.
fn put_txn(n: usize, bucket_revision: u64, versioned: bool, record: &Bytes, inline: &Bytes) -> Txn {
    let key = format!("bench/objects/{:016x}", (n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut txn = Txn::new()
        .when(Compare::mod_revision_is(Bytes::from_static(b"b/bench"), bucket_revision))
        .when(Compare::absent(format!("o/{key}")));
    if versioned {
        let token = format!("{:020}", u64::MAX - n as u64);
        txn = txn.when(Compare::absent(format!("v/{key}"))).then(Op::put(format!("v/{key}\0{token}"), record.clone()));
    }
    txn.then(Op::put(format!("o/{key}"), record.clone())).then(Op::put(format!("i/{key}"), inline.clone()))
}

/// Writer CPU µs per transaction and transactions per second, for `ops` PUTs of new keys.
async fn run(versioned: bool, ops: usize) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let before: Vec<String> = writer_threads().into_iter().map(|(task, _)| task).collect();
    let store = Arc::new(EmbeddedStore::open(&dir.path().join("meta.redb"), EmbeddedOptions::default()).unwrap());
    // A bucket record of the size of one with a policy and lifecycle rules.
    let bucket = store.txn(Txn::new().then(Op::put("b/bench", vec![b'b'; 2048]))).await.unwrap().revision;
    let record = Bytes::from(vec![b'r'; 520]);
    let inline = Bytes::from(vec![b'i'; 4096]);
    // This store's writer: the one thread that was not there before it opened.
    let mine = |threads: Vec<(String, f64)>| {
        threads.into_iter().filter(|(task, _)| !before.contains(task)).collect::<Vec<_>>()
    };
    let [(task, cpu_before)] = mine(writer_threads()).try_into().unwrap();
    let started = Instant::now();
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (store, record, inline) = (Arc::clone(&store), record.clone(), inline.clone());
            tokio::spawn(async move {
                for n in (w..ops).step_by(WRITERS) {
                    let resp = store.txn(put_txn(n, bucket, versioned, &record, &inline)).await.unwrap();
                    assert!(resp.succeeded, "put {n} failed its compares");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_after = mine(writer_threads()).into_iter().find(|(t, _)| *t == task).unwrap().1;
    let cpu = cpu_after - cpu_before;
    (cpu / ops as f64 * 1e6, ops as f64 / elapsed)
}

fn main() {
    let ops = env_usize("OPS", 20_000);
    let rounds = env_usize("ROUNDS", 3);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    println!("| round | bucket | writer CPU µs per PUT | PUT txns/s |\n|---|---|---:|---:|");
    // ONLY=versioned or ONLY=unversioned runs one kind (for an instruction count under
    // `valgrind --tool=callgrind`, which does not depend on the machine's load).
    let only = std::env::var("ONLY").ok();
    let mut cost = [Vec::new(), Vec::new()];
    for round in 1..=rounds {
        // Alternate which kind runs first, so neither always follows the other.
        let order = if round % 2 == 1 { [false, true] } else { [true, false] };
        for versioned in order.into_iter().filter(|v| only.as_deref().is_none_or(|o| (o == "versioned") == *v)) {
            let (us, rate) = runtime.block_on(run(versioned, ops));
            cost[versioned as usize].push(us);
            let kind = if versioned { "versioned" } else { "unversioned" };
            println!("| {round} | {kind} | {us:.1} | {rate:.0} |");
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    if cost.iter().any(Vec::is_empty) {
        return;
    }
    let (unversioned, versioned) = (median(&mut cost[0]), median(&mut cost[1]));
    println!(
        "\nmedian writer CPU per PUT: unversioned {unversioned:.1} µs, versioned {versioned:.1} µs ({:.2}×)",
        versioned / unversioned
    );
}
