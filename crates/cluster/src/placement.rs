//! Placement: which of the [`SLOTS`] slots an account id lives in, and minting ids that land in
//! a chosen slot, so that accounts meant to be together (a merchant and its sub-accounts, both
//! legs of an exchange) share a slot and therefore, always, a group.
//!
//! Owns the slot function and the id construction; both are part of fincore's public contract
//! (`docs/placement.md` gives the formulas so any language can compute them) and the golden
//! tests below pin them. Must not know groups or the cluster map (slot → group is
//! [`crate::map`]'s), read a clock or draw randomness of its own: the caller passes the time and
//! the random source.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Number of slots. Fixed forever: slots move between groups, their number never changes (a
/// change would move almost every account).
pub const SLOTS: u32 = 4096;

/// Bits of a slot number (`SLOTS` = 2^12).
const SLOT_BITS: u32 = 12;
const _: () = assert!(1 << SLOT_BITS == SLOTS);

/// The largest millisecond timestamp an id can carry: 48 bits, as TigerBeetle's time-based ids
/// (enough until the year 10889).
pub const ID_TIMESTAMP_MS_MAX: u64 = (1 << 48) - 1;

/// murmur3's 64-bit finalizer constants (`fmix64`), and their inverses modulo 2^64.
const FMIX_C1: u64 = 0xff51_afd7_ed55_8ccd;
const FMIX_C2: u64 = 0xc4ce_b9fe_1a85_ec53;
const FMIX_C1_INVERSE: u64 = inverse_mod_2_64(FMIX_C1);
const FMIX_C2_INVERSE: u64 = inverse_mod_2_64(FMIX_C2);
const _: () = assert!(FMIX_C1.wrapping_mul(FMIX_C1_INVERSE) == 1);
const _: () = assert!(FMIX_C2.wrapping_mul(FMIX_C2_INVERSE) == 1);

/// A slot number, `0..SLOTS`. In JSON, a plain number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct Slot(u16);

impl Slot {
    /// The slot numbered `index`, if `index < SLOTS`.
    pub const fn new(index: u32) -> Option<Slot> {
        if index < SLOTS {
            Some(Slot(index as u16))
        } else {
            None
        }
    }

    pub const fn index(self) -> u32 {
        self.0 as u32
    }

    /// Every slot, in order.
    pub fn all() -> impl DoubleEndedIterator<Item = Slot> + ExactSizeIterator {
        (0..SLOTS as u16).map(Slot)
    }
}

impl TryFrom<u32> for Slot {
    type Error = String;

    fn try_from(index: u32) -> Result<Slot, String> {
        Slot::new(index)
            .ok_or_else(|| format!("slot {index} does not exist (slots are 0..={})", SLOTS - 1))
    }
}

impl From<Slot> for u32 {
    fn from(slot: Slot) -> u32 {
        slot.index()
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The slot of an account id:
///
/// ```text
/// hi = id >> 64, lo = id mod 2^64
/// slot = fmix64(fmix64(hi) XOR lo) >> 52
/// fmix64(x) = x ^= x >> 33; x *= 0xff51afd7ed558ccd; x ^= x >> 33;
///             x *= 0xc4ceb9fe1a85ec53; x ^= x >> 33   (arithmetic modulo 2^64)
/// ```
///
/// Stable forever (golden tests pin it). Spreads sequential ids, round multiples and
/// time-based ids alike (the statistical tests state the bounds).
pub fn slot_of(id: u128) -> Slot {
    let slot = mix(id) >> (64 - SLOT_BITS);
    debug_assert!(slot < u64::from(SLOTS));
    Slot(slot as u16)
}

/// Why an id could not be minted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MintError {
    #[error(
        "millis_now: {millis} does not fit the 48 bits an id keeps for its timestamp (at most {max}); pass milliseconds since the Unix epoch"
    )]
    TimestampTooLarge { millis: u64, max: u64 },
}

/// A fresh time-ordered id in `slot`: `millis_now` (milliseconds since the Unix epoch) in the
/// high 48 bits, then 80 bits of which 68 come from `rng` and 12 are spent on the slot.
///
/// Not a search: the low half is solved for. Since `fmix64` is a bijection,
/// `lo = fmix64⁻¹(slot << 52 | r52) XOR fmix64(hi)` gives `slot_of(id) == slot` at the first
/// try, so minting never fails and costs two `fmix64` and one inverse (see
/// [`id_in_slot`] for the exact construction). Never 0 or `u128::MAX`.
pub fn mint_in_slot<R: rand::RngCore + ?Sized>(
    slot: Slot,
    millis_now: u64,
    rng: &mut R,
) -> Result<u128, MintError> {
    let random = u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64());
    id_in_slot(slot, millis_now, random)
}

/// A fresh time-ordered id in the slot of `account_id`: an account minted this way shares
/// `account_id`'s group now and after any move of slots (slots move whole).
pub fn mint_near<R: rand::RngCore + ?Sized>(
    account_id: u128,
    millis_now: u64,
    rng: &mut R,
) -> Result<u128, MintError> {
    mint_in_slot(slot_of(account_id), millis_now, rng)
}

/// The deterministic construction behind [`mint_in_slot`], from 68 random bits taken from
/// `random` (its low 68 bits; the rest are ignored):
///
/// ```text
/// hi = millis_now << 16 | (random & 0xffff)
/// h  = slot << 52 | ((random >> 16) & (2^52 - 1))
/// lo = fmix64⁻¹(h) XOR fmix64(hi)
/// id = hi << 64 | lo          (if that is 0 or 2^128 - 1: hi ^= 1, then lo again)
/// ```
///
/// `fmix64⁻¹` undoes each step of `fmix64` in reverse order: `x ^= x >> 33` is its own
/// inverse, and each multiplication is undone by the constant's inverse modulo 2^64.
pub fn id_in_slot(slot: Slot, millis_now: u64, random: u128) -> Result<u128, MintError> {
    if millis_now > ID_TIMESTAMP_MS_MAX {
        return Err(MintError::TimestampTooLarge {
            millis: millis_now,
            max: ID_TIMESTAMP_MS_MAX,
        });
    }
    let mixed = u64::from(slot.0) << (64 - SLOT_BITS) | (random >> 16) as u64 & ((1 << 52) - 1);
    let solve = |hi: u64| u128::from(hi) << 64 | u128::from(fmix64_inverse(mixed) ^ fmix64(hi));
    let hi = millis_now << 16 | (random & 0xffff) as u64;
    let mut id = solve(hi);
    if id == 0 || id == u128::MAX {
        // Only with a timestamp of 0 or 2^48 - 1 and unlucky random bits; flipping one bit of
        // hi makes the id neither (hi is then neither 0 nor all ones) and stays in the slot.
        id = solve(hi ^ 1);
    }
    debug_assert_eq!(slot_of(id), slot);
    debug_assert!(id != 0 && id != u128::MAX);
    Ok(id)
}

fn mix(id: u128) -> u64 {
    let (hi, lo) = ((id >> 64) as u64, id as u64);
    fmix64(fmix64(hi) ^ lo)
}

fn fmix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(FMIX_C1);
    x ^= x >> 33;
    x = x.wrapping_mul(FMIX_C2);
    x ^ (x >> 33)
}

fn fmix64_inverse(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(FMIX_C2_INVERSE);
    x ^= x >> 33;
    x = x.wrapping_mul(FMIX_C1_INVERSE);
    x ^ (x >> 33)
}

/// The inverse of an odd number modulo 2^64, by Newton's iteration (each step doubles the
/// correct low bits: 3, 6, 12, 24, 48, 96).
const fn inverse_mod_2_64(odd: u64) -> u64 {
    assert!(odd % 2 == 1);
    let mut inverse = odd;
    let mut step = 0;
    while step < 5 {
        inverse = inverse.wrapping_mul(2u64.wrapping_sub(odd.wrapping_mul(inverse)));
        step += 1;
    }
    inverse
}

#[cfg(test)]
mod tests {
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// A change to `slot_of` moves accounts between groups: these values must never change.
    #[test]
    fn slot_of_matches_its_golden_values() {
        let golden: [(u128, u32); 10] = [
            (0, 0),
            (1, 2885),
            (2, 939),
            (1000, 2800),
            (4096, 3224),
            (u128::from(u64::MAX), 1611),
            (1 << 64, 2006),
            (u128::MAX, 952),
            (0x0123_4567_89ab_cdef_fedc_ba98_7654_3210, 1780),
            (0x0192_3b4c_5d6e_7f80_1122_3344_5566_7788, 2713),
        ];
        let found: Vec<(u128, u32)> = golden
            .iter()
            .map(|&(id, _)| (id, slot_of(id).index()))
            .collect();
        assert_eq!(found, golden);
    }

    #[test]
    fn the_inverse_constants_are_the_documented_ones() {
        assert_eq!(FMIX_C1_INVERSE, 0x4f74_430c_22a5_4005);
        assert_eq!(FMIX_C2_INVERSE, 0x9cb4_b2f8_1293_37db);
    }

    #[test]
    fn fmix64_inverse_undoes_fmix64() {
        let mut rng = SmallRng::seed_from_u64(1);
        for x in [0, 1, u64::MAX, 1 << 63]
            .into_iter()
            .chain((0..10_000).map(|_| rng.random()))
        {
            assert_eq!(fmix64_inverse(fmix64(x)), x);
            assert_eq!(fmix64(fmix64_inverse(x)), x);
        }
    }

    /// A change to the construction changes which ids clients mint: pinned too.
    #[test]
    fn id_in_slot_matches_its_golden_values() {
        let cases: [(u32, u64, u128, u128); 4] = [
            (
                0,
                1_700_000_000_000,
                0,
                0x018b_cfe5_6800_0000_449e_f6a0_2f9e_8b86,
            ),
            (
                4095,
                1_700_000_000_000,
                u128::MAX,
                0x018b_cfe5_6800_ffff_a0bf_c517_ca6b_fddd,
            ),
            (
                1234,
                1_764_600_000_123,
                0x0123_4567_89ab_cdef_fedc_ba98_7654_3210,
                0x019a_da5b_2e7b_3210_7def_74b7_132b_b181,
            ),
            (7, 0, 0, 0x115b_2239_979f_399e),
        ];
        let found: Vec<(u32, u64, u128, u128)> = cases
            .iter()
            .map(|&(slot, millis, random, _)| {
                let slot = Slot::new(slot).expect("a slot");
                (
                    slot.index(),
                    millis,
                    random,
                    id_in_slot(slot, millis, random).expect("mints"),
                )
            })
            .collect();
        assert_eq!(found, cases);
    }

    #[test]
    fn every_minted_id_is_in_its_slot_and_carries_its_timestamp() {
        let mut rng = SmallRng::seed_from_u64(2);
        for _ in 0..200_000 {
            let slot = Slot::new(rng.random_range(0..SLOTS)).expect("a slot");
            let millis = rng.random_range(0..=ID_TIMESTAMP_MS_MAX);
            let id = mint_in_slot(slot, millis, &mut rng).expect("mints");
            assert_eq!(slot_of(id), slot);
            assert_eq!((id >> 80) as u64, millis);
            assert!(id != 0 && id != u128::MAX);
        }
    }

    #[test]
    fn ids_minted_in_later_milliseconds_sort_after_earlier_ones() {
        let mut rng = SmallRng::seed_from_u64(3);
        let slot = Slot::new(99).expect("a slot");
        let ids: Vec<u128> = (1_700_000_000_000..1_700_000_010_000)
            .map(|millis| mint_in_slot(slot, millis, &mut rng).expect("mints"))
            .collect();
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]));
    }

    #[test]
    fn minting_never_yields_zero_or_all_ones_even_at_the_timestamp_extremes() {
        for slot in Slot::all() {
            for (millis, random) in [(0, 0), (ID_TIMESTAMP_MS_MAX, u128::MAX)] {
                let id = id_in_slot(slot, millis, random).expect("mints");
                assert!(id != 0 && id != u128::MAX, "slot {slot}: minted {id:#x}");
                assert_eq!(slot_of(id), slot);
            }
        }
    }

    #[test]
    fn the_two_extreme_ids_would_be_minted_without_the_bit_flip() {
        // Proves the guard in `id_in_slot` is reachable, not dead code: the raw construction
        // yields 0 and u128::MAX for the slots of 0 and u128::MAX.
        let raw = |slot: Slot, hi: u64, random: u128| {
            let mixed = u64::from(slot.0) << 52 | (random >> 16) as u64 & ((1 << 52) - 1);
            u128::from(hi) << 64 | u128::from(fmix64_inverse(mixed) ^ fmix64(hi))
        };
        let zero_random = u128::from(fmix64(0) & ((1 << 52) - 1)) << 16;
        assert_eq!(raw(slot_of(0), 0, zero_random), 0);
        let max_random =
            u128::from(fmix64(fmix64(u64::MAX) ^ u64::MAX) & ((1 << 52) - 1)) << 16 | 0xffff;
        assert_eq!(raw(slot_of(u128::MAX), u64::MAX, max_random), u128::MAX);
        assert_ne!(id_in_slot(slot_of(0), 0, zero_random), Ok(0));
        assert_ne!(
            id_in_slot(slot_of(u128::MAX), ID_TIMESTAMP_MS_MAX, max_random),
            Ok(u128::MAX)
        );
    }

    #[test]
    fn a_timestamp_past_48_bits_is_refused() {
        let mut rng = SmallRng::seed_from_u64(4);
        let slot = Slot::new(0).expect("a slot");
        assert_eq!(
            mint_in_slot(slot, ID_TIMESTAMP_MS_MAX + 1, &mut rng),
            Err(MintError::TimestampTooLarge {
                millis: ID_TIMESTAMP_MS_MAX + 1,
                max: ID_TIMESTAMP_MS_MAX
            })
        );
    }

    #[test]
    fn an_id_minted_near_an_account_shares_its_slot() {
        let mut rng = SmallRng::seed_from_u64(5);
        for merchant in [1u128, 42_000, 1 << 100, u128::MAX - 1] {
            let sub = mint_near(merchant, 1_764_600_000_000, &mut rng).expect("mints");
            assert_eq!(slot_of(sub), slot_of(merchant));
        }
    }

    #[test]
    fn slot_numbers_past_the_last_are_refused() {
        assert_eq!(Slot::new(SLOTS - 1).map(Slot::index), Some(SLOTS - 1));
        assert_eq!(Slot::new(SLOTS), None);
        assert!(Slot::try_from(SLOTS).is_err());
        assert_eq!(Slot::all().len(), SLOTS as usize);
    }

    /// Counts per slot of `ids`, with the chi-square statistic against a uniform spread and
    /// the smallest and largest count.
    fn spread(ids: impl Iterator<Item = u128>) -> (f64, u64, u64, u64) {
        let mut counts = vec![0u64; SLOTS as usize];
        let mut total = 0u64;
        for id in ids {
            counts[slot_of(id).index() as usize] += 1;
            total += 1;
        }
        let expected = total as f64 / f64::from(SLOTS);
        let chi_square = counts
            .iter()
            .map(|&c| (c as f64 - expected).powi(2) / expected)
            .sum();
        let min = counts.iter().copied().min().unwrap_or(0);
        let max = counts.iter().copied().max().unwrap_or(0);
        (chi_square, min, max, total)
    }

    /// Bounds for 1M ids over 4096 slots (expected 244.1 a slot): chi-square with 4095 degrees
    /// of freedom has mean 4095 and standard deviation 90.5; we allow mean + 6 sd (4638, a
    /// chance of about 1e-9 for truly random ids). Every slot within ±40 % of the mean (more
    /// than 6 sd of a slot's count, 15.6).
    fn assert_even(scheme: &str, ids: impl Iterator<Item = u128>) {
        let (chi_square, min, max, total) = spread(ids);
        let expected = total as f64 / f64::from(SLOTS);
        let degrees = f64::from(SLOTS - 1);
        let chi_square_max = degrees + 6.0 * (2.0 * degrees).sqrt();
        assert!(
            chi_square < chi_square_max,
            "{scheme}: chi-square {chi_square:.0} ≥ {chi_square_max:.0}"
        );
        assert!(
            min as f64 > 0.6 * expected,
            "{scheme}: a slot has only {min} ids, mean {expected:.1}"
        );
        assert!(
            (max as f64) < 1.4 * expected,
            "{scheme}: a slot has {max} ids, mean {expected:.1}"
        );
    }

    const IDS_PER_SCHEME: u128 = 1_000_000;

    #[test]
    fn sequential_ids_spread_evenly() {
        assert_even("1..=N", 1..=IDS_PER_SCHEME);
    }

    #[test]
    fn multiples_of_1000_spread_evenly() {
        assert_even("k*1000", (1..=IDS_PER_SCHEME).map(|k| k * 1000));
    }

    #[test]
    fn multiples_of_4096_spread_evenly() {
        assert_even("k*4096", (1..=IDS_PER_SCHEME).map(|k| k * 4096));
    }

    #[test]
    fn ids_varying_only_in_the_high_half_spread_evenly() {
        assert_even("k<<64", (1..=IDS_PER_SCHEME).map(|k| k << 64));
    }

    #[test]
    fn time_based_ids_with_random_low_bits_spread_evenly() {
        let mut rng = SmallRng::seed_from_u64(6);
        let start_ms: u128 = 1_764_600_000_000;
        // 100 ids a millisecond: TigerBeetle's layout, 48-bit timestamp then 80 random bits.
        let ids = (0..IDS_PER_SCHEME).map(move |n| {
            let random = rng.random::<u128>() & ((1 << 80) - 1);
            (start_ms + n / 100) << 80 | random
        });
        assert_even("time-based, random low", ids);
    }

    #[test]
    fn time_based_ids_counting_up_within_a_millisecond_spread_evenly() {
        // TigerBeetle's monotonic variant: a random start per millisecond, then +1 per id.
        let mut rng = SmallRng::seed_from_u64(7);
        let start_ms: u128 = 1_764_600_000_000;
        let mut base = 0u128;
        let ids = (0..IDS_PER_SCHEME).map(move |n| {
            if n % 1000 == 0 {
                base = rng.random::<u128>() & ((1 << 79) - 1);
            }
            (start_ms + n / 1000) << 80 | (base + n % 1000)
        });
        assert_even("time-based, monotonic low", ids);
    }

    #[test]
    fn minted_ids_spread_over_slots_by_the_slots_asked_for() {
        let mut rng = SmallRng::seed_from_u64(8);
        let mut slots = SmallRng::seed_from_u64(9);
        let ids = (0..IDS_PER_SCHEME).map(move |n| {
            let slot = Slot::new(slots.random_range(0..SLOTS)).expect("a slot");
            mint_in_slot(slot, 1_764_600_000_000 + n as u64 / 100, &mut rng).expect("mints")
        });
        assert_even("minted in random slots", ids);
    }
}
