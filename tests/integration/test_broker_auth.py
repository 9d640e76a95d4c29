"""An authenticated, authorized ActiveMQ: the server reads with its user, producers write with
theirs, and wrong credentials stop the server with one clear line."""

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from reporting.config import HostPort
from reporting.harness import ActiveMQ
from reporting.harness.commands import run_command
from reporting.harness.flow import assert_exactly_once
from reporting.harness.instance import Instance, to_toml
from reporting.harness.ports import free_port
from reporting.harness.probes import StompSession
from reporting.harness.waiting import wait_until
from reporting.wire.producer import ReportClient
from storage.reports import KINDS
from tests.integration.conftest import secure_activemq

pytestmark = pytest.mark.integration

# ActiveMQ undoes STOMP's escapes in CONNECT's headers too: each password holds what it would
# undo (a backslash before c, n, r and another backslash) and a colon.
SERVER_PW = "srv\\c-Pw:7c1e\\n\\\\"
PRODUCER_PW = "prd\\r-Pw\\c42aa:"


@pytest.fixture
def secure_broker(tmp_path: Path) -> Iterator[ActiveMQ]:
    workdir = tmp_path / "secure-activemq"
    with secure_activemq(workdir, server_pw=SERVER_PW, producer_pw=PRODUCER_PW) as broker:
        yield broker


def password_file(path: Path, password: str) -> str:
    path.write_text(password)
    path.chmod(0o600)
    return str(path)


def config_for(tmp_path: Path, broker: ActiveMQ, pg_url: str, queues: list[str], **broker_keys):
    return {
        "name": "rs-auth",
        "ha": {"mode": "standalone"},
        "broker": {"hosts": [broker.host], "queues": queues, **broker_keys},
        "database": {"url": pg_url},
        "journal": {"dir": str(tmp_path / "rs-auth" / "journal")},
    }


def run_to_exit(tmp_path: Path, config: dict) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "refused.toml"
    path.write_text(to_toml(config | {"http": {"listen": f"127.0.0.1:{free_port()}"}}))
    return run_command("run", "--config", str(path))


def test_right_credentials_round_trip(
    secure_broker, pg_url, queues, queue_prefix, tmp_path: Path, instances
) -> None:
    pw = password_file(tmp_path / "server.pw", SERVER_PW)
    config = config_for(tmp_path, secure_broker, pg_url, queues, user="reporting", password_file=pw)
    server = Instance(tmp_path / "rs-auth", config)
    instances.append(server)
    server.start()
    # The server's subscriptions create the queues: producers have no right to.
    wait_until(lambda: server.status()["broker"] == "connected", 30, "the server to subscribe")
    ledger = tmp_path / "ledger"
    with ReportClient(
        [secure_broker.host], ledger=ledger, user="producer", password=PRODUCER_PW
    ) as client:
        for i in range(40):
            kind = KINDS[i % len(KINDS)]
            client.send_raw(
                f"/queue/{queue_prefix}gvp.reporting.{kind}",
                _valid_body(kind),
                report_id=f"auth-{i}",
            )
        client.flush()
    ids = {line for line in ledger.read_text().splitlines() if line}
    assert len(ids) == 40
    assert_exactly_once(pg_url, ids)
    log = server.log_path.read_text()
    assert SERVER_PW not in log and PRODUCER_PW not in log


def _valid_body(kind: str) -> bytes:
    import json
    import random

    from reporting.samples import sample_report

    return json.dumps(sample_report(kind, random.Random(kind))).encode()


def test_wrong_password_stops_start_up_with_one_line(
    secure_broker, pg_url, queues, tmp_path: Path
) -> None:
    pw = password_file(tmp_path / "wrong.pw", "not-the-password")
    done = run_to_exit(
        tmp_path,
        config_for(tmp_path, secure_broker, pg_url, queues, user="reporting", password_file=pw),
    )
    assert done.returncode == 1
    refusals = [line for line in done.stderr.splitlines() if "refused" in line]
    assert refusals == [done.stderr.strip().splitlines()[-1]], done.stderr
    assert refusals[0] == (
        f"reporting-server: broker {secure_broker.host} refused user 'reporting':"
        " User name [reporting] or password is invalid."
    )
    assert "Traceback" not in done.stderr
    assert "not-the-password" not in done.stderr + done.stdout


def test_refused_consumer_logs_one_line_and_exits(
    secure_broker, pg_url, queues, tmp_path: Path
) -> None:
    # No user configured: nothing to check at start-up, so the refusal comes to the consumer.
    done = run_to_exit(tmp_path, config_for(tmp_path, secure_broker, pg_url, queues))
    assert done.returncode == 1, done.stderr
    refusals = [line for line in done.stderr.splitlines() if "refused user" in line]
    assert len(refusals) == 2, done.stderr  # the log line, then the exit line
    assert "ERROR reporting.wire.consumer" in refusals[0] and "not retrying" in refusals[0]
    assert refusals[1] == done.stderr.strip().splitlines()[-1]
    assert refusals[1].startswith(f"reporting-server: broker {secure_broker.host} refused user")
    assert "Traceback" not in done.stderr


def _answer(session: StompSession, command: str, headers: dict[str, str]) -> tuple[str, str]:
    session.send_frame(command, {**headers, "receipt": "r1"})
    reply, reply_headers, _ = session.read_frame()
    return reply, reply_headers.get("message", "")


def test_each_user_has_only_its_own_right(secure_broker, queue_prefix) -> None:
    queue = f"/queue/{queue_prefix}gvp.reporting.cdr"
    broker = HostPort.parse(secure_broker.host)
    host, port = broker.host, broker.port
    with StompSession(host, port, login=("reporting", SERVER_PW), timeout_s=10) as server:
        # The server may subscribe (which creates the queue) ...
        assert _answer(server, "SUBSCRIBE", {"destination": queue, "id": "0"})[0] == "RECEIPT"
    with StompSession(host, port, login=("reporting", SERVER_PW), timeout_s=10) as server:
        # ... but not send.
        reply, message = _answer(server, "SEND", {"destination": queue})
        assert reply == "ERROR" and "not authorized to write" in message
    with StompSession(host, port, login=("producer", PRODUCER_PW), timeout_s=10) as producer:
        reply, message = _answer(producer, "SUBSCRIBE", {"destination": queue, "id": "0"})
        assert reply == "ERROR" and "not authorized to read" in message
    with StompSession(host, port, login=("producer", PRODUCER_PW), timeout_s=10) as producer:
        assert _answer(producer, "SEND", {"destination": queue})[0] == "RECEIPT"
    with pytest.raises(ConnectionError, match="ERROR"):
        StompSession(host, port, timeout_s=10)  # anonymous
