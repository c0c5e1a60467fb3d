//! Child `fincore serve` processes on loopback: start one and read the addresses it listens
//! on, signal it, kill it, stop it cleanly; free ports; a node's JSON status over HTTP. Used by
//! the network benchmark and the chaos test.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A `fincore serve` child process.
pub struct ChildNode {
    child: Child,
    pub grpc_addr: String,
    pub http_addr: String,
}

impl ChildNode {
    /// Starts a node on `data_dir` with `args` (listen addresses, peers, ...).
    pub fn start(data_dir: &Path, args: &[String]) -> anyhow::Result<ChildNode> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let log_path = data_dir.with_extension("log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let exe = std::env::current_exe().context("finding the fincore executable")?;
        let mut child = Command::new(exe)
            .args(["serve", "--checkpoint-interval", "0", "--data-dir"])
            .arg(data_dir)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .context("starting `fincore serve`")?;
        let stdout = child.stdout.take().expect("piped");
        let mut lines = BufReader::new(stdout).lines();
        let (mut grpc_addr, mut http_addr) = (None, None);
        while grpc_addr.is_none() || http_addr.is_none() {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(addr) = line.strip_prefix("fincore: gRPC listening on ") {
                        grpc_addr = Some(addr.to_string());
                    }
                    if let Some(addr) = line.strip_prefix("fincore: HTTP listening on http://") {
                        http_addr = Some(addr.to_string());
                    }
                }
                _ => {
                    let _ = child.kill();
                    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                    bail!("the node did not start; its log:\n{log}");
                }
            }
        }
        // Keep reading its stdout so that it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Ok(ChildNode {
            child,
            grpc_addr: grpc_addr.expect("read"),
            http_addr: http_addr.expect("read"),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Freezes the process (SIGSTOP) or lets it run again (SIGCONT).
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()?;
        anyhow::ensure!(
            status.success(),
            "kill -{signal} {} failed",
            self.child.id()
        );
        Ok(())
    }

    /// SIGKILL.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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

/// `count` distinct free loopback addresses (held open together so none repeats).
pub fn free_addrs(count: usize) -> anyhow::Result<Vec<String>> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.to_string()))
        .collect()
}

/// A minimal HTTP/1.1 GET, enough to read a node's status.
pub fn http_get_json(addr: &str, path: &str) -> anyhow::Result<serde_json::Value> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)?;
    // Long enough for a status with the digest of a large state.
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .unwrap_or("");
    Ok(serde_json::from_str(body)?)
}
