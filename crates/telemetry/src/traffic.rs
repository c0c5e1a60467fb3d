//! Running totals of a process's traffic for the live console: requests, errors, committed
//! events and a latency histogram, as plain atomics that two readings a moment apart turn into
//! rates and a p99 over that moment ([`TrafficTotals::rates_since`]).
//!
//! Owns only these totals and the arithmetic on two of them. The Prometheus families in
//! [`crate::Metrics`] stay the record operators scrape; these exist because a console needs the
//! last half-second, which a cumulative Prometheus histogram cannot give without its buckets
//! (prometheus-client does not expose them). Must not allocate or lock on the request path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How many latency buckets [`TrafficTotals::latency_buckets`] has: bucket `i` counts requests
/// that took at most [`latency_bucket_bound`]`(i)`, and the last one (bound ~210 s, past every
/// server-side wait) also anything slower, which a p99 there understates.
pub const LATENCY_BUCKETS_COUNT: usize = 24;

/// The first bucket's bound: 25 µs; each next bound doubles it.
const LATENCY_BUCKET_FIRST_NS: u64 = 25_000;

/// Bucket `i`'s upper bound.
pub fn latency_bucket_bound(i: usize) -> Duration {
    assert!(i < LATENCY_BUCKETS_COUNT, "bucket {i} out of range");
    Duration::from_nanos(LATENCY_BUCKET_FIRST_NS << i)
}

fn latency_bucket_of(elapsed: Duration) -> usize {
    let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
    (0..LATENCY_BUCKETS_COUNT)
        .find(|&i| nanos <= LATENCY_BUCKET_FIRST_NS << i)
        .unwrap_or(LATENCY_BUCKETS_COUNT - 1)
}

/// The live totals (one per [`crate::Metrics`]).
#[derive(Debug, Default)]
pub(crate) struct Traffic {
    requests: AtomicU64,
    errors: AtomicU64,
    events: AtomicU64,
    latency: [AtomicU64; LATENCY_BUCKETS_COUNT],
}

impl Traffic {
    pub(crate) fn request(&self, elapsed: Duration, failed: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.latency[latency_bucket_of(elapsed)].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn events(&self, count: usize) {
        self.events.fetch_add(count as u64, Ordering::Relaxed);
    }

    pub(crate) fn totals(&self) -> TrafficTotals {
        TrafficTotals {
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            events: self.events.load(Ordering::Relaxed),
            latency_buckets: self
                .latency
                .iter()
                .map(|bucket| bucket.load(Ordering::Relaxed))
                .collect(),
        }
    }
}

/// One reading of the totals since the process started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrafficTotals {
    /// Requests answered (every operation, every protocol).
    pub requests: u64,
    /// Of those, answered with an error.
    pub errors: u64,
    /// Events committed (a replica's batches; 0 elsewhere).
    pub events: u64,
    /// [`LATENCY_BUCKETS_COUNT`] counts of requests by latency (not cumulative).
    pub latency_buckets: Vec<u64>,
}

/// What happened between two readings.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TrafficRates {
    pub requests_per_second: f64,
    pub errors_per_second: f64,
    pub events_per_second: f64,
    /// The bound of the bucket holding the 99th percentile of the requests answered in
    /// between; `None` when none were.
    pub p99: Option<Duration>,
}

impl TrafficTotals {
    /// What was counted from `earlier` to this reading; `None` when the reading went backwards
    /// (another process answered: a restarted node) or either is not of the shape this build
    /// counts in, rather than nonsense.
    pub fn delta_since(&self, earlier: &TrafficTotals) -> Option<TrafficTotals> {
        let shaped = |totals: &TrafficTotals| totals.latency_buckets.len() == LATENCY_BUCKETS_COUNT;
        if !shaped(self) || !shaped(earlier) {
            return None;
        }
        let latency_buckets = self
            .latency_buckets
            .iter()
            .zip(&earlier.latency_buckets)
            .map(|(now, then)| now.checked_sub(*then))
            .collect::<Option<Vec<u64>>>()?;
        Some(TrafficTotals {
            requests: self.requests.checked_sub(earlier.requests)?,
            errors: self.errors.checked_sub(earlier.errors)?,
            events: self.events.checked_sub(earlier.events)?,
            latency_buckets,
        })
    }

    /// Adds `other`'s counts to these (two replicas' deltas make their group's).
    pub fn add(&mut self, other: &TrafficTotals) {
        self.requests = self.requests.saturating_add(other.requests);
        self.errors = self.errors.saturating_add(other.errors);
        self.events = self.events.saturating_add(other.events);
        self.latency_buckets
            .resize(LATENCY_BUCKETS_COUNT.max(other.latency_buckets.len()), 0);
        for (mine, theirs) in self.latency_buckets.iter_mut().zip(&other.latency_buckets) {
            *mine = mine.saturating_add(*theirs);
        }
    }

    /// These counts (a delta) as rates over `elapsed`; none over no time.
    pub fn rates_over(&self, elapsed: Duration) -> TrafficRates {
        let seconds = elapsed.as_secs_f64();
        if seconds <= 0.0 {
            return TrafficRates::default();
        }
        TrafficRates {
            requests_per_second: self.requests as f64 / seconds,
            errors_per_second: self.errors as f64 / seconds,
            events_per_second: self.events as f64 / seconds,
            p99: p99_bound(&self.latency_buckets),
        }
    }

    /// The rates from `earlier` to this reading, `elapsed` apart ([`Self::delta_since`]).
    pub fn rates_since(&self, earlier: &TrafficTotals, elapsed: Duration) -> TrafficRates {
        self.delta_since(earlier)
            .map(|delta| delta.rates_over(elapsed))
            .unwrap_or_default()
    }
}

fn p99_bound(buckets: &[u64]) -> Option<Duration> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    // The smallest bucket below which at least 99 % of the requests fall.
    let needed = total - total / 100;
    let mut seen = 0;
    buckets.iter().enumerate().find_map(|(i, count)| {
        seen += count;
        (seen >= needed).then(|| latency_bucket_bound(i))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_fall_in_the_bucket_whose_bound_holds_them() {
        assert_eq!(latency_bucket_of(Duration::ZERO), 0);
        assert_eq!(latency_bucket_of(Duration::from_micros(25)), 0);
        assert_eq!(latency_bucket_of(Duration::from_micros(26)), 1);
        assert_eq!(latency_bucket_of(Duration::from_millis(1)), 6);
        assert_eq!(
            latency_bucket_of(Duration::from_secs(3600)),
            LATENCY_BUCKETS_COUNT - 1
        );
    }

    #[test]
    fn rates_and_p99_cover_only_what_happened_in_between() {
        let traffic = Traffic::default();
        for _ in 0..50 {
            traffic.request(Duration::from_millis(100), true);
        }
        let earlier = traffic.totals();
        for _ in 0..990 {
            traffic.request(Duration::from_micros(20), false);
        }
        for _ in 0..10 {
            traffic.request(Duration::from_millis(1), false);
        }
        traffic.events(4_000);
        let rates = traffic
            .totals()
            .rates_since(&earlier, Duration::from_millis(500));
        assert_eq!(rates.requests_per_second, 2_000.0);
        assert_eq!(rates.errors_per_second, 0.0);
        assert_eq!(rates.events_per_second, 8_000.0);
        // 990 of 1,000 in the first bucket: the 99th percentile is there; the slow requests
        // before `earlier` do not count.
        assert_eq!(rates.p99, Some(latency_bucket_bound(0)));
        for _ in 0..20 {
            traffic.request(Duration::from_millis(1), false);
        }
        let rates = traffic
            .totals()
            .rates_since(&earlier, Duration::from_secs(1));
        assert_eq!(rates.p99, Some(latency_bucket_bound(6)));
    }

    #[test]
    fn a_reading_that_went_backwards_gives_no_rates() {
        let traffic = Traffic::default();
        traffic.request(Duration::from_millis(1), false);
        let later = traffic.totals();
        let rates = TrafficTotals::default().rates_since(&later, Duration::from_secs(1));
        assert_eq!(rates, TrafficRates::default());
        let truncated = TrafficTotals {
            latency_buckets: vec![1],
            ..later.clone()
        };
        assert_eq!(
            truncated.rates_since(&later, Duration::from_secs(1)),
            TrafficRates::default()
        );
        assert_eq!(
            traffic.totals().rates_since(&later, Duration::ZERO).p99,
            None
        );
    }

    #[test]
    fn two_deltas_add_into_one() {
        let one = Traffic::default();
        let other = Traffic::default();
        one.request(Duration::from_micros(10), false);
        other.request(Duration::from_millis(1), true);
        other.events(7);
        let mut sum = one.totals();
        sum.add(&other.totals());
        assert_eq!((sum.requests, sum.errors, sum.events), (2, 1, 7));
        assert_eq!(sum.latency_buckets[0], 1);
        assert_eq!(sum.latency_buckets[6], 1);
        let mut empty = TrafficTotals::default();
        empty.add(&sum);
        assert_eq!(empty, sum);
    }
}
