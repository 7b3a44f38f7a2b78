//! Readiness: whether this node can serve requests now. Each check is a real round trip:
//! a strong read of the metadata revision through the metadata store (a linearizable etcd read
//! on a cluster) within a time bound, and a probe file written, fsynced and removed where blob
//! writes go; on a cluster, the measured replication lag of this node's view
//! ([`Engine::view_lag`]) must also be within a bound. [`ReadinessProbe`] caches the answer briefly so a flood of probes costs one check.

use std::sync::Arc;
use std::time::{Duration, Instant};

pub use meridian_blob::DiskSpace;
use serde::Serialize;

use crate::Engine;

/// Bounds of the readiness checks.
#[derive(Clone, Debug)]
pub struct ReadinessLimits {
    /// How long the metadata round trip may take.
    pub metadata_timeout: Duration,
    /// How long the disk probe may take (a hung disk is not a ready one).
    pub disk_timeout: Duration,
    /// The most replication lag ([`Engine::view_lag`]) of a ready node (replicated stores only).
    pub max_view_lag: Duration,
}

/// The default of [`ReadinessLimits::max_view_lag`].
pub const DEFAULT_MAX_VIEW_LAG: Duration = Duration::from_secs(10);

impl Default for ReadinessLimits {
    fn default() -> Self {
        ReadinessLimits {
            metadata_timeout: Duration::from_secs(2),
            disk_timeout: Duration::from_secs(2),
            max_view_lag: DEFAULT_MAX_VIEW_LAG,
        }
    }
}

/// One check's outcome.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    /// Why the check failed; absent when it passed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// How long the check took, in milliseconds.
    pub took_ms: u64,
}

impl Check {
    fn timed(name: &'static str, started: Instant, outcome: Result<(), String>) -> Check {
        let took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        match outcome {
            Ok(()) => Check { name, ok: true, reason: None, took_ms },
            Err(reason) => Check { name, ok: false, reason: Some(reason), took_ms },
        }
    }
}

/// Every check, and whether all passed.
#[derive(Clone, Debug, Serialize)]
pub struct Readiness {
    pub ready: bool,
    pub checks: Vec<Check>,
    /// When the checks ran (ms since the epoch): answers served from the cache share it.
    pub checked_ms: i64,
}

impl Engine {
    /// Runs every readiness check now (concurrently); never waits longer than the limits.
    pub async fn readiness(&self, limits: &ReadinessLimits) -> Readiness {
        let (metadata, disk) = tokio::join!(self.check_metadata(limits.metadata_timeout), self.check_disk(limits));
        let mut checks = vec![metadata, disk];
        if self.replicas().is_some() {
            checks.push(self.check_view_lag(limits.max_view_lag));
        }
        Readiness { ready: checks.iter().all(|c| c.ok), checks, checked_ms: crate::now_ms() }
    }

    async fn check_metadata(&self, timeout: Duration) -> Check {
        let started = Instant::now();
        let outcome = match tokio::time::timeout(timeout, self.meta().current_revision()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("the metadata store failed: {e}")),
            Err(_) => Err(format!("the metadata store did not answer within {} ms", timeout.as_millis())),
        };
        Check::timed("metadata", started, outcome)
    }

    /// The lag as last measured (a measurement waiting for a lagging replica counts the time
    /// waited so far). No measurement yet is no evidence of lag: the metadata check covers a
    /// store that does not answer at all.
    fn check_view_lag(&self, max: Duration) -> Check {
        let started = Instant::now();
        let outcome = match self.view_lag() {
            Some(lag) if lag > max => Err(format!(
                "this node's metadata view lags {} ms behind the newest commit (more than the {} ms allowed)",
                lag.as_millis(),
                max.as_millis()
            )),
            _ => Ok(()),
        };
        Check::timed("replication_lag", started, outcome)
    }

    async fn check_disk(&self, limits: &ReadinessLimits) -> Check {
        let started = Instant::now();
        let outcome = match tokio::time::timeout(limits.disk_timeout, self.blobs().probe_writable()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("the blob store is not writable: {e}")),
            Err(_) => {
                Err(format!("a probe write to the blob store took longer than {} ms", limits.disk_timeout.as_millis()))
            }
        };
        Check::timed("data_dir", started, outcome)
    }
}

impl Engine {
    /// Size and free space of the file system holding this node's object bytes.
    pub async fn disk_space(&self) -> crate::EngineResult<DiskSpace> {
        Ok(self.blobs().disk_space().await?)
    }
}

/// How long a readiness answer is reused.
pub const READINESS_CACHE: Duration = Duration::from_secs(1);

/// Readiness with a short memory: one check at a time, its answer reused for
/// [`READINESS_CACHE`]. Probes arriving while a check runs wait for it and share its answer.
pub struct ReadinessProbe {
    engine: Engine,
    limits: ReadinessLimits,
    last: tokio::sync::Mutex<Option<(Instant, Arc<Readiness>)>>,
}

impl ReadinessProbe {
    pub fn new(engine: Engine, limits: ReadinessLimits) -> Self {
        ReadinessProbe { engine, limits, last: tokio::sync::Mutex::new(None) }
    }

    /// The latest answer if it is fresh, else a new one.
    pub async fn check(&self) -> Arc<Readiness> {
        let mut last = self.last.lock().await;
        if let Some((at, readiness)) = last.as_ref()
            && at.elapsed() < READINESS_CACHE
        {
            return Arc::clone(readiness);
        }
        let readiness = Arc::new(self.engine.readiness(&self.limits).await);
        *last = Some((Instant::now(), Arc::clone(&readiness)));
        readiness
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}
