//! Checked like a database (issue 15): three regions (real nodes, a real three-member etcd,
//! the WAN proxy on every cross-region link), clients in all three running random puts,
//! conditional puts (`If-None-Match: *`, `If-Match`), KV compare-and-set, deletes and reads in
//! every consistency mode, while a nemesis partitions links and kills (`kill -9`) and restarts
//! nodes. The recorded history (invoke / ok / fail / info, with times) is then checked by
//! `meridian_jepsen`: linearizable strong reads and writes per key, read-your-writes with
//! `x-meridian-min-revision` and with the session cookie, monotonic local reads, integrity of
//! every read, and no acknowledged write lost once everything healed.
//!
//! CI runs it for 20 s of faults; `MERIDIAN_JEPSEN_SECONDS=300 cargo test -p meridian --test
//! jepsen -- --nocapture` runs it longer (`MERIDIAN_JEPSEN_KEYS` sets the key count, default
//! 5: few keys keep the linearizability search tractable and the keys contended).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::wan_cluster::{REGIONS, WanCluster};
use common::{ACCESS_KEY, SECRET_KEY};
use meridian_client::{Client, Consistency, Credentials, Error, GetOptions, PutOptions};
use meridian_jepsen::history::{Summary, render};
use meridian_jepsen::{Action, Condition, History, Op, Outcome, ReadMode, Version, check_all};
use meridian_wan::LinkConfig;

const BUCKET: &str = "jepsen";
/// Per-request timeout of the clients: longer than an etcd election plus the engine's 5 s
/// metadata deadline would turn partitions into long stalls; shorter makes more `info`.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(6);
/// Configurations the linearizability search may visit per key.
const SEARCH_BUDGET: usize = 2_000_000;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// What a client session does.
#[derive(Clone, Copy, Debug)]
enum Role {
    /// On its own region's node: strong reads, puts, conditional puts, CAS, deletes.
    Strong,
    /// On its own region's node: local reads (monotonic), a few puts.
    Local,
    /// Moves between regions: writes in one, reads in the next with its last write's
    /// revision as `x-meridian-min-revision`.
    MinRevision,
    /// Moves between regions keeping the session cookie, like a browser.
    Cookie,
}

/// xorshift: deterministic per session, no dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

struct Session {
    process: usize,
    role: Role,
    home: usize,
    /// One client per region (sharing the cookie jar, for `Cookie`).
    clients: Vec<Client>,
    history: History,
    values: Arc<AtomicU64>,
    keys: Vec<String>,
    rng: Rng,
    /// What this session last read of each key: (value, revision, etag), for conditions.
    seen: std::collections::HashMap<String, Option<(u64, u64, String)>>,
    /// The revision of this session's last acknowledged write.
    last_write: u64,
    /// Whether the last operation ended in an error.
    failed: bool,
}

/// How a request ended, in Jepsen's terms.
fn outcome_of(e: &Error) -> (Outcome, Option<u64>) {
    match e {
        Error::VersionMismatch { current, .. } => (Outcome::Refused, Some(*current)),
        Error::Service { status: 412, .. } => (Outcome::Refused, None),
        // Refused before anything was applied (bad request, auth): certainly no effect.
        Error::Service { status, .. } if (400..500).contains(status) => (Outcome::Fail, None),
        // No connection (the node is down): the request was never sent.
        Error::Transport(message) if never_sent(message) => (Outcome::Fail, None),
        // 5xx, timeouts, resets: the write may or may not have been applied.
        _ => (Outcome::Info, None),
    }
}

/// Whether a transport error happened before the request left the client (the client reports
/// connection failures as "tcp connect error").
fn never_sent(message: &str) -> bool {
    message.contains("tcp connect error")
}

fn value_of(bytes: &[u8]) -> u64 {
    std::str::from_utf8(bytes).ok().and_then(|s| s.parse().ok()).unwrap_or(u64::MAX)
}

impl Session {
    async fn run(mut self, until: Instant) {
        let mut i = 0usize;
        while Instant::now() < until {
            let key = self.keys[self.rng.below(self.keys.len() as u64) as usize].clone();
            let roll = self.rng.below(100);
            let node = match self.role {
                Role::Strong | Role::Local => self.home,
                // Every operation goes to the next region: writes and the reads after them
                // land in different regions.
                Role::MinRevision | Role::Cookie => (self.home + i) % REGIONS.len(),
            };
            i += 1;
            if std::mem::take(&mut self.failed) {
                // The node is down or cut off: don't spin on it.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            match (self.role, roll) {
                (Role::Strong, 0..40) => self.read(node, &key, ReadMode::Strong).await,
                (Role::Strong, 40..55) => self.put(node, &key, Condition::None).await,
                (Role::Strong, 55..65) => self.put(node, &key, Condition::IfNoneMatch).await,
                (Role::Strong, 65..75) => match self.seen.get(&key).cloned().flatten() {
                    Some((value, _, _)) => self.put(node, &key, Condition::IfMatch { expected: value }).await,
                    None => self.read(node, &key, ReadMode::Strong).await,
                },
                (Role::Strong, 75..90) => {
                    let (expected, revision) = match self.seen.get(&key).cloned().flatten() {
                        Some((value, revision, _)) => (Some(value), revision),
                        None => (None, 0),
                    };
                    self.put(node, &key, Condition::IfRevision { revision, expected }).await
                }
                (Role::Strong, _) => self.delete(node, &key).await,
                (Role::Local, 0..80) => self.read(node, &key, ReadMode::Local).await,
                (Role::Local, _) => self.put(node, &key, Condition::None).await,
                (Role::MinRevision | Role::Cookie, 0..40) => self.put(node, &key, Condition::None).await,
                (Role::MinRevision | Role::Cookie, 40..48) => self.delete(node, &key).await,
                (Role::MinRevision, _) => self.read(node, &key, ReadMode::MinRevision(self.last_write)).await,
                (Role::Cookie, _) => {
                    let cookie = self.clients[node].session_revision();
                    self.read(node, &key, ReadMode::Cookie(cookie)).await
                }
            }
        }
    }

    fn op(&self, node: usize, key: &str, invoke: u128, action: Action) -> Op {
        Op {
            process: self.process,
            node,
            key: key.to_string(),
            invoke,
            complete: 0,
            outcome: Outcome::Info,
            action,
            revision: None,
            error: None,
            final_read: false,
        }
    }

    async fn read(&mut self, node: usize, key: &str, mode: ReadMode) {
        let consistency = match mode {
            ReadMode::Strong => Consistency::Strong,
            ReadMode::MinRevision(r) if r > 0 => Consistency::AtLeast(r),
            _ => Consistency::Local,
        };
        let mut op = self.op(node, key, self.history.now(), Action::Read { mode, result: None });
        let got = self.clients[node].get_with(key, &GetOptions::default().consistency(consistency)).await;
        op.complete = self.history.now();
        match got {
            Ok(entry) => {
                op.outcome = Outcome::Ok;
                let seen = entry.map(|e| (value_of(&e.value), e.revision, e.etag));
                let result = seen.as_ref().map(|(value, revision, _)| Version { value: *value, revision: *revision });
                op.action = Action::Read { mode, result };
                self.seen.insert(key.to_string(), seen);
            }
            Err(e) => {
                if matches!(&e, Error::Transport(m) if never_sent(m)) {
                    op.outcome = Outcome::Fail;
                }
                op.error = Some(e.to_string());
                self.failed = true;
            }
        }
        self.history.record(op);
    }

    async fn put(&mut self, node: usize, key: &str, condition: Condition) {
        let value = self.values.fetch_add(1, Ordering::SeqCst);
        let options = match condition {
            Condition::None => PutOptions::default(),
            Condition::IfNoneMatch => PutOptions::default().if_none_match(),
            Condition::IfMatch { .. } => {
                let etag = self.seen.get(key).cloned().flatten().map(|(_, _, etag)| etag).unwrap_or_default();
                PutOptions::default().if_match(etag)
            }
            Condition::IfRevision { revision, .. } => PutOptions::default().if_revision(revision),
        };
        let mut op = self.op(node, key, self.history.now(), Action::Put { value, condition });
        let result = self.clients[node].put_with(key, value.to_string(), &options).await;
        self.finish_write(&mut op, result);
    }

    async fn delete(&mut self, node: usize, key: &str) {
        let mut op = self.op(node, key, self.history.now(), Action::Delete);
        let result = self.clients[node].delete(key).await;
        self.finish_write(&mut op, result);
    }

    fn finish_write(&mut self, op: &mut Op, result: Result<u64, Error>) {
        op.complete = self.history.now();
        match result {
            Ok(revision) => {
                op.outcome = Outcome::Ok;
                op.revision = Some(revision);
                self.last_write = self.last_write.max(revision);
            }
            Err(e) => {
                (op.outcome, op.revision) = outcome_of(&e);
                self.failed = op.outcome == Outcome::Info || matches!(&e, Error::Transport(_));
                op.error = Some(e.to_string());
            }
        }
        self.history.record(op.clone());
    }
}

/// One fault the nemesis injected, for the report.
#[derive(Debug)]
struct Fault {
    at: Duration,
    what: String,
}

/// Partitions links and kills nodes until `until`; heals everything before returning.
async fn nemesis(cluster: &mut WanCluster, until: Instant, started: Instant) -> Vec<Fault> {
    let mut rng = Rng(0x5DEE_CE66_D1CE_4E5B ^ env_or("MERIDIAN_JEPSEN_SEED", 1));
    let mut faults = Vec::new();
    tokio::time::sleep(Duration::from_secs(1)).await;
    while Instant::now() + Duration::from_secs(3) < until {
        let region = rng.below(3) as usize;
        let hold = Duration::from_millis(1000 + rng.below(2000));
        let what = match rng.below(4) {
            0 => {
                cluster.nodes[region].kill9();
                tokio::time::sleep(hold).await;
                let node = &mut cluster.nodes[region];
                tokio::task::block_in_place(|| node.restart());
                format!("kill -9 the node of {} for {hold:?}, restart", REGIONS[region])
            }
            1 => {
                // Cuts the messages from this etcd member to the others (each member dials
                // a peer to receive from it): a leader there loses its followers.
                cluster.etcd_links[region].partition();
                tokio::time::sleep(hold).await;
                cluster.etcd_links[region].heal();
                format!("partition the etcd peer link into {} for {hold:?}", REGIONS[region])
            }
            2 => {
                // The other regions' nodes lose this region's etcd member and fail over.
                cluster.etcd_links[3 + region].partition();
                tokio::time::sleep(hold).await;
                cluster.etcd_links[3 + region].heal();
                format!("partition the other regions' links to the etcd member of {} for {hold:?}", REGIONS[region])
            }
            _ => {
                cluster.node_links[region].partition();
                cluster.etcd_links[region].partition();
                tokio::time::sleep(hold).await;
                cluster.etcd_links[region].heal();
                cluster.node_links[region].heal();
                format!("partition {}'s node and etcd peer links for {hold:?}", REGIONS[region])
            }
        };
        faults.push(Fault { at: started.elapsed(), what });
        tokio::time::sleep(Duration::from_millis(500 + rng.below(1000))).await;
    }
    faults
}

/// Strong reads of every key through every region once the cluster healed, retried until each
/// answers (up to 60 s): the history's final reads.
async fn final_reads(clients: &[Client], keys: &[String], history: &History) {
    for (node, client) in clients.iter().enumerate() {
        for key in keys {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let invoke = history.now();
                let got = client.get_with(key, &GetOptions::default().consistency(Consistency::Strong)).await;
                let complete = history.now();
                match got {
                    Ok(entry) => {
                        let result = entry.map(|e| Version { value: value_of(&e.value), revision: e.revision });
                        history.record(Op {
                            process: 10_000 + node,
                            node,
                            key: key.clone(),
                            invoke,
                            complete,
                            outcome: Outcome::Ok,
                            action: Action::Read { mode: ReadMode::Strong, result },
                            revision: None,
                            error: None,
                            final_read: true,
                        });
                        break;
                    }
                    Err(e) => assert!(Instant::now() < deadline, "final read of {key} in region {node}: {e}"),
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_jepsen_history_under_partitions_and_kills_keeps_every_promise() {
    let seconds = env_or("MERIDIAN_JEPSEN_SECONDS", 20);
    let keys: Vec<String> = (0..env_or("MERIDIAN_JEPSEN_KEYS", 5)).map(|k| format!("k{k}")).collect();
    let mut cluster = WanCluster::start(LinkConfig::one_way(Duration::from_millis(10)), &[]).await;
    let endpoints: Vec<String> = cluster.nodes.iter().map(|n| n.endpoint.clone()).collect();
    let base = Client::new(&endpoints[0], BUCKET, Credentials::new(ACCESS_KEY, SECRET_KEY))
        .unwrap()
        .with_timeout(Some(REQUEST_TIMEOUT));
    base.create_bucket().await.unwrap();

    let history = History::new();
    let values = Arc::new(AtomicU64::new(1));
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let roles = [Role::Strong, Role::Strong, Role::Local, Role::MinRevision, Role::Cookie];
    let mut sessions = Vec::new();
    for home in 0..REGIONS.len() {
        for (r, role) in roles.iter().enumerate() {
            let process = home * roles.len() + r;
            let own = match role {
                Role::Cookie => base.clone().with_session(),
                _ => base.clone(),
            };
            let clients = endpoints.iter().map(|e| own.with_endpoint(e).unwrap()).collect();
            let session = Session {
                process,
                role: *role,
                home,
                clients,
                history: history.clone(),
                values: Arc::clone(&values),
                keys: keys.clone(),
                rng: Rng((process as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
                seen: Default::default(),
                last_write: 0,
                failed: false,
            };
            sessions.push(tokio::spawn(session.run(until)));
        }
    }
    let faults = nemesis(&mut cluster, until, started).await;
    for s in sessions {
        s.await.unwrap();
    }
    println!("clients stopped {:?} after the start", started.elapsed());
    let clients: Vec<Client> = endpoints.iter().map(|e| base.with_endpoint(e).unwrap()).collect();
    final_reads(&clients, &keys, &history).await;
    println!("final reads done {:?} after the start", started.elapsed());

    let ops = history.ops();
    let summary = Summary::of(&ops);
    let file = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("jepsen-history.edn");
    std::fs::write(&file, render(&ops)).unwrap();
    println!("{summary}\nhistory: {}", file.display());
    let checked = Instant::now();
    let violations = check_all(&ops, SEARCH_BUDGET);
    println!("{} faults in {seconds} s; checked in {:?}", faults.len(), checked.elapsed());
    for f in &faults {
        println!("  at {:>6.1} s: {}", f.at.as_secs_f64(), f.what);
    }
    for v in &violations {
        println!("VIOLATION: {v}");
    }
    assert!(violations.is_empty(), "{} violations (history in {})", violations.len(), file.display());
    // The run must have exercised what it checks.
    assert!(faults.len() >= 3, "only {} faults: {faults:?}", faults.len());
    let count = |f: &dyn Fn(&Op) -> bool| ops.iter().filter(|o| o.outcome == Outcome::Ok && f(o)).count();
    let reads_in = |m: fn(&ReadMode) -> bool| count(&|o| matches!(&o.action, Action::Read { mode, .. } if m(mode)));
    assert!(reads_in(|m| *m == ReadMode::Strong) > 50, "{summary}");
    assert!(reads_in(|m| *m == ReadMode::Local) > 50, "{summary}");
    assert!(reads_in(|m| matches!(m, ReadMode::MinRevision(r) if *r > 0)) > 20, "{summary}");
    assert!(reads_in(|m| matches!(m, ReadMode::Cookie(Some(_)))) > 20, "{summary}");
    let conditional = |c: fn(&Condition) -> bool| {
        ops.iter().filter(|o| matches!(&o.action, Action::Put { condition, .. } if c(condition))).count()
    };
    assert!(conditional(|c| matches!(c, Condition::IfMatch { .. })) > 10, "{summary}");
    assert!(conditional(|c| *c == Condition::IfNoneMatch) > 10, "{summary}");
    assert!(conditional(|c| matches!(c, Condition::IfRevision { .. })) > 10, "{summary}");
}
