//! One replica's simulated disk: its Raft log as journal records (the real record format, with
//! its checksums and hash chain), its vote, and its newest snapshot.
//!
//! Records are written unsynced and become durable when the simulated fsync completes. A crash
//! loses some unsynced suffix of the log, may leave its first record half written (a torn
//! write), and may keep the rest as the page cache happened to flush it. The vote and the
//! snapshot are written atomically and durably (as the real replica does: tmp file, fsync,
//! rename). Latent corruption flips a byte of a synced record; reading it must fail.

use journal::{HEADER_SIZE, Header, RecordHash};
use rand::Rng;
use rand::rngs::SmallRng;

use crate::types::{Entry, LogId, SnapshotMeta, Vote};

struct StoredRecord {
    /// Journal index (Raft index + 1, as in the real log).
    index: u64,
    bytes: Vec<u8>,
    synced: bool,
}

/// The newest snapshot, as stored.
#[derive(Clone)]
pub struct StoredSnapshot {
    pub meta: SnapshotMeta,
    pub data: Vec<u8>,
}

/// What a crash did to the disk.
#[derive(Debug, Default)]
pub struct CrashDamage {
    pub unsynced_lost: u64,
    pub torn: bool,
}

/// What reopening the log found.
pub struct RecoveredLog {
    pub last_log_id: Option<LogId>,
    /// A half-written last record was cut off.
    pub torn_tail_cut: bool,
}

/// A replica's disk. `generation` changes at every crash, so that the writes of a crashed
/// instance still in flight land nowhere.
#[derive(Default)]
pub struct SimDisk {
    pub generation: u64,
    records: Vec<StoredRecord>,
    pub vote: Option<Vote>,
    pub purged: Option<LogId>,
    pub snapshot: Option<StoredSnapshot>,
    /// A read found a record that fails its checksum or chain.
    pub corruption_detected: bool,
}

fn journal_index(raft_index: u64) -> u64 {
    raft_index + 1
}

/// Decodes and checks one stored record: header checksum, body checksum, hash chain.
fn decode(bytes: &[u8], prev: Option<&RecordHash>) -> Result<(Header, Entry), String> {
    let header_bytes: &[u8; HEADER_SIZE] = bytes
        .get(..HEADER_SIZE)
        .and_then(|b| b.try_into().ok())
        .ok_or("record shorter than its header")?;
    let header = Header::decode(header_bytes).map_err(|p| p.to_string())?;
    let body = bytes
        .get(HEADER_SIZE..HEADER_SIZE + header.body_len as usize)
        .ok_or("record body cut short")?;
    let expected = Header::seal(header.term, header.index, header.prev_hash, body);
    if expected.body_crc != header.body_crc {
        return Err("body checksum mismatch".into());
    }
    if expected.hash != header.hash {
        return Err("record hash mismatch".into());
    }
    if prev.is_some_and(|prev| *prev != header.prev_hash) {
        return Err("record does not chain to the one before it".into());
    }
    let entry: Entry = postcard::from_bytes(body).map_err(|e| e.to_string())?;
    if journal_index(entry.log_id.index()) != header.index
        || entry.log_id.committed_leader_id().term != header.term
    {
        return Err(format!(
            "record {} holds entry {}",
            header.index, entry.log_id
        ));
    }
    Ok((header, entry))
}

impl SimDisk {
    fn last_hash(&self) -> RecordHash {
        self.records
            .last()
            .and_then(|r| {
                r.bytes
                    .get(..HEADER_SIZE)
                    .and_then(|b| <&[u8; HEADER_SIZE]>::try_from(b).ok())
                    .and_then(|b| Header::decode(b).ok())
            })
            .map(|h| h.hash)
            .unwrap_or_default()
    }

    /// Holds no log record and no snapshot.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.snapshot.is_none()
    }

    /// Writes an entry at the end of the log, unsynced.
    pub fn append(&mut self, entry: &Entry) {
        let index = journal_index(entry.log_id.index());
        if self.records.last().is_some_and(|r| r.index + 1 != index) {
            // The log restarts after a snapshot that covers more than it held.
            self.records.clear();
        }
        let body = postcard::to_allocvec(entry).expect("entries encode");
        let header = Header::seal(
            entry.log_id.committed_leader_id().term,
            index,
            self.last_hash(),
            &body,
        );
        let mut bytes = header.encode().to_vec();
        bytes.extend_from_slice(&body);
        self.records.push(StoredRecord {
            index,
            bytes,
            synced: false,
        });
    }

    /// The fsync of everything up to Raft index `raft_index` completed.
    pub fn sync_through(&mut self, raft_index: u64) {
        for record in &mut self.records {
            if record.index <= journal_index(raft_index) {
                record.synced = true;
            }
        }
    }

    /// Removes every entry after `last` (all of them for `None`), durably.
    pub fn truncate_after(&mut self, last: Option<u64>) {
        let keep = last.map_or(0, journal_index);
        self.records.retain(|r| r.index <= keep);
    }

    /// Records the purge point durably and drops the entries it covers.
    pub fn purge_through(&mut self, log_id: LogId) {
        self.purged = Some(log_id);
        let through = journal_index(log_id.index());
        self.records.retain(|r| r.index > through);
    }

    /// Reads the entry at Raft index `raft_index`, checking the record and its link to the
    /// record before it. `Ok(None)` when the log does not hold it.
    pub fn read(&mut self, raft_index: u64) -> Result<Option<Entry>, String> {
        let index = journal_index(raft_index);
        let Some(at) = self.records.iter().position(|r| r.index == index) else {
            return Ok(None);
        };
        let prev = at
            .checked_sub(1)
            .and_then(|p| self.records[p].bytes.get(..HEADER_SIZE))
            .and_then(|b| <&[u8; HEADER_SIZE]>::try_from(b).ok())
            .and_then(|b| Header::decode(b).ok())
            .map(|h| h.hash);
        match decode(&self.records[at].bytes, prev.as_ref()) {
            Ok((_, entry)) => Ok(Some(entry)),
            Err(error) => {
                self.corruption_detected = true;
                Err(format!("journal record {index}: {error}"))
            }
        }
    }

    /// Reopens the log after a restart: checks every record; a bad last record is a torn write
    /// and is cut off, a bad record anywhere before it is corruption and is refused.
    pub fn recover(&mut self) -> Result<RecoveredLog, String> {
        let mut prev: Option<RecordHash> = None;
        let mut last_log_id = None;
        let mut torn_tail_cut = false;
        let count = self.records.len();
        for at in 0..count {
            match decode(&self.records[at].bytes, prev.as_ref()) {
                Ok((header, entry)) => {
                    prev = Some(header.hash);
                    last_log_id = Some(entry.log_id);
                }
                Err(_) if at + 1 == count => {
                    self.records.pop();
                    torn_tail_cut = true;
                }
                Err(error) => {
                    self.corruption_detected = true;
                    return Err(format!(
                        "journal record {}: {error}",
                        self.records[at].index
                    ));
                }
            }
        }
        Ok(RecoveredLog {
            last_log_id: last_log_id.or(self.purged),
            torn_tail_cut,
        })
    }

    /// Crashes the machine: unsynced records are lost, except a prefix the page cache may have
    /// flushed; the first lost one may survive half written.
    pub fn crash(&mut self, rng: &mut SmallRng, torn_write: f64) -> CrashDamage {
        self.generation += 1;
        let first_unsynced = self
            .records
            .iter()
            .position(|r| !r.synced)
            .unwrap_or(self.records.len());
        let unsynced = self.records.len() - first_unsynced;
        let mut damage = CrashDamage::default();
        if unsynced == 0 {
            return damage;
        }
        let flushed = rng.random_range(0..=unsynced);
        let cut = first_unsynced + flushed;
        damage.unsynced_lost = (self.records.len() - cut) as u64;
        if cut < self.records.len() && rng.random_bool(torn_write) {
            let record = &mut self.records[cut];
            let keep = rng.random_range(1..record.bytes.len());
            record.bytes.truncate(keep);
            self.records.truncate(cut + 1);
            damage.torn = true;
        } else {
            self.records.truncate(cut);
        }
        // What survived is on the platter now.
        for record in &mut self.records {
            record.synced = true;
        }
        damage
    }

    /// Flips one byte of a synced record that is not the last one (a record at the very end
    /// that fails its checksum cannot be told from a torn write; see ARCHITECTURE.md).
    /// Returns the journal index hit.
    pub fn corrupt(&mut self, rng: &mut SmallRng) -> Option<u64> {
        let candidates = self.records.len().checked_sub(1)?;
        let synced: Vec<usize> = (0..candidates)
            .filter(|&at| self.records[at].synced)
            .collect();
        if synced.is_empty() {
            return None;
        }
        let at = synced[rng.random_range(0..synced.len())];
        let record = &mut self.records[at];
        let offset = rng.random_range(0..record.bytes.len());
        record.bytes[offset] ^= 1 << rng.random_range(0..8);
        Some(record.index)
    }
}
