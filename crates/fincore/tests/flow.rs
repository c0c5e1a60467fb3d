//! Flow control through the real binaries (`docs/flow-control.md`): a caller flooding a node at
//! ten times its rate limit gets its limit and its refusals, and another caller's latency stays
//! within a stated bound of what it was alone; rules change at run time (SIGHUP) and switches
//! refuse what they name, answering retryable with the reason; a bad rules file stops a start
//! and is refused by a reload, naming the field; a gateway applies the same rules.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use api::{convert, proto};
use ledger::Transfer;
use support::{ChildNode, fincore_exe};
use testkit::http::request_as;
use testkit::node::Signal;

/// The flooder's limit, in `create_transfers` calls per second, and how hard it floods.
const FLOOD_LIMIT_PER_SECOND: u64 = 10;
const FLOOD_TIMES_LIMIT: u64 = 10;
/// Transfers per flood call: full batches, so that the flood, unlimited, would take the whole
/// node (ten times the limit is about 800,000 transfers/s, this machine's ceiling).
const FLOOD_BATCH: u128 = 8189;
/// How long the calm caller is measured alone, then beside the flood.
const PHASE: Duration = Duration::from_secs(4);
/// The calm caller sends one transfer every this long.
const CALM_INTERVAL: Duration = Duration::from_millis(10);
/// The bound: beside the flood, the calm caller's p99 is at most this many times its p99 alone
/// plus `CALM_P99_SLACK` (fsyncs and a flood batch ahead of it in the pipeline are its cost).
const CALM_P99_FACTOR: u32 = 3;
const CALM_P99_SLACK: Duration = Duration::from_millis(30);

/// A node on free ports over `data` with the keys file `keys` and the rules file `rules`.
fn start_with_rules(
    data: &std::path::Path,
    keys: &std::path::Path,
    rules: &std::path::Path,
) -> ChildNode {
    support::start_node_on(
        data,
        "127.0.0.1:0",
        "127.0.0.1:0",
        &[
            "--keys",
            keys.to_str().unwrap(),
            "--flow-rules",
            rules.to_str().unwrap(),
        ],
    )
}

/// A node in `dir` with the rules `rules` and one key, named `writer`, of role write; the node
/// and the key.
fn writer_node(dir: &std::path::Path, rules: &str) -> (ChildNode, String) {
    let keys = dir.join("keys.json");
    let token = support::create_named_key(&keys, "writer", "write");
    let rules_file = dir.join("flow.json");
    std::fs::write(&rules_file, rules).unwrap();
    (
        start_with_rules(&dir.join("node"), &keys, &rules_file),
        token,
    )
}

/// Sends one caller's key with every call.
#[derive(Clone)]
struct Key(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Key {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

type Keyed = proto::ledger_client::LedgerClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Key>,
>;

/// A raw gRPC client (no retries) sending `token`, on a connection of its own.
async fn keyed(url: &str, token: &str) -> Keyed {
    let channel = tonic::transport::Channel::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let key = Key(format!("Bearer {token}").parse().unwrap());
    proto::ledger_client::LedgerClient::with_interceptor(channel, key)
        .max_encoding_message_size(16 << 20)
        .max_decoding_message_size(16 << 20)
}

fn transfers(first_id: u128, count: u128) -> proto::CreateTransfersRequest {
    let batch: Vec<Transfer> = (first_id..first_id + count)
        .map(|id| testkit::transfer(id, 1, 2, 1))
        .collect();
    proto::CreateTransfersRequest {
        transfers: vec![],
        packed: convert::pack_transfers(&batch).into(),
    }
}

/// The calm caller: one transfer every `CALM_INTERVAL` for `PHASE`; its latencies, sorted.
async fn calm_latencies(client: &mut Keyed, first_id: u128) -> Vec<Duration> {
    let mut tick = tokio::time::interval(CALM_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = Instant::now();
    let mut latencies = Vec::new();
    let mut id = first_id;
    while started.elapsed() < PHASE {
        tick.tick().await;
        let sent = Instant::now();
        let answer = client.create_transfers(transfers(id, 1)).await;
        let results = answer
            .expect("the calm caller is never refused")
            .into_inner();
        assert!(results.results.iter().all(|&code| code == 0), "{results:?}");
        latencies.push(sent.elapsed());
        id += 1;
    }
    latencies.sort();
    latencies
}

fn p99(sorted: &[Duration]) -> Duration {
    sorted[(sorted.len() * 99 / 100).min(sorted.len() - 1)]
}

#[derive(Default)]
struct FloodCounts {
    admitted: AtomicU64,
    refused: AtomicU64,
    refused_without_hint: AtomicU64,
}

/// An open-loop flood from `client` for `length`: a full batch every `period` whether or not
/// the earlier ones were answered, each with ids of its own; counted in `counts`, refusals
/// checked to name `refused_as`. The admitted calls' latencies, sorted.
async fn flood(
    client: Keyed,
    period: Duration,
    length: Duration,
    counts: Arc<FloodCounts>,
    refused_as: &'static str,
) -> Vec<Duration> {
    let mut tick = tokio::time::interval(period);
    let started = Instant::now();
    let mut calls = Vec::new();
    let mut call = 0u128;
    while started.elapsed() < length {
        tick.tick().await;
        let (client, counts) = (client.clone(), Arc::clone(&counts));
        let request = transfers(1 + call * FLOOD_BATCH, FLOOD_BATCH);
        call += 1;
        calls.push(tokio::spawn(async move {
            flood_call(client, request, &counts, refused_as).await
        }));
    }
    let mut latencies = Vec::new();
    for call in calls {
        latencies.extend(call.await.unwrap());
    }
    latencies.sort();
    latencies
}

/// A raw client with `token` on a connection of its own, and accounts 1 and 2 created.
async fn with_two_accounts(url: &str, token: &str) -> Keyed {
    let mut client = keyed(url, token).await;
    let accounts = support::ledger_accounts(2);
    let created = client
        .create_accounts(proto::CreateAccountsRequest {
            accounts: vec![],
            packed: convert::pack_accounts(&accounts).into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(created.results.iter().all(|&code| code == 0));
    client
}

/// One flood call: admitted (every transfer created), its latency; or refused
/// `RESOURCE_EXHAUSTED` with `refused_as` in its message (the reason and rule), counted.
async fn flood_call(
    mut client: Keyed,
    request: proto::CreateTransfersRequest,
    counts: &FloodCounts,
    refused_as: &str,
) -> Option<Duration> {
    let sent = Instant::now();
    match client.create_transfers(request).await {
        Ok(answer) => {
            assert!(answer.into_inner().results.iter().all(|&code| code == 0));
            counts.admitted.fetch_add(1, Ordering::Relaxed);
            Some(sent.elapsed())
        }
        Err(status) => {
            assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
            assert!(status.message().contains(refused_as), "{status:?}");
            if status.metadata().get("retry-after-ms").is_none() {
                counts.refused_without_hint.fetch_add(1, Ordering::Relaxed);
            }
            counts.refused.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[test]
fn a_caller_flooding_at_ten_times_its_limit_gets_its_limit_and_leaves_the_others_their_latency() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node");
    let keys = dir.path().join("keys.json");
    let flood_token = support::create_named_key(&keys, "flood", "write");
    let calm_token = support::create_named_key(&keys, "calm", "write");
    let rules = dir.path().join("flow.json");
    std::fs::write(
        &rules,
        format!(
            r#"{{"limits":[{{"api":"create_transfers","caller":"flood","rate_per_second":{FLOOD_LIMIT_PER_SECOND},"burst":2}}],
               "pools":{{"write":{{"per_caller_max_in_flight":8}}}}}}"#
        ),
    )
    .unwrap();
    let node = start_with_rules(&data, &keys, &rules);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let url = node.grpc_url();
    let counts = Arc::new(FloodCounts::default());
    let (alone, beside) = runtime.block_on(async {
        let mut calm = with_two_accounts(&url, &calm_token).await;
        // Warm the connection and the node, then measure the calm caller alone.
        let _ = calm.create_transfers(transfers(1 << 40, 1)).await.unwrap();
        let alone = calm_latencies(&mut calm, 1 << 41).await;

        // The flood: ten times the limit, open loop (a call every 10 ms whether or not the
        // earlier ones were answered), full batches, from a connection of its own.
        let flood_client = keyed(&url, &flood_token).await;
        let period = Duration::from_secs(1) / (FLOOD_LIMIT_PER_SECOND * FLOOD_TIMES_LIMIT) as u32;
        let flooding = tokio::spawn(flood(
            flood_client,
            period,
            PHASE,
            Arc::clone(&counts),
            "(rate, rule limits[0])",
        ));
        let beside = calm_latencies(&mut calm, 1 << 42).await;
        flooding.await.unwrap();
        (alone, beside)
    });
    let admitted = counts.admitted.load(Ordering::Relaxed);
    let refused = counts.refused.load(Ordering::Relaxed);
    let offered = admitted + refused;
    let seconds = PHASE.as_secs();
    eprintln!(
        "calm p99 alone {:?} (p50 {:?}, {} calls), beside the flood {:?} (p50 {:?}); flood offered {offered}, admitted {admitted}, refused {refused}",
        p99(&alone),
        alone[alone.len() / 2],
        alone.len(),
        p99(&beside),
        beside[beside.len() / 2]
    );
    // The flood was ten times the limit, and got the limit (and its burst), not more.
    assert!(
        offered >= FLOOD_LIMIT_PER_SECOND * FLOOD_TIMES_LIMIT * seconds * 8 / 10,
        "{offered}"
    );
    assert!(
        admitted <= FLOOD_LIMIT_PER_SECOND * seconds + 2 + 1,
        "{admitted}"
    );
    assert!(
        admitted >= FLOOD_LIMIT_PER_SECOND * seconds * 7 / 10,
        "{admitted}"
    );
    assert_eq!(counts.refused_without_hint.load(Ordering::Relaxed), 0);
    // The calm caller's p99 beside the flood is within the bound of its p99 alone.
    let bound = p99(&alone) * CALM_P99_FACTOR + CALM_P99_SLACK;
    assert!(
        p99(&beside) <= bound,
        "calm p99 beside the flood {:?} > bound {bound:?} (alone {:?})",
        p99(&beside),
        p99(&alone)
    );
    // Every refusal was counted, by API and reason.
    let metrics = request_as(None, &node.http_addr, "GET", "/metrics", None, "").unwrap();
    let counted = testkit::http::metric_value(
        &metrics.body,
        r#"fincore_flow_refusals_total{api="create_transfers",reason="rate"}"#,
    );
    assert_eq!(counted, Some(refused as f64), "{}", metrics.body);
}

/// Polls `check` every 50 ms for at most 5 s.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn transfer_json(id: u128) -> String {
    format!(
        r#"[{{"id":"{id}","debit_account_id":"1","credit_account_id":"2","amount":"1","ledger":1,"code":1}}]"#
    )
}

#[test]
fn switches_and_limits_change_at_run_time_and_a_bad_file_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node");
    let keys = dir.path().join("keys.json");
    let token = support::create_named_key(&keys, "writer", "write");
    let rules = dir.path().join("flow.json");

    // A bad file stops the start, naming the field.
    std::fs::write(&rules, r#"{"limits":[{"rate_per_second":0}]}"#).unwrap();
    let refused = std::process::Command::new(fincore_exe())
        .args([
            "serve",
            "--bootstrap",
            "--insecure-peers",
            "--grpc",
            "127.0.0.1:0",
        ])
        .args([
            "--http",
            "127.0.0.1:0",
            "--peer",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&data)
        .arg("--keys")
        .arg(&keys)
        .arg("--flow-rules")
        .arg(&rules)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("--flow-rules") && stderr.contains("limits[0].rate_per_second"),
        "{stderr}"
    );
    assert!(!data.exists(), "a refused start writes nothing");

    std::fs::write(&rules, "{}").unwrap();
    let node = start_with_rules(&data, &keys, &rules);
    let http = node.http_addr.clone();
    let call = |method: &str, path: &str, body: &str| {
        let content = (!body.is_empty()).then_some("application/json");
        request_as(Some(&token), &http, method, path, content, body).unwrap()
    };
    let accounts = r#"[{"id":"1","ledger":1,"code":1},{"id":"2","ledger":1,"code":1}]"#;
    assert_eq!(call("POST", "/v1/accounts", accounts).status, 200);
    assert_eq!(call("POST", "/v1/transfers", &transfer_json(1)).status, 200);

    // Read-only and history off, at run time.
    std::fs::write(
        &rules,
        r#"{"switches":{"read_only":true,"disabled_apis":["get_account_transfers","get_account_balances"]}}"#,
    )
    .unwrap();
    node.signal(Signal::Hup).unwrap();
    eventually("read-only mode", || {
        call("POST", "/v1/transfers", &transfer_json(2)).status == 429
    });
    let refusal = call("POST", "/v1/transfers", &transfer_json(2));
    assert!(
        refusal.head.to_ascii_lowercase().contains("retry-after: 1"),
        "{}",
        refusal.head
    );
    let body = refusal.json().unwrap();
    assert_eq!(body["retryable"], true);
    assert!(
        body["error"].as_str().unwrap().contains("read-only"),
        "{body}"
    );
    let history = call("GET", "/v1/accounts/1/transfers", "");
    assert_eq!(history.status, 429, "{}", history.body);
    assert!(
        history
            .body
            .contains("get_account_transfers is switched off"),
        "{}",
        history.body
    );
    // Lookups go on.
    assert_eq!(call("GET", "/v1/accounts/1", "").status, 200);

    // A bad file on reload: refused, the rules in use stay, the log names the field.
    std::fs::write(&rules, r#"{"switches":{"disabled_apis":["drop_tables"]}}"#).unwrap();
    node.signal(Signal::Hup).unwrap();
    eventually("the refused reload is logged", || {
        std::fs::read_to_string(&node.log_path)
            .unwrap_or_default()
            .contains("switches.disabled_apis[0]")
    });
    assert_eq!(call("POST", "/v1/transfers", &transfer_json(2)).status, 429);

    // A rate limit instead: one transfer call a second, the rest refused with a hint.
    std::fs::write(
        &rules,
        r#"{"limits":[{"api":"create_transfers","rate_per_second":1}]}"#,
    )
    .unwrap();
    node.signal(Signal::Hup).unwrap();
    eventually("writes again", || {
        call("POST", "/v1/transfers", &transfer_json(2)).status == 200
    });
    let over = call("POST", "/v1/transfers", &transfer_json(3));
    assert_eq!(over.status, 429, "{}", over.body);
    assert!(over.body.contains("over the rate limit"), "{}", over.body);
    assert_eq!(call("GET", "/v1/accounts/1/transfers", "").status, 200);
    // The refused transfer changed nothing: it is not there.
    let lookup = call("POST", "/v1/transfers/lookup", r#"{"ids":["3"]}"#);
    assert_eq!(
        lookup.json().unwrap()["transfers"],
        serde_json::json!([]),
        "{}",
        lookup.body
    );
}

#[test]
fn a_gateway_applies_its_rules_to_its_callers() {
    let dir = tempfile::tempdir().unwrap();
    let local = testkit::cluster::LocalGroups::start(fincore_exe(), dir.path(), 2, 1, &[])
        .unwrap_or_else(|error| panic!("{error}"));
    let gateway = support::gateway::start_with_rules(
        dir.path(),
        &local,
        r#"{"switches":{"disabled_apis":["lookup_accounts"]},
            "limits":[{"api":"create_accounts","rate_per_second":1}]}"#,
    );
    let http = &gateway.http_addr;
    let accounts = |id: u128| format!(r#"[{{"id":"{id}","ledger":1,"code":1}}]"#);
    assert_eq!(
        support::post_json(http, "/v1/accounts", &accounts(1)).status,
        200
    );
    let over = support::post_json(http, "/v1/accounts", &accounts(2));
    assert_eq!(over.status, 429, "{}", over.body);
    let lookup = support::get(http, "/v1/accounts/1");
    assert_eq!(lookup.status, 429, "{}", lookup.body);
    assert!(
        lookup.body.contains("lookup_accounts is switched off"),
        "{}",
        lookup.body
    );
    // Over gRPC too: RESOURCE_EXHAUSTED with the hint.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let channel = tonic::transport::Channel::from_shared(gateway.grpc_url())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut raw = support::raw_ledger(channel);
        let status = raw
            .lookup_accounts(proto::LookupRequest {
                ids: vec![convert::u128_to(1).unwrap()],
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
        assert!(status.metadata().get("retry-after-ms").is_some());
    });
}

/// A hot account: at most 1 transfer a second (burst 5) may name account 1. Its sixth
/// transfer at once is refused 429 naming it (nothing applied: the transfer does not exist),
/// while transfers between other accounts go on; a batch naming it more often than its burst
/// is refused as invalid; after the wait it was told, it passes.
#[test]
fn a_hot_account_gets_its_limit_and_the_other_accounts_are_not_held_back() {
    let dir = tempfile::tempdir().unwrap();
    let (node, token) = writer_node(
        dir.path(),
        r#"{"hot_accounts":{"rate_per_second":1,"burst":5}}"#,
    );
    let http = node.http_addr.clone();
    let call = |path: &str, body: &str| {
        request_as(
            Some(&token),
            &http,
            "POST",
            path,
            Some("application/json"),
            body,
        )
        .unwrap()
    };
    let accounts: Vec<String> = (1..=10)
        .map(|id| format!(r#"{{"id":"{id}","ledger":1,"code":1}}"#))
        .collect();
    let created = call("/v1/accounts", &format!("[{}]", accounts.join(",")));
    assert_eq!(created.status, 200, "{}", created.body);
    let transfer = |id: u64, debit: u64, credit: u64| {
        format!(
            r#"{{"id":"{id}","debit_account_id":"{debit}","credit_account_id":"{credit}","amount":"1","ledger":1,"code":1}}"#
        )
    };
    // Account 1 pays five others in one batch: its burst (each other account is named once).
    let five: Vec<String> = (1..=5).map(|id| transfer(id, 1, id + 1)).collect();
    let answer = call("/v1/transfers", &format!("[{}]", five.join(",")));
    assert_eq!(answer.status, 200, "{}", answer.body);
    let refused = call("/v1/transfers", &format!("[{}]", transfer(6, 1, 7)));
    // (The next call, well within the second a place takes to come back.)
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert!(refused.body.contains("account 1"), "{}", refused.body);
    assert!(refused.head.to_ascii_lowercase().contains("retry-after: 1"));
    let looked = call("/v1/transfers/lookup", r#"{"ids":["6"]}"#);
    assert_eq!(looked.json().unwrap()["transfers"], serde_json::json!([]));
    // Account 1's limit holds nothing else back (8 and 9 are named four times each).
    for id in 7..=10 {
        let answer = call("/v1/transfers", &format!("[{}]", transfer(id, 8, 9)));
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    // More transfers naming account 1 in one batch than its burst: invalid, never retryable.
    let six: Vec<String> = (100..106).map(|id| transfer(id, 1, 10)).collect();
    let invalid = call("/v1/transfers", &format!("[{}]", six.join(",")));
    assert_eq!(invalid.status, 400, "{}", invalid.body);
    assert_eq!(invalid.json().unwrap()["field"], "transfers");
    // After the wait it was told (at most a second), account 1 takes a transfer again.
    eventually("account 1 to have room again", || {
        call("/v1/transfers", &format!("[{}]", transfer(6, 1, 7))).status == 200
    });
    let metrics = support::get(&http, "/metrics").body;
    assert!(
        metrics.contains(
            r#"fincore_flow_refusals_total{api="create_transfers",reason="hot_account"}"#
        ),
        "{metrics}"
    );
    node.stop().unwrap();
}

/// How long the adaptive test's light phase and its flood last, and the flood's pace (full
/// batches, open loop: well past what the node serves in any build).
const ADAPTIVE_LIGHT: Duration = Duration::from_millis(1_000);
const ADAPTIVE_FLOOD: Duration = Duration::from_millis(2_500);
const ADAPTIVE_FLOOD_PERIOD: Duration = Duration::from_millis(4);
/// Callers at once in the light phase: more than the rule's `min_in_flight` (2).
const ADAPTIVE_LIGHT_CALLERS: u128 = 3;

/// Adaptive protection on a node's write pool (`latency_ms` 20): healthy traffic (three
/// callers at once, more than the floor) is never refused; a flood of full batches far past
/// what the node serves makes its calls slow, and the node then refuses what it cannot serve
/// at once (`overload`, retryable, with when to retry) instead of queueing it; refused calls
/// change nothing (the balances count exactly the admitted transfers); once the flood is over,
/// calls are admitted again, and every refusal was counted.
#[test]
fn an_overloaded_node_sheds_what_it_cannot_serve_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let (node, token) = writer_node(
        dir.path(),
        r#"{"pools":{"write":{"adaptive":{"latency_ms":20,"min_in_flight":2}}}}"#,
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let url = node.grpc_url();
    let counts = Arc::new(FloodCounts::default());
    let (light_calls, flood_transfers, latencies) = runtime.block_on(async {
        let client = with_two_accounts(&url, &token).await;
        // Healthy traffic, more callers at once than the floor (each one call at a time):
        // never refused.
        let light: Vec<_> = (0..ADAPTIVE_LIGHT_CALLERS)
            .map(|caller| {
                let mut client = client.clone();
                tokio::spawn(async move {
                    let started = Instant::now();
                    let mut calls = 0u128;
                    while started.elapsed() < ADAPTIVE_LIGHT {
                        let id = (1 << 40) + (caller << 30) + calls;
                        let answer = client
                            .create_transfers(transfers(id, 1))
                            .await
                            .expect("healthy traffic is never refused");
                        assert!(answer.into_inner().results.iter().all(|&code| code == 0));
                        calls += 1;
                    }
                    calls
                })
            })
            .collect();
        let mut light_calls = 0u128;
        for caller in light {
            light_calls += caller.await.unwrap();
        }
        // The flood: a full batch every few milliseconds.
        let refused_as = "(overload, rule pools.write.adaptive)";
        let latencies = flood(
            client,
            ADAPTIVE_FLOOD_PERIOD,
            ADAPTIVE_FLOOD,
            Arc::clone(&counts),
            refused_as,
        )
        .await;
        let flood_transfers = u128::from(counts.admitted.load(Ordering::Relaxed)) * FLOOD_BATCH;
        (light_calls, flood_transfers, latencies)
    });
    let admitted = counts.admitted.load(Ordering::Relaxed);
    let refused = counts.refused.load(Ordering::Relaxed);
    if !latencies.is_empty() {
        eprintln!(
            "light calls {light_calls}; flood admitted {admitted} (p50 {:?}, p99 {:?}), refused {refused}",
            latencies[latencies.len() / 2],
            p99(&latencies)
        );
    }
    assert!(
        refused > 0,
        "the flood was never shed ({admitted} admitted)"
    );
    assert!(admitted > 0, "the flood was shut out ({refused} refused)");
    assert_eq!(counts.refused_without_hint.load(Ordering::Relaxed), 0);
    // Refused calls changed nothing: account 1 paid exactly the admitted transfers.
    let http = node.http_addr.clone();
    let account = request_as(Some(&token), &http, "GET", "/v1/accounts/1", None, "").unwrap();
    assert_eq!(account.status, 200, "{}", account.body);
    assert_eq!(
        account.json().unwrap()["debits_posted"],
        (light_calls + flood_transfers).to_string()
    );
    // The flood over and its calls ended, once its slow calls are out of the window (a second),
    // a few calls at once are all admitted again (a round is tried again if a slow disk made
    // one of its calls slow enough to shed another, for at most 5 s).
    std::thread::sleep(Duration::from_millis(1_200));
    let transfer = |id: u128| {
        format!(
            r#"[{{"id":"{id}","debit_account_id":"1","credit_account_id":"2","amount":"1","ledger":1,"code":1}}]"#
        )
    };
    let mut recovery_refused = 0u64;
    let deadline = Instant::now() + Duration::from_secs(5);
    for round in 0u128.. {
        let statuses: Vec<u16> = std::thread::scope(|scope| {
            let calls: Vec<_> = (0..4u128)
                .map(|i| {
                    let body = transfer((1 << 50) + round * 4 + i);
                    let (http, token) = (&http, &token);
                    scope.spawn(move || {
                        request_as(
                            Some(token),
                            http,
                            "POST",
                            "/v1/transfers",
                            Some("application/json"),
                            &body,
                        )
                        .unwrap()
                    })
                })
                .collect();
            calls
                .into_iter()
                .map(|call| {
                    let answer = call.join().unwrap();
                    assert!([200, 429].contains(&answer.status), "{}", answer.body);
                    answer.status
                })
                .collect()
        });
        let refused_now = statuses.iter().filter(|&&status| status == 429).count() as u64;
        recovery_refused += refused_now;
        if refused_now == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "calls were still shed after the flood: {statuses:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let metrics = support::get(&http, "/metrics").body;
    assert_eq!(
        testkit::http::metric_value(
            &metrics,
            r#"fincore_flow_refusals_total{api="create_transfers",reason="overload"}"#,
        ),
        Some((refused + recovery_refused) as f64),
        "{metrics}"
    );
    node.stop().unwrap();
}
