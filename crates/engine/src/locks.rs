//! Named locks with a TTL, an owner and a fencing token, and the per-key lock behind
//! `put_transaction`.
//!
//! A lock is a record in the metadata store; taking it is a compare-and-swap on that record, so
//! it is global wherever the metadata store is. A lock whose TTL has run out is free: a holder
//! that dies never blocks others for longer than the TTL. Every grant gets a fencing token
//! larger than any earlier token of that lock, and writes that carry an older token are refused.

use std::time::Duration;

use bytes::Bytes;
use meridian_meta::{Compare, Op, Txn};
use serde::{Deserialize, Serialize};

use crate::error::{EngineError, EngineResult};
use crate::record;
use crate::{Engine, keys, now_ms};

/// Longest TTL of a lock.
pub const MAX_LOCK_TTL: Duration = Duration::from_secs(24 * 3600);
/// How often a waiting acquire looks again.
const WAIT_POLL: Duration = Duration::from_millis(20);
/// The lock name prefix used by `put_transaction`.
pub const KEY_LOCK_PREFIX: &str = "key:";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRecord {
    pub owner: String,
    pub token: u64,
    pub expires_at_ms: i64,
}

/// A lock as seen by a caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockInfo {
    pub name: String,
    pub owner: String,
    pub token: u64,
    pub expires_at_ms: i64,
}

/// Lock names: 1–256 characters from `A-Z a-z 0-9 . _ - / :`.
pub fn validate_lock_name(name: &str) -> EngineResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 256
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-/:".contains(&b));
    if !ok {
        return Err(EngineError::InvalidArgument(format!(
            "invalid lock name {name:?}: use 1 to 256 characters from A-Z, a-z, 0-9, '.', '_', '-', '/' and ':'"
        )));
    }
    Ok(())
}

fn validate_owner(owner: &str) -> EngineResult<()> {
    if owner.is_empty() || owner.len() > 256 || owner.chars().any(char::is_control) {
        return Err(EngineError::InvalidArgument(format!(
            "invalid lock owner {owner:?}: use 1 to 256 printable characters"
        )));
    }
    Ok(())
}

fn validate_ttl(ttl: Duration) -> EngineResult<()> {
    if ttl.is_zero() || ttl > MAX_LOCK_TTL {
        return Err(EngineError::InvalidArgument(format!(
            "invalid lock TTL {} ms: it must be more than 0 and at most 24 hours",
            ttl.as_millis()
        )));
    }
    Ok(())
}

impl Engine {
    /// The lock record, its revision (0 when absent) and the store revision of the read.
    pub(crate) async fn read_lock(&self, bucket: &str, name: &str) -> EngineResult<(Option<LockRecord>, u64, u64)> {
        let (mut kvs, read_revision) = self.meta().get_many(&[keys::lock(bucket, name)]).await?;
        let kv = kvs.pop().flatten();
        let revision = kv.as_ref().map_or(0, |kv| kv.mod_revision);
        let record = match kv {
            Some(kv) => Some(record::decode::<LockRecord>(&kv.value)?),
            None => None,
        };
        Ok((record, revision, read_revision))
    }

    /// Takes a lock for `ttl`. When another owner holds it: fails at once with `LockContended`,
    /// or keeps trying for up to `wait`.
    pub async fn acquire_lock(
        &self,
        bucket: &str,
        name: &str,
        owner: &str,
        ttl: Duration,
        wait: Duration,
    ) -> EngineResult<LockInfo> {
        validate_lock_name(name)?;
        validate_owner(owner)?;
        validate_ttl(ttl)?;
        self.bucket(bucket).await?;
        self.take_lock(bucket, name, owner, ttl, wait).await
    }

    /// [`Engine::acquire_lock`] without validating the name (internal locks use object keys).
    pub(crate) async fn take_lock(
        &self,
        bucket: &str,
        name: &str,
        owner: &str,
        ttl: Duration,
        wait: Duration,
    ) -> EngineResult<LockInfo> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let (current, revision, read_revision) = self.read_lock(bucket, name).await?;
            let now = now_ms();
            if let Some(held) = current.as_ref().filter(|l| l.expires_at_ms > now) {
                if tokio::time::Instant::now() >= deadline {
                    return Err(EngineError::LockContended {
                        name: name.to_string(),
                        owner: held.owner.clone(),
                        remaining_ms: (held.expires_at_ms - now).max(0) as u64,
                    });
                }
                tokio::time::sleep(WAIT_POLL.min(deadline - tokio::time::Instant::now())).await;
                continue;
            }
            // Larger than every earlier token: those were at most the revision of their own
            // grant, which this read already sees.
            let token = read_revision + 1;
            let record = LockRecord { owner: owner.to_string(), token, expires_at_ms: now + ttl.as_millis() as i64 };
            let txn = Txn::new()
                .when(Compare::mod_revision_is(keys::lock(bucket, name), revision))
                .then(Op::put(keys::lock(bucket, name), record::encode(&record)))
                .then(Op::put(keys::fence(bucket, name), Bytes::from(token.to_string())));
            if self.meta().txn(txn).await?.succeeded {
                return Ok(LockInfo {
                    name: name.to_string(),
                    owner: record.owner,
                    token,
                    expires_at_ms: record.expires_at_ms,
                });
            }
        }
    }

    /// Extends a held lock by `ttl` from now. Fails with `LockNotHeld` if the token is not the
    /// current holder's or the lock already expired.
    pub async fn renew_lock(&self, bucket: &str, name: &str, token: u64, ttl: Duration) -> EngineResult<LockInfo> {
        validate_lock_name(name)?;
        validate_ttl(ttl)?;
        self.extend_lock(bucket, name, token, ttl).await
    }

    /// [`Engine::renew_lock`] without validating (internal locks have names clients cannot use).
    pub(crate) async fn extend_lock(
        &self,
        bucket: &str,
        name: &str,
        token: u64,
        ttl: Duration,
    ) -> EngineResult<LockInfo> {
        let not_held = || EngineError::LockNotHeld { name: name.to_string(), token };
        loop {
            let (current, revision, _) = self.read_lock(bucket, name).await?;
            let now = now_ms();
            let mut record = current.filter(|l| l.token == token && l.expires_at_ms > now).ok_or_else(not_held)?;
            record.expires_at_ms = now + ttl.as_millis() as i64;
            let txn = Txn::new()
                .when(Compare::mod_revision_is(keys::lock(bucket, name), revision))
                .then(Op::put(keys::lock(bucket, name), record::encode(&record)));
            if self.meta().txn(txn).await?.succeeded {
                return Ok(LockInfo {
                    name: name.to_string(),
                    owner: record.owner,
                    token,
                    expires_at_ms: record.expires_at_ms,
                });
            }
        }
    }

    /// Releases a lock held with `token`. Releasing an expired lock that nobody took since is
    /// fine; releasing someone else's is `LockNotHeld`.
    pub async fn release_lock(&self, bucket: &str, name: &str, token: u64) -> EngineResult<()> {
        validate_lock_name(name)?;
        self.drop_lock(bucket, name, token).await
    }

    pub(crate) async fn drop_lock(&self, bucket: &str, name: &str, token: u64) -> EngineResult<()> {
        loop {
            let (current, revision, _) = self.read_lock(bucket, name).await?;
            if current.is_none_or(|l| l.token != token) {
                return Err(EngineError::LockNotHeld { name: name.to_string(), token });
            }
            let txn = Txn::new()
                .when(Compare::mod_revision_is(keys::lock(bucket, name), revision))
                .then(Op::delete(keys::lock(bucket, name)));
            if self.meta().txn(txn).await?.succeeded {
                return Ok(());
            }
        }
    }

    /// Who holds a lock right now, if anyone.
    pub async fn lock_owner(&self, bucket: &str, name: &str) -> EngineResult<Option<LockInfo>> {
        validate_lock_name(name)?;
        self.bucket(bucket).await?;
        let (current, _, _) = self.read_lock(bucket, name).await?;
        Ok(current.filter(|l| l.expires_at_ms > now_ms()).map(|l| LockInfo {
            name: name.to_string(),
            owner: l.owner,
            token: l.token,
            expires_at_ms: l.expires_at_ms,
        }))
    }
}

impl Engine {
    /// Writes an object while holding a global lock on its key: takes the lock (failing at once
    /// with `LockContended` if another writer holds it, or waiting up to `wait`), writes with the
    /// lock's fencing token, and releases the lock. If this writer dies, the lock frees itself
    /// after `lock_ttl`; if the upload outlives the lock and someone else takes it, the write is
    /// refused rather than applied.
    pub async fn put_transaction(
        &self,
        mut req: crate::PutRequest,
        wait: Duration,
        lock_ttl: Duration,
    ) -> EngineResult<crate::PutOutcome> {
        crate::validate_key(&req.key)?;
        validate_ttl(lock_ttl)?;
        self.bucket_for_write(&req.bucket).await?;
        let bucket = req.bucket.clone();
        let name = format!("{KEY_LOCK_PREFIX}{}", req.key);
        let owner = format!("put-transaction/{}", hex::encode(rand::random::<[u8; 8]>()));
        let lock = self.take_lock(&bucket, &name, &owner, lock_ttl, wait).await?;
        req.conditions.fence = Some(crate::conditions::Fence { lock: name.clone(), token: lock.token });
        let result = self.put_object(req).await;
        if let Err(err) = self.drop_lock(&bucket, &name, lock.token).await {
            // It expires on its own.
            tracing::debug!(error = %err, lock = %name, "could not release a put_transaction lock");
        }
        result
    }
}
