//! Explicit membership: how a node's data directory comes to belong to a replica group, decided
//! before the replica opens it, so that no node creates or joins a group by accident.
//!
//! A group is created once (`fincore init` or `serve --bootstrap` on an empty directory: a new
//! group id and the initial members are written down, and the replica initializes the group
//! the first time it runs). A new member starts on an empty directory only with `--join GROUP`
//! and waits until the group's leader adds it (as a learner first). Every other start needs a
//! directory that already holds this node's replica of some group; an empty one is refused with
//! the flags that would make it start. The format marker records the group id and node id, so
//! a directory never serves another group or another node id.
//!
//! Owns the group id, the rules above and the `bootstrap.json` file (the initial members of a
//! group this directory creates). Must not read or write the log, the votes or the snapshot
//! (the log store and the state machine own them), and talks to no peer.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use journal::storage::{RealStorage, Storage, read_file, write_atomically};
use serde::{Deserialize, Serialize};

use crate::data_dir::{self, DataDirError, FormatMarker};
use crate::machine::ReplicaMachine;
use crate::replica::{Replica, WriteError};
use crate::types::{NodeId, PeerNode};

/// The initial members of a group this directory creates, kept beside the marker until the
/// replica has initialized the group with them (and afterwards, as a record; it is read only
/// while the replica's log and votes are still empty).
pub const BOOTSTRAP_FILE: &str = "bootstrap.json";

/// A replica group's id: 128 random bits, as 32 lower-case hex digits. Chosen when the group is
/// created; every member's data directory records it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupId(String);

impl GroupId {
    /// Length of the text form.
    pub const HEX_DIGITS: usize = 32;

    /// A new random group id (from the operating system's random source).
    pub fn generate() -> io::Result<GroupId> {
        let mut bytes = [0u8; Self::HEX_DIGITS / 2];
        getrandom::fill(&mut bytes).map_err(|e| io::Error::other(format!("random source: {e}")))?;
        Ok(GroupId(bytes.iter().map(|b| format!("{b:02x}")).collect()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for GroupId {
    type Err = String;

    fn from_str(text: &str) -> Result<GroupId, String> {
        let text = text.trim();
        if text.len() != Self::HEX_DIGITS || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "{text:?} is not a group id ({} hex digits, as `fincore init` or `serve --bootstrap` printed it)",
                Self::HEX_DIGITS
            ));
        }
        Ok(GroupId(text.to_ascii_lowercase()))
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How this start of a node enters its group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Entry {
    /// The directory already holds this node's replica (a restart): no flag needed.
    #[default]
    Resume,
    /// Create a new group on an empty directory (`--bootstrap`, `fincore init`), with the given
    /// group id or a new random one.
    Bootstrap { group: Option<GroupId> },
    /// Become a member of group `group` on an empty directory (`--join`): the node waits until
    /// the group's leader adds it. Harmless on a directory already of that group.
    Join { group: GroupId },
}

/// What [`prepare`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// The directory's group (`None`: a directory made before group ids existed).
    pub group: Option<GroupId>,
    /// The initial members this directory's replica must initialize the group with, if it
    /// has not yet (a bootstrap not yet completed).
    pub bootstrap: Option<BTreeMap<NodeId, PeerNode>>,
    /// The directory was empty and now belongs to `group`.
    pub created: bool,
}

impl Prepared {
    /// Completes a pending bootstrap: initializes the group with its initial members if the
    /// replica has neither a log nor a vote yet. Answers whether it did.
    pub async fn finish_bootstrap<M: ReplicaMachine>(
        &self,
        replica: &Replica<M>,
    ) -> Result<bool, WriteError> {
        match &self.bootstrap {
            Some(members) if !replica.is_initialized().await => {
                replica.initialize(members).await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

/// Why a start was refused. Each message names the directory and what to do.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error(
        "{dir} holds no replica (it is empty or new). A node starts on an empty data directory \
         only to create a new group (`fincore serve --bootstrap`, or `fincore init` first) or to \
         become a new member of an existing group (`fincore serve --join GROUP_ID`, then \
         `fincore admin add-replica` on the group). If this node already has data, --data-dir \
         is wrong"
    )]
    Empty { dir: PathBuf },
    #[error(
        "--bootstrap creates a new group on an empty data directory, but {dir} already holds \
         {whose}: a group is created once. Start the node without --bootstrap"
    )]
    AlreadyCreated { dir: PathBuf, whose: String },
    #[error(
        "{flag} needs an empty data directory, and {dir} holds a replica written by an older \
         fincore (raft files without a {marker}); start it without {flag}",
        marker = data_dir::FORMAT_FILE
    )]
    NotEmpty { dir: PathBuf, flag: &'static str },
    #[error(
        "{dir} is not a fincore data directory: it holds files but no {marker} and no replica. \
         {advice}",
        marker = data_dir::FORMAT_FILE,
        advice = match flag {
            Some(flag) => format!("{flag} needs an empty (or new) directory"),
            None => "Check --data-dir".to_string(),
        }
    )]
    NotADataDir {
        dir: PathBuf,
        flag: Option<&'static str>,
    },
    #[error(
        "{dir} belongs to group {found}; it cannot join group {wanted}. A directory serves one \
         group for life: to add a node to group {wanted}, give it an empty directory"
    )]
    OtherGroup {
        dir: PathBuf,
        found: String,
        wanted: GroupId,
    },
    #[error(
        "{dir} holds a replica made before group ids existed (its {marker} names no group), so \
         it cannot --join a group; start it without --join",
        marker = data_dir::FORMAT_FILE
    )]
    NoGroup { dir: PathBuf },
    #[error(
        "{dir} holds node {found}'s replica (its votes and log are node {found}'s), not node \
         {wanted}'s: start it with --node-id {found}, or give node {wanted} its own directory"
    )]
    OtherNode {
        dir: PathBuf,
        found: NodeId,
        wanted: NodeId,
    },
    #[error("the initial members of a new group must include this node (id {node})")]
    NotAMember { node: NodeId },
    #[error("{path} is not a bootstrap file ({reason})")]
    BadBootstrapFile { path: PathBuf, reason: String },
    #[error(transparent)]
    DataDir(#[from] DataDirError),
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> MembershipError {
    let path = path.to_path_buf();
    move |source| {
        MembershipError::DataDir(DataDirError::Io {
            action,
            path,
            source,
        })
    }
}

/// `bootstrap.json`: who created the group and with which members.
#[derive(Debug, Serialize, Deserialize)]
struct BootstrapFile {
    node: NodeId,
    members: BTreeMap<NodeId, PeerNode>,
}

/// True if `dir` holds a replica (a format marker, or the files of a replica written before
/// the marker existed): starting there needs no membership flag.
pub fn holds_replica(dir: &Path) -> Result<bool, MembershipError> {
    let storage = &RealStorage;
    Ok(data_dir::read_marker(storage, dir)?.is_some() || holds_unmarked_replica(storage, dir)?)
}

/// The files of a replica (or of the retired embedded engine) without a marker: what an older
/// fincore left, which the log store adopts (or refuses with its reason).
fn holds_unmarked_replica(storage: &dyn Storage, dir: &Path) -> Result<bool, MembershipError> {
    let names = list(storage, dir)?;
    Ok(data_dir::REPLICA_FILES
        .iter()
        .chain([&data_dir::ENGINE_CHECKPOINTS_DIR])
        .any(|file| names.iter().any(|name| name == file)))
}

fn list(storage: &dyn Storage, dir: &Path) -> Result<Vec<String>, MembershipError> {
    match storage.list(dir) {
        Ok(names) => Ok(names),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(error) => Err(io_error("listing", dir)(error)),
    }
}

/// No marker and nothing but leftovers of an interrupted `--bootstrap` (its file, temporary
/// files of atomic writes) and the operator's key files (`data_dir::KEYS_FILE`, …).
fn is_empty(storage: &dyn Storage, dir: &Path) -> Result<bool, MembershipError> {
    let names = list(storage, dir)?;
    let leftovers = [
        data_dir::KEYS_FILE.to_string(),
        data_dir::KEYS_FILE_TEMPORARY.to_string(),
        data_dir::DEV_KEY_FILE.to_string(),
        data_dir::DEV_PEER_CERTIFICATES_DIR.to_string(),
        BOOTSTRAP_FILE.to_string(),
        Path::new(BOOTSTRAP_FILE)
            .with_extension("tmp")
            .display()
            .to_string(),
        Path::new(data_dir::FORMAT_FILE)
            .with_extension("tmp")
            .display()
            .to_string(),
    ];
    Ok(names.iter().all(|name| leftovers.contains(name)))
}

/// Decides what this start of node `node` on `dir` may do under `entry`, and on an empty
/// directory writes what makes it a member (the marker with the group and node ids, and for a
/// bootstrap the initial `members`). Changes nothing when it refuses. On the real file system
/// (the simulator creates its groups itself).
pub fn prepare(
    dir: &Path,
    node: NodeId,
    entry: &Entry,
    members: &BTreeMap<NodeId, PeerNode>,
    machine: &str,
) -> Result<Prepared, MembershipError> {
    let storage = &RealStorage;
    match data_dir::read_marker(storage, dir)? {
        Some(marker) => {
            marker.check_machine(dir, machine)?;
            prepare_marked(storage, dir, node, entry, marker)
        }
        None if is_empty(storage, dir)? => create(storage, dir, node, entry, members, machine),
        None if !holds_unmarked_replica(storage, dir)? => Err(MembershipError::NotADataDir {
            dir: dir.into(),
            flag: match entry {
                Entry::Resume => None,
                Entry::Bootstrap { .. } => Some("--bootstrap"),
                Entry::Join { .. } => Some("--join"),
            },
        }),
        // An older fincore's replica, which the log store adopts (or refuses); never a place to
        // create or join a group.
        None => match entry {
            Entry::Resume => Ok(Prepared {
                group: None,
                bootstrap: None,
                created: false,
            }),
            Entry::Bootstrap { .. } => Err(MembershipError::NotEmpty {
                dir: dir.into(),
                flag: "--bootstrap",
            }),
            Entry::Join { .. } => Err(MembershipError::NotEmpty {
                dir: dir.into(),
                flag: "--join",
            }),
        },
    }
}

fn prepare_marked(
    storage: &dyn Storage,
    dir: &Path,
    node: NodeId,
    entry: &Entry,
    marker: FormatMarker,
) -> Result<Prepared, MembershipError> {
    if let Some(found) = marker.node
        && found != node
    {
        return Err(MembershipError::OtherNode {
            dir: dir.into(),
            found,
            wanted: node,
        });
    }
    let group = marker
        .group
        .as_deref()
        .map(|text| {
            text.parse::<GroupId>()
                .map_err(|reason| DataDirError::Unreadable {
                    path: dir.join(data_dir::FORMAT_FILE),
                    reason,
                    expected: "a group id of 32 hex digits".into(),
                })
        })
        .transpose()?;
    match (entry, &group) {
        (Entry::Resume, _) => {}
        (Entry::Bootstrap { .. }, _) => {
            let whose = match &group {
                Some(group) => format!("node {node} of group {group}"),
                None => format!("node {node}'s replica"),
            };
            return Err(MembershipError::AlreadyCreated {
                dir: dir.into(),
                whose,
            });
        }
        (Entry::Join { group: wanted }, Some(found)) if wanted == found => {}
        (Entry::Join { group: wanted }, Some(found)) => {
            return Err(MembershipError::OtherGroup {
                dir: dir.into(),
                found: found.to_string(),
                wanted: wanted.clone(),
            });
        }
        (Entry::Join { .. }, None) => return Err(MembershipError::NoGroup { dir: dir.into() }),
    }
    if marker.node.is_none() {
        // A directory from before node ids were recorded: it is this node's from now on.
        data_dir::write_marker(
            storage,
            dir,
            &FormatMarker {
                node: Some(node),
                ..marker
            },
        )?;
    }
    Ok(Prepared {
        group,
        bootstrap: read_bootstrap(storage, dir)?,
        created: false,
    })
}

/// An empty directory becomes node `node`'s, of a new group or of the group it joins. The
/// marker is written last: until it exists the directory still counts as empty.
fn create(
    storage: &dyn Storage,
    dir: &Path,
    node: NodeId,
    entry: &Entry,
    members: &BTreeMap<NodeId, PeerNode>,
    machine: &str,
) -> Result<Prepared, MembershipError> {
    let (group, bootstrap) = match entry {
        Entry::Resume => return Err(MembershipError::Empty { dir: dir.into() }),
        Entry::Join { group } => (group.clone(), None),
        Entry::Bootstrap { .. } if !members.contains_key(&node) => {
            return Err(MembershipError::NotAMember { node });
        }
        Entry::Bootstrap { group: Some(group) } => (group.clone(), Some(members.clone())),
        Entry::Bootstrap { group: None } => (
            GroupId::generate().map_err(io_error("choosing a group id for", dir))?,
            Some(members.clone()),
        ),
    };
    storage
        .create_dir_all(dir)
        .map_err(io_error("creating", dir))?;
    if let Some(members) = &bootstrap {
        let path = dir.join(BOOTSTRAP_FILE);
        let file = BootstrapFile {
            node,
            members: members.clone(),
        };
        let json = serde_json::to_string_pretty(&file).expect("a bootstrap file serializes");
        write_atomically(storage, &path, (json + "\n").as_bytes())
            .map_err(io_error("writing", &path))?;
    }
    data_dir::write_marker(
        storage,
        dir,
        &FormatMarker::of_member(group.as_str(), node, machine),
    )?;
    Ok(Prepared {
        group: Some(group),
        bootstrap,
        created: true,
    })
}

fn read_bootstrap(
    storage: &dyn Storage,
    dir: &Path,
) -> Result<Option<BTreeMap<NodeId, PeerNode>>, MembershipError> {
    let path = dir.join(BOOTSTRAP_FILE);
    let Some(bytes) = read_file(storage, &path).map_err(io_error("reading", &path))? else {
        return Ok(None);
    };
    let file: BootstrapFile =
        serde_json::from_slice(&bytes).map_err(|error| MembershipError::BadBootstrapFile {
            path: path.clone(),
            reason: error.to_string(),
        })?;
    if !file.members.contains_key(&file.node) {
        return Err(MembershipError::BadBootstrapFile {
            path,
            reason: format!("its members do not include its node {}", file.node),
        });
    }
    Ok(Some(file.members))
}

#[cfg(test)]
mod tests {
    use journal::storage::RealStorage;

    use super::*;
    use crate::data_dir::LEDGER_MACHINE;

    fn members(ids: &[NodeId]) -> BTreeMap<NodeId, PeerNode> {
        ids.iter()
            .map(|&id| {
                (
                    id,
                    PeerNode {
                        grpc: format!("127.0.0.1:{}", 7700 + id),
                        http: String::new(),
                        peer: format!("127.0.0.1:{}", 7790 + id),
                    },
                )
            })
            .collect()
    }

    fn group(text: &str) -> GroupId {
        text.repeat(GroupId::HEX_DIGITS / text.len())
            .parse()
            .unwrap()
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .map(|e| e.unwrap().file_name().into_string().unwrap())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    #[test]
    fn group_ids_are_32_hex_digits_and_generated_ones_differ() {
        let a = GroupId::generate().unwrap();
        let b = GroupId::generate().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.as_str().parse::<GroupId>().unwrap(), a);
        assert_eq!(
            "ABCDEF0123456789abcdef0123456789"
                .parse::<GroupId>()
                .unwrap()
                .as_str(),
            "abcdef0123456789abcdef0123456789"
        );
        for bad in [
            "",
            "xyz",
            "abcdef0123456789abcdef012345678",
            "g".repeat(32).as_str(),
        ] {
            let error = bad.parse::<GroupId>().unwrap_err();
            assert!(error.contains("not a group id"), "{error}");
        }
    }

    #[test]
    fn an_empty_directory_without_bootstrap_or_join_is_refused_and_left_empty() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let error = prepare(&data, 1, &Entry::Resume, &members(&[1]), LEDGER_MACHINE).unwrap_err();
        assert!(!data.exists(), "a refused start creates nothing");
        let message = error.to_string();
        assert!(matches!(error, MembershipError::Empty { .. }), "{message}");
        for needed in ["--bootstrap", "--join", "fincore init", "--data-dir"] {
            assert!(message.contains(needed), "{message}");
        }
    }

    #[test]
    fn bootstrap_writes_the_group_and_members_once_and_a_restart_needs_no_flag() {
        let dir = tempfile::tempdir().unwrap();
        let entry = Entry::Bootstrap { group: None };
        let created = prepare(dir.path(), 2, &entry, &members(&[1, 2, 3]), LEDGER_MACHINE).unwrap();
        assert!(created.created);
        assert_eq!(created.bootstrap, Some(members(&[1, 2, 3])));
        assert_eq!(files(dir.path()), [BOOTSTRAP_FILE, data_dir::FORMAT_FILE]);
        let marker = data_dir::check(&RealStorage, dir.path()).unwrap();
        let id = created.group.clone().unwrap();
        assert_eq!(
            marker,
            FormatMarker::of_member(id.as_str(), 2, LEDGER_MACHINE)
        );

        let resumed =
            prepare(dir.path(), 2, &Entry::Resume, &members(&[]), LEDGER_MACHINE).unwrap();
        assert_eq!(
            resumed,
            Prepared {
                created: false,
                ..created
            }
        );

        // A second bootstrap is refused, names the group, and changes nothing.
        let before = std::fs::read(dir.path().join(data_dir::FORMAT_FILE)).unwrap();
        let message = prepare(dir.path(), 2, &entry, &members(&[2]), LEDGER_MACHINE)
            .unwrap_err()
            .to_string();
        assert!(message.contains("a group is created once"), "{message}");
        assert!(message.contains(id.as_str()), "{message}");
        assert_eq!(
            std::fs::read(dir.path().join(data_dir::FORMAT_FILE)).unwrap(),
            before
        );
    }

    #[test]
    fn join_is_harmless_on_its_own_group_and_refused_on_another() {
        let dir = tempfile::tempdir().unwrap();
        let (mine, other) = (group("a1"), group("b2"));
        let join = |group: &GroupId| Entry::Join {
            group: group.clone(),
        };
        let created = prepare(dir.path(), 4, &join(&mine), &members(&[]), LEDGER_MACHINE).unwrap();
        assert_eq!(created.group, Some(mine.clone()));
        assert_eq!(created.bootstrap, None);
        assert_eq!(files(dir.path()), [data_dir::FORMAT_FILE]);
        assert!(
            !prepare(dir.path(), 4, &join(&mine), &members(&[]), LEDGER_MACHINE)
                .unwrap()
                .created
        );

        let error =
            prepare(dir.path(), 4, &join(&other), &members(&[]), LEDGER_MACHINE).unwrap_err();
        let message = error.to_string();
        assert!(
            matches!(error, MembershipError::OtherGroup { .. }),
            "{message}"
        );
        assert!(
            message.contains(mine.as_str()) && message.contains(other.as_str()),
            "{message}"
        );
        // Neither may it start a new group.
        let message = prepare(
            dir.path(),
            4,
            &Entry::Bootstrap { group: None },
            &members(&[4]),
            LEDGER_MACHINE,
        )
        .unwrap_err()
        .to_string();
        assert!(
            message.contains("already holds node 4 of group"),
            "{message}"
        );
    }

    #[test]
    fn a_directory_serves_only_the_node_id_it_was_made_for() {
        let dir = tempfile::tempdir().unwrap();
        let entry = Entry::Join { group: group("c3") };
        prepare(dir.path(), 2, &entry, &members(&[]), LEDGER_MACHINE).unwrap();
        let message = prepare(dir.path(), 3, &Entry::Resume, &members(&[]), LEDGER_MACHINE)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("holds node 2's replica") && message.contains("--node-id 2"),
            "{message}"
        );
    }

    #[test]
    fn a_directory_serves_only_the_machine_it_was_made_for() {
        let dir = tempfile::tempdir().unwrap();
        let entry = Entry::Join { group: group("e5") };
        prepare(dir.path(), 2, &entry, &members(&[]), "meta").unwrap();
        let before = std::fs::read(dir.path().join(data_dir::FORMAT_FILE)).unwrap();
        for entry in [Entry::Resume, entry] {
            let message = prepare(dir.path(), 2, &entry, &members(&[]), LEDGER_MACHINE)
                .unwrap_err()
                .to_string();
            assert!(
                message.contains("holds a meta replica") && message.contains("ledger"),
                "{message}"
            );
        }
        assert_eq!(
            std::fs::read(dir.path().join(data_dir::FORMAT_FILE)).unwrap(),
            before
        );
        assert!(
            !prepare(dir.path(), 2, &Entry::Resume, &members(&[]), "meta")
                .unwrap()
                .created
        );
    }

    #[test]
    fn a_directory_from_before_group_ids_resumes_claimed_by_its_node_but_cannot_join() {
        let dir = tempfile::tempdir().unwrap();
        data_dir::write_marker(
            &RealStorage,
            dir.path(),
            &FormatMarker::current(LEDGER_MACHINE),
        )
        .unwrap();
        let resumed =
            prepare(dir.path(), 5, &Entry::Resume, &members(&[]), LEDGER_MACHINE).unwrap();
        assert_eq!(resumed.group, None);
        assert_eq!(
            data_dir::check(&RealStorage, dir.path()).unwrap().node,
            Some(5)
        );
        let entry = Entry::Join { group: group("d4") };
        let message = prepare(dir.path(), 5, &entry, &members(&[]), LEDGER_MACHINE)
            .unwrap_err()
            .to_string();
        assert!(message.contains("names no group"), "{message}");
    }

    #[test]
    fn a_directory_of_other_files_is_refused_whatever_the_flags() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"mine").unwrap();
        assert!(!holds_replica(dir.path()).unwrap());
        for (entry, expected) in [
            (Entry::Resume, "Check --data-dir"),
            (
                Entry::Bootstrap { group: None },
                "--bootstrap needs an empty",
            ),
            (Entry::Join { group: group("e5") }, "--join needs an empty"),
        ] {
            let message = prepare(dir.path(), 1, &entry, &members(&[1]), LEDGER_MACHINE)
                .unwrap_err()
                .to_string();
            assert!(
                message.contains("is not a fincore data directory"),
                "{message}"
            );
            assert!(message.contains(expected), "{message}");
        }
        assert_eq!(files(dir.path()), ["notes.txt"]);
    }

    #[test]
    fn an_older_fincores_replica_resumes_but_is_never_bootstrapped_or_joined() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("raft-meta.json"), b"{}").unwrap();
        assert!(holds_replica(dir.path()).unwrap());
        for (entry, flag) in [
            (Entry::Bootstrap { group: None }, "--bootstrap"),
            (Entry::Join { group: group("e5") }, "--join"),
        ] {
            let message = prepare(dir.path(), 1, &entry, &members(&[1]), LEDGER_MACHINE)
                .unwrap_err()
                .to_string();
            assert!(message.contains(&format!("without {flag}")), "{message}");
        }
        let resumed =
            prepare(dir.path(), 1, &Entry::Resume, &members(&[]), LEDGER_MACHINE).unwrap();
        assert_eq!(resumed.group, None);
        assert_eq!(files(dir.path()), ["raft-meta.json"]);
    }

    #[test]
    fn a_bootstrap_must_list_this_node_among_the_initial_members() {
        let dir = tempfile::tempdir().unwrap();
        let entry = Entry::Bootstrap { group: None };
        let error = prepare(dir.path(), 9, &entry, &members(&[1, 2]), LEDGER_MACHINE).unwrap_err();
        assert!(matches!(error, MembershipError::NotAMember { node: 9 }));
        assert!(files(dir.path()).is_empty());
    }
}
