//! `fincore admin`: operator commands against a running group over its HTTP API.
//!
//! Membership changes go to any node; one that is not the leader redirects (307) and the
//! command follows the redirect once. `cluster` reads a cluster map and asks every member of
//! every group for its own status.

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
        /// The cluster map the gateways route by (`dev --groups` keeps it in
        /// DIR/cluster-map.json).
        #[arg(long, value_name = "FILE")]
        map: std::path::PathBuf,
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

/// Prints the map and every member's own report of its role (over its HTTP API).
fn show_cluster(target: &Target<'_>, map_path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let map = crate::gateway::read_map(map_path)?;
    println!(
        "cluster map epoch {}: {} groups over {} slots",
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
        AdminCommand::Cluster { map } => show_cluster(target, map),
    }
}
