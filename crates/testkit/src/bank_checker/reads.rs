//! Per-account linearizable reads, and money in reads that are one snapshot per group.
//!
//! Each customer account's postings are put in the order its group applied them: a transfer
//! inside one group at its timestamp, a cross-group transfer when its copy in the account's
//! group was confirmed ([`Books::posted_at`]). An account's posted volume (debits + credits)
//! grows with every posting, so the volume a read shows names exactly one prefix of them: the
//! read's *position* on that account. For every read that shows the account, it guarantees:
//! - **possible**: some prefix of the account's postings has the read's volume;
//! - **not stale**: every transfer touching the account that was acknowledged before the read
//!   was invoked lies in the prefix;
//! - **not from the future**: no transfer in the prefix was invoked after the read completed;
//! - **never back**: the position is at least that of every read of the account that completed
//!   before this one was invoked (real-time order, per account).
//!
//! A cross-group transfer is acknowledged only after every copy is settled, so a read invoked
//! after the acknowledgement must see it on both of its accounts (each account is checked on
//! its own, so missing it on either side is stale). A read concurrent with it may see it on
//! either account, both or neither, since a copy is confirmed in the home group before the
//! others, and a read through a gateway reads each group at its own moment; once a read has
//! completed, no later read of that account may lose it again.
//!
//! With reads one snapshot per group ([`Reads::PerGroup`]), money is judged per read with the
//! positions: the customers must hold together exactly what the prefixes they were seen at hold
//! (their funding, plus or minus the transfers seen on one side only), so a read may show a
//! transfer half done but never money made or lost. Not checked here: that a read is atomic
//! within one group (a transfer inside a group is never seen on one side only), and the
//! operators' order (they only fund, before the history; `check_view` checks their balances).
//!
//! Must not read anything but the history and the books it is given.

use std::collections::BTreeMap;

use ledger::Transfer;

use super::{
    Action, BankLayout, Books, IMPOSSIBLE_READ, MONEY_NOT_CONSERVED, Op, Outcome,
    READ_FROM_THE_FUTURE, READ_WENT_BACK, Reads, STALE_READ, Verdict,
};

/// One customer's postings, in the order its group applied them.
struct Line {
    /// Posted volume (debits + credits) after the first k postings → k.
    position_of_volume: BTreeMap<u128, usize>,
    /// Credits minus debits posted after the first k postings.
    net: Vec<i128>,
    /// The latest invocation among the first k postings (funding: before the history, 0).
    latest_invoked: Vec<u64>,
    /// Transfer id → its place among the postings (1 for the first).
    rank: BTreeMap<u128, usize>,
}

impl Line {
    fn new(account: u128, books: &Books, invoked: &BTreeMap<u128, u64>) -> Line {
        let posted_at = |t: &Transfer| {
            books
                .posted_at
                .get(&(account, t.id))
                .copied()
                .unwrap_or(t.timestamp)
        };
        let mut touching: Vec<&Transfer> = books
            .transfers
            .values()
            .filter(|t| t.debit_account_id == account || t.credit_account_id == account)
            .collect();
        touching.sort_by_key(|t| (posted_at(t), t.id));
        let mut line = Line {
            position_of_volume: BTreeMap::from([(0, 0)]),
            net: vec![0],
            latest_invoked: vec![0],
            rank: BTreeMap::new(),
        };
        let mut volume = 0u128;
        for (k, t) in touching.iter().enumerate() {
            volume += t.amount;
            line.position_of_volume.insert(volume, k + 1);
            line.rank.insert(t.id, k + 1);
            let amount = t.amount as i128;
            let net = if t.credit_account_id == account {
                amount
            } else {
                -amount
            };
            line.net.push(line.net[k] + net);
            let at = invoked.get(&t.id).copied().unwrap_or(0);
            line.latest_invoked.push(line.latest_invoked[k].max(at));
        }
        debug_assert_eq!(line.net.len(), touching.len() + 1);
        line
    }
}

/// Checks every read of every customer against the books.
pub(super) fn check(verdict: &mut Verdict, layout: &BankLayout, ops: &[Op], books: &Books) {
    let invoked: BTreeMap<u128, u64> = ops
        .iter()
        .filter_map(|op| match op.action {
            Action::Transfer { id, .. } => Some((id, op.invoked)),
            Action::Read => None,
        })
        .collect();
    let mut reads: Vec<&Op> = ops
        .iter()
        .filter(|op| matches!(op.outcome, Outcome::Read { .. }))
        .collect();
    reads.sort_by_key(|op| op.invoked);
    let mut lines = Vec::with_capacity(layout.customers.len());
    // positions[c][r]: where read r saw customer c (None: not shown, or impossible).
    let mut positions = Vec::with_capacity(layout.customers.len());
    for &account in &layout.customers {
        let line = Line::new(account, books, &invoked);
        let seen = check_account(verdict, account, &line, ops, &reads);
        check_never_back(verdict, account, &reads, &seen);
        positions.push(seen);
        lines.push(line);
    }
    if layout.reads == Reads::PerGroup {
        check_money(verdict, layout, &reads, &lines, &positions);
        verdict.reads_one_sided = count_one_sided(layout, books, &reads, &lines, &positions);
    }
}

/// Possible, not stale, not from the future: each read of `account`, with its position.
fn check_account(
    verdict: &mut Verdict,
    account: u128,
    line: &Line,
    ops: &[Op],
    reads: &[&Op],
) -> Vec<Option<usize>> {
    // Acknowledged transfers on this account by completion time, with their rank.
    let mut acknowledged: Vec<(u64, usize)> = ops
        .iter()
        .filter_map(|op| match (&op.action, &op.outcome) {
            (
                Action::Transfer {
                    id, debit, credit, ..
                },
                Outcome::Applied { .. },
            ) if *debit == account || *credit == account => {
                line.rank.get(id).map(|&r| (op.completed, r))
            }
            _ => None,
        })
        .collect();
    acknowledged.sort_unstable();
    let (mut next, mut must_see) = (0, 0usize);
    let mut positions = Vec::with_capacity(reads.len());
    for read in reads {
        while next < acknowledged.len() && acknowledged[next].0 < read.invoked {
            must_see = must_see.max(acknowledged[next].1);
            next += 1;
        }
        let Outcome::Read { accounts: seen } = &read.outcome else {
            unreachable!("only reads are passed")
        };
        let Some(seen) = seen.iter().find(|a| a.id == account) else {
            positions.push(None);
            continue;
        };
        let Some(&position) = line
            .position_of_volume
            .get(&(seen.debits_posted + seen.credits_posted))
        else {
            verdict.violation(
                IMPOSSIBLE_READ,
                format!(
                    "a read by client {} saw account {} in a state no prefix of its transfers produces (debits {}, credits {})",
                    read.client, account, seen.debits_posted, seen.credits_posted
                ),
            );
            positions.push(None);
            continue;
        };
        if position < must_see {
            verdict.violation(
                STALE_READ,
                format!(
                    "client {} read account {} after {} of its transfers, but transfer {} of them had been acknowledged before the read began",
                    read.client, account, position, must_see
                ),
            );
        }
        if line.latest_invoked[position] > read.completed {
            verdict.violation(
                READ_FROM_THE_FUTURE,
                format!(
                    "a read by client {} of account {} saw a transfer invoked after the read returned",
                    read.client, account
                ),
            );
        }
        positions.push(Some(position));
    }
    debug_assert_eq!(positions.len(), reads.len());
    positions
}

/// Never back: no read of `account` shows fewer postings than a read completed before it began.
/// `reads` are sorted by invocation; `positions` are theirs on this account.
fn check_never_back(
    verdict: &mut Verdict,
    account: u128,
    reads: &[&Op],
    positions: &[Option<usize>],
) {
    assert_eq!(reads.len(), positions.len());
    let mut by_completion: Vec<(u64, usize, u64)> = reads
        .iter()
        .zip(positions)
        .filter_map(|(read, position)| position.map(|p| (read.completed, p, read.client)))
        .collect();
    by_completion.sort_unstable();
    let mut next = 0;
    // The most postings a read completed so far showed, and its client.
    let mut floor: Option<(usize, u64)> = None;
    for (read, position) in reads.iter().zip(positions) {
        while next < by_completion.len() && by_completion[next].0 < read.invoked {
            let (_, seen, client) = by_completion[next];
            if floor.is_none_or(|(most, _)| seen > most) {
                floor = Some((seen, client));
            }
            next += 1;
        }
        if let (Some(position), Some((most, client))) = (position, floor)
            && *position < most
        {
            verdict.violation(
                READ_WENT_BACK,
                format!(
                    "client {} read account {} after {position} of its transfers, but an earlier read by client {client}, completed before it began, had seen {most}",
                    read.client, account
                ),
            );
        }
    }
}

/// Money per read when a read is one snapshot per group: the customers hold what the prefixes
/// they were seen at hold.
fn check_money(
    verdict: &mut Verdict,
    layout: &BankLayout,
    reads: &[&Op],
    lines: &[Line],
    positions: &[Vec<Option<usize>>],
) {
    assert_eq!(lines.len(), layout.customers.len());
    assert_eq!(positions.len(), layout.customers.len());
    let funded = layout.funded() as i128;
    for (r, read) in reads.iter().enumerate() {
        let Outcome::Read { accounts } = &read.outcome else {
            unreachable!("only reads are passed")
        };
        // A read that did not place every customer was reported already.
        let Some(expected) = lines
            .iter()
            .zip(positions)
            .map(|(line, seen)| seen[r].map(|p| line.net[p]))
            .sum::<Option<i128>>()
        else {
            continue;
        };
        let held: i128 = accounts
            .iter()
            .filter(|a| layout.customers.contains(&a.id))
            .map(|a| a.credits_posted as i128 - a.debits_posted as i128)
            .sum();
        if held != expected {
            verdict.violation(
                MONEY_NOT_CONSERVED,
                format!(
                    "a read by client {}: customers hold {held}, but the transfers it saw on them hold {expected} ({funded} funded, {:+} from transfers seen on one side only)",
                    read.client,
                    expected - funded
                ),
            );
        }
    }
}

/// How many reads saw some transfer between customers on one of its accounts only.
fn count_one_sided(
    layout: &BankLayout,
    books: &Books,
    reads: &[&Op],
    lines: &[Line],
    positions: &[Vec<Option<usize>>],
) -> u64 {
    let index_of: BTreeMap<u128, usize> = layout
        .customers
        .iter()
        .enumerate()
        .map(|(c, &id)| (id, c))
        .collect();
    // Whether read `r` saw transfer `id` on `account` (None: not a placed customer).
    let seen = |r: usize, account: u128, id: u128| -> Option<bool> {
        let c = *index_of.get(&account)?;
        let position = positions[c][r]?;
        Some(lines[c].rank.get(&id).is_some_and(|&rank| rank <= position))
    };
    (0..reads.len())
        .filter(|&r| {
            books.transfers.values().any(|t| {
                matches!(
                    (seen(r, t.debit_account_id, t.id), seen(r, t.credit_account_id, t.id)),
                    (Some(debit), Some(credit)) if debit != credit
                )
            })
        })
        .count() as u64
}

#[cfg(test)]
mod tests {
    //! The attacker's histories over two groups: group 1 holds operator 1 and customers 2, 3;
    //! group 2 operator 11 and customers 12, 13. Transfer 100 (2 → 12, 50) crosses groups: its
    //! home is group 1, which reserved it at 100 and confirmed it at 120; group 2 confirmed it
    //! at 1010. Transfer 101 (2 → 3, 30) stays in group 1, applied at 110, between 100's
    //! reservation and its confirmation there. A read concurrent with 100 sees it on account 12
    //! only; a read after its acknowledgement sees it everywhere.

    use super::super::{Books, FUNDING, Reads, check_bank};
    use super::*;
    use ledger::Account;

    const CROSS: u128 = 100;
    const INSIDE: u128 = 101;

    fn layout() -> BankLayout {
        BankLayout {
            operators: vec![1, 11],
            customers: vec![2, 3, 12, 13],
            reads: Reads::PerGroup,
        }
    }

    fn transfer(id: u128, debit: u128, credit: u128, amount: u128, timestamp: u64) -> Transfer {
        Transfer {
            timestamp,
            ..crate::transfer(id, debit, credit, amount)
        }
    }

    fn books() -> Books {
        let mut transfers: BTreeMap<u128, Transfer> = [(1, 2), (1, 3), (11, 12), (11, 13)]
            .into_iter()
            .enumerate()
            .map(|(k, (from, to))| {
                let id = k as u128 + 1;
                (id, transfer(id, from, to, FUNDING, k as u64 + 1))
            })
            .collect();
        transfers.insert(CROSS, transfer(CROSS, 2, 12, 50, 100));
        transfers.insert(INSIDE, transfer(INSIDE, 2, 3, 30, 110));
        Books {
            accounts: view(&transfers, &[1, 2, 3, 4, CROSS, INSIDE]),
            transfers,
            posted_at: BTreeMap::from([((2, CROSS), 120), ((12, CROSS), 1010)]),
        }
    }

    /// Every account with the transfers `seen` posted.
    fn view(transfers: &BTreeMap<u128, Transfer>, seen: &[u128]) -> Vec<Account> {
        let sum = |id: u128, debit: bool| -> u128 {
            seen.iter()
                .map(|s| &transfers[s])
                .filter(|t| {
                    if debit {
                        t.debit_account_id == id
                    } else {
                        t.credit_account_id == id
                    }
                })
                .map(|t| t.amount)
                .sum()
        };
        [1, 2, 3, 11, 12, 13]
            .into_iter()
            .map(|id| Account {
                id,
                ledger: 1,
                code: 1,
                debits_posted: sum(id, true),
                credits_posted: sum(id, false),
                ..Account::default()
            })
            .collect()
    }

    /// Account `id` of `accounts` as if `transfer` were not posted on it.
    fn without(accounts: &mut [Account], id: u128, transfer: &Transfer) {
        let a = accounts.iter_mut().find(|a| a.id == id).expect("listed");
        if transfer.debit_account_id == id {
            a.debits_posted -= transfer.amount;
        } else {
            a.credits_posted -= transfer.amount;
        }
    }

    fn read(client: u64, invoked: u64, completed: u64, accounts: Vec<Account>) -> Op {
        Op {
            client,
            action: Action::Read,
            invoked,
            completed,
            outcome: Outcome::Read { accounts },
        }
    }

    /// 100 acknowledged at [10, 40], 101 at [12, 18]; read 2 at [20, 25] sees 101 and 100 on
    /// account 12 only; read 3 at [50, 60] sees everything.
    fn history(books: &Books) -> Vec<Op> {
        let t = &books.transfers;
        let mut concurrent = view(t, &[1, 2, 3, 4, CROSS, INSIDE]);
        without(&mut concurrent, 2, &t[&CROSS]);
        vec![
            Op {
                client: 1,
                action: Action::Transfer {
                    id: CROSS,
                    debit: 2,
                    credit: 12,
                    amount: 50,
                },
                invoked: 10,
                completed: 40,
                outcome: Outcome::Applied { timestamp: 100 },
            },
            Op {
                client: 2,
                action: Action::Transfer {
                    id: INSIDE,
                    debit: 2,
                    credit: 3,
                    amount: 30,
                },
                invoked: 12,
                completed: 18,
                outcome: Outcome::Applied { timestamp: 110 },
            },
            read(3, 20, 25, concurrent),
            read(4, 50, 60, books.accounts.clone()),
        ]
    }

    fn accounts_of(op: &mut Op) -> &mut Vec<Account> {
        match &mut op.outcome {
            Outcome::Read { accounts } => accounts,
            _ => unreachable!("a read"),
        }
    }

    fn kinds(ops: &[Op], books: &Books) -> Vec<&'static str> {
        let verdict = check_bank(&layout(), ops, books);
        verdict.violation_counts.keys().copied().collect()
    }

    #[test]
    fn a_read_concurrent_with_a_cross_group_transfer_may_see_one_side_only() {
        let books = books();
        let verdict = check_bank(&layout(), &history(&books), &books);
        assert!(verdict.valid(), "{:?}", verdict.violations);
        assert_eq!((verdict.transfers_ok, verdict.reads_ok), (2, 2));
        assert_eq!(verdict.reads_one_sided, 1, "the concurrent read");
    }

    #[test]
    fn a_cross_group_transfer_is_ordered_on_each_account_by_its_confirmation_there() {
        // By its home's timestamp (100) transfer 100 would precede 101 on account 2, and the
        // concurrent read (101 without 100) would match no prefix.
        let mut books = books();
        books.posted_at.clear();
        assert_eq!(kinds(&history(&books), &books), [IMPOSSIBLE_READ]);
    }

    #[test]
    fn a_read_after_the_acknowledgement_missing_one_side_is_stale() {
        let books = books();
        let mut ops = history(&books);
        let t = &books.transfers;
        // Group 2 answers the late read from before its confirmation (and so did the early
        // read, so that only staleness is in question).
        for r in [2, 3] {
            let accounts = accounts_of(&mut ops[r]);
            without(accounts, 12, &t[&CROSS]);
        }
        assert_eq!(kinds(&ops, &books), [STALE_READ]);
    }

    #[test]
    fn a_read_that_loses_what_an_earlier_completed_read_saw_went_back() {
        let books = books();
        let mut ops = history(&books);
        let t = &books.transfers;
        // At [30, 35], after read 2 completed and before 100 was acknowledged: 12 without 100.
        ops.push(read(5, 30, 35, view(t, &[1, 2, 3, 4, INSIDE])));
        assert_eq!(kinds(&ops, &books), [READ_WENT_BACK]);
    }

    #[test]
    fn a_read_seeing_a_cross_group_transfer_before_it_was_invoked_is_from_the_future() {
        let books = books();
        let mut ops = history(&books);
        (ops[2].invoked, ops[2].completed) = (5, 8);
        assert_eq!(kinds(&ops, &books), [READ_FROM_THE_FUTURE]);
    }

    #[test]
    fn money_made_in_a_read_across_groups_is_caught_despite_the_half_seen_transfer() {
        let books = books();
        let mut ops = history(&books);
        let accounts = accounts_of(&mut ops[2]);
        // Account 2 keeps its volume (so its position), but holds 10 more.
        let a = accounts.iter_mut().find(|a| a.id == 2).expect("listed");
        a.debits_posted -= 5;
        a.credits_posted += 5;
        assert_eq!(kinds(&ops, &books), [MONEY_NOT_CONSERVED]);
    }

    #[test]
    fn an_operator_changed_in_a_read_across_groups_is_money_not_conserved() {
        let books = books();
        let mut ops = history(&books);
        let accounts = accounts_of(&mut ops[3]);
        accounts
            .iter_mut()
            .find(|a| a.id == 11)
            .expect("listed")
            .debits_posted += 1;
        assert_eq!(kinds(&ops, &books), [MONEY_NOT_CONSERVED]);
    }
}
