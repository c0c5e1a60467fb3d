//! The change events an applied batch yields (change-data capture), and their fixed encoding.
//!
//! Every change of state is one event, in the order `apply` made it: an account created; a
//! transfer created (plain or pending), posted, voided, expired; a saga copy reserved,
//! confirmed, cancelled; and one batch marker closing every applied batch. Each transfer event
//! carries the transfer and both sides' four balances as they were right after it.
//!
//! **Sequence numbers are derived, not counted.** Each event adds exactly one record to one of
//! the ledger's append-only collections (accounts, transfers, expiry/settlement events) or, for
//! a marker, one to `batches_applied`; a chain rolled back removes its records and its events
//! together. So the sequence number of the newest event is the sum of those four counts
//! ([`StateMachine::event_seq_last`]): a pure function of the state, carried by every snapshot
//! (old formats included) without a field of its own, equal on every replica at every applied
//! index, never reused after a restart or a leader change.
//!
//! Recording is off by default ([`StateMachine::set_events`]); off, `apply` pays one branch per
//! event and the numbering is unchanged. This module owns the event types, the recording hooks
//! `apply` calls and the 280-byte encoding. It must not decide where events are stored or who
//! reads them (that is `replication::event_log`), nor change what `apply` does.

use crate::codec::{decode_account, decode_transfer, encode_account, encode_transfer};
use crate::history::Balance;
use crate::saga::RemoteSides;
use crate::state::StateMachine;
use crate::types::{Account, Transfer};

/// The version of the event schema (JSON `version`, protobuf `version`, the encoding below).
pub const EVENT_SCHEMA_VERSION: u32 = 1;

/// Size of one encoded [`Event`].
pub const EVENT_ENCODED_BYTES: usize = 280;

/// The four balances of one side of a transfer, right after the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Balances {
    pub debits_pending: u128,
    pub debits_posted: u128,
    pub credits_pending: u128,
    pub credits_posted: u128,
}

/// What happened. The numbers are the encoding's and the protobuf enum's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum EventKind {
    AccountCreated = 1,
    /// A plain transfer (posted at once) or a pending one (see its `pending` flag).
    TransferCreated = 2,
    /// A `post_pending_transfer` transfer: the pending amount released, `amount` posted.
    TransferPosted = 3,
    /// A `void_pending_transfer` transfer: the pending amount released.
    TransferVoided = 4,
    /// A pending transfer's timeout passed; the event carries the pending transfer itself.
    TransferExpired = 5,
    /// A saga copy reserved: its amount pending on its local sides (and clearing).
    SagaReserved = 6,
    /// A saga copy confirmed: its pending amount posted.
    SagaConfirmed = 7,
    /// A saga copy cancelled: its pending amount released.
    SagaCancelled = 8,
    /// The end of one applied batch.
    Batch = 9,
}

impl EventKind {
    pub const ALL: [EventKind; 9] = [
        EventKind::AccountCreated,
        EventKind::TransferCreated,
        EventKind::TransferPosted,
        EventKind::TransferVoided,
        EventKind::TransferExpired,
        EventKind::SagaReserved,
        EventKind::SagaConfirmed,
        EventKind::SagaCancelled,
        EventKind::Batch,
    ];

    pub fn from_u8(value: u8) -> Option<EventKind> {
        EventKind::ALL
            .get(usize::from(value).wrapping_sub(1))
            .copied()
    }

    /// The snake_case name (JSON `type`).
    pub fn name(self) -> &'static str {
        match self {
            EventKind::AccountCreated => "account_created",
            EventKind::TransferCreated => "transfer_created",
            EventKind::TransferPosted => "transfer_posted",
            EventKind::TransferVoided => "transfer_voided",
            EventKind::TransferExpired => "transfer_expired",
            EventKind::SagaReserved => "saga_reserved",
            EventKind::SagaConfirmed => "saga_confirmed",
            EventKind::SagaCancelled => "saga_cancelled",
            EventKind::Batch => "batch",
        }
    }

    pub fn from_name(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|kind| kind.name() == name)
    }
}

/// A transfer event: the transfer and its two sides after the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TransferChange {
    pub transfer: Transfer,
    /// For saga events, the sides booked against the clearing balance (whose balances are
    /// then the clearing balance of the transfer's ledger, modulo `2^128`: see
    /// [`crate::WideBalances`]); empty otherwise.
    pub remote: RemoteSides,
    pub debit: Balances,
    pub credit: Balances,
}

/// The marker closing one applied batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BatchMarker {
    /// The sequence number of the batch's first event (the marker's own if it has none).
    pub first_seq: u64,
    /// Events of the batch before this marker: `first_seq..first_seq + events_count`.
    pub events_count: u32,
    /// The Raft log index of the batch (0 where no log applies it).
    pub log_index: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventBody {
    Account(Account),
    Transfer(TransferChange),
    Batch(BatchMarker),
}

/// One change event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Event {
    /// Contiguous from 1 per group: no gap, never reused.
    pub seq: u64,
    pub kind: EventKind,
    /// When it happened (ns): the object's timestamp, the expiry's or settlement's, or for a
    /// marker the last timestamp of its batch.
    pub timestamp: u64,
    pub body: EventBody,
}

/// Why bytes are not an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventDecodeError {
    #[error("event record is {0} bytes, expected {EVENT_ENCODED_BYTES}")]
    Length(usize),
    #[error("unknown event kind {0}")]
    Kind(u8),
}

impl Event {
    /// Writes the event into `out` (`EVENT_ENCODED_BYTES`): seq, timestamp, kind, remote
    /// sides, six reserved bytes, then the 128-byte account or transfer (or the marker's three
    /// fields), then the debit and credit balances (zeros where they do not apply).
    pub fn encode(&self, out: &mut [u8; EVENT_ENCODED_BYTES]) {
        out.fill(0);
        out[0..8].copy_from_slice(&self.seq.to_le_bytes());
        out[8..16].copy_from_slice(&self.timestamp.to_le_bytes());
        out[16] = self.kind as u8;
        match &self.body {
            EventBody::Account(account) => encode_account(account, &mut out[24..152]),
            EventBody::Transfer(change) => {
                out[17] = change.remote.bits();
                encode_transfer(&change.transfer, &mut out[24..152]);
                encode_balances(&change.debit, &mut out[152..216]);
                encode_balances(&change.credit, &mut out[216..280]);
            }
            EventBody::Batch(marker) => {
                out[24..32].copy_from_slice(&marker.first_seq.to_le_bytes());
                out[32..36].copy_from_slice(&marker.events_count.to_le_bytes());
                out[40..48].copy_from_slice(&marker.log_index.to_le_bytes());
            }
        }
    }

    /// Reads an event written by [`Event::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Event, EventDecodeError> {
        if bytes.len() != EVENT_ENCODED_BYTES {
            return Err(EventDecodeError::Length(bytes.len()));
        }
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8"));
        let kind = EventKind::from_u8(bytes[16]).ok_or(EventDecodeError::Kind(bytes[16]))?;
        let body = match kind {
            EventKind::AccountCreated => EventBody::Account(decode_account(&bytes[24..152])),
            EventKind::Batch => EventBody::Batch(BatchMarker {
                first_seq: u64_at(24),
                events_count: u32::from_le_bytes(bytes[32..36].try_into().expect("4")),
                log_index: u64_at(40),
            }),
            _ => EventBody::Transfer(TransferChange {
                transfer: decode_transfer(&bytes[24..152]),
                remote: RemoteSides::from_bits_retain(bytes[17]),
                debit: decode_balances(&bytes[152..216]),
                credit: decode_balances(&bytes[216..280]),
            }),
        };
        Ok(Event {
            seq: u64_at(0),
            kind,
            timestamp: u64_at(8),
            body,
        })
    }
}

fn encode_balances(b: &Balances, out: &mut [u8]) {
    for (i, value) in [
        b.debits_pending,
        b.debits_posted,
        b.credits_pending,
        b.credits_posted,
    ]
    .into_iter()
    .enumerate()
    {
        out[i * 16..i * 16 + 16].copy_from_slice(&value.to_le_bytes());
    }
}

fn decode_balances(bytes: &[u8]) -> Balances {
    let at = |i: usize| u128::from_le_bytes(bytes[i * 16..i * 16 + 16].try_into().expect("16"));
    Balances {
        debits_pending: at(0),
        debits_posted: at(1),
        credits_pending: at(2),
        credits_posted: at(3),
    }
}

/// One side of a transfer event, as `apply` hands it over: an account here, or the clearing
/// balance of the transfer's ledger.
#[derive(Debug, Clone, Copy)]
pub(crate) enum EventSide {
    Local(u32),
    Clearing,
}

/// What the state machine keeps for recording (see [`StateMachine::set_events`]).
#[derive(Debug, Default)]
pub(crate) struct EventRecorder {
    pub on: bool,
    /// The events of batches applied since the last [`StateMachine::take_events`].
    pub events: Vec<Event>,
    /// `events.len()` when the current linked chain began (a rollback truncates to it).
    pub chain_mark: usize,
}

impl StateMachine {
    /// Whether `apply` records change events (off by default). Only recording depends on
    /// it: results, state and sequence numbers are the same either way.
    pub fn set_events(&mut self, on: bool) {
        self.events.on = on;
        if !on {
            self.events.events = Vec::new();
        }
    }

    /// Whether `apply` records change events.
    pub fn events_on(&self) -> bool {
        self.events.on
    }

    /// The sequence number of the newest event (0 before any): every account, transfer,
    /// expiry or settlement, and applied batch counted once (see the module header).
    pub fn event_seq_last(&self) -> u64 {
        (self.accounts.len() + self.transfers.len() + self.expiry_events.len()) as u64
            + self.batches_applied
    }

    /// Gives back a buffer [`StateMachine::take_events`] returned, emptied, for the next
    /// batch's events: recording then neither grows a vector nor touches fresh pages.
    pub fn recycle_events(&mut self, mut buffer: Vec<Event>) {
        buffer.clear();
        if self.events.on && self.events.events.is_empty() {
            self.events.events = buffer;
        }
    }

    /// Room for a batch of `events_count` events, its expiries and its marker, made before the
    /// batch applies (growing the vector event by event copied it again and again).
    pub(crate) fn reserve_events(&mut self, events_count: usize) {
        if self.events.on {
            self.events
                .events
                .reserve(events_count + limits::BATCH_EXPIRIES_MAX.min(self.expiries.len()) + 1);
        }
    }

    /// The events recorded since the last call, oldest first; `log_index` is written into the
    /// newest batch marker (the caller applies one batch per log entry).
    pub fn take_events(&mut self, log_index: u64) -> Vec<Event> {
        let mut events = std::mem::take(&mut self.events.events);
        if let Some(Event {
            body: EventBody::Batch(marker),
            ..
        }) = events.last_mut()
        {
            marker.log_index = log_index;
        }
        events
    }

    pub(crate) fn event_chain_begins(&mut self) {
        self.events.chain_mark = self.events.events.len();
    }

    pub(crate) fn event_chain_rolled_back(&mut self) {
        let mark = self.events.chain_mark;
        self.events.events.truncate(mark);
    }

    /// Records the account just created (the newest).
    pub(crate) fn record_account_event(&mut self) {
        if !self.events.on {
            return;
        }
        let account = self
            .accounts
            .last()
            .expect("an account was created")
            .account;
        let seq = self.event_seq_last();
        self.events.events.push(Event {
            seq,
            kind: EventKind::AccountCreated,
            timestamp: account.timestamp,
            body: EventBody::Account(account),
        });
    }

    /// Records a transfer event after its change: `transfer` as the event shows it, and its
    /// sides' balances as they are now.
    pub(crate) fn record_transfer_event(
        &mut self,
        kind: EventKind,
        timestamp: u64,
        transfer: &Transfer,
        remote: RemoteSides,
        sides: [EventSide; 2],
    ) {
        if !self.events.on {
            return;
        }
        let balances = |side: EventSide| -> Balances {
            match side {
                EventSide::Local(index) => Balance::of(&self.accounts[index as usize].account),
                EventSide::Clearing => self
                    .clearing
                    .get(&transfer.ledger)
                    .map(|clearing| clearing.low_bits())
                    .unwrap_or_default(),
            }
        };
        let change = TransferChange {
            transfer: *transfer,
            remote,
            debit: balances(sides[0]),
            credit: balances(sides[1]),
        };
        let seq = self.event_seq_last();
        self.events.events.push(Event {
            seq,
            kind,
            timestamp,
            body: EventBody::Transfer(change),
        });
    }

    /// Records the marker of the batch just applied, whose events began after `seq_before`.
    pub(crate) fn record_batch_marker(&mut self, seq_before: u64) {
        let seq = self.event_seq_last();
        debug_assert!(seq > seq_before);
        if !self.events.on {
            return;
        }
        let events_count = u32::try_from(seq - seq_before - 1).expect("a batch's events fit");
        self.events.events.push(Event {
            seq,
            kind: EventKind::Batch,
            timestamp: self.timestamp_last,
            body: EventBody::Batch(BatchMarker {
                first_seq: seq_before + 1,
                events_count,
                log_index: 0,
            }),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TransferFlags;

    #[test]
    fn every_kind_of_event_survives_an_encode_decode_round_trip() {
        let transfer = Transfer {
            id: u128::MAX - 1,
            debit_account_id: 2,
            credit_account_id: 3,
            amount: 1 << 100,
            flags: TransferFlags::PENDING,
            timestamp: 9,
            ..Default::default()
        };
        let events = [
            Event {
                seq: 1,
                kind: EventKind::AccountCreated,
                timestamp: 5,
                body: EventBody::Account(Account {
                    id: 7,
                    ledger: 1,
                    code: 2,
                    timestamp: 5,
                    ..Default::default()
                }),
            },
            Event {
                seq: 2,
                kind: EventKind::SagaReserved,
                timestamp: 9,
                body: EventBody::Transfer(TransferChange {
                    transfer,
                    remote: RemoteSides::CREDIT,
                    debit: Balances {
                        debits_pending: u128::MAX,
                        debits_posted: 1,
                        credits_pending: 2,
                        credits_posted: 3,
                    },
                    credit: Balances::default(),
                }),
            },
            Event {
                seq: u64::MAX,
                kind: EventKind::Batch,
                timestamp: 10,
                body: EventBody::Batch(BatchMarker {
                    first_seq: 1,
                    events_count: 2,
                    log_index: 77,
                }),
            },
        ];
        for event in events {
            let mut bytes = [0u8; EVENT_ENCODED_BYTES];
            event.encode(&mut bytes);
            assert_eq!(Event::decode(&bytes), Ok(event));
        }
        let mut bytes = [0u8; EVENT_ENCODED_BYTES];
        events[0].encode(&mut bytes);
        bytes[16] = 0;
        assert_eq!(Event::decode(&bytes), Err(EventDecodeError::Kind(0)));
        assert_eq!(
            Event::decode(&bytes[1..]),
            Err(EventDecodeError::Length(279))
        );
    }

    #[test]
    fn kind_names_and_numbers_round_trip() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::from_u8(kind as u8), Some(kind));
            assert_eq!(EventKind::from_name(kind.name()), Some(kind));
        }
        assert_eq!(EventKind::from_u8(0), None);
        assert_eq!(EventKind::from_u8(10), None);
    }
}
