//! The API key the test kit's nodes accept: one admin key per process, made once with the
//! binary's own `keys create`, its keys file copied beside each node's data directory (as an
//! operator copies one keys file to every replica of a group), so one token opens every node a
//! process starts, and [`crate::http`] sends it by default.
//!
//! Owns that key and nothing else: the keys file is opaque bytes here (its format is the
//! binary's), and nodes started with `--keys` or `--insecure-no-auth` are left alone.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::KitError;

/// The process's key: its token and the keys file that holds its digest.
#[derive(Debug)]
struct ProcessKey {
    token: String,
    keys_file: Vec<u8>,
}

static PROCESS_KEY: OnceLock<ProcessKey> = OnceLock::new();

fn make(exe: &Path) -> Result<ProcessKey, KitError> {
    let dir = std::env::temp_dir().join(format!(
        "fincore-testkit-key-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let file = dir.join("keys.json");
    let output = Command::new(exe)
        .args([
            "keys", "create", "--role", "admin", "--name", "testkit", "--keys",
        ])
        .arg(&file)
        .stdin(Stdio::null())
        .output()
        .map_err(KitError::io(format!(
            "running {} keys create",
            exe.display()
        )));
    let keys_file = std::fs::read(&file);
    let _ = std::fs::remove_dir_all(&dir);
    let output = output?;
    let token = String::from_utf8_lossy(&output.stdout).trim().to_string();
    match keys_file {
        Ok(keys_file) if output.status.success() && !token.is_empty() => {
            Ok(ProcessKey { token, keys_file })
        }
        _ => Err(KitError::KeyNotCreated {
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }),
    }
}

/// Writes the process's keys file (making the key on first use) to `DATA_DIR.keys`, beside the
/// data directory, and returns that path for `serve --keys`.
pub fn keys_file_for(exe: &Path, data_dir: &Path) -> Result<PathBuf, KitError> {
    let key = match PROCESS_KEY.get() {
        Some(key) => key,
        None => {
            let made = make(exe)?;
            // Another thread may have made one meanwhile; either works, the first one stays.
            let _ = PROCESS_KEY.set(made);
            PROCESS_KEY.get().expect("just set")
        }
    };
    let path = data_dir.with_extension("keys");
    std::fs::write(&path, &key.keys_file)
        .map_err(KitError::io(format!("writing {}", path.display())))?;
    Ok(path)
}

/// The admin token of this process's nodes, once one was started.
pub fn token() -> Option<&'static str> {
    PROCESS_KEY.get().map(|key| key.token.as_str())
}
