//! Hostile clients against the real binary: thousands of idle connections and clients that send
//! their headers too slowly must not lock out a well-behaved client, the node's memory must stay
//! bounded, and a client that hangs must not hold up the node's shutdown.

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
