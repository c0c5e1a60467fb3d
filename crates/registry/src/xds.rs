//! The registry's mesh feed: Envoy's aggregated discovery service
//! (`envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources`, the
//! state-of-the-world variant) serving `ClusterLoadAssignment` resources, so that sidecars
//! receive address lists by push (docs/registry.md, "Mesh feed").
//!
//! A resource name is a data key written `instance_id|group|data_id` (`|` is in no name, so
//! the split is never ambiguous). Its assignment lists the key's records whose address is an
//! IP socket address (`10.0.0.7:8080`, `[fd00::7]:8080`, either behind a `scheme://`), one
//! locality per publisher zone; the node's own zone is priority 0 and the others priority 1, so
//! Envoy fails over to other zones only when its own has no healthy endpoint. The attributes
//! `weight` (1 to [`WEIGHT_MAX`]) and `health` (`healthy`, `unhealthy`, `draining`,
//! `degraded`) set the endpoint's weight and health; every attribute is in its metadata under
//! `fincore`.
//!
//! Each xDS stream is a registry session that subscribes to each requested key: the session
//! layer's pushes (marks, newest set only, byte budget) drive it, and each push is acknowledged
//! to the session as soon as it is taken, because gRPC delivers what is sent in order. Per
//! protocol, a request whose nonce is not the last response's is stale and ignored; one
//! carrying `error_detail` is a NACK (counted and logged; the next change is sent all the
//! same). Changed resources wait while the client is slow and only their newest form is sent.
//!
//! Owns the translation between xDS and the registry's sessions; must not decide who may read
//! (the embedding server's interceptor puts [`Rights`] in the request), nor what a valid name is
//! (`names`), nor how pushes are made (`session`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use envoy_types::pb::envoy::config::core::v3::{
    Address, HealthStatus, Locality, Metadata, SocketAddress, address, socket_address,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
    ResourceError, ResourceName, aggregated_discovery_service_server,
};
use envoy_types::pb::google::protobuf::{Any, Struct, UInt32Value, Value, value};
use futures::Stream;
use limits::{
    REGISTRY_SERVER_MESSAGE_BYTES_MAX, REGISTRY_STREAM_QUEUE_MESSAGES,
    REGISTRY_SUBSCRIPTIONS_PER_STREAM_MAX, REGISTRY_XDS_REQUEST_BYTES_MAX,
};
use prost::Message;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tonic::{Request, Response, Status, Streaming};

use crate::names::{self, DataKey, Refusal};
use crate::proto::{self, client_message::Body, server_message};
use crate::service::Opening;
use crate::session::{Outgoing, Registry, Session};

/// The one resource type served.
pub const CLUSTER_LOAD_ASSIGNMENT: &str =
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

/// The largest endpoint weight taken from a record's `weight` attribute (Envoy needs the
/// weights of a locality to sum within a u32: 20,000 publishers of a key at most fit).
pub const WEIGHT_MAX: u32 = 100_000;

/// A response carries changed resources up to about this many bytes; the rest follow in the
/// next (each response carries at least one). gRPC's own xDS clients take at most 4 MiB per
/// message by default.
const RESPONSE_BYTES_TARGET: usize = 1 << 20;

/// Responses queued toward one client (each up to about [`RESPONSE_BYTES_TARGET`]).
const RESPONSES_QUEUED: usize = 2;

/// The metadata namespace the records' attributes are put under.
const METADATA_NAMESPACE: &str = "fincore";

/// The xDS face of a [`Registry`].
#[derive(Debug, Clone)]
pub struct XdsService {
    registry: Arc<Registry>,
}

impl XdsService {
    pub fn new(registry: Arc<Registry>) -> XdsService {
        XdsService { registry }
    }

    /// The tonic service, with message-size limits.
    pub fn into_server(
        self,
    ) -> aggregated_discovery_service_server::AggregatedDiscoveryServiceServer<XdsService> {
        aggregated_discovery_service_server::AggregatedDiscoveryServiceServer::new(self)
            .max_decoding_message_size(REGISTRY_XDS_REQUEST_BYTES_MAX)
            .max_encoding_message_size(REGISTRY_SERVER_MESSAGE_BYTES_MAX + RESPONSE_BYTES_TARGET)
    }
}

type Responses = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;
type DeltaResponses = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl aggregated_discovery_service_server::AggregatedDiscoveryService for XdsService {
    type StreamAggregatedResourcesStream = Responses;
    type DeltaAggregatedResourcesStream = DeltaResponses;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Responses>, Status> {
        let Opening {
            rights,
            host,
            inbound,
            first,
        } = Opening::take(&self.registry, request, "first request").await?;
        let hello =
            hello(&first).map_err(|refusal| Status::invalid_argument(refusal.to_string()))?;
        let (pushes_in, pushes) = mpsc::channel(REGISTRY_STREAM_QUEUE_MESSAGES);
        let session = self
            .registry
            .open(&hello, host, rights, pushes_in)
            .map_err(|refusal| Status::resource_exhausted(refusal.to_string()))?;
        tokio::spawn(Arc::clone(&self.registry).push_loop(Arc::clone(&session)));
        let (out, responses) = mpsc::channel(RESPONSES_QUEUED);
        let stream = XdsStream {
            registry: Arc::clone(&self.registry),
            node_zone: first
                .node
                .as_ref()
                .and_then(|node| node.locality.as_ref())
                .map(|locality| locality.zone.clone())
                .unwrap_or_default(),
            session,
            wanted: HashMap::new(),
            by_subscription: HashMap::new(),
            next_subscription: 0,
            ready: BTreeMap::new(),
            empty_after_grace: BTreeSet::new(),
            refused: HashMap::new(),
            unreported: BTreeSet::new(),
            responses_sent: 0,
            last_nonce: String::new(),
        };
        tokio::spawn(stream.run(first, inbound, pushes, out));
        let responses = futures::stream::unfold(responses, |mut responses| async move {
            responses.recv().await.map(|response| (response, responses))
        });
        Ok(Response::new(Box::pin(responses)))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<DeltaResponses>, Status> {
        Err(Status::unimplemented(
            "incremental (delta) xDS is not served: use the state-of-the-world variant \
             (api_type GRPC)",
        ))
    }
}

/// The registry session an xDS stream opens: the node's id as client id, its zone (or
/// `xds` when it names none).
fn hello(first: &DiscoveryRequest) -> Result<proto::Hello, Refusal> {
    let node = first
        .node
        .as_ref()
        .ok_or_else(|| Refusal::new("node", "the stream's first request must name its node"))?;
    let client_id = names::name("node.id", &node.id)?;
    let zone = match node
        .locality
        .as_ref()
        .map(|locality| locality.zone.as_str())
    {
        None | Some("") => "xds",
        Some(zone) => names::name("node.locality.zone", zone)?,
    };
    Ok(proto::Hello {
        client_id: client_id.to_owned(),
        zone: zone.to_owned(),
        accept: vec![proto::Encoding::Plain as i32],
    })
}

/// The data key a resource name names: `instance_id|group|data_id`.
pub fn resource_key(field: &str, name: &str) -> Result<proto::DataKey, Refusal> {
    let parts: Vec<&str> = name.split('|').collect();
    let [instance_id, group, data_id] = parts[..] else {
        return Err(Refusal::new(
            field,
            "must be a data key written instance_id|group|data_id",
        ));
    };
    Ok(proto::DataKey {
        instance_id: names::name(&format!("{field}.instance_id"), instance_id)?.to_owned(),
        group: names::name(&format!("{field}.group"), group)?.to_owned(),
        data_id: names::name(&format!("{field}.data_id"), data_id)?.to_owned(),
    })
}

/// The resource name of a data key.
pub fn resource_name(key: &DataKey) -> String {
    format!("{}|{}|{}", key.instance_id, key.group, key.data_id)
}

/// One requested resource.
#[derive(Debug)]
struct Wanted {
    subscription_id: String,
    /// The newest version taken from the session (a push of it again, or of an older one, is
    /// not sent again: the session may push one version twice while its ack is on the way).
    version: u64,
}

/// One xDS stream's state: what the client asked for, what is ready to send, and the protocol's
/// nonce.
struct XdsStream {
    registry: Arc<Registry>,
    session: Arc<Session>,
    node_zone: String,
    /// Requested resources by name.
    wanted: HashMap<String, Wanted>,
    /// Resource names by the session's subscription id.
    by_subscription: HashMap<String, String>,
    next_subscription: u64,
    /// Resources changed since they were last sent, in their newest form, each holding its
    /// share of the stream's byte budget until it is sent (a client that does not read holds
    /// the session's pushes back, as any subscriber does).
    ready: BTreeMap<String, (Any, Option<OwnedSemaphorePermit>)>,
    /// Requested keys nothing was published under, asked for in the registry's first minute:
    /// sent empty only once it has passed (before, their publishers may not have registered
    /// again after a restart, and an empty assignment would empty the sidecars).
    empty_after_grace: BTreeSet<String>,
    /// Requested names that name no data key (or were refused), with the reason.
    refused: HashMap<String, String>,
    /// Refused names not yet reported.
    unreported: BTreeSet<String>,
    responses_sent: u64,
    last_nonce: String,
}

impl XdsStream {
    async fn run(
        mut self,
        first: DiscoveryRequest,
        mut inbound: Streaming<DiscoveryRequest>,
        mut pushes: mpsc::Receiver<Outgoing>,
        out: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    ) {
        let mut ending = self.request(first).err();
        let grace_ends = tokio::time::Instant::from_std(self.registry.restart_grace_ends());
        while ending.is_none() {
            let pending = !self.ready.is_empty() || !self.unreported.is_empty();
            tokio::select! {
                () = tokio::time::sleep_until(grace_ends), if !self.empty_after_grace.is_empty() => {
                    self.send_empty_keys();
                }
                () = self.registry.ended() => {
                    ending = Some(Status::unavailable("this registry is stopping"));
                }
                request = inbound.message() => match request {
                    Ok(Some(request)) => {
                        if let Err(status) = self.request(request) {
                            ending = Some(status);
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(stream = self.session.id(), %status, "xDS stream broke");
                        break;
                    }
                },
                push = pushes.recv() => match push {
                    Some((Ok(message), budget)) => self.push(message, budget),
                    Some((Err(status), _)) => ending = Some(status),
                    None => break,
                },
                permit = out.reserve(), if pending => match permit {
                    Ok(permit) => permit.send(Ok(self.response())),
                    Err(_) => break,
                },
            }
        }
        self.registry.close(&self.session);
        if let Some(status) = ending {
            // A client that reads nothing more does not hold this task.
            let _ = out.try_send(Err(status));
        }
    }

    /// The keys still empty once the first minute has passed go out empty.
    fn send_empty_keys(&mut self) {
        for name in std::mem::take(&mut self.empty_after_grace) {
            let Some(wanted) = self.wanted.get(&name) else {
                continue;
            };
            if wanted.version == 0 && !self.ready.contains_key(&name) {
                let empty = assignment(&name, &[], &self.node_zone, &self.registry);
                self.ready.insert(name, (empty, None));
            }
        }
    }

    /// Takes one request: its nonce says whether it is current and whether it ACKs or NACKs the
    /// last response; its resource names become the subscriptions.
    fn request(&mut self, request: DiscoveryRequest) -> Result<(), Status> {
        if request.type_url != CLUSTER_LOAD_ASSIGNMENT {
            return Err(Status::unimplemented(format!(
                "type_url: {:?} is not served; this endpoint serves {CLUSTER_LOAD_ASSIGNMENT} only",
                request.type_url
            )));
        }
        if request.resource_names.len() > REGISTRY_SUBSCRIPTIONS_PER_STREAM_MAX {
            return Err(Status::invalid_argument(format!(
                "resource_names: {} names, more than {REGISTRY_SUBSCRIPTIONS_PER_STREAM_MAX}",
                request.resource_names.len()
            )));
        }
        // Before its first response a stream has no nonce to be stale against (a client may
        // carry one over from an earlier stream).
        if !request.response_nonce.is_empty() && self.responses_sent > 0 {
            if request.response_nonce != self.last_nonce {
                // Stale: the client has not seen the newest response yet, and will answer it.
                return Ok(());
            }
            if let Some(error) = &request.error_detail {
                self.registry
                    .stats
                    .xds_nacks
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    stream = self.session.id(),
                    nonce = %request.response_nonce,
                    kept_version = %request.version_info,
                    error = %error.message,
                    "an xDS client refused a response"
                );
            }
        }
        let requested: std::collections::HashSet<&str> =
            request.resource_names.iter().map(String::as_str).collect();
        let gone: Vec<String> = self
            .wanted
            .keys()
            .filter(|name| !requested.contains(name.as_str()))
            .cloned()
            .collect();
        for name in gone {
            self.forget(&name);
        }
        self.refused
            .retain(|name, _| requested.contains(name.as_str()));
        self.unreported
            .retain(|name| requested.contains(name.as_str()));
        for (index, name) in request.resource_names.iter().enumerate() {
            if !self.wanted.contains_key(name) && !self.refused.contains_key(name) {
                self.want(index, name);
            }
        }
        Ok(())
    }

    /// Subscribes to the key `name` names; a name that names none is reported in the next
    /// response's `resource_errors`.
    fn want(&mut self, index: usize, name: &str) {
        let key = match resource_key(&format!("resource_names[{index}]"), name) {
            Ok(key) => key,
            Err(refusal) => {
                self.refuse(name, refusal.to_string());
                return;
            }
        };
        self.next_subscription += 1;
        let subscription_id = format!("xds-{}", self.next_subscription);
        let subscribe = proto::ClientMessage {
            request_id: self.next_subscription,
            body: Some(Body::Subscribe(proto::Subscribe {
                subscription_id: subscription_id.clone(),
                key: Some(key.clone()),
                scope: proto::Scope::Global as i32,
                known_version: 0,
            })),
        };
        let answer = self.registry.handle(&self.session, subscribe);
        if let Some(answer) = answer.filter(|answer| !answer.ok) {
            self.refuse(name, format!("{}: {}", answer.field, answer.error));
            return;
        }
        if self.registry.store().version(&key_of(&self.registry, &key)) == 0 {
            // The session pushes nothing for a key nothing was ever published under; the
            // client still learns that the cluster has no endpoints now (after the first
            // minute: before, the key's publishers may not be back yet).
            if self.registry.past_restart_grace() {
                let empty = assignment(name, &[], &self.node_zone, &self.registry);
                self.ready.insert(name.to_owned(), (empty, None));
            } else {
                self.empty_after_grace.insert(name.to_owned());
            }
        }
        self.by_subscription
            .insert(subscription_id.clone(), name.to_owned());
        self.wanted.insert(
            name.to_owned(),
            Wanted {
                subscription_id,
                version: 0,
            },
        );
    }

    /// Reports `name` as naming nothing served, once, while it stays requested.
    fn refuse(&mut self, name: &str, reason: String) {
        self.refused.insert(name.to_owned(), reason);
        self.unreported.insert(name.to_owned());
    }

    fn forget(&mut self, name: &str) {
        let Some(Wanted {
            subscription_id, ..
        }) = self.wanted.remove(name)
        else {
            return;
        };
        self.by_subscription.remove(&subscription_id);
        self.ready.remove(name);
        self.empty_after_grace.remove(name);
        let unsubscribe = proto::ClientMessage {
            request_id: 0,
            body: Some(Body::Unsubscribe(proto::Unsubscribe { subscription_id })),
        };
        self.registry.handle(&self.session, unsubscribe);
    }

    /// Takes one of the session's pushes: the resource's newest assignment, ready to send
    /// (holding the push's share of the byte budget until then).
    fn push(&mut self, message: proto::ServerMessage, budget: Option<OwnedSemaphorePermit>) {
        let Some(server_message::Body::Push(push)) = message.body else {
            return;
        };
        // Taken: the newest form reaches the client through `ready`, in order.
        let ack = proto::ClientMessage {
            request_id: 0,
            body: Some(Body::Ack(proto::PushAck {
                subscription_id: push.subscription_id.clone(),
                version: push.version,
            })),
        };
        self.registry.handle(&self.session, ack);
        let Some(name) = self.by_subscription.get(&push.subscription_id).cloned() else {
            return;
        };
        let Some(wanted) = self.wanted.get_mut(&name) else {
            return;
        };
        if push.version <= wanted.version {
            return;
        }
        let records = match proto::Records::decode(push.payload) {
            Ok(records) => records.records,
            Err(error) => {
                tracing::error!(%error, "a registry push did not decode; not sent to xDS");
                return;
            }
        };
        wanted.version = push.version;
        let resource = assignment(&name, &records, &self.node_zone, &self.registry);
        self.ready.insert(name, (resource, budget));
    }

    /// The next response: the ready resources (up to about [`RESPONSE_BYTES_TARGET`] bytes)
    /// and the names found wrong.
    fn response(&mut self) -> DiscoveryResponse {
        let mut resources = Vec::new();
        let mut bytes = 0;
        while let Some(entry) = self.ready.first_entry() {
            let size = entry.get().0.value.len();
            if !resources.is_empty() && bytes + size > RESPONSE_BYTES_TARGET {
                break;
            }
            bytes += size;
            // The budget's share goes back as the response is handed to the stream.
            let (resource, _budget) = entry.remove();
            resources.push(resource);
        }
        let resource_errors = std::mem::take(&mut self.unreported)
            .into_iter()
            .filter_map(|name| {
                let message = self.refused.get(&name)?.clone();
                Some((name, message))
            })
            .map(|(name, message)| ResourceError {
                resource_name: Some(ResourceName {
                    name,
                    ..ResourceName::default()
                }),
                error_detail: Some(envoy_types::pb::google::rpc::Status {
                    code: tonic::Code::InvalidArgument as i32,
                    message,
                    details: Vec::new(),
                }),
            })
            .collect();
        self.responses_sent += 1;
        self.last_nonce = self.responses_sent.to_string();
        self.registry
            .stats
            .xds_responses
            .fetch_add(1, Ordering::Relaxed);
        DiscoveryResponse {
            version_info: self.responses_sent.to_string(),
            resources,
            type_url: CLUSTER_LOAD_ASSIGNMENT.to_owned(),
            nonce: self.last_nonce.clone(),
            resource_errors,
            ..DiscoveryResponse::default()
        }
    }
}

/// The interned key for a checked wire key (for a store lookup).
fn key_of(registry: &Registry, key: &proto::DataKey) -> DataKey {
    names::data_key("key", Some(key), registry.interner()).expect("checked by resource_key")
}

/// The socket address a record's address names, if it names one: `ip:port` or `[ip6]:port`,
/// optionally behind `scheme://` and before `/path`.
pub fn socket_address(address: &str) -> Option<SocketAddr> {
    let address = address.split_once("://").map_or(address, |(_, rest)| rest);
    let address = address.split_once('/').map_or(address, |(host, _)| host);
    address.parse().ok()
}

/// `name`'s assignment from its key's records: one locality per zone, the node's own first.
fn assignment(
    name: &str,
    records: &[proto::PublishedRecord],
    node_zone: &str,
    registry: &Registry,
) -> Any {
    let mut zones: BTreeMap<&str, Vec<LbEndpoint>> = BTreeMap::new();
    let mut seen = std::collections::HashSet::new();
    for published in records {
        let Some(record) = &published.record else {
            continue;
        };
        let Some(socket) = socket_address(&record.address) else {
            registry
                .stats
                .xds_unroutable
                .fetch_add(1, Ordering::Relaxed);
            continue;
        };
        // One endpoint per address (gRPC's xDS clients refuse an assignment naming one twice,
        // as when a restarted publisher's old stream lingers): the first in publisher order.
        if !seen.insert(socket) {
            continue;
        }
        zones
            .entry(published.zone.as_str())
            .or_default()
            .push(endpoint(published, record, socket));
    }
    let own_zone_listed = zones.contains_key(node_zone);
    let endpoints = zones
        .into_iter()
        .map(|(zone, lb_endpoints)| LocalityLbEndpoints {
            locality: Some(Locality {
                zone: zone.to_owned(),
                ..Locality::default()
            }),
            // Its endpoints' weights summed (gRPC's xDS clients skip a locality without one):
            // at most 20,000 × WEIGHT_MAX, within a u32.
            load_balancing_weight: Some(UInt32Value {
                value: lb_endpoints
                    .iter()
                    .map(|lb| lb.load_balancing_weight.as_ref().map_or(1, |w| w.value))
                    .fold(0u32, u32::saturating_add),
            }),
            lb_endpoints,
            priority: u32::from(own_zone_listed && zone != node_zone),
            ..LocalityLbEndpoints::default()
        })
        .collect();
    let assignment = ClusterLoadAssignment {
        cluster_name: name.to_owned(),
        endpoints,
        ..ClusterLoadAssignment::default()
    };
    Any {
        type_url: CLUSTER_LOAD_ASSIGNMENT.to_owned(),
        value: assignment.encode_to_vec(),
    }
}

fn endpoint(
    published: &proto::PublishedRecord,
    record: &proto::Record,
    socket: SocketAddr,
) -> LbEndpoint {
    let attribute = |name: &str| {
        record
            .attributes
            .iter()
            .find(|attribute| attribute.key == name)
            .map(|attribute| attribute.value.as_str())
    };
    let weight = attribute("weight")
        .and_then(|weight| weight.parse::<u32>().ok())
        .filter(|weight| (1..=WEIGHT_MAX).contains(weight))
        .map(|value| UInt32Value { value });
    let health = match attribute("health") {
        Some("healthy") => HealthStatus::Healthy,
        Some("unhealthy") => HealthStatus::Unhealthy,
        Some("draining") => HealthStatus::Draining,
        Some("degraded") => HealthStatus::Degraded,
        _ => HealthStatus::Unknown,
    };
    let text = |text: &str| Value {
        kind: Some(value::Kind::StringValue(text.to_owned())),
    };
    let mut fields: HashMap<String, Value> = record
        .attributes
        .iter()
        .map(|attribute| (attribute.key.clone(), text(&attribute.value)))
        .collect();
    fields.insert("client_id".to_owned(), text(&published.client_id));
    fields.insert(
        "registration_id".to_owned(),
        text(&published.registration_id),
    );
    LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
            address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    protocol: socket_address::Protocol::Tcp as i32,
                    address: socket.ip().to_string(),
                    port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(
                        socket.port(),
                    ))),
                    ..SocketAddress::default()
                })),
            }),
            ..Endpoint::default()
        })),
        health_status: health as i32,
        metadata: Some(Metadata {
            filter_metadata: HashMap::from([(METADATA_NAMESPACE.to_owned(), Struct { fields })]),
            ..Metadata::default()
        }),
        load_balancing_weight: weight,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_names_are_data_keys() {
        let key = resource_key("resource_names[0]", "tenant|grp|svc.pay").unwrap();
        assert_eq!(
            (
                key.instance_id.as_str(),
                key.group.as_str(),
                key.data_id.as_str()
            ),
            ("tenant", "grp", "svc.pay")
        );
        let refusal = resource_key("resource_names[2]", "svc.pay").unwrap_err();
        assert_eq!(refusal.field, "resource_names[2]");
        let refusal = resource_key("resource_names[1]", "a|b c|d").unwrap_err();
        assert_eq!(refusal.field, "resource_names[1].group");
        assert!(resource_key("resource_names[0]", "a|b|c|d").is_err());
        assert!(resource_key("resource_names[0]", "a||c").is_err());
    }

    #[test]
    fn addresses_are_ip_socket_addresses() {
        let expect = |text: &str, want: Option<&str>| {
            assert_eq!(
                socket_address(text),
                want.map(|want| want.parse().unwrap()),
                "{text}"
            );
        };
        expect("10.0.0.7:8080", Some("10.0.0.7:8080"));
        expect("grpc://10.0.0.7:8080", Some("10.0.0.7:8080"));
        expect("http://[fd00::7]:80/health", Some("[fd00::7]:80"));
        expect("10.0.0.7", None);
        expect("pay.internal:8080", None);
        expect("", None);
    }

    fn published(zone: &str, address: &str, attributes: &[(&str, &str)]) -> proto::PublishedRecord {
        proto::PublishedRecord {
            client_id: "c".into(),
            registration_id: address.into(),
            zone: zone.into(),
            record: Some(proto::Record {
                address: address.into(),
                attributes: attributes
                    .iter()
                    .map(|(key, value)| proto::Attribute {
                        key: (*key).into(),
                        value: (*value).into(),
                    })
                    .collect(),
            }),
        }
    }

    #[test]
    fn assignments_put_the_nodes_zone_first_and_skip_what_is_no_socket() {
        let registry = Registry::new(crate::Settings::default());
        let records = [
            published(
                "a",
                "10.0.0.1:80",
                &[("weight", "3"), ("health", "draining")],
            ),
            published("b", "10.0.0.2:80", &[("weight", "0")]),
            published("b", "not an address", &[]),
            // The same address again (a publisher's old registration lingering): once.
            published("b", "tcp://10.0.0.2:80", &[]),
        ];
        let any = assignment("t|g|d", &records, "b", &registry);
        assert_eq!(any.type_url, CLUSTER_LOAD_ASSIGNMENT);
        let cla = ClusterLoadAssignment::decode(any.value.as_slice()).unwrap();
        assert_eq!(cla.cluster_name, "t|g|d");
        let zones: Vec<(&str, u32, usize)> = cla
            .endpoints
            .iter()
            .map(|l| {
                (
                    l.locality.as_ref().unwrap().zone.as_str(),
                    l.priority,
                    l.lb_endpoints.len(),
                )
            })
            .collect();
        assert_eq!(zones, [("a", 1, 1), ("b", 0, 1)]);
        // Locality weights are their endpoints' (1 when unset).
        let weights: Vec<u32> = cla
            .endpoints
            .iter()
            .map(|l| l.load_balancing_weight.as_ref().unwrap().value)
            .collect();
        assert_eq!(weights, [3, 1]);
        let first = &cla.endpoints[0].lb_endpoints[0];
        assert_eq!(first.load_balancing_weight.as_ref().unwrap().value, 3);
        assert_eq!(first.health_status, HealthStatus::Draining as i32);
        let metadata = &first.metadata.as_ref().unwrap().filter_metadata["fincore"];
        assert!(metadata.fields.contains_key("weight"));
        assert!(metadata.fields.contains_key("registration_id"));
        // A weight out of range is left to Envoy's default.
        assert!(
            cla.endpoints[1].lb_endpoints[0]
                .load_balancing_weight
                .is_none()
        );
        assert_eq!(registry.stats.xds_unroutable.load(Ordering::Relaxed), 1);
        // A node whose zone has no endpoint gets every zone at priority 0 (no gap).
        let any = assignment("t|g|d", &records, "c", &registry);
        let cla = ClusterLoadAssignment::decode(any.value.as_slice()).unwrap();
        assert!(cla.endpoints.iter().all(|l| l.priority == 0));
    }
}
