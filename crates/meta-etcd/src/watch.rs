//! Watches that survive the loss of a member.
//!
//! Each [`MetaStore::watch`](meridian_meta::MetaStore::watch) gets its own etcd watch stream,
//! owned by a task that forwards events to the consumer through a bounded channel (a slow
//! consumer slows the stream down; etcd buffers and catches up, nothing is lost). The task
//! remembers the revision after the last event it delivered. When the stream breaks — the
//! member died, the connection reset, the member lost its leader — the task opens a new watch
//! on the next member from that revision and drops anything older, so the consumer sees every
//! change exactly once, in order. It retries with a bounded backoff for as long as the consumer
//! holds the stream, and stops as soon as the consumer drops it.
//!
//! etcd's progress notifications are not used to advance the resume revision: etcd 3.4 before
//! 3.4.25 can send them ahead of undelivered events (etcd issue 15220). The cost is that a watch
//! that saw no event for a long time resumes from its last event, which compaction may have
//! removed; it then ends with [`MetaError::Compacted`] like any watch that fell behind.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use meridian_meta::{EventKind, KeyValue, MetaError, MetaResult, RangeRequest, Revision, WatchEvent, WatchStream};
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::EtcdStore;
use crate::client::{
    Backoff, CallError, Pool, Route, is_compacted, is_future_revision, map_status, to_etcd_revision, to_revision,
};
use crate::namespace::{EtcdRange, Namespace};
use crate::proto::etcdserverpb as pb;
use crate::proto::etcdserverpb::watch_client::WatchClient;
use crate::proto::mvccpb;

/// Events buffered between the etcd stream and a slow consumer.
const BUFFER: usize = 1024;

pub(crate) async fn watch(store: &EtcdStore, range: &RangeRequest, from: Revision) -> MetaResult<WatchStream> {
    let Some(etcd_range) = store.ns.range(range) else {
        // Nothing can ever change in an empty range.
        return Ok(Box::pin(futures::stream::pending()));
    };
    // "From now on" means after the current revision of the cluster (not of a member that may
    // lag), fixed here so that a stream that breaks before its first event resumes correctly.
    let (from, replay) = if from == 0 { (store.revision(true).await? + 1, false) } else { (from, true) };
    let compacted = replay && history_is_compacted(store, from).await?;

    let (tx, mut rx) = mpsc::channel(BUFFER);
    let worker = Worker { pool: Arc::clone(&store.pool), ns: store.ns.clone(), range: etcd_range, next: from, tx };
    tokio::spawn(worker.run());
    let mut stream: WatchStream = Box::pin(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)));

    if compacted {
        // etcd says which revision is the oldest left only on a watch stream: wait for it.
        let oldest = match tokio::time::timeout(store.pool.request_timeout, stream.next()).await {
            Ok(Some(Err(MetaError::Compacted { oldest, .. }))) => oldest,
            Ok(Some(Err(other))) => return Err(other),
            _ => 0,
        };
        return Err(MetaError::Compacted { requested: from, oldest });
    }
    Ok(stream)
}

/// True when etcd no longer has the history at `revision`.
async fn history_is_compacted(store: &EtcdStore, revision: Revision) -> MetaResult<bool> {
    let request = pb::RangeRequest {
        key: store.ns.probe_key(),
        limit: 1,
        keys_only: true,
        revision: to_etcd_revision(revision),
        ..Default::default()
    };
    match store.etcd_range(request, Route::Voter).await {
        Ok(_) => Ok(false),
        Err(CallError::Status(status)) if is_compacted(&status) => Ok(true),
        // A revision that does not exist yet: the watch waits for it.
        Err(CallError::Status(status)) if is_future_revision(&status) => Ok(false),
        Err(err) => Err(err.into()),
    }
}

struct Worker {
    pool: Arc<Pool>,
    ns: Namespace,
    range: EtcdRange,
    /// The revision of the next event to deliver: everything before it has been delivered.
    next: Revision,
    tx: mpsc::Sender<MetaResult<WatchEvent>>,
}

/// Why a watch stream ended.
enum Ended {
    /// The consumer dropped its end.
    ConsumerGone,
    /// A definite error: delivered to the consumer, and the watch ends.
    Fatal(MetaError),
    /// The stream broke; open another one. `established`: it had been created first.
    Broken { error: String, established: bool },
}

impl Worker {
    async fn run(mut self) {
        let mut backoff = Backoff::new();
        let closed = self.tx.clone();
        loop {
            let (index, channel, url) = self.pool.current(Route::Voter);
            let url = url.to_string();
            let ended = tokio::select! {
                ended = self.session(channel) => ended,
                () = closed.closed() => return,
            };
            match ended {
                Ended::ConsumerGone => return,
                Ended::Fatal(err) => {
                    let _ = self.tx.send(Err(err)).await;
                    return;
                }
                Ended::Broken { error, established } => {
                    if established {
                        tracing::warn!(endpoint = %url, next = self.next, %error, "etcd watch broke; resuming on another member");
                        backoff.reset();
                    } else {
                        tracing::debug!(endpoint = %url, next = self.next, %error, "could not open an etcd watch; trying the next member");
                    }
                    self.pool.advance(Route::Voter, index);
                    tokio::select! {
                        () = tokio::time::sleep(backoff.next()) => {}
                        () = closed.closed() => return,
                    }
                }
            }
        }
    }

    /// One etcd watch stream, from `self.next` until it ends.
    async fn session(&mut self, channel: Channel) -> Ended {
        let create = pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(pb::WatchCreateRequest {
                key: self.range.key.clone(),
                range_end: self.range.range_end.clone(),
                start_revision: to_etcd_revision(self.next),
                ..Default::default()
            })),
        };
        // The request side stays open (and silent) for as long as the watch lives.
        let requests = futures::stream::once(std::future::ready(create)).chain(futures::stream::pending());
        let mut request = tonic::Request::new(requests);
        self.pool.mark(&mut request);
        let mut client = WatchClient::new(channel).max_decoding_message_size(self.pool.max_response_bytes());

        let opened = tokio::time::timeout(self.pool.request_timeout, client.watch(request)).await;
        let mut responses = match opened {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) => return self.failed(&status, false),
            Err(_) => {
                return Ended::Broken {
                    error: format!("no answer within {:?}", self.pool.request_timeout),
                    established: false,
                };
            }
        };
        let mut established = false;
        loop {
            let message = match responses.message().await {
                Ok(Some(message)) => message,
                Ok(None) => {
                    return Ended::Broken { error: "the member ended the watch stream".into(), established };
                }
                Err(status) => return self.failed(&status, established),
            };
            if message.compact_revision > 0 {
                return Ended::Fatal(MetaError::Compacted {
                    requested: self.next,
                    oldest: to_revision(message.compact_revision),
                });
            }
            if message.canceled {
                return Ended::Broken {
                    error: format!("etcd cancelled the watch: {}", message.cancel_reason),
                    established,
                };
            }
            if message.created {
                established = true;
            }
            if let Some(ended) = self.deliver(message.events).await {
                return ended;
            }
        }
    }

    fn failed(&self, status: &tonic::Status, established: bool) -> Ended {
        // Statuses that retrying cannot fix end the watch; everything else (connection
        // trouble, no leader, a learner that does not serve watches) moves to another member.
        match status.code() {
            tonic::Code::InvalidArgument
            | tonic::Code::PermissionDenied
            | tonic::Code::Unauthenticated
            | tonic::Code::OutOfRange
            | tonic::Code::FailedPrecondition
            | tonic::Code::Unimplemented => Ended::Fatal(map_status(status)),
            _ => Ended::Broken { error: format!("{:?}: {}", status.code(), status.message()), established },
        }
    }

    /// Forwards the events not delivered yet; `Some` when the watch must end.
    async fn deliver(&mut self, events: Vec<mvccpb::Event>) -> Option<Ended> {
        let next = self.next;
        let mut last = 0;
        for event in events {
            let event = match self.convert(event) {
                Ok(event) => event,
                Err(err) => return Some(Ended::Fatal(err)),
            };
            let revision = event.kv.mod_revision;
            if revision < next {
                // Already delivered before the stream was re-created.
                continue;
            }
            if self.tx.send(Ok(event)).await.is_err() {
                return Some(Ended::ConsumerGone);
            }
            last = revision;
        }
        // etcd never splits one revision's events across responses (unless asked to fragment,
        // which this client does not), so everything up to `last` is delivered.
        if last >= next {
            self.next = last + 1;
        }
        None
    }

    fn convert(&self, event: mvccpb::Event) -> MetaResult<WatchEvent> {
        let kv = event.kv.ok_or_else(|| MetaError::Storage("etcd sent a watch event without a key".into()))?;
        let kind = match mvccpb::event::EventType::try_from(event.r#type) {
            Ok(mvccpb::event::EventType::Put) => EventKind::Put,
            Ok(mvccpb::event::EventType::Delete) => EventKind::Delete,
            Err(_) => {
                return Err(MetaError::Storage(format!("etcd sent an unknown watch event type {}", event.r#type)));
            }
        };
        let key = self.ns.strip(kv.key)?;
        let kv = match kind {
            EventKind::Put => KeyValue {
                key,
                value: kv.value,
                create_revision: to_revision(kv.create_revision),
                mod_revision: to_revision(kv.mod_revision),
                version: to_revision(kv.version),
            },
            // etcd's delete event carries only the key and the delete's revision.
            EventKind::Delete => KeyValue {
                key,
                value: Bytes::new(),
                create_revision: 0,
                mod_revision: to_revision(kv.mod_revision),
                version: 0,
            },
        };
        Ok(WatchEvent { kind, kv })
    }
}
