//! `fincore bench --groups N`: the workload through `fincore gateway` over N ledger groups
//! started here (`testkit::cluster::LocalGroups`: child `fincore serve` processes, without
//! periodic snapshots unless `--checkpoint-interval` says otherwise), every transfer inside one
//! group; with `--vs-direct`, then the same transfers against one group directly (no gateway),
//! which prices the gateway's hop.
//!
//! Owns the run around the gateway: start, accounts, load, checks (every transfer created, and
//! debits equal credits equal the acknowledged amounts over all accounts), stop. The drawing of
//! single-group transfers is `workload`'s. Must not reach around the gateway: in a gateway run
//! the accounts, the transfers and the conservation lookups all go through its gRPC address.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use client::{Client, RetryPolicy};
use ledger::CreateTransferResult;
use limits::LOOKUP_IDS_MAX;
use serde::Serialize;
use testkit::cluster::LocalGroups;
use testkit::node::ChildNode;

use super::network::{check_digests, leader_of, term_max, wait_caught_up};
use super::workload::{Placement, TransferGenerator};
use super::{BenchArgs, Measured, Report, data_dir, peak_rss_bytes, report};

pub use limits::LOCAL_GROUPS_MAX as GROUPS_LOCAL_MAX;

/// The kernel's clock ticks per second in `/proc/PID/stat` (USER_HZ: 100 on mainstream Linux).
const PROC_TICKS_PER_SECOND: f64 = 100.0;

/// The gateway's listeners: free loopback ports (its defaults are fixed ports).
const GATEWAY_ARGS: [&str; 4] = ["--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0"];

/// Where a run's clients send the workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// A `fincore gateway` over all the groups.
    Gateway,
    /// The members of one group, no gateway.
    Direct,
}

impl Target {
    fn mode(self) -> &'static str {
        match self {
            Target::Gateway => "gateway",
            Target::Direct => "direct",
        }
    }
}

/// CPU seconds (user + system) each side spent during the measured phase.
#[derive(Debug, Default, Serialize)]
struct CpuSeconds {
    /// This process: the clients and the workload generator.
    bench: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    gateway: Option<f64>,
    /// All the groups' nodes together.
    nodes: f64,
}

/// Double entry over all accounts, read back after the load (through the gateway in a gateway
/// run).
#[derive(Debug, Serialize)]
struct Conservation {
    accounts_found: u64,
    debits_posted: u128,
    credits_posted: u128,
    /// The amounts of the transfers acknowledged `created` (or `exists`, after a retry).
    amounts_acknowledged: u128,
    /// Every account found, and debits = credits = the acknowledged amounts.
    holds: bool,
}

/// One run (through the gateway, or direct) and what `--groups` adds to the usual report.
#[derive(Debug, Serialize)]
struct GroupRun {
    #[serde(flatten)]
    run: Report,
    groups: u64,
    /// In the order of the map's groups (ascending group id).
    accounts_per_group: Vec<u64>,
    transfers_per_group: Vec<u64>,
    conservation: Conservation,
    cpu_seconds: CpuSeconds,
    #[serde(skip_serializing_if = "Option::is_none")]
    gateway_peak_rss_bytes: Option<u64>,
}

#[derive(Debug, Serialize)]
struct GroupsReport {
    #[serde(flatten)]
    gateway: GroupRun,
    cross_group_ratio: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    direct: Option<GroupRun>,
    /// Transfers/s through the gateway / transfers/s against one group directly.
    #[serde(skip_serializing_if = "Option::is_none")]
    gateway_vs_direct_ratio: Option<f64>,
}

/// The rules of `--vs-flow`'s runs with flow control: every caller and every write API under a
/// rate limit, writes in a pool with a per-caller share, history queries limited per caller,
/// every account under a hot-account limit, a circuit breaker on each group — what an operator
/// would set — with rates far above what this workload offers, so that every call and every
/// account is decided and none refused.
pub const FLOW_RULES_BENCH: &str = r#"{
  "pools": { "write": { "max_in_flight": 1024, "per_caller_max_in_flight": 512 } },
  "limits": [
    { "caller": "*", "rate_per_second": 10000000, "burst": 100000 },
    { "api": "create_transfers", "rate_per_second": 10000000, "burst": 100000 },
    { "api": "create_accounts", "caller": "*", "rate_per_second": 1000000, "burst": 10000 },
    { "api": "get_account_transfers", "caller": "*", "rate_per_second": 100 }
  ],
  "hot_accounts": { "rate_per_second": 10000000, "burst": 1000000 },
  "breaker": { "error_ratio_percent": 50, "slow_ratio_percent": 90, "slow_call_ms": 5000, "min_calls": 100 }
}"#;

/// `bench --groups GROUPS`: the gateway run, then with `--vs-direct` the direct one; with
/// `--vs-flow`, rounds without and with flow control's rules.
pub fn run(args: &BenchArgs, groups: u64) -> anyhow::Result<ExitCode> {
    assert!((1..=GROUPS_LOCAL_MAX).contains(&groups));
    let (dir, temp) = data_dir(&args.data_dir)?;
    if let Some(rounds) = args.vs_flow {
        let outcome = compare_flow(args, groups, rounds, &dir);
        if let (Err(_), Some(temp)) = (&outcome, temp) {
            eprintln!(
                "fincore bench: the run failed; its data directories and logs are kept in {}",
                temp.keep().display()
            );
        }
        return outcome;
    }
    let outcome = run_in(args, groups, &dir);
    // A failed run's data directories and logs (`…/node-I.log`, `gateway.log`) are what a
    // post-mortem needs.
    if let (Err(_), Some(temp)) = (&outcome, temp) {
        let kept = temp.keep();
        eprintln!(
            "fincore bench: the run failed; its data directories, node logs and gateway log are kept in {}",
            kept.display()
        );
    }
    let report = outcome?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_run(&report.gateway);
        if let Some(direct) = &report.direct {
            print_run(direct);
        }
        if let Some(ratio) = report.gateway_vs_direct_ratio {
            println!("gateway / direct throughput: {ratio:.3}");
        }
    }
    let failed = std::iter::once(&report.gateway)
        .chain(&report.direct)
        .any(|run| run.run.transfers_failed > 0 || !run.conservation.holds);
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn run_in(args: &BenchArgs, groups: u64, dir: &Path) -> anyhow::Result<GroupsReport> {
    // One millisecond for every transfer id of both runs: ids differ by their sequence
    // numbers (see `TransferGenerator::single_group`), and each run starts on fresh groups.
    let id_millis = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis(),
    )?;
    let (gateway, placement) = run_one(
        args,
        Target::Gateway,
        groups,
        &dir.join("gateway-run"),
        None,
        id_millis,
        None,
    )?;
    let direct = match args.vs_direct {
        true => Some(
            run_one(
                args,
                Target::Direct,
                1,
                &dir.join("direct-run"),
                Some(placement),
                id_millis,
                None,
            )?
            .0,
        ),
        false => None,
    };
    let gateway_vs_direct_ratio = direct
        .as_ref()
        .map(|direct| gateway.run.transfers_per_second / direct.run.transfers_per_second);
    Ok(GroupsReport {
        gateway,
        cross_group_ratio: args.cross_group_ratio.unwrap_or(0.0),
        direct,
        gateway_vs_direct_ratio,
    })
}

/// One run on `groups` fresh groups under `dir`. The transfers are drawn under `placement`
/// (the gateway run's, so that a direct run sends the same transfers) or, if `None`, under
/// the map of the groups started here; returns the placement used. `flow_rules`: a rules file
/// for the gateway (`--flow-rules`).
fn run_one(
    args: &BenchArgs,
    target: Target,
    groups: u64,
    dir: &Path,
    placement: Option<Arc<Placement>>,
    id_millis: u64,
    flow_rules: Option<&Path>,
) -> anyhow::Result<(GroupRun, Arc<Placement>)> {
    let exe = std::env::current_exe().context("finding the fincore executable")?;
    let extra = [
        "--checkpoint-interval".to_string(),
        args.checkpoint_interval.unwrap_or(0).to_string(),
    ];
    // On any failure below, `local` and `gateway` are dropped, which kills their processes.
    let local = LocalGroups::start(&exe, dir, groups as usize, args.replicas as usize, &extra)?;
    let group_http: Vec<Vec<String>> = local
        .layouts
        .iter()
        .map(|layout| layout.http_addrs.clone())
        .collect();
    for http in &group_http {
        leader_of(http)?;
    }
    let placement = match placement {
        Some(placement) => placement,
        None => Arc::new(Placement::new(&local.map, args.accounts)?),
    };
    let mut gateway_args: Vec<std::ffi::OsString> = GATEWAY_ARGS.iter().map(Into::into).collect();
    if let Some(rules) = flow_rules {
        gateway_args.push("--flow-rules".into());
        gateway_args.push(rules.into());
    }
    let gateway = match target {
        Target::Gateway => Some(ChildNode::start_gateway(
            &exe,
            &dir.join("gateway"),
            &local.map_path,
            &gateway_args,
        )?),
        Target::Direct => None,
    };
    let addrs: Vec<String> = match &gateway {
        Some(gateway) => vec![gateway.grpc_url()],
        None => local.nodes[0]
            .iter()
            .flatten()
            .map(ChildNode::grpc_url)
            .collect(),
    };
    let node_pids: Vec<String> = local
        .nodes
        .iter()
        .flatten()
        .flatten()
        .map(|node| node.pid().to_string())
        .collect();
    let gateway_pid = gateway.as_ref().map(|gateway| gateway.pid().to_string());

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let _entered = runtime.enter();
    let client = connect(&addrs)?;
    runtime.block_on(super::workload::create_accounts(
        &client,
        args.accounts,
        args.batch,
    ))?;
    let terms_at_start: Vec<Option<u64>> = group_http.iter().map(|http| term_max(http)).collect();
    let cpu_before = cpu_of(&node_pids, gateway_pid.as_deref());
    let load = runtime.block_on(load(args, &addrs, &placement, id_millis))?;
    // A replicated run ends when every replica of every group has applied the last batch, as
    // in the network bench.
    let acknowledged = Instant::now();
    let replicated = args.replicas > 1;
    if replicated {
        for http in &group_http {
            wait_caught_up(http)?;
        }
    }
    let replicas_caught_up_ms = replicated.then(|| acknowledged.elapsed().as_secs_f64() * 1e3);
    let seconds = load.started.elapsed().as_secs_f64();
    let cpu_after = cpu_of(&node_pids, gateway_pid.as_deref());
    let leader_changes = group_http
        .iter()
        .zip(&terms_at_start)
        .map(|(http, start)| match (start, term_max(http)) {
            (Some(start), Some(end)) => end.saturating_sub(*start),
            _ => 0,
        })
        .sum();
    if replicated {
        for http in &group_http {
            check_digests(http)?;
        }
    }
    let conservation = runtime.block_on(conservation(
        &client,
        args.accounts,
        load.amounts_acknowledged,
    ))?;
    let peak_rss = node_pids.iter().map(|pid| peak_rss_bytes(pid)).max();
    let gateway_peak_rss_bytes = gateway_pid.as_deref().map(peak_rss_bytes);
    drop(client);
    if let Some(gateway) = gateway {
        gateway.stop().context("stopping the gateway")?;
    }
    local.stop().context("stopping the groups")?;

    let (accounts_per_group, transfers_per_group) = match target {
        Target::Gateway => (placement.accounts_per_group(), load.transfers_per_group),
        Target::Direct => (
            vec![args.accounts],
            vec![load.transfers_per_group.iter().sum()],
        ),
    };
    let measured = Measured {
        seconds,
        latencies: load.latencies,
        transfers_failed: load.transfers_failed,
        peak_rss_bytes: peak_rss.unwrap_or(0),
        journal: None,
        restart: None,
        write_pause_ms_max: None,
        replicas_caught_up_ms,
        leader_changes: Some(leader_changes),
        catch_up: None,
        cdc: None,
    };
    let run = GroupRun {
        run: report(args, target.mode(), measured),
        groups,
        accounts_per_group,
        transfers_per_group,
        conservation,
        cpu_seconds: CpuSeconds {
            bench: cpu_after.bench - cpu_before.bench,
            gateway: cpu_after
                .gateway
                .zip(cpu_before.gateway)
                .map(|(a, b)| a - b),
            nodes: cpu_after.nodes - cpu_before.nodes,
        },
        gateway_peak_rss_bytes,
    };
    Ok((run, placement))
}

/// `--vs-flow ROUNDS`: rounds of a gateway run without rules and one with
/// [`FLOW_RULES_BENCH`] (their order alternating between rounds, against drift), each on fresh
/// groups; the medians and the median of the rounds' paired ratios.
fn compare_flow(
    args: &BenchArgs,
    groups: u64,
    rounds: u64,
    dir: &Path,
) -> anyhow::Result<ExitCode> {
    let rules = dir.join("flow-rules.json");
    std::fs::write(&rules, FLOW_RULES_BENCH).context("writing the bench's flow rules")?;
    let id_millis = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis(),
    )?;
    let (mut off, mut on, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut p99_off, mut p99_on) = (Vec::new(), Vec::new());
    let mut placement = None;
    let mut failed = false;
    for round in 0..rounds {
        let mut pair = [0.0f64; 2];
        let order: [bool; 2] = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for with_rules in order {
            let name = format!(
                "round-{round}-{}",
                if with_rules { "rules" } else { "none" }
            );
            let (run, used) = run_one(
                args,
                Target::Gateway,
                groups,
                &dir.join(name),
                placement.clone(),
                id_millis + round * 2 + u64::from(with_rules),
                with_rules.then_some(rules.as_path()),
            )?;
            placement = Some(used);
            failed |= run.run.transfers_failed > 0 || !run.conservation.holds;
            let rate = run.run.transfers_per_second;
            println!(
                "  round {round} {:<10} {rate:>10.0} transfers/s, batch p99 {:.2} ms{}",
                if with_rules { "rules" } else { "no rules" },
                run.run.batch_latency_ms.p99,
                if run.conservation.holds {
                    ""
                } else {
                    ", conservation BROKEN"
                }
            );
            if with_rules {
                on.push(rate);
                p99_on.push(run.run.batch_latency_ms.p99);
                pair[1] = rate;
            } else {
                off.push(rate);
                p99_off.push(run.run.batch_latency_ms.p99);
                pair[0] = rate;
            }
        }
        ratios.push(pair[1] / pair[0]);
    }
    let median = |values: &[f64]| {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        sorted[sorted.len() / 2]
    };
    let spread = |values: &[f64]| {
        let low = values.iter().copied().fold(f64::MAX, f64::min);
        let high = values.iter().copied().fold(0.0, f64::max);
        format!("{low:.0}–{high:.0}")
    };
    println!(
        "fincore bench --vs-flow: {rounds} round(s) through one gateway over {groups} group(s), {} transfers each, batch {}, {} client(s)",
        args.transfers, args.batch, args.clients
    );
    println!(
        "  no rules      median {:.0} transfers/s (runs {}), batch p99 median {:.2} ms",
        median(&off),
        spread(&off),
        median(&p99_off)
    );
    println!(
        "  rules         median {:.0} transfers/s (runs {}), batch p99 median {:.2} ms",
        median(&on),
        spread(&on),
        median(&p99_on)
    );
    println!(
        "  with rules / without: median of the rounds' ratios {:.3} (ratios {})",
        median(&ratios),
        ratios
            .iter()
            .map(|r| format!("{r:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// A client of `addrs` with the test kit's key (the groups and the gateway accept it).
fn connect(addrs: &[String]) -> anyhow::Result<Client> {
    let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    Ok(Client::builder(&addrs)
        .retry_policy(RetryPolicy::default())
        .api_key_opt(testkit::keys::token())
        .connect()?)
}

/// What the measured phase saw.
struct Load {
    started: Instant,
    latencies: Vec<Duration>,
    transfers_failed: u64,
    amounts_acknowledged: u128,
    transfers_per_group: Vec<u64>,
}

/// What one client saw.
struct ClientLoad {
    latencies: Vec<Duration>,
    transfers_failed: u64,
    amounts_acknowledged: u128,
    transfers_per_group: Vec<u64>,
}

/// The transfers, `--clients` clients each with one batch in flight (client `k` sends batches
/// `k`, `k + clients`, …), each client with a connection of its own.
async fn load(
    args: &BenchArgs,
    addrs: &[String],
    placement: &Arc<Placement>,
    id_millis: u64,
) -> anyhow::Result<Load> {
    let batches = args.transfers.div_ceil(args.batch);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for k in 0..args.clients {
        let client = connect(addrs)?;
        let mut generator = TransferGenerator::single_group(
            args.seed.wrapping_add(k),
            Arc::clone(placement),
            args.distribution,
            id_millis,
            args.cross_group_ratio.unwrap_or(0.0),
        )?;
        let (batch, transfers, clients) = (args.batch, args.transfers, args.clients as usize);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let (mut failed, mut amounts) = (0u64, 0u128);
            for b in (k..batches).step_by(clients) {
                let count = (transfers - b * batch).min(batch);
                let events = generator.batch(b * batch + 1, count);
                let sent = Instant::now();
                let results = client.create_transfers(&events).await?;
                latencies.push(sent.elapsed());
                if results.len() != events.len() {
                    bail!(
                        "{} results for a batch of {} transfers",
                        results.len(),
                        events.len()
                    );
                }
                // A batch retried after a lost answer may answer `exists` for events that had
                // landed the first time: that is the same transfer, not a failure.
                for (event, result) in events.iter().zip(&results) {
                    match result.result {
                        CreateTransferResult::Created | CreateTransferResult::Exists => {
                            amounts += event.amount;
                        }
                        _ => failed += 1,
                    }
                }
            }
            anyhow::Ok(ClientLoad {
                latencies,
                transfers_failed: failed,
                amounts_acknowledged: amounts,
                transfers_per_group: generator.transfers_per_group(),
            })
        }));
    }
    let mut load = Load {
        started,
        latencies: Vec::with_capacity(batches as usize),
        transfers_failed: 0,
        amounts_acknowledged: 0,
        transfers_per_group: vec![0; placement.group_ids().len()],
    };
    for task in tasks {
        let client = task.await??;
        load.latencies.extend(client.latencies);
        load.transfers_failed += client.transfers_failed;
        load.amounts_acknowledged += client.amounts_acknowledged;
        for (sum, count) in load
            .transfers_per_group
            .iter_mut()
            .zip(client.transfers_per_group)
        {
            *sum += count;
        }
    }
    Ok(load)
}

/// Looks up accounts `1..=accounts` (in lookups of at most `LOOKUP_IDS_MAX` ids) and checks
/// double entry: debits = credits = the amounts acknowledged.
async fn conservation(
    client: &Client,
    accounts: u64,
    amounts_acknowledged: u128,
) -> anyhow::Result<Conservation> {
    let (mut found, mut debits, mut credits) = (0u64, 0u128, 0u128);
    let mut first = 1u64;
    while first <= accounts {
        let last = (first + LOOKUP_IDS_MAX as u64 - 1).min(accounts);
        let ids: Vec<u128> = (first..=last).map(u128::from).collect();
        let got = client
            .lookup_accounts(&ids)
            .await
            .with_context(|| format!("looking up accounts {first}..={last}"))?;
        found += got.len() as u64;
        for account in got {
            debits += account.debits_posted;
            credits += account.credits_posted;
        }
        first = last + 1;
    }
    Ok(Conservation {
        accounts_found: found,
        debits_posted: debits,
        credits_posted: credits,
        amounts_acknowledged,
        holds: found == accounts && debits == credits && debits == amounts_acknowledged,
    })
}

/// CPU seconds so far of this process, the gateway and all the nodes.
fn cpu_of(node_pids: &[String], gateway_pid: Option<&str>) -> CpuSeconds {
    CpuSeconds {
        bench: process_cpu_seconds("self"),
        gateway: gateway_pid.map(process_cpu_seconds),
        nodes: node_pids.iter().map(|pid| process_cpu_seconds(pid)).sum(),
    }
}

/// User + system CPU seconds of process `pid` (all its threads), 0 if unknown.
pub(super) fn process_cpu_seconds(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces, in parentheses): state is field
    // 3, utime 14 and stime 15.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |at: usize| fields.get(at).and_then(|f| f.parse::<u64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(user), Some(system)) => (user + system) as f64 / PROC_TICKS_PER_SECOND,
        _ => 0.0,
    }
}

fn print_run(g: &GroupRun) {
    let r = &g.run;
    let l = &r.batch_latency_ms;
    let target = match r.mode {
        "gateway" => "through one gateway",
        _ => "one group directly, no gateway",
    };
    println!(
        "fincore bench ({target}: {} group(s) of {} replica(s), real fsync)",
        g.groups, r.replicas
    );
    println!(
        "  workload      {} accounts, {} transfers, batch {}, {:?}, ids minted into the debit account's slot, seed {}, {} client(s)",
        r.accounts, r.transfers, r.batch, r.distribution, r.seed, r.clients
    );
    println!(
        "  throughput    {:.0} transfers/s over {:.2} s",
        r.transfers_per_second, r.seconds
    );
    println!(
        "  batch latency p1 {:.2} ms, p50 {:.2} ms, p99 {:.2} ms, p100 {:.2} ms",
        l.p1, l.p50, l.p99, l.p100
    );
    println!("  accounts      per group {:?}", g.accounts_per_group);
    println!("  transfers     per group {:?}", g.transfers_per_group);
    let c = &g.conservation;
    println!(
        "  conservation  {}: {} accounts found, debits {} credits {}, acknowledged amounts {}",
        if c.holds { "holds" } else { "BROKEN" },
        c.accounts_found,
        c.debits_posted,
        c.credits_posted,
        c.amounts_acknowledged
    );
    let cpu = &g.cpu_seconds;
    println!(
        "  CPU seconds   bench {:.2}, gateway {}, nodes {:.2} (over {:.2} s on {} core(s))",
        cpu.bench,
        cpu.gateway.map_or("-".to_string(), |s| format!("{s:.2}")),
        cpu.nodes,
        r.seconds,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "  peak RSS      node max {} MiB{}",
        r.peak_rss_bytes >> 20,
        g.gateway_peak_rss_bytes
            .map_or(String::new(), |b| format!(", gateway {} MiB", b >> 20))
    );
    println!("  failed        {} transfers", r.transfers_failed);
    if let Some(caught_up) = r.replicas_caught_up_ms {
        println!(
            "  replicas      all applied the last batch {caught_up:.0} ms after its acknowledgement (counted in the time)"
        );
    }
    if let Some(changes) = r.leader_changes {
        println!(
            "  leadership    {changes} term change(s) over all groups during the measured phase"
        );
    }
}

#[cfg(test)]
mod flow_rules_tests {
    #[test]
    fn the_bench_rules_are_valid_and_decide_every_kind() {
        let rules = flow::Rules::from_json(super::FLOW_RULES_BENCH).unwrap();
        assert!(rules.breaker.is_some() && rules.hot_accounts.is_some());
        assert_eq!(rules.limits.len(), 4);
    }
}
