//! Measures what placement costs on this machine: `slot_of` and `mint_in_slot` per call.
//! Run with `cargo run --release -p cluster --example mint_cost`; `docs/placement.md` quotes
//! the figures.

use std::hint::black_box;
use std::time::Instant;

use cluster::{SLOTS, Slot, mint_in_slot, slot_of};
use rand::SeedableRng;
use rand::rngs::SmallRng;

const CALLS: u32 = 10_000_000;

fn main() {
    let started = Instant::now();
    let mut sum = 0u64;
    for n in 0..CALLS {
        sum += u64::from(slot_of(black_box(u128::from(n) * 0x9e37_79b9)).index());
    }
    let slot_of_ns = started.elapsed().as_nanos() as f64 / f64::from(CALLS);
    black_box(sum);

    let mut rng = SmallRng::seed_from_u64(1);
    let started = Instant::now();
    for n in 0..CALLS {
        let slot = Slot::new(n % SLOTS).expect("n % SLOTS is a slot");
        let id = mint_in_slot(slot, 1_764_600_000_000 + u64::from(n / 1000), &mut rng);
        black_box(id.expect("a timestamp within 48 bits"));
    }
    let mint_ns = started.elapsed().as_nanos() as f64 / f64::from(CALLS);
    println!(
        "slot_of: {slot_of_ns:.1} ns a call; mint_in_slot: {mint_ns:.1} ns a call ({CALLS} calls each)"
    );
}
