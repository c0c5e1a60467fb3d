//! The benchmark's accounts and transfers, generated from a seed.
//!
//! `bench --groups` draws transfers over the groups of a cluster map ([`Placement`],
//! [`TransferGenerator::single_group`]): the transfer's own id minted into the debit account's
//! slot (the gateway homes a transfer by its id), and the credit account in the debit's group,
//! except for a share (`--cross-group-ratio`) drawn from the other groups, which the gateway
//! carries by saga.

use std::sync::Arc;

use cluster::{ClusterMap, GroupId, ID_TIMESTAMP_MS_MAX, Slot, id_in_slot, slot_of};
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

/// Where the accounts `1..=accounts` live under a cluster map: each one's group and slot, and
/// each group's accounts, computed once so that drawing a transfer costs two lookups.
#[derive(Debug)]
pub struct Placement {
    /// The map's groups, in its order; a group's number below is its position here.
    group_ids: Vec<GroupId>,
    /// `group_accounts[g]`: the ids of group `g`'s accounts, ascending.
    group_accounts: Vec<Vec<u64>>,
    /// `account_group[id - 1]`: the number of account `id`'s group.
    account_group: Vec<u16>,
    /// `account_slot[id - 1]`: account `id`'s slot.
    account_slot: Vec<Slot>,
}

impl Placement {
    /// The placement of accounts `1..=accounts` under `map`. Refuses a map under which a group
    /// holds fewer than two accounts: it could not debit one and credit another.
    pub fn new(map: &ClusterMap, accounts: u64) -> anyhow::Result<Placement> {
        let group_ids: Vec<GroupId> = map.groups().keys().copied().collect();
        assert!(!group_ids.is_empty() && group_ids.len() <= usize::from(u16::MAX));
        let mut group_accounts = vec![Vec::new(); group_ids.len()];
        let mut account_group = Vec::with_capacity(accounts as usize);
        let mut account_slot = Vec::with_capacity(accounts as usize);
        for id in 1..=accounts {
            let group = map.group_of(u128::from(id));
            let number = group_ids.binary_search(&group).expect("a group of the map");
            group_accounts[number].push(id);
            account_group.push(number as u16);
            account_slot.push(slot_of(u128::from(id)));
        }
        if let Some((number, held)) = group_accounts
            .iter()
            .enumerate()
            .find(|(_, held)| held.len() < 2)
        {
            anyhow::bail!(
                "--accounts {accounts} is too few for {} groups: group {} holds {} of them, and a \
                 transfer needs two accounts in one group; give more accounts",
                group_ids.len(),
                group_ids[number],
                held.len()
            );
        }
        Ok(Placement {
            group_ids,
            group_accounts,
            account_group,
            account_slot,
        })
    }

    /// The map's groups, in the order of the per-group counts.
    pub fn group_ids(&self) -> &[GroupId] {
        &self.group_ids
    }

    /// How many accounts each group holds, in the order of [`Placement::group_ids`].
    pub fn accounts_per_group(&self) -> Vec<u64> {
        self.group_accounts
            .iter()
            .map(|held| held.len() as u64)
            .collect()
    }
}

/// What [`TransferGenerator::single_group`] needs beyond the plain workload.
struct SingleGroup {
    placement: Arc<Placement>,
    /// Per group, the Zipf law over its accounts (`--distribution zipfian`).
    group_zipf: Vec<Option<Zipf<f64>>>,
    /// The millisecond stamped into every transfer id of the run.
    id_millis: u64,
    /// How many transfers were drawn in each group.
    transfers_per_group: Vec<u64>,
    /// The share of transfers whose credit account is drawn from another group.
    cross_group_ratio: f64,
}

/// Draws transfers; one generator per client, seeded from the run's seed.
pub struct TransferGenerator {
    rng: SmallRng,
    accounts: u64,
    zipf: Option<Zipf<f64>>,
    amount: Exp<f64>,
    id_order: IdOrder,
    single_group: Option<SingleGroup>,
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
            single_group: None,
        })
    }

    /// A generator of single-group transfers under `placement` (over all its accounts): the
    /// debit account drawn as usual, the credit account from the debit's group, and the id
    /// minted into the debit's slot with `id_millis` (milliseconds since the epoch, one value
    /// for the whole run) and the transfer's sequence number as its random bits. `id_in_slot`
    /// is one-to-one in its 68 random bits for a given slot and millisecond, so distinct
    /// sequence numbers (below 2^68) give distinct ids.
    pub fn single_group(
        seed: u64,
        placement: Arc<Placement>,
        distribution: AccountDistribution,
        id_millis: u64,
        cross_group_ratio: f64,
    ) -> anyhow::Result<Self> {
        if !(0.0..=1.0).contains(&cross_group_ratio) {
            anyhow::bail!("cross-group ratio {cross_group_ratio}: give a share from 0 to 1");
        }
        if id_millis == 0 || id_millis > ID_TIMESTAMP_MS_MAX {
            anyhow::bail!(
                "transfer ids: {id_millis} is not a millisecond timestamp an id can carry (1..={ID_TIMESTAMP_MS_MAX})"
            );
        }
        let accounts = placement.account_group.len() as u64;
        let group_zipf = placement
            .group_accounts
            .iter()
            .map(|held| match distribution {
                AccountDistribution::Uniform => Ok(None),
                AccountDistribution::Zipfian => Ok(Some(Zipf::new(held.len() as f64, 1.0)?)),
            })
            .collect::<anyhow::Result<_>>()?;
        let transfers_per_group = vec![0; placement.group_ids.len()];
        let mut generator =
            TransferGenerator::new(seed, accounts, distribution, IdOrder::Sequential)?;
        generator.single_group = Some(SingleGroup {
            placement,
            group_zipf,
            id_millis,
            transfers_per_group,
            cross_group_ratio,
        });
        Ok(generator)
    }

    /// How many transfers were drawn in each group so far (single-group generators; in the
    /// order of [`Placement::group_ids`]).
    pub fn transfers_per_group(&self) -> Vec<u64> {
        self.single_group
            .as_ref()
            .map_or_else(Vec::new, |single| single.transfers_per_group.clone())
    }

    fn pick(&mut self) -> u64 {
        match &self.zipf {
            Some(zipf) => (zipf.sample(&mut self.rng) as u64).clamp(1, self.accounts),
            None => self.rng.random_range(1..=self.accounts),
        }
    }

    /// `count` transfers whose sequence numbers start at `first_id` (their ids, unless the
    /// generator mints ids into slots).
    pub fn batch(&mut self, first_id: u64, count: u64) -> Vec<Transfer> {
        (0..count)
            .map(|i| {
                let sequence = first_id + i;
                let debit = self.pick();
                let (credit, id) = match self.single_group.is_some() {
                    true => self.single_group_credit_and_id(debit, sequence),
                    false => (self.other_than(debit), self.plain_id(sequence)),
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

    /// A credit account drawn over all accounts, distinct from `debit`.
    fn other_than(&mut self, debit: u64) -> u64 {
        loop {
            let credit = self.pick();
            if credit != debit {
                break credit;
            }
        }
    }

    fn plain_id(&mut self, sequence: u64) -> u128 {
        match self.id_order {
            IdOrder::Sequential => u128::from(sequence),
            IdOrder::Random => self.rng.random_range(1..u128::MAX),
        }
    }

    /// An id in `debit`'s slot, and a credit account in `debit`'s group (distinct from it) or,
    /// for the cross-group share, in another group.
    fn single_group_credit_and_id(&mut self, debit: u64, sequence: u64) -> (u64, u128) {
        let single = self
            .single_group
            .as_mut()
            .expect("a single-group generator");
        let at = (debit - 1) as usize;
        let group = usize::from(single.placement.account_group[at]);
        let held = &single.placement.group_accounts[group];
        debug_assert!(held.len() >= 2, "Placement::new refuses groups of fewer");
        let groups = single.placement.group_ids.len();
        let cross = groups > 1
            && single.cross_group_ratio > 0.0
            && self.rng.random_bool(single.cross_group_ratio);
        let accounts = single.placement.account_group.len() as u64;
        let credit = loop {
            if cross {
                let credit = self.rng.random_range(1..=accounts);
                if usize::from(single.placement.account_group[(credit - 1) as usize]) != group {
                    break credit;
                }
                continue;
            }
            let index = match &single.group_zipf[group] {
                Some(zipf) => (zipf.sample(&mut self.rng) as usize).clamp(1, held.len()) - 1,
                None => self.rng.random_range(0..held.len()),
            };
            if held[index] != debit {
                break held[index];
            }
        };
        let slot = single.placement.account_slot[at];
        let id = id_in_slot(slot, single.id_millis, u128::from(sequence))
            .expect("id_millis is checked when the generator is made");
        single.transfers_per_group[group] += 1;
        (credit, id)
    }
}

/// Creates the accounts 1..=`count` through `client`, `batch` at a time; any result but
/// `created` or `exists` fails the bench.
pub async fn create_accounts(
    client: &client::Client,
    count: u64,
    batch: u64,
) -> anyhow::Result<()> {
    let mut first = 1;
    while first <= count {
        let last = (first + batch - 1).min(count);
        let results = client.create_accounts(&accounts(first, last)).await?;
        if let Some(bad) = results.iter().find(|r| {
            !matches!(
                r.result,
                ledger::CreateAccountResult::Created | ledger::CreateAccountResult::Exists
            )
        }) {
            anyhow::bail!("creating the benchmark accounts failed: {}", bad.result);
        }
        first = last + 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use cluster::{Member, Members, route};

    use super::*;

    fn map_of_groups(groups: u128) -> ClusterMap {
        let member = Member {
            grpc: "127.0.0.1:1".into(),
            http: String::new(),
            peer: "127.0.0.1:2".into(),
        };
        let groups =
            (1..=groups).map(|n| (GroupId::from_u128(n), Members::from([(1, member.clone())])));
        ClusterMap::new(groups.collect()).expect("a valid map")
    }

    /// What the gateway needs of every transfer (its id and both accounts in one group, as
    /// `cluster::route::split` judges it), and that no two transfers share an id, across
    /// clients as the bench runs them (client k takes batches k, k + clients, …).
    #[test]
    fn single_group_transfers_keep_their_ids_and_accounts_in_one_group_and_ids_are_unique() {
        let map = map_of_groups(4);
        let placement = Arc::new(Placement::new(&map, 1_000).expect("enough accounts"));
        assert!(
            placement
                .accounts_per_group()
                .iter()
                .all(|&held| held > 150)
        );
        for distribution in [AccountDistribution::Uniform, AccountDistribution::Zipfian] {
            let (clients, batch, batches) = (3u64, 997u64, 60u64);
            let mut generators: Vec<TransferGenerator> = (0..clients)
                .map(|k| {
                    TransferGenerator::single_group(
                        42 + k,
                        Arc::clone(&placement),
                        distribution,
                        1_764_600_000_000,
                        0.0,
                    )
                    .expect("a generator")
                })
                .collect();
            let mut ids = BTreeSet::new();
            let mut drawn = 0u64;
            for b in 0..batches {
                let generator = &mut generators[(b % clients) as usize];
                let transfers = generator.batch(b * batch + 1, batch);
                // As the gateway judges a batch: its own id, both accounts, the pending id.
                let split = route::split(&map, transfers.clone(), |t| {
                    route::Accounts::Ids([
                        t.id,
                        t.debit_account_id,
                        t.credit_account_id,
                        t.pending_id,
                    ])
                })
                .expect("a batch within the limit");
                assert!(
                    split.cross_group.is_empty(),
                    "{:?}",
                    split.cross_group.first()
                );
                for transfer in transfers {
                    let group = map.group_of(transfer.id);
                    assert_eq!(map.group_of(transfer.debit_account_id), group);
                    assert_eq!(map.group_of(transfer.credit_account_id), group);
                    assert_ne!(transfer.debit_account_id, transfer.credit_account_id);
                    assert_eq!(slot_of(transfer.id), slot_of(transfer.debit_account_id));
                    assert!(ids.insert(transfer.id), "id {:#x} drawn twice", transfer.id);
                    drawn += 1;
                }
            }
            let per_group: Vec<u64> = generators.iter().fold(vec![0; 4], |mut sum, g| {
                sum.iter_mut()
                    .zip(g.transfers_per_group())
                    .for_each(|(s, n)| *s += n);
                sum
            });
            assert_eq!(per_group.iter().sum::<u64>(), drawn);
            assert!(per_group.iter().all(|&n| n > 0), "{per_group:?}");
        }
    }

    /// With a cross-group ratio, that share of transfers (within sampling noise) credits an
    /// account of another group; every id stays in its debit account's slot.
    #[test]
    fn a_cross_group_share_credits_other_groups_and_homes_every_id_with_its_debit() {
        let map = map_of_groups(4);
        let placement = Arc::new(Placement::new(&map, 1_000).expect("enough accounts"));
        let mut generator = TransferGenerator::single_group(
            7,
            placement,
            AccountDistribution::Uniform,
            1_764_600_000_000,
            0.3,
        )
        .expect("a generator");
        let transfers = generator.batch(1, 10_000);
        let crossing = transfers
            .iter()
            .filter(|t| map.group_of(t.credit_account_id) != map.group_of(t.debit_account_id))
            .count();
        assert!((2_700..=3_300).contains(&crossing), "{crossing} of 10,000");
        assert!(
            transfers
                .iter()
                .all(|t| slot_of(t.id) == slot_of(t.debit_account_id)
                    && t.debit_account_id != t.credit_account_id)
        );
        assert!(
            TransferGenerator::single_group(
                7,
                Arc::new(Placement::new(&map, 1_000).unwrap()),
                AccountDistribution::Uniform,
                1_764_600_000_000,
                1.5
            )
            .is_err()
        );
    }

    #[test]
    fn a_map_leaving_a_group_fewer_than_two_accounts_is_refused() {
        let error = Placement::new(&map_of_groups(4), 3).expect_err("too few accounts");
        assert!(
            error
                .to_string()
                .contains("--accounts 3 is too few for 4 groups")
        );
    }
}
