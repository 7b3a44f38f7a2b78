//! Unconditional writes of one key from this node, ordered here instead of racing.
//!
//! Writers of one key that compare-and-swap against each other waste a commit each time one
//! wins, and under load some lose every attempt. Instead, the unconditional writes of a key
//! wait in its queue; one task per busy key takes everything waiting and commits it as a chain
//! of transactions sent in order (each compares the key with the record of the link before
//! it), so the embedded store commits the whole chain in one group commit and every write
//! gets its own revision. Only a writer elsewhere (another node, or a conditional write) can
//! break the chain; the broken links are retried, in order, after a strong read.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use bytes::Bytes;
use meridian_meta::{Compare, CompareOp, CompareTarget, Op, Revision, Txn};
use tokio::sync::oneshot;

use crate::object::{Current, object_change};
use crate::record::{self, ObjectRecord};
use crate::{Consistency, Engine, keys};

/// The most writes one chain commits; the rest wait for the next.
const MAX_CHAIN: usize = 64;
/// How many rounds a write may stay in the queue while writers elsewhere keep breaking chains.
const MAX_ROUNDS: usize = 64;

/// The queues of the keys being written now, by object key. A key is in the map exactly while
/// a drainer runs for it (its queue may be empty while a chain is being committed).
#[derive(Default)]
pub(crate) struct WriteQueues {
    busy: Mutex<HashMap<Bytes, VecDeque<Queued>>>,
}

impl WriteQueues {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Bytes, VecDeque<Queued>>> {
        self.busy.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One unconditional write waiting in a key's queue.
struct Queued {
    record: ObjectRecord,
    inline: Option<Bytes>,
    /// The bucket's revision as the writer read it.
    bucket_revision: Option<Revision>,
    /// More writes of the same transaction (its event notification).
    ops: Vec<Op>,
    /// Chains it was in that writers elsewhere broke.
    broken: usize,
    reply: oneshot::Sender<Queueing>,
}

/// How a queued write ended.
pub(crate) enum Queueing {
    Committed(Revision),
    /// The chain could not be attempted (a read or the store failed): the writer commits
    /// alone, through the ordinary path, which reports its own error.
    Alone,
    /// Writers elsewhere broke every chain it was in.
    Contended,
}

impl Engine {
    /// Queues an unconditional write of `bucket/key` behind this node's other writes of the key
    /// and waits for its chain to commit.
    pub(crate) async fn commit_queued(
        &self,
        bucket: &str,
        key: &str,
        record: &ObjectRecord,
        inline: Option<Bytes>,
        bucket_revision: Option<Revision>,
        ops: &[Op],
    ) -> Queueing {
        let (reply, outcome) = oneshot::channel();
        let queued = Queued { record: record.clone(), inline, bucket_revision, ops: ops.to_vec(), broken: 0, reply };
        let object_key = keys::object(bucket, key);
        let start_drainer = {
            let mut busy = self.write_queues().lock();
            match busy.get_mut(&object_key) {
                Some(queue) => {
                    queue.push_back(queued);
                    false
                }
                None => {
                    busy.insert(object_key, VecDeque::from([queued]));
                    true
                }
            }
        };
        if start_drainer {
            // A task of its own: the queue must go on when this request is dropped.
            let engine = self.clone();
            let (bucket, key) = (bucket.to_string(), key.to_string());
            tokio::spawn(async move { engine.drain_queue(&bucket, &key).await });
        }
        // A drainer that died leaves the writer to commit alone.
        outcome.await.unwrap_or(Queueing::Alone)
    }

    /// Commits the key's queue chain by chain until it is empty, then forgets the key.
    async fn drain_queue(&self, bucket: &str, key: &str) {
        let object_key = keys::object(bucket, key);
        let mut consistency = Consistency::Local;
        loop {
            let chain: Vec<Queued> = {
                let mut busy = self.write_queues().lock();
                let Some(queue) = busy.get_mut(&object_key) else { return };
                // Writers that gave up (request dropped) need no commit; their bytes go.
                let (abandoned, waiting): (VecDeque<Queued>, VecDeque<Queued>) =
                    std::mem::take(queue).into_iter().partition(|q| q.reply.is_closed());
                *queue = waiting;
                self.delete_blobs_now(abandoned.iter().flat_map(|q| q.record.data.blobs()).collect());
                if queue.is_empty() {
                    busy.remove(&object_key);
                    return;
                }
                let n = queue.len().min(MAX_CHAIN);
                queue.drain(..n).collect()
            };
            let broken = self.commit_chain(bucket, key, chain, consistency).await;
            // After a broken chain, read strongly: the local view missed a write.
            consistency = if broken.is_empty() { Consistency::Local } else { Consistency::Strong };
            let mut busy = self.write_queues().lock();
            let Some(queue) = busy.get_mut(&object_key) else { return };
            for mut queued in broken.into_iter().rev() {
                queued.broken += 1;
                if queued.broken >= MAX_ROUNDS {
                    let _ = queued.reply.send(Queueing::Contended);
                } else {
                    // Back to the front, in their order.
                    queue.push_front(queued);
                }
            }
        }
    }

    /// Sends `chain` as transactions in order and answers every write that committed; returns
    /// the ones whose link did not hold. When the chain cannot be tried at all, every write is
    /// answered [`Queueing::Alone`].
    async fn commit_chain(&self, bucket: &str, key: &str, chain: Vec<Queued>, consistency: Consistency) -> Vec<Queued> {
        let seen_bucket = match consistency {
            Consistency::Local => chain.first().and_then(|q| q.bucket_revision),
            _ => None,
        };
        let read = futures::try_join!(
            self.bucket_revision_for_write(bucket, seen_bucket),
            self.read_current_with(bucket, key, consistency)
        );
        let Ok((bucket_revision, current)) = read else {
            for queued in chain {
                let _ = queued.reply.send(Queueing::Alone);
            }
            return Vec::new();
        };
        let object_key = keys::object(bucket, key);
        let mut txns = Vec::with_capacity(chain.len());
        let mut freed = Vec::with_capacity(chain.len());
        let mut previous = current;
        for queued in &chain {
            let mut change =
                object_change(bucket, key, previous.as_ref(), Some((&queued.record, queued.inline.as_ref())));
            if let (false, Some(before)) = (txns.is_empty(), &previous) {
                // A later link cannot know the revision the link before it will get: it
                // compares the record that link writes instead.
                change.compares = vec![Compare {
                    key: object_key.clone(),
                    op: CompareOp::Equal,
                    target: CompareTarget::Value(record::encode(&before.record)),
                }];
            }
            let mut txn = Txn::new().when(Compare::mod_revision_is(keys::bucket(bucket), bucket_revision));
            txn.compares.extend(change.compares);
            txn.ops.extend(change.ops);
            txn.ops.extend(queued.ops.iter().cloned());
            txns.push(txn);
            freed.push(change.freed);
            previous = Some(Current { record: queued.record.clone(), revision: 0, inline: queued.inline.clone() });
        }
        let responses = self.meta().txns_in_order(txns).await;
        let mut broken = Vec::new();
        for ((queued, response), freed) in chain.into_iter().zip(responses).zip(freed) {
            match response {
                Ok(r) if r.succeeded => {
                    self.delete_blobs_later(freed);
                    let _ = queued.reply.send(Queueing::Committed(r.revision));
                }
                Ok(_) => broken.push(queued),
                Err(_) => {
                    let _ = queued.reply.send(Queueing::Alone);
                }
            }
        }
        broken
    }
}
