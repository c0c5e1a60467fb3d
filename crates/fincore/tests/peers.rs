//! The peer listener of a real three-node group under attack (issue: a node you can put on a
//! network). The replicas talk mutual TLS under their group's authority; an attacker who
//! reaches a follower's peer port tries, while a client keeps writing:
//! - plaintext, TLS without a certificate, and a certificate from another authority naming a
//!   member: refused by the handshake;
//! - a member's real certificate (node 3's) carrying append-entries, vote and transfer-leader
//!   messages that claim to come from node 1 with a far higher term: refused, because the
//!   certificate does not name the sender;
//! - a certificate from the group's own authority for a node that is not a member (node 9),
//!   voting and offering a crafted 60-byte snapshot as itself: refused, not a member.
//!
//! Throughout, the well-behaved client keeps committing; afterwards the group still has its
//! leader in the same term (no forged message moved a term) and every replica holds the same
//! state. A start with the wrong certificates is refused before it touches its directory.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use client::RetryPolicy;
use ledger::{Account, CreateTransferResult};
use openraft::raft::{AppendEntriesRequest, TransferLeaderRequest, VoteRequest};
use replication::openraft_side::{SnapshotOffer, SnapshotVote, TypeConfig};
use replication::proto::{RaftMessage, raft_transport_client::RaftTransportClient};
use support::{ChildNode, fincore_exe};
use testkit::group::GroupLayout;
use testkit::http::replica_status;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// The term every forged message claims: far above anything the group reached.
const FORGED_TERM: u64 = 1_000_000;

fn message<T: serde::Serialize>(value: &T) -> RaftMessage {
    RaftMessage {
        body: postcard::to_allocvec(value).unwrap().into(),
    }
}

/// The TLS client configuration of whoever holds `node-N.pem` in `dir` (or no certificate),
/// trusting `ca` and expecting to reach `peer` of `group`.
fn tls(dir: &Path, node: Option<u64>, ca: &Path, group: &str, peer: u64) -> ClientTlsConfig {
    let mut config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()))
        .domain_name(replication::peer_tls::peer_dns_name(group, peer));
    if let Some(node) = node {
        config = config.identity(Identity::from_pem(
            std::fs::read(dir.join(format!("node-{node}.pem"))).unwrap(),
            std::fs::read(dir.join(format!("node-{node}.key"))).unwrap(),
        ));
    }
    config
}

/// A transport client of the peer listener at `addr` (plaintext when `tls` is `None`).
async fn dial(
    addr: &str,
    tls: Option<ClientTlsConfig>,
) -> Result<RaftTransportClient<tonic::transport::Channel>, String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5));
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).map_err(|e| e.to_string())?;
    }
    let channel = endpoint.connect().await.map_err(|e| format!("{e:?}"))?;
    Ok(RaftTransportClient::new(channel))
}

/// Sends a forged heartbeat claiming `sender` leads at [`FORGED_TERM`]; the refusal's text.
async fn forged_append_entries(addr: &str, tls: Option<ClientTlsConfig>, sender: u64) -> String {
    let request = AppendEntriesRequest::<TypeConfig> {
        vote: SnapshotVote::new_committed(FORGED_TERM, sender),
        prev_log_id: None,
        entries: Vec::new(),
        leader_commit: None,
    };
    match dial(addr, tls).await {
        Err(error) => error,
        Ok(mut client) => match client.append_entries(message(&request)).await {
            Ok(answer) => panic!("a forged append-entries was answered: {answer:?}"),
            Err(status) => format!("{status:?}"),
        },
    }
}

#[test]
fn forged_peer_messages_are_refused_while_the_group_keeps_committing() {
    let dir = tempfile::tempdir().unwrap();
    let layout = GroupLayout::on_free_ports(3).unwrap();
    let data = |i: usize| dir.path().join(format!("node-{}", i + 1));
    let nodes: Vec<ChildNode> = (0..3)
        .map(|i| {
            let mut args = layout.serve_args(i, 3);
            args.extend(layout.membership_args(i, &data(i)));
            ChildNode::start(fincore_exe(), &data(i), &args).unwrap_or_else(|e| panic!("{e}"))
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let urls = layout.grpc_urls();
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    let client = runtime
        .block_on(async { support::connect_any(&urls, RetryPolicy::default()) })
        .unwrap();
    let accounts: Vec<Account> = (1..=2).map(testkit::account).collect();
    runtime.block_on(client.create_accounts(&accounts)).unwrap();
    let statuses = || {
        (0..3)
            .map(|i| replica_status(&layout.http_addrs[i], false).unwrap())
            .collect::<Vec<_>>()
    };
    let before = statuses();
    let leader = before[0].leader.expect("a leader") as usize - 1;
    let term = before[leader].term;
    let follower = (0..3).find(|&i| i != leader).unwrap();
    let target = layout.peer_addrs[follower].clone();
    let target_id = follower as u64 + 1;
    let impostor = (0..3).find(|&i| i != leader && i != follower).unwrap() as u64 + 1;

    // A well-behaved client writes throughout; its slowest write is recorded.
    let writing = Arc::new(AtomicBool::new(true));
    let (written, slowest_ms) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let writer = {
        let (writing, written, slowest_ms) = (
            Arc::clone(&writing),
            Arc::clone(&written),
            Arc::clone(&slowest_ms),
        );
        let client = client.clone();
        runtime.spawn(async move {
            let mut id = 0u128;
            while writing.load(Ordering::Relaxed) {
                id += 1;
                let started = Instant::now();
                let results = client
                    .create_transfers(&[testkit::transfer(id, 1, 2, 1)])
                    .await
                    .unwrap();
                assert!(
                    results
                        .iter()
                        .all(|r| r.result == CreateTransferResult::Created),
                    "{results:?}"
                );
                slowest_ms.fetch_max(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                written.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    let certs = &layout.certificates;
    let ca = certs.join("ca.pem");
    let group = &layout.group;
    // Another authority's "node 1" of the same group.
    let stranger = tempfile::tempdir().unwrap();
    let made = std::process::Command::new(fincore_exe())
        .args(["certs", "--group", group, "--nodes", "1", "--dir"])
        .arg(stranger.path())
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    // The group's own authority's certificate for node 9, which is not a member.
    let made = std::process::Command::new(fincore_exe())
        .args(["certs", "--group", group, "--nodes", "9", "--dir"])
        .arg(certs)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");

    runtime.block_on(async {
        // The handshake refuses plaintext, no certificate, and another authority's: the
        // connection fails (with TLS 1.3 the client may learn it only when it sends), and the
        // message never reaches the service, which would answer PermissionDenied.
        let refused = forged_append_entries(&target, None, 1).await;
        assert!(refused_by_transport(&refused), "{refused}");
        let refused =
            forged_append_entries(&target, Some(tls(certs, None, &ca, group, target_id)), 1).await;
        assert!(refused_by_transport(&refused), "{refused}");
        let foreign = tls(stranger.path(), Some(1), &ca, group, target_id);
        let refused = forged_append_entries(&target, Some(foreign), 1).await;
        assert!(refused_by_transport(&refused), "{refused}");

        // A member's certificate speaking for another member: refused on every message kind.
        let as_impostor = || Some(tls(certs, Some(impostor), &ca, group, target_id));
        let claimed_leader = leader as u64 + 1;
        let refused = forged_append_entries(&target, as_impostor(), claimed_leader).await;
        assert!(
            refused.contains("PermissionDenied")
                && refused.contains(&format!("does not name node {claimed_leader}")),
            "{refused}"
        );
        let mut impostor_client = dial(&target, as_impostor()).await.unwrap();
        let vote =
            VoteRequest::<TypeConfig>::new(SnapshotVote::new(FORGED_TERM, claimed_leader), None);
        let refused = impostor_client.vote(message(&vote)).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
        let transfer = TransferLeaderRequest::<TypeConfig>::new(
            SnapshotVote::new_committed(FORGED_TERM, claimed_leader),
            impostor,
            None,
        );
        let refused = impostor_client
            .transfer_leader(message(&transfer))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");

        // The group's authority's certificate for a node that is not a member.
        let as_nine = || Some(tls(certs, Some(9), &ca, group, target_id));
        let refused = forged_append_entries(&target, as_nine(), 9).await;
        assert!(refused.contains("not a member"), "{refused}");
        let mut nine = dial(&target, as_nine()).await.unwrap();
        let vote = VoteRequest::<TypeConfig>::new(SnapshotVote::new(FORGED_TERM, 9), None);
        let refused = nine.vote(message(&vote)).await.unwrap_err();
        assert!(refused.message().contains("not a member"), "{refused:?}");
        // A crafted 60-byte snapshot: an offer claiming a huge ledger, then 60 bytes.
        let offer = SnapshotOffer {
            vote: SnapshotVote::new_committed(FORGED_TERM, 9),
            meta: Default::default(),
            len_bytes: 60,
            digest: [7; 32],
        };
        let stream = futures_stream(vec![
            message(&offer),
            RaftMessage {
                body: vec![0xAB; 60].into(),
            },
        ]);
        let refused = nine.install_snapshot(stream).await.unwrap_err();
        assert!(refused.message().contains("not a member"), "{refused:?}");
    });

    // The client kept committing while all this went on, and keeps doing so.
    let committed_during_attacks = written.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(500));
    writing.store(false, Ordering::Relaxed);
    runtime.block_on(writer).unwrap();
    assert!(
        committed_during_attacks > 0,
        "no write committed during the attacks"
    );
    let slowest = slowest_ms.load(Ordering::Relaxed);
    assert!(slowest < 5_000, "a write took {slowest} ms");

    // Nothing forged moved a term or a leader, and the replicas converge on one state.
    let after = statuses();
    for status in &after {
        assert_eq!(
            status.term, term,
            "a forged message moved a term: {after:?}"
        );
        assert_eq!(status.leader, Some(leader as u64 + 1), "{after:?}");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let digests: Vec<(u64, Option<String>)> = (0..3)
            .map(|i| {
                let status = replica_status(&layout.http_addrs[i], true).unwrap();
                (status.applied_index, status.state_digest)
            })
            .collect();
        if digests.windows(2).all(|w| w[0] == w[1]) {
            break;
        }
        assert!(Instant::now() < deadline, "replicas disagree: {digests:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    for node in nodes {
        node.stop().unwrap();
    }
}

/// True if `refusal` is a failed connection, not an answer of the transport service.
fn refused_by_transport(refusal: &str) -> bool {
    let service_answered = ["PermissionDenied", "InvalidArgument", "not a member"]
        .iter()
        .any(|answer| refusal.contains(answer));
    let transport_failed = [
        "CertificateRequired",
        "alert",
        "connection closed",
        "Cancelled",
        "transport error",
        "Transport",
    ]
    .iter()
    .any(|failure| refusal.contains(failure));
    transport_failed && !service_answered
}

/// A stream of `messages` for a client-streaming call.
fn futures_stream(
    messages: Vec<RaftMessage>,
) -> impl tonic::codegen::tokio_stream::Stream<Item = RaftMessage> + Send + 'static {
    tonic::codegen::tokio_stream::iter(messages)
}

#[test]
fn a_node_whose_certificate_names_another_group_or_node_is_refused_before_touching_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let group_a = "a".repeat(32);
    let group_b = "b".repeat(32);
    let made = std::process::Command::new(fincore_exe())
        .args(["certs", "--group", &group_a, "--nodes", "1,2", "--dir"])
        .arg(&certs)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let refused = |args: &[&str]| {
        let data = dir.path().join("data");
        let output = std::process::Command::new(fincore_exe())
            .args(["serve", "--insecure-no-auth"])
            .args(testkit::group::FREE_PORTS_ARGS)
            .args([
                "--peer-certs",
                certs.to_str().unwrap(),
                "--data-dir",
                data.to_str().unwrap(),
            ])
            .args(args)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{output:?}");
        assert!(
            !data.join("fincore-format.json").exists(),
            "a refused start wrote data"
        );
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let text = refused(&["--bootstrap", "--group", &group_b]);
    assert!(
        text.contains(&format!("names group {group_a}")) && text.contains(&group_b),
        "{text}"
    );
    let text = refused(&["--join", &group_b, "--node-id", "2"]);
    assert!(text.contains(&format!("names group {group_a}")), "{text}");
    let text = refused(&["--join", &group_a, "--node-id", "3"]);
    assert!(
        text.contains("node-3.pem") && text.contains("--insecure-peers"),
        "{text}"
    );
    // With the right certificate, --bootstrap takes the group its certificate names.
    let data = dir.path().join("data");
    let node = ChildNode::start(
        fincore_exe(),
        &data,
        &[
            "--insecure-no-auth",
            "--peer-certs",
            certs.to_str().unwrap(),
            "--bootstrap",
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let marker = std::fs::read_to_string(data.join("fincore-format.json")).unwrap();
    assert!(marker.contains(&group_a), "{marker}");
    node.stop().unwrap();
}
