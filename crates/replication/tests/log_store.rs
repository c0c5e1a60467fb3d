//! The Raft log on the journal never answers a read with a hole, even while the journal
//! writer lags behind a burst of appends that overflows the in-memory cache.

use bytes::Bytes;
use openraft::RaftLogReader;
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::testing::log_id;
use replication::SealedBatch;
use replication::data_dir::LEDGER_MACHINE;
use replication::openraft_side::{LogStore, StorageOptions, TypeConfig};

type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;

#[tokio::test]
async fn a_burst_of_appends_larger_than_the_cache_reads_back_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut log =
        LogStore::<TypeConfig>::open(dir.path(), &StorageOptions::default(), LEDGER_MACHINE)
            .unwrap();
    // 600 entries of 256 KiB in one append (a catching-up follower receives such bursts): the
    // cache holds 256, and the writer thread is still writing the first ones when the call
    // returns.
    let body = Bytes::from(vec![7u8; 256 << 10]);
    let entries: Vec<Entry> = (0..600)
        .map(|i| Entry::new_normal(log_id::<TypeConfig>(1, 1, i), SealedBatch(body.clone())))
        .collect();
    log.append(entries, IOFlushed::noop()).await.unwrap();
    let read = log.try_get_log_entries(0..600).await.unwrap();
    let indexes: Vec<u64> = read.iter().map(|e| e.log_id.index()).collect();
    assert_eq!(indexes, (0..600).collect::<Vec<u64>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_of_old_entries_stay_whole_while_new_appends_churn_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let body = Bytes::from(vec![3u8; 4 << 10]);
    let entry =
        move |i| Entry::new_normal(log_id::<TypeConfig>(1, 1, i), SealedBatch(body.clone()));
    {
        let mut log =
            LogStore::<TypeConfig>::open(dir.path(), &StorageOptions::default(), LEDGER_MACHINE)
                .unwrap();
        log.append((0..3000).map(entry.clone()), IOFlushed::noop())
            .await
            .unwrap();
        // A truncation waits for the writer, so everything above is on disk when it returns.
        log.truncate_after(Some(log_id::<TypeConfig>(1, 1, 2999)))
            .await
            .unwrap();
    }
    // Reopened (as after a restart): the cache holds the newest 256, the rest is read back from
    // the journal, slowly, while a leader's appends evict cached entries.
    let mut log =
        LogStore::<TypeConfig>::open(dir.path(), &StorageOptions::default(), LEDGER_MACHINE)
            .unwrap();
    let mut appender = log.clone();
    let appends = tokio::spawn(async move {
        for i in 3000..3600 {
            appender
                .append([entry(i)], IOFlushed::noop())
                .await
                .unwrap();
            tokio::task::yield_now().await;
        }
    });
    for _ in 0..20 {
        let read = log.try_get_log_entries(0..3000).await.unwrap();
        assert_eq!(read.len(), 3000);
        assert!(
            read.iter()
                .enumerate()
                .all(|(k, e)| e.log_id.index() == k as u64)
        );
    }
    appends.await.unwrap();
}
