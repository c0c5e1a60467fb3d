//! Reading a secret an operator keeps in a file (a TLS private key, a NATS password or token,
//! an API key for the groups): refused while every user of the machine may read or write it,
//! as OpenSSH refuses such a private key and PostgreSQL such a server key. Group access is
//! allowed, so that a service group may share a file. The mode is read from the open file,
//! not looked up by name before opening it, so the file checked is the file read.
//!
//! Owns that rule and the size bound of such a file; must not parse what it reads.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use limits::SECRET_FILE_BYTES_MAX;

/// Permission bits of "others" (neither the owner nor the group).
const OTHERS_BITS: u32 = 0o007;

/// Why a secret file was not read.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}: every user of this machine may read or change it (mode {mode:03o}); a file holding a secret must not be open to them: chmod o-rwx {path}"
    )]
    OpenToOthers { path: PathBuf, mode: u32 },
    #[error("{path}: larger than {SECRET_FILE_BYTES_MAX} bytes, which no secret is")]
    TooLarge { path: PathBuf },
    #[error("{path}: not UTF-8 text")]
    NotText { path: PathBuf },
}

/// The bytes of the secret file at `path`, if no one but its owner and group may use it.
pub fn read(path: &Path) -> Result<Vec<u8>, SecretFileError> {
    let io = |source| SecretFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mode = file.metadata().map_err(io)?.permissions().mode() & 0o777;
    if mode & OTHERS_BITS != 0 {
        return Err(SecretFileError::OpenToOthers {
            path: path.to_path_buf(),
            mode,
        });
    }
    let mut bytes = Vec::new();
    file.take(SECRET_FILE_BYTES_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > SECRET_FILE_BYTES_MAX {
        return Err(SecretFileError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    Ok(bytes)
}

/// The secret file at `path` as text, under the same rule as [`read`].
pub fn read_text(path: &Path) -> Result<String, SecretFileError> {
    String::from_utf8(read(path)?).map_err(|_| SecretFileError::NotText {
        path: path.to_path_buf(),
    })
}

/// Writes `bytes` as a new secret file at `path`, readable by its owner only, and makes it
/// durable. What was at `path` is removed first, so the secret never lands in an older file's
/// mode nor through a symbolic link left there.
pub fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
        _ => {}
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_mode(dir: &Path, name: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, b"secret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn a_secret_open_to_the_owner_or_the_group_is_read() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o600, 0o400, 0o640, 0o660] {
            let path = with_mode(dir.path(), &format!("s{mode:o}"), mode);
            assert_eq!(read(&path).unwrap(), b"secret\n", "mode {mode:o}");
        }
    }

    #[test]
    fn a_secret_open_to_every_user_is_refused_naming_the_file_its_mode_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o644, 0o604, 0o602, 0o601, 0o666] {
            let path = with_mode(dir.path(), &format!("s{mode:o}"), mode);
            let error = read(&path).unwrap_err().to_string();
            assert!(
                error.contains(&path.display().to_string())
                    && error.contains(&format!("mode {mode:03o}"))
                    && error.contains("chmod o-rwx"),
                "{error}"
            );
        }
    }

    #[test]
    fn a_missing_or_oversized_secret_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        assert!(read(&missing).unwrap_err().to_string().contains("missing"));
        let large = dir.path().join("large");
        write(&large, &vec![b'x'; SECRET_FILE_BYTES_MAX as usize + 1]).unwrap();
        assert!(matches!(
            read(&large),
            Err(SecretFileError::TooLarge { .. })
        ));
        let binary = dir.path().join("binary");
        write(&binary, &[0xff, 0xfe]).unwrap();
        assert!(matches!(
            read_text(&binary),
            Err(SecretFileError::NotText { .. })
        ));
    }

    #[test]
    fn write_makes_an_owner_only_file_even_over_an_open_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = with_mode(dir.path(), "s", 0o644);
        write(&path, b"new\n").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(read(&path).unwrap(), b"new\n");
    }
}
