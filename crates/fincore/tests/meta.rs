//! A real meta group: three `fincore serve --meta` processes on loopback with peer TLS and API
//! keys. The map is set through the leader (a follower names it), pushed to a watcher on a
//! follower, survives the leader's kill -9 (the new leader takes the next change, the watcher
//! is told of it), and a restarted replica comes back holding the newest map.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use api::proto::meta_client::MetaClient;
use api::proto::{ClusterMapMessage, GetMapRequest, SetMapRequest, WatchMapRequest};
use cluster::{ClusterMap, GroupId, Member, Members};
use support::{ChildNode, fincore_exe};
use testkit::group::GroupLayout;
use tonic::{Code, Request, Status, Streaming};

struct MetaGroup {
    dirs: Vec<tempfile::TempDir>,
    layout: GroupLayout,
    nodes: Vec<Option<ChildNode>>,
}

impl MetaGroup {
    fn start(&mut self, i: usize) {
        let data = self.dirs[i].path().join("data");
        let mut args = self.layout.serve_args(i, self.layout.len());
        args.extend(self.layout.membership_args(i, &data));
        args.extend(["--checkpoint-interval", "4"].map(String::from));
        let node = ChildNode::start_meta(fincore_exe(), &data, &args)
            .unwrap_or_else(|error| panic!("{error}"));
        self.nodes[i] = Some(node);
    }

    async fn client(&self, i: usize) -> MetaClient<tonic::transport::Channel> {
        let channel = tonic::transport::Channel::from_shared(self.layout.grpc_urls()[i].clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        MetaClient::new(channel)
    }
}

fn keyed<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    let token = testkit::keys::token().expect("the test kit's admin key");
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
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

/// The member that leads, found by asking each running one for the map (a follower answers
/// UNAVAILABLE naming the leader), bounded in time.
async fn leader(group: &MetaGroup) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for i in 0..group.layout.len() {
            if group.nodes[i].is_none() {
                continue;
            }
            match group.client(i).await.get_map(keyed(GetMapRequest {})).await {
                Ok(_) => return i,
                Err(status) => {
                    assert_eq!(status.code(), Code::Unavailable, "{status}");
                }
            }
        }
        assert!(Instant::now() < deadline, "no meta leader within 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn set_map(group: &MetaGroup, i: usize, expected_epoch: u64, map: &ClusterMap) -> u64 {
    let answer = group
        .client(i)
        .await
        .set_map(keyed(SetMapRequest {
            expected_epoch,
            map_json: map.to_json(),
        }))
        .await
        .unwrap_or_else(|status| panic!("set_map on member {i}: {status}"));
    answer.into_inner().epoch
}

async fn next(stream: &mut Streaming<ClusterMapMessage>) -> Result<ClusterMapMessage, Status> {
    tokio::time::timeout(Duration::from_secs(20), stream.message())
        .await
        .expect("a map within 20 s")
        .map(|message| message.expect("the watch goes on"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meta_group_of_three_processes_keeps_and_pushes_the_map_through_a_leader_kill() {
    let mut group = MetaGroup {
        dirs: (0..3).map(|_| tempfile::tempdir().unwrap()).collect(),
        layout: GroupLayout::on_free_ports(3).unwrap(),
        nodes: (0..3).map(|_| None).collect(),
    };
    for i in 0..3 {
        group.start(i);
    }
    let leader = leader(&group).await;
    let follower = (leader + 1) % 3;

    // A follower refuses a change, naming the leader.
    let first = ClusterMap::new(BTreeMap::from([
        (GroupId::from_u128(1), members(20000)),
        (GroupId::from_u128(2), members(20010)),
    ]))
    .unwrap();
    let refused = group
        .client(follower)
        .await
        .set_map(keyed(SetMapRequest {
            expected_epoch: 0,
            map_json: first.to_json(),
        }))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable);
    assert_eq!(
        refused.metadata().get("fincore-leader-grpc").unwrap(),
        group.layout.grpc_addrs[leader].as_str()
    );
    // No key: refused before anything is read.
    let refused = group
        .client(leader)
        .await
        .get_map(Request::new(GetMapRequest {}))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);

    let mut watch = group
        .client(follower)
        .await
        .watch_map(keyed(WatchMapRequest { after_epoch: 0 }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(set_map(&group, leader, 0, &first).await, 1);
    let told = next(&mut watch).await.unwrap();
    assert_eq!(
        ClusterMap::from_json(told.map_json.as_bytes()).unwrap(),
        first
    );

    // Each replica's HTTP listener serves health and metrics to anyone, and nothing else.
    let http = group.nodes[leader].as_ref().unwrap().http_addr.clone();
    let health = support::get(&http, "/healthz");
    assert_eq!(
        (health.status, health.body.as_str()),
        (200, r#"{"status":"ok"}"#)
    );
    let metrics = support::get(&http, "/metrics");
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .body
            .contains(r#"fincore_requests_total{operation="set_map",protocol="grpc"} 1"#),
        "{}",
        metrics.body
    );
    assert_eq!(support::get(&http, "/v1/accounts/1").status, 404);

    // The leader is killed; the others elect a new one, which takes the next change; the
    // follower's watcher is told of it (if the follower was the one to lead, it still is).
    let killed = group.nodes[leader].take().unwrap();
    killed.kill9();
    let new_leader = self::leader(&group).await;
    let mut latest = first;
    for port in 0..8 {
        let next_map = latest
            .set_members(GroupId::from_u128(2), members(20100 + port * 10))
            .unwrap();
        assert_eq!(
            set_map(&group, new_leader, latest.epoch(), &next_map).await,
            next_map.epoch()
        );
        latest = next_map;
    }
    let mut told = next(&mut watch).await.unwrap();
    while told.epoch < latest.epoch() {
        told = next(&mut watch).await.unwrap();
    }
    assert_eq!(
        ClusterMap::from_json(told.map_json.as_bytes()).unwrap(),
        latest
    );

    // The killed replica restarts from its directory and holds the newest map.
    group.start(leader);
    let mut restarted = group
        .client(leader)
        .await
        .watch_map(keyed(WatchMapRequest { after_epoch: 0 }))
        .await
        .unwrap()
        .into_inner();
    let mut held = next(&mut restarted).await.unwrap();
    while held.epoch < latest.epoch() {
        held = next(&mut restarted).await.unwrap();
    }
    assert_eq!(
        ClusterMap::from_json(held.map_json.as_bytes()).unwrap(),
        latest
    );

    for node in group.nodes.into_iter().flatten() {
        node.stop().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_started_on_the_meta_group_routes_by_each_map_it_pushes() {
    let dir = tempfile::tempdir().unwrap();
    // Three ledger groups; the meta group's first map holds two, the third is added later.
    let groups =
        testkit::cluster::LocalGroups::start(fincore_exe(), &dir.path().join("groups"), 3, 1, &[])
            .unwrap_or_else(|error| panic!("{error}"));
    let ids: Vec<GroupId> = groups.map.groups().keys().copied().collect();
    let members_of = |g: GroupId| groups.map.members(g).unwrap().clone();
    let first = ClusterMap::new(BTreeMap::from([
        (ids[0], members_of(ids[0])),
        (ids[1], members_of(ids[1])),
    ]))
    .unwrap();
    let mut meta = MetaGroup {
        dirs: vec![tempfile::tempdir().unwrap()],
        layout: GroupLayout::on_free_ports(1).unwrap(),
        nodes: vec![None],
    };
    meta.start(0);
    let token = testkit::keys::token().expect("the test kit's admin key");
    let operator = client::Client::builder(&[meta.layout.grpc_urls()[0].as_str()])
        .api_key(token)
        .connect()
        .unwrap();
    assert_eq!(operator.set_cluster_map(0, &first).await.unwrap(), first);

    let gateway = ChildNode::start_gateway_on_meta(
        fincore_exe(),
        &dir.path().join("gateway"),
        &meta.layout.grpc_addrs[0],
        &["--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0"],
    )
    .unwrap_or_else(|error| panic!("{error}"));
    let through = client::Client::builder(&[gateway.grpc_url().as_str()])
        .api_key(token)
        .connect()
        .unwrap();
    let account = |id: u128| ledger::Account {
        id,
        ledger: 1,
        code: 1,
        ..Default::default()
    };
    let created = through
        .create_accounts(&(1..=8).map(account).collect::<Vec<_>>())
        .await
        .unwrap();
    assert!(
        created
            .iter()
            .all(|r| r.result == ledger::CreateAccountResult::Created)
    );
    // The third group is not in the gateway's map yet: its events are refused naming `group`.
    let events_of_third = format!("/v1/events?group={}&after=0&limit=1", ids[2]);
    assert_eq!(
        support::get(&gateway.http_addr, &events_of_third).status,
        400
    );

    // The meta group takes a map with the third group (no slots yet): the gateway routes to it.
    let second = first.add_group(ids[2], members_of(ids[2])).unwrap();
    operator.set_cluster_map(1, &second).await.unwrap();
    support::gateway::wait_for_log(
        &gateway,
        "routing by the cluster map the meta group pushed epoch=2",
    );
    let answer = support::get(&gateway.http_addr, &events_of_third);
    assert_eq!(answer.status, 200, "{}", answer.body);

    // The meta replica is killed and restarted: the gateway watches again and takes the next.
    meta.nodes[0].take().unwrap().kill9();
    meta.start(0);
    let third = second.set_members(ids[2], members_of(ids[2])).unwrap();
    operator.set_cluster_map(2, &third).await.unwrap();
    support::gateway::wait_for_log(
        &gateway,
        "routing by the cluster map the meta group pushed epoch=3",
    );
    let created = through
        .create_accounts(&(9..=16).map(account).collect::<Vec<_>>())
        .await
        .unwrap();
    assert!(
        created
            .iter()
            .all(|r| r.result == ledger::CreateAccountResult::Created)
    );

    gateway.stop().unwrap();
    for node in meta.nodes.into_iter().flatten() {
        node.stop().unwrap();
    }
    groups.stop().unwrap();
}

/// A data directory serves the state machine it was made for: `serve --meta` refuses a ledger
/// replica's directory and `serve` (and `verify`) a meta replica's, naming both machines and
/// writing nothing, so neither appends entries the other would misread.
#[test]
fn a_meta_replica_and_a_ledger_replica_refuse_each_others_directories() {
    let dir = tempfile::tempdir().unwrap();
    let (ledger_dir, meta_dir) = (dir.path().join("ledger"), dir.path().join("meta"));
    let serve = |data: &std::path::Path, meta: bool| {
        let mut command = std::process::Command::new(fincore_exe());
        command
            .args(["serve", "--insecure-no-auth", "--insecure-peers"])
            .args(testkit::group::FREE_PORTS_ARGS)
            .arg("--data-dir")
            .arg(data)
            .args(testkit::group::single_node_args(data));
        if meta {
            command.arg("--meta");
        }
        command
    };
    let refused = |mut command: std::process::Command, data: &std::path::Path| {
        let before = std::fs::read(data.join("fincore-format.json")).unwrap();
        let output = command.output().unwrap();
        assert!(!output.status.success(), "{output:?}");
        assert_eq!(
            std::fs::read(data.join("fincore-format.json")).unwrap(),
            before
        );
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    };

    // A group of one on `data`, started and stopped cleanly: a replica's directory.
    let first_start = |data: &std::path::Path| {
        let mut args: Vec<String> = testkit::group::FREE_PORTS_ARGS.map(String::from).to_vec();
        args.push("--insecure-no-auth".into());
        args.extend(testkit::group::single_node_args(data));
        args
    };
    let node = ChildNode::start(fincore_exe(), &ledger_dir, &first_start(&ledger_dir))
        .unwrap_or_else(|error| panic!("{error}"));
    node.stop().unwrap();
    let text = refused(serve(&ledger_dir, true), &ledger_dir);
    assert!(
        text.contains("holds a ledger replica") && text.contains("runs a meta replica"),
        "{text}"
    );

    let node = ChildNode::start_meta(fincore_exe(), &meta_dir, &first_start(&meta_dir))
        .unwrap_or_else(|error| panic!("{error}"));
    node.stop().unwrap();
    let text = refused(serve(&meta_dir, false), &meta_dir);
    assert!(
        text.contains("holds a meta replica") && text.contains("runs a ledger replica"),
        "{text}"
    );
    let mut verify = std::process::Command::new(fincore_exe());
    verify.args(["verify", "--data-dir"]).arg(&meta_dir);
    let text = refused(verify, &meta_dir);
    assert!(
        text.contains("holds a meta replica") && text.contains("verify reads ledger replicas"),
        "{text}"
    );
}
