//! Client authentication through the real binary: a node refuses calls without a key (401 /
//! UNAUTHENTICATED), with a malformed, unknown or revoked key, and with a key whose role is too
//! low (403 / PERMISSION_DENIED), and changes nothing; a well-behaved client with a write key
//! keeps working; `--insecure-no-auth` and a missing keys file are refused at start; `dev`
//! prints a key that its example commands use.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use client::{Client, ClientError, RetryPolicy};
use ledger::{Account, CreateAccountResult, CreateTransferResult, Transfer};
use support::{Answer, ChildNode, fincore_exe};
use testkit::http::request_as;
use testkit::node::Signal;

fn fincore(args: &[&str]) -> std::process::Output {
    Command::new(fincore_exe())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `fincore keys create --role ROLE --keys FILE`: the token it printed.
fn create_key(keys: &Path, role: &str, name: &str) -> String {
    let output = fincore(&[
        "keys",
        "create",
        "--role",
        role,
        "--name",
        name,
        "--keys",
        keys.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{output:?}");
    let token = String::from_utf8(output.stdout).unwrap().trim().to_string();
    assert!(
        token.starts_with("fincore_") && token.len() == 72,
        "{token}"
    );
    token
}

fn call(key: Option<&str>, node: &ChildNode, method: &str, path: &str, body: &str) -> Answer {
    let content_type = (!body.is_empty()).then_some("application/json");
    request_as(key, &node.http_addr, method, path, content_type, body)
        .unwrap_or_else(|error| panic!("{error}"))
}

/// Asserts a refusal: its status, and that its JSON error names `reason`.
fn assert_refused(answer: &Answer, status: u16, reason: &str) {
    assert_eq!(answer.status, status, "{answer:?}");
    let body = answer.json().unwrap();
    assert_eq!(body["field"], "authorization", "{answer:?}");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains(reason), "{error:?} should say {reason:?}");
    assert!(
        !error.contains(&"ab".repeat(8)),
        "a refusal never echoes a token (every secret here holds this run): {error}"
    );
    let challenge = answer.header("www-authenticate");
    assert_eq!(challenge, (status == 401).then_some("Bearer"), "{answer:?}");
}

/// Sends SIGHUP and waits (bounded) until `key` gets `status` on a read.
fn reload_until(node: &ChildNode, key: &str, status: u16) {
    node.signal(Signal::Hup).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while call(Some(key), node, "GET", "/v1/accounts/1", "").status != status {
        assert!(
            Instant::now() < deadline,
            "the keys were not reloaded in 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A node (with the test kit's admin key) that also accepts a `read` key named `reader` and a
/// `write` key named `writer`: its temporary directory, the node, its keys file, the two keys.
fn node_with_keys() -> (
    tempfile::TempDir,
    ChildNode,
    std::path::PathBuf,
    [String; 2],
) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let node = support::start_node(&data);
    let keys = data.with_extension("keys");
    let read = create_key(&keys, "read", "reader");
    let write = create_key(&keys, "write", "writer");
    reload_until(&node, &write, 404);
    (dir, node, keys, [read, write])
}

/// Creates accounts 1 and 2 at the node at `http` with `key`.
fn post_accounts(key: Option<&str>, http: &str) -> Answer {
    let json = Some("application/json");
    request_as(key, http, "POST", "/v1/accounts", json, ACCOUNTS).unwrap()
}

const ACCOUNTS: &str = r#"[{"id":"1","ledger":1,"code":1},{"id":"2","ledger":1,"code":1}]"#;
const TRANSFER: &str = r#"[{"id":"1","debit_account_id":"1","credit_account_id":"2","amount":"5","ledger":1,"code":1}]"#;
const ADD_REPLICA: &str = r#"{"id":9,"grpc":"127.0.0.1:9"}"#;

#[test]
fn http_calls_without_a_good_key_or_with_too_low_a_role_are_refused_and_change_nothing() {
    let (_dir, node, keys, [read, write]) = node_with_keys();

    // Open routes: probes, scrapers, the contract and leader discovery.
    for path in ["/healthz", "/metrics", "/openapi.json", "/v1/status"] {
        assert_eq!(call(None, &node, "GET", path, "").status, 200, "{path}");
    }
    // No key, a malformed one, an unknown one: 401 naming why.
    let unknown = format!("fincore_{}", "ab".repeat(32));
    for (key, reason) in [
        (None, "authentication required"),
        (Some("not-a-key"), "malformed authorization"),
        (Some(unknown.as_str()), "unknown API key"),
    ] {
        for (method, path, body) in [
            ("POST", "/v1/accounts", ACCOUNTS),
            ("POST", "/v1/admin/replicas", ADD_REPLICA),
            ("GET", "/v1/accounts/1", ""),
            ("GET", "/v1/status?digest=true", ""),
        ] {
            assert_refused(&call(key, &node, method, path, body), 401, reason);
        }
    }
    // Too low a role: 403 naming the role needed.
    let needs_write = "needs the role write";
    let needs_admin = "needs the role admin";
    assert_refused(
        &call(Some(&read), &node, "POST", "/v1/accounts", ACCOUNTS),
        403,
        needs_write,
    );
    assert_refused(
        &call(Some(&read), &node, "POST", "/v1/transfers", TRANSFER),
        403,
        needs_write,
    );
    for key in [&read, &write] {
        let answer = call(Some(key), &node, "POST", "/v1/admin/replicas", ADD_REPLICA);
        assert_refused(&answer, 403, needs_admin);
        let answer = call(Some(key), &node, "DELETE", "/v1/admin/replicas/1", "");
        assert_refused(&answer, 403, needs_admin);
        let answer = call(Some(key), &node, "GET", "/v1/status?digest=true", "");
        assert_refused(&answer, 403, needs_admin);
    }
    // Every refusal is counted by its reason, and none of them changed anything.
    let metrics = call(None, &node, "GET", "/metrics", "").body;
    for reason in ["missing", "malformed", "unknown_key", "forbidden"] {
        let line = format!("fincore_auth_refusals_total{{protocol=\"http\",reason=\"{reason}\"}} ");
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }
    assert_eq!(
        call(Some(&read), &node, "GET", "/v1/accounts/1", "").status,
        404
    );
    let status = call(None, &node, "GET", "/v1/status", "").json().unwrap();
    assert_eq!(status["members"].as_array().unwrap().len(), 1, "{status}");

    // The right roles work: write creates, read reads.
    let answer = call(Some(&write), &node, "POST", "/v1/accounts", ACCOUNTS);
    assert_eq!(answer.status, 200, "{answer:?}");
    let answer = call(Some(&write), &node, "POST", "/v1/transfers", TRANSFER);
    assert_eq!(answer.json().unwrap()["results"][0]["result"], "created");
    let answer = call(Some(&read), &node, "GET", "/v1/accounts/2", "");
    assert_eq!(answer.json().unwrap()["credits_posted"], "5", "{answer:?}");
    let answer = call(
        Some(&read),
        &node,
        "POST",
        "/v1/transfers/lookup",
        r#"{"ids":["1"]}"#,
    );
    assert_eq!(answer.status, 200, "{answer:?}");
    let admin = testkit::keys::token().unwrap();
    let answer = call(Some(admin), &node, "GET", "/v1/status?digest=true", "");
    assert!(
        answer.json().unwrap()["replica"]["state_digest"].is_string(),
        "{answer:?}"
    );

    // `keys list` shows ids, roles and names, never a token; a revoked key is refused once the
    // node rereads its keys (SIGHUP), the others still work.
    let listed = fincore(&["keys", "list", "--keys", keys.to_str().unwrap()]);
    let listed = String::from_utf8(listed.stdout).unwrap();
    assert!(listed.contains("writer") && listed.contains("reader") && listed.contains("admin"));
    assert!(!listed.contains("fincore_"), "{listed}");
    let revoked = fincore(&["keys", "revoke", "writer", "--keys", keys.to_str().unwrap()]);
    assert!(revoked.status.success(), "{revoked:?}");
    reload_until(&node, &write, 401);
    let answer = call(Some(&write), &node, "POST", "/v1/transfers", TRANSFER);
    assert_refused(&answer, 401, "unknown API key");
    assert_eq!(
        call(Some(&read), &node, "GET", "/v1/accounts/2", "").status,
        200
    );
    node.stop().unwrap();
}

#[test]
fn grpc_calls_need_a_key_with_the_right_role_and_a_write_key_keeps_working() {
    let (_dir, node, _keys, [read, write]) = node_with_keys();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let url = node.grpc_url();
    let client = |key: Option<&str>| {
        let _guard = runtime.enter();
        Client::builder(&[url.as_str()])
            .retry_policy(RetryPolicy::default())
            .api_key_opt(key)
            .connect()
            .unwrap()
    };
    let accounts = [1u128, 2].map(|id| Account {
        id,
        ledger: 1,
        code: 1,
        ..Default::default()
    });
    let transfer = |id: u128| Transfer {
        id,
        debit_account_id: 1,
        credit_account_id: 2,
        amount: 3,
        ledger: 1,
        code: 1,
        ..Default::default()
    };
    runtime.block_on(async {
        let unknown = format!("fincore_{}", "cd".repeat(32));
        for key in [None, Some("Basic"), Some(unknown.as_str())] {
            match client(key).create_accounts(&accounts).await {
                Err(ClientError::Unauthenticated(message)) => {
                    assert!(!message.contains(&"cd".repeat(8)), "{message}")
                }
                other => panic!("{key:?}: expected UNAUTHENTICATED, got {other:?}"),
            }
            let lookup = client(key).lookup_accounts(&[1]).await;
            assert!(
                matches!(lookup, Err(ClientError::Unauthenticated(_))),
                "{lookup:?}"
            );
        }
        let reader = client(Some(&read));
        match reader.create_transfers(&[transfer(1)]).await {
            Err(ClientError::PermissionDenied(message)) => {
                assert!(message.contains("needs the role write"), "{message}")
            }
            other => panic!("a read key wrote: {other:?}"),
        }
        assert!(reader.lookup_accounts(&[1, 2]).await.unwrap().is_empty());

        let writer = client(Some(&write));
        let created = writer.create_accounts(&accounts).await.unwrap();
        assert!(
            created
                .iter()
                .all(|r| r.result == CreateAccountResult::Created)
        );
        for id in 1..=20 {
            let result = writer.create_transfer(transfer(id)).await.unwrap();
            assert_eq!(result.result, CreateTransferResult::Created);
        }
        let found = reader.lookup_accounts(&[2]).await.unwrap();
        assert_eq!(found[0].credits_posted, 60);
    });
    let metrics = call(None, &node, "GET", "/metrics", "").body;
    for reason in ["missing", "malformed", "unknown_key", "forbidden"] {
        let line = format!("fincore_auth_refusals_total{{protocol=\"grpc\",reason=\"{reason}\"}} ");
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }
    node.stop().unwrap();
}

/// `fincore serve ARGS…` on `data`, expected to refuse to start: its stderr.
fn refused_serve(data: &Path, args: &[&str]) -> String {
    let mut all = vec!["serve", "--data-dir", data.to_str().unwrap()];
    all.extend_from_slice(args);
    let output = fincore(&all);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        !data.join("fincore-format.json").exists(),
        "a refused start wrote data"
    );
    stderr
}

#[test]
fn serve_refuses_insecure_no_auth_off_loopback_and_a_missing_keys_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let stderr = refused_serve(
        &data,
        &[
            "--insecure-no-auth",
            "--grpc",
            "127.0.0.1:0",
            "--http",
            "0.0.0.0:0",
        ],
    );
    assert!(
        stderr
            .contains("--insecure-no-auth is refused: --http 0.0.0.0:0 is not a loopback address"),
        "{stderr}"
    );
    let stderr = refused_serve(&data, &["--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0"]);
    assert!(
        stderr.contains("no API keys file at") && stderr.contains("fincore keys create"),
        "{stderr}"
    );
    // On loopback it starts, open, and says so.
    let node = support::start_node_on(&data, "127.0.0.1:0", "127.0.0.1:0", &["--insecure-no-auth"]);
    let answer = post_accounts(None, &node.http_addr);
    assert_eq!(answer.status, 200, "{answer:?}");
    node.stop().unwrap();
    let log = std::fs::read_to_string(data.with_extension("log")).unwrap();
    assert!(
        log.lines().any(|line| line.contains("WARN")
            && line.contains("--insecure-no-auth: the client APIs are open")),
        "{log}"
    );
}

/// Runs `fincore dev` on `data` (free ports) until it printed its example commands; returns the
/// child, the key it printed and its HTTP address.
fn dev(data: &Path) -> (std::process::Child, String, String) {
    let mut child = Command::new(fincore_exe())
        .arg("dev")
        .args(testkit::group::FREE_PORTS_ARGS)
        .arg("--data-dir")
        .arg(data)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut key, mut http) = (None, None);
    for line in lines.map_while(Result::ok).take(100) {
        if let Some(addr) = line.strip_prefix("fincore: HTTP listening on http://") {
            http = Some(addr.to_string());
        }
        if let Some(rest) = line.split("Authorization: Bearer ").nth(1) {
            key = Some(rest.split('\'').next().unwrap().to_string());
            break;
        }
    }
    (
        child,
        key.expect("dev prints a curl command with a key"),
        http.unwrap(),
    )
}

#[test]
fn dev_makes_a_development_key_once_and_its_example_commands_use_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("fincore-data");
    let mut keys = Vec::new();
    for _ in 0..2 {
        let (mut child, key, http) = dev(&data);
        let answer = post_accounts(Some(&key), &http);
        assert_eq!(answer.status, 200, "{answer:?}");
        let answer = request_as(None, &http, "GET", "/v1/accounts/1", None, "").unwrap();
        assert_eq!(answer.status, 401, "{answer:?}");
        child.kill().unwrap();
        child.wait().unwrap();
        keys.push(key);
    }
    assert_eq!(keys[0], keys[1], "a second run reuses the development key");
}
