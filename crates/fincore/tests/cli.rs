//! The `fincore` binary end to end: bench writes a node's data directory, verify proves it and
//! serve reopens it, damage is reported with file and offset, a `kill -9` mid-run leaves a
//! directory that still verifies, and bad arguments get clear messages rather than panics.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn fincore(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fincore"))
        .args(args)
        .output()
        .expect("running fincore")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A small workload: 100 accounts, 20,000 transfers in batches of 1,000, JSON out.
const SMALL_WORKLOAD: [&str; 7] = [
    "--accounts",
    "100",
    "--transfers",
    "20000",
    "--batch",
    "1000",
    "--json",
];

fn small_bench(dir: &Path) -> serde_json::Value {
    let mut args = vec!["bench", "--embedded", "--data-dir", dir.to_str().unwrap()];
    args.extend(SMALL_WORKLOAD);
    let output = fincore(&args);
    assert!(output.status.success(), "{}", text(&output));
    serde_json::from_slice(&output.stdout).expect("bench --json prints one JSON object")
}

/// Starts `fincore serve` on `data` (any free ports), asks its HTTP API for `path`, stops it,
/// and returns the answer (status line, headers and body).
fn serve_and_get(data: &Path, path: &str) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fincore"))
        .args(["serve", "--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .args(["--peer", "127.0.0.1:0", "--insecure-peers"])
        .arg("--insecure-no-auth")
        .arg("--data-dir")
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let http = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|line| {
            line.strip_prefix("fincore: HTTP listening on http://")
                .map(str::to_owned)
        })
        .expect("serve prints its HTTP address");
    let mut stream = std::net::TcpStream::connect(&http).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    answer
}

#[test]
fn the_embedded_bench_leaves_a_node_directory_that_verifies_and_serve_opens() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let report = small_bench(&data);
    assert!(report["transfers_per_second"].as_f64().unwrap() > 0.0);
    for key in ["p1", "p50", "p99", "p100"] {
        assert!(
            report["batch_latency_ms"][key].as_f64().is_some(),
            "missing batch_latency_ms.{key}: {report}"
        );
    }
    assert_eq!(report["transfers_failed"], 0);
    assert!(report["peak_rss_bytes"].as_u64().unwrap() > 0);
    assert!(report["journal"]["syncs"].as_u64().unwrap() > 0, "{report}");

    // Exactly the files a node writes.
    let mut names: Vec<String> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "bootstrap.json",
            "events",
            "fincore-format.json",
            "journal",
            "raft-meta.json",
            "raft-snapshot.bin"
        ]
    );

    let output = fincore(&["verify", "--data-dir", data.to_str().unwrap()]);
    let out = text(&output);
    assert!(output.status.success(), "{out}");
    assert!(out.contains("fincore verify: OK"), "{out}");
    assert!(
        out.contains("format        fincore-replica version 2"),
        "{out}"
    );
    // 1 batch of accounts + 20 batches of transfers (besides the group's own entries).
    assert!(out.contains("; 21 batches, 20100 events"), "{out}");
    assert!(out.contains("matches the replay from genesis"), "{out}");
    assert!(out.contains("100 accounts, 20000 transfers"), "{out}");

    let answer = serve_and_get(&data, "/v1/accounts/100");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"id\":\"100\""), "{answer}");
}

#[test]
fn verify_reports_a_damaged_record_with_its_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    small_bench(&data);
    let segment = std::fs::read_dir(data.join("journal"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&segment).unwrap();
    // A byte in the middle of the log: some record's body, far from the end.
    let damaged = bytes.len() / 2;
    bytes[damaged] ^= 0x40;
    std::fs::write(&segment, &bytes).unwrap();

    let output = fincore(&["verify", "--data-dir", data.to_str().unwrap()]);
    let out = text(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    assert!(out.contains("fincore verify: FAILED"), "{out}");
    // The record that holds the damaged byte starts at or before it.
    let offset: usize = out
        .split("byte offset ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no byte offset in: {out}"));
    assert!(offset > 0 && offset <= damaged, "{out}");
    assert!(
        out.contains(segment.file_name().unwrap().to_str().unwrap()),
        "{out}"
    );
}

#[test]
fn a_bench_killed_mid_run_leaves_a_directory_that_verifies_and_reopens() {
    for delay_ms in [150u64, 400, 900] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let mut child = Command::new(env!("CARGO_BIN_EXE_fincore"))
            .args([
                "bench",
                "--embedded",
                "--transfers",
                "20000000",
                "--data-dir",
                data.to_str().unwrap(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // The marker is written before the journal: a directory with a journal has one.
        if !data.join("journal").exists() {
            continue;
        }
        let output = fincore(&["verify", "--data-dir", data.to_str().unwrap()]);
        assert!(
            output.status.success(),
            "after kill at {delay_ms} ms: {}",
            text(&output)
        );
        // Verify is read-only; a second run gives the same answer.
        let again = fincore(&["verify", "--data-dir", data.to_str().unwrap()]);
        assert_eq!(text(&again), text(&output));
        let answer = serve_and_get(&data, "/v1/status");
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "after kill at {delay_ms} ms: {answer}"
        );
    }
}

#[test]
fn verify_refuses_a_directory_without_a_format_marker_and_one_of_a_newer_format() {
    let not_a_data_dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(not_a_data_dir.path().join("journal")).unwrap();
    let path = not_a_data_dir.path().to_str().unwrap();
    let output = fincore(&["verify", "--data-dir", path]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output).contains(&format!(
            "{path} is not a fincore data directory: it has no fincore-format.json"
        )),
        "{}",
        text(&output)
    );

    std::fs::write(
        not_a_data_dir.path().join("fincore-format.json"),
        r#"{"format":"fincore-replica","version":99}"#,
    )
    .unwrap();
    let output = fincore(&["verify", "--data-dir", path]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output).contains("says format version 99, written by a newer fincore"),
        "{}",
        text(&output)
    );
}

#[test]
fn bad_arguments_get_clear_errors_not_panics() {
    let missing = fincore(&["verify", "--data-dir", "/nonexistent/fincore-data"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        text(&missing).contains("--data-dir /nonexistent/fincore-data: no such directory"),
        "{}",
        text(&missing)
    );

    let oversized = fincore(&["bench", "--embedded", "--batch", "9000"]);
    assert_eq!(oversized.status.code(), Some(2));
    assert!(text(&oversized).contains("--batch"), "{}", text(&oversized));

    let busy_dir = tempfile::tempdir().unwrap();
    std::fs::write(busy_dir.path().join("something"), b"x").unwrap();
    let output = fincore(&[
        "bench",
        "--embedded",
        "--data-dir",
        busy_dir.path().to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output).contains("is not empty"), "{}", text(&output));

    for output in [missing, oversized, output] {
        assert!(!text(&output).contains("panicked"), "{}", text(&output));
    }
}

#[test]
fn a_replicated_bench_without_faults_matches_a_single_node_and_keeps_its_leader() {
    let mut args = vec!["bench", "--replicas", "3", "--vs-single", "1"];
    args.extend(SMALL_WORKLOAD);
    let output = fincore(&args);
    assert!(output.status.success(), "{}", text(&output));
    let comparison: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let single = &comparison["single"][0];
    let replicated = &comparison["replicated"][0];
    assert_eq!(
        (single["replicas"].as_u64(), replicated["replicas"].as_u64()),
        (Some(1), Some(3))
    );
    assert!(single["replicas_caught_up_ms"].is_null(), "{comparison}");
    assert!(replicated["replicas_caught_up_ms"].as_f64().unwrap() >= 0.0);
    for report in [single, replicated] {
        assert_eq!(report["transfers_failed"], 0, "{comparison}");
        // Nothing was injected: the first leader serves the whole run.
        assert_eq!(report["leader_changes"], 0, "{comparison}");
    }
    let ratio = comparison["ratio"].as_f64().unwrap();
    let expected = replicated["transfers_per_second"].as_f64().unwrap()
        / single["transfers_per_second"].as_f64().unwrap();
    assert!((ratio - expected).abs() < 1e-9, "{comparison}");
}

#[test]
fn a_replicated_bench_measures_the_pause_and_counts_the_election_when_the_leader_dies() {
    let output = fincore(&[
        "bench",
        "--replicas",
        "3",
        "--kill-leader-at",
        "0.3",
        "--accounts",
        "100",
        "--transfers",
        "300000",
        "--batch",
        "1000",
        "--json",
    ]);
    assert!(output.status.success(), "{}", text(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["transfers_failed"], 0, "{report}");
    let pause = report["write_pause_ms_max"].as_f64().unwrap();
    assert!(pause > 0.0 && pause < 10_000.0, "{report}");
    assert!(report["leader_changes"].as_u64().unwrap() >= 1, "{report}");
    // The two survivors caught up and agreed (the bench checks their digests).
    assert!(
        report["replicas_caught_up_ms"].as_f64().is_some(),
        "{report}"
    );
}

#[test]
fn certs_issues_node_certificates_from_one_authority_and_refuses_a_bad_group_id() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let certs_arg = certs.to_str().unwrap();
    let group = "0123456789abcdef0123456789abcdef";
    let output = fincore(&[
        "certs", "--dir", certs_arg, "--group", group, "--nodes", "1,2,3",
    ]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains(&format!("n2.{group}.peer.fincore")),
        "{}",
        text(&output)
    );
    let authority = std::fs::read(certs.join("ca.pem")).unwrap();
    // A node added later gets a certificate from the same authority.
    let output = fincore(&[
        "certs", "--dir", certs_arg, "--group", group, "--nodes", "4",
    ]);
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(std::fs::read(certs.join("ca.pem")).unwrap(), authority);
    for file in ["node-1.pem", "node-1.key", "node-3.key", "node-4.pem"] {
        assert!(certs.join(file).exists(), "{file}");
    }

    let output = fincore(&[
        "certs", "--dir", certs_arg, "--group", "Ledger_1", "--nodes", "1",
    ]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        text(&output).contains("\"Ledger_1\" is not a group id"),
        "{}",
        text(&output)
    );
}
