//! The live console: `GET /console` (a page built into the binary, with its script and style),
//! `GET /console/state` (the latest [`view::View`] as JSON) and `GET /console/events` (each new
//! view as a server-sent event, four times a second while someone reads).
//!
//! Owns the sampling loop (one per listener set, however many people watch: readers share its
//! latest view through a watch channel) and the routes. What is sampled comes from a
//! [`Source`]: a node reads its own replica ([`NodeSource`]); a gateway polls every replica of
//! every group (the `gateway` crate). Sampling runs only while a stream is open or for
//! `CONSOLE_IDLE_SECONDS` after the last `/console/state`, so an unwatched console costs
//! nothing, and however many read it, there is one sample per interval (a gateway's costs four
//! Status calls per replica per second at most). Like `/metrics` and `/v1/status`, the routes
//! are open: the figures are of the same kind (traffic totals, Raft positions, members'
//! addresses; no account data). Streams are bounded in number (`CONSOLE_STREAMS_MAX`) and in
//! time (`CONSOLE_STREAM_SECONDS_MAX`). Must not render anything from the data server-side:
//! the page builds its DOM from the JSON with text nodes only.

pub mod view;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use api::proto::ReplicaStatusReply;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::future::BoxFuture;
use telemetry::TrafficTotals;
use tokio::sync::{Notify, Semaphore, watch};

use crate::pipeline::Pipeline;

/// The paths the console serves (all open, like `/metrics`).
pub const PATHS: [&str; 5] = [
    "/console",
    "/console/app.js",
    "/console/app.css",
    "/console/state",
    "/console/events",
];

const PAGE_HTML: &str = include_str!("page.html");
const APP_JS: &str = include_str!("app.js");
const APP_CSS: &str = include_str!("app.css");

/// Only this page's own script, style and streams: nothing inline, nothing from elsewhere.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// The serving process's own figures.
#[derive(Debug, Clone)]
pub struct FrontReading {
    pub traffic: TrafficTotals,
    pub sagas_in_flight: Option<i64>,
}

/// One group's replicas as one sample reached them.
#[derive(Debug, Clone)]
pub struct GroupReading {
    pub id: String,
    pub replicas: Vec<ReplicaReading>,
}

#[derive(Debug, Clone)]
pub struct ReplicaReading {
    pub id: u64,
    /// Its client gRPC address, as the map or the membership names it.
    pub address: String,
    /// Its own status, or why it gave none (unreachable, timed out, refused).
    pub status: Result<ReplicaStatusReply, String>,
}

/// What a console samples.
pub trait Source: Send + Sync + 'static {
    /// `node` or `gateway`.
    fn service(&self) -> &'static str;
    fn front(&self) -> FrontReading;
    /// Every group's replicas; each must answer within `CONSOLE_REPLICA_STATUS_TIMEOUT_MS` or
    /// show as unreachable.
    fn groups(&self) -> BoxFuture<'_, Vec<GroupReading>>;
}

/// A running console: the latest view, and what wakes and bounds its readers.
#[derive(Clone)]
pub struct Console {
    latest: watch::Receiver<Arc<str>>,
    wanted: Arc<Notify>,
    /// Milliseconds from `epoch` to the last `/console/state`.
    asked_at_ms: Arc<AtomicU64>,
    epoch: Instant,
    streams: Arc<Semaphore>,
}

impl Console {
    /// Starts sampling `source` (when watched) until `stopped` turns true; then the streams
    /// end.
    pub fn start(source: Arc<dyn Source>, stopped: watch::Receiver<bool>) -> Console {
        let (sender, latest) = watch::channel(Arc::<str>::from(""));
        let console = Console {
            latest,
            wanted: Arc::new(Notify::new()),
            asked_at_ms: Arc::new(AtomicU64::new(0)),
            epoch: Instant::now(),
            streams: Arc::new(Semaphore::new(limits::CONSOLE_STREAMS_MAX)),
        };
        tokio::spawn(sample(source, sender, console.clone(), stopped));
        console
    }

    /// The routes, for the HTTP listener to merge.
    pub fn routes(self) -> axum::Router {
        axum::Router::new()
            .route(PATHS[0], get(page))
            .route(PATHS[1], get(script))
            .route(PATHS[2], get(style))
            .route(PATHS[3], get(state))
            .route(PATHS[4], get(events))
            .with_state(self)
    }

    fn watched(&self) -> bool {
        let streams = self.streams.available_permits() < limits::CONSOLE_STREAMS_MAX;
        let asked = self.asked_at_ms.load(Ordering::Relaxed);
        let since_asked_ms = (self.epoch.elapsed().as_millis() as u64).saturating_sub(asked);
        streams || (asked > 0 && since_asked_ms < limits::CONSOLE_IDLE_SECONDS * 1_000)
    }
}

async fn sample(
    source: Arc<dyn Source>,
    sender: watch::Sender<Arc<str>>,
    console: Console,
    mut stopped: watch::Receiver<bool>,
) {
    let mut builder = view::ViewBuilder::new(source.service());
    let interval = Duration::from_millis(limits::CONSOLE_SAMPLE_INTERVAL_MS);
    loop {
        if *stopped.borrow() {
            return;
        }
        // A stop sender gone (its owner dropped) is a stop too, never a signal to spin on.
        if !console.watched() {
            // Woken by a new reader, or at the interval to notice a stop.
            tokio::select! {
                () = console.wanted.notified() => {}
                changed = stopped.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(interval) => {}
            }
            continue;
        }
        let started = Instant::now();
        // Each reading stamped with when it was taken: the groups' fan-out takes up to
        // `CONSOLE_REPLICA_STATUS_TIMEOUT_MS`, which must not skew the front's rates.
        let front = (source.front(), started);
        let groups = source.groups().await;
        let groups = (groups, Instant::now());
        let sampled_at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64);
        let view = builder.next(front, groups, sampled_at_ms);
        let json = serde_json::to_string(&view).expect("a view always serializes");
        sender.send_replace(json.into());
        tokio::select! {
            () = tokio::time::sleep_until((started + interval).into()) => {}
            changed = stopped.changed() => if changed.is_err() { return },
        }
    }
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE_HTML)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

/// The latest view; the first call after a quiet spell waits for a fresh sample (at most
/// twice the interval) rather than answering an old one.
async fn state(State(console): State<Console>) -> Response {
    let asked = (console.epoch.elapsed().as_millis() as u64).max(1);
    let previous = console.asked_at_ms.swap(asked, Ordering::Relaxed);
    let mut latest = console.latest.clone();
    let stale = previous == 0
        || asked.saturating_sub(previous) >= limits::CONSOLE_IDLE_SECONDS * 1_000
        || latest.borrow().is_empty();
    // Seen before the sampler is woken, so that the sample it takes now counts as new.
    latest.mark_unchanged();
    console.wanted.notify_one();
    if stale {
        let wait = Duration::from_millis(2 * limits::CONSOLE_SAMPLE_INTERVAL_MS);
        let _ = tokio::time::timeout(wait, latest.changed()).await;
    }
    let json = latest.borrow().clone();
    if json.is_empty() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            "the console has not sampled yet; ask again",
        )
            .into_response();
    }
    let mut response = json.to_string().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Every view from now on as an SSE `message` event, the latest first; refused busy past
/// `CONSOLE_STREAMS_MAX` streams.
async fn events(State(console): State<Console>) -> Response {
    let Ok(permit) = Arc::clone(&console.streams).try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "5")],
            format!(
                "busy: {} console streams are open on this listener",
                limits::CONSOLE_STREAMS_MAX
            ),
        )
            .into_response();
    };
    let mut latest = console.latest.clone();
    latest.mark_changed();
    console.wanted.notify_one();
    let ends =
        tokio::time::Instant::now() + Duration::from_secs(limits::CONSOLE_STREAM_SECONDS_MAX);
    let stream =
        futures::stream::unfold((latest, permit), move |(mut latest, permit)| async move {
            loop {
                // Ends when the sampler stops (the listener is shutting down), or at its time
                // (the page's EventSource opens another).
                tokio::time::timeout_at(ends, latest.changed())
                    .await
                    .ok()?
                    .ok()?;
                let json = latest.borrow_and_update().clone();
                if !json.is_empty() {
                    let event = Event::default().data(&*json);
                    return Some((Ok::<_, Infallible>(event), (latest, permit)));
                }
            }
        });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// A node's console: its own replica (the other members as the leader's follower lag shows
/// them) and its own traffic.
pub struct NodeSource {
    pipeline: Pipeline,
    group: Option<String>,
}

impl NodeSource {
    pub fn new(pipeline: Pipeline, group: Option<String>) -> NodeSource {
        NodeSource { pipeline, group }
    }
}

impl Source for NodeSource {
    fn service(&self) -> &'static str {
        "node"
    }

    fn front(&self) -> FrontReading {
        FrontReading {
            traffic: self.pipeline.metrics().traffic(),
            sagas_in_flight: None,
        }
    }

    fn groups(&self) -> BoxFuture<'_, Vec<GroupReading>> {
        Box::pin(async move {
            let replica = self.pipeline.replica();
            let members = replica.members();
            let own = replica.id();
            let replicas = members
                .iter()
                .map(|(&id, node)| ReplicaReading {
                    id,
                    address: node.grpc.clone(),
                    status: if id == own {
                        Ok(crate::grpc::replica_status(&self.pipeline))
                    } else {
                        Err("not polled by a node's console: see the leader's follower lag, or a gateway's console".into())
                    },
                })
                .collect();
            vec![GroupReading {
                id: self.group.clone().unwrap_or_else(|| "0".into()),
                replicas,
            }]
        })
    }
}
