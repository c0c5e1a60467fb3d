//! A gateway's change events: [`Gateway`] as a [`server::events::EventSource`], so that the
//! node's `GET /v1/events` and `fincore.v1.Events` front ends serve them. A call names its
//! group (`group=` / `fincore-group` metadata; required here, as the gateway serves several);
//! the page or the subscription is asked of a replica of that group through the group's
//! client, which tries the next replica when one does not answer (every replica serves the
//! same events under the same numbers).
//!
//! A subscription relays the replica's pages; when that replica fails (the stream breaks or
//! ends), it subscribes again after the last event relayed, on whichever replica answers, so
//! the caller sees no gap and no repeat (the client checks every page continues the last). At
//! most `GATEWAY_EVENTS_RESUBSCRIBES_MAX` tries in a row, with a doubling backoff; then the
//! stream ends UNAVAILABLE naming where to resume. "Gone" (OUT_OF_RANGE with the replica's
//! first event) is passed through as the replica gave it.
//!
//! Owns only that forwarding; must not read or shape events (the nodes and `api` do).

use std::time::Duration;

use client::{Client, ClientError, EventSubscription};
use cluster::GroupId;
use futures::future::BoxFuture;
use limits::{
    GATEWAY_EVENTS_RESUBSCRIBE_BACKOFF_MS_INITIAL, GATEWAY_EVENTS_RESUBSCRIBE_BACKOFF_MS_MAX,
    GATEWAY_EVENTS_RESUBSCRIBES_MAX,
};
use server::events::{EventSource, EventsPage, EventsRefusal, EventsStream};

use crate::router::Gateway;

impl EventSource for Gateway {
    fn read_events(
        &self,
        group: Option<GroupId>,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<EventsPage, EventsRefusal>> {
        Box::pin(async move {
            let (group, client) = self.events_client(group)?;
            let limit = u32::try_from(limit).map_err(|_| EventsRefusal::Invalid {
                field: "limit",
                reason: format!("{limit} events is too many"),
            })?;
            let page = client
                .read_events(after, limit)
                .await
                .map_err(|error| refused(group, error))?;
            Ok(page_of(page))
        })
    }

    fn subscribe_events(
        &self,
        group: Option<GroupId>,
        after: u64,
    ) -> BoxFuture<'_, Result<EventsStream, EventsRefusal>> {
        Box::pin(async move {
            let (group, client) = self.events_client(group)?;
            let subscription = client
                .subscribe_events(after)
                .await
                .map_err(|error| refused(group, error))?;
            let follow = Follow {
                group,
                client,
                subscription: Some(subscription),
                after,
                failures: 0,
                last_error: String::new(),
            };
            let stream: EventsStream =
                Box::pin(futures::stream::unfold(Some(follow), |follow| async move {
                    let mut follow = follow?;
                    let item = follow.next().await;
                    let go_on = item.is_ok();
                    Some((item, go_on.then_some(follow)))
                }));
            Ok(stream)
        })
    }
}

fn page_of(page: client::EventsPage) -> EventsPage {
    EventsPage {
        events: page.events,
        first_seq: page.first_seq,
        last_seq: page.last_seq,
    }
}

/// The gateway's answer when `group`'s replicas did not serve the events asked.
fn refused(group: GroupId, error: ClientError) -> EventsRefusal {
    match error {
        ClientError::EventsGone { first_seq, message } => {
            EventsRefusal::Gone { first_seq, message }
        }
        other => EventsRefusal::Unavailable(format!(
            "no replica of group {group} served its events: {other}"
        )),
    }
}

/// One subscriber's subscription to one group, across the group's replicas.
struct Follow {
    group: GroupId,
    client: Client,
    /// The replica's stream being relayed (`None`: it failed; subscribe again).
    subscription: Option<EventSubscription>,
    /// The last event relayed: where a new subscription resumes.
    after: u64,
    /// Subscriptions that failed in a row (reset by every page relayed).
    failures: u32,
    last_error: String,
}

impl Follow {
    /// The next page to relay, subscribing again after the last one relayed (bounded) when
    /// the replica followed fails; an error ends the stream.
    async fn next(&mut self) -> Result<EventsPage, EventsRefusal> {
        loop {
            if let Some(subscription) = &mut self.subscription {
                match subscription.next().await {
                    Ok(Some(page)) if page.events.is_empty() => continue,
                    Ok(Some(page)) => {
                        self.after = subscription.after();
                        self.failures = 0;
                        return Ok(page_of(page));
                    }
                    Ok(None) => self.last_error = "the replica ended the stream".into(),
                    Err(ClientError::EventsGone { first_seq, message }) => {
                        return Err(EventsRefusal::Gone { first_seq, message });
                    }
                    Err(error) => self.last_error = error.to_string(),
                }
                self.subscription = None;
            }
            self.failures += 1;
            if self.failures > GATEWAY_EVENTS_RESUBSCRIBES_MAX {
                return Err(EventsRefusal::Unavailable(format!(
                    "no replica of group {} served its events after {} tries ({}); subscribe again after {}",
                    self.group, GATEWAY_EVENTS_RESUBSCRIBES_MAX, self.last_error, self.after
                )));
            }
            tracing::warn!(
                group = %self.group,
                after = self.after,
                error = %self.last_error,
                "subscribing again to the group's events"
            );
            tokio::time::sleep(backoff(self.failures)).await;
            match self.client.subscribe_events(self.after).await {
                Ok(subscription) => self.subscription = Some(subscription),
                Err(ClientError::EventsGone { first_seq, message }) => {
                    return Err(EventsRefusal::Gone { first_seq, message });
                }
                Err(error) => self.last_error = error.to_string(),
            }
        }
    }
}

/// The wait before the `failures`-th try in a row (from 1): doubling from the initial wait,
/// at most the maximum.
fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    let ms = GATEWAY_EVENTS_RESUBSCRIBE_BACKOFF_MS_INITIAL
        .saturating_mul(1 << doublings)
        .min(GATEWAY_EVENTS_RESUBSCRIBE_BACKOFF_MS_MAX);
    Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_from_the_initial_wait_and_stops_at_the_maximum() {
        assert_eq!(
            backoff(1),
            Duration::from_millis(GATEWAY_EVENTS_RESUBSCRIBE_BACKOFF_MS_INITIAL)
        );
        assert_eq!(
            backoff(2),
            Duration::from_millis(2 * GATEWAY_EVENTS_RESUBSCRIBE_BACKOFF_MS_INITIAL)
        );
        assert_eq!(
            backoff(u32::MAX),
            Duration::from_millis(GATEWAY_EVENTS_RESUBSCRIBE_BACKOFF_MS_MAX)
        );
    }

    #[test]
    fn gone_passes_through_unchanged_and_anything_else_is_unavailable_naming_the_group() {
        let group = GroupId::from_u128(0xab);
        let gone = ClientError::EventsGone {
            first_seq: 17,
            message: "the events after 3 are gone; the first is 17".into(),
        };
        assert_eq!(
            refused(group, gone),
            EventsRefusal::Gone {
                first_seq: 17,
                message: "the events after 3 are gone; the first is 17".into()
            }
        );
        match refused(group, ClientError::Invalid("no events kept".into())) {
            EventsRefusal::Unavailable(message) => {
                assert!(message.contains(&group.to_string()), "{message}");
                assert!(message.contains("no events kept"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
}
