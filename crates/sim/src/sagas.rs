//! The saga simulator (`fincore sim --sagas`): several groups and several gateways running
//! cross-group transfers under faults, deterministically from one seed.
//!
//! What runs is what ships: the gateway's own saga protocol (`gateway::saga::run` for callers'
//! batches, `resolve_once` for the resolvers) and the real `ledger::StateMachine` in every
//! group. Only the groups' replication is left out (each group is one state machine applying
//! each batch atomically: Raft is the other simulator's job) and the transport is replaced
//! (`groups::SimGroups`: latency, calls lost before or after they apply, duplicated calls,
//! unreachable groups, clock jumps). Gateways crash mid-saga: their `run` future is dropped
//! after a number of polls drawn from the seed, wherever it was waiting.
//!
//! Everything runs on one current-thread tokio runtime with paused time, so the interleaving
//! of gateways, resolvers and group calls is a function of the seed; the trace hash proves a
//! seed replays. Checked after every applied batch (`groups`) and at the end (`checks`).

mod checks;
mod groups;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::sync::{Arc, Mutex};

use std::task::Poll;
use std::time::{Duration, Instant};

use cluster::{ClusterMap, GroupId, Member, Members};
use gateway::saga::{Saga, Want, resolve_once, run as run_sagas_of_batch};
use ledger::{
    Account, AccountFlags, BatchBody, BatchResults, CreateTransferResult as R, SagaState, Transfer,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use telemetry::Metrics;

use crate::{SeedRange, for_each_seed};
use checks::{Answer, check_end};
use groups::{EPOCH_NS, SimGroups, World};
pub use groups::{SagaBug, SagaFaultCounts, SagaFaultProfile};

/// Batches each gateway submits during the faulty phase.
const GATEWAY_BATCHES: u64 = 40;
/// Transfers in one gateway batch, at most.
const BATCH_TRANSFERS_MAX: usize = 4;
/// After the faults stop, resolver rounds until no copy is open, at most.
const DRAIN_ROUNDS_MAX: u32 = 40;

/// One saga scenario.
#[derive(Debug, Clone)]
pub struct SagaSimOptions {
    pub seed: u64,
    pub bug: Option<SagaBug>,
}

impl SagaSimOptions {
    /// The command that replays this scenario.
    pub fn command(&self) -> String {
        let bug = self
            .bug
            .map_or(String::new(), |bug| format!(" --bug {}", bug.name()));
        format!("fincore sim --sagas --seed {}{bug}", self.seed)
    }
}

/// What one saga run found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SagaSimReport {
    pub seed: u64,
    pub ok: bool,
    pub groups: u64,
    pub gateways: u64,
    /// SHA-256 of the run's trace: identical runs have identical hashes.
    pub trace_hash: String,
    pub trace_events: u64,
    pub simulated_ms: u64,
    pub batches_applied: u64,
    /// Transfers submitted by gateways (cross-group ones ran as sagas).
    pub transfers_submitted: u64,
    pub sagas_submitted: u64,
    /// Answers `created`/`exists`, and failures, over every transfer answered.
    pub answered_ok: u64,
    pub answered_failed: u64,
    /// Submissions that got no answer (a group gave none, or the gateway crashed).
    pub unanswered: u64,
    /// Sagas as their homes ended them.
    pub sagas_confirmed: u64,
    pub sagas_cancelled: u64,
    /// Sagas driven by resolvers (a saga may be counted by several rounds).
    pub resolver_sagas: u64,
    pub resolver_rounds_failed: u64,
    pub faults: SagaFaultCounts,
    pub profile: Option<SagaFaultProfile>,
    pub violations: Vec<String>,
    pub violations_total: u64,
    pub reproduce: String,
}

/// Runs one saga scenario on a fresh current-thread runtime whose clock is simulated.
pub fn run_sagas(options: &SagaSimOptions) -> SagaSimReport {
    let runtime = crate::paused_runtime(options.seed);
    match std::panic::catch_unwind(AssertUnwindSafe(|| runtime.block_on(simulate(options)))) {
        Ok(report) => report,
        Err(panic) => {
            let what = crate::panic_text(&*panic);
            SagaSimReport {
                seed: options.seed,
                violations: vec![format!("the simulation panicked: {what}")],
                violations_total: 1,
                reproduce: options.command(),
                ..SagaSimReport::default()
            }
        }
    }
}

/// A cluster map of `groups` groups with fake member addresses (nothing is dialled).
fn cluster_map(groups: u64) -> ClusterMap {
    let member = Member {
        grpc: "sim:1".into(),
        http: String::new(),
        peer: "sim:2".into(),
    };
    let groups = (1..=u128::from(groups))
        .map(|n| (GroupId::from_u128(n), Members::from([(1, member.clone())])));
    ClusterMap::new(groups.collect()).expect("a valid simulated map")
}

/// What the gateways submit: new transfers over the accounts, and resubmissions.
struct Workload {
    rng: SmallRng,
    map: ClusterMap,
    /// Accounts by group.
    accounts: BTreeMap<GroupId, Vec<u128>>,
    /// Every transfer submitted, for resubmissions.
    submitted: Vec<Transfer>,
    /// Every transfer id used (the end checks replay those confirmed).
    ids: BTreeSet<u128>,
    answers: Vec<Answer>,
    ids_minted: u64,
    sagas_submitted: u64,
    unanswered: u64,
}

impl Workload {
    /// A fresh id homed in `group`.
    fn mint(&mut self, group: GroupId) -> u128 {
        let slots = self.map.slots_of(group);
        let slot = slots[self.rng.random_range(0..slots.len())];
        self.ids_minted += 1;
        let millis = EPOCH_NS / 1_000_000 + self.ids_minted;
        let id = cluster::id_in_slot(slot, millis, self.rng.random()).expect("a valid timestamp");
        self.ids.insert(id);
        id
    }

    fn any_group(&mut self) -> GroupId {
        let groups: Vec<GroupId> = self.accounts.keys().copied().collect();
        groups[self.rng.random_range(0..groups.len())]
    }

    fn account_in(&mut self, group: GroupId) -> u128 {
        let accounts = &self.accounts[&group];
        accounts[self.rng.random_range(0..accounts.len())]
    }

    fn next_transfer(&mut self) -> Transfer {
        if !self.submitted.is_empty() && self.rng.random_bool(0.15) {
            let mut t = self.submitted[self.rng.random_range(0..self.submitted.len())];
            match self.rng.random_range(0..4) {
                0 => t.amount += 1,
                1 => {
                    let group = self.any_group();
                    t.credit_account_id = self.account_in(group);
                }
                _ => {} // The same fields: a client's retry.
            }
            return t;
        }
        let home = self.any_group();
        let (debit_group, credit_group) = if self.rng.random_bool(0.7) {
            (self.any_group(), self.any_group())
        } else {
            (home, home)
        };
        Transfer {
            id: self.mint(home),
            debit_account_id: self.account_in(debit_group),
            credit_account_id: self.account_in(credit_group),
            amount: if self.rng.random_bool(0.1) {
                self.rng.random_range(100..1_000)
            } else {
                self.rng.random_range(1..60)
            },
            ledger: if self.rng.random_bool(0.02) { 2 } else { 1 },
            code: 1,
            ..Default::default()
        }
    }

    fn next_batch(&mut self) -> Vec<Transfer> {
        let count = self.rng.random_range(1..=BATCH_TRANSFERS_MAX);
        let batch: Vec<Transfer> = (0..count).map(|_| self.next_transfer()).collect();
        self.submitted.extend(&batch);
        batch
    }
}

/// Creates every group's accounts (the first of each unlimited, others with limits drawn)
/// and funds the limited ones from it.
fn set_up(world: &mut World, workload: &mut Workload) {
    let groups: Vec<GroupId> = world.groups.keys().copied().collect();
    for group in groups {
        let count = workload.rng.random_range(3..=6);
        let mut accounts = Vec::new();
        for n in 0..count {
            let flags = match workload.rng.random_range(0..8) {
                _ if n == 0 => AccountFlags::empty(),
                0..=1 => AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS,
                2 => AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS,
                _ => AccountFlags::empty(),
            };
            let id = workload.mint(group);
            workload.ids.remove(&id);
            accounts.push(Account {
                id,
                ledger: 1,
                code: 1,
                flags,
                ..Default::default()
            });
        }
        let ids: Vec<u128> = accounts.iter().map(|a| a.id).collect();
        world.groups.get_mut(&group).expect("known").accounts = ids.clone();
        let results = world.apply(group, BatchBody::CreateAccounts(accounts.clone()));
        assert!(
            matches!(&results, BatchResults::CreateAccounts(r) if r.iter().all(|r| r.result.code() == 0)),
            "the simulation's accounts are valid: {results:?}"
        );
        let mut funding = Vec::new();
        for a in &accounts[1..] {
            let amount = workload.rng.random_range(50..500);
            let (debit, credit) = if a
                .flags
                .contains(AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS)
            {
                (ids[0], a.id)
            } else {
                (a.id, ids[0])
            };
            funding.push(Transfer {
                id: workload.mint(group),
                debit_account_id: debit,
                credit_account_id: credit,
                amount,
                ledger: 1,
                code: 1,
                ..Default::default()
            });
        }
        world.apply(group, BatchBody::CreateTransfers(funding));
        workload.accounts.insert(group, ids);
    }
}

/// Polls `future` at most `polls_max` times (if given): a gateway that crashes drops its work
/// wherever it was waiting.
async fn crash_after<F: Future>(future: F, polls_max: Option<u32>) -> Option<F::Output> {
    let mut future = pin!(future);
    let mut polls = 0;
    std::future::poll_fn(|cx| {
        if polls_max.is_some_and(|max| polls >= max) {
            return Poll::Ready(None);
        }
        polls += 1;
        future.as_mut().poll(cx).map(Some)
    })
    .await
}

/// One gateway's batch, as its router sends it: the single-group parts to their groups, then
/// the cross-group transfers as sagas. Answers recorded as they come.
async fn submit(
    groups: &SimGroups,
    metrics: &Metrics,
    workload: &RefCell<Workload>,
    batch: &[Transfer],
) -> bool {
    let map = groups.lock().map.clone();
    let mut parts: BTreeMap<GroupId, Vec<Transfer>> = BTreeMap::new();
    let mut sagas = Vec::new();
    for &t in batch {
        let saga = Saga::new(&map, t);
        if saga.home == saga.debit && saga.home == saga.credit {
            parts.entry(saga.home).or_default().push(t);
        } else {
            sagas.push(saga);
        }
    }
    let mut answered = true;
    for (group, part) in parts {
        match groups.transfers(group, part.clone()).await {
            Ok(results) => {
                let answers = part.iter().zip(results).map(|(&transfer, r)| Answer {
                    transfer,
                    saga: false,
                    result: r.result,
                });
                workload.borrow_mut().answers.extend(answers);
            }
            Err(_) => answered = false,
        }
    }
    if sagas.is_empty() {
        return answered;
    }
    workload.borrow_mut().sagas_submitted += sagas.len() as u64;
    match run_sagas_of_batch(groups, &sagas, Want::ConfirmIfReserved, metrics).await {
        Ok(results) => {
            assert_eq!(results.len(), sagas.len(), "one answer per saga");
            let answers = sagas.iter().zip(results).map(|(saga, r)| Answer {
                transfer: saga.transfer,
                saga: true,
                result: r.result,
            });
            workload.borrow_mut().answers.extend(answers);
            answered
        }
        Err(_) => false,
    }
}

/// One gateway: batches at random moments, crashing mid-batch as the seed says; a batch that
/// got no answer is sometimes resubmitted (a client's retry).
async fn gateway(
    groups: &SimGroups,
    metrics: &Metrics,
    workload: &RefCell<Workload>,
    crash_chance: f64,
) {
    let mut retry: Option<Vec<Transfer>> = None;
    for _ in 0..GATEWAY_BATCHES {
        let (pause, polls_max) = {
            let mut w = workload.borrow_mut();
            let pause = Duration::from_millis(w.rng.random_range(0..100));
            let crash = w.rng.random_bool(crash_chance);
            (pause, crash.then(|| w.rng.random_range(1..=12)))
        };
        tokio::time::sleep(pause).await;
        let batch = match retry.take() {
            Some(batch) => batch,
            None => workload.borrow_mut().next_batch(),
        };
        let answered = crash_after(submit(groups, metrics, workload, &batch), polls_max).await;
        if polls_max.is_some() && answered.is_none() {
            groups.lock().counts.gateway_crashes += 1;
        }
        if answered != Some(true) {
            let mut w = workload.borrow_mut();
            w.unanswered += 1;
            if w.rng.random_bool(0.5) {
                retry = Some(batch);
            }
        }
    }
}

/// A gateway's resolver: a round every `period` until the gateways are done.
async fn resolver(
    groups: &SimGroups,
    metrics: &Metrics,
    period: Duration,
    open_max: Duration,
    done: &Cell<bool>,
    driven: &Cell<(u64, u64)>,
) {
    let map = groups.lock().map.clone();
    while !done.get() {
        tokio::time::sleep(period).await;
        let round = resolve_once(&map, groups, open_max, metrics).await;
        let (sagas, failed) = driven.get();
        match round {
            Ok(n) => driven.set((sagas + n as u64, failed)),
            Err(_) => driven.set((sagas, failed + 1)),
        }
    }
}

fn open_copies(world: &World) -> usize {
    world
        .groups
        .values()
        .map(|g| g.state.open_saga_copies(u64::MAX, usize::MAX).len())
        .sum()
}

async fn simulate(options: &SagaSimOptions) -> SagaSimReport {
    let mut rng = SmallRng::seed_from_u64(options.seed);
    let group_count = rng.random_range(2..=4);
    let gateway_count = rng.random_range(2..=4);
    let resolver_count = rng.random_range(1..=2);
    let open_max = Duration::from_millis(rng.random_range(500..3_000));
    let map = cluster_map(group_count);
    let mut world = World::new(rng.random(), map.clone(), options.bug);
    let mut workload = Workload {
        rng: SmallRng::seed_from_u64(rng.random()),
        map: map.clone(),
        accounts: BTreeMap::new(),
        submitted: Vec::new(),
        ids: BTreeSet::new(),
        answers: Vec::new(),
        ids_minted: 0,
        sagas_submitted: 0,
        unanswered: 0,
    };
    set_up(&mut world, &mut workload);
    let crash_chance = world.profile.gateway_crash;
    let groups = SimGroups {
        world: Arc::new(Mutex::new(world)),
    };
    let metrics = Metrics::new();
    let workload = RefCell::new(workload);
    let done = Cell::new(false);
    let driven = Cell::new((0u64, 0u64));

    // The faulty phase: gateways and resolvers at once.
    let gateways = futures::future::join_all(
        (0..gateway_count).map(|_| gateway(&groups, &metrics, &workload, crash_chance)),
    );
    let resolvers = futures::future::join_all((0..resolver_count).map(|_| {
        let period = Duration::from_millis(rng.random_range(200..2_000));
        resolver(&groups, &metrics, period, open_max, &done, &driven)
    }));
    futures::join!(
        async {
            gateways.await;
            done.set(true);
        },
        resolvers
    );

    // Faults stop; resolvers finish what is open.
    {
        let mut world = groups.lock();
        world.faults_on = false;
        for g in world.groups.values_mut() {
            g.down_until = None;
        }
    }
    for _ in 0..DRAIN_ROUNDS_MAX {
        if open_copies(&groups.lock()) == 0 {
            break;
        }
        tokio::time::sleep(open_max + Duration::from_millis(100)).await;
        match resolve_once(&map, &groups, open_max, &metrics).await {
            Ok(n) => driven.set((driven.get().0 + n as u64, driven.get().1)),
            Err(error) => groups
                .lock()
                .violation(format!("a resolver round failed with no faults: {error}")),
        }
    }

    let workload = workload.into_inner();
    let mut world = groups.lock();
    check_end(&mut world, &workload.answers, &workload.ids);
    report(
        options,
        &world,
        &workload,
        group_count,
        gateway_count,
        driven.get(),
    )
}

fn report(
    options: &SagaSimOptions,
    world: &World,
    workload: &Workload,
    groups: u64,
    gateways: u64,
    (resolver_sagas, resolver_rounds_failed): (u64, u64),
) -> SagaSimReport {
    let (mut sagas_confirmed, mut sagas_cancelled) = (0, 0);
    for &id in &workload.ids {
        let home = &world.groups[&world.map.group_of(id)].state;
        match home.saga_copy(id).map(|c| c.state) {
            Some(SagaState::Confirmed) => sagas_confirmed += 1,
            Some(SagaState::Cancelled) => sagas_cancelled += 1,
            _ => {}
        }
    }
    let answered_ok = workload
        .answers
        .iter()
        .filter(|a| matches!(a.result, R::Created | R::Exists))
        .count() as u64;
    SagaSimReport {
        seed: options.seed,
        ok: world.violations_total == 0,
        groups,
        gateways,
        trace_hash: world.trace_hash(),
        trace_events: world.trace_events,
        simulated_ms: world.elapsed_ns() / 1_000_000,
        batches_applied: world.batches_applied,
        transfers_submitted: workload.submitted.len() as u64,
        sagas_submitted: workload.sagas_submitted,
        answered_ok,
        answered_failed: workload.answers.len() as u64 - answered_ok,
        unanswered: workload.unanswered,
        sagas_confirmed,
        sagas_cancelled,
        resolver_sagas,
        resolver_rounds_failed,
        faults: world.counts.clone(),
        profile: Some(world.profile.clone()),
        violations: world.violations.clone(),
        violations_total: world.violations_total,
        reproduce: options.command(),
    }
}

/// A swarm of saga runs: many seeds, each with its own fault profile.
#[derive(Debug, Clone)]
pub struct SagaSwarmOptions {
    pub first_seed: u64,
    /// Stop after this many seeds...
    pub seeds_max: u64,
    /// ... or once this much wall-clock time has passed, whichever comes first.
    pub time_max: Duration,
    pub threads: usize,
    pub bug: Option<SagaBug>,
}

/// What a saga swarm found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SagaSwarmReport {
    pub seeds_run: u64,
    pub first_seed: u64,
    pub failures: Vec<SagaSimReport>,
    pub faults: SagaFaultCounts,
    pub sagas_submitted: u64,
    pub sagas_confirmed: u64,
    pub sagas_cancelled: u64,
    pub resolver_sagas: u64,
    pub simulated_seconds: u64,
    pub wall_seconds: f64,
}

fn add_counts(total: &mut SagaFaultCounts, run: &SagaFaultCounts) {
    total.calls += run.calls;
    total.lost_before_apply += run.lost_before_apply;
    total.answers_lost += run.answers_lost;
    total.duplicated += run.duplicated;
    total.unreachable += run.unreachable;
    total.outages += run.outages;
    total.clock_jumps += run.clock_jumps;
    total.gateway_crashes += run.gateway_crashes;
}

/// Runs seeds `first_seed, first_seed + 1, …` on `threads` threads until either bound is hit.
/// `progress` is told about every finished run.
pub fn swarm_sagas(
    options: &SagaSwarmOptions,
    progress: impl Fn(&SagaSimReport) + Sync,
) -> SagaSwarmReport {
    let started = Instant::now();
    let seeds = SeedRange {
        first_seed: options.first_seed,
        seeds_max: options.seeds_max,
        time_max: options.time_max,
        threads: options.threads,
    };
    let initial = SagaSwarmReport {
        first_seed: options.first_seed,
        ..SagaSwarmReport::default()
    };
    let run_seed = |seed| {
        let run = run_sagas(&SagaSimOptions {
            seed,
            bug: options.bug,
        });
        progress(&run);
        run
    };
    let mut report = for_each_seed(&seeds, initial, run_seed, |report, run| {
        report.seeds_run += 1;
        add_counts(&mut report.faults, &run.faults);
        report.sagas_submitted += run.sagas_submitted;
        report.sagas_confirmed += run.sagas_confirmed;
        report.sagas_cancelled += run.sagas_cancelled;
        report.resolver_sagas += run.resolver_sagas;
        report.simulated_seconds += run.simulated_ms / 1000;
        if !run.ok {
            report.failures.push(run);
        }
    });
    report.failures.sort_by_key(|r| r.seed);
    report.wall_seconds = started.elapsed().as_secs_f64();
    report
}
