//! Explicit membership through the real binary: a node starts on an empty data directory only
//! to create a group (`--bootstrap`, `fincore init`) or to join one (`--join`); anything else
//! is refused with the flags that would start it, and changes nothing. A restart on a node's
//! own data needs no flag. A joining node is a learner, and becomes a voter only once it has
//! caught up. `fincore dev` creates its group on the first run only.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::{ChildNode, DevRun, fincore, fincore_exe, get, post_json, start_node};
use testkit::group::GroupLayout;
use testkit::node::Signal;

const MARKER: &str = "fincore-format.json";

/// `fincore serve --data-dir DIR ARGS…` on free ports, which must be refused; its output.
fn refused_serve(dir: &Path, args: &[&str]) -> String {
    // Open on loopback: what is refused here is the directory, not a missing keys file.
    let mut all = vec!["serve", "--data-dir", dir.to_str().unwrap()];
    all.extend(testkit::group::FREE_PORTS_ARGS);
    all.extend(["--insecure-no-auth", "--insecure-peers"]);
    all.extend_from_slice(args);
    let (ok, text) = fincore(&all);
    assert!(!ok, "fincore {all:?} started: {text}");
    text
}

/// `--data-dir DATA --grpc ADDRS[0] --http ADDRS[1] --peer ADDRS[2]`.
fn dir_and_addrs<'a>(data: &'a Path, addrs: &'a [String]) -> Vec<&'a str> {
    let data = data.to_str().unwrap();
    vec![
        "--data-dir",
        data,
        "--grpc",
        &addrs[0],
        "--http",
        &addrs[1],
        "--peer",
        &addrs[2],
    ]
}

fn group_of(dir: &Path) -> String {
    let marker: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(MARKER)).unwrap()).unwrap();
    marker["group"].as_str().unwrap().to_string()
}

fn create_accounts(http: &str, ids: std::ops::RangeInclusive<u32>) {
    let body: Vec<String> = ids
        .map(|id| format!(r#"{{"id":"{id}","ledger":1,"code":1}}"#))
        .collect();
    let answer = post_json(http, "/v1/accounts", &format!("[{}]", body.join(",")));
    assert_eq!(answer.status, 200, "{}", answer.body);
}

/// Ten transfers between accounts 1 and 2, with ids from `first`.
fn transfer(http: &str, first: u32) {
    let body: Vec<String> = (first..first + 10)
        .map(|id| {
            format!(
                r#"{{"id":"{id}","debit_account_id":"1","credit_account_id":"2","amount":"1","ledger":1,"code":1}}"#
            )
        })
        .collect();
    let answer = post_json(http, "/v1/transfers", &format!("[{}]", body.join(",")));
    assert_eq!(answer.status, 200, "{}", answer.body);
}

fn role(http: &str) -> String {
    let status = get(http, "/v1/status").json().unwrap();
    status["replica"]["role"].as_str().unwrap().to_string()
}

#[test]
fn an_empty_or_foreign_data_directory_is_refused_with_the_flags_that_would_start_it() {
    let dir = tempfile::tempdir().unwrap();

    // A mistyped --data-dir: nothing there, nothing created.
    let missing = dir.path().join("mistyped");
    let text = refused_serve(&missing, &[]);
    for needed in ["holds no replica", "--bootstrap", "--join", "fincore init"] {
        assert!(text.contains(needed), "{text}");
    }
    assert!(!missing.exists());

    // A directory of something else.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "mine").unwrap();
    let text = refused_serve(&other, &[]);
    assert!(text.contains("is not a fincore data directory"), "{text}");
    let text = refused_serve(&other, &["--bootstrap"]);
    assert!(text.contains("--bootstrap needs an empty"), "{text}");

    // A node's directory refuses a second bootstrap, another group and another node id.
    let data = dir.path().join("data");
    start_node(&data).stop().unwrap();
    let group = group_of(&data);
    let marker = std::fs::read(data.join(MARKER)).unwrap();
    let text = refused_serve(&data, &["--bootstrap"]);
    assert!(text.contains("a group is created once"), "{text}");
    assert!(text.contains(&group), "{text}");
    let other_group = "0123456789abcdef0123456789abcdef";
    let text = refused_serve(&data, &["--join", other_group]);
    assert!(
        text.contains(&format!(
            "belongs to group {group}; it cannot join group {other_group}"
        )),
        "{text}"
    );
    let text = refused_serve(&data, &["--node-id", "2"]);
    assert!(
        text.contains("holds node 1's replica") && text.contains("--node-id 1"),
        "{text}"
    );
    let text = refused_serve(&data, &["--join", "not-a-group"]);
    assert!(text.contains("is not a group id"), "{text}");
    assert_eq!(std::fs::read(data.join(MARKER)).unwrap(), marker);
}

#[test]
fn a_node_restarted_on_its_own_data_needs_no_flags_and_keeps_its_group() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // The first start bootstraps (testkit adds --bootstrap to a new directory only).
    let node = start_node(&data);
    let group = group_of(&data);
    create_accounts(&node.http_addr, 1..=2);
    node.stop().unwrap();

    let node = start_node(&data);
    assert_eq!(get(&node.http_addr, "/v1/accounts/2").status, 200);
    assert_eq!(role(&node.http_addr), "leader");
    assert_eq!(group_of(&data), group);
    // --join naming its own group is harmless.
    node.stop().unwrap();
    let node = support::start_node_on(&data, "127.0.0.1:0", "127.0.0.1:0", &["--join", &group]);
    assert_eq!(get(&node.http_addr, "/v1/accounts/1").status, 200);
    node.stop().unwrap();
}

#[test]
fn fincore_init_prepares_a_directory_that_serve_starts_without_flags() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let addrs = testkit::free_addrs(3).unwrap();
    let mut init = vec!["init"];
    init.extend(dir_and_addrs(&data, &addrs));
    let (ok, text) = fincore(&init);
    assert!(ok, "{text}");
    let group = group_of(&data);
    assert!(
        text.contains(&format!("node 1 of the new group {group}")),
        "{text}"
    );
    let (ok, text) = fincore(&init);
    assert!(!ok && text.contains("a group is created once"), "{text}");

    let node = ChildNode::start(
        fincore_exe(),
        &data,
        &[
            "--grpc", &addrs[0], "--http", &addrs[1], "--peer", &addrs[2],
        ],
    )
    .unwrap_or_else(|error| panic!("{error}"));
    create_accounts(&node.http_addr, 1..=2);
    assert_eq!(role(&node.http_addr), "leader");
    node.stop().unwrap();
}

#[test]
fn a_joined_node_is_a_learner_and_becomes_a_voter_only_once_it_has_caught_up() {
    let dir = tempfile::tempdir().unwrap();
    let layout = GroupLayout::on_free_ports(2).unwrap();
    let data = |i: usize| dir.path().join(format!("node-{}", i + 1));
    let start = |i: usize, members: usize| {
        let mut args = layout.serve_args(i, members);
        args.extend(layout.membership_args(i, &data(i)));
        args.extend(["--checkpoint-interval", "40"].map(String::from));
        ChildNode::start(fincore_exe(), &data(i), &args).unwrap_or_else(|error| panic!("{error}"))
    };
    // A group of one with more entries than a learner may lag by (64), its log purged behind
    // a snapshot.
    let first = start(0, 1);
    create_accounts(&first.http_addr, 1..=2);
    for batch in 0..100 {
        transfer(&first.http_addr, 1 + batch * 10);
    }
    let second = start(1, 2);
    assert_eq!(role(&second.http_addr), "learner");
    assert_eq!(group_of(&data(1)), layout.group);

    // Frozen, node 2 cannot catch up: it must stay a learner, so the group of one keeps
    // committing on its own (were node 2 a voter, nothing could commit without it).
    second.signal(Signal::Stop).unwrap();
    let (leader_http, grpc, http, peer) = (
        first.http_addr.clone(),
        layout.grpc_addrs[1].clone(),
        layout.http_addrs[1].clone(),
        layout.peer_addrs[1].clone(),
    );
    let adding = std::thread::spawn(move || {
        fincore(&[
            "admin",
            "add-replica",
            "--addr",
            &leader_http,
            "--id",
            "2",
            "--grpc",
            &grpc,
            "--http",
            &http,
            "--peer",
            &peer,
        ])
    });
    let frozen_until = Instant::now() + Duration::from_millis(1500);
    let mut batch = 100;
    while Instant::now() < frozen_until {
        let started = Instant::now();
        transfer(&first.http_addr, 1 + batch * 10);
        assert!(started.elapsed() < Duration::from_secs(5));
        batch += 1;
    }
    assert!(
        !adding.is_finished(),
        "node 2 was promoted before it caught up"
    );

    second.signal(Signal::Cont).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !adding.is_finished() {
        assert!(
            Instant::now() < deadline,
            "node 2 did not catch up within 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (ok, text) = adding.join().unwrap();
    assert!(ok && text.contains("\"id\":2"), "{text}");
    assert_eq!(role(&second.http_addr), "follower");
    let applied = |http: &str| {
        get(http, "/v1/status").json().unwrap()["replica"]["applied_index"]
            .as_u64()
            .unwrap()
    };
    // It holds everything written while it was frozen; the group of two commits.
    let written_frozen = applied(&first.http_addr);
    let deadline = Instant::now() + Duration::from_secs(30);
    while applied(&second.http_addr) < written_frozen {
        assert!(
            Instant::now() < deadline,
            "node 2 did not apply the group's log"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    transfer(&first.http_addr, 1 + batch * 10);
    second.stop().unwrap();
    first.stop().unwrap();
}

#[test]
fn fincore_dev_creates_its_group_on_the_first_run_and_reuses_it_on_the_second() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("fincore-data");
    let addrs = testkit::free_addrs(3).unwrap();
    let args = dir_and_addrs(&data, &addrs);
    let mut dev = DevRun::start(&args);
    let line = dev.line_with("fincore: node 1 of group ");
    let group = line
        .trim_start_matches("fincore: node 1 of group ")
        .to_string();
    dev.line_with("Ctrl-C stops the node");
    // `dev` serves with the development key it made (kept beside its data).
    let key = std::fs::read_to_string(data.join("dev-api-key")).unwrap();
    let as_dev = |method, path, body| {
        testkit::http::request_as(
            Some(key.trim()),
            &addrs[1],
            method,
            path,
            Some("application/json"),
            body,
        )
        .unwrap()
    };
    let answer = as_dev(
        "POST",
        "/v1/accounts",
        r#"[{"id":"1","ledger":1,"code":1},{"id":"2","ledger":1,"code":1}]"#,
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    dev.stop();
    assert_eq!(group_of(&data), group);

    let mut dev = DevRun::start(&args);
    assert_eq!(
        dev.line_with("fincore: node 1 of group "),
        format!("fincore: node 1 of group {group}")
    );
    dev.line_with("Ctrl-C stops the node");
    assert_eq!(as_dev("GET", "/v1/accounts/2", "").status, 200);
    dev.stop();
}
