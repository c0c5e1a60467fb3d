//! [`Gateway`]: the ledger's client API served by routing to the groups of the cluster map.
//!
//! Writes: a batch is split by the group of every id each event names (an account's id; a
//! transfer's own id, which homes it, its two accounts and the pending transfer it posts or
//! voids), the parts go to their groups in parallel, and the groups' results are merged back
//! into the caller's order, so the caller gets one dense result per event as from one node.
//! Within a part the caller's order is kept, so a linked chain whose events all live in one
//! group is applied atomically there. Reads go to the group of the id asked; lookups of many
//! ids are split and merged back into the order asked.
//!
//! A plain transfer whose ids live in different groups is carried by a saga (the `saga`
//! module), after the batch's single-group parts are answered: within one batch, such
//! transfers apply after the batch's single-group events, in the caller's order among
//! themselves. Sagas not ended by the gateway's saga deadline are answered `outcome_pending`
//! and finished in the background (at most `GATEWAY_SAGAS_DETACHED_MAX` batches; past it the
//! caller waits); their outcome is polled by id (`transfer_outcomes`, asked of each id's home).
//!
//! Refused whole, naming the first such event, before anything is sent (nothing changes): any
//! other event whose ids live in different groups (linked, two-phase, balancing, closing or
//! imported transfers; accounts never do), and a linked chain spanning groups, since the sagas
//! that would carry them are not built yet.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

use cluster::route::{self, Accounts, Merger, Split};
use cluster::{ClusterMap, GroupId};
use futures::future::try_join_all;
use ledger::{
    Account, AccountBalance, AccountFilter, AccountFlags, CreateAccountResult,
    CreateTransferResult, EventResult, Transfer, TransferFlags, TransferOutcome,
};
use limits::{
    GATEWAY_SAGA_DEADLINE_MS_DEFAULT, GATEWAY_SAGA_DEADLINE_MS_MAX, GATEWAY_SAGAS_DETACHED_MAX,
};
use server::events::EventsRefusal;
use server::{CreateResults, LedgerApi, PipelineError};
use telemetry::Metrics;
use tokio::sync::Semaphore;

use crate::coalesce::GroupWriter;
use crate::groups::{Group, Groups, group_failed};
use crate::saga::{self, Resolver, Saga, Want};
use futures::future::BoxFuture;

/// A cluster map and the connections to its groups: what one call routes by, from start to
/// end, even if the gateway takes a newer map meanwhile.
struct Routing {
    map: ClusterMap,
    groups: Groups,
}

/// Why a new map was not taken; the gateway keeps routing by the one it has.
pub type ReloadError = cluster::SuccessorError;

/// The client API over the groups of one cluster map (replaced whole by [`Gateway::reload`]).
pub struct Gateway {
    routing: std::sync::RwLock<Arc<Routing>>,
    metrics: Arc<Metrics>,
    /// How long a caller's sagas may take before they are answered `outcome_pending`.
    saga_deadline: Duration,
    /// Permits for the sagas finished in the background.
    detached: Arc<Semaphore>,
    /// Circuit breakers on the calls to each group (none until `with_flow`).
    breakers: crate::breakers::Breakers,
}

impl Gateway {
    pub fn new(map: ClusterMap, groups: Groups) -> Gateway {
        let metrics = Metrics::for_service(telemetry::Service::Gateway);
        Gateway {
            routing: std::sync::RwLock::new(Arc::new(Routing { map, groups })),
            breakers: crate::breakers::Breakers::new(None, Arc::clone(&metrics)),
            metrics,
            saga_deadline: Duration::from_millis(GATEWAY_SAGA_DEADLINE_MS_DEFAULT),
            detached: Arc::new(Semaphore::new(GATEWAY_SAGAS_DETACHED_MAX)),
        }
    }

    /// Guards the calls to each group with a circuit breaker under the `breaker` rule of
    /// `gate`'s rules in use (the same gate the gateway's own listeners apply), changed with
    /// them at run time.
    pub fn with_flow(mut self, gate: Arc<flow::Gate>) -> Gateway {
        self.breakers = crate::breakers::Breakers::new(Some(gate), Arc::clone(&self.metrics));
        self
    }

    /// Answers `outcome_pending` for cross-group transfers whose sagas have not ended within
    /// `deadline` (at most `GATEWAY_SAGA_DEADLINE_MS_MAX`), finishing them in the background.
    pub fn with_saga_deadline(mut self, deadline: Duration) -> Gateway {
        self.saga_deadline = deadline.min(Duration::from_millis(GATEWAY_SAGA_DEADLINE_MS_MAX));
        self
    }

    /// Runs a caller's `sagas` to their end, or until the saga deadline has passed and every
    /// group has answered their reservations (so each home holds its copy, and a poll of the
    /// outcome there finds it): then they are answered `outcome_pending` and go on in a task
    /// of their own (holding a permit of `detached`; without one free, the caller waits for
    /// the end instead). A caller who goes away does not stop them either.
    async fn run_sagas(
        &self,
        routing: Arc<Routing>,
        sagas: Vec<Saga>,
    ) -> Result<Vec<EventResult<CreateTransferResult>>, PipelineError> {
        let count = sagas.len();
        let metrics = Arc::clone(&self.metrics);
        let (reserved_tx, reserved_rx) = tokio::sync::oneshot::channel();
        // In a span of the caller's trace (its own, so that the request's span ends with the
        // answer even when the saga goes on): the saga's calls to the groups join the trace.
        let saga_span =
            tracing::info_span!(target: telemetry::trace::TARGET, "gateway.saga", sagas = count);
        let mut run = tokio::spawn(
            async move {
                let want = Want::ConfirmIfReserved;
                saga::run_telling_reserved(
                    &routing.groups,
                    &sagas,
                    want,
                    &metrics,
                    Some(reserved_tx),
                )
                .await
            }
            .instrument(saga_span.clone()),
        );
        let deadline = tokio::time::sleep(self.saga_deadline);
        let reserved_past_deadline = async move {
            let reserved = reserved_rx.await.is_ok();
            deadline.await;
            reserved
        };
        let joined = tokio::select! {
            biased;
            joined = &mut run => joined,
            reserved = reserved_past_deadline => match Arc::clone(&self.detached).try_acquire_owned() {
                Ok(permit) if reserved => {
                    tokio::spawn(async move {
                        if let Ok(Err(error)) = run.await {
                            tracing::warn!(%error, "a saga answered outcome_pending stopped short; a resolver finishes it");
                        }
                        drop(permit);
                    }.instrument(saga_span));
                    self.metrics.sagas_answered_pending(count);
                    let pending = EventResult {
                        result: CreateTransferResult::OutcomePending,
                        timestamp: 0,
                    };
                    return Ok(vec![pending; count]);
                }
                // Stopped before reserving (its error is the answer), or no permit free.
                _ => run.await,
            },
        };
        joined.map_err(|error| {
            PipelineError::Unavailable(format!("the saga task stopped: {error}"))
        })?
    }

    /// The map this gateway routes by now.
    pub fn map(&self) -> ClusterMap {
        self.routing().map.clone()
    }

    /// Routes by `map` (and its `groups`) from now on; calls under way finish under the map
    /// they started with. Refused, keeping the map in use, unless `map` is newer and leaves
    /// every slot where it is (members, addresses and new groups without slots may change).
    pub fn reload(&self, map: ClusterMap, groups: Groups) -> Result<u64, ReloadError> {
        let mut routing = self.routing.write().expect("never poisoned");
        routing.map.check_successor(&map)?;
        let epoch = map.epoch();
        *routing = Arc::new(Routing { map, groups });
        Ok(epoch)
    }

    fn routing(&self) -> Arc<Routing> {
        Arc::clone(&self.routing.read().expect("never poisoned"))
    }

    /// Sends each part of `split` to its group at once (the events moved, not copied; each
    /// group's writer may coalesce them with other callers' parts) and puts the answers into
    /// `merger` at the caller's indexes. `batch_imported`: the caller's first event is
    /// imported (the batch's `imported` rule, wherever that event goes).
    async fn write_parts<E>(
        &self,
        routing: &Routing,
        mut split: Split<E>,
        batch_imported: bool,
        merger: &mut Merger<EventResult<E::Result>>,
    ) -> Result<(), PipelineError>
    where
        E: Routed + Send + 'static,
        E::Result: Send + Clone + 'static,
    {
        debug_assert!(split.cross_group.is_empty());
        // Cheap (each part's first events), and needed whenever a part may not start with
        // the caller's first event: several parts, or sagas taken out of the batch.
        answer_leading_mismatches(&mut split, batch_imported, merger)?;
        if let Some(refusal) = split
            .parts
            .iter()
            .find_map(|part| self.breakers.refusal(part.group))
        {
            return Err(refusal);
        }
        let mut indexes = Vec::with_capacity(split.parts.len());
        let mut calls = Vec::with_capacity(split.parts.len());
        for part in split.parts {
            let group = part.group;
            let connection = routing.groups.group(group);
            indexes.push(part.indexes);
            let call = async move {
                E::writer(connection?)
                    .write(part.events)
                    .await?
                    .map_err(|error| group_failed(group, error))
            };
            calls.push(self.breakers.guard(group, call));
        }
        let answers = try_join_all(calls).await?;
        for (indexes, results) in indexes.iter().zip(answers) {
            merger.put_part(indexes, results).map_err(internal)?;
        }
        Ok(())
    }

    /// [`Self::write_parts`] for a batch that is all single-group parts, answered whole.
    async fn write<E>(
        &self,
        routing: &Routing,
        split: Split<E>,
        batch_imported: bool,
    ) -> CreateResults<E::Result>
    where
        E: Routed + Send + 'static,
        E::Result: Send + Clone + 'static,
    {
        let mut merger = Merger::new(split.events_count).map_err(internal)?;
        self.write_parts(routing, split, batch_imported, &mut merger)
            .await?;
        merger.finish().map_err(internal)
    }

    /// Starts this gateway's resolver: every period it finishes the sagas open longer than
    /// `open_max` in any group of the map in use (see [`Resolver`]). It stops when dropped or
    /// when the gateway is.
    pub fn start_resolver(self: &Arc<Self>, open_max: std::time::Duration) -> Resolver {
        let gateway = Arc::downgrade(self);
        Resolver::start(move || {
            let gateway = gateway.upgrade()?;
            Some(Box::pin(async move {
                let routing = gateway.routing();
                if let Err(error) =
                    saga::resolve_once(&routing.map, &routing.groups, open_max, &gateway.metrics)
                        .await
                {
                    tracing::warn!(%error, "resolving stale sagas failed; trying again next round");
                }
            }))
        })
    }

    /// Sends `ids` to the groups owning them (via `lookup`) and gives back what was found in
    /// the order asked (an id asked twice, found twice), keyed by `id_of`.
    async fn lookup<T, F>(
        &self,
        ids: Vec<u128>,
        id_of: impl Fn(&T) -> u128,
        lookup: F,
    ) -> Result<Vec<T>, PipelineError>
    where
        T: Clone + Send,
        F: Fn(
            &client::Client,
            Vec<u128>,
        ) -> BoxFuture<'static, Result<Vec<T>, client::ClientError>>,
    {
        let routing = self.routing();
        let split = route::split(&routing.map, ids.clone(), |&id| Accounts::One(id))
            .map_err(|error| invalid("ids", error.to_string()))?;
        let calls = split.parts.into_iter().map(|part| {
            let group = part.group;
            let call = routing
                .groups
                .client(group)
                .map(|client| lookup(client, part.events));
            self.breakers.guard(group, async move {
                call?.await.map_err(|error| group_failed(group, error))
            })
        });
        let found: HashMap<u128, T> = try_join_all(calls)
            .await?
            .into_iter()
            .flatten()
            .map(|item| (id_of(&item), item))
            .collect();
        Ok(ids.iter().filter_map(|id| found.get(id).cloned()).collect())
    }

    /// Which of the transfers `created` in their home (`decided`) still have a copy open in
    /// another group they involve: a home's confirmation is the saga's decision, but the
    /// transfer is carried out (visible on both accounts) only once every copy is confirmed,
    /// so until then its outcome is still `pending` — reads after a `created` outcome see it
    /// on both accounts, as reads after a `created` answer do.
    async fn still_open_elsewhere(
        &self,
        decided: Vec<u128>,
    ) -> Result<std::collections::HashSet<u128>, PipelineError> {
        if decided.is_empty() {
            return Ok(Default::default());
        }
        let transfers = LedgerApi::lookup_transfers(self, decided).await?;
        let routing = self.routing();
        let mut elsewhere: std::collections::BTreeMap<GroupId, Vec<u128>> = Default::default();
        for transfer in &transfers {
            let home = routing.map.group_of(transfer.id);
            for account in [transfer.debit_account_id, transfer.credit_account_id] {
                let group = routing.map.group_of(account);
                if group != home {
                    elsewhere.entry(group).or_default().push(transfer.id);
                }
            }
        }
        let calls = elsewhere.into_iter().map(|(group, mut ids)| {
            ids.sort_unstable();
            ids.dedup();
            let client = routing.groups.client(group).cloned();
            async move {
                let outcomes = client?
                    .lookup_outcomes(&ids, Duration::ZERO)
                    .await
                    .map_err(|error| group_failed(group, error))?;
                Ok::<_, PipelineError>(
                    ids.into_iter()
                        .zip(outcomes)
                        .filter(|(_, outcome)| *outcome == TransferOutcome::Pending)
                        .map(|(id, _)| id)
                        .collect::<Vec<u128>>(),
                )
            }
        });
        Ok(try_join_all(calls).await?.into_iter().flatten().collect())
    }

    /// The client of the group owning account `id`.
    /// The client of the group a call for change events names: required, and one of the
    /// map's (refused naming the field and listing the map's groups otherwise).
    pub(crate) fn events_client(
        &self,
        named: Option<GroupId>,
    ) -> Result<(GroupId, client::Client), EventsRefusal> {
        let routing = self.routing();
        let groups = || {
            let ids: Vec<String> = routing
                .map
                .groups()
                .keys()
                .map(ToString::to_string)
                .collect();
            ids.join(", ")
        };
        let Some(group) = named else {
            return Err(EventsRefusal::Invalid {
                field: "group",
                reason: format!(
                    "a gateway serves the events of several groups: name one (group=ID, or fincore-group metadata over gRPC): {}",
                    groups()
                ),
            });
        };
        if !routing.map.groups().contains_key(&group) {
            return Err(EventsRefusal::Invalid {
                field: "group",
                reason: format!(
                    "group {group} is not in this gateway's cluster map; its groups: {}",
                    groups()
                ),
            });
        }
        let client = routing
            .groups
            .client(group)
            .map_err(|error| EventsRefusal::Unavailable(error.to_string()))?;
        Ok((group, client.clone()))
    }

    fn client_of(&self, id: u128) -> Result<(GroupId, client::Client), PipelineError> {
        let routing = self.routing();
        let group = routing.map.group_of(id);
        Ok((group, routing.groups.client(group)?.clone()))
    }
}

fn internal(error: route::RouteError) -> PipelineError {
    PipelineError::Unavailable(format!(
        "the gateway could not merge the groups' answers: {error}"
    ))
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> PipelineError {
    PipelineError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Refuses a batch (`kind`: `accounts` or `transfers`, as the gRPC fields are named) holding an
/// event whose ids live in different groups, or a linked chain (`linked_at(i)`: event `i`
/// links to the next) whose events do.
fn check_single_group<E>(
    split: &Split<E>,
    kind: &str,
    linked_at: impl Fn(usize) -> bool,
) -> Result<(), PipelineError> {
    if let Some(cross) = split.cross_group.first() {
        let groups: Vec<String> = cross.groups.iter().map(ToString::to_string).collect();
        return Err(invalid(
            format!("{kind}[{}]", cross.index),
            format!(
                "its ids live in different groups ({}); events across groups are not served yet. \
                 Keep an event's ids in one slot: mint them with the placement rules of docs/placement.md",
                groups.join(", ")
            ),
        ));
    }
    let mut group_at = vec![None; split.events_count];
    for part in &split.parts {
        for &index in &part.indexes {
            group_at[index as usize] = Some(part.group);
        }
    }
    let mut chain_start = None;
    for index in 0..split.events_count {
        let start = *chain_start.get_or_insert(index);
        if group_at[index] != group_at[start] {
            return Err(invalid(
                format!("{kind}[{index}]"),
                format!(
                    "the linked chain starting at {kind}[{start}] spans groups; a chain must keep its \
                     events' ids in one slot to be applied atomically"
                ),
            ));
        }
        if !linked_at(index) {
            chain_start = None;
        }
    }
    Ok(())
}

/// What the router must know of an event kind to keep the ledger's batch-wide rules when a
/// batch is split: chains and the `imported` flag, and the codes the ledger gives for them.
pub(crate) trait Routed: Sized {
    type Result;
    /// The group's writer of this kind.
    fn writer(group: &Group) -> &GroupWriter<Self>;
    fn linked(&self) -> bool;
    fn imported(&self) -> bool;
    const IMPORTED_EVENT_EXPECTED: Self::Result;
    const IMPORTED_EVENT_NOT_EXPECTED: Self::Result;
    const LINKED_EVENT_FAILED: Self::Result;
    const LINKED_EVENT_CHAIN_OPEN: Self::Result;
}

impl Routed for Account {
    type Result = CreateAccountResult;
    fn writer(group: &Group) -> &GroupWriter<Account> {
        &group.accounts
    }
    fn linked(&self) -> bool {
        self.flags.contains(AccountFlags::LINKED)
    }
    fn imported(&self) -> bool {
        self.flags.contains(AccountFlags::IMPORTED)
    }
    const IMPORTED_EVENT_EXPECTED: CreateAccountResult = CreateAccountResult::ImportedEventExpected;
    const IMPORTED_EVENT_NOT_EXPECTED: CreateAccountResult =
        CreateAccountResult::ImportedEventNotExpected;
    const LINKED_EVENT_FAILED: CreateAccountResult = CreateAccountResult::LinkedEventFailed;
    const LINKED_EVENT_CHAIN_OPEN: CreateAccountResult = CreateAccountResult::LinkedEventChainOpen;
}

impl Routed for Transfer {
    type Result = CreateTransferResult;
    fn writer(group: &Group) -> &GroupWriter<Transfer> {
        &group.transfers
    }
    fn linked(&self) -> bool {
        self.flags.contains(TransferFlags::LINKED)
    }
    fn imported(&self) -> bool {
        self.flags.contains(TransferFlags::IMPORTED)
    }
    const IMPORTED_EVENT_EXPECTED: CreateTransferResult =
        CreateTransferResult::ImportedEventExpected;
    const IMPORTED_EVENT_NOT_EXPECTED: CreateTransferResult =
        CreateTransferResult::ImportedEventNotExpected;
    const LINKED_EVENT_FAILED: CreateTransferResult = CreateTransferResult::LinkedEventFailed;
    const LINKED_EVENT_CHAIN_OPEN: CreateTransferResult =
        CreateTransferResult::LinkedEventChainOpen;
}

/// Keeps the ledger's batch-wide `imported` rule across a split. One node judges every event
/// of a batch by the batch's first event (`batch_imported`): an event flagged otherwise fails
/// `imported_event_expected`/`_not_expected`, and its chain with it. A group would judge its
/// part by the part's own first event instead, so a part that starts with such an event has
/// it answered here, as the ledger would answer it, with the rest of its chain
/// (`linked_event_failed`, or `linked_event_chain_open` for the caller's last event if it
/// links), none of it sent. What remains of the part starts with an event flagged as the batch,
/// so its group judges it as one node would. A refused event's timestamp is 0 here (one node
/// gives the batch's time at the event's place, which no group knows).
fn answer_leading_mismatches<E: Routed>(
    split: &mut Split<E>,
    batch_imported: bool,
    merger: &mut Merger<EventResult<E::Result>>,
) -> Result<(), PipelineError> {
    let last = split.events_count.checked_sub(1).map(|last| last as u32);
    let answer = |merger: &mut Merger<EventResult<E::Result>>, index: u32, result| {
        merger
            .put_one(
                index,
                EventResult {
                    result,
                    timestamp: 0,
                },
            )
            .map_err(internal)
    };
    for part in &mut split.parts {
        let mut taken = 0;
        while taken < part.events.len() && part.events[taken].imported() != batch_imported {
            let first = &part.events[taken];
            let open = |event: &E, index| event.linked() && Some(index) == last;
            let code = if open(first, part.indexes[taken]) {
                E::LINKED_EVENT_CHAIN_OPEN
            } else if first.imported() {
                E::IMPORTED_EVENT_NOT_EXPECTED
            } else {
                E::IMPORTED_EVENT_EXPECTED
            };
            let mut linked = first.linked();
            answer(merger, part.indexes[taken], code)?;
            taken += 1;
            while linked && taken < part.events.len() {
                let (event, index) = (&part.events[taken], part.indexes[taken]);
                let code = if open(event, index) {
                    E::LINKED_EVENT_CHAIN_OPEN
                } else {
                    E::LINKED_EVENT_FAILED
                };
                answer(merger, index, code)?;
                linked = event.linked();
                taken += 1;
            }
        }
        part.events.drain(..taken);
        part.indexes.drain(..taken);
    }
    split.parts.retain(|part| !part.events.is_empty());
    Ok(())
}

fn transfer_ids(transfer: &Transfer) -> Accounts {
    Accounts::Ids([
        transfer.id,
        transfer.debit_account_id,
        transfer.credit_account_id,
        transfer.pending_id,
    ])
}

impl LedgerApi for Gateway {
    fn create_accounts(
        &self,
        events: Vec<Account>,
    ) -> BoxFuture<'_, CreateResults<CreateAccountResult>> {
        Box::pin(async move {
            let linked: Vec<bool> = events
                .iter()
                .map(|a| a.flags.contains(AccountFlags::LINKED))
                .collect();
            let batch_imported = events
                .first()
                .is_some_and(|a| a.flags.contains(AccountFlags::IMPORTED));
            let routing = self.routing();
            let split = route::split(&routing.map, events, |a| Accounts::One(a.id))
                .map_err(|error| invalid("accounts", error.to_string()))?;
            check_single_group(&split, "accounts", |i| linked[i])?;
            self.write(&routing, split, batch_imported).await
        })
    }

    fn create_transfers(
        &self,
        events: Vec<Transfer>,
    ) -> BoxFuture<'_, CreateResults<CreateTransferResult>> {
        Box::pin(async move {
            let linked: Vec<bool> = events
                .iter()
                .map(|t| t.flags.contains(TransferFlags::LINKED))
                .collect();
            let batch_imported = events
                .first()
                .is_some_and(|t| t.flags.contains(TransferFlags::IMPORTED));
            let routing = self.routing();
            let mut split = route::split(&routing.map, events, transfer_ids)
                .map_err(|error| invalid("transfers", error.to_string()))?;
            let (indexes, sagas): (Vec<u32>, Vec<Saga>) = split
                .cross_group
                .extract_if(.., |cross| saga::carried_by_saga(&cross.event))
                .map(|cross| (cross.index, Saga::new(&routing.map, cross.event)))
                .unzip();
            check_single_group(&split, "transfers", |i| linked[i])?;
            if sagas.is_empty() {
                return self.write(&routing, split, batch_imported).await;
            }
            let mut merger = Merger::new(split.events_count).map_err(internal)?;
            self.write_parts(&routing, split, batch_imported, &mut merger)
                .await?;
            if batch_imported {
                // One node judges every event by the batch's first: a saga's transfer is
                // never imported, so it is refused as the ledger would refuse it.
                for index in indexes {
                    let refused = EventResult {
                        result: CreateTransferResult::ImportedEventExpected,
                        timestamp: 0,
                    };
                    merger.put_one(index, refused).map_err(internal)?;
                }
            } else {
                // One node refuses a non-imported event carrying a timestamp before any other
                // check; a saga's steps cannot carry one (each group stamps its copy).
                let (stamped, sagas): (Vec<_>, Vec<_>) = indexes
                    .into_iter()
                    .zip(sagas)
                    .partition(|(_, saga)| saga.transfer.timestamp != 0);
                for (index, _) in stamped {
                    let refused = EventResult {
                        result: CreateTransferResult::TimestampMustBeZero,
                        timestamp: 0,
                    };
                    merger.put_one(index, refused).map_err(internal)?;
                }
                let (indexes, sagas): (Vec<u32>, Vec<Saga>) = sagas.into_iter().unzip();
                if !sagas.is_empty() {
                    let results = self.run_sagas(Arc::clone(&routing), sagas).await?;
                    merger.put_part(&indexes, results).map_err(internal)?;
                }
            }
            merger.finish().map_err(internal)
        })
    }

    fn lookup_accounts(
        &self,
        ids: Vec<u128>,
    ) -> BoxFuture<'_, Result<Vec<Account>, PipelineError>> {
        Box::pin(self.lookup(
            ids,
            |a: &Account| a.id,
            |client, ids| {
                let client = client.clone();
                Box::pin(async move { client.lookup_accounts(&ids).await })
            },
        ))
    }

    fn lookup_transfers(
        &self,
        ids: Vec<u128>,
    ) -> BoxFuture<'_, Result<Vec<Transfer>, PipelineError>> {
        Box::pin(self.lookup(
            ids,
            |t: &Transfer| t.id,
            |client, ids| {
                let client = client.clone();
                Box::pin(async move { client.lookup_transfers(&ids).await })
            },
        ))
    }

    /// Asked of each id's home group, whose copy of a cross-group transfer is its saga's
    /// decision.
    fn transfer_outcomes(
        &self,
        ids: Vec<u128>,
    ) -> BoxFuture<'_, Result<Vec<TransferOutcome>, PipelineError>> {
        Box::pin(async move {
            let asked = ids.len();
            let outcomes = self
                .lookup(
                    ids,
                    |(id, _): &(u128, TransferOutcome)| *id,
                    |client, ids| {
                        let client = client.clone();
                        Box::pin(async move {
                            let outcomes = client.lookup_outcomes(&ids, Duration::ZERO).await?;
                            Ok(ids.into_iter().zip(outcomes).collect())
                        })
                    },
                )
                .await?;
            if outcomes.len() != asked {
                return Err(PipelineError::Unavailable(format!(
                    "the groups gave {} outcomes for {asked} ids",
                    outcomes.len()
                )));
            }
            let decided: Vec<u128> = outcomes
                .iter()
                .filter(|(_, outcome)| matches!(outcome, TransferOutcome::Created { .. }))
                .map(|&(id, _)| id)
                .collect();
            let open = self.still_open_elsewhere(decided).await?;
            Ok(outcomes
                .into_iter()
                .map(|(id, outcome)| {
                    if open.contains(&id) {
                        TransferOutcome::Pending
                    } else {
                        outcome
                    }
                })
                .collect())
        })
    }

    fn get_account_transfers(
        &self,
        filter: AccountFilter,
    ) -> BoxFuture<'_, Result<Vec<Transfer>, PipelineError>> {
        Box::pin(async move {
            filter.validate().map_err(query_invalid)?;
            let (group, client) = self.client_of(filter.account_id)?;
            let call = async move {
                client
                    .get_account_transfers(&filter)
                    .await
                    .map_err(|error| group_failed(group, error))
            };
            self.breakers.guard(group, call).await
        })
    }

    fn get_account_balances(
        &self,
        filter: AccountFilter,
    ) -> BoxFuture<'_, Result<Vec<AccountBalance>, PipelineError>> {
        Box::pin(async move {
            filter.validate().map_err(query_invalid)?;
            let (group, client) = self.client_of(filter.account_id)?;
            let call = async move {
                client
                    .get_account_balances(&filter)
                    .await
                    .map_err(|error| group_failed(group, error))
            };
            self.breakers.guard(group, call).await
        })
    }

    fn failure(&self) -> Option<String> {
        None
    }

    fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
}

fn query_invalid(
    ledger::QueryError::InvalidFilter { field, reason }: ledger::QueryError,
) -> PipelineError {
    invalid(field, reason)
}

/// The gateway's console: every replica of every group asked for its own status at once
/// (each within `CONSOLE_REPLICA_STATUS_TIMEOUT_MS`), and the gateway's own traffic and sagas.
impl server::console::Source for Gateway {
    fn service(&self) -> &'static str {
        "gateway"
    }

    fn front(&self) -> server::console::FrontReading {
        server::console::FrontReading {
            traffic: self.metrics.traffic(),
            sagas_in_flight: Some(self.metrics.sagas_in_flight()),
        }
    }

    fn groups(&self) -> BoxFuture<'_, Vec<server::console::GroupReading>> {
        let routing = self.routing();
        Box::pin(async move {
            let groups = routing.groups.iter().map(|(group, connection)| async move {
                let replicas = connection.members.iter().map(|member| async move {
                    server::console::ReplicaReading {
                        id: member.id,
                        address: member.address.clone(),
                        status: member
                            .client
                            .replica_status()
                            .await
                            .map_err(|error| error.to_string()),
                    }
                });
                server::console::GroupReading {
                    id: group.to_string(),
                    replicas: futures::future::join_all(replicas).await,
                }
            });
            futures::future::join_all(groups).await
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use cluster::{Member, Members};
    use ledger::{Batch, BatchBody, BatchResults, StateMachine};
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn two_groups() -> ClusterMap {
        let member = Member {
            grpc: "a:1".into(),
            http: String::new(),
            peer: "a:2".into(),
        };
        let groups =
            (1..=2u128).map(|n| (GroupId::from_u128(n), Members::from([(1, member.clone())])));
        ClusterMap::new(groups.collect()).unwrap()
    }

    fn apply(state: &mut StateMachine, events: Vec<Account>) -> Vec<CreateAccountResult> {
        match state.apply(&Batch {
            timestamp: 1_000_000,
            body: BatchBody::CreateAccounts(events),
        }) {
            BatchResults::CreateAccounts(results) => results.iter().map(|r| r.result).collect(),
            other => unreachable!("account results expected, got {other:?}"),
        }
    }

    /// A random batch of accounts in two groups with chains (each within one group), mixed
    /// `imported` flags, duplicates and invalid fields; imported timestamps ascend in the
    /// caller's order, so each group's part sees them ascend as one node would.
    fn batch(rng: &mut SmallRng, map: &ClusterMap) -> Vec<Account> {
        let groups: Vec<GroupId> = map.groups().keys().copied().collect();
        let mut events = Vec::new();
        let mut timestamp = 1;
        while events.len() < 40 {
            let group = groups[rng.random_range(0..2)];
            let chain = rng.random_range(1..4);
            for n in 0..chain {
                let id = loop {
                    let id = rng.random_range(1..60u128);
                    if map.group_of(id) == group {
                        break id;
                    }
                };
                let mut flags = AccountFlags::empty();
                flags.set(AccountFlags::LINKED, n + 1 < chain);
                let imported = rng.random_bool(0.3);
                flags.set(AccountFlags::IMPORTED, imported);
                timestamp += 1;
                events.push(Account {
                    id,
                    ledger: rng.random_range(0..3),
                    code: 1,
                    flags,
                    timestamp: if imported { timestamp } else { 0 },
                    ..Default::default()
                });
            }
        }
        // Sometimes leave the last chain open.
        if rng.random_bool(0.2) {
            let last = events.last_mut().unwrap();
            last.flags |= AccountFlags::LINKED;
        }
        events
    }

    #[test]
    fn a_split_batch_gets_the_codes_one_node_gives_it() {
        let map = two_groups();
        let mut rng = SmallRng::seed_from_u64(7);
        // One batch per round on fresh ledgers: imported timestamps are checked against the
        // clock of the group that applies them, which one node shares among all accounts.
        for round in 0..1000 {
            let mut one_node = StateMachine::default();
            let mut groups: BTreeMap<GroupId, StateMachine> = map
                .groups()
                .keys()
                .map(|&g| (g, StateMachine::default()))
                .collect();
            {
                let events = batch(&mut rng, &map);
                let expected = apply(&mut one_node, events.clone());

                let batch_imported = events[0].imported();
                let linked: Vec<bool> = events.iter().map(Routed::linked).collect();
                let mut split = route::split(&map, events, |a| Accounts::One(a.id)).unwrap();
                check_single_group(&split, "accounts", |i| linked[i]).unwrap();
                let mut merger = Merger::new(split.events_count).unwrap();
                answer_leading_mismatches(&mut split, batch_imported, &mut merger).unwrap();
                for part in split.parts {
                    let state = groups.get_mut(&part.group).unwrap();
                    let results = apply(state, part.events)
                        .into_iter()
                        .map(|result| EventResult {
                            result,
                            timestamp: 0,
                        })
                        .collect();
                    merger.put_part(&part.indexes, results).unwrap();
                }
                let got: Vec<CreateAccountResult> =
                    merger.finish().unwrap().iter().map(|r| r.result).collect();
                assert_eq!(got, expected, "round {round}");
            }
        }
    }
}
