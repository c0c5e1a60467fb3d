//! Several ledger groups on loopback and the cluster map that names them, for tests and
//! benchmarks of the gateway: [`LocalGroups::start`] starts `groups` groups of `replicas`
//! members each (as [`crate::group::GroupLayout`] lays them out, so their replicas talk mutual
//! TLS) and writes the map, with the slots dealt out evenly, for `fincore gateway --map`.
//!
//! Owns only that; the gateway process itself is [`crate::node::ChildNode::start_gateway`].

use std::path::{Path, PathBuf};

use cluster::{ClusterMap, GroupId, Member, Members};

use crate::KitError;
use crate::group::GroupLayout;
use crate::node::ChildNode;

/// Running groups and their map.
pub struct LocalGroups {
    pub layouts: Vec<GroupLayout>,
    /// `nodes[g][i]`: member `i` of group `g` (`None` once killed).
    pub nodes: Vec<Vec<Option<ChildNode>>>,
    pub map: ClusterMap,
    /// Where the map's JSON was written.
    pub map_path: PathBuf,
}

impl LocalGroups {
    /// Starts the groups under `root` (group `g`'s member `i` on `root/group-g/node-i`) with
    /// `extra` arguments for every node (a group of one has elected itself once its node
    /// announces; larger groups elect soon after, which clients ride out by retrying), and writes the
    /// map to `root/cluster-map.json`.
    pub fn start(
        exe: &Path,
        root: &Path,
        groups: usize,
        replicas: usize,
        extra: &[String],
    ) -> Result<LocalGroups, KitError> {
        let mut layouts = Vec::new();
        let mut nodes = Vec::new();
        for g in 0..groups {
            let layout = GroupLayout::on_free_ports(replicas)?;
            let members = std::thread::scope(|scope| {
                let starts: Vec<_> = (0..replicas)
                    .map(|i| {
                        let layout = &layout;
                        scope.spawn(move || {
                            let dir = root.join(format!("group-{g}")).join(format!("node-{i}"));
                            let mut args = layout.serve_args(i, replicas);
                            args.extend(layout.membership_args(i, &dir));
                            args.extend_from_slice(extra);
                            ChildNode::start(exe, &dir, &args)
                        })
                    })
                    .collect();
                starts
                    .into_iter()
                    .map(|start| start.join().expect("a start thread does not panic"))
                    .collect::<Result<Vec<_>, _>>()
            })?;
            layouts.push(layout);
            nodes.push(members.into_iter().map(Some).collect());
        }
        let map = map_of(&layouts)?;
        let map_path = root.join("cluster-map.json");
        std::fs::write(&map_path, map.to_json())
            .map_err(KitError::io(format!("writing {}", map_path.display())))?;
        Ok(LocalGroups {
            layouts,
            nodes,
            map,
            map_path,
        })
    }

    /// Member `i` of group `g`, if running.
    pub fn node(&self, g: usize, i: usize) -> Option<&ChildNode> {
        self.nodes.get(g)?.get(i)?.as_ref()
    }

    /// Kills member `i` of group `g` with SIGKILL (no clean stop), if running.
    pub fn kill9(&mut self, g: usize, i: usize) {
        if let Some(node) = self
            .nodes
            .get_mut(g)
            .and_then(|n| n.get_mut(i))
            .and_then(Option::take)
        {
            node.kill9();
        }
    }

    /// Stops every running node (SIGTERM, then waits).
    pub fn stop(self) -> Result<(), KitError> {
        for node in self.nodes.into_iter().flatten().flatten() {
            node.stop()?;
        }
        Ok(())
    }
}

/// The first map (epoch 1) of the groups laid out by `layouts`.
pub fn map_of(layouts: &[GroupLayout]) -> Result<ClusterMap, KitError> {
    let groups = layouts
        .iter()
        .map(|layout| {
            let id: GroupId = layout.group.parse().map_err(|_| KitError::BadMap {
                reason: format!("{:?} is not a group id", layout.group),
            })?;
            let members: Members = (0..layout.len())
                .map(|i| {
                    let member = Member {
                        grpc: layout.grpc_addrs[i].clone(),
                        http: layout.http_addrs[i].clone(),
                        peer: layout.peer_addrs[i].clone(),
                    };
                    (i as u64 + 1, member)
                })
                .collect();
            Ok((id, members))
        })
        .collect::<Result<_, KitError>>()?;
    ClusterMap::new(groups).map_err(|error| KitError::BadMap {
        reason: error.to_string(),
    })
}
