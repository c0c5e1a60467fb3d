//! The request pipeline on top of the node's replica.
//!
//! ```text
//! handlers (many tasks) ──try_send──▶ [queue, bounded] ──▶ batcher ──▶ up to N batches in flight
//!        ▲  full: Busy                                     coalesces      through Raft (one entry,
//!        │                                                 queued creates one round, one fsync per
//!        └────────────── oneshot replies ◀──────────────── into a batch   replica, then applied)
//! ```
//!
//! A write is answered only after its batch is stored on a majority and applied here. Reads are
//! linearizable: the leader confirms it still leads and has applied everything committed before
//! the read (read index) and then reads its state. A replica that is not the leader answers
//! `NotLeader` with the leader it knows of, so clients can go there.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ledger::{
    Account, AccountBalance, AccountFilter, BATCH_EVENTS_MAX, BatchBody, BatchResults, Capacity,
    CapacityError, CreateAccountResult, CreateTransferResult, EventResult, Occupancy, Transfer,
};
use replication::{NodeId, PeerNode, Replica, WriteError};
use telemetry::Metrics;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::admission::{Admission, Reservation};

/// Batches in flight through Raft at once; further requests queue (and coalesce) meanwhile.
pub const BATCHES_IN_FLIGHT_MAX: usize = limits::SERVER_BATCHES_IN_FLIGHT_MAX;

/// What a client asks of the ledger.
#[derive(Debug, Clone)]
pub enum Command {
    CreateAccounts(Vec<Account>),
    CreateTransfers(Vec<Transfer>),
    LookupAccounts(Vec<u128>),
    LookupTransfers(Vec<u128>),
    GetAccountTransfers(AccountFilter),
    GetAccountBalances(AccountFilter),
}

impl Command {
    pub fn operation(&self) -> &'static str {
        match self {
            Command::CreateAccounts(_) => "create_accounts",
            Command::CreateTransfers(_) => "create_transfers",
            Command::LookupAccounts(_) => "lookup_accounts",
            Command::LookupTransfers(_) => "lookup_transfers",
            Command::GetAccountTransfers(_) => "get_account_transfers",
            Command::GetAccountBalances(_) => "get_account_balances",
        }
    }

    /// The most objects this write could add to the ledger: one per event (a failed event adds
    /// none, or one burnt transfer id).
    fn occupancy_max(&self) -> Occupancy {
        let (accounts, transfers) = match self {
            Command::CreateAccounts(events) => (events.len(), 0),
            Command::CreateTransfers(events) => (0, events.len()),
            _ => (0, 0),
        };
        Occupancy {
            accounts: accounts as u64,
            transfers: transfers as u64,
        }
    }

    fn create_len(&self) -> Option<usize> {
        match self {
            Command::CreateAccounts(events) => Some(events.len()),
            Command::CreateTransfers(events) => Some(events.len()),
            _ => None,
        }
    }
}

/// The answer to a [`Command`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    CreateAccounts(Vec<EventResult<CreateAccountResult>>),
    CreateTransfers(Vec<EventResult<CreateTransferResult>>),
    Accounts(Vec<Account>),
    Transfers(Vec<Transfer>),
    Balances(Vec<AccountBalance>),
}

/// Why a command was not carried out. Except for `Invalid` and `CapacityReached`, the same
/// command (same ids) may be sent again, here or to the leader named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PipelineError {
    #[error("the node is busy (its request queue is full); retry later with the same ids")]
    Busy,
    #[error("the node is unavailable: {0}; retry with the same ids")]
    Unavailable(String),
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("this node is not the leader{}; send the request there", leader_text(.leader))]
    NotLeader { leader: Option<(NodeId, PeerNode)> },
    /// The write could take the ledger past its declared capacity; nothing was proposed.
    #[error(transparent)]
    CapacityReached(CapacityError),
}

fn leader_text(leader: &Option<(NodeId, PeerNode)>) -> String {
    match leader {
        Some((id, node)) => format!(" (the leader is node {id} at {})", node.grpc),
        None => " (no leader is known yet)".to_string(),
    }
}

impl PipelineError {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            PipelineError::Busy => "busy",
            PipelineError::Unavailable(_) => "unavailable",
            PipelineError::Invalid { .. } => "invalid",
            PipelineError::NotLeader { .. } => "not_leader",
            PipelineError::CapacityReached(_) => "capacity",
        }
    }
}

impl From<WriteError> for PipelineError {
    fn from(error: WriteError) -> PipelineError {
        match error {
            WriteError::NotLeader { leader } => PipelineError::NotLeader { leader },
            WriteError::Unknown { .. } => PipelineError::Unavailable(
                "the leader changed while the batch was in flight; its outcome is unknown".into(),
            ),
            WriteError::Failed(reason) => PipelineError::Unavailable(reason),
        }
    }
}

type Responder = oneshot::Sender<Result<Reply, PipelineError>>;

struct Request {
    command: Command,
    respond: Responder,
}

/// The handle request handlers use. Cheap to clone.
#[derive(Clone)]
pub struct Pipeline {
    sender: mpsc::Sender<Request>,
    replica: Arc<Replica>,
    failed: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
}

/// The batcher task behind a pipeline; awaited at shutdown.
pub struct PipelineTask(JoinHandle<()>);

impl PipelineTask {
    /// Waits until every batch taken in was answered.
    pub async fn join(self) {
        let _ = self.0.await;
    }
}

impl Pipeline {
    /// Starts the batcher. `queue_depth` bounds the writes waiting to be batched; a write
    /// that could take the ledger past `capacity` is refused before it is proposed.
    pub fn start(
        replica: Arc<Replica>,
        queue_depth: usize,
        capacity: Capacity,
        metrics: Arc<Metrics>,
    ) -> (Pipeline, PipelineTask) {
        let (sender, receiver) = mpsc::channel(queue_depth);
        let failed = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(batcher(
            Arc::clone(&replica),
            receiver,
            Admission::new(capacity),
            Arc::clone(&metrics),
        ));
        (
            Pipeline {
                sender,
                replica,
                failed,
                metrics,
            },
            PipelineTask(task),
        )
    }

    /// Runs a command: writes are queued if there is room (else `Busy` at once) and answered
    /// once committed and applied; reads are answered from a linearizable state.
    pub async fn submit(&self, command: Command) -> Result<Reply, PipelineError> {
        if self.has_failed() {
            return Err(PipelineError::Unavailable(
                "it stopped after a storage failure".into(),
            ));
        }
        if command.create_len().is_none() {
            return self.read(command).await;
        }
        let (respond, answer) = oneshot::channel();
        match self.sender.try_send(Request { command, respond }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => return Err(PipelineError::Busy),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Err(PipelineError::Unavailable("it is shutting down".into()));
            }
        }
        self.metrics.queue_depth(
            "requests",
            self.sender.max_capacity() - self.sender.capacity(),
        );
        answer
            .await
            .unwrap_or_else(|_| Err(PipelineError::Unavailable("it is shutting down".into())))
    }

    async fn read(&self, command: Command) -> Result<Reply, PipelineError> {
        self.replica.linearizable().await?;
        let state = self
            .replica
            .state()
            .read()
            .expect("the ledger lock is never poisoned");
        let invalid =
            |ledger::QueryError::InvalidFilter { field, reason }| PipelineError::Invalid {
                field: field.to_string(),
                reason: reason.to_string(),
            };
        Ok(match command {
            Command::LookupAccounts(ids) => Reply::Accounts(state.lookup_accounts(&ids)),
            Command::LookupTransfers(ids) => Reply::Transfers(state.lookup_transfers(&ids)),
            Command::GetAccountTransfers(filter) => {
                Reply::Transfers(state.get_account_transfers(&filter).map_err(invalid)?)
            }
            Command::GetAccountBalances(filter) => {
                Reply::Balances(state.get_account_balances(&filter).map_err(invalid)?)
            }
            Command::CreateAccounts(_) | Command::CreateTransfers(_) => {
                unreachable!("writes are batched")
            }
        })
    }

    /// True once a storage failure stopped the node.
    pub fn has_failed(&self) -> bool {
        if !self.replica.is_running() {
            self.failed.store(true, Ordering::Release);
        }
        self.failed.load(Ordering::Acquire)
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn replica(&self) -> &Arc<Replica> {
        &self.replica
    }
}

fn same_operation(a: &Command, b: &Command) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

/// Takes queued writes, coalesces those of one kind into a batch, and sends it through Raft;
/// at most `BATCHES_IN_FLIGHT_MAX` batches are in flight. Ends when every sender is gone.
async fn batcher(
    replica: Arc<Replica>,
    mut receiver: mpsc::Receiver<Request>,
    admission: Arc<Admission>,
    metrics: Arc<Metrics>,
) {
    let in_flight = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT_MAX));
    let mut carried: Option<Request> = None;
    loop {
        let first = match carried.take() {
            Some(request) => request,
            None => match receiver.recv().await {
                Some(request) => request,
                None => break,
            },
        };
        // Waiting for a free slot is what lets requests pile up and be coalesced under load.
        let permit = Arc::clone(&in_flight)
            .acquire_owned()
            .await
            .expect("never closed");
        let mut total = first.command.create_len().expect("only writes are queued");
        let mut members = vec![first];
        while total < BATCH_EVENTS_MAX {
            match receiver.try_recv() {
                Ok(next) => {
                    let len = next.command.create_len().expect("only writes are queued");
                    if same_operation(&next.command, &members[0].command)
                        && total + len <= BATCH_EVENTS_MAX
                    {
                        total += len;
                        members.push(next);
                    } else {
                        carried = Some(next);
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        let Some((members, total, reservation)) = admit(&admission, &replica, members) else {
            continue;
        };
        metrics.batch(total);
        let replica = Arc::clone(&replica);
        tokio::spawn(async move {
            let accounts = matches!(members[0].command, Command::CreateAccounts(_));
            let mut lens = Vec::with_capacity(members.len());
            let mut responders = Vec::with_capacity(members.len());
            let body = if accounts {
                let mut events = Vec::with_capacity(total);
                for Request { command, respond } in members {
                    let Command::CreateAccounts(mut batch) = command else {
                        unreachable!("one operation per batch")
                    };
                    lens.push(batch.len());
                    responders.push(respond);
                    events.append(&mut batch);
                }
                BatchBody::CreateAccounts(events)
            } else {
                let mut events = Vec::with_capacity(total);
                for Request { command, respond } in members {
                    let Command::CreateTransfers(mut batch) = command else {
                        unreachable!("one operation per batch")
                    };
                    lens.push(batch.len());
                    responders.push(respond);
                    events.append(&mut batch);
                }
                BatchBody::CreateTransfers(events)
            };
            match replica.write(body).await {
                Ok(results) => {
                    for (respond, reply) in
                        responders.into_iter().zip(split_results(results, &lens))
                    {
                        let _ = respond.send(Ok(reply));
                    }
                }
                Err(error) => {
                    let error = PipelineError::from(error);
                    for respond in responders {
                        let _ = respond.send(Err(error.clone()));
                    }
                }
            }
            // Applied here (or failed): the ledger's own counts now include what it added.
            drop(reservation);
            drop(permit);
        });
    }
    // Wait for the batches still in flight.
    let _ = in_flight.acquire_many(BATCHES_IN_FLIGHT_MAX as u32).await;
}

/// Admits the members of a batch against the ledger's capacity, in order, and answers those
/// that could pass it; returns the rest with their event count and reservation (`None` when
/// none is left).
fn admit(
    admission: &Arc<Admission>,
    replica: &Replica,
    members: Vec<Request>,
) -> Option<(Vec<Request>, usize, Reservation)> {
    let held = replica
        .state()
        .read()
        .expect("the ledger lock is never poisoned")
        .occupancy();
    let mut admitted = Vec::with_capacity(members.len());
    let mut total = 0;
    let mut reservation: Option<Reservation> = None;
    for request in members {
        match admission.reserve(held, request.command.occupancy_max()) {
            Ok(more) => {
                match &mut reservation {
                    Some(reservation) => reservation.absorb(more),
                    None => reservation = Some(more),
                }
                total += request
                    .command
                    .create_len()
                    .expect("only writes are queued");
                admitted.push(request);
            }
            Err(error) => {
                let _ = request
                    .respond
                    .send(Err(PipelineError::CapacityReached(error)));
            }
        }
    }
    reservation.map(|reservation| (admitted, total, reservation))
}

fn split_results(results: BatchResults, lens: &[usize]) -> Vec<Reply> {
    let mut replies = Vec::with_capacity(lens.len());
    match results {
        BatchResults::CreateAccounts(results) => {
            let mut rest = results.into_iter();
            for &len in lens {
                replies.push(Reply::CreateAccounts(rest.by_ref().take(len).collect()));
            }
        }
        BatchResults::CreateTransfers(results) => {
            let mut rest = results.into_iter();
            for &len in lens {
                replies.push(Reply::CreateTransfers(rest.by_ref().take(len).collect()));
            }
        }
    }
    replies
}
