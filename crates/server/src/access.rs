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
//!
//! Owns this policy and these answers; the keys and the verdict are in [`crate::auth`].

use api::json::ErrorJson;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

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

/// Checks a gRPC request's `authorization` metadata for a call that needs `needed`.
pub fn grpc_check<T>(
    auth: &Auth,
    request: &tonic::Request<T>,
    needed: Role,
) -> Result<(), tonic::Status> {
    let presented = request.metadata().get("authorization");
    auth.check(presented.map(|v| v.as_bytes()), needed)
        .map_err(|error| {
            if error.is_unauthenticated() {
                tonic::Status::unauthenticated(error.to_string())
            } else {
                tonic::Status::permission_denied(error.to_string())
            }
        })
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
