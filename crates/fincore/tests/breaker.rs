//! Circuit breakers through the real binaries (`docs/flow-control.md`, "Circuit breakers"):
//! a gateway over two groups, with a breaker rule in its flow rules, carries steady traffic to
//! both. One group's only node is frozen (SIGSTOP: its sockets stay open, nothing answers).
//! The breaker on that group opens within the stated bound, after which its callers are
//! answered at once (UNAVAILABLE, naming the breaker) instead of hanging; the other group's
//! calls all succeed with their latency within a stated bound of what it was before. Thawed,
//! the group is probed after the open time and its breaker closes: its calls succeed again.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api::{convert, proto};
use support::{ChildNode, fincore_exe};
use testkit::node::Signal;

const SLOW_CALL_MS: u64 = 200;
const OPEN_MS: u64 = 1_000;
/// Each group is sent one call this often.
const INTERVAL: Duration = Duration::from_millis(20);
/// The stated bound: the breaker opens within `slow_call_ms` + one window (1 s) + the
/// `min_calls` it needs, at this traffic, of the stall's start: 2 s.
const OPEN_WITHIN: Duration = Duration::from_secs(2);
/// The other group's p99 during the stall is at most this factor of its p99 before, plus
/// `OTHER_P99_SLACK`.
const OTHER_P99_FACTOR: u32 = 3;
const OTHER_P99_SLACK: Duration = Duration::from_millis(100);

/// One call as its caller saw it.
#[derive(Debug, Clone)]
struct Call {
    /// When it was sent, from the start of the run.
    sent: Duration,
    latency: Duration,
    /// `None`: created; otherwise the refusal's code and message.
    refused: Option<(tonic::Code, String)>,
}

fn p99(latencies: &mut [Duration]) -> Duration {
    latencies.sort();
    latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)]
}

fn metric(gateway: &ChildNode, name: &str, group: &str) -> Option<f64> {
    let text = support::get(&gateway.http_addr, "/metrics").body;
    let prefix = format!("{name}{{group=\"{group}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|value| value.trim().parse().ok())
}

#[test]
fn a_stalled_group_opens_its_breaker_and_the_other_group_keeps_its_latency() {
    let dir = tempfile::tempdir().unwrap();
    let local =
        testkit::cluster::LocalGroups::start(fincore_exe(), &dir.path().join("groups"), 2, 1, &[])
            .unwrap_or_else(|error| panic!("{error}"));
    let gateway = support::gateway::start_with_rules(
        dir.path(),
        &local,
        &format!(
            r#"{{"breaker":{{"error_ratio_percent":50,"slow_ratio_percent":50,"slow_call_ms":{SLOW_CALL_MS},
                "min_calls":5,"window_seconds":1,"open_ms":{OPEN_MS},"half_open_probes":2}}}}"#
        ),
    );
    let groups: Vec<cluster::GroupId> = local.map.groups().keys().copied().collect();
    let (stalled, other) = (groups[0], groups[1]);
    let ids = [
        support::gateway::ids_in(&local.map, stalled, 2_000),
        support::gateway::ids_in(&local.map, other, 2_000),
    ];

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let calls: [Arc<Mutex<Vec<Call>>>; 2] = Default::default();
    let started = Instant::now();
    let stop_at = Duration::from_secs(1);
    let thaw_at = Duration::from_millis(3_500);
    let end_at = Duration::from_secs(8);
    let stalled_index = local
        .layouts
        .iter()
        .position(|layout| layout.group == stalled.to_string())
        .expect("the stalled group is one of the local groups");
    let node = local
        .node(stalled_index, 0)
        .expect("the stalled group's node");
    runtime.block_on(async {
        let channel = tonic::transport::Channel::from_shared(gateway.grpc_url())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let client = support::raw_ledger(channel);
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut tasks = Vec::new();
        let (mut stopped, mut thawed) = (false, false);
        let mut n = 0;
        while started.elapsed() < end_at {
            tick.tick().await;
            if !stopped && started.elapsed() >= stop_at {
                node.signal(Signal::Stop).unwrap();
                stopped = true;
            }
            if !thawed && started.elapsed() >= thaw_at {
                node.signal(Signal::Cont).unwrap();
                thawed = true;
            }
            for (g, ids) in ids.iter().enumerate() {
                let account = ledger::Account {
                    id: ids[n],
                    ledger: 1,
                    code: 1,
                    ..Default::default()
                };
                let request = proto::CreateAccountsRequest {
                    accounts: vec![],
                    packed: convert::pack_accounts(&[account]).into(),
                };
                let mut client = client.clone();
                let calls = Arc::clone(&calls[g]);
                tasks.push(tokio::spawn(async move {
                    let sent = started.elapsed();
                    let answer = tokio::time::timeout(
                        Duration::from_secs(30),
                        client.create_accounts(request),
                    )
                    .await
                    .expect("every call is answered within 30 s");
                    let refused = match answer {
                        Ok(results) => {
                            let results = results.into_inner();
                            assert!(results.results.iter().all(|&code| code == 0), "{results:?}");
                            None
                        }
                        Err(status) => Some((status.code(), status.message().to_owned())),
                    };
                    calls.lock().unwrap().push(Call {
                        sent,
                        latency: started.elapsed() - sent,
                        refused,
                    });
                }));
            }
            n += 1;
        }
        for task in tasks {
            task.await.unwrap();
        }
    });
    let [stalled_calls, other_calls] = calls.map(|calls| {
        let mut calls = calls.lock().unwrap().clone();
        calls.sort_by_key(|call| call.sent);
        calls
    });

    // The breaker opened within the bound, and its refusals came at once.
    let refusals: Vec<&Call> = stalled_calls
        .iter()
        .filter(|call| {
            call.refused
                .as_ref()
                .is_some_and(|(_, message)| message.contains("circuit breaker is open"))
        })
        .collect();
    let first = refusals.first().expect("the breaker never opened");
    let opened_after = first.sent - stop_at;
    assert!(
        first.sent >= stop_at && opened_after <= OPEN_WITHIN,
        "opened {opened_after:?} after the stall"
    );
    assert!(
        refusals
            .iter()
            .all(|call| call.refused.as_ref().unwrap().0 == tonic::Code::Unavailable)
    );
    let mut refused_latencies: Vec<Duration> = refusals.iter().map(|call| call.latency).collect();
    let refused_p99 = p99(&mut refused_latencies);
    assert!(refused_p99 < Duration::from_millis(100), "{refused_p99:?}");

    // The other group: every call created, its p99 within the bound of before.
    assert!(
        other_calls.iter().all(|call| call.refused.is_none()),
        "{:?}",
        other_calls.iter().find(|call| call.refused.is_some())
    );
    let mut before: Vec<Duration> = other_calls
        .iter()
        .filter(|call| call.sent < stop_at)
        .map(|call| call.latency)
        .collect();
    let mut during: Vec<Duration> = other_calls
        .iter()
        .filter(|call| call.sent >= stop_at && call.sent < thaw_at)
        .map(|call| call.latency)
        .collect();
    let (before_p99, during_p99) = (p99(&mut before), p99(&mut during));
    let bound = before_p99 * OTHER_P99_FACTOR + OTHER_P99_SLACK;
    eprintln!(
        "breaker opened {opened_after:?} after the stall ({} calls refused, p99 {refused_p99:?}); other group p99 {before_p99:?} before, {during_p99:?} during ({} calls)",
        refusals.len(),
        during.len()
    );
    assert!(during_p99 <= bound, "{during_p99:?} > {bound:?}");

    // Thawed: probes close the breaker after the open time (a probe slow while the node
    // catches up opens it for one more round); the last second's calls all succeed.
    let recovered = end_at - Duration::from_secs(1);
    let late: Vec<&Call> = stalled_calls
        .iter()
        .filter(|call| call.sent >= recovered)
        .collect();
    assert!(late.len() > 10, "{}", late.len());
    assert!(
        late.iter().all(|call| call.refused.is_none()),
        "{:?}",
        late.iter().find(|call| call.refused.is_some())
    );
    let stalled_name = stalled.to_string();
    assert_eq!(
        metric(&gateway, "fincore_breaker_state", &stalled_name),
        Some(0.0)
    );
    let counted = metric(&gateway, "fincore_breaker_refusals_total", &stalled_name).unwrap();
    assert_eq!(counted as usize, refusals.len());
    assert_eq!(
        metric(
            &gateway,
            "fincore_breaker_refusals_total",
            &other.to_string()
        ),
        None
    );

    gateway.stop().unwrap();
    local.stop().unwrap();
}
