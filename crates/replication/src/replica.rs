//! One replica of a Raft group: its log, its ledger, its Raft instance and its transport server.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ledger::{Batch, BatchBody, BatchResults, StateDigest};
use openraft::async_runtime::WatchReceiver;
use openraft::{BasicNode, Config, SnapshotPolicy};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::log_store::LogStore;
use crate::network::{Raft, RaftTransportService, TransportFactory};
use crate::state_machine::{LedgerStateMachine, SharedState};
use crate::types::{NodeId, SealedBatch};

/// Timing of a replica group.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot (and purge the log behind it) every this many entries.
    pub snapshot_every_entries: u64,
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        ReplicaConfig {
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 400,
            election_timeout_max_ms: 800,
            snapshot_every_entries: 4096,
        }
    }
}

/// Why a write was not committed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("this replica is not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<(NodeId, String)> },
    #[error(
        "the entry was discarded by a leader change; its outcome is unknown, resubmit with the same ids"
    )]
    Unknown { leader: Option<(NodeId, String)> },
    #[error("replication failed: {0}")]
    Failed(String),
}

/// A running replica.
pub struct Replica {
    id: NodeId,
    raft: Raft,
    machine: LedgerStateMachine,
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    server: JoinHandle<()>,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl Replica {
    /// Starts replica `id` with its data in `dir`, serving its peers on `listen`.
    pub async fn start(
        id: NodeId,
        dir: &Path,
        listen: SocketAddr,
        config: &ReplicaConfig,
    ) -> io::Result<Replica> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let log = LogStore::open(dir)?;
        let machine = LedgerStateMachine::open(dir)?;
        let raft_config = Config {
            cluster_name: "fincore".into(),
            heartbeat_interval: config.heartbeat_interval_ms,
            election_timeout_min: config.election_timeout_min_ms,
            election_timeout_max: config.election_timeout_max_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every_entries),
            max_in_snapshot_log_to_keep: 64,
            ..Default::default()
        }
        .validate()
        .map_err(io::Error::other)?;
        let raft = Raft::new(
            id,
            Arc::new(raft_config),
            TransportFactory,
            log,
            machine.clone(),
        )
        .await
        .map_err(io::Error::other)?;
        let (stop, mut stopped) = watch::channel(false);
        let service = RaftTransportService::new(raft.clone());
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let server = tokio::spawn(async move {
            let signal = async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            };
            if let Err(error) = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, signal)
                .await
            {
                tracing::error!(%error, "the replica transport stopped");
            }
        });
        Ok(Replica {
            id,
            raft,
            machine,
            addr,
            stop,
            server,
        })
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Where peers reach this replica.
    pub fn addr(&self) -> SocketAddr {
        self.addr
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

    /// Makes `members` the initial voters (call on one replica of a new group).
    pub async fn initialize(
        &self,
        members: &BTreeMap<NodeId, SocketAddr>,
    ) -> Result<(), WriteError> {
        let members: BTreeMap<NodeId, BasicNode> = members
            .iter()
            .map(|(id, addr)| {
                (
                    *id,
                    BasicNode {
                        addr: addr.to_string(),
                    },
                )
            })
            .collect();
        self.raft
            .initialize(members)
            .await
            .map_err(|e| WriteError::Failed(e.to_string()))
    }

    /// The leader this replica knows of.
    pub fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow_watched().current_leader
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
                let leader = error.forward_to_leader().and_then(|f| {
                    f.leader_id
                        .zip(f.leader_node.as_ref().map(|n| n.addr.clone()))
                });
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

    /// Stops Raft and the transport.
    pub async fn shutdown(self) {
        let _ = self.raft.shutdown().await;
        let _ = self.stop.send(true);
        let _ = self.server.await;
    }
}
