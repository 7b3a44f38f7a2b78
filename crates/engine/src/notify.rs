//! S3 event notifications (PutBucketNotificationConfiguration) to webhook targets the operator
//! names (`--notify-webhook NAME=URL`), as MinIO does.
//!
//! A bucket's rules live in its record. An object change that matches a rule writes a
//! [`StoredEvent`] under `d/<bucket>/<target>/` in the same transaction as the change, so every
//! acknowledged change has its event and no uncommitted one does; the event key's mod revision
//! is the change's commit revision. The delivery worker ([`Engine::spawn_notifier`]) posts each
//! (bucket, target) stream in commit-revision order, deletes events only after a 2xx, and
//! backs off while a target fails. In a cluster one node at a time delivers a stream: it holds
//! the bucket's lock `#notify/<target>` ([`crate::locks`]; `#` keeps clients' locks apart).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use meridian_meta::{KeyValue, Op, RangeRequest, Txn};
use serde::{Deserialize, Serialize};

use crate::error::{EngineError, EngineResult};
use crate::record::{self, BucketRecord, ObjectRecord};
use crate::{Engine, keys, now_ms};

/// Most rules (queue configurations) per bucket.
pub const MAX_RULES: usize = 100;
/// Most events one POST carries.
pub const MAX_EVENTS_PER_POST: usize = 100;
/// How many of a stream's oldest events one delivery pass reads and orders by revision.
pub const DELIVERY_WINDOW: usize = 10_000;
/// Longest wait for a target's answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// First retry delay after a failed POST; doubles on each failure up to [`BACKOFF_CAP`].
pub const BACKOFF_START: Duration = Duration::from_millis(250);
pub const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// How often the worker looks for queued events.
const POLL: Duration = Duration::from_millis(200);
/// How long a node's claim on a stream lasts without renewal (renewed at half).
const LEASE_TTL: Duration = Duration::from_secs(30);
/// Most streams one pass visits (the next pass starts again from the first).
const MAX_STREAMS_PER_PASS: usize = 10_000;

/// What an S3 `QueueArn` looks like for a target named `name`.
pub fn target_arn(name: &str) -> String {
    format!("arn:meridian:sqs::{name}:webhook")
}

/// The target name of an ARN made by [`target_arn`].
pub fn target_of_arn(arn: &str) -> Option<&str> {
    arn.strip_prefix("arn:meridian:sqs::")?.strip_suffix(":webhook")
}

/// Target names: 1–64 characters from `A-Z a-z 0-9 _ -`.
pub fn validate_target_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok { Ok(()) } else { Err(format!("invalid webhook target name {name:?}: use 1 to 64 of A-Z a-z 0-9 _ -")) }
}

/// The event names a rule may list, as S3 spells them.
const EVENT_NAMES: [&str; 11] = [
    "s3:ObjectCreated:*",
    "s3:ObjectCreated:Put",
    "s3:ObjectCreated:Post",
    "s3:ObjectCreated:Copy",
    "s3:ObjectCreated:CompleteMultipartUpload",
    "s3:ObjectRemoved:*",
    "s3:ObjectRemoved:Delete",
    "s3:ObjectRemoved:DeleteMarkerCreated",
    "s3:LifecycleExpiration:*",
    "s3:LifecycleExpiration:Delete",
    "s3:LifecycleExpiration:DeleteMarkerCreated",
];

/// One rule: events of these types on keys with this prefix and suffix go to `target`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The webhook target's name (its ARN is [`target_arn`]).
    pub target: String,
    /// Event names such as `s3:ObjectCreated:*`.
    pub events: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
}

/// A bucket's notification rules.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationConfig {
    pub rules: Vec<NotificationRule>,
}

/// The kinds of object change that make events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    /// A POST object (HTML form) upload.
    Post,
    Copy,
    CompleteMultipartUpload,
    Delete,
    DeleteMarkerCreated,
    /// Removed by a lifecycle rule or a TTL.
    LifecycleDelete,
    /// Hidden by a delete marker of a lifecycle rule or a TTL (versioned buckets).
    LifecycleDeleteMarkerCreated,
}

impl EventKind {
    /// The `eventName` of the event (without `s3:`).
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Put => "ObjectCreated:Put",
            EventKind::Post => "ObjectCreated:Post",
            EventKind::Copy => "ObjectCreated:Copy",
            EventKind::CompleteMultipartUpload => "ObjectCreated:CompleteMultipartUpload",
            EventKind::Delete => "ObjectRemoved:Delete",
            EventKind::DeleteMarkerCreated => "ObjectRemoved:DeleteMarkerCreated",
            EventKind::LifecycleDelete => "LifecycleExpiration:Delete",
            EventKind::LifecycleDeleteMarkerCreated => "LifecycleExpiration:DeleteMarkerCreated",
        }
    }
}

/// Whether rule event name `pattern` (`s3:ObjectCreated:*`, `s3:ObjectRemoved:Delete`...)
/// covers event `name` (`ObjectCreated:Put`).
fn covers(pattern: &str, name: &str) -> bool {
    let pattern = pattern.strip_prefix("s3:").unwrap_or(pattern);
    match pattern.strip_suffix('*') {
        Some(category) => name.starts_with(category),
        None => pattern == name,
    }
}

/// Whether two rule event names can match the same event.
fn events_overlap(a: &str, b: &str) -> bool {
    let (a, b) = (a.strip_prefix("s3:").unwrap_or(a), b.strip_prefix("s3:").unwrap_or(b));
    covers(a, b) || covers(b, a)
}

/// Whether two optional key filters of one kind can both match some key.
fn filters_overlap(a: &Option<String>, b: &Option<String>, related: impl Fn(&str, &str) -> bool) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => related(a, b) || related(b, a),
        _ => true,
    }
}

impl NotificationRule {
    fn matches(&self, kind: EventKind, key: &str) -> bool {
        self.prefix.as_deref().is_none_or(|p| key.starts_with(p))
            && self.suffix.as_deref().is_none_or(|s| key.ends_with(s))
            && self.events.iter().any(|e| covers(e, kind.name()))
    }

    fn overlaps(&self, other: &NotificationRule) -> bool {
        self.events.iter().any(|a| other.events.iter().any(|b| events_overlap(a, b)))
            && filters_overlap(&self.prefix, &other.prefix, |a, b| a.starts_with(b))
            && filters_overlap(&self.suffix, &other.suffix, |a, b| a.ends_with(b))
    }
}

impl NotificationConfig {
    /// S3's checks, with its codes and messages; `targets`: the names this node knows.
    pub fn validate(&self, targets: &BTreeMap<String, String>) -> EngineResult<()> {
        if self.rules.len() > MAX_RULES {
            return Err(EngineError::InvalidArgument(format!(
                "A bucket can have at most {MAX_RULES} notification configurations"
            )));
        }
        for rule in &self.rules {
            if !targets.contains_key(&rule.target) {
                return Err(EngineError::InvalidArgument(format!(
                    "Unable to validate the following destination configurations: {} is not a webhook target of this \
                     server (targets: {})",
                    target_arn(&rule.target),
                    targets.keys().map(|t| target_arn(t)).collect::<Vec<_>>().join(", ")
                )));
            }
            if rule.events.is_empty() {
                return Err(EngineError::MalformedXml);
            }
            if let Some(event) = rule.events.iter().find(|e| !EVENT_NAMES.contains(&e.as_str())) {
                return Err(EngineError::InvalidArgument(format!(
                    "The event is not supported for notifications: {event} (supported: {})",
                    EVENT_NAMES.join(", ")
                )));
            }
            let too_long = |f: &Option<String>| f.as_ref().is_some_and(|v| v.len() > crate::MAX_KEY_BYTES);
            if too_long(&rule.prefix) || too_long(&rule.suffix) {
                return Err(EngineError::InvalidArgument("A filter rule value is longer than 1024 bytes".into()));
            }
        }
        for (i, rule) in self.rules.iter().enumerate() {
            if self.rules[i + 1..].iter().any(|other| rule.overlaps(other)) {
                return Err(EngineError::InvalidArgument(
                    "Configurations overlap. Configurations on the same bucket cannot share a common event type."
                        .into(),
                ));
            }
        }
        Ok(())
    }

    /// The rule an event matches, if any: rules never overlap, so there is at most one.
    fn rule_for(&self, kind: EventKind, key: &str) -> Option<&NotificationRule> {
        self.rules.iter().find(|r| r.matches(kind, key))
    }
}

/// An event waiting for delivery, at `d/<bucket>/<target>/<id>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEvent {
    /// `ObjectCreated:Put`...
    pub event: String,
    pub key: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub etag: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_id: Option<String>,
    pub time_ms: i64,
}

/// The write that queues the event of `kind` on `bucket/key` (`object`: the new record, for
/// creations; `version_id`: the version made or removed) when one of the bucket's rules
/// matches: to fold into the change's transaction.
pub(crate) fn event_op(
    bucket: &str,
    record: &BucketRecord,
    key: &str,
    kind: EventKind,
    object: Option<&ObjectRecord>,
    version_id: Option<&str>,
) -> Option<Op> {
    let rule = record.notification.as_ref()?.rule_for(kind, key)?;
    let time_ms = now_ms();
    let event = StoredEvent {
        event: kind.name().to_string(),
        key: key.to_string(),
        size: object.map_or(0, |o| o.size),
        etag: object.map(|o| o.etag.clone()).unwrap_or_default(),
        version_id: version_id.map(str::to_string),
        rule_id: rule.id.clone(),
        time_ms,
    };
    let id = format!("{:016x}{:016x}", time_ms.max(0), rand::random::<u64>());
    Some(Op::put(keys::event(bucket, &rule.target, &id), record::encode(&event)))
}

/// Sends a batch of events to the webhook target `target` at `url`: `Ok` for a 2xx answer.
#[async_trait::async_trait]
pub trait WebhookSender: Send + Sync {
    async fn post(&self, target: &str, url: &str, body: Bytes) -> Result<(), String>;
}

/// The operator's webhook targets (name → URL) and how to reach them.
#[derive(Clone)]
pub struct Webhooks {
    pub targets: BTreeMap<String, String>,
    pub sender: Arc<dyn WebhookSender>,
}

/// One (bucket, target) stream's delivery state on this node.
#[derive(Default)]
struct StreamState {
    /// The lock's token and expiry while this node holds the stream.
    lease: Option<(u64, i64)>,
    /// No POST before this instant (ms), after failures.
    retry_at_ms: i64,
    backoff: Option<Duration>,
    /// An unknown target was already reported.
    warned: bool,
    /// Events left in the window after the last attempt (the backlog while backing off).
    left: usize,
}

impl Engine {
    /// Sets (`Some`) or removes (`None`) a bucket's notification rules.
    pub async fn set_notification(&self, bucket: &str, config: Option<NotificationConfig>) -> EngineResult<()> {
        let config = config.filter(|c| !c.rules.is_empty());
        if let Some(config) = &config {
            config.validate(&self.webhook_targets())?;
        }
        self.update_bucket(bucket, |record| {
            record.notification = config.clone();
            Ok(())
        })
        .await?;
        Ok(())
    }

    /// The bucket's notification rules (`None`: none).
    pub async fn notification(&self, bucket: &str) -> EngineResult<Option<NotificationConfig>> {
        Ok(self.bucket(bucket).await?.0.notification)
    }

    /// The webhook targets this node knows (name → URL).
    pub fn webhook_targets(&self) -> BTreeMap<String, String> {
        self.webhooks().map(|w| w.targets.clone()).unwrap_or_default()
    }

    /// Queued events per (bucket, target), up to [`DELIVERY_WINDOW`] each: the backlog.
    pub async fn queued_events(&self) -> EngineResult<BTreeMap<(String, String), usize>> {
        let mut backlog = BTreeMap::new();
        let mut from = Bytes::from(keys::EVENTS_ROOT);
        for _ in 0..MAX_STREAMS_PER_PASS {
            let Some((bucket, target)) = self.next_stream(&from).await? else { break };
            let events = self.stream_window(&bucket, &target).await?;
            from = keys::past_events_of(&bucket, &target);
            backlog.insert((bucket, target), events.len());
        }
        Ok(backlog)
    }

    /// Starts the delivery worker (by the builder, when the node has webhook targets).
    pub(crate) fn spawn_notifier(&self) {
        let engine = self.clone();
        tokio::spawn(async move {
            let mut streams: HashMap<(String, String), StreamState> = HashMap::new();
            loop {
                if let Err(err) = engine.deliver_pass(&mut streams).await {
                    tracing::warn!(error = %err, "event notification delivery pass failed");
                }
                tokio::time::sleep(POLL).await;
            }
        });
    }

    /// The first stream at or after `from`.
    async fn next_stream(&self, from: &Bytes) -> EngineResult<Option<(String, String)>> {
        let first = self.meta().range(RangeRequest::between(from.clone(), keys::EVENTS_END).limit(1)).await?;
        Ok(first.kvs.first().and_then(|kv| keys::parse_event_key(&kv.key)).map(|(b, t)| (b.to_string(), t.to_string())))
    }

    /// The stream's oldest events (by id), in commit-revision order.
    async fn stream_window(&self, bucket: &str, target: &str) -> EngineResult<Vec<KeyValue>> {
        let range = RangeRequest::prefix(keys::events_of(bucket, target)).limit(DELIVERY_WINDOW);
        let mut events = self.meta().range(range).await?.kvs;
        events.sort_by_key(|kv| kv.mod_revision);
        Ok(events)
    }

    /// Visits every stream with queued events once.
    async fn deliver_pass(&self, streams: &mut HashMap<(String, String), StreamState>) -> EngineResult<()> {
        let Some(webhooks) = self.webhooks().cloned() else { return Ok(()) };
        let mut from = Bytes::from(keys::EVENTS_ROOT);
        let mut backlog = 0;
        let mut visited = std::collections::HashSet::new();
        for _ in 0..MAX_STREAMS_PER_PASS {
            let Some((bucket, target)) = self.next_stream(&from).await? else { break };
            from = keys::past_events_of(&bucket, &target);
            visited.insert((bucket.clone(), target.clone()));
            let state = streams.entry((bucket.clone(), target.clone())).or_default();
            let Some(url) = webhooks.targets.get(&target) else {
                if !state.warned {
                    tracing::warn!(%bucket, %target, "events queued for a webhook target this node does not know");
                    state.warned = true;
                }
                continue;
            };
            if now_ms() >= state.retry_at_ms {
                state.left = self.deliver_stream(&webhooks, url, &bucket, &target, state).await?;
            }
            backlog += state.left;
        }
        self.metrics().notify_backlog.set(backlog as i64);
        // Streams with nothing queued are forgotten (a lock still held is taken over later).
        streams.retain(|stream, _| visited.contains(stream));
        Ok(())
    }

    /// Delivers one stream's window in order, stopping at the first failure. Returns how many
    /// events are left in the window.
    async fn deliver_stream(
        &self,
        webhooks: &Webhooks,
        url: &str,
        bucket: &str,
        target: &str,
        state: &mut StreamState,
    ) -> EngineResult<usize> {
        if !self.hold_stream(bucket, target, state).await? {
            return Ok(0);
        }
        let events = self.stream_window(bucket, target).await?;
        let mut left = events.len();
        for batch in events.chunks(MAX_EVENTS_PER_POST) {
            if !self.hold_stream(bucket, target, state).await? {
                break;
            }
            let sent = match batch_body(bucket, &self.config().node.region, batch) {
                Ok(body) => {
                    match tokio::time::timeout(REQUEST_TIMEOUT, webhooks.sender.post(target, url, body)).await {
                        Ok(result) => result,
                        Err(_) => Err(format!("no answer within {} s", REQUEST_TIMEOUT.as_secs())),
                    }
                }
                Err(err) => Err(format!("cannot encode the queued events: {err}")),
            };
            if let Err(err) = sent {
                let backoff = state.backoff.map_or(BACKOFF_START, |b| (b * 2).min(BACKOFF_CAP));
                state.backoff = Some(backoff);
                state.retry_at_ms = now_ms() + backoff.as_millis() as i64;
                self.metrics().notify_failures.inc();
                tracing::warn!(%bucket, %target, error = %err, retry_in_ms = backoff.as_millis() as u64, "webhook delivery failed");
                return Ok(left);
            }
            state.backoff = None;
            let mut txn = Txn::new();
            txn.ops.extend(batch.iter().map(|kv| Op::delete(kv.key.clone())));
            self.meta().txn(txn).await?;
            self.metrics().notify_delivered.inc_by(batch.len() as u64);
            left -= batch.len();
        }
        Ok(left)
    }

    /// Whether this node holds (taking or renewing) the lock that lets it deliver the stream.
    async fn hold_stream(&self, bucket: &str, target: &str, state: &mut StreamState) -> EngineResult<bool> {
        let name = format!("#notify/{target}");
        let now = now_ms();
        if let Some((token, expires)) = state.lease {
            if expires - now > LEASE_TTL.as_millis() as i64 / 2 {
                return Ok(true);
            }
            state.lease = None;
            if let Ok(renewed) = self.extend_lock(bucket, &name, token, LEASE_TTL).await {
                state.lease = Some((token, renewed.expires_at_ms));
                return Ok(true);
            }
        }
        match self.take_lock(bucket, &name, &self.config().node.node, LEASE_TTL, Duration::ZERO).await {
            Ok(lock) => {
                state.lease = Some((lock.token, lock.expires_at_ms));
                Ok(true)
            }
            // Held by this node before a restart: take it over rather than wait out its TTL.
            Err(EngineError::LockContended { owner, .. }) if owner == self.config().node.node => {
                let Some(held) = self.read_lock(bucket, &name).await?.0 else { return Ok(false) };
                match self.extend_lock(bucket, &name, held.token, LEASE_TTL).await {
                    Ok(renewed) if renewed.owner == self.config().node.node => {
                        state.lease = Some((held.token, renewed.expires_at_ms));
                        Ok(true)
                    }
                    _ => Ok(false),
                }
            }
            Err(EngineError::LockContended { .. }) => Ok(false),
            Err(err) => Err(err),
        }
    }
}

/// The body of one POST: S3's event message shape (`{"Records": [...]}`).
fn batch_body(bucket: &str, region: &str, batch: &[KeyValue]) -> EngineResult<Bytes> {
    let mut records = Vec::with_capacity(batch.len());
    for kv in batch {
        let event: StoredEvent = record::decode(&kv.value)?;
        records.push(event_json(bucket, region, &event, kv.mod_revision));
    }
    let body = serde_json::json!({ "Records": records });
    Ok(Bytes::from(body.to_string()))
}

fn event_json(bucket: &str, region: &str, event: &StoredEvent, revision: u64) -> serde_json::Value {
    let mut object = serde_json::json!({
        "key": encode_key(&event.key),
        "size": event.size,
        "eTag": event.etag,
        "sequencer": format!("{revision:016X}"),
    });
    if let Some(version_id) = &event.version_id {
        object["versionId"] = serde_json::Value::from(version_id.as_str());
    }
    serde_json::json!({
        "eventVersion": "2.1",
        "eventSource": "meridian:s3",
        "awsRegion": region,
        "eventTime": event_time(event.time_ms),
        "eventName": event.event,
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": event.rule_id.clone().unwrap_or_default(),
            "bucket": { "name": bucket, "arn": format!("arn:aws:s3:::{bucket}") },
            "object": object,
        },
        "meridian": { "revision": revision },
    })
}

/// RFC 3339 with milliseconds, as S3 writes `eventTime`.
fn event_time(ms: i64) -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_default()
}

/// The key as S3 writes it in events: form-encoded (a space is `+`), `/` kept.
fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => out.push(b as char),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(target: &str, events: &[&str], prefix: Option<&str>, suffix: Option<&str>) -> NotificationRule {
        NotificationRule {
            id: None,
            target: target.into(),
            events: events.iter().map(|e| e.to_string()).collect(),
            prefix: prefix.map(Into::into),
            suffix: suffix.map(Into::into),
        }
    }

    fn targets() -> BTreeMap<String, String> {
        BTreeMap::from([("hook".to_string(), "http://127.0.0.1:1/".to_string())])
    }

    #[test]
    fn rules_match_event_types_prefixes_and_suffixes() {
        let config = NotificationConfig {
            rules: vec![
                rule("hook", &["s3:ObjectCreated:*"], Some("images/"), Some(".jpg")),
                rule("hook", &["s3:ObjectRemoved:Delete"], None, None),
            ],
        };
        config.validate(&targets()).unwrap();
        assert!(config.rule_for(EventKind::Put, "images/a.jpg").is_some());
        assert!(config.rule_for(EventKind::CompleteMultipartUpload, "images/b.jpg").is_some());
        assert!(config.rule_for(EventKind::Put, "images/a.png").is_none());
        assert!(config.rule_for(EventKind::Put, "docs/a.jpg").is_none());
        assert!(config.rule_for(EventKind::Delete, "docs/a.jpg").is_some());
        assert!(config.rule_for(EventKind::DeleteMarkerCreated, "docs/a.jpg").is_none());
    }

    #[test]
    fn configurations_s3_refuses_are_refused() {
        let invalid = |config: NotificationConfig, needle: &str| match config.validate(&targets()) {
            Err(EngineError::InvalidArgument(m)) => assert!(m.contains(needle), "{m}"),
            other => panic!("expected InvalidArgument with {needle:?}, got {other:?}"),
        };
        invalid(
            NotificationConfig { rules: vec![rule("nope", &["s3:ObjectCreated:*"], None, None)] },
            "Unable to validate",
        );
        invalid(
            NotificationConfig { rules: vec![rule("hook", &["s3:ObjectCreated:Sideways"], None, None)] },
            "not supported",
        );
        let overlapping = NotificationConfig {
            rules: vec![
                rule("hook", &["s3:ObjectCreated:*"], Some("a/"), None),
                rule("hook", &["s3:ObjectCreated:Put"], Some("a/b/"), None),
            ],
        };
        invalid(overlapping, "Configurations overlap");
        let disjoint = NotificationConfig {
            rules: vec![
                rule("hook", &["s3:ObjectCreated:*"], Some("a/"), None),
                rule("hook", &["s3:ObjectCreated:Put"], Some("b/"), None),
                rule("hook", &["s3:ObjectCreated:*"], None, Some(".png")),
            ],
        };
        invalid(disjoint.clone(), "Configurations overlap");
        let disjoint = NotificationConfig { rules: disjoint.rules[..2].to_vec() };
        disjoint.validate(&targets()).unwrap();
    }

    #[test]
    fn arns_name_targets_and_keys_are_form_encoded() {
        assert_eq!(target_of_arn(&target_arn("hook-1")), Some("hook-1"));
        assert_eq!(target_of_arn("arn:aws:sqs:us-east-1:123:q"), None);
        assert_eq!(encode_key("dir/a b+c.txt"), "dir/a+b%2Bc.txt");
        assert_eq!(event_time(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }
}
