//! The simulator's openraft configuration: the production types (the replication crate's
//! `LedgerConfig`: sealed batches in, batch outcomes out, standard Raft leader ids, peer
//! addresses) on a runtime whose random choices (election timeouts) come from the run's seed.

use openraft::impls::TokioRuntime;
use openraft_rt::deterministic_rng::DeterministicRng;
use replication::openraft_side::{LedgerConfig, LedgerStateMachine, StdLeaderId};
use replication::{BatchOutcome, PeerNode, SealedBatch};

/// Tokio (on one thread, with paused time) with openraft's seeded RNG.
pub type SimRuntime = DeterministicRng<TokioRuntime>;

openraft::declare_raft_types!(
    /// The production types on the deterministic runtime.
    pub SimConfig:
        D = SealedBatch,
        R = BatchOutcome,
        NodeId = u64,
        Node = PeerNode,
        LeaderId = StdLeaderId,
        AsyncRuntime = SimRuntime,
);

impl LedgerConfig for SimConfig {}

pub type NodeId = u64;
/// The production state machine, driven by the simulator.
pub type SimMachine = LedgerStateMachine<SimConfig>;
pub type SimRaft = openraft::Raft<SimConfig, SimMachine>;
pub type Entry = openraft::type_config::alias::EntryOf<SimConfig>;
pub type LogId = openraft::type_config::alias::LogIdOf<SimConfig>;
pub type Vote = openraft::type_config::alias::VoteOf<SimConfig>;

/// Spawns a task on the simulation's runtime (it inherits a seed for openraft's RNG).
pub fn spawn<F>(future: F)
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    drop(<SimRuntime as openraft::AsyncRuntime>::spawn(future));
}
