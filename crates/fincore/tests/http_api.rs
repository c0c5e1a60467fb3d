//! The HTTP/JSON API through the real binary: every operation and every error path, and that a
//! refused request changes nothing.

mod support;

use serde_json::{Value, json};
use support::{ChildNode, get, http, post_json};

fn results(answer: &support::Answer) -> Vec<String> {
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.json().unwrap()["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["result"].as_str().unwrap().to_string())
        .collect()
}

fn setup(node: &ChildNode) {
    let accounts = json!([
        {"id": "1", "ledger": 1, "code": 10},
        {"id": 2, "ledger": 1, "code": 10, "flags": ["history"]},
        {"id": "3", "ledger": 1, "code": 10, "flags": ["debits_must_not_exceed_credits"]},
    ]);
    let answer = post_json(&node.http_addr, "/v1/accounts", &accounts.to_string());
    assert_eq!(results(&answer), ["created", "created", "created"]);
    let first = &answer.json().unwrap()["results"][0];
    assert_eq!(first["index"], 0);
    assert_eq!(first["id"], "1");
    assert!(first["timestamp"].as_str().unwrap().parse::<u64>().unwrap() > 0);
}

#[test]
fn every_operation_works_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let node = support::start_node(dir.path());
    setup(&node);
    // Idempotent resubmission.
    let again = post_json(
        &node.http_addr,
        "/v1/accounts",
        r#"[{"id":"1","ledger":1,"code":10}]"#,
    );
    assert_eq!(results(&again), ["exists"]);

    let max = u128::MAX.to_string();
    let transfers = json!([
        {"id": "10", "debit_account_id": "1", "credit_account_id": "2", "amount": "100", "ledger": 1, "code": 1, "user_data_128": max},
        {"id": "11", "debit_account_id": "1", "credit_account_id": "2", "amount": 40, "ledger": 1, "code": 1, "flags": ["pending"], "timeout": 3600},
        {"id": "12", "pending_id": "11", "amount": "30", "flags": ["post_pending_transfer"]},
        {"id": "13", "debit_account_id": "3", "credit_account_id": "1", "amount": "1", "ledger": 1, "code": 1},
        {"id": "14", "debit_account_id": "1", "credit_account_id": "2", "amount": "1", "ledger": 1, "code": 1, "flags": ["linked"]},
        {"id": "15", "debit_account_id": "1", "credit_account_id": "1", "amount": "1", "ledger": 1, "code": 1},
    ]);
    let answer = post_json(&node.http_addr, "/v1/transfers", &transfers.to_string());
    assert_eq!(
        results(&answer),
        [
            "created",
            "created",
            "created",
            "exceeds_credits",
            "linked_event_failed",
            "accounts_must_be_different"
        ]
    );

    let account = get(&node.http_addr, "/v1/accounts/2");
    assert_eq!(account.status, 200);
    let account = account.json().unwrap();
    assert_eq!(account["credits_posted"], "130");
    assert_eq!(account["credits_pending"], "0");
    assert_eq!(account["flags"], json!(["history"]));

    let transfer = get(&node.http_addr, "/v1/transfers/10").json().unwrap();
    assert_eq!(transfer["user_data_128"], Value::String(max.clone()));
    assert_eq!(transfer["amount"], "100");
    assert_eq!(
        get(&node.http_addr, "/v1/transfers/11").json().unwrap()["flags"],
        json!(["pending"])
    );

    let lookup = post_json(
        &node.http_addr,
        "/v1/accounts/lookup",
        r#"{"ids":["1", 3, "999"]}"#,
    );
    assert_eq!(lookup.status, 200);
    let lookup = lookup.json().unwrap();
    let ids: Vec<&str> = lookup["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["1", "3"]);
    let lookup = post_json(
        &node.http_addr,
        "/v1/transfers/lookup",
        r#"{"ids":["12","13"]}"#,
    )
    .json()
    .unwrap();
    assert_eq!(
        lookup["transfers"].as_array().unwrap().len(),
        1,
        "13 failed, so it does not exist"
    );

    let history = get(
        &node.http_addr,
        "/v1/accounts/1/transfers?limit=10&reversed=true",
    )
    .json()
    .unwrap();
    let ids: Vec<&str> = history["transfers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["12", "11", "10"]);
    let credits_only = get(
        &node.http_addr,
        "/v1/accounts/1/transfers?debits=false&credits=true",
    )
    .json()
    .unwrap();
    assert_eq!(credits_only["transfers"].as_array().unwrap().len(), 0);
    let balances = get(&node.http_addr, "/v1/accounts/2/balances?limit=2")
        .json()
        .unwrap();
    let rows = balances["balances"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["credits_posted"], "100");
    assert_eq!(rows[1]["credits_pending"], "40");
    let newest = get(
        &node.http_addr,
        "/v1/accounts/2/balances?reversed=true&limit=1",
    )
    .json()
    .unwrap();
    assert_eq!(newest["balances"][0]["credits_posted"], "130");

    let health = get(&node.http_addr, "/healthz");
    assert_eq!(
        (health.status, health.json().unwrap()["status"].as_str()),
        (200, Some("ok"))
    );

    let metrics = get(&node.http_addr, "/metrics");
    assert_eq!(metrics.status, 200);
    for expected in [
        r#"fincore_requests_total{operation="create_transfers",protocol="http"}"#,
        r#"fincore_request_duration_seconds_bucket{le="0.0001",operation="create_transfers",protocol="http"}"#,
        "fincore_queue_depth",
        "fincore_batch_events_bucket",
        "fincore_journal_sync_seconds_bucket",
    ] {
        assert!(
            metrics.body.contains(expected),
            "metrics lack {expected}:\n{}",
            metrics.body
        );
    }

    // Status: the state digest only on request, at the same index.
    let full = get(&node.http_addr, "/v1/status?digest=true")
        .json()
        .unwrap();
    let light = get(&node.http_addr, "/v1/status").json().unwrap();
    assert_eq!(
        full["replica"]["state_digest"].as_str().map(str::len),
        Some(64)
    );
    assert!(light["replica"]["state_digest"].is_null(), "{light}");
    assert_eq!(
        full["replica"]["applied_index"],
        light["replica"]["applied_index"]
    );
    assert!(light["replica"]["applied_index"].as_u64().unwrap() > 0);

    let openapi = get(&node.http_addr, "/openapi.json");
    assert_eq!(openapi.status, 200);
    let paths = openapi.json().unwrap()["paths"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect::<Vec<_>>();
    for path in [
        "/v1/accounts",
        "/v1/transfers",
        "/v1/accounts/{id}",
        "/v1/accounts/{id}/balances",
        "/metrics",
    ] {
        assert!(
            paths.iter().any(|p| p == path),
            "openapi.json lacks {path}: {paths:?}"
        );
    }
    node.stop().unwrap();
}

#[test]
fn a_burst_of_digest_requests_gets_one_digest_or_busy_and_writes_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let node = support::start_node(dir.path());
    setup(&node);
    let answers: Vec<support::Answer> = std::thread::scope(|scope| {
        let callers: Vec<_> = (0..64)
            .map(|_| scope.spawn(|| get(&node.http_addr, "/v1/status?digest=true")))
            .collect();
        callers.into_iter().map(|c| c.join().unwrap()).collect()
    });
    let mut digests = std::collections::BTreeSet::new();
    for answer in &answers {
        let body = answer.json().unwrap();
        match answer.status {
            200 => {
                digests.insert((
                    body["replica"]["applied_index"].as_u64().unwrap(),
                    body["replica"]["state_digest"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                ));
            }
            503 => assert_eq!(body["retryable"], true, "{body}"),
            other => panic!("status {other}: {body}"),
        }
    }
    // Nothing was written meanwhile: every digest is of one index, and equal.
    assert_eq!(digests.len(), 1, "{digests:?}");
    let transfer = json!([{"id": 1, "debit_account_id": 1, "credit_account_id": 2, "amount": 5, "ledger": 1, "code": 1}]);
    let answer = post_json(&node.http_addr, "/v1/transfers", &transfer.to_string());
    assert_eq!(results(&answer), ["created"]);
    node.stop().unwrap();
}

#[test]
fn malformed_requests_get_json_errors_naming_the_problem_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = support::start_node(dir.path());
    setup(&node);
    let transfer = |extra: &str| {
        format!(
            r#"[{{"id":"50","debit_account_id":"1","credit_account_id":"2","ledger":1,"code":1{extra}}}]"#
        )
    };

    // (what, body, content type, status, field named, text in the error)
    type Case<'a> = (
        &'a str,
        String,
        Option<&'a str>,
        u16,
        Option<&'a str>,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "bad JSON",
            "[{\"id\":".into(),
            Some("application/json"),
            400,
            Some("[0].id"),
            "EOF",
        ),
        (
            "unknown flag",
            transfer(r#","amount":"1","flags":["pendng"]"#),
            Some("application/json"),
            400,
            Some("[0].flags[0]"),
            "pendng",
        ),
        (
            "negative number",
            transfer(r#","amount":-5"#),
            Some("application/json"),
            400,
            Some("[0].amount"),
            "negative",
        ),
        (
            "overflowing number",
            transfer(&format!(r#","amount":"{}0""#, u128::MAX)),
            Some("application/json"),
            400,
            Some("[0].amount"),
            "128 bits",
        ),
        (
            "overflowing u32",
            transfer(r#","amount":"1","user_data_32":4294967296"#),
            Some("application/json"),
            400,
            Some("[0].user_data_32"),
            "",
        ),
        (
            "unknown field",
            transfer(r#","amont":"1""#),
            Some("application/json"),
            400,
            Some("[0].amont"),
            "amont",
        ),
        (
            "wrong content type",
            transfer(r#","amount":"1""#),
            Some("text/plain"),
            415,
            None,
            "application/json",
        ),
        (
            "no content type",
            transfer(r#","amount":"1""#),
            None,
            415,
            None,
            "application/json",
        ),
        (
            "not an array",
            r#"{"id":"50"}"#.into(),
            Some("application/json"),
            400,
            None,
            "sequence",
        ),
    ];
    for (what, body, content_type, status, field, needle) in cases {
        let answer = http(
            &node.http_addr,
            "POST",
            "/v1/transfers",
            content_type,
            &body,
        );
        assert_eq!(answer.status, status, "{what}: {}", answer.body);
        let error = answer.json().unwrap();
        assert!(
            error["error"].as_str().unwrap().contains(needle),
            "{what}: {error}"
        );
        assert_eq!(error["field"].as_str(), field, "{what}: {error}");
    }

    let too_many: Vec<Value> = (0..8190).map(|i| json!({"id": (1000 + i).to_string(), "debit_account_id": "1", "credit_account_id": "2", "amount": "1", "ledger": 1, "code": 1})).collect();
    let answer = post_json(
        &node.http_addr,
        "/v1/transfers",
        &Value::Array(too_many).to_string(),
    );
    assert_eq!(answer.status, 400, "{}", answer.body);
    let error = answer.json().unwrap();
    assert!(
        error["error"]
            .as_str()
            .unwrap()
            .contains("8190 events; the limit is 8189"),
        "{error}"
    );
    assert_eq!(error["field"].as_str(), Some("[]"), "{error}");
    let answer = post_json(&node.http_addr, "/v1/transfers", "[]");
    assert_eq!(
        (answer.status, answer.json().unwrap()["field"].as_str()),
        (400, Some("[]"))
    );

    // Path and query errors.
    let answer = get(&node.http_addr, "/v1/accounts/abc");
    assert_eq!(
        (answer.status, answer.json().unwrap()["field"].as_str()),
        (400, Some("id"))
    );
    let answer = get(&node.http_addr, "/v1/accounts/77");
    assert_eq!(
        (answer.status, answer.json().unwrap()["field"].as_str()),
        (404, Some("id"))
    );
    let answer = get(&node.http_addr, "/v1/transfers/77");
    assert_eq!(answer.status, 404);
    let answer = get(&node.http_addr, "/v1/accounts/1/transfers?limit=0");
    assert_eq!(
        (answer.status, answer.json().unwrap()["field"].as_str()),
        (400, Some("limit"))
    );
    let answer = get(&node.http_addr, "/v1/accounts/1/transfers?limit=9000");
    assert_eq!(
        (answer.status, answer.json().unwrap()["field"].as_str()),
        (400, Some("limit"))
    );
    let answer = get(&node.http_addr, "/v1/accounts/1/transfers?debits=maybe");
    assert_eq!(
        (answer.status, answer.json().unwrap()["field"].as_str()),
        (400, Some("debits"))
    );
    let answer = get(
        &node.http_addr,
        "/v1/accounts/1/transfers?debits=false&credits=false",
    );
    assert_eq!(
        (answer.status, answer.json().unwrap()["field"].as_str()),
        (400, Some("flags"))
    );
    let answer = get(
        &node.http_addr,
        "/v1/accounts/1/balances?timestamp_min=5&timestamp_max=4",
    );
    assert_eq!(
        (answer.status, answer.json().unwrap()["field"].as_str()),
        (400, Some("timestamp_min"))
    );
    let answer = get(&node.http_addr, "/v1/accounts/1/balances?sort=asc");
    assert_eq!(
        (answer.status, answer.json().unwrap()["field"].as_str()),
        (400, Some("sort"))
    );
    let answer = post_json(&node.http_addr, "/v1/accounts/lookup", r#"{"ids":[-1]}"#);
    assert_eq!(
        (answer.status, answer.json().unwrap()["field"].as_str()),
        (400, Some("ids[0]"))
    );
    let answer = get(&node.http_addr, "/v1/status?digest=maybe");
    assert_eq!(
        (answer.status, answer.json().unwrap()["field"].as_str()),
        (400, Some("digest"))
    );
    let answer = get(&node.http_addr, "/v1/status?verbose=true");
    assert_eq!(
        (answer.status, answer.json().unwrap()["field"].as_str()),
        (400, Some("verbose"))
    );
    let answer = get(&node.http_addr, "/v2/nothing");
    assert_eq!(answer.status, 404);
    assert!(
        answer.json().unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("openapi.json")
    );
    let answer = http(&node.http_addr, "DELETE", "/v1/accounts/1", None, "");
    assert_eq!(answer.status, 405);
    assert!(answer.json().unwrap()["error"].is_string());

    // None of it changed the ledger.
    assert_eq!(get(&node.http_addr, "/v1/transfers/50").status, 404);
    assert_eq!(get(&node.http_addr, "/v1/transfers/1000").status, 404);
    let account = get(&node.http_addr, "/v1/accounts/1").json().unwrap();
    assert_eq!(
        (
            account["debits_posted"].as_str(),
            account["debits_pending"].as_str()
        ),
        (Some("0"), Some("0"))
    );
    node.stop().unwrap();
}

#[test]
fn a_clean_restart_keeps_everything_and_replays_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = support::start_node(dir.path());
    setup(&node);
    let answer = post_json(
        &node.http_addr,
        "/v1/transfers",
        r#"[{"id":"9","debit_account_id":"1","credit_account_id":"2","amount":"7","ledger":1,"code":1}]"#,
    );
    assert_eq!(results(&answer), ["created"]);
    let before = get(&node.http_addr, "/v1/transfers/9").json().unwrap();
    node.stop().unwrap();
    // The stopped node's data directory verifies: chain, entries, replay, double entry.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_fincore"))
        .args(["verify", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    assert!(
        text.contains("fincore verify: OK (replica data directory)") && text.contains("4 events"),
        "{text}"
    );
    let node = support::start_node(dir.path());
    assert_eq!(
        get(&node.http_addr, "/v1/transfers/9").json().unwrap(),
        before
    );
    assert_eq!(
        get(&node.http_addr, "/v1/accounts/2").json().unwrap()["credits_posted"],
        "7"
    );
    node.stop().unwrap();
}

/// `GET /v1/ids` mints fresh, distinct, time-ordered ids in the slot of `near`, and refuses a
/// missing `near` or a `count` outside 1..=8189 naming the parameter.
#[test]
fn ids_are_minted_in_the_slot_of_the_id_given() {
    let dir = tempfile::tempdir().unwrap();
    let node = support::start_node(dir.path());
    let near: u128 = 1_234_567_890_123_456_789;
    let answer = get(&node.http_addr, &format!("/v1/ids?near={near}&count=100"));
    assert_eq!(answer.status, 200, "{}", answer.body);
    let ids: Vec<u128> = answer.json().unwrap()["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(ids.len(), 100);
    assert!(
        ids.iter()
            .all(|&id| cluster::slot_of(id) == cluster::slot_of(near))
    );
    let distinct: std::collections::BTreeSet<u128> = ids.iter().copied().collect();
    assert_eq!(distinct.len(), 100);
    let one = get(&node.http_addr, &format!("/v1/ids?near={near}"));
    assert_eq!(one.json().unwrap()["ids"].as_array().unwrap().len(), 1);
    assert!(
        one.json().unwrap()["ids"][0]
            .as_str()
            .unwrap()
            .parse::<u128>()
            .unwrap()
            >> 80
            >= ids[0] >> 80
    );
    for (query, field) in [
        ("count=3", "near"),
        ("near=1&count=0", "count"),
        ("near=1&count=8190", "count"),
        ("near=x", "near"),
        ("near=1&size=2", "size"),
    ] {
        let refused = get(&node.http_addr, &format!("/v1/ids?{query}"));
        assert_eq!(refused.status, 400, "{query}: {}", refused.body);
        assert_eq!(refused.json().unwrap()["field"], field, "{query}");
    }
    node.stop().unwrap();
}
