//! Crash safety through the real binary: a client keeps submitting transfers and records every
//! acknowledged one while the node is killed with SIGKILL at random moments, 20 times. After
//! every restart each acknowledged transfer is present with identical fields (timestamp
//! included), and the money on the accounts is exactly the sum of the transfers that exist:
//! nothing lost, nothing applied twice.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use client::{ClientError, RetryPolicy};
use ledger::{Account, CreateAccountResult as AR, CreateTransferResult as TR, Transfer};

const ACCOUNTS: u128 = 8;
const KILLS: usize = 20;
const BATCH: u128 = 64;

/// A small deterministic generator, so a failure can be replayed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

fn policy() -> RetryPolicy {
    RetryPolicy {
        attempts_max: 1000,
        elapsed_max: Duration::from_secs(30),
        backoff_initial: Duration::from_millis(5),
        backoff_max: Duration::from_millis(100),
        attempt_timeout: Duration::from_secs(3),
    }
}

#[test]
fn acknowledged_transfers_survive_repeated_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let node = support::start_node_on(
        dir.path(),
        "127.0.0.1:0",
        "127.0.0.1:0",
        &["--checkpoint-interval", "25"],
    );
    let (grpc, http) = (node.grpc_addr.clone(), node.http_addr.clone());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = runtime.block_on(async { support::connect(&node.grpc_url(), policy()).unwrap() });
    runtime.block_on(async {
        let accounts: Vec<Account> = (1..=ACCOUNTS)
            .map(|id| Account {
                id,
                ledger: 1,
                code: 1,
                ..Default::default()
            })
            .collect();
        assert!(
            client
                .create_accounts(&accounts)
                .await
                .unwrap()
                .iter()
                .all(|r| r.result == AR::Created)
        );
    });

    let acked: Arc<Mutex<Vec<(Transfer, u64)>>> = Arc::default();
    let highest_id = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    // The checker holds this exclusively, so that it sees balances and transfers at rest.
    let quiet = Arc::new(tokio::sync::RwLock::new(()));
    let writer = runtime.spawn({
        let (client, acked, highest_id, stop) = (
            client.clone(),
            Arc::clone(&acked),
            Arc::clone(&highest_id),
            Arc::clone(&stop),
        );
        let quiet = Arc::clone(&quiet);
        async move {
            let mut random = Lcg(7);
            let mut next_id = 1u128;
            let mut gave_up = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let batch: Vec<Transfer> = (next_id..next_id + BATCH)
                    .map(|id| {
                        let debit = u128::from(random.next()) % ACCOUNTS + 1;
                        let credit =
                            (debit + u128::from(random.next()) % (ACCOUNTS - 1)) % ACCOUNTS + 1;
                        let amount = u128::from(random.next() % 1000 + 1);
                        testkit::transfer(id, debit, credit, amount)
                    })
                    .collect();
                let _writing = quiet.read().await;
                highest_id.store((next_id + BATCH - 1) as u64, Ordering::Relaxed);
                match client.create_transfers(&batch).await {
                    Ok(results) => {
                        let mut acked = acked.lock().unwrap();
                        for (transfer, result) in batch.iter().zip(results) {
                            assert!(
                                matches!(result.result, TR::Created | TR::Exists),
                                "unexpected {}",
                                result.result
                            );
                            acked.push((*transfer, result.timestamp));
                        }
                        next_id += BATCH;
                    }
                    // The outcome is unknown: retrying the same batch later is safe.
                    Err(ClientError::GaveUp { .. }) => gave_up += 1,
                    Err(other) => panic!("unexpected client error: {other}"),
                }
            }
            gave_up
        }
    });

    let started = Instant::now();
    let mut random = Lcg(11);
    let mut node = Some(node);
    for round in 0..KILLS {
        std::thread::sleep(Duration::from_millis(50 + random.next() % 350));
        node.take().unwrap().kill9();
        node = Some(support::start_node_on(
            dir.path(),
            &grpc,
            &http,
            &["--checkpoint-interval", "25"],
        ));
        let acked_now = runtime.block_on(async {
            let _at_rest = quiet.write().await;
            let acked_now = acked.lock().unwrap().clone();
            support::check_acknowledged(
                &client,
                &acked_now,
                u128::from(highest_id.load(Ordering::Relaxed)),
                ACCOUNTS,
            )
            .await;
            acked_now
        });
        eprintln!(
            "round {round}: {} acknowledged transfers intact",
            acked_now.len()
        );
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "the crash test is taking too long"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let gave_up = runtime.block_on(writer).unwrap();
    let acked_all = acked.lock().unwrap().clone();
    runtime.block_on(support::check_acknowledged(
        &client,
        &acked_all,
        u128::from(highest_id.load(Ordering::Relaxed)),
        ACCOUNTS,
    ));
    assert!(
        acked_all.len() > 20 * BATCH as usize,
        "too little was acknowledged to prove anything: {}",
        acked_all.len()
    );
    eprintln!(
        "{} acknowledged transfers survived {KILLS} kills ({gave_up} batches gave up and were retried)",
        acked_all.len()
    );
    node.unwrap().stop().unwrap();
}
