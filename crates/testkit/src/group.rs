//! The addresses of a replica group on loopback and the `fincore serve` arguments that make
//! them one group: node ids 1..=N, `--peers` listing every member's gRPC, HTTP and peer
//! address, optionally `--peer-routes` through proxies, and on a node's first start the
//! membership flags (member 1 bootstraps the group, the others join it).
//!
//! Every member gets `--peer-certs DIR`, one directory per layout (removed with it), which
//! [`crate::certs`] fills with the group's development certificates as members start: the
//! replicas of a test group talk mutual TLS, as in production.
//!
//! Owns only this naming scheme; it starts nothing (see [`crate::node`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{KitError, free_addrs};

/// The file a node's data directory holds once it belongs to a group (the format marker,
/// `replication::data_dir::FORMAT_FILE`).
pub(crate) const FORMAT_MARKER_FILE: &str = "fincore-format.json";

/// The listen flags of a node on free loopback ports (each listener picks its own).
pub const FREE_PORTS_ARGS: [&str; 6] = [
    "--grpc",
    "127.0.0.1:0",
    "--http",
    "127.0.0.1:0",
    "--peer",
    "127.0.0.1:0",
];

/// True if `data_dir` holds no node yet (no format marker): a start there is the node's first
/// and needs a membership flag.
pub fn is_new_node(data_dir: &Path) -> bool {
    !data_dir.join(FORMAT_MARKER_FILE).exists()
}

/// `--bootstrap` on the first start of a single node on `data_dir` (a new group of one);
/// nothing on a restart.
pub fn single_node_args(data_dir: &Path) -> Vec<String> {
    if is_new_node(data_dir) {
        vec!["--bootstrap".to_string()]
    } else {
        Vec::new()
    }
}

/// A group id no other layout of this process or another has: 32 hex digits of the process
/// id, a counter and the clock.
fn new_group_id() -> String {
    static LAYOUTS: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!(
        "{:08x}{:08x}{nanos:016x}",
        std::process::id(),
        LAYOUTS.fetch_add(1, Ordering::Relaxed) as u32
    )
}

/// The largest group the layout plans for (Raft groups here have 1, 3 or 5 replicas; tests add
/// one or two at run time).
pub const REPLICAS_MAX: usize = 7;

/// Where the members of a group listen. Member `i` (0-based) is node id `i + 1`.
#[derive(Debug, Clone)]
pub struct GroupLayout {
    pub grpc_addrs: Vec<String>,
    pub http_addrs: Vec<String>,
    /// Where each member's peer listener is (what the other members dial).
    pub peer_addrs: Vec<String>,
    /// The group's id (what `--bootstrap --group` gives it and `--join` names).
    pub group: String,
    /// The members' peer certificates (`--peer-certs`), filled as they start.
    pub certificates: PathBuf,
    /// Keeps `certificates` until the last copy of the layout is dropped.
    _certificates_dir: Option<Arc<tempfile::TempDir>>,
}

impl GroupLayout {
    /// `replicas` members on free loopback ports.
    pub fn on_free_ports(replicas: usize) -> Result<GroupLayout, KitError> {
        assert!(
            (1..=REPLICAS_MAX).contains(&replicas),
            "a group has 1..={REPLICAS_MAX} replicas, not {replicas}"
        );
        let mut grpc_addrs = free_addrs(3 * replicas)?;
        let mut http_addrs = grpc_addrs.split_off(replicas);
        let peer_addrs = http_addrs.split_off(replicas);
        let certificates = tempfile::Builder::new()
            .prefix("fincore-peer-tls-")
            .tempdir()
            .map_err(KitError::io("creating a directory for peer certificates"))?;
        Ok(GroupLayout {
            grpc_addrs,
            http_addrs,
            peer_addrs,
            group: new_group_id(),
            certificates: certificates.path().to_path_buf(),
            _certificates_dir: Some(Arc::new(certificates)),
        })
    }

    pub fn len(&self) -> usize {
        self.grpc_addrs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.grpc_addrs.is_empty()
    }

    /// Every member's gRPC address as a client URL (`http://HOST:PORT`).
    pub fn grpc_urls(&self) -> Vec<String> {
        self.grpc_addrs
            .iter()
            .map(|addr| format!("http://{addr}"))
            .collect()
    }

    /// The `--peers` value: `ID=GRPC/HTTP/PEER,…` for the first `members` members.
    pub fn peers(&self, members: usize) -> String {
        assert!(members <= self.len(), "{members} members of {}", self.len());
        (0..members)
            .map(|i| {
                format!(
                    "{}={}/{}/{}",
                    i + 1,
                    self.grpc_addrs[i],
                    self.http_addrs[i],
                    self.peer_addrs[i]
                )
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The arguments of member `i` in a group of the first `members` members: its id, the
    /// peers, its listen addresses, its peer certificates.
    pub fn serve_args(&self, i: usize, members: usize) -> Vec<String> {
        assert!(i < self.len(), "member {i} of {}", self.len());
        [
            "--node-id",
            &(i + 1).to_string(),
            "--peers",
            &self.peers(members),
            "--grpc",
            &self.grpc_addrs[i],
            "--http",
            &self.http_addrs[i],
            "--peer",
            &self.peer_addrs[i],
            "--peer-certs",
            &self.certificates.display().to_string(),
        ]
        .map(String::from)
        .to_vec()
    }

    /// The membership flags of member `i` starting on `data_dir`: on its first start member 0
    /// creates the group (`--bootstrap --group G`, its initial members being whatever
    /// `--peers` lists) and every other member joins it (`--join G`: an initial member, or a
    /// new one that waits to be added); nothing on a restart.
    pub fn membership_args(&self, i: usize, data_dir: &Path) -> Vec<String> {
        assert!(i < self.len(), "member {i} of {}", self.len());
        if !is_new_node(data_dir) {
            return Vec::new();
        }
        let flags: &[&str] = if i == 0 {
            &["--bootstrap", "--group", &self.group]
        } else {
            &["--join", &self.group]
        };
        flags.iter().map(|flag| flag.to_string()).collect()
    }

    /// `--peer-routes ID=ADDR,…`: member `i` reaches each other member `j` at `route(j)`
    /// (a proxy) instead of at its own peer address.
    pub fn peer_routes_args(&self, i: usize, route: impl Fn(usize) -> String) -> Vec<String> {
        let routes = (0..self.len())
            .filter(|&j| j != i)
            .map(|j| format!("{}={}", j + 1, route(j)))
            .collect::<Vec<_>>()
            .join(",");
        vec!["--peer-routes".to_string(), routes]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_arguments_name_the_node_its_peers_and_its_addresses() {
        let layout = GroupLayout {
            grpc_addrs: vec!["g1".into(), "g2".into(), "g3".into()],
            http_addrs: vec!["h1".into(), "h2".into(), "h3".into()],
            peer_addrs: vec!["p1".into(), "p2".into(), "p3".into()],
            group: "ab".repeat(16),
            certificates: PathBuf::from("c"),
            _certificates_dir: None,
        };
        assert_eq!(layout.peers(3), "1=g1/h1/p1,2=g2/h2/p2,3=g3/h3/p3");
        assert_eq!(
            layout.serve_args(1, 2),
            [
                "--node-id",
                "2",
                "--peers",
                "1=g1/h1/p1,2=g2/h2/p2",
                "--grpc",
                "g2",
                "--http",
                "h2",
                "--peer",
                "p2",
                "--peer-certs",
                "c"
            ]
        );
        assert_eq!(
            layout.peer_routes_args(0, |j| format!("p{j}")),
            ["--peer-routes", "2=p1,3=p2"]
        );
    }

    #[test]
    fn member_one_bootstraps_and_the_others_join_on_first_start_only() {
        let layout = GroupLayout::on_free_ports(2).unwrap();
        let other = GroupLayout::on_free_ports(2).unwrap();
        assert_ne!(layout.group, other.group);
        assert_eq!(layout.group.len(), 32);
        let dir = std::env::temp_dir().join(format!("testkit-group-{}", std::process::id()));
        assert_eq!(
            layout.membership_args(0, &dir),
            ["--bootstrap", "--group", &layout.group]
        );
        assert_eq!(layout.membership_args(1, &dir), ["--join", &layout.group]);
        assert_eq!(single_node_args(&dir), ["--bootstrap"]);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(FORMAT_MARKER_FILE), b"{}").unwrap();
        assert!(layout.membership_args(0, &dir).is_empty());
        assert!(layout.membership_args(1, &dir).is_empty());
        assert!(single_node_args(&dir).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_layout_on_free_ports_has_distinct_addresses() {
        let layout = GroupLayout::on_free_ports(3).unwrap();
        let mut all: Vec<&String> = layout.grpc_addrs.iter().chain(&layout.http_addrs).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 6);
    }
}
