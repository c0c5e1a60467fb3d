//! The simulated network between replicas: every RPC and every reply goes through the world,
//! which may lose it (randomly, or because the link is cut), delay it (so messages overtake
//! one another) or deliver a request twice. A snapshot travels as one message, but is read from
//! the sender's snapshot file and received, checked and installed by the receiver's state
//! machine exactly as the production transport does it, chunk by chunk.

use std::future::Future;
use std::time::Duration;

use openraft::errors::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, v2::RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{AnyError, OptionalSend};

use replication::openraft_side::{SnapshotData, SnapshotOffer};

use crate::types::{NodeId, SimConfig, SimMachine, SimRaft, Vote, spawn};
use crate::world::{Fate, Shared};

/// How long a sender waits before it learns that a lost message got no answer.
const LOST_MESSAGE_WAIT: Duration = Duration::from_millis(50);

/// Makes the links of one replica.
pub struct SimNetwork {
    pub from: NodeId,
    pub world: Shared,
}

impl RaftNetworkFactory<SimConfig> for SimNetwork {
    type Network = SimLink;

    async fn new_client(&mut self, target: NodeId, _node: &replication::PeerNode) -> SimLink {
        SimLink {
            from: self.from,
            to: target,
            world: self.world.clone(),
        }
    }
}

/// The link from one replica to another.
pub struct SimLink {
    from: NodeId,
    to: NodeId,
    world: Shared,
}

#[derive(Clone)]
enum Request {
    Append(AppendEntriesRequest<SimConfig>),
    Vote(VoteRequest<SimConfig>),
    /// The offer and the snapshot's bytes, in chunks as they were read.
    Snapshot(SnapshotOffer, Vec<Vec<u8>>),
    TransferLeader(TransferLeaderRequest<SimConfig>),
}

enum Response {
    Append(AppendEntriesResponse<SimConfig>),
    Vote(VoteResponse<SimConfig>),
    Snapshot(SnapshotResponse<SimConfig>),
    TransferLeader(TransferLeaderResponse<SimConfig>),
}

impl Request {
    fn kind(&self) -> &'static str {
        match self {
            Request::Append(_) => "append",
            Request::Vote(_) => "vote",
            Request::Snapshot(..) => "snapshot",
            Request::TransferLeader(_) => "transfer-leader",
        }
    }

    /// The receiving replica handles the request.
    async fn handle(self, raft: SimRaft, machine: SimMachine) -> Result<Response, String> {
        match self {
            Request::Append(rpc) => raft
                .append_entries(rpc)
                .await
                .map(Response::Append)
                .map_err(|e| e.to_string()),
            Request::Vote(rpc) => raft
                .vote(rpc)
                .await
                .map(Response::Vote)
                .map_err(|e| e.to_string()),
            Request::Snapshot(offer, chunks) => {
                let received = receive(&machine, &offer, &chunks).map_err(|e| e.to_string())?;
                raft.install_full_snapshot(
                    offer.vote,
                    openraft::type_config::alias::SnapshotOf::<SimConfig, _> {
                        meta: offer.meta,
                        snapshot: received,
                    },
                )
                .await
                .map(Response::Snapshot)
                .map_err(|e| e.to_string())
            }
            Request::TransferLeader(rpc) => raft
                .handle_transfer_leader(rpc)
                .await
                .map(Response::TransferLeader)
                .map_err(|e| e.to_string()),
        }
    }
}

/// The receiving state machine takes the snapshot's chunks into a file and checks it whole.
fn receive(
    machine: &SimMachine,
    offer: &SnapshotOffer,
    chunks: &[Vec<u8>],
) -> std::io::Result<SnapshotData> {
    let mut receiver = machine.receive_snapshot(offer)?;
    for chunk in chunks {
        receiver.write(chunk)?;
    }
    receiver.finish()
}

/// The snapshot's offer and its bytes, read from the sender's snapshot file.
fn read_snapshot(
    vote: Vote,
    snapshot: openraft::type_config::alias::SnapshotOf<SimConfig, SnapshotData>,
) -> std::io::Result<Request> {
    let data = snapshot.snapshot;
    let mut chunks = Vec::new();
    let mut reader = data.chunks();
    while let Some(chunk) = reader.next_chunk()? {
        chunks.push(chunk);
    }
    let offer = SnapshotOffer {
        vote,
        meta: snapshot.meta,
        len_bytes: data.len_bytes(),
        digest: data.digest(),
    };
    Ok(Request::Snapshot(offer, chunks))
}

fn unreachable(why: impl std::fmt::Display) -> RPCError<SimConfig> {
    RPCError::Unreachable(Unreachable::new(&AnyError::error(why.to_string())))
}

impl SimLink {
    async fn call(&self, request: Request, ttl: Duration) -> Result<Response, RPCError<SimConfig>> {
        let kind = request.kind();
        let fate = self.world.lock().message_fate(self.from, self.to, kind);
        let Fate::Delivered {
            delay,
            duplicate_after,
        } = fate
        else {
            tokio::time::sleep(ttl.min(LOST_MESSAGE_WAIT)).await;
            return Err(unreachable("request lost"));
        };
        tokio::time::sleep(delay).await;
        let (raft, machine) = {
            let world = self.world.lock();
            let machine = world.nodes.get(&self.to).and_then(|n| n.machine.clone());
            (world.running(self.to), machine)
        };
        let (Some(raft), Some(machine)) = (raft, machine) else {
            return Err(unreachable("replica down"));
        };
        if let Some(after) = duplicate_after {
            let (copy, raft, machine) = (request.clone(), raft.clone(), machine.clone());
            spawn(async move {
                tokio::time::sleep(after).await;
                let _ = copy.handle(raft, machine).await;
            });
        }
        let response = match tokio::time::timeout(ttl, request.handle(raft, machine)).await {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => {
                self.world.lock().trace(format_args!(
                    "{kind} {}->{} refused: {error}",
                    self.from, self.to
                ));
                return Err(unreachable(error));
            }
            Err(_) => return Err(unreachable("timed out")),
        };
        let reply = self.world.lock().message_fate(self.to, self.from, "reply");
        match reply {
            Fate::Lost => {
                tokio::time::sleep(ttl.min(LOST_MESSAGE_WAIT)).await;
                Err(unreachable("reply lost"))
            }
            Fate::Delivered { delay, .. } => {
                tokio::time::sleep(delay).await;
                Ok(response)
            }
        }
    }
}

fn mismatch() -> RPCError<SimConfig> {
    unreachable("reply of the wrong kind")
}

impl RaftNetworkV2<SimConfig> for SimLink {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<SimConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<SimConfig>, RPCError<SimConfig>> {
        match self.call(Request::Append(rpc), option.hard_ttl()).await? {
            Response::Append(r) => Ok(r),
            _ => Err(mismatch()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<SimConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<SimConfig>, RPCError<SimConfig>> {
        match self.call(Request::Vote(rpc), option.hard_ttl()).await? {
            Response::Vote(r) => Ok(r),
            _ => Err(mismatch()),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: openraft::type_config::alias::SnapshotOf<SimConfig, Self::SnapshotData>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<SimConfig>, StreamingError<SimConfig>> {
        let request = read_snapshot(vote, snapshot)
            .map_err(|e| StreamingError::from(unreachable(format!("reading the snapshot: {e}"))))?;
        tokio::pin!(cancel);
        tokio::select! {
            biased;
            closed = &mut cancel => Err(StreamingError::Closed(closed)),
            answer = self.call(request, option.hard_ttl()) => match answer? {
                Response::Snapshot(r) => Ok(r),
                _ => Err(mismatch().into()),
            },
        }
    }

    async fn transfer_leader(
        &mut self,
        rpc: TransferLeaderRequest<SimConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<SimConfig>, RPCError<SimConfig>> {
        match self
            .call(Request::TransferLeader(rpc), option.hard_ttl())
            .await?
        {
            Response::TransferLeader(r) => Ok(r),
            _ => Err(mismatch()),
        }
    }
}
