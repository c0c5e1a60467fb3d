//! The benchmark's accounts and transfers, generated from a seed.

use ledger::{Account, AccountFlags, Transfer};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp, Zipf};
use serde::Serialize;

const BENCH_LEDGER: u32 = 2;
const BENCH_CODE: u16 = 1;
const AMOUNT_MEAN: f64 = 10_000.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountDistribution {
    Uniform,
    Zipfian,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IdOrder {
    Sequential,
    Random,
}

/// Accounts `first..=last` (1-based ids) with `history`.
pub fn accounts(first: u64, last: u64) -> Vec<Account> {
    (first..=last)
        .map(|id| Account {
            id: u128::from(id),
            ledger: BENCH_LEDGER,
            code: BENCH_CODE,
            flags: AccountFlags::HISTORY,
            ..Default::default()
        })
        .collect()
}

/// Draws transfers; one generator per client, seeded from the run's seed.
pub struct TransferGenerator {
    rng: SmallRng,
    accounts: u64,
    zipf: Option<Zipf<f64>>,
    amount: Exp<f64>,
    id_order: IdOrder,
}

impl TransferGenerator {
    pub fn new(
        seed: u64,
        accounts: u64,
        distribution: AccountDistribution,
        id_order: IdOrder,
    ) -> anyhow::Result<Self> {
        Ok(TransferGenerator {
            rng: SmallRng::seed_from_u64(seed),
            accounts,
            zipf: match distribution {
                AccountDistribution::Uniform => None,
                AccountDistribution::Zipfian => Some(Zipf::new(accounts as f64, 1.0)?),
            },
            amount: Exp::new(1.0 / AMOUNT_MEAN)?,
            id_order,
        })
    }

    fn pick(&mut self) -> u64 {
        match &self.zipf {
            Some(zipf) => (zipf.sample(&mut self.rng) as u64).clamp(1, self.accounts),
            None => self.rng.random_range(1..=self.accounts),
        }
    }

    /// `count` transfers whose sequential ids start at `first_id`.
    pub fn batch(&mut self, first_id: u64, count: u64) -> Vec<Transfer> {
        (0..count)
            .map(|i| {
                let debit = self.pick();
                let credit = loop {
                    let credit = self.pick();
                    if credit != debit {
                        break credit;
                    }
                };
                let id = match self.id_order {
                    IdOrder::Sequential => u128::from(first_id + i),
                    IdOrder::Random => self.rng.random_range(1..u128::MAX),
                };
                Transfer {
                    id,
                    debit_account_id: u128::from(debit),
                    credit_account_id: u128::from(credit),
                    amount: self.amount.sample(&mut self.rng) as u128 + 1,
                    ledger: BENCH_LEDGER,
                    code: BENCH_CODE,
                    ..Default::default()
                }
            })
            .collect()
    }
}
