//! The change-event stream through the real binary (`GET /v1/events`, gRPC `Events`): a
//! three-node group's replicas serve identical events with contiguous sequence numbers, and
//! keep doing so after the leader is killed, after it comes back, and after every node
//! restarts (state rebuilt from snapshot and log); bad parameters are refused naming the field,
//! calls without a key or with no role refused; a subscriber that never reads does not slow
//! writes down and is dropped with a clear status, while one that reads gets every event.

mod support;

use std::time::{Duration, Instant};

use client::{ClientError, RetryPolicy};
use ledger::{CreateTransferResult as TR, EventKind, Transfer, TransferFlags};
use serde_json::Value;
use support::{ChildNode, create_key, fincore_exe, get, ledger_accounts};
use testkit::group::GroupLayout;
use testkit::http::{replica_status, request_as};

const ACCOUNTS: u128 = 4;

/// Every event a replica serves, paging through `GET /v1/events`; with its first seq.
fn all_events(http: &str) -> (u64, Vec<Value>) {
    let mut events = Vec::new();
    let mut after = 0u64;
    let mut first = None;
    loop {
        let answer = get(http, &format!("/v1/events?after={after}&limit=4096"));
        assert_eq!(answer.status, 200, "{answer:?}");
        let page = answer.json().unwrap();
        let first_seq = page["first_seq"].as_u64().unwrap();
        first.get_or_insert(first_seq);
        if after == 0 && first_seq > 1 {
            // Not from 1 on this replica: read from its first.
            after = first_seq - 1;
            continue;
        }
        let batch = page["events"].as_array().unwrap();
        if batch.is_empty() {
            return (first.unwrap(), events);
        }
        after = batch.last().unwrap()["seq"].as_u64().unwrap();
        events.extend(batch.iter().cloned());
    }
}

/// The stream's own invariants: contiguous seqs, every batch closed by a marker counting it
/// (`events` start at a batch's first event).
fn check_contiguous(first: u64, events: &[Value]) {
    let mut batch_first = None;
    for (at, event) in events.iter().enumerate() {
        let seq = event["seq"].as_u64().unwrap();
        assert_eq!(seq, first + at as u64, "a gap or a repeat at {event}");
        assert_eq!(event["version"], 1);
        batch_first.get_or_insert(seq);
        if event["type"] == "batch" {
            let marker = &event["batch"];
            let (marker_first, count) = (
                marker["first_seq"].as_u64().unwrap(),
                marker["events_count"].as_u64().unwrap(),
            );
            assert_eq!(marker_first + count, seq, "{event}");
            assert_eq!(Some(marker_first), batch_first, "{event}");
            batch_first = None;
        }
    }
}

/// What one replica serves, for a failure message: its range, its last event, its applied
/// log index and any lines its log has about change events.
fn describe(http: &str, log: &std::path::Path, served: &(u64, Vec<Value>)) -> String {
    let applied = replica_status(http, false)
        .map(|status| format!("{status:?}"))
        .unwrap_or_else(|error| error.to_string());
    let log_lines: Vec<String> = std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains("event") || line.contains("ERROR"))
        .map(str::to_string)
        .collect();
    format!(
        "{http}: first {} count {} last {:?}; status {applied}; log: {log_lines:?}",
        served.0,
        served.1.len(),
        served.1.last().map(Value::to_string),
    )
}

/// Waits until every live replica serves the same events (bounded), and answers them.
fn identical_events(group: &Group) -> Vec<Value> {
    let https = group.live_https();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let served: Vec<(u64, Vec<Value>)> = https.iter().map(|http| all_events(http)).collect();
        if served.windows(2).all(|w| w[0] == w[1]) {
            let (first, events) = served.into_iter().next().unwrap();
            assert_eq!(first, 1, "every replica has its events from the first");
            check_contiguous(first, &events);
            return events;
        }
        if Instant::now() >= deadline {
            let logs = group.live_logs();
            let described: Vec<String> = https
                .iter()
                .zip(&logs)
                .zip(&served)
                .map(|((http, log), served)| describe(http, log, served))
                .collect();
            panic!(
                "replicas serve different events after 30 s:\n{}",
                described.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct Group {
    dirs: Vec<tempfile::TempDir>,
    layout: GroupLayout,
    nodes: Vec<Option<ChildNode>>,
}

impl Group {
    fn new(size: usize) -> Group {
        Group {
            dirs: (0..size).map(|_| tempfile::tempdir().unwrap()).collect(),
            layout: GroupLayout::on_free_ports(size).unwrap(),
            nodes: (0..size).map(|_| None).collect(),
        }
    }

    fn start(&mut self, i: usize) {
        let data = self.dirs[i].path().join("data");
        let mut args = self.layout.serve_args(i, self.layout.len());
        args.extend(self.layout.membership_args(i, &data));
        args.extend(["--checkpoint-interval", "20"].map(String::from));
        let node =
            ChildNode::start(fincore_exe(), &data, &args).unwrap_or_else(|error| panic!("{error}"));
        self.nodes[i] = Some(node);
    }

    fn live_https(&self) -> Vec<&str> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_some())
            .map(|i| self.layout.http_addrs[i].as_str())
            .collect()
    }

    fn live_logs(&self) -> Vec<std::path::PathBuf> {
        self.nodes
            .iter()
            .flatten()
            .map(|node| node.log_path.clone())
            .collect()
    }

    fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let leaders: Vec<Option<u64>> = self
                .live_https()
                .iter()
                .map(|http| replica_status(http, false).unwrap().leader)
                .collect();
            if let Some(Some(leader)) = leaders.first()
                && leaders.iter().all(|l| *l == Some(*leader))
                && self.nodes[*leader as usize - 1].is_some()
            {
                return *leader as usize - 1;
            }
            assert!(Instant::now() < deadline, "no agreed leader: {leaders:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn transfer(id: u128, flags: TransferFlags, timeout: u32) -> Transfer {
    Transfer {
        timeout,
        flags,
        ..testkit::transfer(id, id % ACCOUNTS + 1, (id + 1) % ACCOUNTS + 1, id % 7 + 1)
    }
}

/// Writes `rounds` batches from id `first`: plain transfers, pending ones (some expiring after
/// a second), posts and voids of earlier pending ones.
async fn write(client: &client::Client, first: u128, rounds: u128) {
    for round in 0..rounds {
        let base = first + round * 10;
        let mut batch: Vec<Transfer> = (base..base + 6)
            .map(|id| transfer(id, TransferFlags::empty(), 0))
            .collect();
        batch.push(transfer(base + 6, TransferFlags::PENDING, 0));
        batch.push(transfer(base + 7, TransferFlags::PENDING, 1));
        if round > 0 {
            let post = Transfer {
                id: base + 8,
                pending_id: base - 10 + 6,
                amount: u128::MAX,
                flags: TransferFlags::POST_PENDING_TRANSFER,
                ..Transfer::default()
            };
            batch.push(post);
        }
        let results = client.create_transfers(&batch).await.unwrap();
        for result in results {
            assert!(
                matches!(result.result, TR::Created | TR::Exists),
                "{}",
                result.result
            );
        }
    }
}

#[test]
fn replicas_serve_identical_contiguous_events_across_a_leader_kill_and_restarts() {
    let mut group = Group::new(3);
    for i in 0..3 {
        group.start(i);
    }
    group.leader();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let urls = group.layout.grpc_urls();
    let policy = RetryPolicy {
        elapsed_max: Duration::from_secs(30),
        attempt_timeout: Duration::from_secs(2),
        ..RetryPolicy::default()
    };
    let client = runtime.block_on(async {
        support::connect_any(&urls.iter().map(String::as_str).collect::<Vec<_>>(), policy).unwrap()
    });
    runtime.block_on(async {
        client
            .create_accounts(&ledger_accounts(ACCOUNTS))
            .await
            .unwrap();
        write(&client, 100, 30).await;
    });
    std::thread::sleep(Duration::from_millis(1200)); // some pending transfers time out
    runtime.block_on(write(&client, 1000, 5));
    let before = identical_events(&group);
    let kinds: Vec<&str> = before.iter().map(|e| e["type"].as_str().unwrap()).collect();
    for kind in [
        EventKind::AccountCreated,
        EventKind::TransferCreated,
        EventKind::TransferPosted,
        EventKind::TransferExpired,
        EventKind::Batch,
    ] {
        assert!(kinds.contains(&kind.name()), "no {kind:?} event");
    }
    // A transfer event carries both sides' balances after it.
    let posted = before
        .iter()
        .find(|e| e["type"] == "transfer_posted")
        .unwrap();
    assert!(
        posted["debit_account"]["debits_posted"].is_string(),
        "{posted}"
    );
    assert!(
        posted["credit_account"]["credits_posted"].is_string(),
        "{posted}"
    );

    // The leader killed: the survivors go on with the same numbering.
    let leader = group.leader();
    group.nodes[leader].take().unwrap().kill9();
    runtime.block_on(write(&client, 2000, 10));
    let survivors = identical_events(&group);
    assert_eq!(survivors[..before.len()], before[..], "history changed");
    assert!(survivors.len() > before.len());

    // Back: it catches up and serves the same events as the others.
    group.start(leader);
    runtime.block_on(write(&client, 3000, 3));
    let after_return = identical_events(&group);
    assert_eq!(after_return[..survivors.len()], survivors[..]);

    // Every node restarted (state from snapshot + log replay): same events, then more.
    for node in group.nodes.iter_mut() {
        node.take().unwrap().stop().unwrap();
    }
    for i in 0..3 {
        group.start(i);
    }
    group.leader();
    runtime.block_on(write(&client, 4000, 3));
    let after_restart = identical_events(&group);
    assert_eq!(after_restart[..after_return.len()], after_return[..]);
    eprintln!(
        "{} events, identical on three replicas through a leader kill and restarts",
        after_restart.len()
    );
    for node in group.nodes.iter_mut() {
        node.take().unwrap().stop().unwrap();
    }
}

#[test]
fn bad_parameters_and_missing_keys_are_refused_and_a_stalled_subscriber_holds_back_no_write() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let node = support::start_node(&data);
    let read = create_key(&data.with_extension("keys"), "read");
    node.signal(testkit::node::Signal::Hup).unwrap();
    let http = node.http_addr.as_str();
    let call =
        |key: Option<&str>, path: &str| request_as(key, http, "GET", path, None, "").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while call(Some(&read), "/v1/events").status != 200 {
        assert!(Instant::now() < deadline, "the read key was not loaded");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Refusals: no key, and each bad parameter naming its field.
    assert_eq!(call(None, "/v1/events").status, 401);
    for (path, field) in [
        ("/v1/events?limit=0", "limit"),
        ("/v1/events?limit=4097", "limit"),
        ("/v1/events?after=abc", "after"),
        ("/v1/events?after=-1", "after"),
        ("/v1/events?limit=1e3", "limit"),
        ("/v1/events?since=3", "query"),
    ] {
        let answer = call(Some(&read), path);
        assert_eq!(answer.status, 400, "{path}: {answer:?}");
        assert_eq!(answer.json().unwrap()["field"], field, "{path}: {answer:?}");
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let url = format!("http://{}", node.grpc_addr);
    runtime.block_on(async {
        let anonymous = client::Client::builder(&[&url])
            .retry_policy(support::impatient(2))
            .connect()
            .unwrap();
        let refused = anonymous.read_events(0, 10).await.unwrap_err();
        assert!(
            matches!(refused, ClientError::Unauthenticated(_)),
            "{refused}"
        );
        let reader = client::Client::builder(&[&url])
            .api_key(read.clone())
            .connect()
            .unwrap();
        let invalid = reader.read_events(0, 0).await.unwrap_err();
        assert!(
            matches!(invalid, ClientError::Invalid(ref m) if m.contains("limit")),
            "{invalid}"
        );

        // A subscriber that never reads (on a connection of its own with 64 KiB windows, so
        // the node's queue for it fills soon), one that does, and a writer.
        let mut stalled = stalled_subscriber(&node.grpc_addr, &read).await;
        let mut live = reader.subscribe_events(0).await.unwrap();
        let writer = support::connect(&url, RetryPolicy::default()).unwrap();
        writer
            .create_accounts(&ledger_accounts(ACCOUNTS))
            .await
            .unwrap();
        let started = Instant::now();
        let batches = 16u128;
        for b in 0..batches {
            let batch: Vec<Transfer> = (0..8189u128)
                .map(|i| testkit::transfer(1 + b * 8189 + i, 1, 2, 1))
                .collect();
            let results = writer.create_transfers(&batch).await.unwrap();
            assert!(results.iter().all(|r| r.result == TR::Created));
        }
        let writing = started.elapsed();
        // Accounts (4 + marker) and transfers (8,189 + marker per batch), once the event
        // writer has caught up with apply (it writes behind it).
        let last = 5 + batches as u64 * 8190;
        let deadline = Instant::now() + Duration::from_secs(60);
        while writer.read_events(0, 1).await.unwrap().last_seq < last {
            assert!(Instant::now() < deadline, "the events were not written");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(writer.read_events(0, 1).await.unwrap().last_seq, last);

        // The reading subscriber gets every event in order.
        let mut seen = 0;
        while seen < last {
            let page = tokio::time::timeout(Duration::from_secs(60), live.next())
                .await
                .expect("the live subscriber is fed")
                .unwrap()
                .unwrap();
            seen = page.events.last().map_or(seen, |e| e.seq);
        }
        assert_eq!(live.after(), last);

        // The stalled one is dropped with a status saying where to resume, after what was
        // queued for it.
        tokio::time::sleep(Duration::from_secs(
            limits::EVENTS_SUBSCRIBER_STALL_SECONDS_MAX + 2,
        ))
        .await;
        let mut received = 0u64;
        let dropped = loop {
            match tokio::time::timeout(Duration::from_secs(60), stalled.message()).await {
                Ok(Ok(Some(page))) => {
                    received = page.events.last().map_or(received, |e| e.seq);
                }
                Ok(Ok(None)) => panic!("the stream ended without saying why"),
                Ok(Err(status)) => break status,
                Err(_) => panic!("the stalled subscriber was never dropped"),
            }
        };
        assert_eq!(dropped.code(), tonic::Code::ResourceExhausted, "{dropped}");
        assert!(
            dropped
                .message()
                .contains(&format!("subscribe again after {received}")),
            "{dropped}"
        );
        assert!(received < last);
        eprintln!("wrote {batches} full batches in {writing:?} beside a stalled subscriber");
        assert!(
            writing < Duration::from_secs(60),
            "writes were held back: {writing:?}"
        );
    });

    // Every events call is counted, refusals by kind (those refused for want of a key never
    // reach the service).
    let metrics = call(Some(&read), "/metrics");
    for expected in [
        r#"fincore_request_errors_total{operation="read_events",protocol="http",kind="invalid"} 6"#,
        r#"fincore_request_errors_total{operation="read_events",protocol="grpc",kind="invalid"} 1"#,
        r#"fincore_requests_total{operation="subscribe_events",protocol="grpc"} 2"#,
        r#"fincore_request_duration_seconds_bucket{le="0.0001",operation="read_events",protocol="grpc"}"#,
    ] {
        assert!(
            metrics.body.contains(expected),
            "metrics lack {expected}:\n{}",
            metrics.body
        );
    }
    node.stop().unwrap();
}

/// A raw `Subscribe(0)` stream with `key`, over a connection whose HTTP/2 windows are 64 KiB.
async fn stalled_subscriber(grpc: &str, key: &str) -> tonic::Streaming<api::proto::EventsPage> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
        .unwrap()
        .initial_stream_window_size(Some(65_535))
        .initial_connection_window_size(Some(65_535))
        .connect()
        .await
        .unwrap();
    let mut events = api::proto::events_client::EventsClient::new(channel)
        .max_decoding_message_size(limits::GRPC_MESSAGE_BYTES_MAX);
    let mut request = tonic::Request::new(api::proto::SubscribeRequest { after: 0 });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    events.subscribe(request).await.unwrap().into_inner()
}

#[test]
fn a_node_with_an_open_subscription_stops_at_once_and_tells_the_subscriber_where_to_resume() {
    let dir = tempfile::tempdir().unwrap();
    let node = support::start_node(&dir.path().join("data"));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = runtime
        .block_on(async { support::connect(&node.grpc_url(), RetryPolicy::default()) })
        .unwrap();
    // Some events, then a subscriber that has read them all and waits for more.
    // (The events log is written behind the apply: an acknowledged write's events are
    // readable a moment later, not at once.)
    let last = runtime.block_on(async {
        client.create_accounts(&ledger_accounts(3)).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let last = client.read_events(0, 100).await.unwrap().last_seq;
            if last > 0 || Instant::now() > deadline {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    assert!(last > 0, "the account events never became readable");
    let ended = runtime.spawn(async move {
        let mut subscription = client.subscribe_events(0).await.unwrap();
        loop {
            match subscription.next().await {
                Ok(Some(_)) => continue,
                ended => return (ended.map(|_| ()), subscription.after()),
            }
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let stopping = Instant::now();
    node.stop().unwrap();
    let took = stopping.elapsed();
    // Before, the node waited its whole shutdown grace for the open stream.
    assert!(
        took < Duration::from_secs(limits::HTTP_SHUTDOWN_GRACE_SECONDS / 2),
        "the node took {took:?} to stop with a subscriber open"
    );
    let (ended, after) = runtime.block_on(ended).unwrap();
    assert_eq!(after, last, "the subscriber had every event");
    let error = ended.expect_err("the stream ends with an error naming where to resume");
    assert!(
        error
            .to_string()
            .contains(&format!("subscribe again after {last}")),
        "{error}"
    );
}
