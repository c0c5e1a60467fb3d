//! Saga steps across several ledgers standing for groups: a cross-group transfer reserved,
//! confirmed or cancelled as copies in every group it involves. Checked: every group's books
//! balance at every step (accounts plus clearing), clearing nets to zero across groups once
//! sagas settle, steps are idempotent and final, queries show a copy only once confirmed,
//! chains roll copies back, snapshots carry copies, and a saga gives the balances and the
//! result one group would give the same transfer.

use ledger::{
    Account, AccountFilter, AccountFilterFlags, AccountFlags as AF, Balances, Batch, BatchBody,
    BatchResults, CreateTransferResult as TR, RemoteSides, SagaAction, SagaState, SagaStep,
    StateMachine, Transfer, TransferFlags as TF, Wide, WideBalances,
};
use proptest::prelude::*;

const T0: u64 = 1_700_000_000_000_000_000;

fn account(id: u128, flags: AF) -> Account {
    Account {
        id,
        ledger: 1,
        code: 1,
        flags,
        ..Default::default()
    }
}

fn transfer(id: u128, debit: u128, credit: u128, amount: u128) -> Transfer {
    Transfer {
        id,
        debit_account_id: debit,
        credit_account_id: credit,
        amount,
        ledger: 1,
        code: 1,
        ..Default::default()
    }
}

/// A ledger standing for one group, with its own clock.
struct Group {
    state: StateMachine,
    clock: u64,
}

impl Group {
    fn new(accounts: Vec<Account>) -> Group {
        let mut group = Group {
            state: StateMachine::default(),
            clock: T0,
        };
        let results = group.apply(BatchBody::CreateAccounts(accounts));
        let BatchResults::CreateAccounts(results) = results else {
            unreachable!()
        };
        assert!(results.iter().all(|r| r.result.code() == 0), "{results:?}");
        group
    }

    fn apply(&mut self, body: BatchBody) -> BatchResults {
        self.clock += 1_000_000;
        self.state.apply(&Batch {
            timestamp: self.clock,
            body,
        })
    }

    fn steps(&mut self, steps: Vec<SagaStep>) -> Vec<TR> {
        match self.apply(BatchBody::SagaSteps(steps)) {
            BatchResults::SagaSteps(results) => results.iter().map(|r| r.result).collect(),
            other => unreachable!("saga results expected, got {other:?}"),
        }
    }

    fn step(&mut self, step: SagaStep) -> TR {
        self.steps(vec![step])[0]
    }

    fn transfers(&mut self, transfers: Vec<Transfer>) -> Vec<TR> {
        match self.apply(BatchBody::CreateTransfers(transfers)) {
            BatchResults::CreateTransfers(results) => results.iter().map(|r| r.result).collect(),
            other => unreachable!("transfer results expected, got {other:?}"),
        }
    }

    fn account(&self, id: u128) -> Account {
        *self.state.account(id).expect("account exists")
    }

    /// Per ledger, accounts plus clearing: debits equal credits, pending and posted alike
    /// (summed in 256 bits, as a clearing balance is kept).
    fn assert_books_balance(&self, accounts: &[u128]) {
        let mut sums = WideBalances::default();
        for &id in accounts {
            if let Some(a) = self.state.account(id) {
                sums = sums.plus(Balances::of(a).into());
            }
        }
        for c in self.state.clearing_balances() {
            assert_eq!(c.ledger, 1);
            sums = sums.plus(c.sums);
        }
        assert_eq!(
            sums.debits_pending, sums.credits_pending,
            "pending debits and credits differ"
        );
        assert_eq!(
            sums.debits_posted, sums.credits_posted,
            "posted debits and credits differ"
        );
    }

    /// Clearing's net position (debits − credits, pending and posted) as a signed sum (the
    /// tests that use it book far less than `2^127`).
    fn clearing_net(&self) -> i128 {
        let signed = |value: Wide| -> i128 {
            value
                .to_u128()
                .and_then(|v| i128::try_from(v).ok())
                .expect("these tests book small amounts")
        };
        self.state
            .clearing_balances()
            .iter()
            .map(|c| {
                signed(c.sums.debits_pending) + signed(c.sums.debits_posted)
                    - signed(c.sums.credits_pending)
                    - signed(c.sums.credits_posted)
            })
            .sum()
    }

    fn visible(&self, id: u128) -> bool {
        !self.state.lookup_transfers(&[id]).is_empty()
    }

    fn listed(&self, account: u128, id: u128) -> bool {
        let filter = AccountFilter {
            account_id: account,
            limit: 100,
            flags: AccountFilterFlags::DEBITS | AccountFilterFlags::CREDITS,
            ..Default::default()
        };
        self.state
            .get_account_transfers(&filter)
            .unwrap()
            .iter()
            .any(|t| t.id == id)
    }
}

const ALL_IDS: [u128; 6] = [1, 2, 3, 4, 9, 11];

/// Group A holds 1 (plain), 3 (debits ≤ credits) and 11 (plain, to fund 3); B holds 2 (plain)
/// and 4 (credits ≤ debits); H holds 9 and is the home of the transfers below.
fn three_groups() -> (Group, Group, Group) {
    let a = Group::new(vec![
        account(1, AF::HISTORY),
        account(3, AF::DEBITS_MUST_NOT_EXCEED_CREDITS),
        account(11, AF::empty()),
    ]);
    let b = Group::new(vec![
        account(2, AF::HISTORY),
        account(4, AF::CREDITS_MUST_NOT_EXCEED_DEBITS),
    ]);
    let h = Group::new(vec![account(9, AF::empty())]);
    (a, b, h)
}

fn reserve(t: Transfer, remote: RemoteSides) -> SagaStep {
    SagaStep::reserve(t, remote)
}

#[test]
fn a_cross_group_transfer_reserved_then_confirmed_in_three_groups_moves_money_once() {
    let (mut a, mut b, mut h) = three_groups();
    let t = transfer(100, 1, 2, 70);
    assert_eq!(a.step(reserve(t, RemoteSides::CREDIT)), TR::Created);
    assert_eq!(b.step(reserve(t, RemoteSides::DEBIT)), TR::Created);
    assert_eq!(h.step(reserve(t, RemoteSides::all())), TR::Created);
    for g in [&a, &b, &h] {
        g.assert_books_balance(&ALL_IDS);
        assert!(!g.visible(100), "an open copy is not shown");
        assert_eq!(g.state.saga_copy(100).unwrap().state, SagaState::Open);
        assert_eq!(g.state.open_saga_copies(u64::MAX, 10).len(), 1);
    }
    assert_eq!(a.account(1).debits_pending, 70);
    assert_eq!(b.account(2).credits_pending, 70);
    assert!(!a.listed(1, 100));
    // The decision is taken in the home; then the other copies follow.
    assert_eq!(h.step(SagaStep::confirm(100)), TR::Created);
    assert_eq!(a.step(SagaStep::confirm(100)), TR::Created);
    assert_eq!(b.step(SagaStep::confirm(100)), TR::Created);
    for g in [&a, &b, &h] {
        g.assert_books_balance(&ALL_IDS);
        assert_eq!(
            g.state.lookup_transfers(&[100]),
            vec![*g.state.transfer(100).unwrap()]
        );
        assert!(g.state.open_saga_copies(u64::MAX, 10).is_empty());
    }
    assert!(a.listed(1, 100) && b.listed(2, 100));
    assert_eq!(
        (a.account(1).debits_pending, a.account(1).debits_posted),
        (0, 70)
    );
    assert_eq!(
        (b.account(2).credits_pending, b.account(2).credits_posted),
        (0, 70)
    );
    assert_eq!(a.clearing_net() + b.clearing_net() + h.clearing_net(), 0);
    // Every copy keeps the caller's fields; each group stamps its own copy.
    for g in [&a, &b, &h] {
        let copy = g.state.transfer(100).unwrap();
        assert_eq!(
            (copy.debit_account_id, copy.credit_account_id, copy.amount),
            (1, 2, 70)
        );
        assert_eq!(copy.flags, TF::empty());
    }
    // The balance history shows the hold and its settlement.
    let filter = AccountFilter {
        account_id: 1,
        limit: 10,
        flags: AccountFilterFlags::DEBITS | AccountFilterFlags::CREDITS,
        ..Default::default()
    };
    let rows = a.state.get_account_balances(&filter).unwrap();
    let shown: Vec<(u128, u128)> = rows
        .iter()
        .map(|r| (r.debits_pending, r.debits_posted))
        .collect();
    assert_eq!(shown, vec![(70, 0), (0, 70)]);
}

#[test]
fn a_refused_reservation_cancels_the_saga_releasing_every_hold_and_burning_the_id() {
    let (mut a, mut b, mut h) = three_groups();
    // Account 3 may not debit more than its credits (none): A refuses.
    let t = transfer(200, 3, 2, 5);
    assert_eq!(h.step(reserve(t, RemoteSides::all())), TR::Created);
    assert_eq!(b.step(reserve(t, RemoteSides::DEBIT)), TR::Created);
    assert_eq!(a.step(reserve(t, RemoteSides::CREDIT)), TR::ExceedsCredits);
    assert_eq!(h.step(SagaStep::cancel(200)), TR::Created);
    assert_eq!(b.step(SagaStep::cancel(200)), TR::Created);
    for g in [&a, &b, &h] {
        g.assert_books_balance(&ALL_IDS);
        assert!(!g.visible(200));
        assert_eq!(g.clearing_net(), 0);
    }
    assert_eq!(b.account(2).credits_pending, 0);
    assert!(!b.listed(2, 200));
    assert_eq!(h.state.saga_copy(200).unwrap().state, SagaState::Cancelled);
    // The id is burnt in its home, for a saga's retry and a plain create alike.
    assert_eq!(h.step(reserve(t, RemoteSides::all())), TR::IdAlreadyFailed);
    assert_eq!(
        h.transfers(vec![transfer(200, 9, 3, 5)]),
        [TR::IdAlreadyFailed]
    );
    // Settling is final.
    assert_eq!(h.step(SagaStep::cancel(200)), TR::Exists);
    assert_eq!(
        h.step(SagaStep::confirm(200)),
        TR::PendingTransferAlreadyVoided
    );
}

/// A clearing balance sums every saga of its ledger in its group, over every account, so it
/// passes `u128` where no account does: two transfers of `2^127` from two accounts fill a
/// `u128` sum. It is kept in 256 bits, so the sagas after them still answer as one group
/// would (it once refused every later saga of the ledger: a denial of service any writer could
/// cause). An account's own overflow still answers as one group's.
#[test]
fn a_clearing_balance_past_u128_refuses_nothing_and_still_balances() {
    let half = 1u128 << 127;
    // Group B holds accounts 2, 3 and 4; 1 and 5 live elsewhere (remote debits here).
    let mut b = Group::new(vec![
        account(2, AF::empty()),
        account(3, AF::empty()),
        account(4, AF::empty()),
    ]);
    for (id, debit, credit) in [(10, 1, 2), (11, 5, 3)] {
        let t = transfer(id, debit, credit, half);
        assert_eq!(b.step(reserve(t, RemoteSides::DEBIT)), TR::Created);
        b.assert_books_balance(&[2, 3, 4]);
        assert_eq!(b.step(SagaStep::confirm(id)), TR::Created);
    }
    let clearing = b.state.clearing_balances()[0];
    assert_eq!(clearing.sums.debits_posted, Wide { high: 1, low: 0 });
    assert_eq!(
        clearing.sums.debits_posted.to_string(),
        "340282366920938463463374607431768211456"
    );
    // The next saga of the ledger is created, held, confirmed and cancelled as usual.
    let t = transfer(12, 1, 4, 20);
    assert_eq!(b.step(reserve(t, RemoteSides::DEBIT)), TR::Created);
    assert_eq!(b.step(SagaStep::confirm(12)), TR::Created);
    let t = transfer(13, 5, 4, 7);
    assert_eq!(b.step(reserve(t, RemoteSides::DEBIT)), TR::Created);
    assert_eq!(b.step(SagaStep::cancel(13)), TR::Created);
    assert_eq!(b.account(4).credits_posted, 20);
    assert_eq!(b.account(4).credits_pending, 0);
    let clearing = b.state.clearing_balances()[0];
    assert_eq!(clearing.sums.debits_posted, Wide { high: 1, low: 20 });
    assert_eq!(clearing.sums.debits_pending, Wide::ZERO);
    b.assert_books_balance(&[2, 3, 4]);
    // Account 2's credits would overflow: answered as one group holding account 1 answers.
    let t = transfer(14, 1, 2, half);
    assert_eq!(
        b.step(reserve(t, RemoteSides::DEBIT)),
        TR::OverflowsCreditsPosted
    );
    b.assert_books_balance(&[2, 3, 4]);

    // A failed chain whose first reservation held 2^127 more leaves the wide sum as it was.
    let before = b.state.clearing_balances();
    let held = Transfer {
        flags: TF::LINKED,
        ..transfer(15, 1, 4, half)
    };
    let results = b.steps(vec![
        reserve(held, RemoteSides::DEBIT),
        reserve(transfer(16, 1, 9, 1), RemoteSides::DEBIT), // 9 is no account here
    ]);
    assert_eq!(results, [TR::LinkedEventFailed, TR::CreditAccountNotFound]);
    assert_eq!(b.state.clearing_balances(), before);

    // A snapshot carries the sum past 2^128 (rebuilt from the copies) and both go on alike.
    let held = transfer(17, 1, 4, half);
    assert_eq!(b.step(reserve(held, RemoteSides::DEBIT)), TR::Created);
    let mut bytes = Vec::new();
    let digest = b.state.write_snapshot(&mut bytes).unwrap();
    let (mut restored, read_digest) =
        StateMachine::read_snapshot(&mut &bytes[..], bytes.len() as u64).unwrap();
    assert_eq!(read_digest, digest);
    assert_eq!(restored.clearing_balances(), b.state.clearing_balances());
    assert_eq!(
        restored.clearing_balances()[0].sums.debits_pending,
        Wide::from(half)
    );
    assert_eq!(b.step(SagaStep::confirm(17)), TR::Created);
    let confirm = Batch {
        timestamp: b.clock,
        body: BatchBody::SagaSteps(vec![SagaStep::confirm(17)]),
    };
    restored.apply(&confirm);
    assert_eq!(restored.digest(), b.state.digest());
    assert_eq!(restored.clearing_balances(), b.state.clearing_balances());
    assert_eq!(
        restored.clearing_balances()[0].sums.debits_posted,
        Wide {
            high: 1,
            low: 20 + half
        }
    );
}

/// A plain transfer's overflow codes, not a pending one's: a reservation books pending, but
/// answers what one group answers the plain transfer it carries.
#[test]
fn a_reservation_answers_a_plain_transfers_overflow_codes() {
    let mut a = Group::new(vec![account(1, AF::empty()), account(2, AF::empty())]);
    let hold = Transfer {
        flags: TF::PENDING,
        ..transfer(1, 1, 2, u128::MAX - 5)
    };
    assert_eq!(a.transfers(vec![hold]), vec![TR::Created]);
    // One group holding both sides answers the total's overflow...
    let mut one = Group::new(vec![
        account(1, AF::empty()),
        account(2, AF::empty()),
        account(3, AF::empty()),
    ]);
    assert_eq!(one.transfers(vec![hold]), vec![TR::Created]);
    assert_eq!(
        one.transfers(vec![transfer(2, 1, 3, 10)]),
        vec![TR::OverflowsDebits]
    );
    // ... and so does a reservation of the same transfer with its credit elsewhere.
    let t = transfer(2, 1, 3, 10);
    assert_eq!(a.step(reserve(t, RemoteSides::CREDIT)), TR::OverflowsDebits);
}

#[test]
fn steps_are_idempotent_final_and_checked() {
    let (mut a, _b, _h) = three_groups();
    let t = transfer(300, 1, 2, 9);
    assert_eq!(a.step(reserve(t, RemoteSides::CREDIT)), TR::Created);
    assert_eq!(a.step(reserve(t, RemoteSides::CREDIT)), TR::Exists);
    assert_eq!(
        a.step(reserve(Transfer { amount: 8, ..t }, RemoteSides::CREDIT)),
        TR::ExistsWithDifferentAmount
    );
    assert_eq!(
        a.step(reserve(t, RemoteSides::all())),
        TR::ExistsWithDifferentFlags
    );
    assert_eq!(a.step(SagaStep::confirm(300)), TR::Created);
    assert_eq!(a.step(SagaStep::confirm(300)), TR::Exists);
    assert_eq!(
        a.step(SagaStep::cancel(300)),
        TR::PendingTransferAlreadyPosted
    );
    assert_eq!(a.account(1).debits_posted, 9, "settled once");
    // A plain create of the same transfer answers as for any existing transfer.
    assert_eq!(a.transfers(vec![t]), [TR::Exists]);

    assert_eq!(a.step(SagaStep::confirm(301)), TR::PendingTransferNotFound);
    assert_eq!(a.transfers(vec![transfer(302, 1, 11, 1)]), [TR::Created]);
    assert_eq!(a.step(SagaStep::cancel(302)), TR::PendingTransferNotPending);
    let unknown = SagaStep {
        action: SagaAction::Unknown(9),
        transfer: transfer(303, 1, 2, 1),
    };
    assert_eq!(a.step(unknown), TR::ReservedFlag);
    for flags in [
        TF::PENDING,
        TF::BALANCING_DEBIT,
        TF::IMPORTED,
        TF::CLOSING_DEBIT,
    ] {
        let t = Transfer {
            flags,
            ..transfer(304, 1, 2, 1)
        };
        assert_eq!(a.step(reserve(t, RemoteSides::CREDIT)), TR::ReservedFlag);
    }
    // Local sides are checked as one group checks them; remote ones are not looked up.
    assert_eq!(
        a.step(reserve(transfer(305, 7, 2, 1), RemoteSides::CREDIT)),
        TR::DebitAccountNotFound
    );
    assert_eq!(
        a.step(reserve(transfer(306, 1, 7, 1), RemoteSides::empty())),
        TR::CreditAccountNotFound
    );
    assert_eq!(
        a.step(reserve(
            Transfer {
                ledger: 2,
                ..transfer(307, 1, 2, 1)
            },
            RemoteSides::CREDIT
        )),
        TR::AccountsMustHaveTheSameLedger
    );
    assert_eq!(
        a.step(reserve(transfer(308, 1, 1, 1), RemoteSides::CREDIT)),
        TR::AccountsMustBeDifferent
    );
    a.assert_books_balance(&ALL_IDS);
}

#[test]
fn a_failed_linked_chain_of_reservations_leaves_no_trace() {
    let (mut a, _b, _h) = three_groups();
    let clearing_before = a.state.clearing_balances();
    let first = Transfer {
        flags: TF::LINKED,
        ..transfer(400, 1, 2, 10)
    };
    let second = transfer(401, 3, 2, 10); // exceeds 3's credits
    let results = a.steps(vec![
        reserve(first, RemoteSides::CREDIT),
        reserve(second, RemoteSides::CREDIT),
    ]);
    assert_eq!(results, [TR::LinkedEventFailed, TR::ExceedsCredits]);
    assert_eq!(a.state.clearing_balances(), clearing_before);
    assert!(a.state.saga_copy(400).is_none() && a.state.transfer(400).is_none());
    assert_eq!(a.account(1).debits_pending, 0);
    assert!(!a.listed(1, 400));
    // A chain that holds keeps both copies, and a settlement may close it.
    let results = a.steps(vec![
        reserve(first, RemoteSides::CREDIT),
        reserve(
            Transfer {
                flags: TF::LINKED,
                ..transfer(402, 1, 2, 5)
            },
            RemoteSides::CREDIT,
        ),
        SagaStep::confirm(400),
    ]);
    assert_eq!(results, [TR::Created, TR::Created, TR::Created]);
    assert_eq!(a.account(1).debits_pending, 5);
    assert_eq!(a.account(1).debits_posted, 10);
    a.assert_books_balance(&ALL_IDS);
}

#[test]
fn snapshots_carry_copies_and_clearing_and_both_states_go_on_alike() {
    let (mut a, _b, _h) = three_groups();
    assert_eq!(a.transfers(vec![transfer(500, 11, 3, 100)]), [TR::Created]);
    for (id, amount) in [(501, 10), (502, 20), (503, 30)] {
        assert_eq!(
            a.step(reserve(transfer(id, 3, 2, amount), RemoteSides::CREDIT)),
            TR::Created
        );
    }
    assert_eq!(a.step(SagaStep::confirm(501)), TR::Created);
    assert_eq!(a.step(SagaStep::cancel(502)), TR::Created);
    assert_eq!(
        a.step(reserve(transfer(504, 2, 1, 4), RemoteSides::DEBIT)),
        TR::Created
    );
    let mut bytes = Vec::new();
    let digest = a.state.write_snapshot(&mut bytes).unwrap();
    let (mut restored, read_digest) =
        StateMachine::read_snapshot(&mut &bytes[..], bytes.len() as u64).unwrap();
    assert_eq!(read_digest, digest);
    assert_eq!(restored.digest(), digest);
    assert_eq!(restored.clearing_balances(), a.state.clearing_balances());
    assert_eq!(
        StateMachine::check_snapshot_structure(&mut &bytes[..], bytes.len() as u64).unwrap(),
        digest
    );
    for id in [501, 502, 503, 504] {
        assert_eq!(restored.saga_copy(id), a.state.saga_copy(id));
    }
    let filter = AccountFilter {
        account_id: 1,
        limit: 10,
        flags: AccountFilterFlags::DEBITS | AccountFilterFlags::CREDITS,
        ..Default::default()
    };
    assert_eq!(
        restored.get_account_balances(&filter).unwrap(),
        a.state.get_account_balances(&filter).unwrap()
    );
    // Both go on alike.
    let next = Batch {
        timestamp: a.clock + 1_000_000,
        body: BatchBody::SagaSteps(vec![
            SagaStep::confirm(503),
            SagaStep::cancel(504),
            reserve(transfer(505, 1, 2, 1), RemoteSides::CREDIT),
        ]),
    };
    assert_eq!(restored.apply(&next), a.state.apply(&next));
    assert_eq!(restored.digest(), a.state.digest());
    assert_eq!(
        restored.get_account_balances(&filter).unwrap(),
        a.state.get_account_balances(&filter).unwrap()
    );
}

#[test]
fn saga_steps_survive_a_batch_encoding_and_an_unknown_step_stays_unknown() {
    let batch = Batch {
        timestamp: 7,
        body: BatchBody::SagaSteps(vec![
            reserve(transfer(1, 2, 3, 4), RemoteSides::DEBIT),
            SagaStep::confirm(5),
            SagaStep::cancel(6),
            SagaStep {
                action: SagaAction::Unknown(200),
                transfer: transfer(8, 9, 10, 11),
            },
        ]),
    };
    let bytes = batch.encode();
    assert_eq!(bytes.len(), batch.encoded_len());
    assert_eq!(Batch::decode(&bytes).unwrap(), batch);
}

/// One saga in the test's driver: reserve in every group, commit if all reserved.
#[derive(Debug, Clone)]
struct Saga {
    id: u128,
    debit: usize,
    credit: usize,
    amount: u128,
}

/// Accounts: group g holds ids 10g+1 (plain), 10g+2 (debits ≤ credits), 10g+3 (credits ≤
/// debits). The reference single ledger holds all of them.
fn accounts_of(group: usize) -> Vec<Account> {
    let base = 10 * group as u128;
    vec![
        account(base + 1, AF::empty()),
        account(base + 2, AF::DEBITS_MUST_NOT_EXCEED_CREDITS),
        account(base + 3, AF::CREDITS_MUST_NOT_EXCEED_DEBITS),
    ]
}

fn group_of(account: u128) -> usize {
    (account / 10) as usize
}

fn saga_strategy() -> impl Strategy<Value = Vec<(usize, usize, usize, u128, bool)>> {
    // (debit account 0..9, credit account 0..9, home group, amount, cancel instead of commit)
    prop::collection::vec(
        (
            0usize..9,
            0usize..9,
            0usize..3,
            1u128..60,
            prop::bool::weighted(0.2),
        ),
        1..40,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Sagas run one after the other give, account for account, the balances and the results
    /// one ledger gives the same transfers; every group balances its books at every step and
    /// clearing nets to zero at the end.
    #[test]
    fn sagas_give_the_balances_and_results_of_one_ledger(plan in saga_strategy()) {
        let mut groups: Vec<Group> = (0..3).map(|g| Group::new(accounts_of(g))).collect();
        let mut single = Group::new((0..3).flat_map(accounts_of).collect());
        let ids: Vec<u128> = (0..3).flat_map(accounts_of).map(|a| a.id).collect();
        let account_id = |n: usize| 10 * (n / 3) as u128 + (n % 3) as u128 + 1;
        for (n, &(debit, credit, home, amount, abort)) in plan.iter().enumerate() {
            let saga = Saga {
                id: 1_000 + n as u128,
                debit: group_of(account_id(debit)),
                credit: group_of(account_id(credit)),
                amount,
            };
            let t = transfer(saga.id, account_id(debit), account_id(credit), saga.amount);
            let mut involved = vec![home, saga.debit, saga.credit];
            involved.sort_unstable();
            involved.dedup();
            let mut results = Vec::new();
            for &g in &involved {
                let mut remote = RemoteSides::empty();
                if g != saga.debit {
                    remote |= RemoteSides::DEBIT;
                }
                if g != saga.credit {
                    remote |= RemoteSides::CREDIT;
                }
                results.push((g, groups[g].step(reserve(t, remote))));
                for g in &groups {
                    g.assert_books_balance(&ids);
                }
            }
            let reserved = results.iter().all(|&(_, r)| r == TR::Created);
            let commit = reserved && !abort;
            for &(g, r) in &results {
                if r == TR::Created {
                    let step = if commit { SagaStep::confirm(saga.id) } else { SagaStep::cancel(saga.id) };
                    prop_assert_eq!(groups[g].step(step), TR::Created);
                }
            }
            // The one ledger's answer: created exactly when every group reserved; otherwise
            // the failure of highest precedence among the groups'.
            if !abort || !reserved {
                let expected = single.transfers(vec![t])[0];
                let failures: Vec<TR> = results.iter().map(|&(_, r)| r).filter(|&r| r != TR::Created).collect();
                let first = failures.iter().copied().min_by_key(|r| TR::ALL.iter().position(|c| c == r));
                prop_assert_eq!(expected, first.unwrap_or(TR::Created), "saga {:?}", saga);
            }
            for g in &groups {
                g.assert_books_balance(&ids);
                prop_assert!(g.state.open_saga_copies(u64::MAX, 1).is_empty());
            }
        }
        prop_assert_eq!(groups.iter().map(|g| g.clearing_net()).sum::<i128>(), 0);
        for id in ids {
            let g = &groups[group_of(id)];
            let (mine, one) = (g.account(id), single.account(id));
            prop_assert_eq!(
                (mine.debits_pending, mine.debits_posted, mine.credits_pending, mine.credits_posted),
                (one.debits_pending, one.debits_posted, one.credits_pending, one.credits_posted),
                "account {}", id
            );
        }
    }

    /// Sagas whose steps interleave (holds of several open at once, settled in any order)
    /// keep every group's books balanced at every step and net clearing to zero at the end;
    /// no account ever exceeds its limit, holds included.
    #[test]
    fn interleaved_sagas_keep_every_group_balanced(plan in saga_strategy(), seed in any::<u64>()) {
        let mut groups: Vec<Group> = (0..3).map(|g| Group::new(accounts_of(g))).collect();
        let ids: Vec<u128> = (0..3).flat_map(accounts_of).map(|a| a.id).collect();
        let account_id = |n: usize| 10 * (n / 3) as u128 + (n % 3) as u128 + 1;
        // Every reservation first, in plan order, then every settlement in a shuffled order.
        let mut settlements = Vec::new();
        for (n, &(debit, credit, home, amount, abort)) in plan.iter().enumerate() {
            let id = 1_000 + n as u128;
            let (dg, cg) = (group_of(account_id(debit)), group_of(account_id(credit)));
            let t = transfer(id, account_id(debit), account_id(credit), amount);
            let mut involved = vec![home, dg, cg];
            involved.sort_unstable();
            involved.dedup();
            let mut all = true;
            let mut created = Vec::new();
            for &g in &involved {
                let mut remote = RemoteSides::empty();
                if g != dg { remote |= RemoteSides::DEBIT; }
                if g != cg { remote |= RemoteSides::CREDIT; }
                match groups[g].step(reserve(t, remote)) {
                    TR::Created => created.push(g),
                    _ => all = false,
                }
                for g in &groups {
                    g.assert_books_balance(&ids);
                    for a in ids.iter().filter_map(|&id| g.state.account(id)) {
                        prop_assert!(!a.flags.contains(AF::DEBITS_MUST_NOT_EXCEED_CREDITS)
                            || a.debits_pending + a.debits_posted <= a.credits_posted);
                        prop_assert!(!a.flags.contains(AF::CREDITS_MUST_NOT_EXCEED_DEBITS)
                            || a.credits_pending + a.credits_posted <= a.debits_posted);
                    }
                }
            }
            for g in created {
                settlements.push((g, id, all && !abort));
            }
        }
        let mut x = seed | 1;
        for i in (1..settlements.len()).rev() {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            settlements.swap(i, (x % (i as u64 + 1)) as usize);
        }
        for (g, id, commit) in settlements {
            let step = if commit { SagaStep::confirm(id) } else { SagaStep::cancel(id) };
            prop_assert_eq!(groups[g].step(step), TR::Created);
            for g in &groups {
                g.assert_books_balance(&ids);
            }
        }
        prop_assert_eq!(groups.iter().map(|g| g.clearing_net()).sum::<i128>(), 0);
        for g in &groups {
            prop_assert!(g.state.open_saga_copies(u64::MAX, 1).is_empty());
        }
    }
}
