//! The ledger's declared capacity through the real binary: a node started with a tiny
//! `--transfers-max` refuses the request that could pass it, naming the limit, changes
//! nothing, and still takes requests that fit.

mod support;

use client::{ClientError, RetryPolicy};
use ledger::Transfer;
use serde_json::json;
use support::{ChildNode, get, post_json, start_node_on};

fn transfers_json(ids: std::ops::Range<u32>) -> String {
    let transfers: Vec<_> = ids
        .map(|id| {
            json!({"id": id.to_string(), "debit_account_id": "1", "credit_account_id": "2",
                   "amount": "1", "ledger": 1, "code": 1})
        })
        .collect();
    serde_json::Value::Array(transfers).to_string()
}

/// A node that may hold 2 accounts and 3 transfers, with accounts 1 and 2 created.
fn start_tiny(dir: &std::path::Path) -> ChildNode {
    let node = start_node_on(
        dir,
        "127.0.0.1:0",
        "127.0.0.1:0",
        &["--accounts-max", "2", "--transfers-max", "3"],
    );
    let accounts = r#"[{"id":"1","ledger":1,"code":1},{"id":"2","ledger":1,"code":1}]"#;
    let created = post_json(&node.http_addr, "/v1/accounts", accounts);
    assert_eq!(created.status, 200, "{}", created.body);
    node
}

#[test]
fn a_node_refuses_the_batch_that_could_pass_its_transfers_max_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_tiny(&dir.path().join("node"));

    // Two transfers fit (2 of 3).
    let fits = post_json(&node.http_addr, "/v1/transfers", &transfers_json(10..12));
    assert_eq!(fits.status, 200, "{}", fits.body);

    // Two more could make 4: refused whole, naming the limit, not retryable.
    let refused = post_json(&node.http_addr, "/v1/transfers", &transfers_json(12..14));
    assert_eq!(refused.status, 507, "{}", refused.body);
    let body = refused.json().unwrap();
    assert_eq!(body["field"], "transfers_max");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("ledger capacity reached: transfers_max = 3"),
        "{body}"
    );
    assert!(body.get("retryable").is_none(), "{body}");
    assert!(
        !refused.head.to_ascii_lowercase().contains("retry-after"),
        "{}",
        refused.head
    );
    for id in [12, 13] {
        assert_eq!(
            get(&node.http_addr, &format!("/v1/transfers/{id}")).status,
            404
        );
    }
    let debits = get(&node.http_addr, "/v1/accounts/1").json().unwrap();
    assert_eq!(debits["debits_posted"], "2", "{debits}");

    // One more fits exactly.
    let last = post_json(&node.http_addr, "/v1/transfers", &transfers_json(12..13));
    assert_eq!(last.status, 200, "{}", last.body);

    // Accounts have their own limit.
    let third = post_json(
        &node.http_addr,
        "/v1/accounts",
        r#"[{"id":"3","ledger":1,"code":1}]"#,
    );
    assert_eq!(third.status, 507, "{}", third.body);
    assert_eq!(third.json().unwrap()["field"], "accounts_max");

    // Refusals count as errors of their own kind.
    let metrics = get(&node.http_addr, "/metrics").body;
    assert!(
        metrics.contains(
            r#"fincore_request_errors_total{operation="create_transfers",protocol="http",kind="capacity"} 1"#
        ),
        "{metrics}"
    );
}

#[test]
fn the_client_gets_a_capacity_error_naming_the_limit_without_retrying() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_tiny(&dir.path().join("node"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = support::connect(&node.grpc_url(), RetryPolicy::default()).unwrap();
        let transfer = |id: u128| testkit::transfer(id, 1, 2, 1);
        let four: Vec<Transfer> = (20..24).map(transfer).collect();
        let started = std::time::Instant::now();
        match client.create_transfers(&four).await {
            Err(ClientError::CapacityReached { limit, message }) => {
                assert_eq!(limit, "transfers_max");
                assert!(message.contains("transfers_max = 3"), "{message}");
            }
            other => panic!("expected a capacity error, got {other:?}"),
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        assert!(client.lookup_transfers(&[20]).await.unwrap().is_empty());
        let three: Vec<Transfer> = (20..23).map(transfer).collect();
        assert_eq!(client.create_transfers(&three).await.unwrap().len(), 3);
    });
}
