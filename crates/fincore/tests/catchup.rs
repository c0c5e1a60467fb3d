//! `fincore bench --replicas 3 --wipe-follower-at S` end to end, at a scale CI can afford: a
//! follower of a loaded 3-node group that takes snapshots is killed, removed and wiped; a new
//! member with a new id joins on an empty directory while the load goes on, catches up from a
//! snapshot streamed by the leader, and the healthy nodes keep their leader. The 10M-transfer
//! figures come from the same command run by hand (see the README).

mod support;

use support::fincore_exe;

/// Enough transfers that the load is still running when the follower is wiped and while the
/// new member catches up, on an idle machine and a loaded one (80k transfers/s seen) alike.
const TRANSFERS: &str = "1000000";
/// Small batches make many log entries, so that snapshots are taken and the log is purged
/// many times over: the new member cannot catch up from the log alone.
const BATCH: &str = "2000";
const CHECKPOINT_INTERVAL: &str = "20";
/// Late enough that the leader has purged its log past what a new member could replay even on
/// a loaded machine (at 1 s a loaded run had applied only 61 entries, fewer than the 64 kept
/// behind a snapshot, and the new member caught up from the log), early enough that the load
/// is still going.
const WIPE_AT_SECONDS: &str = "3";

#[test]
fn a_wiped_follower_replaced_by_a_new_member_catches_up_from_a_snapshot_under_load() {
    let output = std::process::Command::new(fincore_exe())
        .args([
            "bench",
            "--replicas",
            "3",
            "--transfers",
            TRANSFERS,
            "--batch",
            BATCH,
            "--checkpoint-interval",
            CHECKPOINT_INTERVAL,
            "--wipe-follower-at",
            WIPE_AT_SECONDS,
            "--json",
        ])
        .output()
        .expect("running fincore bench");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "fincore bench failed: {stderr}");
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("bench --json prints one JSON object");
    assert_eq!(report["transfers_failed"], 0, "{report}");
    assert_eq!(
        report["leader_changes"], 0,
        "the healthy nodes lost their leader: {report}"
    );
    let catch_up = &report["catch_up"];
    let (wiped, new_member) = (
        catch_up["wiped_node_id"].as_u64().unwrap(),
        catch_up["new_member_id"].as_u64().unwrap(),
    );
    assert_eq!(new_member, 4, "{catch_up}");
    assert!(
        wiped != catch_up["leader_node_id"].as_u64().unwrap() && (1..=3).contains(&wiped),
        "a follower is wiped: {catch_up}"
    );
    // The load was still going when the follower was wiped.
    let acknowledged = catch_up["transfers_acknowledged_at_wipe"].as_u64().unwrap();
    assert!(
        acknowledged > 0 && acknowledged < TRANSFERS.parse().unwrap(),
        "{catch_up}"
    );
    assert!(
        catch_up["caught_up_from_snapshot"].as_bool().unwrap()
            && catch_up["snapshots_installed"].as_u64().unwrap() >= 1,
        "{catch_up}"
    );
    // ... and the metrics saw the snapshot leave the leader and land on the new member.
    assert!(
        catch_up["leader_snapshots_sent"].as_u64().unwrap() >= 1
            && catch_up["new_member_snapshots_installed"].as_u64().unwrap() >= 1,
        "{catch_up}"
    );
    assert!(
        catch_up["catch_up_ms"].as_f64().unwrap() > 0.0,
        "{catch_up}"
    );
    assert!(
        catch_up["add_replica_ms"].as_f64().unwrap() > 0.0,
        "{catch_up}"
    );
    // Every node's peak RSS is reported: the three first members and the new one.
    let peaks = catch_up["nodes_peak_rss"].as_array().unwrap();
    let ids: Vec<u64> = peaks
        .iter()
        .map(|n| n["node_id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [1, 2, 3, 4], "{catch_up}");
    for node in peaks {
        assert!(node["peak_rss_bytes"].as_u64().unwrap() > 0, "{catch_up}");
    }
    assert_eq!(peaks[wiped as usize - 1]["role"], "wiped", "{catch_up}");
    assert_eq!(peaks[3]["role"], "new member", "{catch_up}");
}
