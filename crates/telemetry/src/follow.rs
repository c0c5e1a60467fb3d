//! The progress of a process that follows the groups' change events: the publisher to NATS
//! (`fincore cdc`, families `fincore_cdc_*`) and the projector into SQL (`fincore project`,
//! `fincore_projection_*`). Per group: the last event done (published and acknowledged;
//! projected and committed with its offset), the newest event the group's replicas report, the
//! lag between them in events, events done, and how long each write took.
//!
//! Owns these families and their arithmetic (the lag never goes negative: a head read before
//! the events it covers were done reads as caught up). Must not know NATS nor SQL.

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
}

fn gauge_value(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

impl Follow {
    pub(crate) fn new() -> Follow {
        Follow {
            done_seq: Family::default(),
            source_seq: Family::default(),
            lag_events: Family::default(),
            events: Family::default(),
            write_seconds: crate::latency_histogram(),
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
            "The newest event the group's replicas report (read every second)",
            self.source_seq.clone(),
        );
        registry.register(
            "lag_events",
            format!("Events the group's replicas hold that are not yet {done}"),
            self.lag_events.clone(),
        );
        registry.register(
            "events",
            format!("Events {done}, by group"),
            self.events.clone(),
        );
        registry.register(
            "write_duration_seconds",
            format!("Time each write took until {done}"),
            self.write_seconds.clone(),
        );
    }

    pub(crate) fn done(&self, group: &str, seq: u64, events: u64, took: Duration) {
        let labels = GroupLabels {
            group: group.to_string(),
        };
        self.done_seq.get_or_create(&labels).set(gauge_value(seq));
        self.events.get_or_create(&labels).inc_by(events);
        self.write_seconds.observe(took.as_secs_f64());
        self.update_lag(&labels);
    }

    pub(crate) fn source(&self, group: &str, seq: u64) {
        let labels = GroupLabels {
            group: group.to_string(),
        };
        self.source_seq.get_or_create(&labels).set(gauge_value(seq));
        self.update_lag(&labels);
    }

    fn update_lag(&self, labels: &GroupLabels) {
        let done = self.done_seq.get_or_create(labels).get();
        let source = self.source_seq.get_or_create(labels).get();
        self.lag_events
            .get_or_create(labels)
            .set(source.saturating_sub(done).max(0));
    }
}
