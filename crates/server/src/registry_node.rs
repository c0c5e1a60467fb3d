//! A registry process (`fincore registry serve`): the service registry's gRPC service
//! (`registry::RegistryService`) on its own listener, behind API keys, with the connection and
//! HTTP/2 limits every fincore listener has.
//!
//! A stream needs the role `read`; what it may do beyond subscribing (register: `write`; drain a
//! host: `admin`) is handed to the registry as `registry::Rights`, decided here from the key.
//! Owns the listener and the key check; must not know what the registry does with a request.

use std::net::SocketAddr;
use std::sync::Arc;

use registry::{Registry, RegistryService, Rights, Settings};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::{Request, Status};

use crate::auth::{Auth, Role};
use crate::connections;
use crate::node::with_grpc_limits;

/// A running registry.
pub struct RegistryNode {
    grpc_addr: SocketAddr,
    registry: Arc<Registry>,
    stop: watch::Sender<bool>,
    server: JoinHandle<()>,
}

/// What a caller's key lets its stream do; refused without a key good for `read`.
fn rights(auth: &Auth, request: &Request<()>) -> Result<Rights, Status> {
    let presented = request
        .metadata()
        .get("authorization")
        .map(|value| value.as_bytes());
    match auth.check(presented, Role::Read) {
        Ok(None) => Ok(Rights::open()),
        Ok(Some(caller)) => Ok(Rights {
            publish: caller.role >= Role::Write,
            admin: caller.role >= Role::Admin,
            caller: Some(caller.key),
        }),
        Err(error) if error.is_unauthenticated() => Err(Status::unauthenticated(error.to_string())),
        Err(error) => Err(Status::permission_denied(error.to_string())),
    }
}

impl RegistryNode {
    /// Binds `listen` and serves a new, empty registry there.
    pub async fn start(
        listen: SocketAddr,
        auth: Auth,
        settings: Settings,
    ) -> std::io::Result<RegistryNode> {
        let listener = TcpListener::bind(listen).await?;
        let grpc_addr = listener.local_addr()?;
        let registry = Registry::new(settings);
        registry.spawn_workers();
        let service = RegistryService::new(Arc::clone(&registry)).into_server();
        let service = tonic::service::interceptor::InterceptedService::new(
            service,
            move |mut request: Request<()>| {
                let rights = rights(&auth, &request).inspect_err(|status| {
                    tracing::debug!(%status, "refused a registry stream");
                })?;
                request.extensions_mut().insert(rights);
                Ok(request)
            },
        );
        let incoming = connections::grpc_incoming(listener, limits::CONNECTIONS_PER_LISTENER_MAX);
        let (stop, mut stopped) = watch::channel(false);
        let server = tokio::spawn(async move {
            let signal = async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            };
            let server = with_grpc_limits(tonic::transport::Server::builder()).add_service(service);
            if let Err(error) = server.serve_with_incoming_shutdown(incoming, signal).await {
                tracing::error!(%error, "the registry's gRPC server stopped");
            }
        });
        Ok(RegistryNode {
            grpc_addr,
            registry,
            stop,
            server,
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Stops serving: every stream ends (its clients connect again elsewhere).
    pub async fn stop(mut self) {
        self.registry.end_streams();
        let _ = self.stop.send(true);
        let grace = std::time::Duration::from_secs(5);
        if tokio::time::timeout(grace, &mut self.server).await.is_err() {
            self.server.abort();
        }
    }
}
