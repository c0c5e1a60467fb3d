//! The HTTP/JSON front end (axum), for people and scripts, plus `/healthz`, `/metrics` and
//! `/openapi.json`.
//!
//! Every error is JSON `{"error": "...", "field": "..."}` with a 4xx status for bad input
//! (nothing changed), 503 with `"retryable": true` and `Retry-After` when the node is busy or
//! unavailable, and 507 naming the limit (`"field": "transfers_max"`) when the ledger's declared
//! capacity would be passed (nothing changed; not retryable until the operator raises it).

use std::collections::HashMap;
use std::time::Instant;

use api::json::{
    AccountJson, AccountsJson, AddReplicaJson, BalancesJson, ErrorJson, HealthJson,
    HealthStatusJson, LookupJson, MemberJson, MembersJson, ReplicaStatusJson, ResultsJson,
    RoleJson, StatusJson, TransferJson, TransfersJson,
};
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ledger::{AccountFilter, AccountFilterFlags, BATCH_EVENTS_MAX};
use limits::QUERY_ROWS_MAX;
use replication::{Replica, Role};
use serde::de::DeserializeOwned;
use telemetry::ErrorKind;

use crate::pipeline::{Pipeline, PipelineError};

/// Largest request body accepted (a full batch of JSON transfers is about 3 MiB).
pub use limits::HTTP_BODY_BYTES_MAX;
/// Rows returned by the history queries when `limit` is not given.
const QUERY_LIMIT_DEFAULT: u32 = limits::QUERY_ROWS_DEFAULT as u32;

const OPENAPI: &str = include_str!("openapi.json");

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    /// What the metrics count it as.
    kind: ErrorKind,
    body: Box<ErrorJson>,
}

impl ApiError {
    /// An answer refusing the request as invalid (its metrics kind); `status` says how.
    fn new(status: StatusCode, error: impl Into<String>, field: Option<String>) -> ApiError {
        let body = ErrorJson {
            error: error.into(),
            field,
            retryable: false,
            leader_id: None,
            leader_grpc: None,
            leader_http: None,
        };
        ApiError {
            status,
            kind: ErrorKind::Invalid,
            body: Box::new(body),
        }
    }

    /// 404: what the request names does not exist.
    fn not_found(error: impl Into<String>, field: Option<String>) -> ApiError {
        ApiError {
            kind: ErrorKind::NotFound,
            ..ApiError::new(StatusCode::NOT_FOUND, error, field)
        }
    }

    fn bad_request(field: impl Into<String>, error: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, error, Some(field.into()))
    }

    fn kind(&self) -> ErrorKind {
        self.kind
    }
}

impl From<PipelineError> for ApiError {
    fn from(error: PipelineError) -> ApiError {
        let message = error.to_string();
        let kind = error.kind();
        let mut answer = match error {
            PipelineError::Invalid { field, reason } => ApiError::bad_request(field, reason),
            // 507: the server cannot store what the request would create, and waiting will not
            // change that (so no `retryable`, no `Retry-After`).
            PipelineError::CapacityReached(capacity) => ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                message,
                Some(capacity.field.to_string()),
            ),
            PipelineError::NotLeader {
                leader: Some((id, node)),
            } if !node.http.is_empty() => {
                let mut answer = ApiError::new(StatusCode::TEMPORARY_REDIRECT, message, None);
                answer.body.retryable = true;
                answer.body.leader_id = Some(id);
                answer.body.leader_grpc = Some(node.grpc);
                answer.body.leader_http = Some(node.http);
                answer
            }
            PipelineError::Busy
            | PipelineError::Unavailable(_)
            | PipelineError::NotLeader { .. } => {
                let mut answer = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message, None);
                answer.body.retryable = true;
                answer
            }
        };
        answer.kind = kind;
        answer
    }
}

/// Carries the leader's HTTP address from an error to [`redirect_to_leader`], which knows the
/// request's path.
#[derive(Clone)]
struct LeaderHttp(String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry = self.body.retryable && self.status == StatusCode::SERVICE_UNAVAILABLE;
        let leader_http = self.body.leader_http.clone();
        let mut response = (self.status, Json(*self.body)).into_response();
        if retry {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        if let Some(leader_http) = leader_http {
            response.extensions_mut().insert(LeaderHttp(leader_http));
        }
        response
    }
}

/// Completes a "not the leader" answer with `Location:` the same path on the leader, so that a
/// client following redirects (307 keeps the method and body) lands there.
async fn redirect_to_leader(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let mut response = next.run(request).await;
    if let Some(LeaderHttp(leader)) = response.extensions().get::<LeaderHttp>().cloned()
        && let Ok(location) = header::HeaderValue::from_str(&format!("http://{leader}{path}"))
    {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// Answers 503 (retryable) when a request takes longer than `limits::HTTP_REQUEST_SECONDS_MAX`
/// (a slow body, a long queue): a client cannot hold a connection's request open forever. A
/// write cut off here may still commit; resending it with the same ids is safe. Membership
/// changes (`/v1/admin/…`, admin role only) wait for a learner to catch up, so their bound is
/// `limits::RAFT_LEARNER_CATCH_UP_SECONDS_MAX` plus the same margin.
async fn request_deadline(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let seconds = if request.uri().path().starts_with("/v1/admin/") {
        limits::RAFT_LEARNER_CATCH_UP_SECONDS_MAX + limits::HTTP_REQUEST_SECONDS_MAX
    } else {
        limits::HTTP_REQUEST_SECONDS_MAX
    };
    let limit = std::time::Duration::from_secs(seconds);
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            let mut answer = ApiError {
                kind: ErrorKind::Unavailable,
                ..ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "the request took longer than {seconds} s; a write may still commit: resend it with the same ids"
                    ),
                    None,
                )
            };
            answer.body.retryable = true;
            answer.into_response()
        }
    }
}

type ApiResult = Result<Response, ApiError>;

async fn observed(
    pipeline: &Pipeline,
    operation: &'static str,
    work: impl Future<Output = ApiResult>,
) -> Response {
    let started = Instant::now();
    let outcome = work.await;
    let error = outcome.as_ref().err().map(ApiError::kind);
    pipeline
        .metrics()
        .request("http", operation, started.elapsed(), error);
    outcome.unwrap_or_else(IntoResponse::into_response)
}

/// Reads a JSON body: checks the content type and size, and names the field of any error.
async fn json_body<T: DeserializeOwned>(headers: &HeaderMap, body: Body) -> Result<T, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media_type = content_type.split(';').next().unwrap_or("").trim();
    if !media_type.eq_ignore_ascii_case("application/json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "the body must be JSON with Content-Type: application/json (got {content_type:?})"
            ),
            None,
        ));
    }
    let bytes: Bytes = axum::body::to_bytes(body, HTTP_BODY_BYTES_MAX)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body exceeds {HTTP_BODY_BYTES_MAX} bytes"),
                None,
            )
        })?;
    let mut deserializer = serde_json::Deserializer::from_slice(&bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let field = (path != "." && !path.is_empty()).then_some(path);
        ApiError::new(StatusCode::BAD_REQUEST, error.inner().to_string(), field)
    })?;
    deserializer.end().map_err(|error| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("trailing characters after the JSON value: {error}"),
            None,
        )
    })?;
    Ok(value)
}

fn check_batch(len: usize) -> Result<(), ApiError> {
    if len > BATCH_EVENTS_MAX {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the batch has {len} events; the limit is {BATCH_EVENTS_MAX}"),
            None,
        ));
    }
    Ok(())
}

fn parse_id(text: &str, field: &str) -> Result<u128, ApiError> {
    text.parse::<u128>().map_err(|_| {
        ApiError::bad_request(
            field,
            format!("{text:?} is not an unsigned 128-bit decimal integer"),
        )
    })
}

/// The routes, behind the role check of [`crate::access`].
pub fn router(pipeline: Pipeline, auth: crate::auth::Auth) -> Router {
    let access = crate::access::Access {
        auth,
        metrics: std::sync::Arc::clone(pipeline.metrics()),
    };
    Router::new()
        .route("/v1/accounts", post(create_accounts))
        .route("/v1/transfers", post(create_transfers))
        .route("/v1/accounts/lookup", post(lookup_accounts))
        .route("/v1/transfers/lookup", post(lookup_transfers))
        .route("/v1/accounts/{id}", get(get_account))
        .route("/v1/transfers/{id}", get(get_transfer))
        .route("/v1/accounts/{id}/transfers", get(account_transfers))
        .route("/v1/accounts/{id}/balances", get(account_balances))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .route("/v1/status", get(status))
        .route("/v1/admin/replicas", post(add_replica))
        .route(
            "/v1/admin/replicas/{id}",
            axum::routing::delete(remove_replica),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            access,
            crate::access::http_layer,
        ))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(redirect_to_leader))
        .layer(axum::middleware::from_fn(request_deadline))
        .with_state(pipeline)
}

async fn create_accounts(
    State(pipeline): State<Pipeline>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    observed(&pipeline, "create_accounts", async {
        let events: Vec<AccountJson> = json_body(&headers, body).await?;
        check_batch(events.len())?;
        let ids: Vec<u128> = events.iter().map(|a| a.id).collect();
        let results = pipeline
            .create_accounts(events.iter().map(Into::into).collect())
            .await?;
        Ok(Json(ResultsJson::accounts(&ids, &results)).into_response())
    })
    .await
}

async fn create_transfers(
    State(pipeline): State<Pipeline>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    observed(&pipeline, "create_transfers", async {
        let events: Vec<TransferJson> = json_body(&headers, body).await?;
        check_batch(events.len())?;
        let ids: Vec<u128> = events.iter().map(|t| t.id).collect();
        let results = pipeline
            .create_transfers(events.iter().map(Into::into).collect())
            .await?;
        Ok(Json(ResultsJson::transfers(&ids, &results)).into_response())
    })
    .await
}

async fn lookup_accounts(
    State(pipeline): State<Pipeline>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    observed(&pipeline, "lookup_accounts", async {
        let lookup: LookupJson = json_body(&headers, body).await?;
        check_batch(lookup.ids.len())?;
        let ids: Vec<u128> = lookup.ids.iter().map(|id| id.0).collect();
        let accounts = pipeline.lookup_accounts(&ids).await?;
        Ok(Json(AccountsJson {
            accounts: accounts.iter().map(Into::into).collect(),
        })
        .into_response())
    })
    .await
}

async fn lookup_transfers(
    State(pipeline): State<Pipeline>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    observed(&pipeline, "lookup_transfers", async {
        let lookup: LookupJson = json_body(&headers, body).await?;
        check_batch(lookup.ids.len())?;
        let ids: Vec<u128> = lookup.ids.iter().map(|id| id.0).collect();
        let transfers = pipeline.lookup_transfers(&ids).await?;
        Ok(Json(TransfersJson {
            transfers: transfers.iter().map(Into::into).collect(),
        })
        .into_response())
    })
    .await
}

async fn get_account(State(pipeline): State<Pipeline>, Path(id): Path<String>) -> Response {
    observed(&pipeline, "lookup_accounts", async {
        let id = parse_id(&id, "id")?;
        match pipeline.lookup_accounts(&[id]).await?.first() {
            Some(account) => Ok(Json(AccountJson::from(account)).into_response()),
            None => Err(ApiError::not_found(
                format!("account {id} does not exist"),
                Some("id".into()),
            )),
        }
    })
    .await
}

async fn get_transfer(State(pipeline): State<Pipeline>, Path(id): Path<String>) -> Response {
    observed(&pipeline, "lookup_transfers", async {
        let id = parse_id(&id, "id")?;
        match pipeline.lookup_transfers(&[id]).await?.first() {
            Some(transfer) => Ok(Json(TransferJson::from(transfer)).into_response()),
            None => Err(ApiError::not_found(
                format!("transfer {id} does not exist"),
                Some("id".into()),
            )),
        }
    })
    .await
}

/// Refuses a query parameter that is not one of `known`, naming it.
fn refuse_unknown(params: &HashMap<String, String>, known: &[&str]) -> Result<(), ApiError> {
    match params.keys().find(|key| !known.contains(&key.as_str())) {
        Some(unknown) => Err(ApiError::bad_request(
            unknown.clone(),
            format!(
                "unknown query parameter; known ones are {}",
                known.join(", ")
            ),
        )),
        None => Ok(()),
    }
}

/// A boolean query parameter (`true`/`1`, `false`/`0`), `default` when absent.
fn flag(params: &HashMap<String, String>, name: &str, default: bool) -> Result<bool, ApiError> {
    match params.get(name).map(String::as_str) {
        None => Ok(default),
        Some("true" | "1") => Ok(true),
        Some("false" | "0") => Ok(false),
        Some(other) => Err(ApiError::bad_request(
            name,
            format!("{other:?} is not a boolean (true or false)"),
        )),
    }
}

/// Builds a filter from the path id and query parameters; unknown parameters are refused.
fn filter_from_query(
    id: &str,
    params: &HashMap<String, String>,
) -> Result<AccountFilter, ApiError> {
    const KNOWN: [&str; 10] = [
        "limit",
        "timestamp_min",
        "timestamp_max",
        "debits",
        "credits",
        "reversed",
        "user_data_128",
        "user_data_64",
        "user_data_32",
        "code",
    ];
    refuse_unknown(params, &KNOWN)?;
    fn number<T: std::str::FromStr>(
        params: &HashMap<String, String>,
        name: &str,
        default: T,
    ) -> Result<T, ApiError> {
        match params.get(name) {
            None => Ok(default),
            Some(text) => text.parse().map_err(|_| {
                ApiError::bad_request(
                    name,
                    format!("{text:?} is not a valid unsigned integer for {name}"),
                )
            }),
        }
    }
    let limit: u32 = number(params, "limit", QUERY_LIMIT_DEFAULT)?;
    if limit == 0 || limit as usize > QUERY_ROWS_MAX {
        return Err(ApiError::bad_request(
            "limit",
            format!("must be between 1 and {QUERY_ROWS_MAX}"),
        ));
    }
    let mut flags = AccountFilterFlags::empty();
    flags.set(AccountFilterFlags::DEBITS, flag(params, "debits", true)?);
    flags.set(AccountFilterFlags::CREDITS, flag(params, "credits", true)?);
    flags.set(
        AccountFilterFlags::REVERSED,
        flag(params, "reversed", false)?,
    );
    let filter = AccountFilter {
        account_id: parse_id(id, "id")?,
        user_data_128: number(params, "user_data_128", 0)?,
        user_data_64: number(params, "user_data_64", 0)?,
        user_data_32: number(params, "user_data_32", 0)?,
        code: number(params, "code", 0)?,
        timestamp_min: number(params, "timestamp_min", 0)?,
        timestamp_max: number(params, "timestamp_max", 0)?,
        limit,
        flags,
    };
    filter
        .validate()
        .map_err(|ledger::QueryError::InvalidFilter { field, reason }| {
            ApiError::bad_request(field, reason)
        })?;
    Ok(filter)
}

async fn account_transfers(
    State(pipeline): State<Pipeline>,
    Path(id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    observed(&pipeline, "get_account_transfers", async {
        let filter = filter_from_query(&id, &params)?;
        let transfers = pipeline.get_account_transfers(&filter).await?;
        Ok(Json(TransfersJson {
            transfers: transfers.iter().map(Into::into).collect(),
        })
        .into_response())
    })
    .await
}

async fn account_balances(
    State(pipeline): State<Pipeline>,
    Path(id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    observed(&pipeline, "get_account_balances", async {
        let filter = filter_from_query(&id, &params)?;
        let balances = pipeline.get_account_balances(&filter).await?;
        Ok(Json(BalancesJson {
            balances: balances.iter().map(Into::into).collect(),
        })
        .into_response())
    })
    .await
}

async fn healthz(State(pipeline): State<Pipeline>) -> Response {
    if pipeline.has_failed() {
        let body = HealthJson {
            error: Some("a storage failure stopped the node; restart it".into()),
            status: HealthStatusJson::Failed,
        };
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    } else {
        let body = HealthJson {
            error: None,
            status: HealthStatusJson::Ok,
        };
        Json(body).into_response()
    }
}

/// This replica's role, term, leader and applied index, with the group's members; with
/// `?digest=true` also the state digest there (replicas that applied the same index must show the
/// same digest). The digest is opt-in: it is a pass over the whole state under its read lock,
/// which pauses apply (about a second at 10M transfers), so routine polling must not pay it.
/// Digests are computed on a blocking thread (held on an async runtime worker, one would stall
/// the tasks that share it, Raft's heartbeats among them), one at a time, remembered until the
/// next apply; when `limits::STATUS_DIGEST_CALLERS_MAX` callers already wait, the answer is
/// 503 busy.
async fn status(
    State(pipeline): State<Pipeline>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let with_digest =
        match refuse_unknown(&params, &["digest"]).and_then(|()| flag(&params, "digest", false)) {
            Ok(with_digest) => with_digest,
            Err(error) => return error.into_response(),
        };
    let replica = std::sync::Arc::clone(pipeline.replica());
    let members = members(&replica);
    let mut status = replica.status(false);
    if with_digest {
        match replica.state_digest().await {
            Ok((index, digest)) => {
                status.applied_index = index;
                status.state_digest = Some(digest.to_string());
            }
            Err(busy) => {
                let mut answer = ApiError {
                    kind: ErrorKind::Busy,
                    ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, busy.to_string(), None)
                };
                answer.body.retryable = true;
                return answer.into_response();
            }
        }
    }
    Json(StatusJson {
        members,
        replica: replica_status_json(status),
    })
    .into_response()
}

fn replica_status_json(status: replication::ReplicaStatus) -> ReplicaStatusJson {
    ReplicaStatusJson {
        applied_index: status.applied_index,
        id: status.id,
        last_log_index: status.last_log_index,
        leader: status.leader,
        role: role_json(status.role),
        state_digest: status.state_digest,
        term: status.term,
    }
}

fn role_json(role: Role) -> RoleJson {
    match role {
        Role::Leader => RoleJson::Leader,
        Role::Follower => RoleJson::Follower,
        Role::Candidate => RoleJson::Candidate,
        Role::Learner => RoleJson::Learner,
        Role::Shutdown => RoleJson::Shutdown,
    }
}

fn members(replica: &Replica) -> Vec<MemberJson> {
    replica
        .members()
        .into_iter()
        .map(|(id, node)| MemberJson {
            grpc: node.grpc,
            http: node.http,
            peer: node.peer,
            id,
        })
        .collect()
}

fn members_json(pipeline: &Pipeline) -> Response {
    Json(MembersJson {
        members: members(pipeline.replica()),
    })
    .into_response()
}

fn membership_error(error: replication::WriteError) -> ApiError {
    match error {
        replication::WriteError::Failed(reason) => {
            ApiError::new(StatusCode::CONFLICT, reason, Some("id".into()))
        }
        other => ApiError::from(crate::pipeline::PipelineError::from(other)),
    }
}

/// Adds a replica: it catches up as a learner, then becomes a voter. Leader only (others
/// redirect).
async fn add_replica(State(pipeline): State<Pipeline>, headers: HeaderMap, body: Body) -> Response {
    observed(&pipeline, "add_replica", async {
        let new: AddReplicaJson = json_body(&headers, body).await?;
        for (field, addr) in [
            ("grpc", &new.grpc),
            ("http", &new.http),
            ("peer", &new.peer),
        ] {
            if (field != "http" || !addr.is_empty())
                && addr.parse::<std::net::SocketAddr>().is_err()
            {
                return Err(ApiError::bad_request(
                    field,
                    format!("{addr:?} is not an address (HOST:PORT)"),
                ));
            }
        }
        let node = replication::PeerNode {
            grpc: new.grpc,
            http: new.http,
            peer: new.peer,
        };
        pipeline
            .replica()
            .add_replica(new.id, node)
            .await
            .map_err(membership_error)?;
        Ok(members_json(&pipeline))
    })
    .await
}

/// Removes a replica from the group. Leader only (others redirect).
async fn remove_replica(State(pipeline): State<Pipeline>, Path(id): Path<String>) -> Response {
    observed(&pipeline, "remove_replica", async {
        let id: u64 = id
            .parse()
            .map_err(|_| ApiError::bad_request("id", format!("{id:?} is not a node id")))?;
        pipeline
            .replica()
            .remove_replica(id)
            .await
            .map_err(membership_error)?;
        Ok(members_json(&pipeline))
    })
    .await
}

async fn metrics(State(pipeline): State<Pipeline>) -> Response {
    (
        [(header::CONTENT_TYPE, telemetry::METRICS_CONTENT_TYPE)],
        pipeline.metrics().render(),
    )
        .into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route; see /openapi.json", None)
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this route; see /openapi.json",
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_is_shown_by_its_own_word_and_documented_in_openapi() {
        let openapi: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        let documented = &openapi["components"]["schemas"]["Role"]["enum"];
        let shown: Vec<serde_json::Value> = Role::ALL
            .iter()
            .map(|&role| {
                let shown = serde_json::to_value(role_json(role)).unwrap();
                assert_eq!(shown, role.as_str());
                shown
            })
            .collect();
        assert_eq!(documented, &serde_json::Value::Array(shown));
    }

    #[test]
    fn an_error_is_counted_by_its_kind_not_by_the_words_of_its_message() {
        let cases = [
            (
                PipelineError::Busy,
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorKind::Busy,
            ),
            (
                PipelineError::Unavailable("the disk is busy".into()),
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorKind::Unavailable,
            ),
            (
                PipelineError::NotLeader { leader: None },
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorKind::NotLeader,
            ),
            (
                PipelineError::Invalid {
                    field: "id".into(),
                    reason: "busy".into(),
                },
                StatusCode::BAD_REQUEST,
                ErrorKind::Invalid,
            ),
        ];
        for (error, status, kind) in cases {
            let answer = ApiError::from(error);
            assert_eq!((answer.status, answer.kind()), (status, kind));
        }
        assert_eq!(
            ApiError::not_found("gone", None).kind(),
            ErrorKind::NotFound
        );
    }
}
