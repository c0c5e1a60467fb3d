//! Helpers for the registry's tests: a registry served in this process.

use std::net::SocketAddr;

use server::auth::Auth;
use server::registry_node::RegistryNode;

/// A registry in this process on free loopback ports, authenticating nobody, without TLS.
pub async fn open_registry(settings: registry::Settings) -> RegistryNode {
    let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
    RegistryNode::start(listen, listen, Auth::Open, settings, None)
        .await
        .expect("a registry")
}
