//! The engine: one ledger node embedded in a process, with no network.
//!
//! It owns the data directory (`journal/`, `checkpoints/`, an exclusive `LOCK`), seals batches
//! with a timestamp, journals them with group commit, applies them to the state machine, and
//! acknowledges nothing before its record is durable. On open it recovers: latest checkpoint,
//! then the journal tail. `verify` re-proves a data directory from genesis.
//!
//! It must not know about sockets or wire formats (the server crate wraps it) and must not let
//! the wall clock reach the state machine except as a batch's sealing timestamp.

mod engine;
mod error;
mod verify;

pub use engine::{Engine, EngineOptions, OpenReport};
pub use error::EngineError;
pub use verify::{VerifyReport, verify};
