//! Placement of accounts on fincore's Raft groups: the foundation of scale-out (issue 12).
//!
//! An account id maps to one of [`SLOTS`] slots by a fixed, documented function
//! ([`slot_of`]); the versioned cluster map ([`ClusterMap`]) maps every slot to one ledger
//! group and names each group's members; [`route`] splits a caller's batch into per-group parts
//! and merges the parts' results back into the caller's order. Ids can be minted into a chosen
//! slot ([`mint_in_slot`], [`mint_near`]), which is how accounts are kept together: same slot,
//! same group, always, because slots move between groups only whole.
//!
//! This crate is pure: no I/O, no clock, no threads, no randomness of its own (callers pass
//! the time and a random source). It must not depend on `replication`, `server` or openraft:
//! the Rust client uses it to mint ids and route locally. The map's limits are the constants
//! below; `docs/placement.md` is the user's description of all of it.

pub mod map;
pub mod placement;
pub mod route;

pub use map::{ClusterMap, GroupId, MapError, Member, Members, NodeId, Refusal, SuccessorError};
pub use placement::{
    ID_TIMESTAMP_MS_MAX, MintError, SLOTS, Slot, id_in_slot, mint_in_slot, mint_near, slot_of,
};

/// Most ledger groups a map may name. The reference deployment ran 667 groups; beyond
/// a quarter of the slots each group would own a sliver too thin to split further.
pub const GROUPS_MAX: usize = 1024;

/// Most members one group may list: five voters plus learners while replicas are replaced.
pub const GROUP_MEMBERS_MAX: usize = 9;

/// Longest address (`HOST:PORT` or a URL) of a member's listener, in bytes.
pub const ADDRESS_BYTES_MAX: usize = 256;

/// Largest JSON text [`ClusterMap::from_json`] reads; longer input is refused before parsing.
pub const MAP_JSON_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Bytes of a compact JSON map's fixed parts, generous: a member's `{"id":…,"grpc":"",
/// "http":"","peer":""},` without its addresses, a group's `{"id":"<32 hex>","members":[]},`,
/// a slot range's `{"first":4095,"last":4095,"group":"<32 hex>"},`.
const MEMBER_JSON_OVERHEAD_BYTES: usize = 64;
const GROUP_JSON_OVERHEAD_BYTES: usize = 64;
const SLOT_RANGE_JSON_BYTES: usize = 80;

// The largest valid map (every limit reached, every slot its own range) fits the JSON bound.
const _: () = assert!(
    GROUPS_MAX
        * (GROUP_JSON_OVERHEAD_BYTES
            + GROUP_MEMBERS_MAX * (MEMBER_JSON_OVERHEAD_BYTES + 3 * ADDRESS_BYTES_MAX))
        + SLOTS as usize * SLOT_RANGE_JSON_BYTES
        <= MAP_JSON_BYTES_MAX
);
const _: () = assert!(GROUPS_MAX <= SLOTS as usize);
