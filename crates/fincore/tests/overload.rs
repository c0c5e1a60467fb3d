//! Overload through the real binary: far more concurrent requests than the node's queue holds.
//! The surplus is refused at once as busy (gRPC RESOURCE_EXHAUSTED, HTTP 503 retryable with
//! Retry-After); nothing crashes, memory stays bounded, and what was accepted is all there.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use api::{convert, proto};
use ledger::{Account, Transfer};
use support::{get, post_json};

const CONCURRENT: u128 = 64;
const EVENTS: u128 = 8189;
/// Generous bound: a full queue of full batches is a few hundred MiB at most.
const RSS_BYTES_MAX: u64 = 1536 << 20;

fn transfers(request: u128) -> Vec<Transfer> {
    (0..EVENTS)
        .map(|i| testkit::transfer(request * EVENTS + i + 1, 1, 2, 1))
        .collect()
}

#[test]
fn far_more_concurrent_requests_than_the_queue_holds_get_busy_answers_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let node = support::start_node_on(
        dir.path(),
        "127.0.0.1:0",
        "127.0.0.1:0",
        &["--queue-depth", "2"],
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let busy = Arc::new(AtomicU64::new(0));
    runtime.block_on(async {
        let channel = tonic::transport::Channel::from_shared(node.grpc_url())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut raw = support::raw_ledger(channel.clone())
            .max_encoding_message_size(16 << 20)
            .max_decoding_message_size(16 << 20);
        let accounts = [1u128, 2].map(|id| Account {
            id,
            ledger: 1,
            code: 1,
            ..Default::default()
        });
        raw.create_accounts(proto::CreateAccountsRequest {
            accounts: vec![],
            packed: convert::pack_accounts(&accounts).into(),
        })
        .await
        .unwrap();
        for wave in 0..3u128 {
            let tasks: Vec<_> = (0..CONCURRENT)
                .map(|k| {
                    let mut raw = raw.clone();
                    let (accepted, busy) = (Arc::clone(&accepted), Arc::clone(&busy));
                    let packed = convert::pack_transfers(&transfers(wave * CONCURRENT + k));
                    tokio::spawn(async move {
                        let request = proto::CreateTransfersRequest {
                            transfers: vec![],
                            packed: packed.into(),
                        };
                        match raw.create_transfers(request).await {
                            Ok(response) => {
                                assert!(
                                    response.get_ref().results.iter().all(|&code| code == 0),
                                    "every event is created"
                                );
                                accepted.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                                assert!(status.message().contains("busy"), "{}", status.message());
                                busy.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(status) => panic!("unexpected answer under load: {status}"),
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
            let rss = node.rss_bytes();
            assert!(
                rss < RSS_BYTES_MAX,
                "wave {wave}: the node uses {} MiB",
                rss >> 20
            );
        }
    });
    let (accepted, busy) = (
        accepted.load(Ordering::Relaxed),
        busy.load(Ordering::Relaxed),
    );
    eprintln!("gRPC: {accepted} requests accepted, {busy} refused as busy");
    assert!(busy > 0, "the queue never filled: the test proves nothing");
    assert!(accepted > 0, "nothing got through");

    // HTTP: the same pressure gets 503 with retryable and Retry-After.
    let body: String = {
        let events: Vec<serde_json::Value> = (0..2000u128)
            .map(|i| serde_json::json!({"id": (10_000_000 + i).to_string(), "debit_account_id": "1", "credit_account_id": "2", "amount": "1", "ledger": 1, "code": 1}))
            .collect();
        serde_json::Value::Array(events).to_string()
    };
    let threads: Vec<_> = (0..48)
        .map(|_| {
            let (addr, body) = (node.http_addr.clone(), body.clone());
            std::thread::spawn(move || post_json(&addr, "/v1/transfers", &body))
        })
        .collect();
    let answers: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let refused: Vec<_> = answers.iter().filter(|a| a.status == 503).collect();
    assert!(
        answers.iter().all(|a| a.status == 200 || a.status == 503),
        "unexpected statuses"
    );
    if let Some(answer) = refused.first() {
        assert_eq!(answer.json().unwrap()["retryable"], true);
        assert!(
            answer.head.to_ascii_lowercase().contains("retry-after: 1"),
            "{}",
            answer.head
        );
    }
    eprintln!(
        "HTTP: {} of {} refused as busy",
        refused.len(),
        answers.len()
    );

    // Still healthy, and exactly what was accepted over gRPC is on the books (HTTP moved the
    // same ids each time, so it adds at most 2000).
    assert_eq!(get(&node.http_addr, "/healthz").status, 200);
    let account = get(&node.http_addr, "/v1/accounts/2").json().unwrap();
    let credits: u64 = account["credits_posted"].as_str().unwrap().parse().unwrap();
    let expected = accepted * EVENTS as u64;
    assert!(
        credits == expected || credits == expected + 2000,
        "credits {credits}, accepted {expected}"
    );
    node.stop().unwrap();
}
