//! The ledger's result-code scenarios (`ledger::scenarios`, one per code) through `fincore
//! gateway` over four groups of `fincore serve`: every event of every step of every scenario
//! gets, through the gateway, exactly the code a `ledger::StateMachine` gives it, and the last
//! event of each scenario its scenario's code.
//!
//! A transfer that is not plain (linked, two-phase, balancing, closing, imported) must have its
//! ids in one group, so the *scenarios* are spread over the groups: each scenario's small ids
//! are translated into one slot (the scenarios rotating over the four groups), and all its
//! batches go through the gateway. The scenarios whose transfers are all plain run a second
//! time with their ids spread: each account in a group of its own, each transfer id in another
//! group again, so that every transfer between two accounts is a saga across two or three
//! groups and its code still must be the state machine's. The groups seal
//! batches with the real clock, so an imported timestamp is moved into the real timeline at the
//! same place among the scenario's batches, and a pending transfer's 1 s timeout is waited out
//! (bounded) where the scenario lets it expire. What no network caller can do is skipped by
//! name (`TRANSFER_CODES_SKIPPED`).

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cluster::{ClusterMap, Slot, id_in_slot, slot_of};
use ledger::scenarios::{
    ACCOUNT_CODES_UNCOVERED, SECOND, Step, T0, TRANSFER_CODES_UNCOVERED, account_cases,
    transfer_cases,
};
use ledger::{
    Account, AccountFlags, Batch, BatchBody, BatchResults, CreateAccountResult as AR,
    CreateTransferResult as TR, StateMachine, Transfer, TransferFlags,
};
use support::{ChildNode, fincore_exe};
use testkit::cluster::LocalGroups;

const GROUPS: usize = 4;

/// Transfer codes no scenario can get through a network API, so not sent:
/// - `overflows_timeout` needs a batch sealed within the longest timeout (`u32::MAX` seconds,
///   about 136 years) of `TIMESTAMP_MAX` (the year 2262): a group seals with the real clock,
///   and the only events that choose their timestamp (imported ones) must have no timeout.
const TRANSFER_CODES_SKIPPED: &[TR] = &[TR::OverflowsTimeout];
/// Every account scenario runs through the gateway.
const ACCOUNT_CODES_SKIPPED: &[AR] = &[];

/// A pending transfer's timeout may be waited out only if it is this short.
const TIMEOUT_WAIT_SECONDS_MAX: u64 = 2;

/// Four groups of one in `dir` and a gateway over them.
fn start(dir: &std::path::Path) -> (LocalGroups, ChildNode, Gateway) {
    let groups = LocalGroups::start(fincore_exe(), dir, GROUPS, 1, &[])
        .unwrap_or_else(|error| panic!("{error}"));
    let gateway_node = ChildNode::start_gateway(
        fincore_exe(),
        &dir.join("gateway"),
        &groups.map_path,
        &["--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0"],
    )
    .unwrap_or_else(|error| panic!("{error}"));
    let gateway = Gateway::connect(&gateway_node.grpc_addr);
    (groups, gateway_node, gateway)
}

#[test]
fn every_result_code_scenario_gets_the_state_machines_codes_through_a_gateway_over_four_groups() {
    let dir = tempfile::tempdir().unwrap();
    let (groups, gateway_node, gateway) = start(dir.path());
    let mut spread = Spread::new(&groups.map);

    let transfers = transfer_cases().into_iter().map(|c| (c.expect, c.steps()));
    let transfer_codes = Codes {
        all: TR::ALL,
        skipped: TRANSFER_CODES_SKIPPED,
        uncovered: TRANSFER_CODES_UNCOVERED,
        name: TR::as_str,
    };
    run_all(&gateway, &mut spread, transfers, &transfer_codes);
    let accounts = account_cases().into_iter().map(|c| (c.expect, c.steps()));
    let account_codes = Codes {
        all: AR::ALL,
        skipped: ACCOUNT_CODES_SKIPPED,
        uncovered: ACCOUNT_CODES_UNCOVERED,
        name: AR::as_str,
    };
    run_all(&gateway, &mut spread, accounts, &account_codes);
    assert!(
        spread.per_group.iter().all(|&count| count >= 10),
        "scenarios per group: {:?}",
        spread.per_group
    );
    gateway_node.stop().unwrap();
    groups.stop().unwrap();
}

/// The fewest plain-transfer scenarios the spread run must send (of the 30-odd there are).
const SPREAD_SCENARIOS_MIN: usize = 20;

#[test]
fn plain_transfer_scenarios_with_accounts_and_ids_in_different_groups_get_the_state_machines_codes()
{
    let dir = tempfile::tempdir().unwrap();
    let (groups, gateway_node, gateway) = start(dir.path());
    let mut spread = Spread::new(&groups.map);
    let mut sent = BTreeSet::new();
    let mut crossing = 0;
    for case in transfer_cases() {
        let steps = case.steps();
        if !all_transfers_plain(&steps) || TRANSFER_CODES_SKIPPED.contains(&case.expect) {
            continue;
        }
        let ids = spread.spread_next();
        crossing += steps
            .iter()
            .filter(|step| ids.crosses_groups(groups.map.clone(), &step.batch.body))
            .count();
        let name = case.expect.as_str();
        let got = run(&gateway, &ids, &steps, name);
        assert_eq!(got.last(), Some(&name), "{got:?}");
        sent.insert(case.expect);
    }
    eprintln!(
        "{} plain scenarios spread over the groups; {crossing} of their steps crossed groups",
        sent.len()
    );
    assert!(
        sent.len() >= SPREAD_SCENARIOS_MIN,
        "only {} plain scenarios: {sent:?}",
        sent.len()
    );
    assert!(
        crossing >= SPREAD_SCENARIOS_MIN,
        "{crossing} steps crossed groups"
    );
    // The transfers that passed the checks ran as sagas, every one confirmed or cancelled.
    let metrics = testkit::http::get(&gateway_node.http_addr, "/metrics").unwrap();
    let count = |series| testkit::http::metric_value(&metrics.body, series);
    let confirmed = count(r#"fincore_sagas_total{outcome="confirmed"}"#);
    assert!(
        confirmed.is_some_and(|count| count > 0.0),
        "no confirmed saga: {}",
        metrics.body
    );
    // Every outcome is exported from the start; a diverged saga must never be counted.
    let diverged = count(r#"fincore_sagas_total{outcome="diverged"}"#);
    assert_eq!(diverged, Some(0.0), "{}", metrics.body);
    gateway_node.stop().unwrap();
    groups.stop().unwrap();
}

/// Whether every transfer of every step is plain (no flag): what a saga carries; and no
/// account is imported (an imported timestamp is placed among the scenario's steps by one
/// group's clock, see [`Timeline::real`]).
fn all_transfers_plain(steps: &[Step]) -> bool {
    steps.iter().all(|step| match &step.batch.body {
        BatchBody::CreateTransfers(events) => events.iter().all(|t| t.flags.is_empty()),
        BatchBody::CreateAccounts(events) => events
            .iter()
            .all(|a| !a.flags.contains(AccountFlags::IMPORTED)),
        BatchBody::SagaSteps(_) => unreachable!("the scenarios take no saga steps"),
    })
}

/// The codes of one kind of event, and which of them the scenarios do not send.
struct Codes<C: 'static> {
    all: &'static [C],
    /// Not sent through a network API (see [`TRANSFER_CODES_SKIPPED`]).
    skipped: &'static [C],
    /// Without a scenario (`ledger::scenarios`).
    uncovered: &'static [C],
    name: fn(C) -> &'static str,
}

/// Runs every scenario (its code and steps) but the skipped ones through the gateway; asserts
/// that each gets its code, that exactly the listed codes were skipped, and that every other
/// code was sent.
fn run_all<C: Copy + Ord + std::fmt::Debug>(
    gateway: &Gateway,
    spread: &mut Spread,
    scenarios: impl Iterator<Item = (C, Vec<Step>)>,
    codes: &Codes<C>,
) {
    let mut covered = BTreeSet::new();
    let mut skipped = BTreeSet::new();
    for (expect, steps) in scenarios {
        if codes.skipped.contains(&expect) {
            skipped.insert(expect);
            continue;
        }
        let ids = spread.next(&steps);
        let got = run(gateway, &ids, &steps, (codes.name)(expect));
        assert_eq!(got.last(), Some(&(codes.name)(expect)), "{got:?}");
        covered.insert(expect);
    }
    assert_eq!(skipped, codes.skipped.iter().copied().collect());
    let missing: Vec<C> = codes
        .all
        .iter()
        .copied()
        .filter(|code| !covered.contains(code) && !skipped.contains(code))
        .filter(|code| !codes.uncovered.contains(code))
        .collect();
    assert!(
        missing.is_empty(),
        "not sent through the gateway: {missing:?}"
    );
}

/// The Rust client over gRPC, pointed at the gateway as at a node.
struct Gateway {
    runtime: tokio::runtime::Runtime,
    client: client::Client,
}

impl Gateway {
    fn connect(grpc_addr: &str) -> Gateway {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let client = runtime.block_on(async {
            support::connect(
                &format!("http://{grpc_addr}"),
                client::RetryPolicy::default(),
            )
            .unwrap()
        });
        Gateway { runtime, client }
    }

    /// The gateway's results for `body`, as a state machine's.
    fn apply(&self, body: &BatchBody) -> BatchResults {
        let answer = self.runtime.block_on(async {
            match body {
                BatchBody::CreateAccounts(events) => self
                    .client
                    .create_accounts(events)
                    .await
                    .map(BatchResults::CreateAccounts),
                BatchBody::CreateTransfers(events) => self
                    .client
                    .create_transfers(events)
                    .await
                    .map(BatchResults::CreateTransfers),
                BatchBody::SagaSteps(_) => unreachable!("the scenarios take no saga steps"),
            }
        });
        answer.unwrap_or_else(|error| panic!("the gateway refused {body:?}: {error}"))
    }
}

/// Hands each scenario its ids: in the first slot of the next group in turn, or, for a scenario
/// naming an id the translation keeps (0, `u128::MAX`) where the gateway places an event by it,
/// in that id's slot, since all of an event's ids must live in one group.
struct Spread<'a> {
    map: &'a ClusterMap,
    slots: Vec<Slot>,
    scenarios: u64,
    per_group: Vec<usize>,
}

impl<'a> Spread<'a> {
    fn new(map: &'a ClusterMap) -> Spread<'a> {
        let slots: Vec<Slot> = map.groups().keys().map(|&g| map.slots_of(g)[0]).collect();
        assert_eq!(slots.len(), GROUPS);
        Spread {
            map,
            slots,
            scenarios: 0,
            per_group: vec![0; GROUPS],
        }
    }

    /// The next scenario's ids spread over the groups (see [`Ids::spread`]), the groups'
    /// order rotating with each scenario.
    fn spread_next(&mut self) -> Ids {
        self.scenarios += 1;
        let base = self.scenarios as usize;
        Ids {
            slot: self.slots[base % GROUPS],
            scenario: self.scenarios,
            spread: Some(
                (0..GROUPS)
                    .map(|k| self.slots[(base + k) % GROUPS])
                    .collect(),
            ),
        }
    }

    fn next(&mut self, steps: &[Step]) -> Ids {
        self.scenarios += 1;
        let rotating = self.slots[self.scenarios as usize % GROUPS];
        let pinned: BTreeSet<Slot> = steps
            .iter()
            .flat_map(|step| placing_ids(&step.batch.body))
            .filter(|&id| Ids::kept(id))
            .map(slot_of)
            .collect();
        assert!(pinned.len() <= 1, "a scenario naming 0 and u128::MAX");
        let slot = pinned.first().copied().unwrap_or(rotating);
        let group = self.map.group_of_slot(slot);
        let index = self.map.groups().keys().position(|&g| g == group);
        self.per_group[index.expect("a group of the map")] += 1;
        Ids {
            slot,
            scenario: self.scenarios,
            spread: None,
        }
    }
}

/// The ids by which the gateway places an event (a transfer's zeros are "not given").
fn placing_ids(body: &BatchBody) -> Vec<u128> {
    match body {
        BatchBody::CreateAccounts(events) => events.iter().map(|a| a.id).collect(),
        BatchBody::CreateTransfers(events) => events
            .iter()
            .flat_map(|t| [t.id, t.debit_account_id, t.credit_account_id, t.pending_id])
            .filter(|&id| id != 0)
            .collect(),
        BatchBody::SagaSteps(_) => unreachable!("the scenarios take no saga steps"),
    }
}

/// One scenario's ids: the small id `x` becomes `id_in_slot(slot, scenario, x)`, distinct for
/// every scenario, slot and id; 0 and `u128::MAX`, the invalid ids some scenarios name, stay as
/// they are. In one slot; or, with `spread` (a slot in each group), account `x` in
/// `spread[x % 4]` and transfer `x` in `spread[(x + 2) % 4]`, so that a scenario's accounts 1
/// and 2 and its transfer 1 land in three groups.
struct Ids {
    slot: Slot,
    scenario: u64,
    spread: Option<Vec<Slot>>,
}

/// How far from an account's a transfer's id is placed in [`Ids::spread`].
const SPREAD_TRANSFER_OFFSET: u128 = 2;

impl Ids {
    fn kept(id: u128) -> bool {
        id == 0 || id == u128::MAX
    }

    fn id_in(&self, small: u128, offset: u128) -> u128 {
        if Ids::kept(small) {
            return small;
        }
        // The construction keeps 68 bits of `small`, and `scenario` whole: no two collide.
        assert!(small < 1 << 68, "scenario ids are small: {small}");
        let slot = match &self.spread {
            None => self.slot,
            Some(slots) => slots[((small + offset) % slots.len() as u128) as usize],
        };
        id_in_slot(slot, self.scenario, small).expect("a small millisecond count")
    }

    fn account(&self, small: u128) -> u128 {
        self.id_in(small, 0)
    }

    fn transfer(&self, small: u128) -> u128 {
        self.id_in(small, SPREAD_TRANSFER_OFFSET)
    }

    fn body(&self, body: &BatchBody) -> BatchBody {
        map_events(
            body,
            |a| Account {
                id: self.account(a.id),
                ..a
            },
            |t| Transfer {
                id: self.transfer(t.id),
                debit_account_id: self.account(t.debit_account_id),
                credit_account_id: self.account(t.credit_account_id),
                pending_id: self.transfer(t.pending_id),
                ..t
            },
        )
    }

    /// Whether some transfer of `body` (translated) names ids in two groups or more.
    fn crosses_groups(&self, map: ClusterMap, body: &BatchBody) -> bool {
        let BatchBody::CreateTransfers(events) = self.body(body) else {
            return false;
        };
        events.iter().any(|t| {
            let groups: BTreeSet<_> = [t.id, t.debit_account_id, t.credit_account_id]
                .into_iter()
                .filter(|&id| !Ids::kept(id))
                .map(|id| map.group_of(id))
                .collect();
            groups.len() > 1
        })
    }
}

/// `body` with each account changed by `account`, each transfer by `transfer`.
fn map_events(
    body: &BatchBody,
    account: impl Fn(Account) -> Account,
    transfer: impl Fn(Transfer) -> Transfer,
) -> BatchBody {
    match body {
        BatchBody::CreateAccounts(events) => {
            BatchBody::CreateAccounts(events.iter().copied().map(account).collect())
        }
        BatchBody::CreateTransfers(events) => {
            BatchBody::CreateTransfers(events.iter().copied().map(transfer).collect())
        }
        BatchBody::SagaSteps(_) => unreachable!("the scenarios take no saga steps"),
    }
}

/// Runs a scenario's steps, ids translated by `ids`, on a fresh state machine (at the
/// scenario's own timestamps) and through the gateway (imported timestamps moved into the real
/// timeline, timeouts waited out); asserts that every event of every step gets the same code
/// from both, and returns the codes of the batch under test.
fn run(gateway: &Gateway, ids: &Ids, steps: &[Step], scenario: &str) -> Vec<&'static str> {
    let mut local = StateMachine::default();
    let mut timeline = Timeline::default();
    let mut deadlines: Vec<Deadline> = Vec::new();
    let mut codes_last = Vec::new();
    for (index, step) in steps.iter().enumerate() {
        let body = ids.body(&step.batch.body);
        let expected = local.apply(&Batch {
            timestamp: step.batch.timestamp,
            body: body.clone(),
        });
        wait_for_expiries(&deadlines, step.batch.timestamp, scenario);
        let sent = timeline.real_imported_timestamps(&body, step.batch.timestamp, now_ns());
        let got = gateway.apply(&sent);
        let got_codes = codes(&got);
        assert_eq!(
            got_codes,
            codes(&expected),
            "scenario for {scenario}, step {index}: through the gateway (left) and on one state \
             machine (right); sent {sent:?}"
        );
        // Spread scenarios import nothing and leave nothing pending (`all_transfers_plain`):
        // they need no timeline, and an event the gateway refuses before its saga has no
        // group's timestamp.
        if ids.spread.is_none() {
            timeline.push(span(&expected), span(&got));
            deadlines.extend(timeouts(&sent, &expected, &got));
        }
        codes_last = got_codes;
    }
    codes_last
}

fn codes(results: &BatchResults) -> Vec<&'static str> {
    match results {
        BatchResults::CreateAccounts(r) => r.iter().map(|r| r.result.as_str()).collect(),
        BatchResults::CreateTransfers(r) | BatchResults::SagaSteps(r) => {
            r.iter().map(|r| r.result.as_str()).collect()
        }
    }
}

fn timestamps(results: &BatchResults) -> Vec<u64> {
    match results {
        BatchResults::CreateAccounts(r) => r.iter().map(|r| r.timestamp).collect(),
        BatchResults::CreateTransfers(r) | BatchResults::SagaSteps(r) => {
            r.iter().map(|r| r.timestamp).collect()
        }
    }
}

/// The earliest and latest timestamps of a step's events (a step before the batch under test
/// creates its events or fails them, so these are the times it was applied at; with its events
/// spread over groups, at each group's clock).
fn span(results: &BatchResults) -> (u64, u64) {
    let timestamps = timestamps(results);
    let first = *timestamps.iter().min().expect("a step has events");
    let last = *timestamps.iter().max().expect("a step has events");
    assert!(first != 0, "{results:?}");
    (first, last)
}

fn now_ns() -> u64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    u64::try_from(since_epoch.as_nanos()).expect("before the year 2554")
}

/// Where a scenario's steps were applied, step by step: their first and last event timestamps
/// on the state machine (`local`) and in the group (`real`).
#[derive(Default)]
struct Timeline {
    local: Vec<(u64, u64)>,
    real: Vec<(u64, u64)>,
}

impl Timeline {
    fn push(&mut self, local: (u64, u64), real: (u64, u64)) {
        self.local.push(local);
        self.real.push(real);
    }

    /// `body` with each imported event's timestamp moved from the scenario's timeline (the
    /// next step sealed at `sealed_local`) into the real one (the next step sent at `now`).
    fn real_imported_timestamps(&self, body: &BatchBody, sealed_local: u64, now: u64) -> BatchBody {
        let real = |imported: bool, timestamp: u64| {
            if imported {
                self.real(timestamp, sealed_local, now)
            } else {
                timestamp
            }
        };
        map_events(
            body,
            |a| Account {
                timestamp: real(a.flags.contains(AccountFlags::IMPORTED), a.timestamp),
                ..a
            },
            |t| Transfer {
                timestamp: real(t.flags.contains(TransferFlags::IMPORTED), t.timestamp),
                ..t
            },
        )
    }

    /// The real timestamp at the place `local` has among the scenario's steps: as far before
    /// the first step as `local` is; halfway between the two steps it falls between; halfway
    /// between the last step and `now` if it falls before the next step's seal. What the
    /// ledger checks of an imported timestamp is its order against these (not before the last
    /// transfer, after its accounts, before its own event), so the order is what must be kept.
    /// Timestamps far from the scenario's (0, `TIMESTAMP_MAX`) mean what they say and stay.
    fn real(&self, local: u64, sealed_local: u64, now: u64) -> u64 {
        let day = 86_400 * SECOND;
        if local.abs_diff(T0) > day {
            return local;
        }
        assert!(
            local < sealed_local,
            "an imported timestamp at or after its own batch's seal has no real place"
        );
        let Some(step) = self.local.iter().rposition(|&(first, _)| first <= local) else {
            let (first_local, first_real) = (self.local[0].0, self.real[0].0);
            return first_real - (first_local - local);
        };
        assert!(
            local > self.local[step].1,
            "an imported timestamp among a step's own events"
        );
        let low = self.real[step].1;
        let high = self.real.get(step + 1).map_or(now, |&(first, _)| first);
        assert!(high - low >= 2, "no real time between two steps");
        low + (high - low) / 2
    }
}

/// A pending transfer's deadline, on the state machine's clock and on the group's.
struct Deadline {
    local: u64,
    real: u64,
}

/// The deadlines of the pending transfers with timeouts that `sent` created.
fn timeouts(sent: &BatchBody, expected: &BatchResults, got: &BatchResults) -> Vec<Deadline> {
    let (BatchBody::CreateTransfers(events), BatchResults::CreateTransfers(local)) =
        (sent, expected)
    else {
        return Vec::new();
    };
    let real = timestamps(got);
    events
        .iter()
        .zip(local)
        .zip(real)
        .filter(|((event, result), _)| {
            event.flags.contains(TransferFlags::PENDING)
                && event.timeout > 0
                && result.result == TR::Created
        })
        .map(|((event, result), real)| {
            let timeout = u64::from(event.timeout);
            assert!(timeout <= TIMEOUT_WAIT_SECONDS_MAX, "a {timeout} s timeout");
            Deadline {
                local: result.timestamp + timeout * SECOND,
                real: real + timeout * SECOND,
            }
        })
        .collect()
}

/// Before the step sealed at `sealed_local`: waits out (bounded) every deadline that passed
/// before it on the scenario's clock, and checks that no other has passed on the real one.
fn wait_for_expiries(deadlines: &[Deadline], sealed_local: u64, scenario: &str) {
    for deadline in deadlines {
        let now = now_ns();
        if deadline.local <= sealed_local {
            let wait_ns = (deadline.real + 1_000_000).saturating_sub(now);
            assert!(wait_ns <= TIMEOUT_WAIT_SECONDS_MAX * SECOND);
            std::thread::sleep(Duration::from_nanos(wait_ns));
        } else {
            assert!(
                now < deadline.real,
                "scenario for {scenario}: a pending transfer expired in the group before the \
                 step that expects it pending (the test ran slower than its 1 s timeout)"
            );
        }
    }
}
