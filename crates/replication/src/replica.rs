//! One replica of a Raft group: its log, its state machine (the ledger, unless told otherwise:
//! see [`crate::machine`]) and its Raft instance. The transport service it returns is mounted
//! by whoever owns the peer listener (the node's, separate from its client listeners).
//!
//! Owns the only handle on the openraft instance. Its public methods speak fincore's types
//! (`Role`, `ReplicaStatus`, members as `PeerNode`s, `WriteError`); none may return or take an
//! openraft type, so the rest of fincore never sees one.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ledger::{Batch, BatchBody, BatchResults, StateDigest};
use openraft::async_runtime::WatchReceiver;
use openraft::raft::ReadPolicy;

use crate::digest_gate::{DigestBusy, DigestGate};
use crate::log_store::LogStore;
use crate::machine::ReplicaMachine;
use crate::network::{Raft, RaftTransportService, SnapshotCounts, TransportFactory};
use crate::proto::raft_transport_server::RaftTransportServer;
use crate::raft_config::{RaftTiming, raft_config};
use crate::state_machine::{LedgerStateMachine, SharedState};
use crate::storage_options::StorageOptions;
use crate::types::{BatchOutcome, NodeId, PeerNode, SealedBatch, TypeConfig};

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
    /// How this replica reaches each peer's peer listener, when that differs from the address
    /// in the group's membership (a local proxy, a sidecar).
    pub peer_routes: BTreeMap<NodeId, String>,
    /// This replica's identity for mutual TLS with its peers; `None`: plaintext peers
    /// (`--insecure-peers`, tests and the simulator).
    pub peer_tls: Option<crate::peer_tls::PeerTls>,
    /// Keep change events in `DATA_DIR/events` and serve them (`Replica::events`).
    pub events: bool,
}

impl std::fmt::Debug for ReplicaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaConfig")
            .field("heartbeat_interval_ms", &self.heartbeat_interval_ms)
            .field("election_timeout_min_ms", &self.election_timeout_min_ms)
            .field("election_timeout_max_ms", &self.election_timeout_max_ms)
            .field("snapshot_every_entries", &self.snapshot_every_entries)
            .field("peer_routes", &self.peer_routes)
            .field("peer_tls", &self.peer_tls.as_ref().map(|tls| tls.group()))
            .field("events", &self.events)
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
            peer_tls: None,
            events: events_default(),
        }
    }
}

/// Whether replicas keep change events unless told otherwise: yes, unless the environment
/// says `FINCORE_EVENTS=off` (the switch that lets `fincore bench` measure their cost on one
/// build).
fn events_default() -> bool {
    std::env::var("FINCORE_EVENTS").map_or(true, |value| value != "off")
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

/// What a replica is doing in its group right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Takes writes and replicates them.
    Leader,
    /// Votes and follows a leader.
    Follower,
    /// Campaigns to become the leader.
    Candidate,
    /// Receives the log but does not vote (a replica catching up before it becomes a voter).
    Learner,
    /// Raft has stopped (shutdown, or a fatal error such as a failed fsync).
    Shutdown,
}

impl Role {
    /// Every role, for documentation and tests.
    pub const ALL: [Role; 5] = [
        Role::Leader,
        Role::Follower,
        Role::Candidate,
        Role::Learner,
        Role::Shutdown,
    ];

    /// The role as a stable lower-case word (what `/v1/status` shows).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Learner => "learner",
            Role::Shutdown => "shutdown",
        }
    }

    fn from_server_state(state: openraft::ServerState) -> Role {
        match state {
            openraft::ServerState::Leader => Role::Leader,
            openraft::ServerState::Follower => Role::Follower,
            openraft::ServerState::Candidate => Role::Candidate,
            openraft::ServerState::Learner => Role::Learner,
            openraft::ServerState::Shutdown => Role::Shutdown,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What [`Replica::status`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaStatus {
    pub id: NodeId,
    pub role: Role,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub last_log_index: Option<u64>,
    pub applied_index: u64,
    /// The digest of the state at `applied_index`; `None` when not asked for (computing it
    /// reads the whole state).
    pub state_digest: Option<String>,
}

/// A running replica of a group whose state machine is `M` (the ledger's by default).
pub struct Replica<M: ReplicaMachine = LedgerStateMachine<TypeConfig>> {
    id: NodeId,
    raft: Raft<M>,
    machine: M,
    journal_stats: Arc<journal::GroupCommitStats>,
    digests: DigestGate,
    peer_tls: Option<crate::peer_tls::PeerTls>,
    snapshots: Arc<SnapshotCounts>,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn leader_of<E>(error: &openraft::errors::RaftError<TypeConfig, E>) -> Option<(NodeId, PeerNode)>
where
    E: openraft::TryAsRef<openraft::errors::ForwardToLeader<TypeConfig>> + std::error::Error,
{
    error
        .forward_to_leader()
        .and_then(|f| f.leader_id.zip(f.leader_node.clone()))
}

/// "Not the leader" (with the leader's address when known), or a plain failure.
fn not_leader_or_failed<E>(error: openraft::errors::RaftError<TypeConfig, E>) -> WriteError
where
    E: openraft::TryAsRef<openraft::errors::ForwardToLeader<TypeConfig>> + std::error::Error,
{
    if error.forward_to_leader().is_some() {
        WriteError::NotLeader {
            leader: leader_of(&error),
        }
    } else {
        WriteError::Failed(error.to_string())
    }
}

/// This replica's Raft state for its metrics (term, role, leader, log indexes, snapshots sent and
/// installed, and on a leader how far behind each follower is), from openraft's metrics.
fn raft_sample(
    id: NodeId,
    metrics: &openraft::RaftMetrics<TypeConfig>,
    snapshots: &SnapshotCounts,
) -> telemetry::RaftSample {
    let index = |log_id: &Option<openraft::type_config::alias::LogIdOf<TypeConfig>>| {
        log_id.as_ref().map_or(0, |log_id| log_id.index)
    };
    let last_log_index = metrics.last_log_index.unwrap_or(0);
    // Only a leader has followers: the last metrics of a stopped leader still hold them.
    let leading = metrics.state == openraft::ServerState::Leader;
    let followers = metrics
        .replication
        .iter()
        .filter(|_| leading)
        .flatten()
        .filter(|(follower, _)| **follower != id)
        .map(|(&follower, matched)| {
            let since_ack = metrics
                .heartbeat
                .as_ref()
                .and_then(|acks| acks.get(&follower).cloned().flatten())
                .map(|acked| openraft::Instant::elapsed(&acked.into_inner()));
            telemetry::FollowerSample {
                id: follower,
                lag_entries: last_log_index.saturating_sub(index(matched)),
                since_ack,
            }
        })
        .collect();
    let (snapshots_sent, snapshots_installed) = snapshots.get();
    telemetry::RaftSample {
        term: metrics.current_term,
        role: Role::from_server_state(metrics.state).as_str(),
        leader: metrics.current_leader,
        last_log_index,
        committed_index: index(&metrics.local_committed),
        applied_index: index(&metrics.last_applied),
        snapshot_index: index(&metrics.snapshot),
        purged_index: index(&metrics.purged),
        followers,
        snapshots_sent,
        snapshots_installed,
    }
}

impl Replica {
    /// Opens ledger replica `id` with its data in `dir` (its log, its newest snapshot).
    pub async fn open(id: NodeId, dir: &Path, config: &ReplicaConfig) -> io::Result<Replica> {
        Replica::open_with(id, dir, config, |dir, storage| {
            LedgerStateMachine::open_keeping_events(dir, storage, config.events)
        })
        .await
    }
}

impl<M: ReplicaMachine> Replica<M> {
    /// Opens replica `id` with its data in `dir` (its log, and the state machine
    /// `open_machine` makes from the directory and the storage options).
    pub async fn open_with(
        id: NodeId,
        dir: &Path,
        config: &ReplicaConfig,
        open_machine: impl FnOnce(&Path, &StorageOptions) -> io::Result<M>,
    ) -> io::Result<Replica<M>> {
        let storage = StorageOptions {
            sync_observer: config.sync_observer.clone(),
            ..StorageOptions::default()
        };
        let log = LogStore::<TypeConfig>::open(dir, &storage, M::KIND)?;
        let journal_stats = log.journal_stats();
        let machine = open_machine(dir, &storage)?;
        let raft_config = raft_config(
            "fincore",
            &RaftTiming {
                heartbeat_interval_ms: config.heartbeat_interval_ms,
                election_timeout_min_ms: config.election_timeout_min_ms,
                election_timeout_max_ms: config.election_timeout_max_ms,
                snapshot_every_entries: config.snapshot_every_entries,
                entries_kept_behind_snapshot: limits::RAFT_LOG_KEPT_BEHIND_SNAPSHOT_ENTRIES,
            },
        )?;
        let snapshots = Arc::new(SnapshotCounts::default());
        let raft = Raft::new(
            id,
            Arc::new(raft_config),
            TransportFactory {
                routes: config.peer_routes.clone(),
                tls: config.peer_tls.clone(),
                snapshots: Arc::clone(&snapshots),
            },
            log,
            machine.clone(),
        )
        .await
        .map_err(io::Error::other)?;
        Ok(Replica {
            id,
            raft,
            machine,
            journal_stats,
            digests: DigestGate::new(limits::STATUS_DIGEST_CALLERS_MAX),
            peer_tls: config.peer_tls.clone(),
            snapshots,
        })
    }

    /// The service peers send this replica's Raft RPCs to; mount it on the node's peer
    /// listener, with [`Replica::peer_tls`]'s server configuration when there is one.
    pub fn transport_service(&self) -> RaftTransportServer<RaftTransportService<M>> {
        RaftTransportService::new(
            self.raft.clone(),
            self.machine.clone(),
            self.peer_tls.clone(),
            Arc::clone(&self.snapshots),
        )
    }

    /// The state machine this replica applies its log to (read it for queries; only Raft
    /// writes it).
    pub fn machine(&self) -> &M {
        &self.machine
    }

    /// The identity this replica proves to its peers (`None`: plaintext peers).
    pub fn peer_tls(&self) -> Option<&crate::peer_tls::PeerTls> {
        self.peer_tls.as_ref()
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The counters of this replica's journal writer (groups synced, records, sync time).
    pub fn journal_stats(&self) -> &journal::GroupCommitStats {
        &self.journal_stats
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

    /// Resolves once Raft has stopped running here (a fatal error, such as a failed fsync, or
    /// the replica shut down): what a long-lived watcher of this replica waits on besides its
    /// data, so that it moves to another replica instead of waiting on a dead one.
    pub fn stopped_running(&self) -> futures::future::BoxFuture<'static, ()> {
        let mut metrics = self.raft.metrics();
        Box::pin(async move {
            while metrics.borrow_watched().running_state.is_ok() {
                if metrics.changed().await.is_err() {
                    return;
                }
            }
        })
    }

    /// Fault injection: stops Raft alone, leaving the state machine untold, as a fatal Raft
    /// error (a failed fsync) does. Only tests call it.
    #[doc(hidden)]
    pub async fn fail_raft_for_tests(&self) {
        let _ = self.raft.shutdown().await;
    }

    /// Keeps `metrics`' Raft families current: records a sample at every change of Raft's state
    /// (so that no leader change goes uncounted) and every second (so that a follower's time
    /// since its last acknowledgement ages), and logs each new leader (openraft's own lines are
    /// off by default). Ends when Raft stops for good.
    pub fn export_raft_metrics(
        &self,
        metrics: Arc<telemetry::Metrics>,
    ) -> tokio::task::JoinHandle<()> {
        let id = self.id;
        let mut watched = self.raft.metrics();
        let snapshots = Arc::clone(&self.snapshots);
        tokio::spawn(async move {
            loop {
                let sample = raft_sample(id, &watched.borrow_watched(), &snapshots);
                if metrics.raft(&sample) {
                    if sample.leader == Some(id) {
                        tracing::info!(term = sample.term, "this replica leads its group");
                    } else {
                        tracing::info!(
                            leader = sample.leader,
                            term = sample.term,
                            "following a new leader"
                        );
                    }
                }
                tokio::select! {
                    changed = watched.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        })
    }

    /// This replica's Raft state now, as its metrics record it (a console's view of it).
    pub fn raft_sample(&self) -> telemetry::RaftSample {
        raft_sample(
            self.id,
            &self.raft.metrics().borrow_watched(),
            &self.snapshots,
        )
    }

    /// A one-line view of this replica for operators: role, term, leader, applied index (no
    /// state digest: [`Replica::status`] adds the ledger's).
    pub fn raft_status(&self) -> ReplicaStatus {
        let metrics = self.raft.metrics().borrow_watched().clone();
        ReplicaStatus {
            id: self.id,
            role: Role::from_server_state(metrics.state),
            term: metrics.current_term,
            leader: metrics.current_leader,
            last_log_index: metrics.last_log_index,
            applied_index: self.machine.applied_index(),
            state_digest: None,
        }
    }

    /// Adds replica `id` at `node` to the group: first as a learner that catches up (from a
    /// snapshot if needed; it cannot vote meanwhile), then, once it is within
    /// `limits::RAFT_LEARNER_CAUGHT_UP_LAG_ENTRIES_MAX` entries of the leader, as a voter.
    /// Only the leader can do it. Refused for an id that is already a voter: a node that lost
    /// its disk must not come back under its old id without the votes it cast (replacing a
    /// disk is removing the old id and adding a new one). Calling it again for a learner that
    /// has not caught up in time promotes it once it has.
    pub async fn add_replica(&self, id: NodeId, node: PeerNode) -> Result<(), WriteError> {
        let metrics = self.raft.metrics().borrow_watched().clone();
        if metrics.current_leader != Some(self.id) {
            return Err(WriteError::NotLeader {
                leader: self.leader(),
            });
        }
        if metrics
            .membership_config
            .membership()
            .voter_ids()
            .any(|voter| voter == id)
        {
            return Err(WriteError::Failed(format!(
                "node {id} is already a voter of this group. A replica whose disk was replaced or \
                 wiped must not come back under the id it had (it would have forgotten its \
                 votes): remove node {id}, then add the new disk as a new member with a new id"
            )));
        }
        let caught_up = Duration::from_secs(limits::RAFT_LEARNER_CATCH_UP_SECONDS_MAX);
        match tokio::time::timeout(caught_up, self.raft.add_learner(id, node.clone(), true)).await {
            Ok(added) => added.map_err(not_leader_or_failed)?,
            Err(_) => {
                return Err(WriteError::Failed(format!(
                    "node {id} was added as a learner but has not caught up within {caught_up:?} \
                     (is it running with --join, and reachable at {}?); it stays a learner, \
                     which does not vote: add it again to make it a voter once it has caught up, \
                     or remove it",
                    node.grpc
                )));
            }
        };
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

    /// Commits `entry` through the group: one log entry, one replication round, one fsync per
    /// replica. Answers what applying it answered once a majority stored it and this replica
    /// applied it.
    pub async fn write_entry(&self, entry: SealedBatch) -> Result<BatchOutcome, WriteError> {
        self.write_entry_at(entry).await.map(|(_, outcome)| outcome)
    }

    /// [`Replica::write_entry`], answering also the entry's log index.
    async fn write_entry_at(&self, entry: SealedBatch) -> Result<(u64, BatchOutcome), WriteError> {
        match self.raft.client_write(entry).await {
            Ok(response) => Ok((response.log_id.index(), response.data)),
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

    /// Writes a snapshot of the state as applied now (the log behind it is purged by the usual
    /// rule) and returns the log index it covers, once it is durable. Gives up after `timeout`.
    pub async fn snapshot(&self, timeout: Duration) -> Result<u64, WriteError> {
        let applied = self.machine.applied_index();
        self.raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| WriteError::Failed(e.to_string()))?;
        let mut metrics = self.raft.metrics();
        let built = tokio::time::timeout(timeout, async {
            loop {
                if let Some(at) = metrics.borrow_watched().snapshot
                    && at.index() >= applied
                {
                    return Ok(at.index());
                }
                if metrics.changed().await.is_err() {
                    return Err(WriteError::Failed("Raft stopped".into()));
                }
            }
        })
        .await;
        built.unwrap_or_else(|_| {
            Err(WriteError::Failed(format!(
                "no snapshot of entry {applied} within {timeout:?}"
            )))
        })
    }

    /// Stops Raft, then waits (at most `limits::SNAPSHOT_BUILD_STOP_SECONDS_MAX`) for a
    /// snapshot build still running on a blocking thread to give up: once this returns, nothing
    /// writes in the replica's directory. Takes `&self` so that a replica shared with request
    /// handlers can be stopped while they still hold it; calls after the first do nothing.
    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
        let machine = self.machine.clone();
        let patience = std::time::Duration::from_secs(limits::SNAPSHOT_BUILD_STOP_SECONDS_MAX);
        let stopped = tokio::task::spawn_blocking(move || machine.stop_builds(patience)).await;
        if !matches!(stopped, Ok(true)) {
            tracing::warn!("a snapshot build was still running when the replica stopped");
        }
    }
}

/// What only a ledger replica has: its state, change events, digests and batches.
impl Replica {
    /// This replica's change events (`None` when `ReplicaConfig::events` is off).
    pub fn events(&self) -> Option<crate::event_log::EventReader> {
        self.machine.events()
    }

    /// The ledger state (for reads).
    pub fn state(&self) -> &SharedState {
        self.machine.state()
    }

    /// The last applied index and the state digest there: one pass over the state at a time,
    /// remembered until the next apply. Blocks; async callers use [`Replica::state_digest`].
    pub fn applied(&self) -> (u64, StateDigest) {
        self.digests
            .get(|| self.machine.applied_index(), || self.machine.applied())
    }

    /// [`Replica::applied`] off the async runtime, refused when
    /// `limits::STATUS_DIGEST_CALLERS_MAX` callers already wait.
    pub async fn state_digest(&self) -> Result<(u64, StateDigest), DigestBusy> {
        let (indexed, computed) = (self.machine.clone(), self.machine.clone());
        self.digests
            .get_off_runtime(move || indexed.applied_index(), move || computed.applied())
            .await
    }

    /// A one-line view of this replica for operators: role, term, leader, applied index, and
    /// with `with_digest` the state digest there (which costs a pass over the whole state).
    pub fn status(&self, with_digest: bool) -> ReplicaStatus {
        let mut status = self.raft_status();
        if with_digest {
            let (index, digest) = self.applied();
            status.applied_index = index;
            status.state_digest = Some(digest.to_string());
        }
        status
    }

    /// Seals a batch with the leader's clock and commits it through the group: one log entry,
    /// one replication round, one fsync per replica. Answers the batch's results once a
    /// majority stored it and this replica applied it.
    pub async fn write(&self, body: BatchBody) -> Result<BatchResults, WriteError> {
        self.write_traced(body).await.map(|written| written.results)
    }

    /// [`Replica::write`], answering also where and when the batch was applied (for traces).
    pub async fn write_traced(&self, body: BatchBody) -> Result<Written, WriteError> {
        let batch = Batch {
            timestamp: now_ns(),
            body,
        };
        let sealed = SealedBatch(batch.encode().into());
        let (log_index, outcome) = self.write_entry_at(sealed).await?;
        Ok(Written {
            results: outcome.to_results(),
            log_index,
            applied: outcome.applied,
        })
    }
}

/// A committed and applied batch: its results, its log index, and when this replica applied it.
#[derive(Debug)]
pub struct Written {
    pub results: BatchResults,
    pub log_index: u64,
    pub applied: crate::ApplyTiming,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_is_shown_as_the_lower_case_word_openraft_used_to_print() {
        for state in [
            openraft::ServerState::Leader,
            openraft::ServerState::Follower,
            openraft::ServerState::Candidate,
            openraft::ServerState::Learner,
            openraft::ServerState::Shutdown,
        ] {
            let role = Role::from_server_state(state);
            assert_eq!(role.as_str(), format!("{state:?}").to_lowercase());
        }
        let words: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            words,
            ["leader", "follower", "candidate", "learner", "shutdown"]
        );
        // The metrics export one `role` series per word: the same words.
        assert_eq!(words, telemetry::RAFT_ROLES);
    }
}
