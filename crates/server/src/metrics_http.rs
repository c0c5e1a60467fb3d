//! A listener serving only `GET /metrics` (Prometheus or OpenMetrics text) and `GET /healthz`
//! (200 while the process runs) for the processes that serve no client API: the publisher
//! (`fincore cdc --metrics ADDR`) and the projector (`fincore project --metrics ADDR`). Open to
//! every caller, as every process's `/metrics` is: counts, sequence numbers and lags, no data.
//!
//! Owns that listener (bounded connections and header reads, as every listener here). Must not
//! serve anything else.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use telemetry::Metrics;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::node::NodeError;

/// A running metrics listener; stopped when dropped or by [`MetricsListener::stop`].
pub struct MetricsListener {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl MetricsListener {
    /// Binds `addr` (port 0: any free port) and serves `metrics` there.
    pub async fn start(
        addr: SocketAddr,
        metrics: Arc<Metrics>,
    ) -> Result<MetricsListener, NodeError> {
        let listener = crate::front::bind("metrics", addr).await?;
        let addr = crate::front::local_addr(&listener);
        let router = axum::Router::new()
            .route("/metrics", get(metrics_text))
            .route("/healthz", get(|| async { "ok" }))
            .with_state(metrics);
        let (stop, stopped) = watch::channel(false);
        let task = crate::connections::spawn_client_http(listener, router, None, stopped);
        Ok(MetricsListener {
            addr,
            stop,
            task: Some(task),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and lets scrapes in progress finish (bounded by the listener's grace).
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for MetricsListener {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn metrics_text(State(metrics): State<Arc<Metrics>>, headers: HeaderMap) -> Response {
    crate::http::metrics_response(&metrics, &headers)
}
