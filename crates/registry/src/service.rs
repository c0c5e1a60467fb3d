//! The registry's gRPC service (`fincore.registry.v1.Registry/Session`): one bidirectional
//! stream per client, whose first message must be a `Hello` (within
//! [`HELLO_SECONDS_MAX`]); then each request is answered in order and pushes are sent as
//! subscribed keys change.
//!
//! The embedding server authenticates the call and puts the caller's [`Rights`] into the
//! request's extensions (a call without them is refused UNAUTHENTICATED). Owns the mapping
//! between the stream and a [`Session`]; must not decide what a request does (`session`).

use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use limits::{
    REGISTRY_CLIENT_MESSAGE_BYTES_MAX, REGISTRY_SERVER_MESSAGE_BYTES_MAX,
    REGISTRY_STREAM_QUEUE_MESSAGES,
};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use crate::proto::{self, client_message::Body, server_message};
use crate::session::{Outgoing, Registry, Rights, Session};

/// How long a new stream has to send its `Hello`.
pub const HELLO_SECONDS_MAX: u64 = 10;

/// The gRPC face of a [`Registry`].
#[derive(Debug, Clone)]
pub struct RegistryService {
    registry: Arc<Registry>,
}

impl RegistryService {
    pub fn new(registry: Arc<Registry>) -> RegistryService {
        RegistryService { registry }
    }

    /// The tonic service, with the registry's message-size limits.
    pub fn into_server(self) -> proto::registry_server::RegistryServer<RegistryService> {
        proto::registry_server::RegistryServer::new(self)
            .max_decoding_message_size(REGISTRY_CLIENT_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(REGISTRY_SERVER_MESSAGE_BYTES_MAX)
    }
}

type Outbound = Pin<Box<dyn Stream<Item = Result<proto::ServerMessage, Status>> + Send>>;

fn answer(answer: proto::Answer) -> Outgoing {
    let message = proto::ServerMessage {
        body: Some(server_message::Body::Answer(answer)),
    };
    (Ok(message), None)
}

#[tonic::async_trait]
impl proto::registry_server::Registry for RegistryService {
    type SessionStream = Outbound;

    async fn session(
        &self,
        request: Request<Streaming<proto::ClientMessage>>,
    ) -> Result<Response<Outbound>, Status> {
        let opening = Opening::take(&self.registry, request, "hello").await?;
        let (rights, host, inbound, first) =
            (opening.rights, opening.host, opening.inbound, opening.first);
        let Some(Body::Hello(hello)) = first.body else {
            return Err(Status::invalid_argument(
                "hello: the stream's first message must be a Hello",
            ));
        };
        let (out, outbound) = mpsc::channel(REGISTRY_STREAM_QUEUE_MESSAGES);
        let session = self
            .registry
            .open(&hello, host, rights, out.clone())
            .map_err(|refusal| {
                if refusal.field == "stream" {
                    Status::resource_exhausted(refusal.to_string())
                } else {
                    Status::invalid_argument(refusal.to_string())
                }
            })?;
        out.try_send(answer(proto::Answer {
            request_id: first.request_id,
            ok: true,
            ..proto::Answer::default()
        }))
        .expect("an empty queue takes one message");
        tokio::spawn(Arc::clone(&self.registry).push_loop(Arc::clone(&session)));
        tokio::spawn(serve_requests(
            Arc::clone(&self.registry),
            session,
            inbound,
            out,
        ));
        // A push's share of the byte budget returns once the stream has taken it.
        let outbound = futures::stream::unfold(outbound, |mut outbound| async move {
            outbound
                .recv()
                .await
                .map(|(message, _budget)| (message, outbound))
        });
        Ok(Response::new(Box::pin(outbound)))
    }
}

/// What a new stream brings before it is a session: the caller's rights (put in the request
/// by the embedding server's interceptor), its address, and its first message.
pub(crate) struct Opening<T> {
    pub rights: Rights,
    pub host: IpAddr,
    pub inbound: Streaming<T>,
    pub first: T,
}

impl<T> Opening<T> {
    /// Takes a stream's opening: refused while the registry stops, without rights, or when the
    /// first message (`first`, for errors) does not come within [`HELLO_SECONDS_MAX`].
    pub(crate) async fn take(
        registry: &Registry,
        request: Request<Streaming<T>>,
        first: &str,
    ) -> Result<Opening<T>, Status> {
        if registry.is_ending() {
            return Err(Status::unavailable("this registry is stopping"));
        }
        let rights = request
            .extensions()
            .get::<Rights>()
            .cloned()
            .ok_or_else(|| Status::unauthenticated("this registry authenticated nobody"))?;
        let host = request
            .remote_addr()
            .map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), |address| address.ip());
        let mut inbound = request.into_inner();
        let message =
            tokio::time::timeout(Duration::from_secs(HELLO_SECONDS_MAX), inbound.message())
                .await
                .map_err(|_| {
                    Status::deadline_exceeded(format!(
                        "{first}: the stream's first message must come within \
                         {HELLO_SECONDS_MAX} s"
                    ))
                })??
                .ok_or_else(|| Status::cancelled(format!("the stream ended before its {first}")))?;
        Ok(Opening {
            rights,
            host,
            inbound,
            first: message,
        })
    }
}

/// Answers `session`'s requests in order until its stream ends, then closes it.
async fn serve_requests(
    registry: Arc<Registry>,
    session: Arc<Session>,
    mut inbound: Streaming<proto::ClientMessage>,
    out: mpsc::Sender<Outgoing>,
) {
    loop {
        let message = tokio::select! {
            message = inbound.message() => message,
            () = out.closed() => break,
            () = registry.ended() => break,
        };
        let message = match message {
            Ok(Some(message)) => message,
            Ok(None) => break,
            Err(status) => {
                tracing::debug!(stream = session.id(), %status, "registry stream broke");
                break;
            }
        };
        if let Some(reply) = registry.handle(&session, message)
            && out.send(answer(reply)).await.is_err()
        {
            break;
        }
    }
    registry.close(&session);
}
