"""The consumer against a STOMP server in the test process: one connection at a time, whatever
the order of start() and stop(), and nothing handed over or acked once stop() has returned.

The server is real sockets and real frames; what it lets a test do that ActiveMQ does not is
answer a login slowly, so that stop() and start() land while a connection is half open.
"""

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from reporting.config import BrokerConfig, HostPort
from reporting.errors import BrokerUnreachable
from reporting.harness.waiting import wait_until
from reporting.wire.connection import Connection, failover
from reporting.wire.consumer import Consumer, Message
from tests.unit.test_client import FakeServer, frame_bytes, read_frame

QUEUE = "gvp.reporting.cdr"


@dataclass
class QueueServer(FakeServer):
    """Answers CONNECT (the n-th after `login_delays_s[n]`, if given), confirms SUBSCRIBE, then
    sends `messages` MESSAGE frames on each subscribed connection; records ACKs and who is
    subscribed."""

    messages: int = 50
    login_delays_s: list[float] = field(default_factory=list)
    acks: list[str] = field(default_factory=list)
    connections: int = 0
    closed: int = 0
    logins: int = 0
    most_subscribed: int = 0  # the most connections subscribed at one moment

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribed: set[int] = set()
        self._listen()

    @property
    def host(self) -> HostPort:
        return HostPort("127.0.0.1", self.port)

    @property
    def subscribed(self) -> int:
        with self._lock:
            return len(self._subscribed)

    def _serve(self, client: socket.socket) -> None:
        buf = bytearray()
        key = id(client)
        try:
            with client:
                while (frame := read_frame(client, buf)) is not None:
                    client.sendall(self._answer(key, frame))
        except OSError:
            pass
        finally:
            with self._lock:
                self._subscribed.discard(key)
                self.closed += 1

    def _answer(self, key: int, frame) -> bytes:
        if frame.command in ("CONNECT", "STOMP"):
            with self._lock:
                delay_s = (
                    self.login_delays_s[self.logins]
                    if self.logins < len(self.login_delays_s)
                    else 0
                )
                self.logins += 1
            # A slow broker: the login is answered late (this is the fault, not a wait for it).
            time.sleep(delay_s)
            return frame_bytes("CONNECTED", {"version": "1.2", "heart-beat": "0,0"})
        if frame.command == "ACK":
            with self._lock:
                self.acks.append(frame.headers["id"])
            return b""
        if frame.command != "SUBSCRIBE":
            return b""
        with self._lock:
            self._subscribed.add(key)
            self.most_subscribed = max(self.most_subscribed, len(self._subscribed))
        reply = frame_bytes("RECEIPT", {"receipt-id": frame.headers["receipt"]})
        for i in range(self.messages):
            headers = {
                "destination": frame.headers["destination"],
                "subscription": frame.headers["id"],
                "message-id": f"m-{key}-{i}",
                "ack": f"a-{key}-{i}",
                "report-id": f"r-{i}",
            }
            reply += frame_bytes("MESSAGE", headers)
        return reply


@pytest.fixture
def server() -> Iterator[Callable[..., QueueServer]]:
    started: list[QueueServer] = []

    def start(**kwargs) -> QueueServer:
        started.append(QueueServer(**kwargs))
        return started[-1]

    yield start
    for each in started:
        each.stop()


def config_for(*hosts: HostPort) -> BrokerConfig:
    return BrokerConfig(hosts=hosts, queues=(QUEUE,), heartbeat_ms=0, batch_wait_s=0.01)


def test_stop_does_not_return_while_a_batch_is_being_handed_over(server) -> None:
    broker = server()
    entered, release = threading.Event(), threading.Event()
    stop_returned = threading.Event()
    late: list[Message] = []

    def slow_handler(batch) -> bool:
        if stop_returned.is_set():
            late.extend(batch)
        entered.set()
        release.wait(10)
        return True

    consumer = Consumer(config_for(broker.host), slow_handler, name="rs-race")
    consumer.start()
    assert entered.wait(10), "no batch handed over"
    stopper = threading.Thread(target=lambda: (consumer.stop(timeout_s=0.1), stop_returned.set()))
    stopper.start()
    # The handler is journalling the batch: stop() waits for it however short its own timeout.
    assert not stop_returned.wait(1.0), "stop() returned while a batch was being handed over"
    release.set()
    stopper.join(10)
    assert stop_returned.is_set()
    wait_until(lambda: broker.subscribed == 0, 5, "the connection to close")
    # The batch was durable but stop() came first: it is not acked (the broker redelivers it),
    # and nothing more reached the handler after stop() returned.
    assert broker.acks == []
    assert late == []


def test_stop_and_start_while_logging_in_never_make_two_consumers(server) -> None:
    # The first login is answered late, the second at once: a first connection that lived on
    # past stop() would subscribe beside the second.
    broker = server(login_delays_s=[1.0], messages=5)
    consumer = Consumer(config_for(broker.host), lambda batch: True, name="rs-2")
    consumer.start()
    # Its CONNECT read and its answer held back (a TCP connection alone may yet be closed before
    # it sends CONNECT, and then there is no second login to wait for below).
    wait_until(lambda: broker.logins == 1, 5, "the first login to be under way")
    # stop()'s own timeout is too short for the thread to be gone: start() must see to it.
    consumer.stop(timeout_s=0.01)
    consumer.start()
    wait_until(lambda: consumer.connected, 10, "the consumer to subscribe")
    # Both logins answered and the first connection ended, however it ended.
    wait_until(lambda: broker.logins == 2 and broker.closed == 1, 10, "the first login's end")
    consumer.stop()
    wait_until(lambda: broker.subscribed == 0, 5, "the server to see the connection closed")
    assert broker.most_subscribed == 1


def test_start_while_running_does_nothing(server) -> None:
    broker = server(messages=0)
    consumer = Consumer(config_for(broker.host), lambda batch: True, name="rs-once")
    consumer.start()
    wait_until(lambda: consumer.connected, 10, "the consumer to subscribe")
    consumer.start()
    consumer.start()
    consumer.stop()
    assert broker.logins == 1
    assert broker.most_subscribed == 1


def test_messages_of_a_replaced_connection_are_never_handed_over_or_acked(server) -> None:
    # The first connection's messages sit in the inbox when its connection is replaced; the
    # handler refuses the first batch (as on a journal error), which makes the consumer reconnect.
    broker = server(messages=20)
    batches: list[list[Message]] = []
    refused = threading.Event()

    def handler(batch) -> bool:
        batches.append(list(batch))
        if not refused.is_set():
            refused.set()
            return False
        return True

    config = BrokerConfig(
        hosts=(broker.host,), queues=(QUEUE,), heartbeat_ms=0, batch_records=5, batch_wait_s=0.01
    )
    consumer = Consumer(config, handler, name="rs-gen")
    consumer.start()
    wait_until(lambda: len(batches) >= 5, 10, "batches of the second connection")
    consumer.stop()
    first = batches[0][0].generation
    first_acks = batches[0][0].headers["ack"].rsplit("-", 1)[0] + "-"
    assert all(m.generation != first for batch in batches[1:] for m in batch)
    assert broker.acks
    assert not [ack for ack in broker.acks if ack.startswith(first_acks)]
    assert broker.logins == 2


def test_close_cuts_a_login_short(server) -> None:
    broker = server(login_delays_s=[5.0])
    conn = Connection(broker.host, timeout_s=10.0)
    failed: list[BaseException] = []

    def open_it() -> None:
        try:
            conn.open()
        except BrokerUnreachable as exc:
            failed.append(exc)

    opener = threading.Thread(target=open_it)
    started = time.monotonic()
    opener.start()
    wait_until(lambda: broker.connections == 1, 5, "the TCP connection")
    conn.close()
    opener.join(5)
    assert not opener.is_alive() and failed
    assert time.monotonic() - started < 4.0


def test_failover_tries_the_hosts_in_order_and_stops_when_told(server) -> None:
    tried: list[int] = []
    assert (
        failover([HostPort("h", 1), HostPort("h", 2)], lambda i: tried.append(i) or i == 1 or None)
        is True
    )
    assert tried == [0, 1]
    stop = threading.Event()
    stop.set()
    assert failover([HostPort("h", 1)], lambda i: None, stop=stop) is None
    with pytest.raises(BrokerUnreachable, match="no broker answered"):
        failover([HostPort("h", 1)], lambda i: None, give_up_s=0.2)
