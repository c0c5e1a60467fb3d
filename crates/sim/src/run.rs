//! One simulated run: start the group, let clients work while the fault schedule drawn from the
//! seed plays, then stop the faults and demand that the group makes progress and converges,
//! and compare the final state with the model.

use std::collections::{BTreeMap, BTreeSet};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use journal::{Journal, JournalOptions};
use ledger::BatchBody;
use openraft::Config;
use openraft::async_runtime::WatchReceiver;
use rand::Rng;
use replication::PeerNode;
use replication::openraft_side::{
    LogStore, RaftTiming, StorageOptions, raft_config as production_raft_config,
};
use serde::Serialize;

use crate::disk::SimDisk;
use crate::faults::{FaultCounts, FaultProfile};
use crate::network::SimNetwork;
use crate::types::{NodeId, SimConfig, SimMachine, SimRaft, SimRuntime};
use crate::workload::{Client, OpCounts, Submitted, accounts};
use crate::world::{Bug, Shared, World};

/// Simulated time per tick.
pub const TICK: Duration = Duration::from_millis(10);
/// After the faults stop, the group must commit a new batch within this much simulated time.
const LIVENESS_BOUND: Duration = Duration::from_secs(30);
/// ... and every replica must have applied it within this much more.
const CONVERGENCE_BOUND: Duration = Duration::from_secs(30);

/// One scenario.
#[derive(Debug, Clone)]
pub struct SimOptions {
    pub seed: u64,
    pub replicas: u64,
    pub ticks: u64,
    pub bug: Option<Bug>,
}

impl SimOptions {
    /// The command that replays this scenario.
    pub fn command(&self) -> String {
        let bug = self
            .bug
            .map_or(String::new(), |bug| format!(" --bug {}", bug.name()));
        format!(
            "fincore sim --seed {} --replicas {} --ticks {}{bug}",
            self.seed, self.replicas, self.ticks
        )
    }
}

/// What one run found.
#[derive(Debug, Clone, Serialize)]
pub struct SimReport {
    pub seed: u64,
    pub replicas: u64,
    pub ticks: u64,
    pub ok: bool,
    /// SHA-256 of the whole event trace: identical runs have identical hashes.
    pub trace_hash: String,
    pub trace_events: u64,
    pub simulated_ms: u64,
    pub committed_entries: u64,
    pub applies_checked: u64,
    pub transfers_acknowledged: u64,
    /// Simulated time from the end of the faults to the first new commit.
    pub recovery_ms: Option<u64>,
    /// The initializer's disk lost the initial membership before anyone else stored it.
    pub never_formed: bool,
    pub ops: OpCounts,
    pub faults: FaultCounts,
    pub profile: Option<FaultProfile>,
    pub violations: Vec<String>,
    pub violations_total: u64,
    pub reproduce: String,
}

/// Runs one scenario on a fresh single-threaded runtime whose clock is simulated.
pub fn run(options: &SimOptions) -> SimReport {
    let runtime = crate::paused_runtime(options.seed);
    let scenario = SimRuntime::scope(options.seed, simulate(options.clone()));
    match std::panic::catch_unwind(AssertUnwindSafe(|| runtime.block_on(scenario))) {
        Ok(report) => report,
        Err(panic) => {
            let what = crate::panic_text(&*panic);
            SimReport {
                seed: options.seed,
                replicas: options.replicas,
                ticks: options.ticks,
                ok: false,
                trace_hash: String::new(),
                trace_events: 0,
                simulated_ms: 0,
                committed_entries: 0,
                applies_checked: 0,
                transfers_acknowledged: 0,
                recovery_ms: None,
                never_formed: false,
                ops: OpCounts::default(),
                faults: FaultCounts::default(),
                profile: None,
                violations: vec![format!("the simulation panicked: {what}")],
                violations_total: 1,
                reproduce: options.command(),
            }
        }
    }
}

/// Production's Raft settings, with the simulation's faster timing and the seed's snapshot
/// cadence.
fn raft_config(profile: &FaultProfile) -> Arc<Config> {
    let timing = RaftTiming {
        heartbeat_interval_ms: 50,
        election_timeout_min_ms: 150,
        election_timeout_max_ms: 300,
        snapshot_every_entries: profile.snapshot_every,
        entries_kept_behind_snapshot: profile.log_kept_behind_snapshot,
    };
    Arc::new(production_raft_config("fincore-sim", &timing).expect("a valid Raft config"))
}

/// The replica that creates the group (what `fincore serve --bootstrap` is in production).
const BOOTSTRAP_REPLICA: NodeId = 1;

/// Where a replica's files live on its simulated disk.
const DATA_DIR: &str = "/data";

/// Replicas report their state digest at every index that is a multiple of this.
const DIGEST_EVERY_ENTRIES: u64 = 16;

/// The group being simulated.
struct Group {
    world: Shared,
    config: Arc<Config>,
    replicas: u64,
    partition_until: Option<tokio::time::Instant>,
}

impl Group {
    /// Most replicas that may be down at once while faults play (a minority).
    fn down_max(&self) -> usize {
        ((self.replicas - 1) / 2) as usize
    }

    /// How replica `id`'s production storage is set up on its simulated disk.
    fn storage_options(&self, id: NodeId) -> StorageOptions {
        let (disk, cached_entries_max, bug) = {
            let world = self.world.lock();
            (
                world.nodes[&id].disk.clone(),
                world.profile.log_cached_entries,
                world.bug,
            )
        };
        let sync_world = self.world.clone();
        let apply_world = self.world.clone();
        StorageOptions {
            storage: Arc::new(SimDisk::storage(&disk)),
            sync_observer: None,
            cached_entries_max,
            simulated_sync: Some(Arc::new(move || {
                let mut world = sync_world.lock();
                let max = world.profile.fsync_max_us;
                world.draw_micros(50, max)
            })),
            apply_on_threads: false,
            apply_observer: Some(Arc::new(move |entry, outcome, state| {
                // Digests cost a pass over the state: compare them every 16 entries. A
                // divergence stays in the state, so it is still caught at the next multiple.
                let digest = entry
                    .log_id
                    .index()
                    .is_multiple_of(DIGEST_EVERY_ENTRIES)
                    .then(|| state.digest());
                apply_world.lock().check_apply(id, entry, outcome, digest);
            })),
            planted_bug: bug.map(Bug::planted),
        }
    }

    /// Starts replica `id` from its disk (the production log store and state machine); a
    /// corrupt disk makes it refuse.
    async fn start(&self, id: NodeId) {
        let options = self.storage_options(id);
        let dir = std::path::Path::new(DATA_DIR);
        let opened =
            LogStore::<SimConfig>::open(dir, &options, replication::data_dir::LEDGER_MACHINE)
                .and_then(|log| SimMachine::open(dir, &options).map(|machine| (log, machine)));
        let (log, machine) = match opened {
            Ok(opened) => opened,
            Err(error) => return self.refuse(id, &error.to_string()),
        };
        let network = SimNetwork {
            from: id,
            world: self.world.clone(),
        };
        match SimRaft::new(id, self.config.clone(), network, log, machine.clone()).await {
            Ok(raft) => {
                // As a production node does: the replica whose directory was created with
                // `--bootstrap` (here always replica 1; its `bootstrap.json` is not modelled)
                // initializes the group while its log and votes are empty, also after losing
                // its unsynced first entry. No other replica ever initializes anything.
                if id == BOOTSTRAP_REPLICA && !raft.is_initialized().await.unwrap_or(true) {
                    let members: BTreeMap<NodeId, PeerNode> = (1..=self.replicas)
                        .map(|id| (id, PeerNode::default()))
                        .collect();
                    if let Err(error) = raft.initialize(members).await {
                        self.world
                            .lock()
                            .trace(format_args!("replica 1 could not initialize: {error}"));
                    }
                }
                let mut world = self.world.lock();
                world.trace(format_args!("replica {id} started"));
                let slot = world.nodes.get_mut(&id).expect("a slot per replica");
                slot.raft = Some(raft);
                slot.machine = Some(machine);
                slot.restart_at = None;
            }
            Err(error) => self.refuse(id, &error.to_string()),
        }
    }

    /// Replica `id` found its disk corrupt: it stops serving. Anything else stopping it is a bug.
    fn refuse(&self, id: NodeId, error: &str) {
        let mut world = self.world.lock();
        let slot = world.nodes.get_mut(&id).expect("a slot per replica");
        slot.raft = None;
        slot.machine = None;
        slot.restart_at = None;
        if slot.corrupted {
            slot.refused = true;
            world.counts.corruptions_detected += 1;
            world.trace(format_args!("replica {id} refuses to serve: {error}"));
        } else {
            world
                .oracle
                .violation(format!("replica {id} stopped: {error}"));
        }
    }

    async fn crash(&self, id: NodeId) {
        let raft = {
            let mut world = self.world.lock();
            let torn_write = world.profile.torn_write;
            let downtime = world.draw_micros(100_000, 3_000_000);
            let slot = world.nodes.get_mut(&id).expect("a slot per replica");
            let raft = slot.raft.take();
            slot.machine = None;
            slot.restart_at = Some(tokio::time::Instant::now() + downtime);
            let disk = slot.disk.clone();
            let damage = disk
                .lock()
                .expect("never poisoned")
                .crash(&mut world.rng, torn_write);
            world.counts.crashes += 1;
            world.counts.unsynced_writes_lost += damage.unsynced_writes_lost;
            world.counts.torn_writes += u64::from(damage.torn);
            world.trace(format_args!("replica {id} crashed: {damage:?}"));
            raft
        };
        if let Some(raft) = raft {
            let _ = tokio::time::timeout(Duration::from_secs(10), raft.shutdown()).await;
        }
    }

    /// Replicas that stopped on their own: refused (corruption found) or a bug (a fatal error
    /// or a panic of the Raft core, which the metrics do not always show).
    async fn check_health(&self) {
        let running: Vec<(NodeId, SimRaft)> = {
            let world = self.world.lock();
            world
                .nodes
                .iter()
                .filter_map(|(id, slot)| slot.raft.clone().map(|raft| (*id, raft)))
                .collect()
        };
        let mut stopped = Vec::new();
        for (id, raft) in running {
            let fatal = raft.metrics().borrow_watched().running_state.clone().err();
            let fatal = match fatal {
                Some(fatal) => Some(fatal.to_string()),
                None => raft.is_initialized().await.err().map(|f| f.to_string()),
            };
            if let Some(error) = fatal {
                stopped.push((id, error));
            }
        }
        for (id, error) in stopped {
            self.refuse(id, &error);
        }
    }

    /// One tick of the fault schedule.
    async fn inject_faults(&mut self) {
        let now = tokio::time::Instant::now();
        let mut to_crash = Vec::new();
        let mut to_restart = Vec::new();
        {
            let mut world = self.world.lock();
            let world = &mut *world;
            let ids: Vec<NodeId> = world.nodes.keys().copied().collect();
            // Partitions heal after a while; a new one may start.
            if self.partition_until.is_some_and(|until| now >= until) {
                world.cut.clear();
                self.partition_until = None;
                world.trace("partition healed");
            }
            if self.partition_until.is_none() && world.rng.random_bool(world.profile.partition_rate)
            {
                let victim = ids[world.rng.random_range(0..ids.len())];
                let asymmetric = world.rng.random_bool(world.profile.partition_asymmetric);
                for &other in ids.iter().filter(|&&o| o != victim) {
                    if asymmetric {
                        // One direction of some links: the victim hears but is not heard, or
                        // the other way round.
                        if world.rng.random_bool(0.5) {
                            world.cut.insert((victim, other));
                        } else {
                            world.cut.insert((other, victim));
                        }
                    } else {
                        world.cut.insert((victim, other));
                        world.cut.insert((other, victim));
                    }
                }
                let lasts = world.draw_micros(100_000, 3_000_000);
                self.partition_until = Some(now + lasts);
                world.counts.partitions += 1;
                let cut = world.cut.clone();
                world.trace(format_args!("partition {cut:?} for {lasts:?}"));
            }
            // Crashed replicas come back when their downtime is over.
            for (&id, slot) in &world.nodes {
                if slot.restart_at.is_some_and(|at| now >= at) {
                    to_restart.push(id);
                }
            }
            let down = world.nodes.values().filter(|s| s.raft.is_none()).count();
            if down < self.down_max() && world.rng.random_bool(world.profile.crash_rate) {
                let up: Vec<NodeId> = world
                    .nodes
                    .iter()
                    .filter(|(_, s)| s.raft.is_some())
                    .map(|(id, _)| *id)
                    .collect();
                if !up.is_empty() {
                    to_crash.push(up[world.rng.random_range(0..up.len())]);
                }
            } else if world.rng.random_bool(world.profile.power_loss_rate) {
                to_crash = world
                    .nodes
                    .iter()
                    .filter(|(_, s)| s.raft.is_some())
                    .map(|(id, _)| *id)
                    .collect();
                world.counts.power_losses += 1;
                world.trace("power loss");
            }
            if world.counts.corruptions_injected == 0
                && world.rng.random_bool(world.profile.corruption_rate)
            {
                let victim = ids[world.rng.random_range(0..ids.len())];
                let disk = world.nodes[&victim].disk.clone();
                let hit = disk.lock().expect("never poisoned").corrupt(&mut world.rng);
                if let Some(place) = hit {
                    world.counts.corruptions_injected += 1;
                    world
                        .nodes
                        .get_mut(&victim)
                        .expect("a slot per replica")
                        .corrupted = true;
                    world.trace(format_args!("corrupted {place} on replica {victim}"));
                }
            }
            if world.rng.random_bool(world.profile.clock_jump_rate) {
                let victim = ids[world.rng.random_range(0..ids.len())];
                let jump: i128 = world
                    .rng
                    .random_range(-3_600_000_000_000..3_600_000_000_000);
                world
                    .nodes
                    .get_mut(&victim)
                    .expect("a slot per replica")
                    .clock_offset_ns += jump;
                world.counts.clock_jumps += 1;
                world.trace(format_args!("clock of replica {victim} jumped {jump} ns"));
            }
        }
        for id in to_restart {
            self.world.lock().counts.restarts += 1;
            self.start(id).await;
        }
        for id in to_crash {
            self.crash(id).await;
        }
    }

    /// The faults stop: links heal, crashed replicas come back.
    async fn heal(&mut self) {
        let down: Vec<NodeId> = {
            let mut world = self.world.lock();
            world.profile = world.profile.quiet();
            world.cut.clear();
            self.partition_until = None;
            world.trace("faults stop");
            world
                .nodes
                .iter()
                .filter(|(_, s)| s.raft.is_none() && !s.refused)
                .map(|(id, _)| *id)
                .collect()
        };
        for id in down {
            self.world.lock().counts.restarts += 1;
            self.start(id).await;
        }
    }

    /// The running replicas' applied positions.
    fn applied(&self) -> BTreeMap<NodeId, Option<u64>> {
        let world = self.world.lock();
        world
            .nodes
            .iter()
            .filter_map(|(id, slot)| Some((*id, slot.machine.as_ref()?.last_applied_index())))
            .collect()
    }

    /// Every running replica reaches the same applied index, at or past `index`.
    async fn converge(&self, index: u64) -> Result<u64, String> {
        let deadline = tokio::time::Instant::now() + CONVERGENCE_BOUND;
        loop {
            let applied = self.applied();
            let positions: BTreeSet<Option<u64>> = applied.values().copied().collect();
            let last = self.world.lock().oracle.last_index();
            if positions.len() == 1
                && let Some(Some(at)) = positions.first()
                && *at >= index
                && last == Some(*at)
            {
                return Ok(*at);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "replicas did not converge within {CONVERGENCE_BOUND:?} after the faults stopped: applied {applied:?}, committed through {last:?}"
                ));
            }
            self.check_health().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every stored record of every running replica still reads back, checksums and hash
    /// chain recomputed (a scrub, with the journal's own reader): latent corruption is found
    /// even where no read happened to hit it.
    fn scrub(&self) {
        let mut world = self.world.lock();
        let mut found = Vec::new();
        for (id, slot) in &world.nodes {
            if slot.raft.is_none() {
                continue;
            }
            let options = JournalOptions {
                read_only: true,
                storage: Arc::new(SimDisk::storage(&slot.disk)),
                ..JournalOptions::default()
            };
            let dir = std::path::Path::new(DATA_DIR).join("journal");
            let intact = Journal::open(dir, options).is_ok_and(|(journal, _)| {
                journal
                    .read_from(journal.first_index(), true)
                    .is_ok_and(|mut records| records.all(|record| record.is_ok()))
            });
            if !intact {
                found.push(*id);
            }
        }
        for id in found {
            world.counts.corruptions_detected += 1;
            world.trace(format_args!("scrub found a corrupt record on replica {id}"));
        }
    }

    async fn shutdown(&self) {
        let rafts: Vec<SimRaft> = {
            let mut world = self.world.lock();
            world
                .nodes
                .values_mut()
                .filter_map(|slot| {
                    slot.machine = None;
                    slot.raft.take()
                })
                .collect()
        };
        for raft in rafts {
            let _ = tokio::time::timeout(Duration::from_secs(10), raft.shutdown()).await;
        }
    }
}

async fn simulate(options: SimOptions) -> SimReport {
    let world = Shared::new(World::new(options.seed, options.replicas, options.bug));
    let profile = world.lock().profile.clone();
    let mut group = Group {
        world: world.clone(),
        config: raft_config(&profile),
        replicas: options.replicas,
        partition_until: None,
    };
    for id in 1..=options.replicas {
        group.start(id).await;
    }

    // Clients work while the faults play.
    let stop = Arc::new(AtomicBool::new(false));
    let clients = world.lock().rng.random_range(2..=4);
    let mut running = Vec::new();
    for id in 1..=clients {
        let client = Client::new(id, &world, options.replicas);
        running.push(<SimRuntime as openraft::AsyncRuntime>::spawn(
            client.run(stop.clone()),
        ));
    }
    for _ in 0..options.ticks {
        tokio::time::sleep(TICK).await;
        group.check_health().await;
        group.inject_faults().await;
    }

    // The faults stop; the group must commit again and converge. A group that never committed
    // anything because the initializer lost its initial membership before any other replica
    // stored it (the record rotted, or a crash took it before its fsync while the vote cast
    // with it survived, so openraft refuses to initialize again) cannot form: reported as
    // such (see ARCHITECTURE.md and the notes on issue 5).
    group.heal().await;
    let never_formed = {
        let world = world.lock();
        let nothing_stored = world.nodes.values().all(|slot| {
            !slot
                .disk
                .lock()
                .expect("never poisoned")
                .holds_log_or_snapshot()
        });
        world.oracle.last_index().is_none() && (world.nodes[&1].refused || nothing_stored)
    };
    stop.store(true, Ordering::Relaxed);
    for client in running {
        let _ = client.await;
    }
    let healed_at = tokio::time::Instant::now();
    let mut probe = Client::new(0, &world, options.replicas);
    let mut recovery_ms = None;
    let committed = tokio::time::timeout(LIVENESS_BOUND, async {
        loop {
            if let Submitted::Acknowledged { index } =
                probe.submit(BatchBody::CreateAccounts(accounts())).await
            {
                return index;
            }
        }
    })
    .await;
    match committed {
        _ if never_formed => world
            .lock()
            .trace("the group never formed: its initial membership was lost"),
        Ok(index) => {
            recovery_ms = Some((tokio::time::Instant::now() - healed_at).as_millis() as u64);
            match group.converge(index).await {
                Ok(at) => final_checks(&group, at),
                Err(error) => world.lock().oracle.violation(error),
            }
        }
        _ => world.lock().oracle.violation(format!(
            "no new batch committed within {LIVENESS_BOUND:?} after the faults stopped"
        )),
    }
    group.scrub();
    group.shutdown().await;

    let world = world.lock();
    SimReport {
        seed: options.seed,
        replicas: options.replicas,
        ticks: options.ticks,
        ok: world.oracle.violations_total == 0,
        trace_hash: world.trace_hash(),
        trace_events: world.trace_events,
        simulated_ms: world.elapsed().as_millis() as u64,
        committed_entries: world.oracle.last_index().map_or(0, |i| i + 1),
        applies_checked: world.oracle.applies_checked,
        transfers_acknowledged: world.oracle.transfers_acknowledged() as u64,
        recovery_ms,
        never_formed,
        ops: world.ops.clone(),
        faults: world.counts.clone(),
        profile: Some(world.profile.clone()),
        violations: world.oracle.violations.clone(),
        violations_total: world.oracle.violations_total,
        reproduce: options.command(),
    }
}

/// Every running replica's state at index `at`: equal digests, and equal to the model.
fn final_checks(group: &Group, at: u64) {
    let mut world = group.world.lock();
    let machines: Vec<(NodeId, SimMachine)> = world
        .nodes
        .iter()
        .filter_map(|(id, slot)| slot.machine.clone().map(|m| (*id, m)))
        .collect();
    let mut digests = BTreeMap::new();
    for (id, machine) in machines {
        debug_assert_eq!(machine.last_applied_index(), Some(at));
        let state = machine.state().read().expect("never poisoned");
        digests.insert(id, state.digest());
        world.oracle.check_final_state(id, &state);
    }
    let distinct: BTreeSet<[u8; 32]> = digests.values().map(|d| d.0).collect();
    if distinct.len() > 1 {
        let shown: Vec<String> = digests.iter().map(|(id, d)| format!("{id}={d}")).collect();
        world.oracle.violation(format!(
            "replicas converged to index {at} with different digests: {}",
            shown.join(", ")
        ));
    }
}
