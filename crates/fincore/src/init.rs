//! `fincore init`: create a new replica group on an empty data directory without starting a
//! node. Writes the group id and the initial members there; the node initializes the group the
//! first time `fincore serve` runs on that directory (no flag needed then). The same as the
//! first start of `fincore serve --bootstrap`, for operators who prepare directories first.
//!
//! Owns the command's arguments and output; the rules are `replication::membership`'s.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use replication::PeerNode;
use replication::membership::{self, Entry, GroupId};

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// The new node's data directory (must be empty or absent).
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// This node's id in the new group.
    #[arg(long, default_value_t = 1)]
    node_id: u64,
    /// The initial members, this node included: `ID=GRPC_ADDR/HTTP_ADDR/PEER_ADDR`,
    /// comma-separated. Default: a group of one, this node at --grpc, --http and --peer.
    #[arg(long, value_name = "PEERS", value_parser = crate::serve::parse_peers)]
    peers: Option<BTreeMap<u64, PeerNode>>,
    /// For a group of one: the gRPC address the node will serve on (recorded in the group).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7700")]
    grpc: SocketAddr,
    /// For a group of one: the HTTP address the node will serve on (recorded in the group).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7780")]
    http: SocketAddr,
    /// For a group of one: the peer address the node will listen on (recorded in the group).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7790")]
    peer: SocketAddr,
    /// The new group's id (32 hex digits). Default: a new random id.
    #[arg(long, value_name = "GROUP_ID")]
    group: Option<GroupId>,
}

pub fn run(args: &InitArgs) -> anyhow::Result<ExitCode> {
    let members = match &args.peers {
        Some(peers) => peers.clone(),
        None => {
            if args.grpc.port() == 0 || args.http.port() == 0 || args.peer.port() == 0 {
                anyhow::bail!(
                    "--grpc {} --http {} --peer {}: a group records where its members serve, so give fixed ports (not 0)",
                    args.grpc,
                    args.http,
                    args.peer
                );
            }
            BTreeMap::from([(
                args.node_id,
                PeerNode {
                    grpc: args.grpc.to_string(),
                    http: args.http.to_string(),
                    peer: args.peer.to_string(),
                },
            )])
        }
    };
    let entry = Entry::Bootstrap {
        group: args.group.clone(),
    };
    let prepared = membership::prepare(
        &args.data_dir,
        args.node_id,
        &entry,
        &members,
        replication::data_dir::LEDGER_MACHINE,
    )
    .with_context(|| format!("fincore init --data-dir {}", args.data_dir.display()))?;
    let group = prepared
        .group
        .expect("a directory made by a bootstrap records its group");
    let dir = args.data_dir.display();
    let id = args.node_id;
    println!("fincore init: {dir} holds node {id} of the new group {group}");
    for (member, node) in &members {
        println!(
            "  initial member {member}: gRPC {}  HTTP {}  peers {}",
            node.grpc, node.http, node.peer
        );
    }
    println!(
        "  start it with `fincore serve --data-dir {dir} --node-id {id}` (plus its listen flags); it initializes the group at its first start"
    );
    if members.len() > 1 {
        println!(
            "  start every other initial member on an empty directory with `fincore serve --join {group} --node-id ID …`"
        );
    }
    Ok(ExitCode::SUCCESS)
}
