//! Checkpoint files: a snapshot of the state machine plus the journal position it reflects.
//!
//! A checkpoint is written to a temporary file, synced, renamed into place and the directory
//! synced, so a crash leaves either the old checkpoint or the new one, never half of one. The
//! state bytes are opaque here; a fixed trailer at the end of the file records their length,
//! the journal position and the state digest, protected by its own CRC32C. The two newest
//! checkpoints are kept.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{JournalError, Result};
use crate::journal::Position;
use crate::record::RecordHash;

const TRAILER_MAGIC: [u8; 8] = *b"FCCKPT01";
const TRAILER_VERSION: u32 = 1;
const TRAILER_SIZE: usize = 108;
const CHECKPOINTS_KEPT: usize = 2;

/// What a checkpoint says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointMeta {
    /// The last journal record reflected in the state.
    pub position: Position,
    /// The state machine's digest of the state bytes.
    pub state_digest: [u8; 32],
    pub state_len: u64,
}

/// A checkpoint found on disk.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub path: PathBuf,
    pub meta: CheckpointMeta,
}

/// The directory of checkpoint files.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    dir: PathBuf,
}

fn file_name(index: u64) -> String {
    format!("checkpoint-{index:020}.ckpt")
}

fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("checkpoint-")?.strip_suffix(".ckpt")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())?
}

struct CountingWriter<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn encode_trailer(meta: &CheckpointMeta) -> [u8; TRAILER_SIZE] {
    let mut t = [0u8; TRAILER_SIZE];
    t[0..8].copy_from_slice(&TRAILER_MAGIC);
    t[8..12].copy_from_slice(&TRAILER_VERSION.to_le_bytes());
    t[16..24].copy_from_slice(&meta.state_len.to_le_bytes());
    t[24..32].copy_from_slice(&meta.position.index.to_le_bytes());
    t[32..40].copy_from_slice(&meta.position.term.to_le_bytes());
    t[40..72].copy_from_slice(&meta.position.hash.0);
    t[72..104].copy_from_slice(&meta.state_digest);
    let crc = crc32c::crc32c(&t[..104]);
    t[104..108].copy_from_slice(&crc.to_le_bytes());
    t
}

fn decode_trailer(t: &[u8; TRAILER_SIZE]) -> std::result::Result<CheckpointMeta, String> {
    if t[0..8] != TRAILER_MAGIC {
        return Err("no checkpoint trailer (bad magic bytes)".into());
    }
    if crc32c::crc32c(&t[..104]) != u32::from_le_bytes(t[104..108].try_into().expect("4 bytes")) {
        return Err("trailer checksum mismatch".into());
    }
    let version = u32::from_le_bytes(t[8..12].try_into().expect("4 bytes"));
    if version != TRAILER_VERSION {
        return Err(format!(
            "checkpoint format version {version} is not supported"
        ));
    }
    let u64_at = |at: usize| u64::from_le_bytes(t[at..at + 8].try_into().expect("8 bytes"));
    Ok(CheckpointMeta {
        state_len: u64_at(16),
        position: Position {
            index: u64_at(24),
            term: u64_at(32),
            hash: RecordHash(t[40..72].try_into().expect("32 bytes")),
        },
        state_digest: t[72..104].try_into().expect("32 bytes"),
    })
}

impl CheckpointStore {
    pub fn new(dir: impl Into<PathBuf>) -> CheckpointStore {
        CheckpointStore { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes a checkpoint atomically. `write_state` writes the state bytes and returns their
    /// digest.
    pub fn write(
        &self,
        position: Position,
        write_state: impl FnOnce(&mut dyn Write) -> io::Result<[u8; 32]>,
    ) -> Result<Checkpoint> {
        fs::create_dir_all(&self.dir)
            .map_err(JournalError::io("creating checkpoint directory", &self.dir))?;
        let path = self.dir.join(file_name(position.index));
        let tmp = path.with_extension("ckpt.tmp");
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&tmp)
            .map_err(JournalError::io("creating", &tmp))?;
        let mut out = CountingWriter {
            inner: BufWriter::with_capacity(1 << 20, file),
            bytes: 0,
        };
        let state_digest =
            write_state(&mut out).map_err(JournalError::io("writing checkpoint", &tmp))?;
        let meta = CheckpointMeta {
            position,
            state_digest,
            state_len: out.bytes,
        };
        let file = out.inner.into_inner().map_err(|e| JournalError::Io {
            action: "writing checkpoint",
            path: tmp.clone(),
            source: e.into_error(),
        })?;
        let mut file = file;
        file.write_all(&encode_trailer(&meta))
            .map_err(JournalError::io("writing checkpoint", &tmp))?;
        file.sync_all().map_err(JournalError::io("syncing", &tmp))?;
        drop(file);
        fs::rename(&tmp, &path)
            .map_err(JournalError::io("renaming checkpoint into place", &path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(JournalError::io("syncing directory", &self.dir))?;
        self.remove_old()?;
        Ok(Checkpoint { path, meta })
    }

    fn indexes(&self) -> Result<Vec<u64>> {
        let mut indexes = Vec::new();
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(indexes),
            Err(error) => return Err(JournalError::io("listing checkpoints in", &self.dir)(error)),
        };
        for entry in entries {
            let entry = entry.map_err(JournalError::io("listing checkpoints in", &self.dir))?;
            if let Some(index) = entry.file_name().to_str().and_then(parse_file_name) {
                indexes.push(index);
            }
        }
        indexes.sort_unstable();
        Ok(indexes)
    }

    fn remove_old(&self) -> Result<()> {
        let indexes = self.indexes()?;
        for &index in indexes.iter().rev().skip(CHECKPOINTS_KEPT) {
            let path = self.dir.join(file_name(index));
            fs::remove_file(&path).map_err(JournalError::io("removing old checkpoint", &path))?;
        }
        Ok(())
    }

    /// The newest checkpoint, if any. A newest checkpoint with a damaged trailer is an error
    /// (renames are atomic, so damage means the disk lost data): it is not silently skipped.
    pub fn latest(&self) -> Result<Option<Checkpoint>> {
        let Some(&index) = self.indexes()?.last() else {
            return Ok(None);
        };
        let path = self.dir.join(file_name(index));
        let bad = |reason: String| JournalError::BadCheckpoint {
            path: path.clone(),
            reason,
        };
        let mut file = File::open(&path).map_err(JournalError::io("opening", &path))?;
        let len = file
            .metadata()
            .map_err(JournalError::io("reading metadata of", &path))?
            .len();
        if len < TRAILER_SIZE as u64 {
            return Err(bad(format!("{len} bytes is too short to be a checkpoint")));
        }
        file.seek(SeekFrom::Start(len - TRAILER_SIZE as u64))
            .map_err(JournalError::io("seeking in", &path))?;
        let mut trailer = [0u8; TRAILER_SIZE];
        file.read_exact(&mut trailer)
            .map_err(JournalError::io("reading", &path))?;
        let meta = decode_trailer(&trailer).map_err(bad)?;
        if meta.state_len != len - TRAILER_SIZE as u64 {
            return Err(bad(format!(
                "trailer says {} state bytes, file holds {}",
                meta.state_len,
                len - TRAILER_SIZE as u64
            )));
        }
        if meta.position.index != index {
            return Err(bad(format!(
                "file name says record {index}, trailer says {}",
                meta.position.index
            )));
        }
        Ok(Some(Checkpoint { path, meta }))
    }
}

impl Checkpoint {
    /// A reader over the state bytes (the caller checks them against `meta.state_digest`).
    pub fn state_reader(&self) -> Result<impl Read + use<>> {
        let file = File::open(&self.path).map_err(JournalError::io("opening", &self.path))?;
        Ok(BufReader::with_capacity(1 << 20, file).take(self.meta.state_len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_round_trips_and_only_the_two_newest_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(dir.path());
        assert!(store.latest().unwrap().is_none());
        for index in 1..=4u64 {
            let position = Position {
                index,
                term: 1,
                hash: RecordHash([index as u8; 32]),
            };
            store
                .write(position, |out| {
                    out.write_all(&vec![index as u8; 1000 * index as usize])?;
                    Ok([7; 32])
                })
                .unwrap();
        }
        let latest = store.latest().unwrap().unwrap();
        assert_eq!(latest.meta.position.index, 4);
        assert_eq!(latest.meta.state_digest, [7; 32]);
        let mut state = Vec::new();
        latest
            .state_reader()
            .unwrap()
            .read_to_end(&mut state)
            .unwrap();
        assert_eq!(state, vec![4u8; 4000]);
        assert_eq!(store.indexes().unwrap(), vec![3, 4]);
    }

    #[test]
    fn a_damaged_checkpoint_trailer_is_reported_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(dir.path());
        let written = store.write(
            Position {
                index: 9,
                ..Position::default()
            },
            |out| {
                out.write_all(b"state")?;
                Ok([0; 32])
            },
        );
        let path = written.unwrap().path;
        let mut bytes = fs::read(&path).unwrap();
        let at = bytes.len() - 20;
        bytes[at] ^= 1;
        fs::write(&path, bytes).unwrap();
        let error = store.latest().unwrap_err().to_string();
        assert!(
            error.contains("checkpoint-00000000000000000009.ckpt"),
            "{error}"
        );
        assert!(error.contains("checksum"), "{error}");
    }
}
