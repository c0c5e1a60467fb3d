//! A running node: one replica of a Raft group (a group of one by default) with its client
//! listeners (the gRPC ledger API, the HTTP API) and its peer listener (the replica
//! transport, mutual TLS under the group's authority unless told [`PeerSecurity::Insecure`]),
//! started and stopped as one. How the node enters its group (resume, bootstrap, join) is
//! decided by `replication::membership` before the replica opens its directory.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use replication::membership::{self, Entry, GroupId, MembershipError};
use replication::peer_tls::{CertificateFiles, PeerTls, PeerTlsError};
use replication::{NodeId, PeerNode, Replica, ReplicaConfig, ReplicaMachine};
use telemetry::Metrics;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::auth::Auth;
use crate::client_tls::ClientTls;
use crate::connections;
use crate::front::{self, bind, local_addr};
use crate::pipeline::{Pipeline, PipelineTask};

/// How a node runs.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub data_dir: PathBuf,
    /// Port 0 picks a free port; [`Node::grpc_addr`] tells which.
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// Where the other replicas of the group send Raft messages.
    pub peer_addr: SocketAddr,
    /// How the replicas of the group prove who they are to each other.
    pub peer_security: PeerSecurity,
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
    /// TLS on the client listeners (gRPC and HTTP), or plaintext (`None`, the default). Every
    /// replica of a group should agree: a node names its leader's addresses to clients with
    /// its own scheme.
    pub client_tls: Option<ClientTls>,
    /// Flow control in front of the client API: default pools and no limits unless rules
    /// are given (`fincore serve --flow-rules`); replaceable while the node runs.
    pub flow: Arc<flow::Gate>,
}

// `replica.peer_routes` overrides how this node reaches peers (e.g. through local proxies),
// while `peers` stays what the group's membership records.

/// How the replicas of a group authenticate each other on their peer listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerSecurity {
    /// Mutual TLS with the certificates in this directory (`ca.pem`, `node-N.pem`,
    /// `node-N.key`, as `fincore certs` writes them), whose names must be this node's id in
    /// this node's group.
    Tls { certificates: PathBuf },
    /// Plaintext: anyone who reaches the peer listener can speak for a member
    /// (`--insecure-peers`; embedded and single-process test nodes).
    Insecure,
}

impl NodeConfig {
    /// An open node (no authentication, plaintext peers) on the given client listeners and a
    /// peer listener on a free loopback port: for embedded and test nodes.
    pub fn new(
        data_dir: impl Into<PathBuf>,
        grpc_addr: SocketAddr,
        http_addr: SocketAddr,
    ) -> NodeConfig {
        NodeConfig {
            data_dir: data_dir.into(),
            grpc_addr,
            http_addr,
            peer_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            peer_security: PeerSecurity::Insecure,
            node_id: 1,
            peers: BTreeMap::new(),
            entry: Entry::Resume,
            queue_depth: limits::SERVER_QUEUE_REQUESTS_DEFAULT,
            capacity: ledger::Capacity::FORMAT_MAX,
            replica: ReplicaConfig::default(),
            auth: Auth::Open,
            client_tls: None,
            flow: Arc::new(flow::Gate::new(flow::Rules::default())),
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
    #[error("TLS on the client listeners with {certificate}: {reason}")]
    ClientTls {
        certificate: PathBuf,
        reason: String,
    },
    #[error(
        "peer TLS: {0}. Replicas prove who they are to each other with certificates: make them with `fincore certs` (or your own authority, with the names it explains) and give --peer-certs DIR, or pass --insecure-peers to let replicas talk plaintext"
    )]
    PeerTls(#[from] PeerTlsError),
    #[error(
        "peer TLS needs the group's id in the node's certificates, and {dir} holds a replica made before group ids: run it with --insecure-peers or replace it with a new member"
    )]
    PeerTlsWithoutGroup { dir: PathBuf },
    #[error(
        "this node's peer certificate names group {named}, but the node belongs to group {group}: give it a certificate of group {group} (`fincore certs --group {group}`)"
    )]
    PeerTlsOtherGroup { named: String, group: String },
    #[error(
        "this node's peer certificate names group {named:?}, which is not a group id (32 hex digits): issue it with `fincore certs`, whose --group is a group id"
    )]
    PeerTlsGroupNotAnId { named: String },
}

/// How this start enters its group given its peer certificates: a bootstrap without a group id
/// creates the group its certificate names; a bootstrap or join naming another group than the
/// certificate is refused before the directory is touched.
fn entry_for_certificates(entry: &Entry, tls: Option<&PeerTls>) -> Result<Entry, NodeError> {
    let Some(tls) = tls else {
        return Ok(entry.clone());
    };
    let named: GroupId = tls
        .group()
        .parse()
        .map_err(|_| NodeError::PeerTlsGroupNotAnId {
            named: tls.group().to_string(),
        })?;
    match entry {
        Entry::Bootstrap { group: None } => Ok(Entry::Bootstrap { group: Some(named) }),
        Entry::Bootstrap { group: Some(group) } | Entry::Join { group } if *group != named => {
            Err(NodeError::PeerTlsOtherGroup {
                named: named.to_string(),
                group: group.to_string(),
            })
        }
        other => Ok(other.clone()),
    }
}

/// A running node.
pub struct Node {
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    peer_addr: SocketAddr,
    pipeline: Pipeline,
    task: PipelineTask,
    stop: watch::Sender<bool>,
    servers: Vec<JoinHandle<()>>,
    group: Option<GroupId>,
    awaiting_admission: bool,
    client_tls: bool,
}

impl Node {
    /// Checks that this start may use the data directory (see `replication::membership`),
    /// opens the replica, starts serving, and completes a pending bootstrap (initializes the
    /// new group with its initial members).
    pub async fn start(config: NodeConfig) -> Result<Node, NodeError> {
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
        let (peer_tls, prepared) =
            enter_group(&config, &peers, replication::data_dir::LEDGER_MACHINE)?;

        let metrics = Metrics::for_service(telemetry::Service::LedgerNode);
        let sync_metrics = Arc::clone(&metrics);
        let replica_config = ReplicaConfig {
            sync_observer: Some(Arc::new(move |elapsed, records| {
                sync_metrics.journal_sync(elapsed, records)
            })),
            peer_tls: peer_tls.clone(),
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
        // Ends by itself when Raft stops.
        replica.export_raft_metrics(Arc::clone(&metrics));
        tokio::spawn(export_saga_copies(
            Arc::clone(&replica),
            Arc::clone(&metrics),
        ));
        let (pipeline, task) = Pipeline::start(
            Arc::clone(&replica),
            config.queue_depth,
            config.capacity,
            metrics,
        );
        let (stop, stopped) = watch::channel(false);

        connections::raise_open_files_limit(
            (2 * limits::CONNECTIONS_PER_LISTENER_MAX + limits::PEER_CONNECTIONS_MAX) as u64 + 1024,
        );
        let peers_server = serve_peers(peer_listener, &replica, peer_tls, stopped.clone());
        let mut servers = front::serve(
            grpc_listener,
            http_listener,
            Arc::new(pipeline.clone()),
            (
                pipeline.clone(),
                prepared.group.as_ref().map(ToString::to_string),
            ),
            (&config.auth, &config.flow),
            config.client_tls.as_ref(),
            &stopped,
        )?;
        servers.push(peers_server);

        let awaiting_admission = settle_membership(&prepared, &replica).await;
        Ok(Node {
            grpc_addr,
            http_addr,
            peer_addr,
            pipeline,
            task,
            stop,
            servers,
            group: prepared.group,
            awaiting_admission,
            client_tls: config.client_tls.is_some(),
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

    /// The node's metrics (what its `/metrics` shows).
    pub fn metrics(&self) -> &Arc<telemetry::Metrics> {
        crate::LedgerApi::metrics(&self.pipeline)
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Where the node's peers reach its replica transport.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// True if the client listeners (gRPC and HTTP) are served over TLS.
    pub fn client_tls(&self) -> bool {
        self.client_tls
    }

    /// True if the replicas of the group authenticate each other with mutual TLS.
    pub fn peer_tls(&self) -> bool {
        self.replica().peer_tls().is_some()
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
        stop_servers(self.servers).await;
        // Each stage is logged, so that a stop that takes long shows where it waits.
        tracing::info!("servers stopped; stopping the write pipeline and Raft");
        drop(self.pipeline);
        let writes_grace = Duration::from_secs(limits::SERVER_SHUTDOWN_WRITES_GRACE_SECONDS);
        self.task.stop(writes_grace).await;
        tracing::info!("Raft stopped");
    }
}

/// Checks this start against the peer certificates and the data directory (see
/// `replication::membership`) before the replica opens it: answers the node's peer identity
/// (none with [`PeerSecurity::Insecure`]) and how it enters its group. A new group takes its
/// id from the certificates; a certificate of another group is refused, and so is a directory
/// of another `machine` (`ReplicaMachine::KIND`).
pub(crate) fn enter_group(
    config: &NodeConfig,
    peers: &BTreeMap<NodeId, PeerNode>,
    machine: &str,
) -> Result<(Option<PeerTls>, membership::Prepared), NodeError> {
    let peer_tls = match &config.peer_security {
        PeerSecurity::Insecure => None,
        PeerSecurity::Tls { certificates } => Some(PeerTls::load(
            config.node_id,
            &CertificateFiles::in_dir(certificates, config.node_id),
        )?),
    };
    let entry = entry_for_certificates(&config.entry, peer_tls.as_ref())?;
    let prepared = membership::prepare(&config.data_dir, config.node_id, &entry, peers, machine)?;
    if let Some(tls) = &peer_tls {
        match &prepared.group {
            Some(group) if group.as_str() == tls.group() => {}
            Some(group) => {
                return Err(NodeError::PeerTlsOtherGroup {
                    named: tls.group().to_string(),
                    group: group.to_string(),
                });
            }
            None => {
                return Err(NodeError::PeerTlsWithoutGroup {
                    dir: config.data_dir.clone(),
                });
            }
        }
    }
    Ok((peer_tls, prepared))
}

/// Completes a pending bootstrap, and for a group of one waits (at most 10 s) until it has
/// elected itself, so the first request succeeds. Answers whether the replica is a new member
/// still waiting to be added (neither log nor votes, and not creating a group).
pub(crate) async fn settle_membership<M: ReplicaMachine>(
    prepared: &membership::Prepared,
    replica: &Replica<M>,
) -> bool {
    let bootstrapped = match prepared.finish_bootstrap(replica).await {
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
    awaiting_admission
}

/// Waits for stopped servers to finish their connections, for at most
/// `HTTP_SHUTDOWN_GRACE_SECONDS` in all, then aborts those still running.
pub(crate) async fn stop_servers(servers: Vec<JoinHandle<()>>) {
    let grace = Duration::from_secs(limits::HTTP_SHUTDOWN_GRACE_SECONDS);
    let deadline = tokio::time::Instant::now() + grace;
    for mut server in servers {
        if tokio::time::timeout_at(deadline, &mut server)
            .await
            .is_err()
        {
            tracing::warn!("connections still open after the shutdown grace period; closing them");
            server.abort();
            let _ = server.await;
        }
    }
}

/// Serves the replica transport on `listener` until `stopped` turns true: mutual TLS with
/// `tls` (the handshake refuses a peer without a certificate from the group's authority, or one
/// slower than `limits::PEER_TLS_HANDSHAKE_SECONDS_MAX`), at most
/// `limits::PEER_CONNECTIONS_MAX` connections.
pub(crate) fn serve_peers<M: ReplicaMachine>(
    listener: TcpListener,
    replica: &Replica<M>,
    tls: Option<PeerTls>,
    mut stopped: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let transport = replica.transport_service();
    let incoming = connections::grpc_incoming(listener, limits::PEER_CONNECTIONS_MAX);
    tokio::spawn(async move {
        let signal = async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = &tls {
            let config = tls
                .server_config()
                .timeout(Duration::from_secs(limits::PEER_TLS_HANDSHAKE_SECONDS_MAX));
            builder = match builder.tls_config(config) {
                Ok(builder) => builder,
                Err(error) => {
                    tracing::error!(%error, "the peer listener's TLS configuration was refused");
                    return;
                }
            };
        }
        let server = with_grpc_limits(builder).add_service(transport);
        if let Err(error) = server.serve_with_incoming_shutdown(incoming, signal).await {
            tracing::error!(%error, "the peer listener stopped");
        }
    })
}

/// A gRPC server serving client TLS with `tls` when given (a certificate it cannot use is
/// refused naming it).
pub(crate) fn grpc_server(tls: Option<&ClientTls>) -> Result<tonic::transport::Server, NodeError> {
    let builder = tonic::transport::Server::builder();
    let Some(tls) = tls else {
        return Ok(builder);
    };
    builder
        .tls_config(tls.grpc_config())
        .map_err(|error| NodeError::ClientTls {
            certificate: tls.certificate_path().to_path_buf(),
            reason: error.to_string(),
        })
}

/// A gRPC server's HTTP/2 windows sized for whole batches (~1 MiB: default 64 KiB windows would
/// stall them), its streams per connection capped, and keepalives that close dead connections.
pub(crate) fn with_grpc_limits(builder: tonic::transport::Server) -> tonic::transport::Server {
    let keepalive = Duration::from_secs(limits::GRPC_KEEPALIVE_SECONDS);
    builder
        .initial_stream_window_size(Some(limits::HTTP2_STREAM_WINDOW_BYTES))
        .initial_connection_window_size(Some(limits::HTTP2_CONNECTION_WINDOW_BYTES))
        .max_concurrent_streams(Some(limits::GRPC_STREAMS_PER_CONNECTION_MAX))
        .http2_keepalive_interval(Some(keepalive))
        .http2_keepalive_timeout(Some(keepalive))
        .tcp_keepalive(Some(keepalive))
}

/// Keeps `fincore_saga_copies_open` current, once a second, until Raft stops. A second when
/// the state is busy applying is skipped rather than waited for.
async fn export_saga_copies(replica: Arc<Replica>, metrics: Arc<telemetry::Metrics>) {
    let mut stopped = replica.stopped_running();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            () = &mut stopped => return,
            _ = tick.tick() => {}
        }
        if let Ok(state) = replica.state().try_read() {
            metrics.saga_copies_open(state.open_saga_copies_count());
        }
    }
}
