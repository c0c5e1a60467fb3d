//! Group commit: one writer thread that appends queued records and makes them durable with a
//! single `fdatasync` per group, then acknowledges each of them.
//!
//! The queue is bounded: a caller that finds it full waits, which pushes back on whoever feeds
//! it (the server's own bounded queues answer "busy"). After any write
//! or sync error the writer refuses everything that follows: a failed `fsync` leaves the page
//! cache in an unknown state, and only recovery from disk may continue.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;
use std::time::Instant;

use crate::error::{JournalError, Result};
use crate::journal::{Journal, Position};

/// Most records one group may hold (`limits::JOURNAL_GROUP_RECORDS_MAX`).
pub const GROUP_RECORDS_MAX: usize = limits::JOURNAL_GROUP_RECORDS_MAX;
/// Most body bytes one group may hold before it is synced (`limits::JOURNAL_GROUP_BYTES_MAX`).
pub const GROUP_BYTES_MAX: usize = limits::JOURNAL_GROUP_BYTES_MAX;

/// A durable record: where it landed in the journal.
pub type Appended = Position;

enum Request {
    Append {
        term: u64,
        index: u64,
        body: Vec<u8>,
        done: SyncSender<Result<Appended, String>>,
    },
    /// Completes once every record queued before it is durable, with the last position.
    Barrier {
        done: SyncSender<Result<Appended, String>>,
    },
    /// Removes every record after `index` (durable on completion).
    TruncateAfter {
        index: u64,
        done: SyncSender<Result<Appended, String>>,
    },
    /// Deletes whole segments before `index`.
    PurgeBefore {
        index: u64,
        done: SyncSender<Result<Appended, String>>,
    },
    /// Drops every record; the next append is `next_index`.
    RestartAt {
        next_index: u64,
        done: SyncSender<Result<Appended, String>>,
    },
}

impl Request {
    fn body_len(&self) -> usize {
        match self {
            Request::Append { body, .. } => body.len(),
            Request::Barrier { .. }
            | Request::TruncateAfter { .. }
            | Request::PurgeBefore { .. }
            | Request::RestartAt { .. } => 0,
        }
    }

    fn done(self) -> SyncSender<Result<Appended, String>> {
        match self {
            Request::Append { done, .. }
            | Request::Barrier { done }
            | Request::TruncateAfter { done, .. }
            | Request::PurgeBefore { done, .. }
            | Request::RestartAt { done, .. } => done,
        }
    }
}

/// Called after every successful sync with its duration and the records it made durable.
pub type SyncObserver = Arc<dyn Fn(std::time::Duration, u64) + Send + Sync>;

/// Counters of the writer, for metrics.
#[derive(Default)]
pub struct GroupCommitStats {
    pub groups: AtomicU64,
    pub records: AtomicU64,
    pub bytes: AtomicU64,
    pub sync_nanos_total: AtomicU64,
    pub sync_nanos_last: AtomicU64,
    observer: Option<SyncObserver>,
}

impl std::fmt::Debug for GroupCommitStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommitStats")
            .field("groups", &self.groups)
            .field("records", &self.records)
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

/// The handle to the writer thread.
pub struct GroupCommitter {
    sender: Option<SyncSender<Request>>,
    thread: Option<JoinHandle<Journal>>,
    stats: Arc<GroupCommitStats>,
}

/// The promise of a durable append.
#[must_use = "a record is not durable until its ticket says so"]
pub struct Ticket(Receiver<Result<Appended, String>>);

impl Ticket {
    /// Waits until the record is durable (or the writer failed).
    pub fn wait(self) -> Result<Appended> {
        match self.0.recv() {
            Ok(Ok(position)) => Ok(position),
            Ok(Err(reason)) => Err(JournalError::Failed(reason)),
            Err(_) => Err(JournalError::Failed("the journal writer stopped".into())),
        }
    }
}

impl GroupCommitter {
    /// Starts the writer thread, which owns `journal` until [`GroupCommitter::shutdown`].
    pub fn spawn(
        journal: Journal,
        queue_depth: usize,
        observer: Option<SyncObserver>,
    ) -> GroupCommitter {
        assert!(queue_depth > 0);
        let (sender, receiver) = mpsc::sync_channel::<Request>(queue_depth);
        let stats = Arc::new(GroupCommitStats {
            observer,
            ..GroupCommitStats::default()
        });
        let thread_stats = Arc::clone(&stats);
        let thread = std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || writer_loop(journal, receiver, &thread_stats))
            .expect("spawning the journal writer thread");
        GroupCommitter {
            sender: Some(sender),
            thread: Some(thread),
            stats,
        }
    }

    pub fn stats(&self) -> &Arc<GroupCommitStats> {
        &self.stats
    }

    /// Queues record `index`, waiting for room if the queue is full.
    pub fn append(&self, term: u64, index: u64, body: Vec<u8>) -> Result<Ticket> {
        let (done, ticket) = mpsc::sync_channel(1);
        self.sender
            .as_ref()
            .expect("running")
            .send(Request::Append {
                term,
                index,
                body,
                done,
            })
            .map_err(|_| JournalError::Failed("the journal writer stopped".into()))?;
        Ok(Ticket(ticket))
    }

    /// A ticket that completes once every record queued so far is durable; it carries the
    /// journal's last position at that moment.
    pub fn barrier(&self) -> Result<Ticket> {
        let (done, ticket) = mpsc::sync_channel(1);
        self.sender
            .as_ref()
            .expect("running")
            .send(Request::Barrier { done })
            .map_err(|_| JournalError::Failed("the journal writer stopped".into()))?;
        Ok(Ticket(ticket))
    }

    /// Removes every record after `index`, in order with the appends around it; the ticket
    /// completes (with the new last position) once that is durable.
    pub fn truncate_after(&self, index: u64) -> Result<Ticket> {
        self.control(|done| Request::TruncateAfter { index, done })
    }

    /// Deletes whole segments whose records are all before `index`.
    pub fn purge_before(&self, index: u64) -> Result<Ticket> {
        self.control(|done| Request::PurgeBefore { index, done })
    }

    /// Drops every record, in order with the appends around it; the next append must be
    /// `next_index`.
    pub fn restart_at(&self, next_index: u64) -> Result<Ticket> {
        self.control(|done| Request::RestartAt { next_index, done })
    }

    fn control(
        &self,
        request: impl FnOnce(SyncSender<Result<Appended, String>>) -> Request,
    ) -> Result<Ticket> {
        let (done, ticket) = mpsc::sync_channel(1);
        self.sender
            .as_ref()
            .expect("running")
            .send(request(done))
            .map_err(|_| JournalError::Failed("the journal writer stopped".into()))?;
        Ok(Ticket(ticket))
    }

    /// Finishes everything queued, stops the thread and hands the journal back.
    pub fn shutdown(mut self) -> Journal {
        self.stop()
    }

    fn stop(&mut self) -> Journal {
        drop(self.sender.take());
        self.thread
            .take()
            .expect("running")
            .join()
            .expect("the journal writer thread panicked")
    }
}

impl Drop for GroupCommitter {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop();
        }
    }
}

fn writer_loop(
    mut journal: Journal,
    receiver: Receiver<Request>,
    stats: &GroupCommitStats,
) -> Journal {
    let mut failed: Option<String> = None;
    let mut group: Vec<Request> = Vec::with_capacity(GROUP_RECORDS_MAX);
    while let Ok(first) = receiver.recv() {
        let mut group_bytes = first.body_len();
        group.push(first);
        while group.len() < GROUP_RECORDS_MAX && group_bytes < GROUP_BYTES_MAX {
            match receiver.try_recv() {
                Ok(request) => {
                    group_bytes += request.body_len();
                    group.push(request);
                }
                Err(_) => break,
            }
        }
        if let Some(reason) = &failed {
            for request in group.drain(..) {
                let _ = request.done().send(Err(reason.clone()));
            }
            continue;
        }
        let mut positions = Vec::with_capacity(group.len());
        let mut outcome = Ok(());
        let mut records = 0u64;
        for request in &group {
            match request {
                Request::Append {
                    term, index, body, ..
                } => match journal.append(*term, *index, body) {
                    Ok(position) => {
                        positions.push(position);
                        records += 1;
                    }
                    Err(error) => {
                        outcome = Err(error);
                        break;
                    }
                },
                // Answered after the sync, with the position of everything before it.
                Request::Barrier { .. } => positions.push(journal.last()),
                Request::TruncateAfter { index, .. } => match journal.truncate_after(*index) {
                    Ok(()) => positions.push(journal.last()),
                    Err(error) => {
                        outcome = Err(error);
                        break;
                    }
                },
                Request::RestartAt { next_index, .. } => match journal.restart_at(*next_index) {
                    Ok(()) => positions.push(journal.last()),
                    Err(error) => {
                        outcome = Err(error);
                        break;
                    }
                },
                Request::PurgeBefore { index, .. } => match journal.purge_before(*index) {
                    Ok(_) => positions.push(journal.last()),
                    Err(error) => {
                        outcome = Err(error);
                        break;
                    }
                },
            }
        }
        let started = Instant::now();
        let outcome = outcome.and_then(|()| journal.sync());
        let sync_nanos = started.elapsed().as_nanos() as u64;
        match outcome {
            Ok(()) => {
                stats.groups.fetch_add(1, Ordering::Relaxed);
                stats.records.fetch_add(records, Ordering::Relaxed);
                stats.bytes.fetch_add(group_bytes as u64, Ordering::Relaxed);
                stats
                    .sync_nanos_total
                    .fetch_add(sync_nanos, Ordering::Relaxed);
                stats.sync_nanos_last.store(sync_nanos, Ordering::Relaxed);
                if let Some(observer) = &stats.observer {
                    observer(std::time::Duration::from_nanos(sync_nanos), records);
                }
                for (request, position) in group.drain(..).zip(positions) {
                    let _ = request.done().send(Ok(position));
                }
            }
            Err(error) => {
                let reason = error.to_string();
                for request in group.drain(..) {
                    let _ = request.done().send(Err(reason.clone()));
                }
                failed = Some(reason);
            }
        }
    }
    journal
}
