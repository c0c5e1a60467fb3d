//! The server: one ledger node reachable over gRPC and HTTP/JSON.
//!
//! Owns the request pipeline (receive on many tasks → a bounded queue → one engine thread that
//! coalesces requests into sealed batches, journals and applies them → a reply thread that
//! answers only once a batch is durable), the two protocol front ends, `/metrics`,
//! `/healthz`, `/openapi.json`, and orderly shutdown. Must not contain ledger rules (they are
//! in `ledger`) or storage formats (in `journal`).

mod grpc;
mod http;
mod node;
mod pipeline;

pub use node::{Node, NodeConfig, NodeError};
pub use pipeline::{Command, Pipeline, PipelineError, Reply};
