//! Replication: the ledger as a Raft state machine, with the journal as the Raft log.
//!
//! Owns the one place where openraft (pinned to an exact version) meets fincore: the type
//! configuration, the log storage on top of `journal` (one Raft entry = one journal record =
//! one sealed batch; votes kept durable beside it), the state machine wrapper around
//! `ledger::StateMachine` with its snapshots, and the replica-to-replica transport over gRPC.
//! Nothing outside this crate names an openraft type, so a version bump touches only here.

mod applier;
mod log_store;
mod network;
mod replica;
mod state_machine;
mod types;
mod verify;

pub use journal::SyncObserver;
pub use log_store::clamp_range;
pub use network::RaftTransportService;
pub use replica::{Replica, ReplicaConfig, ReplicaStatus, Role, WriteError};
pub use state_machine::SharedState;
pub use types::{BatchOutcome, NodeId, PeerNode, SealedBatch};
pub use verify::{VerifyReport, is_replica_dir, verify};

/// openraft's side of the log storage, public only so that this crate's own tests
/// (`tests/log_store.rs`) can drive it through openraft's storage traits. Not API: nothing
/// outside `replication` may use it.
#[doc(hidden)]
pub use {log_store::LogStore, types::TypeConfig};

/// Generated transport protocol.
pub mod proto {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("fincore.raft.v1");
}
