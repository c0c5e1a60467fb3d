//! The change-event API of a node: `GET /v1/events?after=SEQ&limit=N` and the gRPC service
//! `fincore.v1.Events` (`Read`, and `Subscribe`: what exists, then new events as they are
//! applied), both served from the replica's own event files (`replication::event_log`), so a
//! follower serves them as well as the leader and a read never touches Raft or the ledger's
//! lock.
//!
//! Subscribers never hold back apply: each is a task reading the files at its own pace, woken
//! when the last sequence number moves, with `EVENTS_SUBSCRIBE_PAGES_QUEUED_MAX` pages queued;
//! one that leaves its queue full for `EVENTS_SUBSCRIBER_STALL_SECONDS_MAX` is dropped with
//! RESOURCE_EXHAUSTED naming where to resume. At most `EVENTS_SUBSCRIBERS_MAX` at once; at most
//! `EVENTS_READS_RUNNING_MAX` pages are read from disk at once, for all callers together.
//!
//! Owns the parameters' checks and the answers; must not interpret events (the ledger) nor
//! shape them (`api::events`).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use api::events::{EventJson, EventsJson, event_to};
use api::json::parse_decimal;
use api::proto::{self, events_server::Events};
use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures::Stream;
use ledger::Event;
use limits::{
    EVENTS_PAGE_EVENTS_DEFAULT, EVENTS_PAGE_EVENTS_MAX, EVENTS_SUBSCRIBE_PAGES_QUEUED_MAX,
    EVENTS_SUBSCRIBER_STALL_SECONDS_MAX, EVENTS_SUBSCRIBERS_MAX,
};
use replication::event_log::{EventReader, EventsError};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tonic::{Request, Response as GrpcResponse, Status};
use utoipa::IntoParams;

use crate::pipeline::Pipeline;

/// Metadata key of an OUT_OF_RANGE answer: the first event this replica has.
pub const FIRST_SEQ_KEY: &str = "fincore-first-seq";

/// Why a page was not served.
#[derive(Debug)]
enum PageError {
    Invalid { field: &'static str, reason: String },
    Gone { first_seq: u64, message: String },
    NoEvents,
    Failed(String),
}

const NO_EVENTS: &str = "this node keeps no change events (it was started with FINCORE_EVENTS=off); ask another replica";

impl From<EventsError> for PageError {
    fn from(error: EventsError) -> PageError {
        match error {
            EventsError::Gone { first_seq, .. } => PageError::Gone {
                first_seq,
                message: error.to_string(),
            },
            EventsError::Io(error) => PageError::Failed(error.to_string()),
        }
    }
}

/// The pages being read from disk, process-wide: at most `EVENTS_READS_RUNNING_MAX`.
fn reads_running() -> &'static Semaphore {
    static READS: std::sync::OnceLock<Semaphore> = std::sync::OnceLock::new();
    READS.get_or_init(|| Semaphore::new(limits::EVENTS_READS_RUNNING_MAX))
}

/// A page of events after `after`, with the replica's range, read off the async runtime (at
/// most `EVENTS_READS_RUNNING_MAX` at once, so readers' memory is bounded).
async fn page(
    reader: &EventReader,
    after: u64,
    limit: usize,
) -> Result<(Vec<Event>, u64, u64), PageError> {
    let _running = reads_running()
        .acquire()
        .await
        .map_err(|error| PageError::Failed(error.to_string()))?;
    let reader = reader.clone();
    tokio::task::spawn_blocking(move || {
        let events = reader.read(after, limit)?;
        let (first_seq, last_seq) = reader.range();
        Ok((events, first_seq, last_seq))
    })
    .await
    .map_err(|error| PageError::Failed(error.to_string()))?
}

fn check_limit(limit: u64) -> Result<usize, PageError> {
    if limit == 0 || limit > EVENTS_PAGE_EVENTS_MAX as u64 {
        return Err(PageError::Invalid {
            field: "limit",
            reason: format!("{limit} events; ask for 1 to {EVENTS_PAGE_EVENTS_MAX}"),
        });
    }
    Ok(limit as usize)
}

// ---------------------------------------------------------------------------------------------
// HTTP

/// The query parameters of `GET /v1/events`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Read by name from the query map; this type only describes them.
pub(crate) struct EventsQuery {
    /// Events with a sequence number above this one (default 0: from the first).
    #[param(value_type = Option<api::schema::EventsAfter>)]
    after: Option<String>,
    /// At most this many events (1 to 4,096; default 100).
    #[param(value_type = Option<api::schema::EventsLimit>)]
    limit: Option<u32>,
}

fn http_error(error: PageError) -> Response {
    let (status, message, field) = match error {
        PageError::Invalid { field, reason } => (StatusCode::BAD_REQUEST, reason, Some(field)),
        PageError::Gone { message, .. } => (StatusCode::GONE, message, Some("after")),
        PageError::NoEvents => (StatusCode::NOT_FOUND, NO_EVENTS.to_string(), None),
        PageError::Failed(reason) => (StatusCode::INTERNAL_SERVER_ERROR, reason, None),
    };
    let body = api::json::ErrorJson {
        error: message,
        field: field.map(str::to_string),
        retryable: false,
        leader_id: None,
        leader_grpc: None,
        leader_http: None,
    };
    (status, Json(body)).into_response()
}

fn query_number(
    params: &HashMap<String, String>,
    field: &'static str,
) -> Result<Option<u64>, PageError> {
    params
        .get(field)
        .map(|text| {
            parse_decimal(text, 64)
                .map(|value| value as u64)
                .map_err(|reason| PageError::Invalid { field, reason })
        })
        .transpose()
}

/// Change events
///
/// At most `limit` events with a sequence number above `after`, oldest first, from this
/// replica's own files (every replica serves the same events under the same numbers; see
/// `docs/events.md` for the schema). An empty list: nothing newer yet. `first_seq` and
/// `last_seq` are the first and last events this replica has. 410 when the events after
/// `after` are no longer here (compacted, or before a snapshot this replica installed): the
/// message names the first event it has.
#[utoipa::path(get, path = "/v1/events", operation_id = "events", params(EventsQuery), responses(
    (status = 200, description = "A page of events.", body = EventsJson),
    (status = 400, response = crate::openapi::BadInput),
    (status = 404, description = "This node keeps no events.", body = api::json::ErrorJson),
    (status = 410, description = "The events after `after` are gone from this replica; the message names its first.", body = api::json::ErrorJson)))]
pub(crate) async fn events_page(
    State(pipeline): State<Pipeline>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let answer = async {
        if let Some(unknown) = params
            .keys()
            .find(|k| !matches!(k.as_str(), "after" | "limit"))
        {
            return Err(PageError::Invalid {
                field: "query",
                reason: format!("unknown parameter {unknown:?}; this route takes after and limit"),
            });
        }
        let after = query_number(&params, "after")?.unwrap_or(0);
        let limit = check_limit(
            query_number(&params, "limit")?.unwrap_or(EVENTS_PAGE_EVENTS_DEFAULT as u64),
        )?;
        let reader = pipeline.replica().events().ok_or(PageError::NoEvents)?;
        let (events, first_seq, last_seq) = page(&reader, after, limit).await?;
        Ok(Json(EventsJson {
            events: events.iter().map(EventJson::from).collect(),
            first_seq,
            last_seq,
        })
        .into_response())
    };
    answer.await.unwrap_or_else(http_error)
}

// ---------------------------------------------------------------------------------------------
// gRPC

/// The `fincore.v1.Events` service of a node.
pub struct EventsService {
    pipeline: Pipeline,
    subscribers: Arc<Semaphore>,
}

impl EventsService {
    pub fn new(pipeline: Pipeline) -> EventsService {
        EventsService {
            pipeline,
            subscribers: Arc::new(Semaphore::new(EVENTS_SUBSCRIBERS_MAX)),
        }
    }

    fn reader(&self) -> Result<EventReader, Status> {
        self.pipeline
            .replica()
            .events()
            .ok_or_else(|| Status::failed_precondition(NO_EVENTS))
    }
}

fn grpc_error(error: PageError) -> Status {
    match error {
        PageError::Invalid { field, reason } => {
            Status::invalid_argument(format!("{field}: {reason}"))
        }
        PageError::Gone { first_seq, message } => {
            let mut status = Status::out_of_range(message);
            if let Ok(value) = first_seq.to_string().parse() {
                status.metadata_mut().insert(FIRST_SEQ_KEY, value);
            }
            status
        }
        PageError::NoEvents => Status::failed_precondition(NO_EVENTS),
        PageError::Failed(reason) => Status::internal(reason),
    }
}

fn page_proto(events: &[Event], first_seq: u64, last_seq: u64) -> proto::EventsPage {
    proto::EventsPage {
        events: events.iter().map(event_to).collect(),
        first_seq,
        last_seq,
    }
}

type PageStream = Pin<Box<dyn Stream<Item = Result<proto::EventsPage, Status>> + Send>>;

#[tonic::async_trait]
impl Events for EventsService {
    async fn read(
        &self,
        request: Request<proto::ReadEventsRequest>,
    ) -> Result<GrpcResponse<proto::EventsPage>, Status> {
        let request = request.into_inner();
        let limit = check_limit(u64::from(request.limit)).map_err(grpc_error)?;
        let reader = self.reader()?;
        let (events, first, last) = page(&reader, request.after, limit)
            .await
            .map_err(grpc_error)?;
        Ok(GrpcResponse::new(page_proto(&events, first, last)))
    }

    type SubscribeStream = PageStream;

    async fn subscribe(
        &self,
        request: Request<proto::SubscribeRequest>,
    ) -> Result<GrpcResponse<PageStream>, Status> {
        let after = request.into_inner().after;
        let permit = Arc::clone(&self.subscribers)
            .try_acquire_owned()
            .map_err(|_| {
                Status::resource_exhausted(format!(
                    "this node serves {EVENTS_SUBSCRIBERS_MAX} subscribers already; retry later or subscribe to another replica"
                ))
            })?;
        let reader = self.reader()?;
        // Refused at once rather than as the stream's first message.
        let (first_seq, _) = reader.range();
        if after.saturating_add(1) < first_seq {
            return Err(grpc_error(EventsError::Gone { after, first_seq }.into()));
        }
        let (pages, queued) = mpsc::channel(EVENTS_SUBSCRIBE_PAGES_QUEUED_MAX);
        let (end, ended) = oneshot::channel();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(status) = follow(reader, after, &pages).await {
                let _ = end.send(status);
            }
        });
        // The queued pages first, then the status the follower ended with (if any): a dropped
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

/// Sends every page after `after` to `pages`, then waits for more; returns when the
/// subscriber went away (Ok) or must be told why it is dropped (Err).
async fn follow(
    reader: EventReader,
    mut after: u64,
    pages: &mpsc::Sender<proto::EventsPage>,
) -> Result<(), Status> {
    let mut moved = reader.watch();
    let stall = Duration::from_secs(EVENTS_SUBSCRIBER_STALL_SECONDS_MAX);
    loop {
        moved.borrow_and_update();
        let (events, first, last) = page(&reader, after, EVENTS_PAGE_EVENTS_MAX)
            .await
            .map_err(grpc_error)?;
        let Some(newest) = events.last().map(|e| e.seq) else {
            tokio::select! {
                changed = moved.changed() => if changed.is_err() { return Ok(()) },
                () = pages.closed() => return Ok(()),
            }
            continue;
        };
        match tokio::time::timeout(stall, pages.send(page_proto(&events, first, last))).await {
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
