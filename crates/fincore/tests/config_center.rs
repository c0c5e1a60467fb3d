//! The config center end to end: a real meta replica, a ledger group and four gateways
//! (`fincore gateway --meta --name --label`), each a process. A change to `flow.rules` made
//! with `fincore config` reaches every gateway within 1 s (measured from the command's answer,
//! when the change is committed, to the gateway refusing or serving writes); a gray release reaches exactly the
//! gateways its node list, labels or percentage choose; promote and rollback reach everyone;
//! a meta replica killed and restarted leaves the gateways watching again. Every change is
//! audited under the API key's name.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use support::{ChildNode, fincore_exe};
use testkit::group::GroupLayout;

/// The bound the issue sets: a change reaches every watching process within this.
const PUSH_BOUND: Duration = Duration::from_secs(1);

struct Gateway {
    name: &'static str,
    labels: &'static [&'static str],
    node: ChildNode,
}

/// Whether the gateway refuses writes as read-only now: an empty batch is refused by flow
/// control (429) before its body is read when read-only, and by the batch check (400) or
/// served otherwise, so the probe writes nothing.
fn read_only(gateway: &ChildNode) -> bool {
    let answer = support::post_json(&gateway.http_addr, "/v1/accounts", "[]");
    match answer.status {
        429 => {
            assert!(answer.body.contains("read_only"), "{}", answer.body);
            true
        }
        _ => false,
    }
}

/// Waits until every gateway in `expected` shows its expected read-only state; answers how
/// long each took from `since` (panics past 5 s: the bound is checked by the caller).
fn time_until(gateways: &[Gateway], expected: &[bool], since: Instant) -> Vec<Duration> {
    let mut taken: Vec<Option<Duration>> = vec![None; gateways.len()];
    let deadline = since + Duration::from_secs(5);
    while taken.iter().any(Option::is_none) {
        for (i, gateway) in gateways.iter().enumerate() {
            if taken[i].is_none() && read_only(&gateway.node) == expected[i] {
                taken[i] = Some(since.elapsed());
            }
        }
        assert!(
            Instant::now() < deadline,
            "gateways {:?} did not reach read-only {expected:?} within 5 s",
            gateways
                .iter()
                .zip(&taken)
                .filter(|(_, taken)| taken.is_none())
                .map(|(gateway, _)| gateway.name)
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    taken.into_iter().map(Option::unwrap).collect()
}

/// Holds for `hold`: every gateway stays in its expected state (a gray release reaches no one
/// it did not choose, not even late).
fn stays(gateways: &[Gateway], expected: &[bool], hold: Duration) {
    let until = Instant::now() + hold;
    while Instant::now() < until {
        for (gateway, expected) in gateways.iter().zip(expected) {
            assert_eq!(read_only(&gateway.node), *expected, "{}", gateway.name);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The config revision a gateway says it has taken (`fincore_config_revision`).
fn revision_taken(gateway: &ChildNode) -> u64 {
    let metrics = support::get(&gateway.http_addr, "/metrics").body;
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("fincore_config_revision "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0)
}

fn wait_revision(gateways: &[Gateway], revision: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    for gateway in gateways {
        while revision_taken(&gateway.node) < revision {
            assert!(
                Instant::now() < deadline,
                "{} never took revision {revision}",
                gateway.name
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// `fincore config …` against the meta replica: its output; panics if it failed.
fn config(meta: &str, args: &[&str]) -> String {
    let token = testkit::keys::token().expect("the test kit's admin key");
    let (ok, output) =
        support::fincore(&[&["config", "--meta", meta, "--api-key", token][..], args].concat());
    assert!(ok, "fincore config {args:?}: {output}");
    output
}

fn report(step: &str, taken: &[Duration]) -> Duration {
    let mut sorted = taken.to_vec();
    sorted.sort();
    let slowest = *sorted.last().unwrap();
    eprintln!(
        "{step}: taken by {} processes, median {:?}, slowest {slowest:?}",
        sorted.len(),
        sorted[sorted.len() / 2]
    );
    assert!(
        slowest <= PUSH_BOUND,
        "{step}: {slowest:?} > {PUSH_BOUND:?}"
    );
    slowest
}

#[test]
fn a_change_reaches_every_gateway_within_a_second_and_a_gray_release_only_its_subset() {
    let dir = tempfile::tempdir().unwrap();
    let groups =
        testkit::cluster::LocalGroups::start(fincore_exe(), &dir.path().join("groups"), 1, 1, &[])
            .unwrap_or_else(|error| panic!("{error}"));
    let layout = GroupLayout::on_free_ports(1).unwrap();
    let meta_data = dir.path().join("meta").join("data");
    let start_meta = || {
        let mut args = layout.serve_args(0, 1);
        args.extend(layout.membership_args(0, &meta_data));
        ChildNode::start_meta(fincore_exe(), &meta_data, &args)
            .unwrap_or_else(|error| panic!("{error}"))
    };
    let mut meta_node = start_meta();
    let meta = layout.grpc_addrs[0].clone();
    let token = testkit::keys::token().expect("the test kit's admin key");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _in_runtime = runtime.enter();
    let operator = client::Client::builder(&[layout.grpc_urls()[0].as_str()])
        .api_key(token)
        .connect()
        .unwrap();
    runtime
        .block_on(operator.set_cluster_map(0, &groups.map))
        .unwrap();

    let specs: [(&str, &[&str]); 4] = [
        ("gw-1", &["zone=a"]),
        ("gw-2", &["zone=a"]),
        ("gw-3", &["zone=b"]),
        ("gw-4", &["zone=b", "canary=yes"]),
    ];
    let gateways: Vec<Gateway> = specs
        .iter()
        .map(|&(name, labels)| {
            let mut args = vec![
                "--grpc",
                "127.0.0.1:0",
                "--http",
                "127.0.0.1:0",
                "--name",
                name,
            ];
            for label in labels {
                args.extend(["--label", label]);
            }
            let node = ChildNode::start_gateway_on_meta(
                fincore_exe(),
                &dir.path().join(name),
                &meta,
                &args,
            )
            .unwrap_or_else(|error| panic!("{error}"));
            Gateway { name, labels, node }
        })
        .collect();
    // Every gateway watches (it has taken revision 0, the empty config: its key's version
    // series shows) and serves writes.
    for gateway in &gateways {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !support::get(&gateway.node.http_addr, "/metrics")
            .body
            .contains(r#"fincore_config_key_version{key="flow.rules"} 0"#)
        {
            assert!(Instant::now() < deadline, "{} never watched", gateway.name);
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!read_only(&gateway.node), "{}", gateway.name);
    }
    let all = [true; 4];
    let none = [false; 4];

    // 1. Read-only for everyone.
    config(
        &meta,
        &[
            "set",
            "flow.rules",
            "--value",
            r#"{"switches":{"read_only":true}}"#,
        ],
    );
    let since = Instant::now();
    let mut slowest = vec![report("set read_only", &time_until(&gateways, &all, since))];
    // 2. Back to no rules.
    config(&meta, &["set", "flow.rules", "--value", "{}"]);
    let since = Instant::now();
    slowest.push(report("set {}", &time_until(&gateways, &none, since)));

    // 3. A gray release by node name reaches gw-2 alone; the others take the revision and
    // keep the value in use.
    let read_only_rules = r#"{"switches":{"read_only":true}}"#;
    config(
        &meta,
        &[
            "gray",
            "flow.rules",
            "--value",
            read_only_rules,
            "--nodes",
            "gw-2",
        ],
    );
    let since = Instant::now();
    let chosen = [false, true, false, false];
    slowest.push(report(
        "gray to gw-2",
        &time_until(&gateways, &chosen, since),
    ));
    wait_revision(&gateways, 3);
    stays(&gateways, &chosen, Duration::from_millis(300));

    // 4. Replaced by a release to the labels zone=b and canary=yes: gw-4 alone carries both.
    config(
        &meta,
        &[
            "gray",
            "flow.rules",
            "--value",
            read_only_rules,
            "--label",
            "zone=b",
            "--label",
            "canary=yes",
        ],
    );
    let since = Instant::now();
    let chosen = [false, false, false, true];
    slowest.push(report(
        "gray to zone=b,canary=yes",
        &time_until(&gateways, &chosen, since),
    ));
    wait_revision(&gateways, 4);
    stays(&gateways, &chosen, Duration::from_millis(300));

    // 5. Replaced by a stable 50 %: exactly the gateways the documented bucket function puts
    // below 50 (computed here from the names, as an operator could).
    let chosen: Vec<bool> = gateways
        .iter()
        .map(|gateway| meta::config::percent_bucket("flow.rules", gateway.name) < 50)
        .collect();
    config(
        &meta,
        &[
            "gray",
            "flow.rules",
            "--value",
            read_only_rules,
            "--percent",
            "50",
        ],
    );
    let since = Instant::now();
    slowest.push(report(
        "gray to 50 %",
        &time_until(&gateways, &chosen, since),
    ));
    wait_revision(&gateways, 5);
    stays(&gateways, &chosen, Duration::from_millis(300));
    eprintln!(
        "50 % chose {:?}",
        gateways
            .iter()
            .zip(&chosen)
            .filter(|(_, chosen)| **chosen)
            .map(|(gateway, _)| gateway.name)
            .collect::<Vec<_>>()
    );

    // 6. Promoted: everyone (version 3).
    let promoted = config(&meta, &["promote", "flow.rules"]);
    let since = Instant::now();
    assert!(promoted.contains("version 3"), "{promoted}");
    slowest.push(report("promote", &time_until(&gateways, &all, since)));

    // 7. The meta replica is killed and restarted: the gateways watch again, and a rollback to
    // version 2 (no rules) reaches everyone.
    meta_node.kill9();
    meta_node = start_meta();
    let rolled = config(&meta, &["rollback", "flow.rules", "--version", "2"]);
    let since = Instant::now();
    assert!(rolled.contains("version 4"), "{rolled}");
    // Measured from the change, which waited for the restarted replica to lead: the
    // gateways' watches reconnect with a doubling wait (at most 2 s), so no bound here.
    let taken = time_until(&gateways, &none, since);
    eprintln!(
        "rollback after a meta restart: slowest {:?}",
        taken.iter().max().unwrap()
    );
    // And the next change is pushed within the bound again.
    config(&meta, &["set", "flow.rules", "--value", read_only_rules]);
    let since = Instant::now();
    slowest.push(report(
        "set after the restart",
        &time_until(&gateways, &all, since),
    ));

    // The audit history: who (the test kit's key name), what, old and new, in order.
    let history = config(&meta, &["history", "flow.rules"]);
    for action in [
        "· set",
        "· gray",
        "· promote",
        "· rollback (restored version 2)",
    ] {
        assert!(history.contains(action), "{history}");
    }
    assert_eq!(history.matches("\nrevision ").count(), 8, "{history}");

    // A bad value is refused naming the field and changes nothing.
    let (ok, output) = support::fincore(&[
        "config",
        "--meta",
        &meta,
        "--api-key",
        token,
        "set",
        "flow.rules",
        "--value",
        r#"{"switches":{"read_only":"yes"}}"#,
    ]);
    assert!(!ok);
    assert!(output.contains("switches.read_only"), "{output}");
    let shown = config(&meta, &["get", "flow.rules"]);
    assert!(shown.contains("version 5"), "{shown}");
    // The same over the meta replica's HTTP listener, behind the keys.
    let meta_http = &layout.http_addrs[0];
    let answer = support::get(meta_http, "/v1/config/flow.rules");
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(answer.body.contains("\"version\":5"), "{}", answer.body);
    let anonymous = testkit::http::request_as(
        None,
        meta_http,
        "PUT",
        "/v1/config/flow.rules",
        Some("application/json"),
        r#"{"value":"{}"}"#,
    )
    .unwrap();
    assert_eq!(anonymous.status, 401);
    // A ledger node watching the config center takes its own key, flow.node.rules: a change
    // of it reaches the node within the bound and no gateway (their key is flow.rules).
    let key_file = dir.path().join("node.key");
    std::fs::write(&key_file, token).unwrap();
    let owner_only = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600);
    std::fs::set_permissions(&key_file, owner_only).unwrap();
    let node = support::start_node_on(
        &dir.path().join("node"),
        "127.0.0.1:0",
        "127.0.0.1:0",
        &[
            "--config-meta",
            &meta,
            "--config-key-file",
            key_file.to_str().unwrap(),
            "--name",
            "node-1",
        ],
    );
    assert!(!read_only(&node));
    let node_rules = &["set", "flow.node.rules", "--value", read_only_rules][..];
    config(&meta, node_rules);
    let since = Instant::now();
    let node_only = [Gateway {
        name: "node-1",
        labels: &[],
        node,
    }];
    slowest.push(report(
        "set flow.node.rules",
        &time_until(&node_only, &[true], since),
    ));
    // The gateways keep flow.rules (read-only since step 7's last change) and took the new
    // revision without applying anything of it.
    wait_revision(&gateways, 9);
    let node = node_only.into_iter().next().unwrap().node;
    config(&meta, &["set", "flow.rules", "--value", "{}"]);
    let since = Instant::now();
    slowest.push(report(
        "set flow.rules beside",
        &time_until(&gateways, &none, since),
    ));
    assert!(read_only(&node), "flow.rules reached the node");
    node.stop().unwrap();

    let labels: BTreeMap<&str, &[&str]> = gateways
        .iter()
        .map(|gateway| (gateway.name, gateway.labels))
        .collect();
    eprintln!(
        "pushes to {} gateways ({labels:?}): slowest per change {slowest:?}",
        gateways.len()
    );

    for gateway in gateways {
        gateway.node.stop().unwrap();
    }
    meta_node.stop().unwrap();
    groups.stop().unwrap();
}
