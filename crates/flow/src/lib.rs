//! Flow control in front of the client API: rate limits per API and per caller (GCRA with an
//! optional warm-up), bounded pools per request kind with a bounded queue and a per-caller
//! share and optional adaptive protection (shedding what a slow pool cannot serve), and
//! switches (read-only, APIs turned off), all read from one set of [`Rules`] that
//! can be replaced while requests run. [`FlowLayer`] puts it in front of any `http` service
//! (the node's and the gateway's gRPC services and HTTP routes). A [`Breaker`] keeps the
//! circuit-breaker state of one callee (a gateway's group) under the rules' `breaker`;
//! [`Gate::admit_accounts`] limits the transfers naming any one account (`hot_accounts`).
//!
//! Owns the decisions and their state. It must not know how a caller authenticated or what a
//! request does: the front end says which [`Api`] a request calls and who the caller is, and
//! answers a [`Rejection`] in its own protocol. Every rejection is cheap (no I/O, a few locks)
//! and carries its reason and when to retry.

mod adaptive;
mod api;
mod breaker;
mod gate;
mod hot;
mod layer;
mod pool;
mod rate;
mod rules;

pub use api::{Api, Kind};
pub use breaker::{Admission, Breaker, BreakerState, CallOutcome, Open};
pub use gate::{Gate, Permit, Reason, Rejection};
pub use hot::{AccountCounts, HotRefusal};
pub use layer::{Classify, FlowLayer, FlowService};
pub use rules::{
    AdaptiveRule, BreakerRule, HotAccountRule, PoolRule, Pools, RateRule, Rules, RulesError,
    Switches,
};
