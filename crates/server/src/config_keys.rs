//! The config center's keys that fincore's own processes take, and the check each value
//! passes: the meta service refuses a value that fails it before anything is written (naming
//! the field), and a process taking a pushed value checks it again.
//!
//! Owns the key names and their checks; must not apply a value (the processes do:
//! `fincore`'s config feed).

/// The flow-control rules (`docs/flow-control.md`: the JSON of `--flow-rules`) of the
/// gateways that watch the config center: the rules the callers meet.
pub const FLOW_RULES: &str = "flow.rules";

/// The flow-control rules of the ledger nodes that watch the config center (`serve
/// --config-meta`). A key of their own: behind gateways, a node's one caller is the gateways'
/// key, so the callers' limits of `flow.rules` would throttle all traffic there.
pub const FLOW_NODE_RULES: &str = "flow.node.rules";

/// Why `value` cannot be `key`'s value (a message naming the field), or `Ok` for a valid
/// value or a key fincore does not take itself.
pub fn check(key: &str, value: &str) -> Result<(), String> {
    match key {
        FLOW_RULES | FLOW_NODE_RULES => flow::Rules::from_json(value)
            .map(drop)
            .map_err(|error| format!("value: {key}: {error}")),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_rules_are_checked_and_other_keys_are_not() {
        assert!(check(FLOW_RULES, "{}").is_ok());
        let error = check(FLOW_RULES, r#"{"limits":[{"rate_per_second":0}]}"#).unwrap_err();
        assert!(error.starts_with("value: flow.rules: limits[0]"), "{error}");
        assert!(check(FLOW_RULES, "not json").is_err());
        assert!(check(FLOW_NODE_RULES, r#"{"switches":{"read_only":2}}"#).is_err());
        assert!(check("app.anything", "not json").is_ok());
    }
}
