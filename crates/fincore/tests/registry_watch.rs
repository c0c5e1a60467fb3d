//! Watchers through the registry: `fincore registry serve --config-meta` relays a real meta
//! replica's config center (a child process), and a client's watch receives its key's value at
//! once and at every change — a set, a gray release choosing the client's zone (and not
//! another zone's client), its promotion; a key not set comes as absent. A registry relaying
//! no config center refuses a watch, and one relaying refuses a bad key and a key outside its
//! `--watch-prefix`es, naming the field.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use registry::client::{ClientConfig, ClientError, PushedValue, RegistryClient};
use testkit::group::GroupLayout;
use testkit::node::ChildNode;
use tokio::sync::watch;

const SETTLE: Duration = Duration::from_secs(20);

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_fincore"))
}

/// `fincore config --meta META ARGS…` as the test kit's admin.
fn config(meta: &str, args: &[&str]) {
    let token = testkit::keys::token().expect("the kit's key");
    let output = std::process::Command::new(exe())
        .args(["config", "--meta", meta, "--api-key", token])
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "fincore config {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn client(addr: &str, id: &str, zone: &str) -> RegistryClient {
    RegistryClient::start(ClientConfig {
        endpoints: vec![addr.to_owned()],
        api_key: testkit::keys::token().map(str::to_owned),
        client_id: id.into(),
        zone: zone.into(),
        tls_ca_pem: None,
    })
    .unwrap()
}

/// Waits (at most `SETTLE`) until the newest value pushed satisfies `wanted`.
async fn sees(
    values: &mut watch::Receiver<Option<Arc<PushedValue>>>,
    what: &str,
    wanted: impl Fn(&PushedValue) -> bool,
) -> Arc<PushedValue> {
    let deadline = Instant::now() + SETTLE;
    loop {
        if let Some(value) = values.borrow_and_update().clone()
            && wanted(&value)
        {
            return value;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let last = values.borrow().clone();
        match tokio::time::timeout(left, values.changed()).await {
            Ok(Ok(())) => {}
            _ => panic!("no push of {what} within {SETTLE:?}; the last was {last:?}"),
        }
    }
}

fn is(value: &str, version: u64, gray: bool) -> impl Fn(&PushedValue) -> bool + '_ {
    move |pushed| {
        pushed.present && pushed.value == value && pushed.version == version && pushed.gray == gray
    }
}

#[test]
fn watchers_receive_the_config_centers_values_through_the_registry() {
    let dir = tempfile::tempdir().unwrap();
    let layout = GroupLayout::on_free_ports(1).unwrap();
    let meta_data = dir.path().join("meta").join("data");
    let mut args = layout.serve_args(0, 1);
    args.extend(layout.membership_args(0, &meta_data));
    let meta_node = ChildNode::start_meta(exe(), &meta_data, &args).unwrap();
    let meta = layout.grpc_addrs[0].clone();
    config(&meta, &["set", "app.timeout", "--value", "3s"]);

    let key_file = dir.path().join("meta.key");
    std::fs::write(&key_file, testkit::keys::token().unwrap()).unwrap();
    let owner_only = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600);
    std::fs::set_permissions(&key_file, owner_only).unwrap();
    let key_file = key_file.to_str().unwrap().to_owned();
    let listen = ["--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"];
    let relay = [
        "--config-meta",
        meta.as_str(),
        "--config-key-file",
        &key_file,
        "--watch-prefix",
        "app.",
    ];
    let registry_node = ChildNode::start_registry(
        exe(),
        &dir.path().join("registry"),
        &[&listen[..], &relay[..]].concat(),
    )
    .unwrap();
    let addr = registry_node.grpc_addr.clone();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let in_a = client(&addr, "app-1", "zone-a");
        let in_b = client(&addr, "app-2", "zone-b");
        let mut a = in_a.watch("w", "app.timeout").await.unwrap();
        let mut b = in_b.watch("w", "app.timeout").await.unwrap();
        let mut missing = in_a.watch("m", "app.missing").await.unwrap();
        sees(&mut a, "3s", is("3s", 1, false)).await;
        sees(&mut b, "3s", is("3s", 1, false)).await;
        sees(&mut missing, "absent", |value| {
            !value.present && value.version == 0
        })
        .await;

        config(&meta, &["set", "app.timeout", "--value", "5s"]);
        sees(&mut a, "5s", is("5s", 2, false)).await;
        sees(&mut b, "5s", is("5s", 2, false)).await;

        // A gray release for zone-a reaches the zone-a client only.
        config(
            &meta,
            &[
                "gray",
                "app.timeout",
                "--value",
                "9s",
                "--label",
                "zone=zone-a",
            ],
        );
        sees(&mut a, "gray 9s", is("9s", 2, true)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            is("5s", 2, false)(&b.borrow().clone().unwrap()),
            "zone-b took the gray release"
        );
        config(&meta, &["promote", "app.timeout"]);
        sees(&mut a, "promoted 9s", is("9s", 3, false)).await;
        sees(&mut b, "promoted 9s", is("9s", 3, false)).await;
        // The key set at last reaches its watcher.
        config(&meta, &["set", "app.missing", "--value", "on"]);
        sees(&mut missing, "on", is("on", 1, false)).await;
    });
    registry_node.stop().unwrap();
    meta_node.stop().unwrap();
}

/// What a registry with `settings` answers a watch of `key`: a refusal, naming its field.
async fn refusal_of_watch(settings: registry::Settings, key: &str) -> registry::Refusal {
    let node = support::registry::open_registry(settings).await;
    let watcher = RegistryClient::start(ClientConfig {
        endpoints: vec![node.grpc_addr().to_string()],
        api_key: None,
        client_id: "w".into(),
        zone: "z".into(),
        tls_ca_pem: None,
    })
    .unwrap();
    let refused = tokio::time::timeout(SETTLE, watcher.watch("w", key))
        .await
        .expect("an answer")
        .expect_err("refused");
    node.stop().await;
    match refused {
        ClientError::Refused(refusal) => refusal,
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_relaying_no_config_center_refuses_a_watch() {
    let refusal = refusal_of_watch(registry::Settings::default(), "app.timeout").await;
    assert_eq!(refusal.field, "watch", "{refusal}");
    // One that relays refuses a bad key naming the field.
    let relaying = registry::Settings {
        watch_prefixes: vec!["app.".into()],
        ..registry::Settings::default()
    };
    let refusal = refusal_of_watch(relaying.clone(), "bad key").await;
    assert_eq!(refusal.field, "watch.key", "{refusal}");
    // And a key outside its prefixes: the config center's other keys are not its readers'.
    let refusal = refusal_of_watch(relaying, "flow.rules").await;
    assert_eq!(refusal.field, "watch.key", "{refusal}");
    assert!(refusal.reason.contains("app."), "{refusal}");
}
