//! `fincore project --verify`: the read model against the ledger at one common sequence.
//!
//! Owns the check: wait (bounded) until every group's stored offset equals the group's last
//! event; compare every account row (all fields, the four balances included) and every
//! transfer row with the ledger's lookups; compare the row counts, per transfer state, with
//! counts taken from the group's own events (an independent tally, not the projector's fold);
//! check that the ledger did not move meanwhile. It names the first difference. It must not
//! write to the read model.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use ledger::{Account, EventBody, EventKind, Transfer, TransferFlags};
use limits::{EVENTS_PAGE_EVENTS_MAX, PROJECTOR_VERIFY_IDS_PER_LOOKUP_MAX as IDS_MAX};

use crate::ProjectError;
use crate::model::{TransferRow, TransferState};
use crate::sink::{Counts, Sink, SinkError};
use crate::source::{Replicas, SourceError};

/// What `--verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Equal at these offsets (group, seq), over this many rows.
    Equal {
        offsets: Vec<(String, u64)>,
        accounts: u64,
        transfers: u64,
    },
    /// The first difference, in words.
    Different(String),
}

/// Compares the read model in `sink` with the groups of `replicas`.
pub async fn verify(
    sink: &mut Sink,
    groups: &[Replicas],
    wait: Duration,
) -> Result<Verdict, ProjectError> {
    let mut offsets = Vec::new();
    for replicas in groups {
        match caught_up(sink, replicas, wait).await? {
            Ok(seq) => offsets.push((replicas.group().to_string(), seq)),
            Err(difference) => return Ok(Verdict::Different(difference)),
        }
    }
    if let Some(difference) = compare_accounts(sink, groups).await? {
        return Ok(Verdict::Different(difference));
    }
    if let Some(difference) = compare_transfers(sink, groups).await? {
        return Ok(Verdict::Different(difference));
    }
    let expected = tally(groups, &offsets).await?;
    let found = sink.counts().await?;
    if let Some(difference) = compare_counts(&expected, &found) {
        return Ok(Verdict::Different(difference));
    }
    for (replicas, (group, seq)) in groups.iter().zip(&offsets) {
        let now = last_seq(replicas).await?;
        if now != *seq {
            return Ok(Verdict::Different(format!(
                "group {group}: the ledger moved on from seq {seq} to {now} during the check; stop writes and verify again"
            )));
        }
    }
    Ok(Verdict::Equal {
        offsets,
        accounts: found.accounts,
        transfers: found.transfers.values().sum(),
    })
}

/// The last event of the first replica that answers.
async fn last_seq(replicas: &Replicas) -> Result<u64, ProjectError> {
    let mut last_error = None;
    for at in 0..replicas.len() {
        match replicas.last_seq(at).await {
            Ok(seq) => return Ok(seq),
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.expect("a group has replicas").into())
}

/// Waits until the group's offset equals its last event: `Ok(seq)`, or the difference.
async fn caught_up(
    sink: &mut Sink,
    replicas: &Replicas,
    wait: Duration,
) -> Result<Result<u64, String>, ProjectError> {
    let group = replicas.group();
    let deadline = Instant::now() + wait;
    loop {
        let last = last_seq(replicas).await?;
        let offset = sink.offset(group).await?;
        if offset == last {
            return Ok(Ok(last));
        }
        if Instant::now() >= deadline {
            return Ok(Err(format!(
                "group {group}: the read model is at seq {offset}, the ledger at {last} after waiting {} s (is a projector running? are writes still coming?)",
                wait.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Looks `ids` up in every group; answers what each group has, by id.
async fn lookup<T>(
    groups: &[Replicas],
    ids: &[u128],
    call: &impl AsyncFn(&client::Client, &[u128]) -> Result<Vec<T>, client::ClientError>,
    id_of: fn(&T) -> u128,
) -> Result<HashMap<u128, T>, ProjectError> {
    let mut found = HashMap::with_capacity(ids.len());
    for replicas in groups {
        let (url, client) = replicas.client(0);
        let rows = call(client, ids)
            .await
            .map_err(|source| SourceError::Client {
                group: replicas.group().to_string(),
                url: url.to_string(),
                source,
            })?;
        found.extend(rows.into_iter().map(|row| (id_of(&row), row)));
    }
    Ok(found)
}

/// Compares every row of one table, a page of ids at a time (`page` reads the rows after an
/// id), with what the ledger answers for the same ids.
async fn compare_table<Row, Theirs>(
    table: &str,
    sink: &mut Sink,
    groups: &[Replicas],
    page: impl AsyncFn(&mut Sink, Option<u128>) -> Result<Vec<Row>, SinkError>,
    call: impl AsyncFn(&client::Client, &[u128]) -> Result<Vec<Theirs>, client::ClientError>,
    ids: IdsOf<Row, Theirs>,
    difference: fn(&Row, &Theirs) -> Option<Difference>,
) -> Result<Option<String>, ProjectError> {
    let mut after = None;
    loop {
        let rows = page(sink, after).await?;
        let Some(last) = rows.last() else {
            return Ok(None);
        };
        after = Some(ids.0(last));
        let asked: Vec<u128> = rows.iter().map(ids.0).collect();
        let ledger = lookup(groups, &asked, &call, ids.1).await?;
        for row in &rows {
            let id = ids.0(row);
            let Some(theirs) = ledger.get(&id) else {
                return Ok(Some(format!(
                    "{table}: id {id} is in the read model, not in the ledger"
                )));
            };
            if let Some((field, ours, theirs)) = difference(row, theirs) {
                return Ok(Some(format!(
                    "{table}: id {id}: {field} is {ours} in the read model, {theirs} in the ledger"
                )));
            }
        }
    }
}

async fn compare_accounts(
    sink: &mut Sink,
    groups: &[Replicas],
) -> Result<Option<String>, ProjectError> {
    compare_table(
        "accounts",
        sink,
        groups,
        async |sink, after| sink.accounts_after(after, IDS_MAX).await,
        async |client, ids| client.lookup_accounts(ids).await,
        (|a: &Account| a.id, |a: &Account| a.id),
        account_difference,
    )
    .await
}

async fn compare_transfers(
    sink: &mut Sink,
    groups: &[Replicas],
) -> Result<Option<String>, ProjectError> {
    compare_table(
        "transfers",
        sink,
        groups,
        async |sink, after| sink.transfers_after(after, IDS_MAX).await,
        async |client, ids| client.lookup_transfers(ids).await,
        (|r: &TransferRow| r.transfer.id, |t: &Transfer| t.id),
        |row, theirs| transfer_difference(&row.transfer, theirs),
    )
    .await
}

type Difference = (&'static str, String, String);

/// How to take the id of a read-model row and of the ledger's answer.
type IdsOf<Row, Theirs> = (fn(&Row) -> u128, fn(&Theirs) -> u128);

fn first_difference(fields: Vec<(&'static str, String, String)>) -> Option<Difference> {
    fields.into_iter().find(|(_, ours, theirs)| ours != theirs)
}

fn account_difference(ours: &Account, theirs: &Account) -> Option<Difference> {
    let f = |name, a: &dyn ToString, b: &dyn ToString| (name, a.to_string(), b.to_string());
    first_difference(vec![
        f(
            "debits_pending",
            &ours.debits_pending,
            &theirs.debits_pending,
        ),
        f("debits_posted", &ours.debits_posted, &theirs.debits_posted),
        f(
            "credits_pending",
            &ours.credits_pending,
            &theirs.credits_pending,
        ),
        f(
            "credits_posted",
            &ours.credits_posted,
            &theirs.credits_posted,
        ),
        f("user_data_128", &ours.user_data_128, &theirs.user_data_128),
        f("user_data_64", &ours.user_data_64, &theirs.user_data_64),
        f("user_data_32", &ours.user_data_32, &theirs.user_data_32),
        f("ledger", &ours.ledger, &theirs.ledger),
        f("code", &ours.code, &theirs.code),
        f("flags", &ours.flags.bits(), &theirs.flags.bits()),
        f("timestamp", &ours.timestamp, &theirs.timestamp),
    ])
}

fn transfer_difference(ours: &Transfer, theirs: &Transfer) -> Option<Difference> {
    let f = |name, a: &dyn ToString, b: &dyn ToString| (name, a.to_string(), b.to_string());
    first_difference(vec![
        f(
            "debit_account_id",
            &ours.debit_account_id,
            &theirs.debit_account_id,
        ),
        f(
            "credit_account_id",
            &ours.credit_account_id,
            &theirs.credit_account_id,
        ),
        f("amount", &ours.amount, &theirs.amount),
        f("pending_id", &ours.pending_id, &theirs.pending_id),
        f("user_data_128", &ours.user_data_128, &theirs.user_data_128),
        f("user_data_64", &ours.user_data_64, &theirs.user_data_64),
        f("user_data_32", &ours.user_data_32, &theirs.user_data_32),
        f("timeout", &ours.timeout, &theirs.timeout),
        f("ledger", &ours.ledger, &theirs.ledger),
        f("code", &ours.code, &theirs.code),
        f("flags", &ours.flags.bits(), &theirs.flags.bits()),
        f("timestamp", &ours.timestamp, &theirs.timestamp),
    ])
}

/// Row counts as the groups' events imply them, read from the events up to `offsets`.
async fn tally(groups: &[Replicas], offsets: &[(String, u64)]) -> Result<Counts, ProjectError> {
    let mut accounts = 0u64;
    let (mut plain, mut pending, mut posted, mut voided, mut expired) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    // A cross-group transfer's copy is confirmed in each group it touches: one row.
    let mut confirmed = BTreeSet::new();
    for (replicas, (_, last)) in groups.iter().zip(offsets) {
        let (url, client) = replicas.client(0);
        let mut after = 0;
        while after < *last {
            let limit = (*last - after).min(EVENTS_PAGE_EVENTS_MAX as u64) as u32;
            let page =
                client
                    .read_events(after, limit)
                    .await
                    .map_err(|source| SourceError::Client {
                        group: replicas.group().to_string(),
                        url: url.to_string(),
                        source,
                    })?;
            let Some(end) = page.events.last().map(|e| e.seq) else {
                return Err(ProjectError::Task(format!(
                    "group {}: {url} served no events after {after} though its last is {last}",
                    replicas.group()
                )));
            };
            for event in &page.events {
                match (event.kind, &event.body) {
                    (EventKind::AccountCreated, _) => accounts += 1,
                    (EventKind::TransferCreated, EventBody::Transfer(c))
                        if c.transfer.flags.contains(TransferFlags::PENDING) =>
                    {
                        pending += 1
                    }
                    (EventKind::TransferCreated, _) => plain += 1,
                    (EventKind::TransferPosted, _) => posted += 1,
                    (EventKind::TransferVoided, _) => voided += 1,
                    (EventKind::TransferExpired, _) => expired += 1,
                    (EventKind::SagaConfirmed, EventBody::Transfer(c)) => {
                        confirmed.insert(c.transfer.id);
                    }
                    _ => {}
                }
            }
            after = end;
        }
    }
    let mut transfers = BTreeMap::new();
    let created = plain + posted + voided + confirmed.len() as u64;
    let still_pending = pending.saturating_sub(posted + voided + expired);
    for (state, count) in [
        (TransferState::Created, created),
        (TransferState::Pending, still_pending),
        (TransferState::Posted, posted),
        (TransferState::Voided, voided),
        (TransferState::Expired, expired),
    ] {
        if count > 0 {
            transfers.insert(state, count);
        }
    }
    Ok(Counts {
        accounts,
        transfers,
    })
}

fn compare_counts(expected: &Counts, found: &Counts) -> Option<String> {
    if expected.accounts != found.accounts {
        return Some(format!(
            "accounts: {} rows in the read model, {} accounts in the ledger",
            found.accounts, expected.accounts
        ));
    }
    for state in TransferState::ALL {
        let (ours, theirs) = (
            found.transfers.get(&state).copied().unwrap_or(0),
            expected.transfers.get(&state).copied().unwrap_or(0),
        );
        if ours != theirs {
            return Some(format!(
                "transfers: {ours} rows with state {} in the read model, {theirs} in the ledger",
                state.name()
            ));
        }
    }
    None
}
