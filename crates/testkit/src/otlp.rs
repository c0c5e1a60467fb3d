//! A loopback OTLP/gRPC trace receiver: what a collector would be sent, kept in memory.
//!
//! Serves `opentelemetry.proto.collector.trace.v1.TraceService/Export` on 127.0.0.1 and keeps
//! each span it receives in a flat [`ReceivedSpan`] (service, process, ids, name, times,
//! attributes), at most `keep_max` of them (the rest only counted), so a test can check the
//! parent/child structure across processes and `fincore bench` can export to something real.
//! Owns no product logic: it is a collector's stand-in.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};

use crate::KitError;

/// One span as received, flattened.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// The exporting process's `service.name`.
    pub service: String,
    /// Its `process.pid` (0 when it sent none).
    pub pid: i64,
    /// Lower-case hex, as in a `traceparent`.
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    pub start_ns: u64,
    pub end_ns: u64,
    /// The span's attributes, each value as text.
    pub attributes: BTreeMap<String, String>,
    /// The spans it links to (their span ids).
    pub links: Vec<String>,
}

impl ReceivedSpan {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

#[derive(Default)]
struct Received {
    spans: Mutex<Vec<ReceivedSpan>>,
    count: AtomicU64,
    keep_max: usize,
}

/// A running receiver; stops when dropped.
pub struct OtlpReceiver {
    addr: SocketAddr,
    received: Arc<Received>,
    task: tokio::task::JoinHandle<()>,
}

impl OtlpReceiver {
    /// Starts a receiver on a free loopback port (inside a Tokio runtime, which must outlive
    /// it), keeping at most `keep_max` spans.
    pub async fn start(keep_max: usize) -> Result<OtlpReceiver, KitError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(KitError::io("binding the OTLP receiver"))?;
        let addr = listener
            .local_addr()
            .map_err(KitError::io("reading the OTLP receiver's address"))?;
        let received = Arc::new(Received {
            keep_max,
            ..Received::default()
        });
        let service = TraceServiceServer::new(Collector(Arc::clone(&received)));
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
        });
        Ok(OtlpReceiver {
            addr,
            received,
            task,
        })
    }

    /// The URL to give `--otlp`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The spans kept so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.received
            .spans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How many spans arrived, kept or not.
    pub fn count(&self) -> u64 {
        self.received.count.load(Ordering::Relaxed)
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Collector(Arc<Received>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut flat = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let resource = resource_spans
                .resource
                .map(|resource| attributes(&resource.attributes))
                .unwrap_or_default();
            let service = resource.get("service.name").cloned().unwrap_or_default();
            let pid = resource
                .get("process.pid")
                .and_then(|pid| pid.parse().ok())
                .unwrap_or(0);
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    flat.push(ReceivedSpan {
                        service: service.clone(),
                        pid,
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        name: span.name,
                        start_ns: span.start_time_unix_nano,
                        end_ns: span.end_time_unix_nano,
                        attributes: attributes(&span.attributes),
                        links: span.links.iter().map(|link| hex(&link.span_id)).collect(),
                    });
                }
            }
        }
        let received = &self.0;
        received
            .count
            .fetch_add(flat.len() as u64, Ordering::Relaxed);
        let mut spans = received.spans.lock().unwrap_or_else(|e| e.into_inner());
        let room = received.keep_max.saturating_sub(spans.len());
        spans.extend(flat.into_iter().take(room));
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn attributes(pairs: &[KeyValue]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|pair| (pair.key.clone(), text(pair.value.as_ref())))
        .collect()
}

fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|value| value.value.as_ref()) {
        Some(any_value::Value::StringValue(text)) => text.clone(),
        Some(any_value::Value::IntValue(number)) => number.to_string(),
        Some(any_value::Value::BoolValue(flag)) => flag.to_string(),
        Some(any_value::Value::DoubleValue(number)) => number.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}
