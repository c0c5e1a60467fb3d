//! TLS on the client listeners (`serve --tls-cert --tls-key`), against the real binary: a
//! group of three serving HTTPS and gRPC over TLS takes writes from clients that trust its
//! authority (the Rust client follows the leader over TLS, HTTP redirects name `https://`),
//! refuses to talk to plaintext clients and to clients trusting another authority, and a
//! client that never completes its handshake is disconnected without holding up anyone.

mod support;

use std::io::Read;
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use client::{Client, ClientError};
use ledger::{CreateAccountResult, CreateTransferResult};
use support::{ChildNode, fincore, fincore_exe};
use testkit::group::GroupLayout;
use testkit::http::{Answer, Transport};

/// Makes a development authority and a client-listener certificate naming 127.0.0.1 in `dir`;
/// answers the authority's certificate (PEM).
fn api_certificates(dir: &Path) -> Vec<u8> {
    let dir_arg = dir.display().to_string();
    let (ok, text) = fincore(&[
        "certs",
        "--dir",
        &dir_arg,
        "--api-names",
        "127.0.0.1,localhost",
    ]);
    assert!(ok, "fincore certs: {text}");
    std::fs::read(dir.join("api-ca.pem")).unwrap()
}

fn tls_args(dir: &Path) -> Vec<String> {
    vec![
        "--tls-cert".into(),
        dir.join("api.pem").display().to_string(),
        "--tls-key".into(),
        dir.join("api.key").display().to_string(),
    ]
}

fn request(transport: &Transport, addr: &str, method: &str, path: &str, body: &str) -> Answer {
    support::request_over(transport, testkit::keys::token(), addr, method, path, body)
        .unwrap_or_else(|error| panic!("{method} {path} at {addr}: {error}"))
}

#[test]
fn a_group_serving_tls_takes_writes_from_clients_trusting_its_authority_and_no_others() {
    let dir = tempfile::tempdir().unwrap();
    let certificates = dir.path().join("api-tls");
    let ca = api_certificates(&certificates);
    let layout = GroupLayout::on_free_ports(3).unwrap();
    let data = |i: usize| dir.path().join(format!("node-{}", i + 1));
    let nodes: Vec<ChildNode> = (0..3)
        .map(|i| {
            let mut args = layout.serve_args(i, 3);
            args.extend(layout.membership_args(i, &data(i)));
            args.extend(tls_args(&certificates));
            ChildNode::start(fincore_exe(), &data(i), &args).unwrap_or_else(|e| panic!("{e}"))
        })
        .collect();
    assert!(nodes.iter().all(|node| node.client_tls));
    let https = Transport::tls_trusting(&ca).unwrap();

    // Over HTTPS, the group elects a leader; find it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let leader = loop {
        let status = request(&https, &nodes[0].http_addr, "GET", "/v1/status", "")
            .json()
            .unwrap();
        if let Some(leader) = status["replica"]["leader"].as_u64() {
            break leader as usize - 1;
        }
        assert!(Instant::now() < deadline, "no leader within 30 s: {status}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let follower = (leader + 1) % 3;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // Given only a follower's https:// address, the client follows the leader over TLS.
        let client = Client::builder(&[&nodes[follower].grpc_url()])
            .api_key_opt(testkit::keys::token())
            .tls_ca_pem(ca.clone())
            .connect()
            .unwrap();
        let accounts: Vec<_> = (1..=2).map(testkit::account).collect();
        let created = client.create_accounts(&accounts).await.unwrap();
        assert!(
            created
                .iter()
                .all(|r| r.result == CreateAccountResult::Created),
            "{created:?}"
        );
        let transfers: Vec<_> = (1..=500).map(|id| testkit::transfer(id, 1, 2, 3)).collect();
        let results = client.create_transfers(&transfers).await.unwrap();
        assert!(
            results
                .iter()
                .all(|r| r.result == CreateTransferResult::Created),
            "{results:?}"
        );
        let balances = client.lookup_accounts(&[1, 2]).await.unwrap();
        assert_eq!(balances[0].debits_posted, 1500);
        assert_eq!(balances[1].credits_posted, 1500);

        // A plaintext client gets no answer from the TLS port, and says so instead of hanging.
        let plain = Client::builder(&[&format!("http://{}", nodes[leader].grpc_addr)])
            .api_key_opt(testkit::keys::token())
            .retry_policy(support::impatient(2))
            .connect()
            .unwrap();
        let refused = plain.lookup_accounts(&[1]).await;
        assert!(
            refused.is_err(),
            "a plaintext client was answered: {refused:?}"
        );

        // A client trusting another authority refuses the node's certificate.
        let elsewhere = tempfile::tempdir().unwrap();
        let other_ca = api_certificates(elsewhere.path());
        let stranger = Client::builder(&[&nodes[leader].grpc_url()])
            .api_key_opt(testkit::keys::token())
            .tls_ca_pem(other_ca)
            .retry_policy(support::impatient(2))
            .connect()
            .unwrap();
        let refused = stranger.lookup_accounts(&[1]).await;
        assert!(
            refused.is_err(),
            "a client trusting another authority was answered: {refused:?}"
        );

        // A client set up for TLS refuses a plaintext address, and the other way round.
        let mixed = Client::builder(&[&format!("http://{}", nodes[leader].grpc_addr)])
            .tls_ca_pem(ca.clone())
            .connect();
        assert!(matches!(mixed, Err(ClientError::Invalid(_))));
        let no_authority = Client::builder(&[&nodes[leader].grpc_url()]).connect();
        assert!(matches!(no_authority, Err(ClientError::Invalid(_))));
    });

    // Over HTTPS, a write sent to a follower is redirected to the leader's https:// URL, which
    // takes it.
    let body = r#"[{"id":"501","debit_account_id":"1","credit_account_id":"2","amount":"4","ledger":1,"code":1}]"#;
    let answer = request(
        &https,
        &nodes[follower].http_addr,
        "POST",
        "/v1/transfers",
        body,
    );
    assert_eq!(answer.status, 307, "{}", answer.body);
    let location = answer.header("location").unwrap().to_string();
    assert_eq!(
        location,
        format!("https://{}/v1/transfers", nodes[leader].http_addr)
    );
    let answer = request(
        &https,
        &nodes[leader].http_addr,
        "POST",
        "/v1/transfers",
        body,
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.json().unwrap()["results"][0]["result"], "created");

    // Plain HTTP to the HTTPS listener gets a TLS alert, which the kit's client names.
    let plain = testkit::http::request_as(
        testkit::keys::token(),
        &nodes[leader].http_addr,
        "GET",
        "/v1/status",
        None,
        "",
    );
    let error = plain.expect_err("plain HTTP was answered by an HTTPS listener");
    assert!(error.to_string().contains("TLS"), "{error}");

    // The admin command reaches the group over HTTPS with the authority, not without it.
    let ca_path = certificates.join("api-ca.pem").display().to_string();
    let addr = &nodes[follower].http_addr;
    let (ok, text) = fincore(&["admin", "--tls-ca", &ca_path, "status", "--addr", addr]);
    assert!(ok, "{text}");
    assert!(text.contains("state_digest"), "{text}");
    let (ok, text) = fincore(&["admin", "status", "--addr", addr]);
    assert!(!ok, "{text}");
    assert!(text.contains("TLS"), "{text}");

    drop(runtime);
    for node in nodes {
        node.stop().unwrap();
    }
}

#[test]
fn clients_that_never_finish_their_tls_handshake_are_disconnected_and_hold_up_no_one() {
    const STALLED_PER_LISTENER: usize = 50;
    let dir = tempfile::tempdir().unwrap();
    let certificates = dir.path().join("api-tls");
    let ca = api_certificates(&certificates);
    let extra = tls_args(&certificates);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let node = support::start_node_on(
        &dir.path().join("node"),
        "127.0.0.1:0",
        "127.0.0.1:0",
        &extra,
    );
    let https = Transport::tls_trusting(&ca).unwrap();

    // Connections that never send their hello, on both listeners.
    let mut stalled: Vec<TcpStream> = [&node.http_addr, &node.grpc_addr]
        .iter()
        .flat_map(|addr| (0..STALLED_PER_LISTENER).map(move |_| TcpStream::connect(addr).unwrap()))
        .collect();
    let since = Instant::now();

    // Meanwhile, well-behaved clients are served at once on both.
    let answer = request(&https, &node.http_addr, "GET", "/v1/status", "");
    assert_eq!(answer.status, 200, "{}", answer.body);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = Client::builder(&[&node.grpc_url()])
            .api_key_opt(testkit::keys::token())
            .tls_ca_pem(ca.clone())
            .connect()
            .unwrap();
        let accounts: Vec<_> = (1..=2).map(testkit::account).collect();
        client.create_accounts(&accounts).await.unwrap();
    });
    // The client's connection closes with its runtime (an open one would make the node's stop
    // wait out its grace period).
    drop(runtime);
    assert!(
        since.elapsed() < Duration::from_secs(limits::CLIENT_TLS_HANDSHAKE_SECONDS_MAX),
        "well-behaved clients waited for the stalled handshakes ({:?})",
        since.elapsed()
    );

    // The stalled connections are closed once the handshake deadline passes (the read ends:
    // EOF or a reset), well before this read's own timeout.
    let patience = Duration::from_secs(limits::CLIENT_TLS_HANDSHAKE_SECONDS_MAX + 20);
    for stream in &mut stalled {
        stream.set_read_timeout(Some(patience)).unwrap();
        let mut byte = [0u8; 1];
        if let Err(error) = stream.read(&mut byte) {
            assert!(
                !matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "a stalled handshake was still open after {patience:?}"
            );
        }
    }
    assert!(
        since.elapsed() >= Duration::from_secs(limits::CLIENT_TLS_HANDSHAKE_SECONDS_MAX - 1),
        "stalled handshakes were closed before their deadline ({:?})",
        since.elapsed()
    );
    node.stop().unwrap();
}
