//! The HTTP/JSON front end (axum), for people and scripts, plus `/healthz`, `/metrics` and
//! `/openapi.json`.
//!
//! Every error is JSON `{"error": "...", "field": "..."}` with a 4xx status for bad input
//! (nothing changed), 503 with `"retryable": true` and `Retry-After` when the node is busy or
//! unavailable, and 507 naming the limit (`"field": "transfers_max"`) when the ledger's declared
//! capacity would be passed (nothing changed; not retryable until the operator raises it).
//!
//! Each route is routed and documented at once (`documented_routes`): its handler's
//! `#[utoipa::path]` says its path, method, parameters, body and answers, and
//! [`crate::openapi`] builds `/openapi.json` from them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use api::json::{
    AccountJson, AccountsJson, AddReplicaJson, BalancesJson, ErrorJson, HealthJson,
    HealthStatusJson, IdJson, IdsJson, LookupJson, MemberJson, MembersJson, OutcomeJson,
    OutcomesJson, OutcomesLookupJson, ReplicaStatusJson, ResultsJson, RoleJson, StatusJson,
    TransferJson, TransfersJson, parse_decimal,
};
use api::schema::{
    AccountBatch, HistoryAccountId, IdCount, IdPath, NodeInteger, RowLimit, TimestampBound,
    TransferBatch, U16, U32, U128Query,
};
use axum::body::{Body, Bytes};
use axum::extract::{FromRef, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use ledger::{AccountFilter, AccountFilterFlags};
use limits::{BATCH_EVENTS_MAX, LOOKUP_IDS_MAX, QUERY_ROWS_MAX};
use replication::{Replica, Role};
use serde::de::DeserializeOwned;
use telemetry::ErrorKind;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::events::SharedEvents;
use crate::ledger_api::{Ledger, await_outcomes};
use crate::openapi::{
    BadInput, BodyTooLarge, Conflict, CreateRefusals, HistoryRefusals, LookupRefusals, NotJson,
    NotLeader, ReadRefusals,
};
use crate::pipeline::{Pipeline, PipelineError};
use telemetry::Metrics;

/// Largest request body accepted (a full batch of JSON transfers is about 3 MiB).
pub use limits::HTTP_BODY_BYTES_MAX;
/// Rows returned by the history queries when `limit` is not given.
const QUERY_LIMIT_DEFAULT: u32 = limits::QUERY_ROWS_DEFAULT as u32;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    /// What the metrics count it as.
    kind: ErrorKind,
    body: Box<ErrorJson>,
    /// The `Retry-After` of a 429 (whole seconds).
    retry_after_seconds: Option<u64>,
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
            retry_after_seconds: None,
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
            PipelineError::CapacityReached(ledger::CapacityError { field, .. })
            | PipelineError::GroupCapacityReached { field, .. } => ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                message,
                Some(field.to_string()),
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
            PipelineError::Limited { retry_after, .. } => {
                let mut answer = ApiError::new(StatusCode::TOO_MANY_REQUESTS, message, None);
                answer.body.retryable = true;
                answer.retry_after_seconds = Some(retry_after.as_secs_f64().ceil().max(1.0) as u64);
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
        let retry_after_seconds = self.retry_after_seconds;
        let mut response = (self.status, Json(*self.body)).into_response();
        if retry {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        if let Some(seconds) = retry_after_seconds {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
        }
        if let Some(leader_http) = leader_http {
            response.extensions_mut().insert(LeaderHttp(leader_http));
        }
        response
    }
}

/// Whether the HTTP listener is served over TLS: the scheme of the leader's URL in a redirect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// Completes a "not the leader" answer with `Location:` the same path on the leader (with this
/// node's scheme: the replicas of a group serve clients alike), so that a client following
/// redirects (307 keeps the method and body) lands there.
async fn redirect_to_leader(
    State(scheme): State<Scheme>,
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
        && let Ok(location) =
            header::HeaderValue::from_str(&format!("{}://{leader}{path}", scheme.as_str()))
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
    metrics: &Metrics,
    operation: &'static str,
    work: impl Future<Output = ApiResult>,
) -> Response {
    let started = Instant::now();
    let outcome = work.await;
    let error = outcome.as_ref().err().map(ApiError::kind);
    metrics.request("http", operation, started.elapsed(), error);
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

/// Refuses a batch (`field`: `[]` for a create body, `ids` for a lookup; `items` names what it
/// holds) of none or more than `max`: 400, as the document's `minItems`/`maxItems` say.
fn check_batch(field: &str, items: &str, len: usize, max: usize) -> Result<(), ApiError> {
    if len == 0 {
        return Err(ApiError::bad_request(
            field,
            format!("the batch is empty; send 1 to {max} {items}"),
        ));
    }
    if len > max {
        return Err(ApiError::bad_request(
            field,
            format!("the batch has {len} {items}; the limit is {max}"),
        ));
    }
    Ok(())
}

/// Reads an unsigned integer of at most `bits` bits from a path or query (decimal digits only,
/// as the document's patterns say).
fn parse_unsigned(text: &str, field: &str, bits: u32) -> Result<u128, ApiError> {
    parse_decimal(text, bits).map_err(|reason| ApiError::bad_request(field, reason))
}

fn parse_id(text: &str, field: &str) -> Result<u128, ApiError> {
    parse_unsigned(text, field, 128)
}

/// What the client API's routes are served by: the ledger and the change events (a node's
/// pipeline and replica, or a gateway's router).
#[derive(Clone)]
struct ClientApi {
    ledger: Ledger,
    events: SharedEvents,
}

impl FromRef<ClientApi> for Ledger {
    fn from_ref(api: &ClientApi) -> Ledger {
        Arc::clone(&api.ledger)
    }
}

impl FromRef<ClientApi> for Arc<Metrics> {
    fn from_ref(api: &ClientApi) -> Arc<Metrics> {
        Arc::clone(api.ledger.metrics())
    }
}

impl FromRef<ClientApi> for SharedEvents {
    fn from_ref(api: &ClientApi) -> SharedEvents {
        Arc::clone(&api.events)
    }
}

/// The client API's routes with their descriptions, served alike by a node and a gateway
/// (state: whatever serves the ledger and the events).
fn ledger_routes() -> OpenApiRouter<ClientApi> {
    OpenApiRouter::with_openapi(crate::openapi::skeleton())
        .routes(routes!(create_accounts))
        .routes(routes!(create_transfers))
        .routes(routes!(lookup_accounts))
        .routes(routes!(lookup_transfers))
        .routes(routes!(lookup_outcomes))
        .routes(routes!(get_account))
        .routes(routes!(get_transfer))
        .routes(routes!(account_transfers))
        .routes(routes!(account_balances))
        .routes(routes!(mint_ids))
        .routes(routes!(crate::events::events_page))
        .routes(routes!(healthz))
        .routes(routes!(metrics))
        .routes(routes!(openapi))
}

/// A replica's own routes (its status and its group's membership), served only by a node.
fn replica_routes() -> OpenApiRouter<Pipeline> {
    OpenApiRouter::new()
        .routes(routes!(status))
        .routes(routes!(add_replica))
        .routes(routes!(remove_replica))
}

/// Every route with its description (a node's with `replica` routes, a gateway's without):
/// the one list both the router and the OpenAPI document are made from.
pub(crate) fn documented_routes(replica: bool) -> utoipa::openapi::OpenApi {
    let (_, mut document) = ledger_routes().split_for_parts();
    if replica {
        let (_, replica) = replica_routes().split_for_parts();
        document.merge(replica);
    }
    document
}

/// The OpenAPI document this server serves (a node's or a gateway's).
#[derive(Clone, Copy)]
struct Document(&'static str);

/// The routes, behind the role check of [`crate::access`]: the client API served by `ledger`
/// and `events`, and with `replica` (a node) the replica's own routes too.
pub fn router(
    ledger: Ledger,
    events: SharedEvents,
    replica: Option<Pipeline>,
    console: crate::console::Console,
    access: crate::access::Access,
    scheme: Scheme,
) -> Router {
    let flow = flow::FlowLayer::new(
        std::sync::Arc::clone(&access.flow),
        crate::flow_front::HttpFlow {
            metrics: std::sync::Arc::clone(&access.metrics),
        },
    );
    let (routes, _) = ledger_routes().split_for_parts();
    let mut routes = routes.with_state(ClientApi { ledger, events });
    let document = match replica {
        Some(pipeline) => {
            let (replica_routes, _) = replica_routes().split_for_parts();
            routes = routes.merge(replica_routes.with_state(pipeline));
            Document(crate::openapi::document_json())
        }
        None => Document(crate::openapi::gateway_document_json()),
    };
    routes = routes.merge(console.routes());
    routes
        .layer(axum::Extension(document))
        // Route layers run outermost last: the key is checked, then flow control.
        .route_layer(flow)
        .route_layer(axum::middleware::from_fn_with_state(
            access,
            crate::access::http_layer,
        ))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            scheme,
            redirect_to_leader,
        ))
        .layer(axum::middleware::from_fn(request_deadline))
}

/// Create accounts (1 to 8,189)
///
/// One result per account, in order (`created`, `exists`, or why it was refused); resending the
/// same ids is safe.
#[utoipa::path(post, path = "/v1/accounts", operation_id = "createAccounts",
    request_body = AccountBatch,
    responses((status = 200, description = "One result per account.", body = ResultsJson), CreateRefusals))]
async fn create_accounts(State(ledger): State<Ledger>, headers: HeaderMap, body: Body) -> Response {
    observed(ledger.metrics(), "create_accounts", async {
        let events: Vec<AccountJson> = json_body(&headers, body).await?;
        check_batch("[]", "events", events.len(), BATCH_EVENTS_MAX)?;
        let ids: Vec<u128> = events.iter().map(|a| a.id).collect();
        let results = ledger
            .create_accounts(events.iter().map(Into::into).collect())
            .await?;
        Ok(Json(ResultsJson::accounts(&ids, &results)).into_response())
    })
    .await
}

/// Create transfers (1 to 8,189)
///
/// One result per transfer, in order (`created`, `exists`, or why it was refused); resending
/// the same ids is safe.
#[utoipa::path(post, path = "/v1/transfers", operation_id = "createTransfers",
    request_body = TransferBatch,
    responses((status = 200, description = "One result per transfer.", body = ResultsJson), CreateRefusals))]
async fn create_transfers(
    State(ledger): State<Ledger>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    observed(ledger.metrics(), "create_transfers", async {
        let events: Vec<TransferJson> = json_body(&headers, body).await?;
        check_batch("[]", "events", events.len(), BATCH_EVENTS_MAX)?;
        let ids: Vec<u128> = events.iter().map(|t| t.id).collect();
        let results = ledger
            .create_transfers(events.iter().map(Into::into).collect())
            .await?;
        Ok(Json(ResultsJson::transfers(&ids, &results)).into_response())
    })
    .await
}

/// Look up accounts by id
///
/// The accounts that exist, in the order asked; unknown ids are left out.
#[utoipa::path(post, path = "/v1/accounts/lookup", operation_id = "lookupAccounts",
    request_body = LookupJson,
    responses((status = 200, description = "The accounts found.", body = AccountsJson), LookupRefusals))]
async fn lookup_accounts(State(ledger): State<Ledger>, headers: HeaderMap, body: Body) -> Response {
    observed(ledger.metrics(), "lookup_accounts", async {
        let lookup: LookupJson = json_body(&headers, body).await?;
        check_batch("ids", "ids", lookup.ids.len(), LOOKUP_IDS_MAX)?;
        let ids: Vec<u128> = lookup.ids.iter().map(|id| id.0).collect();
        let accounts = ledger.lookup_accounts(ids).await?;
        Ok(Json(AccountsJson {
            accounts: accounts.iter().map(Into::into).collect(),
        })
        .into_response())
    })
    .await
}

/// Look up transfers by id
///
/// The transfers that exist, in the order asked; unknown ids are left out.
#[utoipa::path(post, path = "/v1/transfers/lookup", operation_id = "lookupTransfers",
    request_body = LookupJson,
    responses((status = 200, description = "The transfers found.", body = TransfersJson), LookupRefusals))]
async fn lookup_transfers(
    State(ledger): State<Ledger>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    observed(ledger.metrics(), "lookup_transfers", async {
        let lookup: LookupJson = json_body(&headers, body).await?;
        check_batch("ids", "ids", lookup.ids.len(), LOOKUP_IDS_MAX)?;
        let ids: Vec<u128> = lookup.ids.iter().map(|id| id.0).collect();
        let transfers = ledger.lookup_transfers(ids).await?;
        Ok(Json(TransfersJson {
            transfers: transfers.iter().map(Into::into).collect(),
        })
        .into_response())
    })
    .await
}

/// Where transfers stand
///
/// One outcome per id, in the order asked: `created` and `failed` are final, `pending` (a
/// cross-group transfer a gateway answered `outcome_pending`) ends by itself, `not_found`
/// means no transfer has the id and the id is not spent. With `wait_ms`, the answer waits
/// (up to that long) while any outcome is `pending`.
#[utoipa::path(post, path = "/v1/transfers/outcomes", operation_id = "lookupOutcomes",
    request_body = OutcomesLookupJson,
    responses((status = 200, description = "The outcomes.", body = OutcomesJson), LookupRefusals))]
async fn lookup_outcomes(State(ledger): State<Ledger>, headers: HeaderMap, body: Body) -> Response {
    observed(ledger.metrics(), "lookup_outcomes", async {
        let lookup: OutcomesLookupJson = json_body(&headers, body).await?;
        check_batch("ids", "ids", lookup.ids.len(), LOOKUP_IDS_MAX)?;
        let wait = api::convert::outcome_wait(lookup.wait_ms, "wait_ms")
            .map_err(|error| ApiError::bad_request(error.field, error.reason))?;
        let ids: Vec<u128> = lookup.ids.iter().map(|id| id.0).collect();
        let outcomes = await_outcomes(&*ledger, ids.clone(), wait).await?;
        Ok(Json(OutcomesJson {
            outcomes: ids
                .iter()
                .zip(outcomes)
                .map(|(&id, outcome)| OutcomeJson::new(id, outcome))
                .collect(),
        })
        .into_response())
    })
    .await
}

/// One account
#[utoipa::path(get, path = "/v1/accounts/{id}", operation_id = "getAccount",
    params(("id" = IdPath, Path, description = "The account's id.")),
    responses((status = 200, description = "The account.", body = AccountJson), ReadRefusals))]
async fn get_account(State(ledger): State<Ledger>, Path(id): Path<String>) -> Response {
    observed(ledger.metrics(), "lookup_accounts", async {
        let id = parse_id(&id, "id")?;
        match ledger.lookup_accounts(vec![id]).await?.first() {
            Some(account) => Ok(Json(AccountJson::from(account)).into_response()),
            None => Err(ApiError::not_found(
                format!("account {id} does not exist"),
                Some("id".into()),
            )),
        }
    })
    .await
}

/// One transfer
#[utoipa::path(get, path = "/v1/transfers/{id}", operation_id = "getTransfer",
    params(("id" = IdPath, Path, description = "The transfer's id.")),
    responses((status = 200, description = "The transfer.", body = TransferJson), ReadRefusals))]
async fn get_transfer(State(ledger): State<Ledger>, Path(id): Path<String>) -> Response {
    observed(ledger.metrics(), "lookup_transfers", async {
        let id = parse_id(&id, "id")?;
        match ledger.lookup_transfers(vec![id]).await?.first() {
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

/// A boolean query parameter (`true` or `false`, as the document says), `default` when absent.
fn flag(params: &HashMap<String, String>, name: &str, default: bool) -> Result<bool, ApiError> {
    match params.get(name).map(String::as_str) {
        None => Ok(default),
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(other) => Err(ApiError::bad_request(
            name,
            format!("{other:?} is not a boolean (true or false)"),
        )),
    }
}

/// The query parameters of the history routes, as documented; [`filter_from_query`] reads them
/// (a test holds the two to the same names).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Read by name from the query map; this type only describes them.
struct HistoryQuery {
    /// Rows to return at most (default 100).
    #[param(value_type = Option<RowLimit>)]
    limit: Option<u32>,
    /// Only rows at or after this timestamp (0: no bound).
    #[param(value_type = Option<TimestampBound>)]
    timestamp_min: Option<u64>,
    /// Only rows at or before this timestamp (0: no bound). When both are given and non-zero,
    /// `timestamp_min` must not exceed `timestamp_max` (else 400).
    #[param(value_type = Option<TimestampBound>)]
    timestamp_max: Option<u64>,
    /// Include transfers that debit the account (default true). `debits` and `credits` must not
    /// both be false (else 400).
    debits: Option<bool>,
    /// Include transfers that credit the account (default true).
    credits: Option<bool>,
    /// Newest first (default false).
    reversed: Option<bool>,
    /// Only transfers with this `user_data_128` (0: any).
    #[param(value_type = Option<U128Query>)]
    user_data_128: Option<String>,
    /// Only transfers with this `user_data_64` (0: any).
    #[param(value_type = Option<api::schema::U64Query>)]
    user_data_64: Option<u64>,
    /// Only transfers with this `user_data_32` (0: any).
    #[param(value_type = Option<U32>)]
    user_data_32: Option<u32>,
    /// Only transfers with this `code` (0: any).
    #[param(value_type = Option<U16>)]
    code: Option<u16>,
}

/// The history routes' query parameters, by name.
const HISTORY_PARAMETERS: [&str; 10] = [
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

/// Builds a filter from the path id and query parameters; unknown parameters are refused.
fn filter_from_query(
    id: &str,
    params: &HashMap<String, String>,
) -> Result<AccountFilter, ApiError> {
    refuse_unknown(params, &HISTORY_PARAMETERS)?;
    fn number<T: TryFrom<u128>>(
        params: &HashMap<String, String>,
        name: &str,
        default: T,
    ) -> Result<T, ApiError> {
        let Some(text) = params.get(name) else {
            return Ok(default);
        };
        let bits = 8 * std::mem::size_of::<T>() as u32;
        let value = parse_unsigned(text, name, bits)?;
        T::try_from(value)
            .map_err(|_| ApiError::bad_request(name, format!("{text} does not fit in {bits} bits")))
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

/// An account's transfers
///
/// Oldest first unless `reversed`; filters by time, direction and user data.
#[utoipa::path(get, path = "/v1/accounts/{id}/transfers", operation_id = "getAccountTransfers",
    params(("id" = HistoryAccountId, Path, description = "The account's id."), HistoryQuery),
    responses((status = 200, description = "The transfers that match.", body = TransfersJson), HistoryRefusals))]
async fn account_transfers(
    State(ledger): State<Ledger>,
    Path(id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    observed(ledger.metrics(), "get_account_transfers", async {
        let filter = filter_from_query(&id, &params)?;
        let transfers = ledger.get_account_transfers(filter).await?;
        Ok(Json(TransfersJson {
            transfers: transfers.iter().map(Into::into).collect(),
        })
        .into_response())
    })
    .await
}

/// An account's balance history
///
/// The account's balances after each matching transfer (accounts with the `history` flag).
#[utoipa::path(get, path = "/v1/accounts/{id}/balances", operation_id = "getAccountBalances",
    params(("id" = HistoryAccountId, Path, description = "The account's id."), HistoryQuery),
    responses((status = 200, description = "The balances that match.", body = BalancesJson), HistoryRefusals))]
async fn account_balances(
    State(ledger): State<Ledger>,
    Path(id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    observed(ledger.metrics(), "get_account_balances", async {
        let filter = filter_from_query(&id, &params)?;
        let balances = ledger.get_account_balances(filter).await?;
        Ok(Json(BalancesJson {
            balances: balances.iter().map(Into::into).collect(),
        })
        .into_response())
    })
    .await
}

/// The query parameters of `GET /v1/ids`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Read by name from the query map; this type only describes them.
struct MintQuery {
    /// The account (or any id) whose slot the new ids share.
    #[param(value_type = IdPath)]
    near: String,
    /// How many ids to mint (default 1).
    #[param(value_type = Option<IdCount>)]
    count: Option<u32>,
}

/// Mint ids that live with an account
///
/// `count` fresh ids (default 1), each in the slot of `near`, so each lives in `near`'s group
/// now and after any slot move: give them to accounts that belong with `near` (a merchant's
/// sub-accounts) and to transfers debiting `near`. Time-ordered like TigerBeetle's recommended
/// ids (48-bit milliseconds first); never 0 or 2^128-1. The formulas are in
/// `docs/placement.md`. Changes nothing.
#[utoipa::path(get, path = "/v1/ids", operation_id = "mintIds", params(MintQuery), responses(
    (status = 200, description = "The ids minted.", body = IdsJson),
    (status = 400, response = BadInput)))]
async fn mint_ids(
    State(ledger): State<Ledger>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    observed(ledger.metrics(), "mint_ids", async {
        refuse_unknown(&params, &["near", "count"])?;
        let near = params.get("near").ok_or_else(|| {
            ApiError::bad_request("near", "required: the id whose slot to mint in")
        })?;
        let near = parse_id(near, "near")?;
        let count = match params.get("count") {
            None => 1,
            Some(text) => parse_unsigned(text, "count", 32)? as usize,
        };
        if !(1..=BATCH_EVENTS_MAX).contains(&count) {
            return Err(ApiError::bad_request(
                "count",
                format!("{count} ids; mint 1 to {BATCH_EVENTS_MAX} at a time"),
            ));
        }
        let ids = crate::minting::mint_near(near, count)
            .map_err(|reason| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, reason, None))?;
        Ok(Json(IdsJson {
            ids: ids.into_iter().map(IdJson).collect(),
        })
        .into_response())
    })
    .await
}

/// Liveness
#[utoipa::path(get, path = "/healthz", operation_id = "healthz", responses(
    (status = 200, description = "The node serves.", body = HealthJson),
    (status = 503, description = "A storage failure stopped the node; restart it.", body = HealthJson)))]
async fn healthz(State(ledger): State<Ledger>) -> Response {
    if let Some(failure) = ledger.failure() {
        let body = HealthJson {
            error: Some(failure),
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

/// The query parameters of `GET /v1/status`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Read by name from the query map; this type only describes it.
struct StatusQuery {
    /// Also give the state digest at the applied index (default false; needs the admin role).
    digest: Option<bool>,
}

/// Replica status
///
/// This replica's role, term, leader and applied index, with the group's members; with
/// `?digest=true` also the state digest there (replicas that applied the same index must show the
/// same digest). The digest is opt-in: it is a pass over the whole state under its read lock,
/// which pauses apply (about a second at 10M transfers), so routine polling must not pay it.
/// Digests are computed on a blocking thread (held on an async runtime worker, one would stall
/// the tasks that share it, Raft's heartbeats among them), one at a time, remembered until the
/// next apply; when `limits::STATUS_DIGEST_CALLERS_MAX` callers already wait, the answer is
/// 503 busy.
#[utoipa::path(get, path = "/v1/status", operation_id = "status", params(StatusQuery), responses(
    (status = 200, description = "This replica and the group's members.", body = StatusJson),
    (status = 400, response = BadInput)))]
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

/// Add a replica
///
/// It catches up as a learner, then becomes a voter (the call waits for that). Leader only
/// (others redirect).
#[utoipa::path(post, path = "/v1/admin/replicas", operation_id = "addReplica",
    request_body = AddReplicaJson, responses(
    (status = 200, description = "The group's members after the change.", body = MembersJson),
    (status = 307, response = NotLeader), (status = 400, response = BadInput),
    (status = 409, response = Conflict), (status = 413, response = BodyTooLarge),
    (status = 415, response = NotJson)))]
async fn add_replica(State(pipeline): State<Pipeline>, headers: HeaderMap, body: Body) -> Response {
    observed(pipeline.metrics(), "add_replica", async {
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

/// Remove a replica
///
/// Removes a replica from the group. Leader only (others redirect).
#[utoipa::path(delete, path = "/v1/admin/replicas/{id}", operation_id = "removeReplica",
    params(("id" = NodeInteger, Path, description = "The replica's node id.")), responses(
    (status = 200, description = "The group's members after the change.", body = MembersJson),
    (status = 307, response = NotLeader), (status = 400, response = BadInput),
    (status = 409, response = Conflict)))]
async fn remove_replica(State(pipeline): State<Pipeline>, Path(id): Path<String>) -> Response {
    observed(pipeline.metrics(), "remove_replica", async {
        let id = parse_unsigned(&id, "id", 64)? as u64;
        pipeline
            .replica()
            .remove_replica(id)
            .await
            .map_err(membership_error)?;
        Ok(members_json(&pipeline))
    })
    .await
}

/// Metrics (Prometheus text, or OpenMetrics when asked for)
#[utoipa::path(get, path = "/metrics", operation_id = "metrics", responses((status = 200,
    description = "The node's metrics: OpenMetrics text when the `Accept` header asks for \
        `application/openmetrics-text` (as Prometheus does), Prometheus' text format 0.0.4 \
        otherwise.",
    content(
        (String = telemetry::PROMETHEUS_TEXT_CONTENT_TYPE),
        (String = telemetry::METRICS_CONTENT_TYPE)
    ))))]
async fn metrics(State(ledger): State<Ledger>, headers: HeaderMap) -> Response {
    metrics_response(ledger.metrics(), &headers)
}

/// `metrics` as text in the format the `Accept` header asks for: OpenMetrics for a scraper
/// that asks for it (Prometheus does), else Prometheus' text format (`curl`, `promtool`).
pub(crate) fn metrics_response(metrics: &telemetry::Metrics, headers: &HeaderMap) -> Response {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok());
    let exposition = telemetry::Exposition::negotiate(accept);
    (
        [(header::CONTENT_TYPE, exposition.content_type())],
        metrics.render_as(exposition),
    )
        .into_response()
}

/// This document
#[utoipa::path(get, path = "/openapi.json", operation_id = "openapi",
    responses((status = 200, description = "The OpenAPI document of this API.", body = Object)))]
async fn openapi(axum::Extension(Document(document)): axum::Extension<Document>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], document).into_response()
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
        let openapi: serde_json::Value =
            serde_json::from_str(crate::openapi::document_json()).unwrap();
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
    fn the_history_query_parameters_read_are_the_ones_documented() {
        let documented: Vec<String> = HistoryQuery::into_params(|| None)
            .into_iter()
            .map(|parameter| parameter.name)
            .collect();
        assert_eq!(documented, HISTORY_PARAMETERS);
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
