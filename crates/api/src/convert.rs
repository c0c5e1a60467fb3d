//! Conversions between protobuf messages and ledger types, with validation.
//!
//! Every value that does not fit its ledger field (a 16-bit `code` given as 70000, a malformed
//! packed batch) is a [`WireError`] naming the field, e.g. `transfers[3].code`.

use ledger::{
    ACCOUNT_SIZE, Account, AccountBalance, AccountFilter, AccountFilterFlags, AccountFlags,
    BATCH_EVENTS_MAX, RemoteSides, SagaAction, SagaStep, TRANSFER_SIZE, Transfer, TransferFlags,
    TransferOutcome, decode_account, decode_transfer, encode_account, encode_transfer,
};

use crate::proto;

/// A request field that cannot be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct WireError {
    pub field: String,
    pub reason: String,
}

impl WireError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> WireError {
        WireError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

pub fn u128_from(value: Option<proto::Uint128>) -> u128 {
    value.map_or(0, |v| (u128::from(v.hi) << 64) | u128::from(v.lo))
}

pub fn u128_to(value: u128) -> Option<proto::Uint128> {
    Some(proto::Uint128 {
        lo: value as u64,
        hi: (value >> 64) as u64,
    })
}

fn u16_field(value: u32, field: impl FnOnce() -> String) -> Result<u16, WireError> {
    u16::try_from(value)
        .map_err(|_| WireError::new(field(), format!("{value} does not fit in 16 bits")))
}

fn check_batch_len(len: usize, field: &str) -> Result<(), WireError> {
    if len > BATCH_EVENTS_MAX {
        return Err(WireError::new(
            field,
            format!("{len} events; a batch holds at most {BATCH_EVENTS_MAX}"),
        ));
    }
    Ok(())
}

fn check_ids_len(len: usize, field: &str) -> Result<(), WireError> {
    if len > limits::LOOKUP_IDS_MAX {
        return Err(WireError::new(
            field,
            format!(
                "{len} ids; a lookup takes at most {}",
                limits::LOOKUP_IDS_MAX
            ),
        ));
    }
    Ok(())
}

/// Splits a packed batch into fixed-size records.
fn unpack<T>(packed: &[u8], size: usize, decode: fn(&[u8]) -> T) -> Result<Vec<T>, WireError> {
    if !packed.len().is_multiple_of(size) {
        return Err(WireError::new(
            "packed",
            format!(
                "{} bytes is not a whole number of {size}-byte events",
                packed.len()
            ),
        ));
    }
    check_batch_len(packed.len() / size, "packed")?;
    Ok(packed.chunks_exact(size).map(decode).collect())
}

pub fn account_from(a: &proto::Account, at: usize) -> Result<Account, WireError> {
    Ok(Account {
        id: u128_from(a.id),
        debits_pending: u128_from(a.debits_pending),
        debits_posted: u128_from(a.debits_posted),
        credits_pending: u128_from(a.credits_pending),
        credits_posted: u128_from(a.credits_posted),
        user_data_128: u128_from(a.user_data_128),
        user_data_64: a.user_data_64,
        user_data_32: a.user_data_32,
        ledger: a.ledger,
        code: u16_field(a.code, || format!("accounts[{at}].code"))?,
        flags: AccountFlags::from_bits_retain(u16_field(a.flags, || {
            format!("accounts[{at}].flags")
        })?),
        timestamp: a.timestamp,
    })
}

pub fn account_to(a: &Account) -> proto::Account {
    proto::Account {
        id: u128_to(a.id),
        debits_pending: u128_to(a.debits_pending),
        debits_posted: u128_to(a.debits_posted),
        credits_pending: u128_to(a.credits_pending),
        credits_posted: u128_to(a.credits_posted),
        user_data_128: u128_to(a.user_data_128),
        user_data_64: a.user_data_64,
        user_data_32: a.user_data_32,
        ledger: a.ledger,
        code: a.code.into(),
        flags: a.flags.bits().into(),
        timestamp: a.timestamp,
    }
}

pub fn transfer_from(t: &proto::Transfer, at: usize) -> Result<Transfer, WireError> {
    Ok(Transfer {
        id: u128_from(t.id),
        debit_account_id: u128_from(t.debit_account_id),
        credit_account_id: u128_from(t.credit_account_id),
        amount: u128_from(t.amount),
        pending_id: u128_from(t.pending_id),
        user_data_128: u128_from(t.user_data_128),
        user_data_64: t.user_data_64,
        user_data_32: t.user_data_32,
        timeout: t.timeout,
        ledger: t.ledger,
        code: u16_field(t.code, || format!("transfers[{at}].code"))?,
        flags: TransferFlags::from_bits_retain(u16_field(t.flags, || {
            format!("transfers[{at}].flags")
        })?),
        timestamp: t.timestamp,
    })
}

pub fn transfer_to(t: &Transfer) -> proto::Transfer {
    proto::Transfer {
        id: u128_to(t.id),
        debit_account_id: u128_to(t.debit_account_id),
        credit_account_id: u128_to(t.credit_account_id),
        amount: u128_to(t.amount),
        pending_id: u128_to(t.pending_id),
        user_data_128: u128_to(t.user_data_128),
        user_data_64: t.user_data_64,
        user_data_32: t.user_data_32,
        timeout: t.timeout,
        ledger: t.ledger,
        code: t.code.into(),
        flags: t.flags.bits().into(),
        timestamp: t.timestamp,
    }
}

/// The accounts of a request (messages or packed, not both).
pub fn accounts_from_request(
    request: &proto::CreateAccountsRequest,
) -> Result<Vec<Account>, WireError> {
    match (request.accounts.is_empty(), request.packed.is_empty()) {
        (false, false) => Err(WireError::new(
            "packed",
            "give events either as messages or packed, not both",
        )),
        (true, false) => unpack(&request.packed, ACCOUNT_SIZE, decode_account),
        _ => {
            check_batch_len(request.accounts.len(), "accounts")?;
            request
                .accounts
                .iter()
                .enumerate()
                .map(|(at, a)| account_from(a, at))
                .collect()
        }
    }
}

/// The transfers of a request (messages or packed, not both).
pub fn transfers_from_request(
    request: &proto::CreateTransfersRequest,
) -> Result<Vec<Transfer>, WireError> {
    match (request.transfers.is_empty(), request.packed.is_empty()) {
        (false, false) => Err(WireError::new(
            "packed",
            "give events either as messages or packed, not both",
        )),
        (true, false) => unpack(&request.packed, TRANSFER_SIZE, decode_transfer),
        _ => {
            check_batch_len(request.transfers.len(), "transfers")?;
            request
                .transfers
                .iter()
                .enumerate()
                .map(|(at, t)| transfer_from(t, at))
                .collect()
        }
    }
}

/// Packs accounts into a request's `packed` bytes.
pub fn pack_accounts(accounts: &[Account]) -> Vec<u8> {
    let mut packed = vec![0u8; accounts.len() * ACCOUNT_SIZE];
    for (account, slot) in accounts.iter().zip(packed.chunks_exact_mut(ACCOUNT_SIZE)) {
        encode_account(account, slot);
    }
    packed
}

/// Packs transfers into a request's `packed` bytes.
pub fn pack_transfers(transfers: &[Transfer]) -> Vec<u8> {
    let mut packed = vec![0u8; transfers.len() * TRANSFER_SIZE];
    for (transfer, slot) in transfers.iter().zip(packed.chunks_exact_mut(TRANSFER_SIZE)) {
        encode_transfer(transfer, slot);
    }
    packed
}

pub fn ids_from(request: &proto::LookupRequest) -> Result<Vec<u128>, WireError> {
    check_ids_len(request.ids.len(), "ids")?;
    Ok(request.ids.iter().map(|id| u128_from(Some(*id))).collect())
}

/// The ids of an outcomes lookup and how long it may wait (checked against
/// `limits::OUTCOME_WAIT_MS_MAX`).
pub fn outcomes_request_from(
    request: &proto::LookupOutcomesRequest,
) -> Result<(Vec<u128>, std::time::Duration), WireError> {
    check_ids_len(request.ids.len(), "ids")?;
    Ok((
        request.ids.iter().map(|id| u128_from(Some(*id))).collect(),
        outcome_wait(request.wait_ms, "wait_ms")?,
    ))
}

/// `wait_ms` as a duration, refused past `limits::OUTCOME_WAIT_MS_MAX`.
pub fn outcome_wait(wait_ms: u32, field: &str) -> Result<std::time::Duration, WireError> {
    if wait_ms > limits::OUTCOME_WAIT_MS_MAX {
        return Err(WireError::new(
            field,
            format!(
                "{wait_ms} ms; an outcomes lookup waits at most {} ms",
                limits::OUTCOME_WAIT_MS_MAX
            ),
        ));
    }
    Ok(std::time::Duration::from_millis(wait_ms.into()))
}

pub fn outcome_to(id: u128, outcome: TransferOutcome) -> proto::TransferOutcome {
    let (kind, timestamp) = match outcome {
        TransferOutcome::NotFound => (proto::OutcomeKind::NotFound, 0),
        TransferOutcome::Pending => (proto::OutcomeKind::Pending, 0),
        TransferOutcome::Created { timestamp } => (proto::OutcomeKind::Created, timestamp),
        TransferOutcome::Failed => (proto::OutcomeKind::Failed, 0),
    };
    proto::TransferOutcome {
        id: u128_to(id),
        outcome: kind.into(),
        timestamp,
    }
}

/// An outcome from a server's answer (`outcomes[at]`); an unknown kind is an error.
pub fn outcome_from(
    outcome: &proto::TransferOutcome,
    at: usize,
) -> Result<(u128, TransferOutcome), WireError> {
    let kind = match proto::OutcomeKind::try_from(outcome.outcome) {
        Ok(proto::OutcomeKind::NotFound) => TransferOutcome::NotFound,
        Ok(proto::OutcomeKind::Pending) => TransferOutcome::Pending,
        Ok(proto::OutcomeKind::Created) => TransferOutcome::Created {
            timestamp: outcome.timestamp,
        },
        Ok(proto::OutcomeKind::Failed) => TransferOutcome::Failed,
        Ok(proto::OutcomeKind::Unspecified) | Err(_) => {
            return Err(WireError::new(
                format!("outcomes[{at}].outcome"),
                format!("{} is not an outcome kind", outcome.outcome),
            ));
        }
    };
    Ok((u128_from(outcome.id), kind))
}

pub fn filter_from(f: &proto::AccountFilter) -> Result<AccountFilter, WireError> {
    let mut flags = AccountFilterFlags::empty();
    flags.set(AccountFilterFlags::DEBITS, f.debits);
    flags.set(AccountFilterFlags::CREDITS, f.credits);
    flags.set(AccountFilterFlags::REVERSED, f.reversed);
    let filter = AccountFilter {
        account_id: u128_from(f.account_id),
        user_data_128: u128_from(f.user_data_128),
        user_data_64: f.user_data_64,
        user_data_32: f.user_data_32,
        code: u16_field(f.code, || "code".to_string())?,
        timestamp_min: f.timestamp_min,
        timestamp_max: f.timestamp_max,
        limit: f.limit,
        flags,
    };
    filter
        .validate()
        .map_err(|ledger::QueryError::InvalidFilter { field, reason }| {
            WireError::new(field, reason)
        })?;
    Ok(filter)
}

pub fn filter_to(f: &AccountFilter) -> proto::AccountFilter {
    proto::AccountFilter {
        account_id: u128_to(f.account_id),
        user_data_128: u128_to(f.user_data_128),
        user_data_64: f.user_data_64,
        user_data_32: f.user_data_32,
        code: f.code.into(),
        timestamp_min: f.timestamp_min,
        timestamp_max: f.timestamp_max,
        limit: f.limit,
        debits: f.flags.contains(AccountFilterFlags::DEBITS),
        credits: f.flags.contains(AccountFilterFlags::CREDITS),
        reversed: f.flags.contains(AccountFilterFlags::REVERSED),
    }
}

pub fn balance_to(b: &AccountBalance) -> proto::AccountBalance {
    proto::AccountBalance {
        debits_pending: u128_to(b.debits_pending),
        debits_posted: u128_to(b.debits_posted),
        credits_pending: u128_to(b.credits_pending),
        credits_posted: u128_to(b.credits_posted),
        timestamp: b.timestamp,
    }
}

pub fn balance_from(b: &proto::AccountBalance) -> AccountBalance {
    AccountBalance {
        debits_pending: u128_from(b.debits_pending),
        debits_posted: u128_from(b.debits_posted),
        credits_pending: u128_from(b.credits_pending),
        credits_posted: u128_from(b.credits_posted),
        timestamp: b.timestamp,
    }
}

/// The steps of a saga-steps request (gateway to node), each checked: a known action, remote
/// sides only on a reservation and within debit|credit, a transfer without a timestamp (the
/// group stamps its copy).
pub fn saga_steps_from_request(
    request: &proto::SagaStepsRequest,
) -> Result<Vec<SagaStep>, WireError> {
    check_batch_len(request.steps.len(), "steps")?;
    request
        .steps
        .iter()
        .enumerate()
        .map(|(at, step)| {
            let remote = u8::try_from(step.remote)
                .ok()
                .and_then(RemoteSides::from_bits)
                .ok_or_else(|| {
                    WireError::new(
                        format!("steps[{at}].remote"),
                        "must be a set of debit=1 and credit=2",
                    )
                })?;
            let action = match step.action {
                1 => SagaAction::Reserve(remote),
                2 | 3 if !remote.is_empty() => {
                    return Err(WireError::new(
                        format!("steps[{at}].remote"),
                        "only a reservation names remote sides",
                    ));
                }
                2 => SagaAction::Confirm,
                3 => SagaAction::Cancel,
                _ => {
                    return Err(WireError::new(
                        format!("steps[{at}].action"),
                        "must be 1 (reserve), 2 (confirm) or 3 (cancel)",
                    ));
                }
            };
            let transfer = step
                .transfer
                .as_ref()
                .ok_or_else(|| WireError::new(format!("steps[{at}].transfer"), "missing"))?;
            let transfer = transfer_from(transfer, at)?;
            if transfer.timestamp != 0 {
                return Err(WireError::new(
                    format!("steps[{at}].transfer.timestamp"),
                    "must be 0: the group stamps its copy",
                ));
            }
            Ok(SagaStep { action, transfer })
        })
        .collect()
}

pub fn saga_step_to(step: &SagaStep) -> proto::SagaStep {
    let (action, remote) = match step.action {
        SagaAction::Reserve(remote) => (1, remote.bits()),
        SagaAction::Confirm => (2, 0),
        SagaAction::Cancel => (3, 0),
        SagaAction::Unknown(kind) => (u32::from(kind), 0),
    };
    proto::SagaStep {
        action,
        remote: remote.into(),
        transfer: Some(transfer_to(&step.transfer)),
    }
}

pub fn saga_copy_to(transfer: &Transfer, remote: RemoteSides) -> proto::SagaCopy {
    proto::SagaCopy {
        transfer: Some(transfer_to(transfer)),
        remote: remote.bits().into(),
    }
}

pub fn saga_copy_from(
    copy: &proto::SagaCopy,
    at: usize,
) -> Result<(Transfer, RemoteSides), WireError> {
    let transfer = copy
        .transfer
        .as_ref()
        .ok_or_else(|| WireError::new(format!("copies[{at}].transfer"), "missing"))?;
    let remote = u8::try_from(copy.remote)
        .ok()
        .and_then(RemoteSides::from_bits)
        .ok_or_else(|| {
            WireError::new(
                format!("copies[{at}].remote"),
                "must be a set of debit=1 and credit=2",
            )
        })?;
    Ok((transfer_from(transfer, at)?, remote))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::widest::{widest_account, widest_transfer};
    use prost::Message;

    #[test]
    fn a_message_encoded_event_at_its_widest_fits_grpc_event_bytes_max() {
        let transfer = transfer_to(&widest_transfer()).encoded_len();
        let account = account_to(&widest_account()).encoded_len();
        // Each travels in a repeated field: one tag byte and a length of at most 2 bytes.
        for (what, len) in [("transfer", transfer), ("account", account)] {
            assert!(
                len + 3 <= limits::GRPC_EVENT_BYTES_MAX,
                "a {what} takes {len} bytes"
            );
        }
    }

    #[test]
    fn a_full_packed_batch_request_fits_a_grpc_message() {
        let request = proto::CreateTransfersRequest {
            packed: pack_transfers(&vec![widest_transfer(); BATCH_EVENTS_MAX]).into(),
            ..Default::default()
        };
        assert!(
            request.encoded_len()
                <= BATCH_EVENTS_MAX * limits::EVENT_BYTES + limits::GRPC_REQUEST_OVERHEAD_BYTES_MAX
        );
    }

    #[test]
    fn u128_survives_the_two_halves() {
        for value in [
            0,
            1,
            u128::from(u64::MAX),
            u128::from(u64::MAX) + 1,
            u128::MAX,
        ] {
            assert_eq!(u128_from(u128_to(value)), value);
        }
    }

    #[test]
    fn oversized_fields_and_mixed_or_ragged_batches_are_named() {
        let transfer = proto::Transfer {
            code: 70_000,
            ..Default::default()
        };
        let request = proto::CreateTransfersRequest {
            transfers: vec![Default::default(), transfer],
            packed: vec![].into(),
        };
        assert_eq!(
            transfers_from_request(&request).unwrap_err().field,
            "transfers[1].code"
        );

        let ragged = proto::CreateTransfersRequest {
            transfers: vec![],
            packed: vec![0u8; 129].into(),
        };
        assert_eq!(transfers_from_request(&ragged).unwrap_err().field, "packed");

        let both = proto::CreateTransfersRequest {
            transfers: vec![Default::default()],
            packed: vec![0u8; 128].into(),
        };
        assert!(
            transfers_from_request(&both)
                .unwrap_err()
                .reason
                .contains("not both")
        );

        let packed = pack_transfers(&[Transfer {
            id: 5,
            amount: u128::MAX,
            ..Default::default()
        }]);
        let request = proto::CreateTransfersRequest {
            transfers: vec![],
            packed: packed.into(),
        };
        assert_eq!(
            transfers_from_request(&request).unwrap()[0].amount,
            u128::MAX
        );
    }
}
