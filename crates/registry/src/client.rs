//! The registry's Rust client: one stream to a registry, kept open by itself. It remembers what
//! its user registered and subscribed to, and after a broken stream it connects again (to the
//! next address, waiting 100 ms doubling up to 5 s between tries) and sends all of it again,
//! with each subscription's version, so nothing is pushed twice that it already holds.
//!
//! Everything the user asks goes through one ordered queue with the replay, so a registration
//! changed during a reconnection is never overtaken by its older copy. Pushes are checked before
//! they are believed: a compressed one must decompress to exactly its stated size, at most
//! `REGISTRY_PUSH_PLAIN_BYTES_MAX` (no decompression bomb), and name a subscription and key the
//! client holds.
//!
//! Owns the client side of the protocol; must not cache anything a push did not send.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
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

type Reply = oneshot::Sender<Result<proto::Answer, ClientError>>;

#[derive(Debug)]
struct Subscribed {
    key: proto::DataKey,
    scope: proto::Scope,
    set: watch::Sender<Option<Arc<PushedSet>>>,
}

/// What the user asked for: sent again on every new stream.
#[derive(Debug, Default)]
struct Desired {
    registrations: BTreeMap<String, (proto::DataKey, proto::Record)>,
    subscriptions: BTreeMap<String, Subscribed>,
}

enum Command {
    /// Send this (already in `Desired`, or a one-off); answer `reply` when the registry does.
    Send(Body, Option<Reply>),
}

/// A connection to a registry that keeps itself open; dropping it ends the stream (and the
/// registry removes what it registered).
#[derive(Debug)]
pub struct RegistryClient {
    desired: Arc<Mutex<Desired>>,
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
        let desired = Arc::new(Mutex::new(Desired::default()));
        let (commands, inbox) = mpsc::channel(1024);
        let (connected_tx, connected) = watch::channel(false);
        tokio::spawn(run(config, Arc::clone(&desired), inbox, connected_tx));
        Ok(RegistryClient {
            desired,
            commands,
            connected,
        })
    }

    /// Whether a stream is open and greeted now (changes as it breaks and comes back).
    pub fn connected(&self) -> watch::Receiver<bool> {
        self.connected.clone()
    }

    async fn ask(&self, body: Body) -> Result<proto::Answer, ClientError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Send(body, Some(reply)))
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
        self.desired
            .lock()
            .expect("never poisoned")
            .registrations
            .insert(registration_id.to_owned(), (key.clone(), record.clone()));
        let body = Body::Register(proto::Register {
            registration_id: registration_id.to_owned(),
            key: Some(key),
            record: Some(record),
        });
        self.ask(body).await.map(drop)
    }

    /// Withdraws a registration.
    pub async fn unregister(&self, registration_id: &str) -> Result<(), ClientError> {
        self.desired
            .lock()
            .expect("never poisoned")
            .registrations
            .remove(registration_id);
        let body = Body::Unregister(proto::Unregister {
            registration_id: registration_id.to_owned(),
        });
        self.ask(body).await.map(drop)
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
        self.desired
            .lock()
            .expect("never poisoned")
            .subscriptions
            .insert(
                subscription_id.to_owned(),
                Subscribed {
                    key: key.clone(),
                    scope,
                    set,
                },
            );
        let body = Body::Subscribe(proto::Subscribe {
            subscription_id: subscription_id.to_owned(),
            key: Some(key),
            scope: scope as i32,
            known_version: 0,
        });
        self.ask(body).await.map(|_| receiver)
    }

    /// Removes every record published from `ip` (role admin); how many were removed.
    pub async fn drain_host(&self, ip: &str) -> Result<u64, ClientError> {
        let body = Body::DrainHost(proto::DrainHost { ip: ip.to_owned() });
        self.ask(body).await.map(|answer| answer.removed)
    }
}

/// What an answer on the current stream resolves.
enum Purpose {
    Hello,
    Register(String),
    Subscribe(String),
    /// A request whose answer is only for its asker (or for nobody: a replayed one).
    Other(Option<Reply>),
}

/// Requests waiting for an answer that a new stream will bring (register and subscribe
/// survive a reconnection; anything else fails with `NotConnected`).
#[derive(Default)]
struct Waiting {
    registrations: HashMap<String, Vec<Reply>>,
    subscriptions: HashMap<String, Vec<Reply>>,
}

async fn run(
    config: ClientConfig,
    desired: Arc<Mutex<Desired>>,
    mut inbox: mpsc::Receiver<Command>,
    connected: watch::Sender<bool>,
) {
    let mut waiting = Waiting::default();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64);
    let mut jitter = SmallRng::seed_from_u64(seed);
    let mut backoff = Duration::from_millis(100);
    for endpoint in config.endpoints.iter().cycle() {
        let started = Instant::now();
        match serve_stream(
            &config,
            endpoint,
            &desired,
            &mut inbox,
            &mut waiting,
            &connected,
        )
        .await
        {
            Ok(()) => return,
            Err(error) => {
                let _ = connected.send(false);
                tracing::debug!(endpoint, %error, "registry stream ended; connecting again");
            }
        }
        if started.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_millis(100);
        }
        let pause = backoff.mul_f64(0.5 + jitter.random::<f64>() / 2.0);
        backoff = (backoff * 2).min(Duration::from_secs(5));
        // Requests asked while no stream is open wait for the next one (or fail at once).
        let sleep = tokio::time::sleep(pause);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => break,
                command = inbox.recv() => match command {
                    None => return,
                    Some(Command::Send(body, reply)) => hold(body, reply, &mut waiting),
                },
            }
        }
    }
}

/// Keeps a request asked while disconnected: a registration or subscription is answered by its
/// replay on the next stream; anything else fails now.
fn hold(body: Body, reply: Option<Reply>, waiting: &mut Waiting) {
    let Some(reply) = reply else { return };
    match body {
        Body::Register(register) => waiting
            .registrations
            .entry(register.registration_id)
            .or_default()
            .push(reply),
        Body::Subscribe(subscribe) => waiting
            .subscriptions
            .entry(subscribe.subscription_id)
            .or_default()
            .push(reply),
        // The stream's end removed it already.
        Body::Unregister(_) | Body::Unsubscribe(_) => {
            let _ = reply.send(Ok(proto::Answer {
                ok: true,
                ..proto::Answer::default()
            }));
        }
        _ => {
            let _ = reply.send(Err(ClientError::NotConnected));
        }
    }
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

/// One stream: connect, greet, replay, then serve until it breaks (`Err`) or the client is
/// dropped (`Ok`).
async fn serve_stream(
    config: &ClientConfig,
    endpoint: &str,
    desired: &Mutex<Desired>,
    inbox: &mut mpsc::Receiver<Command>,
    waiting: &mut Waiting,
    connected: &watch::Sender<bool>,
) -> Result<(), String> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{endpoint}"))
        .map_err(|error| format!("bad endpoint: {error}"))?
        .connect_timeout(Duration::from_secs(3))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true)
        .connect()
        .await
        .map_err(|error| format!("connecting: {error}"))?;
    let mut grpc = proto::registry_client::RegistryClient::new(channel)
        .max_decoding_message_size(REGISTRY_SERVER_MESSAGE_BYTES_MAX);

    let mut outbox = Outbox::default();
    let hello = Body::Hello(proto::Hello {
        client_id: config.client_id.clone(),
        zone: config.zone.clone(),
        accept: vec![proto::Encoding::Zstd as i32, proto::Encoding::Plain as i32],
    });
    outbox.enqueue(hello, Purpose::Hello);
    {
        let desired = desired.lock().expect("never poisoned");
        for (registration_id, (key, record)) in &desired.registrations {
            let body = Body::Register(proto::Register {
                registration_id: registration_id.clone(),
                key: Some(key.clone()),
                record: Some(record.clone()),
            });
            outbox.enqueue(body, Purpose::Register(registration_id.clone()));
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
            outbox.enqueue(body, Purpose::Subscribe(subscription_id.clone()));
        }
    }

    let (outgoing, requests) = mpsc::channel::<proto::ClientMessage>(256);
    // The hello goes first: the registry answers the call only once it has it.
    outgoing
        .send(outbox.queue.pop_front().expect("the hello"))
        .await
        .map_err(|_| "closed".to_owned())?;
    let requests = futures::stream::unfold(requests, |mut requests| async move {
        requests.recv().await.map(|message| (message, requests))
    });
    let mut request = tonic::Request::new(requests);
    if let Some(key) = &config.api_key {
        let value = MetadataValue::try_from(format!("Bearer {key}"))
            .map_err(|_| "the API key is not header text".to_owned())?;
        request.metadata_mut().insert("authorization", value);
    }
    let mut inbound = grpc
        .session(request)
        .await
        .map_err(|status| format!("refused: {status}"))?
        .into_inner();

    loop {
        tokio::select! {
            permit = outgoing.reserve(), if !outbox.queue.is_empty() => {
                let permit = permit.map_err(|_| "the stream closed".to_owned())?;
                permit.send(outbox.queue.pop_front().expect("not empty"));
            }
            command = inbox.recv() => match command {
                None => return Ok(()),
                Some(Command::Send(body, reply)) => {
                    let purpose = match (&body, reply) {
                        (Body::Register(register), Some(reply)) => {
                            waiting.registrations.entry(register.registration_id.clone()).or_default().push(reply);
                            Purpose::Register(register.registration_id.clone())
                        }
                        (Body::Subscribe(subscribe), Some(reply)) => {
                            waiting.subscriptions.entry(subscribe.subscription_id.clone()).or_default().push(reply);
                            Purpose::Subscribe(subscribe.subscription_id.clone())
                        }
                        (_, reply) => Purpose::Other(reply),
                    };
                    outbox.enqueue(body, purpose);
                }
            },
            message = inbound.message() => {
                let message = message
                    .map_err(|status| format!("broke: {status}"))?
                    .ok_or_else(|| "the registry ended the stream".to_owned())?;
                match message.body {
                    Some(server_message::Body::Answer(answer)) => {
                        let purpose = outbox.purposes.remove(&answer.request_id);
                        settle(purpose, answer, desired, waiting, connected);
                    }
                    Some(server_message::Body::Push(push)) => {
                        match accept_push(&push, desired) {
                            Ok(version) => {
                                let ack = Body::Ack(proto::PushAck {
                                    subscription_id: push.subscription_id.clone(),
                                    version,
                                });
                                outbox.enqueue(ack, Purpose::Other(None));
                            }
                            Err(error) => tracing::warn!(subscription = push.subscription_id, %error, "ignored a push"),
                        }
                    }
                    None => {}
                }
            }
        }
    }
}

/// Resolves what an answer was for.
fn settle(
    purpose: Option<Purpose>,
    answer: proto::Answer,
    desired: &Mutex<Desired>,
    waiting: &mut Waiting,
    connected: &watch::Sender<bool>,
) {
    let tell = |replies: Option<Vec<Reply>>, answer: &proto::Answer| {
        for reply in replies.into_iter().flatten() {
            let _ = reply.send(Ok(answer.clone()));
        }
    };
    match purpose {
        None => {}
        Some(Purpose::Hello) => {
            let _ = connected.send(answer.ok);
        }
        Some(Purpose::Register(id)) => {
            if !answer.ok {
                tracing::warn!(
                    registration = id,
                    field = answer.field,
                    error = answer.error,
                    "registration refused"
                );
                desired
                    .lock()
                    .expect("never poisoned")
                    .registrations
                    .remove(&id);
            }
            tell(waiting.registrations.remove(&id), &answer);
        }
        Some(Purpose::Subscribe(id)) => {
            if !answer.ok {
                desired
                    .lock()
                    .expect("never poisoned")
                    .subscriptions
                    .remove(&id);
            }
            tell(waiting.subscriptions.remove(&id), &answer);
        }
        Some(Purpose::Other(reply)) => tell(reply.map(|reply| vec![reply]), &answer),
    }
}

/// Checks and applies a push; the version to acknowledge.
fn accept_push(push: &proto::Push, desired: &Mutex<Desired>) -> Result<u64, String> {
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
    let desired = desired.lock().expect("never poisoned");
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
