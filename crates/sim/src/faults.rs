//! What may go wrong in one simulated run, drawn from its seed, and the counts of what did.
//!
//! Swarm testing: each seed switches every kind of fault on or off and picks its rate, so some
//! runs are a storm of one fault and others a mix, instead of every run being the same average
//! blend (which hides the bugs that need one fault to be frequent).

use rand::Rng;
use rand::rngs::SmallRng;
use serde::Serialize;

/// The fault rates of one run. Rates "per tick" are chances per 10 ms of simulated time.
#[derive(Debug, Clone, Serialize)]
pub struct FaultProfile {
    /// Chance that a message (request or reply) is lost.
    pub message_loss: f64,
    /// Chance that a request is delivered twice.
    pub message_duplicate: f64,
    /// Each message takes a uniform delay up to this long (so messages overtake each other).
    pub message_delay_max_us: u64,
    /// Chance per tick that a partition starts (while none is active).
    pub partition_rate: f64,
    /// Share of partitions that cut one direction only.
    pub partition_asymmetric: f64,
    /// Chance per tick that a running replica crashes (at most `f` replicas down at once).
    pub crash_rate: f64,
    /// Chance per tick that the whole group loses power at once (every replica crashes).
    pub power_loss_rate: f64,
    /// At a crash: chance that the first unsynced record was half written.
    pub torn_write: f64,
    /// Chance per tick that a stored, synced record on one replica rots (once per run).
    pub corruption_rate: f64,
    /// Chance per tick that one replica's clock jumps (up to an hour, either way).
    pub clock_jump_rate: f64,
    /// An fsync takes a uniform time up to this long.
    pub fsync_max_us: u64,
    /// Snapshot (and purge the log) every this many entries.
    pub snapshot_every: u64,
    /// Entries kept behind a snapshot (few: lagging replicas then need the snapshot).
    pub log_kept_behind_snapshot: u64,
    /// Newest entries the Raft log keeps in memory (few: reads go to the journal often).
    pub log_cached_entries: usize,
}

fn maybe(rng: &mut SmallRng, low: f64, high: f64) -> f64 {
    if rng.random_bool(0.5) {
        rng.random_range(low..high)
    } else {
        0.0
    }
}

impl FaultProfile {
    /// The profile of the run with this RNG (the run's seed decides it).
    pub fn draw(rng: &mut SmallRng) -> FaultProfile {
        FaultProfile {
            message_loss: maybe(rng, 0.001, 0.2),
            message_duplicate: maybe(rng, 0.001, 0.1),
            message_delay_max_us: if rng.random_bool(0.5) {
                rng.random_range(1_000..80_000)
            } else {
                500
            },
            partition_rate: maybe(rng, 0.002, 0.02),
            partition_asymmetric: rng.random_range(0.0..1.0),
            crash_rate: maybe(rng, 0.001, 0.02),
            power_loss_rate: maybe(rng, 0.0005, 0.004),
            torn_write: maybe(rng, 0.2, 1.0),
            corruption_rate: maybe(rng, 0.0005, 0.01),
            clock_jump_rate: maybe(rng, 0.001, 0.01),
            fsync_max_us: rng.random_range(100..20_000),
            snapshot_every: rng.random_range(5..60),
            log_kept_behind_snapshot: rng.random_range(0..8),
            log_cached_entries: [1, 2, 4, 16, 256][rng.random_range(0..5)],
        }
    }

    /// The same run with every fault switched off (the quiet period at the end).
    pub fn quiet(&self) -> FaultProfile {
        FaultProfile {
            message_loss: 0.0,
            message_duplicate: 0.0,
            message_delay_max_us: self.message_delay_max_us.min(5_000),
            partition_rate: 0.0,
            crash_rate: 0.0,
            power_loss_rate: 0.0,
            corruption_rate: 0.0,
            clock_jump_rate: 0.0,
            ..self.clone()
        }
    }
}

/// What the run did to the group.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FaultCounts {
    pub messages: u64,
    pub messages_lost: u64,
    pub messages_duplicated: u64,
    pub partitions: u64,
    pub crashes: u64,
    pub power_losses: u64,
    pub restarts: u64,
    pub torn_writes: u64,
    pub unsynced_writes_lost: u64,
    pub corruptions_injected: u64,
    pub corruptions_detected: u64,
    pub clock_jumps: u64,
}
