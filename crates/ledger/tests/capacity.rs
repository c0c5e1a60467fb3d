//! The capacity `apply` enforces: events past it fail with `capacity_reached`, change nothing,
//! and every replica applying the same batches to the same state answers the same.

use ledger::{
    Account, Batch, BatchBody, BatchResults, Capacity, CreateAccountResult as AR,
    CreateTransferResult as TR, Occupancy, StateDigest, StateMachine, Transfer,
    TransferFlags as TF,
};

const T0: u64 = 1_700_000_000_000_000_000;

fn account(id: u128) -> Account {
    Account {
        id,
        ledger: 1,
        code: 1,
        ..Default::default()
    }
}

fn transfer(id: u128, amount: u128) -> Transfer {
    Transfer {
        id,
        debit_account_id: 1,
        credit_account_id: 2,
        amount,
        ledger: 1,
        code: 1,
        ..Default::default()
    }
}

fn accounts(state: &mut StateMachine, timestamp: u64, events: Vec<Account>) -> Vec<AR> {
    match state.apply(&Batch {
        timestamp,
        body: BatchBody::CreateAccounts(events),
    }) {
        BatchResults::CreateAccounts(results) => results.iter().map(|r| r.result).collect(),
        other => unreachable!("account results expected, got {other:?}"),
    }
}

fn transfers(state: &mut StateMachine, timestamp: u64, events: Vec<Transfer>) -> Vec<TR> {
    match state.apply(&Batch {
        timestamp,
        body: BatchBody::CreateTransfers(events),
    }) {
        BatchResults::CreateTransfers(results) => results.iter().map(|r| r.result).collect(),
        other => unreachable!("transfer results expected, got {other:?}"),
    }
}

fn small_ledger() -> StateMachine {
    let mut state = StateMachine::default();
    state.set_capacity(Capacity {
        accounts_max: 3,
        transfers_max: 2,
    });
    state
}

fn digest(state: &StateMachine) -> StateDigest {
    state.digest()
}

#[test]
fn accounts_past_the_capacity_apply_enforces_fail_with_capacity_reached_and_change_nothing() {
    let mut state = small_ledger();
    assert_eq!(
        accounts(&mut state, T0, vec![account(1), account(2)]),
        [AR::Created, AR::Created]
    );
    let before = digest(&state);
    let mut again = small_ledger();
    accounts(&mut again, T0, vec![account(1), account(2)]);

    let results = accounts(&mut state, T0 + 1, vec![account(3), account(4), account(1)]);
    assert_eq!(results, [AR::Created, AR::CapacityReached, AR::Exists]);
    assert_eq!(state.accounts_count(), 3);
    assert!(state.account(4).is_none());
    // The same batch on the same state answers the same on any replica.
    let replayed = accounts(&mut again, T0 + 1, vec![account(3), account(4), account(1)]);
    assert_eq!(replayed, results);
    assert_eq!(digest(&again), digest(&state));
    assert_ne!(digest(&state), before);
}

#[test]
fn transfers_past_the_capacity_apply_enforces_fail_with_capacity_reached_and_change_nothing() {
    let mut state = small_ledger();
    accounts(&mut state, T0, vec![account(1), account(2)]);
    let pending = Transfer {
        flags: TF::PENDING,
        ..transfer(10, 5)
    };
    assert_eq!(
        transfers(&mut state, T0 + 1, vec![pending, transfer(11, 7)]),
        [TR::Created, TR::Created]
    );
    let balances = (*state.account(1).unwrap(), *state.account(2).unwrap());
    let post = Transfer {
        id: 12,
        pending_id: 10,
        flags: TF::POST_PENDING_TRANSFER,
        ..Default::default()
    };
    let results = transfers(
        &mut state,
        T0 + 2,
        vec![transfer(13, 1), post, transfer(11, 7)],
    );
    assert_eq!(
        results,
        [TR::CapacityReached, TR::CapacityReached, TR::Exists]
    );
    assert_eq!(state.transfers_count(), 2);
    assert_eq!(
        (*state.account(1).unwrap(), *state.account(2).unwrap()),
        balances
    );
    assert!(state.transfer(13).is_none() && state.transfer(12).is_none());
    // Not burnt: once there is room, the same ids succeed.
    state.set_capacity(Capacity::FORMAT_MAX);
    assert_eq!(
        transfers(&mut state, T0 + 3, vec![transfer(13, 1)]),
        [TR::Created]
    );
}

#[test]
fn a_linked_chain_that_reaches_the_capacity_rolls_back_whole() {
    let mut state = small_ledger();
    accounts(&mut state, T0, vec![account(1), account(2)]);
    transfers(&mut state, T0 + 1, vec![transfer(10, 1)]);
    let linked = |t: Transfer| Transfer {
        flags: TF::LINKED,
        ..t
    };
    let results = transfers(
        &mut state,
        T0 + 2,
        vec![linked(transfer(11, 1)), transfer(12, 1)],
    );
    assert_eq!(results, [TR::LinkedEventFailed, TR::CapacityReached]);
    assert_eq!(state.transfers_count(), 1);
}

#[test]
fn admission_refuses_a_request_that_could_pass_the_capacity_and_names_the_limit() {
    let capacity = Capacity {
        accounts_max: 10,
        transfers_max: 100,
    };
    let taken = Occupancy {
        accounts: 4,
        transfers: 90,
    };
    assert!(
        capacity
            .admit(
                taken,
                Occupancy {
                    accounts: 6,
                    transfers: 0
                }
            )
            .is_ok()
    );
    let error = capacity
        .admit(
            taken,
            Occupancy {
                accounts: 0,
                transfers: 11,
            },
        )
        .unwrap_err();
    assert_eq!(error.field, "transfers_max");
    assert_eq!(error.max, 100);
    assert!(
        error
            .to_string()
            .starts_with("ledger capacity reached: transfers_max = 100"),
        "{error}"
    );
    assert!(error.to_string().contains("--transfers-max"), "{error}");
}

#[test]
fn the_capacity_for_some_memory_fits_in_it_and_never_passes_the_format() {
    let memory = 8 << 30;
    let capacity = Capacity::for_memory(memory, 10);
    assert!(capacity.memory_bytes() <= memory);
    assert!(capacity.accounts_max > 1_000_000 && capacity.transfers_max > 10_000_000);
    let huge = Capacity::for_memory(u64::MAX / 2, 10);
    assert_eq!(huge, Capacity::FORMAT_MAX);
    const { assert!(Capacity::ACCOUNT_BYTES >= 128 && Capacity::TRANSFER_BYTES >= 256) };
}

#[test]
fn occupancy_counts_burnt_transfer_ids() {
    let mut state = StateMachine::default();
    accounts(&mut state, T0, vec![account(1), account(2)]);
    // Account 3 does not exist: a transient failure, so the id is burnt.
    let missing = Transfer {
        credit_account_id: 3,
        ..transfer(20, 1)
    };
    assert_eq!(
        transfers(&mut state, T0 + 1, vec![missing, transfer(21, 1)]),
        [TR::CreditAccountNotFound, TR::Created]
    );
    assert_eq!(
        state.occupancy(),
        Occupancy {
            accounts: 2,
            transfers: 2
        }
    );
}
