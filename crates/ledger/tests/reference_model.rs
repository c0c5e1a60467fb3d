//! Differential test: random batches with every flag, applied to the real state machine and to
//! the naive reference model in `support/model.rs`, must give identical results, objects,
//! balances, history and query answers, and keep debits equal to credits on every ledger.

use ledger::{
    Account, AccountFilter, AccountFilterFlags, AccountFlags, Batch, BatchBody, BatchResults,
    StateMachine, Transfer, TransferFlags,
};
use ledger_model::Model;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Spec {
    Accounts(Vec<Account>),
    Transfers(Vec<Transfer>),
    /// Imported transfers stamped `back * 1000 + i` ns before the batch's timestamp.
    Imported(Vec<Transfer>, u64),
    /// The n-th most recent transfer batch again, with one field of its first event changed
    /// (mutation 0: verbatim).
    Resubmit(usize, u8),
}

fn small_id(max: u128) -> impl Strategy<Value = u128> {
    prop_oneof![20 => 1..=max, 1 => Just(0u128), 1 => Just(u128::MAX)]
}

fn amount() -> impl Strategy<Value = u128> {
    prop_oneof![
        10 => 0u128..=100,
        2 => 0u128..=5,
        1 => Just(u128::MAX),
        1 => Just(u128::MAX / 2),
        1 => Just(u128::MAX - 3),
    ]
}

fn timestamp_field() -> impl Strategy<Value = u64> {
    prop_oneof![12 => Just(0u64), 1 => 1u64..=40_000_000_000, 1 => Just(u64::MAX)]
}

fn account() -> impl Strategy<Value = Account> {
    (
        small_id(8),
        prop_oneof![8 => 0u16..=0x3f, 1 => Just(0x40u16), 4 => Just(0x8u16), 4 => Just(0u16)],
        prop_oneof![10 => Just(1u32), 1 => Just(0u32), 2 => Just(2u32)],
        prop_oneof![10 => Just(1u16), 1 => Just(0u16), 1 => Just(2u16)],
        0u128..=1,
        prop_oneof![10 => Just(0u128), 1 => Just(5u128)],
        timestamp_field(),
    )
        .prop_map(
            |(id, flags, ledger, code, user_data, balance, timestamp)| Account {
                id,
                debits_posted: balance,
                user_data_128: user_data,
                user_data_64: user_data as u64,
                user_data_32: user_data as u32,
                ledger,
                code,
                flags: AccountFlags::from_bits_retain(flags),
                timestamp,
                ..Default::default()
            },
        )
}

fn transfer_flags() -> impl Strategy<Value = TransferFlags> {
    let common = prop_oneof![
        6 => Just(0u16),
        4 => Just(TransferFlags::PENDING.bits()),
        3 => Just(TransferFlags::POST_PENDING_TRANSFER.bits()),
        2 => Just(TransferFlags::VOID_PENDING_TRANSFER.bits()),
        1 => Just((TransferFlags::PENDING | TransferFlags::CLOSING_DEBIT).bits()),
        1 => Just((TransferFlags::PENDING | TransferFlags::CLOSING_CREDIT).bits()),
        1 => Just(TransferFlags::BALANCING_DEBIT.bits()),
        1 => Just(TransferFlags::BALANCING_CREDIT.bits()),
        1 => Just((TransferFlags::BALANCING_DEBIT | TransferFlags::PENDING).bits()),
        1 => 0u16..=0xff,
        1 => Just(0x400u16),
    ];
    (common, prop_oneof![7 => Just(false), 1 => Just(true)]).prop_map(|(bits, linked)| {
        let mut flags = TransferFlags::from_bits_retain(bits);
        flags.set(TransferFlags::LINKED, linked);
        flags
    })
}

/// Random knobs for one transfer; `shape_transfer` turns them into a mostly plausible event
/// (fields that fit its flags) with a steady trickle of invalid ones.
fn transfer() -> impl Strategy<Value = Transfer> {
    (
        (small_id(30), small_id(9), small_id(9), amount()),
        (
            small_id(30),
            0u128..=2,
            prop_oneof![3 => Just(0u32), 2 => 1u32..=3, 1 => Just(u32::MAX)],
        ),
        (
            prop_oneof![10 => Just(1u32), 1 => Just(0u32), 1 => Just(2u32)],
            prop_oneof![10 => Just(1u16), 1 => Just(0u16), 1 => Just(2u16)],
        ),
        (transfer_flags(), timestamp_field(), 0u8..10),
    )
        .prop_map(
            |(
                (id, debit, credit, amount),
                (pending_id, user_data, timeout),
                (ledger, code),
                (flags, timestamp, noise),
            )| {
                let post_or_void = flags.intersects(
                    TransferFlags::POST_PENDING_TRANSFER | TransferFlags::VOID_PENDING_TRANSFER,
                );
                let pending = flags.contains(TransferFlags::PENDING);
                let noisy = noise == 0;
                Transfer {
                    id,
                    debit_account_id: if post_or_void && noise < 7 { 0 } else { debit },
                    credit_account_id: if post_or_void && noise < 7 { 0 } else { credit },
                    amount: if post_or_void && noise < 4 {
                        [0, u128::MAX, 1, 2][noise as usize]
                    } else {
                        amount
                    },
                    pending_id: if post_or_void || noisy { pending_id } else { 0 },
                    user_data_128: user_data,
                    user_data_64: user_data as u64,
                    user_data_32: user_data as u32,
                    timeout: if pending || noisy { timeout } else { 0 },
                    ledger: if post_or_void && noise < 6 { 0 } else { ledger },
                    code: if post_or_void && noise < 6 { 0 } else { code },
                    flags,
                    timestamp: if noisy { timestamp } else { 0 },
                }
            },
        )
}

fn batches() -> impl Strategy<Value = Vec<(u64, Spec)>> {
    let delta = prop_oneof![
        Just(0u64),
        Just(500_000_000),
        Just(1_000_000_000),
        Just(3_000_000_000)
    ];
    let spec = prop_oneof![
        2 => prop::collection::vec(account(), 0..6).prop_map(Spec::Accounts),
        10 => prop::collection::vec(transfer(), 0..12).prop_map(Spec::Transfers),
        2 => (prop::collection::vec(transfer(), 1..6), 1u64..3_000).prop_map(|(events, back)| Spec::Imported(events, back)),
        3 => (0usize..8, 0u8..10).prop_map(|(back, mutation)| Spec::Resubmit(back, mutation)),
    ];
    prop::collection::vec((delta, spec), 1..30)
}

/// Accounts 1..=8 on ledger 1 (9 on ledger 2), mixing balance limits and history.
fn genesis() -> Vec<Account> {
    (1..=9u128)
        .map(|id| {
            let flags = match id % 4 {
                0 => AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS | AccountFlags::HISTORY,
                1 => AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS,
                2 => AccountFlags::HISTORY,
                _ => AccountFlags::empty(),
            };
            Account {
                id,
                ledger: if id == 9 { 2 } else { 1 },
                code: 1,
                flags,
                ..Default::default()
            }
        })
        .collect()
}

fn check_ledger_balances(state: &StateMachine) -> Result<(), TestCaseError> {
    for (ledger, [dp, dpo, cp, cpo]) in state.ledger_totals() {
        prop_assert_eq!(
            dp,
            cp,
            "ledger {}: debits_pending != credits_pending",
            ledger
        );
        prop_assert_eq!(
            dpo,
            cpo,
            "ledger {}: debits_posted != credits_posted",
            ledger
        );
    }
    Ok(())
}

fn compare_everything(state: &StateMachine, model: &Model) -> Result<(), TestCaseError> {
    for id in 0..=10u128 {
        prop_assert_eq!(
            state.account(id).copied(),
            model.account(id),
            "account {}",
            id
        );
    }
    for id in (0..=31u128).chain(1000..1600) {
        let real = state
            .transfer(id)
            .copied()
            .zip(state.transfer_pending_status(id));
        prop_assert_eq!(real, model.transfer(id), "transfer {}", id);
    }
    for account_id in 1..=9u128 {
        for flags in [
            AccountFilterFlags::DEBITS,
            AccountFilterFlags::CREDITS | AccountFilterFlags::REVERSED,
            AccountFilterFlags::DEBITS | AccountFilterFlags::CREDITS,
        ] {
            for (limit, user_data_128, timestamp_min) in
                [(100, 0, 0), (2, 1, 0), (3, 0, 2_000_000_000)]
            {
                let filter = AccountFilter {
                    account_id,
                    user_data_128,
                    timestamp_min,
                    limit,
                    flags,
                    ..Default::default()
                };
                prop_assert_eq!(
                    state.get_account_transfers(&filter).unwrap(),
                    model.get_account_transfers(&filter)
                );
                prop_assert_eq!(
                    state.get_account_balances(&filter).unwrap(),
                    model.get_account_balances(&filter)
                );
            }
        }
    }
    Ok(())
}

/// Applies a batch and keeps it, for the replay-determinism check.
fn apply_logged(state: &mut StateMachine, applied: &mut Vec<Batch>, batch: Batch) -> BatchResults {
    let results = state.apply(&batch);
    applied.push(batch);
    results
}

fn run(batches: Vec<(u64, Spec)>) -> Result<(), TestCaseError> {
    let mut state = StateMachine::default();
    let mut model = Model::default();
    let mut timestamp = 1_000_000_000u64;
    let genesis = genesis();
    let mut applied: Vec<Batch> = Vec::new();
    let real = apply_logged(
        &mut state,
        &mut applied,
        Batch {
            timestamp,
            body: BatchBody::CreateAccounts(genesis.clone()),
        },
    );
    let expected = model.apply_accounts(timestamp, &genesis);
    let BatchResults::CreateAccounts(real) = real else {
        unreachable!()
    };
    prop_assert_eq!(
        real.iter()
            .map(|r| (r.result, r.timestamp))
            .collect::<Vec<_>>(),
        expected
    );

    let mut history: Vec<Vec<Transfer>> = Vec::new();
    for (delta, spec) in batches {
        timestamp += delta;
        match spec {
            Spec::Accounts(events) => {
                let BatchResults::CreateAccounts(real) = apply_logged(
                    &mut state,
                    &mut applied,
                    Batch {
                        timestamp,
                        body: BatchBody::CreateAccounts(events.clone()),
                    },
                ) else {
                    unreachable!()
                };
                let expected = model.apply_accounts(timestamp, &events);
                prop_assert_eq!(
                    real.iter()
                        .map(|r| (r.result, r.timestamp))
                        .collect::<Vec<_>>(),
                    expected
                );
            }
            Spec::Transfers(_) | Spec::Imported(..) | Spec::Resubmit(..) => {
                let events = match spec {
                    Spec::Transfers(events) => events,
                    Spec::Imported(mut events, back) => {
                        for (i, event) in events.iter_mut().enumerate() {
                            // Every seventh event is not imported: a mixed batch.
                            event.flags.set(TransferFlags::IMPORTED, i % 7 != 3);
                            event.timeout = if i % 5 == 4 { 1 } else { 0 };
                            event.timestamp = timestamp.saturating_sub(back * 1000) + i as u64;
                        }
                        events
                    }
                    Spec::Resubmit(back, mutation) => {
                        let Some(events) = history.iter().rev().nth(back) else {
                            continue;
                        };
                        let mut events = events.clone();
                        if let Some(first) = events.first_mut() {
                            match mutation {
                                1 => first.user_data_128 += 1,
                                2 => first.user_data_64 += 1,
                                3 => first.user_data_32 += 1,
                                4 => first.ledger = first.ledger.wrapping_add(1),
                                5 => first.code = first.code.wrapping_add(1),
                                6 => first.amount = first.amount.wrapping_add(1),
                                7 => first.timeout = first.timeout.wrapping_add(1),
                                _ => {}
                            }
                        }
                        events
                    }
                    Spec::Accounts(_) => unreachable!(),
                };
                history.push(events.clone());
                let BatchResults::CreateTransfers(real) = apply_logged(
                    &mut state,
                    &mut applied,
                    Batch {
                        timestamp,
                        body: BatchBody::CreateTransfers(events.clone()),
                    },
                ) else {
                    unreachable!()
                };
                let expected = model.apply_transfers(timestamp, &events);
                prop_assert_eq!(
                    real.iter()
                        .map(|r| (r.result, r.timestamp))
                        .collect::<Vec<_>>(),
                    expected
                );
            }
        }
        prop_assert_eq!(state.timestamp_last(), model.timestamp_last);
        check_ledger_balances(&state)?;
        compare_everything(&state, &model)?;
    }
    // Replay determinism: the same batches applied to a fresh state machine (with its own
    // randomly seeded hash tables) give a byte-identical state.
    let mut replayed = StateMachine::default();
    for batch in &applied {
        replayed.apply(batch);
    }
    prop_assert_eq!(replayed.digest(), state.digest());
    // A snapshot round trip rebuilds an identical state: same digest, same answers.
    let mut bytes = Vec::new();
    let written = state.write_snapshot(&mut bytes).unwrap();
    let (reloaded, read) =
        StateMachine::read_snapshot(&mut bytes.as_slice(), bytes.len() as u64).unwrap();
    prop_assert_eq!(written, read);
    prop_assert_eq!(reloaded.digest(), written);
    compare_everything(&reloaded, &model)?;
    Ok(())
}

/// Long runs of mostly valid transfers among the `history` accounts (2, 4, 6, 8), so that every
/// account has hundreds of changes and balance queries cross many balance checkpoints.
fn long_histories() -> impl Strategy<Value = Vec<(u64, Spec)>> {
    let history_accounts = [2u128, 4, 6, 8];
    let flags = prop_oneof![
        6 => Just(TransferFlags::empty()),
        3 => Just(TransferFlags::PENDING),
        2 => Just(TransferFlags::POST_PENDING_TRANSFER),
        1 => Just(TransferFlags::VOID_PENDING_TRANSFER),
        1 => Just(TransferFlags::BALANCING_DEBIT),
    ];
    let transfer = (
        0u128..1500,
        0usize..4,
        1usize..4,
        1u128..100,
        flags,
        0u32..3,
        0u128..1500,
    )
        .prop_map(
            move |(id, debit, offset, amount, flags, timeout, pending_id)| {
                let post_or_void = flags.intersects(
                    TransferFlags::POST_PENDING_TRANSFER | TransferFlags::VOID_PENDING_TRANSFER,
                );
                Transfer {
                    id: 1000 + id,
                    debit_account_id: if post_or_void {
                        0
                    } else {
                        history_accounts[debit]
                    },
                    credit_account_id: if post_or_void {
                        0
                    } else {
                        history_accounts[(debit + offset) % 4]
                    },
                    amount: if post_or_void && amount % 3 == 0 {
                        0
                    } else {
                        amount
                    },
                    pending_id: if post_or_void { 1000 + pending_id } else { 0 },
                    timeout: if flags == TransferFlags::PENDING {
                        timeout
                    } else {
                        0
                    },
                    ledger: if post_or_void { 0 } else { 1 },
                    code: if post_or_void { 0 } else { 1 },
                    flags,
                    ..Default::default()
                }
            },
        );
    let delta = prop_oneof![Just(0u64), Just(1_000_000_000), Just(2_000_000_000)];
    prop::collection::vec(
        (
            delta,
            prop::collection::vec(transfer, 1..12).prop_map(Spec::Transfers),
        ),
        150..200,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

    #[test]
    fn balance_history_agrees_with_the_model_across_many_checkpoints(batches in long_histories()) {
        run(batches)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn state_machine_agrees_with_the_naive_model_on_random_batches(batches in batches()) {
        run(batches)?;
    }
}
