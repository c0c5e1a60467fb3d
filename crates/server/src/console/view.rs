//! What the console shows, as JSON: one [`View`] per sample, made by a [`ViewBuilder`] from
//! the readings of a [`super::Source`] and the previous ones (rates and p99 are the difference
//! between two readings; sparklines are the last `CONSOLE_HISTORY_POINTS` of them).
//!
//! Owns the view's shape (documented in `docs/observability.md`, read by `app.js` and by
//! tests) and the arithmetic from readings to it. Must not do I/O.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use api::proto::ReplicaStatusReply;
use serde::Serialize;
use telemetry::{TrafficRates, TrafficTotals};

use super::{FrontReading, GroupReading, ReplicaReading};

/// The whole system as one sample saw it.
#[derive(Debug, Clone, Serialize)]
pub struct View {
    /// `node` or `gateway`: what serves this console.
    pub service: &'static str,
    /// When the sample was taken (Unix milliseconds).
    pub sampled_at_ms: u64,
    pub interval_ms: u64,
    /// The serving process's own traffic.
    pub front: FrontView,
    pub groups: Vec<GroupView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FrontView {
    pub requests_per_second: f64,
    pub errors_per_second: f64,
    /// Errors over requests in the last interval (0 without requests).
    pub error_ratio: f64,
    pub p99_ms: Option<f64>,
    /// Cross-group transfers carried now (a gateway's; absent on a node).
    pub sagas_in_flight: Option<i64>,
    pub history: Series,
}

/// Sparkline points, oldest first, one per sample.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Series {
    /// Requests (front) or committed events (a group) per second.
    pub rate: VecDeque<f64>,
    /// p99 in milliseconds; `null` where nothing was answered.
    pub p99_ms: VecDeque<Option<f64>>,
}

impl Series {
    fn push(&mut self, rates: &TrafficRates, rate: f64) {
        if self.rate.len() == limits::CONSOLE_HISTORY_POINTS {
            self.rate.pop_front();
            self.p99_ms.pop_front();
        }
        self.rate.push_back(rate);
        self.p99_ms.push_back(p99_ms(rates));
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupView {
    pub id: String,
    /// The replica that says it leads, at the highest term any replica reports; `None`
    /// during an election or when no replica answered.
    pub leader: Option<u64>,
    pub term: Option<u64>,
    /// Events committed per second over the last interval (each replica's process counts the
    /// batches it committed as leader).
    pub events_per_second: f64,
    pub requests_per_second: f64,
    pub p99_ms: Option<f64>,
    /// Saga copies open in the leader's state (the group's saga backlog).
    pub open_saga_copies: Option<u64>,
    /// The largest lag of any follower, as the leader reports it.
    pub lag_entries_max: Option<u64>,
    pub replicas: Vec<ReplicaView>,
    pub history: Series,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplicaView {
    pub id: u64,
    pub address: String,
    pub reachable: bool,
    /// Why not, when it is not.
    pub error: Option<String>,
    pub role: Option<String>,
    pub term: Option<u64>,
    pub leader: Option<u64>,
    pub last_log_index: Option<u64>,
    pub committed_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    pub snapshots_sent: Option<u64>,
    pub snapshots_installed: Option<u64>,
    /// As the leader reports them (empty on others).
    pub followers: Vec<FollowerView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FollowerView {
    pub id: u64,
    pub lag_entries: u64,
    pub since_ack_ms: Option<u64>,
}

/// Whether a previous reading is recent enough to take a rate from: a reading from before a
/// spell unreachable (or unwatched) would average over it.
fn recent(elapsed: Duration) -> bool {
    elapsed <= Duration::from_millis(3 * limits::CONSOLE_SAMPLE_INTERVAL_MS)
}

fn p99_ms(rates: &TrafficRates) -> Option<f64> {
    rates.p99.map(|p99| p99.as_secs_f64() * 1_000.0)
}

fn totals_of(status: &ReplicaStatusReply) -> Option<TrafficTotals> {
    status.traffic.as_ref().map(|traffic| TrafficTotals {
        requests: traffic.requests,
        errors: traffic.errors,
        events: traffic.events,
        latency_buckets: traffic.latency_buckets.clone(),
    })
}

/// Turns readings into views, remembering what rates and sparklines need.
#[derive(Debug)]
pub struct ViewBuilder {
    service: &'static str,
    /// The previous reading of the front and of each replica (by group and id), and when.
    front_before: Option<(TrafficTotals, Instant)>,
    replicas_before: BTreeMap<(String, u64), (TrafficTotals, Instant)>,
    front_history: Series,
    group_history: BTreeMap<String, Series>,
}

impl ViewBuilder {
    pub fn new(service: &'static str) -> ViewBuilder {
        ViewBuilder {
            service,
            front_before: None,
            replicas_before: BTreeMap::new(),
            front_history: Series::default(),
            group_history: BTreeMap::new(),
        }
    }

    /// The view of the front's and the groups' readings, each with when it was taken
    /// (`sampled_at_ms` by the wall clock).
    pub fn next(
        &mut self,
        (front, front_at): (FrontReading, Instant),
        (groups, groups_at): (Vec<GroupReading>, Instant),
        sampled_at_ms: u64,
    ) -> View {
        let front_rates = match self.front_before.replace((front.traffic.clone(), front_at)) {
            Some((before, then)) if recent(front_at - then) => {
                front.traffic.rates_since(&before, front_at - then)
            }
            _ => TrafficRates::default(),
        };
        self.front_history
            .push(&front_rates, front_rates.requests_per_second);
        let error_ratio = if front_rates.requests_per_second > 0.0 {
            front_rates.errors_per_second / front_rates.requests_per_second
        } else {
            0.0
        };
        let front = FrontView {
            requests_per_second: front_rates.requests_per_second,
            errors_per_second: front_rates.errors_per_second,
            error_ratio,
            p99_ms: p99_ms(&front_rates),
            sagas_in_flight: front.sagas_in_flight,
            history: self.front_history.clone(),
        };
        // Groups no longer in the map are forgotten.
        let present: Vec<String> = groups.iter().map(|group| group.id.clone()).collect();
        self.group_history.retain(|id, _| present.contains(id));
        self.replicas_before
            .retain(|(group, _), _| present.contains(group));
        let groups = groups
            .into_iter()
            .map(|group| self.group_view(group, groups_at))
            .collect();
        View {
            service: self.service,
            sampled_at_ms,
            interval_ms: limits::CONSOLE_SAMPLE_INTERVAL_MS,
            front,
            groups,
        }
    }

    fn group_view(&mut self, group: GroupReading, now: Instant) -> GroupView {
        // Each replica's rates over its own window (one back from a spell unreachable has a
        // longer one, or none), summed; the p99 over all their requests together.
        let mut rates = TrafficRates::default();
        let mut latency = TrafficTotals::default();
        for replica in &group.replicas {
            let Some(totals) = replica.status.as_ref().ok().and_then(totals_of) else {
                continue;
            };
            let key = (group.id.clone(), replica.id);
            if let Some((before, then)) = self.replicas_before.insert(key, (totals.clone(), now))
                && recent(now - then)
                && let Some(delta) = totals.delta_since(&before)
            {
                let replica_rates = delta.rates_over(now - then);
                rates.requests_per_second += replica_rates.requests_per_second;
                rates.errors_per_second += replica_rates.errors_per_second;
                rates.events_per_second += replica_rates.events_per_second;
                latency.add(&delta);
            }
        }
        rates.p99 = latency.rates_over(Duration::from_secs(1)).p99;
        let history = self.group_history.entry(group.id.clone()).or_default();
        history.push(&rates, rates.events_per_second);
        let answered = || group.replicas.iter().filter_map(|r| r.status.as_ref().ok());
        let term = answered().map(|status| status.term).max();
        let leading =
            answered().find(|status| status.role == "leader" && Some(status.term) == term);
        GroupView {
            leader: leading.map(|status| status.id),
            term,
            events_per_second: rates.events_per_second,
            requests_per_second: rates.requests_per_second,
            p99_ms: p99_ms(&rates),
            open_saga_copies: leading.and_then(|status| status.open_saga_copies),
            lag_entries_max: leading
                .and_then(|status| status.followers.iter().map(|f| f.lag_entries).max()),
            history: history.clone(),
            replicas: group.replicas.iter().map(replica_view).collect(),
            id: group.id,
        }
    }
}

fn replica_view(replica: &ReplicaReading) -> ReplicaView {
    let status = replica.status.as_ref().ok();
    ReplicaView {
        id: replica.id,
        address: replica.address.clone(),
        reachable: status.is_some(),
        error: replica.status.as_ref().err().cloned(),
        role: status.map(|s| s.role.clone()),
        term: status.map(|s| s.term),
        leader: status.and_then(|s| s.leader),
        last_log_index: status.map(|s| s.last_log_index),
        committed_index: status.map(|s| s.committed_index),
        applied_index: status.map(|s| s.applied_index),
        snapshot_index: status.map(|s| s.snapshot_index),
        snapshots_sent: status.map(|s| s.snapshots_sent),
        snapshots_installed: status.map(|s| s.snapshots_installed),
        followers: status
            .map(|s| {
                s.followers
                    .iter()
                    .map(|f| FollowerView {
                        id: f.id,
                        lag_entries: f.lag_entries,
                        since_ack_ms: f.since_ack_ms,
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::proto;

    fn status(id: u64, role: &str, term: u64, requests: u64, events: u64) -> ReplicaStatusReply {
        let mut latency_buckets = vec![0; telemetry::LATENCY_BUCKETS_COUNT];
        latency_buckets[4] = requests;
        ReplicaStatusReply {
            id,
            role: role.into(),
            term,
            leader: Some(1),
            traffic: Some(proto::TrafficTotals {
                requests,
                errors: 0,
                events,
                latency_buckets,
            }),
            open_saga_copies: Some(3),
            followers: vec![proto::FollowerLag {
                id: 2,
                lag_entries: 7,
                since_ack_ms: Some(12),
            }],
            ..ReplicaStatusReply::default()
        }
    }

    fn group(replicas: Vec<(u64, Result<ReplicaStatusReply, String>)>) -> GroupReading {
        GroupReading {
            id: "1".into(),
            replicas: replicas
                .into_iter()
                .map(|(id, status)| ReplicaReading {
                    id,
                    address: format!("127.0.0.1:{id}"),
                    status,
                })
                .collect(),
        }
    }

    fn front(requests: u64) -> FrontReading {
        FrontReading {
            traffic: TrafficTotals {
                requests,
                latency_buckets: vec![0; telemetry::LATENCY_BUCKETS_COUNT],
                ..TrafficTotals::default()
            },
            sagas_in_flight: None,
        }
    }

    #[test]
    fn a_group_shows_its_leader_at_the_highest_term_and_rates_between_samples() {
        let mut builder = ViewBuilder::new("gateway");
        let start = Instant::now();
        let first = builder.next(
            (front(0), start),
            (
                vec![group(vec![
                    (1, Ok(status(1, "leader", 4, 100, 1_000))),
                    (2, Ok(status(2, "follower", 4, 0, 0))),
                ])],
                start,
            ),
            1,
        );
        assert_eq!(first.groups[0].leader, Some(1));
        assert_eq!(
            first.groups[0].events_per_second, 0.0,
            "one reading gives no rate"
        );
        let second = builder.next(
            (front(50), start + Duration::from_millis(500)),
            (
                vec![group(vec![
                    (1, Ok(status(1, "leader", 4, 300, 3_000))),
                    (2, Err("unreachable".into())),
                ])],
                start + Duration::from_millis(500),
            ),
            2,
        );
        let shown = &second.groups[0];
        assert_eq!(shown.events_per_second, 4_000.0);
        assert_eq!(shown.requests_per_second, 400.0);
        assert_eq!(shown.p99_ms, Some(0.4));
        assert_eq!(shown.open_saga_copies, Some(3));
        assert_eq!(shown.lag_entries_max, Some(7));
        assert_eq!(shown.history.rate.len(), 2);
        assert!(!shown.replicas[1].reachable);
        assert_eq!(shown.replicas[1].error.as_deref(), Some("unreachable"));
        assert_eq!(second.front.requests_per_second, 100.0);
    }

    #[test]
    fn a_replica_back_from_a_long_absence_does_not_dilute_the_groups_rate() {
        let mut builder = ViewBuilder::new("gateway");
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let sample = |builder: &mut ViewBuilder, ms: u64, follower: Option<u64>, events: u64| {
            let mut replicas = vec![(1, Ok(status(1, "leader", 4, 0, events)))];
            if let Some(follower_events) = follower {
                replicas.push((2, Ok(status(2, "follower", 4, 0, follower_events))));
            }
            builder.next((front(0), at(ms)), (vec![group(replicas)], at(ms)), ms)
        };
        sample(&mut builder, 0, Some(0), 0);
        // The follower is away for 5 s; the leader commits 1,000 events a second throughout.
        for second in 1..=10 {
            sample(&mut builder, 500 * second, None, 500 * second);
        }
        let back = sample(&mut builder, 5_500, Some(0), 5_500);
        assert_eq!(back.groups[0].events_per_second, 1_000.0);
    }

    #[test]
    fn a_deposed_leader_at_an_older_term_is_not_shown_as_leader() {
        let mut builder = ViewBuilder::new("gateway");
        let now = Instant::now();
        let view = builder.next(
            (front(0), now),
            (
                vec![group(vec![
                    (1, Ok(status(1, "leader", 4, 0, 0))),
                    (2, Ok(status(2, "candidate", 5, 0, 0))),
                ])],
                now,
            ),
            1,
        );
        assert_eq!(view.groups[0].leader, None);
        assert_eq!(view.groups[0].term, Some(5));
    }

    #[test]
    fn sparklines_keep_a_bounded_history() {
        let mut builder = ViewBuilder::new("node");
        let start = Instant::now();
        let mut view = None;
        for i in 0..(limits::CONSOLE_HISTORY_POINTS as u64 + 10) {
            let at = start + Duration::from_millis(500 * i);
            view = Some(builder.next(
                (front(i), at),
                (vec![group(vec![(1, Ok(status(1, "leader", 1, i, i)))])], at),
                i,
            ));
        }
        let view = view.unwrap();
        assert_eq!(
            view.front.history.rate.len(),
            limits::CONSOLE_HISTORY_POINTS
        );
        assert_eq!(
            view.groups[0].history.p99_ms.len(),
            limits::CONSOLE_HISTORY_POINTS
        );
    }
}
