//! The change events on the wire: the JSON of `GET /v1/events` and the protobuf of the
//! `fincore.v1.Events` service (`proto/fincore/v1/events.proto`), both schema version
//! [`ledger::EVENT_SCHEMA_VERSION`], converted from and to `ledger::Event`.
//!
//! JSON follows the rest of the API: ids, amounts and timestamps are decimal strings, flags
//! arrays of names; the counters of the stream itself (`version`, `seq`, the marker's fields)
//! are JSON integers. Owns only the shapes and their conversions; what an event means is the
//! ledger's (`ledger::EventKind`), where it is read from is the server's.

use serde::{Deserialize, Serialize};

use ledger::{
    Balances, BatchMarker, EVENT_SCHEMA_VERSION, Event, EventBody, EventKind, RemoteSides,
    TransferChange,
};

use crate::convert::{
    WireError, account_from, account_to, transfer_from, transfer_to, u128_from, u128_to,
};
use crate::json::{AccountJson, TransferJson};
use crate::json_number::{u64_text, u128_text};
use crate::proto;

/// What happened (`type`), as `ledger::EventKind` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = EventType))]
#[serde(rename_all = "snake_case")]
pub enum EventTypeJson {
    AccountCreated,
    TransferCreated,
    TransferPosted,
    TransferVoided,
    TransferExpired,
    SagaReserved,
    SagaConfirmed,
    SagaCancelled,
    Batch,
}

impl From<EventKind> for EventTypeJson {
    fn from(kind: EventKind) -> EventTypeJson {
        match kind {
            EventKind::AccountCreated => EventTypeJson::AccountCreated,
            EventKind::TransferCreated => EventTypeJson::TransferCreated,
            EventKind::TransferPosted => EventTypeJson::TransferPosted,
            EventKind::TransferVoided => EventTypeJson::TransferVoided,
            EventKind::TransferExpired => EventTypeJson::TransferExpired,
            EventKind::SagaReserved => EventTypeJson::SagaReserved,
            EventKind::SagaConfirmed => EventTypeJson::SagaConfirmed,
            EventKind::SagaCancelled => EventTypeJson::SagaCancelled,
            EventKind::Batch => EventTypeJson::Batch,
        }
    }
}

/// One side of a transfer right after the event (`debit_account`, `credit_account`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = EventSide))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventSideJson {
    /// The account's id.
    #[serde(with = "u128_text")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::schema::U128))]
    pub id: u128,
    #[serde(with = "u128_text")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::schema::U128))]
    pub debits_pending: u128,
    #[serde(with = "u128_text")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::schema::U128))]
    pub debits_posted: u128,
    #[serde(with = "u128_text")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::schema::U128))]
    pub credits_pending: u128,
    #[serde(with = "u128_text")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::schema::U128))]
    pub credits_posted: u128,
    /// The account lives in another group: the balances are this group's clearing balance of
    /// the transfer's ledger (saga events only), each modulo 2^128 (a clearing balance sums a
    /// ledger's sagas over every account and may pass it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub clearing: bool,
}

/// The marker closing a batch: its events are `first_seq .. first_seq + events_count - 1`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = BatchMarker))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchMarkerJson {
    pub first_seq: u64,
    pub events_count: u32,
    /// The batch's Raft log index.
    pub log_index: u64,
}

/// One change event.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = Event))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventJson {
    /// The schema version (1).
    pub version: u32,
    /// Contiguous per group from 1; the same on every replica.
    pub seq: u64,
    #[serde(rename = "type")]
    pub kind: EventTypeJson,
    /// Nanoseconds (see docs/events.md for which timestamp each type carries).
    #[serde(with = "u64_text")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::schema::U64))]
    pub timestamp: u64,
    /// `account_created` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<AccountJson>,
    /// Transfer and saga events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<TransferJson>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debit_account: Option<EventSideJson>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credit_account: Option<EventSideJson>,
    /// `batch` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchMarkerJson>,
}

/// `{"events": [...], "first_seq": F, "last_seq": L}`: a page of `GET /v1/events`, with the
/// first and last events this replica has (`first_seq = last_seq + 1`: none yet).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = Events))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsJson {
    pub events: Vec<EventJson>,
    pub first_seq: u64,
    pub last_seq: u64,
}

/// A transfer event's (debit, credit) sides, each made by `side` from its account id,
/// balances and whether it is the clearing balance.
fn sides<S>(change: &TransferChange, side: fn(u128, &Balances, bool) -> S) -> (S, S) {
    let t = &change.transfer;
    (
        side(
            t.debit_account_id,
            &change.debit,
            change.remote.contains(RemoteSides::DEBIT),
        ),
        side(
            t.credit_account_id,
            &change.credit,
            change.remote.contains(RemoteSides::CREDIT),
        ),
    )
}

fn side_json(id: u128, balances: &Balances, clearing: bool) -> EventSideJson {
    EventSideJson {
        id,
        debits_pending: balances.debits_pending,
        debits_posted: balances.debits_posted,
        credits_pending: balances.credits_pending,
        credits_posted: balances.credits_posted,
        clearing,
    }
}

impl From<&Event> for EventJson {
    fn from(event: &Event) -> EventJson {
        let mut json = EventJson {
            version: EVENT_SCHEMA_VERSION,
            seq: event.seq,
            kind: event.kind.into(),
            timestamp: event.timestamp,
            account: None,
            transfer: None,
            debit_account: None,
            credit_account: None,
            batch: None,
        };
        match &event.body {
            EventBody::Account(account) => json.account = Some(account.into()),
            EventBody::Transfer(change) => {
                let t = &change.transfer;
                json.transfer = Some(t.into());
                let (debit, credit) = sides(change, side_json);
                json.debit_account = Some(debit);
                json.credit_account = Some(credit);
            }
            EventBody::Batch(marker) => {
                json.batch = Some(BatchMarkerJson {
                    first_seq: marker.first_seq,
                    events_count: marker.events_count,
                    log_index: marker.log_index,
                });
            }
        }
        json
    }
}

impl From<EventTypeJson> for EventKind {
    fn from(kind: EventTypeJson) -> EventKind {
        match kind {
            EventTypeJson::AccountCreated => EventKind::AccountCreated,
            EventTypeJson::TransferCreated => EventKind::TransferCreated,
            EventTypeJson::TransferPosted => EventKind::TransferPosted,
            EventTypeJson::TransferVoided => EventKind::TransferVoided,
            EventTypeJson::TransferExpired => EventKind::TransferExpired,
            EventTypeJson::SagaReserved => EventKind::SagaReserved,
            EventTypeJson::SagaConfirmed => EventKind::SagaConfirmed,
            EventTypeJson::SagaCancelled => EventKind::SagaCancelled,
            EventTypeJson::Batch => EventKind::Batch,
        }
    }
}

/// A transfer event's body from its transfer and its (balances, clearing) sides.
fn transfer_body(
    transfer: ledger::Transfer,
    (debit, debit_clearing): (Balances, bool),
    (credit, credit_clearing): (Balances, bool),
) -> EventBody {
    let mut remote = RemoteSides::empty();
    remote.set(RemoteSides::DEBIT, debit_clearing);
    remote.set(RemoteSides::CREDIT, credit_clearing);
    EventBody::Transfer(TransferChange {
        transfer,
        remote,
        debit,
        credit,
    })
}

/// A transfer event's side read back: it must be the transfer's account on that side.
fn side_back(
    side: Option<&EventSideJson>,
    name: &str,
    account_id: u128,
) -> Result<(Balances, bool), WireError> {
    let side = side.ok_or_else(|| WireError::new(name, "missing"))?;
    if side.id != account_id {
        return Err(WireError::new(
            format!("{name}.id"),
            format!(
                "{} is not the transfer's account on that side ({account_id})",
                side.id
            ),
        ));
    }
    let balances = Balances {
        debits_pending: side.debits_pending,
        debits_posted: side.debits_posted,
        credits_pending: side.credits_pending,
        credits_posted: side.credits_posted,
    };
    Ok((balances, side.clearing))
}

/// An event read back from its JSON (a NATS message's body, a page of `GET /v1/events`):
/// the reverse of `EventJson::from`, checked. The parts a type does not carry must be absent.
pub fn event_from_json(json: &EventJson) -> Result<Event, WireError> {
    if json.version != EVENT_SCHEMA_VERSION {
        return Err(WireError::new(
            "version",
            format!(
                "schema version {} is not {EVENT_SCHEMA_VERSION}, the one this reader reads",
                json.version
            ),
        ));
    }
    let kind = EventKind::from(json.kind);
    let extra = |name: &str| WireError::new(name, format!("not part of a {:?} event", json.kind));
    let body = match kind {
        EventKind::AccountCreated => {
            let account = json
                .account
                .as_ref()
                .ok_or_else(|| WireError::new("account", "missing"))?;
            if json.transfer.is_some() || json.debit_account.is_some() {
                return Err(extra("transfer"));
            }
            EventBody::Account(account.into())
        }
        EventKind::Batch => {
            let marker = json
                .batch
                .ok_or_else(|| WireError::new("batch", "missing"))?;
            if json.account.is_some() || json.transfer.is_some() {
                return Err(extra("account"));
            }
            EventBody::Batch(BatchMarker {
                first_seq: marker.first_seq,
                events_count: marker.events_count,
                log_index: marker.log_index,
            })
        }
        _ => {
            let transfer: ledger::Transfer = json
                .transfer
                .as_ref()
                .ok_or_else(|| WireError::new("transfer", "missing"))?
                .into();
            if json.account.is_some() || json.batch.is_some() {
                return Err(extra("account"));
            }
            let debit = side_back(
                json.debit_account.as_ref(),
                "debit_account",
                transfer.debit_account_id,
            )?;
            let credit = side_back(
                json.credit_account.as_ref(),
                "credit_account",
                transfer.credit_account_id,
            )?;
            transfer_body(transfer, debit, credit)
        }
    };
    Ok(Event {
        seq: json.seq,
        kind,
        timestamp: json.timestamp,
        body,
    })
}

fn side_proto(id: u128, balances: &Balances, clearing: bool) -> proto::EventSide {
    proto::EventSide {
        id: u128_to(id),
        debits_pending: u128_to(balances.debits_pending),
        debits_posted: u128_to(balances.debits_posted),
        credits_pending: u128_to(balances.credits_pending),
        credits_posted: u128_to(balances.credits_posted),
        clearing,
    }
}

fn side_from(side: Option<&proto::EventSide>) -> (Balances, bool) {
    side.map_or((Balances::default(), false), |s| {
        (
            Balances {
                debits_pending: u128_from(s.debits_pending),
                debits_posted: u128_from(s.debits_posted),
                credits_pending: u128_from(s.credits_pending),
                credits_posted: u128_from(s.credits_posted),
            },
            s.clearing,
        )
    })
}

/// An event as the `Events` service sends it.
pub fn event_to(event: &Event) -> proto::Event {
    let mut out = proto::Event {
        version: EVENT_SCHEMA_VERSION,
        seq: event.seq,
        r#type: i32::from(event.kind as u8),
        timestamp: event.timestamp,
        ..Default::default()
    };
    match &event.body {
        EventBody::Account(account) => out.account = Some(account_to(account)),
        EventBody::Transfer(change) => {
            let t = &change.transfer;
            out.transfer = Some(transfer_to(t));
            let (debit, credit) = sides(change, side_proto);
            out.debit_account = Some(debit);
            out.credit_account = Some(credit);
        }
        EventBody::Batch(marker) => {
            out.batch = Some(proto::BatchMarker {
                first_seq: marker.first_seq,
                events_count: marker.events_count,
                log_index: marker.log_index,
            });
        }
    }
    out
}

/// An event received from the `Events` service (`at`: its place in the page, for errors).
pub fn event_from(event: &proto::Event, at: usize) -> Result<Event, WireError> {
    let field = |name: &str| format!("events[{at}].{name}");
    if event.version != EVENT_SCHEMA_VERSION {
        return Err(WireError::new(
            field("version"),
            format!(
                "schema version {} is not {EVENT_SCHEMA_VERSION}, the one this client reads",
                event.version
            ),
        ));
    }
    let kind = u8::try_from(event.r#type)
        .ok()
        .and_then(EventKind::from_u8)
        .ok_or_else(|| WireError::new(field("type"), format!("unknown type {}", event.r#type)))?;
    let missing = |name: &str| WireError::new(field(name), "missing");
    let body = match kind {
        EventKind::AccountCreated => EventBody::Account(account_from(
            event.account.as_ref().ok_or_else(|| missing("account"))?,
            at,
        )?),
        EventKind::Batch => {
            let marker = event.batch.as_ref().ok_or_else(|| missing("batch"))?;
            EventBody::Batch(BatchMarker {
                first_seq: marker.first_seq,
                events_count: marker.events_count,
                log_index: marker.log_index,
            })
        }
        _ => {
            let transfer = transfer_from(
                event.transfer.as_ref().ok_or_else(|| missing("transfer"))?,
                at,
            )?;
            transfer_body(
                transfer,
                side_from(event.debit_account.as_ref()),
                side_from(event.credit_account.as_ref()),
            )
        }
    };
    Ok(Event {
        seq: event.seq,
        kind,
        timestamp: event.timestamp,
        body,
    })
}

#[cfg(test)]
mod tests {
    use ledger::{Account, Batch, BatchBody, StateMachine, Transfer, TransferFlags};

    use super::*;

    fn sample_events() -> Vec<Event> {
        let mut state = StateMachine::default();
        state.set_events(true);
        let accounts = (1..=2)
            .map(|id| Account {
                id,
                ledger: 7,
                code: 1,
                ..Default::default()
            })
            .collect();
        state.apply(&Batch {
            timestamp: 10,
            body: BatchBody::CreateAccounts(accounts),
        });
        state.apply(&Batch {
            timestamp: 20,
            body: BatchBody::CreateTransfers(vec![Transfer {
                id: u128::MAX - 1,
                debit_account_id: 1,
                credit_account_id: 2,
                amount: 1 << 100,
                ledger: 7,
                code: 1,
                flags: TransferFlags::PENDING,
                ..Default::default()
            }]),
        });
        state.take_events(2)
    }

    #[test]
    fn events_survive_protobuf_and_json_carries_the_documented_shape() {
        let events = sample_events();
        for (at, event) in events.iter().enumerate() {
            assert_eq!(event_from(&event_to(event), at).unwrap(), *event);
        }
        let json = serde_json::to_value(EventJson::from(&events[3])).unwrap();
        assert_eq!(json["version"], 1);
        assert_eq!(json["seq"], 4);
        assert_eq!(json["type"], "transfer_created");
        assert_eq!(json["transfer"]["amount"], (1u128 << 100).to_string());
        assert_eq!(json["transfer"]["flags"], serde_json::json!(["pending"]));
        assert_eq!(json["debit_account"]["id"], "1");
        assert_eq!(
            json["debit_account"]["debits_pending"],
            (1u128 << 100).to_string()
        );
        assert!(json["debit_account"].get("clearing").is_none());
        let marker = serde_json::to_value(EventJson::from(&events[4])).unwrap();
        assert_eq!(
            marker["batch"],
            serde_json::json!({"first_seq": 4, "events_count": 1, "log_index": 2})
        );
        let back: EventJson = serde_json::from_value(json).unwrap();
        assert_eq!(back, EventJson::from(&events[3]));
    }

    #[test]
    fn an_event_at_its_widest_fits_the_json_and_protobuf_limits() {
        let wide = crate::widest::widest_transfer();
        let side = Balances {
            debits_pending: u128::MAX,
            debits_posted: u128::MAX,
            credits_pending: u128::MAX,
            credits_posted: u128::MAX,
        };
        let event = Event {
            seq: u64::MAX,
            kind: EventKind::SagaCancelled,
            timestamp: u64::MAX,
            body: EventBody::Transfer(TransferChange {
                transfer: wide,
                remote: RemoteSides::all(),
                debit: side,
                credit: side,
            }),
        };
        let json = serde_json::to_vec(&EventJson::from(&event)).unwrap();
        assert!(json.len() <= limits::EVENT_JSON_BYTES_MAX, "{}", json.len());
        let proto = prost::Message::encoded_len(&event_to(&event));
        // In a page, each event also costs its tag and length prefix.
        assert!(proto + 4 <= limits::EVENT_PROTO_BYTES_MAX, "{proto}");
    }

    #[test]
    fn events_survive_json_and_back() {
        let mut events = sample_events();
        // A saga's event, with a side that is a clearing balance.
        if let EventBody::Transfer(change) = &events[3].body {
            let mut saga = events[3];
            saga.kind = EventKind::SagaReserved;
            saga.body = EventBody::Transfer(TransferChange {
                remote: RemoteSides::CREDIT,
                ..*change
            });
            events.push(saga);
        }
        for event in &events {
            let text = serde_json::to_vec(&EventJson::from(event)).unwrap();
            let json: EventJson = serde_json::from_slice(&text).unwrap();
            assert_eq!(event_from_json(&json).unwrap(), *event);
        }
    }

    #[test]
    fn json_that_is_not_an_event_is_refused_naming_the_field() {
        let events = sample_events();
        let json = EventJson::from(&events[3]);
        let refused = |json: EventJson| event_from_json(&json).unwrap_err().field;
        assert_eq!(
            refused(EventJson {
                version: 2,
                ..json.clone()
            }),
            "version"
        );
        assert_eq!(
            refused(EventJson {
                transfer: None,
                ..json.clone()
            }),
            "transfer"
        );
        assert_eq!(
            refused(EventJson {
                credit_account: None,
                ..json.clone()
            }),
            "credit_account"
        );
        let mut wrong_side = json.clone();
        wrong_side.debit_account.as_mut().unwrap().id = 99;
        assert_eq!(refused(wrong_side), "debit_account.id");
        assert_eq!(
            refused(EventJson {
                kind: EventTypeJson::Batch,
                ..json.clone()
            }),
            "batch"
        );
        assert_eq!(
            refused(EventJson {
                kind: EventTypeJson::AccountCreated,
                ..json
            }),
            "account"
        );
    }

    #[test]
    fn an_event_of_another_schema_version_is_refused_naming_the_field() {
        let mut wire = event_to(&sample_events()[0]);
        wire.version = 2;
        let error = event_from(&wire, 3).unwrap_err();
        assert_eq!(error.field, "events[3].version");
    }
}
