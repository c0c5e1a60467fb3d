//! One event as one JetStream message: the body is exactly the event's JSON as an element of
//! `GET /v1/events`' `events` array (`api::events::EventJson`, schema v1: the server's own
//! conversion), the message id `<group>:<seq>`, and the expected last stream sequence
//! `seq - 1`. Each group has a stream of its own, holding event N at stream sequence N, so the
//! broker itself refuses a gap or a repeat (see `docs/events.md`, "Publishing to NATS").
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
    use super::*;

    #[test]
    fn a_message_id_names_the_group_and_the_seq_and_reads_back() {
        assert_eq!(message_id("g1", 42), "g1:42");
        assert_eq!(seq_of("g1", "g1:42"), Some(42));
        for other in ["g2:42", "g1:", "g1:4x", "g1:-1", "g1-42", "g11:42"] {
            assert_eq!(seq_of("g1", other), None, "{other}");
        }
    }
}
