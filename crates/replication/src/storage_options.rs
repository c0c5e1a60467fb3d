//! How a replica's log and state machine are set up: the files they live on, how the journal
//! writer and the ledger apply run, and the hooks the simulator needs.
//!
//! Production takes the defaults (the operating system's files, a journal writer thread, apply
//! threads). The simulator passes its simulated disk, runs the writer and apply as tasks on its
//! seeded single-threaded runtime (so a sync takes simulated time and nothing depends on thread
//! scheduling), and observes every apply. Nothing else differs: the same log store and state
//! machine run in both.

use std::sync::Arc;
use std::time::Duration;

use journal::SyncObserver;
use journal::storage::{RealStorage, Storage};
use ledger::StateMachine;

use crate::types::{BatchOutcome, LedgerEntry};

/// Told of every entry a state machine applied, with its outcome and the state right after.
pub type ApplyObserver = Arc<dyn Fn(&LedgerEntry, &BatchOutcome, &StateMachine) + Send + Sync>;

/// How long one simulated journal sync takes (drawn by the simulator).
pub type SyncDelay = Arc<dyn Fn() -> Duration + Send + Sync>;

/// A deliberate bug, planted only by the simulator's tests and `fincore sim --bug`, to prove the
/// checkers catch it. Production never sets one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlantedBug {
    /// The log tells Raft an append is durable before its fsync completed.
    AckBeforeFsync,
    /// The state machine applies every 16th batch twice.
    ApplyTwice,
    /// The log's old defect: entries leave the memory cache before the journal writer wrote
    /// them, and a read that misses one answers short instead of failing.
    ShortRead,
}

/// The setup of one replica's storage.
#[derive(Clone)]
pub struct StorageOptions {
    /// The files the journal, the vote and the snapshot live on.
    pub storage: Arc<dyn Storage>,
    /// Told the duration of every log fsync and how many entries it made durable.
    pub sync_observer: Option<SyncObserver>,
    /// How many of the newest entries the log keeps in memory (older ones are read back from
    /// the journal).
    pub cached_entries_max: usize,
    /// `None`: the journal writer is a thread of its own and a sync is a real `fdatasync`.
    /// `Some(delay)`: the writer is a task on the Raft runtime, and each sync first waits
    /// `delay()` (the simulator's fsync latency, during which a crash loses the unsynced
    /// writes).
    pub simulated_sync: Option<SyncDelay>,
    /// Apply batches on the two apply threads (production), or inline on the state machine's
    /// task (the simulator: no thread may decide an order).
    pub apply_on_threads: bool,
    pub apply_observer: Option<ApplyObserver>,
    pub planted_bug: Option<PlantedBug>,
}

impl Default for StorageOptions {
    fn default() -> Self {
        StorageOptions {
            storage: RealStorage::shared(),
            sync_observer: None,
            cached_entries_max: limits::RAFT_LOG_CACHED_ENTRIES_MAX,
            simulated_sync: None,
            apply_on_threads: true,
            apply_observer: None,
            planted_bug: None,
        }
    }
}

impl std::fmt::Debug for StorageOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageOptions")
            .field("storage", &self.storage)
            .field("cached_entries_max", &self.cached_entries_max)
            .field("simulated_sync", &self.simulated_sync.is_some())
            .field("apply_on_threads", &self.apply_on_threads)
            .field("planted_bug", &self.planted_bug)
            .finish_non_exhaustive()
    }
}
