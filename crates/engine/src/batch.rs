//! Atomic batches: puts and deletes of many keys in one transaction, all or nothing, each with
//! an optional condition on the key's current revision.

use std::collections::HashSet;

use bytes::Bytes;
use meridian_meta::{Compare, Revision, Txn};

use crate::error::{EngineError, EngineResult};
use crate::ingest::{IngestLimits, Integrity, body_from_bytes};
use crate::notify::{self, EventKind};
use crate::object::{Current, object_change};
use crate::record::{ObjectHeaders, ObjectRecord};
use crate::ttl::expires_after;
use crate::{Engine, keys, now_ms, validate_key};

/// Most operations in one batch.
pub const MAX_BATCH_OPS: usize = 1000;

pub use meridian_kv_types::BatchOp;

/// A put prepared before the transaction: its record and inline bytes.
struct Prepared {
    record: ObjectRecord,
    inline: Option<Bytes>,
}

impl Engine {
    /// Applies every op or none. Returns the batch's revision.
    pub async fn batch(&self, bucket: &str, ops: Vec<BatchOp>) -> EngineResult<Revision> {
        if ops.is_empty() || ops.len() > MAX_BATCH_OPS {
            return Err(EngineError::InvalidArgument(format!(
                "a batch holds 1 to {MAX_BATCH_OPS} operations, got {}",
                ops.len()
            )));
        }
        let mut seen = HashSet::new();
        for op in &ops {
            validate_key(op.key())?;
            if !seen.insert(op.key()) {
                return Err(EngineError::InvalidArgument(format!("key {:?} appears twice in the batch", op.key())));
            }
        }
        let (record, _) = self.writable_bucket(bucket).await?;
        if ops.iter().any(|op| matches!(op, BatchOp::Put { .. })) {
            // Values are object bytes: they stay in a pinned bucket's region.
            self.check_residency(bucket, &record)?;
        }
        let prepared = self.prepare_puts(bucket, &ops, &record).await?;
        let result = self.commit_batch(bucket, &record, &ops, &prepared).await;
        if result.is_err() {
            prepared.iter().flatten().for_each(|p| self.discard_data(&p.record.data));
        }
        result
    }

    async fn prepare_puts(
        &self,
        bucket: &str,
        ops: &[BatchOp],
        record: &crate::record::BucketRecord,
    ) -> EngineResult<Vec<Option<Prepared>>> {
        let rules = &record.lifecycle;
        let mut out = Vec::with_capacity(ops.len());
        for op in ops {
            let BatchOp::Put { key, value, ttl, .. } = op else {
                out.push(None);
                continue;
            };
            let (encryption, sealing) = self.new_sealing(self.protection_for(None, record).as_ref())?;
            let limits = IngestLimits {
                inline_max: self.config().inline_max,
                max_size: self.config().max_object_size,
                blob_id: None,
                sealing: sealing.clone(),
            };
            let body = body_from_bytes(value.clone());
            let ingested = self.ingest_placed(bucket, &record.location, body, Integrity::default(), limits).await;
            let (ingested, holders) = match ingested {
                Ok(i) => i,
                Err(e) => {
                    out.iter().flatten().for_each(|p: &Prepared| self.discard_data(&p.record.data));
                    return Err(e);
                }
            };
            let expires_at_ms = crate::lifecycle::earliest(
                ttl.map(expires_after),
                crate::lifecycle::object_expiry(rules, key, &crate::tagging::Tags::new(), now_ms()),
            );
            let (record, inline) = self.new_record(
                ingested,
                holders,
                ObjectHeaders::default(),
                expires_at_ms,
                crate::object::Sealed { encryption, key: sealing },
            );
            out.push(Some(Prepared { record, inline }));
        }
        Ok(out)
    }

    async fn commit_batch(
        &self,
        bucket: &str,
        bucket_record: &crate::record::BucketRecord,
        ops: &[BatchOp],
        prepared: &[Option<Prepared>],
    ) -> EngineResult<Revision> {
        if bucket_record.versioning.is_some() {
            return self.commit_versioned_batch(bucket, ops, prepared).await;
        }
        for _ in 0..64 {
            let bucket_revision = self.bucket_for_write(bucket).await?;
            let currents = self.read_currents(bucket, ops).await?;
            let now = now_ms();
            let mut txn = Txn::new().when(Compare::mod_revision_is(keys::bucket(bucket), bucket_revision));
            let mut freed = Vec::new();
            for ((op, current), prepared) in ops.iter().zip(&currents).zip(prepared) {
                check_condition(op, current.as_ref(), now)?;
                let new = prepared.as_ref().map(|p| (&p.record, p.inline.as_ref()));
                let change = object_change(bucket, op.key(), current.as_ref(), new);
                txn.compares.extend(change.compares);
                txn.ops.extend(change.ops);
                txn.ops.extend(crate::shadow::tombstone_of_delete(bucket, bucket_record, op.key(), new.is_none()));
                let event = match (new, current) {
                    (Some((record, _)), _) => Some((EventKind::Put, Some(record))),
                    (None, Some(_)) => Some((EventKind::Delete, None)),
                    (None, None) => None,
                };
                if let Some((kind, record)) = event {
                    txn.ops.extend(notify::event_op(bucket, bucket_record, op.key(), kind, record, None));
                }
                freed.extend(change.freed);
            }
            let resp = self.meta().txn(txn).await?;
            if resp.succeeded {
                self.delete_blobs_later(freed);
                return Ok(resp.revision);
            }
        }
        Err(EngineError::Contended)
    }

    /// A batch in a versioned bucket: each put a new version of its key, each delete a delete
    /// marker, every key's head compared and rewritten, all in one transaction.
    async fn commit_versioned_batch(
        &self,
        bucket: &str,
        ops: &[BatchOp],
        prepared: &[Option<Prepared>],
    ) -> EngineResult<Revision> {
        for _ in 0..64 {
            let (bucket_record, bucket_revision) = self.writable_bucket(bucket).await?;
            let mut txn = Txn::new().when(Compare::mod_revision_is(keys::bucket(bucket), bucket_revision));
            let mut freed = Vec::new();
            let now = now_ms();
            for (op, prepared) in ops.iter().zip(prepared) {
                let state = self.read_key_state(bucket, op.key()).await?;
                check_condition(op, state.current.as_ref(), now)?;
                let new = prepared.as_ref().map(|p| (&p.record, p.inline.as_ref()));
                let (stamp, frees) = self.plan_version(bucket, op.key(), &bucket_record, state, new, &mut txn).await?;
                freed.extend(frees);
                let kind = if new.is_some() { EventKind::Put } else { EventKind::DeleteMarkerCreated };
                let record = new.map(|(record, _)| record);
                txn.ops.extend(notify::event_op(bucket, &bucket_record, op.key(), kind, record, Some(stamp.id())));
            }
            let resp = self.meta().txn(txn).await?;
            if resp.succeeded {
                self.delete_blobs_later(freed);
                return Ok(resp.revision);
            }
        }
        Err(EngineError::Contended)
    }

    async fn read_currents(&self, bucket: &str, ops: &[BatchOp]) -> EngineResult<Vec<Option<Current>>> {
        let mut keys_to_read = Vec::with_capacity(ops.len() * 2);
        for op in ops {
            keys_to_read.push(keys::object(bucket, op.key()));
            keys_to_read.push(keys::inline(bucket, op.key()));
        }
        let (kvs, _) = self.meta().get_many(&keys_to_read).await?;
        let mut out = Vec::with_capacity(ops.len());
        let mut it = kvs.into_iter();
        while let (Some(record), Some(inline)) = (it.next(), it.next()) {
            out.push(crate::object::decode_current(record, inline)?);
        }
        Ok(out)
    }
}

/// An op's `if_revision` against the key's current object (expired ones count as absent).
fn check_condition(op: &BatchOp, current: Option<&Current>, now: i64) -> EngineResult<()> {
    let Some(want) = op.condition() else { return Ok(()) };
    let have = current.filter(|c| !c.record.is_expired(now)).map_or(0, |c| c.revision);
    if have != want {
        return Err(EngineError::BatchRevisionMismatch { key: op.key().to_string(), expected: want, current: have });
    }
    Ok(())
}
