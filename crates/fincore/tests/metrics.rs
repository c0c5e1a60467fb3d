//! Metrics as operators read them: a group of three real replicas exports its Raft state (role,
//! term, log indexes, each follower's lag on the leader), a kill -9 of the leader shows up as a
//! new leader and a follower whose acknowledgements stop; the live text of a ledger node, a
//! gateway and a meta replica passes `promtool check metrics`, OpenMetrics is served to a
//! scraper that asks for it, and the checked-in rules file passes `promtool check rules` and
//! its own unit tests (`promtool test rules`).
//!
//! promtool comes with Debian's `prometheus` package, which `scripts/services` installs.

mod support;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::{ChildNode, fincore_exe, run_promtool};
use testkit::cluster::LocalGroups;

/// The longest a group of three takes to elect a leader here, or to replace a killed one.
const ELECTION_WAIT: Duration = Duration::from_secs(30);

fn metrics_text(node: &ChildNode) -> String {
    let answer = testkit::http::get(&node.http_addr, "/metrics").unwrap();
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(
        answer.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8"),
        "a caller that does not ask for OpenMetrics gets Prometheus' text format"
    );
    answer.body
}

/// `GET /metrics` asking for OpenMetrics, as Prometheus asks: (content type, body).
fn openmetrics(addr: &str) -> (String, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    stream
        .take(testkit::http::ANSWER_BYTES_MAX)
        .read_to_string(&mut raw)
        .unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP answer");
    let content_type = head
        .lines()
        .find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_string())
        })
        .expect("a content type");
    (content_type, body.to_string())
}

/// Polls every running member of group 0 until `found` picks one (by index) from their
/// metrics, for at most `ELECTION_WAIT`.
fn wait_for_member(
    groups: &LocalGroups,
    what: &str,
    found: impl Fn(usize, &str) -> bool,
) -> (usize, String) {
    let deadline = Instant::now() + ELECTION_WAIT;
    loop {
        for i in 0..3 {
            if let Some(node) = groups.node(0, i) {
                let text = metrics_text(node);
                if found(i, &text) {
                    return (i, text);
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "no member showed {what} within {ELECTION_WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

const LEADER: &str = r#"fincore_raft_role{role="leader"}"#;
const FOLLOWER: &str = r#"fincore_raft_role{role="follower"}"#;

fn lag_entries(follower: usize) -> String {
    format!(
        r#"fincore_raft_replication_lag_entries{{follower="{}"}}"#,
        follower + 1
    )
}

fn lag_seconds(follower: usize) -> String {
    format!(
        r#"fincore_raft_replication_lag_seconds{{follower="{}"}}"#,
        follower + 1
    )
}

#[test]
fn a_group_of_three_exports_its_raft_state_and_shows_a_killed_leader_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let mut groups = LocalGroups::start(fincore_exe(), dir.path(), 1, 3, &[])
        .unwrap_or_else(|error| panic!("{error}"));

    // The leader: both followers' lag, each of them acknowledging.
    let (leader, text) = wait_for_member(&groups, "a leader with two acknowledging followers", {
        |i, text| {
            testkit::http::metric_value(text, LEADER) == Some(1.0)
                && (0..3).filter(|&f| f != i).all(|f| {
                    testkit::http::metric_value(text, &lag_seconds(f)).is_some_and(|age| age < 5.0)
                })
        }
    });
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let term = testkit::http::metric_value(&text, "fincore_raft_term").unwrap();
    assert!(term >= 1.0, "{text}");
    assert!(
        testkit::http::metric_value(&text, "fincore_raft_commit_index").unwrap() >= 1.0,
        "{text}"
    );
    assert!(
        testkit::http::metric_value(&text, "fincore_raft_leader_changes_total").unwrap() >= 1.0,
        "{text}"
    );
    for &f in &followers {
        assert!(
            testkit::http::metric_value(&text, &lag_entries(f)).is_some(),
            "{text}"
        );
    }
    assert!(
        testkit::http::metric_value(&text, &lag_entries(leader)).is_none(),
        "no lag of the leader to itself:\n{text}"
    );
    run_promtool(&["check", "metrics"], Some(&text));

    // A follower: its role, the leader's term, and no follower series of its own.
    let follower_text = metrics_text(groups.node(0, followers[0]).unwrap());
    assert_eq!(
        testkit::http::metric_value(&follower_text, FOLLOWER),
        Some(1.0),
        "{follower_text}"
    );
    assert!(
        !follower_text.contains("fincore_raft_replication_lag_entries{"),
        "{follower_text}"
    );
    run_promtool(&["check", "metrics"], Some(&follower_text));

    // OpenMetrics to a scraper that asks for it.
    let (content_type, body) = openmetrics(&groups.node(0, leader).unwrap().http_addr);
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
    assert!(body.contains("# TYPE fincore_raft_leader_changes counter"));

    // A gateway over the group: its live text passes too.
    let gateway = ChildNode::start_gateway(
        fincore_exe(),
        &dir.path().join("gateway"),
        &groups.map_path,
        &["--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0"],
    )
    .unwrap_or_else(|error| panic!("{error}"));
    let lookup = testkit::http::post_json(
        &gateway.http_addr,
        "/v1/accounts/lookup",
        r#"{"ids":["1"]}"#,
    )
    .unwrap();
    assert_eq!(lookup.status, 200, "{lookup:?}");
    let gateway_text = metrics_text(&gateway);
    assert!(
        gateway_text.contains("fincore_requests_total{"),
        "{gateway_text}"
    );
    run_promtool(&["check", "metrics"], Some(&gateway_text));
    gateway.stop().unwrap();

    // Kill -9 the leader: another member leads in a later term, counts the change, and sees
    // the old leader's acknowledgements stop.
    groups.kill9(0, leader);
    let (new_leader, text) = wait_for_member(&groups, "a new leader", |_, text| {
        testkit::http::metric_value(text, LEADER) == Some(1.0)
            && testkit::http::metric_value(text, "fincore_raft_term").is_some_and(|t| t > term)
    });
    assert_ne!(new_leader, leader);
    assert!(
        testkit::http::metric_value(&text, "fincore_raft_leader_changes_total").unwrap() >= 2.0,
        "the first leader and this one:\n{text}"
    );
    // The killed replica is still a member: the new leader counts its lag, and has no
    // acknowledgement of it (it never answered this leader) or an old one, while the
    // surviving follower acknowledges.
    let survivor = followers
        .iter()
        .copied()
        .find(|&f| f != new_leader)
        .expect("three members");
    let (_, text) = wait_for_member(&groups, "the killed leader's silence", |i, text| {
        i == new_leader
            && testkit::http::metric_value(text, &lag_entries(leader)).is_some()
            && testkit::http::metric_value(text, &lag_seconds(leader)).is_none_or(|age| age >= 1.0)
            && testkit::http::metric_value(text, &lag_seconds(survivor))
                .is_some_and(|age| age < 5.0)
    });
    run_promtool(&["check", "metrics"], Some(&text));
    groups.stop().unwrap();
}

#[test]
fn a_meta_replica_exports_its_raft_state_in_text_promtool_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("meta");
    let mut args: Vec<String> = testkit::group::FREE_PORTS_ARGS.map(String::from).to_vec();
    args.extend(testkit::group::single_node_args(&data));
    let node = ChildNode::start_meta(fincore_exe(), &data, &args)
        .unwrap_or_else(|error| panic!("{error}"));
    let deadline = Instant::now() + ELECTION_WAIT;
    let text = loop {
        let text = metrics_text(&node);
        if testkit::http::metric_value(&text, LEADER) == Some(1.0) {
            break text;
        }
        assert!(Instant::now() < deadline, "no leader:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        testkit::http::metric_value(&text, "fincore_raft_term").unwrap() >= 1.0,
        "{text}"
    );
    run_promtool(&["check", "metrics"], Some(&text));
    node.stop().unwrap();
}

fn rules_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../ops/prometheus")
}

#[test]
fn the_rules_file_passes_promtool_and_its_unit_tests() {
    let dir = rules_dir();
    let rules = dir.join("fincore-rules.yml");
    let tests = dir.join("fincore-rules.test.yml");
    run_promtool(&["check", "rules", rules.to_str().unwrap()], None);
    run_promtool(&["test", "rules", tests.to_str().unwrap()], None);
}

#[test]
fn failures_a_client_saw_but_the_node_never_did_are_counted_from_the_clients_reports() {
    let dir = tempfile::tempdir().unwrap();
    let node = support::start_node(&dir.path().join("node"));
    // The client tries two addresses where nothing listens first: those attempts never reach
    // a node (and the reports the second one carried must not be lost with it). It then goes
    // on to the node, and reports every attempt on its next calls.
    let nowhere = testkit::free_addrs(2).unwrap();
    let (nowhere_1, nowhere_2) = (
        format!("http://{}", nowhere[0]),
        format!("http://{}", nowhere[1]),
    );
    let live = format!("http://{}", node.grpc_addr);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = support::connect_any(
            &[&nowhere_1, &nowhere_2, &live],
            client::RetryPolicy::default(),
        )
        .unwrap();
        let created = client
            .create_accounts(&[testkit::account(1), testkit::account(2)])
            .await
            .unwrap();
        assert_eq!(created[0].result, ledger::CreateAccountResult::Created);
        let found = client.lookup_accounts(&[1, 2]).await.unwrap();
        assert_eq!(found.len(), 2);
    });
    let text = metrics_text(&node);
    let observed = |operation: &str, outcome: &str| {
        testkit::http::metric_value(
            &text,
            &format!(
                r#"fincore_client_observed_requests_total{{operation="{operation}",outcome="{outcome}"}}"#
            ),
        )
    };
    assert_eq!(
        observed("create_accounts", "unavailable"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(observed("create_accounts", "ok"), Some(1.0), "{text}");
    assert!(
        !text.contains(r#"kind="unavailable""#),
        "the node itself answered nothing unavailable:\n{text}"
    );
    assert!(
        text.contains(
            r#"fincore_client_observed_duration_seconds_count{operation="create_accounts",outcome="ok"} 1"#
        ),
        "{text}"
    );
    run_promtool(&["check", "metrics"], Some(&text));
    node.stop().unwrap();
}
