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
/// through `keys.json.tmp`) and `fincore dev`'s copy of its development key. A directory
/// holding only these still counts as empty for membership.
pub const KEYS_FILE: &str = "keys.json";
pub const KEYS_FILE_TEMPORARY: &str = "keys.json.tmp";
pub const DEV_KEY_FILE: &str = "dev-api-key";

/// The one data-directory format: a replica's Raft log on the journal, its vote file and its
/// snapshot file.
pub const FORMAT_NAME: &str = "fincore-replica";

/// The newest version of [`FORMAT_NAME`] this fincore reads and the one it writes. Raise it
/// when a change to the directory's files cannot be read by an older fincore.
pub const FORMAT_VERSION: u32 = 1;

/// The marker's contents (also what a person sees with `cat`).
///
/// `group` and `node` say whose directory this is (see [`crate::membership`]): written when a
/// node is created with `--bootstrap`/`init` or `--join`, absent in directories made before
/// group ids existed (an older fincore ignores them, so the version stays 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FormatMarker {
    pub format: String,
    pub version: u32,
    /// The id of the replica group this directory's replica belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The node id of this directory's replica (its votes and log are that node's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<u64>,
}

impl FormatMarker {
    /// The marker this fincore writes into a directory nobody claimed yet.
    pub fn current() -> FormatMarker {
        FormatMarker {
            format: FORMAT_NAME.to_string(),
            version: FORMAT_VERSION,
            group: None,
            node: None,
        }
    }

    /// The marker of node `node` of group `group`.
    pub fn of_member(group: &str, node: u64) -> FormatMarker {
        FormatMarker {
            group: Some(group.to_string()),
            node: Some(node),
            ..FormatMarker::current()
        }
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
    #[error(
        "{dir} is not a fincore data directory: it has no {FORMAT_FILE}. (A node's directory \
         written by a fincore older than the marker gets one the next time `fincore serve` \
         opens it.)"
    )]
    NoMarker { dir: PathBuf },
    #[error("{path} is not a fincore format marker ({reason}); it should hold {expected}")]
    Unreadable {
        path: PathBuf,
        reason: String,
        expected: String,
    },
    #[error(
        "{path} names format {found:?}, which this fincore does not read (it reads \
         {FORMAT_NAME:?} versions 1 to {FORMAT_VERSION})"
    )]
    UnknownFormat { path: PathBuf, found: String },
    #[error(
        "{path} says format version {found}, written by a newer fincore; this one reads \
         versions 1 to {FORMAT_VERSION}. Run a fincore at least as new as the one that wrote it."
    )]
    NewerVersion { path: PathBuf, found: u32 },
    #[error(
        "{dir} holds an embedded-engine data directory (a {ENGINE_CHECKPOINTS_DIR}/ directory and \
         no raft-meta.json), a format this fincore no longer reads; start from an empty directory"
    )]
    EngineFormat { dir: PathBuf },
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
    /// Raft files without a marker (an older fincore's): the marker was written.
    Adopted,
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
            expected: marker_json(&FormatMarker::current()),
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
    Ok(Some(marker))
}

/// Checks that `dir` is a fincore data directory of a format this fincore reads (what
/// `verify` asks before reading anything else).
pub fn check(storage: &dyn Storage, dir: &Path) -> Result<FormatMarker, DataDirError> {
    read_marker(storage, dir)?.ok_or_else(|| DataDirError::NoMarker { dir: dir.into() })
}

/// Prepares `dir` (which must exist) for a replica to open: checks its marker, or writes one
/// into a new directory or a directory of raft files an older fincore left without one.
pub fn open(storage: &dyn Storage, dir: &Path) -> Result<Opened, DataDirError> {
    if read_marker(storage, dir)?.is_some() {
        return Ok(Opened::Marked);
    }
    let names = storage.list(dir).map_err(|source| DataDirError::Io {
        action: "listing",
        path: dir.into(),
        source,
    })?;
    let has = |name: &str| names.iter().any(|n| n == name);
    let adopted = REPLICA_FILES.iter().any(|name| has(name));
    if !adopted && has(ENGINE_CHECKPOINTS_DIR) {
        return Err(DataDirError::EngineFormat { dir: dir.into() });
    }
    write_marker(storage, dir, &FormatMarker::current())?;
    Ok(if adopted {
        Opened::Adopted
    } else {
        Opened::Created
    })
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
        assert_eq!(open(&RealStorage, dir.path()).unwrap(), Opened::Created);
        let text = std::fs::read_to_string(dir.path().join(FORMAT_FILE)).unwrap();
        assert_eq!(text, "{\"format\":\"fincore-replica\",\"version\":1}\n");
        assert_eq!(open(&RealStorage, dir.path()).unwrap(), Opened::Marked);
        assert_eq!(
            check(&RealStorage, dir.path()).unwrap(),
            FormatMarker::current()
        );
    }

    #[test]
    fn raft_files_without_a_marker_are_adopted_and_marked() {
        for file in REPLICA_FILES {
            let dir = tempfile::tempdir().unwrap();
            write(dir.path(), file, b"{}");
            assert_eq!(open(&RealStorage, dir.path()).unwrap(), Opened::Adopted);
            assert!(check(&RealStorage, dir.path()).is_ok());
        }
    }

    #[test]
    fn an_unknown_or_newer_format_is_refused_naming_the_file_and_what_it_says() {
        let dir = tempfile::tempdir().unwrap();
        let cases: [(&[u8], &str); 4] = [
            (
                b"{\"format\":\"fincore-replica\",\"version\":2}",
                "format version 2, written by a newer fincore",
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
                open(&RealStorage, dir.path()).unwrap_err(),
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
        let message = open(&RealStorage, dir.path()).unwrap_err().to_string();
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
    async fn a_replica_directory_from_before_the_marker_is_adopted_and_keeps_its_state() {
        let dir = tempfile::tempdir().unwrap();
        let replica = replica_with_accounts(dir.path(), 10).await;
        assert_eq!(
            check(&RealStorage, dir.path()).unwrap(),
            FormatMarker::current()
        );
        let (index, digest) = replica.applied();
        replica.shutdown().await;
        drop(replica);

        // What the previous fincore left: the same files, no marker.
        std::fs::remove_file(dir.path().join(FORMAT_FILE)).unwrap();
        let error = crate::verify(dir.path()).unwrap_err();
        assert!(error.contains("has no fincore-format.json"), "{error}");

        let replica = replica_with_accounts(dir.path(), 0).await;
        assert!(
            replica
                .wait_applied(index, std::time::Duration::from_secs(10))
                .await
        );
        assert_eq!(replica.state().read().unwrap().digest(), digest);
        assert_eq!(replica.state().read().unwrap().accounts_count(), 10);
        replica.shutdown().await;
        assert!(check(&RealStorage, dir.path()).is_ok());
        assert_eq!(crate::verify(dir.path()).unwrap().accounts, 10);
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
