"""One consumer per connection against the real ActiveMQ, through a proxy that can go dark.

The broker's own statistics are the witness: its consumer count of the queue, and what it has
dispatched but not had acknowledged (in flight).
"""

import random
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from reporting.config import BrokerConfig, HostPort
from reporting.harness import ActiveMQ
from reporting.harness.flow import Flow, assert_exactly_once
from reporting.harness.pair import active_of, roles
from reporting.harness.waiting import wait_until
from reporting.samples import sample_report
from reporting.wire.consumer import Consumer, Message
from reporting.wire.producer import ReportClient

pytestmark = pytest.mark.integration


class StatsWatch:
    """Samples queues' statistics in a thread of its own; keeps the highest consumer count."""

    def __init__(self, activemq: ActiveMQ, *queues: str) -> None:
        self.activemq = activemq
        self.queues = queues
        self.most_consumers = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stats-watch", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for queue in self.queues:
                count = self.activemq.queue_stats(queue).get("consumerCount", 0)
                self.most_consumers = max(self.most_consumers, count)
            self.samples += 1
            self._stop.wait(0.05)

    def __enter__(self) -> "StatsWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)


@pytest.fixture
def journalled() -> Iterator[tuple[list[str], Callable[[list[Message]], bool]]]:
    """A batch handler that keeps the report-ids it was handed, as the journal would."""
    ids: list[str] = []
    lock = threading.Lock()

    def handler(batch: list[Message]) -> bool:
        with lock:
            ids.extend(m.headers["report-id"] for m in batch)
        return True

    yield ids, handler


def send(activemq: ActiveMQ, queue: str, count: int, tag: str) -> set[str]:
    rng = random.Random(tag)
    with ReportClient([activemq.host], queues=[queue], in_flight=50) as client:
        return {
            client.send("cdr", sample_report("cdr", rng), report_id=f"{tag}-{i}")
            for i in range(count)
        }


def test_a_dark_broker_path_with_stop_and_start_never_shows_two_consumers(
    activemq: ActiveMQ, tcp_proxy, queue_prefix: str, journalled
) -> None:
    ids, handler = journalled
    queue = f"{queue_prefix}gvp.reporting.cdr"
    broker = HostPort.parse(activemq.host)
    proxy = tcp_proxy(broker.host, broker.port)
    config = BrokerConfig(
        hosts=(HostPort.parse(proxy.host),), queues=(queue,), heartbeat_ms=500, prefetch=1000
    )
    consumer = Consumer(config, handler, name="rs-one")
    consumer.start()
    try:
        wait_until(lambda: consumer.connected, 30, "the consumer to subscribe")
        with StatsWatch(activemq, queue) as watch:
            proxy.blackhole()
            # Sent straight to the broker: it dispatches them to the connection on the dark path,
            # where they stay in flight, unacknowledged.
            dark = send(activemq, queue, 100, "dark")
            for _ in range(6):
                consumer.stop()
                consumer.start()
                # The fault's rhythm, not a wait for something: the consumer is mid-reconnect
                # at a different point on each round.
                time.sleep(0.7)
            consumer.stop()
            # Nothing stays in flight to a consumer that stopped, though its path is still dark:
            # the broker takes back what it had dispatched.
            wait_until(
                lambda: (
                    activemq.queue_stats(queue).get("inflightCount", 0) == 0
                    and activemq.queue_stats(queue).get("consumerCount", 0) == 0
                ),
                30,
                "the broker to take back the dark connection's messages",
            )
            assert activemq.queue_depth(queue) == len(dark)
            proxy.heal()
            consumer.start()
            wait_until(lambda: set(ids) >= dark, 60, "every report to be handed over")
            wait_until(lambda: activemq.queue_depth(queue) == 0, 30, "every report to be acked")
            consumer.stop()
            wait_until(
                lambda: activemq.queue_stats(queue).get("consumerCount", 0) == 0,
                30,
                "the consumer to be gone from the broker",
            )
        assert watch.samples > 10
        assert watch.most_consumers == 1
    finally:
        consumer.stop()


def role(instance) -> str:
    return roles([instance])[instance.name]


def in_flight(activemq: ActiveMQ, queues: list[str]) -> int:
    return sum(activemq.queue_stats(queue).get("inflightCount", 0) for queue in queues)


def consumers(activemq: ActiveMQ, queues: list[str]) -> int:
    return sum(activemq.queue_stats(queue).get("consumerCount", 0) for queue in queues)


def test_zookeeper_cuts_shorter_than_the_session_on_a_dark_broker_path_keep_one_consumer(
    shared_pair, activemq: ActiveMQ, zookeeper, tcp_proxy, pg_url, queues, queue_prefix, tmp_path
) -> None:
    """rs-a, active, loses ZooKeeper for less than its session (it stands by, then takes the role
    up again) while its broker path is dark too, round after round. rs-b never becomes active, so
    every consumer the broker counts is rs-a's: never two on a queue, and none left on the dark
    path holding messages in flight."""
    zk_proxy = tcp_proxy("127.0.0.1", zookeeper.port)
    broker = HostPort.parse(activemq.host)
    broker_proxy = tcp_proxy(broker.host, broker.port)
    # Kazoo gives a silent connection up after 2/3 of the session: rs-a stands by a third of the
    # session (2 s) before its lock could expire.
    session = {"session_timeout": 6.0}
    rs_a = {
        "ha": {**session, "zookeeper": zk_proxy.host},
        "broker": {"hosts": [broker_proxy.host]},
    }
    a, b = shared_pair(**{"rs-a": rs_a, "rs-b": {"ha": session}})
    a.start()
    wait_until(lambda: role(a) == "active", 30, "rs-a to be active")
    b.start()
    wait_until(lambda: role(b) == "standby", 30, "rs-b to be standby")
    wait_until(lambda: a.status()["broker"] == "connected", 30, "rs-a to consume")
    flow = Flow(
        [activemq.host], tmp_path / "ledger", queue_prefix=queue_prefix, count=4000, rate=100
    )
    with StatsWatch(activemq, *queues) as watch:
        flow.start()
        for _ in range(3):
            broker_proxy.blackhole()
            zk_proxy.blackhole()
            wait_until(lambda: role(a) == "standby", 10, "rs-a to stand by")
            zk_proxy.heal()
            wait_until(lambda: role(a) == "active", 20, "rs-a active again")
            # Its broker path still dark: what the broker had dispatched over it comes back to
            # the queue once the broker's heartbeat check ends that connection, and rs-a is
            # not left with a consumer there. Nothing stays in flight to a stopped consumer.
            wait_until(
                lambda: in_flight(activemq, queues) == 0 and consumers(activemq, queues) == 0,
                30,
                "the dark connection's messages back in the queue",
            )
            broker_proxy.heal()
            wait_until(lambda: a.status()["broker"] == "connected", 30, "rs-a to consume again")
            assert active_of([a, b]) is a
        assert_exactly_once(pg_url, flow.join())
    assert watch.samples > 10
    assert watch.most_consumers == 1
    wait_until(lambda: in_flight(activemq, queues) == 0, 10, "every report acknowledged")
