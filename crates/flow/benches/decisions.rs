//! What one flow-control decision costs (`Gate::admit` and dropping its permit): the issue's
//! goal is under 1 µs a decision at 1,000,000 decisions/s. Measured on 1 and on 2 threads at
//! once (this machine's cores), for five rule sets: none but the default pools; a per-caller
//! rate limit and a per-API one that admit everything; the same with 64 callers; adaptive
//! protection on the pool, never overloaded (the cost of timing every call); and a limit that
//! refuses every call (the cost of a rejection). Median of several runs.
//!
//! `cargo bench --profile ci -p flow --bench decisions -- [--decisions 2000000] [--runs 5]`.
//!
//! Owns only the measurement; it must not change what it measures.

use std::sync::Arc;
use std::time::{Duration, Instant};

use flow::{Api, Gate, Rules};

struct Case {
    name: &'static str,
    rules: &'static str,
    callers: usize,
    admitted: bool,
}

const CASES: [Case; 5] = [
    Case {
        name: "default pools, no limits",
        rules: "{}",
        callers: 1,
        admitted: true,
    },
    Case {
        name: "per-caller and per-API limits, admitting",
        rules: r#"{"limits":[{"caller":"*","rate_per_second":10000000,"burst":1000000},
                              {"api":"create_transfers","rate_per_second":10000000,"burst":1000000}]}"#,
        callers: 1,
        admitted: true,
    },
    Case {
        name: "the same, 64 callers",
        rules: r#"{"limits":[{"caller":"*","rate_per_second":10000000,"burst":1000000},
                              {"api":"create_transfers","rate_per_second":10000000,"burst":1000000}]}"#,
        callers: 64,
        admitted: true,
    },
    Case {
        name: "adaptive protection on the pool, admitting",
        rules: r#"{"pools":{"write":{"adaptive":{"latency_ms":1000}}}}"#,
        callers: 1,
        admitted: true,
    },
    Case {
        name: "a limit refusing every call",
        rules: r#"{"limits":[{"api":"create_transfers","rate_per_second":1}]}"#,
        callers: 1,
        admitted: false,
    },
];

fn option(args: &[String], name: &str, default: u64) -> u64 {
    args.iter()
        .position(|arg| arg == name)
        .and_then(|at| args.get(at + 1))
        .map_or(default, |value| value.parse().expect("a number"))
}

/// Runs `decisions` decisions on `threads` threads at once; the wall time.
fn run(case: &Case, threads: usize, decisions: u64) -> Duration {
    let gate = Arc::new(Gate::new(
        Rules::from_json(case.rules).expect("valid rules"),
    ));
    let callers: Arc<Vec<String>> =
        Arc::new((0..case.callers).map(|c| format!("caller-{c}")).collect());
    // One refused call first, so the refusing case measures refusals only.
    let per_thread = decisions / threads as u64;
    let started = Instant::now();
    std::thread::scope(|scope| {
        for t in 0..threads {
            let (gate, callers) = (Arc::clone(&gate), Arc::clone(&callers));
            scope.spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .expect("a runtime");
                runtime.block_on(async {
                    let mut admitted = 0u64;
                    for i in 0..per_thread {
                        let caller = &callers[(i as usize + t) % callers.len()];
                        if gate.admit(Api::CreateTransfers, Some(caller)).await.is_ok() {
                            admitted += 1;
                        }
                    }
                    if case.admitted {
                        assert_eq!(admitted, per_thread, "{}", case.name);
                    } else {
                        assert!(admitted <= 1, "{}", case.name);
                    }
                });
            });
        }
    });
    started.elapsed()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let decisions = option(&args, "--decisions", 2_000_000);
    let runs = option(&args, "--runs", 5).max(1) as usize;
    println!(
        "flow control: one decision (admit + permit dropped), median of {runs} runs of {decisions} decisions"
    );
    for case in &CASES {
        for threads in [1usize, 2] {
            let mut ns_per_decision = Vec::new();
            let mut decisions_per_second = Vec::new();
            for _ in 0..runs {
                let elapsed = run(case, threads, decisions);
                // Each thread's view: its share of the time per decision it made.
                ns_per_decision.push(elapsed.as_nanos() as f64 * threads as f64 / decisions as f64);
                decisions_per_second.push(decisions as f64 / elapsed.as_secs_f64());
            }
            let (low, high) = (
                ns_per_decision.iter().copied().fold(f64::MAX, f64::min),
                ns_per_decision.iter().copied().fold(0.0, f64::max),
            );
            println!(
                "  {:<44} {threads} thread(s): {:>6.0} ns/decision (runs {low:.0}–{high:.0}), {:>10.0} decisions/s",
                case.name,
                median(ns_per_decision),
                median(decisions_per_second)
            );
        }
    }
}
