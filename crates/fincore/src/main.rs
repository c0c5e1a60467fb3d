//! `fincore`: the single command-line entry point of the system.
//!
//! Owns argument parsing and turning errors into messages and exit codes. Each subcommand
//! lives in its own module; the work itself is done by the library crates.

mod admin;
mod allocator;
mod bench;
mod cdc;
mod certs;
mod chaos;
mod config_cli;
mod config_feed;
mod dev;
mod flow_rules;
mod gateway;
mod init;
mod keys;
mod nodes;
mod project;
mod read_model;
mod registry_cli;
mod serve;
mod sim;
mod trace_args;
mod verify;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "fincore",
    version,
    about = "A financial-grade double-entry ledger core."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one ledger node (gRPC and HTTP/JSON) on a data directory. A new node needs
    /// --bootstrap (a new group) or --join GROUP_ID (a new member); a restart needs neither.
    Serve(serve::ServeArgs),
    /// Create a new replica group on an empty data directory (the node initializes it when
    /// `serve` first runs there); the same as the first start of `serve --bootstrap`.
    Init(init::InitArgs),
    /// Serve the node's client API over the ledger groups of a cluster map (stateless; run as
    /// many as you like).
    Gateway(gateway::GatewayArgs),
    /// Run a single-node ledger (or a local group) for development (data in ./fincore-data).
    Dev(dev::DevArgs),
    /// Check a node's data directory: its format marker, every checksum and the whole hash
    /// chain of its log; replay it and compare with its snapshot.
    Verify(verify::VerifyArgs),
    /// Operate a running group: add or remove replicas, show status (needs an admin key).
    Admin(admin::AdminArgs),
    /// Read and change the config center the meta group keeps: get, set, history, rollback,
    /// gray (stage a value for some processes), promote, abandon.
    Config(config_cli::ConfigArgs),
    /// Create, list and revoke the API keys a node accepts.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Run the TigerBeetle-equivalent benchmark workload.
    Bench(bench::BenchArgs),
    /// Run a Jepsen-style bank test against a real local group while a nemesis injects faults.
    Chaos(chaos::ChaosArgs),
    /// Run the deterministic cluster simulator: one seed, or a swarm of seeds.
    Sim(sim::SimArgs),
    /// Publish each group's change events to NATS JetStream (`fincore.<group>.events`),
    /// gap-free and never twice; resumes from what the streams hold.
    Cdc(cdc::CdcArgs),
    /// Make a development certificate authority and node certificates for TLS between
    /// replicas.
    Certs(certs::CertsArgs),
    /// Project groups' change events into SQL read models (PostgreSQL or SQLite); --verify
    /// compares a read model with the ledger.
    Project(project::ProjectArgs),
    /// The service registry: run one (`serve`), publish a record, subscribe to a key's set
    /// (pushed at every change), drain a host.
    Registry(registry_cli::RegistryArgs),
}

fn main() -> ExitCode {
    allocator::tune();
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Serve(args) => serve::serve(&args),
        Command::Init(args) => init::run(&args),
        Command::Dev(args) => dev::dev(&args),
        Command::Gateway(args) => gateway::run(&args),
        Command::Verify(args) => verify::run(&args),
        Command::Admin(command) => admin::run(&command),
        Command::Keys(command) => keys::run(&command),
        Command::Config(args) => config_cli::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Sim(args) => sim::run(&args),
        Command::Chaos(args) => chaos::run(&args),
        Command::Certs(args) => certs::run(&args),
        Command::Cdc(args) => cdc::run(&args),
        Command::Project(args) => project::run(&args),
        Command::Registry(args) => registry_cli::run(&args),
    };
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every subcommand's flags are well formed (clap checks them only when a command is
    /// parsed, so a mistake would otherwise show only when someone runs it).
    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
