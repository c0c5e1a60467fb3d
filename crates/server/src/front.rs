//! The client listeners: the gRPC ledger and events services and the HTTP API on their
//! sockets, with authentication, optional TLS, connection limits and a stop signal, over
//! whatever serves the ledger ([`Ledger`]) and the change events ([`SharedEvents`]). A node starts them over its pipeline (with its replica's own
//! routes); a gateway starts them over its router with [`ClientServers::start`].
//!
//! Owns only the wiring of listeners to front ends. Must not know what serves the ledger.

use std::net::SocketAddr;
use std::sync::Arc;

use api::proto::events_server::EventsServer;
use api::proto::ledger_server::LedgerServer;
use api::proto::replica_server::ReplicaServer;
use api::proto::sagas_server::SagasServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::access::{Access, GrpcAccess};
use crate::auth::Auth;
use crate::client_tls::ClientTls;
use crate::connections;
use crate::console::{self, Console};
use crate::events::{EventsService, ReplicaEvents, SharedEvents};
use crate::grpc::{GRPC_MESSAGE_BYTES_MAX, LedgerService, ReplicaService, SagasService};
use crate::http;
use crate::ledger_api::Ledger;
use crate::node::NodeError;
use crate::pipeline::Pipeline;

/// Binds `addr` for `what` (named in the error).
pub(crate) async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, NodeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| NodeError::Bind { what, addr, source })
}

/// Serves a node's client API (`ledger`, its replica's events, its own routes: see
/// [`serve_client_api`]) on the two listeners until `stopped` turns true.
pub(crate) fn serve(
    grpc_listener: TcpListener,
    http_listener: TcpListener,
    ledger: Ledger,
    replica: (Pipeline, Option<String>),
    (auth, flow): (&Auth, &Arc<flow::Gate>),
    tls: Option<&ClientTls>,
    stopped: &watch::Receiver<bool>,
) -> Result<Vec<JoinHandle<()>>, NodeError> {
    // A group id that does not parse (none does not happen: the directory's is checked) is
    // no group: calls naming a group are then refused.
    let group = replica.1.as_deref().and_then(|group| group.parse().ok());
    let events = Arc::new(ReplicaEvents::new(
        replica.0.clone(),
        group,
        stopped.clone(),
    ));
    let listeners = (grpc_listener, http_listener);
    serve_client_api(
        listeners,
        ledger,
        events,
        Behind::Replica(replica.0, replica.1),
        (auth, flow),
        tls,
        stopped,
    )
}

/// What the client API is served in front of: a node's replica (its pipeline and its group's
/// id), or a gateway (what its console shows).
enum Behind {
    Replica(Pipeline, Option<String>),
    Gateway(Arc<dyn console::Source>),
}

/// Serves the client API of `ledger` and `events` on the two listeners until `stopped` turns
/// true: gRPC and HTTP behind `auth`, over `tls` if given, and the live console; behind a
/// replica (a node: its pipeline and its group's id) its own HTTP routes and the `Sagas` and
/// `Replica` gRPC services too, and gRPC calls naming another group refused. Behind a gateway,
/// the `Events` service reads the group a call names itself. Returns the two server tasks.
fn serve_client_api(
    (grpc_listener, http_listener): (TcpListener, TcpListener),
    ledger: Ledger,
    events: SharedEvents,
    behind: Behind,
    (auth, flow): (&Auth, &Arc<flow::Gate>),
    tls: Option<&ClientTls>,
    stopped: &watch::Receiver<bool>,
) -> Result<Vec<JoinHandle<()>>, NodeError> {
    // A node's console reads its own replica; a gateway's, what the gateway gives.
    let (replica, group, console_source) = match behind {
        Behind::Replica(pipeline, group) => {
            let source = Arc::new(console::NodeSource::new(pipeline.clone(), group.clone()));
            (Some(pipeline), group, source as Arc<dyn console::Source>)
        }
        Behind::Gateway(source) => (None, None, source),
    };
    let console = Console::start(console_source, stopped.clone());
    // Hot-account limits need a batch's accounts: checked here, behind flow control's layer.
    let ledger = crate::hot_accounts::HotLimited::wrap(ledger, Arc::clone(flow));
    let service = LedgerServer::new(LedgerService::new(Arc::clone(&ledger)))
        .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX);
    let access = Access {
        auth: auth.clone(),
        metrics: Arc::clone(ledger.metrics()),
        flow: Arc::clone(flow),
    };
    let sagas = replica.clone().map(|pipeline| {
        GrpcAccess::new(
            SagasServer::new(SagasService::new(pipeline))
                .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
                .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX),
            access.clone(),
            group.clone(),
        )
    });
    let replica_status = replica.clone().map(|pipeline| {
        GrpcAccess::new(
            ReplicaServer::new(ReplicaService::new(pipeline)),
            access.clone(),
            group.clone(),
        )
    });
    let events_server = EventsServer::new(EventsService::new(
        Arc::clone(&events),
        Arc::clone(ledger.metrics()),
    ))
    .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX);
    let events_service = if replica.is_some() {
        GrpcAccess::new(events_server, access.clone(), group.clone())
    } else {
        GrpcAccess::naming_groups_itself(events_server, access.clone())
    };
    let service = GrpcAccess::new(service, access.clone(), group);
    let mut grpc_stop = stopped.clone();
    let incoming = connections::grpc_incoming(grpc_listener, limits::CONNECTIONS_PER_LISTENER_MAX);
    let grpc_builder = crate::node::grpc_server(tls)?;
    let grpc = tokio::spawn(async move {
        let signal = async move {
            let _ = grpc_stop.wait_for(|stop| *stop).await;
        };
        let server = crate::node::with_grpc_limits(grpc_builder)
            .add_service(service)
            .add_optional_service(sagas)
            .add_optional_service(replica_status)
            .add_service(events_service);
        if let Err(error) = server.serve_with_incoming_shutdown(incoming, signal).await {
            tracing::error!(%error, "the gRPC server stopped");
        }
    });
    let scheme = if tls.is_some() {
        http::Scheme::Https
    } else {
        http::Scheme::Http
    };
    let router = http::router(ledger, events, replica, console, access, scheme);
    let http = connections::spawn_client_http(http_listener, router, tls, stopped.clone());
    Ok(vec![grpc, http])
}

/// How a gateway's client listeners run.
#[derive(Debug, Clone)]
pub struct ClientServing {
    /// Port 0 picks a free port; [`ClientServers::grpc_addr`] tells which.
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub auth: Auth,
    /// Flow control in front of the client API (rules replaceable while it runs).
    pub flow: Arc<flow::Gate>,
    pub tls: Option<ClientTls>,
}

/// Running client listeners over a [`Ledger`] that is not a node's (a gateway's).
pub struct ClientServers {
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    stop: watch::Sender<bool>,
    servers: Vec<JoinHandle<()>>,
}

impl ClientServers {
    /// Binds both listeners and serves the client API of `ledger` and `events` on them, and
    /// the live console over `console`.
    pub async fn start(
        serving: &ClientServing,
        ledger: Ledger,
        events: SharedEvents,
        console: Arc<dyn console::Source>,
    ) -> Result<ClientServers, NodeError> {
        let grpc_listener = bind("gRPC", serving.grpc_addr).await?;
        let http_listener = bind("HTTP", serving.http_addr).await?;
        let grpc_addr = local_addr(&grpc_listener);
        let http_addr = local_addr(&http_listener);
        connections::raise_open_files_limit(2 * limits::CONNECTIONS_PER_LISTENER_MAX as u64 + 1024);
        let (stop, stopped) = watch::channel(false);
        let servers = serve_client_api(
            (grpc_listener, http_listener),
            ledger,
            events,
            Behind::Gateway(console),
            (&serving.auth, &serving.flow),
            serving.tls.as_ref(),
            &stopped,
        )?;
        Ok(ClientServers {
            grpc_addr,
            http_addr,
            stop,
            servers,
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Stops accepting, lets requests in progress finish for at most
    /// `HTTP_SHUTDOWN_GRACE_SECONDS`, then closes what is left.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        crate::node::stop_servers(self.servers).await;
    }
}

pub(crate) fn local_addr(listener: &TcpListener) -> SocketAddr {
    listener
        .local_addr()
        .expect("a bound listener has an address")
}
