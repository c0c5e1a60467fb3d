//! The PostgreSQL sink alone, measured: TigerBeetle's workload (10,000 accounts, all with the
//! `history` flag; plain transfers between two random accounts) folded into `Changes` the way
//! `fincore project` folds them, then written into a fresh database; events per second,
//! median of several runs.
//!
//! Owns only the measurement: it builds events, folds them with `Changes::fold` and writes them
//! with `Sink::apply`, the code `fincore project` runs. It must not change the sink's behaviour
//! nor leave databases behind (each run creates `pg_sink_bench_<pid>_<run>` and drops it).
//!
//! `cargo bench --workspace --profile ci --bench pg_sink -- [--batch-transfers 8189]
//! [--batches 16] [--batches-per-transaction 4] [--runs 5] [--admin-url postgres://…/test]`.
//! Fold time is not counted: the figure is the database's.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use ledger::{
    Account, AccountFlags, Balances, BatchMarker, Event, EventBody, EventKind, RemoteSides,
    Transfer, TransferChange, TransferFlags,
};
use projector::{Changes, Sink, Target};
use sqlx::{Connection, PgConnection};

const ACCOUNTS: usize = 10_000;
const GROUP: &str = "bench";

struct Options {
    admin_url: String,
    batch_transfers: usize,
    batches: usize,
    batches_per_transaction: usize,
    runs: usize,
}

fn options() -> Options {
    let mut options = Options {
        admin_url: "postgres://postgres@127.0.0.1:5432/test".to_string(),
        batch_transfers: 8189,
        batches: 16,
        batches_per_transaction: 0,
        runs: 5,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut at = 0;
    while at < args.len() {
        let flag = args[at].as_str();
        // `cargo bench` passes `--bench` to every bench binary.
        if flag == "--bench" {
            at += 1;
            continue;
        }
        let value = args
            .get(at + 1)
            .unwrap_or_else(|| panic!("{flag}: a value is missing"));
        let number = || -> usize {
            value
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .unwrap_or_else(|| panic!("{flag}: {value:?} is not a positive count"))
        };
        match flag {
            "--admin-url" => options.admin_url = value.clone(),
            "--batch-transfers" => options.batch_transfers = number(),
            "--batches" => options.batches = number(),
            "--batches-per-transaction" => options.batches_per_transaction = number(),
            "--runs" => options.runs = number(),
            _ => panic!("{flag}: not a flag of this bench"),
        }
        at += 2;
    }
    options.batch_transfers = options.batch_transfers.min(ledger::BATCH_EVENTS_MAX);
    if options.batches_per_transaction == 0 {
        // About as `run::project_group` packs them when catching up: whole batches, up to
        // `PROJECTOR_TRANSACTION_EVENTS_MAX` events.
        let batch_events = options.batch_transfers + 1;
        options.batches_per_transaction =
            (limits::PROJECTOR_TRANSACTION_EVENTS_MAX / batch_events).max(1);
    }
    options
}

/// xorshift64*: the same workload on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Appends one batch (its events and its marker) to `events`.
fn close_batch(events: &mut Vec<Event>, first_seq: u64, timestamp: u64) {
    let seq = events.last().map_or(1, |e| e.seq + 1);
    events.push(Event {
        seq,
        kind: EventKind::Batch,
        timestamp,
        body: EventBody::Batch(BatchMarker {
            first_seq,
            events_count: (seq - first_seq) as u32,
            log_index: seq,
        }),
    });
}

/// The events: one batch creating the accounts, then `batches` batches of transfers. Ids are
/// large (above 2^64) so that NUMERIC(39,0) holds real 128-bit values.
fn workload(options: &Options) -> (Vec<Event>, Vec<Vec<Event>>) {
    const ID_BASE: u128 = 1 << 100;
    let mut timestamp = 1_700_000_000_000_000_000u64;
    let mut setup = Vec::with_capacity(ACCOUNTS + 1);
    for n in 0..ACCOUNTS {
        timestamp += 1;
        setup.push(Event {
            seq: n as u64 + 1,
            kind: EventKind::AccountCreated,
            timestamp,
            body: EventBody::Account(Account {
                id: ID_BASE + n as u128,
                ledger: 1,
                code: 1,
                flags: AccountFlags::HISTORY,
                timestamp,
                ..Account::default()
            }),
        });
    }
    close_batch(&mut setup, 1, timestamp);
    let mut balances = vec![Balances::default(); ACCOUNTS];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut seq = setup.len() as u64;
    let mut transfer_id = ID_BASE << 20;
    let mut batches = Vec::with_capacity(options.batches);
    for _ in 0..options.batches {
        let first_seq = seq + 1;
        let mut batch = Vec::with_capacity(options.batch_transfers + 1);
        for _ in 0..options.batch_transfers {
            let debit = (rng.next() % ACCOUNTS as u64) as usize;
            let credit = (debit + 1 + (rng.next() % (ACCOUNTS as u64 - 1)) as usize) % ACCOUNTS;
            let amount = u128::from(rng.next() % 1_000_000) + 1;
            balances[debit].debits_posted += amount;
            balances[credit].credits_posted += amount;
            timestamp += 1;
            seq += 1;
            transfer_id += 1;
            batch.push(Event {
                seq,
                kind: EventKind::TransferCreated,
                timestamp,
                body: EventBody::Transfer(TransferChange {
                    transfer: Transfer {
                        id: transfer_id,
                        debit_account_id: ID_BASE + debit as u128,
                        credit_account_id: ID_BASE + credit as u128,
                        amount,
                        user_data_128: u128::from(rng.next()) << 64,
                        user_data_64: rng.next(),
                        user_data_32: rng.next() as u32,
                        ledger: 1,
                        code: 1,
                        flags: TransferFlags::empty(),
                        timestamp,
                        ..Transfer::default()
                    },
                    remote: RemoteSides::empty(),
                    debit: balances[debit],
                    credit: balances[credit],
                }),
            });
        }
        close_batch(&mut batch, first_seq, timestamp);
        seq += 1;
        batches.push(batch);
    }
    (setup, batches)
}

async fn admin(options: &Options) -> PgConnection {
    PgConnection::connect(&options.admin_url)
        .await
        .expect("PostgreSQL at --admin-url (scripts/services starts it)")
}

async fn execute(conn: &mut PgConnection, sql: String) {
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(conn)
        .await
        .expect("an administrative statement");
}

/// CPU time (user and system) of process `pid` so far, if it runs on this machine (Linux).
fn cpu_time(pid: i32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command (which may hold spaces) in parentheses.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on every Linux this runs on.
    Some(Duration::from_millis(ticks * 10))
}

/// One run into a fresh database: the time the transactions took, and the CPU time of the
/// PostgreSQL backend writing them (when the server runs on this machine).
async fn run(
    options: &Options,
    run: usize,
    transactions: &[Changes],
    setup: &Changes,
) -> (Duration, Option<Duration>) {
    let name = format!("pg_sink_bench_{}_{run}", std::process::id());
    let mut admin = admin(options).await;
    execute(&mut admin, format!("DROP DATABASE IF EXISTS {name}")).await;
    execute(&mut admin, format!("CREATE DATABASE {name}")).await;
    let url = match options.admin_url.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{name}"),
        None => panic!("--admin-url: {:?} names no database", options.admin_url),
    };
    let mut sink = Sink::open(&Target::Postgres(url), true).await.unwrap();
    assert_eq!(sink.offset(GROUP).await.unwrap(), 0);
    sink.apply(GROUP, setup).await.unwrap();
    // The sink's backend: the only other session on the bench's database.
    let backend: Option<i32> = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(&name)
    .fetch_optional(&mut admin)
    .await
    .expect("pg_stat_activity");
    let cpu_before = backend.and_then(cpu_time);
    let started = Instant::now();
    for changes in transactions {
        sink.apply(GROUP, changes).await.unwrap();
    }
    let elapsed = started.elapsed();
    let cpu = match (backend.and_then(cpu_time), cpu_before) {
        (Some(after), Some(before)) => Some(after.saturating_sub(before)),
        _ => None,
    };
    let expected = transactions
        .iter()
        .map(|c| c.transfers.len() as u64)
        .sum::<u64>();
    let counts = sink.counts().await.unwrap();
    let written = counts.transfers.values().sum::<u64>();
    assert_eq!(written, expected, "every transfer written once");
    drop(sink);
    execute(&mut admin, format!("DROP DATABASE {name} WITH (FORCE)")).await;
    (elapsed, cpu)
}

fn main() {
    let options = options();
    let (setup_events, batches) = workload(&options);
    let mut history = HashSet::new();
    let setup = Changes::fold(&setup_events, &mut history).unwrap();
    let transactions: Vec<Changes> = batches
        .chunks(options.batches_per_transaction)
        .map(|group| {
            let events: Vec<Event> = group.concat();
            Changes::fold(&events, &mut history).unwrap()
        })
        .collect();
    let events: usize = transactions.iter().map(|c| c.events_count).sum();
    let transfers: usize = transactions.iter().map(|c| c.transfers.len()).sum();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut rates = Vec::with_capacity(options.runs);
    let mut cpu_rates = Vec::with_capacity(options.runs);
    for n in 0..options.runs {
        let (elapsed, cpu) = runtime.block_on(run(&options, n, &transactions, &setup));
        let rate = events as f64 / elapsed.as_secs_f64();
        let per_cpu = cpu.map(|cpu| events as f64 / cpu.as_secs_f64().max(0.01));
        println!(
            "run {n}: {events} events ({transfers} transfers) in {} transactions, {:.3} s: {rate:.0} events/s; PostgreSQL backend CPU {}",
            transactions.len(),
            elapsed.as_secs_f64(),
            cpu.map_or("unknown (server not local)".to_string(), |cpu| format!(
                "{:.2} s: {:.0} events per CPU second",
                cpu.as_secs_f64(),
                per_cpu.unwrap_or_default()
            )),
        );
        rates.push(rate);
        cpu_rates.extend(per_cpu);
    }
    rates.sort_by(f64::total_cmp);
    cpu_rates.sort_by(f64::total_cmp);
    println!(
        "pg_sink: batches of {} transfers, {} per transaction: median {:.0} events/s (min {:.0}, max {:.0}, {} runs); backend median {} events per CPU second",
        options.batch_transfers,
        options.batches_per_transaction,
        rates[rates.len() / 2],
        rates[0],
        rates[rates.len() - 1],
        rates.len(),
        cpu_rates
            .get(cpu_rates.len() / 2)
            .map_or("unknown".to_string(), |r| format!("{r:.0}")),
    );
}
