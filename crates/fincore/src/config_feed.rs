//! A process's watch on the config center (`fincore.v1.Meta`'s `WatchConfig`): each revision
//! the meta group pushes is taken at once, with this process's name and labels deciding
//! whether a staged gray release reaches it. The key taken holds flow-control rules, applied
//! to the process's gate (`flow_rules::FlowSource`): `flow.rules` for a gateway,
//! `flow.node.rules` for a ledger node (`server::config_keys`).
//!
//! A broken watch (a meta replica stopped, a partition) is opened again, on any meta replica,
//! after the last revision taken, with a doubling wait bounded by
//! `GATEWAY_MAP_WATCH_RETRY_MS_MAX`. A value this process refuses is logged and the rules in
//! use are kept. The same watch feeds a registry's watchers (`registry_cli`). Must not change the config center (operators do, with `fincore config`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use client::Client;
use meta::ConfigView;
use telemetry::Metrics;
use tokio::task::JoinHandle;

use crate::flow_rules::{FlowSource, Taken};

/// Who this process is, as gray releases choose: its name and its labels.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub(crate) name: String,
    pub(crate) labels: BTreeMap<String, String>,
}

/// `--name` and `--label KEY=VALUE` of a process watching the config center.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct IdentityArgs {
    /// This process's name, as gray releases of the config center choose by (and as their
    /// stable percentage hashes). Default: its gRPC listen address (with the host's name in
    /// place of an unspecified address such as 0.0.0.0).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// A label of this process (`KEY=VALUE`, repeatable), as gray releases of the config
    /// center choose by (for example `zone=east`).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    labels: Vec<(String, String)>,
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))?;
    for part in [key, value] {
        if let Some(why) = meta::config::name_invalid(part) {
            return Err(why);
        }
    }
    Ok((key.to_owned(), value.to_owned()))
}

impl IdentityArgs {
    /// The identity of a process listening for gRPC on `grpc`, unless --name says otherwise.
    pub(crate) fn identity(&self, grpc: std::net::SocketAddr) -> anyhow::Result<Identity> {
        let name = self.name.clone().unwrap_or_else(|| default_name(grpc));
        if let Some(why) = meta::config::name_invalid(&name) {
            anyhow::bail!("--name: {why}");
        }
        Ok(Identity {
            name,
            labels: self.labels.iter().cloned().collect(),
        })
    }
}

/// The name a process listening on `grpc` goes by: the address, or with an unspecified one
/// (0.0.0.0, ::) the host's name and the port, so that processes on different hosts differ.
fn default_name(grpc: std::net::SocketAddr) -> String {
    if !grpc.ip().is_unspecified() {
        return grpc.to_string();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| meta::config::name_invalid(name).is_none())
        .unwrap_or_else(|| "host".to_owned());
    format!("{host}:{}", grpc.port())
}

/// Takes the config center's values as of now, waiting for the meta group at most `patience`;
/// answers the revision taken (0 if the meta group did not answer: the process starts on its
/// file's rules, and [`follow`] takes the config once it does).
pub(crate) async fn take_first(meta: &Client, watcher: &Watcher, patience: Duration) -> u64 {
    let key = watcher.key;
    match tokio::time::timeout(patience, meta.config(None)).await {
        Ok(Ok((revision, text))) => match ConfigView::from_json(&text) {
            Ok(view) => {
                watcher.take(&view);
                revision
            }
            Err(error) => {
                tracing::error!(%error, "the meta group sent a config this build does not read");
                0
            }
        },
        Ok(Err(error)) => {
            tracing::warn!(%error, key, "cannot read the config center at start; starting on --flow-rules");
            0
        }
        Err(_) => {
            tracing::warn!(
                key,
                "the config center did not answer at start; starting on --flow-rules"
            );
            0
        }
    }
}

/// What a watching process is and what it applies the key it takes to.
pub(crate) struct Watcher {
    pub(crate) identity: Identity,
    /// The key it takes (`server::config_keys`).
    pub(crate) key: &'static str,
    pub(crate) flow: Arc<FlowSource>,
    pub(crate) metrics: Arc<Metrics>,
}

/// What takes the config center's revisions.
pub(crate) trait TakesConfig: Send + 'static {
    fn take(&self, view: &ConfigView);
}

/// Takes each revision of the config center the meta group pushes after `after`, until the
/// task is aborted.
pub(crate) fn follow(meta: Client, watcher: impl TakesConfig, after: u64) -> JoinHandle<()> {
    tokio::spawn(async move {
        let retry_max = Duration::from_millis(limits::GATEWAY_MAP_WATCH_RETRY_MS_MAX);
        let mut wait = Duration::from_millis(50);
        let mut after = after;
        loop {
            match meta.watch_config(after).await {
                Ok(mut watch) => loop {
                    match watch.next().await {
                        Ok(Some((revision, text))) => {
                            wait = Duration::from_millis(50);
                            match ConfigView::from_json(&text) {
                                Ok(view) => watcher.take(&view),
                                Err(error) => tracing::error!(
                                    revision,
                                    %error,
                                    "the meta group pushed a config this build does not read"
                                ),
                            }
                            after = revision;
                        }
                        Ok(None) => break,
                        Err(error) => {
                            tracing::warn!(%error, "the config watch broke; watching again");
                            break;
                        }
                    }
                },
                Err(error) => {
                    tracing::warn!(%error, "cannot watch the meta group's config; retrying");
                }
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(retry_max);
        }
    })
}

impl TakesConfig for Watcher {
    /// Applies what `view` holds for this process.
    fn take(&self, view: &ConfigView) {
        let (key, identity) = (self.key, &self.identity);
        let chosen = view.keys.get(key).map(|entry| {
            let (value, gray) = entry.value_for(key, &identity.name, &identity.labels);
            (value, gray, entry.version)
        });
        match self.flow.take_config(chosen.map(|(value, ..)| value)) {
            Taken::Unchanged => {}
            Taken::Applied => tracing::info!(
                revision = view.revision,
                key,
                version = chosen.map_or(0, |(_, _, version)| version),
                gray = chosen.is_some_and(|(_, gray, _)| gray),
                "config taken: flow rules in use"
            ),
            Taken::Refused(error) => {
                tracing::error!(
                    revision = view.revision,
                    key,
                    %error,
                    "a config value was refused; the flow rules in use are kept"
                );
                return;
            }
        }
        let (version, gray) = chosen.map_or((0, false), |(_, gray, version)| (version, gray));
        self.metrics.config_taken(view.revision, key, version, gray);
    }
}

/// `serve --config-meta`: where a ledger node reads the config center, and as whom.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct NodeFeedArgs {
    /// Take this node's flow rules from the config center's `flow.node.rules` at these meta
    /// replicas' gRPC addresses (`HOST:PORT`, comma-separated), pushed as they change (over
    /// --flow-rules while it holds them).
    #[arg(long, value_name = "ADDRS", value_delimiter = ',')]
    pub(crate) config_meta: Option<Vec<String>>,
    /// The API key (a file of one line; role `read` is enough) the node presents to the meta
    /// group.
    #[arg(long, value_name = "FILE", requires = "config_meta")]
    config_key_file: Option<std::path::PathBuf>,
    /// Dial the meta group over TLS, trusting this authority (PEM).
    #[arg(long, value_name = "FILE", requires = "config_meta")]
    config_tls_ca: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub(crate) identity: IdentityArgs,
}

impl NodeFeedArgs {
    /// How to reach the meta group, read from the files named (`None` without --config-meta).
    pub(crate) fn access(&self) -> anyhow::Result<Option<(Vec<String>, gateway::GroupAccess)>> {
        meta_access(
            self.config_meta.as_deref(),
            self.config_key_file.as_deref(),
            self.config_tls_ca.as_deref(),
        )
    }
}

/// How to reach the meta group at `addrs` (`None`: not asked to) with the API key in
/// `key_file` and TLS trusting `tls_ca`, as the `--config-*` flags name them.
pub(crate) fn meta_access(
    addrs: Option<&[String]>,
    key_file: Option<&std::path::Path>,
    tls_ca: Option<&std::path::Path>,
) -> anyhow::Result<Option<(Vec<String>, gateway::GroupAccess)>> {
    use anyhow::Context;
    let Some(addrs) = addrs else {
        return Ok(None);
    };
    let api_key = match key_file {
        Some(path) => Some(
            replication::secret_file::read_text(path)
                .context("--config-key-file")?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    let tls_ca_pem = match tls_ca {
        Some(path) => Some(
            std::fs::read(path)
                .with_context(|| format!("reading --config-tls-ca {}", path.display()))?,
        ),
        None => None,
    };
    let access = gateway::GroupAccess {
        api_key,
        tls_ca_pem,
        ..Default::default()
    };
    Ok(Some((addrs.to_vec(), access)))
}
