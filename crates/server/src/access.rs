//! Which call needs which role, and how each protocol refuses one that lacks it.
//!
//! HTTP: `/healthz`, `/metrics`, `/openapi.json`, `/v1/status` without the digest and the live
//! console (`/console…`) stay open (load-balancer probes, scrapers, leader discovery and the
//! operators' view show no ledger data); every other
//! `/v1/…` route needs a key: `read` for lookups, outcomes, history and balances (lookup POSTs included),
//! `write` for `POST /v1/accounts` and `POST /v1/transfers`, `admin` for `/v1/admin/…` and
//! `/v1/status?digest=…`. A refusal is 401 with `WWW-Authenticate: Bearer` (no key, a malformed
//! one, an unknown one) or 403 naming the role needed, in the usual JSON error format. The rule
//! is chosen by the matched route's template, never the raw path; an unlisted route needs
//! `admin`; a path that matches no route is a 404 for anyone.
//!
//! gRPC (the `fincore.v1.Ledger`, `Events`, `Sagas` and `Meta` services; the replica transport on the
//! same port is not a client API): `authorization: Bearer …` metadata; UNAUTHENTICATED or
//! PERMISSION_DENIED.
//! [`GrpcAccess`] wraps the service and refuses from the headers, before the body is decoded;
//! it also puts the connection's client identity (mutual TLS) on the request for the handlers,
//! counts what an admitted caller reports of its earlier calls (`api::client_report`), and runs
//! an admitted call inside its trace span (`telemetry::trace::server_span`, following the
//! caller's W3C `traceparent`).
//!
//! Owns this policy and these answers; the keys and the verdict are in [`crate::auth`].

use api::json::ErrorJson;
use std::collections::HashMap;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::codegen::{Service, http};
use tonic::server::NamedService;

use std::sync::Arc;

use telemetry::Metrics;
use tracing::Instrument;

use flow::FlowService;

use crate::auth::{Auth, AuthError, Caller, Role};
use crate::flow_front::GrpcFlow;

/// The role a request to the HTTP route `route` (the router's template, such as
/// `/v1/accounts/{id}`, never the raw path, so no spelling of a path can pick another rule)
/// needs; `None` for the open routes. `digest` says whether the query asks for the state
/// digest. A route not listed here (one added later and forgotten) needs `admin`.
pub fn http_role(method: &Method, route: &str, digest: bool) -> Option<Role> {
    match route {
        "/healthz" | "/metrics" | "/openapi.json" => None,
        path if crate::console::PATHS.contains(&path) => None,
        "/v1/status" => digest.then_some(Role::Admin),
        "/v1/accounts" | "/v1/transfers" if method == Method::POST => Some(Role::Write),
        "/v1/accounts/lookup"
        | "/v1/transfers/lookup"
        | "/v1/transfers/outcomes"
        | "/v1/accounts/{id}"
        | "/v1/transfers/{id}"
        | "/v1/accounts/{id}/transfers"
        | "/v1/accounts/{id}/balances"
        | "/v1/ids"
        | "/v1/events" => Some(Role::Read),
        // A meta replica's config center: read by anyone with a key, changed by `admin`.
        "/v1/config" | "/v1/config/{key}" | "/v1/config/{key}/history" if method == Method::GET => {
            Some(Role::Read)
        }
        _ => Some(Role::Admin),
    }
}

/// Whether a query asks for the state digest, decoded exactly as the handler decodes it (so
/// `dig%65st=true` counts); a query that does not decode counts as asking.
pub(crate) fn asks_for_digest(uri: &http::Uri) -> bool {
    match axum::extract::Query::<HashMap<String, String>>::try_from_uri(uri) {
        Ok(query) => query
            .get("digest")
            .is_some_and(|value| !matches!(value.as_str(), "false" | "0")),
        Err(_) => true,
    }
}

/// The HTTP answer to a refused request.
pub fn http_refusal(error: &AuthError) -> Response {
    let status = if error.is_unauthenticated() {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::FORBIDDEN
    };
    let body = ErrorJson {
        error: error.to_string(),
        field: Some("authorization".into()),
        retryable: false,
        leader_id: None,
        leader_grpc: None,
        leader_http: None,
    };
    let mut response = (status, axum::Json(body)).into_response();
    if error.is_unauthenticated() {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

/// Who may call, how much (flow control, after the key is checked), and where refusals are
/// counted.
#[derive(Clone)]
pub struct Access {
    pub auth: Auth,
    pub metrics: Arc<Metrics>,
    pub flow: Arc<flow::Gate>,
}

impl Access {
    /// The verdict on a call that presented `authorization` and needs `needed`; a refusal is
    /// counted and logged (at debug: an attacker must not be able to flood the log).
    fn check(
        &self,
        protocol: &'static str,
        call: &str,
        authorization: Option<&[u8]>,
        needed: Role,
    ) -> Result<Option<Caller>, AuthError> {
        self.auth.check(authorization, needed).inspect_err(|error| {
            self.metrics.auth_refused(protocol, error.label());
            tracing::debug!(%error, protocol, call, "refused a client call");
        })
    }
}

/// The middleware in front of every HTTP route (a route layer: it runs once the router has
/// matched a route; a request that matches none gets the 404 fallback, which shows nothing).
pub async fn http_layer(State(access): State<Access>, request: Request, next: Next) -> Response {
    let uri = request.uri();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(uri.path(), MatchedPath::as_str);
    if let Some(needed) = http_role(request.method(), route, asks_for_digest(uri)) {
        let presented = request.headers().get(header::AUTHORIZATION);
        let presented = presented.map(HeaderValue::as_bytes);
        let caller = match access.check("http", route, presented, needed) {
            Ok(caller) => caller,
            Err(error) => return http_refusal(&error),
        };
        // Probes and scrapes (the open routes) are not traced.
        let headers = request.headers();
        let span = telemetry::trace::server_span(
            "http",
            &format!("{} {route}", request.method()),
            None,
            |name| headers.get(name).and_then(|value| value.to_str().ok()),
        );
        let mut request = request;
        if let Some(caller) = caller {
            // Flow control (the next layer) limits by it.
            request.extensions_mut().insert(caller);
        }
        return next.run(request).instrument(span).await;
    }
    next.run(request).await
}

/// The role a gRPC method (`/fincore.v1.Ledger/NAME`) needs. A method not listed here (one
/// added later and forgotten) needs `admin`, so a new write can never slip through as a read.
pub fn grpc_role(path: &str) -> Role {
    // The change events are reads, whatever their methods are called; so is a replica's own
    // status (what consoles poll: the figures an open `/metrics` shows too).
    if path.starts_with("/fincore.v1.Events/") || path == "/fincore.v1.Replica/Status" {
        return Role::Read;
    }
    match path.rsplit('/').next().unwrap_or("") {
        "CreateAccounts" | "CreateTransfers" => Role::Write,
        // The gateways' `Sagas` service: a reservation may book money against clearing.
        "Steps" | "OpenCopies" => Role::Admin,
        "LookupAccounts"
        | "LookupTransfers"
        | "LookupOutcomes"
        | "GetAccountTransfers"
        | "GetAccountBalances" => Role::Read,
        // The meta group's map: read and watched by gateways and nodes, changed by operators.
        "GetMap" | "WatchMap" => Role::Read,
        // The config center: read and watched by gateways and nodes, changed by operators.
        "GetConfig" | "WatchConfig" | "ConfigHistory" => Role::Read,
        "SetMap" => Role::Admin,
        _ => Role::Admin,
    }
}

/// Metadata key by which a caller names the group it means to reach (a gateway, from its
/// cluster map): a node of another group refuses the call (FAILED_PRECONDITION) instead of
/// serving accounts the caller's map places elsewhere.
pub const GROUP_KEY: &str = "fincore-group";

/// A gRPC service behind the role check and then flow control (`crate::flow_front`). It refuses
/// from the request's headers alone, before the body is read or decoded, so a caller without a
/// key cannot make the node decode a message. A call naming a group ([`GROUP_KEY`]) is served
/// only if it is this server's group, unless the service picks the group from the call itself
/// (a gateway's `Events`).
#[derive(Clone)]
pub struct GrpcAccess<S> {
    inner: FlowService<S, GrpcFlow>,
    access: Access,
    groups: Groups,
}

/// Which calls naming a group a [`GrpcAccess`] lets through.
#[derive(Clone)]
enum Groups {
    /// Only those naming this group (`None`: a gateway's ledger service, or a replica made
    /// before group ids, which refuse every call naming a group).
    Serves(Option<Arc<str>>),
    /// All: the service reads the group a call names and serves or refuses it itself.
    NamedByCall,
}

impl<S> GrpcAccess<S> {
    pub fn new(inner: S, access: Access, group: Option<String>) -> GrpcAccess<S> {
        GrpcAccess {
            inner: Self::flow(inner, &access),
            access,
            groups: Groups::Serves(group.map(Arc::from)),
        }
    }

    /// A service that serves several groups and checks the group each call names itself (a
    /// gateway's change events): the role is checked here, the group there.
    pub fn naming_groups_itself(inner: S, access: Access) -> GrpcAccess<S> {
        GrpcAccess {
            inner: Self::flow(inner, &access),
            access,
            groups: Groups::NamedByCall,
        }
    }

    fn flow(inner: S, access: &Access) -> FlowService<S, GrpcFlow> {
        let classify = GrpcFlow {
            metrics: Arc::clone(&access.metrics),
        };
        FlowService::new(inner, Arc::clone(&access.flow), classify)
    }

    /// Why a call naming `named` must not be served here, if it must not.
    fn other_group(&self, named: &[u8]) -> Option<String> {
        let named = String::from_utf8_lossy(named);
        match &self.groups {
            Groups::NamedByCall => None,
            Groups::Serves(Some(group)) if group.as_bytes() == named.as_bytes() => None,
            Groups::Serves(Some(group)) => Some(format!(
                "this node serves group {group}, not group {named}: the caller's cluster map names the wrong addresses for group {named}"
            )),
            Groups::Serves(None) => Some(format!(
                "this server belongs to no single group, so it cannot serve a call meant for group {named}"
            )),
        }
    }
}

impl<S: NamedService> NamedService for GrpcAccess<S> {
    const NAME: &'static str = S::NAME;
}

type GrpcResponse = http::Response<tonic::body::Body>;

impl<S, B> Service<http::Request<B>> for GrpcAccess<S>
where
    S: Service<http::Request<B>, Response = GrpcResponse> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = GrpcResponse;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<GrpcResponse, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        crate::connections::attach_grpc_identity(&mut request);
        let path = request.uri().path();
        let presented = request.headers().get("authorization");
        let presented = presented.map(|v| v.as_bytes());
        match self.access.check("grpc", path, presented, grpc_role(path)) {
            Ok(caller) => match request
                .headers()
                .get(GROUP_KEY)
                .and_then(|named| self.other_group(named.as_bytes()))
            {
                None => {
                    // Only a caller let in may say what it saw; the labels come from closed
                    // sets (`api::client_report`), never from the header's text.
                    if let Some(value) = request.headers().get(api::client_report::HEADER) {
                        let (reports, malformed) = api::client_report::decode(value.as_bytes());
                        for report in reports {
                            self.access.metrics.client_observed(
                                report.operation,
                                report.outcome.as_str(),
                                report.elapsed,
                            );
                        }
                        self.access.metrics.client_reports_malformed(malformed);
                    }
                    let headers = request.headers();
                    let group = match &self.groups {
                        Groups::Serves(group) => group.as_deref(),
                        Groups::NamedByCall => headers.get(GROUP_KEY).and_then(|v| v.to_str().ok()),
                    };
                    let span = telemetry::trace::server_span(
                        "grpc",
                        path.trim_start_matches('/'),
                        group,
                        |name| headers.get(name).and_then(|value| value.to_str().ok()),
                    );
                    if let Some(caller) = caller {
                        request.extensions_mut().insert(caller);
                    }
                    Box::pin(self.inner.call(request).instrument(span))
                }
                Some(refusal) => Box::pin(std::future::ready(Ok(
                    tonic::Status::failed_precondition(refusal).into_http(),
                ))),
            },
            Err(error) => {
                let status = if error.is_unauthenticated() {
                    tonic::Status::unauthenticated(error.to_string())
                } else {
                    tonic::Status::permission_denied(error.to_string())
                };
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_route_needs_the_role_its_effect_calls_for() {
        let cases = [
            (Method::GET, "/healthz", false, None),
            (Method::GET, "/metrics", false, None),
            (Method::GET, "/console", false, None),
            (Method::GET, "/console/events", false, None),
            (Method::GET, "/console/state", false, None),
            (Method::GET, "/openapi.json", false, None),
            (Method::GET, "/v1/status", false, None),
            (Method::GET, "/v1/status", true, Some(Role::Admin)),
            (Method::POST, "/v1/accounts", false, Some(Role::Write)),
            (Method::POST, "/v1/transfers", false, Some(Role::Write)),
            (
                Method::POST,
                "/v1/transfers/lookup",
                false,
                Some(Role::Read),
            ),
            (
                Method::POST,
                "/v1/transfers/outcomes",
                false,
                Some(Role::Read),
            ),
            (Method::GET, "/v1/accounts/{id}", false, Some(Role::Read)),
            (Method::GET, "/v1/ids", false, Some(Role::Read)),
            (
                Method::GET,
                "/v1/accounts/{id}/transfers",
                false,
                Some(Role::Read),
            ),
            (Method::POST, "/v1/admin/replicas", false, Some(Role::Admin)),
            (
                Method::DELETE,
                "/v1/admin/replicas/{id}",
                false,
                Some(Role::Admin),
            ),
            (Method::PUT, "/v1/accounts", false, Some(Role::Admin)),
            (Method::GET, "/v1/config", false, Some(Role::Read)),
            (Method::GET, "/v1/config/{key}", false, Some(Role::Read)),
            (
                Method::GET,
                "/v1/config/{key}/history",
                false,
                Some(Role::Read),
            ),
            (Method::PUT, "/v1/config/{key}", false, Some(Role::Admin)),
            (
                Method::POST,
                "/v1/config/{key}/rollback",
                false,
                Some(Role::Admin),
            ),
            (
                Method::POST,
                "/v1/config/{key}/gray",
                false,
                Some(Role::Admin),
            ),
            (
                Method::POST,
                "/v1/config/{key}/promote",
                false,
                Some(Role::Admin),
            ),
            (
                Method::GET,
                "/v1/a-route-added-later",
                false,
                Some(Role::Admin),
            ),
        ];
        for (method, route, digest, role) in cases {
            assert_eq!(http_role(&method, route, digest), role, "{method} {route}");
        }
    }

    #[test]
    fn the_digest_is_asked_for_however_the_query_spells_it() {
        for (query, asks) in [
            ("", false),
            ("?digest=false", false),
            ("?digest=0", false),
            ("?digest=true", true),
            ("?digest=1", true),
            ("?dig%65st=true", true),
            ("?digest=%74rue", true),
            ("?digest=maybe", true),
            ("?x=1&digest", true),
        ] {
            let uri: http::Uri = format!("/v1/status{query}").parse().unwrap();
            assert_eq!(asks_for_digest(&uri), asks, "{query}");
        }
    }

    #[test]
    fn the_openapi_document_states_the_role_of_every_route_as_enforced() {
        let openapi: serde_json::Value =
            serde_json::from_str(crate::openapi::document_json()).unwrap();
        assert_eq!(
            openapi["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        for (path, operations) in openapi["paths"].as_object().unwrap() {
            for (method, operation) in operations.as_object().unwrap() {
                let method: Method = method.to_uppercase().parse().unwrap();
                let role = http_role(&method, path, false);
                let open = operation["security"] == serde_json::json!([]);
                assert_eq!(
                    open,
                    role.is_none() && path != "/v1/status",
                    "{method} {path}"
                );
                let description = operation["description"].as_str().unwrap_or("");
                let responses = &operation["responses"];
                if let Some(role) = role.or((path == "/v1/status").then_some(Role::Admin)) {
                    assert!(
                        description.contains(&format!("role {role}")),
                        "{method} {path}"
                    );
                    assert!(responses["401"].is_object() && responses["403"].is_object());
                }
            }
        }
    }

    #[test]
    fn each_grpc_method_needs_its_role_and_an_unknown_one_needs_admin() {
        for (method, role) in [
            ("CreateAccounts", Role::Write),
            ("CreateTransfers", Role::Write),
            ("Steps", Role::Admin),
            ("OpenCopies", Role::Admin),
            ("LookupAccounts", Role::Read),
            ("LookupTransfers", Role::Read),
            ("GetAccountTransfers", Role::Read),
            ("GetAccountBalances", Role::Read),
            ("DropEverything", Role::Admin),
        ] {
            assert_eq!(grpc_role(&format!("/fincore.v1.Ledger/{method}")), role);
        }
        for (method, role) in [
            ("GetMap", Role::Read),
            ("WatchMap", Role::Read),
            ("SetMap", Role::Admin),
            ("GetConfig", Role::Read),
            ("WatchConfig", Role::Read),
            ("ConfigHistory", Role::Read),
            ("SetConfig", Role::Admin),
            ("RollbackConfig", Role::Admin),
            ("GrayConfig", Role::Admin),
            ("PromoteConfig", Role::Admin),
            ("AbandonConfig", Role::Admin),
        ] {
            assert_eq!(grpc_role(&format!("/fincore.v1.Meta/{method}")), role);
        }
        assert_eq!(grpc_role("/fincore.v1.Replica/Status"), Role::Read);
        // Only that one: a `Status` of another service is not read by its name alone.
        assert_eq!(grpc_role("/fincore.v1.Meta/Status"), Role::Admin);
    }

    #[test]
    fn a_refusal_is_401_with_a_challenge_or_403_naming_the_role() {
        let missing = http_refusal(&AuthError::Missing);
        assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(missing.headers()[header::WWW_AUTHENTICATE], "Bearer");
        let forbidden = http_refusal(&AuthError::Forbidden {
            key: "k".into(),
            role: Role::Read,
            needed: Role::Write,
        });
        assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);
        assert!(forbidden.headers().get(header::WWW_AUTHENTICATE).is_none());
    }
}
