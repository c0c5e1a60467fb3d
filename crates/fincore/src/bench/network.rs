//! The network benchmark: a node over gRPC (started here as a child process, or `--addr`),
//! `--clients` clients each with one batch in flight.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use client::{Client, RetryPolicy};
use ledger::{CreateAccountResult, CreateTransferResult};

use super::workload::{TransferGenerator, accounts};
use super::{BenchArgs, Measured, data_dir, peak_rss_bytes};

/// A `fincore serve` child process on a data directory, listening on free ports.
pub struct ChildNode {
    child: Child,
    pub grpc_addr: String,
}

impl ChildNode {
    pub fn start(data_dir: &Path) -> anyhow::Result<ChildNode> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let log_path = data_dir.join("node.log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let exe = std::env::current_exe().context("finding the fincore executable")?;
        let mut child = Command::new(exe)
            .args([
                "serve",
                "--grpc",
                "127.0.0.1:0",
                "--http",
                "127.0.0.1:0",
                "--checkpoint-interval",
                "0",
                "--data-dir",
            ])
            .arg(data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .context("starting `fincore serve`")?;
        let stdout = child.stdout.take().expect("piped");
        let mut lines = BufReader::new(stdout).lines();
        let grpc_addr = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(addr) = line.strip_prefix("fincore: gRPC listening on ") {
                        break addr.to_string();
                    }
                }
                _ => {
                    let _ = child.kill();
                    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                    bail!("the node did not start; its log:\n{log}");
                }
            }
        };
        // Keep reading its stdout so that it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Ok(ChildNode { child, grpc_addr })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Asks the node to stop cleanly (SIGTERM) and waits for it.
    pub fn stop(mut self) -> anyhow::Result<()> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child.kill()?;
        bail!("the node did not stop within 120 s of SIGTERM and was killed")
    }
}

impl Drop for ChildNode {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn run(args: &BenchArgs) -> anyhow::Result<Measured> {
    let (dir, _temp) = data_dir(&args.data_dir)?;
    let node = match &args.addr {
        Some(_) => None,
        None => Some(ChildNode::start(&dir)?),
    };
    let addr = format!(
        "http://{}",
        args.addr
            .clone()
            .unwrap_or_else(|| node.as_ref().expect("started").grpc_addr.clone())
    );
    // Against a node that may already hold a previous run, transfer ids start past any earlier
    // run's; against our own fresh node they are 1..N, as in TigerBeetle's benchmark.
    let id_offset = if args.addr.is_some() {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos() as u64
            / 1000
            * 1_000_000
    } else {
        0
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (seconds, latencies, transfers_failed) = runtime.block_on(async {
        let setup = Client::connect(&addr, RetryPolicy::default())?;
        let mut first = 1;
        while first <= args.accounts {
            let last = (first + args.batch - 1).min(args.accounts);
            let results = setup.create_accounts(&accounts(first, last)).await?;
            if let Some(bad) = results.iter().find(|r| {
                !matches!(
                    r.result,
                    CreateAccountResult::Created | CreateAccountResult::Exists
                )
            }) {
                bail!("creating the benchmark accounts failed: {}", bad.result);
            }
            first = last + 1;
        }
        let batches = args.transfers.div_ceil(args.batch);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for k in 0..args.clients {
            let client = Client::connect(&addr, RetryPolicy::default())?;
            let mut generator = TransferGenerator::new(
                args.seed.wrapping_add(k),
                args.accounts,
                args.distribution,
                args.id_order,
            )?;
            let (batch, transfers, clients) = (args.batch, args.transfers, args.clients as usize);
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut failed = 0u64;
                for b in (k..batches).step_by(clients) {
                    let first_id = id_offset + b * batch + 1;
                    let count = (transfers - b * batch).min(batch);
                    let events = generator.batch(first_id, count);
                    let sent = Instant::now();
                    let results = client.create_transfers(&events).await?;
                    latencies.push(sent.elapsed());
                    failed += results
                        .iter()
                        .filter(|r| r.result != CreateTransferResult::Created)
                        .count() as u64;
                }
                anyhow::Ok((latencies, failed))
            }));
        }
        let mut latencies = Vec::new();
        let mut failed = 0;
        for task in tasks {
            let (task_latencies, task_failed) = task.await??;
            latencies.extend(task_latencies);
            failed += task_failed;
        }
        anyhow::Ok((started.elapsed().as_secs_f64(), latencies, failed))
    })?;
    let peak_rss_bytes = node
        .as_ref()
        .map_or(0, |node| peak_rss_bytes(&node.pid().to_string()));
    if let Some(node) = node {
        node.stop()?;
    }
    Ok(Measured {
        seconds,
        latencies,
        transfers_failed,
        peak_rss_bytes,
        journal: None,
        restart: None,
    })
}
