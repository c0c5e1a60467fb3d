//! Cross-group transfers by saga: a transfer whose id (its home), debit account and credit
//! account do not all live in one group is carried by copies in every group involved (the
//! ledger's saga steps: reserve, then confirm or cancel; see `ledger`'s `saga` module).
//!
//! The protocol, for a batch of such transfers (each step a batch per group, in the caller's
//! order, coalesced with other callers' steps):
//! 1. **Reserve** a copy in every group involved: the home, the debit's and the credit's.
//! 2. **Decide in the home**: confirm its copy if every group reserved, else cancel it. The
//!    home's copy is the saga's decision, recorded once in the home's log; whoever settles it
//!    first (this gateway, another one retrying the same transfer, a resolver) decides, and
//!    everyone else learns the decision from the home's answer.
//! 3. **Follow the decision** everywhere else: confirm or cancel the copies reserved there.
//!
//! A copy outside the home is settled only after the home's copy is, or when the home refuses
//! the transfer for good (another transfer owns the id there, the id is burnt, the event is
//! invalid), so no copy is ever confirmed without the home's decision. Every step is
//! idempotent (a copy is named by the transfer's own id), so any step may be retried by anyone.
//!
//! The [`Resolver`] finishes sagas whose gateway died: every group's open copies older than
//! [`GATEWAY_SAGA_OPEN_SECONDS_MAX`] are driven through the same steps with the decision
//! forced to cancel (which the home turns into a confirm if the saga had been decided so).
//!
//! Owns the protocol and the resolver. Must not route single-group events (the router does),
//! nor hold any state a restart would lose: everything is in the groups' logs.

use std::collections::BTreeMap;
use std::time::Duration;

use cluster::{ClusterMap, GroupId};
use futures::future::{BoxFuture, try_join_all};
use ledger::{CreateTransferResult as R, EventResult, RemoteSides, SagaStep, Transfer};
use limits::{
    GATEWAY_SAGA_OPEN_SECONDS_MAX, GATEWAY_SAGA_RESOLVE_COPIES_MAX,
    GATEWAY_SAGA_RESOLVE_PERIOD_SECONDS,
};
use server::PipelineError;
use telemetry::Metrics;

use crate::coalesce::GroupWriter;
use crate::groups::{Group, Groups, group_failed};
use crate::router::Routed;

/// Whether a transfer whose ids live in different groups can be carried by a saga today:
/// plain transfers only (not linked, two-phase, balancing, closing or imported).
pub fn carried_by_saga(transfer: &Transfer) -> bool {
    transfer.flags.is_empty()
}

/// One cross-group transfer and the groups it involves.
#[derive(Debug, Clone)]
pub struct Saga {
    pub transfer: Transfer,
    pub home: GroupId,
    pub debit: GroupId,
    pub credit: GroupId,
}

impl Saga {
    pub fn new(map: &ClusterMap, transfer: Transfer) -> Saga {
        Saga {
            home: map.group_of(transfer.id),
            debit: map.group_of(transfer.debit_account_id),
            credit: map.group_of(transfer.credit_account_id),
            transfer,
        }
    }

    /// Every group involved, each once, with the sides that are remote to it.
    pub fn involved(&self) -> Vec<(GroupId, RemoteSides)> {
        let mut groups = vec![self.home, self.debit, self.credit];
        groups.sort_unstable();
        groups.dedup();
        groups
            .into_iter()
            .map(|group| {
                let mut remote = RemoteSides::empty();
                if group != self.debit {
                    remote |= RemoteSides::DEBIT;
                }
                if group != self.credit {
                    remote |= RemoteSides::CREDIT;
                }
                (group, remote)
            })
            .collect()
    }
}

/// What the driver wants the home to decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// Confirm if every group reserved (a caller's transfer).
    ConfirmIfReserved,
    /// Cancel unless the home already confirmed (a resolver's stale saga).
    Cancel,
}

/// How the saga ended, as the home recorded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Confirmed,
    Cancelled,
}

/// One settle step per group, with the sagas it settles (their indexes in `sagas`).
type StepsByGroup = BTreeMap<GroupId, (Vec<usize>, Vec<SagaStep>)>;

fn settle_step(id: u128, decision: Decision) -> SagaStep {
    match decision {
        Decision::Confirmed => SagaStep::confirm(id),
        Decision::Cancelled => SagaStep::cancel(id),
    }
}

/// How the saga rounds reach the groups: [`Groups`] in a gateway, in-memory ledgers with
/// injected faults in the simulator. An error means the group gave no answer (the steps may or
/// may not have been applied).
pub trait SagaGroups: Sync {
    /// Applies `steps` in `group`, in order: one result per step.
    fn steps(
        &self,
        group: GroupId,
        steps: Vec<SagaStep>,
    ) -> BoxFuture<'_, Result<Vec<EventResult<R>>, PipelineError>>;
    /// The copies open in `group` for longer than `older_than`, oldest first, at most `limit`.
    fn open_copies(
        &self,
        group: GroupId,
        older_than: Duration,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<(Transfer, RemoteSides)>, PipelineError>>;
    /// The ledgers of the accounts of `ids` that `group` holds. An account's ledger never
    /// changes, so any replica's answer will do.
    fn account_ledgers(
        &self,
        group: GroupId,
        ids: Vec<u128>,
    ) -> BoxFuture<'_, Result<BTreeMap<u128, u32>, PipelineError>>;
}

impl SagaGroups for Groups {
    fn steps(
        &self,
        group: GroupId,
        steps: Vec<SagaStep>,
    ) -> BoxFuture<'_, Result<Vec<EventResult<R>>, PipelineError>> {
        Box::pin(async move {
            self.group(group)?
                .sagas
                .write(steps)
                .await?
                .map_err(|error| group_failed(group, error))
        })
    }

    fn open_copies(
        &self,
        group: GroupId,
        older_than: Duration,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<(Transfer, RemoteSides)>, PipelineError>> {
        Box::pin(async move {
            let limit = u32::try_from(limit).unwrap_or(u32::MAX);
            self.client(group)?
                .open_saga_copies(older_than, limit)
                .await
                .map_err(|error| group_failed(group, error))
        })
    }

    fn account_ledgers(
        &self,
        group: GroupId,
        ids: Vec<u128>,
    ) -> BoxFuture<'_, Result<BTreeMap<u128, u32>, PipelineError>> {
        Box::pin(async move {
            let found = self
                .group(group)?
                .client
                .lookup_accounts(&ids)
                .await
                .map_err(|error| group_failed(group, error))?;
            Ok(found.iter().map(|a| (a.id, a.ledger)).collect())
        })
    }
}

/// Sends each group its steps (in parallel) and gives every saga's answer back per group.
async fn send_steps<G: SagaGroups + ?Sized>(
    groups: &G,
    steps: StepsByGroup,
) -> Result<Vec<(GroupId, Vec<usize>, Vec<EventResult<R>>)>, PipelineError> {
    let calls = steps.into_iter().map(|(group, (sagas, steps))| async move {
        let results = groups.steps(group, steps).await?;
        if results.len() != sagas.len() {
            return Err(PipelineError::Unavailable(format!(
                "group {group} answered {} results for {} saga steps",
                results.len(),
                sagas.len()
            )));
        }
        Ok::<_, PipelineError>((group, sagas, results))
    });
    try_join_all(calls).await
}

/// Counts sagas in `fincore_sagas_in_flight` while alive, however their run ends (an answer,
/// an error, or the caller going away).
struct InFlight<'a> {
    metrics: &'a Metrics,
    count: i64,
}

impl<'a> InFlight<'a> {
    fn new(metrics: &'a Metrics, count: usize) -> InFlight<'a> {
        let count = i64::try_from(count).unwrap_or(i64::MAX);
        metrics.sagas_in_flight_add(count);
        InFlight { metrics, count }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.metrics.sagas_in_flight_add(-self.count);
    }
}

/// The first failure in the ledger's order of precedence.
fn first_failure(failures: impl Iterator<Item = R>) -> Option<R> {
    failures.min_by_key(|code| R::ALL.iter().position(|c| c == code))
}

/// The failure one group would report among the groups' refusals: the first in the ledger's
/// order of precedence. (Each group checks what it holds as one group checks it; a clearing
/// balance never refuses.)
fn one_groups_failure(reservations: &BTreeMap<GroupId, EventResult<R>>) -> Option<R> {
    first_failure(
        reservations
            .values()
            .map(|reservation| reservation.result)
            .filter(|&code| !reserved(code)),
    )
}

fn reserved(result: R) -> bool {
    matches!(result, R::Created | R::Exists)
}

/// Runs `sagas` to their end and answers each as one group would answer its transfer.
/// `metrics` counts sagas by outcome.
pub async fn run<G: SagaGroups + ?Sized>(
    groups: &G,
    sagas: &[Saga],
    want: Want,
    metrics: &Metrics,
) -> Result<Vec<EventResult<R>>, PipelineError> {
    run_telling_reserved(groups, sagas, want, metrics, None).await
}

/// [`run`], sending on `on_reserved` once every group has answered the reservations (so each
/// saga's home holds its copy, or has refused it for good): from then on its outcome can be
/// asked of the home.
pub async fn run_telling_reserved<G: SagaGroups + ?Sized>(
    groups: &G,
    sagas: &[Saga],
    want: Want,
    metrics: &Metrics,
    on_reserved: Option<tokio::sync::oneshot::Sender<()>>,
) -> Result<Vec<EventResult<R>>, PipelineError> {
    let _carrying = InFlight::new(metrics, sagas.len());
    // 1. Reserve everywhere.
    let mut reserves: StepsByGroup = BTreeMap::new();
    for (at, saga) in sagas.iter().enumerate() {
        for (group, remote) in saga.involved() {
            let entry = reserves.entry(group).or_default();
            entry.0.push(at);
            entry.1.push(SagaStep::reserve(saga.transfer, remote));
        }
    }
    let mut reservations: Vec<BTreeMap<GroupId, EventResult<R>>> =
        vec![BTreeMap::new(); sagas.len()];
    for (group, ats, results) in send_steps(groups, reserves).await? {
        for (at, result) in ats.into_iter().zip(results) {
            reservations[at].insert(group, result);
        }
    }
    if let Some(on_reserved) = on_reserved {
        // The receiver may be gone (its caller answered already): nothing to tell then.
        let _ = on_reserved.send(());
    }

    // 2. Decide in the home (only where the home holds a copy of these very fields).
    let mut homes: StepsByGroup = BTreeMap::new();
    let mut decisions: Vec<Option<Decision>> = vec![None; sagas.len()];
    for (at, saga) in sagas.iter().enumerate() {
        let home = reservations[at][&saga.home].result;
        if !reserved(home) {
            // The home refuses these fields for good: no saga with them can ever be decided.
            decisions[at] = Some(Decision::Cancelled);
            continue;
        }
        let everywhere = reservations[at].values().all(|r| reserved(r.result));
        let asked = if want == Want::ConfirmIfReserved && everywhere {
            Decision::Confirmed
        } else {
            Decision::Cancelled
        };
        let entry = homes.entry(saga.home).or_default();
        entry.0.push(at);
        entry.1.push(settle_step(saga.transfer.id, asked));
    }
    for (group, ats, results) in send_steps(groups, homes).await? {
        for (at, result) in ats.into_iter().zip(results) {
            let asked_confirm = want == Want::ConfirmIfReserved
                && reservations[at].values().all(|r| reserved(r.result));
            decisions[at] = Some(match (asked_confirm, result.result) {
                (true, R::Created | R::Exists) | (false, R::PendingTransferAlreadyPosted) => {
                    Decision::Confirmed
                }
                (false, R::Created | R::Exists) | (true, R::PendingTransferAlreadyVoided) => {
                    Decision::Cancelled
                }
                (_, other) => {
                    return Err(PipelineError::Unavailable(format!(
                        "group {group} answered {other} to settling the home copy of transfer {}; \
                         the saga stays open for a resolver",
                        sagas[at].transfer.id
                    )));
                }
            });
        }
    }

    // 3. Follow the decision everywhere else a copy was reserved.
    let mut follow: StepsByGroup = BTreeMap::new();
    for (at, saga) in sagas.iter().enumerate() {
        let decision = decisions[at].expect("every saga is decided");
        for (&group, result) in &reservations[at] {
            if group != saga.home && reserved(result.result) {
                let entry = follow.entry(group).or_default();
                entry.0.push(at);
                entry.1.push(settle_step(saga.transfer.id, decision));
            }
        }
    }
    for (group, ats, results) in send_steps(groups, follow).await? {
        for (at, result) in ats.into_iter().zip(results) {
            if !reserved(result.result) {
                // A copy settled against its home's decision: the one thing that must not be.
                metrics.saga("diverged");
                tracing::error!(
                    group = %group,
                    transfer = sagas[at].transfer.id,
                    answer = %result.result,
                    "a saga copy was settled against its home's decision"
                );
                return Err(PipelineError::Unavailable(format!(
                    "group {group} settled transfer {} against its home's decision ({})",
                    sagas[at].transfer.id, result.result
                )));
            }
        }
    }

    // The answers one group would give.
    let mut answers: Vec<EventResult<R>> = sagas
        .iter()
        .enumerate()
        .map(|(at, saga)| {
            let home = reservations[at][&saga.home];
            let decision = decisions[at].expect("every saga is decided");
            metrics.saga(match decision {
                Decision::Confirmed => "confirmed",
                Decision::Cancelled => "cancelled",
            });
            let result = match decision {
                Decision::Confirmed if home.result == R::Created => R::Created,
                Decision::Confirmed => R::Exists,
                Decision::Cancelled => one_groups_failure(&reservations[at])
                    // Reserved everywhere yet cancelled: a resolver aborted the saga first.
                    .unwrap_or(R::IdAlreadyFailed),
            };
            EventResult {
                result,
                timestamp: home.timestamp,
            }
        })
        .collect();
    let mismatched: Vec<usize> = (0..sagas.len())
        .filter(|&at| {
            answers[at].result == R::AccountsMustHaveTheSameLedger
                && ledgers_both_differ(&sagas[at], &reservations[at])
        })
        .collect();
    if !mismatched.is_empty() {
        let ledgers = account_ledgers(groups, sagas, &mismatched).await;
        for at in mismatched {
            let t = &sagas[at].transfer;
            let (debit, credit) = (
                ledgers.get(&t.debit_account_id),
                ledgers.get(&t.credit_account_id),
            );
            if let (Some(debit), Some(credit)) = (debit, credit)
                && debit == credit
            {
                answers[at].result = R::TransferMustHaveTheSameLedgerAsAccounts;
            }
        }
    }
    Ok(answers)
}

/// The ledgers of the debit and credit accounts of `sagas[at]` for each of `ats`, asked of
/// their groups (one call per group, all at once). A group that does not answer is left out
/// (its sagas keep `accounts_must_have_the_same_ledger`): the sagas have ended, so this must
/// not fail the batch.
async fn account_ledgers<G: SagaGroups + ?Sized>(
    groups: &G,
    sagas: &[Saga],
    ats: &[usize],
) -> BTreeMap<u128, u32> {
    let mut ids: BTreeMap<GroupId, Vec<u128>> = BTreeMap::new();
    for &at in ats {
        let saga = &sagas[at];
        ids.entry(saga.debit)
            .or_default()
            .push(saga.transfer.debit_account_id);
        ids.entry(saga.credit)
            .or_default()
            .push(saga.transfer.credit_account_id);
    }
    let asked = ids.into_iter().map(|(group, mut ids)| async move {
        ids.sort_unstable();
        ids.dedup();
        match groups.account_ledgers(group, ids).await {
            Ok(found) => found,
            Err(error) => {
                tracing::warn!(%group, %error, "cannot tell two ledger failures apart");
                BTreeMap::new()
            }
        }
    });
    futures::future::join_all(asked)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Whether the debit's and the credit's groups (two groups) both refused `saga` because their
/// account's ledger is not the transfer's. Each compares its own account with the transfer
/// (the other side is its clearing balance, of the transfer's ledger), so both answer
/// `accounts_must_have_the_same_ledger`; one group, comparing the two accounts first, answers
/// that only if they differ from each other too.
fn ledgers_both_differ(saga: &Saga, reservations: &BTreeMap<GroupId, EventResult<R>>) -> bool {
    let refused_by = |group: GroupId| {
        reservations
            .get(&group)
            .is_some_and(|r| r.result == R::AccountsMustHaveTheSameLedger)
    };
    saga.debit != saga.credit && refused_by(saga.debit) && refused_by(saga.credit)
}

/// Finishes the sagas left open, by any gateway, longer than an age (by default
/// [`GATEWAY_SAGA_OPEN_SECONDS_MAX`]): every [`GATEWAY_SAGA_RESOLVE_PERIOD_SECONDS`] it runs a
/// round ([`resolve_once`] over the gateway's routing of the moment) until dropped or until
/// its gateway is gone.
pub struct Resolver {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Resolver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Resolver {
    /// Runs `round` every period; `round` answers `None` once there is nothing left to serve.
    pub(crate) fn start<F>(round: F) -> Resolver
    where
        F: Fn() -> Option<futures::future::BoxFuture<'static, ()>> + Send + 'static,
    {
        let task = tokio::spawn(async move {
            let mut ticks =
                tokio::time::interval(Duration::from_secs(GATEWAY_SAGA_RESOLVE_PERIOD_SECONDS));
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(work) = round() else { break };
                work.await;
            }
        });
        Resolver { task }
    }

    /// The default age past which an open saga is aborted.
    pub fn open_max_default() -> Duration {
        Duration::from_secs(GATEWAY_SAGA_OPEN_SECONDS_MAX)
    }
}

/// One resolver round over every group; the number of sagas driven.
pub async fn resolve_once<G: SagaGroups + ?Sized>(
    map: &ClusterMap,
    groups: &G,
    open_max: Duration,
    metrics: &Metrics,
) -> Result<usize, PipelineError> {
    let mut stale: BTreeMap<u128, Saga> = BTreeMap::new();
    let mut unanswered = None;
    let mut silent: std::collections::BTreeSet<GroupId> = std::collections::BTreeSet::new();
    for &group in map.groups().keys() {
        // A group that does not answer leaves the others' stale sagas to be driven all the
        // same; those involving it wait for a round where it answers.
        let copies = match groups
            .open_copies(group, open_max, GATEWAY_SAGA_RESOLVE_COPIES_MAX)
            .await
        {
            Ok(copies) => copies,
            Err(error) => {
                metrics.saga_copies_stale(group.to_string(), None);
                unanswered.get_or_insert(error);
                silent.insert(group);
                continue;
            }
        };
        metrics.saga_copies_stale(group.to_string(), Some(copies.len()));
        for (copy, _) in copies {
            // The caller's transfer, as every copy keeps it (the group stamped its own copy).
            let transfer = Transfer {
                timestamp: 0,
                ..copy
            };
            stale
                .entry(transfer.id)
                .or_insert_with(|| Saga::new(map, transfer));
        }
    }
    let sagas: Vec<Saga> = stale
        .into_values()
        .filter(|saga| {
            [saga.home, saga.debit, saga.credit]
                .iter()
                .all(|group| !silent.contains(group))
        })
        .collect();
    let mut driven = 0;
    for chunk in sagas.chunks(GATEWAY_SAGA_RESOLVE_COPIES_MAX) {
        // A chunk that fails (a group stopped answering) leaves the next chunks to be tried.
        match run(groups, chunk, Want::Cancel, metrics).await {
            Ok(_) => driven += chunk.len(),
            Err(error) => {
                unanswered.get_or_insert(error);
            }
        }
    }
    if driven > 0 {
        tracing::info!(sagas = driven, "resolved stale sagas");
    }
    match unanswered {
        Some(error) => Err(error),
        None => Ok(driven),
    }
}

impl Routed for SagaStep {
    type Result = R;
    fn writer(group: &Group) -> &GroupWriter<SagaStep> {
        &group.sagas
    }
    fn linked(&self) -> bool {
        SagaStep::linked(self)
    }
    fn imported(&self) -> bool {
        false
    }
    const IMPORTED_EVENT_EXPECTED: R = R::ImportedEventExpected;
    const IMPORTED_EVENT_NOT_EXPECTED: R = R::ImportedEventNotExpected;
    const LINKED_EVENT_FAILED: R = R::LinkedEventFailed;
    const LINKED_EVENT_CHAIN_OPEN: R = R::LinkedEventChainOpen;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusals(codes: [(u128, R); 3]) -> BTreeMap<GroupId, EventResult<R>> {
        codes
            .into_iter()
            .map(|(group, result)| {
                let answer = EventResult {
                    result,
                    timestamp: 0,
                };
                (GroupId::from_u128(group), answer)
            })
            .collect()
    }

    #[test]
    fn the_groups_refusals_answer_the_first_in_precedence() {
        let answer = |codes| one_groups_failure(&refusals(codes));
        assert_eq!(
            answer([
                (1, R::OverflowsCreditsPosted),
                (2, R::ExceedsDebits),
                (3, R::Created)
            ]),
            Some(R::OverflowsCreditsPosted)
        );
        assert_eq!(
            answer([
                (1, R::Exists),
                (2, R::ExceedsDebits),
                (3, R::CapacityReached)
            ]),
            Some(R::ExceedsDebits)
        );
        assert_eq!(
            answer([(1, R::Created), (2, R::Created), (3, R::Exists)]),
            None
        );
    }
}
