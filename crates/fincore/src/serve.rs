//! `fincore serve`: run one node (a replica of its group, or with `--meta` of the meta group)
//! until Ctrl-C or SIGTERM, then stop cleanly. How a start enters its group (`--bootstrap`, `--join`, or a
//! restart on the node's own data) is checked by `replication::membership`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use std::collections::BTreeMap;

use replication::PeerNode;
use replication::data_dir::DEV_PEER_CERTIFICATES_DIR;
use replication::membership::{Entry, GroupId};
use server::client_tls::{ClientTls, ClientTlsFiles};
use server::{Auth, Node, NodeConfig, PeerSecurity};
use telemetry::trace::TraceOptions;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Data directory (created if absent).
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// This node's id in its replica group.
    #[arg(long, default_value_t = 1)]
    node_id: u64,
    /// With --bootstrap: the initial members of the new group, this node included:
    /// `ID=GRPC_ADDR/HTTP_ADDR/PEER_ADDR`, comma-separated (e.g.
    /// `1=127.0.0.1:7700/127.0.0.1:7780/127.0.0.1:7790,2=...`; HTTP may be left empty). Default:
    /// a group of one. Otherwise unused (the members are in the replica's log).
    #[arg(long, value_name = "PEERS", value_parser = parse_peers)]
    peers: Option<BTreeMap<u64, PeerNode>>,
    #[command(flatten)]
    membership: MembershipArgs,
    /// How this node reaches some peers' peer listeners when not at the address the group
    /// records (a local proxy or sidecar): `ID=ADDR`, comma-separated.
    #[arg(long, value_name = "ROUTES", value_parser = parse_routes)]
    peer_routes: Option<BTreeMap<u64, String>>,
    /// The directory of this node's peer certificates (`ca.pem`, `node-N.pem`, `node-N.key`,
    /// as `fincore certs` writes them; the node's certificate must name it as node N of its
    /// group). Default: DATA_DIR/peer-tls.
    #[arg(long, value_name = "DIR", conflicts_with = "insecure_peers")]
    peer_certs: Option<PathBuf>,
    /// Let the replicas talk plaintext on --peer: anyone who reaches it can speak for a member
    /// of the group (forge votes, log entries, snapshots). Logs a warning.
    #[arg(long)]
    insecure_peers: bool,
    #[command(flatten)]
    listen: ListenArgs,
    /// The API keys file (made by `fincore keys create`). Default: DATA_DIR/keys.json. Read at
    /// start and again on SIGHUP.
    #[arg(long, value_name = "FILE", conflicts_with = "insecure_no_auth")]
    keys: Option<PathBuf>,
    /// Serve the client APIs without authentication (anyone who can connect may write and
    /// change membership). Refused unless every listener is on loopback.
    #[arg(long)]
    insecure_no_auth: bool,
    /// Stop, as on SIGTERM, once the process PID is no longer this one's parent: how `fincore
    /// dev` leaves no node behind when it is killed with -9 (it cannot stop them itself then).
    #[arg(long, value_name = "PID", hide = true)]
    parent_pid: Option<u32>,
    /// Serve the client listeners (--grpc and --http) over TLS with this certificate (PEM: the
    /// node's certificate, then any intermediates; it must name the host clients dial). Give
    /// every replica of the group one, so that clients sent to the leader reach it alike.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Mutual TLS on the client listeners: demand of every client (a gateway, say) a
    /// certificate issued by this authority (PEM; `api-ca.pem` from `fincore certs
    /// --client-names`); a connection without one fails its handshake. API keys still decide
    /// what a client may do. Needs --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Run a replica of the meta group (it keeps the cluster map: groups, members, the slot
    /// table; served as `fincore.v1.Meta` on --grpc) instead of a ledger replica. --http is
    /// not served; every other flag means what it means for a ledger replica.
    #[arg(long)]
    meta: bool,
    /// A ledger node taking its flow rules from the config center.
    #[command(flatten)]
    config_feed: crate::config_feed::NodeFeedArgs,
    #[command(flatten)]
    traces: crate::trace_args::TraceArgs,
}

/// How a start of `serve` enters its group. Without either flag the data directory must
/// already hold this node's replica; an empty one is refused.
#[derive(Debug, Clone, clap::Args)]
pub struct MembershipArgs {
    /// Create a new replica group on this empty data directory, with the members in --peers
    /// (default: this node alone), and print its group id. Refused on a directory that already
    /// holds a replica: a group is created once, so drop the flag after the first start.
    #[arg(long, conflicts_with = "join")]
    bootstrap: bool,
    /// With --bootstrap: the new group's id (32 hex digits). Default: the group this node's
    /// peer certificate names (with --insecure-peers: a new random id).
    #[arg(long, value_name = "GROUP_ID", requires = "bootstrap")]
    group: Option<GroupId>,
    /// Become a member of group GROUP_ID on this empty data directory: the node waits until
    /// the group's leader adds it (`fincore admin add-replica`; it catches up as a learner
    /// before it may vote), or until the group starts if it is one of the initial members the
    /// bootstrap listed. Harmless on a directory of that group; refused on another group's.
    #[arg(long, value_name = "GROUP_ID")]
    join: Option<GroupId>,
}

impl MembershipArgs {
    fn entry(&self) -> Entry {
        match (&self.join, self.bootstrap) {
            (Some(group), _) => Entry::Join {
                group: group.clone(),
            },
            (None, true) => Entry::Bootstrap {
                group: self.group.clone(),
            },
            (None, false) => Entry::Resume,
        }
    }
}

fn parse_routes(text: &str) -> Result<BTreeMap<u64, String>, String> {
    let mut routes = BTreeMap::new();
    for part in text.split(',').filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?}: expected ID=ADDR"))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| format!("{id:?} is not a node id (an unsigned integer)"))?;
        addr.parse::<SocketAddr>()
            .map_err(|_| format!("{addr:?} is not an address (HOST:PORT)"))?;
        routes.insert(id, addr.to_string());
    }
    Ok(routes)
}

pub(crate) fn parse_peers(text: &str) -> Result<BTreeMap<u64, PeerNode>, String> {
    let mut peers = BTreeMap::new();
    for part in text.split(',').filter(|p| !p.is_empty()) {
        let expected = || format!("{part:?}: expected ID=GRPC_ADDR/HTTP_ADDR/PEER_ADDR");
        let (id, addrs) = part.split_once('=').ok_or_else(expected)?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| format!("{id:?} is not a node id (an unsigned integer)"))?;
        let [grpc, http, peer] = addrs
            .split('/')
            .collect::<Vec<_>>()
            .try_into()
            .map_err(|_| expected())?;
        for (name, addr) in [("gRPC", grpc), ("HTTP", http), ("peer", peer)] {
            if name == "HTTP" && addr.is_empty() {
                continue;
            }
            addr.parse::<SocketAddr>()
                .map_err(|_| format!("node {id}: {addr:?} is not a {name} address (HOST:PORT)"))?;
        }
        if peers
            .insert(
                id,
                PeerNode {
                    grpc: grpc.to_string(),
                    http: http.to_string(),
                    peer: peer.to_string(),
                },
            )
            .is_some()
        {
            return Err(format!("node {id} is listed twice"));
        }
    }
    if peers.is_empty() {
        return Err("no peers given".into());
    }
    Ok(peers)
}

#[derive(Debug, clap::Args)]
pub struct ListenArgs {
    /// gRPC listen address (port 0: any free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7700")]
    pub(crate) grpc: SocketAddr,
    /// HTTP/JSON listen address (port 0: any free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7780")]
    pub(crate) http: SocketAddr,
    /// Peer listen address: where the group's other replicas send Raft messages (port 0: any
    /// free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7790")]
    pub(crate) peer: SocketAddr,
    /// Requests that may queue for the node's pipeline before new ones are answered "busy".
    #[arg(
        long,
        default_value_t = limits::SERVER_QUEUE_REQUESTS_DEFAULT as u64,
        value_parser = clap::value_parser!(u64).range(1..=limits::SERVER_QUEUE_REQUESTS_MAX as u64)
    )]
    pub(crate) queue_depth: u64,
    /// Flow control's rules (JSON: rate limits per API and per caller, pools per request kind,
    /// read-only and disabled-API switches; `docs/flow-control.md`). Read at start and again
    /// on SIGHUP. Default: pools of 1,024 requests per kind, no limits.
    #[arg(long, value_name = "FILE")]
    pub(crate) flow_rules: Option<PathBuf>,
    /// Write a snapshot (and purge the log behind it) every this many batches (0: never).
    #[arg(long, default_value_t = limits::RAFT_SNAPSHOT_INTERVAL_ENTRIES_DEFAULT)]
    pub(crate) checkpoint_interval: u64,
    #[command(flatten)]
    pub(crate) capacity: CapacityArgs,
}

/// The ledger's declared capacity. A write that could pass it is refused before it is
/// proposed (HTTP 507, gRPC FAILED_PRECONDITION, naming the limit) and changes nothing.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct CapacityArgs {
    /// Most accounts the ledger may hold. Default: what fits in the share of the memory
    /// available at start planned for accounts (printed at start). Give every replica of a
    /// group the same value.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(0..=limits::LEDGER_ACCOUNTS_MAX))]
    pub(crate) accounts_max: Option<u64>,
    /// Most transfers (plus transfer ids burnt by transient failures) the ledger may hold.
    /// Default: what fits in the share of the memory available at start planned for transfers
    /// (printed at start). Give every replica of a group the same value.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(0..=limits::LEDGER_TRANSFERS_MAX))]
    pub(crate) transfers_max: Option<u64>,
}

/// Bytes of memory available now (Linux: `MemAvailable` in `/proc/meminfo`, else `MemTotal`).
fn memory_available_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| {
        meminfo.lines().find_map(|line| {
            let kib = line.strip_prefix(name)?.strip_prefix(':')?;
            kib.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()
        })
    };
    field("MemAvailable")
        .or_else(|| field("MemTotal"))
        .map(|kib| kib.saturating_mul(1024))
}

/// The capacity to run with: the flags given, the rest derived from the memory available
/// (`limits::LEDGER_MEMORY_PERCENT_DEFAULT` of it, split by
/// `limits::LEDGER_ACCOUNTS_MEMORY_PERCENT_DEFAULT`) shared by `nodes` nodes on this machine,
/// and a line saying where each came from.
pub(crate) fn capacity(args: CapacityArgs, nodes: u64) -> (ledger::Capacity, String) {
    let memory = memory_available_bytes().map(|bytes| bytes / nodes.max(1));
    let derived = match memory {
        Some(bytes) => ledger::Capacity::for_memory(
            bytes / 100 * limits::LEDGER_MEMORY_PERCENT_DEFAULT,
            limits::LEDGER_ACCOUNTS_MEMORY_PERCENT_DEFAULT,
        ),
        None => ledger::Capacity::FORMAT_MAX,
    };
    let capacity = ledger::Capacity {
        accounts_max: args.accounts_max.unwrap_or(derived.accounts_max),
        transfers_max: args.transfers_max.unwrap_or(derived.transfers_max),
    };
    let source = match memory {
        _ if args.accounts_max.is_some() && args.transfers_max.is_some() => "as given".to_string(),
        Some(bytes) => format!("defaults from {} MiB of available memory", bytes >> 20),
        None => "memory unknown (no /proc/meminfo): defaults are the format's maxima".to_string(),
    };
    let line = format!(
        "fincore: ledger capacity accounts_max = {} transfers_max = {} (needs up to {} MiB; {source})",
        capacity.accounts_max,
        capacity.transfers_max,
        capacity.memory_bytes() >> 20
    );
    (capacity, line)
}

pub(crate) fn config(data_dir: PathBuf, listen: &ListenArgs) -> (NodeConfig, String) {
    let (capacity, capacity_line) = capacity(listen.capacity, 1);
    let mut config = NodeConfig {
        queue_depth: listen.queue_depth as usize,
        capacity,
        peer_addr: listen.peer,
        ..NodeConfig::new(data_dir, listen.grpc, listen.http)
    };
    config.replica.snapshot_every_entries = listen.checkpoint_interval;
    (config, capacity_line)
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("fincore-io")
        .build()
        .context("starting the async runtime")
}

/// Registers the stop signals (SIGTERM, Ctrl-C) now and answers a future that resolves on the
/// first. Registered before the node announces its addresses, so that a SIGTERM sent right
/// after the announcement stops it cleanly instead of killing it.
pub(crate) fn stop_signal() -> anyhow::Result<impl Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate =
            signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
        let mut interrupt =
            signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
        Ok(async move {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}

/// How often a node started with `--parent-pid` checks that its parent is still there.
const PARENT_CHECK_MS: u64 = 500;

/// `stop`, or also, with `parent_pid`, the moment the process stops being this one's parent
/// (it exited and this one was re-parented).
async fn stop_or_orphaned(stop: impl Future<Output = ()>, parent_pid: Option<u32>) {
    let Some(parent) = parent_pid else {
        return stop.await;
    };
    let orphaned = async move {
        let mut check = tokio::time::interval(std::time::Duration::from_millis(PARENT_CHECK_MS));
        loop {
            check.tick().await;
            if std::os::unix::process::parent_id() != parent {
                tracing::warn!(
                    "the process that started this node (pid {parent}) is gone; stopping"
                );
                return;
            }
        }
    };
    tokio::select! {
        () = stop => {}
        () = orphaned => {}
    }
}

/// Which group this node serves, or what it waits for.
fn group_line(node: &Node) -> String {
    let id = node.replica().id();
    let group = node
        .group()
        .map_or("(made before group ids)".to_string(), ToString::to_string);
    if node.awaiting_admission() {
        format!(
            "fincore: node {id} waiting to join group {group}: add it from the group with `fincore admin add-replica --addr LEADER_HTTP --id {id} --grpc {} --http {} --peer {}`",
            node.grpc_addr(),
            node.http_addr(),
            node.peer_addr()
        )
    } else {
        format!("fincore: node {id} of group {group}")
    }
}

/// The line that tells how a node authenticates its clients (and starts reloading the keys on
/// SIGHUP).
fn auth_line(auth: &Auth) -> String {
    match auth {
        Auth::Open => "fincore: authentication off (--insecure-no-auth)".to_string(),
        Auth::Keys(store) => {
            crate::keys::reload_on_sighup(Arc::clone(store));
            format!(
                "fincore: authentication on: {} API keys from {} (reloaded on SIGHUP)",
                store.len(),
                store.path().display()
            )
        }
    }
}

/// The machine-readable lines a node, a meta replica and a gateway print first (tests and
/// scripts wait for them): where its gRPC and HTTP listeners are.
pub(crate) fn announce_client_listeners(
    grpc: std::net::SocketAddr,
    http: std::net::SocketAddr,
    tls: bool,
) {
    let (grpc_security, scheme) = if tls {
        ("TLS", "https")
    } else {
        ("plaintext", "http")
    };
    println!("fincore: gRPC listening on {grpc} ({grpc_security})");
    println!("fincore: HTTP listening on {scheme}://{http}");
}

/// The machine-readable line of a replica's peer listener.
fn announce_peers(peer: std::net::SocketAddr, mutual_tls: bool) {
    let security = if mutual_tls {
        "mutual TLS"
    } else {
        "plaintext: --insecure-peers"
    };
    println!("fincore: peers listening on {peer} ({security})");
}

/// Runs a meta replica (`serve --meta`) until SIGTERM, SIGINT or the parent's end.
fn run_meta_node(config: NodeConfig, parent_pid: Option<u32>) -> anyhow::Result<ExitCode> {
    // Set up already by `serve` or `dev`, which are the only callers: this changes nothing
    // then, and keeps these functions whole on their own.
    let _logs = telemetry::init_logging(&TraceOptions::off("fincore-node"))?;
    let data_dir = config.data_dir.clone();
    let runtime = runtime()?;
    let result = runtime.block_on(async move {
        let stop = stop_or_orphaned(stop_signal()?, parent_pid);
        let auth_line = auth_line(&config.auth);
        let client_tls = config.client_tls.is_some();
        let peer_tls = !matches!(config.peer_security, PeerSecurity::Insecure);
        let node_id = config.node_id;
        let node = server::MetaNode::start(config)
            .await
            .with_context(|| format!("starting the meta replica on {}", data_dir.display()))?;
        // Its HTTP listener serves health and metrics only (`server::meta_http`).
        announce_client_listeners(node.grpc_addr(), node.http_addr(), client_tls);
        announce_peers(node.peer_addr(), peer_tls);
        println!("{auth_line}");
        let group = node
            .group_id()
            .map_or("(unknown)".to_string(), ToString::to_string);
        if node.awaiting_admission() {
            println!(
                "fincore: meta node {node_id} waiting to join meta group {group}: add it from the group's leader"
            );
        } else {
            println!("fincore: meta node {node_id} of meta group {group}");
        }
        std::io::stdout().flush().ok();
        stop.await;
        println!("fincore: stopping (finishing requests in progress)");
        node.shutdown().await;
        println!("fincore: stopped cleanly");
        Ok(ExitCode::SUCCESS)
    });
    runtime.shutdown_timeout(std::time::Duration::from_secs(
        limits::SERVER_RUNTIME_STOP_SECONDS_MAX,
    ));
    result
}

/// Where a node's flow rules come from: its `--flow-rules` file, and the config center it
/// watches (the meta replicas' addresses, how to reach them, who the node is).
pub(crate) type FlowSources = (
    Option<PathBuf>,
    Option<(
        Vec<String>,
        gateway::GroupAccess,
        crate::config_feed::IdentityArgs,
    )>,
);

pub(crate) fn run_node(
    (config, capacity_line): (NodeConfig, String),
    (flow_rules, config_meta): FlowSources,
    parent_pid: Option<u32>,
    banner: impl FnOnce(&Node) -> Option<crate::read_model::Running>,
) -> anyhow::Result<ExitCode> {
    // Set up already by `serve` or `dev`, which are the only callers: this changes nothing
    // then, and keeps these functions whole on their own.
    let _logs = telemetry::init_logging(&TraceOptions::off("fincore-node"))?;
    let data_dir = config.data_dir.clone();
    let runtime = runtime()?;
    let result = runtime.block_on(async move {
        let stop = stop_or_orphaned(stop_signal()?, parent_pid);
        let auth_line = auth_line(&config.auth);
        let (flow_line, flow_source) =
            crate::flow_rules::line_and_reload(&config.flow, flow_rules);
        let client_ca_line = config
            .client_tls
            .as_ref()
            .and_then(|tls| tls.client_ca_path())
            .map(|ca| {
                format!(
                    "fincore: client listeners: mutual TLS, clients present a certificate issued by {}",
                    ca.display()
                )
            });
        let node = Node::start(config)
            .await
            .with_context(|| format!("starting the node on {}", data_dir.display()))?;
        // With a config center, its rules are taken before the listeners are announced.
        let config_feed = match config_meta {
            Some((addrs, access, identity)) => {
                let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
                let meta = gateway::map_feed::meta_client(&addrs, &access)
                    .context("--config-meta: dialling the meta group")?;
                let watcher = crate::config_feed::Watcher {
                    identity: identity.identity(node.grpc_addr())?,
                    key: server::config_keys::FLOW_NODE_RULES,
                    flow: flow_source,
                    metrics: Arc::clone(node.metrics()),
                };
                let patience =
                    std::time::Duration::from_secs(limits::GATEWAY_META_FIRST_CONFIG_SECONDS_MAX);
                let revision = crate::config_feed::take_first(&meta, &watcher, patience).await;
                let line = format!(
                    "fincore: config center: flow.node.rules taken from the meta group as {} (labels {:?}), over --flow-rules while it holds them",
                    watcher.identity.name, watcher.identity.labels
                );
                Some((crate::config_feed::follow(meta, watcher, revision), line))
            }
            None => None,
        };
        // Machine-readable lines first (tests and scripts wait for them), then the banner.
        announce_client_listeners(node.grpc_addr(), node.http_addr(), node.client_tls());
        announce_peers(node.peer_addr(), node.peer_tls());
        println!("{capacity_line}");
        println!("{auth_line}");
        println!("{flow_line}");
        let config_feed = config_feed.map(|(feed, line)| {
            println!("{line}");
            feed
        });
        if let Some(line) = client_ca_line {
            println!("{line}");
        }
        println!("{}", group_line(&node));
        let read_model = banner(&node);
        std::io::stdout().flush().ok();
        stop.await;
        println!("fincore: stopping (finishing requests in progress)");
        if let Some(config_feed) = config_feed {
            config_feed.abort();
        }
        if let Some(read_model) = read_model {
            read_model.stop().await;
        }
        node.shutdown().await;
        println!("fincore: stopped cleanly");
        Ok(ExitCode::SUCCESS)
    });
    // Blocking work still running (a snapshot being written to its temporary file, which a
    // later start ignores) may delay the exit this long, not forever.
    runtime.shutdown_timeout(std::time::Duration::from_secs(
        limits::SERVER_RUNTIME_STOP_SECONDS_MAX,
    ));
    result
}

pub fn serve(args: &ServeArgs) -> anyhow::Result<ExitCode> {
    // Before the checks below, so that their warnings are log lines (JSON when asked).
    let service = if args.meta {
        "fincore-meta"
    } else {
        "fincore-node"
    };
    let _logs = telemetry::init_logging(&args.traces.options(service))?;
    let (mut config, capacity_line) = config(args.data_dir.clone(), &args.listen);
    if args.meta && args.config_feed.config_meta.is_some() {
        anyhow::bail!(
            "--config-meta: a meta replica serves no client API to limit; give it to the ledger nodes"
        );
    }
    if args.meta && args.listen.flow_rules.is_some() {
        anyhow::bail!(
            "--flow-rules: a meta replica serves no client API to limit; give the rules to the ledger nodes and gateways"
        );
    }
    config.flow = crate::flow_rules::gate(args.listen.flow_rules.as_deref())?;
    let listeners = [
        ("--grpc", args.listen.grpc),
        ("--http", args.listen.http),
        ("--peer", args.listen.peer),
    ];
    config.peer_security = if args.insecure_peers {
        tracing::warn!(
            "--insecure-peers: replicas talk plaintext; anyone who reaches --peer {} can speak for a member of the group",
            args.listen.peer
        );
        PeerSecurity::Insecure
    } else {
        let certificates = args
            .peer_certs
            .clone()
            .unwrap_or_else(|| args.data_dir.join(DEV_PEER_CERTIFICATES_DIR));
        PeerSecurity::Tls { certificates }
    };
    config.auth = if args.insecure_no_auth {
        crate::keys::open_on_loopback(&listeners)?
    } else {
        let default = args.data_dir.join(server::auth::KEYS_FILE);
        crate::keys::serve_auth(args.keys.as_deref().unwrap_or(&default))?
    };
    if let (Some(certificate), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let files = ClientTlsFiles {
            certificate: certificate.clone(),
            key: key.clone(),
            client_ca: args.tls_client_ca.clone(),
        };
        config.client_tls =
            Some(ClientTls::load(files).context("--tls-cert/--tls-key/--tls-client-ca")?);
    }
    config.node_id = args.node_id;
    config.peers = args.peers.clone().unwrap_or_default();
    config.entry = args.membership.entry();
    config.replica.peer_routes = args.peer_routes.clone().unwrap_or_default();
    if args.meta {
        return run_meta_node(config, args.parent_pid);
    }
    let flow_rules = args.listen.flow_rules.clone();
    let config_meta = args
        .config_feed
        .access()?
        .map(|(addrs, access)| (addrs, access, args.config_feed.identity.clone()));
    run_node(
        (config, capacity_line),
        (flow_rules, config_meta),
        args.parent_pid,
        |_| None,
    )
}

/// With `--metrics ADDR`, serves `metrics` there until the listener is dropped, and says where
/// (`fincore: metrics on http://ADDR/metrics`, what tests wait for).
pub async fn metrics_listener(
    addr: Option<std::net::SocketAddr>,
    metrics: &std::sync::Arc<telemetry::Metrics>,
) -> anyhow::Result<Option<server::metrics_http::MetricsListener>> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let listener =
        server::metrics_http::MetricsListener::start(addr, std::sync::Arc::clone(metrics))
            .await
            .context("--metrics")?;
    println!("fincore: metrics on http://{}/metrics", listener.addr());
    Ok(Some(listener))
}
