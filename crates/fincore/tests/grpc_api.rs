//! The gRPC API through the real binary, with the Rust client: every operation, invalid
//! arguments, automatic batching of single transfers, and retries across a restart.

mod support;

use testkit::transfer;

use api::proto;
use client::{ClientError, RetryPolicy};
use ledger::{
    Account, AccountFilter, AccountFilterFlags, AccountFlags, CreateAccountResult as AR,
    CreateTransferResult as TR, Transfer, TransferFlags,
};

fn account(id: u128, flags: AccountFlags) -> Account {
    Account {
        id,
        ledger: 1,
        code: 1,
        flags,
        ..Default::default()
    }
}

/// A client of `node`, and accounts 1 and 2 (ledger 1, no flags) created there.
async fn client_with_two_accounts(node: &support::ChildNode) -> client::Client {
    let client = support::connect(&node.grpc_url(), RetryPolicy::default()).unwrap();
    client
        .create_accounts(&[
            account(1, AccountFlags::empty()),
            account(2, AccountFlags::empty()),
        ])
        .await
        .unwrap();
    client
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn every_operation_works_over_grpc_with_the_rust_client() {
    let dir = tempfile::tempdir().unwrap();
    let node = support::start_node(dir.path());
    runtime().block_on(async {
        let client = support::connect(&node.grpc_url(), RetryPolicy::default()).unwrap();
        let results = client
            .create_accounts(&[
                account(1, AccountFlags::HISTORY),
                account(2, AccountFlags::empty()),
            ])
            .await
            .unwrap();
        assert!(results.iter().all(|r| r.result == AR::Created));
        assert_eq!(
            client
                .create_accounts(&[account(1, AccountFlags::HISTORY)])
                .await
                .unwrap()[0]
                .result,
            AR::Exists
        );

        let batch = vec![
            transfer(10, 1, 2, 5),
            Transfer {
                flags: TransferFlags::PENDING,
                ..transfer(11, 2, 1, 9)
            },
            transfer(12, 1, 1, 5),
            Transfer {
                user_data_128: u128::MAX,
                ..transfer(13, 2, 1, u128::from(u64::MAX) + 7)
            },
        ];
        let results: Vec<TR> = client
            .create_transfers(&batch)
            .await
            .unwrap()
            .iter()
            .map(|r| r.result)
            .collect();
        assert_eq!(
            results,
            [
                TR::Created,
                TR::Created,
                TR::AccountsMustBeDifferent,
                TR::Created
            ]
        );
        // Resubmitting the same ids is idempotent.
        let again: Vec<TR> = client
            .create_transfers(&batch[..2])
            .await
            .unwrap()
            .iter()
            .map(|r| r.result)
            .collect();
        assert_eq!(again, [TR::Exists, TR::Exists]);

        let accounts = client.lookup_accounts(&[2, 99, 1]).await.unwrap();
        assert_eq!(accounts.iter().map(|a| a.id).collect::<Vec<_>>(), [2, 1]);
        assert_eq!(accounts[0].credits_posted, 5);
        assert_eq!(accounts[0].debits_pending, 9);
        assert_eq!(accounts[0].debits_posted, u128::from(u64::MAX) + 7);
        let transfers = client.lookup_transfers(&[13]).await.unwrap();
        assert_eq!(transfers[0].user_data_128, u128::MAX);

        let filter = AccountFilter {
            account_id: 1,
            limit: 10,
            flags: AccountFilterFlags::DEBITS | AccountFilterFlags::CREDITS,
            ..Default::default()
        };
        let history = client.get_account_transfers(&filter).await.unwrap();
        assert_eq!(
            history.iter().map(|t| t.id).collect::<Vec<_>>(),
            [10, 11, 13]
        );
        let balances = client.get_account_balances(&filter).await.unwrap();
        assert_eq!(balances.len(), 3);
        assert_eq!(balances[2].credits_posted, u128::from(u64::MAX) + 7);
    });
    node.stop().unwrap();
}

#[test]
fn invalid_arguments_are_refused_with_the_field_named() {
    let dir = tempfile::tempdir().unwrap();
    let node = support::start_node(dir.path());
    runtime().block_on(async {
        let client = support::connect(&node.grpc_url(), RetryPolicy::default()).unwrap();
        let bad_filter = AccountFilter {
            account_id: 1,
            limit: 0,
            flags: AccountFilterFlags::DEBITS,
            ..Default::default()
        };
        match client.get_account_transfers(&bad_filter).await {
            Err(ClientError::Invalid(message)) => assert!(message.contains("limit"), "{message}"),
            other => panic!("expected an invalid-argument error, got {other:?}"),
        }
        let linked = Transfer {
            flags: TransferFlags::LINKED,
            ..transfer(1, 1, 2, 1)
        };
        assert!(matches!(
            client.create_transfer(linked).await,
            Err(ClientError::Invalid(_))
        ));

        let channel = tonic::transport::Channel::from_shared(node.grpc_url())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut raw = support::raw_ledger(channel);
        let wide_code = proto::CreateTransfersRequest {
            transfers: vec![
                proto::Transfer::default(),
                proto::Transfer {
                    code: 70_000,
                    ..Default::default()
                },
            ],
            packed: Default::default(),
        };
        let status = raw.create_transfers(wide_code).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().contains("transfers[1].code"),
            "{}",
            status.message()
        );
        let ragged = proto::CreateTransfersRequest {
            transfers: vec![],
            packed: vec![0u8; 200].into(),
        };
        let status = raw.create_transfers(ragged).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("packed"), "{}", status.message());
        let too_many = proto::CreateTransfersRequest {
            transfers: vec![],
            packed: vec![0u8; 128 * 8190].into(),
        };
        let status = raw.create_transfers(too_many).await.unwrap_err();
        assert!(
            status.message().contains("8190 events"),
            "{}",
            status.message()
        );
        // Nothing was created by any of it.
        assert!(client.lookup_transfers(&[0, 1]).await.unwrap().is_empty());
    });
    node.stop().unwrap();
}

#[test]
fn single_transfers_from_many_tasks_are_batched_and_all_answered() {
    let dir = tempfile::tempdir().unwrap();
    let node = support::start_node(dir.path());
    runtime().block_on(async {
        let client = client_with_two_accounts(&node).await;
        let tasks: Vec<_> = (1..=2000u128)
            .map(|id| {
                let client = client.clone();
                tokio::spawn(async move { client.create_transfer(transfer(id, 1, 2, id)).await })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap().unwrap().result, TR::Created);
        }
        let accounts = client.lookup_accounts(&[2]).await.unwrap();
        assert_eq!(accounts[0].credits_posted, (1..=2000u128).sum::<u128>());
    });
    node.stop().unwrap();
}

/// Imported single transfers are never batched with others: the node judges a batch by its
/// first event's `imported` flag, so mixing them would fail strangers' transfers.
#[test]
fn imported_single_transfers_do_not_share_a_batch_with_others() {
    let dir = tempfile::tempdir().unwrap();
    let node = support::start_node(dir.path());
    runtime().block_on(async {
        let client = client_with_two_accounts(&node).await;
        let imported = |id: u128| id % 25 == 1;
        let tasks: Vec<_> = (1..=1000u128)
            .map(|id| {
                let client = client.clone();
                let mut single = transfer(id, 1, 2, id);
                if imported(id) {
                    // In the past, before the accounts: refused, but as an imported transfer.
                    single.flags |= TransferFlags::IMPORTED;
                    single.timestamp = 1;
                }
                tokio::spawn(async move { client.create_transfer(single).await })
            })
            .collect();
        for (id, task) in (1..=1000u128).zip(tasks) {
            let result = task.await.unwrap().unwrap().result;
            if imported(id) {
                assert!(
                    !matches!(
                        result,
                        TR::ImportedEventExpected | TR::ImportedEventNotExpected
                    ),
                    "{id}: {result:?}"
                );
            } else {
                assert_eq!(result, TR::Created, "{id}");
            }
        }
    });
    node.stop().unwrap();
}

#[test]
fn the_client_retries_across_a_node_restart_with_the_same_ids() {
    let dir = tempfile::tempdir().unwrap();
    let node = support::start_node(dir.path());
    let (grpc, http) = (node.grpc_addr.clone(), node.http_addr.clone());
    let runtime = runtime();
    let client = runtime.block_on(client_with_two_accounts(&node));
    node.kill9();
    // While the node is down the request keeps being retried; it lands once the node is back.
    let pending = runtime.spawn({
        let client = client.clone();
        async move { client.create_transfers(&[transfer(7, 1, 2, 70)]).await }
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    let node = support::start_node_on(dir.path(), &grpc, &http, &[]);
    let results = runtime.block_on(pending).unwrap().unwrap();
    assert_eq!(results[0].result, TR::Created);
    node.stop().unwrap();
}
