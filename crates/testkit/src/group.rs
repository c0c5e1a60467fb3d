//! The addresses of a replica group on loopback and the `fincore serve` arguments that make
//! them one group: node ids 1..=N, `--peers` listing every member's gRPC and HTTP address, and
//! optionally `--peer-routes` through proxies.
//!
//! Owns only this naming scheme; it starts nothing (see [`crate::node`]).

use crate::{KitError, free_addrs};

/// The largest group the layout plans for (Raft groups here have 1, 3 or 5 replicas; tests add
/// one or two at run time).
pub const REPLICAS_MAX: usize = 7;

/// Where the members of a group listen. Member `i` (0-based) is node id `i + 1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupLayout {
    pub grpc_addrs: Vec<String>,
    pub http_addrs: Vec<String>,
}

impl GroupLayout {
    /// `replicas` members on free loopback ports.
    pub fn on_free_ports(replicas: usize) -> Result<GroupLayout, KitError> {
        assert!(
            (1..=REPLICAS_MAX).contains(&replicas),
            "a group has 1..={REPLICAS_MAX} replicas, not {replicas}"
        );
        let mut grpc_addrs = free_addrs(2 * replicas)?;
        let http_addrs = grpc_addrs.split_off(replicas);
        Ok(GroupLayout {
            grpc_addrs,
            http_addrs,
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

    /// The `--peers` value: `ID=GRPC/HTTP,…` for the first `members` members.
    pub fn peers(&self, members: usize) -> String {
        assert!(members <= self.len(), "{members} members of {}", self.len());
        (0..members)
            .map(|i| format!("{}={}/{}", i + 1, self.grpc_addrs[i], self.http_addrs[i]))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The arguments of member `i` in a group of the first `members` members: its id, the
    /// peers, its listen addresses.
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
        ]
        .map(String::from)
        .to_vec()
    }

    /// `--peer-routes ID=ADDR,…`: member `i` reaches each other member `j` at `route(j)`
    /// (a proxy) instead of at its own gRPC address.
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
        };
        assert_eq!(layout.peers(3), "1=g1/h1,2=g2/h2,3=g3/h3");
        assert_eq!(
            layout.serve_args(1, 2),
            [
                "--node-id",
                "2",
                "--peers",
                "1=g1/h1,2=g2/h2",
                "--grpc",
                "g2",
                "--http",
                "h2"
            ]
        );
        assert_eq!(
            layout.peer_routes_args(0, |j| format!("p{j}")),
            ["--peer-routes", "2=p1,3=p2"]
        );
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
