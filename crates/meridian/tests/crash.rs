//! Crash safety: a client writes and overwrites objects with several concurrent tasks while the
//! server is killed with SIGKILL at random moments and restarted on the same data directory.
//! After every restart each key must hold its last acknowledged content or one of the writes
//! that were in flight when the kill hit — whole, never a mix, never older — and listings,
//! HEAD and GET must agree. At the end, blobs orphaned by the crashes must be collected.
//!
//! Set MERIDIAN_CRASH_SEED=<n> to replay a run (the seed is printed).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use common::{Server, error_code, pattern};
use md5::Digest as _;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const BUCKET: &str = "crash";
const TASKS: usize = 8;
const KEYS_PER_TASK: usize = 5;
const ROUNDS: usize = 30;
/// The server's default: objects up to this size are stored inline, without a blob file.
const INLINE_MAX: u64 = 32 << 10;
const PART_SIZE: usize = 5 << 20;
const KIB: usize = 1 << 10;

/// What a key holds: `None` when it does not exist, else the MD5 and length of its bytes.
type Content = Option<([u8; 16], u64)>;

fn describe(content: &Content) -> String {
    match content {
        None => "<absent>".into(),
        Some((md5, len)) => format!("{} ({len} bytes)", hex::encode(&md5[..6])),
    }
}

#[derive(Default, Debug)]
struct KeyState {
    /// The last acknowledged write, or what a read after a restart showed.
    settled: Content,
    /// Writes sent since `settled` whose acknowledgement never arrived.
    in_flight: Vec<Content>,
}

struct Shared {
    keys: Mutex<BTreeMap<String, KeyState>>,
    /// Set just before the kill: errors seen while it is false are server bugs.
    killed: AtomicBool,
    unexpected: Mutex<Vec<String>>,
    acked: AtomicU64,
    failed: AtomicU64,
    /// Interrupted writes that a read after the restart showed had been committed.
    landed: AtomicU64,
    seq: AtomicU64,
    base: Bytes,
}

impl Shared {
    /// Distinct bytes for every write: a window of a random base, stamped with a sequence number
    /// every 4 KiB so that two writes never share a block at the same offset.
    fn content(&self, len: usize) -> Bytes {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let max_offset = self.base.len() - len;
        let offset = (seq as usize).wrapping_mul(7919) % (max_offset + 1);
        let mut data = self.base[offset..offset + len].to_vec();
        for block in data.chunks_mut(4 * KIB) {
            let n = block.len().min(8);
            block[..n].copy_from_slice(&seq.to_le_bytes()[..n]);
        }
        Bytes::from(data)
    }
}

fn digest(data: &[u8]) -> Content {
    Some((md5::Md5::digest(data).into(), data.len() as u64))
}

/// A client that never retries (a retry could land after the restart and blur what was in
/// flight at the kill) and gives up on a dead server quickly.
fn client(server: &Server) -> aws_sdk_s3::Client {
    let config = server
        .client()
        .config()
        .to_builder()
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_timeout(Duration::from_secs(60))
                .build(),
        )
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

enum Write {
    Put(Bytes),
    Multipart(Bytes),
    Delete,
}

async fn perform(s3: &aws_sdk_s3::Client, key: &str, write: &Write) -> Result<(), String> {
    let fail = |what: &str, e: &dyn std::fmt::Debug| format!("{what} {key}: {e:?}");
    match write {
        Write::Put(data) => {
            s3.put_object()
                .bucket(BUCKET)
                .key(key)
                .body(ByteStream::from(data.clone()))
                .send()
                .await
                .map_err(|e| fail("put", &e))?;
        }
        Write::Delete => {
            s3.delete_object().bucket(BUCKET).key(key).send().await.map_err(|e| fail("delete", &e))?;
        }
        Write::Multipart(data) => {
            let upload = s3
                .create_multipart_upload()
                .bucket(BUCKET)
                .key(key)
                .send()
                .await
                .map_err(|e| fail("create upload", &e))?;
            let id = upload.upload_id().expect("upload id").to_string();
            let mut parts = Vec::new();
            for (i, chunk) in data.chunks(PART_SIZE).enumerate() {
                let number = i as i32 + 1;
                let out = s3
                    .upload_part()
                    .bucket(BUCKET)
                    .key(key)
                    .upload_id(&id)
                    .part_number(number)
                    .body(ByteStream::from(data.slice_ref(chunk)))
                    .send()
                    .await
                    .map_err(|e| fail("upload part", &e))?;
                parts.push(CompletedPart::builder().part_number(number).e_tag(out.e_tag().unwrap_or_default()).build());
            }
            s3.complete_multipart_upload()
                .bucket(BUCKET)
                .key(key)
                .upload_id(&id)
                .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
                .send()
                .await
                .map_err(|e| fail("complete upload", &e))?;
        }
    }
    Ok(())
}

/// One writer: overwrites its own keys (so writes to a key are ordered) until the first error,
/// which is normally the kill.
async fn writer(shared: Arc<Shared>, s3: aws_sdk_s3::Client, keys: Vec<String>, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    while !shared.killed.load(Ordering::SeqCst) {
        let key = &keys[rng.random_range(0..keys.len())];
        let roll = rng.random_range(0..100);
        let write = if roll < 45 {
            Write::Put(shared.content(rng.random_range(0..=30 * KIB)))
        } else if roll < 80 {
            Write::Put(shared.content(rng.random_range(100 * KIB..=2048 * KIB)))
        } else if roll < 90 {
            Write::Multipart(shared.content(PART_SIZE + rng.random_range(1..=256 * KIB)))
        } else {
            Write::Delete
        };
        let content = match &write {
            Write::Put(data) | Write::Multipart(data) => digest(data),
            Write::Delete => None,
        };
        shared.keys.lock().expect("lock").get_mut(key).expect("known key").in_flight.push(content);
        match perform(&s3, key, &write).await {
            Ok(()) => {
                let mut keys = shared.keys.lock().expect("lock");
                let state = keys.get_mut(key).expect("known key");
                state.settled = content;
                state.in_flight.clear();
                shared.acked.fetch_add(1, Ordering::Relaxed);
            }
            Err(err) => {
                shared.failed.fetch_add(1, Ordering::Relaxed);
                if !shared.killed.load(Ordering::SeqCst) {
                    shared.unexpected.lock().expect("lock").push(err);
                }
                return;
            }
        }
    }
}

fn count_files(dir: &Path) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("dir entry").path();
        n += if path.is_dir() { count_files(&path) } else { 1 };
    }
    n
}

/// Reads every key back and checks it against what the writers know, then settles each key on
/// what was read (nothing can change it any more: no write is running).
async fn verify(server: &Server, shared: &Shared, when: &str) {
    let s3 = client(server);
    let expected: Vec<(String, Content, Vec<Content>)> =
        shared.keys.lock().expect("lock").iter().map(|(k, s)| (k.clone(), s.settled, s.in_flight.clone())).collect();
    let mut existing = BTreeMap::new();
    let mut observed_all = Vec::new();
    for (key, settled, in_flight) in expected {
        let observed = match s3.get_object().bucket(BUCKET).key(&key).send().await {
            Ok(out) => {
                let etag = out.e_tag().map(String::from);
                let length = out.content_length();
                let body = out
                    .body
                    .collect()
                    .await
                    .unwrap_or_else(|e| panic!("{when}: reading {key} failed midway: {e:?}"))
                    .into_bytes();
                assert_eq!(length, Some(body.len() as i64), "{when}: {key}: Content-Length vs body");
                let head = s3
                    .head_object()
                    .bucket(BUCKET)
                    .key(&key)
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("{when}: HEAD {key}: {e:?}"));
                assert_eq!(head.content_length(), Some(body.len() as i64), "{when}: {key}: HEAD size vs GET body");
                assert_eq!(head.e_tag().map(String::from), etag, "{when}: {key}: ETag");
                existing.insert(key.clone(), body.len() as i64);
                digest(&body)
            }
            Err(err) if error_code(&err) == "NoSuchKey" => None,
            Err(err) => panic!("{when}: GET {key}: {err:?}"),
        };
        assert!(
            observed == settled || in_flight.contains(&observed),
            "{when}: {key} holds {} but the last acknowledged write is {} and the writes in \
             flight were [{}]",
            describe(&observed),
            describe(&settled),
            in_flight.iter().map(describe).collect::<Vec<_>>().join(", ")
        );
        if observed != settled {
            shared.landed.fetch_add(1, Ordering::Relaxed);
        }
        observed_all.push((key, observed));
    }
    // Nothing can change a key any more (no writer runs): settle each on what was read, so a
    // later crash may not take it back.
    {
        let mut keys = shared.keys.lock().expect("lock");
        for (key, observed) in observed_all {
            let state = keys.get_mut(&key).expect("known key");
            state.settled = observed;
            state.in_flight.clear();
        }
    }

    // The listing shows exactly the keys that exist, with their sizes (pages of 7).
    let mut listed = BTreeMap::new();
    let mut pages = s3.list_objects_v2().bucket(BUCKET).max_keys(7).into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.unwrap_or_else(|e| panic!("{when}: list: {e:?}"));
        for object in page.contents() {
            let key = object.key().expect("key").to_string();
            assert!(listed.insert(key.clone(), object.size().unwrap_or(-1)).is_none(), "{when}: {key} listed twice");
        }
    }
    assert_eq!(listed, existing, "{when}: listing vs the keys that exist");
}

/// Blob files the server may legitimately keep: one per blob object, one per part of each
/// multipart object, and the parts of uploads a crash left open.
async fn referenced_blobs(server: &Server) -> usize {
    let s3 = client(server);
    let mut total = 0;
    let mut pages = s3.list_objects_v2().bucket(BUCKET).into_paginator().send();
    while let Some(page) = pages.next().await {
        for object in page.expect("list").contents() {
            let etag = object.e_tag().unwrap_or_default().trim_matches('"');
            total += match etag.split_once('-') {
                Some((_, parts)) => parts.parse::<usize>().expect("part count in ETag"),
                None if object.size().unwrap_or(0) as u64 > INLINE_MAX => 1,
                None => 0,
            };
        }
    }
    let uploads = s3.list_multipart_uploads().bucket(BUCKET).send().await.expect("list uploads");
    assert_ne!(uploads.is_truncated(), Some(true), "uploads fit one page");
    for upload in uploads.uploads() {
        let parts = s3
            .list_parts()
            .bucket(BUCKET)
            .key(upload.key().expect("key"))
            .upload_id(upload.upload_id().expect("id"))
            .send()
            .await
            .expect("list parts");
        assert_ne!(parts.is_truncated(), Some(true), "parts fit one page");
        total += parts.parts().len();
    }
    total
}

fn assert_no_temp_files(server: &Server, when: &str) {
    let tmp = server.data.join("tmp");
    assert_eq!(count_files(&tmp), 0, "{when}: temporary files left in {}", tmp.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_kill9_during_writes_loses_nothing_acknowledged() {
    let started = Instant::now();
    let seed: u64 = std::env::var("MERIDIAN_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    println!("crash test seed: {seed} (MERIDIAN_CRASH_SEED={seed} replays the kill timings)");
    let mut rng = StdRng::seed_from_u64(seed);

    let mut server = Server::start();
    client(&server).create_bucket().bucket(BUCKET).send().await.expect("create bucket");

    let mut keys = BTreeMap::new();
    let mut owned: Vec<Vec<String>> = Vec::new();
    for task in 0..TASKS {
        let mine: Vec<String> = (0..KEYS_PER_TASK).map(|i| format!("t{task}/key-{i}")).collect();
        for key in &mine {
            keys.insert(key.clone(), KeyState::default());
        }
        owned.push(mine);
    }
    let shared = Arc::new(Shared {
        keys: Mutex::new(keys),
        killed: AtomicBool::new(false),
        unexpected: Mutex::new(Vec::new()),
        acked: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        landed: AtomicU64::new(0),
        seq: AtomicU64::new(seed.wrapping_mul(1_000_000)),
        base: Bytes::from(pattern(8 << 20, seed)),
    });

    for round in 1..=ROUNDS {
        shared.killed.store(false, Ordering::SeqCst);
        let s3 = client(&server);
        let tasks: Vec<_> = owned
            .iter()
            .enumerate()
            .map(|(i, mine)| {
                tokio::spawn(writer(shared.clone(), s3.clone(), mine.clone(), seed ^ ((round as u64) << 32) ^ i as u64))
            })
            .collect();
        let delay = rng.random_range(50..=700);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        shared.killed.store(true, Ordering::SeqCst);
        server.kill9();
        for task in tasks {
            tokio::time::timeout(Duration::from_secs(60), task)
                .await
                .expect("a writer did not notice the kill within 60s")
                .expect("writer task panicked");
        }
        let unexpected = std::mem::take(&mut *shared.unexpected.lock().expect("lock"));
        assert!(unexpected.is_empty(), "round {round}: requests failed while the server was up: {unexpected:#?}");

        server.restart();
        let when = format!("after kill {round} (at {delay} ms)");
        assert_no_temp_files(&server, &when);
        verify(&server, &shared, &when).await;
        server.assert_running();
    }

    // Final restart, long enough after the kill that every file the last run left is older
    // than the new process's orphan cut-off (its start minus 2 s).
    server.kill9();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let blobs_dir = server.data.join("blobs");
    let files_before = count_files(&blobs_dir);
    server.restart();
    assert_no_temp_files(&server, "final restart");
    verify(&server, &shared, "final restart").await;
    let referenced = referenced_blobs(&server).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let files_after = loop {
        let n = count_files(&blobs_dir);
        if n <= referenced || Instant::now() >= deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!(
        "blob files: {files_before} before the final restart, {files_after} after orphan \
         collection, {referenced} referenced by objects and open uploads"
    );
    assert!(
        files_after <= referenced,
        "orphaned blobs were not collected: {files_after} blob files on disk but only \
         {referenced} referenced (there were {files_before} before the restart)"
    );
    server.assert_running();

    let keys = shared.keys.lock().expect("lock");
    let present = keys.values().filter(|s| s.settled.is_some()).count();
    println!(
        "{ROUNDS} kills in {:.1?}: {} writes acknowledged, {} interrupted (of which {} had \
         landed); {present} of {} keys exist at the end",
        started.elapsed(),
        shared.acked.load(Ordering::Relaxed),
        shared.failed.load(Ordering::Relaxed),
        shared.landed.load(Ordering::Relaxed),
        keys.len()
    );
    assert!(shared.acked.load(Ordering::Relaxed) >= ROUNDS as u64, "the writers made progress between kills");
    let distinct: BTreeSet<_> = keys.values().map(|s| s.settled).collect();
    assert!(distinct.len() > 1, "keys hold different contents");
}
