//! Segment files: naming, and the recovery scan of one segment.
//!
//! A segment is named after the index of its first record (`00000000000000000001.seg`) and
//! holds consecutive records. Only the newest segment can end in a torn write: older ones were
//! synced before the next one was created, so any damage in them is corruption.

use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use crate::error::{JournalError, Result};
use crate::record::{HEADER_SIZE, Header, RecordHash};
use crate::storage::{FileCursor, OpenMode, Storage};

pub(crate) const SEGMENT_SUFFIX: &str = ".seg";

pub(crate) fn segment_file_name(first_index: u64) -> String {
    format!("{first_index:020}{SEGMENT_SUFFIX}")
}

/// The first index encoded in a segment file name, if it is one.
pub(crate) fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Where one record sits and what the chain needs of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordLocation {
    pub offset: u64,
    pub len: u64,
    pub term: u64,
    pub hash: RecordHash,
}

/// One segment as found on disk.
#[derive(Debug, Clone)]
pub(crate) struct Segment {
    pub path: PathBuf,
    pub first_index: u64,
    /// The hash chained into this segment's first record.
    pub prev_hash: RecordHash,
    pub records: Vec<RecordLocation>,
    /// Bytes of valid records.
    pub len: u64,
}

impl Segment {
    pub fn last_index(&self) -> Option<u64> {
        (!self.records.is_empty()).then(|| self.first_index + self.records.len() as u64 - 1)
    }
}

/// A torn tail found (and, unless read-only, cut off) by recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    pub path: PathBuf,
    pub offset: u64,
    pub bytes: u64,
}

pub(crate) struct Scan {
    pub segment: Segment,
    pub torn: Option<TornTail>,
}

fn corrupt(path: &Path, offset: u64, reason: impl Into<String>) -> JournalError {
    JournalError::Corrupt {
        path: path.to_path_buf(),
        offset,
        reason: reason.into(),
    }
}

/// Reads every record of a segment, checking framing, checksums, index order and the hash
/// links (the chain is checked link by link; recomputing every hash is `verify`'s job).
///
/// `prev_hash` is the hash of the record before this segment (from the previous segment) or
/// `None` when this is the oldest segment kept, whose first link is taken as found.
pub(crate) fn scan_segment(
    storage: &dyn Storage,
    path: &Path,
    first_index: u64,
    prev_hash: Option<RecordHash>,
    is_last: bool,
) -> Result<Scan> {
    let file = storage
        .open(path, OpenMode::Read)
        .map_err(JournalError::io("opening journal segment", path))?;
    let file_len = file
        .size()
        .map_err(JournalError::io("reading metadata of", path))?;
    let mut reader = BufReader::with_capacity(limits::IO_BUFFER_BYTES, FileCursor::new(file, 0));
    let mut segment = Segment {
        path: path.to_path_buf(),
        first_index,
        prev_hash: prev_hash.unwrap_or_default(),
        records: Vec::new(),
        len: 0,
    };
    let mut expected_prev = prev_hash;
    let mut body = Vec::new();
    let mut offset = 0u64;
    let torn = loop {
        let remaining = file_len - offset;
        if remaining == 0 {
            break None;
        }
        let tail = |why: &str| -> Result<Option<TornTail>> {
            if is_last {
                Ok(Some(TornTail {
                    path: path.to_path_buf(),
                    offset,
                    bytes: remaining,
                }))
            } else {
                Err(corrupt(
                    path,
                    offset,
                    format!("{why} in a segment that was already sealed"),
                ))
            }
        };
        if remaining < HEADER_SIZE as u64 {
            break tail("incomplete record header")?;
        }
        let mut header_bytes = [0u8; HEADER_SIZE];
        reader
            .read_exact(&mut header_bytes)
            .map_err(JournalError::io("reading journal segment", path))?;
        let header = match Header::decode(&header_bytes) {
            Ok(header) => header,
            Err(problem) => {
                // A torn append leaves a header that was never (fully) written: zeros, or
                // nothing but zeros after it. Anything else is damage to a written record.
                let header_blank = header_bytes.iter().all(|&b| b == 0);
                if is_last && (header_blank || rest_is_zero(&mut reader, path)?) {
                    break tail("unwritten header")?;
                }
                return Err(corrupt(path, offset, problem.to_string()));
            }
        };
        let index = first_index + segment.records.len() as u64;
        if header.index != index {
            return Err(corrupt(
                path,
                offset,
                format!("record index {} where {index} was expected", header.index),
            ));
        }
        if let Some(expected) = expected_prev {
            if header.prev_hash != expected {
                return Err(corrupt(
                    path,
                    offset,
                    format!(
                        "hash chain broken: record {index} does not link to record {}",
                        index - 1
                    ),
                ));
            }
        } else {
            segment.prev_hash = header.prev_hash;
        }
        let record_len = header.record_len();
        if record_len > remaining {
            break tail("record extends past the end of the file")?;
        }
        body.resize(header.body_len as usize, 0);
        reader
            .read_exact(&mut body)
            .map_err(JournalError::io("reading journal segment", path))?;
        if crc32c::crc32c(&body) != header.body_crc {
            if is_last && rest_is_zero(&mut reader, path)? {
                // The last record's header reached the disk but not all of its body.
                break tail("body checksum mismatch")?;
            }
            return Err(corrupt(
                path,
                offset,
                format!("body checksum mismatch in record {index}"),
            ));
        }
        segment.records.push(RecordLocation {
            offset,
            len: record_len,
            term: header.term,
            hash: header.hash,
        });
        expected_prev = Some(header.hash);
        offset += record_len;
        segment.len = offset;
    };
    Ok(Scan { segment, torn })
}

fn rest_is_zero(reader: &mut impl Read, path: &Path) -> Result<bool> {
    let mut buffer = [0u8; 64 << 10];
    loop {
        let n = reader
            .read(&mut buffer)
            .map_err(JournalError::io("reading journal segment", path))?;
        if n == 0 {
            return Ok(true);
        }
        if buffer[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip_and_strangers_are_ignored() {
        assert_eq!(parse_segment_file_name(&segment_file_name(42)), Some(42));
        assert_eq!(parse_segment_file_name("42.seg"), None);
        assert_eq!(parse_segment_file_name("0000000000000000004x.seg"), None);
        assert_eq!(parse_segment_file_name("00000000000000000042.tmp"), None);
    }
}
