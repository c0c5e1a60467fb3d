//! Which call needs which role, and how each protocol refuses one that lacks it.
//!
//! HTTP: `/healthz`, `/metrics`, `/openapi.json` and `/v1/status` without the digest stay open
//! (load-balancer probes, scrapers and leader discovery show no ledger data); every other
//! `/v1/…` route needs a key: `read` for lookups, history and balances (lookup POSTs included),
//! `write` for `POST /v1/accounts` and `POST /v1/transfers`, `admin` for `/v1/admin/…` and
//! `/v1/status?digest=…`. A refusal is 401 with `WWW-Authenticate: Bearer` (no key, a malformed
//! one, an unknown one) or 403 naming the role needed, in the usual JSON error format.
//!
//! gRPC (the `fincore.v1.Ledger` service only; the replica transport on the same port is not
//! a client API): `authorization: Bearer …` metadata; UNAUTHENTICATED or PERMISSION_DENIED.
//! [`GrpcAccess`] wraps the service and refuses from the headers, before the body is decoded.
//!
//! Owns this policy and these answers; the keys and the verdict are in [`crate::auth`].

use api::json::ErrorJson;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::codegen::{Service, http};
use tonic::server::NamedService;

use crate::auth::{Auth, AuthError, Role};

/// The role an HTTP request needs; `None` for the open routes (and for paths outside `/v1/`,
/// which are open or do not exist).
pub fn http_role(method: &Method, path: &str, query: Option<&str>) -> Option<Role> {
    if !path.starts_with("/v1/") {
        return None;
    }
    if path == "/v1/status" {
        let digest = query
            .unwrap_or("")
            .split('&')
            .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
            .any(|(key, value)| key == "digest" && !matches!(value, "false" | "0"));
        return digest.then_some(Role::Admin);
    }
    if path == "/v1/admin" || path.starts_with("/v1/admin/") {
        return Some(Role::Admin);
    }
    if method == Method::POST && matches!(path, "/v1/accounts" | "/v1/transfers") {
        return Some(Role::Write);
    }
    Some(Role::Read)
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

/// The middleware in front of every HTTP route.
pub async fn http_layer(State(auth): State<Auth>, request: Request, next: Next) -> Response {
    let uri = request.uri();
    if let Some(needed) = http_role(request.method(), uri.path(), uri.query()) {
        let presented = request.headers().get(header::AUTHORIZATION);
        if let Err(error) = auth.check(presented.map(HeaderValue::as_bytes), needed) {
            tracing::debug!(%error, path = uri.path(), "refused an HTTP request");
            return http_refusal(&error);
        }
    }
    next.run(request).await
}

/// The role a gRPC method (`/fincore.v1.Ledger/NAME`) needs. A method not listed here (one
/// added later and forgotten) needs `admin`, so a new write can never slip through as a read.
pub fn grpc_role(path: &str) -> Role {
    match path.rsplit('/').next().unwrap_or("") {
        "CreateAccounts" | "CreateTransfers" => Role::Write,
        "LookupAccounts" | "LookupTransfers" | "GetAccountTransfers" | "GetAccountBalances" => {
            Role::Read
        }
        _ => Role::Admin,
    }
}

/// A gRPC service behind the role check. It refuses from the request's headers alone, before
/// the body is read or decoded, so a caller without a key cannot make the node decode a
/// message.
#[derive(Clone)]
pub struct GrpcAccess<S> {
    inner: S,
    auth: Auth,
}

impl<S> GrpcAccess<S> {
    pub fn new(inner: S, auth: Auth) -> GrpcAccess<S> {
        GrpcAccess { inner, auth }
    }
}

impl<S: NamedService> NamedService for GrpcAccess<S> {
    const NAME: &'static str = S::NAME;
}

type GrpcResponse = http::Response<tonic::body::Body>;

impl<S, B> Service<http::Request<B>> for GrpcAccess<S>
where
    S: Service<http::Request<B>, Response = GrpcResponse>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = GrpcResponse;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<GrpcResponse, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let needed = grpc_role(request.uri().path());
        let presented = request.headers().get("authorization");
        match self.auth.check(presented.map(|v| v.as_bytes()), needed) {
            Ok(()) => Box::pin(self.inner.call(request)),
            Err(error) => {
                tracing::debug!(%error, path = request.uri().path(), "refused a gRPC call");
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
            (Method::GET, "/healthz", None, None),
            (Method::GET, "/metrics", None, None),
            (Method::GET, "/openapi.json", None, None),
            (Method::GET, "/v1/status", None, None),
            (Method::GET, "/v1/status", Some("digest=false"), None),
            (
                Method::GET,
                "/v1/status",
                Some("digest=true"),
                Some(Role::Admin),
            ),
            (Method::GET, "/v1/status", Some("digest"), Some(Role::Admin)),
            (
                Method::GET,
                "/v1/status",
                Some("x=1&digest=1"),
                Some(Role::Admin),
            ),
            (Method::POST, "/v1/accounts", None, Some(Role::Write)),
            (Method::POST, "/v1/transfers", None, Some(Role::Write)),
            (Method::POST, "/v1/transfers/lookup", None, Some(Role::Read)),
            (Method::GET, "/v1/accounts/7", None, Some(Role::Read)),
            (
                Method::GET,
                "/v1/accounts/7/transfers",
                None,
                Some(Role::Read),
            ),
            (Method::POST, "/v1/admin/replicas", None, Some(Role::Admin)),
            (
                Method::DELETE,
                "/v1/admin/replicas/3",
                None,
                Some(Role::Admin),
            ),
            (Method::GET, "/v1/no-such-route", None, Some(Role::Read)),
        ];
        for (method, path, query, role) in cases {
            assert_eq!(
                http_role(&method, path, query),
                role,
                "{method} {path}?{query:?}"
            );
        }
    }

    #[test]
    fn the_openapi_document_states_the_role_of_every_route_as_enforced() {
        let openapi: serde_json::Value =
            serde_json::from_str(include_str!("openapi.json")).unwrap();
        assert_eq!(
            openapi["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        for (path, operations) in openapi["paths"].as_object().unwrap() {
            let concrete = path.replace("{id}", "1");
            for (method, operation) in operations.as_object().unwrap() {
                let method: Method = method.to_uppercase().parse().unwrap();
                let role = http_role(&method, &concrete, None);
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
            ("LookupAccounts", Role::Read),
            ("LookupTransfers", Role::Read),
            ("GetAccountTransfers", Role::Read),
            ("GetAccountBalances", Role::Read),
            ("DropEverything", Role::Admin),
        ] {
            assert_eq!(grpc_role(&format!("/fincore.v1.Ledger/{method}")), role);
        }
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
