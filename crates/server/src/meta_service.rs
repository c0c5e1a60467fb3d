//! The meta group's client API over gRPC (`fincore.v1.Meta`): the cluster map read as of now
//! (leader only: a read index), watched (any replica; each new map pushed as the replica
//! applies it) and changed (compare-and-set on the epoch; leader only); and the config center
//! read, watched the same way, and changed (set, rollback, gray release, promote, abandon),
//! each change stamped with the caller's key name and the time.
//!
//! Serve it behind [`crate::access::GrpcAccess`] (read: `GetMap`, `WatchMap`, `GetConfig`,
//! `WatchConfig`, `ConfigHistory`; admin: the changes). Owns the wire mapping and the
//! watchers' limits; must not decide what a valid change is (the `meta` crate does, when the
//! change is applied; `config_keys` checks the values of keys fincore takes itself).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use api::proto::{self, meta_server::Meta};
use cluster::ClusterMap;
use futures::Stream;
use meta::{ConfigCommand, ConfigRefusal, GrayTarget, MetaError, MetaGroup};
use telemetry::{ErrorKind, Metrics};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tonic::{Request, Response, Status};

use crate::auth::{Caller, Role};
use crate::pipeline::PipelineError;

/// A map as the wire carries it (no map: epoch 0, empty text).
fn map_message(map: Option<&ClusterMap>) -> proto::ClusterMapMessage {
    proto::ClusterMapMessage {
        epoch: map.map_or(0, ClusterMap::epoch),
        map_json: map.map(ClusterMap::to_json).unwrap_or_default(),
    }
}

/// The gRPC answer to a refused or failed call, and its kind for the metrics.
fn refusal(error: MetaError) -> (Status, ErrorKind) {
    match error {
        MetaError::Replication(write) => {
            let error = PipelineError::from(write);
            let kind = error.kind();
            (crate::grpc::status(error), kind)
        }
        // Not ABORTED, which clients retry: the same change stays refused until it is redone
        // from the map in use.
        MetaError::EpochMismatch { .. } => (
            Status::failed_precondition(error.to_string()),
            ErrorKind::Invalid,
        ),
        MetaError::Refused(_) => (
            Status::failed_precondition(format!("map_json: {error}")),
            ErrorKind::Invalid,
        ),
        MetaError::TooLarge { .. } => (
            Status::invalid_argument(format!("map_json: {error}")),
            ErrorKind::Invalid,
        ),
        MetaError::UnreadableOutcome => {
            (Status::internal(error.to_string()), ErrorKind::Unavailable)
        }
        MetaError::Config(refusal) => {
            let message = refusal.to_string();
            let status = match refusal {
                ConfigRefusal::NoSuchKey => Status::not_found(message),
                ConfigRefusal::VersionMismatch { .. }
                | ConfigRefusal::VersionGone { .. }
                | ConfigRefusal::GrayPending
                | ConfigRefusal::NoGray
                | ConfigRefusal::TooManyKeys => Status::failed_precondition(message),
                ConfigRefusal::BadKey(_)
                | ConfigRefusal::ValueTooLarge { .. }
                | ConfigRefusal::ControlCharacter { .. }
                | ConfigRefusal::BadTarget(_)
                | ConfigRefusal::BadValue(_)
                | ConfigRefusal::Malformed => Status::invalid_argument(message),
            };
            (status, ErrorKind::Invalid)
        }
    }
}

/// Who asked for a change, as the audit history keeps it: the API key's name (`anonymous`
/// on a replica serving without keys).
fn changed_by<T>(request: &Request<T>) -> String {
    let Some(caller) = request.extensions().get::<Caller>() else {
        return "anonymous".to_owned();
    };
    // Within what the history keeps of a name (`CONFIG_NAME_BYTES_MAX`), control characters
    // shown as `?`.
    let mut by = String::new();
    for c in caller.key.chars() {
        let c = if c.is_control() { '?' } else { c };
        if by.len() + c.len_utf8() > limits::CONFIG_NAME_BYTES_MAX {
            break;
        }
        by.push(c);
    }
    by
}

/// Now, as the audit history stamps it (Unix milliseconds).
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// A value for `key` fincore's own processes would refuse, refused before it is written.
fn check_value(key: &str, value: &str) -> Result<(), MetaError> {
    crate::config_keys::check(key, value)
        .map_err(|message| MetaError::Config(ConfigRefusal::BadValue(message)))
}

fn target_from(target: Option<proto::ConfigTarget>) -> Result<GrayTarget, MetaError> {
    let target = target.unwrap_or_default();
    let percent = u8::try_from(target.percent)
        .ok()
        .filter(|p| *p <= 100)
        .ok_or_else(|| {
            MetaError::Config(ConfigRefusal::BadTarget(format!(
                "target.percent: {} is not within 0 to 100",
                target.percent
            )))
        })?;
    Ok(GrayTarget {
        nodes: target.nodes,
        labels: target.labels.into_iter().collect(),
        percent,
    })
}

/// `fincore.v1.Meta` over one meta replica.
#[derive(Clone)]
pub struct MetaService {
    group: Arc<MetaGroup>,
    metrics: Arc<Metrics>,
    /// Watch streams open now (at most `limits.total`: `META_WATCHERS_MAX`).
    watchers: Arc<Semaphore>,
    /// True once the replica is stopping: open watches end at once.
    stopped: watch::Receiver<bool>,
    /// Watch streams open now of all keys below `admin` together (at most
    /// `limits.below_admin`), so that the rest stays for the gateways and nodes.
    below_admin: Arc<Semaphore>,
    /// Watch streams open now per key below `admin` (at most `limits.per_key` each).
    per_key: Arc<Mutex<HashMap<String, usize>>>,
    limits: WatcherLimits,
}

/// How many `WatchMap` streams a replica serves: in all, of every key below `admin` together,
/// and of one such key.
#[derive(Debug, Clone, Copy)]
struct WatcherLimits {
    total: usize,
    below_admin: usize,
    per_key: usize,
}

impl WatcherLimits {
    const DEFAULT: WatcherLimits = WatcherLimits {
        total: limits::META_WATCHERS_MAX,
        below_admin: limits::META_WATCHERS_BELOW_ADMIN_MAX,
        per_key: limits::META_WATCHERS_PER_KEY_MAX,
    };
}

/// One watch counted against its key and the keys below admin; uncounted when dropped (with
/// its stream).
struct KeyWatch {
    per_key: Arc<Mutex<HashMap<String, usize>>>,
    key: String,
    _below_admin: OwnedSemaphorePermit,
}

impl Drop for KeyWatch {
    fn drop(&mut self) {
        let mut per_key = self.per_key.lock().expect("never poisoned");
        if let Some(count) = per_key.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                per_key.remove(&self.key);
            }
        }
    }
}

impl MetaService {
    pub fn new(
        group: Arc<MetaGroup>,
        metrics: Arc<Metrics>,
        stopped: watch::Receiver<bool>,
    ) -> proto::meta_server::MetaServer<MetaService> {
        MetaService::with_watcher_limits(group, metrics, stopped, WatcherLimits::DEFAULT)
    }

    /// The service itself, for the HTTP listener's config routes (`meta_http`), which call
    /// its methods with the caller the key check found.
    pub(crate) fn unwrapped(
        group: Arc<MetaGroup>,
        metrics: Arc<Metrics>,
        stopped: watch::Receiver<bool>,
    ) -> MetaService {
        let limits = WatcherLimits::DEFAULT;
        MetaService {
            group,
            metrics,
            watchers: Arc::new(Semaphore::new(limits.total)),
            stopped,
            below_admin: Arc::new(Semaphore::new(limits.below_admin)),
            per_key: Arc::default(),
            limits,
        }
    }

    fn with_watcher_limits(
        group: Arc<MetaGroup>,
        metrics: Arc<Metrics>,
        stopped: watch::Receiver<bool>,
        limits: WatcherLimits,
    ) -> proto::meta_server::MetaServer<MetaService> {
        proto::meta_server::MetaServer::new(MetaService {
            group,
            metrics,
            watchers: Arc::new(Semaphore::new(limits.total)),
            stopped,
            below_admin: Arc::new(Semaphore::new(limits.below_admin)),
            per_key: Arc::default(),
            limits,
        })
        .max_decoding_message_size(limits::META_REQUEST_BYTES_MAX)
    }

    /// Counts a watch against `caller`'s key and the keys below admin if the key is below
    /// `admin` (`Ok(None)` for an admin key); the refusal's message when the key or the keys
    /// below admin already hold their most.
    fn count_watch(&self, caller: Option<&Caller>) -> Result<Option<KeyWatch>, String> {
        let Some(caller) = caller.filter(|caller| caller.role < Role::Admin) else {
            return Ok(None);
        };
        let mut per_key = self.per_key.lock().expect("never poisoned");
        if per_key.get(&caller.key).copied().unwrap_or(0) >= self.limits.per_key {
            return Err(format!(
                "API key {:?} holds {} watches on this replica (META_WATCHERS_PER_KEY_MAX for \
                 keys below admin); close one, or watch with a key of your own",
                caller.key, self.limits.per_key
            ));
        }
        let Ok(below_admin) = Arc::clone(&self.below_admin).try_acquire_owned() else {
            return Err(format!(
                "keys below admin hold {} watches on this replica \
                 (META_WATCHERS_BELOW_ADMIN_MAX; the rest is kept for gateways and nodes); \
                 retry later or watch another replica",
                self.limits.below_admin
            ));
        };
        // Counted only now: a refused key leaves no entry behind.
        *per_key.entry(caller.key.clone()).or_default() += 1;
        Ok(Some(KeyWatch {
            per_key: Arc::clone(&self.per_key),
            key: caller.key.clone(),
            _below_admin: below_admin,
        }))
    }

    fn observed<T>(
        &self,
        operation: &'static str,
        started: Instant,
        outcome: Result<T, MetaError>,
    ) -> Result<Response<T>, Status> {
        let (outcome, kind) = match outcome {
            Ok(answer) => (Ok(Response::new(answer)), None),
            Err(error) => {
                let (status, kind) = refusal(error);
                (Err(status), Some(kind))
            }
        };
        self.metrics
            .request("grpc", operation, started.elapsed(), kind);
        outcome
    }
}

type MapStream = Pin<Box<dyn Stream<Item = Result<proto::ClusterMapMessage, Status>> + Send>>;
type ConfigStream = Pin<Box<dyn Stream<Item = Result<proto::ConfigSnapshot, Status>> + Send>>;

impl MetaService {
    /// Takes a watch stream's permits for `caller` (the refusal, counted, if they are held).
    fn watch_permits(
        &self,
        operation: &'static str,
        started: Instant,
        caller: Option<&Caller>,
    ) -> Result<(OwnedSemaphorePermit, Option<KeyWatch>), Status> {
        let busy = |message: String| {
            let kind = Some(ErrorKind::Busy);
            self.metrics
                .request("grpc", operation, started.elapsed(), kind);
            Status::resource_exhausted(message)
        };
        let key_watch = self.count_watch(caller).map_err(busy)?;
        let permit = Arc::clone(&self.watchers).try_acquire_owned().map_err(|_| {
            busy(format!(
                "{} watchers are open on this replica (META_WATCHERS_MAX, maps and config together); retry later or watch another replica",
                self.limits.total
            ))
        })?;
        Ok((permit, key_watch))
    }

    /// Makes a config change for the caller's request `request_id` (empty: none), answering
    /// the revision and the key's version.
    async fn change_config(
        &self,
        operation: &'static str,
        started: Instant,
        change: Result<ConfigCommand, MetaError>,
        request_id: String,
    ) -> Result<Response<proto::ConfigChanged>, Status> {
        let request = (!request_id.is_empty()).then_some(request_id);
        let outcome = match change {
            Ok(change) => self.group.change_config(change, request).await,
            Err(error) => Err(error),
        };
        self.observed(
            operation,
            started,
            outcome.map(|(revision, version)| proto::ConfigChanged { revision, version }),
        )
    }
}

#[tonic::async_trait]
impl Meta for MetaService {
    async fn get_map(
        &self,
        _request: Request<proto::GetMapRequest>,
    ) -> Result<Response<proto::ClusterMapMessage>, Status> {
        let started = Instant::now();
        let outcome = self.group.map_linearizable().await;
        self.observed(
            "get_map",
            started,
            outcome.map(|map| map_message(map.as_ref())),
        )
    }

    type WatchMapStream = MapStream;

    async fn watch_map(
        &self,
        request: Request<proto::WatchMapRequest>,
    ) -> Result<Response<MapStream>, Status> {
        let started = Instant::now();
        let after_epoch = request.get_ref().after_epoch;
        let caller = request.extensions().get::<Caller>();
        let (permit, key_watch) = self.watch_permits("watch_map", started, caller)?;
        // Pulled by the watcher: a slow one holds back nothing but itself, and when it
        // catches up it is told the newest map only (`MapWatch` skips superseded epochs).
        let state = (
            self.group.watch(),
            self.stopped.clone(),
            Some((permit, key_watch)),
        );
        let stream = futures::stream::unfold(
            state,
            move |(mut watch, mut stopped, permit)| async move {
                // `permit` (with the key's count) is dropped with the stream, or here once it
                // has ended.
                permit.as_ref()?;
                loop {
                    let next = tokio::select! {
                        map = watch.next() => map,
                        _ = stopped.wait_for(|stopped| *stopped) => None,
                    };
                    let Some(map) = next else {
                        let ended = Status::unavailable(
                            "the meta replica is stopping or its Raft has failed: watch again (another replica), from the last epoch received",
                        );
                        return Some((Err(ended), (watch, stopped, None)));
                    };
                    if map.epoch() > after_epoch {
                        return Some((Ok(map_message(Some(&map))), (watch, stopped, permit)));
                    }
                }
            },
        );
        self.metrics
            .request("grpc", "watch_map", started.elapsed(), None);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn set_map(
        &self,
        request: Request<proto::SetMapRequest>,
    ) -> Result<Response<proto::ClusterMapMessage>, Status> {
        let started = Instant::now();
        let request = request.into_inner();
        let map = match ClusterMap::from_json(request.map_json.as_bytes()) {
            Ok(map) => map,
            Err(error) => {
                self.metrics.request(
                    "grpc",
                    "set_map",
                    started.elapsed(),
                    Some(ErrorKind::Invalid),
                );
                return Err(Status::invalid_argument(format!("map_json: {error}")));
            }
        };
        let outcome = self.group.set_map(request.expected_epoch, map).await;
        self.observed(
            "set_map",
            started,
            outcome.map(|map| map_message(Some(&map))),
        )
    }

    async fn get_config(
        &self,
        request: Request<proto::GetConfigRequest>,
    ) -> Result<Response<proto::ConfigSnapshot>, Status> {
        let started = Instant::now();
        let key = request.into_inner().key;
        let outcome = self.group.config_linearizable().await.map(|config| {
            let view = config.view((!key.is_empty()).then_some(key.as_str()));
            proto::ConfigSnapshot {
                revision: view.revision,
                config_json: view.to_json(),
            }
        });
        self.observed("get_config", started, outcome)
    }

    type WatchConfigStream = ConfigStream;

    async fn watch_config(
        &self,
        request: Request<proto::WatchConfigRequest>,
    ) -> Result<Response<ConfigStream>, Status> {
        let started = Instant::now();
        let after_revision = request.get_ref().after_revision;
        let caller = request.extensions().get::<Caller>();
        let (permit, key_watch) = self.watch_permits("watch_config", started, caller)?;
        // As for maps: pulled by the watcher, which is told the newest revision whole.
        let state = (
            self.group.watch_config(),
            self.stopped.clone(),
            Some((permit, key_watch)),
        );
        let stream = futures::stream::unfold(
            state,
            move |(mut watch, mut stopped, permit)| async move {
                permit.as_ref()?;
                loop {
                    let next = tokio::select! {
                        config = watch.next() => config,
                        _ = stopped.wait_for(|stopped| *stopped) => None,
                    };
                    let Some(config) = next else {
                        let ended = Status::unavailable(
                            "the meta replica is stopping or its Raft has failed: watch again (another replica), from the last revision received",
                        );
                        return Some((Err(ended), (watch, stopped, None)));
                    };
                    if config.revision() > after_revision || after_revision == 0 {
                        let view = config.view(None);
                        let message = proto::ConfigSnapshot {
                            revision: view.revision,
                            config_json: view.to_json(),
                        };
                        return Some((Ok(message), (watch, stopped, permit)));
                    }
                }
            },
        );
        self.metrics
            .request("grpc", "watch_config", started.elapsed(), None);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn config_history(
        &self,
        request: Request<proto::ConfigHistoryRequest>,
    ) -> Result<Response<proto::ConfigHistoryMessage>, Status> {
        let started = Instant::now();
        let key = request.into_inner().key;
        let outcome = self.group.config_linearizable().await.and_then(|config| {
            let history = config
                .history(&key)
                .ok_or(MetaError::Config(ConfigRefusal::NoSuchKey))?;
            Ok(proto::ConfigHistoryMessage {
                history_json: serde_json::to_string(&history)
                    .expect("a history holds only strings and numbers"),
            })
        });
        self.observed("config_history", started, outcome)
    }

    async fn set_config(
        &self,
        request: Request<proto::SetConfigRequest>,
    ) -> Result<Response<proto::ConfigChanged>, Status> {
        let started = Instant::now();
        let by = changed_by(&request);
        let request = request.into_inner();
        let change = check_value(&request.key, &request.value).map(|()| ConfigCommand::Set {
            key: request.key,
            value: request.value,
            expected_version: request.expected_version,
            by,
            at_ms: now_ms(),
        });
        self.change_config("set_config", started, change, request.request_id)
            .await
    }

    async fn rollback_config(
        &self,
        request: Request<proto::RollbackConfigRequest>,
    ) -> Result<Response<proto::ConfigChanged>, Status> {
        let started = Instant::now();
        let by = changed_by(&request);
        let request = request.into_inner();
        let change = ConfigCommand::Rollback {
            key: request.key,
            version: request.version,
            by,
            at_ms: now_ms(),
        };
        self.change_config("rollback_config", started, Ok(change), request.request_id)
            .await
    }

    async fn gray_config(
        &self,
        request: Request<proto::GrayConfigRequest>,
    ) -> Result<Response<proto::ConfigChanged>, Status> {
        let started = Instant::now();
        let by = changed_by(&request);
        let request = request.into_inner();
        let request_id = request.request_id;
        let change = check_value(&request.key, &request.value).and_then(|()| {
            Ok(ConfigCommand::Gray {
                target: target_from(request.target)?,
                key: request.key,
                value: request.value,
                by,
                at_ms: now_ms(),
            })
        });
        self.change_config("gray_config", started, change, request_id)
            .await
    }

    async fn promote_config(
        &self,
        request: Request<proto::PromoteConfigRequest>,
    ) -> Result<Response<proto::ConfigChanged>, Status> {
        let started = Instant::now();
        let by = changed_by(&request);
        let request = request.into_inner();
        let change = ConfigCommand::Promote {
            key: request.key,
            by,
            at_ms: now_ms(),
        };
        self.change_config("promote_config", started, Ok(change), request.request_id)
            .await
    }

    async fn abandon_config(
        &self,
        request: Request<proto::AbandonConfigRequest>,
    ) -> Result<Response<proto::ConfigChanged>, Status> {
        let started = Instant::now();
        let by = changed_by(&request);
        let request = request.into_inner();
        let change = ConfigCommand::Abandon {
            key: request.key,
            by,
            at_ms: now_ms(),
        };
        self.change_config("abandon_config", started, Ok(change), request.request_id)
            .await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use api::proto::meta_client::MetaClient;
    use cluster::{GroupId, Member, Members, Slot};
    use futures::StreamExt;
    use replication::{PeerNode, ReplicaConfig};
    use tonic::transport::Channel;

    use super::*;
    use crate::access::{Access, GrpcAccess};
    use crate::auth::{Auth, KeyStore, KeysFile, Role};

    fn members(port: u16) -> Members {
        BTreeMap::from([(
            1,
            Member {
                grpc: format!("http://127.0.0.1:{port}"),
                http: format!("http://127.0.0.1:{}", port + 1),
                peer: format!("127.0.0.1:{}", port + 2),
            },
        )])
    }

    fn first_map() -> ClusterMap {
        ClusterMap::new(BTreeMap::from([
            (GroupId::from_u128(1), members(20000)),
            (GroupId::from_u128(2), members(20010)),
        ]))
        .unwrap()
    }

    /// A meta group of one, served behind keys on a loopback socket; two read keys and an
    /// admin key.
    struct Served {
        channel: Channel,
        read: String,
        read_2: String,
        admin: String,
        stop: watch::Sender<bool>,
        group: Arc<MetaGroup>,
        _dir: tempfile::TempDir,
    }

    async fn serve(limits: WatcherLimits) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let config = ReplicaConfig {
            events: false,
            ..ReplicaConfig::default()
        };
        let group = Arc::new(
            MetaGroup::open(1, &dir.path().join("meta"), &config)
                .await
                .unwrap(),
        );
        group
            .replica()
            .initialize(&BTreeMap::from([(1, PeerNode::default())]))
            .await
            .unwrap();
        let keys_path = dir.path().join("keys.json");
        let mut keys = KeysFile::load_or_new(&keys_path).unwrap();
        let (_, read) = keys.create(Role::Read, Some("reader")).unwrap();
        let (_, read_2) = keys.create(Role::Read, Some("reader-2")).unwrap();
        let (_, admin) = keys.create(Role::Admin, Some("operator")).unwrap();
        keys.save().unwrap();
        let auth = Auth::Keys(Arc::new(KeyStore::open(&keys_path).unwrap()));
        let metrics = Metrics::new();
        let (stop, stopped) = watch::channel(false);
        let service = MetaService::with_watcher_limits(
            Arc::clone(&group),
            Arc::clone(&metrics),
            stopped,
            limits,
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let access = Access {
            auth,
            metrics,
            flow: Arc::new(flow::Gate::new(flow::Rules::default())),
        };
        let service = GrpcAccess::new(service, access, None);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        Served {
            channel,
            read,
            read_2,
            admin,
            stop,
            group,
            _dir: dir,
        }
    }

    fn with_key<T>(message: T, key: &str) -> Request<T> {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
        request
    }

    fn set(expected_epoch: u64, map: &ClusterMap, key: &str) -> Request<proto::SetMapRequest> {
        with_key(
            proto::SetMapRequest {
                expected_epoch,
                map_json: map.to_json(),
            },
            key,
        )
    }

    async fn next_epoch(
        stream: &mut tonic::Streaming<proto::ClusterMapMessage>,
    ) -> Result<u64, Status> {
        let message = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("a map within 10 s")
            .expect("the stream goes on")?;
        let map = ClusterMap::from_json(message.map_json.as_bytes()).unwrap();
        assert_eq!(map.epoch(), message.epoch);
        Ok(message.epoch)
    }

    async fn next_config(stream: &mut tonic::Streaming<proto::ConfigSnapshot>) -> meta::ConfigView {
        let message = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("a config within 10 s")
            .expect("the stream goes on")
            .unwrap();
        let view = meta::ConfigView::from_json(&message.config_json).unwrap();
        assert_eq!(view.revision, message.revision);
        view
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn config_is_changed_by_admins_only_audited_by_key_checked_and_pushed() {
        let served = serve(WatcherLimits::DEFAULT).await;
        let mut client = MetaClient::new(served.channel.clone());
        // Any replica serves a watch, leader or not.
        let request = with_key(
            proto::WatchConfigRequest { after_revision: 0 },
            &served.read,
        );
        let mut watch = client.watch_config(request).await.unwrap().into_inner();
        assert_eq!(next_config(&mut watch).await, meta::ConfigView::default());
        // Wait (bounded) for the one replica to lead.
        let mut led = false;
        for _ in 0..200 {
            let request = with_key(proto::GetConfigRequest::default(), &served.read);
            if client.get_config(request).await.is_ok() {
                led = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(led, "the replica did not lead within 5 s");
        let set = |value: &str, key: &str| {
            with_key(
                proto::SetConfigRequest {
                    key: crate::config_keys::FLOW_RULES.into(),
                    value: value.into(),
                    expected_version: None,
                    request_id: String::new(),
                },
                key,
            )
        };
        // A read key may not change it; nor may a caller without a key.
        let refused = client
            .set_config(set("{}", &served.read))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        let refused = client
            .set_config(Request::new(set("{}", &served.read).into_inner()))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        // Rules fincore would refuse are refused before anything is written, naming the field.
        let refused = client
            .set_config(set(r#"{"limits":[{"rate_per_second":0}]}"#, &served.admin))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert!(
            refused
                .message()
                .starts_with("value: flow.rules: limits[0].rate_per_second"),
            "{}",
            refused.message()
        );
        // An admin's change is pushed to the watcher and audited under the key's name.
        let changed = client
            .set_config(set(r#"{"switches":{"read_only":true}}"#, &served.admin))
            .await
            .unwrap()
            .into_inner();
        assert_eq!((changed.revision, changed.version), (1, 1));
        let view = next_config(&mut watch).await;
        assert_eq!(view.revision, 1);
        assert_eq!(
            view.keys[crate::config_keys::FLOW_RULES].value,
            r#"{"switches":{"read_only":true}}"#
        );
        let gray = with_key(
            proto::GrayConfigRequest {
                key: crate::config_keys::FLOW_RULES.into(),
                value: "{}".into(),
                target: Some(proto::ConfigTarget {
                    nodes: vec!["gw-1".into()],
                    labels: Default::default(),
                    percent: 0,
                }),
                request_id: String::new(),
            },
            &served.admin,
        );
        assert_eq!(
            client
                .gray_config(gray)
                .await
                .unwrap()
                .into_inner()
                .revision,
            2
        );
        let view = next_config(&mut watch).await;
        let entry = &view.keys[crate::config_keys::FLOW_RULES];
        let none = Default::default();
        assert_eq!(entry.value_for("flow.rules", "gw-1", &none), ("{}", true));
        assert_eq!(
            entry.value_for("flow.rules", "gw-2", &none).0,
            r#"{"switches":{"read_only":true}}"#
        );
        // A plain set while a gray release is staged is refused (FAILED_PRECONDITION).
        let refused = client
            .set_config(set("{}", &served.admin))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
        let history = client
            .config_history(with_key(
                proto::ConfigHistoryRequest {
                    key: crate::config_keys::FLOW_RULES.into(),
                },
                &served.read,
            ))
            .await
            .unwrap()
            .into_inner();
        let history: meta::HistoryView = serde_json::from_str(&history.history_json).unwrap();
        let audit: Vec<_> = history
            .changes
            .iter()
            .map(|change| (change.revision, change.by.as_str(), change.action))
            .collect();
        assert_eq!(
            audit,
            [
                (1, "operator", meta::config::Action::Set),
                (2, "operator", meta::config::Action::Gray)
            ]
        );
        let missing = client
            .config_history(with_key(
                proto::ConfigHistoryRequest {
                    key: "nothing".into(),
                },
                &served.read,
            ))
            .await
            .unwrap_err();
        assert_eq!(missing.code(), tonic::Code::NotFound);
        served.stop.send(true).unwrap();
        served.group.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_map_is_set_by_admins_only_read_and_pushed_to_watchers_until_the_replica_stops() {
        let served = serve(WatcherLimits::DEFAULT).await;
        let mut client = MetaClient::new(served.channel.clone());
        // Wait (bounded) for the one replica to lead.
        let mut map = None;
        for _ in 0..200 {
            match client
                .get_map(with_key(proto::GetMapRequest {}, &served.read))
                .await
            {
                Ok(answer) => {
                    map = Some(answer.into_inner());
                    break;
                }
                Err(status) if status.code() == tonic::Code::Unavailable => {
                    tokio::time::sleep(Duration::from_millis(25)).await
                }
                Err(status) => panic!("{status}"),
            }
        }
        assert_eq!(
            map.expect("a leader within 5 s"),
            proto::ClusterMapMessage::default()
        );

        // Keys: none, or a read key changing the map, are refused before anything is read.
        let first = first_map();
        let mut bare = proto::SetMapRequest {
            expected_epoch: 0,
            map_json: first.to_json(),
        };
        let refused = client
            .set_map(Request::new(bare.clone()))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        let refused = client
            .set_map(set(0, &first, &served.read))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        let refused = client
            .watch_map(Request::new(proto::WatchMapRequest { after_epoch: 0 }))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);

        // A watcher opened before any map is told of each one.
        let mut watch = client
            .watch_map(with_key(
                proto::WatchMapRequest { after_epoch: 0 },
                &served.read,
            ))
            .await
            .unwrap()
            .into_inner();

        // Text that is not a map is refused naming the field.
        bare.map_json = "{\"epoch\":1}".into();
        let refused = client
            .set_map(with_key(bare, &served.admin))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert!(
            refused.message().starts_with("map_json: "),
            "{}",
            refused.message()
        );

        let answer = client.set_map(set(0, &first, &served.admin)).await.unwrap();
        assert_eq!(answer.into_inner().epoch, 1);
        assert_eq!(next_epoch(&mut watch).await.unwrap(), 1);

        // The loser of a race, and a map that moves a slot.
        let second = first
            .set_members(GroupId::from_u128(2), members(20020))
            .unwrap();
        let refused = client
            .set_map(set(0, &second, &served.admin))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
        assert!(
            refused.message().contains("epoch 1"),
            "{}",
            refused.message()
        );
        let moved = first
            .move_slots(&[Slot::new(9).unwrap()], GroupId::from_u128(2))
            .unwrap();
        let refused = client
            .set_map(set(1, &moved, &served.admin))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
        assert!(
            refused.message().contains("slot 9"),
            "{}",
            refused.message()
        );

        client
            .set_map(set(1, &second, &served.admin))
            .await
            .unwrap();
        assert_eq!(next_epoch(&mut watch).await.unwrap(), 2);
        let now = client
            .get_map(with_key(proto::GetMapRequest {}, &served.read))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            ClusterMap::from_json(now.map_json.as_bytes()).unwrap(),
            second
        );

        // A watcher that asks only for newer maps than it has is not told of epoch 2 again.
        let mut later = client
            .watch_map(with_key(
                proto::WatchMapRequest { after_epoch: 2 },
                &served.read,
            ))
            .await
            .unwrap()
            .into_inner();
        let third = second
            .add_group(GroupId::from_u128(3), members(20030))
            .unwrap();
        client.set_map(set(2, &third, &served.admin)).await.unwrap();
        assert_eq!(next_epoch(&mut later).await.unwrap(), 3);
        assert_eq!(next_epoch(&mut watch).await.unwrap(), 3);

        // The replica stops: open watches end, UNAVAILABLE, at once.
        served.stop.send_replace(true);
        let ended = next_epoch(&mut watch).await.unwrap_err();
        assert_eq!(ended.code(), tonic::Code::Unavailable);
        served.group.shutdown().await;
    }

    /// Opens a watch with `key`, retrying (bounded) while a closed one's place is not yet
    /// given back (the server sees the close a moment later).
    async fn watch_once_freed(client: &mut MetaClient<Channel>, key: &str) {
        for _ in 0..200 {
            let request = with_key(proto::WatchMapRequest { after_epoch: 0 }, key);
            match client.watch_map(request).await {
                Ok(_) => return,
                Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                    tokio::time::sleep(Duration::from_millis(25)).await
                }
                Err(status) => panic!("{status}"),
            }
        }
        panic!("the closed watch's place was never freed");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn watchers_past_the_limit_are_refused_and_a_closed_watch_frees_its_place() {
        let served = serve(WatcherLimits {
            total: 2,
            below_admin: 64,
            per_key: 64,
        })
        .await;
        let mut client = MetaClient::new(served.channel.clone());
        let watch = || with_key(proto::WatchMapRequest { after_epoch: 0 }, &served.read);
        let first = client.watch_map(watch()).await.unwrap().into_inner();
        let _second = client.watch_map(watch()).await.unwrap().into_inner();
        let refused = client.watch_map(watch()).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused.message().contains("META_WATCHERS_MAX"),
            "{}",
            refused.message()
        );
        drop(first);
        watch_once_freed(&mut client, &served.read).await;
        served.group.shutdown().await;
    }

    /// A key below admin holds at most its share of the watches, and all such keys together
    /// at most theirs, so read keys cannot take them all from the gateways; admin keys beyond
    /// those shares still watch.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn read_keys_hold_at_most_their_share_of_the_watches() {
        let served = serve(WatcherLimits {
            total: 6,
            below_admin: 3,
            per_key: 2,
        })
        .await;
        let mut client = MetaClient::new(served.channel.clone());
        let watch = |key: &str| with_key(proto::WatchMapRequest { after_epoch: 0 }, key);
        let first = client.watch_map(watch(&served.read)).await.unwrap();
        let _second = client.watch_map(watch(&served.read)).await.unwrap();
        let refused = client.watch_map(watch(&served.read)).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused.message().contains("META_WATCHERS_PER_KEY_MAX")
                && refused.message().contains("\"reader\""),
            "{}",
            refused.message()
        );
        // Another read key has a share of its own, within the share of all keys below admin.
        let _other = client.watch_map(watch(&served.read_2)).await.unwrap();
        let together = client.watch_map(watch(&served.read_2)).await.unwrap_err();
        assert_eq!(together.code(), tonic::Code::ResourceExhausted);
        assert!(
            together.message().contains("META_WATCHERS_BELOW_ADMIN_MAX"),
            "{together}"
        );
        // An admin key is bounded by the total only.
        let mut admin = Vec::new();
        for _ in 0..3 {
            admin.push(client.watch_map(watch(&served.admin)).await.unwrap());
        }
        // The total (6) is reached now: even the admin key waits for a place.
        let full = client.watch_map(watch(&served.admin)).await.unwrap_err();
        assert!(full.message().contains("META_WATCHERS_MAX"), "{full}");
        // Closing one of the reader's watches gives its key (and the total) a place back.
        drop(first);
        watch_once_freed(&mut client, &served.read).await;
        served.group.shutdown().await;
    }
}
