//! `fincore dev`: the whole system on one machine for development. One node in this process
//! (the default); `--replicas R` a group of R `fincore serve` children; `--groups N` a meta
//! group, N ledger groups (children) and a gateway in this process over them. Every run after
//! the first reuses the data under `--data-dir`.
//!
//! Owns the layout of `dev`'s ports and directories and its development certificates and key;
//! must not hold a node's or a gateway's rules (`serve`, `server`, `gateway` do).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use replication::data_dir::DEV_PEER_CERTIFICATES_DIR;
use replication::membership::{self, Entry, GroupId};
use replication::peer_tls;
use server::auth::KeyStore;
use server::{Auth, PeerSecurity};

use crate::serve::{ListenArgs, capacity, config, run_node, runtime, stop_signal};

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
    /// Run this many ledger groups (each of --replicas nodes) and a meta group (as many) behind
    /// a gateway: the gateway listens on --grpc and --http; group g's node i listens 100 × g +
    /// i − 1 ports above --grpc, --http and --peer, the meta group's node i 50 + i − 1 above
    /// --grpc and --peer. Data in DIR/group-g/node-i and DIR/meta/node-i, the map planned on
    /// the first run in DIR/cluster-map.json.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=limits::LOCAL_GROUPS_MAX))]
    groups: u64,
    /// Where the change events are projected as SQL tables while `dev` runs
    /// (`docs/projector.md`): a SQLite file (default DIR/read.db), a PostgreSQL URL
    /// (`postgres://USER@HOST:PORT/DATABASE`), or `off`.
    #[arg(long, value_name = "FILE|URL|off")]
    read_model: Option<String>,
    #[command(flatten)]
    listen: ListenArgs,
    #[command(flatten)]
    traces: crate::trace_args::TraceArgs,
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
            meta: false,
            traces: &args.traces.child_args(),
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
    /// Replicas of the meta group (`serve --meta`) rather than of a ledger group.
    meta: bool,
    /// The trace export flags (`TraceArgs::child_args`).
    traces: &'a [String],
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
            .args(files.meta.then_some("--meta"))
            .args(files.traces)
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

/// The cluster map `dev --groups` planned on its first run, beside the groups' directories:
/// what the meta group is given when it holds no map yet.
const DEV_CLUSTER_MAP_FILE: &str = "cluster-map.json";

/// How far above --grpc and --peer the meta group's node i listens (+ i − 1): below the first
/// ledger group's 100, and clear of the ports a group's nodes take for the usual spacings of the
/// three flags (7700/7780/7790: groups at 00–04, 80–84 and 90–94 past each hundred, meta at
/// 50–54 and 40–44; or 10 apart: groups at 00–04, 10–14, 20–24, meta at 50–54 and 70–74).
const DEV_META_PORT_OFFSET: u64 = 50;

/// Where `dev --groups` listens: the meta group's nodes and each ledger group's, above the
/// gateway's `--grpc` and `--http` (see `DevArgs::groups`). Refused, naming the port, if two
/// listeners would share a port or a port passes 65535.
fn dev_groups_layout(
    listen: &ListenArgs,
    groups: u64,
    replicas: u64,
) -> anyhow::Result<(Vec<DevNode>, Vec<Vec<DevNode>>)> {
    let shifted = |addr: SocketAddr, by: u64| -> anyhow::Result<SocketAddr> {
        let port = u16::try_from(u64::from(addr.port()) + by)
            .ok()
            .context(format!(
                "port {} + {by} is past 65535: give lower ports",
                addr.port()
            ))?;
        Ok(SocketAddr::new(addr.ip(), port))
    };
    let nodes = |offset: u64| -> anyhow::Result<Vec<DevNode>> {
        (0..replicas)
            .map(|i| {
                let by = offset + i;
                Ok((
                    i + 1,
                    shifted(listen.grpc, by)?,
                    shifted(listen.http, by)?,
                    shifted(listen.peer, by)?,
                ))
            })
            .collect()
    };
    let meta = nodes(DEV_META_PORT_OFFSET)?;
    let ledger = (1..=groups)
        .map(|g| nodes(100 * g))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // What binds: the gateway's two listeners, a replica's three (a meta replica's HTTP serves
    // health and metrics only).
    let mut bound = vec![
        ("the gateway's --grpc", listen.grpc),
        ("the gateway's --http", listen.http),
    ];
    bound.extend(meta.iter().flat_map(|&(_, grpc, http, peer)| {
        [
            ("a meta replica's gRPC", grpc),
            ("a meta replica's HTTP", http),
            ("a meta replica's peers", peer),
        ]
    }));
    bound.extend(ledger.iter().flatten().flat_map(|&(_, grpc, http, peer)| {
        [
            ("a ledger replica's gRPC", grpc),
            ("a ledger replica's HTTP", http),
            ("a ledger replica's peers", peer),
        ]
    }));
    let mut taken = BTreeMap::new();
    for (what, addr) in bound {
        if let Some(other) = taken.insert(addr.port(), what) {
            anyhow::bail!(
                "--grpc {}, --http {}, --peer {}: {what} and {other} would both listen on port {}; give ports further apart (the defaults work)",
                listen.grpc,
                listen.http,
                listen.peer,
                addr.port()
            );
        }
    }
    Ok((meta, ledger))
}

/// The cluster map the meta group holds; on the first run (it holds none), `planned`, set there
/// first. Waits for the meta group to elect a leader, at most
/// `GATEWAY_META_FIRST_MAP_SECONDS_MAX`.
async fn map_from_meta(
    meta: &client::Client,
    planned: &cluster::ClusterMap,
) -> anyhow::Result<cluster::ClusterMap> {
    let patience = std::time::Duration::from_secs(limits::GATEWAY_META_FIRST_MAP_SECONDS_MAX);
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let attempt = async {
            match meta.cluster_map().await? {
                Some(map) => Ok(map),
                None => meta.set_cluster_map(0, planned).await,
            }
        };
        match tokio::time::timeout_at(deadline, attempt).await {
            Ok(Ok(map)) => return Ok(map),
            Ok(Err(
                error @ (client::ClientError::Unauthenticated(_)
                | client::ClientError::PermissionDenied(_)),
            )) => return Err(error).context("the meta group refused dev's key"),
            // No leader yet, or another writer set a map first (the compare-and-set refused
            // ours): ask again.
            Ok(Err(error)) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(%error, "the meta group has no leader or map yet");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Ok(Err(error)) => {
                return Err(error).context("reading the cluster map from the meta group");
            }
            Err(_) => anyhow::bail!(
                "the meta group did not answer within {} s",
                patience.as_secs()
            ),
        }
    }
}

/// `fincore dev --groups N`: a meta group and N ledger groups, each of `--replicas` `fincore
/// serve` children, and a gateway in this process on `--grpc` and `--http` that takes its
/// cluster map from the meta group and follows each change pushed.
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
    let (meta_nodes, groups) = dev_groups_layout(listen, args.groups, args.replicas)?;
    let exe = std::env::current_exe().context("finding the fincore executable")?;
    let (keys_path, token) = crate::keys::dev_key(&args.data_dir)?;
    let group_dir = |g: usize| args.data_dir.join(format!("group-{}", g + 1));
    // The meta group is made on the first run that finds none (also for a data directory from
    // before `dev` ran one: it is given the map this directory keeps).
    let meta_dir = args.data_dir.join("meta");
    let new_meta = if holds_replica(&meta_dir.join("node-1"))? {
        None
    } else {
        let id = GroupId::generate().context("choosing the meta group's id")?;
        let ids: Vec<u64> = meta_nodes.iter().map(|(node, ..)| *node).collect();
        dev_certificates(&meta_dir.join(DEV_PEER_CERTIFICATES_DIR), &id, &ids)?;
        Some(id)
    };
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
    let meta_certificates = meta_dir.join(DEV_PEER_CERTIFICATES_DIR);
    let trace_args = args.traces.child_args();
    let meta_files = GroupFiles {
        certificates: &meta_certificates,
        keys: &keys_path,
        capacity: &[],
        meta: true,
        traces: &trace_args,
    };
    let mut children = spawn_group(&exe, &meta_dir, &meta_nodes, &meta_files, new_meta.as_ref())?;
    for (g, nodes) in groups.iter().enumerate() {
        let certificates = group_dir(g).join(DEV_PEER_CERTIFICATES_DIR);
        let files = GroupFiles {
            certificates: &certificates,
            keys: &keys_path,
            capacity: &capacity_args,
            meta: false,
            traces: &trace_args,
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
        flow: crate::flow_rules::gate(listen.flow_rules.as_deref())?,
        tls: None,
    };
    let access = gateway::GroupAccess {
        api_key: Some(token.clone()),
        ..Default::default()
    };
    let meta_addrs: Vec<String> = meta_nodes
        .iter()
        .map(|(_, grpc, ..)| grpc.to_string())
        .collect();
    let served = runtime.block_on(async {
        let addrs: Vec<&str> = meta_addrs.iter().map(String::as_str).collect();
        let meta = gateway::map_feed::meta_client(&addrs, &access)
            .context("dialling the meta group")?;
        let map = map_from_meta(&meta, &map).await?;
        // A meta group left from another cluster (its groups' directories since removed)
        // would route every call to groups that are not these.
        for (g, new_group) in new_groups.iter().enumerate() {
            let id = match new_group {
                Some(id) => Some(id.to_string()),
                None => group_of_dir(&group_dir(g).join("node-1"))?,
            };
            if let Some(id) = id
                && !map.groups().keys().any(|group| group.to_string() == id)
            {
                anyhow::bail!(
                    "the meta group in {} holds a cluster map (epoch {}) without group {id} of {}: it belongs to another cluster; remove it, or use another --data-dir",
                    meta_dir.display(),
                    map.epoch(),
                    group_dir(g).display()
                );
            }
        }
        let connected =
            gateway::Groups::connect(&map, &access).context("connecting to the groups")?;
        let gateway = Arc::new(
            gateway::Gateway::new(map.clone(), connected).with_flow(Arc::clone(&serving.flow)),
        );
        let metrics = Arc::clone(server::LedgerApi::metrics(gateway.as_ref()));
        let config_meta = meta.clone();
        let feed = gateway::map_feed::follow(Arc::clone(&gateway), meta, access.clone());
        let resolver = gateway.start_resolver(gateway::Resolver::open_max_default());
        let servers = server::ClientServers::start(
            &serving,
            Arc::clone(&gateway) as _,
            Arc::clone(&gateway) as _,
            gateway,
        )
            .await
            .context("starting the gateway")?;
        crate::serve::announce_client_listeners(servers.grpc_addr(), servers.http_addr(), false);
        println!(
            "fincore dev: {} ledger groups of {} replicas behind a gateway, data under {}",
            args.groups,
            args.replicas,
            args.data_dir.display()
        );
        println!("  {}", capacity_line.trim_start_matches("fincore: "));
        let (flow_line, flow_source) =
            crate::flow_rules::line_and_reload(&serving.flow, listen.flow_rules.clone());
        println!("  {}", flow_line.trim_start_matches("fincore: "));
        // The gateway takes the config center's flow.rules (`fincore config set flow.rules`).
        let identity = crate::config_feed::Identity {
            name: "dev-gateway".into(),
            labels: Default::default(),
        };
        let patience =
            std::time::Duration::from_secs(limits::GATEWAY_META_FIRST_CONFIG_SECONDS_MAX);
        let watcher = crate::config_feed::Watcher {
            identity,
            key: server::config_keys::FLOW_RULES,
            flow: flow_source,
            metrics,
        };
        let revision = crate::config_feed::take_first(&config_meta, &watcher, patience).await;
        let config_feed = crate::config_feed::follow(config_meta, watcher, revision);
        println!(
            "  config center: the gateway (named dev-gateway) takes flow.rules from the meta group (fincore config set flow.rules …)"
        );
        println!(
            "  meta group (cluster map epoch {}, pushed to the gateway): {}",
            map.epoch(),
            meta_nodes
                .iter()
                .map(|(id, grpc, ..)| format!("node {id} gRPC {grpc}"))
                .collect::<Vec<_>>()
                .join("; ")
        );
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
        println!(
            "  see the cluster: fincore admin --api-key {token} cluster --meta {}",
            meta_addrs.join(",")
        );
        println!("  Ctrl-C stops the gateway and every node cleanly.");
        std::io::stdout().flush().ok();
        stop.await;
        if let Some(running) = running {
            running.stop().await;
        }
        feed.abort();
        config_feed.abort();
        drop(resolver);
        servers.shutdown().await;
        anyhow::Ok(())
    });
    stop_children(children);
    println!("fincore dev: stopped");
    served.map(|()| ExitCode::SUCCESS)
}

pub fn dev(args: &DevArgs) -> anyhow::Result<ExitCode> {
    // For every mode: the parent's own lines (its gateway, its read model) are log lines too.
    // The parent is the gateway of `--groups` and the node of a group of one; of `--replicas`
    // it only supervises the children (which export their own spans).
    let traces = match (args.groups, args.replicas) {
        (1, 1) => args.traces.options("fincore-node"),
        (1, _) => telemetry::trace::TraceOptions::off("fincore-dev"),
        _ => args.traces.options("fincore-gateway"),
    };
    let _logs = telemetry::init_logging(&traces)?;
    if args.groups > 1 {
        return dev_groups(args);
    }
    if args.replicas > 1 {
        return dev_group(args);
    }
    let data_dir = args.data_dir.clone();
    let (keys_path, token) = crate::keys::dev_key(&data_dir)?;
    let (mut config, capacity_line) = config(args.data_dir.clone(), &args.listen);
    config.flow = crate::flow_rules::gate(args.listen.flow_rules.as_deref())?;
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
    let flow_rules = args.listen.flow_rules.clone();
    run_node(
        (config, capacity_line),
        (flow_rules, None),
        None,
        move |node| {
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
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listen(grpc: u16, http: u16, peer: u16) -> ListenArgs {
        let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        ListenArgs {
            grpc: addr(grpc),
            http: addr(http),
            peer: addr(peer),
            queue_depth: 1,
            checkpoint_interval: 0,
            flow_rules: None,
            capacity: crate::serve::CapacityArgs {
                accounts_max: None,
                transfers_max: None,
            },
        }
    }

    #[test]
    fn the_usual_spacings_give_every_listener_a_port_of_its_own() {
        // The defaults, and ports 10 apart (what scripts/api-contract picks).
        for (grpc, http, peer) in [(7700, 7780, 7790), (20000, 20010, 20020)] {
            for replicas in [1, 3, 5] {
                for groups in 1..=limits::LOCAL_GROUPS_MAX {
                    let listen = listen(grpc, http, peer);
                    if let Err(error) = dev_groups_layout(&listen, groups, replicas) {
                        panic!("{groups} groups of {replicas}: {error:#}");
                    }
                }
            }
        }
    }

    #[test]
    fn ports_that_would_collide_are_refused_naming_both_listeners() {
        // The meta group's peers 50 above --peer land on group 1's gRPC 100 above --grpc.
        let error = dev_groups_layout(&listen(7700, 7780, 7750), 2, 1)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("a ledger replica's gRPC and a meta replica's peers")
                && error.contains("port 7800"),
            "{error}"
        );
        let error = dev_groups_layout(&listen(65_500, 7780, 7790), 1, 1)
            .unwrap_err()
            .to_string();
        assert!(error.contains("past 65535"), "{error}");
    }
}
