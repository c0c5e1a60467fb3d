//! A running node: one replica of a Raft group (a group of one by default) with the gRPC
//! ledger API, the replica transport (same gRPC port) and the HTTP API, started and stopped
//! as one. How the node enters its group (resume, bootstrap, join) is decided by
//! `replication::membership` before the replica opens its directory.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use api::proto::ledger_server::LedgerServer;
use replication::membership::{self, Entry, GroupId, MembershipError};
use replication::{NodeId, PeerNode, Replica, ReplicaConfig};
use telemetry::Metrics;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::access::{Access, GrpcAccess};
use crate::auth::Auth;
use crate::connections;
use crate::grpc::{GRPC_MESSAGE_BYTES_MAX, LedgerService};
use crate::http;
use crate::pipeline::{Pipeline, PipelineTask};

/// How a node runs.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub data_dir: PathBuf,
    /// Port 0 picks a free port; [`Node::grpc_addr`] tells which.
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// This replica's id in its group.
    pub node_id: NodeId,
    /// The initial members when `entry` creates a group, this node included. Empty: a group
    /// of one (this node, at the addresses it actually listens on). Otherwise unused: the
    /// members are in the replica's log.
    pub peers: BTreeMap<NodeId, PeerNode>,
    /// How this start enters the group: resume the replica in `data_dir` (the default),
    /// create a new group there, or join one.
    pub entry: Entry,
    /// Write requests that may wait to be batched before new ones are refused as busy.
    pub queue_depth: usize,
    /// What the ledger may hold: a write that could pass it is refused at admission (before
    /// it is proposed) with `PipelineError::CapacityReached`. Only this node's admission uses
    /// it, so replicas may differ; a leader's capacity should not exceed what its followers
    /// can hold.
    pub capacity: ledger::Capacity,
    pub replica: ReplicaConfig,
    /// Who may call the client APIs. [`NodeConfig::new`] leaves them open (embedded and test
    /// nodes); `fincore serve` requires keys unless told `--insecure-no-auth`.
    pub auth: Auth,
}

// `replica.peer_routes` overrides how this node reaches peers (e.g. through local proxies),
// while `peers` stays what the group advertises to clients.

impl NodeConfig {
    pub fn new(
        data_dir: impl Into<PathBuf>,
        grpc_addr: SocketAddr,
        http_addr: SocketAddr,
    ) -> NodeConfig {
        NodeConfig {
            data_dir: data_dir.into(),
            grpc_addr,
            http_addr,
            node_id: 1,
            peers: BTreeMap::new(),
            entry: Entry::Resume,
            queue_depth: limits::SERVER_QUEUE_REQUESTS_DEFAULT,
            capacity: ledger::Capacity::FORMAT_MAX,
            replica: ReplicaConfig::default(),
            auth: Auth::Open,
        }
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("opening the replica in {dir}: {source}")]
    Replica {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {addr} for {what}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Membership(#[from] MembershipError),
}

/// A running node.
pub struct Node {
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    pipeline: Pipeline,
    task: PipelineTask,
    stop: watch::Sender<bool>,
    servers: Vec<JoinHandle<()>>,
    group: Option<GroupId>,
    awaiting_admission: bool,
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, NodeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| NodeError::Bind { what, addr, source })
}

impl Node {
    /// Checks that this start may use the data directory (see `replication::membership`),
    /// opens the replica, starts serving, and completes a pending bootstrap (initializes the
    /// new group with its initial members).
    pub async fn start(config: NodeConfig) -> Result<Node, NodeError> {
        let grpc_listener = bind("gRPC", config.grpc_addr).await?;
        let http_listener = bind("HTTP", config.http_addr).await?;
        let grpc_addr = grpc_listener
            .local_addr()
            .expect("a bound listener has an address");
        let http_addr = http_listener
            .local_addr()
            .expect("a bound listener has an address");
        let peers = if config.peers.is_empty() {
            BTreeMap::from([(
                config.node_id,
                PeerNode {
                    grpc: grpc_addr.to_string(),
                    http: http_addr.to_string(),
                },
            )])
        } else {
            config.peers.clone()
        };
        let prepared =
            membership::prepare(&config.data_dir, config.node_id, &config.entry, &peers)?;

        let metrics = Metrics::new();
        let sync_metrics = Arc::clone(&metrics);
        let replica_config = ReplicaConfig {
            sync_observer: Some(Arc::new(move |elapsed, records| {
                sync_metrics.journal_sync(elapsed, records)
            })),
            ..config.replica.clone()
        };
        let replica = Replica::open(config.node_id, &config.data_dir, &replica_config)
            .await
            .map_err(|source| NodeError::Replica {
                dir: config.data_dir.clone(),
                source,
            })?;
        let replica = Arc::new(replica);
        tracing::info!(data_dir = %config.data_dir.display(), node_id = config.node_id, members = peers.len(), "replica opened");
        let (pipeline, task) = Pipeline::start(
            Arc::clone(&replica),
            config.queue_depth,
            config.capacity,
            metrics,
        );
        let (stop, stopped) = watch::channel(false);

        let ledger = LedgerServer::new(LedgerService::new(pipeline.clone()))
            .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX);
        let access = Access {
            auth: config.auth.clone(),
            metrics: Arc::clone(pipeline.metrics()),
        };
        let ledger = GrpcAccess::new(ledger, access);
        let transport = replica.transport_service();
        let mut grpc_stop = stopped.clone();
        connections::raise_open_files_limit(2 * limits::CONNECTIONS_PER_LISTENER_MAX as u64 + 1024);
        let incoming =
            connections::grpc_incoming(grpc_listener, limits::CONNECTIONS_PER_LISTENER_MAX);
        let keepalive = Duration::from_secs(limits::GRPC_KEEPALIVE_SECONDS);
        let grpc = tokio::spawn(async move {
            let signal = async move {
                let _ = grpc_stop.wait_for(|stop| *stop).await;
            };
            let server = tonic::transport::Server::builder()
                // Whole batches are ~1 MiB: default 64 KiB HTTP/2 windows would stall them.
                .initial_stream_window_size(Some(limits::HTTP2_STREAM_WINDOW_BYTES))
                .initial_connection_window_size(Some(limits::HTTP2_CONNECTION_WINDOW_BYTES))
                .max_concurrent_streams(Some(limits::GRPC_STREAMS_PER_CONNECTION_MAX))
                .http2_keepalive_interval(Some(keepalive))
                .http2_keepalive_timeout(Some(keepalive))
                .tcp_keepalive(Some(keepalive))
                .add_service(ledger)
                .add_service(transport);
            if let Err(error) = server.serve_with_incoming_shutdown(incoming, signal).await {
                tracing::error!(%error, "the gRPC server stopped");
            }
        });
        let router = http::router(pipeline.clone(), config.auth.clone());
        let mut http_stop = stopped;
        let http = tokio::spawn(async move {
            let signal = async move {
                let _ = http_stop.wait_for(|stop| *stop).await;
            };
            connections::serve_http(
                http_listener,
                router,
                limits::CONNECTIONS_PER_LISTENER_MAX,
                Duration::from_secs(limits::HTTP_HEADER_READ_SECONDS_MAX),
                Duration::from_secs(limits::HTTP_SHUTDOWN_GRACE_SECONDS),
                signal,
            )
            .await;
        });

        let bootstrapped = match prepared.finish_bootstrap(&replica).await {
            Ok(done) => done,
            Err(error) => {
                tracing::warn!(%error, "initializing the new group failed");
                false
            }
        };
        if bootstrapped {
            tracing::info!(group = ?prepared.group, members = ?prepared.bootstrap, "created a new group");
        }
        let awaiting_admission = !replica.is_initialized().await;
        // A group of one elects itself at once; wait for that so the first request succeeds.
        let alone = match &prepared.bootstrap {
            Some(members) if bootstrapped => members.len() == 1,
            _ => replica.members().len() == 1,
        };
        if alone {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while replica.leader().is_none() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        Ok(Node {
            grpc_addr,
            http_addr,
            pipeline,
            task,
            stop,
            servers: vec![grpc, http],
            group: prepared.group,
            awaiting_admission,
        })
    }

    /// The group this node's directory belongs to (`None`: made before group ids existed).
    pub fn group(&self) -> Option<&GroupId> {
        self.group.as_ref()
    }

    /// True if, when it started, the replica had neither log nor votes and was not creating a
    /// group: a new member waiting for the leader to add it (`fincore admin add-replica`).
    pub fn awaiting_admission(&self) -> bool {
        self.awaiting_admission
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn replica(&self) -> &Arc<Replica> {
        self.pipeline.replica()
    }

    /// Stops accepting requests, lets the ones in progress finish (for at most
    /// `HTTP_SHUTDOWN_GRACE_SECONDS`: a client that stopped answering must not hold the node
    /// up until its keepalive times out), stops Raft: writes still in flight
    /// `SERVER_SHUTDOWN_WRITES_GRACE_SECONDS` after that are answered unavailable (see
    /// [`PipelineTask::stop`]).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let grace = Duration::from_secs(limits::HTTP_SHUTDOWN_GRACE_SECONDS);
        let deadline = tokio::time::Instant::now() + grace;
        for mut server in self.servers {
            if tokio::time::timeout_at(deadline, &mut server)
                .await
                .is_err()
            {
                tracing::warn!(
                    "connections still open after the shutdown grace period; closing them"
                );
                server.abort();
                let _ = server.await;
            }
        }
        // Each stage is logged, so that a stop that takes long shows where it waits.
        tracing::info!("servers stopped; stopping the write pipeline and Raft");
        drop(self.pipeline);
        let writes_grace = Duration::from_secs(limits::SERVER_SHUTDOWN_WRITES_GRACE_SECONDS);
        self.task.stop(writes_grace).await;
        tracing::info!("Raft stopped");
    }
}
