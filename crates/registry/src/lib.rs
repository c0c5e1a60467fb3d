//! fincore's service registry (docs/registry.md): publishers register records (a service
//! address with attributes) under a data key; subscribers to a key receive its whole current
//! set by server push, versioned and compressed; a host's records are drained in one call.
//!
//! Layers, as in SOFARegistry: [`store`] holds the data (sharded by slot: the data layer),
//! [`session`] the client streams and the push path (the session layer), [`service`] the gRPC
//! protocol, [`xds`] Envoy's aggregated discovery over the same sessions (the mesh feed),
//! [`relay`] the config-style values watchers receive (relayed from a config center),
//! [`client`] the Rust client that reconnects and re-registers by itself. All run in one
//! process for now.
//!
//! Must not know the ledger, nor authenticate (the embedding server checks API keys and says
//! what a caller may do in [`Rights`]).

pub mod client;
pub mod names;
pub mod relay;
pub mod service;
pub mod session;
pub mod store;
pub mod xds;

/// The registry's protobuf protocol (`proto/fincore/registry/v1/registry.proto`).
pub mod proto {
    tonic::include_proto!("fincore.registry.v1");
}

pub use names::{DataKey, Refusal};
pub use relay::{ConfigValues, WatchedValue};
pub use service::RegistryService;
pub use session::{Registry, Rights, Settings};
pub use xds::XdsService;
