//! One replica's simulated disk, under the journal's file-I/O seam ([`journal::storage`]): the
//! production log store and state machine write their journal segments, vote file and snapshot
//! on it exactly as they write real files.
//!
//! What it does to them: appended bytes are unsynced (in the page cache) until the file's sync;
//! a crash keeps a random prefix of each file's unsynced writes, may keep the next write torn
//! (cut short at a random byte), and loses the rest. File creation, removal, renames and
//! truncation are durable at once (as a journaling file system's metadata, synced promptly;
//! the journal syncs the directory after each anyway). Latent corruption flips a bit of a
//! synced journal record; reading it must fail. Every handle carries the disk generation it was
//! opened at: after a crash the generation moves on, and the dead instance's late writes land
//! nowhere.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use journal::storage::{OpenMode, Storage, StorageFile};
use journal::{HEADER_SIZE, Header};
use rand::Rng;
use rand::rngs::SmallRng;

/// One file: what the page cache shows, how much of it is durable, and the unsynced writes.
#[derive(Default)]
struct SimFile {
    data: Vec<u8>,
    durable_len: usize,
    /// The lengths of the writes after `durable_len`, in order.
    unsynced_writes: Vec<usize>,
}

/// What a crash did to the disk.
#[derive(Debug, Default)]
pub struct CrashDamage {
    pub unsynced_writes_lost: u64,
    pub torn: bool,
}

/// A replica's disk.
#[derive(Default)]
pub struct SimDisk {
    generation: u64,
    files: BTreeMap<PathBuf, SimFile>,
}

fn crashed() -> io::Error {
    io::Error::other("the machine crashed")
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file", path.display()),
    )
}

impl SimDisk {
    /// A handle on this disk for the instance starting now.
    pub fn storage(disk: &Arc<Mutex<SimDisk>>) -> SimStorage {
        let generation = disk.lock().expect("never poisoned").generation;
        SimStorage {
            disk: Arc::clone(disk),
            generation,
        }
    }

    /// Holds a journal record or a snapshot (anything a replica could start from).
    pub fn holds_log_or_snapshot(&self) -> bool {
        self.files.iter().any(|(path, file)| {
            !file.data.is_empty()
                && (path.extension().is_some_and(|e| e == "seg")
                    || path.file_name().is_some_and(|n| n == "raft-snapshot.bin"))
        })
    }

    /// Crashes the machine: each file keeps its durable bytes and a random prefix of its
    /// unsynced writes (what the page cache happened to flush); the first write lost may survive
    /// torn.
    pub fn crash(&mut self, rng: &mut SmallRng, torn_write: f64) -> CrashDamage {
        self.generation += 1;
        let mut damage = CrashDamage::default();
        for file in self.files.values_mut() {
            let writes = std::mem::take(&mut file.unsynced_writes);
            if writes.is_empty() {
                continue;
            }
            let flushed = rng.random_range(0..=writes.len());
            let mut keep = file.durable_len + writes[..flushed].iter().sum::<usize>();
            damage.unsynced_writes_lost += (writes.len() - flushed) as u64;
            if let Some(&next) = writes.get(flushed)
                && next > 1
                && rng.random_bool(torn_write)
            {
                keep += rng.random_range(1..next);
                damage.torn = true;
            }
            file.data.truncate(keep);
            file.durable_len = keep;
        }
        damage
    }

    /// Flips one bit of a synced journal record that is not the newest segment's last record (a
    /// record at the very end that fails its checksum cannot be told from a torn write; see
    /// ARCHITECTURE.md). Returns where it hit.
    pub fn corrupt(&mut self, rng: &mut SmallRng) -> Option<String> {
        let segments: Vec<&PathBuf> = self
            .files
            .keys()
            .filter(|path| path.extension().is_some_and(|e| e == "seg"))
            .collect();
        let newest = segments.last().copied().cloned();
        let mut candidates = Vec::new();
        for path in segments {
            let file = &self.files[path];
            let mut records = record_spans(&file.data[..file.durable_len]);
            if Some(path) == newest.as_ref() {
                records.pop();
            }
            candidates.extend(records.into_iter().map(|span| (path.clone(), span)));
        }
        if candidates.is_empty() {
            return None;
        }
        let (path, (start, len)) = candidates.swap_remove(rng.random_range(0..candidates.len()));
        let offset = start + rng.random_range(0..len);
        let bit = rng.random_range(0..8);
        self.files.get_mut(&path).expect("listed above").data[offset] ^= 1 << bit;
        Some(format!("{} byte {offset}", path.display()))
    }
}

/// The (offset, length) of each whole record in a segment's bytes.
fn record_spans(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut offset = 0;
    while let Some(header) = bytes
        .get(offset..offset + HEADER_SIZE)
        .and_then(|b| <&[u8; HEADER_SIZE]>::try_from(b).ok())
        .and_then(|b| Header::decode(b).ok())
    {
        let len = header.record_len() as usize;
        if offset + len > bytes.len() {
            break;
        }
        spans.push((offset, len));
        offset += len;
    }
    spans
}

/// One instance's view of its disk (see [`SimDisk::storage`]).
#[derive(Clone)]
pub struct SimStorage {
    disk: Arc<Mutex<SimDisk>>,
    generation: u64,
}

impl std::fmt::Debug for SimStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SimStorage(generation {})", self.generation)
    }
}

impl SimStorage {
    /// The disk, if the instance this handle belongs to has not crashed.
    fn disk(&self) -> io::Result<MutexGuard<'_, SimDisk>> {
        let disk = self.disk.lock().expect("never poisoned");
        if disk.generation == self.generation {
            Ok(disk)
        } else {
            Err(crashed())
        }
    }
}

impl Storage for SimStorage {
    fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        // Directories are implied by the paths of their files.
        self.disk().map(drop)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let disk = self.disk()?;
        Ok(disk
            .files
            .keys()
            .filter(|path| path.parent() == Some(dir))
            .filter_map(|path| path.file_name()?.to_str().map(str::to_owned))
            .collect())
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn StorageFile>> {
        let mut disk = self.disk()?;
        let exists = disk.files.contains_key(path);
        match mode {
            OpenMode::Read | OpenMode::Append if !exists => return Err(not_found(path)),
            OpenMode::CreateNew if exists => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists", path.display()),
                ));
            }
            OpenMode::CreateNew => {
                disk.files.insert(path.to_path_buf(), SimFile::default());
            }
            OpenMode::CreateTruncate => {
                disk.files.insert(path.to_path_buf(), SimFile::default());
            }
            OpenMode::Read | OpenMode::Append => {}
        }
        Ok(Box::new(SimFileHandle {
            storage: self.clone(),
            path: path.to_path_buf(),
        }))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.disk()?
            .files
            .remove(path)
            .map(drop)
            .ok_or_else(|| not_found(path))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut disk = self.disk()?;
        let file = disk.files.remove(from).ok_or_else(|| not_found(from))?;
        disk.files.insert(to.to_path_buf(), file);
        Ok(())
    }

    fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        self.disk().map(drop)
    }
}

struct SimFileHandle {
    storage: SimStorage,
    path: PathBuf,
}

impl std::fmt::Debug for SimFileHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SimFile({})", self.path.display())
    }
}

impl SimFileHandle {
    fn with<T>(&self, act: impl FnOnce(&mut SimFile) -> T) -> io::Result<T> {
        let mut disk = self.storage.disk()?;
        let file = disk
            .files
            .get_mut(&self.path)
            .ok_or_else(|| not_found(&self.path))?;
        Ok(act(file))
    }
}

impl StorageFile for SimFileHandle {
    fn size(&self) -> io::Result<u64> {
        self.with(|file| file.data.len() as u64)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.with(|file| {
            let start = (offset as usize).min(file.data.len());
            let n = buf.len().min(file.data.len() - start);
            buf[..n].copy_from_slice(&file.data[start..start + n]);
            n
        })
    }

    fn append(&mut self, parts: &[&[u8]]) -> io::Result<()> {
        self.with(|file| {
            let len: usize = parts.iter().map(|p| p.len()).sum();
            for part in parts {
                file.data.extend_from_slice(part);
            }
            if len > 0 {
                file.unsynced_writes.push(len);
            }
        })
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.with(|file| {
            let len = len as usize;
            file.data.resize(len, 0);
            // Writes past the cut are gone; the cut itself is durable at once.
            let mut kept = file.durable_len.min(len);
            file.unsynced_writes.retain(|&write| {
                kept += write;
                kept <= len
            });
            file.durable_len = file.durable_len.min(len);
        })
    }

    fn sync(&mut self) -> io::Result<()> {
        self.with(|file| {
            file.durable_len = file.data.len();
            file.unsynced_writes.clear();
        })
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    fn write(storage: &SimStorage, path: &str, parts: &[&[u8]], sync: bool) {
        let mut file = storage
            .open(Path::new(path), OpenMode::CreateTruncate)
            .unwrap();
        for part in parts {
            file.append(&[part]).unwrap();
        }
        if sync {
            file.sync().unwrap();
        }
    }

    fn contents(storage: &SimStorage, path: &str) -> Vec<u8> {
        journal::storage::read_file(storage, Path::new(path))
            .unwrap()
            .unwrap()
    }

    #[test]
    fn a_crash_keeps_synced_bytes_and_a_prefix_of_the_unsynced_writes() {
        let disk = Arc::new(Mutex::new(SimDisk::default()));
        let storage = SimDisk::storage(&disk);
        write(&storage, "/d/synced", &[b"aaaa", b"bbbb"], true);
        write(&storage, "/d/unsynced", &[b"cccc", b"dddd", b"eeee"], false);
        let mut rng = SmallRng::seed_from_u64(3);
        let damage = disk.lock().unwrap().crash(&mut rng, 0.0);
        // The old instance's handle is dead; a new one sees what survived.
        assert!(storage.list(Path::new("/d")).is_err());
        let storage = SimDisk::storage(&disk);
        assert_eq!(contents(&storage, "/d/synced"), b"aaaabbbb");
        let survived = contents(&storage, "/d/unsynced");
        assert!(b"ccccddddeeee".starts_with(&survived));
        assert_eq!(survived.len() % 4, 0, "no torn write was allowed");
        assert_eq!(damage.unsynced_writes_lost, 3 - survived.len() as u64 / 4);
    }

    #[test]
    fn a_torn_write_leaves_part_of_the_first_lost_write() {
        let mut torn_seen = false;
        for seed in 0..50 {
            let disk = Arc::new(Mutex::new(SimDisk::default()));
            let storage = SimDisk::storage(&disk);
            write(&storage, "/f", &[b"0123456789"], false);
            let damage = disk
                .lock()
                .unwrap()
                .crash(&mut SmallRng::seed_from_u64(seed), 1.0);
            let survived = contents(&SimDisk::storage(&disk), "/f");
            assert!(b"0123456789".starts_with(&survived));
            if damage.torn {
                torn_seen = true;
                assert!((1..10).contains(&survived.len()));
            }
        }
        assert!(torn_seen);
    }
}
