//! The registry's Rust client: one stream to a registry, kept open by itself. It remembers what
//! its user registered and subscribed to, and after a broken stream it connects again (to the
//! next address, waiting 100 ms doubling up to 5 s between tries) and sends all of it again,
//! with each subscription's version, so nothing is pushed twice that it already holds.
//!
//! What the user wants is kept by the client's task and changed there, in the order asked, and
//! every request goes through one ordered queue with the replay, so a registration changed
//! during a reconnection is never overtaken by its older copy. Each request's caller gets that
//! request's own answer: a registration refused is forgotten only if it is still the newest for
//! its id; a caller whose registration was withdrawn (or replaced) before any stream answered it
//! is told so; a stream the registry refuses outright (an unknown key) fails every waiting
//! caller with the reason instead of leaving them waiting. Pushes are checked before
//! they are believed: a compressed one must decompress to exactly its stated size, at most
//! `REGISTRY_PUSH_PLAIN_BYTES_MAX` (no decompression bomb), and name a subscription and key the
//! client holds. Watches of config keys are kept and replayed the same way, each with the
//! version of the value it holds.
//!
//! Owns the client side of the protocol; must not cache anything a push did not send.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use limits::{REGISTRY_PUSH_PLAIN_BYTES_MAX, REGISTRY_SERVER_MESSAGE_BYTES_MAX};
use prost::Message;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, oneshot, watch};
use tonic::metadata::MetadataValue;

use crate::names::{self, Refusal};
use crate::proto::{self, client_message::Body, server_message};

/// Where and who a client is.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Registry addresses (`HOST:PORT`), tried in turn.
    pub endpoints: Vec<String>,
    /// An API key (role `read` to subscribe, `write` to register); `None` for an open registry.
    pub api_key: Option<String>,
    /// This process's id: the same on every stream it opens.
    pub client_id: String,
    pub zone: String,
    /// Dial over TLS, trusting this authority (PEM); `None`: plaintext.
    pub tls_ca_pem: Option<Vec<u8>>,
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The registry refused it (nothing was changed).
    #[error("refused: {0}")]
    Refused(Refusal),
    /// It needs a live stream and there is none now (only a host drain does).
    #[error("not connected to a registry")]
    NotConnected,
    /// The registry refused the stream itself (an unknown key, a full registry): what was
    /// asked is kept and sent again when a stream opens.
    #[error("the registry refused the stream: {0}")]
    StreamRefused(String),
    /// Withdrawn (or replaced by a newer request for the same id) before a registry answered.
    #[error("withdrawn before the registry answered")]
    Withdrawn,
    /// The client's task has ended.
    #[error("the registry client has stopped")]
    Stopped,
}

/// A key's set as a push delivered it.
#[derive(Debug, Clone, PartialEq)]
pub struct PushedSet {
    pub version: u64,
    pub records: Vec<proto::PublishedRecord>,
}

/// A watched config key's value as the registry pushed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedValue {
    /// False when the key is not set (then `value` is empty and `version` 0).
    pub present: bool,
    pub value: String,
    /// The version of the key's value in use.
    pub version: u64,
    /// True when `value` is a gray release staged for this client.
    pub gray: bool,
    /// The config center's revision it was read at.
    pub revision: u64,
}

type Reply = oneshot::Sender<Result<proto::Answer, ClientError>>;

type SetSender = watch::Sender<Option<Arc<PushedSet>>>;

type ValueSender = watch::Sender<Option<Arc<PushedValue>>>;

/// What the user asked for: sent again on every new stream. Each entry carries the number of
/// the request that made it (its generation).
#[derive(Debug, Default)]
struct Desired {
    registrations: BTreeMap<String, (proto::DataKey, proto::Record, u64)>,
    subscriptions: BTreeMap<String, Subscribed>,
    watches: BTreeMap<String, Watching>,
    requests: u64,
}

#[derive(Debug)]
struct Watching {
    key: String,
    value: ValueSender,
    generation: u64,
}

#[derive(Debug)]
struct Subscribed {
    key: proto::DataKey,
    scope: proto::Scope,
    set: SetSender,
    generation: u64,
}

/// A request of the user's, applied to `Desired` by the task in the order asked.
enum Command {
    Register(proto::Register, Reply),
    Unregister(proto::Unregister, Reply),
    Subscribe(proto::Subscribe, SetSender, Reply),
    Watch(proto::Watch, ValueSender, Reply),
    DrainHost(proto::DrainHost, Reply),
}

/// A connection to a registry that keeps itself open; dropping it ends the stream (and the
/// registry removes what it registered).
#[derive(Debug)]
pub struct RegistryClient {
    commands: mpsc::Sender<Command>,
    connected: watch::Receiver<bool>,
}

impl RegistryClient {
    /// Starts the client's task (on the current Tokio runtime); it connects in the background.
    pub fn start(config: ClientConfig) -> Result<RegistryClient, Refusal> {
        names::name("client_id", &config.client_id)?;
        names::name("zone", &config.zone)?;
        if config.endpoints.is_empty() {
            return Err(Refusal::new("endpoints", "must name at least one registry"));
        }
        let (commands, inbox) = mpsc::channel(1024);
        let (connected_tx, connected) = watch::channel(false);
        tokio::spawn(run(config, inbox, connected_tx));
        Ok(RegistryClient {
            commands,
            connected,
        })
    }

    /// Whether a stream is open and greeted now (changes as it breaks and comes back).
    pub fn connected(&self) -> watch::Receiver<bool> {
        self.connected.clone()
    }

    async fn ask(
        &self,
        command: impl FnOnce(Reply) -> Command,
    ) -> Result<proto::Answer, ClientError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| ClientError::Stopped)?;
        // A reply dropped unanswered: its stream broke (or the task ended).
        let answer = answer.await.map_err(|_| {
            if self.commands.is_closed() {
                ClientError::Stopped
            } else {
                ClientError::NotConnected
            }
        })??;
        if answer.ok {
            Ok(answer)
        } else {
            Err(ClientError::Refused(Refusal::new(
                answer.field,
                answer.error,
            )))
        }
    }

    /// Publishes `record` under `key` as `registration_id` (replacing what it published under
    /// that id). Waits for the registry's answer, across reconnections; a refused record is
    /// forgotten.
    pub async fn register(
        &self,
        registration_id: &str,
        key: proto::DataKey,
        record: proto::Record,
    ) -> Result<(), ClientError> {
        let register = proto::Register {
            registration_id: registration_id.to_owned(),
            key: Some(key),
            record: Some(record),
        };
        self.ask(|reply| Command::Register(register, reply))
            .await
            .map(drop)
    }

    /// Withdraws a registration.
    pub async fn unregister(&self, registration_id: &str) -> Result<(), ClientError> {
        let unregister = proto::Unregister {
            registration_id: registration_id.to_owned(),
        };
        self.ask(|reply| Command::Unregister(unregister, reply))
            .await
            .map(drop)
    }

    /// Subscribes to `key`: the receiver holds the newest set pushed (`None` until the first
    /// push; a key nothing was ever published under has none).
    pub async fn subscribe(
        &self,
        subscription_id: &str,
        key: proto::DataKey,
        scope: proto::Scope,
    ) -> Result<watch::Receiver<Option<Arc<PushedSet>>>, ClientError> {
        let (set, receiver) = watch::channel(None);
        let subscribe = proto::Subscribe {
            subscription_id: subscription_id.to_owned(),
            key: Some(key),
            scope: scope as i32,
            known_version: 0,
        };
        self.ask(|reply| Command::Subscribe(subscribe, set, reply))
            .await
            .map(|_| receiver)
    }

    /// Watches the config key `key` (relayed by the registry from its config center): the
    /// receiver holds the newest value pushed (`None` until the first push).
    pub async fn watch(
        &self,
        watch_id: &str,
        key: &str,
    ) -> Result<watch::Receiver<Option<Arc<PushedValue>>>, ClientError> {
        let (value, receiver) = watch::channel(None);
        let request = proto::Watch {
            watch_id: watch_id.to_owned(),
            key: key.to_owned(),
            known_version: 0,
        };
        self.ask(|reply| Command::Watch(request, value, reply))
            .await
            .map(|_| receiver)
    }

    /// Removes every record published from `ip` and refuses its registrations for
    /// `hold_seconds` (0: the registry's default) (role admin); how many were removed. Needs a
    /// live stream ([`ClientError::NotConnected`] without one).
    pub async fn drain_host(&self, ip: &str, hold_seconds: u64) -> Result<u64, ClientError> {
        let drain = proto::DrainHost {
            ip: ip.to_owned(),
            hold_seconds,
        };
        self.ask(|reply| Command::DrainHost(drain, reply))
            .await
            .map(|answer| answer.removed)
    }
}

/// What an answer on the current stream resolves.
enum Purpose {
    Hello,
    /// A registration of this id at this generation (answers every waiter up to it).
    Register(String, u64),
    Subscribe(String, u64),
    Watch(String, u64),
    /// A request whose answer is only for its asker (or for nobody: an acknowledgement).
    Other(Option<Reply>),
}

/// Callers waiting for a registration's or a subscription's answer, by id, with the generation
/// each asked for. They survive a broken stream: the replay answers them.
#[derive(Default)]
struct Waiting {
    registrations: HashMap<String, Vec<(u64, Reply)>>,
    subscriptions: HashMap<String, Vec<(u64, Reply)>>,
    watches: HashMap<String, Vec<(u64, Reply)>>,
}

impl Waiting {
    /// Answers the callers of `id` up to `generation` (a newer one overtook the older).
    fn answer(
        waiting: &mut HashMap<String, Vec<(u64, Reply)>>,
        id: &str,
        generation: u64,
        answer: &proto::Answer,
    ) {
        let Some(replies) = waiting.get_mut(id) else {
            return;
        };
        let (done, left): (Vec<_>, Vec<_>) = std::mem::take(replies)
            .into_iter()
            .partition(|(asked, _)| *asked <= generation);
        *replies = left;
        if replies.is_empty() {
            waiting.remove(id);
        }
        for (_, reply) in done {
            let _ = reply.send(Ok(answer.clone()));
        }
    }

    /// Fails the callers whose id is no longer wanted: no replay will answer them. (Callers of
    /// an id replaced by a newer request are answered by the newer one's answer.)
    fn withdraw(&mut self, desired: &Desired) {
        Waiting::withdraw_unwanted(&mut self.registrations, |id| {
            desired.registrations.contains_key(id)
        });
        Waiting::withdraw_unwanted(&mut self.subscriptions, |id| {
            desired.subscriptions.contains_key(id)
        });
        Waiting::withdraw_unwanted(&mut self.watches, |id| desired.watches.contains_key(id));
    }

    /// Fails (`Withdrawn`) and forgets the callers of each id in `waiting` not `wanted`.
    fn withdraw_unwanted(
        waiting: &mut HashMap<String, Vec<(u64, Reply)>>,
        wanted: impl Fn(&str) -> bool,
    ) {
        waiting.retain(|id, replies| {
            if wanted(id) {
                return true;
            }
            for (_, reply) in replies.drain(..) {
                let _ = reply.send(Err(ClientError::Withdrawn));
            }
            false
        });
    }

    /// Fails every waiting caller with `error` (they stay wanted, and are sent again).
    fn fail_all(&mut self, error: &ClientError) {
        let all = self
            .registrations
            .drain()
            .chain(self.subscriptions.drain())
            .chain(self.watches.drain());
        for (_, replies) in all {
            for (_, reply) in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}

/// Applies `command` to what is wanted; what to send for it.
fn apply(command: Command, desired: &mut Desired, waiting: &mut Waiting) -> (Body, Purpose) {
    desired.requests += 1;
    let generation = desired.requests;
    match command {
        Command::Register(register, reply) => {
            let id = register.registration_id.clone();
            let key = register.key.clone().unwrap_or_default();
            let record = register.record.clone().unwrap_or_default();
            desired
                .registrations
                .insert(id.clone(), (key, record, generation));
            waiting
                .registrations
                .entry(id.clone())
                .or_default()
                .push((generation, reply));
            (Body::Register(register), Purpose::Register(id, generation))
        }
        Command::Subscribe(subscribe, set, reply) => {
            let id = subscribe.subscription_id.clone();
            let subscribed = Subscribed {
                key: subscribe.key.clone().unwrap_or_default(),
                scope: proto::Scope::try_from(subscribe.scope).unwrap_or_default(),
                set,
                generation,
            };
            desired.subscriptions.insert(id.clone(), subscribed);
            waiting
                .subscriptions
                .entry(id.clone())
                .or_default()
                .push((generation, reply));
            (
                Body::Subscribe(subscribe),
                Purpose::Subscribe(id, generation),
            )
        }
        Command::Watch(request, value, reply) => {
            let id = request.watch_id.clone();
            let watching = Watching {
                key: request.key.clone(),
                value,
                generation,
            };
            desired.watches.insert(id.clone(), watching);
            waiting
                .watches
                .entry(id.clone())
                .or_default()
                .push((generation, reply));
            (Body::Watch(request), Purpose::Watch(id, generation))
        }
        Command::Unregister(unregister, reply) => {
            desired.registrations.remove(&unregister.registration_id);
            (Body::Unregister(unregister), Purpose::Other(Some(reply)))
        }
        Command::DrainHost(drain, reply) => (Body::DrainHost(drain), Purpose::Other(Some(reply))),
    }
}

/// Applies a command asked while no stream is open: registrations and subscriptions wait for
/// the replay; an unregistration is done at once (the stream's end removed the record); a drain
/// fails.
fn apply_offline(command: Command, desired: &mut Desired, waiting: &mut Waiting) {
    match command {
        Command::DrainHost(_, reply) => {
            let _ = reply.send(Err(ClientError::NotConnected));
        }
        Command::Unregister(unregister, reply) => {
            desired.registrations.remove(&unregister.registration_id);
            let _ = reply.send(Ok(proto::Answer {
                ok: true,
                ..proto::Answer::default()
            }));
        }
        command => drop(apply(command, desired, waiting)),
    }
    waiting.withdraw(desired);
}

async fn run(
    config: ClientConfig,
    mut inbox: mpsc::Receiver<Command>,
    connected: watch::Sender<bool>,
) {
    let mut desired = Desired::default();
    let mut waiting = Waiting::default();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64);
    let mut jitter = SmallRng::seed_from_u64(seed);
    let mut backoff = Duration::from_millis(100);
    for endpoint in config.endpoints.iter().cycle() {
        let started = Instant::now();
        let ended = serve_stream(
            &config,
            endpoint,
            &mut desired,
            &mut inbox,
            &mut waiting,
            &connected,
        )
        .await;
        let _ = connected.send(false);
        match ended {
            Ended::Dropped => return,
            Ended::Refused(error) => {
                tracing::warn!(endpoint, %error, "the registry refused the stream");
                waiting.fail_all(&ClientError::StreamRefused(error));
            }
            Ended::Broke(error) => {
                tracing::debug!(endpoint, %error, "registry stream ended; connecting again");
            }
        }
        if started.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_millis(100);
        }
        let pause = backoff.mul_f64(0.5 + jitter.random::<f64>() / 2.0);
        backoff = (backoff * 2).min(Duration::from_secs(5));
        let sleep = tokio::time::sleep(pause);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => break,
                command = inbox.recv() => match command {
                    None => return,
                    Some(command) => apply_offline(command, &mut desired, &mut waiting),
                },
            }
        }
    }
}

/// How a stream ended.
enum Ended {
    /// The client was dropped.
    Dropped,
    /// The registry refused the stream itself (its key, its limits): said to waiting callers.
    Refused(String),
    /// It broke or never opened: connect again.
    Broke(String),
}

/// What a stream is to send, in order, and what each request's answer will resolve.
#[derive(Default)]
struct Outbox {
    next_id: u64,
    purposes: HashMap<u64, Purpose>,
    queue: VecDeque<proto::ClientMessage>,
}

impl Outbox {
    fn enqueue(&mut self, body: Body, purpose: Purpose) {
        // An acknowledgement is never answered: nothing to remember.
        if !matches!(purpose, Purpose::Other(None)) {
            self.purposes.insert(self.next_id, purpose);
        }
        self.queue.push_back(proto::ClientMessage {
            request_id: self.next_id,
            body: Some(body),
        });
        self.next_id += 1;
    }
}

/// One stream: connect, greet, replay what is wanted, then serve until it ends.
async fn serve_stream(
    config: &ClientConfig,
    endpoint: &str,
    desired: &mut Desired,
    inbox: &mut mpsc::Receiver<Command>,
    waiting: &mut Waiting,
    connected: &watch::Sender<bool>,
) -> Ended {
    let scheme = if config.tls_ca_pem.is_some() {
        "https"
    } else {
        "http"
    };
    let mut endpoint =
        match tonic::transport::Endpoint::from_shared(format!("{scheme}://{endpoint}")) {
            Ok(endpoint) => endpoint,
            Err(error) => return Ended::Refused(format!("bad endpoint {endpoint:?}: {error}")),
        };
    if let Some(ca) = &config.tls_ca_pem {
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca));
        endpoint = match endpoint.tls_config(tls) {
            Ok(endpoint) => endpoint,
            Err(error) => return Ended::Refused(format!("TLS: {error}")),
        };
    }
    let channel = match endpoint
        .connect_timeout(Duration::from_secs(3))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true)
        // Pushes of large sets: windows the size the servers use, not HTTP/2's 64 KiB.
        .initial_stream_window_size(Some(limits::HTTP2_STREAM_WINDOW_BYTES))
        .initial_connection_window_size(Some(limits::HTTP2_CONNECTION_WINDOW_BYTES))
        .connect()
        .await
    {
        Ok(channel) => channel,
        Err(error) => return Ended::Broke(format!("connecting: {error}")),
    };
    let mut grpc = proto::registry_client::RegistryClient::new(channel)
        .max_decoding_message_size(REGISTRY_SERVER_MESSAGE_BYTES_MAX);

    // A caller whose request the last stream did not answer, and that was withdrawn since.
    waiting.withdraw(desired);
    let mut outbox = Outbox::default();
    let hello = Body::Hello(proto::Hello {
        client_id: config.client_id.clone(),
        zone: config.zone.clone(),
        accept: vec![proto::Encoding::Zstd as i32, proto::Encoding::Plain as i32],
    });
    outbox.enqueue(hello, Purpose::Hello);
    for (registration_id, (key, record, generation)) in &desired.registrations {
        let body = Body::Register(proto::Register {
            registration_id: registration_id.clone(),
            key: Some(key.clone()),
            record: Some(record.clone()),
        });
        outbox.enqueue(
            body,
            Purpose::Register(registration_id.clone(), *generation),
        );
    }
    for (subscription_id, subscribed) in &desired.subscriptions {
        let body = Body::Subscribe(proto::Subscribe {
            subscription_id: subscription_id.clone(),
            key: Some(subscribed.key.clone()),
            scope: subscribed.scope as i32,
            known_version: subscribed
                .set
                .borrow()
                .as_ref()
                .map_or(0, |set| set.version),
        });
        let purpose = Purpose::Subscribe(subscription_id.clone(), subscribed.generation);
        outbox.enqueue(body, purpose);
    }
    for (watch_id, watching) in &desired.watches {
        let body = Body::Watch(proto::Watch {
            watch_id: watch_id.clone(),
            key: watching.key.clone(),
            known_version: watching
                .value
                .borrow()
                .as_ref()
                .filter(|value| value.present && !value.gray)
                .map_or(0, |value| value.version),
        });
        outbox.enqueue(body, Purpose::Watch(watch_id.clone(), watching.generation));
    }

    let (outgoing, requests) = mpsc::channel::<proto::ClientMessage>(256);
    // The hello goes first: the registry answers the call only once it has it.
    let hello = outbox.queue.pop_front().expect("the hello");
    if outgoing.send(hello).await.is_err() {
        return Ended::Broke("closed".to_owned());
    }
    let requests = futures::stream::unfold(requests, |mut requests| async move {
        requests.recv().await.map(|message| (message, requests))
    });
    let mut request = tonic::Request::new(requests);
    if let Some(key) = &config.api_key {
        let Ok(value) = MetadataValue::try_from(format!("Bearer {key}")) else {
            return Ended::Refused("the API key is not header text".to_owned());
        };
        request.metadata_mut().insert("authorization", value);
    }
    let mut inbound = match grpc.session(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => {
            let refused = matches!(
                status.code(),
                tonic::Code::Unauthenticated
                    | tonic::Code::PermissionDenied
                    | tonic::Code::InvalidArgument
                    | tonic::Code::ResourceExhausted
            );
            let error = format!("{}: {}", status.code(), status.message());
            return if refused {
                Ended::Refused(error)
            } else {
                Ended::Broke(error)
            };
        }
    };

    loop {
        tokio::select! {
            permit = outgoing.reserve(), if !outbox.queue.is_empty() => {
                let Ok(permit) = permit else {
                    return Ended::Broke("the stream closed".to_owned());
                };
                permit.send(outbox.queue.pop_front().expect("not empty"));
            }
            command = inbox.recv() => match command {
                None => return Ended::Dropped,
                Some(command) => {
                    let (body, purpose) = apply(command, desired, waiting);
                    outbox.enqueue(body, purpose);
                }
            },
            message = inbound.message() => {
                let message = match message {
                    Ok(Some(message)) => message,
                    Ok(None) => return Ended::Broke("the registry ended the stream".to_owned()),
                    Err(status) => return Ended::Broke(format!("broke: {status}")),
                };
                match message.body {
                    Some(server_message::Body::Answer(answer)) => {
                        let purpose = outbox.purposes.remove(&answer.request_id);
                        settle(purpose, answer, desired, waiting, connected);
                    }
                    Some(server_message::Body::Push(push)) => match accept_push(&push, desired) {
                        Ok(version) => {
                            let ack = Body::Ack(proto::PushAck {
                                subscription_id: push.subscription_id.clone(),
                                version,
                            });
                            outbox.enqueue(ack, Purpose::Other(None));
                        }
                        Err(error) => tracing::warn!(
                            subscription = push.subscription_id,
                            %error,
                            "ignored a push"
                        ),
                    },
                    Some(server_message::Body::Value(value)) => {
                        if let Err(error) = accept_value(value, desired) {
                            tracing::warn!(%error, "ignored a config value");
                        }
                    }
                    None => {}
                }
            }
        }
    }
}

/// Settles the answer to request `generation` for `id` of `wanted` (registrations,
/// subscriptions or watches): refused while it is still the newest asked for `id`, it is
/// forgotten (true); its callers, and those of older requests for `id`, are answered.
fn settle_wanted<T>(
    wanted: &mut BTreeMap<String, T>,
    generation_of: impl Fn(&T) -> u64,
    waiting: &mut HashMap<String, Vec<(u64, Reply)>>,
    (id, generation): (&str, u64),
    answer: &proto::Answer,
) -> bool {
    let newest = wanted
        .get(id)
        .is_some_and(|entry| generation_of(entry) == generation);
    let forgotten = !answer.ok && newest;
    if forgotten {
        wanted.remove(id);
    }
    Waiting::answer(waiting, id, generation, answer);
    forgotten
}

/// Resolves what an answer was for.
fn settle(
    purpose: Option<Purpose>,
    answer: proto::Answer,
    desired: &mut Desired,
    waiting: &mut Waiting,
    connected: &watch::Sender<bool>,
) {
    match purpose {
        None => {}
        Some(Purpose::Hello) => {
            let _ = connected.send(answer.ok);
        }
        Some(Purpose::Register(id, generation)) => {
            let forgotten = settle_wanted(
                &mut desired.registrations,
                |(_, _, wanted)| *wanted,
                &mut waiting.registrations,
                (&id, generation),
                &answer,
            );
            if forgotten {
                tracing::warn!(
                    registration = id,
                    field = answer.field,
                    error = answer.error,
                    "registration refused"
                );
            }
        }
        Some(Purpose::Subscribe(id, generation)) => {
            settle_wanted(
                &mut desired.subscriptions,
                |subscribed| subscribed.generation,
                &mut waiting.subscriptions,
                (&id, generation),
                &answer,
            );
        }
        Some(Purpose::Watch(id, generation)) => {
            settle_wanted(
                &mut desired.watches,
                |watching| watching.generation,
                &mut waiting.watches,
                (&id, generation),
                &answer,
            );
        }
        Some(Purpose::Other(Some(reply))) => {
            let _ = reply.send(Ok(answer));
        }
        Some(Purpose::Other(None)) => {}
    }
}

/// Checks and applies a push; the version to acknowledge.
fn accept_push(push: &proto::Push, desired: &Desired) -> Result<u64, String> {
    let plain_bytes = usize::try_from(push.plain_bytes).unwrap_or(usize::MAX);
    if plain_bytes > REGISTRY_PUSH_PLAIN_BYTES_MAX {
        return Err(format!("plain_bytes {plain_bytes} is over the limit"));
    }
    let plain = match proto::Encoding::try_from(push.encoding) {
        Ok(proto::Encoding::Plain) => push.payload.clone(),
        Ok(proto::Encoding::Zstd) => {
            let plain = zstd::bulk::decompress(&push.payload, plain_bytes)
                .map_err(|error| format!("payload does not decompress: {error}"))?;
            bytes::Bytes::from(plain)
        }
        Err(_) => return Err(format!("unknown encoding {}", push.encoding)),
    };
    if plain.len() != plain_bytes {
        return Err(format!(
            "payload is {} bytes, said {plain_bytes}",
            plain.len()
        ));
    }
    let records = proto::Records::decode(plain)
        .map_err(|error| format!("payload is not a Records message: {error}"))?
        .records;
    let subscribed = desired
        .subscriptions
        .get(&push.subscription_id)
        .ok_or("no such subscription")?;
    if push.key.as_ref() != Some(&subscribed.key) {
        return Err("the push names another key than the subscription's".to_owned());
    }
    subscribed.set.send_replace(Some(Arc::new(PushedSet {
        version: push.version,
        records,
    })));
    Ok(push.version)
}

/// Applies a pushed config value, if it is for a watch the client holds, of that key.
fn accept_value(value: proto::Value, desired: &Desired) -> Result<(), String> {
    let watching = desired
        .watches
        .get(&value.watch_id)
        .ok_or_else(|| format!("no such watch {:?}", value.watch_id))?;
    if value.key != watching.key {
        return Err(format!(
            "the value of {:?} came for the watch of {:?}",
            value.key, watching.key
        ));
    }
    let pushed = PushedValue {
        present: value.present,
        value: value.value,
        version: value.version,
        gray: value.gray,
        revision: value.revision,
    };
    // The same value again (a watch replayed after a reconnection) wakes nobody.
    watching.value.send_if_modified(|held| {
        let same = held.as_deref().is_some_and(|held| {
            (held.present, &held.value, held.version, held.gray)
                == (pushed.present, &pushed.value, pushed.version, pushed.gray)
        });
        if !same {
            *held = Some(Arc::new(pushed));
        }
        !same
    });
    Ok(())
}
