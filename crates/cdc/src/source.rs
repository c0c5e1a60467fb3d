//! Reading one group's events from its replicas: a subscription after the stream's tail,
//! failing over between the replicas (which serve identical events) with a bounded backoff,
//! each page encoded (`message::encode`) and queued for the publisher
//! (`CDC_SOURCE_PAGES_QUEUED_MAX` pages at most).
//!
//! A replica that answers "gone" is asked no more for those events; when every replica has
//! answered so, the group stops with [`CdcError::EventsGone`] naming the seqs lost: never a
//! silent skip. Owns the replicas' clients; must not publish.

use std::sync::Arc;
use std::time::Duration;

use client::{Client, ClientError, GroupSpec, RetryPolicy};
use limits::{CDC_RETRY_BACKOFF_MS_INITIAL, CDC_RETRY_BACKOFF_MS_MAX};
use tokio::sync::mpsc;

use crate::error::{CdcError, Resync, Stop};
use crate::message::{self, Encoded};

/// What the publisher receives: a page of events (contiguous, continuing the last one), or
/// why there will be no more.
pub type Page = Result<Vec<Encoded>, Stop>;

/// One replica: its address and its client.
pub struct Replica {
    pub url: String,
    pub client: Client,
}

/// Clients of the group's replicas (they connect lazily). A group named by its 32-hex-digit id
/// is named in every call, so a replica of another group refuses instead of serving.
pub fn replicas(group: &GroupSpec, api_key: Option<&str>) -> Result<Vec<Replica>, CdcError> {
    // Short: a replica that does not answer is left for the next one.
    let policy = RetryPolicy {
        attempts_max: 3,
        elapsed_max: Duration::from_secs(5),
        attempt_timeout: Duration::from_secs(5),
        ..RetryPolicy::default()
    };
    group
        .replicas
        .iter()
        .map(|url| {
            let client =
                group
                    .client(url, policy.clone(), api_key)
                    .map_err(|e| CdcError::Invalid {
                        field: "--group".into(),
                        reason: format!("group {}: replica {url}: {e}", group.name),
                    })?;
            Ok(Replica {
                url: url.clone(),
                client,
            })
        })
        .collect()
}

/// Bounded exponential backoff between tries: each wait twice the last, from `initial` up to
/// `max`, back to `initial` on `reset` (after progress). The publisher's waits by default; the
/// projector gives its own bounds.
#[derive(Debug)]
pub struct Backoff {
    initial_ms: u64,
    max_ms: u64,
    next_ms: u64,
}

impl Backoff {
    /// The publisher's bounds (`CDC_RETRY_BACKOFF_MS_INITIAL` to `CDC_RETRY_BACKOFF_MS_MAX`).
    pub fn new() -> Backoff {
        Backoff::between(CDC_RETRY_BACKOFF_MS_INITIAL, CDC_RETRY_BACKOFF_MS_MAX)
    }

    pub fn between(initial_ms: u64, max_ms: u64) -> Backoff {
        assert!(
            1 <= initial_ms && initial_ms <= max_ms,
            "a backoff from {initial_ms} ms to {max_ms} ms"
        );
        Backoff {
            initial_ms,
            max_ms,
            next_ms: initial_ms,
        }
    }

    /// The wait before the next try.
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next_ms;
        self.next_ms = (self.next_ms * 2).min(self.max_ms);
        Duration::from_millis(wait)
    }

    pub fn reset(&mut self) {
        self.next_ms = self.initial_ms;
    }
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff::new()
    }
}

/// The replicas that answered "gone" for the events after one `after`: each with its first.
#[derive(Debug, Default)]
struct Gone {
    after: u64,
    firsts: Vec<(String, u64)>,
}

impl Gone {
    fn record(&mut self, after: u64, url: &str, first_seq: u64) {
        if self.after != after {
            self.firsts.clear();
            self.after = after;
        }
        self.firsts.retain(|(u, _)| u != url);
        self.firsts.push((url.to_string(), first_seq));
    }

    /// Every replica answered "gone" after `after`: the seqs lost, for the operator.
    fn all_gone(&self, group: &str, after: u64, replicas: usize) -> Option<CdcError> {
        if self.after != after || self.firsts.len() < replicas {
            return None;
        }
        let first_kept = self.firsts.iter().map(|(_, first)| *first).min()?;
        Some(CdcError::EventsGone {
            group: group.to_string(),
            published: after,
            first_lost: after + 1,
            last_lost: first_kept.saturating_sub(1).max(after + 1),
            replicas: self
                .firsts
                .iter()
                .map(|(url, first)| format!("{url} keeps from {first}"))
                .collect::<Vec<_>>()
                .join(", "),
        })
    }
}

/// How one subscription ended.
enum Ended {
    /// The publisher went away: stop.
    Closed,
    /// The replica answered "gone" for the events after `after` (its first is `first_seq`).
    Gone { first_seq: u64 },
    /// A refusal of the key: stop.
    Refused(String),
    /// A replica that cannot serve these events (another group's, one keeping no events, a
    /// failure reading them): stop once every replica answered so.
    Unfit(String),
    /// Anything else: try the next replica.
    Failed(String),
}

/// Feeds `pages` with every event after `after`, in order, until the publisher drops the
/// receiver or the group must stop (sent as the last page).
pub async fn feed(group: String, replicas: &[Replica], mut after: u64, pages: mpsc::Sender<Page>) {
    assert!(!replicas.is_empty());
    let mut backoff = Backoff::new();
    let mut gone = Gone::default();
    // Replicas that answered they cannot serve these events (another group's, or keeping
    // none), with their answers, since the last progress.
    let mut unfit: Vec<(String, String)> = Vec::new();
    let mut at = 0usize;
    loop {
        let replica = &replicas[at % replicas.len()];
        let before = after;
        let ended = follow(replica, &mut after, &pages).await;
        if after > before {
            backoff.reset();
            unfit.clear();
        }
        let stop = match ended {
            Ended::Closed => return,
            Ended::Refused(reason) => Some(Stop::Fatal(CdcError::Refused {
                group: group.clone(),
                replica: replica.url.clone(),
                reason,
            })),
            Ended::Unfit(reason) => {
                tracing::warn!(%group, replica = %replica.url, "{reason}; trying the next replica");
                unfit.retain(|(url, _)| *url != replica.url);
                unfit.push((replica.url.clone(), reason));
                (unfit.len() == replicas.len()).then(|| {
                    Stop::Fatal(CdcError::Invalid {
                        field: "--group".into(),
                        reason: format!(
                            "group {group}: no replica can serve its events: {}",
                            unfit
                                .iter()
                                .map(|(url, reason)| format!("{url}: {reason}"))
                                .collect::<Vec<_>>()
                                .join("; ")
                        ),
                    })
                })
            }
            Ended::Gone { first_seq } => {
                tracing::warn!(%group, replica = %replica.url, after, first_seq, "the replica no longer has the events after {after}; asking another");
                gone.record(after, &replica.url, first_seq);
                gone.all_gone(&group, after, replicas.len())
                    .map(Stop::Fatal)
            }
            Ended::Failed(reason) => {
                tracing::warn!(%group, replica = %replica.url, after, "{reason}; trying the next replica");
                None
            }
        };
        if let Some(stop) = stop {
            let _ = pages.send(Err(stop)).await;
            return;
        }
        at += 1;
        tokio::select! {
            () = tokio::time::sleep(backoff.next_wait()) => {}
            () = pages.closed() => return,
        }
    }
}

/// Follows one replica from `after` on, advancing it past every event sent.
async fn follow(replica: &Replica, after: &mut u64, pages: &mpsc::Sender<Page>) -> Ended {
    let ended = |error: ClientError| match error {
        ClientError::EventsGone { first_seq, .. } => Ended::Gone { first_seq },
        ClientError::Unauthenticated(reason) | ClientError::PermissionDenied(reason) => {
            Ended::Refused(reason)
        }
        ClientError::Invalid(reason) => Ended::Unfit(reason),
        other => Ended::Failed(other.to_string()),
    };
    // A replica behind the stream is followed all the same (it serves them once it has them),
    // but said: a long wait here is a lagging replica, or the wrong group's stream.
    match replica.client.read_events(*after, 1).await {
        Ok(page) if page.last_seq < *after => tracing::warn!(
            replica = %replica.url,
            "the stream holds events up to {after} and this replica only up to {}: waiting for it (is it this group's replica?)",
            page.last_seq
        ),
        Ok(_) => {}
        Err(error) => return ended(error),
    }
    let mut subscription = tokio::select! {
        subscribed = replica.client.subscribe_events(*after) => match subscribed {
            Ok(subscription) => subscription,
            Err(error) => return ended(error),
        },
        () = pages.closed() => return Ended::Closed,
    };
    loop {
        let page = tokio::select! {
            page = subscription.next() => page,
            () = pages.closed() => return Ended::Closed,
        };
        let page = match page {
            Ok(Some(page)) => page,
            Ok(None) => return Ended::Failed("the replica ended the subscription".into()),
            Err(error) => return ended(error),
        };
        let Some(last) = page.events.last().map(|e| e.seq) else {
            continue;
        };
        // The subscription checked the pages continue each other; this checks the first.
        if page.events[0].seq != *after + 1 {
            return Ended::Failed(format!(
                "the replica sent event {} after {}",
                page.events[0].seq, after
            ));
        }
        let encoded: Vec<Encoded> = page.events.iter().map(message::encode).collect();
        if pages.send(Ok(encoded)).await.is_err() {
            return Ended::Closed;
        }
        *after = last;
    }
}

/// A group's source stopped without a reason (its task ended): start over.
pub fn ended_unexpectedly() -> Stop {
    Stop::Resync(Resync::Source("the replicas' reader stopped".into()))
}

/// Reads the group's newest event every second (`client::newest_event_seq` over `replicas`)
/// into `progress`: the publisher's lag is that less what it published. Runs until dropped.
pub async fn watch_head(replicas: Arc<Vec<Replica>>, progress: telemetry::FollowGroup) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Some(seq) = client::newest_event_seq(replicas.iter().map(|r| &r.client)).await {
            progress.source(seq);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gone_everywhere_names_the_seqs_lost_and_each_replica() {
        let mut gone = Gone::default();
        gone.record(10, "http://a", 50);
        assert!(
            gone.all_gone("g1", 10, 2).is_none(),
            "one replica may still have them"
        );
        gone.record(10, "http://b", 40);
        let error = gone.all_gone("g1", 10, 2).unwrap().to_string();
        assert!(
            error.contains("events 11..=39 are gone from every replica"),
            "{error}"
        );
        assert!(
            error.contains("http://a keeps from 50, http://b keeps from 40"),
            "{error}"
        );
        assert!(error.contains("ends at seq 10"), "{error}");
        // Progress since: the answers were about older events.
        gone.record(60, "http://a", 80);
        assert!(gone.all_gone("g1", 60, 2).is_none());
    }

    #[test]
    fn backoff_doubles_up_to_its_maximum_and_resets() {
        let mut backoff = Backoff::new();
        let waits: Vec<u64> = (0..10)
            .map(|_| backoff.next_wait().as_millis() as u64)
            .collect();
        assert_eq!(waits[0], CDC_RETRY_BACKOFF_MS_INITIAL);
        assert_eq!(waits[1], 2 * CDC_RETRY_BACKOFF_MS_INITIAL);
        assert!(waits.iter().all(|w| *w <= CDC_RETRY_BACKOFF_MS_MAX));
        assert_eq!(*waits.last().unwrap(), CDC_RETRY_BACKOFF_MS_MAX);
        backoff.reset();
        assert_eq!(
            backoff.next_wait().as_millis() as u64,
            CDC_RETRY_BACKOFF_MS_INITIAL
        );
    }
}
