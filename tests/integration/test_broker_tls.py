"""STOMP over TLS: with the broker's CA the server consumes and stores every report once; with
another CA it does not connect, and says so in one line."""

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from reporting.config import BrokerConfig, HostPort
from reporting.errors import BrokerError, BrokerUntrusted
from reporting.harness import ActiveMQ
from reporting.harness.commands import run_command
from reporting.harness.flow import assert_exactly_once
from reporting.harness.instance import to_toml
from reporting.harness.ports import free_port
from reporting.harness.tls import TlsBundle
from reporting.harness.waiting import wait_until
from reporting.wire.consumer import Consumer

pytestmark = pytest.mark.integration


@pytest.fixture
def tls_broker(tmp_path: Path, ca: TlsBundle) -> Iterator[ActiveMQ]:
    with ActiveMQ(tmp_path / "tls-activemq", tls=ca) as broker:
        yield broker


def tls_keys(broker: ActiveMQ, bundle: TlsBundle) -> dict:
    return {"hosts": [broker.tls_host], "tls": True, "ca_file": str(bundle.ca_file)}


def test_right_ca_round_trips_exactly_once(
    standalone, tls_broker: ActiveMQ, ca: TlsBundle, pg_url: str, flow_to
) -> None:
    server = standalone(broker=tls_keys(tls_broker, ca))
    server.start()
    wait_until(lambda: server.status()["broker"] == "connected", 30, "the server to subscribe")
    flow = flow_to([tls_broker.tls_host], count=200, rate=0, ca_file=ca.ca_file).start()
    ids = flow.join(120)
    assert len(ids) == 200
    assert_exactly_once(pg_url, ids)
    assert "not trusted" not in server.log_path.read_text()


def test_wrong_ca_stops_run_with_one_line(
    tls_broker: ActiveMQ, other_ca: TlsBundle, pg_url: str, queues: list[str], tmp_path: Path
) -> None:
    config = {
        "name": "rs-tls",
        "broker": {**tls_keys(tls_broker, other_ca), "queues": queues},
        "database": {"url": pg_url},
        "journal": {"dir": str(tmp_path / "rs-tls" / "journal")},
        "http": {"listen": f"127.0.0.1:{free_port()}"},
    }
    path = tmp_path / "wrong-ca.toml"
    path.write_text(to_toml(config))
    done = run_command("run", "--config", str(path))
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    mentions = [line for line in lines if "certif" in line.lower()]
    assert mentions == [lines[-1]], done.stderr
    assert mentions[0] == (
        f"reporting-server: broker {tls_broker.tls_host}: certificate not trusted by"
        f" {other_ca.ca_file}: self-signed certificate in certificate chain"
    )
    assert "Traceback" not in done.stderr


def test_wrong_ca_consumer_gives_up_with_one_log_line(
    tls_broker: ActiveMQ, other_ca: TlsBundle, queues: list[str], caplog
) -> None:
    config = BrokerConfig(
        hosts=(HostPort.parse(tls_broker.tls_host),),
        queues=tuple(queues),
        tls=True,
        ca_file=other_ca.ca_file,
    )
    gave_up = threading.Event()
    errors: list[BrokerError] = []

    def on_refused(error: BrokerError) -> None:
        errors.append(error)
        gave_up.set()

    consumer = Consumer(config, lambda batch: True, name="rs-tls", on_refused=on_refused)
    with caplog.at_level(logging.INFO):
        consumer.start()
        try:
            assert gave_up.wait(30), "the consumer did not give up on the untrusted broker"
        finally:
            consumer.stop()
    assert not consumer.connected
    assert len(errors) == 1 and isinstance(errors[0], BrokerUntrusted)
    mentions = [r for r in caplog.records if "certif" in r.getMessage().lower()]
    assert len(mentions) == 1, [r.getMessage() for r in mentions]
    assert mentions[0].levelno == logging.ERROR
    assert mentions[0].getMessage() == (
        f"rs-tls: broker {tls_broker.tls_host}: certificate not trusted by {other_ca.ca_file}:"
        " self-signed certificate in certificate chain; not retrying:"
        " fix [broker] ca_file or the broker's certificate"
    )


def test_plain_client_cannot_use_the_tls_port(tls_broker: ActiveMQ) -> None:
    from reporting.harness.probes import stomp_ready

    assert not stomp_ready(HostPort.parse(tls_broker.tls_host).port)
