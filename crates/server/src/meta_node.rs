//! A running replica of the meta group (`fincore serve --meta`): the group's client API
//! (`fincore.v1.Meta`, see [`crate::meta_service`]) on the gRPC listener and the replica
//! transport on the peer listener, under the same keys, client TLS, peer TLS and membership
//! rules as a ledger node ([`crate::node`]); started and stopped as one.
//!
//! Its HTTP listener serves only health and metrics ([`crate::meta_http`]).
//!
//! Owns the wiring only; must not hold the map's rules (the `meta` crate does).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use meta::{MetaGroup, MetaState};
use replication::membership::GroupId;
use replication::{PeerNode, ReplicaConfig, SmallState};
use telemetry::Metrics;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::access::{Access, GrpcAccess};
use crate::connections;
use crate::front::{bind, local_addr};
use crate::meta_service::MetaService;
use crate::node::{
    NodeConfig, NodeError, enter_group, serve_peers, settle_membership, stop_servers,
    with_grpc_limits,
};

/// A running meta replica.
pub struct MetaNode {
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    peer_addr: SocketAddr,
    group: Arc<MetaGroup>,
    group_id: Option<GroupId>,
    awaiting_admission: bool,
    stop: watch::Sender<bool>,
    servers: Vec<JoinHandle<()>>,
}

impl MetaNode {
    /// Checks this start against the peer certificates and the directory, opens the meta
    /// replica, serves, and completes a pending bootstrap. `config`'s queue depth and capacity
    /// are not used.
    pub async fn start(config: NodeConfig) -> Result<MetaNode, NodeError> {
        let grpc_listener = bind("gRPC", config.grpc_addr).await?;
        let http_listener = bind("HTTP", config.http_addr).await?;
        let peer_listener = bind("peers", config.peer_addr).await?;
        let (grpc_addr, http_addr, peer_addr) = (
            local_addr(&grpc_listener),
            local_addr(&http_listener),
            local_addr(&peer_listener),
        );
        let peers = if config.peers.is_empty() {
            BTreeMap::from([(
                config.node_id,
                PeerNode {
                    grpc: grpc_addr.to_string(),
                    http: http_addr.to_string(),
                    peer: peer_addr.to_string(),
                },
            )])
        } else {
            config.peers.clone()
        };
        let (peer_tls, prepared) = enter_group(&config, &peers, <MetaState as SmallState>::KIND)?;
        let metrics = Metrics::for_service(telemetry::Service::MetaReplica);
        let sync_metrics = Arc::clone(&metrics);
        let replica_config = ReplicaConfig {
            sync_observer: Some(Arc::new(move |elapsed, records| {
                sync_metrics.journal_sync(elapsed, records)
            })),
            peer_tls: peer_tls.clone(),
            events: false,
            ..config.replica.clone()
        };
        let group = MetaGroup::open(config.node_id, &config.data_dir, &replica_config)
            .await
            .map_err(|source| NodeError::Replica {
                dir: config.data_dir.clone(),
                source,
            })?;
        let group = Arc::new(group);
        tracing::info!(data_dir = %config.data_dir.display(), node_id = config.node_id, "meta replica opened");
        // Ends by itself when Raft stops.
        group.replica().export_raft_metrics(Arc::clone(&metrics));
        let (stop, stopped) = watch::channel(false);
        let peers_server = serve_peers(peer_listener, group.replica(), peer_tls, stopped.clone());

        let access = Access {
            auth: config.auth.clone(),
            metrics: Arc::clone(&metrics),
            // The meta group's own calls: default pools, no rules (it serves gateways and
            // operators, not client traffic).
            flow: Arc::new(flow::Gate::new(flow::Rules::default())),
        };
        let router = crate::meta_http::router(
            Arc::clone(&group),
            Arc::clone(&metrics),
            access.clone(),
            stopped.clone(),
        );
        let service = GrpcAccess::new(
            MetaService::new(Arc::clone(&group), metrics, stopped.clone()),
            access,
            prepared.group.as_ref().map(ToString::to_string),
        );
        let incoming =
            connections::grpc_incoming(grpc_listener, limits::CONNECTIONS_PER_LISTENER_MAX);
        let builder = crate::node::grpc_server(config.client_tls.as_ref())?;
        let mut grpc_stop = stopped.clone();
        let grpc = tokio::spawn(async move {
            let signal = async move {
                let _ = grpc_stop.wait_for(|stop| *stop).await;
            };
            let server = with_grpc_limits(builder).add_service(service);
            if let Err(error) = server.serve_with_incoming_shutdown(incoming, signal).await {
                tracing::error!(%error, "the meta replica's gRPC server stopped");
            }
        });

        let http = connections::spawn_client_http(
            http_listener,
            router,
            config.client_tls.as_ref(),
            stopped.clone(),
        );

        let awaiting_admission = settle_membership(&prepared, group.replica()).await;
        Ok(MetaNode {
            grpc_addr,
            http_addr,
            peer_addr,
            group,
            group_id: prepared.group,
            awaiting_admission,
            stop,
            servers: vec![peers_server, grpc, http],
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// Where health and metrics are served.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Where the group's other replicas reach this one's transport.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// The meta group this replica belongs to (`None`: not known from its directory).
    pub fn group_id(&self) -> Option<&GroupId> {
        self.group_id.as_ref()
    }

    /// True if, when it started, the replica was a new member waiting to be added.
    pub fn awaiting_admission(&self) -> bool {
        self.awaiting_admission
    }

    /// The meta replica (its map, status and membership).
    pub fn group(&self) -> &Arc<MetaGroup> {
        &self.group
    }

    /// Ends open watches, lets calls in progress finish (at most `HTTP_SHUTDOWN_GRACE_SECONDS`),
    /// then stops Raft.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        stop_servers(self.servers).await;
        self.group.shutdown().await;
    }
}
