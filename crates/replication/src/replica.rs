//! One replica of a Raft group: its log, its ledger and its Raft instance. The transport
//! service it returns is mounted by whoever owns the gRPC server (the node shares one port
//! between the ledger API and the replica transport).

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ledger::{Batch, BatchBody, BatchResults, StateDigest};
use openraft::async_runtime::WatchReceiver;
use openraft::raft::ReadPolicy;
use openraft::{Config, SnapshotPolicy};

use crate::log_store::LogStore;
use crate::network::{Raft, RaftTransportService, TransportFactory};
use crate::proto::raft_transport_server::RaftTransportServer;
use crate::state_machine::{LedgerStateMachine, SharedState};
use crate::types::{NodeId, PeerNode, SealedBatch};

/// Timing of a replica group, and a hook for metrics.
#[derive(Clone)]
pub struct ReplicaConfig {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot (and purge the log behind it) every this many entries (0: never).
    pub snapshot_every_entries: u64,
    /// Told the duration of every log fsync and how many entries it made durable.
    pub sync_observer: Option<journal::SyncObserver>,
    /// How this replica reaches each peer's gRPC port, when that differs from the address in
    /// the group's membership (a local proxy, a sidecar).
    pub peer_routes: BTreeMap<NodeId, String>,
}

impl std::fmt::Debug for ReplicaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaConfig")
            .field("heartbeat_interval_ms", &self.heartbeat_interval_ms)
            .field("election_timeout_min_ms", &self.election_timeout_min_ms)
            .field("election_timeout_max_ms", &self.election_timeout_max_ms)
            .field("snapshot_every_entries", &self.snapshot_every_entries)
            .finish_non_exhaustive()
    }
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        ReplicaConfig {
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 300,
            election_timeout_max_ms: 600,
            snapshot_every_entries: limits::RAFT_SNAPSHOT_INTERVAL_ENTRIES_DEFAULT,
            sync_observer: None,
            peer_routes: BTreeMap::new(),
        }
    }
}

/// Why a write or a linearizable read was not served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("this replica is not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<(NodeId, PeerNode)> },
    #[error(
        "the entry was discarded by a leader change; its outcome is unknown, resubmit with the same ids"
    )]
    Unknown { leader: Option<(NodeId, PeerNode)> },
    #[error("replication failed: {0}")]
    Failed(String),
}

/// What [`Replica::status`] reports.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReplicaStatus {
    pub id: NodeId,
    pub role: String,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub last_log_index: Option<u64>,
    pub applied_index: u64,
    /// The digest of the state at `applied_index`; `None` when not asked for (computing it
    /// reads the whole state).
    pub state_digest: Option<String>,
}

/// A running replica.
pub struct Replica {
    id: NodeId,
    raft: Raft,
    machine: LedgerStateMachine,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn leader_of<E>(
    error: &openraft::errors::RaftError<crate::TypeConfig, E>,
) -> Option<(NodeId, PeerNode)>
where
    E: openraft::TryAsRef<openraft::errors::ForwardToLeader<crate::TypeConfig>> + std::error::Error,
{
    error
        .forward_to_leader()
        .and_then(|f| f.leader_id.zip(f.leader_node.clone()))
}

/// "Not the leader" (with the leader's address when known), or a plain failure.
fn not_leader_or_failed<E>(error: openraft::errors::RaftError<crate::TypeConfig, E>) -> WriteError
where
    E: openraft::TryAsRef<openraft::errors::ForwardToLeader<crate::TypeConfig>> + std::error::Error,
{
    if error.forward_to_leader().is_some() {
        WriteError::NotLeader {
            leader: leader_of(&error),
        }
    } else {
        WriteError::Failed(error.to_string())
    }
}

impl Replica {
    /// Opens replica `id` with its data in `dir` (its log, its newest snapshot).
    pub async fn open(id: NodeId, dir: &Path, config: &ReplicaConfig) -> io::Result<Replica> {
        let log = LogStore::open(dir, config.sync_observer.clone())?;
        let machine = LedgerStateMachine::open(dir)?;
        let raft_config = Config {
            cluster_name: "fincore".into(),
            heartbeat_interval: config.heartbeat_interval_ms,
            election_timeout_min: config.election_timeout_min_ms,
            election_timeout_max: config.election_timeout_max_ms,
            snapshot_policy: match config.snapshot_every_entries {
                0 => SnapshotPolicy::Never,
                entries => SnapshotPolicy::LogsSinceLast(entries),
            },
            max_in_snapshot_log_to_keep: limits::RAFT_LOG_KEPT_BEHIND_SNAPSHOT_ENTRIES,
            // Bounds one AppendEntries message (checked against the peer message limit).
            max_payload_entries: limits::RAFT_APPEND_ENTRIES_MAX,
            // A replica whose disk was wiped comes back with an empty log; the leader must
            // start it over (from a snapshot) instead of treating that as a bug and stopping.
            allow_log_reversion: Some(true),
            // A restarted leader must win a new election (standard Raft). Resuming its old term
            // is unsafe when the crash lost entries it had already sent to followers: it would
            // then write different entries under the same (term, index). Found by `fincore sim`.
            enable_leader_restore: Some(false),
            ..Default::default()
        }
        .validate()
        .map_err(io::Error::other)?;
        let raft = Raft::new(
            id,
            Arc::new(raft_config),
            TransportFactory {
                routes: config.peer_routes.clone(),
            },
            log,
            machine.clone(),
        )
        .await
        .map_err(io::Error::other)?;
        Ok(Replica { id, raft, machine })
    }

    /// The service peers send this replica's Raft RPCs to; mount it on the node's gRPC server.
    pub fn transport_service(&self) -> RaftTransportServer<RaftTransportService> {
        RaftTransportService::new(self.raft.clone())
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// The ledger state (for reads).
    pub fn state(&self) -> &SharedState {
        self.machine.state()
    }

    /// The last applied index and the state digest there.
    pub fn applied(&self) -> (u64, StateDigest) {
        self.machine.applied()
    }

    /// True once the group was initialized (by this or another replica).
    pub async fn is_initialized(&self) -> bool {
        self.raft.is_initialized().await.unwrap_or(false)
    }

    /// Makes `members` the initial voters (call on one replica of a new group).
    pub async fn initialize(&self, members: &BTreeMap<NodeId, PeerNode>) -> Result<(), WriteError> {
        self.raft
            .initialize(members.clone())
            .await
            .map_err(|e| WriteError::Failed(e.to_string()))
    }

    /// The leader this replica knows of, with how to reach it.
    pub fn leader(&self) -> Option<(NodeId, PeerNode)> {
        let metrics = self.raft.metrics().borrow_watched().clone();
        let leader = metrics.current_leader?;
        let node = metrics
            .membership_config
            .membership()
            .get_node(&leader)
            .cloned()
            .unwrap_or_default();
        Some((leader, node))
    }

    /// True while Raft runs (false after a fatal error, e.g. a failed fsync).
    pub fn is_running(&self) -> bool {
        self.raft.metrics().borrow_watched().running_state.is_ok()
    }

    /// A one-line view of this replica for operators: role, term, leader, applied index, and
    /// with `with_digest` the state digest there (which costs a pass over the whole state).
    pub fn status(&self, with_digest: bool) -> ReplicaStatus {
        let metrics = self.raft.metrics().borrow_watched().clone();
        let (applied_index, digest) = if with_digest {
            let (index, digest) = self.applied();
            (index, Some(digest.to_string()))
        } else {
            (self.machine.applied_index(), None)
        };
        ReplicaStatus {
            id: self.id,
            role: format!("{:?}", metrics.state).to_lowercase(),
            term: metrics.current_term,
            leader: metrics.current_leader,
            last_log_index: metrics.last_log_index,
            applied_index,
            state_digest: digest,
        }
    }

    /// Adds replica `id` at `node` to the group: first as a learner that catches up (from a
    /// snapshot if needed), then as a voter. Only the leader can do it.
    pub async fn add_replica(&self, id: NodeId, node: PeerNode) -> Result<(), WriteError> {
        self.raft
            .add_learner(id, node, true)
            .await
            .map_err(not_leader_or_failed)?;
        let voters = std::collections::BTreeSet::from([id]);
        self.raft
            .change_membership(openraft::ChangeMembers::AddVoterIds(voters), false)
            .await
            .map_err(not_leader_or_failed)?;
        Ok(())
    }

    /// Removes replica `id` from the group (it stops receiving entries). Only the leader can
    /// do it.
    pub async fn remove_replica(&self, id: NodeId) -> Result<(), WriteError> {
        let ids = std::collections::BTreeSet::from([id]);
        self.raft
            .change_membership(openraft::ChangeMembers::RemoveVoters(ids), false)
            .await
            .map(drop)
            .map_err(not_leader_or_failed)
    }

    /// The current members.
    pub fn members(&self) -> BTreeMap<NodeId, PeerNode> {
        let metrics = self.raft.metrics().borrow_watched().clone();
        metrics
            .membership_config
            .membership()
            .nodes()
            .map(|(id, node)| (*id, node.clone()))
            .collect()
    }

    /// Seals a batch with the leader's clock and commits it through the group: one log entry,
    /// one replication round, one fsync per replica. Answers the batch's results once a
    /// majority stored it and this replica applied it.
    pub async fn write(&self, body: BatchBody) -> Result<BatchResults, WriteError> {
        let batch = Batch {
            timestamp: now_ns(),
            body,
        };
        let sealed = SealedBatch(batch.encode().into());
        match self.raft.client_write(sealed).await {
            Ok(response) => Ok(response.data.to_results()),
            Err(error) => {
                let leader = leader_of(&error);
                match error.api_error() {
                    Some(openraft::errors::ClientWriteError::ForwardToLeader(_)) => {
                        Err(WriteError::NotLeader { leader })
                    }
                    Some(openraft::errors::ClientWriteError::LogEntryDiscarded(_)) => {
                        Err(WriteError::Unknown { leader })
                    }
                    _ => Err(WriteError::Failed(error.to_string())),
                }
            }
        }
    }

    /// Returns once this replica is the leader and has applied everything committed before the
    /// call (read index), so a read of the state now is linearizable.
    pub async fn linearizable(&self) -> Result<(), WriteError> {
        self.raft
            .ensure_linearizable(ReadPolicy::ReadIndex)
            .await
            .map(drop)
            .map_err(not_leader_or_failed)
    }

    /// Waits until this replica has applied at least `index` (bounded by `timeout`).
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> bool {
        let mut metrics = self.raft.metrics();
        tokio::time::timeout(timeout, async {
            loop {
                if metrics
                    .borrow_watched()
                    .last_applied
                    .is_some_and(|l| l.index() >= index)
                {
                    return;
                }
                if metrics.changed().await.is_err() {
                    return;
                }
            }
        })
        .await
        .is_ok()
    }

    /// Stops Raft.
    pub async fn shutdown(self) {
        let _ = self.raft.shutdown().await;
    }
}
