//! `fincore certs`: a development certificate authority and node certificates for mutual TLS
//! between the replicas of a group (`replication::peer_tls` names and checks them).
//!
//! For development and tests: production operators may issue from their own authority, as long
//! as each node's certificate carries the name `n<ID>.<GROUP>.peer.fincore`. Must not touch a
//! node's data directory.

use std::path::PathBuf;
use std::process::ExitCode;

use replication::peer_tls::{self, CertificateFiles};

#[derive(Debug, clap::Args)]
pub struct CertsArgs {
    /// Directory for `ca.pem`, `ca.key` (kept if already there) and `node-N.pem`, `node-N.key`.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// The group's name, as in every node's certificate (a DNS label: a-z, 0-9, '-').
    #[arg(long, value_name = "NAME")]
    group: String,
    /// The node ids to issue certificates for, comma-separated (e.g. 1,2,3).
    #[arg(long, value_name = "IDS", value_delimiter = ',', required = true)]
    nodes: Vec<u64>,
    /// How long the certificates are valid, in days.
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=3650))]
    days: u32,
}

pub fn run(args: &CertsArgs) -> anyhow::Result<ExitCode> {
    peer_tls::issue_development_certificates(&args.dir, &args.group, &args.nodes, args.days)?;
    for &node in &args.nodes {
        let files = CertificateFiles::in_dir(&args.dir, node);
        println!(
            "node {node}: {} (key {}), named {}",
            files.certificate.display(),
            files.key.display(),
            peer_tls::peer_dns_name(&args.group, node)
        );
    }
    println!(
        "authority: {} (keep {} secret)",
        args.dir.join("ca.pem").display(),
        args.dir.join("ca.key").display()
    );
    Ok(ExitCode::SUCCESS)
}
