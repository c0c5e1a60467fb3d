//! One pool per request kind: at most `max_in_flight` requests served at once, at most
//! `max_queue` waiting (each at most `max_wait_ms`), and no caller holding more than its share,
//! waiting or served. A request past its caller's share or a full queue is refused at once;
//! one that waited its longest is refused then. Under adaptive protection (`adaptive`), a
//! request the pool's measured capacity cannot take while its calls are slow is refused before
//! it queues, and every served request's time is counted for it.
//!
//! Owns the pool's permits and its per-caller counts. It must not know what a request is.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::adaptive::{Adaptive, Measures, Treatment};
use crate::rules::PoolRule;

/// Why a pool refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Full {
    /// The caller already has its share of the pool.
    CallerShare,
    /// The queue is full.
    Queue,
    /// It waited `max_wait_ms` without a place.
    Waited,
    /// Its calls are slow and it holds what it can serve (adaptive protection); try again
    /// after this.
    Overloaded(Duration),
}

#[derive(Debug)]
pub(crate) struct Pool {
    rule: PoolRule,
    permits: Arc<Semaphore>,
    waiting: AtomicU32,
    /// Requests per caller in the pool (waiting or served); a caller with none has no entry,
    /// so the map holds at most `max_in_flight + max_queue` callers.
    callers: Mutex<HashMap<Arc<str>, u32>>,
    adaptive: Option<Adaptive>,
}

/// A place in a pool, given back when dropped.
#[derive(Debug)]
pub(crate) struct PoolPlace {
    pool: Arc<Pool>,
    /// The caller whose share it holds (`None` when callers have no share of their own).
    caller: Option<Arc<str>>,
    /// When adaptive protection counted it as served.
    served_from: Option<u64>,
    _permit: OwnedSemaphorePermit,
}

/// A caller's share taken but no permit yet: given back if the request never gets one.
struct Share<'a> {
    pool: &'a Pool,
    caller: Option<Arc<str>>,
    kept: bool,
}

impl Drop for Share<'_> {
    fn drop(&mut self) {
        if !self.kept
            && let Some(caller) = &self.caller
        {
            self.pool.release_share(caller);
        }
    }
}

impl Pool {
    /// A pool under `rule`; with adaptive protection, over the measures of `before` (the pool
    /// it replaces) if it had them, so that a rule changed mid-overload neither forgets what
    /// the calls took nor the calls still served in the old pool.
    pub(crate) fn new(rule: PoolRule, before: Option<&Pool>) -> Arc<Pool> {
        let measures = || {
            before
                .and_then(|pool| pool.adaptive.as_ref())
                .map(|adaptive| Arc::clone(adaptive.measures()))
                .unwrap_or_else(|| Arc::new(Measures::new(Instant::now())))
        };
        Arc::new(Pool {
            rule,
            permits: Arc::new(Semaphore::new(rule.max_in_flight as usize)),
            waiting: AtomicU32::new(0),
            callers: Mutex::new(HashMap::new()),
            adaptive: rule
                .adaptive
                .map(|adaptive| Adaptive::new(adaptive, measures())),
        })
    }

    pub(crate) fn rule(&self) -> PoolRule {
        self.rule
    }

    /// Requests served now.
    pub(crate) fn in_flight(&self) -> u32 {
        self.rule.max_in_flight - self.permits.available_permits() as u32
    }

    fn take_share<'a>(&'a self, caller: &Arc<str>) -> Result<Share<'a>, Full> {
        if self.rule.per_caller_max_in_flight == 0 {
            // No shares: nothing to count (and no lock on the way in).
            return Ok(Share {
                pool: self,
                caller: None,
                kept: false,
            });
        }
        let mut callers = self.callers.lock().expect("never poisoned");
        let count = callers.entry(Arc::clone(caller)).or_insert(0);
        if *count >= self.rule.caller_share() {
            return Err(Full::CallerShare);
        }
        *count += 1;
        Ok(Share {
            pool: self,
            caller: Some(Arc::clone(caller)),
            kept: false,
        })
    }

    fn release_share(&self, caller: &str) {
        let mut callers = self.callers.lock().expect("never poisoned");
        if let Some(count) = callers.get_mut(caller) {
            *count -= 1;
            if *count == 0 {
                callers.remove(caller);
            }
        }
    }

    /// A place for `caller`'s request, waiting for one if the pool is full and the rule allows;
    /// `treatment` says how adaptive protection (if the rule has it) meets the request.
    pub(crate) async fn enter(
        self: &Arc<Self>,
        caller: &Arc<str>,
        treatment: Treatment,
    ) -> Result<PoolPlace, Full> {
        let mut share = self.take_share(caller)?;
        let adaptive = self
            .adaptive
            .as_ref()
            .filter(|_| treatment != Treatment::Untimed);
        // Read once for a call served at once (the clock is a good part of what it costs).
        let mut now = None;
        if let Some(adaptive) = adaptive {
            let checked = *now.insert(Instant::now());
            if treatment == Treatment::Shed {
                // Served counts the calls of a pool this one replaced, still running.
                let in_pool =
                    adaptive.measures().serving() + u64::from(self.waiting.load(Ordering::Acquire));
                adaptive
                    .check(in_pool, self.rule.max_in_flight, checked)
                    .map_err(Full::Overloaded)?;
            }
        }
        let permit = match Arc::clone(&self.permits).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                now = None;
                let queued = self.waiting.fetch_add(1, Ordering::AcqRel);
                let _leave = Waiting(&self.waiting);
                if queued >= self.rule.max_queue || self.rule.max_wait_ms == 0 {
                    return Err(Full::Queue);
                }
                let wait = Duration::from_millis(u64::from(self.rule.max_wait_ms));
                match tokio::time::timeout(wait, Arc::clone(&self.permits).acquire_owned()).await {
                    Ok(Ok(permit)) => permit,
                    // The semaphore is never closed; a timeout is the only way out.
                    Ok(Err(_)) | Err(_) => return Err(Full::Waited),
                }
            }
        };
        share.kept = true;
        Ok(PoolPlace {
            pool: Arc::clone(self),
            caller: share.caller.clone(),
            served_from: adaptive.map(|adaptive| {
                adaptive
                    .measures()
                    .started(now.unwrap_or_else(Instant::now))
            }),
            _permit: permit,
        })
    }
}

/// Counts a request out of the queue however it leaves it.
struct Waiting<'a>(&'a AtomicU32);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for PoolPlace {
    fn drop(&mut self) {
        if let (Some(adaptive), Some(from)) = (&self.pool.adaptive, self.served_from) {
            adaptive.measures().finished(from, Instant::now());
        }
        if let Some(caller) = &self.caller {
            self.pool.release_share(caller);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(max_in_flight: u32, share: u32, max_queue: u32, max_wait_ms: u32) -> Arc<Pool> {
        Pool::new(
            PoolRule {
                max_in_flight,
                per_caller_max_in_flight: share,
                max_queue,
                max_wait_ms,
                adaptive: None,
            },
            None,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_past_its_share_is_refused_while_others_still_get_in() {
        let pool = pool(4, 2, 0, 0);
        let (flooder, calm): (Arc<str>, Arc<str>) = ("flooder".into(), "calm".into());
        let first = pool.enter(&flooder, Treatment::Shed).await.unwrap();
        let _second = pool.enter(&flooder, Treatment::Shed).await.unwrap();
        assert_eq!(
            pool.enter(&flooder, Treatment::Shed).await.unwrap_err(),
            Full::CallerShare
        );
        let _calm = pool.enter(&calm, Treatment::Shed).await.unwrap();
        assert_eq!(pool.in_flight(), 3);
        drop(first);
        let _again = pool.enter(&flooder, Treatment::Shed).await.unwrap();
        assert_eq!(pool.callers.lock().unwrap()[&flooder], 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_pool_queues_up_to_its_bound_and_its_wait() {
        let pool = pool(1, 0, 1, 100);
        let caller: Arc<str> = "c".into();
        let served = pool.enter(&caller, Treatment::Shed).await.unwrap();
        // One may wait; it gets the place when the first leaves.
        let waiter = {
            let (pool, caller) = (Arc::clone(&pool), Arc::clone(&caller));
            tokio::spawn(async move { pool.enter(&caller, Treatment::Shed).await.map(|_| ()) })
        };
        for _ in 0..100 {
            if pool.waiting.load(Ordering::Acquire) == 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(pool.waiting.load(Ordering::Acquire), 1);
        // A second would be past the queue's bound.
        let other: Arc<str> = "other".into();
        assert_eq!(
            pool.enter(&other, Treatment::Shed).await.unwrap_err(),
            Full::Queue
        );
        drop(served);
        waiter.await.unwrap().unwrap();
        // Now one holds the place for good: a waiter gives up after 100 ms.
        let _held = pool.enter(&caller, Treatment::Shed).await.unwrap();
        let started = tokio::time::Instant::now();
        assert_eq!(
            pool.enter(&caller, Treatment::Shed).await.unwrap_err(),
            Full::Waited
        );
        assert_eq!(started.elapsed(), Duration::from_millis(100));
        assert_eq!(pool.waiting.load(Ordering::Acquire), 0);
        // Without shares, no caller is counted.
        assert!(pool.callers.lock().unwrap().is_empty());
    }
}
