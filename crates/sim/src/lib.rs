//! fincore's deterministic cluster simulator (`fincore sim`).
//!
//! A whole replica group (real openraft, and the production Raft log store, journal and ledger
//! state machine) and its clients run in one process on a single-threaded tokio runtime whose
//! clock is simulated (paused time: it jumps to the next timer whenever every task waits). Only
//! the network (at openraft's network trait) and the disks (under the journal's file-I/O seam)
//! are simulated. Every random choice (the faults, the workload, message delays, and openraft's
//! own election timeouts through its seeded runtime) comes from the run's seed, so a seed
//! replays the same run exactly; the trace hash proves it. Checkers compare every apply and
//! every reply with a naive reference model.

mod disk;
mod faults;
mod network;
mod oracle;
mod run;
mod types;
mod workload;
mod world;

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub use faults::{FaultCounts, FaultProfile};
pub use run::{SimOptions, SimReport, TICK, run};
pub use workload::OpCounts;
pub use world::Bug;

/// A swarm: many seeds, each with its own fault profile.
#[derive(Debug, Clone)]
pub struct SwarmOptions {
    pub first_seed: u64,
    /// Stop after this many seeds...
    pub seeds_max: u64,
    /// ... or once this much wall-clock time has passed, whichever comes first.
    pub time_max: Duration,
    pub ticks: u64,
    /// Replicas per run; `None` alternates 3 and 5 by seed.
    pub replicas: Option<u64>,
    pub threads: usize,
    pub bug: Option<Bug>,
}

/// What a swarm found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SwarmReport {
    pub seeds_run: u64,
    pub first_seed: u64,
    pub failures: Vec<SimReport>,
    pub faults: FaultCounts,
    pub committed_entries: u64,
    pub transfers_acknowledged: u64,
    /// Runs whose group never formed (its only copy of the initial membership rotted).
    pub never_formed: u64,
    pub simulated_seconds: u64,
    pub wall_seconds: f64,
}

fn add_counts(total: &mut FaultCounts, run: &FaultCounts) {
    total.messages += run.messages;
    total.messages_lost += run.messages_lost;
    total.messages_duplicated += run.messages_duplicated;
    total.partitions += run.partitions;
    total.crashes += run.crashes;
    total.power_losses += run.power_losses;
    total.restarts += run.restarts;
    total.torn_writes += run.torn_writes;
    total.unsynced_writes_lost += run.unsynced_writes_lost;
    total.corruptions_injected += run.corruptions_injected;
    total.corruptions_detected += run.corruptions_detected;
    total.clock_jumps += run.clock_jumps;
}

/// Runs seeds `first_seed, first_seed + 1, …` on `threads` threads until either bound is hit.
/// `progress` is told about every finished run.
pub fn swarm(options: &SwarmOptions, progress: impl Fn(&SimReport) + Sync) -> SwarmReport {
    let started = Instant::now();
    let next = AtomicU64::new(0);
    let report = Mutex::new(SwarmReport {
        first_seed: options.first_seed,
        ..SwarmReport::default()
    });
    std::thread::scope(|scope| {
        for _ in 0..options.threads.max(1) {
            scope.spawn(|| {
                loop {
                    if started.elapsed() >= options.time_max {
                        return;
                    }
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= options.seeds_max {
                        return;
                    }
                    let seed = options.first_seed.wrapping_add(n);
                    let replicas =
                        options
                            .replicas
                            .unwrap_or(if seed.is_multiple_of(3) { 5 } else { 3 });
                    let run = run(&SimOptions {
                        seed,
                        replicas,
                        ticks: options.ticks,
                        bug: options.bug,
                    });
                    progress(&run);
                    let mut report = report.lock().expect("never poisoned");
                    report.seeds_run += 1;
                    add_counts(&mut report.faults, &run.faults);
                    report.committed_entries += run.committed_entries;
                    report.transfers_acknowledged += run.transfers_acknowledged;
                    report.never_formed += u64::from(run.never_formed);
                    report.simulated_seconds += run.simulated_ms / 1000;
                    if !run.ok {
                        report.failures.push(run);
                    }
                }
            });
        }
    });
    let mut report = report.into_inner().expect("never poisoned");
    report.failures.sort_by_key(|r| r.seed);
    report.wall_seconds = started.elapsed().as_secs_f64();
    report
}
