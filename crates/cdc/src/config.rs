//! What a publisher is told: the groups and their replicas (`--group G=URL[,URL…]`,
//! `client::GroupSpec`), where the events go (subject prefix, stream name template: [`Naming`],
//! shared with `fincore project --nats`), the duplicate window and how many publishes may be in
//! flight. Checked here, once, with errors naming the flag.
//!
//! Owns naming (`<prefix>.<group>.events`, the stream's name); must not connect to anything.

use std::time::Duration;

use client::GroupSpec;
use limits::{
    CDC_DUPLICATE_WINDOW_SECONDS_MAX, CDC_GROUP_REPLICAS_MAX, CDC_GROUPS_MAX,
    CDC_PUBLISHES_IN_FLIGHT_MAX,
};

use crate::error::CdcError;

/// The subject prefix when none is given: subjects are `fincore.<group>.events`.
pub const SUBJECT_PREFIX_DEFAULT: &str = "fincore";

/// The stream name when none is given: `{prefix}` is the subject prefix with its dots as
/// dashes, `{group}` the group's name (`fincore-g1-events`).
pub const STREAM_TEMPLATE_DEFAULT: &str = "{prefix}-{group}-events";

/// Everything a publisher needs, checked.
#[derive(Debug, Clone)]
pub struct Config {
    /// The NATS server(s), `nats://HOST:PORT`.
    pub nats_url: String,
    pub nats_credentials: crate::NatsCredentials,
    pub groups: Vec<GroupSpec>,
    /// Sent to every replica; role `read` suffices.
    pub api_key: Option<String>,
    pub naming: Naming,
    /// Of a stream this publisher creates.
    pub duplicate_window: Duration,
    /// Per group.
    pub in_flight_max: usize,
}

impl Config {
    /// Checks what the flags cannot: names, counts and how they combine.
    pub fn check(&self) -> Result<(), CdcError> {
        let invalid = |field: &str, reason: String| CdcError::Invalid {
            field: field.into(),
            reason,
        };
        GroupSpec::check_list(&self.groups, CDC_GROUPS_MAX, CDC_GROUP_REPLICAS_MAX)
            .map_err(|e| invalid("--group", e.0))?;
        self.naming.check(&self.groups)?;
        if self.duplicate_window.is_zero()
            || self.duplicate_window > Duration::from_secs(CDC_DUPLICATE_WINDOW_SECONDS_MAX)
        {
            return Err(invalid(
                "--duplicate-window-seconds",
                format!("must be 1 to {CDC_DUPLICATE_WINDOW_SECONDS_MAX}"),
            ));
        }
        if self.in_flight_max == 0 || self.in_flight_max > CDC_PUBLISHES_IN_FLIGHT_MAX {
            return Err(invalid(
                "--in-flight",
                format!("must be 1 to {CDC_PUBLISHES_IN_FLIGHT_MAX}"),
            ));
        }
        Ok(())
    }
}

/// Where each group's events are in NATS: the subject `<prefix>.<group>.events` and the stream
/// named by the template. The publisher and `fincore project --nats` both use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Naming {
    pub subject_prefix: String,
    pub stream_template: String,
}

impl Default for Naming {
    fn default() -> Naming {
        Naming {
            subject_prefix: SUBJECT_PREFIX_DEFAULT.into(),
            stream_template: STREAM_TEMPLATE_DEFAULT.into(),
        }
    }
}

impl Naming {
    /// The prefix is subject tokens, and every group's stream name is valid and its own.
    pub fn check(&self, groups: &[GroupSpec]) -> Result<(), CdcError> {
        let invalid = |field: &str, reason: String| CdcError::Invalid {
            field: field.into(),
            reason,
        };
        let prefix_ok = !self.subject_prefix.is_empty()
            && self.subject_prefix.split('.').all(|token| {
                !token.is_empty()
                    && token
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !prefix_ok {
            return Err(invalid(
                "--subject-prefix",
                format!(
                    "{:?} must be dot-separated tokens of letters, digits, '-' and '_'",
                    self.subject_prefix
                ),
            ));
        }
        if groups.len() > 1 && !self.stream_template.contains("{group}") {
            return Err(invalid(
                "--stream",
                "with several groups the template must contain {group}: each group has a stream of its own".into(),
            ));
        }
        for group in groups {
            let name = self.stream_name(&group.name);
            let ok = !name.is_empty()
                && name.len() <= 255
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok {
                return Err(invalid(
                    "--stream",
                    format!(
                        "{name:?} is not a valid stream name (letters, digits, '-' and '_', at most 255)"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// `<prefix>.<group>.events`.
    pub fn subject(&self, group: &str) -> String {
        format!("{}.{group}.events", self.subject_prefix)
    }

    /// The group's stream: the template with `{prefix}` and `{group}` filled in.
    pub fn stream_name(&self, group: &str) -> String {
        self.stream_template
            .replace("{prefix}", &self.subject_prefix.replace('.', "-"))
            .replace("{group}", group)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(groups: &[&str]) -> Config {
        Config {
            nats_url: "nats://127.0.0.1:4222".into(),
            nats_credentials: crate::NatsCredentials::None,
            groups: groups.iter().map(|g| g.parse().unwrap()).collect(),
            api_key: None,
            naming: Naming::default(),
            duplicate_window: Duration::from_secs(120),
            in_flight_max: 16,
        }
    }

    #[test]
    fn a_group_names_its_replicas_and_gets_its_own_subject_and_stream() {
        let mut config = config(&["g1=http://a:1,http://b:2", "g2=http://c:3"]);
        config.check().unwrap();
        assert_eq!(config.groups[0].replicas, ["http://a:1", "http://b:2"]);
        assert_eq!(config.naming.subject("g1"), "fincore.g1.events");
        assert_eq!(config.naming.stream_name("g1"), "fincore-g1-events");
        config.naming.subject_prefix = "test.x1".into();
        assert_eq!(config.naming.subject("g2"), "test.x1.g2.events");
        assert_eq!(config.naming.stream_name("g2"), "test-x1-g2-events");
    }

    #[test]
    fn bad_groups_and_flags_are_refused_naming_the_flag() {
        let starts = |config: &Config, flag: &str| {
            let error = config.check().unwrap_err().to_string();
            assert!(error.starts_with(flag), "{error}");
            error
        };
        let mut twice = config(&["g1=http://a:1", "g1=http://b:1"]);
        assert!(starts(&twice, "--group:").contains("twice"));
        let too_many: Vec<String> = (0..=CDC_GROUP_REPLICAS_MAX)
            .map(|i| format!("http://a:{i}"))
            .collect();
        starts(
            &config(&[&format!("g1={}", too_many.join(","))]),
            "--group:",
        );
        twice.groups.pop();
        twice.naming.subject_prefix = "a..b".into();
        starts(&twice, "--subject-prefix");
        let mut shared = config(&["g1=http://a:1", "g2=http://b:1"]);
        shared.naming.stream_template = "one-stream".into();
        starts(&shared, "--stream");
        let mut window = config(&["g1=http://a:1"]);
        window.in_flight_max = 0;
        starts(&window, "--in-flight");
    }
}
