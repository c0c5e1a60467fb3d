//! Per-account event lists and the balance history derived from them.
//!
//! Every account keeps one `u32` per change, in timestamp order: either the index of a
//! transfer that touched it, or (high bit set) the index of a *release* in
//! `StateMachine::expiry_events`: a pending transfer that expired, or a saga copy that was
//! settled (confirmed copies carry [`CONFIRM_BIT`] in the release's transfer index). Accounts with the `history` flag also keep their balance after
//! every 64th change; the balance after any change is that checkpoint plus the few deltas since,
//! each derived from the transfer behind it. This keeps history at about one byte per change
//! instead of a full 64-byte balance, which is what lets ten million transfers fit in memory.

use crate::state::StateMachine;
use crate::types::{Account, AccountFlags, Transfer, TransferFlags};

/// Marks an entry that refers to a release (expiry or saga settlement) rather than a transfer.
pub(crate) const EXPIRY_BIT: u32 = 1 << 31;
/// Marks, in a release's transfer index, a saga copy that was confirmed (its pending amount
/// became posted) rather than expired or cancelled (released).
pub(crate) const CONFIRM_BIT: u32 = 1 << 31;
/// A full balance is kept after every this many changes of a `history` account.
pub(crate) const BALANCE_CHECKPOINT_EVERY: usize = 64;

/// The four balances of an account (the type change events carry).
pub(crate) use crate::events::Balances as Balance;

impl Balance {
    pub fn of(account: &Account) -> Balance {
        Balance {
            debits_pending: account.debits_pending,
            debits_posted: account.debits_posted,
            credits_pending: account.credits_pending,
            credits_posted: account.credits_posted,
        }
    }

    /// `self + add - sub`, field by field (wrapping, so that a step can be undone exactly).
    pub(crate) fn step(self, add: Balance, sub: Balance) -> Balance {
        Balance {
            debits_pending: self
                .debits_pending
                .wrapping_add(add.debits_pending)
                .wrapping_sub(sub.debits_pending),
            debits_posted: self
                .debits_posted
                .wrapping_add(add.debits_posted)
                .wrapping_sub(sub.debits_posted),
            credits_pending: self
                .credits_pending
                .wrapping_add(add.credits_pending)
                .wrapping_sub(sub.credits_pending),
            credits_posted: self
                .credits_posted
                .wrapping_add(add.credits_posted)
                .wrapping_sub(sub.credits_posted),
        }
    }
}

/// What one entry changed on one side of a transfer, as (added, subtracted).
fn side_delta(
    debit: bool,
    pending_add: u128,
    pending_sub: u128,
    posted_add: u128,
) -> (Balance, Balance) {
    let mut add = Balance::default();
    let mut sub = Balance::default();
    if debit {
        add.debits_pending = pending_add;
        sub.debits_pending = pending_sub;
        add.debits_posted = posted_add;
    } else {
        add.credits_pending = pending_add;
        sub.credits_pending = pending_sub;
        add.credits_posted = posted_add;
    }
    (add, sub)
}

impl StateMachine {
    /// The index of the transfer behind an entry (for a release: the transfer released).
    pub(crate) fn entry_transfer_index(&self, entry: u32) -> u32 {
        if entry & EXPIRY_BIT != 0 {
            self.expiry_events[(entry & !EXPIRY_BIT) as usize].1 & !CONFIRM_BIT
        } else {
            entry
        }
    }

    /// The transfer behind an entry (for a release: the transfer released).
    pub(crate) fn entry_transfer(&self, entry: u32) -> &Transfer {
        &self.transfers[self.entry_transfer_index(entry) as usize]
    }

    pub(crate) fn entry_timestamp(&self, entry: u32) -> u64 {
        if entry & EXPIRY_BIT != 0 {
            self.expiry_events[(entry & !EXPIRY_BIT) as usize].0
        } else {
            self.transfers[entry as usize].timestamp
        }
    }

    /// How an entry changed the balances of `account_id`, as (added, subtracted).
    pub(crate) fn entry_delta(&self, account_id: u128, entry: u32) -> (Balance, Balance) {
        let t = self.entry_transfer(entry);
        let debit = t.debit_account_id == account_id;
        debug_assert!(debit || t.credit_account_id == account_id);
        self.entry_side_delta(entry, debit)
    }

    /// How an entry changed the balances of its transfer's debit (`debit`) or credit side, as
    /// (added, subtracted): what [`Self::entry_delta`] gives that side's account, and what a
    /// saga copy's remote side gave the clearing balance.
    pub(crate) fn entry_side_delta(&self, entry: u32, debit: bool) -> (Balance, Balance) {
        let t = self.entry_transfer(entry);
        if entry & EXPIRY_BIT != 0 {
            let confirmed = self.expiry_events[(entry & !EXPIRY_BIT) as usize].1 & CONFIRM_BIT != 0;
            let posted = if confirmed { t.amount } else { 0 };
            return side_delta(debit, 0, t.amount, posted);
        }
        if !self.saga_copies.is_empty() && self.saga_copies.contains_key(&entry) {
            // A copy's reservation: pending until it is settled.
            return side_delta(debit, t.amount, 0, 0);
        }
        if t.flags
            .intersects(TransferFlags::POST_PENDING_TRANSFER | TransferFlags::VOID_PENDING_TRANSFER)
        {
            let pending = self
                .transfer(t.pending_id)
                .expect("a post/void names an existing pending transfer");
            let posted = if t.flags.contains(TransferFlags::POST_PENDING_TRANSFER) {
                t.amount
            } else {
                0
            };
            return side_delta(debit, 0, pending.amount, posted);
        }
        if t.flags.contains(TransferFlags::PENDING) {
            side_delta(debit, t.amount, 0, 0)
        } else {
            side_delta(debit, 0, 0, t.amount)
        }
    }

    /// Appends an entry to an account, after the account's balances were updated for it.
    pub(crate) fn record_entry(&mut self, slot_index: u32, entry: u32) {
        let slot = &mut self.accounts[slot_index as usize];
        let position = slot.entries.len();
        slot.entries.push(entry);
        if slot.account.flags.contains(AccountFlags::HISTORY)
            && position.is_multiple_of(BALANCE_CHECKPOINT_EVERY)
        {
            slot.balance_checkpoints.push(Balance::of(&slot.account));
        }
    }

    /// Removes an account's newest entry (rolling back a linked chain).
    pub(crate) fn pop_entry(&mut self, slot_index: u32) -> Option<u32> {
        let slot = &mut self.accounts[slot_index as usize];
        let entry = slot.entries.pop()?;
        if slot.account.flags.contains(AccountFlags::HISTORY)
            && slot.entries.len().is_multiple_of(BALANCE_CHECKPOINT_EVERY)
        {
            slot.balance_checkpoints.pop();
        }
        Some(entry)
    }

    /// The balance of a `history` account right after its entry at `position`.
    pub(crate) fn balance_after(&self, slot_index: u32, position: usize) -> Balance {
        let slot = &self.accounts[slot_index as usize];
        let base = position - position % BALANCE_CHECKPOINT_EVERY;
        let mut balance = slot.balance_checkpoints[base / BALANCE_CHECKPOINT_EVERY];
        for &entry in &slot.entries[base + 1..=position] {
            let (add, sub) = self.entry_delta(slot.account.id, entry);
            balance = balance.step(add, sub);
        }
        balance
    }

    /// The balance just before the entry at `position`, given the balance right after it.
    pub(crate) fn balance_before(
        &self,
        slot_index: u32,
        position: usize,
        after: Balance,
    ) -> Balance {
        let slot = &self.accounts[slot_index as usize];
        let (add, sub) = self.entry_delta(slot.account.id, slot.entries[position]);
        after.step(sub, add)
    }

    /// Applies an entry's delta to a running balance (used when rebuilding from a snapshot).
    pub(crate) fn balance_step(&self, account_id: u128, entry: u32, balance: Balance) -> Balance {
        let (add, sub) = self.entry_delta(account_id, entry);
        balance.step(add, sub)
    }
}
