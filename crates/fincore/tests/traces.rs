//! Traces across processes: a caller's W3C `traceparent` sent to a gateway over two groups of
//! three is followed gateway → group leader → replication → apply → reply, and the spans reach
//! an OTLP/gRPC receiver on loopback (`testkit::otlp`) with the parent/child structure intact;
//! a transfer across the groups (a saga) keeps its calls to both groups in the caller's trace;
//! an unsampled `traceparent` exports nothing, and with sampling 0 a request without one
//! exports nothing either.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::gateway::{ids_in, transfer_id};
use support::{ChildNode, fincore_exe};
use testkit::cluster::LocalGroups;
use testkit::otlp::{OtlpReceiver, ReceivedSpan};

/// How long the processes may take to export a finished request's spans (they send every
/// second).
const EXPORTED_SECONDS_MAX: u64 = 20;

fn post_traced(addr: &str, path: &str, body: &str, traceparent: &str) -> support::Answer {
    let request = testkit::http::Request {
        method: "POST",
        path,
        content_type: Some("application/json"),
        body,
        headers: &[("traceparent", traceparent)],
    };
    testkit::http::request_over(
        &testkit::http::Transport::Plain,
        testkit::keys::token(),
        addr,
        &request,
    )
    .unwrap_or_else(|error| panic!("{error}"))
}

/// The spans of `trace_id` once `expected` of them arrived (bounded wait).
fn spans_of(receiver: &OtlpReceiver, trace_id: &str, expected: usize) -> Vec<ReceivedSpan> {
    let deadline = Instant::now() + Duration::from_secs(EXPORTED_SECONDS_MAX);
    loop {
        let spans: Vec<ReceivedSpan> = receiver
            .spans()
            .into_iter()
            .filter(|span| span.trace_id == trace_id)
            .collect();
        if spans.len() >= expected {
            return spans;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {expected} spans of trace {trace_id} arrived: {spans:#?}",
            spans.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The one span named `name` among `spans`.
fn named<'a>(spans: &'a [ReceivedSpan], name: &str) -> &'a ReceivedSpan {
    let found: Vec<&ReceivedSpan> = spans.iter().filter(|span| span.name == name).collect();
    assert_eq!(found.len(), 1, "spans named {name}: {spans:#?}");
    found[0]
}

#[test]
fn a_callers_trace_is_followed_from_the_gateway_through_the_leaders_stages() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let receiver = runtime.block_on(OtlpReceiver::start(10_000)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let export: Vec<String> = vec![
        "--otlp".into(),
        receiver.url(),
        "--trace-sampling".into(),
        "0".into(),
    ];
    let groups = LocalGroups::start(fincore_exe(), dir.path(), 2, 3, &export)
        .unwrap_or_else(|error| panic!("{error}"));
    let mut gateway_args = vec!["--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0"];
    gateway_args.extend(export.iter().map(String::as_str));
    let gateway = ChildNode::start_gateway(
        fincore_exe(),
        &dir.path().join("gateway"),
        &groups.map_path,
        &gateway_args,
    )
    .unwrap_or_else(|error| panic!("{error}"));
    let addr = &gateway.http_addr;
    let group_ids: Vec<_> = groups.map.groups().keys().copied().collect();
    let group = group_ids[0];
    let ids = ids_in(&groups.map, group, 2);
    let elsewhere = ids_in(&groups.map, group_ids[1], 1)[0];

    // Accounts under an unsampled trace: nothing of it is exported.
    let unsampled = "5bf92f3577b34da6a3ce929d0e0e4736";
    let accounts = json!([
        {"id": ids[0].to_string(), "ledger": 1, "code": 1},
        {"id": ids[1].to_string(), "ledger": 1, "code": 1},
        {"id": elsewhere.to_string(), "ledger": 1, "code": 1},
    ]);
    let answer = post_traced(
        addr,
        "/v1/accounts",
        &accounts.to_string(),
        &format!("00-{unsampled}-00f067aa0ba902b7-00"),
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    // Without a traceparent, at sampling 0: nothing either.
    let transfer = |n: u128| {
        json!([{"id": transfer_id(ids[0], n).to_string(),
            "debit_account_id": ids[0].to_string(), "credit_account_id": ids[1].to_string(),
            "amount": "5", "ledger": 1, "code": 1}])
        .to_string()
    };
    let answer = support::post_json(addr, "/v1/transfers", &transfer(1));
    assert_eq!(answer.status, 200, "{}", answer.body);

    // A transfer under a sampled trace.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let callers_span = "00f067aa0ba902b7";
    let answer = post_traced(
        addr,
        "/v1/transfers",
        &transfer(2),
        &format!("00-{trace_id}-{callers_span}-01"),
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.json().unwrap()["results"][0]["result"], "created");

    // Gateway: its request and its call to the group. Leader: its request and four stages.
    let spans = spans_of(&receiver, trace_id, 7);
    // (Exported at the end of the spans, the processes' last: wait for a straggler.)
    std::thread::sleep(Duration::from_millis(1_500));
    let spans = spans_of(&receiver, trace_id, spans.len());
    let request = named(&spans, "POST /v1/transfers");
    assert_eq!(request.service, "fincore-gateway");
    assert_eq!(request.pid, i64::from(gateway.pid()));
    assert_eq!(request.parent_span_id, callers_span, "the caller's span");
    let call = named(&spans, "gateway.group_call");
    assert_eq!(call.service, "fincore-gateway");
    assert_eq!(call.parent_span_id, request.span_id);
    assert_eq!(call.attribute("group"), Some(group.to_string().as_str()));
    // The node that served it is the parent of the stages (a request the gateway sent first to
    // a follower, redirected, would be a sibling without stages).
    let queue = named(&spans, "ledger.queue");
    let node_requests: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|span| span.name == "fincore.v1.Ledger/CreateTransfers")
        .collect();
    for request in &node_requests {
        assert_eq!(request.parent_span_id, call.span_id, "across the processes");
    }
    let served = *node_requests
        .iter()
        .find(|request| request.span_id == queue.parent_span_id)
        .expect("the stages' parent is a node's request");
    assert_eq!(served.service, "fincore-node");
    assert_eq!(served.attribute("group"), Some(group.to_string().as_str()));
    let members: Vec<i64> = (0..3)
        .map(|i| i64::from(groups.node(0, i).unwrap().pid()))
        .collect();
    assert!(
        members.contains(&served.pid),
        "{} in {members:?}",
        served.pid
    );
    let mut previous_end = served.start_ns;
    for stage in [
        "ledger.queue",
        "ledger.replicate",
        "ledger.apply",
        "ledger.reply",
    ] {
        let span = named(&spans, stage);
        assert_eq!(span.pid, served.pid, "{stage} on the leader that served");
        assert_eq!(span.parent_span_id, served.span_id, "{stage}");
        assert!(span.start_ns <= span.end_ns, "{span:?}");
        // Each stage starts where the previous one ended (a microsecond of rounding).
        assert!(
            span.start_ns + 1_000 >= previous_end,
            "{stage} starts before the previous stage ends: {span:?}"
        );
        previous_end = span.end_ns;
        if stage == "ledger.apply" {
            assert!(span.start_ns < span.end_ns, "the apply was timed: {span:?}");
        }
        let log_index: u64 = span.attribute("log_index").unwrap().parse().unwrap();
        assert!(log_index > 0, "{span:?}");
        assert_eq!(span.attribute("batch_events"), Some("1"), "{span:?}");
    }
    assert!(
        previous_end <= served.end_ns + 1_000,
        "the reply ends inside the request"
    );
    assert!(served.end_ns <= call.end_ns && call.end_ns <= request.end_ns);

    // A transfer across the groups, a saga run by the gateway in a task of its own: its calls
    // to both groups are in the caller's trace.
    let saga_trace = "6bf92f3577b34da6a3ce929d0e0e4736";
    let across = json!([{"id": transfer_id(ids[0], 3).to_string(),
        "debit_account_id": ids[0].to_string(), "credit_account_id": elsewhere.to_string(),
        "amount": "7", "ledger": 1, "code": 1}]);
    let answer = post_traced(
        addr,
        "/v1/transfers",
        &across.to_string(),
        &format!("00-{saga_trace}-{callers_span}-01"),
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.json().unwrap()["results"][0]["result"], "created");
    let node_requests = |spans: &[ReceivedSpan]| -> Vec<ReceivedSpan> {
        spans
            .iter()
            .filter(|span| span.service == "fincore-node" && span.name.starts_with("fincore.v1."))
            .cloned()
            .collect()
    };
    let groups_of = |requests: &[ReceivedSpan]| -> std::collections::BTreeSet<String> {
        requests
            .iter()
            .filter_map(|span| span.attribute("group").map(String::from))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(EXPORTED_SECONDS_MAX);
    while groups_of(&node_requests(&spans_of(&receiver, saga_trace, 1))).len() < 2
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    // The gateway's calls end after the nodes' requests: they may come an export later.
    std::thread::sleep(Duration::from_millis(1_500));
    let spans = spans_of(&receiver, saga_trace, 1);
    let calls: Vec<&str> = spans
        .iter()
        .filter(|span| span.name == "gateway.group_call")
        .map(|span| span.span_id.as_str())
        .collect();
    let requests = node_requests(&spans);
    for request in &requests {
        assert!(
            calls.contains(&request.parent_span_id.as_str()),
            "a node's request outside the gateway's calls: {request:?}"
        );
    }
    let served_groups = groups_of(&requests);
    let expected: std::collections::BTreeSet<String> =
        group_ids.iter().map(ToString::to_string).collect();
    assert_eq!(
        served_groups, expected,
        "both groups served the saga's steps in the trace"
    );

    // Wait a further export round: still nothing of the other two requests.
    std::thread::sleep(Duration::from_millis(2_500));
    let spans = receiver.spans();
    assert!(
        spans
            .iter()
            .all(|span| span.trace_id == trace_id || span.trace_id == saga_trace),
        "spans of unsampled requests: {:#?}",
        spans
            .iter()
            .filter(|span| span.trace_id != trace_id && span.trace_id != saga_trace)
            .collect::<Vec<_>>()
    );
    gateway.stop().unwrap();
    groups.stop().unwrap();
}
