//! `fincore certs`: development certificates. With `--nodes`, a group's authority and node
//! certificates for mutual TLS between its replicas (`replication::peer_tls` names and checks
//! them); with `--api-names`, an authority and a certificate for the client listeners
//! (`serve --tls-cert`), which clients trust through the authority (`api-ca.pem`); with
//! `--client-names`, a client certificate from that same authority, which a gateway presents to
//! nodes that require one (`serve --tls-client-ca DIR/api-ca.pem`).
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
#[command(group(clap::ArgGroup::new("what").required(true).multiple(true).args(["nodes", "api_names", "client_names"])))]
pub struct CertsArgs {
    /// Directory for the authorities (`ca.pem`, `ca.key`; `api-ca.pem`, `api-ca.key`: kept if
    /// already there) and the certificates (`node-N.pem`, `node-N.key`; `api.pem`, `api.key`;
    /// `client-NAME.pem`, `client-NAME.key`).
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
    /// Issue a client certificate from the same authority as --api-names (`api-ca.pem`) naming
    /// these DNS names, comma-separated; the first is the client's identity and the file name:
    /// `client-NAME.pem`, `client-NAME.key` (e.g. `--client-names gateway-1` for `gateway
    /// --group-tls-cert DIR/client-gateway-1.pem --group-tls-key DIR/client-gateway-1.key`).
    /// Nodes accept it with `serve --tls-client-ca DIR/api-ca.pem`.
    #[arg(long, value_name = "NAMES", value_delimiter = ',', value_parser = client_name)]
    client_names: Vec<String>,
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
    if !args.client_names.is_empty() {
        client_certificate(args)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// A client's name: a DNS name (letters, digits, `-` and `.`), since it becomes both the
/// certificate's name and part of a file name.
fn client_name(text: &str) -> Result<String, String> {
    let valid = !text.is_empty()
        && text.len() <= 253
        && text
            .split('.')
            .all(|label| !label.is_empty() && label.len() <= 63 && !label.starts_with('-'))
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if valid {
        Ok(text.to_string())
    } else {
        Err(format!(
            "{text:?} is not a DNS name (letters, digits, '-' and '.', as in gateway-1)"
        ))
    }
}

/// The authority of the client listeners (`api-ca.pem`), which also issues client
/// certificates.
fn api_authority(args: &CertsArgs) -> anyhow::Result<Authority> {
    Ok(Authority::open_or_create(
        &args.dir,
        "api-ca",
        "fincore development authority of client listeners",
        args.days,
    )?)
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
    let authority = api_authority(args)?;
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

fn client_certificate(args: &CertsArgs) -> anyhow::Result<()> {
    let authority = api_authority(args)?;
    let name = args.client_names.first().expect("called with names");
    let certificate = args.dir.join(format!("client-{name}.pem"));
    let key = args.dir.join(format!("client-{name}.key"));
    authority.issue(
        &args.client_names,
        Purpose::Client,
        LeafFiles {
            certificate: &certificate,
            key: &key,
        },
    )?;
    println!(
        "client {name}: {} (key {}): `fincore gateway --group-tls-cert {} --group-tls-key {}`",
        certificate.display(),
        key.display(),
        certificate.display(),
        key.display()
    );
    println!(
        "nodes accept it with `fincore serve --tls-client-ca {}` (keep {} secret)",
        args.dir.join("api-ca.pem").display(),
        args.dir.join("api-ca.key").display()
    );
    Ok(())
}
