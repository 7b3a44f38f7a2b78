//! Each checker on hand-made histories: valid ones pass, and each kind of bad one is caught.

use super::*;

/// Builds histories: one operation per call, times in steps of 10.
struct H {
    ops: Vec<Op>,
}

fn v(value: u64, revision: u64) -> Option<Version> {
    Some(Version { value, revision })
}

impl H {
    fn new() -> H {
        H { ops: Vec::new() }
    }

    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        process: usize,
        node: usize,
        key: &str,
        span: (u128, u128),
        outcome: Outcome,
        action: Action,
        revision: Option<u64>,
    ) -> &mut Self {
        self.ops.push(Op {
            process,
            node,
            key: key.into(),
            invoke: span.0,
            complete: span.1,
            outcome,
            action,
            revision,
            error: None,
            final_read: false,
        });
        self
    }

    fn put(&mut self, p: usize, key: &str, span: (u128, u128), value: u64, revision: u64) -> &mut Self {
        self.push(p, 0, key, span, Outcome::Ok, Action::Put { value, condition: Condition::None }, Some(revision))
    }

    fn delete(&mut self, p: usize, key: &str, span: (u128, u128), revision: u64) -> &mut Self {
        self.push(p, 0, key, span, Outcome::Ok, Action::Delete, Some(revision))
    }

    fn read(
        &mut self,
        p: usize,
        node: usize,
        key: &str,
        span: (u128, u128),
        mode: ReadMode,
        result: Option<Version>,
    ) -> &mut Self {
        self.push(p, node, key, span, Outcome::Ok, Action::Read { mode, result }, None)
    }

    fn final_read(&mut self, key: &str, at: u128, result: Option<Version>) -> &mut Self {
        self.read(99, 0, key, (at, at + 1), ReadMode::Strong, result);
        self.ops.last_mut().expect("just pushed").final_read = true;
        self
    }
}

#[test]
fn a_valid_history_passes_every_checker() {
    let mut h = H::new();
    h.put(1, "k", (0, 10), 1, 5)
        .read(2, 0, "k", (20, 30), ReadMode::Strong, v(1, 5))
        .push(
            1,
            1,
            "k",
            (40, 50),
            Outcome::Ok,
            Action::Put { value: 2, condition: Condition::IfMatch { expected: 1 } },
            Some(8),
        )
        .push(
            2,
            2,
            "k",
            (41, 49),
            Outcome::Refused,
            Action::Put { value: 3, condition: Condition::IfRevision { revision: 5, expected: Some(1) } },
            Some(8),
        )
        .read(3, 1, "k", (60, 70), ReadMode::MinRevision(8), v(2, 8))
        .read(4, 2, "k", (60, 70), ReadMode::Local, v(1, 5))
        .read(4, 2, "k", (80, 90), ReadMode::Local, v(2, 8))
        .push(
            1,
            0,
            "k",
            (100, 110),
            Outcome::Refused,
            Action::Put { value: 4, condition: Condition::IfNoneMatch },
            Some(8),
        )
        .delete(1, "k", (120, 130), 12)
        .read(4, 2, "k", (140, 150), ReadMode::Local, None)
        // A put whose outcome is unknown may show up or not.
        .push(2, 0, "j", (140, 400), Outcome::Info, Action::Put { value: 9, condition: Condition::None }, None)
        .final_read("k", 500, None)
        .final_read("j", 500, v(9, 14));
    let found = check_all(&h.ops, 10_000);
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn a_stale_strong_read_is_not_linearizable() {
    let mut h = H::new();
    h.put(1, "k", (0, 10), 1, 5).put(1, "k", (20, 30), 2, 6).read(2, 1, "k", (40, 50), ReadMode::Strong, v(1, 5));
    assert_eq!(linearizable(&h.ops, 10_000), vec![Violation::NotLinearizable { key: "k".into(), longest_prefix: 2 }]);
    // The same read at the local view is allowed to be stale.
    h.ops[2].action = Action::Read { mode: ReadMode::Local, result: v(1, 5) };
    assert!(check_all(&h.ops, 10_000).is_empty());
}

#[test]
fn two_winning_conditional_creates_are_not_linearizable() {
    let mut h = H::new();
    let create = |value| Action::Put { value, condition: Condition::IfNoneMatch };
    h.push(1, 0, "k", (0, 10), Outcome::Ok, create(1), Some(3)).push(
        2,
        1,
        "k",
        (20, 30),
        Outcome::Ok,
        create(2),
        Some(4),
    );
    assert!(matches!(linearizable(&h.ops, 10_000)[..], [Violation::NotLinearizable { .. }]));
}

#[test]
fn a_cas_refused_without_cause_is_not_linearizable() {
    let mut h = H::new();
    h.put(1, "k", (0, 10), 1, 5).push(
        2,
        1,
        "k",
        (20, 30),
        Outcome::Refused,
        Action::Put { value: 2, condition: Condition::IfRevision { revision: 5, expected: Some(1) } },
        Some(5),
    );
    assert!(matches!(linearizable(&h.ops, 10_000)[..], [Violation::NotLinearizable { .. }]));
}

#[test]
fn the_search_budget_gives_undecided_not_a_pass() {
    let mut h = H::new();
    // Many overlapping writes of unknown outcome and reads: more configurations than 10.
    for i in 0..12u64 {
        h.push(
            i as usize,
            0,
            "k",
            (0, 1000),
            Outcome::Info,
            Action::Put { value: i + 1, condition: Condition::None },
            None,
        );
    }
    h.read(50, 0, "k", (2000, 2001), ReadMode::Strong, v(77, 1));
    assert_eq!(linearizable(&h.ops, 10), vec![Violation::Undecided { key: "k".into() }]);
}

#[test]
fn a_read_below_its_min_revision_is_stale() {
    let mut h = H::new();
    h.put(1, "k", (0, 10), 1, 5).put(1, "k", (20, 30), 2, 9).read(
        2,
        1,
        "k",
        (40, 50),
        ReadMode::MinRevision(9),
        v(1, 5),
    );
    let found = read_floors(&h.ops);
    assert!(matches!(&found[..], [Violation::StaleRead { floor: 9, missed_revision: 9, .. }]), "{found:?}");
    // A floor below the overwrite allows the old value.
    h.ops[2].action = Action::Read { mode: ReadMode::MinRevision(8), result: v(1, 5) };
    assert!(read_floors(&h.ops).is_empty());
}

#[test]
fn absence_below_the_floor_needs_a_delete() {
    let mut h = H::new();
    h.put(1, "k", (0, 10), 1, 5).read(2, 1, "k", (40, 50), ReadMode::MinRevision(5), None);
    assert!(matches!(&read_floors(&h.ops)[..], [Violation::StaleRead { missed_revision: 5, .. }]));
    // A delete of unknown outcome invoked before the read returned explains it.
    h.push(3, 0, "k", (20, 60), Outcome::Info, Action::Delete, None);
    assert!(read_floors(&h.ops).is_empty());
}

#[test]
fn a_session_without_a_cookie_that_misses_its_own_write_is_caught() {
    // The session wrote at revision 7 in region 0, then read in region 1 holding no cookie
    // (the server never issued one) and got the old value.
    let mut h = H::new();
    h.put(9, "k", (0, 10), 1, 3).put(1, "k", (20, 30), 2, 7).read(1, 1, "k", (40, 50), ReadMode::Cookie(None), v(1, 3));
    let found = read_floors(&h.ops);
    assert!(matches!(&found[..], [Violation::StaleRead { floor: 7, missed_revision: 7, .. }]), "{found:?}");
    // Another session's identical read promised nothing.
    h.ops[2].process = 2;
    assert!(read_floors(&h.ops).is_empty());
}

#[test]
fn a_local_read_going_back_in_time_is_caught() {
    let mut h = H::new();
    h.put(1, "k", (0, 10), 1, 5).put(1, "k", (20, 30), 2, 6).read(2, 1, "k", (40, 50), ReadMode::Local, v(2, 6)).read(
        2,
        1,
        "k",
        (60, 70),
        ReadMode::Local,
        v(1, 5),
    );
    let found = monotonic_local(&h.ops);
    assert!(matches!(&found[..], [Violation::NonMonotonic { seen_revision: 6, .. }]), "{found:?}");
    // The same two reads by two sessions, or on two nodes, promise nothing.
    h.ops[3].process = 3;
    assert!(monotonic_local(&h.ops).is_empty());
    h.ops[3].process = 2;
    h.ops[3].node = 2;
    assert!(monotonic_local(&h.ops).is_empty());
}

#[test]
fn a_local_read_of_absence_after_a_version_needs_a_delete() {
    let mut h = H::new();
    h.put(1, "k", (0, 10), 1, 5).read(2, 1, "k", (20, 30), ReadMode::Local, v(1, 5)).read(
        2,
        1,
        "k",
        (40, 50),
        ReadMode::Local,
        None,
    );
    assert!(matches!(&monotonic_local(&h.ops)[..], [Violation::NonMonotonic { .. }]));
    h.delete(1, "k", (32, 38), 8);
    assert!(monotonic_local(&h.ops).is_empty());
}

#[test]
fn phantom_values_and_wrong_revisions_are_caught() {
    let mut h = H::new();
    h.put(1, "k", (0, 10), 1, 5)
        .read(2, 0, "k", (20, 30), ReadMode::Local, v(1, 4))
        .read(2, 0, "k", (20, 30), ReadMode::Local, v(42, 6))
        .push(
            1,
            0,
            "k",
            (40, 50),
            Outcome::Refused,
            Action::Put { value: 3, condition: Condition::IfNoneMatch },
            Some(5),
        )
        .read(2, 0, "k", (60, 70), ReadMode::Local, v(3, 9));
    let found = integrity(&h.ops);
    assert_eq!(found.len(), 3, "{found:#?}");
}

#[test]
fn a_lost_acknowledged_write_is_caught() {
    let mut h = H::new();
    h.put(1, "k", (0, 10), 1, 5).put(2, "k", (20, 30), 2, 9).final_read("k", 100, v(1, 5));
    assert_eq!(lost_writes(&h.ops), vec![Violation::Lost { key: "k".into(), write_revision: 9, final_read: v(1, 5) }]);
    // An acknowledged put and a final absence, with no delete at all.
    let mut h = H::new();
    h.put(1, "k", (0, 10), 1, 5).final_read("k", 100, None);
    assert!(matches!(&lost_writes(&h.ops)[..], [Violation::Lost { write_revision: 5, .. }]));
    // Both are also not linearizable, since final reads are strong.
    assert!(!linearizable(&h.ops, 10_000).is_empty());
}

#[test]
fn jepsen_lines_name_the_outcome() {
    let mut h = H::new();
    h.push(1, 2, "k", (5, 9), Outcome::Info, Action::Put { value: 7, condition: Condition::IfNoneMatch }, None);
    h.ops[0].error = Some("timeout".into());
    let text = crate::history::render(&h.ops);
    assert_eq!(
        text,
        "{:time 5 :process 1 :node 2 :type :invoke :f :put :if [if-none-match *] :key \"k\"}\n\
         {:time 9 :process 1 :node 2 :type :info :f :put :if [if-none-match *] :key \"k\" :value 7 :error \"timeout\"}\n"
    );
}

#[test]
fn a_conditional_put_never_sent_says_nothing_about_the_state() {
    // The key is absent when a create-only put fails to connect: its condition would have held,
    // but it was never judged, so it is no evidence either way.
    let mut h = H::new();
    h.push(1, 0, "k", (0, 10), Outcome::Fail, Action::Put { value: 1, condition: Condition::IfNoneMatch }, None).read(
        2,
        1,
        "k",
        (20, 30),
        ReadMode::Strong,
        None,
    );
    assert!(linearizable(&h.ops, 10_000).is_empty());
    // Refused, the same put says the key existed: with nothing ever written, that is a violation.
    h.ops[0].outcome = Outcome::Refused;
    assert!(matches!(linearizable(&h.ops, 10_000)[..], [Violation::NotLinearizable { .. }]));
}
