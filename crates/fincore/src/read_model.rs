//! `fincore dev`'s read model: the change events of the groups it runs, projected into SQL
//! tables by the `projector` crate while the ledger runs — by default into `DIR/read.db`
//! (SQLite), so a first run shows its transfers in SQL with nothing installed
//! (`docs/projector.md`).
//!
//! Owns the `--read-model` choice and the background task. Must not write to the ledger, and a
//! read model that stops never stops the ledger: the task says why on stderr and the ledger
//! runs on (the next start resumes from the stored offset).

use std::path::{Path, PathBuf};

use client::GroupSpec;
use projector::{Options, Target};

/// The SQLite file `dev` projects into, inside its data directory, unless told otherwise.
pub const DEV_READ_MODEL_FILE: &str = "read.db";

/// Where `dev` projects: `--read-model` (`off`, a `postgres://` URL, or a SQLite file),
/// default `data_dir/read.db`; `None` for `off`.
pub fn target(arg: Option<&str>, data_dir: &Path) -> Option<Target> {
    match arg {
        None => Some(Target::Sqlite(data_dir.join(DEV_READ_MODEL_FILE))),
        Some("off") => None,
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            Some(Target::Postgres(url.to_string()))
        }
        Some(file) => Some(Target::Sqlite(PathBuf::from(file))),
    }
}

/// The banner's line about the read model.
pub fn describe(target: Option<&Target>) -> String {
    match target {
        None => "read model: off (--read-model off)".to_string(),
        Some(Target::Sqlite(file)) => format!(
            "read model: the change events projected into SQLite {} (tables accounts, transfers, account_balances; try: sqlite3 {} 'SELECT id, amount, state FROM transfers')",
            file.display(),
            file.display()
        ),
        Some(Target::Postgres(url)) => format!(
            "read model: the change events projected into PostgreSQL {} (tables accounts, transfers, account_balances)",
            redact(url)
        ),
    }
}

/// A PostgreSQL URL without its password, for printing.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((user, host)) => match user.split_once(':') {
            Some((name, _password)) => format!("{scheme}://{name}:***@{host}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// One group `dev` runs, by its id when known (the projector then names it on every call, so a
/// node of another group refuses), and its replicas' gRPC addresses.
pub fn group(id: Option<&str>, grpc_addrs: &[String]) -> GroupSpec {
    GroupSpec {
        name: id.unwrap_or("dev").to_string(),
        replicas: grpc_addrs
            .iter()
            .map(|addr| format!("http://{addr}"))
            .collect(),
    }
}

/// The projector running in `dev`'s process.
pub struct Running(tokio::task::JoinHandle<()>);

impl Running {
    /// Stops the projector and waits until it let go of its connections. Called before the
    /// nodes stop: a node finishing its requests would otherwise wait out its shutdown grace
    /// for the projector's event subscription.
    pub async fn stop(self) {
        self.0.abort();
        let _ = self.0.await;
    }
}

/// Projects `groups` into `target` on the current runtime until the projector stops for good
/// (then it says why on stderr) or is stopped.
pub fn start(target: Target, groups: Vec<GroupSpec>, api_key: String) -> Running {
    let options = Options {
        target,
        groups,
        api_key: Some(api_key),
        nats: None,
        // Counted, not served: `dev`'s listeners serve its node's metrics.
        metrics: telemetry::Metrics::for_service(telemetry::Service::Projector),
    };
    Running(tokio::spawn(async move {
        if let Err(error) = projector::project(&options, false).await {
            tracing::error!(
                "the read model stopped: {error}; the ledger runs on (the next start resumes projecting)"
            );
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_read_model_defaults_to_a_file_in_the_data_directory_and_can_be_turned_off() {
        let dir = Path::new("fincore-data");
        assert!(matches!(
            target(None, dir),
            Some(Target::Sqlite(file)) if file == dir.join("read.db")
        ));
        assert!(target(Some("off"), dir).is_none());
        assert!(matches!(
            target(Some("postgres://u@127.0.0.1:5432/test"), dir),
            Some(Target::Postgres(url)) if url == "postgres://u@127.0.0.1:5432/test"
        ));
        assert!(matches!(
            target(Some("other.db"), dir),
            Some(Target::Sqlite(file)) if file == Path::new("other.db")
        ));
    }

    #[test]
    fn a_password_is_not_printed() {
        assert_eq!(
            redact("postgres://me:secret@db:5432/x"),
            "postgres://me:***@db:5432/x"
        );
        assert_eq!(redact("postgres://me@db/x"), "postgres://me@db/x");
        let line = describe(Some(&Target::Postgres("postgres://a:b@h/d".into())));
        assert!(!line.contains(":b@"), "{line}");
    }
}
