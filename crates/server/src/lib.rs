//! The server: one ledger node (a replica of its Raft group) reachable over gRPC and HTTP/JSON.
//!
//! Owns the request pipeline (receive on many tasks → a bounded queue → a batcher that
//! coalesces requests into sealed batches, admits them against the ledger's declared capacity
//! and commits them through the replica, with a bounded number in flight → answers once
//! committed and applied; linearizable reads), the two protocol front ends, `/metrics`,
//! `/healthz`, `/v1/status`, the membership endpoints, the change events ([`events`]), `/openapi.json`, client authentication
//! (API keys with roles, [`auth`]), optional TLS on the client listeners ([`client_tls`]),
//! connection limits ([`connections`]), and orderly shutdown. Must not contain ledger rules
//! (they are in `ledger`), storage formats (in `journal`) or Raft details (in `replication`).

mod access;
mod admission;
pub mod auth;
pub mod client_tls;
pub mod config_keys;
pub mod connections;
pub mod console;
pub mod events;
pub mod flow_front;
pub mod front;
mod grpc;
pub mod hot_accounts;
mod http;
pub mod ledger_api;
mod meta_http;
mod meta_node;
pub mod meta_service;
pub mod metrics_http;
mod minting;
mod node;
mod openapi;
mod pipeline;
pub mod registry_node;

pub use auth::{Auth, Role};
pub use front::{ClientServers, ClientServing};
pub use ledger_api::{Ledger, LedgerApi};
pub use meta_node::MetaNode;
pub use node::{Node, NodeConfig, NodeError, PeerSecurity};
pub use pipeline::{CreateResults, Pipeline, PipelineError};
