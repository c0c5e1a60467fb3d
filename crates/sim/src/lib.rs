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
//!
//! `run_sagas` (the `sagas` module) simulates sagas across several groups and gateways instead:
//! the gateway's own saga protocol over in-memory groups, with its own faults and checkers.

mod disk;
mod faults;
mod network;
mod oracle;
mod run;
mod sagas;
mod types;
mod workload;
mod world;

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub use faults::{FaultCounts, FaultProfile};
pub use run::{SimOptions, SimReport, TICK, run};
pub use sagas::{
    SagaBug, SagaFaultCounts, SagaFaultProfile, SagaSimOptions, SagaSimReport, SagaSwarmOptions,
    SagaSwarmReport, run_sagas, swarm_sagas,
};
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
    let seeds = SeedRange {
        first_seed: options.first_seed,
        seeds_max: options.seeds_max,
        time_max: options.time_max,
        threads: options.threads,
    };
    let initial = SwarmReport {
        first_seed: options.first_seed,
        ..SwarmReport::default()
    };
    let run_seed = |seed: u64| {
        let replicas = options
            .replicas
            .unwrap_or(if seed.is_multiple_of(3) { 5 } else { 3 });
        let run = run(&SimOptions {
            seed,
            replicas,
            ticks: options.ticks,
            bug: options.bug,
        });
        progress(&run);
        run
    };
    let mut report = for_each_seed(&seeds, initial, run_seed, |report, run| {
        report.seeds_run += 1;
        add_counts(&mut report.faults, &run.faults);
        report.committed_entries += run.committed_entries;
        report.transfers_acknowledged += run.transfers_acknowledged;
        report.never_formed += u64::from(run.never_formed);
        report.simulated_seconds += run.simulated_ms / 1000;
        if !run.ok {
            report.failures.push(run);
        }
    });
    report.failures.sort_by_key(|r| r.seed);
    report.wall_seconds = started.elapsed().as_secs_f64();
    report
}

/// Which seeds a swarm runs, and on how many threads.
pub(crate) struct SeedRange {
    pub first_seed: u64,
    /// Stop after this many seeds...
    pub seeds_max: u64,
    /// ... or once this much wall-clock time has passed, whichever comes first.
    pub time_max: Duration,
    pub threads: usize,
}

/// Runs `run` for each seed of `seeds` on its threads until either bound is hit, folding every
/// result into `total` (under one lock) as it comes.
pub(crate) fn for_each_seed<T: Send, R>(
    seeds: &SeedRange,
    total: T,
    run: impl Fn(u64) -> R + Sync,
    fold: impl Fn(&mut T, R) + Sync,
) -> T {
    let started = Instant::now();
    let next = AtomicU64::new(0);
    let total = Mutex::new(total);
    std::thread::scope(|scope| {
        for _ in 0..seeds.threads.max(1) {
            scope.spawn(|| {
                loop {
                    if started.elapsed() >= seeds.time_max {
                        return;
                    }
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= seeds.seeds_max {
                        return;
                    }
                    let result = run(seeds.first_seed.wrapping_add(n));
                    fold(&mut total.lock().expect("never poisoned"), result);
                }
            });
        }
    });
    total.into_inner().expect("never poisoned")
}

/// A current-thread runtime whose clock is simulated (paused: it jumps to the next timer
/// whenever every task waits) and whose internal RNG is seeded.
pub(crate) fn paused_runtime(seed: u64) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .rng_seed(tokio::runtime::RngSeed::from_bytes(&seed.to_le_bytes()))
        .build()
        .expect("building a tokio runtime")
}

/// What a caught panic said.
pub(crate) fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic".into())
}
