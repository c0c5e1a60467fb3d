//! The process's log setup: one `tracing` subscriber with the log layer (human or JSON lines
//! on stderr through a bounded queue) and, when traces are exported, the OpenTelemetry layer
//! beside it (`crate::trace`).
//!
//! Owns the filters and the writer. Must not decide what is logged or traced.

use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::trace::{Export, TraceOptions, TraceSetupError};

/// The filter when `RUST_LOG` is not set: fincore's own lines at `info`, openraft's only when
/// they report an error (its `info` lines dump internal state at every election).
pub const LOG_FILTER_DEFAULT: &str = "info,openraft=error";

/// How log lines look: `FINCORE_LOG_FORMAT=json` gives one JSON object per line (timestamp,
/// level, target, fields, the spans'); anything else, human-readable lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

impl LogFormat {
    /// The format `FINCORE_LOG_FORMAT` names (human unless it says `json`).
    pub fn from_env() -> LogFormat {
        match std::env::var("FINCORE_LOG_FORMAT") {
            Ok(format) if format.eq_ignore_ascii_case("json") => LogFormat::Json,
            _ => LogFormat::Human,
        }
    }
}

/// The dropped-lines count of this process's log writer, once [`init_logging`] set it up.
static LOG_DROPS: std::sync::OnceLock<tracing_appender::non_blocking::ErrorCounter> =
    std::sync::OnceLock::new();

/// Log lines dropped so far because the writer's queue was full (0 before [`init_logging`]).
pub fn log_lines_dropped() -> u64 {
    LOG_DROPS
        .get()
        .map_or(0, |drops| drops.dropped_lines() as u64)
}

/// Keeps the log writer and the span export running; dropping it exports the spans and
/// writes out the lines still queued. Hold it until the process ends.
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard {
    // Dropped in this order: the spans' export may log why it failed.
    _export: Option<Export>,
    _writer: Option<tracing_appender::non_blocking::WorkerGuard>,
}

/// Sets up logging to stderr, filtered by `RUST_LOG` (default [`LOG_FILTER_DEFAULT`]), in the
/// [`LogFormat`] `FINCORE_LOG_FORMAT` names, and the export of spans `traces` asks for. Lines
/// go through a queue of `limits::LOG_LINES_QUEUED_MAX` to a writer thread: logging never
/// waits on stderr, and when the queue is full the line is dropped and counted
/// (`fincore_log_lines_dropped_total`). The spans' filter is their own (`RUST_LOG` does not
/// turn traces off). Safe to call twice (the second call changes nothing).
pub fn init_logging(traces: &TraceOptions) -> Result<LogGuard, TraceSetupError> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(LOG_FILTER_DEFAULT))
        // Whatever `RUST_LOG` says, the request spans reach the log layer, so that the lines
        // it lets through name their `trace_id` (a span alone prints nothing).
        .add_directive(
            format!("{}=info", crate::trace::TARGET)
                .parse()
                .expect("a valid directive"),
        );
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(limits::LOG_LINES_QUEUED_MAX)
        .thread_name("fincore-log")
        .finish(std::io::stderr());
    let drops = writer.error_counter();
    let lines = tracing_subscriber::fmt::layer().with_writer(writer);
    let lines = match LogFormat::from_env() {
        LogFormat::Human => lines.with_ansi(ansi).with_filter(filter).boxed(),
        LogFormat::Json => lines.json().with_ansi(false).with_filter(filter).boxed(),
    };
    let (export, spans, tracer) = match Export::start(traces)? {
        Some((export, tracer)) => {
            let spans = tracing_opentelemetry::layer()
                .with_tracer(tracer.clone())
                .with_filter(
                    tracing_subscriber::filter::Targets::new()
                        .with_target(crate::trace::TARGET, tracing::Level::INFO),
                );
            (Some(export), Some(spans), Some(tracer))
        }
        None => (None, None, None),
    };
    let installed = tracing_subscriber::registry()
        .with(lines)
        .with(spans)
        .try_init();
    if installed.is_err() {
        // Logging was set up already: this writer and this export are not used.
        return Ok(LogGuard {
            _export: None,
            _writer: None,
        });
    }
    let _ = LOG_DROPS.set(drops);
    if let Some(tracer) = tracer {
        Export::installed(tracer);
    }
    Ok(LogGuard {
        _export: export,
        _writer: Some(guard),
    })
}
