//! Projecting one group: read from its stored offset on, write whole batches, one transaction
//! (several batches, at most about `PROJECTOR_TRANSACTION_EVENTS_MAX` events) with the offset.
//!
//! Owns the writer loop and its bounds: pages queued from the reader
//! (`PROJECTOR_PAGES_QUEUED_MAX`), events gathered into one transaction, and the longest batch
//! accepted (`PROJECTOR_BATCH_EVENTS_MAX`; a batch still open past it is a broken stream). It
//! must not interpret events (that is `model`) or speak SQL (that is `sink`).

use std::sync::Arc;
use std::time::Instant;

use ledger::{Event, EventKind};
use limits::{
    PROJECTOR_BATCH_EVENTS_MAX, PROJECTOR_PAGES_QUEUED_MAX, PROJECTOR_TRANSACTION_EVENTS_MAX,
};
use tokio::sync::mpsc;

use crate::ProjectError;
use crate::model::Changes;
use crate::nats::GroupStream;
use crate::sink::{Sink, Target};
use crate::source::{Replicas, SourceError};

/// Where a group's events are read: its replicas, or its JetStream stream (back-filled from
/// the replicas). Either sends contiguous pages from an offset on.
pub enum Reader {
    Replicas(Arc<Replicas>),
    Nats(Arc<GroupStream>),
}

impl Reader {
    fn group(&self) -> &str {
        match self {
            Reader::Replicas(replicas) => replicas.group(),
            Reader::Nats(stream) => stream.group(),
        }
    }

    async fn follow(&self, after: u64, pages: mpsc::Sender<Vec<Event>>) -> Result<(), SourceError> {
        match self {
            Reader::Replicas(replicas) => replicas.follow(after, pages).await,
            Reader::Nats(stream) => stream.follow(after, pages).await,
        }
    }
}

/// Projects the group `reader` reads into `target` until the source fails for good or the
/// database refuses a write; never returns `Ok` (the stream has no end).
pub async fn project_group(
    target: &Target,
    reader: Reader,
    progress: &telemetry::FollowGroup,
) -> Result<(), ProjectError> {
    let group = reader.group().to_string();
    let mut sink = Sink::open(target, false).await?;
    let offset = sink.offset(&group).await?;
    // The read model holds every event up to its offset, whichever run projected them.
    progress.at(offset);
    let mut history = sink.history_accounts().await?;
    tracing::info!(%group, offset, "projecting from the stored offset");
    let (pages_tx, mut pages) = mpsc::channel::<Vec<Event>>(PROJECTOR_PAGES_QUEUED_MAX);
    let reader = tokio::spawn(async move { reader.follow(offset, pages_tx).await });
    // Cancelled (its task aborted, as `fincore dev` does on stop), this future must not leave
    // the reader and its subscription running.
    let _reader_stops_with_us = AbortOnDrop(reader.abort_handle());
    let mut buffered: Vec<Event> = Vec::new();
    let outcome = loop {
        let Some(page) = pages.recv().await else {
            break None;
        };
        buffered.extend(page);
        while buffered.len() < PROJECTOR_TRANSACTION_EVENTS_MAX {
            match pages.try_recv() {
                Ok(page) => buffered.extend(page),
                Err(_) => break,
            }
        }
        let whole = buffered
            .iter()
            .rposition(|event| event.kind == EventKind::Batch)
            .map_or(0, |at| at + 1);
        if whole > 0 {
            let started = Instant::now();
            let changes = Changes::fold(&buffered[..whole], &mut history)?;
            if let Err(error) = sink.apply(&group, &changes).await {
                break Some(error.into());
            }
            progress.done(changes.last_seq, whole as u64, started.elapsed());
            tracing::debug!(%group, last_seq = changes.last_seq, events = whole,
                elapsed_ms = started.elapsed().as_millis() as u64, "written");
            buffered.drain(..whole);
        }
        if buffered.len() > PROJECTOR_BATCH_EVENTS_MAX {
            break Some(ProjectError::BatchTooLong {
                group: group.clone(),
                first_seq: buffered[0].seq,
                events: buffered.len(),
            });
        }
    };
    drop(pages);
    if let Some(error) = outcome {
        // The reader may be waiting on an idle replica, not on the closed queue: stop it now
        // rather than wait for events that may never come.
        reader.abort();
        return Err(error);
    }
    let read = reader
        .await
        .map_err(|e| ProjectError::Task(e.to_string()))?;
    Err(read
        .err()
        .map_or(ProjectError::Task("the reader stopped".into()), Into::into))
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
