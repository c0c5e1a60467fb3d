//! Traces: `tracing` spans exported through OpenTelemetry over OTLP/gRPC, and the W3C trace
//! context read from a caller.
//!
//! The spans are ordinary `tracing` spans with the target [`TARGET`]: the log layer sees them
//! (so a log line inside a request names its `trace_id`) and, when `--otlp` is given, an
//! OpenTelemetry layer exports them ([`Export`]), sampled parent-based: a caller's sampled
//! `traceparent` is always followed, an unsampled one never, and a request without one starts
//! a trace with the configured ratio. Export runs on a thread and a one-worker runtime of its
//! own, through the SDK's bounded batch queue (full: spans dropped), so a slow or absent
//! collector never stalls a request.
//!
//! Owns the span names, the propagation format and the export setup. Must not know about the
//! ledger, Raft or the transport: callers hand it header lookups and instants.

use std::time::{Duration, Instant, SystemTime};

use opentelemetry::KeyValue;
use opentelemetry::trace::{Span as _, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider,
};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The target of every span fincore makes for a trace; the export layer takes only these.
pub const TARGET: &str = "fincore::trace";

/// The W3C trace context headers (<https://www.w3.org/TR/trace-context/>).
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// The longest `tracestate` followed (the W3C's advice for what a vendor propagates); a longer
/// one is dropped, the `traceparent` still followed, so a caller cannot make every exported
/// span carry kilobytes.
const TRACESTATE_BYTES_MAX: usize = 512;

/// Whether `traceparent` has version 00's exact shape: `00-` 32 lower-case hex digits `-` 16
/// `-` 2 (55 bytes). The propagator alone accepts ids of other lengths.
fn well_formed(traceparent: &str) -> bool {
    let bytes = traceparent.as_bytes();
    let hex = |range: std::ops::Range<usize>| {
        bytes[range]
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    };
    bytes.len() == 55
        && bytes.starts_with(b"00-")
        && bytes[35] == b'-'
        && bytes[52] == b'-'
        && hex(3..35)
        && hex(36..52)
        && hex(53..55)
}

/// How often the finished spans queued (at most the SDK's 2,048; more are dropped) are sent.
const EXPORT_INTERVAL: Duration = Duration::from_secs(1);

/// How long one export call to the collector may take before it is abandoned.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether and where a process exports its spans.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceOptions {
    /// The OTLP/gRPC collector (`http://host:4317`); `None`: spans are not exported.
    pub otlp: Option<String>,
    /// The share of requests without a caller's trace context that start a sampled trace,
    /// 0.0 to 1.0.
    pub sampling: f64,
    /// The `service.name` the spans are exported under (`fincore-node`, `fincore-gateway`).
    pub service: &'static str,
}

impl TraceOptions {
    /// No export (the log layer still names a caller's trace id).
    pub fn off(service: &'static str) -> TraceOptions {
        TraceOptions {
            otlp: None,
            sampling: 0.0,
            service,
        }
    }
}

/// Why the export could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TraceSetupError {
    #[error("--trace-sampling {0}: must be between 0 and 1")]
    Sampling(f64),
    #[error("--otlp {url}: {reason}")]
    Exporter { url: String, reason: String },
    #[error("starting the span export thread: {0}")]
    Runtime(std::io::Error),
}

/// The tracer spans are exported with, once [`Export::start`] ran (stage spans use it).
static TRACER: std::sync::OnceLock<SdkTracer> = std::sync::OnceLock::new();

/// The running export: flushes what is queued when shut down.
pub struct Export {
    provider: SdkTracerProvider,
    /// Drives the exporter's gRPC connection; dropped after the provider's last flush.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Export {
    /// Starts exporting to `options.otlp` (nothing to start without it); the tracer is what the
    /// OpenTelemetry layer is built with.
    pub fn start(options: &TraceOptions) -> Result<Option<(Export, SdkTracer)>, TraceSetupError> {
        if !(0.0..=1.0).contains(&options.sampling) {
            return Err(TraceSetupError::Sampling(options.sampling));
        }
        let Some(url) = &options.otlp else {
            return Ok(None);
        };
        if !url.starts_with("http://") {
            return Err(TraceSetupError::Exporter {
                url: url.clone(),
                reason: "only a plaintext http:// collector is supported (run one on loopback or as a sidecar)".into(),
            });
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fincore-otlp")
            .enable_all()
            .build()
            .map_err(TraceSetupError::Runtime)?;
        let exporter = {
            let _inside = runtime.enter();
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(url.clone())
                .with_timeout(EXPORT_TIMEOUT)
                .build()
                .map_err(|error| TraceSetupError::Exporter {
                    url: url.clone(),
                    reason: error.to_string(),
                })?
        };
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(options.service)
            .with_attribute(KeyValue::new("process.pid", i64::from(std::process::id())))
            .build();
        let batches = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_scheduled_delay(EXPORT_INTERVAL)
                    .build(),
            )
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(batches)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                options.sampling,
            ))))
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("fincore");
        Ok(Some((
            Export {
                provider,
                runtime: Some(runtime),
            },
            tracer,
        )))
    }
}

impl Export {
    /// Makes `tracer` the one stage spans are made with: called once the subscriber exporting
    /// with it is installed.
    pub(crate) fn installed(tracer: SdkTracer) {
        let _ = TRACER.set(tracer);
    }
}

impl Drop for Export {
    fn drop(&mut self) {
        if let Err(error) = self.provider.shutdown() {
            eprintln!("fincore: the last spans were not exported: {error}");
        }
        // The provider's shutdown already waited for the last export.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_millis(100));
        }
    }
}

/// A caller's W3C trace context headers.
struct Headers<'a> {
    traceparent: &'a str,
    tracestate: Option<&'a str>,
}

impl opentelemetry::propagation::Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT => Some(self.traceparent),
            TRACESTATE => self.tracestate,
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT, TRACESTATE]
    }
}

/// The span of one request a server received: named `name` (`fincore.v1.Ledger/CreateTransfers`,
/// `POST /v1/transfers`), for the replica group `group` when the server is one, a child of
/// the caller's span when `header` yields a valid `traceparent`, with the trace id as a field
/// so that every log line inside names it. The caller instruments the request's future with it.
pub fn server_span<'a>(
    protocol: &'static str,
    name: &str,
    group: Option<&str>,
    header: impl Fn(&str) -> Option<&'a str>,
) -> tracing::Span {
    let span = tracing::info_span!(
        target: TARGET,
        "request",
        otel.name = name,
        otel.kind = "server",
        rpc.system = protocol,
        group = group,
        trace_id = tracing::field::Empty,
    );
    let parent = header(TRACEPARENT)
        .filter(|t| well_formed(t))
        .map(|traceparent| {
            let headers = Headers {
                traceparent,
                tracestate: header(TRACESTATE).filter(|state| state.len() <= TRACESTATE_BYTES_MAX),
            };
            opentelemetry::propagation::TextMapPropagator::extract(
                &TraceContextPropagator::new(),
                &headers,
            )
        });
    let remote = parent
        .as_ref()
        .map(|cx| cx.span().span_context().clone())
        .filter(|context| context.is_valid());
    if let (Some(parent), Some(_)) = (parent, &remote) {
        // Fails only when the span is disabled or already started: nothing to follow then.
        let _ = span.set_parent(parent);
    }
    // The caller's trace id even when unsampled (the caller's own logs name it); a trace this
    // server starts only when it is exported (an id no collector will ever hold helps no one).
    let trace_id = match &remote {
        Some(remote) => Some(remote.trace_id()),
        None => TRACER
            .get()
            .map(|_| span.context().span().span_context().clone())
            .filter(|context| context.is_sampled())
            .map(|context| context.trace_id()),
    };
    if let Some(trace_id) = trace_id {
        span.record("trace_id", tracing::field::display(trace_id));
    }
    span
}

/// The span of a call to replica group `group` made for several callers at once (a gateway's
/// call carrying many callers' parts, `callers` not empty): a child of the first caller whose
/// trace is sampled (else of the first caller), so that a sampled trace goes on into the
/// group whoever's part came first; linked to the other callers' spans.
pub fn call_span(
    name: &'static str,
    group: &str,
    events: usize,
    callers: &[&tracing::Span],
) -> tracing::Span {
    let sampled = |span: &&&tracing::Span| span.context().span().span_context().is_sampled();
    let parent = match TRACER.get() {
        Some(_) => callers.iter().find(sampled).or(callers.first()),
        None => callers.first(),
    };
    let Some(&parent) = parent else {
        return tracing::Span::none();
    };
    let span = tracing::info_span!(
        target: TARGET,
        parent: parent,
        "call",
        otel.name = name,
        otel.kind = "client",
        group = group,
        events = events as u64,
        callers = callers.len() as u64,
    );
    for &other in callers {
        if !std::ptr::eq(other, parent) {
            span.follows_from(other);
        }
    }
    span
}

/// One stage of a request's way through a server, timed by the server.
#[derive(Debug, Clone, Copy)]
pub struct Stage {
    pub name: &'static str,
    pub start: Instant,
    pub end: Instant,
}

/// Exports `stages` as children of the current span, each with `attributes`, when that span is
/// sampled (otherwise, and without export, this costs one context lookup). The stages were
/// timed elsewhere (a batch serving many requests): each sampled request gets its own copy.
pub fn record_stages(stages: &[Stage], attributes: &[(&'static str, i64)]) {
    let Some(tracer) = TRACER.get() else {
        return;
    };
    let parent = tracing::Span::current().context();
    if !parent.span().span_context().is_sampled() {
        return;
    }
    let (now, wall) = (Instant::now(), SystemTime::now());
    let at = |instant: Instant| wall - now.saturating_duration_since(instant);
    let attributes: Vec<KeyValue> = attributes
        .iter()
        .map(|&(key, value)| KeyValue::new(key, value))
        .collect();
    for stage in stages {
        let mut span = tracer
            .span_builder(stage.name)
            .with_start_time(at(stage.start))
            .with_attributes(attributes.clone())
            .start_with_context(tracer, &parent);
        span.end_with_timestamp(at(stage.end));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Log lines written to memory.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What one event logged inside a request span made from `headers` looks like.
    fn logged_inside(headers: &[(&str, &str)]) -> String {
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let header = |name: &str| {
                headers
                    .iter()
                    .find(|(key, _)| *key == name)
                    .map(|(_, value)| *value)
            };
            let span = server_span(
                "grpc",
                "fincore.v1.Ledger/CreateTransfers",
                Some("g1"),
                header,
            );
            span.in_scope(|| tracing::info!("inside the request"));
        });
        String::from_utf8(lines.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn a_log_line_inside_a_request_names_the_callers_trace_id() {
        let line = logged_inside(&[(
            TRACEPARENT,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )]);
        assert!(
            line.contains("trace_id=4bf92f3577b34da6a3ce929d0e0e4736"),
            "{line}"
        );
        assert!(
            line.contains("group=\"g1\"") || line.contains("group=g1"),
            "{line}"
        );
        assert!(line.contains("inside the request"), "{line}");
    }

    #[test]
    fn a_malformed_or_absent_traceparent_is_ignored() {
        for traceparent in [
            "",
            "zz",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-1-1-01",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            &"0".repeat(10_000),
        ] {
            let line = logged_inside(&[(TRACEPARENT, traceparent)]);
            assert!(!line.contains("trace_id"), "{traceparent:?}: {line}");
            assert!(line.contains("inside the request"), "{line}");
        }
        let line = logged_inside(&[]);
        assert!(!line.contains("trace_id"), "{line}");
    }

    /// Runs `test` with spans made as an export would make them (nothing sent): roots sampled
    /// as `root` decides, a caller's decision followed.
    fn with_spans(root: Sampler, test: impl FnOnce()) {
        use tracing_subscriber::layer::SubscriberExt;
        let provider = SdkTracerProvider::builder()
            .with_sampler(Sampler::ParentBased(Box::new(root)))
            .build();
        let tracer = provider.tracer("test");
        Export::installed(tracer.clone());
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(tracer));
        tracing::subscriber::with_default(subscriber, test);
    }

    #[test]
    fn a_call_for_several_callers_continues_the_first_sampled_trace_and_links_the_others() {
        // Roots unsampled, parents followed: only the callers decide.
        with_spans(Sampler::AlwaysOff, || {
            let caller = |traceparent: &'static str| {
                server_span("http", "POST /v1/transfers", None, move |name| {
                    (name == TRACEPARENT).then_some(traceparent)
                })
            };
            let context = |span: &tracing::Span| span.context().span().span_context().clone();
            let unsampled = caller("00-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-bbbbbbbbbbbbbbbb-00");
            let sampled = caller("00-cccccccccccccccccccccccccccccccc-dddddddddddddddd-01");
            let without = server_span("http", "POST /v1/transfers", None, |_| None);
            assert!(!context(&without).is_sampled(), "a root at ratio 0");
            let call = call_span(
                "gateway.group_call",
                "g1",
                3,
                &[&unsampled, &without, &sampled],
            );
            let call = context(&call);
            assert!(call.is_sampled());
            assert_eq!(
                call.trace_id().to_string(),
                "cccccccccccccccccccccccccccccccc"
            );
            // An unsampled caller is never sampled, even where roots would be (below).
            // Nobody sampled: the first caller's (unsampled) trace.
            let call = call_span("gateway.group_call", "g1", 2, &[&unsampled, &without]);
            let call = context(&call);
            assert!(!call.is_sampled());
            assert_eq!(
                call.trace_id().to_string(),
                "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
            );
        });
    }

    #[test]
    fn a_callers_sampling_decision_is_followed_both_ways() {
        // Every root sampled: an unsampled caller must still not be.
        with_spans(Sampler::AlwaysOn, || {
            let sampled = |traceparent: Option<&'static str>| {
                let span = server_span("grpc", "fincore.v1.Ledger/CreateTransfers", None, |name| {
                    traceparent.filter(|_| name == TRACEPARENT)
                });
                span.context().span().span_context().is_sampled()
            };
            assert!(!sampled(Some(
                "00-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-bbbbbbbbbbbbbbbb-00"
            )));
            assert!(sampled(Some(
                "00-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-bbbbbbbbbbbbbbbb-01"
            )));
            assert!(sampled(None), "a root, at ratio 1");
        });
    }
}
