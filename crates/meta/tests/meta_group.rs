//! A three-replica meta group in one process over real loopback sockets: map changes commit
//! through the leader under the epoch compare-and-set, followers' watchers are told of each new
//! map, a leader change loses nothing, a restarted replica comes back with the map (from its
//! snapshot and log), and a new member joining after the log was compacted gets the map from a
//! snapshot streamed by the leader.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use cluster::{ClusterMap, GroupId, Member, Members, Slot, SuccessorError};
use meta::{MetaError, MetaGroup};
use replication::{PeerNode, ReplicaConfig, WriteError};
use tokio::task::JoinHandle;

fn config() -> ReplicaConfig {
    ReplicaConfig {
        // Small, so a handful of changes compacts the log and a new member needs a snapshot.
        snapshot_every_entries: 4,
        events: false,
        ..ReplicaConfig::default()
    }
}

/// A meta replica with its transport served on a loopback socket.
struct Running {
    group: MetaGroup,
    server: JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        self.group.shutdown().await;
        self.server.abort();
        let _ = self.server.await;
    }

    fn id(&self) -> u64 {
        self.group.replica().id()
    }
}

async fn start(id: u64, dir: &Path, addr: &str) -> Running {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let group = MetaGroup::open(id, dir, &config()).await.unwrap();
    let service = group.replica().transport_service();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let server = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming)
            .await;
    });
    Running { group, server }
}

fn peer(addr: &str) -> PeerNode {
    PeerNode {
        grpc: addr.to_string(),
        http: String::new(),
        peer: addr.to_string(),
    }
}

/// Waits (bounded) until the running replicas agree on a leader; answers its position.
async fn leader_of(replicas: &[&Running]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let leaders: Vec<Option<u64>> = replicas
            .iter()
            .map(|r| r.group.leader().map(|(id, _)| id))
            .collect();
        if let Some(Some(leader)) = leaders.first()
            && leaders.iter().all(|l| *l == Some(*leader))
            && let Some(position) = replicas.iter().position(|r| r.id() == *leader)
        {
            return position;
        }
        assert!(
            Instant::now() < deadline,
            "no leader agreed on within 15 s: {leaders:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `set_map` on the leader, retried (bounded) while leadership settles.
async fn set_map(
    leader: &Running,
    expected_epoch: u64,
    map: &ClusterMap,
) -> Result<ClusterMap, MetaError> {
    for _ in 0..50 {
        match leader.group.set_map(expected_epoch, map.clone()).await {
            Err(MetaError::Replication(
                WriteError::NotLeader { .. } | WriteError::Unknown { .. },
            )) => tokio::time::sleep(Duration::from_millis(50)).await,
            other => return other,
        }
    }
    panic!("the leader never took the change");
}

fn members(port: u16) -> Members {
    BTreeMap::from([(
        1,
        Member {
            grpc: format!("http://127.0.0.1:{port}"),
            http: format!("http://127.0.0.1:{}", port + 1),
            peer: format!("127.0.0.1:{}", port + 2),
        },
    )])
}

/// Waits (bounded) until `replica` holds the map of `epoch`.
async fn holds_epoch(replica: &Running, epoch: u64) -> ClusterMap {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(map) = replica.group.map()
            && map.epoch() >= epoch
        {
            return map;
        }
        assert!(
            Instant::now() < deadline,
            "replica {} never held epoch {epoch} (holds {:?})",
            replica.id(),
            replica.group.map().map(|m| m.epoch())
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_map_is_changed_by_compare_and_set_pushed_to_watchers_and_survives_failover_restart_and_a_new_member()
 {
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let addrs = testkit::ports::free_addrs(4).unwrap();
    let mut replicas: Vec<Option<Running>> = Vec::new();
    for i in 0..3 {
        replicas.push(Some(start(i as u64 + 1, dirs[i].path(), &addrs[i]).await));
    }
    let initial: BTreeMap<u64, PeerNode> =
        (0..3).map(|i| (i as u64 + 1, peer(&addrs[i]))).collect();
    replicas[0]
        .as_ref()
        .unwrap()
        .group
        .replica()
        .initialize(&initial)
        .await
        .unwrap();
    let all: Vec<&Running> = replicas.iter().flatten().collect();
    let leader = leader_of(&all).await;
    let follower = (leader + 1) % 3;
    let mut watch = all[follower].group.watch();

    // The first map; a follower's watcher is told of it.
    let first = ClusterMap::new(BTreeMap::from([
        (GroupId::from_u128(1), members(20000)),
        (GroupId::from_u128(2), members(20010)),
    ]))
    .unwrap();
    assert_eq!(set_map(all[leader], 0, &first).await.unwrap(), first);
    let told = tokio::time::timeout(Duration::from_secs(15), watch.next())
        .await
        .expect("the watcher is told within 15 s")
        .unwrap();
    assert_eq!(told, first);

    // The compare-and-set and the successor rule, as the leader applies them.
    let second = first
        .set_members(GroupId::from_u128(2), members(20020))
        .unwrap();
    assert_eq!(
        set_map(all[leader], 0, &second).await,
        Err(MetaError::EpochMismatch {
            expected: 0,
            current: 1
        })
    );
    let moved = first
        .move_slots(&[Slot::new(7).unwrap()], GroupId::from_u128(2))
        .unwrap();
    assert_eq!(
        set_map(all[leader], 1, &moved).await,
        Err(MetaError::Refused(SuccessorError::MovesSlots { slot: 7 }))
    );
    assert_eq!(set_map(all[leader], 1, &second).await.unwrap(), second);
    let told = tokio::time::timeout(Duration::from_secs(15), watch.next())
        .await
        .expect("the watcher is told within 15 s")
        .unwrap();
    assert_eq!(told, second);
    assert_eq!(
        all[leader].group.map_linearizable().await.unwrap(),
        Some(second.clone())
    );
    // A follower does not answer linearizable reads.
    assert!(matches!(
        all[follower].group.map_linearizable().await,
        Err(MetaError::Replication(WriteError::NotLeader { .. }))
    ));

    // The leader stops; the others elect a new one and take the next change.
    let old_leader = replicas[leader].take().unwrap();
    let old_leader_id = old_leader.id();
    old_leader.stop().await;
    let rest: Vec<&Running> = replicas.iter().flatten().collect();
    let new_leader = leader_of(&rest).await;
    let third = second
        .add_group(GroupId::from_u128(3), members(20030))
        .unwrap();
    assert_eq!(set_map(rest[new_leader], 2, &third).await.unwrap(), third);
    // Enough changes that the log a new member would need is purged behind a snapshot.
    let mut latest = third;
    for port in 0..(limits::RAFT_LOG_KEPT_BEHIND_SNAPSHOT_ENTRIES as u16 + 8) {
        let next = latest
            .set_members(GroupId::from_u128(3), members(20100 + port * 10))
            .unwrap();
        latest = set_map(rest[new_leader], latest.epoch(), &next)
            .await
            .unwrap();
    }
    for replica in &rest {
        assert_eq!(holds_epoch(replica, latest.epoch()).await, latest);
    }

    // The old leader restarts from its directory and catches up.
    let index = (old_leader_id - 1) as usize;
    replicas[index] = Some(start(old_leader_id, dirs[index].path(), &addrs[index]).await);
    assert_eq!(
        holds_epoch(replicas[index].as_ref().unwrap(), latest.epoch()).await,
        latest
    );

    // A new member with an empty directory gets the map by a snapshot (the log it would need
    // was purged).
    let newcomer = start(4, dirs[3].path(), &addrs[3]).await;
    let all: Vec<&Running> = replicas.iter().flatten().collect();
    let leader = leader_of(&all).await;
    let mut added = false;
    for _ in 0..50 {
        match all[leader]
            .group
            .replica()
            .add_replica(4, peer(&addrs[3]))
            .await
        {
            Ok(()) => {
                added = true;
                break;
            }
            Err(WriteError::NotLeader { .. } | WriteError::Unknown { .. }) => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(other) => panic!("adding the new member failed: {other}"),
        }
    }
    assert!(added, "the new member was never added");
    assert_eq!(holds_epoch(&newcomer, latest.epoch()).await, latest);
    assert_eq!(
        newcomer
            .group
            .replica()
            .machine()
            .installed_from_peer_count(),
        1,
        "the new member was caught up by the leader's snapshot"
    );

    // A replica that stops ends its watches.
    let mut watch = newcomer.group.watch();
    assert_eq!(watch.next().await, Some(latest));
    newcomer.stop().await;
    let ended = tokio::time::timeout(Duration::from_secs(5), watch.next()).await;
    assert_eq!(ended, Ok(None), "the watch ends when its replica stops");
    for replica in replicas.into_iter().flatten() {
        replica.stop().await;
    }
}

/// A watch ends when its replica's Raft stops (a fatal error, or the replica shut down), so a
/// gateway watching it moves to another replica instead of waiting on one that applies no
/// newer map; until then it waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_ends_when_its_replicas_raft_stops() {
    let dir = tempfile::tempdir().unwrap();
    let addr = testkit::ports::free_addrs(1).unwrap().remove(0);
    let replica = start(1, dir.path(), &addr).await;
    replica
        .group
        .replica()
        .initialize(&BTreeMap::from([(1, peer(&addr))]))
        .await
        .unwrap();
    leader_of(&[&replica]).await;
    let map = ClusterMap::new(BTreeMap::from([(GroupId::from_u128(1), members(20100))])).unwrap();
    set_map(&replica, 0, &map).await.unwrap();
    let mut watch = replica.group.watch();
    assert_eq!(watch.next().await, Some(map));

    let raft_stopped = replica.group.replica().stopped_running();
    let raft_stopped = tokio::spawn(raft_stopped);
    let waiting = tokio::time::timeout(Duration::from_millis(300), watch.next()).await;
    assert!(waiting.is_err(), "no newer map: the watch waits");
    assert!(!raft_stopped.is_finished(), "Raft runs");

    // Raft fails alone (the machine is not told it stops, as after a failed fsync).
    let Running { group, server } = replica;
    group.replica().fail_raft_for_tests().await;
    tokio::time::timeout(Duration::from_secs(5), raft_stopped)
        .await
        .expect("the replica's Raft stopped within 5 s")
        .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("the watch ends within 5 s");
    assert_eq!(ended, None);
    assert!(
        !*group.replica().machine().watch_stopped().borrow(),
        "the machine was not told: the watch ended on Raft's failure"
    );
    group.shutdown().await;
    server.abort();
}
