//! `fincore bench`: TigerBeetle's benchmark workload, against a node's write path in this
//! process (`--embedded`: no network, the files `serve` writes) or a node over gRPC (its own, or
//! `--addr`).
//!
//! Workload (TigerBeetle's `tigerbeetle benchmark` defaults): 10,000 accounts with `history`,
//! then transfers with ids 1..N, debit and credit accounts drawn (distinct) uniformly or by a
//! Zipf law over all accounts, amount = floor(Exp(mean 10,000)) + 1, ledger 2, batches of
//! 8,189, one batch in flight per client (embedded: two, as a node's pipeline would keep). The
//! journal syncs for real; the time to build each batch counts against throughput, as it would
//! for a client.

mod cdc;
mod embedded;
mod groups;
mod network;
mod registry;
mod traces;
mod wipe;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use ledger::BATCH_EVENTS_MAX;
use serde::Serialize;

pub use wipe::CatchUpReport;
pub use workload::{AccountDistribution, IdOrder};

/// Benchmarks of other parts than the ledger.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum BenchOther {
    /// The service registry: publishers, subscribers, change→push latency, compression,
    /// memory per publisher (docs/registry.md).
    Registry(registry::RegistryBenchArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    other: Option<BenchOther>,
    /// Run a node's replica in this process (the files `serve` writes, real fsync, no network).
    #[arg(long)]
    embedded: bool,
    /// Benchmark a running node at this gRPC address instead of starting one.
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "embedded")]
    addr: Option<String>,
    /// The API key to send (role write) when benchmarking a running node with --addr; a group
    /// the bench starts itself gets a key of its own.
    #[arg(
        long,
        value_name = "KEY",
        env = "FINCORE_API_KEY",
        hide_env_values = true,
        requires = "addr"
    )]
    api_key: Option<String>,
    /// Network mode: start a replica group of this many nodes (1, 3 or 5).
    #[arg(long, default_value_t = 1, value_parser = parse_replicas)]
    replicas: u64,
    /// Network mode: kill -9 the leader this many seconds into the transfers, and report the
    /// longest write pause (`write_pause_ms_max`).
    #[arg(long, value_name = "SECONDS", conflicts_with = "addr")]
    kill_leader_at: Option<f64>,
    /// Network mode: this many seconds into the transfers, kill -9 a follower, remove it from
    /// the group, wipe its data directory, start a new member (new id, `--join`, empty
    /// directory) and add it while the load goes on; report its catch-up time, whether it
    /// caught up from a snapshot, and every node's peak RSS.
    #[arg(long, value_name = "SECONDS", conflicts_with_all = ["addr", "kill_leader_at"])]
    wipe_follower_at: Option<f64>,
    /// Network mode: the nodes take a snapshot every this many batches (serve's
    /// `--checkpoint-interval`; 0: never). Default: 0, or 200 with --wipe-follower-at.
    #[arg(long, value_name = "BATCHES", conflicts_with_all = ["addr", "embedded"])]
    checkpoint_interval: Option<u64>,
    /// Concurrent clients, each with one batch in flight (network mode).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=256))]
    clients: u64,
    /// Number of accounts.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(2..=100_000_000))]
    accounts: u64,
    /// Number of transfers.
    #[arg(long, default_value_t = 10_000_000, value_parser = clap::value_parser!(u64).range(1..=4_000_000_000))]
    transfers: u64,
    /// Events per batch.
    #[arg(long, default_value_t = BATCH_EVENTS_MAX as u64, value_parser = clap::value_parser!(u64).range(1..=BATCH_EVENTS_MAX as u64))]
    batch: u64,
    /// How debit and credit accounts are drawn.
    #[arg(long, value_enum, default_value_t = AccountDistribution::Uniform)]
    distribution: AccountDistribution,
    /// Transfer ids 1..N in order, or random 128-bit ids.
    #[arg(long, value_enum, default_value_t = IdOrder::Sequential)]
    id_order: IdOrder,
    /// Data directory to use (must be empty or absent; kept afterwards). Default: a
    /// temporary directory, removed afterwards.
    #[arg(long, value_name = "DIR", conflicts_with = "addr")]
    data_dir: Option<PathBuf>,
    /// Seed of the workload generator.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Network mode: run this many rounds, each a single node then the `--replicas` group
    /// (alternating, so both see the same machine), and report the medians and their ratio.
    #[arg(long, value_name = "ROUNDS", value_parser = clap::value_parser!(u64).range(1..=100),
          conflicts_with_all = ["embedded", "addr", "data_dir", "kill_leader_at", "wipe_follower_at"])]
    vs_single: Option<u64>,
    /// Network mode: run this many rounds, each the `--replicas` group as it runs by default
    /// (mutual TLS between replicas, API keys checked) then the same group open
    /// (`--insecure-peers --insecure-no-auth`), alternating, and report the medians and their
    /// ratio: what security costs.
    #[arg(long, value_name = "ROUNDS", value_parser = clap::value_parser!(u64).range(1..=100),
          conflicts_with_all = ["embedded", "addr", "data_dir", "kill_leader_at", "wipe_follower_at", "vs_single"])]
    vs_insecure: Option<u64>,
    /// Network mode: serve the client listeners over TLS (`serve --tls-cert`, a development
    /// certificate for 127.0.0.1), the clients trusting its authority. With --vs-insecure, the
    /// secured runs only.
    #[arg(long, conflicts_with_all = ["embedded", "addr"])]
    client_tls: bool,
    /// Set by `--vs-insecure` for its open runs: nodes start with `--insecure-peers
    /// --insecure-no-auth` and the client sends no key.
    #[arg(skip)]
    open: bool,
    /// Start this many ledger groups (each of --replicas replicas) and one `fincore gateway`
    /// over them, and run the workload through the gateway: transfers inside one group (both
    /// accounts in the debit account's group, the id minted into its slot) and, with
    /// --cross-group-ratio, across groups (run as sagas); then check that every account's
    /// debits equal the credits overall.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=groups::GROUPS_LOCAL_MAX),
          conflicts_with_all = ["embedded", "addr", "kill_leader_at", "wipe_follower_at", "vs_single", "vs_insecure", "client_tls"])]
    groups: Option<u64>,
    /// With --groups: the share of transfers (0 to 1, default 0) between accounts of
    /// different groups, each carried out as a saga by the gateway (docs/gateway.md).
    #[arg(long, value_name = "RATIO", requires = "groups")]
    cross_group_ratio: Option<f64>,
    /// With --groups: then run the same transfers against one group directly (no gateway) and
    /// report the gateway's throughput as a ratio of the direct one.
    #[arg(long, requires = "groups")]
    vs_direct: bool,
    /// With --groups: measure what flow control costs through the gateway, in this many
    /// rounds of two runs on fresh groups: the gateway without rules (its default pools), and
    /// with a rule set that limits every caller and API but admits the whole workload
    /// (`groups::FLOW_RULES_BENCH`). Reports the medians and the median of the rounds' ratios.
    #[arg(long, value_name = "ROUNDS", requires = "groups", conflicts_with = "vs_direct",
          value_parser = clap::value_parser!(u64).range(1..=100))]
    vs_flow: Option<u64>,
    /// Network mode: measure the change-event path, in rounds of three runs of a group started
    /// here: events off (`FINCORE_EVENTS=off`), events on with no consumer, and events on with
    /// `fincore cdc` publishing to NATS JetStream and `fincore project` projecting into
    /// PostgreSQL (a database and a stream of the run's own, removed after it). Reports the
    /// ledger's throughput of each and their ratios, the publisher's and the projector's
    /// events/s, and the lag from commit to message in the stream and to row in the database.
    #[arg(long, conflicts_with_all = ["embedded", "addr", "kill_leader_at", "wipe_follower_at", "vs_single", "vs_insecure", "groups", "data_dir"])]
    cdc: bool,
    /// With --cdc: how many rounds of the three runs (medians reported).
    #[arg(long, value_name = "ROUNDS", default_value_t = 1, requires = "cdc",
          value_parser = clap::value_parser!(u64).range(1..=100))]
    cdc_rounds: u64,
    /// With --cdc: the NATS server the publisher publishes to.
    #[arg(
        long,
        value_name = "URL",
        default_value = "nats://127.0.0.1:4222",
        requires = "cdc"
    )]
    nats: String,
    /// With --cdc: a PostgreSQL database URL; each run projects into a database of its own on
    /// that server (created and dropped with the connection given).
    #[arg(
        long,
        value_name = "URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres",
        requires = "cdc"
    )]
    postgres: String,
    /// Network mode: offer at most this many transfers per second (all clients together; each
    /// batch is sent no earlier than its share of the schedule), instead of as fast as the
    /// group answers.
    #[arg(long, value_name = "TRANSFERS_PER_SECOND", conflicts_with_all = ["embedded", "groups"],
          value_parser = clap::value_parser!(u64).range(1..))]
    rate: Option<u64>,
    /// Network mode: measure what traces cost, in this many rounds of three runs of a group
    /// started here: no trace export, export of 1 % of requests, and of all of them, each to
    /// an OTLP/gRPC receiver in this process (`serve --otlp --trace-sampling`). Reports the
    /// medians, their ratios to no export, and the spans each run exported.
    #[arg(long, value_name = "ROUNDS", value_parser = clap::value_parser!(u64).range(1..=100),
          conflicts_with_all = ["embedded", "addr", "kill_leader_at", "wipe_follower_at", "vs_single", "vs_insecure", "groups", "cdc", "data_dir"])]
    vs_tracing: Option<u64>,
    /// Set by `--vs-tracing` for its runs with export: the collector and the sampling ratio.
    #[arg(skip)]
    traces: Option<(String, f64)>,
    /// Set by `--cdc` for its runs without events: the nodes start with `FINCORE_EVENTS=off`.
    #[arg(skip)]
    events_off: bool,
    /// Set by `--cdc` for its runs with consumers.
    #[arg(skip)]
    consumers: Option<cdc::ConsumerPlan>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Embedded mode: afterwards, measure restarts (a crash replaying the whole log, then
    /// writing a snapshot, then a restart from it).
    #[arg(long, requires = "embedded")]
    restart: bool,
}

/// Refuses combinations clap cannot express.
fn check_args(args: &BenchArgs) -> anyhow::Result<()> {
    if let Some(seconds) = args.wipe_follower_at {
        if args.embedded || args.replicas < 3 {
            anyhow::bail!(
                "--wipe-follower-at needs a replica group of 3 or 5 (--replicas), not embedded \
                 or a single node: the group must keep a majority while a follower is replaced"
            );
        }
        if !(seconds.is_finite() && seconds >= 0.0) {
            anyhow::bail!("--wipe-follower-at {seconds}: give seconds, 0 or more");
        }
    }
    if let Some(ratio) = args.cross_group_ratio
        && !(0.0..=1.0).contains(&ratio)
    {
        anyhow::bail!("--cross-group-ratio {ratio}: give a share from 0 to 1");
    }
    Ok(())
}

fn parse_replicas(text: &str) -> Result<u64, String> {
    match text {
        "1" | "3" | "5" => Ok(text.parse().expect("a listed number")),
        _ => Err(format!("{text:?}: a replica group has 1, 3 or 5 nodes")),
    }
}

#[derive(Debug, Serialize)]
pub struct LatencyMs {
    pub p1: f64,
    pub p50: f64,
    pub p99: f64,
    pub p100: f64,
}

impl LatencyMs {
    fn of(mut latencies: Vec<Duration>) -> LatencyMs {
        latencies.sort_unstable();
        let at = |fraction: f64| {
            if latencies.is_empty() {
                return 0.0;
            }
            let index = ((latencies.len() - 1) as f64 * fraction).round() as usize;
            latencies[index].as_secs_f64() * 1e3
        };
        LatencyMs {
            p1: at(0.01),
            p50: at(0.50),
            p99: at(0.99),
            p100: at(1.0),
        }
    }
}

/// Seconds spent on the restart measurements of `--restart` (the `checkpoint` fields measure
/// the replica's snapshot; their names are kept for the JSON's readers).
#[derive(Debug, Serialize)]
pub struct RestartReport {
    pub replay_records: u64,
    pub replay_seconds: f64,
    pub checkpoint_seconds: f64,
    pub checkpoint_bytes: u64,
    pub from_checkpoint_seconds: f64,
}

/// What the transfer phase measured.
#[derive(Debug)]
pub struct Measured {
    pub seconds: f64,
    pub latencies: Vec<Duration>,
    pub transfers_failed: u64,
    pub peak_rss_bytes: u64,
    pub journal: Option<JournalFigures>,
    pub restart: Option<RestartReport>,
    pub write_pause_ms_max: Option<f64>,
    /// How long after the last acknowledgement every replica had applied it (replicated runs;
    /// part of `seconds`).
    pub replicas_caught_up_ms: Option<f64>,
    /// Raft term increments during the measured phase (network runs on nodes started here).
    pub leader_changes: Option<u64>,
    /// `--wipe-follower-at`: the new member's catch-up and every node's peak RSS.
    pub catch_up: Option<CatchUpReport>,
    /// `--cdc` runs with consumers: what the publisher and the projector delivered.
    pub cdc: Option<cdc::CdcFigures>,
}

#[derive(Debug, Serialize)]
pub struct JournalFigures {
    pub syncs: u64,
    pub sync_ms_mean: f64,
    pub bytes: u64,
}

#[derive(Debug, Serialize)]
struct Report {
    mode: &'static str,
    replicas: u64,
    clients: u64,
    accounts: u64,
    transfers: u64,
    batch: u64,
    distribution: AccountDistribution,
    id_order: IdOrder,
    seed: u64,
    transfers_per_second: f64,
    seconds: f64,
    batch_latency_ms: LatencyMs,
    transfers_failed: u64,
    /// Of this process (embedded) or of the node (network, when it was started here).
    peak_rss_bytes: u64,
    journal: Option<JournalFigures>,
    restart: Option<RestartReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    write_pause_ms_max: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    replicas_caught_up_ms: Option<f64>,
    /// Network runs on nodes started here: how many times the Raft term went up from the start
    /// of the transfers to the end of the measured phase (every replica caught up), i.e. the
    /// highest term any running replica reports at the end minus the highest at the start.
    /// Every election adds one, won or not, so 0 means the first leader served the whole run.
    #[serde(skip_serializing_if = "Option::is_none")]
    leader_changes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    catch_up: Option<CatchUpReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cdc: Option<cdc::CdcFigures>,
}

/// Peak resident set size of a process (Linux `VmHWM`), 0 if unknown.
pub fn peak_rss_bytes(pid: &str) -> u64 {
    testkit::proc_status_bytes(pid, "VmHWM")
}

/// Both sides of one `--vs-single` comparison, and every run.
#[derive(Debug, Serialize)]
struct Comparison {
    replicas: u64,
    rounds: u64,
    single_transfers_per_second_median: f64,
    replicated_transfers_per_second_median: f64,
    /// Replicated median / single-node median.
    ratio: f64,
    single: Vec<Report>,
    replicated: Vec<Report>,
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_unstable_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Both sides of one `--vs-insecure` comparison, and every run.
#[derive(Debug, Serialize)]
struct SecurityComparison {
    replicas: u64,
    rounds: u64,
    /// Mutual TLS between replicas and API keys checked (how nodes run by default).
    secured_transfers_per_second_median: f64,
    /// `--insecure-peers --insecure-no-auth`.
    open_transfers_per_second_median: f64,
    /// Secured median / open median.
    ratio: f64,
    secured: Vec<Report>,
    open: Vec<Report>,
}

/// Runs `rounds` rounds of every variant in turn (`(label, args)`), printing a line per run
/// unless `--json`; returns each variant's reports.
fn alternate(
    args: &BenchArgs,
    rounds: u64,
    variants: &[(&str, BenchArgs)],
) -> anyhow::Result<Vec<Vec<Report>>> {
    let mut reports: Vec<Vec<Report>> = variants.iter().map(|_| Vec::new()).collect();
    for round in 1..=rounds {
        for ((label, run_args), reports) in variants.iter().zip(&mut reports) {
            let report = report(run_args, "network", network::run(run_args)?);
            if !args.json {
                println!(
                    "round {round}/{rounds}: {label} {:.0} transfers/s (batch p50 {:.2} ms, {} leader change(s))",
                    report.transfers_per_second,
                    report.batch_latency_ms.p50,
                    report.leader_changes.unwrap_or(0)
                );
            }
            reports.push(report);
        }
    }
    Ok(reports)
}

fn median_rate(reports: &[Report]) -> f64 {
    median(reports.iter().map(|r| r.transfers_per_second).collect())
}

/// Exit status 1 if any run failed a transfer.
fn exit_code(reports: &[Vec<Report>]) -> ExitCode {
    if reports.iter().flatten().any(|r| r.transfers_failed > 0) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// `--vs-insecure`: the group secured and open, alternating, on the same machine.
fn compare_security(args: &BenchArgs, rounds: u64) -> anyhow::Result<ExitCode> {
    let replicas = args.replicas;
    let variant = |open| BenchArgs {
        open,
        ..args.clone()
    };
    let secured = if args.client_tls {
        "secured, client TLS"
    } else {
        "secured"
    };
    let mut reports = alternate(
        args,
        rounds,
        &[
            (&format!("{replicas} replica(s) {secured}"), variant(false)),
            (&format!("{replicas} replica(s) open   "), variant(true)),
        ],
    )?;
    let code = exit_code(&reports);
    let (open, secured) = (
        reports.pop().unwrap_or_default(),
        reports.pop().unwrap_or_default(),
    );
    let comparison = SecurityComparison {
        replicas,
        rounds,
        secured_transfers_per_second_median: median_rate(&secured),
        open_transfers_per_second_median: median_rate(&open),
        ratio: median_rate(&secured) / median_rate(&open),
        secured,
        open,
    };
    if args.json {
        println!("{}", serde_json::to_string(&comparison)?);
    } else {
        println!(
            "medians over {rounds} round(s), {replicas} replica(s): secured {:.0} transfers/s, open {:.0} transfers/s, ratio {:.3}",
            comparison.secured_transfers_per_second_median,
            comparison.open_transfers_per_second_median,
            comparison.ratio
        );
    }
    Ok(code)
}

/// The three sides of `--cdc`, and every run.
#[derive(Debug, Serialize)]
struct CdcComparison {
    replicas: u64,
    rounds: u64,
    offered_transfers_per_second: Option<u64>,
    events_off_transfers_per_second_median: f64,
    events_on_transfers_per_second_median: f64,
    cdc_transfers_per_second_median: f64,
    /// Events on (no consumer) median / events off median: what writing the events costs.
    events_ratio: f64,
    /// With publisher and projector median / events off median: what the whole path costs.
    cdc_ratio: f64,
    publisher_events_per_second_median: f64,
    publisher_lag_ms_p50_median: f64,
    publisher_lag_ms_p99_median: f64,
    projector_events_per_second_median: f64,
    projector_peak_events_per_second_median: f64,
    projector_caught_up_after_load_ms_median: f64,
    projector_lag_ms_p50_median: f64,
    projector_lag_ms_p99_median: f64,
    events_off: Vec<Report>,
    events_on: Vec<Report>,
    cdc: Vec<Report>,
}

/// `--cdc`: events off, events on, and events on with a publisher and a projector, alternating.
fn compare_cdc(args: &BenchArgs) -> anyhow::Result<ExitCode> {
    let (replicas, rounds) = (args.replicas, args.cdc_rounds);
    let mut reports: Vec<Vec<Report>> = vec![Vec::new(), Vec::new(), Vec::new()];
    for round in 1..=rounds {
        let label = format!("{}_{round}", std::process::id());
        let variants = [
            (
                "events off          ",
                BenchArgs {
                    events_off: true,
                    ..args.clone()
                },
            ),
            ("events on           ", args.clone()),
            (
                "events + cdc + SQL  ",
                BenchArgs {
                    consumers: Some(cdc::ConsumerPlan {
                        nats: args.nats.clone(),
                        postgres: args.postgres.clone(),
                        label,
                    }),
                    ..args.clone()
                },
            ),
        ];
        for ((name, run_args), reports) in variants.iter().zip(&mut reports) {
            let report = report(run_args, "network", network::run(run_args)?);
            if !args.json {
                print!(
                    "round {round}/{rounds}: {name} {:.0} transfers/s (batch p50 {:.2} ms)",
                    report.transfers_per_second, report.batch_latency_ms.p50
                );
                match &report.cdc {
                    Some(c) => println!(
                        "; {} events: publisher {:.0}/s (lag p50 {:.0} ms, p99 {:.0} ms, {:.1} CPU s), projector {:.0}/s (peak {:.0}/s, lag p50 {:.0} ms, p99 {:.0} ms, caught up {:.0} ms after the load, {:.1} CPU s)",
                        c.projector.events,
                        c.publisher.events_per_second,
                        c.publisher.lag_ms_p50,
                        c.publisher.lag_ms_p99,
                        c.publisher.cpu_seconds,
                        c.projector.events_per_second,
                        c.projector.peak_events_per_second,
                        c.projector.lag_ms_p50,
                        c.projector.lag_ms_p99,
                        c.projector.caught_up_after_load_ms,
                        c.projector.cpu_seconds
                    ),
                    None => println!(),
                }
            }
            reports.push(report);
        }
    }
    let code = exit_code(&reports);
    let cdc_runs = reports.pop().unwrap_or_default();
    let events_on = reports.pop().unwrap_or_default();
    let events_off = reports.pop().unwrap_or_default();
    let of = |pick: fn(&cdc::CdcFigures) -> f64| {
        median(
            cdc_runs
                .iter()
                .filter_map(|r| r.cdc.as_ref())
                .map(pick)
                .collect(),
        )
    };
    let off = median_rate(&events_off);
    let comparison = CdcComparison {
        replicas,
        rounds,
        offered_transfers_per_second: args.rate,
        events_off_transfers_per_second_median: off,
        events_on_transfers_per_second_median: median_rate(&events_on),
        cdc_transfers_per_second_median: median_rate(&cdc_runs),
        events_ratio: median_rate(&events_on) / off,
        cdc_ratio: median_rate(&cdc_runs) / off,
        publisher_events_per_second_median: of(|c| c.publisher.events_per_second),
        publisher_lag_ms_p50_median: of(|c| c.publisher.lag_ms_p50),
        publisher_lag_ms_p99_median: of(|c| c.publisher.lag_ms_p99),
        projector_events_per_second_median: of(|c| c.projector.events_per_second),
        projector_peak_events_per_second_median: of(|c| c.projector.peak_events_per_second),
        projector_caught_up_after_load_ms_median: of(|c| c.projector.caught_up_after_load_ms),
        projector_lag_ms_p50_median: of(|c| c.projector.lag_ms_p50),
        projector_lag_ms_p99_median: of(|c| c.projector.lag_ms_p99),
        events_off,
        events_on,
        cdc: cdc_runs,
    };
    if args.json {
        println!("{}", serde_json::to_string(&comparison)?);
    } else {
        let c = &comparison;
        println!(
            "medians over {rounds} round(s), {replicas} replica(s): events off {:.0} transfers/s, events on {:.0} ({:.3}), with cdc and projector {:.0} ({:.3})",
            c.events_off_transfers_per_second_median,
            c.events_on_transfers_per_second_median,
            c.events_ratio,
            c.cdc_transfers_per_second_median,
            c.cdc_ratio
        );
        println!(
            "  publisher {:.0} events/s, lag p50 {:.0} ms, p99 {:.0} ms; projector (PostgreSQL) {:.0} events/s (peak {:.0}/s), lag p50 {:.0} ms, p99 {:.0} ms, caught up {:.0} ms after the load",
            c.publisher_events_per_second_median,
            c.publisher_lag_ms_p50_median,
            c.publisher_lag_ms_p99_median,
            c.projector_events_per_second_median,
            c.projector_peak_events_per_second_median,
            c.projector_lag_ms_p50_median,
            c.projector_lag_ms_p99_median,
            c.projector_caught_up_after_load_ms_median
        );
    }
    Ok(code)
}

/// `--vs-single`: single node and replica group, alternating, on the same machine.
fn compare(args: &BenchArgs, rounds: u64) -> anyhow::Result<ExitCode> {
    let variant = |replicas| BenchArgs {
        replicas,
        ..args.clone()
    };
    let mut reports = alternate(
        args,
        rounds,
        &[
            ("1 replica(s)", variant(1)),
            (
                &format!("{} replica(s)", args.replicas),
                variant(args.replicas),
            ),
        ],
    )?;
    let code = exit_code(&reports);
    let (replicated, single) = (
        reports.pop().unwrap_or_default(),
        reports.pop().unwrap_or_default(),
    );
    let comparison = Comparison {
        replicas: args.replicas,
        rounds,
        single_transfers_per_second_median: median_rate(&single),
        replicated_transfers_per_second_median: median_rate(&replicated),
        ratio: median_rate(&replicated) / median_rate(&single),
        single,
        replicated,
    };
    if args.json {
        println!("{}", serde_json::to_string(&comparison)?);
    } else {
        println!(
            "medians over {rounds} round(s): single node {:.0} transfers/s, {} replicas {:.0} transfers/s, ratio {:.3}",
            comparison.single_transfers_per_second_median,
            args.replicas,
            comparison.replicated_transfers_per_second_median,
            comparison.ratio
        );
    }
    Ok(code)
}

fn report(args: &BenchArgs, mode: &'static str, measured: Measured) -> Report {
    Report {
        mode,
        replicas: if args.embedded { 1 } else { args.replicas },
        clients: if args.embedded { 1 } else { args.clients },
        accounts: args.accounts,
        transfers: args.transfers,
        batch: args.batch,
        distribution: args.distribution,
        id_order: args.id_order,
        seed: args.seed,
        transfers_per_second: args.transfers as f64 / measured.seconds,
        seconds: measured.seconds,
        batch_latency_ms: LatencyMs::of(measured.latencies),
        transfers_failed: measured.transfers_failed,
        peak_rss_bytes: measured.peak_rss_bytes,
        journal: measured.journal,
        restart: measured.restart,
        write_pause_ms_max: measured.write_pause_ms_max,
        replicas_caught_up_ms: measured.replicas_caught_up_ms,
        leader_changes: measured.leader_changes,
        catch_up: measured.catch_up,
        cdc: measured.cdc,
    }
}

pub fn run(args: &BenchArgs) -> anyhow::Result<ExitCode> {
    if let Some(BenchOther::Registry(registry)) = &args.other {
        return registry::run(registry);
    }
    check_args(args)?;
    if let Some(rounds) = args.vs_single {
        return compare(args, rounds);
    }
    if let Some(rounds) = args.vs_insecure {
        return compare_security(args, rounds);
    }
    if let Some(groups) = args.groups {
        return groups::run(args, groups);
    }
    if args.cdc {
        return compare_cdc(args);
    }
    if let Some(rounds) = args.vs_tracing {
        return traces::compare(args, rounds);
    }
    let (mode, measured) = if args.embedded {
        ("embedded", embedded::run(args)?)
    } else {
        ("network", network::run(args)?)
    };
    let report = report(args, mode, measured);
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        let l = &report.batch_latency_ms;
        println!("fincore bench ({mode}, real fsync)");
        println!(
            "  workload      {} accounts, {} transfers, batch {}, {:?}, {:?} ids, seed {}, {} client(s)",
            report.accounts,
            report.transfers,
            report.batch,
            report.distribution,
            report.id_order,
            report.seed,
            report.clients
        );
        println!(
            "  throughput    {:.0} transfers/s over {:.2} s",
            report.transfers_per_second, report.seconds
        );
        println!(
            "  batch latency p1 {:.2} ms, p50 {:.2} ms, p99 {:.2} ms, p100 {:.2} ms",
            l.p1, l.p50, l.p99, l.p100
        );
        if let Some(j) = &report.journal {
            println!(
                "  journal       {} syncs, mean {:.2} ms, {} MiB",
                j.syncs,
                j.sync_ms_mean,
                j.bytes >> 20
            );
        }
        println!("  peak RSS      {} MiB", report.peak_rss_bytes >> 20);
        println!("  failed        {} transfers", report.transfers_failed);
        if let Some(caught_up) = report.replicas_caught_up_ms {
            println!(
                "  replicas      all applied the last batch {caught_up:.0} ms after its acknowledgement (counted in the time)"
            );
        }
        if let Some(changes) = report.leader_changes {
            println!(
                "  leadership    {changes} term change(s) (elections) during the measured phase"
            );
        }
        if let Some(c) = &report.catch_up {
            print_catch_up(c);
        }
        if let Some(pause) = report.write_pause_ms_max {
            println!("  failover      longest write pause after killing the leader: {pause:.0} ms");
        }
        if let Some(r) = &report.restart {
            println!(
                "  restart       after a crash: {:.2} s replaying {} records",
                r.replay_seconds, r.replay_records
            );
            println!(
                "                snapshot: {:.2} s to write {} MiB",
                r.checkpoint_seconds,
                r.checkpoint_bytes >> 20
            );
            println!(
                "                from the snapshot: {:.2} s",
                r.from_checkpoint_seconds
            );
        }
    }
    Ok(if report.transfers_failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_catch_up(c: &CatchUpReport) {
    println!(
        "  wipe          node {} (a follower; leader node {}) killed and wiped {:.1} s in, {} transfers acknowledged; new member node {} added",
        c.wiped_node_id,
        c.leader_node_id,
        c.wiped_at_seconds,
        c.transfers_acknowledged_at_wipe,
        c.new_member_id
    );
    println!(
        "  catch-up      {:.0} ms from the add to applying the leader's index ({} at the add); add-replica answered after {:.0} ms; {} snapshot(s) installed from a peer (metrics: leader sent {}, new member installed {})",
        c.catch_up_ms,
        c.leader_applied_index_at_add,
        c.add_replica_ms,
        c.snapshots_installed,
        c.leader_snapshots_sent,
        c.new_member_snapshots_installed
    );
    let peaks: Vec<String> = c
        .nodes_peak_rss
        .iter()
        .map(|n| {
            format!(
                "node {} ({}) {} MiB",
                n.node_id,
                n.role,
                n.peak_rss_bytes >> 20
            )
        })
        .collect();
    println!("  node peaks    {}", peaks.join(", "));
}

/// The data directory to use: the one given (must be empty) or a temporary one.
pub fn data_dir(given: &Option<PathBuf>) -> anyhow::Result<(PathBuf, Option<tempfile::TempDir>)> {
    use anyhow::Context;
    match given {
        Some(dir) => {
            if dir.exists()
                && dir
                    .read_dir()
                    .with_context(|| format!("--data-dir {}", dir.display()))?
                    .next()
                    .is_some()
            {
                anyhow::bail!(
                    "--data-dir {} is not empty: the benchmark creates its own ledger",
                    dir.display()
                );
            }
            Ok((dir.clone(), None))
        }
        None => {
            let temp = tempfile::Builder::new()
                .prefix("fincore-bench-")
                .tempdir()
                .context("creating a temporary data directory")?;
            Ok((temp.path().to_path_buf(), Some(temp)))
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn parse(args: &[&str]) -> Result<BenchArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied())).map(|c| c.bench)
    }

    #[test]
    fn a_cross_group_ratio_is_a_share_and_needs_groups() {
        let args = parse(&["--groups", "2", "--cross-group-ratio", "1.5"]).expect("parses");
        let error = check_args(&args).expect_err("a share is at most 1");
        assert!(
            error.to_string().contains("--cross-group-ratio 1.5"),
            "{error}"
        );
        for ratio in ["0", "0.1", "1"] {
            let args = parse(&["--groups", "2", "--cross-group-ratio", ratio]).expect("parses");
            assert!(check_args(&args).is_ok(), "{ratio}");
        }
        assert!(
            parse(&["--cross-group-ratio", "0"]).is_err(),
            "needs --groups"
        );
        assert!(parse(&["--vs-direct"]).is_err(), "needs --groups");
    }
}
