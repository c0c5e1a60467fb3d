//! `fincore chaos --groups N`: the bank over N groups of three replicas (each a
//! [`Cluster`] with its own proxies and nemesis) behind two `fincore gateway` processes over
//! their cluster map. Clients dial both gateways and fail over between them; every transfer
//! stays in one group (its id minted in the debit account's slot) and every read goes through
//! a gateway. One more nemesis kills (-9) and restarts the gateways, never both at once.
//!
//! The history is judged by `testkit::bank_checker` once per group: each group's transfers,
//! and each read's accounts of that group, with the group's operator renamed `BANK` and its
//! customers `BANK + 1..` (violations name accounts by those numbers, prefixed by the group).
//! The total over all groups is checked on top, on every complete read and on the final one.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use client::Client;
use cluster::GroupId;
use ledger::{Account, Transfer};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use testkit::bank_checker::{
    self, Action, BANK, CUSTOMERS, FUNDING, MONEY_NOT_CONSERVED, Op, Outcome, UNBALANCED, Verdict,
};

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
}

pub fn run(args: &ChaosArgs, groups_count: usize) -> anyhow::Result<ExitCode> {
    assert!((1..=GROUPS_MAX as usize).contains(&groups_count));
    let seed = super::seed_of(args);
    let (temp, dir) = super::run_dir(args)?;
    let history_path = dir.join("history.jsonl");
    let history = Arc::new(History::create(&history_path)?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (clusters, gateways, bank) = start_all(&runtime, &dir, groups_count, seed)?;
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
    let ops = history.ops();
    let reader = connect_with(workload::final_read_retry_policy())?;
    let (accounts, found) = runtime.block_on(super::final_read(&reader, &bank, &funding, &ops))?;
    let mut verdict = check_groups(&bank, &ops, &accounts, &found);
    for (g, result) in converged.iter().enumerate() {
        if let Err(error) = result {
            verdict.violation(
                "no convergence",
                format!("group {} after the quiet period: {error}", g + 1),
            );
        }
    }
    let groups = gateway_report(&ops, groups_count, &down_windows);
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
/// and lays out the bank: one operator and its customers in each group's slots.
fn start_all(
    runtime: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    groups_count: usize,
    seed: u64,
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
    let bank = Bank::over_groups(&slots, &mut SmallRng::seed_from_u64(seed ^ BANK_SEED))?;
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
    }
}

/// Judges the history group by group with the one-group checker, then the total over all.
fn check_groups(
    bank: &Bank,
    ops: &[Op],
    accounts: &[Account],
    found: &BTreeMap<u128, Transfer>,
) -> Verdict {
    let verdicts: Vec<Verdict> = (0..bank.groups.len())
        .map(|g| {
            let renamed = Renamed::new(bank, g);
            bank_checker::check(
                &renamed.ops(ops),
                &renamed.accounts(accounts),
                &renamed.books(found),
            )
        })
        .collect();
    let mut merged = merge(ops.len() as u64, verdicts);
    let all = bank.account_ids().len();
    check_total(&mut merged, "final read", accounts, bank, all);
    for op in ops {
        if let Outcome::Read { accounts } = &op.outcome
            && accounts.len() == all
        {
            let what = format!("a read by client {}", op.client);
            check_total(&mut merged, &what, accounts, bank, all);
        }
    }
    merged
}

/// Money over all groups: debits equal credits, and the customers hold what they were funded
/// with.
fn check_total(verdict: &mut Verdict, what: &str, accounts: &[Account], bank: &Bank, all: usize) {
    debug_assert_eq!(accounts.len(), all);
    let debits: u128 = accounts.iter().map(|a| a.debits_posted).sum();
    let credits: u128 = accounts.iter().map(|a| a.credits_posted).sum();
    if debits != credits {
        verdict.violation(
            UNBALANCED,
            format!("all groups, {what}: debits {debits} != credits {credits}"),
        );
    }
    let operators: Vec<u128> = bank.groups.iter().map(|ids| ids[0]).collect();
    let held: i128 = accounts
        .iter()
        .filter(|a| !operators.contains(&a.id))
        .map(|a| a.credits_posted as i128 - a.debits_posted as i128)
        .sum();
    let funded = (bank.groups.len() as u128 * CUSTOMERS * FUNDING) as i128;
    if held != funded {
        verdict.violation(
            MONEY_NOT_CONSERVED,
            format!(
                "all groups, {what}: customers hold {held}, not the {funded} they were funded with"
            ),
        );
    }
}

/// One verdict from the groups' verdicts: transfers add up (each is in one group), reads are
/// counted once (every read is in each group's history).
fn merge(operations: u64, verdicts: Vec<Verdict>) -> Verdict {
    let mut merged = Verdict {
        operations,
        ..Verdict::default()
    };
    for (g, v) in verdicts.into_iter().enumerate() {
        merged.transfers_ok += v.transfers_ok;
        merged.transfers_failed += v.transfers_failed;
        merged.transfers_unknown += v.transfers_unknown;
        merged.unknown_resolved_applied += v.unknown_resolved_applied;
        merged.unknown_resolved_not_applied += v.unknown_resolved_not_applied;
        if g == 0 {
            (merged.reads_ok, merged.reads_unknown) = (v.reads_ok, v.reads_unknown);
        }
        merged.violations_total += v.violations_total;
        for (kind, count) in v.violation_counts {
            *merged.violation_counts.entry(kind).or_default() += count;
        }
        merged.violations.extend(
            v.violations
                .into_iter()
                .map(|violation| format!("group {}: {violation}", g + 1)),
        );
    }
    merged
}

/// Group `g`'s view of the run, with its accounts renamed as the one-group checker numbers
/// them: the operator `BANK`, customer `k` `BANK + k`.
struct Renamed {
    names: BTreeMap<u128, u128>,
}

impl Renamed {
    fn new(bank: &Bank, g: usize) -> Renamed {
        let names = bank.groups[g]
            .iter()
            .enumerate()
            .map(|(k, &id)| (id, BANK + k as u128))
            .collect();
        Renamed { names }
    }

    fn accounts(&self, accounts: &[Account]) -> Vec<Account> {
        accounts
            .iter()
            .filter_map(|a| self.names.get(&a.id).map(|&id| Account { id, ..*a }))
            .collect()
    }

    /// The transfers debiting this group's accounts (a transfer is its debit account's group's).
    fn books(&self, found: &BTreeMap<u128, Transfer>) -> BTreeMap<u128, Transfer> {
        found
            .iter()
            .filter_map(|(&id, t)| {
                let debit = *self.names.get(&t.debit_account_id)?;
                // A credit outside the group cannot be (the gateway refuses it); named so that
                // it matches no account and shows up as a broken balance.
                let credit = self.names.get(&t.credit_account_id).copied().unwrap_or(0);
                let renamed = Transfer {
                    debit_account_id: debit,
                    credit_account_id: credit,
                    ..*t
                };
                Some((id, renamed))
            })
            .collect()
    }

    fn ops(&self, ops: &[Op]) -> Vec<Op> {
        ops.iter()
            .filter_map(|op| {
                let action = match &op.action {
                    Action::Transfer {
                        id,
                        debit,
                        credit,
                        amount,
                    } => Action::Transfer {
                        id: *id,
                        debit: *self.names.get(debit)?,
                        credit: self.names.get(credit).copied().unwrap_or(0),
                        amount: *amount,
                    },
                    Action::Read => Action::Read,
                };
                let outcome = match &op.outcome {
                    Outcome::Read { accounts } => Outcome::Read {
                        accounts: self.accounts(accounts),
                    },
                    other => other.clone(),
                };
                Some(Op {
                    action,
                    outcome,
                    ..op.clone()
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    //! A two-group run in miniature: both banks funded, one transfer in group 2 acknowledged,
    //! one read of every account after it.

    use cluster::placement::Slot;

    use super::*;

    const MOVED: u128 = 50;

    fn bank() -> Bank {
        let slots = [
            vec![Slot::new(0).expect("a slot")],
            vec![Slot::new(1).expect("a slot")],
        ];
        Bank::over_groups(&slots, &mut SmallRng::seed_from_u64(1)).expect("ids mint")
    }

    /// The funding and transfer 100 (group 2, customer 1 → customer 2), with timestamps.
    fn books(bank: &Bank) -> BTreeMap<u128, Transfer> {
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
        let group = bank.groups[1];
        let transfer = Transfer {
            id: 100,
            debit_account_id: group[1],
            credit_account_id: group[2],
            amount: MOVED,
            ledger: 1,
            code: 1,
            timestamp: 100,
            ..Transfer::default()
        };
        found.insert(100, transfer);
        found
    }

    fn balances(bank: &Bank, found: &BTreeMap<u128, Transfer>) -> Vec<Account> {
        let sum = |pick: fn(&Transfer) -> u128, id: u128| -> u128 {
            found
                .values()
                .filter(|t| pick(t) == id)
                .map(|t| t.amount)
                .sum()
        };
        bank.account_ids()
            .into_iter()
            .map(|id| Account {
                id,
                ledger: 1,
                code: 1,
                debits_posted: sum(|t| t.debit_account_id, id),
                credits_posted: sum(|t| t.credit_account_id, id),
                ..Account::default()
            })
            .collect()
    }

    fn history(bank: &Bank, read: Vec<Account>) -> Vec<Op> {
        let group = bank.groups[1];
        vec![
            Op {
                client: 1,
                action: Action::Transfer {
                    id: 100,
                    debit: group[1],
                    credit: group[2],
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
    fn a_valid_two_group_history_passes_with_each_transfer_and_read_counted_once() {
        let bank = bank();
        let found = books(&bank);
        let accounts = balances(&bank, &found);
        let verdict = check_groups(&bank, &history(&bank, accounts.clone()), &accounts, &found);
        assert!(verdict.valid(), "{:?}", verdict.violations);
        assert_eq!((verdict.transfers_ok, verdict.reads_ok), (1, 1));
    }

    #[test]
    fn money_made_in_one_group_is_reported_for_that_group_and_for_the_total() {
        let bank = bank();
        let found = books(&bank);
        let accounts = balances(&bank, &found);
        let mut read = accounts.clone();
        // Group 2's customer 1 holds 10 more, paid by its operator: balanced, and the
        // customer's volume unchanged so that the read stays linearizable.
        let (operator, customer) = (bank.groups[1][0], bank.groups[1][1]);
        for a in read.iter_mut() {
            if a.id == customer {
                a.credits_posted += 5;
                a.debits_posted -= 5;
            }
            if a.id == operator {
                a.debits_posted += 10;
            }
        }
        let verdict = check_groups(&bank, &history(&bank, read), &accounts, &found);
        assert!(!verdict.valid());
        assert!(
            verdict
                .violations
                .iter()
                .any(|v| v.starts_with("group 2: money not conserved")),
            "{:?}",
            verdict.violations
        );
        assert!(
            verdict.violations.iter().any(|v| v.contains("all groups")),
            "{:?}",
            verdict.violations
        );
        assert!(verdict.violations.iter().all(|v| !v.starts_with("group 1")));
    }
}
