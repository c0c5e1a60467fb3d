//! Replica-to-replica transport: openraft's RPCs over gRPC (tonic), bodies encoded with
//! postcard. A remote failure travels back as text and is treated as "unreachable" (openraft
//! backs off and retries); only fincore replicas of the same build talk this protocol.

use std::future::Future;
use std::io::Cursor;
use std::time::Duration;

use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, v2::RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::type_config::alias::{SnapshotMetaOf, SnapshotOf, VoteOf};
use openraft::{AnyError, OptionalSend};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::{Channel, Endpoint};

use crate::proto::{
    self, raft_transport_client::RaftTransportClient, raft_transport_server::RaftTransport,
};
use crate::state_machine::LedgerStateMachine;
use crate::types::{NodeId, PeerNode, TypeConfig};

/// The Raft instance of a replica (crate-private: nothing outside names an openraft type).
pub(crate) type Raft = openraft::Raft<TypeConfig, LedgerStateMachine<TypeConfig>>;

/// Largest transport message (a whole snapshot travels in one for now).
use limits::PEER_MESSAGE_BYTES_MAX as MESSAGE_BYTES_MAX;

type SnapshotFrame = (VoteOf<TypeConfig>, SnapshotMetaOf<TypeConfig>, Vec<u8>);

/// HTTP/2 flow-control windows, sized for full batches.
use limits::{HTTP2_CONNECTION_WINDOW_BYTES, HTTP2_STREAM_WINDOW_BYTES};

fn encode<T: Serialize>(value: &T) -> Result<proto::RaftMessage, tonic::Status> {
    postcard::to_allocvec(value)
        .map(|body| proto::RaftMessage { body: body.into() })
        .map_err(|e| tonic::Status::internal(format!("encoding: {e}")))
}

fn decode<T: DeserializeOwned>(message: &proto::RaftMessage) -> Result<T, tonic::Status> {
    postcard::from_bytes(&message.body)
        .map_err(|e| tonic::Status::invalid_argument(format!("decoding: {e}")))
}

/// Makes a transport client for each peer. A route given for a peer (this node's own view of
/// how to reach it, e.g. through a local proxy) wins over the address in the membership.
#[derive(Debug, Clone, Default)]
pub struct TransportFactory {
    pub routes: std::collections::BTreeMap<NodeId, String>,
}

impl RaftNetworkFactory<TypeConfig> for TransportFactory {
    type Network = TransportClient;

    async fn new_client(&mut self, target: NodeId, node: &PeerNode) -> TransportClient {
        let addr = self
            .routes
            .get(&target)
            .cloned()
            .unwrap_or_else(|| node.grpc.clone());
        TransportClient { addr, client: None }
    }
}

/// The connection to one peer.
pub struct TransportClient {
    addr: String,
    client: Option<RaftTransportClient<Channel>>,
}

fn unreachable(error: impl std::fmt::Display) -> RPCError<TypeConfig> {
    RPCError::Unreachable(Unreachable::new(&AnyError::error(error.to_string())))
}

impl TransportClient {
    fn client(&mut self) -> Result<RaftTransportClient<Channel>, RPCError<TypeConfig>> {
        if self.client.is_none() {
            let endpoint = Endpoint::from_shared(format!("http://{}", self.addr))
                .map_err(unreachable)?
                .tcp_nodelay(true)
                // Whole batches are ~1 MiB: HTTP/2's default 64 KiB windows would cost a round trip
                // per 64 KiB.
                .initial_stream_window_size(Some(HTTP2_STREAM_WINDOW_BYTES))
                .initial_connection_window_size(Some(HTTP2_CONNECTION_WINDOW_BYTES))
                .connect_timeout(Duration::from_millis(500));
            self.client = Some(
                RaftTransportClient::new(endpoint.connect_lazy())
                    .max_decoding_message_size(MESSAGE_BYTES_MAX)
                    .max_encoding_message_size(MESSAGE_BYTES_MAX),
            );
        }
        Ok(self.client.clone().expect("just set"))
    }

    async fn call<Req, Resp, F, Fut>(
        &mut self,
        request: &Req,
        timeout: Duration,
        send: F,
    ) -> Result<Resp, RPCError<TypeConfig>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        F: FnOnce(RaftTransportClient<Channel>, proto::RaftMessage) -> Fut,
        Fut: Future<Output = Result<tonic::Response<proto::RaftMessage>, tonic::Status>>,
    {
        let message = postcard::to_allocvec(request)
            .map_err(|e| RPCError::Network(NetworkError::new(&AnyError::error(e.to_string()))))?;
        let client = self.client()?;
        let answer = match tokio::time::timeout(
            timeout,
            send(
                client,
                proto::RaftMessage {
                    body: message.into(),
                },
            ),
        )
        .await
        {
            Ok(Ok(answer)) => answer.into_inner(),
            Ok(Err(status)) => {
                // Start over with a fresh connection: the peer may have been replaced at the
                // same address while this connection still reaches its old self.
                self.client = None;
                return Err(unreachable(format!("{}: {}", self.addr, status.message())));
            }
            Err(_) => {
                self.client = None;
                return Err(unreachable(format!(
                    "{}: timed out after {timeout:?}",
                    self.addr
                )));
            }
        };
        let result: Result<Resp, String> =
            postcard::from_bytes(&answer.body).map_err(unreachable)?;
        result.map_err(|remote| {
            self.client = None;
            unreachable(format!("{}: {remote}", self.addr))
        })
    }
}

impl RaftNetworkV2<TypeConfig> for TransportClient {
    type SnapshotData = Cursor<Vec<u8>>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(&rpc, option.hard_ttl(), |mut c, m| async move {
            c.append_entries(m).await
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(&rpc, option.hard_ttl(), |mut c, m| async move {
            c.vote(m).await
        })
        .await
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, Self::SnapshotData>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let frame: SnapshotFrame = (vote, snapshot.meta, snapshot.snapshot.into_inner());
        tokio::pin!(cancel);
        tokio::select! {
            closed = &mut cancel => Err(StreamingError::Closed(closed)),
            answer = self.call(&frame, option.hard_ttl(), |mut c, m| async move { c.full_snapshot(m).await }) => Ok(answer?),
        }
    }

    async fn transfer_leader(
        &mut self,
        rpc: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(&rpc, option.hard_ttl(), |mut c, m| async move {
            c.transfer_leader(m).await
        })
        .await
    }
}

/// The receiving side: hands peers' RPCs to the local Raft.
pub struct RaftTransportService {
    raft: Raft,
}

impl RaftTransportService {
    pub(crate) fn new(
        raft: Raft,
    ) -> proto::raft_transport_server::RaftTransportServer<RaftTransportService> {
        proto::raft_transport_server::RaftTransportServer::new(RaftTransportService { raft })
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX)
    }
}

type Answer = Result<tonic::Response<proto::RaftMessage>, tonic::Status>;

fn answer<T: Serialize, E: std::fmt::Display>(result: Result<T, E>) -> Answer {
    encode(&result.map_err(|e| e.to_string())).map(tonic::Response::new)
}

#[tonic::async_trait]
impl RaftTransport for RaftTransportService {
    async fn append_entries(&self, request: tonic::Request<proto::RaftMessage>) -> Answer {
        answer(self.raft.append_entries(decode(request.get_ref())?).await)
    }

    async fn vote(&self, request: tonic::Request<proto::RaftMessage>) -> Answer {
        answer(self.raft.vote(decode(request.get_ref())?).await)
    }

    async fn full_snapshot(&self, request: tonic::Request<proto::RaftMessage>) -> Answer {
        let (vote, meta, data): SnapshotFrame = decode(request.get_ref())?;
        let snapshot = SnapshotOf::<TypeConfig, Cursor<Vec<u8>>> {
            meta,
            snapshot: Cursor::new(data),
        };
        answer(self.raft.install_full_snapshot(vote, snapshot).await)
    }

    async fn transfer_leader(&self, request: tonic::Request<proto::RaftMessage>) -> Answer {
        answer(
            self.raft
                .handle_transfer_leader(decode(request.get_ref())?)
                .await,
        )
    }
}

#[cfg(test)]
mod tests {
    use openraft::entry::RaftEntry;
    use openraft::testing::log_id;

    use crate::types::{SealedBatch, TypeConfig};

    #[test]
    fn a_full_batch_as_a_raft_entry_fits_raft_entry_bytes_max() {
        let batch = ledger::Batch {
            timestamp: u64::MAX,
            body: ledger::BatchBody::CreateTransfers(vec![
                ledger::Transfer::default();
                limits::BATCH_EVENTS_MAX
            ]),
        }
        .encode();
        assert_eq!(batch.len(), limits::BATCH_BYTES_MAX);
        let entry = openraft::type_config::alias::EntryOf::<TypeConfig>::new_normal(
            log_id::<TypeConfig>(u64::MAX, u64::MAX, u64::MAX),
            SealedBatch(batch.into()),
        );
        let encoded = postcard::to_allocvec(&entry).unwrap();
        assert!(
            encoded.len() <= limits::RAFT_ENTRY_BYTES_MAX,
            "{} bytes",
            encoded.len()
        );
    }
}
