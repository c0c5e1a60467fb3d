//! A group's JetStream stream: created when missing (one subject, limits retention, file
//! storage, the configured duplicate window, first sequence 1), checked when it exists (its
//! subjects, retention and first sequence must keep stream sequence N = event N), and its
//! tail read back: the last event it holds, from the broker itself, never from local state.
//!
//! Owns the stream's setup and the reading of its tail; must not publish.

use std::time::Duration;

use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::context::{Context, GetStreamErrorKind};
use async_nats::jetstream::stream::{
    Config as StreamConfig, DiscardPolicy, LastRawMessageErrorKind, RetentionPolicy, StorageType,
    Stream,
};

use crate::error::{CdcError, Resync, Stop};
use crate::message;

/// Where one group's events go.
#[derive(Debug, Clone)]
pub struct Target {
    pub group: String,
    pub subject: String,
    pub stream: String,
    /// Of a stream created here.
    pub duplicate_window: Duration,
    /// Where the group's progress is counted (`fincore_cdc_*`).
    pub progress: telemetry::FollowGroup,
}

impl Target {
    fn wrong(&self, reason: String) -> Stop {
        Stop::Fatal(CdcError::Stream {
            stream: self.stream.clone(),
            reason,
        })
    }

    /// The stream this publisher creates when there is none.
    fn config(&self) -> StreamConfig {
        StreamConfig {
            name: self.stream.clone(),
            description: Some(format!(
                "fincore change events of group {} (fincore cdc): event N at stream sequence N",
                self.group
            )),
            subjects: vec![self.subject.clone()],
            retention: RetentionPolicy::Limits,
            storage: StorageType::File,
            discard: DiscardPolicy::Old,
            duplicate_window: self.duplicate_window,
            max_message_size: i32::try_from(limits::CDC_MESSAGE_BYTES_MAX)
                .expect("a message's limit fits an i32"),
            ..StreamConfig::default()
        }
    }
}

/// The group's stream, created if missing, checked if not.
pub async fn ensure(context: &Context, target: &Target) -> Result<Stream, Stop> {
    let broker = |e: &dyn std::fmt::Display| Stop::Resync(Resync::Broker(e.to_string()));
    let stream = match context.get_stream(&target.stream).await {
        Ok(stream) => stream,
        Err(error) => match error.kind() {
            GetStreamErrorKind::JetStream(e) if e.error_code() == ErrorCode::STREAM_NOT_FOUND => {
                match context.create_stream(target.config()).await {
                    Ok(stream) => {
                        tracing::info!(stream = %target.stream, subject = %target.subject, "created the stream");
                        stream
                    }
                    // Another publisher created it first: take theirs, checked below. Else
                    // the creation's own error is what to report, not "not found".
                    Err(created) => match context.get_stream(&target.stream).await {
                        Ok(stream) => stream,
                        Err(_) => {
                            return Err(broker(&format!(
                                "creating the stream {}: {created}",
                                target.stream
                            )));
                        }
                    },
                }
            }
            _ => return Err(broker(&error)),
        },
    };
    check(context, target, &stream).await?;
    Ok(stream)
}

/// An existing stream keeps stream sequence N = event N only if it takes this group's subject
/// alone, never removes messages on its own, and numbers from 1.
async fn check(context: &Context, target: &Target, stream: &Stream) -> Result<(), Stop> {
    let config = &stream.cached_info().config;
    if config.subjects != [target.subject.clone()] {
        return Err(target.wrong(format!(
            "subjects: it takes {:?}, not exactly [{:?}]; a group's stream must take its subject alone (event N is stream sequence N); give another --stream or --subject-prefix",
            config.subjects, target.subject
        )));
    }
    if config.retention != RetentionPolicy::Limits {
        return Err(target.wrong(format!(
            "retention: {:?} removes messages once consumed, and the publisher resumes from what the stream holds; use limits retention",
            config.retention
        )));
    }
    if config.mirror.is_some() || config.sealed {
        return Err(target.wrong("a mirror or a sealed stream cannot be published to".into()));
    }
    // `first_seq` (NATS 2.10+) is read from the raw answer: the typed config of this client
    // build omits it.
    let info: serde_json::Value = context
        .request(format!("STREAM.INFO.{}", target.stream), &())
        .await
        .map_err(|e| Stop::Resync(Resync::Broker(e.to_string())))?;
    let first_seq = info["config"]["first_seq"].as_u64().unwrap_or(0);
    if first_seq > 1 {
        return Err(target.wrong(format!(
            "first_seq: it numbers from {first_seq}, so stream sequence N would not be event N; recreate it without a first sequence"
        )));
    }
    Ok(())
}

/// The last event the stream holds (0: none yet), read from the broker and checked against
/// the message id of its last message.
pub async fn tail(stream: &Stream, target: &Target) -> Result<u64, Stop> {
    let broker = |e: &dyn std::fmt::Display| Stop::Resync(Resync::Broker(e.to_string()));
    let info = stream.get_info().await.map_err(|e| broker(&e))?;
    let last = info.state.last_sequence;
    if info.state.messages == 0 {
        if last > 0 {
            // Purged: events 1..=last went in under the expected-sequence check.
            tracing::warn!(stream = %target.stream, last, "the stream holds no message; resuming after its last sequence");
        }
        return Ok(last);
    }
    let message = match stream
        .get_last_raw_message_by_subject(&target.subject)
        .await
    {
        Ok(message) => message,
        Err(error) if matches!(error.kind(), LastRawMessageErrorKind::NoMessageFound) => {
            return Err(target.wrong(format!(
                "it holds {} messages but none on {}",
                info.state.messages, target.subject
            )));
        }
        Err(error) => return Err(broker(&error)),
    };
    let id = message
        .headers
        .get(async_nats::header::NATS_MESSAGE_ID)
        .map(|v| v.as_str().to_string());
    let named = id
        .as_deref()
        .and_then(|id| message::seq_of(&target.group, id));
    if named != Some(message.sequence) {
        return Err(target.wrong(format!(
            "its message at stream sequence {} has the id {:?}, not {:?}: something else publishes to {}; stream sequence N must be event N",
            message.sequence,
            id,
            message::message_id(&target.group, message.sequence),
            target.subject
        )));
    }
    // A later message may have been deleted (its sequence stays taken), or one published
    // since the info was read.
    Ok(last.max(message.sequence))
}
