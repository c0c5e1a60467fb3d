//! Circuit breakers on the gateway's calls to its groups (`flow::Breaker`, one per group,
//! under the `breaker` rule of the flow rules in use): a group that stops answering, or
//! answers too slowly, is not called for a while, so callers are answered at once (UNAVAILABLE
//! / 503, retryable, naming the group and when to retry) instead of piling up behind it, and
//! the other groups' traffic keeps its latency. After the open time a few probes go through;
//! answered in time, the breaker closes.
//!
//! A call counts as failed when the group did not answer (the gateway's `Unavailable`), as
//! slow the moment it has waited `slow_call_ms` (not when it ends: a stalled group opens the
//! breaker while its calls still hang), and not at all when it was refused before reaching the
//! group (busy queues, capacity, invalid input). Client writes and reads are guarded; saga
//! steps and the resolver are not (they are how sagas settle once the group answers again).
//! Owns only that; must not retry.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster::GroupId;
use flow::{Admission, Breaker, BreakerState, CallOutcome, Gate};
use server::PipelineError;
use telemetry::Metrics;

/// The breakers of one gateway: none unless the flow rules in use name a `breaker`.
pub(crate) struct Breakers {
    gate: Option<Arc<Gate>>,
    by_group: Mutex<HashMap<GroupId, Arc<Breaker>>>,
    metrics: Arc<Metrics>,
}

impl Breakers {
    pub(crate) fn new(gate: Option<Arc<Gate>>, metrics: Arc<Metrics>) -> Breakers {
        Breakers {
            gate,
            by_group: Mutex::default(),
            metrics,
        }
    }

    fn of(&self, group: GroupId) -> Arc<Breaker> {
        let mut by_group = self.by_group.lock().expect("never poisoned");
        Arc::clone(
            by_group
                .entry(group)
                .or_insert_with(|| Arc::new(Breaker::new(Instant::now()))),
        )
    }

    fn changed(&self, group: GroupId, state: Option<BreakerState>) {
        let Some(state) = state else {
            return;
        };
        let name = group.to_string();
        self.metrics.breaker_state(&name, state.gauge());
        match state {
            BreakerState::Open => tracing::warn!(
                group = %name,
                "circuit breaker opened: the group's calls are refused at once for a while"
            ),
            BreakerState::Closed => {
                tracing::info!(group = %name, "circuit breaker closed: the group answers again")
            }
            BreakerState::HalfOpen => {}
        }
    }

    /// The refusal a call to `group` would get now because its breaker is open, without
    /// letting one through: checked for every part of a write before any part is sent, so
    /// that an open breaker on one group refuses the whole write instead of leaving it half
    /// sent.
    pub(crate) fn refusal(&self, group: GroupId) -> Option<PipelineError> {
        self.gate.as_ref().and_then(|gate| gate.breaker())?;
        let breaker = self
            .by_group
            .lock()
            .expect("never poisoned")
            .get(&group)
            .cloned()?;
        let open_for = breaker.open_for(Instant::now())?;
        self.metrics.breaker_refused(&group.to_string());
        Some(open_refusal(group, open_for))
    }

    /// Makes `call` to `group` through its breaker (straight through when no rule is set).
    pub(crate) async fn guard<T>(
        &self,
        group: GroupId,
        call: impl Future<Output = Result<T, PipelineError>>,
    ) -> Result<T, PipelineError> {
        let Some(rule) = self.gate.as_ref().and_then(|gate| gate.breaker()) else {
            return call.await;
        };
        let breaker = self.of(group);
        let admission = match breaker.admit(&rule, Instant::now()) {
            Ok(admission) => admission,
            Err(open) => {
                self.metrics.breaker_refused(&group.to_string());
                return Err(open_refusal(group, open.retry_after));
            }
        };
        if admission.probe {
            self.metrics
                .breaker_state(&group.to_string(), BreakerState::HalfOpen.gauge());
        }
        // Counted once: when it ends in time, or when it has waited `slow_call_ms`.
        let mut recorded = Recorded {
            breakers: self,
            breaker: &breaker,
            rule,
            admission,
            group,
            done: false,
        };
        let slow = Duration::from_millis(u64::from(rule.slow_call_ms));
        let mut call = std::pin::pin!(call);
        let result = tokio::select! {
            result = &mut call => result,
            () = tokio::time::sleep(slow) => {
                recorded.record(CallOutcome::Slow);
                call.await
            }
        };
        recorded.record(match &result {
            Ok(_) => CallOutcome::Answered,
            Err(PipelineError::Unavailable(_)) => CallOutcome::Failed,
            Err(_) => CallOutcome::Uncounted,
        });
        result
    }
}

fn open_refusal(group: GroupId, retry_after: Duration) -> PipelineError {
    PipelineError::Unavailable(format!(
        "group {group} is not called for now: its circuit breaker is open (it failed or was slow); retry after {} ms",
        retry_after.as_millis().max(1)
    ))
}

/// A call's outcome, recorded once; a call dropped before it ended (its caller went away)
/// records nothing but gives back its probe place.
struct Recorded<'a> {
    breakers: &'a Breakers,
    breaker: &'a Breaker,
    rule: flow::BreakerRule,
    admission: Admission,
    group: GroupId,
    done: bool,
}

impl Recorded<'_> {
    fn record(&mut self, outcome: CallOutcome) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let changed = self
            .breaker
            .record(&self.rule, self.admission, outcome, Instant::now());
        self.breakers.changed(self.group, changed);
    }
}

impl Drop for Recorded<'_> {
    fn drop(&mut self) {
        self.record(CallOutcome::Uncounted);
    }
}
