//! A meta replica's HTTP listener: what operators and probes ask of any process —
//! `GET /healthz` (200 while its Raft runs; 503 naming the failure once a fatal error, such
//! as a failed fsync, stopped it) and `GET /metrics` (Prometheus or OpenMetrics text: the
//! meta API's calls, refusals, the journal's syncs and the replica's Raft state), open to
//! every caller as on a ledger node — and the config center behind the API keys
//! (`docs/config-center.md`): `GET /v1/config[/{key}[/history]]` (role `read`), `PUT
//! /v1/config/{key}` and `POST /v1/config/{key}/{rollback,gray,promote,abandon}` (`admin`).
//!
//! Owns the routes and the JSON bodies; the calls are `MetaService`'s (the same checks and
//! audit as over gRPC). Must not serve the map (that is `fincore.v1.Meta` over gRPC) nor
//! anything of a ledger node's API.

use std::collections::BTreeMap;
use std::sync::Arc;

use api::json::{ErrorJson, HealthJson, HealthStatusJson};
use api::proto::{self, meta_server::Meta};
use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use meta::MetaGroup;
use serde::Deserialize;
use telemetry::Metrics;
use tokio::sync::watch;

use crate::access::Access;
use crate::auth::Caller;
use crate::meta_service::MetaService;

#[derive(Clone)]
struct MetaHttp {
    group: Arc<MetaGroup>,
    metrics: Arc<Metrics>,
    service: Arc<MetaService>,
}

/// The routes of a meta replica's HTTP listener, the config routes behind `access`'s key
/// check; every other path answers 404.
pub fn router(
    group: Arc<MetaGroup>,
    metrics: Arc<Metrics>,
    access: Access,
    stopped: watch::Receiver<bool>,
) -> Router {
    let service = Arc::new(MetaService::unwrapped(
        Arc::clone(&group),
        Arc::clone(&metrics),
        stopped,
    ));
    Router::new()
        .route("/v1/config", get(get_all))
        .route("/v1/config/{key}", get(get_key).put(set_key))
        .route("/v1/config/{key}/history", get(history))
        .route("/v1/config/{key}/rollback", post(rollback))
        .route("/v1/config/{key}/gray", post(gray))
        .route("/v1/config/{key}/promote", post(promote))
        .route("/v1/config/{key}/abandon", post(abandon))
        .route_layer(axum::middleware::from_fn_with_state(
            access,
            crate::access::http_layer,
        ))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .with_state(MetaHttp {
            group,
            metrics,
            service,
        })
}

/// A gRPC request carrying the caller the key check found (as the gRPC layer would).
fn request<T>(message: T, caller: Option<Extension<Caller>>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(Extension(caller)) = caller {
        request.extensions_mut().insert(caller);
    }
    request
}

/// The HTTP answer to the service's refusal: 400 for a bad field, 404 for no such key, 409
/// for a change the state refuses, 503 (retryable, naming the leader when known) when this
/// replica cannot answer.
fn refused(status: &tonic::Status) -> Response {
    let (code, retryable) = match status.code() {
        tonic::Code::InvalidArgument => (StatusCode::BAD_REQUEST, false),
        tonic::Code::NotFound => (StatusCode::NOT_FOUND, false),
        tonic::Code::FailedPrecondition => (StatusCode::CONFLICT, false),
        tonic::Code::Unauthenticated => (StatusCode::UNAUTHORIZED, false),
        tonic::Code::PermissionDenied => (StatusCode::FORBIDDEN, false),
        _ => (StatusCode::SERVICE_UNAVAILABLE, true),
    };
    let metadata = |key: &str| {
        status
            .metadata()
            .get(key)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    let message = status.message();
    let field = message
        .split_once(':')
        .map(|(field, _)| field)
        .filter(|field| !field.contains(' ') && code == StatusCode::BAD_REQUEST)
        .map(str::to_owned);
    let body = ErrorJson {
        error: message.to_owned(),
        field,
        retryable,
        leader_id: metadata(crate::grpc::LEADER_ID_KEY).and_then(|id| id.parse().ok()),
        leader_grpc: metadata(crate::grpc::LEADER_GRPC_KEY),
        leader_http: None,
    };
    (code, Json(body)).into_response()
}

fn bad_body(error: serde_json::Error) -> Response {
    let body = ErrorJson {
        error: format!("body: {error}"),
        field: Some("body".into()),
        retryable: false,
        leader_id: None,
        leader_grpc: None,
        leader_http: None,
    };
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

/// A JSON text the service made, answered as it is.
fn json_text(text: String) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        text,
    )
        .into_response()
}

fn changed(outcome: Result<tonic::Response<proto::ConfigChanged>, tonic::Status>) -> Response {
    match outcome {
        Ok(answer) => {
            let answer = answer.into_inner();
            Json(serde_json::json!({
                "revision": answer.revision,
                "version": answer.version,
            }))
            .into_response()
        }
        Err(status) => refused(&status),
    }
}

async fn get_all(State(meta): State<MetaHttp>, caller: Option<Extension<Caller>>) -> Response {
    let asked = request(proto::GetConfigRequest { key: String::new() }, caller);
    match meta.service.get_config(asked).await {
        Ok(answer) => json_text(answer.into_inner().config_json),
        Err(status) => refused(&status),
    }
}

async fn get_key(
    State(meta): State<MetaHttp>,
    Path(key): Path<String>,
    caller: Option<Extension<Caller>>,
) -> Response {
    let asked = request(proto::GetConfigRequest { key: key.clone() }, caller);
    match meta.service.get_config(asked).await {
        Ok(answer) => {
            let text = answer.into_inner().config_json;
            match meta::ConfigView::from_json(&text) {
                Ok(view) if view.keys.contains_key(&key) => json_text(text),
                Ok(_) => refused(&tonic::Status::not_found("key: no such key")),
                Err(error) => refused(&tonic::Status::internal(error)),
            }
        }
        Err(status) => refused(&status),
    }
}

async fn history(
    State(meta): State<MetaHttp>,
    Path(key): Path<String>,
    caller: Option<Extension<Caller>>,
) -> Response {
    let asked = request(proto::ConfigHistoryRequest { key }, caller);
    match meta.service.config_history(asked).await {
        Ok(answer) => json_text(answer.into_inner().history_json),
        Err(status) => refused(&status),
    }
}

/// The body of `PUT /v1/config/{key}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetBody {
    value: String,
    #[serde(default)]
    expected_version: Option<u64>,
    /// The caller's id for the request: sent again, a change already made is not made twice.
    #[serde(default)]
    request_id: String,
}

async fn set_key(
    State(meta): State<MetaHttp>,
    Path(key): Path<String>,
    caller: Option<Extension<Caller>>,
    body: Bytes,
) -> Response {
    let body: SetBody = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(error) => return bad_body(error),
    };
    let message = proto::SetConfigRequest {
        key,
        value: body.value,
        expected_version: body.expected_version,
        request_id: body.request_id,
    };
    changed(meta.service.set_config(request(message, caller)).await)
}

/// The body of `POST /v1/config/{key}/rollback`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    version: u64,
    #[serde(default)]
    request_id: String,
}

async fn rollback(
    State(meta): State<MetaHttp>,
    Path(key): Path<String>,
    caller: Option<Extension<Caller>>,
    body: Bytes,
) -> Response {
    let body: RollbackBody = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(error) => return bad_body(error),
    };
    let message = proto::RollbackConfigRequest {
        key,
        version: body.version,
        request_id: body.request_id,
    };
    changed(meta.service.rollback_config(request(message, caller)).await)
}

/// The body of `POST /v1/config/{key}/gray`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrayBody {
    value: String,
    target: TargetBody,
    #[serde(default)]
    request_id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetBody {
    #[serde(default)]
    nodes: Vec<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    percent: u32,
}

async fn gray(
    State(meta): State<MetaHttp>,
    Path(key): Path<String>,
    caller: Option<Extension<Caller>>,
    body: Bytes,
) -> Response {
    let body: GrayBody = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(error) => return bad_body(error),
    };
    let message = proto::GrayConfigRequest {
        key,
        value: body.value,
        target: Some(proto::ConfigTarget {
            nodes: body.target.nodes,
            labels: body.target.labels.into_iter().collect(),
            percent: body.target.percent,
        }),
        request_id: body.request_id,
    };
    changed(meta.service.gray_config(request(message, caller)).await)
}

async fn promote(
    State(meta): State<MetaHttp>,
    Path(key): Path<String>,
    caller: Option<Extension<Caller>>,
) -> Response {
    let message = proto::PromoteConfigRequest {
        key,
        ..Default::default()
    };
    changed(meta.service.promote_config(request(message, caller)).await)
}

async fn abandon(
    State(meta): State<MetaHttp>,
    Path(key): Path<String>,
    caller: Option<Extension<Caller>>,
) -> Response {
    let message = proto::AbandonConfigRequest {
        key,
        ..Default::default()
    };
    changed(meta.service.abandon_config(request(message, caller)).await)
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
