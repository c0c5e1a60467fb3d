//! Clearing balances in 256 bits: sums that no caller can push to an overflow.
//!
//! An account's balances are `u128`, as TigerBeetle's, and a transfer that would overflow one
//! is refused — the account's own limit. A group's clearing balance of a ledger is different:
//! it sums every saga copy of that ledger booked here, over every account, so two transfers of
//! `2^127` between two pairs of accounts would fill a `u128` sum and leave every later saga of
//! the ledger refused (one group would create them all). Kept in 256 bits, a clearing balance
//! holds the sum of every transfer a group can store (fewer than `2^64` of at most `2^128 - 1`
//! each), so it never refuses and never overflows.
//!
//! This module owns that arithmetic only; what is booked where is `saga`'s.

use crate::events::Balances;

/// An unsigned 256-bit sum: `high * 2^128 + low`. Ordered by value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Wide {
    pub high: u128,
    pub low: u128,
}

impl Wide {
    pub const ZERO: Wide = Wide { high: 0, low: 0 };

    /// `self + other`. Panics past `2^256`, which no ledger can reach (see the module header).
    #[must_use]
    pub fn plus(self, other: Wide) -> Wide {
        self.checked_plus(other)
            .expect("a clearing sum stays below 2^256")
    }

    /// `self - other`. Panics below zero: a clearing balance releases only what it booked.
    #[must_use]
    pub fn minus(self, other: Wide) -> Wide {
        self.checked_minus(other)
            .expect("a clearing balance releases only what it booked")
    }

    /// `self + other`, or `None` past `2^256`.
    pub fn checked_plus(self, other: Wide) -> Option<Wide> {
        let (low, carry) = self.low.overflowing_add(other.low);
        let high = self
            .high
            .checked_add(other.high)?
            .checked_add(u128::from(carry))?;
        Some(Wide { high, low })
    }

    /// `self - other`, or `None` below zero.
    pub fn checked_minus(self, other: Wide) -> Option<Wide> {
        let (low, borrow) = self.low.overflowing_sub(other.low);
        let high = self
            .high
            .checked_sub(other.high)?
            .checked_sub(u128::from(borrow))?;
        Some(Wide { high, low })
    }

    /// The value if it fits in 128 bits.
    pub fn to_u128(self) -> Option<u128> {
        (self.high == 0).then_some(self.low)
    }
}

impl std::fmt::Display for Wide {
    /// In decimal, as the API writes amounts.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.high == 0 {
            return write!(f, "{}", self.low);
        }
        // Long division by 10^19, most significant 64-bit limb first.
        const CHUNK: u128 = 10_000_000_000_000_000_000;
        let mut limbs = [
            (self.high >> 64) as u64,
            self.high as u64,
            (self.low >> 64) as u64,
            self.low as u64,
        ];
        let mut chunks = Vec::new();
        while limbs.iter().any(|&limb| limb != 0) {
            let mut remainder = 0u128;
            for limb in &mut limbs {
                let value = (remainder << 64) | u128::from(*limb);
                *limb = (value / CHUNK) as u64;
                remainder = value % CHUNK;
            }
            chunks.push(remainder);
        }
        let mut chunks = chunks.into_iter().rev();
        write!(f, "{}", chunks.next().unwrap_or(0))?;
        chunks.try_for_each(|chunk| write!(f, "{chunk:019}"))
    }
}

impl From<u128> for Wide {
    fn from(value: u128) -> Wide {
        Wide {
            high: 0,
            low: value,
        }
    }
}

/// A clearing balance's four sums, as an account's four balances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct WideBalances {
    pub debits_pending: Wide,
    pub debits_posted: Wide,
    pub credits_pending: Wide,
    pub credits_posted: Wide,
}

impl From<Balances> for WideBalances {
    fn from(b: Balances) -> WideBalances {
        WideBalances {
            debits_pending: b.debits_pending.into(),
            debits_posted: b.debits_posted.into(),
            credits_pending: b.credits_pending.into(),
            credits_posted: b.credits_posted.into(),
        }
    }
}

impl WideBalances {
    /// `self + other`, field by field: balances summed over accounts and groups.
    #[must_use]
    pub fn plus(self, other: WideBalances) -> WideBalances {
        WideBalances {
            debits_pending: self.debits_pending.plus(other.debits_pending),
            debits_posted: self.debits_posted.plus(other.debits_posted),
            credits_pending: self.credits_pending.plus(other.credits_pending),
            credits_posted: self.credits_posted.plus(other.credits_posted),
        }
    }

    /// `self + add - sub`, field by field (a change as `history` derives it from an entry), or
    /// `None` if a field would go below zero: what only a damaged or forged snapshot can hold
    /// (a release of more than was booked), which its reader refuses.
    pub(crate) fn checked_step(self, add: Balances, sub: Balances) -> Option<WideBalances> {
        let field = |value: Wide, add: u128, sub: u128| {
            value.checked_plus(add.into())?.checked_minus(sub.into())
        };
        Some(WideBalances {
            debits_pending: field(self.debits_pending, add.debits_pending, sub.debits_pending)?,
            debits_posted: field(self.debits_posted, add.debits_posted, sub.debits_posted)?,
            credits_pending: field(
                self.credits_pending,
                add.credits_pending,
                sub.credits_pending,
            )?,
            credits_posted: field(self.credits_posted, add.credits_posted, sub.credits_posted)?,
        })
    }

    /// The low 128 bits of each sum: what a change event carries for a clearing side (its
    /// value modulo `2^128`, exact below it; see `docs/events.md`).
    pub(crate) fn low_bits(&self) -> Balances {
        Balances {
            debits_pending: self.debits_pending.low,
            debits_posted: self.debits_posted.low,
            credits_pending: self.credits_pending.low,
            credits_posted: self.credits_posted.low,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_carry_and_borrow_across_the_128_bit_edge() {
        let edge = Wide::from(u128::MAX);
        let past = edge.plus(Wide::from(1));
        assert_eq!(past, Wide { high: 1, low: 0 });
        assert_eq!(past.to_u128(), None);
        assert_eq!(past.minus(Wide::from(1)), edge);
        assert_eq!(edge.to_u128(), Some(u128::MAX));
        let two_halves = Wide::from(1 << 127).plus(Wide::from(1 << 127));
        assert_eq!(two_halves, Wide { high: 1, low: 0 });
        assert!(two_halves > edge);
        assert_eq!(two_halves.minus(two_halves), Wide::ZERO);
    }

    #[test]
    fn prints_in_decimal_past_128_bits() {
        assert_eq!(Wide::from(42).to_string(), "42");
        assert_eq!(
            Wide::from(u128::MAX).plus(Wide::from(1)).to_string(),
            "340282366920938463463374607431768211456"
        );
        let max = Wide {
            high: u128::MAX,
            low: u128::MAX,
        };
        assert_eq!(
            max.to_string(),
            "115792089237316195423570985008687907853269984665640564039457584007913129639935"
        );
        assert_eq!(
            Wide { high: 1, low: 5 }.to_string(),
            "340282366920938463463374607431768211461"
        );
    }

    #[test]
    #[should_panic(expected = "releases only what it booked")]
    fn a_release_below_zero_is_a_bug() {
        let _ = Wide::from(1).minus(Wide::from(2));
    }

    #[test]
    fn a_step_adds_then_subtracts_field_by_field() {
        let start = WideBalances {
            debits_pending: Wide::from(u128::MAX),
            ..Default::default()
        };
        let add = Balances {
            debits_pending: 5,
            credits_posted: 7,
            ..Default::default()
        };
        let sub = Balances {
            debits_pending: 2,
            ..Default::default()
        };
        let after = start.checked_step(add, sub).unwrap();
        assert_eq!(after.debits_pending, Wide { high: 1, low: 2 });
        assert_eq!(after.credits_posted, Wide::from(7));
        assert_eq!(after.low_bits().debits_pending, 2);
        // Releasing more than was booked: refused, not wrapped.
        let too_much = Balances {
            credits_pending: 1,
            ..Default::default()
        };
        assert_eq!(after.checked_step(Balances::default(), too_much), None);
    }
}
