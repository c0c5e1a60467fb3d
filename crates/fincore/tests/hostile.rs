//! Hostile clients against the real binary: thousands of idle connections and clients that send
//! their headers too slowly must not lock out a well-behaved client, the node's memory must stay
//! bounded, and a client that hangs must not hold up the node's shutdown. A gRPC message that
//! declares 1 GiB is refused from its length prefix, and a hundred concurrent state-digest
//! requests are served or answered busy, while a well-behaved client keeps writing.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use client::RetryPolicy;
use support::post_json;

/// Idle connections held on each listener: far more than a node's file table allowed by
/// default (1,024), far fewer than its connection limit.
const IDLE_PER_LISTENER: usize = 1000;
/// Clients that start a request and never finish its headers.
const SLOW_HEADER_CLIENTS: usize = 50;
/// What the idle and slow connections may add to the node's resident memory.
const RSS_GROWTH_BYTES_MAX: u64 = 128 << 20;

#[test]
fn thousands_of_idle_connections_and_slow_header_clients_do_not_lock_out_a_well_behaved_client() {
    // This test process holds over 2,000 sockets itself.
    server::connections::raise_open_files_limit(4 * IDLE_PER_LISTENER as u64);
    let dir = tempfile::tempdir().unwrap();
    let node = support::start_node(dir.path());
    let pid = node.pid().to_string();
    let rss_before = testkit::proc_status_bytes(&pid, "VmRSS");

    let mut idle = Vec::new();
    for addr in [&node.http_addr, &node.grpc_addr] {
        for _ in 0..IDLE_PER_LISTENER {
            idle.push(TcpStream::connect(addr).unwrap());
        }
    }
    let mut slow: Vec<TcpStream> = (0..SLOW_HEADER_CLIENTS)
        .map(|_| {
            let mut stream = TcpStream::connect(&node.http_addr).unwrap();
            stream
                .write_all(b"POST /v1/transfers HTTP/1.1\r\nHost: fincore\r\n")
                .unwrap();
            stream
        })
        .collect();

    // A well-behaved client still gets through, over HTTP and over gRPC.
    let accounts = r#"[{"id":"1","ledger":1,"code":1},{"id":"2","ledger":1,"code":1}]"#;
    let answer = post_json(&node.http_addr, "/v1/accounts", accounts);
    assert_eq!(answer.status, 200, "{}", answer.body);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = support::connect(&node.grpc_url(), RetryPolicy::default()).unwrap();
        let transfers: Vec<_> = (1..=100).map(|id| testkit::transfer(id, 1, 2, 1)).collect();
        let results = client.create_transfers(&transfers).await.unwrap();
        assert_eq!(results.len(), 100);
    });
    // The gRPC client's runtime is no longer driven: its connection stays open and answers
    // nothing (a client that hung), which must not hold up the node's shutdown below.
    let _hung = runtime;

    // The slow clients are disconnected once the header deadline passes (the read ends: EOF
    // or a reset), well before this read's own timeout.
    let patience = Duration::from_secs(limits::HTTP_HEADER_READ_SECONDS_MAX + 20);
    for stream in &mut slow {
        stream.set_read_timeout(Some(patience)).unwrap();
        let mut byte = [0u8; 1];
        match stream.read(&mut byte) {
            Ok(0) => {}
            Ok(_) => {} // an error answer before closing is fine too
            Err(error) => assert!(
                !matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "a slow-header client was still connected after {patience:?}"
            ),
        }
    }

    let growth = testkit::proc_status_bytes(&pid, "VmRSS").saturating_sub(rss_before);
    assert!(
        growth <= RSS_GROWTH_BYTES_MAX,
        "{} idle connections grew the node by {} MiB",
        idle.len(),
        growth >> 20
    );
    drop(idle);
    // And the node still serves after all that.
    let answer = support::get(&node.http_addr, "/v1/accounts/2");
    assert_eq!(answer.status, 200, "{}", answer.body);
    // A hung client delays a clean stop by the shutdown grace period at most.
    let stopping = std::time::Instant::now();
    node.stop().unwrap();
    let bound = Duration::from_secs(limits::HTTP_SHUTDOWN_GRACE_SECONDS + 10);
    assert!(
        stopping.elapsed() < bound,
        "the node took {:?} to stop (bound {bound:?})",
        stopping.elapsed()
    );
}

/// What a gRPC message may claim to hold: far more than the ledger service's limit.
const DECLARED_MESSAGE_BYTES: u32 = 1 << 30;
/// Concurrent state-digest requests (the digest gate runs one and lets four wait).
const DIGEST_CALLERS: usize = 100;
/// The slowest write the well-behaved client may see meanwhile.
const WRITE_LATENCY_MS_MAX: u128 = 5_000;

/// Sends the start of a `CreateTransfers` call whose message prefix declares
/// [`DECLARED_MESSAGE_BYTES`], then stalls; answers the call's gRPC status code.
async fn declare_a_huge_message(addr: &str, token: &str) -> Option<String> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/fincore.v1.Ledger/CreateTransfers"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {token}"))
        .body(())
        .unwrap();
    let (response, mut body) = client.send_request(request, false).unwrap();
    // Not compressed, then the declared length, then a little of the "message".
    let mut frame = vec![0u8];
    frame.extend_from_slice(&DECLARED_MESSAGE_BYTES.to_be_bytes());
    frame.extend_from_slice(&[0xAB; 1024]);
    body.send_data(bytes::Bytes::from(frame), false).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("the node answered within 10 s")
        .unwrap();
    let status = |headers: &http::HeaderMap| {
        headers
            .get("grpc-status")
            .map(|v| v.to_str().unwrap().to_string())
    };
    if let Some(code) = status(response.headers()) {
        return Some(code);
    }
    let mut answer = response.into_body();
    while let Some(chunk) = answer.data().await {
        chunk.unwrap();
    }
    let trailers = tokio::time::timeout(Duration::from_secs(10), answer.trailers())
        .await
        .expect("trailers within 10 s")
        .unwrap();
    trailers.as_ref().and_then(status)
}

#[test]
fn a_message_declaring_a_gibibyte_and_a_hundred_digest_requests_do_not_stall_a_well_behaved_client()
{
    let dir = tempfile::tempdir().unwrap();
    let node = support::start_node(dir.path());
    let token = testkit::keys::token().expect("the node was started with the process's key");
    let pid = node.pid().to_string();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = runtime
        .block_on(async { support::connect(&node.grpc_url(), RetryPolicy::default()) })
        .unwrap();
    let accounts: Vec<_> = (1..=2).map(testkit::account).collect();
    runtime.block_on(client.create_accounts(&accounts)).unwrap();
    let rss_before = testkit::proc_status_bytes(&pid, "VmRSS");

    // A hundred callers ask for the state digest at once.
    let digests: Vec<_> = (0..DIGEST_CALLERS)
        .map(|_| {
            let addr = node.http_addr.clone();
            std::thread::spawn(move || {
                testkit::http::get(&addr, "/v1/status?digest=true")
                    .unwrap()
                    .status
            })
        })
        .collect();
    // Meanwhile a message declaring 1 GiB, and the well-behaved client's writes.
    let (code, slowest) = runtime.block_on(async {
        let huge = declare_a_huge_message(&node.grpc_addr, token);
        let writes = async {
            let mut slowest = 0;
            for id in 1..=50u128 {
                let started = std::time::Instant::now();
                let results = client
                    .create_transfers(&[testkit::transfer(id, 1, 2, 1)])
                    .await
                    .unwrap();
                assert_eq!(results.len(), 1);
                slowest = slowest.max(started.elapsed().as_millis());
            }
            slowest
        };
        tokio::join!(huge, writes)
    });
    // OUT_OF_RANGE (11, tonic's answer to a declared length over the service's limit):
    // refused from its prefix, not read into memory.
    assert_eq!(code.as_deref(), Some("11"), "the 1 GiB message's status");
    assert!(
        slowest < WRITE_LATENCY_MS_MAX,
        "a write took {slowest} ms beside the hostile calls"
    );
    let statuses: Vec<u16> = digests.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(
        statuses.iter().all(|&s| s == 200 || s == 503),
        "{statuses:?}"
    );
    assert!(
        statuses.contains(&200),
        "no digest was served: {statuses:?}"
    );
    let growth = testkit::proc_status_bytes(&pid, "VmRSS").saturating_sub(rss_before);
    assert!(
        growth < RSS_GROWTH_BYTES_MAX,
        "the node grew by {} MiB",
        growth >> 20
    );
    node.stop().unwrap();
}
