//! What a publisher is told: the groups and their replicas (`--group G=URL[,URL…]`), where
//! the events go (subject prefix, stream name template, duplicate window) and how many
//! publishes may be in flight. Checked here, once, with errors naming the flag.
//!
//! Owns parsing and naming (`<prefix>.<group>.events`, the stream's name); must not connect to
//! anything.

use std::time::Duration;

use limits::{
    CDC_DUPLICATE_WINDOW_SECONDS_MAX, CDC_GROUP_NAME_BYTES_MAX, CDC_GROUP_REPLICAS_MAX,
    CDC_GROUPS_MAX, CDC_PUBLISHES_IN_FLIGHT_MAX,
};

use crate::error::CdcError;

/// The subject prefix when none is given: subjects are `fincore.<group>.events`.
pub const SUBJECT_PREFIX_DEFAULT: &str = "fincore";

/// The stream name when none is given: `{prefix}` is the subject prefix with its dots as
/// dashes, `{group}` the group's name (`fincore-g1-events`).
pub const STREAM_TEMPLATE_DEFAULT: &str = "{prefix}-{group}-events";

/// One group: its name (in subjects and stream names) and its replicas' gRPC addresses, which
/// serve identical events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSpec {
    pub name: String,
    pub replicas: Vec<String>,
}

impl std::str::FromStr for GroupSpec {
    type Err = CdcError;

    /// `NAME=URL[,URL…]`.
    fn from_str(text: &str) -> Result<GroupSpec, CdcError> {
        let invalid = |reason: String| CdcError::Invalid {
            field: "--group".into(),
            reason: format!("{text:?}: {reason}"),
        };
        let (name, urls) = text
            .split_once('=')
            .ok_or_else(|| invalid("expected NAME=URL[,URL…]".into()))?;
        check_name(name).map_err(invalid)?;
        let replicas: Vec<String> = urls.split(',').map(|u| u.trim().to_string()).collect();
        if replicas.iter().any(String::is_empty) {
            return Err(invalid("a replica's URL is empty".into()));
        }
        if replicas.len() > CDC_GROUP_REPLICAS_MAX {
            return Err(invalid(format!(
                "{} replicas; at most {CDC_GROUP_REPLICAS_MAX}",
                replicas.len()
            )));
        }
        Ok(GroupSpec {
            name: name.to_string(),
            replicas,
        })
    }
}

/// A group's name must be one NATS subject token and fit a stream name.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > CDC_GROUP_NAME_BYTES_MAX {
        return Err(format!(
            "the group's name must have 1 to {CDC_GROUP_NAME_BYTES_MAX} characters"
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!(
            "the group's name {name:?} may hold only letters, digits, '-' and '_'"
        ));
    }
    Ok(())
}

/// Everything a publisher needs, checked.
#[derive(Debug, Clone)]
pub struct Config {
    /// The NATS server(s), `nats://HOST:PORT`.
    pub nats_url: String,
    pub groups: Vec<GroupSpec>,
    /// Sent to every replica; role `read` suffices.
    pub api_key: Option<String>,
    pub subject_prefix: String,
    pub stream_template: String,
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
        if self.groups.is_empty() || self.groups.len() > CDC_GROUPS_MAX {
            return Err(invalid(
                "--group",
                format!("give 1 to {CDC_GROUPS_MAX} groups"),
            ));
        }
        for (at, group) in self.groups.iter().enumerate() {
            if self.groups[..at].iter().any(|g| g.name == group.name) {
                return Err(invalid(
                    "--group",
                    format!("group {:?} is given twice", group.name),
                ));
            }
            // A replica named twice would never be counted as every replica ("gone" from all).
            if let Some((at, url)) = group
                .replicas
                .iter()
                .enumerate()
                .find(|(at, url)| group.replicas[..*at].contains(url))
            {
                return Err(invalid(
                    "--group",
                    format!(
                        "group {:?}: replica {url} is given twice (URL {} of the list)",
                        group.name,
                        at + 1
                    ),
                ));
            }
        }
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
        if self.groups.len() > 1 && !self.stream_template.contains("{group}") {
            return Err(invalid(
                "--stream",
                "with several groups the template must contain {group}: each group has a stream of its own".into(),
            ));
        }
        for group in &self.groups {
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
            groups: groups.iter().map(|g| g.parse().unwrap()).collect(),
            api_key: None,
            subject_prefix: SUBJECT_PREFIX_DEFAULT.into(),
            stream_template: STREAM_TEMPLATE_DEFAULT.into(),
            duplicate_window: Duration::from_secs(120),
            in_flight_max: 16,
        }
    }

    #[test]
    fn a_group_names_its_replicas_and_gets_its_own_subject_and_stream() {
        let mut config = config(&["g1=http://a:1,http://b:2", "g2=http://c:3"]);
        config.check().unwrap();
        assert_eq!(config.groups[0].replicas, ["http://a:1", "http://b:2"]);
        assert_eq!(config.subject("g1"), "fincore.g1.events");
        assert_eq!(config.stream_name("g1"), "fincore-g1-events");
        config.subject_prefix = "test.x1".into();
        assert_eq!(config.subject("g2"), "test.x1.g2.events");
        assert_eq!(config.stream_name("g2"), "test-x1-g2-events");
    }

    #[test]
    fn bad_groups_and_flags_are_refused_naming_the_flag() {
        for bad in [
            "g1",
            "=http://a:1",
            "g.1=http://a:1",
            "g1=http://a:1,",
            "g*=x",
        ] {
            let error = bad.parse::<GroupSpec>().unwrap_err();
            assert!(error.to_string().starts_with("--group:"), "{bad}: {error}");
        }
        let replica_twice = config(&["g1=http://a:1,http://b:1,http://a:1"]);
        let error = replica_twice.check().unwrap_err().to_string();
        assert!(
            error.contains("http://a:1 is given twice (URL 3"),
            "{error}"
        );
        let mut twice = config(&["g1=http://a:1", "g1=http://b:1"]);
        assert!(twice.check().unwrap_err().to_string().contains("twice"));
        twice.groups.pop();
        twice.subject_prefix = "a..b".into();
        assert!(
            twice
                .check()
                .unwrap_err()
                .to_string()
                .starts_with("--subject-prefix")
        );
        let mut shared = config(&["g1=http://a:1", "g2=http://b:1"]);
        shared.stream_template = "one-stream".into();
        assert!(
            shared
                .check()
                .unwrap_err()
                .to_string()
                .starts_with("--stream")
        );
        let mut window = config(&["g1=http://a:1"]);
        window.in_flight_max = 0;
        assert!(
            window
                .check()
                .unwrap_err()
                .to_string()
                .starts_with("--in-flight")
        );
    }
}
