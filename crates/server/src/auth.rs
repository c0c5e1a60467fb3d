//! Client authentication and roles: API keys (bearer tokens), the keys file that holds their
//! digests, and the one role check that both front ends (HTTP and gRPC) call.
//!
//! A key is `fincore_` and 64 hex digits (256 random bits from the OS). Only its SHA-256 is
//! stored, so the keys file is not a secret that opens the API (it is still written 0600). A
//! presented token is hashed and looked up by digest, so no comparison leaks how much of a
//! token matched. Roles are ordered: `admin` may do what `write` may, `write` what `read` may.
//!
//! Owns the keys file's format and its atomic rewrite, and the verdict on one presented
//! `authorization` value. Must not decide which route or method needs which role (the front
//! ends do), and must not log or return a token it was given.

use std::collections::HashMap;
use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use limits::{API_KEY_NAME_BYTES_MAX, API_KEY_SECRET_BYTES, API_KEYS_FILE_BYTES_MAX, API_KEYS_MAX};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The keys file's name inside a data directory (the default of `--keys`).
pub use replication::data_dir::KEYS_FILE;
/// What every token starts with, so that a leaked one is recognisable (secret scanners).
pub const TOKEN_PREFIX: &str = "fincore_";
const FORMAT_NAME: &str = "fincore-api-keys";
const FORMAT_VERSION: u32 = 1;

/// What a key may do. Ordered: a role may do everything the roles below it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Lookups, history, balances.
    Read,
    /// Also create accounts and transfers.
    Write,
    /// Also change membership and read the state digest.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Read, Role::Write, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(text: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == text)
            .ok_or_else(|| format!("{text:?} is not a role (read, write or admin)"))
    }
}

/// One key as the keys file holds it: never the token, only its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    /// Short random hex id, shown by `keys list` and accepted by `keys revoke`.
    pub id: String,
    /// The operator's name for it (unique in the file).
    pub name: String,
    pub role: Role,
    /// SHA-256 of the whole token, hex.
    sha256: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileJson {
    format: String,
    version: u32,
    keys: Vec<KeyEntry>,
}

/// Why the keys file could not be read, written or changed.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error(
        "no API keys file at {0}: create a key with `fincore keys create --role admin --data-dir DIR` (or `--keys FILE`)"
    )]
    Missing(PathBuf),
    #[error("{path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a fincore keys file: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("--name {0:?}: {1}")]
    BadName(String, &'static str),
    #[error("{path} already holds {API_KEYS_MAX} keys (the limit); revoke some first")]
    Full { path: PathBuf },
    #[error("{path} has no key with the id or name {wanted:?} (see `fincore keys list`)")]
    NoSuchKey { path: PathBuf, wanted: String },
    #[error("reading random bytes from the operating system: {0}")]
    Random(String),
}

/// The keys file: load, change, save atomically.
#[derive(Debug)]
pub struct KeysFile {
    path: PathBuf,
    keys: Vec<KeyEntry>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn random_hex(bytes: usize) -> Result<String, KeysError> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| KeysError::Random(e.to_string()))?;
    Ok(hex(&buf))
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

impl KeysFile {
    /// The keys at `path`; [`KeysError::Missing`] if there is no file.
    pub fn load(path: &Path) -> Result<KeysFile, KeysError> {
        let io = |what| {
            let path = path.to_path_buf();
            move |source| KeysError::Io { path, what, source }
        };
        let file = match std::fs::File::open(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(KeysError::Missing(path.to_path_buf()));
            }
            other => other.map_err(io("opening"))?,
        };
        let mut text = String::new();
        file.take(API_KEYS_FILE_BYTES_MAX + 1)
            .read_to_string(&mut text)
            .map_err(io("reading"))?;
        let invalid = |reason: String| KeysError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        if text.len() as u64 > API_KEYS_FILE_BYTES_MAX {
            return Err(invalid(format!(
                "larger than {API_KEYS_FILE_BYTES_MAX} bytes"
            )));
        }
        let parsed: FileJson = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        if parsed.format != FORMAT_NAME || parsed.version != FORMAT_VERSION {
            return Err(invalid(format!(
                "format {:?} version {}; this fincore reads {FORMAT_NAME:?} version {FORMAT_VERSION}",
                parsed.format, parsed.version
            )));
        }
        if parsed.keys.len() > API_KEYS_MAX {
            return Err(invalid(format!("more than {API_KEYS_MAX} keys")));
        }
        for key in &parsed.keys {
            let sha = &key.sha256;
            if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid(format!(
                    "key {:?}: sha256 is not 64 hex digits",
                    key.id
                )));
            }
        }
        Ok(KeysFile {
            path: path.to_path_buf(),
            keys: parsed.keys,
        })
    }

    /// The keys at `path`, or none yet if there is no file (it is created on [`save`]).
    ///
    /// [`save`]: KeysFile::save
    pub fn load_or_new(path: &Path) -> Result<KeysFile, KeysError> {
        match KeysFile::load(path) {
            Err(KeysError::Missing(_)) => Ok(KeysFile {
                path: path.to_path_buf(),
                keys: Vec::new(),
            }),
            other => other,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn keys(&self) -> &[KeyEntry] {
        &self.keys
    }

    /// Adds a key with `role` (named `name`, or `key-ID`) and returns it with its token, the
    /// only time the token exists outside the caller's hands. Call [`KeysFile::save`] after.
    pub fn create(
        &mut self,
        role: Role,
        name: Option<&str>,
    ) -> Result<(KeyEntry, String), KeysError> {
        if self.keys.len() >= API_KEYS_MAX {
            return Err(KeysError::Full {
                path: self.path.clone(),
            });
        }
        let id = random_hex(4)?;
        let name = name.map_or_else(|| format!("key-{id}"), str::to_string);
        if name.is_empty() || name.len() > API_KEY_NAME_BYTES_MAX {
            return Err(KeysError::BadName(name, "must be 1 to 64 bytes long"));
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(KeysError::BadName(
                name,
                "may hold only letters, digits, '-', '_' and '.'",
            ));
        }
        if self.keys.iter().any(|k| k.name == name || k.id == name) {
            return Err(KeysError::BadName(name, "a key with this name exists"));
        }
        let token = format!("{TOKEN_PREFIX}{}", random_hex(API_KEY_SECRET_BYTES)?);
        let entry = KeyEntry {
            id,
            name,
            role,
            sha256: hex(&digest(token.as_bytes())),
        };
        self.keys.push(entry.clone());
        Ok((entry, token))
    }

    /// Removes the key whose id or name is `wanted`. Call [`KeysFile::save`] after.
    pub fn revoke(&mut self, wanted: &str) -> Result<KeyEntry, KeysError> {
        let at = self
            .keys
            .iter()
            .position(|k| k.id == wanted || k.name == wanted)
            .ok_or_else(|| KeysError::NoSuchKey {
                path: self.path.clone(),
                wanted: wanted.to_string(),
            })?;
        Ok(self.keys.remove(at))
    }

    /// Whether `token` is one of these keys (it is hashed, never stored).
    pub fn holds(&self, token: &str) -> bool {
        let wanted = hex(&digest(token.as_bytes()));
        self.keys.iter().any(|k| k.sha256 == wanted)
    }

    /// Writes the file atomically (a temporary file beside it, mode 0600, fsynced, renamed over
    /// it, the directory fsynced), creating the directory if needed. Two writers at once may
    /// lose one's change; run `fincore keys` one at a time.
    pub fn save(&self) -> Result<(), KeysError> {
        let io = |what| {
            let path = self.path.clone();
            move |source| KeysError::Io { path, what, source }
        };
        let dir = match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&dir).map_err(io("creating its directory"))?;
        let json = FileJson {
            format: FORMAT_NAME.to_string(),
            version: FORMAT_VERSION,
            keys: self.keys.clone(),
        };
        let mut text = serde_json::to_string_pretty(&json).expect("plain data serializes");
        text.push('\n');
        let mut temporary = self.path.clone().into_os_string();
        temporary.push(".tmp");
        let temporary = PathBuf::from(temporary);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options
            .open(&temporary)
            .map_err(io("creating a temporary file beside it"))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io("writing a temporary file beside it"))?;
        std::fs::rename(&temporary, &self.path).map_err(io("renaming the new file over it"))?;
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io("syncing its directory"))?;
        Ok(())
    }
}

/// The key a request presented, once recognised (its name in the keys file and its role); an
/// authorized request's is put into the request's extensions for the handlers that keep limits
/// per caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub key: String,
    pub role: Role,
}

/// The keys a running node accepts, reloadable from its file (`SIGHUP` in `fincore serve`).
#[derive(Debug)]
pub struct KeyStore {
    path: PathBuf,
    by_digest: RwLock<Arc<HashMap<[u8; 32], Caller>>>,
}

fn index(file: &KeysFile) -> HashMap<[u8; 32], Caller> {
    file.keys
        .iter()
        .map(|key| {
            let mut digest = [0u8; 32];
            for (at, byte) in digest.iter_mut().enumerate() {
                *byte = u8::from_str_radix(&key.sha256[2 * at..2 * at + 2], 16)
                    .expect("checked on load");
            }
            let caller = Caller {
                key: key.name.clone(),
                role: key.role,
            };
            (digest, caller)
        })
        .collect()
}

impl KeyStore {
    /// The keys in the file at `path` (which must exist).
    pub fn open(path: &Path) -> Result<KeyStore, KeysError> {
        let file = KeysFile::load(path)?;
        Ok(KeyStore {
            path: path.to_path_buf(),
            by_digest: RwLock::new(Arc::new(index(&file))),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many keys are accepted now.
    pub fn len(&self) -> usize {
        self.by_digest.read().expect("never poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads the file again; on success the new keys replace the old at once (a revoked key is
    /// refused from the next request on). On failure the keys in use stay as they were.
    pub fn reload(&self) -> Result<usize, KeysError> {
        let keys = Arc::new(index(&KeysFile::load(&self.path)?));
        let count = keys.len();
        *self.by_digest.write().expect("never poisoned") = keys;
        Ok(count)
    }

    fn find(&self, token: &str) -> Option<Caller> {
        let keys = Arc::clone(&self.by_digest.read().expect("never poisoned"));
        keys.get(&digest(token.as_bytes())).cloned()
    }
}

/// Why a request was refused. The messages name the reason and never echo the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("authentication required: send the header `authorization: Bearer <API key>`")]
    Missing,
    #[error("malformed authorization: {0}")]
    Malformed(&'static str),
    #[error("unknown API key (never created, or revoked)")]
    UnknownKey,
    #[error("API key {key:?} has the role {role}; this call needs the role {needed}")]
    Forbidden {
        key: String,
        role: Role,
        needed: Role,
    },
}

impl AuthError {
    /// True for "who are you?" (HTTP 401, gRPC UNAUTHENTICATED); false for "not allowed"
    /// (HTTP 403, gRPC PERMISSION_DENIED).
    pub fn is_unauthenticated(&self) -> bool {
        !matches!(self, AuthError::Forbidden { .. })
    }

    /// The metrics label of this reason.
    pub fn label(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Malformed(_) => "malformed",
            AuthError::UnknownKey => "unknown_key",
            AuthError::Forbidden { .. } => "forbidden",
        }
    }
}

/// How a node decides who may call it.
#[derive(Debug, Clone)]
pub enum Auth {
    /// Everyone may do everything (`serve --insecure-no-auth`, loopback only, and embedded
    /// nodes in tests).
    Open,
    /// A bearer API key with a sufficient role is required.
    Keys(Arc<KeyStore>),
}

impl Auth {
    /// The verdict on a request that presented `authorization` (the raw header or metadata
    /// value, if any) for a call that needs `needed`: the caller's key, or `None` when every
    /// caller is let in ([`Auth::Open`]).
    pub fn check(
        &self,
        authorization: Option<&[u8]>,
        needed: Role,
    ) -> Result<Option<Caller>, AuthError> {
        let Auth::Keys(store) = self else {
            return Ok(None);
        };
        let value = authorization.ok_or(AuthError::Missing)?;
        let value = std::str::from_utf8(value)
            .map_err(|_| AuthError::Malformed("the value is not text"))?;
        let (scheme, token) = value
            .trim()
            .split_once(' ')
            .ok_or(AuthError::Malformed("expected `Bearer <API key>`"))?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::Malformed("the scheme must be `Bearer`"));
        }
        let token = token.trim();
        if !token.starts_with(TOKEN_PREFIX) {
            return Err(AuthError::Malformed(
                "an API key starts with `fincore_` (made by `fincore keys create`)",
            ));
        }
        let caller = store.find(token).ok_or(AuthError::UnknownKey)?;
        if caller.role < needed {
            return Err(AuthError::Forbidden {
                key: caller.key,
                role: caller.role,
                needed,
            });
        }
        Ok(Some(caller))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with(roles: &[Role]) -> (tempfile::TempDir, Auth, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEYS_FILE);
        let mut file = KeysFile::load_or_new(&path).unwrap();
        let tokens = roles
            .iter()
            .map(|&role| file.create(role, None).unwrap().1)
            .collect();
        file.save().unwrap();
        let auth = Auth::Keys(Arc::new(KeyStore::open(&path).unwrap()));
        (dir, auth, tokens)
    }

    fn bearer(token: &str) -> Vec<u8> {
        format!("Bearer {token}").into_bytes()
    }

    #[test]
    fn each_role_may_do_what_the_roles_below_it_may_and_nothing_above() {
        let (_dir, auth, tokens) = store_with(&Role::ALL);
        for (have, token) in Role::ALL.iter().zip(&tokens) {
            for needed in Role::ALL {
                let verdict = auth.check(Some(&bearer(token)), needed);
                assert_eq!(verdict.is_ok(), *have >= needed, "{have} for {needed}");
                if let Err(error) = verdict {
                    assert!(!error.is_unauthenticated());
                    assert!(
                        error
                            .to_string()
                            .contains(&format!("needs the role {needed}"))
                    );
                }
            }
        }
    }

    #[test]
    fn missing_malformed_and_unknown_keys_are_refused_with_their_reason() {
        let (_dir, auth, _tokens) = store_with(&[Role::Admin]);
        let unknown = format!("{TOKEN_PREFIX}{}", "0".repeat(64));
        let cases: [(Option<&[u8]>, AuthError); 5] = [
            (None, AuthError::Missing),
            (
                Some(b"Basic abc"),
                AuthError::Malformed("the scheme must be `Bearer`"),
            ),
            (
                Some(b"Bearer"),
                AuthError::Malformed("expected `Bearer <API key>`"),
            ),
            (
                Some(&[0xff, 0x20, 0x41]),
                AuthError::Malformed("the value is not text"),
            ),
            (Some(&bearer(&unknown)), AuthError::UnknownKey),
        ];
        for (value, expected) in cases {
            let error = auth.check(value, Role::Read).unwrap_err();
            assert_eq!(error, expected);
            assert!(error.is_unauthenticated());
        }
        assert!(Auth::Open.check(None, Role::Admin).is_ok());
    }

    #[test]
    fn a_revoked_key_is_refused_after_a_reload_and_the_file_never_holds_a_token() {
        let (_dir, auth, tokens) = store_with(&[Role::Write, Role::Read]);
        let Auth::Keys(store) = &auth else {
            unreachable!()
        };
        let mut file = KeysFile::load(store.path()).unwrap();
        let text = std::fs::read_to_string(store.path()).unwrap();
        assert!(
            tokens
                .iter()
                .all(|t| !text.contains(&t[TOKEN_PREFIX.len()..]))
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(store.path())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let first = file.keys()[0].id.clone();
        file.revoke(&first).unwrap();
        file.save().unwrap();
        assert!(auth.check(Some(&bearer(&tokens[0])), Role::Read).is_ok());
        assert_eq!(store.reload().unwrap(), 1);
        assert_eq!(
            auth.check(Some(&bearer(&tokens[0])), Role::Read),
            Err(AuthError::UnknownKey)
        );
        assert!(auth.check(Some(&bearer(&tokens[1])), Role::Read).is_ok());
        assert!(matches!(
            file.revoke("nobody"),
            Err(KeysError::NoSuchKey { .. })
        ));
    }

    #[test]
    fn bad_names_and_damaged_files_are_refused_naming_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEYS_FILE);
        let mut file = KeysFile::load_or_new(&path).unwrap();
        file.create(Role::Read, Some("ops")).unwrap();
        for bad in ["", "has space", "ops", &"x".repeat(65)] {
            assert!(matches!(
                file.create(Role::Read, Some(bad)),
                Err(KeysError::BadName(..))
            ));
        }
        assert!(matches!(KeyStore::open(&path), Err(KeysError::Missing(_))));
        std::fs::write(&path, b"{\"format\":\"other\",\"version\":1,\"keys\":[]}").unwrap();
        let error = KeyStore::open(&path).unwrap_err();
        assert!(
            error.to_string().contains("not a fincore keys file"),
            "{error}"
        );
    }
}
