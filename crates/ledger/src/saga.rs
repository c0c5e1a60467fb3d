//! Saga steps: what one group does for a transfer whose accounts or home live in other groups.
//!
//! A cross-group transfer `t` is applied as a *copy* in every group it involves (its home, the
//! debit account's group, the credit account's group), each copy stored under `t`'s own id with
//! the caller's fields. A copy books the accounts that live here; for an account that lives in
//! another group (a *remote side*) it books the group's **clearing balance** of the transfer's
//! ledger instead, so every group's books balance on their own at every applied index:
//! per ledger, `Σ accounts + clearing` debits equal credits (pending and posted alike).
//!
//! The steps, each one event of a [`crate::BatchBody::SagaSteps`] batch:
//! - **reserve**: create the copy *open*, its amount pending on both sides. Checked as one group
//!   checks a transfer, but only against what lives here (the local accounts' existence,
//!   ledger, closed flag, limits; overflow of the local accounts — the remote side is checked
//!   in its own group, and the clearing balance, kept in 256 bits, never refuses: see
//!   `crate::wide`). Answers like `create_transfers`:
//!   `created`, `exists` (a retry with the same fields and sides), `exists_with_different_*`,
//!   `id_already_failed` for a cancelled copy, or the failure. A transient failure (an account
//!   not found, a limit, a closed account) burns the id in this group, as a transfer's does, so
//!   that a refusal is final: no later reservation of the transfer can succeed here.
//! - **confirm**: the open copy's pending amount becomes posted on both sides.
//! - **cancel**: the open copy's pending amount is released on both sides; the id then answers
//!   `id_already_failed` to every later create, as a transient failure burns an id.
//!
//! Confirm and cancel are idempotent and final: repeating one answers `exists`; the other one
//! answers `pending_transfer_already_posted` / `_voided`; an unknown id answers
//! `pending_transfer_not_found`, a transfer that is not a copy `pending_transfer_not_pending`.
//! Which one happens is decided elsewhere (the saga's home, see `docs/scale-out-design.md`);
//! this module only guarantees that each copy settles once and that money is conserved.
//!
//! Copies carry only `linked` of the transfer flags (plain transfers; two-phase, balancing
//! and closing transfers across groups are not built yet). Queries show a copy once it is
//! confirmed: lookups and an account's transfers skip open and cancelled copies; an account's
//! balance history shows the reservation and the settlement as two rows.
//!
//! This module owns the step types and their rules. It must not decide a saga's outcome nor
//! know which group an id lives in.

use bitflags::bitflags;

use crate::events::{EventKind, EventSide};
use crate::history::{CONFIRM_BIT, EXPIRY_BIT};
use crate::results::CreateTransferResult;
use crate::state::{
    Outcome, StateMachine, Undo, check_overflows, check_transfer_fields, check_transfer_id,
};
use crate::types::{Account, Transfer, TransferFlags, TransferPendingStatus};
use crate::wide::{Wide, WideBalances};

bitflags! {
    /// Which of a transfer's accounts live in another group (booked against clearing here).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
    pub struct RemoteSides: u8 {
        const DEBIT = 1 << 0;
        const CREDIT = 1 << 1;
    }
}

/// What a saga step does to the copy named by its transfer's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SagaAction {
    /// Create the copy, open, with these sides booked against clearing.
    Reserve(RemoteSides),
    /// Post the open copy's amount.
    Confirm,
    /// Release the open copy's amount.
    Cancel,
    /// A step this build does not know (decoded from bytes, answered `reserved_flag`).
    Unknown(u8),
}

impl SagaAction {
    const RESERVE: u8 = 1;
    const CONFIRM: u8 = 2;
    const CANCEL: u8 = 3;

    /// The step's two encoding bytes: kind and remote sides.
    pub(crate) fn to_bytes(self) -> [u8; 2] {
        match self {
            SagaAction::Reserve(remote) => [Self::RESERVE, remote.bits()],
            SagaAction::Confirm => [Self::CONFIRM, 0],
            SagaAction::Cancel => [Self::CANCEL, 0],
            SagaAction::Unknown(kind) => [kind, 0],
        }
    }

    pub(crate) fn from_bytes(kind: u8, remote: u8) -> SagaAction {
        match kind {
            Self::RESERVE => SagaAction::Reserve(RemoteSides::from_bits_retain(remote)),
            Self::CONFIRM if remote == 0 => SagaAction::Confirm,
            Self::CANCEL if remote == 0 => SagaAction::Cancel,
            other => SagaAction::Unknown(other),
        }
    }
}

/// One event of a saga-steps batch. For confirm and cancel only `transfer.id` is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SagaStep {
    pub action: SagaAction,
    pub transfer: Transfer,
}

impl SagaStep {
    pub fn reserve(transfer: Transfer, remote: RemoteSides) -> SagaStep {
        SagaStep {
            action: SagaAction::Reserve(remote),
            transfer,
        }
    }

    pub fn confirm(id: u128) -> SagaStep {
        SagaStep {
            action: SagaAction::Confirm,
            transfer: Transfer {
                id,
                ..Default::default()
            },
        }
    }

    pub fn cancel(id: u128) -> SagaStep {
        SagaStep {
            action: SagaAction::Cancel,
            transfer: Transfer {
                id,
                ..Default::default()
            },
        }
    }

    /// Whether this step links to the next, as the ledger reads a saga-steps batch: only a
    /// reservation can be linked, since a settlement must never be rolled back.
    pub fn linked(&self) -> bool {
        matches!(self.action, SagaAction::Reserve(_))
            && self.transfer.flags.contains(TransferFlags::LINKED)
    }
}

/// Where a copy stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum SagaState {
    Open = 1,
    Confirmed = 2,
    Cancelled = 3,
}

impl SagaState {
    pub(crate) fn from_u8(value: u8) -> Option<SagaState> {
        Some(match value {
            1 => SagaState::Open,
            2 => SagaState::Confirmed,
            3 => SagaState::Cancelled,
            _ => return None,
        })
    }
}

/// A transfer stored as a saga copy: its remote sides and where it stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SagaCopy {
    pub remote: RemoteSides,
    pub state: SagaState,
}

/// A group's clearing balance of one ledger: what its copies booked for remote accounts, in
/// 256 bits (a sum over every account, which `u128` could not always hold: see `wide`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ClearingBalance {
    pub ledger: u32,
    pub sums: WideBalances,
}

/// One side of a copy: an account of this group (its slot index) or the clearing balance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Local(u32),
    Clearing,
}

/// What a step does to the amount on one side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Move {
    Hold,
    Post,
    Release,
}

/// A balance field a step moves an amount on: an account's (`u128`, kept in range by the checks
/// before a hold) or a clearing balance's (`Wide`, which never overflows).
trait BalanceField: Copy {
    fn plus(self, amount: Self) -> Self;
    fn minus(self, amount: Self) -> Self;
}

impl BalanceField for u128 {
    fn plus(self, amount: u128) -> u128 {
        self + amount
    }

    fn minus(self, amount: u128) -> u128 {
        self - amount
    }
}

impl BalanceField for Wide {
    fn plus(self, amount: Wide) -> Wide {
        Wide::plus(self, amount)
    }

    fn minus(self, amount: Wide) -> Wide {
        Wide::minus(self, amount)
    }
}

impl Move {
    /// Moves `amount` on one side's pending and posted fields.
    fn apply<T: BalanceField>(self, pending: &mut T, posted: &mut T, amount: T) {
        match self {
            Move::Hold => *pending = pending.plus(amount),
            Move::Post => {
                *pending = pending.minus(amount);
                *posted = posted.plus(amount);
            }
            Move::Release => *pending = pending.minus(amount),
        }
    }
}

impl Side {
    /// The side as a change event names it.
    fn event_side(self) -> EventSide {
        match self {
            Side::Local(index) => EventSide::Local(index),
            Side::Clearing => EventSide::Clearing,
        }
    }
}

impl StateMachine {
    /// Every clearing balance, by ledger.
    pub fn clearing_balances(&self) -> Vec<ClearingBalance> {
        self.clearing
            .iter()
            .map(|(&ledger, &sums)| ClearingBalance { ledger, sums })
            .collect()
    }

    /// The saga copy stored under `id`, if the transfer with that id is one.
    pub fn saga_copy(&self, id: u128) -> Option<SagaCopy> {
        let index = self.transfer_slot_index(id)?;
        self.saga_copies.get(&index).copied()
    }

    /// Open copies reserved before `timestamp` (their copy's timestamp), oldest first, at most
    /// `limit`: what a resolver drives to an end.
    pub fn open_saga_copies(&self, timestamp: u64, limit: usize) -> Vec<(Transfer, RemoteSides)> {
        self.saga_open
            .iter()
            .map(|&index| {
                (
                    self.transfers[index as usize],
                    self.saga_copies[&index].remote,
                )
            })
            .take_while(|(transfer, _)| transfer.timestamp < timestamp)
            .take(limit)
            .collect()
    }

    /// How many saga copies are open (reserved, not yet settled by a post or a void).
    pub fn open_saga_copies_count(&self) -> usize {
        self.saga_open.len()
    }

    /// Whether the transfer at `index` is a copy that queries must not show yet (or ever).
    pub(crate) fn hidden_copy(&self, index: u32) -> bool {
        !self.saga_copies.is_empty()
            && self
                .saga_copies
                .get(&index)
                .is_some_and(|copy| copy.state != SagaState::Confirmed)
    }

    /// Applies one saga step (the `create` function of a saga-steps batch).
    pub(crate) fn apply_saga_step(
        &mut self,
        timestamp_event: u64,
        step: &SagaStep,
    ) -> Outcome<CreateTransferResult> {
        match step.action {
            SagaAction::Reserve(remote) => {
                self.reserve_copy(timestamp_event, &step.transfer, remote)
            }
            SagaAction::Confirm => self.settle_copy(timestamp_event, step.transfer.id, true),
            SagaAction::Cancel => self.settle_copy(timestamp_event, step.transfer.id, false),
            SagaAction::Unknown(_) => Err(CreateTransferResult::ReservedFlag),
        }
    }

    /// The account behind a side, as checks see it: for clearing, a fresh account of the
    /// transfer's ledger (no balances, limits or flags): the remote account is checked in its
    /// own group, and the clearing balance itself never refuses (see `wide`).
    fn side_account(&self, side: Side, ledger: u32) -> Account {
        match side {
            Side::Local(index) => self.accounts[index as usize].account,
            Side::Clearing => Account {
                ledger,
                ..Default::default()
            },
        }
    }

    /// Moves `amount` on one side of a copy (`debit`: its debits, else its credits): into
    /// pending (`Hold`), from pending to posted (`Post`) or out of pending (`Release`). The
    /// checks before a hold keep an account's fields in range; a clearing balance is 256 bits.
    fn move_side(&mut self, side: Side, ledger: u32, debit: bool, amount: u128, how: Move) {
        match side {
            Side::Local(index) => {
                let account = &mut self.accounts[index as usize].account;
                let (pending, posted) = if debit {
                    (&mut account.debits_pending, &mut account.debits_posted)
                } else {
                    (&mut account.credits_pending, &mut account.credits_posted)
                };
                how.apply(pending, posted, amount);
            }
            Side::Clearing => {
                let balance = self.clearing.entry(ledger).or_default();
                let (pending, posted) = if debit {
                    (&mut balance.debits_pending, &mut balance.debits_posted)
                } else {
                    (&mut balance.credits_pending, &mut balance.credits_posted)
                };
                how.apply(pending, posted, Wide::from(amount));
            }
        }
    }

    /// Notes what a chain rollback needs to restore the sides of a copy.
    fn note_sides(&mut self, dr: Side, cr: Side, ledger: u32) {
        for side in [dr, cr] {
            if let Side::Local(index) = side {
                let before = self.accounts[index as usize].account;
                self.note(Undo::AccountChanged { index, before });
            }
        }
        if dr == Side::Clearing || cr == Side::Clearing {
            let before = self.clearing.get(&ledger).copied();
            self.note(Undo::ClearingChanged { ledger, before });
        }
    }

    fn reserve_copy(
        &mut self,
        timestamp_event: u64,
        t: &Transfer,
        remote: RemoteSides,
    ) -> Outcome<CreateTransferResult> {
        use CreateTransferResult as R;
        if !RemoteSides::all().contains(remote) || !TransferFlags::LINKED.contains(t.flags) {
            return Err(R::ReservedFlag);
        }
        check_transfer_id(t.id)?;
        if let Some(index) = self.transfer_slot_index(t.id) {
            let found = self.existing_transfer(t, index);
            return match self.saga_copies.get(&index) {
                Some(copy) if found.is_ok() && copy.remote != remote => {
                    Err(R::ExistsWithDifferentFlags)
                }
                _ => found,
            };
        }
        if !self.failed_transfer_ids.is_empty() && self.failed_transfer_ids.contains(&t.id) {
            return Err(R::IdAlreadyFailed);
        }
        check_transfer_fields(t)?;
        let side = |remote_side: bool, id: u128, missing: R| -> Result<Side, R> {
            if remote_side {
                Ok(Side::Clearing)
            } else {
                self.account_slot_index(id).map(Side::Local).ok_or(missing)
            }
        };
        let dr_side = side(
            remote.contains(RemoteSides::DEBIT),
            t.debit_account_id,
            R::DebitAccountNotFound,
        )?;
        let cr_side = side(
            remote.contains(RemoteSides::CREDIT),
            t.credit_account_id,
            R::CreditAccountNotFound,
        )?;
        let dr = self.side_account(dr_side, t.ledger);
        let cr = self.side_account(cr_side, t.ledger);
        if dr.ledger != cr.ledger {
            return Err(R::AccountsMustHaveTheSameLedger);
        }
        if t.ledger != dr.ledger {
            return Err(R::TransferMustHaveTheSameLedgerAsAccounts);
        }
        if dr.flags.contains(crate::AccountFlags::CLOSED) {
            return Err(R::DebitAccountAlreadyClosed);
        }
        if cr.flags.contains(crate::AccountFlags::CLOSED) {
            return Err(R::CreditAccountAlreadyClosed);
        }
        let amount = t.amount;
        // The checks one group makes of a plain transfer (not pending: the total checked bounds
        // the pending booked here too), the remote side being a fresh account: its own group
        // checks its balances.
        check_overflows(&dr, &cr, amount, false)?;
        if dr.debits_exceed_credits(amount) {
            return Err(R::ExceedsCredits);
        }
        if cr.credits_exceed_debits(amount) {
            return Err(R::ExceedsDebits);
        }
        if self.transfers_full() {
            return Err(R::CapacityReached);
        }
        // From here on the reservation succeeds.
        self.note_sides(dr_side, cr_side, t.ledger);
        self.move_side(dr_side, t.ledger, true, amount, Move::Hold);
        self.move_side(cr_side, t.ledger, false, amount, Move::Hold);
        let local = |side: Side| match side {
            Side::Local(index) => Some(index),
            Side::Clearing => None,
        };
        let copy = Transfer {
            timestamp: timestamp_event,
            ..*t
        };
        let index = self.push_transfer_sides(
            copy,
            TransferPendingStatus::None,
            local(dr_side),
            local(cr_side),
        );
        self.record_transfer_event(
            EventKind::SagaReserved,
            timestamp_event,
            &copy,
            remote,
            [dr_side.event_side(), cr_side.event_side()],
        );
        self.saga_copies.insert(
            index,
            SagaCopy {
                remote,
                state: SagaState::Open,
            },
        );
        self.saga_open.insert(index);
        Ok((R::Created, timestamp_event))
    }

    /// Confirms (`confirm`) or cancels an open copy.
    fn settle_copy(
        &mut self,
        timestamp_event: u64,
        id: u128,
        confirm: bool,
    ) -> Outcome<CreateTransferResult> {
        use CreateTransferResult as R;
        let index = self
            .transfer_slot_index(id)
            .ok_or(R::PendingTransferNotFound)?;
        let copy = *self
            .saga_copies
            .get(&index)
            .ok_or(R::PendingTransferNotPending)?;
        let p = self.transfers[index as usize];
        match (copy.state, confirm) {
            (SagaState::Open, _) => {}
            (SagaState::Confirmed, true) | (SagaState::Cancelled, false) => {
                return Ok((R::Exists, p.timestamp));
            }
            (SagaState::Cancelled, true) => return Err(R::PendingTransferAlreadyVoided),
            (SagaState::Confirmed, false) => return Err(R::PendingTransferAlreadyPosted),
        }
        let dr_side = self.copy_side(&p, copy.remote, RemoteSides::DEBIT);
        let cr_side = self.copy_side(&p, copy.remote, RemoteSides::CREDIT);
        // A settlement is never rolled back: it carries no `linked` flag, so it can end a
        // chain but never sit inside one (see `CreateEvent::linked` for `SagaStep`).
        let amount = p.amount;
        let how = if confirm { Move::Post } else { Move::Release };
        self.move_side(dr_side, p.ledger, true, amount, how);
        self.move_side(cr_side, p.ledger, false, amount, how);
        self.saga_copies.insert(
            index,
            SagaCopy {
                remote: copy.remote,
                state: if confirm {
                    SagaState::Confirmed
                } else {
                    SagaState::Cancelled
                },
            },
        );
        self.saga_open.remove(&index);
        let release = u32::try_from(self.expiry_events.len())
            .ok()
            .filter(|e| e & EXPIRY_BIT == 0)
            .expect("releases fit in 31 bits");
        let marked = if confirm { index | CONFIRM_BIT } else { index };
        self.expiry_events.push((timestamp_event, marked));
        for side in [dr_side, cr_side] {
            if let Side::Local(slot) = side {
                self.record_entry(slot, release | EXPIRY_BIT);
            }
        }
        self.expiry_timestamp_last = timestamp_event;
        self.record_transfer_event(
            if confirm {
                EventKind::SagaConfirmed
            } else {
                EventKind::SagaCancelled
            },
            timestamp_event,
            &p,
            copy.remote,
            [dr_side.event_side(), cr_side.event_side()],
        );
        Ok((R::Created, timestamp_event))
    }

    /// The side of a stored copy: clearing if remote, else its account here.
    fn copy_side(&self, p: &Transfer, remote: RemoteSides, which: RemoteSides) -> Side {
        if remote.contains(which) {
            return Side::Clearing;
        }
        let id = if which == RemoteSides::DEBIT {
            p.debit_account_id
        } else {
            p.credit_account_id
        };
        Side::Local(
            self.account_slot_index(id)
                .expect("a copy's local accounts exist"),
        )
    }

    /// The ids of the accounts of transfer `t` (stored at `index`) that live here (`None` for
    /// a remote side of a copy).
    pub(crate) fn local_sides(&self, t: &Transfer, index: u32) -> [Option<u128>; 2] {
        let remote = self
            .saga_copies
            .get(&index)
            .map_or(RemoteSides::empty(), |copy| copy.remote);
        [
            (!remote.contains(RemoteSides::DEBIT)).then_some(t.debit_account_id),
            (!remote.contains(RemoteSides::CREDIT)).then_some(t.credit_account_id),
        ]
    }
}
