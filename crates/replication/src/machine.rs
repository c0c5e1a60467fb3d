//! What a [`crate::Replica`] needs of its state machine beyond openraft's trait: to receive a
//! peer's snapshot into a file of its own, to tell how far it has applied, and to stop its
//! snapshot builds when the replica stops. The ledger ([`crate::state_machine`]) and the small
//! in-memory states of [`crate::small_state`] (the cluster's meta group) implement it; the log
//! store, the transport and the membership rules are the same for every machine.
//!
//! Owns the trait only; it must not hold any machine's rules.

use std::io;
use std::time::Duration;

use openraft::storage::RaftStateMachine;

use crate::snapshot::{SnapshotData, SnapshotOffer, SnapshotReceiver};
use crate::types::TypeConfig;

/// A state machine a replica can run: openraft's trait with snapshots held in files
/// ([`SnapshotData`]), plus what the replica and its transport ask of it.
pub trait ReplicaMachine:
    RaftStateMachine<TypeConfig, SnapshotData = SnapshotData> + Clone + Send + Sync + 'static
{
    /// The machine's name in the data directory's marker (`data_dir::FormatMarker::machine`):
    /// a replica of one machine refuses a directory of another.
    const KIND: &'static str;

    /// Starts receiving the snapshot a peer offers, into a temporary file of its own that
    /// [`SnapshotReceiver::finish`] checks whole with this machine's rules. Nothing is replaced
    /// until Raft installs the finished snapshot.
    fn receive_snapshot(&self, offer: &SnapshotOffer) -> io::Result<SnapshotReceiver>;

    /// The last applied log index (0 before the first).
    fn applied_index(&self) -> u64;

    /// Called once the replica has stopped: stops snapshot building for good (and tells the
    /// machine's watchers, if it has any) and waits, blocking, at most `patience` for builds in
    /// progress to give up. Answers whether none runs.
    fn stop_builds(&self, patience: Duration) -> bool;
}
