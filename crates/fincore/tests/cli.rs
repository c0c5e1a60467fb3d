//! The `fincore` binary end to end: bench writes a real data directory, verify proves it,
//! damage is reported with file and offset, a `kill -9` mid-run leaves a directory that still
//! verifies, and bad arguments get clear messages rather than panics.

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

#[test]
fn bench_json_reports_throughput_and_latency_and_its_data_dir_verifies() {
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

    let output = fincore(&["verify", "--data-dir", data.to_str().unwrap()]);
    let out = text(&output);
    assert!(output.status.success(), "{out}");
    assert!(out.contains("fincore verify: OK"), "{out}");
    // 1 batch of accounts + 20 batches of transfers.
    assert!(out.contains("records       21 "), "{out}");
    assert!(out.contains("events        20100 "), "{out}");
    assert!(out.contains("matches the replay"), "{out}");
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
    // A byte inside the second record's body (the first is the accounts batch).
    let first_record_len = 104 + 16 + 100 * 128;
    bytes[first_record_len + 104 + 500] ^= 0x40;
    std::fs::write(&segment, &bytes).unwrap();

    let output = fincore(&["verify", "--data-dir", data.to_str().unwrap()]);
    let out = text(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    assert!(out.contains("fincore verify: FAILED"), "{out}");
    assert!(
        out.contains(&format!("byte offset {first_record_len}")),
        "{out}"
    );
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
    }
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

    let not_a_data_dir = tempfile::tempdir().unwrap();
    let output = fincore(&[
        "verify",
        "--data-dir",
        not_a_data_dir.path().to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output).contains("no journal directory"),
        "{}",
        text(&output)
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
