//! The chaos bank test's history and its checker, as a library: a history is every
//! operation's invocation and completion (applied, failed, read or unknown); the checker judges
//! it against the final state. It checks money conserved at every read, no balance beyond its
//! limit, every acknowledged transfer on the books exactly once, every failed one absent,
//! unknown outcomes resolved by the final read, and reads linearizable per account.
//!
//! Per-account linearizability: an account's posted volume (debits + credits) grows with every
//! transfer that touches it, so a read's volume names exactly one prefix of that account's
//! transfers in ledger order. The read is stale if a transfer acknowledged before the read was
//! invoked lies beyond that prefix, and impossible if the prefix holds a transfer invoked only
//! after the read returned, or if no prefix has that volume.
//!
//! Pure: no I/O, no clock; the same history always gets the same verdict. Recording a history
//! and running the bank belong to `fincore chaos`.

use std::collections::BTreeMap;

use ledger::{Account, Transfer};
use serde::Serialize;

/// The operator account (no limits); it funds the customers.
pub const BANK: u128 = 1;
/// Customer accounts are 2..=CUSTOMERS + 1; they may never overdraw.
pub const CUSTOMERS: u128 = 7;
/// What each customer is funded with before the faults start.
pub const FUNDING: u128 = 10_000;

/// Every kind of violation the checker reports, by the name it counts them under.
pub const VIOLATION_KINDS: [&str; 12] = [
    INCOMPLETE_READ,
    UNBALANCED,
    MONEY_NOT_CONSERVED,
    LIMIT_BROKEN,
    ACKNOWLEDGED_LOST,
    ACKNOWLEDGED_TIMESTAMP_CHANGED,
    FAILED_APPLIED,
    UNKNOWN_CHANGED,
    NOT_EXACTLY_ONCE,
    IMPOSSIBLE_READ,
    STALE_READ,
    READ_FROM_THE_FUTURE,
];
/// A read did not return every account.
pub const INCOMPLETE_READ: &str = "incomplete read";
/// A read's debits and credits differ.
pub const UNBALANCED: &str = "unbalanced";
/// A read's customers hold other than what they were funded with.
pub const MONEY_NOT_CONSERVED: &str = "money not conserved";
/// A read shows a customer whose debits exceed its credits.
pub const LIMIT_BROKEN: &str = "limit broken";
/// An acknowledged transfer is missing or different on the books.
pub const ACKNOWLEDGED_LOST: &str = "acknowledged transfer lost or changed";
/// An acknowledged transfer is stored with another timestamp than it was acknowledged with.
pub const ACKNOWLEDGED_TIMESTAMP_CHANGED: &str = "acknowledged timestamp changed";
/// A transfer answered as failed is on the books.
pub const FAILED_APPLIED: &str = "failed transfer applied";
/// A transfer of unknown outcome is on the books, but not as it was sent.
pub const UNKNOWN_CHANGED: &str = "transfer changed";
/// An account's balances differ from the sum of the transfers on the books.
pub const NOT_EXACTLY_ONCE: &str = "not exactly once";
/// A read saw an account volume no prefix of its transfers adds up to.
pub const IMPOSSIBLE_READ: &str = "impossible read";
/// A read missed a transfer acknowledged before the read began.
pub const STALE_READ: &str = "stale read";
/// A read saw a transfer invoked only after the read returned.
pub const READ_FROM_THE_FUTURE: &str = "read from the future";

/// What an operation does.
#[derive(Debug, Clone)]
pub enum Action {
    Transfer {
        id: u128,
        debit: u128,
        credit: u128,
        amount: u128,
    },
    /// A linearizable read of every account.
    Read,
}

/// How an operation ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Transfer created, or it already existed (a retry): it must be on the books.
    Applied { timestamp: u64 },
    /// The ledger answered a failure: it must not be on the books.
    Failed { code: String },
    /// The read's accounts.
    Read { accounts: Vec<Account> },
    /// No answer: it may or may not have happened.
    Unknown { error: String },
}

/// One operation of a history: which client did what, when, and how it ended.
#[derive(Debug, Clone)]
pub struct Op {
    pub client: u64,
    pub action: Action,
    /// When it was invoked and when it completed, in nanoseconds since the run started.
    pub invoked: u64,
    pub completed: u64,
    pub outcome: Outcome,
}

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
            INCOMPLETE_READ,
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
            UNBALANCED,
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
            MONEY_NOT_CONSERVED,
            format!(
                "{what}: customers hold {held}, not the {} they were funded with",
                CUSTOMERS * FUNDING
            ),
        );
    }
    for a in accounts.iter().filter(|a| a.id != BANK) {
        if a.debits_posted + a.debits_pending > a.credits_posted {
            verdict.violation(
                LIMIT_BROKEN,
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
                                ACKNOWLEDGED_LOST,
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
                                ACKNOWLEDGED_TIMESTAMP_CHANGED,
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
                                FAILED_APPLIED,
                                format!("transfer {id} failed ({code}) but is on the books"),
                            );
                        }
                    }
                    Outcome::Unknown { .. } => {
                        verdict.transfers_unknown += 1;
                        match stored {
                            Some(_) if same => verdict.unknown_resolved_applied += 1,
                            Some(_) => verdict.violation(
                                UNKNOWN_CHANGED,
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
                NOT_EXACTLY_ONCE,
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
                    IMPOSSIBLE_READ,
                    format!(
                    "a read by client {} saw account {} in a state no prefix of its transfers produces (debits {}, credits {})",
                    read.client, account.id, seen.debits_posted, seen.credits_posted
                ));
                continue;
            };
            if position < must_see {
                verdict.violation(
                    STALE_READ,
                    format!(
                    "client {} read account {} after {} of its transfers, but transfer {} of them had been acknowledged before the read began",
                    read.client, account.id, position, must_see
                ));
            }
            if latest_invoked[position] > read.completed {
                verdict.violation(
                    READ_FROM_THE_FUTURE,
                    format!(
                    "a read by client {} of account {} saw a transfer invoked after the read returned",
                    read.client, account.id
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! One hand-made history per violation kind, each a small change to one valid history:
    //! the bank funded, transfer 100 (customer 2 → 3, 50) acknowledged, transfer 101 failed,
    //! transfer 102 unknown and not applied, and one read after transfer 100 was acknowledged.

    use super::*;

    const MOVED: u128 = 50;

    fn transfer(id: u128, debit: u128, credit: u128, amount: u128, timestamp: u64) -> Transfer {
        Transfer {
            timestamp,
            ..crate::transfer(id, debit, credit, amount)
        }
    }

    /// Funding (ids 1..=CUSTOMERS, timestamps 1..) and transfer 100 at timestamp 100.
    fn books() -> BTreeMap<u128, Transfer> {
        let mut found: BTreeMap<u128, Transfer> = (0..CUSTOMERS)
            .map(|k| {
                (
                    k + 1,
                    transfer(k + 1, BANK, BANK + 1 + k, FUNDING, k as u64 + 1),
                )
            })
            .collect();
        found.insert(100, transfer(100, 2, 3, MOVED, 100));
        found
    }

    /// Every account as the books above leave them.
    fn balances() -> Vec<Account> {
        let found = books();
        (BANK..=CUSTOMERS + 1)
            .map(|id| Account {
                id,
                ledger: 1,
                code: 1,
                debits_posted: found
                    .values()
                    .filter(|t| t.debit_account_id == id)
                    .map(|t| t.amount)
                    .sum(),
                credits_posted: found
                    .values()
                    .filter(|t| t.credit_account_id == id)
                    .map(|t| t.amount)
                    .sum(),
                ..Account::default()
            })
            .collect()
    }

    fn account(accounts: &mut [Account], id: u128) -> &mut Account {
        accounts.iter_mut().find(|a| a.id == id).expect("listed")
    }

    fn op(client: u64, action: Action, invoked: u64, completed: u64, outcome: Outcome) -> Op {
        Op {
            client,
            action,
            invoked,
            completed,
            outcome,
        }
    }

    fn transfer_action(id: u128, debit: u128, credit: u128, amount: u128) -> Action {
        Action::Transfer {
            id,
            debit,
            credit,
            amount,
        }
    }

    /// The valid history; index 0 is transfer 100, index 3 the read.
    fn history() -> Vec<Op> {
        vec![
            op(
                1,
                transfer_action(100, 2, 3, MOVED),
                10,
                20,
                Outcome::Applied { timestamp: 100 },
            ),
            op(
                2,
                transfer_action(101, 4, 5, 1_000_000),
                12,
                22,
                Outcome::Failed {
                    code: "exceeds_credits".into(),
                },
            ),
            op(
                3,
                transfer_action(102, 5, 6, 10),
                14,
                60,
                Outcome::Unknown {
                    error: "timed out".into(),
                },
            ),
            op(
                4,
                Action::Read,
                30,
                40,
                Outcome::Read {
                    accounts: balances(),
                },
            ),
        ]
    }

    fn read_accounts(ops: &mut [Op]) -> &mut Vec<Account> {
        match &mut ops[3].outcome {
            Outcome::Read { accounts } => accounts,
            _ => unreachable!("index 3 is the read"),
        }
    }

    /// Checks and asserts that `kind` was found, and no other kind.
    fn assert_only(
        kind: &'static str,
        ops: &[Op],
        accounts: &[Account],
        found: &BTreeMap<u128, Transfer>,
    ) {
        let verdict = check(ops, accounts, found);
        assert!(!verdict.valid(), "{kind} went unnoticed");
        let kinds: Vec<&str> = verdict.violation_counts.keys().copied().collect();
        assert_eq!(kinds, [kind], "{:?}", verdict.violations);
    }

    #[test]
    fn the_valid_history_passes_and_resolves_every_outcome() {
        let verdict = check(&history(), &balances(), &books());
        assert!(verdict.valid(), "{:?}", verdict.violations);
        assert_eq!(
            (
                verdict.transfers_ok,
                verdict.transfers_failed,
                verdict.transfers_unknown,
                verdict.unknown_resolved_not_applied,
                verdict.reads_ok
            ),
            (1, 1, 1, 1, 1)
        );
    }

    #[test]
    fn a_read_missing_an_account_is_an_incomplete_read() {
        let mut ops = history();
        read_accounts(&mut ops).pop();
        assert_only(INCOMPLETE_READ, &ops, &balances(), &books());
    }

    #[test]
    fn a_read_whose_debits_and_credits_differ_is_unbalanced() {
        let mut ops = history();
        account(read_accounts(&mut ops), BANK).debits_posted += 1;
        assert_only(UNBALANCED, &ops, &balances(), &books());
    }

    #[test]
    fn a_read_where_customers_hold_more_than_their_funding_is_money_not_conserved() {
        let mut ops = history();
        let accounts = read_accounts(&mut ops);
        // Same volume for customer 2 (so its read stays linearizable), balanced, but +10 held.
        let customer = account(accounts, 2);
        customer.credits_posted += 5;
        customer.debits_posted -= 5;
        account(accounts, BANK).debits_posted += 10;
        assert_only(MONEY_NOT_CONSERVED, &ops, &balances(), &books());
    }

    #[test]
    fn a_read_with_debits_beyond_credits_is_a_broken_limit() {
        let mut ops = history();
        account(read_accounts(&mut ops), 4).debits_pending = 2 * FUNDING;
        assert_only(LIMIT_BROKEN, &ops, &balances(), &books());
    }

    #[test]
    fn an_acknowledged_transfer_stored_differently_is_lost_or_changed() {
        let mut ops = history();
        ops[0].action = transfer_action(100, 2, 3, MOVED + 1);
        assert_only(ACKNOWLEDGED_LOST, &ops, &balances(), &books());
    }

    #[test]
    fn an_acknowledged_transfer_stored_at_another_timestamp_is_reported() {
        let mut ops = history();
        ops[0].outcome = Outcome::Applied { timestamp: 99 };
        assert_only(ACKNOWLEDGED_TIMESTAMP_CHANGED, &ops, &balances(), &books());
    }

    #[test]
    fn a_transfer_answered_as_failed_but_on_the_books_is_reported() {
        let mut ops = history();
        ops[0].outcome = Outcome::Failed {
            code: "exceeds_credits".into(),
        };
        assert_only(FAILED_APPLIED, &ops, &balances(), &books());
    }

    #[test]
    fn an_unknown_transfer_on_the_books_with_other_terms_is_reported() {
        let mut ops = history();
        ops[0].action = transfer_action(100, 2, 3, MOVED + 1);
        ops[0].outcome = Outcome::Unknown {
            error: "connection reset".into(),
        };
        assert_only(UNKNOWN_CHANGED, &ops, &balances(), &books());
    }

    #[test]
    fn balances_that_count_a_transfer_twice_are_not_exactly_once() {
        let mut accounts = balances();
        account(&mut accounts, 2).debits_posted += MOVED;
        account(&mut accounts, 3).credits_posted += MOVED;
        assert_only(NOT_EXACTLY_ONCE, &history(), &accounts, &books());
    }

    #[test]
    fn a_read_no_prefix_of_transfers_explains_is_impossible() {
        let mut ops = history();
        let accounts = read_accounts(&mut ops);
        // Half of transfer 100: balanced and conserved, but no transfer moved 25.
        account(accounts, 2).debits_posted = MOVED / 2;
        account(accounts, 3).credits_posted = FUNDING + MOVED / 2;
        assert_only(IMPOSSIBLE_READ, &ops, &balances(), &books());
    }

    #[test]
    fn a_read_missing_a_transfer_acknowledged_before_it_began_is_stale() {
        let mut ops = history();
        let accounts = read_accounts(&mut ops);
        account(accounts, 2).debits_posted = 0;
        account(accounts, 3).credits_posted = FUNDING;
        assert_only(STALE_READ, &ops, &balances(), &books());
    }

    #[test]
    fn a_read_seeing_a_transfer_invoked_after_it_returned_is_from_the_future() {
        let mut ops = history();
        (ops[3].invoked, ops[3].completed) = (5, 8);
        assert_only(READ_FROM_THE_FUTURE, &ops, &balances(), &books());
    }

    #[test]
    fn violation_kinds_have_distinct_names() {
        let distinct: std::collections::BTreeSet<&str> = VIOLATION_KINDS.into_iter().collect();
        assert_eq!(distinct.len(), VIOLATION_KINDS.len());
    }
}
