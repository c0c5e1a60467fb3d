//! Change events behind a gateway, per group, through the real binaries: `fincore gateway` over
//! groups of `fincore serve`. Each group's events read through the gateway (HTTP `group=`, gRPC
//! `fincore-group` metadata, `Read` and `Subscribe`) are exactly those its replicas serve
//! directly; a missing, unknown or malformed group is refused naming the field and the
//! gateway's groups, a caller without a valid key is refused, and a node asked for another
//! group's events refuses naming both; `fincore cdc` given one gateway URL for two groups
//! publishes each group's stream complete and in order; a subscription through the gateway
//! survives the loss of the replica it follows with no gap and no repeat.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use client::{Client, ClientError, RetryPolicy};
use cluster::GroupId;
use serde_json::{Value, json};
use support::gateway::{ids_in, leader_of, start_in, transfer_id, wait_for_log};
use support::{ChildNode, fincore_exe, get, post_json};
use testkit::cluster::LocalGroups;
use testkit::http::request_as;

/// Accounts `ids` and `rounds` transfers among them (each in its own batch, so each makes a
/// batch marker too), written through the gateway's HTTP API.
fn write_http(gateway: &str, ids: &[u128], rounds: u128) {
    let accounts: Vec<Value> = ids
        .iter()
        .map(|id| json!({"id": id.to_string(), "ledger": 1, "code": 1}))
        .collect();
    let answer = post_json(gateway, "/v1/accounts", &Value::Array(accounts).to_string());
    assert_eq!(answer.status, 200, "{}", answer.body);
    for round in 1..=rounds {
        let (debit, credit) = (ids[round as usize % ids.len()], ids[0]);
        let credit = if credit == debit { ids[1] } else { credit };
        let body = json!([{"id": transfer_id(debit, round).to_string(),
            "debit_account_id": debit.to_string(), "credit_account_id": credit.to_string(),
            "amount": round.to_string(), "ledger": 1, "code": 1}]);
        let answer = post_json(gateway, "/v1/transfers", &body.to_string());
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert!(answer.body.contains("\"created\""), "{}", answer.body);
    }
}

/// A page of events over HTTP (`group` named or not) with the test nodes' key.
fn page(addr: &str, group: Option<GroupId>, after: u64) -> support::Answer {
    let group = group.map(|g| format!("group={g}&")).unwrap_or_default();
    get(addr, &format!("/v1/events?{group}after={after}&limit=4096"))
}

/// Every event `addr` serves (of `group`, when named), from 1, as JSON.
fn all_events(addr: &str, group: Option<GroupId>) -> Vec<Value> {
    let mut events = Vec::new();
    loop {
        let answer = page(addr, group, events.len() as u64);
        assert_eq!(answer.status, 200, "{}", answer.body);
        let page = answer.json().unwrap();
        let batch = page["events"].as_array().unwrap().clone();
        if batch.is_empty() {
            return events;
        }
        events.extend(batch);
    }
}

/// Every event group `g`'s running members serve: checked equal on all of them (waiting,
/// bounded, for a follower still applying the last batch).
fn group_events(local: &LocalGroups, g: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let per_member: Vec<Vec<Value>> = (0..local.layouts[g].len())
            .filter_map(|i| local.node(g, i))
            .map(|node| all_events(&node.http_addr, None))
            .collect();
        if per_member.windows(2).all(|pair| pair[0] == pair[1]) {
            return per_member.into_iter().next().expect("a running member");
        }
        assert!(
            Instant::now() < deadline,
            "group {g}'s replicas serve different events"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A client of the gateway's gRPC listener naming `group` (when given) on every call.
fn gateway_client(gateway: &ChildNode, group: Option<GroupId>) -> Client {
    let url = format!("http://{}", gateway.grpc_addr);
    let mut builder = Client::builder(&[url.as_str()])
        .retry_policy(RetryPolicy::default())
        .api_key(testkit::keys::token().expect("the test nodes' key"));
    if let Some(group) = group {
        builder = builder.group(group.to_string());
    }
    builder.connect().unwrap()
}

/// The error message and field of a refused HTTP answer, checked to be `status`.
fn refusal(answer: &support::Answer, status: u16) -> (String, String) {
    assert_eq!(answer.status, status, "{}", answer.body);
    let body = answer.json().unwrap();
    (
        body["error"].as_str().unwrap_or_default().to_string(),
        body["field"].as_str().unwrap_or_default().to_string(),
    )
}

/// Follows `subscription` until it has relayed event `last` (bounded), returning the events.
async fn follow_to(subscription: &mut client::EventSubscription, last: u64) -> Vec<ledger::Event> {
    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while subscription.after() < last {
        let left = deadline.saturating_duration_since(Instant::now());
        let page = tokio::time::timeout(left, subscription.next())
            .await
            .unwrap_or_else(|_| panic!("no event after {} within 30 s", subscription.after()))
            .unwrap()
            .expect("the stream goes on");
        events.extend(page.events);
    }
    events
}

#[test]
fn each_groups_events_through_the_gateway_are_its_replicas_own_and_bad_groups_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (local, gateway) = start_in(dir.path(), 2, 1);
    let map = local.map.clone();
    let groups: Vec<GroupId> = map.groups().keys().copied().collect();
    // Each layout is one group; find which map group each is by its node's own events route.
    for (g, &group) in groups.iter().enumerate() {
        let rounds = 3 + 2 * g as u128;
        write_http(&gateway.http_addr, &ids_in(&map, group, 3), rounds);
    }
    let group_of_layout = |g: usize| -> GroupId {
        let node = local.node(g, 0).unwrap();
        *groups
            .iter()
            .find(|&&group| page(&node.http_addr, Some(group), 0).status == 200)
            .expect("a node serves its own group's events")
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for g in 0..2 {
        let group = group_of_layout(g);
        let node = local.node(g, 0).unwrap();
        let direct = group_events(&local, g);
        // 3 accounts and their marker, then per transfer the transfer and its marker.
        assert!(
            direct.len() >= 10,
            "group {group} holds its accounts and transfers"
        );
        // HTTP through the gateway: the same events, page for page.
        assert_eq!(all_events(&gateway.http_addr, Some(group)), direct);
        let through = page(&gateway.http_addr, Some(group), 2).json().unwrap();
        let own = page(&node.http_addr, None, 2).json().unwrap();
        assert_eq!(through, own, "a page, first_seq and last_seq included");
        // A node given its own group serves it; another group's is refused naming both.
        assert_eq!(all_events(&node.http_addr, Some(group)), direct);
        let other = *groups.iter().find(|&&o| o != group).unwrap();
        let (message, field) = refusal(&page(&node.http_addr, Some(other), 0), 404);
        assert_eq!(field, "group");
        assert!(
            message.contains(&group.to_string()) && message.contains(&other.to_string()),
            "{message}"
        );
        // gRPC through the gateway: Read and Subscribe give the same events as the node.
        runtime.block_on(async {
            let through = gateway_client(&gateway, Some(group));
            let direct_client = support::connect(
                &format!("http://{}", node.grpc_addr),
                RetryPolicy::default(),
            )
            .unwrap();
            let read = through.read_events(0, 4096).await.unwrap();
            assert_eq!(read, direct_client.read_events(0, 4096).await.unwrap());
            assert_eq!(read.events.len(), direct.len());
            let last = read.last_seq;
            let mut subscription = through.subscribe_events(0).await.unwrap();
            assert_eq!(follow_to(&mut subscription, last).await, read.events);
            // The node refuses a call naming another group, naming both.
            let wrong = Client::builder(&[format!("http://{}", node.grpc_addr).as_str()])
                .retry_policy(support::impatient(2))
                .api_key(testkit::keys::token().unwrap())
                .group(other.to_string())
                .connect()
                .unwrap();
            match wrong.read_events(0, 10).await {
                Err(ClientError::Invalid(message)) => assert!(
                    message.contains(&group.to_string()) && message.contains(&other.to_string()),
                    "{message}"
                ),
                other => panic!("{other:?}"),
            }
        });
    }

    // The gateway needs the group: missing, unknown or malformed is 400 naming the field, and
    // (missing or unknown) listing the gateway's groups.
    let unknown = "0123456789abcdef0123456789abcdef";
    for path in [
        "/v1/events".to_string(),
        "/v1/events?after=0&limit=10".to_string(),
        format!("/v1/events?group={unknown}"),
    ] {
        let (message, field) = refusal(&get(&gateway.http_addr, &path), 400);
        assert_eq!(field, "group", "{path}");
        for group in &groups {
            assert!(message.contains(&group.to_string()), "{path}: {message}");
        }
    }
    let (_, field) = refusal(&get(&gateway.http_addr, "/v1/events?group=g1"), 400);
    assert_eq!(field, "group");
    let (_, field) = refusal(
        &get(
            &gateway.http_addr,
            &format!("/v1/events?group={}&limit=0", groups[0]),
        ),
        400,
    );
    assert_eq!(field, "limit");
    runtime.block_on(async {
        for (client, what) in [
            (gateway_client(&gateway, None), "no group"),
            (
                gateway_client(&gateway, Some(unknown.parse().unwrap())),
                "an unknown group",
            ),
        ] {
            for result in [
                client.read_events(0, 10).await.map(drop),
                client.subscribe_events(0).await.map(drop),
            ] {
                match result {
                    Err(ClientError::Invalid(message)) => {
                        assert!(message.contains("group"), "{what}: {message}");
                        for group in &groups {
                            assert!(message.contains(&group.to_string()), "{what}: {message}");
                        }
                    }
                    other => panic!("{what}: {other:?}"),
                }
            }
        }
    });

    // Without a valid key, nothing: no key, an unknown key (HTTP and gRPC).
    let path = format!("/v1/events?group={}", groups[0]);
    for key in [None, Some("fincore_not-a-key")] {
        let answer = request_as(key, &gateway.http_addr, "GET", &path, None, "").unwrap();
        let (_, field) = refusal(&answer, 401);
        assert_eq!(field, "authorization");
    }
    runtime.block_on(async {
        let keyless = Client::builder(&[format!("http://{}", gateway.grpc_addr).as_str()])
            .retry_policy(support::impatient(2))
            .group(groups[0].to_string())
            .connect()
            .unwrap();
        assert!(
            matches!(
                keyless.read_events(0, 10).await,
                Err(ClientError::Unauthenticated(_))
            ),
            "a keyless Read is refused"
        );
        assert!(
            matches!(
                keyless.subscribe_events(0).await.map(drop),
                Err(ClientError::Unauthenticated(_))
            ),
            "a keyless Subscribe is refused"
        );
    });

    // One document for node and gateway: the events route is the node's, with its `group`.
    let document = get(&gateway.http_addr, "/openapi.json").json().unwrap();
    let node_document = get(&local.node(0, 0).unwrap().http_addr, "/openapi.json")
        .json()
        .unwrap();
    assert_eq!(
        document["paths"]["/v1/events"],
        node_document["paths"]["/v1/events"]
    );
    let parameters = document["paths"]["/v1/events"]["get"]["parameters"]
        .as_array()
        .unwrap();
    assert!(parameters.iter().any(|p| p["name"] == "group"));
    gateway.stop().unwrap();
    local.stop().unwrap();
}

#[test]
fn cdc_given_one_gateway_url_for_two_groups_publishes_each_groups_stream_complete_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (local, gateway) = start_in(dir.path(), 2, 1);
    let map = local.map.clone();
    let groups: Vec<GroupId> = map.groups().keys().copied().collect();
    for (g, &group) in groups.iter().enumerate() {
        write_http(&gateway.http_addr, &ids_in(&map, group, 4), 5 + g as u128);
    }
    let unique = support::unique_name("gwev");
    let prefix = format!("test.{unique}");
    let stream_of = |group: GroupId| format!("test-{unique}-{group}-events");
    let gateway_url = format!("http://{}", gateway.grpc_addr);
    let log = std::fs::File::create(dir.path().join("cdc.log")).unwrap();
    let mut publisher = Command::new(fincore_exe())
        .args(["cdc", "--nats", "nats://127.0.0.1:4222"])
        .args(["--group", &format!("{}={gateway_url}", groups[0])])
        .args(["--group", &format!("{}={gateway_url}", groups[1])])
        .args(["--subject-prefix", &prefix])
        .env("FINCORE_API_KEY", testkit::keys::token().unwrap())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    // More events while it runs: the live part of the streams, not only the backlog.
    for (g, &group) in groups.iter().enumerate() {
        let ids = ids_in(&map, group, 8);
        write_http(&gateway.http_addr, &ids[4..], 4 + g as u128);
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let js = runtime.block_on(async {
        let client = async_nats::connect("nats://127.0.0.1:4222")
            .await
            .expect("NATS with JetStream on 127.0.0.1:4222 (scripts/services starts it)");
        async_nats::jetstream::new(client)
    });
    let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        for g in 0..2 {
            let node = local.node(g, 0).unwrap();
            let group = *groups
                .iter()
                .find(|&&group| page(&node.http_addr, Some(group), 0).status == 200)
                .unwrap();
            let events = group_events(&local, g);
            let last = events.len() as u64;
            let name = stream_of(group);
            let deadline = Instant::now() + Duration::from_secs(30);
            let stream = loop {
                let stream = runtime.block_on(js.get_stream(&name)).ok();
                if let Some(stream) = stream
                    && stream.cached_info().state.last_sequence >= last
                {
                    break stream;
                }
                assert!(
                    Instant::now() < deadline,
                    "stream {name} did not reach {last}; cdc log: {}",
                    std::fs::read_to_string(dir.path().join("cdc.log")).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(50));
            };
            let state = &stream.cached_info().state;
            assert_eq!(
                (state.messages, state.last_sequence),
                (last, last),
                "{name}"
            );
            let subject = format!("{prefix}.{group}.events");
            runtime.block_on(async {
                for (at, event) in events.iter().enumerate() {
                    let seq = at as u64 + 1;
                    let message = stream.get_raw_message(seq).await.unwrap();
                    assert_eq!(message.subject.as_str(), subject);
                    let id = message
                        .headers
                        .get("Nats-Msg-Id")
                        .map(|v| v.as_str().to_string());
                    assert_eq!(id, Some(format!("{group}:{seq}")), "message {seq}");
                    let body: Value = serde_json::from_slice(&message.payload).unwrap();
                    assert_eq!(
                        &body, event,
                        "{name}: message {seq} is not the group's event"
                    );
                }
            });
        }
    }));
    let _ = publisher.kill();
    let _ = publisher.wait();
    for &group in &groups {
        let _ = runtime.block_on(js.delete_stream(stream_of(group)));
    }
    if let Err(panic) = checked {
        std::panic::resume_unwind(panic);
    }
    gateway.stop().unwrap();
    local.stop().unwrap();
}

#[test]
fn a_subscription_through_the_gateway_survives_the_loss_of_the_replica_it_follows() {
    let dir = tempfile::tempdir().unwrap();
    let (mut local, gateway) = start_in(dir.path(), 2, 3);
    let map = local.map.clone();
    // Group 0 of the layouts: its id is the one whose events its first node serves.
    let groups: Vec<GroupId> = map.groups().keys().copied().collect();
    let node = local.node(0, 0).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let group = loop {
        if let Some(&group) = groups
            .iter()
            .find(|&&group| page(&node.http_addr, Some(group), 0).status == 200)
        {
            break group;
        }
        assert!(Instant::now() < deadline, "group 0's node serves no events");
        std::thread::sleep(Duration::from_millis(50));
    };
    let ids = ids_in(&map, group, 2);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _in_runtime = runtime.enter();
    // Writes go through the gateway's gRPC listener, so its client of the group is on the
    // leader when the subscription starts (and the subscription follows that replica).
    let writer = gateway_client(&gateway, None);
    let write = |rounds: std::ops::RangeInclusive<u128>| {
        runtime.block_on(async {
            for round in rounds {
                let transfer = testkit::transfer(transfer_id(ids[0], round), ids[0], ids[1], 1);
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    match writer.create_transfers(&[transfer]).await {
                        Ok(results) => {
                            assert!(matches!(
                                results[0].result,
                                ledger::CreateTransferResult::Created
                                    | ledger::CreateTransferResult::Exists
                            ));
                            break;
                        }
                        Err(error) => {
                            assert!(Instant::now() < deadline, "{error}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }
        })
    };
    let accounts: Vec<ledger::Account> = ids.iter().map(|&id| testkit::account(id)).collect();
    runtime.block_on(writer.create_accounts(&accounts)).unwrap();
    write(1..=20);
    let leader = leader_of(&local, 0);
    let reader = gateway_client(&gateway, Some(group));
    let mut subscription = runtime.block_on(reader.subscribe_events(0)).unwrap();
    let first_part_last = group_events(&local, 0).len() as u64;
    let mut relayed = runtime.block_on(follow_to(&mut subscription, first_part_last));

    local.kill9(0, leader);
    write(21..=40);
    let events = group_events(&local, 0);
    let last = events.len() as u64;
    relayed.extend(runtime.block_on(follow_to(&mut subscription, last)));
    // It moved its subscription to another replica.
    wait_for_log(&gateway, "subscribing again to the group's events");
    // No gap, no repeat: events 1..=last once each, and each the replicas' own.
    let seqs: Vec<u64> = relayed.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=last).collect::<Vec<u64>>());
    let direct: Vec<Value> = events;
    let relayed: Vec<Value> = relayed
        .iter()
        .map(|event| serde_json::to_value(api::events::EventJson::from(event)).unwrap())
        .collect();
    assert_eq!(relayed, direct);
    drop(subscription);
    gateway.stop().unwrap();
    local.stop().unwrap();
}
