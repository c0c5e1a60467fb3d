//! The journal proper: recovery on open, appends, syncs, reads, truncation and purging.
//!
//! A `Journal` is used from one thread at a time (the group committer owns it while the node
//! runs). Appends are buffered in the OS until [`Journal::sync`]; nothing appended may be
//! acknowledged to anyone before the `sync` that covers it returns.

use std::collections::BTreeMap;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use crate::error::{JournalError, Result};
use crate::record::{HEADER_SIZE, Header, RECORD_BODY_BYTES_MAX, RecordHash, record_hash};
use crate::segment::{
    RecordLocation, Segment, TornTail, parse_segment_file_name, scan_segment, segment_file_name,
};
use crate::storage::{FileCursor, OpenMode, RealStorage, Storage, StorageFile};

/// How a journal is opened.
#[derive(Debug, Clone)]
pub struct JournalOptions {
    /// A new segment is started once the current one reaches this size.
    pub segment_bytes_max: u64,
    /// Open without changing anything: a torn tail is reported, not cut off, and appends fail.
    pub read_only: bool,
    /// Keep what was written in the OS page cache after it is synced. Off by default: records
    /// are written once and read back rarely (a lagging replica, a restart), so caching them
    /// only crowds out memory that the next writes and the ledger state must then take fresh.
    pub keep_synced_in_page_cache: bool,
    /// The files the journal lives on (the operating system's, or the simulator's).
    pub storage: Arc<dyn Storage>,
}

impl Default for JournalOptions {
    fn default() -> Self {
        JournalOptions {
            segment_bytes_max: limits::JOURNAL_SEGMENT_BYTES_MAX_DEFAULT,
            read_only: false,
            keep_synced_in_page_cache: false,
            storage: RealStorage::shared(),
        }
    }
}

/// A point in the journal: a record's index, term and hash (index 0: before the first record).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    pub index: u64,
    pub term: u64,
    pub hash: RecordHash,
}

/// What recovery found when the journal was opened.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    pub segments: usize,
    pub records: u64,
    /// A torn write at the end (cut off unless the journal was opened read-only).
    pub torn_tail: Option<TornTail>,
}

/// One record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    pub index: u64,
    pub term: u64,
    pub hash: RecordHash,
    pub body: Vec<u8>,
}

/// Where a record lives, for readers on other threads.
#[derive(Debug, Clone)]
struct Spot {
    path: Arc<PathBuf>,
    offset: u64,
}

type Spots = Arc<RwLock<BTreeMap<u64, Spot>>>;

/// Reads records by index from another thread while the journal's owner appends. Records that
/// were truncated or purged meanwhile are simply not found.
#[derive(Debug, Clone)]
pub struct JournalReader {
    spots: Spots,
    storage: Arc<dyn Storage>,
}

impl JournalReader {
    /// True once record `index` has been written (it can be read back).
    pub fn holds(&self, index: u64) -> bool {
        self.spots
            .read()
            .expect("never poisoned")
            .contains_key(&index)
    }

    /// Record `index`, checked (header, body CRC, index), or `None` if the journal does not
    /// hold it.
    pub fn read(&self, index: u64) -> Result<Option<StoredRecord>> {
        let Some(spot) = self
            .spots
            .read()
            .expect("never poisoned")
            .get(&index)
            .cloned()
        else {
            return Ok(None);
        };
        let path = spot.path.as_ref();
        let file = self
            .storage
            .open(path, OpenMode::Read)
            .map_err(JournalError::io("opening journal segment", path))?;
        let mut header_bytes = [0u8; HEADER_SIZE];
        file.read_exact_at(spot.offset, &mut header_bytes)
            .map_err(JournalError::io("reading journal segment", path))?;
        let corrupt = |reason: String| JournalError::Corrupt {
            path: path.clone(),
            offset: spot.offset,
            reason,
        };
        let header =
            Header::decode(&header_bytes).map_err(|problem| corrupt(problem.to_string()))?;
        if header.index != index {
            return Err(corrupt(format!(
                "record {} found where record {index} was expected",
                header.index
            )));
        }
        let mut body = vec![0u8; header.body_len as usize];
        file.read_exact_at(spot.offset + HEADER_SIZE as u64, &mut body)
            .map_err(JournalError::io("reading journal segment", path))?;
        if crc32c::crc32c(&body) != header.body_crc {
            return Err(corrupt(format!("body checksum mismatch in record {index}")));
        }
        Ok(Some(StoredRecord {
            index,
            term: header.term,
            hash: header.hash,
            body,
        }))
    }
}

/// The durable log.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    options: JournalOptions,
    segments: Vec<Segment>,
    /// Every record's spot, shared with [`JournalReader`]s.
    spots: Spots,
    /// The newest segment, open for appending.
    active: Option<Box<dyn StorageFile>>,
    /// How far into the newest segment the OS was told to drop synced pages from its cache.
    uncached_len: u64,
    /// The position just before the first record kept (index 0 for a journal never purged).
    base: Position,
    last: Position,
}

fn sync_dir(storage: &dyn Storage, dir: &Path) -> Result<()> {
    storage
        .sync_dir(dir)
        .map_err(JournalError::io("syncing directory", dir))
}

impl Journal {
    /// Opens (creating if needed) the journal in `dir` and recovers it.
    pub fn open(dir: impl AsRef<Path>, options: JournalOptions) -> Result<(Journal, Recovery)> {
        let dir = dir.as_ref().to_path_buf();
        let storage = Arc::clone(&options.storage);
        if !options.read_only {
            storage
                .create_dir_all(&dir)
                .map_err(JournalError::io("creating journal directory", &dir))?;
        }
        let mut firsts: Vec<u64> = storage
            .list(&dir)
            .map_err(JournalError::io("listing journal directory", &dir))?
            .iter()
            .filter_map(|name| parse_segment_file_name(name))
            .collect();
        firsts.sort_unstable();

        let mut recovery = Recovery {
            segments: firsts.len(),
            ..Recovery::default()
        };
        let mut segments: Vec<Segment> = Vec::with_capacity(firsts.len());
        for (n, &first) in firsts.iter().enumerate() {
            let path = dir.join(segment_file_name(first));
            let is_last = n + 1 == firsts.len();
            let prev_hash = match segments.last() {
                Some(previous) => {
                    let expected_first = previous
                        .last_index()
                        .map_or(previous.first_index, |last| last + 1);
                    if first != expected_first || previous.records.is_empty() {
                        return Err(JournalError::Gap(format!(
                            "{} should start at record {expected_first} but starts at {first}",
                            path.display()
                        )));
                    }
                    Some(previous.records.last().expect("checked non-empty").hash)
                }
                None if first == 1 => Some(RecordHash::default()),
                None => None,
            };
            let scan = scan_segment(storage.as_ref(), &path, first, prev_hash, is_last)?;
            recovery.records += scan.segment.records.len() as u64;
            if let Some(torn) = scan.torn {
                if !options.read_only {
                    let mut file = storage
                        .open(&path, OpenMode::Append)
                        .map_err(JournalError::io("opening", &path))?;
                    file.set_len(torn.offset)
                        .map_err(JournalError::io("truncating torn tail of", &path))?;
                    file.sync().map_err(JournalError::io("syncing", &path))?;
                }
                recovery.torn_tail = Some(torn);
            }
            segments.push(scan.segment);
        }
        // An empty newest segment (its only record was torn) is removed, so that the next
        // append can start a segment named after its own index.
        if !options.read_only && segments.last().is_some_and(|s| s.records.is_empty()) {
            let empty = segments.pop().expect("checked");
            storage
                .remove(&empty.path)
                .map_err(JournalError::io("removing empty segment", &empty.path))?;
            sync_dir(storage.as_ref(), &dir)?;
        }

        let base = match segments.first() {
            Some(first) => Position {
                index: first.first_index - 1,
                term: 0,
                hash: first.prev_hash,
            },
            None => Position::default(),
        };
        let last = segments
            .iter()
            .rev()
            .find_map(|s| {
                s.records.last().map(|r| Position {
                    index: s.last_index().expect("non-empty"),
                    term: r.term,
                    hash: r.hash,
                })
            })
            .unwrap_or(base);
        let active = match segments.last() {
            Some(segment) if !options.read_only => Some(
                storage
                    .open(&segment.path, OpenMode::Append)
                    .map_err(JournalError::io("opening for append", &segment.path))?,
            ),
            _ => None,
        };
        let mut spots = BTreeMap::new();
        for segment in &segments {
            let path = Arc::new(segment.path.clone());
            for (n, record) in segment.records.iter().enumerate() {
                spots.insert(
                    segment.first_index + n as u64,
                    Spot {
                        path: Arc::clone(&path),
                        offset: record.offset,
                    },
                );
            }
        }
        Ok((
            Journal {
                dir,
                options,
                segments,
                spots: Arc::new(RwLock::new(spots)),
                active,
                uncached_len: 0,
                base,
                last,
            },
            recovery,
        ))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The last record (or the base position if the journal is empty).
    pub fn last(&self) -> Position {
        self.last
    }

    /// Index of the oldest record kept (`last().index + 1` when empty).
    pub fn first_index(&self) -> u64 {
        self.base.index + 1
    }

    /// The position of record `index`, if the journal holds it (or it is the base).
    pub fn position(&self, index: u64) -> Option<Position> {
        if index == self.base.index {
            return Some(self.base);
        }
        let segment = self.segment_of(index)?;
        let location = segment.records[(index - segment.first_index) as usize];
        Some(Position {
            index,
            term: location.term,
            hash: location.hash,
        })
    }

    fn segment_of(&self, index: u64) -> Option<&Segment> {
        let n = self
            .segments
            .partition_point(|s| s.first_index <= index)
            .checked_sub(1)?;
        let segment = &self.segments[n];
        (index - segment.first_index < segment.records.len() as u64).then_some(segment)
    }

    /// Appends record `index` (which must be `last().index + 1`). Not durable until [`sync`].
    ///
    /// [`sync`]: Journal::sync
    pub fn append(&mut self, term: u64, index: u64, body: &[u8]) -> Result<Position> {
        if self.options.read_only {
            return Err(JournalError::Failed(
                "the journal was opened read-only".into(),
            ));
        }
        if index != self.last.index + 1 {
            return Err(JournalError::OutOfOrder {
                index,
                expected: self.last.index + 1,
            });
        }
        if body.len() > RECORD_BODY_BYTES_MAX {
            return Err(JournalError::TooLarge(body.len()));
        }
        let header = Header::seal(term, index, self.last.hash, body);
        let needs_new_segment = match self.segments.last() {
            None => true,
            Some(segment) => {
                segment.len > 0
                    && segment.len + header.record_len() > self.options.segment_bytes_max
            }
        };
        if needs_new_segment {
            self.start_segment(index)?;
        }
        let segment = self.segments.last_mut().expect("a segment is active");
        let file = self.active.as_mut().expect("a segment is open");
        let written = file.append(&[&header.encode(), body]);
        if let Err(source) = written {
            // The file may now end in a partial record; only a restart (recovery) may go on.
            self.active = None;
            return Err(JournalError::Io {
                action: "appending to",
                path: segment.path.clone(),
                source,
            });
        }
        self.spots.write().expect("never poisoned").insert(
            index,
            Spot {
                path: Arc::new(segment.path.clone()),
                offset: segment.len,
            },
        );
        segment.records.push(RecordLocation {
            offset: segment.len,
            len: header.record_len(),
            term,
            hash: header.hash,
        });
        segment.len += header.record_len();
        self.last = Position {
            index,
            term,
            hash: header.hash,
        };
        Ok(self.last)
    }

    fn start_segment(&mut self, first_index: u64) -> Result<()> {
        // Seal the current segment first: recovery treats damage in older segments as
        // corruption, never as a torn tail.
        self.sync()?;
        let path = self.dir.join(segment_file_name(first_index));
        let file = self
            .options
            .storage
            .open(&path, OpenMode::CreateNew)
            .map_err(JournalError::io("creating journal segment", &path))?;
        sync_dir(self.options.storage.as_ref(), &self.dir)?;
        self.segments.push(Segment {
            path,
            first_index,
            prev_hash: self.last.hash,
            records: Vec::new(),
            len: 0,
        });
        self.active = Some(file);
        self.uncached_len = 0;
        Ok(())
    }

    /// Makes every appended record durable (`fdatasync`).
    pub fn sync(&mut self) -> Result<()> {
        match (&mut self.active, self.segments.last()) {
            (Some(file), Some(segment)) => {
                file.sync()
                    .map_err(JournalError::io("syncing", &segment.path))?;
                if !self.options.keep_synced_in_page_cache {
                    file.drop_from_cache(self.uncached_len, segment.len);
                    self.uncached_len = segment.len;
                }
                Ok(())
            }
            (None, Some(segment)) if !self.options.read_only => Err(JournalError::Failed(format!(
                "an earlier write to {} failed",
                segment.path.display()
            ))),
            _ => Ok(()),
        }
    }

    /// Removes every record after `index` (Raft: a new leader overwrote them). Durable on return.
    pub fn truncate_after(&mut self, index: u64) -> Result<()> {
        if index >= self.last.index {
            return Ok(());
        }
        if index < self.base.index {
            return Err(JournalError::NotFound {
                index,
                first: self.first_index(),
                last: self.last.index,
            });
        }
        while let Some(segment) = self.segments.last_mut() {
            if segment.first_index > index {
                let path = segment.path.clone();
                self.segments.pop();
                self.active = None;
                self.options
                    .storage
                    .remove(&path)
                    .map_err(JournalError::io("removing journal segment", &path))?;
                continue;
            }
            let keep = (index + 1 - segment.first_index) as usize;
            let new_len = segment.records.get(keep).map_or(segment.len, |r| r.offset);
            segment.records.truncate(keep);
            segment.len = new_len;
            let mut file = self
                .options
                .storage
                .open(&segment.path, OpenMode::Append)
                .map_err(JournalError::io("opening for append", &segment.path))?;
            file.set_len(new_len)
                .map_err(JournalError::io("truncating", &segment.path))?;
            file.sync()
                .map_err(JournalError::io("syncing", &segment.path))?;
            self.active = Some(file);
            self.uncached_len = self.uncached_len.min(new_len);
            break;
        }
        sync_dir(self.options.storage.as_ref(), &self.dir)?;
        self.last = self.position(index).unwrap_or(self.base);
        self.spots
            .write()
            .expect("never poisoned")
            .split_off(&(index + 1));
        Ok(())
    }

    /// Deletes whole segments whose records are all before `index` (they are covered by a
    /// snapshot). The newest segment is always kept.
    pub fn purge_before(&mut self, index: u64) -> Result<u64> {
        let mut purged = 0;
        while self.segments.len() > 1 {
            let first = &self.segments[0];
            let last_index = first.last_index().unwrap_or(first.first_index);
            if last_index >= index {
                break;
            }
            let removed = self.segments.remove(0);
            self.options
                .storage
                .remove(&removed.path)
                .map_err(JournalError::io("removing journal segment", &removed.path))?;
            let next = &self.segments[0];
            self.base = Position {
                index: next.first_index - 1,
                term: removed.records.last().map_or(0, |r| r.term),
                hash: next.prev_hash,
            };
            purged += removed.records.len() as u64;
        }
        if purged > 0 {
            sync_dir(self.options.storage.as_ref(), &self.dir)?;
            let first = self.first_index();
            let mut spots = self.spots.write().expect("never poisoned");
            *spots = spots.split_off(&first);
        }
        Ok(purged)
    }

    /// Drops every record and makes `next_index` the index of the next append (Raft: a
    /// snapshot installed from the leader covers more than this log holds). The chain starts
    /// afresh: the next record links to a zero hash, and a later open takes that link as found.
    pub fn restart_at(&mut self, next_index: u64) -> Result<()> {
        assert!(next_index >= 1);
        for segment in self.segments.drain(..) {
            self.options
                .storage
                .remove(&segment.path)
                .map_err(JournalError::io("removing journal segment", &segment.path))?;
        }
        self.active = None;
        sync_dir(self.options.storage.as_ref(), &self.dir)?;
        self.base = Position {
            index: next_index - 1,
            term: 0,
            hash: RecordHash::default(),
        };
        self.last = self.base;
        self.spots.write().expect("never poisoned").clear();
        Ok(())
    }

    /// A reader other threads can use while this journal keeps appending.
    pub fn reader(&self) -> JournalReader {
        JournalReader {
            spots: Arc::clone(&self.spots),
            storage: Arc::clone(&self.options.storage),
        }
    }

    /// Reads records from `index` on, checking checksums (and, with `verify_hashes`, recomputing
    /// every hash of the chain).
    pub fn read_from(&self, index: u64, verify_hashes: bool) -> Result<RecordReader> {
        if index < self.first_index() || index > self.last.index + 1 {
            return Err(JournalError::NotFound {
                index,
                first: self.first_index(),
                last: self.last.index,
            });
        }
        let prev = self
            .position(index - 1)
            .expect("the record before a kept one is known");
        Ok(RecordReader {
            storage: Arc::clone(&self.options.storage),
            segments: self.segments.clone(),
            next_index: index,
            end_index: self.last.index,
            prev_hash: prev.hash,
            verify_hashes,
            open: None,
        })
    }
}

/// Sequential reader over a journal's records (see [`Journal::read_from`]).
pub struct RecordReader {
    storage: Arc<dyn Storage>,
    segments: Vec<Segment>,
    next_index: u64,
    end_index: u64,
    prev_hash: RecordHash,
    verify_hashes: bool,
    open: Option<(usize, BufReader<FileCursor>)>,
}

impl RecordReader {
    fn read_next(&mut self) -> Result<StoredRecord> {
        let index = self.next_index;
        let n = self.segments.partition_point(|s| s.first_index <= index) - 1;
        let segment = &self.segments[n];
        let location = segment.records[(index - segment.first_index) as usize];
        let path = segment.path.clone();
        if self.open.as_ref().is_none_or(|(open_n, _)| *open_n != n) {
            let file = self
                .storage
                .open(&path, OpenMode::Read)
                .map_err(JournalError::io("opening journal segment", &path))?;
            let cursor = FileCursor::new(file, location.offset);
            self.open = Some((n, BufReader::with_capacity(limits::IO_BUFFER_BYTES, cursor)));
        }
        let (_, reader) = self.open.as_mut().expect("opened above");
        let mut header_bytes = [0u8; HEADER_SIZE];
        reader
            .read_exact(&mut header_bytes)
            .map_err(JournalError::io("reading journal segment", &path))?;
        let corrupt = |reason: String| JournalError::Corrupt {
            path: path.clone(),
            offset: location.offset,
            reason,
        };
        let header =
            Header::decode(&header_bytes).map_err(|problem| corrupt(problem.to_string()))?;
        if header.index != index || header.hash != location.hash {
            return Err(corrupt(format!(
                "record {index} changed on disk since the journal was opened"
            )));
        }
        if header.prev_hash != self.prev_hash {
            return Err(corrupt(format!(
                "hash chain broken: record {index} does not link to record {}",
                index - 1
            )));
        }
        let mut body = vec![0u8; header.body_len as usize];
        reader
            .read_exact(&mut body)
            .map_err(JournalError::io("reading journal segment", &path))?;
        if crc32c::crc32c(&body) != header.body_crc {
            return Err(corrupt(format!("body checksum mismatch in record {index}")));
        }
        if self.verify_hashes
            && record_hash(&header.prev_hash, header.term, index, &body) != header.hash
        {
            return Err(corrupt(format!(
                "record {index} does not match its hash: its contents were altered"
            )));
        }
        self.prev_hash = header.hash;
        self.next_index += 1;
        Ok(StoredRecord {
            index,
            term: header.term,
            hash: header.hash,
            body,
        })
    }
}

impl Iterator for RecordReader {
    type Item = Result<StoredRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next_index > self.end_index {
            return None;
        }
        let result = self.read_next();
        if result.is_err() {
            self.next_index = self.end_index + 1;
        }
        Some(result)
    }
}
