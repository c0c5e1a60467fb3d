//! The Rust client of a fincore node (gRPC).
//!
//! - Typed: ledger types in, per-event result codes out.
//! - Safe to retry: a request that failed transiently (node busy, unavailable, connection
//!   lost, timed out) is sent again with the *same* events; ids make that idempotent, and an
//!   event that did land the first time answers `exists`.
//! - Batching: [`Client::create_transfer`] calls from many tasks are coalesced into batches of
//!   up to 8,189 events; [`Client::create_transfers`] sends large slices packed (128 bytes an
//!   event) and splits them into full batches.
//!
//! - Authenticated: [`Client::builder`]`(…).api_key(key)` sends `authorization: Bearer <key>` on
//!   every call; a refused key is [`ClientError::Unauthenticated`] or
//!   [`ClientError::PermissionDenied`], never retried.
//! - Over TLS when the nodes serve it: [`ClientBuilder::tls_ca_pem`] and `https://` addresses;
//!   [`ClientBuilder::tls_identity_pem`] presents a client certificate to nodes that require one
//!   (`serve --tls-client-ca`).
//!
//! - Traced: each call carries the W3C `traceparent` of the caller's current OpenTelemetry span
//!   (a `tracing` span, with `tracing-opentelemetry`), so the servers' spans join the caller's
//!   trace (`docs/observability.md`).
//!
//! - Change events: [`Client::read_events`] reads a page of a replica's event stream and
//!   [`Client::subscribe_events`] follows it (`docs/events.md`); every replica serves the same
//!   events under the same sequence numbers, so either may be asked.
//!
//! - Groups as tools are told about them: [`GroupSpec`] parses and checks `--group
//!   NAME=URL[,URL…]` (`fincore cdc`, `fincore project`) and builds each replica's client.
//!
//! A linked chain must be sent whole through `create_transfers`: single events are batched with
//! strangers' events, so they may not carry the `linked` flag.

mod group_spec;
mod meta;

pub use group_spec::{GroupSpec, GroupSpecError};
pub use meta::{ClusterMapWatch, ConfigRequest, ConfigWatch};

use std::sync::Arc;
use std::time::{Duration, Instant};

use api::proto::{
    self, events_client::EventsClient, ledger_client::LedgerClient, meta_client::MetaClient,
    replica_client::ReplicaClient, sagas_client::SagasClient,
};
use api::{client_report, convert};
use ledger::{
    Account, AccountBalance, AccountFilter, BATCH_EVENTS_MAX, CreateAccountResult,
    CreateTransferResult, Event, EventResult, RemoteSides, SagaStep, Transfer, TransferFlags,
    TransferOutcome,
};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

use limits::{
    CLIENT_GAVE_UP_ERRORS_REPORTED_MAX as GAVE_UP_ERRORS_REPORTED_MAX,
    CLIENT_PENDING_SINGLES_MAX as PENDING_SINGLES_MAX,
    CLIENT_SINGLE_BATCHES_IN_FLIGHT_MAX as SINGLE_BATCHES_IN_FLIGHT_MAX,
    GRPC_MESSAGE_BYTES_MAX as MESSAGE_BYTES_MAX, HTTP2_CONNECTION_WINDOW_BYTES,
    HTTP2_STREAM_WINDOW_BYTES,
};

/// How hard the client tries.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Give up after this many attempts of one request.
    pub attempts_max: u32,
    /// Give up once this much time has passed since the first attempt.
    pub elapsed_max: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Each attempt is abandoned (and retried) after this long.
    pub attempt_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts_max: limits::CLIENT_ATTEMPTS_MAX_DEFAULT,
            elapsed_max: Duration::from_secs(60),
            backoff_initial: Duration::from_millis(5),
            backoff_max: Duration::from_millis(100),
            attempt_timeout: Duration::from_secs(10),
        }
    }
}

/// Why a request did not get an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The request is malformed: sending it again will not help.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// Every attempt failed transiently. The request may or may not have been applied;
    /// sending it again with the same ids is safe. `last` is the last error, then the other
    /// kinds met before it (`earlier: …`), with their causes (a refused TLS handshake names
    /// its alert, such as `CertificateRequired`).
    #[error("no answer after {attempts} attempts over {elapsed:?}; last error: {last}")]
    GaveUp {
        attempts: u32,
        elapsed: Duration,
        last: String,
    },
    /// The ledger's declared capacity would be passed: `limit` names it (`accounts_max` or
    /// `transfers_max`). Nothing was applied, and sending the request again will not help
    /// until the operator raises the capacity.
    #[error("{message}")]
    CapacityReached { limit: String, message: String },
    /// The node did not accept the API key (none given, malformed, unknown or revoked).
    #[error("not authenticated: {0}")]
    Unauthenticated(String),
    /// The API key's role does not allow the call (the message names the role needed).
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The node answered something this client does not understand.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The events asked for are not on the replica asked (compacted, or before a snapshot it
    /// installed): its first event is `first_seq`. Read from `first_seq - 1` on, or ask
    /// another replica.
    #[error("{message}")]
    EventsGone { first_seq: u64, message: String },
}

fn transient(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::ResourceExhausted
            | Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Aborted
            | Code::Unknown
    )
}

type SingleReply = oneshot::Sender<Result<EventResult<CreateTransferResult>, ClientError>>;

/// Metadata key of a "not the leader" answer that names the leader's gRPC address.
const LEADER_GRPC_KEY: &str = "fincore-leader-grpc";
/// Metadata key of a refusal that names the limit the request would have passed.
const LIMIT_KEY: &str = "fincore-limit";

/// Metadata key by which a server's flow control says how long to wait before retrying, in ms.
const RETRY_AFTER_MS_KEY: &str = "retry-after-ms";

/// How long a refusal asks the caller to wait before retrying (zero if it does not say; at
/// most a minute, whatever it says).
fn retry_after(status: &Status) -> Duration {
    status
        .metadata()
        .get(RETRY_AFTER_MS_KEY)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok())
        .map_or(Duration::ZERO, |ms| Duration::from_millis(ms.min(60_000)))
}

/// What a failure that retrying cannot fix means to the caller.
fn permanent(status: &Status) -> ClientError {
    let limit = status
        .metadata()
        .get(LIMIT_KEY)
        .and_then(|v| v.to_str().ok());
    match (status.code(), limit) {
        (Code::FailedPrecondition, Some(limit)) => ClientError::CapacityReached {
            limit: limit.to_string(),
            message: status.message().to_string(),
        },
        (Code::Unauthenticated, _) => ClientError::Unauthenticated(status.message().to_string()),
        (Code::PermissionDenied, _) => ClientError::PermissionDenied(status.message().to_string()),
        (Code::OutOfRange, _) => ClientError::EventsGone {
            first_seq: status
                .metadata()
                .get(FIRST_SEQ_KEY)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            message: status.message().to_string(),
        },
        _ => ClientError::Invalid(status.message().to_string()),
    }
}

/// A connection to a fincore replica group. Cheap to clone; clones share the connection and
/// batcher. Requests go to the leader: a replica that is not the leader names it, and the
/// client moves there and retries; a replica that does not answer is skipped for the next
/// address given.
#[derive(Clone)]
pub struct Client {
    inner: Arc<std::sync::RwLock<Stubs>>,
    /// How every node is reached: the key sent with every call, and TLS.
    dial: Dial,
    /// Every address given, tried in turn when the current one does not answer.
    addrs: Arc<Vec<String>>,
    next_addr: Arc<std::sync::atomic::AtomicUsize>,
    policy: Arc<RetryPolicy>,
    singles: mpsc::Sender<(Transfer, SingleReply)>,
}

/// Adds `authorization: Bearer <key>` to every call (nothing when no key was given), and
/// `fincore-group: <id>` when the client was told which group it means to reach.
#[derive(Clone)]
struct Bearer {
    authorization: Option<MetadataValue<Ascii>>,
    group: Option<MetadataValue<Ascii>>,
    /// What this client saw of its earlier attempts, sent on its next calls.
    reports: Arc<Reports>,
}

/// The reports of earlier attempts waiting for a call to carry them (`api::client_report`):
/// at most `CLIENT_REPORTS_QUEUED_MAX`, the oldest dropped first; each call takes up to
/// `CLIENT_REPORTS_PER_CALL_MAX`.
#[derive(Default)]
struct Reports(std::sync::Mutex<std::collections::VecDeque<client_report::Report>>);

impl Reports {
    fn record(&self, operation: &'static str, outcome: client_report::Outcome, elapsed: Duration) {
        let Some(report) = client_report::Report::new(operation, outcome, elapsed) else {
            debug_assert!(false, "{operation} is not a reported operation");
            return;
        };
        let mut queue = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if queue.len() >= limits::CLIENT_REPORTS_QUEUED_MAX {
            queue.pop_front();
        }
        queue.push_back(report);
    }

    /// The oldest waiting reports, a call's worth, taken off the queue.
    fn take(&self) -> Vec<client_report::Report> {
        let mut queue = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let count = queue.len().min(limits::CLIENT_REPORTS_PER_CALL_MAX);
        queue.drain(..count).collect()
    }

    /// Puts `taken` back at the front of the queue (their call never reached a node), as far
    /// as the queue has room.
    fn put_back(&self, taken: Vec<client_report::Report>) {
        let mut queue = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for report in taken.into_iter().rev() {
            if queue.len() >= limits::CLIENT_REPORTS_QUEUED_MAX {
                break;
            }
            queue.push_front(report);
        }
    }
}

tokio::task_local! {
    /// The reports the current attempt carries: set by `retrying` around the attempt, taken by
    /// the interceptor into the attempt's request.
    static ATTEMPT_REPORTS: std::cell::Cell<Option<MetadataValue<Ascii>>>;
}

/// Whether `status` was made by the client's transport (no connection, a reset), not sent by
/// a node: the request, and the reports it carried, never reached one.
fn never_reached_a_node(status: &Status) -> bool {
    std::error::Error::source(status).is_some()
}

/// How an attempt ended, for the reports: what the client saw, whether or not the node did.
fn attempt_outcome(error: Option<&Status>) -> client_report::Outcome {
    use client_report::Outcome;
    let Some(status) = error else {
        return Outcome::Ok;
    };
    if status.metadata().get(LEADER_GRPC_KEY).is_some() {
        return Outcome::NotLeader;
    }
    match status.code() {
        Code::DeadlineExceeded => Outcome::Timeout,
        Code::Unavailable => Outcome::Unavailable,
        Code::ResourceExhausted => Outcome::Busy,
        Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::OutOfRange
        | Code::FailedPrecondition
        | Code::Unauthenticated
        | Code::PermissionDenied => Outcome::Refused,
        _ => Outcome::Other,
    }
}

/// Metadata key naming the group a client means to reach; a node of another group refuses.
const GROUP_KEY: &str = "fincore-group";

impl Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        if let Some(group) = &self.group {
            request.metadata_mut().insert(GROUP_KEY, group.clone());
        }
        let reports = ATTEMPT_REPORTS
            .try_with(std::cell::Cell::take)
            .ok()
            .flatten();
        if let Some(reports) = reports {
            request
                .metadata_mut()
                .insert(client_report::HEADER, reports);
        }
        if let Some(traceparent) = current_traceparent().and_then(|value| value.parse().ok()) {
            request.metadata_mut().insert(TRACEPARENT_KEY, traceparent);
        }
        Ok(request)
    }
}

/// Metadata key of the W3C trace context (<https://www.w3.org/TR/trace-context/>).
const TRACEPARENT_KEY: &str = "traceparent";

/// The W3C `traceparent` of the caller's current OpenTelemetry span (with
/// `tracing-opentelemetry`, the current `tracing` span's), so a node continues the caller's
/// trace; none outside a trace.
fn current_traceparent() -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    let context = opentelemetry::Context::current();
    let span = context.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            span_context.trace_id(),
            span_context.span_id(),
            span_context.trace_flags().to_u8()
        )
    })
}

type Ledger = LedgerClient<InterceptedService<Channel, Bearer>>;

/// The stubs of one node's services over one connection: the client API and, for gateways,
/// the `Sagas` service.
#[derive(Clone)]
struct Stubs {
    ledger: Ledger,
    sagas: SagasClient<InterceptedService<Channel, Bearer>>,
    events: EventsClient<InterceptedService<Channel, Bearer>>,
    meta: MetaClient<InterceptedService<Channel, Bearer>>,
    replica: ReplicaClient<InterceptedService<Channel, Bearer>>,
}

/// How every node of the group is reached.
#[derive(Clone)]
struct Dial {
    /// Sent with every call.
    credentials: Bearer,
    /// TLS with the nodes' client listeners (`https://` addresses), or plaintext.
    tls: Option<ClientTlsConfig>,
}

impl Dial {
    /// The scheme of every address: a leader named by a node is dialled with it.
    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }
}

fn ledger_client(addr: &str, dial: &Dial) -> Result<Stubs, ClientError> {
    let invalid = |reason: String| ClientError::Invalid(format!("address {addr:?}: {reason}"));
    let mut endpoint =
        Endpoint::from_shared(addr.to_string()).map_err(|e| invalid(e.to_string()))?;
    match (&dial.tls, endpoint.uri().scheme_str()) {
        (Some(tls), Some("https")) => {
            endpoint = endpoint
                .tls_config(tls.clone())
                .map_err(|e| invalid(with_causes(&e)))?;
        }
        (Some(_), _) => {
            return Err(invalid(
                "the client is set up for TLS (tls_ca_pem): give https:// addresses".into(),
            ));
        }
        (None, Some("https")) => {
            return Err(invalid(
                "an https:// address needs the authority of the node's certificate: ClientBuilder::tls_ca_pem".into(),
            ));
        }
        (None, _) => {}
    }
    let endpoint = endpoint
        .tcp_nodelay(true)
        // Whole batches are ~1 MiB: HTTP/2's default 64 KiB windows would cost a round trip
        // per 64 KiB.
        .initial_stream_window_size(Some(HTTP2_STREAM_WINDOW_BYTES))
        .initial_connection_window_size(Some(HTTP2_CONNECTION_WINDOW_BYTES))
        .connect_timeout(Duration::from_secs(2))
        // A server that vanished without closing (a partition, a host gone) is noticed by a
        // ping, even on a connection that only holds a watch or subscription open.
        .http2_keep_alive_interval(Duration::from_secs(limits::GRPC_KEEPALIVE_SECONDS))
        .keep_alive_timeout(Duration::from_secs(limits::GRPC_KEEPALIVE_SECONDS))
        .keep_alive_while_idle(true);
    let channel = endpoint.connect_lazy();
    Ok(Stubs {
        ledger: LedgerClient::with_interceptor(channel.clone(), dial.credentials.clone())
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX),
        sagas: SagasClient::with_interceptor(channel.clone(), dial.credentials.clone())
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX),
        events: EventsClient::with_interceptor(channel.clone(), dial.credentials.clone())
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX),
        meta: MetaClient::with_interceptor(channel.clone(), dial.credentials.clone())
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX),
        replica: ReplicaClient::with_interceptor(channel, dial.credentials.clone()),
    })
}

/// An error and its causes, `error: cause: cause` (tonic's transport errors say only
/// "transport error" at the top: the cause, such as an unreadable private key, is below).
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        text.push_str(&format!(": {next}"));
        cause = next.source();
    }
    text
}

/// What a failed attempt said: its code and message, and the causes below a transport
/// failure's message (where a refused TLS handshake, such as a node demanding a client
/// certificate, names its alert).
fn last_error(status: &Status) -> String {
    let message = status.message();
    match std::error::Error::source(status).map(with_causes) {
        // tonic's transport failures repeat their message as the first cause.
        Some(causes) if causes.starts_with(message) => format!("{:?}: {causes}", status.code()),
        Some(causes) => format!("{:?}: {message} ({causes})", status.code()),
        None => format!("{:?}: {message}", status.code()),
    }
}

/// The last error, then the other distinct errors met before it (`errors`, in order).
fn gave_up_report(last: &str, errors: &[String]) -> String {
    let earlier: Vec<&str> = errors
        .iter()
        .map(String::as_str)
        .filter(|error| *error != last)
        .collect();
    if earlier.is_empty() {
        last.to_string()
    } else {
        format!("{last}; earlier: {}", earlier.join("; "))
    }
}

/// How to build a [`Client`]: the addresses, the retry policy, the API key.
#[derive(Clone)]
pub struct ClientBuilder {
    addrs: Vec<String>,
    policy: RetryPolicy,
    api_key: Option<String>,
    tls_ca_pem: Option<Vec<u8>>,
    tls_domain: Option<String>,
    /// The client certificate (PEM chain) and its key (PEM).
    tls_identity_pem: Option<(Vec<u8>, Vec<u8>)>,
    group: Option<String>,
}

/// Shows everything but the key itself.
impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("addrs", &self.addrs)
            .field("policy", &self.policy)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls_ca_pem.is_some())
            .field("tls_domain", &self.tls_domain)
            .field("tls_identity", &self.tls_identity_pem.is_some())
            .finish()
    }
}

impl ClientBuilder {
    pub fn retry_policy(mut self, policy: RetryPolicy) -> ClientBuilder {
        self.policy = policy;
        self
    }

    /// The API key (`fincore_…`, from `fincore keys create`) sent with every call.
    pub fn api_key(mut self, key: impl Into<String>) -> ClientBuilder {
        self.api_key = Some(key.into());
        self
    }

    /// Like [`ClientBuilder::api_key`], when the key may be absent (an open node).
    pub fn api_key_opt(mut self, key: Option<impl Into<String>>) -> ClientBuilder {
        self.api_key = key.map(Into::into);
        self
    }

    /// Talk TLS to the nodes (their `serve --tls-cert`), trusting certificates issued by the
    /// authority in `ca_pem` (PEM; e.g. `api-ca.pem` from `fincore certs --api-names`). Every
    /// address must then be `https://`; each node's certificate must name the host dialled
    /// (or [`ClientBuilder::tls_domain`]).
    pub fn tls_ca_pem(mut self, ca_pem: impl Into<Vec<u8>>) -> ClientBuilder {
        self.tls_ca_pem = Some(ca_pem.into());
        self
    }

    /// With TLS: the name every node's certificate must carry, instead of the host dialled
    /// (for nodes reached by addresses their certificates do not name).
    pub fn tls_domain(mut self, name: impl Into<String>) -> ClientBuilder {
        self.tls_domain = Some(name.into());
        self
    }

    /// With TLS: present this client certificate (`certificate_pem`: PEM, the client's
    /// certificate first, then any intermediates) and its private key (`key_pem`: PEM) to every
    /// node, for nodes that require one (`serve --tls-client-ca`; e.g. `client-NAME.pem` and
    /// `.key` from `fincore certs --client-names NAME`). API keys still decide what the client
    /// may do; the certificate proves which client connects. Needs
    /// [`ClientBuilder::tls_ca_pem`]: a certificate is presented only over TLS.
    pub fn tls_identity_pem(
        mut self,
        certificate_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> ClientBuilder {
        self.tls_identity_pem = Some((certificate_pem.into(), key_pem.into()));
        self
    }

    /// The group (its 32-hex-digit id) these addresses belong to: every call names it, and a
    /// node of another group refuses the call (a [`ClientError::Invalid`] naming both groups)
    /// instead of serving it. A gateway sets it from its cluster map.
    pub fn group(mut self, id: impl Into<String>) -> ClientBuilder {
        self.group = Some(id.into());
        self
    }

    /// The client; it connects lazily (must be called inside a Tokio runtime).
    pub fn connect(self) -> Result<Client, ClientError> {
        let authorization = match self.api_key {
            None => None,
            Some(key) => Some(
                format!("Bearer {key}")
                    .parse()
                    .map_err(|_| ClientError::Invalid("api_key: not printable ASCII".into()))?,
            ),
        };
        let group = match self.group {
            None => None,
            Some(group) => Some(
                group
                    .parse()
                    .map_err(|_| ClientError::Invalid("group: not printable ASCII".into()))?,
            ),
        };
        let credentials = Bearer {
            authorization,
            group,
            reports: Arc::default(),
        };
        let tls = match (self.tls_ca_pem, self.tls_domain, self.tls_identity_pem) {
            (None, Some(_), _) => {
                return Err(ClientError::Invalid(
                    "tls_domain: given without tls_ca_pem".into(),
                ));
            }
            (None, None, Some(_)) => {
                return Err(ClientError::Invalid(
                    "tls_identity_pem: given without tls_ca_pem (a client certificate is presented only over TLS: add the authority of the nodes' certificates)".into(),
                ));
            }
            (None, None, None) => None,
            (Some(ca), domain, identity) => {
                let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
                if let Some(domain) = domain {
                    tls = tls.domain_name(domain);
                }
                if let Some((certificate, key)) = identity {
                    tls = tls.identity(Identity::from_pem(certificate, key));
                }
                Some(tls)
            }
        };
        let addrs: Vec<&str> = self.addrs.iter().map(String::as_str).collect();
        Client::start(&addrs, self.policy, Dial { credentials, tls })
    }
}

impl Client {
    /// A client of the node at `addr` (`http://host:port`). Connects lazily and reconnects by
    /// itself, so it survives node restarts.
    pub fn connect(addr: &str, policy: RetryPolicy) -> Result<Client, ClientError> {
        Client::connect_any(&[addr], policy)
    }

    /// A client of a replica group reachable at any of `addrs` (`http://host:port` each).
    pub fn connect_any(addrs: &[&str], policy: RetryPolicy) -> Result<Client, ClientError> {
        let dial = Dial {
            credentials: Bearer {
                authorization: None,
                group: None,
                reports: Arc::default(),
            },
            tls: None,
        };
        Client::start(addrs, policy, dial)
    }

    /// A client of the nodes at `addrs` (`http://host:port` each), to be configured (retry
    /// policy, API key) before [`ClientBuilder::connect`].
    pub fn builder(addrs: &[&str]) -> ClientBuilder {
        ClientBuilder {
            addrs: addrs.iter().map(|a| a.to_string()).collect(),
            policy: RetryPolicy::default(),
            api_key: None,
            tls_ca_pem: None,
            tls_domain: None,
            tls_identity_pem: None,
            group: None,
        }
    }

    fn start(addrs: &[&str], policy: RetryPolicy, dial: Dial) -> Result<Client, ClientError> {
        let first = addrs
            .first()
            .ok_or_else(|| ClientError::Invalid("no address given".into()))?;
        for addr in addrs {
            ledger_client(addr, &dial)?;
        }
        let inner = Arc::new(std::sync::RwLock::new(ledger_client(first, &dial)?));
        let (singles, queue) = mpsc::channel(PENDING_SINGLES_MAX);
        let client = Client {
            inner,
            dial,
            addrs: Arc::new(addrs.iter().map(|a| a.to_string()).collect()),
            next_addr: Arc::new(std::sync::atomic::AtomicUsize::new(1)),
            policy: Arc::new(policy),
            singles,
        };
        tokio::spawn(batch_singles(client.clone(), queue));
        Ok(client)
    }

    /// Runs `call` (the client's `operation`, one of `api::client_report::OPERATIONS`) until it
    /// succeeds, fails for good, or the retry policy runs out; each attempt's outcome and
    /// latency is reported on a later call.
    async fn retrying<T, F, Fut>(&self, operation: &'static str, call: F) -> Result<T, ClientError>
    where
        F: Fn(Stubs) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let started = Instant::now();
        let mut backoff = self.policy.backoff_initial;
        let mut attempts = 0;
        let mut errors = Vec::new();
        loop {
            attempts += 1;
            let current = self.inner.read().expect("never poisoned").clone();
            let reports = &self.dial.credentials.reports;
            let carried = reports.take();
            let header = (!carried.is_empty())
                .then(|| client_report::encode(&carried).parse().ok())
                .flatten();
            let attempted = Instant::now();
            let attempt = ATTEMPT_REPORTS.scope(std::cell::Cell::new(header), call(current));
            let outcome = match tokio::time::timeout(self.policy.attempt_timeout, attempt).await {
                Ok(outcome) => outcome,
                Err(_) => Err(Status::deadline_exceeded("attempt timed out")),
            };
            if outcome.as_ref().err().is_some_and(never_reached_a_node) {
                reports.put_back(carried);
            }
            reports.record(
                operation,
                attempt_outcome(outcome.as_ref().err()),
                attempted.elapsed(),
            );
            let status = match outcome {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) if !transient(&status) => return Err(permanent(&status)),
                Err(status) => status,
            };
            let error = last_error(&status);
            if errors.len() < GAVE_UP_ERRORS_REPORTED_MAX && !errors.contains(&error) {
                errors.push(error.clone());
            }
            // Not the leader, and it says who is: go there and retry at once.
            if let Some(leader) = status
                .metadata()
                .get(LEADER_GRPC_KEY)
                .and_then(|v| v.to_str().ok())
                && attempts < self.policy.attempts_max
                && let Ok(client) =
                    ledger_client(&format!("{}://{leader}", self.dial.scheme()), &self.dial)
            {
                tracing::debug!(leader, "following the leader");
                *self.inner.write().expect("never poisoned") = client;
                continue;
            }
            // No answer (or no leader known there): try the next address given.
            if self.addrs.len() > 1
                && matches!(
                    status.code(),
                    Code::Unavailable | Code::DeadlineExceeded | Code::Unknown
                )
            {
                let next = self
                    .next_addr
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                    % self.addrs.len();
                if let Ok(client) = ledger_client(&self.addrs[next], &self.dial) {
                    *self.inner.write().expect("never poisoned") = client;
                }
            }
            let elapsed = started.elapsed();
            // A server's flow control says when a retry may pass: wait at least that long.
            let wait = backoff.max(retry_after(&status));
            if attempts >= self.policy.attempts_max || elapsed + wait > self.policy.elapsed_max {
                return Err(ClientError::GaveUp {
                    attempts,
                    elapsed,
                    last: gave_up_report(&error, &errors),
                });
            }
            tracing::debug!(attempts, code = ?status.code(), "retrying with the same events");
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(self.policy.backoff_max);
        }
    }

    /// Creates accounts; one result per account, in order. More than one batch is split.
    pub async fn create_accounts(
        &self,
        accounts: &[Account],
    ) -> Result<Vec<EventResult<CreateAccountResult>>, ClientError> {
        self.create_in_batches(
            "create_accounts",
            accounts,
            |chunk| proto::CreateAccountsRequest {
                accounts: vec![],
                packed: bytes_of(convert::pack_accounts(chunk)),
            },
            |mut inner, request| async move { inner.ledger.create_accounts(request).await },
            CreateAccountResult::from_code,
        )
        .await
    }

    /// Creates transfers; one result per transfer, in order. A slice longer than one batch is
    /// split into batches (a linked chain must not straddle 8,189-event boundaries).
    pub async fn create_transfers(
        &self,
        transfers: &[Transfer],
    ) -> Result<Vec<EventResult<CreateTransferResult>>, ClientError> {
        self.create_in_batches(
            "create_transfers",
            transfers,
            |chunk| proto::CreateTransfersRequest {
                transfers: vec![],
                packed: bytes_of(convert::pack_transfers(chunk)),
            },
            |mut inner, request| async move { inner.ledger.create_transfers(request).await },
            CreateTransferResult::from_code,
        )
        .await
    }

    /// Sends `events` a batch at a time (each batch's request made by `request`, sent by
    /// `send` with retries): one result per event, in order.
    async fn create_in_batches<E, Req, R, F, Fut>(
        &self,
        operation: &'static str,
        events: &[E],
        request: impl Fn(&[E]) -> Req,
        send: F,
        from_code: fn(u32) -> Option<R>,
    ) -> Result<Vec<EventResult<R>>, ClientError>
    where
        Req: Clone,
        F: Fn(Stubs, Req) -> Fut,
        Fut: Future<Output = Result<tonic::Response<proto::CreateResponse>, Status>>,
    {
        let mut out = Vec::with_capacity(events.len());
        for chunk in events.chunks(BATCH_EVENTS_MAX) {
            let request = request(chunk);
            let response = self
                .retrying(operation, |inner| send(inner, request.clone()))
                .await?;
            out.extend(decode_results(&response, chunk.len(), from_code)?);
        }
        Ok(out)
    }

    /// Creates one transfer, batched together with other tasks' single transfers.
    pub async fn create_transfer(
        &self,
        transfer: Transfer,
    ) -> Result<EventResult<CreateTransferResult>, ClientError> {
        if transfer.flags.contains(TransferFlags::LINKED) {
            return Err(ClientError::Invalid(
                "flags: a single transfer cannot be linked; send the whole chain with create_transfers".into(),
            ));
        }
        let (reply, answer) = oneshot::channel();
        self.singles
            .send((transfer, reply))
            .await
            .map_err(|_| ClientError::Protocol("the batching task stopped".into()))?;
        answer
            .await
            .map_err(|_| ClientError::Protocol("the batching task stopped".into()))?
    }

    pub async fn lookup_accounts(&self, ids: &[u128]) -> Result<Vec<Account>, ClientError> {
        let request = proto::LookupRequest {
            ids: ids
                .iter()
                .map(|id| convert::u128_to(*id).expect("some"))
                .collect(),
        };
        let response = self.retrying("lookup_accounts", |mut inner| {
            let request = request.clone();
            async move { inner.ledger.lookup_accounts(request).await }
        });
        let response = response.await?;
        response
            .accounts
            .iter()
            .enumerate()
            .map(|(at, a)| {
                convert::account_from(a, at).map_err(|e| ClientError::Protocol(e.to_string()))
            })
            .collect()
    }

    pub async fn lookup_transfers(&self, ids: &[u128]) -> Result<Vec<Transfer>, ClientError> {
        let request = proto::LookupRequest {
            ids: ids
                .iter()
                .map(|id| convert::u128_to(*id).expect("some"))
                .collect(),
        };
        let response = self
            .retrying("lookup_transfers", |mut inner| {
                let request = request.clone();
                async move { inner.ledger.lookup_transfers(request).await }
            })
            .await?;
        transfers_from(&response.transfers)
    }

    /// Where each transfer id stands, one outcome per id in the order asked, waiting up to
    /// `wait` (at most `limits::OUTCOME_WAIT_MS_MAX` ms) while any is `pending`: how a caller answered `outcome_pending` by a gateway learns the end of its
    /// cross-group transfer.
    pub async fn lookup_outcomes(
        &self,
        ids: &[u128],
        wait: Duration,
    ) -> Result<Vec<TransferOutcome>, ClientError> {
        let request = proto::LookupOutcomesRequest {
            ids: ids
                .iter()
                .map(|id| convert::u128_to(*id).expect("some"))
                .collect(),
            wait_ms: u32::try_from(wait.as_millis()).unwrap_or(u32::MAX),
        };
        let response = self
            .retrying("lookup_outcomes", |mut inner| {
                let request = request.clone();
                async move { inner.ledger.lookup_outcomes(request).await }
            })
            .await?;
        let outcomes = response
            .outcomes
            .iter()
            .enumerate()
            .map(|(at, outcome)| convert::outcome_from(outcome, at))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| ClientError::Protocol(error.to_string()))?;
        if outcomes.len() != ids.len()
            || outcomes.iter().zip(ids).any(|((id, _), asked)| id != asked)
        {
            return Err(ClientError::Protocol(format!(
                "the server answered {} outcomes, not one per id asked ({}) in order",
                outcomes.len(),
                ids.len()
            )));
        }
        Ok(outcomes.into_iter().map(|(_, outcome)| outcome).collect())
    }

    pub async fn get_account_transfers(
        &self,
        filter: &AccountFilter,
    ) -> Result<Vec<Transfer>, ClientError> {
        let request = convert::filter_to(filter);
        let response = self
            .retrying("get_account_transfers", |mut inner| async move {
                inner.ledger.get_account_transfers(request).await
            })
            .await?;
        transfers_from(&response.transfers)
    }

    pub async fn get_account_balances(
        &self,
        filter: &AccountFilter,
    ) -> Result<Vec<AccountBalance>, ClientError> {
        let request = convert::filter_to(filter);
        let response = self
            .retrying("get_account_balances", |mut inner| async move {
                inner.ledger.get_account_balances(request).await
            })
            .await?;
        Ok(response
            .balances
            .iter()
            .map(convert::balance_from)
            .collect())
    }

    /// Applies saga steps in the group (a gateway's call; the key needs the `admin` role):
    /// one result per step, in order.
    pub async fn saga_steps(
        &self,
        steps: &[SagaStep],
    ) -> Result<Vec<EventResult<CreateTransferResult>>, ClientError> {
        self.create_in_batches(
            "saga_steps",
            steps,
            |chunk| proto::SagaStepsRequest {
                steps: chunk.iter().map(convert::saga_step_to).collect(),
            },
            |mut inner, request| async move { inner.sagas.steps(request).await },
            CreateTransferResult::from_code,
        )
        .await
    }

    /// The group's open saga copies reserved at least `older_than` ago, oldest first, at most
    /// `limit` (1 ..= 8,189).
    pub async fn open_saga_copies(
        &self,
        older_than: Duration,
        limit: u32,
    ) -> Result<Vec<(Transfer, RemoteSides)>, ClientError> {
        let request = proto::OpenSagaCopiesRequest {
            older_than_ms: u64::try_from(older_than.as_millis()).unwrap_or(u64::MAX),
            limit,
        };
        let response = self
            .retrying("open_saga_copies", |mut inner| async move {
                inner.sagas.open_copies(request).await
            })
            .await?;
        response
            .copies
            .iter()
            .enumerate()
            .map(|(at, copy)| {
                convert::saga_copy_from(copy, at).map_err(|e| ClientError::Protocol(e.to_string()))
            })
            .collect()
    }

    /// The own view of the replica this client talks to (any replica answers, leader or not;
    /// give a client of one address to ask a given one): its role, term, leader, log indexes,
    /// followers' lag when it leads, and its process's traffic totals.
    pub async fn replica_status(&self) -> Result<proto::ReplicaStatusReply, ClientError> {
        self.retrying("replica_status", |mut inner| async move {
            inner.replica.status(proto::ReplicaStatusRequest {}).await
        })
        .await
    }

    /// At most `limit` (1 ..= 4,096) change events after `after`, from the replica this client
    /// talks to (any replica serves the same events).
    pub async fn read_events(&self, after: u64, limit: u32) -> Result<EventsPage, ClientError> {
        let request = proto::ReadEventsRequest { after, limit };
        let page = self
            .retrying("read_events", |mut inner| async move {
                inner.events.read(request).await
            })
            .await?;
        events_page_from(page)
    }

    /// Every change event after `after`, then new ones as they are applied.
    pub async fn subscribe_events(&self, after: u64) -> Result<EventSubscription, ClientError> {
        let request = proto::SubscribeRequest { after };
        let stream = self
            .retrying("subscribe_events", |mut inner| async move {
                inner.events.subscribe(request).await
            })
            .await?;
        Ok(EventSubscription { stream, after })
    }
}

/// Metadata key of an OUT_OF_RANGE events answer: the first event the replica has.
pub const FIRST_SEQ_KEY: &str = "fincore-first-seq";

/// The newest event any of `clients` (a group's replicas) has: all asked at once, the highest
/// `last_seq` of those that answer (a lagging follower must not hide what the group holds);
/// `None` when none answers.
pub async fn newest_event_seq<'a>(clients: impl IntoIterator<Item = &'a Client>) -> Option<u64> {
    let asked = clients
        .into_iter()
        .map(|client| client.read_events(u64::MAX, 1));
    futures::future::join_all(asked)
        .await
        .into_iter()
        .filter_map(|page| page.ok().map(|page| page.last_seq))
        .max()
}

/// A page of change events, with the first and last events the replica has
/// (`first_seq = last_seq + 1`: none yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsPage {
    pub events: Vec<Event>,
    pub first_seq: u64,
    pub last_seq: u64,
}

fn events_page_from(page: proto::EventsPage) -> Result<EventsPage, ClientError> {
    let events = page
        .events
        .iter()
        .enumerate()
        .map(|(at, event)| {
            api::events::event_from(event, at).map_err(|e| ClientError::Protocol(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(EventsPage {
        events,
        first_seq: page.first_seq,
        last_seq: page.last_seq,
    })
}

/// A live subscription ([`Client::subscribe_events`]): pages in order, without gaps.
pub struct EventSubscription {
    stream: tonic::Streaming<proto::EventsPage>,
    /// The last sequence number received (pages must continue it).
    after: u64,
}

impl EventSubscription {
    /// The next page (`None`: the node ended the stream, e.g. at its shutdown; subscribe again
    /// after [`EventSubscription::after`]). A node that drops a subscriber that read too slowly
    /// ends with an error (RESOURCE_EXHAUSTED, as [`ClientError::GaveUp`]'s message says).
    pub async fn next(&mut self) -> Result<Option<EventsPage>, ClientError> {
        let page = match self.stream.message().await {
            Ok(Some(page)) => events_page_from(page)?,
            Ok(None) => return Ok(None),
            Err(status) if transient(&status) => {
                return Err(ClientError::GaveUp {
                    attempts: 1,
                    elapsed: Duration::ZERO,
                    last: last_error(&status),
                });
            }
            Err(status) => return Err(permanent(&status)),
        };
        if let Some(first) = page.events.first()
            && first.seq != self.after + 1
        {
            return Err(ClientError::Protocol(format!(
                "the stream skipped from {} to {}",
                self.after, first.seq
            )));
        }
        if let Some(last) = page.events.last() {
            self.after = last.seq;
        }
        Ok(Some(page))
    }

    /// The last sequence number received: where to resume.
    pub fn after(&self) -> u64 {
        self.after
    }
}

fn bytes_of(packed: Vec<u8>) -> tonic::codegen::Bytes {
    tonic::codegen::Bytes::from(packed)
}

fn transfers_from(transfers: &[proto::Transfer]) -> Result<Vec<Transfer>, ClientError> {
    transfers
        .iter()
        .enumerate()
        .map(|(at, t)| {
            convert::transfer_from(t, at).map_err(|e| ClientError::Protocol(e.to_string()))
        })
        .collect()
}

fn decode_results<R>(
    response: &proto::CreateResponse,
    expected: usize,
    from_code: fn(u32) -> Option<R>,
) -> Result<Vec<EventResult<R>>, ClientError> {
    if response.results.len() != expected || response.timestamps.len() != expected {
        return Err(ClientError::Protocol(format!(
            "{} results and {} timestamps for {expected} events",
            response.results.len(),
            response.timestamps.len()
        )));
    }
    response
        .results
        .iter()
        .zip(&response.timestamps)
        .map(|(&code, &timestamp)| {
            let result = from_code(code)
                .ok_or_else(|| ClientError::Protocol(format!("unknown result code {code}")))?;
            Ok(EventResult { result, timestamp })
        })
        .collect()
}

/// Coalesces single transfers into batches and answers each caller.
async fn batch_singles(client: Client, mut queue: mpsc::Receiver<(Transfer, SingleReply)>) {
    let in_flight = Arc::new(Semaphore::new(SINGLE_BATCHES_IN_FLIGHT_MAX));
    let imported =
        |(transfer, _): &(Transfer, SingleReply)| transfer.flags.contains(TransferFlags::IMPORTED);
    let mut carried = None;
    loop {
        let first = match carried.take() {
            Some(first) => first,
            None => match queue.recv().await {
                Some(first) => first,
                None => break,
            },
        };
        let permit = Arc::clone(&in_flight)
            .acquire_owned()
            .await
            .expect("never closed");
        // Take whatever else queued up meanwhile, up to one batch, stopping at the first
        // transfer that is imported when the first is not (or the reverse): the node judges a
        // batch's every event by its first one's `imported` flag, so such a transfer starts
        // the next batch rather than be refused for a stranger's flag.
        let mut group = vec![first];
        while group.len() < BATCH_EVENTS_MAX {
            match queue.try_recv() {
                Ok(next) if imported(&next) == imported(&group[0]) => group.push(next),
                Ok(next) => {
                    carried = Some(next);
                    break;
                }
                Err(_) => break,
            }
        }
        let client = client.clone();
        tokio::spawn(async move {
            let transfers: Vec<Transfer> = group.iter().map(|(t, _)| *t).collect();
            match client.create_transfers(&transfers).await {
                Ok(results) => {
                    for ((_, reply), result) in group.into_iter().zip(results) {
                        let _ = reply.send(Ok(result));
                    }
                }
                Err(error) => {
                    for (_, reply) in group {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
            }
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn giving_up_reports_the_last_error_and_the_other_kinds_met_before_it() {
        let errors = ["A".to_string(), "B".to_string()];
        assert_eq!(gave_up_report("B", &errors), "B; earlier: A");
        assert_eq!(gave_up_report("A", &errors[..1]), "A");
        let status = Status::unavailable("no leader");
        assert_eq!(last_error(&status), "Unavailable: no leader");
    }

    #[test]
    fn a_client_certificate_without_an_authority_is_refused_naming_both() {
        let error = Client::builder(&["https://127.0.0.1:1"])
            .tls_identity_pem("certificate", "key")
            .connect();
        let Err(ClientError::Invalid(text)) = error else {
            panic!("not refused as invalid");
        };
        assert!(
            text.contains("tls_identity_pem") && text.contains("tls_ca_pem"),
            "{text}"
        );
    }

    #[test]
    fn a_client_certificate_that_is_not_pem_is_refused_at_connect_saying_why() {
        let error = Client::builder(&["https://127.0.0.1:1"])
            .tls_ca_pem("no authority either")
            .tls_identity_pem("not a certificate", "not a key")
            .connect();
        let Err(ClientError::Invalid(text)) = error else {
            panic!("not refused as invalid");
        };
        assert!(text.contains("127.0.0.1:1"), "{text}");
        assert!(
            text.to_lowercase().contains("certificate") || text.to_lowercase().contains("key"),
            "{text}"
        );
    }
}
