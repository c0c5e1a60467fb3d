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
//! Owns the measurements ([`Measures`]: 100-ms buckets over one second, kept in atomics so that
//! two cores deciding at once do not queue on a lock — a call completing at the very moment its
//! bucket turns over may go uncounted, which an estimate can afford) and the decision, with the
//! time given by the caller so that every case is tested without a clock. The measures outlive
//! a rule change (a pool replaced mid-overload keeps what it knew and the calls still served).
//! It must not know what a call is, nor hold its place (see `pool`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::rules::AdaptiveRule;

/// One bucket's span, in microseconds.
const BUCKET_MICROS: u64 = 100_000;
/// Buckets in the window (one second).
const BUCKETS: u64 = 10;
/// A bucket's word: the calls completed (high bits) and their total time in `TOTAL_UNIT_MICROS`
/// (low bits), one word so that an addition and a reset never interleave half-way.
const TOTAL_BITS: u32 = 40;
const TOTAL_MASK: u64 = (1 << TOTAL_BITS) - 1;
const COUNT_MAX: u64 = u64::MAX >> TOTAL_BITS;
const TOTAL_UNIT_MICROS: u64 = 10;
/// A bucket with fewer than this fraction of the busiest bucket's calls says too little of
/// how long calls take (one quick call — a refusal, a redirect — must not set the capacity).
const SHORTEST_AMONG_DIVISOR: u64 = 10;
/// The unit of the start times summed for the mean age (0.1 ms: a sum over a full pool,
/// `FLOW_POOL_SIZE_MAX` calls, stays within 64 bits for decades of a pool's life).
const AGE_UNIT_MICROS: u64 = 100;
/// Attempts at reading the served calls and their starts as of one moment.
const AGE_READS: usize = 4;
/// The shortest and longest wait a refusal asks for.
const RETRY_MIN: Duration = Duration::from_millis(10);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// How a call meets the protection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Treatment {
    /// Timed, and refused when the pool holds what it can serve.
    Shed,
    /// Timed, never refused (work that finishes what was admitted before: saga steps).
    TimedOnly,
    /// Neither (a call that waits by design, as a long poll: its time says nothing of the
    /// service's).
    Untimed,
}

/// Calls completed within one bucket's span.
#[derive(Debug, Default)]
struct Bucket {
    /// The span it counts (its start over `BUCKET_MICROS`); a bucket of an older span is empty.
    tick: AtomicU64,
    /// Calls and their total time (see `TOTAL_BITS`).
    word: AtomicU64,
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

/// A pool's measurements: what its calls took lately, and the calls served now.
#[derive(Debug)]
pub(crate) struct Measures {
    origin: Instant,
    /// Indexed by tick modulo `BUCKETS`.
    buckets: [Bucket; BUCKETS as usize],
    /// Calls being served now, and the sum of their starts (in `AGE_UNIT_MICROS` from
    /// `origin`). Read twice (the sum, the count, the sum, the count); a reading whose words
    /// moved between is thrown away.
    serving: AtomicU64,
    started_total: AtomicU64,
}

/// A pool's adaptive protection: its rule and its (shared) measures.
#[derive(Debug)]
pub(crate) struct Adaptive {
    rule: AdaptiveRule,
    measures: Arc<Measures>,
}

impl Measures {
    pub(crate) fn new(now: Instant) -> Measures {
        Measures {
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
        let word = bucket.word.load(Ordering::Acquire);
        let completed = word >> TOTAL_BITS;
        (completed > 0).then_some(Span {
            completed,
            total_micros: (word & TOTAL_MASK) * TOTAL_UNIT_MICROS,
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

    /// The mean age of the calls served now (0: none, or no reading as of one moment).
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
        let enough = (most / SHORTEST_AMONG_DIVISOR).max(1);
        let shortest = self
            .window(tick)
            .filter(|span| span.completed >= enough)
            .map(|span| span.mean_micros())
            .min()
            .unwrap_or(0);
        // calls per second × seconds a call takes = most × (1 s / bucket) × shortest / 1 s.
        most.saturating_mul(shortest).div_ceil(BUCKET_MICROS)
    }

    /// Calls being served now.
    pub(crate) fn serving(&self) -> u64 {
        self.serving.load(Ordering::Acquire)
    }

    /// Counts a call as served from `now`; the stamp to give [`Measures::finished`].
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
        let mut seen = bucket.tick.load(Ordering::Acquire);
        if seen < tick {
            // The bucket held a span a second old (out of every window): empty it, then claim
            // it. Two finishers turning it over at once may lose the other's call.
            bucket.word.store(0, Ordering::Release);
            seen =
                match bucket
                    .tick
                    .compare_exchange(seen, tick, Ordering::AcqRel, Ordering::Acquire)
                {
                    Ok(_) => tick,
                    Err(now_seen) => now_seen,
                };
        }
        // (A finisher late by a second finds a newer span there: its call goes uncounted.)
        if seen == tick {
            let units = (now.saturating_sub(started) / TOTAL_UNIT_MICROS).min(TOTAL_MASK);
            let _ = bucket
                .word
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
                    let completed = word >> TOTAL_BITS;
                    (completed < COUNT_MAX).then(|| {
                        ((completed + 1) << TOTAL_BITS)
                            | ((word & TOTAL_MASK) + units).min(TOTAL_MASK)
                    })
                });
        }
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

impl Adaptive {
    /// Protection under `rule` over `measures` (a replaced pool's, or new ones).
    pub(crate) fn new(rule: AdaptiveRule, measures: Arc<Measures>) -> Adaptive {
        Adaptive { rule, measures }
    }

    pub(crate) fn measures(&self) -> &Arc<Measures> {
        &self.measures
    }

    /// Whether one more call may enter a pool that holds `in_pool` calls (served and waiting)
    /// and serves at most `max_in_flight` at once; refused, how long to wait before trying
    /// again.
    pub(crate) fn check(
        &self,
        in_pool: u64,
        max_in_flight: u32,
        now: Instant,
    ) -> Result<(), Duration> {
        let measures = &self.measures;
        let now = measures.micros(now);
        let tick = now / BUCKET_MICROS;
        let latency = measures.recent_micros(tick).max(measures.age_micros(now));
        if latency <= u64::from(self.rule.latency_ms) * 1_000 {
            return Ok(());
        }
        let floor = u64::from(self.rule.min_in_flight.min(max_in_flight));
        if in_pool < measures.capacity_at(tick).max(floor) {
            return Ok(());
        }
        Err(Duration::from_micros(latency).clamp(RETRY_MIN, RETRY_MAX))
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
                .map(|_| adaptive.measures.started(ms(start, at)))
                .collect();
            at += each_ms;
            for stamp in stamps {
                adaptive.measures.finished(stamp, ms(start, at));
            }
        }
        at
    }

    #[test]
    fn a_fast_pool_admits_whatever_it_holds() {
        let start = Instant::now();
        let adaptive = Adaptive::new(rule(50, 1), Arc::new(Measures::new(start)));
        let at = serve(&adaptive, start, 0, 4, 100, 10);
        // 4 calls of 10 ms at once: 40 a bucket, a capacity of 4; but nothing is slow.
        assert_eq!(adaptive.measures.capacity(ms(start, at)), 4);
        assert_eq!(adaptive.check(10_000, 10_000, ms(start, at)), Ok(()));
    }

    #[test]
    fn a_slow_pool_admits_only_what_it_serves_without_queueing() {
        let start = Instant::now();
        let adaptive = Adaptive::new(rule(50, 2), Arc::new(Measures::new(start)));
        // A second at 8 calls of 10 ms at once (800 a second), then a backlog: 40 at once,
        // each taking 60 ms (the service queues them).
        let at = serve(&adaptive, start, 0, 8, 100, 10);
        let at = serve(&adaptive, start, at, 40, 2, 60);
        let now = ms(start, at);
        // 800 calls a second × 10 ms = 8.
        assert_eq!(adaptive.measures.capacity(now), 8);
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
        let adaptive = Adaptive::new(rule(100, 3), Arc::new(Measures::new(start)));
        let at = serve(&adaptive, start, 0, 2, 50, 20);
        // Five calls start and hang: nothing completes, so only their age tells.
        let _hung: Vec<u64> = (0..5)
            .map(|_| adaptive.measures.started(ms(start, at)))
            .collect();
        assert_eq!(adaptive.check(5, 1024, ms(start, at + 90)), Ok(()));
        // Past 100 ms old, the pool admits its last second's capacity (2 × 20 ms per 20 ms
        // = 2) or the floor of 3, whichever is more.
        let stalled = ms(start, at + 150);
        assert_eq!(adaptive.check(2, 1024, stalled), Ok(()));
        assert!(adaptive.check(3, 1024, stalled).is_err());
        // Two seconds on, the window is empty: the floor alone, bounded by the pool.
        let later = ms(start, at + 2_000);
        assert_eq!(adaptive.measures.capacity(later), 0);
        assert_eq!(adaptive.check(2, 1024, later), Ok(()));
        assert_eq!(adaptive.check(3, 1024, later), Err(RETRY_MAX));
        assert!(adaptive.check(1, 1, later).is_err());
    }

    #[test]
    fn old_spans_do_not_count() {
        let start = Instant::now();
        let adaptive = Adaptive::new(rule(10, 1), Arc::new(Measures::new(start)));
        // Slow calls once, long ago.
        serve(&adaptive, start, 0, 1, 3, 500);
        let now = ms(start, 10_000);
        assert_eq!(adaptive.measures.capacity(now), 0);
        assert_eq!(adaptive.check(1_000, 1024, now), Ok(()));
    }

    #[test]
    fn one_quick_call_does_not_set_the_capacity() {
        let start = Instant::now();
        let adaptive = Adaptive::new(rule(50, 1), Arc::new(Measures::new(start)));
        let at = serve(&adaptive, start, 0, 8, 20, 10);
        // One call answered at once (a refusal, a redirect) in a bucket of its own.
        let quick = adaptive.measures.started(ms(start, at + 50));
        adaptive.measures.finished(quick, ms(start, at + 50));
        assert_eq!(adaptive.measures.capacity(ms(start, at + 60)), 8);
    }

    #[test]
    fn two_threads_counting_at_once_leave_the_counts_whole() {
        let start = Instant::now();
        let measures = Arc::new(Measures::new(start));
        // One clock for both: the 40,000 calls take 2 s of it, 20 a millisecond.
        let clock = AtomicU64::new(0);
        std::thread::scope(|scope| {
            for _ in 0..2 {
                scope.spawn(|| {
                    for _ in 0..20_000 {
                        let i = clock.fetch_add(1, Ordering::Relaxed);
                        let stamp = measures.started(ms(start, i / 20));
                        measures.finished(stamp, ms(start, i / 20 + 1));
                    }
                });
            }
        });
        assert_eq!(measures.serving(), 0);
        assert_eq!(measures.started_total.load(Ordering::Acquire), 0);
        // The window ending with the last span (finished at 1,100 to 2,000 ms: 901 ms of 20
        // calls) holds them all, 1 ms each; a turn-over may lose a call or two, never add one.
        let counted: u64 = measures.window(20).map(|span| span.completed).sum();
        assert!((17_920..=18_020).contains(&counted), "{counted}");
        assert!(measures.window(20).all(|span| span.mean_micros() == 1_000));
    }
}
