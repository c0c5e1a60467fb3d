//! Wire types: the gRPC protocol (generated from `proto/fincore/v1/*.proto`) and the
//! HTTP/JSON types, with conversions to and from `ledger` types.
//!
//! Owns the wire formats, their validation (a malformed field is an error naming it) and their
//! JSON Schemas ([`schema`]; the derived ones behind the `openapi` feature): every
//! HTTP request and response body, the ledger's and the operator endpoints' alike, is a type in
//! [`json`]. Must not contain server logic, nor depend on `replication` (clients use this crate
//! and must not pull in the consensus library).

pub mod client_report;
pub mod convert;
pub mod events;
pub mod json;
pub mod json_number;
pub mod schema;
#[cfg(test)]
mod widest;

/// Generated protobuf types and the `Ledger`, `Sagas` and `Events` gRPC services.
pub mod proto {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("fincore.v1");
}
