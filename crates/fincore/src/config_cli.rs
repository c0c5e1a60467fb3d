//! `fincore config`: read and change the config center the meta group keeps
//! (`docs/config-center.md`) — get, set, history, rollback, gray, promote, abandon — over its
//! gRPC API, with an API key (`read` to read, `admin` to change).
//!
//! Owns the command line and how answers are printed; the rules a change passes and the audit
//! are the meta group's.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context;
use api::proto;
use client::ConfigRequest;
use meta::{ConfigView, HistoryView};

#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    /// The meta group's replicas' gRPC addresses (`HOST:PORT`, comma-separated; `dev
    /// --groups` prints them).
    #[arg(long, value_name = "ADDRS", value_delimiter = ',', global = true)]
    meta: Vec<String>,
    /// An API key (role `read` to read, `admin` to change).
    #[arg(
        long,
        value_name = "KEY",
        env = "FINCORE_API_KEY",
        hide_env_values = true,
        global = true
    )]
    api_key: Option<String>,
    /// Dial the meta group over TLS, trusting this authority (PEM).
    #[arg(long, value_name = "FILE", global = true)]
    tls_ca: Option<PathBuf>,
    #[command(subcommand)]
    command: ConfigCommand,
}

/// A value given on the command line or read from a file.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
struct Value {
    /// The value (text).
    #[arg(long, value_name = "TEXT")]
    value: Option<String>,
    /// Read the value from this file (for example flow rules: `docs/flow-control.md`).
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
}

impl Value {
    fn text(&self) -> anyhow::Result<String> {
        match (&self.value, &self.file) {
            (Some(value), _) => Ok(value.clone()),
            (None, Some(path)) => std::fs::read_to_string(path)
                .with_context(|| format!("reading --file {}", path.display())),
            (None, None) => unreachable!("clap requires --value or --file"),
        }
    }
}

#[derive(Debug, clap::Subcommand)]
enum ConfigCommand {
    /// Show every key (or KEY): its version, value and any gray release staged.
    Get { key: Option<String> },
    /// Make the value KEY's value for everyone (a new version), if the key is at
    /// --expected-version when given (0: it must not exist yet).
    Set {
        key: String,
        #[command(flatten)]
        value: Value,
        #[arg(long, value_name = "VERSION")]
        expected_version: Option<u64>,
    },
    /// Show KEY's audit history: each change, who made it (the API key's name), when, and
    /// the old and new values.
    History { key: String },
    /// Make the value KEY had at --version its value again (a new version).
    Rollback {
        key: String,
        #[arg(long, value_name = "VERSION")]
        version: u64,
    },
    /// Stage a value for some processes only: those named in --nodes, those with every
    /// --label, and a stable --percent of the rest. Everyone else keeps the value in use.
    Gray {
        key: String,
        #[command(flatten)]
        value: Value,
        /// Process names (`gateway --name`; comma-separated).
        #[arg(long, value_name = "NAMES", value_delimiter = ',')]
        nodes: Vec<String>,
        /// A label the processes must carry (`KEY=VALUE`, repeatable: all must match).
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// A stable share of the processes (0 to 100): the same ones stay chosen as it grows.
        #[arg(long, value_name = "PERCENT", default_value_t = 0)]
        percent: u32,
    },
    /// Make KEY's staged gray release everyone's value (a new version).
    Promote { key: String },
    /// Drop KEY's staged gray release: the processes it reached go back to the value in use.
    Abandon { key: String },
}

pub fn run(args: &ConfigArgs) -> anyhow::Result<ExitCode> {
    if args.meta.is_empty() {
        anyhow::bail!("--meta: give the meta group's replicas' gRPC addresses (HOST:PORT,…)");
    }
    let runtime = crate::serve::runtime()?;
    runtime.block_on(async {
        let tls_ca_pem = match &args.tls_ca {
            Some(path) => Some(
                std::fs::read(path)
                    .with_context(|| format!("reading --tls-ca {}", path.display()))?,
            ),
            None => None,
        };
        let access = gateway::GroupAccess {
            api_key: args.api_key.clone(),
            tls_ca_pem,
            ..Default::default()
        };
        let addrs: Vec<&str> = args.meta.iter().map(String::as_str).collect();
        let meta = gateway::map_feed::meta_client(&addrs, &access)
            .context("--meta: dialling the meta group")?;
        let change = match &args.command {
            ConfigCommand::Get { key } => {
                let (_, text) = meta.config(key.as_deref()).await.context("reading the config")?;
                let view = ConfigView::from_json(&text).map_err(anyhow::Error::msg)?;
                if let Some(key) = key
                    && !view.keys.contains_key(key)
                {
                    anyhow::bail!("the config center holds no key {key:?}");
                }
                print_view(&view);
                return Ok(ExitCode::SUCCESS);
            }
            ConfigCommand::History { key } => {
                let text = meta
                    .config_history(key)
                    .await
                    .with_context(|| format!("reading the history of {key:?}"))?;
                let history: HistoryView =
                    serde_json::from_str(&text).context("reading the history's JSON")?;
                print_history(&history);
                return Ok(ExitCode::SUCCESS);
            }
            ConfigCommand::Set {
                key,
                value,
                expected_version,
            } => ConfigRequest::Set(proto::SetConfigRequest {
                key: key.clone(),
                value: value.text()?,
                expected_version: *expected_version,
                ..Default::default()
            }),
            ConfigCommand::Rollback { key, version } => {
                ConfigRequest::Rollback(proto::RollbackConfigRequest {
                    key: key.clone(),
                    version: *version,
                    ..Default::default()
                })
            }
            ConfigCommand::Gray {
                key,
                value,
                nodes,
                labels,
                percent,
            } => {
                let labels = labels
                    .iter()
                    .map(|label| {
                        label
                            .split_once('=')
                            .map(|(k, v)| (k.to_owned(), v.to_owned()))
                            .with_context(|| format!("--label: {label:?} is not KEY=VALUE"))
                    })
                    .collect::<anyhow::Result<_>>()?;
                ConfigRequest::Gray(proto::GrayConfigRequest {
                    key: key.clone(),
                    value: value.text()?,
                    target: Some(proto::ConfigTarget {
                        nodes: nodes.clone(),
                        labels,
                        percent: *percent,
                    }),
                    ..Default::default()
                })
            }
            ConfigCommand::Promote { key } => {
                ConfigRequest::Promote(proto::PromoteConfigRequest {
                    key: key.clone(),
                    ..Default::default()
                })
            }
            ConfigCommand::Abandon { key } => {
                ConfigRequest::Abandon(proto::AbandonConfigRequest {
                    key: key.clone(),
                    ..Default::default()
                })
            }
        };
        let (revision, version) = meta
            .change_config(change)
            .await
            .context("changing the config")?;
        println!(
            "done: config revision {revision}; the key is at version {version} (watching processes take it within a second)"
        );
        Ok(ExitCode::SUCCESS)
    })
}

fn when(at_ms: u64) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_millis(at_ms))
}

fn print_view(view: &ConfigView) {
    println!(
        "config revision {}: {} keys",
        view.revision,
        view.keys.len()
    );
    for (key, entry) in &view.keys {
        println!("{key} (version {}): {}", entry.version, entry.value);
        if let Some(gray) = &entry.gray {
            println!(
                "  gray release staged (revision {}) for nodes {:?}, labels {:?}, {} %: {}",
                gray.revision,
                gray.target.nodes,
                gray.target.labels,
                gray.target.percent,
                gray.value
            );
        }
    }
}

fn print_history(history: &HistoryView) {
    println!(
        "{}: {} changes kept, oldest first",
        history.key,
        history.changes.len()
    );
    for change in &history.changes {
        let restored = change
            .restored
            .map(|version| format!(" (restored version {version})"))
            .unwrap_or_default();
        let target = change
            .target
            .as_ref()
            .map(|target| {
                format!(
                    " for nodes {:?}, labels {:?}, {} %",
                    target.nodes, target.labels, target.percent
                )
            })
            .unwrap_or_default();
        let action = serde_json::to_value(change.action)
            .ok()
            .and_then(|name| name.as_str().map(str::to_owned))
            .unwrap_or_default();
        println!(
            "revision {} · {action}{restored}{target} → version {} · by {} · {}",
            change.revision,
            change.version,
            change.by,
            when(change.at_ms)
        );
        println!("  old: {}", change.old.as_deref().unwrap_or("(none)"));
        println!("  new: {}", change.new.as_deref().unwrap_or("(none)"));
    }
}
