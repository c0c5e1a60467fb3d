//! The service registry over real sockets: publishers and subscribers through the Rust client
//! against `server::registry_node` (in this process), and `fincore registry` as a child process
//! killed and started again. Checks what a subscriber sees (every change pushed, zones, a
//! publisher's end), who may do what, hostile streams, and convergence after restarts and
//! dropped pushes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

mod support;

use registry::client::{ClientConfig, ClientError, PushedSet, RegistryClient};
use registry::proto;
use server::auth::{Auth, KeyStore, KeysFile, Role};
use server::registry_node::RegistryNode;
use tokio::sync::watch;

const SETTLE: Duration = Duration::from_secs(15);

fn key(data_id: &str) -> proto::DataKey {
    proto::DataKey {
        instance_id: "tenant-a".into(),
        group: "payments".into(),
        data_id: data_id.into(),
    }
}

fn record(address: &str) -> proto::Record {
    proto::Record {
        address: address.into(),
        attributes: vec![
            proto::Attribute {
                key: "protocol".into(),
                value: "grpc".into(),
            },
            proto::Attribute {
                key: "weight".into(),
                value: "100".into(),
            },
        ],
    }
}

fn client(addr: SocketAddr, id: &str, zone: &str, api_key: Option<&str>) -> RegistryClient {
    RegistryClient::start(ClientConfig {
        endpoints: vec![addr.to_string()],
        api_key: api_key.map(str::to_owned),
        client_id: id.into(),
        zone: zone.into(),
        tls_ca_pem: None,
    })
    .expect("a valid config")
}

fn addresses(set: &PushedSet) -> Vec<String> {
    let mut addresses: Vec<String> = set
        .records
        .iter()
        .map(|published| published.record.as_ref().expect("a record").address.clone())
        .collect();
    addresses.sort();
    addresses
}

/// Waits (at most `SETTLE`) until the newest set pushed has exactly `wanted` addresses.
async fn converges(sets: &mut watch::Receiver<Option<Arc<PushedSet>>>, wanted: &[&str]) -> u64 {
    let mut wanted: Vec<String> = wanted.iter().map(|a| (*a).to_owned()).collect();
    wanted.sort();
    let deadline = Instant::now() + SETTLE;
    loop {
        if let Some(set) = sets.borrow_and_update().clone()
            && addresses(&set) == wanted
        {
            return set.version;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let seen = sets.borrow().as_ref().map(|set| addresses(set));
        match tokio::time::timeout(left, sets.changed()).await {
            Ok(Ok(())) => {}
            _ => panic!("no push of {wanted:?} within {SETTLE:?}; the last was {seen:?}"),
        }
    }
}

/// A gRPC client of the registry's protocol with no help from the Rust client.
async fn raw_client(
    addr: SocketAddr,
) -> proto::registry_client::RegistryClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    proto::registry_client::RegistryClient::new(channel)
}

async fn open_node() -> RegistryNode {
    support::registry::open_registry(registry::Settings::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_sees_every_change_and_a_publishers_end() {
    let node = open_node().await;
    let addr = node.grpc_addr();
    let publisher = client(addr, "pub-1", "zone-a", None);
    let other = client(addr, "pub-2", "zone-a", None);
    let subscriber = client(addr, "sub-1", "zone-a", None);

    let mut sets = subscriber
        .subscribe("s", key("pay.api"), proto::Scope::Global)
        .await
        .unwrap();
    publisher
        .register("r1", key("pay.api"), record("10.0.0.1:8080"))
        .await
        .unwrap();
    publisher
        .register("r2", key("pay.api"), record("10.0.0.2:8080"))
        .await
        .unwrap();
    other
        .register("r1", key("pay.api"), record("10.0.0.3:8080"))
        .await
        .unwrap();
    let first = converges(
        &mut sets,
        &["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"],
    )
    .await;

    // A registration replaced keeps one record; versions only grow.
    publisher
        .register("r2", key("pay.api"), record("10.0.0.9:8080"))
        .await
        .unwrap();
    let second = converges(
        &mut sets,
        &["10.0.0.1:8080", "10.0.0.3:8080", "10.0.0.9:8080"],
    )
    .await;
    assert!(second > first);
    // Moved to another key: gone from this one.
    publisher
        .register("r1", key("other.api"), record("10.0.0.1:8080"))
        .await
        .unwrap();
    converges(&mut sets, &["10.0.0.3:8080", "10.0.0.9:8080"]).await;
    publisher.unregister("r2").await.unwrap();
    converges(&mut sets, &["10.0.0.3:8080"]).await;

    // A process that ends takes its records with it.
    drop(other);
    converges(&mut sets, &[]).await;
    let set = sets.borrow().clone().unwrap();
    assert!(set.records.is_empty());

    // Another subscriber of the same key gets the current set at once.
    let late = client(addr, "sub-2", "zone-b", None);
    let mut late_sets = late
        .subscribe("s", key("other.api"), proto::Scope::Global)
        .await
        .unwrap();
    converges(&mut late_sets, &["10.0.0.1:8080"]).await;
    let stats = &node.registry().stats;
    assert!(stats.pushes.load(Ordering::Relaxed) >= 6);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zone_scope_sees_its_zone_and_big_sets_go_compressed() {
    let node = open_node().await;
    let addr = node.grpc_addr();
    let east = client(addr, "pub-east", "east", None);
    let west = client(addr, "pub-west", "west", None);
    let local = client(addr, "sub-east", "east", None);
    let mut zone_sets = local
        .subscribe("mine", key("svc"), proto::Scope::Zone)
        .await
        .unwrap();
    let mut global_sets = local
        .subscribe("all", key("svc"), proto::Scope::Global)
        .await
        .unwrap();
    let mut everything = Vec::new();
    for n in 0..300 {
        let address = format!("10.{}.{}.{}:8080", n % 2, n / 250, n % 250);
        let publisher = if n % 2 == 0 { &east } else { &west };
        publisher
            .register(&format!("r{n}"), key("svc"), record(&address))
            .await
            .unwrap();
        everything.push(address);
    }
    let east_only: Vec<&str> = everything.iter().step_by(2).map(String::as_str).collect();
    let all: Vec<&str> = everything.iter().map(String::as_str).collect();
    converges(&mut zone_sets, &east_only).await;
    converges(&mut global_sets, &all).await;
    let stats = &node.registry().stats;
    let plain = stats.push_plain_bytes.load(Ordering::Relaxed);
    let sent = stats.push_sent_bytes.load(Ordering::Relaxed);
    assert!(
        sent * 4 < plain,
        "pushes went compressed: {sent} bytes for {plain}"
    );
    node.stop().await;
}

fn keys_with_roles(dir: &std::path::Path) -> (Auth, String, String, String) {
    let path = dir.join("keys.json");
    let mut file = KeysFile::load_or_new(&path).unwrap();
    let (_, read) = file.create(Role::Read, Some("reader")).unwrap();
    let (_, write) = file.create(Role::Write, Some("writer")).unwrap();
    let (_, admin) = file.create(Role::Admin, Some("operator")).unwrap();
    file.save().unwrap();
    let store = KeyStore::open(&path).unwrap();
    (Auth::Keys(Arc::new(store)), read, write, admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_decide_who_subscribes_publishes_and_drains() {
    let dir = tempfile::tempdir().unwrap();
    let (auth, read, write, admin) = keys_with_roles(dir.path());
    let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let node = RegistryNode::start(listen, listen, auth, registry::Settings::default(), None)
        .await
        .unwrap();
    let addr = node.grpc_addr();

    // No key, or a made-up one: the stream is refused before it carries anything.
    for api_key in [
        None,
        Some("fincore_0000000000000000000000000000000000000000000000000000000000000000"),
    ] {
        let mut grpc = raw_client(addr).await;
        let hello = proto::ClientMessage {
            request_id: 0,
            body: Some(proto::client_message::Body::Hello(proto::Hello {
                client_id: "x".into(),
                zone: "z".into(),
                accept: vec![],
            })),
        };
        let mut request = tonic::Request::new(futures::stream::iter(vec![hello]));
        if let Some(api_key) = api_key {
            request.metadata_mut().insert(
                "authorization",
                format!("Bearer {api_key}").parse().unwrap(),
            );
        }
        let status = grpc.session(request).await.expect_err("refused");
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status}");
    }

    // The Rust client with a wrong key tells its caller why, instead of waiting forever.
    let stranger = client(addr, "stranger", "z", Some("fincore_not-a-key"));
    let refused = tokio::time::timeout(
        SETTLE,
        stranger.register("r", key("svc"), record("10.0.0.9:1")),
    )
    .await
    .expect("answered");
    assert!(
        matches!(&refused, Err(ClientError::StreamRefused(why)) if why.contains("unknown API key")),
        "{refused:?}"
    );

    let reader = client(addr, "reader", "z", Some(&read));
    let mut sets = reader
        .subscribe("s", key("svc"), proto::Scope::Global)
        .await
        .unwrap();
    let refused = reader.register("r", key("svc"), record("10.0.0.1:1")).await;
    let Err(ClientError::Refused(refusal)) = refused else {
        panic!("a read key published: {refused:?}");
    };
    assert_eq!(refusal.field, "register");
    assert!(refusal.reason.contains("role write"), "{refusal}");

    let writer = client(addr, "writer", "z", Some(&write));
    writer
        .register("r", key("svc"), record("10.0.0.1:1"))
        .await
        .unwrap();
    converges(&mut sets, &["10.0.0.1:1"]).await;
    // Another key using the same client id and registration id is another publisher: it
    // neither replaces the writer's record nor, by ending, removes it.
    let impostor = client(addr, "writer", "z", Some(&admin));
    impostor
        .register("r", key("svc"), record("10.0.0.5:1"))
        .await
        .unwrap();
    converges(&mut sets, &["10.0.0.1:1", "10.0.0.5:1"]).await;
    drop(impostor);
    converges(&mut sets, &["10.0.0.1:1"]).await;
    let refused = writer.drain_host("127.0.0.1", 0).await;
    assert!(
        matches!(&refused, Err(ClientError::Refused(r)) if r.field == "drain_host"),
        "{refused:?}"
    );

    // An admin drains the host every test client runs on: its records go, and its streams may
    // publish nothing more; a new stream may.
    let operator = client(addr, "operator", "z", Some(&admin));
    assert_eq!(operator.drain_host("127.0.0.1", 0).await.unwrap(), 1);
    converges(&mut sets, &[]).await;
    let refused = writer
        .register("r2", key("svc"), record("10.0.0.2:1"))
        .await;
    assert!(
        matches!(&refused, Err(ClientError::Refused(r)) if r.reason.contains("drained")),
        "{refused:?}"
    );
    let refused = operator.drain_host("not-an-ip", 0).await;
    assert!(
        matches!(&refused, Err(ClientError::Refused(r)) if r.field == "drain_host.ip"),
        "{refused:?}"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_naming_the_field_and_change_nothing() {
    let node = open_node().await;
    let addr = node.grpc_addr();
    let publisher = client(addr, "pub", "z", None);
    let subscriber = client(addr, "sub", "z", None);
    let mut sets = subscriber
        .subscribe("s", key("svc"), proto::Scope::Global)
        .await
        .unwrap();
    publisher
        .register("good", key("svc"), record("10.0.0.1:1"))
        .await
        .unwrap();
    converges(&mut sets, &["10.0.0.1:1"]).await;

    let mut bad_key = key("svc");
    bad_key.data_id = "has space".into();
    let mut too_many = record("10.0.0.2:1");
    too_many.attributes = (0..33)
        .map(|n| proto::Attribute {
            key: format!("k{n}"),
            value: "v".into(),
        })
        .collect();
    let cases = [
        (
            "bad key",
            key("svc"),
            record("10.0.0.2:1"),
            "x y",
            "register.registration_id",
        ),
        (
            "bad data id",
            bad_key,
            record("10.0.0.2:1"),
            "r",
            "register.key.data_id",
        ),
        (
            "no address",
            key("svc"),
            record(""),
            "r",
            "register.record.address",
        ),
        (
            "attributes",
            key("svc"),
            too_many,
            "r",
            "register.record.attributes",
        ),
        (
            "long address",
            key("svc"),
            record(&"1".repeat(257)),
            "r",
            "register.record.address",
        ),
    ];
    for (what, key, record, registration_id, field) in cases {
        let refused = publisher.register(registration_id, key, record).await;
        match refused {
            Err(ClientError::Refused(refusal)) => {
                assert_eq!(refusal.field, field, "{what}: {refusal}")
            }
            other => panic!("{what}: {other:?}"),
        }
    }
    let refused = subscriber
        .subscribe("s2", key("svc"), proto::Scope::Unspecified)
        .await;
    assert!(
        matches!(&refused, Err(ClientError::Refused(r)) if r.field == "subscribe.scope"),
        "{refused:?}"
    );
    assert_eq!(
        node.registry().store().publishers(),
        1,
        "nothing stored by a refusal"
    );
    // The set is still the good one, at the same version.
    let version = sets.borrow().as_ref().unwrap().version;
    assert_eq!(
        node.registry()
            .store()
            .version(&registry::DataKey::new("tenant-a", "payments", "svc")),
        version
    );

    // A raw stream whose first message is not a hello is refused; so is one too large.
    let mut grpc = raw_client(addr).await;
    let not_hello = proto::ClientMessage {
        request_id: 0,
        body: Some(proto::client_message::Body::Unregister(proto::Unregister {
            registration_id: "x".into(),
        })),
    };
    let status = grpc
        .session(futures::stream::iter(vec![not_hello]))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
    assert!(status.message().starts_with("hello:"), "{status}");
    let huge = proto::ClientMessage {
        request_id: 0,
        body: Some(proto::client_message::Body::Hello(proto::Hello {
            client_id: "x".repeat(100_000),
            zone: "z".into(),
            accept: vec![],
        })),
    };
    let status = grpc
        .session(futures::stream::iter(vec![huge]))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status}");
    assert_eq!(
        node.registry().sessions(),
        2,
        "only the two clients' streams are open"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_pushes_are_repaired_by_retries_and_reconciliation() {
    let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let settings = registry::Settings {
        drop_pushes_one_in: 2,
        reconcile: Duration::from_secs(1),
        ..registry::Settings::default()
    };
    let node = RegistryNode::start(listen, listen, Auth::Open, settings, None)
        .await
        .unwrap();
    let addr = node.grpc_addr();
    let publisher = client(addr, "pub", "z", None);
    let subscribers: Vec<RegistryClient> = (0..4)
        .map(|n| client(addr, &format!("sub-{n}"), "z", None))
        .collect();
    let mut sets = Vec::new();
    for subscriber in &subscribers {
        sets.push(
            subscriber
                .subscribe("s", key("svc"), proto::Scope::Global)
                .await
                .unwrap(),
        );
    }
    let mut wanted = Vec::new();
    for n in 0..20 {
        let address = format!("10.0.0.{n}:80");
        publisher
            .register(&format!("r{n}"), key("svc"), record(&address))
            .await
            .unwrap();
        wanted.push(address);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let wanted: Vec<&str> = wanted.iter().map(String::as_str).collect();
    for sets in &mut sets {
        converges(sets, &wanted).await;
    }
    let stats = &node.registry().stats;
    assert!(stats.pushes_dropped.load(Ordering::Relaxed) > 0);
    assert!(
        stats.push_retries.load(Ordering::Relaxed) + stats.reconciled.load(Ordering::Relaxed) > 0,
        "the repair came from a retry or a reconciliation"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_reconnect_and_register_again_after_a_registry_restart() {
    let node = open_node().await;
    let addr = node.grpc_addr();
    let publisher = client(addr, "pub", "z", None);
    let subscriber = client(addr, "sub", "z", None);
    let mut sets = subscriber
        .subscribe("s", key("svc"), proto::Scope::Global)
        .await
        .unwrap();
    publisher
        .register("a", key("svc"), record("10.0.0.1:80"))
        .await
        .unwrap();
    publisher
        .register("b", key("svc"), record("10.0.0.2:80"))
        .await
        .unwrap();
    let before = converges(&mut sets, &["10.0.0.1:80", "10.0.0.2:80"]).await;

    node.stop().await;
    // Changed while no registry runs: the change waits, is never overtaken by the replay of its
    // older copy, and its caller is answered once a registry is back.
    let publisher = Arc::new(publisher);
    let changing = Arc::clone(&publisher);
    let change = tokio::spawn(async move {
        changing
            .register("b", key("svc"), record("10.0.0.3:80"))
            .await
    });
    let withdrawn = Arc::clone(&publisher);
    let withdraw = tokio::spawn(async move {
        withdrawn
            .register("c", key("svc"), record("10.0.0.4:80"))
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    publisher.unregister("c").await.unwrap();
    assert_eq!(withdraw.await.unwrap(), Err(ClientError::Withdrawn));
    assert!(!change.is_finished(), "answered with no registry running");
    // A registry started empty on the same address: the clients find it and replay.
    let node = RegistryNode::start(
        addr,
        "127.0.0.1:0".parse().unwrap(),
        Auth::Open,
        registry::Settings::default(),
        None,
    )
    .await
    .expect("the same port again");
    tokio::time::timeout(SETTLE, change)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let after = converges(&mut sets, &["10.0.0.1:80", "10.0.0.3:80"]).await;
    assert!(
        after > before,
        "versions grow across a restart: {before} then {after}"
    );
    assert_eq!(node.registry().store().publishers(), 2);
    node.stop().await;
}

/// A `fincore registry subscribe` child and the sets it prints, one JSON line each.
struct CliSubscriber {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl CliSubscriber {
    fn start(registry: &str, token: &str) -> CliSubscriber {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_fincore"))
            .args([
                "registry",
                "subscribe",
                "--registry",
                registry,
                "--data-id",
                "pay.api",
            ])
            .env("FINCORE_API_KEY", token)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (send, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if send.send(line).is_err() {
                    return;
                }
            }
        });
        CliSubscriber { child, lines }
    }

    /// Waits (at most `SETTLE`) for a printed set with exactly these addresses.
    fn sees(&self, wanted: &[&str]) {
        let deadline = Instant::now() + SETTLE;
        let mut last = String::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Ok(line) = self.lines.recv_timeout(left) else {
                break;
            };
            let set: serde_json::Value = serde_json::from_str(&line).unwrap();
            let mut addresses: Vec<&str> = set["records"]
                .as_array()
                .unwrap()
                .iter()
                .map(|record| record["address"].as_str().unwrap())
                .collect();
            addresses.sort();
            if addresses == wanted {
                return;
            }
            last = line;
        }
        panic!("the CLI printed no set of {wanted:?} within {SETTLE:?}; the last: {last}");
    }
}

impl Drop for CliSubscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child process killed when dropped (a failing test leaves none behind).
struct Killed(std::process::Child);

impl Killed {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        self.kill();
    }
}

fn cli_publisher(registry: &str, token: &str, address: &str) -> Killed {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_fincore"))
        .args([
            "registry",
            "publish",
            "--registry",
            registry,
            "--data-id",
            "pay.api",
        ])
        .args(["--address", address, "--attribute", "weight=100"])
        .env("FINCORE_API_KEY", token)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    Killed(child)
}

#[test]
fn the_cli_publishes_and_subscribes_across_a_kill_9_of_the_registry() {
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_fincore"));
    let dir = tempfile::tempdir().unwrap();
    let registry_dir = dir.path().join("registry");
    let listen = ["--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"];
    let node = testkit::node::ChildNode::start_registry(exe, &registry_dir, &listen).unwrap();
    let token = testkit::keys::token().expect("the kit's key").to_owned();
    let addr = node.grpc_addr.clone();

    let subscriber = CliSubscriber::start(&addr, &token);
    let mut first = cli_publisher(&addr, &token, "10.0.0.1:8080");
    let mut second = cli_publisher(&addr, &token, "10.0.0.2:8080");
    subscriber.sees(&["10.0.0.1:8080", "10.0.0.2:8080"]);
    // kill -9 of a publisher: its stream ends, its record goes.
    first.kill();
    subscriber.sees(&["10.0.0.2:8080"]);

    // The registry's /metrics (sampled each second) counts what it holds and what it pushed.
    let deadline = Instant::now() + SETTLE;
    loop {
        let metrics = testkit::http::get(&node.http_addr, "/metrics")
            .unwrap()
            .body;
        let value = |series| testkit::http::metric_value(&metrics, series);
        let pushed = value("fincore_registry_pushes_total").is_some_and(|pushes| pushes > 0.0);
        if value("fincore_registry_publishers") == Some(1.0) && pushed {
            break;
        }
        assert!(Instant::now() < deadline, "{metrics}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // kill -9 of the registry; one started empty on the same address is filled again by the
    // clients' replay, and the subscriber sees the publisher that still runs.
    node.kill9();
    let listen = ["--listen", addr.as_str(), "--http", "127.0.0.1:0"];
    let node = testkit::node::ChildNode::start_registry(exe, &registry_dir, &listen).unwrap();
    let mut third = cli_publisher(&addr, &token, "10.0.0.3:8080");
    subscriber.sees(&["10.0.0.2:8080", "10.0.0.3:8080"]);
    second.kill();
    third.kill();
    subscriber.sees(&[]);
    node.stop().unwrap();
}

/// Makes a development authority and a certificate for 127.0.0.1 in `dir`; the authority (PEM).
fn api_certificates(dir: &std::path::Path) -> Vec<u8> {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_fincore"))
        .args(["certs", "--dir"])
        .arg(dir)
        .args(["--api-names", "127.0.0.1,localhost"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    std::fs::read(dir.join("api-ca.pem")).unwrap()
}

#[test]
fn over_tls_the_registry_serves_clients_trusting_its_authority_and_no_others() {
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_fincore"));
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    let ca = api_certificates(&tls);
    let other_ca = api_certificates(&dir.path().join("other"));
    let (cert, private_key) = (tls.join("api.pem"), tls.join("api.key"));
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        private_key.to_str().unwrap(),
    ];
    let node =
        testkit::node::ChildNode::start_registry(exe, &dir.path().join("registry"), &args).unwrap();
    let token = testkit::keys::token().expect("the kit's key");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let start = |ca: Option<Vec<u8>>, id: &str| {
            RegistryClient::start(ClientConfig {
                endpoints: vec![node.grpc_addr.clone()],
                api_key: Some(token.to_owned()),
                client_id: id.into(),
                zone: "z".into(),
                tls_ca_pem: ca,
            })
            .unwrap()
        };
        // Trusting the registry's authority: publish and subscribe as ever.
        let trusting = start(Some(ca), "trusting");
        trusting
            .register("r", key("tls.api"), record("10.0.0.1:443"))
            .await
            .unwrap();
        let mut sets = trusting
            .subscribe("s", key("tls.api"), proto::Scope::Global)
            .await
            .unwrap();
        converges(&mut sets, &["10.0.0.1:443"]).await;

        // Plaintext, or trusting another authority: never connected, nothing registered.
        let plaintext = start(None, "plaintext");
        let stranger = start(Some(other_ca), "stranger");
        for client in [&plaintext, &stranger] {
            let attempt = client.register("x", key("tls.api"), record("10.6.6.6:1"));
            assert!(
                tokio::time::timeout(Duration::from_secs(2), attempt)
                    .await
                    .is_err(),
                "registered without trusting the registry"
            );
            assert!(!*client.connected().borrow());
        }
        converges(&mut sets, &["10.0.0.1:443"]).await;
    });
    node.stop().unwrap();
}
