//! `fincore gateway`: serve the node's client API (gRPC and HTTP/JSON, the same paths and
//! document) over the ledger groups of a cluster map, until Ctrl-C or SIGTERM. Stateless: run
//! as many as you like. The routing is the `gateway` crate's; this module reads the flags and
//! files and announces the listeners as a node does.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use cluster::ClusterMap;
use gateway::{Gateway, GroupAccess, Groups, map_feed};
use server::client_tls::{self, ClientTls, ClientTlsFiles};
use server::{Auth, ClientServers, ClientServing};

#[derive(Debug, clap::Args)]
pub struct GatewayArgs {
    /// The cluster map (JSON, as `docs/placement.md` describes): the ledger groups, their
    /// members' addresses and which group owns each slot. Reread on SIGHUP.
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "meta",
        conflicts_with = "meta"
    )]
    map: Option<PathBuf>,
    /// Take the cluster map from the meta group at these replicas' gRPC addresses
    /// (`HOST:PORT`, comma-separated; dialled with --group-key-file and the --group-tls-*
    /// settings), and route by each newer map it pushes. Waits at start (at most 60 s) until
    /// the meta group holds a map.
    #[arg(long, value_name = "ADDRS", value_delimiter = ',')]
    meta: Option<Vec<String>>,
    /// gRPC listen address (port 0: any free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7700")]
    grpc: SocketAddr,
    /// HTTP/JSON listen address (port 0: any free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7780")]
    http: SocketAddr,
    /// The API keys file callers are checked against (made by `fincore keys create`), with
    /// the roles a node gives them. Read at start and again on SIGHUP.
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "insecure_no_auth"
    )]
    keys: Option<PathBuf>,
    /// Serve without authentication. Refused unless both listeners are on loopback.
    #[arg(long, conflicts_with = "keys")]
    insecure_no_auth: bool,
    /// A file holding the API key the gateway presents to the groups (one line; a key the
    /// groups' keys files hold with the role `admin` or `writer`).
    #[arg(long, value_name = "FILE")]
    group_key_file: Option<PathBuf>,
    /// Dial the groups over TLS, trusting this authority (PEM) for their client listeners'
    /// certificates.
    #[arg(long, value_name = "FILE")]
    group_tls_ca: Option<PathBuf>,
    /// The name the groups' certificates carry, when it is not the host dialled.
    #[arg(long, value_name = "NAME", requires = "group_tls_ca")]
    group_tls_domain: Option<String>,
    /// Present this client certificate (PEM) to every group: the gateway's identity, which
    /// groups serving `--tls-client-ca` demand (e.g. `client-gateway-1.pem` from `fincore certs
    /// --client-names gateway-1`). Needs --group-tls-ca and --group-tls-key.
    #[arg(
        long,
        value_name = "FILE",
        requires = "group_tls_ca",
        requires = "group_tls_key"
    )]
    group_tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --group-tls-cert.
    #[arg(long, value_name = "FILE", requires = "group_tls_cert")]
    group_tls_key: Option<PathBuf>,
    /// Abort the cross-group sagas (any gateway's) still open after this many seconds: this
    /// gateway's resolver cancels them in their home group, then everywhere, every 2 s.
    #[arg(long, value_name = "SECONDS", default_value_t = limits::GATEWAY_SAGA_OPEN_SECONDS_MAX,
        value_parser = clap::value_parser!(u64).range(1..=86_400))]
    saga_open_seconds: u64,
    /// Answer a cross-group transfer `outcome_pending` when its saga has not ended after this
    /// many milliseconds (the saga goes on; the caller polls `POST /v1/transfers/outcomes`).
    #[arg(long, value_name = "MS", default_value_t = limits::GATEWAY_SAGA_DEADLINE_MS_DEFAULT,
        value_parser = clap::value_parser!(u64).range(0..=limits::GATEWAY_SAGA_DEADLINE_MS_MAX))]
    saga_deadline_ms: u64,
    /// Serve the gateway's own listeners over TLS with this certificate (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Flow control's rules (JSON; `docs/flow-control.md`): rate limits per API and per
    /// caller, pools per request kind, read-only and disabled-API switches. Read at start and
    /// again on SIGHUP. Default: pools of 1,024 requests per kind, no limits.
    #[arg(long, value_name = "FILE")]
    flow_rules: Option<std::path::PathBuf>,
    /// With --meta: who this gateway is to the config center's gray releases.
    #[command(flatten)]
    identity: crate::config_feed::IdentityArgs,
    #[command(flatten)]
    traces: crate::trace_args::TraceArgs,
}

/// Reads a cluster map file, refusing one that is not a valid map (the error names the field).
pub fn read_map(path: &std::path::Path) -> anyhow::Result<ClusterMap> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    ClusterMap::from_json(&bytes).with_context(|| format!("reading {}", path.display()))
}

pub fn run(args: &GatewayArgs) -> anyhow::Result<ExitCode> {
    let _logs = telemetry::init_logging(&args.traces.options("fincore-gateway"))?;
    let api_key = match &args.group_key_file {
        Some(path) => Some(
            replication::secret_file::read_text(path)
                .context("--group-key-file")?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    let tls_ca_pem = match &args.group_tls_ca {
        Some(path) => Some(
            std::fs::read(path)
                .with_context(|| format!("reading --group-tls-ca {}", path.display()))?,
        ),
        None => None,
    };
    let tls_identity_pem = match (&args.group_tls_cert, &args.group_tls_key) {
        (Some(certificate), Some(key)) => Some(
            client_tls::read_client_identity(certificate, key)
                .context("--group-tls-cert/--group-tls-key")?,
        ),
        _ => None,
    };
    let access = GroupAccess {
        api_key,
        tls_ca_pem,
        tls_domain: args.group_tls_domain.clone(),
        tls_identity_pem,
    };
    let auth = if args.insecure_no_auth {
        crate::keys::open_on_loopback(&[("--grpc", args.grpc), ("--http", args.http)])?
    } else {
        let keys = args.keys.as_deref().expect("clap requires --keys");
        crate::keys::serve_auth(keys)?
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(certificate), Some(key)) => Some(
            ClientTls::load(ClientTlsFiles {
                certificate: certificate.clone(),
                key: key.clone(),
                client_ca: None,
            })
            .context("--tls-cert/--tls-key")?,
        ),
        _ => None,
    };
    let serving = ClientServing {
        grpc_addr: args.grpc,
        http_addr: args.http,
        auth,
        flow: crate::flow_rules::gate(args.flow_rules.as_deref())?,
        tls,
    };
    let runtime = crate::serve::runtime()?;
    runtime.block_on(async move {
        let stop = crate::serve::stop_signal()?;
        if let Auth::Keys(store) = &serving.auth {
            crate::keys::reload_on_sighup(Arc::clone(store));
        }
        let (map, meta) = match (&args.map, &args.meta) {
            (Some(path), _) => (read_map(path)?, None),
            (None, Some(addrs)) => {
                let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
                let meta = map_feed::meta_client(&addrs, &access)
                    .context("--meta: dialling the meta group")?;
                let patience =
                    std::time::Duration::from_secs(limits::GATEWAY_META_FIRST_MAP_SECONDS_MAX);
                let map = map_feed::first_map(&meta, patience)
                    .await
                    .context("--meta: reading the cluster map from the meta group")?;
                (map, Some(meta))
            }
            (None, None) => unreachable!("clap requires --map or --meta"),
        };
        let groups = Groups::connect(&map, &access).context("connecting to the groups")?;
        let epoch = map.epoch();
        let group_count = map.groups().len();
        let gateway = Arc::new(
            Gateway::new(map, groups)
                .with_saga_deadline(std::time::Duration::from_millis(args.saga_deadline_ms))
                .with_flow(Arc::clone(&serving.flow)),
        );
        let metrics = Arc::clone(server::LedgerApi::metrics(gateway.as_ref()));
        let config_meta = meta.clone();
        let feed = match (meta, &args.map) {
            (Some(meta), _) => Some(map_feed::follow(Arc::clone(&gateway), meta, access)),
            (None, Some(path)) => {
                reload_map_on_sighup(Arc::clone(&gateway), path.clone(), access);
                None
            }
            (None, None) => None,
        };
        let resolver =
            gateway.start_resolver(std::time::Duration::from_secs(args.saga_open_seconds));
        let servers = ClientServers::start(
            &serving,
            Arc::clone(&gateway) as _,
            Arc::clone(&gateway) as _,
            gateway,
        )
        .await
        .context("starting the gateway's listeners")?;
        let (flow_line, flow_source) =
            crate::flow_rules::line_and_reload(&serving.flow, args.flow_rules.clone());
        // With a meta group, the config center's rules are taken before the listeners are
        // announced, and followed from there.
        let config_feed = match config_meta {
            Some(meta) => {
                let identity = args.identity.identity(servers.grpc_addr())?;
                let patience =
                    std::time::Duration::from_secs(limits::GATEWAY_META_FIRST_CONFIG_SECONDS_MAX);
                let line = format!(
                    "fincore: config center: flow.rules taken from the meta group as {} (labels {:?}), over --flow-rules while it holds them",
                    identity.name, identity.labels
                );
                let watcher = crate::config_feed::Watcher {
                    identity,
                    key: server::config_keys::FLOW_RULES,
                    flow: Arc::clone(&flow_source),
                    metrics,
                };
                let revision = crate::config_feed::take_first(&meta, &watcher, patience).await;
                let feed = crate::config_feed::follow(meta, watcher, revision);
                Some((feed, line))
            }
            None => None,
        };
        crate::serve::announce_client_listeners(
            servers.grpc_addr(),
            servers.http_addr(),
            serving.tls.is_some(),
        );
        let source = if args.meta.is_some() {
            "from the meta group, followed as it changes"
        } else {
            "from --map, reread on SIGHUP"
        };
        println!(
            "fincore: gateway over {group_count} groups (cluster map epoch {epoch}, {source})"
        );
        println!("{flow_line}");
        let config_feed = config_feed.map(|(feed, line)| {
            println!("{line}");
            feed
        });
        std::io::stdout().flush().ok();
        stop.await;
        println!("fincore: stopping (finishing requests in progress)");
        drop(resolver);
        if let Some(config_feed) = config_feed {
            config_feed.abort();
        }
        if let Some(feed) = feed {
            feed.abort();
        }
        servers.shutdown().await;
        println!("fincore: stopped cleanly");
        Ok(ExitCode::SUCCESS)
    })
}

/// Rereads the map file on every SIGHUP and routes by it if [`Gateway::reload`] takes it
/// (newer epoch, no slot moved); logs what it did either way.
fn reload_map_on_sighup(gateway: Arc<Gateway>, path: PathBuf, access: GroupAccess) {
    crate::keys::on_sighup("the cluster map is", move || {
        let reloaded = read_map(&path).and_then(|map| {
            let groups = Groups::connect(&map, &access)?;
            Ok(gateway.reload(map, groups)?)
        });
        match reloaded {
            Ok(epoch) => tracing::info!(
                "routing by cluster map epoch {epoch} from {}",
                path.display()
            ),
            Err(error) => tracing::error!(
                "kept cluster map epoch {}: {}: {error:#}",
                gateway.map().epoch(),
                path.display()
            ),
        }
    });
}
