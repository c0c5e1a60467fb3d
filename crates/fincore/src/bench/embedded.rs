//! The embedded benchmark: the engine in this process, one batch at a time.

use std::time::Instant;

use anyhow::{Context, bail};
use engine::{Engine, EngineOptions};
use ledger::{BatchBody, BatchResults, CreateAccountResult, CreateTransferResult};

use super::workload::{TransferGenerator, accounts};
use super::{BenchArgs, JournalFigures, Measured, RestartReport, data_dir, peak_rss_bytes};

pub fn run(args: &BenchArgs) -> anyhow::Result<Measured> {
    let (dir, _temp) = data_dir(&args.data_dir)?;
    let options = EngineOptions {
        checkpoint_interval_batches: 0,
        accounts_capacity: args.accounts as usize,
        transfers_capacity: args.transfers as usize,
        ..EngineOptions::new(&dir)
    };
    let (mut engine, _) = Engine::open(options).context("opening the engine")?;
    let mut first = 1;
    while first <= args.accounts {
        let last = (first + args.batch - 1).min(args.accounts);
        let BatchResults::CreateAccounts(results) =
            engine.submit(BatchBody::CreateAccounts(accounts(first, last)))?
        else {
            unreachable!("an accounts batch gives account results")
        };
        if let Some(failed) = results
            .iter()
            .find(|r| r.result != CreateAccountResult::Created)
        {
            bail!("creating the benchmark accounts failed: {}", failed.result);
        }
        first = last + 1;
    }

    let mut generator =
        TransferGenerator::new(args.seed, args.accounts, args.distribution, args.id_order)?;
    let mut latencies = Vec::with_capacity(args.transfers.div_ceil(args.batch) as usize);
    let mut transfers_failed = 0u64;
    let mut sent = 0u64;
    let started = Instant::now();
    while sent < args.transfers {
        let count = (args.transfers - sent).min(args.batch);
        let transfers = generator.batch(sent + 1, count);
        let submitted = Instant::now();
        let BatchResults::CreateTransfers(results) =
            engine.submit(BatchBody::CreateTransfers(transfers))?
        else {
            unreachable!("a transfers batch gives transfer results")
        };
        latencies.push(submitted.elapsed());
        transfers_failed += results
            .iter()
            .filter(|r| r.result != CreateTransferResult::Created)
            .count() as u64;
        sent += count;
    }
    let seconds = started.elapsed().as_secs_f64();
    let stats = engine.journal_stats();
    let syncs = stats.groups.load(std::sync::atomic::Ordering::Relaxed);
    let sync_nanos = stats
        .sync_nanos_total
        .load(std::sync::atomic::Ordering::Relaxed);
    let journal = JournalFigures {
        syncs,
        sync_ms_mean: if syncs == 0 {
            0.0
        } else {
            sync_nanos as f64 / syncs as f64 / 1e6
        },
        bytes: stats.bytes.load(std::sync::atomic::Ordering::Relaxed),
    };
    let restart = if args.restart {
        drop(engine);
        Some(measure_restart(&dir)?)
    } else {
        if args.data_dir.is_some() {
            // Leave a checkpoint so the directory restarts fast and `verify` can compare with it.
            engine.close().context("closing the engine")?;
        }
        None
    };
    Ok(Measured {
        seconds,
        latencies,
        transfers_failed,
        peak_rss_bytes: peak_rss_bytes("self"),
        journal: Some(journal),
        restart,
        write_pause_ms_max: None,
        replicas_caught_up_ms: None,
        leader_changes: None,
    })
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
