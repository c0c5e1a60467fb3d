//! Fixed 128-byte little-endian layouts of accounts and transfers.
//!
//! These are the bytes that go into journal records and snapshots, so they are part of the
//! on-disk format: change them only together with a format version bump. The layout is the
//! one TigerBeetle uses on its wire, which keeps a future binary-compatible client cheap.

use crate::types::{Account, AccountFlags, Transfer, TransferFlags};

/// Size of one encoded [`Account`] (`limits::EVENT_BYTES`).
pub const ACCOUNT_SIZE: usize = limits::EVENT_BYTES;
/// Size of one encoded [`Transfer`] (`limits::EVENT_BYTES`).
pub const TRANSFER_SIZE: usize = limits::EVENT_BYTES;

struct Writer<'a> {
    out: &'a mut [u8],
    at: usize,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) {
        self.out[self.at..self.at + bytes.len()].copy_from_slice(bytes);
        self.at += bytes.len();
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let value: [u8; N] = self.bytes[self.at..self.at + N]
            .try_into()
            .expect("length checked");
        self.at += N;
        value
    }
    fn u128(&mut self) -> u128 {
        u128::from_le_bytes(self.take())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.take())
    }
}

/// Writes `account` into the first [`ACCOUNT_SIZE`] bytes of `out`.
pub fn encode_account(account: &Account, out: &mut [u8]) {
    assert!(out.len() >= ACCOUNT_SIZE);
    let mut w = Writer { out, at: 0 };
    w.put(&account.id.to_le_bytes());
    w.put(&account.debits_pending.to_le_bytes());
    w.put(&account.debits_posted.to_le_bytes());
    w.put(&account.credits_pending.to_le_bytes());
    w.put(&account.credits_posted.to_le_bytes());
    w.put(&account.user_data_128.to_le_bytes());
    w.put(&account.user_data_64.to_le_bytes());
    w.put(&account.user_data_32.to_le_bytes());
    w.put(&0u32.to_le_bytes()); // reserved
    w.put(&account.ledger.to_le_bytes());
    w.put(&account.code.to_le_bytes());
    w.put(&account.flags.bits().to_le_bytes());
    w.put(&account.timestamp.to_le_bytes());
    debug_assert_eq!(w.at, ACCOUNT_SIZE);
}

/// Reads an account from the first [`ACCOUNT_SIZE`] bytes of `bytes`.
pub fn decode_account(bytes: &[u8]) -> Account {
    assert!(bytes.len() >= ACCOUNT_SIZE);
    let mut r = Reader { bytes, at: 0 };
    let id = r.u128();
    let debits_pending = r.u128();
    let debits_posted = r.u128();
    let credits_pending = r.u128();
    let credits_posted = r.u128();
    let user_data_128 = r.u128();
    let user_data_64 = r.u64();
    let user_data_32 = r.u32();
    let _reserved = r.u32();
    let ledger = r.u32();
    let code = r.u16();
    let flags = AccountFlags::from_bits_retain(r.u16());
    let timestamp = r.u64();
    Account {
        id,
        debits_pending,
        debits_posted,
        credits_pending,
        credits_posted,
        user_data_128,
        user_data_64,
        user_data_32,
        ledger,
        code,
        flags,
        timestamp,
    }
}

/// Writes `transfer` into the first [`TRANSFER_SIZE`] bytes of `out`.
pub fn encode_transfer(transfer: &Transfer, out: &mut [u8]) {
    assert!(out.len() >= TRANSFER_SIZE);
    let mut w = Writer { out, at: 0 };
    w.put(&transfer.id.to_le_bytes());
    w.put(&transfer.debit_account_id.to_le_bytes());
    w.put(&transfer.credit_account_id.to_le_bytes());
    w.put(&transfer.amount.to_le_bytes());
    w.put(&transfer.pending_id.to_le_bytes());
    w.put(&transfer.user_data_128.to_le_bytes());
    w.put(&transfer.user_data_64.to_le_bytes());
    w.put(&transfer.user_data_32.to_le_bytes());
    w.put(&transfer.timeout.to_le_bytes());
    w.put(&transfer.ledger.to_le_bytes());
    w.put(&transfer.code.to_le_bytes());
    w.put(&transfer.flags.bits().to_le_bytes());
    w.put(&transfer.timestamp.to_le_bytes());
    debug_assert_eq!(w.at, TRANSFER_SIZE);
}

/// Reads a transfer from the first [`TRANSFER_SIZE`] bytes of `bytes`.
pub fn decode_transfer(bytes: &[u8]) -> Transfer {
    assert!(bytes.len() >= TRANSFER_SIZE);
    let mut r = Reader { bytes, at: 0 };
    Transfer {
        id: r.u128(),
        debit_account_id: r.u128(),
        credit_account_id: r.u128(),
        amount: r.u128(),
        pending_id: r.u128(),
        user_data_128: r.u128(),
        user_data_64: r.u64(),
        user_data_32: r.u32(),
        timeout: r.u32(),
        ledger: r.u32(),
        code: r.u16(),
        flags: TransferFlags::from_bits_retain(r.u16()),
        timestamp: r.u64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_and_transfer_survive_an_encode_decode_round_trip() {
        let account = Account {
            id: u128::MAX - 7,
            debits_pending: 1,
            debits_posted: 2,
            credits_pending: 3,
            credits_posted: 4,
            user_data_128: 5,
            user_data_64: 6,
            user_data_32: 7,
            ledger: 8,
            code: 9,
            flags: AccountFlags::from_bits_retain(0x8001),
            timestamp: 10,
        };
        let mut bytes = [0u8; ACCOUNT_SIZE];
        encode_account(&account, &mut bytes);
        assert_eq!(decode_account(&bytes), account);

        let transfer = Transfer {
            id: 1 << 100,
            debit_account_id: 2,
            credit_account_id: 3,
            amount: u128::MAX,
            pending_id: 5,
            user_data_128: 6,
            user_data_64: 7,
            user_data_32: 8,
            timeout: 9,
            ledger: 10,
            code: 11,
            flags: TransferFlags::from_bits_retain(0xfff0),
            timestamp: 12,
        };
        let mut bytes = [0u8; TRANSFER_SIZE];
        encode_transfer(&transfer, &mut bytes);
        assert_eq!(decode_transfer(&bytes), transfer);
    }
}
