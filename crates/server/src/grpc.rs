//! The gRPC front end: the `fincore.v1.Ledger` service on top of the pipeline.

use std::time::Instant;

use api::convert::{self, WireError};
use api::proto::{self, ledger_server::Ledger};
use tonic::{Request, Response, Status};

use crate::pipeline::{Command, Pipeline, PipelineError, Reply};

/// Largest gRPC message accepted or sent (a full batch of message-encoded events fits easily).
pub use limits::GRPC_MESSAGE_BYTES_MAX;

pub struct LedgerService {
    pipeline: Pipeline,
}

impl LedgerService {
    pub fn new(pipeline: Pipeline) -> LedgerService {
        LedgerService { pipeline }
    }

    async fn run(
        &self,
        operation: &'static str,
        command: Result<Command, WireError>,
    ) -> Result<Reply, Status> {
        let started = Instant::now();
        let outcome = match command {
            Ok(command) => self.pipeline.submit(command).await,
            Err(WireError { field, reason }) => Err(PipelineError::Invalid { field, reason }),
        };
        let error = outcome.as_ref().err().map(PipelineError::kind);
        self.pipeline
            .metrics()
            .request("grpc", operation, started.elapsed(), error);
        outcome.map_err(status)
    }
}

/// Metadata keys that tell a client where the leader is.
pub const LEADER_ID_KEY: &str = "fincore-leader-id";
pub const LEADER_GRPC_KEY: &str = "fincore-leader-grpc";
/// Metadata key naming the limit a refused request would have passed (`transfers_max`, ...).
pub const LIMIT_KEY: &str = "fincore-limit";

fn status(error: PipelineError) -> Status {
    match &error {
        PipelineError::Busy => Status::resource_exhausted(error.to_string()),
        PipelineError::Unavailable(_) => Status::unavailable(error.to_string()),
        PipelineError::Invalid { .. } => Status::invalid_argument(error.to_string()),
        // Not `resource_exhausted`, which clients retry (it means "busy" here): nothing will
        // change until the operator raises the capacity, so the request must not be retried.
        PipelineError::CapacityReached(capacity) => {
            let mut status = Status::failed_precondition(error.to_string());
            status.metadata_mut().insert(
                LIMIT_KEY,
                tonic::metadata::MetadataValue::from_static(capacity.field),
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

fn unexpected(reply: Reply) -> Status {
    Status::internal(format!("the pipeline gave an unexpected reply: {reply:?}"))
}

#[tonic::async_trait]
impl Ledger for LedgerService {
    async fn create_accounts(
        &self,
        request: Request<proto::CreateAccountsRequest>,
    ) -> Result<Response<proto::CreateResponse>, Status> {
        let command =
            convert::accounts_from_request(request.get_ref()).map(Command::CreateAccounts);
        match self.run("create_accounts", command).await? {
            Reply::CreateAccounts(results) => {
                Ok(Response::new(create_response(&results, |r| r.code())))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn create_transfers(
        &self,
        request: Request<proto::CreateTransfersRequest>,
    ) -> Result<Response<proto::CreateResponse>, Status> {
        let command =
            convert::transfers_from_request(request.get_ref()).map(Command::CreateTransfers);
        match self.run("create_transfers", command).await? {
            Reply::CreateTransfers(results) => {
                Ok(Response::new(create_response(&results, |r| r.code())))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn lookup_accounts(
        &self,
        request: Request<proto::LookupRequest>,
    ) -> Result<Response<proto::LookupAccountsResponse>, Status> {
        let command = convert::ids_from(request.get_ref()).map(Command::LookupAccounts);
        match self.run("lookup_accounts", command).await? {
            Reply::Accounts(accounts) => Ok(Response::new(proto::LookupAccountsResponse {
                accounts: accounts.iter().map(convert::account_to).collect(),
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn lookup_transfers(
        &self,
        request: Request<proto::LookupRequest>,
    ) -> Result<Response<proto::LookupTransfersResponse>, Status> {
        let command = convert::ids_from(request.get_ref()).map(Command::LookupTransfers);
        match self.run("lookup_transfers", command).await? {
            Reply::Transfers(transfers) => Ok(Response::new(proto::LookupTransfersResponse {
                transfers: transfers.iter().map(convert::transfer_to).collect(),
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn get_account_transfers(
        &self,
        request: Request<proto::AccountFilter>,
    ) -> Result<Response<proto::AccountTransfersResponse>, Status> {
        let command = convert::filter_from(request.get_ref()).map(Command::GetAccountTransfers);
        match self.run("get_account_transfers", command).await? {
            Reply::Transfers(transfers) => Ok(Response::new(proto::AccountTransfersResponse {
                transfers: transfers.iter().map(convert::transfer_to).collect(),
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn get_account_balances(
        &self,
        request: Request<proto::AccountFilter>,
    ) -> Result<Response<proto::AccountBalancesResponse>, Status> {
        let command = convert::filter_from(request.get_ref()).map(Command::GetAccountBalances);
        match self.run("get_account_balances", command).await? {
            Reply::Balances(balances) => Ok(Response::new(proto::AccountBalancesResponse {
                balances: balances.iter().map(convert::balance_to).collect(),
            })),
            other => Err(unexpected(other)),
        }
    }
}
