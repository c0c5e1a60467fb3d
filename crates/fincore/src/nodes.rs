//! This binary's own child nodes: `fincore bench` and `fincore chaos` start `fincore serve`
//! children of the running executable through `testkit::node`, without periodic checkpoints (a
//! checkpoint mid-run would be measured, or would hide replay from the faults) unless a
//! scenario needs them (`bench --wipe-follower-at`: a new member must catch up from a snapshot).

use std::path::Path;

use anyhow::Context;
use testkit::node::ChildNode;

/// Starts `fincore serve --checkpoint-interval 0 --data-dir DATA_DIR ARGS…` from this executable.
pub fn start(data_dir: &Path, args: &[String]) -> anyhow::Result<ChildNode> {
    start_checkpointing(data_dir, args, 0)
}

/// Starts `fincore serve --checkpoint-interval ENTRIES --data-dir DATA_DIR ARGS…` from this
/// executable: a snapshot every `entries` batches (0: never).
pub fn start_checkpointing(
    data_dir: &Path,
    args: &[String],
    entries: u64,
) -> anyhow::Result<ChildNode> {
    start_with_env(data_dir, args, entries, &[])
}

/// [`start_checkpointing`] with these environment variables set for the node.
pub fn start_with_env(
    data_dir: &Path,
    args: &[String],
    entries: u64,
    env: &[(&str, &str)],
) -> anyhow::Result<ChildNode> {
    let exe = std::env::current_exe().context("finding the fincore executable")?;
    let mut all = vec!["--checkpoint-interval".to_string(), entries.to_string()];
    all.extend_from_slice(args);
    Ok(ChildNode::start_with_env(&exe, data_dir, &all, env)?)
}
