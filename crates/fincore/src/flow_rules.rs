//! Where a process's flow-control rules come from: `--flow-rules FILE` of `serve`, `gateway`
//! and `dev` (read at start, where a bad file stops the start naming the field and the reason;
//! reread on every SIGHUP, where a bad file keeps the rules in use and says why), and, in a
//! process watching the config center, the key `flow.rules` (`config_feed`), which takes
//! precedence over the file while the config center holds it.
//!
//! Owns choosing the rules a `flow::Gate` applies. The format and the decisions are `flow`'s
//! (`docs/flow-control.md`); what the config center holds is the meta group's.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use flow::{Gate, Rules};

/// Flow control's rules: default pools, no limits, no switches unless FILE says otherwise.
pub(crate) fn gate(path: Option<&Path>) -> anyhow::Result<Arc<Gate>> {
    let rules = match path {
        Some(path) => Rules::load(path).context("--flow-rules")?,
        None => Rules::default(),
    };
    Ok(Arc::new(Gate::new(rules)))
}

/// The rules a gate applies and where they came from.
pub(crate) struct FlowSource {
    gate: Arc<Gate>,
    file: Option<PathBuf>,
    /// The config center's `flow.rules` text in use (`None`: the file's rules or the default).
    from_config: Mutex<Option<String>>,
}

/// What taking a config center value did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Taken {
    /// The value was already in use.
    Unchanged,
    /// The gate applies the new rules.
    Applied,
    /// The value is not valid rules: the rules in use are kept (the message names the field).
    Refused(String),
}

impl FlowSource {
    fn file_rules(&self) -> anyhow::Result<Rules> {
        match &self.file {
            Some(path) => Rules::load(path).context("--flow-rules"),
            None => Ok(Rules::default()),
        }
    }

    /// Applies the config center's `flow.rules` text (`None`: the config center holds none,
    /// so the file's rules, or the default, apply again).
    pub(crate) fn take_config(&self, text: Option<&str>) -> Taken {
        let mut from_config = self.from_config.lock().expect("never poisoned");
        if from_config.as_deref() == text {
            return Taken::Unchanged;
        }
        let rules = match text {
            Some(text) => Rules::from_json(text).map_err(|error| error.to_string()),
            None => self.file_rules().map_err(|error| format!("{error:#}")),
        };
        match rules {
            Ok(rules) => {
                self.gate.set_rules(rules);
                *from_config = text.map(str::to_owned);
                Taken::Applied
            }
            Err(error) => Taken::Refused(error),
        }
    }

    /// On SIGHUP: rereads the file, unless the config center's rules are in use.
    fn reload_file(&self) {
        let from_config = self.from_config.lock().expect("never poisoned");
        if from_config.is_some() {
            tracing::info!(
                "the flow rules come from the config center's flow.rules; --flow-rules is applied again once it holds none"
            );
            return;
        }
        match self.file_rules() {
            Ok(rules) => {
                tracing::info!(
                    limits = rules.limits.len(),
                    read_only = rules.switches.read_only,
                    "flow rules reloaded"
                );
                self.gate.set_rules(rules);
            }
            Err(error) => tracing::error!(
                error = format!("{error:#}"),
                "reloading the flow rules failed; the rules in use are unchanged"
            ),
        }
    }
}

/// The banner line saying where the rules come from; with a file, rereads it on every SIGHUP
/// from now on (call inside the runtime). The source answered is what a config feed applies
/// the config center's rules through.
pub(crate) fn line_and_reload(
    gate: &Arc<Gate>,
    path: Option<PathBuf>,
) -> (String, Arc<FlowSource>) {
    let source = Arc::new(FlowSource {
        gate: Arc::clone(gate),
        file: path.clone(),
        from_config: Mutex::new(None),
    });
    let Some(path) = path else {
        let line =
            "fincore: flow control: default pools, no limits (--flow-rules FILE to set some)";
        return (line.to_string(), source);
    };
    let rules = gate.rules();
    let line = format!(
        "fincore: flow control: {} rate limits, read-only {}, {} APIs switched off, from {} (reloaded on SIGHUP)",
        rules.limits.len(),
        if rules.switches.read_only {
            "on"
        } else {
            "off"
        },
        rules.switches.disabled_apis.len(),
        path.display()
    );
    let reloading = Arc::clone(&source);
    crate::keys::on_sighup("flow rules are", move || reloading.reload_file());
    (line, source)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_centers_rules_win_over_the_file_until_it_holds_none() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rules.json");
        std::fs::write(
            &file,
            r#"{"switches":{"disabled_apis":["get_account_balances"]}}"#,
        )
        .unwrap();
        let gate = gate(Some(&file)).unwrap();
        let source = FlowSource {
            gate: Arc::clone(&gate),
            file: Some(file.clone()),
            from_config: Mutex::new(None),
        };
        assert_eq!(
            source.take_config(Some(r#"{"switches":{"read_only":true}}"#)),
            Taken::Applied
        );
        assert!(gate.rules().switches.read_only);
        assert!(gate.rules().switches.disabled_apis.is_empty());
        assert_eq!(
            source.take_config(Some(r#"{"switches":{"read_only":true}}"#)),
            Taken::Unchanged
        );
        // A bad value keeps the rules in use.
        let Taken::Refused(error) = source.take_config(Some(r#"{"switches":{"read_only":1}}"#))
        else {
            panic!("a bad value was taken");
        };
        assert!(error.contains("read_only"), "{error}");
        assert!(gate.rules().switches.read_only);
        // SIGHUP does not undo the config center's rules.
        source.reload_file();
        assert!(gate.rules().switches.read_only);
        // Gone from the config center: the file applies again.
        assert_eq!(source.take_config(None), Taken::Applied);
        assert!(!gate.rules().switches.read_only);
        assert_eq!(gate.rules().switches.disabled_apis.len(), 1);
    }
}
