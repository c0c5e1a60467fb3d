//! A meta replica's HTTP listener: what operators and probes ask of any process, and nothing
//! else — `GET /healthz` (200 while its Raft runs; 503 naming the failure once a fatal error,
//! such as a failed fsync, stopped it) and `GET /metrics` (Prometheus or OpenMetrics text: the
//! meta API's calls, refusals, the journal's syncs and the replica's Raft state). Open to every caller, as on a ledger node: they
//! show no data of the map.
//!
//! Owns the two routes. Must not serve the map (that is `fincore.v1.Meta` over gRPC, behind
//! the keys) nor anything of a ledger node's API.

use std::sync::Arc;

use api::json::{HealthJson, HealthStatusJson};
use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use meta::MetaGroup;
use telemetry::Metrics;

#[derive(Clone)]
struct MetaHttp {
    group: Arc<MetaGroup>,
    metrics: Arc<Metrics>,
}

/// The routes of a meta replica's HTTP listener; every other path answers 404.
pub fn router(group: Arc<MetaGroup>, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .with_state(MetaHttp { group, metrics })
}

async fn healthz(State(meta): State<MetaHttp>) -> Response {
    if meta.group.replica().is_running() {
        let body = HealthJson {
            error: None,
            status: HealthStatusJson::Ok,
        };
        return Json(body).into_response();
    }
    let body = HealthJson {
        error: Some("Raft stopped running on this meta replica (see its log); restart it".into()),
        status: HealthStatusJson::Failed,
    };
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

async fn metrics_text(State(meta): State<MetaHttp>, headers: HeaderMap) -> Response {
    crate::http::metrics_response(&meta.metrics, &headers)
}
