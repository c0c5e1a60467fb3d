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

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ledger::{
    Account, AccountBalance, AccountFilter, BATCH_EVENTS_MAX, BatchBody, BatchResults, Capacity,
    CapacityError, CreateAccountResult, CreateTransferResult, EventResult, Occupancy, StateMachine,
    Transfer,
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
            PipelineError::Busy => ErrorKind::Busy,
            PipelineError::Unavailable(_) => ErrorKind::Unavailable,
            PipelineError::Invalid { .. } => ErrorKind::Invalid,
            PipelineError::NotLeader { .. } => ErrorKind::NotLeader,
            PipelineError::CapacityReached(_) => ErrorKind::Capacity,
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
    respond: oneshot::Sender<CreateResults<E::Result>>,
}

/// What the request queue holds: create requests of either kind.
enum Queued {
    Accounts(Pending<Account>),
    Transfers(Pending<Transfer>),
}

impl Queued {
    fn events_count(&self) -> usize {
        match self {
            Queued::Accounts(pending) => pending.events.len(),
            Queued::Transfers(pending) => pending.events.len(),
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
            BatchResults::CreateTransfers(_) => {
                unreachable!("the ledger answers a batch of accounts with account results")
            }
        }
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
            BatchResults::CreateAccounts(_) => {
                unreachable!("the ledger answers a batch of transfers with transfer results")
            }
        }
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
                reads_admitted: Arc::new(Semaphore::new(limits::SERVER_READS_ADMITTED_MAX)),
                reads_running: Arc::new(Semaphore::new(limits::SERVER_READS_RUNNING_MAX)),
                replica,
                failed,
                metrics,
            },
            PipelineTask(task),
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
        if self.has_failed() {
            return Err(PipelineError::Unavailable(
                "it stopped after a storage failure".into(),
            ));
        }
        Ok(())
    }

    async fn write<E: Event>(&self, events: Vec<E>) -> CreateResults<E::Result> {
        self.refuse_if_failed()?;
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
        answer
            .await
            .unwrap_or_else(|_| Err(PipelineError::Unavailable("it is shutting down".into())))
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

/// Queued requests of one kind, coalesced into one batch.
enum Coalesced {
    Accounts(Vec<Pending<Account>>),
    Transfers(Vec<Pending<Transfer>>),
}

impl Coalesced {
    fn new(first: Queued) -> Coalesced {
        match first {
            Queued::Accounts(pending) => Coalesced::Accounts(vec![pending]),
            Queued::Transfers(pending) => Coalesced::Transfers(vec![pending]),
        }
    }

    /// Adds `next` when it is of this batch's kind; gives it back otherwise.
    fn push(&mut self, next: Queued) -> Result<(), Queued> {
        match (self, next) {
            (Coalesced::Accounts(members), Queued::Accounts(pending)) => members.push(pending),
            (Coalesced::Transfers(members), Queued::Transfers(pending)) => members.push(pending),
            (_, other) => return Err(other),
        }
        Ok(())
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
        }
    }

    async fn commit(self, replica: &Replica, events_count: usize) {
        match self {
            Coalesced::Accounts(members) => commit(replica, members, events_count).await,
            Coalesced::Transfers(members) => commit(replica, members, events_count).await,
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
                    .send(Err(PipelineError::CapacityReached(error)));
            }
        }
    }
    reservation.map(|reservation| (admitted, total, reservation))
}

/// Takes queued writes, coalesces those of one kind into a batch, and sends it through Raft;
/// at most `BATCHES_IN_FLIGHT_MAX` batches are in flight. Ends when every sender is gone.
async fn batcher(
    replica: Arc<Replica>,
    mut receiver: mpsc::Receiver<Queued>,
    admission: Arc<Admission>,
    metrics: Arc<Metrics>,
) {
    let in_flight = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT_MAX));
    let mut carried: Option<Queued> = None;
    loop {
        let first = match carried.take() {
            Some(queued) => queued,
            None => match receiver.recv().await {
                Some(queued) => queued,
                None => break,
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
        let Some((batch, total, reservation)) = batch.admit(&admission, &replica) else {
            continue;
        };
        metrics.batch(total);
        let replica = Arc::clone(&replica);
        tokio::spawn(async move {
            batch.commit(&replica, total).await;
            // Applied here (or failed): the ledger's own counts now include what it added.
            drop(reservation);
            drop(permit);
        });
    }
    // Wait for the batches still in flight.
    let _ = in_flight.acquire_many(BATCHES_IN_FLIGHT_MAX as u32).await;
}

/// Commits one batch made of `members` and answers each its own share of the results.
async fn commit<E: Event>(replica: &Replica, members: Vec<Pending<E>>, events_count: usize) {
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
    match replica.write(E::body(events)).await {
        Ok(results) => {
            let mut results = E::results(results).into_iter();
            for (len, respond) in answers {
                let _ = respond.send(Ok(results.by_ref().take(len).collect()));
            }
        }
        Err(error) => {
            let error = PipelineError::from(error);
            for (_, respond) in answers {
                let _ = respond.send(Err(error.clone()));
            }
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
        let replica = Arc::clone(pipeline.replica());
        drop(pipeline);
        task.join().await;
        replica.shutdown().await;
    }
}
