//! A running node: engine + pipeline + gRPC and HTTP listeners, started and stopped as one.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use api::proto::ledger_server::LedgerServer;
use engine::{Engine, EngineError, EngineOptions, OpenReport};
use telemetry::Metrics;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::grpc::{GRPC_MESSAGE_BYTES_MAX, LedgerService};
use crate::http;
use crate::pipeline::{Pipeline, PipelineThreads};

/// How a node runs.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub data_dir: PathBuf,
    /// Port 0 picks a free port; [`Node::grpc_addr`] tells which.
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// Requests that may wait for the engine before new ones are refused as busy.
    pub queue_depth: usize,
    /// Batches that may wait for their fsync before the engine thread waits.
    pub in_flight_batches: usize,
    pub checkpoint_interval_batches: u64,
}

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
            queue_depth: 256,
            in_flight_batches: 16,
            checkpoint_interval_batches: EngineOptions::new(".").checkpoint_interval_batches,
        }
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("cannot listen on {addr} for {what}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A running node.
pub struct Node {
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    open_report: OpenReport,
    pipeline: Pipeline,
    threads: PipelineThreads,
    stop: watch::Sender<bool>,
    servers: Vec<JoinHandle<()>>,
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, NodeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| NodeError::Bind { what, addr, source })
}

impl Node {
    /// Recovers the data directory, then starts serving. Listeners are bound before recovery,
    /// so a taken port fails fast.
    pub async fn start(config: NodeConfig) -> Result<Node, NodeError> {
        let grpc_listener = bind("gRPC", config.grpc_addr).await?;
        let http_listener = bind("HTTP", config.http_addr).await?;
        let grpc_addr = grpc_listener
            .local_addr()
            .expect("a bound listener has an address");
        let http_addr = http_listener
            .local_addr()
            .expect("a bound listener has an address");

        let metrics = Metrics::new();
        let sync_metrics = Arc::clone(&metrics);
        let options = EngineOptions {
            checkpoint_interval_batches: config.checkpoint_interval_batches,
            sync_observer: Some(Arc::new(move |elapsed, records| {
                sync_metrics.journal_sync(elapsed, records)
            })),
            ..EngineOptions::new(&config.data_dir)
        };
        let (engine, open_report) = tokio::task::spawn_blocking(move || Engine::open(options))
            .await
            .expect("the engine open task panicked")?;
        tracing::info!(
            data_dir = %config.data_dir.display(),
            checkpoint = ?open_report.checkpoint_index,
            replayed_records = open_report.replayed_records,
            elapsed_ms = open_report.elapsed.as_millis() as u64,
            "recovered"
        );
        let (pipeline, threads) = Pipeline::start(
            engine,
            config.queue_depth,
            config.in_flight_batches,
            metrics,
        );
        let (stop, stopped) = watch::channel(false);

        let service = LedgerServer::new(LedgerService::new(pipeline.clone()))
            .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX);
        let mut grpc_stop = stopped.clone();
        let incoming =
            tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true));
        let grpc = tokio::spawn(async move {
            let signal = async move {
                let _ = grpc_stop.wait_for(|stop| *stop).await;
            };
            if let Err(error) = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, signal)
                .await
            {
                tracing::error!(%error, "the gRPC server stopped");
            }
        });
        let router = http::router(pipeline.clone());
        let mut http_stop = stopped;
        let http = tokio::spawn(async move {
            let signal = async move {
                let _ = http_stop.wait_for(|stop| *stop).await;
            };
            if let Err(error) = axum::serve(http_listener, router)
                .with_graceful_shutdown(signal)
                .await
            {
                tracing::error!(%error, "the HTTP server stopped");
            }
        });
        Ok(Node {
            grpc_addr,
            http_addr,
            open_report,
            pipeline,
            threads,
            stop,
            servers: vec![grpc, http],
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// What recovery did at start.
    pub fn open_report(&self) -> &OpenReport {
        &self.open_report
    }

    /// Stops accepting requests, lets the ones in progress finish, flushes and checkpoints.
    pub async fn shutdown(self) -> Result<(), EngineError> {
        let _ = self.stop.send(true);
        for server in self.servers {
            let _ = server.await;
        }
        self.pipeline.shutdown().await;
        let threads = self.threads;
        tokio::task::spawn_blocking(move || threads.join())
            .await
            .expect("joining the pipeline threads panicked")
    }
}
