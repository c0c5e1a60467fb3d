//! The state digest for operators and checkers: computed one at a time, remembered per applied
//! index, with a bounded number of callers waiting, and (from async code) off the runtime.
//!
//! A digest is a pass over the whole state under its read lock, which pauses apply (about a
//! second at 10M transfers). Without this gate, a burst of status calls would each make that
//! pass, in parallel, on whatever thread called. This module only decides when to compute; it
//! must not compute anything itself (the caller's closure does).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use ledger::StateDigest;

/// Too many callers already wait for a digest: try again later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "{max} state digest requests are already waiting or running; try again later (a digest is a pass over the whole state)"
)]
pub struct DigestBusy {
    pub max: usize,
}

/// The gate; clones share it.
#[derive(Clone)]
pub struct DigestGate {
    /// The last digest computed and the applied index it is of. Its lock is held while a
    /// digest is computed, so digests are computed one at a time.
    last: Arc<Mutex<Option<(u64, StateDigest)>>>,
    /// Callers waiting for or computing a digest from async code.
    callers: Arc<AtomicUsize>,
    callers_max: usize,
}

impl DigestGate {
    pub fn new(callers_max: usize) -> DigestGate {
        assert!(callers_max > 0);
        DigestGate {
            last: Arc::default(),
            callers: Arc::default(),
            callers_max,
        }
    }

    /// The digest at the applied index (`applied_index()` now): the remembered one if nothing
    /// was applied since, else `compute()` (which returns the index and digest it saw, read
    /// together). Blocks while another digest is computed.
    pub fn get(
        &self,
        applied_index: impl Fn() -> u64,
        compute: impl FnOnce() -> (u64, StateDigest),
    ) -> (u64, StateDigest) {
        let mut last = self.last.lock().expect("never poisoned");
        if let Some((at, digest)) = *last
            && at == applied_index()
        {
            return (at, digest);
        }
        let fresh = compute();
        *last = Some(fresh);
        fresh
    }

    /// [`DigestGate::get`] on a blocking thread, for async callers; refused when `callers_max`
    /// callers already wait.
    pub async fn get_off_runtime(
        &self,
        applied_index: impl Fn() -> u64 + Send + 'static,
        compute: impl FnOnce() -> (u64, StateDigest) + Send + 'static,
    ) -> Result<(u64, StateDigest), DigestBusy> {
        let busy = DigestBusy {
            max: self.callers_max,
        };
        if self.callers.fetch_add(1, Ordering::AcqRel) >= self.callers_max {
            self.callers.fetch_sub(1, Ordering::AcqRel);
            return Err(busy);
        }
        let gate = self.clone();
        let answer = tokio::task::spawn_blocking(move || gate.get(applied_index, compute)).await;
        self.callers.fetch_sub(1, Ordering::AcqRel);
        match answer {
            Ok(found) => Ok(found),
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            // The runtime is shutting down.
            Err(_) => Err(busy),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;
    use std::sync::mpsc;

    fn digest(byte: u8) -> StateDigest {
        StateDigest([byte; 32])
    }

    #[test]
    fn a_digest_is_computed_once_per_applied_index() {
        let gate = DigestGate::new(4);
        let computed = AtomicU64::new(0);
        let index = AtomicU64::new(7);
        let compute = || {
            computed.fetch_add(1, Ordering::SeqCst);
            let at = index.load(Ordering::SeqCst);
            (at, digest(at as u8))
        };
        let applied = || index.load(Ordering::SeqCst);
        assert_eq!(gate.get(applied, compute), (7, digest(7)));
        assert_eq!(gate.get(applied, compute), (7, digest(7)));
        assert_eq!(computed.load(Ordering::SeqCst), 1);
        index.store(8, Ordering::SeqCst);
        assert_eq!(gate.get(applied, compute), (8, digest(8)));
        assert_eq!(computed.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn callers_beyond_the_limit_are_refused_while_one_computes_and_the_rest_share_its_result()
    {
        let gate = DigestGate::new(2);
        let (started_tx, started) = mpsc::channel();
        let (release, release_rx) = mpsc::channel::<()>();
        let computing = {
            let gate = gate.clone();
            tokio::spawn(async move {
                gate.get_off_runtime(
                    || 3,
                    move || {
                        started_tx.send(()).unwrap();
                        release_rx.recv().unwrap();
                        (3, digest(3))
                    },
                )
                .await
            })
        };
        started
            .recv_timeout(std::time::Duration::from_secs(10))
            .unwrap();
        // One more may wait its turn; the one after it is refused.
        let waiting = {
            let gate = gate.clone();
            tokio::spawn(async move {
                gate.get_off_runtime(|| 3, || panic!("the index did not move: no second pass"))
                    .await
            })
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while gate.callers.load(Ordering::SeqCst) < 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "the waiter never arrived"
            );
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        assert_eq!(
            gate.get_off_runtime(|| 3, || (3, digest(3))).await,
            Err(DigestBusy { max: 2 })
        );
        release.send(()).unwrap();
        assert_eq!(computing.await.unwrap(), Ok((3, digest(3))));
        assert_eq!(waiting.await.unwrap(), Ok((3, digest(3))));
        assert_eq!(gate.callers.load(Ordering::SeqCst), 0);
    }
}
