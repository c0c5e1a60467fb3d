"""A registry client in Python, from the published proto alone (grpcio): proves the protocol
language-neutral. Run by scripts/registry-python against a live `fincore registry serve`.

One stream publishes two records, another subscribes (plain encoding: no zstd needed here) and
must receive the set with both, then, once the publishing stream ends, the empty set. Then the
xDS endpoint, through Envoy's own protos (the xds-protos package): an aggregated discovery
stream receives a ClusterLoadAssignment of what a stream publishes, ACKs it, and receives the
next change. Exits non-zero naming what it did not see."""

import queue
import sys
import threading

import grpc
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

import registry_pb2 as pb
import registry_pb2_grpc as rpc

ADDRESS = sys.argv[1]
DEADLINE_S = 20
KEY = pb.DataKey(instance_id="py", group="default", data_id="py.service")


class Stream:
    """One Session stream: messages queued in, messages read out on a thread."""

    def __init__(self, stub, client_id):
        self.outgoing = queue.Queue()
        self.incoming = queue.Queue()
        self.outgoing.put(pb.ClientMessage(request_id=0, hello=pb.Hello(
            client_id=client_id, zone="zone-py", accept=[pb.ENCODING_PLAIN])))
        self.call = stub.Session(iter(self.outgoing.get, None))
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        try:
            for message in self.call:
                self.incoming.put(message)
        except grpc.RpcError:
            pass

    def send(self, **body):
        self.outgoing.put(pb.ClientMessage(**body))

    def next(self):
        return self.incoming.get(timeout=DEADLINE_S)

    def end(self):
        self.outgoing.put(None)
        self.call.cancel()


def answer(stream, request_id):
    while True:
        message = stream.next()
        if message.WhichOneof("body") == "answer" and message.answer.request_id == request_id:
            if not message.answer.ok:
                sys.exit(f"request {request_id} refused: {message.answer.field}: {message.answer.error}")
            return


def wait_for_set(stream, wanted):
    while True:
        message = stream.next()
        if message.WhichOneof("body") != "push":
            continue
        push = message.push
        if push.encoding != pb.ENCODING_PLAIN:
            sys.exit(f"a push in encoding {push.encoding}, though only PLAIN was accepted")
        records = pb.Records.FromString(push.payload).records
        stream.send(request_id=0, ack=pb.PushAck(subscription_id=push.subscription_id, version=push.version))
        addresses = sorted(r.record.address for r in records)
        print(f"push version {push.version}: {addresses}")
        if addresses == sorted(wanted):
            return push.version


def main():
    channel = grpc.insecure_channel(ADDRESS)
    stub = rpc.RegistryStub(channel)
    subscriber = Stream(stub, "py-subscriber")
    answer(subscriber, 0)
    subscriber.send(request_id=1, subscribe=pb.Subscribe(subscription_id="s", key=KEY, scope=pb.SCOPE_GLOBAL))
    answer(subscriber, 1)

    publisher = Stream(stub, "py-publisher")
    answer(publisher, 0)
    for n, address in enumerate(["10.9.0.1:80", "10.9.0.2:80"], start=1):
        record = pb.Record(address=address, attributes=[pb.Attribute(key="lang", value="python")])
        publisher.send(request_id=n, register=pb.Register(registration_id=f"r{n}", key=KEY, record=record))
        answer(publisher, n)
    # A refusal names the field.
    publisher.send(request_id=9, register=pb.Register(registration_id="bad id", key=KEY, record=record))
    while True:
        message = publisher.next()
        if message.WhichOneof("body") == "answer" and message.answer.request_id == 9:
            assert not message.answer.ok and message.answer.field == "register.registration_id", message
            break

    first = wait_for_set(subscriber, ["10.9.0.1:80", "10.9.0.2:80"])
    publisher.end()
    last = wait_for_set(subscriber, [])
    assert last > first, (first, last)
    subscriber.end()
    xds(channel, stub)
    print("python registry client: ok")


CLA = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"


def endpoints(response):
    """(zone, priority, sorted ip:port) per locality of the response's one assignment."""
    assert response.type_url == CLA, response.type_url
    assert len(response.resources) == 1, response
    assignment = endpoint_pb2.ClusterLoadAssignment()
    assert response.resources[0].Unpack(assignment)
    assert assignment.cluster_name == "py|default|py.service", assignment.cluster_name
    return [(locality.locality.zone, locality.priority,
             sorted(f"{lb.endpoint.address.socket_address.address}:"
                    f"{lb.endpoint.address.socket_address.port_value}"
                    for lb in locality.lb_endpoints))
            for locality in assignment.endpoints]


def xds(channel, stub):
    publisher = Stream(stub, "py-xds-publisher")
    answer(publisher, 0)
    record = pb.Record(address="10.9.1.1:7000")
    publisher.send(request_id=1, register=pb.Register(registration_id="x1", key=KEY, record=record))
    answer(publisher, 1)

    requests = queue.Queue()
    node = base_pb2.Node(id="py-envoy", locality=base_pb2.Locality(zone="zone-py"))
    requests.put(discovery_pb2.DiscoveryRequest(
        node=node, type_url=CLA, resource_names=["py|default|py.service"]))
    responses = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(
        iter(requests.get, None), timeout=DEADLINE_S)
    first = next(responses)
    seen = endpoints(first)
    print(f"xDS version {first.version_info}: {seen}")
    assert seen == [("zone-py", 0, ["10.9.1.1:7000"])], seen
    requests.put(discovery_pb2.DiscoveryRequest(
        type_url=CLA, resource_names=["py|default|py.service"],
        version_info=first.version_info, response_nonce=first.nonce))

    record = pb.Record(address="10.9.1.2:7000")
    publisher.send(request_id=2, register=pb.Register(registration_id="x2", key=KEY, record=record))
    answer(publisher, 2)
    second = next(responses)
    seen = endpoints(second)
    print(f"xDS version {second.version_info}: {seen}")
    assert seen == [("zone-py", 0, ["10.9.1.1:7000", "10.9.1.2:7000"])], seen
    assert second.nonce != first.nonce, (first.nonce, second.nonce)
    requests.put(None)
    responses.cancel()
    publisher.end()


if __name__ == "__main__":
    main()
