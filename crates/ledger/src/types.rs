//! Accounts and transfers: the two objects of the ledger, with their flags.
//!
//! Field names, widths and flag bits follow TigerBeetle's public reference so that people who
//! know that model need to learn nothing new. Flags are kept as raw bits (`from_bits_retain`)
//! so that an unknown bit survives decoding and is rejected by the state machine with
//! `reserved_flag` instead of being silently dropped.

use bitflags::bitflags;

bitflags! {
    /// Flags of an [`Account`].
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
    pub struct AccountFlags: u16 {
        /// The account's creation succeeds or fails together with the next event in the batch.
        const LINKED = 1 << 0;
        /// Debits (pending + posted) may never exceed posted credits.
        const DEBITS_MUST_NOT_EXCEED_CREDITS = 1 << 1;
        /// Credits (pending + posted) may never exceed posted debits.
        const CREDITS_MUST_NOT_EXCEED_DEBITS = 1 << 2;
        /// Keep the balance after every change, for `get_account_balances`.
        const HISTORY = 1 << 3;
        /// The event carries its own (past) timestamp, for importing from another system.
        const IMPORTED = 1 << 4;
        /// No further transfers may touch the account (except voiding its pending ones).
        const CLOSED = 1 << 5;
    }
}

bitflags! {
    /// Flags of a [`Transfer`].
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
    pub struct TransferFlags: u16 {
        /// The transfer succeeds or fails together with the next event in the batch.
        const LINKED = 1 << 0;
        /// Phase one of a two-phase transfer: reserves the amount as pending.
        const PENDING = 1 << 1;
        /// Phase two: posts (all or part of) the pending transfer named by `pending_id`.
        const POST_PENDING_TRANSFER = 1 << 2;
        /// Phase two: voids the pending transfer named by `pending_id`.
        const VOID_PENDING_TRANSFER = 1 << 3;
        /// Move at most `amount`, less if the debit account would otherwise exceed its credits.
        const BALANCING_DEBIT = 1 << 4;
        /// Move at most `amount`, less if the credit account would otherwise exceed its debits.
        const BALANCING_CREDIT = 1 << 5;
        /// Close the debit account (pending: voiding the transfer reopens it).
        const CLOSING_DEBIT = 1 << 6;
        /// Close the credit account (pending: voiding the transfer reopens it).
        const CLOSING_CREDIT = 1 << 7;
        /// The event carries its own (past) timestamp, for importing from another system.
        const IMPORTED = 1 << 8;
    }
}

/// Whether a pending transfer is still open, and if not, how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum TransferPendingStatus {
    /// Not a pending transfer.
    None = 0,
    Pending = 1,
    Posted = 2,
    Voided = 3,
    Expired = 4,
}

impl TransferPendingStatus {
    pub(crate) fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            0 => Self::None,
            1 => Self::Pending,
            2 => Self::Posted,
            3 => Self::Voided,
            4 => Self::Expired,
            _ => return None,
        })
    }
}

/// An account: balances in one asset (`ledger`), changed only by transfers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Account {
    pub id: u128,
    pub debits_pending: u128,
    pub debits_posted: u128,
    pub credits_pending: u128,
    pub credits_posted: u128,
    pub user_data_128: u128,
    pub user_data_64: u64,
    pub user_data_32: u32,
    pub ledger: u32,
    pub code: u16,
    pub flags: AccountFlags,
    /// Assigned by the ledger when the account is created (nanoseconds), unless imported.
    pub timestamp: u64,
}

impl Account {
    /// Would debiting `amount` more break `debits_must_not_exceed_credits`?
    pub(crate) fn debits_exceed_credits(&self, amount: u128) -> bool {
        self.flags
            .contains(AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS)
            && self.debits_pending + self.debits_posted + amount > self.credits_posted
    }

    /// Would crediting `amount` more break `credits_must_not_exceed_debits`?
    pub(crate) fn credits_exceed_debits(&self, amount: u128) -> bool {
        self.flags
            .contains(AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS)
            && self.credits_pending + self.credits_posted + amount > self.debits_posted
    }
}

/// A transfer: moves `amount` from the debit account to the credit account of one ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Transfer {
    pub id: u128,
    pub debit_account_id: u128,
    pub credit_account_id: u128,
    pub amount: u128,
    /// For post/void: the id of the pending transfer this one completes.
    pub pending_id: u128,
    pub user_data_128: u128,
    pub user_data_64: u64,
    pub user_data_32: u32,
    /// Seconds after which a pending transfer expires (0: never).
    pub timeout: u32,
    pub ledger: u32,
    pub code: u16,
    pub flags: TransferFlags,
    /// Assigned by the ledger when the transfer is created (nanoseconds), unless imported.
    pub timestamp: u64,
}

impl Transfer {
    /// The timeout in nanoseconds.
    pub(crate) fn timeout_ns(&self) -> u64 {
        u64::from(self.timeout) * 1_000_000_000
    }
}
