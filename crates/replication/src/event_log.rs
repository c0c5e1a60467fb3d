//! A replica's change events on disk: what it serves `GET /v1/events` and `Subscribe` from.
//!
//! The events are derived data: the journal and the snapshots are the truth, and each replica
//! regenerates the same events (same sequence numbers, see `ledger`'s `events` module) when it
//! applies. So this log is a cache of the replica's own apply, outside the journal's storage
//! seam and not fsynced as it is written: after a restart the state machine replays the journal
//! from its snapshot, and whatever the files lack is written again (what they already hold is
//! skipped).
//!
//! Layout: `DATA_DIR/events/<first seq, 20 digits>.evlog`, segments of
//! `EVENT_LOG_SEGMENT_EVENTS` records. A record is the ledger's 280-byte encoding with each
//! 8-byte word's leading zero bytes dropped (most fields of an event are small or zero, so a
//! transfer event takes 100–130 bytes instead of 280: the bytes the kernel copies into the page
//! cache are what events cost the ledger): a 2-byte length, one nibble per word saying how many
//! bytes it keeps, those bytes, and a CRC32C of it all. Records vary in size, so each segment
//! keeps in memory the position of one record in every `EVENT_LOG_INDEX_EVERY_EVENTS`; a read
//! starts there. The writer keeps the newest segment's positions as it writes; an older segment
//! found at open is indexed by one scan on its first read. A segment is fsynced when it is full,
//! before the next one is created, so every segment but the newest is whole. The oldest segments
//! are removed once the files pass `EVENT_LOG_BYTES_MAX`; a read before the first event kept is
//! refused with [`EventsError::Gone`] naming it. When the state jumps past the files (a snapshot
//! installed from the leader, or files lost), the files restart after the snapshot: the replica
//! has no events before it, and says so the same way. Files of the older fixed-size format
//! (`.events`) are removed at open; replay writes the events after the snapshot again.
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
    EVENT_LOG_BATCHES_QUEUED_MAX, EVENT_LOG_BYTES_MAX, EVENT_LOG_INDEX_EVERY_EVENTS,
    EVENT_LOG_RECORD_BYTES_MAX, EVENT_LOG_SEGMENT_EVENTS,
};
use tokio::sync::watch;

/// The 8-byte words of an event's encoding.
const WORDS: usize = EVENT_ENCODED_BYTES / 8;
/// One nibble per word: how many of its low bytes the record keeps.
const LENGTHS_BYTES: usize = WORDS.div_ceil(2);
/// A record's length prefix and checksum.
const LENGTH_BYTES: usize = 2;
const CRC_BYTES: usize = 4;
const _: () = assert!(EVENT_ENCODED_BYTES.is_multiple_of(8));
const _: () = assert!(
    LENGTH_BYTES + LENGTHS_BYTES + EVENT_ENCODED_BYTES + CRC_BYTES == EVENT_LOG_RECORD_BYTES_MAX
);

/// The directory of the event files inside a data directory.
pub const EVENTS_DIR: &str = "events";
const SEGMENT_SUFFIX: &str = ".evlog";
/// Segments of the older fixed-size format: removed at open.
const OLD_SEGMENT_SUFFIX: &str = ".events";

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

/// One segment file.
#[derive(Debug, Clone)]
struct Segment {
    first: u64,
    /// Events in it.
    count: u64,
    /// Bytes of whole records in it.
    bytes: u64,
    /// Where record `first + k × EVENT_LOG_INDEX_EVERY_EVENTS` starts, for each k below
    /// `count`; `None` until a read indexes a segment found at open.
    index: Option<Vec<u32>>,
}

/// What the files hold: contiguous segments, oldest first.
#[derive(Debug)]
struct Segments {
    list: VecDeque<Segment>,
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

/// Scans the segment files: keeps the newest contiguous run of whole segments, and cuts the
/// newest one after its last whole, intact record (indexing it on the way). Removes files of
/// the older format.
fn recover(dir: &Path) -> io::Result<Segments> {
    let mut firsts: Vec<u64> = Vec::new();
    let mut old_format = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(OLD_SEGMENT_SUFFIX) {
            fs::remove_file(entry.path())?;
            old_format += 1;
        } else if let Some(first) = name
            .strip_suffix(SEGMENT_SUFFIX)
            .and_then(|digits| digits.parse::<u64>().ok())
        {
            firsts.push(first);
        }
    }
    if old_format > 0 {
        tracing::info!(
            files = old_format,
            "removed change-event files of an older format; events after the snapshot are written again as the log replays"
        );
    }
    firsts.sort_unstable();
    let mut list: VecDeque<Segment> = VecDeque::new();
    for (position, &first) in firsts.iter().enumerate() {
        let path = segment_path(dir, first);
        let segment = match firsts.get(position + 1) {
            None => scan_newest(&path, first)?,
            // Only full segments are followed by another (and fsynced before it was made).
            Some(&next) if next - first == EVENT_LOG_SEGMENT_EVENTS => Segment {
                first,
                count: EVENT_LOG_SEGMENT_EVENTS,
                bytes: fs::metadata(&path)?.len(),
                index: None,
            },
            Some(_) => {
                // Not a full segment followed by its successor: a gap. Only what follows is
                // kept.
                for old in list.drain(..) {
                    fs::remove_file(segment_path(dir, old.first))?;
                }
                fs::remove_file(&path)?;
                continue;
            }
        };
        list.push_back(segment);
    }
    let (first_seq, last_seq) = match (list.front(), list.back()) {
        (Some(front), Some(back)) => (front.first, back.first + back.count - 1),
        _ => (1, 0),
    };
    Ok(Segments {
        list,
        last_seq,
        first_seq: first_seq.min(last_seq + 1),
    })
}

/// The newest segment: its whole records with a good checksum and the right sequence numbers,
/// from the start; the file is cut after the last of them.
fn scan_newest(path: &Path, first: u64) -> io::Result<Segment> {
    let mut file = OpenOptions::new().read(true).write(true).open(path)?;
    let mut bytes = Vec::new();
    io::Read::read_to_end(&mut file, &mut bytes)?;
    let mut index = Vec::new();
    let mut at = 0;
    let mut count = 0;
    while count < EVENT_LOG_SEGMENT_EVENTS {
        let Ok(Some((event, used))) = decode_record(&bytes[at..]) else {
            break;
        };
        if event.seq != first + count {
            break;
        }
        if count.is_multiple_of(EVENT_LOG_INDEX_EVERY_EVENTS) {
            index.push(at as u32);
        }
        at += used;
        count += 1;
    }
    if at != bytes.len() {
        file.set_len(at as u64)?;
    }
    Ok(Segment {
        first,
        count,
        bytes: at as u64,
        index: Some(index),
    })
}

/// Appends `event`'s record to `out` (at most `EVENT_LOG_RECORD_BYTES_MAX` bytes).
fn encode_record(event: &Event, out: &mut Vec<u8>) {
    let mut body = [0u8; EVENT_ENCODED_BYTES];
    event.encode(&mut body);
    // A word of slack: each word is stored whole (one fixed-size store, not a copy of a
    // varying length) and the position moves by the bytes it keeps.
    let mut record = [0u8; EVENT_LOG_RECORD_BYTES_MAX + 8];
    let mut at = LENGTH_BYTES + LENGTHS_BYTES;
    for (i, word) in body.chunks_exact(8).enumerate() {
        let word: [u8; 8] = word.try_into().expect("8 bytes");
        let kept = 8 - (u64::from_le_bytes(word).leading_zeros() / 8) as usize;
        record[LENGTH_BYTES + i / 2] |= (kept as u8) << ((i % 2) * 4);
        record[at..at + 8].copy_from_slice(&word);
        at += kept;
    }
    let length = (at - LENGTH_BYTES) as u16;
    record[..LENGTH_BYTES].copy_from_slice(&length.to_le_bytes());
    let crc = crc32c::crc32c(&record[..at]);
    record[at..at + CRC_BYTES].copy_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&record[..at + CRC_BYTES]);
}

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// The bytes of the record at the start of `bytes` (`None`: they end before it does).
fn record_len(bytes: &[u8]) -> io::Result<Option<usize>> {
    let Some(length) = bytes.get(..LENGTH_BYTES) else {
        return Ok(None);
    };
    let length = u16::from_le_bytes(length.try_into().expect("2 bytes")) as usize;
    if !(LENGTHS_BYTES..=LENGTHS_BYTES + EVENT_ENCODED_BYTES).contains(&length) {
        return Err(invalid(format!("an event record claims {length} bytes")));
    }
    let total = LENGTH_BYTES + length + CRC_BYTES;
    Ok((bytes.len() >= total).then_some(total))
}

/// The event whose record starts `bytes`, and the record's size (`None`: `bytes` ends first).
fn decode_record(bytes: &[u8]) -> io::Result<Option<(Event, usize)>> {
    let Some(total) = record_len(bytes)? else {
        return Ok(None);
    };
    let (covered, crc) = bytes[..total].split_at(total - CRC_BYTES);
    let stored = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
    if crc32c::crc32c(covered) != stored {
        return Err(invalid("an event record's checksum does not match"));
    }
    let lengths = &covered[LENGTH_BYTES..LENGTH_BYTES + LENGTHS_BYTES];
    let mut kept = &covered[LENGTH_BYTES + LENGTHS_BYTES..];
    let mut body = [0u8; EVENT_ENCODED_BYTES];
    for (i, word) in body.chunks_exact_mut(8).enumerate() {
        let length = ((lengths[i / 2] >> ((i % 2) * 4)) & 0xF) as usize;
        if length > 8 || length > kept.len() {
            return Err(invalid("an event record's word lengths do not fit it"));
        }
        word[..length].copy_from_slice(&kept[..length]);
        kept = &kept[length..];
    }
    if !kept.is_empty() || (WORDS % 2 == 1 && lengths[LENGTHS_BYTES - 1] >> 4 != 0) {
        return Err(invalid("an event record's word lengths do not fit it"));
    }
    let event = Event::decode(&body).map_err(|e| invalid(e.to_string()))?;
    Ok(Some((event, total)))
}

/// Where every `EVENT_LOG_INDEX_EVERY_EVENTS`-th record of a whole segment file starts.
fn index_file(path: &Path, count: u64) -> io::Result<Vec<u32>> {
    let bytes = fs::read(path)?;
    let mut index = Vec::with_capacity(count.div_ceil(EVENT_LOG_INDEX_EVERY_EVENTS) as usize);
    let mut at = 0;
    for k in 0..count {
        if k.is_multiple_of(EVENT_LOG_INDEX_EVERY_EVENTS) {
            index.push(at as u32);
        }
        let Some(total) = record_len(&bytes[at..])? else {
            return Err(invalid(format!(
                "{} ends after {k} of its {count} events",
                path.display()
            )));
        };
        at += total;
    }
    Ok(index)
}

/// The writer thread's state: the newest segment open for appending.
struct Writer {
    shared: Arc<Shared>,
    /// The newest segment (None: none yet, or the files restarted).
    file: Option<File>,
    buffer: Vec<u8>,
    /// Positions of the records being written that the index keeps.
    index: Vec<u32>,
}

impl Writer {
    fn new(shared: Arc<Shared>) -> io::Result<Writer> {
        let newest = shared
            .segments
            .lock()
            .expect("never poisoned")
            .list
            .back()
            .map(|s| (s.first, s.count));
        let file = match newest {
            Some((first, count)) => {
                let file = OpenOptions::new()
                    .append(true)
                    .open(segment_path(&shared.dir, first))?;
                if count < EVENT_LOG_SEGMENT_EVENTS {
                    Some(file)
                } else {
                    // Filled by an earlier process that stopped before starting the next
                    // segment, perhaps before its last bytes were durable: only the newest
                    // segment may be torn (see `recover`), so this one is made durable now.
                    file.sync_data()?;
                    None
                }
            }
            None => None,
        };
        Ok(Writer {
            shared,
            file,
            buffer: Vec::new(),
            index: Vec::new(),
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
            let old = segments.list.drain(..).map(|s| s.first).collect();
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
            let (first, count, bytes) = self.open_segment(last_seq + 1)?;
            let room = (EVENT_LOG_SEGMENT_EVENTS - count) as usize;
            let take = room.min(events.len() - at);
            self.buffer.clear();
            self.index.clear();
            for (i, event) in events[at..at + take].iter().enumerate() {
                debug_assert_eq!(event.seq, last_seq + 1 + i as u64);
                if (count + i as u64).is_multiple_of(EVENT_LOG_INDEX_EVERY_EVENTS) {
                    self.index.push((bytes + self.buffer.len() as u64) as u32);
                }
                encode_record(event, &mut self.buffer);
            }
            self.file
                .as_mut()
                .expect("open_segment opened one")
                .write_all(&self.buffer)?;
            last_seq += take as u64;
            at += take;
            {
                let written = self.buffer.len() as u64;
                let mut segments = self.segments();
                let back = segments.list.back_mut().expect("the segment is listed");
                debug_assert_eq!(back.first, first);
                back.count += take as u64;
                back.bytes += written;
                back.index
                    .as_mut()
                    .expect("the writer's segment is indexed")
                    .extend_from_slice(&self.index);
                segments.last_seq = last_seq;
            }
            self.shared.published.send_replace(last_seq);
        }
        Ok(())
    }

    /// The newest segment, with room for `next_seq`: a new one when it is full (the full one
    /// fsynced first, and the oldest removed past `EVENT_LOG_BYTES_MAX`). Returns its (first
    /// seq, events in it, bytes in it).
    fn open_segment(&mut self, next_seq: u64) -> io::Result<(u64, u64, u64)> {
        let newest = self
            .segments()
            .list
            .back()
            .map(|s| (s.first, s.count, s.bytes));
        if let Some((first, count, bytes)) = newest
            && count < EVENT_LOG_SEGMENT_EVENTS
            && self.file.is_some()
        {
            debug_assert_eq!(first + count, next_seq);
            return Ok((first, count, bytes));
        }
        if let Some(full) = self.file.take() {
            // Every segment but the newest is whole, even after a power loss (see `recover`).
            full.sync_data()?;
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
            segments.list.push_back(Segment {
                first: next_seq,
                count: 0,
                bytes: 0,
                index: Some(Vec::new()),
            });
            let mut removed = Vec::new();
            let mut total: u64 = segments.list.iter().map(|s| s.bytes).sum();
            while total > EVENT_LOG_BYTES_MAX && segments.list.len() > 2 {
                let old = segments.list.pop_front().expect("more than two");
                total -= old.bytes;
                removed.push(old.first);
            }
            segments.first_seq = segments.list.front().expect("just pushed").first;
            removed
        };
        for old in removed {
            fs::remove_file(segment_path(&self.shared.dir, old))?;
        }
        Ok((next_seq, 0, 0))
    }
}

/// Where a read in one segment starts: the indexed record at or before the event wanted.
struct ReadPlan {
    first: u64,
    /// Events and bytes the segment holds.
    count: u64,
    bytes: u64,
    /// The indexed record's sequence number and position.
    start_seq: u64,
    start_at: u64,
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
        let gone = || EventsError::Gone {
            after,
            first_seq: self.range().0,
        };
        let mut next = after + 1;
        while events.len() < limit && next <= last_seq {
            let Some(plan) = self.plan(next)? else {
                return Err(gone());
            };
            let want = (limit - events.len())
                .min((last_seq - next + 1) as usize)
                .min((plan.first + plan.count - next) as usize);
            let file = match File::open(segment_path(&self.shared.dir, plan.first)) {
                Ok(file) => file,
                // Compacted since the lookup.
                Err(error) if error.kind() == io::ErrorKind::NotFound => return Err(gone()),
                Err(error) => return Err(error.into()),
            };
            // The records from the indexed one to the last wanted fit in this many bytes.
            let records = (next - plan.start_seq) as usize + want;
            let len =
                (plan.bytes - plan.start_at).min((records * EVENT_LOG_RECORD_BYTES_MAX) as u64);
            let mut bytes = vec![0u8; len as usize];
            file.read_exact_at(&mut bytes, plan.start_at)?;
            // Records before the one wanted are stepped over, not checked.
            let mut at = 0;
            for _ in plan.start_seq..next {
                let Some(used) = record_len(&bytes[at..])? else {
                    return Err(invalid(format!("event {next}'s record is cut short")).into());
                };
                at += used;
            }
            let mut seq = next;
            let end = next + want as u64;
            while seq < end {
                let Some((event, used)) = decode_record(&bytes[at..])? else {
                    return Err(invalid(format!("event {seq}'s record is cut short")).into());
                };
                if event.seq != seq {
                    return Err(invalid(format!(
                        "event {} found where event {seq} belongs",
                        event.seq
                    ))
                    .into());
                }
                events.push(event);
                at += used;
                seq += 1;
            }
            next = end;
        }
        Ok(events)
    }

    /// Where to start reading for event `seq` (`None`: no segment holds it any more). Indexes
    /// a segment found at open on its first read.
    fn plan(&self, seq: u64) -> io::Result<Option<ReadPlan>> {
        let lookup = |segments: &Segments| {
            segments
                .list
                .iter()
                .rev()
                .find(|s| s.first <= seq)
                .map(|s| {
                    let plan = s.index.as_ref().map(|index| {
                        let k = (seq - s.first) / EVENT_LOG_INDEX_EVERY_EVENTS;
                        ReadPlan {
                            first: s.first,
                            count: s.count,
                            bytes: s.bytes,
                            start_seq: s.first + k * EVENT_LOG_INDEX_EVERY_EVENTS,
                            start_at: u64::from(index[k as usize]),
                        }
                    });
                    (s.first, s.count, plan)
                })
        };
        let (first, count) = {
            let segments = self.shared.segments.lock().expect("never poisoned");
            match lookup(&segments) {
                None => return Ok(None),
                Some((_, _, Some(plan))) => return Ok(Some(plan)),
                Some((first, count, None)) => (first, count),
            }
        };
        let index = match index_file(&segment_path(&self.shared.dir, first), count) {
            Ok(index) => index,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error),
        };
        let mut segments = self.shared.segments.lock().expect("never poisoned");
        if let Some(segment) = segments.list.iter_mut().find(|s| s.first == first)
            && segment.index.is_none()
        {
            segment.index = Some(index);
        }
        Ok(lookup(&segments).and_then(|(_, _, plan)| plan))
    }
}

#[cfg(test)]
mod tests {
    use ledger::{
        Account, Balances, Batch, BatchBody, BatchMarker, EventBody, EventKind, StateMachine,
        Transfer, TransferChange, TransferFlags,
    };

    use super::*;

    /// A transfer event whose fields vary with `seq`: small, large and zero words alike.
    fn transfer_event(seq: u64) -> Event {
        let mix = |k: u64| u128::from(seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (k % 64));
        Event {
            seq,
            kind: EventKind::TransferCreated,
            timestamp: 1_700_000_000_000_000_000 + seq,
            body: EventBody::Transfer(TransferChange {
                transfer: Transfer {
                    id: mix(1) << 64 | mix(2),
                    debit_account_id: u128::from(seq % 1_000) + 1,
                    credit_account_id: u128::MAX - u128::from(seq),
                    amount: mix(50),
                    pending_id: 0,
                    user_data_128: mix(seq % 128),
                    user_data_64: seq,
                    user_data_32: 0,
                    timeout: 0,
                    ledger: 7,
                    code: 1,
                    flags: TransferFlags::empty(),
                    timestamp: 1_700_000_000_000_000_000 + seq,
                },
                remote: Default::default(),
                debit: Balances {
                    debits_pending: 0,
                    debits_posted: mix(20),
                    credits_pending: 0,
                    credits_posted: mix(30),
                },
                credit: Balances {
                    debits_pending: u128::MAX,
                    debits_posted: 0,
                    credits_pending: 1,
                    credits_posted: mix(3) << 70,
                },
            }),
        }
    }

    fn marker(seq: u64) -> Event {
        Event {
            seq,
            kind: EventKind::Batch,
            timestamp: seq,
            body: EventBody::Batch(BatchMarker {
                first_seq: seq.saturating_sub(7),
                events_count: 7,
                log_index: seq / 8,
            }),
        }
    }

    #[test]
    fn records_keep_only_each_words_low_bytes_and_read_back_exactly() {
        let mut state = StateMachine::default();
        state.set_events(true);
        let accounts = batches(&mut state, 3).concat();
        let mut all: Vec<Event> = (1..2_000).map(transfer_event).collect();
        all.extend(accounts);
        all.push(marker(9));
        for event in &all {
            let mut record = Vec::new();
            encode_record(event, &mut record);
            assert!(record.len() <= EVENT_LOG_RECORD_BYTES_MAX);
            let (decoded, used) = decode_record(&record).unwrap().unwrap();
            assert_eq!((decoded, used), (*event, record.len()));
            // Cut short: not a record yet. Damaged: refused.
            assert!(
                decode_record(&record[..record.len() - 1])
                    .unwrap()
                    .is_none()
            );
            for at in [0, 1, 5, record.len() / 2, record.len() - 1] {
                let mut damaged = record.clone();
                damaged[at] ^= 0x10;
                assert!(
                    !matches!(decode_record(&damaged), Ok(Some((e, _))) if e == *event),
                    "a record damaged at byte {at} read back as the event"
                );
            }
        }
        // The point of the format: a typical transfer event (small amounts and balances,
        // no pending id or user data) is well under the fixed 288 bytes of the old one.
        let mut typical = transfer_event(12_345);
        if let EventBody::Transfer(change) = &mut typical.body {
            change.transfer.user_data_128 = 0;
            change.transfer.user_data_64 = 0;
            change.transfer.credit_account_id = 77;
            change.transfer.amount = 250;
            change.debit = Balances {
                debits_posted: 91_000,
                credits_posted: 5_000,
                ..Balances::default()
            };
            change.credit = change.debit;
        }
        let mut record = Vec::new();
        encode_record(&typical, &mut record);
        assert!(record.len() < 120, "{} bytes", record.len());
    }

    #[test]
    fn reads_start_anywhere_across_index_blocks_and_files_before_and_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let total = 2 * EVENT_LOG_SEGMENT_EVENTS + 300;
        let event = |seq: u64| {
            if seq.is_multiple_of(5) {
                marker(seq)
            } else {
                transfer_event(seq)
            }
        };
        let log = EventLog::open(dir.path()).unwrap();
        let mut seq = 1;
        while seq <= total {
            let end = (seq + 999).min(total);
            log.append((seq..=end).map(event).collect());
            seq = end + 1;
        }
        wait_for(&log.reader(), total);
        let check = |reader: &EventReader| {
            assert_eq!(reader.range(), (1, total));
            let every = EVENT_LOG_INDEX_EVERY_EVENTS;
            let segment = EVENT_LOG_SEGMENT_EVENTS;
            for after in [
                0,
                1,
                every - 1,
                every,
                every + 1,
                3 * every + 17,
                segment - 2,
                segment - 1,
                segment,
                segment + 5,
                2 * segment - 1,
                total - 2,
                total - 1,
            ] {
                for limit in [1, 3, every as usize + 2, 300] {
                    let want: Vec<Event> = (after + 1..=(after + limit as u64).min(total))
                        .map(event)
                        .collect();
                    assert_eq!(
                        reader.read(after, limit).unwrap(),
                        want,
                        "after {after} limit {limit}"
                    );
                }
            }
            assert!(reader.read(total, 10).unwrap().is_empty());
        };
        check(&log.reader());
        let files = fs::read_dir(dir.path().join(EVENTS_DIR)).unwrap().count();
        assert_eq!(files, 3);
        drop(log);
        // Reopened: the full files are indexed by their first read, the newest by the scan.
        let log = EventLog::open(dir.path()).unwrap();
        check(&log.reader());
        log.append((total + 1..=total + 10).map(event).collect());
        wait_for(&log.reader(), total + 10);
        assert_eq!(
            log.reader().read(total - 1, 100).unwrap(),
            (total..=total + 10).map(event).collect::<Vec<_>>()
        );
    }

    #[test]
    fn files_of_the_older_format_are_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let events = dir.path().join(EVENTS_DIR);
        fs::create_dir_all(&events).unwrap();
        let old = events.join(format!("{:020}{OLD_SEGMENT_SUFFIX}", 1));
        fs::write(&old, vec![7u8; 288 * 3]).unwrap();
        let log = EventLog::open(dir.path()).unwrap();
        assert!(!old.exists());
        assert_eq!(log.reader().range(), (1, 0));
    }

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
        file.set_len(file.metadata().unwrap().len() - 10).unwrap();
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
