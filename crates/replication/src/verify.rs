//! `verify` for a replica's data directory: proves its log and its snapshot without changing
//! anything.
//!
//! The directory's format marker is read first; a directory without one is not guessed at.
//! Every record's checksums and hash are recomputed and the chain followed; every record must
//! hold a Raft entry at its own index and term. The snapshot's bytes must match the digest
//! stored with them. The ledger is then rebuilt: from genesis when the log reaches back that far
//! (checked against the snapshot's digest when passing its index), otherwise from the snapshot,
//! and the entries after it are applied. The state reported is the one after the last entry in
//! this replica's log, which may include entries the group has not committed yet.

use std::path::Path;

use journal::{Journal, JournalOptions, Position};
use ledger::{Batch, StateDigest, StateMachine};
use openraft::EntryPayload;

use crate::data_dir::FormatMarker;
use crate::log_store::{decode_entry, journal_index};
use crate::state_machine::read_snapshot_file;

/// What [`verify`] proved.
#[derive(Debug, Clone)]
pub struct VerifyReport {
    /// What the directory's format marker says.
    pub format: FormatMarker,
    pub records: u64,
    pub batches: u64,
    pub events: u64,
    pub head: Position,
    /// The snapshot's last log index and digest, if there is a snapshot.
    pub snapshot: Option<(u64, StateDigest)>,
    /// Whether the replay from genesis passed the snapshot's index and agreed with it.
    pub snapshot_checked_by_replay: bool,
    pub accounts: usize,
    pub transfers: usize,
    pub final_digest: StateDigest,
    pub torn_tail_bytes: u64,
}

/// Verifies the ledger replica data directory `dir`: first its format marker (a directory
/// without one, or of another machine, is refused, not guessed at), then everything else.
pub fn verify(dir: &Path) -> Result<VerifyReport, String> {
    let format =
        crate::data_dir::check(&journal::storage::RealStorage, dir).map_err(|e| e.to_string())?;
    format
        .check_machine(dir, crate::data_dir::LEDGER_MACHINE)
        .map_err(|e| format!("{e}; verify reads ledger replicas"))?;
    let (journal, recovery) = Journal::open(
        dir.join("journal"),
        JournalOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .map_err(|e| e.to_string())?;
    let snapshot =
        read_snapshot_file(&journal::storage::RealStorage, dir).map_err(|e| e.to_string())?;
    let snapshot_info = snapshot
        .as_ref()
        .map(|file| (file.meta.last_log_id.map_or(0, |l| l.index()), file.digest));

    // A log that starts at Raft entry 0 reaches genesis.
    let from_genesis = journal.first_index() == journal_index(0);
    let (mut state, mut applied) = match snapshot {
        Some(file) if !from_genesis => (file.state, file.meta.last_log_id.map(|l| l.index())),
        _ => (StateMachine::default(), None),
    };
    let mut report = VerifyReport {
        format,
        records: 0,
        batches: 0,
        events: 0,
        head: journal.last(),
        snapshot: snapshot_info,
        snapshot_checked_by_replay: false,
        accounts: 0,
        transfers: 0,
        final_digest: StateDigest::default(),
        torn_tail_bytes: recovery.torn_tail.map_or(0, |t| t.bytes),
    };
    if journal.last().index >= journal.first_index() {
        for record in journal
            .read_from(journal.first_index(), true)
            .map_err(|e| e.to_string())?
        {
            let record = record.map_err(|e| e.to_string())?;
            report.records += 1;
            let entry = decode_entry(&record).map_err(|e| e.to_string())?;
            let index = entry.log_id.index();
            if applied.is_some_and(|applied| index <= applied) {
                continue;
            }
            if let EntryPayload::Normal(sealed) = &entry.payload {
                let batch = Batch::decode(&sealed.0).map_err(|e| format!("entry {index}: {e}"))?;
                state.apply(&batch);
                report.batches += 1;
                report.events += batch.events_count() as u64;
            }
            applied = Some(index);
            if from_genesis
                && let Some((at, digest)) = snapshot_info
                && at == index
            {
                let replayed = state.digest();
                if replayed != digest {
                    return Err(format!(
                        "replaying the log to entry {at} gives state digest {replayed}, but the snapshot holds {digest}"
                    ));
                }
                report.snapshot_checked_by_replay = true;
            }
        }
    }
    if let Some(ledger) = state.unbalanced_ledger() {
        return Err(format!(
            "ledger {ledger}: debits and credits do not balance"
        ));
    }
    report.accounts = state.accounts_count();
    report.transfers = state.transfers_count();
    report.final_digest = state.digest();
    Ok(report)
}
