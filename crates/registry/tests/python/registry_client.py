"""A registry client in Python, from the published proto alone (grpcio): proves the protocol
language-neutral. Run by scripts/registry-python against a live `fincore registry serve`.

One stream publishes two records, another subscribes (plain encoding: no zstd needed here) and
must receive the set with both, then, once the publishing stream ends, the empty set. Exits
non-zero naming what it did not see."""

import queue
import sys
import threading

import grpc

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
    print("python registry client: ok")


if __name__ == "__main__":
    main()
