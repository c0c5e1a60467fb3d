//! A process's watch on the config center (`fincore.v1.Meta`'s `WatchConfig`): each revision
//! the meta group pushes is taken at once, with this process's name and labels deciding
//! whether a staged gray release reaches it. Today the key taken is `flow.rules`: the
//! flow-control rules, applied to the process's gate (`flow_rules::FlowSource`).
//!
//! A broken watch (a meta replica stopped, a partition) is opened again, on any meta replica,
//! after the last revision taken, with a doubling wait bounded by
//! `GATEWAY_MAP_WATCH_RETRY_MS_MAX`. A value this process refuses is logged and the rules in
//! use are kept. Must not change the config center (operators do, with `fincore config`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use client::Client;
use meta::ConfigView;
use server::config_keys;
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
    /// stable percentage hashes). Default: its gRPC listen address.
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
    /// The identity, named `default_name` unless --name says otherwise.
    pub(crate) fn identity(&self, default_name: &str) -> anyhow::Result<Identity> {
        let name = self.name.clone().unwrap_or_else(|| default_name.to_owned());
        if let Some(why) = meta::config::name_invalid(&name) {
            anyhow::bail!("--name: {why}");
        }
        Ok(Identity {
            name,
            labels: self.labels.iter().cloned().collect(),
        })
    }
}

/// Takes each revision of the config center the meta group pushes, until the task is aborted.
pub(crate) fn follow(
    meta: Client,
    identity: Identity,
    flow: Arc<FlowSource>,
    metrics: Arc<Metrics>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let retry_max = Duration::from_millis(limits::GATEWAY_MAP_WATCH_RETRY_MS_MAX);
        let mut wait = Duration::from_millis(50);
        let mut after = 0;
        loop {
            match meta.watch_config(after).await {
                Ok(mut watch) => loop {
                    match watch.next().await {
                        Ok(Some((revision, text))) => {
                            wait = Duration::from_millis(50);
                            match ConfigView::from_json(&text) {
                                Ok(view) => take(&view, &identity, &flow, &metrics),
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

/// Applies what `view` holds for this process.
fn take(view: &ConfigView, identity: &Identity, flow: &FlowSource, metrics: &Metrics) {
    let key = config_keys::FLOW_RULES;
    let chosen = view.keys.get(key).map(|entry| {
        let (value, gray) = entry.value_for(key, &identity.name, &identity.labels);
        (value, gray, entry.version)
    });
    match flow.take_config(chosen.map(|(value, ..)| value)) {
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
    metrics.config_taken(view.revision, key, version, gray);
}
