//! The embedded benchmark: a node's write path in this process, without network.
//!
//! A group of one [`Replica`] on a data directory with exactly the files `fincore serve` writes
//! (initialized as a node initializes it), and batches submitted as the node's pipeline
//! submits them: straight to [`Replica::write`], two in flight, each answered only after its
//! entry is durable and applied. It must not reach around the replica (no private journal, no
//! second state machine): what it measures is what a node does, minus the network.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ledger::{BatchBody, BatchResults, CreateAccountResult, CreateTransferResult};
use replication::membership;
use replication::{NodeId, PeerNode, Replica, ReplicaConfig, WriteError};
use tokio::task::JoinHandle;

use super::workload::{TransferGenerator, accounts};
use super::{BenchArgs, JournalFigures, Measured, RestartReport, data_dir, peak_rss_bytes};

/// The node id `fincore serve` runs as by default.
const NODE_ID: NodeId = 1;

/// Transfer batches in flight at once: while one is applied, the next one's fsync runs (the
/// overlap the retired engine got by applying a batch during its own fsync; with one in flight
/// the node path measured about 30 % below the engine). Never more than the node's pipeline
/// allows; each batch is still answered only after its own fsync.
const BATCHES_IN_FLIGHT_MAX: usize = 2;

/// How long a group of one may take to elect itself, or a replica to replay its log.
const ELECTION_TIMEOUT_MAX: Duration = Duration::from_secs(10);
const REPLAY_TIMEOUT_MAX: Duration = Duration::from_secs(3600);

pub fn run(args: &BenchArgs) -> anyhow::Result<Measured> {
    let (dir, _temp) = data_dir(&args.data_dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("fincore-io")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run_on(args, &dir))
}

async fn run_on(args: &BenchArgs, dir: &Path) -> anyhow::Result<Measured> {
    let replica = Arc::new(open_leader(dir, &ReplicaConfig::default()).await?);
    create_accounts(&replica, args).await?;

    let stats = replica.journal_stats();
    let syncs_before = stats.groups.load(Ordering::Relaxed);
    let sync_nanos_before = stats.sync_nanos_total.load(Ordering::Relaxed);
    let (seconds, latencies, transfers_failed) = write_transfers(&replica, args).await?;
    let syncs = stats.groups.load(Ordering::Relaxed) - syncs_before;
    let sync_nanos = stats.sync_nanos_total.load(Ordering::Relaxed) - sync_nanos_before;
    let journal = JournalFigures {
        syncs,
        sync_ms_mean: if syncs == 0 {
            0.0
        } else {
            sync_nanos as f64 / syncs as f64 / 1e6
        },
        bytes: dir_bytes(&dir.join("journal")),
    };
    let last_index = replica.status(false).last_log_index.unwrap_or(0);
    let restart = if args.restart {
        // As after a crash: stop without a snapshot, so the reopen replays the whole log.
        replica.shutdown().await;
        drop(replica);
        Some(measure_restart(dir, last_index).await?)
    } else {
        if args.data_dir.is_some() {
            // Leave a snapshot so the directory restarts fast and `verify` can compare with it.
            replica
                .snapshot(REPLAY_TIMEOUT_MAX)
                .await
                .context("writing a snapshot")?;
        }
        replica.shutdown().await;
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
        catch_up: None,
        cdc: None,
    })
}

/// The measured phase: the transfers, `BATCHES_IN_FLIGHT_MAX` batches in flight. Returns the
/// seconds it took, each batch's latency and how many transfers failed.
async fn write_transfers(
    replica: &Arc<Replica>,
    args: &BenchArgs,
) -> anyhow::Result<(f64, Vec<Duration>, u64)> {
    let mut generator =
        TransferGenerator::new(args.seed, args.accounts, args.distribution, args.id_order)?;
    let mut latencies = Vec::with_capacity(args.transfers.div_ceil(args.batch) as usize);
    let mut transfers_failed = 0u64;
    let mut in_flight: VecDeque<(Instant, JoinHandle<Result<BatchResults, WriteError>>)> =
        VecDeque::with_capacity(BATCHES_IN_FLIGHT_MAX);
    let mut sent = 0u64;
    let started = Instant::now();
    while sent < args.transfers || !in_flight.is_empty() {
        if sent < args.transfers && in_flight.len() < BATCHES_IN_FLIGHT_MAX {
            let count = (args.transfers - sent).min(args.batch);
            let body = BatchBody::CreateTransfers(generator.batch(sent + 1, count));
            let writer = Arc::clone(replica);
            let submitted = Instant::now();
            in_flight.push_back((
                submitted,
                tokio::spawn(async move { writer.write(body).await }),
            ));
            sent += count;
            continue;
        }
        let (submitted, write) = in_flight.pop_front().expect("one is in flight");
        let BatchResults::CreateTransfers(results) =
            write.await.context("a write task failed")??
        else {
            unreachable!("a transfers batch gives transfer results")
        };
        latencies.push(submitted.elapsed());
        transfers_failed += results
            .iter()
            .filter(|r| r.result != CreateTransferResult::Created)
            .count() as u64;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok((seconds, latencies, transfers_failed))
}

/// Opens the replica in `dir` as `fincore serve` would (with `--bootstrap` the first time,
/// creating a group of one), and waits until it leads.
async fn open_leader(dir: &Path, config: &ReplicaConfig) -> anyhow::Result<Replica> {
    // Not listening anywhere: the membership records no addresses (a later `fincore serve`
    // on this directory is still the leader of its group of one).
    let members = BTreeMap::from([(NODE_ID, PeerNode::default())]);
    let entry = if membership::holds_replica(dir)? {
        membership::Entry::Resume
    } else {
        membership::Entry::Bootstrap { group: None }
    };
    let prepared = membership::prepare(
        dir,
        NODE_ID,
        &entry,
        &members,
        replication::data_dir::LEDGER_MACHINE,
    )?;
    let replica = Replica::open(NODE_ID, dir, config)
        .await
        .with_context(|| format!("opening the replica in {}", dir.display()))?;
    prepared
        .finish_bootstrap(&replica)
        .await
        .context("initializing the group of one")?;
    let deadline = Instant::now() + ELECTION_TIMEOUT_MAX;
    while replica.leader().is_none_or(|(id, _)| id != NODE_ID) {
        if Instant::now() > deadline {
            bail!("the group of one did not elect itself within {ELECTION_TIMEOUT_MAX:?}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(replica)
}

async fn create_accounts(replica: &Replica, args: &BenchArgs) -> anyhow::Result<()> {
    let mut first = 1;
    while first <= args.accounts {
        let last = (first + args.batch - 1).min(args.accounts);
        let BatchResults::CreateAccounts(results) = replica
            .write(BatchBody::CreateAccounts(accounts(first, last)))
            .await?
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
    Ok(())
}

/// The bytes of the files in `dir` (of a fresh directory's journal: what was written, less any
/// segment purged behind a snapshot).
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .filter_map(|e| e.ok()?.metadata().ok())
            .map(|m| m.len())
            .sum()
    })
}

/// Reopens the data directory as after a crash (replaying the log), writes a snapshot, then
/// reopens from it.
async fn measure_restart(dir: &Path, last_index: u64) -> anyhow::Result<RestartReport> {
    let config = ReplicaConfig::default();
    let started = Instant::now();
    let replica = open_leader(dir, &config)
        .await
        .context("reopening after the run")?;
    if !replica.wait_applied(last_index, REPLAY_TIMEOUT_MAX).await {
        bail!("the reopened replica did not replay its log to entry {last_index}");
    }
    let replay_seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    replica
        .snapshot(REPLAY_TIMEOUT_MAX)
        .await
        .context("writing a snapshot")?;
    let checkpoint_seconds = started.elapsed().as_secs_f64();
    let checkpoint_bytes = std::fs::metadata(dir.join("raft-snapshot.bin")).map_or(0, |m| m.len());
    replica.shutdown().await;
    drop(replica);
    let started = Instant::now();
    let replica = open_leader(dir, &config)
        .await
        .context("reopening from the snapshot")?;
    if !replica.wait_applied(last_index, REPLAY_TIMEOUT_MAX).await {
        bail!("the replica reopened from its snapshot did not reach entry {last_index}");
    }
    let from_checkpoint_seconds = started.elapsed().as_secs_f64();
    replica.shutdown().await;
    Ok(RestartReport {
        replay_records: last_index + 1,
        replay_seconds,
        checkpoint_seconds,
        checkpoint_bytes,
        from_checkpoint_seconds,
    })
}
