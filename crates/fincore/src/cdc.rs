//! `fincore cdc`: publish each group's change events to NATS JetStream until Ctrl-C or
//! SIGTERM (the `cdc` crate does the work; `docs/events.md`, "Publishing to NATS"). This module
//! reads the flags and turns a group's fatal error into the exit status.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use cdc::{Config, GroupSpec, Naming, NatsCredentials};
use limits::{
    CDC_DUPLICATE_WINDOW_SECONDS_DEFAULT, CDC_DUPLICATE_WINDOW_SECONDS_MAX,
    CDC_PUBLISHES_IN_FLIGHT_DEFAULT, CDC_PUBLISHES_IN_FLIGHT_MAX,
};

#[derive(Debug, clap::Args)]
pub struct CdcArgs {
    /// The NATS server with JetStream.
    #[arg(long, value_name = "URL", default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// A group to publish: its name (a subject token: letters, digits, '-', '_'; its 32-hex-digit
    /// id makes every call name it) and its replicas' gRPC addresses, tried in turn. Repeat for
    /// more groups.
    #[arg(long = "group", value_name = "NAME=URL[,URL…]", required = true)]
    groups: Vec<GroupSpec>,
    /// The API key sent to the replicas (role `read` suffices).
    #[arg(
        long,
        env = "FINCORE_API_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    api_key: Option<String>,
    #[command(flatten)]
    naming: NamingArgs,
    #[command(flatten)]
    nats_auth: NatsAuthArgs,
    /// The duplicate window of a stream this publisher creates.
    #[arg(long, value_name = "SECONDS", default_value_t = CDC_DUPLICATE_WINDOW_SECONDS_DEFAULT,
        value_parser = clap::value_parser!(u64).range(1..=CDC_DUPLICATE_WINDOW_SECONDS_MAX))]
    duplicate_window_seconds: u64,
    /// Publishes of one group awaiting the broker's acknowledgement at once.
    #[arg(long, value_name = "N", default_value_t = CDC_PUBLISHES_IN_FLIGHT_DEFAULT as u64,
        value_parser = clap::value_parser!(u64).range(1..=CDC_PUBLISHES_IN_FLIGHT_MAX as u64))]
    in_flight: u64,
    /// Serve GET /metrics (each group's published sequence, its replicas' newest, the lag
    /// between them, publish latency) on this address, open like every process's /metrics.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
}

/// Where each group's events are in NATS: the same flags for the publisher and for
/// `fincore project --nats`, so that both name the same streams.
#[derive(Debug, Clone, clap::Args)]
pub struct NamingArgs {
    /// Subjects are `<PREFIX>.<group>.events`.
    #[arg(long, value_name = "PREFIX", default_value = cdc::SUBJECT_PREFIX_DEFAULT)]
    subject_prefix: String,
    /// Each group's stream name: `{prefix}` is the subject prefix with dots as dashes, `{group}`
    /// the group's name. `fincore cdc` creates it when missing (limits retention, file storage).
    #[arg(long = "stream", value_name = "TEMPLATE", default_value = cdc::STREAM_TEMPLATE_DEFAULT)]
    stream_template: String,
}

/// How `fincore cdc` and `fincore project --nats` log in to NATS (secrets from files, never
/// from the command line, where other users of the machine can read them).
#[derive(Debug, Clone, clap::Args)]
pub struct NatsAuthArgs {
    /// Log in to NATS as this user (with --nats-password-file).
    #[arg(long, value_name = "USER", requires = "nats_password_file")]
    nats_user: Option<String>,
    /// The file holding the NATS user's password (its first line).
    #[arg(long, value_name = "FILE", requires = "nats_user")]
    nats_password_file: Option<PathBuf>,
    /// Log in to NATS with the token in this file (its first line).
    #[arg(long, value_name = "FILE", conflicts_with = "nats_user")]
    nats_token_file: Option<PathBuf>,
}

impl NatsAuthArgs {
    /// The credentials the flags name, their files read; an error names the flag and the file.
    pub fn credentials(&self) -> anyhow::Result<NatsCredentials> {
        let secret = |flag: &str, path: &Path| -> anyhow::Result<String> {
            let text =
                replication::secret_file::read_text(path).with_context(|| flag.to_string())?;
            // The first line as written (spaces are part of a secret), without its ending.
            let line = text.lines().next().unwrap_or("").to_string();
            anyhow::ensure!(
                !line.is_empty(),
                "{flag} {}: the file is empty (its first line must hold the secret)",
                path.display()
            );
            Ok(line)
        };
        Ok(
            match (
                &self.nats_user,
                &self.nats_password_file,
                &self.nats_token_file,
            ) {
                (Some(user), Some(password), None) => {
                    anyhow::ensure!(!user.is_empty(), "--nats-user: must not be empty");
                    NatsCredentials::UserPassword {
                        user: user.clone(),
                        password: secret("--nats-password-file", password)?,
                    }
                }
                (None, None, Some(token)) => {
                    NatsCredentials::Token(secret("--nats-token-file", token)?)
                }
                (None, None, None) => NatsCredentials::None,
                _ => anyhow::bail!(
                    "--nats-user needs --nats-password-file, and neither goes with --nats-token-file"
                ),
            },
        )
    }
}

impl NamingArgs {
    pub fn naming(&self) -> Naming {
        Naming {
            subject_prefix: self.subject_prefix.clone(),
            stream_template: self.stream_template.clone(),
        }
    }
}

pub fn run(args: &CdcArgs) -> anyhow::Result<ExitCode> {
    let _logs = telemetry::init_logging(&telemetry::trace::TraceOptions::off("fincore-cdc"))?;
    let config = Config {
        nats_url: args.nats.clone(),
        nats_credentials: args.nats_auth.credentials()?,
        groups: args.groups.clone(),
        api_key: args.api_key.clone().filter(|key| !key.is_empty()),
        naming: args.naming.naming(),
        duplicate_window: Duration::from_secs(args.duplicate_window_seconds),
        in_flight_max: usize::try_from(args.in_flight).context("--in-flight")?,
    };
    let runtime = crate::serve::runtime()?;
    let metrics = telemetry::Metrics::for_service(telemetry::Service::Publisher);
    runtime.block_on(async move {
        let stop = crate::serve::stop_signal()?;
        let _listener = crate::serve::metrics_listener(args.metrics, &metrics).await?;
        tokio::select! {
            error = cdc::run(config, metrics) => Err(anyhow::Error::new(error)),
            () = stop => {
                // Nothing to save: a restart resumes from what the streams hold.
                tracing::info!("stopped");
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}
