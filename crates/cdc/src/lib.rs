//! The CDC publisher (`fincore cdc`): each group's change events (`docs/events.md`) into NATS
//! JetStream, one message per event on `<prefix>.<group>.events`, gap-free and never twice.
//!
//! - **The broker keeps it exact.** Each group has a stream of its own holding event N at
//!   stream sequence N; every publish carries `Nats-Msg-Id: <group>:<seq>` and
//!   `Nats-Expected-Last-Sequence: <seq - 1>`, so JetStream itself refuses a gap or a repeat,
//!   whoever publishes.
//! - **Resumes from the broker.** After a crash, or a race lost to another publisher, a group
//!   reads the stream's tail (its last message and message id) and goes on from there; no
//!   local state is kept.
//! - **Fast.** Publishes are pipelined (`--in-flight` awaiting acknowledgement, awaited in
//!   order) while the next pages are read from a replica.
//! - **Loud about loss.** Events no replica has any more stop the group, naming the seqs.
//! - **Measured.** Each group's last acknowledged event, its replicas' newest (read every
//!   second by `source::watch_head`), the lag between them and publish latency are counted in
//!   a `telemetry::Metrics` (`fincore_cdc_*`; `fincore cdc --metrics ADDR` serves them).
//!
//! Modules: `config` (flags checked), `message` (an event as a message), `stream` (setup and
//! tail), `source` (the replicas), `publisher` (the pipeline), `group` (the loop), `error`.
//! This crate must not touch the ledger's state or a node's files: it reads events through the
//! client API only.

mod config;
mod error;
mod group;
mod message;
mod publisher;
mod source;
mod stream;

use std::time::Duration;

use async_nats::ConnectErrorKind;
use async_nats::jetstream::context::ContextBuilder;

pub use client::GroupSpec;
pub use config::{Config, Naming, STREAM_TEMPLATE_DEFAULT, SUBJECT_PREFIX_DEFAULT};
pub use error::CdcError;
pub use message::{MessageError, decode, encode, message_id, seq_of};
pub use source::Backoff;

/// How a client proves itself to the NATS server, so that the server's permissions can let
/// only the publisher publish events and readers only read them (`docs/events.md`).
#[derive(Clone, Default)]
pub enum NatsCredentials {
    /// None: a server that lets anyone in (development).
    #[default]
    None,
    UserPassword {
        user: String,
        password: String,
    },
    Token(String),
}

impl NatsCredentials {
    /// The flag that gave these credentials (or would have).
    fn flag(&self) -> &'static str {
        match self {
            NatsCredentials::None => "--nats-user",
            NatsCredentials::UserPassword { .. } => "--nats-password-file",
            NatsCredentials::Token(_) => "--nats-token-file",
        }
    }

    /// What to check when the server refuses these credentials.
    fn advice(&self) -> String {
        match self {
            NatsCredentials::None => "the server requires a login: give --nats-user with \
                 --nats-password-file, or --nats-token-file"
                .to_string(),
            NatsCredentials::UserPassword { user, .. } => format!(
                "check that the server has the user {user:?} and that the password file holds \
                 its password"
            ),
            NatsCredentials::Token(_) => {
                "check that the token file holds the server's token".to_string()
            }
        }
    }
}

impl std::fmt::Debug for NatsCredentials {
    /// Never shows a secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NatsCredentials::None => write!(f, "None"),
            NatsCredentials::UserPassword { user, .. } => write!(f, "UserPassword({user:?}, …)"),
            NatsCredentials::Token(_) => write!(f, "Token(…)"),
        }
    }
}

/// A connection to the NATS server at `url`, as `name`, with `credentials` (also used by
/// `fincore project --nats`). Waits for a server that cannot be reached yet, trying again with
/// a bounded backoff; a URL that does not parse, or a server that refuses the login, ends the
/// wait at once with [`CdcError::Invalid`] naming the flag, since trying again cannot fix it.
/// Once connected, the client reconnects on its own (and retries a login refused then: the
/// server's users may be changing).
pub async fn connect(
    url: &str,
    name: &str,
    credentials: &NatsCredentials,
) -> Result<async_nats::Client, CdcError> {
    let mut backoff = Backoff::new();
    loop {
        match connect_options(name, credentials).connect(url).await {
            Ok(client) => return Ok(client),
            Err(error) if error.kind() == ConnectErrorKind::ServerParse => {
                return Err(CdcError::Invalid {
                    field: "--nats".to_string(),
                    reason: format!("{url:?} is not a NATS server URL ({error})"),
                });
            }
            Err(error) if login_refused(&error) => {
                return Err(CdcError::Invalid {
                    field: credentials.flag().to_string(),
                    reason: format!(
                        "NATS at {url} refused the login ({error}): {}",
                        credentials.advice()
                    ),
                });
            }
            Err(error) => {
                let wait = backoff.next_wait();
                tracing::warn!("NATS at {url}: {error}; trying again in {wait:?}");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

fn connect_options(name: &str, credentials: &NatsCredentials) -> async_nats::ConnectOptions {
    let options = match credentials.clone() {
        NatsCredentials::None => async_nats::ConnectOptions::new(),
        NatsCredentials::UserPassword { user, password } => {
            async_nats::ConnectOptions::with_user_and_password(user, password)
        }
        NatsCredentials::Token(token) => async_nats::ConnectOptions::with_token(token),
    };
    options
        .name(name)
        .connection_timeout(Duration::from_secs(limits::CDC_NATS_REQUEST_SECONDS_MAX))
        .reconnect_delay_callback(|attempts| {
            let shift = attempts.min(16) as u32;
            Duration::from_millis(
                (limits::CDC_RETRY_BACKOFF_MS_INITIAL << shift)
                    .min(limits::CDC_RETRY_BACKOFF_MS_MAX),
            )
        })
}

/// Whether the server turned the login down (as opposed to not answering).
fn login_refused(error: &async_nats::ConnectError) -> bool {
    matches!(
        error.kind(),
        ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication
    )
}

/// Publishes every group's events until one group must stop (its error is returned), counting
/// each group's progress and lag in `metrics`. Runs forever otherwise: stop it by dropping the
/// future (nothing is lost: a restart resumes from the streams).
pub async fn run(config: Config, metrics: std::sync::Arc<telemetry::Metrics>) -> CdcError {
    if let Err(error) = config.check() {
        return error;
    }
    let nats = |reason: String| CdcError::Nats {
        url: config.nats_url.clone(),
        reason,
    };
    // The replicas' clients first: a wrong `--group` is told at once, even while NATS is down.
    let mut sources = Vec::with_capacity(config.groups.len());
    for spec in &config.groups {
        match source::replicas(spec, config.api_key.as_deref()) {
            Ok(replicas) => sources.push((spec, std::sync::Arc::new(replicas))),
            Err(error) => return error,
        }
    }
    let client = match connect(&config.nats_url, "fincore-cdc", &config.nats_credentials).await {
        Ok(client) => client,
        Err(error) => return error,
    };
    // Twice the groups' windows: the publishes a run abandons (on a refusal) hold their
    // permits until answered or timed out, and must not stall the next run.
    let request_max = Duration::from_secs(limits::CDC_NATS_REQUEST_SECONDS_MAX);
    let context = ContextBuilder::new()
        .timeout(request_max)
        .ack_timeout(request_max)
        .max_ack_inflight(2 * config.in_flight_max * config.groups.len())
        .build(client);
    let mut groups = tokio::task::JoinSet::new();
    // Each group's head is read beside the publishing, through the same replicas' clients;
    // ended (aborted) with this future.
    let mut heads = tokio::task::JoinSet::new();
    for (spec, replicas) in sources {
        let progress = metrics.cdc_group(&spec.name);
        heads.spawn(source::watch_head(
            std::sync::Arc::clone(&replicas),
            progress.clone(),
        ));
        let target = stream::Target {
            group: spec.name.clone(),
            subject: config.naming.subject(&spec.name),
            stream: config.naming.stream_name(&spec.name),
            duplicate_window: config.duplicate_window,
            progress,
        };
        groups.spawn(group::run(
            context.clone(),
            target,
            replicas,
            config.in_flight_max,
        ));
    }
    match groups.join_next().await {
        Some(Ok(error)) => error,
        Some(Err(panicked)) => nats(format!("a group's task failed: {panicked}")),
        None => unreachable!("config.check() asks for one group at least"),
    }
}
