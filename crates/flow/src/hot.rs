//! Limits on hot accounts: at most `rate_per_second` transfers a second (after a `burst`) may
//! name any one account, as debit or credit. A batch is judged whole: each account it names
//! counts as many transfers as name it, and if one account would pass its limit the batch is
//! refused (nothing applied, retryable, naming the account and when to retry) and no account's
//! count moves. GCRA with a cost per account (`tat = max(tat, now) + n × interval`, allowed
//! while `tat - now ≤ burst × interval`).
//!
//! Owns the per-account state: at most `FLOW_HOT_ACCOUNTS_TRACKED_MAX` accounts, an account
//! whose theoretical arrival time has passed being forgotten first (it is back at its full
//! burst anyway), so a flood of distinct accounts cannot grow it. Must not read a clock.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use foldhash::fast::RandomState;

use crate::rules::HotAccountRule;

const NANOS_PER_SECOND: u64 = 1_000_000_000;

/// A batch refused: `account` would pass its limit; its next room is `retry_after` away. With
/// `beyond_burst`, more transfers of the batch name the account than its burst: it will never
/// pass whole (split it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HotRefusal {
    pub account: u128,
    pub retry_after: Duration,
    pub beyond_burst: bool,
}

/// How many transfers of a batch name each account (foldhash: a batch's 16,000 lookups cost
/// a few hundred microseconds less than with the default hasher).
pub type AccountCounts = HashMap<u128, u64, RandomState>;

/// The accounts' theoretical arrival times under one rule.
#[derive(Debug)]
pub(crate) struct HotAccounts {
    interval: u64,
    tolerance: u64,
    tats: Mutex<HashMap<u128, u64, RandomState>>,
}

impl HotAccounts {
    pub(crate) fn new(rule: &HotAccountRule) -> HotAccounts {
        let interval = (NANOS_PER_SECOND / u64::from(rule.rate_per_second.max(1))).max(1);
        HotAccounts {
            interval,
            tolerance: interval.saturating_mul(u64::from(rule.burst.max(1))),
            tats: Mutex::default(),
        }
    }

    /// Admits a batch naming each of `counts`' accounts that many times, at `now` (ns from the
    /// caller's origin), or refuses it whole.
    pub(crate) fn admit(&self, counts: &AccountCounts, now: u64) -> Result<(), HotRefusal> {
        let mut tats = self.tats.lock().expect("never poisoned");
        for (&account, &count) in counts {
            let cost = count.saturating_mul(self.interval);
            if cost > self.tolerance {
                return Err(HotRefusal {
                    account,
                    retry_after: Duration::ZERO,
                    beyond_burst: true,
                });
            }
            let tat = tats.get(&account).copied().unwrap_or(0).max(now);
            let next = tat.saturating_add(cost);
            if next - now > self.tolerance {
                let retry_after = Duration::from_nanos(next - now - self.tolerance);
                return Err(HotRefusal {
                    account,
                    retry_after,
                    beyond_burst: false,
                });
            }
        }
        if tats.len() + counts.len() > limits::FLOW_HOT_ACCOUNTS_TRACKED_MAX {
            tats.retain(|_, tat| *tat > now);
        }
        for (&account, &count) in counts {
            if tats.len() >= limits::FLOW_HOT_ACCOUNTS_TRACKED_MAX && !tats.contains_key(&account) {
                // Every tracked account is busy: this one is not tracked (its batch passes).
                continue;
            }
            let tat = tats.entry(account).or_insert(0);
            *tat = (*tat).max(now) + count * self.interval;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hot(rate: u32, burst: u32) -> HotAccounts {
        HotAccounts::new(&HotAccountRule {
            rate_per_second: rate,
            burst,
        })
    }

    const MS: u64 = 1_000_000;

    fn counts<const N: usize>(pairs: [(u128, u64); N]) -> AccountCounts {
        pairs.into_iter().collect()
    }

    #[test]
    fn an_account_gets_its_burst_then_its_rate_and_a_refused_batch_moves_nothing() {
        let limit = hot(100, 10);
        let one = |account| counts([(account, 1)]);
        for _ in 0..10 {
            limit.admit(&one(7), 0).unwrap();
        }
        let refused = limit.admit(&one(7), 0).unwrap_err();
        assert_eq!(refused.account, 7);
        assert_eq!(refused.retry_after, Duration::from_millis(10));
        // Another account is not held back.
        limit.admit(&one(8), 0).unwrap();
        // A batch naming 7 and 9: refused whole for 7, so 9 keeps its whole burst.
        let both = counts([(7, 1), (9, 10)]);
        assert_eq!(limit.admit(&both, 0).unwrap_err().account, 7);
        limit.admit(&counts([(9, 10)]), 0).unwrap();
        // 10 ms later there is room for one more on 7.
        limit.admit(&one(7), 10 * MS).unwrap();
        assert!(limit.admit(&one(7), 10 * MS).is_err());
    }

    #[test]
    fn a_batch_counts_each_transfer_naming_the_account() {
        let limit = hot(1_000, 100);
        assert!(
            limit
                .admit(&counts([(1, 101)]), 0)
                .unwrap_err()
                .beyond_burst
        );
        limit.admit(&counts([(1, 100)]), 0).unwrap();
        assert!(limit.admit(&counts([(1, 1)]), 0).is_err());
    }

    #[test]
    fn the_accounts_tracked_stay_bounded() {
        let limit = hot(1, 1);
        let many = limits::FLOW_HOT_ACCOUNTS_TRACKED_MAX as u128 + 10;
        for account in 0..many {
            limit.admit(&counts([(account, 1)]), 0).unwrap();
        }
        assert!(limit.tats.lock().unwrap().len() <= limits::FLOW_HOT_ACCOUNTS_TRACKED_MAX);
        // Once their times have passed, the old ones make room.
        let later = 10 * NANOS_PER_SECOND;
        limit.admit(&counts([(many, 1)]), later).unwrap();
        assert!(limit.tats.lock().unwrap().len() <= 2);
    }
}
