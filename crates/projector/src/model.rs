//! What whole batches of change events do to the read model's rows: a pure fold.
//!
//! Owns the rules that turn events into rows (`docs/projector.md`): an account row per
//! `account_created`, its balances replaced by every later event naming it; a transfer row per
//! transfer with its final state (`pending` → `posted` / `voided` / `expired`); a saga copy
//! only once confirmed; a history row per balance change of an account with the `history` flag.
//! It must not do I/O or know SQL: the sinks write what it answers, in one transaction.

use std::collections::{BTreeMap, HashSet};

use ledger::{
    Account, AccountFlags, Balances, Event, EventBody, EventKind, RemoteSides, Transfer,
    TransferChange, TransferFlags,
};

/// Where a transfer stands in the read model (`transfers.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TransferState {
    /// Plain transfers, the transfers that post or void a pending one, confirmed saga copies.
    Created,
    /// A pending transfer not (yet) posted, voided or expired.
    Pending,
    Posted,
    Voided,
    Expired,
}

impl TransferState {
    pub const ALL: [TransferState; 5] = [
        TransferState::Created,
        TransferState::Pending,
        TransferState::Posted,
        TransferState::Voided,
        TransferState::Expired,
    ];

    /// The value of `transfers.state`.
    pub fn name(self) -> &'static str {
        match self {
            TransferState::Created => "created",
            TransferState::Pending => "pending",
            TransferState::Posted => "posted",
            TransferState::Voided => "voided",
            TransferState::Expired => "expired",
        }
    }

    pub fn from_name(name: &str) -> Option<TransferState> {
        TransferState::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// One row of `transfers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferRow {
    pub transfer: Transfer,
    pub state: TransferState,
}

/// One row of `account_balances`: an account's balances right after the event `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryRow {
    pub account_id: u128,
    pub seq: u64,
    pub timestamp: u64,
    pub balances: Balances,
}

/// The rows whole batches change, each row once, as of their last event.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Accounts created by these batches, with their balances as of the last event.
    pub accounts: Vec<Account>,
    /// Accounts created before these batches: their new balances.
    pub balances: Vec<(u128, Balances)>,
    /// Transfers these batches made visible, with their state as of the last event.
    pub transfers: Vec<TransferRow>,
    /// Transfers written before these batches whose state changed.
    pub states: Vec<(u128, TransferState)>,
    pub history: Vec<HistoryRow>,
    /// The last batch marker's sequence number: the offset to store with these rows.
    pub last_seq: u64,
    /// Events folded (markers included).
    pub events_count: usize,
}

/// Why events cannot be folded: the stream broke its own rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    #[error("event {seq} follows event {previous}: events must be contiguous")]
    NotContiguous { previous: u64, seq: u64 },
    #[error("the events do not end with a batch marker (last seq {seq}): a batch must be whole")]
    UnclosedBatch { seq: u64 },
    #[error(
        "batch marker {seq} counts {events_count} events from {first_seq}, which does not end at it"
    )]
    BadMarker {
        seq: u64,
        first_seq: u64,
        events_count: u32,
    },
    /// The first events given are the tail of a batch: the offset they follow is not a batch
    /// marker's seq (someone moved it by hand).
    #[error(
        "the stored offset {offset} is not the end of a batch (the batch closed by event {seq} starts at {first_seq}): was it changed by hand? Set it to a batch marker's seq, or --rebuild"
    )]
    PartialBatch {
        offset: u64,
        seq: u64,
        first_seq: u64,
    },
    #[error("event {seq} is a {kind} without the body that kind carries")]
    BadBody { seq: u64, kind: &'static str },
}

/// Builds [`Changes`] event by event; the row maps keep every row once, in id order.
#[derive(Default)]
struct Fold {
    accounts: BTreeMap<u128, Account>,
    balances: BTreeMap<u128, Balances>,
    transfers: BTreeMap<u128, TransferRow>,
    states: BTreeMap<u128, TransferState>,
    history: Vec<HistoryRow>,
}

impl Changes {
    /// Folds `events`: whole batches, contiguous, the last one a marker. `history_accounts`
    /// holds the ids of accounts with the `history` flag created before `events`; the accounts
    /// created here with it are added.
    pub fn fold(
        events: &[Event],
        history_accounts: &mut HashSet<u128>,
    ) -> Result<Changes, ModelError> {
        let Some(last) = events.last() else {
            return Ok(Changes::default());
        };
        if last.kind != EventKind::Batch {
            return Err(ModelError::UnclosedBatch { seq: last.seq });
        }
        let mut fold = Fold::default();
        let mut batch_first = events[0].seq;
        for (at, event) in events.iter().enumerate() {
            if at > 0 && event.seq != events[at - 1].seq + 1 {
                return Err(ModelError::NotContiguous {
                    previous: events[at - 1].seq,
                    seq: event.seq,
                });
            }
            match (event.kind, &event.body) {
                (EventKind::AccountCreated, EventBody::Account(account)) => {
                    if account.flags.contains(AccountFlags::HISTORY) {
                        history_accounts.insert(account.id);
                    }
                    fold.accounts.insert(account.id, *account);
                }
                (EventKind::Batch, EventBody::Batch(marker)) => {
                    let ends_here = marker.first_seq.checked_add(u64::from(marker.events_count));
                    if batch_first == events[0].seq
                        && marker.first_seq < batch_first
                        && ends_here == Some(event.seq)
                    {
                        return Err(ModelError::PartialBatch {
                            offset: events[0].seq - 1,
                            seq: event.seq,
                            first_seq: marker.first_seq,
                        });
                    }
                    if marker.first_seq != batch_first || ends_here != Some(event.seq) {
                        return Err(ModelError::BadMarker {
                            seq: event.seq,
                            first_seq: marker.first_seq,
                            events_count: marker.events_count,
                        });
                    }
                    batch_first = event.seq + 1;
                }
                (kind, EventBody::Transfer(change)) if kind != EventKind::Batch => {
                    fold.transfer_event(event, kind, change, history_accounts);
                }
                (kind, _) => {
                    return Err(ModelError::BadBody {
                        seq: event.seq,
                        kind: kind.name(),
                    });
                }
            }
        }
        Ok(Changes {
            accounts: fold.accounts.into_values().collect(),
            balances: fold.balances.into_iter().collect(),
            transfers: fold.transfers.into_values().collect(),
            states: fold.states.into_iter().collect(),
            history: fold.history,
            last_seq: last.seq,
            events_count: events.len(),
        })
    }
}

impl Fold {
    fn transfer_event(
        &mut self,
        event: &Event,
        kind: EventKind,
        change: &TransferChange,
        history_accounts: &HashSet<u128>,
    ) {
        let transfer = change.transfer;
        match kind {
            EventKind::TransferCreated => {
                let state = if transfer.flags.contains(TransferFlags::PENDING) {
                    TransferState::Pending
                } else {
                    TransferState::Created
                };
                self.put_transfer(transfer, state);
            }
            EventKind::TransferPosted => {
                self.put_transfer(transfer, TransferState::Created);
                self.set_state(transfer.pending_id, TransferState::Posted);
            }
            EventKind::TransferVoided => {
                self.put_transfer(transfer, TransferState::Created);
                self.set_state(transfer.pending_id, TransferState::Voided);
            }
            EventKind::TransferExpired => self.set_state(transfer.id, TransferState::Expired),
            // A copy is a transfer for readers only once confirmed (as the ledger's lookups).
            EventKind::SagaConfirmed => self.put_transfer(transfer, TransferState::Created),
            EventKind::SagaReserved | EventKind::SagaCancelled => {}
            EventKind::AccountCreated | EventKind::Batch => unreachable!("not a transfer event"),
        }
        let sides = [
            (RemoteSides::DEBIT, transfer.debit_account_id, change.debit),
            (
                RemoteSides::CREDIT,
                transfer.credit_account_id,
                change.credit,
            ),
        ];
        for (remote, account_id, balances) in sides {
            // A remote side's balances are the group's clearing balance, not an account's.
            if change.remote.contains(remote) {
                continue;
            }
            self.set_balances(account_id, balances);
            if history_accounts.contains(&account_id) {
                self.history.push(HistoryRow {
                    account_id,
                    seq: event.seq,
                    timestamp: event.timestamp,
                    balances,
                });
            }
        }
    }

    fn put_transfer(&mut self, transfer: Transfer, state: TransferState) {
        self.transfers
            .insert(transfer.id, TransferRow { transfer, state });
    }

    fn set_state(&mut self, id: u128, state: TransferState) {
        match self.transfers.get_mut(&id) {
            Some(row) => row.state = state,
            None => {
                self.states.insert(id, state);
            }
        }
    }

    fn set_balances(&mut self, id: u128, balances: Balances) {
        match self.accounts.get_mut(&id) {
            Some(account) => {
                account.debits_pending = balances.debits_pending;
                account.debits_posted = balances.debits_posted;
                account.credits_pending = balances.credits_pending;
                account.credits_posted = balances.credits_posted;
            }
            None => {
                self.balances.insert(id, balances);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ledger::BatchMarker;

    fn account(id: u128, flags: AccountFlags) -> Account {
        Account {
            id,
            debits_pending: 0,
            debits_posted: 0,
            credits_pending: 0,
            credits_posted: 0,
            user_data_128: 0,
            user_data_64: 0,
            user_data_32: 0,
            ledger: 1,
            code: 1,
            flags,
            timestamp: 10 + id as u64,
        }
    }

    fn transfer(id: u128, amount: u128, flags: TransferFlags, pending_id: u128) -> Transfer {
        Transfer {
            id,
            debit_account_id: 1,
            credit_account_id: 2,
            amount,
            pending_id,
            user_data_128: 0,
            user_data_64: 0,
            user_data_32: 0,
            timeout: 0,
            ledger: 1,
            code: 1,
            flags,
            timestamp: 100 + id as u64,
        }
    }

    fn posted(amount: u128, debit: bool) -> Balances {
        Balances {
            debits_posted: if debit { amount } else { 0 },
            credits_posted: if debit { 0 } else { amount },
            ..Balances::default()
        }
    }

    struct Stream(Vec<Event>, u64);

    impl Stream {
        fn push(&mut self, kind: EventKind, body: EventBody) {
            let seq = self.0.len() as u64 + 1;
            self.0.push(Event {
                seq,
                kind,
                timestamp: seq,
                body,
            });
        }
        fn transfer(&mut self, kind: EventKind, t: Transfer, debit: Balances, credit: Balances) {
            let change = TransferChange {
                transfer: t,
                remote: RemoteSides::empty(),
                debit,
                credit,
            };
            self.push(kind, EventBody::Transfer(change));
        }
        fn close(&mut self) {
            let seq = self.0.len() as u64 + 1;
            let marker = BatchMarker {
                first_seq: self.1,
                events_count: (seq - self.1) as u32,
                log_index: 0,
            };
            self.push(EventKind::Batch, EventBody::Batch(marker));
            self.1 = seq + 1;
        }
    }

    #[test]
    fn a_pending_transfer_posted_in_the_same_batch_is_one_posted_row_and_balances_are_the_last() {
        let mut s = Stream(Vec::new(), 1);
        s.push(
            EventKind::AccountCreated,
            EventBody::Account(account(1, AccountFlags::HISTORY)),
        );
        s.push(
            EventKind::AccountCreated,
            EventBody::Account(account(2, AccountFlags::empty())),
        );
        let pending = transfer(10, 5, TransferFlags::PENDING, 0);
        let pending_debit = Balances {
            debits_pending: 5,
            ..Balances::default()
        };
        let pending_credit = Balances {
            credits_pending: 5,
            ..Balances::default()
        };
        s.transfer(
            EventKind::TransferCreated,
            pending,
            pending_debit,
            pending_credit,
        );
        let post = transfer(11, 5, TransferFlags::POST_PENDING_TRANSFER, 10);
        s.transfer(
            EventKind::TransferPosted,
            post,
            posted(5, true),
            posted(5, false),
        );
        s.close();
        let mut history = HashSet::new();
        let changes = Changes::fold(&s.0, &mut history).unwrap();
        assert_eq!(changes.last_seq, 5);
        assert_eq!(changes.accounts.len(), 2);
        assert_eq!(changes.accounts[0].debits_posted, 5);
        assert_eq!(changes.accounts[1].credits_posted, 5);
        assert!(changes.balances.is_empty() && changes.states.is_empty());
        let states: Vec<_> = changes
            .transfers
            .iter()
            .map(|r| (r.transfer.id, r.state))
            .collect();
        assert_eq!(
            states,
            [(10, TransferState::Posted), (11, TransferState::Created)]
        );
        assert_eq!(history, HashSet::from([1]));
        let seqs: Vec<_> = changes
            .history
            .iter()
            .map(|h| (h.account_id, h.seq))
            .collect();
        assert_eq!(seqs, [(1, 3), (1, 4)]);
    }

    #[test]
    fn a_later_batch_updates_balances_and_states_of_rows_written_before() {
        let mut s = Stream(Vec::new(), 1);
        s.push(
            EventKind::AccountCreated,
            EventBody::Account(account(1, AccountFlags::empty())),
        );
        s.push(
            EventKind::AccountCreated,
            EventBody::Account(account(2, AccountFlags::empty())),
        );
        s.transfer(
            EventKind::TransferCreated,
            transfer(10, 5, TransferFlags::PENDING, 0),
            Balances::default(),
            Balances::default(),
        );
        s.close();
        let first = s.0.len();
        s.transfer(
            EventKind::TransferExpired,
            transfer(10, 5, TransferFlags::PENDING, 0),
            Balances::default(),
            Balances::default(),
        );
        s.close();
        let mut history = HashSet::new();
        let changes = Changes::fold(&s.0[first..], &mut history).unwrap();
        assert_eq!(changes.states, [(10, TransferState::Expired)]);
        assert_eq!(changes.balances.len(), 2);
        assert!(changes.transfers.is_empty() && changes.accounts.is_empty());
    }

    #[test]
    fn a_saga_copy_appears_only_when_confirmed_and_clearing_sides_are_not_accounts() {
        let mut s = Stream(Vec::new(), 1);
        let copy = transfer(20, 7, TransferFlags::empty(), 0);
        let change = TransferChange {
            transfer: copy,
            remote: RemoteSides::CREDIT,
            debit: Balances::default(),
            credit: Balances::default(),
        };
        let confirmed = TransferChange {
            transfer: transfer(21, 7, TransferFlags::empty(), 0),
            ..change
        };
        s.push(EventKind::SagaReserved, EventBody::Transfer(change));
        s.close();
        // Copy 20 cancelled: never a transfer. Copy 21 reserved and confirmed: one.
        s.push(EventKind::SagaCancelled, EventBody::Transfer(change));
        s.close();
        s.push(EventKind::SagaReserved, EventBody::Transfer(confirmed));
        s.push(EventKind::SagaConfirmed, EventBody::Transfer(confirmed));
        s.close();
        let changes = Changes::fold(&s.0[..2], &mut HashSet::new()).unwrap();
        assert!(changes.transfers.is_empty());
        assert_eq!(
            changes.balances.iter().map(|b| b.0).collect::<Vec<_>>(),
            [1]
        );
        let changes = Changes::fold(&s.0[2..4], &mut HashSet::new()).unwrap();
        assert!(changes.transfers.is_empty(), "a cancelled copy shows");
        assert!(changes.states.is_empty());
        let changes = Changes::fold(&s.0[4..], &mut HashSet::new()).unwrap();
        let ids: Vec<u128> = changes
            .transfers
            .iter()
            .map(|row| row.transfer.id)
            .collect();
        assert_eq!(ids, [21]);
    }

    #[test]
    fn half_a_batch_and_a_gap_are_refused() {
        let mut s = Stream(Vec::new(), 1);
        s.push(
            EventKind::AccountCreated,
            EventBody::Account(account(1, AccountFlags::empty())),
        );
        s.push(
            EventKind::AccountCreated,
            EventBody::Account(account(2, AccountFlags::empty())),
        );
        s.close();
        assert_eq!(
            Changes::fold(&s.0[..2], &mut HashSet::new()),
            Err(ModelError::UnclosedBatch { seq: 2 })
        );
        let gap = [s.0[0], s.0[2]];
        assert_eq!(
            Changes::fold(&gap, &mut HashSet::new()),
            Err(ModelError::NotContiguous {
                previous: 1,
                seq: 3
            })
        );
        assert_eq!(
            Changes::fold(&s.0[1..], &mut HashSet::new()),
            Err(ModelError::PartialBatch {
                offset: 1,
                seq: 3,
                first_seq: 1
            })
        );
    }
}
