//! A registry process (`fincore registry serve`): the service registry's gRPC service
//! (`registry::RegistryService`) and its xDS endpoint (`registry::XdsService`, Envoy's aggregated
//! discovery) on one listener (TLS when given a certificate, mutual when given a client
//! authority), behind API keys, with the connection and
//! HTTP/2 limits every fincore listener has; `/metrics` (`fincore_registry_*`, sampled every
//! second) and `/healthz` on an open HTTP listener.
//!
//! A stream needs the role `read`; what it may do beyond subscribing (register: `write`; drain a
//! host: `admin`) is handed to the registry as `registry::Rights`, decided here from the key.
//! Owns the listener and the key check; must not know what the registry does with a request.

use std::net::SocketAddr;
use std::sync::Arc;

use registry::{Registry, RegistryService, Rights, Settings, XdsService};
use std::sync::atomic::Ordering;

use telemetry::{Metrics, RegistrySample};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::{Request, Status};

use crate::auth::{Auth, Role};
use crate::client_tls::ClientTls;
use crate::connections;
use crate::metrics_http::MetricsListener;
use crate::node::{NodeError, grpc_server, with_grpc_limits};

/// A running registry.
pub struct RegistryNode {
    grpc_addr: SocketAddr,
    registry: Arc<Registry>,
    metrics: MetricsListener,
    stop: watch::Sender<bool>,
    server: JoinHandle<()>,
}

/// The registry's figures as telemetry takes them.
fn sample(registry: &Registry) -> RegistrySample {
    let stats = &registry.stats;
    let count = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
    RegistrySample {
        streams: registry.sessions() as u64,
        keys: registry.store().keys() as u64,
        publishers: registry.store().publishers() as u64,
        pushes: count(&stats.pushes),
        push_plain_bytes: count(&stats.push_plain_bytes),
        push_sent_bytes: count(&stats.push_sent_bytes),
        push_retries: count(&stats.push_retries),
        reconciled: count(&stats.reconciled),
        compressions: registry.store().compressions(),
        xds_responses: count(&stats.xds_responses),
        xds_nacks: count(&stats.xds_nacks),
        xds_unroutable: count(&stats.xds_unroutable),
        values_pushed: count(&stats.values_pushed),
    }
}

/// Samples the registry into `metrics` every second while the registry lives.
async fn export_metrics(registry: std::sync::Weak<Registry>, metrics: Arc<Metrics>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
        let Some(registry) = registry.upgrade() else {
            return;
        };
        metrics.registry_sample(&sample(&registry));
    }
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
    /// Binds `listen` (gRPC, over TLS with `tls`) and `http` (`/metrics`, `/healthz`) and
    /// serves a new, empty registry there.
    pub async fn start(
        listen: SocketAddr,
        http: SocketAddr,
        auth: Auth,
        settings: Settings,
        tls: Option<ClientTls>,
    ) -> Result<RegistryNode, NodeError> {
        let listener = crate::front::bind("gRPC", listen).await?;
        let grpc_addr = crate::front::local_addr(&listener);
        let registry = Registry::new(settings);
        registry.spawn_workers();
        let metrics = Metrics::for_service(telemetry::Service::Registry);
        tokio::spawn(export_metrics(
            Arc::downgrade(&registry),
            Arc::clone(&metrics),
        ));
        let metrics = MetricsListener::start(http, metrics).await?;
        let interceptor = move |mut request: Request<()>| {
            let rights = rights(&auth, &request).inspect_err(|status| {
                tracing::debug!(%status, "refused a registry stream");
            })?;
            request.extensions_mut().insert(rights);
            Ok(request)
        };
        let service = tonic::service::interceptor::InterceptedService::new(
            RegistryService::new(Arc::clone(&registry)).into_server(),
            interceptor.clone(),
        );
        let xds = tonic::service::interceptor::InterceptedService::new(
            XdsService::new(Arc::clone(&registry)).into_server(),
            interceptor,
        );
        let incoming = connections::grpc_incoming(listener, limits::CONNECTIONS_PER_LISTENER_MAX);
        let builder = grpc_server(tls.as_ref())?;
        let (stop, mut stopped) = watch::channel(false);
        let server = tokio::spawn(async move {
            let signal = async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            };
            let server = with_grpc_limits(builder)
                .add_service(service)
                .add_service(xds);
            if let Err(error) = server.serve_with_incoming_shutdown(incoming, signal).await {
                tracing::error!(%error, "the registry's gRPC server stopped");
            }
        });
        Ok(RegistryNode {
            grpc_addr,
            registry,
            metrics,
            stop,
            server,
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// Where `/metrics` and `/healthz` are served.
    pub fn http_addr(&self) -> SocketAddr {
        self.metrics.addr()
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
        self.metrics.stop().await;
    }
}
