//! The Raft settings every replica runs with, production and simulator alike. Written once so
//! that the simulator tests what ships. (Who initializes a group is no longer a rule of ids:
//! see [`crate::membership`].)

use std::io;

use openraft::{Config, SnapshotPolicy};

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
        // A learner being added is promoted to voter only once it is this close to the leader
        // (openraft's default, 5000 entries, would promote an empty node of a small group at
        // once, before it holds anything).
        replication_lag_threshold: limits::RAFT_LEARNER_CAUGHT_UP_LAG_ENTRIES_MAX,
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
