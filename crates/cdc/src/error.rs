//! Why a publisher stops or starts over: [`CdcError`] ends the process (the operator must act),
//! [`Resync`] makes one group read the stream's tail again and go on from there.
//!
//! Owns the wording of what the operator reads; must not decide what to do about a failure
//! (the group loop, `group`, does).

/// A failure that retrying cannot fix: the publisher stops and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum CdcError {
    /// A flag or a group's description is wrong (`field` names it).
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    /// The stream exists but is not one this publisher can write to gap-free.
    #[error("stream {stream}: {reason}")]
    Stream { stream: String, reason: String },
    /// Events no replica has any more: publishing on would leave a gap, so the group stops.
    #[error(
        "group {group}: events {first_lost}..={last_lost} are gone from every replica ({replicas}); the stream ends at seq {published} and cannot go on without a gap: rebuild downstream from a snapshot, or restore a replica that still has them"
    )]
    EventsGone {
        group: String,
        /// The last event the stream holds.
        published: u64,
        first_lost: u64,
        last_lost: u64,
        /// Each replica and the first event it still has.
        replicas: String,
    },
    /// A node refused the API key (none, unknown, or without the role `read`).
    #[error("group {group}: replica {replica} refused the API key: {reason}")]
    Refused {
        group: String,
        replica: String,
        reason: String,
    },
    /// The broker could not be reached or refused the connection.
    #[error("NATS at {url}: {reason}")]
    Nats { url: String, reason: String },
}

/// Why a group reads the stream's tail again (logged, then retried after a backoff).
#[derive(Debug, thiserror::Error)]
pub enum Resync {
    /// The broker refused a publish (wrong last sequence: another publisher got there first).
    #[error("the broker refused event {seq}: {reason}")]
    Refused { seq: u64, reason: String },
    /// A publish was not acknowledged (timeout, connection lost).
    #[error("event {seq} was not acknowledged: {reason}")]
    Unacknowledged { seq: u64, reason: String },
    /// The replicas could not be read for now.
    #[error("reading the replicas: {0}")]
    Source(String),
    /// A JetStream request (stream info, last message) failed.
    #[error("asking the broker: {0}")]
    Broker(String),
}

/// A group's outcome: it stops for good, or it starts over from the stream's tail.
#[derive(Debug)]
pub enum Stop {
    Fatal(CdcError),
    Resync(Resync),
}

impl From<CdcError> for Stop {
    fn from(error: CdcError) -> Stop {
        Stop::Fatal(error)
    }
}

impl From<Resync> for Stop {
    fn from(resync: Resync) -> Stop {
        Stop::Resync(resync)
    }
}
