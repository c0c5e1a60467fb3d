//! `fincore project` through the real binary, into a real SQLite file and a real PostgreSQL
//! database (127.0.0.1:5432, one new database per test, dropped at its end): every kind of
//! transfer (plain, pending, posted, voided, expired) shows in the read model with its final
//! state and `--verify` agrees, then names a row changed on purpose; the projector killed with
//! SIGKILL at random moments under load resumes from its offset and ends equal to the ledger,
//! with every history row once; an offset moved back is repaired by replaying, an offset moved
//! into the middle of a batch is refused, rows deleted or an offset moved forward are found by
//! `--verify` and repaired by `--rebuild`.
//!
//! From NATS JetStream (`--nats`, with `fincore cdc` publishing; 127.0.0.1:4222, a subject
//! prefix and stream of its own per test, deleted at its end): the read model ends equal to the
//! ledger; messages deleted from the stream are back-filled from the replica and logged with
//! their seqs; forged messages (a body that is not an event, one that is not JSON) are not
//! applied, are back-filled, and the projector goes on; the publisher and the projector killed
//! with SIGKILL at random moments under load end with the read model equal to the ledger.

#[path = "support/nats_test.rs"]
mod nats_test;
mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use client::RetryPolicy;
use ledger::{
    Account, AccountFlags, CreateTransferResult as TR, EventBody, Transfer, TransferFlags,
};
use nats_test::NATS_URL;
use sqlx::{Connection, PgConnection, SqliteConnection};
use support::{ChildNode, fincore_exe};

const ACCOUNTS: u128 = 6;

/// A PostgreSQL database of its own, dropped when the test ends, and a runtime to reach it.
struct PgDatabase {
    database: testkit::postgres::PgDatabase,
    runtime: tokio::runtime::Runtime,
}

impl PgDatabase {
    fn new(label: &str) -> PgDatabase {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let database = testkit::postgres::PgDatabase::unique(&format!("fincore_project_{label}"));
        PgDatabase { database, runtime }
    }

    fn name(&self) -> &str {
        self.database.name()
    }

    fn url(&self) -> String {
        self.database.url().to_string()
    }

    fn execute(&self, sql: &str) {
        self.runtime.block_on(async {
            let mut conn = PgConnection::connect(&self.url()).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
                .execute(&mut conn)
                .await
                .unwrap();
        });
    }

    fn states(&self) -> Vec<(String, String)> {
        self.runtime.block_on(async {
            let mut conn = PgConnection::connect(&self.url()).await.unwrap();
            sqlx::query_as("SELECT id::text, state FROM transfers ORDER BY id")
                .fetch_all(&mut conn)
                .await
                .unwrap()
        })
    }
}

fn sqlite<T>(path: &Path, work: impl AsyncFnOnce(&mut SqliteConnection) -> T) -> T {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let url = format!("sqlite://{}", path.display());
        let mut conn = SqliteConnection::connect(&url).await.unwrap();
        work(&mut conn).await
    })
}

fn sqlite_execute(path: &Path, sql: &str) {
    let sql = sql.to_string();
    sqlite(path, async |conn| {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(conn)
            .await
            .unwrap();
    });
}

fn sqlite_states(path: &Path) -> Vec<(String, String)> {
    sqlite(path, async |conn| {
        sqlx::query_as("SELECT id, state FROM transfers ORDER BY CAST(id AS INTEGER)")
            .fetch_all(conn)
            .await
            .unwrap()
    })
}

/// A running `fincore project` (or `fincore cdc`), killed (SIGKILL) when dropped.
struct Projector(Child);

impl Drop for Projector {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The arguments naming the node's group and the database.
fn target_args(node: &ChildNode, database: &[&str]) -> Vec<String> {
    let mut args = vec!["--group".to_string(), format!("g1={}", node.grpc_url())];
    args.extend(database.iter().map(|s| s.to_string()));
    args
}

fn start_projector(node: &ChildNode, key: &str, database: &[&str], extra: &[&str]) -> Projector {
    spawn_projector(node, key, database, extra, Stdio::inherit())
}

fn spawn_projector(
    node: &ChildNode,
    key: &str,
    database: &[&str],
    extra: &[&str],
    stderr: Stdio,
) -> Projector {
    let child = Command::new(fincore_exe())
        .arg("project")
        .args(target_args(node, database))
        .args(extra)
        .env("FINCORE_API_KEY", key)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    Projector(child)
}

/// `fincore project --verify`: whether it passed, and what it said.
fn verify(node: &ChildNode, key: &str, database: &[&str], wait_seconds: u32) -> (bool, String) {
    let output = Command::new(fincore_exe())
        .arg("project")
        .args(target_args(node, database))
        .args([
            "--verify",
            "--verify-wait-seconds",
            &wait_seconds.to_string(),
        ])
        .env("FINCORE_API_KEY", key)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// A node with a `read` key (what the projector uses).
fn node_with_read_key(dir: &Path) -> (ChildNode, String) {
    let data = dir.join("data");
    let node = support::start_node(&data);
    let keys = data.with_extension("keys");
    let output = Command::new(fincore_exe())
        .args([
            "keys",
            "create",
            "--role",
            "read",
            "--name",
            "projector",
            "--keys",
        ])
        .arg(&keys)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let key = String::from_utf8(output.stdout).unwrap().trim().to_string();
    node.signal(testkit::node::Signal::Hup).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer =
            testkit::http::request_as(Some(&key), &node.http_addr, "GET", "/v1/events", None, "")
                .unwrap();
        if answer.status == 200 {
            return (node, key);
        }
        assert!(Instant::now() < deadline, "the read key was not loaded");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn accounts() -> Vec<Account> {
    (1..=ACCOUNTS)
        .map(|id| Account {
            id,
            ledger: 1,
            code: 1,
            user_data_128: u128::MAX - id,
            flags: if id == 1 {
                AccountFlags::HISTORY
            } else {
                AccountFlags::empty()
            },
            ..Account::default()
        })
        .collect()
}

fn transfer(id: u128, flags: TransferFlags, timeout: u32) -> Transfer {
    Transfer {
        timeout,
        flags,
        ..testkit::transfer(id, id % ACCOUNTS + 1, (id + 1) % ACCOUNTS + 1, id % 7 + 1)
    }
}

fn completing(id: u128, pending_id: u128, flags: TransferFlags) -> Transfer {
    Transfer {
        id,
        pending_id,
        amount: if flags == TransferFlags::POST_PENDING_TRANSFER {
            u128::MAX
        } else {
            0
        },
        flags,
        ..Transfer::default()
    }
}

async fn create(client: &client::Client, batch: &[Transfer]) {
    for result in client.create_transfers(batch).await.unwrap() {
        assert!(
            matches!(result.result, TR::Created | TR::Exists),
            "{}",
            result.result
        );
    }
}

fn client(node: &ChildNode) -> client::Client {
    support::connect(&node.grpc_url(), RetryPolicy::default()).unwrap()
}

/// Accounts, then a plain transfer (100), pending ones posted (101 by 102), voided (103 by
/// 104), expiring (105, 1 s) and left pending (106), and a late transfer (107) after the
/// expiry.
fn every_kind(node: &ChildNode) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = client(node);
        client.create_accounts(&accounts()).await.unwrap();
        create(
            &client,
            &[
                transfer(100, TransferFlags::empty(), 0),
                transfer(101, TransferFlags::PENDING, 0),
                transfer(103, TransferFlags::PENDING, 0),
                transfer(105, TransferFlags::PENDING, 1),
                transfer(106, TransferFlags::PENDING, 0),
            ],
        )
        .await;
        create(
            &client,
            &[
                completing(102, 101, TransferFlags::POST_PENDING_TRANSFER),
                completing(104, 103, TransferFlags::VOID_PENDING_TRANSFER),
            ],
        )
        .await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        create(&client, &[transfer(107, TransferFlags::empty(), 0)]).await;
    });
}

fn expected_states() -> Vec<(String, String)> {
    [
        (100, "created"),
        (101, "posted"),
        (102, "created"),
        (103, "voided"),
        (104, "created"),
        (105, "expired"),
        (106, "pending"),
        (107, "created"),
    ]
    .map(|(id, state)| (id.to_string(), state.to_string()))
    .to_vec()
}

/// Waits (bounded) for `check` to hold.
fn eventually(what: &str, check: impl FnMut() -> bool) {
    eventually_within(what, Duration::from_secs(30), check);
}

fn eventually_within(what: &str, bound: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + bound;
    while !check() {
        assert!(Instant::now() < deadline, "not within {bound:?}: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn every_kind_of_transfer_shows_with_its_final_state_in_sqlite_and_postgres_and_verify_names_a_changed_row()
 {
    let dir = tempfile::tempdir().unwrap();
    let (node, key) = node_with_read_key(dir.path());
    every_kind(&node);

    let file = dir.path().join("read.db");
    let file_arg = file.to_str().unwrap();
    let sqlite_args = ["--sqlite", file_arg];
    let metrics_addr = testkit::free_addrs(1).unwrap().remove(0);
    let projector = start_projector(&node, &key, &sqlite_args, &["--metrics", &metrics_addr]);
    let (ok, text) = verify(&node, &key, &sqlite_args, 30);
    assert!(ok, "{text}");
    assert!(text.contains("6 accounts, 8 transfers"), "{text}");
    // Its metrics: projected up to the node's last event, no lag, and promtool reads them.
    let page = testkit::http::request_as(
        Some(&key),
        &node.http_addr,
        "GET",
        "/v1/events?after=0&limit=1",
        None,
        "",
    )
    .unwrap()
    .json()
    .unwrap();
    let last_seq = page["last_seq"].as_u64().unwrap() as f64;
    let mut text = String::new();
    eventually("the projector's metrics to catch up", || {
        text = support::get(&metrics_addr, "/metrics").body;
        let value =
            |name: &str| testkit::http::metric_value(&text, &format!("{name}{{group=\"g1\"}}"));
        value("fincore_projection_seq") == Some(last_seq)
            && value("fincore_projection_source_seq") == Some(last_seq)
            && value("fincore_projection_lag_events") == Some(0.0)
            && value("fincore_projection_events_total") == Some(last_seq)
    });
    support::run_promtool(&["check", "metrics"], Some(&text));
    // Restarted with nothing new to project, it resumes from its offset: caught up, no lag.
    drop(projector);
    let metrics_addr = testkit::free_addrs(1).unwrap().remove(0);
    let projector = start_projector(&node, &key, &sqlite_args, &["--metrics", &metrics_addr]);
    eventually("a restarted projector to show where it resumed", || {
        text = testkit::http::get(&metrics_addr, "/metrics")
            .map(|answer| answer.body)
            .unwrap_or_default();
        let value =
            |name: &str| testkit::http::metric_value(&text, &format!("{name}{{group=\"g1\"}}"));
        value("fincore_projection_seq") == Some(last_seq)
            && value("fincore_projection_source_seq") == Some(last_seq)
            && value("fincore_projection_lag_events") == Some(0.0)
            && value("fincore_projection_events_total") == Some(0.0)
    });
    assert_eq!(sqlite_states(&file), expected_states());
    let (history, user_data): (i64, String) = sqlite(&file, async |conn| {
        let history =
            sqlx::query_scalar("SELECT count(*) FROM account_balances WHERE account_id = '1'")
                .fetch_one(&mut *conn)
                .await
                .unwrap();
        let user_data = sqlx::query_scalar("SELECT user_data_128 FROM accounts WHERE id = '2'")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        (history, user_data)
    });
    assert!(history > 0, "account 1 has the history flag");
    assert_eq!(
        user_data,
        (u128::MAX - 2).to_string(),
        "128-bit values are exact"
    );
    drop(projector);
    sqlite_execute(
        &file,
        "UPDATE accounts SET credits_posted = '999' WHERE id = '3'",
    );
    let (ok, text) = verify(&node, &key, &sqlite_args, 5);
    assert!(!ok, "{text}");
    assert!(
        text.contains("accounts: id 3: credits_posted is 999 in the read model"),
        "{text}"
    );

    let pg = PgDatabase::new("kinds");
    let url = pg.url();
    let pg_args = ["--postgres", url.as_str()];
    let projector = start_projector(&node, &key, &pg_args, &[]);
    let (ok, text) = verify(&node, &key, &pg_args, 30);
    assert!(ok, "{text}");
    assert_eq!(pg.states(), expected_states());
    drop(projector);
    pg.execute("UPDATE transfers SET amount = amount + 1 WHERE id = 102");
    let (ok, text) = verify(&node, &key, &pg_args, 5);
    assert!(!ok, "{text}");
    assert!(text.contains("transfers: id 102: amount is"), "{text}");
    node.stop().unwrap();
}

/// Writes batches of plain, pending and posting transfers from `first` for `seconds`.
async fn load(client: client::Client, first: u128, seconds: u64) -> u128 {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut base = first;
    while Instant::now() < deadline {
        let mut batch: Vec<Transfer> = (base..base + 200)
            .map(|id| transfer(id, TransferFlags::empty(), 0))
            .collect();
        batch.push(transfer(base + 200, TransferFlags::PENDING, 0));
        if base > first {
            batch.push(completing(
                base + 201,
                base - 1000 + 200,
                TransferFlags::POST_PENDING_TRANSFER,
            ));
        }
        create(&client, &batch).await;
        base += 1000;
        // Paced (about 10,000 transfers/s): load while the projector is killed, without
        // making the catch-up outlast the test's budget.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    base
}

#[test]
fn a_projector_killed_at_random_moments_under_load_resumes_and_ends_equal_to_the_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let (node, key) = node_with_read_key(dir.path());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _entered = runtime.enter(); // clients connect lazily inside a runtime
    runtime
        .block_on(client(&node).create_accounts(&accounts()))
        .unwrap();
    let pg = PgDatabase::new("kills");
    let url = pg.url();
    let pg_args = ["--postgres", url.as_str()];
    let writer = runtime.spawn(load(client(&node), 1000, 6));
    let mut seed = u64::from(std::process::id()).wrapping_mul(2_654_435_761) % 1_000_003;
    for _ in 0..5 {
        let projector = start_projector(&node, &key, &pg_args, &[]);
        seed = seed.wrapping_mul(6_364_136_223_846_793_005) % 1_000_000_007;
        std::thread::sleep(Duration::from_millis(300 + seed % 1200));
        drop(projector); // SIGKILL, wherever it is
    }
    runtime.block_on(writer).unwrap();
    let started = Instant::now();
    let projector = start_projector(&node, &key, &pg_args, &[]);
    let last = runtime.block_on(async {
        client(&node)
            .read_events(u64::MAX, 1)
            .await
            .unwrap()
            .last_seq
    });
    eventually("the projector catches up", || {
        pg.runtime.block_on(async {
            let mut conn = PgConnection::connect(&url).await.unwrap();
            let seq: i64 = sqlx::query_scalar("SELECT last_seq FROM projection_offsets")
                .fetch_one(&mut conn)
                .await
                .unwrap();
            seq as u64 == last
        })
    });
    let caught_up = started.elapsed();
    let (ok, text) = verify(&node, &key, &pg_args, 40);
    assert!(ok, "{text}");
    eprintln!("caught up in {caught_up:?} after the last kill, then {text}");
    drop(projector);
    // Every change of the history account is one row, once: none missing, none twice.
    let expected = runtime.block_on(async {
        let client = client(&node);
        let (mut after, mut count) = (0u64, 0i64);
        loop {
            let page = client.read_events(after, 4096).await.unwrap();
            let Some(last) = page.events.last() else {
                break count;
            };
            after = last.seq;
            count += page
                .events
                .iter()
                .filter(|e| match &e.body {
                    EventBody::Transfer(c) => {
                        c.transfer.debit_account_id == 1 || c.transfer.credit_account_id == 1
                    }
                    _ => false,
                })
                .count() as i64;
        }
    });
    let rows: i64 = pg.runtime.block_on(async {
        let mut conn = PgConnection::connect(&url).await.unwrap();
        sqlx::query_scalar("SELECT count(*) FROM account_balances WHERE account_id = 1")
            .fetch_one(&mut conn)
            .await
            .unwrap()
    });
    assert!(expected > 0);
    assert_eq!(rows, expected, "history rows of account 1");
    node.stop().unwrap();
}

#[test]
fn gaps_made_by_hand_are_repaired_by_replay_or_rebuild_or_refused_naming_the_offset() {
    let dir = tempfile::tempdir().unwrap();
    let (node, key) = node_with_read_key(dir.path());
    every_kind(&node);
    let file = dir.path().join("read.db");
    let file_arg = file.to_str().unwrap();
    let args = ["--sqlite", file_arg];
    let projector = start_projector(&node, &key, &args, &[]);
    let (ok, text) = verify(&node, &key, &args, 30);
    assert!(ok, "{text}");
    drop(projector);

    // Moved back to the start: everything is applied again, idempotently.
    sqlite_execute(&file, "UPDATE projection_offsets SET last_seq = 0");
    let projector = start_projector(&node, &key, &args, &[]);
    let (ok, text) = verify(&node, &key, &args, 30);
    assert!(ok, "{text}");
    drop(projector);

    // Rows deleted: found by --verify, repaired by --rebuild.
    sqlite_execute(&file, "DELETE FROM transfers WHERE id = '104'");
    let (ok, text) = verify(&node, &key, &args, 3);
    assert!(!ok, "{text}");
    let projector = start_projector(&node, &key, &args, &["--rebuild"]);
    eventually("the rebuilt read model has transfer 104", || {
        sqlite_states(&file).iter().any(|(id, _)| id == "104")
    });
    let (ok, text) = verify(&node, &key, &args, 30);
    assert!(ok, "{text}");
    drop(projector);

    // Moved forward, past events never written: found (the rows are missing), then rebuilt.
    sqlite_execute(&file, "DELETE FROM transfers WHERE id = '107'");
    sqlite_execute(
        &file,
        "UPDATE projection_offsets SET last_seq = last_seq + 1000",
    );
    let (ok, text) = verify(&node, &key, &args, 2);
    assert!(!ok, "{text}");
    assert!(text.contains("the read model is at seq"), "{text}");
    let projector = start_projector(&node, &key, &args, &["--rebuild"]);
    eventually("the rebuilt read model has transfer 107", || {
        sqlite_states(&file).iter().any(|(id, _)| id == "107")
    });
    let (ok, text) = verify(&node, &key, &args, 30);
    assert!(ok, "{text}");
    assert_eq!(sqlite_states(&file), expected_states());
    drop(projector);

    // Moved into the middle of a batch (seq 1 is the first account, its batch ends later):
    // refused, naming the offset.
    sqlite_execute(&file, "UPDATE projection_offsets SET last_seq = 1");
    let output = Command::new(fincore_exe())
        .arg("project")
        .args(target_args(&node, &args))
        .env("FINCORE_API_KEY", &key)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(!output.status.success(), "{text}");
    assert!(text.contains("not the end of a batch"), "{text}");
    node.stop().unwrap();
}

/// A gap spanning many chunks, read once through the replica path (`contiguous`) and once
/// through the NATS path (`backfill_any`): passed on in several pages, each of whole batches
/// and bounded (the chunk, then the rest of the batch it ends in), together every event once,
/// in order.
#[test]
fn a_gap_longer_than_a_chunk_is_back_filled_in_bounded_pieces_of_whole_batches() {
    const CHUNK_EVENTS: usize = 250;
    const BATCH_TRANSFERS: u128 = 100;
    let dir = tempfile::tempdir().unwrap();
    let (node, key) = node_with_read_key(dir.path());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _entered = runtime.enter(); // clients connect lazily inside a runtime
    let spec: client::GroupSpec = format!("g1={}", node.grpc_url()).parse().unwrap();
    let replicas = projector::Replicas::connect(&spec, Some(&key))
        .unwrap()
        .with_backfill_chunk_events(CHUNK_EVENTS);
    runtime.block_on(async {
        let client = client(&node);
        client.create_accounts(&accounts()).await.unwrap();
        for batch in 0..12 {
            let first = 1000 + batch * BATCH_TRANSFERS;
            let transfers: Vec<Transfer> = (first..first + BATCH_TRANSFERS)
                .map(|id| transfer(id, TransferFlags::empty(), 0))
                .collect();
            create(&client, &transfers).await;
        }
        let last = replicas.last_seq(0).await.unwrap();
        assert!(last as usize > 4 * CHUNK_EVENTS, "{last}");
        let last_event = client.read_events(last - 1, 1).await.unwrap().events;
        assert_eq!(last_event[0].seq, last);

        let check = |pages: Vec<Vec<ledger::Event>>, path: &str| {
            assert!(pages.len() >= 4, "{path}: {} pages", pages.len());
            let seqs: Vec<u64> = pages.iter().flatten().map(|e| e.seq).collect();
            assert_eq!(seqs, (1..=last).collect::<Vec<_>>(), "{path}");
            for page in &pages[..pages.len() - 1] {
                assert_eq!(
                    page.last().unwrap().kind,
                    ledger::EventKind::Batch,
                    "{path}"
                );
                let batch_events_max = BATCH_TRANSFERS as usize + 1;
                assert!(
                    page.len() >= CHUNK_EVENTS && page.len() < CHUNK_EVENTS + batch_events_max,
                    "{path}: a page of {} events",
                    page.len()
                );
            }
        };

        // Replica path: a page holding only the last event, read from the start.
        let (pages_tx, mut pages_rx) = tokio::sync::mpsc::channel(1000);
        let mut after = 0;
        assert!(
            replicas
                .contiguous(0, last_event, &mut after, &pages_tx)
                .await
                .unwrap()
        );
        assert_eq!(after, last);
        drop(pages_tx);
        let mut pages = Vec::new();
        while let Some(page) = pages_rx.recv().await {
            pages.push(page);
        }
        check(pages, "replicas");

        // NATS path: the whole stream missing.
        let (pages_tx, mut pages_rx) = tokio::sync::mpsc::channel(1000);
        let (mut at, mut after) = (0, 0);
        let mut outbox = projector::source::Outbox::new(&pages_tx, 0, 0);
        let filled = replicas.backfill_any(&mut at, &mut after, last + 1, &mut outbox);
        assert!(filled.await.unwrap());
        assert_eq!(after, last);
        assert!(outbox.send().await);
        drop(pages_tx);
        let mut pages = Vec::new();
        while let Some(page) = pages_rx.recv().await {
            pages.push(page);
        }
        check(pages, "nats");
    });
    node.stop().unwrap();
}

/// The NATS side of a test: a subject prefix and a stream of its own (deleted when dropped),
/// and the logs of the publisher and projectors it starts.
struct Nats {
    prefix: String,
    stream_name: String,
    logs: std::path::PathBuf,
    runtime: tokio::runtime::Runtime,
    js: async_nats::jetstream::Context,
}

impl Nats {
    /// Names made from `unique` (the test's database name).
    fn new(unique: &str, dir: &Path) -> Nats {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let js = nats_test::connect(&runtime);
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        Nats {
            prefix: format!("test.{unique}"),
            stream_name: format!("test-{unique}-g1-events"),
            logs,
            runtime,
            js,
        }
    }

    fn log_file(&self, name: &str) -> Stdio {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.join(format!("{name}.log")))
            .unwrap()
            .into()
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.logs.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// `fincore cdc` publishing the node's events to this test's stream.
    fn publisher(&self, node: &ChildNode, key: &str) -> Projector {
        let child = Command::new(fincore_exe())
            .args(["cdc", "--nats", NATS_URL, "--group"])
            .arg(format!("g1={}", node.grpc_url()))
            .args(["--subject-prefix", &self.prefix])
            .env("FINCORE_API_KEY", key)
            .stdout(Stdio::null())
            .stderr(self.log_file("publisher"))
            .spawn()
            .unwrap();
        Projector(child)
    }

    /// `fincore project --nats` from this test's stream, its log in `logs/<name>.log`.
    fn projector(&self, node: &ChildNode, key: &str, database: &[&str], name: &str) -> Projector {
        let nats = ["--nats", NATS_URL, "--subject-prefix", &self.prefix];
        spawn_projector(node, key, database, &nats, self.log_file(name))
    }

    fn stream(&self) -> async_nats::jetstream::stream::Stream {
        self.runtime
            .block_on(self.js.get_stream(&self.stream_name))
            .unwrap()
    }

    /// Waits (bounded) until the stream holds event `last`.
    fn wait_stream(&self, last: u64) {
        eventually(&format!("the stream reaches seq {last}"), || {
            self.runtime
                .block_on(self.js.get_stream(&self.stream_name))
                .is_ok_and(|s| s.cached_info().state.last_sequence >= last)
        });
    }

    /// Publishes `body` onto the group's subject as the message of `seq` (its id and expected
    /// last sequence forged like the publisher's), as an attacker with access to NATS could.
    fn forge(&self, seq: u64, body: Vec<u8>) {
        let publish = async_nats::jetstream::message::PublishMessage::build()
            .payload(body.into())
            .message_id(format!("g1:{seq}"))
            .expected_last_sequence(seq - 1);
        let ack = self.runtime.block_on(async {
            self.js
                .send_publish(format!("{}.g1.events", self.prefix), publish)
                .await
                .unwrap()
                .await
                .unwrap()
        });
        assert_eq!(ack.sequence, seq);
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self
            .runtime
            .block_on(self.js.delete_stream(&self.stream_name));
    }
}

fn node_last_seq(node: &ChildNode) -> u64 {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        client(node)
            .read_events(u64::MAX, 1)
            .await
            .unwrap()
            .last_seq
    })
}

/// Waits (bounded) until the read model's offset is `last`.
fn wait_offset(pg: &PgDatabase, last: u64, bound: Duration) {
    eventually_within(&format!("the read model reaches seq {last}"), bound, || {
        let seq: Option<i64> = pg.runtime.block_on(async {
            let mut conn = PgConnection::connect(&pg.url()).await.unwrap();
            sqlx::query_scalar("SELECT last_seq FROM projection_offsets WHERE group_id = 'g1'")
                .fetch_optional(&mut conn)
                .await
                .ok()
                .flatten()
        });
        seq == Some(last as i64)
    });
}

/// A node with accounts, a read key, a database and a NATS stream of this test's own.
fn nats_setup(label: &str) -> (tempfile::TempDir, ChildNode, String, PgDatabase, Nats) {
    let dir = tempfile::tempdir().unwrap();
    let (node, key) = node_with_read_key(dir.path());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async { client(&node).create_accounts(&accounts()).await.unwrap() });
    let pg = PgDatabase::new(label);
    let nats = Nats::new(pg.name(), dir.path());
    (dir, node, key, pg, nats)
}

/// Runs `load` for `seconds` on a runtime of its own; answers the next free id.
fn load_for(node: &ChildNode, first: u128, seconds: u64) -> u128 {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _entered = runtime.enter();
    runtime.block_on(load(client(node), first, seconds))
}

#[test]
fn a_projector_reading_from_jetstream_ends_equal_to_the_ledger_and_back_fills_messages_deleted_from_the_stream()
 {
    let (_dir, node, key, pg, nats) = nats_setup("natsdeleted");
    let url = pg.url();
    let pg_args = ["--postgres", url.as_str()];
    let _publisher = nats.publisher(&node, &key);
    let projector = nats.projector(&node, &key, &pg_args, "projector-1");
    let next = load_for(&node, 1000, 2);
    let last = node_last_seq(&node);
    wait_offset(&pg, last, Duration::from_secs(30));
    let (ok, text) = verify(&node, &key, &pg_args, 30);
    assert!(ok, "{text}");
    drop(projector);

    // Written while no projector runs, published, then messages deleted from the stream: one
    // alone, two in a row, and one just before the last.
    load_for(&node, next, 1);
    let now = node_last_seq(&node);
    assert!(now > last + 20, "{last} → {now}");
    nats.wait_stream(now);
    let deleted = [last + 3, last + 9, last + 10, now - 1];
    let stream = nats.stream();
    for seq in deleted {
        assert!(nats.runtime.block_on(stream.delete_message(seq)).unwrap());
    }
    let projector = nats.projector(&node, &key, &pg_args, "projector-2");
    wait_offset(&pg, now, Duration::from_secs(30));
    let (ok, text) = verify(&node, &key, &pg_args, 30);
    assert!(ok, "{text}");
    drop(projector);
    let log = nats.log("projector-2");
    for (first, last) in [
        (deleted[0], deleted[0]),
        (deleted[1], deleted[2]),
        (deleted[3], deleted[3]),
    ] {
        assert!(
            log.contains(&format!("first_seq={first} last_seq={last}")),
            "back-filling {first}..={last} is not logged: {log}"
        );
    }
    assert!(log.contains("backfilled_total=4"), "{log}");
    node.stop().unwrap();
}

#[test]
fn forged_messages_in_the_stream_are_not_applied_but_back_filled_and_the_projector_goes_on() {
    let (_dir, node, key, pg, nats) = nats_setup("natsforged");
    let url = pg.url();
    let pg_args = ["--postgres", url.as_str()];
    let publisher = nats.publisher(&node, &key);
    let next = load_for(&node, 1000, 1);
    let published = node_last_seq(&node);
    nats.wait_stream(published);
    drop(publisher);
    let next = load_for(&node, next, 1);
    // The next two messages forged: an event without its transfer, then a body not JSON. The
    // publisher restarted takes them for its own (their ids) and goes on after them.
    let forged = published + 1;
    nats.forge(
        forged,
        format!(r#"{{"version":1,"seq":{forged},"type":"transfer_created","timestamp":"1"}}"#)
            .into_bytes(),
    );
    nats.forge(forged + 1, b"\xff not json".to_vec());
    let _publisher = nats.publisher(&node, &key);
    let now = node_last_seq(&node);
    nats.wait_stream(now);
    let mut projector = nats.projector(&node, &key, &pg_args, "projector");
    wait_offset(&pg, now, Duration::from_secs(30));
    let (ok, text) = verify(&node, &key, &pg_args, 30);
    assert!(ok, "{text}");
    let log = nats.log("projector");
    for expected in [
        format!("the message at stream sequence {forged}: transfer: missing"),
        format!("the message at stream sequence {}: body:", forged + 1),
        format!("first_seq={forged} last_seq={forged}"),
        format!("first_seq={} last_seq={}", forged + 1, forged + 1),
        "malformed_total=2".to_string(),
    ] {
        assert!(log.contains(&expected), "{expected:?} is not logged: {log}");
    }
    // Still projecting: what is written next shows too.
    load_for(&node, next, 1);
    let later = node_last_seq(&node);
    wait_offset(&pg, later, Duration::from_secs(30));
    let (ok, text) = verify(&node, &key, &pg_args, 30);
    assert!(ok, "{text}");
    assert!(
        projector.0.try_wait().unwrap().is_none(),
        "the projector stopped"
    );
    node.stop().unwrap();
}

#[test]
fn a_publisher_and_a_projector_from_jetstream_killed_at_random_moments_under_load_end_equal_to_the_ledger()
 {
    let (_dir, node, key, pg, nats) = nats_setup("natskills");
    let url = pg.url();
    let pg_args = ["--postgres", url.as_str()];
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _entered = runtime.enter(); // clients connect lazily inside a runtime
    let writer = runtime.spawn(load(client(&node), 1000, 6));
    let mut seed = u64::from(std::process::id()).wrapping_mul(2_654_435_761) % 1_000_003;
    let mut next = || {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005) % 1_000_000_007;
        seed
    };
    for round in 0..5 {
        let publisher = nats.publisher(&node, &key);
        let projector = nats.projector(&node, &key, &pg_args, &format!("projector-{round}"));
        std::thread::sleep(Duration::from_millis(300 + next() % 900));
        // SIGKILL, wherever they are, one after the other in either order.
        let (first, second) = match next() % 2 {
            0 => (publisher, projector),
            _ => (projector, publisher),
        };
        drop(first);
        std::thread::sleep(Duration::from_millis(next() % 300));
        drop(second);
    }
    runtime.block_on(writer).unwrap();
    let started = Instant::now();
    let _publisher = nats.publisher(&node, &key);
    let _projector = nats.projector(&node, &key, &pg_args, "projector-last");
    let last = node_last_seq(&node);
    wait_offset(&pg, last, Duration::from_secs(90));
    let caught_up = started.elapsed();
    let (ok, text) = verify(&node, &key, &pg_args, 40);
    assert!(ok, "{text}");
    assert!(text.contains(&format!("g1 at seq {last}")), "{text}");
    eprintln!("caught up in {caught_up:?} after the last kills, then {text}");
    node.stop().unwrap();
}

/// The users of [`LockedNats`]: `publisher`, which may publish anything, and `reader`, which
/// may only read streams and make consumers of them (as `docs/events.md` advises) and receive
/// replies; each with a password.
const NATS_USERS: &str = r#"
  users = [
    { user: "publisher", password: "publisher-secret" }
    { user: "reader", password: "reader-secret",
       permissions: {
         publish: ["$JS.API.INFO", "$JS.API.STREAM.INFO.>", "$JS.API.CONSUMER.>"],
         subscribe: ["_INBOX.>"] } }
  ]"#;

/// A NATS server of this test's own (on a free port, JetStream in its directory) that lets in
/// only who its `authorization` block says. Killed when dropped.
struct LockedNats {
    child: Child,
    url: String,
    /// The password files: `publisher.pass`, `reader.pass`.
    dir: tempfile::TempDir,
}

impl LockedNats {
    fn start(authorization: &str) -> LockedNats {
        let dir = tempfile::tempdir().unwrap();
        let addr = testkit::ports::free_addrs(1).unwrap().remove(0);
        let (host, port) = addr.rsplit_once(':').unwrap();
        let conf = format!(
            r#"
listen: "{host}:{port}"
jetstream {{ store_dir: "{store}" }}
authorization {{ {authorization} }}
"#,
            store = dir.path().join("js").display()
        );
        std::fs::write(dir.path().join("nats.conf"), conf).unwrap();
        for (name, secret) in [
            ("publisher.pass", "publisher-secret\n"),
            ("reader.pass", "reader-secret\n"),
            ("token", "the-token\n"),
        ] {
            replication::secret_file::write(&dir.path().join(name), secret.as_bytes()).unwrap();
        }
        let child = Command::new("/usr/sbin/nats-server")
            .arg("-c")
            .arg(dir.path().join("nats.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server (scripts/services installs it)");
        eventually_within(
            "the test's NATS server listens",
            Duration::from_secs(10),
            || std::net::TcpStream::connect(&addr).is_ok(),
        );
        LockedNats {
            child,
            url: format!("nats://{addr}"),
            dir,
        }
    }

    fn password_file(&self, user: &str) -> String {
        self.dir
            .path()
            .join(format!("{user}.pass"))
            .display()
            .to_string()
    }

    /// The login flags of `user`.
    fn login(&self, user: &str) -> Vec<String> {
        vec![
            "--nats".into(),
            self.url.clone(),
            "--nats-user".into(),
            user.into(),
            "--nats-password-file".into(),
            self.password_file(user),
        ]
    }
}

/// `fincore ARGS…` (with the read key `key`) run to its end: whether it succeeded and its
/// output; `None` if it still ran after `bound` (then it is killed). The output goes to a file,
/// so that a talkative process never blocks on a full pipe.
fn fincore_within(args: &[&str], key: &str, bound: Duration) -> Option<(bool, String)> {
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new(fincore_exe())
        .args(args)
        .env("FINCORE_API_KEY", key)
        .stdout(log.reopen().unwrap())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + bound;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = child.wait().unwrap();
    let text = String::from_utf8_lossy(&std::fs::read(log.path()).unwrap()).into_owned();
    Some((status.success(), text))
}

/// `fincore cdc` publishing `node`'s events under the prefix `locked`, logging in with `login`.
fn locked_publisher(node: &ChildNode, key: &str, login: &[String]) -> Projector {
    let child = Command::new(fincore_exe())
        .arg("cdc")
        .args(login)
        .args(["--group", &format!("g1={}", node.grpc_url())])
        .args(["--subject-prefix", "locked"])
        .env("FINCORE_API_KEY", key)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Projector(child)
}

impl Drop for LockedNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// With NATS permissions locking the event subjects to the publisher (`docs/events.md`,
/// "Publishing to NATS"), `fincore cdc` and `fincore project --nats` each log in with their own
/// user; the projector's user cannot forge an event (the server refuses its publish and the
/// stream is unchanged); a password file that is empty or open to every user is refused before
/// connecting, and a wrong password or no login is refused by the server, each ending the
/// process at once naming the flag; and the read model ends equal to the ledger.
#[test]
fn with_nats_users_only_the_publisher_can_publish_events_and_the_projector_reads_with_its_own() {
    let nats = LockedNats::start(NATS_USERS);
    let dir = tempfile::tempdir().unwrap();
    let (node, key) = node_with_read_key(dir.path());
    every_kind(&node);
    let last = node_last_seq(&node);
    let group = format!("g1={}", node.grpc_url());
    let prefix = ["--subject-prefix", "locked"];

    // Bad input, refused before anything connects: an empty password file, and one every
    // user of the machine may read (naming the fix).
    let empty = dir.path().join("empty.pass");
    replication::secret_file::write(&empty, b"\n").unwrap();
    let open = dir.path().join("open.pass");
    std::fs::write(&open, "publisher-secret\n").unwrap();
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    for (file, why) in [(&empty, "empty"), (&open, "chmod o-rwx")] {
        let (ok, text) = support::fincore(&[
            "cdc",
            "--nats",
            &nats.url,
            "--nats-user",
            "publisher",
            "--nats-password-file",
            file.to_str().unwrap(),
            "--group",
            &group,
        ]);
        assert!(
            !ok && text.contains("--nats-password-file") && text.contains(why),
            "{text}"
        );
    }

    // A wrong password, or no login at all, is refused by the server: the publisher and the
    // projector stop at once naming the flag, instead of trying again for ever.
    let wrong = dir.path().join("wrong.pass");
    replication::secret_file::write(&wrong, b"not-the-password\n").unwrap();
    let wrong_login = [
        "--nats",
        &nats.url,
        "--nats-user",
        "publisher",
        "--nats-password-file",
        wrong.to_str().unwrap(),
    ];
    let no_login = ["--nats", nats.url.as_str()];
    let sqlite_file = dir.path().join("refused.db");
    let project = [
        "project",
        "--sqlite",
        sqlite_file.to_str().unwrap(),
        "--group",
        &group,
    ];
    let bad_url = ["--nats", "nats://[not-a-host"];
    let cdc = ["cdc", "--group", &group];
    let refused = "refused the login";
    for (command, login, flag, why) in [
        (&cdc[..], &wrong_login[..], "--nats-password-file", refused),
        (&cdc[..], &no_login[..], "--nats-user", refused),
        (
            &project[..],
            &wrong_login[..],
            "--nats-password-file",
            refused,
        ),
        (&cdc[..], &bad_url[..], "--nats", "not a NATS server URL"),
    ] {
        let args: Vec<&str> = command.iter().chain(login).copied().collect();
        let (ok, text) = fincore_within(&args, &key, Duration::from_secs(30))
            .unwrap_or_else(|| panic!("fincore {args:?} still runs after 30 s"));
        assert!(
            !ok && text.contains(flag) && text.contains(why),
            "fincore {args:?}: {text}"
        );
    }

    let _publisher = locked_publisher(&node, &key, &nats.login("publisher"));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let as_user = |user: Option<&str>| {
        runtime.block_on(async {
            let options = match user {
                Some(user) => async_nats::ConnectOptions::with_user_and_password(
                    user.into(),
                    format!("{user}-secret"),
                ),
                None => async_nats::ConnectOptions::new(),
            };
            options
                .connect(&nats.url)
                .await
                .map(async_nats::jetstream::new)
        })
    };
    assert!(
        as_user(None).is_err(),
        "the server lets no one in without a login"
    );
    let reader = as_user(Some("reader")).unwrap();
    let stream_last = || {
        runtime.block_on(async {
            match reader.get_stream("locked-g1-events").await {
                Ok(stream) => stream.cached_info().state.last_sequence,
                Err(_) => 0,
            }
        })
    };
    eventually("the publisher fills the stream", || stream_last() >= last);

    // The reader forges the next event: the server refuses the publish, nothing is added.
    let forged = runtime.block_on(async {
        let publish = async_nats::jetstream::message::PublishMessage::build()
            .payload(bytes::Bytes::from_static(b"{}"))
            .message_id(format!("g1:{}", last + 1))
            .expected_last_sequence(last);
        match reader.send_publish("locked.g1.events", publish).await {
            Ok(ack) => match tokio::time::timeout(Duration::from_secs(10), ack).await {
                Ok(Ok(ack)) => Ok(ack.sequence),
                Ok(Err(error)) => Err(error.to_string()),
                Err(_) => Err("no acknowledgement within 10 s".to_string()),
            },
            Err(error) => Err(error.to_string()),
        }
    });
    assert!(
        forged.is_err(),
        "the reader's publish was acknowledged: {forged:?}"
    );
    assert_eq!(stream_last(), last, "the forged message reached the stream");
    // Nor may it purge the stream (which would make every projector back-fill from the nodes).
    let purged = runtime.block_on(async {
        let stream = reader.get_stream("locked-g1-events").await.unwrap();
        // Refused: the server drops it, so no answer comes (bounded wait).
        tokio::time::timeout(Duration::from_secs(3), stream.purge()).await
    });
    assert!(!matches!(purged, Ok(Ok(_))), "the reader purged the stream");
    let stream_messages = runtime.block_on(async {
        let mut stream = reader.get_stream("locked-g1-events").await.unwrap();
        stream.info().await.unwrap().state.messages
    });
    assert_eq!(stream_messages, last, "the stream lost messages");

    // The projector reads the stream as the reader, and ends equal to the ledger.
    let file = dir.path().join("read.db");
    let sqlite_args = ["--sqlite", file.to_str().unwrap()];
    let mut nats_args = nats.login("reader");
    nats_args.extend(prefix.map(String::from));
    let nats_args: Vec<&str> = nats_args.iter().map(String::as_str).collect();
    let projector = spawn_projector(&node, &key, &sqlite_args, &nats_args, Stdio::null());
    let (ok, text) = verify(&node, &key, &sqlite_args, 30);
    assert!(ok, "{text}");
    assert_eq!(sqlite_states(&file), expected_states());
    drop(projector);
}

/// A NATS server that lets in only the holder of a token: `fincore cdc --nats-token-file`
/// publishes every event; without the token nothing connects.
#[test]
fn with_a_nats_token_the_publisher_publishes_every_event() {
    let nats = LockedNats::start(r#"token: "the-token""#);
    let dir = tempfile::tempdir().unwrap();
    let (node, key) = node_with_read_key(dir.path());
    every_kind(&node);
    let last = node_last_seq(&node);
    let token_file = nats.dir.path().join("token").display().to_string();
    let login = ["--nats", &nats.url, "--nats-token-file", &token_file].map(String::from);
    let _publisher = locked_publisher(&node, &key, &login);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let connect =
        |options: async_nats::ConnectOptions| runtime.block_on(options.connect(&nats.url));
    assert!(connect(async_nats::ConnectOptions::new()).is_err());
    let client = connect(async_nats::ConnectOptions::with_token("the-token".into())).unwrap();
    // A JetStream context spawns a task: made inside the runtime.
    let js = runtime.block_on(async { async_nats::jetstream::new(client) });
    eventually("the publisher fills the stream", || {
        runtime.block_on(async {
            js.get_stream("locked-g1-events")
                .await
                .is_ok_and(|s| s.cached_info().state.last_sequence >= last)
        })
    });
}
