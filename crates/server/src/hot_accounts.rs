//! Limits on hot accounts (`flow` rules' `hot_accounts`), where a batch's accounts are known:
//! [`HotLimited`] wraps the [`LedgerApi`] the front ends serve (a node's pipeline, a
//! gateway) and, while a limit is in use, counts the accounts each `create_transfers` batch
//! names (debit and credit) and asks the process's `flow::Gate` to admit them. A refused batch
//! is not applied and is answered retryable (`PipelineError::Limited`: gRPC
//! `RESOURCE_EXHAUSTED` with `retry-after-ms`, HTTP 429 with `Retry-After`), naming the
//! account; a batch naming one account more times than its burst is invalid (it would never
//! pass whole). Counted in `fincore_flow_refusals_total{api="create_transfers",
//! reason="hot_account"}`.
//!
//! Owns only that check; every other call goes straight through. Must not change a result.

use std::sync::Arc;

use futures::future::BoxFuture;
use ledger::{
    Account, AccountBalance, AccountFilter, CreateAccountResult, CreateTransferResult, Transfer,
    TransferOutcome,
};
use telemetry::Metrics;

use crate::ledger_api::{Ledger, LedgerApi};
use crate::pipeline::{CreateResults, PipelineError};

/// A [`LedgerApi`] whose transfers pass the hot-account limit of `gate` first.
pub struct HotLimited {
    inner: Ledger,
    gate: Arc<flow::Gate>,
}

impl HotLimited {
    pub fn wrap(inner: Ledger, gate: Arc<flow::Gate>) -> Ledger {
        Arc::new(HotLimited { inner, gate })
    }

    fn admit(&self, transfers: &[Transfer]) -> Result<(), PipelineError> {
        if !self.gate.limits_accounts() {
            return Ok(());
        }
        let mut counts =
            flow::AccountCounts::with_capacity_and_hasher(transfers.len() * 2, Default::default());
        for transfer in transfers {
            for account in [transfer.debit_account_id, transfer.credit_account_id] {
                // Zero (a post or void names its accounts through `pending_id`) is no account.
                if account != 0 {
                    *counts.entry(account).or_default() += 1;
                }
            }
        }
        self.gate.admit_accounts(&counts).map_err(|refused| {
            self.inner
                .metrics()
                .flow_refused("create_transfers", "hot_account");
            if refused.beyond_burst {
                return PipelineError::Invalid {
                    field: "transfers".into(),
                    reason: format!(
                        "more transfers of the batch name account {} than its hot-account burst allows at once (flow rules' hot_accounts); split the batch",
                        refused.account
                    ),
                };
            }
            PipelineError::Limited {
                message: format!(
                    "flow control refused create_transfers (hot_account): account {} is over its limit of transfers a second; nothing was applied; retry after {} ms",
                    refused.account,
                    refused.retry_after.as_millis().max(1)
                ),
                retry_after: refused.retry_after,
            }
        })
    }
}

impl LedgerApi for HotLimited {
    fn create_accounts(
        &self,
        events: Vec<Account>,
    ) -> BoxFuture<'_, CreateResults<CreateAccountResult>> {
        self.inner.create_accounts(events)
    }

    fn create_transfers(
        &self,
        events: Vec<Transfer>,
    ) -> BoxFuture<'_, CreateResults<CreateTransferResult>> {
        if let Err(refused) = self.admit(&events) {
            return Box::pin(std::future::ready(Err(refused)));
        }
        self.inner.create_transfers(events)
    }

    fn lookup_accounts(
        &self,
        ids: Vec<u128>,
    ) -> BoxFuture<'_, Result<Vec<Account>, PipelineError>> {
        self.inner.lookup_accounts(ids)
    }

    fn lookup_transfers(
        &self,
        ids: Vec<u128>,
    ) -> BoxFuture<'_, Result<Vec<Transfer>, PipelineError>> {
        self.inner.lookup_transfers(ids)
    }

    fn transfer_outcomes(
        &self,
        ids: Vec<u128>,
    ) -> BoxFuture<'_, Result<Vec<TransferOutcome>, PipelineError>> {
        self.inner.transfer_outcomes(ids)
    }

    fn get_account_transfers(
        &self,
        filter: AccountFilter,
    ) -> BoxFuture<'_, Result<Vec<Transfer>, PipelineError>> {
        self.inner.get_account_transfers(filter)
    }

    fn get_account_balances(
        &self,
        filter: AccountFilter,
    ) -> BoxFuture<'_, Result<Vec<AccountBalance>, PipelineError>> {
        self.inner.get_account_balances(filter)
    }

    fn failure(&self) -> Option<String> {
        self.inner.failure()
    }

    fn metrics(&self) -> &Arc<Metrics> {
        self.inner.metrics()
    }
}
