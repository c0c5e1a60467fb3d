//! `bench --vs-tracing`: what exporting traces costs the ledger path. Rounds of three runs of
//! the same group and workload: no export, 1 % of requests sampled, all of them, each
//! exporting over OTLP/gRPC to a receiver in this process (`testkit::otlp`), which counts the
//! spans. Owns the comparison only; the runs are `network::run`'s.

use std::process::ExitCode;

use serde::Serialize;

use super::{BenchArgs, Report, exit_code, median_rate, network, report};

/// The sampling ratios compared with no export.
const SAMPLED: [(&str, f64); 2] = [("sampling 1 %  ", 0.01), ("sampling 100 %", 1.0)];

#[derive(Debug, Serialize)]
struct TracingComparison {
    replicas: u64,
    rounds: u64,
    off_transfers_per_second_median: f64,
    sampled_1_percent_transfers_per_second_median: f64,
    sampled_all_transfers_per_second_median: f64,
    /// 1 % median / no-export median.
    sampled_1_percent_ratio: f64,
    /// 100 % median / no-export median.
    sampled_all_ratio: f64,
    /// Spans the receiver got, per run of each.
    spans_1_percent: Vec<u64>,
    spans_all: Vec<u64>,
    off: Vec<Report>,
    sampled_1_percent: Vec<Report>,
    sampled_all: Vec<Report>,
}

/// Runs the rounds and prints the comparison.
pub(super) fn compare(args: &BenchArgs, rounds: u64) -> anyhow::Result<ExitCode> {
    let receiving = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("bench-otlp")
        .enable_all()
        .build()?;
    // Counts every span; keeps none.
    let receiver = receiving.block_on(testkit::otlp::OtlpReceiver::start(0))?;
    let mut variants = vec![("no export     ", args.clone())];
    for (label, sampling) in SAMPLED {
        variants.push((
            label,
            BenchArgs {
                traces: Some((receiver.url(), sampling)),
                ..args.clone()
            },
        ));
    }
    let mut reports: Vec<Vec<Report>> = vec![Vec::new(), Vec::new(), Vec::new()];
    let mut spans: Vec<Vec<u64>> = vec![Vec::new(), Vec::new(), Vec::new()];
    for round in 1..=rounds {
        for (v, (label, run_args)) in variants.iter().enumerate() {
            let before = receiver.count();
            let report = report(run_args, "network", network::run(run_args)?);
            // The nodes stopped cleanly, which flushed their last spans.
            let exported = receiver.count() - before;
            if !args.json {
                println!(
                    "round {round}/{rounds}: {label} {:.0} transfers/s (batch p50 {:.2} ms), {exported} spans exported",
                    report.transfers_per_second, report.batch_latency_ms.p50,
                );
            }
            reports[v].push(report);
            spans[v].push(exported);
        }
    }
    let code = exit_code(&reports);
    let sampled_all = reports.pop().unwrap_or_default();
    let sampled_1_percent = reports.pop().unwrap_or_default();
    let off = reports.pop().unwrap_or_default();
    let off_median = median_rate(&off);
    let comparison = TracingComparison {
        replicas: args.replicas,
        rounds,
        off_transfers_per_second_median: off_median,
        sampled_1_percent_transfers_per_second_median: median_rate(&sampled_1_percent),
        sampled_all_transfers_per_second_median: median_rate(&sampled_all),
        sampled_1_percent_ratio: median_rate(&sampled_1_percent) / off_median,
        sampled_all_ratio: median_rate(&sampled_all) / off_median,
        spans_1_percent: spans[1].clone(),
        spans_all: spans[2].clone(),
        off,
        sampled_1_percent,
        sampled_all,
    };
    if args.json {
        println!("{}", serde_json::to_string(&comparison)?);
    } else {
        let c = &comparison;
        println!(
            "medians over {rounds} round(s), {} replica(s): no export {:.0} transfers/s, sampling 1 % {:.0} ({:.3}), sampling 100 % {:.0} ({:.3})",
            c.replicas,
            c.off_transfers_per_second_median,
            c.sampled_1_percent_transfers_per_second_median,
            c.sampled_1_percent_ratio,
            c.sampled_all_transfers_per_second_median,
            c.sampled_all_ratio
        );
    }
    Ok(code)
}
