//! The cluster map: a versioned value naming the ledger groups, each group's members and how to
//! reach them, and which group owns each of the [`SLOTS`] slots.
//!
//! Owns the map's invariants (every slot owned by exactly one known group, groups and members
//! within the limits, valid ids and addresses, epoch ≥ 1), every change to it (each returns a
//! new map with the epoch bumped, leaving the old one untouched) and its JSON form, which is
//! validated whole when read, because a map arrives from the network. Must not talk to groups,
//! decide when slots move (the future meta group does), or know anything of the ledger.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::placement::{SLOTS, Slot, slot_of};
use crate::{ADDRESS_BYTES_MAX, GROUP_MEMBERS_MAX, GROUPS_MAX, MAP_JSON_BYTES_MAX};

/// A replica's node id within its group (as `replication::NodeId`).
pub type NodeId = u64;

/// A ledger group's id: 128 bits, written as 32 lower-case hex digits (the text form of
/// `replication::membership::GroupId`; read in either case).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupId(u128);

impl GroupId {
    /// Length of the text form.
    pub const HEX_DIGITS: usize = 32;

    pub const fn from_u128(bits: u128) -> GroupId {
        GroupId(bits)
    }

    pub const fn as_u128(self) -> u128 {
        self.0
    }
}

impl FromStr for GroupId {
    type Err = Refusal;

    fn from_str(text: &str) -> Result<GroupId, Refusal> {
        let bad = || Refusal::BadGroupId {
            text: text.chars().take(Self::HEX_DIGITS + 8).collect(),
        };
        if text.len() != Self::HEX_DIGITS || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        u128::from_str_radix(text, 16)
            .map(GroupId)
            .map_err(|_| bad())
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GroupId({self})")
    }
}

/// How to reach one replica (as `replication::PeerNode`): its client listeners and its peer
/// listener. `http` may be empty (a replica added without one); the others may not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Member {
    pub grpc: String,
    pub http: String,
    pub peer: String,
}

/// A group's members by node id.
pub type Members = BTreeMap<NodeId, Member>;

/// Why a map may not replace the one in use ([`ClusterMap::check_successor`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SuccessorError {
    #[error("its epoch {new} is not newer than the epoch {current} in use")]
    NotNewer { current: u64, new: u64 },
    #[error(
        "it moves slot {slot} to another group; moving slots needs their accounts moved too, which is not built yet"
    )]
    MovesSlots { slot: u32 },
}

/// What was wrong with a map or a change to it, and where: `field` is a path into the JSON
/// form by list position (`groups[2].members[0].grpc`, `slots[5].first`), into a map built in
/// code by id (`groups[<group id>].members[<node id>].grpc`, `slots[<slot>]`), or the argument
/// of a change (`move_slots.to`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cluster map: {field}: {reason}")]
pub struct MapError {
    pub field: String,
    pub reason: Refusal,
}

/// Every reason a map or a change is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{bytes} bytes is more than a cluster map may take ({MAP_JSON_BYTES_MAX})")]
    TooLarge { bytes: usize },
    #[error("not a cluster map's JSON: {message}")]
    Json { message: String },
    #[error("0 is never a map's epoch (the first map has epoch 1)")]
    EpochZero,
    #[error("the epoch is at its maximum and cannot be bumped")]
    EpochExhausted,
    #[error("a map needs at least one group")]
    NoGroups,
    #[error("{count} groups; a map has at most {GROUPS_MAX}")]
    TooManyGroups { count: usize },
    #[error("{text:?} is not a group id (32 hex digits)")]
    BadGroupId { text: String },
    #[error("group {group} is listed twice")]
    DuplicateGroup { group: GroupId },
    #[error("group {group} is not in the map")]
    UnknownGroup { group: GroupId },
    #[error("group {group} is already in the map")]
    GroupExists { group: GroupId },
    #[error("group {group} still owns {slots} slots; move them to other groups first")]
    GroupOwnsSlots { group: GroupId, slots: usize },
    #[error("a group needs at least one member")]
    NoMembers,
    #[error("{count} members; a group has at most {GROUP_MEMBERS_MAX}")]
    TooManyMembers { count: usize },
    #[error("node {node} is listed twice")]
    DuplicateMember { node: NodeId },
    #[error("an address is required here")]
    EmptyAddress,
    #[error("{bytes} bytes; an address has at most {ADDRESS_BYTES_MAX}")]
    AddressTooLong { bytes: usize },
    #[error("an address holds only printable ASCII without spaces, quotes or backslashes")]
    AddressCharacters,
    #[error("slot {slot} does not exist (slots are 0..={})", SLOTS - 1)]
    NoSuchSlot { slot: u32 },
    #[error("the range {first}..={last} runs backwards")]
    RangeBackwards { first: u32, last: u32 },
    #[error(
        "the range starts at slot {first} but slot {expected} comes next: ranges go in ascending order and name every slot once"
    )]
    RangeOutOfOrder { first: u32, expected: u32 },
    #[error("the table covers {found} slots; it must cover all {SLOTS} (0..={})", SLOTS - 1)]
    SlotTableLength { found: usize },
}

fn refuse<T>(field: impl Into<String>, reason: Refusal) -> Result<T, MapError> {
    Err(MapError {
        field: field.into(),
        reason,
    })
}

/// The versioned map of the cluster. Always valid: every constructor and change checks it
/// whole (see [`Refusal`] for what is refused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterMap {
    epoch: u64,
    groups: BTreeMap<GroupId, Members>,
    /// Owner of each slot, indexed by slot number; exactly `SLOTS` long.
    slots: Vec<GroupId>,
}

impl ClusterMap {
    /// The first map (epoch 1): `groups`, with the slots dealt out in contiguous ranges of
    /// equal size (the first `SLOTS % n` groups, in id order, one slot more). Contiguous
    /// rather than round robin because slot numbers carry no locality (ids are hashed), so
    /// ranges cost nothing and keep the table one range per group, readable and compact.
    pub fn new(groups: BTreeMap<GroupId, Members>) -> Result<ClusterMap, MapError> {
        check_groups(&groups)?;
        let (per_group, extra) = (SLOTS as usize / groups.len(), SLOTS as usize % groups.len());
        let slots: Vec<GroupId> = groups
            .keys()
            .enumerate()
            .flat_map(|(n, &group)| std::iter::repeat_n(group, per_group + usize::from(n < extra)))
            .collect();
        ClusterMap::checked(ClusterMap {
            epoch: 1,
            groups,
            slots,
        })
    }

    /// A map from its parts, checked (for a store that keeps the parts, such as the meta
    /// group's state; `slots[n]` owns slot `n`).
    pub fn from_parts(
        epoch: u64,
        groups: BTreeMap<GroupId, Members>,
        slots: Vec<GroupId>,
    ) -> Result<ClusterMap, MapError> {
        ClusterMap::checked(ClusterMap {
            epoch,
            groups,
            slots,
        })
    }

    /// Reads a map from its JSON text (at most [`MAP_JSON_BYTES_MAX`] bytes), refusing
    /// anything not a valid map.
    pub fn from_json(text: &[u8]) -> Result<ClusterMap, MapError> {
        if text.len() > MAP_JSON_BYTES_MAX {
            return refuse("(map)", Refusal::TooLarge { bytes: text.len() });
        }
        let mut deserializer = serde_json::Deserializer::from_slice(text);
        let wire: MapJson = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
            let path = e.path().to_string();
            MapError {
                field: path,
                reason: Refusal::Json {
                    message: e.into_inner().to_string(),
                },
            }
        })?;
        deserializer.end().map_err(|e| MapError {
            field: "(map)".into(),
            reason: Refusal::Json {
                message: e.to_string(),
            },
        })?;
        wire.into_map()
    }

    /// The map's JSON text (compact; see `docs/placement.md` for its shape).
    pub fn to_json(&self) -> String {
        serde_json::to_string(&MapJson::from_map(self))
            .expect("a map's JSON form holds only strings and numbers")
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn groups(&self) -> &BTreeMap<GroupId, Members> {
        &self.groups
    }

    /// The members of `group`, if it is in the map.
    pub fn members(&self, group: GroupId) -> Option<&Members> {
        self.groups.get(&group)
    }

    pub fn group_of_slot(&self, slot: Slot) -> GroupId {
        self.slots[slot.index() as usize]
    }

    /// The group that holds account `id`.
    pub fn group_of(&self, id: u128) -> GroupId {
        self.group_of_slot(slot_of(id))
    }

    /// The slots `group` owns, in order (none for a group not in the map).
    pub fn slots_of(&self, group: GroupId) -> Vec<Slot> {
        Slot::all()
            .filter(|&slot| self.group_of_slot(slot) == group)
            .collect()
    }

    /// Whether `next` may replace this map today: its epoch is newer, and every slot stays
    /// with the group that owns it here (members, addresses and groups without slots may
    /// change; moving a slot needs its accounts moved, which is not built yet). The one rule
    /// the meta group applies to a proposed map and a gateway to a map it is given.
    pub fn check_successor(&self, next: &ClusterMap) -> Result<(), SuccessorError> {
        if next.epoch <= self.epoch {
            return Err(SuccessorError::NotNewer {
                current: self.epoch,
                new: next.epoch,
            });
        }
        match Slot::all().find(|&slot| next.group_of_slot(slot) != self.group_of_slot(slot)) {
            Some(slot) => Err(SuccessorError::MovesSlots { slot: slot.index() }),
            None => Ok(()),
        }
    }

    /// The next map, in which `to` owns `slots` (the step of a future split or merge).
    pub fn move_slots(&self, slots: &[Slot], to: GroupId) -> Result<ClusterMap, MapError> {
        if !self.groups.contains_key(&to) {
            return refuse("move_slots.to", Refusal::UnknownGroup { group: to });
        }
        let mut next = self.next()?;
        for &slot in slots {
            next.slots[slot.index() as usize] = to;
        }
        ClusterMap::checked(next)
    }

    /// The next map, with `group` added; it owns no slot until slots are moved to it.
    pub fn add_group(&self, group: GroupId, members: Members) -> Result<ClusterMap, MapError> {
        if self.groups.contains_key(&group) {
            return refuse("add_group.group", Refusal::GroupExists { group });
        }
        let mut next = self.next()?;
        next.groups.insert(group, members);
        ClusterMap::checked(next)
    }

    /// The next map, without `group`, which must own no slot.
    pub fn remove_group(&self, group: GroupId) -> Result<ClusterMap, MapError> {
        if !self.groups.contains_key(&group) {
            return refuse("remove_group.group", Refusal::UnknownGroup { group });
        }
        let owned = self.slots.iter().filter(|&&owner| owner == group).count();
        if owned > 0 {
            return refuse(
                "remove_group.group",
                Refusal::GroupOwnsSlots {
                    group,
                    slots: owned,
                },
            );
        }
        let mut next = self.next()?;
        next.groups.remove(&group);
        ClusterMap::checked(next)
    }

    /// The next map, with `group`'s members replaced by `members`.
    pub fn set_members(&self, group: GroupId, members: Members) -> Result<ClusterMap, MapError> {
        let mut next = self.next()?;
        match next.groups.get_mut(&group) {
            Some(current) => *current = members,
            None => return refuse("set_members.group", Refusal::UnknownGroup { group }),
        }
        ClusterMap::checked(next)
    }

    /// A copy with the epoch bumped, for a change to modify.
    fn next(&self) -> Result<ClusterMap, MapError> {
        let epoch = match self.epoch.checked_add(1) {
            Some(epoch) => epoch,
            None => return refuse("epoch", Refusal::EpochExhausted),
        };
        Ok(ClusterMap {
            epoch,
            ..self.clone()
        })
    }

    /// `map` if it keeps every invariant (the groups' own checks, then the epoch and the table).
    fn checked(map: ClusterMap) -> Result<ClusterMap, MapError> {
        check_groups(&map.groups)?;
        if map.epoch == 0 {
            return refuse("epoch", Refusal::EpochZero);
        }
        if map.slots.len() != SLOTS as usize {
            return refuse(
                "slots",
                Refusal::SlotTableLength {
                    found: map.slots.len(),
                },
            );
        }
        if let Some((slot, &group)) = map
            .slots
            .iter()
            .enumerate()
            .find(|(_, g)| !map.groups.contains_key(g))
        {
            return refuse(format!("slots[{slot}]"), Refusal::UnknownGroup { group });
        }
        Ok(map)
    }
}

fn check_groups(groups: &BTreeMap<GroupId, Members>) -> Result<(), MapError> {
    if groups.is_empty() {
        return refuse("groups", Refusal::NoGroups);
    }
    if groups.len() > GROUPS_MAX {
        return refuse(
            "groups",
            Refusal::TooManyGroups {
                count: groups.len(),
            },
        );
    }
    for (group, members) in groups {
        check_members(&format!("groups[{group}].members"), members)?;
    }
    Ok(())
}

fn check_members(field: &str, members: &Members) -> Result<(), MapError> {
    if members.is_empty() {
        return refuse(field, Refusal::NoMembers);
    }
    if members.len() > GROUP_MEMBERS_MAX {
        return refuse(
            field,
            Refusal::TooManyMembers {
                count: members.len(),
            },
        );
    }
    members
        .iter()
        .try_for_each(|(node, member)| check_member(&format!("{field}[{node}]"), member))
}

fn check_member(field: &str, member: &Member) -> Result<(), MapError> {
    check_address(&format!("{field}.grpc"), &member.grpc, false)?;
    check_address(&format!("{field}.http"), &member.http, true)?;
    check_address(&format!("{field}.peer"), &member.peer, false)
}

fn check_address(field: &str, address: &str, may_be_empty: bool) -> Result<(), MapError> {
    if address.is_empty() && !may_be_empty {
        return refuse(field, Refusal::EmptyAddress);
    }
    if address.len() > ADDRESS_BYTES_MAX {
        return refuse(
            field,
            Refusal::AddressTooLong {
                bytes: address.len(),
            },
        );
    }
    if !address
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    {
        return refuse(field, Refusal::AddressCharacters);
    }
    Ok(())
}

impl Serialize for ClusterMap {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        MapJson::from_map(self).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for ClusterMap {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ClusterMap, D::Error> {
        MapJson::deserialize(deserializer)?
            .into_map()
            .map_err(serde::de::Error::custom)
    }
}

/// The JSON form. Ids are kept as text here and parsed in `into_map`, so a bad one is refused
/// with its path; groups and members are lists, so a duplicate is seen, not silently merged
/// as an object's repeated key would be.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MapJson {
    epoch: u64,
    groups: Vec<GroupJson>,
    slots: Vec<RangeJson>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupJson {
    id: String,
    members: Vec<MemberJson>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberJson {
    id: NodeId,
    grpc: String,
    http: String,
    peer: String,
}

/// Slots `first..=last` belong to `group`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RangeJson {
    first: u32,
    last: u32,
    group: String,
}

impl MapJson {
    fn from_map(map: &ClusterMap) -> MapJson {
        let groups = map
            .groups
            .iter()
            .map(|(group, members)| GroupJson {
                id: group.to_string(),
                members: members
                    .iter()
                    .map(|(&id, m)| MemberJson {
                        id,
                        grpc: m.grpc.clone(),
                        http: m.http.clone(),
                        peer: m.peer.clone(),
                    })
                    .collect(),
            })
            .collect();
        let mut slots: Vec<RangeJson> = Vec::new();
        for (index, group) in map.slots.iter().enumerate() {
            let slot = index as u32;
            match slots.last_mut() {
                Some(range) if range.group == group.to_string() => range.last = slot,
                _ => slots.push(RangeJson {
                    first: slot,
                    last: slot,
                    group: group.to_string(),
                }),
            }
        }
        MapJson {
            epoch: map.epoch,
            groups,
            slots,
        }
    }

    fn into_map(self) -> Result<ClusterMap, MapError> {
        if self.groups.len() > GROUPS_MAX {
            return refuse(
                "groups",
                Refusal::TooManyGroups {
                    count: self.groups.len(),
                },
            );
        }
        let mut groups = BTreeMap::new();
        for (n, group) in self.groups.into_iter().enumerate() {
            let id = parse_group(&format!("groups[{n}].id"), &group.id)?;
            let members = group.into_members(&format!("groups[{n}].members"))?;
            if groups.insert(id, members).is_some() {
                return refuse(
                    format!("groups[{n}].id"),
                    Refusal::DuplicateGroup { group: id },
                );
            }
        }
        let slots = expand_ranges(&self.slots, &groups)?;
        ClusterMap::checked(ClusterMap {
            epoch: self.epoch,
            groups,
            slots,
        })
    }
}

impl GroupJson {
    fn into_members(self, field: &str) -> Result<Members, MapError> {
        if self.members.is_empty() {
            return refuse(field, Refusal::NoMembers);
        }
        if self.members.len() > GROUP_MEMBERS_MAX {
            return refuse(
                field,
                Refusal::TooManyMembers {
                    count: self.members.len(),
                },
            );
        }
        let mut members = Members::new();
        for (n, m) in self.members.into_iter().enumerate() {
            let member = Member {
                grpc: m.grpc,
                http: m.http,
                peer: m.peer,
            };
            check_member(&format!("{field}[{n}]"), &member)?;
            if members.insert(m.id, member).is_some() {
                return refuse(
                    format!("{field}[{n}].id"),
                    Refusal::DuplicateMember { node: m.id },
                );
            }
        }
        Ok(members)
    }
}

fn parse_group(field: &str, text: &str) -> Result<GroupId, MapError> {
    text.parse().map_err(|reason| MapError {
        field: field.into(),
        reason,
    })
}

/// The slot table from its ranges, which must run in ascending order from slot 0 to the last,
/// naming each slot once, each range naming one of `groups`.
fn expand_ranges(
    ranges: &[RangeJson],
    groups: &BTreeMap<GroupId, Members>,
) -> Result<Vec<GroupId>, MapError> {
    let mut slots = Vec::with_capacity(SLOTS as usize);
    for (n, range) in ranges.iter().enumerate() {
        let field = |part: &str| format!("slots[{n}].{part}");
        let expected = slots.len() as u32;
        if range.first != expected {
            return refuse(
                field("first"),
                Refusal::RangeOutOfOrder {
                    first: range.first,
                    expected,
                },
            );
        }
        if range.last < range.first {
            return refuse(
                field("last"),
                Refusal::RangeBackwards {
                    first: range.first,
                    last: range.last,
                },
            );
        }
        if range.last >= SLOTS {
            return refuse(field("last"), Refusal::NoSuchSlot { slot: range.last });
        }
        let group = parse_group(&field("group"), &range.group)?;
        if !groups.contains_key(&group) {
            return refuse(field("group"), Refusal::UnknownGroup { group });
        }
        slots.extend(std::iter::repeat_n(
            group,
            (range.last - range.first + 1) as usize,
        ));
    }
    if slots.len() != SLOTS as usize {
        return refuse("slots", Refusal::SlotTableLength { found: slots.len() });
    }
    Ok(slots)
}

#[cfg(test)]
mod tests {
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};
    use serde_json::{Value, json};

    use super::*;

    fn group(n: u128) -> GroupId {
        GroupId::from_u128(n << 64 | 0xabc)
    }

    fn members(count: u64) -> Members {
        (1..=count)
            .map(|node| {
                let member = Member {
                    grpc: format!("10.0.0.{node}:7000"),
                    http: format!("10.0.0.{node}:8000"),
                    peer: format!("10.0.0.{node}:9000"),
                };
                (node, member)
            })
            .collect()
    }

    fn map_of(groups: u128) -> ClusterMap {
        ClusterMap::new((1..=groups).map(|n| (group(n), members(3))).collect())
            .expect("a valid map")
    }

    fn owned_counts(map: &ClusterMap) -> Vec<usize> {
        map.groups()
            .keys()
            .map(|&g| map.slots_of(g).len())
            .collect()
    }

    fn refusal(result: Result<ClusterMap, MapError>) -> (String, Refusal) {
        let error = result.expect_err("the map must be refused");
        (error.field, error.reason)
    }

    /// The JSON of a valid two-group map, changed by `edit`, then read back.
    fn read_edited(edit: impl FnOnce(&mut Value)) -> Result<ClusterMap, MapError> {
        let mut value: Value = serde_json::from_str(&map_of(2).to_json()).expect("JSON");
        edit(&mut value);
        ClusterMap::from_json(value.to_string().as_bytes())
    }

    #[test]
    fn a_new_map_deals_the_slots_in_contiguous_ranges_of_equal_size() {
        let map = map_of(3);
        assert_eq!(map.epoch(), 1);
        assert_eq!(owned_counts(&map), [1366, 1365, 1365]);
        let json: Value = serde_json::from_str(&map.to_json()).expect("JSON");
        let ranges: Vec<(u64, u64)> = json["slots"]
            .as_array()
            .expect("ranges")
            .iter()
            .map(|r| {
                (
                    r["first"].as_u64().expect("first"),
                    r["last"].as_u64().expect("last"),
                )
            })
            .collect();
        assert_eq!(ranges, [(0, 1365), (1366, 2730), (2731, 4095)]);
    }

    #[test]
    fn group_of_an_account_is_the_owner_of_its_slot() {
        let map = map_of(5);
        for id in [1u128, 2, 1000, u128::MAX - 1] {
            assert_eq!(map.group_of(id), map.group_of_slot(slot_of(id)));
        }
    }

    #[test]
    fn the_json_form_has_stable_field_names() {
        let one = ClusterMap::new(BTreeMap::from([(group(1), members(1))])).expect("a valid map");
        let expected = json!({
            "epoch": 1,
            "groups": [{
                "id": "00000000000000010000000000000abc",
                "members": [{"id": 1, "grpc": "10.0.0.1:7000", "http": "10.0.0.1:8000", "peer": "10.0.0.1:9000"}],
            }],
            "slots": [{"first": 0, "last": 4095, "group": "00000000000000010000000000000abc"}],
        });
        assert_eq!(
            serde_json::from_str::<Value>(&one.to_json()).expect("JSON"),
            expected
        );
    }

    #[test]
    fn the_example_map_in_the_docs_is_valid() {
        let doc = include_str!("../../../docs/placement.md");
        let example = doc
            .split("```json\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next());
        let map = ClusterMap::from_json(
            example
                .expect("docs/placement.md has a JSON example")
                .as_bytes(),
        )
        .expect("the example is a valid map");
        assert_eq!((map.epoch(), map.groups().len()), (3, 2));
        assert_eq!(
            map.slots_of(GroupId::from_u128(
                0x9a8b_7c6d_5e4f_3021_1f2e_3d4c_5b6a_7988
            ))
            .len(),
            2048
        );
    }

    #[test]
    fn a_map_reads_back_from_its_json_unchanged() {
        let map = map_of(4)
            .move_slots(
                &[Slot::new(7).expect("slot"), Slot::new(4000).expect("slot")],
                group(1),
            )
            .expect("moved");
        assert_eq!(
            ClusterMap::from_json(map.to_json().as_bytes()),
            Ok(map.clone())
        );
        let through_serde: ClusterMap = serde_json::from_str(&map.to_json()).expect("valid");
        assert_eq!(through_serde, map);
    }

    #[test]
    fn moving_slots_bumps_the_epoch_and_leaves_the_old_map_as_it_was() {
        let before = map_of(2);
        let slots: Vec<Slot> = (0..10).filter_map(Slot::new).collect();
        let after = before.move_slots(&slots, group(2)).expect("moved");
        assert_eq!(after.epoch(), 2);
        assert!(slots.iter().all(|&s| after.group_of_slot(s) == group(2)));
        assert_eq!(owned_counts(&after), [2038, 2058]);
        assert_eq!(before, map_of(2));
    }

    #[test]
    fn random_moves_keep_every_slot_owned_by_a_group_of_the_map() {
        let mut rng = SmallRng::seed_from_u64(11);
        let mut map = map_of(6);
        for step in 0..500u64 {
            let slots: Vec<Slot> = (0..rng.random_range(0..50))
                .filter_map(|_| Slot::new(rng.random_range(0..SLOTS)))
                .collect();
            let to = group(rng.random_range(1..=6));
            map = map.move_slots(&slots, to).expect("moved");
            assert_eq!(map.epoch(), step + 2);
            assert_eq!(owned_counts(&map).iter().sum::<usize>(), SLOTS as usize);
            assert!(Slot::all().all(|s| map.groups().contains_key(&map.group_of_slot(s))));
        }
    }

    #[test]
    fn moving_slots_to_an_unknown_group_is_refused() {
        let slot = Slot::new(0).expect("slot");
        assert_eq!(
            refusal(map_of(2).move_slots(&[slot], group(9))),
            (
                "move_slots.to".into(),
                Refusal::UnknownGroup { group: group(9) }
            )
        );
    }

    #[test]
    fn a_group_is_added_given_slots_and_its_emptied_predecessor_removed() {
        let map = map_of(1).add_group(group(2), members(3)).expect("added");
        assert_eq!(owned_counts(&map), [4096, 0]);
        let map = map
            .move_slots(&Slot::all().collect::<Vec<_>>(), group(2))
            .expect("moved");
        let map = map.remove_group(group(1)).expect("removed");
        assert_eq!(map.epoch(), 4);
        assert_eq!(map.groups().keys().copied().collect::<Vec<_>>(), [group(2)]);
        assert_eq!(map.group_of(42), group(2));
    }

    #[test]
    fn adding_a_group_already_in_the_map_is_refused() {
        assert_eq!(
            refusal(map_of(2).add_group(group(2), members(1))),
            (
                "add_group.group".into(),
                Refusal::GroupExists { group: group(2) }
            )
        );
    }

    #[test]
    fn removing_a_group_that_owns_slots_is_refused() {
        assert_eq!(
            refusal(map_of(2).remove_group(group(1))),
            (
                "remove_group.group".into(),
                Refusal::GroupOwnsSlots {
                    group: group(1),
                    slots: 2048
                }
            )
        );
    }

    #[test]
    fn removing_an_unknown_group_is_refused() {
        assert_eq!(
            refusal(map_of(2).remove_group(group(3))),
            (
                "remove_group.group".into(),
                Refusal::UnknownGroup { group: group(3) }
            )
        );
    }

    #[test]
    fn a_groups_members_are_replaced_and_an_empty_list_refused() {
        let map = map_of(2).set_members(group(1), members(5)).expect("set");
        assert_eq!(map.members(group(1)).map(BTreeMap::len), Some(5));
        assert_eq!(map.epoch(), 2);
        let (field, reason) = refusal(map.set_members(group(1), Members::new()));
        assert_eq!(
            (field.as_str(), reason),
            (
                "groups[00000000000000010000000000000abc].members",
                Refusal::NoMembers
            )
        );
        assert_eq!(
            refusal(map.set_members(group(7), members(1))).1,
            Refusal::UnknownGroup { group: group(7) }
        );
    }

    #[test]
    fn a_map_at_the_last_epoch_refuses_changes() {
        let map = map_of(1);
        let last = ClusterMap::from_parts(
            u64::MAX,
            map.groups().clone(),
            vec![group(1); SLOTS as usize],
        )
        .expect("valid");
        assert_eq!(
            refusal(last.move_slots(&[], group(1))),
            ("epoch".into(), Refusal::EpochExhausted)
        );
    }

    #[test]
    fn a_slot_table_of_the_wrong_length_is_refused() {
        let groups = map_of(1).groups().clone();
        let short = ClusterMap::from_parts(1, groups, vec![group(1); SLOTS as usize - 1]);
        assert_eq!(
            refusal(short),
            ("slots".into(), Refusal::SlotTableLength { found: 4095 })
        );
        let stops_early = read_edited(|v| v["slots"][1]["last"] = json!(4094));
        assert_eq!(
            refusal(stops_early),
            ("slots".into(), Refusal::SlotTableLength { found: 4095 })
        );
    }

    #[test]
    fn a_range_past_the_last_slot_is_refused() {
        let past = read_edited(|v| v["slots"][1]["last"] = json!(4096));
        assert_eq!(
            refusal(past),
            ("slots[1].last".into(), Refusal::NoSuchSlot { slot: 4096 })
        );
    }

    #[test]
    fn overlapping_ranges_are_refused() {
        let overlap = read_edited(|v| v["slots"][1]["first"] = json!(2000));
        assert_eq!(
            refusal(overlap),
            (
                "slots[1].first".into(),
                Refusal::RangeOutOfOrder {
                    first: 2000,
                    expected: 2048
                }
            )
        );
    }

    #[test]
    fn a_gap_between_ranges_is_refused() {
        let gap = read_edited(|v| v["slots"][0]["last"] = json!(2000));
        assert_eq!(
            refusal(gap),
            (
                "slots[1].first".into(),
                Refusal::RangeOutOfOrder {
                    first: 2048,
                    expected: 2001
                }
            )
        );
    }

    #[test]
    fn a_backwards_range_is_refused() {
        let backwards = read_edited(|v| {
            v["slots"][1] = json!({"first": 2048, "last": 2047, "group": v["groups"][1]["id"]})
        });
        assert_eq!(
            refusal(backwards),
            (
                "slots[1].last".into(),
                Refusal::RangeBackwards {
                    first: 2048,
                    last: 2047
                }
            )
        );
    }

    #[test]
    fn slots_naming_an_unknown_group_are_refused() {
        let unknown = read_edited(|v| v["slots"][1]["group"] = json!(group(5).to_string()));
        assert_eq!(
            refusal(unknown),
            (
                "slots[1].group".into(),
                Refusal::UnknownGroup { group: group(5) }
            )
        );
        let groups = map_of(1).groups().clone();
        let mut slots = vec![group(1); SLOTS as usize];
        slots[17] = group(2);
        assert_eq!(
            refusal(ClusterMap::from_parts(1, groups, slots)),
            (
                "slots[17]".into(),
                Refusal::UnknownGroup { group: group(2) }
            )
        );
    }

    #[test]
    fn a_group_listed_twice_is_refused() {
        let twice = read_edited(|v| v["groups"][1]["id"] = v["groups"][0]["id"].clone());
        assert_eq!(
            refusal(twice),
            (
                "groups[1].id".into(),
                Refusal::DuplicateGroup { group: group(1) }
            )
        );
    }

    #[test]
    fn a_bad_group_id_is_refused() {
        for bad in [
            "",
            "abc",
            "0000000000000001000000000000abcg",
            "00000000000000010000000000000abc0",
            "+0000000000000010000000000000abc",
        ] {
            let (field, reason) = refusal(read_edited(|v| v["groups"][0]["id"] = json!(bad)));
            assert_eq!(
                (field.as_str(), reason),
                ("groups[0].id", Refusal::BadGroupId { text: bad.into() })
            );
        }
        let in_slots = read_edited(|v| v["slots"][0]["group"] = json!("xyz"));
        assert_eq!(
            refusal(in_slots),
            (
                "slots[0].group".into(),
                Refusal::BadGroupId { text: "xyz".into() }
            )
        );
    }

    #[test]
    fn group_ids_read_in_either_case_and_write_in_lower_case() {
        let upper = "00000000000000010000000000000ABC"
            .parse::<GroupId>()
            .expect("valid");
        assert_eq!(upper, group(1));
        assert_eq!(upper.to_string(), "00000000000000010000000000000abc");
    }

    #[test]
    fn a_group_without_members_is_refused() {
        let empty = read_edited(|v| v["groups"][1]["members"] = json!([]));
        assert_eq!(
            refusal(empty),
            ("groups[1].members".into(), Refusal::NoMembers)
        );
    }

    #[test]
    fn a_group_with_too_many_members_is_refused() {
        let many: Vec<Value> = (1..=GROUP_MEMBERS_MAX as u64 + 1)
            .map(|id| json!({"id": id, "grpc": "a:1", "http": "", "peer": "a:2"}))
            .collect();
        let crowded = read_edited(|v| v["groups"][0]["members"] = json!(many));
        assert_eq!(
            refusal(crowded),
            (
                "groups[0].members".into(),
                Refusal::TooManyMembers { count: 10 }
            )
        );
    }

    #[test]
    fn a_member_listed_twice_is_refused() {
        let twice = read_edited(|v| {
            let first = v["groups"][0]["members"][0].clone();
            v["groups"][0]["members"][1]["id"] = first["id"].clone();
        });
        assert_eq!(
            refusal(twice),
            (
                "groups[0].members[1].id".into(),
                Refusal::DuplicateMember { node: 1 }
            )
        );
    }

    #[test]
    fn too_many_groups_are_refused() {
        let many: BTreeMap<GroupId, Members> = (1..=GROUPS_MAX as u128 + 1)
            .map(|n| (group(n), members(1)))
            .collect();
        assert_eq!(
            refusal(ClusterMap::new(many)),
            ("groups".into(), Refusal::TooManyGroups { count: 1025 })
        );
        let listed = read_edited(|v| {
            let one = v["groups"][0].clone();
            v["groups"] = json!(vec![one; GROUPS_MAX + 1]);
        });
        assert_eq!(
            refusal(listed),
            ("groups".into(), Refusal::TooManyGroups { count: 1025 })
        );
    }

    #[test]
    fn a_map_without_groups_is_refused() {
        assert_eq!(
            refusal(ClusterMap::new(BTreeMap::new())),
            ("groups".into(), Refusal::NoGroups)
        );
    }

    #[test]
    fn a_missing_grpc_or_peer_address_is_refused_but_an_empty_http_one_is_not() {
        let no_grpc = read_edited(|v| v["groups"][0]["members"][2]["grpc"] = json!(""));
        assert_eq!(
            refusal(no_grpc),
            ("groups[0].members[2].grpc".into(), Refusal::EmptyAddress)
        );
        let no_peer = read_edited(|v| v["groups"][1]["members"][0]["peer"] = json!(""));
        assert_eq!(
            refusal(no_peer),
            ("groups[1].members[0].peer".into(), Refusal::EmptyAddress)
        );
        assert!(read_edited(|v| v["groups"][0]["members"][0]["http"] = json!("")).is_ok());
    }

    #[test]
    fn an_overlong_address_is_refused() {
        let long = read_edited(|v| v["groups"][0]["members"][0]["http"] = json!("h".repeat(257)));
        assert_eq!(
            refusal(long),
            (
                "groups[0].members[0].http".into(),
                Refusal::AddressTooLong { bytes: 257 }
            )
        );
    }

    #[test]
    fn an_address_with_spaces_or_control_characters_is_refused() {
        for bad in ["10.0.0.1 :7000", "10.0.0.1:7000\n", "ü:1", "a\"b:1"] {
            let (field, reason) = refusal(read_edited(|v| {
                v["groups"][0]["members"][0]["grpc"] = json!(bad)
            }));
            assert_eq!(
                (field.as_str(), reason),
                ("groups[0].members[0].grpc", Refusal::AddressCharacters)
            );
        }
    }

    #[test]
    fn epoch_zero_is_refused() {
        assert_eq!(
            refusal(read_edited(|v| v["epoch"] = json!(0))),
            ("epoch".into(), Refusal::EpochZero)
        );
    }

    #[test]
    fn unknown_fields_and_wrong_types_are_refused_naming_the_path() {
        let (field, reason) = refusal(read_edited(|v| v["groups"][0]["weight"] = json!(3)));
        assert_eq!(field, "groups[0].weight");
        assert!(
            matches!(reason, Refusal::Json { ref message } if message.contains("weight")),
            "{reason}"
        );
        let (field, _) = refusal(read_edited(|v| {
            v["groups"][1]["members"][0]["id"] = json!("one")
        }));
        assert_eq!(field, "groups[1].members[0].id");
        let (field, _) = refusal(ClusterMap::from_json(
            b"{\"epoch\":1,\"groups\":[],\"slots\":[]} {}",
        ));
        assert_eq!(field, "(map)");
    }

    #[test]
    fn a_json_text_over_the_size_limit_is_refused_unread() {
        let huge = vec![b' '; MAP_JSON_BYTES_MAX + 1];
        assert_eq!(
            refusal(ClusterMap::from_json(&huge)),
            (
                "(map)".into(),
                Refusal::TooLarge {
                    bytes: MAP_JSON_BYTES_MAX + 1
                }
            )
        );
    }

    #[test]
    fn errors_name_the_field_and_the_reason() {
        let error = read_edited(|v| v["slots"][1]["group"] = json!("xyz")).expect_err("refused");
        assert_eq!(
            error.to_string(),
            "cluster map: slots[1].group: \"xyz\" is not a group id (32 hex digits)"
        );
    }
}
