//! One scenario for every result code of `create_accounts` and `create_transfers`: each must
//! produce exactly its code, a failed event must change nothing, and together the scenarios
//! must cover every code the ledger defines.

use std::collections::BTreeSet;

use ledger::{
    Account, AccountFlags as AF, Batch, BatchBody, BatchResults, CreateAccountResult as AR,
    CreateTransferResult as TR, StateMachine, TIMESTAMP_MAX, Transfer, TransferFlags as TF,
};

const SECOND: u64 = 1_000_000_000;
const T0: u64 = 1_700_000_000 * SECOND;

fn account(id: u128, ledger: u32, flags: AF) -> Account {
    Account {
        id,
        ledger,
        code: 1,
        flags,
        ..Default::default()
    }
}

/// Accounts 1, 2 plain; 3 debits ≤ credits; 4 credits ≤ debits; 5 on ledger 2; 6 closed;
/// 7 with history. All on ledger 1 unless said.
fn genesis() -> Vec<Account> {
    vec![
        account(1, 1, AF::empty()),
        account(2, 1, AF::empty()),
        account(3, 1, AF::DEBITS_MUST_NOT_EXCEED_CREDITS),
        account(4, 1, AF::CREDITS_MUST_NOT_EXCEED_DEBITS),
        account(5, 2, AF::empty()),
        account(6, 1, AF::CLOSED),
        account(7, 1, AF::HISTORY),
    ]
}

fn t(id: u128, debit: u128, credit: u128, amount: u128) -> Transfer {
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

fn pending(id: u128, debit: u128, credit: u128, amount: u128) -> Transfer {
    Transfer {
        flags: TF::PENDING,
        ..t(id, debit, credit, amount)
    }
}

fn post(id: u128, pending_id: u128, amount: u128) -> Transfer {
    Transfer {
        id,
        pending_id,
        amount,
        flags: TF::POST_PENDING_TRANSFER,
        ..Default::default()
    }
}

fn void(id: u128, pending_id: u128) -> Transfer {
    Transfer {
        id,
        pending_id,
        flags: TF::VOID_PENDING_TRANSFER,
        ..Default::default()
    }
}

fn imported(mut transfer: Transfer, timestamp: u64) -> Transfer {
    transfer.flags.insert(TF::IMPORTED);
    transfer.timestamp = timestamp;
    transfer
}

/// A ledger with the genesis accounts, sealed at `T0`.
fn ledger() -> StateMachine {
    let mut state = StateMachine::default();
    state.apply(&Batch {
        timestamp: T0,
        body: BatchBody::CreateAccounts(genesis()),
    });
    state
}

fn apply_transfers(state: &mut StateMachine, timestamp: u64, events: Vec<Transfer>) -> Vec<TR> {
    match state.apply(&Batch {
        timestamp,
        body: BatchBody::CreateTransfers(events),
    }) {
        BatchResults::CreateTransfers(results) => results.iter().map(|r| r.result).collect(),
        other => unreachable!("transfer results expected, got {other:?}"),
    }
}

fn apply_accounts(state: &mut StateMachine, timestamp: u64, events: Vec<Account>) -> Vec<AR> {
    match state.apply(&Batch {
        timestamp,
        body: BatchBody::CreateAccounts(events),
    }) {
        BatchResults::CreateAccounts(results) => results.iter().map(|r| r.result).collect(),
        other => unreachable!("account results expected, got {other:?}"),
    }
}

/// Everything a failed event could have touched.
fn observable(state: &StateMachine) -> (Vec<Account>, usize, Vec<Transfer>) {
    let ids: Vec<u128> = (1..=10).chain(100..=120).collect();
    (
        state.lookup_accounts(&ids),
        state.transfers_count(),
        state.lookup_transfers(&(1..=10_000).collect::<Vec<_>>()),
    )
}

struct TransferCase {
    expect: TR,
    /// Extra accounts created (one batch, 10 s after genesis) before anything else.
    accounts: Vec<Account>,
    /// Batches applied before the one under test, 1 s apart.
    setup: Vec<Vec<Transfer>>,
    /// The batch under test; the event under test is its last.
    batch: Vec<Transfer>,
    /// Seconds between the last setup batch and the batch under test.
    gap_seconds: u64,
    /// Seal the batch under test at this absolute timestamp instead.
    at: Option<u64>,
}

fn case(expect: TR, batch: Vec<Transfer>) -> TransferCase {
    TransferCase {
        expect,
        accounts: vec![],
        setup: vec![],
        batch,
        gap_seconds: 1,
        at: None,
    }
}

fn with_setup(expect: TR, setup: Vec<Vec<Transfer>>, batch: Vec<Transfer>) -> TransferCase {
    TransferCase {
        setup,
        ..case(expect, batch)
    }
}

fn transfer_cases() -> Vec<TransferCase> {
    let big = u128::MAX - 10;
    let half = 1u128 << 127;
    let flagged = |mut transfer: Transfer, flags: TF| {
        transfer.flags.insert(flags);
        transfer
    };
    let late_account = account(8, 1, AF::empty());
    let now_ish = T0 + 3 * SECOND;
    vec![
        case(TR::Created, vec![t(1000, 1, 2, 10)]),
        case(
            TR::LinkedEventFailed,
            vec![flagged(t(1000, 1, 1, 10), TF::LINKED), t(1001, 1, 2, 10)],
        ),
        case(
            TR::LinkedEventChainOpen,
            vec![flagged(t(1000, 1, 2, 10), TF::LINKED)],
        ),
        case(
            TR::ImportedEventExpected,
            vec![imported(t(1000, 1, 2, 1), T0 + 100), t(1001, 1, 2, 1)],
        ),
        case(
            TR::ImportedEventNotExpected,
            vec![t(1000, 1, 2, 1), imported(t(1001, 1, 2, 1), T0 + 100)],
        ),
        case(
            TR::TimestampMustBeZero,
            vec![Transfer {
                timestamp: 5,
                ..t(1000, 1, 2, 1)
            }],
        ),
        case(
            TR::ImportedEventTimestampOutOfRange,
            vec![imported(t(1000, 1, 2, 1), 0)],
        ),
        case(
            TR::ImportedEventTimestampMustNotAdvance,
            vec![imported(t(1000, 1, 2, 1), TIMESTAMP_MAX)],
        ),
        case(
            TR::ReservedFlag,
            vec![Transfer {
                flags: TF::from_bits_retain(1 << 12),
                ..t(1000, 1, 2, 1)
            }],
        ),
        case(TR::IdMustNotBeZero, vec![t(0, 1, 2, 1)]),
        case(TR::IdMustNotBeIntMax, vec![t(u128::MAX, 1, 2, 1)]),
        with_setup(
            TR::ExistsWithDifferentFlags,
            vec![vec![t(2000, 1, 2, 10)]],
            vec![pending(2000, 1, 2, 10)],
        ),
        with_setup(
            TR::ExistsWithDifferentPendingId,
            vec![vec![t(2000, 1, 2, 10)]],
            vec![Transfer {
                pending_id: 5,
                ..t(2000, 1, 2, 10)
            }],
        ),
        with_setup(
            TR::ExistsWithDifferentTimeout,
            vec![vec![t(2000, 1, 2, 10)]],
            vec![Transfer {
                timeout: 1,
                ..t(2000, 1, 2, 10)
            }],
        ),
        with_setup(
            TR::ExistsWithDifferentDebitAccountId,
            vec![vec![t(2000, 1, 2, 10)]],
            vec![t(2000, 7, 2, 10)],
        ),
        with_setup(
            TR::ExistsWithDifferentCreditAccountId,
            vec![vec![t(2000, 1, 2, 10)]],
            vec![t(2000, 1, 7, 10)],
        ),
        with_setup(
            TR::ExistsWithDifferentAmount,
            vec![vec![t(2000, 1, 2, 10)]],
            vec![t(2000, 1, 2, 11)],
        ),
        with_setup(
            TR::ExistsWithDifferentUserData128,
            vec![vec![t(2000, 1, 2, 10)]],
            vec![Transfer {
                user_data_128: 1,
                ..t(2000, 1, 2, 10)
            }],
        ),
        with_setup(
            TR::ExistsWithDifferentUserData64,
            vec![vec![t(2000, 1, 2, 10)]],
            vec![Transfer {
                user_data_64: 1,
                ..t(2000, 1, 2, 10)
            }],
        ),
        with_setup(
            TR::ExistsWithDifferentUserData32,
            vec![vec![t(2000, 1, 2, 10)]],
            vec![Transfer {
                user_data_32: 1,
                ..t(2000, 1, 2, 10)
            }],
        ),
        with_setup(
            TR::ExistsWithDifferentLedger,
            vec![vec![t(2000, 1, 2, 10)]],
            vec![Transfer {
                ledger: 2,
                ..t(2000, 1, 2, 10)
            }],
        ),
        with_setup(
            TR::ExistsWithDifferentCode,
            vec![vec![t(2000, 1, 2, 10)]],
            vec![Transfer {
                code: 2,
                ..t(2000, 1, 2, 10)
            }],
        ),
        with_setup(
            TR::Exists,
            vec![vec![t(2000, 1, 2, 10)]],
            vec![t(2000, 1, 2, 10)],
        ),
        // A transient failure burns the id: the retry cannot succeed later by surprise.
        with_setup(
            TR::IdAlreadyFailed,
            vec![vec![t(2001, 3, 1, 10)]],
            vec![t(2001, 1, 2, 10)],
        ),
        case(
            TR::FlagsAreMutuallyExclusive,
            vec![Transfer {
                flags: TF::POST_PENDING_TRANSFER | TF::VOID_PENDING_TRANSFER,
                ..post(1000, 5, 1)
            }],
        ),
        case(TR::DebitAccountIdMustNotBeZero, vec![t(1000, 0, 2, 1)]),
        case(
            TR::DebitAccountIdMustNotBeIntMax,
            vec![t(1000, u128::MAX, 2, 1)],
        ),
        case(TR::CreditAccountIdMustNotBeZero, vec![t(1000, 1, 0, 1)]),
        case(
            TR::CreditAccountIdMustNotBeIntMax,
            vec![t(1000, 1, u128::MAX, 1)],
        ),
        case(TR::AccountsMustBeDifferent, vec![t(1000, 1, 1, 1)]),
        case(
            TR::PendingIdMustBeZero,
            vec![Transfer {
                pending_id: 5,
                ..t(1000, 1, 2, 1)
            }],
        ),
        case(TR::PendingIdMustNotBeZero, vec![post(1000, 0, 1)]),
        case(TR::PendingIdMustNotBeIntMax, vec![post(1000, u128::MAX, 1)]),
        case(TR::PendingIdMustBeDifferent, vec![post(1000, 1000, 1)]),
        case(
            TR::TimeoutReservedForPendingTransfer,
            vec![Transfer {
                timeout: 1,
                ..t(1000, 1, 2, 1)
            }],
        ),
        case(
            TR::ClosingTransferMustBePending,
            vec![flagged(t(1000, 1, 2, 1), TF::CLOSING_DEBIT)],
        ),
        case(
            TR::LedgerMustNotBeZero,
            vec![Transfer {
                ledger: 0,
                ..t(1000, 1, 2, 1)
            }],
        ),
        case(
            TR::CodeMustNotBeZero,
            vec![Transfer {
                code: 0,
                ..t(1000, 1, 2, 1)
            }],
        ),
        case(TR::DebitAccountNotFound, vec![t(1000, 99, 2, 1)]),
        case(TR::CreditAccountNotFound, vec![t(1000, 1, 99, 1)]),
        case(TR::AccountsMustHaveTheSameLedger, vec![t(1000, 1, 5, 1)]),
        case(
            TR::TransferMustHaveTheSameLedgerAsAccounts,
            vec![Transfer {
                ledger: 2,
                ..t(1000, 1, 2, 1)
            }],
        ),
        case(TR::PendingTransferNotFound, vec![post(1000, 9999, 1)]),
        with_setup(
            TR::PendingTransferNotPending,
            vec![vec![t(2000, 1, 2, 10)]],
            vec![post(1000, 2000, 1)],
        ),
        with_setup(
            TR::PendingTransferHasDifferentDebitAccountId,
            vec![vec![pending(4000, 1, 2, 50)]],
            vec![Transfer {
                debit_account_id: 2,
                ..post(1000, 4000, 1)
            }],
        ),
        with_setup(
            TR::PendingTransferHasDifferentCreditAccountId,
            vec![vec![pending(4000, 1, 2, 50)]],
            vec![Transfer {
                credit_account_id: 1,
                ..post(1000, 4000, 1)
            }],
        ),
        with_setup(
            TR::PendingTransferHasDifferentLedger,
            vec![vec![pending(4000, 1, 2, 50)]],
            vec![Transfer {
                ledger: 2,
                ..post(1000, 4000, 1)
            }],
        ),
        with_setup(
            TR::PendingTransferHasDifferentCode,
            vec![vec![pending(4000, 1, 2, 50)]],
            vec![Transfer {
                code: 2,
                ..post(1000, 4000, 1)
            }],
        ),
        with_setup(
            TR::ExceedsPendingTransferAmount,
            vec![vec![pending(4000, 1, 2, 50)]],
            vec![post(1000, 4000, 51)],
        ),
        with_setup(
            TR::PendingTransferHasDifferentAmount,
            vec![vec![pending(4000, 1, 2, 50)]],
            vec![Transfer {
                amount: 10,
                ..void(1000, 4000)
            }],
        ),
        with_setup(
            TR::PendingTransferAlreadyPosted,
            vec![vec![pending(4000, 1, 2, 50)], vec![post(4001, 4000, 50)]],
            vec![post(1000, 4000, 50)],
        ),
        with_setup(
            TR::PendingTransferAlreadyVoided,
            vec![vec![pending(4000, 1, 2, 50)], vec![void(4001, 4000)]],
            vec![void(1000, 4000)],
        ),
        TransferCase {
            gap_seconds: 2,
            ..with_setup(
                TR::PendingTransferExpired,
                vec![vec![Transfer {
                    timeout: 1,
                    ..pending(4000, 1, 2, 50)
                }]],
                vec![post(1000, 4000, 50)],
            )
        },
        with_setup(
            TR::ImportedEventTimestampMustNotRegress,
            vec![vec![t(2000, 1, 2, 10)]],
            vec![imported(t(1000, 1, 2, 1), T0 + 100)],
        ),
        TransferCase {
            accounts: vec![late_account],
            ..case(
                TR::ImportedEventTimestampMustPostdateDebitAccount,
                vec![imported(t(1000, 8, 2, 1), T0 + 100)],
            )
        },
        TransferCase {
            accounts: vec![late_account],
            ..case(
                TR::ImportedEventTimestampMustPostdateCreditAccount,
                vec![imported(t(1000, 1, 8, 1), T0 + 100)],
            )
        },
        case(
            TR::ImportedEventTimeoutMustBeZero,
            vec![imported(
                Transfer {
                    timeout: 1,
                    ..pending(1000, 1, 2, 1)
                },
                now_ish,
            )],
        ),
        case(TR::DebitAccountAlreadyClosed, vec![t(1000, 6, 2, 1)]),
        case(TR::CreditAccountAlreadyClosed, vec![t(1000, 1, 6, 1)]),
        with_setup(
            TR::OverflowsDebitsPending,
            vec![vec![pending(5000, 1, 2, big)]],
            vec![pending(1000, 1, 7, 20)],
        ),
        with_setup(
            TR::OverflowsCreditsPending,
            vec![vec![pending(5000, 1, 2, big)]],
            vec![pending(1000, 7, 2, 20)],
        ),
        with_setup(
            TR::OverflowsDebitsPosted,
            vec![vec![t(5000, 1, 2, big)]],
            vec![t(1000, 1, 7, 20)],
        ),
        with_setup(
            TR::OverflowsCreditsPosted,
            vec![vec![t(5000, 1, 2, big)]],
            vec![t(1000, 7, 2, 20)],
        ),
        with_setup(
            TR::OverflowsDebits,
            vec![vec![pending(5000, 1, 2, half), t(5001, 1, 2, half - 100)]],
            vec![t(1000, 1, 7, 200)],
        ),
        with_setup(
            TR::OverflowsCredits,
            vec![vec![pending(5000, 1, 2, half), t(5001, 1, 2, half - 100)]],
            vec![t(1000, 7, 2, 200)],
        ),
        TransferCase {
            at: Some(TIMESTAMP_MAX - 1_000 * SECOND),
            ..case(
                TR::OverflowsTimeout,
                vec![Transfer {
                    timeout: 2_000,
                    ..pending(1000, 1, 2, 1)
                }],
            )
        },
        case(TR::ExceedsCredits, vec![t(1000, 3, 1, 10)]),
        case(TR::ExceedsDebits, vec![t(1000, 1, 4, 10)]),
    ]
}

/// Runs a case with the batch under test cut to its first `events` events; returns the
/// results of that batch and what the ledger looks like afterwards.
fn run_transfer_case(
    case: &TransferCase,
    events: usize,
) -> (Vec<TR>, (Vec<Account>, usize, Vec<Transfer>)) {
    let mut state = ledger();
    let mut timestamp = T0 + 10 * SECOND;
    if !case.accounts.is_empty() {
        assert!(
            apply_accounts(&mut state, timestamp, case.accounts.clone())
                .iter()
                .all(|r| *r == AR::Created)
        );
    }
    for batch in &case.setup {
        timestamp += SECOND;
        let results = apply_transfers(&mut state, timestamp, batch.clone());
        assert!(
            results.iter().all(|r| *r == TR::Created) || case.expect == TR::IdAlreadyFailed,
            "setup of {}: {results:?}",
            case.expect
        );
    }
    timestamp = case.at.unwrap_or(timestamp + case.gap_seconds * SECOND);
    let results = apply_transfers(&mut state, timestamp, case.batch[..events].to_vec());
    (results, observable(&state))
}

#[test]
fn every_transfer_result_code_has_a_scenario_and_a_failed_event_changes_nothing() {
    let mut covered = BTreeSet::new();
    for case in transfer_cases() {
        let (results, after) = run_transfer_case(&case, case.batch.len());
        assert_eq!(
            *results.last().unwrap(),
            case.expect,
            "scenario for {}: all results {results:?}",
            case.expect
        );
        if case.expect != TR::Created {
            // The same case without the failing event leaves the ledger exactly the same.
            let (_, without) = run_transfer_case(&case, case.batch.len() - 1);
            assert_eq!(
                after, without,
                "a failed {} changed the ledger",
                case.expect
            );
        }
        covered.insert(case.expect);
    }
    // `capacity_reached` needs a ledger with a small capacity: tests/capacity.rs covers it.
    let missing: Vec<&str> = TR::ALL
        .iter()
        .filter(|code| !covered.contains(code) && **code != TR::CapacityReached)
        .map(|c| c.as_str())
        .collect();
    assert!(
        missing.is_empty(),
        "result codes without a scenario: {missing:?}"
    );
}

#[test]
fn every_account_result_code_has_a_scenario_and_a_failed_event_changes_nothing() {
    let plain = |id: u128| account(id, 1, AF::empty());
    let imported_account = |id: u128, timestamp: u64| Account {
        flags: AF::IMPORTED,
        timestamp,
        ..plain(id)
    };
    let cases: Vec<(AR, Vec<Account>)> = vec![
        (AR::Created, vec![plain(100)]),
        (
            AR::LinkedEventFailed,
            vec![
                Account {
                    flags: AF::LINKED,
                    ledger: 0,
                    ..plain(100)
                },
                plain(101),
            ],
        ),
        (
            AR::LinkedEventChainOpen,
            vec![Account {
                flags: AF::LINKED,
                ..plain(100)
            }],
        ),
        (
            AR::ImportedEventExpected,
            vec![imported_account(100, T0 + SECOND), plain(101)],
        ),
        (
            AR::ImportedEventNotExpected,
            vec![plain(100), imported_account(101, T0 + SECOND)],
        ),
        (
            AR::TimestampMustBeZero,
            vec![Account {
                timestamp: 1,
                ..plain(100)
            }],
        ),
        (
            AR::ImportedEventTimestampOutOfRange,
            vec![imported_account(100, 0)],
        ),
        (
            AR::ImportedEventTimestampMustNotAdvance,
            vec![imported_account(100, TIMESTAMP_MAX)],
        ),
        (
            AR::ReservedFlag,
            vec![Account {
                flags: AF::from_bits_retain(1 << 14),
                ..plain(100)
            }],
        ),
        (AR::IdMustNotBeZero, vec![plain(0)]),
        (AR::IdMustNotBeIntMax, vec![plain(u128::MAX)]),
        (
            AR::ExistsWithDifferentFlags,
            vec![Account {
                flags: AF::HISTORY,
                ..plain(1)
            }],
        ),
        (
            AR::ExistsWithDifferentUserData128,
            vec![Account {
                user_data_128: 1,
                ..plain(1)
            }],
        ),
        (
            AR::ExistsWithDifferentUserData64,
            vec![Account {
                user_data_64: 1,
                ..plain(1)
            }],
        ),
        (
            AR::ExistsWithDifferentUserData32,
            vec![Account {
                user_data_32: 1,
                ..plain(1)
            }],
        ),
        (
            AR::ExistsWithDifferentLedger,
            vec![Account {
                ledger: 2,
                ..plain(1)
            }],
        ),
        (
            AR::ExistsWithDifferentCode,
            vec![Account {
                code: 2,
                ..plain(1)
            }],
        ),
        (AR::Exists, vec![plain(1)]),
        (
            AR::FlagsAreMutuallyExclusive,
            vec![Account {
                flags: AF::DEBITS_MUST_NOT_EXCEED_CREDITS | AF::CREDITS_MUST_NOT_EXCEED_DEBITS,
                ..plain(100)
            }],
        ),
        (
            AR::DebitsPendingMustBeZero,
            vec![Account {
                debits_pending: 1,
                ..plain(100)
            }],
        ),
        (
            AR::DebitsPostedMustBeZero,
            vec![Account {
                debits_posted: 1,
                ..plain(100)
            }],
        ),
        (
            AR::CreditsPendingMustBeZero,
            vec![Account {
                credits_pending: 1,
                ..plain(100)
            }],
        ),
        (
            AR::CreditsPostedMustBeZero,
            vec![Account {
                credits_posted: 1,
                ..plain(100)
            }],
        ),
        (
            AR::LedgerMustNotBeZero,
            vec![Account {
                ledger: 0,
                ..plain(100)
            }],
        ),
        (
            AR::CodeMustNotBeZero,
            vec![Account {
                code: 0,
                ..plain(100)
            }],
        ),
        (
            AR::ImportedEventTimestampMustNotRegress,
            vec![imported_account(100, T0 - SECOND)],
        ),
    ];
    let mut covered = BTreeSet::new();
    for (expect, batch) in cases {
        let run = |events: usize| {
            let mut state = ledger();
            let results = apply_accounts(&mut state, T0 + 10 * SECOND, batch[..events].to_vec());
            (results, observable(&state))
        };
        let (results, after) = run(batch.len());
        assert_eq!(*results.last().unwrap(), expect, "all results {results:?}");
        if expect != AR::Created {
            assert_eq!(
                after,
                run(batch.len() - 1).1,
                "a failed {expect} changed the ledger"
            );
        }
        covered.insert(expect);
    }
    // `capacity_reached` needs a ledger with a small capacity: tests/capacity.rs covers it.
    let missing: Vec<&str> = AR::ALL
        .iter()
        .filter(|code| !covered.contains(code) && **code != AR::CapacityReached)
        .map(|c| c.as_str())
        .collect();
    assert!(
        missing.is_empty(),
        "result codes without a scenario: {missing:?}"
    );
}

#[test]
fn a_linked_chain_rolls_back_every_effect_of_its_successful_events() {
    let mut state = ledger();
    let before = observable(&state);
    let history_before = state
        .get_account_balances(&ledger::AccountFilter {
            account_id: 7,
            limit: 100,
            flags: ledger::AccountFilterFlags::DEBITS | ledger::AccountFilterFlags::CREDITS,
            ..Default::default()
        })
        .unwrap();
    let chain = vec![
        flagged_linked(t(1, 7, 2, 10)),
        flagged_linked(Transfer {
            timeout: 5,
            ..pending(2, 1, 7, 30)
        }),
        flagged_linked(Transfer {
            flags: TF::PENDING | TF::CLOSING_DEBIT | TF::LINKED,
            ..t(3, 2, 1, 1)
        }),
        t(4, 3, 1, 10), // exceeds_credits: the whole chain fails
    ];
    let results = apply_transfers(&mut state, T0 + SECOND, chain);
    assert_eq!(
        results,
        vec![
            TR::LinkedEventFailed,
            TR::LinkedEventFailed,
            TR::LinkedEventFailed,
            TR::ExceedsCredits
        ]
    );
    assert_eq!(observable(&state), before);
    let history_after = state
        .get_account_balances(&ledger::AccountFilter {
            account_id: 7,
            limit: 100,
            flags: ledger::AccountFilterFlags::DEBITS | ledger::AccountFilterFlags::CREDITS,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(history_after, history_before);
    // The pending transfer's timeout was rolled back too: nothing expires later.
    let results = apply_transfers(&mut state, T0 + 100 * SECOND, vec![t(5, 1, 2, 1)]);
    assert_eq!(results, vec![TR::Created]);
    assert_eq!(state.account(1).unwrap().debits_pending, 0);
}

fn flagged_linked(mut transfer: Transfer) -> Transfer {
    transfer.flags.insert(TF::LINKED);
    transfer
}

#[test]
fn an_expired_pending_transfer_releases_its_amount_and_reopens_a_closed_account() {
    let mut state = ledger();
    let closing = Transfer {
        timeout: 2,
        flags: TF::PENDING | TF::CLOSING_DEBIT,
        ..t(1, 1, 2, 40)
    };
    assert_eq!(
        apply_transfers(&mut state, T0 + SECOND, vec![closing]),
        vec![TR::Created]
    );
    assert!(state.account(1).unwrap().flags.contains(AF::CLOSED));
    assert_eq!(
        apply_transfers(&mut state, T0 + 2 * SECOND, vec![t(2, 1, 2, 1)]),
        vec![TR::DebitAccountAlreadyClosed]
    );
    // The deadline passes; the next batch (even an empty one) expires it first.
    apply_transfers(&mut state, T0 + 4 * SECOND, vec![]);
    let account = state.account(1).unwrap();
    assert_eq!(
        (account.debits_pending, account.flags.contains(AF::CLOSED)),
        (0, false)
    );
    assert_eq!(
        state.transfer_pending_status(1),
        Some(ledger::TransferPendingStatus::Expired)
    );
    assert_eq!(
        apply_transfers(&mut state, T0 + 5 * SECOND, vec![t(3, 1, 2, 1)]),
        vec![TR::Created]
    );
}

#[test]
fn balancing_transfers_move_only_what_the_limit_allows_and_resubmission_is_idempotent() {
    let mut state = ledger();
    assert_eq!(
        apply_transfers(&mut state, T0 + SECOND, vec![t(1, 1, 3, 25)]),
        vec![TR::Created]
    );
    // Account 3 holds 25 of credits and may not go below zero: a balancing debit of up to 100
    // moves exactly 25.
    let sweep = Transfer {
        flags: TF::BALANCING_DEBIT,
        ..t(2, 3, 2, 100)
    };
    assert_eq!(
        apply_transfers(&mut state, T0 + 2 * SECOND, vec![sweep]),
        vec![TR::Created]
    );
    assert_eq!(state.transfer(2).unwrap().amount, 25);
    assert_eq!(
        apply_transfers(&mut state, T0 + 3 * SECOND, vec![sweep]),
        vec![TR::Exists]
    );
    let lower_limit = Transfer {
        amount: 24,
        ..sweep
    };
    assert_eq!(
        apply_transfers(&mut state, T0 + 4 * SECOND, vec![lower_limit]),
        vec![TR::ExistsWithDifferentAmount]
    );
}
