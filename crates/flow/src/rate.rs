//! One rate limiter: GCRA (the generic cell rate algorithm) with a warm-up.
//!
//! GCRA keeps one instant per limiter, the *theoretical arrival time* `tat`: a request is
//! admitted if `now >= tat - tolerance` (the tolerance, `(burst - 1)` intervals, is the burst),
//! and moves `tat` on by one interval (`max(tat, now) + interval`). A request that came too early
//! may wait for its turn if that is within its rule's `max_wait_ms` (queueing, as a leaky
//! bucket: it takes its slot now and sleeps until then), else it is refused and told when
//! the next slot is.
//!
//! Warm-up (Sentinel's idea, in GCRA's terms): after a quiet spell a limiter is *cold* and its
//! interval is `cold_factor` times longer; it warms as traffic uses it. `heat` (in ns, up to
//! the warm-up period) grows by the interval each admitted request takes and shrinks by the
//! time the limiter stood unused (`now - tat` when positive); the interval shrinks linearly with
//! heat. So `warm_up_seconds` of traffic at the limit bring it to the full rate, and it cools at
//! the same pace when idle. A limiter starts cold.
//!
//! Owns the arithmetic, on instants given by the caller (nanoseconds from any fixed origin),
//! so tests drive it without a clock. It must not sleep or read a clock itself.

use std::sync::Mutex;
use std::time::Duration;

use crate::rules::RateRule;

const NANOS_PER_SECOND: u64 = 1_000_000_000;

/// What a limiter says to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Admitted now.
    Now,
    /// Admitted, its slot being this far ahead: the request waits that long first.
    After(Duration),
    /// Refused; the next slot is this far ahead.
    Refused { retry_after: Duration },
}

/// What an admission changed in a limiter, so that it can be undone exactly
/// ([`RateLimiter::give_back`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Grant {
    interval: u64,
    tat_before: u64,
    heat_before: u64,
    tat_set: u64,
}

#[derive(Debug)]
struct State {
    tat: u64,
    heat: u64,
}

/// One limiter's rule, in nanoseconds, and its state.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    interval: u64,
    tolerance_intervals: u64,
    cold_factor: u64,
    warm_up: u64,
    max_wait: u64,
    state: Mutex<State>,
}

impl RateLimiter {
    pub(crate) fn new(rule: &RateRule) -> RateLimiter {
        let interval = (NANOS_PER_SECOND / u64::from(rule.rate_per_second.max(1))).max(1);
        RateLimiter {
            interval,
            tolerance_intervals: u64::from(rule.burst.max(1) - 1),
            cold_factor: u64::from(rule.cold_factor.max(1)),
            warm_up: u64::from(rule.warm_up_seconds) * NANOS_PER_SECOND,
            max_wait: u64::from(rule.max_wait_ms) * 1_000_000,
            state: Mutex::new(State { tat: 0, heat: 0 }),
        }
    }

    /// The interval at `heat`: `cold_factor` intervals when cold, one when warm.
    fn interval_at(&self, heat: u64) -> u64 {
        if self.warm_up == 0 || self.cold_factor <= 1 {
            return self.interval;
        }
        let coldness = u128::from(self.warm_up - heat.min(self.warm_up));
        let extra = u128::from(self.interval) * u128::from(self.cold_factor - 1) * coldness
            / u128::from(self.warm_up);
        self.interval + u64::try_from(extra).unwrap_or(u64::MAX / 4)
    }

    /// Decides one request arriving at `now` (ns from the caller's origin; never before an
    /// earlier call's `now` by more than the caller's clock allows: a stale `now` only makes
    /// the limiter stricter).
    #[cfg(test)]
    pub(crate) fn check(&self, now: u64) -> Verdict {
        self.check_granting(now).0
    }

    /// [`RateLimiter::check`], with what an admission changed (`None` for a refusal).
    pub(crate) fn check_granting(&self, now: u64) -> (Verdict, Option<Grant>) {
        let mut state = self.state.lock().expect("never poisoned");
        let tat = state.tat.max(now);
        let idle = now.saturating_sub(state.tat);
        let heat = state.heat.saturating_sub(idle);
        let interval = self.interval_at(heat);
        let tolerance = self.tolerance_intervals * interval;
        let allowed_at = tat.saturating_sub(tolerance);
        let wait = allowed_at.saturating_sub(now);
        if wait > self.max_wait {
            let retry_after = Duration::from_nanos(wait);
            return (Verdict::Refused { retry_after }, None);
        }
        let grant = Grant {
            interval,
            tat_before: state.tat,
            heat_before: state.heat,
            tat_set: tat + interval,
        };
        state.tat = grant.tat_set;
        state.heat = (heat + interval).min(self.warm_up);
        let verdict = if wait == 0 {
            Verdict::Now
        } else {
            Verdict::After(Duration::from_nanos(wait))
        };
        (verdict, Some(grant))
    }

    /// Gives back the slot of a request this limiter admitted but that was refused later (by
    /// another rule or its pool) or abandoned, so that refused calls neither use up a rate nor
    /// warm a limiter: exactly as before it if no call came since, else by the interval it took.
    pub(crate) fn give_back(&self, grant: Grant) {
        let mut state = self.state.lock().expect("never poisoned");
        if state.tat == grant.tat_set {
            state.tat = grant.tat_before;
            state.heat = grant.heat_before;
        } else {
            state.tat = state.tat.saturating_sub(grant.interval);
            state.heat = state.heat.saturating_sub(grant.interval);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn rule(rate: u32, burst: u32) -> RateRule {
        RateRule {
            api: None,
            caller: None,
            rate_per_second: rate,
            burst,
            warm_up_seconds: 0,
            cold_factor: 3,
            max_wait_ms: 0,
        }
    }

    /// Requests admitted out of `offered` spread evenly over `seconds` from `start`.
    fn admitted(limiter: &RateLimiter, start: u64, offered: u64, seconds: u64) -> u64 {
        let step = seconds * NANOS_PER_SECOND / offered;
        (0..offered)
            .filter(|i| limiter.check(start + i * step) == Verdict::Now)
            .count() as u64
    }

    #[test]
    fn a_flood_gets_the_rate_and_the_burst_not_more() {
        let limiter = RateLimiter::new(&rule(100, 10));
        let start = 10 * NANOS_PER_SECOND;
        // Ten times the rate for 2 s: 200 slots, and the burst of 10 at the start.
        let passed = admitted(&limiter, start, 2_000, 2);
        assert!((200..=211).contains(&passed), "{passed}");
    }

    #[test]
    fn under_the_rate_everything_passes_and_a_refusal_says_when_to_come_back() {
        let limiter = RateLimiter::new(&rule(100, 1));
        assert_eq!(admitted(&limiter, NANOS_PER_SECOND, 50, 1), 50);
        let now = 5 * NANOS_PER_SECOND;
        assert_eq!(limiter.check(now), Verdict::Now);
        assert_eq!(
            limiter.check(now + MS),
            Verdict::Refused {
                retry_after: Duration::from_millis(9)
            }
        );
        assert_eq!(limiter.check(now + 10 * MS), Verdict::Now);
    }

    #[test]
    fn a_request_over_the_rate_waits_for_its_turn_within_the_rule_s_wait() {
        let mut queued = rule(100, 1);
        queued.max_wait_ms = 25;
        let limiter = RateLimiter::new(&queued);
        let now = NANOS_PER_SECOND;
        assert_eq!(limiter.check(now), Verdict::Now);
        assert_eq!(
            limiter.check(now),
            Verdict::After(Duration::from_millis(10))
        );
        assert_eq!(
            limiter.check(now),
            Verdict::After(Duration::from_millis(20))
        );
        // The fourth would wait 30 ms: refused, and its refusal took no slot.
        assert!(matches!(limiter.check(now), Verdict::Refused { .. }));
        assert_eq!(
            limiter.check(now + 10 * MS),
            Verdict::After(Duration::from_millis(20))
        );
    }

    #[test]
    fn given_back_slots_are_taken_again() {
        let limiter = RateLimiter::new(&rule(10, 1));
        let now = NANOS_PER_SECOND;
        let (verdict, grant) = limiter.check_granting(now);
        assert_eq!(verdict, Verdict::Now);
        assert!(matches!(limiter.check(now), Verdict::Refused { .. }));
        limiter.give_back(grant.unwrap());
        assert_eq!(limiter.check(now), Verdict::Now);
    }

    #[test]
    fn a_given_back_slot_leaves_a_cold_limiter_as_it_was() {
        // Cold: one call takes 100 intervals; giving it back must not leave them taken.
        let mut cold = rule(1, 1);
        cold.warm_up_seconds = 1;
        cold.cold_factor = 100;
        let limiter = RateLimiter::new(&cold);
        let now = 1_000 * NANOS_PER_SECOND;
        let (verdict, grant) = limiter.check_granting(now);
        assert_eq!(verdict, Verdict::Now);
        limiter.give_back(grant.unwrap());
        let state = limiter.state.lock().unwrap();
        assert_eq!((state.tat, state.heat), (0, 0));
    }

    #[test]
    fn a_cold_limiter_starts_at_a_fraction_of_the_rate_and_warms_under_load() {
        let mut warm = rule(1_000, 1);
        warm.warm_up_seconds = 10;
        warm.cold_factor = 4;
        let limiter = RateLimiter::new(&warm);
        let start = 100 * NANOS_PER_SECOND;
        // Flooded at 10x: the first second gets about a quarter of the rate, rising.
        // (Offered every 10 us: a coarser grid would round the intervals up.)
        let first = admitted(&limiter, start, 100_000, 1);
        assert!((250..=330).contains(&first), "first second: {first}");
        // Ten more seconds of flood: warm, the full rate.
        let _ = admitted(&limiter, start + NANOS_PER_SECOND, 1_000_000, 10);
        let warm_second = admitted(&limiter, start + 11 * NANOS_PER_SECOND, 100_000, 1);
        assert!((990..=1_001).contains(&warm_second), "warm: {warm_second}");
        // A minute's quiet cools it again.
        let cold_again = admitted(&limiter, start + 72 * NANOS_PER_SECOND, 100_000, 1);
        assert!(cold_again < 350, "cooled: {cold_again}");
    }

    #[test]
    fn light_traffic_does_not_warm_a_limiter() {
        let mut warm = rule(1_000, 1);
        warm.warm_up_seconds = 5;
        warm.cold_factor = 4;
        let limiter = RateLimiter::new(&warm);
        let start = NANOS_PER_SECOND;
        // 100/s for 20 s: far under the cold rate (250/s), all admitted, and still cold.
        assert_eq!(admitted(&limiter, start, 2_000, 20), 2_000);
        let burst = admitted(&limiter, start + 21 * NANOS_PER_SECOND, 10_000, 1);
        assert!(burst < 400, "{burst}");
    }
}
