//! Helpers for tests that drive the real `fincore` binary: start a node on free ports, talk
//! HTTP/1.1 to it over a plain socket, stop or kill it.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `fincore serve` process.
pub struct NodeProcess {
    pub child: Child,
    pub grpc: String,
    pub http: String,
}

impl NodeProcess {
    /// Starts a node on `data_dir`; `listen` is (grpc, http), "127.0.0.1:0" for any free port.
    pub fn start_on(data_dir: &Path, grpc: &str, http: &str, extra: &[&str]) -> NodeProcess {
        // The node's log goes beside its data directory (kept across restarts), for post-mortems.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.with_extension("log"))
            .expect("opening the node's log file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_fincore"))
            .args(["serve", "--grpc", grpc, "--http", http, "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("starting fincore serve");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (mut grpc_addr, mut http_addr) = (None, None);
        while grpc_addr.is_none() || http_addr.is_none() {
            let Some(Ok(line)) = lines.next() else {
                let log =
                    std::fs::read_to_string(data_dir.with_extension("log")).unwrap_or_default();
                panic!(
                    "the node exited before listening; its log:
{log}"
                );
            };
            if let Some(addr) = line.strip_prefix("fincore: gRPC listening on ") {
                grpc_addr = Some(addr.to_string());
            }
            if let Some(addr) = line.strip_prefix("fincore: HTTP listening on http://") {
                http_addr = Some(addr.to_string());
            }
        }
        std::thread::spawn(move || lines.for_each(drop));
        NodeProcess {
            child,
            grpc: grpc_addr.unwrap(),
            http: http_addr.unwrap(),
        }
    }

    pub fn start(data_dir: &Path) -> NodeProcess {
        Self::start_on(data_dir, "127.0.0.1:0", "127.0.0.1:0", &[])
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// SIGKILL: no chance to flush or checkpoint.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM and wait (bounded) for a clean exit.
    pub fn stop(mut self) {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "the node exited with {status}");
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the node did not stop within 60 s of SIGTERM");
    }

    /// Resident memory of the node right now.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// One HTTP/1.1 request over a fresh connection.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &str,
) -> Answer {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(content_type) = content_type {
        request.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    stream.write_all(body.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Answer {
        status,
        headers: head.to_string(),
        body,
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").unwrap();
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
}

pub fn post_json(addr: &str, path: &str, body: &str) -> Answer {
    http(addr, "POST", path, Some("application/json"), body)
}

pub fn get(addr: &str, path: &str) -> Answer {
    http(addr, "GET", path, None, "")
}

/// A TCP proxy that can cut its link: while blocked it drops every connection through it and
/// refuses new ones. Runs on the given runtime.
pub struct Proxy {
    pub addr: String,
    blocked: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
}

impl Proxy {
    pub fn start(runtime: &tokio::runtime::Runtime, target: String) -> Proxy {
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (blocked, _) = tokio::sync::watch::channel(false);
        let blocked = std::sync::Arc::new(blocked);
        let watcher = std::sync::Arc::clone(&blocked);
        runtime.spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if *watcher.borrow() {
                    continue; // dropped at once
                }
                let target = target.clone();
                let mut cut = watcher.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.wait_for(|blocked| *blocked) => {}
                    }
                });
            }
        });
        Proxy { addr, blocked }
    }

    pub fn block(&self) {
        self.blocked.send_replace(true);
    }

    pub fn unblock(&self) {
        self.blocked.send_replace(false);
    }
}

/// After a crash or a failover: every acknowledged transfer (with the timestamp it was
/// acknowledged with) is present and unchanged, debits equal credits, and the accounts
/// `1..=accounts` hold exactly the money of the transfers that exist among ids
/// `1..=highest_id` — nothing lost, nothing applied twice.
pub async fn check_acknowledged(
    client: &client::Client,
    acked: &[(ledger::Transfer, u64)],
    highest_id: u128,
    accounts: u128,
) {
    for chunk in acked.chunks(8000) {
        let ids: Vec<u128> = chunk.iter().map(|(t, _)| t.id).collect();
        let found = client.lookup_transfers(&ids).await.unwrap();
        assert_eq!(
            found.len(),
            chunk.len(),
            "acknowledged transfers are missing"
        );
        for ((sent, timestamp), stored) in chunk.iter().zip(&found) {
            assert_eq!(
                stored,
                &ledger::Transfer {
                    timestamp: *timestamp,
                    ..*sent
                },
                "an acknowledged transfer changed"
            );
        }
    }
    let ids: Vec<u128> = (1..=highest_id).collect();
    let mut moved = 0u128;
    for chunk in ids.chunks(8000) {
        moved += client
            .lookup_transfers(chunk)
            .await
            .unwrap()
            .iter()
            .map(|t| t.amount)
            .sum::<u128>();
    }
    let found = client
        .lookup_accounts(&(1..=accounts).collect::<Vec<_>>())
        .await
        .unwrap();
    let debits: u128 = found.iter().map(|a| a.debits_posted).sum();
    let credits: u128 = found.iter().map(|a| a.credits_posted).sum();
    assert_eq!(debits, credits, "debits and credits diverged");
    assert_eq!(
        credits, moved,
        "balances differ from the transfers that exist: something was lost or applied twice"
    );
}
