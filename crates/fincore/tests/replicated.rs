//! A real three-node group (three `fincore serve` processes on loopback): under continuous
//! load the leader is killed with SIGKILL again and again; a new leader takes over, every
//! acknowledged transfer survives exactly once, money is conserved, and once the killed node is
//! back all three replicas reach the same state digest.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use client::{Client, ClientError, RetryPolicy};
use ledger::{Account, CreateAccountResult as AR, CreateTransferResult as TR, Transfer};
use support::{ChildNode, admin, fincore, fincore_exe, get};
use testkit::group::GroupLayout;
use testkit::http::replica_status;
use testkit::proxy::LinkProxy;

const ACCOUNTS: u128 = 6;
const ROUNDS: usize = 4;

struct Group {
    /// Each node's data directory is `dirs[i]/data`; its log is `dirs[i]/data.log`.
    dirs: Vec<tempfile::TempDir>,
    layout: GroupLayout,
    nodes: Vec<Option<ChildNode>>,
}

impl Group {
    /// Starts member `i` of a group of the first `members` members, with `extra` arguments.
    fn start_member(&mut self, i: usize, members: usize, extra: &[String]) {
        let data = self.dirs[i].path().join("data");
        let mut args = self.layout.serve_args(i, members);
        args.extend(self.layout.membership_args(i, &data));
        args.extend_from_slice(extra);
        let node =
            ChildNode::start(fincore_exe(), &data, &args).unwrap_or_else(|error| panic!("{error}"));
        self.nodes[i] = Some(node);
    }

    fn start(&mut self, i: usize) {
        let extra = ["--checkpoint-interval", "50"].map(String::from);
        self.start_member(i, self.layout.len(), &extra);
    }

    /// `fincore admin add-replica` of member `i` (node id `i + 1`), sent to member `via`.
    fn add_member(&self, via: usize, i: usize) -> String {
        admin(&[
            "add-replica",
            "--addr",
            &self.layout.http_addrs[via],
            "--id",
            &(i + 1).to_string(),
            "--grpc",
            &self.layout.grpc_addrs[i],
            "--http",
            &self.layout.http_addrs[i],
            "--peer",
            &self.layout.peer_addrs[i],
        ])
    }

    /// The index of the node every live node agrees is the leader (bounded wait).
    fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let leaders: Vec<Option<u64>> = (0..self.nodes.len())
                .filter(|&i| self.nodes[i].is_some())
                .map(|i| {
                    replica_status(&self.layout.http_addrs[i], false)
                        .unwrap()
                        .leader
                })
                .collect();
            if let Some(Some(leader)) = leaders.first()
                && leaders.iter().all(|l| *l == Some(*leader))
                && self.nodes[*leader as usize - 1].is_some()
            {
                return *leader as usize - 1;
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader within 20 s: {leaders:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn dump_logs(&self) {
        for (i, dir) in self.dirs.iter().enumerate() {
            let log = std::fs::read_to_string(dir.path().join("data.log")).unwrap_or_default();
            // Panics first (with the lines after them), then the newest errors.
            let lines: Vec<&str> = log.lines().collect();
            let mut tail: Vec<&str> = Vec::new();
            for (at, line) in lines.iter().enumerate() {
                if line.contains("panicked at") {
                    tail.extend(lines[at..(at + 3).min(lines.len())].iter());
                }
            }
            tail.extend(lines.iter().rev().filter(|l| l.contains("ERROR")).take(3));
            eprintln!(
                "--- node {} log (last warnings, newest first):\n{}",
                i + 1,
                tail.join("\n")
            );
        }
    }

    /// Waits until every live node applied the same index with the same digest.
    fn converged(&self) -> (u64, String) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let states: Vec<(u64, String)> = (0..self.nodes.len())
                .filter(|&i| self.nodes[i].is_some())
                .map(|i| {
                    let view = replica_status(&self.layout.http_addrs[i], true).unwrap();
                    (view.applied_index, view.state_digest.unwrap())
                })
                .collect();
            if states.windows(2).all(|w| w[0] == w[1]) {
                return states[0].clone();
            }
            if Instant::now() > deadline {
                self.dump_logs();
                panic!("replicas did not converge within 30 s: {states:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn a_three_node_group_survives_repeated_leader_kills_without_losing_or_doubling_money() {
    let mut group = group_of(3);
    for i in 0..3 {
        group.start(i);
    }
    group.leader();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let policy = RetryPolicy {
        elapsed_max: Duration::from_secs(30),
        attempt_timeout: Duration::from_secs(2),
        ..RetryPolicy::default()
    };
    let addrs: Vec<String> = group.layout.grpc_urls();
    let client = runtime.block_on(async {
        support::connect_any(
            &addrs.iter().map(String::as_str).collect::<Vec<_>>(),
            policy,
        )
        .unwrap()
    });
    runtime.block_on(create_accounts(&client));

    let acked: Arc<Mutex<Vec<(Transfer, u64)>>> = Arc::default();
    let highest_id = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let last_ack = Arc::new(Mutex::new(Instant::now()));
    let quiet = Arc::new(tokio::sync::RwLock::new(()));
    let writer = runtime.spawn({
        let (client, acked, highest_id, stop, last_ack, quiet) = (
            client.clone(),
            Arc::clone(&acked),
            Arc::clone(&highest_id),
            Arc::clone(&stop),
            Arc::clone(&last_ack),
            Arc::clone(&quiet),
        );
        async move {
            let mut next_id = 1u128;
            while !stop.load(Ordering::Relaxed) {
                let _writing = quiet.read().await;
                let batch: Vec<Transfer> = (next_id..next_id + 32)
                    .map(|id| {
                        testkit::transfer(
                            id,
                            id % ACCOUNTS + 1,
                            (id + 1) % ACCOUNTS + 1,
                            id % 97 + 1,
                        )
                    })
                    .collect();
                highest_id.store((next_id + 31) as u64, Ordering::Relaxed);
                match client.create_transfers(&batch).await {
                    Ok(results) => {
                        let mut acked = acked.lock().unwrap();
                        for (transfer, result) in batch.iter().zip(results) {
                            assert!(
                                matches!(result.result, TR::Created | TR::Exists),
                                "unexpected {}",
                                result.result
                            );
                            acked.push((*transfer, result.timestamp));
                        }
                        *last_ack.lock().unwrap() = Instant::now();
                        next_id += 32;
                    }
                    Err(ClientError::GaveUp { .. }) => {}
                    Err(other) => panic!("unexpected client error: {other}"),
                }
            }
        }
    });

    let mut pauses = Vec::new();
    for round in 0..ROUNDS {
        std::thread::sleep(Duration::from_millis(600));
        let leader = group.leader();
        let killed_at = Instant::now();
        group.nodes[leader].take().unwrap().kill9();
        // The write pause: from the kill to the next acknowledged batch.
        let deadline = Instant::now() + Duration::from_secs(20);
        while *last_ack.lock().unwrap() < killed_at {
            if Instant::now() > deadline {
                for (i, dir) in group.dirs.iter().enumerate() {
                    let log =
                        std::fs::read_to_string(dir.path().join("data.log")).unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(15).collect();
                    eprintln!(
                        "--- node {} log (last lines, newest first):\n{}",
                        i + 1,
                        tail.join("\n")
                    );
                }
                panic!("no write was acknowledged within 20 s of losing the leader");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        pauses.push(killed_at.elapsed());
        group.start(leader);
        let (acked_now, highest) = runtime.block_on(async {
            let _at_rest = quiet.write().await;
            let acked_now = acked.lock().unwrap().clone();
            let highest = u128::from(highest_id.load(Ordering::Relaxed));
            support::check_acknowledged(&client, &acked_now, highest, ACCOUNTS).await;
            (acked_now, highest)
        });
        eprintln!(
            "round {round}: killed node {}, {} acknowledged transfers intact (ids up to {highest})",
            leader + 1,
            acked_now.len()
        );
    }
    stop.store(true, Ordering::Relaxed);
    runtime.block_on(writer).unwrap();
    let (index, digest) = group.converged();
    eprintln!("converged at index {index} with digest {digest}; write pauses {pauses:?}");
    assert!(
        acked.lock().unwrap().len() > 1000,
        "too little was acknowledged to prove anything"
    );
    for node in group.nodes.iter_mut() {
        node.take().unwrap().stop().unwrap();
    }
}

/// Writes `count` batches of 16 transfers with ids from `first_id`, through `client`.
async fn write_batches(client: &Client, first_id: u128, count: u128) {
    for b in 0..count {
        let batch: Vec<Transfer> = (0..16u128)
            .map(|i| {
                let id = first_id + b * 16 + i;
                testkit::transfer(id, id % ACCOUNTS + 1, (id + 1) % ACCOUNTS + 1, 1)
            })
            .collect();
        let results = client.create_transfers(&batch).await.unwrap();
        assert!(
            results
                .iter()
                .all(|r| matches!(r.result, TR::Created | TR::Exists))
        );
    }
}

/// A group of `size` nodes, all started, with a runtime, a client of every node, and the
/// accounts created.
fn started_group(size: usize) -> (Group, tokio::runtime::Runtime, Client) {
    let mut group = group_of(size);
    for i in 0..size {
        group.start(i);
    }
    let (runtime, client) = connected(&group);
    runtime.block_on(create_accounts(&client));
    (group, runtime, client)
}

/// A runtime and a client of every member of `group`'s layout (started or not).
fn connected(group: &Group) -> (tokio::runtime::Runtime, Client) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let addrs: Vec<String> = group.layout.grpc_urls();
    let client = runtime.block_on(async {
        support::connect_any(
            &addrs.iter().map(String::as_str).collect::<Vec<_>>(),
            RetryPolicy::default(),
        )
        .unwrap()
    });
    (runtime, client)
}

/// Creates the accounts `1..=ACCOUNTS` (which must be new).
async fn create_accounts(client: &Client) {
    let accounts: Vec<Account> = (1..=ACCOUNTS)
        .map(|id| Account {
            id,
            ledger: 1,
            code: 1,
            ..Default::default()
        })
        .collect();
    let results = client.create_accounts(&accounts).await.unwrap();
    assert!(results.iter().all(|r| r.result == AR::Created));
}

fn group_of(size: usize) -> Group {
    Group {
        dirs: (0..size).map(|_| tempfile::tempdir().unwrap()).collect(),
        layout: GroupLayout::on_free_ports(size).unwrap(),
        nodes: (0..size).map(|_| None).collect(),
    }
}

#[test]
fn a_follower_whose_disk_was_wiped_is_replaced_by_a_new_member_that_catches_up_from_a_snapshot() {
    let mut group = group_of(4);
    let checkpoints = ["--checkpoint-interval", "50"].map(String::from);
    for i in 0..3 {
        group.start_member(i, 3, &checkpoints);
    }
    let (runtime, client) = connected(&group);
    runtime.block_on(async {
        create_accounts(&client).await;
        // More than the snapshot interval (50), so the log behind the snapshot gets purged.
        write_batches(&client, 1, 150).await;
    });
    let leader = group.leader();
    let victim = (0..3).find(|&i| i != leader).unwrap();
    group.nodes[victim].take().unwrap().kill9();
    let wiped = group.dirs[victim].path().join("data");
    std::fs::remove_dir_all(&wiped).unwrap();
    runtime.block_on(write_batches(&client, 100_000, 20));

    // The wiped node cannot come back under its old id by accident: without a flag an empty
    // directory is refused, and the group refuses to add an id that is already a voter.
    let victim_id = (victim + 1).to_string();
    let mut args = vec![
        "serve",
        "--insecure-no-auth",
        "--insecure-peers",
        "--data-dir",
        wiped.to_str().unwrap(),
        "--node-id",
        &victim_id,
    ];
    args.extend(testkit::group::FREE_PORTS_ARGS);
    let (ok, text) = fincore(&args);
    assert!(
        !ok && text.contains("holds no replica") && text.contains("--join"),
        "{text}"
    );
    let (ok, text) = fincore(&[
        "admin",
        "add-replica",
        "--addr",
        &group.layout.http_addrs[leader],
        "--id",
        &victim_id,
        "--grpc",
        &group.layout.grpc_addrs[victim],
        "--peer",
        &group.layout.peer_addrs[victim],
    ]);
    assert!(!ok && text.contains("already a voter"), "{text}");

    // Replacing the disk: remove the old id, add a new member (node 4) on an empty directory.
    admin(&[
        "remove-replica",
        "--addr",
        &group.layout.http_addrs[leader],
        "--id",
        &victim_id,
    ]);
    group.start_member(3, 4, &checkpoints);
    group.add_member(leader, 3);
    let (index, digest) = group.converged();
    let status = get(&group.layout.http_addrs[3], "/v1/status?digest=true")
        .json()
        .unwrap();
    assert_eq!(status["replica"]["applied_index"].as_u64(), Some(index));
    assert_eq!(status["replica"]["role"].as_str(), Some("follower"));
    assert_eq!(
        status["replica"]["state_digest"].as_str(),
        Some(digest.as_str())
    );
    runtime.block_on(async {
        let found = client
            .lookup_transfers(&[1, 150 * 16, 100_000])
            .await
            .unwrap();
        assert_eq!(found.len(), 3);
    });
    for node in group.nodes.iter_mut().filter_map(Option::take) {
        node.stop().unwrap();
    }
}

#[test]
fn a_five_node_group_keeps_committing_with_any_two_nodes_down() {
    let (mut group, runtime, client) = started_group(5);
    runtime.block_on(async {
        write_batches(&client, 1, 10).await;
    });
    // Two down, the leader among them; then back, and two others down.
    let leader = group.leader();
    let other = (0..5).find(|&i| i != leader).unwrap();
    for i in [leader, other] {
        group.nodes[i].take().unwrap().kill9();
    }
    runtime.block_on(write_batches(&client, 10_000, 10));
    for i in [leader, other] {
        group.start(i);
    }
    group.converged();
    let down: Vec<usize> = (0..5)
        .filter(|&i| i != leader && i != other)
        .take(2)
        .collect();
    for &i in &down {
        group.nodes[i].take().unwrap().kill9();
    }
    runtime.block_on(write_batches(&client, 20_000, 10));
    for &i in &down {
        group.start(i);
    }
    let (index, _) = group.converged();
    assert!(index > 0);
    runtime.block_on(async {
        let accounts = client
            .lookup_accounts(&(1..=ACCOUNTS).collect::<Vec<_>>())
            .await
            .unwrap();
        let credits: u128 = accounts.iter().map(|a| a.credits_posted).sum();
        assert_eq!(
            credits,
            30 * 16,
            "every committed transfer applied exactly once"
        );
    });
    for node in group.nodes.iter_mut() {
        node.take().unwrap().stop().unwrap();
    }
}

#[test]
fn a_partitioned_leader_cannot_acknowledge_and_the_majority_carries_on() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = group_of(3);
    // proxies[i][j]: how node i reaches node j.
    let proxies: Vec<Vec<Option<LinkProxy>>> = (0..3)
        .map(|i| {
            (0..3)
                .map(|j| {
                    let target = group.layout.peer_addrs[j].clone();
                    (i != j).then(|| runtime.block_on(LinkProxy::start(target)).unwrap())
                })
                .collect()
        })
        .collect();
    #[allow(clippy::needless_range_loop)] // i names both the node and its row of proxies
    for i in 0..3 {
        let routes = group
            .layout
            .peer_routes_args(i, |j| proxies[i][j].as_ref().unwrap().addr.clone());
        group.start_member(i, 3, &routes);
    }
    let leader = group.leader();
    let all: Vec<String> = group.layout.grpc_urls();
    let client = runtime.block_on(async {
        support::connect_any(
            &all.iter().map(String::as_str).collect::<Vec<_>>(),
            RetryPolicy::default(),
        )
        .unwrap()
    });
    runtime.block_on(async {
        create_accounts(&client).await;
        write_batches(&client, 1, 5).await;
    });

    // Cut the leader off from both others, in both directions.
    for other in (0..3).filter(|&j| j != leader) {
        proxies[leader][other].as_ref().unwrap().cut();
        proxies[other][leader].as_ref().unwrap().cut();
    }
    // A write sent straight to the old leader is never acknowledged.
    let stranded: Vec<Transfer> = (500_000..500_016u128)
        .map(|id| testkit::transfer(id, 1, 2, 1))
        .collect();
    let answer = runtime.block_on(async {
        let channel = tonic::transport::Channel::from_shared(format!(
            "http://{}",
            group.layout.grpc_addrs[leader]
        ))
        .unwrap()
        .connect()
        .await
        .unwrap();
        let mut raw = support::raw_ledger(channel);
        let request = api::proto::CreateTransfersRequest {
            transfers: vec![],
            packed: api::convert::pack_transfers(&stranded).into(),
        };
        tokio::time::timeout(Duration::from_secs(3), raw.create_transfers(request)).await
    });
    assert!(
        !matches!(answer, Ok(Ok(_))),
        "the partitioned leader acknowledged a write: {answer:?}"
    );

    // The other two elect a leader and keep committing.
    let majority: Vec<String> = (0..3)
        .filter(|&j| j != leader)
        .map(|j| format!("http://{}", group.layout.grpc_addrs[j]))
        .collect();
    let majority_client = runtime.block_on(async {
        support::connect_any(
            &majority.iter().map(String::as_str).collect::<Vec<_>>(),
            RetryPolicy::default(),
        )
        .unwrap()
    });
    runtime.block_on(write_batches(&majority_client, 1_000, 5));

    // Heal: the old leader steps down, drops what it never committed, and converges.
    for row in &proxies {
        for proxy in row.iter().flatten() {
            proxy.heal();
        }
    }
    group.converged();
    runtime.block_on(async {
        assert!(
            client
                .lookup_transfers(&stranded.iter().map(|t| t.id).collect::<Vec<_>>())
                .await
                .unwrap()
                .is_empty(),
            "an unacknowledged write from the minority side survived"
        );
        let found = client
            .lookup_transfers(&[1, 80, 1_000, 1_079])
            .await
            .unwrap();
        assert_eq!(found.len(), 4);
        let accounts = client
            .lookup_accounts(&(1..=ACCOUNTS).collect::<Vec<_>>())
            .await
            .unwrap();
        assert_eq!(accounts.iter().map(|a| a.credits_posted).sum::<u128>(), 160);
    });
    for node in group.nodes.iter_mut() {
        node.take().unwrap().stop().unwrap();
    }
}

#[test]
fn replicas_are_added_and_removed_at_run_time() {
    let mut group = group_of(4);
    for i in 0..3 {
        group.start_member(i, 3, &[]);
    }
    group.leader();
    let (runtime, client) = connected(&group);
    runtime.block_on(async {
        create_accounts(&client).await;
        write_batches(&client, 1, 5).await;
    });
    // Node 4 starts empty with --join (it initializes nothing) and is added through node 2.
    group.start_member(3, 4, &[]);
    let text = group.add_member(1, 3);
    assert!(text.contains(&group.layout.grpc_addrs[3]), "{text}");
    group.converged();

    // Node 2 leaves; the group of 1, 3, 4 goes on.
    let text = admin(&[
        "remove-replica",
        "--addr",
        &group.layout.http_addrs[0],
        "--id",
        "2",
    ]);
    assert!(!text.contains("\"id\":2"), "{text}");
    group.nodes[1].take().unwrap().stop().unwrap();
    runtime.block_on(write_batches(&client, 1_000, 5));
    group.converged();
    let status = get(&group.layout.http_addrs[3], "/v1/status")
        .json()
        .unwrap();
    let ids: Vec<u64> = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [1, 3, 4]);
    runtime.block_on(async {
        let accounts = client
            .lookup_accounts(&(1..=ACCOUNTS).collect::<Vec<_>>())
            .await
            .unwrap();
        assert_eq!(accounts.iter().map(|a| a.credits_posted).sum::<u128>(), 160);
    });
    for node in group.nodes.iter_mut() {
        if let Some(node) = node.take() {
            node.stop().unwrap();
        }
    }
}
