//! What the gateway's end-to-end tests share: a gateway over local groups, ids placed in a
//! group, transfer ids homed with an account, a group's leader, the gateway's log.

use std::path::Path;

use cluster::{ClusterMap, GroupId, id_in_slot, slot_of};
use testkit::cluster::LocalGroups;

use super::{ChildNode, fincore_exe};

/// `groups` groups of `replicas` replicas under `dir`, and a gateway over them.
pub fn start_in(dir: &Path, groups: usize, replicas: usize) -> (LocalGroups, ChildNode) {
    let local = LocalGroups::start(fincore_exe(), dir, groups, replicas, &[])
        .unwrap_or_else(|error| panic!("{error}"));
    let gateway = ChildNode::start_gateway(
        fincore_exe(),
        &dir.join("gateway"),
        &local.map_path,
        &["--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0"],
    )
    .unwrap_or_else(|error| panic!("{error}"));
    (local, gateway)
}

/// A gateway over `local` (on free ports, under `dir/gateway`) applying the flow rules
/// `rules` (JSON, written to `dir/rules.json`).
pub fn start_with_rules(dir: &Path, local: &LocalGroups, rules: &str) -> ChildNode {
    let path = dir.join("rules.json");
    std::fs::write(&path, rules).unwrap();
    ChildNode::start_gateway(
        fincore_exe(),
        &dir.join("gateway"),
        &local.map_path,
        &[
            "--grpc",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--flow-rules",
            path.to_str().unwrap(),
        ],
    )
    .unwrap_or_else(|error| panic!("{error}"))
}

/// The first `count` ids from 1 up that live in `group` under `map`.
pub fn ids_in(map: &ClusterMap, group: GroupId, count: usize) -> Vec<u128> {
    (1u128..)
        .filter(|&id| map.group_of(id) == group)
        .take(count)
        .collect()
}

/// A transfer id homed with account `near` (in its slot), distinct per `n`.
pub fn transfer_id(near: u128, n: u128) -> u128 {
    id_in_slot(slot_of(near), 1_000 + n as u64, n).unwrap()
}

/// The member every running member of group `g` agrees leads it (bounded wait).
pub fn leader_of(groups: &LocalGroups, g: usize) -> usize {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let leaders: Vec<Option<u64>> = (0..groups.layouts[g].len())
            .filter_map(|i| groups.node(g, i))
            .map(|node| {
                testkit::http::replica_status(&node.http_addr, false)
                    .ok()
                    .and_then(|s| s.leader)
            })
            .collect();
        if let Some(Some(leader)) = leaders.first()
            && leaders.iter().all(|l| *l == Some(*leader))
            && groups.node(g, *leader as usize - 1).is_some()
        {
            return *leader as usize - 1;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "group {g} agreed on no leader: {leaders:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Waits (bounded) until the gateway's log holds `text`.
pub fn wait_for_log(gateway: &ChildNode, text: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let log = std::fs::read_to_string(&gateway.log_path).unwrap_or_default();
        if log.contains(text) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the gateway never logged {text:?}:\n{log}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
