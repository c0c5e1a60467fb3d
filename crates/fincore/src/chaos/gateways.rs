//! The gateways of a run over several groups: `fincore gateway` children over the run's
//! cluster map, each on fixed loopback ports so that one killed (-9) is restarted where clients
//! already dial it, each with a resolver that finishes sagas open longer than
//! [`SAGA_OPEN_SECONDS`] (so that those a killed gateway left open settle within the run).
//!
//! Owns only their lifetimes; which one the nemesis kills, and when, is the nemesis's.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use testkit::node::ChildNode;

/// How long a restart keeps trying while a just-released port is not free yet.
const RESTART_SECONDS_MAX: u64 = 10;
/// The gateways' `--saga-open-seconds`: their resolvers finish any saga open this long (the
/// default, 60 s, would outlast a short run). Above the 1.5 s a chaos client retries, so a
/// saga its caller is still retrying is rarely aborted under it.
pub const SAGA_OPEN_SECONDS: u64 = 5;
/// The gateways' `--saga-deadline-ms`: short, so that sagas slowed by the nemesis are answered
/// `outcome_pending` and the clients learn their end by polling the outcome (the workload).
pub const SAGA_DEADLINE_MS: u64 = 300;

pub struct Gateways {
    exe: PathBuf,
    map_path: PathBuf,
    dirs: Vec<PathBuf>,
    /// `--grpc ADDR --http ADDR --saga-open-seconds S --saga-deadline-ms MS` of each, the same
    /// on every start.
    args: Vec<Vec<String>>,
    running: Vec<Option<ChildNode>>,
    /// Each gateway's gRPC address as a client URL.
    pub grpc_urls: Vec<String>,
}

impl Gateways {
    /// Starts `count` gateways over the map at `map_path`, gateway `i` logging to
    /// `dir/gateway-{i + 1}.log`.
    pub fn start(dir: &Path, map_path: &Path, count: usize) -> anyhow::Result<Gateways> {
        assert!(count >= 1);
        let exe = std::env::current_exe().context("finding the fincore executable")?;
        let addrs = testkit::free_addrs(2 * count)?;
        let args: Vec<Vec<String>> = (0..count)
            .map(|i| {
                vec![
                    "--grpc".to_string(),
                    addrs[2 * i].clone(),
                    "--http".to_string(),
                    addrs[2 * i + 1].clone(),
                    "--saga-open-seconds".to_string(),
                    SAGA_OPEN_SECONDS.to_string(),
                    "--saga-deadline-ms".to_string(),
                    SAGA_DEADLINE_MS.to_string(),
                ]
            })
            .collect();
        let mut gateways = Gateways {
            exe,
            map_path: map_path.to_path_buf(),
            dirs: (0..count)
                .map(|i| dir.join(format!("gateway-{}", i + 1)))
                .collect(),
            grpc_urls: (0..count)
                .map(|i| format!("http://{}", addrs[2 * i]))
                .collect(),
            args,
            running: (0..count).map(|_| None).collect(),
        };
        for i in 0..count {
            gateways.restart(i)?;
        }
        Ok(gateways)
    }

    pub fn len(&self) -> usize {
        self.running.len()
    }

    /// Starts gateway `i` again on its ports.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(RESTART_SECONDS_MAX);
        loop {
            match ChildNode::start_gateway(&self.exe, &self.dirs[i], &self.map_path, &self.args[i])
            {
                Ok(gateway) => {
                    self.running[i] = Some(gateway);
                    return Ok(());
                }
                Err(error) if Instant::now() >= deadline => {
                    return Err(error).with_context(|| format!("restarting gateway {}", i + 1));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// kill -9.
    pub fn kill(&mut self, i: usize) {
        if let Some(gateway) = self.running[i].take() {
            gateway.kill9();
        }
    }

    /// How many run now.
    pub fn running_count(&self) -> usize {
        self.running.iter().filter(|g| g.is_some()).count()
    }

    /// Restarts every killed gateway.
    pub fn heal(&mut self) -> anyhow::Result<()> {
        for i in 0..self.len() {
            if self.running[i].is_none() {
                self.restart(i)?;
            }
        }
        Ok(())
    }

    /// Clean shutdown of every gateway.
    pub fn stop(mut self) -> anyhow::Result<()> {
        for gateway in self.running.iter_mut().filter_map(Option::take) {
            gateway.stop()?;
        }
        Ok(())
    }
}
