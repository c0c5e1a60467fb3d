//! One scenario for every result code of `create_accounts` and `create_transfers`: each must
//! produce exactly its code, a failed event must change nothing, and together the scenarios
//! must cover every code the ledger defines. The scenarios are `ledger::scenarios`, which
//! fincore's `tests/gateway_scenarios.rs` also sends through a gateway.

use std::collections::BTreeSet;

use ledger::scenarios::{
    ACCOUNT_CODES_UNCOVERED, SECOND, Step, T0, TRANSFER_CODES_UNCOVERED, account_cases, genesis,
    pending, t, transfer_cases,
};
use ledger::{
    Account, AccountFlags as AF, Batch, BatchBody, BatchResults, CreateAccountResult as AR,
    CreateTransferResult as TR, StateMachine, Transfer, TransferFlags as TF,
};

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

/// Everything a failed event could have touched.
fn observable(state: &StateMachine) -> (Vec<Account>, usize, Vec<Transfer>) {
    let ids: Vec<u128> = (1..=10).chain(100..=120).collect();
    (
        state.lookup_accounts(&ids),
        state.transfers_count(),
        state.lookup_transfers(&(1..=10_000).collect::<Vec<_>>()),
    )
}

/// Runs a scenario's steps with the batch under test cut to its first `events` events;
/// returns the results of that batch and what the ledger looks like afterwards.
fn run_steps(
    steps: &[Step],
    events: usize,
) -> (BatchResults, (Vec<Account>, usize, Vec<Transfer>)) {
    let (under_test, before) = steps.split_last().expect("a batch under test");
    let mut state = StateMachine::default();
    for step in before {
        let results = state.apply(&step.batch);
        let all_created = match &results {
            BatchResults::CreateAccounts(r) => r.iter().all(|r| r.result == AR::Created),
            BatchResults::CreateTransfers(r) | BatchResults::SagaSteps(r) => {
                r.iter().all(|r| r.result == TR::Created)
            }
        };
        assert!(all_created || !step.all_created, "setup: {results:?}");
    }
    let results = state.apply(&under_test.first_events(events));
    (results, observable(&state))
}

fn transfer_results(results: BatchResults) -> Vec<TR> {
    match results {
        BatchResults::CreateTransfers(results) => results.iter().map(|r| r.result).collect(),
        other => unreachable!("a transfer scenario, answered {other:?}"),
    }
}

fn account_results(results: BatchResults) -> Vec<AR> {
    match results {
        BatchResults::CreateAccounts(results) => results.iter().map(|r| r.result).collect(),
        other => unreachable!("an account scenario, answered {other:?}"),
    }
}

#[test]
fn every_transfer_result_code_has_a_scenario_and_a_failed_event_changes_nothing() {
    let mut covered = BTreeSet::new();
    for case in transfer_cases() {
        let steps = case.steps();
        let (results, after) = run_steps(&steps, case.batch.len());
        let results = transfer_results(results);
        assert_eq!(
            *results.last().unwrap(),
            case.expect,
            "scenario for {}: all results {results:?}",
            case.expect
        );
        if case.expect != TR::Created {
            // The same case without the failing event leaves the ledger exactly the same.
            let (_, without) = run_steps(&steps, case.batch.len() - 1);
            assert_eq!(
                after, without,
                "a failed {} changed the ledger",
                case.expect
            );
        }
        covered.insert(case.expect);
    }
    let missing: Vec<&str> = TR::ALL
        .iter()
        .filter(|code| !covered.contains(code) && !TRANSFER_CODES_UNCOVERED.contains(code))
        .map(|c| c.as_str())
        .collect();
    assert!(
        missing.is_empty(),
        "result codes without a scenario: {missing:?}"
    );
}

#[test]
fn every_account_result_code_has_a_scenario_and_a_failed_event_changes_nothing() {
    let mut covered = BTreeSet::new();
    for case in account_cases() {
        let steps = case.steps();
        let (results, after) = run_steps(&steps, case.batch.len());
        let results = account_results(results);
        let expect = case.expect;
        assert_eq!(*results.last().unwrap(), expect, "all results {results:?}");
        if expect != AR::Created {
            assert_eq!(
                after,
                run_steps(&steps, case.batch.len() - 1).1,
                "a failed {expect} changed the ledger"
            );
        }
        covered.insert(expect);
    }
    let missing: Vec<&str> = AR::ALL
        .iter()
        .filter(|code| !covered.contains(code) && !ACCOUNT_CODES_UNCOVERED.contains(code))
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
