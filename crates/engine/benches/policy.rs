//! One bucket policy evaluation: the four-statement policy of `bench/policy-cost.sh` against
//! the request its GETs make (none of the statements matches, so all four are tried). The
//! whole-server figure is in that script's output; this is the evaluation alone, in ns.
//!
//! ```sh
//! cargo bench -p meridian-engine --bench policy      # EVALUATIONS=1000000 ROUNDS=5
//! ```

#![allow(clippy::unwrap_used)] // a benchmark: a failed unwrap is a failed run

use std::collections::HashMap;
use std::time::Instant;

use meridian_engine::policy::{Policy, PolicyRequest, Verdict};

/// The policy `bench/policy-cost.sh` puts on its bucket.
const POLICY: &str = include_str!("../../../bench/policy-cost.json");

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let evaluations = env_u64("EVALUATIONS", 1_000_000).max(1);
    let rounds = env_u64("ROUNDS", 5).max(1);
    let policy = Policy::parse(POLICY, "withpolicy").unwrap();
    let values = HashMap::from([
        ("aws:sourceip", "127.0.0.1".to_string()),
        ("aws:securetransport", "false".to_string()),
        ("aws:useragent", "meridian-bench".to_string()),
        ("aws:username", "bench".to_string()),
    ]);
    let request = PolicyRequest {
        action: "s3:GetObject".into(),
        resource: "arn:aws:s3:::withpolicy/meridian-bench/ab12/p000000417".into(),
        key: Some("bench".into()),
        values,
    };
    assert_eq!(policy.evaluate(&request), Verdict::Neither, "no statement matches the bench's GET");
    let mut per = Vec::new();
    for _ in 0..rounds {
        let started = Instant::now();
        for _ in 0..evaluations {
            std::hint::black_box(policy.evaluate(std::hint::black_box(&request)));
        }
        per.push(started.elapsed().as_nanos() as f64 / evaluations as f64);
    }
    per.sort_by(f64::total_cmp);
    let rounds: Vec<String> = per.iter().map(|ns| format!("{ns:.0}")).collect();
    println!(
        "policy evaluation (4 statements, none matching): median {:.0} ns ({} ns)",
        per[per.len() / 2],
        rounds.join(", ")
    );
}
