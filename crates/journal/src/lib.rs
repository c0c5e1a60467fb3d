//! The journal: fincore's durable, append-only, tamper-evident log of sealed batches.
//!
//! It owns the on-disk format of records (fixed little-endian header with format version,
//! length, CRC32C of header and body, and a SHA-256 link to the previous record), segment files,
//! group commit with `fdatasync` before anything is acknowledged, recovery after a crash (a torn
//! tail is cut off; damage anywhere before it is a hard error naming file and byte offset) and the
//! Raft-log operations (`truncate_after`, `purge_before`, `restart_at`). Every file operation
//! goes through the narrow seam in [`storage`], so the simulator can put its faulty disk under
//! the very same code.
//!
//! It must not interpret payloads: a record carries opaque bytes (a Raft entry holding a sealed
//! ledger batch). Nothing here knows accounts, transfers or Raft.

mod error;
mod group_commit;
mod journal;
mod record;
mod segment;
pub mod storage;

pub use error::JournalError;
pub use group_commit::{
    Appended, Group, GroupCommitStats, GroupCommitter, JournalWriter, Op, SyncObserver, Ticket,
};
pub use journal::{
    Journal, JournalOptions, JournalReader, Position, RecordReader, Recovery, StoredRecord,
};
pub use record::{HEADER_SIZE, Header, HeaderProblem, RECORD_BODY_BYTES_MAX, RecordHash};
