//! The config center's replicated state: versioned keys, each change audited and reversible,
//! and at most one gray release per key (a staged value that only a chosen subset of the
//! processes watching sees, until it is promoted to everyone or abandoned).
//!
//! Every replica applies the same commands alike (`MetaState::apply`): who made a change and
//! when is stamped into the command by the replica that proposed it, never read from a clock
//! here. Everything is bounded (keys, value bytes, history entries and bytes per key), so the
//! state always fits one snapshot. Must not know what a key means (flow rules, switches): the
//! processes that take a value check it, and the meta service checks keys it knows before
//! proposing.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

/// A change to the config center, as the meta group's log holds it. `by` names the API key
/// that asked for it and `at_ms` is the proposing replica's clock (Unix milliseconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum ConfigCommand {
    /// Makes `value` the key's value for everyone: version + 1. With `expected_version`, only
    /// if the key's version is that (0: the key does not exist yet).
    Set {
        key: String,
        value: String,
        expected_version: Option<u64>,
        by: String,
        at_ms: u64,
    },
    /// Makes the value the key had at `version` its value again, as a new version.
    Rollback {
        key: String,
        version: u64,
        by: String,
        at_ms: u64,
    },
    /// Stages `value` for the processes `target` selects; everyone else keeps the value in
    /// use. Replaces a gray release already staged for the key.
    Gray {
        key: String,
        value: String,
        target: GrayTarget,
        by: String,
        at_ms: u64,
    },
    /// Makes the staged value everyone's, as a new version.
    Promote { key: String, by: String, at_ms: u64 },
    /// Drops the staged value: the processes it reached go back to the value in use.
    Abandon { key: String, by: String, at_ms: u64 },
}

impl ConfigCommand {
    /// The checks that need no state (the key's name, the value, the target): made by the
    /// proposer before the command is written, and again when it is applied.
    pub fn check(&self) -> Result<(), ConfigRefusal> {
        if let Some(why) = name_invalid(self.key()) {
            return Err(ConfigRefusal::BadKey(why));
        }
        let by = self.by();
        if by.len() > limits::CONFIG_NAME_BYTES_MAX || by.chars().any(char::is_control) {
            return Err(ConfigRefusal::BadValue(format!(
                "by: {by:?} is not a key name of at most {} bytes without control characters",
                limits::CONFIG_NAME_BYTES_MAX
            )));
        }
        match self {
            ConfigCommand::Set { value, .. } => check_value(value),
            ConfigCommand::Gray { value, target, .. } => {
                check_value(value)?;
                target
                    .invalid()
                    .map_or(Ok(()), |why| Err(ConfigRefusal::BadTarget(why)))
            }
            _ => Ok(()),
        }
    }

    /// Who asked for the command.
    pub fn by(&self) -> &str {
        match self {
            ConfigCommand::Set { by, .. }
            | ConfigCommand::Rollback { by, .. }
            | ConfigCommand::Gray { by, .. }
            | ConfigCommand::Promote { by, .. }
            | ConfigCommand::Abandon { by, .. } => by,
        }
    }

    /// The key the command changes.
    pub fn key(&self) -> &str {
        match self {
            ConfigCommand::Set { key, .. }
            | ConfigCommand::Rollback { key, .. }
            | ConfigCommand::Gray { key, .. }
            | ConfigCommand::Promote { key, .. }
            | ConfigCommand::Abandon { key, .. } => key,
        }
    }
}

/// Which watching processes a gray release reaches: those named in `nodes`, those carrying
/// every label in `labels` (when any are given), and a stable `percent` of all the others
/// (chosen by [`percent_bucket`] of the key and the process's name, so the same processes
/// stay chosen while the percentage grows). A process chosen by any of the three takes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrayTarget {
    #[serde(default)]
    pub nodes: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub percent: u8,
}

impl GrayTarget {
    /// The bytes of its names and labels.
    pub fn bytes(&self) -> usize {
        self.nodes.iter().map(String::len).sum::<usize>()
            + self
                .labels
                .iter()
                .map(|(name, value)| name.len() + value.len())
                .sum::<usize>()
    }

    /// Why this target cannot be used, naming the field; `None` if it can.
    pub fn invalid(&self) -> Option<String> {
        if self.nodes.is_empty() && self.labels.is_empty() && self.percent == 0 {
            return Some(
                "target: chooses no process: give nodes, labels or a percent above 0".into(),
            );
        }
        if self.percent > 100 {
            return Some(format!(
                "target.percent: {} is not within 0 to 100",
                self.percent
            ));
        }
        if self.nodes.len() > limits::CONFIG_GRAY_NODES_MAX {
            return Some(format!(
                "target.nodes: {} names, more than {} (CONFIG_GRAY_NODES_MAX)",
                self.nodes.len(),
                limits::CONFIG_GRAY_NODES_MAX
            ));
        }
        if self.labels.len() > limits::CONFIG_GRAY_LABELS_MAX {
            return Some(format!(
                "target.labels: {} labels, more than {} (CONFIG_GRAY_LABELS_MAX)",
                self.labels.len(),
                limits::CONFIG_GRAY_LABELS_MAX
            ));
        }
        let names = self
            .nodes
            .iter()
            .map(|node| ("target.nodes", node.as_str()));
        let labels = self.labels.iter().flat_map(|(name, value)| {
            [
                ("target.labels (a name)", name.as_str()),
                ("target.labels (a value)", value.as_str()),
            ]
        });
        names
            .chain(labels)
            .find_map(|(field, name)| name_invalid(name).map(|why| format!("{field}: {why}")))
    }

    /// Whether the process named `node` carrying `labels` takes a release staged for `key`.
    pub fn selects(&self, key: &str, node: &str, labels: &BTreeMap<String, String>) -> bool {
        self.nodes.iter().any(|name| name == node)
            || (!self.labels.is_empty()
                && self
                    .labels
                    .iter()
                    .all(|(name, value)| labels.get(name) == Some(value)))
            || percent_bucket(key, node) < u32::from(self.percent)
    }
}

/// The bucket (0 to 99) a process named `node` falls in for gray releases of `key`: FNV-1a
/// (64 bits) of the key, a zero byte and the name, modulo 100. Stable across builds and
/// machines (documented in `docs/config-center.md`), and different per key, so that the same
/// processes are not always the first to take every release.
pub fn percent_bucket(key: &str, node: &str) -> u32 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let bytes = key.bytes().chain([0]).chain(node.bytes());
    let hash = bytes.fold(OFFSET, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    });
    (hash % 100) as u32
}

/// Why `name` cannot be a key, a node name or a label: `None` if it can (1 to 128 of
/// `a-z A-Z 0-9 . _ - : / [ ]`: an IPv6 address and port is a name).
pub fn name_invalid(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > limits::CONFIG_NAME_BYTES_MAX {
        return Some(format!(
            "{name:?} is not 1 to {} bytes long",
            limits::CONFIG_NAME_BYTES_MAX
        ));
    }
    name.bytes()
        .find(|byte| !(byte.is_ascii_alphanumeric() || b"._-:/[]".contains(byte)))
        .map(|byte| {
            format!(
                "{name:?} holds {:?}: use only letters, digits and . _ - : / [ ]",
                char::from(byte)
            )
        })
}

/// What a change was, in a key's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Set,
    Rollback,
    Gray,
    Promote,
    Abandon,
}

/// One change to a key, as its audit history keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Change {
    /// The config center's revision this change made (one counter over all keys).
    pub revision: u64,
    pub action: Action,
    /// The key's version in use after the change (a gray release or its abandoning leaves it).
    pub version: u64,
    /// For a rollback, the version whose value was restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored: Option<u64>,
    pub by: String,
    pub at_ms: u64,
    /// The value in use before (for a gray release and its abandoning: the staged value
    /// replaced or dropped, if any).
    pub old: Option<String>,
    /// The value in use after (for a gray release: the staged value; abandoning: none).
    pub new: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<GrayTarget>,
    /// The id the proposer gave the request (a retry of it is answered with this change
    /// instead of being applied again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
}

impl Change {
    /// The bytes the history's bound counts: the values and the target.
    fn bytes(&self) -> usize {
        self.old.as_ref().map_or(0, String::len)
            + self.new.as_ref().map_or(0, String::len)
            + self.target.as_ref().map_or(0, GrayTarget::bytes)
    }
}

/// A value staged for some processes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gray {
    pub value: String,
    pub target: GrayTarget,
    /// The revision that staged it.
    pub revision: u64,
}

/// One key: its value in use and version, a staged gray release, and its recent history
/// (newest last; bounded by `CONFIG_HISTORY_ENTRIES_MAX` and `CONFIG_HISTORY_BYTES_MAX`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub version: u64,
    pub value: String,
    /// The revision that made the value in use.
    pub revision: u64,
    pub gray: Option<Gray>,
    pub history: VecDeque<Change>,
}

impl Entry {
    /// The value a process named `node` with `labels` takes: the staged one if the gray
    /// release selects it, otherwise the value in use.
    pub fn value_for(&self, key: &str, node: &str, labels: &BTreeMap<String, String>) -> &str {
        match &self.gray {
            Some(gray) if gray.target.selects(key, node, labels) => &gray.value,
            _ => &self.value,
        }
    }

    fn record(&mut self, change: Change) {
        self.history.push_back(change);
        let mut bytes: usize = self.history.iter().map(Change::bytes).sum();
        while self.history.len() > limits::CONFIG_HISTORY_ENTRIES_MAX
            || (bytes > limits::CONFIG_HISTORY_BYTES_MAX && self.history.len() > 1)
        {
            let dropped = self.history.pop_front().expect("more than one entry");
            bytes -= dropped.bytes();
        }
    }

    /// The value the key had at `version`, if its history still holds it.
    fn value_at(&self, version: u64) -> Option<&str> {
        if version == self.version {
            return Some(&self.value);
        }
        self.history
            .iter()
            .rev()
            .filter(|change| change.version == version)
            .filter(|change| {
                matches!(
                    change.action,
                    Action::Set | Action::Rollback | Action::Promote
                )
            })
            .find_map(|change| change.new.as_deref())
    }
}

/// Why a config change was refused (nothing changed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigRefusal {
    #[error("key: {0}")]
    BadKey(String),
    #[error(
        "value: {bytes} bytes, more than a value may hold ({max}, CONFIG_VALUE_BYTES_MAX)",
        max = limits::CONFIG_VALUE_BYTES_MAX
    )]
    ValueTooLarge { bytes: usize },
    #[error(
        "value: holds the control character U+{code:04X} at byte {at} (only tab and newlines may appear)"
    )]
    ControlCharacter { at: usize, code: u32 },
    #[error("{0}")]
    BadTarget(String),
    /// A value the processes taking the key would refuse (checked by the meta service for
    /// keys fincore takes itself, before the change is written).
    #[error("{0}")]
    BadValue(String),
    #[error(
        "key: the config center holds {max} keys (CONFIG_KEYS_MAX); no new key may be added",
        max = limits::CONFIG_KEYS_MAX
    )]
    TooManyKeys,
    #[error(
        "expected_version: the key is at version {current}, not {expected}: read it again and redo the change"
    )]
    VersionMismatch { expected: u64, current: u64 },
    #[error("key: no such key")]
    NoSuchKey,
    #[error(
        "version: the key's history no longer holds version {version} (it is at version {current}; see its history)"
    )]
    VersionGone { version: u64, current: u64 },
    #[error("key: a gray release of this key is staged: promote or abandon it first")]
    GrayPending,
    #[error("key: no gray release of this key is staged")]
    NoGray,
    #[error("the entry is not a config command this build reads")]
    Malformed,
}

/// What applying a [`ConfigCommand`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigChange {
    Applied { revision: u64, version: u64 },
    Refused(ConfigRefusal),
}

/// Codes of a [`ConfigChange`] in the outcome the replication layer carries back to the
/// proposer: `codes` = [kind], `timestamps` = [revision in use after the entry, then the
/// kind's numbers]. A refusal the proposer's own [`ConfigCommand::check`] would make is
/// carried as `INVALID`: the proposer checked before writing, so it reruns the check for the
/// message.
mod code {
    pub const APPLIED: u32 = 100;
    pub const VERSION_MISMATCH: u32 = 101;
    pub const NO_SUCH_KEY: u32 = 102;
    pub const VERSION_GONE: u32 = 103;
    pub const GRAY_PENDING: u32 = 104;
    pub const NO_GRAY: u32 = 105;
    pub const TOO_MANY_KEYS: u32 = 106;
    pub const INVALID: u32 = 107;
    pub const MALFORMED: u32 = 108;
}

impl ConfigChange {
    /// The change as the replication layer's outcome (see [`code`]).
    pub(crate) fn to_outcome(&self, revision_in_use: u64) -> replication::BatchOutcome {
        let (kind, numbers) = match self {
            ConfigChange::Applied { revision, version } => {
                (code::APPLIED, vec![*revision, *version])
            }
            ConfigChange::Refused(refusal) => match refusal {
                ConfigRefusal::VersionMismatch { expected, current } => {
                    (code::VERSION_MISMATCH, vec![*expected, *current])
                }
                ConfigRefusal::NoSuchKey => (code::NO_SUCH_KEY, vec![]),
                ConfigRefusal::VersionGone { version, current } => {
                    (code::VERSION_GONE, vec![*version, *current])
                }
                ConfigRefusal::GrayPending => (code::GRAY_PENDING, vec![]),
                ConfigRefusal::NoGray => (code::NO_GRAY, vec![]),
                ConfigRefusal::TooManyKeys => (code::TOO_MANY_KEYS, vec![]),
                ConfigRefusal::Malformed => (code::MALFORMED, vec![]),
                ConfigRefusal::BadKey(_)
                | ConfigRefusal::ValueTooLarge { .. }
                | ConfigRefusal::ControlCharacter { .. }
                | ConfigRefusal::BadTarget(_)
                | ConfigRefusal::BadValue(_) => (code::INVALID, vec![]),
            },
        };
        let mut timestamps = vec![revision_in_use];
        timestamps.extend(numbers);
        replication::BatchOutcome {
            accounts: false,
            saga: false,
            codes: vec![kind],
            timestamps,
            applied: Default::default(),
        }
    }

    /// The change an outcome of this build's apply describes, for `command` (the one
    /// proposed); `None` for an outcome of another shape.
    pub(crate) fn from_outcome(
        outcome: &replication::BatchOutcome,
        command: &ConfigCommand,
    ) -> Option<ConfigChange> {
        let &[kind] = outcome.codes.as_slice() else {
            return None;
        };
        let refused = |refusal| Some(ConfigChange::Refused(refusal));
        match (kind, &outcome.timestamps[..]) {
            (code::APPLIED, &[_, revision, version]) => {
                Some(ConfigChange::Applied { revision, version })
            }
            (code::VERSION_MISMATCH, &[_, expected, current]) => {
                refused(ConfigRefusal::VersionMismatch { expected, current })
            }
            (code::VERSION_GONE, &[_, version, current]) => {
                refused(ConfigRefusal::VersionGone { version, current })
            }
            (code::NO_SUCH_KEY, [_]) => refused(ConfigRefusal::NoSuchKey),
            (code::GRAY_PENDING, [_]) => refused(ConfigRefusal::GrayPending),
            (code::NO_GRAY, [_]) => refused(ConfigRefusal::NoGray),
            (code::TOO_MANY_KEYS, [_]) => refused(ConfigRefusal::TooManyKeys),
            (code::MALFORMED, [_]) => refused(ConfigRefusal::Malformed),
            (code::INVALID, [_]) => {
                refused(command.check().err().unwrap_or(ConfigRefusal::Malformed))
            }
            _ => None,
        }
    }
}

/// What watchers and readers are told: every key's value in use and staged release, without
/// the histories (JSON as `docs/config-center.md` shows).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigView {
    pub revision: u64,
    pub keys: BTreeMap<String, KeyView>,
}

/// One key as [`ConfigView`] shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyView {
    pub version: u64,
    pub value: String,
    pub revision: u64,
    pub gray: Option<Gray>,
}

impl KeyView {
    /// The value a process named `node` with `labels` takes for `key`, and whether it is a
    /// gray release's.
    pub fn value_for(
        &self,
        key: &str,
        node: &str,
        labels: &BTreeMap<String, String>,
    ) -> (&str, bool) {
        match &self.gray {
            Some(gray) if gray.target.selects(key, node, labels) => (&gray.value, true),
            _ => (&self.value, false),
        }
    }
}

impl ConfigView {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a view holds only strings and numbers")
    }

    /// A view sent by a meta replica, checked whole.
    pub fn from_json(text: &str) -> Result<ConfigView, String> {
        serde_json::from_str(text).map_err(|error| format!("not a config view: {error}"))
    }
}

/// A key's audit history, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryView {
    pub key: String,
    pub changes: Vec<Change>,
}

/// All keys, and the revision of the last change (0: none yet).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigStore {
    revision: u64,
    keys: BTreeMap<String, Entry>,
}

impl ConfigStore {
    /// The revision of the last change (0: none yet).
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Every key, in name order.
    pub fn keys(&self) -> &BTreeMap<String, Entry> {
        &self.keys
    }

    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.keys.get(key)
    }

    /// Every key (`key` `None`) or one, without histories, as of this revision.
    pub fn view(&self, key: Option<&str>) -> ConfigView {
        let shown = |(name, entry): (&String, &Entry)| {
            let view = KeyView {
                version: entry.version,
                value: entry.value.clone(),
                revision: entry.revision,
                gray: entry.gray.clone(),
            };
            (name.clone(), view)
        };
        let keys = match key {
            Some(key) => self
                .keys
                .get_key_value(key)
                .map(shown)
                .into_iter()
                .collect(),
            None => self.keys.iter().map(shown).collect(),
        };
        ConfigView {
            revision: self.revision,
            keys,
        }
    }

    /// `key`'s audit history (`None`: no such key).
    pub fn history(&self, key: &str) -> Option<HistoryView> {
        self.keys.get(key).map(|entry| HistoryView {
            key: key.to_owned(),
            changes: entry.history.iter().cloned().collect(),
        })
    }

    /// Checks and applies `command`, made for the proposer's request `request` (if it names
    /// one: a request the key's history already holds is answered with the change it made, and
    /// nothing more is applied); a refused command changes nothing.
    pub fn apply(&mut self, command: ConfigCommand, request: Option<&str>) -> ConfigChange {
        if let Some(request) = request
            && request.len() <= limits::CONFIG_NAME_BYTES_MAX
            && let Some(made) = self.keys.get(command.key()).and_then(|entry| {
                entry
                    .history
                    .iter()
                    .find(|change| change.request.as_deref() == Some(request))
            })
        {
            return ConfigChange::Applied {
                revision: made.revision,
                version: made.version,
            };
        }
        match self.try_apply(command, request) {
            Ok(version) => ConfigChange::Applied {
                revision: self.revision,
                version,
            },
            Err(refusal) => ConfigChange::Refused(refusal),
        }
    }

    fn try_apply(
        &mut self,
        command: ConfigCommand,
        request: Option<&str>,
    ) -> Result<u64, ConfigRefusal> {
        command.check()?;
        if request.is_some_and(|request| {
            request.len() > limits::CONFIG_NAME_BYTES_MAX || request.chars().any(char::is_control)
        }) {
            return Err(ConfigRefusal::BadValue(format!(
                "request_id: at most {} bytes without control characters",
                limits::CONFIG_NAME_BYTES_MAX
            )));
        }
        let request = request.map(str::to_owned);
        let revision = self.revision + 1;
        match command {
            ConfigCommand::Set {
                key,
                value,
                expected_version,
                by,
                at_ms,
            } => {
                let current = self.keys.get(&key);
                let version = current.map_or(0, |entry| entry.version);
                if let Some(expected) = expected_version
                    && expected != version
                {
                    return Err(ConfigRefusal::VersionMismatch {
                        expected,
                        current: version,
                    });
                }
                if current.is_some_and(|entry| entry.gray.is_some()) {
                    return Err(ConfigRefusal::GrayPending);
                }
                if current.is_none() && self.keys.len() >= limits::CONFIG_KEYS_MAX {
                    return Err(ConfigRefusal::TooManyKeys);
                }
                let entry = self.keys.entry(key).or_insert_with(|| Entry {
                    version: 0,
                    value: String::new(),
                    revision: 0,
                    gray: None,
                    history: VecDeque::new(),
                });
                let old = (entry.version > 0).then(|| entry.value.clone());
                entry.version += 1;
                entry.value = value.clone();
                entry.revision = revision;
                entry.record(Change {
                    revision,
                    action: Action::Set,
                    version: entry.version,
                    restored: None,
                    by,
                    at_ms,
                    old,
                    new: Some(value),
                    target: None,
                    request: request.clone(),
                });
                self.revision = revision;
                Ok(entry.version)
            }
            ConfigCommand::Rollback {
                key,
                version,
                by,
                at_ms,
            } => {
                let entry = self.keys.get_mut(&key).ok_or(ConfigRefusal::NoSuchKey)?;
                if entry.gray.is_some() {
                    return Err(ConfigRefusal::GrayPending);
                }
                let value = entry
                    .value_at(version)
                    .ok_or(ConfigRefusal::VersionGone {
                        version,
                        current: entry.version,
                    })?
                    .to_owned();
                let old = std::mem::replace(&mut entry.value, value.clone());
                entry.version += 1;
                entry.revision = revision;
                entry.record(Change {
                    revision,
                    action: Action::Rollback,
                    version: entry.version,
                    restored: Some(version),
                    by,
                    at_ms,
                    old: Some(old),
                    new: Some(value),
                    target: None,
                    request: request.clone(),
                });
                self.revision = revision;
                Ok(entry.version)
            }
            ConfigCommand::Gray {
                key,
                value,
                target,
                by,
                at_ms,
            } => {
                let entry = self.keys.get_mut(&key).ok_or(ConfigRefusal::NoSuchKey)?;
                let replaced = entry.gray.take().map(|gray| gray.value);
                entry.gray = Some(Gray {
                    value: value.clone(),
                    target: target.clone(),
                    revision,
                });
                entry.record(Change {
                    revision,
                    action: Action::Gray,
                    version: entry.version,
                    restored: None,
                    by,
                    at_ms,
                    old: replaced,
                    new: Some(value),
                    target: Some(target),
                    request: request.clone(),
                });
                self.revision = revision;
                Ok(entry.version)
            }
            ConfigCommand::Promote { key, by, at_ms } => {
                let entry = self.keys.get_mut(&key).ok_or(ConfigRefusal::NoSuchKey)?;
                let gray = entry.gray.take().ok_or(ConfigRefusal::NoGray)?;
                let old = std::mem::replace(&mut entry.value, gray.value.clone());
                entry.version += 1;
                entry.revision = revision;
                entry.record(Change {
                    revision,
                    action: Action::Promote,
                    version: entry.version,
                    restored: None,
                    by,
                    at_ms,
                    old: Some(old),
                    new: Some(gray.value),
                    target: Some(gray.target),
                    request: request.clone(),
                });
                self.revision = revision;
                Ok(entry.version)
            }
            ConfigCommand::Abandon { key, by, at_ms } => {
                let entry = self.keys.get_mut(&key).ok_or(ConfigRefusal::NoSuchKey)?;
                let gray = entry.gray.take().ok_or(ConfigRefusal::NoGray)?;
                entry.record(Change {
                    revision,
                    action: Action::Abandon,
                    version: entry.version,
                    restored: None,
                    by,
                    at_ms,
                    old: Some(gray.value),
                    new: None,
                    target: Some(gray.target),
                    request: request.clone(),
                });
                self.revision = revision;
                Ok(entry.version)
            }
        }
    }
}

fn check_value(value: &str) -> Result<(), ConfigRefusal> {
    if value.len() > limits::CONFIG_VALUE_BYTES_MAX {
        return Err(ConfigRefusal::ValueTooLarge { bytes: value.len() });
    }
    match value
        .char_indices()
        .find(|(_, c)| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
    {
        Some((at, c)) => Err(ConfigRefusal::ControlCharacter {
            at,
            code: u32::from(c),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(key: &str, value: &str, expected_version: Option<u64>) -> ConfigCommand {
        ConfigCommand::Set {
            key: key.into(),
            value: value.into(),
            expected_version,
            by: "operator".into(),
            at_ms: 1_000,
        }
    }

    fn applied(change: ConfigChange) -> (u64, u64) {
        match change {
            ConfigChange::Applied { revision, version } => (revision, version),
            ConfigChange::Refused(refusal) => panic!("refused: {refusal}"),
        }
    }

    fn refused(change: ConfigChange) -> ConfigRefusal {
        match change {
            ConfigChange::Refused(refusal) => refusal,
            applied => panic!("applied: {applied:?}"),
        }
    }

    #[test]
    fn sets_bump_the_version_and_the_revision_and_are_audited() {
        let mut store = ConfigStore::default();
        assert_eq!(
            applied(store.apply(set("flow.rules", "a", Some(0)), None)),
            (1, 1)
        );
        assert_eq!(applied(store.apply(set("other", "x", None), None)), (2, 1));
        assert_eq!(
            applied(store.apply(set("flow.rules", "b", Some(1)), None)),
            (3, 2)
        );
        // The loser of a race is told the version in use; nothing changes.
        let before = store.clone();
        assert_eq!(
            refused(store.apply(set("flow.rules", "c", Some(1)), None)),
            ConfigRefusal::VersionMismatch {
                expected: 1,
                current: 2
            }
        );
        assert_eq!(store, before);
        let entry = store.get("flow.rules").unwrap();
        assert_eq!((entry.version, entry.value.as_str()), (2, "b"));
        let history: Vec<_> = entry
            .history
            .iter()
            .map(|change| (change.version, change.old.as_deref(), change.new.as_deref()))
            .collect();
        assert_eq!(history, [(1, None, Some("a")), (2, Some("a"), Some("b"))]);
        assert_eq!(entry.history[1].by, "operator");
    }

    #[test]
    fn a_rollback_restores_an_old_value_as_a_new_version() {
        let mut store = ConfigStore::default();
        for value in ["v1", "v2", "v3"] {
            applied(store.apply(set("k", value, None), None));
        }
        let rollback = |version| ConfigCommand::Rollback {
            key: "k".into(),
            version,
            by: "operator".into(),
            at_ms: 2_000,
        };
        assert_eq!(applied(store.apply(rollback(1), None)), (4, 4));
        let entry = store.get("k").unwrap();
        assert_eq!(entry.value, "v1");
        let last = entry.history.back().unwrap();
        assert_eq!(
            (last.action, last.restored, last.old.as_deref()),
            (Action::Rollback, Some(1), Some("v3"))
        );
        assert_eq!(
            refused(store.apply(rollback(9), None)),
            ConfigRefusal::VersionGone {
                version: 9,
                current: 4
            }
        );
        let missing = ConfigCommand::Rollback {
            key: "nothing".into(),
            version: 1,
            by: "operator".into(),
            at_ms: 0,
        };
        assert_eq!(
            refused(store.apply(missing, None)),
            ConfigRefusal::NoSuchKey
        );
    }

    #[test]
    fn a_gray_release_reaches_only_its_target_until_promoted_or_abandoned() {
        let mut store = ConfigStore::default();
        applied(store.apply(set("k", "old", None), None));
        let gray = ConfigCommand::Gray {
            key: "k".into(),
            value: "new".into(),
            target: GrayTarget {
                nodes: vec!["gw-1".into()],
                labels: BTreeMap::from([("zone".into(), "a".into())]),
                percent: 0,
            },
            by: "operator".into(),
            at_ms: 3_000,
        };
        assert_eq!(applied(store.apply(gray.clone(), None)), (2, 1));
        let none = BTreeMap::new();
        let zone_a = BTreeMap::from([("zone".to_string(), "a".to_string())]);
        let zone_b = BTreeMap::from([("zone".to_string(), "b".to_string())]);
        let entry = store.get("k").unwrap();
        assert_eq!(entry.value_for("k", "gw-1", &none), "new");
        assert_eq!(entry.value_for("k", "gw-2", &zone_a), "new");
        assert_eq!(entry.value_for("k", "gw-2", &zone_b), "old");
        assert_eq!(entry.value_for("k", "gw-3", &none), "old");
        // No plain set or rollback while it is staged.
        assert_eq!(
            refused(store.apply(set("k", "other", None), None)),
            ConfigRefusal::GrayPending
        );
        let abandon = ConfigCommand::Abandon {
            key: "k".into(),
            by: "operator".into(),
            at_ms: 4_000,
        };
        applied(store.apply(abandon.clone(), None));
        assert_eq!(store.get("k").unwrap().value_for("k", "gw-1", &none), "old");
        assert_eq!(refused(store.apply(abandon, None)), ConfigRefusal::NoGray);
        applied(store.apply(gray, None));
        let promote = ConfigCommand::Promote {
            key: "k".into(),
            by: "operator".into(),
            at_ms: 5_000,
        };
        assert_eq!(applied(store.apply(promote, None)), (5, 2));
        let entry = store.get("k").unwrap();
        assert_eq!((entry.value.as_str(), entry.gray.as_ref()), ("new", None));
        assert_eq!(entry.value_for("k", "gw-3", &none), "new");
        let actions: Vec<_> = entry.history.iter().map(|change| change.action).collect();
        assert_eq!(
            actions,
            [
                Action::Set,
                Action::Gray,
                Action::Abandon,
                Action::Gray,
                Action::Promote
            ]
        );
    }

    #[test]
    fn a_percentage_is_stable_and_grows_by_adding_processes() {
        let names: Vec<String> = (0..2_000).map(|i| format!("node-{i}")).collect();
        let chosen = |percent: u8| -> Vec<&String> {
            let target = GrayTarget {
                percent,
                ..GrayTarget::default()
            };
            names
                .iter()
                .filter(|name| target.selects("flow.rules", name, &BTreeMap::new()))
                .collect()
        };
        let ten = chosen(10);
        let thirty = chosen(30);
        assert!(ten.iter().all(|name| thirty.contains(name)));
        // Near the asked share (2,000 names: a few percent either way).
        assert!((150..=250).contains(&ten.len()), "{}", ten.len());
        assert!((500..=700).contains(&thirty.len()), "{}", thirty.len());
        assert_eq!(chosen(100).len(), names.len());
        assert!(chosen(0).is_empty());
        // Pinned values: the bucket function is part of the documented contract.
        assert_eq!(
            percent_bucket("flow.rules", "gateway-1"),
            percent_bucket("flow.rules", "gateway-1")
        );
        assert_ne!(
            (0..20)
                .map(|i| percent_bucket("a", &format!("n{i}")))
                .collect::<Vec<_>>(),
            (0..20)
                .map(|i| percent_bucket("b", &format!("n{i}")))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn bad_keys_values_and_targets_are_refused_naming_the_field() {
        let mut store = ConfigStore::default();
        for key in ["", "has space", "ünïcode", &"k".repeat(129)] {
            assert!(matches!(
                refused(store.apply(set(key, "v", None), None)),
                ConfigRefusal::BadKey(_)
            ));
        }
        let big = "x".repeat(limits::CONFIG_VALUE_BYTES_MAX + 1);
        let refusal = refused(store.apply(set("k", &big, None), None));
        assert!(refusal.to_string().starts_with("value:"), "{refusal}");
        applied(store.apply(set("k", "v", None), None));
        for (target, field) in [
            (GrayTarget::default(), "target:"),
            (
                GrayTarget {
                    percent: 101,
                    ..GrayTarget::default()
                },
                "target.percent:",
            ),
            (
                GrayTarget {
                    nodes: vec!["bad name".into()],
                    ..GrayTarget::default()
                },
                "target.nodes:",
            ),
        ] {
            let gray = ConfigCommand::Gray {
                key: "k".into(),
                value: "w".into(),
                target,
                by: "operator".into(),
                at_ms: 0,
            };
            let refusal = refused(store.apply(gray, None));
            assert!(refusal.to_string().starts_with(field), "{refusal}");
        }
        assert_eq!(store.revision(), 1);
    }

    #[test]
    fn keys_and_history_stay_within_their_bounds() {
        let mut store = ConfigStore::default();
        for i in 0..limits::CONFIG_KEYS_MAX {
            applied(store.apply(set(&format!("key-{i}"), "v", None), None));
        }
        assert_eq!(
            refused(store.apply(set("one-more", "v", None), None)),
            ConfigRefusal::TooManyKeys
        );
        // An existing key still changes.
        applied(store.apply(set("key-0", "w", None), None));
        for i in 0..limits::CONFIG_HISTORY_ENTRIES_MAX * 2 {
            applied(store.apply(set("key-1", &i.to_string(), None), None));
        }
        let entry = store.get("key-1").unwrap();
        assert_eq!(entry.history.len(), limits::CONFIG_HISTORY_ENTRIES_MAX);
        // Big values: the history keeps within its bytes (and always the newest change).
        let big = "x".repeat(limits::CONFIG_VALUE_BYTES_MAX);
        for _ in 0..8 {
            applied(store.apply(set("key-2", &big, None), None));
        }
        let entry = store.get("key-2").unwrap();
        let bytes: usize = entry.history.iter().map(Change::bytes).sum();
        let newest = entry.history.back().unwrap();
        assert!(
            bytes <= limits::CONFIG_HISTORY_BYTES_MAX.max(newest.bytes()),
            "{bytes}"
        );
        assert_eq!(newest.version, 9);
        // A change bigger than the bound alone: only it is kept.
        assert_eq!(entry.history.len(), 1);
    }

    #[test]
    fn the_store_at_its_largest_fits_a_snapshot_beside_the_largest_map() {
        let mut store = ConfigStore::default();
        let name = |i: usize, c: char| format!("{i}-{}", c.to_string().repeat(120));
        // Values of quotes: every byte doubles in JSON.
        let big = "\"".repeat(limits::CONFIG_VALUE_BYTES_MAX);
        let target = GrayTarget {
            nodes: (0..limits::CONFIG_GRAY_NODES_MAX)
                .map(|i| name(i, 'n'))
                .collect(),
            labels: (0..limits::CONFIG_GRAY_LABELS_MAX)
                .map(|i| (name(i, 'l'), name(i, 'v')))
                .collect(),
            percent: 1,
        };
        assert!(target.invalid().is_none());
        let by = "b".repeat(limits::CONFIG_NAME_BYTES_MAX);
        for k in 0..limits::CONFIG_KEYS_MAX {
            let key = name(k, 'k');
            let mut request = 0;
            let mut apply = |store: &mut ConfigStore, command| {
                request += 1;
                let id = format!("{request:0128}");
                assert!(matches!(
                    store.apply(command, Some(&id)),
                    ConfigChange::Applied { .. }
                ));
            };
            for _ in 0..limits::CONFIG_HISTORY_ENTRIES_MAX {
                let set = ConfigCommand::Set {
                    key: key.clone(),
                    value: "\"".repeat(200),
                    expected_version: None,
                    by: by.clone(),
                    at_ms: u64::MAX,
                };
                apply(&mut store, set);
            }
            let set = ConfigCommand::Set {
                key: key.clone(),
                value: big.clone(),
                expected_version: None,
                by: by.clone(),
                at_ms: u64::MAX,
            };
            apply(&mut store, set);
            for _ in 0..2 {
                let gray = ConfigCommand::Gray {
                    key: key.clone(),
                    value: big.clone(),
                    target: target.clone(),
                    by: by.clone(),
                    at_ms: u64::MAX,
                };
                apply(&mut store, gray);
            }
        }
        let bytes = serde_json::to_vec(&store).unwrap().len();
        let room = limits::SMALL_STATE_SNAPSHOT_BYTES_MAX as usize - limits::BATCH_BYTES_MAX;
        assert!(bytes <= room, "{bytes} > {room}");
        eprintln!("the config center at its largest: {} MiB", bytes >> 20);
    }

    #[test]
    fn a_retried_request_is_answered_as_made_and_not_applied_twice() {
        let mut store = ConfigStore::default();
        let promote = ConfigCommand::Promote {
            key: "k".into(),
            by: "operator".into(),
            at_ms: 0,
        };
        applied(store.apply(set("k", "v1", None), Some("req-1")));
        let gray = ConfigCommand::Gray {
            key: "k".into(),
            value: "v2".into(),
            target: GrayTarget {
                percent: 5,
                ..GrayTarget::default()
            },
            by: "operator".into(),
            at_ms: 0,
        };
        applied(store.apply(gray, Some("req-2")));
        assert_eq!(applied(store.apply(promote.clone(), Some("req-3"))), (3, 2));
        // The promote's retry: answered as made (not refused for the missing release).
        assert_eq!(applied(store.apply(promote, Some("req-3"))), (3, 2));
        // A set's retry adds no version.
        assert_eq!(
            applied(store.apply(set("k", "v1", None), Some("req-1"))),
            (1, 1)
        );
        assert_eq!(store.get("k").unwrap().version, 2);
        assert_eq!(store.revision(), 3);
        // A request id too long is refused, naming it.
        let long = "r".repeat(limits::CONFIG_NAME_BYTES_MAX + 1);
        let refusal = refused(store.apply(set("k", "v3", None), Some(&long)));
        assert!(refusal.to_string().starts_with("request_id:"), "{refusal}");
    }
}
