//! Engine errors: what failed, where, and what the operator can do.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Journal(#[from] journal::JournalError),
    #[error("data directory {0} is in use by another fincore process (its LOCK file is held)")]
    Locked(PathBuf),
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("checkpoint {path} could not be loaded: {source}")]
    Snapshot {
        path: PathBuf,
        #[source]
        source: ledger::SnapshotError,
    },
    #[error("journal record {index} does not hold a valid batch: {source}")]
    BadBatch {
        index: u64,
        #[source]
        source: ledger::BatchDecodeError,
    },
    #[error("data directory is inconsistent: {0}")]
    Inconsistent(String),
    #[error("batch has {0} events; the limit is {max}", max = ledger::BATCH_EVENTS_MAX)]
    TooManyEvents(usize),
    #[error("the engine stopped after a storage failure ({0}); restart it to recover from disk")]
    Failed(String),
}
