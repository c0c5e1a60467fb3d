//! SQL read models of the change-event stream (`fincore project`, `docs/projector.md`).
//!
//! Consumes one or more groups' change events, straight from their replicas or from the groups'
//! NATS JetStream streams (`fincore cdc`'s), into PostgreSQL or SQLite tables (`accounts`,
//! `transfers`, `account_balances`, `projection_offsets`): whole batches, one transaction with
//! the group's offset, so nothing is written twice or half; resumable from the stored offset
//! after any crash; gaps (and malformed messages) back-filled from the replicas' events API;
//! `--verify` compares the read model with the ledger. Each group's progress and lag are
//! counted in `Options::metrics` (`fincore_projection_*`). It must not write to the ledger nor
//! to NATS, and it reads the nodes only through `client`.
//!
//! - `model`: events → rows (pure).
//! - `sink`: the databases (schema, transactional writes, reads for the check).
//! - `source`: a group's replicas (failover, gap check, back-fill).
//! - `nats`: a group's JetStream stream (ordered consumer from the offset, gap check).
//! - `run`: the writer loop of one group.
//! - `verify`: the check against the ledger.

pub mod model;
pub mod nats;
pub mod run;
pub mod sink;
pub mod source;
pub mod verify;

use std::sync::Arc;
use std::time::Duration;

use client::GroupSpec;
use limits::{PROJECTOR_GROUPS_MAX, PROJECTOR_REPLICAS_PER_GROUP_MAX};

pub use model::{Changes, ModelError, TransferState};
pub use nats::{GroupStream, NatsSource};
pub use sink::{Sink, SinkError, Target};
pub use source::{Replicas, SourceError};
pub use verify::Verdict;

/// Why projecting stopped.
#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(
        "group {group}: a batch from seq {first_seq} has {events} events and no marker yet, more than any batch can have: the stream is broken"
    )]
    BatchTooLong {
        group: String,
        first_seq: u64,
        events: usize,
    },
    #[error("{0}")]
    Task(String),
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

/// What to project, from where, into what.
#[derive(Debug, Clone)]
pub struct Options {
    pub target: Target,
    /// The groups; their replicas serve the events (or back-fill them, with `nats`).
    pub groups: Vec<GroupSpec>,
    /// A key with the `read` role (or above).
    pub api_key: Option<String>,
    /// Read each group's events from its JetStream stream rather than from its replicas.
    pub nats: Option<NatsSource>,
    /// Where each group's progress and lag are counted (`fincore_projection_*`).
    pub metrics: Arc<telemetry::Metrics>,
}

impl Options {
    fn check(&self) -> Result<(), ProjectError> {
        GroupSpec::check_list(
            &self.groups,
            PROJECTOR_GROUPS_MAX,
            PROJECTOR_REPLICAS_PER_GROUP_MAX,
        )
        .map_err(|e| ProjectError::Invalid {
            field: "--group",
            reason: e.0,
        })?;
        if let Some(nats) = &self.nats {
            nats.naming
                .check(&self.groups)
                .map_err(|e| ProjectError::Invalid {
                    field: "--nats",
                    reason: e.to_string(),
                })?;
        }
        Ok(())
    }

    fn replicas(&self) -> Result<Vec<Replicas>, ProjectError> {
        self.check()?;
        self.groups
            .iter()
            .map(|group| Ok(Replicas::connect(group, self.api_key.as_deref())?))
            .collect()
    }
}

/// Projects every group until one fails for good (the stream has no end); with `rebuild`,
/// first deletes every row. Creates the schema if missing.
pub async fn project(options: &Options, rebuild: bool) -> Result<(), ProjectError> {
    let replicas = options.replicas()?;
    let mut sink = Sink::open(&options.target, true).await?;
    if rebuild {
        sink.clear().await?;
        tracing::info!("read model cleared: projecting from the first event");
    }
    drop(sink);
    let jetstream = match &options.nats {
        Some(nats) => Some(nats.connect().await?),
        None => None,
    };
    let mut tasks = tokio::task::JoinSet::new();
    // Ended (aborted) with this future.
    let mut heads = tokio::task::JoinSet::new();
    for group in replicas {
        let target = options.target.clone();
        let group = Arc::new(group);
        let progress = options.metrics.projection_group(group.group());
        heads.spawn(watch_head(Arc::clone(&group), progress.clone()));
        let reader = match (&options.nats, &jetstream) {
            (Some(nats), Some(context)) => {
                run::Reader::Nats(Arc::new(GroupStream::new(nats, context.clone(), group)))
            }
            _ => run::Reader::Replicas(group),
        };
        tasks.spawn(async move { run::project_group(&target, reader, &progress).await });
    }
    let first = tasks.join_next().await.expect("at least one group");
    tasks.abort_all();
    match first {
        Ok(outcome) => outcome,
        Err(error) => Err(ProjectError::Task(error.to_string())),
    }
}

/// Reads `group`'s newest event every second (`client::newest_event_seq` over its replicas)
/// into `progress`: the projector's lag is that less what it projected. Runs until dropped.
async fn watch_head(group: Arc<Replicas>, progress: telemetry::FollowGroup) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let clients = (0..group.len()).map(|at| group.client(at).1);
        if let Some(seq) = client::newest_event_seq(clients).await {
            progress.source(seq);
        }
    }
}

/// Compares the read model with the ledger, waiting at most `wait` for the projection to
/// reach the groups' last events.
pub async fn verify(options: &Options, wait: Duration) -> Result<Verdict, ProjectError> {
    let replicas = options.replicas()?;
    let mut sink = Sink::open(&options.target, true).await?;
    verify::verify(&mut sink, &replicas, wait).await
}
