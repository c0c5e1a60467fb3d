//! The change-event API, served alike by a node and a gateway: `GET
//! /v1/events?group=ID&after=SEQ&limit=N` and the gRPC service `fincore.v1.Events` (`Read`, and
//! `Subscribe`: what exists, then new events as they are applied), over an [`EventSource`].
//!
//! A node's source ([`ReplicaEvents`]) is its replica's own event files
//! (`replication::event_log`), so a follower serves them as well as the leader and a read never
//! touches Raft or the ledger's lock; it serves its own group, named or not. A gateway's source
//! forwards to a replica of the group the call names (`group=` / `fincore-group` metadata,
//! required there).
//!
//! Subscribers never hold back apply: each is a task pulling its source's pages at its own
//! pace (a node's source reads the files, woken when the last sequence number moves), with
//! `EVENTS_SUBSCRIBE_PAGES_QUEUED_MAX` pages queued; one that leaves its queue full for
//! `EVENTS_SUBSCRIBER_STALL_SECONDS_MAX` is dropped with RESOURCE_EXHAUSTED naming where to
//! resume. A node's subscriptions end when it stops (UNAVAILABLE, naming where to resume), so
//! they never hold its shutdown. At most `EVENTS_SUBSCRIBERS_MAX` at once per server; on a node at most
//! `EVENTS_READS_RUNNING_MAX` pages are read from disk at once, for all callers together.
//!
//! Owns the parameters' checks and the answers; must not interpret events (the ledger) nor
//! shape them (`api::events`).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use api::events::{EventJson, EventsJson, event_to};
use api::json::parse_decimal;
use api::proto::{self, events_server::Events};
use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cluster::GroupId;
use futures::future::BoxFuture;
use futures::{Stream, StreamExt};
use ledger::Event;
use limits::{
    EVENTS_PAGE_EVENTS_DEFAULT, EVENTS_PAGE_EVENTS_MAX, EVENTS_SUBSCRIBE_PAGES_QUEUED_MAX,
    EVENTS_SUBSCRIBER_STALL_SECONDS_MAX, EVENTS_SUBSCRIBERS_MAX,
};
use replication::event_log::{EventReader, EventsError};
use telemetry::{ErrorKind, Metrics};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tonic::{Request, Response as GrpcResponse, Status};
use utoipa::IntoParams;

use crate::access::GROUP_KEY;
use crate::pipeline::Pipeline;

/// Metadata key of an OUT_OF_RANGE answer: the first event this replica has.
pub const FIRST_SEQ_KEY: &str = "fincore-first-seq";

/// A page of one group's events, oldest first, with the first and last events the replica
/// that served it has (`first_seq = last_seq + 1`: none yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsPage {
    pub events: Vec<Event>,
    pub first_seq: u64,
    pub last_seq: u64,
}

/// Why events were not served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventsRefusal {
    /// A parameter is wrong (`field`: `after`, `limit`, `group`, `query`).
    Invalid {
        field: &'static str,
        reason: String,
    },
    /// The call names a group this node does not belong to (the message names both).
    OtherGroup(String),
    /// The events after the one asked are no longer on the replica; its first is `first_seq`.
    Gone {
        first_seq: u64,
        message: String,
    },
    /// This node keeps no events (`FINCORE_EVENTS=off`).
    NoEvents,
    /// No replica of the group answered (a gateway); retrying may help.
    Unavailable(String),
    Failed(String),
}

/// Pages of a subscription, in order and without gaps; an error ends it.
pub type EventsStream = Pin<Box<dyn Stream<Item = Result<EventsPage, EventsRefusal>> + Send>>;

/// What serves change events: a node's replica ([`ReplicaEvents`]) or a gateway (forwarding
/// to a replica of the group named). `group`: the group the caller named, if any.
pub trait EventSource: Send + Sync + 'static {
    /// At most `limit` (1 ..= `EVENTS_PAGE_EVENTS_MAX`, checked by the caller) events after
    /// `after`.
    fn read_events(
        &self,
        group: Option<GroupId>,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<EventsPage, EventsRefusal>>;
    /// Every event after `after`, then new ones as they are applied; refused at once (not as
    /// the stream's first item) when the events after `after` are gone.
    fn subscribe_events(
        &self,
        group: Option<GroupId>,
        after: u64,
    ) -> BoxFuture<'_, Result<EventsStream, EventsRefusal>>;
}

/// A shared handle on whatever serves change events.
pub type SharedEvents = Arc<dyn EventSource>;

const NO_EVENTS: &str = "this node keeps no change events (it was started with FINCORE_EVENTS=off); ask another replica";

impl From<EventsError> for EventsRefusal {
    fn from(error: EventsError) -> EventsRefusal {
        match error {
            EventsError::Gone { first_seq, .. } => EventsRefusal::Gone {
                first_seq,
                message: error.to_string(),
            },
            EventsError::Io(error) => EventsRefusal::Failed(error.to_string()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A node's events: its replica's files

/// The events of a node's own replica, of its own group only.
pub struct ReplicaEvents {
    pipeline: Pipeline,
    /// The node's group (`None`: a replica made before group ids, which serves no call naming
    /// a group).
    group: Option<GroupId>,
    /// Turns true when the node stops: subscriptions then end at once (UNAVAILABLE, naming
    /// where to resume) instead of holding the node's shutdown for its whole grace.
    stopped: watch::Receiver<bool>,
}

impl ReplicaEvents {
    pub fn new(
        pipeline: Pipeline,
        group: Option<GroupId>,
        stopped: watch::Receiver<bool>,
    ) -> ReplicaEvents {
        ReplicaEvents {
            pipeline,
            group,
            stopped,
        }
    }

    /// The replica's reader, if `named` (when given) is this node's group.
    fn reader(&self, named: Option<GroupId>) -> Result<EventReader, EventsRefusal> {
        match (named, self.group) {
            (None, _) => {}
            (Some(named), Some(own)) if named == own => {}
            (Some(named), Some(own)) => {
                return Err(EventsRefusal::OtherGroup(format!(
                    "this node serves the events of group {own}, not of group {named}: ask a replica of group {named}, or a gateway"
                )));
            }
            (Some(named), None) => {
                return Err(EventsRefusal::OtherGroup(format!(
                    "this node's replica was made before group ids, so it cannot serve the events of group {named}: leave out the group"
                )));
            }
        }
        self.pipeline
            .replica()
            .events()
            .ok_or(EventsRefusal::NoEvents)
    }
}

impl EventSource for ReplicaEvents {
    fn read_events(
        &self,
        group: Option<GroupId>,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<EventsPage, EventsRefusal>> {
        Box::pin(async move {
            let reader = self.reader(group)?;
            page(&reader, after, limit).await
        })
    }

    fn subscribe_events(
        &self,
        group: Option<GroupId>,
        after: u64,
    ) -> BoxFuture<'_, Result<EventsStream, EventsRefusal>> {
        Box::pin(async move {
            let reader = self.reader(group)?;
            let (first_seq, _) = reader.range();
            if after.saturating_add(1) < first_seq {
                return Err(EventsError::Gone { after, first_seq }.into());
            }
            Ok(follow(reader, after, self.stopped.clone()))
        })
    }
}

/// The pages being read from disk, process-wide: at most `EVENTS_READS_RUNNING_MAX`.
fn reads_running() -> &'static Semaphore {
    static READS: std::sync::OnceLock<Semaphore> = std::sync::OnceLock::new();
    READS.get_or_init(|| Semaphore::new(limits::EVENTS_READS_RUNNING_MAX))
}

/// A page of events after `after`, with the replica's range, read off the async runtime (at
/// most `EVENTS_READS_RUNNING_MAX` at once, so readers' memory is bounded).
async fn page(reader: &EventReader, after: u64, limit: usize) -> Result<EventsPage, EventsRefusal> {
    let _running = reads_running()
        .acquire()
        .await
        .map_err(|error| EventsRefusal::Failed(error.to_string()))?;
    let reader = reader.clone();
    tokio::task::spawn_blocking(move || {
        let events = reader.read(after, limit)?;
        let (first_seq, last_seq) = reader.range();
        Ok(EventsPage {
            events,
            first_seq,
            last_seq,
        })
    })
    .await
    .map_err(|error| EventsRefusal::Failed(error.to_string()))?
}

/// Every page after `after`, each as soon as it exists: a page read when pulled, and when
/// caught up, a wait for the reader to move. Ends when the replica stops, and with UNAVAILABLE
/// (naming where to resume) when the node stops (`stopped` turns true).
fn follow(reader: EventReader, after: u64, stopped: watch::Receiver<bool>) -> EventsStream {
    let moved = reader.watch();
    Box::pin(futures::stream::unfold(
        Some((reader, moved, stopped, after)),
        |state| async move {
            let (reader, mut moved, mut stopped, after) = state?;
            let stopping = |after: u64| {
                EventsRefusal::Unavailable(format!(
                    "this node is stopping; subscribe again after {after} (another replica serves the same events)"
                ))
            };
            loop {
                if *stopped.borrow() {
                    return Some((Err(stopping(after)), None));
                }
                moved.borrow_and_update();
                match page(&reader, after, EVENTS_PAGE_EVENTS_MAX).await {
                    Err(refusal) => return Some((Err(refusal), None)),
                    Ok(page) => match page.events.last().map(|e| e.seq) {
                        Some(newest) => {
                            return Some((Ok(page), Some((reader, moved, stopped, newest))));
                        }
                        None => tokio::select! {
                            changed = moved.changed() => if changed.is_err() { return None },
                            _ = stopped.wait_for(|stop| *stop) => {
                                return Some((Err(stopping(after)), None));
                            }
                        },
                    },
                }
            }
        },
    ))
}

fn check_limit(limit: u64) -> Result<usize, EventsRefusal> {
    if limit == 0 || limit > EVENTS_PAGE_EVENTS_MAX as u64 {
        return Err(EventsRefusal::Invalid {
            field: "limit",
            reason: format!("{limit} events; ask for 1 to {EVENTS_PAGE_EVENTS_MAX}"),
        });
    }
    Ok(limit as usize)
}

/// The group a caller named (a query parameter or metadata value), checked.
fn named_group(text: Option<&[u8]>) -> Result<Option<GroupId>, EventsRefusal> {
    let Some(text) = text else { return Ok(None) };
    let text = String::from_utf8_lossy(text);
    text.parse::<GroupId>()
        .map(Some)
        .map_err(|_| EventsRefusal::Invalid {
            field: "group",
            reason: format!(
                "{:?} is not a group id: give the group's 32 hex digits",
                text.chars()
                    .take(GroupId::HEX_DIGITS + 8)
                    .collect::<String>()
            ),
        })
}

// ---------------------------------------------------------------------------------------------
// HTTP

/// The query parameters of `GET /v1/events`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Read by name from the query map; this type only describes them.
pub(crate) struct EventsQuery {
    /// The group whose events to read (its 32-hex-digit id). On a node optional: its own
    /// group, and another is refused (404 naming both). On a gateway required: a missing or
    /// unknown group is refused (400 listing the gateway's groups).
    #[param(value_type = Option<String>, pattern = "^[0-9a-fA-F]{32}$")]
    group: Option<String>,
    /// Events with a sequence number above this one (default 0: from the first).
    #[param(value_type = Option<api::schema::EventsAfter>)]
    after: Option<String>,
    /// At most this many events (1 to 4,096; default 100).
    #[param(value_type = Option<api::schema::EventsLimit>)]
    limit: Option<u32>,
}

fn http_error(error: EventsRefusal) -> Response {
    let (status, message, field) = match error {
        EventsRefusal::Invalid { field, reason } => (StatusCode::BAD_REQUEST, reason, Some(field)),
        EventsRefusal::OtherGroup(reason) => (StatusCode::NOT_FOUND, reason, Some("group")),
        EventsRefusal::Gone { message, .. } => (StatusCode::GONE, message, Some("after")),
        EventsRefusal::NoEvents => (StatusCode::NOT_FOUND, NO_EVENTS.to_string(), None),
        EventsRefusal::Unavailable(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason, None),
        EventsRefusal::Failed(reason) => (StatusCode::INTERNAL_SERVER_ERROR, reason, None),
    };
    let retryable = status == StatusCode::SERVICE_UNAVAILABLE;
    let body = api::json::ErrorJson {
        error: message,
        field: field.map(str::to_string),
        retryable,
        leader_id: None,
        leader_grpc: None,
        leader_http: None,
    };
    let mut response = (status, Json(body)).into_response();
    if retryable {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

fn query_number(
    params: &HashMap<String, String>,
    field: &'static str,
) -> Result<Option<u64>, EventsRefusal> {
    params
        .get(field)
        .map(|text| {
            parse_decimal(text, 64)
                .map(|value| value as u64)
                .map_err(|reason| EventsRefusal::Invalid { field, reason })
        })
        .transpose()
}

/// Change events
///
/// At most `limit` events of one group with a sequence number above `after`, oldest first,
/// from one replica's files (every replica of a group serves the same events under the same
/// numbers; see `docs/events.md` for the schema). A gateway forwards the page to a replica of
/// `group`, the next one when one does not answer. An empty list: nothing newer yet.
/// `first_seq` and `last_seq` are the first and last events that replica has. 410 when the
/// events after `after` are no longer there (compacted, or before a snapshot the replica
/// installed): the message names its first event.
#[utoipa::path(get, path = "/v1/events", operation_id = "events", params(EventsQuery), responses(
    (status = 200, description = "A page of events.", body = EventsJson),
    (status = 400, response = crate::openapi::BadInput),
    (status = 404, description = "This node keeps no events, or belongs to another group than `group`.", body = api::json::ErrorJson),
    (status = 410, description = "The events after `after` are gone from the replica asked; the message names its first.", body = api::json::ErrorJson)))]
pub(crate) async fn events_page(
    State(source): State<SharedEvents>,
    State(metrics): State<Arc<Metrics>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let started = Instant::now();
    let answer = async {
        if let Some(unknown) = params
            .keys()
            .find(|k| !matches!(k.as_str(), "group" | "after" | "limit"))
        {
            return Err(EventsRefusal::Invalid {
                field: "query",
                reason: format!(
                    "unknown parameter {unknown:?}; this route takes group, after and limit"
                ),
            });
        }
        let group = named_group(params.get("group").map(String::as_bytes))?;
        let after = query_number(&params, "after")?.unwrap_or(0);
        let limit = check_limit(
            query_number(&params, "limit")?.unwrap_or(EVENTS_PAGE_EVENTS_DEFAULT as u64),
        )?;
        let page = source.read_events(group, after, limit).await?;
        Ok(Json(EventsJson {
            events: page.events.iter().map(EventJson::from).collect(),
            first_seq: page.first_seq,
            last_seq: page.last_seq,
        })
        .into_response())
    };
    observed(&metrics, "http", "read_events", started, answer.await).unwrap_or_else(http_error)
}

/// How a refusal counts in the metrics' errors by kind.
fn error_kind(refusal: &EventsRefusal) -> ErrorKind {
    match refusal {
        EventsRefusal::Invalid { .. } | EventsRefusal::OtherGroup(_) => ErrorKind::Invalid,
        EventsRefusal::Gone { .. } => ErrorKind::NotFound,
        EventsRefusal::NoEvents | EventsRefusal::Unavailable(_) | EventsRefusal::Failed(_) => {
            ErrorKind::Unavailable
        }
    }
}

/// Counts one events call in `metrics` (its time until answered, or until its stream was
/// set up for a subscription) and passes its outcome on.
fn observed<T>(
    metrics: &Metrics,
    protocol: &'static str,
    operation: &'static str,
    started: Instant,
    outcome: Result<T, EventsRefusal>,
) -> Result<T, EventsRefusal> {
    let error = outcome.as_ref().err().map(error_kind);
    metrics.request(protocol, operation, started.elapsed(), error);
    outcome
}

// ---------------------------------------------------------------------------------------------
// gRPC

/// The `fincore.v1.Events` service over an [`EventSource`]; the group comes from the call's
/// `fincore-group` metadata.
pub struct EventsService {
    source: SharedEvents,
    subscribers: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

impl EventsService {
    /// Serves `source`, counting each call in `metrics`.
    pub fn new(source: SharedEvents, metrics: Arc<Metrics>) -> EventsService {
        EventsService {
            source,
            subscribers: Arc::new(Semaphore::new(EVENTS_SUBSCRIBERS_MAX)),
            metrics,
        }
    }
}

fn group_of<T>(request: &Request<T>) -> Result<Option<GroupId>, Status> {
    named_group(request.metadata().get(GROUP_KEY).map(|v| v.as_bytes())).map_err(grpc_error)
}

fn grpc_error(error: EventsRefusal) -> Status {
    match error {
        EventsRefusal::Invalid { field, reason } => {
            Status::invalid_argument(format!("{field}: {reason}"))
        }
        EventsRefusal::OtherGroup(reason) => Status::failed_precondition(reason),
        EventsRefusal::Gone { first_seq, message } => {
            let mut status = Status::out_of_range(message);
            if let Ok(value) = first_seq.to_string().parse() {
                status.metadata_mut().insert(FIRST_SEQ_KEY, value);
            }
            status
        }
        EventsRefusal::NoEvents => Status::failed_precondition(NO_EVENTS),
        EventsRefusal::Unavailable(reason) => Status::unavailable(reason),
        EventsRefusal::Failed(reason) => Status::internal(reason),
    }
}

fn page_proto(page: &EventsPage) -> proto::EventsPage {
    proto::EventsPage {
        events: page.events.iter().map(event_to).collect(),
        first_seq: page.first_seq,
        last_seq: page.last_seq,
    }
}

type PageStream = Pin<Box<dyn Stream<Item = Result<proto::EventsPage, Status>> + Send>>;

#[tonic::async_trait]
impl Events for EventsService {
    async fn read(
        &self,
        request: Request<proto::ReadEventsRequest>,
    ) -> Result<GrpcResponse<proto::EventsPage>, Status> {
        let started = Instant::now();
        let group = group_of(&request)?;
        let request = request.into_inner();
        let page = async {
            let limit = check_limit(u64::from(request.limit))?;
            self.source.read_events(group, request.after, limit).await
        }
        .await;
        let page =
            observed(&self.metrics, "grpc", "read_events", started, page).map_err(grpc_error)?;
        Ok(GrpcResponse::new(page_proto(&page)))
    }

    type SubscribeStream = PageStream;

    async fn subscribe(
        &self,
        request: Request<proto::SubscribeRequest>,
    ) -> Result<GrpcResponse<PageStream>, Status> {
        let group = group_of(&request)?;
        let after = request.into_inner().after;
        let permit = Arc::clone(&self.subscribers)
            .try_acquire_owned()
            .map_err(|_| {
                Status::resource_exhausted(format!(
                    "this server serves {EVENTS_SUBSCRIBERS_MAX} subscribers already; retry later or subscribe to another replica"
                ))
            })?;
        // Refused at once rather than as the stream's first message.
        let started = Instant::now();
        let source = self.source.subscribe_events(group, after).await;
        let source = observed(&self.metrics, "grpc", "subscribe_events", started, source)
            .map_err(grpc_error)?;
        let (pages, queued) = mpsc::channel(EVENTS_SUBSCRIBE_PAGES_QUEUED_MAX);
        let (end, ended) = oneshot::channel();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(status) = relay(source, after, &pages).await {
                let _ = end.send(status);
            }
        });
        // The queued pages first, then the status the relay ended with (if any): a dropped
        // subscriber reads what was queued and then why it was dropped.
        let stream =
            futures::stream::unfold((queued, Some(ended)), |(mut queued, ended)| async move {
                if let Some(page) = queued.recv().await {
                    return Some((Ok(page), (queued, ended)));
                }
                let status = ended?.await.ok()?;
                Some((Err(status), (queued, None)))
            });
        Ok(GrpcResponse::new(Box::pin(stream)))
    }
}

/// Sends every page of `source` (which starts after `after`) to `pages`; returns when the
/// source ended or the subscriber went away (Ok) or the subscriber must be told why its
/// stream ends (Err: the source's refusal, or a subscriber too slow).
async fn relay(
    mut source: EventsStream,
    mut after: u64,
    pages: &mpsc::Sender<proto::EventsPage>,
) -> Result<(), Status> {
    let stall = Duration::from_secs(EVENTS_SUBSCRIBER_STALL_SECONDS_MAX);
    loop {
        let next = tokio::select! {
            next = source.next() => next,
            () = pages.closed() => return Ok(()),
        };
        let page = match next {
            None => return Ok(()),
            Some(Err(refusal)) => return Err(grpc_error(refusal)),
            Some(Ok(page)) => page,
        };
        let Some(newest) = page.events.last().map(|e| e.seq) else {
            continue;
        };
        match tokio::time::timeout(stall, pages.send(page_proto(&page))).await {
            Ok(Ok(())) => after = newest,
            Ok(Err(_)) => return Ok(()),
            Err(_) => {
                return Err(Status::resource_exhausted(format!(
                    "this subscriber left its stream unread for {EVENTS_SUBSCRIBER_STALL_SECONDS_MAX} s and was dropped; subscribe again after {after}"
                )));
            }
        }
    }
}
