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
mod raft_config;
mod replica;
mod state_machine;
mod storage_options;
mod types;
mod verify;

pub use journal::SyncObserver;
pub use log_store::{LogStore, clamp_range, journal_index};
pub use network::{Raft, RaftTransportService, TransportClient, TransportFactory};
pub use raft_config::{RaftTiming, initializes_group, raft_config};
pub use replica::{Replica, ReplicaConfig, ReplicaStatus, WriteError};
pub use state_machine::{LedgerStateMachine, SharedState};
pub use storage_options::{ApplyObserver, PlantedBug, StorageOptions, SyncDelay};
pub use types::{
    BatchOutcome, LedgerConfig, LedgerEntry, NodeId, PeerNode, SealedBatch, StdLeaderId, TypeConfig,
};
pub use verify::{VerifyReport, is_replica_dir, verify};

/// Generated transport protocol.
pub mod proto {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("fincore.raft.v1");
}
