//! `--compare-etcd`: the bench's workloads against a plain etcd, through Meridian's own etcd
//! client (`meridian-meta-etcd`: gRPC over one HTTP/2 connection, linearizable reads — etcd's
//! defaults, as its Go client). `start` runs a single-member etcd for the run on free loopback
//! ports with a data directory of its own, with etcd's default fsync policy (every commit is
//! fsynced, as Meridian's are), and removes it afterwards.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use meridian_meta::{Compare, MetaStore, Op, RangeRequest, Txn};
use meridian_meta_etcd::{EtcdOptions, EtcdStore};

use super::{BenchArgs, Target};

/// Keys of the bench live under this namespace in etcd.
const NAMESPACE: &[u8] = b"/meridian-kv-bench/";
/// etcd's default `--max-txn-ops`.
const MAX_TXN_OPS: usize = 128;

/// An etcd the bench drives, and the process it started, if any.
pub struct Etcd {
    store: EtcdStore,
    endpoints: String,
    started: Option<Started>,
}

/// An etcd process this run started: killed and its data removed when dropped.
struct Started {
    child: Child,
    dir: PathBuf,
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

/// Runs `binary` as a one-member cluster with its data under `base`.
fn start(binary: &str, base: &Path) -> Result<(Started, String), String> {
    let dir = base.join(format!("meridian-kv-bench-etcd-{}-{:08x}", std::process::id(), super::rand_u32()));
    meridian_common::private_files::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let (client, peer) = (free_port()?, free_port()?);
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let child = Command::new(binary)
        .arg("--name=bench")
        .arg(format!("--data-dir={}", dir.join("data").display()))
        .arg(format!("--listen-client-urls={client_url}"))
        .arg(format!("--advertise-client-urls={client_url}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .arg(format!("--initial-cluster=bench={peer_url}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run {binary:?} (Debian package etcd-server): {e}"))?;
    Ok((Started { child, dir }, client_url))
}

impl Etcd {
    /// `spec`: `start`, or client URLs separated by commas.
    pub async fn open(spec: &str, args: &BenchArgs) -> Result<Etcd, String> {
        let (started, endpoints) = if spec == "start" {
            let base = args.etcd_data_dir.clone().unwrap_or_else(std::env::temp_dir);
            let (started, url) = start(&args.etcd_binary, &base)?;
            (Some(started), url)
        } else {
            (None, spec.to_string())
        };
        let options = EtcdOptions::new(endpoints.split(',')).namespace(Bytes::from_static(NAMESPACE));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let attempt = match EtcdStore::connect(options.clone()).await {
                Ok(store) => store.current_revision().await.map(|_| store).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match attempt {
                Ok(store) => return Ok(Etcd { store, endpoints, started }),
                Err(e) if Instant::now() > deadline => return Err(format!("etcd at {endpoints} did not answer: {e}")),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }

    /// The etcd process, when this run started it (for its CPU time).
    pub fn pid(&self) -> Option<u32> {
        self.started.as_ref().map(|s| s.child.id())
    }

    pub fn target(&self) -> &EtcdStore {
        &self.store
    }
}

fn kind(e: meridian_meta::MetaError) -> String {
    format!("etcd: {e}")
}

impl Target for EtcdStore {
    async fn put(&self, key: &str, value: Bytes) -> Result<u64, String> {
        let txn = Txn::new().then(Op::put(key.to_string(), value));
        self.txn(txn).await.map(|r| r.revision).map_err(kind)
    }

    async fn get(&self, key: &str) -> Result<bool, String> {
        MetaStore::get(self, key.as_bytes()).await.map(|kv| kv.is_some()).map_err(kind)
    }

    async fn cas(&self, key: &str, value: Bytes, revision: u64) -> Result<Result<u64, u64>, String> {
        let txn = Txn::new()
            .when(Compare::mod_revision_is(key.to_string(), revision))
            .then(Op::put(key.to_string(), value))
            .or_read(key.to_string());
        let r = self.txn(txn).await.map_err(kind)?;
        if r.succeeded {
            return Ok(Ok(r.revision));
        }
        Ok(Err(r.failure_reads.first().cloned().flatten().map_or(0, |kv| kv.mod_revision)))
    }

    async fn put_all(&self, keys: Vec<String>, value: Bytes) -> Result<(), String> {
        for chunk in keys.chunks(MAX_TXN_OPS) {
            let mut txn = Txn::new();
            for key in chunk {
                txn = txn.then(Op::put(key.clone(), value.clone()));
            }
            self.txn(txn).await.map_err(kind)?;
        }
        Ok(())
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<(), String> {
        let found = self.range(RangeRequest::prefix(prefix.to_string())).await.map_err(kind)?;
        for chunk in found.kvs.chunks(MAX_TXN_OPS) {
            let mut txn = Txn::new();
            for kv in chunk {
                txn = txn.then(Op::Delete { key: kv.key.clone() });
            }
            self.txn(txn).await.map_err(kind)?;
        }
        Ok(())
    }

    async fn revision(&self) -> Result<u64, String> {
        self.current_revision().await.map_err(kind)
    }

    async fn watch(&self, prefix: &str, since: u64) -> Result<BoxStream<'static, Result<u64, String>>, String> {
        let events = MetaStore::watch(self, RangeRequest::prefix(prefix.to_string()), since).await.map_err(kind)?;
        Ok(events.map(|e| e.map(|e| e.kv.mod_revision).map_err(kind)).boxed())
    }
}
