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
//! Refused whole, naming the first such event, before anything is sent (nothing changes): an
//! event whose ids live in different groups, and a linked chain spanning groups, since the
//! sagas that would carry them across groups are not built yet.

use std::collections::HashMap;
use std::sync::Arc;

use cluster::route::{self, Accounts, Merger, Split};
use cluster::{ClusterMap, GroupId};
use futures::future::try_join_all;
use ledger::{
    Account, AccountBalance, AccountFilter, AccountFlags, CreateAccountResult,
    CreateTransferResult, EventResult, Transfer, TransferFlags,
};
use server::{CreateResults, LedgerApi, PipelineError};
use telemetry::Metrics;

use crate::groups::{Groups, group_failed};
use futures::future::BoxFuture;

/// A group's answer to a write: one result per event of the part sent.
type ClientResults<R> = Result<Vec<EventResult<R>>, client::ClientError>;

/// The client API over the groups of one cluster map.
pub struct Gateway {
    map: Arc<ClusterMap>,
    groups: Groups,
    metrics: Arc<Metrics>,
}

impl Gateway {
    pub fn new(map: ClusterMap, groups: Groups) -> Gateway {
        Gateway {
            map: Arc::new(map),
            groups,
            metrics: Metrics::new(),
        }
    }

    /// The map this gateway routes by.
    pub fn map(&self) -> &ClusterMap {
        &self.map
    }

    /// Sends each part of `split` to its group at once (the events moved, not copied) and
    /// merges the answers into the caller's order.
    async fn write<E, R, F>(&self, split: Split<E>, send: F) -> CreateResults<R>
    where
        E: Send,
        R: Send,
        F: Fn(client::Client, Vec<E>) -> BoxFuture<'static, ClientResults<R>>,
    {
        debug_assert!(split.cross_group.is_empty());
        let mut indexes = Vec::with_capacity(split.parts.len());
        let mut calls = Vec::with_capacity(split.parts.len());
        for part in split.parts {
            let group = part.group;
            let call = self
                .groups
                .client(group)
                .map(|client| send(client.clone(), part.events));
            indexes.push(part.indexes);
            calls.push(async move { call?.await.map_err(|error| group_failed(group, error)) });
        }
        let answers = try_join_all(calls).await?;
        let mut merger = Merger::new(split.events_count).map_err(internal)?;
        for (indexes, results) in indexes.iter().zip(answers) {
            merger.put_part(indexes, results).map_err(internal)?;
        }
        merger.finish().map_err(internal)
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
        let split = route::split(&self.map, ids.clone(), |&id| Accounts::One(id))
            .map_err(|error| invalid("ids", error.to_string()))?;
        let calls = split.parts.into_iter().map(|part| {
            let group = part.group;
            let call = self
                .groups
                .client(group)
                .map(|client| lookup(client, part.events));
            async move { call?.await.map_err(|error| group_failed(group, error)) }
        });
        let found: HashMap<u128, T> = try_join_all(calls)
            .await?
            .into_iter()
            .flatten()
            .map(|item| (id_of(&item), item))
            .collect();
        Ok(ids.iter().filter_map(|id| found.get(id).cloned()).collect())
    }

    /// The client of the group owning account `id`.
    fn client_of(&self, id: u128) -> Result<(GroupId, &client::Client), PipelineError> {
        let group = self.map.group_of(id);
        Ok((group, self.groups.client(group)?))
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
            let split = route::split(&self.map, events, |a| Accounts::One(a.id))
                .map_err(|error| invalid("accounts", error.to_string()))?;
            check_single_group(&split, "accounts", |i| linked[i])?;
            self.write(split, |client, part| {
                Box::pin(async move { client.create_accounts(&part).await })
            })
            .await
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
            let split = route::split(&self.map, events, transfer_ids)
                .map_err(|error| invalid("transfers", error.to_string()))?;
            check_single_group(&split, "transfers", |i| linked[i])?;
            self.write(split, |client, part| {
                Box::pin(async move { client.create_transfers(&part).await })
            })
            .await
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

    fn get_account_transfers(
        &self,
        filter: AccountFilter,
    ) -> BoxFuture<'_, Result<Vec<Transfer>, PipelineError>> {
        Box::pin(async move {
            filter.validate().map_err(query_invalid)?;
            let (group, client) = self.client_of(filter.account_id)?;
            client
                .get_account_transfers(&filter)
                .await
                .map_err(|error| group_failed(group, error))
        })
    }

    fn get_account_balances(
        &self,
        filter: AccountFilter,
    ) -> BoxFuture<'_, Result<Vec<AccountBalance>, PipelineError>> {
        Box::pin(async move {
            filter.validate().map_err(query_invalid)?;
            let (group, client) = self.client_of(filter.account_id)?;
            client
                .get_account_balances(&filter)
                .await
                .map_err(|error| group_failed(group, error))
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
