//! The meta group's calls (`fincore.v1.Meta`): the cluster map read as of now, changed under
//! the epoch compare-and-set, and watched. A [`crate::Client`] built on the meta replicas'
//! addresses makes them, with the same keys, TLS, retries and leader following as ledger calls.
//!
//! Owns the conversion between the wire's map text and `cluster::ClusterMap` (checked whole);
//! must not decide what a valid change is (the meta group does).

use api::proto;
use cluster::ClusterMap;
use tonic::Streaming;

use crate::{Client, ClientError};

/// A map as the wire carries it, checked (`None`: no map set yet).
fn map_from(message: &proto::ClusterMapMessage) -> Result<Option<ClusterMap>, ClientError> {
    if message.epoch == 0 && message.map_json.is_empty() {
        return Ok(None);
    }
    let map = ClusterMap::from_json(message.map_json.as_bytes())
        .map_err(|error| ClientError::Protocol(format!("the meta group's map: {error}")))?;
    if map.epoch() != message.epoch {
        return Err(ClientError::Protocol(format!(
            "the meta group sent a map of epoch {} as epoch {}",
            map.epoch(),
            message.epoch
        )));
    }
    Ok(Some(map))
}

impl Client {
    /// The cluster map as of now (the meta group's leader answers; `None`: none set yet).
    pub async fn cluster_map(&self) -> Result<Option<ClusterMap>, ClientError> {
        let message = self
            .retrying("get_map", |mut inner| async move {
                inner.meta.get_map(proto::GetMapRequest {}).await
            })
            .await?;
        map_from(&message)
    }

    /// Makes `map` the cluster map if the map in use has epoch `expected_epoch` (0: none yet)
    /// and `map` may succeed it; answers the map now in use. Refused ([`ClientError::Invalid`],
    /// naming the epoch in use) when the map changed since `expected_epoch`: read it again and
    /// redo the change. Retried like a write: a retry of a change that was applied is refused
    /// that way too, so after an error read the map to see whether it holds `map`.
    pub async fn set_cluster_map(
        &self,
        expected_epoch: u64,
        map: &ClusterMap,
    ) -> Result<ClusterMap, ClientError> {
        let request = proto::SetMapRequest {
            expected_epoch,
            map_json: map.to_json(),
        };
        let message = self
            .retrying("set_map", |mut inner| {
                let request = request.clone();
                async move { inner.meta.set_map(request).await }
            })
            .await?;
        map_from(&message)?.ok_or_else(|| {
            ClientError::Protocol("the meta group answered a change with no map".into())
        })
    }

    /// Watches the cluster map on one meta replica (any: followers serve it): the map it holds
    /// if newer than `after_epoch`, then each newer one as it applies it.
    pub async fn watch_cluster_map(
        &self,
        after_epoch: u64,
    ) -> Result<ClusterMapWatch, ClientError> {
        let stream = self
            .retrying("watch_map", |mut inner| async move {
                inner
                    .meta
                    .watch_map(proto::WatchMapRequest { after_epoch })
                    .await
            })
            .await?;
        Ok(ClusterMapWatch {
            stream,
            epoch: after_epoch,
        })
    }
}

/// New cluster maps from one meta replica, each newer than the last.
pub struct ClusterMapWatch {
    stream: Streaming<proto::ClusterMapMessage>,
    epoch: u64,
}

impl ClusterMapWatch {
    /// The next map; `Ok(None)` once the replica ended the watch, an error if it broke (either
    /// way, watch again from [`ClusterMapWatch::epoch`], on this replica or another).
    pub async fn next(&mut self) -> Result<Option<ClusterMap>, ClientError> {
        let Some(message) =
            self.stream.message().await.map_err(|status| {
                ClientError::Protocol(format!("the map watch broke: {status}"))
            })?
        else {
            return Ok(None);
        };
        let map = map_from(&message)?
            .ok_or_else(|| ClientError::Protocol("the meta group pushed an empty map".into()))?;
        if map.epoch() <= self.epoch {
            return Err(ClientError::Protocol(format!(
                "the meta group pushed epoch {} after epoch {}",
                map.epoch(),
                self.epoch
            )));
        }
        self.epoch = map.epoch();
        Ok(Some(map))
    }

    /// The epoch of the last map this watch gave (or the one it was opened after).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
}

/// A change to the config center (`fincore.v1.Meta`'s config calls), as
/// [`Client::change_config`] sends it.
#[derive(Debug, Clone)]
pub enum ConfigRequest {
    Set(proto::SetConfigRequest),
    Rollback(proto::RollbackConfigRequest),
    Gray(proto::GrayConfigRequest),
    Promote(proto::PromoteConfigRequest),
    Abandon(proto::AbandonConfigRequest),
}

impl Client {
    /// The config center as of now (the meta group's leader answers), or one key of it: its
    /// revision and its JSON text (`meta::ConfigView`, as `docs/config-center.md` shows).
    pub async fn config(&self, key: Option<&str>) -> Result<(u64, String), ClientError> {
        let request = proto::GetConfigRequest {
            key: key.unwrap_or_default().to_owned(),
        };
        let message = self
            .retrying("get_config", |mut inner| {
                let request = request.clone();
                async move { inner.meta.get_config(request).await }
            })
            .await?;
        Ok((message.revision, message.config_json))
    }

    /// `key`'s audit history as JSON text (`meta::HistoryView`).
    pub async fn config_history(&self, key: &str) -> Result<String, ClientError> {
        let request = proto::ConfigHistoryRequest {
            key: key.to_owned(),
        };
        let message = self
            .retrying("config_history", |mut inner| {
                let request = request.clone();
                async move { inner.meta.config_history(request).await }
            })
            .await?;
        Ok(message.history_json)
    }

    /// Makes a change to the config center, answering the revision it made and the key's
    /// version after it. Retried like a write, safely: the change carries a request id (a
    /// random one unless the request names its own), and the meta group answers a retry of a
    /// change it already made with that change instead of making it again.
    pub async fn change_config(
        &self,
        mut change: ConfigRequest,
    ) -> Result<(u64, u64), ClientError> {
        let request_id = match &mut change {
            ConfigRequest::Set(request) => &mut request.request_id,
            ConfigRequest::Rollback(request) => &mut request.request_id,
            ConfigRequest::Gray(request) => &mut request.request_id,
            ConfigRequest::Promote(request) => &mut request.request_id,
            ConfigRequest::Abandon(request) => &mut request.request_id,
        };
        if request_id.is_empty() {
            let mut random = [0u8; 16];
            getrandom::fill(&mut random)
                .map_err(|error| ClientError::Protocol(format!("no random request id: {error}")))?;
            *request_id = random.iter().map(|byte| format!("{byte:02x}")).collect();
        }
        let message = self
            .retrying("change_config", |mut inner| {
                let change = change.clone();
                async move {
                    match change {
                        ConfigRequest::Set(request) => inner.meta.set_config(request).await,
                        ConfigRequest::Rollback(request) => {
                            inner.meta.rollback_config(request).await
                        }
                        ConfigRequest::Gray(request) => inner.meta.gray_config(request).await,
                        ConfigRequest::Promote(request) => inner.meta.promote_config(request).await,
                        ConfigRequest::Abandon(request) => inner.meta.abandon_config(request).await,
                    }
                }
            })
            .await?;
        Ok((message.revision, message.version))
    }

    /// Watches the config center on one meta replica (any): as held now if newer than
    /// `after_revision` (0: as held now, whatever it is), then each newer revision.
    pub async fn watch_config(&self, after_revision: u64) -> Result<ConfigWatch, ClientError> {
        let stream = self
            .retrying("watch_config", |mut inner| async move {
                inner
                    .meta
                    .watch_config(proto::WatchConfigRequest { after_revision })
                    .await
            })
            .await?;
        Ok(ConfigWatch {
            stream,
            revision: after_revision,
        })
    }
}

/// New revisions of the config center from one meta replica, each newer than the last.
pub struct ConfigWatch {
    stream: Streaming<proto::ConfigSnapshot>,
    revision: u64,
}

impl ConfigWatch {
    /// The next revision and its JSON text; `Ok(None)` once the replica ended the watch, an
    /// error if it broke (either way, watch again from [`ConfigWatch::revision`]).
    pub async fn next(&mut self) -> Result<Option<(u64, String)>, ClientError> {
        let Some(message) =
            self.stream.message().await.map_err(|status| {
                ClientError::Protocol(format!("the config watch broke: {status}"))
            })?
        else {
            return Ok(None);
        };
        if message.revision < self.revision
            || (message.revision == self.revision && self.revision != 0)
        {
            return Err(ClientError::Protocol(format!(
                "the meta group pushed config revision {} after revision {}",
                message.revision, self.revision
            )));
        }
        self.revision = message.revision;
        Ok(Some((message.revision, message.config_json)))
    }

    /// The revision of the last config this watch gave (or the one it was opened after).
    pub fn revision(&self) -> u64 {
        self.revision
    }
}
