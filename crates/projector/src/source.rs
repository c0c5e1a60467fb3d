//! Reading one group's change events from its replicas, contiguously, from an offset on.
//!
//! Owns failing over between a group's replicas (any replica serves the same events), the gap
//! check of every page (an event whose seq is not the one expected is a gap: back-filled with
//! `read_events` before going on; an event already seen is dropped), and reporting a replica
//! that no longer has the events asked for ("gone"). It must not write anything: pages go to
//! the writer through a bounded channel.

use std::time::Duration;

use client::{Client, ClientError, GroupSpec, RetryPolicy};
use ledger::{Event, EventKind};
use limits::{
    EVENTS_PAGE_EVENTS_MAX, PROJECTOR_BACKFILL_CHUNK_EVENTS, PROJECTOR_BATCH_EVENTS_MAX,
    PROJECTOR_PAGE_EVENTS_MAX, PROJECTOR_RETRY_BACKOFF_MS_MAX,
};
use tokio::sync::mpsc;

/// Why a group's events could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    #[error("group {group}: {url}: {source}")]
    Client {
        group: String,
        url: String,
        #[source]
        source: ClientError,
    },
    /// Every replica answered "gone": none still has the events after `after`.
    #[error(
        "group {group}: the events after {after} are gone from every replica ({firsts}): the read model cannot continue from its offset; rebuild it (--rebuild) from replicas that keep the whole stream"
    )]
    Gone {
        group: String,
        after: u64,
        firsts: String,
    },
    #[error("group {group}: NATS {url}: {reason}")]
    Nats {
        group: String,
        url: String,
        reason: String,
    },
    #[error("group {group}: {url}: a gap from {after} to {seq} that the replica does not fill")]
    Unfilled {
        group: String,
        url: String,
        after: u64,
        seq: u64,
    },
}

/// One client per replica (so that a replica answering "gone" can be told apart from another).
pub struct Replicas {
    group: String,
    urls: Vec<String>,
    clients: Vec<Client>,
    /// Events of whole batches a back-fill gathers before passing them on
    /// (`PROJECTOR_BACKFILL_CHUNK_EVENTS` unless a test makes it small).
    backfill_chunk_events: usize,
}

/// How reading a gap, or part of it, stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Filled {
    /// The gap is filled: `after` is the event before `until`.
    Gap,
    /// A chunk is full: pass it on, then go on from `after`.
    Chunk,
}

/// What a reader passes on to the writer: events gathered, then sent as one page on the
/// bounded queue; and the last event sent (what the writer will have), where reading must
/// start again after an error.
pub struct Outbox<'a> {
    pages: &'a mpsc::Sender<Vec<Event>>,
    events: Vec<Event>,
    sent_seq: u64,
}

impl<'a> Outbox<'a> {
    /// An empty outbox onto `pages`, everything up to `after` taken as sent.
    pub fn new(pages: &'a mpsc::Sender<Vec<Event>>, after: u64, capacity: usize) -> Outbox<'a> {
        Outbox {
            pages,
            events: Vec::with_capacity(capacity),
            sent_seq: after,
        }
    }

    /// The events gathered and not yet sent.
    pub fn events(&mut self) -> &mut Vec<Event> {
        &mut self.events
    }

    /// The last event sent (or the `after` the outbox started from).
    pub fn sent_seq(&self) -> u64 {
        self.sent_seq
    }

    /// Sends what is gathered, if anything, as one page (waiting while the queue is full).
    /// Answers `false` when the writer is gone.
    pub async fn send(&mut self) -> bool {
        let Some(last_seq) = self.events.last().map(|e| e.seq) else {
            return true;
        };
        debug_assert!(last_seq > self.sent_seq);
        debug_assert!(self.events.len() <= PROJECTOR_PAGE_EVENTS_MAX);
        if self
            .pages
            .send(std::mem::take(&mut self.events))
            .await
            .is_err()
        {
            return false;
        }
        self.sent_seq = last_seq;
        true
    }

    /// Ends a pass that gathered into this outbox: on success sends what is left (`false`
    /// when the writer is gone); on an error leaves `after` at the last event sent (what was
    /// sent will be written, nothing after it was passed on), so the next read starts there.
    pub async fn finish(
        mut self,
        gathered: Result<bool, SourceError>,
        after: &mut u64,
    ) -> Result<bool, SourceError> {
        match gathered {
            Ok(true) => Ok(self.send().await),
            Ok(false) => Ok(false),
            Err(error) => {
                *after = self.sent_seq;
                Err(error)
            }
        }
    }
}

/// The projector's bounded exponential backoff between tries (from
/// [`RETRY_BACKOFF_MS_INITIAL`] up to `PROJECTOR_RETRY_BACKOFF_MS_MAX`).
pub(crate) fn backoff() -> cdc::Backoff {
    cdc::Backoff::between(RETRY_BACKOFF_MS_INITIAL, PROJECTOR_RETRY_BACKOFF_MS_MAX)
}

/// The first wait before asking a replica or NATS again.
const RETRY_BACKOFF_MS_INITIAL: u64 = 100;

impl Replicas {
    /// Clients of every replica of `group` (they connect lazily; call inside a Tokio runtime).
    pub fn connect(group: &GroupSpec, api_key: Option<&str>) -> Result<Replicas, SourceError> {
        let policy = RetryPolicy {
            attempts_max: 3,
            elapsed_max: Duration::from_secs(5),
            ..RetryPolicy::default()
        };
        let clients = group
            .replicas
            .iter()
            .map(|url| {
                group
                    .client(url, policy.clone(), api_key)
                    .map_err(|source| SourceError::Client {
                        group: group.name.clone(),
                        url: url.clone(),
                        source,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Replicas {
            group: group.name.clone(),
            urls: group.replicas.clone(),
            clients,
            backfill_chunk_events: PROJECTOR_BACKFILL_CHUNK_EVENTS,
        })
    }

    /// The same replicas, passing back-filled events on in chunks of `events` or more (whole
    /// batches) rather than `PROJECTOR_BACKFILL_CHUNK_EVENTS`: tests make it small.
    pub fn with_backfill_chunk_events(mut self, events: usize) -> Replicas {
        assert!(events >= 1, "a back-fill chunk holds an event at least");
        self.backfill_chunk_events = events;
        self
    }

    pub fn group(&self) -> &str {
        &self.group
    }

    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    pub fn client(&self, at: usize) -> (&str, &Client) {
        (&self.urls[at], &self.clients[at])
    }

    fn error(&self, at: usize, source: ClientError) -> SourceError {
        SourceError::Client {
            group: self.group.clone(),
            url: self.urls[at].clone(),
            source,
        }
    }

    /// Passes on to `outbox` what of `events` follows `after`: drops events already seen;
    /// back-fills a gap from replica `at` with `read_events`, in chunks of whole batches (see
    /// [`Replicas::backfill_chunk`]). Answers `false` when the writer is gone; `after` moves to
    /// the last event passed on. On an error `after` is left at the last event sent (what was
    /// sent will be written; nothing after it is passed on), so the next read starts there.
    pub async fn contiguous(
        &self,
        at: usize,
        events: Vec<Event>,
        after: &mut u64,
        pages: &mpsc::Sender<Vec<Event>>,
    ) -> Result<bool, SourceError> {
        let mut outbox = Outbox::new(pages, *after, events.len());
        let gathered = self.contiguous_into(at, events, after, &mut outbox).await;
        outbox.finish(gathered, after).await
    }

    async fn contiguous_into(
        &self,
        at: usize,
        events: Vec<Event>,
        after: &mut u64,
        outbox: &mut Outbox<'_>,
    ) -> Result<bool, SourceError> {
        for event in events {
            if event.seq <= *after {
                continue;
            }
            if event.seq > *after + 1 {
                tracing::warn!(group = %self.group, after = *after, seq = event.seq,
                    "a gap in the events: back-filling from the events API");
                loop {
                    match self
                        .backfill_chunk(at, after, event.seq, outbox.events())
                        .await?
                    {
                        Filled::Gap => break,
                        Filled::Chunk if outbox.send().await => {}
                        Filled::Chunk => return Ok(false),
                    }
                }
            }
            *after = event.seq;
            outbox.events().push(event);
        }
        Ok(true)
    }

    /// Whether `out`, its last event a batch marker or not (`at_marker`), is a chunk to pass
    /// on: `backfill_chunk_events` or more ending at a marker, or so many more without one that
    /// no batch can be that long (the writer refuses it as a broken stream).
    fn chunk_full(&self, out: &[Event], at_marker: bool) -> bool {
        out.len() >= self.backfill_chunk_events
            && (at_marker || out.len() >= self.backfill_chunk_events + PROJECTOR_BATCH_EVENTS_MAX)
    }

    /// Reads events `after + 1 .. until` from replica `at` into `out`, up to the end of the
    /// gap ([`Filled::Gap`]) or of a chunk ([`Filled::Chunk`]: `out` holds
    /// `backfill_chunk_events` or more, ending with a batch marker): the caller passes `out` on
    /// and calls again from the new `after`, so a gap of any length is held a chunk at a time.
    async fn backfill_chunk(
        &self,
        at: usize,
        after: &mut u64,
        until: u64,
        out: &mut Vec<Event>,
    ) -> Result<Filled, SourceError> {
        while *after + 1 < until {
            let limit = (until - *after - 1).min(EVENTS_PAGE_EVENTS_MAX as u64) as u32;
            let page = self.clients[at]
                .read_events(*after, limit)
                .await
                .map_err(|e| self.error(at, e))?;
            let next = page.events.first().map(|e| e.seq);
            if next != Some(*after + 1) {
                return Err(SourceError::Unfilled {
                    group: self.group.clone(),
                    url: self.urls[at].clone(),
                    after: *after,
                    seq: next.unwrap_or(until),
                });
            }
            for event in page.events {
                if event.seq >= until || event.seq != *after + 1 {
                    break;
                }
                *after = event.seq;
                let at_marker = event.kind == EventKind::Batch;
                out.push(event);
                if self.chunk_full(out, at_marker) {
                    return Ok(Filled::Chunk);
                }
            }
        }
        debug_assert_eq!(*after + 1, until);
        Ok(Filled::Gap)
    }

    /// Reads events `after + 1 .. until` into `outbox` from the first replica that has them,
    /// trying each once from `*at` (left at the one that answered), passing on each chunk as
    /// it fills (see [`Replicas::backfill_chunk`]). Answers `false` when the writer is gone.
    /// Fails with the last error, or [`SourceError::Gone`] when every replica answered "gone";
    /// `after` and `outbox` keep what was read.
    pub async fn backfill_any(
        &self,
        at: &mut usize,
        after: &mut u64,
        until: u64,
        outbox: &mut Outbox<'_>,
    ) -> Result<bool, SourceError> {
        loop {
            match self
                .backfill_any_chunk(at, after, until, outbox.events())
                .await?
            {
                Filled::Gap => return Ok(true),
                Filled::Chunk if outbox.send().await => {}
                Filled::Chunk => return Ok(false),
            }
        }
    }

    /// One chunk of [`Replicas::backfill_any`]: from the first replica that has it.
    async fn backfill_any_chunk(
        &self,
        at: &mut usize,
        after: &mut u64,
        until: u64,
        out: &mut Vec<Event>,
    ) -> Result<Filled, SourceError> {
        let mut gone: Vec<Option<u64>> = vec![None; self.len()];
        let mut last = None;
        for _ in 0..self.len() {
            match self.backfill_chunk(*at, after, until, out).await {
                Ok(filled) => return Ok(filled),
                Err(
                    error @ SourceError::Client {
                        source: ClientError::Unauthenticated(_) | ClientError::PermissionDenied(_),
                        ..
                    },
                ) => return Err(error),
                Err(error) => {
                    if let SourceError::Client {
                        source: ClientError::EventsGone { first_seq, .. },
                        ..
                    } = &error
                    {
                        gone[*at] = Some(*first_seq);
                    }
                    tracing::warn!(group = %self.group, "back-filling: {error}; trying another replica");
                    last = Some(error);
                }
            }
            *at = (*at + 1) % self.len();
        }
        if gone.iter().all(Option::is_some) {
            return Err(self.gone(*after, &gone));
        }
        Err(last.expect("a group has a replica at least"))
    }

    /// The last event replica `at` has.
    pub async fn last_seq(&self, at: usize) -> Result<u64, SourceError> {
        let page = self.clients[at]
            .read_events(u64::MAX, 1)
            .await
            .map_err(|e| self.error(at, e))?;
        Ok(page.last_seq)
    }

    /// Follows the group from `after` on, sending contiguous pages to `pages` until it closes;
    /// fails over between replicas. Ends with an error only when every replica answers "gone".
    pub async fn follow(
        &self,
        mut after: u64,
        pages: mpsc::Sender<Vec<Event>>,
    ) -> Result<(), SourceError> {
        let mut at = 0;
        let mut backoff = backoff();
        let mut gone: Vec<Option<u64>> = vec![None; self.len()];
        loop {
            let from = after;
            let followed = self.follow_one(at, &mut after, &pages).await;
            if after > from {
                // "Gone" was said of an earlier position: it no longer tells about this one.
                gone.fill(None);
                backoff.reset();
            }
            match followed {
                Ok(true) => return Ok(()),
                Ok(false) => gone[at] = None,
                Err(SourceError::Client {
                    source: ClientError::EventsGone { first_seq, .. },
                    url,
                    ..
                }) => {
                    tracing::error!(group = %self.group, %url, after, first_seq,
                        "the replica no longer has the events needed (its first is {first_seq}); trying another replica");
                    gone[at] = Some(first_seq);
                    if gone.iter().all(Option::is_some) {
                        return Err(self.gone(after, &gone));
                    }
                }
                // A key refused is refused by every replica alike: no use trying them in turn.
                Err(
                    error @ SourceError::Client {
                        source: ClientError::Unauthenticated(_) | ClientError::PermissionDenied(_),
                        ..
                    },
                ) => return Err(error),
                Err(error) => {
                    tracing::warn!(group = %self.group, "{error}; trying another replica");
                    gone[at] = None;
                }
            }
            at = (at + 1) % self.len();
            if at == 0 {
                tokio::time::sleep(backoff.next_wait()).await;
            }
            if pages.is_closed() {
                return Ok(());
            }
        }
    }

    /// Subscribes to replica `at` after `after`; answers `true` when `pages` closed (stop),
    /// `false` when the stream ended (subscribe again).
    async fn follow_one(
        &self,
        at: usize,
        after: &mut u64,
        pages: &mpsc::Sender<Vec<Event>>,
    ) -> Result<bool, SourceError> {
        let mut stream = self.clients[at]
            .subscribe_events(*after)
            .await
            .map_err(|e| self.error(at, e))?;
        loop {
            let page = match stream.next().await {
                Ok(Some(page)) => page,
                Ok(None) => return Ok(false),
                Err(error) => return Err(self.error(at, error)),
            };
            if !self.contiguous(at, page.events, after, pages).await? {
                return Ok(true);
            }
        }
    }

    fn gone(&self, after: u64, firsts: &[Option<u64>]) -> SourceError {
        let firsts = self
            .urls
            .iter()
            .zip(firsts)
            .map(|(url, first)| format!("{url} starts at {}", first.unwrap_or(0)))
            .collect::<Vec<_>>()
            .join(", ");
        SourceError::Gone {
            group: self.group.clone(),
            after,
            firsts,
        }
    }
}
