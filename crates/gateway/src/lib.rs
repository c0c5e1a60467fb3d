//! The gateway: fincore's client API (the node's gRPC service and HTTP routes, served by
//! `server::front`) over many ledger groups. It holds no ledger state and nothing a restart
//! would lose: run as many as you like.
//!
//! Owns routing ([`Gateway`]: split a batch by the group of every id its events name under the
//! cluster map, send the parts to their groups in parallel, give the results back dense and in
//! the caller's order; answer queries from the group of the id asked) and the connections to
//! the groups ([`Groups`]: one client per group, following its leader). Must not hold ledger
//! rules (every event's result is its group's), nor decide placement (the `cluster` crate
//! does), nor serve sockets itself.
//!
//! Change events ([`Gateway`] as a `server::events::EventSource`, the `events` module): a
//! page or a subscription of the group a call names, from a replica of that group, resumed on
//! another replica when the one followed fails.
//!
//! Cross-group transfers ([`saga`]): a plain transfer whose ids live in different groups is
//! carried by a saga over copies in every group involved, decided in its home group; a
//! [`Resolver`] finishes sagas whose gateway died.
//!
//! Circuit breakers (`breakers`): under the flow rules' `breaker`, a group that fails or
//! stalls is not called for a while, so its callers are answered at once and the other
//! groups' traffic is unaffected.
//!
//! Not yet here (issue 12 continues): linked, two-phase, balancing, closing and imported
//! transfers across groups are refused whole, naming the event.

mod breakers;
mod coalesce;
mod events;
mod groups;
pub mod map_feed;
mod router;
pub mod saga;

pub use groups::{GroupAccess, Groups, GroupsError};
pub use router::{Gateway, ReloadError};
pub use saga::Resolver;
