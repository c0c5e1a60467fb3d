//! The embedded engine end to end on real files: acknowledged batches survive reopening, replay
//! is deterministic, verify proves a directory and catches a checkpoint that lies.

use std::fs;

use engine::{Engine, EngineError, EngineOptions, verify};
use ledger::{
    Account, AccountFlags, BatchBody, BatchResults, CreateTransferResult, Transfer, TransferFlags,
};

fn accounts(count: u128) -> BatchBody {
    BatchBody::CreateAccounts(
        (1..=count)
            .map(|id| Account {
                id,
                ledger: 7,
                code: 1,
                flags: AccountFlags::HISTORY,
                ..Default::default()
            })
            .collect(),
    )
}

fn transfers(first_id: u128, count: u128, accounts: u128) -> BatchBody {
    BatchBody::CreateTransfers(
        (first_id..first_id + count)
            .map(|id| Transfer {
                id,
                debit_account_id: id % accounts + 1,
                credit_account_id: (id + 1) % accounts + 1,
                amount: id * 3,
                ledger: 7,
                code: 1,
                flags: if id % 5 == 0 {
                    TransferFlags::PENDING
                } else {
                    TransferFlags::empty()
                },
                timeout: if id % 10 == 0 { 1 } else { 0 },
                ..Default::default()
            })
            .collect(),
    )
}

fn all_created(results: &BatchResults) -> bool {
    match results {
        BatchResults::CreateAccounts(r) => r
            .iter()
            .all(|r| r.result == ledger::CreateAccountResult::Created),
        BatchResults::CreateTransfers(r) => {
            r.iter().all(|r| r.result == CreateTransferResult::Created)
        }
    }
}

fn options(dir: &std::path::Path, checkpoint_interval_batches: u64) -> EngineOptions {
    EngineOptions {
        checkpoint_interval_batches,
        segment_bytes_max: 64 << 10,
        ..EngineOptions::new(dir)
    }
}

#[test]
fn acknowledged_batches_survive_reopening_with_and_without_checkpoints() {
    for interval in [0, 3] {
        let dir = tempfile::tempdir().unwrap();
        let (mut engine, report) = Engine::open(options(dir.path(), interval)).unwrap();
        assert_eq!(report.replayed_records, 0);
        assert!(all_created(&engine.submit(accounts(20)).unwrap()));
        for batch in 0..10 {
            assert!(all_created(
                &engine.submit(transfers(1 + batch * 100, 100, 20)).unwrap()
            ));
        }
        let digest = engine.state().digest();
        let durable = engine.durable();
        // No close: the process "crashes" here, the lock dies with the handle.
        drop(engine);

        let (engine, report) = Engine::open(options(dir.path(), interval)).unwrap();
        assert_eq!(engine.state().digest(), digest, "interval {interval}");
        assert_eq!(engine.durable(), durable);
        assert_eq!(engine.state().transfers_count(), 1000);
        if interval == 0 {
            assert_eq!(
                (report.checkpoint_index, report.replayed_records),
                (None, 11)
            );
        } else {
            assert_eq!(
                (report.checkpoint_index, report.replayed_records),
                (Some(9), 2)
            );
        }
        engine.close().unwrap();

        // A clean close leaves a checkpoint at the head, so nothing is replayed.
        let (engine, report) = Engine::open(options(dir.path(), interval)).unwrap();
        assert_eq!(
            (report.checkpoint_index, report.replayed_records),
            (Some(11), 0)
        );
        assert_eq!(engine.state().digest(), digest);
    }
}

#[test]
fn the_same_batches_replayed_give_a_byte_identical_state() {
    let dir = tempfile::tempdir().unwrap();
    let (mut engine, _) = Engine::open(options(dir.path(), 4)).unwrap();
    engine.submit(accounts(10)).unwrap();
    for batch in 0..9 {
        engine.submit(transfers(1 + batch * 50, 50, 10)).unwrap();
    }
    let digest = engine.state().digest();
    engine.close().unwrap();

    // Replay from genesis (checkpoints removed) must reproduce the digest exactly.
    fs::remove_dir_all(dir.path().join("checkpoints")).unwrap();
    let (engine, report) = Engine::open(options(dir.path(), 0)).unwrap();
    assert_eq!(report.replayed_records, 10);
    assert_eq!(engine.state().digest(), digest);
    drop(engine);

    let report = verify(dir.path()).unwrap();
    assert_eq!(report.records, 10);
    assert_eq!(report.events, 10 + 450);
    assert_eq!(report.final_digest, digest);
}

#[test]
fn verify_proves_the_checkpoint_and_catches_one_that_disagrees_with_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let (mut engine, _) = Engine::open(options(dir.path(), 0)).unwrap();
    engine.submit(accounts(5)).unwrap();
    engine.submit(transfers(1, 40, 5)).unwrap();
    engine.close().unwrap();
    let report = verify(dir.path()).unwrap();
    let (at, digest) = report.checkpoint.unwrap();
    assert_eq!(at, 2);
    assert_eq!(digest, report.final_digest);

    // Rewrite the checkpoint's state bytes (keeping its trailer): the replay disagrees.
    let checkpoint = fs::read_dir(dir.path().join("checkpoints"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = fs::read(&checkpoint).unwrap();
    bytes[40] ^= 0x55;
    fs::write(&checkpoint, &bytes).unwrap();
    let error = verify(dir.path()).unwrap_err().to_string();
    assert!(error.contains("do not match the digest"), "{error}");
    let error = match Engine::open(options(dir.path(), 0)) {
        Err(error) => error.to_string(),
        Ok(_) => panic!("a damaged checkpoint was loaded"),
    };
    assert!(error.contains("checkpoint"), "{error}");
}

#[test]
fn a_second_engine_on_the_same_data_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_engine, _) = Engine::open(options(dir.path(), 0)).unwrap();
    match Engine::open(options(dir.path(), 0)) {
        Err(EngineError::Locked(path)) => assert_eq!(path, dir.path()),
        Err(other) => panic!("expected Locked, got {other}"),
        Ok(_) => panic!("two engines opened one data directory"),
    }
}

#[test]
fn an_oversized_batch_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut engine, _) = Engine::open(options(dir.path(), 0)).unwrap();
    let too_many = ledger::BATCH_EVENTS_MAX as u128 + 1;
    assert!(matches!(
        engine.submit(accounts(too_many)),
        Err(EngineError::TooManyEvents(_))
    ));
    assert_eq!(engine.state().accounts_count(), 0);
    assert_eq!(engine.durable().index, 0);
}
