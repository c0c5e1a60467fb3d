//! Watchers' config-style values: what the registry relays from a config center (fincore's is
//! the meta group's, `docs/config-center.md`), as the embedding process hands it over at each
//! revision. The registry pushes each watcher its key's value for that client whenever it
//! changes (`session`).
//!
//! Owns the shape of what is relayed; must not know where it comes from (the embedding process
//! reads the config center) nor how gray releases choose (the source decides, per client).

use std::fmt::Debug;

/// A config center as of one revision, as the registry relays it.
pub trait ConfigValues: Send + Sync + Debug {
    /// The config center's revision this holds.
    fn revision(&self) -> u64;

    /// `key`'s value for the client named `client` in `zone` (a gray release staged for it
    /// when one chooses it, otherwise the value in use); `None` when the key is not set.
    fn value_for(&self, key: &str, client: &str, zone: &str) -> Option<WatchedValue>;

    /// [`WatchedValue::made_at`] of that value, without copying it (the cheap test of whether
    /// a watcher already holds it).
    fn made_at(&self, key: &str, client: &str, zone: &str) -> Option<u64>;
}

/// A key's value for one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchedValue {
    pub value: String,
    /// The version of the key's value in use.
    pub version: u64,
    /// True when `value` is a gray release staged for this client.
    pub gray: bool,
    /// The config center's revision that made this value (the value in use's, or the gray
    /// release's): two values of a key with the same one are the same value.
    pub made_at: u64,
}
