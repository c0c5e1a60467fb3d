//! Small replicated states held whole in memory, as Raft state machines: the cluster's meta
//! group (its map, at most a few megabytes) and whatever else is small and needs consensus.
//!
//! A [`SmallState`] says how to apply one entry's bytes and how to encode and decode itself;
//! [`SmallStateMachine`] does the rest the ledger's machine does for the ledger: applies in log
//! order under a lock, moves the applied position with the state, builds snapshots (the state
//! encoded whole, in a file with the same header as a ledger snapshot, so the transport streams
//! both alike), receives a peer's snapshot into a file of its own and checks it whole (length,
//! digest, decoding) before Raft may install it, keeps a snapshot only if it is newer than the
//! current one, and tells watchers each time the applied position moves.
//!
//! Owns: the machinery around a small state. Must not know any state's rules (those are the
//! `SmallState`'s, in crates above this one), nor hold a state too big to encode in one piece
//! (`limits::SMALL_STATE_SNAPSHOT_BYTES_MAX`).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use futures::{Stream, TryStreamExt};
use journal::storage::Storage;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, RaftSnapshotBuilder};

use crate::machine::ReplicaMachine;
use crate::snapshot::{
    SNAPSHOT_FILE, SnapshotData, SnapshotOffer, SnapshotReceiver, TempFile, open_snapshot_file,
    remove_stale_temp_files, write_snapshot_bytes,
};
use crate::state_machine::{
    Builds, LogId, SNAPSHOT_INSTALLED_FROM_PEER, SnapshotMeta, SnapshotOf, StoredMembership,
    stopped,
};
use crate::storage_options::StorageOptions;
use crate::types::{BatchOutcome, LedgerConfig, TypeConfig};

/// A state small enough to hold whole in memory and to snapshot in one piece.
pub trait SmallState: Default + Send + Sync + 'static {
    /// The state's name in its data directory's marker ([`ReplicaMachine::KIND`]).
    const KIND: &'static str;

    /// Applies one committed entry's bytes (as its leader proposed them). Must be deterministic:
    /// every replica applies the same bytes in the same order and must reach the same state. A
    /// command the state refuses changes nothing; the outcome says why, in its codes.
    fn apply(&mut self, entry: &[u8]) -> BatchOutcome;

    /// The whole state as bytes, the same on every replica at the same applied index.
    fn encode(&self) -> Vec<u8>;

    /// A state from the bytes [`SmallState::encode`] made; anything else refused.
    fn decode(bytes: &[u8]) -> io::Result<Self>;
}

/// The applied position and snapshot bookkeeping, under one lock.
struct Inner {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    /// The snapshot in the snapshot file (never newer than `last_applied`).
    current: Option<SnapshotMeta>,
    /// Snapshots received from a peer and installed since this machine opened.
    installed_from_peer: u64,
}

/// A small state as a Raft state machine. Clones share it.
pub struct SmallStateMachine<S: SmallState, C: LedgerConfig = TypeConfig> {
    state: Arc<RwLock<S>>,
    inner: Arc<Mutex<Inner>>,
    builds: Arc<Builds>,
    /// The applied index, for watchers (moves after the state has).
    applied: Arc<tokio::sync::watch::Sender<u64>>,
    /// True once the replica stopped (`stop_builds`): watchers end.
    stopped: Arc<tokio::sync::watch::Sender<bool>>,
    storage: Arc<dyn Storage>,
    snapshot_path: PathBuf,
    _config: std::marker::PhantomData<C>,
}

impl<S: SmallState, C: LedgerConfig> Clone for SmallStateMachine<S, C> {
    fn clone(&self) -> Self {
        SmallStateMachine {
            state: Arc::clone(&self.state),
            inner: Arc::clone(&self.inner),
            builds: Arc::clone(&self.builds),
            applied: Arc::clone(&self.applied),
            stopped: Arc::clone(&self.stopped),
            storage: Arc::clone(&self.storage),
            snapshot_path: self.snapshot_path.clone(),
            _config: std::marker::PhantomData,
        }
    }
}

fn invalid(error: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error.to_string())
}

/// Reads a small state's snapshot whole, checks its digest and decodes it.
fn decode_snapshot<S: SmallState>(data: &SnapshotData) -> io::Result<S> {
    S::decode(&data.read_whole(limits::SMALL_STATE_SNAPSHOT_BYTES_MAX)?)
}

/// The check a received snapshot passes before Raft may install it: the whole state decodes.
fn check_received<S: SmallState>(data: &SnapshotData) -> io::Result<()> {
    decode_snapshot::<S>(data).map(drop)
}

impl<S: SmallState, C: LedgerConfig> SmallStateMachine<S, C> {
    /// The state machine of the replica whose data is in `dir`: the newest snapshot's state if
    /// there is one (the log after it is applied again by Raft), else the empty state.
    pub fn open(dir: &Path, options: &StorageOptions) -> io::Result<SmallStateMachine<S, C>> {
        let snapshot_path = dir.join(SNAPSHOT_FILE);
        remove_stale_temp_files(options.storage.as_ref(), dir)?;
        let mut inner = Inner {
            last_applied: None,
            membership: StoredMembership::default(),
            current: None,
            installed_from_peer: 0,
        };
        let mut state = S::default();
        if let Some((meta, data)) = open_snapshot_file(options.storage.as_ref(), &snapshot_path)? {
            state = decode_snapshot(&data)
                .map_err(|e| invalid(format!("{}: {e}", snapshot_path.display())))?;
            inner.last_applied = meta.last_log_id;
            inner.membership = meta.last_membership.clone();
            inner.current = Some(meta);
        }
        let applied_index = inner.last_applied.map_or(0, |l| l.index());
        Ok(SmallStateMachine {
            state: Arc::new(RwLock::new(state)),
            inner: Arc::new(Mutex::new(inner)),
            builds: Arc::new(Builds::default()),
            applied: Arc::new(tokio::sync::watch::channel(applied_index).0),
            stopped: Arc::new(tokio::sync::watch::channel(false).0),
            storage: Arc::clone(&options.storage),
            snapshot_path,
            _config: std::marker::PhantomData,
        })
    }

    /// Reads the state as applied now.
    pub fn read<T>(&self, read: impl FnOnce(&S) -> T) -> T {
        read(&self.state.read().expect("never poisoned"))
    }

    /// The applied index now and each time it moves (after the state has moved with it).
    pub fn watch_applied(&self) -> tokio::sync::watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// Turns true once the replica has stopped (a watcher's cue to end).
    pub fn watch_stopped(&self) -> tokio::sync::watch::Receiver<bool> {
        self.stopped.subscribe()
    }

    /// The last applied log index (0 before the first).
    pub fn applied_index(&self) -> u64 {
        self.inner
            .lock()
            .expect("never poisoned")
            .last_applied
            .map_or(0, |l| l.index())
    }

    /// How many snapshots received from a peer this machine installed since it opened.
    pub fn installed_from_peer_count(&self) -> u64 {
        self.inner
            .lock()
            .expect("never poisoned")
            .installed_from_peer
    }

    fn dir(&self) -> &Path {
        self.snapshot_path
            .parent()
            .expect("the snapshot file is in the data directory")
    }

    fn tell_applied(&self, log_id: LogId) {
        self.applied.send_replace(log_id.index());
    }

    /// Makes `temp` (a complete, synced snapshot file at `meta`) the snapshot file if it is
    /// newer than the current one; otherwise drops it. Call with the inner lock held.
    fn publish(&self, inner: &mut Inner, meta: &SnapshotMeta, temp: TempFile) -> io::Result<()> {
        let current = inner.current.as_ref().and_then(|c| c.last_log_id);
        if current.is_some() && current >= meta.last_log_id {
            return Ok(());
        }
        temp.keep_as(&self.snapshot_path)?;
        inner.current = Some(meta.clone());
        Ok(())
    }

    fn open_current(&self) -> io::Result<Option<SnapshotOf>> {
        Ok(
            open_snapshot_file(self.storage.as_ref(), &self.snapshot_path)?
                .map(|(meta, snapshot)| SnapshotOf { meta, snapshot }),
        )
    }

    /// Encodes the state as applied now into a new snapshot file and keeps it if it is the
    /// newest. The state is read with the position under both locks, so they describe one
    /// moment; the file is written outside them.
    fn build_snapshot_blocking(&self) -> io::Result<SnapshotOf> {
        let _running = self.builds.begin()?;
        let (meta, bytes) = {
            let state = self.state.read().expect("never poisoned");
            let inner = self.inner.lock().expect("never poisoned");
            let meta = SnapshotMeta {
                last_log_id: inner.last_applied,
                last_membership: inner.membership.clone(),
            };
            (meta, state.encode())
        };
        if bytes.len() as u64 > limits::SMALL_STATE_SNAPSHOT_BYTES_MAX {
            return Err(io::Error::other(format!(
                "the state encodes to {} bytes, more than SMALL_STATE_SNAPSHOT_BYTES_MAX ({})",
                bytes.len(),
                limits::SMALL_STATE_SNAPSHOT_BYTES_MAX
            )));
        }
        let temp = write_snapshot_bytes(&self.storage, self.dir(), &meta, &bytes)?;
        let mut inner = self.inner.lock().expect("never poisoned");
        if self.builds.stopped() {
            return Err(stopped());
        }
        self.publish(&mut inner, &meta, temp)?;
        self.open_current()?
            .ok_or_else(|| io::Error::other("the snapshot file vanished after it was written"))
    }

    /// Installs `snapshot` at `meta` (one received from a peer, already checked; or the
    /// current file, which openraft restores at start): decoded whole before anything is
    /// replaced, refused if older than what is applied.
    fn install_snapshot_blocking(
        &self,
        meta: &SnapshotMeta,
        mut snapshot: SnapshotData,
    ) -> io::Result<()> {
        let decoded: S = decode_snapshot(&snapshot)?;
        let temp = snapshot.take_received();
        let mut state = self.state.write().expect("never poisoned");
        let mut inner = self.inner.lock().expect("never poisoned");
        if meta.last_log_id < inner.last_applied {
            return Err(invalid(format!(
                "refusing to install a snapshot at {:?}: entries up to {:?} are already applied",
                meta.last_log_id, inner.last_applied
            )));
        }
        let from_peer = temp.is_some();
        if let Some(temp) = temp {
            self.publish(&mut inner, meta, temp)?;
            inner.installed_from_peer += 1;
        }
        // (Counted even if a newer snapshot file was already kept: the state was installed.)
        *state = decoded;
        inner.last_applied = meta.last_log_id;
        inner.membership = meta.last_membership.clone();
        drop(inner);
        drop(state);
        if let Some(log_id) = meta.last_log_id {
            self.tell_applied(log_id);
        }
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

impl<S: SmallState, C: LedgerConfig> RaftSnapshotBuilder<C> for SmallStateMachine<S, C> {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf, io::Error> {
        // A file write and an fsync: off the runtime's workers.
        let machine = self.clone();
        tokio::task::spawn_blocking(move || machine.build_snapshot_blocking())
            .await
            .map_err(io::Error::other)?
    }
}

impl<S: SmallState, C: LedgerConfig> RaftStateMachine<C> for SmallStateMachine<S, C> {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = SmallStateMachine<S, C>;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let inner = self.inner.lock().expect("never poisoned");
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<C>, io::Error>> + Unpin + openraft::OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            let outcome = {
                // The position moves with the state, under the state's lock, so a snapshot
                // build never sees one without the other.
                let mut state = self.state.write().expect("never poisoned");
                let mut inner = self.inner.lock().expect("never poisoned");
                let outcome = match &entry.payload {
                    EntryPayload::Normal(bytes) => state.apply(&bytes.0),
                    EntryPayload::Membership(membership) => {
                        inner.membership =
                            StoredMembership::new(Some(entry.log_id), membership.clone());
                        BatchOutcome::default()
                    }
                    EntryPayload::Blank => BatchOutcome::default(),
                };
                inner.last_applied = Some(entry.log_id);
                outcome
            };
            self.tell_applied(entry.log_id);
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

impl<S: SmallState> ReplicaMachine for SmallStateMachine<S, TypeConfig> {
    const KIND: &'static str = S::KIND;

    fn receive_snapshot(&self, offer: &SnapshotOffer) -> io::Result<SnapshotReceiver> {
        if offer.len_bytes > limits::SMALL_STATE_SNAPSHOT_BYTES_MAX {
            return Err(invalid(format!(
                "snapshot offer: len_bytes {} exceeds SMALL_STATE_SNAPSHOT_BYTES_MAX ({})",
                offer.len_bytes,
                limits::SMALL_STATE_SNAPSHOT_BYTES_MAX
            )));
        }
        SnapshotReceiver::start(&self.storage, self.dir(), offer, check_received::<S>)
    }

    fn applied_index(&self) -> u64 {
        SmallStateMachine::applied_index(self)
    }

    fn stop_builds(&self, patience: std::time::Duration) -> bool {
        self.stopped.send_replace(true);
        self.builds.stop(patience)
    }
}

#[cfg(test)]
mod tests {
    use openraft::storage::RaftStateMachine;

    use super::*;
    use crate::snapshot::tests::{meta_at, offer, temp_files};

    /// A toy state: the entries applied, concatenated (at most 1 KiB, so a bigger snapshot is
    /// one the state refuses).
    #[derive(Default, Debug, PartialEq, Eq)]
    struct Log(Vec<u8>);

    impl SmallState for Log {
        const KIND: &'static str = "test-log";

        fn apply(&mut self, entry: &[u8]) -> BatchOutcome {
            self.0.extend_from_slice(entry);
            BatchOutcome::default()
        }
        fn encode(&self) -> Vec<u8> {
            self.0.clone()
        }
        fn decode(bytes: &[u8]) -> io::Result<Log> {
            if bytes.len() > 1024 {
                return Err(invalid("more than a toy log holds"));
            }
            Ok(Log(bytes.to_vec()))
        }
    }

    type Machine = SmallStateMachine<Log>;

    fn open(dir: &Path) -> Machine {
        Machine::open(dir, &StorageOptions::default()).unwrap()
    }

    /// `bytes` as `machine` receives them from a peer, offered with `digest`.
    fn receive(
        machine: &Machine,
        index: u64,
        bytes: &[u8],
        digest: [u8; 32],
    ) -> io::Result<SnapshotData> {
        let mut receiver = ReplicaMachine::receive_snapshot(
            machine,
            &offer(meta_at(index), bytes.len() as u64, digest),
        )?;
        receiver.write(bytes)?;
        receiver.finish()
    }

    fn digest(bytes: &[u8]) -> [u8; 32] {
        use sha2::Digest;
        sha2::Sha256::digest(bytes).into()
    }

    #[tokio::test]
    async fn a_received_snapshot_is_checked_whole_installed_kept_and_read_back_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut machine = open(dir.path());
        let mut watch = machine.watch_applied();
        let data = receive(&machine, 9, b"abc", digest(b"abc")).unwrap();
        machine.install_snapshot(&meta_at(9), data).await.unwrap();
        assert_eq!(machine.read(|log| log.0.clone()), b"abc");
        assert_eq!(
            (machine.applied_index(), *watch.borrow_and_update()),
            (9, 9)
        );
        assert_eq!(machine.installed_from_peer_count(), 1);
        // An older one is refused and changes nothing.
        let data = receive(&machine, 5, b"old", digest(b"old")).unwrap();
        let error = machine
            .install_snapshot(&meta_at(5), data)
            .await
            .unwrap_err();
        assert!(error.to_string().contains("already applied"), "{error}");
        assert_eq!(machine.read(|log| log.0.clone()), b"abc");
        assert_eq!(temp_files(dir.path()), Vec::<String>::new());
        // A restart starts from the kept file; a build there answers the same state.
        drop(machine);
        let mut machine = open(dir.path());
        assert_eq!(
            (machine.applied_index(), machine.read(|log| log.0.clone())),
            (9, b"abc".to_vec())
        );
        let built = machine
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert_eq!(built.meta, meta_at(9));
        assert_eq!(built.snapshot.read_whole(1024).unwrap(), b"abc");
    }

    #[test]
    fn a_snapshot_that_is_too_long_does_not_match_its_digest_or_does_not_decode_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let machine = open(dir.path());
        let too_long = offer(
            meta_at(1),
            limits::SMALL_STATE_SNAPSHOT_BYTES_MAX + 1,
            [0; 32],
        );
        let error = ReplicaMachine::receive_snapshot(&machine, &too_long)
            .err()
            .expect("refused");
        assert!(
            error.to_string().contains("SMALL_STATE_SNAPSHOT_BYTES_MAX"),
            "{error}"
        );
        let error = receive(&machine, 1, b"abc", [7; 32])
            .err()
            .expect("refused");
        assert!(error.to_string().contains("not the"), "{error}");
        let big = vec![1u8; 2000];
        let error = receive(&machine, 1, &big, digest(&big))
            .err()
            .expect("refused");
        assert!(error.to_string().contains("toy log"), "{error}");
        assert_eq!(temp_files(dir.path()), Vec::<String>::new());
        assert_eq!(machine.applied_index(), 0);
    }
}
