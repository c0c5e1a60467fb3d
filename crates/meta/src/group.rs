//! One replica of the meta group, as a process runs it: open it on its data directory, change
//! the map through the leader, read the map as applied here, and watch for new maps.
//!
//! Must not decide what a valid change is (`state.rs` does, when the entry is applied).

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use cluster::{ClusterMap, SuccessorError};
use replication::{
    NodeId, PeerNode, Replica, ReplicaConfig, SealedBatch, SmallStateMachine, WriteError,
};

use crate::config::{ConfigChange, ConfigCommand, ConfigRefusal, ConfigStore};
use crate::state::{MapChange, MetaCommand, MetaState};

/// A replica of the meta group (the replication layer's view: membership, status, transport).
pub type MetaReplica = Replica<SmallStateMachine<MetaState>>;

/// Why a change to the map was not made, or its outcome is unknown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    #[error(
        "the map in use has epoch {current}, not the epoch {expected} this change was made from: read the map again and redo the change"
    )]
    EpochMismatch { expected: u64, current: u64 },
    #[error("the map was refused: {0}")]
    Refused(SuccessorError),
    #[error("the change takes {bytes} bytes, more than one meta group entry may ({max})")]
    TooLarge { bytes: usize, max: usize },
    #[error(transparent)]
    Replication(#[from] WriteError),
    #[error("the meta group answered an outcome this build does not read")]
    UnreadableOutcome,
    #[error("{0}")]
    Config(ConfigRefusal),
}

/// A running replica of the meta group.
pub struct MetaGroup {
    replica: MetaReplica,
}

impl MetaGroup {
    /// Opens meta replica `id` with its data in `dir`.
    pub async fn open(id: NodeId, dir: &Path, config: &ReplicaConfig) -> io::Result<MetaGroup> {
        let replica = Replica::open_with(id, dir, config, SmallStateMachine::open).await?;
        Ok(MetaGroup { replica })
    }

    /// The replication layer's replica: membership, status, its transport service, shutdown.
    pub fn replica(&self) -> &MetaReplica {
        &self.replica
    }

    /// The map as this replica has applied it (a follower's may be behind the leader's; see
    /// [`MetaGroup::map_linearizable`]).
    pub fn map(&self) -> Option<ClusterMap> {
        self.replica.machine().read(|state| state.map().cloned())
    }

    /// The map as of now (only the leader answers: a read index, so no newer map was
    /// committed before the call that this answer misses).
    pub async fn map_linearizable(&self) -> Result<Option<ClusterMap>, MetaError> {
        self.replica.linearizable().await?;
        Ok(self.map())
    }

    /// Makes `map` the cluster map if the map in use has epoch `expected_epoch` (0: none
    /// yet) and `map` may succeed it; answers the map now in use. Only the leader takes
    /// changes. A [`WriteError::Unknown`] outcome is settled by reading the map: the change
    /// is in it or was not made.
    pub async fn set_map(
        &self,
        expected_epoch: u64,
        map: ClusterMap,
    ) -> Result<ClusterMap, MetaError> {
        let entry = MetaCommand::SetMap {
            expected_epoch,
            map: map.clone(),
        }
        .encode();
        if entry.len() > limits::BATCH_BYTES_MAX {
            return Err(MetaError::TooLarge {
                bytes: entry.len(),
                max: limits::BATCH_BYTES_MAX,
            });
        }
        let outcome = self.replica.write_entry(SealedBatch(entry.into())).await?;
        match MapChange::from_outcome(&outcome).ok_or(MetaError::UnreadableOutcome)? {
            MapChange::Applied { .. } => Ok(map),
            MapChange::EpochMismatch { expected, current } => {
                Err(MetaError::EpochMismatch { expected, current })
            }
            MapChange::Refused(refused) => Err(MetaError::Refused(refused)),
            MapChange::Malformed => Err(MetaError::UnreadableOutcome),
        }
    }

    /// The config center as this replica has applied it (see [`MetaGroup::map`]).
    pub fn config(&self) -> ConfigStore {
        self.replica.machine().read(|state| state.config().clone())
    }

    /// Reads the config center with `read`, as this replica has applied it (no copy).
    pub fn read_config<T>(&self, read: impl FnOnce(&ConfigStore) -> T) -> T {
        self.replica.machine().read(|state| read(state.config()))
    }

    /// The config center as of now (leader only; see [`MetaGroup::map_linearizable`]).
    pub async fn config_linearizable(&self) -> Result<ConfigStore, MetaError> {
        self.replica.linearizable().await?;
        Ok(self.config())
    }

    /// Makes a change to the config center (leader only): answers the revision it made and the
    /// key's version after it. Checked before it is written (a bad key, value or target is
    /// refused naming the field, and nothing is written) and again when applied. `request`
    /// names the caller's request: sent again after an unknown outcome, a change already made
    /// is answered as it was made, not made twice.
    pub async fn change_config(
        &self,
        change: ConfigCommand,
        request: Option<String>,
    ) -> Result<(u64, u64), MetaError> {
        change.check().map_err(MetaError::Config)?;
        let command = MetaCommand::Config { change, request };
        let entry = command.encode();
        if entry.len() > limits::BATCH_BYTES_MAX {
            return Err(MetaError::TooLarge {
                bytes: entry.len(),
                max: limits::BATCH_BYTES_MAX,
            });
        }
        let MetaCommand::Config { change, .. } = command else {
            unreachable!("made above");
        };
        let outcome = self.replica.write_entry(SealedBatch(entry.into())).await?;
        match ConfigChange::from_outcome(&outcome, &change).ok_or(MetaError::UnreadableOutcome)? {
            ConfigChange::Applied { revision, version } => Ok((revision, version)),
            ConfigChange::Refused(refusal) => Err(MetaError::Config(refusal)),
        }
    }

    /// Tells of each new revision of the config center this replica applies, starting with
    /// the one it holds now.
    pub fn watch_config(&self) -> ConfigWatch {
        ConfigWatch {
            state: StateWatch::new(&self.replica),
            seen_revision: None,
        }
    }

    /// The leader this replica knows of, with how to reach it.
    pub fn leader(&self) -> Option<(NodeId, PeerNode)> {
        self.replica.leader()
    }

    /// Tells of each new map this replica applies, starting with the one it holds now.
    pub fn watch(&self) -> MapWatch {
        MapWatch {
            state: StateWatch::new(&self.replica),
            seen_epoch: None,
        }
    }

    /// Stops the replica (see `Replica::shutdown`).
    pub async fn shutdown(&self) {
        self.replica.shutdown().await;
    }

    /// Waits until this replica has applied at least `index` (bounded by `timeout`).
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> bool {
        self.replica.wait_applied(index, timeout).await
    }
}

/// What the meta group's watches share: the replica's applied state, and when to stop looking.
struct StateWatch {
    machine: SmallStateMachine<MetaState>,
    applied: tokio::sync::watch::Receiver<u64>,
    stopped: tokio::sync::watch::Receiver<bool>,
    /// Resolves when Raft stops running here (`None` once it has): a replica that failed
    /// applies nothing newer, so its watchers must go elsewhere.
    raft_stopped: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl StateWatch {
    fn new(replica: &MetaReplica) -> StateWatch {
        StateWatch {
            machine: replica.machine().clone(),
            applied: replica.machine().watch_applied(),
            stopped: replica.machine().watch_stopped(),
            raft_stopped: Some(replica.stopped_running()),
        }
    }

    /// What `newer` finds in the state applied here, waiting for each newly applied entry
    /// until it finds something; `None` once the replica has stopped or its Raft has failed.
    /// `newer` must copy only what is new: it runs under the state's lock.
    async fn next<T>(&mut self, newer: impl Fn(&MetaState) -> Option<T>) -> Option<T> {
        loop {
            if *self.stopped.borrow() {
                return None;
            }
            if let Some(found) = self.machine.read(&newer) {
                return Some(found);
            }
            let raft_stopped = self.raft_stopped.as_mut()?;
            let failed = tokio::select! {
                changed = self.applied.changed() => {
                    changed.ok()?;
                    false
                }
                _ = self.stopped.changed() => false,
                () = raft_stopped => true,
            };
            if failed {
                self.raft_stopped = None;
                return None;
            }
        }
    }
}

/// New maps as a replica applies them: each epoch once, in order; an epoch superseded before
/// the watcher looked is skipped (a watcher wants the map in use, not every step).
pub struct MapWatch {
    state: StateWatch,
    seen_epoch: Option<u64>,
}

impl MapWatch {
    /// The next map newer than the last one this watch gave (the first call: the map held
    /// now, if any); `None` once the replica has stopped or its Raft has failed.
    pub async fn next(&mut self) -> Option<ClusterMap> {
        let seen = self.seen_epoch;
        // The epoch is compared before the map is copied: a watcher copies only a new map.
        let map = self
            .state
            .next(|state| {
                let map = state.map()?;
                seen.is_none_or(|seen| map.epoch() > seen)
                    .then(|| map.clone())
            })
            .await?;
        self.seen_epoch = Some(map.epoch());
        Some(map)
    }
}

/// New revisions of the config center as a replica applies them, in order; a revision
/// superseded before the watcher looked is skipped (the watcher gets the newest whole).
pub struct ConfigWatch {
    state: StateWatch,
    seen_revision: Option<u64>,
}

impl ConfigWatch {
    /// The config center at its next revision newer than the last this watch gave (the first
    /// call: as held now, revision 0 if nothing was ever set); `None` once the replica has
    /// stopped or its Raft has failed.
    pub async fn next(&mut self) -> Option<ConfigStore> {
        let seen = self.seen_revision;
        let config = self
            .state
            .next(|state| {
                let config = state.config();
                seen.is_none_or(|seen| config.revision() > seen)
                    .then(|| config.clone())
            })
            .await?;
        self.seen_revision = Some(config.revision());
        Some(config)
    }
}
