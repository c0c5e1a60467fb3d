//! The Raft log on the journal: one entry per journal record, votes in a small durable file.
//!
//! The journal record's header already holds what a standard-Raft log id is (term, index); the
//! body is the whole entry (postcard). Appends go through the journal's group committer, so
//! many entries share an fsync; openraft is told an append is flushed only after that fsync.
//! Entries not yet purged (covered by a snapshot) are also kept in memory, which is what
//! replication to followers reads. Raft numbers entries from 0 and the journal from 1, so
//! journal record `i + 1` holds Raft entry `i`.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};

use journal::{GroupCommitter, Journal, JournalOptions, SyncObserver, Ticket};
use openraft::RaftLogReader;
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::type_config::alias::{EntryOf, LogIdOf, VoteOf};
use serde::{Deserialize, Serialize};

use crate::types::TypeConfig;

type Entry = EntryOf<TypeConfig>;
type LogId = LogIdOf<TypeConfig>;
type Vote = VoteOf<TypeConfig>;

/// Entries kept in memory (about 1 MiB each when full): what replication to followers that keep
/// up and applying read. Anything older is read back from the journal.
const CACHED_ENTRIES_MAX: usize = 256;

/// The journal index of a Raft log index.
fn journal_index(raft_index: u64) -> u64 {
    raft_index + 1
}

/// The inclusive bounds of the log indexes `range` asks for, within the log's `first..=last`
/// (`None` when it asks for nothing).
pub fn clamp_range(range: &impl RangeBounds<u64>, first: u64, last: u64) -> Option<(u64, u64)> {
    use std::ops::Bound;
    let lo = match range.start_bound() {
        Bound::Included(&a) => a,
        Bound::Excluded(&a) => a.checked_add(1)?,
        Bound::Unbounded => first,
    }
    .max(first);
    let hi = match range.end_bound() {
        Bound::Included(&b) => b,
        Bound::Excluded(&b) => b.checked_sub(1)?,
        Bound::Unbounded => last,
    }
    .min(last);
    (lo <= hi).then_some((lo, hi))
}

/// What must survive a restart besides the entries.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Meta {
    vote: Option<Vote>,
    last_purged: Option<LogId>,
}

struct Inner {
    committer: GroupCommitter,
    /// Journal index of the last record appended (or the base after a restart).
    journal_last: u64,
    /// The newest entries (at most `CACHED_ENTRIES_MAX`); older ones are read from the journal.
    entries: BTreeMap<u64, Entry>,
    reader: journal::JournalReader,
    /// The last entry in the log (the cache may hold none of the log after a truncation).
    last_log_id: Option<LogId>,
    meta: Meta,
    meta_path: PathBuf,
    flusher: mpsc::Sender<(Vec<Ticket>, IOFlushed<TypeConfig>)>,
}

/// The Raft log storage of one replica. Clones share the same log.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<Inner>>,
}

fn invalid(error: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error.to_string())
}

fn other(error: impl std::fmt::Display) -> io::Error {
    io::Error::other(error.to_string())
}

/// Writes `bytes` to `path` atomically and durably.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)?;
    File::open(path.parent().expect("a file has a directory"))?.sync_all()
}

impl LogStore {
    /// Opens the log in `dir` (journal in `dir/journal`, votes in `dir/raft-meta.json`),
    /// recovering it like any journal.
    pub fn open(dir: &Path, sync_observer: Option<SyncObserver>) -> io::Result<LogStore> {
        fs::create_dir_all(dir)?;
        let meta_path = dir.join("raft-meta.json");
        let meta: Meta = match fs::read(&meta_path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| invalid(format!("{}: {e}", meta_path.display())))?,
            Err(error) if error.kind() == io::ErrorKind::NotFound => Meta::default(),
            Err(error) => return Err(error),
        };
        let (journal, recovery) =
            Journal::open(dir.join("journal"), JournalOptions::default()).map_err(other)?;
        if let Some(torn) = &recovery.torn_tail {
            tracing::warn!(path = %torn.path.display(), bytes = torn.bytes, "cut a torn write off the end of the Raft log");
        }
        let mut entries = BTreeMap::new();
        let mut last_log_id: Option<LogId> = None;
        let first = journal.first_index().max(
            meta.last_purged
                .as_ref()
                .map_or(1, |l| journal_index(l.index()) + 1),
        );
        if first <= journal.last().index {
            for record in journal.read_from(first, false).map_err(other)? {
                let record = record.map_err(other)?;
                let entry: Entry = postcard::from_bytes(&record.body).map_err(|e| {
                    invalid(format!(
                        "journal record {} is not a Raft entry ({e}); was this data directory written by an older fincore?",
                        record.index
                    ))
                })?;
                if journal_index(entry.log_id.index()) != record.index
                    || entry.log_id.committed_leader_id().term != record.term
                {
                    return Err(invalid(format!(
                        "journal record {} holds entry {}",
                        record.index, entry.log_id
                    )));
                }
                last_log_id = Some(entry.log_id);
                entries.insert(entry.log_id.index(), entry);
                // Older entries stay on disk; the cache keeps the newest.
                if entries.len() > CACHED_ENTRIES_MAX {
                    entries.pop_first();
                }
            }
        }
        // Reconcile with a purge that went past the journal's end (a crash between recording the
        // purge and restarting the journal): restart it now.
        let mut journal = journal;
        if let Some(purged) = &meta.last_purged
            && journal.last().index < journal_index(purged.index())
        {
            journal
                .restart_at(journal_index(purged.index()) + 1)
                .map_err(other)?;
        }
        let journal_last = journal.last().index;
        let reader = journal.reader();
        let committer = GroupCommitter::spawn(journal, 64, sync_observer);
        let (flusher, flushes) = mpsc::channel::<(Vec<Ticket>, IOFlushed<TypeConfig>)>();
        std::thread::Builder::new()
            .name("raft-log-flusher".into())
            .spawn(move || {
                for (tickets, callback) in flushes {
                    let mut outcome = Ok(());
                    for ticket in tickets {
                        if let Err(error) = ticket.wait() {
                            outcome = Err(other(error));
                            break;
                        }
                    }
                    callback.io_completed(outcome);
                }
            })
            .expect("spawning the raft log flusher");
        Ok(LogStore {
            inner: Arc::new(Mutex::new(Inner {
                committer,
                journal_last,
                entries,
                reader,
                last_log_id: last_log_id.or(meta.last_purged),
                meta,
                meta_path,
                flusher,
            })),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .expect("the log store lock is never poisoned")
    }

    fn save_meta(inner: &Inner) -> io::Result<()> {
        let bytes = serde_json::to_vec(&inner.meta).map_err(invalid)?;
        write_atomically(&inner.meta_path, &bytes)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<
        RB: RangeBounds<u64> + Clone + std::fmt::Debug + openraft::OptionalSend,
    >(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        // The cached part is taken under the same lock as the bounds: taken later, appends in
        // between could have evicted its head, and the answer would skip entries.
        let (reader, lo, cached) = {
            let inner = self.lock();
            let first = inner.meta.last_purged.map_or(0, |l| l.index() + 1);
            let last = inner.last_log_id.map(|l| l.index());
            let Some(last) = last.or_else(|| first.checked_sub(1)) else {
                return Ok(Vec::new());
            };
            let Some((lo, hi)) = clamp_range(&range, first, last) else {
                return Ok(Vec::new());
            };
            let cached: Vec<Entry> = inner
                .entries
                .range(lo..=hi)
                .map(|(_, entry)| entry.clone())
                .collect();
            let hi_exclusive = cached.first().map_or(hi + 1, |e| e.log_id.index());
            (inner.reader.clone(), lo..hi_exclusive, cached)
        };
        let mut out = Vec::with_capacity((lo.end - lo.start) as usize + cached.len());
        // The part older than the cache comes from the journal.
        for index in lo.clone() {
            // Older than the cache means written: a miss is a hole, which openraft must never
            // be given (on the apply path it would skip the entry).
            let record = reader
                .read(journal_index(index))
                .map_err(other)?
                .ok_or_else(|| {
                    other(format!(
                        "Raft log entry {index} is neither cached nor in the journal"
                    ))
                })?;
            out.push(postcard::from_bytes::<Entry>(&record.body).map_err(invalid)?);
        }
        out.extend(cached);
        if let Some(hole) = out
            .iter()
            .enumerate()
            .find(|(k, e)| e.log_id.index() != lo.start + *k as u64)
        {
            return Err(other(format!(
                "Raft log read from {} found entry {} out of place",
                lo.start, hole.1.log_id
            )));
        }
        Ok(out)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.lock().meta.vote)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let inner = self.lock();
        let last_purged_log_id = inner.meta.last_purged;
        let last_log_id = inner.last_log_id.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let mut inner = self.lock();
        inner.meta.vote = Some(*vote);
        LogStore::save_meta(&inner)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let mut inner = self.lock();
        let mut tickets = Vec::new();
        for entry in entries {
            let body = postcard::to_allocvec(&entry).map_err(invalid)?;
            let (term, index) = (
                entry.log_id.committed_leader_id().term,
                entry.log_id.index(),
            );
            tickets.push(
                inner
                    .committer
                    .append(term, journal_index(index), body)
                    .map_err(other)?,
            );
            inner.journal_last = journal_index(index);
            inner.last_log_id = Some(entry.log_id);
            inner.entries.insert(index, entry);
            // An entry leaves the cache only once the journal writer wrote it: until then a
            // read would not find it anywhere (and a short read silently skips entries).
            while inner.entries.len() > CACHED_ENTRIES_MAX
                && let Some(&oldest) = inner.entries.keys().next()
                && inner.reader.holds(journal_index(oldest))
            {
                inner.entries.pop_first();
            }
        }
        inner
            .flusher
            .send((tickets, callback))
            .map_err(|_| other("the raft log flusher stopped"))?;
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let mut inner = self.lock();
        let ticket = match last_log_id {
            Some(last) => {
                inner.entries.retain(|&index, _| index <= last.index());
                inner.last_log_id = Some(last);
                inner.journal_last = inner.journal_last.min(journal_index(last.index()));
                inner.committer.truncate_after(journal_index(last.index()))
            }
            None => {
                inner.entries.clear();
                inner.last_log_id = inner.meta.last_purged;
                inner.journal_last = 0;
                inner.committer.truncate_after(0)
            }
        }
        .map_err(other)?;
        drop(inner);
        ticket.wait().map_err(other)?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let mut inner = self.lock();
        inner.entries.retain(|&index, _| index > log_id.index());
        inner.meta.last_purged = Some(log_id);
        if inner.last_log_id < Some(log_id) {
            inner.last_log_id = Some(log_id);
        }
        LogStore::save_meta(&inner)?;
        // A snapshot from the leader may cover more than this log holds: then the journal
        // restarts right after it, so that the next entry Raft appends fits.
        let ticket = if inner.journal_last < journal_index(log_id.index()) {
            inner.journal_last = journal_index(log_id.index());
            inner
                .committer
                .restart_at(journal_index(log_id.index()) + 1)
        } else {
            inner
                .committer
                .purge_before(journal_index(log_id.index()) + 1)
        }
        .map_err(other)?;
        drop(inner);
        ticket.wait().map_err(other)?;
        Ok(())
    }
}
