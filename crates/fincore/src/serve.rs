//! `fincore serve` and `fincore dev`: run one node (a replica of its group) until Ctrl-C or
//! SIGTERM, then stop cleanly. How a start enters its group (`--bootstrap`, `--join`, or a
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
use replication::membership::{self, Entry, GroupId};
use replication::peer_tls;
use server::auth::KeyStore;
use server::client_tls::{ClientTls, ClientTlsFiles};
use server::{Auth, Node, NodeConfig, PeerSecurity};

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
pub struct DevArgs {
    /// Data directory (created if absent; with --replicas, node i uses DIR/node-i).
    #[arg(long, value_name = "DIR", default_value = "fincore-data")]
    data_dir: PathBuf,
    /// Run a local replica group of this many nodes (1, 3 or 5), as child processes on
    /// consecutive ports from --grpc, --http and --peer, with mutual TLS between them
    /// (development certificates made on the first run in DIR/peer-tls).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=5))]
    replicas: u64,
    /// Run this many ledger groups (each of --replicas nodes) behind a gateway: the gateway
    /// listens on --grpc and --http; group g's node i listens 100 × g + i − 1 ports above
    /// --grpc, --http and --peer. Data in DIR/group-g/node-i, the cluster map in
    /// DIR/cluster-map.json.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=limits::LOCAL_GROUPS_MAX))]
    groups: u64,
    /// Where the change events are projected as SQL tables while `dev` runs
    /// (`docs/projector.md`): a SQLite file (default DIR/read.db), a PostgreSQL URL
    /// (`postgres://USER@HOST:PORT/DATABASE`), or `off`.
    #[arg(long, value_name = "FILE|URL|off")]
    read_model: Option<String>,
    #[command(flatten)]
    listen: ListenArgs,
}

#[derive(Debug, clap::Args)]
pub struct ListenArgs {
    /// gRPC listen address (port 0: any free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7700")]
    grpc: SocketAddr,
    /// HTTP/JSON listen address (port 0: any free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7780")]
    http: SocketAddr,
    /// Peer listen address: where the group's other replicas send Raft messages (port 0: any
    /// free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7790")]
    peer: SocketAddr,
    /// Requests that may queue for the node's pipeline before new ones are answered "busy".
    #[arg(
        long,
        default_value_t = limits::SERVER_QUEUE_REQUESTS_DEFAULT as u64,
        value_parser = clap::value_parser!(u64).range(1..=limits::SERVER_QUEUE_REQUESTS_MAX as u64)
    )]
    queue_depth: u64,
    /// Write a snapshot (and purge the log behind it) every this many batches (0: never).
    #[arg(long, default_value_t = limits::RAFT_SNAPSHOT_INTERVAL_ENTRIES_DEFAULT)]
    checkpoint_interval: u64,
    #[command(flatten)]
    capacity: CapacityArgs,
}

/// The ledger's declared capacity. A write that could pass it is refused before it is
/// proposed (HTTP 507, gRPC FAILED_PRECONDITION, naming the limit) and changes nothing.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct CapacityArgs {
    /// Most accounts the ledger may hold. Default: what fits in the share of the memory
    /// available at start planned for accounts (printed at start). Give every replica of a
    /// group the same value.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(0..=limits::LEDGER_ACCOUNTS_MAX))]
    accounts_max: Option<u64>,
    /// Most transfers (plus transfer ids burnt by transient failures) the ledger may hold.
    /// Default: what fits in the share of the memory available at start planned for transfers
    /// (printed at start). Give every replica of a group the same value.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(0..=limits::LEDGER_TRANSFERS_MAX))]
    transfers_max: Option<u64>,
}

/// The capacity as `serve` arguments, for the children of `dev --replicas`.
fn capacity_args(capacity: ledger::Capacity) -> [String; 4] {
    [
        "--accounts-max".to_string(),
        capacity.accounts_max.to_string(),
        "--transfers-max".to_string(),
        capacity.transfers_max.to_string(),
    ]
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
fn capacity(args: CapacityArgs, nodes: u64) -> (ledger::Capacity, String) {
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

fn config(data_dir: PathBuf, listen: &ListenArgs) -> (NodeConfig, String) {
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
                eprintln!(
                    "fincore: the process that started this node (pid {parent}) is gone; stopping"
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

/// Runs a meta replica (`serve --meta`) until SIGTERM, SIGINT or the parent's end.
fn run_meta_node(config: NodeConfig, parent_pid: Option<u32>) -> anyhow::Result<ExitCode> {
    telemetry::init_logging();
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
        println!(
            "fincore: gRPC listening on {} ({})",
            node.grpc_addr(),
            if client_tls { "TLS" } else { "plaintext" }
        );
        println!(
            "fincore: peers listening on {} ({})",
            node.peer_addr(),
            if peer_tls {
                "mutual TLS"
            } else {
                "plaintext: --insecure-peers"
            }
        );
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

fn run_node(
    (config, capacity_line): (NodeConfig, String),
    parent_pid: Option<u32>,
    banner: impl FnOnce(&Node) -> Option<crate::read_model::Running>,
) -> anyhow::Result<ExitCode> {
    telemetry::init_logging();
    let data_dir = config.data_dir.clone();
    let runtime = runtime()?;
    let result = runtime.block_on(async move {
        let stop = stop_or_orphaned(stop_signal()?, parent_pid);
        let auth_line = auth_line(&config.auth);
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
        // Machine-readable lines first (tests and scripts wait for them), then the banner.
        let (grpc_security, scheme) = if node.client_tls() {
            ("TLS", "https")
        } else {
            ("plaintext", "http")
        };
        println!(
            "fincore: gRPC listening on {} ({grpc_security})",
            node.grpc_addr()
        );
        println!("fincore: HTTP listening on {scheme}://{}", node.http_addr());
        println!(
            "fincore: peers listening on {} ({})",
            node.peer_addr(),
            if node.peer_tls() {
                "mutual TLS"
            } else {
                "plaintext: --insecure-peers"
            }
        );
        println!("{capacity_line}");
        println!("{auth_line}");
        if let Some(line) = client_ca_line {
            println!("{line}");
        }
        println!("{}", group_line(&node));
        let read_model = banner(&node);
        std::io::stdout().flush().ok();
        stop.await;
        println!("fincore: stopping (finishing requests in progress)");
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
    let (mut config, capacity_line) = config(args.data_dir.clone(), &args.listen);
    let listeners = [
        ("--grpc", args.listen.grpc),
        ("--http", args.listen.http),
        ("--peer", args.listen.peer),
    ];
    config.peer_security = if args.insecure_peers {
        eprintln!(
            "fincore: WARNING: --insecure-peers: replicas talk plaintext; anyone who reaches --peer {} can speak for a member of the group",
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
    run_node((config, capacity_line), args.parent_pid, |_| None)
}

fn holds_replica(dir: &std::path::Path) -> anyhow::Result<bool> {
    membership::holds_replica(dir).with_context(|| format!("reading {}", dir.display()))
}

/// The group id recorded in a replica's directory (`None`: made before group ids existed).
fn group_of_dir(dir: &std::path::Path) -> anyhow::Result<Option<String>> {
    let marker = replication::data_dir::read_marker(&journal::storage::RealStorage, dir)
        .with_context(|| format!("reading {}", dir.display()))?;
    Ok(marker.and_then(|marker| marker.group))
}

/// The membership flags of node `id` of a `dev` group: for a new group, node 1 bootstraps it
/// and the others join it; none when the group exists.
fn dev_membership_args(new_group: Option<&GroupId>, id: u64) -> Vec<String> {
    match new_group {
        None => Vec::new(),
        Some(group) if id == 1 => vec!["--bootstrap".into(), "--group".into(), group.to_string()],
        Some(group) => vec!["--join".into(), group.to_string()],
    }
}

/// `fincore dev --replicas N`: N `fincore serve` children forming one group on this machine.
fn dev_group(args: &DevArgs) -> anyhow::Result<ExitCode> {
    if args.replicas.is_multiple_of(2) {
        anyhow::bail!(
            "--replicas {}: a replica group needs an odd number of nodes (1, 3 or 5)",
            args.replicas
        );
    }
    let shifted = |addr: SocketAddr, by: u64| SocketAddr::new(addr.ip(), addr.port() + by as u16);
    let nodes: Vec<DevNode> = (0..args.replicas)
        .map(|i| {
            (
                i + 1,
                shifted(args.listen.grpc, i),
                shifted(args.listen.http, i),
                shifted(args.listen.peer, i),
            )
        })
        .collect();
    let exe = std::env::current_exe().context("finding the fincore executable")?;
    let (keys_path, token) = crate::keys::dev_key(&args.data_dir)?;
    let runtime = runtime()?;
    let stop = {
        let _entered = runtime.enter();
        stop_signal()?
    };
    // The first run creates a new group (node 1 bootstraps it, the others join it as its
    // initial members); later runs reuse the data and pass no membership flag.
    let first_dir = args.data_dir.join("node-1");
    let new_group = if holds_replica(&first_dir)? {
        None
    } else {
        Some(GroupId::generate().context("choosing a group id")?)
    };
    let certificates = args.data_dir.join(DEV_PEER_CERTIFICATES_DIR);
    if let Some(group) = &new_group {
        let ids: Vec<u64> = nodes.iter().map(|(id, ..)| *id).collect();
        dev_certificates(&certificates, group, &ids)?;
    }
    // Derived once for the group, so every replica gets the same capacity and they share the
    // machine's memory.
    let (capacity, capacity_line) = capacity(args.listen.capacity, args.replicas);
    let capacity_args = capacity_args(capacity);
    let children = spawn_group(
        &exe,
        &args.data_dir,
        &nodes,
        &GroupFiles {
            certificates: &certificates,
            keys: &keys_path,
            capacity: &capacity_args,
        },
        new_group.as_ref(),
    )?;
    println!(
        "fincore dev: a {}-node replica group, data under {} ({})",
        args.replicas,
        args.data_dir.display(),
        match &new_group {
            Some(group) => format!("new group {group}"),
            None => "reusing its data".to_string(),
        }
    );
    println!("  {}", capacity_line.trim_start_matches("fincore: "));
    for (id, grpc, http, peer) in &nodes {
        println!(
            "  node {id}: gRPC {grpc}  HTTP http://{http}  peers {peer}  (status: http://{http}/v1/status)"
        );
    }
    let read_model = crate::read_model::target(args.read_model.as_deref(), &args.data_dir);
    let running = match &read_model {
        Some(target) => {
            let group = match &new_group {
                Some(group) => Some(group.to_string()),
                None => group_of_dir(&first_dir)?,
            };
            let grpc: Vec<String> = nodes.iter().map(|(_, grpc, ..)| grpc.to_string()).collect();
            let _entered = runtime.enter();
            Some(crate::read_model::start(
                target.clone(),
                vec![crate::read_model::group(group.as_deref(), &grpc)],
                token.clone(),
            ))
        }
        None => None,
    };
    println!("  {}", crate::read_model::describe(read_model.as_ref()));
    println!(
        "  replicas talk mutual TLS with development certificates in {}",
        certificates.display()
    );
    println!(
        "  writes go to the leader; other nodes answer with a redirect to it (HTTP 307) or a leader hint (gRPC)."
    );
    println!(
        "  API key (role admin, kept in {}): send -H 'Authorization: Bearer {token}'",
        args.data_dir.join(crate::keys::DEV_KEY_FILE).display()
    );
    println!("  Ctrl-C stops every node cleanly.");
    std::io::stdout().flush().ok();
    runtime.block_on(async {
        stop.await;
        if let Some(running) = running {
            running.stop().await;
        }
    });
    stop_children(children);
    println!("fincore dev: stopped");
    Ok(ExitCode::SUCCESS)
}

/// One `dev` node: its id and its gRPC, HTTP and peer addresses.
type DevNode = (u64, SocketAddr, SocketAddr, SocketAddr);

/// What every node of a `dev` group is started with.
struct GroupFiles<'a> {
    certificates: &'a std::path::Path,
    keys: &'a std::path::Path,
    capacity: &'a [String],
}

/// Starts `fincore serve` children for the `nodes` of one group, node i in `dir/node-i`; for
/// a new group, node 1 bootstraps it and the others join.
fn spawn_group(
    exe: &std::path::Path,
    dir: &std::path::Path,
    nodes: &[DevNode],
    files: &GroupFiles<'_>,
    new_group: Option<&GroupId>,
) -> anyhow::Result<Vec<std::process::Child>> {
    let peers = nodes
        .iter()
        .map(|(id, grpc, http, peer)| format!("{id}={grpc}/{http}/{peer}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut children = Vec::new();
    for (id, grpc, http, peer) in nodes {
        let child = std::process::Command::new(exe)
            .args([
                "serve",
                "--node-id",
                &id.to_string(),
                "--peers",
                &peers,
                "--grpc",
                &grpc.to_string(),
                "--http",
                &http.to_string(),
                "--peer",
                &peer.to_string(),
            ])
            .arg("--data-dir")
            .arg(dir.join(format!("node-{id}")))
            .arg("--peer-certs")
            .arg(files.certificates)
            .arg("--keys")
            .arg(files.keys)
            .args(files.capacity)
            .args(dev_membership_args(new_group, *id))
            .args(["--parent-pid", &std::process::id().to_string()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("starting node {id}"))?;
        children.push(child);
    }
    Ok(children)
}

/// Stops `dev`'s children: SIGTERM to each, then waits for all.
fn stop_children(children: Vec<std::process::Child>) {
    for child in &children {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
    }
    for mut child in children {
        let _ = child.wait();
    }
}

/// Makes `dev`'s development certificate authority for `group` and certificates for `nodes`
/// in `dir` (valid `DEV_CERTIFICATE_DAYS`), replacing what an earlier, interrupted first run
/// left there.
fn dev_certificates(dir: &std::path::Path, group: &GroupId, nodes: &[u64]) -> anyhow::Result<()> {
    /// How long `dev`'s certificates are valid (a development group lives that long).
    const DEV_CERTIFICATE_DAYS: u32 = 3650;
    match std::fs::remove_dir_all(dir) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            return Err(error).with_context(|| format!("removing {}", dir.display()));
        }
        _ => {}
    }
    peer_tls::issue_development_certificates(dir, group.as_str(), nodes, DEV_CERTIFICATE_DAYS)
        .with_context(|| format!("making development peer certificates in {}", dir.display()))
}

/// The cluster map of `dev --groups`, beside the groups' directories.
const DEV_CLUSTER_MAP_FILE: &str = "cluster-map.json";

/// `fincore dev --groups N`: N groups of `--replicas` `fincore serve` children and a gateway
/// in this process on `--grpc` and `--http`.
fn dev_groups(args: &DevArgs) -> anyhow::Result<ExitCode> {
    if args.replicas.is_multiple_of(2) {
        anyhow::bail!(
            "--replicas {}: a replica group needs an odd number of nodes (1, 3 or 5)",
            args.replicas
        );
    }
    let listen = &args.listen;
    if listen.grpc.port() == 0 || listen.http.port() == 0 || listen.peer.port() == 0 {
        anyhow::bail!(
            "--groups needs fixed ports (the groups' nodes listen above --grpc, --http and --peer), not port 0"
        );
    }
    let shifted = |addr: SocketAddr, by: u64| -> anyhow::Result<SocketAddr> {
        let port = u16::try_from(u64::from(addr.port()) + by)
            .ok()
            .context(format!(
                "port {} + {by} is past 65535: give lower ports",
                addr.port()
            ))?;
        Ok(SocketAddr::new(addr.ip(), port))
    };
    let groups: Vec<Vec<DevNode>> = (1..=args.groups)
        .map(|g| {
            (0..args.replicas)
                .map(|i| {
                    let by = 100 * g + i;
                    Ok((
                        i + 1,
                        shifted(listen.grpc, by)?,
                        shifted(listen.http, by)?,
                        shifted(listen.peer, by)?,
                    ))
                })
                .collect::<anyhow::Result<Vec<_>>>()
        })
        .collect::<anyhow::Result<_>>()?;
    let exe = std::env::current_exe().context("finding the fincore executable")?;
    let (keys_path, token) = crate::keys::dev_key(&args.data_dir)?;
    let group_dir = |g: usize| args.data_dir.join(format!("group-{}", g + 1));
    let map_path = args.data_dir.join(DEV_CLUSTER_MAP_FILE);
    let existing = (0..groups.len())
        .map(|g| holds_replica(&group_dir(g).join("node-1")))
        .collect::<anyhow::Result<Vec<bool>>>()?;
    // The first run plans the groups and writes the map before any node starts, so that a
    // run cut short is resumed by the next one; later runs keep the map.
    let (map, new_groups) = if existing.iter().all(|&held| !held) && !map_path.exists() {
        let ids = (0..groups.len())
            .map(|_| GroupId::generate().context("choosing a group id"))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut members = BTreeMap::new();
        for (id, nodes) in ids.iter().zip(&groups) {
            let group: cluster::GroupId = id
                .as_str()
                .parse()
                .map_err(|reason| anyhow::anyhow!("group id {id}: {reason}"))?;
            let nodes = nodes
                .iter()
                .map(|(node, grpc, http, peer)| {
                    let member = cluster::Member {
                        grpc: grpc.to_string(),
                        http: http.to_string(),
                        peer: peer.to_string(),
                    };
                    (*node, member)
                })
                .collect();
            members.insert(group, nodes);
        }
        let map = cluster::ClusterMap::new(members).context("planning the cluster map")?;
        std::fs::create_dir_all(&args.data_dir)
            .with_context(|| format!("creating {}", args.data_dir.display()))?;
        journal::storage::write_atomically(
            &journal::storage::RealStorage,
            &map_path,
            map.to_json().as_bytes(),
        )
        .with_context(|| format!("writing {}", map_path.display()))?;
        for (g, id) in ids.iter().enumerate() {
            let ids: Vec<u64> = groups[g].iter().map(|(node, ..)| *node).collect();
            dev_certificates(&group_dir(g).join(DEV_PEER_CERTIFICATES_DIR), id, &ids)?;
        }
        (map, ids.into_iter().map(Some).collect::<Vec<_>>())
    } else {
        let map = crate::gateway::read_map(&map_path).with_context(|| {
            format!(
                "{} holds groups but no readable cluster map: it was not made by `dev --groups`",
                args.data_dir.display()
            )
        })?;
        if map.groups().len() != groups.len() || existing.iter().any(|&held| !held) {
            anyhow::bail!(
                "{} holds a cluster of {} groups: run `dev --groups {}` there, or use another --data-dir",
                args.data_dir.display(),
                map.groups().len(),
                map.groups().len()
            );
        }
        (map, vec![None; groups.len()])
    };
    let (capacity, capacity_line) = capacity(listen.capacity, args.groups * args.replicas);
    let capacity_args = capacity_args(capacity);
    let runtime = runtime()?;
    let stop = {
        let _entered = runtime.enter();
        stop_signal()?
    };
    let mut children = Vec::new();
    for (g, nodes) in groups.iter().enumerate() {
        let certificates = group_dir(g).join(DEV_PEER_CERTIFICATES_DIR);
        let files = GroupFiles {
            certificates: &certificates,
            keys: &keys_path,
            capacity: &capacity_args,
        };
        match spawn_group(&exe, &group_dir(g), nodes, &files, new_groups[g].as_ref()) {
            Ok(started) => children.extend(started),
            Err(error) => {
                stop_children(children);
                return Err(error);
            }
        }
    }
    let auth = Auth::Keys(Arc::new(KeyStore::open(&keys_path)?));
    let serving = server::ClientServing {
        grpc_addr: listen.grpc,
        http_addr: listen.http,
        auth,
        tls: None,
    };
    let access = gateway::GroupAccess {
        api_key: Some(token.clone()),
        ..Default::default()
    };
    let served = runtime.block_on(async {
        let connected =
            gateway::Groups::connect(&map, &access).context("connecting to the groups")?;
        let gateway = Arc::new(gateway::Gateway::new(map.clone(), connected));
        let resolver = gateway.start_resolver(gateway::Resolver::open_max_default());
        let servers = server::ClientServers::start(&serving, Arc::clone(&gateway) as _, gateway)
            .await
            .context("starting the gateway")?;
        crate::gateway::announce(&servers, false);
        println!(
            "fincore dev: {} ledger groups of {} replicas behind a gateway, data under {}",
            args.groups,
            args.replicas,
            args.data_dir.display()
        );
        println!("  {}", capacity_line.trim_start_matches("fincore: "));
        for (group, members) in map.groups() {
            let slots = map.slots_of(*group).len();
            let nodes: Vec<String> = members
                .iter()
                .map(|(id, member)| format!("node {id} gRPC {} HTTP http://{}", member.grpc, member.http))
                .collect();
            println!("  group {group}: {slots} slots; {}", nodes.join("; "));
        }
        println!(
            "  accounts live in the group of their id's slot; a transfer whose id and accounts live in one group is one Raft entry, others run as sagas across groups (docs/placement.md, docs/gateway.md)"
        );
        let read_model = crate::read_model::target(args.read_model.as_deref(), &args.data_dir);
        let running = read_model.as_ref().map(|target| {
            let groups = map
                .groups()
                .iter()
                .map(|(group, members)| {
                    let grpc: Vec<String> =
                        members.values().map(|member| member.grpc.clone()).collect();
                    crate::read_model::group(Some(&group.to_string()), &grpc)
                })
                .collect();
            crate::read_model::start(target.clone(), groups, token.clone())
        });
        println!("  {}", crate::read_model::describe(read_model.as_ref()));
        println!(
            "  API key (role admin, kept in {}): send -H 'Authorization: Bearer {token}'",
            args.data_dir.join(crate::keys::DEV_KEY_FILE).display()
        );
        println!("  Ctrl-C stops the gateway and every node cleanly.");
        std::io::stdout().flush().ok();
        stop.await;
        if let Some(running) = running {
            running.stop().await;
        }
        drop(resolver);
        servers.shutdown().await;
        anyhow::Ok(())
    });
    stop_children(children);
    println!("fincore dev: stopped");
    served.map(|()| ExitCode::SUCCESS)
}

pub fn dev(args: &DevArgs) -> anyhow::Result<ExitCode> {
    if args.groups > 1 {
        return dev_groups(args);
    }
    if args.replicas > 1 {
        return dev_group(args);
    }
    let data_dir = args.data_dir.clone();
    let (keys_path, token) = crate::keys::dev_key(&data_dir)?;
    let (mut config, capacity_line) = config(args.data_dir.clone(), &args.listen);
    config.auth = Auth::Keys(Arc::new(KeyStore::open(&keys_path)?));
    let certificates = data_dir.join(DEV_PEER_CERTIFICATES_DIR);
    // The first run creates a group of one (with its certificates, so that replicas added
    // later talk TLS too); later runs reuse it.
    if !holds_replica(&data_dir)? {
        let group = GroupId::generate().context("choosing a group id")?;
        dev_certificates(&certificates, &group, &[config.node_id])?;
        config.entry = Entry::Bootstrap { group: Some(group) };
    }
    config.peer_security = PeerSecurity::Tls { certificates };
    let read_model = crate::read_model::target(args.read_model.as_deref(), &data_dir);
    run_node((config, capacity_line), None, move |node| {
        let http = node.http_addr();
        let (applied, _) = node.replica().applied();
        let running = read_model.as_ref().map(|target| {
            let group = node.group().map(|group| group.as_str().to_string());
            crate::read_model::start(
                target.clone(),
                vec![crate::read_model::group(
                    group.as_deref(),
                    &[node.grpc_addr().to_string()],
                )],
                token.clone(),
            )
        });
        println!();
        println!(
            "fincore dev: a single-node ledger with its data in {}",
            data_dir.display()
        );
        println!("  recovered up to log index {applied}");
        println!(
            "  API key (role admin, kept in {}): {token}",
            data_dir.join(crate::keys::DEV_KEY_FILE).display()
        );
        println!("  try:");
        let auth = format!("-H 'Authorization: Bearer {token}'");
        println!(
            r#"    curl -s {auth} -H 'Content-Type: application/json' http://{http}/v1/accounts -d '[{{"id":"1","ledger":1,"code":1}},{{"id":"2","ledger":1,"code":1}}]'"#
        );
        println!(
            r#"    curl -s {auth} -H 'Content-Type: application/json' http://{http}/v1/transfers -d '[{{"id":"1","debit_account_id":"1","credit_account_id":"2","amount":"100","ledger":1,"code":1}}]'"#
        );
        println!("    curl -s {auth} http://{http}/v1/accounts/2");
        println!("  {}", crate::read_model::describe(read_model.as_ref()));
        println!("  API: http://{http}/openapi.json   metrics: http://{http}/metrics");
        println!("  Ctrl-C stops the node cleanly.");
        running
    })
}
