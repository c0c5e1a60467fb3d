//! Telemetry: the metrics a node exports and the process's log setup.
//!
//! Owns metric names, labels and buckets (one [`Metrics`] per node, no global registry, so
//! several nodes can live in one test process; each [`Service`] exports only the families it
//! records) and their text exposition for `GET /metrics`.
//! Per operation it exports a request counter, an error counter by kind and a latency
//! histogram, from which qps, p99 and error rate follow; plus queue depths, batch sizes and
//! journal sync latency. Error labels come from [`ErrorKind`], a closed set, never from
//! error text. Must not know about the ledger's types.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The content type of [`Metrics::render`]'s output.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

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
struct SagaLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    protocol: &'static str,
    reason: &'static str,
}

/// All metrics of one node.
pub struct Metrics {
    registry: Registry,
    requests: Family<OperationLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    auth_refusals: Family<RefusalLabels, Counter>,
    latency: Family<OperationLabels, Histogram, fn() -> Histogram>,
    queue_depth: Family<QueueLabels, Gauge>,
    batch_events: Histogram,
    batches: Counter,
    journal_sync_seconds: Histogram,
    journal_records: Counter,
    sagas: Family<SagaLabels, Counter>,
    sagas_answered_pending: Counter,
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
    /// Every family (tests, and processes that are several of the above).
    All,
}

impl Service {
    fn records_batches(self) -> bool {
        matches!(self, Service::LedgerNode | Service::All)
    }

    fn records_journal(self) -> bool {
        matches!(
            self,
            Service::LedgerNode | Service::MetaReplica | Service::All
        )
    }

    fn records_sagas(self) -> bool {
        matches!(self, Service::Gateway | Service::All)
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
        let latency = Family::<OperationLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let queue_depth = Family::<QueueLabels, Gauge>::default();
        let batch_events = Histogram::new(exponential_buckets(1.0, 2.0, 14));
        let batches = Counter::default();
        let journal_sync_seconds = latency_histogram();
        let journal_records = Counter::default();
        let sagas = Family::<SagaLabels, Counter>::default();
        let sagas_answered_pending = Counter::default();
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
            "request_duration_seconds",
            "Time from receiving a request to answering it",
            latency.clone(),
        );
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
        if service.records_sagas() {
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
        }
        Arc::new(Metrics {
            registry,
            requests,
            errors,
            auth_refusals,
            latency,
            queue_depth,
            batch_events,
            batches,
            journal_sync_seconds,
            journal_records,
            sagas,
            sagas_answered_pending,
        })
    }

    /// Counts one client call refused by authentication or its key's role; `reason` is a fixed
    /// label (`missing`, `malformed`, `unknown_key`, `forbidden`), never text from the request.
    pub fn auth_refused(&self, protocol: &'static str, reason: &'static str) {
        self.auth_refusals
            .get_or_create(&RefusalLabels { protocol, reason })
            .inc();
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

    pub fn journal_sync(&self, elapsed: Duration, records: u64) {
        self.journal_sync_seconds.observe(elapsed.as_secs_f64());
        self.journal_records.inc_by(records);
    }

    /// Counts one saga that ended; `outcome` is a fixed label (`confirmed`, `cancelled`,
    /// `diverged`).
    pub fn saga(&self, outcome: &'static str) {
        self.sagas.get_or_create(&SagaLabels { outcome }).inc();
    }

    /// Counts `count` cross-group transfers answered `outcome_pending`.
    pub fn sagas_answered_pending(&self, count: usize) {
        self.sagas_answered_pending.inc_by(count as u64);
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Sets up logging to stderr, filtered by `RUST_LOG` (default `info`). Safe to call twice.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
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
            metrics.queue_depth("pipeline", 1);
            metrics.batch(3);
            metrics.journal_sync(Duration::from_micros(10), 1);
            metrics.saga("confirmed");
            metrics.sagas_answered_pending(1);
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
        let batches = ["batch_events", "batches", "queue_depth"];
        let journal = ["journal_records", "journal_sync_seconds"];
        let sagas = ["sagas", "sagas_answered_pending"];
        assert_eq!(
            families(Service::LedgerNode),
            with(&[&batches[..], &journal[..]].concat())
        );
        assert_eq!(families(Service::MetaReplica), with(&journal));
        assert_eq!(families(Service::Gateway), with(&sagas));
        assert_eq!(
            families(Service::All),
            with(&[&batches[..], &journal[..], &sagas[..]].concat())
        );
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
}
