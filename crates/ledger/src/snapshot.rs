//! The canonical snapshot of the whole ledger state, and its digest.
//!
//! A snapshot is written in one fixed order with fixed-width little-endian fields, so two
//! states are equal exactly when their snapshots are byte-identical; the SHA-256 of those bytes
//! is the state digest that checkpoints, replay and replicas compare. Only what cannot be
//! derived is stored: hash indexes, per-account transfer lists and the expiry index are rebuilt
//! on load. Reading comes in two strengths over one parser: `read_snapshot` builds the state
//! and checks it whole; `check_snapshot_structure` checks what the bytes alone show and keeps
//! nothing (so a snapshot can be checked before the state it replaces is let go). The snapshot
//! code writes to any `io::Write` and reads from any `io::Read`; opening files is the caller's
//! business.

use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

use crate::codec::{
    ACCOUNT_SIZE, TRANSFER_SIZE, decode_account, decode_transfer, encode_account, encode_transfer,
};
use crate::history::{Balance, CONFIRM_BIT, EXPIRY_BIT};
use crate::saga::{RemoteSides, SagaCopy, SagaState};
use crate::state::{AccountSlot, IndexSlot, StateMachine, expand};
use crate::types::{Account, Transfer, TransferFlags, TransferPendingStatus};

const SNAPSHOT_MAGIC: [u8; 8] = *b"FCLEDGR1";
const SNAPSHOT_FORMAT_VERSION: u32 = 3;
/// The oldest format this build still reads: version 2 is version 3 without saga copies.
const SNAPSHOT_FORMAT_VERSION_OLDEST: u32 = 2;
/// Snapshots are hashed and moved in chunks of this size.
const IO_CHUNK_BYTES: usize = limits::IO_BUFFER_BYTES;

/// SHA-256 of a state's canonical snapshot.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct StateDigest(pub [u8; 32]);

impl std::fmt::Display for StateDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for StateDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StateDigest({self})")
    }
}

/// Why a snapshot could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("reading the snapshot failed: {0}")]
    Io(#[from] io::Error),
    #[error("not a ledger snapshot (bad magic bytes)")]
    Magic,
    #[error(
        "snapshot format version {0} is not supported (this build reads version {SNAPSHOT_FORMAT_VERSION})"
    )]
    Version(u32),
    #[error("snapshot is inconsistent: {0}")]
    Inconsistent(&'static str),
}

struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.hasher.update(&buf[..written]);
        Ok(written)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A canonical snapshot being written a step at a time (see [`StateMachine::begin_snapshot`]).
pub struct SnapshotWriter<W: Write> {
    w: io::BufWriter<HashingWriter<W>>,
    /// Every transfer's pending status when the snapshot began (later batches may post, void
    /// or expire them); also how many transfers the snapshot holds.
    statuses: Vec<TransferPendingStatus>,
    expiry_events_count: usize,
    /// The failed ids when the snapshot began, sorted.
    failed: Vec<u128>,
    /// The saga copies when the snapshot began (later batches may settle them), by index.
    saga_copies: Vec<(u32, SagaCopy)>,
    next_transfer: usize,
    /// The next expiry event, once their count is written.
    next_expiry: Option<usize>,
    digest: Option<StateDigest>,
}

impl<W: Write> SnapshotWriter<W> {
    /// Writes at most `SNAPSHOT_STEP_RECORDS_MAX` more records from `state`, which must be the
    /// state the snapshot began from, changed since only by applied batches (not replaced by
    /// another). Returns the snapshot's digest once it is complete (and on every call after).
    pub fn step(&mut self, state: &StateMachine) -> io::Result<Option<StateDigest>> {
        if self.digest.is_some() {
            return Ok(self.digest);
        }
        assert!(
            state.transfers.len() >= self.statuses.len()
                && state.expiry_events.len() >= self.expiry_events_count,
            "a snapshot continued on a state that is not the one it began from"
        );
        let mut budget = limits::SNAPSHOT_STEP_RECORDS_MAX;
        let mut record = [0u8; RECORD_BUFFER_SIZE];
        while budget > 0 && self.next_transfer < self.statuses.len() {
            let index = self.next_transfer;
            encode_transfer(&state.transfers[index], &mut record);
            record[TRANSFER_SIZE] = self.statuses[index] as u8;
            self.w.write_all(&record[..TRANSFER_SIZE + 1])?;
            self.next_transfer += 1;
            budget -= 1;
        }
        if self.next_transfer < self.statuses.len() {
            return Ok(None);
        }
        let next_expiry = match self.next_expiry {
            Some(next) => next,
            None => {
                self.w
                    .write_all(&(self.expiry_events_count as u64).to_le_bytes())?;
                0
            }
        };
        let end = (next_expiry + budget).min(self.expiry_events_count);
        for (timestamp, index) in &state.expiry_events[next_expiry..end] {
            self.w.write_all(&timestamp.to_le_bytes())?;
            self.w.write_all(&index.to_le_bytes())?;
        }
        self.next_expiry = Some(end);
        if end < self.expiry_events_count {
            return Ok(None);
        }
        self.w
            .write_all(&(self.failed.len() as u64).to_le_bytes())?;
        for id in &self.failed {
            self.w.write_all(&id.to_le_bytes())?;
        }
        self.w
            .write_all(&(self.saga_copies.len() as u64).to_le_bytes())?;
        for (index, copy) in &self.saga_copies {
            self.w.write_all(&index.to_le_bytes())?;
            self.w.write_all(&[copy.remote.bits(), copy.state as u8])?;
        }
        self.w.flush()?;
        let digest = StateDigest(self.w.get_ref().hasher.clone().finalize().into());
        self.digest = Some(digest);
        Ok(self.digest)
    }

    /// The output, once every byte written reached it.
    pub fn into_inner(self) -> io::Result<W> {
        Ok(self.w.into_inner().map_err(|e| e.into_error())?.inner)
    }
}

impl StateDigest {
    /// The digest of snapshot bytes read from `input`, without decoding them (for checking a
    /// stored checkpoint cheaply).
    pub fn of_snapshot_bytes<R: Read + ?Sized>(input: &mut R) -> io::Result<StateDigest> {
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; IO_CHUNK_BYTES];
        loop {
            let n = input.read(&mut buffer)?;
            if n == 0 {
                return Ok(StateDigest(hasher.finalize().into()));
            }
            hasher.update(&buffer[..n]);
        }
    }
}

/// Size of one expiry event in a snapshot (timestamp, transfer index).
const EXPIRY_EVENT_SIZE: usize = 8 + 4;
/// Size of one failed transfer id in a snapshot.
const FAILED_ID_SIZE: usize = 16;
/// Size of one saga copy in a snapshot (transfer index, remote sides, state).
const SAGA_COPY_SIZE: usize = 4 + 1 + 1;

/// Room for one encoded account or transfer plus its status byte.
const RECORD_BUFFER_SIZE: usize = if ACCOUNT_SIZE > TRANSFER_SIZE {
    ACCOUNT_SIZE
} else {
    TRANSFER_SIZE
} + 1;

impl StateMachine {
    /// Writes the canonical snapshot to `out` and returns its digest.
    pub fn write_snapshot<W: Write + ?Sized>(&self, out: &mut W) -> io::Result<StateDigest> {
        let mut writer = self.begin_snapshot(out)?;
        loop {
            if let Some(digest) = writer.step(self)? {
                return Ok(digest);
            }
        }
    }

    /// Starts writing the canonical snapshot of the state as it is now to `out`, to be
    /// continued by [`SnapshotWriter::step`] while batches go on being applied in between.
    ///
    /// Writes the fixed fields and the accounts now, and keeps what a later batch could change
    /// about older records (pending statuses, failed ids); transfers and expiry events are only
    /// ever appended, so the steps read them later from the moved-on state. Costs one byte per
    /// transfer and 16 per failed id besides the accounts.
    pub fn begin_snapshot<W: Write>(&self, out: W) -> io::Result<SnapshotWriter<W>> {
        // Buffered in front of the hasher, so that hashing and writing happen in large chunks.
        let mut w = io::BufWriter::with_capacity(
            IO_CHUNK_BYTES,
            HashingWriter {
                inner: out,
                hasher: Sha256::new(),
            },
        );
        w.write_all(&SNAPSHOT_MAGIC)?;
        w.write_all(&SNAPSHOT_FORMAT_VERSION.to_le_bytes())?;
        w.write_all(&self.timestamp_last.to_le_bytes())?;
        w.write_all(&self.expiry_timestamp_last.to_le_bytes())?;
        w.write_all(&self.batches_applied.to_le_bytes())?;

        let mut record = [0u8; RECORD_BUFFER_SIZE];
        w.write_all(&(self.accounts.len() as u64).to_le_bytes())?;
        for slot in &self.accounts {
            encode_account(&slot.account, &mut record);
            w.write_all(&record[..ACCOUNT_SIZE])?;
        }
        w.write_all(&(self.transfers.len() as u64).to_le_bytes())?;
        // Sorted, so that the hash set's iteration order cannot reach the bytes.
        let mut failed: Vec<u128> = self.failed_transfer_ids.iter().copied().collect();
        failed.sort_unstable();
        Ok(SnapshotWriter {
            w,
            statuses: self.transfer_status.clone(),
            expiry_events_count: self.expiry_events.len(),
            failed,
            saga_copies: self.saga_copies.iter().map(|(&i, &c)| (i, c)).collect(),
            next_transfer: 0,
            next_expiry: None,
            digest: None,
        })
    }

    /// The digest of the current state (the snapshot's bytes are hashed, not kept).
    pub fn digest(&self) -> StateDigest {
        self.write_snapshot(&mut io::sink())
            .expect("writing to a sink cannot fail")
    }

    /// Reads a snapshot of exactly `len_bytes` bytes written by [`StateMachine::write_snapshot`]
    /// and rebuilds everything derived (indexes, per-account entries, balance history),
    /// checking that the rebuilt balances equal the stored ones. Returns the state and the
    /// digest of the bytes read.
    ///
    /// Every count in the snapshot is checked against the bytes that remain of `len_bytes`
    /// before anything is allocated for it, so a damaged or forged snapshot cannot ask for more
    /// memory than its own length justifies. Bytes of `input` past `len_bytes` are not read.
    pub fn read_snapshot<R: Read + ?Sized>(
        input: &mut R,
        len_bytes: u64,
    ) -> Result<(StateMachine, StateDigest), SnapshotError> {
        let mut building = Building::default();
        let digest = parse_snapshot(input, len_bytes, &mut building)?;
        let Building {
            state,
            stored_accounts,
        } = building;
        let mut state = state.ok_or(SnapshotError::Inconsistent("no transfers section"))?;
        state.rebuild_entries()?;
        for (slot, stored) in state.accounts.iter().zip(&stored_accounts) {
            if slot.account != *stored {
                return Err(SnapshotError::Inconsistent(
                    "an account's balances disagree with its transfers",
                ));
            }
        }
        Ok((state, digest))
    }

    /// Reads a snapshot of exactly `len_bytes` bytes and checks its structure without building
    /// a state: magic and version, every count against the bytes left, pending statuses,
    /// expiry events naming existing transfers, nothing after the end. Its memory is the read
    /// buffer's, whatever the snapshot's size, so a snapshot can be checked while the state it
    /// is to replace is still held. Returns the digest of the bytes. What only the built state
    /// shows (ids that appear twice, transfers naming unknown accounts, balances that disagree
    /// with the transfers) is left to [`StateMachine::read_snapshot`].
    pub fn check_snapshot_structure<R: Read + ?Sized>(
        input: &mut R,
        len_bytes: u64,
    ) -> Result<StateDigest, SnapshotError> {
        parse_snapshot(input, len_bytes, &mut StructureOnly)
    }

    /// Builds the id index of all transfers, a chunk at a time: the chunk's slots are probed
    /// first in a tight loop (the CPU overlaps those cache misses), then filled.
    fn index_transfers(&mut self) -> Result<(), SnapshotError> {
        const CHUNK: usize = 4096;
        let mut hashes = Vec::with_capacity(CHUNK);
        for start in (0..self.transfers.len()).step_by(CHUNK) {
            let end = (start + CHUNK).min(self.transfers.len());
            hashes.clear();
            hashes.extend(self.transfers[start..end].iter().map(|t| self.hash32(t.id)));
            for &hash32 in &hashes {
                std::hint::black_box(
                    self.transfer_index
                        .find(expand(hash32), |s| s.hash32 == hash32),
                );
            }
            for (offset, &hash32) in hashes.iter().enumerate() {
                let index = (start + offset) as u32;
                let id = self.transfers[index as usize].id;
                let transfers = &self.transfers;
                match self.transfer_index.entry(
                    expand(hash32),
                    |s| s.hash32 == hash32 && transfers[s.index as usize].id == id,
                    |s| expand(s.hash32),
                ) {
                    hashbrown::hash_table::Entry::Occupied(_) => {
                        return Err(SnapshotError::Inconsistent("a transfer id appears twice"));
                    }
                    hashbrown::hash_table::Entry::Vacant(slot) => {
                        slot.insert(IndexSlot { index, hash32 });
                    }
                }
            }
        }
        Ok(())
    }

    /// Replays transfers and expiries in timestamp order into per-account entries, balances and
    /// balance checkpoints.
    fn rebuild_entries(&mut self) -> Result<(), SnapshotError> {
        let (mut t, mut e) = (0usize, 0usize);
        while t < self.transfers.len() || e < self.expiry_events.len() {
            let take_transfer = match (self.transfers.get(t), self.expiry_events.get(e)) {
                (Some(transfer), Some(&(expiry_timestamp, _))) => {
                    transfer.timestamp < expiry_timestamp
                }
                (Some(_), None) => true,
                _ => false,
            };
            let entry = if take_transfer {
                t += 1;
                (t - 1) as u32
            } else {
                e += 1;
                (e - 1) as u32 | EXPIRY_BIT
            };
            let transfer = *self.entry_transfer(entry);
            let index = self.entry_transfer_index(entry);
            let local = self.local_sides(&transfer, index);
            for (debit, account_id) in [(true, local[0]), (false, local[1])] {
                let Some(account_id) = account_id else {
                    // A saga copy's remote side: booked against the clearing balance.
                    let (add, sub) = self.entry_side_delta(entry, debit);
                    let clearing = self.clearing.entry(transfer.ledger).or_default();
                    *clearing =
                        clearing
                            .checked_step(add, sub)
                            .ok_or(SnapshotError::Inconsistent(
                                "a saga copy releases more than was booked",
                            ))?;
                    continue;
                };
                let slot_index =
                    self.account_slot_index(account_id)
                        .ok_or(SnapshotError::Inconsistent(
                            "a transfer names an unknown account",
                        ))?;
                let before = Balance::of(&self.accounts[slot_index as usize].account);
                let after = self.balance_step(account_id, entry, before);
                let account = &mut self.accounts[slot_index as usize].account;
                account.debits_pending = after.debits_pending;
                account.debits_posted = after.debits_posted;
                account.credits_pending = after.credits_pending;
                account.credits_posted = after.credits_posted;
                self.record_entry(slot_index, entry);
            }
        }
        Ok(())
    }
}

/// The fixed fields at the start of a snapshot.
struct FixedFields {
    timestamp_last: u64,
    expiry_timestamp_last: u64,
    batches_applied: u64,
}

/// Where [`parse_snapshot`] puts a snapshot's records, in the order they come. Every method
/// does nothing unless the sink keeps what it is given.
trait RecordSink {
    fn accounts(&mut self, _count: usize) {}
    fn account(&mut self, _account: Account) {}
    fn transfers(&mut self, _fixed: FixedFields, _count: usize) -> Result<(), SnapshotError> {
        Ok(())
    }
    fn transfer(&mut self, _index: u32, _transfer: Transfer, _status: TransferPendingStatus) {}
    fn transfers_done(&mut self) -> Result<(), SnapshotError> {
        Ok(())
    }
    fn expiry_events(&mut self, _count: usize) {}
    fn expiry_event(&mut self, _timestamp: u64, _index: u32) {}
    fn failed_id(&mut self, _id: u128) {}
    fn saga_copy(&mut self, _index: u32, _copy: SagaCopy) {}
}

/// Keeps nothing: the structure check.
struct StructureOnly;

impl RecordSink for StructureOnly {}

/// Builds the state from the records (derived structures are rebuilt afterwards).
#[derive(Default)]
struct Building {
    /// The accounts as stored, balances included (the rebuilt ones must equal them).
    stored_accounts: Vec<Account>,
    /// Made once the transfers' count is known, with room for them.
    state: Option<StateMachine>,
}

impl Building {
    fn state(&mut self) -> &mut StateMachine {
        self.state
            .as_mut()
            .expect("parse_snapshot announces the transfers before any follows")
    }
}

impl RecordSink for Building {
    fn accounts(&mut self, count: usize) {
        self.stored_accounts.reserve_exact(count);
    }

    fn account(&mut self, account: Account) {
        self.stored_accounts.push(account);
    }

    fn transfers(&mut self, fixed: FixedFields, count: usize) -> Result<(), SnapshotError> {
        let mut state = StateMachine::with_capacity(self.stored_accounts.len(), count);
        state.timestamp_last = fixed.timestamp_last;
        state.expiry_timestamp_last = fixed.expiry_timestamp_last;
        state.batches_applied = fixed.batches_applied;
        for (index, account) in self.stored_accounts.iter().enumerate() {
            if state.account_slot_index(account.id).is_some() {
                return Err(SnapshotError::Inconsistent("an account id appears twice"));
            }
            let hash32 = state.hash32(account.id);
            // Balances start at zero and are rebuilt from the entries below.
            let opening = Account {
                debits_pending: 0,
                debits_posted: 0,
                credits_pending: 0,
                credits_posted: 0,
                ..*account
            };
            state.accounts.push(AccountSlot {
                account: opening,
                entries: Vec::new(),
                balance_checkpoints: Vec::new(),
            });
            state.account_index.insert_unique(
                expand(hash32),
                IndexSlot {
                    index: index as u32,
                    hash32,
                },
                |s| expand(s.hash32),
            );
        }
        self.state = Some(state);
        Ok(())
    }

    fn transfer(&mut self, index: u32, transfer: Transfer, status: TransferPendingStatus) {
        let state = self.state();
        if status == TransferPendingStatus::Pending
            && transfer.timeout > 0
            && transfer.flags.contains(TransferFlags::PENDING)
        {
            state
                .expiries
                .insert((transfer.timestamp + transfer.timeout_ns(), index));
        }
        state.transfers.push(transfer);
        state.transfer_status.push(status);
    }

    fn transfers_done(&mut self) -> Result<(), SnapshotError> {
        self.state().index_transfers()
    }

    fn expiry_events(&mut self, count: usize) {
        self.state().expiry_events.reserve_exact(count);
    }

    fn expiry_event(&mut self, timestamp: u64, index: u32) {
        self.state().expiry_events.push((timestamp, index));
    }

    fn failed_id(&mut self, id: u128) {
        self.state().failed_transfer_ids.insert(id);
    }

    fn saga_copy(&mut self, index: u32, copy: SagaCopy) {
        let state = self.state();
        state.saga_copies.insert(index, copy);
        if copy.state == SagaState::Open {
            state.saga_open.insert(index);
        }
    }
}

/// Reads a snapshot of exactly `len_bytes` bytes from `input` into `sink`, checking its
/// structure (see [`StateMachine::check_snapshot_structure`]); returns the digest of the bytes.
fn parse_snapshot<R: Read + ?Sized, S: RecordSink>(
    input: &mut R,
    len_bytes: u64,
    sink: &mut S,
) -> Result<StateDigest, SnapshotError> {
    let mut r = SnapshotReader {
        buffered: io::BufReader::with_capacity(
            IO_CHUNK_BYTES,
            HashingReader {
                inner: Read::take(input, len_bytes),
                hasher: Sha256::new(),
            },
        ),
        remaining_bytes: len_bytes,
    };
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)?;
    if magic != SNAPSHOT_MAGIC {
        return Err(SnapshotError::Magic);
    }
    let version = r.u32()?;
    if !(SNAPSHOT_FORMAT_VERSION_OLDEST..=SNAPSHOT_FORMAT_VERSION).contains(&version) {
        return Err(SnapshotError::Version(version));
    }
    let fixed = FixedFields {
        timestamp_last: r.u64()?,
        expiry_timestamp_last: r.u64()?,
        batches_applied: r.u64()?,
    };

    let accounts_count = r.count(ACCOUNT_SIZE)?;
    let mut record = [0u8; RECORD_BUFFER_SIZE];
    sink.accounts(accounts_count);
    for _ in 0..accounts_count {
        r.read_exact(&mut record[..ACCOUNT_SIZE])?;
        sink.account(decode_account(&record));
    }
    let transfers_count = r.count(TRANSFER_SIZE + 1)?;
    sink.transfers(fixed, transfers_count)?;
    for index in 0..transfers_count {
        r.read_exact(&mut record[..TRANSFER_SIZE + 1])?;
        let status = TransferPendingStatus::from_u8(record[TRANSFER_SIZE])
            .ok_or(SnapshotError::Inconsistent("unknown pending status"))?;
        let index = u32::try_from(index)
            .ok()
            .filter(|i| i & EXPIRY_BIT == 0)
            .ok_or(SnapshotError::Inconsistent("too many transfers"))?;
        sink.transfer(index, decode_transfer(&record), status);
    }
    sink.transfers_done()?;
    let expiries_count = r.count(EXPIRY_EVENT_SIZE)?;
    sink.expiry_events(expiries_count);
    for _ in 0..expiries_count {
        let timestamp = r.u64()?;
        let index = r.u32()?;
        if (index & !CONFIRM_BIT) as usize >= transfers_count {
            return Err(SnapshotError::Inconsistent(
                "an expiry names an unknown transfer",
            ));
        }
        sink.expiry_event(timestamp, index);
    }
    let failed_count = r.count(FAILED_ID_SIZE)?;
    for _ in 0..failed_count {
        let mut id = [0u8; 16];
        r.read_exact(&mut id)?;
        sink.failed_id(u128::from_le_bytes(id));
    }
    if version >= 3 {
        let copies_count = r.count(SAGA_COPY_SIZE)?;
        let mut previous: Option<u32> = None;
        for _ in 0..copies_count {
            let index = r.u32()?;
            let mut bytes = [0u8; 2];
            r.read_exact(&mut bytes)?;
            if index as usize >= transfers_count || previous.is_some_and(|p| index <= p) {
                return Err(SnapshotError::Inconsistent(
                    "saga copies must name known transfers in increasing order",
                ));
            }
            previous = Some(index);
            let remote = RemoteSides::from_bits(bytes[0]).ok_or(SnapshotError::Inconsistent(
                "unknown remote sides of a saga copy",
            ))?;
            let state = SagaState::from_u8(bytes[1])
                .ok_or(SnapshotError::Inconsistent("unknown state of a saga copy"))?;
            sink.saga_copy(index, SagaCopy { remote, state });
        }
    }
    if r.remaining_bytes != 0 {
        return Err(SnapshotError::Inconsistent(
            "bytes after the end of the snapshot",
        ));
    }
    Ok(StateDigest(
        r.buffered.into_inner().hasher.finalize().into(),
    ))
}

/// Hashes every byte read through it.
struct HashingReader<R: Read> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Fixed-width fields from a buffered, hashing reader, never past the snapshot's length.
struct SnapshotReader<'a, R: Read + ?Sized> {
    buffered: io::BufReader<HashingReader<io::Take<&'a mut R>>>,
    /// Bytes of the snapshot not yet read.
    remaining_bytes: u64,
}

impl<R: Read + ?Sized> SnapshotReader<'_, R> {
    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        if buf.len() as u64 > self.remaining_bytes {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the snapshot ends in the middle of a field",
            ));
        }
        self.buffered.read_exact(buf)?;
        self.remaining_bytes -= buf.len() as u64;
        Ok(())
    }
    fn u32(&mut self) -> io::Result<u32> {
        let mut b = [0u8; 4];
        self.read_exact(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    fn u64(&mut self) -> io::Result<u64> {
        let mut b = [0u8; 8];
        self.read_exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    /// A count of records of `record_bytes` each, bounded by the bytes the snapshot has left,
    /// so that a damaged or forged one cannot ask for memory its length does not justify.
    fn count(&mut self, record_bytes: usize) -> Result<usize, SnapshotError> {
        debug_assert!(record_bytes > 0);
        let count = self.u64()?;
        if count > u64::from(u32::MAX) {
            return Err(SnapshotError::Inconsistent("a length prefix exceeds 2^32"));
        }
        if count * record_bytes as u64 > self.remaining_bytes {
            return Err(SnapshotError::Inconsistent(
                "a length prefix counts more records than the snapshot's remaining bytes hold",
            ));
        }
        Ok(count as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Batch, BatchBody, Transfer};

    /// The fixed header of a snapshot (magic, version, timestamps, batches applied).
    fn header() -> Vec<u8> {
        let mut bytes = SNAPSHOT_MAGIC.to_vec();
        bytes.extend_from_slice(&SNAPSHOT_FORMAT_VERSION.to_le_bytes());
        bytes.extend_from_slice(&[0u8; 24]);
        bytes
    }

    fn read(bytes: &[u8]) -> Result<(StateMachine, StateDigest), SnapshotError> {
        StateMachine::read_snapshot(&mut &bytes[..], bytes.len() as u64)
    }

    #[test]
    fn a_tiny_snapshot_claiming_billions_of_records_is_refused_before_allocating() {
        // A count of 2^32 - 1 (the largest a count may be) in a 68-byte snapshot: reading it
        // on trust would reserve hundreds of GiB.
        for forged in 0..4 {
            let mut bytes = header();
            for field in 0..4 {
                let count: u64 = if field == forged { u32::MAX as u64 } else { 0 };
                bytes.extend_from_slice(&count.to_le_bytes());
            }
            assert_eq!(bytes.len(), 68);
            let error = read(&bytes).expect_err("a forged count is refused");
            let text = error.to_string();
            assert!(
                text.contains("counts more records than the snapshot's remaining bytes hold"),
                "count {forged}: {text}"
            );
        }
    }

    fn transfer(id: u128, flags: TransferFlags, pending_id: u128, timeout: u32) -> Transfer {
        Transfer {
            id,
            debit_account_id: 1,
            credit_account_id: 2,
            amount: if pending_id == 0 { 1 } else { 0 },
            pending_id,
            timeout,
            ledger: 1,
            code: 1,
            flags,
            ..Default::default()
        }
    }

    fn apply(state: &mut StateMachine, timestamp: u64, body: BatchBody) {
        state.apply(&Batch { timestamp, body });
    }

    /// Transfers `ids` from account 1 to 2, every third one pending with a 1 s timeout.
    fn every_third_pending(ids: impl Iterator<Item = u128>) -> Vec<Transfer> {
        ids.map(|id| match id % 3 {
            0 => transfer(id, TransferFlags::PENDING, 0, 1),
            _ => transfer(id, TransferFlags::empty(), 0, 0),
        })
        .collect()
    }

    /// A state holding accounts 1 and 2 (ledger 1, code 1).
    fn with_accounts_1_and_2() -> StateMachine {
        let mut state = StateMachine::default();
        let accounts = [1, 2].map(|id| Account {
            id,
            ledger: 1,
            code: 1,
            ..Default::default()
        });
        apply(&mut state, 1, BatchBody::CreateAccounts(accounts.to_vec()));
        state
    }

    #[test]
    fn a_snapshot_written_in_steps_while_batches_apply_is_the_snapshot_of_when_it_began() {
        let mut state = with_accounts_1_and_2();
        // More transfers than one step writes; every third one pending with a 1 s timeout.
        let count = limits::SNAPSHOT_STEP_RECORDS_MAX as u128 + 5_000;
        let ids: Vec<u128> = (1..=count).collect();
        for chunk in ids.chunks(limits::BATCH_EVENTS_MAX) {
            let transfers = every_third_pending(chunk.iter().copied());
            apply(&mut state, 0, BatchBody::CreateTransfers(transfers));
        }
        let mut expected = Vec::new();
        let expected_digest = state.write_snapshot(&mut expected).unwrap();

        let mut bytes = Vec::new();
        let mut writer = state.begin_snapshot(&mut bytes).unwrap();
        assert_eq!(writer.step(&state).unwrap(), None);
        // Between steps: pending transfers posted and voided, the rest expired (new expiry
        // events), a new transfer appended.
        let resolve = |id: u128, flags| transfer(1_000_000 + id, flags, id, 0);
        apply(
            &mut state,
            0,
            BatchBody::CreateTransfers(vec![
                resolve(66_000, TransferFlags::POST_PENDING_TRANSFER),
                resolve(66_003, TransferFlags::VOID_PENDING_TRANSFER),
                transfer(2_000_000, TransferFlags::empty(), 0, 0),
            ]),
        );
        apply(
            &mut state,
            u64::MAX / 4,
            BatchBody::CreateTransfers(vec![transfer(2_000_001, TransferFlags::empty(), 0, 0)]),
        );
        assert_ne!(state.digest(), expected_digest);
        let digest = loop {
            if let Some(digest) = writer.step(&state).unwrap() {
                break digest;
            }
        };
        drop(writer);
        assert_eq!(digest, expected_digest);
        assert!(
            bytes == expected,
            "the stepped snapshot differs from the one at its start"
        );
    }

    #[test]
    fn a_snapshot_is_read_only_up_to_its_declared_length() {
        let mut bytes = Vec::new();
        let written = StateMachine::default().write_snapshot(&mut bytes).unwrap();
        let len = bytes.len() as u64;
        // Bytes past the declared length are neither read nor hashed.
        bytes.extend_from_slice(b"trailing bytes of another file");
        let (_, read_digest) = StateMachine::read_snapshot(&mut bytes.as_slice(), len).unwrap();
        assert_eq!(read_digest, written);
        // A declared length longer than the snapshot leaves bytes unaccounted for.
        let error =
            StateMachine::read_snapshot(&mut bytes.as_slice(), len + 1).expect_err("refused");
        assert!(error.to_string().contains("bytes after the end"), "{error}");
        // A shorter one cuts a field.
        let error =
            StateMachine::read_snapshot(&mut bytes.as_slice(), len - 1).expect_err("refused");
        assert!(error.to_string().contains("middle of a field"), "{error}");
    }

    #[test]
    fn the_structure_check_builds_nothing_and_leaves_only_what_needs_the_state_to_the_read() {
        let mut state = with_accounts_1_and_2();
        let transfers = every_third_pending(1..=10);
        apply(&mut state, 0, BatchBody::CreateTransfers(transfers));
        let mut bytes = Vec::new();
        let digest = state.write_snapshot(&mut bytes).unwrap();
        let len = bytes.len() as u64;
        let checked = StateMachine::check_snapshot_structure(&mut bytes.as_slice(), len).unwrap();
        assert_eq!(checked, digest);

        // What the structure shows is refused by both.
        let check = |bytes: &[u8], len: u64| {
            StateMachine::check_snapshot_structure(&mut &bytes[..], len)
                .expect_err("refused")
                .to_string()
        };
        let error = check(&bytes, len - 1);
        assert!(error.contains("middle of a field"), "{error}");
        let mut tiny = header();
        tiny.extend_from_slice(&(u32::MAX as u64).to_le_bytes());
        let error = check(&tiny, tiny.len() as u64);
        assert!(error.contains("counts more records"), "{error}");
        // The first transfer's status byte, after the header, the accounts and their count.
        let status_at = 36 + 8 + 2 * ACCOUNT_SIZE + 8 + TRANSFER_SIZE;
        let mut bad_status = bytes.clone();
        bad_status[status_at] = 0xff;
        let error = check(&bad_status, len);
        assert!(error.contains("unknown pending status"), "{error}");

        // An account id that appears twice is seen only by the read, which builds the index.
        let mut twice = bytes.clone();
        let second_account = 36 + 8 + ACCOUNT_SIZE;
        twice.copy_within(36 + 8..36 + 8 + 16, second_account);
        StateMachine::check_snapshot_structure(&mut twice.as_slice(), len).unwrap();
        let error = read(&twice).expect_err("refused").to_string();
        assert!(error.contains("an account id appears twice"), "{error}");
    }
}
