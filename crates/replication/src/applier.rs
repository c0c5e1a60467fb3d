//! Where sealed batches are applied to the ledger: two OS threads beside the async runtime,
//! sharing the one ledger state.
//!
//! A batch a client is waiting on (the leader's own writes) is applied on the *urgent* thread at
//! normal priority. Every other batch (a follower's, a new leader's catch-up) goes to the
//! *background* thread, which runs at a lower CPU priority (nice +10): when replicas share cores,
//! the work that answers clients comes first and a follower applies in the gaps. The lower
//! priority only weighs the CPU share under contention; it never starves the thread, and on a
//! machine of its own a follower applies at full speed.
//!
//! Order is openraft's: the state machine hands over one batch and waits for its outcome
//! before the next, so the two threads never apply at the same time.
//!
//! A job's `applied` runs while the thread still holds the state's write lock: the state
//! machine moves its applied position there, so no reader (a snapshot build above all) ever
//! sees the batch's changes without the position that includes them.

use std::io;
use std::sync::mpsc;

use bytes::Bytes;
use ledger::Batch;
use tokio::sync::oneshot;

use crate::event_log::EventLog;
use crate::state_machine::SharedState;
use crate::types::BatchOutcome;

/// How much lower the background thread's priority is, in nice steps (nice 0 is normal, 19 the
/// lowest).
const BACKGROUND_NICE: i32 = 10;

/// What runs once a batch is applied, under the state's write lock (see the module header).
pub(crate) type Applied = Box<dyn FnOnce() + Send>;

struct Job {
    /// The batch's log index (written into its change events' batch marker).
    index: u64,
    batch: Bytes,
    applied: Applied,
    done: oneshot::Sender<Result<BatchOutcome, String>>,
}

/// The two apply threads; they stop when this is dropped.
pub(crate) struct Applier {
    urgent: mpsc::SyncSender<Job>,
    background: mpsc::SyncSender<Job>,
}

impl Applier {
    /// The apply threads over `state`, handing each batch's change events to `events` when
    /// there is an event log.
    pub fn spawn(state: SharedState, events: Option<EventLog>) -> io::Result<Applier> {
        Ok(Applier {
            urgent: spawn_thread("ledger-apply", state.clone(), events.clone(), None)?,
            background: spawn_thread("ledger-apply-bg", state, events, Some(BACKGROUND_NICE))?,
        })
    }

    /// Applies one sealed batch (log entry `index`), then runs `applied` before letting go of
    /// the state; `urgent` when a client waits for its outcome.
    pub async fn apply(
        &self,
        index: u64,
        batch: Bytes,
        urgent: bool,
        applied: Applied,
    ) -> io::Result<BatchOutcome> {
        let (done, outcome) = oneshot::channel();
        let thread = if urgent {
            &self.urgent
        } else {
            &self.background
        };
        thread
            .send(Job {
                index,
                batch,
                applied,
                done,
            })
            .map_err(|_| io::Error::other("the ledger apply thread stopped"))?;
        outcome
            .await
            .map_err(|_| io::Error::other("the ledger apply thread stopped"))?
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

fn spawn_thread(
    name: &str,
    state: SharedState,
    events: Option<EventLog>,
    nice: Option<i32>,
) -> io::Result<mpsc::SyncSender<Job>> {
    // openraft waits for each batch's outcome before handing over the next, so the queue never
    // holds more than one job: `send` never waits.
    let (jobs, queue) = mpsc::sync_channel::<Job>(limits::LEDGER_APPLY_JOBS_QUEUED_MAX);
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            if let Some(nice) = nice {
                lower_own_priority(nice);
            }
            for Job {
                index,
                batch,
                applied,
                done,
            } in queue
            {
                let outcome = Batch::decode(&batch)
                    .map(|batch| {
                        let buffer = events.as_ref().and_then(EventLog::recycled_buffer);
                        let (results, changes) = {
                            let mut state = state.write().expect("never poisoned");
                            if let Some(buffer) = buffer {
                                state.recycle_events(buffer);
                            }
                            let results = state.apply(&batch);
                            let changes = state.take_events(index);
                            applied();
                            (results, changes)
                        };
                        if let Some(events) = &events {
                            events.append(changes);
                        }
                        BatchOutcome::from_results(&results)
                    })
                    .map_err(|e| e.to_string());
                // The caller may have gone (the Raft core stopped); the batch is applied anyway,
                // exactly as if it had waited.
                let _ = done.send(outcome);
            }
        })?;
    Ok(jobs)
}

/// Lowers the calling thread's CPU priority by `nice` steps (Linux: `setpriority` on a thread id
/// acts on that thread only). Only a preference: where refused, the priority stays.
fn lower_own_priority(nice: i32) {
    #[cfg(target_os = "linux")]
    if let Err(error) = rustix::process::getpriority_process(None)
        .and_then(|current| rustix::process::setpriority_process(None, (current + nice).min(19)))
    {
        tracing::debug!(%error, "could not lower the background apply thread's priority");
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, RwLock};

    use ledger::{Account, Batch, BatchBody, StateMachine};

    use super::*;

    fn accounts_batch(ids: std::ops::Range<u128>, timestamp: u64) -> Bytes {
        let accounts = ids
            .map(|id| Account {
                id,
                ledger: 1,
                code: 1,
                ..Account::default()
            })
            .collect();
        Bytes::from(
            Batch {
                timestamp,
                body: BatchBody::CreateAccounts(accounts),
            }
            .encode(),
        )
    }

    #[tokio::test]
    async fn both_threads_apply_to_the_one_state_in_turn_as_a_direct_apply_would() {
        let state = Arc::new(RwLock::new(StateMachine::default()));
        let applier = Applier::spawn(Arc::clone(&state), None).unwrap();
        let mut reference = StateMachine::default();
        let batches = [
            (accounts_batch(1..4, 100), true),
            (accounts_batch(3..6, 100), false),
            (accounts_batch(6..7, 50), true),
        ];
        // What each batch's `applied` saw: the state still write-locked (by its own thread).
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        for (batch, urgent) in batches {
            let expected =
                BatchOutcome::from_results(&reference.apply(&Batch::decode(&batch).unwrap()));
            let (state, seen) = (Arc::clone(&state), Arc::clone(&seen));
            let applied = Box::new(move || {
                let locked = matches!(state.try_read(), Err(std::sync::TryLockError::WouldBlock));
                seen.lock().unwrap().push(locked);
            });
            assert_eq!(
                applier.apply(1, batch, urgent, applied).await.unwrap(),
                expected
            );
        }
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 3, "every batch's `applied` ran");
        assert!(
            seen.iter().all(|locked| *locked),
            "`applied` ran under the write lock"
        );
        assert_eq!(state.read().unwrap().digest(), reference.digest());
        assert_eq!(state.read().unwrap().accounts_count(), 6);

        // A batch that does not decode is an error, and changes nothing.
        let error = applier
            .apply(
                1,
                Bytes::from_static(b"not a batch"),
                false,
                Box::new(|| {}),
            )
            .await
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert_eq!(state.read().unwrap().digest(), reference.digest());
    }

    /// The nice value of this process's thread named `name` (Linux `/proc`).
    #[cfg(target_os = "linux")]
    fn nice_of_thread(name: &str) -> Option<i32> {
        std::fs::read_dir("/proc/self/task").ok()?.find_map(|task| {
            let task = task.ok()?.path();
            let comm = std::fs::read_to_string(task.join("comm")).ok()?;
            (comm.trim() == name).then_some(())?;
            let stat = std::fs::read_to_string(task.join("stat")).ok()?;
            // Fields after the parenthesised name: state is field 3, nice field 19.
            let rest = &stat[stat.rfind(')')? + 2..];
            rest.split(' ').nth(16)?.parse().ok()
        })
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_background_thread_runs_at_a_lower_priority() {
        let state = Arc::new(RwLock::new(StateMachine::default()));
        let applier = Applier::spawn(state, None).unwrap();
        // Both threads have started (and set their priority) once each applied a batch.
        applier
            .apply(1, accounts_batch(1..2, 1), true, Box::new(|| {}))
            .await
            .unwrap();
        applier
            .apply(2, accounts_batch(2..3, 2), false, Box::new(|| {}))
            .await
            .unwrap();
        let base = rustix::process::getpriority_process(None).unwrap();
        assert_eq!(nice_of_thread("ledger-apply"), Some(base));
        assert_eq!(
            nice_of_thread("ledger-apply-bg"),
            Some((base + BACKGROUND_NICE).min(19))
        );
    }
}
