//! The ledger: fincore's double-entry accounting core as a pure, deterministic state machine.
//!
//! It owns the account and transfer model (field for field the model users know from
//! TigerBeetle), the per-event result codes and their precedence, the rules for linked chains,
//! idempotent ids, two-phase transfers with timeouts, balance limits and closing accounts, the
//! steps a group takes in a cross-group saga (copies booked against clearing balances), the
//! history queries, the canonical snapshot of all of it, and the arithmetic of its declared
//! capacity (what an account and a transfer cost in memory, and the admission check).
//!
//! It must not do I/O, read a clock, draw random numbers or let hash-map iteration order reach
//! its results: `(state, batch) -> (state', results)` is a pure function, which is what lets the
//! journal replay, replicas and the simulator agree bit for bit. Time enters only as the
//! timestamp a batch was sealed with.

mod batch;
mod capacity;
mod codec;
mod events;
mod history;
mod query;
mod results;
mod saga;
mod snapshot;
mod state;
mod types;
mod wide;

#[cfg(feature = "test-scenarios")]
pub mod scenarios;

pub use batch::{Batch, BatchBody, BatchDecodeError, Operation};
pub use capacity::{Capacity, CapacityError, Occupancy};
pub use codec::{
    ACCOUNT_SIZE, TRANSFER_SIZE, decode_account, decode_transfer, encode_account, encode_transfer,
};
pub use events::{
    Balances, BatchMarker, EVENT_ENCODED_BYTES, EVENT_SCHEMA_VERSION, Event, EventBody,
    EventDecodeError, EventKind, TransferChange,
};
pub use limits::BATCH_EVENTS_MAX;
pub use query::{AccountBalance, AccountFilter, AccountFilterFlags, QueryError, TransferOutcome};
pub use results::{CreateAccountResult, CreateTransferResult, EventResult};
pub use saga::{ClearingBalance, RemoteSides, SagaAction, SagaCopy, SagaState, SagaStep};
pub use snapshot::{SnapshotError, SnapshotWriter, StateDigest};
pub use state::{BatchResults, StateMachine};
pub use types::{Account, AccountFlags, Transfer, TransferFlags, TransferPendingStatus};
pub use wide::{Wide, WideBalances};

/// Largest timestamp fincore assigns or accepts (`2^63 - 1` nanoseconds since the epoch).
pub const TIMESTAMP_MAX: u64 = (1 << 63) - 1;
