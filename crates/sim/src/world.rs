//! The simulated world one run happens in: the seeded RNG every choice comes from, the replicas'
//! slots (running instance, disk, clock), the network's cuts, the fault counts, the checker,
//! and the trace of everything that happened, hashed.
//!
//! The world is shared by every task of the run behind one mutex; nobody holds it across an
//! await, and nobody takes it while holding a disk's lock.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Display;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

use crate::disk::SimDisk;
use crate::faults::{FaultCounts, FaultProfile};
use crate::oracle::Oracle;
use crate::types::{Entry, NodeId, SimMachine, SimRaft};
use crate::workload::OpCounts;
use ledger::StateDigest;
use replication::BatchOutcome;
use replication::openraft_side::PlantedBug;

/// A deliberate bug planted in the production log store or state machine, to prove the
/// checkers catch it (`fincore sim --bug …`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// The log tells Raft an append is durable before its fsync completed.
    AckBeforeFsync,
    /// A replica applies every 16th batch twice.
    ApplyTwice,
    /// The log's old defect: entries leave the cache before the journal writer wrote them, and
    /// a read that misses one answers short.
    ShortRead,
}

impl Bug {
    const ALL: [Bug; 3] = [Bug::AckBeforeFsync, Bug::ApplyTwice, Bug::ShortRead];

    /// The name `--bug` takes.
    pub fn name(self) -> &'static str {
        match self {
            Bug::AckBeforeFsync => "ack-before-fsync",
            Bug::ApplyTwice => "apply-twice",
            Bug::ShortRead => "short-read",
        }
    }

    /// The production code's switch for it.
    pub fn planted(self) -> PlantedBug {
        match self {
            Bug::AckBeforeFsync => PlantedBug::AckBeforeFsync,
            Bug::ApplyTwice => PlantedBug::ApplyTwice,
            Bug::ShortRead => PlantedBug::ShortRead,
        }
    }
}

impl std::str::FromStr for Bug {
    type Err = String;
    fn from_str(s: &str) -> Result<Bug, String> {
        Bug::ALL
            .into_iter()
            .find(|bug| bug.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Bug::ALL.iter().map(|bug| bug.name()).collect();
                format!("unknown bug {s:?} (expected one of {})", names.join(", "))
            })
    }
}

/// Sealing timestamps start at this wall-clock time (2026-01-01 UTC), in nanoseconds.
const EPOCH_NS: i128 = 1_767_225_600_000_000_000;

/// One replica's place in the world.
pub struct NodeSlot {
    /// The running instance (none while crashed or refused).
    pub raft: Option<SimRaft>,
    /// The running instance's state machine (what the final checks read).
    pub machine: Option<SimMachine>,
    pub disk: Arc<Mutex<SimDisk>>,
    /// How far this replica's wall clock is off (clock jumps).
    pub clock_offset_ns: i128,
    /// A record on this disk was corrupted on purpose (so the replica may rightly refuse).
    pub corrupted: bool,
    /// The replica found a corrupt record and refuses to serve for the rest of the run.
    pub refused: bool,
    /// When a crashed replica comes back.
    pub restart_at: Option<tokio::time::Instant>,
}

/// What happens to one message.
pub enum Fate {
    Lost,
    Delivered {
        delay: Duration,
        duplicate_after: Option<Duration>,
    },
}

pub struct World {
    pub rng: SmallRng,
    pub profile: FaultProfile,
    pub counts: FaultCounts,
    pub ops: OpCounts,
    pub nodes: BTreeMap<NodeId, NodeSlot>,
    /// Directed links that deliver nothing.
    pub cut: BTreeSet<(NodeId, NodeId)>,
    pub oracle: Oracle,
    pub bug: Option<Bug>,
    start: tokio::time::Instant,
    trace: Sha256,
    pub trace_events: u64,
    /// Where the trace's lines also go (`FINCORE_SIM_TRACE=path`), to compare two runs.
    trace_out: Option<std::io::BufWriter<std::fs::File>>,
}

/// The world, shared by the run's tasks.
#[derive(Clone)]
pub struct Shared(Arc<Mutex<World>>);

impl Shared {
    pub fn new(world: World) -> Shared {
        Shared(Arc::new(Mutex::new(world)))
    }

    pub fn lock(&self) -> MutexGuard<'_, World> {
        self.0
            .lock()
            .expect("a panic in the simulation aborts the run")
    }
}

impl World {
    pub fn new(seed: u64, replicas: u64, bug: Option<Bug>) -> World {
        let mut rng = SmallRng::seed_from_u64(seed);
        let profile = FaultProfile::draw(&mut rng);
        let nodes = (1..=replicas)
            .map(|id| {
                (
                    id,
                    NodeSlot {
                        raft: None,
                        machine: None,
                        disk: Arc::new(Mutex::new(SimDisk::default())),
                        clock_offset_ns: 0,
                        corrupted: false,
                        refused: false,
                        restart_at: None,
                    },
                )
            })
            .collect();
        World {
            rng,
            profile,
            counts: FaultCounts::default(),
            ops: OpCounts::default(),
            nodes,
            cut: BTreeSet::new(),
            oracle: Oracle::default(),
            bug,
            start: tokio::time::Instant::now(),
            trace: Sha256::new(),
            trace_events: 0,
            trace_out: std::env::var_os("FINCORE_SIM_TRACE")
                .and_then(|path| std::fs::File::create(path).ok())
                .map(std::io::BufWriter::new),
        }
    }

    /// Simulated time since the run started.
    pub fn elapsed(&self) -> Duration {
        tokio::time::Instant::now() - self.start
    }

    /// Adds an event to the trace (with the simulated time it happened at).
    pub fn trace(&mut self, event: impl Display) {
        let line = format!("{} {event}\n", self.elapsed().as_micros());
        self.trace.update(line.as_bytes());
        if let Some(out) = &mut self.trace_out {
            use std::io::Write;
            let _ = out.write_all(line.as_bytes());
        }
        self.trace_events += 1;
    }

    /// The hash of the whole trace so far.
    pub fn trace_hash(&self) -> String {
        self.trace
            .clone()
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The running instance of replica `id`, if it runs.
    pub fn running(&self, id: NodeId) -> Option<SimRaft> {
        self.nodes.get(&id).and_then(|slot| slot.raft.clone())
    }

    /// Replica `id`'s wall clock, in nanoseconds (what it seals batches with).
    pub fn clock_ns(&self, id: NodeId) -> u64 {
        let offset = self.nodes.get(&id).map_or(0, |slot| slot.clock_offset_ns);
        (EPOCH_NS + self.elapsed().as_nanos() as i128 + offset).max(1) as u64
    }

    /// Decides what happens to a message from `from` to `to` (a cut link loses everything).
    pub fn message_fate(&mut self, from: NodeId, to: NodeId, kind: &str) -> Fate {
        self.counts.messages += 1;
        let fate = if self.cut.contains(&(from, to)) {
            Fate::Lost
        } else if self.rng.random_bool(self.profile.message_loss) {
            self.counts.messages_lost += 1;
            Fate::Lost
        } else {
            let delay = Duration::from_micros(
                self.rng
                    .random_range(20..=self.profile.message_delay_max_us.max(21)),
            );
            let duplicate_after = self
                .rng
                .random_bool(self.profile.message_duplicate)
                .then(|| {
                    self.counts.messages_duplicated += 1;
                    Duration::from_micros(
                        self.rng
                            .random_range(20..=self.profile.message_delay_max_us.max(21)),
                    )
                });
            Fate::Delivered {
                delay,
                duplicate_after,
            }
        };
        let what = match &fate {
            Fate::Lost => "lost".to_string(),
            Fate::Delivered {
                delay,
                duplicate_after,
            } => format!("delay={}us dup={:?}", delay.as_micros(), duplicate_after),
        };
        self.trace(format_args!("msg {kind} {from}->{to} {what}"));
        fate
    }

    /// Replica `replica` applied `entry` with `outcome`: trace it and check it.
    pub fn check_apply(
        &mut self,
        replica: NodeId,
        entry: &Entry,
        outcome: &BatchOutcome,
        digest: Option<StateDigest>,
    ) {
        self.trace(format_args!("apply {replica} {}", entry.log_id));
        self.oracle.check_apply(replica, entry, outcome, digest);
    }

    /// A uniform draw in `low..high` microseconds.
    pub fn draw_micros(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_micros(self.rng.random_range(low..high.max(low + 1)))
    }
}
