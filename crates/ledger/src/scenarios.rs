//! One scenario for every result code of `create_accounts` and `create_transfers` (but
//! `capacity_reached`, which needs a ledger of small capacity: tests/capacity.rs): the batches
//! that lead to the code and the batch that gets it, as plain values.
//!
//! Shared, so that one table serves every way of reaching a ledger: `tests/result_codes.rs`
//! applies the scenarios to a [`StateMachine`](crate::StateMachine) directly, and fincore's
//! `tests/gateway_scenarios.rs` sends them through a gateway over several groups. Ids are small
//! (accounts 1..=8, transfers from 1,000), timestamps fixed from [`T0`]: a caller that cannot
//! use them as they are (a network, whose groups seal batches with their own clocks) translates
//! them, keeping what each scenario relies on. Compiled only with the `test-scenarios` feature;
//! nothing here is part of the ledger.

use crate::{
    Account, AccountFlags as AF, Batch, BatchBody, CreateAccountResult as AR,
    CreateTransferResult as TR, TIMESTAMP_MAX, Transfer, TransferFlags as TF,
};

pub const SECOND: u64 = 1_000_000_000;
/// When the genesis accounts are created.
pub const T0: u64 = 1_700_000_000 * SECOND;

/// The codes no scenario here reaches (`capacity_reached` needs a ledger with a small capacity:
/// tests/capacity.rs covers it; `outcome_pending` is a gateway's answer past its saga
/// deadline, which crates/fincore/tests/gateway.rs covers).
pub const TRANSFER_CODES_UNCOVERED: &[TR] = &[TR::CapacityReached, TR::OutcomePending];
pub const ACCOUNT_CODES_UNCOVERED: &[AR] = &[AR::CapacityReached];

pub fn account(id: u128, ledger: u32, flags: AF) -> Account {
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
pub fn genesis() -> Vec<Account> {
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

/// A transfer of `amount` on ledger 1 with code 1.
pub fn t(id: u128, debit: u128, credit: u128, amount: u128) -> Transfer {
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

pub fn pending(id: u128, debit: u128, credit: u128, amount: u128) -> Transfer {
    Transfer {
        flags: TF::PENDING,
        ..t(id, debit, credit, amount)
    }
}

pub fn post(id: u128, pending_id: u128, amount: u128) -> Transfer {
    Transfer {
        id,
        pending_id,
        amount,
        flags: TF::POST_PENDING_TRANSFER,
        ..Default::default()
    }
}

pub fn void(id: u128, pending_id: u128) -> Transfer {
    Transfer {
        id,
        pending_id,
        flags: TF::VOID_PENDING_TRANSFER,
        ..Default::default()
    }
}

pub fn imported(mut transfer: Transfer, timestamp: u64) -> Transfer {
    transfer.flags.insert(TF::IMPORTED);
    transfer.timestamp = timestamp;
    transfer
}

/// One batch of a scenario, in the order applied: every step but the last leads up to the code,
/// the last is the batch under test, whose last event gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub batch: Batch,
    /// Every event of the batch is created (false only for the batch under test, and for a
    /// setup that fails on purpose).
    pub all_created: bool,
}

impl Step {
    /// This step's batch cut to its first `count` events.
    pub fn first_events(&self, count: usize) -> Batch {
        let body = match &self.batch.body {
            BatchBody::CreateAccounts(events) => {
                BatchBody::CreateAccounts(events[..count].to_vec())
            }
            BatchBody::CreateTransfers(events) => {
                BatchBody::CreateTransfers(events[..count].to_vec())
            }
            BatchBody::SagaSteps(steps) => BatchBody::SagaSteps(steps[..count].to_vec()),
        };
        Batch {
            timestamp: self.batch.timestamp,
            body,
        }
    }
}

/// A scenario of `create_transfers`.
pub struct TransferCase {
    pub expect: TR,
    /// Extra accounts created (one batch, 10 s after genesis) before anything else.
    pub accounts: Vec<Account>,
    /// Batches applied before the one under test, 1 s apart.
    pub setup: Vec<Vec<Transfer>>,
    /// The batch under test; the event under test is its last.
    pub batch: Vec<Transfer>,
    /// Seconds between the last setup batch and the batch under test.
    pub gap_seconds: u64,
    /// Seal the batch under test at this absolute timestamp instead.
    pub at: Option<u64>,
}

impl TransferCase {
    /// The genesis accounts at `T0`, the extra accounts at `T0` + 10 s, the setup batches a
    /// second apart, then the batch under test.
    pub fn steps(&self) -> Vec<Step> {
        let mut steps = vec![step(T0, BatchBody::CreateAccounts(genesis()), true)];
        let mut timestamp = T0 + 10 * SECOND;
        if !self.accounts.is_empty() {
            let accounts = BatchBody::CreateAccounts(self.accounts.clone());
            steps.push(step(timestamp, accounts, true));
        }
        for batch in &self.setup {
            timestamp += SECOND;
            // A transient failure in the setup is how an id comes to have failed.
            let all_created = self.expect != TR::IdAlreadyFailed;
            steps.push(step(
                timestamp,
                BatchBody::CreateTransfers(batch.clone()),
                all_created,
            ));
        }
        let timestamp = self.at.unwrap_or(timestamp + self.gap_seconds * SECOND);
        let batch = BatchBody::CreateTransfers(self.batch.clone());
        steps.push(step(timestamp, batch, false));
        steps
    }
}

fn step(timestamp: u64, body: BatchBody, all_created: bool) -> Step {
    Step {
        batch: Batch { timestamp, body },
        all_created,
    }
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

/// One scenario per transfer result code but [`TRANSFER_CODES_UNCOVERED`].
pub fn transfer_cases() -> Vec<TransferCase> {
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

/// A scenario of `create_accounts`.
pub struct AccountCase {
    pub expect: AR,
    /// The batch under test, 10 s after genesis; the event under test is its last.
    pub batch: Vec<Account>,
}

impl AccountCase {
    /// The genesis accounts at `T0`, then the batch under test at `T0` + 10 s.
    pub fn steps(&self) -> Vec<Step> {
        vec![
            step(T0, BatchBody::CreateAccounts(genesis()), true),
            step(
                T0 + 10 * SECOND,
                BatchBody::CreateAccounts(self.batch.clone()),
                false,
            ),
        ]
    }
}

/// One scenario per account result code but [`ACCOUNT_CODES_UNCOVERED`].
pub fn account_cases() -> Vec<AccountCase> {
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
    cases
        .into_iter()
        .map(|(expect, batch)| AccountCase { expect, batch })
        .collect()
}
