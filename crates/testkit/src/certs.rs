//! Peer certificates for the test kit's nodes. A node started with `--peer-certs DIR` and a
//! group id (`--bootstrap --group G`, `--join G`, or a restart on a directory whose format
//! marker names G) gets its certificate made in DIR if it has none, with the binary's own
//! `fincore certs` (DIR keeps one development authority for the group: see
//! [`crate::group::GroupLayout`]). A node started with neither `--peer-certs` nor
//! `--insecure-peers` (a single node, which has no peers) is told `--insecure-peers`.
//!
//! Owns only making those files; it never decides a node's arguments beyond that flag.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use crate::KitError;

/// Serializes issuing, so that members of one group started by parallel threads share one
/// authority.
static ISSUING: Mutex<()> = Mutex::new(());

/// The value following `flag` in `args`, if given.
fn value_of<'a, S: AsRef<OsStr>>(args: &'a [S], flag: &str) -> Option<&'a OsStr> {
    args.windows(2)
        .find(|pair| pair[0].as_ref() == OsStr::new(flag))
        .map(|pair| pair[1].as_ref())
}

/// The group named in the format marker of `data_dir`, if any.
fn marker_group(data_dir: &Path) -> Option<String> {
    let marker = std::fs::read(data_dir.join(crate::group::FORMAT_MARKER_FILE)).ok()?;
    let marker: serde_json::Value = serde_json::from_slice(&marker).ok()?;
    marker.get("group")?.as_str().map(str::to_string)
}

/// The peer-security arguments to add to `exe serve --data-dir DATA_DIR ARGS…`:
/// `--insecure-peers` if `args` choose neither that nor `--peer-certs`; none otherwise, after
/// making the node's certificate in the `--peer-certs` directory if it lacks one and the start
/// names a group.
pub fn peer_security_args<S: AsRef<OsStr>>(
    exe: &Path,
    data_dir: &Path,
    args: &[S],
) -> Result<Vec<PathBuf>, KitError> {
    if args
        .iter()
        .any(|a| a.as_ref() == OsStr::new("--insecure-peers"))
    {
        return Ok(Vec::new());
    }
    let Some(dir) = value_of(args, "--peer-certs") else {
        return Ok(vec![PathBuf::from("--insecure-peers")]);
    };
    // Making a new authority where the group's one was would split the group: refuse.
    if !Path::new(dir).is_dir() {
        return Err(KitError::CertificatesNotMade {
            stderr: format!(
                "{} is gone: keep the GroupLayout whose certificates these are alive while its nodes (re)start",
                Path::new(dir).display()
            ),
        });
    }
    let group = value_of(args, "--group")
        .or_else(|| value_of(args, "--join"))
        .map(|group| group.to_string_lossy().into_owned())
        .or_else(|| marker_group(data_dir));
    let Some(group) = group else {
        return Ok(Vec::new());
    };
    let node = value_of(args, "--node-id")
        .map(|id| id.to_string_lossy().into_owned())
        .unwrap_or_else(|| "1".to_string());
    let _issuing = ISSUING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if !Path::new(dir).join(format!("node-{node}.pem")).exists() {
        let output = Command::new(exe)
            .args(["certs", "--group", &group, "--nodes", &node, "--dir"])
            .arg(dir)
            .stdin(Stdio::null())
            .output()
            .map_err(KitError::io(format!("running {} certs", exe.display())))?;
        if !output.status.success() {
            return Err(KitError::CertificatesNotMade {
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            });
        }
    }
    Ok(Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_without_certificates_is_plaintext_and_a_chosen_security_is_kept() {
        let dir = Path::new("/nonexistent/node-1");
        let exe = Path::new("/nonexistent/fincore");
        assert_eq!(
            peer_security_args(exe, dir, &["--bootstrap"]).unwrap(),
            [PathBuf::from("--insecure-peers")]
        );
        assert!(
            peer_security_args(exe, dir, &["--insecure-peers", "--join", "ab"])
                .unwrap()
                .is_empty()
        );
        // No group to name: nothing to make (the node itself will say what is missing).
        let certs = std::env::temp_dir();
        let certs = certs.to_str().unwrap();
        assert!(
            peer_security_args(exe, dir, &["--peer-certs", certs])
                .unwrap()
                .is_empty()
        );
        // A certificate directory that is gone is not silently replaced by a new authority.
        assert!(
            peer_security_args(
                exe,
                dir,
                &["--peer-certs", "/nonexistent/c", "--join", "ab"]
            )
            .is_err()
        );
        assert_eq!(
            value_of(&["--node-id", "3", "--join", "g"], "--join"),
            Some(OsStr::new("g"))
        );
    }
}
