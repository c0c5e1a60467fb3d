//! The record format: one fixed header followed by the body.
//!
//! ```text
//! offset size field
//!      0    4 magic "FCJ1"
//!      4    2 format version (1)
//!      6    2 reserved, zero
//!      8    4 CRC32C of header bytes 12..HEADER_SIZE
//!     12    4 CRC32C of the body
//!     16    4 body length in bytes
//!     20    4 reserved, zero
//!     24    8 term
//!     32    8 index
//!     40   32 hash of the previous record (zero for the first record ever)
//!     72   32 hash of this record = SHA-256(previous hash ‖ term ‖ index ‖ body)
//! ```
//! All integers are little-endian. The CRCs catch accidental damage cheaply on every read;
//! the SHA-256 chain makes any rewrite of history detectable (`fincore verify`).

use sha2::{Digest, Sha256};

pub const MAGIC: [u8; 4] = *b"FCJ1";
pub const FORMAT_VERSION: u16 = 1;
/// Size of a record header in bytes.
pub const HEADER_SIZE: usize = 104;
/// Largest record body accepted (`limits::JOURNAL_RECORD_BODY_BYTES_MAX`, 16 MiB): far above
/// one full batch or Raft entry (about 1 MiB).
pub const RECORD_BODY_BYTES_MAX: usize = limits::JOURNAL_RECORD_BODY_BYTES_MAX;

/// SHA-256 hash of a record, chaining it to all records before it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct RecordHash(pub [u8; 32]);

impl std::fmt::Display for RecordHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for RecordHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RecordHash({self})")
    }
}

/// The decoded header of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub body_crc: u32,
    pub body_len: u32,
    pub term: u64,
    pub index: u64,
    pub prev_hash: RecordHash,
    pub hash: RecordHash,
}

/// Why a header was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderProblem {
    Magic,
    Version(u16),
    Checksum,
    Reserved,
    TooLarge(u32),
}

impl std::fmt::Display for HeaderProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderProblem::Magic => write!(f, "bad magic bytes"),
            HeaderProblem::Version(v) => write!(f, "unknown format version {v}"),
            HeaderProblem::Checksum => write!(f, "header checksum mismatch"),
            HeaderProblem::Reserved => write!(f, "reserved header bytes are not zero"),
            HeaderProblem::TooLarge(len) => write!(f, "body length {len} exceeds the limit"),
        }
    }
}

/// The chained hash of a record.
pub fn record_hash(prev_hash: &RecordHash, term: u64, index: u64, body: &[u8]) -> RecordHash {
    let mut hasher = Sha256::new();
    hasher.update(prev_hash.0);
    hasher.update(term.to_le_bytes());
    hasher.update(index.to_le_bytes());
    hasher.update(body);
    RecordHash(hasher.finalize().into())
}

impl Header {
    /// Builds the header of a new record, computing both checksums and the hash.
    pub fn seal(term: u64, index: u64, prev_hash: RecordHash, body: &[u8]) -> Header {
        assert!(body.len() <= RECORD_BODY_BYTES_MAX);
        Header {
            body_crc: crc32c::crc32c(body),
            body_len: body.len() as u32,
            term,
            index,
            prev_hash,
            hash: record_hash(&prev_hash, term, index, body),
        }
    }

    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..4].copy_from_slice(&MAGIC);
        b[4..6].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.body_crc.to_le_bytes());
        b[16..20].copy_from_slice(&self.body_len.to_le_bytes());
        b[24..32].copy_from_slice(&self.term.to_le_bytes());
        b[32..40].copy_from_slice(&self.index.to_le_bytes());
        b[40..72].copy_from_slice(&self.prev_hash.0);
        b[72..104].copy_from_slice(&self.hash.0);
        let crc = crc32c::crc32c(&b[12..]);
        b[8..12].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; HEADER_SIZE]) -> Result<Header, HeaderProblem> {
        if b[0..4] != MAGIC {
            return Err(HeaderProblem::Magic);
        }
        let crc = u32::from_le_bytes(b[8..12].try_into().expect("4 bytes"));
        if crc != crc32c::crc32c(&b[12..]) {
            return Err(HeaderProblem::Checksum);
        }
        let version = u16::from_le_bytes(b[4..6].try_into().expect("2 bytes"));
        if version != FORMAT_VERSION {
            return Err(HeaderProblem::Version(version));
        }
        if b[6..8] != [0, 0] || b[20..24] != [0; 4] {
            return Err(HeaderProblem::Reserved);
        }
        let body_len = u32::from_le_bytes(b[16..20].try_into().expect("4 bytes"));
        if body_len as usize > RECORD_BODY_BYTES_MAX {
            return Err(HeaderProblem::TooLarge(body_len));
        }
        Ok(Header {
            body_crc: u32::from_le_bytes(b[12..16].try_into().expect("4 bytes")),
            body_len,
            term: u64::from_le_bytes(b[24..32].try_into().expect("8 bytes")),
            index: u64::from_le_bytes(b[32..40].try_into().expect("8 bytes")),
            prev_hash: RecordHash(b[40..72].try_into().expect("32 bytes")),
            hash: RecordHash(b[72..104].try_into().expect("32 bytes")),
        })
    }

    /// Bytes the whole record occupies on disk.
    pub fn record_len(&self) -> u64 {
        HEADER_SIZE as u64 + u64::from(self.body_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_any_flipped_byte_is_detected() {
        let header = Header::seal(3, 17, RecordHash([9; 32]), b"hello");
        let bytes = header.encode();
        assert_eq!(Header::decode(&bytes), Ok(header));
        for at in 0..HEADER_SIZE {
            let mut damaged = bytes;
            damaged[at] ^= 0x10;
            assert!(
                Header::decode(&damaged).is_err(),
                "flip at {at} went unnoticed"
            );
        }
    }
}
