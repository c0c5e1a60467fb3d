//! The saga simulator's checks at the end of a run, once the faults stopped and the resolvers
//! finished every open copy: no copy is open anywhere; clearing nets to zero over all groups;
//! every transfer a gateway answered `created`/`exists` is confirmed, with its fields, in every
//! group it involves; every transfer answered with a failure is confirmed nowhere; and every
//! account's balances equal a replay of the transfers confirmed in their homes on one
//! reference `StateMachine` holding every account (so each amount counts exactly once).

use std::collections::{BTreeMap, BTreeSet};

use gateway::saga::Saga;
use ledger::{
    Account, AccountFlags, Batch, BatchBody, BatchResults, CreateTransferResult as R, SagaState,
    StateMachine, Transfer, Wide, WideBalances,
};

use super::groups::{EPOCH_NS, World};

/// What a gateway answered a caller for one transfer.
#[derive(Debug, Clone, Copy)]
pub struct Answer {
    pub transfer: Transfer,
    /// Carried by a saga (its ids live in different groups), else a single group's.
    pub saga: bool,
    pub result: R,
}

/// Reference batches hold at most this many transfers.
const REFERENCE_BATCH_EVENTS_MAX: usize = 1_000;

fn fields(t: &Transfer) -> Transfer {
    Transfer { timestamp: 0, ..*t }
}

fn succeeded(result: R) -> bool {
    matches!(result, R::Created | R::Exists)
}

/// Runs every end check, recording what fails in `world`.
pub fn check_end(world: &mut World, answers: &[Answer], ids: &BTreeSet<u128>) {
    let mut found = Vec::new();
    check_no_open_copy_and_clearing(world, &mut found);
    check_answers(world, answers, &mut found);
    check_against_reference(world, ids, &mut found);
    for violation in found {
        world.violation(violation);
    }
}

fn check_no_open_copy_and_clearing(world: &World, found: &mut Vec<String>) {
    // Per ledger, over every group: debits pending, debits posted, credits pending, posted.
    let mut clearing: BTreeMap<u32, WideBalances> = BTreeMap::new();
    for (group, g) in &world.groups {
        let open = g.state.open_saga_copies(u64::MAX, 4);
        if !open.is_empty() {
            found.push(format!(
                "group {group} still has open copies after the resolvers ran: {:?}",
                open.iter().map(|(t, _)| t.id).collect::<Vec<_>>()
            ));
        }
        for c in g.state.clearing_balances() {
            let sums = clearing.entry(c.ledger).or_default();
            *sums = sums.plus(c.sums);
        }
    }
    for (ledger, sums) in clearing {
        let WideBalances {
            debits_pending: dp,
            debits_posted: dpo,
            credits_pending: cp,
            credits_posted: cpo,
        } = sums;
        if dp != Wide::ZERO || cp != Wide::ZERO || dpo != cpo {
            found.push(format!(
                "ledger {ledger}: clearing does not net to zero over the groups (debits pending \
                 {dp} posted {dpo}, credits pending {cp} posted {cpo})"
            ));
        }
    }
}

fn check_answers(world: &World, answers: &[Answer], found: &mut Vec<String>) {
    for answer in answers {
        let t = answer.transfer;
        let groups: Vec<_> = if answer.saga {
            let saga = Saga::new(&world.map, t);
            saga.involved()
                .into_iter()
                .map(|(group, _)| group)
                .collect()
        } else {
            vec![world.map.group_of(t.id)]
        };
        for group in groups {
            let state = &world.groups[&group].state;
            let stored = state.transfer(t.id).map(fields);
            let copy = state.saga_copy(t.id).map(|c| c.state);
            let counted = stored == Some(fields(&t))
                && match copy {
                    Some(state) => state == SagaState::Confirmed,
                    None => !answer.saga,
                };
            if succeeded(answer.result) && !counted {
                found.push(format!(
                    "transfer {} was answered {} but group {group} holds {stored:?} as {copy:?}",
                    t.id, answer.result
                ));
            }
            if !succeeded(answer.result) && counted {
                found.push(format!(
                    "transfer {} was answered {} but group {group} confirmed it",
                    t.id, answer.result
                ));
            }
        }
    }
}

/// The transfers that count: each id as its home holds it, if plain or a confirmed copy.
fn confirmed_in_homes(world: &World, ids: &BTreeSet<u128>) -> Vec<Transfer> {
    ids.iter()
        .filter_map(|&id| {
            let home = &world.groups[&world.map.group_of(id)].state;
            let t = home.transfer(id)?;
            let counted = home
                .saga_copy(id)
                .is_none_or(|copy| copy.state == SagaState::Confirmed);
            counted.then_some(fields(t))
        })
        .collect()
}

fn check_against_reference(world: &World, ids: &BTreeSet<u128>, found: &mut Vec<String>) {
    // Every account, without limits: the replay's order is not the groups' order, and the
    // groups already enforced the limits; the replay only counts the amounts.
    let mut accounts: Vec<Account> = Vec::new();
    for g in world.groups.values() {
        for &id in &g.accounts {
            let a = g.state.account(id).expect("created accounts exist");
            accounts.push(Account {
                id,
                ledger: a.ledger,
                code: a.code,
                flags: a.flags
                    - AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS
                    - AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS,
                ..Default::default()
            });
        }
    }
    let mut reference = StateMachine::default();
    let mut timestamp = EPOCH_NS;
    let mut apply = |reference: &mut StateMachine, body: BatchBody| {
        timestamp += 1_000_000;
        reference.apply(&Batch { timestamp, body })
    };
    for chunk in accounts.chunks(REFERENCE_BATCH_EVENTS_MAX) {
        let results = apply(&mut reference, BatchBody::CreateAccounts(chunk.to_vec()));
        if let BatchResults::CreateAccounts(results) = results
            && results.iter().any(|r| r.result.code() != 0)
        {
            found.push(format!("the reference refused accounts: {results:?}"));
            return;
        }
    }
    let transfers = confirmed_in_homes(world, ids);
    for chunk in transfers.chunks(REFERENCE_BATCH_EVENTS_MAX) {
        if let BatchResults::CreateTransfers(results) =
            apply(&mut reference, BatchBody::CreateTransfers(chunk.to_vec()))
        {
            for (t, r) in chunk.iter().zip(&results) {
                if r.result != R::Created {
                    found.push(format!(
                        "the reference refused confirmed transfer {}: {}",
                        t.id, r.result
                    ));
                }
            }
        }
    }
    for (group, g) in &world.groups {
        for &id in &g.accounts {
            let a = g.state.account(id).expect("created accounts exist");
            let r = reference
                .account(id)
                .expect("the reference holds every account");
            let got = (
                a.debits_pending,
                a.debits_posted,
                a.credits_pending,
                a.credits_posted,
            );
            let want = (0, r.debits_posted, 0, r.credits_posted);
            if got != want {
                found.push(format!(
                    "group {group} account {id}: balances (debits pending, posted, credits \
                     pending, posted) are {got:?}, the confirmed transfers make {want:?}"
                ));
            }
        }
    }
}
