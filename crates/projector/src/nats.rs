//! Reading one group's change events from its NATS JetStream stream (`fincore project --nats`),
//! the stream `fincore cdc` fills: event N at stream sequence N, named as the publisher names
//! it (`cdc::Naming`, the same flags), each message decoded and checked (`cdc::decode`).
//!
//! - **The database is the truth.** An ordered consumer (ephemeral, no acks) is created at the
//!   stream sequence after the group's stored offset; after any error it is created again from
//!   the last event passed on. No consumer state is kept in NATS.
//! - **Gaps are back-filled from the replicas.** A message whose seq is not the one expected (a
//!   message deleted from the stream, a purged stream) leaves a gap that is read from the
//!   replicas' events API ([`Replicas::backfill_any`]) before going on; a malformed or forged
//!   message (wrong id, body or seq) is not applied: it counts as a gap, is logged and counted.
//! - **A stream missing or behind is waited for.** No stream yet: asked again with a bounded
//!   backoff. A stream behind the offset (the publisher lagging or stopped): the consumer waits
//!   for the next message. It never switches to reading the replicas (`docs/projector.md` says
//!   why).
//!
//! Owns the consumer and the gap check of its messages; must not write (pages go to the writer
//! through a bounded channel) nor publish.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
use async_nats::jetstream::context::{Context, GetStreamErrorKind};
use async_nats::jetstream::{ErrorCode, Message};
use cdc::Naming;
use futures::StreamExt;
use ledger::Event;
use limits::EVENTS_PAGE_EVENTS_MAX;
use tokio::sync::mpsc;

use crate::source::{Outbox, Replicas, SourceError, backoff};

/// Where the groups' streams are: the NATS server and the publisher's naming.
#[derive(Debug, Clone)]
pub struct NatsSource {
    pub url: String,
    pub credentials: cdc::NatsCredentials,
    pub naming: Naming,
}

impl NatsSource {
    /// A JetStream context on the server (it reconnects on its own).
    pub async fn connect(&self) -> Result<Context, SourceError> {
        let client = cdc::connect(&self.url, "fincore-project", &self.credentials)
            .await
            .map_err(|e| SourceError::Nats {
                group: "*".into(),
                url: self.url.clone(),
                reason: e.to_string(),
            })?;
        Ok(async_nats::jetstream::new(client))
    }
}

/// One message as read: the event it holds, or (`Err`) the stream sequence of a message that
/// is not an event.
type Item = Result<Event, u64>;

/// One group's stream, and its replicas for the gaps.
pub struct GroupStream {
    context: Context,
    url: String,
    stream: String,
    subject: String,
    replicas: Arc<Replicas>,
    /// Messages refused (malformed, forged): counted for the log.
    malformed_total: AtomicU64,
    /// Events read from the replicas because the stream did not hold them.
    backfilled_total: AtomicU64,
}

impl GroupStream {
    pub fn new(source: &NatsSource, context: Context, replicas: Arc<Replicas>) -> GroupStream {
        let group = replicas.group();
        GroupStream {
            context,
            url: source.url.clone(),
            stream: source.naming.stream_name(group),
            subject: source.naming.subject(group),
            malformed_total: AtomicU64::new(0),
            backfilled_total: AtomicU64::new(0),
            replicas,
        }
    }

    pub fn group(&self) -> &str {
        self.replicas.group()
    }

    /// Events back-filled from the replicas so far (messages missing or refused).
    pub fn backfilled_total(&self) -> u64 {
        self.backfilled_total.load(Ordering::Relaxed)
    }

    fn error(&self, reason: impl std::fmt::Display) -> SourceError {
        SourceError::Nats {
            group: self.group().to_string(),
            url: self.url.clone(),
            reason: format!("stream {}: {reason}", self.stream),
        }
    }

    /// Follows the stream from `after` on, sending contiguous pages to `pages` until it closes.
    /// Ends with an error only when a gap cannot be back-filled for good (every replica
    /// answered "gone", or refused the key).
    pub async fn follow(
        &self,
        mut after: u64,
        pages: mpsc::Sender<Vec<Event>>,
    ) -> Result<(), SourceError> {
        let mut backoff = backoff();
        let mut at = 0;
        loop {
            let from = after;
            match self.follow_once(&mut at, &mut after, &pages).await {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(
                    error @ (SourceError::Gone { .. }
                    | SourceError::Client {
                        source:
                            client::ClientError::Unauthenticated(_)
                            | client::ClientError::PermissionDenied(_),
                        ..
                    }),
                ) => return Err(error),
                Err(error) => {
                    tracing::warn!(group = %self.group(), after, "{error}; reading the stream again from the offset");
                }
            }
            if after > from {
                backoff.reset();
            }
            tokio::time::sleep(backoff.next_wait()).await;
            if pages.is_closed() {
                return Ok(());
            }
        }
    }

    /// One consumer from `after`: answers `true` when `pages` closed (stop), `false` when the
    /// stream is missing or the consumer ended (start again).
    async fn follow_once(
        &self,
        at: &mut usize,
        after: &mut u64,
        pages: &mpsc::Sender<Vec<Event>>,
    ) -> Result<bool, SourceError> {
        let stream = match self.context.get_stream(&self.stream).await {
            Ok(stream) => stream,
            Err(error) => match error.kind() {
                GetStreamErrorKind::JetStream(e)
                    if e.error_code() == ErrorCode::STREAM_NOT_FOUND =>
                {
                    tracing::info!(group = %self.group(), stream = %self.stream,
                        "the stream does not exist yet (is fincore cdc running?): waiting for it");
                    return Ok(false);
                }
                _ => return Err(self.error(error)),
            },
        };
        let last_sequence = stream.cached_info().state.last_sequence;
        if last_sequence < *after {
            tracing::warn!(group = %self.group(), stream = %self.stream, last_sequence, offset = *after,
                "the stream is behind the read model (the publisher is lagging, or the stream was recreated): waiting for it to catch up");
        }
        let consumer = stream
            .create_consumer(OrderedConfig {
                filter_subject: self.subject.clone(),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: *after + 1,
                },
                ..OrderedConfig::default()
            })
            .await
            .map_err(|e| self.error(e))?;
        let mut messages = consumer.messages().await.map_err(|e| self.error(e))?;
        tracing::info!(group = %self.group(), stream = %self.stream, after = *after, "consuming the stream");
        loop {
            let mut items = Vec::new();
            let Some(first) = messages.next().await else {
                return Ok(false);
            };
            items.push(self.item(first.map_err(|e| self.error(e))?)?);
            // What else has arrived, without waiting: one page at most.
            while items.len() < EVENTS_PAGE_EVENTS_MAX {
                match tokio::time::timeout(Duration::ZERO, messages.next()).await {
                    Ok(Some(message)) => {
                        items.push(self.item(message.map_err(|e| self.error(e))?)?);
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            if !self.contiguous(at, items, after, pages).await? {
                return Ok(true);
            }
        }
    }

    /// A message read and checked: its event, or `Malformed` (logged and counted).
    fn item(&self, message: Message) -> Result<Item, SourceError> {
        let stream_seq = message.info().map_err(|e| self.error(e))?.stream_sequence;
        let id = message
            .headers
            .as_ref()
            .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
            .map(|v| v.as_str());
        match cdc::decode(self.group(), stream_seq, id, &message.payload) {
            Ok(event) => Ok(Ok(event)),
            Err(error) => {
                let malformed_total = self.malformed_total.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::warn!(group = %self.group(), stream = %self.stream, stream_seq, malformed_total,
                    "{error}: not applied; the event is back-filled from the replicas");
                Ok(Err(stream_seq))
            }
        }
    }

    /// Passes on to `pages` the events of `items` that follow `after`, gaps back-filled in
    /// chunks of whole batches; `after` moves to the last. Answers `false` when the writer is
    /// gone. On an error `after` is left at the last event sent: nothing after it is passed on.
    async fn contiguous(
        &self,
        at: &mut usize,
        items: Vec<Item>,
        after: &mut u64,
        pages: &mpsc::Sender<Vec<Event>>,
    ) -> Result<bool, SourceError> {
        let mut outbox = Outbox::new(pages, *after, items.len());
        let gathered = self.contiguous_into(at, items, after, &mut outbox).await;
        outbox.finish(gathered, after).await
    }

    async fn contiguous_into(
        &self,
        at: &mut usize,
        items: Vec<Item>,
        after: &mut u64,
        outbox: &mut Outbox<'_>,
    ) -> Result<bool, SourceError> {
        for item in items {
            let (seq, event) = match item {
                Ok(event) => (event.seq, Some(event)),
                Err(seq) => (seq, None),
            };
            if seq <= *after {
                continue;
            }
            // Missing: after + 1 .. seq; refused: seq itself too.
            let until = if event.is_some() { seq } else { seq + 1 };
            if until > *after + 1 {
                let first_seq = *after + 1;
                let filled = self.replicas.backfill_any(at, after, until, outbox).await;
                // What was sent of the gap is written even if the rest fails: count it.
                let last_seq = match &filled {
                    Ok(true) => until - 1,
                    Ok(false) | Err(_) => outbox.sent_seq(),
                };
                if last_seq >= first_seq {
                    let count = last_seq + 1 - first_seq;
                    let backfilled_total =
                        self.backfilled_total.fetch_add(count, Ordering::Relaxed) + count;
                    tracing::warn!(group = %self.group(), stream = %self.stream, first_seq, last_seq,
                        backfilled_total, "events missing from the stream back-filled from the replicas");
                }
                if !filled? {
                    return Ok(false);
                }
            }
            if let Some(event) = event {
                debug_assert_eq!(event.seq, *after + 1);
                *after = event.seq;
                outbox.events().push(event);
            }
        }
        Ok(true)
    }
}
