//! Helpers for tests that drive the real `fincore` binary, on top of `testkit`: start a node on
//! free ports, talk HTTP/1.1 to it, and check acknowledged transfers after a crash or failover.
//! Failures panic with testkit's message (these are tests).

#![allow(dead_code)]

pub mod gateway;
pub mod registry;

use std::io::BufRead;
use std::path::Path;

pub use testkit::http::Answer;
pub use testkit::node::ChildNode;

/// A name no other test run uses at the same time (`test` without underscores, the process
/// id, the clock's nanoseconds): for NATS subjects and streams shared by all runs.
pub fn unique_name(test: &str) -> String {
    format!(
        "{}{}x{}",
        test.replace('_', ""),
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
            % 1_000_000_000
    )
}

/// The binary under test.
pub fn fincore_exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_fincore"))
}

/// Starts a node on `data_dir` listening on `grpc` and `http` ("127.0.0.1:0" for any free
/// port), with `extra` arguments; on its first start it creates a new group of one.
pub fn start_node_on(data_dir: &Path, grpc: &str, http: &str, extra: &[&str]) -> ChildNode {
    let mut args: Vec<String> = ["--grpc", grpc, "--http", http]
        .into_iter()
        .chain(extra.iter().copied())
        .map(String::from)
        .collect();
    args.extend(testkit::group::single_node_args(data_dir));
    ChildNode::start(fincore_exe(), data_dir, &args).unwrap_or_else(|error| panic!("{error}"))
}

/// Starts a node on `data_dir` on free ports.
pub fn start_node(data_dir: &Path) -> ChildNode {
    start_node_on(data_dir, "127.0.0.1:0", "127.0.0.1:0", &[])
}

/// `fincore keys create --role ROLE --keys FILE`: the token it printed.
pub fn create_key(keys: &Path, role: &str) -> String {
    create_named_key(keys, role, role)
}

/// `fincore keys create --role ROLE --name NAME --keys FILE`: the token it printed.
pub fn create_named_key(keys: &Path, name: &str, role: &str) -> String {
    let output = std::process::Command::new(fincore_exe())
        .args(["keys", "create", "--role", role, "--name", name, "--keys"])
        .arg(keys)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

/// Accounts `1..=count` on ledger 1, code 1.
pub fn ledger_accounts(count: u128) -> Vec<ledger::Account> {
    (1..=count)
        .map(|id| ledger::Account {
            id,
            ledger: 1,
            code: 1,
            ..ledger::Account::default()
        })
        .collect()
}

/// A client of the nodes at `addrs` (`http://HOST:PORT` each) with the admin key of the nodes
/// this test started.
pub fn connect_any(
    addrs: &[&str],
    policy: client::RetryPolicy,
) -> Result<client::Client, client::ClientError> {
    client::Client::builder(addrs)
        .retry_policy(policy)
        .api_key_opt(testkit::keys::token())
        .connect()
}

/// A client of the node at `addr` (`http://HOST:PORT`) with the admin key.
pub fn connect(
    addr: &str,
    policy: client::RetryPolicy,
) -> Result<client::Client, client::ClientError> {
    connect_any(&[addr], policy)
}

/// A raw gRPC ledger client (no retries, no batching) that sends the test nodes' admin key.
pub type RawLedger = api::proto::ledger_client::LedgerClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, AddKey>,
>;
pub type AddKey = fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>;

pub fn raw_ledger(channel: tonic::transport::Channel) -> RawLedger {
    fn add_key(mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = testkit::keys::token() {
            let value = format!("Bearer {token}").parse().expect("a token is ASCII");
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
    api::proto::ledger_client::LedgerClient::with_interceptor(channel, add_key as AddKey)
}

/// A policy that gives up quickly (after `attempts_max` attempts or 5 s): for calls that must
/// fail.
pub fn impatient(attempts_max: u32) -> client::RetryPolicy {
    client::RetryPolicy {
        attempts_max,
        elapsed_max: std::time::Duration::from_secs(5),
        attempt_timeout: std::time::Duration::from_secs(3),
        ..client::RetryPolicy::default()
    }
}

/// One JSON request over a fresh connection through `transport` (HTTPS, say), with `key`.
pub fn request_over(
    transport: &testkit::http::Transport,
    key: Option<&str>,
    addr: &str,
    method: &str,
    path: &str,
    body: &str,
) -> Result<Answer, testkit::KitError> {
    let request = testkit::http::Request {
        method,
        path,
        content_type: Some("application/json"),
        body,
        headers: &[],
    };
    testkit::http::request_over(transport, key, addr, &request)
}

/// Runs `fincore ARGS…` to completion; answers whether it succeeded and its stdout and stderr.
pub fn fincore(args: &[&str]) -> (bool, String) {
    let mut command = std::process::Command::new(fincore_exe());
    command.args(args);
    // `admin` calls need the admin key of the nodes this test started.
    if let Some(token) = testkit::keys::token() {
        command.env("FINCORE_API_KEY", token);
    }
    let output = command.output().expect("running fincore");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// `fincore admin ARGS…`, which must succeed; its output.
pub fn admin(args: &[&str]) -> String {
    let mut all = vec!["admin"];
    all.extend_from_slice(args);
    let (ok, text) = fincore(&all);
    assert!(ok, "fincore admin {args:?}: {text}");
    text
}

/// One HTTP/1.1 request over a fresh connection.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &str,
) -> Answer {
    testkit::http::request(addr, method, path, content_type, body)
        .unwrap_or_else(|error| panic!("{error}"))
}

pub fn post_json(addr: &str, path: &str, body: &str) -> Answer {
    http(addr, "POST", path, Some("application/json"), body)
}

pub fn get(addr: &str, path: &str) -> Answer {
    http(addr, "GET", path, None, "")
}
/// After a crash or a failover: every acknowledged transfer (with the timestamp it was
/// acknowledged with) is present and unchanged, debits equal credits, and the accounts
/// `1..=accounts` hold exactly the money of the transfers that exist among ids
/// `1..=highest_id` — nothing lost, nothing applied twice.
pub async fn check_acknowledged(
    client: &client::Client,
    acked: &[(ledger::Transfer, u64)],
    highest_id: u128,
    accounts: u128,
) {
    for chunk in acked.chunks(8000) {
        let ids: Vec<u128> = chunk.iter().map(|(t, _)| t.id).collect();
        let found = client.lookup_transfers(&ids).await.unwrap();
        assert_eq!(
            found.len(),
            chunk.len(),
            "acknowledged transfers are missing"
        );
        for ((sent, timestamp), stored) in chunk.iter().zip(&found) {
            assert_eq!(
                stored,
                &ledger::Transfer {
                    timestamp: *timestamp,
                    ..*sent
                },
                "an acknowledged transfer changed"
            );
        }
    }
    let ids: Vec<u128> = (1..=highest_id).collect();
    let mut moved = 0u128;
    for chunk in ids.chunks(8000) {
        moved += client
            .lookup_transfers(chunk)
            .await
            .unwrap()
            .iter()
            .map(|t| t.amount)
            .sum::<u128>();
    }
    let found = client
        .lookup_accounts(&(1..=accounts).collect::<Vec<_>>())
        .await
        .unwrap();
    let debits: u128 = found.iter().map(|a| a.debits_posted).sum();
    let credits: u128 = found.iter().map(|a| a.credits_posted).sum();
    assert_eq!(debits, credits, "debits and credits diverged");
    assert_eq!(
        credits, moved,
        "balances differ from the transfers that exist: something was lost or applied twice"
    );
}

/// `fincore dev --groups N` on free loopback ports with its data in `data`: the arguments, and
/// the gRPC, HTTP and peer addresses they give (ports below 60000, so that the groups' ports,
/// 100 · g above them, exist).
pub fn dev_groups_args(groups: u64, data: &Path) -> (Vec<String>, Vec<String>) {
    let addrs = testkit::free_addrs(3).expect("free loopback ports");
    // The test kit's ports lie below the ephemeral range, so this holds without retrying.
    assert!(
        addrs
            .iter()
            .all(|a| a.rsplit(':').next().unwrap().parse::<u16>().unwrap() < 60_000),
        "free ports below 60000: {addrs:?}"
    );
    let args = [
        "--groups",
        &groups.to_string(),
        "--data-dir",
        data.to_str().unwrap(),
        "--grpc",
        &addrs[0],
        "--http",
        &addrs[1],
        "--peer",
        &addrs[2],
    ]
    .map(String::from)
    .to_vec();
    (args, addrs)
}

/// A `fincore dev` run: the child, its stdout lines, and how to stop it.
pub struct DevRun {
    child: std::process::Child,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

impl DevRun {
    pub fn start<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> DevRun {
        let mut child = std::process::Command::new(fincore_exe())
            .arg("dev")
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        DevRun { child, lines }
    }

    /// The first stdout line containing `text` (bounded by the stream's end).
    pub fn line_with(&mut self, text: &str) -> String {
        self.lines
            .by_ref()
            .map_while(Result::ok)
            .find(|line| line.contains(text))
            .unwrap_or_else(|| panic!("fincore dev never printed {text:?}"))
    }

    pub fn stop(mut self) {
        std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "fincore dev did not stop"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills `fincore dev` with SIGKILL (it can stop nothing itself) and reaps it.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for DevRun {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// promtool, from Debian's `prometheus` package (which `scripts/services` installs).
pub fn promtool() -> std::path::PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("promtool"))
            .find(|path| path.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "promtool is not installed: scripts/services installs it (Debian's prometheus package)"
        )
    })
}

/// Runs promtool with `args` (and `stdin`), and fails the test with its output unless it
/// succeeds.
pub fn run_promtool(args: &[&str], stdin: Option<&str>) {
    let mut child = std::process::Command::new(promtool())
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool starts");
    let mut input = child.stdin.take().expect("piped");
    std::io::Write::write_all(&mut input, stdin.unwrap_or("").as_bytes())
        .expect("promtool reads its input");
    drop(input);
    let output = child.wait_with_output().expect("promtool ends");
    assert!(
        output.status.success(),
        "promtool {args:?} failed ({}):\n{}{}\n--- input ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        stdin.unwrap_or("")
    );
}
