//! `fincore verify`: prints what `engine::verify` proved, or where it failed.

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
    if replication::is_replica_dir(&args.data_dir) {
        return Ok(verify_replica(args));
    }
    match engine::verify(&args.data_dir) {
        Ok(report) => {
            println!("fincore verify: OK");
            println!("  data dir      {}", args.data_dir.display());
            println!(
                "  records       {} (head index {}, term {})",
                report.records, report.head.index, report.head.term
            );
            println!(
                "  events        {} ({} accounts, {} transfers in the final state)",
                report.events, report.accounts, report.transfers
            );
            println!("  head hash     {}", report.head.hash);
            match report.checkpoint {
                Some((index, digest)) => {
                    println!("  checkpoint    record {index}: digest {digest} matches the replay")
                }
                None => println!("  checkpoint    none"),
            }
            println!("  state digest  {}", report.final_digest);
            match report.torn_tail_bytes {
                0 => println!("  torn tail     none"),
                bytes => println!(
                    "  torn tail     {bytes} bytes after the last record: a write interrupted by a crash, never \
                     acknowledged; the next start cuts it off"
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            println!("fincore verify: FAILED");
            println!("  data dir      {}", args.data_dir.display());
            println!("  problem       {error}");
            Ok(ExitCode::from(1))
        }
    }
}

/// A node's data directory: its Raft log and snapshot.
fn verify_replica(args: &VerifyArgs) -> ExitCode {
    match replication::verify(&args.data_dir) {
        Ok(report) => {
            println!("fincore verify: OK (replica data directory)");
            println!("  data dir      {}", args.data_dir.display());
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
            ExitCode::SUCCESS
        }
        Err(problem) => {
            println!("fincore verify: FAILED");
            println!("  data dir      {}", args.data_dir.display());
            println!("  problem       {problem}");
            ExitCode::from(1)
        }
    }
}
