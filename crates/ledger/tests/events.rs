//! Change events from random batches (accounts with limits, plain, pending, post, void, expiry,
//! balancing, linked chains that fail, saga reserve/confirm/cancel with remote sides): the
//! sequence numbers are contiguous from 1, every batch ends with a marker counting its events,
//! and replaying the events' amounts from zero gives, at every event, the balances the event
//! carries and at the end every account's and clearing balance of the state. A state read back
//! from its snapshot numbers the next events as the original does, and recording off changes
//! nothing but the recording.

use std::collections::BTreeMap;

use ledger::{
    Account, AccountFlags as AF, Balances, Batch, BatchBody, Event, EventBody, EventKind,
    RemoteSides, SagaStep, StateMachine, Transfer, TransferFlags as TF,
};
use proptest::prelude::*;

const T0: u64 = 1_700_000_000_000_000_000;
const ACCOUNTS: u128 = 6;

#[derive(Debug, Clone)]
enum Spec {
    Accounts(Vec<(u128, u16)>),
    Transfers(Vec<(u128, u128, u128, u128, u16, u128, u32)>),
    Sagas(Vec<(u8, u128, u128, u128, u128, u8)>),
    /// Advance the clock this many seconds (expiries fire in the next batch).
    Wait(u64),
}

fn spec() -> impl Strategy<Value = Spec> {
    let flags = prop_oneof![
        6 => Just(0u16),
        4 => Just(TF::PENDING.bits()),
        3 => Just(TF::POST_PENDING_TRANSFER.bits()),
        2 => Just(TF::VOID_PENDING_TRANSFER.bits()),
        2 => Just(TF::LINKED.bits()),
        1 => Just((TF::LINKED | TF::PENDING).bits()),
        1 => Just(TF::BALANCING_DEBIT.bits()),
        1 => Just((TF::PENDING | TF::CLOSING_CREDIT).bits()),
    ];
    prop_oneof![
        2 => prop::collection::vec(
            (1..=ACCOUNTS, prop_oneof![3 => Just(0u16), 1 => Just(AF::DEBITS_MUST_NOT_EXCEED_CREDITS.bits()), 1 => Just(AF::LINKED.bits())]),
            1..4
        ).prop_map(Spec::Accounts),
        6 => prop::collection::vec(
            (1u128..=40, 1..=ACCOUNTS, 1..=ACCOUNTS, 0u128..=50, flags, 0u128..=40, 0u32..=2),
            1..12
        ).prop_map(Spec::Transfers),
        3 => prop::collection::vec(
            (0u8..=3, 41u128..=60, 1..=ACCOUNTS, 1..=ACCOUNTS, 1u128..=30, 0u8..=3),
            1..6
        ).prop_map(Spec::Sagas),
        1 => (1u64..=3).prop_map(Spec::Wait),
    ]
}

fn body(spec: &Spec) -> Option<BatchBody> {
    Some(match spec {
        Spec::Accounts(accounts) => BatchBody::CreateAccounts(
            accounts
                .iter()
                .map(|&(id, flags)| Account {
                    id,
                    ledger: 1,
                    code: 1,
                    flags: AF::from_bits_retain(flags),
                    ..Default::default()
                })
                .collect(),
        ),
        Spec::Transfers(transfers) => BatchBody::CreateTransfers(
            transfers
                .iter()
                .map(|&(id, debit, credit, amount, flags, pending_id, timeout)| {
                    let flags = TF::from_bits_retain(flags);
                    if flags.intersects(TF::POST_PENDING_TRANSFER | TF::VOID_PENDING_TRANSFER) {
                        // Fields left to the pending transfer, mostly: whole or partial posts.
                        return Transfer {
                            id,
                            pending_id,
                            amount: match (flags.contains(TF::VOID_PENDING_TRANSFER), amount % 3) {
                                (true, 0) => amount,
                                (true, _) => 0,
                                (false, 0) => u128::MAX,
                                (false, _) => amount % 5,
                            },
                            flags,
                            ..Default::default()
                        };
                    }
                    Transfer {
                        id,
                        debit_account_id: debit,
                        credit_account_id: credit,
                        amount,
                        pending_id: if flags
                            .intersects(TF::POST_PENDING_TRANSFER | TF::VOID_PENDING_TRANSFER)
                        {
                            pending_id
                        } else {
                            0
                        },
                        timeout: if flags.contains(TF::PENDING) {
                            timeout
                        } else {
                            0
                        },
                        ledger: 1,
                        code: 1,
                        flags,
                        ..Default::default()
                    }
                })
                .collect(),
        ),
        Spec::Sagas(steps) => BatchBody::SagaSteps(
            steps
                .iter()
                .map(
                    |&(action, id, debit, credit, amount, remote)| match action {
                        0 | 1 => SagaStep::reserve(
                            Transfer {
                                id,
                                debit_account_id: debit,
                                credit_account_id: credit,
                                amount,
                                ledger: 1,
                                code: 1,
                                flags: if action == 1 { TF::LINKED } else { TF::empty() },
                                ..Default::default()
                            },
                            RemoteSides::from_bits_retain(remote),
                        ),
                        2 => SagaStep::confirm(id),
                        _ => SagaStep::cancel(id),
                    },
                )
                .collect(),
        ),
        Spec::Wait(_) => return None,
    })
}

/// Balances rebuilt from the events alone: accounts by id, clearing by ledger, and each
/// transfer's amount (a post or void finds its pending transfer's here).
#[derive(Default)]
struct Replay {
    accounts: BTreeMap<u128, Balances>,
    clearing: BTreeMap<u32, Balances>,
    amounts: BTreeMap<u128, u128>,
    seq_last: u64,
    batch_first: u64,
    markers: u64,
}

impl Replay {
    fn side(&mut self, remote: bool, id: u128, ledger: u32) -> &mut Balances {
        if remote {
            self.clearing.entry(ledger).or_default()
        } else {
            self.accounts
                .get_mut(&id)
                .expect("an event names a known account")
        }
    }

    fn event(&mut self, event: &Event) {
        assert_eq!(event.seq, self.seq_last + 1, "contiguous: {event:?}");
        self.seq_last = event.seq;
        match &event.body {
            EventBody::Account(account) => {
                assert_eq!(event.kind, EventKind::AccountCreated);
                assert_eq!(event.timestamp, account.timestamp);
                let fresh = self.accounts.insert(account.id, Balances::default());
                assert!(fresh.is_none(), "an account is created once");
            }
            EventBody::Batch(marker) => {
                assert_eq!(marker.first_seq, self.batch_first);
                assert_eq!(marker.first_seq + u64::from(marker.events_count), event.seq);
                self.batch_first = event.seq + 1;
                self.markers += 1;
            }
            EventBody::Transfer(change) => {
                let t = change.transfer;
                let pending_of = |replay: &Replay, id: u128| replay.amounts[&id];
                // (debit side change, credit side change) as (pending delta, posted delta).
                let (pending_add, pending_sub, posted) = match event.kind {
                    EventKind::TransferCreated if t.flags.contains(TF::PENDING) => (t.amount, 0, 0),
                    EventKind::TransferCreated => (0, 0, t.amount),
                    EventKind::TransferPosted => (0, pending_of(self, t.pending_id), t.amount),
                    EventKind::TransferVoided => (0, pending_of(self, t.pending_id), 0),
                    EventKind::TransferExpired => (0, t.amount, 0),
                    EventKind::SagaReserved => (t.amount, 0, 0),
                    EventKind::SagaConfirmed => (0, t.amount, t.amount),
                    EventKind::SagaCancelled => (0, t.amount, 0),
                    other => panic!("{other:?} with a transfer body"),
                };
                if matches!(
                    event.kind,
                    EventKind::TransferCreated
                        | EventKind::TransferPosted
                        | EventKind::TransferVoided
                        | EventKind::SagaReserved
                ) {
                    assert_eq!(event.timestamp, t.timestamp);
                    self.amounts.insert(t.id, t.amount);
                }
                // Both sides first: when both are remote, they are one clearing balance.
                let remote_debit = change.remote.contains(RemoteSides::DEBIT);
                let remote_credit = change.remote.contains(RemoteSides::CREDIT);
                // A clearing side modulo 2^128, as events carry it; an account's must never
                // wrap (checked arithmetic panics if it would).
                let step = |value: u128, add: u128, sub: u128, clearing: bool| {
                    if clearing {
                        value.wrapping_add(add).wrapping_sub(sub)
                    } else {
                        value + add - sub
                    }
                };
                let debit = self.side(remote_debit, t.debit_account_id, t.ledger);
                debit.debits_pending =
                    step(debit.debits_pending, pending_add, pending_sub, remote_debit);
                debit.debits_posted = step(debit.debits_posted, posted, 0, remote_debit);
                let credit = self.side(remote_credit, t.credit_account_id, t.ledger);
                credit.credits_pending = step(
                    credit.credits_pending,
                    pending_add,
                    pending_sub,
                    remote_credit,
                );
                credit.credits_posted = step(credit.credits_posted, posted, 0, remote_credit);
                let debit = *self.side(remote_debit, t.debit_account_id, t.ledger);
                assert_eq!(debit, change.debit, "debit side after {event:?}");
                let credit = *self.side(remote_credit, t.credit_account_id, t.ledger);
                assert_eq!(credit, change.credit, "credit side after {event:?}");
            }
        }
    }
}

fn run(specs: &[Spec], events_on: bool) -> (StateMachine, Vec<Event>) {
    let mut state = StateMachine::default();
    state.set_events(events_on);
    let mut clock = T0;
    let mut events = Vec::new();
    for (index, spec) in specs.iter().enumerate() {
        clock += 1_000_000;
        let Some(body) = body(spec) else {
            if let Spec::Wait(seconds) = spec {
                clock += seconds * 1_000_000_000;
            }
            continue;
        };
        state.apply(&Batch {
            timestamp: clock,
            body,
        });
        events.extend(state.take_events(index as u64 + 1));
        assert_eq!(
            events.last().map_or(0, |e| e.seq),
            if events_on { state.event_seq_last() } else { 0 }
        );
    }
    (state, events)
}

/// The strategy reaches every kind of event (else the property below proves less than it says).
#[test]
fn the_random_batches_yield_every_kind_of_event() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..300 {
        let specs = prop::collection::vec(spec(), 1..40)
            .new_tree(&mut runner)
            .unwrap()
            .current();
        seen.extend(run(&specs, true).1.iter().map(|e| e.kind));
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), EventKind::ALL);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn events_are_contiguous_and_replaying_them_gives_every_balance(
        specs in prop::collection::vec(spec(), 1..40)
    ) {
        let (state, events) = run(&specs, true);
        let mut replay = Replay { batch_first: 1, ..Replay::default() };
        for event in &events {
            replay.event(event);
        }
        prop_assert_eq!(replay.seq_last, state.event_seq_last());
        prop_assert_eq!(replay.markers, state.batches_applied());
        for (&id, balances) in &replay.accounts {
            let account = state.account(id).expect("an account created by an event exists");
            prop_assert_eq!(
                *balances,
                Balances {
                    debits_pending: account.debits_pending,
                    debits_posted: account.debits_posted,
                    credits_pending: account.credits_pending,
                    credits_posted: account.credits_posted,
                }
            );
        }
        prop_assert_eq!(replay.accounts.len(), state.accounts_count());
        for clearing in state.clearing_balances() {
            let replayed = replay.clearing.get(&clearing.ledger).copied().unwrap_or_default();
            // An event carries a clearing balance's low 128 bits (its value modulo 2^128).
            prop_assert_eq!(replayed.debits_pending, clearing.sums.debits_pending.low);
            prop_assert_eq!(replayed.debits_posted, clearing.sums.debits_posted.low);
            prop_assert_eq!(replayed.credits_pending, clearing.sums.credits_pending.low);
            prop_assert_eq!(replayed.credits_posted, clearing.sums.credits_posted.low);
        }

        // Recording off: the same state and numbering, nothing recorded.
        let (quiet, none) = run(&specs, false);
        prop_assert!(none.is_empty());
        prop_assert_eq!(quiet.event_seq_last(), state.event_seq_last());
        prop_assert_eq!(quiet.digest(), state.digest());
    }

    #[test]
    fn a_state_read_from_its_snapshot_numbers_the_next_events_as_the_original(
        before in prop::collection::vec(spec(), 1..20),
        after in prop::collection::vec(spec(), 1..10),
    ) {
        let (mut original, _) = run(&before, true);
        let mut bytes = Vec::new();
        original.write_snapshot(&mut bytes).unwrap();
        let (mut restored, _) = StateMachine::read_snapshot(&mut &bytes[..], bytes.len() as u64).unwrap();
        restored.set_events(true);
        prop_assert_eq!(restored.event_seq_last(), original.event_seq_last());
        let mut clock = T0 + 10_000_000_000;
        for spec in &after {
            clock += 1_000_000;
            let Some(body) = body(spec) else { continue };
            let batch = Batch { timestamp: clock, body };
            original.apply(&batch);
            restored.apply(&batch);
            prop_assert_eq!(original.take_events(7), restored.take_events(7));
        }
    }
}

#[test]
fn a_failed_linked_chain_leaves_no_event_and_no_gap() {
    let mut state = StateMachine::default();
    state.set_events(true);
    let accounts = (1..=2)
        .map(|id| Account {
            id,
            ledger: 1,
            code: 1,
            ..Default::default()
        })
        .collect();
    state.apply(&Batch {
        timestamp: T0,
        body: BatchBody::CreateAccounts(accounts),
    });
    let first = state.take_events(1);
    assert_eq!(
        first.iter().map(|e| (e.seq, e.kind)).collect::<Vec<_>>(),
        [
            (1, EventKind::AccountCreated),
            (2, EventKind::AccountCreated),
            (3, EventKind::Batch)
        ]
    );
    let transfer = |id, flags, debit| Transfer {
        id,
        debit_account_id: debit,
        credit_account_id: 2,
        amount: 5,
        ledger: 1,
        code: 1,
        flags,
        ..Default::default()
    };
    // A chain whose second transfer fails (unknown account), then a plain transfer.
    state.apply(&Batch {
        timestamp: T0 + 1,
        body: BatchBody::CreateTransfers(vec![
            transfer(10, TF::LINKED, 1),
            transfer(11, TF::empty(), 9),
            transfer(12, TF::empty(), 1),
        ]),
    });
    let events = state.take_events(2);
    assert_eq!(
        events.iter().map(|e| (e.seq, e.kind)).collect::<Vec<_>>(),
        [(4, EventKind::TransferCreated), (5, EventKind::Batch)]
    );
    let EventBody::Batch(marker) = events[1].body else {
        unreachable!()
    };
    assert_eq!(
        (marker.first_seq, marker.events_count, marker.log_index),
        (4, 1, 2)
    );
}

/// A clearing balance past `2^128` (two sagas of `2^127` between accounts of other groups) is
/// carried by events modulo `2^128`, and the next saga's events go on from there.
#[test]
fn events_carry_a_clearing_balance_past_u128_modulo_2_128() {
    let mut state = StateMachine::default();
    state.set_events(true);
    let half = 1u128 << 127;
    let copy = |id, amount| Transfer {
        id,
        debit_account_id: 1,
        credit_account_id: 2,
        amount,
        ledger: 1,
        code: 1,
        ..Default::default()
    };
    // This group is only the home: both accounts live elsewhere.
    let both = RemoteSides::DEBIT | RemoteSides::CREDIT;
    state.apply(&Batch {
        timestamp: T0,
        body: BatchBody::SagaSteps(vec![
            SagaStep::reserve(copy(10, half), both),
            SagaStep::reserve(copy(11, half), both),
            SagaStep::reserve(copy(12, 3), both),
        ]),
    });
    let events = state.take_events(1);
    let sides: Vec<Balances> = events
        .iter()
        .filter_map(|e| match e.body {
            EventBody::Transfer(change) => {
                assert_eq!(change.remote, both);
                assert_eq!(change.debit, change.credit, "one clearing balance");
                Some(change.debit)
            }
            _ => None,
        })
        .collect();
    let pending = |debits_pending| Balances {
        debits_pending,
        credits_pending: debits_pending,
        ..Default::default()
    };
    // After 2^127, 2^128 (≡ 0) and 2^128 + 3 (≡ 3) are held.
    assert_eq!(sides, [pending(half), pending(0), pending(3)]);
    let clearing = state.clearing_balances()[0];
    assert_eq!(
        clearing.sums.debits_pending,
        ledger::Wide { high: 1, low: 3 }
    );
    assert_eq!(clearing.sums.debits_pending, clearing.sums.credits_pending);
}
