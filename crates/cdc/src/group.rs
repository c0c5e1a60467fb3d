//! One group's publisher, start to end: set up the stream, read its tail, follow the replicas
//! from there and publish; on any refusal or failure, back off (bounded), read the tail again
//! and go on from what the broker holds. Two publishers of one group may run at once: the
//! loser of a race is refused by the broker (wrong last sequence) or answered `duplicate`,
//! re-reads the tail, and continues; neither can duplicate or skip an event.
//!
//! Owns the loop; must not shape messages (`message`) nor judge acknowledgements (`publisher`).

use async_nats::jetstream::context::Context;
use limits::CDC_SOURCE_PAGES_QUEUED_MAX;
use tokio::sync::mpsc;

use crate::error::{CdcError, Stop};
use crate::publisher::{self, Progress};
use crate::source::{self, Backoff, Replica};
use crate::stream::{self, Target};

/// Runs until the group must stop for good (the error says why).
pub async fn run(
    context: Context,
    target: Target,
    replicas: std::sync::Arc<Vec<Replica>>,
    in_flight_max: usize,
) -> CdcError {
    let mut backoff = Backoff::new();
    let mut stream = None;
    loop {
        let stop = match once(&context, &target, &replicas, in_flight_max, &mut stream).await {
            (stop, progress) if progress => {
                backoff.reset();
                stop
            }
            (stop, _) => stop,
        };
        match stop {
            Stop::Fatal(error) => return error,
            Stop::Resync(reason) => {
                tracing::warn!(group = %target.group, stream = %target.stream, "{reason}; reading the stream's tail again");
            }
        }
        tokio::time::sleep(backoff.next_wait()).await;
    }
}

/// One run from the stream's tail; answers why it ended and whether it published anything.
async fn once(
    context: &Context,
    target: &Target,
    replicas: &std::sync::Arc<Vec<Replica>>,
    in_flight_max: usize,
    stream: &mut Option<async_nats::jetstream::stream::Stream>,
) -> (Stop, bool) {
    let handle = match stream {
        Some(handle) => handle,
        None => match stream::ensure(context, target).await {
            Ok(handle) => stream.insert(handle),
            Err(stop) => return (stop, false),
        },
    };
    let tail = match stream::tail(handle, target).await {
        Ok(tail) => tail,
        Err(stop) => {
            // The stream may have been deleted: set it up again next time.
            *stream = None;
            return (stop, false);
        }
    };
    // The stream holds every event up to its tail, whoever published them.
    target.progress.at(tail);
    tracing::info!(group = %target.group, stream = %target.stream, subject = %target.subject, "publishing the events after seq {tail}");
    let (pages, mut received) = mpsc::channel(CDC_SOURCE_PAGES_QUEUED_MAX);
    let feeder = tokio::spawn({
        let (group, replicas) = (target.group.clone(), std::sync::Arc::clone(replicas));
        async move { source::feed(group, &replicas, tail, pages).await }
    });
    let mut progress = Progress::default();
    let stop = publisher::run(
        context,
        target,
        in_flight_max,
        tail,
        &mut received,
        &mut progress,
    )
    .await;
    drop(received);
    let _ = feeder.await;
    if let Stop::Fatal(_) = stop {
        return (stop, false);
    }
    (stop, progress.published > tail)
}
