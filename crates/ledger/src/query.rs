//! Read-only queries: lookups by id, an account's transfers, an account's balance history.
//!
//! Queries never change state. Filters are validated and a bad one is a typed error naming
//! the field, so an API can answer 4xx instead of an empty list that hides the mistake.

use bitflags::bitflags;

use crate::TIMESTAMP_MAX;
use crate::history::{Balance, EXPIRY_BIT};
use crate::saga::SagaState;
use crate::state::StateMachine;
use crate::types::{Account, AccountFlags, Transfer};
use limits::QUERY_ROWS_MAX;

bitflags! {
    /// Which side of the account to include, and in which order.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct AccountFilterFlags: u32 {
        /// Include transfers where the account is the debit account.
        const DEBITS = 1 << 0;
        /// Include transfers where the account is the credit account.
        const CREDITS = 1 << 1;
        /// Newest first.
        const REVERSED = 1 << 2;
    }
}

/// Where one transfer id stands in a group (see [`StateMachine::transfer_outcomes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransferOutcome {
    /// No transfer has this id here, and the id is not burnt: it may still be created.
    NotFound,
    /// A cross-group transfer whose saga is under way: reserved here, not yet decided. It
    /// ends without anything more from the caller, as `Created` or `Failed`.
    Pending,
    /// The transfer exists (for a cross-group one: its saga was confirmed), created at
    /// `timestamp`. Final.
    Created { timestamp: u64 },
    /// The id is spent without a transfer: it failed for a reason that depended on the
    /// ledger's state (the id is burnt), or its saga was cancelled. No transfer will ever have
    /// this id; resubmitting it answers `id_already_failed`. Final.
    Failed,
}

impl TransferOutcome {
    /// Whether nothing can change it any more.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TransferOutcome::Created { .. } | TransferOutcome::Failed
        )
    }

    /// The snake_case name the APIs show.
    pub fn as_str(self) -> &'static str {
        match self {
            TransferOutcome::NotFound => "not_found",
            TransferOutcome::Pending => "pending",
            TransferOutcome::Created { .. } => "created",
            TransferOutcome::Failed => "failed",
        }
    }
}

/// The filter of `get_account_transfers` and `get_account_balances`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct AccountFilter {
    pub account_id: u128,
    /// Only transfers with this `user_data_128` (0: any).
    pub user_data_128: u128,
    /// Only transfers with this `user_data_64` (0: any).
    pub user_data_64: u64,
    /// Only transfers with this `user_data_32` (0: any).
    pub user_data_32: u32,
    /// Only transfers with this `code` (0: any).
    pub code: u16,
    /// Inclusive lower bound (0: none).
    pub timestamp_min: u64,
    /// Inclusive upper bound (0: none).
    pub timestamp_max: u64,
    /// Most rows to return; at most `limits::QUERY_ROWS_MAX`.
    pub limit: u32,
    pub flags: AccountFilterFlags,
}

/// An account's balances just after one change (from `get_account_balances`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct AccountBalance {
    pub debits_pending: u128,
    pub debits_posted: u128,
    pub credits_pending: u128,
    pub credits_posted: u128,
    pub timestamp: u64,
}

/// Why a query filter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("{field}: {reason}")]
    InvalidFilter {
        field: &'static str,
        reason: &'static str,
    },
}

fn invalid(field: &'static str, reason: &'static str) -> QueryError {
    QueryError::InvalidFilter { field, reason }
}

impl AccountFilter {
    /// Checks the filter; the error names the first field that is wrong.
    pub fn validate(&self) -> Result<(), QueryError> {
        if self.account_id == 0 || self.account_id == u128::MAX {
            return Err(invalid("account_id", "must not be 0 or 2^128-1"));
        }
        if self.timestamp_min > TIMESTAMP_MAX {
            return Err(invalid("timestamp_min", "must be below 2^63"));
        }
        if self.timestamp_max > TIMESTAMP_MAX {
            return Err(invalid("timestamp_max", "must be below 2^63"));
        }
        if self.timestamp_max != 0 && self.timestamp_min > self.timestamp_max {
            return Err(invalid("timestamp_min", "must not exceed timestamp_max"));
        }
        if self.limit == 0 {
            return Err(invalid("limit", "must be at least 1"));
        }
        if !self
            .flags
            .intersects(AccountFilterFlags::DEBITS | AccountFilterFlags::CREDITS)
        {
            return Err(invalid(
                "flags",
                "at least one of debits and credits must be set",
            ));
        }
        Ok(())
    }

    fn limit(&self) -> usize {
        (self.limit as usize).min(QUERY_ROWS_MAX)
    }

    fn timestamp_max_or_all(&self) -> u64 {
        if self.timestamp_max == 0 {
            u64::MAX
        } else {
            self.timestamp_max
        }
    }

    fn matches(&self, account_id: u128, transfer: &Transfer) -> bool {
        let side = (self.flags.contains(AccountFilterFlags::DEBITS)
            && transfer.debit_account_id == account_id)
            || (self.flags.contains(AccountFilterFlags::CREDITS)
                && transfer.credit_account_id == account_id);
        side && (self.user_data_128 == 0 || self.user_data_128 == transfer.user_data_128)
            && (self.user_data_64 == 0 || self.user_data_64 == transfer.user_data_64)
            && (self.user_data_32 == 0 || self.user_data_32 == transfer.user_data_32)
            && (self.code == 0 || self.code == transfer.code)
    }
}

/// Positions `lo..hi` of a timestamp-sorted sequence that fall inside `[min, max]`.
fn timestamp_range(
    len: usize,
    timestamp_at: impl Fn(usize) -> u64,
    min: u64,
    max: u64,
) -> (usize, usize) {
    let lo = partition_point(len, |i| timestamp_at(i) < min);
    let hi = partition_point(len, |i| timestamp_at(i) <= max);
    (lo, hi.max(lo))
}

fn partition_point(len: usize, pred: impl Fn(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (0, len);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if pred(mid) { lo = mid + 1 } else { hi = mid }
    }
    lo
}

impl StateMachine {
    /// The accounts that exist among `ids`, in the order asked.
    pub fn lookup_accounts(&self, ids: &[u128]) -> Vec<Account> {
        ids.iter()
            .filter_map(|id| self.account(*id).copied())
            .collect()
    }

    /// The transfers with these ids that exist, in the order asked. A saga copy exists for
    /// queries once it is confirmed.
    pub fn lookup_transfers(&self, ids: &[u128]) -> Vec<Transfer> {
        ids.iter()
            .filter_map(|&id| {
                let index = self.transfer_slot_index(id)?;
                (!self.hidden_copy(index)).then(|| self.transfers[index as usize])
            })
            .collect()
    }

    /// Where the transfer of each id stands here, one per id in the order asked: what a
    /// caller answered `outcome_pending` by a gateway polls (asking the transfer's home group,
    /// whose copy is the saga's decision). Ask the home: elsewhere a copy may still be open
    /// after the home decided.
    pub fn transfer_outcomes(&self, ids: &[u128]) -> Vec<TransferOutcome> {
        ids.iter()
            .map(|&id| match self.transfer_slot_index(id) {
                Some(index) => {
                    let timestamp = self.transfers[index as usize].timestamp;
                    match self.saga_copies.get(&index).map(|copy| copy.state) {
                        None | Some(SagaState::Confirmed) => TransferOutcome::Created { timestamp },
                        Some(SagaState::Open) => TransferOutcome::Pending,
                        Some(SagaState::Cancelled) => TransferOutcome::Failed,
                    }
                }
                None if self.failed_transfer_ids.contains(&id) => TransferOutcome::Failed,
                None => TransferOutcome::NotFound,
            })
            .collect()
    }

    /// Positions `lo..hi` of an account's entries inside the filter's timestamp range.
    fn entry_range(&self, slot_index: u32, filter: &AccountFilter) -> (usize, usize) {
        let entries = &self.accounts[slot_index as usize].entries;
        timestamp_range(
            entries.len(),
            |i| self.entry_timestamp(entries[i]),
            filter.timestamp_min,
            filter.timestamp_max_or_all(),
        )
    }

    /// Transfers touching `filter.account_id`, by timestamp (newest first if reversed).
    /// An unknown account gives an empty list.
    pub fn get_account_transfers(
        &self,
        filter: &AccountFilter,
    ) -> Result<Vec<Transfer>, QueryError> {
        filter.validate()?;
        let Some(slot_index) = self.account_slot_index(filter.account_id) else {
            return Ok(Vec::new());
        };
        let (lo, hi) = self.entry_range(slot_index, filter);
        let entries = &self.accounts[slot_index as usize].entries[lo..hi];
        let transfers = entries
            .iter()
            .filter(|&&entry| entry & EXPIRY_BIT == 0 && !self.hidden_copy(entry))
            .map(|&entry| &self.transfers[entry as usize]);
        let matching = |t: &&Transfer| filter.matches(filter.account_id, t);
        let out = if filter.flags.contains(AccountFilterFlags::REVERSED) {
            transfers
                .rev()
                .filter(matching)
                .take(filter.limit())
                .copied()
                .collect()
        } else {
            transfers
                .filter(matching)
                .take(filter.limit())
                .copied()
                .collect()
        };
        Ok(out)
    }

    /// Balances of `filter.account_id` after each change, by timestamp (newest first if
    /// reversed). Empty for an unknown account or one without the `history` flag.
    pub fn get_account_balances(
        &self,
        filter: &AccountFilter,
    ) -> Result<Vec<AccountBalance>, QueryError> {
        filter.validate()?;
        let Some(slot_index) = self.account_slot_index(filter.account_id) else {
            return Ok(Vec::new());
        };
        let slot = &self.accounts[slot_index as usize];
        if !slot.account.flags.contains(AccountFlags::HISTORY) {
            return Ok(Vec::new());
        }
        let (lo, hi) = self.entry_range(slot_index, filter);
        let mut out = Vec::new();
        if lo == hi {
            return Ok(out);
        }
        let row = |position: usize, balance: Balance| AccountBalance {
            debits_pending: balance.debits_pending,
            debits_posted: balance.debits_posted,
            credits_pending: balance.credits_pending,
            credits_posted: balance.credits_posted,
            timestamp: self.entry_timestamp(slot.entries[position]),
        };
        let wanted = |position: usize| {
            filter.matches(
                filter.account_id,
                self.entry_transfer(slot.entries[position]),
            )
        };
        if filter.flags.contains(AccountFilterFlags::REVERSED) {
            let mut balance = self.balance_after(slot_index, hi - 1);
            for position in (lo..hi).rev() {
                if wanted(position) {
                    out.push(row(position, balance));
                    if out.len() == filter.limit() {
                        break;
                    }
                }
                if position > lo {
                    balance = self.balance_before(slot_index, position, balance);
                }
            }
        } else {
            let mut balance = self.balance_after(slot_index, lo);
            for position in lo..hi {
                if position > lo {
                    balance = self.balance_step(filter.account_id, slot.entries[position], balance);
                }
                if wanted(position) {
                    out.push(row(position, balance));
                    if out.len() == filter.limit() {
                        break;
                    }
                }
            }
        }
        Ok(out)
    }

    /// The first ledger whose debits and credits (pending or posted) differ, if any. Always
    /// `None` for a correct state: a check for tests, `verify` and replicas.
    pub fn unbalanced_ledger(&self) -> Option<u32> {
        self.ledger_totals()
            .into_iter()
            .find(|(_, [dp, dpo, cp, cpo])| dp != cp || dpo != cpo)
            .map(|(ledger, _)| ledger)
    }

    /// Per ledger: (Σ debits_pending, Σ debits_posted, Σ credits_pending, Σ credits_posted),
    /// in ledger order, summed modulo 2^128. Double entry means debits equal credits on every
    /// ledger, always.
    pub fn ledger_totals(&self) -> std::collections::BTreeMap<u32, [u128; 4]> {
        let mut totals = std::collections::BTreeMap::<u32, [u128; 4]>::new();
        for slot in &self.accounts {
            let a = &slot.account;
            let entry = totals.entry(a.ledger).or_default();
            entry[0] = entry[0].wrapping_add(a.debits_pending);
            entry[1] = entry[1].wrapping_add(a.debits_posted);
            entry[2] = entry[2].wrapping_add(a.credits_pending);
            entry[3] = entry[3].wrapping_add(a.credits_posted);
        }
        totals
    }
}
