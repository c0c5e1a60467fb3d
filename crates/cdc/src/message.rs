//! One event as one JetStream message: the body is exactly the event's JSON as an element of
//! `GET /v1/events`' `events` array (`api::events::EventJson`, schema v1: the server's own
//! conversion), the message id `<group>:<seq>`, and the expected last stream sequence
//! `seq - 1`. Each group has a stream of its own, holding event N at stream sequence N, so the
//! broker itself refuses a gap or a repeat (see `docs/events.md`, "Publishing to NATS").
//!
//! [`decode`] reads a message back (`fincore project --nats`), checked: a message that is not
//! exactly the event its stream sequence names is refused, naming the part.
//!
//! Owns the message's shape; must not publish (the `publisher`) nor read the stream (`stream`).

use async_nats::jetstream::message::PublishMessage as Publish;
use bytes::Bytes;
use ledger::Event;

/// An event ready to publish: its sequence number and its JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub seq: u64,
    pub body: Bytes,
}

/// The event's JSON, as the node serves it.
pub fn encode(event: &Event) -> Encoded {
    let json = api::events::EventJson::from(event);
    let body = serde_json::to_vec(&json).expect("an event's JSON always serializes");
    debug_assert!(body.len() <= limits::EVENT_JSON_BYTES_MAX);
    Encoded {
        seq: event.seq,
        body: Bytes::from(body),
    }
}

/// `<group>:<seq>`: the broker's `Nats-Msg-Id`, unique per event.
pub fn message_id(group: &str, seq: u64) -> String {
    format!("{group}:{seq}")
}

/// The sequence number a message id of `group` names (`None`: not one of this group's ids).
pub fn seq_of(group: &str, message_id: &str) -> Option<u64> {
    let seq = message_id.strip_prefix(group)?.strip_prefix(':')?;
    if seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    seq.parse().ok()
}

/// Why a message of a group's stream is not the event its stream sequence names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the message at stream sequence {stream_seq}: {field}: {reason}")]
pub struct MessageError {
    pub stream_seq: u64,
    /// `Nats-Msg-Id`, `body`, or the event's field (`transfer.amount`, `seq`, …).
    pub field: String,
    pub reason: String,
}

/// The event `group`'s message at `stream_seq` holds: its id must be `<group>:<stream_seq>`,
/// its body the JSON of an event (at most `EVENT_JSON_BYTES_MAX` bytes) whose seq is
/// `stream_seq`. Nothing in it is trusted before that.
pub fn decode(
    group: &str,
    stream_seq: u64,
    id: Option<&str>,
    body: &[u8],
) -> Result<Event, MessageError> {
    let refuse = |field: &str, reason: String| MessageError {
        stream_seq,
        field: field.to_string(),
        reason,
    };
    if id.and_then(|id| seq_of(group, id)) != Some(stream_seq) {
        return Err(refuse(
            "Nats-Msg-Id",
            format!("{id:?} is not {:?}", message_id(group, stream_seq)),
        ));
    }
    if body.len() > limits::EVENT_JSON_BYTES_MAX {
        return Err(refuse(
            "body",
            format!(
                "{} bytes, more than an event's JSON can have ({})",
                body.len(),
                limits::EVENT_JSON_BYTES_MAX
            ),
        ));
    }
    let json: api::events::EventJson =
        serde_json::from_slice(body).map_err(|e| refuse("body", e.to_string()))?;
    let event = api::events::event_from_json(&json).map_err(|e| refuse(&e.field, e.reason))?;
    if event.seq != stream_seq {
        return Err(refuse(
            "seq",
            format!("{} is not the stream sequence", event.seq),
        ));
    }
    Ok(event)
}

/// The publish of `event`: its body, its message id, and the stream's expected last sequence
/// (the previous event's), which makes the broker refuse it unless it comes right after.
pub fn publish(group: &str, event: &Encoded) -> Publish {
    assert!(event.seq >= 1, "events are numbered from 1");
    Publish::build()
        .payload(event.body.clone())
        .message_id(message_id(group, event.seq))
        .expected_last_sequence(event.seq - 1)
}

#[cfg(test)]
mod tests {
    use ledger::{BatchMarker, EventBody, EventKind};

    use super::*;

    #[test]
    fn a_message_decodes_to_its_event_and_a_wrong_one_is_refused_naming_the_part() {
        let event = Event {
            seq: 7,
            kind: EventKind::Batch,
            timestamp: 99,
            body: EventBody::Batch(BatchMarker {
                first_seq: 5,
                events_count: 2,
                log_index: 3,
            }),
        };
        let body = encode(&event).body;
        assert_eq!(decode("g1", 7, Some("g1:7"), &body).unwrap(), event);
        let field = |stream_seq: u64, id: Option<&str>, body: &[u8]| {
            decode("g1", stream_seq, id, body).unwrap_err().field
        };
        assert_eq!(field(7, None, &body), "Nats-Msg-Id");
        assert_eq!(field(7, Some("g2:7"), &body), "Nats-Msg-Id");
        assert_eq!(field(8, Some("g1:8"), &body), "seq");
        assert_eq!(field(7, Some("g1:7"), b"{\"seq\": 7"), "body");
        assert_eq!(field(7, Some("g1:7"), &[0xff; 3]), "body");
        let huge = vec![b' '; limits::EVENT_JSON_BYTES_MAX + 1];
        assert_eq!(field(7, Some("g1:7"), &huge), "body");
        let no_marker = String::from_utf8(body.to_vec()).unwrap().replace(
            ",\"batch\":{\"first_seq\":5,\"events_count\":2,\"log_index\":3}",
            "",
        );
        assert_eq!(field(7, Some("g1:7"), no_marker.as_bytes()), "batch");
    }

    #[test]
    fn a_message_id_names_the_group_and_the_seq_and_reads_back() {
        assert_eq!(message_id("g1", 42), "g1:42");
        assert_eq!(seq_of("g1", "g1:42"), Some(42));
        for other in ["g2:42", "g1:", "g1:4x", "g1:-1", "g1-42", "g11:42"] {
            assert_eq!(seq_of("g1", other), None, "{other}");
        }
    }
}
