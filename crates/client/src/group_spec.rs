//! A group as a tool is told about it (`--group NAME=URL[,URL…]` of `fincore cdc` and
//! `fincore project`): its name and its replicas' gRPC URLs, parsed and checked once, and the
//! client of each replica built from it.
//!
//! Owns the flag's syntax, the naming rule (a name is one NATS subject token: letters, digits,
//! `-`, `_`; a name of 32 hex digits is the group's id and is then named on every call) and the
//! checks of a list of groups. It must not connect: clients connect lazily.

use limits::CDC_GROUP_NAME_BYTES_MAX as GROUP_NAME_BYTES_MAX;

use crate::{Client, ClientBuilder, ClientError, RetryPolicy};

/// One group: its name and its replicas' gRPC URLs (`http://` or `https://`), which serve
/// identical events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSpec {
    pub name: String,
    pub replicas: Vec<String>,
}

/// Why a `--group` is refused: the reason alone (the caller names the flag).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct GroupSpecError(pub String);

impl std::str::FromStr for GroupSpec {
    type Err = GroupSpecError;

    /// `NAME=URL[,URL…]`.
    fn from_str(text: &str) -> Result<GroupSpec, GroupSpecError> {
        let invalid = |reason: String| GroupSpecError(format!("{text:?}: {reason}"));
        let (name, urls) = text
            .split_once('=')
            .ok_or_else(|| invalid("expected NAME=URL[,URL…]".into()))?;
        check_name(name).map_err(invalid)?;
        let replicas: Vec<String> = urls.split(',').map(|u| u.trim().to_string()).collect();
        if replicas.iter().any(String::is_empty) {
            return Err(invalid("a replica's URL is empty".into()));
        }
        if let Some(bad) = replicas
            .iter()
            .find(|url| !(url.starts_with("http://") || url.starts_with("https://")))
        {
            return Err(invalid(format!(
                "replica URL {bad:?} must start with http:// or https:// (the node's gRPC address)"
            )));
        }
        // A replica named twice would never be counted as every replica ("gone" from all).
        if let Some((at, url)) = replicas
            .iter()
            .enumerate()
            .find(|(at, url)| replicas[..*at].contains(url))
        {
            return Err(invalid(format!(
                "replica {url} is given twice (URL {} of the list)",
                at + 1
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
    if name.is_empty() || name.len() > GROUP_NAME_BYTES_MAX {
        return Err(format!(
            "the group's name must have 1 to {GROUP_NAME_BYTES_MAX} characters"
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

impl GroupSpec {
    /// Whether the name is the group's id (32 hex digits): then every call names it, so that
    /// a replica of another group refuses instead of serving its own events.
    pub fn is_group_id(&self) -> bool {
        self.name.len() == 32 && self.name.bytes().all(|b| b.is_ascii_hexdigit())
    }

    /// Checks a tool's list of groups: 1 to `groups_max` groups, each named once, each with 1
    /// to `replicas_max` replicas.
    pub fn check_list(
        groups: &[GroupSpec],
        groups_max: usize,
        replicas_max: usize,
    ) -> Result<(), GroupSpecError> {
        if groups.is_empty() || groups.len() > groups_max {
            return Err(GroupSpecError(format!(
                "give 1 to {groups_max} groups, not {}",
                groups.len()
            )));
        }
        for (at, group) in groups.iter().enumerate() {
            if groups[..at].iter().any(|g| g.name == group.name) {
                return Err(GroupSpecError(format!(
                    "group {:?} is given twice",
                    group.name
                )));
            }
            if group.replicas.is_empty() || group.replicas.len() > replicas_max {
                return Err(GroupSpecError(format!(
                    "group {:?}: give 1 to {replicas_max} replica URLs, not {}",
                    group.name,
                    group.replicas.len()
                )));
            }
        }
        Ok(())
    }

    /// The client of replica `url` of this group (connecting lazily: call inside a Tokio
    /// runtime), naming the group on every call when it is named by its id.
    pub fn client(
        &self,
        url: &str,
        policy: RetryPolicy,
        api_key: Option<&str>,
    ) -> Result<Client, ClientError> {
        let builder: ClientBuilder = Client::builder(&[url])
            .retry_policy(policy)
            .api_key_opt(api_key);
        match self.is_group_id() {
            true => builder.group(&self.name),
            false => builder,
        }
        .connect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_names_its_replicas_and_bad_ones_are_refused_naming_the_part() {
        let group: GroupSpec = "g1=http://a:1, https://b:2".parse().unwrap();
        assert_eq!(group.name, "g1");
        assert_eq!(group.replicas, ["http://a:1", "https://b:2"]);
        assert!(!group.is_group_id());
        let id: GroupSpec = format!("{}=http://a:1", "0123456789abcdef".repeat(2))
            .parse()
            .unwrap();
        assert!(id.is_group_id());
        for (bad, reason) in [
            ("g1", "NAME=URL"),
            ("=http://a:1", "1 to 64 characters"),
            ("g.1=http://a:1", "only letters"),
            ("g*=http://a:1", "only letters"),
            ("g1=http://a:1,", "empty"),
            ("g1=127.0.0.1:1", "http://"),
            ("g1=http://a:1,http://b:1,http://a:1", "given twice (URL 3"),
        ] {
            let error = bad.parse::<GroupSpec>().unwrap_err().to_string();
            assert!(error.contains(reason), "{bad}: {error}");
        }
        let long = format!("{}=http://a:1", "g".repeat(GROUP_NAME_BYTES_MAX + 1));
        assert!(long.parse::<GroupSpec>().is_err());
    }

    #[test]
    fn a_list_of_groups_is_checked_for_count_repeats_and_replicas() {
        let parse = |texts: &[&str]| -> Vec<GroupSpec> {
            texts.iter().map(|t| t.parse().unwrap()).collect()
        };
        let two = parse(&["g1=http://a:1,http://b:1", "g2=http://c:1"]);
        GroupSpec::check_list(&two, 2, 2).unwrap();
        let error = GroupSpec::check_list(&two, 1, 2).unwrap_err().to_string();
        assert!(error.contains("1 to 1 groups, not 2"), "{error}");
        let error = GroupSpec::check_list(&two, 2, 1).unwrap_err().to_string();
        assert!(
            error.contains("\"g1\": give 1 to 1 replica URLs"),
            "{error}"
        );
        let twice = parse(&["g1=http://a:1", "g1=http://b:1"]);
        let error = GroupSpec::check_list(&twice, 2, 2).unwrap_err().to_string();
        assert!(error.contains("\"g1\" is given twice"), "{error}");
        assert!(GroupSpec::check_list(&[], 2, 2).is_err());
    }
}
