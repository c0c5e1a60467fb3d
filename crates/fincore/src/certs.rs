//! `fincore certs`: a development certificate authority and node certificates for mutual TLS
//! between the replicas of a group (`replication::peer_tls` names and checks them).
//!
//! For development and tests: production operators may issue from their own authority, as long
//! as each node's certificate carries the name `n<ID>.<GROUP_ID>.peer.fincore`, where GROUP_ID is
//! the group's id (what `serve --bootstrap --group` and `--join` name). Must not touch a node's
//! data directory.

use std::path::PathBuf;
use std::process::ExitCode;

use replication::membership::GroupId;
use replication::peer_tls::{self, CertificateFiles};

#[derive(Debug, clap::Args)]
pub struct CertsArgs {
    /// Directory for `ca.pem`, `ca.key` (kept if already there) and `node-N.pem`, `node-N.key`.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// The id of the group the nodes belong to (32 hex digits), named in every certificate.
    /// Default: a new random id, printed: create the group with it (`fincore init --group` or
    /// `serve --bootstrap --group`).
    #[arg(long, value_name = "GROUP_ID")]
    group: Option<GroupId>,
    /// The node ids to issue certificates for, comma-separated (e.g. 1,2,3).
    #[arg(long, value_name = "IDS", value_delimiter = ',', required = true)]
    nodes: Vec<u64>,
    /// How long the certificates are valid, in days.
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=3650))]
    days: u32,
}

pub fn run(args: &CertsArgs) -> anyhow::Result<ExitCode> {
    let group = match &args.group {
        Some(group) => group.clone(),
        None => {
            let group = GroupId::generate()?;
            println!(
                "group {group} (new: create it with `fincore serve --bootstrap --group {group}` or `fincore init --group {group}`)"
            );
            group
        }
    };
    peer_tls::issue_development_certificates(&args.dir, group.as_str(), &args.nodes, args.days)?;
    for &node in &args.nodes {
        let files = CertificateFiles::in_dir(&args.dir, node);
        println!(
            "node {node}: {} (key {}), named {}",
            files.certificate.display(),
            files.key.display(),
            peer_tls::peer_dns_name(group.as_str(), node)
        );
    }
    println!(
        "authority: {} (keep {} secret)",
        args.dir.join("ca.pem").display(),
        args.dir.join("ca.key").display()
    );
    Ok(ExitCode::SUCCESS)
}
