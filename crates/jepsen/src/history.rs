//! A history: every operation concurrent clients ran, with when it was invoked, when its answer
//! (or error) arrived, and its outcome in Jepsen's terms — `ok` (it took effect / returned this),
//! `fail` (it certainly did not take effect) or `info` (unknown: a timeout, a dropped
//! connection, a 503 after which the write may or may not have been applied).
//!
//! Values are register values: every write of a history writes a distinct `u64` (as its body),
//! so a read's value names the write it observed.

use std::fmt::{self, Write as _};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A version of a key as a read returned it: the value and the revision it carried
/// (`x-meridian-revision`, the revision at which that value was written).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Version {
    pub value: u64,
    pub revision: u64,
}

/// How fresh a read asked to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadMode {
    /// The node's local view (the default): monotonic per client session on one node.
    Local,
    /// `x-meridian-consistency: strong`: linearizable.
    Strong,
    /// `x-meridian-min-revision: R`: reflects at least revision R.
    MinRevision(u64),
    /// The `meridian-min-revision` session cookie the client held when it sent the read (`None`:
    /// it held none, i.e. the server never issued one).
    Cookie(Option<u64>),
}

impl ReadMode {
    /// The revision floor the read asked for, if any.
    pub fn floor(&self) -> Option<u64> {
        match self {
            ReadMode::MinRevision(r) | ReadMode::Cookie(Some(r)) => Some(*r),
            _ => None,
        }
    }
}

/// The condition of a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    /// Unconditional.
    None,
    /// S3 `If-None-Match: *`: only if the key is absent.
    IfNoneMatch,
    /// S3 `If-Match: "etag"` with the ETag of the value `expected`.
    IfMatch { expected: u64 },
    /// KV compare-and-set `x-meridian-if-revision: R`; `expected` is the value the client read
    /// at that revision (`None` for R = 0, "absent").
    IfRevision { revision: u64, expected: Option<u64> },
}

/// What an operation did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// A read; `result` is what an `ok` read returned (`None`: the key was absent).
    Read { mode: ReadMode, result: Option<Version> },
    /// A write of `value`.
    Put { value: u64, condition: Condition },
    /// A delete (unconditional).
    Delete,
}

/// Jepsen's completion types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Took effect (a write) or returned its result (a read).
    Ok,
    /// Certainly had no effect, and says nothing about the state (a bad request, a connection
    /// refused before the request was sent).
    Fail,
    /// A conditional write whose condition did not hold (412, a revision mismatch): no effect,
    /// and the condition was false when the server judged it.
    Refused,
    /// Unknown: it may or may not have taken effect.
    Info,
}

/// One operation of a history. Times are nanoseconds since the history started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    /// The client session that ran it (sessions run one operation at a time).
    pub process: usize,
    /// The node (region index) it was sent to.
    pub node: usize,
    pub key: String,
    pub invoke: u128,
    pub complete: u128,
    pub outcome: Outcome,
    pub action: Action,
    /// The revision the answer carried: an `ok` write's new revision, a refused conditional
    /// write's current revision.
    pub revision: Option<u64>,
    /// The error, for `fail` and `info`.
    pub error: Option<String>,
    /// One of the final strong reads made after every fault was healed.
    pub final_read: bool,
}

impl Op {
    /// An `ok` write with its revision: `Some(Some(value))` for a put, `Some(None)` for a delete.
    pub fn acked_write(&self) -> Option<(Option<u64>, u64)> {
        match (self.outcome, self.action, self.revision) {
            (Outcome::Ok, Action::Put { value, .. }, Some(r)) => Some((Some(value), r)),
            (Outcome::Ok, Action::Delete, Some(r)) => Some((None, r)),
            _ => None,
        }
    }

    /// Jepsen's two lines for this operation: the invocation and the completion.
    pub fn lines(&self) -> [String; 2] {
        let (f, value) = match self.action {
            Action::Read { mode, result } => {
                let v = result.map_or("nil".to_string(), |v| format!("[{} {}]", v.value, v.revision));
                (format!(":read :mode {}", mode_name(mode)), if self.outcome == Outcome::Ok { v } else { "nil".into() })
            }
            Action::Put { value, condition } => (format!(":put :if {}", condition_name(condition)), value.to_string()),
            Action::Delete => (":delete".to_string(), "nil".to_string()),
        };
        let kind = match self.outcome {
            Outcome::Ok => ":ok",
            Outcome::Fail | Outcome::Refused => ":fail",
            Outcome::Info => ":info",
        };
        let mut done = format!(
            "{{:time {} :process {} :node {} :type {kind} :f {f} :key {:?} :value {value}",
            self.complete, self.process, self.node, self.key
        );
        if let Some(r) = self.revision {
            let _ = write!(done, " :revision {r}");
        }
        if let Some(e) = &self.error {
            let _ = write!(done, " :error {e:?}");
        }
        done.push('}');
        let invoke = format!(
            "{{:time {} :process {} :node {} :type :invoke :f {f} :key {:?}}}",
            self.invoke, self.process, self.node, self.key
        );
        [invoke, done]
    }
}

fn mode_name(mode: ReadMode) -> String {
    match mode {
        ReadMode::Local => "local".into(),
        ReadMode::Strong => "strong".into(),
        ReadMode::MinRevision(r) => format!("[min-revision {r}]"),
        ReadMode::Cookie(r) => format!("[cookie {}]", r.map_or("nil".into(), |r| r.to_string())),
    }
}

fn condition_name(c: Condition) -> String {
    match c {
        Condition::None => "nil".into(),
        Condition::IfNoneMatch => "[if-none-match *]".into(),
        Condition::IfMatch { expected } => format!("[if-match {expected}]"),
        Condition::IfRevision { revision, expected } => {
            format!("[if-revision {revision} {}]", expected.map_or("nil".into(), |v| v.to_string()))
        }
    }
}

/// Collects operations from concurrent clients. Cheap to clone (clones share the history).
#[derive(Clone)]
pub struct History {
    start: Instant,
    ops: Arc<Mutex<Vec<Op>>>,
}

impl Default for History {
    fn default() -> Self {
        History::new()
    }
}

impl History {
    /// An empty history whose clock starts now.
    pub fn new() -> Self {
        History { start: Instant::now(), ops: Arc::default() }
    }

    /// Nanoseconds since the history started (monotonic).
    pub fn now(&self) -> u128 {
        self.start.elapsed().as_nanos()
    }

    /// Adds a completed operation.
    pub fn record(&self, op: Op) {
        self.lock().push(op);
    }

    /// Every operation so far, in the order they completed.
    pub fn ops(&self) -> Vec<Op> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Op>> {
        // A client that panicked while recording left a complete Vec behind.
        self.ops.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The whole history in Jepsen's line format, events in time order.
pub fn render(ops: &[Op]) -> String {
    let mut events: Vec<(u128, String)> = Vec::with_capacity(ops.len() * 2);
    for op in ops {
        let [invoke, done] = op.lines();
        events.push((op.invoke, invoke));
        events.push((op.complete, done));
    }
    events.sort_by_key(|(t, _)| *t);
    let mut out = String::new();
    for (_, line) in events {
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// Counts of a history: operations by kind and outcome.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub reads: [usize; 3],
    pub writes: [usize; 3],
    pub conditional_writes: [usize; 3],
    pub deletes: [usize; 3],
}

impl Summary {
    pub fn of(ops: &[Op]) -> Summary {
        let mut s = Summary::default();
        for op in ops {
            let slot = match op.outcome {
                Outcome::Ok => 0,
                Outcome::Fail | Outcome::Refused => 1,
                Outcome::Info => 2,
            };
            match op.action {
                Action::Read { .. } => s.reads[slot] += 1,
                Action::Put { condition: Condition::None, .. } => s.writes[slot] += 1,
                Action::Put { .. } => s.conditional_writes[slot] += 1,
                Action::Delete => s.deletes[slot] += 1,
            }
        }
        s
    }

    pub fn total(&self) -> usize {
        [self.reads, self.writes, self.conditional_writes, self.deletes].iter().flatten().sum()
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let row = |name: &str, c: [usize; 3]| format!("{name} {} ok / {} fail / {} info", c[0], c[1], c[2]);
        write!(
            f,
            "{} operations: {}; {}; {}; {}",
            self.total(),
            row("reads", self.reads),
            row("writes", self.writes),
            row("conditional writes", self.conditional_writes),
            row("deletes", self.deletes)
        )
    }
}
