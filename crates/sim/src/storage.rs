//! Raft storage on a simulated disk: the log (appends become durable when a simulated fsync
//! completes, and only then is Raft told) and the state machine (the real ledger, reporting
//! every entry it applies to the checker).
//!
//! Every write names the disk generation it was opened at; after a crash the generation moves
//! on and the writes of the dead instance land nowhere, as on a machine that lost power.

use std::io;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex};

use futures::{Stream, TryStreamExt};
use ledger::{Batch, StateMachine};
use openraft::storage::{EntryResponder, IOFlushed, LogState, RaftLogStorage, RaftStateMachine};
use openraft::type_config::alias::SnapshotOf;
use openraft::{EntryPayload, RaftLogReader, RaftSnapshotBuilder};
use replication::BatchOutcome;
use tokio::sync::mpsc;

use crate::disk::{SimDisk, StoredSnapshot};
use crate::types::{Entry, LogId, NodeId, SimConfig, SnapshotMeta, StoredMembership, Vote, spawn};
use crate::world::{Bug, Shared};

fn crashed() -> io::Error {
    io::Error::other("the machine crashed")
}

/// Locks `disk` if it is still at `generation` (the instance using it has not crashed).
fn disk_at(
    disk: &Mutex<SimDisk>,
    generation: u64,
) -> io::Result<std::sync::MutexGuard<'_, SimDisk>> {
    let guard = disk.lock().expect("never poisoned");
    if guard.generation == generation {
        Ok(guard)
    } else {
        Err(crashed())
    }
}

/// The Raft log of one replica instance.
#[derive(Clone)]
pub struct SimLog {
    id: NodeId,
    disk: Arc<Mutex<SimDisk>>,
    generation: u64,
    world: Shared,
    last_log_id: Arc<Mutex<Option<LogId>>>,
    /// The simulated fsyncs, completed in order by one task per instance.
    syncs: mpsc::UnboundedSender<(u64, Option<IOFlushed<SimConfig>>)>,
}

impl SimLog {
    /// Opens the log on `disk` after a (re)start. A corrupt record refuses the open.
    pub fn open(id: NodeId, disk: Arc<Mutex<SimDisk>>, world: Shared) -> Result<SimLog, String> {
        let (generation, recovered) = {
            let mut guard = disk.lock().expect("never poisoned");
            (guard.generation, guard.recover()?)
        };
        if recovered.torn_tail_cut {
            let mut world = world.lock();
            world.counts.torn_tails_cut += 1;
            world.trace(format_args!("replica {id} cut a torn tail"));
        }
        let (syncs, mut pending) = mpsc::unbounded_channel::<(u64, Option<IOFlushed<SimConfig>>)>();
        let (sync_disk, sync_world) = (disk.clone(), world.clone());
        spawn(async move {
            while let Some((index, callback)) = pending.recv().await {
                let took = {
                    let mut world = sync_world.lock();
                    let max = world.profile.fsync_max_us;
                    world.draw_micros(50, max)
                };
                tokio::time::sleep(took).await;
                match disk_at(&sync_disk, generation) {
                    Ok(mut disk) => disk.sync_through(index),
                    Err(_) => return,
                }
                if let Some(callback) = callback {
                    callback.io_completed(Ok(()));
                }
            }
        });
        Ok(SimLog {
            id,
            disk,
            generation,
            world,
            last_log_id: Arc::new(Mutex::new(recovered.last_log_id)),
            syncs,
        })
    }

    fn disk(&self) -> io::Result<std::sync::MutexGuard<'_, SimDisk>> {
        disk_at(&self.disk, self.generation)
    }
}

impl RaftLogReader<SimConfig> for SimLog {
    async fn try_get_log_entries<
        RB: RangeBounds<u64> + Clone + std::fmt::Debug + openraft::OptionalSend,
    >(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let last = self
            .last_log_id
            .lock()
            .expect("never poisoned")
            .map(|l| l.index());
        let mut disk = self.disk()?;
        let first = disk.purged.map_or(0, |l| l.index() + 1);
        let Some(last) = last else {
            return Ok(Vec::new());
        };
        let Some((lo, hi)) = replication::clamp_range(&range, first, last) else {
            return Ok(Vec::new());
        };
        let mut entries = Vec::new();
        for index in lo..=hi {
            match disk.read(index) {
                Ok(Some(entry)) => entries.push(entry),
                Ok(None) => break,
                Err(error) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("replica {}: {error}", self.id),
                    ));
                }
            }
        }
        Ok(entries)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.disk()?.vote)
    }
}

impl RaftLogStorage<SimConfig> for SimLog {
    type LogReader = SimLog;

    async fn get_log_state(&mut self) -> Result<LogState<SimConfig>, io::Error> {
        let purged = self.disk()?.purged;
        let last = *self.last_log_id.lock().expect("never poisoned");
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last.or(purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.disk()?.vote = Some(*vote);
        Ok(())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<SimConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let ack_early = self.world.lock().bug == Some(Bug::AckBeforeFsync);
        let mut first = None;
        let mut last = None;
        {
            let mut disk = self.disk()?;
            for entry in entries {
                disk.append(&entry);
                first.get_or_insert(entry.log_id);
                last = Some(entry.log_id);
            }
        }
        if let (Some(first), Some(last)) = (first, last) {
            self.world
                .lock()
                .trace(format_args!("log {} append {first}..={last}", self.id));
        }
        let Some(last) = last else {
            callback.io_completed(Ok(()));
            return Ok(());
        };
        *self.last_log_id.lock().expect("never poisoned") = Some(last);
        let callback = if ack_early {
            callback.io_completed(Ok(()));
            None
        } else {
            Some(callback)
        };
        self.syncs
            .send((last.index(), callback))
            .map_err(|_| crashed())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let purged = {
            let mut disk = self.disk()?;
            disk.truncate_after(last_log_id.map(|l| l.index()));
            disk.purged
        };
        *self.last_log_id.lock().expect("never poisoned") = last_log_id.or(purged);
        self.world.lock().trace(format_args!(
            "log {} truncate after {last_log_id:?}",
            self.id
        ));
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        self.disk()?.purge_through(log_id);
        self.world
            .lock()
            .trace(format_args!("log {} purge through {log_id}", self.id));
        let mut last = self.last_log_id.lock().expect("never poisoned");
        if *last < Some(log_id) {
            *last = Some(log_id);
        }
        Ok(())
    }
}

struct MachineInner {
    state: StateMachine,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    current: Option<StoredSnapshot>,
}

/// The ledger state machine of one replica instance.
#[derive(Clone)]
pub struct SimMachine {
    id: NodeId,
    disk: Arc<Mutex<SimDisk>>,
    generation: u64,
    world: Shared,
    inner: Arc<Mutex<MachineInner>>,
}

fn invalid(error: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error.to_string())
}

impl SimMachine {
    /// The state machine after a (re)start: the stored snapshot, else an empty ledger.
    pub fn open(id: NodeId, disk: Arc<Mutex<SimDisk>>, world: Shared) -> io::Result<SimMachine> {
        let (generation, stored) = {
            let disk = disk.lock().expect("never poisoned");
            (disk.generation, disk.snapshot.clone())
        };
        let mut inner = MachineInner {
            state: StateMachine::default(),
            last_applied: None,
            membership: StoredMembership::default(),
            current: None,
        };
        if let Some(stored) = stored {
            let (state, _) =
                StateMachine::read_snapshot(&mut stored.data.as_slice()).map_err(invalid)?;
            inner.state = state;
            inner.last_applied = stored.meta.last_log_id;
            inner.membership = stored.meta.last_membership.clone();
            inner.current = Some(stored);
        }
        Ok(SimMachine {
            id,
            disk,
            generation,
            world,
            inner: Arc::new(Mutex::new(inner)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MachineInner> {
        self.inner.lock().expect("never poisoned")
    }

    /// The applied index and the state there, for the final checks.
    pub fn with_state<T>(&self, read: impl FnOnce(Option<LogId>, &StateMachine) -> T) -> T {
        let inner = self.lock();
        read(inner.last_applied, &inner.state)
    }

    fn store(&self, snapshot: &StoredSnapshot) -> io::Result<()> {
        disk_at(&self.disk, self.generation)?.snapshot = Some(snapshot.clone());
        Ok(())
    }
}

impl RaftSnapshotBuilder<SimConfig> for SimMachine {
    type SnapshotData = std::io::Cursor<Vec<u8>>;

    async fn build_snapshot(
        &mut self,
    ) -> Result<SnapshotOf<SimConfig, Self::SnapshotData>, io::Error> {
        let snapshot = {
            let inner = self.lock();
            let mut data = Vec::new();
            inner.state.write_snapshot(&mut data)?;
            StoredSnapshot {
                meta: SnapshotMeta {
                    last_log_id: inner.last_applied,
                    last_membership: inner.membership.clone(),
                },
                data,
            }
        };
        self.store(&snapshot)?;
        self.lock().current = Some(snapshot.clone());
        Ok(SnapshotOf::<SimConfig, _> {
            meta: snapshot.meta,
            snapshot: std::io::Cursor::new(snapshot.data),
        })
    }
}

impl RaftStateMachine<SimConfig> for SimMachine {
    type SnapshotData = std::io::Cursor<Vec<u8>>;
    type SnapshotBuilder = SimMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let inner = self.lock();
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<SimConfig>, io::Error>>
            + Unpin
            + openraft::OptionalSend,
    {
        let apply_twice = self.world.lock().bug == Some(Bug::ApplyTwice);
        while let Some((entry, responder)) = entries.try_next().await? {
            let (outcome, digest) = {
                let mut inner = self.lock();
                let outcome = match &entry.payload {
                    EntryPayload::Normal(sealed) => {
                        let batch = Batch::decode(&sealed.0).map_err(invalid)?;
                        let results = inner.state.apply(&batch);
                        if apply_twice && entry.log_id.index() % 16 == 0 {
                            inner.state.apply(&batch);
                        }
                        BatchOutcome::from_results(&results)
                    }
                    EntryPayload::Membership(membership) => {
                        inner.membership =
                            StoredMembership::new(Some(entry.log_id), membership.clone());
                        BatchOutcome::default()
                    }
                    EntryPayload::Blank => BatchOutcome::default(),
                };
                inner.last_applied = Some(entry.log_id);
                // Digests cost a pass over the state: compare them every 8 entries.
                let digest = (entry.log_id.index() % 8 == 0).then(|| inner.state.digest());
                (outcome, digest)
            };
            self.world
                .lock()
                .check_apply(self.id, &entry, &outcome, digest);
            if let Some(responder) = responder {
                responder.send(outcome);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Self::SnapshotData,
    ) -> Result<(), io::Error> {
        let data = snapshot.into_inner();
        let (state, _) = StateMachine::read_snapshot(&mut data.as_slice()).map_err(invalid)?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        self.store(&stored)?;
        let mut inner = self.lock();
        inner.state = state;
        inner.last_applied = meta.last_log_id;
        inner.membership = meta.last_membership.clone();
        inner.current = Some(stored);
        drop(inner);
        self.world.lock().trace(format_args!(
            "replica {} installed snapshot at {:?}",
            self.id,
            meta.last_log_id.map(|l| l.index())
        ));
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<SnapshotOf<SimConfig, Self::SnapshotData>>, io::Error> {
        Ok(self
            .lock()
            .current
            .clone()
            .map(|s| SnapshotOf::<SimConfig, _> {
                meta: s.meta,
                snapshot: std::io::Cursor::new(s.data),
            }))
    }
}
