//! The gRPC front end: the `fincore.v1.Ledger` service on top of whatever serves the ledger
//! API (a node's pipeline, a gateway's router; see [`crate::ledger_api`]).

use std::time::Instant;

use api::convert::{self, WireError};
use api::proto::{self, ledger_server::Ledger};
use tonic::{Request, Response, Status};

use crate::ledger_api::{Ledger as LedgerBackend, await_outcomes};
use crate::pipeline::PipelineError;

/// Largest gRPC message accepted or sent (a full batch of message-encoded events fits easily).
pub use limits::GRPC_MESSAGE_BYTES_MAX;

pub struct LedgerService {
    ledger: LedgerBackend,
}

impl LedgerService {
    pub fn new(ledger: LedgerBackend) -> LedgerService {
        LedgerService { ledger }
    }

    async fn observed<T>(
        &self,
        operation: &'static str,
        work: impl Future<Output = Result<T, PipelineError>>,
    ) -> Result<Response<T>, Status> {
        observed(self.ledger.metrics(), operation, work).await
    }
}

/// Runs `work` (decoding the request and calling the pipeline), counts it in `metrics` and
/// turns its error into a gRPC status.
async fn observed<T>(
    metrics: &telemetry::Metrics,
    operation: &'static str,
    work: impl Future<Output = Result<T, PipelineError>>,
) -> Result<Response<T>, Status> {
    let started = Instant::now();
    let outcome = work.await;
    let error = outcome.as_ref().err().map(PipelineError::kind);
    metrics.request("grpc", operation, started.elapsed(), error);
    outcome.map(Response::new).map_err(status)
}

/// A request field that does not decode: the request is refused naming it.
fn invalid(WireError { field, reason }: WireError) -> PipelineError {
    PipelineError::Invalid { field, reason }
}

/// Metadata keys that tell a client where the leader is.
pub const LEADER_ID_KEY: &str = "fincore-leader-id";
pub const LEADER_GRPC_KEY: &str = "fincore-leader-grpc";
/// Metadata key naming the limit a refused request would have passed (`transfers_max`, ...).
pub const LIMIT_KEY: &str = "fincore-limit";

pub(crate) fn status(error: PipelineError) -> Status {
    match &error {
        PipelineError::Busy => Status::resource_exhausted(error.to_string()),
        PipelineError::Limited { retry_after, .. } => {
            let mut status = Status::resource_exhausted(error.to_string());
            let millis = u64::try_from(retry_after.as_millis())
                .unwrap_or(u64::MAX)
                .max(1);
            status
                .metadata_mut()
                .insert(crate::flow_front::RETRY_AFTER_MS_KEY, millis.into());
            status
        }
        PipelineError::Unavailable(_) => Status::unavailable(error.to_string()),
        PipelineError::Invalid { .. } => Status::invalid_argument(error.to_string()),
        // Not `resource_exhausted`, which clients retry (it means "busy" here): nothing will
        // change until the operator raises the capacity, so the request must not be retried.
        PipelineError::CapacityReached(ledger::CapacityError { field, .. })
        | PipelineError::GroupCapacityReached { field, .. } => {
            let mut status = Status::failed_precondition(error.to_string());
            status.metadata_mut().insert(
                LIMIT_KEY,
                tonic::metadata::MetadataValue::from_static(field),
            );
            status
        }
        PipelineError::NotLeader { leader } => {
            let mut status = Status::unavailable(error.to_string());
            if let Some((id, node)) = leader {
                let metadata = status.metadata_mut();
                if let Ok(id) = id.to_string().parse() {
                    metadata.insert(LEADER_ID_KEY, id);
                }
                if let Ok(grpc) = node.grpc.parse() {
                    metadata.insert(LEADER_GRPC_KEY, grpc);
                }
            }
            status
        }
    }
}

fn create_response<R: Copy>(
    results: &[ledger::EventResult<R>],
    code: impl Fn(R) -> u32,
) -> proto::CreateResponse {
    proto::CreateResponse {
        results: results.iter().map(|r| code(r.result)).collect(),
        timestamps: results.iter().map(|r| r.timestamp).collect(),
    }
}

#[tonic::async_trait]
impl Ledger for LedgerService {
    async fn create_accounts(
        &self,
        request: Request<proto::CreateAccountsRequest>,
    ) -> Result<Response<proto::CreateResponse>, Status> {
        self.observed("create_accounts", async {
            let events = convert::accounts_from_request(request.get_ref()).map_err(invalid)?;
            let results = self.ledger.create_accounts(events).await?;
            Ok(create_response(&results, |r| r.code()))
        })
        .await
    }

    async fn create_transfers(
        &self,
        request: Request<proto::CreateTransfersRequest>,
    ) -> Result<Response<proto::CreateResponse>, Status> {
        self.observed("create_transfers", async {
            let events = convert::transfers_from_request(request.get_ref()).map_err(invalid)?;
            let results = self.ledger.create_transfers(events).await?;
            Ok(create_response(&results, |r| r.code()))
        })
        .await
    }

    async fn lookup_accounts(
        &self,
        request: Request<proto::LookupRequest>,
    ) -> Result<Response<proto::LookupAccountsResponse>, Status> {
        self.observed("lookup_accounts", async {
            let ids = convert::ids_from(request.get_ref()).map_err(invalid)?;
            let accounts = self.ledger.lookup_accounts(ids).await?;
            Ok(proto::LookupAccountsResponse {
                accounts: accounts.iter().map(convert::account_to).collect(),
            })
        })
        .await
    }

    async fn lookup_transfers(
        &self,
        request: Request<proto::LookupRequest>,
    ) -> Result<Response<proto::LookupTransfersResponse>, Status> {
        self.observed("lookup_transfers", async {
            let ids = convert::ids_from(request.get_ref()).map_err(invalid)?;
            let transfers = self.ledger.lookup_transfers(ids).await?;
            Ok(proto::LookupTransfersResponse {
                transfers: transfers.iter().map(convert::transfer_to).collect(),
            })
        })
        .await
    }

    async fn lookup_outcomes(
        &self,
        request: Request<proto::LookupOutcomesRequest>,
    ) -> Result<Response<proto::LookupOutcomesResponse>, Status> {
        self.observed("lookup_outcomes", async {
            let (ids, wait) = convert::outcomes_request_from(request.get_ref()).map_err(invalid)?;
            let outcomes = await_outcomes(&*self.ledger, ids.clone(), wait).await?;
            Ok(proto::LookupOutcomesResponse {
                outcomes: ids
                    .iter()
                    .zip(outcomes)
                    .map(|(&id, outcome)| convert::outcome_to(id, outcome))
                    .collect(),
            })
        })
        .await
    }

    async fn get_account_transfers(
        &self,
        request: Request<proto::AccountFilter>,
    ) -> Result<Response<proto::AccountTransfersResponse>, Status> {
        self.observed("get_account_transfers", async {
            let filter = convert::filter_from(request.get_ref()).map_err(invalid)?;
            let transfers = self.ledger.get_account_transfers(filter).await?;
            Ok(proto::AccountTransfersResponse {
                transfers: transfers.iter().map(convert::transfer_to).collect(),
            })
        })
        .await
    }

    async fn get_account_balances(
        &self,
        request: Request<proto::AccountFilter>,
    ) -> Result<Response<proto::AccountBalancesResponse>, Status> {
        self.observed("get_account_balances", async {
            let filter = convert::filter_from(request.get_ref()).map_err(invalid)?;
            let balances = self.ledger.get_account_balances(filter).await?;
            Ok(proto::AccountBalancesResponse {
                balances: balances.iter().map(convert::balance_to).collect(),
            })
        })
        .await
    }
}

/// The `fincore.v1.Sagas` service a node serves to gateways (admin role): saga steps applied
/// through the node's pipeline, and its open copies for resolvers. A gateway does not serve
/// it.
pub struct SagasService {
    pipeline: crate::pipeline::Pipeline,
}

impl SagasService {
    pub fn new(pipeline: crate::pipeline::Pipeline) -> SagasService {
        SagasService { pipeline }
    }

    async fn observed<T>(
        &self,
        operation: &'static str,
        work: impl Future<Output = Result<T, PipelineError>>,
    ) -> Result<Response<T>, Status> {
        observed(self.pipeline.metrics(), operation, work).await
    }
}

#[tonic::async_trait]
impl proto::sagas_server::Sagas for SagasService {
    async fn steps(
        &self,
        request: Request<proto::SagaStepsRequest>,
    ) -> Result<Response<proto::CreateResponse>, Status> {
        self.observed("saga_steps", async {
            let steps = convert::saga_steps_from_request(request.get_ref()).map_err(invalid)?;
            let results = self.pipeline.saga_steps(steps).await?;
            Ok(create_response(&results, |r| r.code()))
        })
        .await
    }

    async fn open_copies(
        &self,
        request: Request<proto::OpenSagaCopiesRequest>,
    ) -> Result<Response<proto::SagaCopiesResponse>, Status> {
        self.observed("open_saga_copies", async {
            let request = request.get_ref();
            let limit = request.limit as usize;
            if !(1..=limits::BATCH_EVENTS_MAX).contains(&limit) {
                return Err(PipelineError::Invalid {
                    field: "limit".into(),
                    reason: format!("must be 1 ..= {}", limits::BATCH_EVENTS_MAX),
                });
            }
            let older_than = std::time::Duration::from_millis(request.older_than_ms);
            let copies = self.pipeline.open_saga_copies(older_than, limit).await?;
            Ok(proto::SagaCopiesResponse {
                copies: copies
                    .iter()
                    .map(|(transfer, remote)| convert::saga_copy_to(transfer, *remote))
                    .collect(),
            })
        })
        .await
    }
}

/// The `fincore.v1.Replica` service a node serves (read role): this replica's own view of its
/// group and its process's traffic totals, for consoles. Answered from memory, never waiting
/// for the state's lock nor for the leader; not counted in the request metrics (a console's
/// polling is not traffic). A gateway does not serve it.
pub struct ReplicaService {
    pipeline: crate::pipeline::Pipeline,
}

impl ReplicaService {
    pub fn new(pipeline: crate::pipeline::Pipeline) -> ReplicaService {
        ReplicaService { pipeline }
    }
}

#[tonic::async_trait]
impl proto::replica_server::Replica for ReplicaService {
    async fn status(
        &self,
        _request: Request<proto::ReplicaStatusRequest>,
    ) -> Result<Response<proto::ReplicaStatusReply>, Status> {
        Ok(Response::new(replica_status(&self.pipeline)))
    }
}

/// This replica's own view of its group and its process's traffic totals (the `Replica`
/// service's answer, and a node's console's reading of itself).
pub(crate) fn replica_status(pipeline: &crate::pipeline::Pipeline) -> proto::ReplicaStatusReply {
    let replica = pipeline.replica();
    let sample = replica.raft_sample();
    let open_saga_copies = replica
        .state()
        .try_read()
        .ok()
        .map(|state| state.open_saga_copies_count() as u64);
    let traffic = pipeline.metrics().traffic();
    proto::ReplicaStatusReply {
        id: replica.id(),
        role: sample.role.to_string(),
        term: sample.term,
        leader: sample.leader,
        last_log_index: sample.last_log_index,
        committed_index: sample.committed_index,
        applied_index: sample.applied_index,
        snapshot_index: sample.snapshot_index,
        followers: sample
            .followers
            .iter()
            .map(|follower| proto::FollowerLag {
                id: follower.id,
                lag_entries: follower.lag_entries,
                since_ack_ms: follower
                    .since_ack
                    .map(|since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX)),
            })
            .collect(),
        snapshots_sent: sample.snapshots_sent,
        snapshots_installed: sample.snapshots_installed,
        traffic: Some(proto::TrafficTotals {
            requests: traffic.requests,
            errors: traffic.errors,
            events: traffic.events,
            latency_buckets: traffic.latency_buckets,
        }),
        open_saga_copies,
    }
}
