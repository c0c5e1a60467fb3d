//! The simulated clients: each creates the shared accounts (idempotently), then sends batches
//! of transfers that exercise limits, pending transfers with timeouts, posting and voiding,
//! balancing and linked chains. A client follows leader hints and, when it cannot learn a
//! batch's outcome, resubmits the same batch with the same ids, as a real client must.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ledger::{Account, AccountFlags, Batch, BatchBody, Transfer, TransferFlags};
use openraft::errors::{ClientWriteError, RaftError};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use replication::SealedBatch;
use serde::Serialize;

use crate::types::{NodeId, SimConfig};
use crate::world::Shared;

/// Ledgers and accounts the clients share.
const LEDGERS: [u32; 2] = [1, 2];
const ACCOUNTS_PER_LEDGER: u128 = 6;

/// How long a client waits for one attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// Attempts before a client gives up on learning a batch's outcome.
const ATTEMPTS_MAX: u32 = 10;

fn account_id(ledger: u32, k: u128) -> u128 {
    u128::from(ledger) * 100 + k
}

/// Per ledger: an operator (no limits), two wallets that may not overdraw, one account that may
/// not be credited beyond its debits, and two plain accounts (one keeping history).
pub fn accounts() -> Vec<Account> {
    let mut accounts = Vec::new();
    for ledger in LEDGERS {
        for k in 0..ACCOUNTS_PER_LEDGER {
            let flags = match k {
                1 | 2 => AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS,
                3 => AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS,
                5 => AccountFlags::HISTORY,
                _ => AccountFlags::empty(),
            };
            accounts.push(Account {
                id: account_id(ledger, k),
                ledger,
                code: 1,
                flags,
                ..Account::default()
            });
        }
    }
    accounts
}

/// What the clients did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct OpCounts {
    pub batches_acknowledged: u64,
    pub transfers_sent: u64,
    pub attempts: u64,
    pub redirects: u64,
    pub attempts_unknown: u64,
    /// Batches whose outcome a client never learned (the final checks still cover them).
    pub batches_given_up: u64,
}

/// One client.
pub struct Client {
    pub id: u64,
    world: Shared,
    rng: SmallRng,
    leader_guess: NodeId,
    replicas: u64,
    next_transfer: u64,
    pending: Vec<u128>,
}

/// How a submission ended.
pub enum Submitted {
    Acknowledged { index: u64 },
    GaveUp,
}

impl Client {
    pub fn new(id: u64, world: &Shared, replicas: u64) -> Client {
        let seed = world.lock().rng.random();
        Client {
            id,
            world: world.clone(),
            rng: SmallRng::seed_from_u64(seed),
            leader_guess: 1,
            replicas,
            next_transfer: 0,
            pending: Vec::new(),
        }
    }

    fn next_replica(&mut self) {
        self.leader_guess = self.leader_guess % self.replicas + 1;
    }

    /// Sends `body` until some replica answers it, following leader hints, resubmitting the same
    /// batch (same ids) when an attempt's outcome is unknown.
    pub async fn submit(&mut self, body: BatchBody) -> Submitted {
        let ids: Vec<u128> = match &body {
            BatchBody::CreateTransfers(transfers) => transfers.iter().map(|t| t.id).collect(),
            BatchBody::CreateAccounts(_) | BatchBody::SagaSteps(_) => Vec::new(),
        };
        for _ in 0..ATTEMPTS_MAX {
            let target = self.leader_guess;
            let (raft, timestamp) = {
                let mut world = self.world.lock();
                world.ops.attempts += 1;
                (world.running(target), world.clock_ns(target))
            };
            let Some(raft) = raft else {
                self.next_replica();
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            // The replica seals the batch with its own clock, as a leader does.
            let sealed = SealedBatch(
                Batch {
                    timestamp,
                    body: body.clone(),
                }
                .encode()
                .into(),
            );
            let answer = tokio::time::timeout(ATTEMPT_TIMEOUT, raft.client_write(sealed)).await;
            match answer {
                Ok(Ok(response)) => {
                    let mut world = self.world.lock();
                    world.trace(format_args!(
                        "client {} acknowledged at {}",
                        self.id, response.log_id
                    ));
                    world
                        .oracle
                        .check_reply(self.id, &response.log_id, &response.data, &ids);
                    world.ops.batches_acknowledged += 1;
                    return Submitted::Acknowledged {
                        index: response.log_id.index(),
                    };
                }
                Ok(Err(error)) => self.failed(&error).await,
                Err(_) => {
                    self.world.lock().ops.attempts_unknown += 1;
                    self.next_replica();
                }
            }
        }
        let mut world = self.world.lock();
        world.trace(format_args!("client {} gave up", self.id));
        world.ops.batches_given_up += 1;
        Submitted::GaveUp
    }

    async fn failed(&mut self, error: &RaftError<SimConfig, ClientWriteError<SimConfig>>) {
        if let Some(forward) = error.forward_to_leader() {
            self.world.lock().ops.redirects += 1;
            match forward.leader_id {
                Some(leader) if leader != self.leader_guess => self.leader_guess = leader,
                _ => {
                    // No leader known yet: wait for an election.
                    self.next_replica();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        } else {
            // Discarded by a leader change, or the replica stopped: unknown, resubmit.
            self.world.lock().ops.attempts_unknown += 1;
            self.next_replica();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn transfer_id(&mut self) -> u128 {
        self.next_transfer += 1;
        (u128::from(self.id) << 64) | u128::from(self.next_transfer)
    }

    /// A random batch of 1 to 6 transfers.
    pub fn transfers(&mut self) -> BatchBody {
        let count = self.rng.random_range(1..=6);
        let mut transfers = Vec::with_capacity(count);
        for _ in 0..count {
            let ledger = LEDGERS[self.rng.random_range(0..LEDGERS.len())];
            let account =
                |rng: &mut SmallRng| account_id(ledger, rng.random_range(0..ACCOUNTS_PER_LEDGER));
            let mut transfer = Transfer {
                id: self.transfer_id(),
                debit_account_id: account(&mut self.rng),
                credit_account_id: account(&mut self.rng),
                amount: self.rng.random_range(1..500),
                ledger,
                code: 1,
                ..Transfer::default()
            };
            match self.rng.random_range(0..100) {
                // Funding from the operator.
                0..20 => {
                    transfer.debit_account_id = account_id(ledger, 0);
                    transfer.amount = self.rng.random_range(100..1_000);
                }
                // Reserve funds, sometimes with a timeout.
                20..35 => {
                    transfer.flags = TransferFlags::PENDING;
                    transfer.timeout = self.rng.random_range(0..4);
                    self.pending.push(transfer.id);
                }
                // Post or void an earlier reservation (perhaps expired or already resolved).
                35..45 if !self.pending.is_empty() => {
                    let at = self.rng.random_range(0..self.pending.len());
                    transfer.pending_id = self.pending.swap_remove(at);
                    transfer.debit_account_id = 0;
                    transfer.credit_account_id = 0;
                    transfer.ledger = 0;
                    transfer.code = 0;
                    if self.rng.random_bool(0.5) {
                        transfer.flags = TransferFlags::POST_PENDING_TRANSFER;
                        transfer.amount = if self.rng.random_bool(0.5) {
                            u128::MAX
                        } else {
                            self.rng.random_range(1..300)
                        };
                    } else {
                        transfer.flags = TransferFlags::VOID_PENDING_TRANSFER;
                        transfer.amount = 0;
                    }
                }
                // Move whatever is left, up to the amount.
                45..50 => transfer.flags = TransferFlags::BALANCING_DEBIT,
                // Across ledgers: must fail.
                50..53 => {
                    transfer.credit_account_id = account_id(LEDGERS[1 - (ledger as usize - 1)], 4);
                }
                _ => {}
            }
            transfers.push(transfer);
        }
        if transfers.len() >= 2 && self.rng.random_bool(0.15) {
            transfers[0].flags |= TransferFlags::LINKED;
        }
        self.world.lock().ops.transfers_sent += transfers.len() as u64;
        BatchBody::CreateTransfers(transfers)
    }

    /// Runs until `stop`: the accounts first, then transfers with pauses between batches.
    pub async fn run(mut self, stop: Arc<AtomicBool>) {
        while !stop.load(Ordering::Relaxed) {
            if let Submitted::Acknowledged { .. } =
                self.submit(BatchBody::CreateAccounts(accounts())).await
            {
                break;
            }
        }
        while !stop.load(Ordering::Relaxed) {
            let body = self.transfers();
            self.submit(body).await;
            let pause = self.world.lock().draw_micros(0, 50_000);
            tokio::time::sleep(pause).await;
        }
    }
}
