//! The state machine: applies sealed batches of `create_accounts` / `create_transfers`.
//!
//! Owns the in-memory state (accounts, transfers, pending statuses, burnt ids, expiry index,
//! per-account transfer lists and balance history) and the rules that change it. Everything
//! here is deterministic: hash tables are only ever probed, never iterated into a result, and
//! every timestamp is derived from the batch's sealing timestamp.
//!
//! Linked chains are applied optimistically and rolled back from an undo log when an event of
//! the chain fails, so the common case (no chain) pays nothing for them.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::BuildHasher;

use hashbrown::HashTable;
use limits::{BATCH_EVENTS_MAX, BATCH_EXPIRIES_MAX};

use crate::TIMESTAMP_MAX;
use crate::batch::{Batch, BatchBody};
use crate::capacity::{Capacity, Occupancy};
use crate::events::{EventKind, EventRecorder, EventSide};
use crate::history::{Balance, EXPIRY_BIT};
use crate::results::{CreateAccountResult, CreateTransferResult, EventResult};
use crate::saga::{RemoteSides, SagaAction, SagaCopy, SagaState, SagaStep};
use crate::types::{Account, AccountFlags, Transfer, TransferFlags, TransferPendingStatus};
use crate::wide::WideBalances;

/// The results of one applied batch, one per event, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchResults {
    CreateAccounts(Vec<EventResult<CreateAccountResult>>),
    CreateTransfers(Vec<EventResult<CreateTransferResult>>),
    /// Saga steps answer with transfer result codes (see the `saga` module).
    SagaSteps(Vec<EventResult<CreateTransferResult>>),
}

/// An account with its indexes.
#[derive(Debug, Clone, Default)]
pub(crate) struct AccountSlot {
    pub account: Account,
    /// Every change, in timestamp order (see the `history` module for the encoding).
    pub entries: Vec<u32>,
    /// Balance after every 64th change, only for accounts with `history`.
    pub balance_checkpoints: Vec<Balance>,
}

/// A hash-table slot: the index of an object plus 32 bits of its id's hash, so the table can
/// grow without touching the objects themselves.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IndexSlot {
    pub index: u32,
    pub hash32: u32,
}

pub(crate) fn expand(hash32: u32) -> u64 {
    u64::from(hash32) | (u64::from(hash32) << 32)
}

/// How one event went: `Ok((created | exists, the object's timestamp))` or `Err(failure)`.
pub(crate) type Outcome<R> = Result<(R, u64), R>;

/// What to undo when a linked chain fails, newest last.
#[derive(Debug)]
pub(crate) enum Undo {
    AccountCreated,
    AccountChanged {
        index: u32,
        before: Account,
    },
    TransferCreated,
    PendingStatusChanged {
        index: u32,
        before: TransferPendingStatus,
        expires_at: Option<u64>,
    },
    /// A clearing balance changed (`None`: the ledger had none yet).
    ClearingChanged {
        ledger: u32,
        before: Option<WideBalances>,
    },
}

/// The ledger's whole state and the rules that change it.
pub struct StateMachine {
    pub(crate) hasher: foldhash::fast::RandomState,
    pub(crate) accounts: Vec<AccountSlot>,
    pub(crate) account_index: HashTable<IndexSlot>,
    pub(crate) transfers: Vec<Transfer>,
    /// Parallel to `transfers`.
    pub(crate) transfer_status: Vec<TransferPendingStatus>,
    pub(crate) transfer_index: HashTable<IndexSlot>,
    /// Transfer ids burnt by a transient failure.
    pub(crate) failed_transfer_ids: hashbrown::HashSet<u128, foldhash::fast::RandomState>,
    /// Open pending transfers with a timeout: (expires_at, transfer index).
    pub(crate) expiries: BTreeSet<(u64, u32)>,
    /// Every expiry that happened: (timestamp, transfer index), in timestamp order.
    pub(crate) expiry_events: Vec<(u64, u32)>,
    /// Clearing balances by ledger: what saga copies booked for accounts of other groups.
    pub(crate) clearing: BTreeMap<u32, WideBalances>,
    /// Transfers that are saga copies, by transfer index (see the `saga` module).
    pub(crate) saga_copies: BTreeMap<u32, SagaCopy>,
    /// The indexes of the copies still open (derived from `saga_copies`).
    pub(crate) saga_open: BTreeSet<u32>,
    /// The last timestamp assigned to anything (event, expiry).
    pub(crate) timestamp_last: u64,
    /// The last timestamp assigned to an expiry.
    pub(crate) expiry_timestamp_last: u64,
    /// Batches applied so far.
    pub(crate) batches_applied: u64,
    /// What `apply` refuses to grow past (see [`StateMachine::set_capacity`]).
    capacity: Capacity,
    undo: Vec<Undo>,
    in_chain: bool,
    /// Change events recorded by `apply` (see the `events` module).
    pub(crate) events: EventRecorder,
    /// Warm the caches before each transfer batch (see `prefetch_transfers`).
    prefetch: bool,
}

impl Default for StateMachine {
    fn default() -> Self {
        Self::with_capacity(0, 0)
    }
}

impl std::fmt::Debug for StateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachine")
            .field("accounts", &self.accounts.len())
            .field("transfers", &self.transfers.len())
            .field("timestamp_last", &self.timestamp_last)
            .field("batches_applied", &self.batches_applied)
            .finish()
    }
}

impl StateMachine {
    /// An empty ledger with room reserved for this many accounts and transfers, so that
    /// growing the indexes does not stall a batch.
    pub fn with_capacity(accounts_capacity: usize, transfers_capacity: usize) -> Self {
        StateMachine {
            hasher: foldhash::fast::RandomState::default(),
            accounts: Vec::with_capacity(accounts_capacity),
            account_index: HashTable::with_capacity(accounts_capacity),
            transfers: Vec::with_capacity(transfers_capacity),
            transfer_status: Vec::with_capacity(transfers_capacity),
            transfer_index: HashTable::with_capacity(transfers_capacity),
            failed_transfer_ids: hashbrown::HashSet::with_hasher(Default::default()),
            expiries: BTreeSet::new(),
            expiry_events: Vec::new(),
            clearing: BTreeMap::new(),
            saga_copies: BTreeMap::new(),
            saga_open: BTreeSet::new(),
            timestamp_last: 0,
            expiry_timestamp_last: 0,
            batches_applied: 0,
            capacity: Capacity::FORMAT_MAX,
            undo: Vec::new(),
            in_chain: false,
            events: EventRecorder::default(),
            prefetch: true,
        }
    }

    /// Whether to warm the caches before each transfer batch (on by default). It only trades
    /// CPU for fewer stalls and never changes a result: where several replicas share the same
    /// cores, the extra CPU costs more than the stalls it saves.
    pub fn set_prefetch(&mut self, prefetch: bool) {
        self.prefetch = prefetch;
    }

    /// The capacity `apply` enforces: an event that would create an account or a transfer
    /// past it fails with `capacity_reached` (and changes nothing) instead of growing the
    /// state until an allocation fails. [`Capacity::FORMAT_MAX`] unless set otherwise.
    pub fn capacity(&self) -> Capacity {
        self.capacity
    }

    /// Sets the capacity `apply` enforces. Results depend on it, so every replica of a group
    /// (and every replay of a journal) must use the same value; a node's operator-chosen
    /// capacity belongs at admission ([`Capacity::admit`]), not here.
    /// Values past [`Capacity::FORMAT_MAX`] are lowered to it.
    pub fn set_capacity(&mut self, capacity: Capacity) {
        self.capacity = Capacity {
            accounts_max: capacity.accounts_max.min(Capacity::FORMAT_MAX.accounts_max),
            transfers_max: capacity
                .transfers_max
                .min(Capacity::FORMAT_MAX.transfers_max),
        };
    }

    /// What the ledger holds, as counted against a [`Capacity`] at admission: accounts, and
    /// transfers plus the transfer ids burnt by transient failures.
    pub fn occupancy(&self) -> Occupancy {
        Occupancy {
            accounts: self.accounts.len() as u64,
            transfers: (self.transfers.len() + self.failed_transfer_ids.len()) as u64,
        }
    }

    /// Would creating one more account pass the capacity `apply` enforces?
    fn accounts_full(&self) -> bool {
        self.accounts.len() as u64 >= self.capacity.accounts_max
    }

    /// Would creating one more transfer pass the capacity `apply` enforces? (Only created
    /// transfers count here: they are what the 31-bit indexes address.)
    pub(crate) fn transfers_full(&self) -> bool {
        self.transfers.len() as u64 >= self.capacity.transfers_max
    }

    /// Number of accounts.
    pub fn accounts_count(&self) -> usize {
        self.accounts.len()
    }

    /// Number of transfers.
    pub fn transfers_count(&self) -> usize {
        self.transfers.len()
    }

    /// Number of batches applied since genesis.
    pub fn batches_applied(&self) -> u64 {
        self.batches_applied
    }

    /// The last timestamp the ledger assigned (0 before the first batch).
    pub fn timestamp_last(&self) -> u64 {
        self.timestamp_last
    }

    pub(crate) fn hash32(&self, id: u128) -> u32 {
        let hash = self.hasher.hash_one(id);
        (hash ^ (hash >> 32)) as u32
    }

    pub(crate) fn account_slot_index(&self, id: u128) -> Option<u32> {
        let hash32 = self.hash32(id);
        self.account_index
            .find(expand(hash32), |slot| {
                slot.hash32 == hash32 && self.accounts[slot.index as usize].account.id == id
            })
            .map(|slot| slot.index)
    }

    pub(crate) fn transfer_slot_index(&self, id: u128) -> Option<u32> {
        let hash32 = self.hash32(id);
        self.transfer_index
            .find(expand(hash32), |slot| {
                slot.hash32 == hash32 && self.transfers[slot.index as usize].id == id
            })
            .map(|slot| slot.index)
    }

    /// The account with this id.
    pub fn account(&self, id: u128) -> Option<&Account> {
        self.account_slot_index(id)
            .map(|index| &self.accounts[index as usize].account)
    }

    /// The transfer with this id.
    pub fn transfer(&self, id: u128) -> Option<&Transfer> {
        self.transfer_slot_index(id)
            .map(|index| &self.transfers[index as usize])
    }

    /// The pending status of the transfer with this id.
    pub fn transfer_pending_status(&self, id: u128) -> Option<TransferPendingStatus> {
        self.transfer_slot_index(id)
            .map(|index| self.transfer_status[index as usize])
    }

    /// Applies one sealed batch and returns one result per event.
    ///
    /// Timestamps: the first timestamp of the batch is `max(batch.timestamp, last + 1)`.
    /// Pending transfers that expired by then are expired first (each taking one timestamp),
    /// then event `i` gets the next timestamps in order. Every event consumes its timestamp
    /// whether it succeeds or not, so a batch's timestamps depend only on its position.
    pub fn apply(&mut self, batch: &Batch) -> BatchResults {
        assert!(
            batch.events_count() <= BATCH_EVENTS_MAX,
            "batch over the limit reached apply"
        );
        let now = batch.timestamp.max(self.timestamp_last + 1);
        assert!(now <= TIMESTAMP_MAX, "ledger timestamps exhausted");
        let seq_before = self.event_seq_last();
        self.reserve_events(batch.events_count());
        let expired = self.expire_pending_transfers(now);
        let first = now + expired;
        let results = match &batch.body {
            BatchBody::CreateAccounts(events) => BatchResults::CreateAccounts(self.execute_create(
                events,
                first,
                Self::create_account,
            )),
            BatchBody::CreateTransfers(events) => {
                if self.prefetch {
                    self.prefetch_transfers(events);
                }
                BatchResults::CreateTransfers(self.execute_create(
                    events,
                    first,
                    Self::create_transfer,
                ))
            }
            BatchBody::SagaSteps(steps) => {
                BatchResults::SagaSteps(self.execute_create(steps, first, Self::apply_saga_step))
            }
        };
        let used = expired + batch.events_count() as u64;
        if used > 0 {
            self.timestamp_last = now + used - 1;
        }
        self.batches_applied += 1;
        self.record_batch_marker(seq_before);
        debug_assert!(self.undo.is_empty() && !self.in_chain);
        results
    }

    /// Probes the indexes for every transfer and account of the batch in one tight loop, so that the CPU
    /// overlaps the cache misses that would otherwise stall each event in turn. Only warms the
    /// caches: the answers are thrown away, because events of the batch may create ids that
    /// later events look up.
    fn prefetch_transfers(&self, events: &[Transfer]) {
        for event in events {
            std::hint::black_box(self.transfer_slot_index(event.id));
            std::hint::black_box(self.account_slot_index(event.debit_account_id));
            std::hint::black_box(self.account_slot_index(event.credit_account_id));
        }
    }

    /// Expires open pending transfers whose deadline is at or before `now`; returns how many.
    fn expire_pending_transfers(&mut self, now: u64) -> u64 {
        let mut expired = 0u64;
        while expired < BATCH_EXPIRIES_MAX as u64 {
            let Some(&(expires_at, index)) = self.expiries.first() else {
                break;
            };
            if expires_at > now {
                break;
            }
            self.expiries.pop_first();
            let timestamp = now + expired;
            let pending = self.transfers[index as usize];
            debug_assert_eq!(
                self.transfer_status[index as usize],
                TransferPendingStatus::Pending
            );
            self.transfer_status[index as usize] = TransferPendingStatus::Expired;
            let dr = self
                .account_slot_index(pending.debit_account_id)
                .expect("pending debit account exists");
            let cr = self
                .account_slot_index(pending.credit_account_id)
                .expect("pending credit account exists");
            {
                let account = &mut self.accounts[dr as usize].account;
                account.debits_pending -= pending.amount;
                if pending.flags.contains(TransferFlags::CLOSING_DEBIT) {
                    account.flags.remove(AccountFlags::CLOSED);
                }
            }
            {
                let account = &mut self.accounts[cr as usize].account;
                account.credits_pending -= pending.amount;
                if pending.flags.contains(TransferFlags::CLOSING_CREDIT) {
                    account.flags.remove(AccountFlags::CLOSED);
                }
            }
            let entry = u32::try_from(self.expiry_events.len())
                .ok()
                .filter(|e| e & EXPIRY_BIT == 0)
                .expect("expiries fit in 31 bits");
            self.expiry_events.push((timestamp, index));
            self.record_entry(dr, entry | EXPIRY_BIT);
            self.record_entry(cr, entry | EXPIRY_BIT);
            self.record_transfer_event(
                EventKind::TransferExpired,
                timestamp,
                &pending,
                RemoteSides::empty(),
                [EventSide::Local(dr), EventSide::Local(cr)],
            );
            self.expiry_timestamp_last = timestamp;
            expired += 1;
        }
        expired
    }

    /// The batch loop shared by both operations: imported-mode checks, linked chains,
    /// rollback and burnt ids.
    fn execute_create<E: CreateEvent>(
        &mut self,
        events: &[E],
        first_timestamp: u64,
        create: fn(&mut Self, u64, &E) -> Outcome<E::Result>,
    ) -> Vec<EventResult<E::Result>> {
        let mut results: Vec<EventResult<E::Result>> = Vec::with_capacity(events.len());
        let mut chain_start: Option<usize> = None;
        let mut chain_broken = false;
        let batch_imported = events.first().is_some_and(|event| event.imported());
        for (index, event) in events.iter().enumerate() {
            let timestamp_event = first_timestamp + index as u64;
            let outcome: Outcome<E::Result> = 'outcome: {
                if event.linked() {
                    if chain_start.is_none() {
                        chain_start = Some(index);
                        debug_assert!(!chain_broken);
                        self.in_chain = true;
                        self.event_chain_begins();
                    }
                    if index == events.len() - 1 {
                        break 'outcome Err(E::Result::LINKED_EVENT_CHAIN_OPEN);
                    }
                }
                if chain_broken {
                    break 'outcome Err(E::Result::LINKED_EVENT_FAILED);
                }
                if batch_imported != event.imported() {
                    break 'outcome Err(if event.imported() {
                        E::Result::IMPORTED_EVENT_NOT_EXPECTED
                    } else {
                        E::Result::IMPORTED_EVENT_EXPECTED
                    });
                }
                if event.imported() {
                    let timestamp = event.timestamp();
                    if timestamp == 0 || timestamp > TIMESTAMP_MAX {
                        break 'outcome Err(E::Result::IMPORTED_EVENT_TIMESTAMP_OUT_OF_RANGE);
                    }
                    if timestamp >= timestamp_event {
                        break 'outcome Err(E::Result::IMPORTED_EVENT_TIMESTAMP_MUST_NOT_ADVANCE);
                    }
                } else if event.timestamp() != 0 {
                    break 'outcome Err(E::Result::TIMESTAMP_MUST_BE_ZERO);
                }
                create(self, timestamp_event, event)
            };
            let (result, timestamp) = match outcome {
                Ok((result, timestamp)) => (result, timestamp),
                Err(result) => (result, timestamp_event),
            };
            if result != E::Result::CREATED {
                if let Some(start) = chain_start {
                    if !chain_broken {
                        chain_broken = true;
                        self.rollback_chain();
                        for earlier in &mut results[start..index] {
                            earlier.result = E::Result::LINKED_EVENT_FAILED;
                        }
                    } else {
                        debug_assert!(
                            result == E::Result::LINKED_EVENT_FAILED
                                || result == E::Result::LINKED_EVENT_CHAIN_OPEN
                        );
                    }
                }
                E::record_failure(self, event, result);
            }
            results.push(EventResult { result, timestamp });
            if chain_start.is_some()
                && (!event.linked() || result == E::Result::LINKED_EVENT_CHAIN_OPEN)
            {
                // The chain ends here; if it did not break, its effects stay.
                self.undo.clear();
                self.in_chain = false;
                chain_start = None;
                chain_broken = false;
            }
        }
        debug_assert!(chain_start.is_none() && !chain_broken);
        results
    }

    fn rollback_chain(&mut self) {
        self.event_chain_rolled_back();
        while let Some(undo) = self.undo.pop() {
            match undo {
                Undo::AccountCreated => {
                    let slot = self.accounts.pop().expect("undo matches an account");
                    let hash32 = self.hash32(slot.account.id);
                    let index = self.accounts.len() as u32;
                    self.account_index
                        .find_entry(expand(hash32), |s| s.index == index)
                        .expect("created account is indexed")
                        .remove();
                }
                Undo::AccountChanged { index, before } => {
                    self.accounts[index as usize].account = before;
                }
                Undo::TransferCreated => {
                    let transfer = self.transfers.pop().expect("undo matches a transfer");
                    self.transfer_status.pop();
                    let index = self.transfers.len() as u32;
                    let hash32 = self.hash32(transfer.id);
                    self.transfer_index
                        .find_entry(expand(hash32), |s| s.index == index)
                        .expect("created transfer is indexed")
                        .remove();
                    if transfer.timeout > 0 && transfer.flags.contains(TransferFlags::PENDING) {
                        self.expiries
                            .remove(&(transfer.timestamp + transfer.timeout_ns(), index));
                    }
                    // A copy's remote sides have no entries here.
                    let local = self.local_sides(&transfer, index);
                    self.saga_copies.remove(&index);
                    self.saga_open.remove(&index);
                    for account_id in local.into_iter().flatten() {
                        let slot_index = self
                            .account_slot_index(account_id)
                            .expect("accounts of a created transfer exist");
                        let popped = self.pop_entry(slot_index);
                        debug_assert_eq!(popped, Some(index));
                    }
                }
                Undo::ClearingChanged { ledger, before } => match before {
                    Some(balance) => {
                        self.clearing.insert(ledger, balance);
                    }
                    None => {
                        self.clearing.remove(&ledger);
                    }
                },
                Undo::PendingStatusChanged {
                    index,
                    before,
                    expires_at,
                } => {
                    self.transfer_status[index as usize] = before;
                    if let Some(expires_at) = expires_at {
                        self.expiries.insert((expires_at, index));
                    }
                }
            }
        }
    }

    pub(crate) fn note(&mut self, undo: Undo) {
        if self.in_chain {
            self.undo.push(undo);
        }
    }

    fn create_account(
        &mut self,
        timestamp_event: u64,
        a: &Account,
    ) -> Outcome<CreateAccountResult> {
        use CreateAccountResult as R;
        if !AccountFlags::all().contains(a.flags) {
            return Err(R::ReservedFlag);
        }
        if a.id == 0 {
            return Err(R::IdMustNotBeZero);
        }
        if a.id == u128::MAX {
            return Err(R::IdMustNotBeIntMax);
        }
        if let Some(index) = self.account_slot_index(a.id) {
            return account_exists(a, &self.accounts[index as usize].account);
        }
        if a.flags.contains(
            AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS
                | AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS,
        ) {
            return Err(R::FlagsAreMutuallyExclusive);
        }
        if a.debits_pending != 0 {
            return Err(R::DebitsPendingMustBeZero);
        }
        if a.debits_posted != 0 {
            return Err(R::DebitsPostedMustBeZero);
        }
        if a.credits_pending != 0 {
            return Err(R::CreditsPendingMustBeZero);
        }
        if a.credits_posted != 0 {
            return Err(R::CreditsPostedMustBeZero);
        }
        if a.ledger == 0 {
            return Err(R::LedgerMustNotBeZero);
        }
        if a.code == 0 {
            return Err(R::CodeMustNotBeZero);
        }
        let timestamp = if a.flags.contains(AccountFlags::IMPORTED) {
            // After the idempotency checks, so that re-importing answers `exists`.
            let regressed = self
                .accounts
                .last()
                .is_some_and(|last| a.timestamp <= last.account.timestamp)
                || self.transfer_with_timestamp(a.timestamp);
            if regressed {
                return Err(R::ImportedEventTimestampMustNotRegress);
            }
            a.timestamp
        } else {
            timestamp_event
        };
        if self.accounts_full() {
            return Err(R::CapacityReached);
        }
        let index = u32::try_from(self.accounts.len()).expect("accounts fit in u32 indexes");
        let hash32 = self.hash32(a.id);
        self.accounts.push(AccountSlot {
            account: Account {
                debits_pending: 0,
                debits_posted: 0,
                credits_pending: 0,
                credits_posted: 0,
                timestamp,
                ..*a
            },
            entries: Vec::new(),
            balance_checkpoints: Vec::new(),
        });
        self.account_index
            .insert_unique(expand(hash32), IndexSlot { index, hash32 }, |s| {
                expand(s.hash32)
            });
        self.note(Undo::AccountCreated);
        self.record_account_event();
        Ok((R::Created, timestamp))
    }

    /// Is `timestamp` the timestamp of an existing transfer? (Transfers are kept in
    /// timestamp order.)
    fn transfer_with_timestamp(&self, timestamp: u64) -> bool {
        self.transfers
            .binary_search_by_key(&timestamp, |t| t.timestamp)
            .is_ok()
    }

    fn account_with_timestamp(&self, timestamp: u64) -> bool {
        self.accounts
            .binary_search_by_key(&timestamp, |s| s.account.timestamp)
            .is_ok()
    }

    fn create_transfer(
        &mut self,
        timestamp_event: u64,
        t: &Transfer,
    ) -> Outcome<CreateTransferResult> {
        use CreateTransferResult as R;
        if !TransferFlags::all().contains(t.flags) {
            return Err(R::ReservedFlag);
        }
        check_transfer_id(t.id)?;
        if let Some(index) = self.transfer_slot_index(t.id) {
            return self.existing_transfer(t, index);
        }
        if !self.failed_transfer_ids.is_empty() && self.failed_transfer_ids.contains(&t.id) {
            return Err(R::IdAlreadyFailed);
        }
        if t.flags
            .intersects(TransferFlags::POST_PENDING_TRANSFER | TransferFlags::VOID_PENDING_TRANSFER)
        {
            return self.post_or_void_pending_transfer(timestamp_event, t);
        }
        check_transfer_fields(t)?;
        let dr_index = self
            .account_slot_index(t.debit_account_id)
            .ok_or(R::DebitAccountNotFound)?;
        let cr_index = self
            .account_slot_index(t.credit_account_id)
            .ok_or(R::CreditAccountNotFound)?;
        let dr = self.accounts[dr_index as usize].account;
        let cr = self.accounts[cr_index as usize].account;
        if dr.ledger != cr.ledger {
            return Err(R::AccountsMustHaveTheSameLedger);
        }
        if t.ledger != dr.ledger {
            return Err(R::TransferMustHaveTheSameLedgerAsAccounts);
        }
        let timestamp = if t.flags.contains(TransferFlags::IMPORTED) {
            self.check_imported_transfer_timestamp(t.timestamp)?;
            if t.timestamp <= dr.timestamp {
                return Err(R::ImportedEventTimestampMustPostdateDebitAccount);
            }
            if t.timestamp <= cr.timestamp {
                return Err(R::ImportedEventTimestampMustPostdateCreditAccount);
            }
            if t.timeout != 0 {
                return Err(R::ImportedEventTimeoutMustBeZero);
            }
            t.timestamp
        } else {
            timestamp_event
        };
        if dr.flags.contains(AccountFlags::CLOSED) {
            return Err(R::DebitAccountAlreadyClosed);
        }
        if cr.flags.contains(AccountFlags::CLOSED) {
            return Err(R::CreditAccountAlreadyClosed);
        }
        let mut amount = t.amount;
        if t.flags.contains(TransferFlags::BALANCING_DEBIT) {
            let dr_balance = dr.debits_posted + dr.debits_pending;
            amount = amount.min(dr.credits_posted.saturating_sub(dr_balance));
        }
        if t.flags.contains(TransferFlags::BALANCING_CREDIT) {
            let cr_balance = cr.credits_posted + cr.credits_pending;
            amount = amount.min(cr.debits_posted.saturating_sub(cr_balance));
        }
        let pending = t.flags.contains(TransferFlags::PENDING);
        check_overflows(&dr, &cr, amount, pending)?;
        if timestamp + t.timeout_ns() > TIMESTAMP_MAX {
            return Err(R::OverflowsTimeout);
        }
        if dr.debits_exceed_credits(amount) {
            return Err(R::ExceedsCredits);
        }
        if cr.credits_exceed_debits(amount) {
            return Err(R::ExceedsDebits);
        }
        if self.transfers_full() {
            return Err(R::CapacityReached);
        }

        // From here on the transfer succeeds.
        self.note(Undo::AccountChanged {
            index: dr_index,
            before: dr,
        });
        self.note(Undo::AccountChanged {
            index: cr_index,
            before: cr,
        });
        {
            let account = &mut self.accounts[dr_index as usize].account;
            if pending {
                account.debits_pending += amount;
            } else {
                account.debits_posted += amount;
            }
            if t.flags.contains(TransferFlags::CLOSING_DEBIT) {
                account.flags.insert(AccountFlags::CLOSED);
            }
        }
        {
            let account = &mut self.accounts[cr_index as usize].account;
            if pending {
                account.credits_pending += amount;
            } else {
                account.credits_posted += amount;
            }
            if t.flags.contains(TransferFlags::CLOSING_CREDIT) {
                account.flags.insert(AccountFlags::CLOSED);
            }
        }
        let status = if pending {
            TransferPendingStatus::Pending
        } else {
            TransferPendingStatus::None
        };
        let created = Transfer {
            amount,
            timestamp,
            ..*t
        };
        let index = self.push_transfer(created, status, dr_index, cr_index);
        if pending && t.timeout > 0 {
            self.expiries.insert((timestamp + t.timeout_ns(), index));
        }
        self.record_transfer_event(
            EventKind::TransferCreated,
            timestamp,
            &created,
            RemoteSides::empty(),
            [EventSide::Local(dr_index), EventSide::Local(cr_index)],
        );
        Ok((R::Created, timestamp))
    }

    fn check_imported_transfer_timestamp(
        &self,
        timestamp: u64,
    ) -> Result<(), CreateTransferResult> {
        let regressed = self
            .transfers
            .last()
            .is_some_and(|last| timestamp <= last.timestamp)
            || timestamp <= self.expiry_timestamp_last
            || self.account_with_timestamp(timestamp);
        if regressed {
            Err(CreateTransferResult::ImportedEventTimestampMustNotRegress)
        } else {
            Ok(())
        }
    }

    /// Appends a created transfer and indexes it; returns its index.
    fn push_transfer(
        &mut self,
        transfer: Transfer,
        status: TransferPendingStatus,
        dr_index: u32,
        cr_index: u32,
    ) -> u32 {
        self.push_transfer_sides(transfer, status, Some(dr_index), Some(cr_index))
    }

    /// [`Self::push_transfer`] for a transfer whose accounts may live elsewhere (`None`): only
    /// the accounts here get an entry.
    pub(crate) fn push_transfer_sides(
        &mut self,
        transfer: Transfer,
        status: TransferPendingStatus,
        dr_index: Option<u32>,
        cr_index: Option<u32>,
    ) -> u32 {
        let index = u32::try_from(self.transfers.len()).expect("transfers fit in u32 indexes");
        let hash32 = self.hash32(transfer.id);
        assert!(index & EXPIRY_BIT == 0, "transfers fit in 31-bit indexes");
        self.transfers.push(transfer);
        self.transfer_status.push(status);
        self.transfer_index
            .insert_unique(expand(hash32), IndexSlot { index, hash32 }, |s| {
                expand(s.hash32)
            });
        for slot_index in [dr_index, cr_index].into_iter().flatten() {
            self.record_entry(slot_index, index);
        }
        self.note(Undo::TransferCreated);
        index
    }

    /// The answer to creating `t` when a transfer with its id is stored at `index`: a cancelled
    /// saga copy burnt its id; anything else is compared field by field.
    pub(crate) fn existing_transfer(
        &self,
        t: &Transfer,
        index: u32,
    ) -> Outcome<CreateTransferResult> {
        if !self.saga_copies.is_empty()
            && self
                .saga_copies
                .get(&index)
                .is_some_and(|copy| copy.state == SagaState::Cancelled)
        {
            return Err(CreateTransferResult::IdAlreadyFailed);
        }
        self.transfer_exists(t, &self.transfers[index as usize])
    }

    fn post_or_void_pending_transfer(
        &mut self,
        timestamp_event: u64,
        t: &Transfer,
    ) -> Outcome<CreateTransferResult> {
        use CreateTransferResult as R;
        let post = t.flags.contains(TransferFlags::POST_PENDING_TRANSFER);
        let void = t.flags.contains(TransferFlags::VOID_PENDING_TRANSFER);
        if (post && void)
            || t.flags.intersects(
                TransferFlags::PENDING
                    | TransferFlags::BALANCING_DEBIT
                    | TransferFlags::BALANCING_CREDIT
                    | TransferFlags::CLOSING_DEBIT
                    | TransferFlags::CLOSING_CREDIT,
            )
        {
            return Err(R::FlagsAreMutuallyExclusive);
        }
        if t.pending_id == 0 {
            return Err(R::PendingIdMustNotBeZero);
        }
        if t.pending_id == u128::MAX {
            return Err(R::PendingIdMustNotBeIntMax);
        }
        if t.pending_id == t.id {
            return Err(R::PendingIdMustBeDifferent);
        }
        if t.timeout != 0 {
            return Err(R::TimeoutReservedForPendingTransfer);
        }
        let pending_index = self
            .transfer_slot_index(t.pending_id)
            .ok_or(R::PendingTransferNotFound)?;
        let p = self.transfers[pending_index as usize];
        if !p.flags.contains(TransferFlags::PENDING) {
            return Err(R::PendingTransferNotPending);
        }
        let dr_index = self
            .account_slot_index(p.debit_account_id)
            .expect("pending debit account exists");
        let cr_index = self
            .account_slot_index(p.credit_account_id)
            .expect("pending credit account exists");
        let dr = self.accounts[dr_index as usize].account;
        let cr = self.accounts[cr_index as usize].account;
        if t.debit_account_id != 0 && t.debit_account_id != p.debit_account_id {
            return Err(R::PendingTransferHasDifferentDebitAccountId);
        }
        if t.credit_account_id != 0 && t.credit_account_id != p.credit_account_id {
            return Err(R::PendingTransferHasDifferentCreditAccountId);
        }
        if t.ledger != 0 && t.ledger != p.ledger {
            return Err(R::PendingTransferHasDifferentLedger);
        }
        if t.code != 0 && t.code != p.code {
            return Err(R::PendingTransferHasDifferentCode);
        }
        let amount = if void {
            if t.amount == 0 { p.amount } else { t.amount }
        } else if t.amount == u128::MAX {
            p.amount
        } else {
            t.amount
        };
        if amount > p.amount {
            return Err(R::ExceedsPendingTransferAmount);
        }
        if void && amount < p.amount {
            return Err(R::PendingTransferHasDifferentAmount);
        }
        match self.transfer_status[pending_index as usize] {
            TransferPendingStatus::Pending => {}
            TransferPendingStatus::Posted => return Err(R::PendingTransferAlreadyPosted),
            TransferPendingStatus::Voided => return Err(R::PendingTransferAlreadyVoided),
            TransferPendingStatus::Expired => return Err(R::PendingTransferExpired),
            TransferPendingStatus::None => unreachable!("a pending transfer has a pending status"),
        }
        let expires_at = (p.timeout > 0).then(|| p.timestamp + p.timeout_ns());
        if expires_at.is_some_and(|expires_at| expires_at <= timestamp_event) {
            return Err(R::PendingTransferExpired);
        }
        let timestamp = if t.flags.contains(TransferFlags::IMPORTED) {
            self.check_imported_transfer_timestamp(t.timestamp)?;
            t.timestamp
        } else {
            timestamp_event
        };
        // The only movement a closed account allows is voiding a pending transfer.
        if dr.flags.contains(AccountFlags::CLOSED) && !void {
            return Err(R::DebitAccountAlreadyClosed);
        }
        if cr.flags.contains(AccountFlags::CLOSED) && !void {
            return Err(R::CreditAccountAlreadyClosed);
        }
        if self.transfers_full() {
            return Err(R::CapacityReached);
        }

        // From here on the transfer succeeds.
        self.note(Undo::AccountChanged {
            index: dr_index,
            before: dr,
        });
        self.note(Undo::AccountChanged {
            index: cr_index,
            before: cr,
        });
        self.note(Undo::PendingStatusChanged {
            index: pending_index,
            before: TransferPendingStatus::Pending,
            expires_at,
        });
        if let Some(expires_at) = expires_at {
            let removed = self.expiries.remove(&(expires_at, pending_index));
            debug_assert!(removed);
        }
        self.transfer_status[pending_index as usize] = if post {
            TransferPendingStatus::Posted
        } else {
            TransferPendingStatus::Voided
        };
        {
            let account = &mut self.accounts[dr_index as usize].account;
            account.debits_pending -= p.amount;
            if post {
                account.debits_posted += amount;
            } else if p.flags.contains(TransferFlags::CLOSING_DEBIT) {
                account.flags.remove(AccountFlags::CLOSED);
            }
        }
        {
            let account = &mut self.accounts[cr_index as usize].account;
            account.credits_pending -= p.amount;
            if post {
                account.credits_posted += amount;
            } else if p.flags.contains(TransferFlags::CLOSING_CREDIT) {
                account.flags.remove(AccountFlags::CLOSED);
            }
        }
        let created = Transfer {
            id: t.id,
            debit_account_id: p.debit_account_id,
            credit_account_id: p.credit_account_id,
            amount,
            pending_id: t.pending_id,
            user_data_128: if t.user_data_128 != 0 {
                t.user_data_128
            } else {
                p.user_data_128
            },
            user_data_64: if t.user_data_64 != 0 {
                t.user_data_64
            } else {
                p.user_data_64
            },
            user_data_32: if t.user_data_32 != 0 {
                t.user_data_32
            } else {
                p.user_data_32
            },
            timeout: 0,
            ledger: p.ledger,
            code: p.code,
            flags: t.flags,
            timestamp,
        };
        self.push_transfer(created, TransferPendingStatus::None, dr_index, cr_index);
        self.record_transfer_event(
            if post {
                EventKind::TransferPosted
            } else {
                EventKind::TransferVoided
            },
            timestamp,
            &created,
            RemoteSides::empty(),
            [EventSide::Local(dr_index), EventSide::Local(cr_index)],
        );
        Ok((R::Created, timestamp))
    }

    fn transfer_exists(&self, t: &Transfer, e: &Transfer) -> Outcome<CreateTransferResult> {
        use CreateTransferResult as R;
        // The flags change the meaning of the other fields, so they are compared first.
        if t.flags != e.flags {
            return Err(R::ExistsWithDifferentFlags);
        }
        if t.pending_id != e.pending_id {
            return Err(R::ExistsWithDifferentPendingId);
        }
        if t.timeout != e.timeout {
            return Err(R::ExistsWithDifferentTimeout);
        }
        if t.flags
            .intersects(TransferFlags::POST_PENDING_TRANSFER | TransferFlags::VOID_PENDING_TRANSFER)
        {
            let p = self
                .transfer(t.pending_id)
                .expect("the pending transfer of a post/void exists");
            return post_or_void_exists(t, e, p);
        }
        if t.debit_account_id != e.debit_account_id {
            return Err(R::ExistsWithDifferentDebitAccountId);
        }
        if t.credit_account_id != e.credit_account_id {
            return Err(R::ExistsWithDifferentCreditAccountId);
        }
        // For balancing transfers `amount` is an upper limit, so a resubmission with a limit at
        // or above what was actually moved is the same transfer.
        let amount_differs = if t
            .flags
            .intersects(TransferFlags::BALANCING_DEBIT | TransferFlags::BALANCING_CREDIT)
        {
            t.amount < e.amount
        } else {
            t.amount != e.amount
        };
        if amount_differs {
            return Err(R::ExistsWithDifferentAmount);
        }
        if t.user_data_128 != e.user_data_128 {
            return Err(R::ExistsWithDifferentUserData128);
        }
        if t.user_data_64 != e.user_data_64 {
            return Err(R::ExistsWithDifferentUserData64);
        }
        if t.user_data_32 != e.user_data_32 {
            return Err(R::ExistsWithDifferentUserData32);
        }
        if t.ledger != e.ledger {
            return Err(R::ExistsWithDifferentLedger);
        }
        if t.code != e.code {
            return Err(R::ExistsWithDifferentCode);
        }
        Ok((R::Exists, e.timestamp))
    }
}

/// The check of a transfer's own id, after its flags.
pub(crate) fn check_transfer_id(id: u128) -> Result<(), CreateTransferResult> {
    match id {
        0 => Err(CreateTransferResult::IdMustNotBeZero),
        u128::MAX => Err(CreateTransferResult::IdMustNotBeIntMax),
        _ => Ok(()),
    }
}

/// The checks of a plain or pending transfer's own fields, after its id and flags: the
/// accounts it names, `pending_id`, `timeout`, `ledger` and `code`, in precedence order.
pub(crate) fn check_transfer_fields(t: &Transfer) -> Result<(), CreateTransferResult> {
    use CreateTransferResult as R;
    if t.debit_account_id == 0 {
        return Err(R::DebitAccountIdMustNotBeZero);
    }
    if t.debit_account_id == u128::MAX {
        return Err(R::DebitAccountIdMustNotBeIntMax);
    }
    if t.credit_account_id == 0 {
        return Err(R::CreditAccountIdMustNotBeZero);
    }
    if t.credit_account_id == u128::MAX {
        return Err(R::CreditAccountIdMustNotBeIntMax);
    }
    if t.credit_account_id == t.debit_account_id {
        return Err(R::AccountsMustBeDifferent);
    }
    if t.pending_id != 0 {
        return Err(R::PendingIdMustBeZero);
    }
    if !t.flags.contains(TransferFlags::PENDING) {
        if t.timeout != 0 {
            return Err(R::TimeoutReservedForPendingTransfer);
        }
        if t.flags
            .intersects(TransferFlags::CLOSING_DEBIT | TransferFlags::CLOSING_CREDIT)
        {
            return Err(R::ClosingTransferMustBePending);
        }
    }
    if t.ledger == 0 {
        return Err(R::LedgerMustNotBeZero);
    }
    if t.code == 0 {
        return Err(R::CodeMustNotBeZero);
    }
    Ok(())
}

/// Whether moving `amount` from `dr` to `cr` (as pending when `pending`) overflows a balance.
pub(crate) fn check_overflows(
    dr: &Account,
    cr: &Account,
    amount: u128,
    pending: bool,
) -> Result<(), CreateTransferResult> {
    use CreateTransferResult as R;
    if pending {
        if amount.checked_add(dr.debits_pending).is_none() {
            return Err(R::OverflowsDebitsPending);
        }
        if amount.checked_add(cr.credits_pending).is_none() {
            return Err(R::OverflowsCreditsPending);
        }
    }
    if amount.checked_add(dr.debits_posted).is_none() {
        return Err(R::OverflowsDebitsPosted);
    }
    if amount.checked_add(cr.credits_posted).is_none() {
        return Err(R::OverflowsCreditsPosted);
    }
    if amount
        .checked_add(dr.debits_pending + dr.debits_posted)
        .is_none()
    {
        return Err(R::OverflowsDebits);
    }
    if amount
        .checked_add(cr.credits_pending + cr.credits_posted)
        .is_none()
    {
        return Err(R::OverflowsCredits);
    }
    Ok(())
}

fn post_or_void_exists(t: &Transfer, e: &Transfer, p: &Transfer) -> Outcome<CreateTransferResult> {
    use CreateTransferResult as R;
    if t.debit_account_id != 0 && t.debit_account_id != e.debit_account_id {
        return Err(R::ExistsWithDifferentDebitAccountId);
    }
    if t.credit_account_id != 0 && t.credit_account_id != e.credit_account_id {
        return Err(R::ExistsWithDifferentCreditAccountId);
    }
    let amount_differs = if t.flags.contains(TransferFlags::VOID_PENDING_TRANSFER) {
        if t.amount == 0 {
            e.amount != p.amount
        } else {
            t.amount != e.amount
        }
    } else if t.amount == u128::MAX {
        e.amount != p.amount
    } else {
        t.amount != e.amount
    };
    if amount_differs {
        return Err(R::ExistsWithDifferentAmount);
    }
    let user_data_differs = |requested: u128, existing: u128, inherited: u128| {
        if requested == 0 {
            existing != inherited
        } else {
            requested != existing
        }
    };
    if user_data_differs(t.user_data_128, e.user_data_128, p.user_data_128) {
        return Err(R::ExistsWithDifferentUserData128);
    }
    if user_data_differs(
        t.user_data_64.into(),
        e.user_data_64.into(),
        p.user_data_64.into(),
    ) {
        return Err(R::ExistsWithDifferentUserData64);
    }
    if user_data_differs(
        t.user_data_32.into(),
        e.user_data_32.into(),
        p.user_data_32.into(),
    ) {
        return Err(R::ExistsWithDifferentUserData32);
    }
    if t.ledger != 0 && t.ledger != e.ledger {
        return Err(R::ExistsWithDifferentLedger);
    }
    if t.code != 0 && t.code != e.code {
        return Err(R::ExistsWithDifferentCode);
    }
    Ok((R::Exists, e.timestamp))
}

fn account_exists(a: &Account, e: &Account) -> Outcome<CreateAccountResult> {
    use CreateAccountResult as R;
    if a.flags != e.flags {
        return Err(R::ExistsWithDifferentFlags);
    }
    if a.user_data_128 != e.user_data_128 {
        return Err(R::ExistsWithDifferentUserData128);
    }
    if a.user_data_64 != e.user_data_64 {
        return Err(R::ExistsWithDifferentUserData64);
    }
    if a.user_data_32 != e.user_data_32 {
        return Err(R::ExistsWithDifferentUserData32);
    }
    if a.ledger != e.ledger {
        return Err(R::ExistsWithDifferentLedger);
    }
    if a.code != e.code {
        return Err(R::ExistsWithDifferentCode);
    }
    Ok((R::Exists, e.timestamp))
}

/// What the batch loop needs to know of an event type.
/// The result codes the batch loop hands out itself, shared by every event kind answering
/// with the same result type.
trait BatchLoopCodes: Copy + PartialEq + std::fmt::Debug {
    const CREATED: Self;
    const LINKED_EVENT_FAILED: Self;
    const LINKED_EVENT_CHAIN_OPEN: Self;
    const IMPORTED_EVENT_EXPECTED: Self;
    const IMPORTED_EVENT_NOT_EXPECTED: Self;
    const TIMESTAMP_MUST_BE_ZERO: Self;
    const IMPORTED_EVENT_TIMESTAMP_OUT_OF_RANGE: Self;
    const IMPORTED_EVENT_TIMESTAMP_MUST_NOT_ADVANCE: Self;
}

macro_rules! batch_loop_codes {
    ($result:ident) => {
        impl BatchLoopCodes for $result {
            const CREATED: Self = $result::Created;
            const LINKED_EVENT_FAILED: Self = $result::LinkedEventFailed;
            const LINKED_EVENT_CHAIN_OPEN: Self = $result::LinkedEventChainOpen;
            const IMPORTED_EVENT_EXPECTED: Self = $result::ImportedEventExpected;
            const IMPORTED_EVENT_NOT_EXPECTED: Self = $result::ImportedEventNotExpected;
            const TIMESTAMP_MUST_BE_ZERO: Self = $result::TimestampMustBeZero;
            const IMPORTED_EVENT_TIMESTAMP_OUT_OF_RANGE: Self =
                $result::ImportedEventTimestampOutOfRange;
            const IMPORTED_EVENT_TIMESTAMP_MUST_NOT_ADVANCE: Self =
                $result::ImportedEventTimestampMustNotAdvance;
        }
    };
}

batch_loop_codes!(CreateAccountResult);
batch_loop_codes!(CreateTransferResult);

trait CreateEvent {
    type Result: BatchLoopCodes;
    fn linked(&self) -> bool;
    fn imported(&self) -> bool;
    fn timestamp(&self) -> u64;
    /// Called for every failed event, after any rollback.
    fn record_failure(state: &mut StateMachine, event: &Self, result: Self::Result);
}

impl CreateEvent for Account {
    type Result = CreateAccountResult;
    fn linked(&self) -> bool {
        self.flags.contains(AccountFlags::LINKED)
    }
    fn imported(&self) -> bool {
        self.flags.contains(AccountFlags::IMPORTED)
    }
    fn timestamp(&self) -> u64 {
        self.timestamp
    }
    fn record_failure(_: &mut StateMachine, _: &Self, _: Self::Result) {
        // Account results never depend on transient state, so no id is burnt.
    }
}

impl CreateEvent for Transfer {
    type Result = CreateTransferResult;
    fn linked(&self) -> bool {
        self.flags.contains(TransferFlags::LINKED)
    }
    fn imported(&self) -> bool {
        self.flags.contains(TransferFlags::IMPORTED)
    }
    fn timestamp(&self) -> u64 {
        self.timestamp
    }
    fn record_failure(state: &mut StateMachine, event: &Self, result: Self::Result) {
        if result.is_transient() {
            state.failed_transfer_ids.insert(event.id);
        }
    }
}

impl CreateEvent for SagaStep {
    type Result = CreateTransferResult;
    fn linked(&self) -> bool {
        SagaStep::linked(self)
    }
    /// Copies are never imported (a reservation carrying the flag answers `reserved_flag`).
    fn imported(&self) -> bool {
        false
    }
    /// A step carries no timestamp of its own (its encoding has no room for one).
    fn timestamp(&self) -> u64 {
        0
    }
    /// A reservation refused for a transient reason burns its id here, as a transfer's does:
    /// the refusal is then final in this group, so no later reservation of the same transfer
    /// can succeed here and let the saga be decided the other way (in the home, that is what
    /// makes a refusal the saga's decision). A saga refused anywhere is cancelled, so the id is
    /// dead wherever it burns.
    fn record_failure(state: &mut StateMachine, step: &Self, result: Self::Result) {
        if matches!(step.action, SagaAction::Reserve(_)) && result.is_transient() {
            state.failed_transfer_ids.insert(step.transfer.id);
        }
    }
}
