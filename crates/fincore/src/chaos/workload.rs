//! The bank: one operator account funds seven customer accounts that may never overdraw
//! (`debits_must_not_exceed_credits`); clients move random amounts between customers (many
//! exceed the balance and must fail) and read every account at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use client::{Client, RetryPolicy};
use ledger::{Account, AccountFlags, CreateAccountResult, CreateTransferResult, Transfer};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::history::{Action, History, Outcome};

use testkit::bank_checker::{BANK, CUSTOMERS, FUNDING};

const LEDGER: u32 = 1;

pub fn account_ids() -> Vec<u128> {
    (BANK..=CUSTOMERS + 1).collect()
}

fn accounts() -> Vec<Account> {
    account_ids()
        .into_iter()
        .map(|id| Account {
            id,
            ledger: LEDGER,
            code: 1,
            flags: if id == BANK {
                AccountFlags::empty()
            } else {
                AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS
            },
            ..Account::default()
        })
        .collect()
}

/// The funding transfers: ids 1..=CUSTOMERS, bank → each customer.
pub fn funding() -> Vec<Transfer> {
    (0..CUSTOMERS)
        .map(|k| Transfer {
            id: k + 1,
            debit_account_id: BANK,
            credit_account_id: BANK + 1 + k,
            amount: FUNDING,
            ledger: LEDGER,
            code: 1,
            ..Transfer::default()
        })
        .collect()
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
pub async fn set_up(client: &Client) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let created = client.create_accounts(&accounts()).await;
        let funded = match &created {
            Ok(results)
                if results.iter().all(|r| {
                    matches!(
                        r.result,
                        CreateAccountResult::Created | CreateAccountResult::Exists
                    )
                }) =>
            {
                client.create_transfers(&funding()).await.ok()
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
                return Ok(());
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
/// go through `client` (which sticks to the leader); each read starts at a node picked at
/// random from `nodes`, as a client that reaches any node would (a follower must send it to
/// the leader rather than answer from its own, possibly older, state).
pub async fn run_client(
    client: Client,
    nodes: Arc<Vec<String>>,
    id: u64,
    seed: u64,
    history: Arc<History>,
    until: Instant,
) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut sequence = 0u64;
    let ids = account_ids();
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
        let debit = BANK + 1 + rng.random_range(0..CUSTOMERS);
        let mut credit = BANK + 1 + rng.random_range(0..CUSTOMERS - 1);
        if credit >= debit {
            credit += 1;
        }
        let transfer = Transfer {
            id: (u128::from(id) << 64) | u128::from(sequence),
            debit_account_id: debit,
            credit_account_id: credit,
            amount: rng.random_range(1..=4_000),
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
