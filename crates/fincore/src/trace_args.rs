//! The trace export flags `serve`, `gateway` and `dev` share (`telemetry::trace`).
//!
//! Owns the flags and what they mean for the export; must not set anything up itself.

use telemetry::trace::TraceOptions;

#[derive(Debug, Clone, clap::Args)]
pub struct TraceArgs {
    /// Export traces over OTLP/gRPC to this collector (`http://HOST:4317`): a span per request,
    /// and on a ledger node per stage (queue, replicate, apply, reply), following a caller's W3C
    /// `traceparent`. Default: no export (log lines still name a caller's trace id).
    #[arg(long, value_name = "URL")]
    pub otlp: Option<String>,
    /// The share of requests without a caller's `traceparent` that start a sampled trace (0 to
    /// 1); a caller's sampled or unsampled `traceparent` is followed whatever this says.
    #[arg(long, value_name = "RATIO", default_value_t = 0.01, requires = "otlp")]
    pub trace_sampling: f64,
}

impl TraceArgs {
    /// What `telemetry::init_logging` exports, under `service`.
    pub fn options(&self, service: &'static str) -> TraceOptions {
        TraceOptions {
            otlp: self.otlp.clone(),
            sampling: self.trace_sampling,
            service,
        }
    }

    /// The same flags for a child `fincore serve` (none without export).
    pub fn child_args(&self) -> Vec<String> {
        match &self.otlp {
            Some(url) => vec![
                "--otlp".into(),
                url.clone(),
                "--trace-sampling".into(),
                self.trace_sampling.to_string(),
            ],
            None => Vec::new(),
        }
    }
}
