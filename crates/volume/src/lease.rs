//! The single-writer lease: `lease.json`, changed only by conditional PUTs (If-None-Match: * to
//! create, If-Match to take over, renew or release). Each acquisition bumps the fencing epoch,
//! which the writer stamps into every log object it writes.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::error::{Result, StoreError, VolumeError};
use crate::format::{Layout, Lease};
use crate::store::{ObjectStore, PutCondition};

pub fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".into())
}

/// A lease whose holder ran on this host with a pid that no longer exists was left by a crash
/// (e.g. `kill -9`): taking it over at once is safe and saves waiting out the TTL.
fn holder_is_dead_local_process(l: &Lease) -> bool {
    l.host == hostname() && l.pid != std::process::id() && !std::path::Path::new(&format!("/proc/{}", l.pid)).exists()
}

/// A held lease.
pub struct LeaseHandle {
    store: Arc<dyn ObjectStore>,
    key: String,
    epoch: u64,
    state: Mutex<(Lease, String)>,
}

impl LeaseHandle {
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Takes the lease, refusing if another live writer holds it (unless `force`).
    pub async fn acquire(
        store: Arc<dyn ObjectStore>,
        layout: &Layout,
        holder: &str,
        ttl: Duration,
        force: bool,
        min_epoch: u64,
    ) -> Result<Self> {
        let key = layout.lease();
        for _ in 0..16 {
            let (current, cond) = match store.get(&key).await {
                Ok(f) => {
                    let l: Lease = serde_json::from_slice(&f.data)
                        .map_err(|e| VolumeError::Corrupt { what: key.clone(), detail: e.to_string() })?;
                    (Some(l), PutCondition::IfMatch(f.etag))
                }
                Err(StoreError::NotFound(_)) => (None, PutCondition::IfAbsent),
                Err(e) => return Err(e.into()),
            };
            if let Some(l) = &current {
                let expires = l.renewed_unix + l.ttl_secs;
                let live = !l.released && now_unix() < expires;
                let dead = holder_is_dead_local_process(l);
                if live && !force && !dead {
                    return Err(VolumeError::LeaseHeld {
                        holder: l.holder.clone(),
                        epoch: l.epoch,
                        remaining_secs: expires.saturating_sub(now_unix()),
                    });
                }
                if live && dead {
                    info!(holder = %l.holder, epoch = l.epoch, "previous writer is no longer running; taking over");
                } else if live {
                    warn!(holder = %l.holder, epoch = l.epoch, "taking over a lease that has not expired");
                }
            }
            let epoch = current.as_ref().map_or(1, |l| l.epoch + 1).max(min_epoch);
            let lease = Lease {
                epoch,
                holder: holder.to_string(),
                host: hostname(),
                pid: std::process::id(),
                renewed_unix: now_unix(),
                ttl_secs: ttl.as_secs().max(1),
                released: false,
            };
            match store.put(&key, encode(&lease)?, cond).await {
                Ok(etag) => {
                    info!(epoch, holder, "writer lease acquired");
                    return Ok(Self { store, key, epoch, state: Mutex::new((lease, etag)) });
                }
                // Someone changed it between our read and write: look again.
                Err(StoreError::PreconditionFailed(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(VolumeError::Invalid("the lease object kept changing while acquiring it; another writer is racing".into()))
    }

    /// Renews the lease. `Err(Fenced)` means someone else took it: stop writing.
    pub async fn renew(&self) -> Result<()> {
        let mut st = self.state.lock().await;
        let mut next = st.0.clone();
        next.renewed_unix = now_unix();
        match self.store.put(&self.key, encode(&next)?, PutCondition::IfMatch(st.1.clone())).await {
            Ok(etag) => {
                *st = (next, etag);
                Ok(())
            }
            Err(StoreError::PreconditionFailed(_)) => Err(VolumeError::Fenced(st.0.epoch)),
            Err(e) => Err(e.into()),
        }
    }

    /// Marks the lease released so the next writer starts at once.
    pub async fn release(&self) -> Result<()> {
        let mut st = self.state.lock().await;
        let mut next = st.0.clone();
        next.released = true;
        let etag = self.store.put(&self.key, encode(&next)?, PutCondition::IfMatch(st.1.clone())).await?;
        *st = (next, etag);
        info!(epoch = st.0.epoch, "writer lease released");
        Ok(())
    }

    pub async fn ttl(&self) -> Duration {
        Duration::from_secs(self.state.lock().await.0.ttl_secs)
    }
}

fn encode(l: &Lease) -> Result<Bytes> {
    serde_json::to_vec_pretty(l).map(Bytes::from).map_err(|e| VolumeError::Invalid(e.to_string()))
}

/// Reads the current lease, if any (for `inspect`).
pub async fn read_lease(store: &dyn ObjectStore, layout: &Layout) -> Result<Option<Lease>> {
    match store.get(&layout.lease()).await {
        Ok(f) => Ok(Some(
            serde_json::from_slice(&f.data)
                .map_err(|e| VolumeError::Corrupt { what: layout.lease(), detail: e.to_string() })?,
        )),
        Err(StoreError::NotFound(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}
