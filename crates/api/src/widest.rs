//! Accounts and transfers with every field at its widest, for the tests that check an encoded
//! event against its limit (`limits::GRPC_EVENT_BYTES_MAX`, `limits::JSON_EVENT_BYTES_MAX`,
//! and the change events' `EVENT_JSON_BYTES_MAX`, `EVENT_PROTO_BYTES_MAX`).

use ledger::{Account, AccountFlags, Transfer, TransferFlags};

pub(crate) fn widest_transfer() -> Transfer {
    Transfer {
        id: u128::MAX,
        debit_account_id: u128::MAX,
        credit_account_id: u128::MAX,
        amount: u128::MAX,
        pending_id: u128::MAX,
        user_data_128: u128::MAX,
        user_data_64: u64::MAX,
        user_data_32: u32::MAX,
        timeout: u32::MAX,
        ledger: u32::MAX,
        code: u16::MAX,
        flags: TransferFlags::all(),
        timestamp: u64::MAX,
    }
}

pub(crate) fn widest_account() -> Account {
    Account {
        id: u128::MAX,
        debits_pending: u128::MAX,
        debits_posted: u128::MAX,
        credits_pending: u128::MAX,
        credits_posted: u128::MAX,
        user_data_128: u128::MAX,
        user_data_64: u64::MAX,
        user_data_32: u32::MAX,
        ledger: u32::MAX,
        code: u16::MAX,
        flags: AccountFlags::all(),
        timestamp: u64::MAX,
    }
}
