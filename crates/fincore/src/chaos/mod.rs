//! `fincore chaos`: a Jepsen-style bank test against a real three-node group on loopback.
//!
//! Clients move money between accounts that may not overdraw and read every balance, while a
//! nemesis kills (-9) and restarts nodes, pauses them (SIGSTOP/SIGCONT), partitions them and
//! slows their links, on a schedule drawn from `--seed`. Every operation is recorded (invoke,
//! then ok / fail / unknown) in a JSON-lines history. After a quiet period the nodes must agree,
//! and a final read (patient: up to a minute, where operations during the nemesis give up
//! after 1.5 s) decides every unknown outcome; the checker then judges the history.
//!
//! With `--groups N` the same bank runs over N such groups behind two `fincore gateway`
//! processes (see [`groups`]): each group has its own customers and nemesis, a share of the
//! transfers goes between customers of two groups (sagas), a further nemesis kills (-9) and
//! restarts the gateways, one at a time, and the history is judged as one bank.

mod cluster;
mod gateways;
mod groups;
mod history;
mod workload;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use client::Client;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use cluster::Cluster;
use history::History;
use testkit::bank_checker;
use workload::Bank;

#[derive(Debug, clap::Args)]
pub struct ChaosArgs {
    /// How long clients and the nemesis run (then a quiet period and the final checks).
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Seed of the fault schedule and the workload (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Concurrent clients, each with one operation in flight.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u64).range(1..=64))]
    clients: u64,
    /// Where the nodes' data, their logs and the history go (default: a temporary directory,
    /// kept if the check fails).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Run over this many groups of three replicas behind two gateways (default: one group,
    /// clients dialling its nodes, no gateway).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=groups::GROUPS_MAX))]
    groups: Option<u64>,
    /// With --groups 2 or more: the share of transfers from a customer of one group to a
    /// customer of another (run as sagas by the gateways), from 0 to 1 [default: 0.3].
    #[arg(long, value_name = "SHARE", value_parser = parse_share)]
    cross_group_ratio: Option<f64>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// A share from 0 to 1.
fn parse_share(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(share) if (0.0..=1.0).contains(&share) => Ok(share),
        _ => Err(format!("{text:?} is not a share from 0 to 1 (such as 0.3)")),
    }
}

/// What the nemesis did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct FaultCounts {
    pub kills: u64,
    pub pauses: u64,
    pub partitions: u64,
    pub one_way_partitions: u64,
    pub slow_links: u64,
}

/// Plays faults on `cluster` until `until`, each held for a while and then healed. `group`
/// names the cluster in the history when a run has several.
fn nemesis(
    cluster: &Mutex<Cluster>,
    history: &History,
    seed: u64,
    until: Instant,
    group: Option<usize>,
) -> anyhow::Result<FaultCounts> {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x006e_656d_6573_6973);
    let mut counts = FaultCounts::default();
    let replicas = cluster.lock().expect("never poisoned").len();
    loop {
        std::thread::sleep(Duration::from_millis(rng.random_range(500..2_000)));
        if Instant::now() >= until {
            return Ok(counts);
        }
        let node = rng.random_range(0..replicas);
        let hold = Duration::from_millis(rng.random_range(1_000..4_000));
        let fault = rng.random_range(0..4);
        {
            let mut cluster = cluster.lock().expect("never poisoned");
            match fault {
                0 => {
                    cluster.kill(node);
                    counts.kills += 1;
                    history.fault_in("kill", group, Some(node));
                }
                1 => {
                    cluster.pause(node)?;
                    counts.pauses += 1;
                    history.fault_in("pause", group, Some(node));
                }
                2 => {
                    let one_way = rng.random_bool(0.3);
                    cluster.isolate(node, one_way);
                    if one_way {
                        counts.one_way_partitions += 1;
                        history.fault_in("partition-outbound", group, Some(node));
                    } else {
                        counts.partitions += 1;
                        history.fault_in("partition", group, Some(node));
                    }
                }
                _ => {
                    let delay = Duration::from_millis(rng.random_range(50..400));
                    cluster.slow(node, delay);
                    counts.slow_links += 1;
                    history.fault_in(
                        &format!("slow-links-{}ms", delay.as_millis()),
                        group,
                        Some(node),
                    );
                }
            }
        }
        std::thread::sleep(hold);
        let mut cluster = cluster.lock().expect("never poisoned");
        match fault {
            0 => cluster.restart(node)?,
            1 => cluster.resume(node)?,
            _ => cluster.heal_links(),
        }
        history.fault_in("heal", group, Some(node));
    }
}

impl FaultCounts {
    fn add(&mut self, other: &FaultCounts) {
        self.kills += other.kills;
        self.pauses += other.pauses;
        self.partitions += other.partitions;
        self.one_way_partitions += other.one_way_partitions;
        self.slow_links += other.slow_links;
    }
}

#[derive(Serialize)]
struct Report {
    valid: bool,
    seed: u64,
    seconds: u64,
    clients: u64,
    faults: FaultCounts,
    /// Only for a run over several groups.
    #[serde(skip_serializing_if = "Option::is_none")]
    groups: Option<groups::GroupsReport>,
    #[serde(flatten)]
    verdict: bank_checker::Verdict,
    history: String,
}

fn seed_of(args: &ChaosArgs) -> u64 {
    args.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    })
}

/// The run's directory: `--dir`, or a temporary one (returned too, to keep or remove).
fn run_dir(args: &ChaosArgs) -> anyhow::Result<(Option<tempfile::TempDir>, PathBuf)> {
    if let Some(dir) = &args.dir {
        std::fs::create_dir_all(dir)?;
        return Ok((None, dir.clone()));
    }
    let temp = tempfile::Builder::new()
        .prefix("fincore-chaos-")
        .tempdir()?;
    let dir = temp.path().to_path_buf();
    Ok((Some(temp), dir))
}

pub fn run(args: &ChaosArgs) -> anyhow::Result<ExitCode> {
    if let Some(groups) = args.groups {
        return groups::run(args, groups as usize);
    }
    if args.cross_group_ratio.is_some() {
        anyhow::bail!("--cross-group-ratio needs --groups 2 or more");
    }
    let seed = seed_of(args);
    let (temp, dir) = run_dir(args)?;
    let history_path = dir.join("history.jsonl");
    let history = Arc::new(History::create(&history_path)?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let cluster = runtime.block_on(Cluster::start(&dir, 3))?;
    let addrs: Vec<String> = cluster.grpc.iter().map(|a| format!("http://{a}")).collect();
    let addr_refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let connect_with = |policy| {
        Client::builder(&addr_refs)
            .retry_policy(policy)
            .api_key_opt(testkit::keys::token())
            .connect()
    };
    let connect = || connect_with(workload::retry_policy());
    let _guard = runtime.enter();
    let setup = connect()?;
    let bank = Arc::new(Bank::single());
    let funding = runtime
        .block_on(workload::set_up(&setup, &bank))
        .context("setting up the bank")?;

    // Clients and nemesis run together until the deadline.
    let until = Instant::now() + Duration::from_secs(args.seconds);
    let cluster = Arc::new(Mutex::new(cluster));
    let nemesis = {
        let (cluster, history) = (Arc::clone(&cluster), Arc::clone(&history));
        std::thread::spawn(move || nemesis(&cluster, &history, seed, until, None))
    };
    let nodes = Arc::new(addrs.clone());
    run_clients(
        &runtime,
        args.clients,
        &connect,
        &bank,
        &nodes,
        seed,
        &history,
        until,
    );
    let faults = nemesis
        .join()
        .map_err(|_| anyhow::anyhow!("the nemesis panicked"))??;

    // Quiet period: everything heals, the nodes must agree, then the final read.
    let mut cluster = Arc::into_inner(cluster)
        .expect("the nemesis is done")
        .into_inner()
        .expect("never poisoned");
    history.fault("quiet", None);
    cluster.heal()?;
    let converged = cluster.wait_converged(Duration::from_secs(60));
    let ops = history.ops();
    let reader = connect_with(workload::final_read_retry_policy())?;
    let (accounts, found) = runtime.block_on(final_read(&reader, &bank, &funding, &ops))?;
    let mut verdict = bank_checker::check(&ops, &accounts, &found);
    if let Err(error) = converged {
        verdict.violation("no convergence", format!("after the quiet period: {error}"));
    }
    let report = Report {
        valid: verdict.valid(),
        seed,
        seconds: args.seconds,
        clients: args.clients,
        faults,
        groups: None,
        verdict,
        history: history_path.display().to_string(),
    };
    cluster.stop()?;
    finish(args, &report, temp)
}

/// Runs `count` clients (ids 1..=count) on the bank until `until`, and waits for them all.
#[allow(clippy::too_many_arguments)]
fn run_clients(
    runtime: &tokio::runtime::Runtime,
    count: u64,
    connect: &dyn Fn() -> Result<Client, client::ClientError>,
    bank: &Arc<Bank>,
    nodes: &Arc<Vec<String>>,
    seed: u64,
    history: &Arc<History>,
    until: Instant,
) {
    let clients: Vec<_> = (1..=count)
        .map(|id| {
            let client = connect();
            let (bank, history, nodes) = (Arc::clone(bank), Arc::clone(history), Arc::clone(nodes));
            runtime.spawn(async move {
                if let Ok(client) = client {
                    let seed = seed.wrapping_add(id);
                    workload::run_client(client, bank, nodes, id, seed, history, until).await;
                }
            })
        })
        .collect();
    runtime.block_on(async {
        for client in clients {
            let _ = client.await;
        }
    });
}

/// Every account, and every transfer of the funding and the history as the books hold it.
async fn final_read(
    reader: &Client,
    bank: &Bank,
    funding: &[ledger::Transfer],
    ops: &[history::Op],
) -> anyhow::Result<(Vec<ledger::Account>, BTreeMap<u128, ledger::Transfer>)> {
    let accounts = reader.lookup_accounts(&bank.account_ids()).await?;
    let mut ids: Vec<u128> = funding.iter().map(|t| t.id).collect();
    ids.extend(ops.iter().filter_map(|op| match op.action {
        history::Action::Transfer { id, .. } => Some(id),
        history::Action::Read => None,
    }));
    let mut found = BTreeMap::new();
    for chunk in ids.chunks(8_000) {
        for transfer in reader.lookup_transfers(chunk).await? {
            found.insert(transfer.id, transfer);
        }
    }
    Ok((accounts, found))
}

/// Prints the report and keeps the evidence of a failed run.
fn finish(
    args: &ChaosArgs,
    report: &Report,
    temp: Option<tempfile::TempDir>,
) -> anyhow::Result<ExitCode> {
    if args.json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        let v = &report.verdict;
        let f = &report.faults;
        let over = match &report.groups {
            Some(g) => format!(
                " over {} groups of {} behind {} gateways ({} gateway kills; {} operations invoked while one was down, {} of them unknown, slowest {} ms; cross-group transfers (share {}) {} ok, {} failed, {} unknown, {} reads seeing one on one side only; every saga settled {} ms after the groups converged)",
                g.groups,
                g.replicas_per_group,
                g.gateways,
                g.gateway_kills,
                g.ops_while_gateway_down,
                g.unknown_while_gateway_down,
                g.latency_ms_max_while_gateway_down,
                g.cross_group_ratio,
                g.cross_group.ok,
                g.cross_group.failed,
                g.cross_group.unknown,
                v.reads_one_sided,
                g.sagas_settled_ms,
            ),
            None => String::new(),
        };
        println!(
            "chaos{over}: {} — {} operations: transfers {} ok, {} failed, {} unknown ({} resolved as applied, {} as not applied); reads {} ok, {} unknown; faults: {} kills, {} pauses, {} partitions, {} one-way partitions, {} slow links; seed {}; history {}",
            if report.valid { "VALID" } else { "INVALID" },
            v.operations,
            v.transfers_ok,
            v.transfers_failed,
            v.transfers_unknown,
            v.unknown_resolved_applied,
            v.unknown_resolved_not_applied,
            v.reads_ok,
            v.reads_unknown,
            f.kills,
            f.pauses,
            f.partitions,
            f.one_way_partitions,
            f.slow_links,
            report.seed,
            report.history,
        );
        for (kind, count) in &v.violation_counts {
            println!("  {count} × {kind}");
        }
        for violation in &v.violations {
            println!("  - {violation}");
        }
    }
    if report.valid {
        Ok(ExitCode::SUCCESS)
    } else {
        // Keep the evidence.
        if let Some(temp) = temp {
            let kept = temp.keep();
            eprintln!(
                "chaos: data, node logs and history kept in {}",
                kept.display()
            );
        }
        Ok(ExitCode::FAILURE)
    }
}
