//! `--flow-rules FILE` of `serve`, `gateway` and `dev`: flow control's rules read at start
//! (a bad file stops the start, naming the field and the reason) and again on every SIGHUP
//! (a bad file then keeps the rules in use and says why).
//!
//! Owns reading the file into a `flow::Gate`. The format and the decisions are `flow`'s
//! (`docs/flow-control.md`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

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

/// The banner line saying where the rules come from; with a file, rereads it on every SIGHUP
/// from now on (call inside the runtime).
pub(crate) fn line_and_reload(gate: &Arc<Gate>, path: Option<PathBuf>) -> String {
    let Some(path) = path else {
        return "fincore: flow control: default pools, no limits (--flow-rules FILE to set some)"
            .to_string();
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
    let gate = Arc::clone(gate);
    crate::keys::on_sighup("flow rules are", move || match Rules::load(&path) {
        Ok(rules) => {
            tracing::info!(
                path = %path.display(),
                limits = rules.limits.len(),
                read_only = rules.switches.read_only,
                "flow rules reloaded"
            );
            gate.set_rules(rules);
        }
        Err(error) => {
            tracing::error!(%error, "reloading the flow rules failed; the rules in use are unchanged")
        }
    });
    line
}
