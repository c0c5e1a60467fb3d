//! The OpenAPI document of the HTTP API (`GET /openapi.json`), generated from the code: each
//! route with its parameters, bodies and answers from its handler's `#[utoipa::path]` in
//! [`crate::http`] (routed and documented by the same `utoipa_axum::routes!` call, so no route
//! is served undocumented), the bodies' schemas from `api::json` and `api::schema`, and who may
//! call from [`crate::access::http_role`].
//!
//! Owns what every route shares (the bearer scheme; 401, 403 and flow control's 429 wherever a
//! role is needed; the 503 of the request deadline, the busy queue and an unavailable replica)
//! and the named answers that handlers list (`BadInput`, `BodyTooLarge`, …). Must not route or
//! handle requests.

use std::sync::OnceLock;

use api::json::ErrorJson;
use api::schema::{
    HistoryAccountId, IdCount, IdPath, NodeInteger, RowLimit, TimestampBound, U16, U32, U64Query,
    U128Query,
};
use axum::http::Method;
use utoipa::openapi::header::Header;
use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{AnyOfBuilder, ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Content, OpenApi, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{IntoResponses, ToResponse, ToSchema};

use crate::access::http_role;
use crate::auth::Role;

/// The security scheme's name in `components.securitySchemes`.
const BEARER: &str = "bearer";

/// A node's document as served, built once.
pub fn document_json() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        serde_json::to_string_pretty(&document()).expect("an OpenAPI document is plain JSON")
    })
}

/// A gateway's document as served, built once: the node's without the replica's own routes
/// (status and membership), which a gateway does not serve; every other path is the node's.
pub fn gateway_document_json() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        let document = completed(crate::http::documented_routes(false));
        serde_json::to_string_pretty(&document).expect("an OpenAPI document is plain JSON")
    })
}

/// A node's document: the routes' own descriptions, completed with what they share.
pub fn document() -> OpenApi {
    completed(crate::http::documented_routes(true))
}

/// `document`, the routes' own descriptions, completed with what they share.
fn completed(document: OpenApi) -> OpenApi {
    let mut document = with_named_answers(document);
    let components = document.components.get_or_insert_with(Default::default);
    // Parameters refer to these by name; utoipa registers only the schemas of bodies.
    for (name, schema) in [
        named::<IdPath>(),
        named::<HistoryAccountId>(),
        named::<RowLimit>(),
        named::<TimestampBound>(),
        named::<U128Query>(),
        named::<IdCount>(),
        named::<U64Query>(),
        named::<U32>(),
        named::<U16>(),
        named::<NodeInteger>(),
        named::<api::schema::EventsLimit>(),
        named::<api::schema::EventsAfter>(),
    ] {
        components.schemas.entry(name).or_insert(schema);
    }
    components.add_security_scheme(
        BEARER,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "An API key made by `fincore keys create --role read|write|admin`, sent as \
                     `Authorization: Bearer fincore_…`. Roles are ordered: admin may do what \
                     write may, write what read may. A node started with `--insecure-no-auth` \
                     (loopback only) asks for none.",
                ))
                .build(),
        ),
    );
    for (path, item) in document.paths.paths.iter_mut() {
        let operations = [
            (Method::GET, &mut item.get),
            (Method::POST, &mut item.post),
            (Method::PUT, &mut item.put),
            (Method::DELETE, &mut item.delete),
            (Method::PATCH, &mut item.patch),
        ];
        for (method, operation) in operations {
            if let Some(operation) = operation.as_mut() {
                complete(path, &method, operation);
            }
        }
    }
    document
}

fn named<T: ToSchema>() -> (String, RefOr<Schema>) {
    (T::name().into_owned(), T::schema())
}

/// The document's skeleton: what the API is, before any route is added.
pub fn skeleton() -> OpenApi {
    #[derive(utoipa::OpenApi)]
    #[openapi(
        info(
            title = "fincore ledger HTTP API",
            version = "1",
            description = "Double-entry ledger with TigerBeetle's account/transfer semantics. \
                Every event of a create request gets one result, in order; resubmitting the \
                same id is idempotent (result `exists`), so a client may always retry with the \
                same ids. Integers of 64 bits and more are decimal strings (requests may also \
                give JSON integers up to 2^64-1). Every `/v1/` route needs an API key \
                (`Authorization: Bearer …`) with the role its description names, except \
                `GET /v1/status` without the digest; `/healthz`, `/metrics` and \
                `/openapi.json` are open. Bad input is answered 4xx with an `Error` body \
                naming the field, and changes nothing. A path not listed here is answered 404, \
                a method a path does not list 405 with `Allow` (both with an `Error` body).",
            license(name = "Apache-2.0", identifier = "Apache-2.0")
        ),
        components(schemas(ErrorJson))
    )]
    struct Skeleton;
    <Skeleton as utoipa::OpenApi>::openapi()
}

/// Adds to one operation what it shares with the others: its security and role, 401 and 403
/// where a role is needed, and the 503 that any route may answer.
fn complete(path: &str, method: &Method, operation: &mut Operation) {
    let always = http_role(method, path, false);
    let with_digest = http_role(method, path, true);
    let bearer = || SecurityRequirement::new(BEARER, Vec::<String>::new());
    let (security, note) = match (always, with_digest) {
        (Some(role), _) => (vec![bearer()], needs(role)),
        (None, Some(role)) => (
            vec![SecurityRequirement::default(), bearer()],
            format!(
                "Open without `digest`; with `digest=true` it {}",
                needs(role)
            ),
        ),
        (None, None) => (Vec::new(), "Open: needs no API key.".to_string()),
    };
    operation.security = Some(security);
    let description = operation.description.get_or_insert_with(String::new);
    if !description.is_empty() {
        description.push_str("\n\n");
    }
    description.push_str(&note);
    let responses = &mut operation.responses.responses;
    if always.or(with_digest).is_some() {
        responses.insert("401".into(), reference::<Unauthorized>());
        responses.insert("403".into(), reference::<Forbidden>());
        responses.insert("429".into(), reference::<Limited>());
    }
    match responses.get_mut("503") {
        // The route's own 503 (`/healthz`: the node failed) beside the shared one.
        Some(RefOr::T(own)) => merge_unavailable(own),
        Some(RefOr::Ref(_)) => {}
        None => {
            responses.insert("503".into(), reference::<Unavailable>());
        }
    }
}

fn needs(role: Role) -> String {
    format!("Needs an API key with the role {role} (or a higher one).")
}

/// Lets a route's own 503 body be the shared `Error` body as well (the deadline answers any
/// route with it).
fn merge_unavailable(own: &mut Response) {
    let deadline = " Also: the request took longer than the deadline (an `Error` body, retryable).";
    own.description.push_str(deadline);
    for content in own.content.values_mut() {
        let RefOr::T(content) = content else { continue };
        if let Some(schema) = content.schema.take() {
            content.schema = Some(
                AnyOfBuilder::new()
                    .item(schema)
                    .item(Ref::from_schema_name(ErrorJson::name()))
                    .into(),
            );
        }
    }
    own.headers
        .entry("Retry-After".into())
        .or_insert_with(|| RefOr::T(retry_after()));
}

/// A reference to the named answer `R` (registered in `components.responses` by
/// `with_named_answers`).
fn reference<'r, R: ToResponse<'r>>() -> RefOr<Response> {
    RefOr::Ref(Ref::from_response_name(R::response().0))
}

/// Registers every named answer in `components.responses`, so that references resolve.
fn with_named_answers(mut document: OpenApi) -> OpenApi {
    let components = document.components.get_or_insert_with(Default::default);
    for (name, response) in [
        BadInput::response(),
        BodyTooLarge::response(),
        NotJson::response(),
        NotFound::response(),
        NotLeader::response(),
        Conflict::response(),
        CapacityReached::response(),
        Unauthorized::response(),
        Forbidden::response(),
        Limited::response(),
        Unavailable::response(),
    ] {
        components.responses.insert(name.into(), response);
    }
    document
}

/// The refusals several routes share, by status: a handler lists one set beside its own
/// answers.
macro_rules! answer_set {
    ($(#[$doc:meta])* $name:ident { $($status:literal => $answer:ty,)+ }) => {
        $(#[$doc])*
        pub struct $name;

        impl IntoResponses for $name {
            fn responses() -> std::collections::BTreeMap<String, RefOr<Response>> {
                [$(($status.to_string(), reference::<$answer>()),)+].into_iter().collect()
            }
        }
    };
}

answer_set!(
    /// A create: its body, the leader, the ledger's capacity.
    CreateRefusals {
        307 => NotLeader,
        400 => BadInput,
        413 => BodyTooLarge,
        415 => NotJson,
        507 => CapacityReached,
    }
);

answer_set!(
    /// A lookup by ids in a body.
    LookupRefusals {
        307 => NotLeader,
        400 => BadInput,
        413 => BodyTooLarge,
        415 => NotJson,
    }
);

answer_set!(
    /// A read of one object by the id in its path.
    ReadRefusals {
        307 => NotLeader,
        400 => BadInput,
        404 => NotFound,
    }
);

answer_set!(
    /// A history query.
    HistoryRefusals {
        307 => NotLeader,
        400 => BadInput,
    }
);

/// An answer with an `Error` body.
fn error_answer(description: &str) -> ResponseBuilder {
    ResponseBuilder::new().description(description).content(
        "application/json",
        Content::new(Some(Ref::from_schema_name(ErrorJson::name()))),
    )
}

fn text_header(description: &str) -> Header {
    let mut header = Header::new(ObjectBuilder::new().schema_type(Type::String));
    header.description = Some(description.into());
    header
}

fn retry_after() -> Header {
    text_header("Seconds to wait before sending the same request again (`1`).")
}

macro_rules! named_answer {
    ($(#[$doc:meta])* $name:ident, $answer:expr) => {
        $(#[$doc])*
        pub struct $name;

        impl<'r> ToResponse<'r> for $name {
            fn response() -> (&'r str, RefOr<Response>) {
                (stringify!($name), RefOr::T($answer))
            }
        }
    };
}

named_answer!(
    /// 400: the request is malformed; the error names the field.
    BadInput,
    error_answer(
        "Malformed input: not JSON, a field of the wrong type or out of range, an unknown \
         field or query parameter, no events or more than the limit, or query parameters that \
         contradict each other. `field` names the culprit (`[3].amount`, `ids`, `limit`). \
         Nothing changed."
    )
    .build()
);

named_answer!(
    /// 413: the body is larger than `limits::HTTP_BODY_BYTES_MAX`.
    BodyTooLarge,
    error_answer(&format!(
        "The body exceeds {} bytes; nothing changed.",
        limits::HTTP_BODY_BYTES_MAX
    ))
    .build()
);

named_answer!(
    /// 415: the body is not declared as JSON.
    NotJson,
    error_answer("The body is not declared `Content-Type: application/json`; nothing changed.")
        .build()
);

named_answer!(
    /// 404: what the path names does not exist.
    NotFound,
    error_answer("No account or transfer has this id (`field`: `id`).").build()
);

named_answer!(
    /// 307: this replica is not the leader; `Location` is the same path on the leader.
    NotLeader,
    error_answer(
        "This replica is not the leader: `Location` is the same path on the leader (307 keeps \
         the method and body), and the body names it (`leader_id`, `leader_http`, \
         `leader_grpc`). Nothing changed here."
    )
    .header(
        "Location",
        text_header("The same path and query on the leader's HTTP address.")
    )
    .build()
);

named_answer!(
    /// 409: a membership change the group refuses.
    Conflict,
    error_answer(
        "The group refuses the change (for example: the id is already a voter, or removing it \
         would leave no voter); `field` is `id`. Nothing changed."
    )
    .build()
);

named_answer!(
    /// 507: the ledger's declared capacity would be passed.
    CapacityReached,
    error_answer(
        "The ledger's declared capacity (`--accounts-max`, `--transfers-max`) could be passed; \
         nothing changed. `field` names the limit (`accounts_max` or `transfers_max`). Not \
         retryable until the operator raises the capacity."
    )
    .build()
);

named_answer!(
    /// 401: no key, or one that is malformed or unknown.
    Unauthorized,
    error_answer(
        "No API key, a malformed one, or an unknown (never created or revoked) one; the error \
         says which (`field`: `authorization`)."
    )
    .header(
        "WWW-Authenticate",
        text_header("`Bearer`: the scheme to authenticate with.")
    )
    .build()
);

named_answer!(
    /// 403: the key's role does not allow the call.
    Forbidden,
    error_answer(
        "The API key's role does not allow this call; the error names the role needed \
         (`field`: `authorization`)."
    )
    .build()
);

named_answer!(
    /// 429: refused by flow control; retryable.
    Limited,
    error_answer(
        "Refused by flow control (`docs/flow-control.md`): over a rate limit, the caller's \
         share of its pool or the pool's queue taken, read-only mode, or the API switched off; \
         the error names the API, the reason and the rule. Nothing changed. Retryable \
         (`retryable`: true) after `Retry-After` seconds."
    )
    .header(
        "Retry-After",
        text_header("Whole seconds to wait before sending the same request again (at least 1).")
    )
    .build()
);

named_answer!(
    /// 503: busy, unavailable or over the deadline; retryable.
    Unavailable,
    error_answer(&format!(
        "Retryable (`retryable`: true, `Retry-After`): the node is busy (its queue is full), \
         unavailable (no leader known, shutting down, stopped by a storage failure), or the \
         request took longer than {} s. Nothing changed, except that a write cut off by the \
         deadline may still commit: resend it with the same ids.",
        limits::HTTP_REQUEST_SECONDS_MAX
    ))
    .header("Retry-After", retry_after())
    .build()
);

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `$ref` string in `value`.
    fn references(value: &serde_json::Value, found: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, inner) in map {
                    match (key.as_str(), inner) {
                        ("$ref", serde_json::Value::String(target)) => found.push(target.clone()),
                        _ => references(inner, found),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|i| references(i, found)),
            _ => {}
        }
    }

    #[test]
    fn every_reference_in_the_document_resolves() {
        let document: serde_json::Value = serde_json::from_str(document_json()).unwrap();
        let mut found = Vec::new();
        references(&document, &mut found);
        assert!(found.len() > 20, "{found:?}");
        for target in found {
            let pointer = target.strip_prefix('#').expect("a local reference");
            assert!(
                document.pointer(pointer).is_some(),
                "{target} does not resolve"
            );
        }
    }

    #[test]
    fn a_route_that_needs_a_role_documents_the_key_and_its_refusals() {
        let document: serde_json::Value = serde_json::from_str(document_json()).unwrap();
        let create = &document["paths"]["/v1/transfers"]["post"];
        assert_eq!(create["security"], serde_json::json!([{ BEARER: [] }]));
        for status in ["401", "403", "429", "503"] {
            assert!(
                create["responses"][status].is_object(),
                "{status}: {create}"
            );
        }
        assert!(
            create["description"]
                .as_str()
                .unwrap()
                .contains("role write")
        );
        let health = &document["paths"]["/healthz"]["get"];
        assert_eq!(health["security"], serde_json::json!([]));
        assert!(health["responses"]["401"].is_null(), "{health}");
        let status = &document["paths"]["/v1/status"]["get"];
        assert_eq!(status["security"], serde_json::json!([{}, { BEARER: [] }]));
    }
}
