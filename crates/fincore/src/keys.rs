//! `fincore keys`: create, list and revoke the API keys a node accepts (its keys file,
//! `DIR/keys.json` by default). The token of a new key is printed once, alone on stdout (so
//! `KEY=$(fincore keys create …)` works); only its SHA-256 is stored. Running nodes read the
//! file at start and again on SIGHUP.
//!
//! Owns the command line of these operations; the file itself is `server::auth`'s.

use std::path::PathBuf;
use std::process::ExitCode;

use server::Role;
use server::auth::{KEYS_FILE, KeysFile};

#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Create a key with a role (read, write or admin); prints its token once.
    Create {
        /// read: lookups, history, balances; write: also create accounts and transfers;
        /// admin: also membership changes and the state digest.
        #[arg(long)]
        role: Role,
        /// A name to list and revoke it by (letters, digits, '-', '_', '.'). Default: key-ID.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        file: KeysFileArgs,
    },
    /// List the keys: id, name and role (tokens are never stored, so never shown).
    List {
        #[command(flatten)]
        file: KeysFileArgs,
    },
    /// Revoke a key by id or name. Running nodes refuse it after SIGHUP or a restart.
    Revoke {
        /// The key's id or name (see `fincore keys list`).
        key: String,
        #[command(flatten)]
        file: KeysFileArgs,
    },
}

/// Which keys file: a data directory's, or one given as for `serve --keys`.
#[derive(Debug, clap::Args)]
pub struct KeysFileArgs {
    /// The node's data directory (its keys file is DIR/keys.json).
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "keys",
        conflicts_with = "keys"
    )]
    data_dir: Option<PathBuf>,
    /// The keys file itself (as given to `fincore serve --keys FILE`).
    #[arg(long, value_name = "FILE")]
    keys: Option<PathBuf>,
}

impl KeysFileArgs {
    fn path(&self) -> PathBuf {
        match (&self.keys, &self.data_dir) {
            (Some(file), _) => file.clone(),
            (None, Some(dir)) => dir.join(KEYS_FILE),
            (None, None) => unreachable!("clap requires --data-dir or --keys"),
        }
    }
}

pub fn run(command: &KeysCommand) -> anyhow::Result<ExitCode> {
    match command {
        KeysCommand::Create { role, name, file } => {
            let mut keys = KeysFile::load_or_new(&file.path())?;
            let (key, token) = keys.create(*role, name.as_deref())?;
            keys.save()?;
            eprintln!(
                "fincore keys: created key {} {:?} with the role {} in {}; its token (below) is shown only now. Send it as `Authorization: Bearer <token>`; running nodes accept it after SIGHUP or a restart.",
                key.id,
                key.name,
                key.role,
                keys.path().display()
            );
            println!("{token}");
        }
        KeysCommand::List { file } => {
            let keys = KeysFile::load(&file.path())?;
            println!("{:<10} {:<6} NAME", "ID", "ROLE");
            for key in keys.keys() {
                println!("{:<10} {:<6} {}", key.id, key.role, key.name);
            }
        }
        KeysCommand::Revoke { key, file } => {
            let mut keys = KeysFile::load(&file.path())?;
            let revoked = keys.revoke(key)?;
            keys.save()?;
            println!(
                "fincore keys: revoked key {} {:?} ({}); running nodes refuse it after SIGHUP (kill -HUP PID) or a restart",
                revoked.id, revoked.name, revoked.role
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
