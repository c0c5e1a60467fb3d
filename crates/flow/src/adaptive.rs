//! Adaptive protection of one pool: while its calls take longer than the rule's `latency_ms`,
//! the pool admits only as many calls (served and waiting) as it has lately shown it can serve
//! without queueing — the most calls it completed per second in the last second times the
//! shortest mean time a call took over that second (Little's law, as Sentinel's system rule
//! and BBR estimate it) — and never fewer than `min_in_flight`. The excess is refused at once,
//! so a backlog never builds up inside the service (the pipeline, a group's queue) where no
//! limit could shed it, and latency returns to the target instead of growing with the load.
//!
//! "Take longer" is read two ways, so that both a slow service and a stalled one are seen at
//! once: the mean time of the calls completed in the last 100–200 ms, and the mean age of the
//! calls being served now (a stalled service completes nothing, but its calls grow old).
//!
//! Owns the measurements (100-ms buckets over one second, kept in atomics so that two cores
//! deciding at once do not queue on a lock: a call completing at the very moment its bucket
//! turns over may go uncounted, which an estimate can afford) and the decision, with the time
//! given by the caller so that every case is tested without a clock. It must not know what a
//! call is, nor hold its place (see `pool`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::rules::AdaptiveRule;

/// One bucket's span, in microseconds.
const BUCKET_MICROS: u64 = 100_000;
/// Buckets in the window (one second).
const BUCKETS: u64 = 10;
/// The unit of the start times summed for the mean age (0.1 ms: a sum over a full pool,
/// `FLOW_POOL_SIZE_MAX` calls, stays within 64 bits for decades of a pool's life).
const AGE_UNIT_MICROS: u64 = 100;
/// Attempts at reading the served calls and their starts as of one moment.
const AGE_READS: usize = 4;
/// The shortest and longest wait a refusal asks for.
const RETRY_MIN: Duration = Duration::from_millis(10);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// Calls completed within one bucket's span.
#[derive(Debug, Default)]
struct Bucket {
    /// The span it counts (its start over `BUCKET_MICROS`); a bucket of an older span is empty.
    tick: AtomicU64,
    completed: AtomicU64,
    /// The time its calls took together, in microseconds.
    total_micros: AtomicU64,
}

/// What a bucket held for one span.
#[derive(Debug, Clone, Copy)]
struct Span {
    completed: u64,
    total_micros: u64,
}

impl Span {
    fn mean_micros(&self) -> u64 {
        self.total_micros / self.completed
    }
}

/// A pool's adaptive protection.
#[derive(Debug)]
pub(crate) struct Adaptive {
    rule: AdaptiveRule,
    origin: Instant,
    /// Indexed by tick modulo `BUCKETS`.
    buckets: [Bucket; BUCKETS as usize],
    /// Calls being served now, and the sum of their starts (in `AGE_UNIT_MICROS` from
    /// `origin`). A start adds to the sum, then counts the call; a completion uncounts it, then
    /// takes from the sum: read between two such steps, the mean start is too late, so the age
    /// read is too young, never too old.
    serving: AtomicU64,
    started_total: AtomicU64,
}

impl Adaptive {
    pub(crate) fn new(rule: AdaptiveRule, now: Instant) -> Adaptive {
        Adaptive {
            rule,
            origin: now,
            buckets: Default::default(),
            serving: AtomicU64::new(0),
            started_total: AtomicU64::new(0),
        }
    }

    fn micros(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.origin).as_micros()).unwrap_or(u64::MAX)
    }

    /// What the bucket of `tick` holds for that span (`None`: nothing).
    fn span(&self, tick: u64) -> Option<Span> {
        let bucket = &self.buckets[(tick % BUCKETS) as usize];
        if bucket.tick.load(Ordering::Acquire) != tick {
            return None;
        }
        let completed = bucket.completed.load(Ordering::Relaxed);
        (completed > 0).then(|| Span {
            completed,
            total_micros: bucket.total_micros.load(Ordering::Relaxed),
        })
    }

    /// The window's spans that hold calls (the current one and the nine before it).
    fn window(&self, tick: u64) -> impl Iterator<Item = Span> + '_ {
        (tick.saturating_sub(BUCKETS - 1)..=tick).filter_map(|t| self.span(t))
    }

    /// The mean time of the calls completed in this span and the one before it.
    fn recent_micros(&self, tick: u64) -> u64 {
        let (completed, total) = [tick.checked_sub(1), Some(tick)]
            .into_iter()
            .flatten()
            .filter_map(|t| self.span(t))
            .fold((0, 0), |(c, t), span| {
                (c + span.completed, t + span.total_micros)
            });
        total.checked_div(completed).unwrap_or(0)
    }

    /// The mean age of the calls served now (0: none, or no reading as of one moment: the sum
    /// and the count are read twice, and must not have moved between).
    fn age_micros(&self, now: u64) -> u64 {
        for _ in 0..AGE_READS {
            let total = self.started_total.load(Ordering::Acquire);
            let serving = self.serving.load(Ordering::Acquire);
            if serving == 0 {
                return 0;
            }
            if self.started_total.load(Ordering::Acquire) == total
                && self.serving.load(Ordering::Acquire) == serving
            {
                return now.saturating_sub(total / serving * AGE_UNIT_MICROS);
            }
        }
        0
    }

    /// How many calls the pool holds without queueing, as the last second showed it (0: it
    /// completed nothing in that second).
    fn capacity_at(&self, tick: u64) -> u64 {
        let most = self
            .window(tick)
            .map(|span| span.completed)
            .max()
            .unwrap_or(0);
        let shortest = self
            .window(tick)
            .map(|span| span.mean_micros())
            .min()
            .unwrap_or(0);
        // calls per second × seconds a call takes = most × (1 s / bucket) × shortest / 1 s.
        most.saturating_mul(shortest).div_ceil(BUCKET_MICROS)
    }

    /// Whether one more call may enter a pool that holds `in_pool` calls (served and waiting)
    /// and serves at most `max_in_flight` at once; refused, how long to wait before trying
    /// again.
    pub(crate) fn check(
        &self,
        in_pool: u32,
        max_in_flight: u32,
        now: Instant,
    ) -> Result<(), Duration> {
        let now = self.micros(now);
        let tick = now / BUCKET_MICROS;
        let latency = self.recent_micros(tick).max(self.age_micros(now));
        if latency <= u64::from(self.rule.latency_ms) * 1_000 {
            return Ok(());
        }
        let floor = u64::from(self.rule.min_in_flight.min(max_in_flight));
        if u64::from(in_pool) < self.capacity_at(tick).max(floor) {
            return Ok(());
        }
        Err(Duration::from_micros(latency).clamp(RETRY_MIN, RETRY_MAX))
    }

    /// Counts a call as served from `now`; the stamp to give [`Adaptive::finished`].
    pub(crate) fn started(&self, now: Instant) -> u64 {
        let now = self.micros(now);
        self.started_total
            .fetch_add(now / AGE_UNIT_MICROS, Ordering::AcqRel);
        self.serving.fetch_add(1, Ordering::AcqRel);
        now
    }

    /// Counts the call stamped `started` as completed at `now`.
    pub(crate) fn finished(&self, started: u64, now: Instant) {
        let now = self.micros(now);
        let tick = now / BUCKET_MICROS;
        let bucket = &self.buckets[(tick % BUCKETS) as usize];
        let seen = bucket.tick.load(Ordering::Acquire);
        if seen != tick
            && bucket
                .tick
                .compare_exchange(seen, tick, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            bucket.completed.store(0, Ordering::Relaxed);
            bucket.total_micros.store(0, Ordering::Relaxed);
        }
        bucket
            .total_micros
            .fetch_add(now.saturating_sub(started), Ordering::Relaxed);
        bucket.completed.fetch_add(1, Ordering::Release);
        self.serving.fetch_sub(1, Ordering::AcqRel);
        self.started_total
            .fetch_sub(started / AGE_UNIT_MICROS, Ordering::AcqRel);
    }

    /// The capacity the pool would hold to now if it were overloaded (0: nothing completed in
    /// the last second, so only `min_in_flight`).
    #[cfg(test)]
    fn capacity(&self, now: Instant) -> u64 {
        self.capacity_at(self.micros(now) / BUCKET_MICROS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(latency_ms: u32, min_in_flight: u32) -> AdaptiveRule {
        AdaptiveRule {
            latency_ms,
            min_in_flight,
        }
    }

    fn ms(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    /// Serves `calls` calls of `each_ms` one after another on each of `lanes` lanes from
    /// `from_ms`; the time it ends.
    fn serve(
        adaptive: &Adaptive,
        start: Instant,
        from_ms: u64,
        lanes: u64,
        calls: u64,
        each_ms: u64,
    ) -> u64 {
        let mut at = from_ms;
        for _ in 0..calls {
            let stamps: Vec<u64> = (0..lanes)
                .map(|_| adaptive.started(ms(start, at)))
                .collect();
            at += each_ms;
            for stamp in stamps {
                adaptive.finished(stamp, ms(start, at));
            }
        }
        at
    }

    #[test]
    fn a_fast_pool_admits_whatever_it_holds() {
        let start = Instant::now();
        let adaptive = Adaptive::new(rule(50, 1), start);
        let at = serve(&adaptive, start, 0, 4, 100, 10);
        // 4 calls of 10 ms at once: 40 a bucket, a capacity of 4; but nothing is slow.
        assert_eq!(adaptive.capacity(ms(start, at)), 4);
        assert_eq!(adaptive.check(10_000, 10_000, ms(start, at)), Ok(()));
    }

    #[test]
    fn a_slow_pool_admits_only_what_it_serves_without_queueing() {
        let start = Instant::now();
        let adaptive = Adaptive::new(rule(50, 2), start);
        // A second at 8 calls of 10 ms at once (800 a second), then a backlog: 40 at once,
        // each taking 60 ms (the service queues them).
        let at = serve(&adaptive, start, 0, 8, 100, 10);
        let at = serve(&adaptive, start, at, 40, 2, 60);
        let now = ms(start, at);
        // 800 calls a second × 10 ms = 8.
        assert_eq!(adaptive.capacity(now), 8);
        assert_eq!(adaptive.check(7, 1024, now), Ok(()));
        // Asked to come back after the recent calls' mean time: (8 × 10 + 80 × 60) / 88 ms.
        let retry = adaptive.check(8, 1024, now).unwrap_err();
        assert_eq!(retry, Duration::from_micros(4_880_000 / 88));
        // A second later, with calls back at 10 ms, all is admitted again.
        let at = serve(&adaptive, start, at + 1_000, 2, 30, 10);
        assert_eq!(adaptive.check(500, 1024, ms(start, at)), Ok(()));
    }

    #[test]
    fn a_stalled_pool_is_seen_by_the_age_of_its_calls() {
        let start = Instant::now();
        let adaptive = Adaptive::new(rule(100, 3), start);
        let at = serve(&adaptive, start, 0, 2, 50, 20);
        // Five calls start and hang: nothing completes, so only their age tells.
        let _hung: Vec<u64> = (0..5).map(|_| adaptive.started(ms(start, at))).collect();
        assert_eq!(adaptive.check(5, 1024, ms(start, at + 90)), Ok(()));
        // Past 100 ms old, the pool admits its last second's capacity (2 × 20 ms per 20 ms
        // = 2) or the floor of 3, whichever is more.
        let stalled = ms(start, at + 150);
        assert_eq!(adaptive.check(2, 1024, stalled), Ok(()));
        assert!(adaptive.check(3, 1024, stalled).is_err());
        // Two seconds on, the window is empty: the floor alone, bounded by the pool.
        let later = ms(start, at + 2_000);
        assert_eq!(adaptive.capacity(later), 0);
        assert_eq!(adaptive.check(2, 1024, later), Ok(()));
        assert_eq!(adaptive.check(3, 1024, later), Err(RETRY_MAX));
        assert!(adaptive.check(1, 1, later).is_err());
    }

    #[test]
    fn old_spans_do_not_count() {
        let start = Instant::now();
        let adaptive = Adaptive::new(rule(10, 1), start);
        // Slow calls once, long ago.
        serve(&adaptive, start, 0, 1, 3, 500);
        let now = ms(start, 10_000);
        assert_eq!(adaptive.capacity(now), 0);
        assert_eq!(adaptive.check(1_000, 1024, now), Ok(()));
    }
}
