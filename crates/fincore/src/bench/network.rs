//! The network benchmark: a replica group over gRPC (started here as child processes, or
//! `--addr`), `--clients` clients each with one batch in flight; optionally the leader is
//! killed mid-run and the longest write pause measured, or a follower is replaced by a new
//! member (`wipe`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use client::{Client, RetryPolicy};
use ledger::CreateTransferResult;

use super::cdc::Consumers;
use super::wipe::{self, WipePlan};
use super::workload::TransferGenerator;
use super::{BenchArgs, Measured, data_dir, peak_rss_bytes};
use testkit::group::GroupLayout;
use testkit::http::{Transport, get_json, replica_status};
use testkit::node::ChildNode;

/// Node `id`'s data directory in `dir`.
pub(super) fn node_dir(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("node-{id}"))
}

/// Starts `replicas` nodes forming one group (node i in `dir/node-i`), each taking a snapshot
/// every `checkpoint_interval` batches (0: never). A replicated group's layout plans for
/// `spare_members` more members, started later; it is returned with the nodes.
fn start_group(
    dir: &Path,
    replicas: u64,
    spare_members: usize,
    checkpoint_interval: u64,
    setup: &NodeSetup,
) -> anyhow::Result<(Vec<ChildNode>, Option<GroupLayout>)> {
    if replicas == 1 {
        let data_dir = node_dir(dir, 1);
        let mut args = testkit::group::FREE_PORTS_ARGS.map(String::from).to_vec();
        args.extend(testkit::group::single_node_args(&data_dir));
        args.extend(setup.serve_args());
        let node =
            crate::nodes::start_with_env(&data_dir, &args, checkpoint_interval, &setup.env())?;
        return Ok((vec![node], None));
    }
    let replicas = replicas as usize;
    let layout = GroupLayout::on_free_ports(replicas + spare_members)?;
    let nodes = (0..replicas)
        .map(|i| {
            let data_dir = node_dir(dir, i as u64 + 1);
            start_member(&data_dir, &layout, i, replicas, checkpoint_interval, setup)
        })
        .collect::<anyhow::Result<_>>()?;
    Ok((nodes, Some(layout)))
}

/// Starts member `i` of `layout` (node id `i + 1`) on `data_dir`, in a group whose members
/// are the layout's first `members`: on an empty directory member 0 bootstraps the group and
/// any other joins it (a new member then waits to be added).
pub(super) fn start_member(
    data_dir: &Path,
    layout: &GroupLayout,
    i: usize,
    members: usize,
    checkpoint_interval: u64,
    setup: &NodeSetup,
) -> anyhow::Result<ChildNode> {
    let mut args = layout.serve_args(i, members);
    if setup.open {
        // Plaintext peers instead of the layout's certificates.
        if let Some(at) = args.iter().position(|arg| arg == "--peer-certs") {
            args.drain(at..at + 2);
        }
    }
    args.extend(setup.serve_args());
    args.extend(layout.membership_args(i, data_dir));
    crate::nodes::start_with_env(data_dir, &args, checkpoint_interval, &setup.env())
}

/// How `--vs-insecure`'s open runs start their nodes: no keys, plaintext between replicas.
const OPEN_ARGS: [&str; 2] = ["--insecure-no-auth", "--insecure-peers"];

/// How the bench's nodes are started beyond what `serve` does by default (keys, mutual TLS
/// between replicas, change events kept).
#[derive(Clone, Default)]
pub(super) struct NodeSetup {
    /// `--cdc`'s runs without events: the nodes start with `FINCORE_EVENTS=off`.
    pub events_off: bool,
    /// `--vs-insecure`'s open runs: no keys, plaintext between replicas; the client sends no
    /// key.
    pub open: bool,
    /// `--client-tls`: the client listeners' certificate and key, and the authority's
    /// certificate (PEM) the clients trust.
    pub client_tls: Option<(PathBuf, PathBuf, Vec<u8>)>,
    /// `--vs-tracing`'s runs with export: the collector's URL and the sampling ratio.
    pub traces: Option<(String, f64)>,
}

impl NodeSetup {
    /// For a run of `args` with its nodes in `dir`: with `--client-tls` (and not open), issues
    /// a development certificate naming 127.0.0.1 in `dir/api-tls`. Points this process's HTTP
    /// helpers at the nodes' scheme.
    fn for_run(args: &BenchArgs, dir: &Path) -> anyhow::Result<NodeSetup> {
        let client_tls = if args.client_tls && !args.open {
            use replication::dev_certs::{Authority, LeafFiles, Purpose};
            let tls_dir = dir.join("api-tls");
            let authority =
                Authority::open_or_create(&tls_dir, "api-ca", "fincore bench authority", 1)?;
            let (certificate, key) = (tls_dir.join("api.pem"), tls_dir.join("api.key"));
            authority.issue(
                &["127.0.0.1".to_string()],
                Purpose::Server,
                LeafFiles {
                    certificate: &certificate,
                    key: &key,
                },
            )?;
            let ca = std::fs::read(tls_dir.join("api-ca.pem"))?;
            Some((certificate, key, ca))
        } else {
            None
        };
        testkit::http::use_transport(match &client_tls {
            Some((_, _, ca)) => Transport::tls_trusting(ca)?,
            None => Transport::Plain,
        });
        Ok(NodeSetup {
            events_off: args.events_off,
            open: args.open,
            client_tls,
            traces: args.traces.clone(),
        })
    }

    /// The environment of the nodes.
    fn env(&self) -> Vec<(&'static str, &'static str)> {
        match self.events_off {
            true => vec![("FINCORE_EVENTS", "off")],
            false => Vec::new(),
        }
    }

    /// What `serve` needs beyond the group's arguments.
    fn serve_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if self.open {
            args.extend(OPEN_ARGS.map(String::from));
        }
        if let Some((collector, sampling)) = &self.traces {
            args.extend([
                "--otlp".to_string(),
                collector.clone(),
                "--trace-sampling".to_string(),
                sampling.to_string(),
            ]);
        }
        if let Some((certificate, key, _)) = &self.client_tls {
            args.extend([
                "--tls-cert".to_string(),
                certificate.display().to_string(),
                "--tls-key".to_string(),
                key.display().to_string(),
            ]);
        }
        args
    }
}

/// The longest gap between consecutive batch completions at or after `from`.
fn longest_pause(completions: &mut [Instant], from: Instant) -> Duration {
    completions.sort_unstable();
    let mut previous = from;
    let mut longest = Duration::ZERO;
    for &done in completions.iter().filter(|&&done| done >= from) {
        longest = longest.max(done - previous);
        previous = done;
    }
    longest
}

/// Kills the leader `after` the transfers started; returns when it did (or `None`).
fn spawn_leader_killer(
    nodes: Arc<Mutex<Vec<Option<ChildNode>>>>,
    transfers_started: Arc<Mutex<Option<Instant>>>,
    after: Duration,
) -> std::thread::JoinHandle<anyhow::Result<Option<Instant>>> {
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(600);
        let started = loop {
            if let Some(started) = *transfers_started.lock().expect("never poisoned") {
                break started;
            }
            if Instant::now() > deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        std::thread::sleep((started + after).saturating_duration_since(Instant::now()));
        let mut nodes = nodes.lock().expect("never poisoned");
        let position = leader_position(&nodes)?;
        nodes[position].take().expect("running").kill9();
        Ok(Some(Instant::now()))
    })
}

/// The position in `nodes` of the running node the group agrees is leader (bounded wait).
pub(super) fn leader_position(nodes: &[Option<ChildNode>]) -> anyhow::Result<usize> {
    let running: Vec<String> = nodes
        .iter()
        .flatten()
        .map(|n| n.http_addr.clone())
        .collect();
    let leader_http = &running[leader_of(&running)?];
    Ok(nodes
        .iter()
        .position(|n| n.as_ref().is_some_and(|n| &n.http_addr == leader_http))
        .expect("the leader is one of ours"))
}

/// The index (in `http_addrs`) of the node the group agrees is leader (bounded wait).
pub(super) fn leader_of(http_addrs: &[String]) -> anyhow::Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        for addr in http_addrs {
            if let Ok(status) = get_json(addr, "/v1/status")
                && let Some(leader) = status["replica"]["leader"].as_u64()
                && let Some(members) = status["members"].as_array()
                && let Some(member) = members.iter().find(|m| m["id"].as_u64() == Some(leader))
                && let Some(position) = http_addrs
                    .iter()
                    .position(|a| Some(a.as_str()) == member["http"].as_str())
            {
                return Ok(position);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("no leader was elected within 20 s")
}

/// The snapshot interval (batches) of `--wipe-follower-at` unless `--checkpoint-interval` is
/// given: often enough that the log behind the wiped follower is purged and the new member
/// needs a snapshot (the interval of the issue's measurement).
const WIPE_CHECKPOINT_INTERVAL_ENTRIES_DEFAULT: u64 = 200;

/// How long the replicas may take to apply everything they acknowledged after the load.
const CATCH_UP_SECONDS_MAX: u64 = 120;
/// How many times the digests are fetched again because an entry (e.g. the blank entry of a
/// newly elected leader) moved the applied index between the wait and the digests.
const DIGEST_ATTEMPTS_MAX: u32 = 5;

/// Waits (bounded) until every node in `http_addrs` has applied its whole log and all applied the
/// same index: the group has caught up with everything it acknowledged. Returns that index.
pub(super) fn wait_caught_up(http_addrs: &[String]) -> anyhow::Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(CATCH_UP_SECONDS_MAX);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        seen = http_addrs
            .iter()
            .map(|addr| {
                let view = replica_status(addr, false).ok()?;
                Some((view.applied_index, view.last_log_index?))
            })
            .collect::<Vec<_>>();
        let caught_up = seen.iter().all(|node| {
            node.is_some_and(|(applied, last)| applied == last && Some(node) == seen.first())
        });
        if caught_up && let Some(Some((applied, _))) = seen.first() {
            return Ok(*applied);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    bail!(
        "the replicas did not catch up within {CATCH_UP_SECONDS_MAX} s (applied, last log index): {seen:?}"
    )
}

/// Checks that every node in `http_addrs` shows the same state digest at one applied index:
/// waits until they all applied the same index, then fetches the digests; if an entry landed in
/// between (the index moved), starts again, at most `DIGEST_ATTEMPTS_MAX` times.
pub(super) fn check_digests(http_addrs: &[String]) -> anyhow::Result<()> {
    let mut states = Vec::new();
    for _ in 0..DIGEST_ATTEMPTS_MAX {
        let index = wait_caught_up(http_addrs)?;
        states = http_addrs
            .iter()
            .map(|addr| {
                let view = replica_status(addr, true)?;
                Ok((view.applied_index, view.state_digest))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        if states.iter().any(|(applied, _)| *applied != index) {
            continue; // the index moved under us: compare again at the next one
        }
        if states
            .iter()
            .any(|state| state.1.is_none() || state != &states[0])
        {
            bail!(
                "the replicas disagree at applied index {index} (applied index, digest): {states:?}"
            );
        }
        return Ok(());
    }
    bail!(
        "the replicas' applied index kept moving; no {DIGEST_ATTEMPTS_MAX} attempts found them all at one index (applied index, digest): {states:?}"
    )
}

/// The highest Raft term any node in `http_addrs` reports (nodes that do not answer are left
/// out; `None` if none answers).
pub(super) fn term_max(http_addrs: &[String]) -> Option<u64> {
    http_addrs
        .iter()
        .filter_map(|addr| replica_status(addr, false).ok())
        .map(|view| view.term)
        .max()
}

pub fn run(args: &BenchArgs) -> anyhow::Result<Measured> {
    let (dir, temp) = data_dir(&args.data_dir)?;
    let measured = run_in(args, &dir);
    // A failed run's nodes' data and logs (`node-N.log`) are what a post-mortem needs.
    if let (Err(_), Some(temp)) = (&measured, temp) {
        let kept = temp.keep();
        eprintln!(
            "fincore bench: the run failed; its data directories and node logs are kept in {}",
            kept.display()
        );
    }
    measured
}

/// One network-mode run on data directory `dir`.
fn run_in(args: &BenchArgs, dir: &Path) -> anyhow::Result<Measured> {
    let checkpoint_interval = args
        .checkpoint_interval
        .unwrap_or(match args.wipe_follower_at {
            Some(_) => WIPE_CHECKPOINT_INTERVAL_ENTRIES_DEFAULT,
            None => 0,
        });
    let spare_members = usize::from(args.wipe_follower_at.is_some());
    let setup = NodeSetup::for_run(args, dir)?;
    let (nodes, layout) = match &args.addr {
        Some(_) => (Vec::new(), None),
        None => start_group(
            dir,
            args.replicas,
            spare_members,
            checkpoint_interval,
            &setup,
        )?,
    };
    let addrs: Vec<String> = match &args.addr {
        Some(addr) => vec![format!("http://{addr}")],
        None => nodes.iter().map(ChildNode::grpc_url).collect(),
    };
    let pids: Vec<u32> = nodes.iter().map(ChildNode::pid).collect();
    // `--cdc`: the publisher and the projector follow the group from its first event.
    let consumers = match &args.consumers {
        Some(plan) => {
            let http: Vec<String> = nodes.iter().map(|n| n.http_addr.clone()).collect();
            let leader = &http[leader_of(&http)?];
            let key = testkit::keys::token();
            Some(Consumers::start(plan, &addrs, leader, key, dir)?)
        }
        None => None,
    };
    let nodes = Arc::new(Mutex::new(nodes.into_iter().map(Some).collect::<Vec<_>>()));
    // Against a node that may already hold a previous run, transfer ids start past any earlier
    // run's: at the nanoseconds since the epoch (a u64 until 2554), which have grown past the
    // previous run's last id unless it wrote faster than one transfer per nanosecond. (Micros
    // times a million overflowed u64.) Against our own fresh group they are 1..N, as in
    // TigerBeetle's benchmark.
    let id_offset = if args.addr.is_some() {
        u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_nanos(),
        )?
    } else {
        0
    };
    let completions = Arc::new(Mutex::new(Vec::new()));
    let transfers_started = Arc::new(Mutex::new(None));
    let load_done = Arc::new(AtomicBool::new(false));
    let killer = args.kill_leader_at.map(|seconds| {
        spawn_leader_killer(
            Arc::clone(&nodes),
            Arc::clone(&transfers_started),
            Duration::from_secs_f64(seconds),
        )
    });
    let wiper = match (args.wipe_follower_at, layout) {
        (Some(seconds), Some(layout)) => Some(wipe::spawn(
            WipePlan {
                after: Duration::from_secs_f64(seconds),
                layout,
                dir: dir.to_path_buf(),
                checkpoint_interval,
                batch: args.batch,
                setup: setup.clone(),
            },
            Arc::clone(&nodes),
            Arc::clone(&transfers_started),
            Arc::clone(&completions),
            Arc::clone(&load_done),
        )),
        (Some(_), None) => bail!("--wipe-follower-at needs a replica group the bench starts"),
        (None, _) => None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let addr_refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let api_key = match args.open {
        true => None,
        false => args.api_key.as_deref().or(testkit::keys::token()),
    };
    let connect = || {
        let builder = Client::builder(&addr_refs)
            .retry_policy(RetryPolicy::default())
            .api_key_opt(api_key);
        match &setup.client_tls {
            Some((_, _, ca)) => builder.tls_ca_pem(ca.clone()).connect(),
            None => builder.connect(),
        }
    };
    runtime.block_on(async {
        let setup = connect()?;
        super::workload::create_accounts(&setup, args.accounts, args.batch).await
    })?;
    let all_http: Vec<String> = running_http(&nodes);
    let term_at_start = term_max(&all_http);
    let load = runtime.block_on(async {
        let batches = args.transfers.div_ceil(args.batch);
        let started = Instant::now();
        *transfers_started.lock().expect("never poisoned") = Some(started);
        let mut tasks = Vec::new();
        for k in 0..args.clients {
            let client = connect()?;
            let mut generator = TransferGenerator::new(
                args.seed.wrapping_add(k),
                args.accounts,
                args.distribution,
                args.id_order,
            )?;
            let (batch, transfers, clients) = (args.batch, args.transfers, args.clients as usize);
            let rate = args.rate;
            let completions = Arc::clone(&completions);
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut failed = 0u64;
                for b in (k..batches).step_by(clients) {
                    // `--rate`: batch b is due when the schedule has offered its first transfer.
                    if let Some(rate) = rate {
                        let due =
                            started + Duration::from_secs_f64((b * batch) as f64 / rate as f64);
                        tokio::time::sleep_until(due.into()).await;
                    }
                    let first_id = id_offset + b * batch + 1;
                    let count = (transfers - b * batch).min(batch);
                    let events = generator.batch(first_id, count);
                    let sent = Instant::now();
                    let results = client.create_transfers(&events).await?;
                    latencies.push(sent.elapsed());
                    completions
                        .lock()
                        .expect("never poisoned")
                        .push(Instant::now());
                    // A batch retried across a failover may answer `exists` for events that had
                    // landed the first time: that is the same transfer, not a failure.
                    failed += results
                        .iter()
                        .filter(|r| {
                            !matches!(
                                r.result,
                                CreateTransferResult::Created | CreateTransferResult::Exists
                            )
                        })
                        .count() as u64;
                }
                anyhow::Ok((latencies, failed))
            }));
        }
        let mut latencies = Vec::new();
        let mut failed = 0;
        for task in tasks {
            let (task_latencies, task_failed) = task.await??;
            latencies.extend(task_latencies);
            failed += task_failed;
        }
        anyhow::Ok((started, latencies, failed))
    });
    // The wipe stops waiting for its time once the load is over, however it ended.
    load_done.store(true, Ordering::Relaxed);
    let (started, latencies, transfers_failed) = load?;
    let wiped = match wiper {
        Some(wiper) => Some(wiper.join().expect("the wipe thread panicked")?),
        None => None,
    };
    // A replicated run ends when every running replica has applied the last batch, not at its
    // acknowledgement: followers that fell behind would owe that work to the next run.
    let acknowledged = Instant::now();
    let running_http = running_http(&nodes);
    let replicas_caught_up_ms = if running_http.len() > 1 {
        wait_caught_up(&running_http)?;
        Some(acknowledged.elapsed().as_secs_f64() * 1e3)
    } else {
        None
    };
    let seconds = started.elapsed().as_secs_f64();
    let leader_changes = match (term_at_start, term_max(&running_http)) {
        (Some(start), Some(end)) => Some(end.saturating_sub(start)),
        _ => None,
    };
    if running_http.len() > 1 {
        check_digests(&running_http)?;
    }
    let cdc = match consumers {
        Some(consumers) => Some(consumers.finish((started, acknowledged))?),
        None => None,
    };
    let catch_up = match &wiped {
        Some(wiped) => Some(wiped.report(&pids)?),
        None => None,
    };
    let peak_rss_bytes = match &catch_up {
        Some(catch_up) => catch_up
            .nodes_peak_rss
            .iter()
            .map(|n| n.peak_rss_bytes)
            .max(),
        None => pids
            .iter()
            .map(|pid| peak_rss_bytes(&pid.to_string()))
            .max(),
    }
    .unwrap_or(0);
    let write_pause_ms_max = match killer {
        Some(killer) => {
            let killed_at = killer.join().expect("the killer thread panicked")?;
            killed_at.map(|killed_at| {
                let mut completions = completions.lock().expect("never poisoned").clone();
                longest_pause(&mut completions, killed_at).as_secs_f64() * 1e3
            })
        }
        None => None,
    };
    for node in nodes.lock().expect("never poisoned").drain(..).flatten() {
        node.stop()?;
    }
    Ok(Measured {
        seconds,
        latencies,
        transfers_failed,
        peak_rss_bytes,
        journal: None,
        restart: None,
        write_pause_ms_max,
        replicas_caught_up_ms,
        leader_changes,
        catch_up,
        cdc,
    })
}

/// The HTTP addresses of the nodes started here that still run.
fn running_http(nodes: &Mutex<Vec<Option<ChildNode>>>) -> Vec<String> {
    nodes
        .lock()
        .expect("never poisoned")
        .iter()
        .flatten()
        .map(|node| node.http_addr.clone())
        .collect()
}
