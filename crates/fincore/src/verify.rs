//! `fincore verify`: prints what `replication::verify` proved about a node's data directory,
//! or where it failed. Exit codes: 0 proved, 1 damage found (or not a fincore data directory),
//! 2 usage or I/O error before anything was read.
//!
//! It must not guess what kind of directory it was given: the directory's format marker says.

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The data directory to verify (it is only read).
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
}

pub fn run(args: &VerifyArgs) -> anyhow::Result<ExitCode> {
    if !args.data_dir.is_dir() {
        anyhow::bail!("--data-dir {}: no such directory", args.data_dir.display());
    }
    match replication::verify(&args.data_dir) {
        Ok(report) => {
            println!("fincore verify: OK (replica data directory)");
            println!("  data dir      {}", args.data_dir.display());
            println!(
                "  format        {} version {}",
                report.format.format, report.format.version
            );
            println!(
                "  records       {} (head record {}, term {}); {} batches, {} events",
                report.records, report.head.index, report.head.term, report.batches, report.events
            );
            println!("  head hash     {}", report.head.hash);
            match report.snapshot {
                Some((index, digest)) if report.snapshot_checked_by_replay => {
                    println!(
                        "  snapshot      entry {index}: digest {digest} matches the replay from genesis"
                    )
                }
                Some((index, digest)) => {
                    println!(
                        "  snapshot      entry {index}: digest {digest} matches its bytes; replay started from it"
                    )
                }
                None => println!("  snapshot      none"),
            }
            println!(
                "  final state   {} accounts, {} transfers, digest {}",
                report.accounts, report.transfers, report.final_digest
            );
            if report.torn_tail_bytes > 0 {
                println!(
                    "  torn tail     {} bytes after the last record (never acknowledged; cut off at the next start)",
                    report.torn_tail_bytes
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(problem) => {
            println!("fincore verify: FAILED");
            println!("  data dir      {}", args.data_dir.display());
            println!("  problem       {problem}");
            Ok(ExitCode::from(1))
        }
    }
}
