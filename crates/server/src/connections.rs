//! Accepting connections under limits, for both listeners.
//!
//! At most a fixed number of connections are open per listener; one more is accepted and closed
//! at once (its client sees a reset and may retry) rather than left waiting in the kernel's
//! backlog. HTTP/1.1 is served with hyper directly because axum's `serve` sets no deadline for
//! reading a request's headers: here a client that sends its headers slowly is disconnected
//! after `limits::HTTP_HEADER_READ_SECONDS_MAX`. The process's open-files limit is raised to
//! its hard limit so the connection limits, not the file table, are what bind. Over HTTPS, each
//! connection's TLS handshake runs on its own task under a deadline.
//!
//! Over mutual TLS the client identity ([`ClientIdentity`], from the verified certificate) is
//! put on every request as an extension and logged at debug: for HTTP once per connection,
//! after its handshake; for gRPC at each call, since tonic runs that handshake and shows the
//! certificate only with the requests.
//!
//! This module owns sockets and connection tasks only; it must not know a route or what a
//! request asks, nor where a certificate comes from (`client_tls`).

use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::client_tls::ClientIdentity;

/// A connection holding one of its listener's permits: the permit returns when it closes.
pub struct Permitted<S> {
    inner: S,
    _permit: OwnedSemaphorePermit,
}

impl<S: AsyncRead + Unpin> AsyncRead for Permitted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Permitted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for Permitted<TcpStream> {
    // Kept tonic's own: `tonic::Request::peer_certs` (the peer listener's sender check) and
    // `remote_addr` look for exactly `TcpConnectInfo` (under `TlsConnectInfo` over TLS).
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Logs at debug that a client presenting a certificate connected (`identity`: its name).
fn log_client(identity: &Option<ClientIdentity>, remote: Option<std::net::SocketAddr>) {
    match identity {
        Some(identity) => tracing::debug!(
            %identity,
            ?remote,
            listener = "HTTP",
            "a client connected with a certificate"
        ),
        None => tracing::debug!(
            ?remote,
            listener = "HTTP",
            "a client connected with a certificate that names no DNS name"
        ),
    }
}

/// Puts the identity of the client that sent the gRPC `request` (over mutual TLS) on it as a
/// [`ClientIdentity`] extension, for the handlers, and logs it at debug. tonic runs the
/// handshake and shows the certificate only with each request, so this runs (and logs) per
/// call; reading a name from a certificate costs microseconds, a call carries a batch.
pub(crate) fn attach_grpc_identity<B>(request: &mut hyper::Request<B>) {
    let Some(info) = request.extensions().get::<TlsConnectInfo<TcpConnectInfo>>() else {
        return;
    };
    let Some(certificates) = info.peer_certs() else {
        return;
    };
    let remote = info.get_ref().remote_addr();
    let Some(identity) = ClientIdentity::of(&certificates) else {
        tracing::debug!(
            ?remote,
            listener = "gRPC",
            "a call from a client whose certificate names no DNS name"
        );
        return;
    };
    tracing::debug!(%identity, ?remote, listener = "gRPC", "a call from a client with a certificate");
    request.extensions_mut().insert(identity);
}

/// One listener's open connections, at most `max`.
#[derive(Clone)]
struct Admission {
    permits: Arc<Semaphore>,
    max: usize,
    what: &'static str,
}

impl Admission {
    fn new(max: usize, what: &'static str) -> Admission {
        Admission {
            permits: Arc::new(Semaphore::new(max)),
            max,
            what,
        }
    }

    /// Accepts the next connection that fits; closes those that do not. An accept error (the
    /// file table full, say) is logged and retried after a pause instead of ending the server.
    async fn accept(&self, listener: &TcpListener) -> Permitted<TcpStream> {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, listener = self.what, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
                tracing::debug!(
                    listener = self.what,
                    max = self.max,
                    "connection limit reached; closing a new connection"
                );
                continue;
            };
            let _ = stream.set_nodelay(true);
            return Permitted {
                inner: stream,
                _permit: permit,
            };
        }
    }
}

/// The connections of a gRPC listener, at most `max` open at once, for
/// `tonic::transport::Server::serve_with_incoming_shutdown`.
pub fn grpc_incoming(
    listener: TcpListener,
    max: usize,
) -> impl Stream<Item = io::Result<Permitted<TcpStream>>> + Send + 'static {
    let admission = Admission::new(max, "gRPC");
    futures::stream::unfold((listener, admission), |(listener, admission)| async move {
        let connection = admission.accept(&listener).await;
        Some((Ok(connection), (listener, admission)))
    })
}

/// How an HTTP listener serves its connections.
pub struct HttpServing {
    /// Open connections at most.
    pub max: usize,
    /// A request's headers must arrive within this long of the previous request.
    pub header_read: Duration,
    /// On stop, how long connections may take to finish the request in progress.
    pub grace: Duration,
    /// TLS (HTTPS): each connection's handshake must complete within `handshake` or it is
    /// closed; it runs on the connection's own task, so a slow client holds up no other.
    pub tls: Option<(tokio_rustls::TlsAcceptor, Duration)>,
}

/// Serves `router` on `listener` with a client listener's limits (over `tls` if given) until
/// `stopped` turns true: the HTTP listener of a node, a gateway and a meta replica.
pub fn spawn_client_http(
    listener: TcpListener,
    router: axum::Router,
    tls: Option<&crate::client_tls::ClientTls>,
    mut stopped: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let serving = HttpServing {
        max: limits::CONNECTIONS_PER_LISTENER_MAX,
        header_read: Duration::from_secs(limits::HTTP_HEADER_READ_SECONDS_MAX),
        grace: Duration::from_secs(limits::HTTP_SHUTDOWN_GRACE_SECONDS),
        tls: tls.map(|tls| {
            (
                tls.http_acceptor(),
                Duration::from_secs(limits::CLIENT_TLS_HANDSHAKE_SECONDS_MAX),
            )
        }),
    };
    tokio::spawn(async move {
        let signal = async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        serve_http(listener, router, serving, signal).await;
    })
}

/// Serves `router` over HTTP/1.1 (over TLS when configured) on `listener` until `stop`
/// resolves, within `serving`'s limits. On stop, connections finish the request in progress
/// and close.
pub async fn serve_http(
    listener: TcpListener,
    router: axum::Router,
    serving: HttpServing,
    stop: impl Future<Output = ()>,
) {
    let admission = Admission::new(serving.max, "HTTP");
    let (closing, closing_seen) = watch::channel(false);
    let mut stop = pin!(stop);
    loop {
        let connection = tokio::select! {
            () = &mut stop => break,
            connection = admission.accept(&listener) => connection,
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let closing = closing_seen.clone();
        let header_read = serving.header_read;
        match serving.tls.clone() {
            None => {
                tokio::spawn(serve_http_connection(
                    connection,
                    service,
                    header_read,
                    closing,
                ));
            }
            Some((acceptor, handshake)) => {
                tokio::spawn(async move {
                    let remote = connection.inner.peer_addr().ok();
                    match tokio::time::timeout(handshake, acceptor.accept(connection)).await {
                        Ok(Ok(tls)) => {
                            let identity =
                                tls.get_ref().1.peer_certificates().map(|certificates| {
                                    let identity = ClientIdentity::of(certificates);
                                    log_client(&identity, remote);
                                    identity
                                });
                            let service = hyper::service::service_fn(
                                move |mut request: hyper::Request<hyper::body::Incoming>| {
                                    if let Some(Some(identity)) = &identity {
                                        request.extensions_mut().insert(identity.clone());
                                    }
                                    hyper::service::Service::call(&service, request)
                                },
                            );
                            serve_http_connection(tls, service, header_read, closing).await;
                        }
                        Ok(Err(error)) => {
                            tracing::debug!(%error, "an HTTPS client's TLS handshake failed");
                        }
                        Err(_) => tracing::debug!("an HTTPS client's TLS handshake timed out"),
                    }
                });
            }
        }
    }
    drop(listener);
    let _ = closing.send(true);
    // Every permit back means every connection closed.
    let all = u32::try_from(admission.max).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(serving.grace, admission.permits.acquire_many(all)).await;
}

/// Serves one connection until the client closes it, or, once `closing` turns true, until the
/// request in progress is answered.
async fn serve_http_connection<S, T>(
    connection: S,
    service: T,
    header_read: Duration,
    mut closing: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = hyper::Response<axum::body::Body>,
        > + Send
        + 'static,
    T::Future: Send + 'static,
    T::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read);
    let mut served = pin!(builder.serve_connection(TokioIo::new(connection), service));
    tokio::select! {
        _ = served.as_mut() => return,
        _ = closing.wait_for(|closing| *closing) => {}
    }
    served.as_mut().graceful_shutdown();
    let _ = served.await;
}

/// Raises this process's open-files limit to its hard limit, and warns when even that is
/// below what the connection limits need (`needed`). Returns the limit now in force.
pub fn raise_open_files_limit(needed: u64) -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if let Err(error) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!(%error, "raising the open-files limit failed");
            limit = getrlimit(Resource::Nofile);
        }
    }
    let current = limit.current;
    if current.is_some_and(|current| current < needed) {
        tracing::warn!(
            limit = current,
            needed,
            "the open-files limit is below what the connection limits allow; raise it (ulimit -n)"
        );
    }
    current
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn http_server(
        max: usize,
        header_read: Duration,
    ) -> (
        std::net::SocketAddr,
        watch::Sender<bool>,
        tokio::task::JoinHandle<()>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = axum::Router::new().route("/", axum::routing::get(|| async { "hello" }));
        let (stop, mut stopped) = watch::channel(false);
        let serving = HttpServing {
            max,
            header_read,
            grace: Duration::from_secs(5),
            tls: None,
        };
        let server = tokio::spawn(serve_http(listener, router, serving, async move {
            let _ = stopped.wait_for(|s| *s).await;
        }));
        (addr, stop, server)
    }

    /// Sends a GET and reads the whole answer (the server closes: `Connection: close`).
    async fn get(addr: std::net::SocketAddr) -> io::Result<String> {
        let mut stream = TcpStream::connect(addr).await?;
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await?;
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer))
            .await
            .map_err(|_| io::Error::other("no answer within 10 s"))??;
        Ok(answer)
    }

    #[tokio::test]
    async fn a_connection_beyond_the_limit_is_closed_and_a_freed_slot_serves_again() {
        let (addr, stop, server) = http_server(2, Duration::from_secs(30)).await;
        let held: Vec<TcpStream> = vec![
            TcpStream::connect(addr).await.unwrap(),
            TcpStream::connect(addr).await.unwrap(),
        ];
        // The third is accepted and closed at once: no answer.
        let refused = get(addr).await;
        assert!(
            refused.as_ref().is_err() || refused.as_ref().is_ok_and(String::is_empty),
            "{refused:?}"
        );
        drop(held);
        // The slots come back once the held connections close.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(answer) = get(addr).await
                && answer.ends_with("hello")
            {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "no slot came back");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.send(true).unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_client_that_sends_its_headers_too_slowly_is_disconnected() {
        let (addr, stop, server) = http_server(16, Duration::from_millis(300)).await;
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        // The rest of the headers never come: the server closes the connection.
        // (EOF or a reset: either way the read ends, which it never would on an open one.)
        let mut rest = Vec::new();
        let _closed = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut rest))
            .await
            .expect("the slow client was not disconnected within 10 s");
        // A client that sends its request at once is served meanwhile.
        assert!(get(addr).await.unwrap().ends_with("hello"));
        stop.send(true).unwrap();
        server.await.unwrap();
    }

    /// An authority, a server certificate for `localhost` and a client certificate naming
    /// `gateway-1` (PEM each), as files in `dir`: (client listeners' TLS, client chain, client key).
    fn mutual_tls_files(dir: &std::path::Path) -> (crate::client_tls::ClientTls, String, String) {
        use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer};
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf = |name: &str, purpose| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
            params.extended_key_usages = vec![purpose];
            (
                params.signed_by(&key, &issuer).unwrap().pem(),
                key.serialize_pem(),
            )
        };
        let (server, server_key) = leaf("localhost", ExtendedKeyUsagePurpose::ServerAuth);
        let (client, client_key) = leaf("gateway-1", ExtendedKeyUsagePurpose::ClientAuth);
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            replication::secret_file::write(&path, text.as_bytes()).unwrap();
            path
        };
        let files = crate::client_tls::ClientTlsFiles {
            certificate: write("server.pem", &server),
            key: write("server.key", &server_key),
            client_ca: Some(write("ca.pem", &ca.pem())),
        };
        let tls = crate::client_tls::ClientTls::load(files).unwrap();
        (tls, client, client_key)
    }

    /// A GET over TLS to `addr` trusting `ca_pem`, presenting `identity` (PEM chain and key) if
    /// given; the whole answer, or the error that ended it.
    async fn get_over_tls(
        addr: std::net::SocketAddr,
        ca_pem: &[u8],
        identity: Option<(&str, &str)>,
    ) -> io::Result<String> {
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
        use tokio_rustls::rustls::{ClientConfig, RootCertStore};
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca_pem).unwrap())
            .unwrap();
        let builder = ClientConfig::builder_with_provider(Arc::new(
            tokio_rustls::rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
        let config = match identity {
            None => builder.with_no_client_auth(),
            Some((chain, key)) => builder
                .with_client_auth_cert(
                    vec![CertificateDer::from_pem_slice(chain.as_bytes()).unwrap()],
                    PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
                )
                .unwrap(),
        };
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, tcp).await?;
        tls.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await?;
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(10), tls.read_to_string(&mut answer))
            .await
            .map_err(|_| io::Error::other("no answer within 10 s"))??;
        Ok(answer)
    }

    #[tokio::test]
    async fn over_mutual_tls_handlers_see_the_clients_certificate_name_and_anonymous_clients_are_refused()
     {
        let dir = tempfile::tempdir().unwrap();
        let (tls, client, client_key) = mutual_tls_files(dir.path());
        let ca_pem = std::fs::read(dir.path().join("ca.pem")).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = axum::Router::new().route(
            "/",
            axum::routing::get(|request: axum::extract::Request| async move {
                match request.extensions().get::<ClientIdentity>() {
                    Some(identity) => format!("identity {identity}"),
                    None => "no identity".to_string(),
                }
            }),
        );
        let (stop, mut stopped) = watch::channel(false);
        let serving = HttpServing {
            max: 16,
            header_read: Duration::from_secs(10),
            grace: Duration::from_secs(5),
            tls: Some((tls.http_acceptor(), Duration::from_secs(5))),
        };
        let server = tokio::spawn(serve_http(listener, router, serving, async move {
            let _ = stopped.wait_for(|s| *s).await;
        }));

        let answer = get_over_tls(addr, &ca_pem, Some((&client, &client_key)))
            .await
            .unwrap();
        assert!(answer.ends_with("identity gateway-1"), "{answer}");
        // Without a certificate the handshake fails: no handler runs.
        let refused = get_over_tls(addr, &ca_pem, None).await;
        assert!(
            refused
                .as_ref()
                .is_err_and(|error| error.to_string().contains("CertificateRequired")),
            "{refused:?}"
        );
        stop.send(true).unwrap();
        server.await.unwrap();
    }

    #[test]
    fn the_open_files_limit_is_raised_to_the_hard_limit() {
        let now = raise_open_files_limit(0);
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        assert_eq!(now, limit.current);
        assert_eq!(limit.current, limit.maximum);
    }
}
