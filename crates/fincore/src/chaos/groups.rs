//! `fincore chaos --groups N`: the bank over N groups of three replicas (each a
//! [`Cluster`] with its own proxies and nemesis) behind two `fincore gateway` processes over
//! their cluster map. Clients dial both gateways and fail over between them; a share of the
//! transfers (`--cross-group-ratio`) goes between customers of two groups and runs as a saga,
//! the rest stays in one group; every read goes through a gateway. One more nemesis kills (-9)
//! and restarts the gateways, never both at once.
//!
//! After the quiet period no group may hold an open saga copy: the gateways' resolvers finish
//! those a killed gateway left (they run with a short `--saga-open-seconds`), and the run waits
//! for that, bounded, and fails naming the group otherwise. The final read then also asks, for
//! each cross-group transfer on the books, when it was posted on each of its accounts (the
//! account's balance history, filtered by the transfer's id), and `testkit::bank_checker`
//! judges the history as one bank whose reads are one snapshot per group.
//!
//! Owns the run over groups and its report; must not judge the history itself.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use client::Client;
use cluster::GroupId;
use ledger::{AccountFilter, AccountFilterFlags, Transfer};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use testkit::bank_checker::{self, Action, BankLayout, Books, Op, Outcome, Reads};

use super::cluster::Cluster;
use super::gateways::Gateways;
use super::history::History;
use super::workload::{self, Bank};
use super::{ChaosArgs, FaultCounts, Report};

/// The most groups a run starts (three replicas each, on a shared development machine).
pub const GROUPS_MAX: u64 = 8;
const REPLICAS: usize = 3;
const GATEWAYS_COUNT: usize = 2;
/// Mixed into the seed for the bank's account ids and for the gateways' nemesis.
const BANK_SEED: u64 = 0x0062_616e_6b00;
const GATEWAY_NEMESIS_SEED: u64 = 0x6761_7465_7761_7973;
/// Makes each group's nemesis seed differ (group 0 keeps the run's seed).
const GROUP_SEED_STEP: u64 = 0x9e37_79b9_7f4a_7c15;
/// The share of transfers across groups unless `--cross-group-ratio` says otherwise.
pub const CROSS_GROUP_RATIO_DEFAULT: f64 = 0.3;
/// The longest wait, after the quiet period, for every group's saga copies to settle: the
/// resolvers' own bound (`gateways::SAGA_OPEN_SECONDS`, their 2 s period, three rounds) with
/// room for a group still electing its leader.
const SAGAS_SETTLE_SECONDS_MAX: u64 = 60;
/// How often the wait asks the groups again.
const SAGAS_SETTLE_POLL_MS: u64 = 250;
/// How many open copies one ask lists per group (enough to say how many, up to this).
const OPEN_COPIES_LISTED_MAX: u32 = 64;
/// Balance-history queries of the final read in flight at once.
const POSTING_QUERIES_IN_FLIGHT_MAX: usize = 32;
/// Violations found outside the checker.
const SAGA_LEFT_OPEN: &str = "saga left open";
const POSTING_NOT_FOUND: &str = "cross-group posting not found";

/// What a run over several groups adds to the report.
#[derive(Debug, Serialize)]
pub struct GroupsReport {
    pub groups: usize,
    pub replicas_per_group: usize,
    pub gateways: usize,
    pub gateway_kills: u64,
    /// Operations invoked while a gateway was down (from its kill until it announced again).
    pub ops_while_gateway_down: u64,
    pub unknown_while_gateway_down: u64,
    pub latency_ms_max_while_gateway_down: u64,
    pub cross_group_ratio: f64,
    pub cross_group: CrossGroupCounts,
    /// How long after the groups converged (quiet period) no group held an open saga copy.
    pub sagas_settled_ms: u64,
}

/// How the transfers across groups ended, as their callers heard it.
#[derive(Debug, Default, PartialEq, Eq, Serialize)]
pub struct CrossGroupCounts {
    pub ok: u64,
    pub failed: u64,
    pub unknown: u64,
}

/// The share of transfers across groups: `--cross-group-ratio`, or the default over two
/// groups or more.
fn cross_group_ratio(args: &ChaosArgs, groups_count: usize) -> anyhow::Result<f64> {
    match (args.cross_group_ratio, groups_count) {
        (Some(ratio), 1) if ratio > 0.0 => {
            anyhow::bail!("--cross-group-ratio {ratio} needs --groups 2 or more")
        }
        (Some(ratio), _) => Ok(ratio),
        (None, 1) => Ok(0.0),
        (None, _) => Ok(CROSS_GROUP_RATIO_DEFAULT),
    }
}

pub fn run(args: &ChaosArgs, groups_count: usize) -> anyhow::Result<ExitCode> {
    assert!((1..=GROUPS_MAX as usize).contains(&groups_count));
    let ratio = cross_group_ratio(args, groups_count)?;
    let seed = super::seed_of(args);
    let (temp, dir) = super::run_dir(args)?;
    let history_path = dir.join("history.jsonl");
    let history = Arc::new(History::create(&history_path)?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (clusters, gateways, bank) = start_all(&runtime, &dir, groups_count, seed, ratio)?;
    let bank = Arc::new(bank);
    let urls = gateways.grpc_urls.clone();
    let url_refs: Vec<&str> = urls.iter().map(String::as_str).collect();
    let connect_with = |policy| {
        Client::builder(&url_refs)
            .retry_policy(policy)
            .api_key_opt(testkit::keys::token())
            .connect()
    };
    let connect = || connect_with(workload::retry_policy());
    let _guard = runtime.enter();
    let funding = runtime
        .block_on(workload::set_up(&connect()?, &bank))
        .context("setting up the banks through the gateways")?;

    // Clients and nemeses run together until the deadline.
    let until = Instant::now() + Duration::from_secs(args.seconds);
    let clusters: Vec<_> = clusters
        .into_iter()
        .map(|c| Arc::new(Mutex::new(c)))
        .collect();
    let nemeses: Vec<_> = clusters
        .iter()
        .enumerate()
        .map(|(g, cluster)| {
            let (cluster, history) = (Arc::clone(cluster), Arc::clone(&history));
            let seed = seed.wrapping_add((g as u64).wrapping_mul(GROUP_SEED_STEP));
            std::thread::spawn(move || super::nemesis(&cluster, &history, seed, until, Some(g)))
        })
        .collect();
    let gateways = Arc::new(Mutex::new(gateways));
    let gateway_nemesis = {
        let (gateways, history) = (Arc::clone(&gateways), Arc::clone(&history));
        std::thread::spawn(move || gateway_nemesis(&gateways, &history, seed, until))
    };
    let nodes = Arc::new(urls.clone());
    super::run_clients(
        &runtime,
        args.clients,
        &connect,
        &bank,
        &nodes,
        seed,
        &history,
        until,
    );
    let mut faults = FaultCounts::default();
    for nemesis in nemeses {
        let counts = nemesis
            .join()
            .map_err(|_| anyhow::anyhow!("a nemesis panicked"))??;
        faults.add(&counts);
    }
    let down_windows = gateway_nemesis
        .join()
        .map_err(|_| anyhow::anyhow!("the gateways' nemesis panicked"))??;

    // Quiet period: everything heals, each group's nodes must agree, then the final read.
    history.fault("quiet", None);
    let mut gateways = Arc::into_inner(gateways)
        .expect("the nemesis is done")
        .into_inner()
        .expect("never poisoned");
    gateways.heal()?;
    let mut clusters: Vec<Cluster> = clusters
        .into_iter()
        .map(|c| {
            Arc::into_inner(c)
                .expect("the nemesis is done")
                .into_inner()
                .expect("never poisoned")
        })
        .collect();
    for cluster in &mut clusters {
        cluster.heal()?;
    }
    let converged: Vec<_> = clusters
        .iter()
        .map(|c| c.wait_converged(Duration::from_secs(60)))
        .collect();
    let settled = runtime.block_on(wait_sagas_settled(&clusters));
    let ops = history.ops();
    let reader = connect_with(workload::final_read_retry_policy())?;
    let (accounts, found) = runtime.block_on(super::final_read(&reader, &bank, &funding, &ops))?;
    let postings = runtime.block_on(posting_times(&reader, &bank, &found))?;
    let books = Books {
        accounts,
        transfers: found,
        posted_at: postings.times,
    };
    let mut verdict = bank_checker::check_bank(&layout_of(&bank), &ops, &books);
    for missing in postings.missing {
        verdict.violation(POSTING_NOT_FOUND, missing);
    }
    for open in &settled.open {
        verdict.violation(SAGA_LEFT_OPEN, open.clone());
    }
    for (g, result) in converged.iter().enumerate() {
        if let Err(error) = result {
            verdict.violation(
                "no convergence",
                format!("group {} after the quiet period: {error}", g + 1),
            );
        }
    }
    let mut groups = gateway_report(&ops, groups_count, &down_windows);
    groups.cross_group_ratio = ratio;
    groups.cross_group = cross_group_counts(&bank, &ops);
    groups.sagas_settled_ms = settled.waited_ms;
    let report = Report {
        valid: verdict.valid(),
        seed,
        seconds: args.seconds,
        clients: args.clients,
        faults,
        groups: Some(groups),
        verdict,
        history: history_path.display().to_string(),
    };
    gateways.stop()?;
    for cluster in clusters {
        cluster.stop()?;
    }
    super::finish(args, &report, temp)
}

/// Starts the groups, writes their map to `dir/cluster-map.json`, starts the gateways over it
/// and lays out the bank: one operator and its customers in each group's slots, `ratio` of
/// the transfers across groups.
fn start_all(
    runtime: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    groups_count: usize,
    seed: u64,
    ratio: f64,
) -> anyhow::Result<(Vec<Cluster>, Gateways, Bank)> {
    let mut clusters = Vec::with_capacity(groups_count);
    for g in 0..groups_count {
        clusters.push(start_group(runtime, &dir.join(format!("group-{}", g + 1)))?);
    }
    let layouts: Vec<_> = clusters.iter().map(|c| c.layout().clone()).collect();
    let map = testkit::cluster::map_of(&layouts)?;
    let map_path = dir.join("cluster-map.json");
    std::fs::write(&map_path, map.to_json())
        .with_context(|| format!("writing {}", map_path.display()))?;
    let group_ids: Vec<GroupId> = layouts
        .iter()
        .map(|l| l.group.parse())
        .collect::<Result<_, _>>()
        .map_err(|_| anyhow::anyhow!("a layout's group id does not parse"))?;
    let gateways = Gateways::start(dir, &map_path, GATEWAYS_COUNT)?;
    let slots: Vec<_> = group_ids.iter().map(|&id| map.slots_of(id)).collect();
    let bank = Bank::over_groups(
        &slots,
        &mut SmallRng::seed_from_u64(seed ^ BANK_SEED),
        ratio,
    )?;
    for (g, ids) in bank.groups.iter().enumerate() {
        assert!(
            ids.iter().all(|&id| map.group_of(id) == group_ids[g]),
            "every account of bank {g} is in group {g}"
        );
    }
    Ok((clusters, gateways, bank))
}

/// How many times a group's start is tried on fresh ports.
const GROUP_START_ATTEMPTS_MAX: u32 = 3;

/// Starts a group in `dir`. A layout's ports are free when picked but not held, so with other
/// groups already running (their connections take ephemeral ports) one may be taken by the
/// time its node starts: then the group is started again, on new ports in a clean directory.
fn start_group(
    runtime: &tokio::runtime::Runtime,
    dir: &std::path::Path,
) -> anyhow::Result<Cluster> {
    let mut attempt = 1;
    loop {
        match runtime.block_on(Cluster::start(dir, REPLICAS)) {
            Ok(cluster) => return Ok(cluster),
            Err(error) if attempt >= GROUP_START_ATTEMPTS_MAX => return Err(error),
            Err(error) => {
                eprintln!(
                    "chaos: starting the group in {} failed (attempt {attempt}), again on other ports: {error:#}",
                    dir.display()
                );
                std::fs::remove_dir_all(dir)
                    .with_context(|| format!("removing {}", dir.display()))?;
                attempt += 1;
            }
        }
    }
}

/// Kills (-9) one gateway at a time and restarts it on its ports after a while, until
/// `until`. Returns when each was down (history times, from the kill until it announced
/// again).
fn gateway_nemesis(
    gateways: &Mutex<Gateways>,
    history: &History,
    seed: u64,
    until: Instant,
) -> anyhow::Result<Vec<(u64, u64)>> {
    let mut rng = SmallRng::seed_from_u64(seed ^ GATEWAY_NEMESIS_SEED);
    let mut windows = Vec::new();
    loop {
        std::thread::sleep(Duration::from_millis(rng.random_range(1_000..4_000)));
        if Instant::now() >= until {
            return Ok(windows);
        }
        let hold = Duration::from_millis(rng.random_range(1_000..4_000));
        let (gateway, killed_at) = {
            let mut gateways = gateways.lock().expect("never poisoned");
            // Never both at once: the other one is running.
            assert_eq!(gateways.running_count(), gateways.len());
            let gateway = rng.random_range(0..gateways.len());
            gateways.kill(gateway);
            (gateway, history.gateway_fault("kill", gateway))
        };
        std::thread::sleep(hold);
        gateways.lock().expect("never poisoned").restart(gateway)?;
        windows.push((killed_at, history.gateway_fault("restart", gateway)));
    }
}

/// How the clients fared while a gateway was down.
fn gateway_report(ops: &[Op], groups: usize, windows: &[(u64, u64)]) -> GroupsReport {
    let during: Vec<&Op> = ops
        .iter()
        .filter(|op| {
            windows
                .iter()
                .any(|&(from, to)| (from..to).contains(&op.invoked))
        })
        .collect();
    GroupsReport {
        groups,
        replicas_per_group: REPLICAS,
        gateways: GATEWAYS_COUNT,
        gateway_kills: windows.len() as u64,
        ops_while_gateway_down: during.len() as u64,
        unknown_while_gateway_down: during
            .iter()
            .filter(|op| matches!(op.outcome, Outcome::Unknown { .. }))
            .count() as u64,
        latency_ms_max_while_gateway_down: during
            .iter()
            .map(|op| (op.completed - op.invoked) / 1_000_000)
            .max()
            .unwrap_or(0),
        cross_group_ratio: 0.0,
        cross_group: CrossGroupCounts::default(),
        sagas_settled_ms: 0,
    }
}

/// The transfers across groups by how their callers heard they ended.
fn cross_group_counts(bank: &Bank, ops: &[Op]) -> CrossGroupCounts {
    let mut counts = CrossGroupCounts::default();
    for op in ops {
        let Action::Transfer { debit, credit, .. } = op.action else {
            continue;
        };
        if !bank.crosses_groups(debit, credit) {
            continue;
        }
        match op.outcome {
            Outcome::Applied { .. } => counts.ok += 1,
            Outcome::Failed { .. } => counts.failed += 1,
            Outcome::Unknown { .. } => counts.unknown += 1,
            Outcome::Read { .. } => {}
        }
    }
    counts
}

/// The bank as the checker sees it: each group's operator, every customer, and reads that are
/// one snapshot per group (through a gateway, each group read at its own moment).
fn layout_of(bank: &Bank) -> BankLayout {
    BankLayout {
        operators: bank.groups.iter().map(|ids| ids[0]).collect(),
        customers: bank
            .groups
            .iter()
            .flat_map(|ids| ids[1..].iter().copied())
            .collect(),
        reads: if bank.groups.len() == 1 {
            Reads::Snapshot
        } else {
            Reads::PerGroup
        },
    }
}

/// What the wait for open saga copies found.
struct SagasSettled {
    waited_ms: u64,
    /// Per group still holding open copies (or not answering) when the wait ended: why.
    open: Vec<String>,
}

/// Waits (at most `SAGAS_SETTLE_SECONDS_MAX`) until no group holds an open saga copy, asking
/// each group's nodes directly with the run's admin key.
async fn wait_sagas_settled(clusters: &[Cluster]) -> SagasSettled {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(SAGAS_SETTLE_SECONDS_MAX);
    let clients: Vec<_> = clusters
        .iter()
        .map(|cluster| {
            let urls: Vec<String> = cluster.grpc.iter().map(|a| format!("http://{a}")).collect();
            let url_refs: Vec<&str> = urls.iter().map(String::as_str).collect();
            Client::builder(&url_refs)
                .retry_policy(workload::final_read_retry_policy())
                .api_key_opt(testkit::keys::token())
                .connect()
        })
        .collect();
    loop {
        let mut open = Vec::new();
        for (g, client) in clients.iter().enumerate() {
            let copies = match client {
                Ok(client) => client
                    .open_saga_copies(Duration::ZERO, OPEN_COPIES_LISTED_MAX)
                    .await
                    .map_err(|e| e.to_string()),
                Err(error) => Err(error.to_string()),
            };
            match copies {
                Ok(copies) if copies.is_empty() => {}
                Ok(copies) => open.push(format!(
                    "group {} holds {}{} open saga copies {} s after the groups converged (oldest: transfer {})",
                    g + 1,
                    copies.len(),
                    if copies.len() as u32 == OPEN_COPIES_LISTED_MAX { "+" } else { "" },
                    started.elapsed().as_secs(),
                    copies[0].0.id
                )),
                Err(error) => open.push(format!(
                    "group {}: its open saga copies could not be listed: {error}",
                    g + 1
                )),
            }
        }
        if open.is_empty() || Instant::now() >= deadline {
            return SagasSettled {
                waited_ms: started.elapsed().as_millis() as u64,
                open,
            };
        }
        tokio::time::sleep(Duration::from_millis(SAGAS_SETTLE_POLL_MS)).await;
    }
}

/// When the cross-group transfers on the books were posted on their accounts.
#[derive(Default)]
struct Postings {
    /// `(account, transfer)` → the timestamp of its copy's confirmation in the account's group.
    times: BTreeMap<(u128, u128), u64>,
    /// Cross-group transfers on the books whose postings an account's history does not show.
    missing: Vec<String>,
}

impl Postings {
    /// A confirmed copy leaves two rows in its account's balance history: the reservation
    /// (pending) and the confirmation (posted), in that order.
    fn add(&mut self, account: u128, id: u128, rows: &[ledger::AccountBalance]) {
        match rows {
            [_reserved, confirmed] => {
                self.times.insert((account, id), confirmed.timestamp);
            }
            _ => self.missing.push(format!(
                "transfer {id} has {} rows in the balance history of account {account}, not its reservation and its confirmation",
                rows.len()
            )),
        }
    }
}

/// One answer of the final read's balance-history queries: account, transfer, its rows.
type Posted = (u128, u128, Vec<ledger::AccountBalance>);

/// For each cross-group transfer on the books, when it was posted on each of its accounts, by
/// that account's group's clock: its balance history filtered by the transfer's id (the
/// workload sets `user_data_128` to it), through the gateway.
async fn posting_times(
    reader: &Client,
    bank: &Bank,
    found: &BTreeMap<u128, Transfer>,
) -> anyhow::Result<Postings> {
    let mut postings = Postings::default();
    let mut queries = tokio::task::JoinSet::new();
    let crossing = found
        .values()
        .filter(|t| bank.crosses_groups(t.debit_account_id, t.credit_account_id));
    for t in crossing {
        for account in [t.debit_account_id, t.credit_account_id] {
            if queries.len() >= POSTING_QUERIES_IN_FLIGHT_MAX {
                let (account, id, rows): Posted =
                    queries.join_next().await.expect("one in flight")??;
                postings.add(account, id, &rows);
            }
            let (reader, id) = (reader.clone(), t.id);
            queries.spawn(async move {
                let filter = AccountFilter {
                    account_id: account,
                    user_data_128: id,
                    limit: 4,
                    flags: AccountFilterFlags::DEBITS | AccountFilterFlags::CREDITS,
                    ..AccountFilter::default()
                };
                let rows = reader.get_account_balances(&filter).await?;
                Ok::<_, client::ClientError>((account, id, rows))
            });
        }
    }
    while let Some(joined) = queries.join_next().await {
        let (account, id, rows): Posted = joined??;
        postings.add(account, id, &rows);
    }
    Ok(postings)
}

#[cfg(test)]
mod tests {
    //! A two-group run in miniature: both banks funded, transfer 100 from group 1's customer 1
    //! to group 2's customer 2 acknowledged (posted in group 1 at 120, in group 2 at 130), one
    //! read of every account after it.

    use cluster::placement::Slot;
    use ledger::Account;
    use testkit::bank_checker::FUNDING;

    use super::*;

    const MOVED: u128 = 50;

    fn bank() -> Bank {
        let slots = [
            vec![Slot::new(0).expect("a slot")],
            vec![Slot::new(1).expect("a slot")],
        ];
        Bank::over_groups(&slots, &mut SmallRng::seed_from_u64(1), 0.5).expect("ids mint")
    }

    fn books(bank: &Bank) -> Books {
        let mut found: BTreeMap<u128, Transfer> = bank
            .funding()
            .into_iter()
            .enumerate()
            .map(|(at, t)| {
                let stored = Transfer {
                    timestamp: at as u64 + 1,
                    ..t
                };
                (t.id, stored)
            })
            .collect();
        let (debit, credit) = (bank.groups[0][1], bank.groups[1][2]);
        let transfer = Transfer {
            id: 100,
            debit_account_id: debit,
            credit_account_id: credit,
            amount: MOVED,
            ledger: 1,
            code: 1,
            timestamp: 100,
            ..Transfer::default()
        };
        found.insert(100, transfer);
        let sum = |pick: fn(&Transfer) -> u128, id: u128| -> u128 {
            found
                .values()
                .filter(|t| pick(t) == id)
                .map(|t| t.amount)
                .sum()
        };
        let accounts = bank
            .account_ids()
            .into_iter()
            .map(|id| Account {
                id,
                ledger: 1,
                code: 1,
                debits_posted: sum(|t| t.debit_account_id, id),
                credits_posted: sum(|t| t.credit_account_id, id),
                ..Account::default()
            })
            .collect();
        Books {
            accounts,
            transfers: found,
            posted_at: BTreeMap::from([((debit, 100), 120), ((credit, 100), 130)]),
        }
    }

    fn history(bank: &Bank, read: Vec<Account>) -> Vec<Op> {
        vec![
            Op {
                client: 1,
                action: Action::Transfer {
                    id: 100,
                    debit: bank.groups[0][1],
                    credit: bank.groups[1][2],
                    amount: MOVED,
                },
                invoked: 10,
                completed: 20,
                outcome: Outcome::Applied { timestamp: 100 },
            },
            Op {
                client: 2,
                action: Action::Read,
                invoked: 30,
                completed: 40,
                outcome: Outcome::Read { accounts: read },
            },
        ]
    }

    #[test]
    fn a_history_with_a_transfer_across_groups_is_judged_as_one_bank() {
        let bank = bank();
        let books = books(&bank);
        let ops = history(&bank, books.accounts.clone());
        let layout = layout_of(&bank);
        assert_eq!((layout.operators.len(), layout.customers.len()), (2, 14));
        let verdict = bank_checker::check_bank(&layout, &ops, &books);
        assert!(verdict.valid(), "{:?}", verdict.violations);
        assert_eq!((verdict.transfers_ok, verdict.reads_ok), (1, 1));
        let counts = cross_group_counts(&bank, &ops);
        assert_eq!(
            counts,
            CrossGroupCounts {
                ok: 1,
                failed: 0,
                unknown: 0
            }
        );
        let held: u128 = books
            .accounts
            .iter()
            .filter(|a| layout.customers.contains(&a.id))
            .map(|a| a.credits_posted - a.debits_posted)
            .sum();
        assert_eq!(held, 14 * FUNDING);
    }

    #[test]
    fn a_read_after_the_transfer_missing_its_credit_in_the_other_group_is_stale() {
        let bank = bank();
        let books = books(&bank);
        let mut read = books.accounts.clone();
        let credit = bank.groups[1][2];
        read.iter_mut()
            .find(|a| a.id == credit)
            .expect("listed")
            .credits_posted -= MOVED;
        let verdict = bank_checker::check_bank(&layout_of(&bank), &history(&bank, read), &books);
        let kinds: Vec<&str> = verdict.violation_counts.keys().copied().collect();
        assert_eq!(
            kinds,
            [bank_checker::STALE_READ],
            "{:?}",
            verdict.violations
        );
    }

    #[test]
    fn every_transfer_drawn_across_groups_crosses_and_the_others_stay() {
        let bank = bank();
        let mut rng = SmallRng::seed_from_u64(7);
        let crossing = (0..1_000)
            .filter(|_| {
                let (debit, credit, home) = bank.pick_transfer(&mut rng);
                let crosses = bank.crosses_groups(debit, credit);
                assert!(
                    crosses || home == debit,
                    "a transfer in one group is homed there"
                );
                crosses
            })
            .count();
        assert!((400..600).contains(&crossing), "{crossing} of 1,000 at 0.5");
    }
}
