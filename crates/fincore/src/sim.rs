//! `fincore sim`: one deterministic simulated scenario, or a swarm of them.

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;
use sim::{Bug, FaultCounts, SimOptions, SimReport, SwarmOptions};

#[derive(Debug, Args)]
pub struct SimArgs {
    /// The seed of the scenario (with --swarm: the first seed; default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Replicas in the group (3 or 5; with --swarm, default alternates 3 and 5 by seed).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=7))]
    replicas: Option<u64>,
    /// Length of the faulty phase, in ticks of 10 ms simulated time.
    #[arg(long, default_value_t = 2000)]
    ticks: u64,
    /// Run many seeds, each with its own fault profile.
    #[arg(long)]
    swarm: bool,
    /// With --swarm: stop after this many minutes (wall clock)...
    #[arg(long, default_value_t = 5.0)]
    minutes: f64,
    /// ... or after this many seeds, whichever comes first.
    #[arg(long, default_value_t = u64::MAX)]
    seeds: u64,
    /// With --swarm: runs in parallel (default: the number of cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Plant a known bug to check that the checkers catch it: ack-before-fsync, apply-twice,
    /// short-read.
    #[arg(long)]
    bug: Option<Bug>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

fn clock_seed() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Every fault count of a run or a swarm, on one line.
fn faults(f: &FaultCounts) -> String {
    format!(
        "{} msgs ({} lost, {} duplicated), {} partitions, {} crashes ({} power losses, {} restarts, {} torn writes, {} unsynced writes lost), {} corruptions ({} detected), {} clock jumps",
        f.messages,
        f.messages_lost,
        f.messages_duplicated,
        f.partitions,
        f.crashes,
        f.power_losses,
        f.restarts,
        f.torn_writes,
        f.unsynced_writes_lost,
        f.corruptions_injected,
        f.corruptions_detected,
        f.clock_jumps,
    )
}

fn describe(report: &SimReport) -> String {
    format!(
        "seed {} replicas {}: {} — {} entries committed, {} transfers acknowledged, {} applies checked; faults: {}; trace {}",
        report.seed,
        report.replicas,
        if report.ok { "ok" } else { "FAILED" },
        report.committed_entries,
        report.transfers_acknowledged,
        report.applies_checked,
        faults(&report.faults),
        &report.trace_hash[..report.trace_hash.len().min(16)],
    )
}

fn print_failure(report: &SimReport) {
    eprintln!("FAILED: {}", describe(report));
    for violation in &report.violations {
        eprintln!("  - {violation}");
    }
    if report.violations_total > report.violations.len() as u64 {
        eprintln!("  ... {} violations in all", report.violations_total);
    }
    eprintln!("  reproduce: {}", report.reproduce);
}

pub fn run(args: &SimArgs) -> anyhow::Result<ExitCode> {
    if !args.swarm {
        let report = sim::run(&SimOptions {
            seed: args.seed.unwrap_or_else(clock_seed),
            replicas: args.replicas.unwrap_or(3),
            ticks: args.ticks,
            bug: args.bug,
        });
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else if report.ok {
            println!("{}", describe(&report));
        }
        if !report.ok {
            print_failure(&report);
            return Ok(ExitCode::FAILURE);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let options = SwarmOptions {
        first_seed: args.seed.unwrap_or_else(clock_seed),
        seeds_max: args.seeds,
        time_max: Duration::from_secs_f64(args.minutes.max(0.0) * 60.0),
        ticks: args.ticks,
        replicas: args.replicas,
        threads: args
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        bug: args.bug,
    };
    let quiet = args.json;
    let report = sim::swarm(&options, |run| {
        if !run.ok {
            print_failure(run);
        } else if !quiet && std::env::var_os("FINCORE_SIM_VERBOSE").is_some() {
            println!("{}", describe(run));
        }
    });
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "swarm: {} seeds from {} in {:.0} s ({} s simulated): {} failed, {} never formed; {} entries committed, {} transfers acknowledged; faults: {}",
            report.seeds_run,
            report.first_seed,
            report.wall_seconds,
            report.simulated_seconds,
            report.failures.len(),
            report.never_formed,
            report.committed_entries,
            report.transfers_acknowledged,
            faults(&report.faults),
        );
        for failure in &report.failures {
            println!("failed: {}", failure.reproduce);
        }
    }
    Ok(if report.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
