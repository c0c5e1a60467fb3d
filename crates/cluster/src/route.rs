//! Splitting a caller's batch by group, and merging the groups' results back into the caller's
//! order.
//!
//! [`split`] sends each event to the group owning every id it names (its account, or a
//! transfer's own id, its accounts and the pending transfer it posts or voids), keeping the
//! event's index in the caller's batch; an event whose ids live in different groups goes to
//! [`Split::cross_group`] instead (for the future sagas). [`Merger`] puts results back
//! at those indexes and yields them dense, one per event, in the caller's order. Generic over
//! the event and result types, so it serves accounts and transfers alike without knowing the
//! ledger. Must not send anything anywhere, nor decide what a cross-group event becomes.
//!
//! Order is kept: a part lists its events in the caller's order, so a linked chain whose
//! events all live in one group stays whole and in order inside that group's part (the events
//! between a chain's first and last are the chain's own). A chain that spans groups is the
//! caller's to handle.

use std::collections::BTreeMap;

use limits::BATCH_EVENTS_MAX;

use crate::map::{ClusterMap, GroupId};
use crate::placement::Slot;

/// The ids that place an event: one (creating or looking up an account), two (a transfer's
/// debit and credit accounts), or every id a transfer names (its own id, which homes it, its
/// accounts and its `pending_id`), where 0 means "not given" and is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accounts {
    One(u128),
    Two { debit: u128, credit: u128 },
    Ids([u128; 4]),
}

impl Accounts {
    /// The groups owning the ids, each once, in the order the ids come; empty only for
    /// [`Accounts::Ids`] of zeros.
    fn groups(&self, map: &ClusterMap) -> Groups {
        let mut groups = Groups::default();
        match *self {
            Accounts::One(id) => groups.add(map.group_of(id)),
            Accounts::Two { debit, credit } => {
                groups.add(map.group_of(debit));
                groups.add(map.group_of(credit));
            }
            Accounts::Ids(ids) => {
                for id in ids.into_iter().filter(|&id| id != 0) {
                    groups.add(map.group_of(id));
                }
            }
        }
        groups
    }
}

/// Where one event goes.
enum Placement {
    Single(GroupId),
    Cross(Groups),
}

/// Up to four distinct groups, without allocating.
#[derive(Debug, Default)]
struct Groups {
    groups: [Option<GroupId>; 4],
    len: usize,
}

impl Groups {
    fn add(&mut self, group: GroupId) {
        if !self.groups[..self.len].contains(&Some(group)) {
            self.groups[self.len] = Some(group);
            self.len += 1;
        }
    }

    fn all(&self) -> impl Iterator<Item = GroupId> + '_ {
        self.groups[..self.len].iter().flatten().copied()
    }
}

/// The events of a batch bound for one group, each with its index in the caller's batch
/// (`indexes[n]` is the caller's index of `events[n]`; ascending).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part<E> {
    pub group: GroupId,
    pub indexes: Vec<u32>,
    pub events: Vec<E>,
}

/// An event whose ids live in different groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrossGroup<E> {
    pub index: u32,
    pub event: E,
    /// The groups of the event's ids, each once, in the order of [`Accounts`]' ids (for a
    /// transfer's two accounts: the debit account's group first).
    pub groups: Vec<GroupId>,
}

/// A batch split by group under one map (its epoch says which).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split<E> {
    pub epoch: u64,
    /// Events in the caller's batch.
    pub events_count: usize,
    /// One part per group with events, in group id order.
    pub parts: Vec<Part<E>>,
    /// Events spanning two groups, in the caller's order.
    pub cross_group: Vec<CrossGroup<E>>,
}

/// Why a batch could not be split or its results merged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("{count} events; a batch has at most {BATCH_EVENTS_MAX}")]
    TooManyEvents { count: usize },
    #[error("a part of {indexes} events got {results} results")]
    ResultsCount { indexes: usize, results: usize },
    #[error("event index {index} is outside the batch of {events_count} events")]
    IndexOutOfRange { index: u32, events_count: usize },
    #[error("a part's indexes must ascend; {index} follows {previous}")]
    IndexesOutOfOrder { index: u32, previous: u32 },
    #[error("event {index} got a result twice")]
    ResultTwice { index: u32 },
    #[error("event {index} got no result")]
    ResultMissing { index: u32 },
}

/// Splits `events` by the group owning the accounts `accounts_of` names, under `map`.
pub fn split<E>(
    map: &ClusterMap,
    events: Vec<E>,
    accounts_of: impl Fn(&E) -> Accounts,
) -> Result<Split<E>, RouteError> {
    if events.len() > BATCH_EVENTS_MAX {
        return Err(RouteError::TooManyEvents {
            count: events.len(),
        });
    }
    let events_count = events.len();
    // One group holds every id: nothing to work out.
    if let Some((&group, _)) = map.groups().first_key_value()
        && map.groups().len() == 1
    {
        let parts = if events.is_empty() {
            Vec::new()
        } else {
            vec![Part {
                group,
                indexes: (0..events_count as u32).collect(),
                events,
            }]
        };
        return Ok(Split {
            epoch: map.epoch(),
            events_count,
            parts,
            cross_group: Vec::new(),
        });
    }
    // Placed first, counted, then moved into parts of exactly their size: a batch of 8,189
    // events is a megabyte, and growing parts by doubling would copy it again and again.
    let placed: Vec<Placement> = events
        .iter()
        .map(|event| {
            let groups = accounts_of(event).groups(map);
            // An event naming no id at all is not placed by it: the first group takes it
            // (and refuses it as the ledger would).
            match groups.len {
                0 => Placement::Single(map.group_of_slot(Slot::all().next().expect("slots exist"))),
                1 => Placement::Single(groups.all().next().expect("one group")),
                _ => Placement::Cross(groups),
            }
        })
        .collect();
    let mut counts: BTreeMap<GroupId, usize> = BTreeMap::new();
    for placement in &placed {
        if let Placement::Single(group) = placement {
            *counts.entry(*group).or_default() += 1;
        }
    }
    let mut parts: BTreeMap<GroupId, Part<E>> = counts
        .into_iter()
        .map(|(group, count)| {
            let part = Part {
                group,
                indexes: Vec::with_capacity(count),
                events: Vec::with_capacity(count),
            };
            (group, part)
        })
        .collect();
    let mut cross_group = Vec::new();
    for ((index, event), placement) in (0u32..).zip(events).zip(placed) {
        match placement {
            Placement::Single(group) => {
                let part = parts
                    .get_mut(&group)
                    .expect("every group placed is counted");
                part.indexes.push(index);
                part.events.push(event);
            }
            Placement::Cross(groups) => cross_group.push(CrossGroup {
                index,
                event,
                groups: groups.all().collect(),
            }),
        }
    }
    let parts: Vec<Part<E>> = parts.into_values().collect();
    debug_assert_eq!(
        parts.iter().map(|p| p.events.len()).sum::<usize>() + cross_group.len(),
        events_count
    );
    Ok(Split {
        epoch: map.epoch(),
        events_count,
        parts,
        cross_group,
    })
}

/// Collects results by the caller's index and gives them back dense, in the caller's order.
#[derive(Debug, Clone)]
pub struct Merger<R> {
    results: Vec<Option<R>>,
}

impl<R> Merger<R> {
    /// A merger for a batch of `events_count` events.
    pub fn new(events_count: usize) -> Result<Merger<R>, RouteError> {
        if events_count > BATCH_EVENTS_MAX {
            return Err(RouteError::TooManyEvents {
                count: events_count,
            });
        }
        Ok(Merger {
            results: std::iter::repeat_with(|| None).take(events_count).collect(),
        })
    }

    /// Takes a part's results: `results[n]` is the result of the caller's event `indexes[n]`.
    /// Refused whole (nothing taken) if the counts differ, the indexes do not ascend, one is
    /// outside the batch or already has a result.
    pub fn put_part(&mut self, indexes: &[u32], results: Vec<R>) -> Result<(), RouteError> {
        if indexes.len() != results.len() {
            return Err(RouteError::ResultsCount {
                indexes: indexes.len(),
                results: results.len(),
            });
        }
        for (n, &index) in indexes.iter().enumerate() {
            if let Some(&previous) = n.checked_sub(1).and_then(|p| indexes.get(p))
                && previous >= index
            {
                return Err(RouteError::IndexesOutOfOrder { index, previous });
            }
            self.check_free(index)?;
        }
        for (&index, result) in indexes.iter().zip(results) {
            self.results[index as usize] = Some(result);
        }
        Ok(())
    }

    /// Takes one event's result (a cross-group event's, once its saga ends).
    pub fn put_one(&mut self, index: u32, result: R) -> Result<(), RouteError> {
        self.check_free(index)?;
        self.results[index as usize] = Some(result);
        Ok(())
    }

    /// The results, one per event in the caller's order; refused if any event has none.
    pub fn finish(self) -> Result<Vec<R>, RouteError> {
        let events_count = self.results.len();
        let results: Vec<R> = self.results.into_iter().map_while(|r| r).collect();
        if results.len() != events_count {
            return Err(RouteError::ResultMissing {
                index: results.len() as u32,
            });
        }
        Ok(results)
    }

    fn check_free(&self, index: u32) -> Result<(), RouteError> {
        match self.results.get(index as usize) {
            None => Err(RouteError::IndexOutOfRange {
                index,
                events_count: self.results.len(),
            }),
            Some(Some(_)) => Err(RouteError::ResultTwice { index }),
            Some(None) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::map::{Member, Members};
    use crate::placement::{Slot, mint_in_slot};

    fn map_of(groups: u128) -> ClusterMap {
        let member = Member {
            grpc: "a:1".into(),
            http: String::new(),
            peer: "a:2".into(),
        };
        let groups =
            (1..=groups).map(|n| (GroupId::from_u128(n), Members::from([(1, member.clone())])));
        ClusterMap::new(groups.collect()).expect("a valid map")
    }

    fn transfer(pair: &(u128, u128)) -> Accounts {
        Accounts::Two {
            debit: pair.0,
            credit: pair.1,
        }
    }

    fn random_transfers(rng: &mut SmallRng, count: usize) -> Vec<(u128, u128)> {
        (0..count)
            .map(|_| (rng.random_range(1..200), rng.random_range(1..200)))
            .collect()
    }

    /// Merges a split whose every event's result is its own caller index.
    fn merge_indexes<E>(split: &Split<E>) -> Result<Vec<u32>, RouteError> {
        let mut merger = Merger::new(split.events_count)?;
        for part in &split.parts {
            merger.put_part(&part.indexes, part.indexes.clone())?;
        }
        for cross in &split.cross_group {
            merger.put_one(cross.index, cross.index)?;
        }
        merger.finish()
    }

    #[test]
    fn split_then_merge_gives_every_result_back_at_its_events_place() {
        let mut rng = SmallRng::seed_from_u64(21);
        for groups in 1..=5 {
            let map = map_of(groups);
            for count in [0, 1, 7, 500, BATCH_EVENTS_MAX] {
                let split =
                    split(&map, random_transfers(&mut rng, count), transfer).expect("split");
                let expected: Vec<u32> = (0..count as u32).collect();
                assert_eq!(merge_indexes(&split), Ok(expected));
            }
        }
    }

    #[test]
    fn each_part_holds_only_events_of_its_group_in_the_callers_order() {
        let mut rng = SmallRng::seed_from_u64(22);
        let map = map_of(4);
        let events = random_transfers(&mut rng, 2000);
        let split = split(&map, events.clone(), transfer).expect("split");
        assert_eq!(split.epoch, map.epoch());
        for part in &split.parts {
            assert!(part.indexes.windows(2).all(|w| w[0] < w[1]));
            for (&index, event) in part.indexes.iter().zip(&part.events) {
                assert_eq!(*event, events[index as usize]);
                assert_eq!(
                    (map.group_of(event.0), map.group_of(event.1)),
                    (part.group, part.group)
                );
            }
        }
        for cross in &split.cross_group {
            assert_eq!(cross.event, events[cross.index as usize]);
            assert_eq!(
                cross.groups,
                [map.group_of(cross.event.0), map.group_of(cross.event.1)]
            );
        }
        assert!(!split.cross_group.is_empty() && split.parts.len() == 4);
    }

    #[test]
    fn a_transfer_is_placed_by_every_id_it_names_and_zeros_are_not_ids() {
        let map = map_of(4);
        let group = |id: u128| map.group_of(id);
        let other = (2..)
            .find(|&id| group(id) != group(1))
            .expect("another group");
        let with_one = (2..).find(|&id| group(id) == group(1)).expect("same group");
        let events = vec![
            [1, 1, with_one, 0],     // id and both accounts together
            [other, 1, with_one, 0], // the id (its home) elsewhere
            [1, 0, 0, with_one],     // a post or void giving no accounts
            [1, 0, 0, other],        // ... whose pending transfer is elsewhere
            [0, 0, 0, 0],            // names nothing: one group refuses it
        ];
        let split = split(&map, events, |ids| Accounts::Ids(*ids)).expect("split");
        let crossing: Vec<u32> = split.cross_group.iter().map(|c| c.index).collect();
        assert_eq!(crossing, [1, 3]);
        assert_eq!(split.cross_group[0].groups, [group(other), group(1)]);
        let placed: usize = split.parts.iter().map(|p| p.events.len()).sum();
        assert_eq!(placed, 3);
    }

    #[test]
    fn accounts_never_cross_groups() {
        let map = map_of(3);
        let split = split(&map, (1..=1000u128).collect(), |&id| Accounts::One(id)).expect("split");
        assert!(split.cross_group.is_empty());
        assert_eq!(
            split.parts.iter().map(|p| p.events.len()).sum::<usize>(),
            1000
        );
    }

    #[test]
    fn transfers_between_accounts_minted_in_one_slot_stay_in_one_group() {
        let mut rng = SmallRng::seed_from_u64(23);
        let map = map_of(8);
        let slot = Slot::new(1234).expect("slot");
        let accounts: Vec<u128> = (0..20)
            .map(|n| mint_in_slot(slot, 1_764_600_000_000 + n, &mut rng).expect("mints"))
            .collect();
        let transfers: Vec<(u128, u128)> = accounts
            .iter()
            .zip(accounts.iter().rev())
            .map(|(&d, &c)| (d, c))
            .collect();
        let split = split(&map, transfers, transfer).expect("split");
        assert!(split.cross_group.is_empty());
        assert_eq!(split.parts.len(), 1);
        assert_eq!(split.parts[0].group, map.group_of_slot(slot));
    }

    #[test]
    fn a_chain_inside_one_group_stays_contiguous_in_its_part() {
        let mut rng = SmallRng::seed_from_u64(24);
        let map = map_of(4);
        let slot = Slot::new(7).expect("slot");
        let mint = |rng: &mut SmallRng| mint_in_slot(slot, 1_764_600_000_000, rng).expect("mints");
        let mut events = random_transfers(&mut rng, 30);
        let chain: Vec<(u128, u128)> = (0..5).map(|_| (mint(&mut rng), mint(&mut rng))).collect();
        events.splice(10..10, chain.clone());
        let split = split(&map, events, transfer).expect("split");
        let part = split
            .parts
            .iter()
            .find(|p| p.group == map.group_of_slot(slot))
            .expect("the chain's part");
        let start = part
            .indexes
            .iter()
            .position(|&i| i == 10)
            .expect("the chain's first event");
        assert_eq!(part.indexes[start..start + 5], [10, 11, 12, 13, 14]);
        assert_eq!(part.events[start..start + 5], chain[..]);
    }

    #[test]
    fn a_batch_over_the_event_limit_is_refused() {
        let events = vec![(1u128, 2u128); BATCH_EVENTS_MAX + 1];
        assert_eq!(
            split(&map_of(1), events, transfer),
            Err(RouteError::TooManyEvents {
                count: BATCH_EVENTS_MAX + 1
            })
        );
        assert!(Merger::<u8>::new(BATCH_EVENTS_MAX + 1).is_err());
    }

    #[test]
    fn a_part_with_the_wrong_number_of_results_is_refused_and_changes_nothing() {
        let mut merger = Merger::new(3).expect("merger");
        assert_eq!(
            merger.put_part(&[0, 2], vec!['a']),
            Err(RouteError::ResultsCount {
                indexes: 2,
                results: 1
            })
        );
        assert_eq!(merger.put_part(&[0, 1, 2], vec!['a', 'b', 'c']), Ok(()));
        assert_eq!(merger.finish(), Ok(vec!['a', 'b', 'c']));
    }

    #[test]
    fn a_result_outside_the_batch_is_refused() {
        let mut merger = Merger::new(2).expect("merger");
        assert_eq!(
            merger.put_one(2, 'x'),
            Err(RouteError::IndexOutOfRange {
                index: 2,
                events_count: 2
            })
        );
        assert_eq!(
            merger.put_part(&[0, 5], vec!['a', 'b']),
            Err(RouteError::IndexOutOfRange {
                index: 5,
                events_count: 2
            })
        );
    }

    #[test]
    fn a_second_result_for_one_event_is_refused_and_the_first_kept() {
        let mut merger = Merger::new(2).expect("merger");
        merger.put_part(&[0], vec!['a']).expect("first");
        assert_eq!(
            merger.put_part(&[0, 1], vec!['x', 'b']),
            Err(RouteError::ResultTwice { index: 0 })
        );
        assert_eq!(
            merger.put_one(0, 'y'),
            Err(RouteError::ResultTwice { index: 0 })
        );
        merger.put_one(1, 'b').expect("second");
        assert_eq!(merger.finish(), Ok(vec!['a', 'b']));
    }

    #[test]
    fn a_part_whose_indexes_do_not_ascend_is_refused() {
        let mut merger = Merger::new(3).expect("merger");
        assert_eq!(
            merger.put_part(&[1, 1], vec!['a', 'b']),
            Err(RouteError::IndexesOutOfOrder {
                index: 1,
                previous: 1
            })
        );
        assert_eq!(
            merger.put_part(&[2, 0], vec!['a', 'b']),
            Err(RouteError::IndexesOutOfOrder {
                index: 0,
                previous: 2
            })
        );
    }

    #[test]
    fn finishing_with_an_event_unanswered_is_refused_naming_it() {
        let mut merger = Merger::new(3).expect("merger");
        merger.put_part(&[0, 2], vec!['a', 'c']).expect("part");
        assert_eq!(merger.finish(), Err(RouteError::ResultMissing { index: 1 }));
    }
}
