//! SQL read models of the change-event stream (`fincore project`, `docs/projector.md`).
//!
//! Consumes one or more groups' change events straight from their replicas into PostgreSQL or
//! SQLite tables (`accounts`, `transfers`, `account_balances`, `projection_offsets`): whole
//! batches, one transaction with the group's offset, so nothing is written twice or half;
//! resumable from the stored offset after any crash; gaps back-filled from the events API;
//! `--verify` compares the read model with the ledger. It must not write to the ledger, and it
//! reads the nodes only through `client`.
//!
//! - `model`: events → rows (pure).
//! - `sink`: the databases (schema, transactional writes, reads for the check).
//! - `source`: a group's replicas (failover, gap check, back-fill).
//! - `run`: the writer loop of one group.
//! - `verify`: the check against the ledger.

pub mod model;
pub mod run;
pub mod sink;
pub mod source;
pub mod verify;

use std::sync::Arc;
use std::time::Duration;

use limits::{PROJECTOR_GROUPS_MAX, PROJECTOR_REPLICAS_PER_GROUP_MAX};

pub use model::{Changes, ModelError, TransferState};
pub use sink::{Sink, SinkError, Target};
pub use source::{GroupSource, Replicas, SourceError};
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
    pub groups: Vec<GroupSource>,
    /// A key with the `read` role (or above).
    pub api_key: Option<String>,
}

impl Options {
    fn check(&self) -> Result<(), ProjectError> {
        let invalid = |reason: String| ProjectError::Invalid {
            field: "--group",
            reason,
        };
        if self.groups.is_empty() || self.groups.len() > PROJECTOR_GROUPS_MAX {
            return Err(invalid(format!(
                "give 1 to {PROJECTOR_GROUPS_MAX} groups, not {}",
                self.groups.len()
            )));
        }
        let mut names: Vec<&str> = self.groups.iter().map(|g| g.name.as_str()).collect();
        names.sort_unstable();
        if let Some(twice) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(invalid(format!("group {} is given twice", twice[0])));
        }
        for group in &self.groups {
            if group.urls.is_empty() || group.urls.len() > PROJECTOR_REPLICAS_PER_GROUP_MAX {
                return Err(invalid(format!(
                    "group {}: give 1 to {PROJECTOR_REPLICAS_PER_GROUP_MAX} replica URLs, not {}",
                    group.name,
                    group.urls.len()
                )));
            }
            // A replica named twice would never be counted as every replica ("gone" from all).
            if let Some((at, url)) = group
                .urls
                .iter()
                .enumerate()
                .find(|(at, url)| group.urls[..*at].contains(url))
            {
                return Err(invalid(format!(
                    "group {}: replica {url} is given twice (URL {} of the list)",
                    group.name,
                    at + 1
                )));
            }
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
    let mut tasks = tokio::task::JoinSet::new();
    for group in replicas {
        let target = options.target.clone();
        let group = Arc::new(group);
        tasks.spawn(async move { run::project_group(&target, group).await });
    }
    let first = tasks.join_next().await.expect("at least one group");
    tasks.abort_all();
    match first {
        Ok(outcome) => outcome,
        Err(error) => Err(ProjectError::Task(error.to_string())),
    }
}

/// Compares the read model with the ledger, waiting at most `wait` for the projection to
/// reach the groups' last events.
pub async fn verify(options: &Options, wait: Duration) -> Result<Verdict, ProjectError> {
    let replicas = options.replicas()?;
    let mut sink = Sink::open(&options.target, true).await?;
    verify::verify(&mut sink, &replicas, wait).await
}
