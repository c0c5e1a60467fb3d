//! `fincore cdc` through the real binary, a real node and the real NATS JetStream on
//! 127.0.0.1:4222 (`scripts/services` starts it): every event published once, in order, with
//! the node's own JSON and `<group>:<seq>` ids; a publisher killed with SIGKILL at random
//! moments under load, two publishers at once (one stalled past the duplicate window), and the
//! loss of the replica a publisher follows, still leave exactly events 1..=last in the stream;
//! and the broker itself refuses a gap or a repeat. Each test has a subject prefix and
//! stream of its own, deleted at its end.

#[path = "support/nats_test.rs"]
mod nats_test;
mod support;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage as Publish;
use async_nats::jetstream::stream::Stream;
use client::RetryPolicy;
use ledger::{CreateTransferResult as TR, Transfer, TransferFlags};
use nats_test::NATS_URL;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use support::{ChildNode, fincore_exe};
use testkit::group::GroupLayout;
use testkit::http::request_as;

const GROUP: &str = "g1";
const ACCOUNTS: u128 = 8;

/// A group's nodes (one, or a group of three), a key for reading events, and the NATS names of
/// this test (deleted when dropped).
struct Setup {
    _dir: tempfile::TempDir,
    nodes: Vec<Option<ChildNode>>,
    grpc_addrs: Vec<String>,
    http_addrs: Vec<String>,
    read_key: String,
    logs: std::path::PathBuf,
    prefix: String,
    stream_name: String,
    runtime: tokio::runtime::Runtime,
    js: async_nats::jetstream::Context,
}

impl Setup {
    /// A node of its own, read with a key of role `read`.
    fn new(test: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let node = support::start_node(&data);
        let read_key = support::create_key(&data.with_extension("keys"), "read");
        node.signal(testkit::node::Signal::Hup).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while request_as(
            Some(&read_key),
            &node.http_addr,
            "GET",
            "/v1/events",
            None,
            "",
        )
        .unwrap()
        .status
            != 200
        {
            assert!(Instant::now() < deadline, "the read key was not loaded");
            std::thread::sleep(Duration::from_millis(20));
        }
        let (grpc, http) = (node.grpc_addr.clone(), node.http_addr.clone());
        Setup::with(
            test,
            dir,
            vec![Some(node)],
            vec![grpc],
            vec![http],
            read_key,
        )
    }

    /// A group of three replicas, read with the test nodes' key.
    fn group(test: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let layout = GroupLayout::on_free_ports(3).unwrap();
        let nodes = (0..3)
            .map(|i| {
                let data = dir.path().join(format!("node-{i}"));
                let mut args = layout.serve_args(i, 3);
                args.extend(layout.membership_args(i, &data));
                Some(
                    ChildNode::start(fincore_exe(), &data, &args).unwrap_or_else(|e| panic!("{e}")),
                )
            })
            .collect();
        let key = testkit::keys::token().expect("the nodes' key").to_string();
        let (grpc, http) = (layout.grpc_addrs.clone(), layout.http_addrs.clone());
        Setup::with(test, dir, nodes, grpc, http, key)
    }

    fn with(
        test: &str,
        dir: tempfile::TempDir,
        nodes: Vec<Option<ChildNode>>,
        grpc_addrs: Vec<String>,
        http_addrs: Vec<String>,
        read_key: String,
    ) -> Setup {
        let unique = support::unique_name(test);
        let prefix = format!("test.{unique}");
        let stream_name = format!("test-{unique}-{GROUP}-events");
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let js = nats_test::connect(&runtime);
        let logs = dir.path().join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        Setup {
            _dir: dir,
            nodes,
            grpc_addrs,
            http_addrs,
            read_key,
            logs,
            prefix,
            stream_name,
            runtime,
            js,
        }
    }

    /// `fincore cdc` for this test's node and names, its log in `logs/<name>.log`.
    fn publisher(&self, name: &str, in_flight: usize, extra: &[&str]) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.join(format!("{name}.log")))
            .unwrap();
        let replicas: Vec<String> = self
            .grpc_addrs
            .iter()
            .map(|addr| format!("http://{addr}"))
            .collect();
        Command::new(fincore_exe())
            .args(["cdc", "--nats", NATS_URL, "--group"])
            .arg(format!("{GROUP}={}", replicas.join(",")))
            .args(["--subject-prefix", &self.prefix])
            .args(["--in-flight", &in_flight.to_string()])
            .args(extra)
            .env("FINCORE_API_KEY", &self.read_key)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.logs.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// The node's last event.
    fn node_last_seq(&self) -> u64 {
        self.node_page(0, 1)["last_seq"].as_u64().unwrap()
    }

    /// A page of a live node's events.
    fn node_page(&self, after: u64, limit: usize) -> Value {
        let live = (0..self.nodes.len())
            .find(|&i| self.nodes[i].is_some())
            .expect("a live node");
        let answer = request_as(
            Some(&self.read_key),
            &self.http_addrs[live],
            "GET",
            &format!("/v1/events?after={after}&limit={limit}"),
            None,
            "",
        )
        .unwrap();
        assert_eq!(answer.status, 200, "{answer:?}");
        answer.json().unwrap()
    }

    /// Every event the node serves, from 1.
    fn node_events(&self) -> Vec<Value> {
        let mut events = Vec::new();
        loop {
            let page = self.node_page(events.len() as u64, 4096);
            let batch = page["events"].as_array().unwrap();
            if batch.is_empty() {
                return events;
            }
            events.extend(batch.iter().cloned());
        }
    }

    fn stream(&self) -> Stream {
        self.runtime
            .block_on(self.js.get_stream(&self.stream_name))
            .unwrap()
    }

    /// The stream's (messages, last sequence), or none while it does not exist.
    fn stream_state(&self) -> Option<(u64, u64)> {
        let stream = self
            .runtime
            .block_on(self.js.get_stream(&self.stream_name))
            .ok()?;
        let state = &stream.cached_info().state;
        Some((state.messages, state.last_sequence))
    }

    /// Waits (bounded) until the stream has caught up with the node's last event.
    fn wait_caught_up(&self, publishers: &[&str]) -> u64 {
        let last = self.node_last_seq();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some((_, stream_last)) = self.stream_state()
                && stream_last >= last
            {
                return last;
            }
            assert!(
                Instant::now() < deadline,
                "the stream did not reach seq {last}: {:?}; logs: {}",
                self.stream_state(),
                publishers.iter().map(|p| self.log(p)).collect::<String>()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The stream holds exactly the node's events 1..=last: message N at stream sequence N,
    /// id `g1:N`, body the node's JSON of event N.
    fn check_stream_equals_node(&self, last: u64) {
        let events = self.node_events();
        assert_eq!(events.len() as u64, last, "the node's events are 1..=last");
        let stream = self.stream();
        assert_eq!(
            (
                stream.cached_info().state.messages,
                stream.cached_info().state.last_sequence
            ),
            (last, last),
            "the stream holds more or fewer messages than events"
        );
        let subject = format!("{}.{GROUP}.events", self.prefix);
        self.runtime.block_on(async {
            for (at, event) in events.iter().enumerate() {
                let seq = at as u64 + 1;
                let message = stream.get_raw_message(seq).await.unwrap();
                assert_eq!(message.sequence, seq);
                assert_eq!(message.subject.as_str(), subject);
                let id = message
                    .headers
                    .get("Nats-Msg-Id")
                    .map(|v| v.as_str().to_string());
                assert_eq!(id, Some(format!("{GROUP}:{seq}")), "message {seq}");
                let body: Value = serde_json::from_slice(&message.payload).unwrap();
                assert_eq!(&body, event, "message {seq}'s body is not the node's event");
            }
        });
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = self
            .runtime
            .block_on(self.js.delete_stream(&self.stream_name));
    }
}

/// One batch from id `base`: plain transfers, a pending one and the post of the previous
/// batch's pending one.
fn batch(base: u128, size: u128, previous_pending: Option<u128>) -> Vec<Transfer> {
    let mut batch: Vec<Transfer> = (base..base + size)
        .map(|id| testkit::transfer(id, id % ACCOUNTS + 1, (id + 3) % ACCOUNTS + 1, id % 9 + 1))
        .collect();
    let pending = base + size;
    batch.push(Transfer {
        flags: TransferFlags::PENDING,
        ..testkit::transfer(pending, 1, 2, 5)
    });
    if let Some(pending_id) = previous_pending {
        batch.push(Transfer {
            id: pending + 1,
            pending_id,
            amount: u128::MAX,
            flags: TransferFlags::POST_PENDING_TRANSFER,
            ..Transfer::default()
        });
    }
    batch
}

/// Writes `batches` batches of about `size` transfers to the nodes at `grpc` (`A,B,…`); stops
/// early when `stop` is set.
fn write(grpc: &str, batches: u128, size: u128, pause: Duration, stop: &AtomicBool) {
    let urls: Vec<String> = grpc.split(',').map(|a| format!("http://{a}")).collect();
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = support::connect_any(&urls, RetryPolicy::default()).unwrap();
        client
            .create_accounts(&support::ledger_accounts(ACCOUNTS))
            .await
            .unwrap();
        let mut previous = None;
        for b in 0..batches {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let base = 1 + b * (size + 2);
            for result in client
                .create_transfers(&batch(base, size, previous))
                .await
                .unwrap()
            {
                // `exists`: a batch sent again across a leader change.
                assert!(
                    matches!(result.result, TR::Created | TR::Exists),
                    "{}",
                    result.result
                );
            }
            previous = Some(base + size);
            tokio::time::sleep(pause).await;
        }
    });
}

fn kill9(mut child: Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn every_event_is_published_once_in_order_with_the_nodes_json_and_its_id() {
    let setup = Setup::new("once");
    write(
        &setup.grpc_addrs[0],
        20,
        50,
        Duration::ZERO,
        &AtomicBool::new(false),
    );
    let metrics_addr = testkit::free_addrs(1).unwrap().remove(0);
    let publisher = setup.publisher("once", 64, &["--metrics", &metrics_addr]);
    let last = setup.wait_caught_up(&["once"]);
    // More events while it runs: followed live.
    let url = format!("http://{}", setup.grpc_addrs[0]);
    setup.runtime.block_on(async {
        let client = support::connect(&url, RetryPolicy::default()).unwrap();
        let more: Vec<Transfer> = (100_000..100_100)
            .map(|id| testkit::transfer(id, 1, 2, 1))
            .collect();
        client.create_transfers(&more).await.unwrap();
    });
    let last_live = setup.wait_caught_up(&["once"]);
    assert!(last_live > last);
    // Its metrics say as much: published up to the node's last event, no lag (the head is
    // read every second), every event counted; and the text passes promtool.
    let series = |name: &str| format!("{name}{{group=\"{GROUP}\"}}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = support::get(&metrics_addr, "/metrics").body;
        let value = |name: &str| testkit::http::metric_value(&text, &series(name));
        if value("fincore_cdc_seq") == Some(last_live as f64)
            && value("fincore_cdc_source_seq") == Some(last_live as f64)
            && value("fincore_cdc_lag_events") == Some(0.0)
        {
            assert_eq!(
                value("fincore_cdc_events_total"),
                Some(last_live as f64),
                "{text}"
            );
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the publisher's metrics never caught up:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    support::run_promtool(&["check", "metrics"], Some(&text));
    std::thread::sleep(Duration::from_millis(300)); // nothing more is published
    kill9(publisher);
    setup.check_stream_equals_node(last_live);
    // Restarted with nothing new to publish, it resumes from the stream's tail: caught up, with
    // no lag and nothing published by itself.
    let metrics_addr = testkit::free_addrs(1).unwrap().remove(0);
    let again = setup.publisher("once", 64, &["--metrics", &metrics_addr]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = testkit::http::get(&metrics_addr, "/metrics")
            .map(|answer| answer.body)
            .unwrap_or_default();
        let value = |name: &str| testkit::http::metric_value(&text, &series(name));
        if value("fincore_cdc_seq") == Some(last_live as f64)
            && value("fincore_cdc_source_seq") == Some(last_live as f64)
        {
            assert_eq!(value("fincore_cdc_lag_events"), Some(0.0), "{text}");
            assert_eq!(value("fincore_cdc_events_total"), Some(0.0), "{text}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a restarted publisher never showed where it resumed:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    kill9(again);
    eprintln!("{last_live} events published once each, in order");
}

#[test]
fn a_publisher_killed_at_random_moments_under_load_leaves_no_gap_and_no_repeat() {
    let setup = Setup::new("kill");
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("seed {seed}");
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let writing = AtomicBool::new(false);
    let grpc = setup.grpc_addrs.join(",");
    std::thread::scope(|s| {
        let writer = s.spawn(|| write(&grpc, 300, 100, Duration::from_millis(10), &writing));
        for round in 0..5 {
            let publisher = setup.publisher("kill", 1 + rng.random_range(0..2048), &[]);
            std::thread::sleep(Duration::from_millis(rng.random_range(150..900)));
            kill9(publisher);
            eprintln!("round {round}: killed at {:?}", setup.stream_state());
        }
        writing.store(true, Ordering::Relaxed);
        writer.join().unwrap();
    });
    let publisher = setup.publisher("kill", 512, &[]);
    let last = setup.wait_caught_up(&["kill"]);
    std::thread::sleep(Duration::from_millis(300));
    kill9(publisher);
    setup.check_stream_equals_node(last);
    eprintln!("{last} events, exactly once each, after five kill -9");
}

#[test]
fn two_publishers_at_once_leave_no_gap_and_no_repeat() {
    let setup = Setup::new("two");
    let grpc = setup.grpc_addrs.join(",");
    std::thread::scope(|s| {
        let writer = s.spawn(|| {
            write(
                &grpc,
                150,
                100,
                Duration::from_millis(5),
                &AtomicBool::new(false),
            )
        });
        // A 1 s duplicate window: a publisher that falls further behind is refused (wrong last
        // sequence) rather than answered `duplicate`.
        let a = setup.publisher("a", 32, &["--duplicate-window-seconds", "1"]);
        let b = setup.publisher("b", 256, &["--duplicate-window-seconds", "1"]);
        for _ in 0..2 {
            // b stalls while a goes on, then wakes with stale publishes and pages.
            std::thread::sleep(Duration::from_millis(500));
            signal(&b, "-STOP");
            std::thread::sleep(Duration::from_millis(1500));
            signal(&b, "-CONT");
        }
        writer.join().unwrap();
        let last = setup.wait_caught_up(&["a", "b"]);
        std::thread::sleep(Duration::from_millis(300));
        kill9(a);
        kill9(b);
        setup.check_stream_equals_node(last);
        let count = |log: &str, text: &str| log.matches(text).count();
        let (log_a, log_b) = (setup.log("a"), setup.log("b"));
        let refused = count(&log_b, "wrong last sequence");
        let duplicates =
            count(&log_a, "in the stream already") + count(&log_b, "in the stream already");
        eprintln!(
            "{last} events, exactly once each, from two publishers (b refused {refused} times; {duplicates} runs met the other's messages)"
        );
        assert!(refused > 0, "b never lost a race after its stalls: {log_b}");
    });
}

/// Sends `signal` (`-STOP`, `-CONT`) to a publisher this test started.
fn signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn the_broker_itself_refuses_a_gap_and_a_repeat() {
    let setup = Setup::new("refuse");
    write(
        &setup.grpc_addrs[0],
        2,
        10,
        Duration::ZERO,
        &AtomicBool::new(false),
    );
    let publisher = setup.publisher("refuse", 16, &[]);
    let last = setup.wait_caught_up(&["refuse"]);
    kill9(publisher);
    let subject = format!("{}.{GROUP}.events", setup.prefix);
    let body = bytes::Bytes::from_static(b"{}");
    let publish = |id: String, expected_last: u64| {
        Publish::build()
            .payload(body.clone())
            .message_id(id)
            .expected_last_sequence(expected_last)
    };
    setup.runtime.block_on(async {
        let send = |message: Publish| async {
            setup
                .js
                .send_publish(subject.clone(), message)
                .await
                .unwrap()
                .await
        };
        // A gap: event last + 2 while the stream ends at last.
        let gap = send(publish(format!("{GROUP}:{}", last + 2), last + 1))
            .await
            .unwrap_err();
        assert_eq!(gap.kind(), PublishErrorKind::WrongLastSequence, "{gap}");
        // A repeat of the last event under a new id, expecting the stream one shorter.
        let repeat = send(publish(format!("{GROUP}:{last}-again"), last - 1))
            .await
            .unwrap_err();
        assert_eq!(
            repeat.kind(),
            PublishErrorKind::WrongLastSequence,
            "{repeat}"
        );
        // The same id again: answered as the message the stream already has, not stored.
        let duplicate = send(publish(format!("{GROUP}:{last}"), last - 1))
            .await
            .unwrap();
        assert!(duplicate.duplicate, "{duplicate:?}");
        assert_eq!(duplicate.sequence, last);
    });
    setup.check_stream_equals_node(last);
}

#[test]
fn a_publisher_fails_over_to_another_replica_when_the_one_it_follows_is_killed() {
    let mut setup = Setup::group("failover");
    let grpc = setup.grpc_addrs.join(",");
    let stop = AtomicBool::new(false);
    let last = std::thread::scope(|s| {
        let writer = s.spawn(|| write(&grpc, 120, 100, Duration::from_millis(10), &stop));
        let publisher = setup.publisher("failover", 128, &[]);
        std::thread::sleep(Duration::from_millis(1500));
        // The replica it follows first (the first named) goes away under load.
        let killed = setup.stream_state();
        setup.nodes[0].take().unwrap().kill9();
        writer.join().unwrap();
        let last = setup.wait_caught_up(&["failover"]);
        std::thread::sleep(Duration::from_millis(300));
        kill9(publisher);
        eprintln!("replica 1 killed at {killed:?}");
        last
    });
    setup.check_stream_equals_node(last);
    let log = setup.log("failover");
    assert!(log.contains("trying the next replica"), "{log}");
    eprintln!("{last} events, exactly once each, across the loss of the replica followed");
}
