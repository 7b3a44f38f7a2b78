//! The checkers over a [`History`](crate::History)'s operations, one per promise
//! (docs/consistency.md):
//!
//! - [`linearizable`]: strong reads and every write, conditional or not, per key;
//! - [`read_floors`]: a read carrying a revision floor (`x-meridian-min-revision`, the session
//!   cookie) reflects every write at or below it, and a session that writes and then reads
//!   sees its own write whichever node it reads from (the floor it should have carried);
//! - [`monotonic_local`]: a session's local reads of a key on one node never go back;
//! - [`integrity`]: a read returns a value some write wrote, with that write's revision;
//! - [`lost_writes`]: the final reads after healing reflect every acknowledged write.
//!
//! Revisions are global and strictly increasing, so "newer" is exact: a write with a larger
//! revision committed later.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use crate::history::{Action, Condition, Op, Outcome, ReadMode, Version};
use crate::register;

/// A broken promise found in a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// No order of `key`'s strong reads and writes fits a register.
    NotLinearizable { key: String, longest_prefix: usize },
    /// The search for `key` ran out of budget (the history is too large to decide).
    Undecided { key: String },
    /// A read at a revision floor missed a write at or below the floor.
    StaleRead { read: Op, floor: u64, missed_revision: u64 },
    /// A session's local read of a key went back to an older version than it had seen.
    NonMonotonic { read: Op, seen_revision: u64 },
    /// A read returned a value no write wrote, or with another revision than its write's.
    Phantom { read: Op, why: String },
    /// An acknowledged write is not reflected by the final reads.
    Lost { key: String, write_revision: u64, final_read: Option<Version> },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::NotLinearizable { key, longest_prefix } => {
                write!(f, "{key}: not linearizable (at most {longest_prefix} operations could be ordered)")
            }
            Violation::Undecided { key } => write!(f, "{key}: linearizability undecided within the search budget"),
            Violation::StaleRead { read, floor, missed_revision } => {
                let [_, line] = read.lines();
                write!(f, "stale read at floor {floor}: missed the write at revision {missed_revision}: {line}")
            }
            Violation::NonMonotonic { read, seen_revision } => {
                let [_, line] = read.lines();
                write!(f, "non-monotonic read: the session had seen revision {seen_revision}: {line}")
            }
            Violation::Phantom { read, why } => {
                let [_, line] = read.lines();
                write!(f, "phantom read ({why}): {line}")
            }
            Violation::Lost { key, write_revision, final_read } => {
                write!(f, "{key}: the acknowledged write at revision {write_revision} is lost: finally {final_read:?}")
            }
        }
    }
}

/// Every checker; `budget` bounds the linearizability search per key.
pub fn check_all(ops: &[Op], budget: usize) -> Vec<Violation> {
    let mut found = linearizable(ops, budget);
    found.extend(read_floors(ops));
    found.extend(monotonic_local(ops));
    found.extend(integrity(ops));
    found.extend(lost_writes(ops));
    found
}

// ----- linearizability ----------------------------------------------------------------------------

/// The register operation of `op`, if it belongs to the linearizable part of the history.
fn register_op(op: &Op) -> Option<register::Operation> {
    let ret = match op.outcome {
        Outcome::Ok => Some(op.complete),
        Outcome::Info => None,
        // A refused condition is evidence about the state when the server judged it.
        Outcome::Refused => Some(op.complete),
        // A write that certainly failed changed nothing and tells nothing: a conditional put
        // refused a connection before its condition was ever judged.
        Outcome::Fail => return None,
    };
    let known = op.outcome != Outcome::Info;
    let rop = match op.action {
        Action::Read { mode: ReadMode::Strong, result } if op.outcome == Outcome::Ok => {
            register::Op::Read(result.map(|v| v.value))
        }
        Action::Read { .. } => return None,
        Action::Delete => register::Op::Delete,
        Action::Put { value, condition: Condition::None } => register::Op::Write(value),
        Action::Put { value, condition } => {
            let expected = match condition {
                Condition::IfNoneMatch => None,
                Condition::IfMatch { expected } => Some(expected),
                Condition::IfRevision { expected, .. } => expected,
                Condition::None => return None,
            };
            let ok = op.outcome == Outcome::Ok || !known;
            register::Op::Cas { expected, new: value, ok, observed: None }
        }
    };
    Some(register::Operation { key: op.key.clone(), call: op.invoke, ret, op: rop })
}

/// Linearizability of every key (a register starting absent) over strong reads and writes.
pub fn linearizable(ops: &[Op], budget: usize) -> Vec<Violation> {
    let history: Vec<register::Operation> = ops.iter().filter_map(register_op).collect();
    let mut keys: Vec<&str> = history.iter().map(|o| o.key.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    let mut found = Vec::new();
    for key in keys {
        let one: Vec<register::Operation> = history.iter().filter(|o| o.key == key).cloned().collect();
        match register::check_within(&one, None, budget) {
            register::Verdict::Linearizable => {}
            register::Verdict::NotLinearizable { key, longest_prefix } => {
                found.push(Violation::NotLinearizable { key, longest_prefix })
            }
            register::Verdict::Unknown { key } => found.push(Violation::Undecided { key }),
        }
    }
    found
}

// ----- the writes of each key --------------------------------------------------------------------

/// The writes of one key, for the revision-based checks.
#[derive(Default)]
struct KeyWrites<'a> {
    /// Acknowledged writes by revision: the value put, or `None` for a delete.
    acked: BTreeMap<u64, Option<u64>>,
    /// Deletes whose outcome is unknown (no revision): each may have happened after its invocation.
    unknown_deletes: Vec<&'a Op>,
    /// Every put by value (values are unique in a history).
    puts: HashMap<u64, &'a Op>,
}

impl<'a> KeyWrites<'a> {
    fn index(ops: &'a [Op]) -> HashMap<&'a str, KeyWrites<'a>> {
        let mut keys: HashMap<&str, KeyWrites> = HashMap::new();
        for op in ops {
            let writes = keys.entry(op.key.as_str()).or_default();
            if let Some((value, revision)) = op.acked_write() {
                writes.acked.insert(revision, value);
            }
            match op.action {
                Action::Delete if op.outcome == Outcome::Info => writes.unknown_deletes.push(op),
                Action::Put { value, .. } => {
                    writes.puts.insert(value, op);
                }
                _ => {}
            }
        }
        keys
    }

    /// Whether the key may be absent at a read completing at `before` whose view includes
    /// every write up to revision `floor`: the last acknowledged write at or below the floor is
    /// a delete (or there is none), or a later delete may explain it. `Err(revision)`: the put
    /// at `revision` must be visible.
    fn absent_allowed(&self, floor: u64, before: u128) -> Result<(), u64> {
        let Some((&revision, value)) = self.acked.range(..=floor).next_back() else { return Ok(()) };
        if value.is_none() || self.deleted_after(revision, before) {
            return Ok(());
        }
        Err(revision)
    }

    /// Whether a delete may have committed after `revision`, before an instant.
    fn deleted_after(&self, revision: u64, before: u128) -> bool {
        self.acked.range(revision + 1..).any(|(_, v)| v.is_none())
            || self.unknown_deletes.iter().any(|d| d.invoke < before)
    }
}

// ----- read floors (min-revision, cookie, a session's own writes) ------------------------------------

/// Reads with a revision floor reflect every acknowledged write at or below it. The floor is
/// the larger of what the read carried and the session's own last acknowledged write — so a
/// server that never issued the session cookie (the client had none to send) is caught too.
pub fn read_floors(ops: &[Op]) -> Vec<Violation> {
    let keys = KeyWrites::index(ops);
    let mut by_session: BTreeMap<usize, Vec<&Op>> = BTreeMap::new();
    for op in ops {
        by_session.entry(op.process).or_default().push(op);
    }
    let mut found = Vec::new();
    for session in by_session.values_mut() {
        session.sort_by_key(|op| op.invoke);
        let mut own = 0u64; // the session's last acknowledged write
        for op in session.iter() {
            if let Some((_, revision)) = op.acked_write() {
                own = own.max(revision);
            }
            let Action::Read { mode, result } = op.action else { continue };
            if op.outcome != Outcome::Ok || !matches!(mode, ReadMode::MinRevision(_) | ReadMode::Cookie(_)) {
                continue;
            }
            let floor = mode.floor().unwrap_or(0).max(own);
            let Some(writes) = keys.get(op.key.as_str()) else { continue };
            let missed = match result {
                Some(v) if v.revision >= floor => None,
                Some(v) => writes.acked.range(v.revision + 1..=floor).next().map(|(r, _)| *r),
                None => writes.absent_allowed(floor, op.complete).err(),
            };
            if let Some(missed_revision) = missed {
                found.push(Violation::StaleRead { read: (*op).clone(), floor, missed_revision });
            }
        }
    }
    found
}

// ----- monotonic local reads --------------------------------------------------------------------------

/// A session's local reads of one key on one node never return an older version than one it
/// read before (nor absence, unless a delete may have come after it).
pub fn monotonic_local(ops: &[Op]) -> Vec<Violation> {
    let keys = KeyWrites::index(ops);
    let mut sessions: BTreeMap<(usize, usize, &str), Vec<&Op>> = BTreeMap::new();
    for op in ops {
        if matches!(op.action, Action::Read { mode: ReadMode::Local, .. }) && op.outcome == Outcome::Ok {
            sessions.entry((op.process, op.node, op.key.as_str())).or_default().push(op);
        }
    }
    let mut found = Vec::new();
    for ((_, _, key), mut reads) in sessions {
        reads.sort_by_key(|op| op.invoke);
        let mut seen = 0u64;
        for op in reads {
            let Action::Read { result, .. } = op.action else { continue };
            let back = match result {
                Some(v) => v.revision < seen,
                None => seen > 0 && !keys.get(key).is_some_and(|w| w.deleted_after(seen, op.complete)),
            };
            if back {
                found.push(Violation::NonMonotonic { read: op.clone(), seen_revision: seen });
            }
            if let Some(v) = result {
                seen = seen.max(v.revision);
            }
        }
    }
    found
}

// ----- integrity -------------------------------------------------------------------------------------

/// Every value read was written to that key by a put that may have taken effect, invoked
/// before the read returned, and carries that put's revision when the put was acknowledged.
pub fn integrity(ops: &[Op]) -> Vec<Violation> {
    let keys = KeyWrites::index(ops);
    let mut found = Vec::new();
    for op in ops {
        let (Action::Read { result: Some(v), .. }, Outcome::Ok) = (op.action, op.outcome) else { continue };
        let put = keys.get(op.key.as_str()).and_then(|w| w.puts.get(&v.value));
        let why = match put {
            None => Some("no put of this value to this key".to_string()),
            Some(put) if matches!(put.outcome, Outcome::Fail | Outcome::Refused) => Some("its put failed".to_string()),
            Some(put) if put.invoke > op.complete => Some("its put was invoked after the read returned".to_string()),
            Some(put) => match put.revision {
                Some(r) if put.outcome == Outcome::Ok && r != v.revision => {
                    Some(format!("its put was acknowledged at revision {r}"))
                }
                _ => None,
            },
        };
        if let Some(why) = why {
            found.push(Violation::Phantom { read: op.clone(), why });
        }
    }
    found
}

// ----- lost writes -------------------------------------------------------------------------------------

/// The final reads (strong, after every fault healed) reflect every acknowledged write: no
/// acknowledged write of a key has a larger revision than the version finally read, and a key
/// finally absent was last written (by revision) by a delete, or may have been deleted later.
pub fn lost_writes(ops: &[Op]) -> Vec<Violation> {
    let keys = KeyWrites::index(ops);
    let mut found = Vec::new();
    for op in ops.iter().filter(|op| op.final_read && op.outcome == Outcome::Ok) {
        let Action::Read { result, .. } = op.action else { continue };
        let Some(writes) = keys.get(op.key.as_str()) else { continue };
        let lost = match result {
            Some(v) => writes.acked.range(v.revision + 1..).next().map(|(r, _)| *r),
            None => writes.absent_allowed(u64::MAX, op.complete).err(),
        };
        if let Some(write_revision) = lost {
            found.push(Violation::Lost { key: op.key.clone(), write_revision, final_read: result });
        }
    }
    found
}

#[cfg(test)]
mod tests;
