//! `--wipe-follower-at S`: S seconds into the transfers a follower loses its disk and comes
//! back the documented way, as a new member, while the load goes on. The follower is killed
//! (SIGKILL), removed from the group (`DELETE /v1/admin/replicas/ID`), its data directory
//! wiped; a node with a new id starts with `--join` on an empty directory and is added
//! (`POST /v1/admin/replicas`). Measured: the time from the add until the new member applied
//! the index the leader had applied, how long the add took (learner caught up, then voter),
//! whether the new member installed snapshots from a peer, and every node's peak RSS.
//!
//! Owns the scenario and its figures. It must not start the load or judge the group's end
//! state (`network` does both), and it starts the new member only through
//! `network::start_member`, like every other member.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use testkit::group::GroupLayout;
use testkit::http::{replica_status, request_as};
use testkit::node::ChildNode;

use super::network::{NodeSetup, leader_position, node_dir, start_member};
use super::peak_rss_bytes;

/// How long the wipe may wait for the transfers to start.
const TRANSFERS_START_SECONDS_MAX: u64 = 600;
/// How often the wipe checks whether the load ended before its time came.
const WAIT_SLICE_MS: u64 = 50;
/// How long the new member may take to apply the leader's index once added (the add itself
/// gives up after `RAFT_LEARNER_CATCH_UP_SECONDS_MAX`; this bound covers a slow machine).
const CATCH_UP_SECONDS_MAX: u64 = 300;
/// How often the leader's and the new member's applied indexes are compared.
const CATCH_UP_POLL_MS: u64 = 20;

/// What the wipe needs to know about the group.
pub(super) struct WipePlan {
    /// Seconds into the transfers.
    pub after: Duration,
    /// The group's layout; its last member is the new one, not yet started.
    pub layout: GroupLayout,
    /// Holds every node's data directory (`node-ID`).
    pub dir: PathBuf,
    /// The nodes' snapshot interval (serve's `--checkpoint-interval`).
    pub checkpoint_interval: u64,
    /// Transfers per batch (to count what was acknowledged at the wipe).
    pub batch: u64,
    /// How the group's nodes are secured; the new member alike.
    pub setup: NodeSetup,
}

/// What the wipe thread measured; the rest is read once the run is over.
pub(super) struct Wiped {
    wiped_node_id: u64,
    wiped_node_peak_rss_bytes: u64,
    leader_node_id: u64,
    new_member_id: u64,
    new_member_pid: u32,
    new_member_log: PathBuf,
    wiped_at_seconds: f64,
    transfers_acknowledged_at_wipe: u64,
    leader_applied_index_at_add: u64,
    catch_up_ms: f64,
    add_replica_ms: f64,
    leader_http: String,
    new_member_http: String,
}

/// One node's peak resident set size over the whole run (Linux `VmHWM`).
#[derive(Debug, Serialize)]
pub struct NodePeakRss {
    pub node_id: u64,
    /// `leader` (at the wipe), `follower`, `wiped` (read just before it was killed) or
    /// `new member`.
    pub role: &'static str,
    pub peak_rss_bytes: u64,
}

/// The figures of a `--wipe-follower-at` run.
#[derive(Debug, Serialize)]
pub struct CatchUpReport {
    pub wiped_node_id: u64,
    pub new_member_id: u64,
    /// The leader when the follower was wiped.
    pub leader_node_id: u64,
    /// Seconds into the transfers when the follower was killed.
    pub wiped_at_seconds: f64,
    /// Transfers acknowledged when the follower was killed (whole batches).
    pub transfers_acknowledged_at_wipe: u64,
    /// The leader's applied index when the new member was added.
    pub leader_applied_index_at_add: u64,
    /// From the add until the new member had applied the index the leader had applied a
    /// moment before (both read every 20 ms while the load goes on).
    pub catch_up_ms: f64,
    /// How long the add took: the learner within `RAFT_LEARNER_CAUGHT_UP_LAG_ENTRIES_MAX` of
    /// the leader, then made a voter.
    pub add_replica_ms: f64,
    /// Snapshots from a peer the new member installed (counted in its log).
    pub snapshots_installed: u64,
    /// At the end of the run: snapshots the leader had sent to peers that took them, and the
    /// new member had installed, as their `/metrics` count them
    /// (`fincore_raft_snapshots_sent_total`, `_installed_total`).
    pub leader_snapshots_sent: u64,
    pub new_member_snapshots_installed: u64,
    pub caught_up_from_snapshot: bool,
    pub nodes_peak_rss: Vec<NodePeakRss>,
}

/// Runs the wipe on its own thread once `after` has passed since the transfers started; the
/// new member joins `nodes`. Fails if the load ended first.
pub(super) fn spawn(
    plan: WipePlan,
    nodes: Arc<Mutex<Vec<Option<ChildNode>>>>,
    transfers_started: Arc<Mutex<Option<Instant>>>,
    batches_acknowledged: Arc<Mutex<Vec<Instant>>>,
    load_done: Arc<AtomicBool>,
) -> std::thread::JoinHandle<anyhow::Result<Wiped>> {
    std::thread::spawn(move || {
        let started = wait_for_start(&transfers_started)?;
        let wipe_at = started + plan.after;
        while Instant::now() < wipe_at {
            if load_done.load(Ordering::Relaxed) {
                bail!(
                    "the transfers ended {:.1} s in, before --wipe-follower-at {:.1}: give more \
                     --transfers or an earlier time",
                    started.elapsed().as_secs_f64(),
                    plan.after.as_secs_f64()
                );
            }
            let left = wipe_at.saturating_duration_since(Instant::now());
            std::thread::sleep(left.min(Duration::from_millis(WAIT_SLICE_MS)));
        }
        wipe_and_replace(&plan, &nodes, started, &batches_acknowledged)
    })
}

fn wait_for_start(transfers_started: &Mutex<Option<Instant>>) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + Duration::from_secs(TRANSFERS_START_SECONDS_MAX);
    loop {
        if let Some(started) = *transfers_started.lock().expect("never poisoned") {
            return Ok(started);
        }
        if Instant::now() > deadline {
            bail!("the transfers did not start within {TRANSFERS_START_SECONDS_MAX} s");
        }
        std::thread::sleep(Duration::from_millis(WAIT_SLICE_MS));
    }
}

/// The node id of member `position` of the layout.
fn node_id(position: usize) -> u64 {
    position as u64 + 1
}

fn wipe_and_replace(
    plan: &WipePlan,
    nodes: &Mutex<Vec<Option<ChildNode>>>,
    started: Instant,
    batches_acknowledged: &Mutex<Vec<Instant>>,
) -> anyhow::Result<Wiped> {
    let http_addrs = &plan.layout.http_addrs;
    let (leader, victim, victim_peak) = {
        // `nodes[i]` is member `i` of the layout (the new member is pushed after them).
        let mut nodes = nodes.lock().expect("never poisoned");
        let leader = leader_position(&nodes)?;
        let victim = (0..nodes.len())
            .find(|&i| i != leader && nodes[i].is_some())
            .context("no follower runs")?;
        let node = nodes[victim].take().expect("running");
        let peak = peak_rss_bytes(&node.pid().to_string());
        node.kill9();
        (leader, victim, peak)
    };
    let wiped_at_seconds = started.elapsed().as_secs_f64();
    let transfers_acknowledged_at_wipe =
        batches_acknowledged.lock().expect("never poisoned").len() as u64 * plan.batch;
    let leader_http = &http_addrs[leader];
    admin(
        leader_http,
        "DELETE",
        &format!("/v1/admin/replicas/{}", node_id(victim)),
        "",
    )?;
    let wiped_dir = node_dir(&plan.dir, node_id(victim));
    std::fs::remove_dir_all(&wiped_dir)
        .with_context(|| format!("wiping {}", wiped_dir.display()))?;

    let new = plan.layout.len() - 1;
    let new_dir = node_dir(&plan.dir, node_id(new));
    let member = start_member(
        &new_dir,
        &plan.layout,
        new,
        plan.layout.len(),
        plan.checkpoint_interval,
        &plan.setup,
    )?;
    let (new_member_pid, new_member_log) = (member.pid(), member.log_path.clone());
    nodes.lock().expect("never poisoned").push(Some(member));

    let leader_applied_index_at_add = replica_status(leader_http, false)?.applied_index;
    let body = serde_json::to_string(&api::json::AddReplicaJson {
        id: node_id(new),
        grpc: plan.layout.grpc_addrs[new].clone(),
        http: http_addrs[new].clone(),
        peer: plan.layout.peer_addrs[new].clone(),
    })?;
    let added_at = Instant::now();
    let add = {
        let leader_http = leader_http.clone();
        std::thread::spawn(move || {
            admin(&leader_http, "POST", "/v1/admin/replicas", &body)?;
            anyhow::Ok(added_at.elapsed())
        })
    };
    let catch_up = wait_applied_leaders_index(leader_http, &http_addrs[new], added_at);
    let add_took = add.join().expect("the add-replica thread panicked")?;
    Ok(Wiped {
        wiped_node_id: node_id(victim),
        wiped_node_peak_rss_bytes: victim_peak,
        leader_node_id: node_id(leader),
        new_member_id: node_id(new),
        new_member_pid,
        new_member_log,
        wiped_at_seconds,
        transfers_acknowledged_at_wipe,
        leader_applied_index_at_add,
        catch_up_ms: catch_up?.as_secs_f64() * 1e3,
        add_replica_ms: add_took.as_secs_f64() * 1e3,
        leader_http: leader_http.clone(),
        new_member_http: http_addrs[new].clone(),
    })
}

/// The value of the counter `name` (no labels) in the `/metrics` of the node at `http`; 0 if it
/// has no sample yet.
fn counter(http: &str, name: &str) -> anyhow::Result<u64> {
    let answer = request_as(None, http, "GET", "/metrics", None, "")?;
    anyhow::ensure!(
        answer.status == 200,
        "GET /metrics on {http}: {}",
        answer.status
    );
    match testkit::http::metric_value(&answer.body, name) {
        Some(value) => Ok(value as u64),
        None if answer
            .body
            .lines()
            .any(|line| line.starts_with(&format!("{name} "))) =>
        {
            anyhow::bail!("{name} on {http} is not a number")
        }
        // Not exported yet: nothing counted.
        None => Ok(0),
    }
}

/// Waits (bounded) until the node at `member_http` has applied the index the leader had
/// applied just before; returns the time since `since`.
fn wait_applied_leaders_index(
    leader_http: &str,
    member_http: &str,
    since: Instant,
) -> anyhow::Result<Duration> {
    let deadline = since + Duration::from_secs(CATCH_UP_SECONDS_MAX);
    let mut seen = (0, 0);
    while Instant::now() < deadline {
        let leader = replica_status(leader_http, false)?.applied_index;
        // The new member may be busy installing a snapshot and slow to answer; that is no
        // failure.
        if let Ok(member) = replica_status(member_http, false) {
            seen = (leader, member.applied_index);
            if member.applied_index >= leader {
                return Ok(since.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(CATCH_UP_POLL_MS));
    }
    bail!(
        "the new member had not applied the leader's index within {CATCH_UP_SECONDS_MAX} s of \
         its add (leader applied, member applied): {seen:?}"
    )
}

/// An admin request with this process's key to `addr`; anything but 200 is an error naming
/// the answer.
fn admin(addr: &str, method: &str, path: &str, body: &str) -> anyhow::Result<()> {
    let answer = request_as(
        testkit::keys::token(),
        addr,
        method,
        path,
        Some("application/json"),
        body,
    )?;
    if answer.status != 200 {
        bail!(
            "{method} {path} at {addr} answered HTTP {}: {}",
            answer.status,
            answer.body
        );
    }
    Ok(())
}

impl Wiped {
    /// The report, read once the run is over and before the nodes stop: each node's peak RSS
    /// (`pids[i]` is node `i + 1`; the wiped node's was read before it was killed) and the
    /// snapshots the new member installed.
    pub(super) fn report(&self, pids: &[u32]) -> anyhow::Result<CatchUpReport> {
        let mut nodes_peak_rss: Vec<NodePeakRss> = pids
            .iter()
            .enumerate()
            .map(|(position, pid)| {
                let id = node_id(position);
                let (role, peak_rss_bytes) = if id == self.wiped_node_id {
                    ("wiped", self.wiped_node_peak_rss_bytes)
                } else if id == self.leader_node_id {
                    ("leader", peak_rss_bytes(&pid.to_string()))
                } else {
                    ("follower", peak_rss_bytes(&pid.to_string()))
                };
                NodePeakRss {
                    node_id: id,
                    role,
                    peak_rss_bytes,
                }
            })
            .collect();
        nodes_peak_rss.push(NodePeakRss {
            node_id: self.new_member_id,
            role: "new member",
            peak_rss_bytes: peak_rss_bytes(&self.new_member_pid.to_string()),
        });
        let log = std::fs::read_to_string(&self.new_member_log)
            .with_context(|| format!("reading {}", self.new_member_log.display()))?;
        let snapshots_installed = log
            .lines()
            .filter(|line| line.contains(replication::SNAPSHOT_INSTALLED_FROM_PEER))
            .count() as u64;
        Ok(CatchUpReport {
            wiped_node_id: self.wiped_node_id,
            new_member_id: self.new_member_id,
            leader_node_id: self.leader_node_id,
            wiped_at_seconds: self.wiped_at_seconds,
            transfers_acknowledged_at_wipe: self.transfers_acknowledged_at_wipe,
            leader_applied_index_at_add: self.leader_applied_index_at_add,
            catch_up_ms: self.catch_up_ms,
            add_replica_ms: self.add_replica_ms,
            snapshots_installed,
            leader_snapshots_sent: counter(&self.leader_http, "fincore_raft_snapshots_sent_total")?,
            new_member_snapshots_installed: counter(
                &self.new_member_http,
                "fincore_raft_snapshots_installed_total",
            )?,
            caught_up_from_snapshot: snapshots_installed > 0,
            nodes_peak_rss,
        })
    }
}
