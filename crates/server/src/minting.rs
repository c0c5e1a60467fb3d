//! Fresh ids in a chosen slot for `GET /v1/ids`: the `cluster` crate's minting with this
//! process's clock and a random source seeded from the operating system per call.
//!
//! Owns only the clock and the randomness; the id layout and the slot function are
//! `cluster::placement`'s (documented in `docs/placement.md`).

use rand::SeedableRng;
use rand::rngs::SmallRng;

/// `count` fresh ids in the slot of `near`, or why none could be made (a clock before 1970 or
/// past the id layout's 48-bit milliseconds, or no random source).
pub(crate) fn mint_near(near: u128, count: usize) -> Result<Vec<u128>, String> {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| "this server's clock is before 1970".to_string())?
        .as_millis();
    let millis =
        u64::try_from(millis).map_err(|_| "this server's clock is too far ahead".to_string())?;
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|error| format!("no random source: {error}"))?;
    let mut rng = SmallRng::from_seed(seed);
    (0..count)
        .map(|_| cluster::mint_near(near, millis, &mut rng).map_err(|error| error.to_string()))
        .collect()
}
