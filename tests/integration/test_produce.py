"""The reporting client against the harness's real ActiveMQ: receipts, ledger, failover, resends.

Each test tags its report-ids with a fresh prefix and reads back only those, with a plain
stomp.py consumer, so leftovers of other tests on the shared queues do not matter.
"""

import json
import random
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
import stomp

from reporting.config import HostPort
from reporting.ledger import read_ledger
from reporting.samples import sample_report
from reporting.wire.producer import ClientStats, ReportClient, destination_for
from storage.reports import KINDS

pytestmark = pytest.mark.integration
READ_TIMEOUT_S = 60.0


class _Reader(stomp.ConnectionListener):
    def __init__(self, conn: stomp.Connection12, prefix: str, expected: set[str]) -> None:
        self.conn = conn
        self.prefix = prefix
        self.expected = expected
        self.ids: list[str] = []
        self.cond = threading.Condition()

    def on_message(self, frame) -> None:
        report_id = frame.headers.get("report-id", "")
        if report_id.startswith(self.prefix):
            # Only this test's messages are taken; the others stay on the queue.
            self.conn.ack(frame.headers["ack"])
            with self.cond:
                self.ids.append(report_id)
                self.cond.notify_all()

    def wait_all(self) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.expected <= set(self.ids), READ_TIMEOUT_S)


def read_back(host: str, prefix: str, expected: set[str]) -> list[str]:
    """The report-ids (with repeats) of this test's messages on the four queues."""
    address = HostPort.parse(host)
    conn = stomp.Connection12([(address.host, address.port)], auto_decode=False)
    reader = _Reader(conn, prefix, expected)
    conn.set_listener("reader", reader)
    conn.connect(wait=True)
    try:
        for index, kind in enumerate(KINDS):
            conn.subscribe(destination_for(kind), id=str(index), ack="client-individual")
        assert reader.wait_all(), f"{len(expected - set(reader.ids))} reports not on the broker"
    finally:
        conn.disconnect()
    with reader.cond:
        return list(reader.ids)


def dead_host() -> str:
    """A loopback host:port that was just free: nothing answers there."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        return f"127.0.0.1:{sock.getsockname()[1]}"


def send_all(client: ReportClient, prefix: str, count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [
        client.send(kind, sample_report(kind, rng), report_id=f"{prefix}{i}")
        for i, kind in enumerate(KINDS * (count // len(KINDS)))
    ]


def test_every_receipted_report_is_on_the_broker_once(activemq, tmp_path):
    prefix = f"rt-{uuid.uuid4().hex[:8]}-"
    ledger = tmp_path / "ledger"
    with ReportClient([activemq.host], ledger=ledger, in_flight=50) as client:
        ids = send_all(client, prefix, 400, seed=1)
    contents = read_ledger(ledger)
    assert contents.ids == set(ids) and contents.lines == len(ids)
    read = read_back(activemq.host, prefix, contents.ids)
    assert sorted(read) == sorted(ids)


def test_failover_from_a_dead_host_and_a_reset_connection(activemq, tcp_proxy, tmp_path):
    prefix = f"fo-{uuid.uuid4().hex[:8]}-"
    ledger = tmp_path / "ledger"
    broker = HostPort.parse(activemq.host)
    proxy = tcp_proxy(broker.host, broker.port)
    hosts = [dead_host(), proxy.host, activemq.host]
    with ReportClient(hosts, ledger=ledger, in_flight=20, failback_s=3600) as client:
        first = send_all(client, prefix + "a", 40, seed=2)
        assert client.current_host == proxy.host
        proxy.reset()  # both ends get an RST: the connection is gone mid-stream
        second = send_all(client, prefix + "b", 40, seed=3)
        assert client.current_host == activemq.host
    assert client.stats.failovers >= 1
    ids = first + second
    contents = read_ledger(ledger)
    assert contents.ids == set(ids) and contents.lines == len(ids)
    # A report whose receipt was lost with the connection may be on the broker twice; the
    # server stores it once by its report-id.
    assert set(read_back(activemq.host, prefix, contents.ids)) == set(ids)


def test_receipts_that_stop_coming_fail_over_with_the_same_ids(activemq, tcp_proxy, tmp_path):
    prefix = f"bh-{uuid.uuid4().hex[:8]}-"
    ledger = tmp_path / "ledger"
    broker = HostPort.parse(activemq.host)
    proxy = tcp_proxy(broker.host, broker.port)
    client = ReportClient(
        [proxy.host, activemq.host], ledger=ledger, in_flight=10, receipt_timeout_s=1.0
    )
    with client:
        first = send_all(client, prefix + "a", 20, seed=4)
        proxy.blackhole()  # the broker seems alive (socket open) but nothing gets through
        second = send_all(client, prefix + "b", 20, seed=5)
        assert client.current_host == activemq.host
    contents = read_ledger(ledger)
    assert contents.ids == set(first + second) and contents.lines == 40
    assert set(read_back(activemq.host, prefix, contents.ids)) == contents.ids


def test_broker_killed_and_restarted_mid_stream(activemq, tmp_path):
    prefix = f"kill-{uuid.uuid4().hex[:8]}-"
    ledger = tmp_path / "ledger"
    count = 600
    halfway, killed = threading.Event(), threading.Event()
    sent: list[str] = []
    stats: list[ClientStats] = []
    errors: list[BaseException] = []

    def produce() -> None:
        rng = random.Random(6)
        try:
            with ReportClient(
                [activemq.host], ledger=ledger, in_flight=20, reconnect_timeout_s=180
            ) as client:
                for i in range(count):
                    kind = KINDS[i % len(KINDS)]
                    sent.append(
                        client.send(kind, sample_report(kind, rng), report_id=f"{prefix}{i}")
                    )
                    if i == count // 3:
                        # Up to in_flight reports are unconfirmed while the broker dies.
                        halfway.set()
                        killed.wait(120)
                stats.append(client.stats)
        except BaseException as exc:
            errors.append(exc)
            halfway.set()

    sender = threading.Thread(target=produce)
    sender.start()
    assert halfway.wait(120)
    activemq.kill()
    killed.set()
    activemq.restart()
    sender.join(240)
    assert not sender.is_alive() and not errors, errors
    assert stats[0].failovers >= 1
    contents = read_ledger(ledger)
    assert contents.ids == set(sent) and len(sent) == count and contents.lines == count
    assert set(read_back(activemq.host, prefix, contents.ids)) == contents.ids


def test_produce_command_against_the_broker(activemq, tmp_path):
    prefix = f"cmd-{uuid.uuid4().hex[:8]}-"
    ledger = tmp_path / "ledger"
    result = subprocess.run(
        [sys.executable, "-m", "reporting.cli", "produce", "--broker", activemq.host]
        + ["--count", "200", "--malformed", "5", "--ledger", str(ledger), "--seed", "9"]
        + ["--id-prefix", prefix],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("produced 200 reports"), result.stdout
    contents = read_ledger(ledger)
    assert contents.lines == 200 and len(contents.ids) == 200
    rejected = read_ledger(Path(f"{ledger}.rejected"))
    assert rejected.lines == 5
    # The bad ones are on the queues too, under their own ids, for the server to reject.
    expected = contents.ids | rejected.ids
    assert sorted(read_back(activemq.host, prefix, expected)) == sorted(expected)


def cli(*argv: str, timeout_s: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "reporting.cli", *argv],
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def test_produce_then_verify_through_a_running_server(standalone, tmp_path):
    instance = standalone("rs-produce")
    instance.start()
    config = str(instance.config_path)
    ledger = tmp_path / "ledger"
    produced = cli(
        "produce", "--config", config, "--count", "400", "--malformed", "6",
        "--ledger", str(ledger), "--seed", "3",
    )  # fmt: skip
    assert produced.returncode == 0, produced.stderr
    verified = cli("verify", "--config", config, "--ledger", str(ledger), "--wait", "60", "--json")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    doc = json.loads(verified.stdout)
    assert (doc["sent"], doc["stored"], doc["missing"], doc["duplicated"]) == (400, 400, 0, 0)
    assert doc["rejected_expected"] == doc["rejected_found"] == 6
    # An id the broker never confirmed is missing, and verify says so with exit code 1.
    with ledger.open("a") as fh:
        fh.write("never-sent\n")
    verified = cli("verify", "--config", config, "--ledger", str(ledger))
    assert verified.returncode == 1
    assert verified.stdout.startswith("sent 401, stored 400, missing 1, duplicated 0")
