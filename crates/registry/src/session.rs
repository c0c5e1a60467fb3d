//! The session layer: the client streams, what each registered and subscribes to, and the
//! pushes that follow each change.
//!
//! A change reaches subscribers in three steps, none with a fixed delay:
//! 1. the store gathers changed keys into one set (a key changed many times is in it once);
//! 2. one notifier drains that set whenever it is not empty and, per key, marks each
//!    subscription to it in its stream's set of marks (a subscription marked twice is marked
//!    once);
//! 3. each stream's pusher takes its marks and sends each subscription its key's set as of
//!    *now* — the newest version, so a push that waited is replaced by a newer one, never sent
//!    after it. Under load the sets fill while the workers are busy and each pass carries more:
//!    batching grows with load instead of waiting.
//!
//! A push the client does not acknowledge within `REGISTRY_PUSH_ACK_MS_MAX` is sent again, at
//! most `REGISTRY_PUSH_RETRIES_MAX` times, when the client acknowledged nothing else meanwhile
//! (one still acknowledging is slow, and its acknowledgements come in order); every `reconcile`
//! interval each subscription's acknowledged version is compared with its key's and marked
//! again when they differ (unless that version was pushed within the interval), so a
//! subscriber that missed a push converges by itself.
//!
//! Watches take the other path: each config revision the embedding process relays
//! ([`Registry::relay_config`]) flags every stream that watches anything, and its pusher sends
//! each watch its key's value for that client when it differs from the one last sent (values
//! are small and few: at most `REGISTRY_WATCHES_PER_STREAM_MAX` per stream). They are not
//! acknowledged: a client that reconnects watches again with the version it holds.
//!
//! Owns the streams' bookkeeping and the push path. Must not decide what a valid name or record
//! is (`names`), nor hold what is published (`store`), nor read the wire (`service`).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use limits::{
    REGISTRY_DRAIN_HOLD_SECONDS_DEFAULT, REGISTRY_DRAIN_HOLD_SECONDS_MAX, REGISTRY_PUSH_ACK_MS_MAX,
    REGISTRY_PUSH_RETRIES_MAX, REGISTRY_REGISTRATIONS_PER_STREAM_MAX,
    REGISTRY_STREAM_QUEUE_BYTES_MAX, REGISTRY_STREAMS_MAX, REGISTRY_SUBSCRIPTIONS_PER_STREAM_MAX,
    REGISTRY_WATCHES_PER_STREAM_MAX,
};
use prost::Message;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tonic::Status;

use crate::names::{self, DataKey, Interner, Refusal};
use crate::proto::{self, client_message::Body, server_message};
use crate::relay::ConfigValues;
use crate::store::{Published, PublisherId, Store};

/// What the caller of a stream may do, from its API key (the embedding server decides).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rights {
    /// The key's name, for logs; `None` on an open (unauthenticated) registry.
    pub caller: Option<String>,
    /// May register records (role `write`).
    pub publish: bool,
    /// May drain a host (role `admin`).
    pub admin: bool,
}

impl Rights {
    /// Everything: a registry that authenticates nobody.
    pub fn open() -> Rights {
        Rights {
            caller: None,
            publish: true,
            admin: true,
        }
    }
}

/// How a registry runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Shards of the store (the data layer's slot count).
    pub slots: usize,
    /// How often every subscription is compared with its key's version.
    pub reconcile: Duration,
    /// Fault injection: drop one push in this many (0: none), to show reconciliation repairs.
    pub drop_pushes_one_in: u32,
    /// The config keys watchers may watch, by prefix: the embedding process relays a config
    /// center ([`Registry::relay_config`]) and only keys starting with one of these are served
    /// (the registry's readers are not the config center's). Empty: `Watch` is refused.
    pub watch_prefixes: Vec<String>,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            slots: 256,
            reconcile: Duration::from_secs(limits::REGISTRY_RECONCILE_SECONDS_DEFAULT),
            drop_pushes_one_in: 0,
            watch_prefixes: Vec::new(),
        }
    }
}

/// Counters since the registry started.
#[derive(Debug, Default)]
pub struct Stats {
    pub pushes: AtomicU64,
    /// Payload bytes the pushes sent would have taken uncompressed.
    pub push_plain_bytes: AtomicU64,
    /// Payload bytes the pushes sent took.
    pub push_sent_bytes: AtomicU64,
    /// Pushes sent again for want of an acknowledgement.
    pub push_retries: AtomicU64,
    /// Pushes dropped on purpose (fault injection).
    pub pushes_dropped: AtomicU64,
    /// Subscriptions found behind their key by a reconciliation.
    pub reconciled: AtomicU64,
    /// Config values pushed to watchers.
    pub values_pushed: AtomicU64,
    /// xDS responses sent (`xds`).
    pub xds_responses: AtomicU64,
    /// xDS responses their clients refused (NACK).
    pub xds_nacks: AtomicU64,
    /// Records left out of xDS assignments: their address is no IP socket address.
    pub xds_unroutable: AtomicU64,
}

#[derive(Debug)]
struct Subscription {
    key: DataKey,
    /// Only publishers of this zone (`None`: all).
    zone: Option<Arc<str>>,
    acked: u64,
    pushed: u64,
    pushed_at: Option<Instant>,
    retries: u32,
    /// Which subscribe made it: a push built for an earlier one (another key or scope) is
    /// not sent.
    generation: u64,
}

/// One watch of a config key.
#[derive(Debug)]
struct Watched {
    key: Arc<str>,
    /// The version of the value in use the client said it holds (0: none).
    known_version: u64,
    /// What was last sent: `None` nothing yet; `Some(None)` that the key is not set;
    /// `Some(Some(made_at))` that value.
    sent: Option<Option<u64>>,
}

#[derive(Debug, Default)]
struct SessionState {
    watches: HashMap<Arc<str>, Watched>,
    registrations: HashMap<Box<str>, DataKey>,
    subscriptions: HashMap<Arc<str>, Subscription>,
    /// Subscriptions pushed and not yet acknowledged.
    unacked: HashSet<Arc<str>>,
    /// Subscribes served so far (each subscription's generation).
    subscribes: u64,
    /// When the client last acknowledged a push: a client acknowledging is alive and reads in
    /// order, so its other acknowledgements are on their way, not lost.
    last_ack: Option<Instant>,
}

/// A message toward a client, holding its share of the stream's byte budget until the stream
/// takes it.
pub type Outgoing = (
    Result<proto::ServerMessage, Status>,
    Option<OwnedSemaphorePermit>,
);

type Outbound = mpsc::Sender<Outgoing>;

/// An empty key nobody subscribes to is forgotten once it has not changed for this long.
const EMPTY_KEY_QUIET: Duration = Duration::from_secs(60);

/// Sets at most this large are compressed on the async worker itself; larger ones on a
/// blocking thread.
const COMPRESS_INLINE_BYTES_MAX: usize = 64 << 10;

/// One client stream.
#[derive(Debug)]
pub struct Session {
    id: u64,
    client_id: Arc<str>,
    zone: Arc<str>,
    host: IpAddr,
    zstd: bool,
    rights: Rights,
    state: Mutex<SessionState>,
    marked: Mutex<HashSet<Arc<str>>>,
    /// Set when the watched values may have changed (a new config revision, a new watch).
    values_due: AtomicBool,
    wake: Notify,
    /// True once the stream ended (its pusher stops, even mid-wait for room).
    closed: watch::Sender<bool>,
    out: Outbound,
    /// Bytes of pushes queued toward the client and not yet taken by its stream.
    budget: Arc<Semaphore>,
}

impl Session {
    fn mark(&self, subscription: Arc<str>) {
        self.marked
            .lock()
            .expect("never poisoned")
            .insert(subscription);
        self.wake.notify_one();
    }

    fn state(&self) -> std::sync::MutexGuard<'_, SessionState> {
        self.state.lock().expect("never poisoned")
    }

    pub fn id(&self) -> u64 {
        self.id
    }
}

type Subscribers = HashMap<DataKey, HashMap<(u64, Arc<str>), Weak<Session>>>;

/// A whole registry in one process: the store and the sessions over it.
#[derive(Debug)]
pub struct Registry {
    store: Store,
    interner: Interner,
    settings: Settings,
    sessions: Mutex<HashMap<u64, Arc<Session>>>,
    by_host: Mutex<HashMap<IpAddr, HashSet<u64>>>,
    /// Hosts drained, and until when they may register nothing.
    drained: Mutex<HashMap<IpAddr, Instant>>,
    /// The config center as last relayed (`None`: nothing yet).
    config: Mutex<Option<Arc<dyn ConfigValues>>>,
    /// Who subscribes to each key, sharded as the store is.
    subscribers: Box<[Mutex<Subscribers>]>,
    next_session: AtomicU64,
    open_sessions: AtomicUsize,
    pushes_seen: AtomicU32,
    started: Instant,
    /// True once the registry ends every stream (its server is stopping).
    ending: watch::Sender<bool>,
    pub stats: Stats,
}

/// An answer saying yes.
fn ok(request_id: u64) -> proto::Answer {
    proto::Answer {
        request_id,
        ok: true,
        ..proto::Answer::default()
    }
}

fn refused(request_id: u64, refusal: Refusal) -> proto::Answer {
    proto::Answer {
        request_id,
        ok: false,
        field: refusal.field,
        error: refusal.reason,
        removed: 0,
    }
}

impl Registry {
    pub fn new(settings: Settings) -> Arc<Registry> {
        Arc::new(Registry {
            store: Store::new(settings.slots),
            interner: Interner::default(),
            subscribers: (0..settings.slots).map(|_| Mutex::default()).collect(),
            settings,
            sessions: Mutex::default(),
            by_host: Mutex::default(),
            drained: Mutex::default(),
            config: Mutex::default(),
            next_session: AtomicU64::new(1),
            open_sessions: AtomicUsize::new(0),
            pushes_seen: AtomicU32::new(0),
            started: Instant::now(),
            ending: watch::Sender::new(false),
            stats: Stats::default(),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub(crate) fn interner(&self) -> &Interner {
        &self.interner
    }

    /// Client streams open now.
    pub fn sessions(&self) -> usize {
        self.open_sessions.load(Ordering::Relaxed)
    }

    /// Ends every stream now and any opened later (the server is stopping): their clients
    /// connect again, elsewhere or to the next server here.
    pub fn end_streams(&self) {
        self.ending.send_replace(true);
    }

    /// Whether the registry has run long enough that an absent key is truly empty (its
    /// publishers had time to re-register after a start).
    pub(crate) fn past_restart_grace(&self) -> bool {
        self.started.elapsed() >= EMPTY_KEY_QUIET
    }

    /// When the first minute after the start ends: before, a key absent is not yet known to be
    /// empty (see [`Registry::past_restart_grace`]).
    pub(crate) fn restart_grace_ends(&self) -> Instant {
        self.started + EMPTY_KEY_QUIET
    }

    /// Whether [`Registry::end_streams`] was called.
    pub fn is_ending(&self) -> bool {
        *self.ending.borrow()
    }

    /// Resolves once [`Registry::end_streams`] was called.
    pub async fn ended(&self) {
        let _ = self.ending.subscribe().wait_for(|ending| *ending).await;
    }

    /// Starts the notifier and the reconciler; they run until the registry is dropped.
    pub fn spawn_workers(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(notify_loop(weak.clone()));
        tokio::spawn(reconcile_loop(weak));
    }

    /// Opens a stream that said `hello` from `host`; its pushes go to `out`.
    pub fn open(
        self: &Arc<Self>,
        hello: &proto::Hello,
        host: IpAddr,
        rights: Rights,
        out: Outbound,
    ) -> Result<Arc<Session>, Refusal> {
        let client_id = names::name("hello.client_id", &hello.client_id)?;
        // Under a key, a client id is the key's own: another key's stream can neither replace
        // nor, by ending, remove its records.
        let client_id = match &rights.caller {
            Some(caller) => self.interner.get(&format!("{caller}/{client_id}")),
            None => self.interner.get(client_id),
        };
        let zone = self.interner.get(names::name("hello.zone", &hello.zone)?);
        let open = self.open_sessions.fetch_add(1, Ordering::Relaxed);
        if open >= REGISTRY_STREAMS_MAX {
            self.open_sessions.fetch_sub(1, Ordering::Relaxed);
            return Err(Refusal::new(
                "stream",
                format!("this registry serves {REGISTRY_STREAMS_MAX} streams already"),
            ));
        }
        let host = host.to_canonical();
        let session = Arc::new(Session {
            id: self.next_session.fetch_add(1, Ordering::Relaxed),
            client_id,
            zone,
            host,
            zstd: hello.accept.contains(&(proto::Encoding::Zstd as i32)),
            rights,
            state: Mutex::default(),
            marked: Mutex::default(),
            values_due: AtomicBool::new(false),
            wake: Notify::new(),
            closed: watch::Sender::new(false),
            out,
            budget: Arc::new(Semaphore::new(REGISTRY_STREAM_QUEUE_BYTES_MAX)),
        });
        self.sessions
            .lock()
            .expect("never poisoned")
            .insert(session.id, Arc::clone(&session));
        self.by_host
            .lock()
            .expect("never poisoned")
            .entry(host)
            .or_default()
            .insert(session.id);
        tracing::debug!(stream = session.id, client = %session.client_id, %host, "registry stream opened");
        Ok(session)
    }

    /// Ends a stream: its records are removed and its subscriptions forgotten.
    pub fn close(&self, session: &Arc<Session>) {
        if session.closed.send_replace(true) {
            return;
        }
        session.wake.notify_one();
        let state = std::mem::take(&mut *session.state());
        for (registration_id, key) in state.registrations {
            self.unpublish(session, &key, registration_id);
        }
        for (subscription_id, subscription) in state.subscriptions {
            self.unindex(session.id, &subscription.key, subscription_id);
        }
        self.sessions
            .lock()
            .expect("never poisoned")
            .remove(&session.id);
        let mut by_host = self.by_host.lock().expect("never poisoned");
        if let Some(ids) = by_host.get_mut(&session.host) {
            ids.remove(&session.id);
            if ids.is_empty() {
                by_host.remove(&session.host);
            }
        }
        drop(by_host);
        self.open_sessions.fetch_sub(1, Ordering::Relaxed);
        tracing::debug!(stream = session.id, "registry stream closed");
    }

    fn unpublish(&self, session: &Session, key: &DataKey, registration_id: Box<str>) -> bool {
        let id = PublisherId {
            client_id: Arc::clone(&session.client_id),
            registration_id,
        };
        self.store.remove(key, &id, session.id)
    }

    fn shard(&self, key: &DataKey) -> std::sync::MutexGuard<'_, Subscribers> {
        self.subscribers[key.slot(self.subscribers.len())]
            .lock()
            .expect("never poisoned")
    }

    fn unindex(&self, session: u64, key: &DataKey, subscription_id: Arc<str>) {
        let mut shard = self.shard(key);
        if let Some(subscribers) = shard.get_mut(key) {
            subscribers.remove(&(session, subscription_id));
            if subscribers.is_empty() {
                shard.remove(key);
            }
        }
    }

    /// Serves one request of `session`'s; `None` for those answered by nothing (acks).
    pub fn handle(
        &self,
        session: &Arc<Session>,
        message: proto::ClientMessage,
    ) -> Option<proto::Answer> {
        let request_id = message.request_id;
        let outcome = match message.body {
            None => Err(Refusal::new("body", "is missing")),
            Some(Body::Hello(_)) => Err(Refusal::new(
                "hello",
                "comes once, as the stream's first message",
            )),
            Some(Body::Register(register)) => self.register(session, register),
            Some(Body::Unregister(unregister)) => self.unregister(session, &unregister),
            Some(Body::Subscribe(subscribe)) => self.subscribe(session, subscribe),
            Some(Body::Unsubscribe(unsubscribe)) => self.unsubscribe(session, &unsubscribe),
            Some(Body::Watch(watch)) => self.watch(session, &watch),
            Some(Body::Unwatch(unwatch)) => self.unwatch(session, &unwatch),
            Some(Body::Ack(ack)) => {
                self.ack(session, &ack);
                return None;
            }
            Some(Body::DrainHost(drain)) => {
                return Some(match self.drain(session, &drain) {
                    Ok(removed) => proto::Answer {
                        removed,
                        ..ok(request_id)
                    },
                    Err(refusal) => refused(request_id, refusal),
                });
            }
        };
        Some(match outcome {
            Ok(()) => ok(request_id),
            Err(refusal) => refused(request_id, refusal),
        })
    }

    fn register(&self, session: &Arc<Session>, register: proto::Register) -> Result<(), Refusal> {
        if !session.rights.publish {
            return Err(Refusal::new(
                "register",
                "this API key may not publish (it needs the role write)",
            ));
        }
        let registration_id = names::name("register.registration_id", &register.registration_id)?;
        let key = names::data_key("register.key", register.key.as_ref(), &self.interner)?;
        names::record("register.record", register.record.as_ref())?;
        let encoded = proto::PublishedRecord {
            client_id: session.client_id.to_string(),
            registration_id: registration_id.to_owned(),
            zone: session.zone.to_string(),
            record: register.record,
        }
        .encode_to_vec();
        // Held across the store's change, so a host drain never misses a record being added.
        let mut state = session.state();
        if let Some(until) = self.drained_until(session.host) {
            return Err(Refusal::new(
                "register",
                format!(
                    "host {} was drained: it may register nothing for {} s more",
                    session.host,
                    until.saturating_duration_since(Instant::now()).as_secs() + 1
                ),
            ));
        }
        let earlier = state.registrations.get(registration_id).cloned();
        if earlier.is_none() && state.registrations.len() >= REGISTRY_REGISTRATIONS_PER_STREAM_MAX {
            return Err(Refusal::new(
                "register",
                format!(
                    "this stream holds {REGISTRY_REGISTRATIONS_PER_STREAM_MAX} registrations already"
                ),
            ));
        }
        let id = PublisherId {
            client_id: Arc::clone(&session.client_id),
            registration_id: registration_id.into(),
        };
        let published = Published {
            zone: Arc::clone(&session.zone),
            stream: session.id,
            encoded: encoded.into(),
        };
        self.store
            .put(&key, id, published)
            .map_err(|error| Refusal::new("register.key", error.to_string()))?;
        if let Some(earlier) = earlier.filter(|earlier| *earlier != key) {
            self.unpublish(session, &earlier, registration_id.into());
        }
        state.registrations.insert(registration_id.into(), key);
        Ok(())
    }

    fn unregister(&self, session: &Session, unregister: &proto::Unregister) -> Result<(), Refusal> {
        let registration_id =
            names::name("unregister.registration_id", &unregister.registration_id)?;
        let mut state = session.state();
        let key = state.registrations.remove(registration_id).ok_or_else(|| {
            Refusal::new(
                "unregister.registration_id",
                "this stream registered nothing under it",
            )
        })?;
        self.unpublish(session, &key, registration_id.into());
        Ok(())
    }

    fn subscribe(
        &self,
        session: &Arc<Session>,
        subscribe: proto::Subscribe,
    ) -> Result<(), Refusal> {
        let subscription_id = self.interner.get(names::name(
            "subscribe.subscription_id",
            &subscribe.subscription_id,
        )?);
        let key = names::data_key("subscribe.key", subscribe.key.as_ref(), &self.interner)?;
        let zone = match proto::Scope::try_from(subscribe.scope) {
            Ok(proto::Scope::Zone) => Some(Arc::clone(&session.zone)),
            Ok(proto::Scope::Global) => None,
            _ => {
                return Err(Refusal::new(
                    "subscribe.scope",
                    "must be SCOPE_ZONE or SCOPE_GLOBAL",
                ));
            }
        };
        let mut state = session.state();
        let earlier = state
            .subscriptions
            .get(&subscription_id)
            .map(|s| s.key.clone());
        if earlier.is_none() && state.subscriptions.len() >= REGISTRY_SUBSCRIPTIONS_PER_STREAM_MAX {
            return Err(Refusal::new(
                "subscribe",
                format!(
                    "this stream holds {REGISTRY_SUBSCRIPTIONS_PER_STREAM_MAX} subscriptions already"
                ),
            ));
        }
        if let Some(earlier) = earlier.filter(|earlier| *earlier != key) {
            self.unindex(session.id, &earlier, Arc::clone(&subscription_id));
        }
        state.subscribes += 1;
        let generation = state.subscribes;
        state.subscriptions.insert(
            Arc::clone(&subscription_id),
            Subscription {
                key: key.clone(),
                zone,
                acked: subscribe.known_version,
                pushed: subscribe.known_version,
                pushed_at: None,
                retries: 0,
                generation,
            },
        );
        state.unacked.remove(&subscription_id);
        drop(state);
        if subscribe.known_version != 0 && self.past_restart_grace() {
            // A client holding a set of a key forgotten since (empty and quiet) must learn it is
            // empty: the key is made again, empty, at a newer version, and pushed. Not in the
            // first minute after a start: then the key is absent because its publishers have
            // not re-registered yet, and an empty push would empty every subscriber's set.
            self.store.ensure(&key);
        }
        self.shard(&key).entry(key).or_default().insert(
            (session.id, Arc::clone(&subscription_id)),
            Arc::downgrade(session),
        );
        session.mark(subscription_id);
        Ok(())
    }

    fn unsubscribe(
        &self,
        session: &Session,
        unsubscribe: &proto::Unsubscribe,
    ) -> Result<(), Refusal> {
        let field = "unsubscribe.subscription_id";
        let subscription_id = names::name(field, &unsubscribe.subscription_id)?;
        let mut state = session.state();
        let (subscription_id, subscription) = state
            .subscriptions
            .remove_entry(subscription_id)
            .ok_or_else(|| Refusal::new(field, "this stream has no such subscription"))?;
        state.unacked.remove(&subscription_id);
        drop(state);
        self.unindex(session.id, &subscription.key, subscription_id);
        Ok(())
    }

    fn watch(&self, session: &Session, watch: &proto::Watch) -> Result<(), Refusal> {
        let prefixes = &self.settings.watch_prefixes;
        if prefixes.is_empty() {
            return Err(Refusal::new(
                "watch",
                "this registry relays no config center (start it with --config-meta)",
            ));
        }
        let watch_id = self
            .interner
            .get(names::name("watch.watch_id", &watch.watch_id)?);
        let key = names::config_key("watch.key", &watch.key)?;
        if !prefixes
            .iter()
            .any(|prefix| key.starts_with(prefix.as_str()))
        {
            return Err(Refusal::new(
                "watch.key",
                format!("this registry relays only keys starting with {prefixes:?}"),
            ));
        }
        let key = self.interner.get(key);
        let mut state = session.state();
        if !state.watches.contains_key(&watch_id)
            && state.watches.len() >= REGISTRY_WATCHES_PER_STREAM_MAX
        {
            return Err(Refusal::new(
                "watch",
                format!("this stream holds {REGISTRY_WATCHES_PER_STREAM_MAX} watches already"),
            ));
        }
        state.watches.insert(
            watch_id,
            Watched {
                key,
                known_version: watch.known_version,
                sent: None,
            },
        );
        drop(state);
        session.values_due.store(true, Ordering::Release);
        session.wake.notify_one();
        Ok(())
    }

    fn unwatch(&self, session: &Session, unwatch: &proto::Unwatch) -> Result<(), Refusal> {
        let field = "unwatch.watch_id";
        let watch_id = names::name(field, &unwatch.watch_id)?;
        session
            .state()
            .watches
            .remove(watch_id)
            .map(|_| ())
            .ok_or_else(|| Refusal::new(field, "this stream has no such watch"))
    }

    /// Takes the config center as of a new revision: every watcher whose value changed is
    /// sent it (by its stream's pusher).
    pub fn relay_config(&self, values: Arc<dyn ConfigValues>) {
        *self.config.lock().expect("never poisoned") = Some(values);
        for session in self.open_sessions_now() {
            if !session.state().watches.is_empty() {
                session.values_due.store(true, Ordering::Release);
                session.wake.notify_one();
            }
        }
    }

    /// Sends each of `session`'s watches its value, when it differs from what was sent; false
    /// when the stream is gone.
    async fn push_values(&self, session: &Session) -> bool {
        let Some(config) = self.config.lock().expect("never poisoned").clone() else {
            return true;
        };
        let revision = config.revision();
        let due: Vec<proto::ServerMessage> = {
            let mut state = session.state();
            let mut due = Vec::new();
            for (watch_id, watched) in &mut state.watches {
                let (client, zone) = (&*session.client_id, &*session.zone);
                // The cheap test first: most watches hold their value already.
                let made_at = config.made_at(&watched.key, client, zone);
                if watched.sent == Some(made_at) {
                    continue;
                }
                let value = config.value_for(&watched.key, client, zone);
                let known = watched.sent.is_none()
                    && value
                        .as_ref()
                        .is_some_and(|value| !value.gray && value.version == watched.known_version);
                watched.sent = Some(made_at);
                if known {
                    continue;
                }
                let value = value.map_or_else(proto::Value::default, |value| proto::Value {
                    present: true,
                    value: value.value,
                    version: value.version,
                    gray: value.gray,
                    ..proto::Value::default()
                });
                due.push(proto::ServerMessage {
                    body: Some(server_message::Body::Value(proto::Value {
                        watch_id: watch_id.to_string(),
                        key: watched.key.to_string(),
                        revision,
                        ..value
                    })),
                });
            }
            due
        };
        for message in due {
            if session.out.send((Ok(message), None)).await.is_err() {
                return false;
            }
            self.stats.values_pushed.fetch_add(1, Ordering::Relaxed);
        }
        true
    }

    fn ack(&self, session: &Session, ack: &proto::PushAck) {
        let mut state = session.state();
        let SessionState {
            subscriptions,
            unacked,
            last_ack,
            ..
        } = &mut *state;
        *last_ack = Some(Instant::now());
        if let Some(subscription) = subscriptions.get_mut(ack.subscription_id.as_str()) {
            subscription.acked = ack.version;
            if subscription.acked == subscription.pushed {
                unacked.remove(ack.subscription_id.as_str());
            }
        }
    }

    /// Until when `host` may register nothing, if it was drained and that still holds.
    fn drained_until(&self, host: IpAddr) -> Option<Instant> {
        let mut drained = self.drained.lock().expect("never poisoned");
        let until = *drained.get(&host)?;
        if until <= Instant::now() {
            drained.remove(&host);
            return None;
        }
        Some(until)
    }

    /// Removes every record published by streams from `drain.ip`, and refuses registrations
    /// from it for `hold_seconds` (so a client's reconnection does not undo the drain). How
    /// many records were removed.
    fn drain(&self, session: &Session, drain: &proto::DrainHost) -> Result<u64, Refusal> {
        if !session.rights.admin {
            return Err(Refusal::new(
                "drain_host",
                "this API key may not drain hosts (it needs the role admin)",
            ));
        }
        let host: IpAddr = drain
            .ip
            .parse()
            .map_err(|_| Refusal::new("drain_host.ip", "is not an IP address"))?;
        let host = host.to_canonical();
        let hold = match drain.hold_seconds {
            0 => REGISTRY_DRAIN_HOLD_SECONDS_DEFAULT,
            hold if hold <= REGISTRY_DRAIN_HOLD_SECONDS_MAX => hold,
            _ => {
                return Err(Refusal::new(
                    "drain_host.hold_seconds",
                    format!("must be at most {REGISTRY_DRAIN_HOLD_SECONDS_MAX}"),
                ));
            }
        };
        // First refuse new registrations, then take what the host's streams hold (a register
        // in progress holds its stream's state, so it is either refused or taken here).
        self.drained
            .lock()
            .expect("never poisoned")
            .insert(host, Instant::now() + Duration::from_secs(hold));
        let ids: Vec<u64> = self
            .by_host
            .lock()
            .expect("never poisoned")
            .get(&host)
            .map(|ids| ids.iter().copied().collect())
            .unwrap_or_default();
        let drained: Vec<Arc<Session>> = {
            let sessions = self.sessions.lock().expect("never poisoned");
            ids.iter()
                .filter_map(|id| sessions.get(id).cloned())
                .collect()
        };
        let mut removed = 0;
        for session in drained {
            let registrations = { std::mem::take(&mut session.state().registrations) };
            for (registration_id, key) in registrations {
                removed += u64::from(self.unpublish(&session, &key, registration_id));
            }
        }
        tracing::info!(%host, removed, hold_seconds = hold, "drained a host's records");
        Ok(removed)
    }

    /// Sends `session` its marked subscriptions' sets until the stream ends.
    pub async fn push_loop(self: Arc<Self>, session: Arc<Session>) {
        loop {
            tokio::select! {
                () = session.wake.notified() => {}
                () = session.out.closed() => return,
                () = self.ended() => return,
            }
            if session.values_due.swap(false, Ordering::AcqRel) && !self.push_values(&session).await
            {
                return;
            }
            loop {
                if *session.closed.borrow() {
                    return;
                }
                let marked: Vec<Arc<str>> = session
                    .marked
                    .lock()
                    .expect("never poisoned")
                    .drain()
                    .collect();
                if marked.is_empty() {
                    break;
                }
                for subscription_id in marked {
                    if !self.push(&session, subscription_id).await {
                        return;
                    }
                }
            }
        }
    }

    /// Sends one subscription its key's set as of now, unless the client holds it already;
    /// false when the stream is gone. The push waits for room in the stream's byte budget
    /// first, and a set that changed meanwhile is not sent (the subscription is marked again,
    /// so its newest set goes instead).
    async fn push(self: &Arc<Self>, session: &Session, subscription_id: Arc<str>) -> bool {
        let (key, zone, acked, generation) = {
            let state = session.state();
            let Some(subscription) = state.subscriptions.get(&subscription_id) else {
                return true;
            };
            (
                subscription.key.clone(),
                subscription.zone.clone(),
                subscription.acked,
                subscription.generation,
            )
        };
        let Some(payload) = self.store.payload(&key, zone.as_ref()) else {
            return true;
        };
        if payload.version == acked {
            return true;
        }
        let compressed = if !session.zstd {
            None
        } else if let Some(made) = payload.zstd_if_made() {
            made
        } else if payload.plain.len() <= COMPRESS_INLINE_BYTES_MAX {
            payload.zstd().cloned()
        } else {
            // A large set compresses off the async workers (once: the others wait for it).
            let payload = Arc::clone(&payload);
            tokio::task::spawn_blocking(move || payload.zstd().cloned())
                .await
                .unwrap_or(None)
        };
        let (encoding, bytes) = match compressed {
            Some(compressed) => (proto::Encoding::Zstd, compressed),
            None => (proto::Encoding::Plain, payload.plain.clone()),
        };
        // What the push needs of the payload, taken now: a push waiting for room must not keep
        // the payload itself counted in the cache. (A set that changes while it waits is sent
        // all the same: the change marked the subscription, so the newer set follows it.)
        let (version, records, plain_bytes) =
            (payload.version, payload.records, payload.plain.len() as u64);
        drop(payload);
        let budget = u32::try_from(bytes.len().clamp(1, REGISTRY_STREAM_QUEUE_BYTES_MAX))
            .expect("the budget fits a u32");
        let mut closed = session.closed.subscribe();
        let permit = tokio::select! {
            permit = Arc::clone(&session.budget).acquire_many_owned(budget) => {
                permit.expect("the budget is never closed")
            }
            () = session.out.closed() => return false,
            () = self.ended() => return false,
            _ = closed.wait_for(|closed| *closed) => return false,
        };
        {
            let mut state = session.state();
            let SessionState {
                subscriptions,
                unacked,
                ..
            } = &mut *state;
            let Some(subscription) = subscriptions
                .get_mut(&subscription_id)
                .filter(|subscription| subscription.generation == generation)
            else {
                return true;
            };
            if subscription.pushed != version {
                subscription.retries = 0;
            }
            subscription.pushed = version;
            subscription.pushed_at = Some(Instant::now());
            unacked.insert(Arc::clone(&subscription_id));
        }
        let one_in = self.settings.drop_pushes_one_in;
        if one_in > 0
            && self
                .pushes_seen
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(one_in)
        {
            self.stats.pushes_dropped.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        let sent = bytes.len() as u64;
        let push = proto::ServerMessage {
            body: Some(server_message::Body::Push(proto::Push {
                subscription_id: subscription_id.to_string(),
                key: Some(key.to_proto()),
                version,
                encoding: encoding as i32,
                payload: bytes,
                record_count: records,
                plain_bytes,
            })),
        };
        if session.out.send((Ok(push), Some(permit))).await.is_err() {
            return false;
        }
        self.stats.pushes.fetch_add(1, Ordering::Relaxed);
        self.stats
            .push_plain_bytes
            .fetch_add(plain_bytes, Ordering::Relaxed);
        self.stats
            .push_sent_bytes
            .fetch_add(sent, Ordering::Relaxed);
        true
    }

    /// Marks every subscription to each changed key.
    fn notify(&self, changed: HashSet<DataKey>) {
        for key in changed {
            let shard = self.shard(&key);
            let Some(subscribers) = shard.get(&key) else {
                continue;
            };
            for ((_, subscription_id), session) in subscribers {
                if let Some(session) = session.upgrade() {
                    session.mark(Arc::clone(subscription_id));
                }
            }
        }
    }

    fn open_sessions_now(&self) -> Vec<Arc<Session>> {
        self.sessions
            .lock()
            .expect("never poisoned")
            .values()
            .cloned()
            .collect()
    }

    /// Sends again the pushes left unacknowledged too long (each version at most
    /// `REGISTRY_PUSH_RETRIES_MAX` times).
    fn retry_unacked(&self) {
        let deadline = Duration::from_millis(REGISTRY_PUSH_ACK_MS_MAX);
        for session in self.open_sessions_now() {
            // Pushes still queued toward the client were not lost, only not yet read: their
            // acknowledgements cannot have come. Sending more would only lengthen the queue.
            if session.budget.available_permits() < REGISTRY_STREAM_QUEUE_BYTES_MAX {
                continue;
            }
            let mut again = Vec::new();
            {
                let mut state = session.state();
                // A client still acknowledging (within the deadline) is slow, not deaf: the
                // acknowledgements of what it has not answered yet are behind the others.
                if state.last_ack.is_some_and(|at| at.elapsed() < deadline) {
                    continue;
                }
                let SessionState {
                    subscriptions,
                    unacked,
                    ..
                } = &mut *state;
                for id in unacked.iter() {
                    let Some(subscription) = subscriptions.get_mut(id) else {
                        continue;
                    };
                    let late = subscription
                        .pushed_at
                        .is_some_and(|at| at.elapsed() >= deadline);
                    if late && subscription.retries < REGISTRY_PUSH_RETRIES_MAX {
                        subscription.retries += 1;
                        subscription.pushed_at = Some(Instant::now());
                        again.push(Arc::clone(id));
                    }
                }
            }
            self.stats
                .push_retries
                .fetch_add(again.len() as u64, Ordering::Relaxed);
            for id in again {
                session.mark(id);
            }
        }
    }

    /// Compares every subscription's acknowledged version with its key's; marks those behind
    /// (but not one whose newest version was pushed within the last interval: it is on its way).
    fn reconcile(&self) {
        let interval = self.settings.reconcile;
        for session in self.open_sessions_now() {
            let subscriptions: Vec<(Arc<str>, DataKey, u64, Option<u64>)> = session
                .state()
                .subscriptions
                .iter()
                .map(|(id, s)| {
                    let in_flight = s
                        .pushed_at
                        .filter(|at| at.elapsed() < interval)
                        .map(|_| s.pushed);
                    (Arc::clone(id), s.key.clone(), s.acked, in_flight)
                })
                .collect();
            for (id, key, acked, in_flight) in subscriptions {
                let mut version = self.store.version(&key);
                if version == 0 && acked != 0 && self.past_restart_grace() {
                    self.store.ensure(&key);
                    version = self.store.version(&key);
                }
                if version != 0 && version != acked && in_flight != Some(version) {
                    if let Some(subscription) = session.state().subscriptions.get_mut(&id) {
                        subscription.retries = 0;
                    }
                    self.stats.reconciled.fetch_add(1, Ordering::Relaxed);
                    session.mark(id);
                }
            }
        }
        // Keys nobody publishes to nor subscribes to, quiet for a while, are forgotten (slot,
        // then subscriber shard: the one place both are held, in that order).
        self.store
            .sweep_empty(EMPTY_KEY_QUIET, |key| self.shard(key).contains_key(key));
        self.interner.sweep();
    }
}

async fn notify_loop(registry: Weak<Registry>) {
    loop {
        let Some(strong) = registry.upgrade() else {
            return;
        };
        let changed = strong.store.take_changed();
        if !changed.is_empty() {
            strong.notify(changed);
            continue;
        }
        let store_changes = async { strong.store.changes().await };
        // Woken by a change, or now and then to notice the registry is gone.
        let _ = tokio::time::timeout(Duration::from_secs(1), store_changes).await;
    }
}

async fn reconcile_loop(registry: Weak<Registry>) {
    let tick = Duration::from_millis(REGISTRY_PUSH_ACK_MS_MAX / 4);
    let mut last_reconcile = Instant::now();
    loop {
        tokio::time::sleep(tick).await;
        let Some(registry) = registry.upgrade() else {
            return;
        };
        registry.retry_unacked();
        if last_reconcile.elapsed() >= registry.settings.reconcile {
            last_reconcile = Instant::now();
            registry.reconcile();
        }
    }
}
