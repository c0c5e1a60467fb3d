//! The meta group's replicated state — the cluster map (or none before the first) and the
//! config center's keys (`config.rs`) — and the commands that change it.
//!
//! A change is a whole new map proposed with the epoch of the map it replaces
//! (compare-and-set): two operators editing at once cannot both win, and the loser is told
//! the epoch in use. The new map must be a successor of the one in use
//! (`ClusterMap::check_successor`: a newer epoch, no slot moved). Each rule is checked when
//! the entry is applied, on every replica alike, so what the log holds decides; a refused
//! command changes nothing.
//!
//! Commands and the state are JSON with a version: readable in a log dump, and the map's own
//! `Deserialize` checks it whole, so no replica ever holds an invalid map.

use std::io;

use cluster::{ClusterMap, SuccessorError};
use replication::{BatchOutcome, SmallState};
use serde::{Deserialize, Serialize};

use crate::config::{ConfigCommand, ConfigStore};

/// The version of the state's encoding (in every snapshot). Version 1 (before the config
/// center) is still read: it holds no keys.
const STATE_VERSION: u32 = 2;

/// A change to the meta group's state, as its log entry holds it (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum MetaCommand {
    /// Makes `map` the cluster map, if the map in use has epoch `expected_epoch` (0: there is
    /// no map yet) and `map` may succeed it.
    SetMap {
        expected_epoch: u64,
        map: ClusterMap,
    },
    /// Changes the config center (see [`ConfigCommand`]), for the proposer's request
    /// `request` (a retry of a request already applied is answered, not applied again).
    Config {
        change: ConfigCommand,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request: Option<String>,
    },
}

impl MetaCommand {
    /// The bytes of the log entry.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a command holds only strings and numbers")
    }
}

/// What applying a [`MetaCommand::SetMap`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapChange {
    /// The map is now the proposed one.
    Applied { epoch: u64 },
    /// The map in use is not the one the change was made from.
    EpochMismatch { expected: u64, current: u64 },
    /// The proposed map may not succeed the one in use.
    Refused(SuccessorError),
    /// The entry was not a command this build reads (nothing changed).
    Malformed,
}

/// Codes of a [`MapChange`] in the outcome the replication layer carries back to the
/// proposer: `codes` = [kind, slot moved], `timestamps` = [epoch in use after the entry, the
/// other epoch the change names (expected, or proposed)].
mod code {
    pub const APPLIED: u32 = 0;
    pub const EPOCH_MISMATCH: u32 = 1;
    pub const NOT_NEWER: u32 = 2;
    pub const MOVES_SLOTS: u32 = 3;
    pub const MALFORMED: u32 = 4;
}

impl MapChange {
    /// The change as the replication layer's outcome (see [`code`]).
    fn to_outcome(&self, epoch_in_use: u64) -> BatchOutcome {
        let (kind, slot, named_epoch) = match self {
            MapChange::Applied { epoch } => (code::APPLIED, 0, *epoch),
            MapChange::EpochMismatch { expected, .. } => (code::EPOCH_MISMATCH, 0, *expected),
            MapChange::Refused(SuccessorError::NotNewer { new, .. }) => (code::NOT_NEWER, 0, *new),
            MapChange::Refused(SuccessorError::MovesSlots { slot }) => {
                (code::MOVES_SLOTS, *slot, 0)
            }
            MapChange::Malformed => (code::MALFORMED, 0, 0),
        };
        BatchOutcome {
            accounts: false,
            saga: false,
            codes: vec![kind, slot],
            timestamps: vec![epoch_in_use, named_epoch],
            applied: Default::default(),
        }
    }

    /// The change an outcome of this build's [`MetaState::apply`] describes.
    pub(crate) fn from_outcome(outcome: &BatchOutcome) -> Option<MapChange> {
        let (&[kind, slot], &[in_use, named]) =
            (outcome.codes.as_slice(), outcome.timestamps.as_slice())
        else {
            return None;
        };
        Some(match kind {
            code::APPLIED => MapChange::Applied { epoch: named },
            code::EPOCH_MISMATCH => MapChange::EpochMismatch {
                expected: named,
                current: in_use,
            },
            code::NOT_NEWER => MapChange::Refused(SuccessorError::NotNewer {
                current: in_use,
                new: named,
            }),
            code::MOVES_SLOTS => MapChange::Refused(SuccessorError::MovesSlots { slot }),
            code::MALFORMED => MapChange::Malformed,
            _ => return None,
        })
    }
}

/// The meta group's state: the cluster map in use, if one was set, and the config center.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetaState {
    map: Option<ClusterMap>,
    config: ConfigStore,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateJson {
    version: u32,
    map: Option<ClusterMap>,
    #[serde(default)]
    config: ConfigStore,
}

impl MetaState {
    /// The cluster map in use (`None` until the first is set).
    pub fn map(&self) -> Option<&ClusterMap> {
        self.map.as_ref()
    }

    /// The epoch of the map in use (0: none yet).
    pub fn epoch(&self) -> u64 {
        self.map.as_ref().map_or(0, ClusterMap::epoch)
    }

    /// The config center's keys.
    pub fn config(&self) -> &ConfigStore {
        &self.config
    }

    /// Applies a change to the map: the rules every replica checks alike.
    pub fn change_map(&mut self, expected_epoch: u64, map: ClusterMap) -> MapChange {
        if expected_epoch != self.epoch() {
            return MapChange::EpochMismatch {
                expected: expected_epoch,
                current: self.epoch(),
            };
        }
        if let Some(current) = &self.map
            && let Err(refused) = current.check_successor(&map)
        {
            return MapChange::Refused(refused);
        }
        let epoch = map.epoch();
        self.map = Some(map);
        MapChange::Applied { epoch }
    }
}

impl SmallState for MetaState {
    const KIND: &'static str = "meta";

    fn apply(&mut self, entry: &[u8]) -> BatchOutcome {
        match serde_json::from_slice::<MetaCommand>(entry) {
            Ok(MetaCommand::SetMap {
                expected_epoch,
                map,
            }) => self
                .change_map(expected_epoch, map)
                .to_outcome(self.epoch()),
            Ok(MetaCommand::Config { change, request }) => {
                let change = self.config.apply(change, request.as_deref());
                change.to_outcome(self.config.revision())
            }
            // Read by a map proposer as a malformed map change, by a config proposer as a
            // malformed config change.
            Err(_) => MapChange::Malformed.to_outcome(self.epoch()),
        }
    }

    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(&StateJson {
            version: STATE_VERSION,
            map: self.map.clone(),
            config: self.config.clone(),
        })
        .expect("the state holds only strings and numbers")
    }

    fn decode(bytes: &[u8]) -> io::Result<MetaState> {
        let state: StateJson = serde_json::from_slice(bytes).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("not a meta group state: {e}"),
            )
        })?;
        if state.version != STATE_VERSION && state.version != 1 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "meta group state version {} is not the version {STATE_VERSION} this build reads",
                    state.version
                ),
            ));
        }
        Ok(MetaState {
            map: state.map,
            config: state.config,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use cluster::{GroupId, Member, Members, Slot};

    use super::*;

    pub(crate) fn members(port: u16) -> Members {
        BTreeMap::from([(
            1,
            Member {
                grpc: format!("http://127.0.0.1:{port}"),
                http: format!("http://127.0.0.1:{}", port + 1),
                peer: format!("127.0.0.1:{}", port + 2),
            },
        )])
    }

    /// A first map of two groups.
    pub(crate) fn two_groups() -> ClusterMap {
        ClusterMap::new(BTreeMap::from([
            (GroupId::from_u128(1), members(20000)),
            (GroupId::from_u128(2), members(20010)),
        ]))
        .unwrap()
    }

    fn set(state: &mut MetaState, expected_epoch: u64, map: &ClusterMap) -> BatchOutcome {
        let entry = MetaCommand::SetMap {
            expected_epoch,
            map: map.clone(),
        }
        .encode();
        state.apply(&entry)
    }

    fn change(outcome: &BatchOutcome) -> MapChange {
        MapChange::from_outcome(outcome).expect("an outcome of this build")
    }

    #[test]
    fn a_map_is_set_only_from_the_epoch_in_use_and_only_to_a_successor() {
        let mut state = MetaState::default();
        let first = two_groups();
        // Proposed as if a map were in use: refused, nothing set.
        let outcome = set(&mut state, 1, &first);
        assert_eq!(
            change(&outcome),
            MapChange::EpochMismatch {
                expected: 1,
                current: 0
            }
        );
        assert_eq!(state.map(), None);
        assert_eq!(
            change(&set(&mut state, 0, &first)),
            MapChange::Applied { epoch: 1 }
        );
        assert_eq!(state.map(), Some(&first));

        // A second proposal made from "no map": the loser of a race, told the epoch in use.
        let renamed = first
            .set_members(GroupId::from_u128(2), members(20020))
            .unwrap();
        assert_eq!(
            change(&set(&mut state, 0, &renamed)),
            MapChange::EpochMismatch {
                expected: 0,
                current: 1
            }
        );
        // The same epoch again is not a successor.
        assert_eq!(
            change(&set(&mut state, 1, &first)),
            MapChange::Refused(SuccessorError::NotNewer { current: 1, new: 1 })
        );
        // Moving a slot is refused naming it.
        let slot = Slot::new(0).unwrap();
        let moved = first.move_slots(&[slot], GroupId::from_u128(2)).unwrap();
        assert_eq!(
            change(&set(&mut state, 1, &moved)),
            MapChange::Refused(SuccessorError::MovesSlots { slot: 0 })
        );
        assert_eq!(state.map(), Some(&first));
        // New members: taken, epoch bumped.
        assert_eq!(
            change(&set(&mut state, 1, &renamed)),
            MapChange::Applied { epoch: 2 }
        );
        assert_eq!(state.epoch(), 2);
    }

    #[test]
    fn an_entry_that_is_not_a_command_changes_nothing() {
        let mut state = MetaState::default();
        set(&mut state, 0, &two_groups());
        for entry in [
            &b""[..],
            b"{}",
            b"{\"command\":\"drop_everything\"}",
            b"{\"command\":\"set_map\",\"expected_epoch\":1}",
            // A map that is not valid (no groups) is refused by the map's own checks.
            b"{\"command\":\"set_map\",\"expected_epoch\":1,\"map\":{\"epoch\":2,\"groups\":[],\"slots\":[]}}",
        ] {
            let before = state.clone();
            assert_eq!(change(&state.apply(entry)), MapChange::Malformed);
            assert_eq!(state, before);
        }
    }

    #[test]
    fn the_state_round_trips_and_anything_else_is_refused() {
        let mut state = MetaState::default();
        assert_eq!(MetaState::decode(&state.encode()).unwrap(), state);
        set(&mut state, 0, &two_groups());
        assert_eq!(MetaState::decode(&state.encode()).unwrap(), state);
        let other_version = String::from_utf8(state.encode())
            .unwrap()
            .replace("\"version\":2", "\"version\":3");
        let error = MetaState::decode(other_version.as_bytes()).unwrap_err();
        assert!(error.to_string().contains("version 3"), "{error}");
        for garbage in [&b""[..], b"null", b"{\"map\":null}", b"\x00\x01"] {
            assert!(MetaState::decode(garbage).is_err());
        }
    }

    #[test]
    fn every_change_round_trips_through_the_outcome_with_epochs_of_any_size() {
        let big = u64::MAX - 1;
        for (change, in_use) in [
            (MapChange::Applied { epoch: big }, big),
            (
                MapChange::EpochMismatch {
                    expected: big,
                    current: 1 << 40,
                },
                1 << 40,
            ),
            (
                MapChange::Refused(SuccessorError::NotNewer {
                    current: big,
                    new: 1 << 33,
                }),
                big,
            ),
            (
                MapChange::Refused(SuccessorError::MovesSlots { slot: 4095 }),
                7,
            ),
            (MapChange::Malformed, 7),
        ] {
            let outcome = change.to_outcome(in_use);
            assert_eq!(MapChange::from_outcome(&outcome), Some(change));
        }
    }

    #[test]
    fn outcomes_of_another_shape_are_not_read_as_changes() {
        assert_eq!(MapChange::from_outcome(&BatchOutcome::default()), None);
        let mut outcome = MapChange::Malformed.to_outcome(3);
        outcome.codes[0] = 99;
        assert_eq!(MapChange::from_outcome(&outcome), None);
    }
}
