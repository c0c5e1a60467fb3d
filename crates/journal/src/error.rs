//! Journal errors, written for the operator who has to act on them.

use std::path::PathBuf;

/// What went wrong with the journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "journal record at byte offset {offset} of {path} is corrupt: {reason}. The damage is \
         before the end of the journal, so it is not a torn write from a crash; refusing to \
         continue. Restore the data directory from a replica or a backup."
    )]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("journal segments are not contiguous: {0}")]
    Gap(String),
    #[error("record {index} is not in the journal (it holds {first}..={last})")]
    NotFound { index: u64, first: u64, last: u64 },
    #[error("record index {index} was expected to be {expected}")]
    OutOfOrder { index: u64, expected: u64 },
    #[error("record body of {0} bytes exceeds the limit of {max} bytes", max = crate::record::RECORD_BODY_BYTES_MAX)]
    TooLarge(usize),
    #[error(
        "the journal writer failed earlier ({0}); nothing more is accepted until a restart recovers"
    )]
    Failed(String),
}

impl JournalError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> JournalError {
        let path = path.into();
        move |source| JournalError::Io {
            action,
            path,
            source,
        }
    }
}

pub type Result<T, E = JournalError> = std::result::Result<T, E>;
