//! A replica's change events on disk: what it serves `GET /v1/events` and `Subscribe` from.
//!
//! The events are derived data: the journal and the snapshots are the truth, and each replica
//! regenerates the same events (same sequence numbers, see `ledger`'s `events` module) when it
//! applies. So this log is a cache of the replica's own apply, outside the journal's storage
//! seam and never fsynced: after a restart the state machine replays the journal from its
//! snapshot, and whatever the files lack is written again (what they already hold is skipped).
//!
//! Layout: `DATA_DIR/events/<first seq, 20 digits>.events`, segments of
//! `EVENT_LOG_SEGMENT_EVENTS` fixed-size records (`EVENT_LOG_RECORD_BYTES`: the ledger's
//! 280-byte encoding, its CRC32C, 4 reserved bytes), so a sequence number's place is computed,
//! never searched. The oldest segments are removed once the files pass `EVENT_LOG_BYTES_MAX`;
//! a read before the first event kept is refused with [`EventsError::Gone`] naming it. When the
//! state jumps past the files (a snapshot installed from the leader, or files lost), the files
//! restart after the snapshot: the replica has no events before it, and says so the same way.
//!
//! One writer thread (`events-writer`) owns the files; the apply thread hands it each batch's
//! events through a bounded queue (`EVENT_LOG_BATCHES_QUEUED_MAX`): a slow disk holds apply
//! back rather than grow memory. Readers read whole records below the published last sequence
//! number, so they never see a half-written one. This module must not interpret events (the
//! ledger owns their meaning) nor serve them (the server does).

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use ledger::{EVENT_ENCODED_BYTES, Event};
use limits::{
    EVENT_LOG_BATCHES_QUEUED_MAX, EVENT_LOG_BYTES_MAX, EVENT_LOG_RECORD_BYTES,
    EVENT_LOG_SEGMENT_EVENTS,
};
use tokio::sync::watch;

const _: () = assert!(EVENT_ENCODED_BYTES + 8 == EVENT_LOG_RECORD_BYTES);

/// The directory of the event files inside a data directory.
pub const EVENTS_DIR: &str = "events";
const SEGMENT_SUFFIX: &str = ".events";

/// Why events could not be read.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    /// The events asked for are no longer (or never were) on this replica.
    #[error(
        "events after {after} are gone from this replica: its first event is {first_seq} \
         (older ones were compacted, or precede a snapshot it installed); read from {} on, \
         or ask another replica",
        first_seq.saturating_sub(1)
    )]
    Gone { after: u64, first_seq: u64 },
    #[error("reading the event files failed: {0}")]
    Io(#[from] io::Error),
}

/// What the files hold: contiguous segments, oldest first.
#[derive(Debug, Clone)]
struct Segments {
    /// (first seq, events in it)
    list: VecDeque<(u64, u64)>,
    /// The sequence number the next segment (or the first event) will have, minus one.
    last_seq: u64,
    /// The first sequence number this replica has (last_seq + 1 when the files are empty).
    first_seq: u64,
}

struct Shared {
    dir: PathBuf,
    segments: Mutex<Segments>,
    /// The last sequence number readers may read.
    published: watch::Sender<u64>,
}

/// What the apply thread sends the writer.
enum Message {
    Events(Vec<Event>),
    /// The state now stands at `seq_last` (opened from a snapshot, or one installed): if the
    /// files hold less, they restart after it.
    StateAt {
        seq_last: u64,
    },
}

/// The writing side: owned by the state machine, cloned into the apply threads.
#[derive(Clone)]
pub struct EventLog {
    shared: Arc<Shared>,
    queue: mpsc::SyncSender<Message>,
    /// Buffers the writer is done with, for the apply thread to record the next batch into.
    recycled: Arc<Mutex<mpsc::Receiver<Vec<Event>>>>,
}

/// A reader of the event files (cheap to clone; any number at once).
#[derive(Clone)]
pub struct EventReader {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for EventReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventReader")
            .field("dir", &self.shared.dir)
            .finish_non_exhaustive()
    }
}

fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}{SEGMENT_SUFFIX}"))
}

impl EventLog {
    /// Opens (or creates) the event files of the data directory `data_dir` and starts the
    /// writer thread. A torn or damaged tail is cut off (it is written again by replay).
    pub fn open(data_dir: &Path) -> io::Result<EventLog> {
        let dir = data_dir.join(EVENTS_DIR);
        fs::create_dir_all(&dir)?;
        let segments = recover(&dir)?;
        let (published, _) = watch::channel(segments.last_seq);
        let shared = Arc::new(Shared {
            dir,
            segments: Mutex::new(segments),
            published,
        });
        let (queue, messages) = mpsc::sync_channel(EVENT_LOG_BATCHES_QUEUED_MAX);
        let (recycle, recycled) = mpsc::sync_channel(EVENT_LOG_BATCHES_QUEUED_MAX);
        let mut writer = Writer::new(Arc::clone(&shared))?;
        std::thread::Builder::new()
            .name("events-writer".into())
            .spawn(move || {
                for message in messages {
                    let outcome = match message {
                        Message::Events(events) => {
                            let written = writer.write(&events);
                            // Full (apply has enough): the buffer is dropped.
                            let _ = recycle.try_send(events);
                            written
                        }
                        other => writer.handle(other),
                    };
                    if let Err(error) = outcome {
                        // The files are a cache of apply: stop writing them (readers keep what
                        // was published) rather than stop the replica.
                        tracing::error!(%error, dir = %writer.shared.dir.display(), "writing change events failed; this replica serves no newer events until it restarts");
                        break;
                    }
                }
            })?;
        Ok(EventLog {
            shared,
            queue,
            recycled: Arc::new(Mutex::new(recycled)),
        })
    }

    /// An emptied buffer the writer is done with, if one is waiting.
    pub fn recycled_buffer(&self) -> Option<Vec<Event>> {
        self.recycled
            .lock()
            .expect("never poisoned")
            .try_recv()
            .ok()
    }

    /// Hands a batch's events to the writer (waits while its queue is full).
    pub fn append(&self, events: Vec<Event>) {
        if !events.is_empty() {
            let _ = self.queue.send(Message::Events(events));
        }
    }

    /// Tells the writer the state now stands at `seq_last` (see [`Message::StateAt`]).
    pub fn state_at(&self, seq_last: u64) {
        let _ = self.queue.send(Message::StateAt { seq_last });
    }

    pub fn reader(&self) -> EventReader {
        EventReader {
            shared: Arc::clone(&self.shared),
        }
    }
}

/// Scans the segment files: keeps the newest contiguous run, cuts the newest one after its
/// last whole, intact record.
fn recover(dir: &Path) -> io::Result<Segments> {
    let mut firsts: Vec<u64> = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(first) = name
            .strip_suffix(SEGMENT_SUFFIX)
            .and_then(|digits| digits.parse::<u64>().ok())
        {
            firsts.push(first);
        }
    }
    firsts.sort_unstable();
    let mut list: VecDeque<(u64, u64)> = VecDeque::new();
    for (position, &first) in firsts.iter().enumerate() {
        let path = segment_path(dir, first);
        let newest = position + 1 == firsts.len();
        let count = if newest {
            intact_records(&path)?
        } else {
            fs::metadata(&path)?.len() / EVENT_LOG_RECORD_BYTES as u64
        };
        if let Some(&(previous, previous_count)) = list.back()
            && previous + previous_count != first
        {
            // A gap: only the newest contiguous run is kept.
            for (old, _) in list.drain(..) {
                fs::remove_file(segment_path(dir, old))?;
            }
        }
        list.push_back((first, count));
    }
    let (first_seq, last_seq) = match (list.front(), list.back()) {
        (Some(&(first, _)), Some(&(last_first, last_count))) => {
            (first, last_first + last_count - 1)
        }
        _ => (1, 0),
    };
    Ok(Segments {
        list,
        last_seq,
        first_seq: first_seq.min(last_seq + 1),
    })
}

/// How many whole records with a good checksum the file starts with; cuts it there.
fn intact_records(path: &Path) -> io::Result<u64> {
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    let len = file.metadata()?.len();
    let mut count = len / EVENT_LOG_RECORD_BYTES as u64;
    let mut record = [0u8; EVENT_LOG_RECORD_BYTES];
    while count > 0 {
        file.read_exact_at(&mut record, (count - 1) * EVENT_LOG_RECORD_BYTES as u64)?;
        if check_record(&record).is_ok() {
            break;
        }
        count -= 1;
    }
    if count * EVENT_LOG_RECORD_BYTES as u64 != len {
        file.set_len(count * EVENT_LOG_RECORD_BYTES as u64)?;
    }
    Ok(count)
}

fn encode_record(event: &Event, out: &mut [u8]) {
    let body: &mut [u8; EVENT_ENCODED_BYTES] = (&mut out[..EVENT_ENCODED_BYTES])
        .try_into()
        .expect("a record holds an event");
    event.encode(body);
    let crc = crc32c::crc32c(body);
    out[EVENT_ENCODED_BYTES..EVENT_ENCODED_BYTES + 4].copy_from_slice(&crc.to_le_bytes());
    out[EVENT_ENCODED_BYTES + 4..EVENT_LOG_RECORD_BYTES].fill(0);
}

fn check_record(record: &[u8]) -> io::Result<Event> {
    let body = &record[..EVENT_ENCODED_BYTES];
    let stored = u32::from_le_bytes(
        record[EVENT_ENCODED_BYTES..EVENT_ENCODED_BYTES + 4]
            .try_into()
            .expect("4 bytes"),
    );
    if crc32c::crc32c(body) != stored {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "an event record's checksum does not match",
        ));
    }
    Event::decode(body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// The writer thread's state: the newest segment open for appending.
struct Writer {
    shared: Arc<Shared>,
    /// The newest segment (None: none yet, or the files restarted).
    file: Option<File>,
    buffer: Vec<u8>,
}

impl Writer {
    fn new(shared: Arc<Shared>) -> io::Result<Writer> {
        let newest = shared
            .segments
            .lock()
            .expect("never poisoned")
            .list
            .back()
            .copied();
        let file = match newest {
            Some((first, count)) if count < EVENT_LOG_SEGMENT_EVENTS => Some(
                OpenOptions::new()
                    .append(true)
                    .open(segment_path(&shared.dir, first))?,
            ),
            _ => None,
        };
        Ok(Writer {
            shared,
            file,
            buffer: Vec::new(),
        })
    }

    fn handle(&mut self, message: Message) -> io::Result<()> {
        match message {
            Message::StateAt { seq_last } => {
                let behind = self.segments().last_seq < seq_last;
                if behind {
                    self.restart_after(seq_last)?;
                }
                Ok(())
            }
            Message::Events(events) => self.write(&events),
        }
    }

    fn segments(&self) -> std::sync::MutexGuard<'_, Segments> {
        self.shared.segments.lock().expect("never poisoned")
    }

    /// Removes every file; the next event written is `seq_last + 1`.
    fn restart_after(&mut self, seq_last: u64) -> io::Result<()> {
        self.file = None;
        let old: Vec<u64> = {
            let mut segments = self.segments();
            let old = segments.list.drain(..).map(|(first, _)| first).collect();
            segments.last_seq = seq_last;
            segments.first_seq = seq_last + 1;
            old
        };
        for first in old {
            fs::remove_file(segment_path(&self.shared.dir, first))?;
        }
        self.shared.published.send_replace(seq_last);
        tracing::info!(
            first_seq = seq_last + 1,
            "change events restart after the state's snapshot; earlier ones are not on this replica"
        );
        Ok(())
    }

    fn write(&mut self, events: &[Event]) -> io::Result<()> {
        let mut last_seq = self.segments().last_seq;
        let mut at = 0;
        while at < events.len() {
            let event = &events[at];
            if event.seq <= last_seq {
                // Replayed after a restart: already in the files.
                at += 1;
                continue;
            }
            if event.seq != last_seq + 1 {
                // Nothing sends this (the state machine reports jumps first); keep the files
                // contiguous all the same.
                self.restart_after(event.seq - 1)?;
                last_seq = event.seq - 1;
            }
            let (first, count) = self.open_segment(last_seq + 1)?;
            let room = (EVENT_LOG_SEGMENT_EVENTS - count) as usize;
            let take = room.min(events.len() - at);
            // Every byte of the records is written below: the buffer only grows (zeroed once),
            // it is not cleared and zeroed again for each write.
            let bytes = take * EVENT_LOG_RECORD_BYTES;
            if self.buffer.len() < bytes {
                self.buffer.resize(bytes, 0);
            }
            for (i, event) in events[at..at + take].iter().enumerate() {
                debug_assert_eq!(event.seq, last_seq + 1 + i as u64);
                encode_record(
                    event,
                    &mut self.buffer[i * EVENT_LOG_RECORD_BYTES..(i + 1) * EVENT_LOG_RECORD_BYTES],
                );
            }
            self.file
                .as_mut()
                .expect("open_segment opened one")
                .write_all(&self.buffer[..bytes])?;
            last_seq += take as u64;
            at += take;
            {
                let mut segments = self.segments();
                let back = segments.list.back_mut().expect("the segment is listed");
                debug_assert_eq!(back.0, first);
                back.1 += take as u64;
                segments.last_seq = last_seq;
            }
            self.shared.published.send_replace(last_seq);
        }
        Ok(())
    }

    /// The newest segment, with room for `next_seq`: a new one when it is full (and the oldest
    /// removed past `EVENT_LOG_BYTES_MAX`). Returns its (first seq, events in it).
    fn open_segment(&mut self, next_seq: u64) -> io::Result<(u64, u64)> {
        let newest = self.segments().list.back().copied();
        if let (Some((first, count)), Some(_)) = (newest, &self.file)
            && count < EVENT_LOG_SEGMENT_EVENTS
        {
            debug_assert_eq!(first + count, next_seq);
            return Ok((first, count));
        }
        let path = segment_path(&self.shared.dir, next_seq);
        self.file = Some(
            OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .open(&path)?,
        );
        let removed: Vec<u64> = {
            let mut segments = self.segments();
            segments.list.push_back((next_seq, 0));
            let mut removed = Vec::new();
            let segments_max =
                EVENT_LOG_BYTES_MAX / (EVENT_LOG_SEGMENT_EVENTS * EVENT_LOG_RECORD_BYTES as u64);
            while segments.list.len() as u64 > segments_max.max(2) {
                let (old, _) = segments.list.pop_front().expect("more than two");
                removed.push(old);
            }
            segments.first_seq = segments.list.front().expect("just pushed").0;
            removed
        };
        for old in removed {
            fs::remove_file(segment_path(&self.shared.dir, old))?;
        }
        Ok((next_seq, 0))
    }
}

impl EventReader {
    /// The first and last sequence numbers this replica has (first = last + 1: none).
    pub fn range(&self) -> (u64, u64) {
        let segments = self.shared.segments.lock().expect("never poisoned");
        let last = (*self.shared.published.borrow()).min(segments.last_seq);
        (segments.first_seq, last)
    }

    /// Told each time the last readable sequence number moves.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.shared.published.subscribe()
    }

    /// At most `limit` events after `after`, oldest first (none: nothing newer yet).
    pub fn read(&self, after: u64, limit: usize) -> Result<Vec<Event>, EventsError> {
        let (first_seq, last_seq) = self.range();
        if after.saturating_add(1) < first_seq {
            return Err(EventsError::Gone { after, first_seq });
        }
        let mut events = Vec::new();
        if after >= last_seq {
            return Ok(events);
        }
        let mut next = after + 1;
        while events.len() < limit && next <= last_seq {
            let segment = {
                let segments = self.shared.segments.lock().expect("never poisoned");
                segments
                    .list
                    .iter()
                    .rev()
                    .find(|(first, _)| *first <= next)
                    .copied()
            };
            let Some((first, _)) = segment else {
                return Err(EventsError::Gone {
                    after,
                    first_seq: self.range().0,
                });
            };
            let want = (limit - events.len())
                .min((last_seq - next + 1) as usize)
                .min((first + EVENT_LOG_SEGMENT_EVENTS - next) as usize);
            let file = match File::open(segment_path(&self.shared.dir, first)) {
                Ok(file) => file,
                // Compacted since the lookup.
                Err(error) if error.kind() == io::ErrorKind::NotFound => {
                    return Err(EventsError::Gone {
                        after,
                        first_seq: self.range().0,
                    });
                }
                Err(error) => return Err(error.into()),
            };
            let mut bytes = vec![0u8; want * EVENT_LOG_RECORD_BYTES];
            file.read_exact_at(&mut bytes, (next - first) * EVENT_LOG_RECORD_BYTES as u64)?;
            for record in bytes.chunks_exact(EVENT_LOG_RECORD_BYTES) {
                let event = check_record(record)?;
                if event.seq != next {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("event {} found where event {next} belongs", event.seq),
                    )
                    .into());
                }
                events.push(event);
                next += 1;
            }
        }
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use ledger::{Account, Batch, BatchBody, StateMachine};

    use super::*;

    fn batches(state: &mut StateMachine, count: u128) -> Vec<Vec<Event>> {
        (0..count)
            .map(|i| {
                state.apply(&Batch {
                    timestamp: 1_000 + i as u64,
                    body: BatchBody::CreateAccounts(vec![Account {
                        id: i + 1,
                        ledger: 1,
                        code: 1,
                        ..Default::default()
                    }]),
                });
                state.take_events(i as u64 + 1)
            })
            .collect()
    }

    fn wait_for(reader: &EventReader, seq: u64) {
        let mut watch = reader.watch();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while *watch.borrow_and_update() < seq {
            assert!(std::time::Instant::now() < deadline, "writer stalled");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    #[test]
    fn events_written_are_read_back_whole_and_replays_are_skipped_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = StateMachine::default();
        state.set_events(true);
        let all = batches(&mut state, 5);
        let log = EventLog::open(dir.path()).unwrap();
        for events in all.iter().take(3) {
            log.append(events.clone());
        }
        let reader = log.reader();
        wait_for(&reader, 6);
        assert_eq!(reader.read(0, 100).unwrap(), all[..3].concat());
        assert_eq!(reader.read(2, 2).unwrap(), all.concat()[2..4]);
        assert!(reader.read(6, 10).unwrap().is_empty());
        assert!(reader.read(u64::MAX, 10).unwrap().is_empty());
        drop((log, reader));

        // A torn record at the end is cut; replayed events are skipped, new ones appended.
        let path = segment_path(&dir.path().join(EVENTS_DIR), 1);
        let file = OpenOptions::new().append(true).open(&path).unwrap();
        file.set_len(6 * EVENT_LOG_RECORD_BYTES as u64 - 10)
            .unwrap();
        let log = EventLog::open(dir.path()).unwrap();
        assert_eq!(log.reader().range(), (1, 5));
        log.state_at(0);
        for events in &all {
            log.append(events.clone());
        }
        wait_for(&log.reader(), 10);
        assert_eq!(log.reader().read(0, 100).unwrap(), all.concat());
    }

    #[test]
    fn a_state_ahead_of_the_files_restarts_them_and_older_reads_are_gone() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = StateMachine::default();
        state.set_events(true);
        let all = batches(&mut state, 4);
        let log = EventLog::open(dir.path()).unwrap();
        log.append(all[0].clone());
        // A snapshot at seq 6 installed: the events of batch 2 and 3 never come.
        log.state_at(6);
        log.append(all[3].clone());
        let reader = log.reader();
        wait_for(&reader, 8);
        assert_eq!(reader.range(), (7, 8));
        assert_eq!(reader.read(6, 10).unwrap(), all[3]);
        let gone = reader.read(0, 10).unwrap_err();
        assert!(
            matches!(
                gone,
                EventsError::Gone {
                    after: 0,
                    first_seq: 7
                }
            ),
            "{gone}"
        );
        assert!(gone.to_string().contains("first event is 7"), "{gone}");
    }
}
