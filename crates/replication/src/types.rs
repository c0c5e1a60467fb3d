//! The openraft type configuration: what a log entry carries and what applying it answers.

use std::fmt;

use bytes::Bytes;
use ledger::{BatchResults, CreateAccountResult, CreateTransferResult, EventResult};
use serde::{Deserialize, Serialize};

/// Replica ids.
pub type NodeId = u64;

/// The application data of one Raft entry: a sealed ledger batch, encoded (`ledger::Batch`).
/// The leader seals it (events + timestamp) before proposing, so every replica applies the
/// very same bytes.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedBatch(pub Bytes);

impl fmt::Debug for SealedBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealedBatch({} bytes)", self.0.len())
    }
}

impl fmt::Display for SealedBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// What applying an entry answered: the per-event results of its batch (empty for entries
/// that carry no batch).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchOutcome {
    pub accounts: bool,
    /// The batch was saga steps (transfer result codes); `accounts` is then false.
    #[serde(default)]
    pub saga: bool,
    pub codes: Vec<u32>,
    pub timestamps: Vec<u64>,
    /// When this replica applied the entry, for the trace of the write waiting on it.
    #[serde(skip)]
    pub applied: ApplyTiming,
}

/// When a replica started and finished applying an entry: set on the leader for an entry a
/// write waits on (its trace's apply stage). Not part of what the outcome says: never sent,
/// and equal to every other (two replicas' outcomes of one entry compare equal).
#[derive(Clone, Copy, Default)]
pub struct ApplyTiming(pub Option<(std::time::Instant, std::time::Instant)>);

/// Shown without the instants, so that an outcome prints the same in every run (the
/// simulator's reports are replayed by seed).
impl fmt::Debug for ApplyTiming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApplyTiming(..)")
    }
}

impl PartialEq for ApplyTiming {
    fn eq(&self, _: &ApplyTiming) -> bool {
        true
    }
}

impl Eq for ApplyTiming {}

impl BatchOutcome {
    pub fn from_results(results: &BatchResults) -> BatchOutcome {
        match results {
            BatchResults::CreateAccounts(r) => BatchOutcome {
                accounts: true,
                saga: false,
                codes: r.iter().map(|r| r.result.code()).collect(),
                timestamps: r.iter().map(|r| r.timestamp).collect(),
                applied: ApplyTiming::default(),
            },
            BatchResults::CreateTransfers(r) => BatchOutcome {
                accounts: false,
                saga: false,
                codes: r.iter().map(|r| r.result.code()).collect(),
                timestamps: r.iter().map(|r| r.timestamp).collect(),
                applied: ApplyTiming::default(),
            },
            BatchResults::SagaSteps(r) => BatchOutcome {
                accounts: false,
                saga: true,
                codes: r.iter().map(|r| r.result.code()).collect(),
                timestamps: r.iter().map(|r| r.timestamp).collect(),
                applied: ApplyTiming::default(),
            },
        }
    }

    /// The typed results (codes come from this build's own state machine, so they are known).
    pub fn to_results(&self) -> BatchResults {
        let pairs = self.codes.iter().zip(&self.timestamps);
        if self.accounts {
            BatchResults::CreateAccounts(
                pairs
                    .map(|(&code, &timestamp)| EventResult {
                        result: CreateAccountResult::from_code(code)
                            .expect("a code this build produced"),
                        timestamp,
                    })
                    .collect(),
            )
        } else {
            let results = pairs
                .map(|(&code, &timestamp)| EventResult {
                    result: CreateTransferResult::from_code(code)
                        .expect("a code this build produced"),
                    timestamp,
                })
                .collect();
            if self.saga {
                BatchResults::SagaSteps(results)
            } else {
                BatchResults::CreateTransfers(results)
            }
        }
    }
}

/// How to reach a replica: its client listeners (gRPC, HTTP), which the group tells clients
/// to redirect them to the leader, and its peer listener, where the other replicas send Raft
/// messages (mutual TLS unless the group runs `--insecure-peers`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerNode {
    pub grpc: String,
    pub http: String,
    pub peer: String,
}

impl fmt::Display for PeerNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "grpc={} http={} peer={}",
            self.grpc, self.http, self.peer
        )
    }
}

openraft::declare_raft_types!(
    /// fincore's Raft types: standard Raft leader ids (a log id is term + index, exactly what
    /// a journal record header holds).
    pub TypeConfig:
        D = SealedBatch,
        R = BatchOutcome,
        NodeId = NodeId,
        Node = PeerNode,
        LeaderId = openraft::impls::leader_id_std::LeaderId<u64, NodeId>,
);

/// The leader id kind every replica uses (standard Raft: a term and the node that won it).
pub type StdLeaderId = openraft::impls::leader_id_std::LeaderId<u64, NodeId>;
/// One Raft log entry (the same type under every [`LedgerConfig`]).
pub type LedgerEntry = openraft::Entry<
    <StdLeaderId as openraft::vote::RaftLeaderId>::Committed,
    openraft::EntryPayload<SealedBatch, NodeId, PeerNode>,
>;

/// The openraft configurations a replica's log and state machine run under: everything but the
/// async runtime is fixed. Production uses [`TypeConfig`] (tokio); the simulator the same types
/// on a runtime whose random choices come from the run's seed (it implements this trait for its
/// own configuration), so it drives this crate's very log store and state machine.
pub trait LedgerConfig:
    openraft::RaftTypeConfig<
        D = SealedBatch,
        R = BatchOutcome,
        NodeId = NodeId,
        Node = PeerNode,
        Term = u64,
        LeaderId = StdLeaderId,
        Vote = openraft::impls::Vote<StdLeaderId>,
        Entry = LedgerEntry,
    >
{
}

impl LedgerConfig for TypeConfig {}
