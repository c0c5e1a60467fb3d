//! `fincore dev`'s read model: the change events projected into `DIR/read.db` (SQLite) while
//! the ledger runs — one node and groups behind a gateway — resumed across runs without
//! applying anything twice, and none at all with `--read-model off`; and `dev --groups` killed
//! with -9 leaves no node (meta replicas included) running.

mod support;

use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{ConnectOptions, Row};
use support::DevRun;

/// The rows of `sql` (each a string column list), or none while the file or its tables do not
/// exist yet.
fn rows(file: &Path, sql: &str) -> Vec<Vec<String>> {
    if !file.exists() {
        return Vec::new();
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", file.display()))
            .unwrap()
            .read_only(true)
            .busy_timeout(Duration::from_secs(5));
        let Ok(mut conn): Result<SqliteConnection, _> = options.connect().await else {
            return Vec::new();
        };
        let Ok(found) = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
            .fetch_all(&mut conn)
            .await
        else {
            return Vec::new();
        };
        found
            .iter()
            .map(|row| {
                (0..row.len())
                    .map(|at| {
                        row.try_get::<String, _>(at)
                            .or_else(|_| row.try_get::<i64, _>(at).map(|n| n.to_string()))
                            .unwrap()
                    })
                    .collect()
            })
            .collect()
    })
}

/// Waits (at most 60 s) until `sql` answers `expected`, then returns; fails with what it last
/// answered.
fn eventually_rows(file: &Path, sql: &str, expected: &[&[&str]]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let expected: Vec<Vec<String>> = expected
        .iter()
        .map(|row| row.iter().map(|s| s.to_string()).collect())
        .collect();
    loop {
        let found = rows(file, sql);
        if found == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{sql}: expected {expected:?}, the read model shows {found:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn as_dev(key: &str, http: &str, path: &str, body: &str) -> support::Answer {
    testkit::http::request_as(
        Some(key),
        http,
        "POST",
        path,
        Some("application/json"),
        body,
    )
    .unwrap()
}

/// Transfer `id` of `amount` from account 1 to account 2.
fn transfer(key: &str, http: &str, id: u128, amount: u128) {
    let body = format!(
        r#"[{{"id":"{id}","debit_account_id":"1","credit_account_id":"2","amount":"{amount}","ledger":1,"code":1}}]"#
    );
    let answer = as_dev(key, http, "/v1/transfers", &body);
    assert_eq!(answer.status, 200, "{answer:?}");
}

fn dev_key(data: &Path) -> String {
    std::fs::read_to_string(data.join("dev-api-key"))
        .unwrap()
        .trim()
        .to_string()
}

fn start_single(data: &Path, extra: &[&str]) -> (DevRun, String) {
    let mut args = vec!["--data-dir", data.to_str().unwrap()];
    args.extend(testkit::group::FREE_PORTS_ARGS);
    args.extend(extra);
    let mut dev = DevRun::start(&args);
    let http = dev
        .line_with("fincore: HTTP listening on http://")
        .trim_start_matches("fincore: HTTP listening on http://")
        .to_string();
    (dev, http)
}

#[test]
fn a_single_node_dev_projects_into_read_db_and_resumes_there_on_the_next_run() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("fincore-data");
    let file = data.join("read.db");
    let (mut dev, http) = start_single(&data, &[]);
    let line = dev.line_with("read model:");
    assert!(
        line.contains(&format!("SQLite {}", file.display())),
        "{line}"
    );
    let key = dev_key(&data);
    let answer = as_dev(
        &key,
        &http,
        "/v1/accounts",
        r#"[{"id":"1","ledger":1,"code":1},{"id":"2","ledger":1,"code":1}]"#,
    );
    assert_eq!(answer.status, 200, "{answer:?}");
    transfer(&key, &http, 10, 250);
    eventually_rows(
        &file,
        "SELECT id, amount, state FROM transfers",
        &[&["10", "250", "created"]],
    );
    eventually_rows(
        &file,
        "SELECT id, debits_posted, credits_posted FROM accounts ORDER BY id",
        &[&["1", "250", "0"], &["2", "0", "250"]],
    );
    dev.stop();

    // The next run resumes from the stored offset: the new transfer once, the old one not again.
    let (mut dev, http) = start_single(&data, &[]);
    dev.line_with("read model:");
    transfer(&key, &http, 11, 50);
    eventually_rows(
        &file,
        "SELECT id, debits_posted, credits_posted FROM accounts ORDER BY id",
        &[&["1", "300", "0"], &["2", "0", "300"]],
    );
    eventually_rows(
        &file,
        "SELECT id, amount FROM transfers ORDER BY id",
        &[&["10", "250"], &["11", "50"]],
    );
    dev.stop();
}

#[test]
fn dev_with_the_read_model_off_writes_no_read_model() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("fincore-data");
    let (mut dev, http) = start_single(&data, &["--read-model", "off"]);
    let line = dev.line_with("read model:");
    assert!(line.contains("off"), "{line}");
    let key = dev_key(&data);
    let answer = as_dev(
        &key,
        &http,
        "/v1/accounts",
        r#"[{"id":"1","ledger":1,"code":1}]"#,
    );
    assert_eq!(answer.status, 200, "{answer:?}");
    dev.stop();
    assert!(
        !data.join("read.db").exists(),
        "--read-model off made a read model"
    );
}

#[test]
fn dev_with_groups_projects_every_group_into_one_read_db() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("fincore-data");
    let file = data.join("read.db");
    let (args, addrs) = support::dev_groups_args(2, &data);
    let mut dev = DevRun::start(&args);
    dev.line_with("read model:");
    dev.line_with("Ctrl-C stops the gateway");
    let map =
        cluster::ClusterMap::from_json(&std::fs::read(data.join("cluster-map.json")).unwrap())
            .unwrap();
    let key = dev_key(&data);
    let ids: Vec<u128> = (1..=20).collect();
    assert!(
        map.groups()
            .keys()
            .all(|&g| ids.iter().any(|&id| map.group_of(id) == g)),
        "the accounts span both groups"
    );
    let accounts: Vec<String> = ids
        .iter()
        .map(|id| format!(r#"{{"id":"{id}","ledger":1,"code":1}}"#))
        .collect();
    // The groups may still be electing: the gateway retries for the caller.
    let answer = as_dev(
        &key,
        &addrs[1],
        "/v1/accounts",
        &format!("[{}]", accounts.join(",")),
    );
    assert_eq!(answer.status, 200, "{answer:?}");
    eventually_rows(&file, "SELECT COUNT(*) FROM accounts", &[&["20"]]);
    let mut groups: Vec<String> = map.groups().keys().map(|g| g.to_string()).collect();
    groups.sort();
    let offsets: Vec<Vec<String>> = rows(
        &file,
        "SELECT group_id FROM projection_offsets ORDER BY group_id",
    );
    assert_eq!(
        offsets,
        groups.iter().map(|g| vec![g.clone()]).collect::<Vec<_>>(),
        "one offset per group, named by the group's id"
    );
    dev.stop();
}

/// A process's state letter and parent pid from `/proc/PID/stat` (`None`: it is gone).
fn state_and_parent(pid: u32) -> Option<(String, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid …": the command name may hold spaces and parentheses.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?.to_string();
    let parent = fields.next()?.parse().ok()?;
    Some((state, parent))
}

/// Whether `pid` runs (exists and is not a zombie).
fn alive(pid: u32) -> bool {
    state_and_parent(pid).is_some_and(|(state, _)| state != "Z")
}

/// The live processes whose parent is `pid` and whose command line holds `word` (Linux).
fn children_of(pid: u32, word: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&child| {
            let cmdline = std::fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
            alive(child)
                && state_and_parent(child).is_some_and(|(_, parent)| parent == pid)
                && String::from_utf8_lossy(&cmdline).contains(word)
        })
        .collect()
}

#[test]
fn dev_with_groups_killed_with_9_leaves_no_node_running() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("fincore-data");
    let (args, _) = support::dev_groups_args(2, &data);
    let mut dev = DevRun::start(&args);
    dev.line_with("Ctrl-C stops the gateway");
    let nodes = children_of(dev.pid(), "serve");
    let meta = children_of(dev.pid(), "--meta");
    assert_eq!(
        (nodes.len(), meta.len()),
        (3, 1),
        "one node per group and one meta replica: {nodes:?}"
    );
    dev.kill9();
    let deadline = Instant::now() + Duration::from_secs(30);
    while nodes.iter().any(|&node| alive(node)) {
        assert!(
            Instant::now() < deadline,
            "nodes {:?} still run 30 s after fincore dev was killed",
            nodes.iter().filter(|&&n| alive(n)).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
