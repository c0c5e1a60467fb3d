//! `fincore project`: groups' change events (from their replicas, or with `--nats` from the
//! JetStream streams `fincore cdc` fills) into a SQL read model (PostgreSQL or SQLite), until
//! Ctrl-C or SIGTERM; `--verify` compares the read model with the ledger instead. This module
//! reads the flags; the work is the `projector` crate's (`docs/projector.md`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use client::GroupSpec;
use projector::{NatsSource, Options, Target, Verdict};

use crate::cdc::{NamingArgs, NatsAuthArgs};
use cdc::NatsCredentials;

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("database").required(true).args(["postgres", "sqlite"])))]
pub struct ProjectArgs {
    /// A group to project: its name (the key of its offset; use the group's id) and its
    /// replicas' gRPC URLs, any of which serves its events (with --nats: back-fills the gaps of
    /// the stream): `NAME=http://HOST:PORT[,…]`. Repeat for several groups.
    #[arg(long = "group", value_name = "NAME=URL[,URL…]", required = true)]
    groups: Vec<GroupSpec>,
    /// Read each group's events from its NATS JetStream stream (the one `fincore cdc` fills,
    /// named by --subject-prefix and --stream as there) instead of following the replicas.
    #[arg(long, value_name = "URL", conflicts_with = "verify")]
    nats: Option<String>,
    /// With --nats: where the streams are (the same flags and defaults as `fincore cdc`).
    #[command(flatten)]
    naming: NamingArgs,
    /// With --nats: how to log in to NATS (the same flags as `fincore cdc`).
    #[command(flatten)]
    nats_auth: NatsAuthArgs,
    /// An API key with the role `read` (or above), from `fincore keys create --role read`.
    #[arg(
        long,
        value_name = "KEY",
        env = "FINCORE_API_KEY",
        hide_env_values = true
    )]
    api_key: Option<String>,
    /// The read model in PostgreSQL: `postgres://USER@HOST:PORT/DATABASE`.
    #[arg(long, value_name = "URL")]
    postgres: Option<String>,
    /// The read model in a SQLite file (created if missing).
    #[arg(long, value_name = "FILE")]
    sqlite: Option<PathBuf>,
    /// Delete every row of the read model (offsets included) and project from the first event.
    #[arg(long, conflicts_with = "verify")]
    rebuild: bool,
    /// Do not project: compare the read model with the ledger once the read model has caught
    /// up with every group's last event; exit 0 when equal, 1 naming the first difference.
    #[arg(long)]
    verify: bool,
    /// Serve GET /metrics (each group's projected sequence, its replicas' newest, the lag
    /// between them, transaction latency) on this address, open like every process's /metrics.
    #[arg(long, value_name = "ADDR", conflicts_with = "verify")]
    metrics: Option<std::net::SocketAddr>,
    /// How long --verify waits for the read model to catch up.
    #[arg(long, value_name = "SECONDS", requires = "verify",
        default_value_t = limits::PROJECTOR_VERIFY_WAIT_SECONDS_DEFAULT,
        value_parser = clap::value_parser!(u64).range(0..=3600))]
    verify_wait_seconds: u64,
}

pub fn run(args: &ProjectArgs) -> anyhow::Result<ExitCode> {
    let target = match (&args.postgres, &args.sqlite) {
        (Some(url), None) => Target::Postgres(url.clone()),
        (None, Some(path)) => Target::Sqlite(path.clone()),
        _ => anyhow::bail!("give exactly one of --postgres and --sqlite"),
    };
    let options = Options {
        target,
        groups: args.groups.clone(),
        api_key: args.api_key.clone(),
        nats: match (&args.nats, args.nats_auth.credentials()?) {
            (Some(url), credentials) => Some(NatsSource {
                url: url.clone(),
                credentials,
                naming: args.naming.naming(),
            }),
            (None, NatsCredentials::None) => None,
            (None, _) => {
                anyhow::bail!("--nats-user and --nats-token-file log in to NATS: they need --nats")
            }
        },
        metrics: telemetry::Metrics::for_service(telemetry::Service::Projector),
    };
    let _logs = telemetry::init_logging(&telemetry::trace::TraceOptions::off("fincore-projector"))?;
    let runtime = crate::serve::runtime()?;
    runtime.block_on(async move {
        if args.verify {
            let wait = Duration::from_secs(args.verify_wait_seconds);
            let verdict = projector::verify(&options, wait)
                .await
                .context("verifying the read model")?;
            return Ok(match verdict {
                Verdict::Equal {
                    offsets,
                    accounts,
                    transfers,
                } => {
                    let at: Vec<String> = offsets.iter().map(|(g, s)| format!("{g} at seq {s}")).collect();
                    println!(
                        "fincore: the read model equals the ledger ({}): {accounts} accounts, {transfers} transfers",
                        at.join(", ")
                    );
                    ExitCode::SUCCESS
                }
                Verdict::Different(difference) => {
                    println!("fincore: the read model differs from the ledger: {difference}");
                    ExitCode::from(1)
                }
            });
        }
        let stop = crate::serve::stop_signal()?;
        let _listener = crate::serve::metrics_listener(args.metrics, &options.metrics).await?;
        println!("fincore: projecting {} group(s)", options.groups.len());
        tokio::select! {
            outcome = projector::project(&options, args.rebuild) => {
                outcome.context("projecting")?;
                Ok(ExitCode::SUCCESS)
            }
            () = stop => {
                println!("fincore: stopped (every transaction written is whole; the next start resumes from the stored offsets)");
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}
