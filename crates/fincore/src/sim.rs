//! `fincore sim`: one deterministic simulated scenario, or a swarm of them; `--sagas` runs the
//! saga simulator (several groups and gateways) instead of the one-group Raft simulator.

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;
use sim::{
    Bug, FaultCounts, SagaBug, SagaFaultCounts, SagaSimOptions, SagaSimReport, SagaSwarmOptions,
    SimOptions, SimReport, SwarmOptions,
};

#[derive(Debug, Args)]
pub struct SimArgs {
    /// Simulate cross-group sagas: several groups (one ledger each, no Raft) and several
    /// gateways running the gateway's saga protocol under faults.
    #[arg(long)]
    sagas: bool,
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
    /// short-read; with --sagas: cancel-as-confirm, confirm-on-retry.
    #[arg(long)]
    bug: Option<String>,
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

/// What the command shows of one run, from either simulator.
trait Run: serde::Serialize {
    fn ok(&self) -> bool;
    /// The run on one line.
    fn describe(&self) -> String;
    fn violations(&self) -> (&[String], u64);
    fn reproduce(&self) -> &str;
}

impl Run for SimReport {
    fn ok(&self) -> bool {
        self.ok
    }

    fn describe(&self) -> String {
        format!(
            "seed {} replicas {}: {} — {} entries committed, {} transfers acknowledged, {} applies checked; faults: {}; trace {}",
            self.seed,
            self.replicas,
            if self.ok { "ok" } else { "FAILED" },
            self.committed_entries,
            self.transfers_acknowledged,
            self.applies_checked,
            faults(&self.faults),
            &self.trace_hash[..self.trace_hash.len().min(16)],
        )
    }

    fn violations(&self) -> (&[String], u64) {
        (&self.violations, self.violations_total)
    }

    fn reproduce(&self) -> &str {
        &self.reproduce
    }
}

impl Run for SagaSimReport {
    fn ok(&self) -> bool {
        self.ok
    }

    fn describe(&self) -> String {
        format!(
            "sagas seed {}: {} — {} groups, {} gateways, {} transfers ({} sagas) submitted: {} answered ok, {} failed, {} unanswered; homes {} confirmed, {} cancelled; {} driven by resolvers; {} batches applied; faults: {}; trace {}",
            self.seed,
            if self.ok { "ok" } else { "FAILED" },
            self.groups,
            self.gateways,
            self.transfers_submitted,
            self.sagas_submitted,
            self.answered_ok,
            self.answered_failed,
            self.unanswered,
            self.sagas_confirmed,
            self.sagas_cancelled,
            self.resolver_sagas,
            self.batches_applied,
            saga_faults(&self.faults),
            &self.trace_hash[..self.trace_hash.len().min(16)],
        )
    }

    fn violations(&self) -> (&[String], u64) {
        (&self.violations, self.violations_total)
    }

    fn reproduce(&self) -> &str {
        &self.reproduce
    }
}

fn print_failure(report: &impl Run) {
    eprintln!("FAILED: {}", report.describe());
    let (violations, total) = report.violations();
    for violation in violations {
        eprintln!("  - {violation}");
    }
    if total > violations.len() as u64 {
        eprintln!("  ... {total} violations in all");
    }
    eprintln!("  reproduce: {}", report.reproduce());
}

/// Prints one run's report; fails if the run found a violation.
fn finish_run(report: &impl Run, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else if report.ok() {
        println!("{}", report.describe());
    }
    if !report.ok() {
        print_failure(report);
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// What a swarm says of each run as it ends: failures always, the others if asked.
fn swarm_progress<R: Run>(json: bool) -> impl Fn(&R) + Sync {
    move |run| {
        if !run.ok() {
            print_failure(run);
        } else if !json && std::env::var_os("FINCORE_SIM_VERBOSE").is_some() {
            println!("{}", run.describe());
        }
    }
}

/// Prints a swarm's report (`summary` unless `json`); fails if any run failed.
fn finish_swarm<R: Run>(
    report: &impl serde::Serialize,
    summary: String,
    failures: &[R],
    json: bool,
) -> anyhow::Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        println!("{summary}");
        for failure in failures {
            println!("failed: {}", failure.reproduce());
        }
    }
    Ok(if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn threads(args: &SimArgs) -> usize {
    args.threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

fn bug<B: std::str::FromStr<Err = String>>(args: &SimArgs) -> anyhow::Result<Option<B>> {
    args.bug
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(anyhow::Error::msg)
}

pub fn run(args: &SimArgs) -> anyhow::Result<ExitCode> {
    if args.sagas {
        return run_sagas(args);
    }
    let bug: Option<Bug> = bug(args)?;
    if !args.swarm {
        let report = sim::run(&SimOptions {
            seed: args.seed.unwrap_or_else(clock_seed),
            replicas: args.replicas.unwrap_or(3),
            ticks: args.ticks,
            bug,
        });
        return finish_run(&report, args.json);
    }
    let options = SwarmOptions {
        first_seed: args.seed.unwrap_or_else(clock_seed),
        seeds_max: args.seeds,
        time_max: Duration::from_secs_f64(args.minutes.max(0.0) * 60.0),
        ticks: args.ticks,
        replicas: args.replicas,
        threads: threads(args),
        bug,
    };
    let report = sim::swarm(&options, swarm_progress(args.json));
    let summary = format!(
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
    finish_swarm(&report, summary, &report.failures, args.json)
}

/// Every fault count of a saga run or swarm, on one line.
fn saga_faults(f: &SagaFaultCounts) -> String {
    format!(
        "{} calls ({} lost before applying, {} answers lost, {} duplicated, {} to unreachable groups), {} outages, {} clock jumps, {} gateway crashes",
        f.calls,
        f.lost_before_apply,
        f.answers_lost,
        f.duplicated,
        f.unreachable,
        f.outages,
        f.clock_jumps,
        f.gateway_crashes,
    )
}

/// `fincore sim --sagas`: one saga scenario, or a swarm of them.
fn run_sagas(args: &SimArgs) -> anyhow::Result<ExitCode> {
    let bug: Option<SagaBug> = bug(args)?;
    if !args.swarm {
        let report = sim::run_sagas(&SagaSimOptions {
            seed: args.seed.unwrap_or_else(clock_seed),
            bug,
        });
        return finish_run(&report, args.json);
    }
    let options = SagaSwarmOptions {
        first_seed: args.seed.unwrap_or_else(clock_seed),
        seeds_max: args.seeds,
        time_max: Duration::from_secs_f64(args.minutes.max(0.0) * 60.0),
        threads: threads(args),
        bug,
    };
    let report = sim::swarm_sagas(&options, swarm_progress(args.json));
    let summary = format!(
        "saga swarm: {} seeds from {} in {:.0} s ({} s simulated): {} failed; {} sagas submitted, homes {} confirmed, {} cancelled, {} driven by resolvers; faults: {}",
        report.seeds_run,
        report.first_seed,
        report.wall_seconds,
        report.simulated_seconds,
        report.failures.len(),
        report.sagas_submitted,
        report.sagas_confirmed,
        report.sagas_cancelled,
        report.resolver_sagas,
        saga_faults(&report.faults),
    );
    finish_swarm(&report, summary, &report.failures, args.json)
}
