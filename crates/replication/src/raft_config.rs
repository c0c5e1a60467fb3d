//! The Raft settings every replica runs with, production and simulator alike, and the rule of
//! who initializes a new group. Written once so that the simulator tests what ships.

use std::io;

use openraft::{Config, SnapshotPolicy};

use crate::types::NodeId;

/// A group's timing and snapshot cadence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftTiming {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot (and purge the log behind it) every this many entries (0: never).
    pub snapshot_every_entries: u64,
    /// Entries kept in the log behind a snapshot (a follower slightly behind catches up from
    /// them instead of a whole snapshot).
    pub entries_kept_behind_snapshot: u64,
}

/// openraft's configuration for a group with `timing`.
pub fn raft_config(cluster_name: &str, timing: &RaftTiming) -> io::Result<Config> {
    Config {
        cluster_name: cluster_name.into(),
        heartbeat_interval: timing.heartbeat_interval_ms,
        election_timeout_min: timing.election_timeout_min_ms,
        election_timeout_max: timing.election_timeout_max_ms,
        snapshot_policy: match timing.snapshot_every_entries {
            0 => SnapshotPolicy::Never,
            entries => SnapshotPolicy::LogsSinceLast(entries),
        },
        max_in_snapshot_log_to_keep: timing.entries_kept_behind_snapshot,
        // Bounds one AppendEntries message (checked against the peer message limit).
        max_payload_entries: limits::RAFT_APPEND_ENTRIES_MAX,
        // A replica whose disk was wiped comes back with an empty log; the leader must start it
        // over (from a snapshot) instead of treating that as a bug and stopping.
        allow_log_reversion: Some(true),
        // A restarted leader must win a new election (standard Raft). Resuming its old term is
        // unsafe when the crash lost entries it had already sent to followers: it would then
        // write different entries under the same (term, index). Found by `fincore sim`.
        enable_leader_restore: Some(false),
        ..Default::default()
    }
    .validate()
    .map_err(io::Error::other)
}

/// Does replica `id` initialize a new group of `members`? The lowest id does, when it finds
/// the group uninitialized (so exactly one replica proposes the first membership).
pub fn initializes_group(id: NodeId, members: impl IntoIterator<Item = NodeId>) -> bool {
    members.into_iter().min() == Some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_lowest_id_initializes() {
        assert!(initializes_group(1, [3, 1, 2]));
        assert!(!initializes_group(2, [3, 1, 2]));
        assert!(initializes_group(4, [4]));
        assert!(!initializes_group(4, []));
    }
}
