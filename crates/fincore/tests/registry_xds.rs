//! The registry's xDS endpoint over real sockets, spoken as Envoy speaks it (envoy-types'
//! generated client): assignments by push for the requested clusters, the node's zone first,
//! ACK and NACK by nonce, stale requests ignored, clusters dropped, names that name no key
//! reported per resource; and refusals: no key, another resource type, no node, delta xDS.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{Locality, Node, address};
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, lb_endpoint};
use envoy_types::pb::envoy::service::discovery::v3::{
    DiscoveryRequest, DiscoveryResponse,
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
};
use prost::Message;
use registry::client::{ClientConfig, RegistryClient};
use registry::proto;
use registry::xds::CLUSTER_LOAD_ASSIGNMENT;
use server::auth::{Auth, KeyStore, KeysFile, Role};
use server::registry_node::RegistryNode;
use tokio::sync::mpsc;
use tonic::Streaming;

const WAIT: Duration = Duration::from_secs(15);
const PAY: &str = "tenant-a|payments|pay.api";
const EMPTY: &str = "tenant-a|payments|nothing.yet";

fn key(data_id: &str) -> proto::DataKey {
    proto::DataKey {
        instance_id: "tenant-a".into(),
        group: "payments".into(),
        data_id: data_id.into(),
    }
}

fn record(address: &str, weight: &str) -> proto::Record {
    proto::Record {
        address: address.into(),
        attributes: vec![proto::Attribute {
            key: "weight".into(),
            value: weight.into(),
        }],
    }
}

fn publisher(addr: SocketAddr, id: &str, zone: &str) -> RegistryClient {
    RegistryClient::start(ClientConfig {
        endpoints: vec![addr.to_string()],
        api_key: None,
        client_id: id.into(),
        zone: zone.into(),
        tls_ca_pem: None,
    })
    .expect("a valid config")
}

fn request(names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: version.into(),
        resource_names: names.iter().map(|name| (*name).to_owned()).collect(),
        type_url: CLUSTER_LOAD_ASSIGNMENT.into(),
        response_nonce: nonce.into(),
        ..DiscoveryRequest::default()
    }
}

fn node(zone: &str) -> Node {
    Node {
        id: "envoy-1".into(),
        cluster: "sidecars".into(),
        locality: Some(Locality {
            zone: zone.into(),
            ..Locality::default()
        }),
        ..Node::default()
    }
}

/// An ADS stream: requests in through `requests`, responses out of the returned stream.
async fn ads(
    addr: SocketAddr,
    api_key: Option<&str>,
    first: DiscoveryRequest,
) -> Result<(mpsc::Sender<DiscoveryRequest>, Streaming<DiscoveryResponse>), tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let (requests, inbound) = mpsc::channel(16);
    requests.send(first).await.unwrap();
    let stream = futures::stream::unfold(inbound, |mut inbound| async move {
        inbound.recv().await.map(|request| (request, inbound))
    });
    let mut request = tonic::Request::new(stream);
    if let Some(api_key) = api_key {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {api_key}").parse().unwrap(),
        );
    }
    let responses = AggregatedDiscoveryServiceClient::new(channel)
        .stream_aggregated_resources(request)
        .await?
        .into_inner();
    Ok((requests, responses))
}

async fn next(responses: &mut Streaming<DiscoveryResponse>) -> DiscoveryResponse {
    tokio::time::timeout(WAIT, responses.message())
        .await
        .expect("a response in time")
        .expect("a healthy stream")
        .expect("the stream goes on")
}

/// The assignments of a response, by cluster name.
fn assignments(response: &DiscoveryResponse) -> Vec<ClusterLoadAssignment> {
    assert_eq!(response.type_url, CLUSTER_LOAD_ASSIGNMENT);
    response
        .resources
        .iter()
        .map(|any| {
            assert_eq!(any.type_url, CLUSTER_LOAD_ASSIGNMENT);
            ClusterLoadAssignment::decode(any.value.as_slice()).unwrap()
        })
        .collect()
}

/// Per locality: (zone, priority, sorted "ip:port weight").
fn shape(assignment: &ClusterLoadAssignment) -> Vec<(String, u32, Vec<String>)> {
    assignment
        .endpoints
        .iter()
        .map(|locality| {
            let mut endpoints: Vec<String> = locality
                .lb_endpoints
                .iter()
                .map(|lb| {
                    let Some(lb_endpoint::HostIdentifier::Endpoint(endpoint)) =
                        &lb.host_identifier
                    else {
                        panic!("an endpoint")
                    };
                    let Some(address::Address::SocketAddress(socket)) =
                        &endpoint.address.as_ref().unwrap().address
                    else {
                        panic!("a socket address")
                    };
                    let Some(
                        envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(port),
                    ) = socket.port_specifier
                    else {
                        panic!("a port")
                    };
                    let weight = lb.load_balancing_weight.as_ref().map_or(0, |w| w.value);
                    format!("{}:{port} {weight}", socket.address)
                })
                .collect();
            endpoints.sort();
            let zone = locality.locality.as_ref().unwrap().zone.clone();
            (zone, locality.priority, endpoints)
        })
        .collect()
}

fn zone(name: &str, priority: u32, endpoints: &[&str]) -> (String, u32, Vec<String>) {
    (
        name.to_owned(),
        priority,
        endpoints.iter().map(|e| (*e).to_owned()).collect(),
    )
}

/// Reads responses (ACKing each) until one holds `cluster`; returns it with its response.
async fn until_cluster(
    requests: &mpsc::Sender<DiscoveryRequest>,
    responses: &mut Streaming<DiscoveryResponse>,
    names: &[&str],
    cluster: &str,
) -> (DiscoveryResponse, ClusterLoadAssignment) {
    for _ in 0..20 {
        let response = next(responses).await;
        requests
            .send(request(names, &response.version_info, &response.nonce))
            .await
            .unwrap();
        if let Some(found) = assignments(&response)
            .into_iter()
            .find(|assignment| assignment.cluster_name == cluster)
        {
            return (response, found);
        }
    }
    panic!("no response held {cluster}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envoy_stream_gets_assignments_by_push_with_acks_and_nacks() {
    let node_ = support::registry::open_registry(registry::Settings::default()).await;
    let addr = node_.grpc_addr();
    let in_a = publisher(addr, "pub-a", "zone-a");
    let in_b = publisher(addr, "pub-b", "zone-b");
    in_a.register("r1", key("pay.api"), record("10.0.0.1:8080", "5"))
        .await
        .unwrap();
    in_b.register("r1", key("pay.api"), record("grpc://10.0.0.2:8080", "100"))
        .await
        .unwrap();
    // Not an IP socket address: left out (and counted).
    in_b.register("r2", key("pay.api"), record("pay.internal:8080", "1"))
        .await
        .unwrap();
    // A key published under and emptied since. (One nothing was ever published under is sent
    // empty only after the registry's first minute: its publishers may not be back yet.)
    in_a.register("e1", key("nothing.yet"), record("10.0.0.8:8", "1"))
        .await
        .unwrap();
    in_a.unregister("e1").await.unwrap();

    // The node is in zone-b: its zone is priority 0, zone-a priority 1. An emptied cluster
    // comes empty; a name that is no data key is reported, not fatal.
    let names = [PAY, EMPTY, "no-bars-here"];
    let mut first = request(&names, "", "");
    first.node = Some(node("zone-b"));
    let (requests, mut responses) = ads(addr, None, first).await.unwrap();
    let mut seen = std::collections::BTreeMap::new();
    let mut errors = Vec::new();
    for _ in 0..10 {
        let response = next(&mut responses).await;
        for assignment in assignments(&response) {
            seen.insert(assignment.cluster_name.clone(), shape(&assignment));
        }
        errors.extend(response.resource_errors.iter().map(|error| {
            let name = error.resource_name.as_ref().unwrap().name.clone();
            (name, error.error_detail.as_ref().unwrap().message.clone())
        }));
        requests
            .send(request(&names, &response.version_info, &response.nonce))
            .await
            .unwrap();
        if seen.len() == 2 && !errors.is_empty() {
            break;
        }
    }
    assert_eq!(
        seen[PAY],
        [
            zone("zone-a", 1, &["10.0.0.1:8080 5"]),
            zone("zone-b", 0, &["10.0.0.2:8080 100"]),
        ]
    );
    assert_eq!(seen[EMPTY], []);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].0, "no-bars-here");
    assert!(errors[0].1.starts_with("resource_names[2]"), "{errors:?}");
    assert_eq!(
        node_
            .registry()
            .stats
            .xds_unroutable
            .load(Ordering::Relaxed),
        1
    );

    // A change is pushed, under a new nonce and version.
    in_a.register("r2", key("pay.api"), record("10.0.0.3:8080", "5"))
        .await
        .unwrap();
    let response = next(&mut responses).await;
    let changed = assignments(&response);
    assert_eq!(changed.len(), 1, "only what changed is sent");
    assert_eq!(
        shape(&changed[0]),
        [
            zone("zone-a", 1, &["10.0.0.1:8080 5", "10.0.0.3:8080 5"]),
            zone("zone-b", 0, &["10.0.0.2:8080 100"]),
        ]
    );
    // NACK it: counted, and the next change is sent all the same.
    let mut nack = request(&names, "", &response.nonce);
    nack.error_detail = Some(envoy_types::pb::google::rpc::Status {
        code: tonic::Code::InvalidArgument as i32,
        message: "this sidecar dislikes weight 5".into(),
        details: vec![],
    });
    requests.send(nack).await.unwrap();
    let registry = Arc::clone(node_.registry());
    let deadline = tokio::time::Instant::now() + WAIT;
    while registry.stats.xds_nacks.load(Ordering::Relaxed) != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the NACK was not counted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A stale request (an old nonce) is ignored: dropping every cluster in it changes nothing.
    requests.send(request(&[], "", "1")).await.unwrap();
    in_b.unregister("r1").await.unwrap();
    let (response, assignment) = until_cluster(&requests, &mut responses, &names, PAY).await;
    assert_eq!(
        shape(&assignment),
        [zone("zone-a", 0, &["10.0.0.1:8080 5", "10.0.0.3:8080 5"])],
        "no endpoint left in the node's zone: every zone at priority 0"
    );
    assert_ne!(response.nonce, "1");

    // A cluster no longer requested is no longer pushed: once the request is taken (within a
    // few rounds of changes to both keys), a round brings the other key only.
    let fewer = [EMPTY];
    requests
        .send(request(&fewer, &response.version_info, &response.nonce))
        .await
        .unwrap();
    let mut rounds = 0;
    loop {
        rounds += 1;
        assert!(
            rounds <= 10,
            "the dropped cluster was still pushed after 10 rounds"
        );
        let pay = format!("10.0.1.{rounds}:80");
        let other = format!("10.0.2.{rounds}:80");
        in_a.register("r1", key("pay.api"), record(&pay, "1"))
            .await
            .unwrap();
        in_a.register("r9", key("nothing.yet"), record(&other, "1"))
            .await
            .unwrap();
        let mut pay_seen = false;
        let wanted = format!("{other} 1");
        loop {
            let response = next(&mut responses).await;
            requests
                .send(request(&fewer, &response.version_info, &response.nonce))
                .await
                .unwrap();
            let mut done = false;
            for assignment in assignments(&response) {
                if assignment.cluster_name == PAY {
                    pay_seen = true;
                } else if shape(&assignment) == [zone("zone-a", 0, &[wanted.as_str()])] {
                    done = true;
                }
            }
            if done {
                break;
            }
        }
        if !pay_seen {
            break;
        }
    }

    // The stream is a registry session while it lasts, and only then.
    assert_eq!(registry.sessions(), 3);
    drop(requests);
    drop(responses);
    let deadline = tokio::time::Instant::now() + WAIT;
    while registry.sessions() != 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the xDS session outlived its stream"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(in_a);
    drop(in_b);
    node_.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xds_streams_are_refused_without_a_key_for_other_types_and_without_a_node() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.json");
    let mut file = KeysFile::load_or_new(&path).unwrap();
    let (_, read) = file.create(Role::Read, Some("sidecars")).unwrap();
    file.save().unwrap();
    let auth = Auth::Keys(Arc::new(KeyStore::open(&path).unwrap()));
    let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let node_ = RegistryNode::start(listen, listen, auth, registry::Settings::default(), None)
        .await
        .unwrap();
    let addr = node_.grpc_addr();
    let mut first = request(&[PAY], "", "");
    first.node = Some(node("zone-a"));

    for api_key in [None, Some("fincore_not-a-key")] {
        let status = ads(addr, api_key, first.clone())
            .await
            .expect_err("refused");
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status}");
    }

    // A read key is enough: the stream is served (here, a name that is no data key is reported).
    let mut served = request(&[PAY, "no-bars"], "", "");
    served.node = Some(node("zone-a"));
    let (_requests, mut responses) = ads(addr, Some(&read), served).await.unwrap();
    let response = next(&mut responses).await;
    assert_eq!(response.resource_errors.len(), 1, "{response:?}");

    // Only ClusterLoadAssignment is served: another type ends the stream, naming it.
    let mut clusters = first.clone();
    clusters.type_url = "type.googleapis.com/envoy.config.cluster.v3.Cluster".into();
    let (_requests, mut responses) = ads(addr, Some(&read), clusters).await.unwrap();
    let status = tokio::time::timeout(WAIT, responses.message())
        .await
        .unwrap()
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::Unimplemented, "{status}");
    assert!(status.message().starts_with("type_url"), "{status}");

    // The first request must name its node, with a valid id.
    let mut nameless = first.clone();
    nameless.node = None;
    let status = ads(addr, Some(&read), nameless).await.expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
    assert!(status.message().starts_with("node"), "{status}");
    let mut bad_id = first.clone();
    bad_id.node.as_mut().unwrap().id = "envoy 1".into();
    let status = ads(addr, Some(&read), bad_id).await.expect_err("refused");
    assert!(status.message().starts_with("node.id"), "{status}");

    // Incremental xDS is refused plainly.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut request = tonic::Request::new(futures::stream::empty());
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {read}").parse().unwrap());
    let status = AggregatedDiscoveryServiceClient::new(channel)
        .delta_aggregated_resources(request)
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::Unimplemented, "{status}");
    node_.stop().await;
}
