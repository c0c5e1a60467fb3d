//! The file-I/O seam under the journal: the few operations the journal, the Raft log's metadata
//! and the snapshot files need (open, list, append, read at, set length, sync, remove, rename),
//! with the real implementation on the operating system's files.
//!
//! The simulator implements [`Storage`] with a disk that loses unsynced writes, tears the last
//! write and rots bits, so the production journal and Raft log run unchanged over either. This
//! module must stay narrow: nothing here knows records, segments or entries.

use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

/// How a file is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// An existing file, read only.
    Read,
    /// An existing file, for reading and appending.
    Append,
    /// A new file that must not exist yet, for appending.
    CreateNew,
    /// A file created empty (an existing one is truncated), for appending.
    CreateTruncate,
}

/// A directory of files: what the journal and the replica's small durable files live on.
///
/// Metadata operations (`create`, `remove`, `rename`) are durable once [`Storage::sync_dir`]
/// of their directory returned; file contents once [`StorageFile::sync`] returned.
pub trait Storage: Debug + Send + Sync + 'static {
    /// Creates `dir` and its parents (nothing if it exists).
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// The names of the files in `dir` (`NotFound` if it does not exist).
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn StorageFile>>;
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Replaces `to` with `from` atomically.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the creations, removals and renames in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// One open file.
pub trait StorageFile: Debug + Send + Sync {
    fn size(&self) -> io::Result<u64>;
    /// Reads at `offset` into `buf`; fewer bytes than asked only at the end of the file.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
    /// Appends `parts` as one write (not durable until [`StorageFile::sync`]).
    fn append(&mut self, parts: &[&[u8]]) -> io::Result<()>;
    /// Cuts (or extends with zeros) the file to `len` bytes.
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    /// Makes everything written durable (`fdatasync`).
    fn sync(&mut self) -> io::Result<()>;
    /// Advice: the synced bytes in `from..to` will not be read soon (the OS may drop them from
    /// its cache). Does nothing where there is no cache.
    fn drop_from_cache(&self, _from: u64, _to: u64) {}
}

impl dyn StorageFile {
    /// Reads exactly `buf.len()` bytes at `offset`.
    pub fn read_exact_at(&self, mut offset: u64, mut buf: &mut [u8]) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(offset, buf)? {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n => {
                    offset += n as u64;
                    buf = &mut buf[n..];
                }
            }
        }
        Ok(())
    }
}

/// Sequential reads over a [`StorageFile`] from a starting offset (buffering is the caller's:
/// wrap it in a `BufReader`).
pub struct FileCursor {
    file: Box<dyn StorageFile>,
    offset: u64,
}

impl FileCursor {
    pub fn new(file: Box<dyn StorageFile>, offset: u64) -> FileCursor {
        FileCursor { file, offset }
    }
}

impl Read for FileCursor {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(self.offset, buf)?;
        self.offset += n as u64;
        Ok(n)
    }
}

/// The whole of the file at `path`, or `None` if there is none.
pub fn read_file(storage: &dyn Storage, path: &Path) -> io::Result<Option<Vec<u8>>> {
    let file = match storage.open(path, OpenMode::Read) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    let len = usize::try_from(file.size()?).map_err(io::Error::other)?;
    let mut bytes = vec![0; len];
    file.read_exact_at(0, &mut bytes)?;
    Ok(Some(bytes))
}

/// Writes `bytes` to `path` atomically and durably: a temporary file beside it, synced, renamed
/// over it, and the directory synced. A crash leaves either the old contents or the new.
pub fn write_atomically(storage: &dyn Storage, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other(format!("{} has no directory", path.display())))?;
    let tmp = path.with_extension("tmp");
    let mut file = storage.open(&tmp, OpenMode::CreateTruncate)?;
    file.append(&[bytes])?;
    file.sync()?;
    drop(file);
    storage.rename(&tmp, path)?;
    storage.sync_dir(dir)
}

/// The operating system's files.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealStorage;

impl RealStorage {
    /// The real file system, shared.
    pub fn shared() -> Arc<dyn Storage> {
        Arc::new(RealStorage)
    }
}

impl Storage for RealStorage {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            if let Some(name) = entry?.file_name().to_str() {
                names.push(name.to_owned());
            }
        }
        Ok(names)
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn StorageFile>> {
        let mut options = OpenOptions::new();
        match mode {
            OpenMode::Read => options.read(true),
            OpenMode::Append => options.read(true).append(true),
            OpenMode::CreateNew => options.read(true).append(true).create_new(true),
            OpenMode::CreateTruncate => options.write(true).create(true).truncate(true),
        };
        Ok(Box::new(RealFile(options.open(path)?)))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

#[derive(Debug)]
struct RealFile(File);

impl StorageFile for RealFile {
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        #[cfg(unix)]
        {
            std::os::unix::fs::FileExt::read_at(&self.0, buf, offset)
        }
        #[cfg(windows)]
        {
            std::os::windows::fs::FileExt::seek_read(&self.0, buf, offset)
        }
    }

    fn append(&mut self, parts: &[&[u8]]) -> io::Result<()> {
        for part in parts {
            self.0.write_all(part)?;
        }
        Ok(())
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn sync(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn drop_from_cache(&self, from: u64, to: u64) {
        #[cfg(target_os = "linux")]
        if let Some(len) = std::num::NonZeroU64::new(to.saturating_sub(from)) {
            let _ = rustix::fs::fadvise(&self.0, from, Some(len), rustix::fs::Advice::DontNeed);
        }
        #[cfg(not(target_os = "linux"))]
        let _ = (from, to);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_atomic_write_replaces_the_whole_file_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let storage = RealStorage;
        let path = dir.path().join("meta.json");
        assert_eq!(read_file(&storage, &path).unwrap(), None);
        write_atomically(&storage, &path, b"first, longer contents").unwrap();
        write_atomically(&storage, &path, b"second").unwrap();
        assert_eq!(read_file(&storage, &path).unwrap().unwrap(), b"second");
        assert_eq!(storage.list(dir.path()).unwrap(), vec!["meta.json"]);
    }

    #[test]
    fn appends_read_back_at_any_offset_and_set_len_cuts() {
        let dir = tempfile::tempdir().unwrap();
        let storage = RealStorage;
        let path = dir.path().join("f");
        let mut file = storage.open(&path, OpenMode::CreateNew).unwrap();
        file.append(&[b"hello ", b"world"]).unwrap();
        file.sync().unwrap();
        let mut buf = [0u8; 5];
        file.read_exact_at(6, &mut buf).unwrap();
        assert_eq!(&buf, b"world");
        file.set_len(5).unwrap();
        assert_eq!(file.size().unwrap(), 5);
        assert!(file.read_exact_at(3, &mut buf).is_err());
        assert!(storage.open(&path, OpenMode::CreateNew).is_err());
    }
}
