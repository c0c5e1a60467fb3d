//! One child `fincore serve` process: start it on a data directory, read the gRPC, HTTP and
//! peer addresses it announces on stdout, signal it, kill it, stop it cleanly.
//!
//! Owns the child's lifetime (a dropped node is killed, never left running) and nothing else:
//! which arguments make a group, and what to check on it, belong to the callers.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::KitError;

/// How long a node may take to exit after SIGTERM (it writes a checkpoint of its state first).
pub const STOP_SECONDS_MAX: u64 = 120;
/// How often a stopping node is polled.
const STOP_POLL_MS: u64 = 20;

/// The line prefixes with which `fincore serve` announces where it listens. Followed by the
/// address, a space and `(TLS)` or `(plaintext)`.
const GRPC_ANNOUNCEMENT: &str = "fincore: gRPC listening on ";
/// Followed by `http://ADDR` or `https://ADDR`.
const HTTP_ANNOUNCEMENT: &str = "fincore: HTTP listening on ";
/// Followed by the address, a space and how peers are secured.
const PEER_ANNOUNCEMENT: &str = "fincore: peers listening on ";

/// A signal sent with `kill`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Freeze the process (it keeps its sockets; peers see silence).
    Stop,
    /// Let a frozen process run again.
    Cont,
    /// Ask for a clean shutdown.
    Term,
    /// Ask it to reread its API keys file.
    Hup,
}

impl Signal {
    fn name(self) -> &'static str {
        match self {
            Signal::Stop => "STOP",
            Signal::Cont => "CONT",
            Signal::Term => "TERM",
            Signal::Hup => "HUP",
        }
    }
}

/// Creates `dir` and opens (appending) the log beside it, `DIR.log`, kept across restarts.
fn dir_and_log(dir: &Path) -> Result<(std::fs::File, PathBuf), KitError> {
    std::fs::create_dir_all(dir).map_err(KitError::io(format!("creating {}", dir.display())))?;
    let log_path = dir.with_extension("log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(KitError::io(format!("opening {}", log_path.display())))?;
    Ok((log, log_path))
}

/// A running `fincore serve` (or `fincore gateway`) child.
pub struct ChildNode {
    child: Child,
    /// Where it serves gRPC (`HOST:PORT`), as it announced.
    pub grpc_addr: String,
    /// Where it serves HTTP (`HOST:PORT`), as it announced.
    pub http_addr: String,
    /// Where its peers reach its replica transport (`HOST:PORT`), as it announced (empty for a
    /// gateway).
    pub peer_addr: String,
    /// True if its client listeners are served over TLS (it announced an `https://` URL).
    pub client_tls: bool,
    /// Its stderr (logs), beside the data directory, appended to across restarts.
    pub log_path: PathBuf,
}

impl ChildNode {
    /// Runs `exe serve --data-dir DATA_DIR ARGS…` (creating the directory) and waits until it
    /// announced its three addresses. `args` carry everything else: listen addresses (`--grpc
    /// 127.0.0.1:0` picks a free port; without `--peer` the peer listener gets a free port),
    /// `--node-id`, `--peers`, checkpointing. Its stderr goes to `DATA_DIR.log`, kept for
    /// post-mortems. Unless `args` give `--keys` or `--insecure-no-auth`, the node gets `--keys
    /// DATA_DIR.keys` holding this process's admin key ([`crate::keys`]); unless they give
    /// `--peer-certs` or `--insecure-peers`, its group's peer certificates ([`crate::certs`]).
    pub fn start<S: AsRef<OsStr>>(
        exe: &Path,
        data_dir: &Path,
        args: &[S],
    ) -> Result<ChildNode, KitError> {
        let (command, log, log_path) = ChildNode::serve_command(exe, data_dir, args)?;
        ChildNode::spawn(command, data_dir, log.into(), log_path, true)
    }

    /// [`ChildNode::start`] of a meta replica (`serve --meta`, added to `args`); its HTTP
    /// listener serves health and metrics only.
    pub fn start_meta<S: AsRef<OsStr>>(
        exe: &Path,
        data_dir: &Path,
        args: &[S],
    ) -> Result<ChildNode, KitError> {
        let (mut command, log, log_path) = ChildNode::serve_command(exe, data_dir, args)?;
        command.arg("--meta");
        ChildNode::spawn(command, data_dir, log.into(), log_path, true)
    }

    /// [`ChildNode::start`], logging what `filter` selects (`RUST_LOG` syntax, such as
    /// `server=debug`) to its log: for tests that look for a debug line.
    pub fn start_logging<S: AsRef<OsStr>>(
        exe: &Path,
        data_dir: &Path,
        args: &[S],
        filter: &str,
    ) -> Result<ChildNode, KitError> {
        ChildNode::start_with_env(exe, data_dir, args, &[("RUST_LOG", filter)])
    }

    /// [`ChildNode::start`] with these environment variables set for the node (such as
    /// `FINCORE_EVENTS=off`).
    pub fn start_with_env<S: AsRef<OsStr>>(
        exe: &Path,
        data_dir: &Path,
        args: &[S],
        env: &[(&str, &str)],
    ) -> Result<ChildNode, KitError> {
        let (mut command, log, log_path) = ChildNode::serve_command(exe, data_dir, args)?;
        command.envs(env.iter().copied());
        ChildNode::spawn(command, data_dir, log.into(), log_path, true)
    }

    /// [`ChildNode::start_with_env`] with the node's stderr going to `stderr` instead of its log
    /// file (which stays empty): a pipe nobody reads plays a log disk that stalls.
    pub fn start_with_stderr<S: AsRef<OsStr>>(
        exe: &Path,
        data_dir: &Path,
        args: &[S],
        env: &[(&str, &str)],
        stderr: Stdio,
    ) -> Result<ChildNode, KitError> {
        let (mut command, _log, log_path) = ChildNode::serve_command(exe, data_dir, args)?;
        command.envs(env.iter().copied());
        ChildNode::spawn(command, data_dir, stderr, log_path, true)
    }

    /// The `serve` command [`ChildNode::start`] runs, and its log file.
    fn serve_command<S: AsRef<OsStr>>(
        exe: &Path,
        data_dir: &Path,
        args: &[S],
    ) -> Result<(Command, std::fs::File, PathBuf), KitError> {
        let (log, log_path) = dir_and_log(data_dir)?;
        let given = |flag: &str| args.iter().any(|a| a.as_ref() == OsStr::new(flag));
        let keys = if given("--keys") || given("--insecure-no-auth") {
            None
        } else {
            Some(crate::keys::keys_file_for(exe, data_dir)?)
        };
        let peer_security = crate::certs::peer_security_args(exe, data_dir, args)?;
        let free_peer: &[&str] = if given("--peer") {
            &[]
        } else {
            &["--peer", "127.0.0.1:0"]
        };
        let mut command = Command::new(exe);
        // A node logs what its test asks for (`start_logging`, `start_with_env`), whatever the
        // shell running the tests has set.
        command
            .env_remove("RUST_LOG")
            .env_remove("FINCORE_LOG_FORMAT");
        command
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args(
                keys.iter()
                    .flat_map(|path| [OsStr::new("--keys"), path.as_os_str()]),
            )
            .args(&peer_security)
            .args(free_peer)
            .args(args);
        Ok((command, log, log_path))
    }

    /// Runs `exe registry serve ARGS…` and waits until it announced its two addresses (gRPC:
    /// the registry's protocol; HTTP: `/metrics`). Unless `args` give `--keys` or
    /// `--insecure-no-auth`, it checks callers against this process's admin key. Its stderr goes
    /// to `DIR.log`.
    pub fn start_registry<S: AsRef<OsStr>>(
        exe: &Path,
        dir: &Path,
        args: &[S],
    ) -> Result<ChildNode, KitError> {
        let (log, log_path) = dir_and_log(dir)?;
        let given = |flag: &str| args.iter().any(|a| a.as_ref() == OsStr::new(flag));
        let mut command = Command::new(exe);
        command.args(["registry", "serve"]);
        if !given("--keys") && !given("--insecure-no-auth") {
            command
                .arg("--keys")
                .arg(crate::keys::keys_file_for(exe, dir)?);
        }
        command.args(args);
        ChildNode::spawn(command, dir, log.into(), log_path, false)
    }

    /// Runs `exe gateway --map MAP ARGS…` and waits until it announced its two addresses
    /// (`peer_addr` stays empty). Unless `args` give `--keys` or `--insecure-no-auth`, it
    /// checks callers against this process's admin key and presents that key to the groups
    /// (which the test kit started with it). Its stderr goes to `DIR.log`.
    pub fn start_gateway<S: AsRef<OsStr>>(
        exe: &Path,
        dir: &Path,
        map: &Path,
        args: &[S],
    ) -> Result<ChildNode, KitError> {
        ChildNode::start_gateway_from(exe, dir, [OsStr::new("--map"), map.as_os_str()], args)
    }

    /// [`ChildNode::start_gateway`] taking its map from the meta group at `meta` (`--meta
    /// HOST:PORT,…`) instead of a file.
    pub fn start_gateway_on_meta<S: AsRef<OsStr>>(
        exe: &Path,
        dir: &Path,
        meta: &str,
        args: &[S],
    ) -> Result<ChildNode, KitError> {
        ChildNode::start_gateway_from(exe, dir, [OsStr::new("--meta"), OsStr::new(meta)], args)
    }

    fn start_gateway_from<S: AsRef<OsStr>>(
        exe: &Path,
        dir: &Path,
        source: [&OsStr; 2],
        args: &[S],
    ) -> Result<ChildNode, KitError> {
        let (log, log_path) = dir_and_log(dir)?;
        let given = |flag: &str| args.iter().any(|a| a.as_ref() == OsStr::new(flag));
        let mut command = Command::new(exe);
        command.arg("gateway").args(source);
        if !given("--keys") && !given("--insecure-no-auth") {
            let keys = crate::keys::keys_file_for(exe, dir)?;
            let token = crate::keys::token().unwrap_or_default();
            let token_path = dir.join("group-key");
            replication::secret_file::write(&token_path, format!("{token}\n").as_bytes())
                .map_err(KitError::io(format!("writing {}", token_path.display())))?;
            command
                .arg("--keys")
                .arg(keys)
                .arg("--group-key-file")
                .arg(token_path);
        }
        command.args(args);
        ChildNode::spawn(command, dir, log.into(), log_path, false)
    }

    /// Spawns `command` with stdout piped and stderr to `log`, and reads what it announces:
    /// its gRPC and HTTP addresses, and its peer address if `peer` (a node).
    fn spawn(
        mut command: Command,
        data_dir: &Path,
        stderr: Stdio,
        log_path: PathBuf,
        peer: bool,
    ) -> Result<ChildNode, KitError> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(KitError::io(format!(
                "starting {:?}",
                command.get_program()
            )))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let mut grpc_addr = None;
        let mut http_addr = None;
        let mut peer_addr = (!peer).then(String::new);
        let mut client_tls = false;
        while grpc_addr.is_none() || http_addr.is_none() || peer_addr.is_none() {
            let Some(Ok(line)) = lines.next() else {
                let _ = child.kill();
                let _ = child.wait();
                return Err(KitError::NodeDidNotStart {
                    data_dir: data_dir.to_path_buf(),
                    log: std::fs::read_to_string(&log_path).unwrap_or_default(),
                    log_path,
                });
            };
            if let Some(rest) = line.strip_prefix(GRPC_ANNOUNCEMENT) {
                grpc_addr = Some(rest.split(' ').next().unwrap_or_default().to_string());
            }
            if let Some(url) = line.strip_prefix(HTTP_ANNOUNCEMENT) {
                if let Some(addr) = url.strip_prefix("https://") {
                    client_tls = true;
                    http_addr = Some(addr.to_string());
                } else {
                    http_addr = Some(url.trim_start_matches("http://").to_string());
                }
            }
            if let Some(rest) = line.strip_prefix(PEER_ANNOUNCEMENT) {
                peer_addr = Some(rest.split(' ').next().unwrap_or_default().to_string());
            }
        }
        // Keep draining its stdout so that it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Ok(ChildNode {
            child,
            grpc_addr: grpc_addr.expect("the loop ends once all are read"),
            http_addr: http_addr.expect("the loop ends once all are read"),
            peer_addr: peer_addr.expect("the loop ends once all are read"),
            client_tls,
            log_path,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The gRPC address as clients want it: `http://` (or `https://` over TLS) and the address.
    pub fn grpc_url(&self) -> String {
        let scheme = if self.client_tls { "https" } else { "http" };
        format!("{scheme}://{}", self.grpc_addr)
    }

    /// Its resident memory now (0 once it is gone).
    pub fn rss_bytes(&self) -> u64 {
        crate::proc_status_bytes(&self.pid().to_string(), "VmRSS")
    }

    /// Sends `signal` (the process keeps running unless it chooses to stop).
    pub fn signal(&self, signal: Signal) -> Result<(), KitError> {
        let pid = self.pid();
        let status = Command::new("kill")
            .arg(format!("-{}", signal.name()))
            .arg(pid.to_string())
            .status()
            .map_err(KitError::io("running kill"))?;
        if !status.success() {
            return Err(KitError::Signal {
                signal: signal.name(),
                pid,
            });
        }
        Ok(())
    }

    /// SIGKILL: no chance to flush or checkpoint. Waits until it is gone.
    pub fn kill9(mut self) {
        self.reap();
    }

    /// SIGTERM, then waits (at most [`STOP_SECONDS_MAX`]) for a clean exit; a node that does not
    /// exit in time is killed, and one that exits with a failure status is an error.
    pub fn stop(mut self) -> Result<(), KitError> {
        let pid = self.pid();
        // A process already gone cannot be signalled; try_wait below tells how it ended.
        let _ = self.signal(Signal::Term);
        let deadline = Instant::now() + Duration::from_secs(STOP_SECONDS_MAX);
        while Instant::now() < deadline {
            let exited: Option<ExitStatus> = self
                .child
                .try_wait()
                .map_err(KitError::io(format!("waiting for pid {pid}")))?;
            match exited {
                Some(status) if status.success() => return Ok(()),
                Some(status) => return Err(KitError::NodeExitedWithFailure { pid, status }),
                None => std::thread::sleep(Duration::from_millis(STOP_POLL_MS)),
            }
        }
        self.reap();
        Err(KitError::NodeDidNotStop {
            pid,
            seconds: STOP_SECONDS_MAX,
        })
    }

    /// Kills the child if it still runs and collects its exit status.
    fn reap(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for ChildNode {
    fn drop(&mut self) {
        self.reap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_that_exits_without_announcing_reports_its_log() {
        let dir = std::env::temp_dir().join(format!("testkit-node-{}", std::process::id()));
        // `false serve …` exits at once without printing anything.
        let error = match ChildNode::start(Path::new("false"), &dir, &["--insecure-no-auth"]) {
            Err(error) => error,
            Ok(_) => panic!("`false` cannot announce addresses"),
        };
        assert!(matches!(error, KitError::NodeDidNotStart { .. }), "{error}");
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_file(dir.with_extension("log"));
    }

    #[test]
    fn announced_addresses_are_read_from_stdout() {
        let dir = std::env::temp_dir().join(format!("testkit-echo-{}", std::process::id()));
        let script = dir.with_extension("sh");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\necho '{GRPC_ANNOUNCEMENT}127.0.0.1:1 (TLS)'\necho '{HTTP_ANNOUNCEMENT}https://127.0.0.1:2'\necho '{PEER_ANNOUNCEMENT}127.0.0.1:3 (mutual TLS)'\nexec sleep 30\n"
            ),
        )
        .unwrap();
        std::process::Command::new("chmod")
            .args(["+x"])
            .arg(&script)
            .status()
            .unwrap();
        let node = ChildNode::start(&script, &dir, &["--insecure-no-auth"]).unwrap();
        assert_eq!(
            (
                node.grpc_addr.as_str(),
                node.http_addr.as_str(),
                node.peer_addr.as_str()
            ),
            ("127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3")
        );
        assert!(node.client_tls);
        assert_eq!(node.grpc_url(), "https://127.0.0.1:1");
        node.signal(Signal::Stop).unwrap();
        node.signal(Signal::Cont).unwrap();
        node.kill9();
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_file(dir.with_extension("log"));
        let _ = std::fs::remove_file(&script);
    }
}
