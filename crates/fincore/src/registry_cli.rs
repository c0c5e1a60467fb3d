//! `fincore registry`: run a service registry (`serve`, relaying the config center to watchers
//! with `--config-meta`), publish a record and hold it while the command runs (`publish`),
//! print a key's pushed sets (`subscribe`) or a config key's values (`watch`), drain a host
//! (`drain-host`). docs/registry.md describes the registry.
//!
//! Owns the command line and how pushes are printed; the registry and its client are the
//! `registry` crate's, the listener `server::registry_node`'s.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use registry::client::{ClientConfig, RegistryClient};
use registry::proto;
use server::auth::Auth;
use server::registry_node::RegistryNode;

#[derive(Debug, clap::Args)]
pub struct RegistryArgs {
    #[command(subcommand)]
    command: RegistryCommand,
}

#[derive(Debug, clap::Subcommand)]
enum RegistryCommand {
    /// Run a registry: every role (session, data, meta) in this one process.
    Serve(ServeArgs),
    /// Publish a record under a data key and keep it published until stopped (Ctrl-C).
    Publish(PublishArgs),
    /// Subscribe to a data key and print each set pushed, as one JSON line.
    Subscribe(SubscribeArgs),
    /// Watch a config key through the registry and print each value pushed, as one JSON line.
    Watch(WatchArgs),
    /// Remove every record published from one IP address (role admin).
    DrainHost(DrainArgs),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// gRPC address to listen on (the registry's protocol).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7800")]
    listen: SocketAddr,
    /// HTTP address to listen on (`/metrics`, `/healthz`; open, as every process's are).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7880")]
    http: SocketAddr,
    /// The API keys file callers are checked against (made by `fincore keys create`): `read`
    /// to subscribe, `write` to publish, `admin` to drain a host. Read again on SIGHUP.
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "insecure_no_auth"
    )]
    keys: Option<PathBuf>,
    /// Serve without authentication. Refused unless --listen is a loopback address.
    #[arg(long, conflicts_with = "keys")]
    insecure_no_auth: bool,
    /// Shards of the registry's data (slots).
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = clap::value_parser!(u16).range(1..=4096))]
    slots: u16,
    /// Seconds between reconciliations (each subscription's acknowledged version compared with
    /// its key's).
    #[arg(long, value_name = "SECONDS", default_value_t = limits::REGISTRY_RECONCILE_SECONDS_DEFAULT, value_parser = clap::value_parser!(u64).range(1..=3600))]
    reconcile_seconds: u64,
    /// Fault injection for tests: drop one push in N on purpose (0: none).
    #[arg(long, value_name = "N", default_value_t = 0, hide = true)]
    drop_pushes_one_in: u32,
    /// Serve watchers: relay the config center of the meta group at these replicas' gRPC
    /// addresses (`HOST:PORT`, comma-separated), each change pushed to the watchers of its key.
    #[arg(long, value_name = "ADDRS", value_delimiter = ',')]
    config_meta: Option<Vec<String>>,
    /// The API key (a file of one line; role `read` is enough) the registry presents to the
    /// meta group.
    #[arg(long, value_name = "FILE", requires = "config_meta")]
    config_key_file: Option<PathBuf>,
    /// Dial the meta group over TLS, trusting this authority (PEM).
    #[arg(long, value_name = "FILE", requires = "config_meta")]
    config_tls_ca: Option<PathBuf>,
    /// With --config-meta (and required by it): the config keys watchers may watch, by prefix
    /// (repeatable, for example `app.`): the registry's readers see those keys only.
    #[arg(long = "watch-prefix", value_name = "PREFIX", requires = "config_meta")]
    watch_prefixes: Vec<String>,
    /// Serve gRPC over TLS with this certificate (PEM; the registry's first, then any
    /// intermediates), for example `api.pem` from `fincore certs --api-names`.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Mutual TLS: demand of every client a certificate issued by this authority (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
}

/// Where a client finds the registry and who it is.
#[derive(Debug, clap::Args)]
struct ClientArgs {
    /// Registry addresses (`HOST:PORT`, comma-separated), tried in turn.
    #[arg(
        long,
        value_name = "ADDRS",
        value_delimiter = ',',
        default_value = "127.0.0.1:7800"
    )]
    registry: Vec<String>,
    /// An API key (`read` to subscribe, `write` to publish, `admin` to drain).
    #[arg(
        long,
        value_name = "KEY",
        env = "FINCORE_API_KEY",
        hide_env_values = true
    )]
    api_key: Option<String>,
    /// This client's zone.
    #[arg(long, value_name = "ZONE", default_value = "default")]
    zone: String,
    /// This client's id (default: `cli-`, the process id and a random suffix).
    #[arg(long, value_name = "ID")]
    client_id: Option<String>,
    /// Dial the registry over TLS, trusting this authority (PEM).
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
}

impl ClientArgs {
    fn start(&self) -> anyhow::Result<RegistryClient> {
        let config = ClientConfig {
            endpoints: self.registry.clone(),
            api_key: self.api_key.clone(),
            client_id: self.client_id.clone().unwrap_or_else(|| {
                format!("cli-{}-{:08x}", std::process::id(), rand::random::<u32>())
            }),
            zone: self.zone.clone(),
            tls_ca_pem: match &self.tls_ca {
                Some(path) => Some(
                    std::fs::read(path)
                        .with_context(|| format!("reading --tls-ca {}", path.display()))?,
                ),
                None => None,
            },
        };
        RegistryClient::start(config).map_err(|refusal| anyhow::anyhow!("--{refusal}"))
    }
}

/// A data key on the command line.
#[derive(Debug, clap::Args)]
struct KeyArgs {
    /// The data id (for example the service's name).
    #[arg(long, value_name = "ID")]
    data_id: String,
    /// The tenant.
    #[arg(long, value_name = "ID", default_value = "default")]
    instance_id: String,
    #[arg(long, value_name = "GROUP", default_value = "default")]
    group: String,
}

impl KeyArgs {
    fn key(&self) -> proto::DataKey {
        proto::DataKey {
            instance_id: self.instance_id.clone(),
            group: self.group.clone(),
            data_id: self.data_id.clone(),
        }
    }
}

#[derive(Debug, clap::Args)]
struct PublishArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(flatten)]
    key: KeyArgs,
    /// The address published (for example `10.0.0.7:8080`).
    #[arg(long, value_name = "ADDRESS")]
    address: String,
    /// An attribute, `KEY=VALUE` (repeat for more).
    #[arg(long = "attribute", value_name = "KEY=VALUE")]
    attributes: Vec<String>,
    /// The registration's id (default: the address).
    #[arg(long, value_name = "ID")]
    registration_id: Option<String>,
}

#[derive(Debug, clap::Args)]
struct SubscribeArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(flatten)]
    key: KeyArgs,
    /// See only publishers in this client's zone (`zone`), or all (`global`).
    #[arg(long, value_name = "SCOPE", default_value = "global", value_parser = ["zone", "global"])]
    scope: String,
    /// Stop after this many pushes (default: run until stopped).
    #[arg(long, value_name = "N")]
    pushes: Option<u64>,
}

#[derive(Debug, clap::Args)]
struct WatchArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The config key.
    #[arg(long, value_name = "KEY")]
    key: String,
    /// Stop after this many values (default: run until stopped).
    #[arg(long, value_name = "N")]
    values: Option<u64>,
}

#[derive(Debug, clap::Args)]
struct DrainArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The host whose records are removed.
    #[arg(long, value_name = "IP")]
    ip: String,
    /// How long the host's registrations are refused after (0: the registry's default, 300).
    #[arg(long, value_name = "SECONDS", default_value_t = 0)]
    hold_seconds: u64,
}

pub fn run(args: &RegistryArgs) -> anyhow::Result<ExitCode> {
    match &args.command {
        RegistryCommand::Serve(args) => serve(args),
        RegistryCommand::Publish(args) => publish(args),
        RegistryCommand::Subscribe(args) => subscribe(args),
        RegistryCommand::Watch(args) => watch(args),
        RegistryCommand::DrainHost(args) => drain(args),
    }
}

fn serve(args: &ServeArgs) -> anyhow::Result<ExitCode> {
    let _logs = telemetry::init_logging(&telemetry::trace::TraceOptions::off("fincore-registry"))?;
    let auth = if args.insecure_no_auth {
        crate::keys::open_on_loopback(&[("--listen", args.listen), ("--http", args.http)])?
    } else {
        crate::keys::serve_auth(args.keys.as_deref().expect("clap requires --keys"))?
    };
    let settings = registry::Settings {
        slots: usize::from(args.slots),
        reconcile: Duration::from_secs(args.reconcile_seconds),
        drop_pushes_one_in: args.drop_pushes_one_in,
        watch_prefixes: args.watch_prefixes.clone(),
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(certificate), Some(key)) => Some(
            server::client_tls::ClientTls::load(server::client_tls::ClientTlsFiles {
                certificate: certificate.clone(),
                key: key.clone(),
                client_ca: args.tls_client_ca.clone(),
            })
            .context("--tls-cert")?,
        ),
        _ => None,
    };
    if args.config_meta.is_some() && args.watch_prefixes.is_empty() {
        anyhow::bail!(
            "--config-meta needs --watch-prefix: which config keys this registry's readers may watch"
        );
    }
    let config_meta = crate::config_feed::meta_access(
        args.config_meta.as_deref(),
        args.config_key_file.as_deref(),
        args.config_tls_ca.as_deref(),
    )?;
    let runtime = crate::serve::runtime()?;
    runtime.block_on(async move {
        let stop = crate::serve::stop_signal()?;
        if let Auth::Keys(store) = &auth {
            crate::keys::reload_on_sighup(Arc::clone(store));
        }
        let security = match (&auth, &args.tls_client_ca, &args.tls_cert) {
            (Auth::Open, _, None) => "no authentication",
            (Auth::Open, _, Some(_)) => "no authentication, TLS",
            (Auth::Keys(_), None, None) => "API keys",
            (Auth::Keys(_), None, Some(_)) => "API keys, TLS",
            (Auth::Keys(_), Some(_), _) => "API keys, mutual TLS",
        };
        let node = RegistryNode::start(args.listen, args.http, auth, settings, tls).await?;
        let relay = match config_meta {
            Some((addrs, access)) => {
                let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
                let meta = gateway::map_feed::meta_client(&addrs, &access)
                    .context("--config-meta: dialling the meta group")?;
                let relay = RegistryRelay(Arc::clone(node.registry()));
                Some(crate::config_feed::follow(meta, relay, 0))
            }
            None => None,
        };
        println!(
            "fincore: gRPC listening on {} (registry, {security})",
            node.grpc_addr()
        );
        println!("fincore: HTTP listening on http://{}", node.http_addr());
        stop.await;
        if let Some(relay) = relay {
            relay.abort();
        }
        node.stop().await;
        Ok(ExitCode::SUCCESS)
    })
}

/// The config center as a registry relays it: a gray release chooses a client by its client
/// id and by its zone (as the label `zone`).
#[derive(Debug)]
struct RelayedConfig(meta::ConfigView);

impl registry::ConfigValues for RelayedConfig {
    fn revision(&self) -> u64 {
        self.0.revision
    }

    fn value_for(&self, key: &str, client: &str, zone: &str) -> Option<registry::WatchedValue> {
        let entry = self.0.keys.get(key)?;
        let (value, gray) = entry.value_for(key, client, &zone_label(zone));
        Some(registry::WatchedValue {
            value: value.to_owned(),
            version: entry.version,
            gray,
            made_at: made_at(entry, gray),
        })
    }

    fn made_at(&self, key: &str, client: &str, zone: &str) -> Option<u64> {
        let entry = self.0.keys.get(key)?;
        let (_, gray) = entry.value_for(key, client, &zone_label(zone));
        Some(made_at(entry, gray))
    }
}

/// The labels a gray release chooses a registry client by: its zone.
fn zone_label(zone: &str) -> std::collections::BTreeMap<String, String> {
    std::collections::BTreeMap::from([("zone".to_owned(), zone.to_owned())])
}

/// The revision that made the value a client takes (the gray release's, or the value in use's).
fn made_at(entry: &meta::config::KeyView, gray: bool) -> u64 {
    match (&entry.gray, gray) {
        (Some(staged), true) => staged.revision,
        _ => entry.revision,
    }
}

/// Hands each revision of the config center to the registry's watchers.
struct RegistryRelay(Arc<registry::Registry>);

impl crate::config_feed::TakesConfig for RegistryRelay {
    fn take(&self, view: &meta::ConfigView) {
        tracing::info!(
            revision = view.revision,
            "config taken: relayed to watchers"
        );
        self.0.relay_config(Arc::new(RelayedConfig(view.clone())));
    }
}

fn parse_attributes(attributes: &[String]) -> anyhow::Result<Vec<proto::Attribute>> {
    attributes
        .iter()
        .map(|text| {
            let (key, value) = text
                .split_once('=')
                .with_context(|| format!("--attribute {text:?}: expected KEY=VALUE"))?;
            Ok(proto::Attribute {
                key: key.to_owned(),
                value: value.to_owned(),
            })
        })
        .collect()
}

fn publish(args: &PublishArgs) -> anyhow::Result<ExitCode> {
    let record = proto::Record {
        address: args.address.clone(),
        attributes: parse_attributes(&args.attributes)?,
    };
    let registration_id = args.registration_id.clone().unwrap_or_else(|| {
        args.address.replace(
            |c: char| !c.is_ascii_alphanumeric() && !"-_.:@/".contains(c),
            "_",
        )
    });
    let runtime = crate::serve::runtime()?;
    runtime.block_on(async move {
        let stop = crate::serve::stop_signal()?;
        tokio::pin!(stop);
        let client = args.client.start()?;
        // Stopped while no registry answers: nothing was published, nothing to withdraw.
        tokio::select! {
            registered = client.register(&registration_id, args.key.key(), record) => {
                registered.context("publishing")?;
            }
            () = &mut stop => return Ok(ExitCode::SUCCESS),
        }
        println!(
            "fincore: published {} under {}/{}/{} as {registration_id}; Ctrl-C withdraws it",
            args.address, args.key.instance_id, args.key.group, args.key.data_id
        );
        stop.await;
        Ok(ExitCode::SUCCESS)
    })
}

fn subscribe(args: &SubscribeArgs) -> anyhow::Result<ExitCode> {
    let scope = if args.scope == "zone" {
        proto::Scope::Zone
    } else {
        proto::Scope::Global
    };
    let runtime = crate::serve::runtime()?;
    runtime.block_on(async move {
        let client = args.client.start()?;
        let mut sets = client
            .subscribe("cli", args.key.key(), scope)
            .await
            .context("subscribing")?;
        let mut printed = 0;
        while args.pushes.is_none_or(|pushes| printed < pushes) {
            if sets.changed().await.is_err() {
                anyhow::bail!("the registry client stopped");
            }
            let Some(set) = sets.borrow_and_update().clone() else {
                continue;
            };
            println!("{}", set_json(&set));
            printed += 1;
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn watch(args: &WatchArgs) -> anyhow::Result<ExitCode> {
    let runtime = crate::serve::runtime()?;
    runtime.block_on(async move {
        let client = args.client.start()?;
        let mut values = client.watch("cli", &args.key).await.context("watching")?;
        let mut printed = 0;
        while args.values.is_none_or(|values| printed < values) {
            if values.changed().await.is_err() {
                anyhow::bail!("the registry client stopped");
            }
            let Some(value) = values.borrow_and_update().clone() else {
                continue;
            };
            let line = serde_json::json!({
                "key": args.key,
                "present": value.present,
                "value": value.value,
                "version": value.version,
                "gray": value.gray,
                "revision": value.revision,
            });
            println!("{line}");
            printed += 1;
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// One pushed set as a JSON line: `{"version":V,"records":[{"address":…,"zone":…,…}]}`.
fn set_json(set: &registry::client::PushedSet) -> String {
    let records: Vec<serde_json::Value> = set
        .records
        .iter()
        .map(|published| {
            let record = published.record.clone().unwrap_or_default();
            let attributes: serde_json::Map<String, serde_json::Value> = record
                .attributes
                .into_iter()
                .map(|attribute| (attribute.key, attribute.value.into()))
                .collect();
            serde_json::json!({
                "address": record.address,
                "attributes": attributes,
                "zone": published.zone,
                "client_id": published.client_id,
                "registration_id": published.registration_id,
            })
        })
        .collect();
    serde_json::json!({"version": set.version, "records": records}).to_string()
}

fn drain(args: &DrainArgs) -> anyhow::Result<ExitCode> {
    let runtime = crate::serve::runtime()?;
    runtime.block_on(async move {
        let client = args.client.start()?;
        let removed = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match client.drain_host(&args.ip, args.hold_seconds).await {
                    Err(registry::client::ClientError::NotConnected) => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    other => return other,
                }
            }
        })
        .await
        .context("no registry answered within 30 s")??;
        println!(
            "fincore: removed {removed} records published from {}",
            args.ip
        );
        Ok(ExitCode::SUCCESS)
    })
}
