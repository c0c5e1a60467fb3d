//! Logs as a process writes them: a node whose stderr nobody reads (a log disk that stalls)
//! keeps answering, dropping lines and counting them in its metrics; `FINCORE_LOG_FORMAT=json`
//! gives one JSON object per line; and by default a node says only fincore's own few lines
//! (openraft's state dumps stay off unless `RUST_LOG` asks for them).

mod support;

use std::time::{Duration, Instant};

use support::{ChildNode, fincore_exe};

/// The longest the attacked node may take to answer one request while its stderr is stalled:
/// far above a normal answer (milliseconds), far below the 120 s a stalled logger would hold
/// it (the test kit's read timeout).
const ANSWER_WAIT_MAX: Duration = Duration::from_secs(10);
/// Requests sent at most (and time spent at most) before the node must have dropped a line.
const REQUESTS_MAX: usize = 20_000;
const FLOOD_SECONDS_MAX: u64 = 90;

fn single_node_args(data: &std::path::Path) -> Vec<String> {
    let mut args: Vec<String> = testkit::group::FREE_PORTS_ARGS.map(String::from).to_vec();
    args.extend(testkit::group::single_node_args(data));
    args
}

fn dropped_lines(node: &ChildNode) -> u64 {
    let metrics = testkit::http::get(&node.http_addr, "/metrics").unwrap();
    testkit::http::metric_value(&metrics.body, "fincore_log_lines_dropped_total")
        .unwrap_or_else(|| panic!("no dropped-lines counter in\n{}", metrics.body)) as u64
}

#[test]
fn a_node_whose_stderr_nobody_reads_keeps_answering_and_counts_the_lines_it_drops() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node");
    // A pipe whose reading end is held and never read: once its buffer is full every write to
    // it blocks, as on a stalled disk.
    let (stalled_reader, stalled_writer) = std::io::pipe().unwrap();
    let node = ChildNode::start_with_stderr(
        fincore_exe(),
        &data,
        &single_node_args(&data),
        &[("RUST_LOG", "trace")],
        stalled_writer.into(),
    )
    .unwrap_or_else(|error| panic!("{error}"));
    let accounts = r#"[{"id":"1","ledger":1,"code":1},{"id":"2","ledger":1,"code":1}]"#;
    let created = testkit::http::post_json(&node.http_addr, "/v1/accounts", accounts).unwrap();
    assert_eq!(created.status, 200, "{created:?}");

    let deadline = Instant::now() + Duration::from_secs(FLOOD_SECONDS_MAX);
    let mut slowest = Duration::ZERO;
    let mut sent = 0;
    let dropped = loop {
        for _ in 0..200 {
            sent += 1;
            let body = format!(
                r#"[{{"id":"{sent}","debit_account_id":"1","credit_account_id":"2","amount":"1","ledger":1,"code":1}}]"#
            );
            let asked = Instant::now();
            let answer = testkit::http::post_json(&node.http_addr, "/v1/transfers", &body).unwrap();
            slowest = slowest.max(asked.elapsed());
            assert_eq!(answer.status, 200, "{answer:?}");
            assert!(
                slowest < ANSWER_WAIT_MAX,
                "a request took {slowest:?} with stderr stalled"
            );
        }
        let dropped = dropped_lines(&node);
        if dropped > 0 {
            break dropped;
        }
        assert!(
            sent < REQUESTS_MAX && Instant::now() < deadline,
            "{sent} requests answered yet no log line dropped: is stderr written through the queue?"
        );
    };
    eprintln!("{sent} transfers answered, slowest {slowest:?}; {dropped} log lines dropped");
    let account = testkit::http::get_json(&node.http_addr, "/v1/accounts/2").unwrap();
    assert_eq!(account["credits_posted"], sent.to_string(), "{account}");
    drop(stalled_reader);
    node.stop().unwrap();
}

#[test]
fn json_format_writes_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node");
    let node = ChildNode::start_with_env(
        fincore_exe(),
        &data,
        &single_node_args(&data),
        &[("FINCORE_LOG_FORMAT", "json")],
    )
    .unwrap_or_else(|error| panic!("{error}"));
    let log_path = node.log_path.clone();
    node.stop().unwrap();
    let log = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("{error}: {line:?}")))
        .collect();
    assert!(lines.len() >= 3, "{log}");
    for line in &lines {
        assert!(
            line["timestamp"].is_string() && line["level"].is_string(),
            "{line}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|line| line["fields"]["message"] == "this replica leads its group"),
        "{log}"
    );
}

#[test]
fn by_default_a_node_logs_only_fincores_own_lines() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node");
    let node = ChildNode::start(fincore_exe(), &data, &single_node_args(&data))
        .unwrap_or_else(|error| panic!("{error}"));
    let log_path = node.log_path.clone();
    node.stop().unwrap();
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("this replica leads its group"), "{log}");
    assert!(
        !log.contains("openraft"),
        "openraft's lines by default:\n{log}"
    );
    assert!(
        log.lines().count() <= 12,
        "a start and a stop say a few lines, not {}:\n{log}",
        log.lines().count()
    );
}
