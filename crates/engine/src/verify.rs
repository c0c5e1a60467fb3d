//! `verify`: proves a data directory from genesis without changing it.
//!
//! Every record's checksums and hash are recomputed, the chain is followed link by link, every
//! batch is replayed into a fresh state machine, the state at the latest checkpoint is compared
//! with that checkpoint's digest, and double entry is checked on the final state.

use std::path::Path;

use journal::{CheckpointStore, Journal, JournalOptions, Position};
use ledger::{StateDigest, StateMachine};

use crate::engine::replay;
use crate::error::EngineError;

/// What `verify` proved.
#[derive(Debug, Clone)]
pub struct VerifyReport {
    pub records: u64,
    pub events: u64,
    pub head: Position,
    pub accounts: usize,
    pub transfers: usize,
    /// The checkpoint compared with the replay, and its digest.
    pub checkpoint: Option<(u64, StateDigest)>,
    pub final_digest: StateDigest,
    /// Bytes of a torn write at the end of the journal (harmless: never acknowledged; the next
    /// start cuts them off).
    pub torn_tail_bytes: u64,
}

/// Verifies the data directory at `data_dir`.
pub fn verify(data_dir: &Path) -> Result<VerifyReport, EngineError> {
    let journal_dir = data_dir.join("journal");
    if !journal_dir.is_dir() {
        return Err(EngineError::Inconsistent(format!(
            "{} has no journal directory; is it a fincore data directory?",
            data_dir.display()
        )));
    }
    let (journal, recovery) = Journal::open(
        &journal_dir,
        JournalOptions {
            read_only: true,
            ..Default::default()
        },
    )?;
    if journal.first_index() != 1 {
        return Err(EngineError::Inconsistent(format!(
            "the journal starts at record {}; verifying from genesis needs the whole journal",
            journal.first_index()
        )));
    }
    let checkpoint = CheckpointStore::new(data_dir.join("checkpoints")).latest()?;
    if let Some(checkpoint) = &checkpoint {
        let stored =
            StateDigest::of_snapshot_bytes(&mut checkpoint.state_reader()?).map_err(|source| {
                EngineError::Io {
                    action: "reading checkpoint",
                    path: checkpoint.path.clone(),
                    source,
                }
            })?;
        if stored.0 != checkpoint.meta.state_digest {
            return Err(EngineError::Inconsistent(format!(
                "checkpoint {}: its state bytes do not match the digest in its trailer",
                checkpoint.path.display()
            )));
        }
        let at = checkpoint.meta.position;
        if journal.position(at.index).is_none_or(|p| p.hash != at.hash) {
            return Err(EngineError::Inconsistent(format!(
                "checkpoint {} reflects record {} ({}), which the journal does not hold",
                checkpoint.path.display(),
                at.index,
                at.hash
            )));
        }
    }
    let mut state = StateMachine::default();
    let mut checked = None;
    let checkpoint_at = checkpoint
        .as_ref()
        .map(|c| (c.meta.position.index, c.meta.state_digest));
    let mut compare = |index: u64, state: &StateMachine| {
        if let Some((at, expected)) = checkpoint_at
            && index == at
        {
            let digest = state.digest();
            if digest.0 != expected {
                return Err(EngineError::Inconsistent(format!(
                    "replaying the journal to record {at} gives state digest {digest}, but the checkpoint recorded {}",
                    StateDigest(expected)
                )));
            }
            checked = Some((at, digest));
        }
        Ok(())
    };
    // A checkpoint of the empty state (record 0) is compared before anything is replayed.
    compare(0, &state)?;
    let (records, events) = replay(&journal, 1, true, &mut state, &mut compare)?;
    if let Some(ledger) = state.unbalanced_ledger() {
        return Err(EngineError::Inconsistent(format!(
            "ledger {ledger}: debits and credits do not balance after replay"
        )));
    }
    Ok(VerifyReport {
        records,
        events,
        head: journal.last(),
        accounts: state.accounts_count(),
        transfers: state.transfers_count(),
        checkpoint: checked,
        final_digest: state.digest(),
        torn_tail_bytes: recovery.torn_tail.map_or(0, |t| t.bytes),
    })
}
