//! `fincore bench --embedded`: TigerBeetle's benchmark workload against the in-process engine.
//!
//! Workload (TigerBeetle's `tigerbeetle benchmark` defaults): 10,000 accounts with `history`,
//! then transfers with ids 1..N, debit and credit accounts drawn (distinct) uniformly or by a
//! Zipf law over all accounts, amount = floor(Exp(mean 10,000)) + 1, ledger 2, batches of
//! 8,189, one batch in flight. The journal syncs for real; the time to build each batch counts
//! against throughput, as it would for a client.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use engine::{Engine, EngineOptions};
use ledger::{
    Account, AccountFlags, BATCH_EVENTS_MAX, BatchBody, BatchResults, CreateAccountResult,
    CreateTransferResult, Transfer,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp, Zipf};
use serde::Serialize;

const BENCH_LEDGER: u32 = 2;
const BENCH_CODE: u16 = 1;
const AMOUNT_MEAN: f64 = 10_000.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountDistribution {
    Uniform,
    Zipfian,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IdOrder {
    Sequential,
    Random,
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Run the engine in this process (journal with real fsync, no network).
    #[arg(long)]
    embedded: bool,
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
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Seed of the workload generator.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Afterwards, measure restarts: a crash (no checkpoint, the whole journal replayed), then
    /// writing a checkpoint, then a restart from it.
    #[arg(long)]
    restart: bool,
}

/// Seconds spent on the restart measurements of `--restart`.
#[derive(Debug, Serialize)]
struct RestartReport {
    replay_records: u64,
    replay_seconds: f64,
    checkpoint_seconds: f64,
    checkpoint_bytes: u64,
    from_checkpoint_seconds: f64,
}

#[derive(Debug, Serialize)]
struct LatencyMs {
    p1: f64,
    p50: f64,
    p99: f64,
    p100: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    mode: &'static str,
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
    journal_syncs: u64,
    journal_sync_ms_mean: f64,
    journal_bytes: u64,
    peak_rss_bytes: u64,
    data_dir: Option<PathBuf>,
    restart: Option<RestartReport>,
}

/// Peak resident set size of this process (Linux `VmHWM`).
fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmHWM:"))
                .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn percentile_ms(sorted: &[Duration], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let at = ((sorted.len() - 1) as f64 * fraction).round() as usize;
    sorted[at].as_secs_f64() * 1e3
}

/// Draws (debit, credit) account ids: distinct, 1-based.
struct AccountPicker {
    accounts: u64,
    zipf: Option<Zipf<f64>>,
}

impl AccountPicker {
    fn pick(&self, rng: &mut SmallRng) -> u64 {
        match &self.zipf {
            Some(zipf) => (zipf.sample(rng) as u64).clamp(1, self.accounts),
            None => rng.random_range(1..=self.accounts),
        }
    }

    fn pick_pair(&self, rng: &mut SmallRng) -> (u64, u64) {
        let debit = self.pick(rng);
        loop {
            let credit = self.pick(rng);
            if credit != debit {
                return (debit, credit);
            }
        }
    }
}

/// Reopens the data directory as after a crash, then checkpoints and reopens again.
fn measure_restart(data_dir: &std::path::Path) -> anyhow::Result<RestartReport> {
    let options = EngineOptions {
        checkpoint_interval_batches: 0,
        ..EngineOptions::new(data_dir)
    };
    let started = Instant::now();
    let (mut engine, report) = Engine::open(options.clone()).context("reopening after the run")?;
    let replay_seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let checkpoint = engine.checkpoint().context("writing a checkpoint")?;
    let checkpoint_seconds = started.elapsed().as_secs_f64();
    drop(engine);
    let started = Instant::now();
    let (engine, _) = Engine::open(options).context("reopening from the checkpoint")?;
    let from_checkpoint_seconds = started.elapsed().as_secs_f64();
    drop(engine);
    Ok(RestartReport {
        replay_records: report.replayed_records,
        replay_seconds,
        checkpoint_seconds,
        checkpoint_bytes: checkpoint.meta.state_len,
        from_checkpoint_seconds,
    })
}

pub fn run(args: &BenchArgs) -> anyhow::Result<ExitCode> {
    if !args.embedded {
        bail!(
            "only `fincore bench --embedded` exists so far: the networked benchmark comes with the server"
        );
    }
    let temp;
    let data_dir = match &args.data_dir {
        Some(dir) => {
            if dir.exists()
                && dir
                    .read_dir()
                    .with_context(|| format!("--data-dir {}", dir.display()))?
                    .next()
                    .is_some()
            {
                bail!(
                    "--data-dir {} is not empty: the benchmark creates its own ledger",
                    dir.display()
                );
            }
            dir.clone()
        }
        None => {
            temp = tempfile::Builder::new()
                .prefix("fincore-bench-")
                .tempdir()
                .context("creating a temporary data directory")?;
            temp.path().to_path_buf()
        }
    };
    let options = EngineOptions {
        checkpoint_interval_batches: 0,
        accounts_capacity: args.accounts as usize,
        transfers_capacity: args.transfers as usize,
        ..EngineOptions::new(&data_dir)
    };
    let (mut engine, _) = Engine::open(options).context("opening the engine")?;
    let mut rng = SmallRng::seed_from_u64(args.seed);
    let batch = args.batch as usize;

    let mut next_account = 1u64;
    while next_account <= args.accounts {
        let last = (next_account + batch as u64 - 1).min(args.accounts);
        let accounts: Vec<Account> = (next_account..=last)
            .map(|id| Account {
                id: u128::from(id),
                ledger: BENCH_LEDGER,
                code: BENCH_CODE,
                flags: AccountFlags::HISTORY,
                ..Default::default()
            })
            .collect();
        let BatchResults::CreateAccounts(results) =
            engine.submit(BatchBody::CreateAccounts(accounts))?
        else {
            unreachable!("an accounts batch gives account results")
        };
        if let Some(failed) = results
            .iter()
            .find(|r| r.result != CreateAccountResult::Created)
        {
            bail!("creating the benchmark accounts failed: {}", failed.result);
        }
        next_account = last + 1;
    }

    let picker = AccountPicker {
        accounts: args.accounts,
        zipf: match args.distribution {
            AccountDistribution::Uniform => None,
            AccountDistribution::Zipfian => {
                Some(Zipf::new(args.accounts as f64, 1.0).context("building the Zipf law")?)
            }
        },
    };
    let amount = Exp::new(1.0 / AMOUNT_MEAN).expect("a positive rate");
    let mut latencies = Vec::with_capacity((args.transfers as usize).div_ceil(batch));
    let mut failed = 0u64;
    let mut sent = 0u64;
    let started = Instant::now();
    while sent < args.transfers {
        let count = (args.transfers - sent).min(batch as u64);
        let transfers: Vec<Transfer> = (0..count)
            .map(|i| {
                let (debit, credit) = picker.pick_pair(&mut rng);
                let id = match args.id_order {
                    IdOrder::Sequential => u128::from(sent + i + 1),
                    IdOrder::Random => rng.random_range(1..u128::MAX),
                };
                Transfer {
                    id,
                    debit_account_id: u128::from(debit),
                    credit_account_id: u128::from(credit),
                    amount: amount.sample(&mut rng) as u128 + 1,
                    ledger: BENCH_LEDGER,
                    code: BENCH_CODE,
                    ..Default::default()
                }
            })
            .collect();
        let submitted = Instant::now();
        let BatchResults::CreateTransfers(results) =
            engine.submit(BatchBody::CreateTransfers(transfers))?
        else {
            unreachable!("a transfers batch gives transfer results")
        };
        latencies.push(submitted.elapsed());
        failed += results
            .iter()
            .filter(|r| r.result != CreateTransferResult::Created)
            .count() as u64;
        sent += count;
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let stats = engine.journal_stats();
    let syncs = stats.groups.load(std::sync::atomic::Ordering::Relaxed);
    let sync_nanos = stats
        .sync_nanos_total
        .load(std::sync::atomic::Ordering::Relaxed);
    let journal_bytes = stats.bytes.load(std::sync::atomic::Ordering::Relaxed);
    let report = Report {
        mode: "embedded",
        accounts: args.accounts,
        transfers: args.transfers,
        batch: args.batch,
        distribution: args.distribution,
        id_order: args.id_order,
        seed: args.seed,
        transfers_per_second: args.transfers as f64 / seconds,
        seconds,
        batch_latency_ms: LatencyMs {
            p1: percentile_ms(&latencies, 0.01),
            p50: percentile_ms(&latencies, 0.50),
            p99: percentile_ms(&latencies, 0.99),
            p100: percentile_ms(&latencies, 1.0),
        },
        transfers_failed: failed,
        journal_syncs: syncs,
        journal_sync_ms_mean: if syncs == 0 {
            0.0
        } else {
            sync_nanos as f64 / syncs as f64 / 1e6
        },
        journal_bytes,
        peak_rss_bytes: 0,
        data_dir: args.data_dir.clone(),
        restart: None,
    };
    let restart = if args.restart {
        drop(engine);
        Some(measure_restart(&data_dir)?)
    } else if args.data_dir.is_some() {
        // Leave a checkpoint so the directory restarts fast and `verify` can compare with it.
        engine.close().context("closing the engine")?;
        None
    } else {
        None
    };
    let report = Report {
        peak_rss_bytes: peak_rss_bytes(),
        restart,
        ..report
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        let l = &report.batch_latency_ms;
        println!("fincore bench (embedded, real fsync)");
        println!(
            "  workload      {} accounts, {} transfers, batch {}, {:?}, {:?} ids, seed {}",
            report.accounts,
            report.transfers,
            report.batch,
            report.distribution,
            report.id_order,
            report.seed
        );
        println!(
            "  throughput    {:.0} transfers/s over {:.2} s",
            report.transfers_per_second, report.seconds
        );
        println!(
            "  batch latency p1 {:.2} ms, p50 {:.2} ms, p99 {:.2} ms, p100 {:.2} ms",
            l.p1, l.p50, l.p99, l.p100
        );
        println!(
            "  journal       {} syncs, mean {:.2} ms, {} MiB",
            report.journal_syncs,
            report.journal_sync_ms_mean,
            report.journal_bytes >> 20
        );
        println!("  peak RSS      {} MiB", report.peak_rss_bytes >> 20);
        println!("  failed        {} transfers", report.transfers_failed);
        if let Some(r) = &report.restart {
            println!(
                "  restart       after a crash: {:.2} s replaying {} records",
                r.replay_seconds, r.replay_records
            );
            println!(
                "                checkpoint: {:.2} s to write {} MiB",
                r.checkpoint_seconds,
                r.checkpoint_bytes >> 20
            );
            println!(
                "                from the checkpoint: {:.2} s",
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
