//! The ledger's declared capacity: how many accounts and transfers it may hold, what one of
//! each costs in memory, and the check a server runs before it admits a batch.
//!
//! Owns the arithmetic only. It must not look at the machine (memory, files, flags): the node
//! derives a capacity from the memory it finds and hands the value in, so the ledger stays a
//! pure function of its state and its batches.
//!
//! Two capacities are in play. The *admission* capacity is the operator's (`--accounts-max`,
//! `--transfers-max`, by default derived from memory); the leader checks it before proposing,
//! so it may differ between machines. The capacity [`StateMachine::apply`] enforces
//! ([`StateMachine::capacity`], by default [`Capacity::FORMAT_MAX`]) changes results, so it
//! must be the same on every replica of a group.
//!
//! [`StateMachine::apply`]: crate::StateMachine::apply
//! [`StateMachine::capacity`]: crate::StateMachine::capacity

use std::mem::size_of;

use crate::history::{BALANCE_CHECKPOINT_EVERY, Balance};
use crate::state::{AccountSlot, IndexSlot};
use crate::types::{Transfer, TransferPendingStatus};

/// How many accounts and transfers a ledger may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Capacity {
    pub accounts_max: u64,
    /// Transfers plus transfer ids burnt by transient failures (each of which the ledger
    /// remembers, so it costs memory too).
    pub transfers_max: u64,
}

/// How much of a capacity is taken: objects held, or objects a batch could add.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Occupancy {
    pub accounts: u64,
    /// Transfers plus burnt transfer ids.
    pub transfers: u64,
}

impl Occupancy {
    /// Field by field sum (saturating: an absurd sum is simply over any capacity).
    pub fn plus(self, other: Occupancy) -> Occupancy {
        Occupancy {
            accounts: self.accounts.saturating_add(other.accounts),
            transfers: self.transfers.saturating_add(other.transfers),
        }
    }

    /// Field by field difference (saturating at zero).
    pub fn minus(self, other: Occupancy) -> Occupancy {
        Occupancy {
            accounts: self.accounts.saturating_sub(other.accounts),
            transfers: self.transfers.saturating_sub(other.transfers),
        }
    }
}

/// A batch that could take the ledger past its capacity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "ledger capacity reached: {field} = {max} ({taken} taken or on their way, this request \
     adds up to {requested}); nothing was applied. Sending it again will not help: the \
     operator must restart every node with a larger --{flag} (and the memory it needs)",
    flag = self.field.replace('_', "-")
)]
pub struct CapacityError {
    /// The limit that would be passed: `accounts_max` or `transfers_max`.
    pub field: &'static str,
    pub max: u64,
    /// Objects held plus those admitted but not yet applied.
    pub taken: u64,
    /// Objects the refused request could add.
    pub requested: u64,
}

/// A `Vec` doubles as it grows, so its capacity is at most twice its length.
const VEC_GROWTH: usize = 2;
/// A hash table keeps at most 7/8 of its buckets full and doubles as it grows, so it has at
/// most `2 × 8/7` buckets per entry; each bucket is the slot plus one control byte.
const fn table_entry_bytes(slot_bytes: usize) -> usize {
    (slot_bytes + 1) * 16 / 7 + 1
}
/// A `BTreeSet` entry with its share of a node (nodes hold 5 to 11 keys plus a header).
const fn btree_entry_bytes(key_bytes: usize) -> usize {
    3 * key_bytes
}

// A burnt transfer id (remembered in a hash set) costs less than a transfer, so counting it as
// one keeps the estimate an upper bound.
const _: () = assert!(table_entry_bytes(size_of::<u128>()) as u64 <= Capacity::TRANSFER_BYTES);

impl Capacity {
    /// The most the ledger's in-memory format can address (`limits::LEDGER_ACCOUNTS_MAX`,
    /// `limits::LEDGER_TRANSFERS_MAX`): what `apply` enforces unless told otherwise.
    pub const FORMAT_MAX: Capacity = Capacity {
        accounts_max: limits::LEDGER_ACCOUNTS_MAX,
        transfers_max: limits::LEDGER_TRANSFERS_MAX,
    };

    /// Worst-case memory of one account: its slot (the account plus the heads of its entry
    /// and checkpoint lists) in a `Vec` that may be twice as long as needed, plus its entry
    /// in the id index. What the account's transfers add to its lists is counted per transfer.
    pub const ACCOUNT_BYTES: u64 =
        (VEC_GROWTH * size_of::<AccountSlot>() + table_entry_bytes(size_of::<IndexSlot>())) as u64;

    /// Worst-case memory of one transfer: the transfer and its pending status (in `Vec`s), its
    /// entry in the id index, one `u32` entry in each account's list, its share of a balance
    /// checkpoint when the accounts keep history (one per `BALANCE_CHECKPOINT_EVERY` entries),
    /// and, when it is pending with a timeout, its place in the expiry index and then its
    /// expiry record with the two entries that point at it.
    pub const TRANSFER_BYTES: u64 =
        (VEC_GROWTH * (size_of::<Transfer>() + size_of::<TransferPendingStatus>())
            + table_entry_bytes(size_of::<IndexSlot>())
            + VEC_GROWTH * 2 * size_of::<u32>()
            + VEC_GROWTH * 2 * size_of::<Balance>().div_ceil(BALANCE_CHECKPOINT_EVERY)
            + btree_entry_bytes(size_of::<(u64, u32)>())
            + VEC_GROWTH * (size_of::<(u64, u32)>() + 2 * size_of::<u32>())) as u64;

    /// The capacity that fits in `memory_bytes`: `accounts_percent` of it for accounts, the
    /// rest for transfers, at the worst-case sizes above; never more than [`Self::FORMAT_MAX`].
    pub fn for_memory(memory_bytes: u64, accounts_percent: u64) -> Capacity {
        assert!(accounts_percent <= 100);
        let accounts_bytes = memory_bytes / 100 * accounts_percent;
        let transfers_bytes = memory_bytes - accounts_bytes;
        Capacity {
            accounts_max: (accounts_bytes / Self::ACCOUNT_BYTES).min(Self::FORMAT_MAX.accounts_max),
            transfers_max: (transfers_bytes / Self::TRANSFER_BYTES)
                .min(Self::FORMAT_MAX.transfers_max),
        }
    }

    /// Worst-case memory of a ledger filled to this capacity.
    pub fn memory_bytes(&self) -> u64 {
        self.accounts_max
            .saturating_mul(Self::ACCOUNT_BYTES)
            .saturating_add(self.transfers_max.saturating_mul(Self::TRANSFER_BYTES))
    }

    /// Whether a request that could add `requested` objects fits beside the `taken` ones
    /// (held, plus admitted and not yet applied); the error names the limit it would pass.
    pub fn admit(&self, taken: Occupancy, requested: Occupancy) -> Result<(), CapacityError> {
        let check = |field, max: u64, taken: u64, requested: u64| {
            if taken.saturating_add(requested) > max {
                Err(CapacityError {
                    field,
                    max,
                    taken,
                    requested,
                })
            } else {
                Ok(())
            }
        };
        check(
            "accounts_max",
            self.accounts_max,
            taken.accounts,
            requested.accounts,
        )?;
        check(
            "transfers_max",
            self.transfers_max,
            taken.transfers,
            requested.transfers,
        )
    }
}

impl Default for Capacity {
    fn default() -> Self {
        Capacity::FORMAT_MAX
    }
}
