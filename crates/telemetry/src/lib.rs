//! Telemetry: the metrics a node exports and the process's log setup.
//!
//! Owns metric names, labels and buckets (one [`Metrics`] per node, no global registry, so
//! several nodes can live in one test process; each [`Service`] exports only the families it
//! records) and their text exposition for `GET /metrics`.
//! Per operation it exports a request counter, an error counter by kind and a latency
//! histogram, from which qps, p99 and error rate follow; plus queue depths, batch sizes and
//! journal sync latency; and for a replica its Raft state (term, role, leader changes, log
//! indexes, per-follower replication lag, snapshots sent and installed) from a [`RaftSample`].
//! Error labels come from [`ErrorKind`], a closed set, never from error text. The text is
//! OpenMetrics when the scraper asks for it and Prometheus' text format 0.0.4 otherwise
//! ([`Exposition`]). Must not know about the ledger's types nor about openraft's.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

mod follow;
mod logs;
mod service_registry;
pub mod trace;
mod traffic;

pub use follow::FollowGroup;
pub use logs::{LOG_FILTER_DEFAULT, LogFormat, LogGuard, init_logging, log_lines_dropped};
pub use service_registry::RegistrySample;

/// A count as a gauge's value (a count past `i64::MAX` shows as `i64::MAX`).
pub(crate) fn gauge(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
pub use traffic::{LATENCY_BUCKETS_COUNT, TrafficRates, TrafficTotals, latency_bucket_bound};

/// The content type of [`Metrics::render`]'s output.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The content type of Prometheus' text format, what [`Exposition::PrometheusText`] renders.
pub const PROMETHEUS_TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Which text format `/metrics` answers in: OpenMetrics to a scraper that asks for it (as
/// Prometheus does), Prometheus' older text format to everyone else (`curl`, `promtool check
/// metrics`, which reads only that one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposition {
    OpenMetrics,
    PrometheusText,
}

impl Exposition {
    /// The format asked for by an HTTP `Accept` header.
    pub fn negotiate(accept: Option<&str>) -> Exposition {
        if accept.is_some_and(|accept| {
            accept
                .to_ascii_lowercase()
                .contains("application/openmetrics-text")
        }) {
            Exposition::OpenMetrics
        } else {
            Exposition::PrometheusText
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Exposition::OpenMetrics => METRICS_CONTENT_TYPE,
            Exposition::PrometheusText => PROMETHEUS_TEXT_CONTENT_TYPE,
        }
    }
}

/// OpenMetrics text as Prometheus' text format 0.0.4: a counter's `HELP` and `TYPE` name its
/// `_total` sample (OpenMetrics names the family without the suffix), and the `UNIT` and
/// `EOF` lines, which the older format lacks, go. Nothing here emits exemplars or `_created`
/// samples, the only other differences.
fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let described = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|prefix| Some((prefix, line.strip_prefix(prefix)?)));
        match described {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let suffix = if counters.contains(name) {
                    "_total"
                } else {
                    ""
                };
                out.push_str(&format!("{prefix}{name}{suffix} {tail}\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// The Raft roles [`RaftSample::role`] may name: the values of `fincore_raft_role`'s `role`
/// label, each present (1 for the current role, 0 for the others).
pub const RAFT_ROLES: [&str; 5] = ["leader", "follower", "candidate", "learner", "shutdown"];

/// A replica's Raft state at one moment, as [`Metrics::raft`] exports it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RaftSample {
    pub term: u64,
    /// One of [`RAFT_ROLES`].
    pub role: &'static str,
    /// The leader this replica knows of.
    pub leader: Option<u64>,
    pub last_log_index: u64,
    pub committed_index: u64,
    pub applied_index: u64,
    pub snapshot_index: u64,
    pub purged_index: u64,
    /// Only on a leader: every other member's replication state.
    pub followers: Vec<FollowerSample>,
    /// Snapshots this replica sent to peers, and received and installed, since it started.
    pub snapshots_sent: u64,
    pub snapshots_installed: u64,
}

/// How far one follower is behind its leader.
#[derive(Debug, Clone, PartialEq)]
pub struct FollowerSample {
    pub id: u64,
    /// Entries the leader holds that the follower has not acknowledged.
    pub lag_entries: u64,
    /// Time since the follower last acknowledged anything (entries or a heartbeat); `None` if
    /// it never has since this replica became leader.
    pub since_ack: Option<Duration>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
    protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    operation: &'static str,
    protocol: &'static str,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    queue: &'static str,
}

/// Why a request was answered with an error: the `kind` label of
/// `fincore_request_errors_total`. A closed set, so dashboards can list every value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The request was malformed or refused (nothing changed); sending it again will not help.
    Invalid,
    /// What the request names does not exist.
    NotFound,
    /// The request queue was full; retry later.
    Busy,
    /// The node could not serve it now (no quorum, shutting down, stopped); retry.
    Unavailable,
    /// This node is not the leader; the client should go there.
    NotLeader,
    /// The ledger's declared capacity would be exceeded (not transient).
    Capacity,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 6] = [
        ErrorKind::Invalid,
        ErrorKind::NotFound,
        ErrorKind::Busy,
        ErrorKind::Unavailable,
        ErrorKind::NotLeader,
        ErrorKind::Capacity,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::Invalid => "invalid",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Busy => "busy",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::NotLeader => "not_leader",
            ErrorKind::Capacity => "capacity",
        }
    }
}

fn latency_histogram() -> Histogram {
    // 50 µs .. ~1.6 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabels {
    role: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FollowerLabels {
    follower: String,
}

/// The Raft families of a replica's metrics.
struct RaftMetrics {
    term: Gauge,
    role: Family<RoleLabels, Gauge>,
    leader_changes: Counter,
    last_log_index: Gauge,
    commit_index: Gauge,
    applied_index: Gauge,
    snapshot_index: Gauge,
    purged_index: Gauge,
    lag_entries: Family<FollowerLabels, Gauge>,
    lag_seconds: Family<FollowerLabels, Gauge<f64, AtomicU64>>,
    snapshots_sent: Counter,
    snapshots_installed: Counter,
    /// The leader (and its term) of the previous sample, to count changes; and the snapshot
    /// counts already added. One lock, so that two samplers never count one change twice.
    seen: Mutex<RaftSeen>,
}

#[derive(Default)]
struct RaftSeen {
    leader: Option<(u64, u64)>,
    snapshots_sent: u64,
    snapshots_installed: u64,
}

impl RaftMetrics {
    fn new() -> RaftMetrics {
        RaftMetrics {
            term: Gauge::default(),
            role: Family::default(),
            leader_changes: Counter::default(),
            last_log_index: Gauge::default(),
            commit_index: Gauge::default(),
            applied_index: Gauge::default(),
            snapshot_index: Gauge::default(),
            purged_index: Gauge::default(),
            lag_entries: Family::default(),
            lag_seconds: Family::default(),
            snapshots_sent: Counter::default(),
            snapshots_installed: Counter::default(),
            seen: Mutex::new(RaftSeen::default()),
        }
    }

    fn register(&self, registry: &mut Registry) {
        let gauges: [(&str, &str, &Gauge); 6] = [
            ("raft_term", "The Raft term this replica is in", &self.term),
            (
                "raft_last_log_index",
                "Index of the last entry in this replica's Raft log",
                &self.last_log_index,
            ),
            (
                "raft_commit_index",
                "Index of the last entry this replica knows to be committed (held by a quorum)",
                &self.commit_index,
            ),
            (
                "raft_applied_index",
                "Index of the last entry applied to this replica's state machine",
                &self.applied_index,
            ),
            (
                "raft_snapshot_index",
                "Index of the last entry this replica's newest snapshot covers",
                &self.snapshot_index,
            ),
            (
                "raft_purged_index",
                "Index of the last entry purged from this replica's log (covered by a snapshot)",
                &self.purged_index,
            ),
        ];
        for (name, help, gauge) in gauges {
            registry.register(name, help, gauge.clone());
        }
        registry.register(
            "raft_role",
            "1 for this replica's Raft role (leader, follower, candidate, learner, shutdown), 0 for the others",
            self.role.clone(),
        );
        registry.register(
            "raft_leader_changes",
            "Leaders this replica has seen take over (another leader, or a new term), its first included",
            self.leader_changes.clone(),
        );
        registry.register(
            "raft_replication_lag_entries",
            "On the leader: entries of its log each follower has not acknowledged",
            self.lag_entries.clone(),
        );
        registry.register(
            "raft_replication_lag_seconds",
            "On the leader: time since each follower last acknowledged (entries or a heartbeat)",
            self.lag_seconds.clone(),
        );
        registry.register(
            "raft_snapshots_sent",
            "Snapshots this replica streamed to a peer that accepted them (its vote current)",
            self.snapshots_sent.clone(),
        );
        registry.register(
            "raft_snapshots_installed",
            "Snapshots this replica received whole from its leader and handed to Raft under the leader's vote (Raft skips one it no longer needs)",
            self.snapshots_installed.clone(),
        );
    }

    fn lock_seen(&self) -> std::sync::MutexGuard<'_, RaftSeen> {
        self.seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records `sample`; true when it names a leader (or a term) the previous sample did not.
    fn record(&self, sample: &RaftSample) -> bool {
        let mut seen = self.lock_seen();
        self.term.set(gauge(sample.term));
        for role in RAFT_ROLES {
            self.role
                .get_or_create(&RoleLabels { role })
                .set(i64::from(role == sample.role));
        }
        let leader = sample.leader.map(|leader| (leader, sample.term));
        let new_leader = leader.is_some() && leader != seen.leader;
        if new_leader {
            seen.leader = leader;
            self.leader_changes.inc();
        }
        self.last_log_index.set(gauge(sample.last_log_index));
        self.commit_index.set(gauge(sample.committed_index));
        self.applied_index.set(gauge(sample.applied_index));
        self.snapshot_index.set(gauge(sample.snapshot_index));
        self.purged_index.set(gauge(sample.purged_index));
        // A follower's series exist only while this replica leads it.
        self.lag_entries.clear();
        self.lag_seconds.clear();
        for follower in &sample.followers {
            let labels = FollowerLabels {
                follower: follower.id.to_string(),
            };
            self.lag_entries
                .get_or_create(&labels)
                .set(gauge(follower.lag_entries));
            if let Some(since_ack) = follower.since_ack {
                self.lag_seconds
                    .get_or_create(&labels)
                    .set(since_ack.as_secs_f64());
            }
        }
        self.snapshots_sent
            .inc_by(sample.snapshots_sent.saturating_sub(seen.snapshots_sent));
        seen.snapshots_sent = seen.snapshots_sent.max(sample.snapshots_sent);
        self.snapshots_installed.inc_by(
            sample
                .snapshots_installed
                .saturating_sub(seen.snapshots_installed),
        );
        seen.snapshots_installed = seen.snapshots_installed.max(sample.snapshots_installed);
        new_leader
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClientObservedLabels {
    operation: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabels {
    group: String,
}

/// The values of `fincore_sagas_total`'s `outcome` label.
pub const SAGA_OUTCOMES: [&str; 3] = ["confirmed", "cancelled", "diverged"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SagaLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    protocol: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FlowLabels {
    api: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConfigKeyLabels {
    key: String,
}

/// All metrics of one node.
pub struct Metrics {
    registry: Registry,
    requests: Family<OperationLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    auth_refusals: Family<RefusalLabels, Counter>,
    flow_refusals: Family<FlowLabels, Counter>,
    breaker_state: Family<GroupLabels, Gauge>,
    breaker_refusals: Family<GroupLabels, Counter>,
    config_revision: Gauge,
    config_key_version: Family<ConfigKeyLabels, Gauge>,
    config_key_gray: Family<ConfigKeyLabels, Gauge>,
    latency: Family<OperationLabels, Histogram, fn() -> Histogram>,
    queue_depth: Family<QueueLabels, Gauge>,
    batch_events: Histogram,
    batches: Counter,
    saga_copies_open: Gauge,
    service_registry: service_registry::RegistryFamilies,
    journal_sync_seconds: Histogram,
    journal_records: Counter,
    sagas: Family<SagaLabels, Counter>,
    sagas_answered_pending: Counter,
    sagas_in_flight: Gauge,
    saga_copies_stale: Family<GroupLabels, Gauge>,
    client_observed: Family<ClientObservedLabels, Counter>,
    client_observed_latency: Family<ClientObservedLabels, Histogram, fn() -> Histogram>,
    client_reports_malformed: Counter,
    raft: RaftMetrics,
    traffic: traffic::Traffic,
    cdc: follow::Follow,
    projection: follow::Follow,
    /// Log lines dropped, brought up to [`log_lines_dropped`] at each render (under the lock,
    /// so two renders never add one drop twice).
    log_lines_dropped: Mutex<Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Which process a [`Metrics`] describes: each exports only the families it records, so that
/// an operator reading one sees nothing that can never move there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// A ledger replica (`fincore serve`): requests, its pipeline's queue and batches, and its
    /// journal.
    LedgerNode,
    /// A gateway: requests and the sagas it carries.
    Gateway,
    /// A meta replica: requests and its journal.
    MetaReplica,
    /// The change-event publisher (`fincore cdc`): its progress per group, no requests.
    Publisher,
    /// The read-model projector (`fincore project`): its progress per group, no requests.
    Projector,
    /// The service registry (`fincore registry serve`): its streams, records and pushes.
    Registry,
    /// Every family (tests, and processes that are several of the above).
    All,
}

impl Service {
    fn serves_requests(self) -> bool {
        !matches!(
            self,
            Service::Publisher | Service::Projector | Service::Registry
        )
    }

    fn records_batches(self) -> bool {
        matches!(self, Service::LedgerNode | Service::All)
    }

    fn records_journal(self) -> bool {
        matches!(
            self,
            Service::LedgerNode | Service::MetaReplica | Service::All
        )
    }

    fn records_raft(self) -> bool {
        self.records_journal()
    }

    fn records_sagas(self) -> bool {
        matches!(self, Service::Gateway | Service::All)
    }

    /// Circuit breakers on groups: a gateway's.
    fn records_breakers(self) -> bool {
        matches!(self, Service::Gateway | Service::All)
    }

    /// The config center's values a process takes: a gateway's and a ledger node's.
    fn records_config(self) -> bool {
        matches!(self, Service::Gateway | Service::LedgerNode | Service::All)
    }
}

impl Metrics {
    /// Every family registered ([`Service::All`]).
    pub fn new() -> Arc<Metrics> {
        Metrics::for_service(Service::All)
    }

    /// The families `service` records; the others are kept, unregistered, so that recording
    /// into them is harmless and never shown.
    pub fn for_service(service: Service) -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("fincore");
        let requests = Family::<OperationLabels, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let auth_refusals = Family::<RefusalLabels, Counter>::default();
        let flow_refusals = Family::<FlowLabels, Counter>::default();
        let config_revision = Gauge::default();
        let breaker_state = Family::<GroupLabels, Gauge>::default();
        let breaker_refusals = Family::<GroupLabels, Counter>::default();
        let config_key_version = Family::<ConfigKeyLabels, Gauge>::default();
        let config_key_gray = Family::<ConfigKeyLabels, Gauge>::default();
        let latency = Family::<OperationLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let queue_depth = Family::<QueueLabels, Gauge>::default();
        let batch_events = Histogram::new(exponential_buckets(1.0, 2.0, 14));
        let batches = Counter::default();
        let saga_copies_open = Gauge::default();
        let journal_sync_seconds = latency_histogram();
        let journal_records = Counter::default();
        let sagas = Family::<SagaLabels, Counter>::default();
        let sagas_answered_pending = Counter::default();
        let sagas_in_flight = Gauge::default();
        let saga_copies_stale = Family::<GroupLabels, Gauge>::default();
        let client_observed = Family::<ClientObservedLabels, Counter>::default();
        let client_observed_latency =
            Family::<ClientObservedLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        let client_reports_malformed = Counter::default();
        let raft = RaftMetrics::new();
        let log_lines_dropped = Counter::default();
        registry.register(
            "log_lines_dropped",
            "Log lines dropped because the log writer's queue was full (a slow or blocked stderr): logging never waits",
            log_lines_dropped.clone(),
        );
        if service.serves_requests() {
            registry.register(
                "client_observed_requests",
                "Calls as the clients saw them, reported on their later calls: by operation and outcome (ok, refused, busy, unavailable, timeout, not_leader, other), failures that never reached a server included",
                client_observed.clone(),
            );
            registry.register(
                "client_observed_duration_seconds",
                "Latency of calls as the clients measured them (each attempt), by operation and outcome",
                client_observed_latency.clone(),
            );
            registry.register(
                "client_reports_malformed",
                "Client reports of earlier calls that were not well formed (ignored)",
                client_reports_malformed.clone(),
            );
            registry.register(
                "requests",
                "Requests received, by operation and protocol",
                requests.clone(),
            );
            registry.register(
                "request_errors",
                "Requests answered with an error, by operation, protocol and kind (invalid, not_found, busy, unavailable, not_leader, capacity)",
                errors.clone(),
            );
            registry.register(
                "auth_refusals",
                "Client calls refused before reaching an operation, by protocol and reason (missing, malformed, unknown_key, forbidden)",
                auth_refusals.clone(),
            );
            registry.register(
                "flow_refusals",
                "Client calls refused by flow control before reaching an operation, by API and reason (read_only, disabled, rate, caller_share, queue_full, queue_timeout, overload, hot_account)",
                flow_refusals.clone(),
            );
            registry.register(
                "request_duration_seconds",
                "Time from receiving a request to answering it",
                latency.clone(),
            );
        }
        if service.records_breakers() {
            registry.register(
                "breaker_state",
                "A gateway's circuit breaker on a group: 0 closed, 1 open (calls refused at once), 2 half-open (probes let through)",
                breaker_state.clone(),
            );
            registry.register(
                "breaker_refusals",
                "Calls a gateway refused at once because its circuit breaker on the group was open",
                breaker_refusals.clone(),
            );
        }
        if service.records_config() {
            registry.register(
                "config_revision",
                "The config center's revision this process has taken (0: it watches none, or none was set)",
                config_revision.clone(),
            );
            registry.register(
                "config_key_version",
                "The config center's version of a key this process applies (0: the key is not set there; the local file or default applies)",
                config_key_version.clone(),
            );
            registry.register(
                "config_key_gray",
                "1 while this process applies a gray release of the key (a value staged for a subset), else 0",
                config_key_gray.clone(),
            );
        }
        if service.records_batches() {
            registry.register(
                "queue_depth",
                "Requests or batches waiting in a pipeline queue",
                queue_depth.clone(),
            );
            registry.register(
                "batch_events",
                "Events per sealed batch",
                batch_events.clone(),
            );
            registry.register("batches", "Batches sealed and applied", batches.clone());
            registry.register(
                "saga_copies_open",
                "Saga copies open in this replica's state (reserved for a cross-group transfer, not yet posted or voided): its group's saga backlog as this replica has applied it",
                saga_copies_open.clone(),
            );
        }
        if service.records_journal() {
            registry.register(
                "journal_sync_seconds",
                "Duration of each journal fdatasync (one per group)",
                journal_sync_seconds.clone(),
            );
            registry.register(
                "journal_records",
                "Journal records made durable",
                journal_records.clone(),
            );
        }
        if service.records_raft() {
            raft.register(&mut registry);
        }
        let cdc = follow::Follow::new();
        let projection = follow::Follow::new();
        if matches!(service, Service::Publisher | Service::All) {
            cdc.register(&mut registry, "cdc", "published to NATS and acknowledged");
        }
        if matches!(service, Service::Projector | Service::All) {
            projection.register(&mut registry, "projection", "projected and committed");
        }
        let service_registry = service_registry::RegistryFamilies::default();
        if matches!(service, Service::Registry | Service::All) {
            service_registry.register(&mut registry);
        }
        if service.records_sagas() {
            // Every outcome shows from the start, at 0: an alert on the first `diverged`
            // needs the series before it.
            for outcome in SAGA_OUTCOMES {
                let _ = sagas.get_or_create(&SagaLabels { outcome });
            }
            registry.register(
                "sagas",
                "Cross-group transfers carried by saga to an end, by outcome (confirmed, cancelled, diverged: a copy settled against its home's decision, which must never happen)",
                sagas.clone(),
            );
            registry.register(
                "sagas_answered_pending",
                "Cross-group transfers answered outcome_pending: their saga had not ended by the gateway's deadline (it goes on, and is counted in sagas when it ends)",
                sagas_answered_pending.clone(),
            );
            registry.register(
                "sagas_in_flight",
                "Cross-group transfers this gateway is carrying now (callers' and its resolver's)",
                sagas_in_flight.clone(),
            );
            registry.register(
                "saga_copies_stale",
                "Saga copies open past the resolver's bound in each group at its last round (capped at one round's worth): sagas whose gateway died or whose groups were unreachable",
                saga_copies_stale.clone(),
            );
        }
        Arc::new(Metrics {
            registry,
            requests,
            errors,
            auth_refusals,
            flow_refusals,
            breaker_state,
            breaker_refusals,
            config_revision,
            config_key_version,
            config_key_gray,
            latency,
            queue_depth,
            batch_events,
            batches,
            saga_copies_open,
            service_registry,
            journal_sync_seconds,
            journal_records,
            sagas,
            sagas_answered_pending,
            sagas_in_flight,
            saga_copies_stale,
            client_observed,
            client_observed_latency,
            client_reports_malformed,
            raft,
            traffic: traffic::Traffic::default(),
            cdc,
            projection,
            log_lines_dropped: Mutex::new(log_lines_dropped),
        })
    }

    /// Counts one client call refused by authentication or its key's role; `reason` is a fixed
    /// label (`missing`, `malformed`, `unknown_key`, `forbidden`), never text from the request.
    pub fn auth_refused(&self, protocol: &'static str, reason: &'static str) {
        self.auth_refusals
            .get_or_create(&RefusalLabels { protocol, reason })
            .inc();
    }

    /// Counts one client call refused by flow control; both labels come from closed sets
    /// (`flow::Api`, `flow::Reason`).
    pub fn flow_refused(&self, api: &'static str, reason: &'static str) {
        self.flow_refusals
            .get_or_create(&FlowLabels { api, reason })
            .inc();
    }

    /// Sets the state gauge of the circuit breaker on `group` (0 closed, 1 open, 2 half-open).
    pub fn breaker_state(&self, group: &str, state: i64) {
        self.breaker_state
            .get_or_create(&GroupLabels {
                group: group.to_owned(),
            })
            .set(state);
    }

    /// Counts a call refused by the open breaker on `group`.
    pub fn breaker_refused(&self, group: &str) {
        self.breaker_refusals
            .get_or_create(&GroupLabels {
                group: group.to_owned(),
            })
            .inc();
    }

    /// Says which config revision this process has taken, and which version of `key` it
    /// applies (0: not set there) and whether from a gray release.
    pub fn config_taken(&self, revision: u64, key: &str, version: u64, gray: bool) {
        self.config_revision.set(revision as i64);
        let labels = ConfigKeyLabels {
            key: key.to_owned(),
        };
        self.config_key_version
            .get_or_create(&labels)
            .set(version as i64);
        self.config_key_gray
            .get_or_create(&labels)
            .set(i64::from(gray));
    }

    /// Counts one request and its latency; `error` is the kind of error it was answered with.
    pub fn request(
        &self,
        protocol: &'static str,
        operation: &'static str,
        elapsed: Duration,
        error: Option<ErrorKind>,
    ) {
        let labels = OperationLabels {
            operation,
            protocol,
        };
        self.traffic.request(elapsed, error.is_some());
        self.requests.get_or_create(&labels).inc();
        self.latency
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
        if let Some(kind) = error {
            self.errors
                .get_or_create(&ErrorLabels {
                    operation,
                    protocol,
                    kind: kind.label(),
                })
                .inc();
        }
    }

    pub fn queue_depth(&self, queue: &'static str, depth: usize) {
        self.queue_depth
            .get_or_create(&QueueLabels { queue })
            .set(depth as i64);
    }

    pub fn batch(&self, events: usize) {
        self.batches.inc();
        self.batch_events.observe(events as f64);
    }

    /// Counts the events of a batch that committed (and applied), for the console's rates.
    pub fn events_committed(&self, events: usize) {
        self.traffic.events(events);
    }

    /// The service registry's figures as of now (gauges set, counters moved to the totals).
    pub fn registry_sample(&self, sample: &RegistrySample) {
        self.service_registry.sample(sample);
    }

    pub fn saga_copies_open(&self, count: usize) {
        self.saga_copies_open.set(count as i64);
    }

    pub fn journal_sync(&self, elapsed: Duration, records: u64) {
        self.journal_sync_seconds.observe(elapsed.as_secs_f64());
        self.journal_records.inc_by(records);
    }

    /// Counts one saga that ended; `outcome` is a fixed label (`confirmed`, `cancelled`,
    /// `diverged`).
    pub fn saga(&self, outcome: &'static str) {
        self.sagas.get_or_create(&SagaLabels { outcome }).inc();
    }

    /// Counts one call as a client saw it (reported on a later call): `operation` and
    /// `outcome` are fixed labels (`api::client_report`), never text from the request.
    pub fn client_observed(
        &self,
        operation: &'static str,
        outcome: &'static str,
        elapsed: Duration,
    ) {
        let labels = ClientObservedLabels { operation, outcome };
        self.client_observed.get_or_create(&labels).inc();
        self.client_observed_latency
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// Counts `count` client reports that were not well formed.
    pub fn client_reports_malformed(&self, count: usize) {
        self.client_reports_malformed.inc_by(count as u64);
    }

    /// `count` more (or, negative, fewer) cross-group transfers being carried now.
    pub fn sagas_in_flight_add(&self, count: i64) {
        self.sagas_in_flight.inc_by(count);
    }

    /// The copies open past the resolver's bound that `group` holds, as its last round found
    /// (`None`: the group did not answer, so its count is unknown and its series goes).
    pub fn saga_copies_stale(&self, group: String, copies: Option<usize>) {
        let labels = GroupLabels { group };
        match copies {
            Some(copies) => {
                self.saga_copies_stale
                    .get_or_create(&labels)
                    .set(i64::try_from(copies).unwrap_or(i64::MAX));
            }
            None => {
                self.saga_copies_stale.remove(&labels);
            }
        }
    }

    /// Counts `count` cross-group transfers answered `outcome_pending`.
    pub fn sagas_answered_pending(&self, count: usize) {
        self.sagas_answered_pending.inc_by(count as u64);
    }

    /// Records a replica's Raft state: its gauges, and a leader change when the sample names
    /// a leader (or a term) other than the previous sample's; answers whether it did (the
    /// caller logs the new leader).
    pub fn raft(&self, sample: &RaftSample) -> bool {
        self.raft.record(sample)
    }

    /// `group`'s publisher series (`fincore_cdc_*`), looked up once.
    pub fn cdc_group(&self, group: &str) -> FollowGroup {
        self.cdc.group(group)
    }

    /// `group`'s projector series (`fincore_projection_*`), looked up once.
    pub fn projection_group(&self, group: &str) -> FollowGroup {
        self.projection.group(group)
    }

    /// Cross-group transfers this gateway carries now (the `sagas_in_flight` gauge).
    pub fn sagas_in_flight(&self) -> i64 {
        self.sagas_in_flight.get()
    }

    /// The running totals the live console reads twice to show rates and p99.
    pub fn traffic(&self) -> TrafficTotals {
        self.traffic.totals()
    }

    /// The OpenMetrics text of every metric.
    pub fn render(&self) -> String {
        {
            let counter = self
                .log_lines_dropped
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            counter.inc_by(log_lines_dropped().saturating_sub(counter.get()));
        }
        // A Raft sample rebuilds the follower series: never render half of one.
        let _raft = self.raft.lock_seen();
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// Every metric in the format `exposition` names.
    pub fn render_as(&self, exposition: Exposition) -> String {
        match exposition {
            Exposition::OpenMetrics => self.render(),
            Exposition::PrometheusText => to_prometheus_text(&self.render()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_metrics_carry_rate_latency_and_errors_per_operation() {
        let metrics = Metrics::new();
        metrics.request("grpc", "create_transfers", Duration::from_millis(3), None);
        metrics.request(
            "grpc",
            "create_transfers",
            Duration::from_millis(5),
            Some(ErrorKind::Busy),
        );
        metrics.queue_depth("pipeline", 7);
        metrics.batch(8189);
        metrics.journal_sync(Duration::from_micros(700), 2);
        let text = metrics.render();
        for expected in [
            r#"fincore_requests_total{operation="create_transfers",protocol="grpc"} 2"#,
            r#"fincore_request_errors_total{operation="create_transfers",protocol="grpc",kind="busy"} 1"#,
            r#"fincore_request_duration_seconds_count{operation="create_transfers",protocol="grpc"} 2"#,
            r#"fincore_queue_depth{queue="pipeline"} 7"#,
            "fincore_batch_events_count 1",
            "fincore_journal_sync_seconds_count 1",
            "fincore_journal_records_total 2",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
    }

    #[test]
    fn each_service_exports_only_the_families_it_records() {
        // A family is rendered once it has a sample: record one into every family.
        let families = |service| {
            let metrics = Metrics::for_service(service);
            metrics.request("grpc", "get_map", Duration::ZERO, Some(ErrorKind::Busy));
            metrics.auth_refused("grpc", "missing");
            metrics.client_observed("read_events", "timeout", Duration::from_secs(5));
            metrics.queue_depth("pipeline", 1);
            metrics.batch(3);
            metrics.journal_sync(Duration::from_micros(10), 1);
            metrics.saga("confirmed");
            metrics.sagas_answered_pending(1);
            metrics.sagas_in_flight_add(1);
            metrics.saga_copies_stale("g1".into(), Some(2));
            metrics.breaker_state("g1", 1);
            metrics.breaker_refused("g1");
            metrics.config_taken(1, "flow.rules", 1, false);
            metrics.raft(&leader_sample());
            metrics.cdc_group("g1").done(5, 5, Duration::from_millis(1));
            metrics.registry_sample(&RegistrySample {
                pushes: 3,
                ..RegistrySample::default()
            });
            metrics
                .projection_group("g1")
                .done(5, 5, Duration::from_millis(1));
            let text = metrics.render();
            let mut names: Vec<String> = text
                .lines()
                .filter_map(|line| line.strip_prefix("# HELP fincore_"))
                .map(|rest| rest.split(' ').next().unwrap().to_string())
                .collect();
            names.sort();
            names
        };
        let common = [
            "auth_refusals",
            "client_observed_duration_seconds",
            "client_observed_requests",
            "client_reports_malformed",
            "log_lines_dropped",
            "request_duration_seconds",
            "request_errors",
            "requests",
        ];
        let with = |extra: &[&str]| {
            let mut names: Vec<String> =
                common.iter().chain(extra).map(|s| s.to_string()).collect();
            names.sort();
            names
        };
        let batches = ["batch_events", "batches", "queue_depth", "saga_copies_open"];
        let journal = ["journal_records", "journal_sync_seconds"];
        let sagas = [
            "saga_copies_stale",
            "sagas",
            "sagas_answered_pending",
            "sagas_in_flight",
        ];
        let raft = [
            "raft_applied_index",
            "raft_commit_index",
            "raft_last_log_index",
            "raft_leader_changes",
            "raft_purged_index",
            "raft_replication_lag_entries",
            "raft_replication_lag_seconds",
            "raft_role",
            "raft_snapshot_index",
            "raft_snapshots_installed",
            "raft_snapshots_sent",
            "raft_term",
        ];
        let config = ["config_key_gray", "config_key_version", "config_revision"];
        assert_eq!(
            families(Service::LedgerNode),
            with(&[&batches[..], &journal[..], &raft[..], &config[..]].concat())
        );
        assert_eq!(
            families(Service::MetaReplica),
            with(&[&journal[..], &raft[..]].concat())
        );
        let control = [
            "breaker_refusals",
            "breaker_state",
            "config_key_gray",
            "config_key_version",
            "config_revision",
        ];
        assert_eq!(
            families(Service::Gateway),
            with(&[&sagas[..], &control[..]].concat())
        );
        let follow = |prefix: &str| {
            [
                "events",
                "lag_events",
                "seq",
                "source_seq",
                "write_duration_seconds",
            ]
            .map(|name| format!("{prefix}_{name}"))
        };
        let (cdc, projection) = (follow("cdc"), follow("projection"));
        let only = |names: &[String]| {
            let mut names: Vec<String> = names
                .iter()
                .cloned()
                .chain(["log_lines_dropped".to_string()])
                .collect();
            names.sort();
            names
        };
        assert_eq!(families(Service::Publisher), only(&cdc));
        assert_eq!(families(Service::Projector), only(&projection));
        let registry: Vec<String> = [
            "compressions",
            "keys",
            "publishers",
            "push_bytes",
            "push_retries",
            "pushes",
            "reconciled",
            "streams",
            "values_pushed",
            "xds_nacks",
            "xds_responses",
            "xds_unroutable",
        ]
        .map(|name| format!("registry_{name}"))
        .to_vec();
        assert_eq!(families(Service::Registry), only(&registry));
        let every: Vec<&str> = [
            &batches[..],
            &journal[..],
            &sagas[..],
            &control[..],
            &raft[..],
        ]
        .concat()
        .into_iter()
        .chain(cdc.iter().map(String::as_str))
        .chain(projection.iter().map(String::as_str))
        .chain(registry.iter().map(String::as_str))
        .collect();
        assert_eq!(families(Service::All), with(&every));
    }

    #[test]
    fn a_followers_lag_is_the_sources_head_less_what_it_did_once_both_are_known() {
        let metrics = Metrics::for_service(Service::Projector);
        let value = |series: &str| {
            let text = metrics.render();
            text.lines()
                .find_map(|line| line.strip_prefix(series)?.trim().parse::<f64>().ok())
        };
        let lag = r#"fincore_projection_lag_events{group="g1"}"#;
        let group = metrics.projection_group("g1");
        // The head alone: where the projector stands is not known yet, so no lag is claimed.
        group.source(120);
        assert_eq!(value(lag), Some(0.0));
        // Resumed at 100 (done before this process): 20 behind, none counted as its own.
        metrics.projection_group("g1").at(100);
        assert_eq!(value(lag), Some(20.0));
        assert_eq!(
            value(r#"fincore_projection_events_total{group="g1"}"#),
            Some(0.0)
        );
        group.done(110, 10, Duration::from_millis(3));
        assert_eq!(value(lag), Some(10.0));
        assert_eq!(
            value(r#"fincore_projection_events_total{group="g1"}"#),
            Some(10.0)
        );
        // Done past the head last read (read before those events existed): caught up.
        group.done(130, 20, Duration::from_millis(3));
        assert_eq!(value(lag), Some(0.0));
        assert_eq!(value(r#"fincore_projection_seq{group="g1"}"#), Some(130.0));
    }

    #[test]
    fn the_error_counter_help_lists_every_error_kind() {
        let metrics = Metrics::new();
        // A family is rendered (with its help) once it has a sample.
        metrics.request("http", "status", Duration::ZERO, Some(ErrorKind::Invalid));
        let text = metrics.render();
        let help = text
            .lines()
            .find(|line| line.starts_with("# HELP fincore_request_errors"))
            .unwrap_or_else(|| panic!("the error counter is not described in\n{text}"));
        for kind in ErrorKind::ALL {
            assert!(help.contains(kind.label()), "{help} lacks {kind:?}");
        }
    }

    fn leader_sample() -> RaftSample {
        RaftSample {
            term: 3,
            role: "leader",
            leader: Some(1),
            last_log_index: 120,
            committed_index: 118,
            applied_index: 117,
            snapshot_index: 100,
            purged_index: 90,
            followers: vec![
                FollowerSample {
                    id: 2,
                    lag_entries: 2,
                    since_ack: Some(Duration::from_millis(40)),
                },
                FollowerSample {
                    id: 3,
                    lag_entries: 120,
                    since_ack: None,
                },
            ],
            snapshots_sent: 2,
            snapshots_installed: 0,
        }
    }

    #[test]
    fn raft_samples_set_gauges_count_leader_changes_and_drop_followers_no_longer_led() {
        let metrics = Metrics::for_service(Service::LedgerNode);
        assert!(
            metrics.raft(&leader_sample()),
            "the first leader seen is new"
        );
        // The same leader and term again is no change; the snapshot count is a total.
        assert!(!metrics.raft(&leader_sample()));
        let text = metrics.render();
        for expected in [
            "fincore_raft_term 3",
            r#"fincore_raft_role{role="leader"} 1"#,
            r#"fincore_raft_role{role="follower"} 0"#,
            "fincore_raft_leader_changes_total 1",
            "fincore_raft_last_log_index 120",
            "fincore_raft_commit_index 118",
            "fincore_raft_applied_index 117",
            "fincore_raft_snapshot_index 100",
            "fincore_raft_purged_index 90",
            r#"fincore_raft_replication_lag_entries{follower="2"} 2"#,
            r#"fincore_raft_replication_lag_entries{follower="3"} 120"#,
            r#"fincore_raft_replication_lag_seconds{follower="2"} 0.04"#,
            "fincore_raft_snapshots_sent_total 2",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
        // Follower 3 never acknowledged: no age is made up for it.
        assert!(!text.contains(r#"lag_seconds{follower="3"}"#), "{text}");

        // Deposed in a new term: follower series go, the new leader is one more change.
        assert!(metrics.raft(&RaftSample {
            term: 4,
            role: "follower",
            leader: Some(2),
            followers: Vec::new(),
            snapshots_sent: 3,
            ..leader_sample()
        }));
        let text = metrics.render();
        for expected in [
            r#"fincore_raft_role{role="leader"} 0"#,
            r#"fincore_raft_role{role="follower"} 1"#,
            "fincore_raft_leader_changes_total 2",
            "fincore_raft_snapshots_sent_total 3",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
        assert!(!text.contains("lag_entries{"), "{text}");
        // No leader known (an election) is not a change.
        assert!(!metrics.raft(&RaftSample {
            term: 5,
            role: "candidate",
            leader: None,
            ..RaftSample::default()
        }));
        assert!(
            metrics
                .render()
                .contains("fincore_raft_leader_changes_total 2")
        );
    }

    #[test]
    fn prometheus_text_names_counters_by_their_total_sample_and_drops_what_it_lacks() {
        let metrics = Metrics::for_service(Service::LedgerNode);
        metrics.request("grpc", "create_transfers", Duration::from_millis(3), None);
        metrics.journal_sync(Duration::from_micros(700), 2);
        let text = metrics.render_as(Exposition::PrometheusText);
        for expected in [
            "# HELP fincore_requests_total Requests received",
            "# TYPE fincore_requests_total counter",
            r#"fincore_requests_total{operation="create_transfers",protocol="grpc"} 1"#,
            "# TYPE fincore_journal_sync_seconds histogram",
            "fincore_journal_sync_seconds_count 1",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
        assert!(!text.contains("# UNIT"), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
        assert!(text.ends_with('\n'));
        assert_eq!(
            metrics.render_as(Exposition::OpenMetrics),
            metrics.render(),
            "OpenMetrics is rendered as is"
        );
    }

    #[test]
    fn the_format_follows_the_accept_header() {
        let prometheus_scrape = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(
            Exposition::negotiate(Some(prometheus_scrape)),
            Exposition::OpenMetrics
        );
        for accept in [None, Some("*/*"), Some("text/plain")] {
            assert_eq!(Exposition::negotiate(accept), Exposition::PrometheusText);
        }
    }
}
