//! The groups of the saga simulator: one `ledger::StateMachine` per group, applying each
//! batch atomically (Raft is the other simulator's job), each with its own clock, reached
//! through [`SimGroups`], the in-memory `gateway::saga::SagaGroups` with faults drawn from the
//! seed. After every applied batch the group's invariants are checked (`check_group`).
//!
//! Owns the groups' state and the faults between gateways and groups. Must not hold any part
//! of the saga protocol: the gateway's `run` and `resolve_once` are what is under test.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use cluster::{ClusterMap, GroupId};
use futures::future::BoxFuture;
use gateway::saga::SagaGroups;
use ledger::{
    AccountFlags, Balances, Batch, BatchBody, BatchResults, CreateTransferResult as R, EventResult,
    RemoteSides, SagaAction, SagaState, SagaStep, StateMachine, Transfer, WideBalances,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use server::PipelineError;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

/// Group clocks start at this wall-clock time (2026-01-01 UTC), in nanoseconds.
pub const EPOCH_NS: u64 = 1_767_225_600_000_000_000;
/// Violations kept word for word per run (the rest are only counted).
const VIOLATIONS_KEPT_MAX: usize = 20;

/// A bug planted in the in-memory groups (never in the gateway), to prove the checkers catch
/// it (`fincore sim --sagas --bug …`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum SagaBug {
    /// A group other than the transfer's home applies a cancel step as a confirm.
    CancelAsConfirm,
    /// A group other than the home confirms a copy on a reserve step it answers `exists`
    /// (as if a retried reservation were a decision).
    ConfirmOnRetry,
}

impl SagaBug {
    const ALL: [SagaBug; 2] = [SagaBug::CancelAsConfirm, SagaBug::ConfirmOnRetry];

    /// The name `--bug` takes.
    pub fn name(self) -> &'static str {
        match self {
            SagaBug::CancelAsConfirm => "cancel-as-confirm",
            SagaBug::ConfirmOnRetry => "confirm-on-retry",
        }
    }
}

impl std::str::FromStr for SagaBug {
    type Err = String;
    fn from_str(s: &str) -> Result<SagaBug, String> {
        SagaBug::ALL
            .into_iter()
            .find(|bug| bug.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = SagaBug::ALL.iter().map(|bug| bug.name()).collect();
                format!(
                    "unknown saga bug {s:?} (expected one of {})",
                    names.join(", ")
                )
            })
    }
}

/// The fault rates of one run, drawn from its seed (each kind on or off, at its own rate).
#[derive(Debug, Clone, Serialize)]
pub struct SagaFaultProfile {
    /// Chance that a call is lost before the group applies it.
    pub lost_before_apply: f64,
    /// Chance that a group applies a call but its answer is lost.
    pub answer_lost: f64,
    /// Chance that a call is delivered (and applied) twice.
    pub duplicated: f64,
    /// Chance per call that some group becomes unreachable for a while.
    pub outage: f64,
    pub outage_ms_max: u64,
    /// Chance per call that some group's clock jumps, up to this far either way.
    pub clock_jump: f64,
    pub clock_jump_ms_max: u64,
    /// Chance that a gateway crashes during one of its batches.
    pub gateway_crash: f64,
    /// One way of a call takes a uniform time up to this long.
    pub latency_us_max: u64,
}

fn maybe(rng: &mut SmallRng, low: f64, high: f64) -> f64 {
    if rng.random_bool(0.6) {
        rng.random_range(low..high)
    } else {
        0.0
    }
}

impl SagaFaultProfile {
    pub fn draw(rng: &mut SmallRng) -> SagaFaultProfile {
        SagaFaultProfile {
            lost_before_apply: maybe(rng, 0.005, 0.15),
            answer_lost: maybe(rng, 0.005, 0.15),
            duplicated: maybe(rng, 0.005, 0.15),
            outage: maybe(rng, 0.001, 0.02),
            outage_ms_max: rng.random_range(100..4_000),
            clock_jump: maybe(rng, 0.001, 0.02),
            clock_jump_ms_max: rng.random_range(100..8_000),
            gateway_crash: maybe(rng, 0.01, 0.25),
            latency_us_max: rng.random_range(100..40_000),
        }
    }
}

/// What the run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SagaFaultCounts {
    pub calls: u64,
    pub lost_before_apply: u64,
    pub answers_lost: u64,
    pub duplicated: u64,
    pub unreachable: u64,
    pub outages: u64,
    pub clock_jumps: u64,
    pub gateway_crashes: u64,
}

/// One group: its ledger, its clock's error and when it is reachable again.
pub struct SimGroup {
    pub state: StateMachine,
    /// How far this group's clock is off the simulated time (clock jumps).
    pub clock_offset_ns: i64,
    pub down_until: Option<Instant>,
    /// The accounts created here, in order.
    pub accounts: Vec<u128>,
}

/// Everything the groups share, behind one lock (never held across an await).
pub struct World {
    pub rng: SmallRng,
    pub map: ClusterMap,
    pub groups: BTreeMap<GroupId, SimGroup>,
    pub started: Instant,
    pub faults_on: bool,
    pub profile: SagaFaultProfile,
    pub counts: SagaFaultCounts,
    pub bug: Option<SagaBug>,
    pub batches_applied: u64,
    pub violations: Vec<String>,
    pub violations_total: u64,
    trace: Sha256,
    pub trace_events: u64,
}

/// What happens to one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Delivered,
    LostBeforeApply,
    AnswerLost,
    Duplicated,
}

impl World {
    pub fn new(seed: u64, map: ClusterMap, bug: Option<SagaBug>) -> World {
        let mut rng = SmallRng::seed_from_u64(seed);
        let profile = SagaFaultProfile::draw(&mut rng);
        let groups = map
            .groups()
            .keys()
            .map(|&group| {
                let sim_group = SimGroup {
                    state: StateMachine::default(),
                    clock_offset_ns: 0,
                    down_until: None,
                    accounts: Vec::new(),
                };
                (group, sim_group)
            })
            .collect();
        World {
            rng,
            map,
            groups,
            started: Instant::now(),
            faults_on: true,
            profile,
            counts: SagaFaultCounts::default(),
            bug,
            batches_applied: 0,
            violations: Vec::new(),
            violations_total: 0,
            trace: Sha256::new(),
            trace_events: 0,
        }
    }

    pub fn violation(&mut self, what: String) {
        self.violations_total += 1;
        if self.violations.len() < VIOLATIONS_KEPT_MAX {
            self.violations.push(what);
        }
    }

    /// Adds an event to the run's trace (equal seeds must give equal traces).
    pub fn trace(&mut self, event: impl std::fmt::Debug) {
        self.trace_events += 1;
        self.trace.update(format!("{event:?}\n").as_bytes());
    }

    pub fn trace_hash(&self) -> String {
        self.trace
            .clone()
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    pub fn elapsed_ns(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The group's wall clock: simulated time plus its error.
    pub fn clock_ns(&self, group: GroupId) -> u64 {
        let offset = self.groups[&group].clock_offset_ns;
        (EPOCH_NS + self.elapsed_ns()).saturating_add_signed(offset)
    }

    fn latency(&mut self) -> Duration {
        let max = self.profile.latency_us_max.max(1);
        Duration::from_micros(self.rng.random_range(0..=max))
    }

    /// Draws the fate of one call to `group`, and maybe an outage or a clock jump somewhere.
    fn draw_call(&mut self) -> Fate {
        self.counts.calls += 1;
        if !self.faults_on {
            return Fate::Delivered;
        }
        let groups: Vec<GroupId> = self.groups.keys().copied().collect();
        let now = Instant::now();
        if self.rng.random_bool(self.profile.outage) {
            let group = groups[self.rng.random_range(0..groups.len())];
            let ms = self.rng.random_range(1..=self.profile.outage_ms_max);
            self.groups.get_mut(&group).expect("known").down_until =
                Some(now + Duration::from_millis(ms));
            self.counts.outages += 1;
            self.trace(("outage", group, ms));
        }
        if self.rng.random_bool(self.profile.clock_jump) {
            let group = groups[self.rng.random_range(0..groups.len())];
            let max = i64::try_from(self.profile.clock_jump_ms_max).unwrap_or(i64::MAX);
            let ms = self.rng.random_range(-max..=max);
            // Set, not added: a clock is wrong by at most the largest jump, as NTP keeps it.
            self.groups.get_mut(&group).expect("known").clock_offset_ns = ms * 1_000_000;
            self.counts.clock_jumps += 1;
            self.trace(("clock jump", group, ms));
        }
        let p = &self.profile;
        let (lost, answer_lost, duplicated) = (p.lost_before_apply, p.answer_lost, p.duplicated);
        if self.rng.random_bool(lost) {
            self.counts.lost_before_apply += 1;
            Fate::LostBeforeApply
        } else if self.rng.random_bool(answer_lost) {
            self.counts.answers_lost += 1;
            Fate::AnswerLost
        } else if self.rng.random_bool(duplicated) {
            self.counts.duplicated += 1;
            Fate::Duplicated
        } else {
            Fate::Delivered
        }
    }

    fn reachable(&mut self, group: GroupId) -> bool {
        let down = self.groups[&group]
            .down_until
            .is_some_and(|until| Instant::now() < until);
        if down {
            self.counts.unreachable += 1;
        }
        !down
    }

    /// Applies one batch to `group` at its clock, then checks the group's invariants.
    pub fn apply(&mut self, group: GroupId, body: BatchBody) -> BatchResults {
        let timestamp = self.clock_ns(group);
        let steps: Vec<u128> = match &body {
            BatchBody::SagaSteps(steps) => steps.iter().map(|s| s.transfer.id).collect(),
            _ => Vec::new(),
        };
        let results = self
            .groups
            .get_mut(&group)
            .expect("known group")
            .state
            .apply(&Batch { timestamp, body });
        self.batches_applied += 1;
        self.trace(("apply", group, &results));
        self.check_group(group, &steps);
        results
    }

    /// Applies saga steps, with the planted bug if any.
    fn apply_steps(&mut self, group: GroupId, mut steps: Vec<SagaStep>) -> Vec<EventResult<R>> {
        if let Some(bug) = self.bug {
            for step in &mut steps {
                if self.map.group_of(step.transfer.id) == group {
                    continue;
                }
                let state = &self.groups[&group].state;
                let open = state
                    .saga_copy(step.transfer.id)
                    .is_some_and(|copy| copy.state == SagaState::Open);
                match (bug, step.action) {
                    (SagaBug::CancelAsConfirm, SagaAction::Cancel) => {
                        step.action = SagaAction::Confirm;
                    }
                    (SagaBug::ConfirmOnRetry, SagaAction::Reserve(_)) if open => {
                        *step = SagaStep::confirm(step.transfer.id);
                    }
                    _ => {}
                }
            }
        }
        match self.apply(group, BatchBody::SagaSteps(steps)) {
            BatchResults::SagaSteps(results) => results,
            other => unreachable!("saga results expected, got {other:?}"),
        }
    }

    /// Applies plain transfers (a single-group part of a batch).
    fn apply_transfers(&mut self, group: GroupId, transfers: Vec<Transfer>) -> Vec<EventResult<R>> {
        match self.apply(group, BatchBody::CreateTransfers(transfers)) {
            BatchResults::CreateTransfers(results) => results,
            other => unreachable!("transfer results expected, got {other:?}"),
        }
    }

    /// The invariants every applied batch must keep in `group`: per ledger, accounts plus
    /// clearing balance (pending and posted); no account past its limit, holds included; a
    /// copy of `ids` confirmed outside its home only if the home's copy of the same fields is.
    fn check_group(&mut self, group: GroupId, ids: &[u128]) {
        let mut found = Vec::new();
        let g = &self.groups[&group];
        // Per ledger: debits pending, debits posted, credits pending, credits posted.
        let mut books: BTreeMap<u32, WideBalances> = BTreeMap::new();
        for &id in &g.accounts {
            let a = g.state.account(id).expect("created accounts exist");
            let b = books.entry(a.ledger).or_default();
            *b = b.plus(Balances::of(a).into());
            if a.flags
                .contains(AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS)
                && a.debits_pending + a.debits_posted > a.credits_posted
            {
                found.push(format!(
                    "group {group}: account {id} debits exceed credits: {a:?}"
                ));
            }
            if a.flags
                .contains(AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS)
                && a.credits_pending + a.credits_posted > a.debits_posted
            {
                found.push(format!(
                    "group {group}: account {id} credits exceed debits: {a:?}"
                ));
            }
        }
        for c in g.state.clearing_balances() {
            let b = books.entry(c.ledger).or_default();
            *b = b.plus(c.sums);
        }
        for (ledger, b) in books {
            if b.debits_pending != b.credits_pending || b.debits_posted != b.credits_posted {
                found.push(format!(
                    "group {group} ledger {ledger}: books do not balance (debits pending {} \
                     posted {}, credits pending {} posted {})",
                    b.debits_pending, b.debits_posted, b.credits_pending, b.credits_posted
                ));
            }
        }
        for &id in ids {
            let home = self.map.group_of(id);
            if home == group || !confirmed(g.state.saga_copy(id).map(|c| c.state)) {
                continue;
            }
            let h = &self.groups[&home].state;
            let same = h
                .transfer(id)
                .zip(g.state.transfer(id))
                .is_some_and(|(a, b)| {
                    Transfer { timestamp: 0, ..*a } == Transfer { timestamp: 0, ..*b }
                });
            if !(confirmed(h.saga_copy(id).map(|c| c.state)) && same) {
                found.push(format!(
                    "group {group} confirmed its copy of transfer {id}, but the home {home}'s \
                     copy is {:?} (same fields: {same})",
                    h.saga_copy(id).map(|c| c.state)
                ));
            }
        }
        for violation in found {
            self.violation(violation);
        }
    }
}

fn confirmed(state: Option<SagaState>) -> bool {
    state == Some(SagaState::Confirmed)
}

/// The groups as gateways reach them: every call takes a simulated latency each way and may
/// meet the seed's faults. Shared by every gateway and resolver of a run.
#[derive(Clone)]
pub struct SimGroups {
    pub world: Arc<Mutex<World>>,
}

impl SimGroups {
    pub fn lock(&self) -> MutexGuard<'_, World> {
        self.world.lock().expect("never poisoned")
    }

    /// One call: the request's way, the group's work (if it is reachable and the request
    /// arrives), the answer's way.
    async fn call<T: std::fmt::Debug>(
        &self,
        group: GroupId,
        work: impl Fn(&mut World) -> T,
    ) -> Result<T, PipelineError> {
        let (fate, there) = {
            let mut world = self.lock();
            (world.draw_call(), world.latency())
        };
        tokio::time::sleep(there).await;
        let answer = {
            let mut world = self.lock();
            if !world.reachable(group) {
                return Err(unavailable(group, "unreachable"));
            }
            match fate {
                Fate::LostBeforeApply => return Err(unavailable(group, "request lost")),
                Fate::Duplicated => {
                    // Delivered twice, applied twice: either answer may come back.
                    let first = work(&mut world);
                    let second = work(&mut world);
                    if world.rng.random_bool(0.5) {
                        first
                    } else {
                        second
                    }
                }
                Fate::Delivered | Fate::AnswerLost => work(&mut world),
            }
        };
        let back = self.lock().latency();
        tokio::time::sleep(back).await;
        if fate == Fate::AnswerLost {
            return Err(unavailable(group, "answer lost"));
        }
        Ok(answer)
    }

    /// A single-group part of a batch: plain transfers applied by their group.
    pub async fn transfers(
        &self,
        group: GroupId,
        transfers: Vec<Transfer>,
    ) -> Result<Vec<EventResult<R>>, PipelineError> {
        self.call(group, move |world| {
            world.apply_transfers(group, transfers.clone())
        })
        .await
    }
}

fn unavailable(group: GroupId, why: &str) -> PipelineError {
    PipelineError::Unavailable(format!("simulated group {group}: {why}"))
}

impl SagaGroups for SimGroups {
    fn steps(
        &self,
        group: GroupId,
        steps: Vec<SagaStep>,
    ) -> BoxFuture<'_, Result<Vec<EventResult<R>>, PipelineError>> {
        Box::pin(self.call(group, move |world| world.apply_steps(group, steps.clone())))
    }

    fn open_copies(
        &self,
        group: GroupId,
        older_than: Duration,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<(Transfer, RemoteSides)>, PipelineError>> {
        Box::pin(self.call(group, move |world| {
            // As a node does: "older than" by the group's own clock.
            let older_than_ns = u64::try_from(older_than.as_nanos()).unwrap_or(u64::MAX);
            let before = world.clock_ns(group).saturating_sub(older_than_ns);
            world.groups[&group].state.open_saga_copies(before, limit)
        }))
    }

    fn account_ledgers(
        &self,
        group: GroupId,
        ids: Vec<u128>,
    ) -> BoxFuture<'_, Result<std::collections::BTreeMap<u128, u32>, PipelineError>> {
        Box::pin(self.call(group, move |world| {
            let state = &world.groups[&group].state;
            ids.iter()
                .filter_map(|&id| state.account(id).map(|a| (id, a.ledger)))
                .collect::<std::collections::BTreeMap<u128, u32>>()
        }))
    }
}
