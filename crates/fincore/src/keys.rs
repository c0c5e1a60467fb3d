//! `fincore keys`: create, list and revoke the API keys a node accepts (its keys file,
//! `DIR/keys.json` by default). The token of a new key is printed once, alone on stdout (so
//! `KEY=$(fincore keys create …)` works); only its SHA-256 is stored. Running nodes read the
//! file at start and again on SIGHUP.
//!
//! Owns the command line of these operations and how `serve` and `dev` get their keys (the
//! `--insecure-no-auth` loopback rule, `dev`'s development key, reloading on SIGHUP); the file
//! itself is `server::auth`'s.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use server::auth::{KEYS_FILE, KeyStore, KeysFile};
use server::{Auth, Role};

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

/// The file `dev` keeps its development key's token in, beside the keys file (mode 0600).
pub use replication::data_dir::DEV_KEY_FILE;

/// `serve --insecure-no-auth`: anyone may call, allowed only when every listener (`(flag,
/// address)`) is on loopback.
pub fn open_on_loopback(listeners: &[(&str, SocketAddr)]) -> anyhow::Result<Auth> {
    if let Some((flag, addr)) = listeners.iter().find(|(_, a)| !a.ip().is_loopback()) {
        anyhow::bail!(
            "--insecure-no-auth is refused: {flag} {addr} is not a loopback address, and without authentication anyone who reaches it could write and change membership. Listen on 127.0.0.1 or ::1, or create a key with `fincore keys create --role admin --data-dir DIR` and drop --insecure-no-auth"
        );
    }
    tracing::warn!(
        "--insecure-no-auth: the client APIs are open to every local process (loopback only)"
    );
    Ok(Auth::Open)
}

/// `serve`'s keys: those in the file at `path`, which must exist.
pub fn serve_auth(path: &Path) -> anyhow::Result<Auth> {
    let store = KeyStore::open(path).map_err(|error| match error {
        server::auth::KeysError::Missing(_) => anyhow::anyhow!(
            "{error}; authentication is on by default (to run open on loopback only, pass --insecure-no-auth)"
        ),
        other => other.into(),
    })?;
    if store.is_empty() {
        tracing::warn!(
            "{} holds no keys: every client call will be refused until one is created (then SIGHUP)",
            path.display()
        );
    }
    Ok(Auth::Keys(Arc::new(store)))
}

/// The development key of `dev` on `dir`: made on its first run (role admin, named `dev`), its
/// token kept in `DIR/dev-api-key` (0600) so every later run prints the same working commands.
/// Returns the keys file and the token.
pub fn dev_key(dir: &Path) -> anyhow::Result<(PathBuf, String)> {
    let keys_path = dir.join(KEYS_FILE);
    let token_path = dir.join(DEV_KEY_FILE);
    let mut keys = KeysFile::load_or_new(&keys_path)?;
    if let Ok(token) = replication::secret_file::read_text(&token_path)
        && keys.holds(token.trim())
    {
        return Ok((keys_path, token.trim().to_string()));
    }
    let name = (!keys.keys().iter().any(|k| k.name == "dev")).then_some("dev");
    let (_, token) = keys.create(Role::Admin, name)?;
    keys.save()?;
    replication::secret_file::write(&token_path, format!("{token}\n").as_bytes())
        .with_context(|| format!("writing {}", token_path.display()))?;
    Ok((keys_path, token))
}

/// Runs `action` on every SIGHUP until the process ends (inside a Tokio runtime). Call it
/// before announcing the listeners, so that a SIGHUP sent right after the announcement runs
/// `action` instead of killing the process (SIGHUP's default action); `what` names what is
/// then read only at start if no handler can be installed.
pub fn on_sighup(what: &'static str, mut action: impl FnMut() + Send + 'static) {
    #[cfg(unix)]
    let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
    else {
        tracing::warn!("cannot install a SIGHUP handler: {what} read only at start");
        return;
    };
    #[cfg(unix)]
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            action();
        }
    });
}

/// Reloads the keys on every SIGHUP until the process ends; a failed reload keeps the keys in
/// use and says why.
pub fn reload_on_sighup(store: Arc<KeyStore>) {
    on_sighup("API keys are", move || match store.reload() {
        Ok(count) => {
            tracing::info!(keys = count, path = %store.path().display(), "API keys reloaded")
        }
        Err(error) => {
            tracing::error!(%error, "reloading the API keys failed; the keys in use are unchanged")
        }
    });
}
