//! The Raft log on the journal: one entry per journal record, votes in a small durable file.
//!
//! The journal record's header already holds what a standard-Raft log id is (term, index); the
//! body is the whole entry (postcard). Appends go through the journal's group committer, so
//! many entries share an fsync; openraft is told an append is flushed only after that fsync.
//! The newest entries are also kept in memory, which is what replication to followers that keep
//! up and applying read; older ones are read back from the journal. Raft numbers entries from 0
//! and the journal from 1 ([`journal_index`]).
//!
//! The log runs unchanged on real files (a writer thread, real `fdatasync`) and on the
//! simulator's disk (a writer task whose syncs take simulated time): see [`StorageOptions`].

use std::collections::BTreeMap;
use std::io;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use journal::storage::{read_file, write_atomically};
use journal::{GroupCommitter, Journal, JournalOptions, Op, Ticket};
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{AsyncRuntime, RaftLogReader};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::storage_options::{PlantedBug, StorageOptions};
use crate::types::{LedgerConfig, LedgerEntry};

type Entry = LedgerEntry;
type LogId =
    openraft::LogId<<crate::types::StdLeaderId as openraft::vote::RaftLeaderId>::Committed>;
type Vote = openraft::impls::Vote<crate::types::StdLeaderId>;

/// The journal index of a Raft log index: Raft counts from 0, the journal from 1.
pub fn journal_index(raft_index: u64) -> u64 {
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

/// Decodes the entry a journal record holds, checking that it sits at its own index and term.
pub(crate) fn decode_entry(record: &journal::StoredRecord) -> io::Result<Entry> {
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
    Ok(entry)
}

/// What must survive a restart besides the entries.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Meta {
    vote: Option<Vote>,
    last_purged: Option<LogId>,
}

struct Inner {
    /// Journal index of the last record appended (or the base after a restart).
    journal_last: u64,
    /// The newest entries (at most `cached_entries_max`); older ones are read from the journal.
    entries: BTreeMap<u64, Entry>,
    /// The last entry in the log (the cache may hold none of the log after a truncation).
    last_log_id: Option<LogId>,
    meta: Meta,
}

/// One batch of appends, for the flusher to report once durable.
type Flush<C> = (Vec<Ticket>, Option<IOFlushed<C>>);

/// The Raft log storage of one replica. Clones share the same log.
pub struct LogStore<C: LedgerConfig> {
    inner: Arc<Mutex<Inner>>,
    committer: Arc<GroupCommitter>,
    reader: journal::JournalReader,
    flusher: mpsc::Sender<Flush<C>>,
    options: Arc<StorageOptions>,
    meta_path: Arc<PathBuf>,
}

impl<C: LedgerConfig> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        LogStore {
            inner: Arc::clone(&self.inner),
            committer: Arc::clone(&self.committer),
            reader: self.reader.clone(),
            flusher: self.flusher.clone(),
            options: Arc::clone(&self.options),
            meta_path: Arc::clone(&self.meta_path),
        }
    }
}

fn invalid(error: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error.to_string())
}

fn other(error: impl std::fmt::Display) -> io::Error {
    io::Error::other(error.to_string())
}

impl<C: LedgerConfig> LogStore<C> {
    /// The journal writer's counters (groups synced, records, bytes, sync time).
    pub fn journal_stats(&self) -> Arc<journal::GroupCommitStats> {
        Arc::clone(self.committer.stats())
    }

    /// Opens the log in `dir` (journal in `dir/journal`, votes in `dir/raft-meta.json`) of a
    /// replica of `machine` (refusing a directory of another), recovering it like any journal.
    /// Call it on the Raft runtime: it starts the flusher task (and, on simulated storage, the
    /// journal writer task) there.
    pub fn open(dir: &Path, options: &StorageOptions, machine: &str) -> io::Result<LogStore<C>> {
        let storage = options.storage.as_ref();
        storage.create_dir_all(dir)?;
        crate::data_dir::open(storage, dir, machine)?;
        let meta_path = dir.join("raft-meta.json");
        let meta: Meta = match read_file(storage, &meta_path)? {
            Some(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| invalid(format!("{}: {e}", meta_path.display())))?,
            None => Meta::default(),
        };
        let journal_options = JournalOptions {
            storage: Arc::clone(&options.storage),
            ..JournalOptions::default()
        };
        let (mut journal, recovery) =
            Journal::open(dir.join("journal"), journal_options).map_err(other)?;
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
                let entry = decode_entry(&record.map_err(other)?)?;
                last_log_id = Some(entry.log_id);
                entries.insert(entry.log_id.index(), entry);
                // Older entries stay on disk; the cache keeps the newest.
                if entries.len() > options.cached_entries_max {
                    entries.pop_first();
                }
            }
        }
        // Reconcile with a purge that went past the journal's end (a crash between recording the
        // purge and restarting the journal): restart it now.
        if let Some(purged) = &meta.last_purged
            && journal.last().index < journal_index(purged.index())
        {
            journal
                .restart_at(journal_index(purged.index()) + 1)
                .map_err(other)?;
        }
        let journal_last = journal.last().index;
        let reader = journal.reader();
        let committer = match &options.simulated_sync {
            None => GroupCommitter::spawn(
                journal,
                limits::JOURNAL_QUEUE_RECORDS_MAX,
                options.sync_observer.clone(),
            ),
            Some(delay) => {
                let (committer, mut writer) = GroupCommitter::driven(
                    journal,
                    limits::JOURNAL_QUEUE_RECORDS_MAX,
                    options.sync_observer.clone(),
                );
                let delay = Arc::clone(delay);
                drop(C::AsyncRuntime::spawn(async move {
                    while let Some(mut group) = writer.next_group().await {
                        writer.write(&mut group);
                        C::AsyncRuntime::sleep(delay()).await;
                        writer.sync_and_complete(group);
                    }
                }));
                committer
            }
        };
        // One flusher per log reports appends durable in the order they were made.
        let (flusher, mut flushes) = mpsc::channel::<Flush<C>>(limits::RAFT_LOG_FLUSHES_QUEUED_MAX);
        drop(C::AsyncRuntime::spawn(async move {
            while let Some((tickets, callback)) = flushes.recv().await {
                let mut outcome = Ok(());
                for ticket in tickets {
                    if let Err(error) = ticket.durable().await {
                        outcome = Err(other(error));
                        break;
                    }
                }
                if let Some(callback) = callback {
                    callback.io_completed(outcome);
                }
            }
        }));
        Ok(LogStore {
            inner: Arc::new(Mutex::new(Inner {
                journal_last,
                entries,
                last_log_id: last_log_id.or(meta.last_purged),
                meta,
            })),
            committer: Arc::new(committer),
            reader,
            flusher,
            options: Arc::new(options.clone()),
            meta_path: Arc::new(meta_path),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .expect("the log store lock is never poisoned")
    }

    fn save_meta(&self, meta: &Meta) -> io::Result<()> {
        let bytes = serde_json::to_vec(meta).map_err(invalid)?;
        write_atomically(self.options.storage.as_ref(), &self.meta_path, &bytes)
    }

    /// Queues `op` for the journal writer and waits until it is durable.
    async fn durably(&self, op: Op) -> io::Result<()> {
        let ticket = self.committer.send(op).await.map_err(other)?;
        ticket.durable().await.map_err(other)?;
        Ok(())
    }

    fn bug(&self, bug: PlantedBug) -> bool {
        self.options.planted_bug == Some(bug)
    }
}

impl<C: LedgerConfig> RaftLogReader<C> for LogStore<C> {
    async fn try_get_log_entries<
        RB: RangeBounds<u64> + Clone + std::fmt::Debug + openraft::OptionalSend,
    >(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        // The cached part is taken under the same lock as the bounds: taken later, appends in
        // between could have evicted its head, and the answer would skip entries.
        let (lo, cached) = {
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
            (lo..hi_exclusive, cached)
        };
        let mut out = Vec::with_capacity((lo.end - lo.start) as usize + cached.len());
        // The part older than the cache comes from the journal.
        for index in lo.clone() {
            // Older than the cache means written: a miss is a hole, which openraft must never
            // be given (on the apply path it would skip the entry).
            let Some(record) = self.reader.read(journal_index(index)).map_err(other)? else {
                if self.bug(PlantedBug::ShortRead) {
                    return Ok(out);
                }
                return Err(other(format!(
                    "Raft log entry {index} is neither cached nor in the journal"
                )));
            };
            out.push(decode_entry(&record)?);
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

impl<C: LedgerConfig> RaftLogStorage<C> for LogStore<C> {
    type LogReader = LogStore<C>;

    async fn get_log_state(&mut self) -> Result<LogState<C>, io::Error> {
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
        let meta = {
            let mut inner = self.lock();
            inner.meta.vote = Some(*vote);
            inner.meta.clone()
        };
        self.save_meta(&meta)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<C>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        // openraft calls the log's writing methods one at a time, so the operations reach the
        // writer in log order although the lock is released before they are queued.
        let mut ops = Vec::new();
        {
            let mut inner = self.lock();
            for entry in entries {
                let body = postcard::to_allocvec(&entry).map_err(invalid)?;
                let (term, index) = (
                    entry.log_id.committed_leader_id().term,
                    entry.log_id.index(),
                );
                ops.push(Op::Append {
                    term,
                    index: journal_index(index),
                    body,
                });
                inner.journal_last = journal_index(index);
                inner.last_log_id = Some(entry.log_id);
                inner.entries.insert(index, entry);
                // An entry leaves the cache only once the journal writer wrote it: until then a
                // read would not find it anywhere (and a short read silently skips entries).
                let written_only = !self.bug(PlantedBug::ShortRead);
                while inner.entries.len() > self.options.cached_entries_max
                    && let Some(&oldest) = inner.entries.keys().next()
                    && (!written_only || self.reader.holds(journal_index(oldest)))
                {
                    inner.entries.pop_first();
                }
            }
        }
        let mut tickets = Vec::with_capacity(ops.len());
        for op in ops {
            tickets.push(self.committer.send(op).await.map_err(other)?);
        }
        let callback = if self.bug(PlantedBug::AckBeforeFsync) {
            callback.io_completed(Ok(()));
            None
        } else {
            Some(callback)
        };
        self.flusher
            .send((tickets, callback))
            .await
            .map_err(|_| other("the raft log flusher stopped"))
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let op = {
            let mut inner = self.lock();
            match last_log_id {
                Some(last) => {
                    inner.entries.retain(|&index, _| index <= last.index());
                    inner.last_log_id = Some(last);
                    inner.journal_last = inner.journal_last.min(journal_index(last.index()));
                    Op::TruncateAfter(journal_index(last.index()))
                }
                None => {
                    inner.entries.clear();
                    inner.last_log_id = inner.meta.last_purged;
                    inner.journal_last = 0;
                    Op::TruncateAfter(0)
                }
            }
        };
        self.durably(op).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let (meta, op) = {
            let mut inner = self.lock();
            inner.entries.retain(|&index, _| index > log_id.index());
            inner.meta.last_purged = Some(log_id);
            if inner.last_log_id < Some(log_id) {
                inner.last_log_id = Some(log_id);
            }
            // A snapshot from the leader may cover more than this log holds: then the journal
            // restarts right after it, so that the next entry Raft appends fits.
            let op = if inner.journal_last < journal_index(log_id.index()) {
                inner.journal_last = journal_index(log_id.index());
                Op::RestartAt(journal_index(log_id.index()) + 1)
            } else {
                Op::PurgeBefore(journal_index(log_id.index()) + 1)
            };
            (inner.meta.clone(), op)
        };
        self.save_meta(&meta)?;
        self.durably(op).await
    }
}
