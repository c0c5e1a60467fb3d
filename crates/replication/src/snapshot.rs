//! Snapshot files: the layout of `raft-snapshot.bin`, writing one from the ledger state,
//! receiving one from a peer a chunk at a time into a file of its own and checking it whole,
//! and reading one back a chunk at a time (to send it) or as a ledger state (to start from it).
//!
//! A snapshot from a peer is checked whole as it arrives (length, structure, digest) but not
//! decoded: decoding builds a second ledger, so it waits for the install (see
//! [`crate::state_machine`]).
//!
//! Layout: a `u32` (little-endian) header length, the postcard header (the snapshot's Raft
//! metadata and the SHA-256 of the ledger bytes), then the ledger's canonical snapshot bytes.
//! A snapshot never sits whole in memory: it is written, sent, received and read in chunks of
//! at most `PEER_SNAPSHOT_CHUNK_BYTES` (`IO_BUFFER_BYTES` for local I/O).
//!
//! Every file this module writes is first a temporary file with a name of its own
//! ([`TempFile`]: purpose, process and a sequence number), removed unless it is kept, so a
//! build and an install never share one. Whether a snapshot replaces the current one is not
//! decided here but by the state machine, under its lock. All file I/O goes through the
//! [`Storage`] seam, so the simulator's disk sees it too. All I/O here blocks: async callers
//! run it off their runtime's workers.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use journal::storage::{OpenMode, Storage, StorageFile};
use ledger::{SnapshotWriter, StateDigest, StateMachine};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::state_machine::SnapshotMeta;
use crate::types::StdLeaderId;

/// The file the newest snapshot lives in.
pub(crate) const SNAPSHOT_FILE: &str = "raft-snapshot.bin";

/// Temporary snapshot files are named `raft-snapshot.<purpose>-<pid>-<sequence>.tmp`.
const TEMP_PREFIX: &str = "raft-snapshot.";
const TEMP_SUFFIX: &str = ".tmp";

/// Makes temporary file names unique within the process.
static TEMP_SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// The vote a leader sends a snapshot under.
pub type SnapshotVote = openraft::impls::Vote<StdLeaderId>;

fn invalid(error: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error.to_string())
}

#[derive(Serialize, Deserialize)]
struct SnapshotFileHeader {
    meta: SnapshotMeta,
    digest: [u8; 32],
}

/// What a sender declares before a snapshot's bytes: the leader's vote, the snapshot's Raft
/// metadata, how many ledger bytes follow and their SHA-256. The receiver holds the bytes to
/// all of it before anything is replaced.
#[derive(Clone, Serialize, Deserialize)]
pub struct SnapshotOffer {
    pub vote: SnapshotVote,
    pub meta: SnapshotMeta,
    pub len_bytes: u64,
    pub digest: [u8; 32],
}

/// How long sending, checking and installing a snapshot of `len_bytes` may take: a fixed part
/// and a second per `PEER_TRANSFER_RATE_BYTES_PER_SECOND_MIN` bytes.
pub fn snapshot_timeout(len_bytes: u64) -> Duration {
    let len_bytes = len_bytes.min(limits::SNAPSHOT_BYTES_MAX);
    Duration::from_millis(
        limits::PEER_SNAPSHOT_TIMEOUT_BASE_MS
            + len_bytes * 1000 / limits::PEER_TRANSFER_RATE_BYTES_PER_SECOND_MIN,
    )
}

/// A temporary file with a name no other one shares, removed when dropped unless kept.
pub(crate) struct TempFile {
    storage: Arc<dyn Storage>,
    path: PathBuf,
    kept: bool,
}

impl TempFile {
    /// Creates a new, empty temporary file in `dir` for `purpose` (`build`, `receive`, ...).
    fn create(
        storage: &Arc<dyn Storage>,
        dir: &Path,
        purpose: &str,
    ) -> io::Result<(TempFile, Box<dyn StorageFile>)> {
        let sequence = TEMP_SEQUENCE.fetch_add(1, Ordering::Relaxed);
        let name = format!(
            "{TEMP_PREFIX}{purpose}-{}-{sequence}{TEMP_SUFFIX}",
            std::process::id()
        );
        let path = dir.join(name);
        let file = storage.open(&path, OpenMode::CreateNew)?;
        Ok((
            TempFile {
                storage: Arc::clone(storage),
                path,
                kept: false,
            },
            file,
        ))
    }

    /// Renames the file over `to` (atomically) and makes that durable.
    pub(crate) fn keep_as(mut self, to: &Path) -> io::Result<()> {
        let dir = to
            .parent()
            .ok_or_else(|| io::Error::other(format!("{} has no directory", to.display())))?;
        self.storage.rename(&self.path, to)?;
        self.kept = true;
        self.storage.sync_dir(dir)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.kept
            && let Err(error) = self.storage.remove(&self.path)
            && error.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), %error, "could not remove a temporary snapshot file");
        }
    }
}

/// Removes the temporary snapshot files a previous run left in `dir` (none is in use: a
/// replica's directory has one user).
pub(crate) fn remove_stale_temp_files(storage: &dyn Storage, dir: &Path) -> io::Result<()> {
    let names = match storage.list(dir) {
        Ok(names) => names,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error),
    };
    for name in names {
        if name.starts_with(TEMP_PREFIX) && name.ends_with(TEMP_SUFFIX) {
            storage.remove(&dir.join(name))?;
        }
    }
    Ok(())
}

/// A snapshot held in a file, as openraft passes it around: the file, where the ledger bytes
/// are in it, their digest, and for a snapshot received from a peer its temporary file (its
/// structure and digest checked; decoded only when it is installed, once the state it
/// replaces is let go).
pub struct SnapshotData {
    file: Arc<dyn StorageFile>,
    data_offset: u64,
    len_bytes: u64,
    digest: [u8; 32],
    received: Option<TempFile>,
}

impl SnapshotData {
    /// Length of the ledger bytes.
    pub fn len_bytes(&self) -> u64 {
        self.len_bytes
    }

    /// SHA-256 of the ledger bytes, as the file's header states it.
    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }

    /// The ledger bytes, a chunk at a time.
    pub fn chunks(&self) -> SnapshotChunks {
        SnapshotChunks {
            file: Arc::clone(&self.file),
            offset: self.data_offset,
            end: self.data_offset + self.len_bytes,
        }
    }

    /// The temporary file of a snapshot received from a peer (`None` for a snapshot file
    /// that is already kept).
    pub(crate) fn take_received(&mut self) -> Option<TempFile> {
        self.received.take()
    }

    /// Decodes the ledger bytes and checks them whole and against the digest in the header.
    pub(crate) fn decode(&self) -> io::Result<(StateMachine, StateDigest)> {
        let (state, digest) =
            StateMachine::read_snapshot(&mut self.chunks(), self.len_bytes).map_err(invalid)?;
        self.check_digest(digest)?;
        Ok((state, digest))
    }

    /// Checks the ledger bytes' structure (see `StateMachine::check_snapshot_structure`) and
    /// digest without decoding them: in memory bounded by a read buffer.
    pub(crate) fn check_structure(&self) -> io::Result<()> {
        let digest = StateMachine::check_snapshot_structure(&mut self.chunks(), self.len_bytes)
            .map_err(invalid)?;
        self.check_digest(digest)
    }

    /// The bytes of a small state's snapshot, read whole (at most `max_bytes`) and checked
    /// against the digest in the header.
    pub(crate) fn read_whole(&self, max_bytes: u64) -> io::Result<Vec<u8>> {
        if self.len_bytes > max_bytes {
            return Err(invalid(format!(
                "a snapshot of {} bytes exceeds the {max_bytes} this state may take",
                self.len_bytes
            )));
        }
        let mut bytes = Vec::with_capacity(self.len_bytes as usize);
        self.chunks().read_to_end(&mut bytes)?;
        self.check_digest(StateDigest(sha2::Sha256::digest(&bytes).into()))?;
        Ok(bytes)
    }

    fn check_digest(&self, digest: StateDigest) -> io::Result<()> {
        if digest.0 != self.digest {
            return Err(invalid(format!(
                "the snapshot's bytes have digest {digest}, not the {} stated with them",
                StateDigest(self.digest)
            )));
        }
        Ok(())
    }
}

/// Sequential reads of a snapshot's ledger bytes (and nothing past them).
pub struct SnapshotChunks {
    file: Arc<dyn StorageFile>,
    offset: u64,
    end: u64,
}

impl SnapshotChunks {
    /// The next chunk of at most `PEER_SNAPSHOT_CHUNK_BYTES`, or `None` at the end.
    pub fn next_chunk(&mut self) -> io::Result<Option<Vec<u8>>> {
        let len = (self.end - self.offset).min(limits::PEER_SNAPSHOT_CHUNK_BYTES as u64) as usize;
        if len == 0 {
            return Ok(None);
        }
        let mut chunk = vec![0; len];
        self.file.read_exact_at(self.offset, &mut chunk)?;
        self.offset += len as u64;
        Ok(Some(chunk))
    }
}

impl Read for SnapshotChunks {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let len = (self.end - self.offset).min(buf.len() as u64) as usize;
        if len == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(self.offset, &mut buf[..len])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the snapshot file is shorter than its header says",
            ));
        }
        self.offset += n as u64;
        Ok(n)
    }
}

/// The length-prefixed header of a snapshot file.
fn encode_header(meta: &SnapshotMeta, digest: [u8; 32]) -> io::Result<Vec<u8>> {
    let header = postcard::to_allocvec(&SnapshotFileHeader {
        meta: meta.clone(),
        digest,
    })
    .map_err(invalid)?;
    if header.len() > limits::SNAPSHOT_HEADER_BYTES_MAX {
        return Err(invalid(format!(
            "a snapshot header of {} bytes exceeds SNAPSHOT_HEADER_BYTES_MAX ({})",
            header.len(),
            limits::SNAPSHOT_HEADER_BYTES_MAX
        )));
    }
    let mut bytes = (header.len() as u32).to_le_bytes().to_vec();
    bytes.extend_from_slice(&header);
    Ok(bytes)
}

/// Opens the snapshot file at `path` and reads its header (not its ledger bytes), or `None` if
/// there is no such file.
pub(crate) fn open_snapshot_file(
    storage: &dyn Storage,
    path: &Path,
) -> io::Result<Option<(SnapshotMeta, SnapshotData)>> {
    let file = match storage.open(path, OpenMode::Read) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    let bad = |what: String| invalid(format!("{}: {what}", path.display()));
    let size = file.size()?;
    let mut prefix = [0u8; 4];
    file.read_exact_at(0, &mut prefix)
        .map_err(|_| bad("too short for a snapshot file".into()))?;
    let header_len = u32::from_le_bytes(prefix) as u64;
    if header_len > limits::SNAPSHOT_HEADER_BYTES_MAX as u64 || 4 + header_len > size {
        return Err(bad(format!(
            "the header length {header_len} exceeds the file or SNAPSHOT_HEADER_BYTES_MAX"
        )));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact_at(4, &mut header)?;
    let header: SnapshotFileHeader =
        postcard::from_bytes(&header).map_err(|e| bad(e.to_string()))?;
    let data = SnapshotData {
        file: Arc::from(file),
        data_offset: 4 + header_len,
        len_bytes: size - 4 - header_len,
        digest: header.digest,
        received: None,
    };
    Ok(Some((header.meta, data)))
}

/// The state serialised to a temporary file (ledger bytes only), with their digest.
pub(crate) struct SerialisedState {
    temp: TempFile,
    file: Box<dyn StorageFile>,
    len_bytes: u64,
    digest: StateDigest,
}

/// Appends everything written to it to a file.
struct AppendWriter(Box<dyn StorageFile>);

impl io::Write for AppendWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.append(&[buf])?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The state being serialised to a new temporary file, a step at a time (the part of a build
/// that reads the state; see [`ledger::SnapshotWriter`]).
pub(crate) struct Serialising {
    temp: TempFile,
    writer: SnapshotWriter<AppendWriter>,
    digest: Option<StateDigest>,
}

impl Serialising {
    /// Starts serialising `state` as it is now into a new temporary file in `dir`.
    pub(crate) fn begin(
        storage: &Arc<dyn Storage>,
        dir: &Path,
        state: &StateMachine,
    ) -> io::Result<Serialising> {
        let (temp, file) = TempFile::create(storage, dir, "build-state")?;
        Ok(Serialising {
            temp,
            writer: state.begin_snapshot(AppendWriter(file))?,
            digest: None,
        })
    }

    /// Writes the next records from `state` (the state it began from, moved on only by
    /// applied batches); true once everything is written.
    pub(crate) fn step(&mut self, state: &StateMachine) -> io::Result<bool> {
        self.digest = self.writer.step(state)?;
        Ok(self.digest.is_some())
    }

    /// The serialised state, once [`Serialising::step`] answered true.
    pub(crate) fn finish(self) -> io::Result<SerialisedState> {
        let digest = self
            .digest
            .ok_or_else(|| io::Error::other("the state's serialisation is unfinished"))?;
        let file = self.writer.into_inner()?.0;
        Ok(SerialisedState {
            temp: self.temp,
            len_bytes: file.size()?,
            file,
            digest,
        })
    }
}

/// Makes a snapshot file of `state` at `meta`: header, then the serialised ledger bytes copied
/// behind it, synced. The file is temporary until the caller keeps it.
pub(crate) fn assemble_snapshot_file(
    storage: &Arc<dyn Storage>,
    dir: &Path,
    meta: &SnapshotMeta,
    state: SerialisedState,
) -> io::Result<TempFile> {
    let (temp, mut file) = TempFile::create(storage, dir, "build")?;
    file.append(&[&encode_header(meta, state.digest.0)?])?;
    let mut buffer = vec![0u8; limits::IO_BUFFER_BYTES];
    let mut offset = 0;
    while offset < state.len_bytes {
        let len = (state.len_bytes - offset).min(buffer.len() as u64) as usize;
        state.file.read_exact_at(offset, &mut buffer[..len])?;
        file.append(&[&buffer[..len]])?;
        offset += len as u64;
    }
    file.sync()?;
    drop(state.temp);
    Ok(temp)
}

/// Makes a snapshot file of a small state's `bytes` (held whole in memory) at `meta`: header
/// with their SHA-256, then the bytes, synced. The file is temporary until the caller keeps it.
pub(crate) fn write_snapshot_bytes(
    storage: &Arc<dyn Storage>,
    dir: &Path,
    meta: &SnapshotMeta,
    bytes: &[u8],
) -> io::Result<TempFile> {
    let digest: [u8; 32] = sha2::Sha256::digest(bytes).into();
    let (temp, mut file) = TempFile::create(storage, dir, "build")?;
    file.append(&[&encode_header(meta, digest)?, bytes])?;
    file.sync()?;
    Ok(temp)
}

/// How a state machine checks a snapshot received from a peer whole (its bytes' structure and
/// digest) before Raft may install it, without building a second state in memory.
pub type SnapshotCheck = fn(&SnapshotData) -> io::Result<()>;

/// A snapshot arriving from a peer, written to a temporary file of its own as it comes.
pub struct SnapshotReceiver {
    storage: Arc<dyn Storage>,
    check: SnapshotCheck,
    temp: TempFile,
    file: Box<dyn StorageFile>,
    data_offset: u64,
    len_bytes: u64,
    received_bytes: u64,
    digest: [u8; 32],
}

impl SnapshotReceiver {
    /// Starts receiving the snapshot `offer` declares into a new temporary file in `dir`;
    /// [`SnapshotReceiver::finish`] checks it with `check`.
    pub(crate) fn start(
        storage: &Arc<dyn Storage>,
        dir: &Path,
        offer: &SnapshotOffer,
        check: SnapshotCheck,
    ) -> io::Result<SnapshotReceiver> {
        if offer.len_bytes > limits::SNAPSHOT_BYTES_MAX {
            return Err(invalid(format!(
                "snapshot offer: len_bytes {} exceeds SNAPSHOT_BYTES_MAX ({})",
                offer.len_bytes,
                limits::SNAPSHOT_BYTES_MAX
            )));
        }
        let header = encode_header(&offer.meta, offer.digest)?;
        let (temp, mut file) = TempFile::create(storage, dir, "receive")?;
        file.append(&[&header])?;
        Ok(SnapshotReceiver {
            storage: Arc::clone(storage),
            check,
            temp,
            file,
            data_offset: header.len() as u64,
            len_bytes: offer.len_bytes,
            received_bytes: 0,
            digest: offer.digest,
        })
    }

    /// Appends the next chunk of the snapshot's bytes.
    pub fn write(&mut self, chunk: &[u8]) -> io::Result<()> {
        if chunk.len() > limits::PEER_SNAPSHOT_CHUNK_BYTES {
            return Err(invalid(format!(
                "snapshot chunk: {} bytes exceed PEER_SNAPSHOT_CHUNK_BYTES ({})",
                chunk.len(),
                limits::PEER_SNAPSHOT_CHUNK_BYTES
            )));
        }
        if self.received_bytes + chunk.len() as u64 > self.len_bytes {
            return Err(invalid(format!(
                "snapshot chunk: the sender sent more than the len_bytes {} it declared",
                self.len_bytes
            )));
        }
        self.file.append(&[chunk])?;
        self.received_bytes += chunk.len() as u64;
        Ok(())
    }

    /// Checks the whole snapshot (its length, then the state machine's check: for a ledger,
    /// every count against the bytes that hold it, its structure, its digest) without decoding
    /// it, replacing nothing. Refused, its file is removed. What only the decoded ledger shows
    /// (ids that appear twice, balances) is checked when it is installed.
    pub fn finish(mut self) -> io::Result<SnapshotData> {
        if self.received_bytes != self.len_bytes {
            return Err(invalid(format!(
                "snapshot cut short: received {} of the len_bytes {} declared",
                self.received_bytes, self.len_bytes
            )));
        }
        self.file.sync()?;
        let reader = self.storage.open(&self.temp.path, OpenMode::Read)?;
        let mut data = SnapshotData {
            file: Arc::from(reader),
            data_offset: self.data_offset,
            len_bytes: self.len_bytes,
            digest: self.digest,
            received: None,
        };
        (self.check)(&data)?;
        data.received = Some(self.temp);
        Ok(data)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use journal::storage::RealStorage;
    use ledger::{Account, Batch, BatchBody, Transfer};
    use openraft::testing::log_id;

    use super::*;
    use crate::types::TypeConfig;

    /// A ledger of two accounts and `count` transfers between them.
    pub(crate) fn ledger_with_transfers(count: u128) -> StateMachine {
        let mut state = StateMachine::default();
        let accounts = [1, 2].map(|id| Account {
            id,
            ledger: 1,
            code: 1,
            ..Default::default()
        });
        state.apply(&Batch {
            timestamp: 1,
            body: BatchBody::CreateAccounts(accounts.to_vec()),
        });
        let ids: Vec<u128> = (1..=count).collect();
        for chunk in ids.chunks(limits::BATCH_EVENTS_MAX) {
            let transfers = chunk
                .iter()
                .map(|&id| Transfer {
                    id,
                    debit_account_id: 1 + id % 2,
                    credit_account_id: 2 - id % 2,
                    amount: id,
                    ledger: 1,
                    code: 1,
                    ..Default::default()
                })
                .collect();
            state.apply(&Batch {
                timestamp: 0,
                body: BatchBody::CreateTransfers(transfers),
            });
        }
        assert_eq!(state.transfers_count() as u128, count);
        state
    }

    pub(crate) fn meta_at(index: u64) -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: Some(log_id::<TypeConfig>(1, 1, index)),
            last_membership: Default::default(),
        }
    }

    pub(crate) fn storage() -> Arc<dyn Storage> {
        RealStorage::shared()
    }

    /// The names of the temporary snapshot files in `dir`.
    pub(crate) fn temp_files(dir: &Path) -> Vec<String> {
        storage()
            .list(dir)
            .unwrap()
            .into_iter()
            .filter(|n| n.ends_with(TEMP_SUFFIX))
            .collect()
    }

    /// `state` serialised to a temporary file in `dir` in one go.
    pub(crate) fn serialise_state(
        storage: &Arc<dyn Storage>,
        dir: &Path,
        state: &StateMachine,
    ) -> io::Result<SerialisedState> {
        let mut serialising = Serialising::begin(storage, dir, state)?;
        while !serialising.step(state)? {}
        serialising.finish()
    }

    /// Builds the snapshot file of `state` at `meta` in `dir` and opens it.
    pub(crate) fn snapshot_file(
        dir: &Path,
        meta: &SnapshotMeta,
        state: &StateMachine,
    ) -> SnapshotData {
        let serialised = serialise_state(&storage(), dir, state).unwrap();
        let temp = assemble_snapshot_file(&storage(), dir, meta, serialised).unwrap();
        temp.keep_as(&dir.join(SNAPSHOT_FILE)).unwrap();
        open_snapshot_file(storage().as_ref(), &dir.join(SNAPSHOT_FILE))
            .unwrap()
            .unwrap()
            .1
    }

    pub(crate) fn offer(meta: SnapshotMeta, len_bytes: u64, digest: [u8; 32]) -> SnapshotOffer {
        SnapshotOffer {
            vote: SnapshotVote::new_committed(1, 1),
            meta,
            len_bytes,
            digest,
        }
    }

    #[test]
    fn a_snapshot_of_many_chunks_is_sent_and_received_through_files_whole() {
        let (sender_dir, receiver_dir) =
            (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let state = ledger_with_transfers(3 * limits::BATCH_EVENTS_MAX as u128);
        let sent = snapshot_file(sender_dir.path(), &meta_at(7), &state);
        assert_eq!(sent.digest(), state.digest().0);
        let chunks_count = sent
            .len_bytes()
            .div_ceil(limits::PEER_SNAPSHOT_CHUNK_BYTES as u64);
        assert!(chunks_count >= 3, "{} bytes", sent.len_bytes());
        // The build's own temporary files are gone.
        assert_eq!(temp_files(sender_dir.path()), Vec::<String>::new());

        let mut receiver = SnapshotReceiver::start(
            &storage(),
            receiver_dir.path(),
            &offer(meta_at(7), sent.len_bytes(), sent.digest()),
            SnapshotData::check_structure,
        )
        .unwrap();
        let mut chunks = sent.chunks();
        let mut sent_chunks = 0;
        while let Some(chunk) = chunks.next_chunk().unwrap() {
            assert!(chunk.len() <= limits::PEER_SNAPSHOT_CHUNK_BYTES);
            receiver.write(&chunk).unwrap();
            sent_chunks += 1;
        }
        assert_eq!(sent_chunks, chunks_count);
        let mut received = receiver.finish().unwrap();
        let decoded = received.decode().unwrap().0;
        let temp = received.take_received().unwrap();
        assert_eq!(decoded.digest(), state.digest());
        assert_eq!(decoded.transfers_count(), state.transfers_count());
        // Kept, the received file is a snapshot file like the sender's.
        let path = receiver_dir.path().join(SNAPSHOT_FILE);
        temp.keep_as(&path).unwrap();
        let (meta, reopened) = open_snapshot_file(storage().as_ref(), &path)
            .unwrap()
            .unwrap();
        assert_eq!(meta, meta_at(7));
        assert_eq!(reopened.decode().unwrap().0.digest(), state.digest());
        assert_eq!(temp_files(receiver_dir.path()), Vec::<String>::new());
    }

    /// A 60-byte snapshot: the fixed header, then an accounts count of 2^32 - 1 and 16 bytes.
    pub(crate) fn forged_60_bytes() -> Vec<u8> {
        let mut bytes = b"FCLEDGR1".to_vec();
        bytes.extend_from_slice(&2u32.to_le_bytes());
        bytes.extend_from_slice(&[0u8; 24]);
        bytes.extend_from_slice(&(u32::MAX as u64).to_le_bytes());
        bytes.extend_from_slice(&[0u8; 16]);
        assert_eq!(bytes.len(), 60);
        bytes
    }

    #[test]
    fn a_received_snapshot_with_forged_counts_is_refused_and_its_file_removed() {
        let dir = tempfile::tempdir().unwrap();
        let forged = forged_60_bytes();
        let mut receiver = SnapshotReceiver::start(
            &storage(),
            dir.path(),
            &offer(meta_at(9), forged.len() as u64, [7; 32]),
            SnapshotData::check_structure,
        )
        .unwrap();
        receiver.write(&forged).unwrap();
        let error = receiver.finish().err().expect("refused");
        assert!(
            error.to_string().contains("counts more records than"),
            "{error}"
        );
        assert_eq!(storage().list(dir.path()).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn a_snapshot_whose_bytes_do_not_match_the_offered_digest_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = Vec::new();
        ledger_with_transfers(10)
            .write_snapshot(&mut bytes)
            .unwrap();
        let mut receiver = SnapshotReceiver::start(
            &storage(),
            dir.path(),
            &offer(meta_at(9), bytes.len() as u64, [7; 32]),
            SnapshotData::check_structure,
        )
        .unwrap();
        receiver.write(&bytes).unwrap();
        let error = receiver.finish().err().expect("refused");
        assert!(error.to_string().contains("not the"), "{error}");
        assert_eq!(storage().list(dir.path()).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn a_sender_that_breaks_its_offer_is_refused_at_the_first_offending_byte() {
        let dir = tempfile::tempdir().unwrap();
        let too_long = offer(meta_at(1), limits::SNAPSHOT_BYTES_MAX + 1, [0; 32]);
        let error = SnapshotReceiver::start(
            &storage(),
            dir.path(),
            &too_long,
            SnapshotData::check_structure,
        )
        .err()
        .expect("refused");
        assert!(error.to_string().contains("len_bytes"), "{error}");

        let mut receiver = SnapshotReceiver::start(
            &storage(),
            dir.path(),
            &offer(meta_at(1), 10, [0; 32]),
            SnapshotData::check_structure,
        )
        .unwrap();
        let error = receiver.write(&[0; 11]).expect_err("refused");
        assert!(
            error.to_string().contains("more than the len_bytes 10"),
            "{error}"
        );
        let error = receiver
            .write(&vec![0; limits::PEER_SNAPSHOT_CHUNK_BYTES + 1])
            .expect_err("refused");
        assert!(
            error.to_string().contains("PEER_SNAPSHOT_CHUNK_BYTES"),
            "{error}"
        );
        receiver.write(&[0; 4]).unwrap();
        let error = receiver.finish().err().expect("refused");
        assert!(
            error.to_string().contains("received 4 of the len_bytes 10"),
            "{error}"
        );
        assert_eq!(storage().list(dir.path()).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn the_timeout_grows_with_the_snapshot() {
        let base = Duration::from_millis(limits::PEER_SNAPSHOT_TIMEOUT_BASE_MS);
        assert_eq!(snapshot_timeout(0), base);
        let gib = snapshot_timeout(1 << 30);
        assert_eq!(
            gib,
            base + Duration::from_secs((1 << 30) / limits::PEER_TRANSFER_RATE_BYTES_PER_SECOND_MIN)
        );
        assert!(snapshot_timeout(u64::MAX) >= gib);
    }
}
