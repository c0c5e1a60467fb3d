//! Group commit: one writer thread that appends queued records and makes them durable with a
//! single `fdatasync` per group, then acknowledges each of them.
//!
//! The queue is bounded: a caller that finds it full waits, which pushes back on whoever feeds
//! it (the server's own bounded queues answer "busy"). After any write
//! or sync error the writer refuses everything that follows: a failed `fsync` leaves the page
//! cache in an unknown state, and only recovery from disk may continue.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use crate::error::{JournalError, Result};
use crate::journal::{Journal, Position};

/// Most records one group may hold (`limits::JOURNAL_GROUP_RECORDS_MAX`).
pub const GROUP_RECORDS_MAX: usize = limits::JOURNAL_GROUP_RECORDS_MAX;
/// Most body bytes one group may hold before it is synced (`limits::JOURNAL_GROUP_BYTES_MAX`).
pub const GROUP_BYTES_MAX: usize = limits::JOURNAL_GROUP_BYTES_MAX;

/// A durable record: where it landed in the journal.
pub type Appended = Position;

/// What the writer is asked to do, in order with everything else queued.
#[derive(Debug)]
pub enum Op {
    /// Appends record `index` (which must follow the last one).
    Append {
        term: u64,
        index: u64,
        body: Vec<u8>,
    },
    /// Nothing: completes once every record queued before it is durable, with the last position.
    Barrier,
    /// Removes every record after this index.
    TruncateAfter(u64),
    /// Deletes whole segments before this index.
    PurgeBefore(u64),
    /// Drops every record; the next append is this index.
    RestartAt(u64),
}

struct Request {
    op: Op,
    done: oneshot::Sender<Result<Appended, String>>,
}

impl Request {
    fn body_len(&self) -> usize {
        match &self.op {
            Op::Append { body, .. } => body.len(),
            Op::Barrier | Op::TruncateAfter(_) | Op::PurgeBefore(_) | Op::RestartAt(_) => 0,
        }
    }
}

/// Called after every successful sync with its duration and the records it made durable.
pub type SyncObserver = Arc<dyn Fn(std::time::Duration, u64) + Send + Sync>;

/// Counters of the writer, for metrics.
#[derive(Default)]
pub struct GroupCommitStats {
    /// Groups made durable, one successful sync each.
    pub groups: AtomicU64,
    /// Records those groups held.
    pub records: AtomicU64,
    /// Bytes those groups wrote.
    pub bytes: AtomicU64,
    /// Time spent in those syncs.
    pub sync_nanos_total: AtomicU64,
    /// The last sync's duration.
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

/// The handle to the writer: queue operations, get tickets.
pub struct GroupCommitter {
    sender: Option<mpsc::Sender<Request>>,
    /// The writer thread, when the committer runs its own ([`GroupCommitter::spawn`]).
    thread: Option<JoinHandle<Journal>>,
    stats: Arc<GroupCommitStats>,
}

/// The promise of a durable append (or of a completed control operation).
#[must_use = "a record is not durable until its ticket says so"]
pub struct Ticket(oneshot::Receiver<Result<Appended, String>>);

fn writer_stopped() -> JournalError {
    JournalError::Failed("the journal writer stopped".into())
}

impl Ticket {
    /// Waits, blocking the thread, until the record is durable (or the writer failed). Not on
    /// an async runtime's threads: use [`Ticket::durable`] there.
    pub fn wait(self) -> Result<Appended> {
        Self::outcome(self.0.blocking_recv())
    }

    /// Waits until the record is durable (or the writer failed).
    pub async fn durable(self) -> Result<Appended> {
        Self::outcome(self.0.await)
    }

    fn outcome(
        received: std::result::Result<Result<Appended, String>, oneshot::error::RecvError>,
    ) -> Result<Appended> {
        match received {
            Ok(Ok(position)) => Ok(position),
            Ok(Err(reason)) => Err(JournalError::Failed(reason)),
            Err(_) => Err(writer_stopped()),
        }
    }
}

impl GroupCommitter {
    /// Starts a writer thread, which owns `journal` until [`GroupCommitter::shutdown`].
    pub fn spawn(
        journal: Journal,
        queue_depth: usize,
        observer: Option<SyncObserver>,
    ) -> GroupCommitter {
        let (mut committer, writer) = GroupCommitter::driven(journal, queue_depth, observer);
        committer.thread = Some(
            std::thread::Builder::new()
                .name("journal-writer".into())
                .spawn(move || writer.run_blocking())
                .expect("spawning the journal writer thread"),
        );
        committer
    }

    /// A committer whose writer the caller drives (the simulator runs it as a task on its
    /// simulated runtime, so that a sync takes simulated time).
    pub fn driven(
        journal: Journal,
        queue_depth: usize,
        observer: Option<SyncObserver>,
    ) -> (GroupCommitter, JournalWriter) {
        assert!(queue_depth > 0);
        let (sender, receiver) = mpsc::channel::<Request>(queue_depth);
        let stats = Arc::new(GroupCommitStats {
            observer,
            ..GroupCommitStats::default()
        });
        let writer = JournalWriter {
            journal,
            receiver,
            stats: Arc::clone(&stats),
            failed: None,
        };
        let committer = GroupCommitter {
            sender: Some(sender),
            thread: None,
            stats,
        };
        (committer, writer)
    }

    pub fn stats(&self) -> &Arc<GroupCommitStats> {
        &self.stats
    }

    fn sender(&self) -> Result<&mpsc::Sender<Request>> {
        self.sender.as_ref().ok_or_else(writer_stopped)
    }

    /// Queues `op`, waiting for room if the queue is full.
    pub async fn send(&self, op: Op) -> Result<Ticket> {
        let (done, ticket) = oneshot::channel();
        self.sender()?
            .send(Request { op, done })
            .await
            .map_err(|_| writer_stopped())?;
        Ok(Ticket(ticket))
    }

    /// Queues `op`, blocking the thread while the queue is full. Not on an async runtime's
    /// threads: use [`GroupCommitter::send`] there.
    pub fn send_blocking(&self, op: Op) -> Result<Ticket> {
        let (done, ticket) = oneshot::channel();
        self.sender()?
            .blocking_send(Request { op, done })
            .map_err(|_| writer_stopped())?;
        Ok(Ticket(ticket))
    }

    /// Finishes everything queued, stops the writer and hands the journal back (when the
    /// committer runs its own thread; a driven writer keeps it).
    pub fn shutdown(mut self) -> Option<Journal> {
        self.stop()
    }

    fn stop(&mut self) -> Option<Journal> {
        drop(self.sender.take());
        self.thread
            .take()
            .map(|thread| thread.join().expect("the journal writer thread panicked"))
    }
}

impl Drop for GroupCommitter {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One group of queued operations, written together and made durable by one sync.
pub struct Group {
    requests: Vec<Request>,
    positions: Vec<Appended>,
    bytes: usize,
    records: u64,
    outcome: Result<()>,
}

/// The writer's side: owns the journal, takes groups from the queue, writes and syncs them.
pub struct JournalWriter {
    journal: Journal,
    receiver: mpsc::Receiver<Request>,
    stats: Arc<GroupCommitStats>,
    /// After a failed write or sync, everything that follows is refused with this reason.
    failed: Option<String>,
}

impl JournalWriter {
    /// The writer thread's loop: until every handle is gone.
    pub fn run_blocking(mut self) -> Journal {
        while let Some(first) = self.receiver.blocking_recv() {
            let mut group = self.gather(first);
            self.write(&mut group);
            self.sync_and_complete(group);
        }
        self.journal
    }

    /// Waits for the next operation and takes it with whatever else is queued (up to the group
    /// limits). `None` once every handle is gone.
    pub async fn next_group(&mut self) -> Option<Group> {
        let first = self.receiver.recv().await?;
        Some(self.gather(first))
    }

    fn gather(&mut self, first: Request) -> Group {
        let mut bytes = first.body_len();
        let mut requests = Vec::with_capacity(GROUP_RECORDS_MAX);
        requests.push(first);
        while requests.len() < GROUP_RECORDS_MAX && bytes < GROUP_BYTES_MAX {
            match self.receiver.try_recv() {
                Ok(request) => {
                    bytes += request.body_len();
                    requests.push(request);
                }
                Err(_) => break,
            }
        }
        Group {
            positions: Vec::with_capacity(requests.len()),
            requests,
            bytes,
            records: 0,
            outcome: Ok(()),
        }
    }

    /// Carries out the group's operations on the journal (appends are not durable yet).
    pub fn write(&mut self, group: &mut Group) {
        if self.failed.is_some() {
            return;
        }
        let journal = &mut self.journal;
        for request in &group.requests {
            let done = match &request.op {
                Op::Append { term, index, body } => {
                    let appended = journal.append(*term, *index, body);
                    group.records += u64::from(appended.is_ok());
                    appended
                }
                // Answered after the sync, with the position of everything before it.
                Op::Barrier => Ok(journal.last()),
                Op::TruncateAfter(index) => journal.truncate_after(*index).map(|()| journal.last()),
                Op::RestartAt(next_index) => {
                    journal.restart_at(*next_index).map(|()| journal.last())
                }
                Op::PurgeBefore(index) => journal.purge_before(*index).map(|_| journal.last()),
            };
            match done {
                Ok(position) => group.positions.push(position),
                Err(error) => {
                    group.outcome = Err(error);
                    return;
                }
            }
        }
    }

    /// Makes the written group durable with one sync, then completes its tickets (or fails
    /// them, and everything after them, if a write or the sync failed).
    pub fn sync_and_complete(&mut self, group: Group) {
        let Group {
            requests,
            positions,
            bytes,
            records,
            outcome,
        } = group;
        if let Some(reason) = &self.failed {
            for request in requests {
                let _ = request.done.send(Err(reason.clone()));
            }
            return;
        }
        let started = Instant::now();
        let outcome = outcome.and_then(|()| self.journal.sync());
        let sync_nanos = started.elapsed().as_nanos() as u64;
        match outcome {
            Ok(()) => {
                let stats = &self.stats;
                stats.groups.fetch_add(1, Ordering::Relaxed);
                stats.records.fetch_add(records, Ordering::Relaxed);
                stats.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
                stats
                    .sync_nanos_total
                    .fetch_add(sync_nanos, Ordering::Relaxed);
                stats.sync_nanos_last.store(sync_nanos, Ordering::Relaxed);
                if let Some(observer) = &stats.observer {
                    observer(std::time::Duration::from_nanos(sync_nanos), records);
                }
                for (request, position) in requests.into_iter().zip(positions) {
                    let _ = request.done.send(Ok(position));
                }
            }
            Err(error) => {
                let reason = error.to_string();
                for request in requests {
                    let _ = request.done.send(Err(reason.clone()));
                }
                self.failed = Some(reason);
            }
        }
    }

    /// The journal, once the writer is done with it.
    pub fn into_journal(self) -> Journal {
        self.journal
    }
}
