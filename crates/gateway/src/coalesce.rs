//! Coalescing across callers: the parts of many callers' batches bound for one group are sent
//! to it together, up to a full batch, as a node's pipeline coalesces requests. A
//! [`GroupWriter`] holds a bounded queue of parts (full: `Busy`) and a task that takes a part,
//! waits for one of `GATEWAY_GROUP_CALLS_IN_FLIGHT_MAX` call slots (the wait is what lets parts
//! pile up), adds the parts queued meanwhile that [`joins`] allows, makes one call and gives
//! each part its own slice of the results (or the call's error). The call runs in a span that
//! continues the first sampled part's caller's trace and links the others'
//! (`telemetry::trace::call_span`).
//!
//! Owns only that. A part never changes another part's results: parts join only as the node's
//! pipeline lets requests join (no part after one leaving a linked chain open; only parts
//! whose first event is `imported` exactly when the batch's first is). Must not route or
//! retry (the client retries each call with the same events).

use std::sync::Arc;

use client::{Client, ClientError};
use futures::future::BoxFuture;
use ledger::{BATCH_EVENTS_MAX, EventResult};
use limits::{GATEWAY_GROUP_CALLS_IN_FLIGHT_MAX, GATEWAY_GROUP_QUEUE_PARTS_MAX};
use server::PipelineError;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::Instrument;

use crate::router::Routed;

/// A group's answer to a call: one result per event sent.
pub(crate) type ClientResults<R> = Result<Vec<EventResult<R>>, ClientError>;

/// How a writer calls its group with a batch of events.
pub(crate) type Send<E> =
    fn(Client, Vec<E>) -> BoxFuture<'static, ClientResults<<E as Routed>::Result>>;

/// One caller's part waiting to be sent, with where its results go and the caller's span (the
/// call that carries it joins the caller's trace).
struct Queued<E: Routed> {
    events: Vec<E>,
    respond: oneshot::Sender<ClientResults<E::Result>>,
    span: tracing::Span,
}

/// Sends one kind of event to one group, coalescing callers' parts.
pub(crate) struct GroupWriter<E: Routed> {
    sender: mpsc::Sender<Queued<E>>,
}

impl<E> GroupWriter<E>
where
    E: Routed + std::marker::Send + 'static,
    E::Result: std::marker::Send + Clone + 'static,
{
    /// Starts the writer's task (inside a Tokio runtime); it ends when the writer is dropped.
    pub(crate) fn start(group: Arc<str>, client: Client, send: Send<E>) -> GroupWriter<E> {
        let (sender, receiver) = mpsc::channel(GATEWAY_GROUP_QUEUE_PARTS_MAX);
        tokio::spawn(batcher(group, client, send, receiver));
        GroupWriter { sender }
    }

    /// Queues `events` (one caller's part) and waits for their results; `Busy` at once when
    /// the queue is full.
    pub(crate) async fn write(
        &self,
        events: Vec<E>,
    ) -> Result<ClientResults<E::Result>, PipelineError> {
        let (respond, answer) = oneshot::channel();
        self.sender
            .try_send(Queued {
                events,
                respond,
                span: tracing::Span::current(),
            })
            .map_err(|error| match error {
                mpsc::error::TrySendError::Full(_) => PipelineError::Busy,
                mpsc::error::TrySendError::Closed(_) => {
                    PipelineError::Unavailable("the gateway is shutting down".into())
                }
            })?;
        answer
            .await
            .map_err(|_| PipelineError::Unavailable("the gateway is shutting down".into()))
    }
}

/// Whether `next` may be sent in one batch after `parts` without changing any part's results
/// (the rule of the node's pipeline, for the same reasons).
fn joins<E: Routed>(parts: &[Queued<E>], next: &Queued<E>) -> bool {
    let leaves_chain_open = parts
        .last()
        .and_then(|part| part.events.last())
        .is_some_and(E::linked);
    let imported = |queued: &Queued<E>| queued.events.first().is_some_and(E::imported);
    !leaves_chain_open && parts.first().map(imported) == Some(imported(next))
}

async fn batcher<E>(
    group: Arc<str>,
    client: Client,
    send: Send<E>,
    mut receiver: mpsc::Receiver<Queued<E>>,
) where
    E: Routed + std::marker::Send + 'static,
    E::Result: std::marker::Send + Clone + 'static,
{
    let in_flight = Arc::new(Semaphore::new(GATEWAY_GROUP_CALLS_IN_FLIGHT_MAX));
    let mut carried: Option<Queued<E>> = None;
    loop {
        let first = match carried.take() {
            Some(first) => first,
            None => match receiver.recv().await {
                Some(first) => first,
                None => break,
            },
        };
        let permit = Arc::clone(&in_flight)
            .acquire_owned()
            .await
            .expect("never closed");
        let mut total = first.events.len();
        let mut parts = vec![first];
        while total < BATCH_EVENTS_MAX {
            match receiver.try_recv() {
                Ok(next)
                    if total + next.events.len() <= BATCH_EVENTS_MAX && joins(&parts, &next) =>
                {
                    total += next.events.len();
                    parts.push(next);
                }
                Ok(next) => {
                    carried = Some(next);
                    break;
                }
                Err(_) => break,
            }
        }
        let client = client.clone();
        let callers: Vec<&tracing::Span> = parts.iter().map(|part| &part.span).collect();
        let span = telemetry::trace::call_span("gateway.group_call", &group, total, &callers);
        tokio::spawn(async move {
            let mut events = Vec::with_capacity(total);
            let mut answers = Vec::with_capacity(parts.len());
            for Queued {
                events: mut more,
                respond,
                span: _,
            } in parts
            {
                answers.push((more.len(), respond));
                events.append(&mut more);
            }
            match send(client, events).instrument(span).await {
                Ok(results) if results.len() == total => {
                    let mut results = results.into_iter();
                    for (len, respond) in answers {
                        let _ = respond.send(Ok(results.by_ref().take(len).collect()));
                    }
                }
                Ok(results) => {
                    let error = ClientError::Protocol(format!(
                        "the group answered {} results for {total} events",
                        results.len()
                    ));
                    for (_, respond) in answers {
                        let _ = respond.send(Err(error.clone()));
                    }
                }
                Err(error) => {
                    for (_, respond) in answers {
                        let _ = respond.send(Err(error.clone()));
                    }
                }
            }
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use ledger::{Transfer, TransferFlags};

    use super::*;

    fn part(flags: &[TransferFlags]) -> Queued<Transfer> {
        let events = flags
            .iter()
            .map(|&flags| Transfer {
                flags,
                ..Default::default()
            })
            .collect();
        Queued {
            events,
            respond: oneshot::channel().0,
            span: tracing::Span::none(),
        }
    }

    #[test]
    fn a_part_joins_only_where_alone_it_would_get_the_same_results() {
        let plain = TransferFlags::empty();
        let (linked, imported) = (TransferFlags::LINKED, TransferFlags::IMPORTED);
        let batch = [part(&[plain, linked, plain])];
        assert!(joins(&batch, &part(&[plain])));
        assert!(joins(&batch, &part(&[plain, imported])));
        assert!(!joins(&batch, &part(&[imported])));
        let open = [part(&[plain]), part(&[linked])];
        assert!(!joins(&open, &part(&[plain])));
        let imported_batch = [part(&[imported])];
        assert!(joins(&imported_batch, &part(&[imported, plain])));
        assert!(!joins(&imported_batch, &part(&[plain])));
    }
}
