//! The bank: in each group, one operator account funds seven customer accounts that may never
//! overdraw (`debits_must_not_exceed_credits`); clients move random amounts between two
//! customers (many exceed the balance and must fail) and read every account at once.
//!
//! One group (no gateway) keeps the original ids: accounts 1..=8, funding transfers 1..=7 and
//! transfer ids `client << 64 | sequence`. Over several groups the ids are minted into slots
//! the map gives each group; a share of the transfers (`cross_group_ratio`) goes from a
//! customer of one group to a customer of another, its id minted in any group's slot (its home:
//! the debit's group, the credit's or a third), and runs as a saga through the gateway; the
//! others stay in one group, their id in the debit account's slot. Over groups every account
//! keeps its balance history and every transfer carries its id as `user_data_128`, so the final
//! read can find when a cross-group transfer was posted on each of its accounts.
//!
//! Owns the bank's ids and the clients' operations; must not judge them (the checker does).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::bail;
use client::{Client, RetryPolicy};
use cluster::placement::{Slot, id_in_slot, slot_of};
use ledger::{
    Account, AccountFlags, CreateAccountResult, CreateTransferResult, Transfer, TransferOutcome,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::history::{Action, History, Outcome};

use testkit::bank_checker::{BANK, CUSTOMERS, FUNDING};

const LEDGER: u32 = 1;
/// Accounts per group: the operator and its customers.
pub const GROUP_ACCOUNTS_COUNT: usize = CUSTOMERS as usize + 1;
/// Where a minted id's 68 random bits put the client (below: the sequence number), so that two
/// transfers minted in one millisecond still differ.
const MINT_CLIENT_SHIFT: u32 = 48;
/// Random bits that mark a minted account id and a funding transfer id (clients are < 2^7).
const MINT_ACCOUNT_TAG: u128 = 1 << 66;
const MINT_FUNDING_TAG: u128 = 1 << 65;

/// The bank's accounts, group by group.
pub struct Bank {
    /// `groups[g]`: group `g`'s operator, then its `CUSTOMERS` customers.
    pub groups: Vec<[u128; GROUP_ACCOUNTS_COUNT]>,
    /// Ids minted in slots (several groups) or the original numbering (one group).
    minted: bool,
    /// The share of transfers between customers of two groups (0 with one group).
    cross_group_ratio: f64,
}

fn millis_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Bank {
    /// One group, the original ids (accounts `BANK..=CUSTOMERS + 1`).
    pub fn single() -> Bank {
        let mut ids = [0u128; GROUP_ACCOUNTS_COUNT];
        for (k, id) in ids.iter_mut().enumerate() {
            *id = BANK + k as u128;
        }
        Bank {
            groups: vec![ids],
            minted: false,
            cross_group_ratio: 0.0,
        }
    }

    /// One bank per group: `slots[g]` are the slots the map gives group `g`; each account gets
    /// an id in one of them, picked with `rng`. `cross_group_ratio` of the transfers go across
    /// groups (needs two groups or more to be above 0).
    pub fn over_groups(
        slots: &[Vec<Slot>],
        rng: &mut SmallRng,
        cross_group_ratio: f64,
    ) -> anyhow::Result<Bank> {
        assert!(!slots.is_empty() && slots.iter().all(|s| !s.is_empty()));
        assert!((0.0..=1.0).contains(&cross_group_ratio));
        assert!(slots.len() > 1 || cross_group_ratio == 0.0);
        let millis = millis_now();
        let mut groups = Vec::with_capacity(slots.len());
        for (g, group_slots) in slots.iter().enumerate() {
            let mut ids = [0u128; GROUP_ACCOUNTS_COUNT];
            for (k, id) in ids.iter_mut().enumerate() {
                let slot = group_slots[rng.random_range(0..group_slots.len())];
                let random = MINT_ACCOUNT_TAG | (g as u128) << 8 | k as u128;
                *id = id_in_slot(slot, millis, random)?;
            }
            groups.push(ids);
        }
        Ok(Bank {
            groups,
            minted: true,
            cross_group_ratio,
        })
    }

    /// The group holding account `id`, if it is one of the bank's.
    pub fn group_of(&self, id: u128) -> Option<usize> {
        self.groups.iter().position(|ids| ids.contains(&id))
    }

    /// Whether a transfer between these accounts crosses groups (runs as a saga).
    pub fn crosses_groups(&self, debit: u128, credit: u128) -> bool {
        self.group_of(debit) != self.group_of(credit)
    }

    /// Every account, group by group.
    pub fn account_ids(&self) -> Vec<u128> {
        self.groups.iter().flatten().copied().collect()
    }

    fn accounts(&self) -> Vec<Account> {
        self.groups
            .iter()
            .flat_map(|ids| {
                ids.iter().enumerate().map(|(k, &id)| Account {
                    id,
                    ledger: LEDGER,
                    code: 1,
                    flags: if k == 0 {
                        AccountFlags::empty()
                    } else {
                        AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS
                    } | if self.minted {
                        AccountFlags::HISTORY
                    } else {
                        AccountFlags::empty()
                    },
                    ..Account::default()
                })
            })
            .collect()
    }

    /// The funding transfers: in each group, operator → each customer, `FUNDING` each (ids
    /// 1..=CUSTOMERS for one group; minted in the operator's slot otherwise).
    pub fn funding(&self) -> Vec<Transfer> {
        let millis = millis_now();
        self.groups
            .iter()
            .enumerate()
            .flat_map(|(g, ids)| {
                (1..GROUP_ACCOUNTS_COUNT).map(move |k| {
                    let id = if self.minted {
                        let random = MINT_FUNDING_TAG | (g as u128) << 8 | k as u128;
                        id_in_slot(slot_of(ids[0]), millis, random).expect("the clock fits")
                    } else {
                        k as u128
                    };
                    Transfer {
                        id,
                        debit_account_id: ids[0],
                        credit_account_id: ids[k],
                        amount: FUNDING,
                        ledger: LEDGER,
                        code: 1,
                        ..Transfer::default()
                    }
                })
            })
            .collect()
    }

    /// A transfer id no other transfer of the run has, in `home`'s slot when minted.
    fn transfer_id(&self, client: u64, sequence: u64, home: u128) -> u128 {
        if !self.minted {
            return (u128::from(client) << 64) | u128::from(sequence);
        }
        debug_assert!(client < 1 << 7 && sequence < 1 << MINT_CLIENT_SHIFT);
        let random = u128::from(client) << MINT_CLIENT_SHIFT | u128::from(sequence);
        id_in_slot(slot_of(home), millis_now(), random).expect("the clock fits 48 bits")
    }

    /// A transfer's debit and credit customers, and the account whose slot homes its id.
    /// Over one group it draws exactly what it always did, so that a seed's schedule stays.
    pub(super) fn pick_transfer(&self, rng: &mut SmallRng) -> (u128, u128, u128) {
        let groups = self.groups.len();
        let group = if groups > 1 {
            rng.random_range(0..groups)
        } else {
            0
        };
        let debit_at = 1 + rng.random_range(0..CUSTOMERS) as usize;
        let debit = self.groups[group][debit_at];
        if groups > 1 && rng.random_bool(self.cross_group_ratio) {
            let mut other = rng.random_range(0..groups - 1);
            if other >= group {
                other += 1;
            }
            let credit = self.groups[other][1 + rng.random_range(0..CUSTOMERS) as usize];
            let home =
                self.groups[rng.random_range(0..groups)][rng.random_range(0..GROUP_ACCOUNTS_COUNT)];
            debug_assert!(self.crosses_groups(debit, credit));
            return (debit, credit, home);
        }
        let mut credit_at = 1 + rng.random_range(0..CUSTOMERS - 1) as usize;
        if credit_at >= debit_at {
            credit_at += 1;
        }
        (debit, self.groups[group][credit_at], debit)
    }
}

/// How hard a chaos client tries before it records an operation as unknown.
pub fn retry_policy() -> RetryPolicy {
    RetryPolicy {
        attempts_max: 20,
        elapsed_max: Duration::from_millis(1_500),
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(200),
        attempt_timeout: Duration::from_millis(500),
    }
}

/// How hard the final reads try, after the quiet period: they decide every unknown outcome, so
/// they wait out an election or a node still restarting instead of giving up after 1.5 s like
/// the operations during the nemesis (for which giving up early is what makes them unknown).
pub fn final_read_retry_policy() -> RetryPolicy {
    RetryPolicy {
        attempts_max: 600,
        elapsed_max: Duration::from_secs(60),
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(500),
        attempt_timeout: Duration::from_secs(10),
    }
}

/// Creates the accounts and funds the customers (idempotent; bounded).
pub async fn set_up(client: &Client, bank: &Bank) -> anyhow::Result<Vec<Transfer>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let (accounts, funding) = (bank.accounts(), bank.funding());
    loop {
        let created = client.create_accounts(&accounts).await;
        let funded = match &created {
            Ok(results)
                if results.iter().all(|r| {
                    matches!(
                        r.result,
                        CreateAccountResult::Created | CreateAccountResult::Exists
                    )
                }) =>
            {
                client.create_transfers(&funding).await.ok()
            }
            _ => None,
        };
        if let Some(results) = funded {
            if results.iter().all(|r| {
                matches!(
                    r.result,
                    CreateTransferResult::Created | CreateTransferResult::Exists
                )
            }) {
                return Ok(funding);
            }
            bail!("funding the customers failed: {results:?}");
        }
        if Instant::now() >= deadline {
            bail!("could not set up the accounts within 60 s: {created:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One client: until `until`, one operation at a time, each recorded in `history`. Transfers
/// go through `client` (which sticks to the leader, or fails over between gateways); each read
/// starts at a node (or gateway) picked at random from `nodes`, as a client that reaches any
/// node would (a follower must send it to the leader rather than answer from its own, possibly
/// older, state).
pub async fn run_client(
    client: Client,
    bank: Arc<Bank>,
    nodes: Arc<Vec<String>>,
    id: u64,
    seed: u64,
    history: Arc<History>,
    until: Instant,
) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut sequence = 0u64;
    let ids = bank.account_ids();
    while Instant::now() < until {
        if rng.random_bool(0.2) {
            let node = &nodes[rng.random_range(0..nodes.len())];
            let invoked = history.invoke(id, &Action::Read);
            let reader = Client::builder(&[node])
                .retry_policy(retry_policy())
                .api_key_opt(testkit::keys::token())
                .connect();
            let read = match reader {
                Ok(reader) => reader.lookup_accounts(&ids).await,
                Err(error) => Err(error),
            };
            let outcome = match read {
                Ok(accounts) => Outcome::Read { accounts },
                Err(error) => Outcome::Unknown {
                    error: error.to_string(),
                },
            };
            history.complete(id, Action::Read, invoked, outcome);
            continue;
        }
        sequence += 1;
        let (debit, credit, home) = bank.pick_transfer(&mut rng);
        let transfer_id = bank.transfer_id(id, sequence, home);
        let transfer = Transfer {
            id: transfer_id,
            debit_account_id: debit,
            credit_account_id: credit,
            amount: rng.random_range(1..=4_000),
            // The final read finds a transfer's postings on an account by it.
            user_data_128: if bank.minted { transfer_id } else { 0 },
            ledger: LEDGER,
            code: 1,
            ..Transfer::default()
        };
        let action = Action::Transfer {
            id: transfer.id,
            debit,
            credit,
            amount: transfer.amount,
        };
        let invoked = history.invoke(id, &action);
        let outcome = match client.create_transfers(&[transfer]).await {
            Ok(results) => match results.first() {
                Some(r) if r.result == CreateTransferResult::Created => Outcome::Applied {
                    timestamp: r.timestamp,
                },
                // A retry of an attempt that was applied: on the books, timestamp not known here.
                Some(r) if r.result == CreateTransferResult::Exists => {
                    Outcome::Applied { timestamp: 0 }
                }
                // A saga past the gateway's deadline: its end, polled by id.
                Some(r) if r.result == CreateTransferResult::OutcomePending => {
                    polled_outcome(&client, transfer.id).await
                }
                Some(r) => Outcome::Failed {
                    code: format!("{:?}", r.result),
                },
                None => Outcome::Unknown {
                    error: "no result".into(),
                },
            },
            Err(error) => Outcome::Unknown {
                error: error.to_string(),
            },
        };
        history.complete(id, action, invoked, outcome);
    }
}

/// How many times a transfer answered `outcome_pending` is polled (each poll waits up to the
/// longest `wait_ms`) before its outcome is left unknown.
const OUTCOME_POLLS_MAX: u32 = 12;

/// The end of a transfer answered `outcome_pending`, asked of the gateway by id: applied once
/// `created`, failed once `failed` (the id is spent without a transfer), else unknown.
async fn polled_outcome(client: &Client, id: u128) -> Outcome {
    let wait = std::time::Duration::from_millis(limits::OUTCOME_WAIT_MS_MAX.into());
    let mut last = String::from("not polled");
    for _ in 0..OUTCOME_POLLS_MAX {
        match client.lookup_outcomes(&[id], wait).await {
            Ok(outcomes) => match outcomes.first() {
                Some(TransferOutcome::Created { timestamp }) => {
                    return Outcome::Applied {
                        timestamp: *timestamp,
                    };
                }
                Some(TransferOutcome::Failed) => {
                    return Outcome::Failed {
                        code: "OutcomePending, then failed".into(),
                    };
                }
                Some(other) => last = format!("outcome {}", other.as_str()),
                None => last = "no outcome".into(),
            },
            Err(error) => last = error.to_string(),
        }
    }
    Outcome::Unknown {
        error: format!("answered outcome_pending; after {OUTCOME_POLLS_MAX} polls: {last}"),
    }
}
