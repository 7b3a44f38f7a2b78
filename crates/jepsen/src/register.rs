//! A Wing–Gong linearizability checker (with Lowe's memoization, as in Porcupine) for a
//! register with read, write and compare-and-set.
//!
//! A history is a list of operations, each with the instant it was invoked, the instant its
//! response arrived (or `None` if the outcome is unknown, e.g. a timeout), and what it
//! returned. The history is linearizable if there is a total order of the operations that
//! respects real time (an operation that completed before another was invoked comes first)
//! and in which every operation's result is what a single sequential register would return.
//! Operations with an unknown outcome may take effect at any point after their invocation, or
//! never.
//!
//! The search: walk the history's call/return events in time order; at each call, try to
//! linearize that operation now (if the model accepts its result from the current state); at
//! a return whose operation is not linearized yet, backtrack. A cache of (set of linearized
//! operations, state) cuts every branch that reaches a configuration seen before, which keeps
//! histories of a few hundred operations fast. Keys are independent registers, so a history
//! is checked per key (P-compositionality).

use std::collections::HashSet;

/// The register's value: `None` when the key is absent.
pub type Value = Option<u64>;

/// What an operation did and what it saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// A read that returned `Value`.
    Read(Value),
    /// A write of a value (each write in a history writes a distinct value).
    Write(u64),
    /// A delete: afterwards the key is absent.
    Delete,
    /// Compare-and-set: write `new` only if the register holds `expected`. `ok` is what the
    /// store answered; `observed` is the value the store said the register held when it refused
    /// (`Some(v)` if known), checked like a read.
    Cas { expected: Value, new: u64, ok: bool, observed: Option<Value> },
}

/// One operation of a history. Times are in any monotonic unit (e.g. ns since the start).
#[derive(Clone, Debug)]
pub struct Operation {
    pub key: String,
    pub call: u128,
    /// `None`: the outcome is unknown (it may or may not have taken effect).
    pub ret: Option<u128>,
    pub op: Op,
}

/// What the model says about applying `op` in `state` with its recorded result: `Some(next
/// state)` if consistent.
fn step(state: Value, op: &Op, known: bool) -> Option<Value> {
    match op {
        Op::Read(v) => (*v == state).then_some(state),
        Op::Write(v) => Some(Some(*v)),
        Op::Delete => Some(None),
        Op::Cas { expected, new, ok, observed } => {
            if !known {
                // Unknown outcome: linearizing it only makes sense where it succeeds (a failed
                // CAS changes nothing, the same as never linearizing it).
                return (*expected == state).then_some(Some(*new));
            }
            if *ok {
                (*expected == state).then_some(Some(*new))
            } else {
                let consistent = *expected != state && observed.is_none_or(|o| o == state);
                consistent.then_some(state)
            }
        }
    }
}

/// A fixed-size bitset for the memo key.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Self {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Call,
    Return,
}

/// The result of a check.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// Not linearizable: the key, and the largest prefix of operations that could be ordered.
    NotLinearizable {
        key: String,
        longest_prefix: usize,
    },
    /// The search of this key's history visited more configurations than allowed without an
    /// answer (keep histories per key smaller, or raise the budget).
    Unknown {
        key: String,
    },
}

/// Configurations (set of linearized operations, state) one key's search may visit by default.
pub const DEFAULT_BUDGET: usize = 4_000_000;

/// Checks a history of any number of keys, each key on its own.
pub fn check(history: &[Operation], initial: Value) -> Verdict {
    check_within(history, initial, DEFAULT_BUDGET)
}

/// [`check`], giving up on a key (`Verdict::Unknown`) after `budget` configurations.
pub fn check_within(history: &[Operation], initial: Value, budget: usize) -> Verdict {
    let mut keys: Vec<&str> = history.iter().map(|o| o.key.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    for key in keys {
        let ops: Vec<&Operation> = history.iter().filter(|o| o.key == key).collect();
        match check_one(&ops, initial, budget) {
            Ok(()) => {}
            Err(Failure::Violation(longest)) => {
                return Verdict::NotLinearizable { key: key.to_string(), longest_prefix: longest };
            }
            Err(Failure::OverBudget) => return Verdict::Unknown { key: key.to_string() },
        }
    }
    Verdict::Linearizable
}

/// Why one register's search ended without an order.
enum Failure {
    /// No order exists; at most this many operations could be linearized.
    Violation(usize),
    OverBudget,
}

/// The call/return events of one register's history as a doubly linked list: node 0 is the
/// head, event `e` is node `e + 1`, and `end` is one past the last node.
struct Events {
    next: Vec<usize>,
    prev: Vec<usize>,
    end: usize,
}

impl Events {
    fn new(len: usize) -> Self {
        Events { next: (1..=len + 1).collect(), prev: (0..=len).map(|x| x.saturating_sub(1)).collect(), end: len + 1 }
    }

    fn unlink(&mut self, x: usize) {
        let (p, n) = (self.prev[x], self.next[x]);
        self.next[p] = n;
        if n != self.end {
            self.prev[n] = p;
        }
    }

    /// Undoes `unlink(x)`; links must be restored in the reverse order of their removal.
    fn relink(&mut self, x: usize) {
        let (p, n) = (self.prev[x], self.next[x]);
        self.next[p] = x;
        if n != self.end {
            self.prev[n] = x;
        }
    }
}

/// One register.
fn check_one(ops: &[&Operation], initial: Value, budget: usize) -> Result<(), Failure> {
    // Reads with an unknown result constrain nothing.
    let ops: Vec<&Operation> =
        ops.iter().copied().filter(|o| o.ret.is_some() || !matches!(o.op, Op::Read(_))).collect();
    let n = ops.len();
    // Events in time order; at equal times calls come first (the operations overlap).
    let mut events: Vec<(u128, Kind, usize)> = Vec::with_capacity(2 * n);
    for (i, o) in ops.iter().enumerate() {
        events.push((o.call, Kind::Call, i));
        if let Some(ret) = o.ret {
            // A clock that went backwards cannot put a return before its call.
            events.push((ret.max(o.call), Kind::Return, i));
        }
    }
    events.sort_by_key(|(t, kind, i)| (*t, *kind == Kind::Return, *i));
    let mut list = Events::new(events.len());
    let mut return_node = vec![None; n];
    for (e, (_, kind, i)) in events.iter().enumerate() {
        if *kind == Kind::Return {
            return_node[*i] = Some(e + 1);
        }
    }
    let mut remaining_returns = return_node.iter().filter(|r| r.is_some()).count();
    let mut linearized = Bits::new(n);
    let mut cache: HashSet<(Bits, Value)> = HashSet::new();
    // (call node, state before it) of each linearized operation, in order.
    let mut stack: Vec<(usize, Value)> = Vec::new();
    let mut state = initial;
    let mut cursor = list.next[0];
    let mut longest = 0;
    while remaining_returns > 0 {
        let linearize_here = if cursor == list.end {
            None // only unknown-outcome calls were ahead, and none fit
        } else {
            let (_, kind, i) = events[cursor - 1];
            if kind == Kind::Return {
                None // the operation returning here is not linearized yet
            } else {
                let o = ops[i];
                let mut fits = None;
                if let Some(new_state) = step(state, &o.op, o.ret.is_some()) {
                    let mut bits = linearized.clone();
                    bits.set(i);
                    if cache.len() >= budget {
                        return Err(Failure::OverBudget);
                    }
                    if cache.insert((bits.clone(), new_state)) {
                        fits = Some((i, bits, new_state));
                    }
                }
                match fits {
                    Some(choice) => Some(choice),
                    None => {
                        cursor = list.next[cursor];
                        continue;
                    }
                }
            }
        };
        match linearize_here {
            Some((i, bits, new_state)) => {
                stack.push((cursor, state));
                longest = longest.max(stack.len());
                state = new_state;
                linearized = bits;
                list.unlink(cursor);
                if let Some(r) = return_node[i] {
                    list.unlink(r);
                    remaining_returns -= 1;
                }
                cursor = list.next[0];
            }
            None => {
                // Backtrack: take back the last operation linearized and try the next call.
                let Some((call, before)) = stack.pop() else { return Err(Failure::Violation(longest)) };
                let i = events[call - 1].2;
                if let Some(r) = return_node[i] {
                    list.relink(r);
                    remaining_returns += 1;
                }
                list.relink(call);
                linearized.clear(i);
                state = before;
                cursor = list.next[call];
            }
        }
    }
    Ok(())
}

// ----- recording ---------------------------------------------------------------------------------

/// Collects operations from concurrent workers.
#[derive(Clone, Default)]
pub struct Recorder {
    start: std::sync::Arc<std::sync::OnceLock<std::time::Instant>>,
    ops: std::sync::Arc<std::sync::Mutex<Vec<Operation>>>,
}

impl Recorder {
    pub fn new() -> Self {
        let r = Recorder::default();
        let _ = r.start.set(std::time::Instant::now());
        r
    }

    /// Nanoseconds since the recorder was created.
    pub fn now(&self) -> u128 {
        self.start.get().map_or(0, |s| s.elapsed().as_nanos())
    }

    pub fn record(&self, op: Operation) {
        self.ops.lock().expect("recorder lock").push(op);
    }

    pub fn history(&self) -> Vec<Operation> {
        self.ops.lock().expect("recorder lock").clone()
    }
}
