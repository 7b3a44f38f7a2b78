#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

//! Real clients in parallel processes (`meridian kv ...`) against one server: compare-and-set
//! increments lose no update, put_transaction contention has exactly the expected winners and
//! clean "aborted" errors for the rest, and fencing rejects a holder that was paused (SIGSTOP)
//! past its lock's TTL.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{ACCESS_KEY, SECRET_KEY, Server, raw, text};
use meridian_client::{Client, Credentials};

const BUCKET: &str = "kvc";

fn kv_command(server: &Server) -> Command {
    let mut cmd = Command::new(common::binary());
    cmd.arg("kv");
    cmd.env("MERIDIAN_ENDPOINT", &server.endpoint).env("MERIDIAN_BUCKET", BUCKET);
    cmd.env("AWS_ACCESS_KEY_ID", ACCESS_KEY).env("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

fn kv(server: &Server, args: &[&str]) -> Output {
    kv_command(server).args(args).output().unwrap()
}

async fn setup() -> (Server, Client) {
    let server = Server::start();
    let client = Client::new(&server.endpoint, BUCKET, Credentials::new(ACCESS_KEY, SECRET_KEY)).unwrap();
    client.create_bucket().await.unwrap();
    (server, client)
}

/// N processes at a time increment one counter K times each with read (`get --json`) +
/// `put --if-version`, retrying on exit code 3. No update may be lost: the counter ends at N×K.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_if_version_increments_lose_no_update() {
    let (server, client) = setup().await;
    let (n, k) = (8usize, 20usize);
    let started = Instant::now();
    let server = std::sync::Arc::new(server);
    let workers: Vec<_> = (0..n)
        .map(|_| {
            let server = std::sync::Arc::clone(&server);
            std::thread::spawn(move || {
                let mut conflicts = 0;
                for _ in 0..k {
                    loop {
                        let got = kv(&server, &["get", "counter", "--json"]);
                        let (value, revision) = match got.status.code() {
                            Some(4) => (0u64, 0u64),
                            Some(0) => {
                                let j: serde_json::Value = serde_json::from_slice(&got.stdout).unwrap();
                                (j["value"].as_str().unwrap().parse().unwrap(), j["revision"].as_u64().unwrap())
                            }
                            other => panic!("get failed ({other:?}): {}", text(&got.stderr)),
                        };
                        let next = (value + 1).to_string();
                        let put = kv(&server, &["put", "counter", &next, "--if-version", &revision.to_string()]);
                        match put.status.code() {
                            Some(0) => break,
                            Some(3) => {
                                let err = text(&put.stderr);
                                assert!(err.contains("version mismatch") && err.contains("current is"), "{err}");
                                conflicts += 1;
                            }
                            other => panic!("put failed ({other:?}): {}", text(&put.stderr)),
                        }
                    }
                }
                conflicts
            })
        })
        .collect();
    let conflicts: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
    let entry = client.get("counter").await.unwrap().unwrap();
    assert_eq!(std::str::from_utf8(&entry.value).unwrap(), (n * k).to_string(), "no update lost");
    eprintln!("{n} processes × {k} increments: {conflicts} version conflicts retried, {:?}", started.elapsed());
    assert!(conflicts > 0, "the processes never raced: the test proves nothing");
}

/// A put_transaction that holds the key's lock while its body trickles in, over a raw socket.
struct SlowTransaction {
    stream: TcpStream,
    rest: Vec<u8>,
}

impl SlowTransaction {
    fn start(server: &Server, key: &str, body: &[u8]) -> SlowTransaction {
        let path = format!("/{BUCKET}/{key}");
        let headers = [("x-meridian-transaction", "lock".to_string()), ("x-meridian-lock-ttl", "30s".to_string())];
        let signed = raw::sign_headers(&server.addr, "PUT", &path, &headers, body, ACCESS_KEY, SECRET_KEY);
        let mut stream = TcpStream::connect(&server.addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut head = format!("PUT {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n", server.addr, body.len());
        for (k, v) in &signed {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).unwrap();
        let half = body.len() / 2;
        stream.write_all(&body[..half]).unwrap();
        stream.flush().unwrap();
        SlowTransaction { stream, rest: body[half..].to_vec() }
    }

    /// Sends the rest of the body; returns the status line and the response head.
    fn finish(mut self) -> String {
        self.stream.write_all(&self.rest).unwrap();
        let mut reader = BufReader::new(self.stream);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" || line.is_empty() {
                break;
            }
            head.push_str(&line);
        }
        head
    }
}

async fn wait_for_holder(client: &Client, lock: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(l) = client.owner(lock).await.unwrap() {
            return l.owner;
        }
        assert!(Instant::now() < deadline, "nobody took {lock}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// put_transaction contention between processes:
/// 1. a writer holds the key (its upload is still arriving): M processes racing
///    `put --transaction` all abort at once (exit 3, naming the holder); the holder wins;
/// 2. M processes race with nobody holding the key: every one either wins or aborts cleanly,
///    the final value is a winner's, and winners wrote one after another;
/// 3. with `--wait`, all M succeed, serialized.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_put_transaction_contention_between_processes() {
    let (server, client) = setup().await;
    let m = 8;

    // 1. A slow writer holds the key.
    let slow = SlowTransaction::start(&server, "hot", &vec![b's'; 64 << 10]);
    let holder = wait_for_holder(&client, "key:hot").await;
    assert!(holder.starts_with("put-transaction/"), "{holder}");
    let started = Instant::now();
    let racers: Vec<Child> = (0..m)
        .map(|i| kv_command(&server).args(["put", "hot", &format!("racer {i}"), "--transaction"]).spawn().unwrap())
        .collect();
    for racer in racers {
        let out = racer.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(3), "stderr: {}", text(&out.stderr));
        let err = text(&out.stderr);
        assert!(err.starts_with("aborted: lock \"key:hot\" is held by") && err.contains(&holder), "{err}");
    }
    assert!(started.elapsed() < Duration::from_secs(10), "contended transactions fail at once");
    assert_eq!(client.get("hot").await.unwrap(), None, "nothing written while the holder uploads");
    let head = slow.finish();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let entry = client.get("hot").await.unwrap().unwrap();
    assert_eq!(entry.value.len(), 64 << 10, "exactly one winner: the holder");
    assert!(entry.value.iter().all(|b| *b == b's'));
    assert_eq!(client.owner("key:hot").await.unwrap(), None, "the holder released the key");

    // 2. Nobody holds the key: a free-for-all.
    let racers: Vec<Child> = (0..m)
        .map(|i| kv_command(&server).args(["put", "free", &format!("racer {i}"), "--transaction"]).spawn().unwrap())
        .collect();
    let mut winners = Vec::new();
    let mut aborted = 0;
    for (i, racer) in racers.into_iter().enumerate() {
        let out = racer.wait_with_output().unwrap();
        match out.status.code() {
            Some(0) => winners.push((text(&out.stdout).trim().parse::<u64>().unwrap(), format!("racer {i}"))),
            Some(3) => {
                let err = text(&out.stderr);
                assert!(err.contains("is held by \"put-transaction/"), "{err}");
                aborted += 1;
            }
            other => panic!("unexpected exit {other:?}: {}", text(&out.stderr)),
        }
    }
    assert!(!winners.is_empty());
    assert_eq!(winners.len() + aborted, m);
    winners.sort();
    winners.dedup_by_key(|w| w.0);
    assert_eq!(winners.len() + aborted, m, "every winner wrote at its own revision");
    let entry = client.get("free").await.unwrap().unwrap();
    let last = winners.last().unwrap();
    assert_eq!((entry.revision, std::str::from_utf8(&entry.value).unwrap()), (last.0, last.1.as_str()));
    eprintln!("free-for-all: {} winners, {aborted} aborted", winners.len());

    // 3. Everyone waits for the lock: all succeed, one after another.
    let racers: Vec<Child> = (0..m)
        .map(|i| {
            kv_command(&server)
                .args(["put", "queued", &format!("racer {i}"), "--transaction", "--wait", "20s"])
                .spawn()
                .unwrap()
        })
        .collect();
    let mut revisions: Vec<u64> = racers
        .into_iter()
        .map(|r| {
            let out = r.wait_with_output().unwrap();
            assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
            text(&out.stdout).trim().parse().unwrap()
        })
        .collect();
    revisions.sort_unstable();
    revisions.dedup();
    assert_eq!(revisions.len(), m);
    assert_eq!(client.get("queued").await.unwrap().unwrap().revision, *revisions.last().unwrap());
}

/// Fencing: process A takes lock L and is paused (SIGSTOP) before its write, past L's TTL;
/// process B takes L with a larger token and writes with it; A resumes (SIGCONT) and its
/// fenced write is rejected (exit 3, "stale"): the data is B's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_fencing_rejects_a_paused_holder() {
    let (server, client) = setup().await;
    let bin = common::binary();
    // A: take the lock, say the token, wait for a line on stdin, then write under the fence.
    let script = format!(
        r#"set -u
token=$("{bin}" kv lock db/primary --ttl 2s --owner process-a) || exit 10
echo "$token"
read -r _
"{bin}" kv put db/state "written by A" --fence-lock db/primary --fence "$token"
"#,
        bin = bin.display()
    );
    let mut a = Command::new("bash");
    a.arg("-c").arg(&script);
    a.env("MERIDIAN_ENDPOINT", &server.endpoint).env("MERIDIAN_BUCKET", BUCKET);
    a.env("AWS_ACCESS_KEY_ID", ACCESS_KEY).env("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
    a.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut a, 0);
    let mut a = a.spawn().unwrap();
    let pgid = a.id();
    let mut line = String::new();
    BufReader::new(a.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    let t1: u64 = line.trim().parse().unwrap_or_else(|_| panic!("A printed {line:?}"));
    let signal = |sig: &str| {
        let status = Command::new("kill").args([sig, "--", &format!("-{pgid}")]).status().unwrap();
        assert!(status.success(), "kill {sig}");
    };
    // A is paused (a GC pause, a stalled VM) with its go-ahead already queued.
    signal("-STOP");
    a.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    assert_eq!(client.owner("db/primary").await.unwrap().unwrap().owner, "process-a");
    tokio::time::sleep(Duration::from_millis(2300)).await;

    // B: A's lock has expired; B takes it and writes under its own fence.
    let out = kv(&server, &["lock", "db/primary", "--ttl", "30s", "--owner", "process-b"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let t2: u64 = text(&out.stdout).trim().parse().unwrap();
    assert!(t2 > t1, "tokens increase: {t1} then {t2}");
    let out =
        kv(&server, &["put", "db/state", "written by B", "--fence-lock", "db/primary", "--fence", &t2.to_string()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    // A wakes up and writes with its stale token.
    signal("-CONT");
    let status = a.wait().unwrap();
    let mut a_err = String::new();
    a.stderr.take().unwrap().read_to_string(&mut a_err).unwrap();
    assert_eq!(status.code(), Some(3), "A's fenced write must abort: {a_err}");
    assert!(a_err.contains(&format!("fencing token {t1}")) && a_err.contains("stale"), "{a_err}");
    assert_eq!(client.get("db/state").await.unwrap().unwrap().value.as_ref(), b"written by B");
    assert_eq!(client.owner("db/primary").await.unwrap().unwrap().owner, "process-b");
    // A cannot release B's lock either.
    let out = kv(&server, &["release", "db/primary", "--token", &t1.to_string()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
}
