//! The group under test: three `fincore serve` children on loopback whose replica traffic goes
//! through one fault-injecting proxy per directed link, and the faults the nemesis can cause
//! (kill -9 and restart, SIGSTOP/SIGCONT, partitions, slow links).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::bail;
use testkit::group::GroupLayout;
use testkit::http::replica_status;
use testkit::node::{ChildNode, Signal};
use testkit::proxy::LinkProxy;

pub struct Cluster {
    dirs: Vec<PathBuf>,
    args: Vec<Vec<String>>,
    /// Added to `args` on a node's first start (member 1 bootstraps the group, others join).
    first_start_args: Vec<Vec<String>>,
    nodes: Vec<Option<ChildNode>>,
    paused: Vec<bool>,
    pub grpc: Vec<String>,
    pub http: Vec<String>,
    /// (from, to) → the proxy `from` reaches `to` through.
    links: BTreeMap<(usize, usize), LinkProxy>,
    /// Keeps the group's peer certificates (which restarts read) as long as the cluster runs.
    _layout: GroupLayout,
}

impl Cluster {
    /// Starts `replicas` nodes in `dir/node-N`.
    pub async fn start(dir: &Path, replicas: usize) -> anyhow::Result<Cluster> {
        let layout = GroupLayout::on_free_ports(replicas)?;
        let mut links = BTreeMap::new();
        for from in 0..replicas {
            for to in (0..replicas).filter(|&to| to != from) {
                let target = layout.peer_addrs[to].clone();
                links.insert((from, to), LinkProxy::start(target).await?);
            }
        }
        let args: Vec<Vec<String>> = (0..replicas)
            .map(|i| {
                let mut args = layout.serve_args(i, replicas);
                args.extend(layout.peer_routes_args(i, |j| links[&(i, j)].addr.clone()));
                args
            })
            .collect();
        let dirs: Vec<PathBuf> = (0..replicas)
            .map(|i| dir.join(format!("node-{}", i + 1)))
            .collect();
        let first_start_args = (0..replicas)
            .map(|i| layout.membership_args(i, &dirs[i]))
            .collect();
        let mut cluster = Cluster {
            dirs,
            args,
            first_start_args,
            nodes: (0..replicas).map(|_| None).collect(),
            paused: vec![false; replicas],
            grpc: layout.grpc_addrs.clone(),
            http: layout.http_addrs.clone(),
            links,
            _layout: layout,
        };
        for i in 0..replicas {
            cluster.restart(i)?;
        }
        Ok(cluster)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Where the members listen and the group's id (what a cluster map names).
    pub fn layout(&self) -> &GroupLayout {
        &self._layout
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].is_some()
    }

    /// Starts node `i` again on its data directory (same addresses).
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        // A port just released may take a moment to be free again.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut args = self.args[i].clone();
            if testkit::group::is_new_node(&self.dirs[i]) {
                args.extend_from_slice(&self.first_start_args[i]);
            }
            match crate::nodes::start(&self.dirs[i], &args) {
                Ok(node) => {
                    self.nodes[i] = Some(node);
                    self.paused[i] = false;
                    return Ok(());
                }
                Err(error) if Instant::now() >= deadline => return Err(error),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// kill -9.
    pub fn kill(&mut self, i: usize) {
        if let Some(node) = self.nodes[i].take() {
            node.kill9();
        }
    }

    pub fn pause(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(node) = &self.nodes[i] {
            node.signal(Signal::Stop)?;
            self.paused[i] = true;
        }
        Ok(())
    }

    pub fn resume(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(node) = &self.nodes[i]
            && self.paused[i]
        {
            node.signal(Signal::Cont)?;
            self.paused[i] = false;
        }
        Ok(())
    }

    /// Cuts node `i` off from the others, both ways (`one_way`: only what it sends).
    pub fn isolate(&self, i: usize, one_way: bool) {
        for (&(from, to), link) in &self.links {
            if from == i || (to == i && !one_way) {
                link.cut();
            }
        }
    }

    /// Every link from and to node `i` delays each chunk by `delay`.
    pub fn slow(&self, i: usize, delay: Duration) {
        for (&(from, to), link) in &self.links {
            if from == i || to == i {
                link.slow(delay);
            }
        }
    }

    /// Every link delivers promptly again.
    pub fn heal_links(&self) {
        for link in self.links.values() {
            link.heal();
        }
    }

    /// Every link delivers promptly again, every paused node runs, every killed node restarts.
    pub fn heal(&mut self) -> anyhow::Result<()> {
        self.heal_links();
        for i in 0..self.len() {
            self.resume(i)?;
            if !self.is_running(i) {
                self.restart(i)?;
            }
        }
        Ok(())
    }

    /// Waits until every node reports the same leader and the same applied index (bounded).
    pub fn wait_converged(&self, within: Duration) -> anyhow::Result<u64> {
        let deadline = Instant::now() + within;
        let mut last = String::new();
        while Instant::now() < deadline {
            let views: Vec<(Option<u64>, Option<u64>, Option<String>)> = self
                .http
                .iter()
                .map(|addr| match replica_status(addr, true) {
                    Ok(view) => (view.leader, Some(view.applied_index), view.state_digest),
                    Err(_) => (None, None, None),
                })
                .collect();
            last = format!("{views:?}");
            if views[0].0.is_some() && views[0].1.is_some() && views.iter().all(|v| *v == views[0])
            {
                return Ok(views[0].1.expect("checked"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "the nodes did not agree on a leader, applied index and digest within {within:?}: {last}"
        )
    }

    /// Clean shutdown of every node.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.heal()?;
        for node in self.nodes.iter_mut().filter_map(Option::take) {
            node.stop()?;
        }
        Ok(())
    }
}
