//! fincore's test kit: what the end-to-end tests, `fincore bench` and `fincore chaos` share to
//! drive real `fincore serve` processes on loopback, and to judge what they did.
//!
//! - [`node`]: start a child node and read the addresses it announces; signal, kill, stop it.
//! - [`group`]: the addresses and `--peers` arguments of a replica group on free ports.
//! - [`proxy`]: a fault-injecting TCP proxy for one directed link (cut, slow).
//! - [`http`]: a blocking HTTP/1.1 client, one request per connection, and a node's status.
//! - [`keys`]: the admin API key every node this process starts accepts.
//! - [`certs`]: the peer certificates of the groups this process starts (mutual TLS).
//! - [`postgres`]: a PostgreSQL database of one's own, dropped with its handle.
//! - [`otlp`]: a loopback OTLP/gRPC receiver keeping the spans the processes export.
//! - `browser` (feature `browser`, tests only): a headless Chromium driven over DevTools.
//! - [`ports`]: distinct free loopback addresses below the ephemeral range ([`free_addrs`]).
//! - [`account`], [`transfer`]: the tests' usual account and transfer.
//! - [`bank_checker`]: the chaos bank test's history types and checker.
//!
//! This crate owns no product logic and must not grow any: it talks to the binary only through
//! its command line, its announced addresses and its public HTTP API, so a test that passes
//! with it proves something about what ships. The binary's path is always a parameter (tests
//! pass `env!("CARGO_BIN_EXE_fincore")`, the binary itself `std::env::current_exe()`).

pub mod bank_checker;
#[cfg(feature = "browser")]
pub mod browser;
pub mod certs;
pub mod cluster;
pub mod group;
pub mod http;
pub mod keys;
pub mod node;
pub mod otlp;
pub mod ports;
pub mod postgres;
pub mod proxy;

pub use ports::free_addrs;

use std::path::PathBuf;

/// What went wrong driving a node or talking to it.
#[derive(Debug, thiserror::Error)]
pub enum KitError {
    /// A cluster map could not be made of the groups started.
    #[error("cluster map: {reason}")]
    BadMap { reason: String },
    /// An operating-system call failed; `what` says which and on what.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The child exited (or closed its stdout) before announcing both listen addresses.
    #[error("the node on {} did not start; its log ({}):\n{log}", data_dir.display(), log_path.display())]
    NodeDidNotStart {
        data_dir: PathBuf,
        log_path: PathBuf,
        log: String,
    },
    /// `fincore keys create` failed, so no node could be given a key.
    #[error("making an API key for the test nodes failed: {stderr}")]
    KeyNotCreated { stderr: String },
    #[error("making peer certificates for the test nodes failed: {stderr}")]
    CertificatesNotMade { stderr: String },
    /// The child ignored SIGTERM for too long and was killed.
    #[error("the node (pid {pid}) did not stop within {seconds} s of SIGTERM and was killed")]
    NodeDidNotStop { pid: u32, seconds: u64 },
    /// The child stopped on SIGTERM but reported a failure.
    #[error("the node (pid {pid}) exited with {status} after SIGTERM; see its log")]
    NodeExitedWithFailure {
        pid: u32,
        status: std::process::ExitStatus,
    },
    /// `kill -SIGNAL pid` failed (the process is gone, or the signal was refused).
    #[error("kill -{signal} {pid} failed")]
    Signal { signal: &'static str, pid: u32 },
    /// An HTTP answer that is not HTTP/1.1 as this client understands it.
    #[error("a malformed HTTP answer from {addr} to {path}: {reason}")]
    MalformedAnswer {
        addr: String,
        path: String,
        reason: String,
    },
    /// An HTTP body that should have been JSON.
    #[error("the answer from {addr} to {path} is not JSON ({source}): {body}")]
    NotJson {
        addr: String,
        path: String,
        body: String,
        #[source]
        source: serde_json::Error,
    },
    /// A status document without a field the caller needs.
    #[error("the status from {addr} lacks `{field}`: {status}")]
    StatusField {
        addr: String,
        field: &'static str,
        status: String,
    },
}

impl KitError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> KitError {
        let what = what.into();
        move |source| KitError::Io { what, source }
    }
}

/// A transfer of `amount` from `debit` to `credit` on ledger 1 with code 1: the shape the
/// end-to-end tests and the checker's own tests write.
pub fn transfer(id: u128, debit: u128, credit: u128, amount: u128) -> ledger::Transfer {
    ledger::Transfer {
        id,
        debit_account_id: debit,
        credit_account_id: credit,
        amount,
        ledger: 1,
        code: 1,
        ..ledger::Transfer::default()
    }
}

/// An account on ledger 1 with code 1 and no flags: the shape the end-to-end tests create.
pub fn account(id: u128) -> ledger::Account {
    ledger::Account {
        id,
        ledger: 1,
        code: 1,
        ..ledger::Account::default()
    }
}

/// A byte count from a process's `/proc/PID/status` line `key` (such as `VmRSS` or `VmHWM`);
/// `pid` may be `self`. 0 if the process or the line is gone (Linux only).
pub fn proc_status_bytes(pid: &str, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
                .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_resident_size_and_a_missing_key_reads_as_zero() {
        assert!(proc_status_bytes("self", "VmRSS") > 0);
        assert_eq!(proc_status_bytes("self", "NoSuchKey"), 0);
    }
}
