//! The embedded node: open (lock, recover, replay), submit batches, checkpoint, close.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use journal::{
    Checkpoint, CheckpointStore, GroupCommitStats, GroupCommitter, Journal, JournalOptions, Op,
    Position, Recovery, SyncObserver, Ticket,
};
use ledger::{BATCH_EVENTS_MAX, Batch, BatchBody, BatchResults, StateMachine};

use crate::error::EngineError;

/// Term of every record written by a single node (replication will bring real terms).
const SINGLE_NODE_TERM: u64 = 1;

/// How an engine is opened.
#[derive(Clone)]
pub struct EngineOptions {
    pub data_dir: PathBuf,
    /// Write a checkpoint after this many batches (0: only on close).
    pub checkpoint_interval_batches: u64,
    pub segment_bytes_max: u64,
    /// Records that may wait for the journal writer before `submit` blocks.
    pub journal_queue_depth: usize,
    /// Room to reserve up front, so that growing indexes does not stall a batch.
    pub accounts_capacity: usize,
    pub transfers_capacity: usize,
    /// Told the duration of every journal sync and how many records it made durable.
    pub sync_observer: Option<SyncObserver>,
}

impl std::fmt::Debug for EngineOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineOptions")
            .field("data_dir", &self.data_dir)
            .field(
                "checkpoint_interval_batches",
                &self.checkpoint_interval_batches,
            )
            .field("segment_bytes_max", &self.segment_bytes_max)
            .field("journal_queue_depth", &self.journal_queue_depth)
            .finish_non_exhaustive()
    }
}

impl EngineOptions {
    pub fn new(data_dir: impl Into<PathBuf>) -> EngineOptions {
        EngineOptions {
            data_dir: data_dir.into(),
            checkpoint_interval_batches: limits::ENGINE_CHECKPOINT_INTERVAL_BATCHES_DEFAULT,
            segment_bytes_max: JournalOptions::default().segment_bytes_max,
            journal_queue_depth: limits::JOURNAL_QUEUE_RECORDS_MAX,
            accounts_capacity: 0,
            transfers_capacity: 0,
            sync_observer: None,
        }
    }
}

/// What recovery did when the engine was opened.
#[derive(Debug, Clone)]
pub struct OpenReport {
    pub journal: Recovery,
    /// The checkpoint the state was loaded from.
    pub checkpoint_index: Option<u64>,
    pub replayed_records: u64,
    pub replayed_events: u64,
    pub elapsed: Duration,
}

/// One embedded ledger node.
pub struct Engine {
    options: EngineOptions,
    state: StateMachine,
    committer: Option<GroupCommitter>,
    checkpoints: CheckpointStore,
    /// The last record known to be durable.
    durable: Position,
    /// The index of the last record handed to the journal writer.
    appended_index: u64,
    batches_since_checkpoint: u64,
    failed: Option<String>,
    _lock: File,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn lock_data_dir(dir: &Path) -> Result<File, EngineError> {
    fs::create_dir_all(dir).map_err(|source| EngineError::Io {
        action: "creating data directory",
        path: dir.into(),
        source,
    })?;
    let path = dir.join("LOCK");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| EngineError::Io {
            action: "opening",
            path: path.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(EngineError::Locked(dir.into())),
        Err(fs::TryLockError::Error(source)) => Err(EngineError::Io {
            action: "locking",
            path,
            source,
        }),
    }
}

/// Loads the latest checkpoint (checked against the journal) or an empty state.
pub(crate) fn load_checkpoint(
    journal: &Journal,
    checkpoints: &CheckpointStore,
    options: &EngineOptions,
) -> Result<(StateMachine, Option<Checkpoint>), EngineError> {
    let Some(checkpoint) = checkpoints.latest()? else {
        if journal.first_index() != 1 {
            return Err(EngineError::Inconsistent(format!(
                "the journal starts at record {} but there is no checkpoint to cover the records before it",
                journal.first_index()
            )));
        }
        return Ok((
            StateMachine::with_capacity(options.accounts_capacity, options.transfers_capacity),
            None,
        ));
    };
    let at = checkpoint.meta.position;
    match journal.position(at.index) {
        Some(position) if position.hash == at.hash => {}
        Some(_) => {
            return Err(EngineError::Inconsistent(format!(
                "checkpoint {} claims record {} has hash {}, but the journal's record {} differs",
                checkpoint.path.display(),
                at.index,
                at.hash,
                at.index
            )));
        }
        None => {
            return Err(EngineError::Inconsistent(format!(
                "checkpoint {} reflects record {}, but the journal holds only {}..={}: acknowledged records are missing",
                checkpoint.path.display(),
                at.index,
                journal.first_index(),
                journal.last().index
            )));
        }
    }
    let mut reader = checkpoint.state_reader()?;
    let (state, digest) =
        StateMachine::read_snapshot(&mut reader).map_err(|source| EngineError::Snapshot {
            path: checkpoint.path.clone(),
            source,
        })?;
    if digest.0 != checkpoint.meta.state_digest {
        return Err(EngineError::Inconsistent(format!(
            "checkpoint {} does not match its recorded state digest",
            checkpoint.path.display()
        )));
    }
    Ok((state, Some(checkpoint)))
}

/// Applies journal records `from..` to `state`; returns (records, events).
pub(crate) fn replay(
    journal: &Journal,
    from: u64,
    verify_hashes: bool,
    state: &mut StateMachine,
    mut after_each: impl FnMut(u64, &StateMachine) -> Result<(), EngineError>,
) -> Result<(u64, u64), EngineError> {
    let (mut records, mut events) = (0u64, 0u64);
    for record in journal.read_from(from, verify_hashes)? {
        let record = record?;
        let batch = Batch::decode(&record.body).map_err(|source| EngineError::BadBatch {
            index: record.index,
            source,
        })?;
        state.apply(&batch);
        records += 1;
        events += batch.events_count() as u64;
        after_each(record.index, state)?;
    }
    Ok((records, events))
}

impl Engine {
    /// Opens the data directory, recovering from the latest checkpoint and the journal tail.
    pub fn open(options: EngineOptions) -> Result<(Engine, OpenReport), EngineError> {
        let started = Instant::now();
        let lock = lock_data_dir(&options.data_dir)?;
        let journal_options = JournalOptions {
            segment_bytes_max: options.segment_bytes_max,
            ..Default::default()
        };
        let (journal, recovery) = Journal::open(options.data_dir.join("journal"), journal_options)?;
        let checkpoints = CheckpointStore::new(options.data_dir.join("checkpoints"));
        let (mut state, checkpoint) = load_checkpoint(&journal, &checkpoints, &options)?;
        let from = checkpoint
            .as_ref()
            .map_or(journal.first_index(), |c| c.meta.position.index + 1);
        let (replayed_records, replayed_events) =
            replay(&journal, from, false, &mut state, |_, _| Ok(()))?;
        let durable = journal.last();
        let committer = GroupCommitter::spawn(
            journal,
            options.journal_queue_depth,
            options.sync_observer.clone(),
        );
        let report = OpenReport {
            journal: recovery,
            checkpoint_index: checkpoint.map(|c| c.meta.position.index),
            replayed_records,
            replayed_events,
            elapsed: started.elapsed(),
        };
        let engine = Engine {
            options,
            state,
            committer: Some(committer),
            checkpoints,
            durable,
            appended_index: durable.index,
            batches_since_checkpoint: replayed_records,
            failed: None,
            _lock: lock,
        };
        Ok((engine, report))
    }

    /// The state, for queries. It reflects every acknowledged batch.
    pub fn state(&self) -> &StateMachine {
        &self.state
    }

    /// The last durable record.
    pub fn durable(&self) -> Position {
        self.durable
    }

    pub fn journal_stats(&self) -> &GroupCommitStats {
        self.committer.as_ref().expect("open").stats()
    }

    /// Seals, journals and applies one batch; returns its results once the batch is durable.
    ///
    /// The state machine works on the batch while the journal writes and syncs it; the results
    /// are handed out only after the sync. If the journal fails, the in-memory state may be
    /// ahead of the disk, so the engine refuses all further work until it is reopened.
    pub fn submit(&mut self, body: BatchBody) -> Result<BatchResults, EngineError> {
        let (results, ticket) = self.submit_pipelined(body)?;
        match ticket.wait() {
            Ok(position) => {
                self.durable = position;
                Ok(results)
            }
            Err(error) => {
                self.failed = Some(error.to_string());
                Err(EngineError::Failed(error.to_string()))
            }
        }
    }

    /// Seals, journals and applies one batch without waiting for it to be durable: the caller
    /// must not release the results (nor answer reads of the state) before `ticket.wait()`
    /// succeeds, and must stop using the engine if it fails.
    pub fn submit_pipelined(
        &mut self,
        body: BatchBody,
    ) -> Result<(BatchResults, Ticket), EngineError> {
        if let Some(reason) = &self.failed {
            return Err(EngineError::Failed(reason.clone()));
        }
        let batch = Batch {
            timestamp: now_ns().max(self.state.timestamp_last() + 1),
            body,
        };
        if batch.events_count() > BATCH_EVENTS_MAX {
            return Err(EngineError::TooManyEvents(batch.events_count()));
        }
        let index = self.appended_index + 1;
        let committer = self.committer.as_ref().expect("open");
        let ticket = match committer.send_blocking(Op::Append {
            term: SINGLE_NODE_TERM,
            index,
            body: batch.encode(),
        }) {
            Ok(ticket) => ticket,
            Err(error) => {
                self.failed = Some(error.to_string());
                return Err(EngineError::Failed(error.to_string()));
            }
        };
        self.appended_index = index;
        let results = self.state.apply(&batch);
        self.batches_since_checkpoint += 1;
        let interval = self.options.checkpoint_interval_batches;
        if interval > 0 && self.batches_since_checkpoint >= interval {
            self.checkpoint()?;
        }
        Ok((results, ticket))
    }

    /// The index of the last batch applied (durable or about to be).
    pub fn applied_index(&self) -> u64 {
        self.appended_index
    }

    /// Writes a checkpoint of the current state, after waiting until all of it is durable.
    pub fn checkpoint(&mut self) -> Result<Checkpoint, EngineError> {
        let barrier = self
            .committer
            .as_ref()
            .expect("open")
            .send_blocking(Op::Barrier)
            .and_then(|ticket| ticket.wait());
        let position = match barrier {
            Ok(position) => position,
            Err(error) => {
                self.failed = Some(error.to_string());
                return Err(EngineError::Failed(error.to_string()));
            }
        };
        debug_assert_eq!(position.index, self.appended_index);
        self.durable = position;
        let state = &self.state;
        let checkpoint = self
            .checkpoints
            .write(position, |out| Ok(state.write_snapshot(out)?.0))?;
        self.batches_since_checkpoint = 0;
        Ok(checkpoint)
    }

    /// Checkpoints (if anything happened since the last one) and stops the journal writer.
    pub fn close(mut self) -> Result<(), EngineError> {
        if self.failed.is_none() && self.batches_since_checkpoint > 0 {
            self.checkpoint()?;
        }
        if let Some(committer) = self.committer.take() {
            committer.shutdown();
        }
        Ok(())
    }
}
