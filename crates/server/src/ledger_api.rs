//! The ledger's client operations as one object-safe trait, [`LedgerApi`], so that the same
//! front ends (the gRPC service in `grpc`, the HTTP routes in `http`) serve a node, whose
//! [`Pipeline`] implements it, and a gateway, which implements it by routing to many groups.
//!
//! Owns only the trait and the node's implementation (a forwarding one). Must not hold ledger
//! rules or wire formats: callers pass decoded, validated ledger values and get ledger values
//! back, with [`PipelineError`] saying why a call got no answer.

use std::sync::Arc;

use futures::future::BoxFuture;
use ledger::{
    Account, AccountBalance, AccountFilter, CreateAccountResult, CreateTransferResult, Transfer,
    TransferOutcome,
};
use telemetry::Metrics;

use crate::pipeline::{CreateResults, Pipeline, PipelineError};

/// What serves the client API's calls. Every call is answered in full or refused with a
/// [`PipelineError`]; a refused write may still have been applied (resending it with the same
/// ids is safe), which is the contract every implementation keeps.
pub trait LedgerApi: Send + Sync + 'static {
    /// One result per account, in the caller's order.
    fn create_accounts(
        &self,
        events: Vec<Account>,
    ) -> BoxFuture<'_, CreateResults<CreateAccountResult>>;
    /// One result per transfer, in the caller's order.
    fn create_transfers(
        &self,
        events: Vec<Transfer>,
    ) -> BoxFuture<'_, CreateResults<CreateTransferResult>>;
    /// The accounts of `ids` that exist, in the order asked (linearizable).
    fn lookup_accounts(&self, ids: Vec<u128>)
    -> BoxFuture<'_, Result<Vec<Account>, PipelineError>>;
    /// The transfers of `ids` that exist, in the order asked (linearizable).
    fn lookup_transfers(
        &self,
        ids: Vec<u128>,
    ) -> BoxFuture<'_, Result<Vec<Transfer>, PipelineError>>;
    /// Where each transfer id stands now, one per id in the order asked (linearizable; a
    /// gateway asks each id's home group). See [`await_outcomes`] for waiting.
    fn transfer_outcomes(
        &self,
        ids: Vec<u128>,
    ) -> BoxFuture<'_, Result<Vec<TransferOutcome>, PipelineError>>;
    /// The transfers of one account that match `filter`.
    fn get_account_transfers(
        &self,
        filter: AccountFilter,
    ) -> BoxFuture<'_, Result<Vec<Transfer>, PipelineError>>;
    /// The balance history of one account.
    fn get_account_balances(
        &self,
        filter: AccountFilter,
    ) -> BoxFuture<'_, Result<Vec<AccountBalance>, PipelineError>>;
    /// Why this server cannot serve any more (answered by `/healthz` with 503), if it cannot.
    fn failure(&self) -> Option<String>;
    /// This server's metrics (every front end counts its calls there).
    fn metrics(&self) -> &Arc<Metrics>;
}

/// A shared handle on whatever serves the client API.
pub type Ledger = Arc<dyn LedgerApi>;

impl LedgerApi for Pipeline {
    fn create_accounts(
        &self,
        events: Vec<Account>,
    ) -> BoxFuture<'_, CreateResults<CreateAccountResult>> {
        Box::pin(Pipeline::create_accounts(self, events))
    }

    fn create_transfers(
        &self,
        events: Vec<Transfer>,
    ) -> BoxFuture<'_, CreateResults<CreateTransferResult>> {
        Box::pin(Pipeline::create_transfers(self, events))
    }

    fn lookup_accounts(
        &self,
        ids: Vec<u128>,
    ) -> BoxFuture<'_, Result<Vec<Account>, PipelineError>> {
        Box::pin(async move { Pipeline::lookup_accounts(self, &ids).await })
    }

    fn lookup_transfers(
        &self,
        ids: Vec<u128>,
    ) -> BoxFuture<'_, Result<Vec<Transfer>, PipelineError>> {
        Box::pin(async move { Pipeline::lookup_transfers(self, &ids).await })
    }

    fn transfer_outcomes(
        &self,
        ids: Vec<u128>,
    ) -> BoxFuture<'_, Result<Vec<TransferOutcome>, PipelineError>> {
        Box::pin(async move { Pipeline::transfer_outcomes(self, &ids).await })
    }

    fn get_account_transfers(
        &self,
        filter: AccountFilter,
    ) -> BoxFuture<'_, Result<Vec<Transfer>, PipelineError>> {
        Box::pin(async move { Pipeline::get_account_transfers(self, &filter).await })
    }

    fn get_account_balances(
        &self,
        filter: AccountFilter,
    ) -> BoxFuture<'_, Result<Vec<AccountBalance>, PipelineError>> {
        Box::pin(async move { Pipeline::get_account_balances(self, &filter).await })
    }

    fn failure(&self) -> Option<String> {
        self.has_failed()
            .then(|| "a storage failure stopped the node; restart it".to_string())
    }

    fn metrics(&self) -> &Arc<Metrics> {
        Pipeline::metrics(self)
    }
}

/// The outcomes of `ids`, asked again every [`limits::OUTCOME_POLL_MS`] while any is still
/// `pending` and `wait` has not run out: what the front ends answer an outcomes lookup with.
/// The last answer is given as it is when the wait runs out.
pub async fn await_outcomes(
    ledger: &dyn LedgerApi,
    ids: Vec<u128>,
    wait: std::time::Duration,
) -> Result<Vec<TransferOutcome>, PipelineError> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let outcomes = ledger.transfer_outcomes(ids.clone()).await?;
        let now = tokio::time::Instant::now();
        if now >= deadline || !outcomes.contains(&TransferOutcome::Pending) {
            return Ok(outcomes);
        }
        let pause = std::time::Duration::from_millis(limits::OUTCOME_POLL_MS);
        tokio::time::sleep_until((now + pause).min(deadline)).await;
    }
}
