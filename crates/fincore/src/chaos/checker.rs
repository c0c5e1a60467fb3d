//! The bank test's checker: money conserved at every read, no balance beyond its limit, every
//! acknowledged transfer on the books exactly once, every failed one absent, unknown outcomes
//! resolved by the final read, and reads linearizable per account.
//!
//! Per-account linearizability: an account's posted volume (debits + credits) grows with every
//! transfer that touches it, so a read's volume names exactly one prefix of that account's
//! transfers in ledger order. The read is stale if a transfer acknowledged before the read was
//! invoked lies beyond that prefix, and impossible if the prefix holds a transfer invoked only
//! after the read returned, or if no prefix has that volume.

use std::collections::BTreeMap;

use ledger::{Account, Transfer};
use serde::Serialize;

use super::history::{Action, Op, Outcome};
use super::workload::{BANK, CUSTOMERS, FUNDING};

/// Of each kind of violation, this many are listed; the rest are counted.
const LISTED_PER_KIND: u64 = 5;

#[derive(Debug, Default, Serialize)]
pub struct Verdict {
    pub operations: u64,
    pub transfers_ok: u64,
    pub transfers_failed: u64,
    pub transfers_unknown: u64,
    pub unknown_resolved_applied: u64,
    pub unknown_resolved_not_applied: u64,
    pub reads_ok: u64,
    pub reads_unknown: u64,
    /// Examples of each kind of violation found.
    pub violations: Vec<String>,
    /// How many of each kind.
    pub violation_counts: BTreeMap<&'static str, u64>,
    pub violations_total: u64,
}

impl Verdict {
    pub fn violation(&mut self, kind: &'static str, what: String) {
        self.violations_total += 1;
        let count = self.violation_counts.entry(kind).or_default();
        *count += 1;
        if *count <= LISTED_PER_KIND {
            self.violations.push(format!("{kind}: {what}"));
        }
    }

    pub fn valid(&self) -> bool {
        self.violations_total == 0
    }
}

/// Money and limits in one consistent view of every account.
fn check_view(verdict: &mut Verdict, what: &str, accounts: &[Account]) {
    if accounts.len() as u128 != CUSTOMERS + 1 {
        verdict.violation(
            "incomplete read",
            format!(
                "{what}: {} accounts instead of {}",
                accounts.len(),
                CUSTOMERS + 1
            ),
        );
        return;
    }
    let debits: u128 = accounts.iter().map(|a| a.debits_posted).sum();
    let credits: u128 = accounts.iter().map(|a| a.credits_posted).sum();
    if debits != credits {
        verdict.violation(
            "unbalanced",
            format!("{what}: debits {debits} != credits {credits}"),
        );
    }
    let held: i128 = accounts
        .iter()
        .filter(|a| a.id != BANK)
        .map(|a| a.credits_posted as i128 - a.debits_posted as i128)
        .sum();
    if held != (CUSTOMERS * FUNDING) as i128 {
        verdict.violation(
            "money not conserved",
            format!(
                "{what}: customers hold {held}, not the {} they were funded with",
                CUSTOMERS * FUNDING
            ),
        );
    }
    for a in accounts.iter().filter(|a| a.id != BANK) {
        if a.debits_posted + a.debits_pending > a.credits_posted {
            verdict.violation(
                "limit broken",
                format!(
                    "{what}: account {} debits {} + pending {} exceed credits {}",
                    a.id, a.debits_posted, a.debits_pending, a.credits_posted
                ),
            );
        }
    }
}

/// Checks a history against the final state: `accounts` (all of them) and `found` (every
/// transfer id of the history and of the funding, as the final read found them).
pub fn check(ops: &[Op], accounts: &[Account], found: &BTreeMap<u128, Transfer>) -> Verdict {
    let mut verdict = Verdict {
        operations: ops.len() as u64,
        ..Verdict::default()
    };
    check_view(&mut verdict, "final read", accounts);

    // Every outcome against the books.
    for op in ops {
        match (&op.action, &op.outcome) {
            (
                Action::Transfer {
                    id,
                    debit,
                    credit,
                    amount,
                },
                outcome,
            ) => {
                let stored = found.get(id);
                let same = stored.is_some_and(|t| {
                    t.debit_account_id == *debit
                        && t.credit_account_id == *credit
                        && t.amount == *amount
                });
                match outcome {
                    Outcome::Applied { timestamp } => {
                        verdict.transfers_ok += 1;
                        if !same {
                            verdict.violation(
                                "acknowledged transfer lost or changed",
                                format!(
                                    "acknowledged transfer {id} is {}",
                                    if stored.is_some() {
                                        "different on the books"
                                    } else {
                                        "missing"
                                    }
                                ),
                            );
                        } else if *timestamp != 0 && stored.map(|t| t.timestamp) != Some(*timestamp)
                        {
                            verdict.violation(
                                "acknowledged timestamp changed",
                                format!(
                                "transfer {id} was acknowledged at {timestamp} but is stored at {:?}",
                                stored.map(|t| t.timestamp)
                            ));
                        }
                    }
                    Outcome::Failed { code } => {
                        verdict.transfers_failed += 1;
                        if stored.is_some() {
                            verdict.violation(
                                "failed transfer applied",
                                format!("transfer {id} failed ({code}) but is on the books"),
                            );
                        }
                    }
                    Outcome::Unknown { .. } => {
                        verdict.transfers_unknown += 1;
                        match stored {
                            Some(_) if same => verdict.unknown_resolved_applied += 1,
                            Some(_) => verdict.violation(
                                "transfer changed",
                                format!("transfer {id} is different on the books"),
                            ),
                            None => verdict.unknown_resolved_not_applied += 1,
                        }
                    }
                    Outcome::Read { .. } => {}
                }
            }
            (Action::Read, Outcome::Read { accounts }) => {
                verdict.reads_ok += 1;
                check_view(&mut verdict, "a read", accounts);
            }
            (Action::Read, _) => verdict.reads_unknown += 1,
        }
    }

    // Exactly once: each account's balances are the sum of the transfers on the books.
    for account in accounts {
        let debits: u128 = found
            .values()
            .filter(|t| t.debit_account_id == account.id)
            .map(|t| t.amount)
            .sum();
        let credits: u128 = found
            .values()
            .filter(|t| t.credit_account_id == account.id)
            .map(|t| t.amount)
            .sum();
        if (debits, credits) != (account.debits_posted, account.credits_posted) {
            verdict.violation(
                "not exactly once",
                format!(
                "account {}: the books hold debits {debits} / credits {credits} of transfers, the balances say {} / {}",
                account.id, account.debits_posted, account.credits_posted
            ));
        }
    }

    check_linearizable(&mut verdict, ops, accounts, found);
    verdict
}

fn check_linearizable(
    verdict: &mut Verdict,
    ops: &[Op],
    accounts: &[Account],
    found: &BTreeMap<u128, Transfer>,
) {
    let invoked: BTreeMap<u128, u64> = ops
        .iter()
        .filter_map(|op| match op.action {
            Action::Transfer { id, .. } => Some((id, op.invoked)),
            Action::Read => None,
        })
        .collect();
    for account in accounts.iter().filter(|a| a.id != BANK) {
        // The account's transfers in ledger order, with the volume after each.
        let mut touching: Vec<&Transfer> = found
            .values()
            .filter(|t| t.debit_account_id == account.id || t.credit_account_id == account.id)
            .collect();
        touching.sort_by_key(|t| t.timestamp);
        let mut position_of_volume = BTreeMap::from([(0u128, 0usize)]);
        let mut rank = BTreeMap::new();
        // The latest invocation among the first k transfers (funding: before the run, 0).
        let mut latest_invoked = vec![0u64];
        let mut volume = 0u128;
        for (k, t) in touching.iter().enumerate() {
            volume += t.amount;
            position_of_volume.insert(volume, k + 1);
            rank.insert(t.id, k + 1);
            let at = invoked.get(&t.id).copied().unwrap_or(0);
            latest_invoked.push(latest_invoked[k].max(at));
        }
        // Acknowledged transfers on this account by completion time, with their rank.
        let mut acknowledged: Vec<(u64, usize)> = ops
            .iter()
            .filter_map(|op| match (&op.action, &op.outcome) {
                (
                    Action::Transfer {
                        id, debit, credit, ..
                    },
                    Outcome::Applied { .. },
                ) if *debit == account.id || *credit == account.id => {
                    rank.get(id).map(|&r| (op.completed, r))
                }
                _ => None,
            })
            .collect();
        acknowledged.sort_unstable();
        let mut reads: Vec<&Op> = ops
            .iter()
            .filter(|op| matches!(op.outcome, Outcome::Read { .. }))
            .collect();
        reads.sort_by_key(|op| op.invoked);
        let (mut next, mut must_see) = (0, 0usize);
        for read in reads {
            while next < acknowledged.len() && acknowledged[next].0 < read.invoked {
                must_see = must_see.max(acknowledged[next].1);
                next += 1;
            }
            let Outcome::Read { accounts: seen } = &read.outcome else {
                continue;
            };
            let Some(seen) = seen.iter().find(|a| a.id == account.id) else {
                continue;
            };
            let Some(&position) =
                position_of_volume.get(&(seen.debits_posted + seen.credits_posted))
            else {
                verdict.violation(
                    "impossible read",
                    format!(
                    "a read by client {} saw account {} in a state no prefix of its transfers produces (debits {}, credits {})",
                    read.client, account.id, seen.debits_posted, seen.credits_posted
                ));
                continue;
            };
            if position < must_see {
                verdict.violation(
                    "stale read",
                    format!(
                    "client {} read account {} after {} of its transfers, but transfer {} of them had been acknowledged before the read began",
                    read.client, account.id, position, must_see
                ));
            }
            if latest_invoked[position] > read.completed {
                verdict.violation(
                    "read from the future",
                    format!(
                    "a read by client {} of account {} saw a transfer invoked after the read returned",
                    read.client, account.id
                ));
            }
        }
    }
}
