//! This binary's own child nodes: `fincore bench` and `fincore chaos` start `fincore serve`
//! children of the running executable through `testkit::node`, without periodic checkpoints (a
//! checkpoint mid-run would be measured, or would hide replay from the faults).

use std::path::Path;

use anyhow::Context;
use testkit::node::ChildNode;

/// Starts `fincore serve --checkpoint-interval 0 --data-dir DATA_DIR ARGS…` from this executable.
pub fn start(data_dir: &Path, args: &[String]) -> anyhow::Result<ChildNode> {
    let exe = std::env::current_exe().context("finding the fincore executable")?;
    let mut all = vec!["--checkpoint-interval".to_string(), "0".to_string()];
    all.extend_from_slice(args);
    Ok(ChildNode::start(&exe, data_dir, &all)?)
}
