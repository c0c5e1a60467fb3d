//! The ledger as a Raft state machine, and its snapshots.
//!
//! Applying an entry applies its sealed batch to the ledger, one at a time in log order, and
//! answers the leader's caller with the batch's results. A snapshot is the ledger's canonical
//! snapshot (whose SHA-256 is the state digest replicas compare); the newest one is kept in a
//! file (never in memory: see [`crate::snapshot`]), so a restart and a lagging follower start
//! from it instead of from the first entry. This module decides, under its lock, that a
//! snapshot replaces the current one only if it is newer, and that an installed snapshot is
//! never older than what is applied. The same code runs in production and in the simulator
//! ([`StorageOptions`]).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use futures::{Stream, TryStreamExt};
use journal::storage::Storage;
use ledger::{Batch, StateDigest, StateMachine};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, RaftSnapshotBuilder};

use crate::applier::Applier;
use crate::event_log::{EventLog, EventReader};
use crate::snapshot::{
    SNAPSHOT_FILE, Serialising, SnapshotData, SnapshotOffer, SnapshotReceiver, TempFile,
    assemble_snapshot_file, open_snapshot_file, remove_stale_temp_files,
};
use crate::storage_options::{PlantedBug, StorageOptions};
use crate::types::{BatchOutcome, LedgerConfig, NodeId, PeerNode, StdLeaderId};

pub(crate) type CommittedLeaderId = <StdLeaderId as openraft::vote::RaftLeaderId>::Committed;
pub(crate) type LogId = openraft::LogId<CommittedLeaderId>;
pub(crate) type SnapshotMeta = openraft::SnapshotMeta<CommittedLeaderId, NodeId, PeerNode>;
pub(crate) type StoredMembership = openraft::StoredMembership<CommittedLeaderId, NodeId, PeerNode>;
pub(crate) type SnapshotOf = openraft::Snapshot<CommittedLeaderId, NodeId, PeerNode, SnapshotData>;

/// The ledger state, shared with whoever serves reads.
pub type SharedState = Arc<RwLock<StateMachine>>;

/// The message logged (at info) each time a snapshot received from a peer is installed: how an
/// operator, or `fincore bench --wipe-follower-at`, tells a catch-up from a snapshot.
pub const SNAPSHOT_INSTALLED_FROM_PEER: &str = "installed a snapshot received from a peer";

struct Inner {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    /// The snapshot in the snapshot file (never newer than `last_applied`).
    current: Option<SnapshotMeta>,
    /// Snapshots installed so far: a build that sees this change while it reads the state
    /// knows the state it began from was replaced.
    installs_count: u64,
}

/// A ledger for a replica: no cache warm-up pass, because replicas of a group often share
/// cores and the pass costs more CPU than the stalls it saves there (measured: about +8 %
/// throughput for three replicas on two cores, no change for one).
/// With `events`, the ledger records change events for the replica's event log.
fn replicated(mut state: StateMachine, events: bool) -> StateMachine {
    state.set_prefetch(false);
    state.set_events(events);
    state
}

/// A snapshot file's contents, checked.
pub(crate) struct SnapshotFile {
    pub meta: SnapshotMeta,
    pub state: StateMachine,
    pub digest: StateDigest,
}

/// Reads and checks the snapshot file in `dir`, if there is one.
pub(crate) fn read_snapshot_file(
    storage: &dyn Storage,
    dir: &Path,
) -> io::Result<Option<SnapshotFile>> {
    let path = dir.join(SNAPSHOT_FILE);
    let Some((meta, data)) = open_snapshot_file(storage, &path)? else {
        return Ok(None);
    };
    let (state, digest) = data
        .decode()
        .map_err(|e| invalid(format!("{}: {e}", path.display())))?;
    Ok(Some(SnapshotFile {
        meta,
        state,
        digest,
    }))
}

/// The state machine of one replica. Clones share it.
pub struct LedgerStateMachine<C: LedgerConfig> {
    state: SharedState,
    /// The apply threads (`None`: batches are applied inline, as the simulator wants).
    applier: Option<Arc<Applier>>,
    /// The replica's change events (`None`: not kept, `StorageOptions::events` off).
    events: Option<EventLog>,
    inner: Arc<Mutex<Inner>>,
    builds: Arc<Builds>,
    snapshot_path: PathBuf,
    options: Arc<StorageOptions>,
    _config: std::marker::PhantomData<C>,
}

impl<C: LedgerConfig> Clone for LedgerStateMachine<C> {
    fn clone(&self) -> Self {
        LedgerStateMachine {
            state: Arc::clone(&self.state),
            applier: self.applier.clone(),
            events: self.events.clone(),
            inner: Arc::clone(&self.inner),
            builds: Arc::clone(&self.builds),
            snapshot_path: self.snapshot_path.clone(),
            options: Arc::clone(&self.options),
            _config: std::marker::PhantomData,
        }
    }
}

/// The snapshot builds running on blocking threads, and whether the replica has stopped. Once
/// stopped, a build gives up at its next step and publishes nothing (its temporary file is
/// removed), and [`LedgerStateMachine::stop_builds`] returns once none runs: nothing writes in
/// the replica's directory after it stopped (a new replica may open it at once).
#[derive(Default)]
pub(crate) struct Builds {
    /// (stopped, builds running)
    state: Mutex<(bool, usize)>,
    none_running: std::sync::Condvar,
}

/// A build in progress; counted in [`Builds`] until dropped.
pub(crate) struct RunningBuild<'a>(&'a Builds);

impl Builds {
    pub(crate) fn begin(&self) -> io::Result<RunningBuild<'_>> {
        let mut state = self.state.lock().expect("never poisoned");
        if state.0 {
            return Err(stopped());
        }
        state.1 += 1;
        Ok(RunningBuild(self))
    }

    pub(crate) fn stopped(&self) -> bool {
        self.state.lock().expect("never poisoned").0
    }

    /// Stops building for good; waits (blocking, at most `patience`) until no build runs.
    /// Answers whether none does.
    pub(crate) fn stop(&self, patience: std::time::Duration) -> bool {
        let mut state = self.state.lock().expect("never poisoned");
        state.0 = true;
        let (state, _) = self
            .none_running
            .wait_timeout_while(state, patience, |state| state.1 > 0)
            .expect("never poisoned");
        state.1 == 0
    }
}

impl Drop for RunningBuild<'_> {
    fn drop(&mut self) {
        let mut state = self.0.state.lock().expect("never poisoned");
        state.1 -= 1;
        if state.1 == 0 {
            self.0.none_running.notify_all();
        }
    }
}

pub(crate) fn stopped() -> io::Error {
    io::Error::other("the replica stopped: snapshot build abandoned")
}

fn invalid(error: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error.to_string())
}

impl<C: LedgerConfig> LedgerStateMachine<C> {
    /// The state machine of the replica whose data is in `dir`: the newest snapshot if there is
    /// one, else an empty ledger.
    pub fn open(dir: &Path, options: &StorageOptions) -> io::Result<LedgerStateMachine<C>> {
        Self::open_keeping_events(dir, options, false)
    }

    /// [`LedgerStateMachine::open`], keeping the replica's change events in `DATA_DIR/events`
    /// when `events` (see [`crate::event_log`]: real files, outside `options.storage`, since
    /// the events are derived from the log and never its truth).
    pub fn open_keeping_events(
        dir: &Path,
        options: &StorageOptions,
        events: bool,
    ) -> io::Result<LedgerStateMachine<C>> {
        let snapshot_path = dir.join(SNAPSHOT_FILE);
        remove_stale_temp_files(options.storage.as_ref(), dir)?;
        let events = match events {
            true => Some(EventLog::open(dir)?),
            false => None,
        };
        let state = Arc::new(RwLock::new(replicated(
            StateMachine::default(),
            events.is_some(),
        )));
        let applier = match options.apply_on_threads {
            true => Some(Arc::new(Applier::spawn(
                Arc::clone(&state),
                events.clone(),
            )?)),
            false => None,
        };
        let machine = LedgerStateMachine {
            applier,
            events,
            state,
            inner: Arc::new(Mutex::new(Inner {
                last_applied: None,
                membership: StoredMembership::default(),
                current: None,
                installs_count: 0,
            })),
            builds: Arc::new(Builds::default()),
            snapshot_path,
            options: Arc::new(options.clone()),
            _config: std::marker::PhantomData,
        };
        if let Some(SnapshotFile { meta, state, .. }) =
            read_snapshot_file(options.storage.as_ref(), dir)?
        {
            let seq_last = state.event_seq_last();
            *machine.state.write().expect("never poisoned") =
                replicated(state, machine.events.is_some());
            if let Some(events) = &machine.events {
                events.state_at(seq_last);
            }
            let mut inner = machine.inner.lock().expect("never poisoned");
            inner.last_applied = meta.last_log_id;
            inner.membership = meta.last_membership.clone();
            inner.current = Some(meta);
        }
        Ok(machine)
    }

    /// The replica's change events, if it keeps them.
    pub fn events(&self) -> Option<EventReader> {
        self.events.as_ref().map(EventLog::reader)
    }

    /// The ledger state (read it for queries; only this state machine writes it).
    pub fn state(&self) -> &SharedState {
        &self.state
    }

    /// The last applied log index (0 before the first).
    pub fn applied_index(&self) -> u64 {
        self.last_applied_index().unwrap_or(0)
    }

    /// The last applied log index, if any entry was applied.
    pub fn last_applied_index(&self) -> Option<u64> {
        self.inner
            .lock()
            .expect("never poisoned")
            .last_applied
            .map(|l| l.index())
    }

    /// The last applied log index and the state digest at it (the index is read under the
    /// state's read lock, so no apply slips in between).
    pub fn applied(&self) -> (u64, StateDigest) {
        let state = self.state.read().expect("never poisoned");
        (self.applied_index(), state.digest())
    }

    fn dir(&self) -> &Path {
        self.snapshot_path
            .parent()
            .expect("the snapshot file is in the data directory")
    }

    /// Starts receiving the snapshot a peer offers, into a temporary file of its own (see
    /// [`SnapshotReceiver`]). Nothing is replaced until the finished snapshot is installed.
    pub fn receive_snapshot(&self, offer: &SnapshotOffer) -> io::Result<SnapshotReceiver> {
        SnapshotReceiver::start(
            &self.options.storage,
            self.dir(),
            offer,
            SnapshotData::check_structure,
        )
    }

    /// Makes `temp` (a complete, synced snapshot file at `meta`) the snapshot file, if it is
    /// newer than the current one; otherwise drops it. Call with the inner lock held, so that a
    /// build and an install cannot both decide they are newest. Returns whether it was kept.
    fn publish(&self, inner: &mut Inner, meta: &SnapshotMeta, temp: TempFile) -> io::Result<bool> {
        let current = inner.current.as_ref().and_then(|c| c.last_log_id);
        if current.is_some() && current >= meta.last_log_id {
            return Ok(false);
        }
        temp.keep_as(&self.snapshot_path)?;
        inner.current = Some(meta.clone());
        Ok(true)
    }

    /// The current snapshot, opened from its file.
    fn open_current(&self) -> io::Result<Option<SnapshotOf>> {
        Ok(
            open_snapshot_file(self.options.storage.as_ref(), &self.snapshot_path)?
                .map(|(meta, snapshot)| SnapshotOf { meta, snapshot }),
        )
    }

    /// Applies one sealed batch: on the apply threads (urgent when a client waits for the
    /// outcome: the leader's own writes), or inline.
    ///
    /// The applied position moves to `log_id` while the state's write lock is still held, so
    /// that whoever reads the state with the position (a snapshot build) sees both or neither:
    /// a snapshot whose state held entry k under the position k - 1 would apply k twice after
    /// a restart (ids answer `exists`, but the batch count and the timestamps move on, and the
    /// replica no longer agrees with its group).
    async fn apply_batch(
        &self,
        log_id: LogId,
        batch: &bytes::Bytes,
        urgent: bool,
    ) -> io::Result<BatchOutcome> {
        let index = log_id.index();
        let apply_twice =
            self.options.planted_bug == Some(PlantedBug::ApplyTwice) && index.is_multiple_of(16);
        let inner = Arc::clone(&self.inner);
        let applied = move || inner.lock().expect("never poisoned").last_applied = Some(log_id);
        if let Some(applier) = &self.applier {
            let outcome = applier
                .apply(index, batch.clone(), urgent, Box::new(applied))
                .await?;
            if apply_twice {
                applier
                    .apply(index, batch.clone(), urgent, Box::new(|| {}))
                    .await?;
            }
            return Ok(outcome);
        }
        let batch = Batch::decode(batch).map_err(invalid)?;
        let mut state = self.state.write().expect("never poisoned");
        let results = state.apply(&batch);
        if apply_twice {
            state.apply(&batch);
        }
        let changes = state.take_events(index);
        applied();
        drop(state);
        if let Some(events) = &self.events {
            events.append(changes);
        }
        Ok(BatchOutcome::from_results(&results))
    }
}

impl<C: LedgerConfig> RaftSnapshotBuilder<C> for LedgerStateMachine<C> {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf, io::Error> {
        // Seconds of file I/O for a big ledger: on a blocking thread in production, so the
        // runtime's workers keep serving heartbeats; inline in the simulator (deterministic).
        if self.applier.is_none() {
            return self.build_snapshot_blocking();
        }
        let machine = self.clone();
        tokio::task::spawn_blocking(move || machine.build_snapshot_blocking())
            .await
            .map_err(io::Error::other)?
    }
}

impl<C: LedgerConfig> LedgerStateMachine<C> {
    /// Builds a snapshot of the state as applied now, holding the state's read lock only a
    /// step at a time (`SNAPSHOT_STEP_RECORDS_MAX` records), so batches apply in between; the
    /// bytes are those of the state when the build began (see [`ledger::SnapshotWriter`]).
    fn build_snapshot_blocking(&self) -> Result<SnapshotOf, io::Error> {
        let _running = self.builds.begin()?;
        // The state is read under the state lock and the applied position under the inner
        // lock, both held, so they describe the same moment.
        let (meta, installs_count, mut serialising) = {
            let state = self.state.read().expect("never poisoned");
            let inner = self.inner.lock().expect("never poisoned");
            let meta = SnapshotMeta {
                last_log_id: inner.last_applied,
                last_membership: inner.membership.clone(),
            };
            let serialising = Serialising::begin(&self.options.storage, self.dir(), &state)?;
            (meta, inner.installs_count, serialising)
        };
        loop {
            let state = self.state.read().expect("never poisoned");
            if self.inner.lock().expect("never poisoned").installs_count != installs_count {
                // An installed snapshot replaced the state this build began from; it is newer,
                // and it is what this build answers.
                drop(state);
                let _inner = self.inner.lock().expect("never poisoned");
                return self.open_current()?.ok_or_else(|| {
                    io::Error::other("no snapshot file after a snapshot was installed")
                });
            }
            if self.builds.stopped() {
                return Err(stopped());
            }
            if serialising.step(&state)? {
                break;
            }
        }
        let serialised = serialising.finish()?;
        let temp = assemble_snapshot_file(&self.options.storage, self.dir(), &meta, serialised)?;
        let mut inner = self.inner.lock().expect("never poisoned");
        if self.builds.stopped() {
            return Err(stopped());
        }
        // An install of a newer snapshot may have got there first: then that one stays, and is
        // what this build answers.
        self.publish(&mut inner, &meta, temp)?;
        self.open_current()?
            .ok_or_else(|| io::Error::other("the snapshot file vanished after it was written"))
    }
}

impl<C: LedgerConfig> LedgerStateMachine<C> {
    /// Stops snapshot building for good (a replica that stopped): builds in progress give up at
    /// their next step without publishing; waits (blocking, at most `patience`) until none runs.
    /// Answers whether none does.
    pub(crate) fn stop_builds(&self, patience: std::time::Duration) -> bool {
        self.builds.stop(patience)
    }
}

impl<C: LedgerConfig> LedgerStateMachine<C> {
    /// Installs `snapshot` at `meta`: a snapshot received from a peer (its structure and digest
    /// already checked) or the current snapshot file (openraft restoring it at start).
    ///
    /// A replica never holds two ledgers: under the state's write lock (readers wait; nothing
    /// applies during an install) the current state is let go first, then the snapshot is
    /// decoded and checked whole in its place, then its file is kept and the position moves.
    /// If the decoded snapshot is refused (ids that appear twice, balances that disagree with
    /// the transfers: what the structure check cannot see), the replica has no state left to
    /// serve and the error stops Raft; its directory is unchanged, so a restart recovers the
    /// state it had.
    fn install_snapshot_blocking(
        &self,
        meta: &SnapshotMeta,
        mut snapshot: SnapshotData,
    ) -> Result<(), io::Error> {
        let temp = snapshot.take_received();
        let mut shared = self.state.write().expect("never poisoned");
        {
            let inner = self.inner.lock().expect("never poisoned");
            if meta.last_log_id < inner.last_applied {
                return Err(invalid(format!(
                    "refusing to install a snapshot at {:?}: entries up to {:?} are already applied",
                    meta.last_log_id, inner.last_applied
                )));
            }
        }
        drop(std::mem::take(&mut *shared));
        let (state, _) = snapshot.decode().map_err(|error| {
            invalid(format!(
                "the snapshot at {:?} is refused ({error}) after this replica let go of its \
                 state to decode it: Raft stops; the data directory is unchanged, and a \
                 restart recovers the state it held",
                meta.last_log_id
            ))
        })?;
        let mut inner = self.inner.lock().expect("never poisoned");
        // The file first: if keeping it fails, the position does not move (and Raft stops).
        let from_peer = temp.is_some();
        if let Some(temp) = temp {
            self.publish(&mut inner, meta, temp)?;
        }
        let seq_last = state.event_seq_last();
        *shared = replicated(state, self.events.is_some());
        if let Some(events) = &self.events {
            events.state_at(seq_last);
        }
        inner.last_applied = meta.last_log_id;
        inner.membership = meta.last_membership.clone();
        inner.installs_count += 1;
        if from_peer {
            tracing::info!(
                last_log_id = ?meta.last_log_id,
                len_bytes = snapshot.len_bytes(),
                "{SNAPSHOT_INSTALLED_FROM_PEER}"
            );
        }
        Ok(())
    }
}

impl crate::machine::ReplicaMachine for LedgerStateMachine<crate::types::TypeConfig> {
    const KIND: &'static str = crate::data_dir::LEDGER_MACHINE;

    fn receive_snapshot(&self, offer: &SnapshotOffer) -> io::Result<SnapshotReceiver> {
        LedgerStateMachine::receive_snapshot(self, offer)
    }

    fn applied_index(&self) -> u64 {
        LedgerStateMachine::applied_index(self)
    }

    fn stop_builds(&self, patience: std::time::Duration) -> bool {
        LedgerStateMachine::stop_builds(self, patience)
    }
}

impl<C: LedgerConfig> RaftStateMachine<C> for LedgerStateMachine<C> {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = LedgerStateMachine<C>;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let inner = self.inner.lock().expect("never poisoned");
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<C>, io::Error>> + Unpin + openraft::OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            let outcome = match &entry.payload {
                // The position moves inside, under the state's lock.
                EntryPayload::Normal(sealed) => {
                    let started = std::time::Instant::now();
                    let mut outcome = self
                        .apply_batch(entry.log_id, &sealed.0, responder.is_some())
                        .await?;
                    if responder.is_some() {
                        outcome.applied =
                            crate::ApplyTiming(Some((started, std::time::Instant::now())));
                    }
                    outcome
                }
                EntryPayload::Membership(membership) => {
                    let mut inner = self.inner.lock().expect("never poisoned");
                    inner.membership =
                        StoredMembership::new(Some(entry.log_id), membership.clone());
                    inner.last_applied = Some(entry.log_id);
                    BatchOutcome::default()
                }
                EntryPayload::Blank => {
                    self.inner.lock().expect("never poisoned").last_applied = Some(entry.log_id);
                    BatchOutcome::default()
                }
            };
            if let Some(observer) = &self.options.apply_observer {
                observer(
                    &entry,
                    &outcome,
                    &self.state.read().expect("never poisoned"),
                );
            }
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
        // Decoding a big ledger takes seconds: on a blocking thread in production, so the
        // runtime's workers keep serving heartbeats; inline in the simulator (deterministic).
        if self.applier.is_none() {
            return self.install_snapshot_blocking(meta, snapshot);
        }
        let (machine, meta) = (self.clone(), meta.clone());
        tokio::task::spawn_blocking(move || machine.install_snapshot_blocking(&meta, snapshot))
            .await
            .map_err(io::Error::other)?
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotOf>, io::Error> {
        let _inner = self.inner.lock().expect("never poisoned");
        self.open_current()
    }
}

#[cfg(test)]
mod tests {
    use futures::executor::block_on;
    use openraft::storage::RaftStateMachine;

    use super::*;
    use crate::snapshot::tests::{
        forged_60_bytes, ledger_with_transfers, meta_at, offer, serialise_state, storage,
        temp_files,
    };
    use crate::types::TypeConfig;

    type Machine = LedgerStateMachine<TypeConfig>;

    fn open(dir: &Path) -> Machine {
        Machine::open(dir, &StorageOptions::default()).unwrap()
    }

    /// `state`'s snapshot at `meta`, as `machine` receives it from a peer.
    fn receive(machine: &Machine, meta: SnapshotMeta, state: &StateMachine) -> SnapshotData {
        let mut bytes = Vec::new();
        state.write_snapshot(&mut bytes).unwrap();
        receive_bytes(machine, meta, &bytes).unwrap()
    }

    /// `bytes` as `machine` receives them from a peer, offered with their own digest.
    fn receive_bytes(
        machine: &Machine,
        meta: SnapshotMeta,
        bytes: &[u8],
    ) -> io::Result<SnapshotData> {
        let digest = StateDigest::of_snapshot_bytes(&mut &bytes[..])?;
        let mut receiver = machine.receive_snapshot(&offer(meta, bytes.len() as u64, digest.0))?;
        for chunk in bytes.chunks(limits::PEER_SNAPSHOT_CHUNK_BYTES) {
            receiver.write(chunk)?;
        }
        receiver.finish()
    }

    /// Installs as in production: the decode runs on a blocking thread of a runtime.
    fn install_data(
        machine: &mut Machine,
        meta: SnapshotMeta,
        data: SnapshotData,
    ) -> io::Result<()> {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(machine.install_snapshot(&meta, data))
    }

    fn install(machine: &mut Machine, index: u64, state: &StateMachine) -> io::Result<()> {
        let data = receive(machine, meta_at(index), state);
        install_data(machine, meta_at(index), data)
    }

    fn snapshot_file_bytes(dir: &Path) -> Vec<u8> {
        std::fs::read(dir.join(SNAPSHOT_FILE)).unwrap()
    }

    /// A machine in `dir` with a ledger of 5 transfers installed at index 5, that ledger, and
    /// its snapshot file's bytes.
    fn installed_at_5(dir: &Path) -> (Machine, StateMachine, Vec<u8>) {
        let mut machine = open(dir);
        let state = ledger_with_transfers(5);
        install(&mut machine, 5, &state).unwrap();
        let file = snapshot_file_bytes(dir);
        (machine, state, file)
    }

    #[test]
    fn an_older_snapshot_never_replaces_a_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut machine = open(dir.path());
        let (newer, older) = (ledger_with_transfers(20), ledger_with_transfers(10));
        install(&mut machine, 20, &newer).unwrap();
        assert_eq!(machine.applied(), (20, newer.digest()));
        let file = snapshot_file_bytes(dir.path());

        // Installing an older snapshot is refused, and changes nothing.
        let error = install(&mut machine, 10, &older).expect_err("refused");
        assert!(error.to_string().contains("already applied"), "{error}");
        assert_eq!(machine.applied(), (20, newer.digest()));

        // A build of an older state that finishes after the newer install does not replace the
        // snapshot file.
        let serialised = serialise_state(&storage(), dir.path(), &older).unwrap();
        let temp =
            assemble_snapshot_file(&storage(), dir.path(), &meta_at(10), serialised).unwrap();
        let kept = machine
            .publish(&mut machine.inner.lock().unwrap(), &meta_at(10), temp)
            .unwrap();
        assert!(!kept);
        assert_eq!(snapshot_file_bytes(dir.path()), file);
        let current = block_on(machine.get_current_snapshot()).unwrap().unwrap();
        assert_eq!(current.meta, meta_at(20));
        assert_eq!(temp_files(dir.path()), Vec::<String>::new());

        // A restart starts from the newer one.
        drop((machine, current));
        assert_eq!(open(dir.path()).applied(), (20, newer.digest()));
    }

    #[test]
    fn a_forged_snapshot_from_a_peer_is_refused_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (machine, state, file) = installed_at_5(dir.path());

        let forged = forged_60_bytes();
        let mut receiver = machine
            .receive_snapshot(&offer(meta_at(99), forged.len() as u64, [0; 32]))
            .unwrap();
        receiver.write(&forged).unwrap();
        let error = receiver.finish().err().expect("refused");
        assert!(error.to_string().contains("counts more records"), "{error}");

        assert_eq!(machine.applied(), (5, state.digest()));
        assert_eq!(snapshot_file_bytes(dir.path()), file);
        assert_eq!(temp_files(dir.path()), Vec::<String>::new());
    }

    #[test]
    fn a_built_snapshot_is_read_back_by_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut machine = open(dir.path());
        let state = ledger_with_transfers(limits::BATCH_EVENTS_MAX as u128 + 1);
        install(&mut machine, 3, &state).unwrap();
        // Building again (as openraft does on its schedule) writes the same state's file anew.
        std::fs::remove_file(dir.path().join(SNAPSHOT_FILE)).unwrap();
        machine.inner.lock().unwrap().current = None;
        // In production a build runs on a blocking thread of the runtime.
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let built = runtime.block_on(machine.build_snapshot()).unwrap();
        assert_eq!(built.meta, meta_at(3));
        assert_eq!(built.snapshot.digest(), state.digest().0);
        assert_eq!(temp_files(dir.path()), Vec::<String>::new());
        drop((machine, built));
        assert_eq!(open(dir.path()).applied(), (3, state.digest()));
    }

    #[test]
    fn a_build_in_progress_when_the_replica_stops_gives_up_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let mut machine = open(dir.path());
        let state = ledger_with_transfers(10);
        install(&mut machine, 3, &state).unwrap();
        std::fs::remove_file(dir.path().join(SNAPSHOT_FILE)).unwrap();
        machine.inner.lock().unwrap().current = None;
        let counts = |machine: &Machine| *machine.builds.state.lock().unwrap();
        let patiently = |done: &dyn Fn() -> bool| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while !done() {
                assert!(std::time::Instant::now() < deadline, "timed out");
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        };

        // A build starts and waits for the state (held here, as a long apply would).
        let held = machine.state.write().unwrap();
        let builder = machine.clone();
        let build = std::thread::spawn(move || builder.build_snapshot_blocking());
        patiently(&|| counts(&machine).1 == 1);
        // The replica stops: the stop waits for the build...
        let stopper = machine.clone();
        let stop = std::thread::spawn(move || {
            stopper.stop_builds(std::time::Duration::from_secs(
                limits::SNAPSHOT_BUILD_STOP_SECONDS_MAX,
            ))
        });
        patiently(&|| counts(&machine).0);
        assert!(!stop.is_finished());
        // ... which gives up at its next step once it can go on.
        drop(held);
        assert!(stop.join().unwrap(), "the build was still running");
        let error = build.join().unwrap().err().expect("the build gave up");
        assert!(error.to_string().contains("stopped"), "{error}");
        assert_eq!(counts(&machine), (true, 0));
        // Nothing was published and no temporary file is left; no build starts any more.
        assert!(!dir.path().join(SNAPSHOT_FILE).exists());
        assert_eq!(temp_files(dir.path()), Vec::<String>::new());
        assert!(machine.build_snapshot_blocking().is_err());
        assert_eq!(temp_files(dir.path()), Vec::<String>::new());
    }

    #[test]
    fn a_snapshot_refused_only_once_decoded_stops_the_install_and_a_restart_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let (mut machine, state, file) = installed_at_5(dir.path());

        // Account 1's id written over account 2's: the structure and the digest are sound, so
        // the reception accepts it; only the decoded ledger shows the id twice.
        let mut bytes = Vec::new();
        ledger_with_transfers(8).write_snapshot(&mut bytes).unwrap();
        // The accounts follow the 36 bytes of fixed fields and their 8-byte count.
        let (accounts_at, account_bytes) = (36 + 8, ledger::ACCOUNT_SIZE);
        bytes.copy_within(accounts_at..accounts_at + 16, accounts_at + account_bytes);
        let data = receive_bytes(&machine, meta_at(8), &bytes).unwrap();
        let error = install_data(&mut machine, meta_at(8), data).expect_err("refused");
        let text = error.to_string();
        assert!(
            text.contains("an account id appears twice") && text.contains("restart"),
            "{text}"
        );

        // Nothing on disk changed: the snapshot file is the old one, no temporary file is
        // left, and a restart starts from the state the replica had.
        assert_eq!(snapshot_file_bytes(dir.path()), file);
        assert_eq!(temp_files(dir.path()), Vec::<String>::new());
        drop(machine);
        assert_eq!(open(dir.path()).applied(), (5, state.digest()));
    }
}
