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
//! the read (read index) and then reads its state. Reads are bounded like writes: at most
//! `SERVER_READS_ADMITTED_MAX` admitted (one more is `Busy`), at most `SERVER_READS_RUNNING_MAX`
//! running their query, each on a blocking thread. A replica that is not the leader answers
//! `NotLeader` with the leader it knows of, so clients can go there.
//!
//! Each operation is its own method with its own result type, and a queued write carries the
//! channel for exactly its own results, so no caller ever handles an answer of the wrong kind.
//!
//! Each write records when its batch was proposed, applied and answered; a request whose trace
//! is sampled exports those stages as its own child spans (`telemetry::trace`).
//!
//! Stopping is bounded ([`PipelineTask::stop`]): the writes in flight get a while to commit,
//! then Raft stops, which answers those that could not (a leader cut off from its followers)
//! `Unavailable` with their outcome unknown.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ledger::{
    Account, AccountBalance, AccountFilter, AccountFlags, BATCH_EVENTS_MAX, BatchBody,
    BatchResults, Capacity, CapacityError, CreateAccountResult, CreateTransferResult, EventResult,
    Occupancy, RemoteSides, SagaStep, StateMachine, Transfer, TransferFlags, TransferOutcome,
};
use replication::{NodeId, PeerNode, Replica, WriteError};
use telemetry::{ErrorKind, Metrics};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::admission::{Admission, Reservation};

/// Batches in flight through Raft at once; further requests queue (and coalesce) meanwhile.
pub const BATCHES_IN_FLIGHT_MAX: usize = limits::SERVER_BATCHES_IN_FLIGHT_MAX;

/// Why a request was not carried out. Except for `Invalid` and `CapacityReached`, the same
/// request (same ids) may be sent again, here or to the leader named.
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
    /// A group behind a gateway refused the write for its capacity (`field` names the limit,
    /// `message` is the group's): nothing of that group's part was applied.
    #[error("{message}")]
    GroupCapacityReached {
        field: &'static str,
        message: String,
    },
    /// Flow control refused the request after reading it (a hot account over its limit):
    /// nothing was applied; the same request may be sent again after `retry_after`.
    #[error("{message}")]
    Limited {
        message: String,
        retry_after: std::time::Duration,
    },
}

fn leader_text(leader: &Option<(NodeId, PeerNode)>) -> String {
    match leader {
        Some((id, node)) => format!(" (the leader is node {id} at {})", node.grpc),
        None => " (no leader is known yet)".to_string(),
    }
}

impl PipelineError {
    /// What the metrics count it as.
    pub fn kind(&self) -> ErrorKind {
        match self {
            PipelineError::Busy | PipelineError::Limited { .. } => ErrorKind::Busy,
            PipelineError::Unavailable(_) => ErrorKind::Unavailable,
            PipelineError::Invalid { .. } => ErrorKind::Invalid,
            PipelineError::NotLeader { .. } => ErrorKind::NotLeader,
            PipelineError::CapacityReached(_) | PipelineError::GroupCapacityReached { .. } => {
                ErrorKind::Capacity
            }
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

fn invalid(
    ledger::QueryError::InvalidFilter { field, reason }: ledger::QueryError,
) -> PipelineError {
    PipelineError::Invalid {
        field: field.to_string(),
        reason: reason.to_string(),
    }
}

/// The answer to a create request: one result per event, in the order sent.
pub type CreateResults<R> = Result<Vec<EventResult<R>>, PipelineError>;

/// One create request waiting to be batched, with the channel its own results go back on.
struct Pending<E: Event> {
    events: Vec<E>,
    respond: oneshot::Sender<Answer<E::Result>>,
}

/// What a queued write is answered: its results and, once its batch committed, the batch's
/// stages for the request's trace.
struct Answer<R> {
    results: CreateResults<R>,
    batch: Option<BatchTrace>,
}

impl<R> Answer<R> {
    fn refused(error: PipelineError) -> Answer<R> {
        Answer {
            results: Err(error),
            batch: None,
        }
    }
}

/// When one batch passed each stage, shared by the requests it served; each sampled request
/// exports its own copy as child spans (`telemetry::trace::record_stages`).
#[derive(Debug, Clone, Copy)]
struct BatchTrace {
    /// Handed to Raft.
    proposed: Instant,
    /// Applied on this replica (start, end), after a majority stored it.
    applied: Option<(Instant, Instant)>,
    /// Raft answered the write.
    committed: Instant,
    log_index: u64,
    events: usize,
    requests: usize,
}

impl BatchTrace {
    /// Exports the stages of a request queued at `queued` and answered now.
    fn record(&self, queued: Instant) {
        use telemetry::trace::Stage;
        let applied = self.applied.unwrap_or((self.committed, self.committed));
        let stages = [
            Stage {
                name: "ledger.queue",
                start: queued,
                end: self.proposed,
            },
            Stage {
                name: "ledger.replicate",
                start: self.proposed,
                end: applied.0,
            },
            Stage {
                name: "ledger.apply",
                start: applied.0,
                end: applied.1,
            },
            Stage {
                name: "ledger.reply",
                start: applied.1,
                end: Instant::now(),
            },
        ];
        telemetry::trace::record_stages(
            &stages,
            &[
                ("log_index", self.log_index as i64),
                ("batch_events", self.events as i64),
                ("batch_requests", self.requests as i64),
            ],
        );
    }
}

/// What the request queue holds: create requests of either kind.
enum Queued {
    Accounts(Pending<Account>),
    Transfers(Pending<Transfer>),
    SagaSteps(Pending<SagaStep>),
}

impl Queued {
    fn events_count(&self) -> usize {
        match self {
            Queued::Accounts(pending) => pending.events.len(),
            Queued::Transfers(pending) => pending.events.len(),
            Queued::SagaSteps(pending) => pending.events.len(),
        }
    }
}

/// The kinds of event a batch is made of: each knows its queue entry, its batch body and its
/// results.
trait Event: Sized + Send + 'static {
    type Result: Send + 'static;
    fn queued(pending: Pending<Self>) -> Queued;
    fn body(events: Vec<Self>) -> BatchBody;
    /// The most objects `count` events of this kind could add to the ledger (a failed event
    /// adds none, or one burnt transfer id).
    fn occupancy_max(count: usize) -> Occupancy;
    /// The results of a batch of this kind (a batch is always answered in its own kind).
    fn results(results: BatchResults) -> Vec<EventResult<Self::Result>>;
    /// True if this event links to the next one (a linked chain goes on).
    fn linked(&self) -> bool;
    /// True if this event carries its own timestamp (`imported`): the ledger judges a whole
    /// batch by its first event's flag.
    fn imported(&self) -> bool;
}

/// Whether request `next` may join the requests `members` in one batch without changing any
/// request's results: never after a request whose last event leaves a chain open (the chain
/// would take in `next`'s events, where alone it answers `linked_event_chain_open`), and only
/// when its first event is imported exactly when the batch's is (the ledger judges every
/// event against the batch's first).
fn joins<E: Event>(members: &[Pending<E>], next: &Pending<E>) -> bool {
    let leaves_chain_open = members
        .last()
        .and_then(|member| member.events.last())
        .is_some_and(E::linked);
    let imported = |pending: &Pending<E>| pending.events.first().is_some_and(E::imported);
    !leaves_chain_open && members.first().map(imported) == Some(imported(next))
}

impl Event for Account {
    type Result = CreateAccountResult;

    fn queued(pending: Pending<Account>) -> Queued {
        Queued::Accounts(pending)
    }

    fn body(events: Vec<Account>) -> BatchBody {
        BatchBody::CreateAccounts(events)
    }

    fn occupancy_max(count: usize) -> Occupancy {
        Occupancy {
            accounts: count as u64,
            transfers: 0,
        }
    }

    fn results(results: BatchResults) -> Vec<EventResult<CreateAccountResult>> {
        match results {
            BatchResults::CreateAccounts(results) => results,
            BatchResults::CreateTransfers(_) | BatchResults::SagaSteps(_) => {
                unreachable!("the ledger answers a batch of accounts with account results")
            }
        }
    }

    fn linked(&self) -> bool {
        self.flags.contains(AccountFlags::LINKED)
    }

    fn imported(&self) -> bool {
        self.flags.contains(AccountFlags::IMPORTED)
    }
}

impl Event for Transfer {
    type Result = CreateTransferResult;

    fn queued(pending: Pending<Transfer>) -> Queued {
        Queued::Transfers(pending)
    }

    fn body(events: Vec<Transfer>) -> BatchBody {
        BatchBody::CreateTransfers(events)
    }

    fn occupancy_max(count: usize) -> Occupancy {
        Occupancy {
            accounts: 0,
            transfers: count as u64,
        }
    }

    fn results(results: BatchResults) -> Vec<EventResult<CreateTransferResult>> {
        match results {
            BatchResults::CreateTransfers(results) => results,
            BatchResults::CreateAccounts(_) | BatchResults::SagaSteps(_) => {
                unreachable!("the ledger answers a batch of transfers with transfer results")
            }
        }
    }

    fn linked(&self) -> bool {
        self.flags.contains(TransferFlags::LINKED)
    }

    fn imported(&self) -> bool {
        self.flags.contains(TransferFlags::IMPORTED)
    }
}

impl Event for SagaStep {
    type Result = CreateTransferResult;

    fn queued(pending: Pending<SagaStep>) -> Queued {
        Queued::SagaSteps(pending)
    }

    fn body(events: Vec<SagaStep>) -> BatchBody {
        BatchBody::SagaSteps(events)
    }

    /// A reservation adds one transfer (its copy); a settlement adds none.
    fn occupancy_max(count: usize) -> Occupancy {
        Occupancy {
            accounts: 0,
            transfers: count as u64,
        }
    }

    fn results(results: BatchResults) -> Vec<EventResult<CreateTransferResult>> {
        match results {
            BatchResults::SagaSteps(results) => results,
            BatchResults::CreateAccounts(_) | BatchResults::CreateTransfers(_) => {
                unreachable!("the ledger answers a batch of saga steps with saga results")
            }
        }
    }

    fn linked(&self) -> bool {
        SagaStep::linked(self)
    }

    fn imported(&self) -> bool {
        false
    }
}

/// The handle request handlers use. Cheap to clone.
#[derive(Clone)]
pub struct Pipeline {
    sender: mpsc::Sender<Queued>,
    /// Reads admitted (waiting for their read index or running).
    reads_admitted: Arc<Semaphore>,
    /// Admitted reads running their query.
    reads_running: Arc<Semaphore>,
    replica: Arc<Replica>,
    failed: Arc<AtomicBool>,
    /// Set when [`PipelineTask::stop`] stops Raft: what fails after that is the stop, not a
    /// storage failure.
    stopping: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
}

/// The batcher task behind a pipeline and the replica it writes through; stopped at shutdown.
pub struct PipelineTask {
    task: JoinHandle<()>,
    /// Tells the batcher to take no new writes (dropping it does too).
    close: oneshot::Sender<()>,
    replica: Arc<Replica>,
    stopping: Arc<AtomicBool>,
}

impl PipelineTask {
    /// Closes the queue (new writes are answered "shutting down", even from handlers that
    /// still hold a [`Pipeline`]), waits until every write already queued or in flight was
    /// answered, for at most `writes_wait`, then stops Raft. A write still in flight by then cannot commit (a leader cut off from its
    /// followers waits for them forever): stopping Raft answers it `Unavailable`, its outcome
    /// unknown to its client, which retries with the same ids (and is told `exists` for what
    /// was applied after all). Nothing acknowledged is affected: an answer is given only after
    /// the batch was stored on a majority and applied.
    pub async fn stop(mut self, writes_wait: Duration) {
        let _ = self.close.send(());
        if tokio::time::timeout(writes_wait, &mut self.task)
            .await
            .is_err()
        {
            tracing::warn!(
                seconds = writes_wait.as_secs(),
                "writes still in flight after the shutdown wait; stopping Raft answers them \
                 unavailable (outcome unknown)"
            );
            self.stopping.store(true, Ordering::Release);
            self.replica.shutdown().await;
            let _ = self.task.await;
        }
        self.stopping.store(true, Ordering::Release);
        self.replica.shutdown().await;
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
        let stopping = Arc::new(AtomicBool::new(false));
        let (close, closing) = oneshot::channel();
        let task = tokio::spawn(batcher(
            Arc::clone(&replica),
            receiver,
            closing,
            Admission::new(capacity),
            Arc::clone(&stopping),
            Arc::clone(&metrics),
        ));
        (
            Pipeline {
                sender,
                reads_admitted: Arc::new(Semaphore::new(limits::SERVER_READS_ADMITTED_MAX)),
                reads_running: Arc::new(Semaphore::new(limits::SERVER_READS_RUNNING_MAX)),
                replica: Arc::clone(&replica),
                failed,
                stopping: Arc::clone(&stopping),
                metrics,
            },
            PipelineTask {
                task,
                close,
                replica,
                stopping,
            },
        )
    }

    /// Creates accounts: queued if there is room (else `Busy` at once), answered once
    /// committed and applied.
    pub async fn create_accounts(
        &self,
        events: Vec<Account>,
    ) -> CreateResults<CreateAccountResult> {
        self.write(events).await
    }

    /// Creates transfers: queued if there is room (else `Busy` at once), answered once
    /// committed and applied.
    pub async fn create_transfers(
        &self,
        events: Vec<Transfer>,
    ) -> CreateResults<CreateTransferResult> {
        self.write(events).await
    }

    /// Applies saga steps (a gateway's; see `ledger`'s saga module): queued if there is room
    /// (else `Busy` at once), answered once committed and applied.
    pub async fn saga_steps(&self, steps: Vec<SagaStep>) -> CreateResults<CreateTransferResult> {
        self.write(steps).await
    }

    /// Open saga copies reserved at least `older_than` ago by this node's clock, oldest first,
    /// at most `limit`.
    pub async fn open_saga_copies(
        &self,
        older_than: std::time::Duration,
        limit: usize,
    ) -> Result<Vec<(Transfer, RemoteSides)>, PipelineError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let before = now.saturating_sub(u64::try_from(older_than.as_nanos()).unwrap_or(u64::MAX));
        self.read(move |state| Ok(state.open_saga_copies(before, limit)))
            .await
    }

    /// The accounts of `ids` that exist, in the order asked.
    pub async fn lookup_accounts(&self, ids: &[u128]) -> Result<Vec<Account>, PipelineError> {
        let ids = ids.to_vec();
        self.read(move |state| Ok(state.lookup_accounts(&ids)))
            .await
    }

    /// The transfers of `ids` that exist, in the order asked.
    pub async fn lookup_transfers(&self, ids: &[u128]) -> Result<Vec<Transfer>, PipelineError> {
        let ids = ids.to_vec();
        self.read(move |state| Ok(state.lookup_transfers(&ids)))
            .await
    }

    /// Where each of `ids` stands (see `StateMachine::transfer_outcomes`).
    pub async fn transfer_outcomes(
        &self,
        ids: &[u128],
    ) -> Result<Vec<TransferOutcome>, PipelineError> {
        let ids = ids.to_vec();
        self.read(move |state| Ok(state.transfer_outcomes(&ids)))
            .await
    }

    /// The transfers of an account that match `filter`.
    pub async fn get_account_transfers(
        &self,
        filter: &AccountFilter,
    ) -> Result<Vec<Transfer>, PipelineError> {
        let filter = *filter;
        self.read(move |state| state.get_account_transfers(&filter).map_err(invalid))
            .await
    }

    /// The balance history of an account (kept for accounts with the `history` flag).
    pub async fn get_account_balances(
        &self,
        filter: &AccountFilter,
    ) -> Result<Vec<AccountBalance>, PipelineError> {
        let filter = *filter;
        self.read(move |state| state.get_account_balances(&filter).map_err(invalid))
            .await
    }

    fn refuse_if_failed(&self) -> Result<(), PipelineError> {
        if self.stopping.load(Ordering::Acquire) {
            return Err(PipelineError::Unavailable("it is shutting down".into()));
        }
        if self.has_failed() {
            return Err(PipelineError::Unavailable(
                "it stopped after a storage failure".into(),
            ));
        }
        Ok(())
    }

    async fn write<E: Event>(&self, events: Vec<E>) -> CreateResults<E::Result> {
        self.refuse_if_failed()?;
        let queued = Instant::now();
        let (respond, answer) = oneshot::channel();
        match self.sender.try_send(E::queued(Pending { events, respond })) {
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
        let answer = answer.await.unwrap_or_else(|_| {
            Answer::refused(PipelineError::Unavailable("it is shutting down".into()))
        });
        if let Some(batch) = answer.batch {
            batch.record(queued);
        }
        answer.results
    }

    /// Runs `query` on a linearizable state: after this replica confirmed it leads and applied
    /// everything committed before the call. `Busy` at once when `SERVER_READS_ADMITTED_MAX`
    /// reads are already admitted; the query runs on a blocking thread, at most
    /// `SERVER_READS_RUNNING_MAX` at a time.
    async fn read<T: Send + 'static>(
        &self,
        query: impl FnOnce(&StateMachine) -> Result<T, PipelineError> + Send + 'static,
    ) -> Result<T, PipelineError> {
        self.refuse_if_failed()?;
        let Ok(_admitted) = self.reads_admitted.try_acquire() else {
            return Err(PipelineError::Busy);
        };
        self.replica.linearizable().await?;
        let _running = self
            .reads_running
            .acquire()
            .await
            .map_err(|_| PipelineError::Unavailable("it is shutting down".into()))?;
        let replica = Arc::clone(&self.replica);
        tokio::task::spawn_blocking(move || {
            let state = replica
                .state()
                .read()
                .expect("the ledger lock is never poisoned");
            query(&state)
        })
        .await
        .unwrap_or_else(|error| {
            if error.is_panic() {
                std::panic::resume_unwind(error.into_panic());
            }
            Err(PipelineError::Unavailable("it is shutting down".into()))
        })
    }

    /// True once a storage failure stopped the node.
    pub fn has_failed(&self) -> bool {
        if !self.replica.is_running() && !self.stopping.load(Ordering::Acquire) {
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

/// Queued requests of one kind, coalesced into one batch.
enum Coalesced {
    Accounts(Vec<Pending<Account>>),
    Transfers(Vec<Pending<Transfer>>),
    SagaSteps(Vec<Pending<SagaStep>>),
}

impl Coalesced {
    fn new(first: Queued) -> Coalesced {
        match first {
            Queued::Accounts(pending) => Coalesced::Accounts(vec![pending]),
            Queued::Transfers(pending) => Coalesced::Transfers(vec![pending]),
            Queued::SagaSteps(pending) => Coalesced::SagaSteps(vec![pending]),
        }
    }

    /// Adds `next` when it is of this batch's kind and [`joins`] it; gives it back otherwise
    /// (it starts the next batch).
    fn push(&mut self, next: Queued) -> Result<(), Queued> {
        match (self, next) {
            (Coalesced::Accounts(members), Queued::Accounts(pending))
                if joins(members, &pending) =>
            {
                members.push(pending)
            }
            (Coalesced::Transfers(members), Queued::Transfers(pending))
                if joins(members, &pending) =>
            {
                members.push(pending)
            }
            (Coalesced::SagaSteps(members), Queued::SagaSteps(pending))
                if joins(members, &pending) =>
            {
                members.push(pending)
            }
            (_, other) => return Err(other),
        }
        Ok(())
    }

    /// Answers every member `error`.
    fn refuse(self, error: &PipelineError) {
        fn refuse_all<E: Event>(members: Vec<Pending<E>>, error: &PipelineError) {
            for pending in members {
                let _ = pending.respond.send(Answer::refused(error.clone()));
            }
        }
        match self {
            Coalesced::Accounts(members) => refuse_all(members, error),
            Coalesced::Transfers(members) => refuse_all(members, error),
            Coalesced::SagaSteps(members) => refuse_all(members, error),
        }
    }

    /// Admits the members against the ledger's capacity, in order, and refuses those that
    /// could not pass it; what is left, its event count and its reservation (`None` when
    /// nothing is left).
    fn admit(
        self,
        admission: &Arc<Admission>,
        replica: &Replica,
    ) -> Option<(Coalesced, usize, Reservation)> {
        let held = replica
            .state()
            .read()
            .expect("the ledger lock is never poisoned")
            .occupancy();
        match self {
            Coalesced::Accounts(members) => admit(admission, held, members)
                .map(|(members, total, reserved)| (Coalesced::Accounts(members), total, reserved)),
            Coalesced::Transfers(members) => admit(admission, held, members)
                .map(|(members, total, reserved)| (Coalesced::Transfers(members), total, reserved)),
            Coalesced::SagaSteps(members) => admit(admission, held, members)
                .map(|(members, total, reserved)| (Coalesced::SagaSteps(members), total, reserved)),
        }
    }

    /// Whether the batch committed.
    async fn commit(self, replica: &Replica, events_count: usize, stopping: &AtomicBool) -> bool {
        match self {
            Coalesced::Accounts(members) => commit(replica, members, events_count, stopping).await,
            Coalesced::Transfers(members) => commit(replica, members, events_count, stopping).await,
            Coalesced::SagaSteps(members) => commit(replica, members, events_count, stopping).await,
        }
    }
}

/// Reserves room for each member in turn; a member that does not fit is answered
/// `CapacityReached` at once.
fn admit<E: Event>(
    admission: &Arc<Admission>,
    held: Occupancy,
    members: Vec<Pending<E>>,
) -> Option<(Vec<Pending<E>>, usize, Reservation)> {
    let mut admitted = Vec::with_capacity(members.len());
    let mut total = 0;
    let mut reservation: Option<Reservation> = None;
    for pending in members {
        match admission.reserve(held, E::occupancy_max(pending.events.len())) {
            Ok(more) => {
                match &mut reservation {
                    Some(reservation) => reservation.absorb(more),
                    None => reservation = Some(more),
                }
                total += pending.events.len();
                admitted.push(pending);
            }
            Err(error) => {
                let _ = pending
                    .respond
                    .send(Answer::refused(PipelineError::CapacityReached(error)));
            }
        }
    }
    reservation.map(|reservation| (admitted, total, reservation))
}

/// Takes queued writes, coalesces those of one kind into a batch, and sends it through Raft;
/// at most `BATCHES_IN_FLIGHT_MAX` batches are in flight. Ends when every sender is gone or
/// once told to close (then only after the writes already queued).
async fn batcher(
    replica: Arc<Replica>,
    mut receiver: mpsc::Receiver<Queued>,
    mut closing: oneshot::Receiver<()>,
    admission: Arc<Admission>,
    stopping: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
) {
    let in_flight = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT_MAX));
    let mut carried: Option<Queued> = None;
    let mut closed = false;
    loop {
        let first = match carried.take() {
            Some(queued) => queued,
            None => tokio::select! {
                queued = receiver.recv() => match queued {
                    Some(queued) => queued,
                    None => break,
                },
                // Shutting down: no new writes; what is queued is still batched and answered,
                // then `recv` ends the loop.
                _ = &mut closing, if !closed => {
                    receiver.close();
                    closed = true;
                    continue;
                }
            },
        };
        // Waiting for a free slot is what lets requests pile up and be coalesced under load.
        let permit = Arc::clone(&in_flight)
            .acquire_owned()
            .await
            .expect("never closed");
        let mut total = first.events_count();
        let mut batch = Coalesced::new(first);
        while total < BATCH_EVENTS_MAX {
            match receiver.try_recv() {
                Ok(next) => {
                    let len = next.events_count();
                    if total + len > BATCH_EVENTS_MAX {
                        carried = Some(next);
                        break;
                    }
                    match batch.push(next) {
                        Ok(()) => total += len,
                        Err(other_kind) => {
                            carried = Some(other_kind);
                            break;
                        }
                    }
                }
                Err(_) => break,
            }
        }
        // A replica that is not the leader answers at once, naming the leader it knows, without
        // reading the state: a snapshot install may hold the state's write lock for seconds,
        // and this task runs on a runtime worker. (Leadership may still move before the commit,
        // which then answers the same way.)
        if let Some(leader) = not_leader(&replica) {
            batch.refuse(&PipelineError::NotLeader { leader });
            continue;
        }
        let Some((batch, total, reservation)) = batch.admit(&admission, &replica) else {
            continue;
        };
        metrics.batch(total);
        let (replica, stopping) = (Arc::clone(&replica), Arc::clone(&stopping));
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            if batch.commit(&replica, total, &stopping).await {
                metrics.events_committed(total);
            }
            // Applied here (or failed): the ledger's own counts now include what it added.
            drop(reservation);
            drop(permit);
        });
    }
    // Wait for the batches still in flight.
    let _ = in_flight.acquire_many(BATCHES_IN_FLIGHT_MAX as u32).await;
}

/// `None` if this replica is the leader; otherwise the leader it knows of, if any.
fn not_leader(replica: &Replica) -> Option<Option<(NodeId, PeerNode)>> {
    match replica.leader() {
        Some((leader, _)) if leader == replica.id() => None,
        other => Some(other),
    }
}

/// Commits one batch made of `members` and answers each its own share of the results.
async fn commit<E: Event>(
    replica: &Replica,
    members: Vec<Pending<E>>,
    events_count: usize,
    stopping: &AtomicBool,
) -> bool {
    let mut events = Vec::with_capacity(events_count);
    let mut answers = Vec::with_capacity(members.len());
    for Pending {
        events: mut more,
        respond,
    } in members
    {
        answers.push((more.len(), respond));
        events.append(&mut more);
    }
    debug_assert_eq!(events.len(), events_count);
    let proposed = Instant::now();
    match replica.write_traced(E::body(events)).await {
        Ok(written) => {
            let batch = BatchTrace {
                proposed,
                applied: written.applied.0,
                committed: Instant::now(),
                log_index: written.log_index,
                events: events_count,
                requests: answers.len(),
            };
            let mut results = E::results(written.results).into_iter();
            for (len, respond) in answers {
                let _ = respond.send(Answer {
                    results: Ok(results.by_ref().take(len).collect()),
                    batch: Some(batch),
                });
            }
            true
        }
        Err(_) if stopping.load(Ordering::Acquire) => {
            let error = PipelineError::Unavailable(
                "it stopped before the batch committed; the batch's outcome is unknown".into(),
            );
            for (_, respond) in answers {
                let _ = respond.send(Answer::refused(error.clone()));
            }
            false
        }
        Err(error) => {
            let error = PipelineError::from(error);
            for (_, respond) in answers {
                let _ = respond.send(Answer::refused(error.clone()));
            }
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::time::{Duration, Instant};

    /// A pipeline on a group of one, elected.
    async fn pipeline(dir: &std::path::Path) -> (Pipeline, PipelineTask) {
        let replica = Replica::open(1, dir, &replication::ReplicaConfig::default())
            .await
            .unwrap();
        let members = BTreeMap::from([(
            1,
            PeerNode {
                grpc: "127.0.0.1:1".into(),
                http: String::new(),
                peer: "127.0.0.1:2".into(),
            },
        )]);
        replica.initialize(&members).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while replica.leader().is_none() {
            assert!(
                Instant::now() < deadline,
                "the group of one never elected itself"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Pipeline::start(Arc::new(replica), 16, Capacity::FORMAT_MAX, Metrics::new())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_beyond_the_admitted_limit_is_busy_and_reads_run_again_once_one_ends() {
        let dir = tempfile::tempdir().unwrap();
        let (pipeline, task) = pipeline(dir.path()).await;
        let account = Account {
            id: 7,
            ledger: 1,
            code: 1,
            ..Default::default()
        };
        pipeline.create_accounts(vec![account]).await.unwrap();
        assert_eq!(pipeline.lookup_accounts(&[7]).await.unwrap()[0].id, 7);

        // Every admission taken (as by that many reads in flight): the next read is busy.
        let held = pipeline
            .reads_admitted
            .try_acquire_many(limits::SERVER_READS_ADMITTED_MAX as u32)
            .unwrap();
        assert!(matches!(
            pipeline.lookup_accounts(&[7]).await,
            Err(PipelineError::Busy)
        ));
        assert!(matches!(
            pipeline.lookup_transfers(&[1]).await,
            Err(PipelineError::Busy)
        ));
        drop(held);
        assert_eq!(pipeline.lookup_accounts(&[7]).await.unwrap()[0].id, 7);
        assert_eq!(
            pipeline.reads_admitted.available_permits(),
            limits::SERVER_READS_ADMITTED_MAX
        );
        drop(pipeline);
        task.stop(Duration::from_secs(1)).await;
    }

    /// Requests queued together are coalesced into one batch (on this current-thread runtime
    /// both are queued before the batcher runs), yet each gets the results it would get alone:
    /// a chain left open by one does not take in the next one's events, and one whose first
    /// event is imported does not share a batch with one whose first is not.
    #[tokio::test]
    async fn coalesced_requests_get_the_results_each_would_get_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (pipeline, task) = pipeline(dir.path()).await;
        let accounts = [1, 2].map(|id| Account {
            id,
            ledger: 1,
            code: 1,
            ..Default::default()
        });
        pipeline.create_accounts(accounts.to_vec()).await.unwrap();
        let transfer = |id: u128, flags: TransferFlags| Transfer {
            id,
            debit_account_id: 1,
            credit_account_id: 2,
            amount: 1,
            ledger: 1,
            code: 1,
            flags,
            ..Default::default()
        };
        let (open_chain, next) = tokio::join!(
            pipeline.create_transfers(vec![transfer(10, TransferFlags::LINKED)]),
            pipeline.create_transfers(vec![transfer(11, TransferFlags::empty())]),
        );
        let code = |results: CreateResults<CreateTransferResult>| -> Vec<CreateTransferResult> {
            results.unwrap().iter().map(|r| r.result).collect()
        };
        assert_eq!(
            code(open_chain),
            [CreateTransferResult::LinkedEventChainOpen]
        );
        assert_eq!(code(next), [CreateTransferResult::Created]);

        let imported = Transfer {
            timestamp: 1,
            ..transfer(12, TransferFlags::IMPORTED)
        };
        let (first, second) = tokio::join!(
            pipeline.create_transfers(vec![transfer(13, TransferFlags::empty())]),
            pipeline.create_transfers(vec![imported]),
        );
        assert_eq!(code(first), [CreateTransferResult::Created]);
        // Alone, an imported transfer is judged as such (here: its timestamp is in the past).
        assert_ne!(
            code(second),
            [CreateTransferResult::ImportedEventNotExpected]
        );
        drop(pipeline);
        task.stop(Duration::from_secs(1)).await;
    }

    /// A replica whose Raft transport is served on a loopback port.
    struct Served {
        replica: Arc<Replica>,
        server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    }

    /// A loopback listener on a free port, and the address peers reach it at.
    async fn listener() -> (tokio::net::TcpListener, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        (listener, addr)
    }

    impl Served {
        /// Opens replica `id` in `dir` and serves its transport on `listener`; `routes` says
        /// where its peers listen now (when that differs from their address in the group).
        async fn open(
            id: NodeId,
            dir: &std::path::Path,
            listener: tokio::net::TcpListener,
            routes: BTreeMap<NodeId, String>,
        ) -> Served {
            let config = replication::ReplicaConfig {
                peer_routes: routes,
                ..replication::ReplicaConfig::default()
            };
            let replica = Replica::open(id, dir, &config).await.unwrap();
            let serving = tonic::transport::Server::builder()
                .add_service(replica.transport_service())
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
            Served {
                replica: Arc::new(replica),
                server: tokio::spawn(serving),
            }
        }

        /// Cuts this replica off: its Raft stops and its port closes.
        async fn stop(self) {
            self.replica.shutdown().await;
            self.server.abort();
            let _ = self.server.await;
        }
    }

    /// A member at `addr`: each replica here serves its transport alone on one listener, so
    /// its peer and gRPC addresses are alike.
    fn node(addr: &str) -> PeerNode {
        PeerNode {
            grpc: addr.into(),
            http: String::new(),
            peer: addr.into(),
        }
    }

    /// Waits (bounded) until `replicas` agree on a leader among themselves; its index.
    async fn agreed_leader(replicas: &[Served]) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let leaders: Vec<_> = replicas
                .iter()
                .map(|served| served.replica.leader().map(|(id, _)| id))
                .collect();
            if let Some(Some(leader)) = leaders.first()
                && leaders.iter().all(|l| *l == Some(*leader))
                && let Some(at) = replicas.iter().position(|s| s.replica.id() == *leader)
            {
                return at;
            }
            assert!(Instant::now() < deadline, "no agreed leader: {leaders:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_follower_names_the_leader_at_once_even_while_its_state_is_locked() {
        let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
        let (first, first_addr) = listener().await;
        let (second, second_addr) = listener().await;
        let members = BTreeMap::from([(1, node(&first_addr)), (2, node(&second_addr))]);
        let replicas = vec![
            Served::open(1, dirs[0].path(), first, BTreeMap::new()).await,
            Served::open(2, dirs[1].path(), second, BTreeMap::new()).await,
        ];
        replicas[0].replica.initialize(&members).await.unwrap();
        let leader = agreed_leader(&replicas).await;
        let follower = &replicas[1 - leader];
        let (pipeline, task) = Pipeline::start(
            Arc::clone(&follower.replica),
            16,
            Capacity::FORMAT_MAX,
            Metrics::new(),
        );
        // The follower's state is write-locked (as during a snapshot install) while a write
        // arrives: it is answered at once, naming the leader.
        let (locked, unlock) = (
            std::sync::Arc::new(std::sync::Barrier::new(2)),
            std::sync::mpsc::channel::<()>(),
        );
        let holder = {
            let (state, locked) = (Arc::clone(follower.replica.state()), Arc::clone(&locked));
            let release = unlock.1;
            std::thread::spawn(move || {
                let _held = state.write().unwrap();
                locked.wait();
                let _ = release.recv_timeout(Duration::from_secs(30));
            })
        };
        locked.wait();
        let account = Account {
            id: 1,
            ledger: 1,
            code: 1,
            ..Default::default()
        };
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            pipeline.create_accounts(vec![account]),
        )
        .await
        .expect("the follower waited for its state lock");
        let leader_id = replicas[leader].replica.id();
        assert!(
            matches!(&answer, Err(PipelineError::NotLeader { leader: Some((id, _)) }) if *id == leader_id),
            "{answer:?}"
        );
        unlock.0.send(()).unwrap();
        holder.join().unwrap();
        drop(pipeline);
        task.stop(Duration::from_secs(1)).await;
        for served in replicas {
            served.stop().await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_leader_cut_off_from_its_followers_stops_in_bounded_time_answering_its_writes_unavailable()
     {
        let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
        let (first, first_addr) = listener().await;
        let (second, second_addr) = listener().await;
        // Member 3 never runs: nothing listens on port 1.
        let members = BTreeMap::from([
            (1, node(&first_addr)),
            (2, node(&second_addr)),
            (3, node("127.0.0.1:1")),
        ]);
        let mut replicas = vec![
            Served::open(1, dirs[0].path(), first, BTreeMap::new()).await,
            Served::open(2, dirs[1].path(), second, BTreeMap::new()).await,
        ];
        replicas[0].replica.initialize(&members).await.unwrap();
        let leader = replicas.remove(agreed_leader(&replicas).await);
        let follower = replicas.pop().unwrap();
        let (pipeline, task) = Pipeline::start(
            Arc::clone(&leader.replica),
            16,
            Capacity::FORMAT_MAX,
            Metrics::new(),
        );
        let acknowledged = Account {
            id: 1,
            ledger: 1,
            code: 1,
            ..Default::default()
        };
        // Just elected, the leader may not take writes for a moment.
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Err(error) = pipeline.create_accounts(vec![acknowledged]).await {
            assert!(Instant::now() < deadline, "the first write failed: {error}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        // The only follower goes away: the leader can no longer commit anything.
        follower.stop().await;
        let proposed = leader.replica.status(false).last_log_index;
        let stuck = tokio::spawn({
            let pipeline = pipeline.clone();
            let account = Account {
                id: 2,
                ..acknowledged
            };
            async move { pipeline.create_accounts(vec![account]).await }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while leader.replica.status(false).last_log_index == proposed {
            assert!(Instant::now() < deadline, "the write was never proposed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(pipeline);

        let writes_grace = Duration::from_secs(1);
        let bound = writes_grace + Duration::from_secs(10);
        let stopping = Instant::now();
        tokio::time::timeout(bound, task.stop(writes_grace))
            .await
            .unwrap_or_else(|_| panic!("the pipeline did not stop within {bound:?}"));
        assert!(stopping.elapsed() >= writes_grace);
        let answer = tokio::time::timeout(Duration::from_secs(1), stuck)
            .await
            .expect("the stop answered the write in flight")
            .unwrap();
        assert!(
            matches!(&answer, Err(PipelineError::Unavailable(reason)) if reason.contains("unknown")),
            "{answer:?}"
        );
        assert_eq!(
            leader.replica.status(false).role,
            replication::Role::Shutdown
        );
        leader.stop().await;

        // Both journals closed cleanly: the two replicas reopen (on new ports) and form the
        // group again with the acknowledged account.
        let (first, first_addr) = listener().await;
        let (second, second_addr) = listener().await;
        let replicas = [
            Served::open(1, dirs[0].path(), first, BTreeMap::from([(2, second_addr)])).await,
            Served::open(2, dirs[1].path(), second, BTreeMap::from([(1, first_addr)])).await,
        ];
        let leader = &replicas[agreed_leader(&replicas).await];
        leader.replica.linearizable().await.unwrap();
        let found = leader.replica.state().read().unwrap().lookup_accounts(&[1]);
        assert_eq!(found.len(), 1, "the acknowledged account was lost");
        for served in replicas {
            served.stop().await;
        }
    }
}
