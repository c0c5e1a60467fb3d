//! Cluster maps pushed by the meta group: a gateway started with `--meta` takes its first map
//! from the meta group and then routes by each newer map the group pushes (`WatchMap`), as
//! [`Gateway::reload`] allows (a newer epoch, no slot moved).
//!
//! A broken watch (a meta replica stopped, a partition) is opened again, on any meta replica,
//! after the last epoch taken, with a doubling wait bounded by `GATEWAY_MAP_WATCH_RETRY_MS_MAX`;
//! a map the gateway refuses is reported and skipped (the next map is taken if it may succeed
//! the one in use). Must not decide what a valid map is (`cluster` and the meta group do).

use std::sync::Arc;
use std::time::Duration;

use client::{Client, ClientError, RetryPolicy};
use cluster::ClusterMap;
use tokio::task::JoinHandle;

use crate::{Gateway, GroupAccess, Groups};

/// The meta group as a gateway reaches it: a client of its replicas (`HOST:PORT` each) with
/// the gateway's key and TLS.
pub fn meta_client(addrs: &[&str], access: &GroupAccess) -> Result<Client, ClientError> {
    let policy = RetryPolicy {
        elapsed_max: Duration::from_secs(limits::GATEWAY_GROUP_CALL_SECONDS_MAX),
        attempt_timeout: Duration::from_secs(limits::GATEWAY_GROUP_CALL_SECONDS_MAX / 2),
        ..RetryPolicy::default()
    };
    access.client(addrs, policy, None)
}

/// The cluster map the meta group holds now, waiting (at most `patience`) for the meta group
/// to answer and to hold one.
pub async fn first_map(meta: &Client, patience: Duration) -> Result<ClusterMap, ClientError> {
    let deadline = tokio::time::Instant::now() + patience;
    let mut last = String::from("no answer yet");
    while tokio::time::Instant::now() < deadline {
        let watched = tokio::time::timeout_at(deadline, async {
            let mut watch = meta.watch_cluster_map(0).await?;
            watch.next().await
        })
        .await;
        match watched {
            Ok(Ok(Some(map))) => return Ok(map),
            // A refused key or a map that does not decode: waiting will not help.
            Ok(Err(
                error @ (ClientError::Unauthenticated(_) | ClientError::PermissionDenied(_)),
            )) => {
                return Err(error);
            }
            Ok(Err(error)) => last = error.to_string(),
            Ok(Ok(None)) => last = "the meta replica ended the watch".into(),
            Err(_) => last = "the meta group holds no cluster map yet (set one with SetMap)".into(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(ClientError::GaveUp {
        attempts: 1,
        elapsed: patience,
        last,
    })
}

/// Routes `gateway` by each newer map the meta group pushes, until the task is aborted.
pub fn follow(gateway: Arc<Gateway>, meta: Client, access: GroupAccess) -> JoinHandle<()> {
    tokio::spawn(async move {
        let retry_max = Duration::from_millis(limits::GATEWAY_MAP_WATCH_RETRY_MS_MAX);
        let mut wait = Duration::from_millis(50);
        loop {
            let after = gateway.map().epoch();
            match meta.watch_cluster_map(after).await {
                Ok(mut watch) => loop {
                    match watch.next().await {
                        Ok(Some(map)) => {
                            wait = Duration::from_millis(50);
                            take(&gateway, map, &access);
                        }
                        Ok(None) => break,
                        Err(error) => {
                            tracing::warn!(%error, "the cluster map watch broke; watching again");
                            break;
                        }
                    }
                },
                Err(error) => {
                    tracing::warn!(%error, "cannot watch the meta group's cluster map; retrying");
                }
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(retry_max);
        }
    })
}

/// Routes by `map` if the gateway takes it; says what it did either way.
fn take(gateway: &Gateway, map: ClusterMap, access: &GroupAccess) {
    let epoch = map.epoch();
    let taken = Groups::connect(&map, access)
        .map_err(|error| error.to_string())
        .and_then(|groups| {
            gateway
                .reload(map, groups)
                .map_err(|error| error.to_string())
        });
    match taken {
        Ok(_) => tracing::info!(epoch, "routing by the cluster map the meta group pushed"),
        Err(error) => tracing::warn!(
            epoch,
            kept = gateway.map().epoch(),
            %error,
            "a cluster map the meta group pushed was not taken"
        ),
    }
}
