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
from reporting.wire.consumer import Consumer, Message
from reporting.wire.producer import ReportClient, sample_report
from tests.integration.conftest import wait_for

pytestmark = pytest.mark.integration


class StatsWatch:
    """Samples a queue's statistics in a thread of its own; keeps the highest consumer count."""

    def __init__(self, activemq: ActiveMQ, queue: str) -> None:
        self.activemq = activemq
        self.queue = queue
        self.most_consumers = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stats-watch", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            count = self.activemq.queue_stats(self.queue).get("consumerCount", 0)
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
        wait_for(lambda: consumer.connected, 30, "the consumer to subscribe")
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
            wait_for(
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
            wait_for(lambda: set(ids) >= dark, 60, "every report to be handed over")
            wait_for(lambda: activemq.queue_depth(queue) == 0, 30, "every report to be acked")
            consumer.stop()
            wait_for(
                lambda: activemq.queue_stats(queue).get("consumerCount", 0) == 0,
                30,
                "the consumer to be gone from the broker",
            )
        assert watch.samples > 10
        assert watch.most_consumers == 1
    finally:
        consumer.stop()
