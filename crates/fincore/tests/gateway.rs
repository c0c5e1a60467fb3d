//! The gateway through the real binaries: `fincore gateway` over two groups of `fincore serve`,
//! spoken to over HTTP/JSON and with the unchanged Rust client. Every event gets the result its
//! group gives, dense and in the caller's order; reads come from the group of the id asked;
//! plain transfers across groups run as sagas decided in their home group, and one left open
//! by a dead gateway is finished by another gateway's resolver; other events and linked chains
//! whose ids live in different groups are refused whole, naming the event, and change nothing;
//! the gateway checks keys as a node does and serves the node's OpenAPI document.

mod support;

use cluster::GroupId;
use serde_json::{Value, json};
use support::gateway::{ids_in, leader_of, start_in, transfer_id, wait_for_log};
use support::{ChildNode, DevRun, fincore_exe, get, post_json};
use testkit::cluster::LocalGroups;

struct Cluster {
    groups: LocalGroups,
    gateway: ChildNode,
    _dir: tempfile::TempDir,
}

fn start(groups: usize) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let (local, gateway) = start_in(dir.path(), groups, 1);
    Cluster {
        groups: local,
        gateway,
        _dir: dir,
    }
}

fn results(answer: &support::Answer) -> Vec<String> {
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.json().unwrap()["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["result"].as_str().unwrap().to_string())
        .collect()
}

fn account(id: u128) -> Value {
    json!({"id": id.to_string(), "ledger": 1, "code": 1})
}

fn transfer(id: u128, debit: u128, credit: u128, amount: u64) -> Value {
    json!({"id": id.to_string(), "debit_account_id": debit.to_string(),
        "credit_account_id": credit.to_string(), "amount": amount.to_string(),
        "ledger": 1, "code": 1})
}

fn balances(gateway: &str, id: u128) -> (String, String) {
    let answer = get(gateway, &format!("/v1/accounts/{id}"));
    assert_eq!(answer.status, 200, "{}", answer.body);
    let account = answer.json().unwrap();
    (
        account["debits_posted"].as_str().unwrap().to_string(),
        account["credits_posted"].as_str().unwrap().to_string(),
    )
}

#[test]
fn a_batch_over_two_groups_gets_each_groups_results_in_the_callers_order() {
    let cluster = start(2);
    let map = &cluster.groups.map;
    let group_ids: Vec<GroupId> = map.groups().keys().copied().collect();
    let a = ids_in(map, group_ids[0], 3);
    let b = ids_in(map, group_ids[1], 3);
    let gateway = &cluster.gateway.http_addr;

    // Accounts of both groups interleaved, with a duplicate and an invalid one: every event gets
    // its group's result, at its own place.
    let batch = json!([
        account(a[0]),
        account(b[0]),
        account(a[1]),
        account(b[1]),
        {"id": a[2].to_string(), "ledger": 0, "code": 1},
        account(b[0]),
        account(b[2]),
        account(a[2]),
    ]);
    let answer = post_json(gateway, "/v1/accounts", &batch.to_string());
    assert_eq!(
        results(&answer),
        [
            "created",
            "created",
            "created",
            "created",
            "ledger_must_not_be_zero",
            "exists",
            "created",
            "created"
        ]
    );
    let indexes: Vec<u64> = answer.json().unwrap()["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indexes, (0..8).collect::<Vec<_>>());

    // Each account is where the map says: its group's own node has it.
    for (group, ids) in [(0, &a), (1, &b)] {
        let node = &cluster.groups.node(group, 0).unwrap().http_addr;
        for id in ids.iter() {
            assert_eq!(get(node, &format!("/v1/accounts/{id}")).status, 200);
        }
    }

    // Lookups across groups come back in the order asked, unknown ids left out.
    let unknown = ids_in(map, group_ids[1], 10)[9];
    let asked =
        json!({"ids": [b[1].to_string(), unknown.to_string(), a[0].to_string(), b[2].to_string()]});
    let found = post_json(gateway, "/v1/accounts/lookup", &asked.to_string());
    assert_eq!(found.status, 200, "{}", found.body);
    let found: Vec<String> = found.json().unwrap()["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        found,
        [b[1].to_string(), a[0].to_string(), b[2].to_string()]
    );

    // Transfers homed in each group (ids minted in the debit account's slot), in one batch,
    // with a linked chain inside group b whose second event fails: the chain fails as one.
    let (ta, tb1, tb2, tb3) = (
        transfer_id(a[0], 1),
        transfer_id(b[0], 2),
        transfer_id(b[0], 3),
        transfer_id(b[0], 4),
    );
    let mut linked = transfer(tb2, b[0], b[1], 5);
    linked["flags"] = json!(["linked"]);
    let batch = json!([
        transfer(ta, a[0], a[1], 100),
        transfer(tb1, b[0], b[1], 7),
        linked,
        transfer(tb3, b[0], b[0], 5),
    ]);
    let answer = post_json(gateway, "/v1/transfers", &batch.to_string());
    assert_eq!(
        results(&answer),
        [
            "created",
            "created",
            "linked_event_failed",
            "accounts_must_be_different"
        ]
    );
    assert_eq!(balances(gateway, a[0]), ("100".into(), "0".into()));
    assert_eq!(balances(gateway, b[1]), ("0".into(), "7".into()));

    // A resubmitted id with another amount answers as its group would.
    let again = json!([transfer(ta, a[0], a[1], 101)]);
    let answer = post_json(gateway, "/v1/transfers", &again.to_string());
    assert_eq!(results(&answer), ["exists_with_different_amount"]);

    // Queries by account go to the account's group.
    let history = get(gateway, &format!("/v1/accounts/{}/transfers", b[0]));
    assert_eq!(history.status, 200, "{}", history.body);
    assert_eq!(
        history.json().unwrap()["transfers"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let transfer_found = get(gateway, &format!("/v1/transfers/{tb1}"));
    assert_eq!(transfer_found.status, 200, "{}", transfer_found.body);
    let bad_filter = get(gateway, &format!("/v1/accounts/{}/transfers?limit=0", b[0]));
    assert_eq!(bad_filter.status, 400, "{}", bad_filter.body);

    // Across groups, what no saga carries yet (here a two-phase transfer): refused whole,
    // naming the event, and nothing changes.
    let fresh = transfer_id(a[1], 5);
    let mut pending = transfer(transfer_id(a[0], 6), a[0], b[1], 1);
    pending["flags"] = json!(["pending"]);
    let crossing = json!([transfer(fresh, a[1], a[0], 1), pending]);
    let answer = post_json(gateway, "/v1/transfers", &crossing.to_string());
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert_eq!(answer.json().unwrap()["field"], "transfers[1]");
    assert!(answer.body.contains("different groups"), "{}", answer.body);
    assert_eq!(get(gateway, &format!("/v1/transfers/{fresh}")).status, 404);

    // A linked chain whose events live in two groups: refused whole too.
    let mut first = transfer(transfer_id(a[0], 7), a[0], a[1], 1);
    first["flags"] = json!(["linked"]);
    let chain = json!([first, transfer(transfer_id(b[0], 8), b[0], b[1], 1)]);
    let answer = post_json(gateway, "/v1/transfers", &chain.to_string());
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert_eq!(answer.json().unwrap()["field"], "transfers[1]");
    assert!(answer.body.contains("linked chain"), "{}", answer.body);
    assert_eq!(balances(gateway, a[0]), ("100".into(), "0".into()));
}

#[test]
fn the_gateway_checks_keys_serves_the_nodes_document_and_the_rust_client_works_unchanged() {
    let cluster = start(2);
    let gateway = &cluster.gateway;
    let node = cluster.groups.node(0, 0).unwrap();

    // No key, a wrong key: refused before anything is read.
    let open = testkit::http::request_as(
        None,
        &gateway.http_addr,
        "POST",
        "/v1/accounts",
        Some("application/json"),
        r#"[{"id":"1","ledger":1,"code":1}]"#,
    )
    .unwrap();
    assert_eq!(open.status, 401, "{}", open.body);
    let wrong = testkit::http::request_as(
        Some("fk_nope"),
        &gateway.http_addr,
        "GET",
        "/v1/accounts/1",
        None,
        "",
    )
    .unwrap();
    assert_eq!(wrong.status, 401, "{}", wrong.body);

    // The node's document, less the replica's own routes (which a gateway does not serve;
    // the change events are the client API's, served by both).
    let document = get(&gateway.http_addr, "/openapi.json");
    assert_eq!(document.status, 200);
    let gateway_document = document.json().unwrap();
    let mut node_document = get(&node.http_addr, "/openapi.json").json().unwrap();
    let node_paths = node_document["paths"].as_object_mut().unwrap();
    for replica_route in [
        "/v1/status",
        "/v1/admin/replicas",
        "/v1/admin/replicas/{id}",
    ] {
        assert!(
            node_paths.remove(replica_route).is_some(),
            "{replica_route}"
        );
        assert_eq!(
            get(&gateway.http_addr, replica_route).status,
            404,
            "{replica_route}"
        );
    }
    assert_eq!(gateway_document["paths"], node_document["paths"]);
    assert_eq!(gateway_document["info"], node_document["info"]);
    // Every schema and answer the gateway's paths refer to is the node's.
    for part in ["schemas", "responses", "securitySchemes"] {
        for (name, value) in gateway_document["components"][part].as_object().unwrap() {
            assert_eq!(
                value, &node_document["components"][part][name],
                "{part}.{name}"
            );
        }
    }

    // The Rust client, pointed at the gateway as at a node.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = support::connect(
            &format!("http://{}", gateway.grpc_addr),
            client::RetryPolicy::default(),
        )
        .unwrap();
        let map = &cluster.groups.map;
        let ids: Vec<u128> = (1..=40).collect();
        assert!(
            map.groups()
                .keys()
                .all(|&g| ids.iter().any(|&id| map.group_of(id) == g)),
            "the ids reach every group"
        );
        let accounts: Vec<ledger::Account> = ids
            .iter()
            .map(|&id| ledger::Account {
                id,
                ledger: 1,
                code: 1,
                ..Default::default()
            })
            .collect();
        let created = client.create_accounts(&accounts).await.unwrap();
        assert!(
            created
                .iter()
                .all(|r| r.result == ledger::CreateAccountResult::Created)
        );
        let mut reversed = ids.clone();
        reversed.reverse();
        let found = client.lookup_accounts(&reversed).await.unwrap();
        let found: Vec<u128> = found.iter().map(|a| a.id).collect();
        assert_eq!(found, reversed);
    });
}

#[test]
fn fincore_dev_with_groups_serves_the_gateway_first_and_keeps_the_cluster_across_runs() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("fincore-data");
    let (args, addrs) = support::dev_groups_args(2, &data);
    let mut dev = DevRun::start(&args);
    // The first lines are the gateway's.
    assert_eq!(
        dev.line_with("fincore: gRPC listening on "),
        format!("fincore: gRPC listening on {} (plaintext)", addrs[0])
    );
    assert_eq!(
        dev.line_with("fincore: HTTP listening on "),
        format!("fincore: HTTP listening on http://{}", addrs[1])
    );
    assert!(
        dev.line_with("  meta group ")
            .starts_with("  meta group (cluster map epoch 1, pushed to the gateway): node 1 gRPC ")
    );
    let meta = dev
        .line_with("cluster --meta ")
        .rsplit(' ')
        .next()
        .unwrap()
        .to_string();
    dev.line_with("Ctrl-C stops the gateway");
    let map =
        cluster::ClusterMap::from_json(&std::fs::read(data.join("cluster-map.json")).unwrap())
            .unwrap();
    assert_eq!(map.groups().len(), 2);
    let key = std::fs::read_to_string(data.join("dev-api-key")).unwrap();
    let as_dev = |method: &str, path: &str, body: &str| {
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
    let ids: Vec<u128> = (1..=20).collect();
    assert!(
        map.groups()
            .keys()
            .all(|&g| ids.iter().any(|&id| map.group_of(id) == g))
    );
    let accounts: Vec<Value> = ids.iter().map(|&id| account(id)).collect();
    // The groups may still be electing: the gateway retries for the caller.
    let answer = as_dev("POST", "/v1/accounts", &Value::from(accounts).to_string());
    assert_eq!(results(&answer), vec!["created"; 20]);
    // `admin cluster` shows the meta group's map and each group's leader as its members
    // report it; `admin set-map` changes the map under the epoch compare-and-set.
    let admin = |args: &[&str]| {
        let output = std::process::Command::new(fincore_exe())
            .arg("admin")
            .args(args)
            .env("FINCORE_API_KEY", key.trim())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.success(), text)
    };
    let (shown, text) = admin(&["cluster", "--meta", &meta]);
    assert!(shown, "{text}");
    assert!(
        text.starts_with("cluster map epoch 1 (from the meta group): 2 groups over 4096 slots"),
        "{text}"
    );
    assert_eq!(text.matches(": leader, term ").count(), 2, "{text}");
    assert!(text.contains(": 2048 slots (0-2047)"), "{text}");
    let mut next: Value = serde_json::from_str(&map.to_json()).unwrap();
    next["epoch"] = Value::from(2);
    let next_file = dir.path().join("map-2.json");
    std::fs::write(&next_file, next.to_string()).unwrap();
    let next_file = next_file.to_str().unwrap();
    let (set, text) = admin(&["set-map", "--meta", &meta, "--map", next_file]);
    assert!(set, "{text}");
    assert!(
        text.contains("cluster map is now epoch 2: 2 groups"),
        "{text}"
    );
    // The same change again is based on an epoch no longer in use: refused, naming it.
    let (set, text) = admin(&["set-map", "--meta", &meta, "--map", next_file]);
    assert!(!set && text.contains("epoch 2"), "{text}");
    let (shown, text) = admin(&["cluster", "--meta", &meta]);
    assert!(
        shown && text.starts_with("cluster map epoch 2 (from the meta group)"),
        "{text}"
    );
    dev.stop();

    // The next run routes by the map the meta group holds, not the one it planned.
    let mut dev = DevRun::start(&args);
    assert!(
        dev.line_with("  meta group ")
            .starts_with("  meta group (cluster map epoch 2, pushed to the gateway)")
    );
    dev.line_with("Ctrl-C stops the gateway");
    for id in ids {
        assert_eq!(as_dev("GET", &format!("/v1/accounts/{id}"), "").status, 200);
    }
    dev.stop();
}

#[test]
fn the_gateway_follows_a_new_leader_and_loses_no_acknowledged_transfer() {
    let dir = tempfile::tempdir().unwrap();
    let (mut local, gateway) = start_in(dir.path(), 2, 3);
    let map = local.map.clone();
    let group_ids: Vec<GroupId> = map.groups().keys().copied().collect();
    // Two accounts per group; every transfer stays in its group, homed with its debit account.
    let pairs: Vec<(u128, u128)> = group_ids
        .iter()
        .map(|&g| {
            let ids = ids_in(&map, g, 2);
            (ids[0], ids[1])
        })
        .collect();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = runtime.block_on(async {
        support::connect(
            &format!("http://{}", gateway.grpc_addr),
            client::RetryPolicy::default(),
        )
        .unwrap()
    });
    let accounts: Vec<ledger::Account> = pairs
        .iter()
        .flat_map(|&(a, b)| [a, b])
        .map(|id| ledger::Account {
            id,
            ledger: 1,
            code: 1,
            ..Default::default()
        })
        .collect();
    runtime.block_on(client.create_accounts(&accounts)).unwrap();

    let write = |round: u128| {
        let transfers: Vec<ledger::Transfer> = pairs
            .iter()
            .map(|&(debit, credit)| ledger::Transfer {
                id: transfer_id(debit, round),
                debit_account_id: debit,
                credit_account_id: credit,
                amount: 1,
                ledger: 1,
                code: 1,
                ..Default::default()
            })
            .collect();
        let results = runtime
            .block_on(client.create_transfers(&transfers))
            .unwrap();
        assert!(
            results.iter().all(|r| matches!(
                r.result,
                ledger::CreateTransferResult::Created | ledger::CreateTransferResult::Exists
            )),
            "round {round}: {results:?}"
        );
    };
    for round in 1..=20 {
        write(round);
    }
    // Kill group 0's leader; writes to both groups go on through the same gateway.
    let leader = leader_of(&local, 0);
    local.kill9(0, leader);
    for round in 21..=40 {
        write(round);
    }
    assert_ne!(leader_of(&local, 0), leader);
    // Every acknowledged transfer is there once: each debit account moved exactly 40.
    for &(debit, credit) in &pairs {
        let found = runtime
            .block_on(client.lookup_accounts(&[debit, credit]))
            .unwrap();
        assert_eq!(found[0].debits_posted, 40, "{debit}");
        assert_eq!(found[1].credits_posted, 40, "{credit}");
    }
    gateway.stop().unwrap();
    local.stop().unwrap();
}

#[test]
fn a_map_naming_another_groups_nodes_is_refused_by_those_nodes_and_changes_nothing() {
    let cluster = start(2);
    let map = &cluster.groups.map;
    let ids: Vec<GroupId> = map.groups().keys().copied().collect();
    // The same groups, each id given the other group's members.
    let swapped = map
        .set_members(ids[0], map.members(ids[1]).unwrap().clone())
        .and_then(|m| m.set_members(ids[1], map.members(ids[0]).unwrap().clone()))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let wrong_map = dir.path().join("wrong-map.json");
    std::fs::write(&wrong_map, swapped.to_json()).unwrap();
    let misled = ChildNode::start_gateway(
        fincore_exe(),
        &dir.path().join("misled"),
        &wrong_map,
        &["--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0"],
    )
    .unwrap();
    let id = ids_in(map, ids[0], 1)[0];
    let answer = post_json(
        &misled.http_addr,
        "/v1/accounts",
        &json!([account(id)]).to_string(),
    );
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert!(
        answer
            .body
            .contains(&format!("serves group {}, not group {}", ids[1], ids[0])),
        "{}",
        answer.body
    );
    for g in 0..2 {
        let node = cluster.groups.node(g, 0).unwrap();
        assert_eq!(
            get(&node.http_addr, &format!("/v1/accounts/{id}")).status,
            404
        );
    }
    // The right map still works.
    let answer = post_json(
        &cluster.gateway.http_addr,
        "/v1/accounts",
        &json!([account(id)]).to_string(),
    );
    assert_eq!(results(&answer), ["created"]);
}

#[test]
fn a_gateway_takes_a_newer_map_on_sighup_and_refuses_one_that_moves_slots_or_is_older() {
    let cluster = start(2);
    let map = &cluster.groups.map;
    let ids: Vec<GroupId> = map.groups().keys().copied().collect();
    let path = &cluster.groups.map_path;
    let hup = || cluster.gateway.signal(testkit::node::Signal::Hup).unwrap();

    let newer = map
        .set_members(ids[0], map.members(ids[0]).unwrap().clone())
        .unwrap();
    assert_eq!(newer.epoch(), 2);
    std::fs::write(path, newer.to_json()).unwrap();
    hup();
    wait_for_log(&cluster.gateway, "routing by cluster map epoch 2");

    let slot = cluster::Slot::new(0).unwrap();
    let other = ids
        .iter()
        .copied()
        .find(|&g| g != newer.group_of_slot(slot))
        .unwrap();
    let moving = newer.move_slots(&[slot], other).unwrap();
    std::fs::write(path, moving.to_json()).unwrap();
    hup();
    wait_for_log(&cluster.gateway, "kept cluster map epoch 2");
    wait_for_log(&cluster.gateway, "moves slot 0 to another group");

    std::fs::write(path, map.to_json()).unwrap();
    hup();
    wait_for_log(
        &cluster.gateway,
        "its epoch 1 is not newer than the epoch 2 in use",
    );

    // Still routing, by epoch 2.
    let accounts: Vec<Value> = (1..=10).map(account).collect();
    let answer = post_json(
        &cluster.gateway.http_addr,
        "/v1/accounts",
        &Value::from(accounts).to_string(),
    );
    assert_eq!(results(&answer), vec!["created"; 10]);
}

fn account_json(gateway: &str, id: u128) -> Value {
    let answer = get(gateway, &format!("/v1/accounts/{id}"));
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.json().unwrap()
}

fn field(account: &Value, name: &str) -> u128 {
    account[name].as_str().unwrap().parse().unwrap()
}

/// Every account's pending balances are zero and, over all of them, posted debits equal posted
/// credits: no saga left a hold or moved money on one side only.
fn assert_settled_and_balanced(gateway: &str, ids: &[u128]) {
    let (mut debits, mut credits) = (0u128, 0u128);
    for &id in ids {
        let account = account_json(gateway, id);
        assert_eq!(field(&account, "debits_pending"), 0, "{account}");
        assert_eq!(field(&account, "credits_pending"), 0, "{account}");
        debits += field(&account, "debits_posted");
        credits += field(&account, "credits_posted");
    }
    assert_eq!(debits, credits);
}

#[test]
fn transfers_across_groups_run_as_sagas_and_answer_as_one_group_would() {
    let cluster = start(3);
    let map = &cluster.groups.map;
    let g: Vec<GroupId> = map.groups().keys().copied().collect();
    let (a, b, h) = (
        ids_in(map, g[0], 2),
        ids_in(map, g[1], 2),
        ids_in(map, g[2], 1),
    );
    let gateway = &cluster.gateway.http_addr;
    let mut limited = account(a[1]);
    limited["flags"] = json!(["debits_must_not_exceed_credits"]);
    let accounts = json!([
        account(a[0]),
        limited,
        account(b[0]),
        account(b[1]),
        account(h[0])
    ]);
    let answer = post_json(gateway, "/v1/accounts", &accounts.to_string());
    assert!(results(&answer).iter().all(|r| r == "created"));

    // t1: homed in a third group; t2: homed with its debit; t3: refused by a1's limit in a1's
    // group; t4: within one group, between them in the batch.
    let (t1, t2, t3, t4) = (
        transfer_id(h[0], 1),
        transfer_id(a[0], 2),
        transfer_id(h[0], 3),
        transfer_id(b[0], 4),
    );
    let batch = json!([
        transfer(t1, a[0], b[0], 10),
        transfer(t4, b[0], b[1], 3),
        transfer(t2, a[0], b[1], 5),
        transfer(t3, a[1], b[0], 1),
    ]);
    let answer = post_json(gateway, "/v1/transfers", &batch.to_string());
    assert_eq!(
        results(&answer),
        ["created", "created", "created", "exceeds_credits"]
    );
    assert_eq!(balances(gateway, a[0]), ("15".into(), "0".into()));
    assert_eq!(balances(gateway, b[0]), ("3".into(), "10".into()));
    assert_eq!(balances(gateway, b[1]), ("0".into(), "8".into()));
    assert_eq!(balances(gateway, a[1]), ("0".into(), "0".into()));
    let all = [a[0], a[1], b[0], b[1], h[0]];
    assert_settled_and_balanced(gateway, &all);

    // The transfer is found by its id (its home's copy) with the caller's fields, and in each
    // account's history; the refused one nowhere.
    let found = get(gateway, &format!("/v1/transfers/{t1}"));
    assert_eq!(found.status, 200, "{}", found.body);
    let found = found.json().unwrap();
    assert_eq!(found["debit_account_id"], a[0].to_string());
    assert_eq!(found["credit_account_id"], b[0].to_string());
    assert_eq!(found["amount"], "10");
    assert_eq!(get(gateway, &format!("/v1/transfers/{t3}")).status, 404);
    let history = get(gateway, &format!("/v1/accounts/{}/transfers", a[0]));
    let ids: Vec<String> = history.json().unwrap()["transfers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, [t1.to_string(), t2.to_string()]);

    // Resubmissions answer as one group would: the same transfer exists, a changed one exists
    // differently, a refused one burnt its id. Nothing moves twice.
    for (event, expected) in [
        (transfer(t1, a[0], b[0], 10), "exists"),
        (transfer(t1, a[0], b[0], 11), "exists_with_different_amount"),
        (
            transfer(t1, a[0], b[1], 10),
            "exists_with_different_credit_account_id",
        ),
        (transfer(t3, a[1], b[0], 1), "id_already_failed"),
    ] {
        let answer = post_json(gateway, "/v1/transfers", &json!([event]).to_string());
        assert_eq!(results(&answer), [expected], "{event}");
    }
    assert_eq!(balances(gateway, a[0]), ("15".into(), "0".into()));
    assert_eq!(balances(gateway, b[1]), ("0".into(), "8".into()));
    assert_settled_and_balanced(gateway, &all);

    // A transfer across groups that carries a timestamp without being imported answers as one
    // node would, before anything else is checked (found by schemathesis: it used to reach
    // the groups and make the whole request 503).
    let mut stamped = transfer(transfer_id(h[0], 7), a[0], b[0], 1);
    stamped["timestamp"] = json!("336");
    let answer = post_json(gateway, "/v1/transfers", &json!([stamped]).to_string());
    assert_eq!(results(&answer), ["timestamp_must_be_zero"]);

    // A linked transfer across groups is not carried yet: refused whole.
    let mut linked = transfer(transfer_id(h[0], 5), a[0], b[0], 1);
    linked["flags"] = json!(["linked"]);
    let chain = json!([linked, transfer(transfer_id(h[0], 6), h[0], a[0], 1)]);
    let answer = post_json(gateway, "/v1/transfers", &chain.to_string());
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert_eq!(answer.json().unwrap()["field"], "transfers[0]");
}

#[test]
fn a_saga_left_open_by_a_dead_gateway_is_finished_by_another_gateways_resolver() {
    let dir = tempfile::tempdir().unwrap();
    let local = LocalGroups::start(fincore_exe(), dir.path(), 3, 1, &[])
        .unwrap_or_else(|error| panic!("{error}"));
    let map = &local.map;
    let g: Vec<GroupId> = map.groups().keys().copied().collect();
    let (a, b, h) = (
        ids_in(map, g[0], 1),
        ids_in(map, g[1], 1),
        ids_in(map, g[2], 1),
    );
    let (t5, t6) = (transfer_id(h[0], 5), transfer_id(h[0], 6));
    let copy_of = |id: u128, amount: u128| ledger::Transfer {
        id,
        debit_account_id: a[0],
        credit_account_id: b[0],
        amount,
        ledger: 1,
        code: 1,
        ..Default::default()
    };
    // The dead gateway's work, done by hand on the groups' nodes: t5 reserved in the debit's
    // group only (never decided); t6 reserved everywhere and confirmed in its home, the
    // decision never carried to the other two.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        use ledger::{CreateTransferResult as R, RemoteSides, SagaStep};
        let node = |group: usize| {
            let addr = format!("http://{}", local.node(group, 0).unwrap().grpc_addr);
            support::connect(&addr, client::RetryPolicy::default()).unwrap()
        };
        let (ga, gb, gh) = (node(0), node(1), node(2));
        let accounts = |id| {
            vec![ledger::Account {
                id,
                ledger: 1,
                code: 1,
                ..Default::default()
            }]
        };
        for (client, id) in [(&ga, a[0]), (&gb, b[0]), (&gh, h[0])] {
            let created = client.create_accounts(&accounts(id)).await.unwrap();
            assert_eq!(created[0].result, ledger::CreateAccountResult::Created);
        }
        let steps = |client: &client::Client, steps: Vec<SagaStep>| {
            let client = client.clone();
            async move {
                let results = client.saga_steps(&steps).await.unwrap();
                assert!(
                    results.iter().all(|r| r.result == R::Created),
                    "{results:?}"
                );
            }
        };
        steps(
            &ga,
            vec![
                SagaStep::reserve(copy_of(t5, 5), RemoteSides::CREDIT),
                SagaStep::reserve(copy_of(t6, 6), RemoteSides::CREDIT),
            ],
        )
        .await;
        steps(
            &gb,
            vec![SagaStep::reserve(copy_of(t6, 6), RemoteSides::DEBIT)],
        )
        .await;
        steps(
            &gh,
            vec![
                SagaStep::reserve(copy_of(t6, 6), RemoteSides::all()),
                SagaStep::confirm(t6),
            ],
        )
        .await;
        let held = ga.lookup_accounts(&[a[0]]).await.unwrap();
        assert_eq!(held[0].debits_pending, 11);
    });
    // The debit's group holds both copies open, and says so (sampled every second).
    let group_a = local.node(0, 0).unwrap().http_addr.clone();
    let copies_open = |expected: f64| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let metrics = get(&group_a, "/metrics").body;
            if testkit::http::metric_value(&metrics, "fincore_saga_copies_open") == Some(expected) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "fincore_saga_copies_open never showed {expected}: {metrics}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    copies_open(2.0);

    // Another gateway, aborting sagas open for over a second, finishes both.
    let gateway = ChildNode::start_gateway(
        fincore_exe(),
        &dir.path().join("gateway"),
        &local.map_path,
        &[
            "--grpc",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--saga-open-seconds",
            "1",
        ],
    )
    .unwrap_or_else(|error| panic!("{error}"));
    let http = &gateway.http_addr;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while field(&account_json(http, a[0]), "debits_pending") != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the resolver did not finish the sagas: {}",
            account_json(http, a[0])
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // t6 was decided (confirmed in its home): it is carried out everywhere. t5 was not: it is
    // cancelled, its id burnt, and nothing of it stays.
    assert_eq!(balances(http, a[0]), ("6".into(), "0".into()));
    assert_eq!(balances(http, b[0]), ("0".into(), "6".into()));
    assert_settled_and_balanced(http, &[a[0], b[0], h[0]]);
    copies_open(0.0);
    assert_eq!(get(http, &format!("/v1/transfers/{t6}")).status, 200);
    assert_eq!(get(http, &format!("/v1/transfers/{t5}")).status, 404);
    let retry = json!([transfer(t5, a[0], b[0], 5)]);
    let answer = post_json(http, "/v1/transfers", &retry.to_string());
    assert_eq!(results(&answer), ["id_already_failed"]);
    let retry = json!([transfer(t6, a[0], b[0], 6)]);
    let answer = post_json(http, "/v1/transfers", &retry.to_string());
    assert_eq!(results(&answer), ["exists"]);
    // Their outcomes, asked of their home: final both.
    let lookup = json!({"ids": [t5.to_string(), t6.to_string()]});
    let answer = post_json(http, "/v1/transfers/outcomes", &lookup.to_string());
    assert_eq!(outcomes(&answer), ["failed", "created"]);
    // The gateway's metrics: both sagas ended (one each way), none carried now, and a later
    // resolver round finds no stale copy left in any group.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let metrics = get(http, "/metrics").body;
        let value = |series: &str| testkit::http::metric_value(&metrics, series);
        let stale: Vec<Option<f64>> = g
            .iter()
            .map(|group| value(&format!(r#"fincore_saga_copies_stale{{group="{group}"}}"#)))
            .collect();
        if stale.iter().all(|copies| *copies == Some(0.0)) {
            assert_eq!(value("fincore_sagas_in_flight"), Some(0.0), "{metrics}");
            assert!(
                value(r#"fincore_sagas_total{outcome="confirmed"}"#) >= Some(1.0)
                    && value(r#"fincore_sagas_total{outcome="cancelled"}"#) >= Some(1.0),
                "{metrics}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "stale copies still counted: {stale:?}\n{metrics}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

fn outcomes(answer: &support::Answer) -> Vec<String> {
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.json().unwrap()["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["outcome"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn sagas_past_the_deadline_answer_outcome_pending_and_their_outcome_is_polled_by_id() {
    let dir = tempfile::tempdir().unwrap();
    let local = LocalGroups::start(fincore_exe(), dir.path(), 2, 1, &[])
        .unwrap_or_else(|error| panic!("{error}"));
    // A deadline of 0: every saga outlives it, so every cross-group transfer is answered
    // `outcome_pending` and finished in the background.
    let gateway = ChildNode::start_gateway(
        fincore_exe(),
        &dir.path().join("gateway"),
        &local.map_path,
        &[
            "--grpc",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--saga-deadline-ms",
            "0",
        ],
    )
    .unwrap_or_else(|error| panic!("{error}"));
    let map = &local.map;
    let g: Vec<GroupId> = map.groups().keys().copied().collect();
    let (a, b) = (ids_in(map, g[0], 2), ids_in(map, g[1], 1));
    let http = &gateway.http_addr;
    let mut limited = account(a[1]);
    limited["flags"] = json!(["debits_must_not_exceed_credits"]);
    let accounts = json!([account(a[0]), limited, account(b[0])]);
    let answer = post_json(http, "/v1/accounts", &accounts.to_string());
    assert!(results(&answer).iter().all(|r| r == "created"));

    // Across groups: t1 goes through, t2 is refused by a1's limit (a1 holds only t3's 4: the
    // single-group part applies first); t3 (one group) is answered at once, t4 (one group,
    // refused for a state-dependent reason) burns its id.
    let (t1, t2, t3, t4) = (
        transfer_id(a[0], 1),
        transfer_id(b[0], 2),
        transfer_id(a[0], 3),
        transfer_id(a[1], 4),
    );
    let batch = json!([
        transfer(t1, a[0], b[0], 10),
        transfer(t2, a[1], b[0], 5),
        transfer(t3, a[0], a[1], 4),
        transfer(t4, a[1], a[0], 100),
    ]);
    let answer = post_json(http, "/v1/transfers", &batch.to_string());
    assert_eq!(
        results(&answer),
        [
            "outcome_pending",
            "outcome_pending",
            "created",
            "exceeds_credits"
        ]
    );

    // Waiting for the outcomes: final once the sagas end, in the order asked; an id never
    // used is `not_found`, answered without waiting (only `pending` is waited on).
    let never = transfer_id(b[0], 9);
    let lookup = json!({"ids": [t2.to_string(), t1.to_string(), t3.to_string(), t4.to_string()], "wait_ms": 5000});
    let answer = post_json(http, "/v1/transfers/outcomes", &lookup.to_string());
    assert_eq!(
        outcomes(&answer),
        ["failed", "created", "created", "failed"]
    );
    let found = &answer.json().unwrap()["outcomes"][1];
    assert_eq!(found["id"], t1.to_string());
    assert_ne!(found["timestamp"], "0", "{found}");
    let lookup = json!({"ids": [never.to_string()], "wait_ms": 5000});
    let asked = std::time::Instant::now();
    let answer = post_json(http, "/v1/transfers/outcomes", &lookup.to_string());
    assert_eq!(outcomes(&answer), ["not_found"]);
    assert!(asked.elapsed() < std::time::Duration::from_secs(4));
    assert_eq!(balances(http, a[0]), ("14".into(), "0".into()));
    assert_eq!(balances(http, a[1]), ("0".into(), "4".into()));
    assert_eq!(balances(http, b[0]), ("0".into(), "10".into()));
    assert_settled_and_balanced(http, &[a[0], a[1], b[0]]);

    // The Rust client asks the same, of the gateway and of a group's node directly (t1's home
    // is a0's group: group 0).
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        use ledger::TransferOutcome as O;
        let via = |addr: String| support::connect(&addr, client::RetryPolicy::default()).unwrap();
        let gateway_client = via(format!("http://{}", gateway.grpc_addr));
        let node_client = via(format!("http://{}", local.node(0, 0).unwrap().grpc_addr));
        let ids = [t1, t2, never];
        let through_gateway = gateway_client
            .lookup_outcomes(&ids, std::time::Duration::ZERO)
            .await
            .unwrap();
        assert!(matches!(through_gateway[0], O::Created { timestamp } if timestamp > 0));
        assert_eq!(&through_gateway[1..], [O::Failed, O::NotFound]);
        let at_home = node_client
            .lookup_outcomes(&[t1], std::time::Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(at_home, through_gateway[..1]);
        // Past the longest wait: refused by the client's server, naming the field.
        let error = gateway_client
            .lookup_outcomes(&ids, std::time::Duration::from_secs(60))
            .await
            .unwrap_err();
        assert!(error.to_string().contains("wait_ms"), "{error}");
    });

    // Hostile bodies: refused, naming the field.
    for (body, field) in [
        (json!({"ids": [t1.to_string()], "wait_ms": 5001}), "wait_ms"),
        (json!({"ids": []}), "ids"),
        (json!({"ids": [t1.to_string()], "wait": 1}), "wait"),
        (json!({"ids": ["-1"]}), "ids"),
    ] {
        let answer = post_json(http, "/v1/transfers/outcomes", &body.to_string());
        assert_eq!(answer.status, 400, "{body}: {}", answer.body);
        let error = answer.json().unwrap();
        assert!(
            error["field"].as_str().unwrap_or("").starts_with(field),
            "{body}: {error}"
        );
    }
}
