//! A sealed batch: one operation, its events and the timestamp it was sealed with.
//!
//! A batch is the unit of everything downstream (one journal record, one checksum, one hash
//! link, one fsync, later one Raft entry). Its encoding is a small header followed by the
//! events' fixed-size encodings, so encoding and decoding are plain copies.

use crate::codec::{
    ACCOUNT_SIZE, TRANSFER_SIZE, decode_account, decode_transfer, encode_account, encode_transfer,
};
use limits::BATCH_EVENTS_MAX;

use crate::saga::{SagaAction, SagaStep};
use crate::types::{Account, Transfer};

const BATCH_FORMAT_VERSION: u8 = 1;
const BATCH_HEADER_SIZE: usize = limits::BATCH_HEADER_BYTES;

/// What a batch asks the ledger to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Operation {
    CreateAccounts = 1,
    CreateTransfers = 2,
    /// Steps of cross-group sagas, sent by gateways (see the `saga` module).
    SagaSteps = 3,
}

/// The events of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchBody {
    CreateAccounts(Vec<Account>),
    CreateTransfers(Vec<Transfer>),
    SagaSteps(Vec<SagaStep>),
}

/// One sealed batch. `timestamp` is the sealing time in nanoseconds; the ledger derives every
/// timestamp it assigns from it and never reads a clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub timestamp: u64,
    pub body: BatchBody,
}

/// Why a stored batch could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BatchDecodeError {
    #[error("batch is {0} bytes, shorter than its {BATCH_HEADER_SIZE}-byte header")]
    TooShort(usize),
    #[error(
        "batch format version {0} is not supported (this build reads version {BATCH_FORMAT_VERSION})"
    )]
    Version(u8),
    #[error("batch operation {0} is unknown")]
    Operation(u8),
    #[error("batch declares {declared} events but carries {actual_bytes} bytes of events")]
    Length { declared: u32, actual_bytes: usize },
    #[error("batch declares {0} events, more than the limit of {BATCH_EVENTS_MAX}")]
    TooManyEvents(u32),
}

impl Batch {
    pub fn operation(&self) -> Operation {
        match self.body {
            BatchBody::CreateAccounts(_) => Operation::CreateAccounts,
            BatchBody::CreateTransfers(_) => Operation::CreateTransfers,
            BatchBody::SagaSteps(_) => Operation::SagaSteps,
        }
    }

    /// Number of events in the batch.
    pub fn events_count(&self) -> usize {
        match &self.body {
            BatchBody::CreateAccounts(events) => events.len(),
            BatchBody::CreateTransfers(events) => events.len(),
            BatchBody::SagaSteps(events) => events.len(),
        }
    }

    /// Size of [`Batch::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        BATCH_HEADER_SIZE
            + match &self.body {
                BatchBody::CreateAccounts(events) => events.len() * ACCOUNT_SIZE,
                BatchBody::CreateTransfers(events) => events.len() * TRANSFER_SIZE,
                BatchBody::SagaSteps(events) => events.len() * TRANSFER_SIZE,
            }
    }

    /// Appends the batch's bytes to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let count = u32::try_from(self.events_count()).expect("batch size is bounded");
        let start = out.len();
        out.resize(start + self.encoded_len(), 0);
        let bytes = &mut out[start..];
        bytes[0] = BATCH_FORMAT_VERSION;
        bytes[1] = self.operation() as u8;
        bytes[4..8].copy_from_slice(&count.to_le_bytes());
        bytes[8..16].copy_from_slice(&self.timestamp.to_le_bytes());
        let events = &mut bytes[BATCH_HEADER_SIZE..];
        match &self.body {
            BatchBody::CreateAccounts(accounts) => {
                for (account, slot) in accounts.iter().zip(events.chunks_exact_mut(ACCOUNT_SIZE)) {
                    encode_account(account, slot);
                }
            }
            BatchBody::CreateTransfers(transfers) => {
                for (transfer, slot) in transfers.iter().zip(events.chunks_exact_mut(TRANSFER_SIZE))
                {
                    encode_transfer(transfer, slot);
                }
            }
            BatchBody::SagaSteps(steps) => {
                for (step, slot) in steps.iter().zip(events.chunks_exact_mut(TRANSFER_SIZE)) {
                    encode_saga_step(step, slot);
                }
            }
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_into(&mut out);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Batch, BatchDecodeError> {
        if bytes.len() < BATCH_HEADER_SIZE {
            return Err(BatchDecodeError::TooShort(bytes.len()));
        }
        if bytes[0] != BATCH_FORMAT_VERSION {
            return Err(BatchDecodeError::Version(bytes[0]));
        }
        let count = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
        if count as usize > BATCH_EVENTS_MAX {
            return Err(BatchDecodeError::TooManyEvents(count));
        }
        let timestamp = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
        let events = &bytes[BATCH_HEADER_SIZE..];
        let size = match bytes[1] {
            1 => ACCOUNT_SIZE,
            2 | 3 => TRANSFER_SIZE,
            other => return Err(BatchDecodeError::Operation(other)),
        };
        if events.len() != count as usize * size {
            return Err(BatchDecodeError::Length {
                declared: count,
                actual_bytes: events.len(),
            });
        }
        let body = match bytes[1] {
            1 => BatchBody::CreateAccounts(events.chunks_exact(size).map(decode_account).collect()),
            2 => {
                BatchBody::CreateTransfers(events.chunks_exact(size).map(decode_transfer).collect())
            }
            _ => BatchBody::SagaSteps(events.chunks_exact(size).map(decode_saga_step).collect()),
        };
        Ok(Batch { timestamp, body })
    }
}

/// Where a saga step's kind and remote sides sit in its 128 bytes: the transfer's timestamp
/// field, which a step never needs (a copy takes the batch's timestamp, and steps are never
/// imported).
const SAGA_ACTION_AT: usize = TRANSFER_SIZE - 8;

/// A saga step is its transfer's 128 bytes with the action in place of the timestamp.
fn encode_saga_step(step: &SagaStep, out: &mut [u8]) {
    encode_transfer(
        &Transfer {
            timestamp: 0,
            ..step.transfer
        },
        out,
    );
    out[SAGA_ACTION_AT..SAGA_ACTION_AT + 2].copy_from_slice(&step.action.to_bytes());
}

fn decode_saga_step(bytes: &[u8]) -> SagaStep {
    let mut transfer = decode_transfer(bytes);
    transfer.timestamp = 0;
    let unused = bytes[SAGA_ACTION_AT + 2..TRANSFER_SIZE]
        .iter()
        .any(|&b| b != 0);
    let action = if unused {
        SagaAction::Unknown(bytes[SAGA_ACTION_AT])
    } else {
        SagaAction::from_bytes(bytes[SAGA_ACTION_AT], bytes[SAGA_ACTION_AT + 1])
    };
    SagaStep { action, transfer }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_round_trips_and_rejects_wrong_lengths() {
        let batch = Batch {
            timestamp: 42,
            body: BatchBody::CreateTransfers(vec![Transfer {
                id: 7,
                amount: 9,
                ..Default::default()
            }]),
        };
        let bytes = batch.encode();
        assert_eq!(bytes.len(), batch.encoded_len());
        assert_eq!(Batch::decode(&bytes).unwrap(), batch);
        assert_eq!(
            Batch::decode(&bytes[..bytes.len() - 1]),
            Err(BatchDecodeError::Length {
                declared: 1,
                actual_bytes: 127
            })
        );
        let mut wrong_op = bytes.clone();
        wrong_op[1] = 9;
        assert_eq!(
            Batch::decode(&wrong_op),
            Err(BatchDecodeError::Operation(9))
        );
    }
}
