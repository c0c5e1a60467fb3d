//! A three-replica group in one process over real loopback sockets: batches commit through the
//! leader and apply everywhere with identical digests; when the leader stops a new one takes
//! over and nothing acknowledged is lost; the old leader rejoins from its log and converges.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use ledger::{Account, BatchBody, BatchResults, CreateTransferResult, Transfer};
use replication::{PeerNode, Replica, ReplicaConfig, WriteError};
use tokio::task::JoinHandle;

fn config() -> ReplicaConfig {
    ReplicaConfig {
        snapshot_every_entries: 8,
        ..ReplicaConfig::default()
    }
}

/// A replica with its transport served on a loopback socket.
struct Running {
    replica: Replica,
    addr: SocketAddr,
    server: JoinHandle<()>,
}

impl std::ops::Deref for Running {
    type Target = Replica;
    fn deref(&self) -> &Replica {
        &self.replica
    }
}

impl Running {
    async fn stop(self) {
        self.replica.shutdown().await;
        self.server.abort();
        let _ = self.server.await;
    }
}

async fn start(id: u64, dir: &Path, addr: &str) -> Running {
    start_with(id, dir, addr, &config()).await
}

async fn start_with(id: u64, dir: &Path, addr: &str, config: &ReplicaConfig) -> Running {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let replica = Replica::open(id, dir, config).await.unwrap();
    let service = replica.transport_service();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let server = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming)
            .await;
    });
    Running {
        replica,
        addr,
        server,
    }
}

/// Starts a replica on each of `dirs`, initializes them as one group and creates accounts
/// 1..=5 through its leader.
async fn start_group(dirs: &[tempfile::TempDir], config: &ReplicaConfig) -> Vec<Option<Running>> {
    let mut replicas = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        replicas.push(Some(
            start_with(i as u64 + 1, dir.path(), "127.0.0.1:0", config).await,
        ));
    }
    let members: BTreeMap<u64, PeerNode> = replicas
        .iter()
        .flatten()
        .map(|r| {
            (
                r.id(),
                PeerNode {
                    grpc: r.addr.to_string(),
                    http: String::new(),
                    peer: r.addr.to_string(),
                },
            )
        })
        .collect();
    replicas[0]
        .as_ref()
        .unwrap()
        .initialize(&members)
        .await
        .unwrap();
    let all: Vec<&Running> = replicas.iter().flatten().collect();
    let leader = leader_of(&all).await;
    let accounts = BatchBody::CreateAccounts(
        (1..=5)
            .map(|id| Account {
                id,
                ledger: 1,
                code: 1,
                ..Default::default()
            })
            .collect(),
    );
    write_until_accepted(all[leader], accounts).await;
    replicas
}

/// Waits (bounded) until some replica in `replicas` is the leader that all of them agree on.
async fn leader_of(replicas: &[&Running]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let leaders: Vec<Option<u64>> = replicas
            .iter()
            .map(|r| r.leader().map(|(id, _)| id))
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

fn transfers(first_id: u128, count: u128) -> BatchBody {
    BatchBody::CreateTransfers(
        (first_id..first_id + count)
            .map(|id| Transfer {
                id,
                debit_account_id: id % 5 + 1,
                credit_account_id: (id + 1) % 5 + 1,
                amount: id,
                ledger: 1,
                code: 1,
                ..Default::default()
            })
            .collect(),
    )
}

async fn write_until_accepted(leader: &Running, body: BatchBody) -> BatchResults {
    for _ in 0..50 {
        match leader.write(body.clone()).await {
            Ok(results) => return results,
            Err(WriteError::NotLeader { .. } | WriteError::Unknown { .. }) => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(other) => panic!("write failed: {other}"),
        }
    }
    panic!("the leader never accepted the write");
}

async fn converge(replicas: &[&Running]) {
    let target = replicas.iter().map(|r| r.applied().0).max().unwrap();
    for replica in replicas {
        assert!(
            replica.wait_applied(target, Duration::from_secs(15)).await,
            "replica {} did not catch up",
            replica.id()
        );
    }
    let digests: Vec<_> = replicas.iter().map(|r| r.applied()).collect();
    assert!(
        digests.windows(2).all(|w| w[0] == w[1]),
        "replicas diverged: {digests:?}"
    );
}

/// Sends this test's logs (`RUST_LOG`) to the test's output; harmless if already set up.
fn log_to_test_output() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_three_replica_group_commits_fails_over_and_converges() {
    log_to_test_output();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut replicas = start_group(&dirs, &config()).await;
    let all: Vec<&Running> = replicas.iter().flatten().collect();
    let leader = leader_of(&all).await;
    for batch in 0..20u128 {
        let BatchResults::CreateTransfers(results) =
            write_until_accepted(all[leader], transfers(1 + batch * 100, 100)).await
        else {
            unreachable!()
        };
        assert!(
            results
                .iter()
                .all(|r| r.result == CreateTransferResult::Created)
        );
    }
    converge(&all).await;

    // The leader goes away; the other two elect a new one and keep committing.
    let old_leader_id = all[leader].id();
    let old_addr = all[leader].addr;
    drop(all);
    replicas[leader].take().unwrap().stop().await;
    let stopped = Instant::now();
    let survivors: Vec<&Running> = replicas.iter().flatten().collect();
    let new_leader = leader_of(&survivors).await;
    let results = write_until_accepted(survivors[new_leader], transfers(10_000, 50)).await;
    let pause = stopped.elapsed();
    let BatchResults::CreateTransfers(results) = results else {
        unreachable!()
    };
    assert!(
        results
            .iter()
            .all(|r| r.result == CreateTransferResult::Created)
    );
    // Transfers committed before the failover are all there, exactly once.
    {
        let state = survivors[new_leader].state().read().unwrap();
        assert_eq!(state.transfers_count(), 20 * 100 + 50);
        for (_, [dp, dpo, cp, cpo]) in state.ledger_totals() {
            assert_eq!((dp, dpo), (cp, cpo));
        }
    }
    converge(&survivors).await;
    eprintln!("write pause after the leader stopped: {pause:?}");

    // The old leader comes back on its old address and catches up.
    let dir = dirs[leader].path();
    replicas[leader] = Some(start(old_leader_id, dir, &old_addr.to_string()).await);
    let all: Vec<&Running> = replicas.iter().flatten().collect();
    converge(&all).await;
    assert_eq!(all[0].state().read().unwrap().transfers_count(), 2050);
    drop(all);
    for replica in replicas.into_iter().flatten() {
        replica.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_far_behind_catches_up_from_entries_read_back_from_the_journal() {
    log_to_test_output();
    // No snapshots, and more entries written while the follower is away than the leader keeps
    // in memory (256): catching up must read the older ones back from the leader's journal.
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let no_snapshots = ReplicaConfig {
        snapshot_every_entries: 0,
        ..ReplicaConfig::default()
    };
    let mut replicas = start_group(&dirs, &no_snapshots).await;
    let all: Vec<&Running> = replicas.iter().flatten().collect();
    let leader = leader_of(&all).await;
    let follower = (0..3).find(|&i| i != leader).unwrap();
    let (follower_id, follower_addr) = (all[follower].id(), all[follower].addr);
    drop(all);
    replicas[follower].take().unwrap().stop().await;
    let survivors: Vec<&Running> = replicas.iter().flatten().collect();
    let leader = leader_of(&survivors).await;
    for batch in 0..300u128 {
        write_until_accepted(survivors[leader], transfers(1 + batch * 10, 10)).await;
    }
    drop(survivors);
    replicas[follower] = Some(
        start_with(
            follower_id,
            dirs[follower].path(),
            &follower_addr.to_string(),
            &no_snapshots,
        )
        .await,
    );
    let all: Vec<&Running> = replicas.iter().flatten().collect();
    converge(&all).await;
    assert_eq!(
        all[follower].state().read().unwrap().transfers_count(),
        3000
    );
    drop(all);
    for replica in replicas.into_iter().flatten() {
        replica.stop().await;
    }
}

/// Full batches of `BATCH_EVENTS_MAX` transfers, so the ledger (and its snapshot) grows fast.
async fn write_full_batches(leader: &Running, first_id: u128, batches: u128) {
    let full = limits::BATCH_EVENTS_MAX as u128;
    for batch in 0..batches {
        write_until_accepted(leader, transfers(first_id + batch * full, full)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wiped_follower_catches_up_from_a_snapshot_streamed_in_many_chunks() {
    log_to_test_output();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut replicas = start_group(&dirs, &config()).await;
    let all: Vec<&Running> = replicas.iter().flatten().collect();
    let leader = leader_of(&all).await;
    let follower = (0..3).find(|&i| i != leader).unwrap();
    let (follower_id, follower_addr) = (all[follower].id(), all[follower].addr);
    let leader_id = all[leader].id();
    // About 6 MiB of ledger: a snapshot of several chunks.
    write_full_batches(all[leader], 1, 6).await;
    drop(all);
    replicas[follower].take().unwrap().stop().await;
    // Nothing writes in a stopped replica's directory (a snapshot build gives up).
    std::fs::remove_dir_all(dirs[follower].path()).unwrap();
    std::fs::create_dir_all(dirs[follower].path()).unwrap();
    // More entries than are kept behind a snapshot: the log the follower would need is purged.
    let survivors: Vec<&Running> = replicas.iter().flatten().collect();
    let leader = leader_of(&survivors).await;
    let kept = limits::RAFT_LOG_KEPT_BEHIND_SNAPSHOT_ENTRIES as u128;
    for batch in 0..kept + 2 * config().snapshot_every_entries as u128 {
        write_until_accepted(survivors[leader], transfers(1_000_000 + batch * 10, 10)).await;
    }
    drop(survivors);
    let started = Instant::now();
    replicas[follower] = Some(
        start_with(
            follower_id,
            dirs[follower].path(),
            &follower_addr.to_string(),
            &config(),
        )
        .await,
    );
    let all: Vec<&Running> = replicas.iter().flatten().collect();
    converge(&all).await;
    eprintln!("wiped follower caught up in {:?}", started.elapsed());
    let snapshot = std::fs::metadata(dirs[follower].path().join("raft-snapshot.bin")).unwrap();
    assert!(
        snapshot.len() > 4 * limits::PEER_SNAPSHOT_CHUNK_BYTES as u64,
        "the follower's snapshot is {} bytes",
        snapshot.len()
    );
    assert_eq!(
        all[follower].state().read().unwrap().transfers_count() as u128,
        6 * limits::BATCH_EVENTS_MAX as u128 + (kept + 16) * 10
    );
    assert!(
        std::fs::read_dir(dirs[follower].path()).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".tmp")),
        "a temporary snapshot file was left behind"
    );
    // The leader kept its leadership throughout.
    assert_eq!(all[0].leader().map(|(id, _)| id), Some(leader_id));
    drop(all);
    for replica in replicas.into_iter().flatten() {
        replica.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forged_snapshot_sent_over_the_transport_is_refused_and_changes_nothing() {
    use replication::openraft_side::{SnapshotOffer, SnapshotVote};
    use replication::proto::{RaftMessage, raft_transport_client::RaftTransportClient};

    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let replicas = start_group(&dirs, &config()).await;
    let all: Vec<&Running> = replicas.iter().flatten().collect();
    let leader = leader_of(&all).await;
    write_until_accepted(all[leader], transfers(1, 10)).await;
    converge(&all).await;
    let victim = (0..3).find(|&i| i != leader).unwrap();
    let before = all[victim].applied();

    // 60 bytes: a valid header, then an account count of 2^32 - 1.
    let mut forged = b"FCLEDGR1".to_vec();
    forged.extend_from_slice(&2u32.to_le_bytes());
    forged.extend_from_slice(&[0u8; 24]);
    forged.extend_from_slice(&(u32::MAX as u64).to_le_bytes());
    forged.extend_from_slice(&[0u8; 16]);
    let meta = openraft::SnapshotMeta {
        last_log_id: Some(openraft::testing::log_id::<
            replication::openraft_side::TypeConfig,
        >(1_000, 9, 1_000_000)),
        last_membership: Default::default(),
    };
    // Plaintext peers here: only the membership check stands, so the forger claims to be the
    // leader (a non-member is refused before anything is read).
    let offer = |sender: u64| SnapshotOffer {
        vote: SnapshotVote::new_committed(1_000, sender),
        meta: meta.clone(),
        len_bytes: forged.len() as u64,
        digest: [0; 32],
    };
    let messages = |sender: u64| {
        vec![
            RaftMessage {
                body: postcard::to_allocvec(&offer(sender)).unwrap().into(),
            },
            RaftMessage {
                body: forged.clone().into(),
            },
        ]
    };
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", all[victim].addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = RaftTransportClient::new(channel);
    let status = client
        .install_snapshot(futures::stream::iter(messages(9)))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status}");
    assert!(status.message().contains("not a member"), "{status}");
    let claimed_leader = all[leader].id();
    let status = client
        .install_snapshot(futures::stream::iter(messages(claimed_leader)))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
    assert!(status.message().contains("counts more records"), "{status}");

    // Nothing changed, and the group carries on.
    assert_eq!(all[victim].applied(), before);
    write_until_accepted(all[leader], transfers(100, 10)).await;
    converge(&all).await;
    drop(all);
    for replica in replicas.into_iter().flatten() {
        replica.stop().await;
    }
}
