//! Reading one group's change events from its replicas, contiguously, from an offset on.
//!
//! Owns failing over between a group's replicas (any replica serves the same events), the gap
//! check of every page (an event whose seq is not the one expected is a gap: back-filled with
//! `read_events` before going on; an event already seen is dropped), and reporting a replica
//! that no longer has the events asked for ("gone"). It must not write anything: pages go to
//! the writer through a bounded channel.

use std::time::Duration;

use client::{Client, ClientError, GroupSpec, RetryPolicy};
use ledger::Event;
use limits::{EVENTS_PAGE_EVENTS_MAX, PROJECTOR_RETRY_BACKOFF_MS_MAX};
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
}

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
        })
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

    /// Keeps what of `events` follows `after`: drops events already seen; back-fills a gap
    /// from replica `at` with `read_events`. Answers the contiguous events; `after` moves to
    /// the last. On an error `after` is left where it was: none of these events is passed on,
    /// so the next read must start there again.
    pub async fn contiguous(
        &self,
        at: usize,
        events: Vec<Event>,
        after: &mut u64,
    ) -> Result<Vec<Event>, SourceError> {
        let start = *after;
        let kept = self.contiguous_from(at, events, after).await;
        if kept.is_err() {
            *after = start;
        }
        kept
    }

    async fn contiguous_from(
        &self,
        at: usize,
        events: Vec<Event>,
        after: &mut u64,
    ) -> Result<Vec<Event>, SourceError> {
        let mut out = Vec::with_capacity(events.len());
        for event in events {
            if event.seq <= *after {
                continue;
            }
            if event.seq > *after + 1 {
                tracing::warn!(group = %self.group, after = *after, seq = event.seq,
                    "a gap in the events: back-filling from the events API");
                self.backfill(at, after, event.seq, &mut out).await?;
            }
            out.push(event);
            *after = event.seq;
        }
        Ok(out)
    }

    /// Reads events `after + 1 .. until` from replica `at` into `out`.
    async fn backfill(
        &self,
        at: usize,
        after: &mut u64,
        until: u64,
        out: &mut Vec<Event>,
    ) -> Result<(), SourceError> {
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
                out.push(event);
            }
        }
        Ok(())
    }

    /// Reads events `after + 1 .. until` into `out` from the first replica that has them,
    /// trying each once from `*at` (left at the one that answered). Fails with the last error,
    /// or [`SourceError::Gone`] when every replica answered "gone"; `after` and `out` keep
    /// what was read.
    pub async fn backfill_any(
        &self,
        at: &mut usize,
        after: &mut u64,
        until: u64,
        out: &mut Vec<Event>,
    ) -> Result<(), SourceError> {
        let mut gone: Vec<Option<u64>> = vec![None; self.len()];
        let mut last = None;
        for _ in 0..self.len() {
            match self.backfill(*at, after, until, out).await {
                Ok(()) => return Ok(()),
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
        let mut backoff_ms = 100;
        let mut gone: Vec<Option<u64>> = vec![None; self.len()];
        loop {
            let from = after;
            let followed = self.follow_one(at, &mut after, &pages).await;
            if after > from {
                // "Gone" was said of an earlier position: it no longer tells about this one.
                gone.fill(None);
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
                tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
                backoff_ms = (backoff_ms * 2).min(PROJECTOR_RETRY_BACKOFF_MS_MAX);
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
            let events = self.contiguous(at, page.events, after).await?;
            if !events.is_empty() && pages.send(events).await.is_err() {
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
