//! `fincore certs`: development certificates. With `--nodes`, a group's authority and node
//! certificates for mutual TLS between its replicas (`replication::peer_tls` names and checks
//! them); with `--api-names`, an authority and a certificate for the client listeners
//! (`serve --tls-cert`), which clients trust through the authority (`api-ca.pem`).
//!
//! For development and tests: production operators may issue from their own authority, as long
//! as each node's peer certificate carries the name `n<ID>.<GROUP_ID>.peer.fincore`, where
//! GROUP_ID is the group's id (what `serve --bootstrap --group` and `--join` name). Must not
//! touch a node's data directory.

use std::path::PathBuf;
use std::process::ExitCode;

use replication::dev_certs::{Authority, LeafFiles, Purpose};
use replication::membership::GroupId;
use replication::peer_tls::{self, CertificateFiles};

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).multiple(true).args(["nodes", "api_names"])))]
pub struct CertsArgs {
    /// Directory for the authorities (`ca.pem`, `ca.key`; `api-ca.pem`, `api-ca.key`: kept if
    /// already there) and the certificates (`node-N.pem`, `node-N.key`; `api.pem`, `api.key`).
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// The id of the group the nodes belong to (32 hex digits), named in every certificate.
    /// Default: a new random id, printed: create the group with it (`fincore init --group` or
    /// `serve --bootstrap --group`).
    #[arg(long, value_name = "GROUP_ID", requires = "nodes")]
    group: Option<GroupId>,
    /// The node ids to issue peer certificates for, comma-separated (e.g. 1,2,3).
    #[arg(long, value_name = "IDS", value_delimiter = ',')]
    nodes: Vec<u64>,
    /// Issue a certificate for the client listeners (`serve --tls-cert DIR/api.pem --tls-key
    /// DIR/api.key`) naming these hosts, comma-separated: the DNS names and IP addresses
    /// clients dial (e.g. localhost,127.0.0.1,ledger.example.com). Clients trust
    /// DIR/api-ca.pem.
    #[arg(long, value_name = "NAMES", value_delimiter = ',')]
    api_names: Vec<String>,
    /// How long the certificates are valid, in days.
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=3650))]
    days: u32,
}

pub fn run(args: &CertsArgs) -> anyhow::Result<ExitCode> {
    if !args.nodes.is_empty() {
        peer_certificates(args)?;
    }
    if !args.api_names.is_empty() {
        api_certificate(args)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn peer_certificates(args: &CertsArgs) -> anyhow::Result<()> {
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
    Ok(())
}

fn api_certificate(args: &CertsArgs) -> anyhow::Result<()> {
    let authority = Authority::open_or_create(
        &args.dir,
        "api-ca",
        "fincore development authority of client listeners",
        args.days,
    )?;
    let (certificate, key) = (args.dir.join("api.pem"), args.dir.join("api.key"));
    authority.issue(
        &args.api_names,
        Purpose::Server,
        LeafFiles {
            certificate: &certificate,
            key: &key,
        },
    )?;
    println!(
        "client listeners: {} (key {}), naming {}: `fincore serve --tls-cert {} --tls-key {}`",
        certificate.display(),
        key.display(),
        args.api_names.join(", "),
        certificate.display(),
        key.display()
    );
    println!(
        "clients trust: {} (keep {} secret)",
        args.dir.join("api-ca.pem").display(),
        args.dir.join("api-ca.key").display()
    );
    Ok(())
}
