//! The chaos bank test's history and its checker, as a library: a history is every
//! operation's invocation and completion (applied, failed, read or unknown); the checker judges
//! it against the final state. It checks money conserved at every read, no balance beyond its
//! limit, every acknowledged transfer on the books exactly once, every failed one absent,
//! unknown outcomes resolved by the final read, and reads linearizable per account
//! ([`reads`], whose header says exactly what that guarantees).
//!
//! One bank ([`BankLayout`]): operators (no limits) fund customers (never overdrawn) before the
//! history begins; every transfer of the history moves money between customers. With one group
//! a read is one snapshot of every account ([`Reads::Snapshot`]); through a gateway over several
//! groups a read is one snapshot per group ([`Reads::PerGroup`]), so a transfer across groups
//! may be seen on one side only, and money is judged per read with that allowance.
//!
//! Pure: no I/O, no clock; the same history always gets the same verdict. Recording a history
//! and running the bank belong to `fincore chaos`.

mod reads;

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
pub const VIOLATION_KINDS: [&str; 13] = [
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
    READ_WENT_BACK,
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
/// A read showed an account older than a read that had completed before it began.
pub const READ_WENT_BACK: &str = "read older than an earlier read";

/// What one read is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reads {
    /// One snapshot of every account (one group): every read balances exactly.
    Snapshot,
    /// One snapshot per group (a gateway over several groups): a transfer across groups may be
    /// seen on one side only (mid-saga, or settled between the two groups' reads).
    PerGroup,
}

/// The bank a history ran against.
#[derive(Debug, Clone)]
pub struct BankLayout {
    /// Accounts without limits; before the history each funds customers, and does nothing else.
    pub operators: Vec<u128>,
    /// Accounts that may never overdraw, each funded with [`FUNDING`] before the history.
    pub customers: Vec<u128>,
    pub reads: Reads,
}

impl BankLayout {
    /// One group: operator [`BANK`], customers `BANK + 1..=BANK + CUSTOMERS`, snapshot reads.
    pub fn single() -> BankLayout {
        BankLayout {
            operators: vec![BANK],
            customers: (BANK + 1..=BANK + CUSTOMERS).collect(),
            reads: Reads::Snapshot,
        }
    }

    fn accounts_count(&self) -> usize {
        self.operators.len() + self.customers.len()
    }

    /// What the customers hold together, at every moment no transfer is half-seen.
    fn funded(&self) -> u128 {
        self.customers.len() as u128 * FUNDING
    }
}

/// The books as the final read found them.
#[derive(Debug, Clone, Default)]
pub struct Books {
    /// Every account.
    pub accounts: Vec<Account>,
    /// Every transfer id of the history and of the funding that exists, as looked up.
    pub transfers: BTreeMap<u128, Transfer>,
    /// `(account, transfer)` → when the transfer was posted on that account, where that is not
    /// the transfer's own timestamp: a cross-group transfer is posted on each of its accounts
    /// when its copy in that account's group is confirmed, by that group's clock (a lookup
    /// gives its home's copy, stamped when it was reserved).
    pub posted_at: BTreeMap<(u128, u128), u64>,
}

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
    /// Reads one snapshot per group that saw a transfer on one of its accounts only.
    pub reads_one_sided: u64,
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

/// Money and limits in one view of every account: exact when the view is one snapshot
/// (`exact`), else only what holds per account (money is judged with the reads' positions).
fn check_view(
    verdict: &mut Verdict,
    layout: &BankLayout,
    what: &str,
    accounts: &[Account],
    exact: bool,
) {
    if accounts.len() != layout.accounts_count() {
        verdict.violation(
            INCOMPLETE_READ,
            format!(
                "{what}: {} accounts instead of {}",
                accounts.len(),
                layout.accounts_count()
            ),
        );
        return;
    }
    let customer = |a: &&Account| layout.customers.contains(&a.id);
    if exact {
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
            .filter(customer)
            .map(|a| a.credits_posted as i128 - a.debits_posted as i128)
            .sum();
        if held != layout.funded() as i128 {
            verdict.violation(
                MONEY_NOT_CONSERVED,
                format!(
                    "{what}: customers hold {held}, not the {} they were funded with",
                    layout.funded()
                ),
            );
        }
    } else {
        // Operators only funded, before the history: every view shows them as they were.
        let operators_net: i128 = accounts
            .iter()
            .filter(|a| layout.operators.contains(&a.id))
            .map(|a| a.credits_posted as i128 - a.debits_posted as i128)
            .sum();
        if operators_net != -(layout.funded() as i128) {
            verdict.violation(
                MONEY_NOT_CONSERVED,
                format!(
                    "{what}: the operators hold {operators_net}, not the -{} they funded",
                    layout.funded()
                ),
            );
        }
    }
    for a in accounts.iter().filter(customer) {
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

/// Checks a history of the one-group bank ([`BankLayout::single`]) against the final state:
/// `accounts` (all of them) and `found` (every transfer id of the history and of the funding,
/// as the final read found them).
pub fn check(ops: &[Op], accounts: &[Account], found: &BTreeMap<u128, Transfer>) -> Verdict {
    let books = Books {
        accounts: accounts.to_vec(),
        transfers: found.clone(),
        posted_at: BTreeMap::new(),
    };
    check_bank(&BankLayout::single(), ops, &books)
}

/// Checks a history of the bank `layout` against the final `books` (read once nothing was
/// in flight any more: it must balance exactly).
pub fn check_bank(layout: &BankLayout, ops: &[Op], books: &Books) -> Verdict {
    let mut verdict = Verdict {
        operations: ops.len() as u64,
        ..Verdict::default()
    };
    let (accounts, found) = (&books.accounts, &books.transfers);
    check_view(&mut verdict, layout, "final read", accounts, true);

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
                let exact = layout.reads == Reads::Snapshot;
                check_view(&mut verdict, layout, "a read", accounts, exact);
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

    reads::check(&mut verdict, layout, ops, books);
    verdict
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
    fn a_read_losing_a_transfer_an_earlier_completed_read_saw_went_back() {
        let mut ops = history();
        // Transfer 100's outcome unknown, so that only the earlier read obliges the later one.
        ops[0].outcome = Outcome::Unknown {
            error: "timed out".into(),
        };
        let mut before = balances();
        account(&mut before, 2).debits_posted = 0;
        account(&mut before, 3).credits_posted = FUNDING;
        ops.push(op(
            5,
            Action::Read,
            45,
            50,
            Outcome::Read { accounts: before },
        ));
        assert_only(READ_WENT_BACK, &ops, &balances(), &books());
    }

    #[test]
    fn violation_kinds_have_distinct_names() {
        let distinct: std::collections::BTreeSet<&str> = VIOLATION_KINDS.into_iter().collect();
        assert_eq!(distinct.len(), VIOLATION_KINDS.len());
    }
}
