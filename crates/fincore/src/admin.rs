//! `fincore admin`: operator commands against a running group over its HTTP API.
//!
//! Membership changes go to any node; one that is not the leader redirects (307) and the
//! command follows the redirect once. `cluster` reads the cluster map (from the meta group or a
//! file) and asks every member of every group for its own status; `set-map` changes the meta
//! group's map under its epoch compare-and-set.

use std::process::ExitCode;

use anyhow::{Context, bail};
use api::json::AddReplicaJson;
use testkit::http::{Request, Transport};

#[derive(Debug, clap::Subcommand)]
pub enum AdminCommand {
    /// Add a replica to the group: it catches up as a learner (no vote), then becomes a voter.
    /// Start the new node first on an empty directory with a new id: `fincore serve --node-id ID
    /// --join GROUP_ID …`. An id that is already a voter is refused (a wiped replica comes back
    /// as a new member: remove its old id, add a new one).
    AddReplica {
        /// HTTP address of any node of the group.
        #[arg(long, value_name = "HOST:PORT")]
        addr: String,
        /// The new replica's id.
        #[arg(long)]
        id: u64,
        /// The new replica's gRPC address.
        #[arg(long, value_name = "HOST:PORT")]
        grpc: String,
        /// The new replica's HTTP address.
        #[arg(long, value_name = "HOST:PORT", default_value = "")]
        http: String,
        /// The new replica's peer listener (its `serve --peer`), where the group's replicas
        /// reach it.
        #[arg(long, value_name = "HOST:PORT")]
        peer: String,
    },
    /// Remove a replica from the group.
    RemoveReplica {
        /// HTTP address of any node of the group.
        #[arg(long, value_name = "HOST:PORT")]
        addr: String,
        /// The replica to remove.
        #[arg(long)]
        id: u64,
    },
    /// Show a node's view of the group (role, term, leader, applied index, digest, members).
    Status {
        /// HTTP address of a node.
        #[arg(long, value_name = "HOST:PORT")]
        addr: String,
    },
    /// Show the cluster: the map's epoch, each group's slots and members, and each member's
    /// role, term and applied index as it reports them (`unreachable` when it does not answer).
    Cluster {
        /// Read the cluster map from the meta group at these replicas' gRPC addresses
        /// (`HOST:PORT`, comma-separated; `dev --groups` prints them).
        #[arg(
            long,
            value_name = "ADDRS",
            value_delimiter = ',',
            required_unless_present = "map",
            conflicts_with = "map"
        )]
        meta: Option<Vec<String>>,
        /// Read the cluster map from this file instead (as `fincore gateway --map` takes it).
        #[arg(long, value_name = "FILE")]
        map: Option<std::path::PathBuf>,
    },
    /// Make the map in FILE the meta group's cluster map, if the map in use has the epoch
    /// before FILE's (or --expected-epoch) and FILE's map may succeed it: a newer epoch, no slot
    /// moved. Gateways following the meta group route by it within moments.
    SetMap {
        /// The meta group's replicas' gRPC addresses (`HOST:PORT`, comma-separated).
        #[arg(long, value_name = "ADDRS", value_delimiter = ',', required = true)]
        meta: Vec<String>,
        /// The new map (JSON, as `docs/placement.md` describes).
        #[arg(long, value_name = "FILE")]
        map: std::path::PathBuf,
        /// The epoch the change is based on (default: FILE's epoch − 1); refused, naming the
        /// epoch in use, if the map changed since.
        #[arg(long, value_name = "EPOCH")]
        expected_epoch: Option<u64>,
    },
}

/// Slot numbers as ranges: `0-1023, 2048-2050`.
fn slot_ranges(slots: &[cluster::Slot]) -> String {
    let mut ranges: Vec<(u32, u32)> = Vec::new();
    for slot in slots.iter().map(|s| s.index()) {
        match ranges.last_mut() {
            Some((_, last)) if *last + 1 == slot => *last = slot,
            _ => ranges.push((slot, slot)),
        }
    }
    ranges
        .iter()
        .map(|&(first, last)| {
            if first == last {
                first.to_string()
            } else {
                format!("{first}-{last}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The meta group at `addrs`, dialled with the admin key (and `--tls-ca`'s authority). Call it
/// on a runtime.
fn meta_client(args: &AdminArgs, addrs: &[String]) -> anyhow::Result<client::Client> {
    let tls_ca_pem = match &args.tls_ca {
        Some(path) => Some(
            std::fs::read(path).with_context(|| format!("reading --tls-ca {}", path.display()))?,
        ),
        None => None,
    };
    let access = gateway::GroupAccess {
        api_key: args.api_key.clone(),
        tls_ca_pem,
        ..Default::default()
    };
    let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    gateway::map_feed::meta_client(&addrs, &access).context("--meta: dialling the meta group")
}

/// Answers `call`'s result on a runtime of its own (admin commands are otherwise blocking).
fn on_runtime<T>(call: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    crate::serve::runtime()?.block_on(call)
}

/// The map the meta group holds now.
fn map_of_meta(args: &AdminArgs, addrs: &[String]) -> anyhow::Result<cluster::ClusterMap> {
    on_runtime(async move {
        meta_client(args, addrs)?
            .cluster_map()
            .await
            .context("reading the meta group's cluster map")?
            .context("the meta group holds no cluster map yet (set one with `admin set-map`)")
    })
}

/// `admin set-map`: the change, and the map in use after it.
fn set_map(
    args: &AdminArgs,
    addrs: &[String],
    path: &std::path::Path,
    expected_epoch: Option<u64>,
) -> anyhow::Result<ExitCode> {
    let map = crate::gateway::read_map(path)?;
    let expected = expected_epoch.unwrap_or(map.epoch().saturating_sub(1));
    let now = on_runtime(async move {
        meta_client(args, addrs)?
            .set_cluster_map(expected, &map)
            .await
            .with_context(|| format!("setting the map of {}", path.display()))
    })?;
    println!(
        "the meta group's cluster map is now epoch {}: {} groups",
        now.epoch(),
        now.groups().len()
    );
    Ok(ExitCode::SUCCESS)
}

/// Prints the map and every member's own report of its role (over its HTTP API).
fn show_cluster(
    target: &Target<'_>,
    map: &cluster::ClusterMap,
    source: &str,
) -> anyhow::Result<ExitCode> {
    println!(
        "cluster map epoch {} ({source}): {} groups over {} slots",
        map.epoch(),
        map.groups().len(),
        cluster::SLOTS
    );
    let mut unreachable = 0;
    for (group, members) in map.groups() {
        let slots = map.slots_of(*group);
        println!(
            "group {group}: {} slots ({})",
            slots.len(),
            slot_ranges(&slots)
        );
        for (id, member) in members {
            let seen = if member.http.is_empty() {
                "no HTTP address in the map".to_string()
            } else {
                match request(target, &member.http, "GET", "/v1/status", None) {
                    Ok((200, _, body)) => {
                        let status: serde_json::Value = serde_json::from_str(&body)?;
                        let replica = &status["replica"];
                        format!(
                            "{}, term {}, applied {}",
                            replica["role"].as_str().unwrap_or("?"),
                            replica["term"],
                            replica["applied_index"]
                        )
                    }
                    Ok((status, _, body)) => {
                        unreachable += 1;
                        format!("answered HTTP {status}: {body}")
                    }
                    Err(error) => {
                        unreachable += 1;
                        format!("unreachable ({error})")
                    }
                }
            };
            println!(
                "  node {id}  gRPC {}  HTTP {}: {seen}",
                member.grpc, member.http
            );
        }
    }
    Ok(if unreachable == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The admin key every admin command sends.
#[derive(Debug, clap::Args)]
pub struct AdminArgs {
    /// An API key with the role admin (from `fincore keys create --role admin`).
    #[arg(
        long,
        value_name = "KEY",
        env = "FINCORE_API_KEY",
        hide_env_values = true,
        global = true
    )]
    api_key: Option<String>,
    /// Talk HTTPS to nodes serving their client listeners over TLS (`serve --tls-cert`),
    /// trusting the authority in this PEM file (e.g. `api-ca.pem` from `fincore certs
    /// --api-names`). The nodes' certificates must name the hosts given.
    #[arg(long, value_name = "FILE", global = true)]
    tls_ca: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: AdminCommand,
}

/// How the command reaches the group.
struct Target<'a> {
    api_key: Option<&'a str>,
    transport: Transport,
}

/// One HTTP/1.1 request with the admin key; returns (status, Location header, body).
fn request(
    target: &Target<'_>,
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> anyhow::Result<(u16, Option<String>, String)> {
    let request = Request {
        method,
        path,
        content_type: Some("application/json"),
        body: body.unwrap_or(""),
        headers: &[],
    };
    let answer = testkit::http::request_over(&target.transport, target.api_key, addr, &request)?;
    let location = answer.header("location").map(String::from);
    Ok((answer.status, location, answer.body))
}

/// Sends the request, following one redirect to the leader.
fn to_leader(
    target: &Target<'_>,
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let (mut status, location, mut answer) = request(target, addr, method, path, body)?;
    if status == 307
        && let Some(location) = location
    {
        let leader = location
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        (status, _, answer) = request(target, &leader, method, path, body)?;
    }
    println!("{answer}");
    match status {
        200 => Ok(ExitCode::SUCCESS),
        401 | 403 => bail!(
            "the group answered HTTP {status}: give an admin key with --api-key or FINCORE_API_KEY"
        ),
        _ => bail!("the group answered HTTP {status}"),
    }
}

pub fn run(args: &AdminArgs) -> anyhow::Result<ExitCode> {
    let transport = match &args.tls_ca {
        None => Transport::Plain,
        Some(path) => {
            let pem = std::fs::read(path)
                .with_context(|| format!("reading --tls-ca {}", path.display()))?;
            Transport::tls_trusting(&pem).with_context(|| format!("--tls-ca {}", path.display()))?
        }
    };
    let target = &Target {
        api_key: args.api_key.as_deref(),
        transport,
    };
    match &args.command {
        AdminCommand::AddReplica {
            addr,
            id,
            grpc,
            http,
            peer,
        } => {
            let body = serde_json::to_string(&AddReplicaJson {
                id: *id,
                grpc: grpc.clone(),
                http: http.clone(),
                peer: peer.clone(),
            })?;
            to_leader(target, addr, "POST", "/v1/admin/replicas", Some(&body))
        }
        AdminCommand::RemoveReplica { addr, id } => to_leader(
            target,
            addr,
            "DELETE",
            &format!("/v1/admin/replicas/{id}"),
            None,
        ),
        AdminCommand::Status { addr } => {
            to_leader(target, addr, "GET", "/v1/status?digest=true", None)
        }
        AdminCommand::Cluster {
            meta: Some(addrs), ..
        } => show_cluster(target, &map_of_meta(args, addrs)?, "from the meta group"),
        AdminCommand::Cluster {
            map: Some(path), ..
        } => show_cluster(
            target,
            &crate::gateway::read_map(path)?,
            &path.display().to_string(),
        ),
        AdminCommand::Cluster {
            meta: None,
            map: None,
        } => unreachable!("clap requires --meta or --map"),
        AdminCommand::SetMap {
            meta,
            map,
            expected_epoch,
        } => set_map(args, meta, map, *expected_epoch),
    }
}
