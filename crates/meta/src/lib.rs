//! The meta group: a small Raft group — the same log, transport, peer TLS and membership
//! rules as a ledger group (`replication`) — whose replicated state is the cluster map
//! (`cluster::ClusterMap`: groups, their members, the slot table, an epoch) and the config
//! center (`config.rs`: versioned keys with audit history, rollback and gray releases).
//!
//! `state.rs` owns the rules a change to the map passes (compare-and-set on the epoch, then
//! `ClusterMap::check_successor`) and the encoding of commands and of the state;
//! `group.rs` runs the group for a process and tells watchers of each new map. This crate
//! must not route requests or dial ledger groups: gateways and nodes read the map from it.

pub mod config;
mod group;
mod state;

pub use config::{
    ConfigCommand, ConfigRefusal, ConfigStore, ConfigView, GrayTarget, HistoryView, KeyView,
};
pub use group::{ConfigWatch, MapWatch, MetaError, MetaGroup, MetaReplica};
pub use state::{MapChange, MetaCommand, MetaState};
