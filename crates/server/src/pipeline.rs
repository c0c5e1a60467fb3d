//! The request pipeline: a bounded queue in front of one engine thread, and a reply thread.
//!
//! ```text
//! handlers (many tasks) ──try_send──▶ [queue, bounded] ──▶ engine thread ──▶ [in flight, bounded] ──▶ reply thread
//!        ▲  full: Busy                                      coalesce requests     batches wait for their
//!        │                                                  into one batch,       fsync, then every
//!        └──────────────────── oneshot replies ◀──────────  journal ∥ apply       request is answered
//! ```
//!
//! Reads are answered from the engine thread's state but travel through the same in-flight
//! queue, so a read is released only after every batch before it is durable: nobody ever sees
//! a state that a crash could take back. After any storage failure every later request is
//! answered `Unavailable`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;
use std::time::Instant;

use engine::{Engine, EngineError};
use journal::Ticket;
use ledger::{
    Account, AccountBalance, AccountFilter, BATCH_EVENTS_MAX, BatchBody, BatchResults,
    CreateAccountResult, CreateTransferResult, EventResult, Transfer,
};
use telemetry::Metrics;
use tokio::sync::{mpsc, oneshot};

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

/// Why a command was not carried out. In every case nothing changed, so the same command
/// (same ids) may be sent again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PipelineError {
    #[error("the node is busy (its request queue is full); retry later with the same ids")]
    Busy,
    #[error("the node is unavailable: {0}; retry with the same ids")]
    Unavailable(String),
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
}

impl PipelineError {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            PipelineError::Busy => "busy",
            PipelineError::Unavailable(_) => "unavailable",
            PipelineError::Invalid { .. } => "invalid",
        }
    }
}

type Responder = oneshot::Sender<Result<Reply, PipelineError>>;

enum Request {
    Run {
        command: Command,
        respond: Responder,
    },
    /// Stop taking requests, answer what is queued with `Unavailable`, close the engine.
    Shutdown,
}

/// Work handed from the engine thread to the reply thread, in order.
enum Outgoing {
    /// Answers to release once `ticket` says their batch is durable.
    Batch {
        ticket: Ticket,
        answers: Vec<(Responder, Reply)>,
    },
    /// An answer computed from a state whose batches all precede it in this queue.
    Ready {
        respond: Responder,
        answer: Result<Reply, PipelineError>,
    },
}

/// The handle that request handlers use.
#[derive(Clone)]
pub struct Pipeline {
    sender: mpsc::Sender<Request>,
    failed: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
}

/// The threads behind a pipeline; joined at shutdown.
pub struct PipelineThreads {
    engine: JoinHandle<Result<(), EngineError>>,
    replies: JoinHandle<()>,
}

impl PipelineThreads {
    /// Waits for both threads; returns the engine's closing result (its final checkpoint).
    pub fn join(self) -> Result<(), EngineError> {
        let closed = self.engine.join().expect("the engine thread panicked");
        self.replies.join().expect("the reply thread panicked");
        closed
    }
}

impl Pipeline {
    /// Starts the engine and reply threads. `queue_depth` bounds the requests waiting for the
    /// engine; `in_flight_batches` bounds the batches waiting for their fsync.
    pub fn start(
        engine: Engine,
        queue_depth: usize,
        in_flight_batches: usize,
        metrics: Arc<Metrics>,
    ) -> (Pipeline, PipelineThreads) {
        let (sender, receiver) = mpsc::channel(queue_depth);
        let (outgoing_sender, outgoing_receiver) = std_mpsc::sync_channel(in_flight_batches);
        let failed = Arc::new(AtomicBool::new(false));
        let engine_failed = Arc::clone(&failed);
        let engine_metrics = Arc::clone(&metrics);
        let engine = std::thread::Builder::new()
            .name("ledger-engine".into())
            .spawn(move || {
                engine_loop(
                    engine,
                    receiver,
                    outgoing_sender,
                    &engine_failed,
                    &engine_metrics,
                )
            })
            .expect("spawning the engine thread");
        let reply_failed = Arc::clone(&failed);
        let replies = std::thread::Builder::new()
            .name("ledger-replies".into())
            .spawn(move || reply_loop(outgoing_receiver, &reply_failed))
            .expect("spawning the reply thread");
        (
            Pipeline {
                sender,
                failed,
                metrics,
            },
            PipelineThreads { engine, replies },
        )
    }

    /// Runs a command: queued if there is room (else `Busy` at once), answered once durable.
    pub async fn submit(&self, command: Command) -> Result<Reply, PipelineError> {
        if self.failed.load(Ordering::Acquire) {
            return Err(PipelineError::Unavailable(
                "it stopped after a storage failure".into(),
            ));
        }
        let (respond, answer) = oneshot::channel();
        match self.sender.try_send(Request::Run { command, respond }) {
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

    /// True once a storage failure stopped the node.
    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Asks the engine thread to finish: queued requests are answered `Unavailable`.
    pub async fn shutdown(&self) {
        let _ = self.sender.send(Request::Shutdown).await;
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
}

/// Events of a create command, for coalescing.
fn create_len(command: &Command) -> Option<usize> {
    match command {
        Command::CreateAccounts(events) => Some(events.len()),
        Command::CreateTransfers(events) => Some(events.len()),
        _ => None,
    }
}

fn same_operation(a: &Command, b: &Command) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

fn engine_loop(
    mut engine: Engine,
    mut receiver: mpsc::Receiver<Request>,
    outgoing: std_mpsc::SyncSender<Outgoing>,
    failed: &AtomicBool,
    metrics: &Metrics,
) -> Result<(), EngineError> {
    let mut carried: Option<(Command, Responder)> = None;
    let mut shutting_down = false;
    loop {
        let (command, respond) = match carried.take() {
            Some(next) => next,
            None => match receiver.blocking_recv() {
                Some(Request::Run { command, respond }) => (command, respond),
                Some(Request::Shutdown) | None => break,
            },
        };
        if failed.load(Ordering::Acquire) {
            let _ = respond.send(Err(PipelineError::Unavailable(
                "it stopped after a storage failure".into(),
            )));
            continue;
        }
        let Some(len) = create_len(&command) else {
            let answer = read(&engine, command);
            if outgoing.send(Outgoing::Ready { respond, answer }).is_err() {
                break;
            }
            continue;
        };
        // Coalesce queued creates of the same kind into one batch, up to the batch limit.
        let mut members = vec![(command, respond, len)];
        let mut total = len;
        while total < BATCH_EVENTS_MAX {
            match receiver.try_recv() {
                Ok(Request::Run { command, respond }) => match create_len(&command) {
                    Some(len)
                        if same_operation(&command, &members[0].0)
                            && total + len <= BATCH_EVENTS_MAX =>
                    {
                        total += len;
                        members.push((command, respond, len));
                    }
                    _ => {
                        carried = Some((command, respond));
                        break;
                    }
                },
                Ok(Request::Shutdown) => {
                    shutting_down = true;
                    break;
                }
                Err(_) => break,
            }
        }
        metrics.batch(total);
        let body = match &members[0].0 {
            Command::CreateAccounts(_) => BatchBody::CreateAccounts(
                members
                    .iter_mut()
                    .flat_map(|(command, _, _)| match command {
                        Command::CreateAccounts(events) => std::mem::take(events),
                        _ => unreachable!("coalesced commands share one operation"),
                    })
                    .collect(),
            ),
            _ => BatchBody::CreateTransfers(
                members
                    .iter_mut()
                    .flat_map(|(command, _, _)| match command {
                        Command::CreateTransfers(events) => std::mem::take(events),
                        _ => unreachable!("coalesced commands share one operation"),
                    })
                    .collect(),
            ),
        };
        let (results, ticket) = match engine.submit_pipelined(body) {
            Ok(submitted) => submitted,
            Err(error) => {
                tracing::error!(%error, "the engine failed; refusing all further requests");
                failed.store(true, Ordering::Release);
                for (_, respond, _) in members {
                    let _ = respond.send(Err(PipelineError::Unavailable(error.to_string())));
                }
                continue;
            }
        };
        let answers = split_results(results, members);
        if outgoing.send(Outgoing::Batch { ticket, answers }).is_err() {
            break;
        }
        if shutting_down {
            break;
        }
    }
    // Answer whatever is still queued, then close: the reply thread drains what is in flight.
    receiver.close();
    if let Some((_, respond)) = carried {
        let _ = respond.send(Err(PipelineError::Unavailable(
            "it is shutting down".into(),
        )));
    }
    while let Ok(request) = receiver.try_recv() {
        if let Request::Run { respond, .. } = request {
            let _ = respond.send(Err(PipelineError::Unavailable(
                "it is shutting down".into(),
            )));
        }
    }
    drop(outgoing);
    if failed.load(Ordering::Acquire) {
        return Ok(());
    }
    engine.close()
}

fn split_results(
    results: BatchResults,
    members: Vec<(Command, Responder, usize)>,
) -> Vec<(Responder, Reply)> {
    let mut answers = Vec::with_capacity(members.len());
    match results {
        BatchResults::CreateAccounts(results) => {
            let mut rest = results.into_iter();
            for (_, respond, len) in members {
                answers.push((
                    respond,
                    Reply::CreateAccounts(rest.by_ref().take(len).collect()),
                ));
            }
        }
        BatchResults::CreateTransfers(results) => {
            let mut rest = results.into_iter();
            for (_, respond, len) in members {
                answers.push((
                    respond,
                    Reply::CreateTransfers(rest.by_ref().take(len).collect()),
                ));
            }
        }
    }
    answers
}

fn read(engine: &Engine, command: Command) -> Result<Reply, PipelineError> {
    let state = engine.state();
    let invalid = |ledger::QueryError::InvalidFilter { field, reason }| PipelineError::Invalid {
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
            unreachable!("creates are batched")
        }
    })
}

fn reply_loop(receiver: std_mpsc::Receiver<Outgoing>, failed: &AtomicBool) {
    let started = Instant::now();
    while let Ok(item) = receiver.recv() {
        match item {
            Outgoing::Batch { ticket, answers } => match ticket.wait() {
                Ok(_) if !failed.load(Ordering::Acquire) => {
                    for (respond, reply) in answers {
                        let _ = respond.send(Ok(reply));
                    }
                }
                outcome => {
                    if let Err(error) = &outcome {
                        tracing::error!(%error, "a batch could not be made durable; refusing all further requests");
                    }
                    failed.store(true, Ordering::Release);
                    for (respond, _) in answers {
                        let _ = respond.send(Err(PipelineError::Unavailable(
                            "a storage failure stopped it".into(),
                        )));
                    }
                }
            },
            Outgoing::Ready { respond, answer } => {
                let answer = if failed.load(Ordering::Acquire) {
                    Err(PipelineError::Unavailable(
                        "a storage failure stopped it".into(),
                    ))
                } else {
                    answer
                };
                let _ = respond.send(answer);
            }
        }
    }
    tracing::debug!(
        uptime_s = started.elapsed().as_secs(),
        "reply thread finished"
    );
}
