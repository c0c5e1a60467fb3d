//! The data directory's format marker: `fincore-format.json`, naming the format and its version,
//! so that `serve` refuses a directory it cannot read and `verify` knows what it was given
//! instead of guessing from the files it finds.
//!
//! Owns the marker's name, contents and rules: written durably (atomically, on the replica's
//! [`Storage`], so the simulator's disk gets it too) when a directory is created; checked on
//! every open; written on first open of a directory of raft files that the previous fincore
//! left without one (adopted). Must not read or write anything else in the directory: the log
//! store owns the journal and `raft-meta.json`, the state machine the snapshot.

use std::io;
use std::path::{Path, PathBuf};

use journal::storage::{Storage, read_file, write_atomically};
use serde::{Deserialize, Serialize};

/// The marker file, directly in the data directory.
pub const FORMAT_FILE: &str = "fincore-format.json";

/// Files of the node rather than of its replica, which an operator may put in a data directory
/// before the replica exists: the API keys file (`fincore keys create --data-dir`, written
/// through `keys.json.tmp`), `fincore dev`'s copy of its development key and the directory of
/// its development peer certificates. A directory holding only these still counts as empty for
/// membership.
pub const KEYS_FILE: &str = "keys.json";
pub const KEYS_FILE_TEMPORARY: &str = "keys.json.tmp";
pub const DEV_KEY_FILE: &str = "dev-api-key";
pub const DEV_PEER_CERTIFICATES_DIR: &str = "peer-tls";

/// The one data-directory format: a replica's Raft log on the journal, its vote file and its
/// snapshot file.
pub const FORMAT_NAME: &str = "fincore-replica";

/// The newest version of [`FORMAT_NAME`] this fincore reads and the one it writes. Raise it
/// when a change to the directory's files cannot be read by an older fincore.
///
/// Version 2: a member's address in the log, snapshots and votes carries its peer listener
/// (`PeerNode::peer`) beside its client listeners.
pub const FORMAT_VERSION: u32 = 2;

/// The oldest version this fincore reads. Version 1 directories recorded members without a
/// peer address, which this fincore cannot decode: such a replica is replaced (remove it from
/// its group, start a new member on an empty directory with `--join`, add it).
pub const FORMAT_VERSION_OLDEST: u32 = 2;

/// The state machine of a ledger group's replica ([`crate::state_machine`]): what a marker
/// without a `machine` field names, since directories from before the field held only ledgers.
pub const LEDGER_MACHINE: &str = "ledger";

/// The marker's contents (also what a person sees with `cat`).
///
/// `group` and `node` say whose directory this is (see [`crate::membership`]): written when a
/// node is created with `--bootstrap`/`init` or `--join`, absent in directories made before
/// group ids existed. `machine` says which state machine the log feeds
/// ([`crate::ReplicaMachine::KIND`]): a replica refuses a directory of another machine, whose
/// entries it would misread or append to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FormatMarker {
    pub format: String,
    pub version: u32,
    /// The state machine (absent: [`LEDGER_MACHINE`], in directories made before the field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
    /// The id of the replica group this directory's replica belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The node id of this directory's replica (its votes and log are that node's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<u64>,
}

impl FormatMarker {
    /// The marker this fincore writes into a directory nobody claimed yet, for a replica of
    /// `machine`.
    pub fn current(machine: &str) -> FormatMarker {
        FormatMarker {
            format: FORMAT_NAME.to_string(),
            version: FORMAT_VERSION,
            machine: Some(machine.to_string()),
            group: None,
            node: None,
        }
    }

    /// The marker of node `node` of group `group`, a replica of `machine`.
    pub fn of_member(group: &str, node: u64, machine: &str) -> FormatMarker {
        FormatMarker {
            group: Some(group.to_string()),
            node: Some(node),
            ..FormatMarker::current(machine)
        }
    }

    /// The state machine this directory's log feeds.
    pub fn machine(&self) -> &str {
        self.machine.as_deref().unwrap_or(LEDGER_MACHINE)
    }

    /// Checks that this marker, read from `dir`, is of a replica of `wanted`.
    pub fn check_machine(&self, dir: &Path, wanted: &str) -> Result<(), DataDirError> {
        if self.machine() == wanted {
            return Ok(());
        }
        Err(DataDirError::OtherMachine {
            path: dir.join(FORMAT_FILE),
            found: self.machine().to_string(),
            wanted: wanted.to_string(),
        })
    }
}

/// Files only a replica writes; a directory holding one of them but no marker was written by
/// fincore before the marker existed.
pub(crate) const REPLICA_FILES: [&str; 2] = ["raft-meta.json", crate::snapshot::SNAPSHOT_FILE];

/// What the retired embedded engine kept its checkpoints in (a format no longer read).
pub(crate) const ENGINE_CHECKPOINTS_DIR: &str = "checkpoints";

/// Why a data directory is not one this fincore can use.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("{dir} is not a fincore data directory: it has no {FORMAT_FILE}")]
    NoMarker { dir: PathBuf },
    #[error("{path} is not a fincore format marker ({reason}); it should hold {expected}")]
    Unreadable {
        path: PathBuf,
        reason: String,
        expected: String,
    },
    #[error(
        "{path} names format {found:?}, which this fincore does not read (it reads \
         {FORMAT_NAME:?} versions {FORMAT_VERSION_OLDEST} to {FORMAT_VERSION})"
    )]
    UnknownFormat { path: PathBuf, found: String },
    #[error(
        "{path} says format version {found}, written by a newer fincore; this one reads \
         versions {FORMAT_VERSION_OLDEST} to {FORMAT_VERSION}. Run a fincore at least as new as \
         the one that wrote it."
    )]
    NewerVersion { path: PathBuf, found: u32 },
    #[error(
        "{path} says format version {found}, written by an older fincore whose membership \
         records have no peer address; this one reads versions {FORMAT_VERSION_OLDEST} to \
         {FORMAT_VERSION}. Replace this replica: remove it from its group, start a new member \
         on an empty directory with --join, and add it (see the README)"
    )]
    OlderVersion { path: PathBuf, found: u32 },
    #[error(
        "{dir} holds a replica written by a fincore older than the format marker (raft files \
         and no {FORMAT_FILE}), a format this fincore no longer reads; replace this replica from \
         an empty directory (see the README)"
    )]
    Unmarked { dir: PathBuf },
    #[error(
        "{dir} holds an embedded-engine data directory (a {ENGINE_CHECKPOINTS_DIR}/ directory and \
         no raft-meta.json), a format this fincore no longer reads; start from an empty directory"
    )]
    EngineFormat { dir: PathBuf },
    #[error(
        "{path} says this directory holds a {found} replica; this start runs a {wanted} replica \
         and may not open it (use a directory of its own)"
    )]
    OtherMachine {
        path: PathBuf,
        found: String,
        wanted: String,
    },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl From<DataDirError> for io::Error {
    fn from(error: DataDirError) -> io::Error {
        let kind = match &error {
            DataDirError::Io { source, .. } => source.kind(),
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, error)
    }
}

/// What [`open`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    /// The marker was there and names this format.
    Marked,
    /// A new (empty) directory: the marker was written.
    Created,
}

/// Reads the marker in `dir` and checks it names a format this fincore reads. `None` if there
/// is no marker.
pub fn read_marker(
    storage: &dyn Storage,
    dir: &Path,
) -> Result<Option<FormatMarker>, DataDirError> {
    let path = dir.join(FORMAT_FILE);
    let bytes = read_file(storage, &path).map_err(|source| DataDirError::Io {
        action: "reading",
        path: path.clone(),
        source,
    })?;
    let Some(bytes) = bytes else {
        return Ok(None);
    };
    let marker: FormatMarker =
        serde_json::from_slice(&bytes).map_err(|error| DataDirError::Unreadable {
            path: path.clone(),
            reason: error.to_string(),
            expected: marker_json(&FormatMarker::current(LEDGER_MACHINE)),
        })?;
    if marker.format != FORMAT_NAME || marker.version == 0 {
        return Err(DataDirError::UnknownFormat {
            path,
            found: format!("{} version {}", marker.format, marker.version),
        });
    }
    if marker.version > FORMAT_VERSION {
        return Err(DataDirError::NewerVersion {
            path,
            found: marker.version,
        });
    }
    if marker.version < FORMAT_VERSION_OLDEST {
        return Err(DataDirError::OlderVersion {
            path,
            found: marker.version,
        });
    }
    Ok(Some(marker))
}

/// Checks that `dir` is a fincore data directory of a format this fincore reads (what
/// `verify` asks before reading anything else).
pub fn check(storage: &dyn Storage, dir: &Path) -> Result<FormatMarker, DataDirError> {
    read_marker(storage, dir)?.ok_or_else(|| DataDirError::NoMarker { dir: dir.into() })
}

/// Prepares `dir` (which must exist) for a replica of `machine` to open: checks its marker
/// (which must name `machine`), or writes one into a new directory. Raft files an older fincore
/// left without a marker are refused.
pub fn open(storage: &dyn Storage, dir: &Path, machine: &str) -> Result<Opened, DataDirError> {
    if let Some(marker) = read_marker(storage, dir)? {
        marker.check_machine(dir, machine)?;
        return Ok(Opened::Marked);
    }
    let names = storage.list(dir).map_err(|source| DataDirError::Io {
        action: "listing",
        path: dir.into(),
        source,
    })?;
    let has = |name: &str| names.iter().any(|n| n == name);
    if REPLICA_FILES.iter().any(|name| has(name)) {
        return Err(DataDirError::Unmarked { dir: dir.into() });
    }
    if has(ENGINE_CHECKPOINTS_DIR) {
        return Err(DataDirError::EngineFormat { dir: dir.into() });
    }
    write_marker(storage, dir, &FormatMarker::current(machine))?;
    Ok(Opened::Created)
}

/// Writes `marker` into `dir` durably (atomically replacing any marker there).
pub fn write_marker(
    storage: &dyn Storage,
    dir: &Path,
    marker: &FormatMarker,
) -> Result<(), DataDirError> {
    let path = dir.join(FORMAT_FILE);
    write_atomically(storage, &path, marker_json(marker).as_bytes()).map_err(|source| {
        DataDirError::Io {
            action: "writing",
            path,
            source,
        }
    })
}

fn marker_json(marker: &FormatMarker) -> String {
    serde_json::to_string(marker).expect("a marker always serializes") + "\n"
}

#[cfg(test)]
mod tests {
    use journal::storage::RealStorage;

    use super::*;

    fn write(dir: &Path, name: &str, bytes: &[u8]) {
        std::fs::write(dir.join(name), bytes).unwrap();
    }

    #[test]
    fn a_new_directory_gets_the_marker_and_opens_as_marked_afterwards() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            check(&RealStorage, dir.path()),
            Err(DataDirError::NoMarker { .. })
        ));
        assert_eq!(
            open(&RealStorage, dir.path(), LEDGER_MACHINE).unwrap(),
            Opened::Created
        );
        let text = std::fs::read_to_string(dir.path().join(FORMAT_FILE)).unwrap();
        assert_eq!(
            text,
            "{\"format\":\"fincore-replica\",\"version\":2,\"machine\":\"ledger\"}\n"
        );
        assert_eq!(
            open(&RealStorage, dir.path(), LEDGER_MACHINE).unwrap(),
            Opened::Marked
        );
        assert_eq!(
            check(&RealStorage, dir.path()).unwrap(),
            FormatMarker::current(LEDGER_MACHINE)
        );
    }

    #[test]
    fn a_directory_of_another_machine_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            open(&RealStorage, dir.path(), "meta").unwrap(),
            Opened::Created
        );
        let marker = std::fs::read(dir.path().join(FORMAT_FILE)).unwrap();
        let message = open(&RealStorage, dir.path(), LEDGER_MACHINE)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("holds a meta replica")
                && message.contains("runs a ledger replica")
                && message.contains(FORMAT_FILE),
            "{message}"
        );
        assert_eq!(std::fs::read(dir.path().join(FORMAT_FILE)).unwrap(), marker);
        assert_eq!(
            open(&RealStorage, dir.path(), "meta").unwrap(),
            Opened::Marked
        );

        // A marker from before the field names a ledger replica.
        write(
            dir.path(),
            FORMAT_FILE,
            b"{\"format\":\"fincore-replica\",\"version\":2}",
        );
        assert_eq!(
            check(&RealStorage, dir.path()).unwrap().machine(),
            LEDGER_MACHINE
        );
        let message = open(&RealStorage, dir.path(), "meta")
            .unwrap_err()
            .to_string();
        assert!(message.contains("holds a ledger replica"), "{message}");
        assert_eq!(
            open(&RealStorage, dir.path(), LEDGER_MACHINE).unwrap(),
            Opened::Marked
        );
    }

    #[test]
    fn raft_files_without_a_marker_are_refused_and_left_alone() {
        for file in REPLICA_FILES {
            let dir = tempfile::tempdir().unwrap();
            write(dir.path(), file, b"{}");
            let message = open(&RealStorage, dir.path(), LEDGER_MACHINE)
                .unwrap_err()
                .to_string();
            assert!(
                message.contains("older than the format marker"),
                "{message}"
            );
            assert!(!dir.path().join(FORMAT_FILE).exists());
        }
    }

    #[test]
    fn an_unknown_older_or_newer_format_is_refused_naming_the_file_and_what_it_says() {
        let dir = tempfile::tempdir().unwrap();
        let cases: [(&[u8], &str); 5] = [
            (
                b"{\"format\":\"fincore-replica\",\"version\":3}",
                "format version 3, written by a newer fincore",
            ),
            (
                b"{\"format\":\"fincore-replica\",\"version\":1}",
                "format version 1, written by an older fincore",
            ),
            (
                b"{\"format\":\"tigerbeetle\",\"version\":1}",
                "names format \"tigerbeetle version 1\"",
            ),
            (
                b"{\"format\":\"fincore-replica\",\"version\":0}",
                "does not read",
            ),
            (b"not json", "is not a fincore format marker"),
        ];
        for (contents, expected) in cases {
            write(dir.path(), FORMAT_FILE, contents);
            for error in [
                open(&RealStorage, dir.path(), LEDGER_MACHINE).unwrap_err(),
                check(&RealStorage, dir.path()).unwrap_err(),
            ] {
                let message = error.to_string();
                assert!(message.contains(expected), "{message}");
                assert!(message.contains(FORMAT_FILE), "{message}");
            }
            // Refusing changes nothing.
            assert_eq!(
                std::fs::read(dir.path().join(FORMAT_FILE)).unwrap(),
                contents
            );
        }
    }

    #[test]
    fn an_embedded_engine_directory_is_refused_not_adopted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("journal")).unwrap();
        std::fs::create_dir(dir.path().join(ENGINE_CHECKPOINTS_DIR)).unwrap();
        let message = open(&RealStorage, dir.path(), LEDGER_MACHINE)
            .unwrap_err()
            .to_string();
        assert!(message.contains("embedded-engine"), "{message}");
        assert!(!dir.path().join(FORMAT_FILE).exists());
    }

    /// A group of one in `dir` that leads, with `accounts` accounts written.
    async fn replica_with_accounts(dir: &Path, accounts: u128) -> crate::Replica {
        let replica = crate::Replica::open(1, dir, &crate::ReplicaConfig::default())
            .await
            .unwrap();
        let members = std::collections::BTreeMap::from([(1, crate::PeerNode::default())]);
        if !replica.is_initialized().await {
            replica.initialize(&members).await.unwrap();
        }
        while replica.leader().is_none() {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let body = ledger::BatchBody::CreateAccounts(
            (1..=accounts)
                .map(|id| ledger::Account {
                    id,
                    ledger: 1,
                    code: 1,
                    ..Default::default()
                })
                .collect(),
        );
        if accounts > 0 {
            replica.write(body).await.unwrap();
        }
        replica
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replica_directory_without_its_marker_is_refused_and_left_intact() {
        let dir = tempfile::tempdir().unwrap();
        let replica = replica_with_accounts(dir.path(), 10).await;
        assert_eq!(
            check(&RealStorage, dir.path()).unwrap(),
            FormatMarker::current(LEDGER_MACHINE)
        );
        let (index, digest) = replica.applied();
        replica.shutdown().await;
        drop(replica);

        // What a fincore from before the marker left: the same files, no marker.
        let marker = std::fs::read(dir.path().join(FORMAT_FILE)).unwrap();
        std::fs::remove_file(dir.path().join(FORMAT_FILE)).unwrap();
        let error = crate::verify(dir.path()).unwrap_err();
        assert!(error.contains("has no fincore-format.json"), "{error}");
        let error =
            match crate::Replica::open(1, dir.path(), &crate::ReplicaConfig::default()).await {
                Ok(_) => panic!("a directory without its marker was opened"),
                Err(error) => error.to_string(),
            };
        assert!(error.contains("older than the format marker"), "{error}");
        assert!(!dir.path().join(FORMAT_FILE).exists());

        // Nothing else was touched: with its marker back, the replica has its state.
        std::fs::write(dir.path().join(FORMAT_FILE), marker).unwrap();
        let replica = replica_with_accounts(dir.path(), 0).await;
        assert!(
            replica
                .wait_applied(index, std::time::Duration::from_secs(10))
                .await
        );
        assert_eq!(replica.state().read().unwrap().digest(), digest);
        replica.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replica_refuses_to_open_a_directory_of_a_newer_format() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            FORMAT_FILE,
            b"{\"format\":\"fincore-replica\",\"version\":7}",
        );
        let error =
            match crate::Replica::open(1, dir.path(), &crate::ReplicaConfig::default()).await {
                Ok(_) => panic!("a directory of a newer format was opened"),
                Err(error) => error.to_string(),
            };
        assert!(
            error.contains(FORMAT_FILE) && error.contains("version 7"),
            "{error}"
        );
        // Nothing was written beside the marker.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
