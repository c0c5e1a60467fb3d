//! Replication: the ledger (or a small state held in memory) as a Raft state machine, with the
//! journal as the Raft log.
//!
//! Owns the one place where openraft (pinned to an exact version) meets fincore: the type
//! configuration, the log storage on top of `journal` (one Raft entry = one journal record =
//! one sealed batch; votes kept durable beside it), the state machine wrapper around
//! `ledger::StateMachine` with its snapshots (files, streamed between replicas in chunks), the
//! data directory's format marker, explicit membership (which start may create or join a group
//! on which directory), and the
//! replica-to-replica transport over gRPC.
//! Nothing outside this crate names an openraft type, so a version bump touches only here.

mod applier;
pub mod data_dir;
pub mod dev_certs;
mod digest_gate;
pub mod event_log;
mod log_store;
mod machine;
pub mod membership;
mod network;
pub mod peer_tls;
mod raft_config;
mod replica;
pub mod secret_file;
mod small_state;
mod snapshot;
mod state_machine;
mod storage_options;
mod types;
mod verify;

pub use digest_gate::DigestBusy;
pub use journal::{GroupCommitStats, SyncObserver};
pub use log_store::clamp_range;
pub use machine::ReplicaMachine;
pub use network::RaftTransportService;
pub use replica::{Replica, ReplicaConfig, ReplicaStatus, Role, WriteError, Written};
pub use small_state::{SmallState, SmallStateMachine};
pub use state_machine::{SNAPSHOT_INSTALLED_FROM_PEER, SharedState};
pub use types::{ApplyTiming, BatchOutcome, NodeId, PeerNode, SealedBatch};
pub use verify::{VerifyReport, verify};

/// openraft's side of a replica, public for the deterministic simulator (`sim`), which drives
/// this very log store and state machine under openraft on its seeded runtime, and for this
/// crate's storage tests. Not the node's API: nothing else outside `replication` uses it.
pub mod openraft_side {
    pub use crate::log_store::{LogStore, journal_index};
    pub use crate::raft_config::{RaftTiming, raft_config};
    pub use crate::snapshot::{
        SnapshotChunks, SnapshotData, SnapshotOffer, SnapshotReceiver, SnapshotVote,
        snapshot_timeout,
    };
    pub use crate::state_machine::LedgerStateMachine;
    pub use crate::storage_options::{ApplyObserver, PlantedBug, StorageOptions, SyncDelay};
    pub use crate::types::{LedgerConfig, LedgerEntry, StdLeaderId, TypeConfig};
}

/// Generated transport protocol.
pub mod proto {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("fincore.raft.v1");
}
