//! A circuit breaker: the state of one callee (a gateway's ledger group) as its callers see it
//! — closed (calls go through, and are counted over a sliding window of one-second buckets),
//! open (calls are refused at once until a set time), half-open (a few probe calls go
//! through; all answered in time closes it, one failing or slow opens it again).
//!
//! Owns the state machine only: the caller says when a call starts ([`Breaker::admit`]) and
//! how it ended ([`Breaker::record`]), with the time, so that every transition is tested
//! without a clock. The rule comes with each call ([`BreakerRule`] from the rules in use), so
//! a changed rule applies at once. Must not make or time calls.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::rules::BreakerRule;

/// How a call ended, as the breaker counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    /// Answered in time.
    Answered,
    /// Not answered (the callee failed or could not be reached).
    Failed,
    /// Still unanswered after the rule's `slow_call_ms` (counted then, whatever follows).
    Slow,
    /// Not the callee's doing (refused before it was sent, the caller gave up): not counted.
    Uncounted,
}

/// How a call was let through: as a probe of a half-open breaker or not, and in which of the
/// breaker's generations (each transition starts a new one; a call's outcome counts only in
/// the generation that let it through).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    pub probe: bool,
    generation: u64,
}

/// The breaker's state, as metrics show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    /// The value of the state gauge: 0 closed, 1 open, 2 half-open.
    pub fn gauge(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }
}

/// A call refused because the breaker is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Open {
    /// When a call may be let through again (as a probe), from now.
    pub retry_after: Duration,
}

#[derive(Debug)]
enum Phase {
    Closed,
    Open { until: Instant },
    HalfOpen { admitted: u32, answered: u32 },
}

/// Calls of one second.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    second: u64,
    calls: u32,
    failed: u32,
    slow: u32,
}

#[derive(Debug)]
struct State {
    phase: Phase,
    /// Bumped at every transition.
    generation: u64,
    /// Buckets of the last `window_seconds` (oldest first).
    window: VecDeque<Bucket>,
}

/// One callee's breaker.
#[derive(Debug)]
pub struct Breaker {
    /// Seconds of the window are counted from here.
    started: Instant,
    state: Mutex<State>,
}

impl Breaker {
    pub fn new(now: Instant) -> Breaker {
        Breaker {
            started: now,
            state: Mutex::new(State {
                phase: Phase::Closed,
                generation: 0,
                window: VecDeque::new(),
            }),
        }
    }

    /// The state now (an open breaker whose time is up shows as half-open).
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.state.lock().expect("never poisoned").phase {
            Phase::Closed => BreakerState::Closed,
            Phase::Open { until } if now < until => BreakerState::Open,
            Phase::Open { .. } | Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// How long the breaker stays open from `now` (`None`: not open), without letting a call
    /// through.
    pub fn open_for(&self, now: Instant) -> Option<Duration> {
        match self.state.lock().expect("never poisoned").phase {
            Phase::Open { until } if now < until => Some(until - now),
            _ => None,
        }
    }

    /// Whether a call may start now: refused while open, and past the probes while half-open.
    pub fn admit(&self, rule: &BreakerRule, now: Instant) -> Result<Admission, Open> {
        let mut state = self.state.lock().expect("never poisoned");
        if let Phase::Open { until } = state.phase {
            if now < until {
                return Err(Open {
                    retry_after: until - now,
                });
            }
            state.phase = Phase::HalfOpen {
                admitted: 0,
                answered: 0,
            };
            state.generation += 1;
        }
        let generation = state.generation;
        match &mut state.phase {
            Phase::Closed => Ok(Admission {
                probe: false,
                generation,
            }),
            Phase::HalfOpen { admitted, .. } if *admitted < rule.half_open_probes => {
                *admitted += 1;
                Ok(Admission {
                    probe: true,
                    generation,
                })
            }
            // The probes are out: the next chance is when one comes back.
            Phase::HalfOpen { .. } => Err(Open {
                retry_after: Duration::from_millis(u64::from(rule.slow_call_ms.min(rule.open_ms))),
            }),
            Phase::Open { .. } => unreachable!("left above"),
        }
    }

    /// Counts how a call let through by `admission` ended; answers the new state if this
    /// changed it. Outcomes of calls let through before the breaker last opened or closed do
    /// not count.
    pub fn record(
        &self,
        rule: &BreakerRule,
        admission: Admission,
        outcome: CallOutcome,
        now: Instant,
    ) -> Option<BreakerState> {
        let mut state = self.state.lock().expect("never poisoned");
        if admission.generation != state.generation {
            return None;
        }
        let open_until = now + Duration::from_millis(u64::from(rule.open_ms));
        match (&mut state.phase, admission.probe) {
            (Phase::Closed, false) => {
                if outcome == CallOutcome::Uncounted {
                    return None;
                }
                let second = now.saturating_duration_since(self.started).as_secs();
                let window = u64::from(rule.window_seconds);
                while state
                    .window
                    .front()
                    .is_some_and(|bucket| bucket.second + window <= second)
                {
                    state.window.pop_front();
                }
                if state
                    .window
                    .back()
                    .is_none_or(|bucket| bucket.second != second)
                {
                    state.window.push_back(Bucket {
                        second,
                        calls: 0,
                        failed: 0,
                        slow: 0,
                    });
                }
                let bucket = state.window.back_mut().expect("just made");
                bucket.calls += 1;
                bucket.failed += u32::from(outcome == CallOutcome::Failed);
                bucket.slow += u32::from(outcome == CallOutcome::Slow);
                if trips(rule, &state.window) {
                    state.phase = Phase::Open { until: open_until };
                    state.generation += 1;
                    state.window.clear();
                    return Some(BreakerState::Open);
                }
                None
            }
            (Phase::HalfOpen { admitted, answered }, true) => match outcome {
                CallOutcome::Answered => {
                    *answered += 1;
                    if *answered >= rule.half_open_probes {
                        state.phase = Phase::Closed;
                        state.generation += 1;
                        state.window.clear();
                        return Some(BreakerState::Closed);
                    }
                    None
                }
                CallOutcome::Uncounted => {
                    // Its place goes to another probe.
                    *admitted = admitted.saturating_sub(1);
                    None
                }
                CallOutcome::Failed | CallOutcome::Slow => {
                    state.phase = Phase::Open { until: open_until };
                    state.generation += 1;
                    Some(BreakerState::Open)
                }
            },
            _ => None,
        }
    }
}

/// Whether the calls in `window` open the breaker.
fn trips(rule: &BreakerRule, window: &VecDeque<Bucket>) -> bool {
    let (calls, failed, slow) = window.iter().fold((0u64, 0u64, 0u64), |sum, bucket| {
        (
            sum.0 + u64::from(bucket.calls),
            sum.1 + u64::from(bucket.failed),
            sum.2 + u64::from(bucket.slow),
        )
    });
    if rule
        .error_count
        .is_some_and(|count| failed >= u64::from(count))
    {
        return true;
    }
    if calls < u64::from(rule.min_calls) {
        return false;
    }
    let reaches = |count: u64, percent: Option<u32>| {
        percent.is_some_and(|percent| count * 100 >= calls * u64::from(percent))
    };
    reaches(failed, rule.error_ratio_percent) || reaches(slow, rule.slow_ratio_percent)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule() -> BreakerRule {
        crate::Rules::from_json(
            r#"{"breaker":{"error_ratio_percent":50,"slow_ratio_percent":50,"slow_call_ms":200,
                "min_calls":4,"window_seconds":5,"open_ms":1000,"half_open_probes":2}}"#,
        )
        .unwrap()
        .breaker
        .unwrap()
    }

    fn call(
        breaker: &Breaker,
        rule: &BreakerRule,
        outcome: CallOutcome,
        now: Instant,
    ) -> Option<BreakerState> {
        let admission = breaker.admit(rule, now).expect("let through");
        breaker.record(rule, admission, outcome, now)
    }

    #[test]
    fn it_opens_on_the_error_ratio_only_past_the_least_calls() {
        let rule = rule();
        let t0 = Instant::now();
        let breaker = Breaker::new(t0);
        // Three failures of three calls: fewer than min_calls, still closed.
        for _ in 0..3 {
            assert_eq!(call(&breaker, &rule, CallOutcome::Failed, t0), None);
        }
        assert_eq!(
            call(&breaker, &rule, CallOutcome::Answered, t0),
            Some(BreakerState::Open)
        );
        let refused = breaker
            .admit(&rule, t0 + Duration::from_millis(400))
            .unwrap_err();
        assert_eq!(refused.retry_after, Duration::from_millis(600));
        assert_eq!(breaker.state(t0), BreakerState::Open);
    }

    #[test]
    fn calls_that_left_the_window_no_longer_count() {
        let rule = rule();
        let t0 = Instant::now();
        let breaker = Breaker::new(t0);
        for _ in 0..3 {
            call(&breaker, &rule, CallOutcome::Failed, t0);
        }
        // Six seconds later (window 5 s) the failures are gone: one more failure of one call.
        let later = t0 + Duration::from_secs(6);
        for _ in 0..3 {
            assert_eq!(call(&breaker, &rule, CallOutcome::Answered, later), None);
        }
        assert_eq!(call(&breaker, &rule, CallOutcome::Failed, later), None);
        assert_eq!(breaker.state(later), BreakerState::Closed);
        // Uncounted outcomes change nothing.
        for _ in 0..10 {
            assert_eq!(call(&breaker, &rule, CallOutcome::Uncounted, later), None);
        }
    }

    #[test]
    fn slow_calls_open_it_and_probes_close_it_after_the_open_time() {
        let rule = rule();
        let t0 = Instant::now();
        let breaker = Breaker::new(t0);
        let before_opening = breaker.admit(&rule, t0).unwrap();
        let mut opened = None;
        for _ in 0..4 {
            opened = opened.or(call(&breaker, &rule, CallOutcome::Slow, t0));
        }
        assert_eq!(opened, Some(BreakerState::Open));
        let after = t0 + Duration::from_millis(1_000);
        assert_eq!(breaker.state(after), BreakerState::HalfOpen);
        // Two probes go through; a third waits for them.
        let first = breaker.admit(&rule, after).unwrap();
        let second = breaker.admit(&rule, after).unwrap();
        assert!(first.probe && second.probe);
        assert!(breaker.admit(&rule, after).is_err());
        // A call let through before it opened comes back: it does not count.
        assert_eq!(
            breaker.record(&rule, before_opening, CallOutcome::Answered, after),
            None
        );
        assert_eq!(
            breaker.record(&rule, before_opening, CallOutcome::Uncounted, after),
            None
        );
        assert!(breaker.admit(&rule, after).is_err(), "no extra probe place");
        assert_eq!(
            breaker.record(&rule, first, CallOutcome::Answered, after),
            None
        );
        assert_eq!(
            breaker.record(&rule, second, CallOutcome::Answered, after),
            Some(BreakerState::Closed)
        );
        assert!(!breaker.admit(&rule, after).unwrap().probe);
    }

    #[test]
    fn a_failing_probe_opens_it_again_for_the_whole_open_time() {
        let rule = rule();
        let t0 = Instant::now();
        let breaker = Breaker::new(t0);
        for _ in 0..4 {
            call(&breaker, &rule, CallOutcome::Failed, t0);
        }
        let after = t0 + Duration::from_millis(1_500);
        let probe = breaker.admit(&rule, after).unwrap();
        // An uncounted probe gives its place to another.
        assert_eq!(
            breaker.record(&rule, probe, CallOutcome::Uncounted, after),
            None
        );
        let probe = breaker.admit(&rule, after).unwrap();
        let other = breaker.admit(&rule, after).unwrap();
        assert_eq!(
            breaker.record(&rule, probe, CallOutcome::Slow, after),
            Some(BreakerState::Open)
        );
        // The other probe's late answer does not close it.
        assert_eq!(
            breaker.record(&rule, other, CallOutcome::Answered, after),
            None
        );
        let refused = breaker
            .admit(&rule, after + Duration::from_millis(10))
            .unwrap_err();
        assert_eq!(refused.retry_after, Duration::from_millis(990));
    }

    #[test]
    fn an_error_count_opens_it_whatever_the_calls() {
        let rule = crate::Rules::from_json(r#"{"breaker":{"error_count":3}}"#)
            .unwrap()
            .breaker
            .unwrap();
        let t0 = Instant::now();
        let breaker = Breaker::new(t0);
        for _ in 0..100 {
            call(&breaker, &rule, CallOutcome::Answered, t0);
        }
        call(&breaker, &rule, CallOutcome::Failed, t0);
        call(&breaker, &rule, CallOutcome::Failed, t0);
        assert_eq!(
            call(&breaker, &rule, CallOutcome::Failed, t0),
            Some(BreakerState::Open)
        );
    }
}
