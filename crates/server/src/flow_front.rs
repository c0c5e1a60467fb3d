//! Flow control on the client listeners: which `flow::Api` each gRPC method and HTTP route is,
//! who calls it (the key [`crate::access`] admitted), and how a refusal is answered — gRPC
//! `RESOURCE_EXHAUSTED` with `retry-after-ms` metadata, HTTP 429 with `Retry-After` and a JSON
//! error marked retryable — and counted (`fincore_flow_refusals_total{api,reason}`).
//!
//! Owns only this mapping. The decisions are `flow`'s; authentication runs before (a refused
//! key never reaches flow control, so an unknown caller cannot spend a known caller's rate).

use std::sync::Arc;

use api::json::ErrorJson;
use axum::extract::MatchedPath;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use flow::{Api, Classify, Rejection};
use telemetry::Metrics;
use tonic::codegen::http;

use crate::auth::Caller;

/// The metadata key (gRPC) of how long to wait before retrying a refused call, in ms.
pub const RETRY_AFTER_MS_KEY: &str = "retry-after-ms";

/// The API of a gRPC method (`/fincore.v1.Ledger/CreateTransfers`); a method not listed is
/// counted as administration.
pub fn grpc_api(path: &str) -> Api {
    match path {
        "/fincore.v1.Ledger/CreateAccounts" => Api::CreateAccounts,
        "/fincore.v1.Ledger/CreateTransfers" => Api::CreateTransfers,
        "/fincore.v1.Ledger/LookupAccounts" => Api::LookupAccounts,
        "/fincore.v1.Ledger/LookupTransfers" => Api::LookupTransfers,
        "/fincore.v1.Ledger/LookupOutcomes" => Api::LookupOutcomes,
        "/fincore.v1.Ledger/GetAccountTransfers" => Api::GetAccountTransfers,
        "/fincore.v1.Ledger/GetAccountBalances" => Api::GetAccountBalances,
        "/fincore.v1.Events/Read" => Api::ReadEvents,
        "/fincore.v1.Events/Subscribe" => Api::SubscribeEvents,
        "/fincore.v1.Sagas/Steps" => Api::SagaSteps,
        "/fincore.v1.Sagas/OpenCopies" => Api::OpenSagaCopies,
        "/fincore.v1.Replica/Status" => Api::ReplicaStatus,
        _ => Api::Admin,
    }
}

/// The API of an HTTP route (the router's template); a route not listed is counted as
/// administration.
pub fn http_api(method: &Method, route: &str) -> Api {
    match (route, method == Method::POST) {
        ("/v1/accounts", true) => Api::CreateAccounts,
        ("/v1/transfers", true) => Api::CreateTransfers,
        ("/v1/accounts/lookup", _) | ("/v1/accounts/{id}", _) => Api::LookupAccounts,
        ("/v1/transfers/lookup", _) | ("/v1/transfers/{id}", _) => Api::LookupTransfers,
        ("/v1/transfers/outcomes", _) => Api::LookupOutcomes,
        ("/v1/accounts/{id}/transfers", _) => Api::GetAccountTransfers,
        ("/v1/accounts/{id}/balances", _) => Api::GetAccountBalances,
        ("/v1/events", _) => Api::ReadEvents,
        ("/v1/ids", _) => Api::MintIds,
        ("/v1/status", _) => Api::Status,
        _ => Api::Admin,
    }
}

fn caller_of<B>(request: &http::Request<B>) -> Option<Arc<str>> {
    request
        .extensions()
        .get::<Caller>()
        .map(|caller| Arc::from(caller.key.as_str()))
}

fn retry_after_ms(rejection: &Rejection) -> u64 {
    u64::try_from(rejection.retry_after.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// Flow control for the gRPC services (behind [`crate::access::GrpcAccess`]).
#[derive(Clone)]
pub struct GrpcFlow {
    pub metrics: Arc<Metrics>,
}

impl<B> Classify<B> for GrpcFlow {
    type Response = http::Response<tonic::body::Body>;

    fn classify(&self, request: &http::Request<B>) -> Option<(Api, Option<Arc<str>>)> {
        Some((grpc_api(request.uri().path()), caller_of(request)))
    }

    fn refuse(&self, rejection: &Rejection) -> Self::Response {
        self.metrics
            .flow_refused(rejection.api.name(), rejection.reason.label());
        let mut status = tonic::Status::resource_exhausted(rejection.to_string());
        let metadata = status.metadata_mut();
        metadata.insert(RETRY_AFTER_MS_KEY, retry_after_ms(rejection).into());
        status.into_http()
    }
}

/// Flow control for the HTTP routes (inside [`crate::access::http_layer`], which puts the
/// caller on the request); the open routes pass.
#[derive(Clone)]
pub struct HttpFlow {
    pub metrics: Arc<Metrics>,
}

impl Classify<axum::body::Body> for HttpFlow {
    type Response = Response;

    fn classify(
        &self,
        request: &http::Request<axum::body::Body>,
    ) -> Option<(Api, Option<Arc<str>>)> {
        let route = request
            .extensions()
            .get::<MatchedPath>()
            .map_or(request.uri().path(), MatchedPath::as_str);
        let digest = crate::access::asks_for_digest(request.uri());
        crate::access::http_role(request.method(), route, digest)?;
        Some((http_api(request.method(), route), caller_of(request)))
    }

    fn refuse(&self, rejection: &Rejection) -> Response {
        self.metrics
            .flow_refused(rejection.api.name(), rejection.reason.label());
        let body = ErrorJson {
            error: rejection.to_string(),
            field: None,
            retryable: true,
            leader_id: None,
            leader_grpc: None,
            leader_http: None,
        };
        let mut response = (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
        let seconds = retry_after_ms(rejection).div_ceil(1_000);
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from_str(&seconds.to_string()).expect("digits are a header value"),
        );
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_client_method_and_route_has_its_api_and_the_unknown_are_administration() {
        for api in Api::ALL {
            // Every API but administration is reached by some gRPC method or HTTP route.
            let grpc = [
                "CreateAccounts",
                "CreateTransfers",
                "LookupAccounts",
                "LookupTransfers",
                "LookupOutcomes",
                "GetAccountTransfers",
                "GetAccountBalances",
            ]
            .iter()
            .map(|m| format!("/fincore.v1.Ledger/{m}"))
            .chain(
                [
                    "/fincore.v1.Events/Read",
                    "/fincore.v1.Events/Subscribe",
                    "/fincore.v1.Sagas/Steps",
                    "/fincore.v1.Sagas/OpenCopies",
                    "/fincore.v1.Replica/Status",
                ]
                .map(String::from),
            )
            .any(|path| grpc_api(&path) == api);
            let http = [(Method::GET, "/v1/ids"), (Method::GET, "/v1/status")]
                .iter()
                .any(|(method, route)| http_api(method, route) == api);
            assert!(grpc || http || api == Api::Admin, "{api}");
        }
        assert_eq!(grpc_api("/fincore.v1.Ledger/DropEverything"), Api::Admin);
        assert_eq!(http_api(&Method::GET, "/v1/accounts"), Api::Admin);
        assert_eq!(http_api(&Method::POST, "/v1/admin/replicas"), Api::Admin);
        assert_eq!(
            http_api(&Method::GET, "/v1/accounts/{id}"),
            Api::LookupAccounts
        );
        assert_eq!(
            http_api(&Method::GET, "/v1/accounts/{id}/balances"),
            Api::GetAccountBalances
        );
    }
}
