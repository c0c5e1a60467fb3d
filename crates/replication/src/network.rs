//! Replica-to-replica transport: openraft's RPCs over gRPC (tonic) on the peer listener, bodies
//! encoded with postcard. A remote failure travels back as text and is treated as "unreachable"
//! (openraft backs off and retries); only fincore replicas of the same build talk this protocol.
//!
//! With peer TLS (the default; `--insecure-peers` turns it off) the connection is mutual TLS
//! under the group's authority ([`crate::peer_tls`]): a dialler accepts only the certificate
//! naming the peer it meant to reach, and the receiving side accepts a message only when the
//! connection's certificate names the node the message claims to come from (the leader or
//! candidate in its vote) and that node is a current member (a replica not yet in any group,
//! waiting to be added, takes the first leader that reaches it with a group certificate).
//! Without TLS only the membership check stands.
//! Snapshots are streamed: the sender reads its snapshot file a chunk at a time, the receiver
//! writes the chunks to a file of its own on a blocking thread (a few chunks queued between
//! them), checks it whole and only then hands it to Raft; both sides give up after a time
//! that grows with the snapshot's length.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;

use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, v2::RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::type_config::alias::{SnapshotOf, VoteOf};
use openraft::{AnyError, OptionalSend};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::{Channel, Endpoint};

use crate::machine::ReplicaMachine;
use crate::peer_tls::PeerTls;
use crate::proto::{
    self, raft_transport_client::RaftTransportClient, raft_transport_server::RaftTransport,
};
use crate::snapshot::{SnapshotData, SnapshotOffer, snapshot_timeout};
use crate::state_machine::LedgerStateMachine;
use crate::types::{NodeId, PeerNode, TypeConfig};

/// The Raft instance of a replica running machine `M` (crate-private: nothing outside names an
/// openraft type).
pub(crate) type Raft<M = LedgerStateMachine<TypeConfig>> = openraft::Raft<TypeConfig, M>;

/// Largest transport message (a full AppendEntries; snapshots travel in chunks).
use limits::PEER_MESSAGE_BYTES_MAX as MESSAGE_BYTES_MAX;

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

/// Snapshots a replica streamed to peers that took them, and received and installed, since it
/// started (what `fincore_raft_snapshots_*_total` export).
#[derive(Debug, Default)]
pub(crate) struct SnapshotCounts {
    sent: AtomicU64,
    installed: AtomicU64,
}

impl SnapshotCounts {
    /// (sent, installed).
    pub(crate) fn get(&self) -> (u64, u64) {
        (
            self.sent.load(Ordering::Relaxed),
            self.installed.load(Ordering::Relaxed),
        )
    }
}

/// Makes a transport client for each peer. A route given for a peer (this node's own view of
/// how to reach it, e.g. through a local proxy) wins over the peer address in the membership.
#[derive(Clone, Default)]
pub struct TransportFactory {
    pub routes: std::collections::BTreeMap<NodeId, String>,
    /// This node's identity and the group's authority; `None`: plaintext (`--insecure-peers`).
    pub tls: Option<PeerTls>,
    pub(crate) snapshots: Arc<SnapshotCounts>,
}

impl RaftNetworkFactory<TypeConfig> for TransportFactory {
    type Network = TransportClient;

    async fn new_client(&mut self, target: NodeId, node: &PeerNode) -> TransportClient {
        let addr = self
            .routes
            .get(&target)
            .cloned()
            .unwrap_or_else(|| node.peer.clone());
        TransportClient {
            addr,
            target,
            tls: self.tls.clone(),
            client: None,
            snapshots: Arc::clone(&self.snapshots),
        }
    }
}

/// The connection to one peer.
pub struct TransportClient {
    addr: String,
    target: NodeId,
    tls: Option<PeerTls>,
    client: Option<RaftTransportClient<Channel>>,
    snapshots: Arc<SnapshotCounts>,
}

fn unreachable(error: impl std::fmt::Display) -> RPCError<TypeConfig> {
    RPCError::Unreachable(Unreachable::new(&AnyError::error(error.to_string())))
}

impl TransportClient {
    fn client(&mut self) -> Result<RaftTransportClient<Channel>, RPCError<TypeConfig>> {
        if self.client.is_none() {
            let scheme = if self.tls.is_some() { "https" } else { "http" };
            let mut endpoint = Endpoint::from_shared(format!("{scheme}://{}", self.addr))
                .map_err(unreachable)?
                .tcp_nodelay(true)
                // Whole batches are ~1 MiB: HTTP/2's default 64 KiB windows would cost a round trip
                // per 64 KiB.
                .initial_stream_window_size(Some(HTTP2_STREAM_WINDOW_BYTES))
                .initial_connection_window_size(Some(HTTP2_CONNECTION_WINDOW_BYTES))
                .connect_timeout(Duration::from_millis(500));
            if let Some(tls) = &self.tls {
                endpoint = endpoint
                    .tls_config(tls.client_config(self.target))
                    .map_err(unreachable)?;
            }
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
        // openraft allows a heartbeat interval per AppendEntries; one carrying many full
        // batches (a follower catching up) gets the time its bytes need besides.
        let timeout = timeout + transfer_time(message.len() as u64);
        let client = self.client()?;
        let answer = tokio::time::timeout(
            timeout,
            send(
                client,
                proto::RaftMessage {
                    body: message.into(),
                },
            ),
        )
        .await;
        self.answer(answer, timeout)
    }

    /// The peer's answer to a call that took at most `timeout`.
    fn answer<Resp: DeserializeOwned>(
        &mut self,
        answer: Result<
            Result<tonic::Response<proto::RaftMessage>, tonic::Status>,
            tokio::time::error::Elapsed,
        >,
        timeout: Duration,
    ) -> Result<Resp, RPCError<TypeConfig>> {
        let answer = match answer {
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

/// The time `len_bytes` may take to move at `PEER_TRANSFER_RATE_BYTES_PER_SECOND_MIN`.
fn transfer_time(len_bytes: u64) -> Duration {
    Duration::from_millis(len_bytes * 1000 / limits::PEER_TRANSFER_RATE_BYTES_PER_SECOND_MIN)
}

/// The messages of a snapshot stream: the offer, then the snapshot's bytes read from its file
/// a chunk at a time on a blocking thread (a read error ends the stream early, which the
/// receiver refuses as cut short).
fn snapshot_stream(
    offer: proto::RaftMessage,
    data: &SnapshotData,
) -> impl futures::Stream<Item = proto::RaftMessage> + Send + 'static {
    let chunks = futures::stream::unfold(Some(data.chunks()), |chunks| async move {
        let mut chunks = chunks?;
        let (chunks, next) = tokio::task::spawn_blocking(move || {
            let next = chunks.next_chunk();
            (chunks, next)
        })
        .await
        .ok()?;
        match next {
            Ok(Some(chunk)) => Some((proto::RaftMessage { body: chunk.into() }, Some(chunks))),
            Ok(None) => None,
            Err(error) => {
                tracing::warn!(%error, "reading the snapshot to send failed");
                None
            }
        }
    });
    futures::stream::once(async { offer }).chain(chunks)
}

impl RaftNetworkV2<TypeConfig> for TransportClient {
    type SnapshotData = SnapshotData;

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
        let data = snapshot.snapshot;
        let offer = SnapshotOffer {
            vote,
            meta: snapshot.meta,
            len_bytes: data.len_bytes(),
            digest: data.digest(),
        };
        // The receiver gives up after `snapshot_timeout` too; the sender waits a little longer
        // for its answer.
        let timeout =
            (snapshot_timeout(offer.len_bytes) + Duration::from_secs(1)).max(option.hard_ttl());
        let messages = snapshot_stream(encode(&offer).map_err(unreachable)?, &data);
        let mut client = self.client()?;
        tokio::pin!(cancel);
        let answer = tokio::select! {
            closed = &mut cancel => return Err(StreamingError::Closed(closed)),
            answer = tokio::time::timeout(timeout, client.install_snapshot(messages)) => answer,
        };
        let response: SnapshotResponse<TypeConfig> = self.answer(answer, timeout)?;
        // A peer holding a newer vote answers with it and takes nothing.
        if response.vote == vote {
            self.snapshots.sent.fetch_add(1, Ordering::Relaxed);
        }
        Ok(response)
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

/// The receiving side: checks who sends each peer RPC, then hands it to the local Raft.
pub struct RaftTransportService<M: ReplicaMachine = LedgerStateMachine<TypeConfig>> {
    raft: Raft<M>,
    machine: M,
    /// This node's identity and the group's authority; `None`: plaintext (`--insecure-peers`),
    /// where only the membership check below stands between the port and Raft.
    tls: Option<PeerTls>,
    /// Snapshot receptions running (each ends with a checked snapshot file for Raft to install).
    receptions: Arc<tokio::sync::Semaphore>,
    snapshots: Arc<SnapshotCounts>,
}

impl<M: ReplicaMachine> RaftTransportService<M> {
    pub(crate) fn new(
        raft: Raft<M>,
        machine: M,
        tls: Option<PeerTls>,
        snapshots: Arc<SnapshotCounts>,
    ) -> proto::raft_transport_server::RaftTransportServer<RaftTransportService<M>> {
        proto::raft_transport_server::RaftTransportServer::new(RaftTransportService {
            raft,
            machine,
            tls,
            snapshots,
            receptions: Arc::new(tokio::sync::Semaphore::new(
                limits::PEER_SNAPSHOT_RECEPTIONS_MAX,
            )),
        })
        .max_decoding_message_size(MESSAGE_BYTES_MAX)
        .max_encoding_message_size(MESSAGE_BYTES_MAX)
    }

    /// Accepts a message whose `vote` says it comes from node N only if the connection's
    /// certificate names N (with peer TLS) and N is a member of this replica's group, as this
    /// replica's log says; while it belongs to no group yet (a new member waiting for its
    /// leader), any node with the group's certificate.
    ///
    /// Strict on purpose: a removed member's certificate, still valid, cannot speak for the
    /// group. The price: a follower that missed the change adding the current leader refuses
    /// that leader until leadership moves to a member it knows (or the follower is replaced).
    fn admit<T>(
        &self,
        request: &tonic::Request<T>,
        vote: &VoteOf<TypeConfig>,
    ) -> Result<(), tonic::Status> {
        use openraft::vote::RaftLeaderId;
        let sender = *vote.leader_id().node_id();
        if let Some(tls) = &self.tls {
            let certificates = request.peer_certs();
            tls.check_sender(certificates.as_deref().map(Vec::as_slice), sender)
                .map_err(|error| tonic::Status::permission_denied(error.to_string()))?;
        }
        use openraft::async_runtime::WatchReceiver;
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow_watched();
        let membership = metrics.membership_config.membership();
        let mut members = membership.nodes().map(|(id, _)| *id).peekable();
        let unclaimed = members.peek().is_none();
        if unclaimed || members.any(|id| id == sender) {
            Ok(())
        } else {
            Err(tonic::Status::permission_denied(format!(
                "node {sender} is not a member of this replica's group"
            )))
        }
    }
}

type Answer = Result<tonic::Response<proto::RaftMessage>, tonic::Status>;

fn answer<T: Serialize, E: std::fmt::Display>(result: Result<T, E>) -> Answer {
    encode(&result.map_err(|e| e.to_string())).map(tonic::Response::new)
}

#[tonic::async_trait]
impl<M: ReplicaMachine> RaftTransport for RaftTransportService<M> {
    async fn append_entries(&self, request: tonic::Request<proto::RaftMessage>) -> Answer {
        let rpc: AppendEntriesRequest<TypeConfig> = decode(request.get_ref())?;
        self.admit(&request, &rpc.vote)?;
        answer(self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, request: tonic::Request<proto::RaftMessage>) -> Answer {
        let rpc: VoteRequest<TypeConfig> = decode(request.get_ref())?;
        self.admit(&request, &rpc.vote)?;
        answer(self.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: tonic::Request<tonic::Streaming<proto::RaftMessage>>,
    ) -> Answer {
        // Who sends is known from the connection before the offer: a stranger (no member
        // certificate) is refused before anything is read or reserved.
        if self.tls.is_some() {
            let certificates = request.peer_certs();
            if certificates.as_deref().is_none_or(Vec::is_empty) {
                return Err(tonic::Status::permission_denied(
                    crate::peer_tls::PeerTlsError::NoCertificate.to_string(),
                ));
            }
        }
        let Ok(permit) = Arc::clone(&self.receptions).try_acquire_owned() else {
            return Err(tonic::Status::resource_exhausted(
                "another snapshot is being received; retry later",
            ));
        };
        let (metadata, extensions, mut messages) = request.into_parts();
        let first = messages
            .message()
            .await?
            .ok_or_else(|| tonic::Status::invalid_argument("snapshot stream: no offer"))?;
        let offer: SnapshotOffer = decode(&first)?;
        self.admit(
            &tonic::Request::from_parts(metadata, extensions, ()),
            &offer.vote,
        )?;
        let timeout = snapshot_timeout(offer.len_bytes);
        // The permit is held until Raft has installed (or dropped) the received snapshot.
        let (received, _permit) = tokio::time::timeout(
            timeout,
            receive_snapshot(&self.machine, &offer, messages, permit),
        )
        .await
        .map_err(|_| {
            tonic::Status::deadline_exceeded(format!(
                "snapshot of {} bytes not received and checked within {timeout:?}",
                offer.len_bytes
            ))
        })??;
        let snapshot = SnapshotOf::<TypeConfig, SnapshotData> {
            meta: offer.meta,
            snapshot: received,
        };
        let vote = offer.vote;
        let installed = self.raft.install_full_snapshot(offer.vote, snapshot).await;
        // A replica that holds a newer vote answers with it and installs nothing.
        if installed
            .as_ref()
            .is_ok_and(|response| response.vote == vote)
        {
            self.snapshots.installed.fetch_add(1, Ordering::Relaxed);
        }
        answer(installed)
    }

    async fn transfer_leader(&self, request: tonic::Request<proto::RaftMessage>) -> Answer {
        let rpc: TransferLeaderRequest<TypeConfig> = decode(request.get_ref())?;
        self.admit(&request, rpc.from_leader())?;
        answer(self.raft.handle_transfer_leader(rpc).await)
    }
}

/// Receives the bytes of the snapshot `offer` declares into a file and checks it whole. The
/// file is written, then read back and checked, on a blocking thread fed through a bounded
/// queue, which holds `permit` until it is done (even if the caller stopped waiting) and then
/// hands it back with the checked snapshot.
async fn receive_snapshot<M: ReplicaMachine>(
    machine: &M,
    offer: &SnapshotOffer,
    mut messages: tonic::Streaming<proto::RaftMessage>,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Result<(SnapshotData, tokio::sync::OwnedSemaphorePermit), tonic::Status> {
    let refused = |e: std::io::Error| tonic::Status::invalid_argument(e.to_string());
    let (chunks, mut queued) =
        tokio::sync::mpsc::channel::<bytes::Bytes>(limits::PEER_SNAPSHOT_CHUNKS_QUEUED_MAX);
    let machine = machine.clone();
    let offer = offer.clone();
    let writer = tokio::task::spawn_blocking(move || {
        let mut receive = || {
            let mut receiver = machine.receive_snapshot(&offer)?;
            while let Some(chunk) = queued.blocking_recv() {
                receiver.write(&chunk)?;
            }
            receiver.finish()
        };
        receive().map(|data| (data, permit))
    });
    while let Some(message) = messages.message().await? {
        if chunks.send(message.body).await.is_err() {
            break; // The writer refused the snapshot; its error is the answer.
        }
    }
    drop(chunks);
    writer
        .await
        .map_err(|e| tonic::Status::internal(format!("snapshot writer: {e}")))?
        .map_err(refused)
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
