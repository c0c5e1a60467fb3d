//! Crash-safety and tamper-evidence of the journal, at the byte level.

use std::fs;
use std::path::{Path, PathBuf};

use journal::{GroupCommitter, HEADER_SIZE, Journal, JournalError, JournalOptions, Op};

fn body(index: u64) -> Vec<u8> {
    (0..300 + index as usize * 7)
        .map(|i| (i as u64 * 31 + index) as u8)
        .collect()
}

fn write_records(dir: &Path, count: u64, options: JournalOptions) -> Vec<u64> {
    let (mut journal, _) = Journal::open(dir, options).unwrap();
    let mut offsets = Vec::new();
    let mut offset = 0u64;
    for index in 1..=count {
        offsets.push(offset);
        journal.append(1, index, &body(index)).unwrap();
        offset += (HEADER_SIZE + body(index).len()) as u64;
    }
    journal.sync().unwrap();
    offsets.push(offset);
    offsets
}

fn only_segment(dir: &Path) -> PathBuf {
    let mut segments: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(segments.len(), 1);
    segments.pop().unwrap()
}

fn read_all(journal: &Journal) -> Vec<(u64, Vec<u8>)> {
    journal
        .read_from(journal.first_index(), true)
        .unwrap()
        .map(|r| r.map(|r| (r.index, r.body)).unwrap())
        .collect()
}

#[test]
fn a_write_cut_at_every_byte_offset_of_the_tail_is_recovered() {
    let source = tempfile::tempdir().unwrap();
    let offsets = write_records(source.path(), 3, JournalOptions::default());
    let full = fs::read(only_segment(source.path())).unwrap();
    let tail_start = offsets[2] as usize;
    for cut in tail_start..=full.len() {
        for zero_fill in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let mut bytes = full[..cut].to_vec();
            if zero_fill {
                // A crash after the file grew but before the data reached the disk.
                bytes.resize(full.len() + 4096, 0);
            }
            let segment = dir
                .path()
                .join(only_segment(source.path()).file_name().unwrap());
            fs::write(&segment, &bytes).unwrap();
            let (mut journal, recovery) = Journal::open(dir.path(), JournalOptions::default())
                .unwrap_or_else(|e| {
                    panic!("cut at {cut} (zero fill {zero_fill}) was not recovered: {e}")
                });
            let complete = cut == full.len();
            assert_eq!(
                journal.last().index,
                if complete { 3 } else { 2 },
                "cut at {cut}"
            );
            assert_eq!(
                recovery.torn_tail.is_some(),
                !complete && cut > tail_start || zero_fill,
                "cut at {cut}"
            );
            assert_eq!(
                fs::metadata(&segment).unwrap().len(),
                if complete { full.len() } else { tail_start } as u64
            );
            if !complete {
                journal.append(1, 3, &body(3)).unwrap();
                journal.sync().unwrap();
            }
            drop(journal);
            let (journal, recovery) = Journal::open(dir.path(), JournalOptions::default()).unwrap();
            assert!(recovery.torn_tail.is_none());
            assert_eq!(
                read_all(&journal),
                (1..=3).map(|i| (i, body(i))).collect::<Vec<_>>()
            );
        }
    }
}

#[test]
fn a_flipped_byte_in_an_earlier_record_is_reported_with_file_and_offset() {
    let source = tempfile::tempdir().unwrap();
    let offsets = write_records(source.path(), 3, JournalOptions::default());
    let segment_name = only_segment(source.path()).file_name().unwrap().to_owned();
    let full = fs::read(only_segment(source.path())).unwrap();
    for at in 0..offsets[2] as usize {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = full.clone();
        bytes[at] ^= 0x01;
        fs::write(dir.path().join(&segment_name), &bytes).unwrap();
        let error = Journal::open(dir.path(), JournalOptions::default())
            .expect_err(&format!("flip at {at} went unnoticed"));
        let record_offset = if at < offsets[1] as usize {
            offsets[0]
        } else {
            offsets[1]
        };
        match &error {
            JournalError::Corrupt { path, offset, .. } => {
                assert_eq!(path.file_name().unwrap(), segment_name.as_os_str());
                assert_eq!(*offset, record_offset, "flip at {at}");
            }
            other => panic!("flip at {at}: expected corruption, got {other}"),
        }
        let message = error.to_string();
        assert!(
            message.contains(&format!("byte offset {record_offset}")) && message.contains(".seg"),
            "{message}"
        );
        // Nothing was changed on disk.
        assert_eq!(fs::read(dir.path().join(&segment_name)).unwrap(), bytes);
    }
}

/// Rewrites record `index`'s body byte and fixes both CRCs, as a careful forger would.
fn forge(bytes: &mut [u8], record_offset: usize) {
    let header = record_offset;
    let body_len = u32::from_le_bytes(bytes[header + 16..header + 20].try_into().unwrap()) as usize;
    let body = header + HEADER_SIZE;
    bytes[body + 5] ^= 0xff;
    let body_crc = crc32c::crc32c(&bytes[body..body + body_len]);
    bytes[header + 12..header + 16].copy_from_slice(&body_crc.to_le_bytes());
    let header_crc = crc32c::crc32c(&bytes[header + 12..header + HEADER_SIZE]);
    bytes[header + 8..header + 12].copy_from_slice(&header_crc.to_le_bytes());
}

#[test]
fn a_record_rewritten_with_valid_checksums_is_caught_by_the_hash_chain() {
    let source = tempfile::tempdir().unwrap();
    let offsets = write_records(source.path(), 3, JournalOptions::default());
    let segment = only_segment(source.path());
    let mut bytes = fs::read(&segment).unwrap();
    forge(&mut bytes, offsets[1] as usize);
    fs::write(&segment, &bytes).unwrap();
    // Checksums hold, so the journal opens; recomputing the chain exposes the forgery.
    let (journal, _) = Journal::open(source.path(), JournalOptions::default()).unwrap();
    let errors: Vec<String> = journal
        .read_from(1, true)
        .unwrap()
        .filter_map(|r| r.err())
        .map(|e| e.to_string())
        .collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("record 2 does not match its hash"),
        "{}",
        errors[0]
    );
    assert!(
        errors[0].contains(&format!("byte offset {}", offsets[1])),
        "{}",
        errors[0]
    );
}

#[test]
fn segments_roll_over_and_truncate_and_purge_keep_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let options = JournalOptions {
        segment_bytes_max: 1000,
        ..Default::default()
    };
    write_records(dir.path(), 10, options.clone());
    let segments = fs::read_dir(dir.path()).unwrap().count();
    assert!(segments >= 4, "expected several segments, found {segments}");

    let (mut journal, recovery) = Journal::open(dir.path(), options.clone()).unwrap();
    assert_eq!(recovery.records, 10);
    let hash_of_6 = journal.position(6).unwrap().hash;
    journal.truncate_after(6).unwrap();
    assert_eq!(journal.last().index, 6);
    assert_eq!(journal.last().hash, hash_of_6);
    journal.append(2, 7, b"rewritten by a new leader").unwrap();
    journal.sync().unwrap();
    let purged = journal.purge_before(5).unwrap();
    assert!(purged > 0);
    assert!(journal.first_index() <= 5);
    drop(journal);

    let (journal, _) = Journal::open(dir.path(), options).unwrap();
    assert_eq!(journal.last().index, 7);
    assert_eq!(journal.last().term, 2);
    let records = read_all(&journal);
    assert_eq!(records.last().unwrap().1, b"rewritten by a new leader");
    assert_eq!(records.first().unwrap().0, journal.first_index());
    assert!(
        journal.read_from(1, false).is_err(),
        "purged records cannot be read"
    );
}

fn append(
    committer: &GroupCommitter,
    index: u64,
    body_of: u64,
) -> Result<journal::Ticket, JournalError> {
    committer.send_blocking(Op::Append {
        term: 1,
        index,
        body: body(body_of),
    })
}

#[test]
fn group_commit_acknowledges_only_durable_records_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = Journal::open(dir.path(), JournalOptions::default()).unwrap();
    let committer = GroupCommitter::spawn(journal, 8, None);
    let tickets: Vec<_> = (1..=50u64)
        .map(|i| append(&committer, i, i).unwrap())
        .collect();
    for (i, ticket) in tickets.into_iter().enumerate() {
        assert_eq!(ticket.wait().unwrap().index, i as u64 + 1);
    }
    let barrier = committer
        .send_blocking(Op::Barrier)
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(barrier.index, 50);
    // An out-of-order index fails, and the writer refuses everything after it.
    assert!(append(&committer, 99, 1).unwrap().wait().is_err());
    assert!(append(&committer, 51, 1).unwrap().wait().is_err());
    let journal = committer
        .shutdown()
        .expect("the committer ran its own writer thread");
    assert_eq!(journal.last().index, 50);
    drop(journal);
    let (journal, _) = Journal::open(dir.path(), JournalOptions::default()).unwrap();
    assert_eq!(
        read_all(&journal),
        (1..=50).map(|i| (i, body(i))).collect::<Vec<_>>()
    );
}

#[test]
fn read_only_open_reports_a_torn_tail_without_cutting_it() {
    let dir = tempfile::tempdir().unwrap();
    write_records(dir.path(), 2, JournalOptions::default());
    let segment = only_segment(dir.path());
    let mut bytes = fs::read(&segment).unwrap();
    bytes.extend_from_slice(&[1, 2, 3]);
    fs::write(&segment, &bytes).unwrap();
    let (journal, recovery) = Journal::open(
        dir.path(),
        JournalOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(journal.last().index, 2);
    assert_eq!(recovery.torn_tail.unwrap().bytes, 3);
    assert_eq!(fs::read(&segment).unwrap(), bytes);
}
