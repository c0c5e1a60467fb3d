//! The progress of a process that follows the groups' change events: the publisher to NATS
//! (`fincore cdc`, families `fincore_cdc_*`) and the projector into SQL (`fincore project`,
//! `fincore_projection_*`). Per group: the last event done (published and acknowledged;
//! projected and committed with its offset), the newest event the group's replicas report, the
//! lag between them in events, events done, and how long each write took.
//!
//! Owns these families and their arithmetic: the lag exists only once both ends are known (a
//! process that has not yet read where it resumes shows none rather than the whole stream), is
//! computed under one lock from the two values (never from a half-updated pair), and never goes
//! negative (a head read before the events it covers were done reads as caught up). A group's
//! series are looked up once ([`FollowGroup`]), not per event. Must not know NATS nor SQL.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::GroupLabels;

/// One follower's families (registered under its prefix).
#[derive(Debug)]
pub(crate) struct Follow {
    done_seq: Family<GroupLabels, Gauge>,
    source_seq: Family<GroupLabels, Gauge>,
    lag_events: Family<GroupLabels, Gauge>,
    events: Family<GroupLabels, Counter>,
    write_seconds: Histogram,
    groups: Mutex<BTreeMap<String, FollowGroup>>,
}

/// Both ends as last known (`None`: not yet).
#[derive(Debug, Default)]
struct Ends {
    done: Option<u64>,
    source: Option<u64>,
}

/// One group's series, shared by every handle of that group.
#[derive(Debug, Clone)]
pub struct FollowGroup {
    ends: Arc<Mutex<Ends>>,
    done_seq: Gauge,
    source_seq: Gauge,
    lag_events: Gauge,
    events: Counter,
    write_seconds: Histogram,
}

/// Each write's duration: 100 µs to ~100 s (a projector's transaction may take seconds).
fn write_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.000_1, 2.0, 21,
    ))
}

impl Follow {
    pub(crate) fn new() -> Follow {
        Follow {
            done_seq: Family::default(),
            source_seq: Family::default(),
            lag_events: Family::default(),
            events: Family::default(),
            write_seconds: write_histogram(),
            groups: Mutex::new(BTreeMap::new()),
        }
    }

    /// Registers the families as `fincore_<prefix>_…`; `done` says what "done" is there.
    pub(crate) fn register(&self, registry: &mut Registry, prefix: &str, done: &str) {
        let registry = registry.sub_registry_with_prefix(prefix);
        registry.register(
            "seq",
            format!("The last event {done}, by group"),
            self.done_seq.clone(),
        );
        registry.register(
            "source_seq",
            "The newest event any of the group's replicas reports (read every second)",
            self.source_seq.clone(),
        );
        registry.register(
            "lag_events",
            format!("Events the group's replicas hold that are not yet {done}"),
            self.lag_events.clone(),
        );
        registry.register(
            "events",
            format!("Events {done} by this process, by group"),
            self.events.clone(),
        );
        registry.register(
            "write_duration_seconds",
            format!("Time each write took until {done}"),
            self.write_seconds.clone(),
        );
    }

    /// `group`'s series (made on first use).
    pub(crate) fn group(&self, group: &str) -> FollowGroup {
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        groups
            .entry(group.to_string())
            .or_insert_with(|| {
                let labels = GroupLabels {
                    group: group.to_string(),
                };
                FollowGroup {
                    ends: Arc::default(),
                    done_seq: self.done_seq.get_or_create(&labels).clone(),
                    source_seq: self.source_seq.get_or_create(&labels).clone(),
                    lag_events: self.lag_events.get_or_create(&labels).clone(),
                    events: self.events.get_or_create(&labels).clone(),
                    write_seconds: self.write_seconds.clone(),
                }
            })
            .clone()
    }
}

impl FollowGroup {
    /// Where the process (re)starts: events up to `seq` are done already (not by this write).
    pub fn at(&self, seq: u64) {
        self.update(|ends| ends.done = Some(seq));
    }

    /// Events up to `seq` done, `events` of them by a write that took `took`.
    pub fn done(&self, seq: u64, events: u64, took: Duration) {
        self.events.inc_by(events);
        self.write_seconds.observe(took.as_secs_f64());
        self.update(|ends| ends.done = Some(seq));
    }

    /// The newest event the group's replicas report.
    pub fn source(&self, seq: u64) {
        self.update(|ends| ends.source = Some(seq));
    }

    fn update(&self, change: impl FnOnce(&mut Ends)) {
        let mut ends = self.ends.lock().unwrap_or_else(|p| p.into_inner());
        change(&mut ends);
        if let Some(done) = ends.done {
            self.done_seq.set(crate::gauge(done));
        }
        if let Some(source) = ends.source {
            self.source_seq.set(crate::gauge(source));
        }
        if let (Some(done), Some(source)) = (ends.done, ends.source) {
            self.lag_events
                .set(crate::gauge(source.saturating_sub(done)));
        }
    }
}
