//! The checker: what every replica applies and every client is told, held against a naive
//! reference model of the ledger run over the committed order.
//!
//! The first replica to apply index `i` fixes what the group committed there; every other
//! replica applying `i` (again after a restart, too) must apply the very same entry and get
//! the very same results, and the model, fed the committed entries in order, must agree with
//! those results. Replicas' state digests must match at the same index, and every reply a
//! client gets must be the model's answer for the entry it was committed as.

use std::collections::BTreeMap;

use ledger::{Batch, BatchBody, StateDigest, StateMachine};
use ledger_model::Model;
use openraft::EntryPayload;
use replication::BatchOutcome;
use sha2::{Digest, Sha256};

use crate::types::{Entry, LogId, NodeId};

/// More than this many violations are counted, not kept.
const VIOLATIONS_KEPT: usize = 20;

struct CommittedEntry {
    term: u64,
    fingerprint: [u8; 32],
    expected: BatchOutcome,
    first_applied_by: NodeId,
}

#[derive(Default)]
pub struct Oracle {
    committed: BTreeMap<u64, CommittedEntry>,
    model: Model,
    digests: BTreeMap<u64, (NodeId, StateDigest)>,
    /// Transfer ids a client was told exist (created now, or earlier with the same content).
    acknowledged: BTreeMap<u128, u32>,
    pub violations: Vec<String>,
    pub violations_total: u64,
    pub applies_checked: u64,
}

fn fingerprint(entry: &Entry) -> [u8; 32] {
    let mut hasher = Sha256::new();
    match &entry.payload {
        EntryPayload::Normal(sealed) => hasher.update(&sealed.0),
        EntryPayload::Membership(m) => hasher.update(format!("membership {m:?}").as_bytes()),
        EntryPayload::Blank => hasher.update(b"blank"),
    }
    hasher.finalize().into()
}

fn transfer_ok_codes() -> [u32; 2] {
    [
        ledger::CreateTransferResult::Created.code(),
        ledger::CreateTransferResult::Exists.code(),
    ]
}

impl Oracle {
    pub fn violation(&mut self, what: String) {
        self.violations_total += 1;
        if self.violations.len() < VIOLATIONS_KEPT {
            self.violations.push(what);
        }
    }

    /// The last index the group is known to have committed (and the model has applied).
    pub fn last_index(&self) -> Option<u64> {
        self.committed.keys().next_back().copied()
    }

    /// What the model answers for `entry`, applying it.
    fn model_apply(&mut self, entry: &Entry) -> Result<BatchOutcome, String> {
        let EntryPayload::Normal(sealed) = &entry.payload else {
            return Ok(BatchOutcome::default());
        };
        let batch = Batch::decode(&sealed.0).map_err(|e| e.to_string())?;
        Ok(match &batch.body {
            BatchBody::CreateAccounts(events) => {
                let results = self.model.apply_accounts(batch.timestamp, events);
                BatchOutcome {
                    accounts: true,
                    saga: false,
                    codes: results.iter().map(|(r, _)| r.code()).collect(),
                    timestamps: results.iter().map(|(_, t)| *t).collect(),
                    applied: Default::default(),
                }
            }
            BatchBody::CreateTransfers(events) => {
                let results = self.model.apply_transfers(batch.timestamp, events);
                BatchOutcome {
                    accounts: false,
                    saga: false,
                    codes: results.iter().map(|(r, _)| r.code()).collect(),
                    timestamps: results.iter().map(|(_, t)| *t).collect(),
                    applied: Default::default(),
                }
            }
            BatchBody::SagaSteps(_) => {
                return Err("the simulator's model has no saga steps, yet one was applied".into());
            }
        })
    }

    /// Replica `replica` applied `entry` and got `outcome` (and, at some indexes, `digest`).
    pub fn check_apply(
        &mut self,
        replica: NodeId,
        entry: &Entry,
        outcome: &BatchOutcome,
        digest: Option<StateDigest>,
    ) {
        self.applies_checked += 1;
        let index = entry.log_id.index();
        let term = entry.log_id.committed_leader_id().term;
        let print = fingerprint(entry);
        if let Some(committed) = self.committed.get(&index) {
            if committed.term != term || committed.fingerprint != print {
                let first = committed.first_applied_by;
                self.violation(format!(
                    "replicas {first} and {replica} applied different entries at index {index} (terms {} and {term})",
                    committed.term
                ));
            } else if committed.expected != *outcome {
                let expected = committed.expected.clone();
                self.violation(format!(
                    "replica {replica} got {outcome:?} applying index {index}; the model says {expected:?}"
                ));
            }
        } else {
            if let Some(last) = self.last_index()
                && index != last + 1
            {
                self.violation(format!(
                    "replica {replica} applied index {index} but the group's last applied index is {last}"
                ));
            }
            let expected = match self.model_apply(entry) {
                Ok(expected) => expected,
                Err(error) => {
                    self.violation(format!("index {index} holds an undecodable batch: {error}"));
                    BatchOutcome::default()
                }
            };
            if expected != *outcome {
                self.violation(format!(
                    "replica {replica} got {outcome:?} applying index {index}; the model says {expected:?}"
                ));
            }
            self.committed.insert(
                index,
                CommittedEntry {
                    term,
                    fingerprint: print,
                    expected,
                    first_applied_by: replica,
                },
            );
        }
        if let Some(digest) = digest {
            match self.digests.get(&index) {
                Some((other, theirs)) if *theirs != digest => {
                    let other = *other;
                    self.violation(format!(
                        "replicas {other} and {replica} have different state digests at index {index}"
                    ));
                }
                Some(_) => {}
                None => {
                    self.digests.insert(index, (replica, digest));
                }
            }
        }
    }

    /// A client was told `outcome` for its batch of transfers `ids`, committed at `log_id`.
    pub fn check_reply(
        &mut self,
        client: u64,
        log_id: &LogId,
        outcome: &BatchOutcome,
        ids: &[u128],
    ) {
        let index = log_id.index();
        let term = log_id.committed_leader_id().term;
        let Some(committed) = self.committed.get(&index) else {
            self.violation(format!(
                "client {client} was answered for index {index}, which no replica applied"
            ));
            return;
        };
        if committed.term != term || committed.expected != *outcome {
            let expected = committed.expected.clone();
            self.violation(format!(
                "client {client} was told {outcome:?} for index {index} (term {term}); the model says {expected:?} (term {})",
                committed.term
            ));
            return;
        }
        if !outcome.accounts {
            for (id, code) in ids.iter().zip(&outcome.codes) {
                if transfer_ok_codes().contains(code) {
                    self.acknowledged.insert(*id, *code);
                }
            }
        }
    }

    pub fn transfers_acknowledged(&self) -> usize {
        self.acknowledged.len()
    }

    /// The final state of a replica that applied everything committed, against the model:
    /// every account and transfer equal, every acknowledged transfer present, double entry.
    pub fn check_final_state(&mut self, replica: NodeId, state: &StateMachine) {
        if let Some(ledger) = state.unbalanced_ledger() {
            self.violation(format!(
                "replica {replica}: ledger {ledger} has debits != credits"
            ));
        }
        let mut problems = Vec::new();
        for created in &self.model.accounts {
            let expected = self.model.account(created.id);
            let actual = state.account(created.id).copied();
            if expected != actual {
                problems.push(format!(
                    "account {}: replica has {actual:?}, the model {expected:?}",
                    created.id
                ));
            }
        }
        for transfer in &self.model.transfers {
            let actual = state.transfer(transfer.transfer.id).copied();
            if actual != Some(transfer.transfer) {
                problems.push(format!(
                    "transfer {}: replica has {actual:?}, the model {:?}",
                    transfer.transfer.id, transfer.transfer
                ));
            }
        }
        for id in self.acknowledged.keys() {
            if state.transfer(*id).is_none() {
                problems.push(format!("acknowledged transfer {id} is missing"));
            }
        }
        for problem in problems {
            self.violation(format!("replica {replica}: {problem}"));
        }
        // Σ debits = Σ credits in the model too (it derives every balance from transfers).
        let mut totals: BTreeMap<u32, (u128, u128)> = BTreeMap::new();
        for created in &self.model.accounts {
            if let Some(account) = self.model.account(created.id) {
                let entry = totals.entry(account.ledger).or_default();
                entry.0 += account.debits_posted;
                entry.1 += account.credits_posted;
            }
        }
        for (ledger, (debits, credits)) in totals {
            if debits != credits {
                self.violation(format!(
                    "model: ledger {ledger} has debits {debits} != credits {credits}"
                ));
            }
        }
    }
}
