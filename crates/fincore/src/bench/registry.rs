//! `fincore bench registry`: the service registry under load, as a separate `fincore registry
//! serve` process reached over loopback gRPC. Publishers are registrations multiplexed over a
//! few raw protocol streams (so millions fit on one machine); subscribers likewise. Measured:
//! memory per publisher (the registry's RSS before and after), the first full sync, then
//! change→push latency for changes injected at a stated rate, pushes per second, bytes before
//! and after compression (the registry's own counters) and the registry's CPU.
//!
//! Latency is measured from the moment the bench sends a change (each record carries its send
//! time in the attribute `t`, microseconds since the epoch) to the moment a sampled subscriber
//! receives a push holding it; every sampled subscription of the changed key counts one sample.
//! Owns the workload and the report; the registry is the product's.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use prost::Message;
use rand::{Rng, SeedableRng};
use registry::proto::{self, client_message::Body, server_message};
use serde::Serialize;
use tokio::sync::mpsc;

use super::LatencyMs;

#[derive(Debug, Clone, clap::Args)]
pub struct RegistryBenchArgs {
    /// Publishers (registrations), spread evenly over the data ids.
    #[arg(long, default_value_t = 100_000)]
    publishers: u64,
    /// Subscriptions, spread evenly over the data ids.
    #[arg(long, default_value_t = 1_000)]
    subscribers: u64,
    /// Data ids.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    data_ids: u64,
    /// Changes injected once everything is synced (one publisher's record re-registered each).
    #[arg(long, default_value_t = 1_000)]
    changes: u64,
    /// Changes per second.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Streams the publishers are multiplexed over.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=1024))]
    publisher_streams: u64,
    /// Streams the subscribers are multiplexed over.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1024))]
    subscriber_streams: u64,
    /// Decode the pushes of one subscription in this many (the others are acknowledged unread);
    /// default: about 100 sampled subscriptions (decoding is the bench's cost, not the
    /// registry's: on two cores, decoding every push would measure the bench).
    #[arg(long)]
    sample_every: Option<u64>,
    /// A named workload: `big-app` is the seed's storm, one session's share: one application of
    /// 100 data ids × 8,000 instances of 150 bytes, 200 subscribers per data id (20,000 per
    /// session, of the seed's 100 sessions), and one instance of each data id changing at once.
    #[arg(long, value_parser = ["big-app"])]
    scenario: Option<String>,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    scenario: String,
    publishers: u64,
    subscribers: u64,
    data_ids: u64,
    record_bytes: usize,
    register_seconds: f64,
    registrations_per_second: f64,
    registry_rss_bytes_before: u64,
    registry_rss_bytes_registered: u64,
    registry_rss_bytes_subscribed: u64,
    memory_bytes_per_publisher: f64,
    first_sync_seconds: f64,
    changes: u64,
    change_rate: f64,
    change_to_push_ms: LatencyMs,
    latency_samples: usize,
    latency_samples_missing: u64,
    change_phase_seconds: f64,
    pushes: u64,
    pushes_per_second: f64,
    push_bytes_plain: u64,
    push_bytes_sent: u64,
    compression_ratio: f64,
    compressions: u64,
    registry_cpu_seconds_changes: f64,
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_micros() as u64)
}

fn key(data_id: u64) -> proto::DataKey {
    proto::DataKey {
        instance_id: "bench".into(),
        group: "default".into(),
        data_id: format!("com.example.app.Service{data_id}:1.0"),
    }
}

/// A realistic instance record (about 150 bytes encoded): instances of one service differ
/// mostly by address.
fn record(publisher: u64, data_id: u64, sent_at: u64) -> proto::Record {
    let attribute = |key: &str, value: String| proto::Attribute {
        key: key.into(),
        value,
    };
    proto::Record {
        address: format!(
            "10.{}.{}.{}:12200",
            (publisher >> 16) & 255,
            (publisher >> 8) & 255,
            publisher & 255
        ),
        attributes: vec![
            attribute("app", format!("payments-{data_id}")),
            attribute("protocol", "bolt".into()),
            attribute("version", "4.2.1".into()),
            attribute("weight", "100".into()),
            attribute("serialization", "hessian2".into()),
            attribute("startup", "1764806400000".into()),
            attribute("t", sent_at.to_string()),
        ],
    }
}

/// One raw protocol stream: its sender, and a task that reads what comes back.
struct RawStream {
    send: mpsc::Sender<proto::ClientMessage>,
    reader: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn open_stream(
    addr: &str,
    client_id: String,
    on_message: impl FnMut(proto::ServerMessage, &mpsc::Sender<proto::ClientMessage>) + Send + 'static,
) -> anyhow::Result<RawStream> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .initial_stream_window_size(Some(limits::HTTP2_STREAM_WINDOW_BYTES))
        .initial_connection_window_size(Some(limits::HTTP2_CONNECTION_WINDOW_BYTES))
        .connect()
        .await
        .context("connecting to the registry")?;
    let mut grpc = proto::registry_client::RegistryClient::new(channel)
        .max_decoding_message_size(limits::REGISTRY_SERVER_MESSAGE_BYTES_MAX);
    let (send, outgoing) = mpsc::channel::<proto::ClientMessage>(4096);
    send.send(proto::ClientMessage {
        request_id: 0,
        body: Some(Body::Hello(proto::Hello {
            client_id,
            zone: "zone-a".into(),
            accept: vec![proto::Encoding::Zstd as i32],
        })),
    })
    .await?;
    let outgoing = futures::stream::unfold(outgoing, |mut outgoing| async move {
        outgoing.recv().await.map(|message| (message, outgoing))
    });
    let mut inbound = grpc.session(outgoing).await?.into_inner();
    let acks = send.clone();
    let mut on_message = on_message;
    let reader = tokio::spawn(async move {
        while let Some(message) = inbound.message().await? {
            on_message(message, &acks);
        }
        Ok(())
    });
    Ok(RawStream { send, reader })
}

/// What the subscribers saw.
#[derive(Default)]
struct Seen {
    /// Per sampled subscription: the newest `t` seen.
    newest: HashMap<String, u64>,
    /// Per subscription: the record count of its newest push.
    counts: HashMap<String, u32>,
    latencies: Vec<Duration>,
}

fn cpu_seconds(pid: u32) -> f64 {
    super::groups::process_cpu_seconds(&pid.to_string())
}

/// A series' value in `/metrics` text (0 while it has no sample).
fn counter(metrics: &str, series: &str) -> u64 {
    testkit::http::metric_value(metrics, series).map_or(0, |value| value as u64)
}

pub fn run(args: &RegistryBenchArgs) -> anyhow::Result<std::process::ExitCode> {
    let mut args = args.clone();
    if args.scenario.as_deref() == Some("big-app") {
        args.publishers = 800_000;
        args.data_ids = 100;
        args.subscribers = 20_000;
        args.changes = 100;
        args.rate = 1_000_000.0;
        args.sample_every.get_or_insert(20);
    }
    anyhow::ensure!(
        args.publishers >= args.data_ids && args.subscribers >= args.data_ids,
        "--publishers and --subscribers must be at least --data-ids"
    );
    let runtime = crate::serve::runtime()?;
    let report = runtime.block_on(measure(&args))?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        let l = &report.change_to_push_ms;
        println!("fincore bench registry ({})", report.scenario);
        println!(
            "  workload      {} publishers ({} B records) over {} data ids, {} subscribers",
            report.publishers, report.record_bytes, report.data_ids, report.subscribers
        );
        println!(
            "  register      {:.1} s ({:.0}/s); registry RSS {} → {} MiB, {:.0} B per publisher; {} MiB once subscribed",
            report.register_seconds,
            report.registrations_per_second,
            report.registry_rss_bytes_before >> 20,
            report.registry_rss_bytes_registered >> 20,
            report.memory_bytes_per_publisher,
            report.registry_rss_bytes_subscribed >> 20,
        );
        println!("  first sync    {:.2} s", report.first_sync_seconds);
        println!(
            "  changes       {} at {}/s: change→push p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} samples, {} missing)",
            report.changes,
            report.change_rate,
            l.p50,
            l.p99,
            l.p100,
            report.latency_samples,
            report.latency_samples_missing
        );
        println!(
            "  pushes        {} in {:.2} s ({:.0}/s); {} MiB plain → {} MiB sent ({:.1}×); {} compressions; registry CPU {:.2} s",
            report.pushes,
            report.change_phase_seconds,
            report.pushes_per_second,
            report.push_bytes_plain >> 20,
            report.push_bytes_sent >> 20,
            report.compression_ratio,
            report.compressions,
            report.registry_cpu_seconds_changes,
        );
    }
    Ok(std::process::ExitCode::SUCCESS)
}

async fn measure(args: &RegistryBenchArgs) -> anyhow::Result<Report> {
    let exe = std::env::current_exe().context("finding the fincore executable")?;
    let dir = tempfile::tempdir()?;
    let node = testkit::node::ChildNode::start_registry(
        &exe,
        &dir.path().join("registry"),
        &[
            "--insecure-no-auth",
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
        ],
    )?;
    let addr = node.grpc_addr.clone();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = node.rss_bytes();
    let record_bytes = record(0, 0, now_micros()).encoded_len();

    // Publishers: registrations spread over the streams, as fast as the registry answers.
    let answered = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let mut publishers = Vec::new();
    for stream in 0..args.publisher_streams {
        let (answered, refused) = (Arc::clone(&answered), Arc::clone(&refused));
        let on_message = move |message: proto::ServerMessage, _: &mpsc::Sender<_>| {
            if let Some(server_message::Body::Answer(answer)) = message.body
                && answer.request_id != 0
            {
                answered.fetch_add(1, Ordering::Relaxed);
                if !answer.ok {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
            }
        };
        publishers.push(open_stream(&addr, format!("pub-{stream}"), on_message).await?);
    }
    let registered = Instant::now();
    let data_ids = args.data_ids;
    let register = move |publisher: u64, sent_at: u64| proto::ClientMessage {
        request_id: publisher + 1,
        body: Some(Body::Register(proto::Register {
            registration_id: format!("i{publisher}"),
            key: Some(key(publisher % data_ids)),
            record: Some(record(publisher, publisher % data_ids, sent_at)),
        })),
    };
    let mut sends = Vec::new();
    for (stream, publisher_stream) in publishers.iter().enumerate() {
        let send = publisher_stream.send.clone();
        let (streams, total) = (args.publisher_streams, args.publishers);
        sends.push(tokio::spawn(async move {
            let mut publisher = stream as u64;
            while publisher < total {
                if send.send(register(publisher, 0)).await.is_err() {
                    break;
                }
                publisher += streams;
            }
        }));
    }
    for send in sends {
        send.await?;
    }
    wait_until(
        "every registration answered",
        Duration::from_secs(600),
        || answered.load(Ordering::Relaxed) >= args.publishers,
    )
    .await?;
    anyhow::ensure!(
        refused.load(Ordering::Relaxed) == 0,
        "the registry refused {} registrations (see its log)",
        refused.load(Ordering::Relaxed)
    );
    let register_seconds = registered.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_registered = node.rss_bytes();

    // Subscribers: every subscription acknowledged; one in `sample_every` decoded for latency.
    let sample_every = args
        .sample_every
        .unwrap_or_else(|| (args.subscribers / 100).max(1));
    // Subscription s watches data id s % data_ids: sampling every `sample_every`-th round of
    // the data ids samples every data id alike.
    let data_ids = args.data_ids;
    let sampled = move |subscription: u64| (subscription / data_ids).is_multiple_of(sample_every);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut subscribers = Vec::new();
    for stream in 0..args.subscriber_streams {
        let seen = Arc::clone(&seen);
        let on_message = move |message: proto::ServerMessage, acks: &mpsc::Sender<_>| {
            let Some(server_message::Body::Push(push)) = message.body else {
                return;
            };
            let received = now_micros();
            let sampled = push
                .subscription_id
                .strip_prefix('s')
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(sampled);
            // Decoded before the shared tally is locked: the streams' readers decode at once.
            let records = sampled.then(|| {
                let plain = match proto::Encoding::try_from(push.encoding) {
                    Ok(proto::Encoding::Zstd) => {
                        zstd::bulk::decompress(&push.payload, push.plain_bytes as usize)
                            .map(bytes::Bytes::from)
                            .unwrap_or_default()
                    }
                    _ => push.payload.clone(),
                };
                proto::Records::decode(plain)
                    .map(|r| r.records)
                    .unwrap_or_default()
            });
            let mut seen = seen.lock().expect("never poisoned");
            seen.counts
                .insert(push.subscription_id.clone(), push.record_count);
            if let Some(records) = records {
                let newest_before = seen.newest.get(&push.subscription_id).copied().unwrap_or(0);
                let mut newest = newest_before;
                for published in &records {
                    let t = published
                        .record
                        .as_ref()
                        .and_then(|r| r.attributes.iter().find(|a| a.key == "t"))
                        .and_then(|a| a.value.parse::<u64>().ok())
                        .unwrap_or(0);
                    if t > newest_before && newest_before > 0 {
                        seen.latencies
                            .push(Duration::from_micros(received.saturating_sub(t)));
                    }
                    newest = newest.max(t);
                }
                // The first push sets the baseline (registrations carry t = 0 or older changes).
                seen.newest
                    .insert(push.subscription_id.clone(), newest.max(1));
            }
            let _ = acks.try_send(proto::ClientMessage {
                request_id: 0,
                body: Some(Body::Ack(proto::PushAck {
                    subscription_id: push.subscription_id,
                    version: push.version,
                })),
            });
        };
        subscribers.push(open_stream(&addr, format!("sub-{stream}"), on_message).await?);
    }
    let synced = Instant::now();
    for subscription in 0..args.subscribers {
        let stream = &subscribers[(subscription % args.subscriber_streams) as usize];
        stream
            .send
            .send(proto::ClientMessage {
                request_id: subscription + 1,
                body: Some(Body::Subscribe(proto::Subscribe {
                    subscription_id: format!("s{subscription}"),
                    key: Some(key(subscription % args.data_ids)),
                    scope: proto::Scope::Global as i32,
                    known_version: 0,
                })),
            })
            .await?;
    }
    let per_key = |data_id: u64| {
        args.publishers / args.data_ids + u64::from(data_id < args.publishers % args.data_ids)
    };
    wait_until("every subscriber synced", Duration::from_secs(600), || {
        let seen = seen.lock().expect("never poisoned");
        seen.counts.len() as u64 == args.subscribers
            && seen.counts.iter().all(|(id, count)| {
                let n: u64 = id[1..].parse().unwrap_or(0);
                u64::from(*count) == per_key(n % args.data_ids)
            })
    })
    .await?;
    let first_sync_seconds = synced.elapsed().as_secs_f64();
    let rss_subscribed = node.rss_bytes();

    // Changes at the stated rate, each a publisher's record sent again with a new `t`. (The
    // registry samples its counters each second: wait for a sample after the sync.)
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let metrics_before = testkit::http::get(&node.http_addr, "/metrics")?.body;
    let cpu_before = cpu_seconds(node.pid());
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    let changing = Instant::now();
    let mut changed_keys: HashMap<u64, u64> = HashMap::new();
    for change in 0..args.changes {
        let due = changing + Duration::from_secs_f64(change as f64 / args.rate);
        tokio::time::sleep_until(due.into()).await;
        let publisher = if args.scenario.is_some() {
            // The storm: one instance of each data id.
            change % args.data_ids + args.data_ids * rng.random_range(0..per_key(0).max(1) - 1)
        } else {
            rng.random_range(0..args.publishers)
        };
        *changed_keys.entry(publisher % args.data_ids).or_default() += 1;
        let stream = &publishers[(publisher % args.publisher_streams) as usize];
        stream.send.send(register(publisher, now_micros())).await?;
    }
    // Every sampled subscription of a changed key should see each change (or a later one: a
    // change overtaken before it was pushed is seen through the newer set, with no sample).
    let sampled_per_key = |data_id: u64| {
        (0..args.subscribers)
            .filter(|s| s % args.data_ids == data_id && sampled(*s))
            .count() as u64
    };
    let expected: u64 = changed_keys
        .iter()
        .map(|(data_id, changes)| changes * sampled_per_key(*data_id))
        .sum();
    let quiet = wait_until("the pushes settled", Duration::from_secs(120), || {
        seen.lock().expect("never poisoned").latencies.len() as u64 >= expected
    })
    .await;
    let change_phase_seconds = changing.elapsed().as_secs_f64();
    let cpu = cpu_seconds(node.pid()) - cpu_before;
    // The registry's counters are sampled each second: wait for the last sample.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let metrics = testkit::http::get(&node.http_addr, "/metrics")?.body;
    let delta = |series: &str| counter(&metrics, series) - counter(&metrics_before, series);
    let pushes = delta("fincore_registry_pushes_total");
    let plain = delta("fincore_registry_push_bytes_total{form=\"plain\"}");
    let sent = delta("fincore_registry_push_bytes_total{form=\"sent\"}");
    let compressions = delta("fincore_registry_compressions_total");
    let latencies = std::mem::take(&mut seen.lock().expect("never poisoned").latencies);
    let samples = latencies.len();
    if let Err(error) = quiet {
        eprintln!("warning: {error:#}");
    }
    for stream in publishers.into_iter().chain(subscribers) {
        drop(stream.send);
        stream.reader.abort();
    }
    node.stop()?;
    Ok(Report {
        scenario: args.scenario.clone().unwrap_or_else(|| "custom".into()),
        publishers: args.publishers,
        subscribers: args.subscribers,
        data_ids: args.data_ids,
        record_bytes,
        register_seconds,
        registrations_per_second: args.publishers as f64 / register_seconds,
        registry_rss_bytes_before: rss_before,
        registry_rss_bytes_registered: rss_registered,
        registry_rss_bytes_subscribed: rss_subscribed,
        memory_bytes_per_publisher: rss_registered.saturating_sub(rss_before) as f64
            / args.publishers as f64,
        first_sync_seconds,
        changes: args.changes,
        change_rate: args.rate,
        change_to_push_ms: LatencyMs::of(latencies),
        latency_samples: samples,
        latency_samples_missing: expected.saturating_sub(samples as u64),
        change_phase_seconds,
        pushes,
        pushes_per_second: pushes as f64 / change_phase_seconds,
        push_bytes_plain: plain,
        push_bytes_sent: sent,
        compression_ratio: if sent == 0 {
            0.0
        } else {
            plain as f64 / sent as f64
        },
        compressions,
        registry_cpu_seconds_changes: cpu,
    })
}

/// Polls `done` every 20 ms for at most `limit`.
async fn wait_until(what: &str, limit: Duration, done: impl Fn() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while !done() {
        anyhow::ensure!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
