//! Publishing one group's events in a pipeline: up to `in_flight_max` publishes awaiting their
//! acknowledgement, the acknowledgements awaited in order, each checked to name the event's
//! own stream sequence. The first refusal or failure ends the run with a [`Resync`]: whatever
//! else is in flight may land or not, and the group reads the stream's tail again.
//!
//! The broker keeps this correct on its own (every publish says the stream's last sequence it
//! expects, `seq - 1`); this module only keeps it fast. Owns the window of publishes; must not
//! read the replicas (`source`) nor set up the stream (`stream`).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use async_nats::jetstream::context::{Context, PublishError, PublishErrorKind};
use async_nats::jetstream::publish::PublishAck;
use tokio::sync::mpsc;

use crate::error::{CdcError, Resync, Stop};
use crate::message::{self, Encoded};
use crate::source::Page;
use crate::stream::Target;

type Ack = Pin<Box<dyn Future<Output = Result<PublishAck, PublishError>> + Send>>;

/// A publish awaiting its acknowledgement.
struct InFlight {
    seq: u64,
    sent: Instant,
    ack: Ack,
}

/// Counters of one run, for the logs.
#[derive(Debug, Default, Clone, Copy)]
pub struct Progress {
    /// The last event the broker acknowledged.
    pub published: u64,
    /// Of those, how many the broker had already (another publisher's).
    pub duplicates: u64,
}

/// Publishes every event `pages` brings, from `after + 1` on, until a failure (returned) or
/// the pages end. `progress.published` is the last acknowledged event.
pub async fn run(
    context: &Context,
    target: &Target,
    in_flight_max: usize,
    after: u64,
    pages: &mut mpsc::Receiver<Page>,
    progress: &mut Progress,
) -> Stop {
    assert!(in_flight_max >= 1);
    progress.published = after;
    let mut in_flight: VecDeque<InFlight> = VecDeque::with_capacity(in_flight_max);
    let mut waiting: VecDeque<Encoded> = VecDeque::new();
    let mut next_seq = after + 1;
    let mut logged = (Instant::now(), after);
    loop {
        while in_flight.len() < in_flight_max
            && let Some(event) = waiting.pop_front()
        {
            if event.seq != next_seq {
                return Stop::Resync(Resync::Source(format!(
                    "event {} came where {next_seq} was due",
                    event.seq
                )));
            }
            match context
                .send_publish(
                    target.subject.clone(),
                    message::publish(&target.group, &event),
                )
                .await
            {
                Ok(ack) => in_flight.push_back(InFlight {
                    seq: event.seq,
                    sent: Instant::now(),
                    ack: Box::pin(ack.into_future()),
                }),
                Err(error) => return failed(event.seq, &error),
            }
            next_seq += 1;
        }
        tokio::select! {
            acked = front(&mut in_flight) => {
                let InFlight { seq, sent, .. } =
                    in_flight.pop_front().expect("an ack came from the front");
                if let Err(stop) = check(target, seq, acked, progress) {
                    return stop;
                }
                target.progress.done(seq, 1, sent.elapsed());
                log_progress(target, progress, &mut logged);
            }
            page = pages.recv(), if waiting.is_empty() => match page {
                Some(Ok(events)) => waiting.extend(events),
                Some(Err(stop)) => return stop,
                None => return crate::source::ended_unexpectedly(),
            },
        }
    }
}

/// The front publish's acknowledgement (never, while none is in flight).
async fn front(in_flight: &mut VecDeque<InFlight>) -> Result<PublishAck, PublishError> {
    match in_flight.front_mut() {
        Some(publish) => (&mut publish.ack).await,
        None => std::future::pending().await,
    }
}

/// An acknowledgement must name the event's own stream sequence (a duplicate's names the
/// message the broker already had: the same event, published by another publisher).
fn check(
    target: &Target,
    seq: u64,
    acked: Result<PublishAck, PublishError>,
    progress: &mut Progress,
) -> Result<(), Stop> {
    let ack = acked.map_err(|error| failed(seq, &error))?;
    if ack.sequence != seq || ack.stream != target.stream {
        return Err(Stop::Fatal(CdcError::Stream {
            stream: target.stream.clone(),
            reason: format!(
                "event {seq} was acknowledged as stream {} sequence {} (duplicate: {}): stream sequence N is no longer event N; was the stream written by something else?",
                ack.stream, ack.sequence, ack.duplicate
            ),
        }));
    }
    debug_assert_eq!(seq, progress.published + 1);
    if ack.duplicate && progress.duplicates == 0 {
        tracing::info!(group = %target.group, seq, "event {seq} was in the stream already (another publisher's); going on alongside it");
    }
    progress.published = seq;
    progress.duplicates += u64::from(ack.duplicate);
    Ok(())
}

fn failed(seq: u64, error: &PublishError) -> Stop {
    let reason = match std::error::Error::source(error) {
        Some(source) => format!("{error}: {source}"),
        None => error.to_string(),
    };
    match error.kind() {
        PublishErrorKind::WrongLastSequence | PublishErrorKind::WrongLastMessageId => {
            Stop::Resync(Resync::Refused { seq, reason })
        }
        _ => Stop::Resync(Resync::Unacknowledged { seq, reason }),
    }
}

fn log_progress(target: &Target, progress: &Progress, logged: &mut (Instant, u64)) {
    let elapsed = logged.0.elapsed();
    if elapsed < Duration::from_secs(limits::CDC_PROGRESS_LOG_SECONDS) {
        return;
    }
    let rate = (progress.published - logged.1) as f64 / elapsed.as_secs_f64();
    tracing::info!(
        group = %target.group,
        published = progress.published,
        duplicates = progress.duplicates,
        "published up to seq {} ({rate:.0} events/s)",
        progress.published
    );
    *logged = (Instant::now(), progress.published);
}
